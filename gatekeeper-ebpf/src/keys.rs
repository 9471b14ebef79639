//! The kernel's keyrings: an agent reaches only the keys made in its own agent cgroup. Every
//! process of a user may search that user's keyrings, and root's hold what host services keep
//! there (a Kerberos ticket in root's persistent keyring, a CIFS password, an fscrypt key): a
//! root agent would read them, change them, or plant keys of its own for root's programs.
//! Keys are known by the address of their `struct key` (the kernel numbers a key only after
//! `key_alloc`): every key made at an address, an agent's or not, passes `key_alloc`, which
//! records or forgets it, so a freed agent key's address gives a later host key to no agent.

use aya_ebpf::{
    EbpfContext as _,
    helpers::generated::bpf_get_func_arg,
    macros::{lsm, map},
    maps::LruHashMap,
    programs::LsmContext,
};
use gatekeeper_common::{MAX_AGENT_KEYS, TamperHook};

use crate::verdict::{agent_cgroup, tamper};

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
    if AGENT_KEYS
        .get_ptr(key)
        .is_some_and(|owner| unsafe { *owner } == agent)
    {
        return 0;
    }
    let need: u32 = ctx.arg(2);
    if need == KEY_NEED_VIEW || need == KEY_NEED_SEARCH {
        return -EACCES;
    }
    tamper(agent, TamperHook::HostKey, [need as u64, 0])
}
