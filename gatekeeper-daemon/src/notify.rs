//! Sending new requests to reviewers' webhooks, and the HMAC signature both directions share.
//!
//! A signature is `v1=` and the hex HMAC-SHA256, keyed with the webhook's secret, of
//! `"{timestamp}.{body}"`; the timestamp is Unix seconds, sent in its own header.

use std::time::Duration;

use hmac::{Hmac, Mac as _};
use serde::Serialize;
use sha2::Sha256;

use serde_json::{Value, json};

use crate::{
    config::{Webhook, WebhookKind},
    core::DeliveryAttempt,
    requests::{Kind, Request},
    shown::{FIELD_LIMIT, slack_escaped, teams_escaped, visible},
};

pub const TIMESTAMP_HEADER: &str = "x-gatekeeper-timestamp";
pub const SIGNATURE_HEADER: &str = "x-gatekeeper-signature";
const SIGNATURE_PREFIX: &str = "v1=";
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(500);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);

pub(crate) type HmacSha256 = Hmac<Sha256>;

/// An HMAC-SHA-256 keyed with `secret`.
pub(crate) fn keyed(secret: &[u8]) -> HmacSha256 {
    HmacSha256::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"))
}

fn mac(secret: &[u8], timestamp: i64, body: &[u8]) -> HmacSha256 {
    let mut mac = keyed(secret);
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    format!(
        "{SIGNATURE_PREFIX}{}",
        hex::encode(mac(secret, timestamp, body).finalize().into_bytes())
    )
}

/// Constant-time check of a signature header against the expected HMAC.
pub fn verify(secret: &[u8], timestamp: i64, body: &[u8], signature: &str) -> bool {
    let Some(Ok(tag)) = signature.strip_prefix(SIGNATURE_PREFIX).map(hex::decode) else {
        return false;
    };
    mac(secret, timestamp, body).verify_slice(&tag).is_ok()
}

/// Checks Slack's request signature: `v0=` and the hex HMAC-SHA256, keyed with the signing
/// secret, of `v0:{timestamp}:{body}`; constant-time.
pub fn slack_signature_valid(secret: &[u8], timestamp: &str, body: &[u8], signature: &str) -> bool {
    let Some(Ok(tag)) = signature.strip_prefix("v0=").map(hex::decode) else {
        return false;
    };
    let mut mac = keyed(secret);
    mac.update(b"v0:");
    mac.update(timestamp.as_bytes());
    mac.update(b":");
    mac.update(body);
    mac.verify_slice(&tag).is_ok()
}

/// The document every generic webhook receives.
#[derive(Serialize)]
pub struct RequestMessage<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub request: &'a Request,
    /// Where to POST the decision on the daemon's HTTP listener.
    pub decision_path: String,
}

impl<'a> RequestMessage<'a> {
    pub fn new(request: &'a Request) -> Self {
        Self {
            kind: "gatekeeper.request",
            request,
            decision_path: format!("/v1/requests/{}/decision", request.id),
        }
    }
}

/// Slack cuts header texts at 150 characters.
const HEADER_LIMIT: usize = 140;

/// What the agent attempted, in a reviewer's words.
fn attempted(request: &Request) -> String {
    match (request.kind, &request.destination) {
        (_, Some(destination)) => format!("connect to {destination}"),
        // A unix socket: the target names it.
        (Kind::Connect, None) => format!("connect to {}", request.target),
        (Kind::Exec, None) => format!("exec {}", request.target),
        (Kind::File, None) => format!(
            "{} {}",
            access_words(request.target_key.aux),
            request.target
        ),
    }
}

/// A file target's access bits, as a reviewer reads them.
fn access_words(access: u32) -> &'static str {
    use gatekeeper_common::file_access::{READ, WRITE};
    match (access & READ != 0, access & WRITE != 0) {
        (true, true) => "read and write",
        (false, true) => "write",
        // A protected binary's read, and anything unexpected: reading is the lesser claim.
        _ => "read",
    }
}

/// The facts a reviewer needs, as (label, value) pairs, in the order they are shown; every value
/// made [`visible`] and capped, since most come from the agent.
pub fn facts(request: &Request) -> Vec<(&'static str, String)> {
    raw_facts(request)
        .into_iter()
        .map(|(label, value)| (label, visible(&value, FIELD_LIMIT)))
        .collect()
}

fn raw_facts(request: &Request) -> Vec<(&'static str, String)> {
    let process = &request.process;
    let user = process
        .user
        .clone()
        .unwrap_or_else(|| format!("uid {}", process.uid));
    let what = attempted(request);
    let command = process
        .argv
        .as_ref()
        .map(|argv| argv.join(" "))
        .unwrap_or_else(|| "(gone)".into());
    let expires = request
        .expires
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let mut facts = vec![
        ("Risk", request.risk.name().to_uppercase()),
        ("Request", request.id.clone()),
        ("Rule", request.rule.clone()),
        ("What", what),
    ];
    if let Some(command) = request.will_run() {
        facts.push(("Will run", command));
    }
    if let Some(covers) = request.grant_covers() {
        facts.push(("Approval allows", covers.to_owned()));
    }
    if let Some(text) = &request.justification {
        facts.push(("Agent's own words (unverified)", text.clone()));
    }
    facts.extend([
        ("Agent", request.cgroup.clone()),
        (
            "Owner",
            request.owner.clone().unwrap_or_else(|| "not set".into()),
        ),
        (
            "Process",
            format!("{} (pid {}, {user})", process.comm, process.pid),
        ),
        ("Caller's command line", command),
        (
            "Working directory",
            process.cwd.clone().unwrap_or_else(|| "(gone)".into()),
        ),
        ("Called by", called_by(process)),
        (
            "Approvals",
            format!(
                "{} of {}",
                request.approvals.len(),
                request.approvals_required
            ),
        ),
        ("Expires", expires),
    ]);
    facts
}

/// The processes above the caller, parent first: `bash -l (pid 9) < sshd (pid 1)`.
fn called_by(process: &crate::requests::Process) -> String {
    if process.ancestors.is_empty() {
        return "(gone)".into();
    }
    process
        .ancestors
        .iter()
        .map(|ancestor| {
            let name = match (&ancestor.argv, &ancestor.comm) {
                (Some(argv), _) if !argv.is_empty() => argv.join(" "),
                (_, Some(comm)) => comm.clone(),
                _ => "?".into(),
            };
            format!("{name} (pid {})", ancestor.pid)
        })
        .collect::<Vec<_>>()
        .join(" < ")
}

/// The body each kind of webhook receives: one request's message, or a digest of several that
/// piled up while the endpoint's rate limit held them back.
pub fn message(kind: &WebhookKind, requests: &[Request]) -> Value {
    match (kind, requests) {
        (WebhookKind::Generic { .. }, [request]) => json!(RequestMessage::new(request)),
        (WebhookKind::Slack { .. }, [request]) => slack_message(request),
        (WebhookKind::Teams, [request]) => teams_message(request),
        (WebhookKind::Generic { .. }, _) => json!({
            "type": "gatekeeper.digest",
            "requests": requests.iter().map(RequestMessage::new).collect::<Vec<_>>(),
        }),
        (WebhookKind::Slack { .. }, _) => slack_digest(requests),
        (WebhookKind::Teams, _) => teams_digest(requests),
    }
}

/// One short line per request, for digests, made [`visible`] and capped.
fn summary(request: &Request) -> String {
    let what = attempted(request);
    let line = format!(
        "{} · {} risk · {} · {what} · {}",
        request.id,
        request.risk.name(),
        request.rule,
        request.cgroup
    );
    visible(&line, FIELD_LIMIT)
}

/// A message's title: the risk first, then the rule.
fn headline(request: &Request) -> String {
    format!(
        "Approval requested ({} risk): {}",
        request.risk.name(),
        request.rule
    )
}

/// Several requests in one Block Kit message, each with its own buttons.
fn slack_digest(requests: &[Request]) -> Value {
    let mut blocks = vec![json!({
        "type": "header",
        "text": {"type": "plain_text", "text": format!("{} approval requests", requests.len())}
    })];
    for request in requests {
        blocks.push(json!({
            "type": "section",
            "text": plain_text(&summary(request))
        }));
        blocks.push(decision_buttons(
            &format!("gatekeeper_decision_{}", request.id),
            &request.id,
        ));
    }
    json!({
        "text": format!("Gatekeeper: {} approval requests", requests.len()),
        "blocks": blocks,
    })
}

fn teams_digest(requests: &[Request]) -> Value {
    let facts = requests
        .iter()
        .map(|request| (request.id.clone(), teams_escaped(&summary(request))))
        .collect();
    adaptive_card(
        format!("{} approval requests", requests.len()),
        facts,
        "Decide on the host with `gatekeeper approve ID` or `gatekeeper deny ID` (see `gatekeeper requests`), or through your reviewers' integration.".to_owned(),
    )
}

/// Slack's Approve and Deny buttons for request `id`, read back by `POST /v1/slack/interactions`.
fn decision_buttons(block_id: &str, id: &str) -> Value {
    json!({
        "type": "actions",
        "block_id": block_id,
        "elements": [
            {"type": "button", "action_id": "approve", "style": "primary", "value": id,
             "text": {"type": "plain_text", "text": "Approve"}},
            {"type": "button", "action_id": "deny", "style": "danger", "value": id,
             "text": {"type": "plain_text", "text": "Deny"}}
        ]
    })
}

/// A Teams message holding one Adaptive Card: a title, facts, and how to decide.
fn adaptive_card(title: String, facts: Vec<(String, String)>, how_to_decide: String) -> Value {
    let facts: Vec<Value> = facts
        .into_iter()
        .map(|(title, value)| json!({"title": title, "value": value}))
        .collect();
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.4",
                "body": [
                    {"type": "TextBlock", "size": "Medium", "weight": "Bolder", "wrap": true,
                     "text": title},
                    {"type": "FactSet", "facts": facts},
                    {"type": "TextBlock", "wrap": true, "text": how_to_decide}
                ]
            }
        }]
    })
}

/// Text Slack shows as it is: no formatting, mentions, links or emoji codes.
fn plain_text(text: &str) -> Value {
    json!({"type": "plain_text", "text": text, "emoji": false})
}

/// A Block Kit message whose buttons carry the decision in `action_id` and the request id in
/// `value`, for `POST /v1/slack/interactions`. Each fact is a bold label beside its value as
/// plain text, which Slack does not parse.
pub fn slack_message(request: &Request) -> Value {
    let fields: Vec<Value> = facts(request)
        .into_iter()
        .flat_map(|(label, value)| {
            [
                json!({"type": "mrkdwn", "text": format!("*{label}*")}),
                plain_text(&value),
            ]
        })
        .collect();
    // A section holds at most ten fields: five facts.
    let sections: Vec<Value> = fields
        .chunks(10)
        .map(|chunk| json!({"type": "section", "fields": chunk}))
        .collect();
    let mut blocks = vec![json!({
        "type": "header",
        "text": plain_text(&visible(&headline(request), HEADER_LIMIT))
    })];
    blocks.extend(sections);
    blocks.push(decision_buttons("gatekeeper_decision", &request.id));
    // The notification text is mrkdwn, and carries nothing of the agent's.
    json!({
        "text": slack_escaped(&format!(
            "Gatekeeper: approval requested ({} risk), rule {} ({})",
            request.risk.name(),
            visible(&request.rule, HEADER_LIMIT),
            request.id
        )),
        "blocks": blocks,
    })
}

/// An Adaptive Card with the same facts; Teams incoming webhooks take no buttons that call back,
/// so the card says how to decide.
pub fn teams_message(request: &Request) -> Value {
    let facts = facts(request)
        .into_iter()
        .map(|(title, value)| (title.to_owned(), teams_escaped(&value)))
        .collect();
    adaptive_card(
        teams_escaped(&visible(&headline(request), HEADER_LIMIT)),
        facts,
        format!(
            "Decide on the host with `gatekeeper approve {id} --reason ...` or `gatekeeper deny {id}`, or through your reviewers' integration: POST /v1/requests/{id}/decision.",
            id = request.id
        ),
    )
}

fn retry_delay(attempt: u32) -> Duration {
    FIRST_RETRY_DELAY
        .saturating_mul(1 << attempt.saturating_sub(1).min(16))
        .min(MAX_RETRY_DELAY)
}

/// Posts `body` to `hook`, retrying with backoff until a 2xx or the attempts run out; every attempt
/// is passed to `record`. Returns whether it was delivered.
pub async fn deliver(
    client: &reqwest::Client,
    hook: &Webhook,
    body: &[u8],
    mut record: impl FnMut(DeliveryAttempt),
) -> bool {
    for attempt in 1..=hook.attempts {
        let timestamp = time::OffsetDateTime::now_utc().unix_timestamp();
        let mut post = client
            .post(hook.url.clone())
            .timeout(hook.timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        // Generic receivers verify the sender; Slack and Teams webhook URLs are their own secret.
        if let WebhookKind::Generic { secret } = &hook.kind {
            post = post
                .header(TIMESTAMP_HEADER, timestamp.to_string())
                .header(SIGNATURE_HEADER, sign(secret.as_bytes(), timestamp, body));
        }
        let result = post.body(body.to_vec()).send().await;
        let (delivered, status, error) = match result {
            Ok(response) if response.status().is_success() => {
                (true, Some(response.status().as_u16()), None)
            }
            Ok(response) => (
                false,
                Some(response.status().as_u16()),
                Some(format!("HTTP {}", response.status())),
            ),
            Err(error) => (false, None, Some(error.to_string())),
        };
        record(DeliveryAttempt {
            attempt,
            delivered,
            status,
            error,
        });
        if delivered {
            return true;
        }
        if attempt < hook.attempts {
            tokio::time::sleep(retry_delay(attempt)).await;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_round_trips_and_rejects_changes() {
        let signature = sign(b"secret-secret-secret", 1_700_000_000, b"{\"a\":1}");
        assert!(signature.starts_with("v1="));
        assert!(verify(
            b"secret-secret-secret",
            1_700_000_000,
            b"{\"a\":1}",
            &signature
        ));
        assert!(!verify(
            b"secret-secret-secreT",
            1_700_000_000,
            b"{\"a\":1}",
            &signature
        ));
        assert!(!verify(
            b"secret-secret-secret",
            1_700_000_001,
            b"{\"a\":1}",
            &signature
        ));
        assert!(!verify(
            b"secret-secret-secret",
            1_700_000_000,
            b"{\"a\":2}",
            &signature
        ));
        assert!(!verify(
            b"secret-secret-secret",
            1_700_000_000,
            b"{\"a\":1}",
            "v1=zz"
        ));
        assert!(!verify(
            b"secret-secret-secret",
            1_700_000_000,
            b"{\"a\":1}",
            &signature[3..]
        ));
    }

    fn sample_request() -> Request {
        let now = time::OffsetDateTime::now_utc();
        Request {
            id: "a1b2c3d4e5f6".into(),
            state: crate::requests::State::Pending,
            kind: crate::requests::Kind::Exec,
            rule: "database export".into(),
            target: "/usr/bin/pg_dump".into(),
            target_key: gatekeeper_common::Target::exec(1, 2),
            destination: None,
            cgroup: "/sys/fs/cgroup/agents/alice-agent".into(),
            cgroup_id: 7,
            process: crate::requests::Process {
                pid: 10,
                tgid: 10,
                uid: 1000,
                user: Some("alice".into()),
                comm: "python3".into(),
                argv: Some(vec!["python3".into(), "agent.py".into()]),
                parent: None,
                cwd: Some("/srv/agent".into()),
                ancestors: vec![crate::requests::Ancestor {
                    pid: 9,
                    comm: Some("bash".into()),
                    argv: Some(vec!["bash".into(), "-l".into()]),
                }],
            },
            created: now,
            expires: now + Duration::from_secs(900),
            attempts: 1,
            decision: None,
            grant_id: None,
            owner: Some("alice".into()),
            approvals_required: 2,
            risk: crate::requests::Risk::High,
            require_reason: false,
            exec: Some(crate::requests::ExecCall {
                argv: vec![
                    "pg_dump".into(),
                    "prod".into(),
                    "-t".into(),
                    "orders".into(),
                ],
                script: false,
                complete: true,
                hash: 7,
            }),
            bind: crate::requests::Bind::Argv,
            justification: Some("nightly export for finance".into()),
            approvals: Vec::new(),
            grant_error: None,
            finished: None,
            over_cap: 0,
        }
    }

    fn generic() -> WebhookKind {
        WebhookKind::Generic {
            secret: "0123456789abcdef".into(),
        }
    }

    fn slack() -> WebhookKind {
        WebhookKind::Slack {
            signing_secret: "slack-secret".into(),
        }
    }

    /// Checks `value` against the `required` and `properties` of a JSON schema, recursively: enough
    /// to keep the documented shape and the code in step.
    fn conforms(value: &Value, schema: &Value, path: &str) {
        if let Some(required) = schema["required"].as_array() {
            for key in required {
                let key = key.as_str().unwrap();
                assert!(value.get(key).is_some(), "{path}.{key} is missing");
            }
        }
        if let Some(properties) = schema["properties"].as_object() {
            for (key, inner) in properties {
                if let Some(child) = value.get(key).filter(|child| child.is_object()) {
                    conforms(child, inner, &format!("{path}.{key}"));
                }
            }
        }
    }

    #[test]
    fn generic_message_has_the_documented_shape() {
        let schema: Value =
            serde_json::from_str(include_str!("../../docs/webhook-request.schema.json")).unwrap();
        let message = message(&generic(), &[sample_request()]);
        conforms(&message, &schema, "");
        assert_eq!(message["type"], "gatekeeper.request");
        assert_eq!(
            message["decision_path"],
            "/v1/requests/a1b2c3d4e5f6/decision"
        );
    }

    #[test]
    fn slack_message_is_block_kit_with_decision_buttons() {
        let message = message(&slack(), &[sample_request()]);
        assert!(message["text"].as_str().unwrap().contains("a1b2c3d4e5f6"));
        let blocks = message["blocks"].as_array().unwrap();
        assert_eq!(blocks[0]["type"], "header");
        assert_eq!(
            blocks[0]["text"]["text"],
            "Approval requested (high risk): database export"
        );
        let fields: Vec<&Value> = blocks
            .iter()
            .filter(|block| block["type"] == "section")
            .flat_map(|block| block["fields"].as_array().unwrap().iter())
            .collect();
        // Labels in bold beside values in plain text, which Slack does not parse.
        let pairs: Vec<(&str, &str)> = fields
            .chunks(2)
            .map(|pair| {
                assert_eq!(pair[0]["type"], "mrkdwn");
                assert_eq!(pair[1]["type"], "plain_text");
                (
                    pair[0]["text"].as_str().unwrap(),
                    pair[1]["text"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(pairs[0], ("*Risk*", "HIGH"), "the risk comes first");
        let text: String = pairs.iter().map(|(_, value)| *value).collect();
        for fact in [
            "a1b2c3d4e5f6",
            "database export",
            "alice-agent",
            "python3 agent.py",
            "0 of 2",
        ] {
            assert!(text.contains(fact), "{fact} missing from {text}");
        }
        let actions = blocks.last().unwrap();
        assert_eq!(actions["type"], "actions");
        let buttons = actions["elements"].as_array().unwrap();
        let ids: Vec<&str> = buttons
            .iter()
            .map(|b| b["action_id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["approve", "deny"]);
        assert!(
            buttons
                .iter()
                .all(|b| b["type"] == "button" && b["value"] == "a1b2c3d4e5f6")
        );
    }

    #[test]
    fn reviewers_read_what_was_attempted() {
        let exec = sample_request();
        assert_eq!(attempted(&exec), "exec /usr/bin/pg_dump");
        let mut socket = sample_request();
        socket.kind = Kind::Connect;
        socket.target = "unix socket /run/docker.sock".into();
        socket.target_key = gatekeeper_common::Target::unix_socket(1, 2);
        assert_eq!(
            attempted(&socket),
            "connect to unix socket /run/docker.sock"
        );
        assert!(summary(&socket).contains("connect to unix socket /run/docker.sock"));
        assert!(summary(&socket).contains("high risk"));
        let mut file = sample_request();
        file.kind = Kind::File;
        file.target = "/etc/prod/secrets.env".into();
        for (access, words) in [(1, "read"), (2, "write"), (3, "read and write")] {
            file.target_key = gatekeeper_common::Target::file(1, 2, access);
            assert_eq!(attempted(&file), format!("{words} /etc/prod/secrets.env"));
        }
        // Everything a reviewer weighs, in the order shown.
        let shown: Vec<(&str, String)> = facts(&exec);
        let labels: Vec<&str> = shown.iter().map(|(label, _)| *label).collect();
        assert_eq!(
            labels,
            [
                "Risk",
                "Request",
                "Rule",
                "What",
                "Will run",
                "Approval allows",
                "Agent's own words (unverified)",
                "Agent",
                "Owner",
                "Process",
                "Caller's command line",
                "Working directory",
                "Called by",
                "Approvals",
                "Expires"
            ]
        );
        let value = |label: &str| shown.iter().find(|(l, _)| *l == label).unwrap().1.clone();
        assert_eq!(value("Will run"), "pg_dump prod -t orders");
        assert_eq!(value("Approval allows"), "one run of exactly this command");
        assert_eq!(value("Called by"), "bash -l (pid 9)");
        assert_eq!(value("Working directory"), "/srv/agent");
    }

    #[test]
    fn teams_message_is_an_adaptive_card() {
        let message = message(&WebhookKind::Teams, &[sample_request()]);
        assert_eq!(message["type"], "message");
        let attachment = &message["attachments"][0];
        assert_eq!(
            attachment["contentType"],
            "application/vnd.microsoft.card.adaptive"
        );
        let card = &attachment["content"];
        assert_eq!(card["type"], "AdaptiveCard");
        assert_eq!(card["version"], "1.4");
        let facts = card["body"][1]["facts"].as_array().unwrap();
        assert_eq!(card["body"][1]["type"], "FactSet");
        assert!(
            facts
                .iter()
                .any(|f| f["title"] == "Request" && f["value"] == "a1b2c3d4e5f6")
        );
        assert!(
            facts
                .iter()
                .any(|f| f["title"] == "Owner" && f["value"] == "alice")
        );
        assert!(
            card["body"][2]["text"]
                .as_str()
                .unwrap()
                .contains("gatekeeper approve a1b2c3d4e5f6")
        );
    }

    /// An agent's text as it would try to pass for the system's own.
    fn hostile_request() -> Request {
        let mut request = sample_request();
        request.target = "/tmp/x\n*Approved by security* <!channel> <https://evil|docs>".into();
        request.process.comm = "\u{202e}pmud_gp".into();
        let argv = vec![
            "sh".into(),
            "-c".into(),
            format!("[ok](https://evil) `x` {}", "A".repeat(5000)),
        ];
        request.process.argv = Some(argv.clone());
        if let Some(exec) = &mut request.exec {
            exec.argv = argv;
        }
        request
    }

    #[test]
    fn agent_text_stays_text_in_every_channel() {
        let request = hostile_request();
        let single = message(&slack(), std::slice::from_ref(&request));
        let blocks = single["blocks"].as_array().unwrap();
        for block in blocks.iter().filter(|block| block["type"] == "section") {
            for pair in block["fields"].as_array().unwrap().chunks(2) {
                // Whatever came from the agent is a plain_text value; labels are ours.
                assert_eq!(pair[1]["type"], "plain_text");
                assert_eq!(pair[1]["emoji"], false);
                let value = pair[1]["text"].as_str().unwrap();
                assert!(
                    !value.contains('\n') && !value.contains('\u{202e}'),
                    "{value}"
                );
                assert!(value.len() <= FIELD_LIMIT + 32, "capped: {}", value.len());
            }
        }
        let all = single.to_string();
        assert!(all.contains("more bytes]"), "the cap is marked");
        let fallback = single["text"].as_str().unwrap();
        assert!(
            !fallback.contains("<!") && !fallback.contains("evil"),
            "{fallback}"
        );
        let digest = message(&slack(), &[request.clone(), request.clone()]);
        for block in digest["blocks"].as_array().unwrap() {
            if block["type"] == "section" {
                assert_eq!(block["text"]["type"], "plain_text");
            }
        }

        let teams = message(&WebhookKind::Teams, std::slice::from_ref(&request));
        let facts = teams["attachments"][0]["content"]["body"][1]["facts"]
            .as_array()
            .unwrap();
        let what = facts.iter().find(|fact| fact["title"] == "What").unwrap();
        assert_eq!(
            what["value"],
            "exec /tmp/x\\\\n\\*Approved by security\\* \\<\\!channel\\> \\<https://evil\\|docs\\>"
        );
        let value = |title: &str| {
            facts.iter().find(|fact| fact["title"] == title).unwrap()["value"]
                .as_str()
                .unwrap()
                .to_owned()
        };
        assert!(value("Caller's command line").starts_with("sh -c \\[ok\\]\\(https://evil\\)"));
        assert!(
            value("Will run").starts_with("sh -c '\\[ok\\]\\(https://evil\\) \\`x\\`"),
            "{}",
            value("Will run")
        );
    }

    #[test]
    fn digests_list_every_request_with_its_own_buttons() {
        let mut second = sample_request();
        second.id = "f6e5d4c3b2a1".into();
        let both = [sample_request(), second];
        let generic = message(&generic(), &both);
        assert_eq!(generic["type"], "gatekeeper.digest");
        assert_eq!(generic["requests"][1]["request"]["id"], "f6e5d4c3b2a1");
        assert_eq!(
            generic["requests"][0]["decision_path"],
            "/v1/requests/a1b2c3d4e5f6/decision"
        );
        let slack = message(&slack(), &both);
        let values: Vec<&str> = slack["blocks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|block| block["type"] == "actions")
            .map(|block| block["elements"][0]["value"].as_str().unwrap())
            .collect();
        assert_eq!(values, ["a1b2c3d4e5f6", "f6e5d4c3b2a1"]);
        let teams = message(&WebhookKind::Teams, &both);
        let facts = teams["attachments"][0]["content"]["body"][1]["facts"]
            .as_array()
            .unwrap();
        assert_eq!(facts.len(), 2);
    }

    #[test]
    fn slack_signatures_are_checked() {
        let secret = b"8f742231b10e8888abcd99yyyzzz85a5";
        let body = b"payload=%7B%7D";
        let mut mac = keyed(secret);
        mac.update(b"v0:1531420618:payload=%7B%7D");
        let signature = format!("v0={}", hex::encode(mac.finalize().into_bytes()));
        assert!(slack_signature_valid(
            secret,
            "1531420618",
            body,
            &signature
        ));
        assert!(!slack_signature_valid(
            secret,
            "1531420619",
            body,
            &signature
        ));
        assert!(!slack_signature_valid(
            b"other",
            "1531420618",
            body,
            &signature
        ));
        assert!(!slack_signature_valid(
            secret,
            "1531420618",
            b"payload=%7B%20%7D",
            &signature
        ));
        assert!(!slack_signature_valid(
            secret,
            "1531420618",
            body,
            &signature.replace("v0=", "v1=")
        ));
    }

    #[test]
    fn retry_delay_grows_and_is_capped() {
        assert_eq!(retry_delay(1), Duration::from_millis(500));
        assert_eq!(retry_delay(2), Duration::from_secs(1));
        assert_eq!(retry_delay(3), Duration::from_secs(2));
        assert_eq!(retry_delay(20), MAX_RETRY_DELAY);
    }

    #[tokio::test]
    async fn delivery_to_a_loopback_listener_is_signed_and_recorded() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            // First connection fails with 503, the second is accepted.
            let mut requests = Vec::new();
            for status in ["503 Service Unavailable", "200 OK"] {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut buffer = vec![0u8; 8192];
                let mut read = 0;
                loop {
                    read += stream.read(&mut buffer[read..]).await.unwrap();
                    let text = String::from_utf8_lossy(&buffer[..read]).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let length: usize = head
                            .lines()
                            .find_map(|line| {
                                line.to_ascii_lowercase()
                                    .strip_prefix("content-length: ")
                                    .map(|n| n.trim().parse().unwrap())
                            })
                            .unwrap();
                        if body.len() >= length {
                            requests.push(text);
                            break;
                        }
                    }
                }
                let reply = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
                stream.write_all(reply.as_bytes()).await.unwrap();
            }
            requests
        });
        let hook = Webhook {
            kind: generic(),
            url: url.parse().unwrap(),
            timeout: Duration::from_secs(5),
            attempts: 3,
            burst: 1,
            refill: Duration::from_secs(1),
        };
        let mut attempts = Vec::new();
        let delivered = deliver(
            &crate::resolver::HostResolver::default()
                .client_builder()
                .build()
                .unwrap(),
            &hook,
            b"{\"x\":1}",
            |a| attempts.push(a),
        )
        .await;
        assert!(delivered);
        assert_eq!(attempts.len(), 2);
        assert_eq!(attempts[0].status, Some(503));
        assert!(!attempts[0].delivered);
        assert!(attempts[1].delivered);
        let requests = server.await.unwrap();
        let last = requests.last().unwrap();
        let header = |name: &str| {
            last.lines()
                .find_map(|line| {
                    let (key, value) = line.split_once(": ")?;
                    key.eq_ignore_ascii_case(name)
                        .then(|| value.trim().to_owned())
                })
                .unwrap()
        };
        let timestamp: i64 = header(TIMESTAMP_HEADER).parse().unwrap();
        assert!(verify(
            b"0123456789abcdef",
            timestamp,
            b"{\"x\":1}",
            &header(SIGNATURE_HEADER)
        ));
    }
}
