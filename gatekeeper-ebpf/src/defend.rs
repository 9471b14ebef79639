//! Self-defence: what an agent, even as root, could use to switch Gatekeeper off or walk around
//! it. Each is denied and reported as a tamper attempt.
//!
//! Hooks whose argument lists differ between kernels do not read the trailing `retval`: a BPF LSM
//! program only runs when the ones before it allowed, so it is always 0 there.

use aya_ebpf::{helpers::bpf_get_current_task, macros::lsm, programs::LsmContext};
use gatekeeper_common::TamperHook;

use crate::{
    exec::{exe_file_of, exec_target},
    files,
    offsets::OFF_TASK_TGID,
    procs,
    read::{CGROUP_SUPER_MAGIC, PROC_SUPER_MAGIC, inode_magic, read_field},
    tunables,
    verdict::{EPERM, agent_cgroup, is_daemon, is_protected, tamper},
};

const CGROUP2_SUPER_MAGIC: u64 = 0x6367_7270;
const MAY_WRITE: i32 = 2;
const PROT_EXEC: u64 = 4;
/// fsnotify's permission events: open, access and exec (6.14 adds pre-access, 0x0010_0000).
const PERMISSION_EVENTS: u64 = 0x0001_0000 | 0x0002_0000 | 0x0004_0000 | 0x0010_0000;
const F_SETLEASE: u32 = 1024;
const F_UNLCK: u64 = 2;

/// Denies the call outright when the caller is an agent.
#[inline(always)]
pub fn deny_agents(hook: TamperHook, detail: [u64; 2]) -> i32 {
    match agent_cgroup() {
        Some(agent) => tamper(agent, hook, detail),
        None => 0,
    }
}

/// Every bpf() command: fds by id, detaching links, map updates, program loads.
#[lsm(hook = "bpf")]
pub fn bpf(ctx: LsmContext) -> i32 {
    let cmd: i32 = ctx.arg(0);
    deny_agents(TamperHook::Bpf, [cmd as u64, 0])
}

/// Denies an agent's `hook` against `task` when that task is the daemon.
#[inline(always)]
pub fn guard_daemon(task: *const u8, hook: TamperHook, detail: u64) -> i32 {
    let Ok(tgid) = (unsafe { read_field::<i32>(task, &OFF_TASK_TGID) }) else {
        return 0;
    };
    if !is_daemon(tgid as u32) {
        return 0;
    }
    deny_agents(hook, [tgid as u64, detail])
}

/// kill, tgkill, pidfd_send_signal, SIGSTOP: all pass here on their way to the daemon.
#[lsm(hook = "task_kill")]
pub fn task_kill(ctx: LsmContext) -> i32 {
    let sig: i32 = ctx.arg(2);
    guard_daemon(ctx.arg(0), TamperHook::Signal, sig as u64)
}

/// The signal the kernel sends a file's owner when its I/O is ready (SIGIO, SIGURG, or what
/// `F_SETSIG` chose, SIGKILL too), which `task_kill` never sees: an agent that sets the daemon,
/// or one of its threads, as the owner of a pipe or socket of its own could stop it. The daemon
/// owns no file, so every such signal to it is refused, wherever the kernel raises it (in an
/// agent's write, or in the network code for an agent's socket), and reported when an agent's
/// own call raised it.
#[lsm(hook = "file_send_sigiotask")]
pub fn file_send_sigiotask(ctx: LsmContext) -> i32 {
    let task: *const u8 = ctx.arg(0);
    let sig: i32 = ctx.arg(2);
    let Ok(tgid) = (unsafe { read_field::<i32>(task, &OFF_TASK_TGID) }) else {
        return 0;
    };
    if !is_daemon(tgid as u32) {
        return 0;
    }
    match agent_cgroup() {
        Some(agent) => tamper(agent, TamperHook::FileSignal, [tgid as u64, sig as u64]),
        None => -EPERM,
    }
}

/// fanotify marks with permission events: their listener holds each open, read or exec they
/// match, of any process, until it answers, so an agent could stall the daemon (its journal,
/// its config) or fail host processes' opens. Marks that only report stay the agent's.
#[lsm(hook = "path_notify")]
pub fn path_notify(ctx: LsmContext) -> i32 {
    let mask: u64 = ctx.arg(1);
    if mask & PERMISSION_EVENTS == 0 {
        return 0;
    }
    let kind: u32 = ctx.arg(2);
    deny_agents(TamperHook::NotifyPermission, [mask, u64::from(kind)])
}

/// File leases: whoever opens a leased file waits until the holder gives it up, up to the
/// kernel's `lease-break-time` (45 s by default), so an agent's lease on a file the daemon opens
/// (its mount table, through /proc) would stall it. Giving a lease up stays possible.
#[lsm(hook = "file_fcntl")]
pub fn file_fcntl(ctx: LsmContext) -> i32 {
    let cmd: u32 = ctx.arg(1);
    if cmd != F_SETLEASE {
        return 0;
    }
    let kind: u64 = ctx.arg(2);
    if kind == F_UNLCK {
        return 0;
    }
    deny_agents(TamperHook::Lease, [kind, 0])
}

/// ptrace, process_vm_readv/writev and /proc/PID/mem of the daemon or of any process outside
/// the agent's subtree.
#[lsm(hook = "ptrace_access_check")]
pub fn ptrace_access_check(ctx: LsmContext) -> i32 {
    let mode: u32 = ctx.arg(1);
    procs::ptrace_access_check(ctx.arg(0), mode)
}

/// Writes on cgroupfs (v2 and v1): moving a process (cgroup.procs, also clone3 with
/// CLONE_INTO_CGROUP, whose permission check asks for write access there), creating cgroups,
/// changing limits, release_agent. Writes on /proc files of processes outside the agent's
/// subtree, and on kernel tunables (procfs, sysfs and the like). Names made, removed or moved
/// in a directory a file rule protects from writing.
#[lsm(hook = "inode_permission")]
pub fn inode_permission(ctx: LsmContext) -> i32 {
    let mask: i32 = ctx.arg(1);
    // This hook runs on every permission check: the cheap tests come first.
    if mask & MAY_WRITE == 0 {
        return 0;
    }
    let inode: *const u8 = ctx.arg(0);
    match unsafe { inode_magic(inode) } {
        Ok(CGROUP2_SUPER_MAGIC | CGROUP_SUPER_MAGIC) => {
            deny_agents(TamperHook::CgroupWrite, [mask as u64, 0])
        }
        Ok(PROC_SUPER_MAGIC) => procs::proc_write(inode, mask),
        Ok(magic) if tunables::is_kernel_fs(magic) => tunables::kernel_fs_write(inode, magic),
        _ => files::directory_write(inode),
    }
}

/// finit_module (and firmware, kexec, policy files read into the kernel).
#[lsm(hook = "kernel_read_file")]
pub fn kernel_read_file(ctx: LsmContext) -> i32 {
    let id: i32 = ctx.arg(1);
    deny_agents(TamperHook::KernelRead, [id as u64, 0])
}

/// init_module (and other blobs handed to the kernel).
#[lsm(hook = "kernel_load_data")]
pub fn kernel_load_data(ctx: LsmContext) -> i32 {
    let id: i32 = ctx.arg(0);
    deny_agents(TamperHook::KernelLoad, [id as u64, 0])
}

/// Whether `file` is the executable of the current process (`mm->exe_file`).
#[inline(always)]
unsafe fn is_own_executable(file: *const u8) -> Result<bool, i32> {
    let task = unsafe { bpf_get_current_task() } as *const u8;
    Ok(unsafe { exe_file_of(task)? } == Some(file))
}

/// `ld-linux.so /usr/bin/pg_dump` runs a protected binary without exec: the loader maps it
/// executable from a file it opened itself.
#[lsm(hook = "mmap_file")]
pub fn mmap_file(ctx: LsmContext) -> i32 {
    let prot: u64 = ctx.arg(2);
    let file: *const u8 = ctx.arg(0);
    if prot & PROT_EXEC == 0 || file.is_null() {
        return 0;
    }
    let Some(agent) = agent_cgroup() else {
        return 0;
    };
    if unsafe { is_own_executable(file) }.unwrap_or(false) {
        // The kernel mapping the binary it executes: bprm_check_security decided that.
        return 0;
    }
    match unsafe { exec_target(file) } {
        Ok(target) if is_protected(&target) => tamper(agent, TamperHook::ExecMapping, target.data),
        _ => 0,
    }
}
