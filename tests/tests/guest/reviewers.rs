//! Reviewers where they work: Slack interactions, separation of duties, multi-approval rules,
//! reasons, webhooks that come back, and agents that wait for the outcome.

use std::{os::unix::fs::PermissionsExt as _, process::Command, time::Duration};

use gatekeeper_tests::{
    Exec, Options, Outcome, Scenario, UNLISTED_UID, WEBHOOK_SECRET, WebhookReceiver, bin,
    decision_signature, now_unix, reviewer_key, slack_signature, wait_for,
};

const SLACK_SECRET: &str = "slack-signing-secret-for-tests";
const ALICE_UID: u32 = 1000;

/// A Slack webhook (delivering to `receiver`), Slack user ids mapped to reviewers, and alice as
/// the owner of the agent cgroup.
fn slack_config(scenario: &Scenario, receiver: &WebhookReceiver) -> String {
    slack_webhooks(receiver)
        + &format!(
            "\n[[agents.owner]]\ncgroup = \"{}\"\nowner = \"alice\"\n",
            scenario.agents.display()
        )
}

/// The Slack and Teams webhooks and the Slack users, without owners.
fn slack_webhooks(receiver: &WebhookReceiver) -> String {
    format!(
        r#"
[[webhook]]
kind = "slack"
url = "{url}"
signing_secret = "{SLACK_SECRET}"

[[webhook]]
kind = "teams"
url = "{url}"

[approval.slack_users]
UROOT = "root"
UALICE = "alice"
"#,
        url = receiver.url,
    )
}

/// A scenario whose config `edit` rewrites before the daemon starts.
fn start_edited(name: &str, edit: impl Fn(&Scenario, String) -> String) -> Scenario {
    let mut scenario = Scenario::prepare(name, Options::default());
    let text = std::fs::read_to_string(&scenario.config).unwrap();
    std::fs::write(&scenario.config, edit(&scenario, text)).unwrap();
    scenario.start_daemon();
    scenario
}

fn button(user: &str, action: &str, id: &str, response_url: &str) -> String {
    let payload = serde_json::json!({
        "type": "block_actions",
        "user": {"id": user, "username": user},
        "actions": [{"action_id": action, "value": id, "type": "button"}],
        "response_url": response_url,
    });
    serde_urlencoded::to_string([("payload", payload.to_string())]).unwrap()
}

fn decisions(scenario: &Scenario) -> usize {
    scenario
        .journal_events()
        .iter()
        .filter(|event| event["type"] == "decision")
        .count()
}

#[test]
fn slack_interactions_are_verified_and_decide_once() {
    let receiver = WebhookReceiver::start();
    let scenario = start_edited("slack", |s, text| text + &slack_config(s, &receiver));
    let id = scenario.denied_request();

    // The Block Kit message and the Adaptive Card went out, as well as the generic document.
    let delivered = wait_for("three deliveries", || {
        let all = receiver.received();
        (all.len() >= 2 && scenario.webhook.as_ref()?.received().len() == 1).then_some(all)
    });
    let slack = delivered
        .iter()
        .map(|m| m.json())
        .find(|m| m["blocks"].is_array())
        .unwrap();
    let buttons = &slack["blocks"].as_array().unwrap().last().unwrap()["elements"];
    assert_eq!(buttons[0]["action_id"], "approve");
    assert_eq!(buttons[0]["value"], id.as_str());
    let teams = delivered
        .iter()
        .map(|m| m.json())
        .find(|m| m["type"] == "message")
        .unwrap();
    assert_eq!(teams["attachments"][0]["content"]["type"], "AdaptiveCard");

    let body = button("UROOT", "approve", &id, &receiver.url);
    let now = now_unix();
    // Refused, changing nothing: stale timestamp, changed body, wrong secret, unmapped user.
    assert_eq!(
        scenario
            .slack_interaction(&body, SLACK_SECRET, now - 6 * 60)
            .0,
        401
    );
    let signature = slack_signature(SLACK_SECRET, now, &body);
    let changed = button("UROOT", "approve", &id, "http://127.0.0.1:1/elsewhere");
    assert_eq!(
        scenario
            .post_slack(&changed, &now.to_string(), &signature)
            .0,
        401
    );
    assert_eq!(
        scenario
            .slack_interaction(&body, "not-the-signing-secret", now)
            .0,
        401
    );
    let stranger = button("USTRANGER", "approve", &id, &receiver.url);
    assert_eq!(
        scenario.slack_interaction(&stranger, SLACK_SECRET, now).0,
        403
    );
    assert_eq!(scenario.request(&id)["state"], "pending");
    assert_eq!(decisions(&scenario), 0);
    assert_eq!(scenario.agent_exec(), Exec::Denied);

    // Signed as Slack does, by a mapped reviewer: decided, and the message replaced.
    let (status, answer) = scenario.slack_interaction(&body, SLACK_SECRET, now);
    assert_eq!(status, 200, "{answer}");
    let request = scenario.request(&id);
    assert_eq!(request["state"], "approved");
    assert_eq!(request["decision"]["channel"], "slack");
    assert_eq!(request["decision"]["reviewer"], "root");
    wait_for("the Slack message to be replaced", || {
        receiver
            .received()
            .into_iter()
            .find(|m| m.json()["replace_original"] == true)
    });

    // The same interaction again decides nothing.
    let (status, answer) = scenario.slack_interaction(&body, SLACK_SECRET, now);
    assert_eq!(status, 200);
    assert!(answer.contains("Not decided"), "{answer}");
    assert_eq!(decisions(&scenario), 1);
    assert_eq!(scenario.agent_exec(), Exec::Ran);
}

/// Who calls on the reviewers' socket is told by the host's /etc/passwd, not by a name service
/// an agent can stand up: a root agent's nscd (where glibc asks first) naming bob "alice" and
/// root "alice" makes neither a reviewer to the daemon, while glibc outside believes it.
#[test]
fn an_agents_name_service_names_no_reviewer() {
    let mut scenario = Scenario::prepare("rv-nscd", Options::default());
    let bob = UNLISTED_UID.to_string();
    let pairs = [format!("{bob}=alice"), "0=alice".to_owned()];
    // Up before the daemon, so that its very first lookup would go there.
    let _service = scenario.agents_name_service(&pairs);
    scenario.start_daemon();
    // glibc, in a fresh process outside, takes its word.
    let lookup = Command::new(bin("gk-helper"))
        .args(["tamper", "-", "user-name", &bob])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&lookup.stdout).contains("NAME=alice"),
        "{lookup:?}"
    );
    let id = scenario.denied_request();
    assert_eq!(scenario.request(&id)["process"]["user"], "root");
    let approve = scenario.gatekeeper_as(UNLISTED_UID, &["approve", &id]);
    assert!(
        String::from_utf8_lossy(&approve.stderr).contains("bob is not a listed reviewer"),
        "{approve:?}"
    );
    assert_eq!(scenario.request(&id)["state"], "pending");
    // alice herself, outside, approves it.
    let approve = scenario.gatekeeper_as(ALICE_UID, &["approve", &id, "--reason", "checked"]);
    assert!(approve.status.success(), "{approve:?}");
}

#[test]
fn the_owner_never_approves_on_any_channel() {
    let receiver = WebhookReceiver::start();
    let scenario = start_edited("owner", |s, text| text + &slack_config(s, &receiver));
    let id = scenario.denied_request();
    assert_eq!(scenario.request(&id)["owner"], "alice");

    let by_cli = scenario.gatekeeper_as(ALICE_UID, &["approve", &id, "--reason", "mine"]);
    assert!(!by_cli.status.success());
    assert!(
        String::from_utf8_lossy(&by_cli.stderr).contains("owns the agent"),
        "{by_cli:?}"
    );
    let body = r#"{"decision":"approve","reviewer":"alice","reason":"mine"}"#;
    assert_eq!(
        scenario
            .http_decision(&id, body, &reviewer_key("alice"), now_unix())
            .0,
        403
    );
    let slack = button("UALICE", "approve", &id, &receiver.url);
    let (status, answer) = scenario.slack_interaction(&slack, SLACK_SECRET, now_unix());
    assert_eq!(status, 200);
    assert!(answer.contains("owns the agent"), "{answer}");
    assert_eq!(scenario.request(&id)["state"], "pending");
    assert_eq!(decisions(&scenario), 0);
    assert_eq!(scenario.agent_exec(), Exec::Denied);

    // Someone else may.
    assert!(scenario.gatekeeper(&["approve", &id]).status.success());
    assert_eq!(scenario.agent_exec(), Exec::Ran);
}

#[test]
fn two_approval_rule_needs_two_distinct_reviewers_and_a_reason() {
    let scenario = start_edited("two-approvals", |_, text| {
        text.replace(
            "name = \"database export\"",
            "name = \"database export\"\napprovals = 2\nrequire_reason = true",
        )
    });
    let id = scenario.denied_request();

    let no_reason = scenario.gatekeeper(&["approve", &id]);
    assert!(!no_reason.status.success());
    assert!(String::from_utf8_lossy(&no_reason.stderr).contains("needs a reason"));

    let first = scenario.gatekeeper(&["approve", &id, "--reason", "ticket 42"]);
    assert!(first.status.success(), "{first:?}");
    assert!(
        String::from_utf8_lossy(&first.stdout).contains("1 of 2"),
        "{first:?}"
    );
    assert_eq!(scenario.request(&id)["state"], "pending");
    assert_eq!(
        scenario.agent_exec(),
        Exec::Denied,
        "one approval is not enough"
    );

    let again = scenario.gatekeeper(&["approve", &id, "--reason", "ticket 42"]);
    assert!(!again.status.success(), "the same reviewer twice");
    let body = r#"{"decision":"approve","reviewer":"alice","reason":"ticket 42 too"}"#;
    let (status, answer) = scenario.http_decision(&id, body, &reviewer_key("alice"), now_unix());
    assert_eq!(status, 200, "{answer}");
    assert_eq!(scenario.request(&id)["state"], "approved");
    assert_eq!(scenario.agent_exec(), Exec::Ran);
    assert_eq!(scenario.agent_exec(), Exec::Denied);
}

#[test]
fn a_partial_slack_approval_keeps_the_buttons() {
    let receiver = WebhookReceiver::start();
    let scenario = start_edited("slack-two", |_, text| {
        text.replace(
            "name = \"database export\"",
            "name = \"database export\"\napprovals = 2",
        ) + &slack_webhooks(&receiver)
    });
    let id = scenario.denied_request();
    let body = button("UROOT", "approve", &id, &receiver.url);
    let (status, answer) = scenario.slack_interaction(&body, SLACK_SECRET, now_unix());
    assert_eq!(status, 200);
    assert!(answer.contains("1 of 2"), "{answer}");
    assert_eq!(scenario.request(&id)["state"], "pending");
    assert_eq!(scenario.agent_exec(), Exec::Denied);
    // The message keeps its buttons for the next reviewer.
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        !receiver
            .received()
            .iter()
            .any(|m| m.json()["replace_original"] == true)
    );
    let second = button("UALICE", "approve", &id, &receiver.url);
    let (status, answer) = scenario.slack_interaction(&second, SLACK_SECRET, now_unix());
    assert_eq!(status, 200, "{answer}");
    assert_eq!(scenario.request(&id)["state"], "approved");
    wait_for("the Slack message to be replaced", || {
        receiver
            .received()
            .into_iter()
            .find(|m| m.json()["replace_original"] == true)
    });
    assert_eq!(scenario.agent_exec(), Exec::Ran);
}

#[test]
fn a_down_webhook_gets_the_request_once_it_is_back_also_across_a_restart() {
    let mut scenario = Scenario::start(
        "redeliver",
        Options {
            webhook_down: true,
            webhook_attempts: 1,
            redeliver_interval: "1s",
            ..Options::default()
        },
    );
    let id = scenario.denied_request();
    scenario.wait_journal("webhook_delivery", |event| {
        event["request_ids"][0] == id.as_str() && event["delivered"] == false
    });
    assert_eq!(scenario.request(&id)["state"], "pending");
    scenario.bring_webhook_up();
    let hook = scenario.webhook.as_ref().unwrap();
    let message = wait_for("the redelivery", || hook.received().into_iter().next());
    assert_eq!(message.json()["request"]["id"], id.as_str());

    // Down again, with a new request, and the daemon killed before it could deliver.
    scenario.webhook = None;
    // The same binary from a child cgroup is a new request.
    let child = scenario.agents.join("second");
    std::fs::create_dir(&child).unwrap();
    assert_eq!(scenario.exec_in(&child, &scenario.protected), Exec::Denied);
    let other = wait_for("the second request", || {
        scenario
            .requests(false)
            .into_iter()
            .find(|request| request["id"] != id.as_str())
            .and_then(|request| request["id"].as_str().map(str::to_owned))
    });
    scenario.kill_daemon();
    scenario.bring_webhook_up();
    scenario.start_daemon();
    let hook = scenario.webhook.as_ref().unwrap();
    let message = wait_for("the delivery after the restart", || {
        hook.received()
            .into_iter()
            .find(|m| m.json()["request"]["id"] == other.as_str())
    });
    assert_eq!(message.json()["type"], "gatekeeper.request");
    // What was delivered before the restart is not sent again.
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !hook
            .received()
            .iter()
            .any(|m| m.json()["request"]["id"] == id.as_str()),
        "delivered twice"
    );
}

#[test]
fn agents_await_their_own_requests() {
    let scenario = Scenario::start("await", Options::default());
    let args = ["await", "--timeout", "60s"];

    let id = scenario.denied_request();
    let waiting = scenario.spawn_gatekeeper_in(&scenario.agents, &args);
    std::thread::sleep(Duration::from_millis(500));
    assert!(scenario.gatekeeper(&["approve", &id]).status.success());
    let approved = waiting.wait_with_output().unwrap();
    assert_eq!(approved.status.code(), Some(0), "{approved:?}");
    assert_eq!(scenario.agent_exec(), Exec::Ran, "retry now");

    let id = scenario.denied_request();
    let waiting = scenario.spawn_gatekeeper_in(&scenario.agents, &["await", "--last"]);
    std::thread::sleep(Duration::from_millis(500));
    assert!(scenario.gatekeeper(&["deny", &id]).status.success());
    assert_eq!(waiting.wait_with_output().unwrap().status.code(), Some(1));

    let id = scenario.denied_request();
    let timed_out = scenario.gatekeeper_in(&scenario.agents, &["await", &id, "--timeout", "1s"]);
    assert_eq!(timed_out.status.code(), Some(2), "{timed_out:?}");

    // Nobody outside the agent cgroups has requests to wait on, this one's neither.
    let elsewhere = scenario.gatekeeper_in(&scenario.outside, &["await", &id, "--timeout", "1s"]);
    assert_eq!(elsewhere.status.code(), Some(3), "{elsewhere:?}");
    assert!(
        String::from_utf8_lossy(&elsewhere.stderr).contains("it has no requests"),
        "{elsewhere:?}"
    );
}

#[test]
fn await_reports_expiry() {
    let scenario = Scenario::start(
        "await-expiry",
        Options {
            request_ttl: "2s",
            ..Options::default()
        },
    );
    let id = scenario.denied_request();
    let expired = scenario.gatekeeper_in(&scenario.agents, &["await", &id]);
    assert_eq!(expired.status.code(), Some(2), "{expired:?}");
    assert!(String::from_utf8_lossy(&expired.stdout).contains("expired"));
}

/// Reviewers' HTTP decisions arrive on the daemon's listener: no agent reaches it, root or not,
/// by connect or TCP Fast Open, v4 or v4-mapped v6; from outside it answers.
#[test]
fn agents_cannot_reach_the_http_listener() {
    let scenario = Scenario::start("http-off-limits", Options::default());
    let address = scenario.http.trim_start_matches("http://").to_owned();
    let port = address.rsplit_once(':').unwrap().1.to_owned();
    let mapped = format!("[::ffff:127.0.0.1]:{port}");
    for (op, target) in [("tcp", &address), ("fastopen", &address), ("tcp", &mapped)] {
        assert_eq!(
            scenario.net(&scenario.agents, op, target),
            Outcome::Denied,
            "{op} {target}"
        );
    }
    let uid = gatekeeper_tests::UNLISTED_UID.to_string();
    let as_user = Command::new(bin("gk-helper"))
        .args(["as-user", &uid])
        .arg(&scenario.agents)
        .arg(bin("gk-helper"))
        .args(["net", "-", "tcp", &address])
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&as_user.stdout);
    assert!(
        printed.contains(&format!("RESULT=errno:{}", libc::EPERM)),
        "{as_user:?}"
    );
    let refused =
        scenario.wait_journal("tamper_attempt", |event| event["hook"] == "daemon_listener");
    assert_eq!(refused["detail"][0].as_u64(), port.parse::<u64>().ok());
    assert!(scenario.requests(true).is_empty(), "nothing to approve");
    // Control: from outside the agent cgroups the listener answers.
    assert_eq!(
        scenario.net(&scenario.outside, "tcp", &address),
        Outcome::Ok
    );
}

/// An agent's hostile arguments reach Slack and Teams as text: in Slack as plain_text values (no
/// mention, link or bold works there) on one line, in Teams with markdown escaped. And the agent,
/// root or not, decides nothing over HTTP: signed with the webhooks' shared secret, with a
/// reviewer's own key, unsigned, or as a Slack interaction; the journal shows no decision until a
/// reviewer outside decides (the control).
#[test]
fn hostile_arguments_stay_text_in_chat_and_agents_decide_nothing_over_http() {
    let receiver = WebhookReceiver::start();
    let scenario = start_edited("chat-hostile", |_, text| text + &slack_webhooks(&receiver));
    let hostile = [
        "target",
        "<!channel>",
        "<https://evil|docs>",
        "*Approved by security*",
        "ok\nAPPROVED by root",
        "\u{202e}txt",
    ];
    let (exec, _) = scenario.exec_with(&scenario.agents, &scenario.protected, &hostile);
    assert_eq!(exec, Exec::Denied);
    let program = scenario.protected.display().to_string();
    let argv: Vec<&str> = std::iter::once(program.as_str()).chain(hostile).collect();
    let request = scenario.wait_exec_request(&argv);
    let id = request["id"].as_str().unwrap().to_owned();
    let body_with = |key: &str| {
        wait_for(&format!("the {key} message"), || {
            receiver
                .received()
                .into_iter()
                .map(|message| message.json())
                .find(|body| body.get(key).is_some() && body.to_string().contains(&id))
        })
    };
    let slack = body_with("blocks");
    let mut values = 0;
    for block in slack["blocks"].as_array().unwrap() {
        let Some(fields) = block["fields"].as_array() else {
            continue;
        };
        for pair in fields.chunks(2) {
            assert_eq!(pair[1]["type"], "plain_text", "{pair:?}");
            let value = pair[1]["text"].as_str().unwrap();
            assert!(
                !value.contains('\n') && !value.contains('\u{202e}'),
                "{value}"
            );
            values += 1;
        }
    }
    assert!(values > 0, "{slack}");
    assert!(
        slack.to_string().contains("<!channel>"),
        "the argv is shown"
    );
    let fallback = slack["text"].as_str().unwrap_or_default();
    assert!(
        !fallback.contains("<!") && !fallback.contains("evil"),
        "{fallback}"
    );
    let teams = body_with("attachments");
    let facts = teams["attachments"][0]["content"]["body"][1]["facts"]
        .as_array()
        .unwrap();
    let will_run = facts
        .iter()
        .find(|fact| fact["title"] == "Will run")
        .and_then(|fact| fact["value"].as_str())
        .unwrap();
    for escaped in [
        "\\<\\!channel\\>",
        "\\<https://evil\\|docs\\>",
        "\\*Approved by security\\*",
    ] {
        assert!(will_run.contains(escaped), "{escaped} in {will_run}");
    }
    assert!(
        !will_run.contains('\n') && !will_run.contains('\u{202e}'),
        "{will_run}"
    );

    // The agent tries to decide its own request over HTTP, root and an ordinary user.
    let address = scenario.http.trim_start_matches("http://").to_owned();
    let decision_path = format!("/v1/requests/{id}/decision");
    let decision = r#"{"decision":"approve","reviewer":"alice","reason":"self"}"#;
    let signed = |secret: &str| {
        let now = now_unix();
        vec![
            "Content-Type: application/json".to_owned(),
            format!("X-Gatekeeper-Timestamp: {now}"),
            format!(
                "X-Gatekeeper-Signature: {}",
                decision_signature(secret, now, decision)
            ),
        ]
    };
    let interaction = button("UALICE", "approve", &id, &receiver.url);
    let now = now_unix();
    let slack_headers = vec![
        "Content-Type: application/x-www-form-urlencoded".to_owned(),
        format!("X-Slack-Request-Timestamp: {now}"),
        format!(
            "X-Slack-Signature: {}",
            slack_signature(SLACK_SECRET, now, &interaction)
        ),
    ];
    let attempts: Vec<(&str, &str, Vec<String>)> = vec![
        (&decision_path, decision, signed(WEBHOOK_SECRET)),
        (&decision_path, decision, signed(&reviewer_key("alice"))),
        (
            &decision_path,
            decision,
            vec!["Content-Type: application/json".to_owned()],
        ),
        ("/v1/slack/interactions", &interaction, slack_headers),
    ];
    let helper = bin("gk-helper").display().to_string();
    let agents = scenario.agents.display().to_string();
    let uid = UNLISTED_UID.to_string();
    for (path, body, headers) in &attempts {
        let mut root = vec!["tamper", agents.as_str(), "http-post", &address, path, body];
        root.extend(headers.iter().map(String::as_str));
        let mut user = vec![
            "as-user",
            uid.as_str(),
            agents.as_str(),
            helper.as_str(),
            "tamper",
            "-",
            "http-post",
            &address,
            path,
            body,
        ];
        user.extend(headers.iter().map(String::as_str));
        for (who, args) in [("root", root), ("user", user)] {
            let output = Command::new(bin("gk-helper")).args(&args).output().unwrap();
            let printed = String::from_utf8_lossy(&output.stdout);
            assert!(
                printed.contains(&format!("RESULT=errno:{}", libc::EPERM)),
                "{who} agent {path}: {printed}"
            );
        }
    }
    assert_eq!(decisions(&scenario), 0);
    assert_eq!(scenario.request(&id)["state"], "pending");
    // Control: outside, the webhook secret signs nothing, and alice's own key decides.
    let post = |headers: Vec<String>| {
        let mut args = vec![
            "tamper",
            "-",
            "http-post",
            &address,
            &decision_path,
            decision,
        ];
        args.extend(headers.iter().map(String::as_str));
        let output = Command::new(bin("gk-helper")).args(&args).output().unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let refused = post(signed(WEBHOOK_SECRET));
    assert!(refused.contains("STATUS=HTTP/1.1 401"), "{refused}");
    let taken = post(signed(&reviewer_key("alice")));
    assert!(taken.contains("STATUS=HTTP/1.1 200"), "{taken}");
    assert_eq!(decisions(&scenario), 1);

    // The keys live in a config only root reads: a copy open to others is refused, the error
    // naming the file and the fix.
    let open = scenario.dir.join("open-config.toml");
    std::fs::copy(&scenario.config, &open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
    let open_text = open.display().to_string();
    let refused = scenario.gatekeeper(&["check-config", &open_text]);
    assert!(!refused.status.success(), "{refused:?}");
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains(&format!("chmod 600 {open_text}")), "{said}");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o600)).unwrap();
    let accepted = scenario.gatekeeper(&["check-config", &open_text]);
    assert!(accepted.status.success(), "{accepted:?}");
}

/// Decisions on the CLI arrive on the reviewers' socket, which the kernel keeps agents off: no
/// agent (root, an ordinary user, or a listed reviewer running inside an agent cgroup) connects
/// to it, by its path or another; the agents' socket beside it takes no decision; and no agent
/// replaces either socket or makes a name beside them (one that could stand in for a socket
/// while the daemon is away). Controls: from outside, each works.
#[test]
fn agents_cannot_reach_the_reviewers_socket() {
    let scenario = Scenario::start("socket-off-limits", Options::default());
    let id = scenario.denied_request();
    let run_dir = scenario.socket.parent().unwrap().to_owned();
    let socket = scenario.socket.display().to_string();
    let agent_socket = run_dir.join("agent.sock").display().to_string();
    let symlink = scenario.dir.join("socket-link");
    std::os::unix::fs::symlink(&scenario.socket, &symlink).unwrap();
    let symlink = symlink.display().to_string();
    // (A seqpacket or datagram socket fails on the socket's type before any LSM is asked.)
    for path in [&socket, &symlink] {
        assert_eq!(
            scenario.tamper(&scenario.agents, "unix-connect", &[path]),
            Outcome::Denied,
            "{path}"
        );
        scenario.user_agent_denied("unix-connect", &[path]);
    }
    scenario.wait_journal("tamper_attempt", |event| event["hook"] == "reviewer_socket");

    // The CLI, as root and as alice (a listed reviewer) inside the agent cgroup.
    let refused = scenario.gatekeeper_in(&scenario.agents, &["approve", &id]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("refuses processes in agent cgroups"),
        "{refused:?}"
    );
    let as_alice = Command::new(bin("gk-helper"))
        .args(["as-user", &ALICE_UID.to_string()])
        .arg(&scenario.agents)
        .arg(bin("gatekeeper"))
        .args(["--socket", &socket, "approve", &id])
        .output()
        .unwrap();
    assert!(!as_alice.status.success(), "{as_alice:?}");
    // Pointed at the agents' socket, a decision is refused there.
    let on_agents = Command::new(bin("gk-helper"))
        .arg("run")
        .arg(&scenario.agents)
        .arg(bin("gatekeeper"))
        .args(["--socket", &agent_socket, "approve", &id])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&on_agents.stderr).contains("takes no decisions"),
        "{on_agents:?}"
    );
    // Status still answers agents, on their socket.
    let status = scenario.gatekeeper_in(&scenario.agents, &["status"]);
    assert!(status.status.success(), "{status:?}");

    // Neither socket is unlinked or renamed, and no name is made beside them: the kernel's
    // refusal, also where the directory's mode would let an ordinary user in.
    std::fs::set_permissions(&run_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let planted = run_dir.join("planted").display().to_string();
    for path in [&socket, &agent_socket] {
        for user in [false, true] {
            let tamper = |op: &str, args: &[&str]| match user {
                true => scenario.tamper_as_user(&scenario.agents, op, args),
                false => scenario.tamper(&scenario.agents, op, args),
            };
            assert_eq!(tamper("unlink", &[path]), Outcome::Denied, "unlink {path}");
            assert_eq!(
                tamper("rename", &[path, &planted]),
                Outcome::Denied,
                "rename {path}"
            );
            assert_eq!(tamper("mkdir", &[&planted]), Outcome::Denied, "mkdir");
            assert_eq!(tamper("write", &[&planted, "x"]), Outcome::Denied, "create");
        }
    }
    assert_eq!(scenario.request(&id)["state"], "pending");
    assert!(!scenario.journal_has("decision"));

    // Controls: outside, the socket answers, names can be made, and the decision is taken.
    assert_eq!(
        scenario.tamper(&scenario.outside, "unix-connect", &[&symlink]),
        Outcome::Ok
    );
    assert_eq!(
        scenario.tamper(&scenario.outside, "mkdir", &[&planted]),
        Outcome::Ok
    );
    assert_eq!(
        scenario.tamper(&scenario.outside, "rmdir", &[&planted]),
        Outcome::Ok
    );
    assert!(scenario.gatekeeper(&["approve", &id]).status.success());
    assert_eq!(scenario.agent_exec(), Exec::Ran);
}
