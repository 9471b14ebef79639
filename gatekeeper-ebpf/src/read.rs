//! Reading kernel structs at offsets the daemon found in the running kernel's BTF.

use aya_ebpf::{
    cty::c_void,
    helpers::{bpf_get_current_task_btf, bpf_loop, bpf_probe_read_kernel, bpf_task_pt_regs},
    macros::map,
    maps::{Array, HashMap},
};
use gatekeeper_common::btrfs;

use crate::offsets::{OFF_INODE_SB, OFF_PT_REGS_ORIG_AX, OFF_SB_DEV, OFF_SB_MAGIC};

/// Marks x32 system calls, whose numbers are otherwise the x86-64 ones.
pub const X32_SYSCALL_BIT: u64 = 0x4000_0000;

/// Where the pins live.
pub const BPF_FS_MAGIC: u64 = 0xcafe_4a11;
pub const CGROUP_SUPER_MAGIC: u64 = 0x0027_e0eb;
pub const PROC_SUPER_MAGIC: u64 = 0x9fa0;
pub const SYSFS_MAGIC: u64 = 0x6265_6572;
pub const BTRFS_SUPER_MAGIC: u64 = 0x9123_683e;

/// What a [`turns`] step answers: go on, or stop.
pub const TURN_AGAIN: i64 = 0;
pub const TURN_DONE: i64 = 1;

/// `value`, unknown to the verifier: copied through a helper, as [`untyped`] forgets a pointer's
/// type (a failed copy, which the verifier must allow for, keeps the value). A field a [`turns`] step branches
/// on must not start as a constant the verifier knows, since 6.1's may check the step from the
/// caller's state alone, as if it ran once: the branch the first turn never takes would be
/// neither checked nor kept.
#[inline(always)]
pub fn opaque<T: Copy>(value: T) -> T {
    unsafe { bpf_probe_read_kernel(&value) }.unwrap_or(value)
}

/// Runs `step(turn, state)` up to `turns` times, until it answers [`TURN_DONE`], through the
/// `bpf_loop` helper: the verifier checks a step once, not once per turn as it does a bounded
/// loop (64 turns of the mount and dentry walks were most of the programs' verification, paid
/// at every daemon start). `step` must be a plain function (`#[inline(never)]`, not
/// `no_mangle`). Err when the helper refused.
#[inline(always)]
pub fn turns<S>(
    turns: u32,
    step: extern "C" fn(u64, *mut c_void) -> i64,
    state: &mut S,
) -> Result<(), i32> {
    let ran = unsafe { bpf_loop(turns, step as *mut c_void, (state as *mut S).cast(), 0) };
    if ran < 0 { Err(ran as i32) } else { Ok(()) }
}

#[inline(always)]
fn offset(global: &'static u32) -> usize {
    // Volatile so the compiler does not fold the placeholder zero; the loader rewrites it.
    unsafe { core::ptr::read_volatile(global) as usize }
}

/// Reads the field at the offset held in `global` from the struct at `base`.
#[inline(always)]
pub unsafe fn read_field<T>(base: *const u8, global: &'static u32) -> Result<T, i32> {
    unsafe { bpf_probe_read_kernel(base.add(offset(global)).cast::<T>()) }
}

/// The byte offset held in `global`: to add for nested members (a field of an embedded struct),
/// or to subtract for `container_of`.
#[inline(always)]
pub fn field_offset(global: &'static u32) -> usize {
    offset(global)
}

/// The address `ptr` holds, as a plain number to the verifier: a global BPF function takes
/// kernel pointers only so, while a hook's own pointer arguments are typed (BTF) pointers to it.
/// Copied through the helper, the verifier forgets the type. Pointers read from memory
/// ([`read_field`]) are plain numbers already; a typed one handed to a global function is
/// refused at load.
#[inline(always)]
pub unsafe fn untyped(ptr: *const u8) -> Result<*const u8, i32> {
    unsafe { bpf_probe_read_kernel(&ptr) }
}

/// Reads a `T` at a fixed byte offset (for ABI structs such as `sockaddr_in`).
#[inline(always)]
pub unsafe fn read_at<T>(base: *const u8, offset: usize) -> Result<T, i32> {
    unsafe { bpf_probe_read_kernel(base.add(offset).cast::<T>()) }
}

#[inline(always)]
pub unsafe fn sb_magic(sb: *const u8) -> Result<u64, i32> {
    unsafe { read_field::<u64>(sb, &OFF_SB_MAGIC) }
}

/// The device number `stat` reports for `inode` (on superblock `sb`), by which the daemon keys
/// files: the superblock's, but on btrfs its subvolume's (see [`btrfs_subvolume_device`]).
#[inline(always)]
pub unsafe fn inode_device(inode: *const u8, sb: *const u8) -> Result<u32, i32> {
    unsafe {
        if on_btrfs(sb)? {
            btrfs_subvolume_device(inode)
        } else {
            read_field(sb, &OFF_SB_DEV)
        }
    }
}

/// Whether superblock `sb` is a btrfs whose inodes the programs can read: not until the daemon
/// wrote btrfs's offsets (btrfs was not in the kernel when it keyed the files it did, none of
/// them on btrfs: the superblock's device number serves).
#[inline(always)]
pub unsafe fn on_btrfs(sb: *const u8) -> Result<bool, i32> {
    if btrfs_slot(btrfs::INODE_VFS_INODE) == 0 {
        return Ok(false);
    }
    Ok(unsafe { sb_magic(sb)? } == BTRFS_SUPER_MAGIC)
}

/// Whether a directory rule is on the btrfs of superblock `sb` (see
/// [`gatekeeper_common::maps::BTRFS_RULE_DEVICES`]).
#[inline(always)]
pub unsafe fn btrfs_directory_rules(sb: *const u8) -> Result<bool, i32> {
    let device: u32 = unsafe { read_field(sb, &OFF_SB_DEV)? };
    Ok(BTRFS_RULE_DEVICES.get_ptr(device).is_some() || BTRFS_RULE_DEVICES.get_ptr(0).is_some())
}

/// Written by the daemon: see [`gatekeeper_common::maps::BTRFS_RULE_DEVICES`].
#[map]
static BTRFS_RULE_DEVICES: HashMap<u32, u32> =
    HashMap::with_max_entries(btrfs::MAX_RULE_DEVICES, 0);

#[inline(always)]
fn btrfs_slot(slot: u32) -> u32 {
    BTRFS.get(slot).copied().unwrap_or(0)
}

/// Written by the daemon: [`btrfs`]'s slots.
#[map]
static BTRFS: Array<u32> = Array::with_max_entries(btrfs::SLOTS, 0);

/// The device number of a btrfs `inode`'s subvolume, `BTRFS_I(inode)->root->anon_dev`: btrfs
/// numbers each subvolume's files itself, under one superblock.
#[inline(always)]
pub unsafe fn btrfs_subvolume_device(inode: *const u8) -> Result<u32, i32> {
    // A hook's own inode argument is a typed pointer, which a global function is not given.
    let device = gatekeeper_btrfs_subvolume_device(unsafe { untyped(inode)? } as u64);
    if device < 0 {
        Err(device as i32)
    } else {
        Ok(device as u32)
    }
}

/// [`btrfs_subvolume_device`] as a global BPF function, negative on failure: its reads stay out
/// of the frames of the many callers that key files (6.1 allows 512 bytes of stack to a chain
/// of calls, and `file_open`'s deepest had none to spare).
#[unsafe(no_mangle)]
#[inline(never)]
extern "C" fn gatekeeper_btrfs_subvolume_device(inode: u64) -> i64 {
    let offset = |slot| btrfs_slot(slot) as usize;
    let btrfs_inode = (inode as *const u8).wrapping_sub(offset(btrfs::INODE_VFS_INODE));
    let device = unsafe {
        bpf_probe_read_kernel(btrfs_inode.wrapping_add(offset(btrfs::INODE_ROOT)).cast()).and_then(
            |root: *const u8| {
                bpf_probe_read_kernel(
                    root.wrapping_add(offset(btrfs::ROOT_ANON_DEV))
                        .cast::<u32>(),
                )
            },
        )
    };
    match device {
        Ok(device) => i64::from(device),
        Err(error) => i64::from(error.min(-1)),
    }
}

/// The magic of the filesystem an inode lives on.
#[inline(always)]
pub unsafe fn inode_magic(inode: *const u8) -> Result<u64, i32> {
    unsafe { sb_magic(read_field(inode, &OFF_INODE_SB)?) }
}

/// The address of the member at the offset held in `global` inside the struct at `base` (for
/// reading a member of an embedded struct).
#[inline(always)]
pub fn member_ptr(base: *const u8, global: &'static u32) -> *const u8 {
    base.wrapping_add(offset(global))
}

/// The struct that embeds, at the offset held in `global`, the member at `member`
/// (the kernel's `container_of`).
#[inline(always)]
pub fn container_of(member: *const u8, global: &'static u32) -> *const u8 {
    member.wrapping_sub(offset(global))
}

/// The number of the system call the current task is in, in its caller's table (x86-64 or
/// 32-bit), without the x32 mark.
#[inline(always)]
pub fn current_syscall() -> Result<u64, i32> {
    Ok(current_register(&OFF_PT_REGS_ORIG_AX)? & !X32_SYSCALL_BIT)
}

/// The current task's user register at the `pt_regs` offset held in `global`, as its system
/// call found it: the call's number (`orig_ax`), or an argument.
#[inline(always)]
pub fn current_register(global: &'static u32) -> Result<u64, i32> {
    unsafe {
        let regs = bpf_task_pt_regs(bpf_get_current_task_btf()) as *const u8;
        read_field::<u64>(regs, global)
    }
}
