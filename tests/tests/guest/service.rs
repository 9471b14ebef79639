//! Running as a service: metrics and health probes, agents started by `gatekeeper agent run`.

use std::{os::unix::process::CommandExt as _, path::Path, process::Command};

use gatekeeper_tests::{
    Exec, Options, Outcome, PriorityLimits, RequestId as _, Scenario, TARGET_RAN, UNLISTED_UID,
    bin, wait_for,
};

const ALICE_UID: u32 = 1000;

#[test]
fn metrics_and_health_follow_a_request_and_agents_cannot_reach_them() {
    let scenario = Scenario::start("metrics", Options::default());
    assert_eq!(scenario.get_metrics("/livez").0, 200);
    assert_eq!(scenario.get_metrics("/readyz"), (200, "ready\n".into()));
    assert_eq!(scenario.metric("gatekeeper_enforcing"), Some(1.0));
    assert_eq!(scenario.metric("gatekeeper_pending_requests"), Some(0.0));

    // Agents reach neither listener of the daemon; the same connect works from outside.
    let metrics = scenario.metrics.trim_start_matches("http://");
    assert_eq!(
        scenario.net(&scenario.agents, "tcp", metrics),
        Outcome::Denied
    );
    assert_eq!(scenario.net(&scenario.outside, "tcp", metrics), Outcome::Ok);

    assert_eq!(scenario.agent_exec(), Exec::Denied);
    let request = scenario.wait_request(&scenario.protected);
    assert_eq!(scenario.metric("gatekeeper_pending_requests"), Some(1.0));
    assert_eq!(
        scenario.metric("gatekeeper_requests_created_total"),
        Some(1.0)
    );
    assert!(
        scenario
            .metric("gatekeeper_denials_total")
            .is_some_and(|denials| denials >= 1.0)
    );

    scenario.approve(&request);
    assert_eq!(scenario.metric("gatekeeper_pending_requests"), Some(0.0));
    assert_eq!(
        scenario.metric("gatekeeper_requests_total{outcome=\"approved\"}"),
        Some(1.0)
    );
    assert_eq!(
        scenario.metric("gatekeeper_decision_latency_seconds_count"),
        Some(1.0)
    );
    assert_eq!(scenario.metric("gatekeeper_grants_issued_total"), Some(1.0));

    assert_eq!(scenario.agent_exec(), Exec::Ran);
    wait_for("the grant's use counted", || {
        (scenario.metric("gatekeeper_grants_used_total") == Some(1.0)).then_some(())
    });
    let (_, text) = scenario.get_metrics("/metrics");
    assert!(
        !text.contains(&scenario.agents.display().to_string()),
        "a cgroup path in the metrics:\n{text}"
    );
}

/// `gatekeeper agent run` from root outside the agents: the command runs in a cgroup of its own
/// below the agent cgroup, its owner is recorded (and may not approve), and the cgroup is gone
/// once the command ends.
#[test]
fn agent_run_starts_an_agent_whose_owner_cannot_approve_it() {
    let scenario = Scenario::start("launcher", Options::default());
    let launch = |name: &str, owner: &str, program: &Path| {
        scenario.gatekeeper(&[
            "agent",
            "run",
            "--name",
            name,
            "--owner",
            owner,
            "--",
            "/bin/sh",
            "-c",
            &format!("cat /proc/self/cgroup; exec {} target", program.display()),
        ])
    };
    let cgroup = scenario.agents.join("deploy-1");
    let run = launch("deploy-1", "alice", &scenario.protected);
    let text = String::from_utf8_lossy(&run.stdout);
    let relative = cgroup.strip_prefix("/sys/fs/cgroup").unwrap();
    assert!(
        text.contains(&format!("0::/{}", relative.display())),
        "{run:?}"
    );
    assert!(!run.status.success(), "the protected exec ran: {run:?}");
    assert!(!cgroup.exists(), "the agent's cgroup was left behind");

    let request = scenario.wait_request(&scenario.protected);
    assert_eq!(request["cgroup"], cgroup.display().to_string());
    assert_eq!(request["owner"], "alice");
    let started = scenario.wait_journal("agent_started", |_| true);
    assert_eq!(started["owner"], "alice");
    assert_eq!(started["by"], "root");
    let by_owner = scenario.gatekeeper_as(
        ALICE_UID,
        &["approve", request.request_id(), "--reason", "mine"],
    );
    assert!(!by_owner.status.success(), "{by_owner:?}");

    // The same command outside the launcher runs unasked: the cgroup made it an agent.
    let unprotected = launch("deploy-2", "alice", &scenario.unprotected);
    assert!(unprotected.status.success(), "{unprotected:?}");
    assert!(
        String::from_utf8_lossy(&unprotected.stdout).contains(TARGET_RAN),
        "{unprotected:?}"
    );

    // Started with no priority above the ordinary, whatever the launcher had: no limits within
    // which the kernel grants one without CAP_SYS_NICE, no realtime policy, no nice below 0.
    let raised = PriorityLimits::raise(50, 50);
    let report = format!(
        "grep -E '^Max (nice|realtime) priority' /proc/self/limits; \
         cut -d' ' -f19,41 /proc/self/stat; {} tamper - outrun io-class",
        bin("gk-helper").display()
    );
    let mut launcher = Command::new(bin("gatekeeper"));
    launcher.arg("--socket").arg(&scenario.socket).args([
        "agent", "run", "--name", "limits-1", "--owner", "alice", "--", "/bin/sh", "-c",
        // Its limits, nice value and policy (fields 19 and 41 of stat), and I/O class.
        &report,
    ]);
    // SAFETY: between fork and exec only sched_setscheduler(2), setpriority(2), ioprio_set(2).
    unsafe {
        launcher.pre_exec(|| {
            let realtime = libc::sched_param { sched_priority: 1 };
            // This process's I/O: the realtime class at level 4.
            let realtime_io = (1 << 13) | 4;
            if libc::sched_setscheduler(0, libc::SCHED_FIFO, &realtime) != 0
                || libc::setpriority(libc::PRIO_PROCESS, 0, -5) != 0
                || libc::syscall(libc::SYS_ioprio_set, 1, 0, realtime_io) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let limits = launcher.output().unwrap();
    drop(raised);
    let text = String::from_utf8_lossy(&limits.stdout);
    // Not the realtime class (1); which of the others depends on the kernel.
    let io_class = text.lines().find_map(|line| line.strip_prefix("IOCLASS="));
    assert!(matches!(io_class, Some("0" | "2")), "{limits:?}");
    let values: Vec<Vec<&str>> = (text.lines())
        .filter(|line| !line.starts_with("RESULT=") && !line.starts_with("IOCLASS="))
        .map(|line| match line.strip_prefix("Max ") {
            Some(limit) => limit.split_whitespace().skip(2).take(2).collect(),
            None => line.split_whitespace().collect(),
        })
        .collect();
    assert_eq!(values, [["0", "0"], ["0", "0"], ["0", "0"]], "{limits:?}");

    // As another user: its uid, groups and home, still inside its own agent cgroup.
    let as_bob = scenario.gatekeeper(&[
        "agent",
        "run",
        "--name",
        "bob-1",
        "--owner",
        "alice",
        "--user",
        "bob",
        "--",
        "/bin/sh",
        "-c",
        "id -u; id -g; echo $HOME; cat /proc/self/cgroup",
    ]);
    let text = String::from_utf8_lossy(&as_bob.stdout);
    assert!(as_bob.status.success(), "{as_bob:?}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[..3], ["1001", "1001", "/tmp"], "{as_bob:?}");
    let relative = scenario.agents.join("bob-1");
    let relative = relative.strip_prefix("/sys/fs/cgroup").unwrap();
    assert_eq!(
        lines[3],
        format!("0::/{}", relative.display()),
        "{as_bob:?}"
    );
}

/// Agents cannot start agents (and so cannot name another owner), nor can ordinary users;
/// bad names and unknown owners are refused before anything is made.
#[test]
fn agent_run_refuses_agents_users_and_bad_input() {
    let scenario = Scenario::start("launcher-refusals", Options::default());
    let args = |name: &'static str, owner: &'static str| {
        vec![
            "agent",
            "run",
            "--name",
            name,
            "--owner",
            owner,
            "--",
            "/bin/true",
        ]
    };
    let from_agent = scenario.gatekeeper_in(&scenario.agents, &args("x", "bob"));
    assert!(!from_agent.status.success(), "{from_agent:?}");
    let from_user = Command::new(bin("gatekeeper"))
        .arg("--socket")
        .arg(&scenario.socket)
        .args(args("y", "bob"))
        .uid(UNLISTED_UID)
        .gid(UNLISTED_UID)
        .output()
        .unwrap();
    assert!(!from_user.status.success(), "{from_user:?}");
    for (name, owner, says) in [
        ("up/../escape", "bob", "not allowed in an agent name"),
        ("..", "bob", "may not start with"),
        ("cgroup.procs", "bob", "may not start with"),
        ("fine", "nobody-here", "no user of this host"),
    ] {
        let refused = scenario.gatekeeper(&args(name, owner));
        assert!(!refused.status.success(), "{refused:?}");
        assert!(
            String::from_utf8_lossy(&refused.stderr).contains(says),
            "{says}: {refused:?}"
        );
    }
    // Nothing was made for any of them, and nothing journaled.
    let made: Vec<_> = std::fs::read_dir(&scenario.agents)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|entry| entry.path().is_dir())
        .collect();
    assert!(made.is_empty(), "{made:?}");
    assert!(!scenario.journal_has("agent_started"));
    // Control: root outside the agents starts one.
    assert!(scenario.gatekeeper(&args("fine", "bob")).status.success());
}
