//! What no agent or user can exhaust, and a journal that outlasts upgrades and power loss: the
//! CLI socket under a flood of connections, the cap of pending requests per agent cgroup with
//! rate-limited webhooks, journals of the previous format, torn and unwritable journals.

use std::{
    io::{BufRead as _, BufReader},
    os::unix::process::CommandExt as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use gatekeeper_tests::{Exec, Options, Outcome, Scenario, Stopped, UNLISTED_UID, bin, wait_for};

/// The default `[agents] max_pending`.
const MAX_PENDING: usize = 16;

/// A journal written by the format before versioning (format 0), with two requests pending at
/// its end (b00000000002 needs two approvals and a reason, one of which it has).
const FORMAT_ZERO: &str =
    include_str!("../../../gatekeeper-daemon/tests/fixtures/journal-v0.jsonl");

#[test]
fn thousands_of_connections_from_a_user_do_not_stop_decisions() {
    let scenario = Scenario::start("flood-socket", Options::default());
    let mut holder = Command::new(bin("gk-helper"))
        .args([
            "hold",
            &scenario.socket.display().to_string(),
            "3000",
            "300",
        ])
        .uid(UNLISTED_UID)
        .gid(UNLISTED_UID)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the connection holder");
    let mut line = String::new();
    BufReader::new(holder.stdout.take().expect("holder stdout"))
        .read_line(&mut line)
        .expect("holder reports");
    let held: usize = line
        .trim()
        .strip_prefix("held=")
        .and_then(|count| count.parse().ok())
        .unwrap_or_else(|| panic!("unexpected holder output {line:?}"));
    assert!(held >= 1000, "the user opened {held} connections");

    // Meanwhile the whole story still works for root.
    let id = scenario.denied_request();
    let approve = scenario.gatekeeper(&["approve", &id]);
    assert!(approve.status.success(), "{approve:?}");
    assert_eq!(scenario.agent_exec(), Exec::Ran);
    assert_eq!(scenario.agent_exec(), Exec::Denied);
    assert!(scenario.gatekeeper(&["status"]).status.success());
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(
        !scenario.daemon_log().contains("panicked"),
        "{}",
        scenario.daemon_log()
    );
}

#[test]
fn an_agent_sweeping_destinations_gets_at_most_the_cap_of_requests() {
    let scenario = Scenario::start(
        "sweep",
        Options {
            extra: r#"
[[protect.connect]]
name = "prod network"
cidr = "127.0.7.0/24"
protocol = "tcp"
"#
            .to_owned(),
            ..Options::default()
        },
    );
    let (passed, denied, other) = scenario.sweep(&scenario.agents, "tcp", "127.0.7.1", 5000, 200);
    assert_eq!(
        (passed, denied, other),
        (0, 200, 0),
        "every destination denied"
    );
    // Control: the same sweep from outside the agent cgroups is not Gatekeeper's business
    // (nothing listens there: refused, not denied).
    let (_, outside_denied, _) = scenario.sweep(&scenario.outside, "tcp", "127.0.7.1", 5000, 20);
    assert_eq!(outside_denied, 0);

    let status = wait_for("every denial to be counted", || {
        let status = scenario.status();
        let seen = status["pending_requests"].as_u64()? + status["denials_over_cap"].as_u64()?;
        (seen >= 200).then_some(status)
    });
    assert_eq!(status["pending_requests"], MAX_PENDING as u64);
    assert_eq!(status["denials_over_cap"], (200 - MAX_PENDING) as u64);
    let pending = scenario.requests(false);
    assert_eq!(pending.len(), MAX_PENDING);
    assert!(
        pending
            .iter()
            .all(|request| request["over_cap"] == (200 - MAX_PENDING) as u64),
        "the open requests show what was held back"
    );
    assert!(scenario.journal_has("pending_cap_reached"));

    // Every pending request reaches the webhook, in far fewer messages than denials.
    let webhook = scenario.webhook.as_ref().expect("webhook");
    let messages = wait_for("every request to reach the webhook", || {
        let received = webhook.received();
        let bodies: String = received
            .iter()
            .map(|message| message.body.clone())
            .collect();
        pending
            .iter()
            .all(|request| bodies.contains(request["id"].as_str().unwrap_or("?")))
            .then_some(received.len())
    });
    assert!(messages <= MAX_PENDING, "{messages} webhook messages");
    let digests = webhook
        .received()
        .iter()
        .filter(|message| message.json()["type"] == "gatekeeper.digest")
        .count();
    assert!(digests >= 1, "the burst beyond the rate became a digest");
}

/// An agent that floods the kernel's event ring with denials while the daemon is behind (here:
/// stopped), at once and then paced, gets its ration, and the rest are dropped: another agent's denial made meanwhile
/// still becomes a request, and its use of a grant is journaled.
#[test]
fn a_flood_of_one_agents_denials_leaves_room_for_the_others() {
    let scenario = Scenario::start(
        "ration",
        Options {
            extra: r#"
[[protect.connect]]
name = "prod network"
cidr = "127.0.8.0/24"
protocol = "tcp"
"#
            .to_owned(),
            ..Options::default()
        },
    );
    let other = scenario.agents.join("other");
    std::fs::create_dir(&other).unwrap();
    let stopped = Stopped::new(scenario.daemon_pid());
    // Far more denials than the ring holds (about 740 events).
    let flood = scenario.sweep(&scenario.agents, "tcp", "127.0.8.1", 2000, 3000);
    // Then paced (faster than the ration's 4 KiB a second) for longer than a refill by the
    // clock would take to bring the ring to the grant uses' quarter (28 s): a daemon that reads
    // nothing tops up nobody's ration.
    let paced = Instant::now();
    let (mut tried, mut paced_denied) = (0, 0);
    while paced.elapsed() < Duration::from_secs(40) {
        paced_denied += scenario
            .sweep(&scenario.agents, "tcp", "127.0.8.1", 3000, 40)
            .1;
        tried += 40;
        std::thread::sleep(Duration::from_millis(300));
    }
    let single = scenario.sweep(&other, "tcp", "127.0.8.2", 7000, 1);
    drop(stopped);
    assert_eq!(flood, (0, 3000, 0));
    assert_eq!(paced_denied, tried);
    assert_eq!(single, (0, 1, 0));
    scenario.wait_request_for("tcp 127.0.8.2:7000");
    let status = scenario.status();
    assert!(
        status["events_dropped"].as_u64().is_some_and(|n| n > 1000),
        "the flood was not rationed: {status}"
    );
    // An exec's record is twelve times a connect's: the ration counts bytes, so a flood of
    // denied execs leaves room too, and a grant's use is journaled whatever the flood.
    assert_eq!(scenario.exec_in(&other, &scenario.protected), Exec::Denied);
    let request = scenario.wait_request(&scenario.protected);
    scenario.approve(&request);
    let id = request["id"].as_str().unwrap().to_owned();
    let stopped = Stopped::new(scenario.daemon_pid());
    for _ in 0..4 {
        let (ran, _, _) = scenario.race(&scenario.agents, 50, &scenario.protected);
        assert_eq!(ran, 0, "a rationed denial still denies");
    }
    let flood = scenario.sweep(&scenario.agents, "tcp", "127.0.8.1", 2000, 400);
    let single = scenario.sweep(&other, "tcp", "127.0.8.3", 7001, 1);
    let approved = scenario.exec_in(&other, &scenario.protected);
    drop(stopped);
    assert_eq!((flood.1, single, approved), (400, (0, 1, 0), Exec::Ran));
    scenario.wait_request_for("tcp 127.0.8.3:7001");
    scenario.wait_journal("grant_used", |event| event["request_id"] == id.as_str());
    // Control: outside the agent cgroups the same sweep is not Gatekeeper's business (nothing
    // listens there: refused, not denied).
    let (_, outside_denied, _) = scenario.sweep(&scenario.outside, "tcp", "127.0.8.1", 2000, 20);
    assert_eq!(outside_denied, 0);
    std::fs::remove_dir(&other).unwrap();
}

#[test]
fn a_journal_of_the_previous_format_resumes_its_pending_requests() {
    let mut scenario = Scenario::prepare("format-zero", Options::default());
    std::fs::write(&scenario.journal, FORMAT_ZERO).unwrap();
    scenario.start_daemon();
    let pending: Vec<String> = scenario
        .requests(false)
        .iter()
        .map(|request| request["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(pending, ["b00000000002", "f00000000006"]);
    let half = scenario.request("b00000000002");
    assert_eq!(half["approvals"].as_array().map(Vec::len), Some(1));
    assert_eq!(half["approvals_required"], 2);

    let verify =
        scenario.gatekeeper(&["journal", "verify", &scenario.journal.display().to_string()]);
    assert!(
        verify.status.success(),
        "old and new records chain: {verify:?}"
    );
    let text = std::fs::read_to_string(&scenario.journal).unwrap();
    assert!(
        text.starts_with(FORMAT_ZERO),
        "the old records are kept as they were"
    );
    assert!(
        text[FORMAT_ZERO.len()..]
            .lines()
            .all(|line| line.starts_with("{\"v\":1,"))
    );

    let approve = scenario.gatekeeper(&["approve", "f00000000006"]);
    assert!(approve.status.success(), "{approve:?}");
    scenario.wait_journal("grant_issued", |event| {
        event["request_id"] == "f00000000006"
    });

    // A restart now starts from the checkpoint the new daemon wrote.
    scenario.stop_daemon();
    scenario.start_daemon();
    assert_eq!(scenario.requests(false).len(), 1);
    assert_eq!(scenario.request("f00000000006")["state"], "approved");
}

#[test]
fn a_torn_last_line_is_set_aside_and_journaled() {
    let mut scenario = Scenario::start("torn", Options::default());
    let id = scenario.denied_request();
    scenario.kill_daemon();
    let torn = "{\"v\":1,\"seq\":9999,\"time\":\"2026-12-01T";
    let mut text = std::fs::read_to_string(&scenario.journal).unwrap();
    let intact = text.len();
    text.push_str(torn);
    std::fs::write(&scenario.journal, &text).unwrap();

    scenario.start_daemon();
    let repair = scenario.wait_journal("journal_repaired", |_| true);
    assert_eq!(repair["offset"], intact as u64);
    let saved = repair["saved_to"].as_str().expect("where the bytes went");
    assert_eq!(std::fs::read_to_string(saved).unwrap(), torn);
    assert_eq!(
        scenario.request(&id)["state"],
        "pending",
        "nothing before it is lost"
    );
    let verify =
        scenario.gatekeeper(&["journal", "verify", &scenario.journal.display().to_string()]);
    assert!(verify.status.success(), "{verify:?}");
    // Still deciding and enforcing.
    assert!(scenario.gatekeeper(&["approve", &id]).status.success());
    assert_eq!(scenario.agent_exec(), Exec::Ran);
}

#[test]
fn nothing_is_granted_while_the_journal_cannot_be_written() {
    let mut scenario = Scenario::prepare(
        "journal-full",
        Options {
            journal_subdir: Some("journal"),
            ..Options::default()
        },
    );
    let journal_dir = scenario.journal.parent().unwrap().to_owned();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(&journal_dir)
        .status()
        .unwrap();
    assert!(mounted.success());
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            // Lazily: the daemon may still hold the journal open.
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(journal_dir.clone());
    scenario.start_daemon();

    // Fill the journal's filesystem, then make the daemon journal until a record needs room
    // the file does not have (the last page may hold a few more): the agent's tamper attempts.
    let filler = journal_dir.join("filler");
    let _ = Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", filler.display()))
        .args(["bs=4k"])
        .stderr(Stdio::null())
        .status();
    let daemon = scenario.daemon_pid().to_string();
    wait_for("a journal write to fail", || {
        assert_eq!(
            scenario.tamper(&scenario.agents, "kill", &[&daemon, "0"]),
            Outcome::Denied
        );
        (scenario.status()["journal_writable"] == false).then_some(())
    });
    assert!(scenario.status()["journal_error"].is_string());

    // The denial still stands and becomes a request; no decision is taken meanwhile.
    assert_eq!(scenario.agent_exec(), Exec::Denied);
    let id = scenario.wait_request(&scenario.protected)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let approve = scenario.gatekeeper(&["approve", &id]);
    assert!(!approve.status.success(), "{approve:?}");
    let said = String::from_utf8_lossy(&approve.stderr);
    assert!(said.contains("journal cannot be written"), "{said}");
    assert_eq!(
        scenario.agent_exec(),
        Exec::Denied,
        "no grant without its record"
    );

    // Room again: what waited is written in order, and decisions work again.
    std::fs::remove_file(&filler).unwrap();
    wait_for("the journal to be writable again", || {
        (scenario.status()["journal_writable"] == true).then_some(())
    });
    let approve = scenario.gatekeeper(&["approve", &id]);
    assert!(approve.status.success(), "{approve:?}");
    assert_eq!(scenario.agent_exec(), Exec::Ran);
    scenario.wait_journal("grant_issued", |event| event["request_id"] == id);
    let verify =
        scenario.gatekeeper(&["journal", "verify", &scenario.journal.display().to_string()]);
    assert!(
        verify.status.success(),
        "no partial record was left: {verify:?}"
    );
    let events = scenario.journal_events();
    let position = |kind: &str| {
        events
            .iter()
            .position(|event| {
                event["type"] == kind && (event["request_id"] == id || event["request"]["id"] == id)
            })
            .unwrap_or_else(|| panic!("no {kind}"))
    };
    assert!(position("request_created") < position("decision"));
    assert!(position("decision") < position("grant_issued"));
}
