//! The journal's record types, format 1: what auditors read and what a restarted daemon replays.
//!
//! These types are the file format, kept apart from the daemon's in-memory structs so that a
//! field added to a request does not change (or break) the journal. Every field added in a later
//! format gets a serde default, so journals written before it still open. See
//! `docs/journal-format.md`.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

fn is_zero(count: &u64) -> bool {
    *count == 0
}

/// The format this build writes (records carry it as `"v"`; records without one are format 0).
pub const FORMAT: u32 = 1;

/// What happened. The `type` tag and the field names are the format.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Event {
    DaemonStarted {
        version: String,
        pid: u32,
        kernel: String,
    },
    DaemonStopped {
        reason: String,
    },
    /// Programs attached and pinned where none were: enforcement starts here.
    EnforcementInstalled {
        pin_dir: String,
    },
    /// `gatekeeper uninstall`: enforcement ends here.
    Uninstalled {
        pin_dir: String,
        by: String,
    },
    ProtectionUpdated {
        path: String,
        dev: u32,
        ino: u64,
    },
    /// A file system or file mounted below a host path or a protected directory while the daemon
    /// ran is no longer guarded: unmounted, or no room was left for its guard in the kernel's
    /// map.
    MountUnguarded {
        path: String,
        why: String,
    },
    /// An allowlisted path names a file that is not allowed: other content than was
    /// allowlisted, or changed in place.
    AllowlistRefused {
        path: String,
        dev: u32,
        ino: u64,
        why: String,
    },
    /// The addresses a `host` rule protects: those it had at the daemon's start, and again each
    /// time a lookup adds some.
    HostResolved {
        rule: String,
        host: String,
        addresses: Vec<String>,
    },
    RequestCreated {
        request: Box<RequestRecord>,
    },
    /// One delivery attempt to one webhook, of one request or of a digest of several.
    WebhookDelivery {
        request_ids: Vec<String>,
        url: String,
        attempt: u32,
        delivered: bool,
        status: Option<u16>,
        error: Option<String>,
    },
    Decision {
        request_id: String,
        decision: Verdict,
        reviewer: String,
        reason: Option<String>,
        channel: String,
        /// On the approval that completes the request: the grant about to go to the kernel.
        /// A restart that finds no `grant_issued` for it asks the kernel rather than granting
        /// again.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        grant_id: Option<u64>,
    },
    DecisionRefused {
        request_id: String,
        reviewer: Option<String>,
        channel: String,
        why: String,
        /// Refusals of the same caller on the same channel in the second before this one that
        /// were counted here instead of journaled one by one.
        #[serde(default, skip_serializing_if = "is_zero")]
        repeated: u64,
    },
    /// Written once the grant is in the kernel, never before.
    GrantIssued {
        grant_id: u64,
        request_id: String,
        #[serde(with = "time::serde::rfc3339")]
        expires: OffsetDateTime,
    },
    /// The approval stands but its grant could not be put into the kernel.
    GrantFailed {
        grant_id: u64,
        request_id: String,
        error: String,
    },
    GrantUsed {
        grant_id: u64,
        request_id: String,
        /// None when the kernel's event was lost (ring buffer full) and only the consumed map
        /// entry tells that the grant was used.
        pid: Option<u32>,
    },
    GrantExpired {
        grant_id: u64,
        request_id: String,
    },
    /// An agent tried to disable or walk around the enforcer, and was denied.
    TamperAttempt {
        hook: String,
        pid: u32,
        uid: u32,
        comm: String,
        cgroup: String,
        /// Hook-specific: e.g. (target pid, signal), (bpf command, 0).
        detail: [u64; 2],
        /// Attempts on the same hook from the same cgroup in the second before this one that
        /// were counted here instead of journaled one by one (this record is the latest).
        #[serde(default, skip_serializing_if = "is_zero")]
        repeated: u64,
    },
    RequestExpired {
        request_id: String,
    },
    /// The agent's own words on why it needs a pending request's action (`gatekeeper await
    /// --reason`); a justification given before the action is in its `request_created`.
    Justification {
        request_id: String,
        text: String,
    },
    /// An agent cgroup reached its cap of pending requests: further distinct denials are counted
    /// on its open requests instead of becoming requests, until one is decided or expires.
    PendingCapReached {
        cgroup: String,
        cap: u32,
    },
    /// `gatekeeper agent run` started an agent in a cgroup of its own.
    AgentStarted {
        cgroup: String,
        cgroup_id: u64,
        /// Who runs the agent: never allowed to approve its requests.
        owner: String,
        /// Who started it.
        by: String,
        command: Vec<String>,
    },
    /// The last line was torn (e.g. power loss mid-write): its bytes were moved aside.
    JournalRepaired {
        offset: u64,
        bytes: u64,
        saved_to: String,
    },
    /// The daemon's state at this point: a restart replays from the last checkpoint on.
    Checkpoint {
        state: Snapshot,
    },
    /// A forward-secure seal over every record before it (see `seal.rs`): `tag` is the
    /// HMAC-SHA-256, with the key of `epoch`, of the epoch, this record's `seq` and its `prev`.
    Seal {
        epoch: u64,
        tag: String,
    },
}

impl Event {
    /// The `type` tag, as written.
    pub fn name(&self) -> &'static str {
        match self {
            Self::DaemonStarted { .. } => "daemon_started",
            Self::DaemonStopped { .. } => "daemon_stopped",
            Self::EnforcementInstalled { .. } => "enforcement_installed",
            Self::Uninstalled { .. } => "uninstalled",
            Self::ProtectionUpdated { .. } => "protection_updated",
            Self::MountUnguarded { .. } => "mount_unguarded",
            Self::AllowlistRefused { .. } => "allowlist_refused",
            Self::HostResolved { .. } => "host_resolved",
            Self::RequestCreated { .. } => "request_created",
            Self::WebhookDelivery { .. } => "webhook_delivery",
            Self::Decision { .. } => "decision",
            Self::DecisionRefused { .. } => "decision_refused",
            Self::GrantIssued { .. } => "grant_issued",
            Self::GrantFailed { .. } => "grant_failed",
            Self::GrantUsed { .. } => "grant_used",
            Self::GrantExpired { .. } => "grant_expired",
            Self::TamperAttempt { .. } => "tamper_attempt",
            Self::RequestExpired { .. } => "request_expired",
            Self::Justification { .. } => "justification",
            Self::PendingCapReached { .. } => "pending_cap_reached",
            Self::AgentStarted { .. } => "agent_started",
            Self::JournalRepaired { .. } => "journal_repaired",
            Self::Checkpoint { .. } => "checkpoint",
            Self::Seal { .. } => "seal",
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Approve,
    Deny,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RequestKind {
    Exec,
    Connect,
    File,
}

/// A rule's risk; records written before risks existed read as medium.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RiskRecord {
    Low,
    #[default]
    Medium,
    High,
    Critical,
}

/// What an exec grant covers; records written before grants were bound to arguments read as
/// `binary`, which is what their grants covered.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BindRecord {
    Argv,
    #[default]
    Binary,
}

/// An exec's arguments as the kernel read them from the caller.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExecRecord {
    /// As passed to execve; for a script from `argv[1]`.
    pub argv: Vec<String>,
    #[serde(default)]
    pub script: bool,
    /// Read whole (otherwise cut, and no argument-bound grant matches).
    pub complete: bool,
    /// The kernel's keyed hash of the arguments.
    pub hash: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RequestState {
    Pending,
    Approved,
    Denied,
    Expired,
}

/// The kernel's key for what was attempted.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct TargetRecord {
    pub kind: u32,
    pub aux: u32,
    pub data: [u64; 2],
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DestinationRecord {
    pub address: String,
    pub port: u16,
    pub protocol: String,
    #[serde(default)]
    pub host: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProcessRecord {
    pub pid: u32,
    pub tgid: u32,
    pub uid: u32,
    #[serde(default)]
    pub user: Option<String>,
    pub comm: String,
    #[serde(default)]
    pub argv: Option<Vec<String>>,
    #[serde(default)]
    pub parent: Option<ParentRecord>,
    #[serde(default)]
    pub cwd: Option<String>,
    /// Up to three processes above it, its parent first.
    #[serde(default)]
    pub ancestors: Vec<AncestorRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AncestorRecord {
    pub pid: u32,
    #[serde(default)]
    pub comm: Option<String>,
    #[serde(default)]
    pub argv: Option<Vec<String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ParentRecord {
    pub pid: u32,
    #[serde(default)]
    pub comm: Option<String>,
}

/// A request as it was created: what was asked, by whom, under which rule.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RequestRecord {
    pub id: String,
    pub kind: RequestKind,
    pub rule: String,
    pub target: String,
    pub target_key: TargetRecord,
    #[serde(default)]
    pub destination: Option<DestinationRecord>,
    pub cgroup: String,
    pub cgroup_id: u64,
    pub process: ProcessRecord,
    #[serde(with = "time::serde::rfc3339")]
    pub created: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires: OffsetDateTime,
    #[serde(default)]
    pub owner: Option<String>,
    pub approvals_required: u32,
    #[serde(default)]
    pub require_reason: bool,
    #[serde(default)]
    pub risk: RiskRecord,
    #[serde(default)]
    pub exec: Option<ExecRecord>,
    #[serde(default)]
    pub bind: BindRecord,
    /// The agent's own words, when it gave them before the action (`gatekeeper run --reason`).
    #[serde(default)]
    pub justification: Option<String>,
}

/// One reviewer's decision, with when it was taken.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DecisionRecord {
    pub decision: Verdict,
    pub reviewer: String,
    #[serde(default)]
    pub reason: Option<String>,
    pub channel: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// A request in a checkpoint: as created, and where it stands.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RequestSnapshot {
    pub request: RequestRecord,
    pub state: RequestState,
    pub attempts: u32,
    #[serde(default)]
    pub approvals: Vec<DecisionRecord>,
    #[serde(default)]
    pub decision: Option<DecisionRecord>,
    #[serde(default)]
    pub grant_id: Option<u64>,
    #[serde(default)]
    pub grant_error: Option<String>,
    /// When it left pending.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub finished: Option<OffsetDateTime>,
    /// URLs of the webhooks that have had it.
    #[serde(default)]
    pub delivered_to: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct GrantSnapshot {
    pub grant_id: u64,
    pub request_id: String,
}

/// What a restarted daemon needs to pick up: open and recently finished requests, and grants
/// that may still be used.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Snapshot {
    /// When enforcement was last installed, if it still is.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub enforcing_since: Option<OffsetDateTime>,
    #[serde(default)]
    pub requests: Vec<RequestSnapshot>,
    #[serde(default)]
    pub grants: Vec<GrantSnapshot>,
    /// `[[audit.forward]]` receiver (its address) -> the last record it has had: a restarted
    /// daemon sends from the next one.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub forwarded: std::collections::BTreeMap<String, u64>,
    /// Agents started by `gatekeeper agent run`, with their owners.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agents: Vec<LaunchedAgent>,
    /// Host of a `host` rule -> the addresses it protected as last journaled: a daemon that
    /// cannot look the name up as it starts protects these.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub host_addresses: std::collections::BTreeMap<String, Vec<String>>,
}

/// An agent `gatekeeper agent run` started: its cgroup, as made, and its owner.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LaunchedAgent {
    pub cgroup_id: u64,
    pub cgroup: String,
    pub owner: String,
}
