//! Names agents may not make, nor anything below them: where a host program trusts a path that
//! is missing for now (a syslog daemon that stops takes `/dev/log` with it; a host service's
//! directory not made yet, or taken away as its service stopped), an agent's socket, link or
//! directory there would be met instead. Matched by directory and name for every way a name is
//! made: files, nodes and sockets, symlinks and directories here, hard links and renames in
//! [`crate::files`], which also keep what the host makes there from being moved, removed,
//! written or changed. Only agents pay for more than one read.

use aya_ebpf::{
    helpers::bpf_probe_read_kernel_str_bytes, macros::lsm, macros::map, maps::HashMap,
    programs::LsmContext,
};
use gatekeeper_common::{GUARDED_NAME_BYTES, MAX_GUARDED_NAMES, NameKey, TamperHook, Target};

use crate::{
    exec::inode_target,
    offsets::{OFF_DENTRY_INODE, OFF_DENTRY_NAME, OFF_DENTRY_PARENT, OFF_QSTR_NAME},
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
        Ok(agent) => unsafe { guard_name_at(agent, dir, dentry) },
        Err(verdict) => verdict,
    }
}

/// How many names a name made, moved, removed or changed is judged by: its own, and those of
/// the seven directories above it, so that nothing is made below a guarded name either, such as
/// winbind's socket directory in Samba's (`/run/samba` guarded), the socket in it, or what its
/// service makes in that; or a shutdown hook in the initramfs the host unpacks into
/// `/run/initramfs` (`usr/lib/dracut/hooks/shutdown/*`, six below).
const LEVELS: usize = 8;

/// The verdict on an agent making, moving or removing the name of `dentry` in the directory
/// `dir`: refused for a guarded name, there or not, and for a name in a directory at a guarded
/// name or in one below that (whatever the host made there is not the agent's to move either).
#[inline(always)]
pub unsafe fn guard_name_at(agent: u64, dir: *const u8, dentry: *const u8) -> i32 {
    match unsafe { guarded_dir(dir, dentry) } {
        Ok(None) => 0,
        Ok(Some(dir)) => tamper(agent, TamperHook::GuardedName, dir.data),
        Err(_) => -EPERM,
    }
}

/// Whether the existing `dentry` is at or below a guarded name: what the host made there is
/// not the agents' to write or change either. A global BPF function (see
/// `file_rules::gatekeeper_placement`): 1 if so, 0 if not, negative when unreadable.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn gatekeeper_below_guarded_name(dentry: u64) -> i32 {
    let dentry = dentry as *const u8;
    let found = unsafe {
        read_field::<*const u8>(dentry, &OFF_DENTRY_PARENT)
            .and_then(|parent| read_field::<*const u8>(parent, &OFF_DENTRY_INODE))
            .and_then(|dir| guarded_dir(dir, dentry))
    };
    match found {
        Ok(None) => 0,
        Ok(Some(_)) => 1,
        Err(_) => -1,
    }
}

/// The directory of the guarded name that the name of `dentry` in `dir` is, or is below.
#[inline(always)]
unsafe fn guarded_dir(dir: *const u8, dentry: *const u8) -> Result<Option<Target>, i32> {
    let (mut dir, mut dentry) = (dir, dentry);
    for level in 0..LEVELS {
        if level > 0 {
            // One up: the directory's own name, in its parent (the top is its own parent).
            let parent: *const u8 = unsafe { read_field(dentry, &OFF_DENTRY_PARENT)? };
            let above: *const u8 = unsafe { read_field(parent, &OFF_DENTRY_PARENT)? };
            if above == parent {
                return Ok(None);
            }
            dir = unsafe { read_field(above, &OFF_DENTRY_INODE)? };
            dentry = parent;
        }
        if let Some(found) = unsafe { is_guarded(dir, dentry)? } {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

/// The directory `dir`, when the name of `dentry` in it is a guarded name.
#[inline(always)]
unsafe fn is_guarded(dir: *const u8, dentry: *const u8) -> Result<Option<Target>, i32> {
    let dir = unsafe { inode_target(dir)? };
    let name: *const u8 =
        unsafe { read_field(member_ptr(dentry, &OFF_DENTRY_NAME), &OFF_QSTR_NAME)? };
    let mut key = NameKey {
        dir,
        name: [0; GUARDED_NAME_BYTES],
    };
    // A longer name is cut as the daemon cuts it (NameKey::new).
    unsafe { bpf_probe_read_kernel_str_bytes(name, &mut key.name) }.map_err(|_| -EPERM)?;
    Ok(GUARDED_NAMES.get_ptr(key).map(|_| dir))
}
