//! Enforcement outlives its daemon: pinned programs keep denying, a restarted daemon picks up
//! where the last one left, and only `gatekeeper uninstall` ends it.

use std::{
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Command, Output},
    time::Duration,
};

use gatekeeper_tests::{Exec, Options, Outcome, Scenario, UNLISTED_UID, bin, wait_for};

const DB_RULE: &str = r#"
[[protect.connect]]
name = "prod postgres"
cidr = "127.0.5.0/24"
ports = [5432]
protocol = "tcp"
"#;

fn status(scenario: &Scenario) -> serde_json::Value {
    let output = scenario.gatekeeper(&["status", "--json"]);
    assert!(output.status.success(), "{output:?}");
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn status_reports_enforcement_and_stopping_does_not_end_it() {
    let mut scenario = Scenario::start("status", Options::default());
    let first = status(&scenario);
    assert_eq!(first["enforcing"], true);
    assert_eq!(scenario.agent_exec(), Exec::Denied);
    wait_for("the denial to be counted", || {
        (status(&scenario)["denied"].as_u64()? >= 1).then_some(())
    });

    scenario.stop_daemon();
    let down = scenario.gatekeeper(&["--config", &scenario.config.display().to_string(), "status"]);
    assert!(!down.status.success(), "no daemon: status fails");
    assert!(
        String::from_utf8_lossy(&down.stderr).contains("still live"),
        "{down:?}"
    );
    assert_eq!(
        scenario.agent_exec(),
        Exec::Denied,
        "pinned programs enforce without a daemon"
    );

    // A new daemon adopts the pins; enforcement has been live since the first start.
    scenario.start_daemon();
    assert_eq!(status(&scenario)["since"], first["since"]);
    assert_eq!(scenario.agent_exec(), Exec::Denied);

    // Down again, and the agent cgroup gone: the CLI still finds the pins by the config, tells
    // of them and takes them away.
    scenario.stop_daemon();
    std::fs::remove_dir(&scenario.agents).unwrap();
    let config = scenario.config.display().to_string();
    let down = scenario.gatekeeper(&["--config", &config, "status"]);
    assert!(
        String::from_utf8_lossy(&down.stderr).contains("still live"),
        "{down:?}"
    );
    let output = scenario.uninstall();
    assert!(output.status.success(), "{output:?}");
    assert!(!scenario.pin_dir.exists(), "pins removed");
}

#[test]
fn killed_daemon_keeps_enforcing_and_a_restart_picks_up_its_requests() {
    let mut scenario = Scenario::start(
        "killed",
        Options {
            extra: DB_RULE.to_owned(),
            ..Options::default()
        },
    );
    let _listener = std::net::TcpListener::bind("127.0.5.1:5432").unwrap();
    let id = scenario.denied_request();

    scenario.kill_daemon();
    // Down, and still nothing passes; the denials wait in the pinned ring buffer.
    assert_eq!(scenario.agent_exec(), Exec::Denied);
    assert_eq!(
        scenario.net(&scenario.agents, "tcp", "127.0.5.1:5432"),
        Outcome::Denied
    );

    scenario.start_daemon();
    let request = scenario.request(&id);
    assert_eq!(request["state"], "pending", "the old request came back");
    // The connect denied during the outage became a request once the daemon was back.
    scenario.wait_request_for("tcp 127.0.5.1:5432");
    wait_for("the outage's exec denial to join the old request", || {
        (scenario.request(&id)["attempts"].as_u64()? >= 2).then_some(())
    });

    let output = scenario.gatekeeper(&["approve", &id]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(scenario.agent_exec(), Exec::Ran);
    assert_eq!(scenario.agent_exec(), Exec::Denied);
    scenario.wait_journal("grant_used", |event| event["request_id"] == id.as_str());
}

#[test]
fn grant_issued_before_a_kill_expires_on_time() {
    let mut scenario = Scenario::start(
        "killed-grant",
        Options {
            grant_ttl: "2s",
            ..Options::default()
        },
    );
    let id = scenario.denied_request();
    let output = scenario.gatekeeper(&["approve", &id]);
    assert!(output.status.success(), "{output:?}");
    scenario.kill_daemon();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        scenario.agent_exec(),
        Exec::Denied,
        "expired in the kernel, daemon or not"
    );

    scenario.start_daemon();
    scenario.wait_journal("grant_expired", |event| event["request_id"] == id.as_str());
    assert!(
        !scenario.journal_has("grant_used"),
        "the expired grant was used"
    );
}

#[test]
fn only_root_outside_agent_cgroups_can_uninstall() {
    let scenario = Scenario::start("uninstall", Options::default());
    let config = scenario.config.display().to_string();

    let from_agent = scenario.gatekeeper_in(&scenario.agents, &["uninstall"]);
    assert!(!from_agent.status.success(), "{from_agent:?}");
    let as_bob = Command::new(bin("gatekeeper"))
        .args(["--config", &config, "--socket"])
        .arg(&scenario.socket)
        .arg("uninstall")
        .uid(UNLISTED_UID)
        .gid(UNLISTED_UID)
        .output()
        .unwrap();
    assert!(!as_bob.status.success(), "{as_bob:?}");
    assert_eq!(scenario.agent_exec(), Exec::Denied);

    let output = scenario.uninstall();
    assert!(output.status.success(), "{output:?}");
    wait_for("the daemon to exit", || {
        (!scenario.gatekeeper(&["status"]).status.success()).then_some(())
    });
    assert!(!scenario.pin_dir.exists(), "pins removed");
    assert_eq!(scenario.agent_exec(), Exec::Ran, "enforcement ended");
    scenario.wait_journal("uninstalled", |event| event["by"] == "root");
    let verify =
        scenario.gatekeeper(&["journal", "verify", &scenario.journal.display().to_string()]);
    assert!(verify.status.success(), "{verify:?}");
}

/// Clients read a config without checking it against the host: a root agent that hands
/// `gatekeeper uninstall` a config of its own (other agent cgroups, so the CLI's own check lets it
/// by; no daemon at its socket, so the CLI removes the pins itself; the real pin directory)
/// removes nothing. The same from outside the agent cgroups ends enforcement.
#[test]
fn an_agents_own_config_uninstalls_nothing() {
    let scenario = Scenario::start("uninstall-own", Options::default());
    let own = scenario.dir.join("own.toml");
    let text = std::fs::read_to_string(&scenario.config).unwrap();
    let text = text
        .replace(
            &scenario.agents.display().to_string(),
            "/sys/fs/cgroup/gk-nowhere",
        )
        .replace(
            &scenario.socket.display().to_string(),
            "/tmp/gk-nowhere/api.sock",
        )
        .replace(
            &scenario.journal.display().to_string(),
            &scenario.dir.join("own.jsonl").display().to_string(),
        );
    std::fs::write(&own, text).unwrap();
    let uninstall = |cgroup: &Path| -> Output {
        Command::new(bin("gk-helper"))
            .arg("run")
            .arg(cgroup)
            .arg(bin("gatekeeper"))
            .arg("--config")
            .arg(&own)
            .arg("uninstall")
            .output()
            .unwrap()
    };
    let from_agent = uninstall(&scenario.agents);
    assert!(!from_agent.status.success(), "{from_agent:?}");
    assert_eq!(scenario.agent_exec(), Exec::Denied, "still enforcing");
    scenario.wait_journal("tamper_attempt", |event| event["hook"] == "pin_unlink");

    let from_outside = uninstall(&scenario.outside);
    assert!(from_outside.status.success(), "{from_outside:?}");
    assert!(!scenario.pin_dir.exists(), "pins removed");
    assert_eq!(scenario.agent_exec(), Exec::Ran, "enforcement ended");
}
