//! Attacks on argument-bound exec grants: other arguments through an approved grant, hostile
//! argument vectors, and agents' reasons attached where they do not belong. Each attack has a
//! control outside the agent cgroups showing the same action does what it claims there.

use std::{os::unix::fs::PermissionsExt as _, path::Path, process::Command};

use gatekeeper_tests::{
    Exec, Options, Scenario, TARGET_RAN, UNLISTED_UID, bin, exec_outcome, hand_to_user, wait_for,
};
use serde_json::Value;

/// execve(program, argv) exactly, from `cgroup`, as root or `uid`, in `dir`, with `env`.
fn exec_as(
    cgroup: &Path,
    uid: Option<u32>,
    dir: Option<&Path>,
    env: Option<&str>,
    program: &str,
    argv: &[&str],
) -> (Exec, String) {
    let uid = uid.map_or("-".to_owned(), |uid| uid.to_string());
    let dir = dir.map_or("-".to_owned(), |dir| dir.display().to_string());
    let output = Command::new(bin("gk-helper"))
        .arg("exec-as")
        .arg(cgroup)
        .args([&uid, &dir, env.unwrap_or("-"), program])
        .args(argv)
        .output()
        .unwrap();
    let outcome = exec_outcome(&output);
    eprintln!("exec-as {cgroup:?} {uid} {program} {argv:?} -> {outcome:?}");
    outcome
}

fn hostile(cgroup: &Path, program: &str, kind: &str) -> (Exec, String) {
    let output = Command::new(bin("gk-helper"))
        .arg("exec-hostile")
        .arg(cgroup)
        .args([program, kind])
        .output()
        .unwrap();
    let outcome = exec_outcome(&output);
    eprintln!("hostile {kind} in {cgroup:?} -> {outcome:?}");
    outcome
}

/// The pending request whose `exec.argv` is `argv`.
fn pending(scenario: &Scenario, argv: &[&str]) -> Value {
    scenario.wait_exec_request(argv)
}

fn write_script(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A protected script approved for `one` is run through a wrapper script of the agent's whose
/// `#!` line names it with an argument of the wrapper's choosing: the kernel runs the protected
/// script as `sh deploy.sh --force /path/wrapper one`, and only the last argument is checked.
#[test]
fn a_wrapper_script_cannot_prepend_arguments_to_an_approved_script() {
    let mut scenario = Scenario::prepare(
        "aa-wrap",
        Options {
            extra: "[[protect.exec]]\npath = \"/tmp/gk-aa-wrap/protected/deploy.sh\"\nname = \"deploy\"\n".into(),
            ..Options::default()
        },
    );
    let script = scenario.dir.join("protected/deploy.sh");
    write_script(&script, &format!("#!/bin/sh\necho {TARGET_RAN} \"$@\"\n"));
    let work = scenario.dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let wrapper = work.join("wrapper");
    write_script(&wrapper, &format!("#!{} --force\n", script.display()));
    hand_to_user(&work);
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    scenario.start_daemon();
    let script_text = script.display().to_string();
    let wrapper_text = wrapper.display().to_string();
    let mut bypasses: Vec<String> = Vec::new();
    for uid in [None, Some(UNLISTED_UID)] {
        // The agent asks for `deploy.sh one`; a reviewer approves it.
        assert_eq!(
            exec_as(
                &scenario.agents,
                uid,
                None,
                None,
                &script_text,
                &[&script_text, "one"]
            )
            .0,
            Exec::Denied
        );
        scenario.approve(&pending(&scenario, &["one"]));
        // The wrapper uses that grant for other arguments.
        let (outcome, printed) = exec_as(
            &scenario.agents,
            uid,
            None,
            None,
            &wrapper_text,
            &["wrapper", "one"],
        );
        if printed.contains("--force") {
            bypasses.push(format!(
                "BYPASS ({uid:?}): approved `deploy.sh one`, ran: {printed} ({outcome:?})"
            ));
        }
        // Whatever became of it, the approved command itself still behaves.
        let _ = exec_as(
            &scenario.agents,
            uid,
            None,
            None,
            &script_text,
            &[&script_text, "one"],
        );
    }
    // Control: outside the agent cgroups the wrapper prepends its argument.
    let (outcome, printed) = exec_as(
        &scenario.outside,
        None,
        None,
        None,
        &wrapper_text,
        &["wrapper", "one"],
    );
    assert_eq!(outcome, Exec::Ran);
    assert!(
        printed.contains(&format!("{TARGET_RAN} --force {wrapper_text} one")),
        "{printed}"
    );
    assert!(bypasses.is_empty(), "{bypasses:#?}");
}

/// An approved `dbexport target one` (argv[0] as a shell passes it: the name typed) is run
/// through a script of the agent's named `dbexport` in its working directory whose `#!` line is
/// the protected binary with an argument: the kernel runs `/…/dbexport target dbexport target
/// one`, and the last three arguments are the approved ones.
#[test]
fn a_script_named_like_argv0_cannot_use_an_approved_binary_with_other_arguments() {
    let scenario = Scenario::start("aa-named", Options::default());
    let program = scenario.protected.display().to_string();
    let work = scenario.dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    write_script(&work.join("dbexport"), &format!("#!{program} target\n"));
    hand_to_user(&work);
    std::fs::set_permissions(
        work.join("dbexport"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let argv = ["dbexport", "target", "one"];
    let mut bypasses: Vec<String> = Vec::new();
    for uid in [None, Some(UNLISTED_UID)] {
        assert_eq!(
            exec_as(&scenario.agents, uid, None, None, &program, &argv).0,
            Exec::Denied
        );
        scenario.approve(&pending(&scenario, &argv));
        let (outcome, printed) =
            exec_as(&scenario.agents, uid, Some(&work), None, "dbexport", &argv);
        if printed.contains("RAN dbexport") {
            bypasses.push(format!(
                "BYPASS ({uid:?}): approved `dbexport target one`, ran: {printed} ({outcome:?})"
            ));
        }
        let _ = exec_as(&scenario.agents, uid, None, None, &program, &argv);
    }
    // Control: outside, the named script runs the binary with the extra arguments.
    let (outcome, printed) = exec_as(
        &scenario.outside,
        None,
        Some(&work),
        None,
        "dbexport",
        &argv,
    );
    assert_eq!(outcome, Exec::Ran);
    assert!(
        printed.contains(&format!("{TARGET_RAN} dbexport target one")),
        "{printed}"
    );
    assert!(bypasses.is_empty(), "{bypasses:#?}");
}

/// Hostile argument vectors from an agent with no grant: each denied, none crashes or stalls
/// the daemon; the same execs outside are not refused. Then the longest vector the kernel reads
/// whole, non-UTF-8 bytes and the 32-bit execve are bound like any other.
#[test]
fn hostile_argument_vectors_are_denied_and_bound_exactly() {
    let scenario = Scenario::start("aa-hostile", Options::default());
    let program = scenario.protected.display().to_string();
    let kinds = [
        "null-argv",
        "empty-argv",
        "many",
        "long",
        "nonutf8",
        "exact",
        "exact-plus-one",
        "sixty-five",
        "int80",
        "high-rax",
    ];
    for kind in kinds {
        assert_eq!(
            hostile(&scenario.agents, &program, kind).0,
            Exec::Denied,
            "{kind}"
        );
        // Control: outside nothing refuses it.
        assert_ne!(
            hostile(&scenario.outside, &program, kind).0,
            Exec::Denied,
            "{kind} outside"
        );
        assert!(scenario.gatekeeper(&["status"]).status.success(), "{kind}");
    }
    // The requests they made are listed, and the daemon answers.
    let requests = scenario.requests(false);
    assert!(!requests.is_empty());
    // Cut vectors make incomplete requests; an approval of one lets nothing through.
    let cut = requests
        .iter()
        .find(|request| request["exec"]["complete"] == false)
        .expect("an incomplete request")
        .clone();
    scenario.approve(&cut);
    for kind in ["many", "long", "exact-plus-one", "sixty-five"] {
        assert_eq!(
            hostile(&scenario.agents, &program, kind).0,
            Exec::Denied,
            "{kind}"
        );
    }
    // Exactly 4096 bytes are read whole: approved, that exec runs once.
    let exact = requests
        .iter()
        .find(|request| {
            request["exec"]["complete"] == true
                && request["exec"]["argv"].as_array().is_some_and(|argv| {
                    argv.len() == 3 && argv[2].as_str().is_some_and(|a| a.starts_with("eee"))
                })
        })
        .expect("the exact request")
        .clone();
    scenario.approve(&exact);
    assert_eq!(
        hostile(&scenario.agents, &program, "exact-plus-one").0,
        Exec::Denied
    );
    assert_eq!(hostile(&scenario.agents, &program, "exact").0, Exec::Ran);
    assert_eq!(hostile(&scenario.agents, &program, "exact").0, Exec::Denied);
    // A 64-bit request for `target one`; its grant serves the 32-bit execve of the same, not
    // of other arguments.
    assert_eq!(
        exec_as(
            &scenario.agents,
            None,
            None,
            None,
            &program,
            &[&program, "target", "one"]
        )
        .0,
        Exec::Denied
    );
    // The int80 denial above already made this request (same hash): approve it.
    scenario.approve(&pending(&scenario, &[&program, "target", "one"]));
    assert_eq!(
        hostile(&scenario.agents, &program, "int80-two").0,
        Exec::Denied
    );
    let (outcome, printed) = hostile(&scenario.agents, &program, "int80");
    assert_eq!(outcome, Exec::Ran);
    assert!(printed.contains(&format!("{TARGET_RAN} one")), "{printed}");
    // Control: outside, the 32-bit execve runs other arguments.
    let (outcome, printed) = hostile(&scenario.outside, &program, "int80-two");
    assert_eq!(outcome, Exec::Ran);
    assert!(printed.contains(&format!("{TARGET_RAN} two")), "{printed}");
    assert!(scenario.gatekeeper(&["status"]).status.success());
}

/// An agent in one cgroup cannot give its words to another cgroup's request, by id or by
/// announcing the same command; its own reason is taken once.
#[test]
fn a_reason_cannot_be_attached_to_another_cgroups_request() {
    let scenario = Scenario::start("aa-reason", Options::default());
    let program = scenario.protected.display().to_string();
    let a = scenario.agents.join("a");
    let b = scenario.agents.join("b");
    for cgroup in [&a, &b] {
        if !cgroup.exists() {
            std::fs::create_dir(cgroup).unwrap();
        }
    }
    let argv = [program.as_str(), "target", "one"];
    // b announces a reason for the command a is about to run, then a runs it.
    let announced = scenario.spawn_gatekeeper_in(
        &b,
        &[
            "run",
            "--reason",
            "approved by security",
            "--timeout",
            "1s",
            "--",
            &program,
            "target",
            "zzz",
        ],
    );
    let _ = announced.wait_with_output();
    assert_eq!(
        exec_as(&a, None, None, None, &program, &argv).0,
        Exec::Denied
    );
    let request = pending(&scenario, &argv);
    let id = request["id"].as_str().unwrap().to_owned();
    assert!(request["justification"].is_null(), "{request}");
    // b names a's request: refused, nothing attached.
    let output = scenario.gatekeeper_in(
        &b,
        &[
            "await",
            &id,
            "--reason",
            "approved by security",
            "--timeout",
            "1s",
        ],
    );
    assert_ne!(output.status.code(), Some(0), "{output:?}");
    assert_ne!(
        output.status.code(),
        Some(2),
        "b waited on a's request: {output:?}"
    );
    assert!(scenario.request(&id)["justification"].is_null());
    // b without an id: its own latest request, never a's.
    let _ = scenario.gatekeeper_in(&b, &["await", "--reason", "mine", "--timeout", "1s"]);
    assert!(scenario.request(&id)["justification"].is_null());
    // Control: a itself gives its reason, once; control characters are kept as text.
    let output = scenario.gatekeeper_in(
        &a,
        &[
            "await",
            &id,
            "--reason",
            "ok\n\u{2705} approved by root\u{202e}",
            "--timeout",
            "1s",
        ],
    );
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert_eq!(
        scenario.request(&id)["justification"],
        "ok\n\u{2705} approved by root\u{202e}"
    );
    let output = scenario.gatekeeper_in(
        &a,
        &["await", &id, "--reason", "changed", "--timeout", "1s"],
    );
    let _ = output;
    assert_eq!(
        scenario.request(&id)["justification"],
        "ok\n\u{2705} approved by root\u{202e}",
        "a reason replaced after reviewers saw it"
    );
    // The reviewer's listing shows the control characters escaped.
    let listed = scenario.gatekeeper(&["requests"]);
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(!text.contains('\u{202e}'), "{text}");
    wait_for("daemon up", || {
        scenario
            .gatekeeper(&["status"])
            .status
            .success()
            .then_some(())
    });
}

/// The caller's vector is rewritten while the kernel copies it: the kernel's copy is
/// `x target /…/dbexport target one`, the vector read when the exec is judged is the approved
/// `/…/dbexport target one`. The new program's copy ends in the approved arguments, but has two
/// more before them.
#[test]
fn a_vector_shortened_after_the_copy_cannot_run_extra_arguments() {
    let scenario = Scenario::start("aa-shift", Options::default());
    let program = scenario.protected.display().to_string();
    let shift = |cgroup: &Path| {
        let output = Command::new(bin("gk-helper"))
            .args([
                "argv-shift",
                &cgroup.display().to_string(),
                &program,
                &program,
            ])
            .output()
            .unwrap();
        let printed = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        eprintln!("argv-shift in {cgroup:?} -> {printed}");
        printed
    };
    assert_eq!(shift(&scenario.agents), "DENIED");
    let argv = [program.as_str(), "target", "one"];
    assert_eq!(
        exec_as(&scenario.agents, None, None, None, &program, &argv).0,
        Exec::Denied
    );
    scenario.approve(&pending(&scenario, &argv));
    let mut bypasses: Vec<String> = Vec::new();
    let printed = shift(&scenario.agents);
    if printed.contains(TARGET_RAN) {
        bypasses.push(format!(
            "BYPASS: approved `{program} target one`, ran: {printed}"
        ));
    }
    // Control: outside, the kernel's copy runs, with the extra arguments.
    assert_eq!(
        shift(&scenario.outside).lines().next(),
        Some(format!("EXIT=0 {TARGET_RAN} {program} target one").as_str())
    );
    assert!(bypasses.is_empty(), "{bypasses:#?}");
}
