//! How decisions reach the daemon: the local unix sockets, the reviewers' and the agents' (CLI,
//! caller identified by SO_PEERCRED), and the HTTP endpoint for webhook receivers (caller
//! identified by an HMAC signature).

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    os::{
        fd::{AsRawFd as _, OwnedFd},
        unix::fs::{FileTypeExt as _, PermissionsExt as _},
    },
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
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
    sync::{OwnedSemaphorePermit, Semaphore},
    task::JoinSet,
};
use tracing::warn;

use crate::{
    cgroups,
    config::{Config, WebhookKind, agent_socket},
    core::{Decider, DecisionFailure},
    handle::{DecideFailure, Handle, Waiting},
    notify,
    requests::{self, DecideError, Decision, authorize_reviewer},
    shown::{FIELD_LIMIT, slack_escaped, visible},
};

/// Signed HTTP decisions older (or further in the future) than this are refused.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);
const MAX_BODY_BYTES: usize = 64 * 1024;
const MAX_LOCAL_LINE: u64 = 64 * 1024;
const MAX_ID_LEN: usize = 32;

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
    /// Make the journal's sealing key: root only, never from an agent cgroup.
    SetupKeys,
    /// Make a cgroup for an agent and record its owner (`gatekeeper agent run`): root only,
    /// never from an agent cgroup. Answers `{cgroup}`.
    StartAgent {
        name: String,
        owner: String,
        command: Vec<String>,
    },
    /// Wait for the decision on one of the caller's own cgroup's requests (its latest without
    /// `id`); answers `{id, state}` with state `timeout` when the wait ran out.
    Await {
        id: Option<String>,
        /// The latest request for an exec of exactly these arguments that is pending or was
        /// decided at or after `since_ms` (Unix milliseconds) (`gatekeeper run`).
        #[serde(default)]
        argv: Option<Vec<String>>,
        #[serde(default)]
        since_ms: u64,
        timeout_ms: u64,
    },
    /// The agent's justification for an exec of `argv` it is about to try (`gatekeeper run
    /// --reason`): the request it makes carries it from the start.
    Announce {
        argv: Vec<String>,
        reason: String,
    },
    /// The agent's justification for one of its own cgroup's pending requests (its latest
    /// without `id`).
    Justify {
        id: Option<String>,
        reason: String,
    },
}

impl LocalCall {
    /// Agents' calls (waiting, justifying): served on the agents' socket only.
    pub fn is_agents(&self) -> bool {
        matches!(
            self,
            Self::Await { .. } | Self::Announce { .. } | Self::Justify { .. }
        )
    }

    /// Decisions and administration: served on the reviewers' socket only.
    pub fn is_reviewers(&self) -> bool {
        matches!(
            self,
            Self::List { .. }
                | Self::Decide { .. }
                | Self::Uninstall
                | Self::SetupKeys
                | Self::StartAgent { .. }
        )
    }
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

/// How long a client may take to send its call.
const CALL_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest pause between accept attempts after an error (e.g. EMFILE).
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);
/// How long calls in flight may take to answer once the daemon stops.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{path}: {cause}")]
    Socket {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{0} exists and is not a socket")]
    NotSocket(PathBuf),
    #[error("another daemon is listening on {0}")]
    Taken(PathBuf),
    #[error("cannot listen on {addr}: {cause}")]
    Listen {
        addr: SocketAddr,
        cause: std::io::Error,
    },
    #[error("HTTP server: {0}")]
    Serve(std::io::Error),
}

/// Connections held per uid.
type UserCounts = Arc<Mutex<HashMap<u32, usize>>>;

/// Connections the local socket holds at once: in all, from one non-root user, and from agent
/// cgroups together, so that neither a user nor an agent can crowd reviewers out.
#[derive(Clone)]
struct Limits {
    total: Arc<Semaphore>,
    agents: Arc<Semaphore>,
    per_user: UserCounts,
    per_user_max: usize,
}

/// A connection's places in [`Limits`], given back when it ends.
struct Admitted {
    _total: OwnedSemaphorePermit,
    _agent: Option<OwnedSemaphorePermit>,
    user: Option<(UserCounts, u32)>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some((per_user, uid)) = &self.user {
            let mut counts = per_user
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some(count) = counts.get_mut(uid) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    counts.remove(uid);
                }
            }
        }
    }
}

impl Limits {
    fn new(max_clients: u32) -> Self {
        let max = max_clients.max(8) as usize;
        Self {
            total: Arc::new(Semaphore::new(max)),
            agents: Arc::new(Semaphore::new(max / 4)),
            per_user: Arc::new(Mutex::new(HashMap::new())),
            per_user_max: max / 8,
        }
    }

    /// A place for a caller, or None when its share is used up (what it took is given back).
    fn admit(&self, caller: &Caller) -> Option<Admitted> {
        let total = self.total.clone().try_acquire_owned().ok()?;
        let agent = match caller.is_agent {
            true => Some(self.agents.clone().try_acquire_owned().ok()?),
            false => None,
        };
        // Root outside the agent cgroups is the operator: only the total bounds it.
        let user = if caller.uid != 0 || caller.is_agent {
            let mut counts = self
                .per_user
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let count = counts.entry(caller.uid).or_default();
            if *count >= self.per_user_max {
                return None;
            }
            *count += 1;
            Some((self.per_user.clone(), caller.uid))
        } else {
            None
        };
        Some(Admitted {
            _total: total,
            _agent: agent,
            user,
        })
    }
}

/// Which of the daemon's two sockets a connection came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    /// Reviewers and operators: the kernel refuses agents' connects here (`reviewer_socket`),
    /// so no caller on it is an agent, whatever its pid names by the time it is looked up.
    Reviewers,
    /// Agents waiting on and explaining their own cgroup's requests; nothing is decided here.
    Agents,
}

impl Side {
    /// Why `call` is refused on this side, if it is.
    fn refuses(self, call: &LocalCall) -> Option<&'static str> {
        match self {
            Self::Agents if call.is_reviewers() => {
                Some("the agents' socket takes no decisions: reviewers use the reviewers' socket")
            }
            Self::Reviewers if call.is_agents() => {
                Some("waiting and justifying belong on the agents' socket")
            }
            _ => None,
        }
    }
}

/// Who is on the other end of a local connection, from the kernel at connect time.
struct Caller {
    uid: u32,
    pid: u32,
    is_agent: bool,
    /// On the agents' socket, where the caller connected from: whose requests the connection
    /// may wait on and justify.
    origin: Origin,
}

const UNKNOWN_ORIGIN: &str =
    "cannot tell which agent cgroup this connection came from: connect again";

/// Where a caller on the agents' socket connected from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    /// The agent cgroup the kernel noted at connect.
    Agent(u64),
    /// Outside the agent cgroups (no note, and its pid is outside them too); also every caller
    /// on the reviewers' socket.
    Outside,
    /// No note, though its pid is in an agent cgroup now: a note pushed out of the kernel's
    /// map by a flood of connections. Refused, never taken for outside.
    Unknown,
}

/// The kernel's note of the cgroup each agent connected to the agents' socket from, by the
/// cookie of the daemon's end of the connection (`AGENT_CONNECTIONS`).
pub type AgentConnections = aya::maps::HashMap<aya::maps::MapData, u64, u64>;

/// Whether process `pid` is in an agent cgroup now; a cgroup that cannot be read counts as one.
fn in_agent_cgroup(pid: u32, agent_cgroups: &[PathBuf]) -> bool {
    cgroups::of_process(pid)
        .map(|cgroup| cgroups::is_within(&cgroup, agent_cgroups))
        .unwrap_or(true)
}

/// The kernel's cookie of a socket: the same number its programs see for it.
fn socket_cookie(stream: &UnixStream) -> std::io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut length = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: the fd is open for the call, and `cookie` and `length` are valid for writes of
    // the sizes given.
    let result = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut length,
        )
    };
    match result {
        0 => Ok(cookie),
        _ => Err(std::io::Error::last_os_error()),
    }
}

fn caller_of(
    stream: &UnixStream,
    side: Side,
    agent_cgroups: &[PathBuf],
    connections: &mut AgentConnections,
) -> Option<Caller> {
    let credentials = stream.peer_cred().ok()?;
    let pid = credentials.pid().and_then(|pid| u32::try_from(pid).ok())?;
    // Everyone on the agents' socket counts as an agent. On the reviewers' socket the kernel
    // already kept agents out; the cgroup is checked again all the same, and one that cannot be
    // read counts as an agent: fail closed.
    let is_agent = side == Side::Agents || in_agent_cgroup(pid, agent_cgroups);
    let origin = match side {
        Side::Agents => {
            let cookie = socket_cookie(stream).ok()?;
            let noted = connections.get(&cookie, 0).ok();
            let _ = connections.remove(&cookie);
            match noted {
                Some(cgroup_id) => Origin::Agent(cgroup_id),
                None if in_agent_cgroup(pid, agent_cgroups) => Origin::Unknown,
                None => Origin::Outside,
            }
        }
        Side::Reviewers => Origin::Outside,
    };
    Some(Caller {
        uid: credentials.uid(),
        pid,
        is_agent,
        origin,
    })
}

/// Removes the files of the reviewers' socket at `socket` and of the agents' socket beside it.
pub fn remove_socket_files(socket: &Path) {
    for path in [socket.to_path_buf(), agent_socket(socket)] {
        let _ = std::fs::remove_file(path);
    }
}

/// The daemon's two sockets, bound but not yet listening: [`LocalSockets::bind`] runs before
/// the policy names them to the kernel, [`LocalSockets::listen`] after, so no agent connects to
/// the reviewers' socket in between.
pub struct LocalSockets {
    reviewers: (PathBuf, OwnedFd),
    agents: (PathBuf, OwnedFd),
}

impl LocalSockets {
    pub fn bind(config: &Config) -> Result<Self, ApiError> {
        let reviewers = config.socket.clone();
        let agents = agent_socket(&reviewers);
        let reviewers_fd = bind_socket(&reviewers)?;
        let agents_fd = bind_socket(&agents)?;
        Ok(Self {
            reviewers: (reviewers, reviewers_fd),
            agents: (agents, agents_fd),
        })
    }

    /// Removes both sockets' files (the daemon did not start).
    pub fn remove(self) {
        remove_socket_files(&self.reviewers.0);
    }

    /// Starts listening on both sockets.
    pub fn listen(
        self,
        config: &Config,
        handle: Handle,
        agent_connections: AgentConnections,
    ) -> Result<LocalApi, ApiError> {
        let listen = |(path, fd): (PathBuf, OwnedFd)| {
            let error = |cause| ApiError::Socket {
                path: path.clone(),
                cause,
            };
            nix::sys::socket::listen(&fd, nix::sys::socket::Backlog::MAXCONN)
                .map_err(|errno| error(std::io::Error::from(errno)))?;
            UnixListener::from_std(std::os::unix::net::UnixListener::from(fd)).map_err(error)
        };
        Ok(LocalApi {
            reviewers: listen(self.reviewers)?,
            agents: listen(self.agents)?,
            handle,
            agent_cgroups: Arc::new(config.agent_cgroups.clone()),
            reviewers_list: Arc::new(config.reviewers.clone()),
            limits: Limits::new(config.max_clients),
            agent_connections,
        })
    }
}

/// Binds a unix stream socket at `path` without listening, refusing to steal it from a daemon
/// that is still running. Anyone may connect (reviewers are ordinary users): who may do what is
/// checked per call from the peer's credentials, and each kind of caller has a bounded share.
fn bind_socket(path: &Path) -> Result<OwnedFd, ApiError> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, bind, socket};
    let error = |cause| ApiError::Socket {
        path: path.to_owned(),
        cause,
    };
    let errno = |errno: nix::errno::Errno| error(std::io::Error::from(errno));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(error)?;
    }
    if let Ok(metadata) = std::fs::symlink_metadata(path) {
        if !metadata.file_type().is_socket() {
            return Err(ApiError::NotSocket(path.to_owned()));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ApiError::Taken(path.to_owned()));
        }
        std::fs::remove_file(path).map_err(error)?;
    }
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(errno)?;
    bind(fd.as_raw_fd(), &UnixAddr::new(path).map_err(errno)?).map_err(errno)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).map_err(error)?;
    Ok(fd)
}

/// The local sockets: the CLI's way to the daemon.
pub struct LocalApi {
    reviewers: UnixListener,
    agents: UnixListener,
    handle: Handle,
    agent_cgroups: Arc<Vec<PathBuf>>,
    reviewers_list: Arc<Vec<String>>,
    limits: Limits,
    agent_connections: AgentConnections,
}

impl LocalApi {
    /// Serves until `stop` resolves. Accept errors (e.g. out of file descriptors) pause the loop
    /// with a growing backoff; they never end it. On stop, calls in flight get up to
    /// `DRAIN_TIMEOUT` to send their answers: an uninstall is answered after the engine ends.
    pub async fn serve(mut self, stop: impl Future<Output = ()>) {
        let mut calls = JoinSet::new();
        let mut backoff = Duration::from_millis(10);
        tokio::pin!(stop);
        loop {
            let (accepted, side) = tokio::select! {
                () = &mut stop => break,
                Some(_) = calls.join_next(), if !calls.is_empty() => continue,
                accepted = self.reviewers.accept() => (accepted, Side::Reviewers),
                accepted = self.agents.accept() => (accepted, Side::Agents),
            };
            let stream = match accepted {
                Ok((stream, _)) => {
                    backoff = Duration::from_millis(10);
                    stream
                }
                Err(error) => {
                    warn!(%error, "local API accept failed; backing off");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
                    continue;
                }
            };
            let Some(caller) = caller_of(
                &stream,
                side,
                &self.agent_cgroups,
                &mut self.agent_connections,
            ) else {
                continue;
            };
            // Over its share: closed at once, holding nothing.
            let Some(admitted) = self.limits.admit(&caller) else {
                continue;
            };
            let connection = Connection {
                caller,
                side,
                agent_cgroups: self.agent_cgroups.clone(),
                handle: self.handle.clone(),
                reviewers: self.reviewers_list.clone(),
            };
            calls.spawn(async move {
                let _admitted = admitted;
                if let Err(error) = connection.serve(stream).await {
                    warn!(%error, "local API connection");
                }
            });
        }
        drop(self.reviewers);
        drop(self.agents);
        let drained = async { while calls.join_next().await.is_some() {} };
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, drained).await;
    }
}

struct Connection {
    caller: Caller,
    side: Side,
    agent_cgroups: Arc<Vec<PathBuf>>,
    handle: Handle,
    reviewers: Arc<Vec<String>>,
}

impl Connection {
    async fn serve(mut self, mut stream: UnixStream) -> std::io::Result<()> {
        let mut line = String::new();
        let mut reader = BufReader::new((&mut stream).take(MAX_LOCAL_LINE));
        let read = reader.read_line(&mut line);
        // A client that connects and says nothing gives its place back.
        if tokio::time::timeout(CALL_READ_TIMEOUT, read).await.is_err() {
            return Ok(());
        }
        drop(reader);
        // Where the caller is now: a process that connected from outside and then joined an
        // agent cgroup calls as an agent.
        if self.side == Side::Reviewers && in_agent_cgroup(self.caller.pid, &self.agent_cgroups) {
            self.caller.is_agent = true;
        }
        let reply = match serde_json::from_str::<LocalCall>(line.trim_end()) {
            Ok(call) => self.answer(call).await,
            Err(error) => LocalReply::error(format!("malformed call: {error}")),
        };
        let mut text = serde_json::to_string(&reply).unwrap_or_else(|_| "{\"ok\":false}".into());
        text.push('\n');
        stream.write_all(text.as_bytes()).await?;
        stream.shutdown().await
    }

    fn decider(&self) -> Result<Decider, LocalReply> {
        let reviewer = crate::users::name_of(self.caller.uid).ok_or_else(|| {
            LocalReply::error(format!(
                "cannot identify caller: uid {} has no user name",
                self.caller.uid
            ))
        })?;
        Ok(Decider {
            reviewer,
            caller_is_agent: self.caller.is_agent,
            channel: "cli",
        })
    }

    async fn answer(&self, call: LocalCall) -> LocalReply {
        let gone = || LocalReply::error("the daemon is shutting down");
        if let Some(refusal) = self.side.refuses(&call) {
            return LocalReply::error(refusal);
        }
        match call {
            LocalCall::Status => self
                .handle
                .status()
                .await
                .map_or_else(gone, LocalReply::data),
            LocalCall::List { all } => {
                // Requests carry agents' command lines: only those who may decide see them.
                let decider = match self.decider() {
                    Ok(decider) => decider,
                    Err(reply) => return reply,
                };
                if let Err(refusal) =
                    authorize_reviewer(&self.reviewers, &decider.reviewer, decider.caller_is_agent)
                {
                    return LocalReply::error(refusal.to_string());
                }
                self.handle
                    .list(all)
                    .await
                    .map_or_else(gone, LocalReply::data)
            }
            LocalCall::Await {
                id,
                argv,
                since_ms,
                timeout_ms,
            } => {
                let exec = argv.map(|argv| (argv, since_ms));
                self.await_decision(id, exec, Duration::from_millis(timeout_ms))
                    .await
            }
            LocalCall::Announce { argv, reason } => {
                let cgroup_id = match self.caller.origin {
                    Origin::Agent(cgroup_id) => cgroup_id,
                    // `gatekeeper run` outside the agent cgroups: its exec needs no approval.
                    Origin::Outside => {
                        return LocalReply::data(
                            "outside the agent cgroups: nothing waits for approval",
                        );
                    }
                    Origin::Unknown => return LocalReply::error(UNKNOWN_ORIGIN),
                };
                match self.handle.announce(cgroup_id, argv, reason).await {
                    Some(Ok(())) => LocalReply::data("noted"),
                    Some(Err(error)) => LocalReply::error(error.to_string()),
                    None => gone(),
                }
            }
            LocalCall::Justify { id, reason } => {
                let cgroup_id = match self.caller_cgroup_id() {
                    Ok(cgroup_id) => cgroup_id,
                    Err(reply) => return reply,
                };
                match self.handle.justify(cgroup_id, id, reason).await {
                    Some(Ok(id)) => LocalReply::data(serde_json::json!({ "id": id })),
                    Some(Err(error)) => LocalReply::error(error.to_string()),
                    None => gone(),
                }
            }
            LocalCall::SetupKeys => {
                if self.caller.is_agent || self.caller.uid != 0 {
                    return LocalReply::error(
                        "only root outside agent cgroups may make the sealing key",
                    );
                }
                match self.handle.setup_keys().await {
                    Ok(verification) => LocalReply::data(verification),
                    Err(error) => LocalReply::error(error),
                }
            }
            LocalCall::Uninstall => {
                let decider = match self.decider() {
                    Ok(decider) => decider,
                    Err(reply) => return reply,
                };
                if decider.caller_is_agent || self.caller.uid != 0 {
                    return LocalReply::error("only root outside agent cgroups may uninstall");
                }
                match self.handle.uninstall(decider.reviewer).await {
                    Ok(()) => LocalReply::data("uninstalled"),
                    Err(error) => LocalReply::error(format!("uninstall failed: {error}")),
                }
            }
            LocalCall::StartAgent {
                name,
                owner,
                command,
            } => {
                let decider = match self.decider() {
                    Ok(decider) => decider,
                    Err(reply) => return reply,
                };
                if decider.caller_is_agent || self.caller.uid != 0 {
                    return LocalReply::error("only root outside agent cgroups may start agents");
                }
                if crate::users::account(&owner).is_none() {
                    return LocalReply::error(format!("owner {owner:?} is no user of this host"));
                }
                match self
                    .handle
                    .start_agent(name, owner, decider.reviewer, command)
                    .await
                {
                    Ok(cgroup) => LocalReply::data(serde_json::json!({ "cgroup": cgroup })),
                    Err(error) => LocalReply::error(error),
                }
            }
            LocalCall::Decide {
                id,
                decision,
                reason,
            } => {
                if let Err(error) = check_request_id(&id) {
                    return LocalReply::error(error);
                }
                let decider = match self.decider() {
                    Ok(decider) => decider,
                    Err(reply) => return reply,
                };
                match self.handle.decide(id, decision, reason, decider).await {
                    Ok(request) => LocalReply::data(request),
                    Err(error) => LocalReply::error(error.to_string()),
                }
            }
        }
    }

    /// The id of the cgroup the caller connected from: whose requests it may wait on and
    /// justify, whatever its pid names by now.
    fn caller_cgroup_id(&self) -> Result<u64, LocalReply> {
        match self.caller.origin {
            Origin::Agent(cgroup_id) => Ok(cgroup_id),
            Origin::Outside => Err(LocalReply::error(
                "the caller connected from outside the agent cgroups: it has no requests",
            )),
            Origin::Unknown => Err(LocalReply::error(UNKNOWN_ORIGIN)),
        }
    }

    /// Waits for a decision on the caller's own request; other cgroups' requests do not exist
    /// for it. The engine says when the request settles: nothing polls.
    async fn await_decision(
        &self,
        id: Option<String>,
        exec: Option<(Vec<String>, u64)>,
        timeout: Duration,
    ) -> LocalReply {
        let cgroup_id = match self.caller_cgroup_id() {
            Ok(cgroup_id) => cgroup_id,
            Err(reply) => return reply,
        };
        match self.handle.wait_on(cgroup_id, id, exec).await {
            Waiting::NoSuchRequest => LocalReply::error("no such request for this cgroup"),
            Waiting::Settled { id, state } => {
                LocalReply::data(serde_json::json!({"id": id, "state": state}))
            }
            Waiting::Pending { id, settled } => {
                match tokio::time::timeout(timeout, settled).await {
                    Ok(Ok(state)) => {
                        LocalReply::data(serde_json::json!({"id": id, "state": state}))
                    }
                    Ok(Err(_)) => LocalReply::error("the daemon is shutting down"),
                    Err(_) => LocalReply::data(serde_json::json!({"id": id, "state": "timeout"})),
                }
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

/// A reviewer's HTTP decision, signed with that reviewer's key.
fn authenticate(headers: &HeaderMap, body: &[u8], key: &str) -> Result<(), String> {
    authenticate_signed(
        headers,
        notify::TIMESTAMP_HEADER,
        notify::SIGNATURE_HEADER,
        std::slice::from_ref(&key.to_owned()),
        |secret, _, timestamp, signature| notify::verify(secret, timestamp, body, signature),
    )
}

/// What the HTTP endpoints need: the engine and the keys that sign calls to them.
#[derive(Clone)]
pub struct HttpState {
    handle: Handle,
    /// Reviewer -> the key that signs their decisions.
    reviewer_keys: Arc<BTreeMap<String, String>>,
    slack_secrets: Arc<Vec<String>>,
    slack_users: Arc<BTreeMap<String, String>>,
    /// Reaches Slack's response URLs, with host names resolved by the daemon.
    client: reqwest::Client,
}

impl HttpState {
    pub fn new(config: &Config, handle: Handle, client: reqwest::Client) -> Self {
        let slack_secrets = config
            .webhooks
            .iter()
            .filter_map(|hook| match &hook.kind {
                WebhookKind::Slack { signing_secret } => Some(signing_secret.clone()),
                WebhookKind::Generic { .. } | WebhookKind::Teams => None,
            })
            .collect();
        Self {
            handle,
            reviewer_keys: Arc::new(config.reviewer_keys.clone()),
            slack_secrets: Arc::new(slack_secrets),
            slack_users: Arc::new(config.slack_users.clone()),
            client,
        }
    }
}

/// Request ids are short hex strings; anything else is refused before it reaches the engine.
fn check_request_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_ID_LEN || !id.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return Err(format!(
            "not a request id (up to {MAX_ID_LEN} hex digits): {:?}",
            id.chars().take(MAX_ID_LEN).collect::<String>()
        ));
    }
    Ok(())
}

/// The HTTP status that tells a caller why its decision was not taken.
fn decision_status(failure: &DecideFailure) -> StatusCode {
    match failure {
        DecideFailure::Decision(DecisionFailure::Refused(_))
        | DecideFailure::Decision(DecisionFailure::Request(DecideError::Owner { .. })) => {
            StatusCode::FORBIDDEN
        }
        DecideFailure::Decision(DecisionFailure::Request(error)) => match error {
            DecideError::ReasonRequired(_) => StatusCode::UNPROCESSABLE_ENTITY,
            DecideError::NotFound(_) => StatusCode::NOT_FOUND,
            DecideError::Expired(_) => StatusCode::GONE,
            DecideError::AlreadyApproved { .. }
            | DecideError::AlreadyDecided { .. }
            | DecideError::Owner { .. } => StatusCode::CONFLICT,
        },
        DecideFailure::JournalUnwritable(_)
        | DecideFailure::NotYetRecorded(_)
        | DecideFailure::Gone => StatusCode::SERVICE_UNAVAILABLE,
    }
}

async fn http_decide(
    State(state): State<HttpState>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(error) = check_request_id(&id) {
        return http_error(StatusCode::BAD_REQUEST, error);
    }
    // The body names the reviewer, whose key alone may have signed it.
    let call: HttpDecision = match serde_json::from_slice(&body) {
        Ok(call) => call,
        Err(error) => {
            return http_error(StatusCode::BAD_REQUEST, format!("malformed body: {error}"));
        }
    };
    let Some(key) = state.reviewer_keys.get(&call.reviewer) else {
        return http_error(
            StatusCode::UNAUTHORIZED,
            format!(
                "no HTTP key for reviewer {:?} (approval.keys)",
                call.reviewer
            ),
        );
    };
    if let Err(error) = authenticate(&headers, &body, key) {
        return http_error(StatusCode::UNAUTHORIZED, error);
    }
    let decider = Decider {
        reviewer: call.reviewer,
        caller_is_agent: false,
        channel: "webhook",
    };
    match state
        .handle
        .decide(id, call.decision, call.reason, decider)
        .await
    {
        Ok(request) if request.grant_error.is_some() => http_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "approved, but the grant could not reach the kernel: {}",
                request.grant_error.unwrap_or_default()
            ),
        ),
        Ok(request) => (StatusCode::OK, Json(request)).into_response(),
        Err(error) => http_error(decision_status(&error), error.to_string()),
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
    State(state): State<HttpState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(error) = authenticate_slack(&headers, &body, &state.slack_secrets) {
        return http_error(StatusCode::UNAUTHORIZED, error);
    }
    let payload = match slack_payload(&body) {
        Ok(payload) => payload,
        Err(error) => return http_error(StatusCode::BAD_REQUEST, error),
    };
    let Some(action) = payload.actions.first() else {
        return http_error(StatusCode::BAD_REQUEST, "no action");
    };
    if let Err(error) = check_request_id(&action.value) {
        return http_error(StatusCode::BAD_REQUEST, error);
    }
    let decision = match action.action_id.as_str() {
        "approve" => Decision::Approve,
        "deny" => Decision::Deny,
        other => return http_error(StatusCode::BAD_REQUEST, format!("unknown action {other:?}")),
    };
    let Some(reviewer) = state.slack_users.get(&payload.user.id).cloned() else {
        let why = format!("Slack user {} is not mapped to a reviewer", payload.user.id);
        state
            .handle
            .refuse(action.value.clone(), None, "slack", why.clone())
            .await;
        return http_error(StatusCode::FORBIDDEN, why);
    };
    let decider = Decider {
        reviewer: reviewer.clone(),
        caller_is_agent: false,
        channel: "slack",
    };
    let result = state
        .handle
        .decide(action.value.clone(), decision, None, decider)
        .await;
    match result {
        Ok(request) if request.state == requests::State::Pending => {
            // More approvals are needed: the buttons stay for the next reviewer.
            let text = format!(
                "Your approval of request {} ({}) is recorded: {} of {} approvals",
                request.id,
                slack_escaped(&visible(&request.target, FIELD_LIMIT)),
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
            let failed = request
                .grant_error
                .as_ref()
                .map(|error| format!(", but the grant could not reach the kernel: {error}"))
                .unwrap_or_default();
            let text = format!(
                "Request {} ({}) {} by {reviewer}{failed}",
                request.id,
                slack_escaped(&visible(&request.target, FIELD_LIMIT)),
                format!("{:?}", request.state).to_lowercase()
            );
            if let Some(url) = payload.response_url {
                replace_slack_message(state.client.clone(), url, text.clone());
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
fn replace_slack_message(client: reqwest::Client, url: String, text: String) {
    tokio::spawn(async move {
        let body = serde_json::json!({ "replace_original": true, "text": text });
        if let Err(error) = client
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

pub fn http_router(state: HttpState) -> Router {
    Router::new()
        .route("/v1/requests/{id}/decision", post(http_decide))
        .route("/v1/slack/interactions", post(slack_interaction))
        .route("/v1/health", get(health))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// HTTP connections served at once; more are closed as they arrive.
const MAX_HTTP_CONNECTIONS: usize = 64;
/// How long one HTTP connection may live: a decision or a button press takes a moment, and a
/// client that holds its connection gives its place back.
const HTTP_CONNECTION_LIFETIME: Duration = Duration::from_secs(30);

/// The HTTP listener with a bounded number of connections, each of bounded life, so that
/// nobody who can reach the port can take the daemon's descriptors.
struct LimitedListener {
    listener: tokio::net::TcpListener,
    places: Arc<Semaphore>,
}

/// A connection holding its place until it ends or its life runs out.
struct LimitedStream {
    stream: tokio::net::TcpStream,
    _place: OwnedSemaphorePermit,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl LimitedStream {
    fn expired(&mut self, cx: &mut std::task::Context<'_>) -> bool {
        self.deadline.as_mut().poll(cx).is_ready()
    }
}

fn lifetime_over() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "connection lifetime over")
}

impl tokio::io::AsyncRead for LimitedStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.expired(cx) {
            return std::task::Poll::Ready(Err(lifetime_over()));
        }
        std::pin::Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for LimitedStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.expired(cx) {
            return std::task::Poll::Ready(Err(lifetime_over()));
        }
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl axum::serve::Listener for LimitedListener {
    type Io = LimitedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let mut backoff = Duration::from_millis(10);
        loop {
            let (stream, addr) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    warn!(%error, "HTTP accept failed; backing off");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
                    continue;
                }
            };
            // No place: closed at once, holding nothing.
            if let Ok(place) = self.places.clone().try_acquire_owned() {
                let deadline = Box::pin(tokio::time::sleep(HTTP_CONNECTION_LIFETIME));
                return (
                    LimitedStream {
                        stream,
                        _place: place,
                        deadline,
                    },
                    addr,
                );
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

/// Binds the HTTP listener now (so a taken port fails start-up) and returns the server future.
pub async fn bind_http(
    addr: SocketAddr,
    state: HttpState,
) -> Result<impl std::future::Future<Output = Result<(), ApiError>>, ApiError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|cause| ApiError::Listen { addr, cause })?;
    let listener = LimitedListener {
        listener,
        places: Arc::new(Semaphore::new(MAX_HTTP_CONNECTIONS)),
    };
    Ok(async move {
        axum::serve(listener, http_router(state))
            .await
            .map_err(ApiError::Serve)
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
        let key = "alices-own-key-0000";
        let body = br#"{"decision":"approve","reviewer":"alice"}"#;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        assert_eq!(
            authenticate(&signed_headers(key, now, body), body, key),
            Ok(())
        );
        // Another key (a webhook's secret, another reviewer's) does not sign for alice.
        assert!(authenticate(&signed_headers("bobs-own-key-00000", now, body), body, key).is_err());
        let stale = now - MAX_CLOCK_SKEW.as_secs() as i64 - 1;
        assert!(authenticate(&signed_headers(key, stale, body), body, key).is_err());
        assert!(authenticate(&HeaderMap::new(), body, key).is_err());
        let other_body = br#"{"decision":"approve","reviewer":"root"}"#;
        assert!(authenticate(&signed_headers(key, now, body), other_body, key).is_err());
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
