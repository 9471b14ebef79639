//! What the network hooks share: the destination of a socket operation and whether it is
//! protected.

use aya_ebpf::{
    macros::map,
    maps::lpm_trie::{Key, LpmTrie},
};
use gatekeeper_common::{
    IPPROTO_TCP, IPPROTO_UDP, MAX_PROTECTED_NETS, PROTOCOL_DAEMON, PROTOCOL_TCP, PROTOCOL_UDP,
    PortRanges, TamperHook, Target,
};

use crate::{
    offsets::{OFF_SOCK_PROTOCOL, OFF_SOCKET_SK},
    read::{read_at, read_field},
    verdict::tamper_target,
};

#[map]
static PROTECTED_NETS: LpmTrie<[u8; 16], PortRanges> = LpmTrie::pinned(MAX_PROTECTED_NETS, 0);

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_UDPLITE: u16 = 136;
const IPPROTO_MPTCP: u16 = 262;

/// The socket's transport as (IPPROTO_*, PROTOCOL_* bit); None for transports not guarded.
#[inline(always)]
pub unsafe fn transport(sock: *const u8) -> Result<Option<(u8, u32)>, i32> {
    let sk: *const u8 = unsafe { read_field(sock, &OFF_SOCKET_SK)? };
    let protocol: u16 = unsafe { read_field(sk, &OFF_SOCK_PROTOCOL)? };
    Ok(match protocol {
        // MPTCP is TCP to the destination: a TCP rule must cover it.
        p if p == IPPROTO_TCP as u16 || p == IPPROTO_MPTCP => Some((IPPROTO_TCP, PROTOCOL_TCP)),
        p if p == IPPROTO_UDP as u16 || p == IPPROTO_UDPLITE => Some((IPPROTO_UDP, PROTOCOL_UDP)),
        _ => None,
    })
}

/// The protected destination `address` (a kernel `sockaddr`) names, if any; the daemon's HTTP
/// listener as a tamper target. IPv4 is looked up in
/// its IPv4-mapped IPv6 form, so a v4 rule also holds for a v6 socket given `::ffff:a.b.c.d`.
#[inline(always)]
pub unsafe fn protected_destination(
    address: *const u8,
    protocol: u8,
    protocol_bit: u32,
) -> Result<Option<Target>, i32> {
    let family: u16 = unsafe { read_at(address, 0)? };
    let port = u16::from_be(unsafe { read_at::<u16>(address, 2)? });
    let mut ip = [0u8; 16];
    match family {
        AF_INET => {
            let v4: [u8; 4] = unsafe { read_at(address, 4)? };
            ip[10] = 0xff;
            ip[11] = 0xff;
            ip[12..].copy_from_slice(&v4);
        }
        // sin6_addr follows sin6_family, sin6_port and sin6_flowinfo.
        AF_INET6 => ip = unsafe { read_at(address, 8)? },
        _ => return Ok(None),
    }
    // The kernel sends 0.0.0.0 and :: to a local address (loopback, or the socket's bound
    // one): no rule could name where that lands, so agents do not go there at all.
    let high = u64::from_be_bytes([ip[0], ip[1], ip[2], ip[3], ip[4], ip[5], ip[6], ip[7]]);
    let low = u64::from_be_bytes([ip[8], ip[9], ip[10], ip[11], ip[12], ip[13], ip[14], ip[15]]);
    if high == 0 && (low == 0 || low == 0x0000_ffff_0000_0000) {
        return Ok(Some(tamper_target(
            TamperHook::UnspecifiedDestination,
            [port as u64, protocol as u64],
        )));
    }
    let Some(ranges) = PROTECTED_NETS.get(Key::new(128, ip)) else {
        return Ok(None);
    };
    if protocol_bit == PROTOCOL_TCP && ranges.covers(port, PROTOCOL_DAEMON) {
        return Ok(Some(tamper_target(
            TamperHook::DaemonListener,
            [port as u64, 0],
        )));
    }
    if !ranges.covers(port, protocol_bit) {
        return Ok(None);
    }
    Ok(Some(Target::connect(ip, port, protocol)))
}
