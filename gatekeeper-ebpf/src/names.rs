//! Names agents may not make: where a host program trusts a path that is missing for now (a
//! syslog daemon that stops takes `/dev/log` with it; a host service's directory not made yet),
//! an agent's socket, link or directory there would be met instead. Matched by directory and
//! name for every way a name is made: files, nodes and sockets, symlinks and directories here,
//! hard links and renames in [`crate::files`]. Only agents pay for more than one read.

use aya_ebpf::{
    helpers::bpf_probe_read_kernel_str_bytes, macros::lsm, macros::map, maps::HashMap,
    programs::LsmContext,
};
use gatekeeper_common::{GUARDED_NAME_BYTES, MAX_GUARDED_NAMES, NameKey, TamperHook};

use crate::{
    exec::inode_target,
    offsets::{OFF_DENTRY_NAME, OFF_QSTR_NAME},
    read::{member_ptr, read_field},
    verdict::{EPERM, agent_caller, tamper},
};

#[map]
static GUARDED_NAMES: HashMap<NameKey, u32> = HashMap::pinned(MAX_GUARDED_NAMES, 0);

/// open(O_CREAT) and mknod of a regular file.
#[lsm(hook = "inode_create")]
pub fn inode_create(ctx: LsmContext) -> i32 {
    name_made(ctx.arg(0), ctx.arg(1), ctx.arg(3))
}

/// Device nodes, FIFOs, and the socket file a unix socket's bind makes.
#[lsm(hook = "inode_mknod")]
pub fn inode_mknod(ctx: LsmContext) -> i32 {
    name_made(ctx.arg(0), ctx.arg(1), ctx.arg(4))
}

#[lsm(hook = "inode_symlink")]
pub fn inode_symlink(ctx: LsmContext) -> i32 {
    name_made(ctx.arg(0), ctx.arg(1), ctx.arg(3))
}

#[lsm(hook = "inode_mkdir")]
pub fn inode_mkdir(ctx: LsmContext) -> i32 {
    name_made(ctx.arg(0), ctx.arg(1), ctx.arg(3))
}

#[inline(always)]
fn name_made(dir: *const u8, dentry: *const u8, previous: i32) -> i32 {
    match agent_caller(previous) {
        Ok(agent) => unsafe { guard_new_name(agent, dir, dentry) },
        Err(verdict) => verdict,
    }
}

/// The verdict on an agent giving `dentry` (its name, in the directory `dir`) to a file: refused
/// for a guarded name, there or not.
#[inline(always)]
pub unsafe fn guard_new_name(agent: u64, dir: *const u8, dentry: *const u8) -> i32 {
    let Ok(dir) = (unsafe { inode_target(dir) }) else {
        return -EPERM;
    };
    let Ok(name) =
        (unsafe { read_field::<*const u8>(member_ptr(dentry, &OFF_DENTRY_NAME), &OFF_QSTR_NAME) })
    else {
        return -EPERM;
    };
    let mut key = NameKey {
        dir,
        name: [0; GUARDED_NAME_BYTES],
    };
    // A longer name is cut as the daemon cuts it (NameKey::new).
    if unsafe { bpf_probe_read_kernel_str_bytes(name, &mut key.name) }.is_err() {
        return -EPERM;
    }
    if GUARDED_NAMES.get_ptr(key).is_some() {
        return tamper(agent, TamperHook::GuardedName, dir.data);
    }
    0
}
