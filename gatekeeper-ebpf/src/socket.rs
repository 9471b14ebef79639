//! `socket_create`: agents get only sockets whose traffic Gatekeeper judges or that stay on this
//! host. An allowlist, so that whatever is not named here (a new family, a new transport) is
//! refused: raw and packet sockets, SCTP, DCCP, ping sockets, L2TP, and families that reach the
//! network by their own route (AF_PACKET, AF_XDP, AF_SMC, AF_RDS, AF_TIPC, AF_VSOCK, ...).
//! `socketpair` and io_uring's socket creation pass through this hook too.

use aya_ebpf::{macros::lsm, programs::LsmContext};
use gatekeeper_common::TamperHook;

use crate::verdict::{agent_caller, tamper};

const AF_UNIX: i32 = 1;
const AF_INET: i32 = 2;
const AF_INET6: i32 = 10;
const AF_NETLINK: i32 = 16;
/// The kernel's crypto API: nothing leaves the host.
const AF_ALG: i32 = 38;

const SOCK_STREAM: i32 = 1;
const SOCK_DGRAM: i32 = 2;
/// The type without SOCK_NONBLOCK and SOCK_CLOEXEC.
const SOCK_TYPE_MASK: i32 = 0xf;

/// 0 picks the family's first protocol for the type: TCP for streams, UDP for datagrams.
const IPPROTO_IP: i32 = 0;
const IPPROTO_TCP: i32 = 6;
const IPPROTO_UDP: i32 = 17;
const IPPROTO_UDPLITE: i32 = 136;
const IPPROTO_MPTCP: i32 = 262;

#[lsm(hook = "socket_create")]
pub fn socket_create(ctx: LsmContext) -> i32 {
    // Sockets the kernel makes for its own use are no caller's.
    let kern: i32 = ctx.arg(3);
    if kern != 0 {
        return ctx.arg(4);
    }
    let agent_cgroup_id = match agent_caller(ctx.arg(4)) {
        Ok(agent) => agent,
        Err(verdict) => return verdict,
    };
    let family: i32 = ctx.arg(0);
    let kind: i32 = ctx.arg(1);
    let protocol: i32 = ctx.arg(2);
    if allowed(family, kind & SOCK_TYPE_MASK, protocol) {
        return 0;
    }
    let detail = (kind as u32 as u64) << 32 | protocol as u32 as u64;
    tamper(
        agent_cgroup_id,
        TamperHook::SocketCreate,
        [family as u32 as u64, detail],
    )
}

/// Whether an agent may have this socket.
#[inline(always)]
fn allowed(family: i32, kind: i32, protocol: i32) -> bool {
    match family {
        AF_UNIX | AF_NETLINK | AF_ALG => true,
        // Only the transports socket_connect and socket_sendmsg guard.
        AF_INET | AF_INET6 => match kind {
            SOCK_STREAM => matches!(protocol, IPPROTO_IP | IPPROTO_TCP | IPPROTO_MPTCP),
            SOCK_DGRAM => matches!(protocol, IPPROTO_IP | IPPROTO_UDP | IPPROTO_UDPLITE),
            _ => false,
        },
        _ => false,
    }
}
