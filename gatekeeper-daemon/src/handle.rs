//! How the daemon's tasks talk to the engine, the one task that owns the core, the journal and
//! the kernel maps: commands over a channel, answers over oneshot channels.

use std::net::IpAddr;

use gatekeeper_common::Target;
use serde::Serialize;
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

use crate::{
    core::{Decider, DecisionFailure, DeliveryAttempt},
    requests::{Decision, ExecCall, JustifyError, Process, Request, State},
};

/// Commands queued for the engine at most; senders wait beyond that (backpressure, not loss).
pub const QUEUE: usize = 1024;

/// A kernel event, with what /proc and cgroupfs told about it (read outside the engine).
#[derive(Debug, Clone)]
pub enum KernelInput {
    Denied {
        target: Target,
        filename: String,
        cgroup_id: u64,
        /// The cgroup's path, or `cgroup id N` when it could not be named.
        cgroup: String,
        process: Process,
        /// For an exec: its arguments as the kernel read them.
        exec: Option<ExecCall>,
    },
    Tamper {
        hook: String,
        pid: u32,
        uid: u32,
        comm: String,
        cgroup: String,
        detail: [u64; 2],
    },
    GrantUsed {
        grant_id: u64,
        pid: u32,
    },
}

/// Why the engine could not take a decision.
#[derive(Debug, thiserror::Error)]
pub enum DecideFailure {
    #[error(transparent)]
    Decision(#[from] DecisionFailure),
    #[error(
        "the journal cannot be written ({0}); no decision is taken until it can, so nothing is granted unrecorded"
    )]
    JournalUnwritable(String),
    #[error(
        "the decision is taken but the journal cannot be written ({0}): it takes effect, and any grant reaches the kernel, only once it is recorded"
    )]
    NotYetRecorded(String),
    #[error("the daemon is shutting down")]
    Gone,
}

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub enforcing: bool,
    #[serde(with = "time::serde::rfc3339::option")]
    pub since: Option<OffsetDateTime>,
    pub pid: u32,
    pub pending_requests: usize,
    /// Finished requests still held in memory (all stay in the journal).
    pub retained_requests: usize,
    pub active_grants: usize,
    /// Denials not turned into requests because their cgroup had its cap of pending ones.
    pub denials_over_cap: u64,
    pub denied: u64,
    pub grants_used: u64,
    pub events_dropped: u64,
    pub tamper_attempts: u64,
    pub journal_writable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub journal_error: Option<String>,
    /// Why agents rename no directory at all now (the daemon could not look at the directories
    /// above the host's mount points), if so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub directory_renames_refused: Option<String>,
    pub protected: Vec<ProtectedStatus>,
    /// Entries in the kernel's map of protected files, of how many it holds.
    pub protected_files: usize,
    pub protected_files_capacity: u32,
    /// Mounts below host paths left unguarded: the map had no room for them.
    pub unguarded_mounts: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProtectedStatus {
    pub name: String,
    pub path: String,
    pub dev: Option<u32>,
    pub ino: Option<u64>,
}

/// What `await` learns at once: the request it waits on and, while pending, where the answer
/// will come from.
pub enum Waiting {
    Settled {
        id: String,
        state: State,
    },
    Pending {
        id: String,
        settled: oneshot::Receiver<State>,
    },
    NoSuchRequest,
}

pub enum Command {
    Kernel(KernelInput),
    Status(oneshot::Sender<Status>),
    List {
        all: bool,
        reply: oneshot::Sender<Vec<Request>>,
    },
    Decide {
        id: String,
        decision: Decision,
        reason: Option<String>,
        decider: Decider,
        reply: oneshot::Sender<Result<Request, DecideFailure>>,
    },
    /// A decision refused before it reached a request (e.g. an unmapped Slack user).
    Refuse {
        request_id: String,
        reviewer: Option<String>,
        channel: &'static str,
        why: String,
    },
    Await {
        cgroup_id: u64,
        id: Option<String>,
        /// Instead of `id`: an exec's arguments, and the Unix milliseconds from which a decided
        /// request still counts.
        exec: Option<(Vec<String>, u64)>,
        reply: oneshot::Sender<Waiting>,
    },
    DeliveryDone {
        delivery: u64,
        attempts: Vec<DeliveryAttempt>,
        delivered: bool,
    },
    /// An `[[audit.forward]]` receiver has had the records up to `seq`.
    Forwarded {
        receiver: String,
        seq: u64,
    },
    /// Addresses a `host` rule resolves to now.
    Resolved {
        rule: usize,
        addresses: Vec<IpAddr>,
    },
    /// What the protected and allowlisted paths and the kept names name now (None: not there
    /// this moment).
    PathsNow {
        protected: Vec<Option<Target>>,
        /// With the digest of the content, which decides whether it stays allowed.
        allowed: Vec<Option<(Target, crate::policy::Digest)>>,
        /// The nodes the kept names are now (symlinks not followed).
        kept: Vec<Option<Target>>,
        /// What the directories holding rules' files (that are no rule's own) are now.
        name_guards: Vec<Option<Target>>,
        /// The directories above all of them, looked at before them.
        ancestors: Vec<Option<Target>>,
        /// File systems attached and superblocks made, as counted before the look (see
        /// [`crate::loader::Kernel::mounts_made`]).
        made: crate::loader::MountsMade,
    },
    /// File systems attached and superblocks made so far: asked before a look at the paths.
    MountsMade {
        reply: oneshot::Sender<crate::loader::MountsMade>,
    },
    /// The host's mounts now: those below a host path or a protected directory get guarded
    /// like it.
    MountsNow {
        mounts: Vec<crate::config::Mount>,
    },
    /// The programs' count of attaches, read before the mount table (see
    /// [`crate::loader::Kernel::attached`]).
    Attached {
        reply: oneshot::Sender<u64>,
    },
    /// The directories above the host's mount points now, as read after the programs counted
    /// `looked` attaches; why not when one could not be looked at (see
    /// [`crate::loader::Kernel::set_mount_ancestors`]).
    MountAncestorsNow {
        directories: Result<std::collections::HashSet<gatekeeper_common::Target>, String>,
        looked: u64,
    },
    /// The character devices agents may not open and those registered, as the host's drivers
    /// number them now ([`crate::devices::raw_devices`]).
    DevicesNow {
        devices: Vec<(u32, u32)>,
    },
    Uninstall {
        by: String,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Make an agent cgroup `name` below the first agent cgroup and record its owner
    /// (`gatekeeper agent run`); answers its path.
    StartAgent {
        name: String,
        owner: String,
        by: String,
        command: Vec<String>,
        reply: oneshot::Sender<Result<std::path::PathBuf, String>>,
    },
    /// Make the journal's sealing key (guarded from agents before it is written); answers the
    /// verification key.
    SetupKeys {
        reply: oneshot::Sender<Result<String, String>>,
    },
    /// An agent's justification for an exec it is about to try.
    Announce {
        cgroup_id: u64,
        argv: Vec<String>,
        text: String,
        reply: oneshot::Sender<Result<(), JustifyError>>,
    },
    /// An agent's justification for one of its pending requests.
    Justify {
        cgroup_id: u64,
        id: Option<String>,
        text: String,
        reply: oneshot::Sender<Result<String, JustifyError>>,
    },
    /// Stop (a signal): the pinned programs keep enforcing.
    Stop {
        reason: String,
    },
}

/// A cheap, cloneable way to reach the engine.
#[derive(Clone)]
pub struct Handle {
    commands: mpsc::Sender<Command>,
}

impl Handle {
    pub fn new(commands: mpsc::Sender<Command>) -> Self {
        Self { commands }
    }

    /// Sends without waiting for an answer; false once the engine is gone.
    pub async fn send(&self, command: Command) -> bool {
        self.commands.send(command).await.is_ok()
    }

    async fn ask<T>(&self, command: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
        let (reply, answer) = oneshot::channel();
        if !self.send(command(reply)).await {
            return None;
        }
        answer.await.ok()
    }

    pub async fn mounts_made(&self) -> Option<crate::loader::MountsMade> {
        self.ask(|reply| Command::MountsMade { reply }).await
    }

    pub async fn attached(&self) -> Option<u64> {
        self.ask(|reply| Command::Attached { reply }).await
    }

    pub async fn status(&self) -> Option<Status> {
        self.ask(Command::Status).await
    }

    pub async fn list(&self, all: bool) -> Option<Vec<Request>> {
        self.ask(|reply| Command::List { all, reply }).await
    }

    pub async fn decide(
        &self,
        id: String,
        decision: Decision,
        reason: Option<String>,
        decider: Decider,
    ) -> Result<Request, DecideFailure> {
        self.ask(|reply| Command::Decide {
            id,
            decision,
            reason,
            decider,
            reply,
        })
        .await
        .unwrap_or(Err(DecideFailure::Gone))
    }

    pub async fn refuse(
        &self,
        request_id: String,
        reviewer: Option<String>,
        channel: &'static str,
        why: String,
    ) {
        self.send(Command::Refuse {
            request_id,
            reviewer,
            channel,
            why,
        })
        .await;
    }

    pub async fn wait_on(
        &self,
        cgroup_id: u64,
        id: Option<String>,
        exec: Option<(Vec<String>, u64)>,
    ) -> Waiting {
        self.ask(|reply| Command::Await {
            cgroup_id,
            id,
            exec,
            reply,
        })
        .await
        .unwrap_or(Waiting::NoSuchRequest)
    }

    pub async fn announce(
        &self,
        cgroup_id: u64,
        argv: Vec<String>,
        text: String,
    ) -> Option<Result<(), JustifyError>> {
        self.ask(|reply| Command::Announce {
            cgroup_id,
            argv,
            text,
            reply,
        })
        .await
    }

    pub async fn justify(
        &self,
        cgroup_id: u64,
        id: Option<String>,
        text: String,
    ) -> Option<Result<String, JustifyError>> {
        self.ask(|reply| Command::Justify {
            cgroup_id,
            id,
            text,
            reply,
        })
        .await
    }

    pub async fn uninstall(&self, by: String) -> Result<(), String> {
        self.ask(|reply| Command::Uninstall { by, reply })
            .await
            .unwrap_or_else(|| Err("the daemon is shutting down".into()))
    }

    pub async fn start_agent(
        &self,
        name: String,
        owner: String,
        by: String,
        command: Vec<String>,
    ) -> Result<std::path::PathBuf, String> {
        self.ask(|reply| Command::StartAgent {
            name,
            owner,
            by,
            command,
            reply,
        })
        .await
        .unwrap_or_else(|| Err("the daemon is shutting down".into()))
    }

    pub async fn setup_keys(&self) -> Result<String, String> {
        self.ask(|reply| Command::SetupKeys { reply })
            .await
            .unwrap_or_else(|| Err("the daemon is shutting down".into()))
    }
}
