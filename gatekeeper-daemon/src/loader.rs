//! Loads and attaches the kernel programs, and owns the maps the daemon writes.
//!
//! Refuses loudly when the kernel cannot enforce: the BPF LSM not active, or the program refused.

use std::path::Path;

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{HashMap, MapData, MapError, PerCpuArray, RingBuf, lpm_trie::LpmTrie},
    programs::{Lsm, ProgramError},
};
use gatekeeper_common::{
    Counter, GrantKey, GrantValue, PROGRAMS, PortRanges, Target, maps, offsets,
};

const LSM_LIST: &str = "/sys/kernel/security/lsm";
const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gatekeeper"));

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
    #[error("map {name}: {cause}")]
    Map { name: &'static str, cause: MapError },
}

/// The loaded, attached programs and the maps the daemon uses. Dropping it detaches everything.
pub struct Kernel {
    // Owns the programs and their links: dropping it detaches.
    ebpf: Ebpf,
    pub agents: HashMap<MapData, u64, u32>,
    pub protected: HashMap<MapData, Target, u32>,
    pub nets: LpmTrie<MapData, [u8; 16], PortRanges>,
    pub grants: HashMap<MapData, GrantKey, GrantValue>,
    pub counters: PerCpuArray<MapData, u64>,
    /// Taken by the event reader.
    pub events: Option<RingBuf<MapData>>,
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

/// The struct members the programs read: (global that receives the offset, struct, member).
const MEMBERS: [(&str, &str, &str); 10] = [
    (offsets::BPRM_FILE, "linux_binprm", "file"),
    (offsets::BPRM_FILENAME, "linux_binprm", "filename"),
    (offsets::FILE_INODE, "file", "f_inode"),
    (offsets::INODE_INO, "inode", "i_ino"),
    (offsets::INODE_SB, "inode", "i_sb"),
    (offsets::SB_DEV, "super_block", "s_dev"),
    (offsets::SOCKET_SK, "socket", "sk"),
    (offsets::SOCK_PROTOCOL, "sock", "sk_protocol"),
    (offsets::MSGHDR_NAME, "msghdr", "msg_name"),
    (offsets::MSGHDR_FLAGS, "msghdr", "msg_flags"),
];

/// Byte offsets of [`MEMBERS`] in the running kernel, from its BTF.
pub fn offsets_from_kernel(path: &Path) -> Result<Vec<(&'static str, u32)>, LoaderError> {
    let btf = btf_rs::Btf::from_file(path).map_err(|error| LoaderError::Btf(error.to_string()))?;
    MEMBERS
        .iter()
        .map(|&(global, structure, member)| Ok((global, member_offset(&btf, structure, member)?)))
        .collect()
}

fn member_offset(btf: &btf_rs::Btf, structure: &str, member: &str) -> Result<u32, LoaderError> {
    let missing = || LoaderError::MissingMember {
        structure: structure.to_owned(),
        member: member.to_owned(),
    };
    let types = btf
        .resolve_types_by_name(structure)
        .map_err(|_| missing())?;
    types
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
    /// Loads and attaches the programs. Fails, and enforces nothing, unless the kernel enforces.
    pub fn load() -> Result<Self, LoaderError> {
        check_bpf_lsm()?;
        let offsets = offsets_from_kernel(Path::new(VMLINUX_BTF))?;
        let btf = Btf::from_sys_fs().map_err(|error| LoaderError::Btf(error.to_string()))?;
        let mut loader = EbpfLoader::new();
        loader.btf(Some(&btf));
        for (global, offset) in &offsets {
            loader.override_global(global, offset, true);
        }
        let mut ebpf = loader.load(EBPF_OBJECT)?;

        for name in PROGRAMS {
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
        let events = take(maps::EVENTS)?;
        let map_error = |name| move |cause| LoaderError::Map { name, cause };
        let kernel = Self {
            agents: HashMap::try_from(agents).map_err(map_error(maps::AGENT_CGROUPS))?,
            protected: HashMap::try_from(protected).map_err(map_error(maps::PROTECTED))?,
            nets: LpmTrie::try_from(nets).map_err(map_error(maps::PROTECTED_NETS))?,
            grants: HashMap::try_from(grants).map_err(map_error(maps::GRANTS))?,
            counters: PerCpuArray::try_from(counters).map_err(map_error(maps::COUNTERS))?,
            events: Some(RingBuf::try_from(events).map_err(map_error(maps::EVENTS))?),
            ebpf,
        };
        Ok(kernel)
    }

    /// Attaches the programs. Called after the maps hold the policy, so enforcement starts whole.
    pub fn attach(&mut self) -> Result<(), LoaderError> {
        for name in PROGRAMS {
            let program: &mut Lsm = self
                .ebpf
                .program_mut(name)
                .ok_or(LoaderError::Missing(name))?
                .try_into()
                .map_err(LoaderError::Attach)?;
            program.attach().map_err(LoaderError::Attach)?;
        }
        Ok(())
    }

    pub fn counter(&self, counter: Counter) -> u64 {
        self.counters
            .get(&(counter as u32), 0)
            .map(|values| values.iter().sum())
            .unwrap_or(0)
    }
}
