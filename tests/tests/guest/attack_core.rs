//! Attacks on the rebuilt daemon core, from inside an agent cgroup (root and not) and as an
//! ordinary user outside. Each test asserts the property; where the attack works today, it fails.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use gatekeeper_tests::{Exec, Options, Outcome, Scenario, UNLISTED_UID, bin};
use sha2::{Digest as _, Sha256};

/// The record an attacker appends: `event` chained to the journal's last line, hashed the way
/// the daemon hashes (no secret is involved).
fn chained_record(journal_text: &str, event: &str) -> String {
    let last: serde_json::Value =
        serde_json::from_str(journal_text.lines().last().expect("a record")).unwrap();
    let seq = last["seq"].as_u64().unwrap() + 1;
    let prev = last["hash"].as_str().unwrap();
    let time = last["time"].as_str().unwrap();
    let body = format!(r#"{{"v":1,"seq":{seq},"time":"{time}","prev":"{prev}","event":{event}}}"#);
    let hash = hex::encode(Sha256::digest(body.as_bytes()));
    format!("{},\"hash\":\"{hash}\"}}\n", &body[..body.len() - 1])
}

/// Waits until the daemon has journaled the delivery of request `id` and is quiet.
fn quiet_after_delivery(scenario: &Scenario, id: &str) {
    scenario.wait_journal("webhook_delivery", |event| {
        event["delivered"] == true
            && event["request_ids"]
                .as_array()
                .is_some_and(|ids| ids.iter().any(|i| i == id))
    });
    std::thread::sleep(Duration::from_secs(1));
}

#[test]
fn attack_root_agent_cannot_forge_an_approval_into_the_journal() {
    let mut scenario = Scenario::start("atk-forge", Options::default());
    // Control: outside the agent cgroups the binary runs.
    assert_eq!(
        scenario.exec_in(&scenario.outside, &scenario.protected),
        Exec::Ran
    );
    let id = scenario.denied_request();
    quiet_after_delivery(&scenario, &id);

    // The agent (root, inside its cgroup) appends an approval no reviewer gave.
    let text = std::fs::read_to_string(&scenario.journal).unwrap();
    let forged = chained_record(
        &text,
        &format!(
            r#"{{"type":"decision","request_id":"{id}","decision":"approve","reviewer":"root","reason":null,"channel":"cli"}}"#
        ),
    );
    let journal = scenario.journal.display().to_string();
    let wrote = scenario.tamper(&scenario.agents, "write", &[&journal, &(text + &forged)]);
    assert_eq!(wrote, Outcome::Denied, "agent write of the journal");
    let verify = scenario.gatekeeper(&["journal", "verify", &journal]);
    eprintln!("journal verify after the agent's write: {verify:?}");

    // The daemon restarts (a crash, the OOM killer, an upgrade under Restart=always).
    scenario.kill_daemon();
    scenario.start_daemon();
    let request = scenario.request(&id);
    eprintln!("request after restart: state {}", request["state"]);
    assert_eq!(
        scenario.agent_exec(),
        Exec::Denied,
        "the agent approved itself through the journal (request now {})",
        request["state"]
    );
    assert_eq!(request["state"], "pending");
}

#[test]
fn attack_root_agent_cannot_make_the_next_start_refuse_the_journal() {
    let mut scenario = Scenario::start("atk-corrupt", Options::default());
    let id = scenario.denied_request();
    quiet_after_delivery(&scenario, &id);
    let text = std::fs::read_to_string(&scenario.journal).unwrap();
    let journal = scenario.journal.display().to_string();
    let wrote = scenario.tamper(
        &scenario.agents,
        "write",
        &[&journal, &(text + "{\"not\":\"a record\"}\n")],
    );
    assert_eq!(wrote, Outcome::Denied, "agent write of the journal");
    scenario.kill_daemon();
    // Panics (test fails) if the daemon refuses to start: then no decision can ever be taken
    // again while the pins keep denying.
    scenario.start_daemon();
    assert!(scenario.gatekeeper(&["approve", &id]).status.success());
    assert_eq!(scenario.agent_exec(), Exec::Ran);
}

fn journal_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

#[test]
fn attack_refused_decisions_on_made_up_ids_do_not_grow_the_journal() {
    let scenario = Scenario::start("atk-refusals", Options::default());
    let long_id = "x".repeat(60_000);
    let before = journal_len(&scenario.journal);
    // An ordinary user outside the agent cgroups, not a reviewer.
    for _ in 0..10 {
        let output = scenario.gatekeeper_as(UNLISTED_UID, &["deny", &long_id]);
        assert!(!output.status.success());
    }
    let by_user = journal_len(&scenario.journal) - before;
    // A (root) agent, also no reviewer there.
    for _ in 0..10 {
        let output = scenario.gatekeeper_in(&scenario.agents, &["approve", &long_id]);
        assert!(!output.status.success());
    }
    let by_agent = journal_len(&scenario.journal) - before - by_user;
    eprintln!("journal growth: {by_user} bytes from the user, {by_agent} from the agent");
    // Control: a reviewer's call on a made-up id is not journaled at all.
    let before_root = journal_len(&scenario.journal);
    assert!(!scenario.gatekeeper(&["approve", &long_id]).status.success());
    let by_root = journal_len(&scenario.journal) - before_root;
    eprintln!("journal growth from root's call: {by_root}");
    assert!(
        by_user + by_agent < 64 * 1024,
        "20 refused calls on an id no request has grew the journal by {} bytes",
        by_user + by_agent
    );
}

const SWEEP_RULE: &str = r#"
[[protect.connect]]
name = "prod network"
cidr = "127.0.7.0/24"
protocol = "tcp"
"#;

#[test]
fn attack_a_huge_command_line_is_not_journaled_whole_nor_checkpointed_again_and_again() {
    let scenario = Scenario::start(
        "atk-argv",
        Options {
            extra: SWEEP_RULE.to_owned(),
            ..Options::default()
        },
    );
    // A non-root agent whose argv is 15 x 100 kB of \x01 (JSON writes each as \u0001).
    let pad = "\u{1}".repeat(100_000);
    let helper = bin("gk-helper").display().to_string();
    let agents = scenario.agents.display().to_string();
    let uid = UNLISTED_UID.to_string();
    let mut args: Vec<&str> = vec![
        "as-user",
        &uid,
        &agents,
        &helper,
        "net-hold",
        "tcp",
        "127.0.7.1:5000",
        "20",
    ];
    for _ in 0..15 {
        args.push(&pad);
    }
    let mut holder = Command::new(bin("gk-helper"))
        .args(&args)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let request = scenario.wait_request_for("tcp 127.0.7.1:5000");
    let id = request["id"].as_str().unwrap().to_owned();
    let argv_bytes: usize = request["process"]["argv"]
        .as_array()
        .map(|argv| argv.iter().map(|a| a.as_str().unwrap_or("").len()).sum())
        .unwrap_or(0);
    let text = std::fs::read_to_string(&scenario.journal).unwrap();
    let created = text
        .lines()
        .find(|line| line.contains("\"request_created\"") && line.contains(&id))
        .map(str::len)
        .unwrap_or(0);
    eprintln!("argv held in memory: {argv_bytes} bytes; request_created record: {created} bytes");
    let _ = holder.kill();
    let _ = holder.wait();

    // Then cheap events from the same non-root agent: each journaled, every 1000th record a
    // checkpoint carrying the whole request again.
    let before = journal_len(&scenario.journal);
    let flood = Command::new(bin("gk-helper"))
        .args(["as-user", &uid, &agents, &helper, "bpf-flood", "2500", "60"])
        .output()
        .unwrap();
    eprintln!("flood: {}", String::from_utf8_lossy(&flood.stdout));
    std::thread::sleep(Duration::from_secs(10));
    let checkpoints = std::fs::read_to_string(&scenario.journal)
        .unwrap()
        .lines()
        .filter(|line| line.contains("\"type\":\"checkpoint\""))
        .count();
    let growth = journal_len(&scenario.journal) - before;
    eprintln!(
        "journal growth from 2500 bpf() calls: {growth} bytes, checkpoints now {checkpoints}"
    );
    let _ = std::fs::remove_file(&scenario.journal);
    assert!(
        created < 256 * 1024,
        "one request_created record of {created} bytes"
    );
    assert!(growth < 8 * 1024 * 1024, "journal grew by {growth} bytes");
}

#[test]
fn attack_one_agent_flooding_events_does_not_hide_another_agents_denial() {
    let scenario = Scenario::start("atk-ring", Options::default());
    let noisy = scenario.agents.join("noisy");
    let quiet = scenario.agents.join("quiet");
    std::fs::create_dir(&noisy).unwrap();
    std::fs::create_dir(&quiet).unwrap();
    // Control: without the flood the quiet agent's denial becomes a request.
    assert_eq!(scenario.exec_in(&quiet, &scenario.protected), Exec::Denied);
    let first = scenario.wait_request(&scenario.protected);
    let first_id = first["id"].as_str().unwrap().to_owned();
    assert!(scenario.gatekeeper(&["deny", &first_id]).status.success());

    let helper = bin("gk-helper").display().to_string();
    let noisy_path = noisy.display().to_string();
    let uid = UNLISTED_UID.to_string();
    let floods: Vec<_> = (0..2)
        .map(|_| {
            Command::new(bin("gk-helper"))
                .args([
                    "as-user",
                    &uid,
                    &noisy_path,
                    &helper,
                    "bpf-flood",
                    "1000000000",
                    "25",
                ])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_secs(3));
    let dropped_before = scenario.status()["events_dropped"].as_u64().unwrap_or(0);
    let mut tries = 0;
    let mut found = None;
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(18) {
        tries += 1;
        assert_eq!(scenario.exec_in(&quiet, &scenario.protected), Exec::Denied);
        std::thread::sleep(Duration::from_millis(500));
        found = scenario
            .requests(false)
            .into_iter()
            .find(|request| request["target"] == scenario.protected.display().to_string());
        if found.is_some() {
            break;
        }
    }
    let status = scenario.status();
    for flood in floods {
        let output = flood.wait_with_output().unwrap();
        eprintln!("flood: {}", String::from_utf8_lossy(&output.stdout));
    }
    eprintln!(
        "quiet agent: {tries} denied execs in {:?}, request {}; events dropped {} (before {dropped_before}), pending {}",
        start.elapsed(),
        if found.is_some() {
            "made"
        } else {
            "never made"
        },
        status["events_dropped"],
        status["pending_requests"]
    );
    let _ = std::fs::remove_file(&scenario.journal);
    assert!(
        found.is_some(),
        "the flood hid {tries} denials of another agent"
    );
}

/// Runs the CLI as root outside the agent cgroups; None if it did not finish in `seconds`.
fn gatekeeper_within(
    scenario: &Scenario,
    args: &[&str],
    seconds: u64,
) -> Option<std::process::Output> {
    let mut child = Command::new(bin("gatekeeper"))
        .arg("--socket")
        .arg(&scenario.socket)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(seconds) {
        if child.try_wait().unwrap().is_some() {
            return Some(child.wait_with_output().unwrap());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

#[test]
fn attack_http_connections_held_by_an_agent_do_not_stop_cli_decisions() {
    let scenario = Scenario::start("atk-http-fds", Options::default());
    let id = scenario.denied_request();
    let helper = bin("gk-helper").display().to_string();
    let agents = scenario.agents.display().to_string();
    let uid = UNLISTED_UID.to_string();
    let address = scenario.http.trim_start_matches("http://").to_owned();
    let mut holders = Vec::new();
    let mut held = 0;
    for _ in 0..3 {
        let mut holder = Command::new(bin("gk-helper"))
            .args([
                "as-user", &uid, &agents, &helper, "hold-tcp", &address, "2000", "120",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(holder.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        eprintln!("non-root agent holder: {}", line.trim());
        held += line
            .trim()
            .strip_prefix("held=")
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(0);
        holders.push(holder);
    }
    eprintln!("HTTP connections held by the agent: {held}");
    let daemon_fds = std::fs::read_dir(format!("/proc/{}/fd", scenario.daemon_pid()))
        .map(|dir| dir.count())
        .unwrap_or(0);
    eprintln!("daemon fds now: {daemon_fds}");
    let approve = gatekeeper_within(&scenario, &["approve", &id], 30);
    eprintln!("approve while held: {approve:?}");
    let ran = scenario.agent_exec();
    for mut holder in holders {
        let _ = holder.kill();
        let _ = holder.wait();
    }
    assert!(
        approve.as_ref().is_some_and(|o| o.status.success()),
        "a reviewer's approval did not get through while an agent held {held} HTTP connections: {approve:?}"
    );
    assert_eq!(ran, Exec::Ran);
}
