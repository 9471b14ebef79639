//! `socket_sendmsg`: sends that name their destination and so never call connect: unconnected
//! UDP `sendto`/`sendmsg`/`sendmmsg` (checked per datagram) and TCP Fast Open.

use aya_ebpf::{macros::lsm, programs::LsmContext};
use gatekeeper_common::IPPROTO_TCP;

use crate::{
    net::{protected_destination, transport},
    offsets::{OFF_MSGHDR_FLAGS, OFF_MSGHDR_NAME},
    read::read_field,
    verdict::{agent_caller, decide_found},
};

const MSG_FASTOPEN: u32 = 0x2000_0000;

#[lsm(hook = "socket_sendmsg")]
pub fn socket_sendmsg(ctx: LsmContext) -> i32 {
    // An earlier LSM program's denial stands; non-agents pass.
    let agent_cgroup_id = match agent_caller(ctx.arg(3)) {
        Ok(agent) => agent,
        Err(verdict) => return verdict,
    };
    let sock: *const u8 = ctx.arg(0);
    let msg: *const u8 = ctx.arg(1);
    decide_found(agent_cgroup_id, unsafe { named_destination(sock, msg) })
}

#[inline(always)]
unsafe fn named_destination(
    sock: *const u8,
    msg: *const u8,
) -> Result<Option<gatekeeper_common::Target>, i32> {
    unsafe {
        let name: *const u8 = read_field(msg, &OFF_MSGHDR_NAME)?;
        // No address: the socket's connected peer, which connect already checked.
        if name.is_null() {
            return Ok(None);
        }
        let Some((protocol, bit)) = transport(sock)? else {
            return Ok(None);
        };
        // TCP ignores a send's address except to open a connection with Fast Open.
        if protocol == IPPROTO_TCP {
            let flags: u32 = read_field(msg, &OFF_MSGHDR_FLAGS)?;
            if flags & MSG_FASTOPEN == 0 {
                return Ok(None);
            }
        }
        protected_destination(name, protocol, bit)
    }
}
