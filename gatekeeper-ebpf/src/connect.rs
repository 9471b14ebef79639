//! `socket_connect`: TCP and UDP connects of agents to protected destinations.

use aya_ebpf::{macros::lsm, programs::LsmContext};

use crate::{
    net::{protected_destination, transport},
    verdict::{agent_caller, decide_found},
};

#[lsm(hook = "socket_connect")]
pub fn socket_connect(ctx: LsmContext) -> i32 {
    // An earlier LSM program's denial stands; non-agents pass.
    let agent_cgroup_id = match agent_caller(ctx.arg(3)) {
        Ok(agent) => agent,
        Err(verdict) => return verdict,
    };
    let sock: *const u8 = ctx.arg(0);
    let address: *const u8 = ctx.arg(1);
    let found = unsafe {
        transport(sock).and_then(|transport| match transport {
            Some((protocol, bit)) => protected_destination(address, protocol, bit),
            None => Ok(None),
        })
    };
    decide_found(agent_cgroup_id, found)
}
