//! How decisions reach the daemon: the local unix socket (CLI, caller identified by SO_PEERCRED)
//! and the HTTP endpoint for webhook receivers (caller identified by an HMAC signature).

use std::{
    net::SocketAddr,
    os::unix::fs::{FileTypeExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    time::Duration,
};

use axum::{
    Json, Router,
    extract::{DefaultBodyLimit, Path as UrlPath, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
};
use tracing::warn;

use crate::{
    cgroups,
    config::WebhookKind,
    daemon::{DaemonError, Decider, DecisionFailure, Shared, user_name},
    notify,
    requests::{self, DecideError, Decision, authorize_reviewer},
};

/// Signed HTTP decisions older (or further in the future) than this are refused.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);
const MAX_BODY_BYTES: usize = 64 * 1024;
const MAX_LOCAL_LINE: u64 = 64 * 1024;

/// One call on the local socket: a JSON object on one line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum LocalCall {
    Status,
    List {
        all: bool,
    },
    Decide {
        id: String,
        decision: Decision,
        reason: Option<String>,
    },
    /// End enforcement: root only, never from an agent cgroup.
    Uninstall,
    /// Wait for the decision on one of the caller's own cgroup's requests (its latest without
    /// `id`); answers `{id, state}` with state `timeout` when the wait ran out.
    Await {
        id: Option<String>,
        timeout_ms: u64,
    },
}

/// The answer: a JSON object on one line.
#[derive(Debug, Serialize, Deserialize)]
pub struct LocalReply {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl LocalReply {
    fn data(value: impl Serialize) -> Self {
        match serde_json::to_value(value) {
            Ok(data) => Self {
                ok: true,
                data: Some(data),
                error: None,
            },
            Err(error) => Self::error(error.to_string()),
        }
    }

    fn error(message: impl Into<String>) -> Self {
        Self {
            ok: false,
            data: None,
            error: Some(message.into()),
        }
    }
}

pub struct LocalApi {
    listener: UnixListener,
    shared: Shared,
}

impl LocalApi {
    /// Binds the socket, refusing to steal it from a daemon that is still running.
    pub fn bind(path: &Path, shared: Shared) -> Result<Self, DaemonError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        if let Ok(metadata) = std::fs::symlink_metadata(path) {
            if !metadata.file_type().is_socket() {
                return Err(DaemonError::Api(format!(
                    "{} exists and is not a socket",
                    path.display()
                )));
            }
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(DaemonError::Api(format!(
                    "another daemon is listening on {}",
                    path.display()
                )));
            }
            std::fs::remove_file(path)?;
        }
        let listener = UnixListener::bind(path)?;
        // Anyone may connect; who may decide is checked per call from the peer's credentials.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
        Ok(Self { listener, shared })
    }

    pub async fn serve(self) -> std::io::Result<()> {
        loop {
            let (stream, _) = self.listener.accept().await?;
            let shared = self.shared.clone();
            tokio::spawn(async move {
                if let Err(error) = serve_local(stream, shared).await {
                    warn!(%error, "local API connection");
                }
            });
        }
    }
}

/// The identity of a local caller, from the kernel rather than from anything it says.
fn local_decider(stream: &UnixStream, agent_cgroups: &[PathBuf]) -> Result<Decider, String> {
    let credentials = stream.peer_cred().map_err(|error| error.to_string())?;
    let reviewer = user_name(credentials.uid())
        .ok_or_else(|| format!("uid {} has no user name", credentials.uid()))?;
    let pid = credentials
        .pid()
        .and_then(|pid| u32::try_from(pid).ok())
        .ok_or("caller's pid unknown")?;
    // If the caller's cgroup cannot be read, it is treated as an agent: fail closed.
    let caller_is_agent = cgroups::of_process(pid)
        .map(|cgroup| cgroups::is_within(&cgroup, agent_cgroups))
        .unwrap_or(true);
    Ok(Decider {
        reviewer,
        caller_is_agent,
        channel: "cli",
    })
}

async fn serve_local(mut stream: UnixStream, shared: Shared) -> std::io::Result<()> {
    let mut line = String::new();
    BufReader::new((&mut stream).take(MAX_LOCAL_LINE))
        .read_line(&mut line)
        .await?;
    let reply = match serde_json::from_str::<LocalCall>(line.trim_end()) {
        Ok(LocalCall::Await { id, timeout_ms }) => {
            await_decision(&stream, &shared, id, Duration::from_millis(timeout_ms)).await
        }
        Ok(call) => answer_local(call, &stream, &shared),
        Err(error) => LocalReply::error(format!("malformed call: {error}")),
    };
    let mut text = serde_json::to_string(&reply).unwrap_or_else(|_| "{\"ok\":false}".into());
    text.push('\n');
    stream.write_all(text.as_bytes()).await?;
    stream.shutdown().await
}

/// How often a waiting agent's request is looked at.
const AWAIT_POLL: Duration = Duration::from_millis(200);

/// Waits for a decision on the caller's own request; other cgroups' requests do not exist for it.
async fn await_decision(
    stream: &UnixStream,
    shared: &Shared,
    id: Option<String>,
    timeout: Duration,
) -> LocalReply {
    let caller = stream
        .peer_cred()
        .ok()
        .and_then(|credentials| credentials.pid())
        .and_then(|pid| u32::try_from(pid).ok())
        .and_then(|pid| cgroups::of_process(pid).ok())
        .and_then(|cgroup| cgroups::id_of(&cgroup).ok());
    let Some(cgroup_id) = caller else {
        return LocalReply::error("cannot tell the caller's cgroup");
    };
    let Some(id) = shared.lock().request_for_cgroup(cgroup_id, id.as_deref()) else {
        return LocalReply::error("no such request for this cgroup");
    };
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let state = shared.lock().request_state(&id);
        match state {
            Some(requests::State::Pending) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(AWAIT_POLL).await;
            }
            Some(requests::State::Pending) => {
                return LocalReply::data(serde_json::json!({"id": id, "state": "timeout"}));
            }
            Some(state) => return LocalReply::data(serde_json::json!({"id": id, "state": state})),
            None => return LocalReply::error("no such request for this cgroup"),
        }
    }
}

fn identify(stream: &UnixStream, shared: &Shared) -> Result<Decider, LocalReply> {
    let agent_cgroups = shared.lock().config().agent_cgroups.clone();
    local_decider(stream, &agent_cgroups)
        .map_err(|error| LocalReply::error(format!("cannot identify caller: {error}")))
}

fn answer_local(call: LocalCall, stream: &UnixStream, shared: &Shared) -> LocalReply {
    match call {
        LocalCall::Status => LocalReply::data(shared.lock().status()),
        LocalCall::List { all } => {
            // Requests carry agents' command lines: only those who may decide see them.
            let decider = match identify(stream, shared) {
                Ok(decider) => decider,
                Err(reply) => return reply,
            };
            let engine = shared.lock();
            match authorize_reviewer(
                &engine.config().reviewers,
                &decider.reviewer,
                decider.caller_is_agent,
            ) {
                Ok(()) => LocalReply::data(engine.list(all)),
                Err(refusal) => LocalReply::error(refusal.to_string()),
            }
        }
        LocalCall::Await { .. } => LocalReply::error("await is answered asynchronously"),
        LocalCall::Uninstall => {
            let uid = stream.peer_cred().map(|credentials| credentials.uid());
            let decider = match identify(stream, shared) {
                Ok(decider) => decider,
                Err(reply) => return reply,
            };
            if decider.caller_is_agent || uid.ok() != Some(0) {
                return LocalReply::error("only root outside agent cgroups may uninstall");
            }
            match shared.uninstall(&decider.reviewer) {
                Ok(()) => LocalReply::data("uninstalled"),
                Err(error) => LocalReply::error(format!("uninstall failed: {error}")),
            }
        }
        LocalCall::Decide {
            id,
            decision,
            reason,
        } => {
            let decider = match identify(stream, shared) {
                Ok(decider) => decider,
                Err(reply) => return reply,
            };
            match shared.lock().decide(&id, decision, reason, &decider) {
                Ok(request) => LocalReply::data(request),
                Err(error) => LocalReply::error(error.to_string()),
            }
        }
    }
}

/// Body of `POST /v1/requests/{id}/decision`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpDecision {
    pub decision: Decision,
    pub reviewer: String,
    pub reason: Option<String>,
}

fn http_error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

/// Checks a signed call: the timestamp header within [`MAX_CLOCK_SKEW`] and the signature header
/// valid, by `valid(secret, timestamp as sent, timestamp, signature)`, for one of `secrets`.
fn authenticate_signed(
    headers: &HeaderMap,
    timestamp_header: &str,
    signature_header: &str,
    secrets: &[String],
    valid: impl Fn(&[u8], &str, i64, &str) -> bool,
) -> Result<(), String> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .ok_or_else(|| format!("missing {name} header"))
    };
    let sent = header(timestamp_header)?;
    let timestamp: i64 = sent
        .parse()
        .map_err(|_| format!("{timestamp_header} is not a Unix time"))?;
    let signature = header(signature_header)?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    if now.abs_diff(timestamp) > MAX_CLOCK_SKEW.as_secs() {
        return Err("timestamp outside the allowed window".into());
    }
    // Every secret is tried so the time taken does not tell which one matched.
    let matched = secrets.iter().fold(false, |matched, secret| {
        valid(secret.as_bytes(), sent, timestamp, signature) | matched
    });
    if matched {
        Ok(())
    } else {
        Err("bad signature".into())
    }
}

/// A generic receiver's call, signed with a webhook secret.
fn authenticate(headers: &HeaderMap, body: &[u8], secrets: &[String]) -> Result<(), String> {
    authenticate_signed(
        headers,
        notify::TIMESTAMP_HEADER,
        notify::SIGNATURE_HEADER,
        secrets,
        |secret, _, timestamp, signature| notify::verify(secret, timestamp, body, signature),
    )
}

async fn http_decide(
    State(shared): State<Shared>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let secrets: Vec<String> = shared
        .lock()
        .config()
        .webhooks
        .iter()
        .filter(|hook| hook.kind == WebhookKind::Generic)
        .map(|hook| hook.secret.clone())
        .collect();
    if let Err(error) = authenticate(&headers, &body, &secrets) {
        return http_error(StatusCode::UNAUTHORIZED, error);
    }
    let call: HttpDecision = match serde_json::from_slice(&body) {
        Ok(call) => call,
        Err(error) => {
            return http_error(StatusCode::BAD_REQUEST, format!("malformed body: {error}"));
        }
    };
    let decider = Decider {
        reviewer: call.reviewer,
        caller_is_agent: false,
        channel: "webhook",
    };
    let result = shared
        .lock()
        .decide(&id, call.decision, call.reason, &decider);
    match result {
        Ok(request) => (StatusCode::OK, Json(request)).into_response(),
        Err(error) => {
            let status = match &error {
                DecisionFailure::Refused(_)
                | DecisionFailure::Request(DecideError::Owner { .. }) => StatusCode::FORBIDDEN,
                DecisionFailure::Request(DecideError::ReasonRequired(_)) => {
                    StatusCode::UNPROCESSABLE_ENTITY
                }
                DecisionFailure::Request(DecideError::AlreadyApproved { .. }) => {
                    StatusCode::CONFLICT
                }
                DecisionFailure::Request(DecideError::NotFound(_)) => StatusCode::NOT_FOUND,
                DecisionFailure::Request(DecideError::AlreadyDecided { .. }) => {
                    StatusCode::CONFLICT
                }
                DecisionFailure::Request(DecideError::Expired(_)) => StatusCode::GONE,
                DecisionFailure::Journal(_) | DecisionFailure::Kernel(_) => {
                    StatusCode::INTERNAL_SERVER_ERROR
                }
            };
            http_error(status, error.to_string())
        }
    }
}

#[derive(Deserialize)]
struct SlackPayload {
    user: SlackUser,
    actions: Vec<SlackAction>,
    response_url: Option<String>,
}

#[derive(Deserialize)]
struct SlackUser {
    id: String,
}

#[derive(Deserialize)]
struct SlackAction {
    action_id: String,
    value: String,
}

/// A Slack interaction, signed with a Slack signing secret.
fn authenticate_slack(headers: &HeaderMap, body: &[u8], secrets: &[String]) -> Result<(), String> {
    authenticate_signed(
        headers,
        "x-slack-request-timestamp",
        "x-slack-signature",
        secrets,
        |secret, sent, _, signature| notify::slack_signature_valid(secret, sent, body, signature),
    )
}

fn slack_payload(body: &[u8]) -> Result<SlackPayload, String> {
    let form: Vec<(String, String)> =
        serde_urlencoded::from_bytes(body).map_err(|error| format!("not a form: {error}"))?;
    let payload = form
        .into_iter()
        .find(|(key, _)| key == "payload")
        .map(|(_, value)| value)
        .ok_or("no payload field")?;
    serde_json::from_str(&payload).map_err(|error| format!("malformed payload: {error}"))
}

/// `POST /v1/slack/interactions`: an Approve or Deny button pressed in Slack.
async fn slack_interaction(
    State(shared): State<Shared>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let (secrets, users) = {
        let engine = shared.lock();
        let config = engine.config();
        let secrets: Vec<String> = config
            .webhooks
            .iter()
            .filter_map(|hook| hook.signing_secret.clone())
            .collect();
        (secrets, config.slack_users.clone())
    };
    if let Err(error) = authenticate_slack(&headers, &body, &secrets) {
        return http_error(StatusCode::UNAUTHORIZED, error);
    }
    let payload = match slack_payload(&body) {
        Ok(payload) => payload,
        Err(error) => return http_error(StatusCode::BAD_REQUEST, error),
    };
    let Some(action) = payload.actions.first() else {
        return http_error(StatusCode::BAD_REQUEST, "no action");
    };
    let decision = match action.action_id.as_str() {
        "approve" => Decision::Approve,
        "deny" => Decision::Deny,
        other => return http_error(StatusCode::BAD_REQUEST, format!("unknown action {other:?}")),
    };
    let Some(reviewer) = users.get(&payload.user.id).cloned() else {
        let why = format!("Slack user {} is not mapped to a reviewer", payload.user.id);
        shared
            .lock()
            .refuse(&action.value, None, "slack", why.clone());
        return http_error(StatusCode::FORBIDDEN, why);
    };
    let decider = Decider {
        reviewer: reviewer.clone(),
        caller_is_agent: false,
        channel: "slack",
    };
    let result = shared
        .lock()
        .decide(&action.value, decision, None, &decider);
    match result {
        Ok(request) if request.state == requests::State::Pending => {
            // More approvals are needed: the buttons stay for the next reviewer.
            let text = format!(
                "Your approval of request {} ({}) is recorded: {} of {} approvals",
                request.id,
                request.target,
                request.approvals.len(),
                request.approvals_required
            );
            (
                StatusCode::OK,
                Json(serde_json::json!({
                    "response_type": "ephemeral",
                    "replace_original": false,
                    "text": text,
                })),
            )
                .into_response()
        }
        Ok(request) => {
            let text = format!(
                "Request {} ({}) {} by {reviewer}",
                request.id,
                request.target,
                format!("{:?}", request.state).to_lowercase()
            );
            if let Some(url) = payload.response_url {
                replace_slack_message(url, text.clone());
            }
            (StatusCode::OK, Json(serde_json::json!({ "text": text }))).into_response()
        }
        // Slack shows the answer to the one who pressed; nothing changed.
        Err(error) => (
            StatusCode::OK,
            Json(serde_json::json!({
                "response_type": "ephemeral",
                "replace_original": false,
                "text": format!("Not decided: {error}"),
            })),
        )
            .into_response(),
    }
}

/// Replaces the request's Slack message with its outcome, through the interaction's response URL.
fn replace_slack_message(url: String, text: String) {
    tokio::spawn(async move {
        let body = serde_json::json!({ "replace_original": true, "text": text });
        if let Err(error) = reqwest::Client::new()
            .post(&url)
            .timeout(Duration::from_secs(10))
            .json(&body)
            .send()
            .await
        {
            warn!(%error, "cannot update the Slack message");
        }
    });
}

async fn health() -> &'static str {
    "ok\n"
}

pub fn http_router(shared: Shared) -> Router {
    Router::new()
        .route("/v1/requests/{id}/decision", post(http_decide))
        .route("/v1/slack/interactions", post(slack_interaction))
        .route("/v1/health", get(health))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(shared)
}

/// Binds the HTTP listener now (so a taken port fails start-up) and returns the server future.
pub async fn bind_http(
    addr: SocketAddr,
    shared: Shared,
) -> Result<impl std::future::Future<Output = Result<(), DaemonError>>, DaemonError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|error| DaemonError::Api(format!("cannot listen on {addr}: {error}")))?;
    Ok(async move {
        axum::serve(listener, http_router(shared))
            .await
            .map_err(DaemonError::from)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed_headers(secret: &str, timestamp: i64, body: &[u8]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            notify::TIMESTAMP_HEADER,
            timestamp.to_string().parse().unwrap(),
        );
        headers.insert(
            notify::SIGNATURE_HEADER,
            notify::sign(secret.as_bytes(), timestamp, body)
                .parse()
                .unwrap(),
        );
        headers
    }

    #[test]
    fn authentication() {
        let secrets = vec![
            "first-secret-0000".to_owned(),
            "second-secret-000".to_owned(),
        ];
        let body = br#"{"decision":"approve","reviewer":"root"}"#;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        assert_eq!(
            authenticate(&signed_headers(&secrets[1], now, body), body, &secrets),
            Ok(())
        );
        assert!(
            authenticate(
                &signed_headers("other-secret-0000", now, body),
                body,
                &secrets
            )
            .is_err()
        );
        let stale = now - MAX_CLOCK_SKEW.as_secs() as i64 - 1;
        assert!(authenticate(&signed_headers(&secrets[0], stale, body), body, &secrets).is_err());
        assert!(authenticate(&HeaderMap::new(), body, &secrets).is_err());
        // No webhook configured: nothing authenticates.
        assert!(authenticate(&signed_headers(&secrets[0], now, body), body, &[]).is_err());
    }

    #[test]
    fn local_calls_parse_strictly() {
        let call: LocalCall =
            serde_json::from_str(r#"{"op":"decide","id":"ab","decision":"deny","reason":null}"#)
                .unwrap();
        assert!(matches!(
            call,
            LocalCall::Decide {
                decision: Decision::Deny,
                ..
            }
        ));
        assert!(
            serde_json::from_str::<LocalCall>(
                r#"{"op":"decide","id":"ab","decision":"maybe","reason":null}"#
            )
            .is_err()
        );
        assert!(serde_json::from_str::<LocalCall>(r#"{"op":"list","all":true,"x":1}"#).is_err());
    }
}
