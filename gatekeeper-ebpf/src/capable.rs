//! `capable`: the capability checks that guard what passes no hook of its own.
//!
//! The host's network configuration (routes, addresses, links, firewall and NAT rules, traffic
//! control, tunnels): a NAT rule or route would send an agent's connection somewhere other than
//! the destination `socket_connect` judged, so agents get no CAP_NET_ADMIN in the initial user
//! namespace, which owns the host's network namespace (and every one made without a user
//! namespace of its own). In a user namespace of their own they configure their own network
//! namespace freely; its way out is through sockets of the host's, which the socket hooks judge.
//!
//! The ports below 1024 of the host's network are its services' (DNS, sshd): an agent that got
//! one while its service is down (or killed), or beside it (SO_REUSEADDR, SO_REUSEPORT), would
//! answer host programs and the daemon's own name lookups in the service's place. Agents get no
//! CAP_NET_BIND_SERVICE in the initial user namespace.
//!
//! Priority above the ordinary: without CAP_SYS_NICE in the initial user namespace an agent
//! sets no realtime or deadline policy and no nice value below the limits it was given (none,
//! by default), so it cannot spin above the daemon and leave it a sliver of each CPU. (Raising
//! those limits is refused in `task_setrlimit`.)
//!
//! Raw access to the hardware: I/O ports (`ioperm`, `iopl`), which reach every device's
//! registers (a DMA engine told to write the kernel's memory, PCI configuration space, the
//! real-time clock), model-specific registers (`/dev/cpu/*/msr`). Agents get no CAP_SYS_RAWIO,
//! which only the initial user namespace grants; the kernel's memory and block devices are
//! refused to them at the open already (`kernel_memory`). (SCSI reads and writes through a
//! SCSI generic device need no CAP_SYS_RAWIO: such devices are refused at the open,
//! `raw_device`.)
//!
//! The system clock, which the journal's times, pending requests' expiry, certificates'
//! validity and the host's schedules read: agents get no CAP_SYS_TIME (which only the initial
//! user namespace grants; a time namespace offsets only the monotonic and boot clocks).
//!
//! Processes outside the agent's subtree, through perf: CAP_PERFMON (or CAP_SYS_ADMIN, which
//! the kernel takes for it) lets a perf event on another process past the ptrace check that
//! `ptrace_access_check` judges, and its samples hold that process's registers and user stack.
//! Agents get neither for perf_event_open (see `procs::perf_event_open` for whole CPUs).
//!
//! The host's power and the kernel it runs: agents get no CAP_SYS_BOOT in the initial user
//! namespace (no `reboot`, halt or power-off, no `kexec_load`), which would stop every process,
//! the daemon's too. In a PID namespace of their own, `reboot` only ends that namespace. Nor
//! CAP_WAKE_ALARM: no timer that wakes the host from suspend, as a real-time clock's alarm
//! would (refused in `file_ioctl`).
//!
//! The host's audit trail, a record like the kernel's log (where the kernel prints what it
//! receives when no audit daemon runs): agents write no message into it (CAP_AUDIT_WRITE: an
//! AVC message's text chosen by the agent, newlines and all), change or stop it
//! (CAP_AUDIT_CONTROL), or read it as it is written (CAP_AUDIT_READ).
//!
//! The host's terminals: vhangup(2) hangs up the caller's controlling terminal on
//! CAP_SYS_TTY_CONFIG alone, refused to an agent whose controlling terminal is a host console
//! or serial port (one agents may not open; its ioctls are refused in `file_ioctl`). On its own
//! terminals (pseudo-terminals, as `agetty` in a container) an agent hangs up what it likes.
//! (The virtual consoles' ioctls ask it too, of any caller on a console not its own: those that
//! change something are refused in `file_ioctl`, the rest only ask.)
//!
//! The kernel's modules: agents load and unload none (CAP_SYS_MODULE, which only the initial
//! user namespace grants and `init_module`, `finit_module` and `delete_module` ask before
//! anything else): a packet filter, driver or file system the host loaded would go once unused.
//! (The module's read or load is refused too, `kernel_read_file` and `kernel_load_data`, a
//! second line.) The kernel also asks it before loading a module for a name (a network
//! interface's, a line discipline's): refused quietly there, since agents' module requests are
//! refused anyway (`kernel_module_request`), and no module was the agent's to load.
//!
//! `mount_setattr(2)`, which changes a mount's flags and propagation, has no LSM hook; its first
//! step is the CAP_SYS_ADMIN check of `may_mount()`, which is refused here when the system call
//! is mount_setattr and the caller is in the host's mount namespace.

use aya_ebpf::{macros::lsm, programs::LsmContext};
use gatekeeper_common::{MountRefusal, TamperHook};

use aya_ebpf::helpers::bpf_get_current_task;

use crate::{
    files::{is_raw_device, terminal_device},
    mounts::caller_in_host_namespace,
    offsets::{OFF_SIGNAL_TTY, OFF_TASK_SIGNAL, OFF_USER_NS_LEVEL},
    read::{current_syscall, read_field},
    verdict::{EPERM, agent_cgroup, tamper},
};

const CAP_NET_BIND_SERVICE: i32 = 10;
const CAP_NET_ADMIN: i32 = 12;
const CAP_SYS_MODULE: i32 = 16;
const CAP_SYS_ADMIN: i32 = 21;
const CAP_SYS_BOOT: i32 = 22;
const CAP_SYS_NICE: i32 = 23;
const CAP_SYS_RAWIO: i32 = 17;
const CAP_SYS_TIME: i32 = 25;
const CAP_SYS_TTY_CONFIG: i32 = 26;
const CAP_AUDIT_WRITE: i32 = 29;
const CAP_AUDIT_CONTROL: i32 = 30;
const CAP_WAKE_ALARM: i32 = 35;
const CAP_AUDIT_READ: i32 = 37;
const CAP_PERFMON: i32 = 38;
/// A check that only probes (`ns_capable_noaudit`): refused quietly, it is no attempt.
const CAP_OPT_NOAUDIT: u32 = 1 << 1;
/// mount_setattr in the x86-64 and the 32-bit system call tables alike.
const NR_MOUNT_SETATTR: u64 = 442;
/// vhangup in the x86-64 and the 32-bit system call tables (the other table's number is no
/// system call that checks CAP_SYS_TTY_CONFIG: 153 is munlockall on 32-bit, 111 getpgrp on
/// x86-64).
const NR_VHANGUP: [u64; 2] = [153, 111];

/// init_module, delete_module and finit_module in the x86-64 table (175, 176, 313) and the
/// 32-bit one (128, 129, 350). (The other table's numbers only decide whether the refusal is
/// journaled: it is refused either way.)
const NR_MODULE_CALLS: [u64; 6] = [175, 176, 313, 128, 129, 350];

/// perf_event_open in the x86-64 and the 32-bit system call tables. (The other table's number
/// is no system call that checks CAP_SYS_ADMIN: 336 is none on x86-64, 298 fchownat on 32-bit.)
const NR_PERF_EVENT_OPEN: [u64; 2] = [298, 336];

#[lsm(hook = "capable")]
pub fn capable(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(4);
    if previous != 0 {
        return previous;
    }
    // The capability first: every other check on the host costs one comparison.
    let capability: i32 = ctx.arg(2);
    let hook = match capability {
        CAP_NET_BIND_SERVICE => TamperHook::HostPort,
        CAP_NET_ADMIN => TamperHook::NetAdmin,
        CAP_SYS_NICE => TamperHook::Priority,
        CAP_SYS_ADMIN => TamperHook::MountSetattr,
        CAP_SYS_TIME => TamperHook::Clock,
        CAP_SYS_RAWIO => TamperHook::KernelMemory,
        CAP_SYS_BOOT | CAP_WAKE_ALARM => TamperHook::Reboot,
        CAP_PERFMON => TamperHook::Perf,
        CAP_AUDIT_WRITE | CAP_AUDIT_CONTROL | CAP_AUDIT_READ => TamperHook::Audit,
        CAP_SYS_TTY_CONFIG => TamperHook::DeviceControl,
        CAP_SYS_MODULE => TamperHook::KernelModule,
        _ => return 0,
    };
    let Some(agent) = agent_cgroup() else {
        return 0;
    };
    if capability == CAP_SYS_ADMIN {
        return sys_admin(agent);
    }
    if capability == CAP_SYS_TTY_CONFIG {
        return tty_config(agent);
    }
    if capability == CAP_SYS_MODULE {
        return sys_module(agent);
    }
    let namespace: *const u8 = ctx.arg(1);
    match unsafe { read_field::<u32>(namespace, &OFF_USER_NS_LEVEL) } {
        // A user namespace below the initial one: the agent's own.
        Ok(level) if level > 0 => 0,
        _ => {
            let options: u32 = ctx.arg(3);
            if options & CAP_OPT_NOAUDIT != 0 {
                return -EPERM;
            }
            tamper(agent, hook, [capability as u64, 0])
        }
    }
}

/// The verdict on an agent's CAP_SYS_ADMIN check: refused if it is perf_event_open's (which
/// takes it for CAP_PERFMON) or mount_setattr's in the host's mount namespace.
#[inline(always)]
fn sys_admin(agent: u64) -> i32 {
    match current_syscall() {
        Ok(number) if NR_PERF_EVENT_OPEN.contains(&number) => {
            tamper(agent, TamperHook::Perf, [CAP_SYS_ADMIN as u64, 0])
        }
        Ok(number) if number != NR_MOUNT_SETATTR => 0,
        Ok(_) if !caller_in_host_namespace() => 0,
        Ok(_) => tamper(
            agent,
            TamperHook::MountSetattr,
            [0, MountRefusal::HostNamespace as u64],
        ),
        // Unreadable registers: any CAP_SYS_ADMIN check of an agent could be this one.
        Err(_) => -EPERM,
    }
}

/// The verdict on an agent's CAP_SYS_MODULE check: refused, journaled in the module system
/// calls, quiet elsewhere (see the module's comment).
#[inline(always)]
fn sys_module(agent: u64) -> i32 {
    match current_syscall() {
        Ok(number) if NR_MODULE_CALLS.contains(&number) => {
            tamper(agent, TamperHook::KernelModule, [CAP_SYS_MODULE as u64, 0])
        }
        _ => -EPERM,
    }
}

/// The verdict on an agent's CAP_SYS_TTY_CONFIG check: refused in vhangup(2) if its
/// controlling terminal is a host's terminal (or unreadable), which it would hang up.
#[inline(always)]
fn tty_config(agent: u64) -> i32 {
    match current_syscall() {
        Ok(number) if !NR_VHANGUP.contains(&number) => return 0,
        _ => {}
    }
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let terminal = unsafe {
        read_field::<*const u8>(task, &OFF_TASK_SIGNAL)
            .and_then(|signal| read_field::<*const u8>(signal, &OFF_SIGNAL_TTY))
    };
    let hosts = match terminal {
        Ok(tty) if tty.is_null() => false,
        Ok(tty) => !matches!(
            unsafe { terminal_device(tty) },
            Ok(device) if !is_raw_device(device)
        ),
        Err(_) => true,
    };
    if hosts {
        return tamper(
            agent,
            TamperHook::DeviceControl,
            [CAP_SYS_TTY_CONFIG as u64, 0],
        );
    }
    0
}
