//! Mounts: an agent changes nothing the host or the daemon sees.
//!
//! In the host's mount namespace (the daemon's, or init's) an agent mounts, moves, remounts,
//! unmounts and pivots nothing. In a private namespace of its own (a container runtime's) it may,
//! unless the change would propagate out: a bare `unshare(CLONE_NEWNS)` keeps the host's shared
//! mounts as peers, so a mount on one of them, or an unmount under one, would reach the host.
//! Superblocks are shared by every mount of them: reconfiguring one the host also mounts is
//! refused wherever the caller is. bpffs and cgroup v1 are never made by an agent: a private
//! bpffs hides nothing, but a cgroup v1 hierarchy carries `release_agent`, and neither is
//! something a container needs.
//!
//! Network file systems (NFS, SMB, Ceph, 9P, AFS) are never mounted by an agent: their
//! kernel-made sockets pass no socket hook, so such a mount would reach any server, a protected
//! one too. They are refused by the type's name before the kernel contacts the server: in
//! mount(2), and for each parameter the new API (fsconfig) or mount(2) passes; and by magic
//! for any superblock made that slipped past both.
//!
//! Nor is a file system on a device: the kernel opens the device for the mount itself, past the
//! open of block devices agents are refused, so a disk the host does not mount (or a node the
//! agent made) would be read and written below every file rule. Refused by the type's flag
//! at the first parameter, before the file system reads the device, and by the superblock's
//! block device once made.
//!
//! The mount tree is read without the kernel's locks: a tree changing under the walk can only
//! make it fail, and a walk that fails refuses.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    cty::c_void,
    helpers::{bpf_get_current_task, bpf_probe_read_kernel_str_bytes},
    macros::{lsm, map},
    maps::{Array, HashMap, LruHashMap},
    programs::LsmContext,
};
use gatekeeper_common::{
    MAX_ATTACHED_PLACES, MAX_MADE_DEVICES, MAX_MOUNT_ANCESTORS, MAX_TREE_DEPTH, MountRefusal,
    Setting, TamperHook, Target, mount_count,
};

use crate::{
    exec::inode_target,
    file_rules::{on_followed_path, over_rule_place},
    files::{S_IFDIR, S_IFMT},
    offsets::{
        OFF_DENTRY_FLAGS, OFF_DENTRY_INODE, OFF_DENTRY_PARENT, OFF_FS_CONTEXT_FS_TYPE, OFF_FS_ROOT,
        OFF_FS_TYPE_FLAGS, OFF_FS_TYPE_NAME, OFF_FS_USERS, OFF_INODE_MODE, OFF_LIST_HEAD_NEXT,
        OFF_MNT_NS_NS, OFF_MOUNT_CHILD, OFF_MOUNT_INSTANCE, OFF_MOUNT_MNT, OFF_MOUNT_MOUNTPOINT,
        OFF_MOUNT_MOUNTS, OFF_MOUNT_NS, OFF_MOUNT_PARENT, OFF_NS_COMMON_INUM, OFF_NSPROXY_MNT_NS,
        OFF_PATH_DENTRY, OFF_PATH_MNT, OFF_SB_BDEV, OFF_SB_DEV, OFF_SB_MOUNTS, OFF_SB_TYPE,
        OFF_TASK_FS, OFF_TASK_NSPROXY, OFF_VFSMOUNT_FLAGS, OFF_VFSMOUNT_ROOT, OFF_VFSMOUNT_SB,
    },
    read::{
        BPF_FS_MAGIC, CGROUP_SUPER_MAGIC, TURN_AGAIN, TURN_DONE, field_offset, member_ptr, opaque,
        read_field, sb_magic, turns,
    },
    verdict::{agent_cgroup, setting, tamper},
};

/// `vfsmount.mnt_flags`: the mount is in a peer group, and what happens under it propagates.
const MNT_SHARED: i32 = 0x1000;
const MS_REMOUNT: u64 = 32;
/// `file_system_type.fs_flags`: the file system is made from a block device.
const FS_REQUIRES_DEV: i32 = 1;
const MS_BIND: u64 = 4096;
const MS_MOVE: u64 = 8192;
/// umount2(2): the mount and every mount below it go.
const MNT_DETACH: i32 = 2;
const MS_PROPAGATION: u64 = (1 << 17) | (1 << 18) | (1 << 19) | (1 << 20);
/// Steps of a mount tree walk (each mount takes one or two): a container's old root fits.
const MAX_TREE_STEPS: u32 = 256;
/// Mounts of one superblock looked at for one in the host's namespace.
const MAX_SB_MOUNTS: u32 = 64;

/// The names of the network file system types, as the first eight bytes of the name read as a
/// little-endian word (names are shorter, NUL-padded).
const NETWORK_FS_NAMES: [u64; 7] = [
    name_word(b"nfs"),
    name_word(b"nfs4"),
    name_word(b"cifs"),
    name_word(b"smb3"),
    name_word(b"ceph"),
    name_word(b"9p"),
    name_word(b"afs"),
];
/// Their magics: NFS, CIFS, SMB2, Ceph, 9P, AFS.
const NETWORK_FS_MAGICS: [u64; 6] = [
    0x6969,
    0xff53_4d42,
    0xfe53_4d42,
    0x00c3_6400,
    0x0102_1997,
    0x6b41_4653,
];

const fn name_word(name: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    let mut index = 0;
    while index < name.len() {
        bytes[index] = name[index];
        index += 1;
    }
    u64::from_le_bytes(bytes)
}

/// The name word of the file system type string at `name` (0 for none), and whether it names a
/// network file system.
#[inline(always)]
unsafe fn network_fs_name(name: *const u8) -> (u64, bool) {
    if name.is_null() {
        return (0, false);
    }
    let mut bytes = [0u8; 8];
    if unsafe { bpf_probe_read_kernel_str_bytes(name, &mut bytes) }.is_err() {
        return (0, false);
    }
    let word = u64::from_le_bytes(bytes);
    (word, NETWORK_FS_NAMES.contains(&word))
}

/// Denies the agent's `hook` for `why`, and reports it.
#[inline(always)]
fn refuse(agent: u64, hook: TamperHook, first: u64, why: MountRefusal) -> i32 {
    tamper(agent, hook, [first, why as u64])
}

/// The inode number of a `struct mnt_namespace`.
#[inline(always)]
unsafe fn namespace_inum(ns: *const u8) -> Result<u32, i32> {
    unsafe { read_field(ns.add(field_offset(&OFF_MNT_NS_NS)), &OFF_NS_COMMON_INUM) }
}

/// Whether `inum` names the host's mount namespace. Before the daemon has said which one that is,
/// every namespace is.
#[inline(always)]
fn is_host_namespace(inum: u32) -> bool {
    let daemon = setting(Setting::HostMountNs);
    let init = setting(Setting::InitMountNs);
    daemon == 0 || inum == daemon || inum == init
}

/// Whether the mount at `mount` (a `struct mount`) is in the host's mount namespace; not one
/// detached or internal to the kernel (pipes, sockets), whose namespace cannot be read.
#[inline(always)]
pub unsafe fn mount_in_host_namespace(mount: *const u8) -> bool {
    unsafe {
        read_field::<*const u8>(mount, &OFF_MOUNT_NS)
            .and_then(|ns| namespace_inum(ns))
            .is_ok_and(is_host_namespace)
    }
}

/// Whether the caller is in the host's mount namespace (or could not be told apart from it).
#[inline(always)]
pub fn caller_in_host_namespace() -> bool {
    let inum = unsafe {
        let task = bpf_get_current_task() as *const u8;
        read_field::<*const u8>(task, &OFF_TASK_NSPROXY)
            .and_then(|nsproxy| read_field::<*const u8>(nsproxy, &OFF_NSPROXY_MNT_NS))
            .and_then(|ns| namespace_inum(ns))
    };
    inum.map_or(true, is_host_namespace)
}

/// Whether the caller sees the host's files where the host does: in the host's mount namespace
/// (where agents change no mount) and at init's root directory, not under a chroot, with a root
/// of its own (a thread or a `CLONE_FS` child sharing it could chroot while the kernel opens
/// the loader). Unreadable, or not yet told by the daemon, counts as not.
#[inline(always)]
pub fn caller_at_host_root() -> bool {
    let root_device = setting(Setting::HostRootDevice);
    let root_inode = u64::from(setting(Setting::HostRootInodeHigh)) << 32
        | u64::from(setting(Setting::HostRootInodeLow));
    if root_device == 0 {
        return false;
    }
    let seen = unsafe {
        let task = bpf_get_current_task() as *const u8;
        read_field::<*const u8>(task, &OFF_TASK_NSPROXY)
            .and_then(|nsproxy| read_field::<*const u8>(nsproxy, &OFF_NSPROXY_MNT_NS))
            .and_then(|ns| {
                let fs: *const u8 = read_field(task, &OFF_TASK_FS)?;
                let users: i32 = read_field(fs, &OFF_FS_USERS)?;
                let root = member_ptr(fs, &OFF_FS_ROOT);
                // The root's mount must be one of the namespace's own: a bind of `/` made in
                // an agent's namespace has the host's root dentry but the agent's mounts below.
                let root_mount: *const u8 = read_field(root, &OFF_PATH_MNT)?;
                let root_ns: *const u8 = read_field(mount_of(root_mount), &OFF_MOUNT_NS)?;
                let dentry: *const u8 = read_field(root, &OFF_PATH_DENTRY)?;
                let inode: *const u8 = read_field(dentry, &OFF_DENTRY_INODE)?;
                Ok((
                    namespace_inum(ns)?,
                    users == 1 && root_ns == ns,
                    inode_target(inode)?,
                ))
            })
    };
    match seen {
        Ok((inum, own_root, root)) => {
            own_root
                && is_host_namespace(inum)
                && root.data[0] == u64::from(root_device)
                && root.data[1] == root_inode
        }
        Err(_) => false,
    }
}

/// Whether the `struct vfsmount` at `mnt` is shared (unreadable counts as shared).
#[inline(always)]
unsafe fn vfsmount_shared(mnt: *const u8) -> bool {
    unsafe { read_field::<i32>(mnt, &OFF_VFSMOUNT_FLAGS) }.map_or(true, |f| f & MNT_SHARED != 0)
}

/// The `struct mount` holding the `struct vfsmount` at `mnt`.
#[inline(always)]
pub unsafe fn mount_of(mnt: *const u8) -> *const u8 {
    mnt.wrapping_sub(field_offset(&OFF_MOUNT_MNT))
}

/// The `struct vfsmount` of the `struct mount` at `mount`.
#[inline(always)]
pub unsafe fn vfsmount_of(mount: *const u8) -> *const u8 {
    mount.wrapping_add(field_offset(&OFF_MOUNT_MNT))
}

/// The `struct vfsmount` a mount is mounted on.
#[inline(always)]
unsafe fn parent_vfsmount(mnt: *const u8) -> Result<*const u8, i32> {
    unsafe {
        let parent: *const u8 = read_field(mount_of(mnt), &OFF_MOUNT_PARENT)?;
        Ok(vfsmount_of(parent))
    }
}

#[inline(always)]
unsafe fn list_next(node: *const u8) -> Result<*const u8, i32> {
    unsafe { read_field(node, &OFF_LIST_HEAD_NEXT) }
}

/// Whether a mount of the tree under `root` (a `struct mount`, itself included) is shared, in
/// the kernel's own order (`next_mnt`). Err when the tree is too large to walk.
#[inline(always)]
unsafe fn tree_has_shared(root: *const u8) -> Result<bool, i32> {
    let mut walk = MountTreeWalk {
        root: root as u64,
        current: root as u64,
        arriving: opaque(1),
        state: WALKING,
    };
    turns(MAX_TREE_STEPS, mount_tree_step, &mut walk)?;
    match walk.state {
        WALKING => Err(0),
        SHARED => Ok(true),
        DONE => Ok(false),
        _ => Err(-1),
    }
}

/// [`tree_has_shared`]'s walk. `arriving`: 1 when `current` is newly reached (look at it, then
/// at its children), 0 once it is done.
#[repr(C)]
struct MountTreeWalk {
    root: u64,
    current: u64,
    arriving: u64,
    state: i64,
}

/// [`MountTreeWalk::state`] once a shared mount was met.
const SHARED: i64 = 2;

/// One step of [`tree_has_shared`].
#[inline(never)]
extern "C" fn mount_tree_step(_turn: u64, walk: *mut c_void) -> i64 {
    let walk = unsafe { &mut *walk.cast::<MountTreeWalk>() };
    walk.state = match unsafe { mount_tree_next(walk) } {
        Ok(WALKING) => return TURN_AGAIN,
        Ok(state) => state,
        Err(_) => -1,
    };
    TURN_DONE
}

#[inline(always)]
unsafe fn mount_tree_next(walk: &mut MountTreeWalk) -> Result<i64, i32> {
    let mounts = field_offset(&OFF_MOUNT_MOUNTS);
    let child = field_offset(&OFF_MOUNT_CHILD);
    let current = walk.current as *const u8;
    unsafe {
        if walk.arriving != 0 {
            if vfsmount_shared(vfsmount_of(current)) {
                return Ok(SHARED);
            }
            let head = current.wrapping_add(mounts);
            let first = list_next(head)?;
            if first != head {
                walk.current = first.wrapping_sub(child) as u64;
                return Ok(WALKING);
            }
            walk.arriving = 0;
        }
        if walk.current == walk.root {
            return Ok(DONE);
        }
        // The next sibling, or up to the parent once the siblings are done.
        let parent: *const u8 = read_field(current, &OFF_MOUNT_PARENT)?;
        let next = list_next(current.wrapping_add(child))?;
        if next == parent.wrapping_add(mounts) {
            walk.current = parent as u64;
        } else {
            walk.current = next.wrapping_sub(child) as u64;
            walk.arriving = 1;
        }
    }
    Ok(WALKING)
}

/// Whether the superblock at `sb` is mounted in the host's namespace. Err when it has more
/// mounts than are looked at.
#[inline(always)]
unsafe fn mounted_in_host(sb: *const u8) -> Result<bool, i32> {
    unsafe { host_mount_of(sb, core::ptr::null()) }.map(|mount| mount.is_some())
}

/// The superblock `sb`'s mount (a `struct mount`) in the host's namespace that stands for one of
/// its mounts elsewhere whose root is the dentry `root`: the newest with the same root (the bind
/// it was copied from; of several, the one the host made last, which the daemon may not have
/// guarded yet), else the first, if any (the kernel's internal mounts, of pipes and sockets, are
/// in none). A null `root` takes the first. Err when none was found among the mounts looked at
/// and there are more.
#[inline(always)]
pub unsafe fn host_mount_of(sb: *const u8, root: *const u8) -> Result<Option<*const u8>, i32> {
    let head = sb.wrapping_add(field_offset(&OFF_SB_MOUNTS));
    let mut walk = SbMountsWalk {
        head: head as u64,
        node: unsafe { list_next(head)? } as u64,
        root: root as u64,
        first: opaque(0),
        same_root: 0,
        state: WALKING,
    };
    turns(MAX_SB_MOUNTS, host_mount_step, &mut walk)?;
    if walk.state < 0 {
        return Err(-1);
    }
    let found = match walk.same_root {
        0 => walk.first,
        same_root => same_root,
    };
    match (found, walk.state) {
        (0, WALKING) => Err(0),
        (0, _) => Ok(None),
        (found, _) => Ok(Some(found as *const u8)),
    }
}

/// [`host_mount_of`]'s walk, kept on the caller's stack for `bpf_loop`'s callback.
#[repr(C)]
struct SbMountsWalk {
    head: u64,
    node: u64,
    root: u64,
    first: u64,
    same_root: u64,
    state: i64,
}

/// A walk's state: still walking (so its turns ran out), or done; negative when a read failed.
const WALKING: i64 = 0;
const DONE: i64 = 1;

/// One turn of [`host_mount_of`]: one mount of the superblock's list.
#[inline(never)]
extern "C" fn host_mount_step(_turn: u64, walk: *mut c_void) -> i64 {
    let walk = unsafe { &mut *walk.cast::<SbMountsWalk>() };
    if walk.node == walk.head {
        walk.state = DONE;
        return TURN_DONE;
    }
    let mount = (walk.node as *const u8).wrapping_sub(field_offset(&OFF_MOUNT_INSTANCE));
    if unsafe { mount_in_host_namespace(mount) } {
        if walk.root == 0 {
            walk.first = mount as u64;
            walk.state = DONE;
            return TURN_DONE;
        }
        match unsafe { read_field::<*const u8>(vfsmount_of(mount), &OFF_VFSMOUNT_ROOT) } {
            Ok(mount_root) if mount_root as u64 == walk.root => walk.same_root = mount as u64,
            Ok(_) => {}
            Err(_) => {
                walk.state = -1;
                return TURN_DONE;
            }
        }
        if walk.first == 0 {
            walk.first = mount as u64;
        }
    }
    match unsafe { list_next(walk.node as *const u8) } {
        Ok(next) => {
            walk.node = next as u64;
            TURN_AGAIN
        }
        Err(_) => {
            walk.state = -1;
            TURN_DONE
        }
    }
}

/// mount(2) in every form: new mounts, bind, move, remount and propagation changes.
#[lsm(hook = "sb_mount")]
pub fn sb_mount(ctx: LsmContext) -> i32 {
    let path: *const u8 = ctx.arg(1);
    let flags: u64 = ctx.arg(3);
    let Some(agent) = agent_cgroup() else {
        if caller_in_host_namespace() || attaches(flags) && unsafe { lands_shared(path, false) } {
            count_attach(unsafe { landing(path) });
            // mount(2) names the mount it moves by a string: what it leaves shows, somewhere.
            if flags & MS_MOVE != 0 {
                count_attach(None);
            }
        }
        return 0;
    };
    if let (name, true) = unsafe { network_fs_name(ctx.arg(2)) } {
        return refuse(agent, TamperHook::MountFs, name, MountRefusal::Filesystem);
    }
    // The kernel's own order of cases. A remount of a whole superblock is judged in sb_remount,
    // wherever the caller is.
    if flags & MS_REMOUNT != 0 && flags & MS_BIND == 0 {
        return 0;
    }
    if caller_in_host_namespace() {
        return refuse(agent, TamperHook::Mount, flags, MountRefusal::HostNamespace);
    }
    // A new mount, a bind or a move lands on the mount point: it must not propagate.
    if attaches(flags) && unsafe { lands_shared(path, false) } {
        return refuse(agent, TamperHook::Mount, flags, MountRefusal::Shared);
    }
    0
}

/// Whether mount(2) with `flags` attaches a file system (a new mount, a bind or a move), rather
/// than change one in place (a remount, a bind remount or a propagation change, which touch only
/// the caller's namespace's own mount).
#[inline(always)]
fn attaches(flags: u64) -> bool {
    flags & MS_REMOUNT == 0 && (flags & MS_BIND != 0 || flags & MS_PROPAGATION == 0)
}

/// Whether what is attached at `path` (a `struct path`) propagates to other mounts: the mount
/// it lands on is shared, or with `beneath` (MOVE_MOUNT_BENEATH, 6.5, which attaches to the
/// parent of the mount at `path`) that mount's parent is. Unreadable counts as shared, and so
/// does a `path` something is mounted on, which the attach climbs past to a mount the hook does
/// not name (a directory opened before a mount hid it, named through `/proc/self/fd`).
#[inline(always)]
unsafe fn lands_shared(path: *const u8, beneath: bool) -> bool {
    unsafe {
        read_field::<*const u8>(path, &OFF_PATH_MNT).map_or(true, |mnt| {
            vfsmount_shared(mnt)
                || beneath && parent_vfsmount(mnt).map_or(true, |parent| vfsmount_shared(parent))
        }) || landing(path).is_none()
    }
}

/// The dentry what is attached at `path` (a `struct path`) is mounted on: its own, unless
/// something is mounted there already (in some namespace), when the attach may climb past it.
#[inline(always)]
unsafe fn landing(path: *const u8) -> Option<*const u8> {
    let dentry = unsafe { read_field::<*const u8>(path, &OFF_PATH_DENTRY) }.ok()?;
    (!is_mount_point(dentry)).then_some(dentry)
}

/// Each parameter of a mount, through fsconfig or mount(2), before the superblock is made.
#[lsm(hook = "fs_context_parse_param")]
pub fn fs_context_parse_param(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        return previous;
    }
    let Some(agent) = agent_cgroup() else {
        return 0;
    };
    let context: *const u8 = ctx.arg(0);
    let fs_type = unsafe { read_field::<*const u8>(context, &OFF_FS_CONTEXT_FS_TYPE) };
    let checked = fs_type.and_then(|fs_type| unsafe {
        let (word, network) = network_fs_name(read_field(fs_type, &OFF_FS_TYPE_NAME)?);
        Ok((word, network || requires_device(fs_type)?))
    });
    match checked {
        Ok((_, false)) => 0,
        Ok((word, true)) => refuse(agent, TamperHook::MountFs, word, MountRefusal::Filesystem),
        Err(_) => refuse(agent, TamperHook::MountFs, 0, MountRefusal::Unchecked),
    }
}

/// Whether the file system type at `fs_type` reads a block device (ext4, xfs, btrfs, vfat...):
/// mounted by an agent, it would read and write the device's blocks past every file's check.
#[inline(always)]
unsafe fn requires_device(fs_type: *const u8) -> Result<bool, i32> {
    let flags: i32 = unsafe { read_field(fs_type, &OFF_FS_TYPE_FLAGS)? };
    Ok(flags & FS_REQUIRES_DEV != 0)
}

/// move_mount(2): what fsmount and open_tree(OPEN_TREE_CLONE) made reaches a namespace only here.
#[lsm(hook = "move_mount")]
pub fn move_mount(ctx: LsmContext) -> i32 {
    let to: *const u8 = ctx.arg(1);
    // The hook does not say whether MOVE_MOUNT_BENEATH was asked: either way nothing may
    // propagate.
    let Some(agent) = agent_cgroup() else {
        if caller_in_host_namespace() || unsafe { lands_shared(to, true) } {
            unsafe { count_move(to) };
        }
        let from: *const u8 = ctx.arg(0);
        if let Ok(moved) = unsafe { read_field::<*const u8>(from, &OFF_PATH_MNT) } {
            unsafe { count_reveal(moved, false) };
        }
        return 0;
    };
    if caller_in_host_namespace() {
        return refuse(agent, TamperHook::MoveMount, 0, MountRefusal::HostNamespace);
    }
    if unsafe { lands_shared(to, true) } {
        return refuse(agent, TamperHook::MoveMount, 0, MountRefusal::Shared);
    }
    0
}

/// umount(2). An unmount propagates from the parent of each mount it takes away: for a lazy one
/// that is the whole tree under the mount.
#[lsm(hook = "sb_umount")]
pub fn sb_umount(ctx: LsmContext) -> i32 {
    let mnt: *const u8 = ctx.arg(0);
    let Some(agent) = agent_cgroup() else {
        let flags: i32 = ctx.arg(1);
        unsafe { count_reveal(mnt, flags & MNT_DETACH != 0) };
        return 0;
    };
    let magic = unsafe {
        read_field::<*const u8>(mnt, &OFF_VFSMOUNT_SB)
            .and_then(|sb| sb_magic(sb))
            .unwrap_or(0)
    };
    if caller_in_host_namespace() {
        return refuse(
            agent,
            TamperHook::Umount,
            magic,
            MountRefusal::HostNamespace,
        );
    }
    if unsafe { parent_vfsmount(mnt).map_or(true, |p| vfsmount_shared(p)) } {
        return refuse(agent, TamperHook::Umount, magic, MountRefusal::Shared);
    }
    match unsafe { tree_has_shared(mount_of(mnt)) } {
        Ok(false) => 0,
        Ok(true) => refuse(agent, TamperHook::Umount, magic, MountRefusal::Shared),
        Err(_) => refuse(agent, TamperHook::Umount, magic, MountRefusal::Unchecked),
    }
}

/// Reconfiguring a superblock (mount -o remount, fspick + fsconfig): every mount of it sees the
/// change, so one the host mounts too is the host's.
#[lsm(hook = "sb_remount")]
pub fn sb_remount(ctx: LsmContext) -> i32 {
    let Some(agent) = agent_cgroup() else {
        return 0;
    };
    let sb: *const u8 = ctx.arg(0);
    let magic = unsafe { sb_magic(sb) }.unwrap_or(0);
    if magic == BPF_FS_MAGIC || magic == CGROUP_SUPER_MAGIC {
        return refuse(agent, TamperHook::Remount, magic, MountRefusal::Filesystem);
    }
    if caller_in_host_namespace() {
        return refuse(
            agent,
            TamperHook::Remount,
            magic,
            MountRefusal::HostNamespace,
        );
    }
    match unsafe { mounted_in_host(sb) } {
        Ok(false) => 0,
        Ok(true) => refuse(
            agent,
            TamperHook::Remount,
            magic,
            MountRefusal::HostSuperblock,
        ),
        Err(_) => refuse(agent, TamperHook::Remount, magic, MountRefusal::Unchecked),
    }
}

/// pivot_root(2): the kernel itself refuses it across shared mounts; in the host's namespace it
/// would change the host's root.
#[lsm(hook = "sb_pivotroot")]
pub fn sb_pivotroot(_ctx: LsmContext) -> i32 {
    let Some(agent) = agent_cgroup() else {
        return 0;
    };
    if caller_in_host_namespace() {
        return refuse(agent, TamperHook::PivotRoot, 0, MountRefusal::HostNamespace);
    }
    0
}

/// See [`gatekeeper_common::maps::MADE_DEVICES`].
#[map]
static MADE_DEVICES: HashMap<u32, u32> = HashMap::with_max_entries(MAX_MADE_DEVICES, 0);

/// See [`gatekeeper_common::maps::LOOKED_DEVICES`].
#[map]
static LOOKED_DEVICES: HashMap<u32, u32> = HashMap::with_max_entries(MAX_MADE_DEVICES, 0);

/// See [`gatekeeper_common::maps::MOUNT_COUNTS`].
#[map]
static MOUNT_COUNTS: Array<u64> = Array::with_max_entries(mount_count::SLOTS, 0);

/// A mount point (the address of its dentry, which every mount propagated from there shares)
/// -> the [`mount_count::MADE`] count of the last attach there, the kernel's alone. Least
/// recently used places go first: an attach since the daemon's look is among the newest.
#[map]
static ATTACHED_PLACES: LruHashMap<u64, u64> = LruHashMap::with_max_entries(MAX_ATTACHED_PLACES, 0);

/// A directory or file an unmount, move or rename showed at a place the rules care about (a
/// dentry's address: what a mount hid, or what a rename put where a mount was) -> the
/// [`mount_count::MADE`] count then, the kernel's alone.
#[map]
static REVEALED_PLACES: LruHashMap<u64, u64> = LruHashMap::with_max_entries(MAX_ATTACHED_PLACES, 0);

/// Counts a mount's (outside the agents) getting the superblock `sb` in [`MADE_DEVICES`], or
/// with every attach when the map is full. A reused superblock counts too: its mounts wait for
/// the daemon's next look as a new one's do.
#[inline(always)]
fn count_made(sb: *const u8) {
    let Ok(device) = (unsafe { read_field::<u32>(sb, &OFF_SB_DEV) }) else {
        return count_attach(None);
    };
    if let Some(count) = MADE_DEVICES.get_ptr_mut(device) {
        // One superblock has a device number at a time: no other CPU counts it now.
        unsafe { *count += 1 };
    } else if MADE_DEVICES.insert(device, 1, BPF_NOEXIST as u64).is_err() {
        count_attach(None);
    }
}

/// Counts a file system attached in the host's namespace (by a mount, a bind or a move), or
/// attached in another where it may propagate into the host's (on a shared mount, which a
/// trusted process's `unshare -m` keeps peered with the host's), at its mount point `place` (a
/// dentry): one made before the daemon's last look, somewhere it did not care about or not
/// attached at all, may come to a place it does, where its old marks would still hold. Without
/// a place, or when it cannot be kept, the attach holds every place until the daemon's next
/// look.
#[inline(always)]
fn count_attach(place: Option<*const u8>) {
    count_ancestry(count_at(&ATTACHED_PLACES, mount_count::UNPLACED, place));
}

/// Counts a change of the mounts at `place` (a dentry) in `places`, or when it has none or
/// cannot be kept in the [`MOUNT_COUNTS`] slot `unplaced`; the count.
#[inline(always)]
fn count_at(places: &LruHashMap<u64, u64>, unplaced: u32, place: Option<*const u8>) -> u64 {
    let Some(count) = MOUNT_COUNTS.get_ptr_mut(mount_count::MADE) else {
        return 0;
    };
    // Racing CPUs may count once for two: either count is past the daemon's.
    let made = unsafe { *count } + 1;
    unsafe { *count = made };
    let kept = place.is_some_and(|place| places.insert(place as u64, made, 0).is_ok());
    if !kept && let Some(slot) = MOUNT_COUNTS.get_ptr_mut(unplaced) {
        unsafe { *slot = made };
    }
    made
}

/// See [`gatekeeper_common::maps::MOUNT_ANCESTORS`].
#[map]
static MOUNT_ANCESTORS: HashMap<Target, u32> = HashMap::with_max_entries(MAX_MOUNT_ANCESTORS, 0);

/// Notes that mounts of the host's may be below a directory [`MOUNT_ANCESTORS`] does not hold
/// yet, as `made`: agents rename no directory until the daemon has read the mount table.
#[inline(always)]
fn count_ancestry(made: u64) {
    if let Some(slot) = MOUNT_COUNTS.get_ptr_mut(mount_count::ATTACHED) {
        unsafe { *slot = made };
    }
}

/// Why renaming `dentry` (an agent's rename, of it or over it) would move mounts of the host's,
/// if it would: it is a directory above a mount point of the host's namespace, or may be one
/// (the daemon has not read the mounts made since its last look, or could not keep them all).
/// The dentries are shared by every namespace: a copy in the agent's own moves the host's too.
#[inline(always)]
pub fn moves_host_mounts(dentry: *const u8) -> Option<MountRefusal> {
    match unsafe { directory_target(dentry) } {
        Ok(None) => None,
        Ok(Some(directory)) if is_mount_ancestor(&directory) => Some(MountRefusal::AboveMountPoint),
        Ok(Some(_)) => {
            let slot = |slot| MOUNT_COUNTS.get(slot).copied().unwrap_or(0);
            let not_looked = slot(mount_count::ATTACHED) > slot(mount_count::ANCESTORS_LOOKED)
                || slot(mount_count::ANCESTORS_UNKNOWN) != 0;
            not_looked.then_some(MountRefusal::MountsNotLooked)
        }
        Err(_) => Some(MountRefusal::Unchecked),
    }
}

/// Whether `dentry` is a directory the daemon holds (see [`MOUNT_ANCESTORS`]): behind an
/// overlay's directory, its extended attributes (a redirect) and its being there tell the
/// daemon which directories of the layers below to hold, so agents neither remove it nor change
/// those.
#[inline(always)]
pub fn is_held_directory(dentry: *const u8) -> bool {
    match unsafe { directory_target(dentry) } {
        Ok(None) => false,
        Ok(Some(directory)) => is_mount_ancestor(&directory),
        Err(_) => true,
    }
}

#[inline(always)]
fn is_mount_ancestor(directory: &Target) -> bool {
    unsafe { MOUNT_ANCESTORS.get(directory) }.is_some()
}

/// The file `dentry` names, when it is a directory.
#[inline(always)]
unsafe fn directory_target(dentry: *const u8) -> Result<Option<Target>, i32> {
    let inode: *const u8 = unsafe { read_field(dentry, &OFF_DENTRY_INODE)? };
    if inode.is_null() {
        return Ok(None);
    }
    let mode: u16 = unsafe { read_field(inode, &OFF_INODE_MODE)? };
    if mode & S_IFMT != S_IFDIR {
        return Ok(None);
    }
    unsafe { inode_target(inode) }.map(Some)
}

/// Notes a trusted rename of a directory above a host mount point: the mounts below have new
/// directories above them, which [`MOUNT_ANCESTORS`] holds only once the daemon has read the
/// mount table again.
#[inline(always)]
fn count_renamed_ancestor() {
    if let Some(count) = MOUNT_COUNTS.get_ptr_mut(mount_count::MADE) {
        let made = unsafe { *count } + 1;
        unsafe { *count = made };
        count_ancestry(made);
    }
}

/// Counts what an unmount, move or rename showed at `place` (a dentry): agents open nothing at
/// or below it until the daemon has looked (see [`revealed_above`]).
#[inline(always)]
fn count_revealed(place: Option<*const u8>) {
    let made = count_at(&REVEALED_PLACES, mount_count::REVEALED_UNPLACED, place);
    if let Some(slot) = MOUNT_COUNTS.get_ptr_mut(mount_count::REVEALED) {
        unsafe { *slot = made };
    }
}

/// Counts a move_mount(2) to `to` (a `struct path`): at the dentry there, and at the mount
/// point of the mount there, below which MOVE_MOUNT_BENEATH attaches (the hook does not say
/// which was asked).
#[inline(always)]
unsafe fn count_move(to: *const u8) {
    let (dentry, mnt) = unsafe { (landing(to), read_field::<*const u8>(to, &OFF_PATH_MNT).ok()) };
    count_attach(dentry);
    let below =
        mnt.and_then(|mnt| unsafe { read_field(mount_of(mnt), &OFF_MOUNT_MOUNTPOINT) }.ok());
    count_attach(below);
}

/// Counts what taking the mount `mnt` (a `struct vfsmount`) away from its place shows, by an
/// unmount or a move outside the agents, where the host's namespace sees it: the directory or
/// file it was mounted on (what is there, a file system stacked below or the files the mount
/// hid, may be other than the daemon followed its paths onto, or carry old marks), when it was
/// over a place the rules care about. (A `lazy` unmount elsewhere whose mounts below propagate
/// on their own shows places the hook does not name: every open waits.)
#[inline(always)]
unsafe fn count_reveal(mnt: *const u8, lazy: bool) {
    let mount = unsafe { mount_of(mnt) };
    let Ok(parent) = (unsafe { read_field::<*const u8>(mount, &OFF_MOUNT_PARENT) }) else {
        return count_revealed(None);
    };
    if parent == mount {
        // Attached nowhere (what fsmount or open_tree made).
        return;
    }
    if !caller_in_host_namespace() && !unsafe { vfsmount_shared(vfsmount_of(parent)) } {
        if lazy && unsafe { tree_has_shared(mount) } != Ok(false) {
            count_revealed(None);
        }
        return;
    }
    if unsafe { over_rule_place(mount) } {
        count_revealed(unsafe { read_field(mount, &OFF_MOUNT_MOUNTPOINT) }.ok());
    }
}

/// `dentry.d_flags`: something is mounted on it, in some namespace.
const DCACHE_MOUNTED: u32 = 0x1_0000;

/// Whether something is mounted on `dentry` in some namespace (unreadable counts as mounted).
/// A rename over it or a removal of it, which the kernel allows where nothing is mounted on it,
/// takes those mounts away everywhere; a rename of it moves them with it.
#[inline(always)]
pub fn is_mount_point(dentry: *const u8) -> bool {
    unsafe { read_field::<u32>(dentry, &OFF_DENTRY_FLAGS) }
        .map_or(true, |flags| flags & DCACHE_MOUNTED != 0)
}

/// A rename outside the agents of `moved` (a dentry) over `replaced`, into the directory
/// `new_dir` (an inode). Mounts on either move with it or go (the hook does not tell an exchange,
/// which passes here both ways round, from a rename over): no place says where, and every
/// agent's open waits for the daemon's next look. A directory brought onto a path the daemon
/// follows brings files it never saw: agents open nothing below it until then. A directory
/// above a host mount point moves the mounts below (`replaced`, when a directory, is an empty
/// one, or exchanged: `moved` on the other pass).
#[inline(always)]
pub fn count_rename(moved: *const u8, replaced: *const u8, new_dir: *const u8) {
    if is_mount_point(moved) || is_mount_point(replaced) {
        count_attach(None);
        count_revealed(None);
        return;
    }
    // Unreadable counts as a directory, and as one above a mount point.
    let directory = match unsafe { directory_target(moved) } {
        Ok(None) => return,
        Ok(Some(directory)) => Some(directory),
        Err(_) => None,
    };
    if unsafe { on_followed_path(new_dir) } {
        count_revealed(Some(moved));
    }
    if directory.is_none_or(|directory| is_mount_ancestor(&directory)) {
        count_renamed_ancestor();
    }
}

/// Whether an unmount, move or rename since the daemon last began to look at its paths showed
/// `dentry` or a directory above it (see [`count_reveal`], [`count_rename`]). Negative when
/// unreadable.
#[inline(always)]
pub fn revealed_above(dentry: *const u8) -> Result<bool, i32> {
    let slot = |slot| MOUNT_COUNTS.get(slot).copied().unwrap_or(0);
    let looked = slot(mount_count::LOOKED);
    if slot(mount_count::REVEALED) <= looked {
        return Ok(false);
    }
    if slot(mount_count::REVEALED_UNPLACED) > looked {
        return Ok(true);
    }
    match gatekeeper_revealed_above(dentry as u64) {
        0 => Ok(false),
        1 => Ok(true),
        error => Err(error),
    }
}

/// [`revealed_above`]'s walk up the dentry tree, as a global function (its own stack, checked
/// once). 1 when found, or when the walk ends before the top.
#[unsafe(no_mangle)]
#[inline(never)]
extern "C" fn gatekeeper_revealed_above(dentry: u64) -> i32 {
    let mut walk = RevealWalk {
        current: opaque(dentry),
        looked: MOUNT_COUNTS.get(mount_count::LOOKED).copied().unwrap_or(0),
        found: opaque(1),
    };
    if turns(MAX_TREE_DEPTH, reveal_step, &mut walk).is_err() {
        return -1;
    }
    walk.found as i32
}

/// [`gatekeeper_revealed_above`]'s state. `found` stays 1 when the walk ends before the top.
#[repr(C)]
struct RevealWalk {
    current: u64,
    looked: u64,
    found: u32,
}

#[inline(never)]
extern "C" fn reveal_step(_turn: u64, walk: *mut c_void) -> i64 {
    let walk = unsafe { &mut *walk.cast::<RevealWalk>() };
    let revealed = unsafe { REVEALED_PLACES.get(walk.current) };
    if revealed.is_some_and(|&revealed| revealed > walk.looked) {
        return TURN_DONE;
    }
    match unsafe { read_field::<u64>(walk.current as *const u8, &OFF_DENTRY_PARENT) } {
        Ok(parent) if parent == walk.current => {
            walk.found = 0;
            TURN_DONE
        }
        Ok(parent) => {
            walk.current = parent;
            TURN_AGAIN
        }
        Err(_) => TURN_DONE,
    }
}

/// Whether the mount `mount` (a `struct mount`, mounted at the dentry `mountpoint`) may have
/// come to its place since the daemon last began to look at its paths: a file system was
/// attached there (or anywhere, when the kernel could not keep the place) since, or its
/// superblock was got by a mount since.
#[inline(always)]
pub unsafe fn made_since_look(mount: *const u8, mountpoint: *const u8) -> Result<bool, i32> {
    let looked = MOUNT_COUNTS.get(mount_count::LOOKED).copied().unwrap_or(0);
    let unplaced = MOUNT_COUNTS
        .get(mount_count::UNPLACED)
        .copied()
        .unwrap_or(0);
    let attached = unsafe { ATTACHED_PLACES.get(mountpoint as u64) }
        .copied()
        .unwrap_or(0);
    if unplaced > looked || attached > looked {
        return Ok(true);
    }
    let sb: *const u8 = unsafe { read_field(vfsmount_of(mount), &OFF_VFSMOUNT_SB)? };
    let device: u32 = unsafe { read_field(sb, &OFF_SB_DEV)? };
    let made = unsafe { MADE_DEVICES.get(device) }.copied().unwrap_or(0);
    Ok(made > unsafe { LOOKED_DEVICES.get(device) }.copied().unwrap_or(0))
}

/// Every superblock a mount asks for passes here once it exists (vfs_get_tree), whether by
/// mount(2) or by fsopen + fsconfig(FSCONFIG_CMD_CREATE), new or reused.
#[lsm(hook = "sb_set_mnt_opts")]
pub fn sb_set_mnt_opts(ctx: LsmContext) -> i32 {
    let sb: *const u8 = ctx.arg(0);
    let Some(agent) = agent_cgroup() else {
        // An agent's own file system comes to no place of the host's: its mounts there are
        // refused.
        count_made(sb);
        return 0;
    };
    let Ok(magic) = (unsafe { sb_magic(sb) }) else {
        return refuse(agent, TamperHook::MountFs, 0, MountRefusal::Unchecked);
    };
    let refused = magic == BPF_FS_MAGIC
        || magic == CGROUP_SUPER_MAGIC
        || NETWORK_FS_MAGICS.contains(&magic)
        || unsafe { on_device(sb) }.unwrap_or(true);
    if refused {
        return refuse(agent, TamperHook::MountFs, magic, MountRefusal::Filesystem);
    }
    0
}

/// Whether the superblock at `sb` reads a device: it has a block device, or its type needs one.
#[inline(always)]
unsafe fn on_device(sb: *const u8) -> Result<bool, i32> {
    let bdev: *const u8 = unsafe { read_field(sb, &OFF_SB_BDEV)? };
    Ok(!bdev.is_null() || unsafe { requires_device(read_field(sb, &OFF_SB_TYPE)?)? })
}
