//! Gatekeeper's kernel side: deny protected actions of agent processes unless a single-use grant
//! allows them, and report both to the daemon. Policy lives in userspace; this only matches keys.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod argv;
#[cfg(target_arch = "bpf")]
mod capable;
#[cfg(target_arch = "bpf")]
mod connect;
#[cfg(target_arch = "bpf")]
mod defend;
#[cfg(target_arch = "bpf")]
mod env;
#[cfg(target_arch = "bpf")]
mod exec;
#[cfg(target_arch = "bpf")]
mod file_rules;
#[cfg(target_arch = "bpf")]
mod files;
#[cfg(target_arch = "bpf")]
mod floor;
#[cfg(target_arch = "bpf")]
mod keys;
#[cfg(target_arch = "bpf")]
mod mounts;
#[cfg(target_arch = "bpf")]
mod names;
#[cfg(target_arch = "bpf")]
mod net;
#[cfg(target_arch = "bpf")]
mod offsets;
#[cfg(target_arch = "bpf")]
mod procs;
#[cfg(target_arch = "bpf")]
mod read;
#[cfg(target_arch = "bpf")]
mod script;
#[cfg(target_arch = "bpf")]
mod sendmsg;
#[cfg(target_arch = "bpf")]
mod socket;
#[cfg(target_arch = "bpf")]
mod tunables;
#[cfg(target_arch = "bpf")]
mod unix;
#[cfg(target_arch = "bpf")]
mod verdict;

/// The kernel refuses LSM programs whose license is not GPL-compatible.
#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

// Built for the host only so that workspace-wide tools see a valid crate.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
