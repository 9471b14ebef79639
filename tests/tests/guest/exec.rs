//! Exec approvals end to end.

use std::{process::Command, time::Duration};

use gatekeeper_tests::{
    Exec, Options, Scenario, UNLISTED_UID, WEBHOOK_SECRET, bin, now_unix, reviewer_key, wait_for,
};

#[test]
fn agent_exec_of_protected_binary_is_denied_and_requested() {
    let scenario = Scenario::start("denied", Options::default());
    assert_eq!(scenario.agent_exec(), Exec::Denied);

    let request = scenario.wait_request(&scenario.protected);
    let id = request["id"].as_str().unwrap();
    assert_eq!(request["state"], "pending");
    assert_eq!(request["kind"], "exec");
    assert_eq!(request["rule"], "database export");
    assert_eq!(request["cgroup"], scenario.agents.display().to_string());
    assert!(request["created"].is_string());
    assert_eq!(request["process"]["uid"], 0);
    assert_eq!(request["process"]["user"], "root");

    // The reviewers' webhook got the same request, signed.
    let hook = scenario.webhook.as_ref().unwrap();
    let message = wait_for("the webhook delivery", || {
        hook.received().into_iter().next()
    });
    let body = message.json();
    assert_eq!(body["type"], "gatekeeper.request");
    assert_eq!(body["request"]["id"], id);
    assert_eq!(
        body["request"]["target"],
        scenario.protected.display().to_string()
    );
    assert_eq!(body["decision_path"], format!("/v1/requests/{id}/decision"));
    assert!(
        message
            .header("x-gatekeeper-signature")
            .is_some_and(|s| s.starts_with("v1="))
    );
    scenario.wait_journal("webhook_delivery", |event| {
        event["request_ids"][0] == id && event["delivered"] == true
    });

    // A repeat while pending joins the request instead of making another.
    assert_eq!(scenario.agent_exec(), Exec::Denied);
    wait_for("the repeat to join", || {
        (scenario.request(id)["attempts"] == 2).then_some(())
    });
    assert_eq!(scenario.requests(false).len(), 1);
}

#[test]
fn symlink_and_hard_link_are_denied() {
    let scenario = Scenario::start("links", Options::default());
    let symlink = scenario.dir.join("bin/symlinked");
    let hardlink = scenario.dir.join("protected/hardlinked");
    std::os::unix::fs::symlink(&scenario.protected, &symlink).unwrap();
    std::fs::hard_link(&scenario.protected, &hardlink).unwrap();
    assert_eq!(scenario.exec_in(&scenario.agents, &symlink), Exec::Denied);
    assert_eq!(scenario.exec_in(&scenario.agents, &hardlink), Exec::Denied);
}

#[test]
fn non_agent_exec_is_allowed() {
    let scenario = Scenario::start("non-agent", Options::default());
    assert_eq!(
        scenario.exec_in(&scenario.outside, &scenario.protected),
        Exec::Ran
    );
    assert!(scenario.requests(true).is_empty());
}

#[test]
fn agent_exec_of_unprotected_binary_is_allowed() {
    let scenario = Scenario::start("unprotected", Options::default());
    assert_eq!(
        scenario.exec_in(&scenario.agents, &scenario.unprotected),
        Exec::Ran
    );
}

#[test]
fn child_cgroup_of_agent_cgroup_is_an_agent() {
    let scenario = Scenario::start("child", Options::default());
    let grandchild = scenario.agents.join("task/step");
    std::fs::create_dir_all(&grandchild).unwrap();
    assert_eq!(
        scenario.exec_in(&grandchild, &scenario.protected),
        Exec::Denied
    );
    let request = scenario.wait_request(&scenario.protected);
    assert_eq!(request["cgroup"], grandchild.display().to_string());
    // A grant is for the cgroup that asked: approving lets the grandchild through once.
    scenario.approve(request["id"].as_str().unwrap());
    assert_eq!(
        scenario.exec_in(&scenario.agents, &scenario.protected),
        Exec::Denied
    );
    assert_eq!(
        scenario.exec_in(&grandchild, &scenario.protected),
        Exec::Ran
    );
    std::fs::remove_dir(&grandchild).unwrap();
    std::fs::remove_dir(scenario.agents.join("task")).unwrap();
}

#[test]
fn approval_lets_exactly_one_retry_pass() {
    let scenario = Scenario::start("once", Options::default());
    let id = scenario.denied_request();
    scenario.approve(&id);
    let request = scenario.request(&id);
    assert_eq!(request["state"], "approved");
    assert_eq!(request["decision"]["reviewer"], "root");
    assert_eq!(request["decision"]["reason"], "test");

    assert_eq!(scenario.agent_exec(), Exec::Ran);
    assert_eq!(scenario.agent_exec(), Exec::Denied);

    let used = scenario.wait_journal("grant_used", |event| event["request_id"] == id.as_str());
    assert!(used["pid"].as_u64().is_some_and(|pid| pid > 0), "{used}");
    // The auditor's timeline of it: asked, approved by root, used by that process.
    let config = scenario.config.display().to_string();
    let shown = scenario.gatekeeper(&["--config", &config, "journal", "show", "--request", &id]);
    assert!(shown.status.success(), "{shown:?}");
    let text = String::from_utf8_lossy(&shown.stdout);
    let has = |kind: &str, words: &str| {
        text.lines()
            .any(|line| line.contains(kind) && line.contains(words))
    };
    assert!(has("request_created", "asked by pid"), "{text}");
    assert!(
        has("decision", "approved by root on cli, reason: test"),
        "{text}"
    );
    assert!(
        has("grant_used", &format!("used by pid {}", used["pid"])),
        "{text}"
    );
    assert!(!text.contains("daemon_started"), "{text}");
    let journal = scenario.journal.display().to_string();
    let unknown = scenario.gatekeeper(&["journal", "show", "--type", "grants", &journal]);
    assert!(!unknown.status.success());
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("unknown record type \"grants\""),
        "{unknown:?}"
    );
    // The SIEM's view: the request, the decision and the use as OCSF Process Activity events
    // of this request; a bad format is refused.
    let exported = scenario.gatekeeper(&["journal", "export", "--format", "ocsf", &journal]);
    assert!(exported.status.success(), "{exported:?}");
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&exported.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .filter(|event: &serde_json::Value| event["metadata"]["correlation_uid"] == id.as_str())
        .collect();
    let dispositions: Vec<&str> = events
        .iter()
        .map(|event| event["disposition"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(
        dispositions,
        ["denied", "approved", "allowed"],
        "{events:?}"
    );
    assert!(events.iter().all(|event| event["class_uid"] == 1007));
    // What OCSF 1.3.0 requires of every Process Activity event.
    for event in &events {
        for required in [
            "/activity_id",
            "/action_id",
            "/category_uid",
            "/class_uid",
            "/severity_id",
            "/time",
            "/type_uid",
            "/metadata/version",
            "/metadata/product/vendor_name",
            "/device/hostname",
            "/device/type_id",
            "/process",
            "/actor",
        ] {
            assert!(
                event
                    .pointer(required)
                    .is_some_and(|value| !value.is_null()),
                "{required} missing: {event}"
            );
        }
        assert_eq!(
            event["type_uid"],
            100_700 + event["activity_id"].as_u64().unwrap()
        );
    }
    assert_eq!(events[2]["process"]["pid"], used["pid"]);
    // A time window: the last hour holds the request; a window in the future or long past
    // holds nothing.
    let recent = scenario.gatekeeper(&["journal", "show", "--since", "1h", &journal]);
    assert!(
        String::from_utf8_lossy(&recent.stdout).contains(&id),
        "{recent:?}"
    );
    for window in [
        ["--since", "2999-01-01T00:00:00Z"],
        ["--until", "2000-01-01T00:00:00Z"],
    ] {
        let none = scenario.gatekeeper(
            &[
                &["journal", "export", "--format", "jsonl"][..],
                &window,
                &[&journal],
            ]
            .concat(),
        );
        assert!(none.status.success(), "{none:?}");
        assert!(none.stdout.is_empty(), "{none:?}");
    }
    let bad = scenario.gatekeeper(&["journal", "export", "--format", "cef", &journal]);
    assert!(!bad.status.success(), "{bad:?}");
    // Deciding again is refused.
    let again = scenario.gatekeeper(&["approve", &id]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already"),
        "{again:?}"
    );
}

#[test]
fn concurrent_retries_after_one_approval_pass_exactly_once() {
    let scenario = Scenario::start("race", Options::default());
    let id = scenario.denied_request();
    scenario.approve(&id);
    let (ran, denied, other) = scenario.race(&scenario.agents, 8, &scenario.protected);
    assert_eq!((ran, denied, other), (1, 7, 0));
}

#[test]
fn unused_grant_expires_and_never_allows() {
    let scenario = Scenario::start(
        "expiry",
        Options {
            grant_ttl: "2s",
            ..Options::default()
        },
    );
    let id = scenario.denied_request();
    scenario.approve(&id);
    let grant = scenario.wait_journal("grant_issued", |event| event["request_id"] == id.as_str());
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(scenario.agent_exec(), Exec::Denied);
    let expired =
        scenario.wait_journal("grant_expired", |event| event["request_id"] == id.as_str());
    assert_eq!(expired["grant_id"], grant["grant_id"]);
    assert!(
        !scenario.journal_has("grant_used"),
        "an expired grant was used"
    );
}

#[test]
fn deny_leaves_it_blocked() {
    let scenario = Scenario::start("deny", Options::default());
    let id = scenario.denied_request();
    let output = scenario.gatekeeper(&["deny", &id, "--reason", "not today"]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(scenario.request(&id)["state"], "denied");
    assert_eq!(scenario.agent_exec(), Exec::Denied);
    // The next attempt is a new request, and the denied one cannot be approved after all.
    assert!(!scenario.gatekeeper(&["approve", &id]).status.success());
    assert!(!scenario.journal_has("grant_issued"));
}

#[test]
fn unlisted_reviewer_is_refused() {
    let scenario = Scenario::start("unlisted", Options::default());
    let id = scenario.denied_request();
    let output = scenario.gatekeeper_as(UNLISTED_UID, &["approve", &id]);
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("bob is not a listed reviewer"),
        "{output:?}"
    );
    assert_eq!(scenario.request(&id)["state"], "pending");
    assert_eq!(scenario.agent_exec(), Exec::Denied);
    scenario.wait_journal("decision_refused", |event| event["reviewer"] == "bob");
    // Requests carry agents' command lines: a non-reviewer cannot list them either.
    let listing = scenario.gatekeeper_as(UNLISTED_UID, &["requests", "--json"]);
    assert!(!listing.status.success(), "{listing:?}");
    assert!(!String::from_utf8_lossy(&listing.stdout).contains(&id));
}

#[test]
fn unanswered_request_expires_and_cannot_be_approved() {
    let scenario = Scenario::start(
        "request-expiry",
        Options {
            request_ttl: "2s",
            ..Options::default()
        },
    );
    let id = scenario.denied_request();
    scenario.wait_journal("request_expired", |event| {
        event["request_id"] == id.as_str()
    });
    assert_eq!(scenario.request(&id)["state"], "expired");
    let late = scenario.gatekeeper(&["approve", &id]);
    assert!(!late.status.success());
    assert!(
        String::from_utf8_lossy(&late.stderr).contains("expired"),
        "{late:?}"
    );
    assert_eq!(scenario.agent_exec(), Exec::Denied);
    assert!(!scenario.journal_has("grant_issued"));
}

#[test]
fn http_decision_needs_a_fresh_valid_signature() {
    let scenario = Scenario::start("http", Options::default());
    let id = scenario.denied_request();
    let body = r#"{"decision":"approve","reviewer":"alice","reason":"ticket 42"}"#;

    let key = reviewer_key("alice");
    let (status, _) = scenario.http_decision(&id, body, "wrong-secret-0123456789", now_unix());
    assert_eq!(status, 401);
    // The webhook's secret, or another reviewer's key, does not sign for alice.
    let (status, _) = scenario.http_decision(&id, body, WEBHOOK_SECRET, now_unix());
    assert_eq!(status, 401);
    let (status, _) = scenario.http_decision(&id, body, &reviewer_key("root"), now_unix());
    assert_eq!(status, 401);
    let stale = now_unix() - 6 * 60;
    let (status, _) = scenario.http_decision(&id, body, &key, stale);
    assert_eq!(status, 401);
    let (status, _) = scenario.http_decision(&id, "{not json", &key, now_unix());
    assert_eq!(status, 400);
    // A reviewer without a key (and anyone not a reviewer) has no HTTP channel.
    let unlisted = r#"{"decision":"approve","reviewer":"bob","reason":null}"#;
    let (status, _) = scenario.http_decision(&id, unlisted, &key, now_unix());
    assert_eq!(status, 401);
    let (status, _) = scenario.http_decision("0123456789ab", body, &key, now_unix());
    assert_eq!(status, 404);
    // Not even the shape of a request id: refused before anything else.
    let (status, _) = scenario.http_decision("nosuchid", body, &key, now_unix());
    assert_eq!(status, 400);
    assert_eq!(scenario.request(&id)["state"], "pending");
    assert_eq!(scenario.agent_exec(), Exec::Denied);

    let (status, answer) = scenario.http_decision(&id, body, &key, now_unix());
    assert_eq!(status, 200, "{answer}");
    let request = scenario.request(&id);
    assert_eq!(request["state"], "approved");
    assert_eq!(request["decision"]["reviewer"], "alice");
    assert_eq!(request["decision"]["channel"], "webhook");
    assert_eq!(scenario.agent_exec(), Exec::Ran);
    let (status, _) = scenario.http_decision(&id, body, &key, now_unix());
    assert_eq!(status, 409);
}

#[test]
fn replaced_protected_path_stays_protected() {
    let scenario = Scenario::start("replaced", Options::default());
    // A hard link kept from before the upgrade still names the old binary.
    let old_binary = scenario.dir.join("protected/kept-old");
    std::fs::hard_link(&scenario.protected, &old_binary).unwrap();
    // A package upgrade: a new file renamed over the old path.
    let staged = scenario.dir.join("protected/.dbexport.new");
    std::fs::copy(bin("gk-helper"), &staged).unwrap();
    std::fs::rename(&staged, &scenario.protected).unwrap();
    scenario.wait_journal("protection_updated", |_| true);
    assert_eq!(scenario.agent_exec(), Exec::Denied);
    assert_eq!(
        scenario.exec_in(&scenario.agents, &old_binary),
        Exec::Denied
    );
    let status = scenario.gatekeeper(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&scenario.protected).unwrap());
    assert_eq!(status["protected"][0]["ino"], ino);
    // Held while it has a name; gone with its last one, it leaves the kernel's map before its
    // inode number can name another file.
    let released = "a file a protected path named before is gone";
    let old_ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&old_binary).unwrap());
    assert!(!scenario.daemon_log().contains(released));
    assert_eq!(
        scenario.exec_in(&scenario.agents, &old_binary),
        Exec::Denied
    );
    std::fs::remove_file(&old_binary).unwrap();
    wait_for("the old binary let go", || {
        let log = scenario.daemon_log();
        log.lines()
            .any(|line| line.contains(released) && line.contains(&format!("ino={old_ino}")))
            .then_some(())
    });
    assert_eq!(scenario.agent_exec(), Exec::Denied);
}

#[test]
fn journal_verifies_then_fails_after_an_edit() {
    let mut scenario = Scenario::start("journal", Options::default());
    let id = scenario.denied_request();
    scenario.approve(&id);
    assert_eq!(scenario.agent_exec(), Exec::Ran);
    scenario.wait_journal("grant_used", |_| true);
    scenario.stop_daemon();

    let journal = scenario.journal.display().to_string();
    let verify = scenario.gatekeeper(&["journal", "verify", &journal]);
    assert!(verify.status.success(), "{verify:?}");
    let kinds: Vec<String> = scenario
        .journal_events()
        .iter()
        .map(|event| event["type"].as_str().unwrap_or_default().to_owned())
        .collect();
    for kind in [
        "daemon_started",
        "request_created",
        "decision",
        "grant_issued",
        "grant_used",
        "daemon_stopped",
    ] {
        assert!(kinds.iter().any(|k| k == kind), "no {kind} in {kinds:?}");
    }

    let text = std::fs::read_to_string(&scenario.journal).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let decision_line = lines
        .iter()
        .position(|line| line.contains("\"type\":\"decision\""))
        .unwrap();
    lines[decision_line] =
        lines[decision_line].replace("\"reviewer\":\"root\"", "\"reviewer\":\"alice\"");
    std::fs::write(&scenario.journal, lines.join("\n") + "\n").unwrap();
    let verify = scenario.gatekeeper(&["journal", "verify", &journal]);
    assert!(!verify.status.success());
    let stderr = String::from_utf8_lossy(&verify.stderr);
    assert!(
        stderr.contains(&format!("line {}", decision_line + 1)),
        "{stderr}"
    );
}

#[test]
fn bad_config_exits_2_naming_the_key_before_loading() {
    let scenario = Scenario::prepare("bad-config", Options::default());
    let text = std::fs::read_to_string(&scenario.config).unwrap();
    std::fs::write(
        &scenario.config,
        text.replace("grant_ttl = \"60s\"", "grant_ttl = \"soon\""),
    )
    .unwrap();
    let output = Command::new(bin("gatekeeper"))
        .args(["daemon", "--config"])
        .arg(&scenario.config)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("approval.grant_ttl"));
    // Nothing was loaded: the agent is not blocked.
    assert_eq!(scenario.agent_exec(), Exec::Ran);
    let check = Command::new(bin("gatekeeper"))
        .arg("check-config")
        .arg(&scenario.config)
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(2));
}
