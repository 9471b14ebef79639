//! The configured policy as the kernel holds it: agent cgroups, protected and allowlisted
//! binaries and protected files (followed across replacement), protected destinations (host names
//! resolved again over time), and the rule behind each denial.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    ffi::OsString,
    net::IpAddr,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use gatekeeper_common::{
    MAX_PROTECTED_FILES, NameKey, PortRanges, Setting, TARGET_KIND_CONNECT, TARGET_KIND_FILE,
    TARGET_KIND_UNIX, Target, daemon_file, file_rule,
};

mod handles;

use handles::FileHandle;

use crate::{
    cgroups,
    config::{
        Config, ConnectRule, DestinationSpec, ExecRule, FileRule, MOUNTINFO, Mount, host_guards,
        mount_table,
    },
    destinations::{self, Destination, DestinationError, Prefix, Reach},
    handle::ProtectedStatus,
    journal::Event,
    loader::{Kernel, PathList},
    requests::{Bind, Denial, ExecCall, Kind, Process},
    resolver::HostResolver,
};

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read this host's mounts ({MOUNTINFO}) to guard those below host paths: {0}")]
    Mounts(std::io::Error),
    #[error("cannot read this host's device numbers to refuse agents raw devices: {0}")]
    Devices(std::io::Error),
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
    #[error("daemon file {path}: {cause}")]
    DaemonFile {
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
    #[error("namespace {path}: {cause}")]
    Namespace {
        path: &'static str,
        cause: std::io::Error,
    },
    #[error("init's root directory (/proc/1/root): {0}")]
    HostRoot(std::io::Error),
    #[error(
        "{path} is on btrfs, whose files the programs cannot tell apart on this kernel (each \
         subvolume numbers its files itself, under a device number of its own, and there was no \
         usable BTF for btrfs at /sys/kernel/btf/btrfs when they loaded; the log says why): \
         refusing to run rather than guard nothing there; start the daemon again (btrfs was \
         loaded during its start), run a kernel built with CONFIG_DEBUG_INFO_BTF_MODULES=y, or \
         keep the daemon's files, the rules' paths and the host's configuration off btrfs"
    )]
    Btrfs { path: PathBuf },
}

/// The device number of the superblock `path` is on (kernel encoding), which for btrfs is not
/// `stat`'s (a subvolume's): that of its mount in /proc/self/mountinfo.
fn superblock_device(path: &Path) -> std::io::Result<u32> {
    use std::os::unix::ffi::OsStrExt as _;
    let name = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: statx is plain data, all zeroes a valid value.
    let mut statx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a statx buffer that outlive the call.
    let done = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            name.as_ptr(),
            0,
            libc::STATX_MNT_ID,
            &mut statx,
        )
    };
    if done != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mounts = std::fs::read(MOUNTINFO)?;
    (crate::config::mount_table(&mounts).iter())
        .find(|mount| mount.id() == statx.stx_mnt_id)
        .and_then(|mount| mount.kernel_device())
        .ok_or_else(|| {
            std::io::Error::other(format!("no mount {} in {MOUNTINFO}", statx.stx_mnt_id))
        })
}

/// Whether `path` is on btrfs (not if it cannot be told).
fn on_btrfs(path: &Path) -> bool {
    use nix::sys::statfs::{BTRFS_SUPER_MAGIC, statfs};
    statfs(path).is_ok_and(|fs| fs.filesystem_type() == BTRFS_SUPER_MAGIC)
}

/// Refuses `path` if it is on btrfs and the programs cannot read btrfs inodes (`knows_btrfs`,
/// see [`PolicyError::Btrfs`]); a path that does not exist is not refused here.
fn keyable(path: &Path, knows_btrfs: bool) -> Result<(), PolicyError> {
    if !knows_btrfs && on_btrfs(path) {
        return Err(PolicyError::Btrfs {
            path: path.to_owned(),
        });
    }
    Ok(())
}

/// The inode number of the namespace behind `path` (a /proc/PID/ns/* link).
fn namespace(path: &'static str) -> Result<u32, PolicyError> {
    let metadata =
        std::fs::metadata(path).map_err(|cause| PolicyError::Namespace { path, cause })?;
    // Namespace inode numbers are the kernel's 32-bit `ns_common.inum`.
    Ok(metadata.ino() as u32)
}

/// (device, inode) of init's root directory.
fn host_root() -> Result<Target, PolicyError> {
    exec_target_of(Path::new("/proc/1/root")).map_err(PolicyError::HostRoot)
}

/// The kernel's `dev_t` encoding (major << 20 | minor) of a userspace `st_dev`.
pub fn kernel_dev(st_dev: u64) -> u32 {
    (libc::major(st_dev) << 20) | libc::minor(st_dev)
}

/// The (device, inode) a path names now.
pub fn exec_target_of(path: &Path) -> std::io::Result<Target> {
    Ok(target_of(&std::fs::metadata(path)?))
}

/// The (device, inode) of the file `metadata` describes.
pub fn target_of(metadata: &std::fs::Metadata) -> Target {
    Target::exec(kernel_dev(metadata.dev()), metadata.ino())
}

/// SHA-256 of a file's content.
pub type Digest = [u8; 32];

/// The file `path` names now and the digest of its content, read from one open file so the two
/// belong together.
pub fn content_of(path: &Path) -> std::io::Result<(Target, Digest)> {
    use sha2::Digest as _;
    let mut file = std::fs::File::open(path)?;
    let metadata = file.metadata()?;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok((
        Target::exec(kernel_dev(metadata.dev()), metadata.ino()),
        hasher.finalize().into(),
    ))
}

struct WatchedPath {
    path: PathBuf,
    name: String,
    /// What the kernel's map holds for each file the path names: the rule's index, or for a
    /// file rule its [`file_rule`] bits.
    value: u32,
    current: Option<Target>,
    /// Files the path named before a replacement. They stay protected while they exist: a hard
    /// link made beforehand would otherwise keep the old binary runnable.
    previous: Vec<Target>,
    /// The handles of `current` and `previous` where the file system gives them: a file that is
    /// gone leaves the map, before its inode number names another file.
    handles: Vec<(Target, FileHandle)>,
    /// For an allowlisted path: the content that was allowed.
    digest: Option<Digest>,
    /// For an allowlisted path: files it named that are not allowed (other content, or changed
    /// in place), each journaled once.
    refused: Vec<Target>,
}

pub struct Policy {
    config: Arc<Config>,
    protected: Vec<WatchedPath>,
    allowed: Vec<WatchedPath>,
    /// One per unix socket rule of `[[protect.connect]]`, in order; held in the kernel's
    /// protected map beside the binaries, as [`TARGET_KIND_UNIX`] targets.
    sockets: Vec<WatchedPath>,
    /// One per file rule of `file_rules`, in order.
    files: Vec<WatchedPath>,
    /// The config's file rules, then those made for file systems mounted below a host path or a
    /// protected directory while the daemon ran.
    file_rules: Vec<FileRule>,
    /// How many of `file_rules` are the config's: the others go when their mount does.
    configured_files: usize,
    /// The directories of file rules that hold no rule of their own.
    name_guards: Vec<WatchedPath>,
    /// Mounts below host paths left unguarded for want of room in the kernel's map.
    unguarded_mounts: Vec<PathBuf>,
    /// Names host programs meet host services by (see `host_services::kept_names`), with the
    /// node each names, followed like the protected paths.
    kept: Vec<KeptName>,
    /// The directories above the paths the daemon follows (see [`Policy::keep_ancestors`]).
    ancestor_paths: Vec<PathBuf>,
    /// The directories the kernel holds as such ([`daemon_file::ANCESTOR`]).
    ancestors: HashSet<Target>,
    /// Whether a directory the kernel could not take has been logged.
    ancestor_refused: bool,
    /// One per `[[protect.connect]]` rule, with its addresses resolved.
    reaches: Vec<Reach>,
    /// What the kernel's destination trie holds now.
    installed_nets: BTreeMap<Prefix, PortRanges>,
}

/// A name agents neither unlink nor rename, and the node (a symlink not followed) it names.
struct KeptName {
    path: PathBuf,
    node: Option<Target>,
}

/// The paths the daemon stats every half second: protected and allowlisted paths (followed to
/// the file they name) and kept names (not followed).
pub struct WatchedPaths {
    pub protected: Vec<PathBuf>,
    /// The directories holding rules' files that are no rule's own.
    pub name_guards: Vec<PathBuf>,
    pub allowed: Vec<PathBuf>,
    pub kept: Vec<PathBuf>,
    /// The directories above all of them: looked at before them (see
    /// [`Policy::keep_ancestors`]).
    pub ancestors: Vec<PathBuf>,
}

/// What the host of each `[[protect.connect]]` rule resolved to as the daemon started, or why it
/// did not: by host.
pub type ResolvedHosts = HashMap<String, Result<Vec<IpAddr>, String>>;

/// Looks up the host of every `[[protect.connect]]` rule, for [`Policy::install`].
pub async fn look_up_hosts(config: &Config, resolver: &HostResolver) -> ResolvedHosts {
    let mut resolved = ResolvedHosts::new();
    for rule in &config.connect_rules {
        if let Some(host) = rule.host()
            && !resolved.contains_key(host)
        {
            let addresses = (resolver.addresses(host).await).map_err(|error| error.to_string());
            resolved.insert(host.to_owned(), addresses);
        }
    }
    resolved
}

/// `resolved`, with the addresses a host had as last journaled (`remembered`) where it did not
/// resolve now: a DNS outage as the daemon starts leaves the host's addresses protected. A host
/// never journaled stays unresolved.
pub fn with_remembered_addresses<'a>(
    resolved: &ResolvedHosts,
    remembered: impl Fn(&str) -> Option<&'a [String]>,
) -> ResolvedHosts {
    let mut hosts = resolved.clone();
    for (host, result) in &mut hosts {
        let Err(error) = result else { continue };
        let Some(addresses) = remembered(host) else {
            continue;
        };
        let addresses: Vec<IpAddr> = addresses.iter().filter_map(|a| a.parse().ok()).collect();
        if addresses.is_empty() {
            continue;
        }
        tracing::warn!(
            %host, %error, ?addresses,
            "cannot resolve protected host; protecting the addresses it had when last journaled"
        );
        *result = Ok(addresses);
    }
    hosts
}

/// Fails on the first `host` rule whose name has no addresses in `resolved`.
pub fn check_resolved(config: &Config, resolved: &ResolvedHosts) -> Result<(), PolicyError> {
    for (index, rule) in config.connect_rules.iter().enumerate() {
        if let Some(host) = rule.host() {
            addresses_of_host(resolved, index, host)?;
        }
    }
    Ok(())
}

/// The addresses `host`, of the rule at `index`, has in `resolved`.
fn addresses_of_host<'a>(
    resolved: &'a ResolvedHosts,
    index: usize,
    host: &str,
) -> Result<&'a [IpAddr], PolicyError> {
    let failed = |cause: &str| PolicyError::Resolve {
        index,
        host: host.to_owned(),
        cause: cause.to_owned(),
    };
    match resolved.get(host) {
        Some(Ok(addresses)) => Ok(addresses),
        Some(Err(cause)) => Err(failed(cause)),
        None => Err(failed("not looked up")),
    }
}

/// The unix socket bound to the file a stat found.
fn as_socket(file: Target) -> Target {
    Target::unix_socket(file.data[0] as u32, file.data[1])
}

/// Puts the sockets bound at `paths` into the kernel's protected map. A path with nothing there
/// yet is protected once its server binds it (the paths are followed).
fn install_sockets(
    kernel: &mut Kernel,
    paths: impl Iterator<Item = (PathBuf, String)>,
) -> Result<Vec<WatchedPath>, PolicyError> {
    let mut installed = Vec::new();
    for (index, (path, name)) in paths.enumerate() {
        let current = exec_target_of(&path).ok().map(as_socket);
        if let Some(target) = current {
            kernel.add_path(PathList::Protected, target, index as u32)?;
        } else {
            tracing::warn!(path = %path.display(), "protected socket path does not exist yet");
        }
        installed.push(WatchedPath {
            handles: handles_for(&path, current),
            path,
            name,
            value: index as u32,
            current,
            previous: Vec::new(),
            digest: None,
            refused: Vec::new(),
        });
    }
    Ok(installed)
}

/// Puts the files and directories of the file rules into the kernel's map, each directory's
/// device marked (the kernel walks up from a file only on such a device), with the bits of the
/// entries of `others` that name the same file.
fn install_files(
    kernel: &mut Kernel,
    rules: &[FileRule],
    others: &[&[WatchedPath]],
) -> Result<Vec<WatchedPath>, PolicyError> {
    let mut installed: Vec<WatchedPath> = Vec::new();
    for rule in rules {
        let metadata =
            std::fs::metadata(&rule.path).map_err(|cause| PolicyError::ProtectedPath {
                path: rule.path.clone(),
                cause,
            })?;
        let target = Target::exec(kernel_dev(metadata.dev()), metadata.ino());
        let value = rule.access
            | if metadata.is_dir() {
                file_rule::TREE
            } else {
                0
            };
        let held = held_bits(&target, others) | held_bits(&target, &[&installed]);
        add_file(kernel, target, value | held, &rule.path)?;
        installed.push(WatchedPath {
            path: rule.path.clone(),
            name: rule.name.clone(),
            value,
            current: Some(target),
            previous: Vec::new(),
            handles: handles_for(&rule.path, Some(target)),
            digest: None,
            refused: Vec::new(),
        });
    }
    Ok(installed)
}

/// Marks the directory holding each rule's file ([`file_rule::NAMES`]): agents make no names
/// there. A directory that is a rule's own gets the bit on its entry; the others get entries of
/// their own, returned.
fn guard_rule_directories(
    kernel: &mut Kernel,
    files: &mut [WatchedPath],
    root_names: bool,
) -> Result<Vec<WatchedPath>, PolicyError> {
    let mut guards: Vec<WatchedPath> = Vec::new();
    let parents: Vec<PathBuf> = files
        .iter()
        .filter(|entry| entry.value & file_rule::TREE == 0)
        .filter_map(|entry| entry.path.parent().map(Path::to_path_buf))
        .chain(root_names.then(|| PathBuf::from("/")))
        .collect();
    for parent in parents {
        let target = exec_target_of(&parent).map_err(|cause| PolicyError::ProtectedPath {
            path: parent.clone(),
            cause,
        })?;
        let held = held_bits(&target, &[files]);
        if let Some(rule) = files.iter_mut().find(|entry| entry.current == Some(target)) {
            rule.value |= file_rule::NAMES;
            add_file(kernel, target, held | file_rule::NAMES, &rule.path)?;
        } else if !guards.iter().any(|guard| guard.current == Some(target)) {
            kernel.add_path(PathList::Files, target, file_rule::NAMES)?;
            guards.push(WatchedPath {
                path: parent,
                name: "directory of a protected file".into(),
                value: file_rule::NAMES,
                current: Some(target),
                previous: Vec::new(),
                handles: Vec::new(),
                digest: None,
                refused: Vec::new(),
            });
        }
    }
    Ok(guards)
}

/// The handle of the file `path` names, if that is `current` still.
fn handles_for(path: &Path, current: Option<Target>) -> Vec<(Target, FileHandle)> {
    current
        .and_then(|target| Some((target, handles::handle_of(path, target)?)))
        .into_iter()
        .collect()
}

/// Takes out of the kernel's `list` the files paths of `entries` named before that exist no
/// more (no name, no open file), unless an entry of `entries` or `others` still names the inode:
/// its number may be given to another file next.
fn forget_freed(
    kernel: &mut Kernel,
    list: PathList,
    entries: &mut [WatchedPath],
    others: &[WatchedPath],
) {
    for index in 0..entries.len() {
        let entry = &entries[index];
        let on = entry.path.parent().unwrap_or(Path::new("/"));
        let freed: Vec<Target> = (entry.handles.iter())
            .filter(|(old, handle)| {
                entry.previous.contains(old) && handles::is_freed(handle, old.data[0] as u32, on)
            })
            .map(|(old, _)| *old)
            // Named by the path again (a file given the same number, renamed there since).
            .filter(|old| exec_target_of(&entry.path).is_ok_and(|now| now.data != old.data))
            .collect();
        for old in freed {
            let entry = &mut entries[index];
            entry.previous.retain(|target| *target != old);
            entry.handles.retain(|(target, _)| *target != old);
            let path = entry.path.display().to_string();
            let held = (entries.iter().chain(others))
                .any(|other| other.current == Some(old) || other.previous.contains(&old));
            if !held && let Err(error) = kernel.remove_path(list, &old) {
                tracing::error!(%error, %path, "cannot take a file that is gone out of the kernel's map");
                continue;
            }
            tracing::info!(%path, dev = old.data[0], ino = old.data[1], "a file a protected path named before is gone: no longer held");
        }
    }
}

/// Room kept in the kernel's map of protected files when guarding mounts made while the daemon
/// runs: protected files replaced since take entries too.
const MOUNT_GUARD_RESERVE: usize = 512;

/// Whether the kernel's map of protected files, holding `used` entries, has room for another
/// mount's guard (its root and its device's marker) and the reserve.
fn room_for_mount_guard(used: usize) -> bool {
    used + 2 + MOUNT_GUARD_RESERVE <= MAX_PROTECTED_FILES as usize
}

/// The journal's word that `entry`'s path is guarded as the file it names now.
fn guarded_now(entry: &WatchedPath) -> Option<Event> {
    let target = entry.current?;
    tracing::info!(path = %entry.path.display(), "guarding a mount below a host path or protected directory");
    Some(protection_updated(&entry.path, target))
}

/// The record of `path` naming the file (or node) `target` from now on.
fn protection_updated(path: &Path, target: Target) -> Event {
    Event::ProtectionUpdated {
        path: path.display().to_string(),
        dev: target.data[0] as u32,
        ino: target.data[1],
    }
}

/// What taking the guard `gone` out of the kernel's map (`entries`) removes: each file it names,
/// now or before, that no entry of `kept` names, and the marker of each of its devices where no
/// other directory rule is left, in `kept` or in the map.
fn released(gone: &WatchedPath, kept: &[&WatchedPath], entries: &[(Target, u32)]) -> Vec<Target> {
    let held = |target: &Target| {
        kept.iter()
            .any(|entry| entry.current.as_ref() == Some(target) || entry.previous.contains(target))
    };
    let mut out: Vec<Target> = Vec::new();
    for target in gone.current.iter().chain(&gone.previous) {
        if !held(target) && !out.contains(target) {
            out.push(*target);
        }
    }
    if gone.value & file_rule::TREE == 0 {
        return out;
    }
    for target in gone.current.iter().chain(&gone.previous) {
        let dev = target.data[0];
        let marker = file_rule::device_marker(dev as u32);
        let kept_tree = kept.iter().any(|entry| {
            entry.value & file_rule::TREE != 0
                && (entry.current.iter().chain(&entry.previous)).any(|dir| dir.data[0] == dev)
        });
        let tree_left = kept_tree
            || entries.iter().any(|(other, bits)| {
                bits & file_rule::TREE != 0
                    && other.data[0] == dev
                    && *other != marker
                    && !out.contains(other)
            });
        if !tree_left && !out.contains(&marker) {
            out.push(marker);
        }
    }
    out
}

/// The bits of every entry of `lists` that names `target` now or named it before. Two rules, or
/// a rule and a mount guard, may name one file by different paths (a bind of it): the kernel
/// keeps them all, so that neither weakens the other.
fn held_bits(target: &Target, lists: &[&[WatchedPath]]) -> u32 {
    (lists.iter().flat_map(|list| list.iter()))
        .filter(|entry| entry.current.as_ref() == Some(target) || entry.previous.contains(target))
        .fold(0, |bits, entry| bits | entry.value)
}

/// Puts one file or directory of a file rule into the kernel's map: a directory's device marker
/// first, so that no file below it is ever judged without the walk.
fn add_file(
    kernel: &mut Kernel,
    target: Target,
    value: u32,
    path: &Path,
) -> Result<(), PolicyError> {
    if value & file_rule::TREE != 0 {
        mark_btrfs(kernel, path)?;
        let marker = file_rule::device_marker(target.data[0] as u32);
        kernel.add_path(PathList::Files, marker, file_rule::TREE)?;
    }
    kernel.add_path(PathList::Files, target, value)?;
    Ok(())
}

/// Tells the kernel the btrfs of the directory rule or mount guard at `path` (see
/// [`gatekeeper_common::maps::BTRFS_RULE_DEVICES`]; every btrfs when its superblock cannot be
/// told) before its entry goes in: the kernel walks up from btrfs files only on those, and
/// without the walk the entry would cover none of them.
fn mark_btrfs(kernel: &mut Kernel, path: &Path) -> Result<(), PolicyError> {
    if !on_btrfs(path) {
        return Ok(());
    }
    let device = superblock_device(path)
        .inspect_err(|error| {
            tracing::error!(%error, path = %path.display(), "cannot tell the btrfs of a directory rule: the kernel walks up from files on every btrfs");
        })
        .ok();
    Ok(kernel.mark_btrfs_directory_rules(device)?)
}

/// Takes out of the kernel's `list` what an earlier configuration left: whatever none of
/// `kept` names now (with, for file rules, the markers of their directories' devices).
fn prune_paths(
    kernel: &mut Kernel,
    list: PathList,
    kept: &[&[WatchedPath]],
) -> Result<(), PolicyError> {
    kernel.keep_paths(list, |target| {
        kept.iter().flat_map(|paths| paths.iter()).any(|path| {
            path.current.as_ref() == Some(target)
                || (path.value & file_rule::TREE != 0
                    && list == PathList::Files
                    && path
                        .current
                        .map(|dir| file_rule::device_marker(dir.data[0] as u32))
                        == Some(*target))
        })
    })?;
    Ok(())
}

/// Puts the files `paths` name into the kernel's `list`.
fn install_paths(
    kernel: &mut Kernel,
    list: PathList,
    paths: impl Iterator<Item = (PathBuf, String)>,
) -> Result<Vec<WatchedPath>, PolicyError> {
    let mut installed = Vec::new();
    for (index, (path, name)) in paths.enumerate() {
        let failed = |cause| PolicyError::ProtectedPath {
            path: path.clone(),
            cause,
        };
        // What an allowlisted path may later name is judged by its content now.
        let (target, digest) = match list {
            PathList::Protected | PathList::Files => (exec_target_of(&path).map_err(failed)?, None),
            PathList::Allowed => {
                let (target, digest) = content_of(&path).map_err(failed)?;
                (target, Some(digest))
            }
        };
        kernel.add_path(list, target, index as u32)?;
        installed.push(WatchedPath {
            handles: handles_for(&path, Some(target)),
            path,
            name,
            value: index as u32,
            current: Some(target),
            previous: Vec::new(),
            digest,
            refused: Vec::new(),
        });
    }
    Ok(installed)
}

impl Policy {
    /// Fills the kernel's maps with the configuration and guards the mounts below host paths and
    /// protected directories; returns what to journal of the latter. An earlier daemon's maps
    /// are adopted: the new policy goes in first and what is no longer configured comes out
    /// after, so nothing is unprotected in between.
    pub fn install(
        config: Arc<Config>,
        kernel: &mut Kernel,
        resolved: &ResolvedHosts,
    ) -> Result<(Self, Vec<Event>), PolicyError> {
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
        let sockets = install_sockets(
            kernel,
            config
                .socket_rules()
                .map(|(_, rule, path)| (path.to_owned(), rule.name.clone())),
        )?;
        let files = install_files(kernel, &config.file_rules, &[])?;
        prune_paths(kernel, PathList::Protected, &[&protected, &sockets])?;
        prune_paths(kernel, PathList::Allowed, &[&allowed])?;
        let mut files = files;
        // Host paths guarded: `/` keeps its names, such as the links of merged /usr.
        let name_guards = guard_rule_directories(kernel, &mut files, config.guards_host_paths())?;
        // Bytes: a name that is no UTF-8 (an agent may make one) must not hide the others.
        let mounts = std::fs::read(MOUNTINFO).map_err(PolicyError::Mounts)?;
        kernel.set_setting(Setting::ExecAllowlist, u32::from(config.exec_allowlist))?;
        // Agents change no mount where the daemon, or init, looks.
        let (own_mounts, init_mounts) = (
            namespace("/proc/self/ns/mnt")?,
            namespace("/proc/1/ns/mnt")?,
        );
        if own_mounts != init_mounts {
            tracing::warn!(
                "the daemon runs in a mount namespace other than init's: a mount the host makes private in init's is not seen, and a volume there below a host path or protected directory is not guarded"
            );
        }
        kernel.set_setting(Setting::HostMountNs, own_mounts)?;
        kernel.set_setting(Setting::InitMountNs, init_mounts)?;
        // The host's network namespace is init's (the daemon might run in one of its own):
        // agents in any other may set its sysctls.
        kernel.set_setting(Setting::HostNetns, namespace("/proc/1/ns/net")?)?;
        // An agent's exec runs on a grant only from init's root, where the loader, libraries and
        // interpreters are the host's.
        let root = host_root()?;
        let [device, inode] = root.data;
        kernel.set_setting(Setting::HostRootDevice, device as u32)?;
        kernel.set_setting(Setting::HostRootInodeLow, inode as u32)?;
        kernel.set_setting(Setting::HostRootInodeHigh, (inode >> 32) as u32)?;
        kernel.set_daemon_pid(std::process::id())?;
        let kept: Vec<KeptName> = (crate::host_services::kept_names().into_iter())
            .map(|path| KeptName {
                node: node_of(&path).ok(),
                path,
            })
            .collect();
        let kept_paths: Vec<&Path> = kept.iter().map(|name| name.path.as_path()).collect();
        let guarded = crate::host_services::guarded_names(&kept_paths);
        let DaemonFiles {
            files: own_files,
            ancestor_paths,
        } = daemon_files(&config, &kept, &guarded, kernel.knows_btrfs())?;
        kernel.set_daemon_files(&own_files)?;
        let ancestors = (own_files.iter())
            .filter(|(_, bits)| bits & daemon_file::ANCESTOR != 0)
            .map(|(target, _)| *target)
            .collect();
        kernel.set_guarded_names(&name_keys(&guarded))?;
        kernel.set_raw_devices(&crate::devices::read().map_err(PolicyError::Devices)?)?;
        let reaches = config
            .connect_rules
            .iter()
            .enumerate()
            .map(|(index, rule)| {
                let prefixes = match &rule.destination {
                    DestinationSpec::Cidr(prefix) => vec![*prefix],
                    // Judged by the unix socket hooks, not the destination trie.
                    DestinationSpec::Socket(_) => Vec::new(),
                    DestinationSpec::Host(host) => addresses_of_host(resolved, index, host)?
                        .iter()
                        .map(|address| Prefix::host(*address))
                        .collect(),
                };
                Ok(Reach {
                    prefixes,
                    ports: rule.ports.clone(),
                    protocols: rule.protocols,
                })
            })
            .collect::<Result<Vec<Reach>, PolicyError>>()?;
        // After the rules, so that a rule's index is its reach's: agents never reach the HTTP
        // listener, where reviewers' decisions arrive, nor the metrics one.
        let mut reaches = reaches;
        reaches.extend(config.listen.map(destinations::listener_reach));
        reaches.extend(config.metrics.map(destinations::listener_reach));
        let mut policy = Self {
            installed_nets: kernel.nets(),
            file_rules: config.file_rules.clone(),
            configured_files: config.file_rules.len(),
            name_guards,
            unguarded_mounts: Vec::new(),
            config,
            protected,
            allowed,
            sockets,
            files,
            kept,
            ancestor_paths,
            ancestors,
            ancestor_refused: false,
            reaches,
        };
        // The mounts below host paths and protected directories, before what an earlier daemon
        // guarded comes out: a restart leaves none of them unguarded.
        let guarded = policy.guard_mounts(kernel, &mount_table(&mounts));
        prune_paths(
            kernel,
            PathList::Files,
            &[&policy.files, &policy.name_guards],
        )?;
        policy.sync_nets(kernel)?;
        Ok((policy, guarded))
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

    /// The paths to watch for replacement: protected binaries, then protected sockets, then
    /// protected files; allowlisted paths; kept names.
    pub fn watched(&self) -> WatchedPaths {
        let paths = |list: &[WatchedPath]| list.iter().map(|entry| entry.path.clone()).collect();
        let mut protected: Vec<PathBuf> = paths(&self.protected);
        protected.extend(self.sockets.iter().map(|entry| entry.path.clone()));
        protected.extend(self.files.iter().map(|entry| entry.path.clone()));
        WatchedPaths {
            name_guards: paths(&self.name_guards),
            protected,
            allowed: paths(&self.allowed),
            kept: self.kept.iter().map(|name| name.path.clone()).collect(),
            ancestors: self.ancestor_paths.clone(),
        }
    }

    /// Keeps each kept name that names a new node (`now`, in the order of [`Policy::watched`]):
    /// a syslog daemon that binds `/dev/log` anew, a link the host makes again, a name that
    /// appears after the start. The node it named before is no longer kept. Journals each move.
    pub fn follow_kept(&mut self, kernel: &mut Kernel, now: &[Option<Target>]) -> Vec<Event> {
        let mut events = Vec::new();
        for (index, node) in now.iter().enumerate().take(self.kept.len()) {
            let (Some(node), name) = (*node, &self.kept[index]) else {
                continue;
            };
            if name.node == Some(node) {
                continue;
            }
            // The directories above too: the name may not have been there at start.
            let kept = kernel
                .add_daemon_file(&node, daemon_file::KEPT_NAME)
                .and_then(|()| {
                    directories_above(&name.path)
                        .filter_map(|dir| node_of(dir).ok())
                        .try_for_each(|dir| kernel.add_daemon_file(&dir, daemon_file::ANCESTOR))
                });
            if let Err(error) = kept {
                // Tried again at the next look: the name still names the new node.
                tracing::error!(path = %name.path.display(), %error, "cannot keep a name");
                continue;
            }
            let before = self.kept[index].node.replace(node);
            if let Some(old) = before
                && !self.kept.iter().any(|other| other.node == Some(old))
                && let Err(error) = kernel.remove_daemon_file(&old, daemon_file::KEPT_NAME)
            {
                tracing::warn!(%error, "cannot let go of a name's old node");
            }
            let path = &self.kept[index].path;
            tracing::info!(path = %path.display(), "a kept name names a new node");
            events.push(protection_updated(path, node));
        }
        events
    }

    /// Holds as directories above a followed path those that are now (`now`, in the order of
    /// [`WatchedPaths::ancestors`]): the root of a file system the host mounted over one. Until
    /// then the kernel refuses agents the files below such a mount (it does not cover the place
    /// it hides), so `now` must be looked at before the paths [`Policy::follow`] is given: a
    /// mount made in between is then one the paths were followed through, or stays refused.
    /// The directories held before stay held.
    pub fn keep_ancestors(&mut self, kernel: &mut Kernel, now: &[Option<Target>]) {
        for (dir, path) in now.iter().zip(&self.ancestor_paths) {
            let Some(dir) = dir else {
                continue;
            };
            if self.ancestors.contains(dir) {
                continue;
            }
            match kernel.add_daemon_file(dir, daemon_file::ANCESTOR) {
                Ok(()) => {
                    self.ancestors.insert(*dir);
                }
                Err(error) => {
                    // Fail closed: what is mounted there stays refused to agents.
                    if !self.ancestor_refused {
                        tracing::error!(%error, path = %path.display(), "cannot hold a directory above a followed path: agents are refused the files below what is mounted there");
                    }
                    self.ancestor_refused = true;
                }
            }
        }
    }

    /// Follows the paths to the files they name now; journals each move. A file a path named
    /// before stays in the map. An allowlisted path follows only to a file with the content
    /// that was allowed, and a file the kernel took off the allowlist (opened for writing) is
    /// not allowed again.
    pub fn follow(
        &mut self,
        kernel: &mut Kernel,
        protected_now: &[Option<Target>],
        allowed_now: &[Option<(Target, Digest)>],
        guards_now: &[Option<Target>],
    ) -> Vec<Event> {
        let (binaries_now, rest) =
            protected_now.split_at(self.protected.len().min(protected_now.len()));
        // The files as at start: mount guards made since are followed as their mounts change.
        let (sockets_now, files_now) = rest.split_at(self.sockets.len().min(rest.len()));
        let sockets_now: Vec<Option<Target>> =
            sockets_now.iter().map(|file| file.map(as_socket)).collect();
        let mut events = follow_list(
            kernel,
            PathList::Protected,
            &mut self.protected,
            &[],
            binaries_now,
        );
        let accepted = judge_allowed(
            &mut self.allowed,
            allowed_now,
            |target| kernel.has_path(PathList::Allowed, target),
            &mut events,
        );
        events.extend(follow_list(
            kernel,
            PathList::Protected,
            &mut self.sockets,
            &[],
            &sockets_now,
        ));
        events.extend(follow_list(
            kernel,
            PathList::Allowed,
            &mut self.allowed,
            &[],
            &accepted,
        ));
        events.extend(follow_list(
            kernel,
            PathList::Files,
            &mut self.files,
            &[&self.name_guards],
            files_now,
        ));
        // The directory holding a rule's file, replaced (a file system mounted over it): agents
        // make no names in the new one either.
        events.extend(follow_list(
            kernel,
            PathList::Files,
            &mut self.name_guards,
            &[&self.files],
            guards_now,
        ));
        forget_freed(
            kernel,
            PathList::Protected,
            &mut self.protected,
            &self.sockets,
        );
        forget_freed(
            kernel,
            PathList::Protected,
            &mut self.sockets,
            &self.protected,
        );
        forget_freed(kernel, PathList::Allowed, &mut self.allowed, &[]);
        forget_freed(kernel, PathList::Files, &mut self.files, &self.name_guards);
        forget_freed(kernel, PathList::Files, &mut self.name_guards, &self.files);
        events
    }

    /// Guards each of `mounts` below a host path or a protected directory that no rule names yet,
    /// as at start (see [`host_guards`]): a file system or file mounted there while the daemon
    /// ran; follows each already guarded to the file system mounted there now; and takes out the
    /// guards of mounts made while the daemon ran that are gone. Returns what to journal. A mount that cannot be guarded (gone again
    /// before its stat) is logged and tried at the next change of the mount table.
    pub fn guard_mounts(&mut self, kernel: &mut Kernel, mounts: &[Mount]) -> Vec<Event> {
        let used = kernel.path_entries(PathList::Files).len();
        let mounted: HashSet<&Path> = mounts.iter().map(|mount| mount.point.as_path()).collect();
        let mut events = self.guard_new_mounts(kernel, mounts, used);
        events.extend(self.follow_mount_points(kernel, &mounted));
        // After the new guards, which may share a device with the gone ones.
        let released = self.release_unmounted(kernel, &mounted);
        // Room freed for mounts that found none.
        if !released.is_empty() && !self.unguarded_mounts.is_empty() {
            let used = kernel.path_entries(PathList::Files).len();
            events.extend(self.guard_new_mounts(kernel, mounts, used));
        }
        events.extend(released);
        events
    }

    /// Guards the mounts below host paths and protected directories that no rule names yet while
    /// the kernel's map (`used` entries) has room; remembers the others.
    fn guard_new_mounts(
        &mut self,
        kernel: &mut Kernel,
        mounts: &[Mount],
        mut used: usize,
    ) -> Vec<Event> {
        let mut events = Vec::new();
        let mut unguarded = Vec::new();
        for rule in host_guards(&self.config.guard_roots, &self.file_rules, mounts) {
            if !room_for_mount_guard(used) {
                if !self.unguarded_mounts.contains(&rule.path) {
                    let why = format!(
                        "the kernel's map of protected files holds {used} of {MAX_PROTECTED_FILES} entries, and {MOUNT_GUARD_RESERVE} are kept for protected files replaced"
                    );
                    tracing::error!(path = %rule.path.display(), %why, "cannot guard a mount below a host path or protected directory");
                    events.push(Event::MountUnguarded {
                        path: rule.path.display().to_string(),
                        why,
                    });
                }
                unguarded.push(rule.path);
                continue;
            }
            let others = [self.files.as_slice(), &self.name_guards];
            match install_files(kernel, std::slice::from_ref(&rule), &others) {
                Ok(installed) => {
                    used += 2;
                    events.extend(installed.iter().filter_map(guarded_now));
                    self.file_rules.push(rule);
                    self.files.extend(installed);
                }
                Err(error) => {
                    tracing::error!(%error, path = %rule.path.display(), "cannot guard a mount below a host path or protected directory")
                }
            }
        }
        self.unguarded_mounts = unguarded;
        events
    }

    /// A mount point guarded before that names another file system now (mounted again, or
    /// another mounted over it): the new root is guarded too, the old one stays.
    fn follow_mount_points(&mut self, kernel: &mut Kernel, mounted: &HashSet<&Path>) -> Vec<Event> {
        let mut events = Vec::new();
        for index in 0..self.files.len() {
            let entry = &self.files[index];
            if !mounted.contains(entry.path.as_path()) {
                continue;
            }
            let Ok(target) = exec_target_of(&entry.path) else {
                continue;
            };
            if entry.current == Some(target) || entry.previous.contains(&target) {
                continue;
            }
            let held = held_bits(&target, &[&self.files, &self.name_guards]);
            let entry = &mut self.files[index];
            if let Err(error) = add_file(kernel, target, entry.value | held, &entry.path) {
                tracing::error!(%error, path = %entry.path.display(), "cannot guard a mount below a host path or protected directory");
                continue;
            }
            entry.previous.extend(entry.current.replace(target));
            events.extend(guarded_now(entry));
        }
        events
    }

    /// Takes out the guards of mounts made while the daemon ran that are unmounted now (the
    /// path is its host path's again): they would only fill the kernel's map.
    fn release_unmounted(&mut self, kernel: &mut Kernel, mounted: &HashSet<&Path>) -> Vec<Event> {
        let mut events = Vec::new();
        let mut entries = kernel.path_entries(PathList::Files);
        let mut index = self.configured_files;
        while index < self.files.len() {
            if mounted.contains(self.files[index].path.as_path()) {
                index += 1;
                continue;
            }
            let gone = self.files.remove(index);
            self.file_rules.remove(index);
            let kept: Vec<&WatchedPath> = self.files.iter().chain(&self.name_guards).collect();
            let released = released(&gone, &kept, &entries);
            for target in &released {
                if let Err(error) = kernel.remove_path(PathList::Files, target) {
                    tracing::error!(%error, path = %gone.path.display(), "cannot take out the guard of an unmounted mount");
                }
            }
            // A file another entry names keeps that entry's bits, no longer the guard's.
            let held_on = (gone.current.iter().chain(&gone.previous))
                .filter(|target| !released.contains(target));
            for target in held_on {
                let bits = held_bits(target, &[&self.files, &self.name_guards]);
                if let Err(error) = add_file(kernel, *target, bits, &gone.path) {
                    tracing::error!(%error, path = %gone.path.display(), "cannot take the guard of an unmounted mount off a file a rule keeps");
                }
            }
            entries.retain(|(target, _)| !released.contains(target));
            events.push(Event::MountUnguarded {
                path: gone.path.display().to_string(),
                why: "unmounted".into(),
            });
        }
        events
    }

    /// Mounts below host paths that are not guarded for want of room in the kernel's map.
    pub fn unguarded_mounts(&self) -> &[PathBuf] {
        &self.unguarded_mounts
    }

    /// Host rules to resolve again: (rule index, host).
    pub fn hosts(&self) -> Vec<(usize, String)> {
        self.config
            .connect_rules
            .iter()
            .enumerate()
            .filter_map(|(index, rule)| match &rule.destination {
                DestinationSpec::Host(host) => Some((index, host.clone())),
                DestinationSpec::Cidr(_) | DestinationSpec::Socket(_) => None,
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
        Ok(self.host_resolved(index))
    }

    /// What each `host` rule protects now, one `host_resolved` each: journaled at start, so the
    /// record holds every address a host rule ever had.
    pub fn host_addresses(&self) -> Vec<Event> {
        (0..self.config.connect_rules.len())
            .filter_map(|index| self.host_resolved(index))
            .collect()
    }

    /// The addresses the `host` rule at `index` protects, as `host_resolved`.
    fn host_resolved(&self, index: usize) -> Option<Event> {
        let rule = self.config.connect_rules.get(index)?;
        let host = rule.host()?;
        let addresses = (self.reaches.get(index)?.prefixes.iter())
            .map(|prefix| destinations::natural(prefix.address).to_string())
            .collect();
        Some(Event::HostResolved {
            rule: rule.name.clone(),
            host: host.to_owned(),
            addresses,
        })
    }

    /// The protected path that names (or named) `target`, and its `[[protect.exec]]` rule.
    fn exec_rule(&self, target: &Target) -> Option<(&Path, &ExecRule)> {
        let index = self.protected.iter().position(|rule| {
            rule.current.as_ref() == Some(target) || rule.previous.contains(target)
        })?;
        let rule = self.config.exec_rules.get(index)?;
        Some((&self.protected[index].path, rule))
    }

    /// The file rule that covers the file of `target` (with its rule's path), and the file's path
    /// if found. The file's own rule comes first; else, of the directory rules that hold it, the
    /// strictest (most approvals), found by its name `leaf` as the kernel saw it or by a bounded
    /// search below each directory.
    fn file_rule(
        &self,
        target: &Target,
        leaf: &str,
    ) -> (Option<(&Path, &FileRule)>, Option<PathBuf>) {
        let file = target.as_exec();
        let with_rule = |index: usize| {
            let rule = self.file_rules.get(index)?;
            Some((self.files[index].path.as_path(), rule))
        };
        // Of the rules that name the file itself (a rule, and the guard of a mount or bind of
        // it), the strictest, the first of equals.
        let naming: Vec<usize> = (self.files.iter().enumerate())
            .filter(|(_, entry)| entry.current == Some(file) || entry.previous.contains(&file))
            .map(|(index, _)| index)
            .collect();
        if let Some(first) = naming.first() {
            let strictest = (naming.iter().rev())
                .filter_map(|index| with_rule(*index))
                .max_by_key(|(_, rule)| rule.approval.strictness());
            return (strictest, Some(self.files[*first].path.clone()));
        }
        let mut found: Option<PathBuf> = None;
        let mut strictest: Option<(&Path, &FileRule)> = None;
        // The kernel's walk stays on the file's own file system: a directory on another holds
        // no rule for it (and a host with thousands of mounts is not searched through). On
        // btrfs the walk crosses subvolumes, each of a device number of its own (an anonymous
        // one, major 0: a file on a disk's device is no btrfs file).
        let anonymous = file.data[0] >> 20 == 0;
        let on_device = |entry: &WatchedPath| {
            (entry.current.iter().chain(&entry.previous)).any(|dir| dir.data[0] == file.data[0])
                || (anonymous && on_btrfs(&entry.path))
        };
        for (index, entry) in self.files.iter().enumerate() {
            if entry.value & file_rule::TREE == 0 || !on_device(entry) {
                continue;
            }
            let Some(path) = find_below(&entry.path, file, leaf) else {
                continue;
            };
            found.get_or_insert(path);
            let Some(candidate) = with_rule(index) else {
                continue;
            };
            if strictest.is_none_or(|(_, rule)| {
                candidate.1.approval.strictness() > rule.approval.strictness()
            }) {
                strictest = Some(candidate);
            }
        }
        (strictest, found)
    }

    /// The unix socket rule, with its path, whose path names (or named) the socket `target`.
    fn socket_rule(&self, target: &Target) -> Option<(&Path, &ConnectRule)> {
        let position = self.sockets.iter().position(|socket| {
            socket.current.as_ref() == Some(target) || socket.previous.contains(target)
        })?;
        self.config
            .socket_rules()
            .nth(position)
            .map(|(_, rule, path)| (path, rule))
    }

    /// A denial in the words reviewers read: what, which rule, which cgroup, which process.
    pub fn denial(
        &self,
        target: Target,
        filename: String,
        cgroup_id: u64,
        cgroup: String,
        process: Process,
        exec: Option<ExecCall>,
    ) -> Denial {
        let mut bind = Bind::default();
        let (kind, rule, approval, target_text, destination) = if target.kind == TARGET_KIND_CONNECT
        {
            let (address, port, protocol) = target.destination();
            let rule = destinations::matching_rule(&self.reaches, address, port, protocol)
                .and_then(|index| self.config.connect_rules.get(index));
            let host = rule.and_then(|rule| match &rule.destination {
                DestinationSpec::Host(host) => Some(host.clone()),
                DestinationSpec::Cidr(_) | DestinationSpec::Socket(_) => None,
            });
            let destination = Destination::new(address, port, protocol, host);
            (
                Kind::Connect,
                rule.map_or("protected destination", |rule| rule.name.as_str()),
                rule.map(|rule| rule.approval).unwrap_or_default(),
                destination.to_string(),
                Some(destination),
            )
        } else if target.kind == TARGET_KIND_FILE
            && let Some((path, rule)) = self.exec_rule(&target.as_exec())
        {
            // Reading a protected binary: how its code would run without an exec.
            (
                Kind::File,
                rule.name.as_str(),
                rule.approval,
                path.display().to_string(),
                None,
            )
        } else if target.kind == TARGET_KIND_FILE {
            let (rule, path) = self.file_rule(&target, &filename);
            let target_text = match (path, rule) {
                (Some(path), _) => path.display().to_string(),
                (None, Some((dir, _))) => format!("{filename} (below {})", dir.display()),
                (None, None) => format!(
                    "{filename} (device {} inode {})",
                    target.data[0], target.data[1]
                ),
            };
            let rule = rule.map(|(_, rule)| rule);
            (
                Kind::File,
                rule.map_or("protected file", |rule| rule.name.as_str()),
                rule.map(|rule| rule.approval).unwrap_or_default(),
                target_text,
                None,
            )
        } else if target.kind == TARGET_KIND_UNIX {
            let socket = self.socket_rule(&target);
            let target_text = match socket {
                Some((path, _)) => format!("unix socket {}", path.display()),
                None => format!(
                    "unix socket dev {} inode {}",
                    target.data[0], target.data[1]
                ),
            };
            let rule = socket.map(|(_, rule)| rule);
            (
                Kind::Connect,
                rule.map_or("protected unix socket", |rule| rule.name.as_str()),
                rule.map(|rule| rule.approval).unwrap_or_default(),
                target_text,
                None,
            )
        } else {
            let rule = self.exec_rule(&target).map(|(_, rule)| rule);
            bind = rule.map(|rule| rule.bind).unwrap_or_default();
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
            risk: approval.risk,
            exec: exec.filter(|_| kind == Kind::Exec),
            bind,
            justification: None,
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

/// The files the daemon relies on, with what agents may not do to them, and every directory
/// and symlink above them and above the protected, allowlisted and file rule paths (which,
/// renamed, would let another file take a path's place).
fn daemon_files(
    config: &Config,
    kept: &[KeptName],
    guarded: &[(PathBuf, OsString)],
    knows_btrfs: bool,
) -> Result<DaemonFiles, PolicyError> {
    let binary = std::env::current_exe().map_err(|cause| PolicyError::DaemonFile {
        path: PathBuf::from("/proc/self/exe"),
        cause,
    })?;
    let mut files: Vec<(Target, u32)> = Vec::new();
    let mut add = |target: Target, bits: u32| match files.iter_mut().find(|(t, _)| *t == target) {
        Some((_, existing)) => *existing |= bits,
        None => files.push((target, bits)),
    };
    let mut ancestor_paths: Vec<PathBuf> = Vec::new();
    let mut above = |path: &Path| {
        for dir in directories_above(path) {
            if !ancestor_paths.iter().any(|known| known == dir) {
                ancestor_paths.push(dir.to_owned());
            }
        }
    };
    let agent_socket = crate::config::agent_socket(&config.socket);
    let socket_dir = config.socket.parent().unwrap_or(&config.socket);
    let own = [
        (config.path.as_path(), daemon_file::SECRET),
        (config.journal.as_path(), daemon_file::SECRET),
        (binary.as_path(), daemon_file::BINARY),
        // Bound (not yet listening) before the policy is installed: no agent connects first.
        (config.socket.as_path(), daemon_file::REVIEWER_SOCKET),
        (agent_socket.as_path(), daemon_file::AGENT_SOCKET),
        (socket_dir, daemon_file::DIRECTORY),
    ];
    // The sealing key, once there is one (a key made while the daemon runs is guarded as it is
    // made, see `Engine::setup_keys`).
    let seal_key = std::fs::symlink_metadata(&config.seal_key)
        .is_ok()
        .then_some((config.seal_key.as_path(), daemon_file::SECRET));
    // systemd's notify socket (a path, unless abstract): put aside and replaced by an agent's, a
    // restarted daemon's READY would never reach systemd, which would stop it again and again.
    let notify = std::env::var_os("NOTIFY_SOCKET")
        .map(PathBuf::from)
        .filter(|path| path.is_absolute() && std::fs::symlink_metadata(path).is_ok());
    let notify = notify
        .as_deref()
        .map(|path| (path, daemon_file::AGENT_SOCKET));
    let named = config
        .exec_rules
        .iter()
        .map(|rule| (rule.path.as_path(), 0))
        .chain(config.allowed.iter().map(|path| (path.as_path(), 0)))
        .chain(
            config
                .file_rules
                .iter()
                .map(|rule| (rule.path.as_path(), 0)),
        );
    for (path, bits) in own.into_iter().chain(seal_key).chain(notify).chain(named) {
        let failed = |cause| PolicyError::DaemonFile {
            path: path.to_owned(),
            cause,
        };
        let canonical = std::fs::canonicalize(path).map_err(failed)?;
        keyable(&canonical, knows_btrfs)?;
        if bits != 0 {
            add(exec_target_of(&canonical).map_err(failed)?, bits);
        }
        // Above the path as configured (a symlinked directory is a node of its own) and as
        // resolved.
        let configured = std::path::absolute(path).map_err(failed)?;
        for ancestor in directories_above(&configured).chain(directories_above(&canonical)) {
            add(node_of(ancestor).map_err(failed)?, daemon_file::ANCESTOR);
        }
        above(&configured);
        above(&canonical);
    }
    // Where host programs log and the links on the way to host services' directories (see
    // `host_services`): put aside for an agent's, host programs would meet the agent instead.
    for name in kept {
        let Some(node) = name.node else {
            continue;
        };
        keyable(&name.path, knows_btrfs)?;
        add(node, daemon_file::KEPT_NAME);
        for node in directories_above(&name.path).filter_map(|dir| node_of(dir).ok()) {
            add(node, daemon_file::ANCESTOR);
        }
        above(&name.path);
    }
    // The directories on the way to a name agents may not make: renamed away for one of theirs,
    // the name would be free in it.
    for (dir, name) in guarded {
        keyable(dir, knows_btrfs)?;
        let path = dir.join(name);
        for node in directories_above(&path).filter_map(|dir| node_of(dir).ok()) {
            add(node, daemon_file::ANCESTOR);
        }
        above(&path);
    }
    Ok(DaemonFiles {
        files,
        ancestor_paths,
    })
}

/// [`daemon_files`]' answer.
struct DaemonFiles {
    /// Each file with what agents may not do to it.
    files: Vec<(Target, u32)>,
    /// The directories above the paths the daemon follows, as paths (see
    /// [`Policy::keep_ancestors`]).
    ancestor_paths: Vec<PathBuf>,
}

/// The names agents may not make, (directory, name) (see `host_services::guarded_names`), keyed
/// as the kernel matches them.
fn name_keys(guarded: &[(PathBuf, OsString)]) -> Vec<NameKey> {
    use std::os::unix::ffi::OsStrExt as _;
    (guarded.iter())
        .filter_map(|(dir, name)| Some(NameKey::new(node_of(dir).ok()?, name.as_bytes())))
        .collect()
}

/// The directories above `path`, `/` left out (it has no name to change).
fn directories_above(path: &Path) -> impl Iterator<Item = &Path> {
    path.ancestors()
        .skip(1)
        .filter(|ancestor| ancestor.parent().is_some())
}

/// Entries a search below a protected directory looks at before giving up.
const SEARCH_LIMIT: usize = 10_000;

/// The path below `dir` of the file `file` (device, inode), `leaf` its name: first as a direct
/// child, then breadth first, symlinks not followed.
fn find_below(dir: &Path, file: Target, leaf: &str) -> Option<PathBuf> {
    let is_file = |path: &Path| node_of(path).is_ok_and(|node| node == file);
    let direct = dir.join(leaf);
    if !leaf.is_empty() && !leaf.contains('/') && is_file(&direct) {
        return Some(direct);
    }
    let mut queue = std::collections::VecDeque::from([dir.to_path_buf()]);
    let mut seen = 0;
    while let Some(next) = queue.pop_front() {
        let Ok(entries) = std::fs::read_dir(&next) else {
            continue;
        };
        for entry in entries.flatten() {
            seen += 1;
            if seen > SEARCH_LIMIT {
                return None;
            }
            let path = entry.path();
            if is_file(&path) {
                return Some(path);
            }
            if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                queue.push_back(path);
            }
        }
    }
    None
}

/// The (device, inode) of `path` itself, a symlink not followed.
pub fn node_of(path: &Path) -> std::io::Result<Target> {
    let metadata = std::fs::symlink_metadata(path)?;
    Ok(Target::exec(kernel_dev(metadata.dev()), metadata.ino()))
}

/// The files allowlisted paths name now that may be allowed (`still_allowed`: whether the
/// kernel still holds a file, which it drops once the file is opened for writing); journals each
/// one refused, once.
fn judge_allowed(
    entries: &mut [WatchedPath],
    now: &[Option<(Target, Digest)>],
    still_allowed: impl Fn(&Target) -> bool,
    events: &mut Vec<Event>,
) -> Vec<Option<Target>> {
    let mut refuse = |entry: &mut WatchedPath, target: Target, why: &str| {
        entry.refused.push(target);
        tracing::warn!(path = %entry.path.display(), why, "not allowlisted");
        events.push(Event::AllowlistRefused {
            path: entry.path.display().to_string(),
            dev: target.data[0] as u32,
            ino: target.data[1],
            why: why.to_owned(),
        });
    };
    let mut accepted = Vec::with_capacity(now.len());
    for (entry, named) in entries.iter_mut().zip(now) {
        if let Some(current) = entry.current
            && !entry.refused.contains(&current)
            && !still_allowed(&current)
        {
            refuse(entry, current, "opened for writing or truncated");
        }
        accepted.push(match *named {
            Some((target, _)) if entry.refused.contains(&target) => None,
            Some((target, _)) if entry.current == Some(target) => Some(target),
            Some((target, digest)) if Some(digest) != entry.digest => {
                refuse(entry, target, "replaced by different content");
                None
            }
            Some((target, _)) => Some(target),
            None => None,
        });
    }
    accepted
}

fn follow_list(
    kernel: &mut Kernel,
    list: PathList,
    entries: &mut [WatchedPath],
    others: &[&[WatchedPath]],
    now: &[Option<Target>],
) -> Vec<Event> {
    let mut moved = Vec::new();
    for (index, target) in now.iter().enumerate().take(entries.len()) {
        // Mid-replacement the path may briefly not exist: keep the old entry meanwhile.
        let Some(target) = *target else {
            continue;
        };
        if entries[index].current == Some(target) {
            continue;
        }
        let held = held_bits(&target, &[entries]) | held_bits(&target, others);
        let entry = &mut entries[index];
        let added = match list {
            PathList::Files => add_file(kernel, target, entry.value | held, &entry.path),
            PathList::Protected | PathList::Allowed => kernel
                .add_path(list, target, entry.value)
                .map_err(PolicyError::from),
        };
        if let Err(error) = added {
            tracing::error!(%error, path = %entry.path.display(), "cannot follow replaced file");
            continue;
        }
        entry.previous.extend(entry.current.replace(target));
        entry.handles.extend(handles_for(&entry.path, Some(target)));
        tracing::info!(path = %entry.path.display(), "path now names a new file");
        moved.push(protection_updated(&entry.path, target));
    }
    moved
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_that_does_not_resolve_keeps_its_journaled_addresses() {
        let resolved = ResolvedHosts::from([
            (
                "up.example".to_owned(),
                Ok(vec!["10.0.0.1".parse().unwrap()]),
            ),
            ("down.example".to_owned(), Err("timed out".to_owned())),
            ("new.example".to_owned(), Err("timed out".to_owned())),
            ("garbled.example".to_owned(), Err("timed out".to_owned())),
        ]);
        let journaled = HashMap::from([
            ("up.example", vec!["10.9.9.9".to_owned()]),
            (
                "down.example",
                vec!["10.0.0.2".to_owned(), "::1".to_owned()],
            ),
            ("garbled.example", vec!["not an address".to_owned()]),
        ]);
        let hosts =
            with_remembered_addresses(&resolved, |host| journaled.get(host).map(Vec::as_slice));
        assert_eq!(
            hosts["up.example"],
            Ok(vec!["10.0.0.1".parse().unwrap()]),
            "what resolves now wins"
        );
        assert_eq!(
            hosts["down.example"],
            Ok(vec!["10.0.0.2".parse().unwrap(), "::1".parse().unwrap()])
        );
        assert_eq!(hosts["new.example"], Err("timed out".to_owned()));
        assert_eq!(hosts["garbled.example"], Err("timed out".to_owned()));
    }

    #[test]
    fn a_host_rule_without_addresses_stops_the_start_and_is_named() {
        let config = Config::parse(
            Path::new("test.toml"),
            r#"
[agents]
cgroups = ["/sys/fs/cgroup/agents"]
[approval]
reviewers = ["root"]
grant_ttl = "60s"
request_ttl = "15m"
[[protect.connect]]
name = "by address"
cidr = "10.0.0.0/8"
[[protect.connect]]
name = "db"
host = "db.example"
ports = [5432]
"#,
        )
        .unwrap();
        let resolved = |result: Result<Vec<IpAddr>, String>| {
            ResolvedHosts::from([("db.example".to_owned(), result)])
        };
        assert!(check_resolved(&config, &resolved(Ok(vec!["10.0.0.1".parse().unwrap()]))).is_ok());
        let error = check_resolved(&config, &resolved(Err("timed out".into()))).unwrap_err();
        assert_eq!(
            error.to_string(),
            "protect.connect[1].host: cannot resolve db.example: timed out"
        );
        let error = check_resolved(&config, &ResolvedHosts::new()).unwrap_err();
        assert!(error.to_string().contains("not looked up"), "{error}");
    }

    fn allowlisted(current: Target, digest: Digest) -> WatchedPath {
        WatchedPath {
            path: PathBuf::from("/usr/bin/python3"),
            name: "allowlisted".into(),
            value: 0,
            current: Some(current),
            previous: Vec::new(),
            handles: Vec::new(),
            digest: Some(digest),
            refused: Vec::new(),
        }
    }

    fn refusals(events: &[Event]) -> Vec<&str> {
        events
            .iter()
            .filter_map(|event| match event {
                Event::AllowlistRefused { why, .. } => Some(why.as_str()),
                _ => None,
            })
            .collect()
    }

    fn mount_guard(path: &str, current: Target, previous: Vec<Target>) -> WatchedPath {
        WatchedPath {
            path: PathBuf::from(path),
            name: format!("host files {path}"),
            value: file_rule::WRITE | file_rule::TREE,
            current: Some(current),
            previous,
            handles: Vec::new(),
            digest: None,
            refused: Vec::new(),
        }
    }

    #[test]
    fn an_unmounted_guard_releases_only_what_no_other_rule_holds() {
        let marker = file_rule::device_marker;
        let (root, old_root) = (Target::exec(40, 2), Target::exec(41, 2));
        let gone = mount_guard("/var/lib/docker/a", root, vec![old_root]);
        // Alone on its devices: both roots and both markers go.
        let entries = [
            (root, file_rule::WRITE | file_rule::TREE),
            (old_root, file_rule::WRITE | file_rule::TREE),
            (marker(40), file_rule::TREE),
            (marker(41), file_rule::TREE),
            (Target::exec(8, 2), file_rule::WRITE | file_rule::TREE),
            (marker(8), file_rule::TREE),
        ];
        let mut released_now = released(&gone, &[], &entries);
        released_now.sort_by_key(|target| target.data);
        let mut expected = vec![root, old_root, marker(40), marker(41)];
        expected.sort_by_key(|target| target.data);
        assert_eq!(released_now, expected);
        // The same file system bound at another path below a host path keeps its root and
        // marker; the old root, which nothing else names, goes with its marker.
        let twin = mount_guard("/var/lib/docker/b", root, Vec::new());
        assert_eq!(
            released(&gone, &[&twin], &entries),
            vec![old_root, marker(41)]
        );
        // A directory rule of the config on the same device keeps the marker.
        let entries_with_rule = [
            (root, file_rule::WRITE | file_rule::TREE),
            (Target::exec(40, 77), file_rule::READ | file_rule::TREE),
            (marker(40), file_rule::TREE),
        ];
        let gone_alone = mount_guard("/var/lib/docker/a", root, Vec::new());
        assert_eq!(released(&gone_alone, &[], &entries_with_rule), vec![root]);
        // A guard just added on the same device (a bind of a directory of the gone mount), not
        // in the map as read before it: the device keeps its marker.
        let bound = mount_guard("/var/lib/pod", Target::exec(40, 5), Vec::new());
        assert_eq!(released(&gone_alone, &[&bound], &[]), vec![root]);
        // A mounted file (no directory rule) has no marker to release.
        let mut file = mount_guard("/etc/resolv.conf", Target::exec(40, 9), Vec::new());
        file.value = file_rule::WRITE;
        assert_eq!(released(&file, &[], &entries), vec![Target::exec(40, 9)]);
    }

    #[test]
    fn mount_guards_keep_room_for_replaced_protected_files() {
        let capacity = MAX_PROTECTED_FILES as usize;
        assert!(room_for_mount_guard(0));
        assert!(room_for_mount_guard(capacity - MOUNT_GUARD_RESERVE - 2));
        assert!(!room_for_mount_guard(capacity - MOUNT_GUARD_RESERVE - 1));
        assert!(!room_for_mount_guard(capacity));
    }

    #[test]
    fn a_file_below_a_protected_directory_is_found_by_its_name_or_a_search() {
        let dir = std::env::temp_dir().join(format!("gk-find-below-{}", std::process::id()));
        let deep = dir.join("a/b/c");
        std::fs::create_dir_all(&deep).unwrap();
        std::fs::write(dir.join("direct.env"), "x").unwrap();
        std::fs::write(deep.join("deep.env"), "y").unwrap();
        // A symlink back up must not send the search round in circles.
        std::os::unix::fs::symlink(&dir, deep.join("loop")).unwrap();
        let direct = node_of(&dir.join("direct.env")).unwrap();
        let deep_file = node_of(&deep.join("deep.env")).unwrap();
        assert_eq!(
            find_below(&dir, direct, "direct.env"),
            Some(dir.join("direct.env"))
        );
        // The kernel's name is only a hint: a file found elsewhere below is found by search.
        assert_eq!(
            find_below(&dir, deep_file, "renamed.env"),
            Some(deep.join("deep.env"))
        );
        assert_eq!(
            find_below(&dir, deep_file, "../escape"),
            Some(deep.join("deep.env"))
        );
        assert_eq!(find_below(&dir, Target::exec(0, 1), "direct.env"), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    const ALLOWED: Digest = [1; 32];
    const OTHER: Digest = [2; 32];

    #[test]
    fn a_replacement_is_allowed_only_with_the_same_content() {
        let (first, same, other) = (
            Target::exec(1, 10),
            Target::exec(1, 11),
            Target::exec(1, 12),
        );
        let mut entries = [allowlisted(first, ALLOWED)];
        let mut events = Vec::new();
        let judged = judge_allowed(
            &mut entries,
            &[Some((same, ALLOWED))],
            |_| true,
            &mut events,
        );
        assert_eq!(judged, [Some(same)]);
        assert!(events.is_empty());

        let judged = judge_allowed(&mut entries, &[Some((other, OTHER))], |_| true, &mut events);
        assert_eq!(judged, [None]);
        assert_eq!(refusals(&events), ["replaced by different content"]);
        // Refused once, journaled once.
        let judged = judge_allowed(&mut entries, &[Some((other, OTHER))], |_| true, &mut events);
        assert_eq!(judged, [None]);
        assert_eq!(events.len(), 1);
        // A path briefly naming nothing keeps what it had.
        assert_eq!(
            judge_allowed(&mut entries, &[None], |_| true, &mut events),
            [None]
        );
    }

    #[test]
    fn a_file_changed_in_place_is_not_allowed_again() {
        let file = Target::exec(1, 10);
        let mut entries = [allowlisted(file, ALLOWED)];
        let mut events = Vec::new();
        // The kernel dropped it (opened for writing): even with the same digest, never again.
        for _ in 0..2 {
            let judged = judge_allowed(
                &mut entries,
                &[Some((file, ALLOWED))],
                |_| false,
                &mut events,
            );
            assert_eq!(judged, [None]);
        }
        assert_eq!(refusals(&events), ["opened for writing or truncated"]);
        // A new file with the allowlisted content at the path is allowed.
        let fresh = Target::exec(1, 20);
        let judged = judge_allowed(
            &mut entries,
            &[Some((fresh, ALLOWED))],
            |_| false,
            &mut events,
        );
        assert_eq!(judged, [Some(fresh)]);
    }
}
