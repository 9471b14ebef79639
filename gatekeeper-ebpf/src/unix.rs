//! Unix sockets bound at protected paths (`protect.connect` with `path`): an agent's stream or
//! seqpacket connect, and its datagrams, to such a socket need approval. The socket is matched by
//! the (device, inode) of the file it is bound to, whatever path the caller gave: relative
//! paths, symlinks, hard links and /proc/self/cwd all arrive at the same listening socket here.
//! Abstract sockets have no file and are not matched. The reviewers' socket is off-limits to
//! agents altogether: a tamper attempt, never a request. A connection to the agents' socket
//! is noted with the caller's cgroup as it connects, so the daemon learns whose it is from the
//! kernel, never from a pid another process may hold by the time it looks.

use aya_ebpf::{
    helpers::{bpf_get_current_cgroup_id, generated::bpf_get_socket_cookie},
    macros::{lsm, map},
    maps::LruHashMap,
    programs::LsmContext,
};
use gatekeeper_common::{MAX_AGENT_CONNECTIONS, TamperHook, Target, daemon_file};

use crate::{
    exec::inode_target,
    files::daemon_file_bits,
    offsets::{OFF_DENTRY_INODE, OFF_PATH_DENTRY, OFF_SOCKET_SK, OFF_UNIX_PATH, OFF_UNIX_PEER},
    read::{member_ptr, read_field},
    verdict::{EPERM, agent_caller, decide_found, is_protected, tamper_target},
};

/// The cgroup id an agent connected to the agents' socket from, by the cookie of the daemon's
/// end of the connection (`SO_COOKIE` on the accepted socket). The daemon takes each entry as
/// it accepts, so no more wait here than the socket's backlog holds; a caller whose note is
/// missing all the same is refused, never taken for another.
#[map]
static AGENT_CONNECTIONS: LruHashMap<u64, u64> =
    LruHashMap::with_max_entries(MAX_AGENT_CONNECTIONS, 0);

/// Stream and seqpacket connects: `other` is the listening socket, `newsk` the daemon's end of
/// the connection to be.
#[lsm(hook = "unix_stream_connect")]
pub fn unix_stream_connect(ctx: LsmContext) -> i32 {
    // An earlier LSM program's denial stands; non-agents pass.
    let agent_cgroup_id = match agent_caller(ctx.arg(3)) {
        Ok(agent) => agent,
        Err(verdict) => return verdict,
    };
    let other: *const u8 = ctx.arg(1);
    let file = match unsafe { bound_file(other) } {
        Ok(Some(file)) => file,
        Ok(None) => return 0,
        Err(_) => return -EPERM,
    };
    if daemon_file_bits(&file) & daemon_file::AGENT_SOCKET != 0 {
        // The caller's own cgroup, where its requests are; the cookie is the kernel's for this
        // socket for as long as it lives.
        let newsk: *mut core::ffi::c_void = ctx.arg(2);
        let cookie = unsafe { bpf_get_socket_cookie(newsk) };
        let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
        return match AGENT_CONNECTIONS.insert(cookie, cgroup_id, 0) {
            Ok(()) => 0,
            Err(_) => -EPERM,
        };
    }
    decide_found(agent_cgroup_id, Ok(socket_target(file)))
}

/// Datagram connects and every datagram send.
#[lsm(hook = "unix_may_send")]
pub fn unix_may_send(ctx: LsmContext) -> i32 {
    let agent_cgroup_id = match agent_caller(ctx.arg(2)) {
        Ok(agent) => agent,
        Err(verdict) => return verdict,
    };
    let sock: *const u8 = ctx.arg(0);
    let other: *const u8 = ctx.arg(1);
    decide_found(agent_cgroup_id, unsafe { datagram_target(sock, other) })
}

#[inline(always)]
unsafe fn datagram_target(sock: *const u8, other: *const u8) -> Result<Option<Target>, i32> {
    unsafe {
        let sk: *const u8 = read_field(sock, &OFF_SOCKET_SK)?;
        let other_sk: *const u8 = read_field(other, &OFF_SOCKET_SK)?;
        // A send to the socket's connected peer: its connect was decided here already (as for
        // connected UDP).
        let peer: *const u8 = read_field(sk, &OFF_UNIX_PEER)?;
        if peer == other_sk {
            return Ok(None);
        }
        protected_socket(other_sk)
    }
}

/// The protected target a unix socket (`struct sock`) is, if it is one.
#[inline(always)]
unsafe fn protected_socket(sk: *const u8) -> Result<Option<Target>, i32> {
    Ok(unsafe { bound_file(sk)? }.and_then(socket_target))
}

/// The (device, inode) of the file a unix socket (`struct sock`) is bound to; none for an
/// abstract or unbound one.
#[inline(always)]
unsafe fn bound_file(sk: *const u8) -> Result<Option<Target>, i32> {
    unsafe {
        let path = member_ptr(sk, &OFF_UNIX_PATH);
        let dentry: *const u8 = read_field(path, &OFF_PATH_DENTRY)?;
        if dentry.is_null() {
            return Ok(None);
        }
        let inode: *const u8 = read_field(dentry, &OFF_DENTRY_INODE)?;
        if inode.is_null() {
            return Ok(None);
        }
        inode_target(inode).map(Some)
    }
}

/// What a socket bound to `file` is to an agent: protected, the reviewers' socket (a tamper
/// target), or nothing.
#[inline(always)]
fn socket_target(file: Target) -> Option<Target> {
    if daemon_file_bits(&file) & daemon_file::REVIEWER_SOCKET != 0 {
        return Some(tamper_target(TamperHook::ReviewerSocket, file.data));
    }
    let [dev, ino] = file.data;
    let target = Target::unix_socket(dev as u32, ino);
    is_protected(&target).then_some(target)
}
