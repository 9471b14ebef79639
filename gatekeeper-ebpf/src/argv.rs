//! An exec's arguments, and grants bound to them.
//!
//! `bprm_check_security` reads the arguments from the caller's memory, where the system call
//! points: they are what reviewers see, and what an argument-bound grant is matched against.
//! Another thread of the caller could change that memory after the read, so the match is checked
//! again at `bprm_committing_creds` on the new program's own copy, made by the kernel, once no
//! other thread of the caller is left and nobody can attach to it: an exec let through on a
//! grant for other arguments is killed there, before its first instruction.

use aya_ebpf::{
    cty::c_void,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_task, bpf_probe_read_user, bpf_send_signal,
        generated::bpf_probe_read_user_str,
    },
    macros::{lsm, map},
    maps::{Array, HashMap, PerCpuArray},
    programs::LsmContext,
};
use gatekeeper_common::{
    ARGV_BYTES, ArgvHasher, ArgvKey, EventKind, ExecArgs, ExecEvent, GRANT_BINDS_ARGV, GrantKey,
    GrantValue, MAX_ARGS, MAX_GRANTS, TamperHook, Target, argv_flags,
};

use crate::{
    env::{caller_env_refused, expect_env_check, judge_caller_env},
    exec::{exe_file_of, exec_target, runs_protected},
    offsets::{
        OFF_BPRM_ARGC, OFF_BPRM_EXECUTABLE, OFF_BPRM_P, OFF_PT_REGS_CX, OFF_PT_REGS_DX,
        OFF_PT_REGS_ORIG_AX, OFF_PT_REGS_R10, OFF_PT_REGS_SI,
    },
    procs::watched_by_perf,
    read::{TURN_AGAIN, TURN_DONE, X32_SYSCALL_BIT, current_register, read_field, turns},
    script::{forget_unstarted_script, runs_approved_script},
    verdict::{
        agent_cgroup, count_denial, fill_event, grant_waiting, report_record, take_grant, tamper,
    },
};

#[map]
static ARGV_KEY: Array<ArgvKey> = Array::pinned(1, 0);

#[map]
static ARGV_GRANTS: HashMap<u64, u64> = HashMap::pinned(MAX_GRANTS, 0);

/// What an argument-bound grant let through at `bprm_check_security`, by the address of the
/// exec's `linux_binprm`, until `bprm_committing_creds` checks it. Not an LRU map: an entry
/// evicted before its check would skip it.
#[map]
static BOUND_EXECS: HashMap<u64, BoundExec> = HashMap::with_max_entries(BOUND_EXECS_ENTRIES, 0);

const BOUND_EXECS_ENTRIES: u32 = 1024;

#[map]
static EXEC_SCRATCH: PerCpuArray<ExecScratch> = PerCpuArray::with_max_entries(1, 0);

#[repr(C)]
#[derive(Clone, Copy)]
struct BoundExec {
    hash: u64,
    /// Arguments hashed: the last `count` of the new program's.
    count: u32,
    /// 1: a script, whose interpreter's path, `#!` argument and the script's path stand before
    /// them; 0: nothing does.
    script: u32,
    /// (device, inode) of the binary, for the report.
    file: [u64; 2],
}

/// An exec record being built, and room for a string read at its end to run over.
#[repr(C)]
struct ExecScratch {
    record: ExecEvent,
    overflow: [u8; ARGV_BYTES],
}

const SIGKILL: u32 = 9;
const NR_EXECVE: u64 = 59;
const NR_EXECVEAT: u64 = 322;
const NR_X32_EXECVE: u64 = X32_SYSCALL_BIT | 520;
const NR_X32_EXECVEAT: u64 = X32_SYSCALL_BIT | 545;
const NR_IA32_EXECVE: u64 = 11;
const NR_IA32_EXECVEAT: u64 = 358;
/// Strings the kernel puts before a script's arguments: its interpreter, the interpreter's
/// argument and the script's path.
const MAX_PREPENDED: u32 = 3;

/// Decides an agent's exec of a binary that needs approval: allowed once by an unexpired grant
/// for it whose arguments, if it is bound to them, are these. A denial is reported with the
/// arguments. `script`: the binary starts with `#!`.
#[inline(always)]
pub fn decide_exec(
    agent_cgroup_id: u64,
    target: Target,
    filename: *const u8,
    bprm: *const u8,
    script: bool,
) -> Option<GrantValue> {
    let scratch = EXEC_SCRATCH.get_ptr_mut(0)?;
    let args = unsafe {
        read_caller_args(scratch, script);
        check_against_kernel(scratch, bprm, script);
        let hash = gatekeeper_hash_args(scratch);
        let args = &raw mut (*scratch).record.args;
        (*args).hash = hash;
        *args
    };
    let key = GrantKey {
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        target,
    };
    // The agent's environment could make the approved program run code of the agent's: a grant
    // is used only by an exec that passes approved variables alone, and one that passes others
    // leaves it for the exec that does.
    if grant_waiting(&key, |grant| binding_holds(grant, &args)) && caller_env_refused(bprm) {
        tamper(agent_cgroup_id, TamperHook::UnapprovedEnv, target.data);
        return None;
    }
    let granted = take_grant(agent_cgroup_id, &key, filename, |grant| {
        binding_holds(grant, &args)
    });
    if let Some(grant) = granted {
        // Without its entry the new program's environment would go unchecked: refuse.
        if !expect_env_check(bprm, target.data) {
            return None;
        }
        if grant.grant_id & GRANT_BINDS_ARGV == 0 {
            return Some(grant);
        }
        let _ = ARGV_GRANTS.remove(grant.grant_id);
        let bound = BoundExec {
            hash: args.hash,
            count: args.count,
            script: script as u32,
            file: target.data,
        };
        // Without its entry the new program's arguments would go unchecked: refuse.
        return BOUND_EXECS
            .insert(bprm as u64, bound, 0)
            .is_ok()
            .then_some(grant);
    }
    count_denial();
    unsafe {
        let record = &mut (*scratch).record;
        fill_event(
            &mut record.event,
            EventKind::Denied,
            agent_cgroup_id,
            &key,
            0,
            filename,
        );
        report_record(record, key.cgroup_id);
    }
    None
}

/// Whether `grant` lets these arguments through: any, unless it is bound to arguments.
#[inline(always)]
fn binding_holds(grant: &GrantValue, args: &ExecArgs) -> bool {
    if grant.grant_id & GRANT_BINDS_ARGV == 0 {
        return true;
    }
    args.bindable()
        && ARGV_GRANTS
            .get_ptr(grant.grant_id)
            .is_some_and(|hash| unsafe { *hash } == args.hash)
}

/// Before the exec is judged (the kernel has copied the caller's strings): forgets what an
/// earlier exec at the same address left, and judges the caller's environment for a grant.
#[lsm(hook = "bprm_creds_for_exec")]
pub fn bprm_creds_for_exec(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(1);
    if previous != 0 {
        return previous;
    }
    // An exec that failed after its grant was used left its entries; a new exec whose
    // `linux_binprm` has the same address starts without one, and its image reads no script.
    if agent_cgroup().is_some() {
        let bprm: *const u8 = ctx.arg(0);
        let _ = BOUND_EXECS.remove(bprm as u64);
        forget_unstarted_script();
        unsafe { judge_caller_env(bprm) };
    }
    0
}

#[lsm(hook = "bprm_committing_creds")]
pub fn bprm_committing_creds(ctx: LsmContext) -> i32 {
    let Some(agent) = agent_cgroup() else {
        return 0;
    };
    let bprm: *const u8 = ctx.arg(0);
    // `perf_event_open` waits for an exec only once it swaps its memory: an event attached to
    // the caller after `bprm_check_security` would sample the approved program. Its memory and
    // file are the new program's now, and no further event can be attached.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    if unsafe { watched_by_perf(task) && (runs_protected(task) || runs_approved_script(task)) } {
        let _ = BOUND_EXECS.remove(bprm as u64);
        unsafe { bpf_send_signal(SIGKILL) };
        let exe = unsafe { exe_file_of(task) }
            .ok()
            .flatten()
            .and_then(|exe| unsafe { exec_target(exe) }.ok());
        tamper(
            agent,
            TamperHook::TracedExec,
            exe.map_or([0, 0], |target| target.data),
        );
        return 0;
    }
    let Some(bound) = BOUND_EXECS.get_ptr(bprm as u64) else {
        return 0;
    };
    let bound = unsafe { *bound };
    let _ = BOUND_EXECS.remove(bprm as u64);
    if unsafe { new_args_match(bprm, &bound) } {
        return 0;
    }
    // Past the point of no return the exec cannot fail: the process dies before it runs.
    unsafe { bpf_send_signal(SIGKILL) };
    tamper(agent, TamperHook::ArgvChanged, bound.file);
    0
}

/// Whether the last `bound.count` arguments of the new program hash as approved. The kernel
/// copied them onto the new program's stack, whose memory is the caller's now.
#[inline(always)]
unsafe fn new_args_match(bprm: *const u8, bound: &BoundExec) -> bool {
    let Some(scratch) = EXEC_SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    unsafe {
        let (Ok(argc), Ok(mut address)) = (
            read_field::<i32>(bprm, &OFF_BPRM_ARGC),
            read_field::<u64>(bprm, &OFF_BPRM_P),
        ) else {
            return false;
        };
        // A script's interpreter gets its path, its `#!` argument if there is one, and the
        // script's path in place of `argv[0]`; anything else gets exactly what was checked.
        let Some(prepended) = (argc as u32).checked_sub(bound.count) else {
            return false;
        };
        let expected = if bound.script == 0 {
            prepended == 0
        } else {
            prepended == 2 || prepended == 3
        };
        if argc < 0 || !expected {
            return false;
        }
        start_args(scratch, 0);
        for index in 0..MAX_PREPENDED + MAX_ARGS {
            if index >= prepended + bound.count {
                break;
            }
            let read = if index < prepended {
                // Read over the start of the buffer, which the arguments then overwrite.
                skip_string(scratch, address)
            } else {
                push_string(scratch, address)
            };
            let Some(read) = read else {
                return false;
            };
            address += read as u64;
        }
        let hash = hash_args(scratch);
        let args = (*scratch).record.args;
        args.count == bound.count && args.bindable() && hash == bound.hash
    }
}

/// Flags what the kernel knows better than the caller's memory: a binary reached as another
/// file's interpreter, and an argument count other than the one read.
#[inline(always)]
unsafe fn check_against_kernel(scratch: *mut ExecScratch, bprm: *const u8, script: bool) {
    unsafe {
        let interpreted = read_field::<*const u8>(bprm, &OFF_BPRM_EXECUTABLE);
        if interpreted != Ok(core::ptr::null()) {
            flag_args(scratch, argv_flags::INTERPRETER);
        }
        let count = core::ptr::read_volatile(&raw const (*scratch).record.args.count);
        // The caller's argv[0], left out for a script, is in the kernel's count.
        let read = count + script as u32;
        if read_field::<i32>(bprm, &OFF_BPRM_ARGC) != Ok(read as i32) {
            flag_args(scratch, argv_flags::CHANGED);
        }
    }
}

/// Where the caller's argument and environment vectors are, and whether its pointers are 64
/// bits wide.
#[derive(Clone, Copy)]
pub struct CallerVectors {
    pub argv: u64,
    pub envp: u64,
    pub wide: bool,
}

/// The vectors the caller passed to execve or execveat, from the system call's registers.
#[inline(always)]
pub fn caller_vectors() -> Option<CallerVectors> {
    let (argv, envp, wide) = match current_register(&OFF_PT_REGS_ORIG_AX).ok()? {
        NR_EXECVE => (&OFF_PT_REGS_SI, &OFF_PT_REGS_DX, true),
        NR_EXECVEAT => (&OFF_PT_REGS_DX, &OFF_PT_REGS_R10, true),
        NR_X32_EXECVE => (&OFF_PT_REGS_SI, &OFF_PT_REGS_DX, false),
        NR_X32_EXECVEAT => (&OFF_PT_REGS_DX, &OFF_PT_REGS_R10, false),
        NR_IA32_EXECVE => (&OFF_PT_REGS_CX, &OFF_PT_REGS_DX, false),
        NR_IA32_EXECVEAT => (&OFF_PT_REGS_DX, &OFF_PT_REGS_SI, false),
        _ => return None,
    };
    // 32-bit callers' registers hold 32-bit values.
    let mask = if wide { u64::MAX } else { 0xffff_ffff };
    Some(CallerVectors {
        argv: current_register(argv).ok()? & mask,
        envp: current_register(envp).ok()? & mask,
        wide,
    })
}

/// Entry `index` of the caller's vector at `vector`: a string's address, 0 at its end.
#[inline(always)]
pub unsafe fn vector_entry(vector: u64, wide: bool, index: u32) -> Result<u64, i32> {
    unsafe {
        if wide {
            bpf_probe_read_user((vector + index as u64 * 8) as *const u64)
        } else {
            bpf_probe_read_user((vector + index as u64 * 4) as *const u32).map(u64::from)
        }
    }
}

// The arguments read so far live in the scratch record and are read back through volatile loads
// at every step: the verifier then carries no exact value out of the loops, so every path into
// the hash looks the same to it and is checked once.

#[inline(always)]
unsafe fn start_args(scratch: *mut ExecScratch, flags: u32) {
    unsafe {
        core::ptr::write_volatile(
            &raw mut (*scratch).record.args,
            ExecArgs {
                flags,
                ..ExecArgs::default()
            },
        )
    }
}

#[inline(always)]
unsafe fn flag_args(scratch: *mut ExecScratch, flag: u32) {
    unsafe {
        let flags = &raw mut (*scratch).record.args.flags;
        core::ptr::write_volatile(flags, core::ptr::read_volatile(flags) | flag);
    }
}

/// Reads the caller's arguments into the scratch record (without `argv[0]` for a script).
#[inline(always)]
unsafe fn read_caller_args(scratch: *mut ExecScratch, script: bool) {
    gatekeeper_read_caller_args(scratch, script.into());
}

/// [`read_caller_args`] as a global BPF function (see
/// [`crate::file_rules::gatekeeper_placement`]), which must return a number: 0.
#[unsafe(no_mangle)]
#[inline(never)]
extern "C" fn gatekeeper_read_caller_args(scratch: *mut ExecScratch, script: u32) -> i32 {
    // The verifier takes the pointer as maybe null: checked before use.
    if scratch.is_null() {
        return 0;
    }
    let script = script != 0;
    unsafe {
        start_args(scratch, if script { argv_flags::WITHOUT_ARGV0 } else { 0 });
        let Some(vectors) = caller_vectors() else {
            flag_args(scratch, argv_flags::UNREAD);
            return 0;
        };
        let first = script as u32;
        for index in 0..=MAX_ARGS + 1 {
            let Ok(pointer) = vector_entry(vectors.argv, vectors.wide, index) else {
                flag_args(scratch, argv_flags::UNREAD);
                return 0;
            };
            if pointer == 0 {
                return 0;
            }
            if index < first {
                continue;
            }
            if core::ptr::read_volatile(&raw const (*scratch).record.args.count) >= MAX_ARGS {
                flag_args(scratch, argv_flags::TRUNCATED);
                return 0;
            }
            if push_string(scratch, pointer).is_none() {
                return 0;
            }
        }
    }
    0
}

/// Appends the NUL-terminated user string at `address` to the arguments read; its length with
/// the NUL, or None (flagged) when it does not fit or cannot be read.
#[inline(always)]
unsafe fn push_string(scratch: *mut ExecScratch, address: u64) -> Option<u32> {
    unsafe {
        let len = &raw mut (*scratch).record.args.len;
        let count = &raw mut (*scratch).record.args.count;
        let used = core::ptr::read_volatile(len) as usize;
        if used >= ARGV_BYTES {
            flag_args(scratch, argv_flags::TRUNCATED);
            return None;
        }
        let dest = (*scratch)
            .record
            .argv
            .as_mut_ptr()
            .add(used & (ARGV_BYTES - 1));
        let read = bpf_probe_read_user_str(dest.cast(), ARGV_BYTES as u32, address as *const _);
        if read <= 0 {
            flag_args(scratch, argv_flags::UNREAD);
            return None;
        }
        let read = read as usize;
        // A string that filled the whole read may go on past it.
        if read >= ARGV_BYTES || used + read > ARGV_BYTES {
            flag_args(scratch, argv_flags::TRUNCATED);
            core::ptr::write_volatile(len, ARGV_BYTES as u32);
            return None;
        }
        core::ptr::write_volatile(len, (used + read) as u32);
        core::ptr::write_volatile(count, core::ptr::read_volatile(count) + 1);
        Some(read as u32)
    }
}

/// The length with the NUL of the user string at `address`, read over the start of the
/// scratch buffer.
#[inline(always)]
unsafe fn skip_string(scratch: *mut ExecScratch, address: u64) -> Option<u32> {
    let read = unsafe {
        bpf_probe_read_user_str(
            (*scratch).record.argv.as_mut_ptr().cast(),
            ARGV_BYTES as u32,
            address as *const _,
        )
    };
    (read > 0 && (read as usize) < ARGV_BYTES).then_some(read as u32)
}

/// [`hash_args`] as a global BPF function (see [`crate::file_rules::gatekeeper_placement`]), for
/// `bprm_check_security`, whose paths to it are many; `bprm_committing_creds` has one, and is
/// checked faster with it inline.
#[unsafe(no_mangle)]
#[inline(never)]
extern "C" fn gatekeeper_hash_args(scratch: *const ExecScratch) -> u64 {
    // The verifier takes the pointer as maybe null: checked before use.
    if scratch.is_null() {
        return 0;
    }
    unsafe { hash_args(scratch) }
}

/// The keyed hash of the arguments in the scratch record: `scratch` is [`EXEC_SCRATCH`]'s only
/// entry, which the loop's steps look up again.
#[inline(always)]
unsafe fn hash_args(scratch: *const ExecScratch) -> u64 {
    let key = ARGV_KEY.get(0).copied().unwrap_or_default();
    let mut walk = HashWalk {
        hasher: ArgvHasher::new(key),
        words: 0,
    };
    unsafe {
        let len = core::ptr::read_volatile(&raw const (*scratch).record.args.len) as usize;
        walk.words = (len / 8) as u64;
        if turns(2 * ARGV_BYTES as u32 / 8, hash_step, &mut walk).is_err() {
            // Not hashed (the helper refuses only other flags or more turns): 0, as good as
            // no grant's.
            return 0;
        }
        let rest = len % 8;
        let tail = if rest == 0 {
            0
        } else {
            let argv = (*scratch).record.argv.as_ptr();
            let word = u64::from_le(*argv.add((len & !7) & (ARGV_BYTES - 8)).cast::<u64>());
            word & ((1u64 << (rest * 8)) - 1)
        };
        walk.hasher.finish(len, tail)
    }
}

/// [`hash_args`]'s walk over the arguments' whole words.
#[repr(C)]
struct HashWalk {
    hasher: ArgvHasher,
    words: u64,
}

/// One word of [`hash_args`].
#[inline(never)]
extern "C" fn hash_step(turn: u64, walk: *mut c_void) -> i64 {
    let walk = unsafe { &mut *walk.cast::<HashWalk>() };
    let Some(scratch) = EXEC_SCRATCH.get_ptr(0) else {
        return TURN_DONE;
    };
    if turn >= walk.words {
        return TURN_DONE;
    }
    // The readers keep `len` within the buffer; the mask keeps each read inside the scratch
    // record for the verifier, which knows nothing of `turn`.
    let index = turn as usize & (2 * ARGV_BYTES / 8 - 1);
    let word = unsafe { *(*scratch).record.argv.as_ptr().add(index * 8).cast::<u64>() };
    walk.hasher.word(u64::from_le(word));
    TURN_AGAIN
}
