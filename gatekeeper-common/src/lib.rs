//! Types shared by the Gatekeeper kernel programs and the daemon.
//!
//! Everything here is `#[repr(C)]` with explicit padding fields so the kernel and userspace agree
//! on the layout byte for byte. The `user` feature adds `aya::Pod` for the map types.
#![no_std]

/// Map names, shared so the daemon finds what the kernel program declares.
pub mod maps {
    /// cgroup id (u64) -> 1 for every configured agent cgroup.
    pub const AGENT_CGROUPS: &str = "AGENT_CGROUPS";
    /// [`crate::Target`] -> rule index (u32) for every protected target.
    pub const PROTECTED: &str = "PROTECTED";
    /// [`crate::GrantKey`] -> [`crate::GrantValue`]: single-use approvals.
    pub const GRANTS: &str = "GRANTS";
    /// Ring buffer of [`crate::Event`].
    pub const EVENTS: &str = "EVENTS";
    /// Per-CPU counters, indexed by [`crate::Counter`].
    pub const COUNTERS: &str = "COUNTERS";
}

/// Names of the read-only globals the daemon fills with struct offsets read from the running
/// kernel's BTF, since Rust-built BPF carries no CO-RE relocations.
pub mod offsets {
    pub const BPRM_FILE: &str = "OFF_BPRM_FILE";
    pub const BPRM_FILENAME: &str = "OFF_BPRM_FILENAME";
    pub const FILE_INODE: &str = "OFF_FILE_INODE";
    pub const INODE_INO: &str = "OFF_INODE_INO";
    pub const INODE_SB: &str = "OFF_INODE_SB";
    pub const SB_DEV: &str = "OFF_SB_DEV";
}

/// Name of the LSM program and the hook it attaches to.
pub const EXEC_PROGRAM: &str = "bprm_check_security";

/// How many cgroup levels below the root the kernel walks looking for an agent ancestor.
pub const MAX_CGROUP_DEPTH: i32 = 16;

/// Capacity of the maps the daemon fills.
pub const MAX_AGENT_CGROUPS: u32 = 256;
pub const MAX_PROTECTED: u32 = 4096;
pub const MAX_GRANTS: u32 = 4096;
pub const RING_BUFFER_BYTES: u32 = 256 * 1024;

pub const TARGET_KIND_EXEC: u32 = 1;

/// What an action touches. For exec, `data` is (device, inode) of the executed file, the device
/// in the kernel's own `dev_t` encoding (major << 20 | minor).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
pub struct Target {
    pub kind: u32,
    /// Kind-specific extra data; zero for exec.
    pub aux: u32,
    pub data: [u64; 2],
}

impl Target {
    pub const fn exec(dev: u32, ino: u64) -> Self {
        Self {
            kind: TARGET_KIND_EXEC,
            aux: 0,
            data: [dev as u64, ino],
        }
    }
}

/// Key of a grant: the exact cgroup of the process that asked, and what it asked for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct GrantKey {
    pub cgroup_id: u64,
    pub target: Target,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GrantValue {
    /// CLOCK_BOOTTIME nanoseconds after which the grant never allows.
    pub expires_boot_ns: u64,
    pub grant_id: u64,
}

#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// An agent's action was denied and waits for approval.
    Denied = 1,
    /// A grant was consumed: this one action passed.
    GrantUsed = 2,
}

impl EventKind {
    pub fn from_raw(raw: u32) -> Option<Self> {
        match raw {
            1 => Some(Self::Denied),
            2 => Some(Self::GrantUsed),
            _ => None,
        }
    }
}

pub const COMM_LEN: usize = 16;
pub const FILENAME_LEN: usize = 256;

/// One record in the ring buffer.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Event {
    pub kind: u32,
    pub pid: u32,
    pub tgid: u32,
    pub uid: u32,
    /// The cgroup the process is in (the grant key's cgroup).
    pub cgroup_id: u64,
    /// The configured agent cgroup it descends from.
    pub agent_cgroup_id: u64,
    pub target: Target,
    /// Set on [`EventKind::GrantUsed`].
    pub grant_id: u64,
    pub comm: [u8; COMM_LEN],
    pub filename: [u8; FILENAME_LEN],
}

/// Indices into the per-CPU counter map.
#[repr(u32)]
#[derive(Clone, Copy, Debug)]
pub enum Counter {
    /// Events that did not fit into the ring buffer (the action was still denied).
    EventsDropped = 0,
    /// Protected actions denied.
    Denied = 1,
    /// Grants consumed.
    GrantsUsed = 2,
}

pub const COUNTER_SLOTS: u32 = 4;

#[cfg(feature = "user")]
mod user {
    // SAFETY: all are plain-old-data `repr(C)` structs with no implicit padding.
    unsafe impl aya::Pod for super::Target {}
    unsafe impl aya::Pod for super::GrantKey {}
    unsafe impl aya::Pod for super::GrantValue {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    // Any implicit padding would make these sums differ from the sizes.
    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<Target>(), 4 + 4 + 16);
        assert_eq!(size_of::<GrantKey>(), 8 + size_of::<Target>());
        assert_eq!(size_of::<GrantValue>(), 16);
        assert_eq!(
            size_of::<Event>(),
            4 * 4 + 8 + 8 + size_of::<Target>() + 8 + COMM_LEN + FILENAME_LEN
        );
    }

    #[test]
    fn event_kind_round_trips() {
        for kind in [EventKind::Denied, EventKind::GrantUsed] {
            assert_eq!(EventKind::from_raw(kind as u32), Some(kind));
        }
        assert_eq!(EventKind::from_raw(0), None);
    }
}
