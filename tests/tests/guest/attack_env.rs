//! Attacks on the environment an exec on a grant may pass (`unapproved_env`): hostile
//! environment vectors, values too long to check, an exec that fails after using its grant, and
//! a binary reached as a script's interpreter. Each attack has a control outside the agent
//! cgroups showing the same exec runs there.

use std::{
    os::unix::{fs::PermissionsExt as _, process::ExitStatusExt as _},
    path::Path,
    process::{Command, Output},
};

use gatekeeper_tests::{Exec, Options, Scenario, UNLISTED_UID, bin, exec_outcome};

fn write_script(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn uid_arg(uid: Option<u32>) -> String {
    uid.map_or("-".to_owned(), |uid| uid.to_string())
}

/// gk-helper `env-attack`: `program argv...` from `cgroup` as root or `uid`, with the
/// environment `kind` makes.
fn env_attack(cgroup: &Path, uid: Option<u32>, kind: &str, program: &str, argv: &[&str]) -> Output {
    Command::new(bin("gk-helper"))
        .arg("env-attack")
        .arg(cgroup)
        .args([&uid_arg(uid), kind, program])
        .args(argv)
        .output()
        .unwrap()
}

/// `program argv...` with an empty environment (or `env`, one variable).
fn exec_clean(
    cgroup: &Path,
    uid: Option<u32>,
    env: Option<&str>,
    program: &str,
    argv: &[&str],
) -> Output {
    Command::new(bin("gk-helper"))
        .arg("exec-as")
        .arg(cgroup)
        .args([&uid_arg(uid), "-", env.unwrap_or("-"), program])
        .args(argv)
        .output()
        .unwrap()
}

/// Entries without `=`, a high byte before it, names of 32 and 33 bytes, an empty name and 257
/// entries are refused with the grant kept; an empty (null) vector then runs once; `PATH` twice
/// is two approved names. Outside the agent cgroups every vector runs.
#[test]
fn hostile_environment_vectors_are_refused_and_keep_the_grant() {
    let scenario = Scenario::start("ae-vectors", Options::default());
    let program = scenario.protected.display().to_string();
    let argv = [program.as_str(), "target", "one"];
    let specs = [
        "noeq",
        "highbyte",
        "name32",
        "name33",
        "emptyname",
        "many257",
    ];
    for spec in specs.iter().chain(&["dup", "null"]) {
        let kind = format!("vector:{spec}");
        let output = env_attack(&scenario.outside, None, &kind, &program, &argv);
        assert_eq!(exec_outcome(&output).0, Exec::Ran, "control {spec}");
    }
    for uid in [None, Some(UNLISTED_UID)] {
        let first = env_attack(&scenario.agents, uid, "vector:null", &program, &argv);
        assert_eq!(exec_outcome(&first).0, Exec::Denied);
        scenario.approve(&scenario.wait_exec_request(&argv));
        for spec in specs {
            let kind = format!("vector:{spec}");
            let output = env_attack(&scenario.agents, uid, &kind, &program, &argv);
            assert_eq!(exec_outcome(&output).0, Exec::Denied, "{spec} as {uid:?}");
        }
        let clean = || env_attack(&scenario.agents, uid, "vector:null", &program, &argv);
        assert_eq!(exec_outcome(&clean()).0, Exec::Ran, "as {uid:?}");
        assert_eq!(exec_outcome(&clean()).0, Exec::Denied, "as {uid:?}");
        scenario.approve(&scenario.wait_exec_request(&argv));
        let dup = env_attack(&scenario.agents, uid, "vector:dup", &program, &argv);
        assert_eq!(exec_outcome(&dup).0, Exec::Ran, "as {uid:?}");
    }
    scenario.wait_journal("tamper_attempt", |event| event["hook"] == "unapproved_env");
}

/// Approved names with values too long for the check of the new program's copy to walk
/// (18 × 130000 bytes) are refused before the grant is used, rather than killed after it; the
/// clean exec then runs once.
#[test]
fn an_exec_too_long_to_check_is_refused_before_its_grant_is_used() {
    let scenario = Scenario::start("ae-long", Options::default());
    let program = scenario.protected.display().to_string();
    let argv = [program.as_str(), "target", "one"];
    let control = env_attack(&scenario.outside, None, "long-approved", &program, &argv);
    assert_eq!(exec_outcome(&control).0, Exec::Ran);
    for uid in [None, Some(UNLISTED_UID)] {
        let first = exec_clean(&scenario.agents, uid, None, &program, &argv);
        assert_eq!(exec_outcome(&first).0, Exec::Denied);
        scenario.approve(&scenario.wait_exec_request(&argv));
        let long = env_attack(&scenario.agents, uid, "long-approved", &program, &argv);
        assert_eq!(exec_outcome(&long).0, Exec::Denied, "as {uid:?}: {long:?}");
        let clean = exec_clean(&scenario.agents, uid, None, &program, &argv);
        assert_eq!(exec_outcome(&clean).0, Exec::Ran, "as {uid:?}");
    }
}

/// An exec that fails after it used its grant (a protected script run through an O_CLOEXEC
/// descriptor: ENOENT once the kernel tries its interpreter) leaves nothing behind for the next
/// exec, which uses no grant and passes a variable of the agent's: it runs.
#[test]
fn an_exec_that_failed_on_its_grant_leaves_nothing_for_the_next() {
    let mut scenario = Scenario::prepare(
        "ae-failed",
        Options {
            extra: "[[protect.exec]]\npath = \"/tmp/gk-ae-failed/protected/deploy.sh\"\nname = \"deploy\"\n".into(),
            ..Options::default()
        },
    );
    let script = scenario.dir.join("protected/deploy.sh");
    write_script(&script, "#!/bin/sh\necho TARGET RAN \"$@\"\n");
    scenario.start_daemon();
    let script = script.display().to_string();
    let other = scenario.unprotected.display().to_string();
    let kind = format!("cloexec-then:{other}");
    let argv = [script.as_str(), "one"];
    let control = env_attack(&scenario.outside, None, &kind, &script, &argv);
    assert!(String::from_utf8_lossy(&control.stderr).contains("FIRST_ERRNO=2"));
    assert!(String::from_utf8_lossy(&control.stdout).contains("TARGET RAN second"));
    for uid in [None, Some(UNLISTED_UID)] {
        let denied = env_attack(&scenario.agents, uid, &kind, &script, &argv);
        let stderr = String::from_utf8_lossy(&denied.stderr);
        assert!(
            stderr.contains(&format!("FIRST_ERRNO={}", libc::EPERM)),
            "{stderr}"
        );
        scenario.approve(&scenario.wait_exec_request(&["one"]));
        let failed = env_attack(&scenario.agents, uid, &kind, &script, &argv);
        let stderr = String::from_utf8_lossy(&failed.stderr);
        assert!(stderr.contains("FIRST_ERRNO=2"), "as {uid:?}: {failed:?}");
        assert_eq!(failed.status.signal(), None, "as {uid:?}: {failed:?}");
        assert!(
            String::from_utf8_lossy(&failed.stdout).contains("TARGET RAN second"),
            "as {uid:?}: {failed:?}"
        );
    }
    assert!(
        !scenario
            .journal_events()
            .iter()
            .any(|event| event["hook"] == "unapproved_env"),
        "an exec without a grant was judged"
    );
}

/// A binary approved with `bind = "binary"` and reached as the interpreter of the agent's own
/// script runs on its grant with approved variables alone; with one of the agent's it is killed
/// before it runs (the check of the new program's copy).
#[test]
fn a_binary_grant_holds_for_the_binary_as_a_scripts_interpreter() {
    let mut scenario = Scenario::prepare(
        "ae-interpreter",
        Options {
            extra: "[[protect.exec]]\npath = \"/tmp/gk-ae-interpreter/protected/anyargs\"\nname = \"any\"\nbind = \"binary\"\n".into(),
            ..Options::default()
        },
    );
    let anyargs = scenario.dir.join("protected/anyargs");
    std::fs::copy(bin("gk-helper"), &anyargs).unwrap();
    let work = scenario.dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let wrapper = work.join("wrapper");
    write_script(&wrapper, &format!("#!{} target\n", anyargs.display()));
    scenario.start_daemon();
    let any = anyargs.display().to_string();
    let wrapper = wrapper.display().to_string();
    let run_wrapper =
        |cgroup: &Path, uid, env| exec_clean(cgroup, uid, env, &wrapper, &["wrapper"]);
    assert_eq!(
        exec_outcome(&run_wrapper(&scenario.outside, None, None)).0,
        Exec::Ran
    );
    assert_eq!(
        exec_outcome(&run_wrapper(&scenario.outside, None, Some("GK_AGENT=1"))).0,
        Exec::Ran
    );
    for uid in [None, Some(UNLISTED_UID)] {
        let direct = exec_clean(&scenario.agents, uid, None, &any, &[&any, "target", "x"]);
        assert_eq!(exec_outcome(&direct).0, Exec::Denied);
        scenario.approve(&scenario.wait_request(&anyargs));
        let ran = run_wrapper(&scenario.agents, uid, None);
        assert_eq!(exec_outcome(&ran).0, Exec::Ran, "as {uid:?}: {ran:?}");
        let again = exec_clean(&scenario.agents, uid, None, &any, &[&any, "target", "y"]);
        assert_eq!(exec_outcome(&again).0, Exec::Denied, "as {uid:?}");
        scenario.approve(&scenario.wait_request(&anyargs));
        let dirty = run_wrapper(&scenario.agents, uid, Some("GK_AGENT=1"));
        assert_eq!(
            dirty.status.signal(),
            Some(libc::SIGKILL),
            "as {uid:?}: {dirty:?}"
        );
    }
    scenario.wait_journal("tamper_attempt", |event| event["hook"] == "unapproved_env");
}
