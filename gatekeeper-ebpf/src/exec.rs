//! `bprm_check_security`: exec of a protected binary, matched by the file's (device, inode); in
//! allowlist mode, of anything not allowlisted; and never of a file outside every mounted
//! filesystem (a memfd copy). A protected binary's exec through a stacking file system is
//! refused at the open of the file below (`file_open`). What a grant lets run, runs in
//! secure-execution mode, and only for a caller that sees the host's files.

use aya_ebpf::{
    bindings::BPF_F_BPRM_SECUREEXEC,
    helpers::{bpf_bprm_opts_set, bpf_get_current_task},
    macros::lsm,
    programs::LsmContext,
};
use gatekeeper_common::{TamperHook, Target, file_access};

use crate::{
    argv::decide_exec,
    mounts::caller_at_host_root,
    offsets::{
        OFF_BPRM_BUF, OFF_BPRM_FILE, OFF_BPRM_FILENAME, OFF_FILE_INODE, OFF_FILE_PATH,
        OFF_INODE_INO, OFF_INODE_SB, OFF_MM_EXE_FILE, OFF_PATH_MNT, OFF_SECCOMP_FILTER,
        OFF_SECCOMP_FILTER_NOTIF, OFF_SECCOMP_FILTER_PREV, OFF_TASK_MM, OFF_TASK_PTRACE,
        OFF_TASK_SECCOMP, OFF_VFSMOUNT_FLAGS,
    },
    procs::watched_by_perf,
    read::{inode_device, member_ptr, read_at, read_field},
    script::grant_script_read,
    verdict::{EPERM, agent_caller, is_protected, needs_allowlist_approval, tamper},
};

/// Marks the kernel's own mounts (shmem behind memfd, pipes, sockets): no path leads there.
const MNT_INTERNAL: i32 = 0x4000;

#[lsm(hook = "bprm_check_security")]
pub fn bprm_check_security(ctx: LsmContext) -> i32 {
    // An earlier LSM program's denial stands; non-agents pass.
    let agent_cgroup_id = match agent_caller(ctx.arg(1)) {
        Ok(agent) => agent,
        Err(verdict) => return verdict,
    };
    let bprm: *const u8 = ctx.arg(0);
    let Ok(file) = (unsafe { read_field::<*const u8>(bprm, &OFF_BPRM_FILE) }) else {
        // Unreadable exec of an agent: refuse rather than guess.
        return -EPERM;
    };
    match unsafe { on_internal_mount(file) } {
        Ok(false) => {}
        Ok(true) => return tamper(agent_cgroup_id, TamperHook::ExecInternal, [0, 0]),
        Err(_) => return -EPERM,
    }
    let Ok(target) = (unsafe { exec_target(file) }) else {
        return -EPERM;
    };
    if !is_protected(&target) && !needs_allowlist_approval(&target) {
        return 0;
    }
    // A tracer attached before the exec reads the new program's memory without another check;
    // perf events on the task sample it. (An event attached later in the exec is caught at
    // `bprm_committing_creds`.)
    let task = unsafe { bpf_get_current_task() } as *const u8;
    if is_protected(&target)
        && (unsafe { read_field::<u32>(task, &OFF_TASK_PTRACE) } != Ok(0)
            || unsafe { watched_by_perf(task) })
    {
        return tamper(agent_cgroup_id, TamperHook::TracedExec, target.data);
    }
    // The kernel and the loader go on to open the ELF interpreter, the libraries and a script's
    // interpreter by path from the caller's root and mount namespace: an agent's own (a bind
    // mount over the loader, a chroot) would run its code as the approved program. No grant is
    // used there, nor a request made: nothing a reviewer approves could run as shown.
    if !caller_at_host_root() {
        return tamper(agent_cgroup_id, TamperHook::ForeignRootExec, target.data);
    }
    // Nor under a seccomp filter a listener answers: it could hand the loader files of its own.
    if unsafe { seccomp_listened(task) } {
        return tamper(agent_cgroup_id, TamperHook::ListenedExec, target.data);
    }
    let filename =
        unsafe { read_field::<*const u8>(bprm, &OFF_BPRM_FILENAME) }.unwrap_or(core::ptr::null());
    // The kernel has read the file's first bytes into bprm->buf already.
    let script = unsafe { read_at::<[u8; 2]>(member_ptr(bprm, &OFF_BPRM_BUF), 0) } == Ok(*b"#!");
    if decide_exec(agent_cgroup_id, target, filename, bprm, script).is_none() {
        return -EPERM;
    }
    // What runs on a grant is the program as approved: in secure-execution mode (AT_SECURE) the
    // dynamic loader ignores LD_PRELOAD, LD_AUDIT, LD_LIBRARY_PATH and the like, so the agent's
    // environment cannot load its own code into it. The kernel keeps the flag for the
    // interpreter of a script, whose exec reuses this bprm.
    unsafe { bpf_bprm_opts_set(ctx.arg(0), BPF_F_BPRM_SECUREEXEC as u64) };
    if is_protected(&target) && script {
        let [dev, ino] = target.data;
        grant_script_read(Target::file(dev as u32, ino, file_access::READ));
    }
    0
}

/// How many of a task's seccomp filters are looked at; a longer chain counts as listened to.
const MAX_SECCOMP_FILTERS: u32 = 32;

/// Whether one of `task`'s seccomp filters has a listener (user notification), whose holder
/// answers the filtered system calls in the task's stead. Unreadable counts as yes.
#[inline(always)]
unsafe fn seccomp_listened(task: *const u8) -> bool {
    let seccomp = member_ptr(task, &OFF_TASK_SECCOMP);
    let Ok(mut filter) = (unsafe { read_field::<*const u8>(seccomp, &OFF_SECCOMP_FILTER) }) else {
        return true;
    };
    for _ in 0..MAX_SECCOMP_FILTERS {
        if filter.is_null() {
            return false;
        }
        match unsafe { read_field::<*const u8>(filter, &OFF_SECCOMP_FILTER_NOTIF) } {
            Ok(notif) if notif.is_null() => {}
            _ => return true,
        }
        filter = match unsafe { read_field(filter, &OFF_SECCOMP_FILTER_PREV) } {
            Ok(prev) => prev,
            Err(_) => return true,
        };
    }
    true
}

/// The executable file `task` runs (`mm->exe_file`); None for a task without memory of its own.
#[inline(always)]
pub unsafe fn exe_file_of(task: *const u8) -> Result<Option<*const u8>, i32> {
    unsafe {
        let mm: *const u8 = read_field(task, &OFF_TASK_MM)?;
        if mm.is_null() {
            return Ok(None);
        }
        let exe: *const u8 = read_field(mm, &OFF_MM_EXE_FILE)?;
        Ok((!exe.is_null()).then_some(exe))
    }
}

/// Whether `task` runs a protected binary; one that cannot be read counts as protected.
#[inline(always)]
pub unsafe fn runs_protected(task: *const u8) -> bool {
    match unsafe { exe_file_of(task) } {
        Ok(Some(exe)) => unsafe { exec_target(exe) }.map_or(true, |target| is_protected(&target)),
        Ok(None) => false,
        Err(_) => true,
    }
}

/// (device, inode) of an open file.
#[inline(always)]
pub unsafe fn exec_target(file: *const u8) -> Result<Target, i32> {
    unsafe { inode_target(read_field(file, &OFF_FILE_INODE)?) }
}

/// (device, inode) of an inode: how protected, allowlisted and daemon files are keyed.
#[inline(always)]
pub unsafe fn inode_target(inode: *const u8) -> Result<Target, i32> {
    unsafe {
        let ino: u64 = read_field(inode, &OFF_INODE_INO)?;
        let sb: *const u8 = read_field(inode, &OFF_INODE_SB)?;
        Ok(Target::exec(inode_device(inode, sb)?, ino))
    }
}

#[inline(always)]
unsafe fn on_internal_mount(file: *const u8) -> Result<bool, i32> {
    unsafe {
        let path = member_ptr(file, &OFF_FILE_PATH);
        let mnt: *const u8 = read_field(path, &OFF_PATH_MNT)?;
        let flags: i32 = read_field(mnt, &OFF_VFSMOUNT_FLAGS)?;
        Ok(flags & MNT_INTERNAL != 0)
    }
}
