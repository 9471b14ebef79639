//! What a reviewer approves is exactly what runs: exec grants bound to the arguments the kernel
//! read, and the kernel's own copy checked again before the new program starts.

use std::path::Path;

use gatekeeper_tests::{Exec, Options, Scenario, bin, wait_for};

/// `program target WORDS...`, as gk-helper passes it: the argv a request shows.
fn argv<'a>(program: &'a str, words: &[&'a str]) -> Vec<&'a str> {
    [program, "target"]
        .into_iter()
        .chain(words.iter().copied())
        .collect()
}

fn run(scenario: &Scenario, cgroup: &Path, program: &Path, words: &[&str]) -> (Exec, String) {
    let args: Vec<&str> = ["target"]
        .into_iter()
        .chain(words.iter().copied())
        .collect();
    scenario.exec_with(cgroup, program, &args)
}

#[test]
fn an_approval_lets_exactly_the_shown_command_run_once() {
    let scenario = Scenario::start("argv-bound", Options::default());
    let program = scenario.protected.display().to_string();
    let agents = &scenario.agents;
    assert_eq!(
        run(&scenario, agents, &scenario.protected, &["one"]).0,
        Exec::Denied
    );
    let one = scenario.wait_exec_request(&argv(&program, &["one"]));
    assert_eq!(one["bind"], "argv");
    // The reviewers' webhook shows the command that would run, not the caller's.
    let hook = scenario.webhook.as_ref().unwrap();
    let body = wait_for("the webhook delivery", || {
        hook.received()
            .into_iter()
            .map(|message| message.json())
            .find(|body| body["request"]["id"] == one["id"])
    });
    assert_eq!(
        body["request"]["exec"]["argv"],
        serde_json::json!(argv(&program, &["one"]))
    );
    scenario.approve(&one);

    // Other arguments from the same cgroup: denied, and a request of their own.
    assert_eq!(
        run(&scenario, agents, &scenario.protected, &["two"]).0,
        Exec::Denied
    );
    let two = scenario.wait_exec_request(&argv(&program, &["two"]));
    assert_ne!(two["id"], one["id"]);
    // More arguments, or fewer, are other commands too.
    for words in [&["one", "more"][..], &[]] {
        assert_eq!(
            run(&scenario, agents, &scenario.protected, words).0,
            Exec::Denied
        );
    }

    // The approved command runs only with approved environment variables: with the loader's
    // (LD_PRELOAD) or one of the agent's it is refused, and the grant waits.
    let env = [
        ("LD_PRELOAD", "/nonexistent/agent.so"),
        ("TMPDIR", "/agent"),
    ];
    for extra in [&env[..1], &[("GK_AGENT_HOOK", "x")]] {
        let (outcome, printed) =
            scenario.exec_with_env(agents, &scenario.protected, &["target", "one"], extra);
        assert_eq!(outcome, Exec::Denied, "{extra:?}: {printed}");
    }
    scenario.wait_journal("tamper_attempt", |event| event["hook"] == "unapproved_env");
    // Without them it runs, once, in secure-execution mode (the loader would drop LD_PRELOAD
    // and the like, and libraries their secure_getenv settings).
    let (outcome, printed) = scenario.exec_with(agents, &scenario.protected, &["target", "one"]);
    assert_eq!(outcome, Exec::Ran);
    assert!(printed.contains("TARGET RAN one"), "{printed}");
    assert!(printed.contains("TARGET ENV secure=1 "), "{printed}");
    assert_eq!(
        run(&scenario, agents, &scenario.protected, &["one"]).0,
        Exec::Denied
    );
    scenario.wait_journal("grant_used", |event| event["request_id"] == one["id"]);

    // Control: outside the agent cgroups any arguments run, in the caller's environment.
    let (outcome, printed) = scenario.exec_with_env(
        &scenario.outside,
        &scenario.protected,
        &["target", "two"],
        &env,
    );
    assert!(
        printed.contains("TARGET ENV secure=0 LD_PRELOAD=/nonexistent/agent.so TMPDIR=/agent"),
        "{printed}"
    );
    assert_eq!(outcome, Exec::Ran);
    assert!(printed.contains("TARGET RAN two"), "{printed}");
}

#[test]
fn a_rule_bound_to_the_binary_lets_any_arguments_through_once() {
    let mut scenario = Scenario::prepare(
        "argv-binary",
        Options {
            extra: "[[protect.exec]]\npath = \"/tmp/gk-argv-binary/protected/anyargs\"\nname = \"any arguments\"\nbind = \"binary\"\n".into(),
            ..Options::default()
        },
    );
    let anyargs = scenario.dir.join("protected/anyargs");
    std::fs::copy(bin("gk-helper"), &anyargs).unwrap();
    scenario.start_daemon();
    let program = anyargs.display().to_string();
    assert_eq!(
        run(&scenario, &scenario.agents, &anyargs, &["x"]).0,
        Exec::Denied
    );
    let request = scenario.wait_exec_request(&argv(&program, &["x"]));
    assert_eq!(request["bind"], "binary");
    // Other arguments while it is pending join it.
    assert_eq!(
        run(&scenario, &scenario.agents, &anyargs, &["y"]).0,
        Exec::Denied
    );
    wait_for("the repeat to join", || {
        (scenario.request(request["id"].as_str().unwrap())["attempts"] == 2).then_some(())
    });
    scenario.approve(&request);
    let (outcome, printed) = run(&scenario, &scenario.agents, &anyargs, &["y", "z"]);
    assert_eq!(outcome, Exec::Ran);
    assert!(printed.contains("TARGET RAN y z"), "{printed}");
    assert_eq!(
        run(&scenario, &scenario.agents, &anyargs, &["x"]).0,
        Exec::Denied
    );
}

/// The kernel copies an exec's arguments before the exec is judged; the caller rewrites them in
/// its own memory in between ("two" copied, "one" read back), with a grant in place. The new
/// program's own copy is checked again before it runs: it is killed, never run with "two".
/// Without the grant the same exec is simply denied; outside the agent cgroups it runs.
#[test]
fn arguments_rewritten_after_the_kernel_copied_them_never_run() {
    let control = swap_is_killed("argv-swap", "argv_changed");
    assert_eq!(control.lines().next(), Some("EXIT=0 TARGET RAN two"));
}

/// The environment, like the arguments, is copied by the kernel before the exec is judged: the
/// caller rewrites a variable of its own ("X=agent" copied) to an approved one ("HOME=/" read
/// back) in between, with a grant in place. The new program's own copy is checked again: it is
/// killed before it runs. Outside the agent cgroups the same exec runs with what was copied.
#[test]
fn environment_rewritten_after_the_kernel_copied_it_never_runs() {
    let control = swap_is_killed("env-swap", "unapproved_env");
    assert!(control.starts_with("EXIT=0 TARGET RAN one"), "{control}");
    assert!(control.ends_with("NAMES=PATH,X"), "{control}");
}

/// Runs gk-helper's `op` (a swap of what the kernel copied for `program target one`): denied
/// without a grant; with a grant for "one", killed before it runs and journaled as `hook`, the
/// grant spent. Returns what the same swap printed outside the agent cgroups.
fn swap_is_killed(op: &str, hook: &str) -> String {
    let scenario = Scenario::start(op, Options::default());
    let program = scenario.protected.display().to_string();
    let swap = |cgroup: &Path| {
        let output = std::process::Command::new(bin("gk-helper"))
            .args([op, &cgroup.display().to_string(), &program])
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    };
    assert_eq!(swap(&scenario.agents), "DENIED");
    assert_eq!(
        run(&scenario, &scenario.agents, &scenario.protected, &["one"]).0,
        Exec::Denied
    );
    scenario.approve(&scenario.wait_exec_request(&argv(&program, &["one"])));
    assert_eq!(swap(&scenario.agents), format!("SIGNAL={}", libc::SIGKILL));
    let killed = scenario.wait_journal("tamper_attempt", |event| event["hook"] == hook);
    assert!(
        killed["pid"].as_u64().is_some_and(|pid| pid > 0),
        "{killed}"
    );
    // The grant is spent: "one" itself is denied now.
    assert_eq!(
        run(&scenario, &scenario.agents, &scenario.protected, &["one"]).0,
        Exec::Denied
    );
    swap(&scenario.outside)
}

/// `gatekeeper run --reason` asks with the agent's words, waits, and on approval runs exactly
/// the command; `await --reason` gives words to a request already made.
#[test]
fn an_agent_asks_first_with_its_reason_and_runs_on_approval() {
    let scenario = Scenario::start("argv-run", Options::default());
    let program = scenario.protected.display().to_string();
    let run_args = [
        "run",
        "--reason",
        "nightly export <!channel>",
        "--",
        &program,
        "target",
        "one",
    ];
    let waiting = scenario.spawn_gatekeeper_in(&scenario.agents, &run_args);
    let request = scenario.wait_exec_request(&argv(&program, &["one"]));
    assert_eq!(request["justification"], "nightly export <!channel>");
    // Who asked (`gatekeeper run`, alive while it waits), from where, called by whom.
    let process = &request["process"];
    assert!(
        process["argv"]
            .as_array()
            .is_some_and(|argv| argv.iter().any(|arg| arg == "run")),
        "{process}"
    );
    assert!(
        process["cwd"]
            .as_str()
            .is_some_and(|cwd| cwd.starts_with('/')),
        "{process}"
    );
    let ancestors = process["ancestors"].as_array().unwrap();
    assert!(!ancestors.is_empty() && ancestors.len() <= 3, "{process}");
    assert!(
        ancestors[0]["pid"].as_u64().is_some_and(|pid| pid > 0),
        "{process}"
    );
    let created = scenario.wait_journal("request_created", |event| {
        event["request"]["id"] == request["id"]
    });
    assert_eq!(
        created["request"]["justification"],
        "nightly export <!channel>"
    );
    // The reviewer's CLI shows the whole request: what would run, the agent's words as its own,
    // who asked; the agent's markup as text.
    let id = request["id"].as_str().unwrap();
    let shown = scenario.gatekeeper(&["requests", id]);
    assert!(shown.status.success(), "{shown:?}");
    let shown = String::from_utf8_lossy(&shown.stdout);
    for line in [
        "Risk: MEDIUM".to_owned(),
        format!("Will run: {program} target one"),
        "Agent's own words (unverified): nightly export <!channel>".to_owned(),
        format!("Agent: {}", scenario.agents.display()),
    ] {
        assert!(shown.lines().any(|shown| shown == line), "{line}\n{shown}");
    }
    assert!(shown.contains("Called by: "), "{shown}");
    let unknown = scenario.gatekeeper(&["requests", "0123456789ab"]);
    assert!(!unknown.status.success(), "{unknown:?}");
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("no request 0123456789ab"),
        "{unknown:?}"
    );
    let hook = scenario.webhook.as_ref().unwrap();
    wait_for("the webhook delivery with the reason", || {
        hook.received().into_iter().find(|message| {
            let body = message.json();
            body["request"]["id"] == request["id"]
                && body["request"]["justification"] == "nightly export <!channel>"
        })
    });
    scenario.approve(&request);
    let output = waiting.wait_with_output().unwrap();
    assert!(output.status.success(), "{output:?}");
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("TARGET RAN one"),
        "{output:?}"
    );
    // Its grant is spent.
    assert_eq!(
        run(&scenario, &scenario.agents, &scenario.protected, &["one"]).0,
        Exec::Denied
    );

    // A denied exec first, then the reason: journaled, on that request.
    assert_eq!(
        run(&scenario, &scenario.agents, &scenario.protected, &["two"]).0,
        Exec::Denied
    );
    let two = scenario.wait_exec_request(&argv(&program, &["two"]));
    let output = scenario.gatekeeper_in(
        &scenario.agents,
        &["await", "--reason", "need two", "--timeout", "1s"],
    );
    assert_eq!(output.status.code(), Some(2), "timed out: {output:?}");
    assert_eq!(
        scenario.request(two["id"].as_str().unwrap())["justification"],
        "need two"
    );
    scenario.wait_journal("justification", |event| {
        event["request_id"] == two["id"] && event["text"] == "need two"
    });
    // The reviewers, who had the request already, get it again with the reason.
    wait_for("the request again, with the reason given later", || {
        hook.received().into_iter().find(|message| {
            let body = message.json();
            body["request"]["id"] == two["id"] && body["request"]["justification"] == "need two"
        })
    });
    // A reviewer's denial ends `run` with await's code for it, nothing run.
    let denied_run = scenario.spawn_gatekeeper_in(
        &scenario.agents,
        &["run", "--", &program, "target", "three"],
    );
    let three = scenario.wait_exec_request(&argv(&program, &["three"]));
    let output = scenario.gatekeeper(&["deny", three["id"].as_str().unwrap()]);
    assert!(output.status.success(), "{output:?}");
    let output = denied_run.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(!String::from_utf8_lossy(&output.stdout).contains("TARGET RAN"));

    // No decision within `--timeout`: await's code for that, nothing run.
    let output = scenario.gatekeeper_in(
        &scenario.agents,
        &["run", "--timeout", "1s", "--", &program, "target", "four"],
    );
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(!String::from_utf8_lossy(&output.stdout).contains("TARGET RAN"));

    // Control: outside the agent cgroups `run` runs at once, with a reason too (nothing waits
    // for approval there).
    let output = scenario.gatekeeper_in(&scenario.outside, &["run", "--", &program, "target", "x"]);
    assert!(output.status.success(), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("TARGET RAN x"));
    let output = scenario.gatekeeper_in(
        &scenario.outside,
        &["run", "--reason", "outside", "--", &program, "target", "y"],
    );
    assert!(output.status.success(), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("TARGET RAN y"));
}
