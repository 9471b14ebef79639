//! The kernel's keyrings: an agent reaches only the keys made in its own agent cgroup. Every
//! process of a user may search that user's keyrings, and root's hold what host services keep
//! there (a Kerberos ticket in root's persistent keyring, a CIFS password, an fscrypt key): a
//! root agent would read them, change them, or plant keys of its own for root's programs.
//! Keys are known by the address of their `struct key` (the kernel numbers a key only after
//! `key_alloc`): every key made at an address, an agent's or not, passes `key_alloc`, which
//! records or forgets it, so a freed agent key's address gives a later host key to no agent.

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_probe_read_kernel_str_bytes, generated::bpf_get_func_arg},
    macros::{lsm, map},
    maps::LruHashMap,
    programs::LsmContext,
};
use gatekeeper_common::{MAX_AGENT_KEYS, TamperHook};

use crate::{
    offsets::{
        OFF_KEY_DESCRIPTION, OFF_KEY_TYPE, OFF_KEY_TYPE_NAME, OFF_PT_REGS_BX, OFF_PT_REGS_DI,
    },
    read::{current_register, current_syscall, read_field},
    verdict::{agent_cgroup, tamper},
};

/// keyctl in the x86-64 and the 32-bit system call tables (neither number is a system call
/// that reaches a key in the other table), and its command that hands the caller's session
/// keyring to its parent, where the parent's later keys would land in the agent's keyring.
const NR_KEYCTL: [u64; 2] = [250, 288];
const KEYCTL_SESSION_TO_PARENT: u32 = 18;
const KEY_NEED_LINK: u32 = 5;

/// Keyrings the kernel finds by name for every process of a user or a user namespace: a
/// user's own keyrings and the registers that hold them (`.user_reg`, `.persistent_register`;
/// the kernel's other `.` keyrings too). One an agent makes first (`keyctl_get_persistent`)
/// is the host's as well, so never the agent's: an agent owning a register could clear it or
/// plant a keyring of its own under a user's name there.
const SHARED_KEYRINGS: [&[u8]; 4] = [b".", b"_persistent.", b"_uid.", b"_uid_ses."];

/// The address of each key an agent made -> its agent cgroup. LRU: the entries of freed keys
/// (no hook sees a key go) make room; a live key pushed out is refused to its agent, never given
/// to another.
#[map]
static AGENT_KEYS: LruHashMap<u64, u64> = LruHashMap::pinned(MAX_AGENT_KEYS, 0);

/// `enum key_need_perm`: looking at a key (`/proc/keys`, describe) and searching a keyring,
/// which lookups and listings ask of every key they pass: refused quietly, as the kernel
/// refuses a key its permissions hide.
const KEY_NEED_VIEW: u32 = 1;
const KEY_NEED_SEARCH: u32 = 4;
const EACCES: i32 = 13;
const ENOMEM: i32 = 12;

#[lsm(hook = "key_alloc")]
pub fn key_alloc(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    let key: u64 = ctx.arg(0);
    let Some(agent) = agent_cgroup() else {
        // A host key at the address of a freed agent key is not that agent's.
        let _ = AGENT_KEYS.remove(key);
        return 0;
    };
    if unsafe { names_a_shared_keyring(key as *const u8) } {
        let _ = AGENT_KEYS.remove(key);
        return 0;
    }
    // Unrecorded, the key would be refused to its agent: refused now instead.
    match AGENT_KEYS.insert(key, agent, 0) {
        Ok(()) => 0,
        Err(_) => -ENOMEM,
    }
}

#[lsm(hook = "key_permission")]
pub fn key_permission(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    let Some(agent) = agent_cgroup() else {
        return 0;
    };
    // `key_ref_t`: the key's address, with whether the caller possesses it in bit 0. Its BTF
    // type is a pointer to a struct never defined, which the verifier lets no program read
    // from the context: the trampoline hands it over as a number.
    let mut key_ref = 0u64;
    if unsafe { bpf_get_func_arg(ctx.as_ptr(), 0, &mut key_ref) } != 0 {
        return tamper(agent, TamperHook::HostKey, [0, 0]);
    }
    let key = key_ref & !1;
    let need: u32 = ctx.arg(2);
    if need == KEY_NEED_LINK && hands_keyring_to_parent() {
        return tamper(
            agent,
            TamperHook::HostKey,
            [need as u64, KEYCTL_SESSION_TO_PARENT as u64],
        );
    }
    if AGENT_KEYS
        .get_ptr(key)
        .is_some_and(|owner| unsafe { *owner } == agent)
    {
        return 0;
    }
    if need == KEY_NEED_VIEW || need == KEY_NEED_SEARCH {
        return -EACCES;
    }
    tamper(agent, TamperHook::HostKey, [need as u64, 0])
}

/// Whether `key` is a keyring whose description is one of [`SHARED_KEYRINGS`] (unreadable
/// counts as one). An agent's own key of another type may be named so.
#[inline(always)]
unsafe fn names_a_shared_keyring(key: *const u8) -> bool {
    let (mut kind, mut name) = ([0u8; 8], [0u8; 16]);
    let read = unsafe {
        read_field::<*const u8>(key, &OFF_KEY_TYPE)
            .and_then(|kind| read_field::<*const u8>(kind, &OFF_KEY_TYPE_NAME))
            .is_ok_and(|type_name| bpf_probe_read_kernel_str_bytes(type_name, &mut kind).is_ok())
            && read_field::<*const u8>(key, &OFF_KEY_DESCRIPTION).is_ok_and(|description| {
                bpf_probe_read_kernel_str_bytes(description, &mut name).is_ok()
            })
    };
    if !read {
        return true;
    }
    kind == *b"keyring\0"
        && SHARED_KEYRINGS
            .iter()
            .any(|prefix| name.get(..prefix.len()) == Some(*prefix))
}

/// Whether the caller is in keyctl(KEYCTL_SESSION_TO_PARENT) (unreadable registers count as
/// that). Refused whatever the parent is now: the kernel reads the parent again later, after
/// an agent parent that exits has handed its children to a host subreaper.
#[inline(always)]
fn hands_keyring_to_parent() -> bool {
    let Ok(number) = current_syscall() else {
        return true;
    };
    if !NR_KEYCTL.contains(&number) {
        return false;
    }
    let first = if number == NR_KEYCTL[0] {
        &OFF_PT_REGS_DI
    } else {
        &OFF_PT_REGS_BX
    };
    !matches!(
        current_register(first),
        Ok(command) if command as u32 != KEYCTL_SESSION_TO_PARENT
    )
}
