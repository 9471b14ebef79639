//! The TOML schema as written, before validation.

use std::{collections::BTreeMap, path::PathBuf};

use serde::Deserialize;

use crate::destinations::PortSpec;

// Required keys and integers are optional here, so that a missing key or a number out of range
// is one problem among the others rather than a deserialization error that hides them.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) daemon: RawDaemon,
    #[serde(default)]
    pub(super) agents: RawAgents,
    #[serde(default)]
    pub(super) protect: RawProtect,
    #[serde(default)]
    pub(super) approval: RawApproval,
    #[serde(default)]
    pub(super) webhook: Vec<RawWebhook>,
    #[serde(default)]
    pub(super) audit: RawAudit,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAudit {
    #[serde(default)]
    pub(super) forward: Vec<RawForward>,
}

/// `[[audit.forward]]`: a receiver off the host that gets every journal record.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawForward {
    pub(super) kind: Option<String>,
    pub(super) address: Option<String>,
    pub(super) url: Option<String>,
    pub(super) tls: Option<bool>,
    pub(super) ca_file: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDaemon {
    pub(super) socket: Option<PathBuf>,
    /// An empty string turns the HTTP listener off.
    pub(super) listen: Option<String>,
    /// Prometheus metrics and health probes (off unless set).
    pub(super) metrics: Option<String>,
    pub(super) journal: Option<PathBuf>,
    pub(super) pin_dir: Option<PathBuf>,
    pub(super) resolve_interval: Option<String>,
    pub(super) redeliver_interval: Option<String>,
    pub(super) retention: Option<String>,
    pub(super) checkpoint_every: Option<i64>,
    pub(super) max_clients: Option<i64>,
    pub(super) seal_key: Option<PathBuf>,
    pub(super) seal_interval: Option<String>,
    pub(super) seal_every: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAgents {
    #[serde(default)]
    pub(super) cgroups: Vec<PathBuf>,
    #[serde(default)]
    pub(super) owner: Vec<RawOwner>,
    /// "protect" (default): only protected binaries need approval; "allowlist": everything
    /// not in `allow` does.
    pub(super) exec: Option<String>,
    #[serde(default)]
    pub(super) allow: Vec<PathBuf>,
    pub(super) max_pending: Option<i64>,
    /// Host directories agents change only with approval (absent: the defaults).
    pub(super) host_paths: Option<Vec<PathBuf>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOwner {
    pub(super) cgroup: PathBuf,
    pub(super) owner: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProtect {
    #[serde(default)]
    pub(super) exec: Vec<RawExecRule>,
    #[serde(default)]
    pub(super) connect: Vec<RawConnectRule>,
    #[serde(default)]
    pub(super) file: Vec<RawFileRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawExecRule {
    pub(super) path: PathBuf,
    pub(super) name: Option<String>,
    pub(super) approvals: Option<i64>,
    pub(super) require_reason: Option<bool>,
    pub(super) risk: Option<String>,
    /// "argv" (the default) or "binary".
    pub(super) bind: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFileRule {
    pub(super) path: PathBuf,
    pub(super) name: Option<String>,
    /// "read", "write" or "any" (the default).
    pub(super) access: Option<String>,
    pub(super) approvals: Option<i64>,
    pub(super) require_reason: Option<bool>,
    pub(super) risk: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConnectRule {
    pub(super) name: Option<String>,
    pub(super) cidr: Option<String>,
    pub(super) host: Option<String>,
    /// A unix socket by the path it is bound to.
    pub(super) path: Option<PathBuf>,
    pub(super) ports: Option<Vec<PortSpec>>,
    pub(super) protocol: Option<String>,
    pub(super) approvals: Option<i64>,
    pub(super) require_reason: Option<bool>,
    pub(super) risk: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApproval {
    #[serde(default)]
    pub(super) reviewers: Vec<String>,
    #[serde(default)]
    pub(super) slack_users: BTreeMap<String, String>,
    /// Reviewer -> the key that signs their HTTP decisions.
    #[serde(default)]
    pub(super) keys: BTreeMap<String, String>,
    pub(super) grant_ttl: Option<String>,
    pub(super) request_ttl: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWebhook {
    pub(super) kind: Option<String>,
    pub(super) url: Option<String>,
    pub(super) secret: Option<String>,
    pub(super) signing_secret: Option<String>,
    pub(super) timeout: Option<String>,
    pub(super) attempts: Option<i64>,
    pub(super) burst: Option<i64>,
    pub(super) refill: Option<String>,
}
