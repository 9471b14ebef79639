//! The configured policy as the kernel holds it: agent cgroups, protected and allowlisted files
//! (followed across replacement), protected destinations (host names resolved again over time),
//! and the rule behind each denial.

use std::{
    collections::BTreeMap,
    net::{IpAddr, ToSocketAddrs as _},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use gatekeeper_common::{PortRanges, Setting, TARGET_KIND_CONNECT, Target};

use crate::{
    cgroups,
    config::{Config, DestinationSpec, ExecRule},
    destinations::{self, Destination, DestinationError, Prefix, Reach},
    handle::ProtectedStatus,
    journal::Event,
    loader::{Kernel, PathList},
    requests::{Denial, Kind, Process},
};

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
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
    Map(#[from] aya::maps::MapError),
    #[error("protect.connect[{index}].host: cannot resolve {host}: {cause}")]
    Resolve {
        index: usize,
        host: String,
        cause: String,
    },
    #[error("protect.connect: {0}")]
    Destinations(#[from] DestinationError),
    #[error("the host's network namespace ({HOST_NETNS}): {0}")]
    HostNetns(std::io::Error),
}

/// The host's network namespace is init's (the daemon itself might run in one of its own).
const HOST_NETNS: &str = "/proc/1/ns/net";

/// The inode number of the host's network namespace: agents in any other may set its sysctls.
fn host_netns() -> Result<u32, PolicyError> {
    let metadata = std::fs::metadata(HOST_NETNS).map_err(PolicyError::HostNetns)?;
    // Namespace inode numbers are the kernel's 32-bit `ns_common.inum`.
    Ok(metadata.ino() as u32)
}

/// The kernel's `dev_t` encoding (major << 20 | minor) of a userspace `st_dev`.
pub fn kernel_dev(st_dev: u64) -> u32 {
    (libc::major(st_dev) << 20) | libc::minor(st_dev)
}

/// The (device, inode) a path names now.
pub fn exec_target_of(path: &Path) -> std::io::Result<Target> {
    let metadata = std::fs::metadata(path)?;
    Ok(Target::exec(kernel_dev(metadata.dev()), metadata.ino()))
}

struct WatchedPath {
    path: PathBuf,
    name: String,
    current: Option<Target>,
    /// Files the path named before a replacement. They stay protected: a hard link made
    /// beforehand would otherwise keep the old binary runnable.
    previous: Vec<Target>,
}

pub struct Policy {
    config: Arc<Config>,
    protected: Vec<WatchedPath>,
    allowed: Vec<WatchedPath>,
    /// One per `[[protect.connect]]` rule, with its addresses resolved.
    reaches: Vec<Reach>,
    /// What the kernel's destination trie holds now.
    installed_nets: BTreeMap<Prefix, PortRanges>,
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

/// Puts the files `paths` name into the kernel's `list` and takes out what an earlier
/// configuration left.
fn install_paths(
    kernel: &mut Kernel,
    list: PathList,
    paths: impl Iterator<Item = (PathBuf, String)>,
) -> Result<Vec<WatchedPath>, PolicyError> {
    let mut installed = Vec::new();
    for (index, (path, name)) in paths.enumerate() {
        let target = exec_target_of(&path).map_err(|cause| PolicyError::ProtectedPath {
            path: path.clone(),
            cause,
        })?;
        kernel.add_path(list, target, index as u32)?;
        installed.push(WatchedPath {
            path,
            name,
            current: Some(target),
            previous: Vec::new(),
        });
    }
    kernel.keep_paths(list, |target| {
        installed
            .iter()
            .any(|path| path.current.as_ref() == Some(target))
    })?;
    Ok(installed)
}

impl Policy {
    /// Fills the kernel's maps with the configuration. An earlier daemon's maps are adopted: the
    /// new policy goes in first and what is no longer configured comes out after, so nothing is
    /// unprotected in between.
    pub fn install(config: Arc<Config>, kernel: &mut Kernel) -> Result<Self, PolicyError> {
        let mut agents = Vec::new();
        for path in &config.agent_cgroups {
            let id = cgroups::id_of(path).map_err(|cause| PolicyError::AgentCgroup {
                path: path.clone(),
                cause,
            })?;
            agents.push(id);
        }
        kernel.set_agent_cgroups(&agents)?;
        let protected = install_paths(
            kernel,
            PathList::Protected,
            config
                .exec_rules
                .iter()
                .map(|rule| (rule.path.clone(), rule.name.clone())),
        )?;
        let allowed = install_paths(
            kernel,
            PathList::Allowed,
            config
                .allowed
                .iter()
                .map(|path| (path.clone(), "allowlisted".to_owned())),
        )?;
        kernel.set_setting(Setting::ExecAllowlist, u32::from(config.exec_allowlist))?;
        kernel.set_setting(Setting::HostNetns, host_netns()?)?;
        kernel.set_daemon_pid(std::process::id())?;
        let reaches = config
            .connect_rules
            .iter()
            .enumerate()
            .map(|(index, rule)| {
                let prefixes = match &rule.destination {
                    DestinationSpec::Cidr(prefix) => vec![*prefix],
                    DestinationSpec::Host(host) => resolve(host)
                        .map_err(|cause| PolicyError::Resolve {
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
            .collect::<Result<Vec<_>, PolicyError>>()?;
        let mut policy = Self {
            installed_nets: kernel.nets(),
            config,
            protected,
            allowed,
            reaches,
        };
        policy.sync_nets(kernel)?;
        Ok(policy)
    }

    /// Makes the kernel's destination trie hold exactly what the rules compile to.
    fn sync_nets(&mut self, kernel: &mut Kernel) -> Result<(), PolicyError> {
        let table = destinations::compile(&self.reaches)?;
        for (prefix, ranges) in &table {
            if self.installed_nets.get(prefix) != Some(ranges) {
                kernel.put_net(prefix, ranges)?;
            }
        }
        let stale: Vec<Prefix> = self
            .installed_nets
            .keys()
            .filter(|prefix| !table.contains_key(prefix))
            .copied()
            .collect();
        for prefix in stale {
            kernel.remove_net(&prefix)?;
        }
        self.installed_nets = table;
        Ok(())
    }

    /// The paths to watch for replacement: (protected, allowlisted).
    pub fn watched(&self) -> (Vec<PathBuf>, Vec<PathBuf>) {
        let paths = |list: &[WatchedPath]| list.iter().map(|entry| entry.path.clone()).collect();
        (paths(&self.protected), paths(&self.allowed))
    }

    /// Follows the paths to the files they name now; journals each move. A file a path named
    /// before stays in the map.
    pub fn follow(
        &mut self,
        kernel: &mut Kernel,
        protected_now: &[Option<Target>],
        allowed_now: &[Option<Target>],
    ) -> Vec<Event> {
        let mut moved = follow_list(
            kernel,
            PathList::Protected,
            &mut self.protected,
            protected_now,
        );
        moved.extend(follow_list(
            kernel,
            PathList::Allowed,
            &mut self.allowed,
            allowed_now,
        ));
        moved
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
    pub fn add_resolved(
        &mut self,
        kernel: &mut Kernel,
        index: usize,
        addresses: Vec<IpAddr>,
    ) -> Result<Option<Event>, PolicyError> {
        let Some(reach) = self.reaches.get_mut(index) else {
            return Ok(None);
        };
        let before = reach.prefixes.clone();
        for address in addresses {
            let prefix = Prefix::host(address);
            if !reach.prefixes.contains(&prefix) {
                reach.prefixes.push(prefix);
            }
        }
        if reach.prefixes == before {
            return Ok(None);
        }
        if let Err(error) = self.sync_nets(kernel) {
            if let Some(reach) = self.reaches.get_mut(index) {
                reach.prefixes = before;
            }
            return Err(error);
        }
        let Some(rule) = self.config.connect_rules.get(index) else {
            return Ok(None);
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
        Ok(Some(Event::HostResolved {
            rule: rule.name.clone(),
            host,
            addresses,
        }))
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
    pub fn denial(
        &self,
        target: Target,
        filename: String,
        cgroup_id: u64,
        cgroup: String,
        process: Process,
    ) -> Denial {
        let (kind, rule, approval, target_text, destination) = if target.kind == TARGET_KIND_CONNECT
        {
            let (address, port, protocol) = target.destination();
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
            let rule = self.exec_rule(&target);
            let fallback = if self.config.exec_allowlist {
                "not on the allowlist"
            } else {
                "protected binary"
            };
            (
                Kind::Exec,
                rule.map_or(fallback, |rule| rule.name.as_str()),
                rule.map(|rule| rule.approval).unwrap_or_default(),
                filename,
                None,
            )
        };
        let owner = self.config.owner_of(Path::new(&cgroup)).map(str::to_owned);
        Denial {
            kind,
            rule: rule.to_owned(),
            target: target_text,
            target_key: target,
            destination,
            cgroup,
            cgroup_id,
            process,
            owner,
            approvals_required: approval.approvals,
            require_reason: approval.require_reason,
        }
    }

    pub fn protected_status(&self) -> Vec<ProtectedStatus> {
        self.protected
            .iter()
            .map(|rule| ProtectedStatus {
                name: rule.name.clone(),
                path: rule.path.display().to_string(),
                dev: rule.current.map(|target| target.data[0] as u32),
                ino: rule.current.map(|target| target.data[1]),
            })
            .collect()
    }
}

fn follow_list(
    kernel: &mut Kernel,
    list: PathList,
    entries: &mut [WatchedPath],
    now: &[Option<Target>],
) -> Vec<Event> {
    let mut moved = Vec::new();
    for (index, (entry, target)) in entries.iter_mut().zip(now).enumerate() {
        // Mid-replacement the path may briefly not exist: keep the old entry meanwhile.
        let Some(target) = *target else {
            continue;
        };
        if entry.current == Some(target) {
            continue;
        }
        if let Err(error) = kernel.add_path(list, target, index as u32) {
            tracing::error!(%error, path = %entry.path.display(), "cannot follow replaced file");
            continue;
        }
        entry.previous.extend(entry.current.replace(target));
        tracing::info!(path = %entry.path.display(), "path now names a new file");
        moved.push(Event::ProtectionUpdated {
            path: entry.path.display().to_string(),
            dev: target.data[0] as u32,
            ino: target.data[1],
        });
    }
    moved
}
