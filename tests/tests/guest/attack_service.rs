//! Attacks through the host's own loopback and terminals: the unspecified address, which the
//! kernel delivers locally, and input pushed into the terminal an agent was started from.

use std::{
    io::{Read as _, Write as _},
    net::TcpListener,
    os::{
        fd::{FromRawFd as _, OwnedFd},
        unix::process::CommandExt as _,
    },
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use gatekeeper_tests::{Exec, Options, Outcome, Scenario, TARGET_RAN, bin, free_port};

fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().unwrap().parse().unwrap()
}

/// Connecting to the unspecified address (0.0.0.0, ::) is delivered by the kernel to loopback
/// (127.0.0.1, ::1) or the socket's bound address: no agent goes there, so none reaches the
/// metrics listener, the reviewers' HTTP listener or a protected loopback destination that way.
#[test]
fn attack_unspecified_address_reaches_no_loopback_listener() {
    let v4_port = free_port();
    let v6_port = free_port();
    let scenario = Scenario::start(
        "atk-unspecified",
        Options {
            extra: format!(
                r#"
[[protect.connect]]
name = "local db"
cidr = "127.0.0.1/32"
ports = [{v4_port}]
protocol = "tcp"

[[protect.connect]]
name = "local v6 db"
cidr = "::1/128"
ports = [{v6_port}]
"#
            ),
            ..Options::default()
        },
    );
    let _v4 = TcpListener::bind(("127.0.0.1", v4_port)).unwrap();
    let _v6 = TcpListener::bind(("::1", v6_port)).unwrap();
    let metrics = port_of(&scenario.metrics);
    let http = port_of(&scenario.http);
    let mut holes = Vec::new();
    // Control: from outside, the unspecified address reaches the listener.
    assert_eq!(
        scenario.net(&scenario.outside, "tcp", &format!("0.0.0.0:{metrics}")),
        Outcome::Ok
    );
    for (what, given, wildcard) in [
        (
            "metrics",
            format!("127.0.0.1:{metrics}"),
            format!("0.0.0.0:{metrics}"),
        ),
        (
            "metrics v6 socket",
            format!("127.0.0.1:{metrics}"),
            format!("[::ffff:0.0.0.0]:{metrics}"),
        ),
        (
            "http listener",
            format!("127.0.0.1:{http}"),
            format!("0.0.0.0:{http}"),
        ),
        (
            "protected 127.0.0.1",
            format!("127.0.0.1:{v4_port}"),
            format!("0.0.0.0:{v4_port}"),
        ),
        (
            "protected ::1",
            format!("[::1]:{v6_port}"),
            format!("[::]:{v6_port}"),
        ),
    ] {
        // Controls: the address as configured is denied to agents, open from outside.
        assert_eq!(
            scenario.net(&scenario.agents, "tcp", &given),
            Outcome::Denied,
            "{what}"
        );
        assert_eq!(
            scenario.net(&scenario.outside, "tcp", &given),
            Outcome::Ok,
            "{what}"
        );
        let outcome = scenario.net(&scenario.agents, "tcp", &wildcard);
        eprintln!("ATTACK {what}: agent tcp {wildcard} -> {outcome:?}");
        if outcome != Outcome::Denied {
            holes.push(format!("{what} via {wildcard}: {outcome:?}"));
        }
    }
    // And the agent reads /metrics over it.
    let (exec, body) = scenario.exec_with(
        &scenario.agents,
        Path::new("/bin/wget"),
        &[
            "-q",
            "-O",
            "-",
            &format!("http://0.0.0.0:{metrics}/metrics"),
        ],
    );
    eprintln!("ATTACK agent wget http://0.0.0.0:{metrics}/metrics -> {exec:?}\n{body}");
    if body.contains("gatekeeper_enforcing") {
        holes.push("agent read /metrics through 0.0.0.0".into());
    }
    assert!(
        holes.is_empty(),
        "agents reached loopback listeners: {holes:#?}"
    );
    let refused = scenario.wait_journal("tamper_attempt", |event| {
        event["hook"] == "unspecified_destination"
    });
    assert_eq!(refused["detail"][0], metrics);
}

/// Opens a pty; returns (master, slave).
fn pty() -> (OwnedFd, OwnedFd) {
    // The guest's init mounts no devpts: mount it where /dev/ptmx looks.
    let _ = std::fs::create_dir_all("/dev/pts");
    let _ = Command::new("/bin/mount")
        .args(["-t", "devpts", "devpts", "/dev/pts"])
        .status();
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty writes two fds; no name, termios or winsize asked for.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty");
    // SAFETY: both fds were just opened and are owned here only.
    unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) }
}

/// The admin's interactive root shell (outside the agents) on a pty runs `line`; returns what
/// the terminal showed once the shell exits (or after a minute).
fn admin_shell_runs(line: &str) -> String {
    let (master, slave) = pty();
    let mut shell = Command::new("/bin/sh");
    shell
        .arg("-i")
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave));
    // SAFETY: setsid and TIOCSCTTY between fork and exec: a login shell's session and terminal.
    unsafe {
        shell.pre_exec(|| {
            libc::setsid();
            libc::ioctl(0, libc::TIOCSCTTY, 0);
            Ok(())
        });
    }
    let mut child = shell.spawn().unwrap();
    let mut writer = std::fs::File::from(master.try_clone().unwrap());
    let mut reader = std::fs::File::from(master);
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = seen.clone();
    std::thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buffer) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buffer[..n]);
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    writer.write_all(format!("{line}\n").as_bytes()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    if child.try_wait().unwrap().is_none() {
        // The injected `exit` never came: end the shell ourselves.
        let _ = writer.write_all(b"exit\n");
        std::thread::sleep(Duration::from_secs(1));
        let _ = child.kill();
    }
    let _ = child.wait();
    String::from_utf8_lossy(&seen.lock().unwrap()).into_owned()
}

/// `gatekeeper agent run` hands the agent the terminal it was started from. An agent (root, so
/// with CAP_SYS_ADMIN; or any uid when dev.tty.legacy_tiocsti is on and it is the controlling
/// terminal) pushes a command line into that terminal's input with TIOCSTI; when the launcher
/// ends, the admin's root shell outside the agent cgroups reads and runs it.
fn tiocsti_attack(name: &str, as_user: bool) -> (Scenario, PathBuf) {
    let scenario = Scenario::start(name, Options::default());
    // Control: the agent cannot run the protected binary itself.
    assert_eq!(scenario.agent_exec(), Exec::Denied);
    let legacy = std::fs::read_to_string("/proc/sys/dev/tty/legacy_tiocsti").unwrap_or_default();
    eprintln!("dev.tty.legacy_tiocsti = {}", legacy.trim());
    let out = scenario.dir.join(format!("{name}-pwned"));
    let injected = format!(
        "cat /proc/self/cgroup > {out}; {protected} target >> {out}; exit",
        out = out.display(),
        protected = scenario.protected.display()
    );
    let helper = bin("gk-helper").display().to_string();
    let agent = if as_user {
        format!("{helper} as-user 1001 - {helper} tamper - tiocsti '{injected}'")
    } else {
        format!("{helper} tamper - tiocsti '{injected}'")
    };
    let line = format!(
        "{gatekeeper} --socket {socket} agent run --name {name} --owner alice -- {agent}",
        gatekeeper = bin("gatekeeper").display(),
        socket = scenario.socket.display(),
    );
    let screen = admin_shell_runs(&line);
    eprintln!("TERMINAL:\n{screen}");
    let result = std::fs::read_to_string(&out).unwrap_or_default();
    eprintln!("ATTACK {name}: {out:?} =\n{result}");
    assert!(
        !result.contains(TARGET_RAN),
        "the agent's injected command ran in the admin's shell outside the agents: {result}"
    );
    scenario.wait_journal("tamper_attempt", |event| event["hook"] == "terminal_input");
    (scenario, out)
}

#[test]
fn attack_agent_run_tiocsti_as_root() {
    let (scenario, out) = tiocsti_attack("atk-tiocsti-root", false);
    // Control: the same push from outside the agents is typed into the shell and runs.
    let injected = format!(
        "{protected} target > {out}; exit",
        out = out.display(),
        protected = scenario.protected.display()
    );
    let line = format!(
        "{} tamper - tiocsti '{injected}'",
        bin("gk-helper").display()
    );
    admin_shell_runs(&line);
    let result = std::fs::read_to_string(&out).unwrap_or_default();
    assert!(
        result.contains(TARGET_RAN),
        "the control did not run: {result:?}"
    );
}

#[test]
fn attack_agent_run_tiocsti_as_user() {
    let _ = tiocsti_attack("atk-tiocsti-user", true);
}
