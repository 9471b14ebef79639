//! An approved script's read of itself. The interpreter the kernel starts for a script opens it
//! by path, and agents may not read protected files: the approved exec lets one read through,
//! for the process image it starts and no other. An image is its process (told apart from a
//! later one with the same pid by the start time, which exec keeps) and its exec count: not the
//! agent's other processes, not what the process runs next (`#!/usr/bin/env` would find the
//! interpreter on the agent's PATH). Before it reads the script, the image opens only host files
//! (the loader, libraries, locale data): one of the agent's (a script of its own the interpreter
//! was handed by a swapped symlink) takes the read away. The image and what it starts hold the
//! script in memory, so agents may not trace them or read their memory.

use aya_ebpf::{
    helpers::{bpf_get_current_task, bpf_ktime_get_boot_ns},
    macros::map,
    maps::LruHashMap,
};
use gatekeeper_common::{Target, file_rule};

use crate::{
    file_rules::placement,
    offsets::{
        OFF_TASK_GROUP_LEADER, OFF_TASK_REAL_PARENT, OFF_TASK_SELF_EXEC_ID, OFF_TASK_START_TIME,
        OFF_TASK_TGID,
    },
    read::read_field,
};

/// How long the interpreter of an approved script has to open it.
const SCRIPT_READ_NS: u64 = 5_000_000_000;

/// How many ancestors of a process are looked at for an approved script's image.
const MAX_SCRIPT_ANCESTORS: u32 = 8;

/// tgid -> the approved script that process image runs. Stale entries (the process gone, or
/// running another image) match nothing and age out.
#[map]
static SCRIPT_RUNS: LruHashMap<u32, ScriptRun> = LruHashMap::with_max_entries(4096, 0);

#[repr(C)]
#[derive(Clone, Copy)]
struct ScriptRun {
    /// The script, as a read target.
    script: Target,
    /// The start time of the process (its leader's).
    started: u64,
    /// The exec count of the interpreter's image: one more than at the approved exec.
    exec_id: u64,
    /// CLOCK_BOOTTIME nanoseconds until which the read may happen.
    read_until: u64,
    /// 1 once the interpreter has read the script.
    read: u64,
}

/// A process image: (tgid, the process's start time, exec count).
#[derive(Clone, Copy)]
struct Image {
    tgid: u32,
    started: u64,
    exec_id: u64,
}

#[inline(always)]
unsafe fn image_of(task: *const u8) -> Result<Image, i32> {
    unsafe {
        let tgid: i32 = read_field(task, &OFF_TASK_TGID)?;
        let leader: *const u8 = read_field(task, &OFF_TASK_GROUP_LEADER)?;
        Ok(Image {
            tgid: tgid as u32,
            started: read_field(leader, &OFF_TASK_START_TIME)?,
            exec_id: read_field(task, &OFF_TASK_SELF_EXEC_ID)?,
        })
    }
}

#[inline(always)]
fn current_image() -> Result<Image, i32> {
    unsafe { image_of(bpf_get_current_task() as *const u8) }
}

/// The caller's image, and the approved script run recorded for its process if there is one.
#[inline(always)]
fn current_run() -> Option<(Image, *mut ScriptRun)> {
    let image = current_image().ok()?;
    let run = SCRIPT_RUNS.get_ptr_mut(image.tgid)?;
    Some((image, run))
}

/// At the approved exec of `script` (a read target): the image it is about to start may read
/// it once. Without the entry the interpreter cannot read the script: the run fails, closed.
#[inline(always)]
pub fn grant_script_read(script: Target) {
    let Ok(image) = current_image() else {
        return;
    };
    let run = ScriptRun {
        script,
        started: image.started,
        exec_id: image.exec_id + 1,
        read_until: unsafe { bpf_ktime_get_boot_ns() } + SCRIPT_READ_NS,
        read: 0,
    };
    let _ = SCRIPT_RUNS.insert(image.tgid, run, 0);
}

/// Whether the caller is the image an approved exec of `script` started, before its read:
/// takes the read.
#[inline(always)]
pub fn take_script_read(script: &Target) -> bool {
    let Some((image, run)) = current_run() else {
        return false;
    };
    let now = unsafe { bpf_ktime_get_boot_ns() };
    unsafe {
        let wanted = (*run).script;
        // Field by field: the BPF target has no memcmp.
        let same = wanted.kind == script.kind
            && wanted.aux == script.aux
            && wanted.data[0] == script.data[0]
            && wanted.data[1] == script.data[1];
        if !same || (*run).read != 0 || now >= (*run).read_until || !runs_image(&*run, &image) {
            return false;
        }
        (*run).read = 1;
    }
    true
}

/// At an agent's open of anything but a directory or a device (`opened`, a dentry), by the
/// image of an approved script that has not read it yet: a file, FIFO or pipe of the agent's
/// (not below a host path) takes the read away, since the interpreter was handed something other
/// than the approved script. Pseudo files (proc, sysfs) are neither.
#[inline(always)]
pub unsafe fn note_open_before_read(opened: *const u8) {
    let Some((image, run)) = current_run() else {
        return;
    };
    unsafe {
        if (*run).read != 0 || !runs_image(&*run, &image) {
            return;
        }
        let host_file = placement(opened)
            .is_ok_and(|placed| !placed.unplaced && placed.bits & file_rule::WRITE != 0);
        if !host_file {
            (*run).read = 1;
        }
    }
}

/// At the start of an exec by the caller: an approved exec that failed before its image ran
/// leaves an entry for an exec count this exec would reach; it goes.
#[inline(always)]
pub fn forget_unstarted_script() {
    let Ok(image) = current_image() else {
        return;
    };
    if let Some(run) = SCRIPT_RUNS.get_ptr(image.tgid)
        && unsafe { (*run).exec_id } != image.exec_id
    {
        let _ = SCRIPT_RUNS.remove(image.tgid);
    }
}

/// Whether `task`, or one of its nearest ancestors, is the image of an approved script (one
/// that cannot be read counts as one).
#[inline(always)]
pub unsafe fn runs_approved_script(task: *const u8) -> bool {
    let mut current = task;
    for _ in 0..MAX_SCRIPT_ANCESTORS {
        let Ok(image) = (unsafe { image_of(current) }) else {
            return true;
        };
        if let Some(run) = SCRIPT_RUNS.get_ptr(image.tgid)
            && runs_image(unsafe { &*run }, &image)
        {
            return true;
        }
        match unsafe { read_field::<*const u8>(current, &OFF_TASK_REAL_PARENT) } {
            Ok(parent) if !parent.is_null() && parent != current => current = parent,
            Ok(_) => return false,
            Err(_) => return true,
        }
    }
    false
}

#[inline(always)]
fn runs_image(run: &ScriptRun, image: &Image) -> bool {
    run.started == image.started && run.exec_id == image.exec_id
}
