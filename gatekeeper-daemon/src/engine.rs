//! The engine: the one task that owns the core, the journal and the kernel maps. Everything else
//! reaches it through [`crate::handle`]. It feeds commands and the time into the core and
//! carries out the effects in order: a record is on disk before anything that follows it
//! happens, so while the journal cannot be written nothing is granted.

use std::{
    collections::{HashMap, VecDeque},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use gatekeeper_common::{Counter, GrantValue, daemon_file};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

use crate::{
    cgroups,
    config::Config,
    core::{Core, Effect, HookSettings, Now, Settings},
    handle::{Command, DecideFailure, Handle, KernelInput, Status, Waiting},
    journal::{Event, Journal, JournalError, SealError, SealKey},
    loader::{self, Kernel, LoaderError, PathList},
    metrics::Metrics,
    notify,
    policy::{
        Policy, PolicyError, ResolvedHosts, WatchedPaths, check_resolved, with_remembered_addresses,
    },
    requests::{Admission, Denial, Request, State},
    resolver::HostResolver,
};

/// How often time passes for the core: expiry, grant sweeps, deliveries, retention.
const TICK: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Loader(#[from] LoaderError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("cannot make the notifications' HTTP client: {0}")]
    Client(reqwest::Error),
}

/// The HTTP client of notifications, with host names resolved by the daemon.
fn notification_client(resolver: &HostResolver) -> Result<reqwest::Client, EngineError> {
    (resolver.client_builder())
        .build()
        .map_err(EngineError::Client)
}

/// CLOCK_BOOTTIME, the clock the kernel program checks grant expiry against.
fn boot_time_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|now| now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64)
        // CLOCK_BOOTTIME exists on every kernel with BPF LSM; treat failure as "the start of
        // time" so nothing is expired early: the kernel still enforces the real expiry.
        .unwrap_or(0)
}

pub fn now() -> Now {
    Now {
        wall: OffsetDateTime::now_utc(),
        boot_ns: boot_time_ns(),
    }
}

/// Fresh random ids; if the system's randomness fails, the clock still makes them unique.
fn random_id() -> u64 {
    let mut bytes = [0u8; 8];
    match getrandom::fill(&mut bytes) {
        Ok(()) => u64::from_le_bytes(bytes),
        Err(_) => OffsetDateTime::now_utc().unix_timestamp_nanos() as u64,
    }
}

fn settings(config: &Config) -> Settings {
    Settings {
        reviewers: config.reviewers.clone(),
        request_ttl: config.request_ttl,
        grant_ttl: config.grant_ttl,
        retention: config.retention,
        max_pending: config.max_pending,
        redeliver_interval: config.redeliver_interval,
        hooks: config
            .webhooks
            .iter()
            .map(|hook| HookSettings {
                url: hook.url.to_string(),
                burst: hook.burst,
                refill: hook.refill,
            })
            .collect(),
    }
}

pub struct Engine {
    config: Arc<Config>,
    kernel: Kernel,
    journal: Journal,
    core: Core,
    policy: Policy,
    /// Effects not carried out yet: the head waits while the journal cannot be written.
    queue: VecDeque<Effect>,
    journal_error: Option<String>,
    /// Why agents rename no directory now, if they do not: the directories above the host's
    /// mount points were not looked at, or the programs not told them.
    renames_refused: Option<String>,
    waiters: HashMap<String, Vec<oneshot::Sender<State>>>,
    handle: Handle,
    client: reqwest::Client,
    /// Set when the engine should stop, with why.
    stopping: Option<String>,
    /// The journal's sealing key, when the host has one.
    sealing: Option<SealKey>,
    last_seal: std::time::Instant,
    metrics: Arc<Metrics>,
}

impl Engine {
    /// Opens the journal and picks up its state, loads the programs, fills the maps and only
    /// then attaches. `resolved` are the host rules' addresses looked up now; a host that did
    /// not resolve has those the journal last had for it. `handle` reaches this engine once it
    /// runs (delivery results); `metrics` count what it journals.
    pub fn start(
        config: Arc<Config>,
        handle: Handle,
        metrics: Arc<Metrics>,
        resolver: &HostResolver,
        resolved: &ResolvedHosts,
    ) -> Result<Self, EngineError> {
        // Before the journal is opened (`gatekeeper daemon` checks before anything else).
        loader::check_bpf_lsm()?;
        let mut opened = Journal::open(&config.journal)?;
        if let Some(repair) = &opened.repaired {
            warn!(
                offset = repair.offset,
                bytes = repair.bytes,
                saved_to = %repair.saved_to.display(),
                "journal ended in a torn record; its bytes were moved aside"
            );
        }
        let sealing = match SealKey::load(&config.seal_key) {
            Ok(mut key) => {
                key.catch_up(opened.journal.last_seal_epoch()?)
                    .map_err(JournalError::from)?;
                Some(key)
            }
            Err(SealError::Io { cause, .. }) if cause.kind() == std::io::ErrorKind::NotFound => {
                warn!(
                    key = %config.seal_key.display(),
                    "the journal is not sealed: `gatekeeper journal setup-keys` makes a sealing key"
                );
                None
            }
            Err(error) => return Err(JournalError::from(error).into()),
        };
        let mut core = Core::new(settings(&config), now(), Box::new(random_id));
        for record in &opened.records {
            core.replay(record.time, &record.event);
        }
        core.keep_hosts(|host| {
            config
                .connect_rules
                .iter()
                .any(|rule| rule.host() == Some(host))
        });
        let resolved = with_remembered_addresses(resolved, |host| core.remembered_addresses(host));
        // A name with no addresses at all stops the start before the programs load.
        check_resolved(&config, &resolved)?;
        let was_enforcing = loader::links_pinned(&config.pin_dir);
        let mut kernel = Kernel::load(&config.pin_dir)?;
        let (policy, mounts_guarded) = Policy::install(config.clone(), &mut kernel, &resolved)?;
        let start = now();
        if was_enforcing {
            for (grant_id, key) in core.outstanding_grants() {
                let expires = kernel
                    .grant(&key)
                    .filter(|value| value.grant_id == grant_id)
                    .map(|value| value.expires_boot_ns);
                core.adopt_grant(grant_id, expires, start);
            }
        } else {
            core.void_grants();
        }
        kernel.attach(&config.pin_dir)?;
        let kernel_release = nix::sys::utsname::uname()
            .map(|uts| uts.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        core.note(Event::DaemonStarted {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            kernel: kernel_release,
        });
        // The mounts there were at start are guarded as a matter of course (logged); those the
        // kernel's map had no room for are journaled.
        for event in mounts_guarded {
            if matches!(event, Event::MountUnguarded { .. }) {
                core.note(event);
            }
        }
        for event in policy.host_addresses() {
            core.note(event);
        }
        if !was_enforcing || core.enforcing_since().is_none() {
            core.note(Event::EnforcementInstalled {
                pin_dir: config.pin_dir.display().to_string(),
            });
            core.set_enforcing_since(start.wall);
        }
        let mut engine = Self {
            config,
            kernel,
            journal: opened.journal,
            core,
            policy,
            queue: VecDeque::new(),
            journal_error: None,
            renames_refused: Some("the daemon has not looked at the host's mounts yet".into()),
            waiters: HashMap::new(),
            handle,
            client: notification_client(resolver)?,
            stopping: None,
            sealing,
            last_seal: std::time::Instant::now(),
            metrics,
        };
        engine.flush();
        if let Some(error) = engine.journal_error.take() {
            return Err(EngineError::Journal(JournalError::Io {
                path: engine.config.journal.clone(),
                cause: std::io::Error::other(error),
            }));
        }
        // A restart from here on reads only what follows.
        engine.checkpoint();
        engine.seal();
        Ok(engine)
    }

    /// Takes the ring buffer for the reader task.
    pub fn take_events(&mut self) -> Option<aya::maps::RingBuf<aya::maps::MapData>> {
        self.kernel.take_events()
    }

    /// Takes the kernel's notes of agents' connections for the local API.
    pub fn take_agent_connections(&mut self) -> Option<crate::api::AgentConnections> {
        self.kernel.take_agent_connections()
    }

    /// The paths the watcher stats for replacement: protected, allowlisted, kept names.
    pub fn watched_paths(&self) -> WatchedPaths {
        self.policy.watched()
    }

    /// The HTTP client notifications go out with (host names resolved by the daemon).
    pub fn http_client(&self) -> reqwest::Client {
        self.client.clone()
    }

    pub fn hosts(&self) -> Vec<(usize, String)> {
        self.policy.hosts()
    }

    /// Forwarding receiver -> the last record it had, as the journal last noted.
    pub fn forwarded(&self) -> std::collections::BTreeMap<String, u64> {
        self.core.forwarded().clone()
    }

    /// Runs until a `Stop` or `Uninstall` command, or until every handle is gone; returns why
    /// it stopped, journaled.
    pub async fn run(mut self, mut commands: mpsc::Receiver<Command>) -> String {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while self.stopping.is_none() {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => self.command(command),
                    None => self.stopping = Some("every handle is gone".into()),
                },
                _ = tick.tick() => {
                    self.core.tick(now());
                    self.flush();
                }
            }
        }
        let reason = self.stopping.take().unwrap_or_default();
        self.core.note(Event::DaemonStopped {
            reason: reason.clone(),
        });
        self.flush();
        self.checkpoint();
        self.seal();
        reason
    }

    fn command(&mut self, command: Command) {
        let at = now();
        match command {
            Command::Kernel(input) => self.kernel_input(input, at),
            Command::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Command::List { all, reply } => {
                let _ = reply.send(self.core.list(all));
            }
            Command::Decide {
                id,
                decision,
                reason,
                decider,
                reply,
            } => {
                if let Some(error) = &self.journal_error {
                    let _ = reply.send(Err(DecideFailure::JournalUnwritable(error.clone())));
                    return;
                }
                let result = self.core.decide(&id, decision, reason, &decider, at);
                if let Ok(request) = &result {
                    info!(%id, ?decision, reviewer = %decider.reviewer, state = ?request.state, "decided");
                }
                self.flush();
                let result = match (result, &self.journal_error) {
                    (Ok(_), Some(error)) => Err(DecideFailure::NotYetRecorded(error.clone())),
                    (Ok(_), None) => self.core.get(&id).ok_or(DecideFailure::Gone),
                    (Err(error), _) => Err(error.into()),
                };
                let _ = reply.send(result);
            }
            Command::Refuse {
                request_id,
                reviewer,
                channel,
                why,
            } => self.core.refuse(&request_id, reviewer, channel, why, at),
            Command::Await {
                cgroup_id,
                id,
                exec,
                reply,
            } => {
                let found = match &exec {
                    Some((argv, since_ms)) => {
                        let since = OffsetDateTime::UNIX_EPOCH + Duration::from_millis(*since_ms);
                        self.core.request_for_exec(cgroup_id, argv, since)
                    }
                    None => self.core.request_for_cgroup(cgroup_id, id.as_deref()),
                };
                let waiting = match found {
                    None => Waiting::NoSuchRequest,
                    Some(request) if request.state == State::Pending => {
                        let (settled, receiver) = oneshot::channel();
                        self.waiters
                            .entry(request.id.clone())
                            .or_default()
                            .push(settled);
                        Waiting::Pending {
                            id: request.id,
                            settled: receiver,
                        }
                    }
                    Some(request) => Waiting::Settled {
                        id: request.id,
                        state: request.state,
                    },
                };
                let _ = reply.send(waiting);
            }
            Command::DeliveryDone {
                delivery,
                attempts,
                delivered,
            } => self.core.delivery_done(delivery, attempts, delivered, at),
            Command::Forwarded { receiver, seq } => self.core.note_forwarded(&receiver, seq),
            Command::Resolved { rule, addresses } => {
                match self.policy.add_resolved(&mut self.kernel, rule, addresses) {
                    Ok(Some(event)) => {
                        info!("protected destination resolves to new addresses");
                        self.core.note(event);
                    }
                    Ok(None) => {}
                    Err(error) => error!(%error, "cannot protect newly resolved addresses"),
                }
            }
            Command::PathsNow {
                protected,
                allowed,
                kept,
                name_guards,
                ancestors,
                made,
            } => {
                // Before a path on a btrfs loaded since is keyed as `stat` numbers it.
                self.kernel.learn_btrfs();
                let mut events =
                    self.policy
                        .follow(&mut self.kernel, &protected, &allowed, &name_guards);
                events.extend(self.policy.follow_kept(&mut self.kernel, &kept));
                // After the paths through them are followed.
                self.policy.keep_ancestors(&mut self.kernel, &ancestors);
                // Marks hold for the file systems of devices made before the look only now.
                if let Err(error) = self.kernel.note_looked(&made) {
                    error!(%error, "cannot tell the programs which file systems were looked at: agents are refused what is mounted over followed paths on them");
                }
                for event in events {
                    self.core.note(event);
                }
            }
            Command::MountsMade { reply } => {
                let _ = reply.send(self.kernel.mounts_made());
            }
            Command::Attached { reply } => {
                let _ = reply.send(self.kernel.attached());
            }
            Command::MountAncestorsNow {
                directories,
                looked,
            } => {
                let kept = match &directories {
                    Ok(directories) => self.kernel.set_mount_ancestors(directories, looked),
                    Err(_) => self.kernel.mount_ancestors_unknown(),
                };
                self.renames_refused = match (kept, directories) {
                    (Ok(()), Ok(_)) => None,
                    (Ok(()), Err(why)) => Some(why),
                    (Err(error), _) => {
                        error!(%error, "cannot tell the programs the directories above the host's mount points: agents rename no directory");
                        Some(format!("the programs' map of them: {error}"))
                    }
                };
            }
            Command::MountsNow { mounts } => {
                self.kernel.learn_btrfs();
                for event in self.policy.guard_mounts(&mut self.kernel, &mounts) {
                    self.core.note(event);
                }
            }
            Command::DevicesNow { devices } => {
                if let Err(error) = self.kernel.set_raw_devices(&devices) {
                    error!(%error, "cannot refuse agents the raw devices of drivers loaded now");
                }
            }
            Command::SetupKeys { reply } => {
                let _ = reply.send(self.setup_keys());
            }
            Command::Uninstall { by, reply } => {
                let _ = reply.send(self.uninstall(&by));
            }
            Command::StartAgent {
                name,
                owner,
                by,
                command,
                reply,
            } => {
                let _ = reply.send(self.start_agent(&name, owner, by, command));
            }
            Command::Announce {
                cgroup_id,
                argv,
                text,
                reply,
            } => {
                let _ = reply.send(self.core.announce(cgroup_id, argv, text, at));
            }
            Command::Justify {
                cgroup_id,
                id,
                text,
                reply,
            } => {
                let result = self.core.justify(cgroup_id, id.as_deref(), text);
                if let Ok(id) = &result {
                    info!(%id, "the agent justified its request");
                }
                let _ = reply.send(result);
            }
            Command::Stop { reason } => self.stopping = Some(reason),
        }
        self.flush();
    }

    fn kernel_input(&mut self, input: KernelInput, at: Now) {
        match input {
            KernelInput::Denied {
                target,
                filename,
                cgroup_id,
                cgroup,
                process,
                exec,
            } => {
                let mut denial = self
                    .policy
                    .denial(target, filename, cgroup_id, cgroup, process, exec);
                self.name_launched(&mut denial);
                // Agents name targets and cgroups: logged quoted, so no line of theirs can pass
                // for one of the daemon's.
                let what = denial.target.clone();
                let cgroup = denial.cgroup.clone();
                let (rule, kind) = (denial.rule.clone(), denial.kind);
                match self.core.on_denial(denial, at) {
                    Admission::New(id) => {
                        info!(%id, %rule, ?kind, target = ?what, cgroup = ?cgroup, "approval requested")
                    }
                    Admission::OverCap => {
                        warn!(target = ?what, cgroup = ?cgroup, "denied; the cgroup has its cap of pending requests")
                    }
                    Admission::Joined(_) => {}
                }
            }
            KernelInput::Tamper {
                hook,
                pid,
                uid,
                comm,
                cgroup,
                detail,
            } => {
                warn!(%hook, pid, cgroup = ?cgroup, "tamper attempt denied");
                self.core.on_tamper(
                    Event::TamperAttempt {
                        hook,
                        pid,
                        uid,
                        comm,
                        cgroup,
                        detail,
                        repeated: 0,
                    },
                    at,
                );
            }
            KernelInput::GrantUsed { grant_id, pid } => {
                if self.core.on_grant_used(grant_id, pid) {
                    info!(grant = grant_id, pid, "grant used");
                } else {
                    warn!(
                        grant = grant_id,
                        "kernel used a grant the daemon does not know"
                    );
                }
            }
        }
    }

    /// Carries out queued effects in order, stopping at a journal record that cannot be
    /// written (it is tried again on the next tick).
    fn flush(&mut self) {
        self.queue.extend(self.core.take_effects());
        while let Some(effect) = self.queue.pop_front() {
            match effect {
                Effect::Journal(event) => match self.journal.append(&event) {
                    Ok(_) => {
                        self.metrics.journaled(&event, self.waited(&event));
                        if self.journal_error.take().is_some() {
                            info!("the journal is writable again");
                        }
                    }
                    Err(error) => {
                        if self.journal_error.is_none() {
                            error!(%error, "journal write failed: nothing is granted until it can be written");
                        }
                        self.journal_error = Some(error.to_string());
                        self.queue.push_front(Effect::Journal(event));
                        return;
                    }
                },
                Effect::PutGrant {
                    grant_id,
                    key,
                    expires_boot_ns,
                    argv,
                } => {
                    let value = GrantValue {
                        expires_boot_ns,
                        grant_id,
                    };
                    let result = self
                        .kernel
                        .put_grant(&key, &value, argv)
                        .map_err(|error| error.to_string());
                    if let Err(error) = &result {
                        error!(%error, grant = grant_id, "the grant could not reach the kernel");
                    }
                    self.core.grant_put(grant_id, result, now());
                    self.run_next();
                }
                Effect::TakeGrant { grant_id, key } => {
                    let taken = self
                        .kernel
                        .take_grant(&key, grant_id)
                        .map_err(|error| error.to_string());
                    if let Err(error) = &taken {
                        warn!(%error, grant = grant_id, "cannot take an expired grant out; trying again");
                    }
                    self.core.grant_taken(grant_id, taken, now());
                    self.run_next();
                }
                Effect::Deliver {
                    delivery,
                    hook,
                    requests,
                } => self.deliver(delivery, hook, requests),
                Effect::Settled { request_id, state } => {
                    self.metrics.settled(state);
                    for waiter in self.waiters.remove(&request_id).unwrap_or_default() {
                        let _ = waiter.send(state);
                    }
                }
            }
        }
        self.waiters
            .retain(|_, waiters| waiters.iter().any(|waiter| !waiter.is_closed()));
        if self.journal.since_checkpoint() >= self.config.checkpoint_every {
            self.checkpoint();
        }
        let since_seal = self.journal.since_seal();
        if since_seal >= self.config.seal_every
            || (since_seal > 0 && self.last_seal.elapsed() >= self.config.seal_interval)
        {
            self.seal();
        }
    }

    /// Seals what the journal holds, if the host has a sealing key, anything is unsealed and
    /// every earlier record is on disk.
    fn seal(&mut self) {
        let Some(key) = self.sealing.as_mut() else {
            return;
        };
        if self.journal.since_seal() == 0 || !self.queue.is_empty() {
            return;
        }
        self.last_seal = std::time::Instant::now();
        if let Err(error) = self.journal.seal(key) {
            warn!(%error, "cannot seal the journal; trying again later");
        }
    }

    /// Makes the sealing key at `[daemon] seal_key`: the file, not named yet, goes into the
    /// kernel's daemon files before the key is written into it and it is linked at its path, so
    /// no agent ever reads it. Seals at once.
    fn setup_keys(&mut self) -> Result<String, String> {
        if self.sealing.is_some() {
            return Err(format!(
                "the journal is already sealed with the key at {}",
                self.config.seal_key.display()
            ));
        }
        let kernel = &mut self.kernel;
        let (key, verification) = SealKey::create(&self.config.seal_key, |file| {
            kernel
                .add_daemon_file(&crate::policy::target_of(file), daemon_file::SECRET)
                .map_err(|error| error.to_string())
        })
        .map_err(|error| error.to_string())?;
        info!(key = %self.config.seal_key.display(), "the journal is sealed from now on");
        self.sealing = Some(key);
        self.seal();
        Ok(verification.to_string())
    }

    /// Effects that follow from the one just carried out come before the rest of the queue.
    fn run_next(&mut self) {
        for effect in self.core.take_effects().into_iter().rev() {
            self.queue.push_front(effect);
        }
    }

    /// Writes the core's state, if every earlier record is on disk.
    fn checkpoint(&mut self) {
        if !self.queue.is_empty() {
            return;
        }
        let state = self.core.snapshot();
        if let Err(error) = self.journal.append(&Event::Checkpoint { state }) {
            warn!(%error, "cannot write a checkpoint");
        }
    }

    fn deliver(&self, delivery: u64, hook: usize, requests: Vec<Request>) {
        let Some(webhook) = self.config.webhooks.get(hook).cloned() else {
            return;
        };
        let body = match serde_json::to_vec(&notify::message(&webhook.kind, &requests)) {
            Ok(body) => body,
            Err(error) => {
                error!(%error, "cannot encode request message");
                return;
            }
        };
        let client = self.client.clone();
        let handle = self.handle.clone();
        tokio::spawn(async move {
            let mut attempts = Vec::new();
            let delivered =
                notify::deliver(&client, &webhook, &body, |attempt| attempts.push(attempt)).await;
            handle
                .send(Command::DeliveryDone {
                    delivery,
                    attempts,
                    delivered,
                })
                .await;
        });
    }

    /// How long the request of a decision record had waited for it.
    fn waited(&self, event: &Event) -> Option<Duration> {
        let Event::Decision { request_id, .. } = event else {
            return None;
        };
        let request = self.core.get(request_id)?;
        (OffsetDateTime::now_utc() - request.created)
            .try_into()
            .ok()
    }

    fn status(&self) -> Status {
        let counts = self.core.counts();
        Status {
            enforcing: self.kernel.pins_are_ours(&self.config.pin_dir),
            since: self.core.enforcing_since(),
            pid: std::process::id(),
            pending_requests: counts.pending,
            retained_requests: counts.retained,
            active_grants: counts.grants,
            denials_over_cap: counts.over_cap,
            denied: self.kernel.counter(Counter::Denied),
            grants_used: self.kernel.counter(Counter::GrantsUsed),
            events_dropped: self.kernel.counter(Counter::EventsDropped),
            tamper_attempts: self.kernel.counter(Counter::Tamper),
            journal_writable: self.journal_error.is_none(),
            journal_error: self.journal_error.clone(),
            directory_renames_refused: self.renames_refused.clone(),
            protected: self.policy.protected_status(),
            protected_files: self.kernel.path_entries(PathList::Files).len(),
            protected_files_capacity: gatekeeper_common::MAX_PROTECTED_FILES,
            unguarded_mounts: (self.policy.unguarded_mounts().iter())
                .map(|path| path.display().to_string())
                .collect(),
        }
    }

    /// Makes cgroup `name` below the first agent cgroup for `gatekeeper agent run` and records
    /// who owns the agent that will run there.
    fn start_agent(
        &mut self,
        name: &str,
        owner: String,
        by: String,
        command: Vec<String>,
    ) -> Result<PathBuf, String> {
        cgroups::check_agent_name(name)?;
        let root = self
            .config
            .agent_cgroups
            .first()
            .ok_or("no agent cgroup is configured")?;
        let cgroup = root.join(name);
        std::fs::create_dir(&cgroup).map_err(|error| match error.kind() {
            std::io::ErrorKind::AlreadyExists => {
                format!(
                    "{} exists: another agent runs under that name",
                    cgroup.display()
                )
            }
            _ => format!("cannot make {}: {error}", cgroup.display()),
        })?;
        let cgroup_id = match cgroups::id_of(&cgroup) {
            Ok(id) => id,
            Err(error) => {
                let _ = std::fs::remove_dir(&cgroup);
                return Err(error.to_string());
            }
        };
        self.core
            .agent_started(cgroup.display().to_string(), cgroup_id, owner, by, command);
        self.flush();
        if let Some(error) = &self.journal_error {
            let _ = std::fs::remove_dir(&cgroup);
            return Err(format!("the journal cannot be written: {error}"));
        }
        Ok(cgroup)
    }

    /// A denial in an agent `gatekeeper agent run` started (in its cgroup, or the nearest
    /// ancestor of it that it started) gets that agent's owner, and its cgroup as made: the
    /// launcher may have removed it before the event got here. Looked up by cgroup id:
    /// renaming a cgroup changes no owner.
    fn name_launched(&self, denial: &mut Denial) {
        let launched = self.core.launched(denial.cgroup_id).or_else(|| {
            Path::new(&denial.cgroup)
                .ancestors()
                .take_while(|dir| cgroups::is_within(dir, &self.config.agent_cgroups))
                .filter_map(|dir| cgroups::id_of(dir).ok())
                .find_map(|id| self.core.launched(id))
        });
        let Some(agent) = launched else {
            return;
        };
        if denial.cgroup_id == agent.cgroup_id {
            denial.cgroup = agent.cgroup.clone();
        }
        denial.owner = Some(agent.owner.clone());
    }

    /// Ends enforcement for good: journals it and removes the pins, which detaches the programs.
    fn uninstall(&mut self, by: &str) -> Result<(), String> {
        let pin_dir = self.config.pin_dir.clone();
        self.core.note(Event::Uninstalled {
            pin_dir: pin_dir.display().to_string(),
            by: by.to_owned(),
        });
        self.flush();
        if let Some(error) = &self.journal_error {
            return Err(format!("the journal cannot be written: {error}"));
        }
        loader::uninstall(&pin_dir).map_err(|error| error.to_string())?;
        self.stopping = Some("uninstalled".into());
        Ok(())
    }
}
