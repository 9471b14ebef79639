//! `bprm_check_security`: exec of a protected binary, matched by the file's (device, inode).

use aya_ebpf::{macros::lsm, programs::LsmContext};
use gatekeeper_common::Target;

use crate::{
    read::read_field,
    verdict::{EPERM, agent_cgroup, decide, is_protected},
};

// Struct offsets of the running kernel, filled by the daemon from its BTF before loading.
#[unsafe(no_mangle)]
static OFF_BPRM_FILE: u32 = 0;
#[unsafe(no_mangle)]
static OFF_BPRM_FILENAME: u32 = 0;
#[unsafe(no_mangle)]
static OFF_FILE_INODE: u32 = 0;
#[unsafe(no_mangle)]
static OFF_INODE_INO: u32 = 0;
#[unsafe(no_mangle)]
static OFF_INODE_SB: u32 = 0;
#[unsafe(no_mangle)]
static OFF_SB_DEV: u32 = 0;

#[lsm(hook = "bprm_check_security")]
pub fn bprm_check_security(ctx: LsmContext) -> i32 {
    // An earlier LSM program's denial stands.
    let previous: i32 = ctx.arg(1);
    if previous != 0 {
        return previous;
    }
    let Some(agent_cgroup_id) = agent_cgroup() else {
        return 0;
    };
    let bprm: *const u8 = ctx.arg(0);
    let Ok((target, filename)) = (unsafe { exec_target(bprm) }) else {
        // Unreadable exec of an agent: refuse rather than guess.
        return -EPERM;
    };
    if !is_protected(&target) {
        return 0;
    }
    decide(agent_cgroup_id, target, filename)
}

/// (device, inode) of the file being executed, and the path the caller named.
#[inline(always)]
unsafe fn exec_target(bprm: *const u8) -> Result<(Target, *const u8), i32> {
    unsafe {
        let file: *const u8 = read_field(bprm, &OFF_BPRM_FILE)?;
        let inode: *const u8 = read_field(file, &OFF_FILE_INODE)?;
        let ino: u64 = read_field(inode, &OFF_INODE_INO)?;
        let sb: *const u8 = read_field(inode, &OFF_INODE_SB)?;
        let dev: u32 = read_field(sb, &OFF_SB_DEV)?;
        let filename: *const u8 = read_field(bprm, &OFF_BPRM_FILENAME)?;
        Ok((Target::exec(dev, ino), filename))
    }
}
