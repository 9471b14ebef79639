//! The running daemon: kernel event -> request -> notification -> decision -> grant -> journal.
//!
//! `Engine` holds the state behind one lock, so that a decision is checked, journaled and turned
//! into a grant as one step; the tasks around it only move data in and out.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, ToSocketAddrs as _},
    os::unix::fs::MetadataExt as _,
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use aya::maps::MapError;
use gatekeeper_common::{
    Counter, EventKind, GrantKey, GrantValue, PortRanges, Setting, TARGET_KIND_CONNECT, TamperHook,
    Target,
};
use serde::Serialize;
use time::OffsetDateTime;
use tracing::{error, info, warn};

use crate::{
    cgroups,
    config::{Config, DestinationSpec, ExecRule},
    destinations::{self, Destination, DestinationError, Prefix, Reach},
    events::{EventReader, KernelEvent},
    journal::{Journal, JournalError, JournalEvent, Record},
    loader::{self, Kernel, LoaderError},
    notify,
    requests::{
        Admission, DecideError, Decision, DecisionInfo, Denial, Kind, Outcome, Parent, Process,
        Refusal, Request, Requests, State, authorize_reviewer,
    },
};

/// How often protected paths are checked for replacement (the promise is within 2 s).
const PROTECT_REFRESH: Duration = Duration::from_millis(500);
const SWEEP_INTERVAL: Duration = Duration::from_millis(250);
/// How long after its expiry a consumed grant waits for its event before it is journaled as used
/// without one.
const USED_EVENT_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Loader(#[from] LoaderError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("agent cgroup {path}: {cause}")]
    AgentCgroup {
        path: PathBuf,
        cause: cgroups::CgroupError,
    },
    #[error("protected path {path}: {cause}")]
    ProtectedPath {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("kernel map: {0}")]
    Map(#[from] MapError),
    #[error("protect.connect[{index}].host: cannot resolve {host}: {cause}")]
    Resolve {
        index: usize,
        host: String,
        cause: String,
    },
    #[error("protect.connect: {0}")]
    Destinations(#[from] DestinationError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("API: {0}")]
    Api(String),
}

/// Why a decision was not taken.
#[derive(Debug, thiserror::Error)]
pub enum DecisionFailure {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error(transparent)]
    Request(#[from] DecideError),
    #[error("the decision could not be recorded: {0}")]
    Journal(#[from] JournalError),
    #[error("the grant could not reach the kernel: {0}")]
    Kernel(#[from] MapError),
}

/// Where a decision comes from.
pub struct Decider {
    pub reviewer: String,
    pub caller_is_agent: bool,
    pub channel: &'static str,
}

struct ProtectedPath {
    path: PathBuf,
    name: String,
    current: Option<Target>,
    /// Files the path named before a replacement. They stay protected: a hard link made
    /// beforehand would otherwise keep the old binary runnable.
    previous: Vec<Target>,
}

#[derive(Default)]
struct Delivery {
    delivered: bool,
    in_flight: bool,
}

struct Grant {
    request_id: String,
    key: GrantKey,
    expires_boot_ns: u64,
}

#[derive(Debug, Serialize)]
pub struct Status {
    pub enforcing: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
    pub pid: u32,
    pub pending_requests: usize,
    pub active_grants: usize,
    pub denied: u64,
    pub grants_used: u64,
    pub events_dropped: u64,
    pub tamper_attempts: u64,
    pub protected: Vec<ProtectedStatus>,
}

#[derive(Debug, Serialize)]
pub struct ProtectedStatus {
    pub name: String,
    pub path: String,
    pub dev: Option<u32>,
    pub ino: Option<u64>,
}

pub struct Engine {
    config: Arc<Config>,
    kernel: Kernel,
    journal: Journal,
    requests: Requests,
    grants: HashMap<u64, Grant>,
    protected: Vec<ProtectedPath>,
    allowed: Vec<ProtectedPath>,
    /// One per `[[protect.connect]]` rule, with its addresses resolved.
    reaches: Vec<Reach>,
    /// What the kernel's destination trie holds now.
    installed_nets: BTreeMap<Prefix, PortRanges>,
    /// Per (request, webhook index): whether it was delivered, or is being sent.
    deliveries: HashMap<(String, usize), Delivery>,
    since: OffsetDateTime,
}

/// The kernel's `dev_t` encoding (major << 20 | minor) of a userspace `st_dev`.
pub fn kernel_dev(st_dev: u64) -> u32 {
    (libc::major(st_dev) << 20) | libc::minor(st_dev)
}

fn exec_target_of(path: &std::path::Path) -> std::io::Result<Target> {
    let metadata = std::fs::metadata(path)?;
    Ok(Target::exec(kernel_dev(metadata.dev()), metadata.ino()))
}

/// CLOCK_BOOTTIME, the clock the kernel program checks grant expiry against.
fn boot_time_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|now| now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64)
        // CLOCK_BOOTTIME exists on every kernel with BPF LSM; treat failure as "far future" so
        // nothing is expired early: the kernel still enforces the real expiry.
        .unwrap_or(0)
}

pub fn user_name(uid: u32) -> Option<String> {
    nix::unistd::User::from_uid(uid.into())
        .ok()
        .flatten()
        .map(|user| user.name)
}

/// Puts the files `paths` name into `map` and takes out what an earlier configuration left.
fn install_paths(
    paths: impl Iterator<Item = (PathBuf, String)>,
    map: &mut aya::maps::HashMap<aya::maps::MapData, Target, u32>,
) -> Result<Vec<ProtectedPath>, DaemonError> {
    let mut installed = Vec::new();
    for (index, (path, name)) in paths.enumerate() {
        let target = exec_target_of(&path).map_err(|cause| DaemonError::ProtectedPath {
            path: path.clone(),
            cause,
        })?;
        map.insert(target, index as u32, 0)?;
        installed.push(ProtectedPath {
            path,
            name,
            current: Some(target),
            previous: Vec::new(),
        });
    }
    remove_stale(map, |target| {
        installed
            .iter()
            .any(|path| path.current.as_ref() == Some(target))
    })?;
    Ok(installed)
}

/// Follows `paths` to the files they name now; returns those that moved. A file a path named
/// before stays in the map.
fn follow_paths(
    paths: &mut [ProtectedPath],
    map: &mut aya::maps::HashMap<aya::maps::MapData, Target, u32>,
) -> Vec<(PathBuf, Target)> {
    let mut moved = Vec::new();
    for (index, entry) in paths.iter_mut().enumerate() {
        // Mid-replacement the path may briefly not exist: keep the old entry meanwhile.
        let Ok(target) = exec_target_of(&entry.path) else {
            continue;
        };
        if entry.current == Some(target) {
            continue;
        }
        if let Err(error) = map.insert(target, index as u32, 0) {
            error!(%error, path = %entry.path.display(), "cannot follow replaced file");
            continue;
        }
        entry.previous.extend(entry.current.replace(target));
        moved.push((entry.path.clone(), target));
    }
    moved
}

/// Removes the entries of an adopted map that the current configuration no longer wants.
fn remove_stale<K: aya::Pod, V: aya::Pod>(
    map: &mut aya::maps::HashMap<aya::maps::MapData, K, V>,
    wanted: impl Fn(&K) -> bool,
) -> Result<(), MapError> {
    let stale: Vec<K> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|key| !wanted(key))
        .collect();
    for key in stale {
        map.remove(&key)?;
    }
    Ok(())
}

/// The addresses `host` resolves to now (blocking; used at start).
fn resolve(host: &str) -> Result<Vec<IpAddr>, String> {
    let addresses: Vec<IpAddr> = (host, 0)
        .to_socket_addrs()
        .map_err(|error| error.to_string())?
        .map(|address| address.ip())
        .collect();
    if addresses.is_empty() {
        return Err("no addresses".into());
    }
    Ok(addresses)
}

/// What /proc still tells about the process that was denied.
fn describe_process(event: &KernelEvent) -> Process {
    let proc_dir = PathBuf::from(format!("/proc/{}", event.pid));
    let argv = std::fs::read(proc_dir.join("cmdline")).ok().map(|raw| {
        raw.split(|byte| *byte == 0)
            .filter(|arg| !arg.is_empty())
            .map(|arg| String::from_utf8_lossy(arg).into_owned())
            .collect()
    });
    let parent = std::fs::read_to_string(proc_dir.join("stat"))
        .ok()
        .and_then(|stat| {
            // The command name may hold spaces and parentheses; fields resume after the last ')'.
            let (_, rest) = stat.rsplit_once(')')?;
            rest.split_whitespace().nth(1)?.parse::<u32>().ok()
        })
        .map(|pid| Parent {
            pid,
            comm: std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .ok()
                .map(|comm| comm.trim_end().to_owned()),
        });
    Process {
        pid: event.pid,
        tgid: event.tgid,
        uid: event.uid,
        user: user_name(event.uid),
        comm: event.comm.clone(),
        argv,
        parent,
    }
}

impl Engine {
    /// Opens the journal, loads the programs, fills the maps and only then attaches.
    pub fn start(config: Arc<Config>) -> Result<Self, DaemonError> {
        // Before anything is written: a host that cannot enforce is told so first.
        crate::loader::check_bpf_lsm()?;
        let (journal, records) = Journal::open(&config.journal)?;
        let was_enforcing = loader::links_pinned(&config.pin_dir);
        let mut kernel = Kernel::load(&config.pin_dir)?;

        // An earlier daemon's maps are adopted: the new policy goes in first and what is no
        // longer configured comes out after, so nothing is unprotected in between.
        let mut agents = Vec::new();
        for path in &config.agent_cgroups {
            let id = cgroups::id_of(path).map_err(|cause| DaemonError::AgentCgroup {
                path: path.clone(),
                cause,
            })?;
            kernel.agents.insert(id, 1, 0)?;
            agents.push(id);
        }
        remove_stale(&mut kernel.agents, |id| agents.contains(id))?;
        let protected = install_paths(
            config
                .exec_rules
                .iter()
                .map(|rule| (rule.path.clone(), rule.name.clone())),
            &mut kernel.protected,
        )?;
        let allowed = install_paths(
            config
                .allowed
                .iter()
                .map(|path| (path.clone(), "allowlisted".to_owned())),
            &mut kernel.allowed,
        )?;
        kernel.settings.set(
            Setting::ExecAllowlist as u32,
            u32::from(config.exec_allowlist),
            0,
        )?;
        let own_pid = std::process::id();
        kernel.daemon_pids.insert(own_pid, 1, 0)?;
        remove_stale(&mut kernel.daemon_pids, |pid| *pid == own_pid)?;
        let reaches = config
            .connect_rules
            .iter()
            .enumerate()
            .map(|(index, rule)| {
                let prefixes = match &rule.destination {
                    DestinationSpec::Cidr(prefix) => vec![*prefix],
                    DestinationSpec::Host(host) => resolve(host)
                        .map_err(|cause| DaemonError::Resolve {
                            index,
                            host: host.clone(),
                            cause,
                        })?
                        .into_iter()
                        .map(Prefix::host)
                        .collect(),
                };
                Ok(Reach {
                    prefixes,
                    ports: rule.ports.clone(),
                    protocols: rule.protocols,
                })
            })
            .collect::<Result<Vec<_>, DaemonError>>()?;
        let installed_nets = kernel
            .nets
            .iter()
            .filter_map(Result::ok)
            .map(|(key, ranges)| {
                let prefix = Prefix {
                    address: key.data(),
                    len: key.prefix_len() as u8,
                };
                (prefix, ranges)
            })
            .collect();
        let mut engine = Self {
            requests: Requests::new(config.request_ttl),
            config,
            kernel,
            journal,
            grants: HashMap::new(),
            protected,
            allowed,
            reaches,
            installed_nets,
            deliveries: HashMap::new(),
            since: OffsetDateTime::now_utc(),
        };
        engine.sync_nets()?;
        let installed = engine.replay(records, was_enforcing);
        let pin_dir = engine.config.pin_dir.clone();
        engine.kernel.attach(&pin_dir)?;
        let kernel_release = nix::sys::utsname::uname()
            .map(|uts| uts.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        engine.journal.append(&JournalEvent::DaemonStarted {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            kernel: kernel_release,
        })?;
        engine.since = match installed {
            Some(since) if was_enforcing => since,
            _ => engine.journal.append(&JournalEvent::EnforcementInstalled {
                pin_dir: pin_dir.display().to_string(),
            })?,
        };
        Ok(engine)
    }

    /// Picks up where an earlier daemon left: its requests, decisions and outstanding grants.
    /// Returns when enforcement was last installed.
    fn replay(&mut self, records: Vec<Record>, was_enforcing: bool) -> Option<OffsetDateTime> {
        let mut installed = None;
        for record in records {
            match record.event {
                JournalEvent::EnforcementInstalled { .. } => installed = Some(record.time),
                JournalEvent::Uninstalled { .. } => {
                    installed = None;
                    self.grants.clear();
                }
                JournalEvent::RequestCreated { request } => self.requests.restore(*request),
                JournalEvent::Decision {
                    request_id,
                    decision,
                    reviewer,
                    reason,
                    channel,
                } => self.requests.restore_decision(
                    &request_id,
                    DecisionInfo {
                        decision,
                        reviewer,
                        reason,
                        channel,
                        at: record.time,
                    },
                ),
                JournalEvent::RequestExpired { request_id } => {
                    self.requests.restore_expired(&request_id)
                }
                JournalEvent::GrantIssued {
                    grant_id,
                    request_id,
                    ..
                } => {
                    if let Some(request) = self.requests.get(&request_id) {
                        let key = GrantKey {
                            cgroup_id: request.cgroup_id,
                            target: request.target_key,
                        };
                        self.requests.attach_grant(&request_id, grant_id);
                        self.grants.insert(
                            grant_id,
                            Grant {
                                request_id,
                                key,
                                expires_boot_ns: 0,
                            },
                        );
                    }
                }
                JournalEvent::GrantUsed { grant_id, .. }
                | JournalEvent::GrantExpired { grant_id, .. } => {
                    self.grants.remove(&grant_id);
                }
                JournalEvent::WebhookDelivery {
                    request_id,
                    url,
                    delivered: true,
                    ..
                } => {
                    let hook = self
                        .config
                        .webhooks
                        .iter()
                        .position(|hook| hook.url.as_str() == url);
                    if let Some(index) = hook {
                        self.delivery_done(&request_id, index, true);
                    }
                }
                _ => {}
            }
        }
        if !was_enforcing {
            // Nothing was pinned (first start, or a reboot): no earlier grant can be used.
            let void: Vec<(u64, String)> = self
                .grants
                .drain()
                .map(|(grant_id, grant)| (grant_id, grant.request_id))
                .collect();
            for (grant_id, request_id) in void {
                self.record(JournalEvent::GrantExpired {
                    grant_id,
                    request_id,
                });
            }
            return installed;
        }
        // The kernel's map has each outstanding grant's expiry; one no longer there was used
        // while the daemon was away, and its event waits in the ring buffer.
        let now = boot_time_ns();
        for (grant_id, grant) in &mut self.grants {
            grant.expires_boot_ns = match self.kernel.grants.get(&grant.key, 0) {
                Ok(value) if value.grant_id == *grant_id => value.expires_boot_ns,
                _ => now,
            };
        }
        installed
    }

    /// Ends enforcement for good: journals it and removes the pins, which detaches the programs.
    pub fn uninstall(&mut self, by: &str) -> std::io::Result<()> {
        let pin_dir = self.config.pin_dir.clone();
        self.record(JournalEvent::Uninstalled {
            pin_dir: pin_dir.display().to_string(),
            by: by.to_owned(),
        });
        loader::uninstall(&pin_dir)
    }

    fn record(&mut self, event: JournalEvent) {
        if let Err(error) = self.journal.append(&event) {
            error!(%error, ?event, "journal write failed");
        }
    }

    /// The `[[protect.exec]]` rule whose path names (or named) `target`.
    fn exec_rule(&self, target: &Target) -> Option<&ExecRule> {
        self.protected
            .iter()
            .position(|rule| {
                rule.current.as_ref() == Some(target) || rule.previous.contains(target)
            })
            .and_then(|index| self.config.exec_rules.get(index))
    }

    /// A denial in the words reviewers read: what, which rule, which cgroup, which process.
    fn describe_denial(&self, event: KernelEvent) -> Denial {
        let process = describe_process(&event);
        let cgroup = cgroups::find_by_id(&self.config.agent_cgroups, event.cgroup_id)
            .map(|path| path.display().to_string())
            .unwrap_or_else(|| format!("cgroup id {}", event.cgroup_id));
        let (kind, rule, policy, target, destination) = if event.target.kind == TARGET_KIND_CONNECT
        {
            let (address, port, protocol) = event.target.destination();
            let rule = destinations::matching_rule(&self.reaches, address, port, protocol)
                .and_then(|index| self.config.connect_rules.get(index));
            let host = rule.and_then(|rule| match &rule.destination {
                DestinationSpec::Host(host) => Some(host.clone()),
                DestinationSpec::Cidr(_) => None,
            });
            let destination = Destination::new(address, port, protocol, host);
            (
                Kind::Connect,
                rule.map_or("protected destination", |rule| rule.name.as_str()),
                rule.map(|rule| rule.approval).unwrap_or_default(),
                destination.to_string(),
                Some(destination),
            )
        } else {
            let rule = self.exec_rule(&event.target);
            let fallback = if self.config.exec_allowlist {
                "not on the allowlist"
            } else {
                "protected binary"
            };
            (
                Kind::Exec,
                rule.map_or(fallback, |rule| rule.name.as_str()),
                rule.map(|rule| rule.approval).unwrap_or_default(),
                event.filename.clone(),
                None,
            )
        };
        let owner = self
            .config
            .owner_of(std::path::Path::new(&cgroup))
            .map(str::to_owned);
        Denial {
            kind,
            rule: rule.to_owned(),
            target,
            target_key: event.target,
            destination,
            cgroup,
            cgroup_id: event.cgroup_id,
            process,
            owner,
            approvals_required: policy.approvals,
            require_reason: policy.require_reason,
        }
    }

    /// Makes the kernel's destination trie hold exactly what the rules compile to.
    fn sync_nets(&mut self) -> Result<(), DaemonError> {
        let table = destinations::compile(&self.reaches)?;
        for (prefix, ranges) in &table {
            if self.installed_nets.get(prefix) != Some(ranges) {
                let key = aya::maps::lpm_trie::Key::new(u32::from(prefix.len), prefix.address);
                self.kernel.nets.insert(&key, ranges, 0)?;
            }
        }
        let stale: Vec<Prefix> = self
            .installed_nets
            .keys()
            .filter(|prefix| !table.contains_key(prefix))
            .copied()
            .collect();
        for prefix in stale {
            let key = aya::maps::lpm_trie::Key::new(u32::from(prefix.len), prefix.address);
            self.kernel.nets.remove(&key)?;
        }
        self.installed_nets = table;
        Ok(())
    }

    /// Host rules to resolve again: (rule index, host).
    pub fn hosts(&self) -> Vec<(usize, String)> {
        self.config
            .connect_rules
            .iter()
            .enumerate()
            .filter_map(|(index, rule)| match &rule.destination {
                DestinationSpec::Host(host) => Some((index, host.clone())),
                DestinationSpec::Cidr(_) => None,
            })
            .collect()
    }

    /// Adds addresses a host rule now resolves to. Addresses it no longer returns stay
    /// protected: a name that moves must not open its old address.
    pub fn add_resolved(&mut self, index: usize, addresses: Vec<IpAddr>) {
        let Some(reach) = self.reaches.get_mut(index) else {
            return;
        };
        let before = reach.prefixes.clone();
        for address in addresses {
            let prefix = Prefix::host(address);
            if !reach.prefixes.contains(&prefix) {
                reach.prefixes.push(prefix);
            }
        }
        if reach.prefixes == before {
            return;
        }
        if let Err(error) = self.sync_nets() {
            error!(%error, "cannot protect newly resolved addresses");
            if let Some(reach) = self.reaches.get_mut(index) {
                reach.prefixes = before;
            }
            return;
        }
        let Some(rule) = self.config.connect_rules.get(index) else {
            return;
        };
        let host = match &rule.destination {
            DestinationSpec::Host(host) => host.clone(),
            DestinationSpec::Cidr(prefix) => prefix.to_string(),
        };
        let addresses = self.reaches[index]
            .prefixes
            .iter()
            .map(|prefix| destinations::natural(prefix.address).to_string())
            .collect();
        info!(%host, "destination resolves to new addresses");
        self.record(JournalEvent::HostResolved {
            rule: rule.name.clone(),
            host,
            addresses,
        });
    }

    /// Handles one kernel event; returns a request that is new and must go to reviewers.
    pub fn on_kernel_event(&mut self, event: KernelEvent) -> Option<Request> {
        match event.kind {
            EventKind::Denied => {
                let denial = self.describe_denial(event);
                match self.requests.on_denial(denial, OffsetDateTime::now_utc()) {
                    Admission::New(request) => {
                        let request = request.clone();
                        info!(id = %request.id, target = %request.target, cgroup = %request.cgroup, "approval requested");
                        self.record(JournalEvent::RequestCreated {
                            request: Box::new(request.clone()),
                        });
                        Some(request)
                    }
                    Admission::Joined(_) => None,
                }
            }
            EventKind::Tamper => {
                let hook = TamperHook::from_raw(event.target.aux)
                    .map_or("unknown", TamperHook::name)
                    .to_owned();
                let cgroup = cgroups::find_by_id(&self.config.agent_cgroups, event.cgroup_id)
                    .map(|path| path.display().to_string())
                    .unwrap_or_else(|| format!("cgroup id {}", event.cgroup_id));
                warn!(%hook, pid = event.pid, %cgroup, "tamper attempt denied");
                self.record(JournalEvent::TamperAttempt {
                    hook,
                    pid: event.pid,
                    uid: event.uid,
                    comm: event.comm,
                    cgroup,
                    detail: event.target.data,
                });
                None
            }
            EventKind::GrantUsed => {
                if let Some(grant) = self.grants.remove(&event.grant_id) {
                    info!(grant = event.grant_id, pid = event.pid, "grant used");
                    self.record(JournalEvent::GrantUsed {
                        grant_id: event.grant_id,
                        request_id: grant.request_id,
                        pid: Some(event.pid),
                    });
                } else {
                    warn!(
                        grant = event.grant_id,
                        "kernel used a grant the daemon does not know"
                    );
                }
                None
            }
        }
    }

    /// Decides request `id`: authorised, checked, journaled durably, then granted in the kernel.
    pub fn decide(
        &mut self,
        id: &str,
        decision: Decision,
        reason: Option<String>,
        decider: &Decider,
    ) -> Result<Request, DecisionFailure> {
        let refuse = |engine: &mut Self, why: String| {
            engine.record(JournalEvent::DecisionRefused {
                request_id: id.to_owned(),
                reviewer: Some(decider.reviewer.clone()),
                channel: decider.channel.to_owned(),
                why,
            });
        };
        if let Err(refusal) = authorize_reviewer(
            &self.config.reviewers,
            &decider.reviewer,
            decider.caller_is_agent,
        ) {
            refuse(self, refusal.to_string());
            return Err(refusal.into());
        }
        let info = DecisionInfo {
            decision,
            reviewer: decider.reviewer.clone(),
            reason,
            channel: decider.channel.to_owned(),
            at: OffsetDateTime::now_utc(),
        };
        if let Err(error) = self.requests.check(id, &info) {
            if !matches!(error, DecideError::NotFound(_)) {
                refuse(self, error.to_string());
            }
            return Err(error.into());
        }
        self.journal.append(&JournalEvent::Decision {
            request_id: id.to_owned(),
            decision,
            reviewer: info.reviewer.clone(),
            reason: info.reason.clone(),
            channel: info.channel.clone(),
        })?;
        info!(id, ?decision, reviewer = %decider.reviewer, "decided");
        let request = match self.requests.decide(id, info)? {
            Outcome::Approval { request, missing } => {
                info!(id, missing, "approval recorded; more needed");
                return Ok(request);
            }
            Outcome::Decided(request) => request,
        };
        if request.state == State::Approved {
            self.issue_grant(&request)?;
        }
        Ok(self.requests.get(id).cloned().unwrap_or(request))
    }

    fn issue_grant(&mut self, request: &Request) -> Result<(), DecisionFailure> {
        let key = GrantKey {
            cgroup_id: request.cgroup_id,
            target: request.target_key,
        };
        // A grant for the same key still in the table was already dead in the kernel (else the
        // denial behind this request could not have happened); the new one replaces it.
        let replaced: Vec<u64> = self
            .grants
            .iter()
            .filter(|(_, grant)| grant.key == key)
            .map(|(id, _)| *id)
            .collect();
        for grant_id in replaced {
            if let Some(old) = self.grants.remove(&grant_id) {
                self.record(JournalEvent::GrantExpired {
                    grant_id,
                    request_id: old.request_id,
                });
            }
        }
        let mut id_bytes = [0u8; 8];
        let grant_id = match getrandom::fill(&mut id_bytes) {
            Ok(()) => u64::from_le_bytes(id_bytes) >> 1,
            Err(_) => OffsetDateTime::now_utc().unix_timestamp_nanos() as u64,
        };
        let ttl = self.config.grant_ttl;
        let expires_boot_ns = boot_time_ns().saturating_add(ttl.as_nanos() as u64);
        self.journal.append(&JournalEvent::GrantIssued {
            grant_id,
            request_id: request.id.clone(),
            expires: OffsetDateTime::now_utc() + ttl,
        })?;
        self.kernel.grants.insert(
            key,
            GrantValue {
                expires_boot_ns,
                grant_id,
            },
            0,
        )?;
        self.grants.insert(
            grant_id,
            Grant {
                request_id: request.id.clone(),
                key,
                expires_boot_ns,
            },
        );
        self.requests.attach_grant(&request.id, grant_id);
        Ok(())
    }

    /// Expires requests and grants whose time is up.
    pub fn sweep(&mut self) {
        for request_id in self.requests.expire_due(OffsetDateTime::now_utc()) {
            info!(id = %request_id, "request expired");
            self.record(JournalEvent::RequestExpired { request_id });
        }
        let now = boot_time_ns();
        let due: Vec<u64> = self
            .grants
            .iter()
            .filter(|(_, grant)| now >= grant.expires_boot_ns)
            .map(|(id, _)| *id)
            .collect();
        for grant_id in due {
            let Some(grant) = self.grants.get(&grant_id) else {
                continue;
            };
            let in_kernel = self.kernel.grants.get(&grant.key, 0).ok();
            let event = match in_kernel {
                // Still there, so unused: the kernel refuses it from now on; tidy it away.
                Some(value) if value.grant_id == grant_id => {
                    if let Err(error) = self.kernel.grants.remove(&grant.key) {
                        warn!(%error, grant_id, "cannot remove expired grant");
                    }
                    JournalEvent::GrantExpired {
                        grant_id,
                        request_id: grant.request_id.clone(),
                    }
                }
                // Consumed: its event may still be on its way.
                _ if now < grant.expires_boot_ns + USED_EVENT_GRACE.as_nanos() as u64 => continue,
                _ => JournalEvent::GrantUsed {
                    grant_id,
                    request_id: grant.request_id.clone(),
                    pid: None,
                },
            };
            self.grants.remove(&grant_id);
            self.record(event);
        }
    }

    /// Follows protected and allowlisted paths to their current file, so a replaced binary stays
    /// protected (or allowed).
    pub fn refresh_protected(&mut self) {
        let mut moved = follow_paths(&mut self.protected, &mut self.kernel.protected);
        moved.extend(follow_paths(&mut self.allowed, &mut self.kernel.allowed));
        for (path, target) in moved {
            info!(path = %path.display(), "path now names a new file");
            self.record(JournalEvent::ProtectionUpdated {
                path: path.display().to_string(),
                dev: target.data[0] as u32,
                ino: target.data[1],
            });
        }
    }

    pub fn list(&self, all: bool) -> Vec<Request> {
        self.requests.list(all).into_iter().cloned().collect()
    }

    pub fn status(&self) -> Status {
        Status {
            enforcing: loader::links_pinned(&self.config.pin_dir),
            since: self.since,
            pid: std::process::id(),
            pending_requests: self.requests.list(false).len(),
            active_grants: self.grants.len(),
            denied: self.kernel.counter(Counter::Denied),
            grants_used: self.kernel.counter(Counter::GrantsUsed),
            events_dropped: self.kernel.counter(Counter::EventsDropped),
            tamper_attempts: self.kernel.counter(Counter::Tamper),
            protected: self
                .protected
                .iter()
                .map(|rule| ProtectedStatus {
                    name: rule.name.clone(),
                    path: rule.path.display().to_string(),
                    dev: rule.current.map(|target| target.data[0] as u32),
                    ino: rule.current.map(|target| target.data[1]),
                })
                .collect(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn take_events(&mut self) -> Option<aya::maps::RingBuf<aya::maps::MapData>> {
        self.kernel.events.take()
    }

    /// Pending requests some webhook has not had yet (and is not being sent): marks them as
    /// being sent.
    pub fn take_undelivered(&mut self) -> Vec<(Request, usize, crate::config::Webhook)> {
        let mut due = Vec::new();
        for request in self.requests.list(false) {
            for (index, hook) in self.config.webhooks.iter().enumerate() {
                let delivery = self
                    .deliveries
                    .entry((request.id.clone(), index))
                    .or_default();
                if !delivery.delivered && !delivery.in_flight {
                    delivery.in_flight = true;
                    due.push((request.clone(), index, hook.clone()));
                }
            }
        }
        due
    }

    /// Journals a decision refused before it reached a request (e.g. an unknown Slack user).
    pub fn refuse(
        &mut self,
        request_id: &str,
        reviewer: Option<String>,
        channel: &str,
        why: String,
    ) {
        self.record(JournalEvent::DecisionRefused {
            request_id: request_id.to_owned(),
            reviewer,
            channel: channel.to_owned(),
            why,
        });
    }

    /// The caller's own request: `id` if it belongs to cgroup `cgroup_id`, else its latest.
    pub fn request_for_cgroup(&self, cgroup_id: u64, id: Option<&str>) -> Option<String> {
        let own = self
            .requests
            .list(true)
            .into_iter()
            .filter(|request| request.cgroup_id == cgroup_id);
        match id {
            Some(id) => own.into_iter().find(|request| request.id == id),
            None => own.into_iter().max_by_key(|request| request.created),
        }
        .map(|request| request.id.clone())
    }

    pub fn request_state(&self, id: &str) -> Option<State> {
        self.requests.get(id).map(|request| request.state)
    }

    pub fn delivery_done(&mut self, request_id: &str, hook: usize, delivered: bool) {
        let delivery = self
            .deliveries
            .entry((request_id.to_owned(), hook))
            .or_default();
        delivery.in_flight = false;
        delivery.delivered |= delivered;
    }

    pub fn journal_delivery(&mut self, request_id: &str, attempt: notify::Attempt) {
        self.record(JournalEvent::WebhookDelivery {
            request_id: request_id.to_owned(),
            url: attempt.url,
            attempt: attempt.attempt,
            delivered: attempt.delivered,
            status: attempt.status,
            error: attempt.error,
        });
    }

    pub fn stop(&mut self, reason: &str) {
        self.record(JournalEvent::DaemonStopped {
            reason: reason.to_owned(),
        });
    }
}

/// The engine shared by the daemon's tasks.
#[derive(Clone)]
pub struct Shared {
    engine: Arc<Mutex<Engine>>,
    /// Set once enforcement was uninstalled: the daemon then exits.
    uninstalled: Arc<tokio::sync::Notify>,
}

impl Shared {
    pub fn new(engine: Engine) -> Self {
        Self {
            engine: Arc::new(Mutex::new(engine)),
            uninstalled: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// Uninstalls enforcement and tells the daemon to exit.
    pub fn uninstall(&self, by: &str) -> std::io::Result<()> {
        self.lock().uninstall(by)?;
        self.uninstalled.notify_one();
        Ok(())
    }

    /// The engine stays usable even if a task panicked while holding it: its state is updated in
    /// single steps, and stopping enforcement would be worse.
    pub fn lock(&self) -> MutexGuard<'_, Engine> {
        self.engine
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Sends every pending request to every webhook that has not had it yet, journaling each
/// attempt. Called for new requests and on a timer, so a webhook that was down (or a daemon that
/// restarted) catches up.
fn deliver_pending(shared: &Shared, client: &reqwest::Client) {
    let due = shared.lock().take_undelivered();
    for (request, index, hook) in due {
        let body = match serde_json::to_vec(&notify::message(hook.kind, &request)) {
            Ok(body) => body,
            Err(error) => {
                error!(%error, "cannot encode request message");
                continue;
            }
        };
        let shared = shared.clone();
        let client = client.clone();
        tokio::spawn(async move {
            let delivered = notify::deliver(&client, &hook, &body, |attempt| {
                shared.lock().journal_delivery(&request.id, attempt);
            })
            .await;
            shared.lock().delivery_done(&request.id, index, delivered);
        });
    }
}

/// Resolves every host rule again; a failed lookup keeps what was protected.
async fn resolve_hosts(shared: &Shared) {
    let hosts = shared.lock().hosts();
    for (index, host) in hosts {
        match tokio::net::lookup_host((host.as_str(), 0)).await {
            Ok(addresses) => {
                let addresses = addresses.map(|address| address.ip()).collect();
                shared.lock().add_resolved(index, addresses);
            }
            Err(error) => {
                warn!(%host, %error, "cannot resolve protected host; keeping its addresses")
            }
        }
    }
}

/// Runs the daemon until SIGINT or SIGTERM.
pub async fn run(config: Config) -> Result<(), DaemonError> {
    let config = Arc::new(config);
    let mut engine = Engine::start(config.clone())?;
    let ring = engine
        .take_events()
        .ok_or_else(|| DaemonError::Api("event ring buffer already taken".into()))?;
    let mut reader = EventReader::new(ring)?;
    let shared = Shared::new(engine);
    let client = reqwest::Client::new();

    let local = crate::api::LocalApi::bind(&config.socket, shared.clone())?;
    let http = match config.listen {
        Some(addr) => Some(crate::api::bind_http(addr, shared.clone()).await?),
        None => None,
    };
    info!(socket = %config.socket.display(), listen = ?config.listen, "enforcing");

    let events = {
        let shared = shared.clone();
        let client = client.clone();
        async move {
            loop {
                let batch = reader.next_batch().await?;
                for event in batch {
                    match event {
                        Ok(event) => {
                            let new = shared.lock().on_kernel_event(event);
                            if new.is_some() {
                                deliver_pending(&shared, &client);
                            }
                        }
                        Err(error) => warn!(%error, "undecodable kernel event"),
                    }
                }
            }
            #[allow(unreachable_code)]
            Ok::<(), std::io::Error>(())
        }
    };
    let timers = {
        let shared = shared.clone();
        let resolve_interval = config.resolve_interval;
        let redeliver_interval = config.redeliver_interval;
        let client = client.clone();
        async move {
            let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
            let mut refresh = tokio::time::interval(PROTECT_REFRESH);
            let mut resolve = tokio::time::interval(resolve_interval);
            resolve.reset();
            // The first tick is at once: what a previous daemon left undelivered goes out now.
            let mut redeliver = tokio::time::interval(redeliver_interval);
            loop {
                tokio::select! {
                    _ = sweep.tick() => shared.lock().sweep(),
                    _ = refresh.tick() => shared.lock().refresh_protected(),
                    _ = resolve.tick() => resolve_hosts(&shared).await,
                    _ = redeliver.tick() => deliver_pending(&shared, &client),
                }
            }
        }
    };
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let result = tokio::select! {
        result = events => result.map_err(DaemonError::from),
        () = timers => Ok(()),
        result = local.serve() => result.map_err(DaemonError::from),
        result = async {
            match http {
                Some(server) => server.await,
                None => std::future::pending().await,
            }
        } => result,
        _ = tokio::signal::ctrl_c() => Ok(()),
        _ = terminate.recv() => Ok(()),
        () = shared.uninstalled.notified() => Ok(()),
    };
    // Stopping leaves the pinned programs enforcing; only `gatekeeper uninstall` ends that.
    let reason = match &result {
        Ok(()) if !loader::links_pinned(&config.pin_dir) => "uninstalled".to_owned(),
        Ok(()) => "stopped; pinned programs keep enforcing".to_owned(),
        Err(error) => error.to_string(),
    };
    shared.lock().stop(&reason);
    let _ = std::fs::remove_file(&config.socket);
    result
}
