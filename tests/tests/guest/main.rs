//! The integration suite, in a real kernel with the BPF LSM on. Run by `cargo xtask test` inside
//! QEMU guests; each test starts its own daemon on its own cgroup, binary and destinations.

mod argv;
mod attack_argv;
mod attack_core;
mod attack_env;
mod attack_files;
mod attack_roots;
mod attack_secret_paths;
mod attack_secrets;
mod attack_service;
mod attack_sockets;
mod audit;
mod connect;
mod defend;
mod exec;
mod files;
mod limits;
mod mounts;
mod procs;
mod raw_devices;
mod reviewers;
mod secrets;
mod service;
mod sockets;
mod survival;
mod tunables;

use std::process::Command;

use gatekeeper_tests::{Options, Scenario, bin};

/// Run only in a guest booted without the BPF LSM (`cargo xtask test` boots one for it).
#[test]
fn refuses_without_bpf_lsm() {
    let lsms = std::fs::read_to_string("/sys/kernel/security/lsm").unwrap();
    assert!(
        !lsms.split(',').any(|lsm| lsm.trim() == "bpf"),
        "this check needs a kernel booted without the BPF LSM, but it is active: {lsms}"
    );
    let scenario = Scenario::prepare("no-lsm", Options::default());
    let output = Command::new(bin("gatekeeper"))
        .args(["daemon", "--config"])
        .arg(&scenario.config)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("BPF LSM is not active"), "{stderr}");
    assert!(stderr.contains("lsm="), "{stderr}");
    assert!(
        !scenario.socket.exists(),
        "no API while nothing is enforced"
    );
    assert!(
        !scenario.journal.exists(),
        "nothing written before the kernel check"
    );
    assert!(
        !std::path::Path::new("/var/run/nscd").exists(),
        "nothing made before the kernel check"
    );
}
