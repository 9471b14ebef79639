//! Kernel tunables that act on the whole host: agents write none of them, except the sysctls
//! of a network namespace of their own. Nor do they change the kernel's log: cleared, it loses
//! the record of what happened; its console messages are how an operator at the console learns
//! of it.

use aya_ebpf::{helpers::bpf_get_current_task, macros::lsm, programs::LsmContext};
use gatekeeper_common::TamperHook;

use crate::{
    defend::deny_agents,
    offsets::{
        OFF_CTL_HEADER_SET, OFF_INODE_INO, OFF_NET_NS, OFF_NET_SYSCTLS, OFF_NS_COMMON_INUM,
        OFF_NSPROXY_NET_NS, OFF_PROC_INODE_SYSCTL, OFF_TASK_NSPROXY,
    },
    read::{SYSFS_MAGIC, member_ptr, read_field},
    verdict::{host_netns, tamper},
};

const DEBUGFS_MAGIC: u64 = 0x6462_6720;
const TRACEFS_MAGIC: u64 = 0x7472_6163;
const SECURITYFS_MAGIC: u64 = 0x7363_6673;
const CONFIGFS_MAGIC: u64 = 0x6265_6570;
const EFIVARFS_MAGIC: u64 = 0xde5e_81e4;
const BINFMTFS_MAGIC: u64 = 0x4249_4e4d;
const PSTOREFS_MAGIC: u64 = 0x6165_676c;
const FUSE_CTL_SUPER_MAGIC: u64 = 0x6573_5543;
const SELINUX_MAGIC: u64 = 0xf97c_ff8c;

/// Whether `magic` is a file system made of kernel knobs.
#[inline(always)]
pub fn is_kernel_fs(magic: u64) -> bool {
    matches!(
        magic,
        SYSFS_MAGIC
            | DEBUGFS_MAGIC
            | TRACEFS_MAGIC
            | SECURITYFS_MAGIC
            | CONFIGFS_MAGIC
            | EFIVARFS_MAGIC
            | BINFMTFS_MAGIC
            | PSTOREFS_MAGIC
            | FUSE_CTL_SUPER_MAGIC
            | SELINUX_MAGIC
    )
}

/// syslog(2) actions that change the log for everyone: opening /proc/kmsg (1) and reading
/// (2), which take what they read from every other reader of /proc/kmsg (rsyslog's imklog,
/// klogd), and from the log read and cleared (4) through clear, console off, console on to the
/// console level (8). Reading it all (3, as dmesg does) and the sizes (9, 10) stay open, as far
/// as `kernel.dmesg_restrict` allows.
const SYSLOG_ACTION_OPEN: i32 = 1;
const SYSLOG_ACTION_READ: i32 = 2;
const SYSLOG_ACTION_READ_CLEAR: i32 = 4;
const SYSLOG_ACTION_CONSOLE_LEVEL: i32 = 8;

/// syslog(2), and /proc/kmsg's open: the kernel's log changed for the whole host.
#[lsm(hook = "syslog")]
pub fn syslog(ctx: LsmContext) -> i32 {
    let (action, previous): (i32, i32) = (ctx.arg(0), ctx.arg(1));
    if previous != 0 {
        return previous;
    }
    let changes_the_log = matches!(action, SYSLOG_ACTION_OPEN | SYSLOG_ACTION_READ)
        || (SYSLOG_ACTION_READ_CLEAR..=SYSLOG_ACTION_CONSOLE_LEVEL).contains(&action);
    if !changes_the_log {
        return 0;
    }
    deny_agents(TamperHook::KernelLog, [action as u64, 0])
}

/// A write on a file system of kernel knobs.
#[inline(always)]
pub fn kernel_fs_write(inode: *const u8, magic: u64) -> i32 {
    let ino = unsafe { read_field::<u64>(inode, &OFF_INODE_INO) }.unwrap_or(0);
    deny_agents(TamperHook::KernelFsWrite, [magic, ino])
}

/// An agent's write to a procfs file that is no process's (`proc_inode` is its procfs inode,
/// `ino` its inode number): /proc/sys, sysrq-trigger, /proc/net. Only the sysctls of the
/// agent's own network namespace, when that is not the host's, are the agent's to set.
#[inline(always)]
pub fn sysctl_write(agent: u64, proc_inode: *const u8, ino: u64) -> i32 {
    if unsafe { own_netns_sysctl(proc_inode) }.unwrap_or(false) {
        return 0;
    }
    tamper(agent, TamperHook::SysctlWrite, [ino, 0])
}

/// Whether the sysctl behind `proc_inode` belongs to the caller's network namespace, and that
/// namespace is not the host's.
#[inline(always)]
unsafe fn own_netns_sysctl(proc_inode: *const u8) -> Result<bool, i32> {
    unsafe {
        let header: *const u8 = read_field(proc_inode, &OFF_PROC_INODE_SYSCTL)?;
        if header.is_null() {
            return Ok(false);
        }
        // A network namespace's sysctls hang in the table set it embeds.
        let set: *const u8 = read_field(header, &OFF_CTL_HEADER_SET)?;
        let task = bpf_get_current_task() as *const u8;
        let nsproxy: *const u8 = read_field(task, &OFF_TASK_NSPROXY)?;
        let net: *const u8 = read_field(nsproxy, &OFF_NSPROXY_NET_NS)?;
        if set != member_ptr(net, &OFF_NET_SYSCTLS) {
            return Ok(false);
        }
        let inum: u32 = read_field(member_ptr(net, &OFF_NET_NS), &OFF_NS_COMMON_INUM)?;
        let host = host_netns();
        Ok(host != 0 && inum != host)
    }
}
