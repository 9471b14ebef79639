//! Unix sockets bound at protected paths (`protect.connect` with `path`): an agent's stream or
//! seqpacket connect, and its datagrams, to such a socket need approval. The socket is matched by
//! the (device, inode) of the file it is bound to, whatever path the caller gave: relative
//! paths, symlinks, hard links and /proc/self/cwd all arrive at the same listening socket here.
//! Abstract sockets have no file and are not matched. The reviewers' socket is off-limits to
//! agents altogether: a tamper attempt, never a request.

use aya_ebpf::{macros::lsm, programs::LsmContext};
use gatekeeper_common::{TamperHook, Target, daemon_file};

use crate::{
    exec::inode_target,
    files::daemon_file_bits,
    offsets::{OFF_DENTRY_INODE, OFF_PATH_DENTRY, OFF_SOCKET_SK, OFF_UNIX_PATH, OFF_UNIX_PEER},
    read::{member_ptr, read_field},
    verdict::{agent_caller, decide_found, is_protected, tamper_target},
};

/// Stream and seqpacket connects: `other` is the listening socket.
#[lsm(hook = "unix_stream_connect")]
pub fn unix_stream_connect(ctx: LsmContext) -> i32 {
    // An earlier LSM program's denial stands; non-agents pass.
    let agent_cgroup_id = match agent_caller(ctx.arg(3)) {
        Ok(agent) => agent,
        Err(verdict) => return verdict,
    };
    let other: *const u8 = ctx.arg(1);
    decide_found(agent_cgroup_id, unsafe { protected_socket(other) })
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

/// The protected target a unix socket (`struct sock`) is, if it is one; the reviewers' socket is
/// a tamper target.
#[inline(always)]
unsafe fn protected_socket(sk: *const u8) -> Result<Option<Target>, i32> {
    unsafe {
        let path = member_ptr(sk, &OFF_UNIX_PATH);
        let dentry: *const u8 = read_field(path, &OFF_PATH_DENTRY)?;
        // Abstract or unbound: no file to match.
        if dentry.is_null() {
            return Ok(None);
        }
        let inode: *const u8 = read_field(dentry, &OFF_DENTRY_INODE)?;
        if inode.is_null() {
            return Ok(None);
        }
        let file = inode_target(inode)?;
        if daemon_file_bits(&file) & daemon_file::REVIEWER_SOCKET != 0 {
            return Ok(Some(tamper_target(TamperHook::ReviewerSocket, file.data)));
        }
        let [dev, ino] = file.data;
        let target = Target::unix_socket(dev as u32, ino);
        Ok(is_protected(&target).then_some(target))
    }
}
