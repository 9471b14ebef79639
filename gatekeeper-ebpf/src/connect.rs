//! `socket_connect`: TCP and UDP connects of agents to protected destinations.

use aya_ebpf::{macros::lsm, programs::LsmContext};

use crate::{
    net::{protected_destination, transport},
    verdict::{EPERM, agent_cgroup, decide},
};

#[lsm(hook = "socket_connect")]
pub fn socket_connect(ctx: LsmContext) -> i32 {
    // An earlier LSM program's denial stands.
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    let Some(agent_cgroup_id) = agent_cgroup() else {
        return 0;
    };
    let sock: *const u8 = ctx.arg(0);
    let address: *const u8 = ctx.arg(1);
    let target = unsafe {
        match transport(sock) {
            Ok(Some((protocol, bit))) => protected_destination(address, protocol, bit),
            Ok(None) => Ok(None),
            Err(error) => Err(error),
        }
    };
    match target {
        Ok(Some(target)) => decide(agent_cgroup_id, target, core::ptr::null()),
        Ok(None) => 0,
        // Unreadable connect of an agent: refuse rather than guess.
        Err(_) => -EPERM,
    }
}
