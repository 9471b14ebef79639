//! Processes: an agent acts on no process outside its own agent subtree (ptrace and its
//! relatives, /proc/PID files), and cannot change how the daemon is scheduled or limited.
//!
//! Nor does it watch them through perf: an event on a task passes `ptrace_access_check` (once
//! CAP_PERFMON, which skips it, is refused in `capable`), but one on a whole CPU (or a cgroup)
//! samples whatever runs there, the daemon included: its user stack and registers, its raw
//! tracepoint data. Agents open perf events on their own tasks only, and none follows one of
//! them into an approved run (`watched_by_perf`).

use aya_ebpf::{helpers::bpf_probe_read_kernel_str_bytes, macros::lsm, programs::LsmContext};
use gatekeeper_common::{MAX_CGROUP_DEPTH, TamperHook};

use crate::{
    defend::guard_daemon,
    exec::runs_protected,
    offsets::{
        OFF_CGROUP_KN, OFF_CSS_SET_DFL_CGRP, OFF_INODE_INO, OFF_KERNFS_NODE_ID,
        OFF_KERNFS_NODE_PARENT, OFF_PERF_CTX_NR_EVENTS, OFF_PID_TASKS, OFF_PROC_INODE_PID,
        OFF_PROC_INODE_VFS_INODE, OFF_SIGNAL_RLIM, OFF_TASK_CGROUPS, OFF_TASK_PERF_EVENT_CTXP,
        OFF_TASK_PERF_EVENT_MUTEX, OFF_TASK_PID_LINKS, OFF_TASK_SIGNAL, OFF_TASK_TGID,
    },
    read::{container_of, current_syscall, field_offset, member_ptr, read_at, read_field},
    script::runs_approved_script,
    tunables::sysctl_write,
    verdict::{EPERM, agent_cgroup, is_daemon, tamper},
};

const RLIMIT_NICE: u32 = 13;
const IOPRIO_CLASS_SHIFT: i32 = 13;
const IOPRIO_CLASS_RT: i32 = 1;
const RLIMIT_RTPRIO: u32 = 14;
/// RLIMIT_NICE's value that lets a process go down to nice 0 (the kernel's ceiling is 20 minus
/// the limit), but not below.
const NICE_LIMIT_AT_NICE_0: u64 = 20;
/// sched_setaffinity in the x86-64 and the 32-bit system call tables: the one system call that
/// reaches `task_setscheduler` and changes no priority, let through. (No other system call with
/// either number reaches it.) A move into a cpuset cgroup, which reaches it too, is refused with
/// the rest: whatever reaches it is refused unless known to change no priority.
const NR_SCHED_SETAFFINITY: [u64; 2] = [203, 241];

/// `perf_event_open`'s check of an event on a whole CPU rather than a task.
const PERF_SECURITY_CPU: i32 = 1;

/// ptrace_may_access callers that only decide what to show (ps reading /proc/PID/stat).
const PTRACE_MODE_NOAUDIT: u32 = 0x04;

#[inline(always)]
fn tgid_of(task: *const u8) -> u32 {
    unsafe { read_field::<i32>(task, &OFF_TASK_TGID) }.unwrap_or(0) as u32
}

/// Whether `task`'s cgroup (v2) is `agent` or one below it.
#[inline(always)]
unsafe fn in_subtree(task: *const u8, agent: u64) -> Result<bool, i32> {
    unsafe {
        let css_set: *const u8 = read_field(task, &OFF_TASK_CGROUPS)?;
        let cgroup: *const u8 = read_field(css_set, &OFF_CSS_SET_DFL_CGRP)?;
        // A cgroup's id is its kernfs node's; the root's node has no parent.
        let mut node: *const u8 = read_field(cgroup, &OFF_CGROUP_KN)?;
        for _ in 0..=MAX_CGROUP_DEPTH {
            if node.is_null() {
                return Ok(false);
            }
            if read_field::<u64>(node, &OFF_KERNFS_NODE_ID)? == agent {
                return Ok(true);
            }
            node = read_field(node, &OFF_KERNFS_NODE_PARENT)?;
        }
    }
    // Further below than the walk reaches: not known to be inside.
    Ok(false)
}

/// Whether `task` is out of reach of the agent in `agent`: the daemon (`hook` for it), or a
/// process outside the agent's subtree (`outside`). None when it is the agent's own.
#[inline(always)]
fn out_of_reach(task: *const u8, agent: u64, outside: TamperHook) -> Option<TamperHook> {
    if is_daemon(tgid_of(task)) {
        return Some(TamperHook::Ptrace);
    }
    match unsafe { in_subtree(task, agent) } {
        Ok(true) => None,
        _ => Some(outside),
    }
}

/// ptrace, process_vm_readv/writev, pidfd_getfd, kcmp, /proc/PID/mem, environ, fd, ns and
/// the other /proc files the kernel guards with ptrace_may_access.
pub fn ptrace_access_check(child: *const u8, mode: u32) -> i32 {
    let Some(agent) = agent_cgroup() else {
        return 0;
    };
    let Some(hook) = out_of_reach(child, agent, TamperHook::PtraceOutside).or_else(|| {
        // Its own child running an approved protected binary or script (or started by one):
        // the code and what the run holds are not the agent's to read or steer.
        unsafe { runs_protected(child) || runs_approved_script(child) }
            .then_some(TamperHook::ProtectedProcess)
    }) else {
        return 0;
    };
    if mode & PTRACE_MODE_NOAUDIT != 0 {
        // Denied quietly: `ps` asks this of every process it lists.
        return -EPERM;
    }
    tamper(agent, hook, [tgid_of(child) as u64, mode as u64])
}

/// PTRACE_TRACEME: no ptrace bond with a process outside the subtree, in either direction.
#[lsm(hook = "ptrace_traceme")]
pub fn ptrace_traceme(ctx: LsmContext) -> i32 {
    let parent: *const u8 = ctx.arg(0);
    let Some(agent) = agent_cgroup() else {
        return 0;
    };
    match unsafe { in_subtree(parent, agent) } {
        Ok(true) => 0,
        _ => tamper(agent, TamperHook::TraceMe, [tgid_of(parent) as u64, 0]),
    }
}

/// prlimit and setrlimit: of the daemon, and agents raising the limits that let a process take
/// a priority above the ordinary without CAP_SYS_NICE (see `capable`).
#[lsm(hook = "task_setrlimit")]
pub fn task_setrlimit(ctx: LsmContext) -> i32 {
    let resource: u32 = ctx.arg(1);
    let ceiling = match resource {
        RLIMIT_NICE => NICE_LIMIT_AT_NICE_0,
        RLIMIT_RTPRIO => 0,
        _ => return guard_daemon(ctx.arg(0), TamperHook::DaemonRlimit, resource as u64),
    };
    if let Some(agent) = agent_cgroup() {
        // struct rlimit: the soft limit, then the hard one.
        let limits: *const u8 = ctx.arg(2);
        let raised = unsafe { (read_at::<u64>(limits, 0), read_at::<u64>(limits, 8)) };
        match raised {
            (Ok(soft), Ok(hard)) if soft.max(hard) > ceiling => {
                let limit = soft.max(hard);
                return tamper(agent, TamperHook::Priority, [u64::from(resource), limit]);
            }
            (Ok(_), Ok(_)) => {}
            _ => return -EPERM,
        }
    }
    guard_daemon(ctx.arg(0), TamperHook::DaemonRlimit, resource as u64)
}

/// The limit `task` was given that lets it take a priority above the ordinary without
/// CAP_SYS_NICE, as (resource, soft limit): agents cannot raise these (`task_setrlimit`), but
/// whoever started one may have (PAM, a unit's LimitRTPRIO=, a container's spec). None if it has
/// none; an unreadable limit counts as given.
#[inline(always)]
fn priority_limit(task: *const u8) -> Option<[u64; 2]> {
    let soft = |resource: u32| -> Result<u64, i32> {
        unsafe {
            let signal: *const u8 = read_field(task, &OFF_TASK_SIGNAL)?;
            // Each struct rlimit: the soft limit, then the hard one.
            let limit = field_offset(&OFF_SIGNAL_RLIM) + resource as usize * 16;
            read_at(signal, limit)
        }
    };
    match (soft(RLIMIT_RTPRIO), soft(RLIMIT_NICE)) {
        (Ok(0), Ok(nice)) if nice <= NICE_LIMIT_AT_NICE_0 => None,
        (Ok(0), Ok(nice)) => Some([u64::from(RLIMIT_NICE), nice]),
        (Ok(0), Err(_)) => Some([u64::from(RLIMIT_NICE), u64::MAX]),
        (Ok(rtprio), _) => Some([u64::from(RLIMIT_RTPRIO), rtprio]),
        (Err(_), _) => Some([u64::from(RLIMIT_RTPRIO), u64::MAX]),
    }
}

/// sched_setscheduler, sched_setparam, sched_setattr, sched_setaffinity: of the daemon, and
/// agents' changes of policy or priority for a process given a limit above the ordinary, within
/// which the kernel grants realtime policies and nice values below 0 without CAP_SYS_NICE.
/// Judged by the limit, not by the policy asked for, which sched_setattr passes in memory the
/// caller could change after the kernel read it.
#[lsm(hook = "task_setscheduler")]
pub fn task_setscheduler(ctx: LsmContext) -> i32 {
    let task: *const u8 = ctx.arg(0);
    if let Some(agent) = agent_cgroup()
        && let Some(limit) = priority_limit(task)
        && !matches!(current_syscall(), Ok(number) if NR_SCHED_SETAFFINITY.contains(&number))
    {
        return tamper(agent, TamperHook::Priority, limit);
    }
    guard_daemon(task, TamperHook::DaemonScheduler, 0)
}

/// setpriority, nice, and the nice value of an autogroup: of the daemon, and agents' nice values
/// below 0 for a process given a limit above the ordinary (see `task_setscheduler`).
#[lsm(hook = "task_setnice")]
pub fn task_setnice(ctx: LsmContext) -> i32 {
    let task: *const u8 = ctx.arg(0);
    let nice: i32 = ctx.arg(1);
    if nice < 0
        && let Some(agent) = agent_cgroup()
        && let Some(limit) = priority_limit(task)
    {
        return tamper(agent, TamperHook::Priority, limit);
    }
    guard_daemon(task, TamperHook::DaemonNice, nice as u64)
}

/// ioprio_set: of the daemon, and agents taking the realtime class (which CAP_SYS_ADMIN allows
/// without CAP_SYS_NICE), whose I/O would go before the daemon's journal.
#[lsm(hook = "task_setioprio")]
pub fn task_setioprio(ctx: LsmContext) -> i32 {
    let ioprio: i32 = ctx.arg(1);
    if (ioprio >> IOPRIO_CLASS_SHIFT) & 0x7 == IOPRIO_CLASS_RT
        && let Some(agent) = agent_cgroup()
    {
        return tamper(agent, TamperHook::Priority, [0, ioprio as u64]);
    }
    guard_daemon(ctx.arg(0), TamperHook::DaemonIoprio, ioprio as u64)
}

/// migrate_pages and move_pages (which ask ptrace_access_check first).
#[lsm(hook = "task_movememory")]
pub fn task_movememory(ctx: LsmContext) -> i32 {
    guard_daemon(ctx.arg(0), TamperHook::DaemonMemory, 0)
}

/// A module the kernel would load on the agent's behalf: socket() of an unloaded family, a
/// file system type, a device, a crypto algorithm, a link type.
#[lsm(hook = "kernel_module_request")]
pub fn kernel_module_request(ctx: LsmContext) -> i32 {
    let name: *const u8 = ctx.arg(0);
    let Some(agent) = agent_cgroup() else {
        return 0;
    };
    let mut start = [0u8; 16];
    let _ = unsafe { bpf_probe_read_kernel_str_bytes(name, &mut start) };
    let mut words = [0u64; 2];
    for (index, word) in words.iter_mut().enumerate() {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&start[index * 8..index * 8 + 8]);
        *word = u64::from_le_bytes(bytes);
    }
    tamper(agent, TamperHook::ModuleRequest, words)
}

/// An agent's write to a procfs file: a process's files (/proc/PID/...) are the agent's only
/// for processes in its subtree; the rest belong to the kernel (see [`sysctl_write`]).
#[inline(always)]
pub fn proc_write(inode: *const u8, mask: i32) -> i32 {
    let Some(agent) = agent_cgroup() else {
        return 0;
    };
    let proc_inode = container_of(inode, &OFF_PROC_INODE_VFS_INODE);
    let Ok(pid) = (unsafe { read_field::<*const u8>(proc_inode, &OFF_PROC_INODE_PID) }) else {
        return tamper(agent, TamperHook::ProcWrite, [0, mask as u64]);
    };
    if pid.is_null() {
        let ino = unsafe { read_field::<u64>(inode, &OFF_INODE_INO) }.unwrap_or(0);
        return sysctl_write(agent, proc_inode, ino);
    }
    // The task of a pid (`pid_task(pid, PIDTYPE_PID)`), through its first link.
    let Ok(link) = (unsafe { read_field::<*const u8>(pid, &OFF_PID_TASKS) }) else {
        return tamper(agent, TamperHook::ProcWrite, [0, mask as u64]);
    };
    if link.is_null() {
        // The process is gone: the write fails by itself.
        return 0;
    }
    let task = container_of(link, &OFF_TASK_PID_LINKS);
    match out_of_reach(task, agent, TamperHook::ProcWrite) {
        None => 0,
        Some(_) => tamper(
            agent,
            TamperHook::ProcWrite,
            [tgid_of(task) as u64, mask as u64],
        ),
    }
}

/// The index of `perf_event_open`'s check argument on the running kernel
/// ([`gatekeeper_common::hook_args::PERF_EVENT_OPEN_TYPE`]), written by the daemon.
#[unsafe(no_mangle)]
static ARG_PERF_EVENT_OPEN_TYPE: u32 = 0;

/// perf_event_open(2): events on a CPU (or a cgroup's tasks on it) are refused to agents.
#[lsm(hook = "perf_event_open")]
pub fn perf_event_open(ctx: LsmContext) -> i32 {
    // The check, then the previous program's verdict. The index is a constant of the loaded
    // program (volatile only so its placeholder is not folded), so the verifier follows one
    // branch: on 6.12, one argument shorter, the third slot is never read. That read stays in
    // a function of its own, or the compiler would make one read at a chosen offset of both.
    let (first, second): (i32, i32) = (ctx.arg(0), ctx.arg(1));
    let (check, previous) = match unsafe { core::ptr::read_volatile(&ARG_PERF_EVENT_OPEN_TYPE) } {
        0 => (first, second),
        _ => (second, third_argument(&ctx)),
    };
    if previous != 0 {
        return previous;
    }
    if check != PERF_SECURITY_CPU {
        return 0;
    }
    match agent_cgroup() {
        Some(agent) => tamper(agent, TamperHook::Perf, [check as u64, 0]),
        None => 0,
    }
}

#[inline(never)]
fn third_argument(ctx: &LsmContext) -> i32 {
    ctx.arg(2)
}

/// The most perf event contexts a task has (6.1: hardware and software; one since 6.2).
const MAX_PERF_CONTEXTS: usize = 2;

/// Whether perf events watch `task` (opened on it, or inherited from its parent's): they stay
/// across an exec and sample the new program, its registers and user stack. Unreadable counts
/// as watched.
#[inline(always)]
pub unsafe fn watched_by_perf(task: *const u8) -> bool {
    let contexts = member_ptr(task, &OFF_TASK_PERF_EVENT_CTXP);
    let space = field_offset(&OFF_TASK_PERF_EVENT_MUTEX)
        .saturating_sub(field_offset(&OFF_TASK_PERF_EVENT_CTXP));
    let pointer = core::mem::size_of::<usize>();
    // A layout other than the two known (the mutex right after one or two pointers): no
    // telling what lies between.
    if space != pointer && space != MAX_PERF_CONTEXTS * pointer {
        return true;
    }
    for index in 0..MAX_PERF_CONTEXTS {
        if (index + 1) * pointer > space {
            break;
        }
        let context = match unsafe { read_at::<*const u8>(contexts, index * pointer) } {
            Ok(context) if context.is_null() => continue,
            Ok(context) => context,
            Err(_) => return true,
        };
        // A context stays once its last event is closed: only its events count.
        if unsafe { read_field::<i32>(context, &OFF_PERF_CTX_NR_EVENTS) } != Ok(0) {
            return true;
        }
    }
    false
}
