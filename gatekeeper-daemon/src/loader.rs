//! Loads and attaches the kernel programs, and owns the maps the daemon writes.
//!
//! Refuses loudly when the kernel cannot enforce: the BPF LSM not active, or the program refused.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{
        Array, HashMap, MapData, MapError, PerCpuArray, RingBuf,
        lpm_trie::{self, LpmTrie},
    },
    programs::{
        Lsm, ProgramError,
        links::{FdLink, PinnedLink},
    },
};
use gatekeeper_common::{
    APPROVED_ENV, ArgvKey, Counter, EnvName, GrantKey, GrantValue, LATER_PROGRAMS, NameKey,
    PROGRAMS, PortRanges, Setting, Target, btrfs, hook_args, maps, mount_count, offsets,
    raw_device,
};
use nix::sys::statfs::{BPF_FS_MAGIC, statfs};

use crate::destinations::Prefix;

const LSM_LIST: &str = "/sys/kernel/security/lsm";
const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";
/// The btrfs module's BTF, there while the module is loaded (split from the kernel's).
const BTRFS_MODULE_BTF: &str = "/sys/kernel/btf/btrfs";
/// There while the btrfs module is loaded.
const BTRFS_MODULE: &str = "/sys/module/btrfs";

/// The kernel programs, as built, without their DWARF (see build.rs). Public so
/// `gatekeeper-bench` can load the empty floor programs from the very object the daemon runs.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gatekeeper.stripped"));

#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error(
        "cannot read {LSM_LIST} ({cause}); mount securityfs (mount -t securityfs none /sys/kernel/security) so Gatekeeper can check that the BPF LSM is active"
    )]
    LsmListUnreadable { cause: std::io::Error },
    #[error(
        "the BPF LSM is not active on this kernel (active LSMs: {active}); add bpf to the kernel command line, e.g. lsm={active},bpf, and reboot"
    )]
    BpfLsmInactive { active: String },
    #[error(
        "cannot read kernel BTF from {VMLINUX_BTF}: {0}; a kernel built with CONFIG_DEBUG_INFO_BTF=y is required"
    )]
    Btf(String),
    #[error("kernel BTF has no member {member} in struct {structure}")]
    MissingMember { structure: String, member: String },
    #[error("kernel BTF has no hook function {0} with the arguments Gatekeeper knows")]
    MissingHook(&'static str),
    #[error("cannot prepare the eBPF object: {0}")]
    Object(#[from] aya::EbpfError),
    #[error("the eBPF object has no {0}")]
    Missing(&'static str),
    #[error(
        "the kernel refused to load the LSM program ({cause}); nothing is enforced. Kernels under lockdown or in restricted VMs refuse BPF LSM programs even to root: run Gatekeeper on a kernel that allows them"
    )]
    Refused { cause: ProgramError },
    #[error("the kernel refused to attach the LSM program: {0}; nothing is enforced")]
    Attach(ProgramError),
    #[error("attach was called already (the loaded programs are gone)")]
    AttachedAlready,
    #[error(
        "cannot start the thread that loads the programs: {0}; no new programs are attached (links an earlier daemon pinned stay in force)"
    )]
    LoadThread(std::io::Error),
    #[error(
        "loading the programs panicked: {0}; no new programs are attached (links an earlier daemon pinned stay in force)"
    )]
    LoadPanicked(String),
    #[error("map {name}: {cause}")]
    Map { name: &'static str, cause: MapError },
    #[error("cannot make the key that binds grants to arguments: {0}")]
    ArgvKey(String),
    #[error("pin directory {path}: {cause}")]
    PinDir { path: PathBuf, cause: String },
    #[error("cannot pin {path}: {cause}")]
    Pin { path: PathBuf, cause: String },
}

/// Makes the secret key of the argument hash, once: a key an earlier daemon made stays, since
/// the pinned grants' bindings were made with it.
fn ensure_argv_key(map: &mut Array<MapData, ArgvKey>) -> Result<(), String> {
    if map.get(&0, 0).map_err(|error| error.to_string())? != [0, 0] {
        return Ok(());
    }
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|error| error.to_string())?;
    let [low, high] = [&bytes[..8], &bytes[8..]].map(|half| {
        let mut word = [0u8; 8];
        word.copy_from_slice(half);
        u64::from_ne_bytes(word)
    });
    map.set(0, [low, high], 0)
        .map_err(|error| error.to_string())
}

/// An error with its causes, for errors whose message leaves them out.
fn with_sources(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// Where the link of `program` is pinned.
pub fn link_pin(pin_dir: &Path, program: &str) -> PathBuf {
    pin_dir.join(format!("link_{program}"))
}

/// The id of the BPF link pinned at `path`, if a link is pinned there.
fn pinned_link_id(path: &Path) -> Option<u32> {
    use std::os::unix::ffi::OsStrExt as _;
    // aya cannot take a path holding a NUL byte.
    if path.as_os_str().as_bytes().contains(&0) {
        return None;
    }
    let link: FdLink = PinnedLink::from_pin(path).ok()?.into();
    link.info().ok().map(|info| info.id())
}

/// Whether the link of every program of `PROGRAMS` is pinned, as a live BPF link (a file of that
/// name on anything mounted over the pin directory is none): enforcement is live, with or
/// without a daemon. (Those of `LATER_PROGRAMS` depend on the kernel; the daemon that attached
/// them checks them, in [`Kernel::pins_are_ours`].)
pub fn links_pinned(pin_dir: &Path) -> bool {
    PROGRAMS
        .iter()
        .all(|program| pinned_link_id(&link_pin(pin_dir, program)).is_some())
}

/// Creates the pin directory, which must be on a BPF filesystem.
fn prepare_pin_dir(pin_dir: &Path) -> Result<(), LoaderError> {
    let error = |cause: String| LoaderError::PinDir {
        path: pin_dir.to_owned(),
        cause,
    };
    std::fs::create_dir_all(pin_dir).map_err(|cause| error(cause.to_string()))?;
    let fs = statfs(pin_dir).map_err(|cause| error(cause.to_string()))?;
    if fs.filesystem_type() != BPF_FS_MAGIC {
        return Err(error(
            "not on a BPF filesystem (mount -t bpf bpf /sys/fs/bpf)".into(),
        ));
    }
    Ok(())
}

/// Ends enforcement: removes the pinned links (detaching the programs) and maps.
pub fn uninstall(pin_dir: &Path) -> std::io::Result<()> {
    if !pin_dir.exists() {
        return Ok(());
    }
    // Links first, so nothing is left half enforced with its maps gone.
    for program in PROGRAMS.iter().chain(&LATER_PROGRAMS) {
        let path = link_pin(pin_dir, program);
        if path.exists() {
            std::fs::remove_file(path)?;
        }
    }
    for entry in std::fs::read_dir(pin_dir)? {
        std::fs::remove_file(entry?.path())?;
    }
    std::fs::remove_dir(pin_dir)
}

/// What the programs counted of file systems attached in the host's namespace and superblocks
/// made, by device number (see [`Kernel::mounts_made`]).
#[derive(Debug, Clone, Default)]
pub struct MountsMade {
    pub attached: u64,
    pub devices: Vec<(u32, u32)>,
}

/// The loaded programs and the maps the daemon uses, behind typed operations. What it attaches
/// stays attached by pinned links when it is dropped.
pub struct Kernel {
    /// The programs, until [`Kernel::attach`] pins their links: those hold them from then on,
    /// and the megabytes the loader kept of them (instructions, line info) are freed. The maps
    /// the daemon does not take live on through the programs; a kind the kernel empties when its
    /// last user reference goes (a program array, a perf event array, a map with timers) would
    /// have to be taken or pinned first.
    ebpf: Option<Ebpf>,
    agents: HashMap<MapData, u64, u32>,
    protected: HashMap<MapData, Target, u32>,
    nets: LpmTrie<MapData, [u8; 16], PortRanges>,
    grants: HashMap<MapData, GrantKey, GrantValue>,
    counters: PerCpuArray<MapData, u64>,
    daemon_pids: HashMap<MapData, u32, u32>,
    allowed: HashMap<MapData, Target, u32>,
    settings: Array<MapData, u32>,
    daemon_files: HashMap<MapData, Target, u32>,
    guarded_names: HashMap<MapData, NameKey, u32>,
    raw_devices: HashMap<MapData, u32, u32>,
    files: HashMap<MapData, Target, u32>,
    argv_grants: HashMap<MapData, u64, u64>,
    /// Taken by the event reader.
    events: Option<RingBuf<MapData>>,
    /// Taken by the local API.
    agent_connections: Option<HashMap<MapData, u64, u64>>,
    /// What it loads and attaches: `PROGRAMS`, then those of `LATER_PROGRAMS` whose hooks the
    /// running kernel has.
    programs: Vec<&'static str>,
    /// [`btrfs`]'s slots.
    btrfs: Array<MapData, u32>,
    /// Whether the programs read btrfs inodes' own device numbers (the offsets are written).
    knows_btrfs: bool,
    /// See [`maps::BTRFS_RULE_DEVICES`].
    btrfs_rule_devices: HashMap<MapData, u32, u32>,
    /// Whether the btrfs module's BTF was read since it appeared (it is read once).
    btrfs_module_tried: bool,
    /// See [`maps::MADE_DEVICES`].
    made_devices: HashMap<MapData, u32, u32>,
    /// See [`maps::LOOKED_DEVICES`].
    looked_devices: HashMap<MapData, u32, u32>,
    /// See [`maps::MOUNT_COUNTS`].
    mount_counts: Array<MapData, u64>,
    /// What `looked_devices` holds, so that a look writes only what changed.
    looked: std::collections::HashMap<u32, u32>,
    /// See [`maps::MOUNT_ANCESTORS`].
    mount_ancestors: HashMap<MapData, Target, u32>,
    /// What `mount_ancestors` holds.
    kept_ancestors: std::collections::HashSet<Target>,
    /// The ids of the links this daemon attached, in the order of `programs`.
    link_ids: Vec<u32>,
}

/// The maps of files matched by (device, inode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathList {
    /// Protected binaries: agents need approval to run them.
    Protected,
    /// Allowlisted binaries: in allowlist mode, what agents may run unasked.
    Allowed,
    /// Files and directories of `[[protect.file]]`, with [`gatekeeper_common::file_rule`] bits.
    Files,
}

/// Removes the entries of an adopted map that the current configuration no longer wants.
fn keep_only<K: aya::Pod, V: aya::Pod>(
    map: &mut HashMap<MapData, K, V>,
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

/// A lookup or delete of a key the map does not hold (aya reports deletes as ENOENT).
fn is_not_found(error: &MapError) -> bool {
    match error {
        MapError::KeyNotFound => true,
        MapError::SyscallError(syscall) => syscall.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

fn trie_key(prefix: &Prefix) -> lpm_trie::Key<[u8; 16]> {
    lpm_trie::Key::new(u32::from(prefix.len), prefix.address)
}

/// Checks that the BPF LSM is in the kernel's active LSM list.
pub fn check_bpf_lsm() -> Result<(), LoaderError> {
    let active = std::fs::read_to_string(LSM_LIST)
        .map_err(|cause| LoaderError::LsmListUnreadable { cause })?;
    let active = active.trim();
    if active.split(',').any(|lsm| lsm == "bpf") {
        Ok(())
    } else {
        Err(LoaderError::BpfLsmInactive {
            active: active.to_owned(),
        })
    }
}

/// Types by name in a BTF: the kernel's, found in one pass ([`KernelTypes`]), or a module's.
trait NamedTypes {
    fn btf(&self) -> &btf_rs::Btf;
    /// The structs, unions and functions named `name`.
    fn named(&self, name: &str) -> Vec<btf_rs::Type>;
}

impl NamedTypes for btf_rs::Btf {
    fn btf(&self) -> &btf_rs::Btf {
        self
    }

    fn named(&self, name: &str) -> Vec<btf_rs::Type> {
        self.resolve_types_by_name(name).unwrap_or_default()
    }
}

/// The kernel's types the programs need, found in one pass over its BTF. Parsed whole (btf-rs's
/// cache: maps of all its hundred thousand types), the BTF took about a second of every start in
/// the test guests; mapped and searched once, a small fraction of that.
pub struct KernelTypes {
    btf: btf_rs::Btf,
    named: BTreeMap<String, Vec<btf_rs::Type>>,
}

impl NamedTypes for KernelTypes {
    fn btf(&self) -> &btf_rs::Btf {
        &self.btf
    }

    fn named(&self, name: &str) -> Vec<btf_rs::Type> {
        self.named.get(name).cloned().unwrap_or_default()
    }
}

impl KernelTypes {
    /// Maps a private copy of the kernel's BTF (sysfs maps it itself only on newer kernels) and
    /// finds the structs and functions the programs need.
    pub fn read() -> Result<Self, LoaderError> {
        use fallible_iterator::FallibleIterator as _;
        use std::io::Write as _;
        let failed = |error: &dyn std::fmt::Display| LoaderError::Btf(error.to_string());
        let bytes = std::fs::read(VMLINUX_BTF).map_err(|error| failed(&error))?;
        let copy = nix::sys::memfd::memfd_create(
            c"gatekeeper-kernel-btf",
            nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
        )
        .map_err(|error| failed(&error))?;
        let mut copy = std::fs::File::from(copy);
        copy.write_all(&bytes).map_err(|error| failed(&error))?;
        let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&copy));
        let btf = btf_rs::Btf::from_file_with_backend(path, btf_rs::Backend::Mmap)
            .map_err(|error| failed(&error))?;
        let wanted = wanted_names();
        let mut named: BTreeMap<String, Vec<btf_rs::Type>> = BTreeMap::new();
        let mut types = btf.type_iter();
        while let Some(ty) = types.next().map_err(|error| failed(&error))? {
            let kept = matches!(
                ty,
                btf_rs::Type::Struct(_) | btf_rs::Type::Union(_) | btf_rs::Type::Func(_)
            );
            let name = match ty.as_btf_type() {
                Some(typed) if kept => btf.resolve_name(typed).unwrap_or_default(),
                _ => continue,
            };
            if wanted.contains(&name) {
                named.entry(name).or_default().push(ty);
            }
        }
        Ok(Self { btf, named })
    }
}

/// The structs and functions whose types the loader reads: those of [`offsets::MEMBERS`] and
/// [`btrfs::MEMBERS`] (when btrfs is built in), the hooks of [`hook_args::ALL`] and
/// of `LATER_PROGRAMS`.
fn wanted_names() -> BTreeSet<String> {
    let structures = (offsets::MEMBERS.iter()).map(|member| member.structure.to_owned());
    let hooks = (hook_args::ALL.iter()).map(|arg| arg.function.to_owned());
    let later = LATER_PROGRAMS.iter().map(|hook| lsm_function(hook));
    structures
        .chain(hooks)
        .chain(later)
        .chain(btrfs::MEMBERS.map(|(_, structure, _)| structure.to_owned()))
        .collect()
}

/// The BPF LSM function of `hook`, as BTF names it.
fn lsm_function(hook: &str) -> String {
    format!("bpf_lsm_{hook}")
}

/// Byte offsets of [`offsets::MEMBERS`] in the running kernel, from its BTF, by global name.
pub fn offsets_from_kernel(kernel: &KernelTypes) -> Result<Vec<(&'static str, u32)>, LoaderError> {
    member_offsets(kernel, &offsets::MEMBERS)
}

/// Byte offsets of `members` in `types`, by global name.
fn member_offsets(
    types: &dyn NamedTypes,
    members: &[offsets::Member],
) -> Result<Vec<(&'static str, u32)>, LoaderError> {
    members
        .iter()
        .map(|member| {
            let offset = member_offset(types, member.structure, member.member)?;
            Ok((member.global, offset))
        })
        .collect()
}

/// The [`btrfs::MEMBERS`] offsets by slot, from the btrfs module's BTF while it is loaded or the
/// kernel's when btrfs is built in; None when btrfs is in neither (not loaded: no file is on
/// btrfs yet), or the module's BTF does not say (logged: the policy then refuses paths on btrfs,
/// a host without them runs).
pub fn btrfs_offsets_from_kernel(kernel: &KernelTypes) -> Option<Vec<(u32, u32)>> {
    if !Path::new(BTRFS_MODULE_BTF).exists() {
        // Built in, or not in the kernel (whose BTF may still name `btrfs_inode`, without
        // members, where btrfs is a module): silent when not, unless the module is loaded.
        let offsets = btrfs_offsets(kernel).ok();
        if offsets.is_none() && Path::new(BTRFS_MODULE).exists() {
            tracing::warn!(
                "btrfs is loaded without BTF ({BTRFS_MODULE_BTF} is missing: a kernel without CONFIG_DEBUG_INFO_BTF_MODULES); files on btrfs are not told apart"
            );
        }
        return offsets;
    }
    let module = btf_rs::Btf::from_split_file(BTRFS_MODULE_BTF, &kernel.btf)
        .inspect_err(|error| {
            tracing::warn!("cannot read the btrfs module's BTF from {BTRFS_MODULE_BTF}: {error}; files on btrfs are not told apart");
        })
        .ok()?;
    btrfs_offsets(&module)
        .inspect_err(|error| {
            tracing::warn!("btrfs: {error}; files on btrfs are not told apart");
        })
        .ok()
}

fn btrfs_offsets(types: &dyn NamedTypes) -> Result<Vec<(u32, u32)>, LoaderError> {
    (btrfs::MEMBERS.iter())
        .map(|(slot, structure, member)| Ok((*slot, member_offset(types, structure, member)?)))
        .collect()
}

/// The index of each of [`hook_args::ALL`] in the running kernel, from its BTF, by global name.
pub fn hook_args_from_kernel(
    kernel: &KernelTypes,
) -> Result<Vec<(&'static str, u32)>, LoaderError> {
    hook_args::ALL
        .iter()
        .map(|arg| {
            let count = parameter_count(kernel, arg.function)
                .ok_or(LoaderError::MissingHook(arg.function))?;
            let index = count
                .checked_sub(1 + arg.from_last)
                .ok_or(LoaderError::MissingHook(arg.function))?;
            Ok((arg.global, index as u32))
        })
        .collect()
}

/// `PROGRAMS`, and those of `LATER_PROGRAMS` whose hooks the running kernel has.
fn programs_for(kernel: &KernelTypes) -> Vec<&'static str> {
    let later = LATER_PROGRAMS
        .into_iter()
        .filter(|hook| parameter_count(kernel, &lsm_function(hook)).is_some());
    PROGRAMS.into_iter().chain(later).collect()
}

/// How many parameters the function `name` takes.
fn parameter_count(types: &dyn NamedTypes, name: &str) -> Option<usize> {
    let btf = types.btf();
    types.named(name).iter().find_map(|ty| match ty {
        btf_rs::Type::Func(function) => match btf.resolve_chained_type(function) {
            Ok(btf_rs::Type::FuncProto(proto)) => Some(proto.parameters.len()),
            _ => None,
        },
        _ => None,
    })
}

fn member_offset(
    types: &dyn NamedTypes,
    structure: &str,
    member: &str,
) -> Result<u32, LoaderError> {
    let missing = || LoaderError::MissingMember {
        structure: structure.to_owned(),
        member: member.to_owned(),
    };
    let btf = types.btf();
    types
        .named(structure)
        .iter()
        .find_map(|ty| match ty {
            btf_rs::Type::Struct(s) => find_member(btf, s, member),
            _ => None,
        })
        .ok_or_else(missing)
}

/// Bit offsets add up through anonymous struct and union members.
fn find_member(btf: &btf_rs::Btf, s: &btf_rs::Struct, member: &str) -> Option<u32> {
    for candidate in &s.members {
        let name = btf.resolve_name(candidate).unwrap_or_default();
        // A bitfield cannot be read as a whole value at a byte offset.
        if name == member && candidate.bitfield_size().unwrap_or(0) == 0 {
            return Some(candidate.bit_offset() / 8);
        }
        if name.is_empty()
            && let Ok(btf_rs::Type::Struct(inner) | btf_rs::Type::Union(inner)) =
                btf.resolve_chained_type(candidate)
            && let Some(offset) = find_member(btf, &inner, member)
        {
            return Some(candidate.bit_offset() / 8 + offset);
        }
    }
    None
}

impl Kernel {
    /// Loads the programs. Fails, and attaches nothing, unless the kernel enforces. Maps are
    /// pinned in `pin_dir`, and adopted from there when a daemon ran before.
    ///
    /// On a thread of its own, which glibc gives an allocator arena of its own where it can: the
    /// megabytes the kernel's BTF takes (aya parses it whole) for a moment are then not scattered
    /// among what the daemon keeps, and go back to the kernel once freed (with
    /// `service::give_back_freed_memory`, best effort).
    pub fn load(pin_dir: &Path) -> Result<Self, LoaderError> {
        std::thread::scope(|scope| {
            let loading = std::thread::Builder::new()
                .name("gatekeeper-load".into())
                .spawn_scoped(scope, || Self::load_here(pin_dir))
                .map_err(LoaderError::LoadThread)?;
            loading.join().unwrap_or_else(|panic| {
                let text = (panic.downcast_ref::<&str>().map(|text| text.to_string()))
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                Err(LoaderError::LoadPanicked(text))
            })
        })
    }

    fn load_here(pin_dir: &Path) -> Result<Self, LoaderError> {
        check_bpf_lsm()?;
        prepare_pin_dir(pin_dir)?;
        let kernel_types = KernelTypes::read()?;
        let offsets = offsets_from_kernel(&kernel_types)?;
        let hook_args = hook_args_from_kernel(&kernel_types)?;
        let programs = programs_for(&kernel_types);
        let btrfs = btrfs_offsets_from_kernel(&kernel_types);
        drop(kernel_types);
        let btf = Btf::from_sys_fs().map_err(|error| LoaderError::Btf(error.to_string()))?;
        let mut loader = EbpfLoader::new();
        loader.btf(Some(&btf)).default_map_pin_directory(pin_dir);
        for (global, value) in offsets.iter().chain(&hook_args) {
            loader.override_global(global, value, true);
        }
        let mut ebpf = loader.load(EBPF_OBJECT)?;

        for &name in &programs {
            let program: &mut Lsm = ebpf
                .program_mut(name)
                .ok_or(LoaderError::Missing(name))?
                .try_into()
                .map_err(|cause| LoaderError::Refused { cause })?;
            program
                .load(name, &btf)
                .map_err(|cause| LoaderError::Refused { cause })?;
        }

        let mut take = |name: &'static str| ebpf.take_map(name).ok_or(LoaderError::Missing(name));
        let agents = take(maps::AGENT_CGROUPS)?;
        let protected = take(maps::PROTECTED)?;
        let nets = take(maps::PROTECTED_NETS)?;
        let grants = take(maps::GRANTS)?;
        let counters = take(maps::COUNTERS)?;
        let daemon_pids = take(maps::DAEMON_PIDS)?;
        let allowed = take(maps::ALLOWED)?;
        let settings = take(maps::SETTINGS)?;
        let daemon_files = take(maps::DAEMON_FILES)?;
        let guarded_names = take(maps::GUARDED_NAMES)?;
        let raw_devices = take(maps::RAW_DEVICES)?;
        let files = take(maps::PROTECTED_FILES)?;
        let argv_key = take(maps::ARGV_KEY)?;
        let argv_grants = take(maps::ARGV_GRANTS)?;
        let approved_env = take(maps::APPROVED_ENV)?;
        let events = take(maps::EVENTS)?;
        let agent_connections = take(maps::AGENT_CONNECTIONS)?;
        let map_error = |name| move |cause| LoaderError::Map { name, cause };
        let mut argv_key: Array<MapData, ArgvKey> =
            Array::try_from(argv_key).map_err(map_error(maps::ARGV_KEY))?;
        ensure_argv_key(&mut argv_key).map_err(LoaderError::ArgvKey)?;
        let mut approved_env: HashMap<MapData, EnvName, u8> =
            HashMap::try_from(approved_env).map_err(map_error(maps::APPROVED_ENV))?;
        for name in APPROVED_ENV.iter().filter_map(|name| EnvName::new(name)) {
            approved_env
                .insert(name, 1, 0)
                .map_err(map_error(maps::APPROVED_ENV))?;
        }
        let mut kernel = Self {
            agents: HashMap::try_from(agents).map_err(map_error(maps::AGENT_CGROUPS))?,
            protected: HashMap::try_from(protected).map_err(map_error(maps::PROTECTED))?,
            nets: LpmTrie::try_from(nets).map_err(map_error(maps::PROTECTED_NETS))?,
            grants: HashMap::try_from(grants).map_err(map_error(maps::GRANTS))?,
            counters: PerCpuArray::try_from(counters).map_err(map_error(maps::COUNTERS))?,
            daemon_pids: HashMap::try_from(daemon_pids).map_err(map_error(maps::DAEMON_PIDS))?,
            allowed: HashMap::try_from(allowed).map_err(map_error(maps::ALLOWED))?,
            settings: Array::try_from(settings).map_err(map_error(maps::SETTINGS))?,
            daemon_files: HashMap::try_from(daemon_files).map_err(map_error(maps::DAEMON_FILES))?,
            guarded_names: HashMap::try_from(guarded_names)
                .map_err(map_error(maps::GUARDED_NAMES))?,
            raw_devices: HashMap::try_from(raw_devices).map_err(map_error(maps::RAW_DEVICES))?,
            files: HashMap::try_from(files).map_err(map_error(maps::PROTECTED_FILES))?,
            argv_grants: HashMap::try_from(argv_grants).map_err(map_error(maps::ARGV_GRANTS))?,
            events: Some(RingBuf::try_from(events).map_err(map_error(maps::EVENTS))?),
            agent_connections: Some(
                HashMap::try_from(agent_connections).map_err(map_error(maps::AGENT_CONNECTIONS))?,
            ),
            programs,
            btrfs: Array::try_from(take(maps::BTRFS)?).map_err(map_error(maps::BTRFS))?,
            knows_btrfs: false,
            btrfs_rule_devices: HashMap::try_from(take(maps::BTRFS_RULE_DEVICES)?)
                .map_err(map_error(maps::BTRFS_RULE_DEVICES))?,
            btrfs_module_tried: false,
            made_devices: HashMap::try_from(take(maps::MADE_DEVICES)?)
                .map_err(map_error(maps::MADE_DEVICES))?,
            looked_devices: HashMap::try_from(take(maps::LOOKED_DEVICES)?)
                .map_err(map_error(maps::LOOKED_DEVICES))?,
            looked: std::collections::HashMap::new(),
            mount_counts: Array::try_from(take(maps::MOUNT_COUNTS)?)
                .map_err(map_error(maps::MOUNT_COUNTS))?,
            mount_ancestors: HashMap::try_from(take(maps::MOUNT_ANCESTORS)?)
                .map_err(map_error(maps::MOUNT_ANCESTORS))?,
            kept_ancestors: std::collections::HashSet::new(),
            link_ids: Vec::new(),
            ebpf: Some(ebpf),
        };
        if let Some(offsets) = btrfs {
            kernel
                .set_btrfs_offsets(&offsets)
                .map_err(map_error(maps::BTRFS))?;
        }
        // Until the daemon has read the mount table with the programs attached.
        kernel
            .mount_ancestors_unknown()
            .map_err(map_error(maps::MOUNT_COUNTS))?;
        Ok(kernel)
    }

    /// Attaches the programs and pins their links, so they enforce whether or not a daemon runs.
    /// Called after the maps hold the policy. Links pinned by an earlier daemon are replaced only
    /// once every new program is attached: there is no moment without enforcement.
    pub fn attach(&mut self, pin_dir: &Path) -> Result<(), LoaderError> {
        // bpffs refuses names with dots.
        let staged = |program: &str| pin_dir.join(format!("link_{program}_new"));
        let mut ebpf = self.ebpf.take().ok_or(LoaderError::AttachedAlready)?;
        let mut link_ids = Vec::with_capacity(self.programs.len());
        for &name in &self.programs {
            let program: &mut Lsm = ebpf
                .program_mut(name)
                .ok_or(LoaderError::Missing(name))?
                .try_into()
                .map_err(LoaderError::Attach)?;
            let link_id = program.attach().map_err(LoaderError::Attach)?;
            let link: FdLink = program
                .take_link(link_id)
                .map_err(LoaderError::Attach)?
                .into();
            let id = link.info().map_err(|cause| LoaderError::Pin {
                path: staged(name),
                cause: with_sources(&cause),
            })?;
            link_ids.push(id.id());
            let path = staged(name);
            let _ = std::fs::remove_file(&path);
            link.pin(&path).map_err(|cause| LoaderError::Pin {
                path: path.clone(),
                cause: with_sources(&cause),
            })?;
        }
        for &name in &self.programs {
            let path = link_pin(pin_dir, name);
            // Renaming over the old pin drops the old link's last reference: it detaches.
            std::fs::rename(staged(name), &path).map_err(|cause| LoaderError::Pin {
                path,
                cause: cause.to_string(),
            })?;
        }
        self.link_ids = link_ids;
        Ok(())
    }

    /// Whether the pins in `pin_dir` are the links this daemon attached. A bpffs or a bind mount
    /// over the pin directory hides them: what is seen there then is not what enforces, and
    /// `gatekeeper uninstall` or an adopting daemon would act on the wrong thing.
    pub fn pins_are_ours(&self, pin_dir: &Path) -> bool {
        self.link_ids.len() == self.programs.len()
            && self
                .programs
                .iter()
                .zip(&self.link_ids)
                .all(|(program, id)| pinned_link_id(&link_pin(pin_dir, program)) == Some(*id))
    }

    /// Makes `ids` the agent cgroups: new ones in first, then the stale ones out.
    pub fn set_agent_cgroups(&mut self, ids: &[u64]) -> Result<(), MapError> {
        for id in ids {
            self.agents.insert(id, 1, 0)?;
        }
        keep_only(&mut self.agents, |id| ids.contains(id))
    }

    fn path_map(&mut self, list: PathList) -> &mut HashMap<MapData, Target, u32> {
        match list {
            PathList::Protected => &mut self.protected,
            PathList::Allowed => &mut self.allowed,
            PathList::Files => &mut self.files,
        }
    }

    /// Puts `target` into `list` with `value`: the rule's index, or for [`PathList::Files`] its
    /// bits.
    pub fn add_path(&mut self, list: PathList, target: Target, value: u32) -> Result<(), MapError> {
        self.path_map(list).insert(target, value, 0)
    }

    /// Whether `list` still holds `target` (the kernel takes a file opened for writing off the
    /// allowlist).
    pub fn has_path(&self, list: PathList, target: &Target) -> bool {
        self.path_list(list).get(target, 0).is_ok()
    }

    fn path_list(&self, list: PathList) -> &HashMap<MapData, Target, u32> {
        match list {
            PathList::Protected => &self.protected,
            PathList::Allowed => &self.allowed,
            PathList::Files => &self.files,
        }
    }

    /// Takes `target` out of `list`; one the list does not hold is no error.
    pub fn remove_path(&mut self, list: PathList, target: &Target) -> Result<(), MapError> {
        match self.path_map(list).remove(target) {
            Err(error) if !is_not_found(&error) => Err(error),
            _ => Ok(()),
        }
    }

    /// Every entry of `list` now, also those the kernel added itself.
    pub fn path_entries(&self, list: PathList) -> Vec<(Target, u32)> {
        self.path_list(list).iter().filter_map(Result::ok).collect()
    }

    /// Whether the programs tell btrfs subvolumes' files apart as `stat` does.
    pub fn knows_btrfs(&self) -> bool {
        self.knows_btrfs
    }

    /// Writes btrfs's offsets for the programs (the one that says they are known last).
    fn set_btrfs_offsets(&mut self, offsets: &[(u32, u32)]) -> Result<(), MapError> {
        // The slot that says the offsets are known goes in last, whatever the order given.
        let (known, rest): (Vec<_>, Vec<_>) =
            (offsets.iter()).partition(|(slot, _)| *slot == btrfs::INODE_VFS_INODE);
        for &(slot, offset) in rest.into_iter().chain(known) {
            self.btrfs.set(slot, offset, 0)?;
        }
        self.knows_btrfs = true;
        Ok(())
    }

    /// Has the programs read btrfs inodes' own device numbers once btrfs is loaded after the
    /// start: before the daemon keys a file there, which `stat` numbers by its subvolume. Called
    /// before each look at the rules' paths and the mounts; reads the module's BTF once.
    pub fn learn_btrfs(&mut self) {
        let loaded = Path::new(BTRFS_MODULE).exists();
        if self.knows_btrfs || !loaded {
            self.btrfs_module_tried &= loaded;
            return;
        }
        if self.btrfs_module_tried {
            return;
        }
        self.btrfs_module_tried = true;
        let offsets = KernelTypes::read()
            .inspect_err(
                |error| tracing::error!(%error, "btrfs was loaded: cannot read the kernel's BTF"),
            )
            .ok()
            .and_then(|kernel| btrfs_offsets_from_kernel(&kernel));
        let Some(offsets) = offsets else {
            return;
        };
        match self.set_btrfs_offsets(&offsets) {
            Ok(()) => tracing::info!(
                "btrfs was loaded: its files are told apart by subvolume from now on"
            ),
            Err(error) => {
                tracing::error!(%error, "btrfs was loaded: cannot write its offsets for the programs")
            }
        }
    }

    /// Has the programs walk up from files on the btrfs of superblock device `device` (kernel
    /// encoding; None: every btrfs, when it cannot be told) to the directory rules above (see
    /// [`maps::BTRFS_RULE_DEVICES`]): once one is on it, for the daemon's life. Every btrfs too
    /// once the map is full.
    pub fn mark_btrfs_directory_rules(&mut self, device: Option<u32>) -> Result<(), MapError> {
        const EVERY_BTRFS: u32 = 0;
        let marked = self.btrfs_rule_devices.keys().filter(Result::is_ok).count();
        let device = match device {
            // One slot kept for "every btrfs".
            Some(device) if marked + 1 < btrfs::MAX_RULE_DEVICES as usize => device,
            _ => EVERY_BTRFS,
        };
        if self.btrfs_rule_devices.get(&device, 0).is_err() {
            self.btrfs_rule_devices.insert(device, 1, 0)?;
        }
        Ok(())
    }

    /// What the programs counted of file systems attached and superblocks made (see
    /// [`maps::MOUNT_COUNTS`], [`maps::MADE_DEVICES`]): read before a look at the paths, and
    /// given to [`Kernel::note_looked`] after it.
    pub fn mounts_made(&self) -> MountsMade {
        MountsMade {
            attached: self.mount_counts.get(&mount_count::MADE, 0).unwrap_or(0),
            devices: self.made_devices.iter().filter_map(Result::ok).collect(),
        }
    }

    /// Tells the programs that the paths were looked at after what `made` counts (see
    /// [`maps::LOOKED_DEVICES`]): the attached count last, once the devices' say so too.
    pub fn note_looked(&mut self, made: &MountsMade) -> Result<(), MapError> {
        for &(device, count) in &made.devices {
            if self.looked.get(&device) == Some(&count) {
                continue;
            }
            self.looked_devices.insert(device, count, 0)?;
            self.looked.insert(device, count);
        }
        self.mount_counts
            .set(mount_count::LOOKED, made.attached, 0)?;
        Ok(())
    }

    /// The programs' count of attaches (see [`mount_count::MADE`]): read before the mount table
    /// whose directories above mount points go to [`Kernel::set_mount_ancestors`].
    pub fn attached(&self) -> u64 {
        self.mount_counts.get(&mount_count::MADE, 0).unwrap_or(0)
    }

    /// Makes `directories` the directories above the host's mount points, as a mount table read
    /// after the programs counted `looked` attaches: the stale ones out first (no longer above
    /// one), then the new ones in, then the count, which lets agents rename directories again.
    /// Should a map fail (more than it holds), agents rename no directory until a later call
    /// succeeds.
    pub fn set_mount_ancestors(
        &mut self,
        directories: &std::collections::HashSet<Target>,
        looked: u64,
    ) -> Result<(), MapError> {
        let kept = self.keep_mount_ancestors(directories, looked);
        if kept.is_err() {
            self.mount_ancestors_unknown()?;
        }
        kept
    }

    /// Agents rename no directory until [`Kernel::set_mount_ancestors`] succeeds: the
    /// directories above the host's mount points could not be looked at.
    pub fn mount_ancestors_unknown(&mut self) -> Result<(), MapError> {
        self.mount_counts.set(mount_count::ANCESTORS_UNKNOWN, 1, 0)
    }

    fn keep_mount_ancestors(
        &mut self,
        directories: &std::collections::HashSet<Target>,
        looked: u64,
    ) -> Result<(), MapError> {
        let stale: Vec<Target> = (self.kept_ancestors.difference(directories))
            .copied()
            .collect();
        for directory in stale {
            match self.mount_ancestors.remove(&directory) {
                Ok(()) => {}
                Err(error) if is_not_found(&error) => {}
                Err(error) => return Err(error),
            }
            self.kept_ancestors.remove(&directory);
        }
        for directory in directories {
            if !self.kept_ancestors.contains(directory) {
                self.mount_ancestors.insert(directory, 1, 0)?;
                self.kept_ancestors.insert(*directory);
            }
        }
        self.mount_counts
            .set(mount_count::ANCESTORS_LOOKED, looked, 0)?;
        self.mount_counts.set(mount_count::ANCESTORS_UNKNOWN, 0, 0)
    }

    /// Makes `files` ((device, inode), [`gatekeeper_common::daemon_file`] bits) the daemon's
    /// files agents may not touch: new ones in first, then the stale ones out.
    pub fn set_daemon_files(&mut self, files: &[(Target, u32)]) -> Result<(), MapError> {
        for (target, bits) in files {
            self.daemon_files.insert(target, bits, 0)?;
        }
        keep_only(&mut self.daemon_files, |target| {
            files.iter().any(|(file, _)| file == target)
        })
    }

    /// Makes `names` the names agents may not make: new ones in first, then the stale ones out.
    pub fn set_guarded_names(&mut self, names: &[NameKey]) -> Result<(), MapError> {
        for name in names {
            self.guarded_names.insert(name, 1, 0)?;
        }
        keep_only(&mut self.guarded_names, |key| names.contains(key))
    }

    /// Makes `devices` ([`gatekeeper_common::raw_device_key`], [`raw_device`] value) the
    /// character devices agents may not open and those registered: stale ones out first (a
    /// device neither refused nor registered is refused, so no step lets more through) and
    /// the refused ones in before the rest, so that a full map costs agents devices, never lets
    /// one through.
    pub fn set_raw_devices(&mut self, devices: &[(u32, u32)]) -> Result<(), MapError> {
        keep_only(&mut self.raw_devices, |key| {
            devices.iter().any(|(listed, _)| listed == key)
        })?;
        for wanted in [raw_device::REFUSED, raw_device::REGISTERED] {
            for (key, value) in devices.iter().filter(|(_, value)| *value == wanted) {
                self.raw_devices.insert(key, value, 0)?;
            }
        }
        Ok(())
    }

    /// Adds `bits` to a file's among the daemon's files (a sealing key made while the daemon
    /// runs, a kept name that names a new file).
    pub fn add_daemon_file(&mut self, target: &Target, bits: u32) -> Result<(), MapError> {
        let had = self.daemon_file_bits(target)?;
        self.daemon_files.insert(target, had | bits, 0)
    }

    /// Takes `bits` from a file's among the daemon's files; the file goes with its last bit.
    pub fn remove_daemon_file(&mut self, target: &Target, bits: u32) -> Result<(), MapError> {
        let had = self.daemon_file_bits(target)?;
        if had & bits == 0 {
            return Ok(());
        }
        match had & !bits {
            0 => self.daemon_files.remove(target),
            left => self.daemon_files.insert(target, left, 0),
        }
    }

    /// The bits a file has among the daemon's files (none: not one of them).
    fn daemon_file_bits(&self, target: &Target) -> Result<u32, MapError> {
        match self.daemon_files.get(target, 0) {
            Err(MapError::KeyNotFound) => Ok(0),
            bits => bits,
        }
    }

    /// Takes out of `list` every file `wanted` does not keep.
    pub fn keep_paths(
        &mut self,
        list: PathList,
        wanted: impl Fn(&Target) -> bool,
    ) -> Result<(), MapError> {
        keep_only(self.path_map(list), wanted)
    }

    pub fn set_setting(&mut self, setting: Setting, value: u32) -> Result<(), MapError> {
        self.settings.set(setting as u32, value, 0)
    }

    /// Makes `pid` the one daemon agents may not signal or trace.
    pub fn set_daemon_pid(&mut self, pid: u32) -> Result<(), MapError> {
        self.daemon_pids.insert(pid, 1, 0)?;
        keep_only(&mut self.daemon_pids, |other| *other == pid)
    }

    /// What the destination trie holds now.
    pub fn nets(&self) -> BTreeMap<Prefix, PortRanges> {
        self.nets
            .iter()
            .filter_map(Result::ok)
            .map(|(key, ranges)| {
                let prefix = Prefix {
                    address: key.data(),
                    len: key.prefix_len() as u8,
                };
                (prefix, ranges)
            })
            .collect()
    }

    pub fn put_net(&mut self, prefix: &Prefix, ranges: &PortRanges) -> Result<(), MapError> {
        self.nets.insert(&trie_key(prefix), ranges, 0)
    }

    pub fn remove_net(&mut self, prefix: &Prefix) -> Result<(), MapError> {
        self.nets.remove(&trie_key(prefix))
    }

    /// Puts a grant into the kernel; with `argv`, bound to the arguments of that hash (its id
    /// says so, and the hash goes in first, so the kernel never sees the grant without it).
    pub fn put_grant(
        &mut self,
        key: &GrantKey,
        value: &GrantValue,
        argv: Option<u64>,
    ) -> Result<(), MapError> {
        if let Some(hash) = argv {
            self.argv_grants.insert(value.grant_id, hash, 0)?;
        }
        self.grants.insert(key, value, 0)
    }

    pub fn grant(&self, key: &GrantKey) -> Option<GrantValue> {
        self.grants.get(key, 0).ok()
    }

    /// Takes grant `grant_id` out of the kernel: true if it was there (unused), false if the
    /// kernel had consumed it. A map delete succeeds for exactly one of racing deleters, so an
    /// agent's retry and this cannot both have it.
    pub fn take_grant(&mut self, key: &GrantKey, grant_id: u64) -> Result<bool, MapError> {
        let taken = match self.grants.get(key, 0) {
            Ok(value) if value.grant_id == grant_id => match self.grants.remove(key) {
                Ok(()) => true,
                Err(error) if is_not_found(&error) => false,
                Err(error) => return Err(error),
            },
            Ok(_) => false,
            Err(error) if is_not_found(&error) => false,
            Err(error) => return Err(error),
        };
        // Its argument binding, if the kernel did not drop it on use (a replaced grant's).
        match self.argv_grants.remove(&grant_id) {
            Err(error) if !is_not_found(&error) => Err(error),
            _ => Ok(taken),
        }
    }

    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }

    pub fn take_agent_connections(&mut self) -> Option<HashMap<MapData, u64, u64>> {
        self.agent_connections.take()
    }

    pub fn counter(&self, counter: Counter) -> u64 {
        self.counters
            .get(&(counter as u32), 0)
            .map(|values| values.iter().sum())
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use object::{Object as _, ObjectSymbol as _};

    use super::*;

    /// The one pass finds every struct and hook function btf-rs's whole parse finds, with the
    /// same offsets and parameter counts (in the host's BTF, which these machines have).
    #[test]
    fn one_pass_over_the_kernels_btf_finds_what_a_whole_parse_does() {
        let kernel = KernelTypes::read().unwrap();
        let parsed = btf_rs::Btf::from_file(VMLINUX_BTF).unwrap();
        for member in offsets::MEMBERS {
            let (structure, name) = (member.structure, member.member);
            assert_eq!(
                member_offset(&kernel, structure, name).ok(),
                member_offset(&parsed, structure, name).ok(),
                "{structure}.{name}"
            );
        }
        let functions = (hook_args::ALL.iter().map(|arg| arg.function.to_owned()))
            .chain(LATER_PROGRAMS.iter().map(|hook| lsm_function(hook)));
        for function in functions {
            assert_eq!(
                parameter_count(&kernel, &function),
                parameter_count(&parsed, &function),
                "{function}"
            );
        }
        for (_, structure, name) in btrfs::MEMBERS {
            assert_eq!(
                member_offset(&kernel, structure, name).ok(),
                member_offset(&parsed, structure, name).ok(),
                "{structure}.{name}"
            );
        }
    }

    /// `cargo xtask bench` measures each program beside an empty one on the same hook
    /// (`gatekeeper-ebpf/src/floor.rs`) and stops when one is missing.
    #[test]
    fn every_program_has_its_floor_for_the_bench() {
        let object = object::File::parse(EBPF_OBJECT).unwrap();
        let symbols: Vec<&str> = object.symbols().filter_map(|s| s.name().ok()).collect();
        for program in PROGRAMS {
            assert!(symbols.contains(&program), "{program}");
            let floor = format!("floor_{program}");
            assert!(symbols.contains(&floor.as_str()), "{floor} is missing");
        }
    }
}
