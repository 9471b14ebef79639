//! The environment of a program let through on a grant: only [`APPROVED_ENV`] names.
//!
//! Checked as the arguments are, twice: in the caller's memory before the grant is used (at
//! `bprm_creds_for_exec`, for an exec a grant waits for, so that `bprm_check_security` only looks
//! the answer up), and at `bprm_committed_creds` in the new program's own copy, which another
//! thread of the caller could not change: a variable that appeared in between is caught there.
//!
//! [`APPROVED_ENV`]: gatekeeper_common::APPROVED_ENV

use aya_ebpf::{
    cty::c_void,
    helpers::{bpf_get_current_cgroup_id, bpf_send_signal, generated::bpf_probe_read_user_str},
    macros::{lsm, map},
    maps::{HashMap, LruHashMap, PerCpuArray},
    programs::LsmContext,
};
use gatekeeper_common::{ENV_NAME_BYTES, EnvName, GrantKey, TamperHook};

use crate::{
    argv::{caller_vectors, vector_entry},
    exec::exec_target,
    offsets::{OFF_BPRM_ARGC, OFF_BPRM_ENVC, OFF_BPRM_EXEC, OFF_BPRM_FILE, OFF_BPRM_P},
    read::{TURN_AGAIN, TURN_DONE, read_field, turns},
    verdict::{agent_cgroup, grant_waiting, tamper},
};

/// The names of [`gatekeeper_common::APPROVED_ENV`], filled by the daemon before it attaches.
#[map]
static APPROVED_ENV: HashMap<EnvName, u8> = HashMap::with_max_entries(MAX_APPROVED_NAMES, 0);

const MAX_APPROVED_NAMES: u32 = 64;

/// Whether the caller's environment was approved (1) or not (0), by the address of the exec's
/// `linux_binprm`, for an exec a grant waited for at `bprm_creds_for_exec`.
#[map]
static CALLER_ENV: LruHashMap<u64, u32> = LruHashMap::with_max_entries(EXECS_IN_FLIGHT, 0);

/// Execs let through on a grant, by the address of their `linux_binprm`, until
/// `bprm_committed_creds` checks the new program's environment: the (device, inode) of the
/// binary, for the report. Not an LRU map: an entry evicted before its check would skip it.
#[map]
static NEW_ENV_CHECKS: HashMap<u64, [u64; 2]> = HashMap::with_max_entries(EXECS_IN_FLIGHT, 0);

const EXECS_IN_FLIGHT: u32 = 1024;

#[map]
static ENV_SCRATCH: PerCpuArray<EnvScratch> = PerCpuArray::with_max_entries(1, 0);

/// More variables than this are never approved.
const MAX_ENV: u32 = 256;
/// Strings of the new program (arguments, then the environment) read at most, in chunks of
/// [`CHUNK`] bytes: an exec on a grant given more, or much longer ones, is refused before the
/// grant is used ([`strings_fit`]).
const MAX_STRINGS: u32 = 512;
const CHUNK: usize = 4096;
const SIGKILL: u32 = 9;

#[repr(C)]
struct EnvScratch {
    /// An entry's first bytes, zero after its end.
    entry: [u64; ENV_NAME_BYTES / 8 + 1],
    /// A string read to find its end.
    chunk: [u8; CHUNK],
    /// Where the walk over the new program's strings is.
    address: u64,
    strings_done: u32,
    /// 1 while `address` is the start of a string.
    at_start: u32,
}

/// At `bprm_creds_for_exec` of an agent's exec, after the kernel copied the caller's strings:
/// forgets what an earlier exec at the same address left (one that failed after its grant was
/// used never reached `bprm_committed_creds`), and judges the caller's environment when a grant
/// waits for the file.
#[inline(always)]
pub unsafe fn judge_caller_env(bprm: *const u8) {
    let key = bprm as u64;
    let _ = CALLER_ENV.remove(key);
    let _ = NEW_ENV_CHECKS.remove(key);
    let Ok(file) = (unsafe { read_field::<*const u8>(bprm, &OFF_BPRM_FILE) }) else {
        return;
    };
    let Ok(target) = (unsafe { exec_target(file) }) else {
        return;
    };
    let grant = GrantKey {
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        target,
    };
    if grant_waiting(&grant, |_| true) {
        let approved = unsafe { strings_fit(bprm) && walk_caller_env(bprm) } as u32;
        let _ = CALLER_ENV.insert(key, approved, 0);
    }
}

/// At `bprm_check_security`: whether the caller's environment was judged and refused for this
/// exec. One not judged (the grant is for a binary reached as another file's interpreter) goes
/// on: the check of the new program's own copy decides.
#[inline(always)]
pub fn caller_env_refused(bprm: *const u8) -> bool {
    let key = bprm as u64;
    let refused = CALLER_ENV
        .get_ptr(key)
        .is_some_and(|verdict| unsafe { *verdict } == 0);
    let _ = CALLER_ENV.remove(key);
    refused
}

/// Whether the new program's strings can all be walked at `bprm_committed_creds`: their count,
/// and one more read for each chunk of their bytes (from `bprm->p` up to the file name the
/// kernel copied above them), with room for what a script's interpreter puts before them.
#[inline(always)]
unsafe fn strings_fit(bprm: *const u8) -> bool {
    const ROOM_FOR_INTERPRETER: u64 = 8;
    let (Ok(argc), Ok(envc), Ok(start), Ok(end)) = (unsafe {
        (
            read_field::<i32>(bprm, &OFF_BPRM_ARGC),
            read_field::<i32>(bprm, &OFF_BPRM_ENVC),
            read_field::<u64>(bprm, &OFF_BPRM_P),
            read_field::<u64>(bprm, &OFF_BPRM_EXEC),
        )
    }) else {
        return false;
    };
    let (Ok(argc), Ok(envc)) = (u64::try_from(argc), u64::try_from(envc)) else {
        return false;
    };
    let Some(bytes) = end.checked_sub(start) else {
        return false;
    };
    argc + envc + bytes / (CHUNK as u64 - 1) + ROOM_FOR_INTERPRETER <= MAX_STRINGS as u64
}

/// Has the new program's environment checked before it runs: false when that cannot be
/// arranged, and the exec must be refused.
#[inline(always)]
pub fn expect_env_check(bprm: *const u8, file: [u64; 2]) -> bool {
    NEW_ENV_CHECKS.insert(bprm as u64, file, 0).is_ok()
}

#[lsm(hook = "bprm_committed_creds")]
pub fn bprm_committed_creds(ctx: LsmContext) -> i32 {
    let Some(agent) = agent_cgroup() else {
        return 0;
    };
    let bprm: *const u8 = ctx.arg(0);
    let Some(file) = NEW_ENV_CHECKS.get_ptr(bprm as u64) else {
        return 0;
    };
    let file = unsafe { *file };
    let _ = NEW_ENV_CHECKS.remove(bprm as u64);
    if !unsafe { new_env_approved(bprm) } {
        // Past the point of no return the exec cannot fail: the process dies before it runs.
        unsafe { bpf_send_signal(SIGKILL) };
        tamper(agent, TamperHook::UnapprovedEnv, file);
    }
    0
}

/// Whether the caller's environment holds approved names alone, and as many as the kernel
/// copied for the new program.
#[inline(always)]
unsafe fn walk_caller_env(bprm: *const u8) -> bool {
    unsafe {
        let (Some(scratch), Some(vectors), Ok(envc)) = (
            ENV_SCRATCH.get_ptr_mut(0),
            caller_vectors(),
            read_field::<i32>(bprm, &OFF_BPRM_ENVC),
        ) else {
            return false;
        };
        // Linux takes a null vector for an empty one.
        if vectors.envp == 0 {
            return envc == 0;
        }
        for index in 0..=MAX_ENV {
            let Ok(entry) = vector_entry(vectors.envp, vectors.wide, index) else {
                return false;
            };
            if entry == 0 {
                return envc == index as i32;
            }
            if index == MAX_ENV || !approved_entry(scratch, entry) {
                return false;
            }
        }
        false
    }
}

/// Whether the environment the kernel copied onto the new program's stack, after its
/// arguments, holds approved names alone. Called once that stack is the caller's memory.
#[inline(always)]
unsafe fn new_env_approved(bprm: *const u8) -> bool {
    unsafe {
        let (Some(scratch), Ok(argc), Ok(envc), Ok(start)) = (
            ENV_SCRATCH.get_ptr_mut(0),
            read_field::<i32>(bprm, &OFF_BPRM_ARGC),
            read_field::<i32>(bprm, &OFF_BPRM_ENVC),
            read_field::<u64>(bprm, &OFF_BPRM_P),
        ) else {
            return false;
        };
        if argc < 0 || envc < 0 || envc as u32 > MAX_ENV {
            return false;
        }
        (*scratch).address = start;
        (*scratch).strings_done = 0;
        (*scratch).at_start = 1;
        let mut walk = NewEnvWalk {
            argc: argc as u32,
            strings: argc as u32 + envc as u32,
            verdict: UNDECIDED,
        };
        turns(MAX_STRINGS, new_env_step, &mut walk).is_ok() && walk.verdict == APPROVED
    }
}

/// [`new_env_approved`]'s walk over the new program's strings; where it is, in [`EnvScratch`].
#[repr(C)]
struct NewEnvWalk {
    argc: u32,
    strings: u32,
    verdict: u32,
}

/// [`NewEnvWalk::verdict`]s. Undecided once the walk's turns ran out: refused.
const UNDECIDED: u32 = 0;
const APPROVED: u32 = 1;
const REFUSED: u32 = 2;

/// One step of [`new_env_approved`]: one string, or one chunk of a long one.
#[inline(never)]
extern "C" fn new_env_step(_turn: u64, walk: *mut c_void) -> i64 {
    let walk = unsafe { &mut *walk.cast::<NewEnvWalk>() };
    let Some(scratch) = ENV_SCRATCH.get_ptr_mut(0) else {
        walk.verdict = REFUSED;
        return TURN_DONE;
    };
    unsafe {
        let (here, finished) = ((*scratch).address, (*scratch).strings_done);
        if finished >= walk.strings {
            walk.verdict = APPROVED;
            return TURN_DONE;
        }
        if finished >= walk.argc && (*scratch).at_start == 1 && !approved_entry(scratch, here) {
            walk.verdict = REFUSED;
            return TURN_DONE;
        }
        let read = bpf_probe_read_user_str(
            (*scratch).chunk.as_mut_ptr().cast(),
            CHUNK as u32,
            here as *const _,
        );
        if read <= 0 {
            walk.verdict = REFUSED;
            return TURN_DONE;
        }
        // A read that filled the chunk may have stopped short of the string's end (it holds
        // all but the chunk's last byte): the next goes on from the first byte it left.
        if (read as usize) < CHUNK {
            (*scratch).address = here + read as u64;
            (*scratch).strings_done = finished + 1;
            (*scratch).at_start = 1;
        } else {
            (*scratch).address = here + CHUNK as u64 - 1;
            (*scratch).at_start = 0;
        }
    }
    TURN_AGAIN
}

/// Whether the `NAME=value` string at `address` names an approved variable.
#[inline(always)]
unsafe fn approved_entry(scratch: *mut EnvScratch, address: u64) -> bool {
    gatekeeper_approved_entry(scratch, address) == 1
}

/// [`approved_entry`] as a global BPF function (see [`crate::file_rules::gatekeeper_placement`]):
/// the walks over an environment ask it at each of hundreds of steps, where the verifier would
/// check its read again each time. 1 for approved.
#[unsafe(no_mangle)]
#[inline(never)]
extern "C" fn gatekeeper_approved_entry(scratch: *mut EnvScratch, address: u64) -> i32 {
    // The verifier takes the pointer as maybe null: checked before use.
    if scratch.is_null() {
        return 0;
    }
    let approved = unsafe {
        let entry = &raw mut (*scratch).entry;
        // Zero first, word by word (an array store would be a loop over bytes): the name ends
        // at the first '=' before the string's end.
        for word in 0..ENV_NAME_BYTES / 8 + 1 {
            core::ptr::write_volatile((*entry).as_mut_ptr().add(word), 0);
        }
        let read = bpf_probe_read_user_str(
            entry.cast(),
            core::mem::size_of_val(&*entry) as u32,
            address as *const _,
        );
        read > 0
            && EnvName::of_entry(&*entry).is_some_and(|name| APPROVED_ENV.get_ptr(name).is_some())
    };
    approved.into()
}
