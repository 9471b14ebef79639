//! What every hook shares: who is an agent, whether a grant allows, and reporting to the daemon.

use aya_ebpf::{
    helpers::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_current_comm,
        bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_ktime_get_boot_ns,
    },
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use gatekeeper_common::{
    COUNTER_SLOTS, Counter, Event, EventKind, GrantKey, GrantValue, MAX_AGENT_CGROUPS, MAX_ALLOWED,
    MAX_CGROUP_DEPTH, MAX_DAEMON_PIDS, MAX_GRANTS, MAX_PROTECTED, RING_BUFFER_BYTES, SETTING_SLOTS,
    Setting, TARGET_KIND_TAMPER, TamperHook, Target,
};

pub const EPERM: i32 = 1;
/// Bytes of unread events above which tamper events are dropped (counted).
const TAMPER_RING_SHARE: u64 = RING_BUFFER_BYTES as u64 / 2;
/// `bpf_ringbuf_query`: bytes not yet consumed.
const BPF_RB_AVAIL_DATA: u64 = 0;
/// `bpf_ringbuf_query`: the daemon's read position (bytes read since the ring was made).
const BPF_RB_CONS_POS: u64 = 2;
/// Bytes of unread events above which each cgroup's events are rationed (see [`rationed`]).
const RATION_ABOVE: u64 = RING_BUFFER_BYTES as u64 / 4;
/// Bytes of events a cgroup may add at once while rationed (some 46 denials, or 3 execs with
/// their arguments)...
const RATION_BURST_BYTES: u64 = RING_BUFFER_BYTES as u64 / 16;
/// ...and then a byte per this many nanoseconds (4 KiB a second) while the daemon reads.
const RATION_NS_PER_BYTE: u64 = 1_000_000_000 / 4096;
/// Unread bytes above which only grant uses are added: the last quarter is theirs, however
/// many cgroups flood.
const GRANT_USE_RESERVE_ABOVE: u64 = RING_BUFFER_BYTES as u64 / 4 * 3;
/// Cgroups whose ration is kept; agents cannot make cgroups, so these are the host's.
const RATIONED_CGROUPS: u32 = 4096;

// Every map is pinned by name: a restarted or upgraded daemon adopts them with their grants and
// the events queued while it was away.

#[map]
static AGENT_CGROUPS: HashMap<u64, u32> = HashMap::pinned(MAX_AGENT_CGROUPS, 0);

#[map]
static PROTECTED: HashMap<Target, u32> = HashMap::pinned(MAX_PROTECTED, 0);

#[map]
static GRANTS: HashMap<GrantKey, GrantValue> = HashMap::pinned(MAX_GRANTS, 0);

#[map]
static EVENTS: RingBuf = RingBuf::pinned(RING_BUFFER_BYTES, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(COUNTER_SLOTS, 0);

#[map]
static DAEMON_PIDS: HashMap<u32, u32> = HashMap::pinned(MAX_DAEMON_PIDS, 0);

#[map]
static ALLOWED: HashMap<Target, u32> = HashMap::pinned(MAX_ALLOWED, 0);

#[map]
static SETTINGS: Array<u32> = Array::pinned(SETTING_SLOTS, 0);

/// cgroup id -> the agent cgroup it is in or below, 0 for none: the answer of the ancestor walk,
/// kept so that the hooks every process runs exit after one lookup. A cgroup's ancestors never
/// change, and the agent cgroups are set before the programs attach; the map is not pinned, so
/// each load starts it empty.
#[map]
static AGENT_OF: LruHashMap<u64, u64> = LruHashMap::with_max_entries(AGENT_OF_ENTRIES, 0);

const AGENT_OF_ENTRIES: u32 = 8192;

/// cgroup id -> its ration: a flood of one agent's denials cannot fill the ring and drop those
/// of the others.
#[map]
static RATIONS: LruHashMap<u64, Ration> = LruHashMap::with_max_entries(RATIONED_CGROUPS, 0);

/// What a cgroup may still add to the ring while it is rationed.
#[repr(C)]
#[derive(Clone, Copy)]
struct Ration {
    /// Bytes it may add now.
    bytes: u64,
    /// The daemon's read position when they were last topped up.
    read_position: u64,
    /// When that was (boot clock, ns).
    topped_up_at: u64,
}

/// The agent cgroup of the caller of a hook whose trailing argument is `previous`, the verdict of
/// the LSM programs before: Err(that verdict) when one already denied, Err(0) (allow) when the
/// caller is no agent.
#[inline(always)]
pub fn agent_caller(previous: i32) -> Result<u64, i32> {
    if previous != 0 {
        return Err(previous);
    }
    agent_cgroup().ok_or(0)
}

/// The configured agent cgroup the current task is in or descends from.
#[inline(always)]
pub fn agent_cgroup() -> Option<u64> {
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    let agent = match AGENT_OF.get_ptr(cgroup) {
        Some(known) => unsafe { *known },
        None => {
            let walked = walk_to_agent_cgroup().unwrap_or(0);
            let _ = AGENT_OF.insert(cgroup, walked, 0);
            walked
        }
    };
    (agent != 0).then_some(agent)
}

/// The ancestor walk behind [`agent_cgroup`].
#[inline(always)]
fn walk_to_agent_cgroup() -> Option<u64> {
    // Level 0 is the root cgroup, which is never an agent cgroup.
    for level in 1..=MAX_CGROUP_DEPTH {
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
        if id == 0 {
            // Deeper than the task's own cgroup.
            return None;
        }
        if AGENT_CGROUPS.get_ptr(id).is_some() {
            return Some(id);
        }
    }
    None
}

#[inline(always)]
pub fn is_protected(target: &Target) -> bool {
    PROTECTED.get_ptr(target).is_some()
}

/// A file renamed over a protected binary is protected from that moment, under the same rule
/// (the daemon, which follows the path twice a second, learns of it then). A full map leaves it
/// to the daemon.
#[inline(always)]
pub fn inherit_protected(replaced: &Target, incoming: &Target) {
    if let Some(rule) = PROTECTED.get_ptr(replaced) {
        let rule = unsafe { *rule };
        let _ = PROTECTED.insert(incoming, rule, 0);
    }
}

/// In allowlist mode, whether an agent needs approval to run `target` although it is not
/// protected: everything not allowlisted does.
#[inline(always)]
pub fn needs_allowlist_approval(target: &Target) -> bool {
    allowlist_mode() && ALLOWED.get_ptr(target).is_none()
}

/// A value the daemon set in the settings array (0 until it does).
#[inline(always)]
pub fn setting(setting: Setting) -> u32 {
    SETTINGS.get(setting as u32).copied().unwrap_or(0)
}

/// Whether agents may exec only allowlisted binaries unasked.
#[inline(always)]
pub fn allowlist_mode() -> bool {
    setting(Setting::ExecAllowlist) == 1
}

#[inline(always)]
pub fn is_allowlisted(target: &Target) -> bool {
    ALLOWED.get_ptr(target).is_some()
}

/// In allowlist mode, takes a file that is about to be changed off the allowlist: what it will
/// hold is not what was allowed.
#[inline(always)]
pub fn forget_allowlisted(target: &Target) {
    if allowlist_mode() {
        let _ = ALLOWED.remove(target);
    }
}

/// The inode number of the host's network namespace, 0 while the daemon has not said.
#[inline(always)]
pub fn host_netns() -> u32 {
    setting(Setting::HostNetns)
}

#[inline(always)]
pub fn is_daemon(tgid: u32) -> bool {
    DAEMON_PIDS.get_ptr(tgid).is_some()
}

/// Denies a tamper attempt of an agent and reports it; there is nothing to approve.
#[inline(always)]
pub fn tamper(agent_cgroup_id: u64, hook: TamperHook, detail: [u64; 2]) -> i32 {
    refuse_tamper(agent_cgroup_id, tamper_target(hook, detail))
}

/// A tamper attempt as a target, for code that finds one where it looks for protected targets.
#[inline(always)]
pub fn tamper_target(hook: TamperHook, detail: [u64; 2]) -> Target {
    Target {
        kind: TARGET_KIND_TAMPER,
        aux: hook as u32,
        data: detail,
    }
}

/// [`tamper`], for a target made by [`tamper_target`].
#[inline(always)]
fn refuse_tamper(agent_cgroup_id: u64, target: Target) -> i32 {
    let key = GrantKey {
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        target,
    };
    count(Counter::Tamper);
    report(
        EventKind::Tamper,
        agent_cgroup_id,
        &key,
        0,
        core::ptr::null(),
    );
    -EPERM
}

/// Decides a protected action of an agent: allowed once if an unexpired grant is consumed by this
/// very call, denied otherwise. Returns the LSM verdict.
#[inline(always)]
pub fn decide(agent_cgroup_id: u64, target: Target, filename: *const u8) -> i32 {
    let key = GrantKey {
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        target,
    };
    if take_grant(agent_cgroup_id, &key, filename, |_| true).is_some() {
        return 0;
    }
    count(Counter::Denied);
    report(EventKind::Denied, agent_cgroup_id, &key, 0, filename);
    -EPERM
}

/// Consumes the unexpired grant for `key` that `accepts` takes, reporting its use. Of several
/// racing callers only one deletion succeeds: that caller is the one allowed.
#[inline(always)]
pub fn take_grant(
    agent_cgroup_id: u64,
    key: &GrantKey,
    filename: *const u8,
    accepts: impl Fn(&GrantValue) -> bool,
) -> Option<GrantValue> {
    let grant = unsafe { *GRANTS.get_ptr(key)? };
    if unexpired(&grant) && accepts(&grant) && GRANTS.remove(key).is_ok() {
        count(Counter::GrantsUsed);
        report(
            EventKind::GrantUsed,
            agent_cgroup_id,
            key,
            grant.grant_id,
            filename,
        );
        return Some(grant);
    }
    None
}

/// Whether a grant for `key` that `accepts` takes is waiting, unexpired; it stays unused.
#[inline(always)]
pub fn grant_waiting(key: &GrantKey, accepts: impl Fn(&GrantValue) -> bool) -> bool {
    GRANTS
        .get_ptr(key)
        .is_some_and(|grant| unexpired(unsafe { &*grant }) && accepts(unsafe { &*grant }))
}

#[inline(always)]
fn unexpired(grant: &GrantValue) -> bool {
    let now = unsafe { bpf_ktime_get_boot_ns() };
    now < grant.expires_boot_ns
}

/// Counts a denial that the caller reports itself (with more than an [`Event`] holds).
#[inline(always)]
pub fn count_denial() {
    count(Counter::Denied);
}

/// The verdict on an agent's action that may touch a protected target: none touched allows,
/// one touched is decided (a tamper target refused outright), and one that could not be read is
/// refused rather than guessed.
#[inline(always)]
pub fn decide_found(agent_cgroup_id: u64, found: Result<Option<Target>, i32>) -> i32 {
    match found {
        Ok(Some(target)) if target.kind == TARGET_KIND_TAMPER => {
            refuse_tamper(agent_cgroup_id, target)
        }
        Ok(Some(target)) => decide(agent_cgroup_id, target, core::ptr::null()),
        Ok(None) => 0,
        Err(_) => -EPERM,
    }
}

#[inline(always)]
fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        unsafe { *slot += 1 };
    }
}

/// Sends an event to the daemon. A full ring buffer changes no verdict; it is counted instead.
#[inline(always)]
fn report(
    kind: EventKind,
    agent_cgroup_id: u64,
    key: &GrantKey,
    grant_id: u64,
    filename: *const u8,
) {
    // Tamper attempts are only journaled, never decided: they may fill half the ring, so that
    // a flood of them leaves room for the denials reviewers act on and the grant uses.
    let unread = EVENTS.query(BPF_RB_AVAIL_DATA);
    if kind == EventKind::Tamper && unread > TAMPER_RING_SHARE {
        count(Counter::EventsDropped);
        return;
    }
    // A grant's use is a fact the journal must hold; what the agent was refused may be asked
    // again.
    if kind != EventKind::GrantUsed && rationed(key.cgroup_id, unread, size_of::<Event>()) {
        count(Counter::EventsDropped);
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        count(Counter::EventsDropped);
        return;
    };
    fill_event(
        entry.as_mut_ptr(),
        kind,
        agent_cgroup_id,
        key,
        grant_id,
        filename,
    );
    entry.submit(0);
}

/// Whether an event of `bytes` of `cgroup` that is no grant's use is dropped, to leave room for
/// other cgroups' events and for grant uses: while the daemon is behind (`unread` bytes above
/// [`RATION_ABOVE`]), each cgroup may add [`RATION_BURST_BYTES`] at once, topped up by a byte
/// each [`RATION_NS_PER_BYTE`] but by no more than the daemon has read since (counted in bytes,
/// since an exec's record is twelve times a connect's); above [`GRANT_USE_RESERVE_ABOVE`]
/// nothing. A daemon that reads nothing (stopped, frozen) tops up nobody, however long a flood
/// is paced.
/// Races between CPUs may let an event more through.
#[inline(always)]
fn rationed(cgroup: u64, unread: u64, bytes: usize) -> bool {
    if unread <= RATION_ABOVE {
        return false;
    }
    if unread > GRANT_USE_RESERVE_ABOVE {
        return true;
    }
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let read_position = EVENTS.query(BPF_RB_CONS_POS);
    let mut ration = RATIONS.get_ptr(cgroup).map_or(
        Ration {
            bytes: RATION_BURST_BYTES,
            read_position,
            topped_up_at: now,
        },
        |ration| unsafe { *ration },
    );
    let read = read_position.wrapping_sub(ration.read_position);
    let topped_up = read != 0;
    if topped_up {
        // No more than the daemon has read since: a daemon slowed down tops up as slowly.
        let earned = (now.saturating_sub(ration.topped_up_at) / RATION_NS_PER_BYTE).min(read);
        ration = Ration {
            bytes: ration.bytes.saturating_add(earned).min(RATION_BURST_BYTES),
            read_position,
            topped_up_at: now,
        };
    }
    let dropped = ration.bytes < bytes as u64;
    if !dropped {
        ration.bytes -= bytes as u64;
    }
    // A flood's drops change nothing to keep.
    if !dropped || topped_up {
        let _ = RATIONS.insert(cgroup, ration, 0);
    }
    dropped
}

/// Sends a denial record that begins with an [`Event`] (filled by [`fill_event`]); see
/// [`report`].
#[inline(always)]
pub fn report_record<T>(record: &T, cgroup: u64) {
    if rationed(cgroup, EVENTS.query(BPF_RB_AVAIL_DATA), size_of::<T>()) {
        count(Counter::EventsDropped);
        return;
    }
    if EVENTS.output::<T>(record, 0).is_err() {
        count(Counter::EventsDropped);
    }
}

/// Writes the caller's side of an event: who, in which cgroup, what, and the grant used.
#[inline(always)]
pub fn fill_event(
    event: *mut Event,
    kind: EventKind,
    agent_cgroup_id: u64,
    key: &GrantKey,
    grant_id: u64,
    filename: *const u8,
) {
    let pid_tgid = bpf_get_current_pid_tgid();
    unsafe {
        (*event).kind = kind as u32;
        (*event).pid = pid_tgid as u32;
        (*event).tgid = (pid_tgid >> 32) as u32;
        (*event).uid = bpf_get_current_uid_gid() as u32;
        (*event).cgroup_id = key.cgroup_id;
        (*event).agent_cgroup_id = agent_cgroup_id;
        (*event).target = key.target;
        (*event).grant_id = grant_id;
        (*event).comm = bpf_get_current_comm().unwrap_or_default();
        let name = &mut (*event).filename;
        // Ring buffer and scratch memory is not zeroed: an empty string must still be terminated.
        name[0] = 0;
        if !filename.is_null() {
            let _ = aya_ebpf::helpers::bpf_probe_read_kernel_str_bytes(filename, name);
        }
    }
}
