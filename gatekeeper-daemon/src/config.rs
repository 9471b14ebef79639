//! The TOML configuration. [`Config::parse`] reads the text alone, strictly (unknown keys are
//! errors), and [`Config::check_host`] then checks what it names on this host; each reports every
//! problem it finds, naming its key, so one round of editing fixes them all. [`Config::load`] runs
//! both before anything is loaded.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt,
    net::SocketAddr,
    os::unix::ffi::OsStringExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use crate::destinations::Prefix;
pub use crate::requests::{Bind, Risk};

mod host;
mod parse;
mod raw;
#[cfg(test)]
mod tests;

pub const DEFAULT_CONFIG: &str = "/etc/gatekeeper/config.toml";
pub const DEFAULT_SOCKET: &str = "/run/gatekeeper/api.sock";
/// The agents' socket's name, beside the reviewers' (`[daemon] socket`).
pub const AGENT_SOCKET_NAME: &str = "agent.sock";

/// The agents' socket that goes with the reviewers' socket `reviewers`.
pub fn agent_socket(reviewers: &Path) -> PathBuf {
    reviewers.with_file_name(AGENT_SOCKET_NAME)
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("invalid config {path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("invalid config {path}:{}", one_per_line(.problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

/// Where the daemon finds the file systems mounted below the host paths.
pub const MOUNTINFO: &str = "/proc/self/mountinfo";

/// One thing wrong with a config, under the key it concerns (`protect.connect[0].ports[1]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl Problem {
    fn new(key: impl Into<String>, message: impl fmt::Display) -> Self {
        Self {
            key: key.into(),
            message: message.to_string(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

fn one_per_line(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|problem| format!("\n  {problem}"))
        .collect()
}

/// A configuration that passed validation.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    /// The reviewers' socket (agents use [`agent_socket`] beside it); the directory holding
    /// both is the daemon's alone.
    pub socket: PathBuf,
    pub listen: Option<SocketAddr>,
    /// `/metrics`, `/livez` and `/readyz`, on a loopback address.
    pub metrics: Option<SocketAddr>,
    pub journal: PathBuf,
    /// Where programs' links and maps are pinned (on bpffs).
    pub pin_dir: PathBuf,
    /// How often `host` destinations are resolved again.
    pub resolve_interval: Duration,
    /// How often undelivered requests are sent to their webhooks again.
    pub redeliver_interval: Duration,
    /// How long decided and expired requests stay in memory (the journal keeps them).
    pub retention: Duration,
    /// Journal records between state checkpoints.
    pub checkpoint_every: u64,
    /// Concurrent connections on the CLI socket.
    pub max_clients: u32,
    /// The journal's forward-secure sealing key; without the file the journal is not sealed.
    pub seal_key: PathBuf,
    /// While records come in, a seal at least this often...
    pub seal_interval: Duration,
    /// ...and after at most this many records.
    pub seal_every: u64,
    pub agent_cgroups: Vec<PathBuf>,
    /// Pending requests each agent cgroup may have at once.
    pub max_pending: u32,
    /// Agents may exec only `allowed` binaries (and approved ones).
    pub exec_allowlist: bool,
    pub allowed: Vec<PathBuf>,
    pub exec_rules: Vec<ExecRule>,
    pub connect_rules: Vec<ConnectRule>,
    pub file_rules: Vec<FileRule>,
    pub reviewers: Vec<String>,
    /// Slack user id -> reviewer name.
    pub slack_users: BTreeMap<String, String>,
    /// Reviewer -> the key that signs their HTTP decisions (none: that reviewer cannot decide
    /// over HTTP).
    pub reviewer_keys: BTreeMap<String, String>,
    /// Agent cgroup -> the person who runs that agent (who may never approve it).
    pub owners: Vec<(PathBuf, String)>,
    /// Host directories agents change only with approval: each one that exists (a real
    /// directory, not a symlink to another) becomes a `write` file rule at load.
    pub host_paths: Vec<PathBuf>,
    /// The host paths and the config's own file rules, below which mounts get rules too; set
    /// at load, before the rules for mounts are added to `file_rules`.
    pub guard_roots: Vec<GuardRoot>,
    pub grant_ttl: Duration,
    pub request_ttl: Duration,
    pub webhooks: Vec<Webhook>,
    /// `[[audit.forward]]`: receivers that get every journal record as it is written.
    pub forwards: Vec<Forward>,
}

/// A receiver off the host for every journal record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forward {
    /// Syslog over TCP (RFC 5424 messages in RFC 6587 octet-counted frames) to `host:port`,
    /// with TLS (RFC 5425) when `tls` is set.
    Syslog {
        address: String,
        tls: Option<ForwardTls>,
    },
    /// Each batch POSTed as JSON lines; an answer 2xx acknowledges it. `ca_file`: the
    /// certificates to trust for it besides the usual roots.
    Https {
        url: reqwest::Url,
        ca_file: Option<PathBuf>,
    },
}

/// TLS to a syslog receiver: its certificate must verify against the usual roots or
/// `ca_file`'s, for the host name (or address) in `address`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardTls {
    pub ca_file: Option<PathBuf>,
}

impl Forward {
    /// The certificates to trust besides the usual roots.
    pub fn ca_file(&self) -> Option<&Path> {
        match self {
            Self::Syslog { tls, .. } => tls.as_ref()?.ca_file.as_deref(),
            Self::Https { ca_file, .. } => ca_file.as_deref(),
        }
    }

    /// How the journal's checkpoints name the receiver.
    pub fn name(&self) -> String {
        match self {
            Self::Syslog { address, .. } => address.clone(),
            Self::Https { url, .. } => url.to_string(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRule {
    pub path: PathBuf,
    pub name: String,
    pub approval: RulePolicy,
    /// What a grant covers: the approved arguments (the default) or any.
    pub bind: Bind,
}

/// A file, or a directory and everything below it, that agents read or change only with approval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRule {
    pub path: PathBuf,
    pub name: String,
    /// The [`gatekeeper_common::file_access`] bits that need approval.
    pub access: u32,
    pub approval: RulePolicy,
}

/// Per-rule approval policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RulePolicy {
    /// Distinct reviewers who must approve before the grant is issued.
    pub approvals: u32,
    /// An approval without a reason is refused.
    pub require_reason: bool,
    /// Shown to reviewers first, carried in the journal and the webhook body.
    pub risk: Risk,
}

impl RulePolicy {
    /// Orders policies from the least strict: more approvals, then a reason required, then risk.
    pub fn strictness(&self) -> (u32, bool, Risk) {
        (self.approvals, self.require_reason, self.risk)
    }
}

impl Default for RulePolicy {
    fn default() -> Self {
        Self {
            approvals: 1,
            require_reason: false,
            risk: Risk::default(),
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

impl ConnectRule {
    /// The host name of a `host` rule.
    pub fn host(&self) -> Option<&str> {
        match &self.destination {
            DestinationSpec::Host(host) => Some(host),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DestinationSpec {
    Cidr(Prefix),
    /// Resolved at start and again every `resolve_interval`.
    Host(String),
    /// A unix socket, by the file bound at this path (followed like protected binaries).
    Socket(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    pub kind: WebhookKind,
    pub url: reqwest::Url,
    pub timeout: Duration,
    /// Delivery attempts per round (each one journaled).
    pub attempts: u32,
    /// Rate limit per endpoint: up to `burst` messages at once, then one per `refill`.
    pub burst: u32,
    pub refill: Duration,
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

impl Config {
    /// The paths of `[[protect.connect]]` unix socket rules, with each rule's index.
    pub fn socket_rules(&self) -> impl Iterator<Item = (usize, &ConnectRule, &Path)> {
        self.connect_rules
            .iter()
            .enumerate()
            .filter_map(|(index, rule)| match &rule.destination {
                DestinationSpec::Socket(path) => Some((index, rule, path.as_path())),
                _ => None,
            })
    }

    /// The owner of the agent running in `cgroup`: the most specific `[[agents.owner]]` entry.
    pub fn owner_of(&self, cgroup: &Path) -> Option<&str> {
        self.owners
            .iter()
            .filter(|(owned, _)| cgroup.starts_with(owned))
            .max_by_key(|(owned, _)| owned.components().count())
            .map(|(_, owner)| owner.as_str())
    }

    /// Reads `path`, parses it, checks it against this host and guards the host paths.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let mut config = Self::read(path)?;
        config.check_host()?;
        config.guard_host_paths();
        Ok(config)
    }

    /// Reads and parses `path` without looking at the host: what clients of a daemon need (its
    /// socket, journal and pins), also once an agent cgroup or a protected file is gone.
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
            path: path.to_owned(),
            cause,
        })?;
        Self::parse(path, &text)
    }

    /// Adds a rule for each host path that is a directory here (see [`host_guards`]), and for
    /// the host services' directories (see [`crate::host_services::guarded_dirs`]). The file
    /// systems mounted below get theirs where the room left in the kernel's map is counted: as
    /// the daemon installs its policy, and at each change after.
    pub fn guard_host_paths(&mut self) {
        // Host services' sockets, and the files the daemon resolves host names from: agents
        // change them no more than they change `/etc`.
        let mut paths = self.host_paths.clone();
        paths.extend(crate::host_services::guarded_dirs(&self.host_paths));
        self.guard_roots = guard_roots(&paths, &self.file_rules);
        let guards = host_guards(&self.guard_roots, &self.file_rules, &[]);
        self.file_rules.extend(guards);
    }

    /// Whether a host path is guarded: then `/` keeps its names too, where merged-/usr systems
    /// link `/bin`, `/lib64` and the like into `/usr`.
    pub fn guards_host_paths(&self) -> bool {
        self.file_rules.iter().any(|rule| {
            self.host_paths
                .iter()
                .any(|path| rule.path.starts_with(path))
        })
    }

    /// Parses and validates `text` without looking at the host; `path` only names the file.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        parse::parse(path, text)
    }

    /// Checks what the config names on this host: agent cgroups are readable cgroup v2
    /// directories, protected and allowlisted binaries are files, protected files are files or
    /// directories, protected socket paths that exist are sockets.
    pub fn check_host(&self) -> Result<(), ConfigError> {
        host::check(self)
    }
}

/// A place below which a file system mounted gets a rule: a host path (its own rule a `write`
/// rule) or a file rule of the config.
#[derive(Debug, Clone)]
pub struct GuardRoot {
    rule: FileRule,
    host_path: bool,
}

/// The roots of `host_paths` and `rules`.
pub fn guard_roots(host_paths: &[PathBuf], rules: &[FileRule]) -> Vec<GuardRoot> {
    let host_rules = host_paths.iter().map(|path| GuardRoot {
        rule: FileRule {
            path: path.clone(),
            name: host_files_name(path),
            access: gatekeeper_common::file_access::WRITE,
            approval: RulePolicy::default(),
        },
        host_path: true,
    });
    let config_rules = rules.iter().map(|rule| GuardRoot {
        rule: rule.clone(),
        host_path: false,
    });
    host_rules.chain(config_rules).collect()
}

/// The rules that `roots` make and no guard among `rules` names yet: a `write` rule for each host path
/// that is a directory here, and one for each of `mounts` below a root, directory or file (the
/// kernel's walk up from a file stops at the root of its own file system). A mount takes the
/// accesses of every root above it and the approval of the strictest (with its name, or `host
/// files PATH` for a host path): agents write there only with approval, where a rule above
/// protects writing (and then make, move or remove no names there), and read there only with
/// it where one protects reading. A mount is below a root by its path, or as the kernel sees it:
/// by the place of its mount point, or of a mount it sits on, in that mount's file system (a
/// volume below a bind of a protected directory made elsewhere).
pub fn host_guards(roots: &[GuardRoot], rules: &[FileRule], mounts: &[Mount]) -> Vec<FileRule> {
    let mut guards: Vec<FileRule> = Vec::new();
    // Thousands of mounts on container hosts: each looked up once, and a rule made only for
    // those no guard names yet. A mount point a rule of the config names gets a guard beside
    // that rule, with the accesses of the rules above (the kernel's walk up from a file there
    // stops at the mount's root).
    let mut named: HashMap<&Path, usize> = HashMap::new();
    for rule in rules {
        *named.entry(rule.path.as_path()).or_default() += 1;
    }
    let configured: HashSet<&Path> = (roots.iter())
        .filter(|root| !root.host_path)
        .map(|root| root.rule.path.as_path())
        .collect();
    let mut guard = |path, rule: &dyn Fn() -> Option<FileRule>, mounted: bool| {
        let rules_of_config = usize::from(configured.contains(path));
        if named.get(path).copied().unwrap_or(0) > rules_of_config {
            return;
        }
        let Some(rule) = rule() else {
            return;
        };
        // A file mounted over one (a container runtime's /etc/resolv.conf) is guarded as a file.
        let guardable = std::fs::symlink_metadata(path)
            .is_ok_and(|meta| meta.is_dir() || (mounted && meta.is_file()));
        if guardable {
            *named.entry(path).or_default() += 1;
            guards.push(rule);
        }
    };
    for root in roots.iter().filter(|root| root.host_path) {
        guard(&root.rule.path, &|| Some(root.rule.clone()), false);
    }
    let tree = MountTree::new(mounts);
    // As the mount table names them, resolved at each look: a symlink may be pointed elsewhere.
    let resolved: Vec<(PathBuf, Option<Place>, &GuardRoot)> = (roots.iter())
        .map(|root| {
            let path = &root.rule.path;
            let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
            let place = tree.place_of(&path);
            (path, place, root)
        })
        .collect();
    for mount in mounts {
        let rule = || {
            let places = tree.mount_point_places(mount);
            let covering = (resolved.iter())
                .filter(|(path, place, _)| {
                    mount.point != *path
                        && (mount.point.starts_with(path)
                            || place.as_ref().is_some_and(|root| {
                                places.iter().any(|place| place.is_below(root))
                            }))
                })
                .map(|(_, _, root)| *root);
            // The first of the strictest, as requests name it.
            let strictest =
                (covering.clone().rev()).max_by_key(|root| root.rule.approval.strictness())?;
            Some(FileRule {
                path: mount.point.clone(),
                name: match strictest.host_path {
                    true => host_files_name(&mount.point),
                    false => strictest.rule.name.clone(),
                },
                access: covering.fold(0, |access, root| access | root.rule.access),
                approval: strictest.rule.approval,
            })
        };
        guard(&mount.point, &rule, true);
    }
    guards
}

/// The name of the rule of a host path, or of a mount below one.
fn host_files_name(path: &Path) -> String {
    format!("host files {}", path.display())
}

/// A mount of this host's mount table: a line of `/proc/PID/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    id: u64,
    parent: u64,
    /// `major:minor`: which file system.
    device: Vec<u8>,
    /// The directory of its file system that is mounted.
    root: PathBuf,
    /// Where it is mounted.
    pub point: PathBuf,
    /// Its file system's type and options, as the kernel shows them (escaped).
    fs_type: Vec<u8>,
    options: Vec<u8>,
}

impl Mount {
    pub fn id(&self) -> u64 {
        self.id
    }

    /// `major:minor`, as mountinfo shows it.
    pub fn device(&self) -> &[u8] {
        &self.device
    }

    /// The directory of its file system that is mounted.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn is_overlay(&self) -> bool {
        self.fs_type == b"overlay"
    }

    /// Its file system's device number in the kernel's encoding (major << 20 | minor).
    pub fn kernel_device(&self) -> Option<u32> {
        let (major, minor) = std::str::from_utf8(&self.device).ok()?.split_once(':')?;
        Some(major.parse::<u32>().ok()? << 20 | minor.parse::<u32>().ok()?)
    }
}

/// A directory as a file system knows it: its path from the file system's root.
#[derive(Debug, PartialEq, Eq)]
struct Place<'a> {
    device: &'a [u8],
    path: PathBuf,
}

impl Place<'_> {
    fn is_below(&self, other: &Place) -> bool {
        self.device == other.device && self.path.starts_with(&other.path)
    }
}

/// The mount table by mount id.
struct MountTree<'a> {
    mounts: &'a [Mount],
    by_id: HashMap<u64, &'a Mount>,
}

impl<'a> MountTree<'a> {
    fn new(mounts: &'a [Mount]) -> Self {
        let by_id = mounts.iter().map(|mount| (mount.id, mount)).collect();
        Self { mounts, by_id }
    }

    /// Where `path` sits in the file system mounted on top of it, if a mount holds it.
    fn place_of(&self, path: &Path) -> Option<Place<'a>> {
        // The deepest mount point above it; of mounts stacked there, the one nothing sits on.
        let holding = (self.mounts.iter())
            .filter(|mount| path.starts_with(&mount.point))
            .max_by_key(|mount| mount.point.components().count())?;
        let mut top = holding;
        for _ in 0..self.mounts.len() {
            let above = (self.mounts.iter()).find(|mount| {
                mount.parent == top.id && mount.point == top.point && mount.id != top.id
            });
            match above {
                Some(above) => top = above,
                None => break,
            }
        }
        Some(Place {
            device: &top.device,
            path: top.root.join(path.strip_prefix(&top.point).ok()?),
        })
    }

    /// The mount `mount` sits on, and its mount point's path below that mount's.
    fn attachment<'m>(&self, mount: &'m Mount) -> Option<(&'a Mount, &'m Path)> {
        let parent = *self.by_id.get(&mount.parent)?;
        if parent.id == mount.id {
            return None;
        }
        Some((parent, mount.point.strip_prefix(&parent.point).ok()?))
    }

    /// The places of `mount`'s mount point, and of those of the mounts it sits on, each in the
    /// file system it is on, as the kernel walks them. A loop in a table read while it changed
    /// ends the walk.
    fn mount_point_places(&self, mount: &Mount) -> Vec<Place<'a>> {
        let mut places = Vec::new();
        let mut current = mount;
        for _ in 0..self.mounts.len() {
            let Some(parent) = self.by_id.get(&current.parent).copied() else {
                break;
            };
            if parent.id == current.id {
                break;
            }
            let Ok(inside) = current.point.strip_prefix(&parent.point) else {
                break;
            };
            places.push(Place {
                device: &parent.device,
                path: parent.root.join(inside),
            });
            current = parent;
        }
        places
    }
}

/// The mounts a `/proc/PID/mountinfo` text lists (names octal-escaped by the kernel decoded,
/// names that are no UTF-8 included); lines that are not such are left out.
pub fn mount_table(mountinfo: &[u8]) -> Vec<Mount> {
    let path =
        |escaped: &[u8]| PathBuf::from(std::ffi::OsString::from_vec(unescape_octal(escaped)));
    let number = |field: &[u8]| std::str::from_utf8(field).ok()?.parse().ok();
    mountinfo
        .split(|byte| *byte == b'\n')
        .filter_map(|line| {
            let mut fields = line.split(|byte| *byte == b' ');
            let (id, parent) = (number(fields.next()?)?, number(fields.next()?)?);
            let (device, root, point) = (fields.next()?, fields.next()?, fields.next()?);
            // Past the mount's options and optional fields, up to the separator.
            let mut rest = fields.skip_while(|field| *field != b"-").skip(1);
            let fs_type = rest.next().unwrap_or_default().to_vec();
            let options = rest.nth(1).unwrap_or_default().to_vec();
            Some(Mount {
                id,
                parent,
                device: device.to_vec(),
                root: path(root),
                point: path(point),
                fs_type,
                options,
            })
        })
        .collect()
}

/// A way to the directories above a mount's mount point, in the file system they are on: a
/// mount of it, and the names from that mount's root down to the mount point. The directories
/// after the first `held_from` names are those to hold (renaming one would move the mount);
/// those before are above the parent mount's root, which shows none of them.
#[derive(Debug, PartialEq, Eq)]
pub struct MountPointRoute<'a> {
    pub through: &'a Mount,
    pub names: Vec<std::ffi::OsString>,
    pub held_from: usize,
}

/// For each mount of `mounts` with directories above its mount point in its parent mount (not
/// the root's, nor one stacked on another's root), the ways to them: through the parent mount
/// first, then through the other mounts of the parent's file system whose root is above them
/// (when the parent is covered, and its path reaches another mount). Found in the file system
/// rather than by path: a directory covered by a later mount is not where its path leads.
pub fn mount_point_routes(mounts: &[Mount]) -> Vec<(&Mount, Vec<MountPointRoute<'_>>)> {
    let tree = MountTree::new(mounts);
    (mounts.iter())
        .filter_map(|mount| {
            let (parent, inside) = tree.attachment(mount)?;
            let below_parent = names_of(inside).len();
            if below_parent < 2 {
                return None;
            }
            let place = parent.root.join(inside);
            let routes = std::iter::once(parent)
                .chain(
                    (mounts.iter())
                        .filter(|other| other.device == parent.device && other.id != parent.id),
                )
                .filter_map(|through| {
                    let names = names_of(place.strip_prefix(&through.root).ok()?);
                    // A mount whose root is below the parent's misses directories to hold.
                    let held_from = names.len().checked_sub(below_parent)?;
                    Some(MountPointRoute {
                        through,
                        names,
                        held_from,
                    })
                })
                .collect();
            Some((mount, routes))
        })
        .collect()
}

/// A host overlay and the mounts on it (see [`overlays`]).
#[derive(Debug, PartialEq, Eq)]
pub struct Overlay<'a> {
    pub mount: &'a Mount,
    /// Its layers' directories, as its options name them, the upper one first.
    pub layers: Vec<PathBuf>,
    /// Whether its own extended attributes are `user.overlay.*` ones (else `trusted.overlay.*`).
    pub user_xattrs: bool,
    /// For each mount on it, the names from the overlay's root down to the mount point, and
    /// how many of the first are above the overlay mount's root. In each layer, the directories
    /// behind the others are to be held: renaming one there moves the overlay's directory with
    /// the mount (the overlay's next lookup of the new name finds the same inode, and the kernel
    /// moves its one dentry there).
    pub below: Vec<(Vec<std::ffi::OsString>, usize)>,
}

/// The overlays of `mounts`, each with its layers and the mounts on it.
pub fn overlays(mounts: &[Mount]) -> Vec<Overlay<'_>> {
    let tree = MountTree::new(mounts);
    let mut overlays: Vec<Overlay> = (mounts.iter())
        .filter(|mount| mount.is_overlay())
        .map(|mount| Overlay {
            mount,
            layers: overlay_layers(&mount.options),
            user_xattrs: (mount.options.split(|byte| *byte == b','))
                .any(|option| option == b"userxattr"),
            below: Vec::new(),
        })
        .collect();
    for mount in mounts {
        let Some((parent, inside)) = tree.attachment(mount) else {
            continue;
        };
        if let Some(overlay) = (overlays.iter_mut()).find(|overlay| overlay.mount.id == parent.id) {
            let names = names_of(&parent.root.join(inside));
            overlay.below.push((names, names_of(&parent.root).len()));
        }
    }
    overlays
}

/// The upper and lower directories, top first, an overlay's options (as mountinfo shows them, octal
/// escapes decoded first) name. `upperdir=` and `lowerdir=` hold the mounter's own text, where
/// `\` escapes the next byte and unescaped `:`s separate lower layers (`::` before data-only
/// ones); `lowerdir+=` and `datadir+=` (6.7 on) one path each, as it is.
fn overlay_layers(options: &[u8]) -> Vec<PathBuf> {
    let path = |name: Vec<u8>| PathBuf::from(std::ffi::OsString::from_vec(name));
    // The mounter's text split at unescaped `:`s, escapes undone; empty parts left out.
    let split_escaped = |text: &[u8]| {
        let mut parts = Vec::new();
        let mut part = Vec::new();
        let mut bytes = text.iter();
        while let Some(&byte) = bytes.next() {
            match byte {
                b'\\' => part.extend(bytes.next()),
                b':' => parts.push(std::mem::take(&mut part)),
                _ => part.push(byte),
            }
        }
        parts.push(part);
        parts.into_iter().filter(|part| !part.is_empty()).map(path)
    };
    // The order the overlay looks names up in: the upper layer first.
    let (mut upper, mut lower) = (Vec::new(), Vec::new());
    for option in options.split(|byte| *byte == b',') {
        let Some(at) = option.iter().position(|byte| *byte == b'=') else {
            continue;
        };
        let value = unescape_octal(&option[at + 1..]);
        match &option[..at] {
            b"upperdir" => upper.extend(split_escaped(&value)),
            b"lowerdir" => lower.extend(split_escaped(&value)),
            b"lowerdir+" | b"datadir+" => lower.push(path(value)),
            _ => {}
        }
    }
    upper.extend(lower);
    upper
}

/// The names of `path`'s components (`.`, `..` and the root left out).
pub fn names_of(path: &Path) -> Vec<std::ffi::OsString> {
    (path.components())
        .filter_map(|component| match component {
            std::path::Component::Normal(name) => Some(name.to_owned()),
            _ => None,
        })
        .collect()
}

/// `\040` and the like, as the kernel writes spaces, tabs, newlines and backslashes in names.
fn unescape_octal(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let digits = bytes.get(index + 1..index + 4);
        match digits {
            Some(digits)
                if bytes[index] == b'\\' && digits.iter().all(|d| (b'0'..=b'7').contains(d)) =>
            {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                out.push(value as u8);
                index += 4;
            }
            _ => {
                out.push(bytes[index]);
                index += 1;
            }
        }
    }
    out
}
