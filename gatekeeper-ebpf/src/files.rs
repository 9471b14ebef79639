//! Files: protected code is read only through an approved exec, and agents change neither
//! protected nor allowlisted files, nor the files the daemon relies on, nor the pins: not by
//! writing, truncating, renaming, unlinking or linking, nor through modes, owners, extended
//! attributes or inode flags. The files of `[[protect.file]]` are opened for the access their
//! rule protects only with a grant, and changed otherwise not at all ([`crate::file_rules`]).
//!
//! `file_open` sees every open on the host; for everyone but agents it only reads two fields
//! and, in allowlist mode, takes a file opened for writing off the allowlist.

use aya_ebpf::{
    EbpfContext as _, helpers::bpf_get_current_task, macros::lsm, macros::map, maps::HashMap,
    programs::LsmContext,
};
use gatekeeper_common::{
    ALL_MINORS, MAX_DAEMON_FILES, MAX_RAW_DEVICES, MountRefusal, TamperHook, Target, daemon_file,
    file_access, file_rule, raw_device,
};

use crate::{
    exec::{exec_target, inode_target, runs_protected},
    file_rules::{
        alias_of, below_unguarded_mount, inherit_rule, moves_with_read_tree, on_unguarded_mount,
        placement,
    },
    mounts::{count_rename, is_held_directory, is_mount_point, moves_host_mounts, revealed_above},
    names::{gatekeeper_below_guarded_name, guard_name_at},
    offsets::{
        OFF_DENTRY_INODE, OFF_DENTRY_NAME, OFF_DENTRY_PARENT, OFF_FILE_FLAGS, OFF_FILE_INODE,
        OFF_FILE_MODE, OFF_FILE_PATH, OFF_FILE_PRIVATE_DATA, OFF_IATTR_VALID, OFF_INODE_MODE,
        OFF_INODE_RDEV, OFF_INODE_SB, OFF_PATH_DENTRY, OFF_PATH_MNT, OFF_QSTR_NAME, OFF_TASK_CRED,
        OFF_TASK_FLAGS, OFF_TASK_REAL_CRED, OFF_TTY_DRIVER, OFF_TTY_DRIVER_MAJOR,
        OFF_TTY_DRIVER_MINOR_START, OFF_TTY_FILE_PRIVATE_TTY, OFF_TTY_INDEX, OFF_VFSMOUNT_SB,
    },
    read::{
        BPF_FS_MAGIC, PROC_SUPER_MAGIC, SYSFS_MAGIC, current_syscall, inode_magic, member_ptr,
        read_at, read_field, untyped,
    },
    script::{note_open_before_read, take_script_read},
    verdict::{
        EPERM, agent_caller, agent_cgroup, allowlist_mode, decide, forget_allowlisted,
        inherit_protected, is_allowlisted, is_protected, tamper,
    },
};

#[map]
static DAEMON_FILES: HashMap<Target, u32> = HashMap::pinned(MAX_DAEMON_FILES, 0);

/// The character devices agents may not open, by number or by major (the daemon's list).
#[map]
static RAW_DEVICES: HashMap<u32, u32> = HashMap::pinned(MAX_RAW_DEVICES, 0);

/// The index of `inode_setattr`'s dentry argument on the running kernel
/// ([`gatekeeper_common::hook_args::INODE_SETATTR_DENTRY`]), written by the daemon.
#[unsafe(no_mangle)]
static ARG_INODE_SETATTR_DENTRY: u32 = 0;

const FMODE_READ: u32 = 0x1;
const FMODE_WRITE: u32 = 0x2;
/// `f_flags` bits: an exec's own open, and truncation on open (which needs no write mode).
const FMODE_EXEC_FLAG: u32 = 0x20;
const O_TRUNC: u32 = 0o1000;
pub const S_IFMT: u16 = 0o170_000;
const S_IFBLK: u16 = 0o060_000;
const S_IFCHR: u16 = 0o020_000;
pub const S_IFDIR: u16 = 0o040_000;
/// /dev/mem, /dev/kmem and /dev/port in the kernel's `dev_t` encoding (major << 20 | minor).
const MEMORY_DEVICES: [u32; 3] = [1 << 20 | 1, 1 << 20 | 2, 1 << 20 | 4];
/// /dev/kmsg: what is written there joins the kernel's log as the kernel's own lines would.
const KMSG_DEVICE: u32 = 1 << 20 | 11;
const PROC_ROOT_INO: u64 = 1;
/// ioctls that change a file through a read-only open: inode flags (`chattr +i`, `+a`), the
/// same flags through fsxattr, and fs-verity, which makes the file read-only for good.
const FS_IOC_SETFLAGS: u32 = 0x4008_6602;
/// Pushes a byte into a terminal's input, as if typed (TIOCLINUX's subcommand 2 pastes the
/// selection): both make the terminal's reader run what an agent chose.
const TIOCSTI: u32 = 0x5412;
const TIOCLINUX: u32 = 0x541c;
/// ioctls that reconfigure a host device and need no capability agents lack (see
/// [`TamperHook::DeviceControl`]): the virtual consoles' keyboard (mode, keymap, key strings,
/// accents, keycodes, meta, the signal a key sends), display (text or graphics, fonts, screen
/// and colour maps), switching (mode, activate, lock, resize, deallocate), where console
/// messages go (TIOCCONS), a serial port's settings and autoconfiguration, RS-485 mode, a
/// real-time clock's alarms and parameters; a whole file system frozen, thawed, shut down,
/// relabelled (which fstab may mount it by), resized or given devices; btrfs subvolumes,
/// trees and quotas; xfs's calls by file handle; file encryption policies and keys. Refused to
/// agents whatever the file. A `match`, which the compiler makes a search of a few
/// comparisons: every ioctl on the host is looked up here before the agent check.
#[inline(always)]
fn is_device_control(cmd: u32) -> bool {
    matches!(
        cmd,
        0x4b3a // KDSETMODE
        | 0x4b41 // PIO_SCRNMAP
        | 0x4b45 // KDSKBMODE
        | 0x4b47 // KDSKBENT
        | 0x4b49 // KDSKBSENT
        | 0x4b4b // KDSKBDIACR
        | 0x4b4d // KDSETKEYCODE
        | 0x4b4e // KDSIGACCEPT
        | 0x4b61 // PIO_FONT
        | 0x4b63 // KDSKBMETA
        | 0x4b67 // PIO_UNIMAP
        | 0x4b68 // PIO_UNIMAPCLR
        | 0x4b6a // PIO_UNISCRNMAP
        | 0x4b6c // PIO_FONTX
        | 0x4b71 // PIO_CMAP
        | 0x4b72 // KDFONTOP
        | 0x4bfb // KDSKBDIACRUC
        | 0x4b34 // KDADDIO
        | 0x4b36 // KDENABIO
        | 0x4b2f // KIOCSOUND: the console's speaker
        | 0x4b30 // KDMKTONE
        | 0x4b32 // KDSETLED: the keyboard's LEDs
        | 0x4b52 // KDKBDREP: the keyboard's repeat rate
        | 0x4b65 // KDSKBLED: the keyboard's default LEDs
        | 0x5602 // VT_SETMODE
        | 0x5605 // VT_RELDISP
        | 0x5606 // VT_ACTIVATE
        | 0x5608 // VT_DISALLOCATE
        | 0x5609 // VT_RESIZE
        | 0x560a // VT_RESIZEX
        | 0x560b // VT_LOCKSWITCH
        | 0x560c // VT_UNLOCKSWITCH
        | 0x560f // VT_SETACTIVATE
        | 0x541d // TIOCCONS
        | 0x541f // TIOCSSERIAL
        | 0x5453 // TIOCSERCONFIG
        | 0x542f // TIOCSRS485
        | 0x5457 // TIOCSLCKTRMIOS: a terminal's settings locked
        | 0x4024_7007 // RTC_ALM_SET
        | 0x4028_700f // RTC_WKALM_SET
        | 0x4018_7014 // RTC_PARAM_SET
        | 0xc004_5877 // FIFREEZE
        | 0xc004_5878 // FITHAW
        | 0x8004_587d // FS_IOC_SHUTDOWN (ext4, xfs, f2fs)
        | 0x4100_9432 // FS_IOC_SETFSLABEL
        // A whole file system grown, given devices or a new identity (ext4, xfs, btrfs, also
        // the 32-bit forms): CAP_SYS_RESOURCE or CAP_SYS_ADMIN, which root agents hold.
        | 0x4008_6607 // EXT4_IOC_GROUP_EXTEND
        | 0x4004_6607 // EXT4_IOC32_GROUP_EXTEND
        | 0x4028_6608 // EXT4_IOC_GROUP_ADD
        | 0x4024_6608 // EXT4_IOC32_GROUP_ADD
        | 0x4008_6610 // EXT4_IOC_RESIZE_FS
        | 0x6611 // EXT4_IOC_SWAP_BOOT
        | 0x4008_662c // EXT4_IOC_SETFSUUID
        | 0x4010_586e // XFS_IOC_FSGROWFSDATA
        | 0x400c_586e // XFS_IOC_FSGROWFSDATA, 32-bit
        | 0x4008_586f // XFS_IOC_FSGROWFSLOG
        | 0x4010_5870 // XFS_IOC_FSGROWFSRT
        | 0x400c_5870 // XFS_IOC_FSGROWFSRT, 32-bit
        | 0xc010_5872 // XFS_IOC_SET_RESBLKS
        | 0x4008_f510 // F2FS_IOC_RESIZE_FS
        | 0x5000_9403 // BTRFS_IOC_RESIZE
        | 0x5000_940a // BTRFS_IOC_ADD_DEV
        | 0x5000_940b // BTRFS_IOC_RM_DEV
        | 0x5000_943a // BTRFS_IOC_RM_DEV_V2
        | 0x4008_9413 // BTRFS_IOC_DEFAULT_SUBVOL: what the host mounts next
        | 0x4030_9439 // BTRFS_IOC_SET_FEATURES
        | 0xc400_9420 // BTRFS_IOC_BALANCE_V2
        | 0x5000_940c // BTRFS_IOC_BALANCE
        | 0x4004_9421 // BTRFS_IOC_BALANCE_CTL
        | 0xca28_9435 // BTRFS_IOC_DEV_REPLACE
        | 0xc400_941b // BTRFS_IOC_SCRUB
        | 0x941c // BTRFS_IOC_SCRUB_CANCEL
        // btrfs subvolumes: a snapshot copies every file of one past the checks of opening
        // them, to names no rule has; creating, deleting or making one read-only passes no
        // mkdir, rmdir or attribute hook; a tree search returns files' inline data and a send
        // stream their contents; quotas limit the host's space.
        | 0x5000_9401 // BTRFS_IOC_SNAP_CREATE
        | 0x5000_9417 // BTRFS_IOC_SNAP_CREATE_V2
        | 0x5000_940e // BTRFS_IOC_SUBVOL_CREATE
        | 0x5000_9418 // BTRFS_IOC_SUBVOL_CREATE_V2
        | 0x5000_940f // BTRFS_IOC_SNAP_DESTROY
        | 0x5000_943f // BTRFS_IOC_SNAP_DESTROY_V2
        | 0x4008_941a // BTRFS_IOC_SUBVOL_SETFLAGS
        | 0xc0c8_9425 // BTRFS_IOC_SET_RECEIVED_SUBVOL
        | 0xc0c0_9425 // BTRFS_IOC_SET_RECEIVED_SUBVOL, 32-bit
        | 0xd000_9411 // BTRFS_IOC_TREE_SEARCH
        | 0xc070_9411 // BTRFS_IOC_TREE_SEARCH_V2
        | 0x4048_9426 // BTRFS_IOC_SEND
        | 0x4044_9426 // BTRFS_IOC_SEND, 32-bit
        | 0xc010_9428 // BTRFS_IOC_QUOTA_CTL
        | 0x4018_9429 // BTRFS_IOC_QGROUP_ASSIGN
        | 0x4010_942a // BTRFS_IOC_QGROUP_CREATE
        | 0x8030_942b // BTRFS_IOC_QGROUP_LIMIT
        | 0x4040_942c // BTRFS_IOC_QUOTA_RESCAN
        // Any inode of an xfs by its handle, as open_by_handle_at(2) (refused in `file_open`):
        // opened past the names on its paths, its link read, its extended attributes (ACLs and
        // security ones among them) listed or set with no xattr hook on the way.
        | 0xc038_586b // XFS_IOC_OPEN_BY_HANDLE
        | 0xc01c_586b // XFS_IOC_OPEN_BY_HANDLE, 32-bit
        | 0xc038_586c // XFS_IOC_READLINK_BY_HANDLE
        | 0xc01c_586c // XFS_IOC_READLINK_BY_HANDLE, 32-bit
        | 0x4058_587a // XFS_IOC_ATTRLIST_BY_HANDLE
        | 0x4038_587a // XFS_IOC_ATTRLIST_BY_HANDLE, 32-bit
        | 0x4048_587b // XFS_IOC_ATTRMULTI_BY_HANDLE
        | 0x4024_587b // XFS_IOC_ATTRMULTI_BY_HANDLE, 32-bit
        // File encryption (ext4, f2fs): an encryption policy set on an empty directory of the
        // host's (the host's later files there in the agent's key, no xattr hook on the way),
        // or a key removed from the host's users (their encrypted files locked).
        | 0x800c_6613 // FS_IOC_SET_ENCRYPTION_POLICY
        | 0xc040_6618 // FS_IOC_REMOVE_ENCRYPTION_KEY
        | 0xc040_6619 // FS_IOC_REMOVE_ENCRYPTION_KEY_ALL_USERS
    )
}

/// The type of the terminal ioctls (`TCGETS` 0x5401 ... and `_IOC('T', ...)`), whose commands
/// hold it in their second byte.
const TERMINAL_IOCTL_TYPE: u32 = 0x54;

/// Terminal ioctls that only ask, or that change the calling process's own descriptor: all an
/// agent may do with a host terminal it was handed (a console or serial port, which it may not
/// open itself). Everything else there (settings, line discipline, hangup, controlling
/// terminal, break, flush, modem lines, exclusive use) would act on the host's terminal.
#[inline(always)]
fn is_terminal_query(cmd: u32) -> bool {
    matches!(
        cmd,
        0x5401 // TCGETS
        | 0x5405 // TCGETA
        | 0x540f // TIOCGPGRP
        | 0x5411 // TIOCOUTQ
        | 0x5413 // TIOCGWINSZ
        | 0x5415 // TIOCMGET
        | 0x5419 // TIOCGSOFTCAR
        | 0x541b // FIONREAD
        | 0x541e // TIOCGSERIAL
        | 0x5421 // FIONBIO
        | 0x5424 // TIOCGETD
        | 0x5429 // TIOCGSID
        | 0x542e // TIOCGRS485
        | 0x5450 // FIONCLEX
        | 0x5451 // FIOCLEX
        | 0x5452 // FIOASYNC
        | 0x5456 // TIOCGLCKTRMIOS
        | 0x5459 // TIOCSERGETLSR
        | 0x545d // TIOCGICOUNT
        | 0x5460 // FIOQSIZE
        | 0x802c_542a // TCGETS2
        | 0x8004_5432 // TIOCGDEV
        | 0x8004_5440 // TIOCGEXCL
    )
}

const FS_IOC32_SETFLAGS: u32 = 0x4004_6602;
const FS_IOC_FSSETXATTR: u32 = 0x401c_5820;
const FS_IOC_ENABLE_VERITY: u32 = 0x4080_6685;
/// `iattr.ia_valid`: the change comes through an open file.
const ATTR_FILE: u32 = 1 << 13;
/// `task_struct.flags` while the task writes its core dump.
const PF_DUMPCORE: u32 = 0x200;
/// open_by_handle_at in the x86-64 and the 32-bit system call tables.
const NR_OPEN_BY_HANDLE_AT: [u64; 2] = [304, 342];

/// What an open asks for.
struct Access {
    reads: bool,
    writes: bool,
    exec: bool,
}

#[inline(always)]
unsafe fn access_of(file: *const u8) -> Result<Access, i32> {
    unsafe {
        let mode: u32 = read_field(file, &OFF_FILE_MODE)?;
        let flags: u32 = read_field(file, &OFF_FILE_FLAGS)?;
        Ok(Access {
            reads: mode & FMODE_READ != 0,
            writes: mode & FMODE_WRITE != 0 || flags & O_TRUNC != 0,
            exec: flags & FMODE_EXEC_FLAG != 0,
        })
    }
}

#[inline(always)]
pub fn daemon_file_bits(target: &Target) -> u32 {
    DAEMON_FILES
        .get_ptr(target)
        .map_or(0, |bits| unsafe { *bits })
}

/// Whether agents may not change the file: protected, allowlisted, or the daemon's.
#[inline(always)]
fn unchangeable(target: &Target) -> Option<TamperHook> {
    if daemon_file_bits(target) != 0 {
        Some(TamperHook::DaemonFile)
    } else if is_protected(target) || is_allowlisted(target) {
        Some(TamperHook::ProtectedChange)
    } else {
        None
    }
}

/// Whether the file is opened by a stacking filesystem (overlayfs) below its own, on the
/// caller's behalf: with the mounter's credentials put over the caller's, or (6.1) carrying the
/// stacked path, on another superblock than its inode. 6.12's backing files carry the real path,
/// so the credentials tell. Its exec would carry the stacked file, whose inode is not the
/// protected one.
#[inline(always)]
unsafe fn is_stacked(file: *const u8) -> Result<bool, i32> {
    unsafe {
        let task = bpf_get_current_task() as *const u8;
        let effective: *const u8 = read_field(task, &OFF_TASK_CRED)?;
        let real: *const u8 = read_field(task, &OFF_TASK_REAL_CRED)?;
        if effective != real {
            return Ok(true);
        }
        let path = member_ptr(file, &OFF_FILE_PATH);
        let mnt: *const u8 = read_field(path, &OFF_PATH_MNT)?;
        let path_sb: *const u8 = read_field(mnt, &OFF_VFSMOUNT_SB)?;
        let inode: *const u8 = read_field(file, &OFF_FILE_INODE)?;
        let inode_sb: *const u8 = read_field(inode, &OFF_INODE_SB)?;
        Ok(path_sb != inode_sb)
    }
}

#[lsm(hook = "file_open")]
pub fn file_open(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(1);
    if previous != 0 {
        return previous;
    }
    let file: *const u8 = ctx.arg(0);
    let Some(agent) = agent_cgroup() else {
        // A trusted writer takes a file off the allowlist: changed in place, it may no longer
        // be what was allowed. (Agents may not write it at all.) Outside allowlist mode a
        // non-agent's open costs the agent check alone.
        if allowlist_mode()
            && let Ok(access) = unsafe { access_of(file) }
            && access.writes
            && let Ok(target) = unsafe { exec_target(file) }
        {
            forget_allowlisted(&target);
        }
        return 0;
    };
    match unsafe { agent_open(agent, file) } {
        Ok(verdict) => verdict,
        // Unreadable open of an agent: refuse rather than guess.
        Err(_) => -EPERM,
    }
}

#[inline(always)]
unsafe fn agent_open(agent: u64, file: *const u8) -> Result<i32, i32> {
    let access = unsafe { access_of(file)? };
    let inode: *const u8 = unsafe { read_field(file, &OFF_FILE_INODE)? };
    let target = unsafe { inode_target(inode)? };
    if matches!(current_syscall(), Ok(number) if NR_OPEN_BY_HANDLE_AT.contains(&number)) {
        return Ok(tamper(agent, TamperHook::OpenByHandle, target.data));
    }
    let bits = daemon_file_bits(&target);
    if bits & (daemon_file::SECRET | daemon_file::BINARY) != 0 {
        let exec_of_binary = bits & daemon_file::BINARY != 0 && access.exec && !access.writes;
        if !exec_of_binary {
            return Ok(tamper(agent, TamperHook::DaemonFile, target.data));
        }
    }
    let mode: u16 = unsafe { read_field(inode, &OFF_INODE_MODE)? };
    if mode & S_IFMT == S_IFBLK {
        return Ok(tamper(agent, TamperHook::BlockDevice, target.data));
    }
    if mode & S_IFMT == S_IFCHR {
        let rdev: u32 = unsafe { read_field(inode, &OFF_INODE_RDEV)? };
        if MEMORY_DEVICES.contains(&rdev) {
            return Ok(tamper(agent, TamperHook::KernelMemory, target.data));
        }
        if is_raw_device(rdev) {
            return Ok(tamper(agent, TamperHook::RawDevice, target.data));
        }
        if rdev == KMSG_DEVICE && access.writes {
            return Ok(tamper(agent, TamperHook::KernelLog, target.data));
        }
    }
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let flags: u32 = unsafe { read_field(task, &OFF_TASK_FLAGS)? };
    if flags & PF_DUMPCORE != 0 && unsafe { runs_protected(task) } {
        return Ok(tamper(agent, TamperHook::ProtectedCore, target.data));
    }
    let magic = unsafe { inode_magic(inode)? };
    if magic == PROC_SUPER_MAGIC && unsafe { is_kcore(file)? } {
        return Ok(tamper(agent, TamperHook::KernelMemory, target.data));
    }
    if magic == BPF_FS_MAGIC {
        return Ok(tamper(
            agent,
            TamperHook::PinOpen,
            [access.writes as u64, 0],
        ));
    }
    if access.writes && (is_protected(&target) || is_allowlisted(&target)) {
        return Ok(tamper(agent, TamperHook::ProtectedChange, target.data));
    }
    if !is_protected(&target) {
        let kind = mode & S_IFMT;
        if kind != S_IFDIR && kind != S_IFCHR && magic != PROC_SUPER_MAGIC && magic != SYSFS_MAGIC {
            // Before an approved script's interpreter read it: a file, FIFO or pipe of the
            // agent's here means the interpreter was handed something else.
            unsafe { note_open_before_read(opened_dentry(file, inode)?) };
        }
        return unsafe { judge_rule_open(agent, file, inode, &target, mode, &access) };
    }
    if unsafe { is_stacked(file)? } {
        return Ok(tamper(agent, TamperHook::StackedOpen, target.data));
    }
    if access.exec {
        // The exec's own open: bprm_check_security decides the exec.
        return Ok(0);
    }
    let [dev, ino] = target.data;
    let read = Target::file(dev as u32, ino, file_access::READ);
    if take_script_read(&read) {
        return Ok(0);
    }
    Ok(decide(agent, read, core::ptr::null()))
}

/// /dev/tty: the caller's controlling terminal, whatever device that is.
const CONTROLLING_TTY_DEVICE: u32 = 5 << 20;

/// Whether `file` is a character device agents may not open (a host terminal it was handed),
/// or /dev/tty opened on one (an agent started from a host console has it as its controlling
/// terminal).
#[inline(always)]
unsafe fn on_raw_device(file: *const u8) -> Result<bool, i32> {
    unsafe {
        let inode: *const u8 = read_field(file, &OFF_FILE_INODE)?;
        let mode: u16 = read_field(inode, &OFF_INODE_MODE)?;
        if mode & S_IFMT != S_IFCHR {
            return Ok(false);
        }
        let rdev: u32 = read_field(inode, &OFF_INODE_RDEV)?;
        if rdev != CONTROLLING_TTY_DEVICE {
            return Ok(is_raw_device(rdev));
        }
        Ok(is_raw_device(terminal_behind(file)?))
    }
}

/// The device number of the terminal a tty file (/dev/tty) was opened on.
#[inline(always)]
unsafe fn terminal_behind(file: *const u8) -> Result<u32, i32> {
    unsafe {
        let private: *const u8 = read_field(file, &OFF_FILE_PRIVATE_DATA)?;
        terminal_device(read_field(private, &OFF_TTY_FILE_PRIVATE_TTY)?)
    }
}

/// The device number of terminal `tty` (a `tty_struct`): its driver's major, and its first
/// minor plus the terminal's index.
#[inline(always)]
pub unsafe fn terminal_device(tty: *const u8) -> Result<u32, i32> {
    unsafe {
        let driver: *const u8 = read_field(tty, &OFF_TTY_DRIVER)?;
        let index: i32 = read_field(tty, &OFF_TTY_INDEX)?;
        let major: i32 = read_field(driver, &OFF_TTY_DRIVER_MAJOR)?;
        let minor_start: i32 = read_field(driver, &OFF_TTY_DRIVER_MINOR_START)?;
        Ok((major as u32) << 20 | (minor_start + index) as u32 & ALL_MINORS)
    }
}

/// Whether the character device `rdev` is one agents may not open: refused by its number or
/// its major, or not registered when the daemon last looked (see [`raw_device`]).
#[inline(always)]
pub fn is_raw_device(rdev: u32) -> bool {
    let value = |key: u32| RAW_DEVICES.get_ptr(key).map(|value| unsafe { *value });
    let (exact, major) = (value(rdev), value(rdev | ALL_MINORS));
    if exact == Some(raw_device::REFUSED) || major == Some(raw_device::REFUSED) {
        return true;
    }
    let registered = if rdev >> 20 == raw_device::MISC_MAJOR {
        exact
    } else {
        major
    };
    registered.is_none()
}

/// The verdict on an agent's open of a file no protected binary is (its `inode`, `target`):
/// approval for the accesses its file rules protect. A directory's listing is not protected,
/// only what its files hold.
#[inline(always)]
unsafe fn judge_rule_open(
    agent: u64,
    file: *const u8,
    inode: *const u8,
    target: &Target,
    mode: u16,
    access: &Access,
) -> Result<i32, i32> {
    let dentry = unsafe { opened_dentry(file, inode)? };
    let placed = unsafe { placement(dentry)? };
    if placed.unplaced {
        return Ok(tamper(agent, TamperHook::UnplacedFile, target.data));
    }
    let writes = access.writes && placed.bits & file_access::WRITE == 0;
    let reads = access.reads && mode & S_IFMT != S_IFDIR && placed.bits & file_access::READ == 0;
    if writes || reads {
        let mnt: *const u8 =
            unsafe { read_field(member_ptr(file, &OFF_FILE_PATH), &OFF_PATH_MNT)? };
        // A write is judged by the file system's first mount in the host's namespace too, as
        // its names and attributes are: a file system mounted at a guarded name and bound
        // elsewhere by the host is written through neither.
        if unsafe {
            below_unguarded_mount(mnt, inode, writes)? || writes && on_unguarded_mount(inode, true)?
        } || revealed_above(dentry)?
        {
            return Ok(tamper(agent, TamperHook::UnguardedMount, target.data));
        }
    }
    // What the host made at or below a guarded name (a host service's directory made after the
    // start) is no agent's to write, as the names there are not; an approval to read it is none
    // to write it.
    if writes && gatekeeper_below_guarded_name(dentry as u64) != 0 {
        return Ok(tamper(agent, TamperHook::GuardedName, target.data));
    }
    let mut wanted = 0;
    if access.reads && mode & S_IFMT != S_IFDIR {
        wanted |= file_access::READ;
    }
    if access.writes {
        wanted |= file_access::WRITE;
    }
    let asked = wanted & placed.bits;
    if asked == 0 {
        return Ok(0);
    }
    let [dev, ino] = target.data;
    let name: *const u8 =
        unsafe { read_field(member_ptr(dentry, &OFF_DENTRY_NAME), &OFF_QSTR_NAME)? };
    Ok(decide(agent, Target::file(dev as u32, ino, asked), name))
}

/// The dentry of the opened file: its path's, or, when a stacking file system opens the file
/// below with its own path (6.1), the file's own name.
#[inline(always)]
unsafe fn opened_dentry(file: *const u8, inode: *const u8) -> Result<*const u8, i32> {
    let dentry: *const u8 =
        unsafe { read_field(member_ptr(file, &OFF_FILE_PATH), &OFF_PATH_DENTRY)? };
    if unsafe { read_field::<*const u8>(dentry, &OFF_DENTRY_INODE)? } == inode {
        Ok(dentry)
    } else {
        unsafe { alias_of(inode) }
    }
}

/// Whether `file` (on procfs) is /proc/kcore: the kernel's memory, every page cache and
/// process among it. Matched by name below the procfs root, which every procfs instance shares.
#[inline(always)]
unsafe fn is_kcore(file: *const u8) -> Result<bool, i32> {
    unsafe {
        let dentry: *const u8 = read_field(member_ptr(file, &OFF_FILE_PATH), &OFF_PATH_DENTRY)?;
        let name: *const u8 = read_field(member_ptr(dentry, &OFF_DENTRY_NAME), &OFF_QSTR_NAME)?;
        if read_at::<[u8; 6]>(name, 0)? != *b"kcore\0" {
            return Ok(false);
        }
        let parent: *const u8 = read_field(dentry, &OFF_DENTRY_PARENT)?;
        let parent_inode: *const u8 = read_field(parent, &OFF_DENTRY_INODE)?;
        Ok(inode_target(parent_inode)?.data[1] == PROC_ROOT_INO)
    }
}

/// What an agent's change does to the file a dentry names.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Change {
    /// Its content, mode, owner, times, attributes or flags.
    Content,
    /// Its content through a file opened for writing (truncation on open, ftruncate): that
    /// open's grant covered it, so the file rules are not asked again.
    Opened,
    /// Its name: unlinked, renamed, replaced by a rename, removed as a directory.
    Name,
}

/// The verdict on an agent changing what `dentry` names: not a protected, allowlisted or daemon
/// file, nor one a file rule protects from writing.
#[inline(always)]
unsafe fn guard_dentry(agent: u64, dentry: *const u8) -> i32 {
    unsafe { guard(agent, dentry, Change::Content) }
}

/// [`guard_dentry`] for a change through a file opened for writing ([`Change::Opened`]).
#[inline(always)]
unsafe fn guard_dentry_opened(agent: u64, dentry: *const u8) -> i32 {
    unsafe { guard(agent, dentry, Change::Opened) }
}

/// [`guard_dentry`] for a change of name (of `dentry`, in the directory `dir`), which neither a
/// rule's own file or directory takes, whatever access the rule protects: a path that named an
/// agent's file would hand it what a trusted writer puts there. Nor does a name at or below a
/// guarded name ([`guard_name_at`]).
#[inline(always)]
unsafe fn guard_name(agent: u64, dir: *const u8, dentry: *const u8) -> i32 {
    match unsafe { guard(agent, dentry, Change::Name) } {
        0 => unsafe { guard_name_at(agent, dir, dentry) },
        verdict => verdict,
    }
}

/// The guards' common part. A `dentry` that reaches the file rules' walk, a global function,
/// must be a plain number to the verifier: a hook's own argument through [`dentry_arg`] or
/// [`untyped`], or one read from memory. A typed one comes here only for [`Change::Opened`],
/// which returns before the walk.
#[inline(always)]
unsafe fn guard(agent: u64, dentry: *const u8, change: Change) -> i32 {
    let Ok(inode) = (unsafe { read_field::<*const u8>(dentry, &OFF_DENTRY_INODE) }) else {
        return -EPERM;
    };
    // A negative dentry (a name not there yet) changes nothing that exists.
    if inode.is_null() {
        return 0;
    }
    let Ok(target) = (unsafe { inode_target(inode) }) else {
        return -EPERM;
    };
    if let Some(hook) = unchangeable(&target) {
        return tamper(agent, hook, target.data);
    }
    if change == Change::Opened {
        return 0;
    }
    match unsafe { placement(dentry) } {
        Ok(placed) if placed.unplaced => tamper(agent, TamperHook::UnplacedFile, target.data),
        Ok(placed)
            if placed.guarded_from_change() || (change == Change::Name && placed.own != 0) =>
        {
            tamper(agent, TamperHook::ProtectedChange, target.data)
        }
        Ok(_) => 0,
        Err(_) => -EPERM,
    }
}

/// The hook's dentry argument `index`, for the file rules' walk and the other global functions
/// ([`untyped`]).
#[inline(always)]
fn dentry_arg(ctx: &LsmContext, index: usize) -> Result<*const u8, i32> {
    unsafe { untyped(ctx.arg(index)) }
}

/// A name made, removed or moved in a directory (each asks for write permission on it) that a
/// file rule protects, that holds a rule's file, whose place cannot be told, or that is on a
/// file system the daemon has not looked at yet over a place the rules care about.
/// Non-directories return after one read: their writes are judged at the open.
#[inline(always)]
pub fn directory_write(inode: *const u8) -> i32 {
    match unsafe { read_field::<u16>(inode, &OFF_INODE_MODE) } {
        Ok(mode) if mode & S_IFMT == S_IFDIR => {}
        _ => return 0,
    }
    let Some(agent) = agent_cgroup() else {
        return 0;
    };
    let dir = match unsafe { inode_target(inode) } {
        Ok(dir) if daemon_file_bits(&dir) & daemon_file::DIRECTORY != 0 => {
            return tamper(agent, TamperHook::DaemonFile, dir.data);
        }
        Ok(dir) => dir,
        Err(_) => return -EPERM,
    };
    match unsafe { alias_of(inode).and_then(|dentry| placement(dentry)) } {
        Ok(placed) if placed.unplaced => tamper(agent, TamperHook::UnplacedFile, dir.data),
        // Under a read rule too: a name the agent makes there (a symlink, a file it holds open)
        // would catch what a trusted writer puts at it.
        Ok(placed)
            if placed.guarded_from_change()
                || placed.in_read_tree
                || placed.own & file_rule::NAMES != 0 =>
        {
            tamper(agent, TamperHook::ProtectedChange, dir.data)
        }
        Ok(_) => {
            match unsafe { untyped(inode).and_then(|inode| on_unguarded_mount(inode, true)) } {
                Ok(false) => 0,
                Ok(true) => tamper(agent, TamperHook::UnguardedMount, dir.data),
                Err(_) => -EPERM,
            }
        }
        Err(_) => -EPERM,
    }
}

/// Unlinking a protected, allowlisted or daemon file, a pin (which would detach a program), or
/// a name at or below a guarded name.
#[lsm(hook = "inode_unlink")]
pub fn inode_unlink(ctx: LsmContext) -> i32 {
    let Some(agent) = agent_cgroup() else {
        return 0;
    };
    let dir: *const u8 = ctx.arg(0);
    if matches!(unsafe { inode_magic(dir) }, Ok(BPF_FS_MAGIC)) {
        return tamper(agent, TamperHook::PinUnlink, [0, 0]);
    }
    match dentry_arg(&ctx, 1) {
        Ok(dentry) if is_mount_point(dentry) => refuse_mount_point(agent, MountRefusal::MountPoint),
        Ok(dentry) => unsafe { guard_name(agent, dir, dentry) },
        Err(_) => -EPERM,
    }
}

/// An agent renaming or removing a name that would move or take away mounts of the host's:
/// one something is mounted on in another namespace (its own copy unmounted first), or a
/// directory above one.
#[inline(always)]
fn refuse_mount_point(agent: u64, why: MountRefusal) -> i32 {
    tamper(agent, TamperHook::Umount, [0, why as u64])
}

/// Removing a directory a file rule names (empty, or it could not go): another, the agent's,
/// could take its path. Nor one at or below a guarded name, nor one the daemon holds.
#[lsm(hook = "inode_rmdir")]
pub fn inode_rmdir(ctx: LsmContext) -> i32 {
    let Some(agent) = agent_cgroup() else {
        return 0;
    };
    match dentry_arg(&ctx, 1) {
        Ok(dentry) if is_mount_point(dentry) => refuse_mount_point(agent, MountRefusal::MountPoint),
        Ok(dentry) if is_held_directory(dentry) => {
            refuse_mount_point(agent, MountRefusal::AboveMountPoint)
        }
        Ok(dentry) => unsafe { guard_name(agent, ctx.arg(0), dentry) },
        Err(_) => -EPERM,
    }
}

/// Renaming such a file away, another file over it (or exchanging the two), a directory above
/// a daemon file or a host mount point, anything on or onto bpffs, or anything from or to a
/// guarded name.
#[lsm(hook = "inode_rename")]
pub fn inode_rename(ctx: LsmContext) -> i32 {
    let Some(agent) = agent_cgroup() else {
        // A trusted rename over a protected binary or a rule's file hands its protection on.
        unsafe { hand_on_protection(ctx.arg(1), ctx.arg(3)) };
        count_rename(ctx.arg(1), ctx.arg(3), ctx.arg(2));
        return 0;
    };
    let old_dir: *const u8 = ctx.arg(0);
    let new_dir: *const u8 = ctx.arg(2);
    let on_bpffs = |dir| matches!(unsafe { inode_magic(dir) }, Ok(BPF_FS_MAGIC));
    if on_bpffs(old_dir) || on_bpffs(new_dir) {
        return tamper(agent, TamperHook::PinRename, [0, 0]);
    }
    let Ok(moved) = dentry_arg(&ctx, 1) else {
        return -EPERM;
    };
    let Ok(replaced) = dentry_arg(&ctx, 3) else {
        return -EPERM;
    };
    if is_mount_point(moved) || is_mount_point(replaced) {
        return refuse_mount_point(agent, MountRefusal::MountPoint);
    }
    if let Some(why) = moves_host_mounts(moved).or_else(|| moves_host_mounts(replaced)) {
        return refuse_mount_point(agent, why);
    }
    // A file an unmount showed, taken out from below the place the daemon has not looked at.
    if revealed_above(moved).unwrap_or(true) {
        return tamper(agent, TamperHook::UnguardedMount, [0, 0]);
    }
    match unsafe { guard_name(agent, old_dir, moved) } {
        0 => {}
        verdict => return verdict,
    }
    match unsafe { guard_name(agent, new_dir, replaced) } {
        0 => {}
        verdict => return verdict,
    }
    // An exchange passes here both ways round.
    unsafe { guard_read_tree(agent, moved, new_dir) }
}

/// What `replaced` was protected as, `moved` is from now (an exchange passes here both ways).
#[inline(always)]
unsafe fn hand_on_protection(moved: *const u8, replaced: *const u8) {
    let target_of = |dentry: *const u8| {
        let inode = unsafe { read_field::<*const u8>(dentry, &OFF_DENTRY_INODE) }.ok()?;
        if inode.is_null() {
            return None;
        }
        unsafe { inode_target(inode) }.ok()
    };
    // One after the other: read as a pair, the compiler kept the first's value in a register
    // the verifier found unset where the first read failed (6.12 refused the program).
    let Some(incoming) = target_of(moved) else {
        return;
    };
    if let Some(replaced) = target_of(replaced) {
        inherit_protected(&replaced, &incoming);
        inherit_rule(&replaced, &incoming);
    }
}

/// Moving or linking `moved` into the directory `to` into, out of or within a directory
/// protected from reading ([`moves_with_read_tree`]).
#[inline(always)]
unsafe fn guard_read_tree(agent: u64, moved: *const u8, to: *const u8) -> i32 {
    match unsafe { moves_with_read_tree(moved, to) } {
        Ok(false) => 0,
        Ok(true) => {
            let target = unsafe { read_field::<*const u8>(moved, &OFF_DENTRY_INODE) }
                .and_then(|inode| unsafe { inode_target(inode) })
                .unwrap_or_default();
            tamper(agent, TamperHook::ProtectedChange, target.data)
        }
        Err(_) => -EPERM,
    }
}

/// A hard link to such a file (another name for it, out of the daemon's sight), to one at or
/// below a guarded name (a name elsewhere to write it by), or any file's at a guarded name.
#[lsm(hook = "inode_link")]
pub fn inode_link(ctx: LsmContext) -> i32 {
    let agent = match agent_caller(ctx.arg(3)) {
        Ok(agent) => agent,
        Err(verdict) => return verdict,
    };
    let Ok(linked) = dentry_arg(&ctx, 0) else {
        return -EPERM;
    };
    // A name elsewhere for a file an unmount showed, before the daemon has looked at it.
    if revealed_above(linked).unwrap_or(true) {
        return tamper(agent, TamperHook::UnguardedMount, [0, 0]);
    }
    let dir: *const u8 = ctx.arg(1);
    match unsafe { guard_dentry(agent, linked) } {
        0 => {}
        verdict => return verdict,
    }
    match unsafe { guard_below_guarded_name(agent, linked) } {
        0 => {}
        verdict => return verdict,
    }
    match unsafe { guard_read_tree(agent, linked, dir) } {
        0 => unsafe { guard_name_at(agent, dir, ctx.arg(2)) },
        verdict => verdict,
    }
}

/// truncate(2) by path, and on 6.1 truncation on open. The file rules judge both at
/// `inode_setattr`, which tells them apart.
#[lsm(hook = "path_truncate")]
pub fn path_truncate(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(1);
    if previous != 0 {
        return previous;
    }
    let path: *const u8 = ctx.arg(0);
    let dentry = unsafe { read_field::<*const u8>(path, &OFF_PATH_DENTRY) };
    match agent_cgroup() {
        Some(agent) => match dentry {
            Ok(dentry) => unsafe { guard_dentry_opened(agent, dentry) },
            Err(_) => -EPERM,
        },
        None => {
            if let Ok(dentry) = dentry
                && let Ok(inode) = unsafe { read_field::<*const u8>(dentry, &OFF_DENTRY_INODE) }
                && let Ok(target) = unsafe { inode_target(inode) }
            {
                forget_allowlisted(&target);
            }
            0
        }
    }
}

/// The verdict on an agent changing the file at `path` (a `struct path`).
#[inline(always)]
fn guard_path(path: *const u8) -> i32 {
    let Some(agent) = agent_cgroup() else {
        return 0;
    };
    match unsafe { read_field::<*const u8>(path, &OFF_PATH_DENTRY) } {
        Ok(dentry) => unsafe { guard_dentry(agent, dentry) },
        Err(_) => -EPERM,
    }
}

/// chmod, also through an fd: a daemon binary made unrunnable, a config made unreadable.
#[lsm(hook = "path_chmod")]
pub fn path_chmod(ctx: LsmContext) -> i32 {
    guard_path(ctx.arg(0))
}

/// chown and its siblings, also through an fd.
#[lsm(hook = "path_chown")]
pub fn path_chown(ctx: LsmContext) -> i32 {
    guard_path(ctx.arg(0))
}

/// Size, mode, owner and times, on the inode that changes: also when a stacking file system
/// (overlayfs) changes the file below on the agent's behalf, which passes no path hook.
#[lsm(hook = "inode_setattr")]
pub fn inode_setattr(ctx: LsmContext) -> i32 {
    let Some(agent) = agent_cgroup() else {
        return 0;
    };
    // The arguments are read at fixed offsets, as the verifier demands of the context (volatile,
    // so the compiler does not turn the choice into one read at a chosen offset); the index is
    // volatile so its placeholder zero is not folded. The attributes follow the dentry.
    let args = ctx.as_ptr() as *const *const u8;
    let (first, second, third) = unsafe {
        (
            core::ptr::read_volatile(args),
            core::ptr::read_volatile(args.add(1)),
            core::ptr::read_volatile(args.add(2)),
        )
    };
    let (dentry, attr) = match unsafe { core::ptr::read_volatile(&ARG_INODE_SETATTR_DENTRY) } {
        0 => (first, second),
        _ => (second, third),
    };
    match unsafe { read_field::<u32>(attr, &OFF_IATTR_VALID) } {
        // Truncation through a file opened for writing (on open, or ftruncate).
        Ok(valid) if valid & ATTR_FILE != 0 => unsafe { guard_dentry_opened(agent, dentry) },
        Ok(_) => match unsafe { untyped(dentry) } {
            Ok(dentry) => unsafe { guard_attributes(agent, dentry) },
            Err(_) => -EPERM,
        },
        Err(_) => -EPERM,
    }
}

/// [`guard_dentry`] for a change of attributes, also refused at or below a guarded name and on a
/// mount not guarded yet (see [`guard_unguarded_mount`]). A hook's own dentry argument goes
/// through [`untyped`] first.
#[inline(always)]
unsafe fn guard_attributes(agent: u64, dentry: *const u8) -> i32 {
    // The verdict is refusal or not: the verifier of 6.12 holds a hook's return to an errno,
    // which it cannot tell of a global function's answer.
    match gatekeeper_guard_attributes(agent, dentry as u64) {
        0 => match gatekeeper_guard_unguarded_mount(agent, dentry as u64) {
            0 => 0,
            _ => -EPERM,
        },
        _ => -EPERM,
    }
}

/// [`guard_attributes`]'s own checks as a global BPF function (see
/// [`crate::file_rules::gatekeeper_placement`]): `inode_setattr`, the xattr and ACL hooks and
/// `file_ioctl` reach it on several paths, on each of which the verifier would check it again.
#[unsafe(no_mangle)]
#[inline(never)]
extern "C" fn gatekeeper_guard_attributes(agent: u64, dentry: u64) -> i32 {
    let dentry = dentry as *const u8;
    match unsafe { guard_dentry(agent, dentry) } {
        0 => unsafe { guard_below_guarded_name(agent, dentry) },
        verdict => verdict,
    }
}

/// [`guard_unguarded_mount`] as a global BPF function of its own, called beside
/// [`gatekeeper_guard_attributes`] rather than from it: the walk over mounts is one global
/// function deeper, and nested in the other the frames passed the 512 bytes of stack the
/// verifier allows.
#[unsafe(no_mangle)]
#[inline(never)]
extern "C" fn gatekeeper_guard_unguarded_mount(agent: u64, dentry: u64) -> i32 {
    unsafe { guard_unguarded_mount(agent, dentry as *const u8) }
}

/// A change of what the positive `dentry` names at or below a guarded name: of its attributes
/// (a host service's directory made after the start, handed to a user agent by chown or made
/// one its service refuses by chmod), or another name for it, to write it by.
#[inline(always)]
unsafe fn guard_below_guarded_name(agent: u64, dentry: *const u8) -> i32 {
    let below = |_| match gatekeeper_below_guarded_name(dentry as u64) {
        0 => Ok(false),
        1 => Ok(true),
        error => Err(error),
    };
    unsafe { refuse_change_if(agent, dentry, TamperHook::GuardedName, below) }
}

/// A change of size, mode, owner, times, extended attributes or ACLs on a file system the daemon
/// has not looked at yet over a place the rules care about (see [`on_unguarded_mount`]):
/// refused as a write open there is. (A change through a file opened for writing was judged at the open.)
#[inline(always)]
unsafe fn guard_unguarded_mount(agent: u64, dentry: *const u8) -> i32 {
    let unguarded = |inode| unsafe { on_unguarded_mount(inode, true) };
    unsafe { refuse_change_if(agent, dentry, TamperHook::UnguardedMount, unguarded) }
}

/// Refuses, as `hook`, a change of what `dentry` names when `refused` says so of its inode; a
/// negative dentry names nothing to change.
#[inline(always)]
unsafe fn refuse_change_if(
    agent: u64,
    dentry: *const u8,
    hook: TamperHook,
    refused: impl FnOnce(*const u8) -> Result<bool, i32>,
) -> i32 {
    let Ok(inode) = (unsafe { read_field::<*const u8>(dentry, &OFF_DENTRY_INODE) }) else {
        return -EPERM;
    };
    if inode.is_null() {
        return 0;
    }
    match refused(inode) {
        Ok(false) => 0,
        Ok(true) => {
            let target = unsafe { inode_target(inode) }.unwrap_or_default();
            tamper(agent, hook, target.data)
        }
        Err(_) => -EPERM,
    }
}

/// Extended attributes (file capabilities, ACLs on 6.1, security labels). The dentry is the
/// second argument on 6.1 and 6.12 alike.
#[lsm(hook = "inode_setxattr")]
pub fn inode_setxattr(ctx: LsmContext) -> i32 {
    guard_second_dentry(&ctx)
}

#[lsm(hook = "inode_removexattr")]
pub fn inode_removexattr(ctx: LsmContext) -> i32 {
    guard_second_dentry(&ctx)
}

/// [`guard_attributes`] of the file whose dentry is the hook's second argument; no attribute of
/// a directory the daemon holds (an overlay's redirect).
#[inline(always)]
fn guard_second_dentry(ctx: &LsmContext) -> i32 {
    let Some(agent) = agent_cgroup() else {
        return 0;
    };
    match dentry_arg(ctx, 1) {
        Ok(dentry) if is_held_directory(dentry) => {
            refuse_mount_point(agent, MountRefusal::AboveMountPoint)
        }
        Ok(dentry) => unsafe { guard_attributes(agent, dentry) },
        Err(_) => -EPERM,
    }
}

/// A POSIX ACL set (which sets the mode bits too, past `inode_setattr`) or removed, from 6.2 on,
/// where it passes no `inode_setxattr`. The dentry is the second argument of both.
#[lsm(hook = "inode_set_acl")]
pub fn inode_set_acl(ctx: LsmContext) -> i32 {
    guard_second_dentry(&ctx)
}

#[lsm(hook = "inode_remove_acl")]
pub fn inode_remove_acl(ctx: LsmContext) -> i32 {
    guard_second_dentry(&ctx)
}

/// [`gatekeeper_ioctl_class`]'s answers: an ioctl no hook judges, one refused to agents
/// whatever the file, terminal input, a terminal ioctl that changes something, and one that
/// changes a file's attributes.
const IOCTL_UNJUDGED: i32 = 0;
const IOCTL_DEVICE_CONTROL: i32 = 1;
const IOCTL_TERMINAL_INPUT: i32 = 2;
const IOCTL_TERMINAL: i32 = 3;
const IOCTL_ATTRIBUTES: i32 = 4;

/// What an ioctl's command is to the hooks, as a global BPF function: inline, each of the
/// hundred-odd commands the `match`es name left the verifier a state of its own to check the
/// rest of the hook from (on 6.1, 120 thousand instructions at every daemon start).
#[unsafe(no_mangle)]
#[inline(never)]
extern "C" fn gatekeeper_ioctl_class(cmd: u32) -> i32 {
    if matches!(cmd, TIOCSTI | TIOCLINUX) {
        IOCTL_TERMINAL_INPUT
    } else if is_device_control(cmd) {
        IOCTL_DEVICE_CONTROL
    } else if (cmd >> 8) & 0xff == TERMINAL_IOCTL_TYPE && !is_terminal_query(cmd) {
        IOCTL_TERMINAL
    } else if matches!(
        cmd,
        FS_IOC_SETFLAGS | FS_IOC32_SETFLAGS | FS_IOC_FSSETXATTR | FS_IOC_ENABLE_VERITY
    ) {
        IOCTL_ATTRIBUTES
    } else {
        IOCTL_UNJUDGED
    }
}

/// ioctls that change a protected, allowlisted, daemon or write-protected file without a write
/// open (its flags, such as immutable or append-only, or fs-verity), or one on a mount not
/// guarded yet.
#[lsm(hook = "file_ioctl")]
pub fn file_ioctl(ctx: LsmContext) -> i32 {
    guard_ioctl(ctx.arg(0), ctx.arg(1), ctx.arg(3))
}

/// The same from 32-bit code, whose ioctls take this hook instead.
#[lsm(hook = "file_ioctl_compat")]
pub fn file_ioctl_compat(ctx: LsmContext) -> i32 {
    guard_ioctl(ctx.arg(0), ctx.arg(1), ctx.arg(3))
}

#[inline(always)]
fn guard_ioctl(file: *const u8, cmd: u32, previous: i32) -> i32 {
    if previous != 0 {
        return previous;
    }
    // The command first: every other ioctl on the host costs a few comparisons.
    let class = gatekeeper_ioctl_class(cmd);
    if class == IOCTL_UNJUDGED {
        return 0;
    }
    let Some(agent) = agent_cgroup() else {
        return 0;
    };
    match class {
        IOCTL_TERMINAL_INPUT => return tamper(agent, TamperHook::TerminalInput, [cmd as u64, 0]),
        IOCTL_DEVICE_CONTROL => return tamper(agent, TamperHook::DeviceControl, [cmd as u64, 0]),
        _ => {}
    }
    // A plain number: the compiler masks it in a branch 6.1's verifier refuses on a typed pointer.
    let Ok(file) = (unsafe { untyped(file) }) else {
        return -EPERM;
    };
    // One that changes something on a host terminal is refused.
    if class == IOCTL_TERMINAL {
        if unsafe { on_raw_device(file) } == Ok(false) {
            return 0;
        }
        return tamper(agent, TamperHook::DeviceControl, [cmd as u64, 0]);
    }
    let dentry = unsafe { read_field::<*const u8>(file, &OFF_FILE_INODE) }
        .and_then(|inode| unsafe { opened_dentry(file, inode) });
    match dentry {
        Ok(dentry) => unsafe { guard_attributes(agent, dentry) },
        Err(_) => -EPERM,
    }
}
