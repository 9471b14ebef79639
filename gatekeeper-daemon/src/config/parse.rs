//! From TOML text to a [`Config`], without consulting the host. Every part is checked even when
//! an earlier one failed, so the error lists every problem.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    fmt,
    net::SocketAddr,
    ops::RangeInclusive,
    path::{Path, PathBuf},
    time::Duration,
};

use gatekeeper_common::file_access;

use super::{
    AGENT_SOCKET_NAME, Bind, Config, ConfigError, ConnectRule, DEFAULT_SOCKET, DestinationSpec,
    ExecRule, FileRule, Forward, ForwardTls, Problem, Risk, RulePolicy, Webhook, WebhookKind,
    raw::{
        RawAgents, RawApproval, RawConfig, RawConnectRule, RawDaemon, RawExecRule, RawFileRule,
        RawForward, RawOwner, RawWebhook,
    },
};
use crate::{
    cgroups,
    destinations::{self, PortSpec},
};

pub(super) const DEFAULT_LISTEN: &str = "127.0.0.1:8787";
const DEFAULT_JOURNAL: &str = "/var/lib/gatekeeper/journal.jsonl";
/// Where the host keeps what processes outside the agent cgroups run or read as configuration
/// (cron tables, systemd units, `/etc/ld.so.preload`, the kernel's `/sbin/request-key`, root's
/// shell profile): a root agent that changed them would act through those processes.
pub(super) const DEFAULT_HOST_PATHS: &[&str] = &[
    "/etc",
    "/usr",
    "/boot",
    "/opt",
    "/root",
    "/var/lib",
    "/var/spool",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
];
const DEFAULT_SEAL_KEY: &str = "/var/lib/gatekeeper/seal.key";
pub(super) const DEFAULT_SEAL_INTERVAL: Duration = Duration::from_secs(5 * 60);
pub(super) const DEFAULT_SEAL_EVERY: u64 = 1000;
const SEAL_EVERY_RANGE: RangeInclusive<u64> = 1..=1_000_000;
const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/gatekeeper";
const DEFAULT_RESOLVE_INTERVAL: Duration = Duration::from_secs(30);
const DEFAULT_REDELIVER_INTERVAL: Duration = Duration::from_secs(30);
pub(super) const DEFAULT_RETENTION: Duration = Duration::from_secs(60 * 60);
pub(super) const DEFAULT_CHECKPOINT_EVERY: u64 = 1000;
const CHECKPOINT_EVERY_RANGE: RangeInclusive<u64> = 10..=1_000_000;
pub(super) const DEFAULT_MAX_CLIENTS: u32 = 256;
const MAX_CLIENTS_RANGE: RangeInclusive<u32> = 8..=65536;
pub(super) const DEFAULT_MAX_PENDING: u32 = 16;
const MAX_PENDING_RANGE: RangeInclusive<u32> = 1..=1000;
const APPROVALS_RANGE: RangeInclusive<u32> = 1..=10;
const DEFAULT_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);
pub(super) const DEFAULT_WEBHOOK_ATTEMPTS: u32 = 5;
const WEBHOOK_ATTEMPTS_RANGE: RangeInclusive<u32> = 1..=20;
pub(super) const DEFAULT_WEBHOOK_BURST: u32 = 10;
const WEBHOOK_BURST_RANGE: RangeInclusive<u32> = 1..=1000;
pub(super) const DEFAULT_WEBHOOK_REFILL: Duration = Duration::from_secs(6);
const MIN_GENERIC_SECRET_LEN: usize = 16;

pub(super) fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let raw: RawConfig = toml::from_str(text).map_err(|error| ConfigError::Syntax {
        path: path.to_owned(),
        message: error.to_string().trim_end().to_owned(),
    })?;
    let mut parser = Parser::default();
    match parser.config(path, raw) {
        Ok(config) if parser.problems.is_empty() => Ok(config),
        _ => Err(ConfigError::Invalid {
            path: path.to_owned(),
            problems: parser.problems,
        }),
    }
}

/// Proof that a problem was recorded: a part that fails returns this instead of its value, so a
/// config can only be refused with something to say.
struct Reported;

#[derive(Default)]
struct Parser {
    problems: Vec<Problem>,
}

/// Every item's value, or [`Reported`] if any failed. Unlike `collect`, it goes on past the
/// first failure, so each item reports its own problems.
fn all<T>(items: impl IntoIterator<Item = Result<T, Reported>>) -> Result<Vec<T>, Reported> {
    let mut values = Vec::new();
    let mut failed = false;
    for item in items {
        match item {
            Ok(value) => values.push(value),
            Err(Reported) => failed = true,
        }
    }
    if failed { Err(Reported) } else { Ok(values) }
}

/// Both values, once both parts have reported their problems.
fn both<A, B>(a: Result<A, Reported>, b: Result<B, Reported>) -> Result<(A, B), Reported> {
    Ok((a?, b?))
}

/// The settings of `[daemon]`.
struct DaemonSection {
    socket: PathBuf,
    listen: Option<SocketAddr>,
    metrics: Option<SocketAddr>,
    journal: PathBuf,
    pin_dir: PathBuf,
    resolve_interval: Duration,
    redeliver_interval: Duration,
    retention: Duration,
    checkpoint_every: u64,
    max_clients: u32,
    seal_key: PathBuf,
    seal_interval: Duration,
    seal_every: u64,
}

/// The settings of `[agents]`.
struct AgentsSection {
    cgroups: Vec<PathBuf>,
    exec_allowlist: bool,
    allowed: Vec<PathBuf>,
    owners: Vec<(PathBuf, String)>,
    max_pending: u32,
    host_paths: Vec<PathBuf>,
}

/// The settings of `[approval]`.
struct ApprovalSection {
    reviewers: Vec<String>,
    slack_users: BTreeMap<String, String>,
    reviewer_keys: BTreeMap<String, String>,
    grant_ttl: Duration,
    request_ttl: Duration,
}

impl Parser {
    fn report(&mut self, key: impl Into<String>, message: impl fmt::Display) -> Reported {
        self.problems.push(Problem::new(key, message));
        Reported
    }

    /// `result`'s value, or its error reported under `key`.
    fn check<T, E: fmt::Display>(
        &mut self,
        key: impl Into<String>,
        result: Result<T, E>,
    ) -> Result<T, Reported> {
        result.map_err(|error| self.report(key, error))
    }

    fn config(&mut self, path: &Path, raw: RawConfig) -> Result<Config, Reported> {
        let daemon = self.daemon(raw.daemon);
        let agents = self.agents(raw.agents);
        let exec_rules = self.exec_rules(raw.protect.exec);
        let connect_rules = self.connect_rules(raw.protect.connect);
        let file_rules = self.file_rules(raw.protect.file);
        let approval = self.approval(raw.approval);
        let webhooks = all(raw
            .webhook
            .into_iter()
            .enumerate()
            .map(|(index, hook)| self.webhook(&format!("webhook[{index}]"), hook)));
        let (daemon, agents) = both(daemon, agents)?;
        let (exec_rules, connect_rules) = both(exec_rules, connect_rules)?;
        let file_rules = file_rules?;
        let forwards = self.forwards(raw.audit.forward);
        let (approval, webhooks) = both(approval, webhooks)?;
        let forwards = forwards?;
        self.keys_apart(&approval.reviewer_keys, &webhooks)?;
        Ok(Config {
            path: path.to_owned(),
            socket: daemon.socket,
            listen: daemon.listen,
            metrics: daemon.metrics,
            journal: daemon.journal,
            pin_dir: daemon.pin_dir,
            resolve_interval: daemon.resolve_interval,
            redeliver_interval: daemon.redeliver_interval,
            retention: daemon.retention,
            checkpoint_every: daemon.checkpoint_every,
            max_clients: daemon.max_clients,
            seal_key: daemon.seal_key,
            seal_interval: daemon.seal_interval,
            seal_every: daemon.seal_every,
            agent_cgroups: agents.cgroups,
            max_pending: agents.max_pending,
            exec_allowlist: agents.exec_allowlist,
            allowed: agents.allowed,
            exec_rules,
            connect_rules,
            file_rules,
            reviewers: approval.reviewers,
            slack_users: approval.slack_users,
            reviewer_keys: approval.reviewer_keys,
            owners: agents.owners,
            host_paths: agents.host_paths,
            guard_roots: Vec::new(),
            grant_ttl: approval.grant_ttl,
            request_ttl: approval.request_ttl,
            webhooks,
            forwards,
        })
    }

    fn forwards(&mut self, raw: Vec<RawForward>) -> Result<Vec<Forward>, Reported> {
        let mut seen = BTreeSet::new();
        let forwards: Vec<_> = raw
            .into_iter()
            .enumerate()
            .map(|(index, raw)| {
                let key = format!("audit.forward[{index}]");
                let forward = self.forward(&key, raw)?;
                if !seen.insert(forward.name()) {
                    return Err(
                        self.report(key, format!("{} is forwarded to twice", forward.name()))
                    );
                }
                Ok(forward)
            })
            .collect();
        all(forwards)
    }

    fn forward(&mut self, key: &str, raw: RawForward) -> Result<Forward, Reported> {
        let unwanted = |parser: &mut Self, field: &str, set: bool, kind: &str| {
            if set {
                Err(parser.report(
                    format!("{key}.{field}"),
                    format!("a {kind} receiver takes none"),
                ))
            } else {
                Ok(())
            }
        };
        match raw.kind.as_deref() {
            Some("syslog") => {
                unwanted(self, "url", raw.url.is_some(), "syslog")?;
                let tls = raw.tls.unwrap_or(false);
                if raw.ca_file.is_some() && !tls {
                    return Err(
                        self.report(format!("{key}.ca_file"), "is for TLS: set tls = true too")
                    );
                }
                let Some(address) = raw.address else {
                    return Err(self.report(format!("{key}.address"), "missing: host:port"));
                };
                let port = address
                    .rsplit_once(':')
                    .map(|(host, port)| (host, port.parse::<u16>()));
                if !matches!(port, Some((host, Ok(port))) if !host.is_empty() && port != 0) {
                    return Err(self.report(
                        format!("{key}.address"),
                        format!("{address:?} is not host:port"),
                    ));
                }
                let ca_file = match raw.ca_file {
                    Some(path) => Some(self.absolute_path(&format!("{key}.ca_file"), path)?),
                    None => None,
                };
                Ok(Forward::Syslog {
                    address,
                    tls: tls.then_some(ForwardTls { ca_file }),
                })
            }
            Some("https") => {
                unwanted(self, "address", raw.address.is_some(), "https")?;
                unwanted(self, "tls", raw.tls.is_some(), "https (always TLS)")?;
                let Some(url) = raw.url else {
                    return Err(self.report(format!("{key}.url"), "missing: https://..."));
                };
                let url = match reqwest::Url::parse(&url) {
                    Ok(url) if url.scheme() == "https" => url,
                    Ok(_) => {
                        return Err(self.report(
                            format!("{key}.url"),
                            format!("{url:?} is not https: records leave the host encrypted"),
                        ));
                    }
                    Err(error) => {
                        return Err(self.report(format!("{key}.url"), format!("{url:?}: {error}")));
                    }
                };
                let ca_file = match raw.ca_file {
                    Some(path) => Some(self.absolute_path(&format!("{key}.ca_file"), path)?),
                    None => None,
                };
                Ok(Forward::Https { url, ca_file })
            }
            Some(other) => Err(self.report(
                format!("{key}.kind"),
                format!("{other:?} is not a kind of receiver: \"syslog\" or \"https\""),
            )),
            None => Err(self.report(format!("{key}.kind"), "missing: \"syslog\" or \"https\"")),
        }
    }

    fn daemon(&mut self, raw: RawDaemon) -> Result<DaemonSection, Reported> {
        let listen = match raw.listen.as_deref() {
            Some("") => Ok(None),
            other => self
                .check(
                    "daemon.listen",
                    other.unwrap_or(DEFAULT_LISTEN).parse::<SocketAddr>(),
                )
                .map(Some),
        };
        let metrics = match raw.metrics.as_deref().map(str::parse::<SocketAddr>) {
            None => Ok(None),
            Some(Ok(addr)) if addr.ip().is_loopback() => Ok(Some(addr)),
            Some(Ok(addr)) => Err(self.report(
                "daemon.metrics",
                format!(
                    "{addr} is not a loopback address: metrics are served on 127.0.0.1 or ::1 only"
                ),
            )),
            Some(Err(error)) => Err(self.report("daemon.metrics", error)),
        };
        let pin_dir = self.absolute_path(
            "daemon.pin_dir",
            raw.pin_dir.unwrap_or_else(|| DEFAULT_PIN_DIR.into()),
        );
        let resolve_interval = self.duration(
            "daemon.resolve_interval",
            raw.resolve_interval,
            DEFAULT_RESOLVE_INTERVAL,
        );
        let redeliver_interval = self.duration(
            "daemon.redeliver_interval",
            raw.redeliver_interval,
            DEFAULT_REDELIVER_INTERVAL,
        );
        let retention = self.duration("daemon.retention", raw.retention, DEFAULT_RETENTION);
        let checkpoint_every = self.number(
            "daemon.checkpoint_every",
            raw.checkpoint_every,
            DEFAULT_CHECKPOINT_EVERY,
            CHECKPOINT_EVERY_RANGE,
        );
        let max_clients = self.number(
            "daemon.max_clients",
            raw.max_clients,
            DEFAULT_MAX_CLIENTS,
            MAX_CLIENTS_RANGE,
        );
        let seal_key = self.absolute_path(
            "daemon.seal_key",
            raw.seal_key.unwrap_or_else(|| DEFAULT_SEAL_KEY.into()),
        );
        let seal_interval = self.duration(
            "daemon.seal_interval",
            raw.seal_interval,
            DEFAULT_SEAL_INTERVAL,
        );
        let seal_every = self.number(
            "daemon.seal_every",
            raw.seal_every,
            DEFAULT_SEAL_EVERY,
            SEAL_EVERY_RANGE,
        );
        let socket = self.socket(raw.socket.unwrap_or_else(|| DEFAULT_SOCKET.into()));
        Ok(DaemonSection {
            socket: socket?,
            listen: listen?,
            metrics: metrics?,
            journal: raw.journal.unwrap_or_else(|| DEFAULT_JOURNAL.into()),
            pin_dir: pin_dir?,
            resolve_interval: resolve_interval?,
            redeliver_interval: redeliver_interval?,
            retention: retention?,
            checkpoint_every: checkpoint_every?,
            max_clients: max_clients?,
            seal_key: seal_key?,
            seal_interval: seal_interval?,
            seal_every: seal_every?,
        })
    }

    fn agents(&mut self, raw: RawAgents) -> Result<AgentsSection, Reported> {
        let cgroups = if raw.cgroups.is_empty() {
            Err(self.report("agents.cgroups", "at least one agent cgroup is required"))
        } else {
            Ok(())
        };
        let exec_allowlist = match raw.exec.as_deref() {
            None | Some("protect") => Ok(false),
            Some("allowlist") if raw.allow.is_empty() => Err(self.report(
                "agents.allow",
                "allowlist mode needs the binaries agents may run",
            )),
            Some("allowlist") => Ok(true),
            Some(other) => Err(self.report(
                "agents.exec",
                format!("{other:?}: use \"protect\" or \"allowlist\""),
            )),
        };
        let allowed = all(raw
            .allow
            .into_iter()
            .enumerate()
            .map(|(index, path)| self.absolute_path(&format!("agents.allow[{index}]"), path)));
        let owners = all(raw.owner.into_iter().enumerate().map(|(index, owner)| {
            self.owner(&format!("agents.owner[{index}]"), owner, &raw.cgroups)
        }));
        let max_pending = self.number(
            "agents.max_pending",
            raw.max_pending,
            DEFAULT_MAX_PENDING,
            MAX_PENDING_RANGE,
        );
        let host_paths = match raw.host_paths {
            None => Ok(DEFAULT_HOST_PATHS.iter().map(PathBuf::from).collect()),
            Some(paths) => all(paths.into_iter().enumerate().map(|(index, path)| {
                self.absolute_path(&format!("agents.host_paths[{index}]"), path)
            })),
        };
        cgroups?;
        Ok(AgentsSection {
            host_paths: host_paths?,
            cgroups: raw.cgroups,
            exec_allowlist: exec_allowlist?,
            allowed: allowed?,
            owners: owners?,
            max_pending: max_pending?,
        })
    }

    fn owner(
        &mut self,
        key: &str,
        raw: RawOwner,
        agent_cgroups: &[PathBuf],
    ) -> Result<(PathBuf, String), Reported> {
        let cgroup = if cgroups::is_within(&raw.cgroup, agent_cgroups) {
            Ok(raw.cgroup)
        } else {
            Err(self.report(
                format!("{key}.cgroup"),
                "is not an agent cgroup or below one",
            ))
        };
        let owner = if raw.owner.trim().is_empty() {
            Err(self.report(format!("{key}.owner"), "must not be empty"))
        } else {
            Ok(raw.owner)
        };
        both(cgroup, owner)
    }

    fn exec_rules(&mut self, raw: Vec<RawExecRule>) -> Result<Vec<ExecRule>, Reported> {
        let mut seen = HashSet::new();
        all(raw.into_iter().enumerate().map(|(index, rule)| {
            self.exec_rule(&format!("protect.exec[{index}]"), rule, &mut seen)
        }))
    }

    fn exec_rule(
        &mut self,
        key: &str,
        raw: RawExecRule,
        seen: &mut HashSet<PathBuf>,
    ) -> Result<ExecRule, Reported> {
        let path = self.rule_path(key, raw.path, seen);
        let approval = self.policy(key, raw.approvals, raw.require_reason, raw.risk);
        let bind = match raw.bind {
            None => Ok(Bind::default()),
            Some(word) => match Bind::ALL.into_iter().find(|bind| bind.name() == word) {
                Some(bind) => Ok(bind),
                None => Err(self.report(
                    format!("{key}.bind"),
                    format!("{word:?}: use \"argv\" (the approved arguments) or \"binary\" (any)"),
                )),
            },
        };
        let path = path?;
        Ok(ExecRule {
            name: raw.name.unwrap_or_else(|| path.display().to_string()),
            path,
            approval: approval?,
            bind: bind?,
        })
    }

    /// A rule's `path`: absolute, and in no other rule of its kind (`seen`).
    fn rule_path(
        &mut self,
        key: &str,
        path: PathBuf,
        seen: &mut HashSet<PathBuf>,
    ) -> Result<PathBuf, Reported> {
        let path_key = format!("{key}.path");
        let unique = if seen.insert(path.clone()) {
            Ok(())
        } else {
            let message = format!("{} is listed twice", path.display());
            Err(self.report(&path_key, message))
        };
        let path = self.absolute_path(&path_key, path);
        unique?;
        path
    }

    fn file_rules(&mut self, raw: Vec<RawFileRule>) -> Result<Vec<FileRule>, Reported> {
        let mut seen = HashSet::new();
        all(raw.into_iter().enumerate().map(|(index, rule)| {
            self.file_rule(&format!("protect.file[{index}]"), rule, &mut seen)
        }))
    }

    fn file_rule(
        &mut self,
        key: &str,
        raw: RawFileRule,
        seen: &mut HashSet<PathBuf>,
    ) -> Result<FileRule, Reported> {
        let path = self.rule_path(key, raw.path, seen);
        let access = match raw.access.as_deref() {
            None | Some("any") => Ok(file_access::READ | file_access::WRITE),
            Some("read") => Ok(file_access::READ),
            Some("write") => Ok(file_access::WRITE),
            Some(other) => Err(self.report(
                format!("{key}.access"),
                format!("{other:?}: use \"read\", \"write\" or \"any\""),
            )),
        };
        let approval = self.policy(key, raw.approvals, raw.require_reason, raw.risk);
        let path = path?;
        Ok(FileRule {
            name: raw.name.unwrap_or_else(|| path.display().to_string()),
            path,
            access: access?,
            approval: approval?,
        })
    }

    fn connect_rules(&mut self, raw: Vec<RawConnectRule>) -> Result<Vec<ConnectRule>, Reported> {
        let rules: Vec<_> = raw
            .into_iter()
            .enumerate()
            .map(|(index, rule)| self.connect_rule(&format!("protect.connect[{index}]"), rule))
            .collect();
        // The rules that parsed must fit the kernel's trie; the others only add ranges.
        let reaches: Vec<destinations::Reach> = rules
            .iter()
            .flatten()
            .filter_map(|rule| match rule.destination {
                DestinationSpec::Cidr(prefix) => Some(destinations::Reach {
                    prefixes: vec![prefix],
                    ports: rule.ports.clone(),
                    protocols: rule.protocols,
                }),
                DestinationSpec::Host(_) | DestinationSpec::Socket(_) => None,
            })
            .collect();
        let fits = self.check("protect.connect", destinations::compile(&reaches));
        let rules = all(rules);
        fits?;
        rules
    }

    fn connect_rule(&mut self, key: &str, raw: RawConnectRule) -> Result<ConnectRule, Reported> {
        let socket = raw.path.is_some();
        let destination = self.destination(key, raw.cidr, raw.host, raw.path);
        let network_only = match (socket, &raw.ports, &raw.protocol) {
            (true, Some(_), _) => Err(self.report(
                format!("{key}.ports"),
                "a unix socket has no ports: omit the key",
            )),
            (true, _, Some(_)) => Err(self.report(
                format!("{key}.protocol"),
                "a unix socket has no protocol: omit the key",
            )),
            _ => Ok(()),
        };
        let ports = self.ports(&format!("{key}.ports"), raw.ports);
        let protocols = self.check(
            format!("{key}.protocol"),
            destinations::parse_protocol(raw.protocol.as_deref().unwrap_or("any")),
        );
        let approval = self.policy(key, raw.approvals, raw.require_reason, raw.risk);
        let destination = destination?;
        network_only?;
        Ok(ConnectRule {
            name: raw.name.unwrap_or_else(|| match &destination {
                DestinationSpec::Cidr(prefix) => prefix.to_string(),
                DestinationSpec::Host(host) => host.clone(),
                DestinationSpec::Socket(path) => path.display().to_string(),
            }),
            destination,
            ports: ports?,
            protocols: protocols?,
            approval: approval?,
        })
    }

    fn destination(
        &mut self,
        key: &str,
        cidr: Option<String>,
        host: Option<String>,
        path: Option<PathBuf>,
    ) -> Result<DestinationSpec, Reported> {
        match (cidr, host, path) {
            (Some(cidr), None, None) => self
                .check(format!("{key}.cidr"), destinations::parse_cidr(&cidr))
                .map(DestinationSpec::Cidr),
            (None, Some(host), None) if !host.trim().is_empty() => Ok(DestinationSpec::Host(host)),
            (None, Some(_), None) => Err(self.report(format!("{key}.host"), "must not be empty")),
            (None, None, Some(path)) => self
                .absolute_path(&format!("{key}.path"), path)
                .map(DestinationSpec::Socket),
            (None, None, None) => Err(self.report(
                format!("{key}.cidr"),
                "a cidr, a host or a (unix socket) path is required",
            )),
            _ => Err(self.report(
                format!("{key}.cidr"),
                "give one of cidr, host and path, not several",
            )),
        }
    }

    fn ports(
        &mut self,
        key: &str,
        specs: Option<Vec<PortSpec>>,
    ) -> Result<Vec<(u16, u16)>, Reported> {
        match specs {
            None => Ok(Vec::new()),
            Some(specs) if specs.is_empty() => {
                Err(self.report(key, "empty: omit the key to cover every port"))
            }
            Some(specs) => all(specs.iter().enumerate().map(|(index, spec)| {
                self.check(format!("{key}[{index}]"), destinations::parse_port(spec))
            })),
        }
    }

    fn policy(
        &mut self,
        rule_key: &str,
        approvals: Option<i64>,
        require_reason: Option<bool>,
        risk: Option<String>,
    ) -> Result<RulePolicy, Reported> {
        let defaults = RulePolicy::default();
        let approvals = self.number(
            &format!("{rule_key}.approvals"),
            approvals,
            defaults.approvals,
            APPROVALS_RANGE,
        );
        let risk = match risk {
            None => Ok(defaults.risk),
            Some(word) => match Risk::ALL.into_iter().find(|risk| risk.name() == word) {
                Some(risk) => Ok(risk),
                None => Err(self.report(
                    format!("{rule_key}.risk"),
                    format!("{word:?}: use \"low\", \"medium\", \"high\" or \"critical\""),
                )),
            },
        };
        Ok(RulePolicy {
            approvals: approvals?,
            require_reason: require_reason.unwrap_or(defaults.require_reason),
            risk: risk?,
        })
    }

    fn approval(&mut self, raw: RawApproval) -> Result<ApprovalSection, Reported> {
        let reviewers = self.reviewers(&raw.reviewers);
        let slack_users = all(raw.slack_users.iter().map(|(id, name)| {
            if raw.reviewers.contains(name) {
                Ok(())
            } else {
                Err(self.report(
                    format!("approval.slack_users.{id}"),
                    "maps to someone not in approval.reviewers",
                ))
            }
        }));
        let keys = all(raw.keys.iter().map(|(name, key)| {
            let at = format!("approval.keys.{name}");
            if !raw.reviewers.contains(name) {
                Err(self.report(at, "is not in approval.reviewers"))
            } else if key.len() < MIN_GENERIC_SECRET_LEN {
                Err(self.report(
                    at,
                    format!("too short: at least {MIN_GENERIC_SECRET_LEN} characters"),
                ))
            } else if raw
                .keys
                .iter()
                .any(|(other, same)| other != name && same == key)
            {
                Err(self.report(at, "is another reviewer's key too: give each their own"))
            } else {
                Ok(())
            }
        }));
        let grant_ttl = self.required_duration("approval.grant_ttl", raw.grant_ttl, "60s");
        let request_ttl = self.required_duration("approval.request_ttl", raw.request_ttl, "15m");
        reviewers?;
        slack_users?;
        keys?;
        Ok(ApprovalSection {
            reviewers: raw.reviewers,
            slack_users: raw.slack_users,
            reviewer_keys: raw.keys,
            grant_ttl: grant_ttl?,
            request_ttl: request_ttl?,
        })
    }

    /// A reviewer's key signs decisions only: whoever holds a webhook's secret (the receiver)
    /// must not be able to decide as a reviewer with it.
    fn keys_apart(
        &mut self,
        keys: &BTreeMap<String, String>,
        webhooks: &[Webhook],
    ) -> Result<(), Reported> {
        all(keys.iter().map(|(name, key)| {
            let shared = webhooks.iter().any(|hook| match &hook.kind {
                WebhookKind::Generic { secret } => secret == key,
                WebhookKind::Slack { signing_secret } => signing_secret == key,
                WebhookKind::Teams => false,
            });
            if shared {
                Err(self.report(
                    format!("approval.keys.{name}"),
                    "is a webhook's secret too: a reviewer's key must be their own",
                ))
            } else {
                Ok(())
            }
        }))
        .map(drop)
    }

    fn reviewers(&mut self, reviewers: &[String]) -> Result<(), Reported> {
        if reviewers.is_empty() {
            return Err(self.report("approval.reviewers", "at least one reviewer is required"));
        }
        all(reviewers.iter().enumerate().map(|(index, name)| {
            if name.trim().is_empty() {
                Err(self.report(
                    format!("approval.reviewers[{index}]"),
                    format!("empty name {name:?}"),
                ))
            } else {
                Ok(())
            }
        }))
        .map(drop)
    }

    fn webhook(&mut self, key: &str, raw: RawWebhook) -> Result<Webhook, Reported> {
        let kind = self.webhook_kind(key, raw.kind.as_deref(), raw.secret, raw.signing_secret);
        let url = self.webhook_url(&format!("{key}.url"), raw.url);
        let timeout = self.duration(
            &format!("{key}.timeout"),
            raw.timeout,
            DEFAULT_WEBHOOK_TIMEOUT,
        );
        let attempts = self.number(
            &format!("{key}.attempts"),
            raw.attempts,
            DEFAULT_WEBHOOK_ATTEMPTS,
            WEBHOOK_ATTEMPTS_RANGE,
        );
        let burst = self.number(
            &format!("{key}.burst"),
            raw.burst,
            DEFAULT_WEBHOOK_BURST,
            WEBHOOK_BURST_RANGE,
        );
        let refill = self.duration(&format!("{key}.refill"), raw.refill, DEFAULT_WEBHOOK_REFILL);
        Ok(Webhook {
            kind: kind?,
            url: url?,
            timeout: timeout?,
            attempts: attempts?,
            burst: burst?,
            refill: refill?,
        })
    }

    fn webhook_url(&mut self, key: &str, url: Option<String>) -> Result<reqwest::Url, Reported> {
        let Some(text) = url else {
            return Err(self.report(key, "required"));
        };
        let url = reqwest::Url::parse(&text)
            .map_err(|error| self.report(key, format!("{text:?}: {error}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(self.report(key, "must be an http or https URL"));
        }
        Ok(url)
    }

    /// The kind with its own secret; a secret meant for another kind is a problem too.
    fn webhook_kind(
        &mut self,
        key: &str,
        kind: Option<&str>,
        secret: Option<String>,
        signing_secret: Option<String>,
    ) -> Result<WebhookKind, Reported> {
        match kind.unwrap_or("generic") {
            "generic" => {
                let foreign = self.foreign_secret(key, "signing_secret", &signing_secret, "slack");
                let secret = self.generic_secret(&format!("{key}.secret"), secret);
                foreign?;
                Ok(WebhookKind::Generic { secret: secret? })
            }
            "slack" => {
                let foreign = self.foreign_secret(key, "secret", &secret, "generic");
                let signing_secret =
                    self.slack_signing_secret(&format!("{key}.signing_secret"), signing_secret);
                foreign?;
                Ok(WebhookKind::Slack {
                    signing_secret: signing_secret?,
                })
            }
            "teams" => {
                let secret = self.foreign_secret(key, "secret", &secret, "generic");
                let signing = self.foreign_secret(key, "signing_secret", &signing_secret, "slack");
                both(secret, signing).map(|_| WebhookKind::Teams)
            }
            other => Err(self.report(
                format!("{key}.kind"),
                format!("{other:?}: use \"generic\", \"slack\" or \"teams\""),
            )),
        }
    }

    fn generic_secret(&mut self, key: &str, secret: Option<String>) -> Result<String, Reported> {
        match secret {
            Some(secret) if secret.len() >= MIN_GENERIC_SECRET_LEN => Ok(secret),
            Some(_) => Err(self.report(
                key,
                format!("must be at least {MIN_GENERIC_SECRET_LEN} characters"),
            )),
            None => Err(self.report(key, "a generic webhook needs a secret")),
        }
    }

    fn slack_signing_secret(
        &mut self,
        key: &str,
        secret: Option<String>,
    ) -> Result<String, Reported> {
        match secret {
            Some(secret) if !secret.is_empty() => Ok(secret),
            _ => Err(self.report(
                key,
                "a slack webhook needs Slack's signing secret to verify interactions",
            )),
        }
    }

    /// Refuses `field` of the webhook at `key` when set: only webhooks of kind `owner` take it.
    fn foreign_secret(
        &mut self,
        key: &str,
        field: &str,
        value: &Option<String>,
        owner: &str,
    ) -> Result<(), Reported> {
        match value {
            Some(_) => Err(self.report(
                format!("{key}.{field}"),
                format!("only {owner} webhooks take a {field}"),
            )),
            None => Ok(()),
        }
    }

    /// The reviewers' socket: absolute, in a directory of the daemon's own (agents may make no
    /// name there, so a shared directory such as /run or /tmp would not do), and not named
    /// like the agents' socket that goes beside it.
    fn socket(&mut self, path: PathBuf) -> Result<PathBuf, Reported> {
        const KEY: &str = "daemon.socket";
        let path = self.absolute_path(KEY, path)?;
        let depth = path.parent().map_or(0, |dir| dir.components().count());
        if depth < 3 {
            return Err(self.report(
                KEY,
                format!(
                    "{} needs a directory of the daemon's own, such as /run/gatekeeper/: agents may create nothing in the socket's directory",
                    path.display()
                ),
            ));
        }
        if path.file_name() == Some(std::ffi::OsStr::new(AGENT_SOCKET_NAME)) {
            return Err(self.report(
                KEY,
                format!("{AGENT_SOCKET_NAME} is the agents' socket's name: choose another"),
            ));
        }
        Ok(path)
    }

    fn absolute_path(&mut self, key: &str, path: PathBuf) -> Result<PathBuf, Reported> {
        if path.is_absolute() {
            Ok(path)
        } else {
            Err(self.report(key, "must be an absolute path"))
        }
    }

    /// The duration at `key`, `default` when absent; zero is refused.
    fn duration(
        &mut self,
        key: &str,
        text: Option<String>,
        default: Duration,
    ) -> Result<Duration, Reported> {
        match text {
            Some(text) => self.positive_duration(key, &text),
            None => Ok(default),
        }
    }

    fn required_duration(
        &mut self,
        key: &str,
        text: Option<String>,
        example: &str,
    ) -> Result<Duration, Reported> {
        match text {
            Some(text) => self.positive_duration(key, &text),
            None => Err(self.report(key, format!("required, e.g. {example:?}"))),
        }
    }

    fn positive_duration(&mut self, key: &str, text: &str) -> Result<Duration, Reported> {
        let duration = humantime::parse_duration(text)
            .map_err(|error| self.report(key, format!("bad duration {text:?}: {error}")))?;
        if duration.is_zero() {
            return Err(self.report(key, "must be longer than zero"));
        }
        Ok(duration)
    }

    /// The integer at `key`, `default` when absent, if it lies in `range`.
    fn number<T>(
        &mut self,
        key: &str,
        value: Option<i64>,
        default: T,
        range: RangeInclusive<T>,
    ) -> Result<T, Reported>
    where
        T: TryFrom<i64> + PartialOrd + fmt::Display,
    {
        let Some(value) = value else {
            return Ok(default);
        };
        match T::try_from(value) {
            Ok(value) if range.contains(&value) => Ok(value),
            _ => Err(self.report(
                key,
                format!("must be between {} and {}", range.start(), range.end()),
            )),
        }
    }
}
