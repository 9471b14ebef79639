//! `gatekeeper daemon`: starts the engine and the tasks around it, and wires them together.
//!
//! The engine owns the state; the ring-buffer reader, the path watcher, the resolver, the local
//! socket, the HTTP listener and the signal handler only send it commands.

use std::{sync::Arc, time::Duration};

use gatekeeper_common::{MAX_MOUNT_ANCESTORS, Target};

use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::{
    api::{self, ApiError, HttpState, LocalSockets},
    config::{Config, MOUNTINFO, mount_table},
    engine::{Engine, EngineError},
    enrich,
    events::EventReader,
    handle::{self, Command, Handle},
    journal::forward::Forwarder,
    metrics::{self, Metrics},
    mount_ancestors,
    policy::{self, Digest, WatchedPaths, content_of, exec_target_of, node_of},
    resolver::HostResolver,
};

/// How often protected paths are checked for replacement (the promise is within 2 s).
const PATHS_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("event ring buffer: {0}")]
    Events(std::io::Error),
    #[error("signal handler: {0}")]
    Signals(std::io::Error),
    #[error("the kernel map {0} was taken already")]
    MapTaken(&'static str),
}

/// Raises the soft open-file limit to the hard one: connections must never starve the daemon
/// of descriptors for its journal and maps.
fn raise_open_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(error) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                warn!(%error, "cannot raise the open-file limit");
            }
        }
        Ok(_) => {}
        Err(error) => warn!(%error, "cannot read the open-file limit"),
    }
}

/// Sends the mount points each time the mount table changes, so that a file system mounted below
/// a host path is guarded at once: the kernel wakes a poll of the mount table for priority data
/// on every change. The table is also read every [`PATHS_INTERVAL`], should no wakeup come.
/// Each change also has the paths looked at at once (`look_now`): until then the kernel
/// refuses agents what is mounted over places the daemon cares about. On each change, and each
/// attach the programs count, the directories above the mount points are looked at: agents
/// rename none of them (their renames of any directory wait for this look).
async fn watch_mounts(handle: Handle, look_now: Arc<tokio::sync::Notify>) {
    use tokio::io::{Interest, unix::AsyncFd};
    // SAFETY: the File owns its descriptor, open until the AsyncFd drops it.
    let changes = std::fs::File::open(MOUNTINFO).and_then(|table| unsafe {
        AsyncFd::register_with_interest(table, Interest::PRIORITY).map_err(|error| error.into())
    });
    let changes = match changes {
        Ok(changes) => Some(changes),
        Err(error) => {
            warn!(%error, "cannot watch {MOUNTINFO} for changes: it is read every half second");
            None
        }
    };
    let mut known = Vec::new();
    // The attach count the directories above the mount points of `known` were last sent for.
    let mut ancestors_for: Option<u64> = None;
    let mut layers_seen = mount_ancestors::LayerHandles::default();
    let mut unreadable = false;
    let mut ancestors_failed = false;
    let mut interval = tokio::time::interval(PATHS_INTERVAL);
    loop {
        match &changes {
            Some(changes) => tokio::select! {
                ready = changes.ready(Interest::PRIORITY) => {
                    if let Ok(mut ready) = ready {
                        ready.clear_ready();
                    }
                }
                _ = interval.tick() => {}
            },
            None => {
                interval.tick().await;
            }
        }
        // Before the table: what is attached after this count waits for the next read.
        let Some(attached) = handle.attached().await else {
            return;
        };
        // Bytes: a name that is no UTF-8 (an agent may make one) must not hide the others.
        let mounts = match tokio::fs::read(MOUNTINFO).await {
            Ok(mounts) => mounts,
            // Said once; the next change is still looked for.
            Err(error) => {
                if !unreadable {
                    warn!(%error, "cannot read {MOUNTINFO}: mounts made now are not guarded, and agents rename no directory");
                }
                unreadable = true;
                known.clear();
                continue;
            }
        };
        unreadable = false;
        let changed = mounts != known;
        if !changed && ancestors_for == Some(attached) {
            continue;
        }
        let table = mount_table(&mounts);
        if changed {
            let command = Command::MountsNow {
                mounts: table.clone(),
            };
            if !handle.send(command).await {
                return;
            }
            look_now.notify_one();
            known = mounts;
            ancestors_for = None;
        }
        let mut layers = std::mem::take(&mut layers_seen);
        let looked = tokio::task::spawn_blocking(move || {
            let looked = mount_ancestors::mount_ancestors(&table, &mut layers);
            (looked, layers)
        })
        .await
        .map(|(looked, layers)| {
            layers_seen = layers;
            looked
        });
        let directories = match looked {
            Ok(Ok(directories)) if directories.len() <= MAX_MOUNT_ANCESTORS as usize => {
                ancestors_failed = false;
                ancestors_for = Some(attached);
                Ok(directories)
            }
            Ok(Ok(directories)) => {
                let why = format!(
                    "{} directories above the host's mount points, more than the programs' map holds ({MAX_MOUNT_ANCESTORS})",
                    directories.len()
                );
                error!("{why}: agents rename no directory");
                ancestors_for = Some(attached);
                Err(why)
            }
            // Looked at again at the next tick.
            Ok(Err(error)) => {
                if !ancestors_failed {
                    error!(%error, "cannot look at the directories above the host's mount points: agents rename no directory");
                }
                ancestors_failed = true;
                Err(error.to_string())
            }
            Err(error) => {
                error!(%error, "looking at the directories above the mount points failed: agents rename no directory");
                Err(format!("the look at them failed: {error}"))
            }
        };
        let command = Command::MountAncestorsNow {
            directories,
            looked: attached,
        };
        if !handle.send(command).await {
            return;
        }
    }
}

/// Reads the host's device numbers every [`PATHS_INTERVAL`] and sends them when they change: a
/// driver the host loads now (an NVMe disk plugged in) gets its major from the kernel only then,
/// and is refused to agents until this has judged it.
async fn watch_devices(handle: Handle) {
    let mut known = Vec::new();
    let mut unreadable = false;
    let mut interval = tokio::time::interval(PATHS_INTERVAL);
    loop {
        interval.tick().await;
        match tokio::task::spawn_blocking(crate::devices::read).await {
            Ok(Ok(devices)) if devices != known => {
                unreadable = false;
                let command = Command::DevicesNow {
                    devices: devices.clone(),
                };
                if !handle.send(command).await {
                    return;
                }
                known = devices;
            }
            Ok(Ok(_)) => {}
            // Said once; the kernel keeps the last list.
            Ok(Err(error)) => {
                if !unreadable {
                    warn!(%error, "cannot read the host's device numbers: drivers loaded now are not refused to agents");
                }
                unreadable = true;
            }
            Err(error) => warn!(%error, "reading the host's device numbers failed"),
        }
    }
}

/// Stats the watched paths every [`PATHS_INTERVAL`], and as the mount table changes, off the
/// async threads; an allowlisted path's content is read again only when it names another file.
async fn watch_paths(paths: WatchedPaths, handle: Handle, look_now: Arc<tokio::sync::Notify>) {
    let paths = Arc::new(paths);
    let mut known: Vec<Option<(Target, Digest)>> = Vec::new();
    let mut interval = tokio::time::interval(PATHS_INTERVAL);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            () = look_now.notified() => {}
        }
        // Before the stats: a file system made after this count waits for the next look.
        let Some(made) = handle.mounts_made().await else {
            return;
        };
        let paths = paths.clone();
        let stat = tokio::task::spawn_blocking(move || {
            // First: a file system mounted over one of them after this look is one the paths
            // below are looked at through.
            let ancestors = (paths.ancestors.iter())
                .map(|path| node_of(path).ok())
                .collect();
            let protected = (paths.protected.iter())
                .map(|path| exec_target_of(path).ok())
                .collect();
            let kept = (paths.kept.iter()).map(|path| node_of(path).ok()).collect();
            let name_guards = (paths.name_guards.iter())
                .map(|path| exec_target_of(path).ok())
                .collect();
            let allowed: Vec<_> = (paths.allowed.iter())
                .enumerate()
                .map(|(index, path)| {
                    let target = exec_target_of(path).ok()?;
                    match known.get(index).copied().flatten() {
                        Some((same, digest)) if same == target => Some((target, digest)),
                        _ => content_of(path).ok(),
                    }
                })
                .collect();
            (protected, allowed, kept, name_guards, ancestors)
        });
        let Ok((protected, allowed, kept, name_guards, ancestors)) = stat.await else {
            known = Vec::new();
            continue;
        };
        known = allowed.clone();
        let now = Command::PathsNow {
            protected,
            allowed,
            kept,
            name_guards,
            ancestors,
            made,
        };
        if !handle.send(now).await {
            return;
        }
    }
}

/// Resolves every host rule again each interval; a failed lookup keeps what was protected.
async fn resolve_hosts(
    hosts: Vec<(usize, String)>,
    interval: Duration,
    resolver: HostResolver,
    handle: Handle,
) {
    if hosts.is_empty() {
        return;
    }
    let mut ticks = tokio::time::interval(interval);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        for (rule, host) in &hosts {
            match resolver.addresses(host).await {
                Ok(addresses) => {
                    if !handle
                        .send(Command::Resolved {
                            rule: *rule,
                            addresses,
                        })
                        .await
                    {
                        return;
                    }
                }
                Err(error) => {
                    warn!(%host, %error, "cannot resolve protected host; keeping its addresses")
                }
            }
        }
    }
}

/// Returns the allocator's free pages to the kernel (glibc's; other C libraries have no call
/// for it).
fn give_back_freed_memory() {
    // SAFETY: malloc_trim only releases memory no allocation holds.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Runs the daemon until SIGINT, SIGTERM or `gatekeeper uninstall`.
pub async fn run(config: Config) -> Result<(), DaemonError> {
    raise_open_file_limit();
    let config = Arc::new(config);
    let (commands, inbox) = mpsc::channel(handle::QUEUE);
    let handle = Handle::new(commands);
    // Bound before the policy names the sockets to the kernel, listening only after; gone
    // again if the engine cannot start (no API while nothing is enforced).
    let sockets = LocalSockets::bind(&config)?;
    let metrics = Arc::new(Metrics::new());
    let resolver = HostResolver::default();
    let resolved = policy::look_up_hosts(&config, &resolver).await;
    let started = Engine::start(
        config.clone(),
        handle.clone(),
        metrics.clone(),
        &resolver,
        &resolved,
    );
    let mut engine = match started {
        Ok(engine) => engine,
        Err(error) => {
            sockets.remove();
            return Err(error.into());
        }
    };
    // Loading parsed the kernel's BTF twice: megabytes freed since, which glibc would otherwise
    // keep resident for the daemon's whole life.
    give_back_freed_memory();
    let ring = engine
        .take_events()
        .ok_or(DaemonError::MapTaken(gatekeeper_common::maps::EVENTS))?;
    let reader = EventReader::new(ring).map_err(DaemonError::Events)?;
    let agent_connections = engine
        .take_agent_connections()
        .ok_or(DaemonError::MapTaken(
            gatekeeper_common::maps::AGENT_CONNECTIONS,
        ))?;

    let local = sockets.listen(&config, handle.clone(), agent_connections)?;
    let http = match config.listen {
        Some(addr) => {
            let state = HttpState::new(&config, handle.clone(), engine.http_client());
            Some(api::bind_http(addr, state).await?)
        }
        None => None,
    };
    let metrics = match config.metrics {
        Some(addr) => Some(metrics::bind(addr, metrics, handle.clone()).await?),
        None => None,
    };
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(DaemonError::Signals)?;
    info!(socket = %config.socket.display(), listen = ?config.listen, "enforcing");
    // Under systemd (Type=notify), units ordered after this one start only now.
    if let Err(error) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
        warn!(%error, "cannot tell systemd that enforcement is live");
    }

    let events = tokio::spawn(enrich::forward_events(
        reader,
        config.agent_cgroups.clone(),
        handle.clone(),
    ));
    let look_now = Arc::new(tokio::sync::Notify::new());
    let paths = tokio::spawn(watch_paths(
        engine.watched_paths(),
        handle.clone(),
        look_now.clone(),
    ));
    let mounts = tokio::spawn(watch_mounts(handle.clone(), look_now));
    let devices = tokio::spawn(watch_devices(handle.clone()));
    let hosts = tokio::spawn(resolve_hosts(
        engine.hosts(),
        config.resolve_interval,
        resolver.clone(),
        handle.clone(),
    ));
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_else(|_| "-".to_owned());
    let forwarded = engine.forwarded();
    let forwarders: Vec<_> = config
        .forwards
        .iter()
        .map(|forward| {
            tokio::spawn(
                Forwarder {
                    receiver: forward.clone(),
                    journal: config.journal.clone(),
                    after: forwarded.get(&forward.name()).copied(),
                    host: host.clone(),
                    resolver: resolver.clone(),
                    handle: handle.clone(),
                }
                .run(),
            )
        })
        .collect();
    let (stop_local, local_stopped) = tokio::sync::oneshot::channel::<()>();
    let local = tokio::spawn(local.serve(async {
        let _ = local_stopped.await;
    }));
    let http = http.map(tokio::spawn);
    let metrics = metrics.map(tokio::spawn);
    let signals = {
        let handle = handle.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
            handle
                .send(Command::Stop {
                    reason: "stopped; pinned programs keep enforcing".into(),
                })
                .await;
        })
    };
    let watchdog = {
        let handle = handle.clone();
        tokio::spawn(async move {
            // A reader that stops would leave denials unanswered: stop loudly instead.
            let reason = match events.await {
                Ok(Ok(())) => return,
                Ok(Err(error)) => format!("event ring buffer failed: {error}"),
                Err(error) => format!("event reader failed: {error}"),
            };
            handle.send(Command::Stop { reason }).await;
        })
    };
    drop(handle);

    let reason = engine.run(inbox).await;
    info!(%reason, "stopping");
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    let _ = stop_local.send(());
    let _ = local.await;
    for task in [paths, mounts, devices, hosts, signals, watchdog]
        .into_iter()
        .chain(forwarders)
    {
        task.abort();
    }
    for listener in [http, metrics].into_iter().flatten() {
        listener.abort();
    }
    crate::api::remove_socket_files(&config.socket);
    if reason.starts_with("event") {
        return Err(DaemonError::Events(std::io::Error::other(reason)));
    }
    Ok(())
}
