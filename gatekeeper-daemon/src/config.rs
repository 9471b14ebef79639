//! The TOML configuration: parsed strictly (unknown keys are errors), then validated against the
//! host so that every problem is reported, naming its key, before anything is loaded.

use std::{
    collections::HashSet,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

use crate::{
    cgroups,
    destinations::{self, PortSpec, Prefix},
};

pub const DEFAULT_CONFIG: &str = "/etc/gatekeeper/config.toml";
pub const DEFAULT_SOCKET: &str = "/run/gatekeeper/api.sock";
const DEFAULT_LISTEN: &str = "127.0.0.1:8787";
const DEFAULT_JOURNAL: &str = "/var/lib/gatekeeper/journal.jsonl";
const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/gatekeeper";
const DEFAULT_WEBHOOK_TIMEOUT: &str = "5s";
const DEFAULT_WEBHOOK_ATTEMPTS: u32 = 5;
const DEFAULT_RESOLVE_INTERVAL: &str = "30s";
const DEFAULT_REDELIVER_INTERVAL: &str = "30s";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("invalid config {path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("invalid config {path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

/// A configuration that passed validation.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub socket: PathBuf,
    pub listen: Option<SocketAddr>,
    pub journal: PathBuf,
    /// Where programs' links and maps are pinned (on bpffs).
    pub pin_dir: PathBuf,
    /// How often `host` destinations are resolved again.
    pub resolve_interval: Duration,
    /// How often undelivered requests are sent to their webhooks again.
    pub redeliver_interval: Duration,
    pub agent_cgroups: Vec<PathBuf>,
    /// Agents may exec only `allowed` binaries (and approved ones).
    pub exec_allowlist: bool,
    pub allowed: Vec<PathBuf>,
    pub exec_rules: Vec<ExecRule>,
    pub connect_rules: Vec<ConnectRule>,
    pub reviewers: Vec<String>,
    /// Slack user id -> reviewer name.
    pub slack_users: std::collections::BTreeMap<String, String>,
    /// Agent cgroup -> the person who runs that agent (who may never approve it).
    pub owners: Vec<(PathBuf, String)>,
    pub grant_ttl: Duration,
    pub request_ttl: Duration,
    pub webhooks: Vec<Webhook>,
    pub max_pending: u32,
    pub retention: Duration,
    pub checkpoint_every: u64,
    pub max_clients: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRule {
    pub path: PathBuf,
    pub name: String,
    pub approval: RulePolicy,
}

/// Per-rule approval policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RulePolicy {
    /// Distinct reviewers who must approve before the grant is issued.
    pub approvals: u32,
    /// An approval without a reason is refused.
    pub require_reason: bool,
}

impl Default for RulePolicy {
    fn default() -> Self {
        Self {
            approvals: 1,
            require_reason: false,
        }
    }
}

/// What a webhook receives, and the secret that goes with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookKind {
    /// The JSON request document; `secret` signs deliveries and verifies HTTP decisions.
    Generic { secret: String },
    /// A Block Kit message with Approve and Deny buttons; the Slack app's `signing_secret`
    /// verifies the presses.
    Slack { signing_secret: String },
    /// An Adaptive Card (Teams incoming webhooks cannot call back).
    Teams,
}

impl WebhookKind {
    /// The name the config's `kind` key uses.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Generic { .. } => "generic",
            Self::Slack { .. } => "slack",
            Self::Teams => "teams",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectRule {
    pub name: String,
    pub destination: DestinationSpec,
    /// Inclusive ranges; empty means every port.
    pub ports: Vec<(u16, u16)>,
    /// PROTOCOL_* bits.
    pub protocols: u32,
    pub approval: RulePolicy,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DestinationSpec {
    Cidr(Prefix),
    /// Resolved at start and again every `resolve_interval`.
    Host(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    pub kind: WebhookKind,
    pub url: reqwest::Url,
    pub timeout: Duration,
    /// Delivery attempts per round (each one journaled).
    pub attempts: u32,
    pub burst: u32,
    pub refill: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    daemon: RawDaemon,
    agents: RawAgents,
    #[serde(default)]
    protect: RawProtect,
    approval: RawApproval,
    #[serde(default)]
    webhook: Vec<RawWebhook>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    socket: Option<PathBuf>,
    /// An empty string turns the HTTP listener off.
    listen: Option<String>,
    journal: Option<PathBuf>,
    pin_dir: Option<PathBuf>,
    resolve_interval: Option<String>,
    redeliver_interval: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgents {
    cgroups: Vec<PathBuf>,
    #[serde(default)]
    owner: Vec<RawOwner>,
    /// "protect" (default): only protected binaries need approval; "allowlist": everything
    /// not in `allow` does.
    exec: Option<String>,
    #[serde(default)]
    allow: Vec<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOwner {
    cgroup: PathBuf,
    owner: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawProtect {
    #[serde(default)]
    exec: Vec<RawExecRule>,
    #[serde(default)]
    connect: Vec<RawConnectRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConnectRule {
    name: Option<String>,
    cidr: Option<String>,
    host: Option<String>,
    ports: Option<Vec<PortSpec>>,
    protocol: Option<String>,
    approvals: Option<u32>,
    require_reason: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExecRule {
    path: PathBuf,
    name: Option<String>,
    approvals: Option<u32>,
    require_reason: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApproval {
    reviewers: Vec<String>,
    #[serde(default)]
    slack_users: std::collections::BTreeMap<String, String>,
    grant_ttl: String,
    request_ttl: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    kind: Option<String>,
    url: String,
    secret: Option<String>,
    signing_secret: Option<String>,
    timeout: Option<String>,
    attempts: Option<u32>,
}

impl Config {
    /// The owner of the agent running in `cgroup`: the most specific `[[agents.owner]]` entry.
    pub fn owner_of(&self, cgroup: &Path) -> Option<&str> {
        self.owners
            .iter()
            .filter(|(owned, _)| cgroup.starts_with(owned))
            .max_by_key(|(owned, _)| owned.components().count())
            .map(|(_, owner)| owner.as_str())
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
            path: path.to_owned(),
            cause,
        })?;
        Self::parse(path, &text)
    }

    /// Parses and validates `text`; `path` only names the file in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|error| ConfigError::Syntax {
            path: path.to_owned(),
            message: error.to_string().trim_end().to_owned(),
        })?;
        Validator { path }.validate(raw)
    }
}

struct Validator<'a> {
    path: &'a Path,
}

impl Validator<'_> {
    fn invalid(&self, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_owned(),
            key: key.into(),
            message: message.into(),
        }
    }

    fn duration(&self, key: &str, text: &str) -> Result<Duration, ConfigError> {
        let duration = humantime::parse_duration(text)
            .map_err(|error| self.invalid(key, format!("bad duration {text:?}: {error}")))?;
        if duration.is_zero() {
            return Err(self.invalid(key, "must be longer than zero"));
        }
        Ok(duration)
    }

    fn policy(
        &self,
        rule_key: &str,
        approvals: Option<u32>,
        require_reason: Option<bool>,
    ) -> Result<RulePolicy, ConfigError> {
        let approvals = approvals.unwrap_or(1);
        if !(1..=10).contains(&approvals) {
            return Err(self.invalid(format!("{rule_key}.approvals"), "must be between 1 and 10"));
        }
        Ok(RulePolicy {
            approvals,
            require_reason: require_reason.unwrap_or(false),
        })
    }

    fn connect_rule(&self, index: usize, raw: RawConnectRule) -> Result<ConnectRule, ConfigError> {
        let key = |field: &str| format!("protect.connect[{index}].{field}");
        let destination = match (raw.cidr, raw.host) {
            (Some(cidr), None) => DestinationSpec::Cidr(
                destinations::parse_cidr(&cidr)
                    .map_err(|error| self.invalid(key("cidr"), error.to_string()))?,
            ),
            (None, Some(host)) if !host.trim().is_empty() => DestinationSpec::Host(host),
            (None, Some(_)) => return Err(self.invalid(key("host"), "must not be empty")),
            (Some(_), Some(_)) => {
                return Err(self.invalid(key("cidr"), "give either cidr or host, not both"));
            }
            (None, None) => return Err(self.invalid(key("cidr"), "a cidr or a host is required")),
        };
        if raw.ports.as_ref().is_some_and(Vec::is_empty) {
            return Err(self.invalid(key("ports"), "empty: omit the key to cover every port"));
        }
        let ports = raw
            .ports
            .unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(port_index, spec)| {
                destinations::parse_port(spec).map_err(|error| {
                    self.invalid(format!("{}[{port_index}]", key("ports")), error.to_string())
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let protocols = destinations::parse_protocol(raw.protocol.as_deref().unwrap_or("any"))
            .map_err(|error| self.invalid(key("protocol"), error.to_string()))?;
        let name = raw.name.unwrap_or_else(|| match &destination {
            DestinationSpec::Cidr(prefix) => prefix.to_string(),
            DestinationSpec::Host(host) => host.clone(),
        });
        let approval = self.policy(
            &format!("protect.connect[{index}]"),
            raw.approvals,
            raw.require_reason,
        )?;
        Ok(ConnectRule {
            name,
            destination,
            ports,
            protocols,
            approval,
        })
    }

    /// The kind with its own secret; a secret meant for another kind is refused.
    fn webhook_kind(
        &self,
        index: usize,
        kind: Option<&str>,
        secret: Option<String>,
        signing_secret: Option<String>,
    ) -> Result<WebhookKind, ConfigError> {
        let key = |field: &str| format!("webhook[{index}].{field}");
        let foreign = |field: &str, owner: &str| {
            self.invalid(key(field), format!("only {owner} webhooks take a {field}"))
        };
        match (kind.unwrap_or("generic"), secret, signing_secret) {
            ("generic", _, Some(_)) | ("teams", None, Some(_)) => {
                Err(foreign("signing_secret", "slack"))
            }
            ("slack" | "teams", Some(_), _) => Err(foreign("secret", "generic")),
            ("generic", Some(secret), None) if secret.len() >= 16 => {
                Ok(WebhookKind::Generic { secret })
            }
            ("generic", Some(_), None) => {
                Err(self.invalid(key("secret"), "must be at least 16 characters"))
            }
            ("generic", None, None) => {
                Err(self.invalid(key("secret"), "a generic webhook needs a secret"))
            }
            ("slack", None, Some(signing_secret)) if !signing_secret.is_empty() => {
                Ok(WebhookKind::Slack { signing_secret })
            }
            ("slack", None, _) => Err(self.invalid(
                key("signing_secret"),
                "a slack webhook needs Slack's signing secret to verify interactions",
            )),
            ("teams", None, None) => Ok(WebhookKind::Teams),
            (other, _, _) => Err(self.invalid(
                key("kind"),
                format!("{other:?}: use \"generic\", \"slack\" or \"teams\""),
            )),
        }
    }

    fn validate(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let listen = match raw.daemon.listen.as_deref() {
            Some("") => None,
            other => Some(
                other
                    .unwrap_or(DEFAULT_LISTEN)
                    .parse::<SocketAddr>()
                    .map_err(|error| self.invalid("daemon.listen", error.to_string()))?,
            ),
        };

        if raw.agents.cgroups.is_empty() {
            return Err(self.invalid("agents.cgroups", "at least one agent cgroup is required"));
        }
        for (index, cgroup) in raw.agents.cgroups.iter().enumerate() {
            cgroups::check_cgroup_dir(cgroup).map_err(|error| {
                self.invalid(format!("agents.cgroups[{index}]"), error.to_string())
            })?;
        }

        let exec_allowlist = match raw.agents.exec.as_deref() {
            None | Some("protect") => false,
            Some("allowlist") => true,
            Some(other) => {
                return Err(self.invalid(
                    "agents.exec",
                    format!("{other:?}: use \"protect\" or \"allowlist\""),
                ));
            }
        };
        if exec_allowlist && raw.agents.allow.is_empty() {
            return Err(self.invalid(
                "agents.allow",
                "allowlist mode needs the binaries agents may run",
            ));
        }
        for (index, path) in raw.agents.allow.iter().enumerate() {
            let key = format!("agents.allow[{index}]");
            if !path.is_absolute() {
                return Err(self.invalid(key, "must be an absolute path"));
            }
            let metadata = std::fs::metadata(path)
                .map_err(|error| self.invalid(&key, format!("{}: {error}", path.display())))?;
            if !metadata.is_file() {
                return Err(self.invalid(&key, format!("{} is not a file", path.display())));
            }
        }

        let mut exec_rules = Vec::new();
        let mut seen = HashSet::new();
        for (index, rule) in raw.protect.exec.into_iter().enumerate() {
            let key = format!("protect.exec[{index}].path");
            if !rule.path.is_absolute() {
                return Err(self.invalid(key, "must be an absolute path"));
            }
            let metadata = std::fs::metadata(&rule.path)
                .map_err(|error| self.invalid(&key, format!("{}: {error}", rule.path.display())))?;
            if !metadata.is_file() {
                return Err(self.invalid(&key, format!("{} is not a file", rule.path.display())));
            }
            if !seen.insert(rule.path.clone()) {
                return Err(self.invalid(&key, format!("{} is listed twice", rule.path.display())));
            }
            let name = rule.name.unwrap_or_else(|| rule.path.display().to_string());
            let approval = self.policy(
                &format!("protect.exec[{index}]"),
                rule.approvals,
                rule.require_reason,
            )?;
            exec_rules.push(ExecRule {
                path: rule.path,
                name,
                approval,
            });
        }

        let connect_rules = raw
            .protect
            .connect
            .into_iter()
            .enumerate()
            .map(|(index, rule)| self.connect_rule(index, rule))
            .collect::<Result<Vec<_>, _>>()?;
        let reaches: Vec<destinations::Reach> = connect_rules
            .iter()
            .filter_map(|rule| match rule.destination {
                DestinationSpec::Cidr(prefix) => Some(destinations::Reach {
                    prefixes: vec![prefix],
                    ports: rule.ports.clone(),
                    protocols: rule.protocols,
                }),
                DestinationSpec::Host(_) => None,
            })
            .collect();
        destinations::compile(&reaches)
            .map_err(|error| self.invalid("protect.connect", error.to_string()))?;

        if raw.approval.reviewers.is_empty() {
            return Err(self.invalid("approval.reviewers", "at least one reviewer is required"));
        }
        if let Some(bad) = raw
            .approval
            .reviewers
            .iter()
            .find(|name| name.trim().is_empty())
        {
            return Err(self.invalid("approval.reviewers", format!("empty name {bad:?}")));
        }
        let grant_ttl = self.duration("approval.grant_ttl", &raw.approval.grant_ttl)?;
        let request_ttl = self.duration("approval.request_ttl", &raw.approval.request_ttl)?;

        let mut webhooks = Vec::new();
        for (index, hook) in raw.webhook.into_iter().enumerate() {
            let key = |field: &str| format!("webhook[{index}].{field}");
            let url = reqwest::Url::parse(&hook.url)
                .map_err(|error| self.invalid(key("url"), format!("{:?}: {error}", hook.url)))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(self.invalid(key("url"), "must be an http or https URL"));
            }
            let kind = self.webhook_kind(
                index,
                hook.kind.as_deref(),
                hook.secret,
                hook.signing_secret,
            )?;
            let timeout = self.duration(
                &key("timeout"),
                hook.timeout.as_deref().unwrap_or(DEFAULT_WEBHOOK_TIMEOUT),
            )?;
            let attempts = hook.attempts.unwrap_or(DEFAULT_WEBHOOK_ATTEMPTS);
            if !(1..=20).contains(&attempts) {
                return Err(self.invalid(key("attempts"), "must be between 1 and 20"));
            }
            webhooks.push(Webhook {
                kind,
                url,
                timeout,
                attempts,
                burst: 10,
                refill: Duration::from_secs(6),
            });
        }

        let resolve_interval = self.duration(
            "daemon.resolve_interval",
            raw.daemon
                .resolve_interval
                .as_deref()
                .unwrap_or(DEFAULT_RESOLVE_INTERVAL),
        )?;

        let mut owners = Vec::new();
        for (index, owner) in raw.agents.owner.into_iter().enumerate() {
            let key = |field: &str| format!("agents.owner[{index}].{field}");
            if !cgroups::is_within(&owner.cgroup, &raw.agents.cgroups) {
                return Err(self.invalid(key("cgroup"), "is not an agent cgroup or below one"));
            }
            if owner.owner.trim().is_empty() {
                return Err(self.invalid(key("owner"), "must not be empty"));
            }
            owners.push((owner.cgroup, owner.owner));
        }
        if let Some((id, _)) = raw
            .approval
            .slack_users
            .iter()
            .find(|(_, name)| !raw.approval.reviewers.contains(name))
        {
            return Err(self.invalid(
                format!("approval.slack_users.{id}"),
                "maps to someone not in approval.reviewers",
            ));
        }

        let pin_dir = raw
            .daemon
            .pin_dir
            .unwrap_or_else(|| PathBuf::from(DEFAULT_PIN_DIR));
        if !pin_dir.is_absolute() {
            return Err(self.invalid("daemon.pin_dir", "must be an absolute path"));
        }

        let redeliver_interval = self.duration(
            "daemon.redeliver_interval",
            raw.daemon
                .redeliver_interval
                .as_deref()
                .unwrap_or(DEFAULT_REDELIVER_INTERVAL),
        )?;

        Ok(Config {
            path: self.path.to_owned(),
            pin_dir,
            redeliver_interval,
            resolve_interval,
            connect_rules,
            socket: raw
                .daemon
                .socket
                .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET)),
            listen,
            journal: raw
                .daemon
                .journal
                .unwrap_or_else(|| PathBuf::from(DEFAULT_JOURNAL)),
            agent_cgroups: raw.agents.cgroups,
            exec_allowlist,
            allowed: raw.agents.allow,
            exec_rules,
            reviewers: raw.approval.reviewers,
            slack_users: raw.approval.slack_users,
            owners,
            grant_ttl,
            request_ttl,
            webhooks,
            max_pending: 16,
            retention: Duration::from_secs(3600),
            checkpoint_every: 1000,
            max_clients: 256,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config whose host-dependent parts (cgroup, protected file) point at things that exist on
    /// any Linux host with cgroup v2.
    fn config_text(extra: &str) -> String {
        let cgroup = cgroups::mount_point().expect("cgroup v2 mounted");
        format!(
            r#"
[agents]
cgroups = ["{}"]
[[protect.exec]]
path = "/bin/sh"
name = "shell"
[approval]
reviewers = ["root"]
grant_ttl = "60s"
request_ttl = "15m"
{extra}
"#,
            cgroup.display()
        )
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("test.toml"), text)
    }

    fn error_of(text: &str) -> String {
        match parse(text) {
            Ok(_) => panic!("config was accepted:\n{text}"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn valid_config_has_defaults() {
        let config = parse(&config_text(
            "[[webhook]]\nurl = \"http://127.0.0.1:9000/hook\"\nsecret = \"0123456789abcdef\"",
        ))
        .expect("valid config");
        assert_eq!(config.socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(config.grant_ttl, Duration::from_secs(60));
        assert_eq!(config.request_ttl, Duration::from_secs(15 * 60));
        assert_eq!(config.exec_rules[0].name, "shell");
        assert_eq!(config.webhooks[0].attempts, DEFAULT_WEBHOOK_ATTEMPTS);
        assert_eq!(config.listen, Some(DEFAULT_LISTEN.parse().unwrap()));
    }

    #[test]
    fn unknown_key_is_named() {
        let error = error_of(&config_text("[daemon]\nsockett = \"/x\""));
        assert!(error.contains("sockett"), "{error}");
    }

    #[test]
    fn syntax_error_is_reported() {
        let error = error_of("[agents\ncgroups = []");
        assert!(error.starts_with("invalid config test.toml"), "{error}");
    }

    #[test]
    fn bad_duration_names_key() {
        let text = config_text("").replace("\"60s\"", "\"sixty\"");
        let error = error_of(&text);
        assert!(error.contains("approval.grant_ttl"), "{error}");
        let error = error_of(&config_text("").replace("\"15m\"", "\"0s\""));
        assert!(error.contains("approval.request_ttl"), "{error}");
    }

    #[test]
    fn missing_protected_path_names_key() {
        let text = config_text("").replace("/bin/sh", "/nonexistent/gatekeeper-test");
        let error = error_of(&text);
        assert!(error.contains("protect.exec[0].path"), "{error}");
    }

    #[test]
    fn relative_protected_path_refused() {
        let error = error_of(&config_text("").replace("/bin/sh", "bin/sh"));
        assert!(error.contains("protect.exec[0].path"), "{error}");
    }

    #[test]
    fn unreadable_cgroup_names_key() {
        let mount = cgroups::mount_point().expect("cgroup v2 mounted");
        let mount = mount.display().to_string();
        let text = config_text("").replace(&mount, "/nonexistent/cgroup");
        let error = error_of(&text);
        assert!(error.contains("agents.cgroups[0]"), "{error}");
        // A directory that is not a cgroup.
        let error = error_of(&config_text("").replace(&mount, "/proc"));
        assert!(error.contains("agents.cgroups[0]"), "{error}");
    }

    #[test]
    fn webhook_checks_name_keys() {
        let error = error_of(&config_text(
            "[[webhook]]\nurl = \"not a url\"\nsecret = \"0123456789abcdef\"",
        ));
        assert!(error.contains("webhook[0].url"), "{error}");
        let error = error_of(&config_text(
            "[[webhook]]\nurl = \"http://127.0.0.1:1/\"\nsecret = \"short\"",
        ));
        assert!(error.contains("webhook[0].secret"), "{error}");
    }

    #[test]
    fn empty_reviewers_refused() {
        let error = error_of(&config_text("").replace("[\"root\"]", "[]"));
        assert!(error.contains("approval.reviewers"), "{error}");
    }

    #[test]
    fn connect_rules_parse() {
        let config = parse(&config_text(
            r#"
[[protect.connect]]
name = "prod postgres"
cidr = "10.20.0.0/16"
ports = [5432, "8000-8100"]
protocol = "tcp"
[[protect.connect]]
host = "db.internal"
"#,
        ))
        .expect("valid config");
        let first = &config.connect_rules[0];
        assert_eq!(first.name, "prod postgres");
        assert_eq!(first.ports, vec![(5432, 5432), (8000, 8100)]);
        assert_eq!(first.protocols, gatekeeper_common::PROTOCOL_TCP);
        let second = &config.connect_rules[1];
        assert_eq!(
            second.destination,
            DestinationSpec::Host("db.internal".into())
        );
        assert!(second.ports.is_empty(), "no ports: every port");
        assert_eq!(second.name, "db.internal");
    }

    #[test]
    fn bad_connect_rules_name_the_key() {
        let cases = [
            ("cidr = \"10.20.0.0/33\"", "protect.connect[0].cidr"),
            ("cidr = \"10.20.1.0/16\"", "protect.connect[0].cidr"),
            (
                "cidr = \"10.0.0.0/8\"\nports = [0]",
                "protect.connect[0].ports[0]",
            ),
            (
                "cidr = \"10.0.0.0/8\"\nports = [22, \"90-80\"]",
                "protect.connect[0].ports[1]",
            ),
            (
                "cidr = \"10.0.0.0/8\"\nports = []",
                "protect.connect[0].ports",
            ),
            (
                "cidr = \"10.0.0.0/8\"\nprotocol = \"icmp\"",
                "protect.connect[0].protocol",
            ),
            ("name = \"nothing\"", "protect.connect[0].cidr"),
            (
                "cidr = \"10.0.0.0/8\"\nhost = \"db\"",
                "protect.connect[0].cidr",
            ),
            ("cidr = \"10.0.0.0/8\"\nport = 22", "port"),
        ];
        for (rule, key) in cases {
            let error = error_of(&config_text(&format!("[[protect.connect]]\n{rule}")));
            assert!(error.contains(key), "{rule}: {error}");
        }
    }

    #[test]
    fn allowlist_mode_is_checked() {
        let text = config_text("").replace(
            "[[protect.exec]]",
            "exec = \"allowlist\"\nallow = [\"/bin/sh\"]\n[[protect.exec]]",
        );
        let config = parse(&text).expect("valid allowlist config");
        assert!(config.exec_allowlist);
        assert_eq!(config.allowed, vec![PathBuf::from("/bin/sh")]);
        let error = error_of(&text.replace("allow = [\"/bin/sh\"]", "allow = []"));
        assert!(error.contains("agents.allow"), "{error}");
        let error = error_of(&text.replace("\"allowlist\"", "\"everything\""));
        assert!(error.contains("agents.exec"), "{error}");
        let error = error_of(&text.replace("\"/bin/sh\"]", "\"/nonexistent/x\"]"));
        assert!(error.contains("agents.allow[0]"), "{error}");
    }

    #[test]
    fn webhook_kinds_owners_and_slack_users() {
        let mount = cgroups::mount_point().expect("cgroup v2 mounted");
        let owned = mount.join("agent-of-alice");
        let extra = format!(
            r#"
[[webhook]]
kind = "slack"
url = "https://hooks.slack.example/services/T/B/X"
signing_secret = "slack-secret"
[[webhook]]
kind = "teams"
url = "https://teams.example/webhook"
[approval.slack_users]
U012ABCDEF = "root"
[[agents.owner]]
cgroup = "{}"
owner = "alice"
[[protect.connect]]
cidr = "10.0.0.0/8"
approvals = 2
require_reason = true
"#,
            owned.display()
        );
        let config = parse(&config_text(&extra)).expect("valid config");
        assert_eq!(
            config.webhooks[0].kind,
            WebhookKind::Slack {
                signing_secret: "slack-secret".into()
            }
        );
        assert_eq!(config.webhooks[0].kind.name(), "slack");
        assert_eq!(config.webhooks[1].kind, WebhookKind::Teams);
        assert_eq!(config.slack_users["U012ABCDEF"], "root");
        assert_eq!(config.owner_of(&owned.join("task")), Some("alice"));
        assert_eq!(config.owner_of(&mount), None);
        assert_eq!(config.exec_rules[0].approval, RulePolicy::default());
        assert_eq!(
            config.connect_rules[0].approval,
            RulePolicy {
                approvals: 2,
                require_reason: true
            }
        );

        let cases = [
            (
                extra.replace("signing_secret = \"slack-secret\"\n", ""),
                "webhook[0].signing_secret",
            ),
            (
                extra.replace("kind = \"teams\"", "kind = \"pager\""),
                "webhook[1].kind",
            ),
            (
                extra.replace("= \"root\"", "= \"mallory\""),
                "approval.slack_users.U012ABCDEF",
            ),
            (
                extra.replace(&owned.display().to_string(), "/elsewhere"),
                "agents.owner[0].cgroup",
            ),
            (
                extra.replace("approvals = 2", "approvals = 0"),
                "protect.connect[0].approvals",
            ),
        ];
        for (text, key) in cases {
            let error = error_of(&config_text(&text));
            assert!(error.contains(key), "{key}: {error}");
        }
    }

    #[test]
    fn bad_listen_address_names_key() {
        let error = error_of(&config_text("[daemon]\nlisten = \"nowhere\""));
        assert!(error.contains("daemon.listen"), "{error}");
    }
}
