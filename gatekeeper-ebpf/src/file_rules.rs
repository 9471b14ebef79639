//! `[[protect.file]]`: files and directories whose reading or changing by agents needs approval.
//! A file is covered by its own rule (matched by inode) and by every protected directory above it,
//! found by walking up its file system's dentry tree (which bind mounts and mount namespaces do
//! not change). The walk runs only for agents, and only on a device that holds a directory rule.

use aya_ebpf::{cty::c_void, macros::map, maps::HashMap};
use gatekeeper_common::{MAX_PROTECTED_FILES, MAX_TREE_DEPTH, Target, file_rule};

use crate::{
    exec::inode_target,
    files::daemon_file_bits,
    mounts::{host_mount_of, made_since_look, mount_in_host_namespace, mount_of, vfsmount_of},
    names::gatekeeper_below_guarded_name,
    offsets::{
        OFF_DENTRY_ALIAS, OFF_DENTRY_INODE, OFF_DENTRY_PARENT, OFF_INODE_DENTRY, OFF_INODE_INO,
        OFF_INODE_SB, OFF_MOUNT_MOUNTPOINT, OFF_MOUNT_PARENT, OFF_SB_DEV, OFF_SB_ROOT,
        OFF_VFSMOUNT_ROOT,
    },
    read::{
        TURN_AGAIN, TURN_DONE, btrfs_directory_rules, btrfs_subvolume_device, container_of,
        on_btrfs, read_field, turns,
    },
    verdict::is_protected,
};

/// Mounts looked through from a file's own up: a volume below a host path, a mount on that.
const MOUNT_HOPS: usize = 4;

#[map]
static PROTECTED_FILES: HashMap<Target, u32> = HashMap::pinned(MAX_PROTECTED_FILES, 0);

/// Where a file sits with respect to the rules.
pub struct Placement {
    /// Its own rule's bits (0: it is no rule's file or directory).
    pub own: u32,
    /// The accesses that need approval: its own rule's and those of every directory rule above.
    pub bits: u32,
    /// Whether it is, or is below, a directory whose rule protects reading.
    pub in_read_tree: bool,
    /// Its device holds a directory rule, but whether one is above it cannot be told (a dentry
    /// cut off from its file system's root, or deeper than the walk goes).
    pub unplaced: bool,
}

impl Placement {
    /// Whether an agent may not change the file without approval, or cannot be judged.
    #[inline(always)]
    pub fn guarded_from_change(&self) -> bool {
        self.unplaced || self.bits & file_rule::WRITE != 0
    }
}

/// A file renamed over a rule's own file or directory takes its rule at once: between the rename
/// and the daemon's next look at the path (half a second) it would be unprotected.
#[inline(always)]
pub fn inherit_rule(replaced: &Target, incoming: &Target) {
    let bits = rule_bits(replaced) & !file_rule::NAMES;
    if bits != 0 {
        let _ = PROTECTED_FILES.insert(incoming, bits, 0);
    }
}

#[inline(always)]
fn rule_bits(target: &Target) -> u32 {
    PROTECTED_FILES
        .get_ptr(target)
        .map_or(0, |bits| unsafe { *bits })
}

/// The placement of the file a positive `dentry` names. A hook's own dentry argument goes
/// through [`crate::read::untyped`] first.
#[inline(always)]
pub unsafe fn placement(dentry: *const u8) -> Result<Placement, i32> {
    let packed = gatekeeper_placement(dentry as u64);
    if packed < 0 {
        return Err(packed);
    }
    let packed = packed as u32;
    Ok(Placement {
        own: packed >> PACKED_OWN & PACKED_RULE,
        bits: packed & PACKED_RULE,
        in_read_tree: packed & PACKED_IN_READ_TREE != 0,
        unplaced: packed & PACKED_UNPLACED != 0,
    })
}

/// Rule bits are few: the walk's answer fits in the number a global function returns. (Written
/// to the caller's stack instead, it made 6.1's verifier check the callers' paths after the call
/// far more often.)
const PACKED_RULE: u32 = 0xff;
const PACKED_OWN: u32 = 8;
const PACKED_IN_READ_TREE: u32 = 1 << 16;
const PACKED_UNPLACED: u32 = 1 << 17;
const _: () = assert!(
    (file_rule::READ | file_rule::WRITE | file_rule::TREE | file_rule::NAMES) & !PACKED_RULE == 0
);

/// [`placement`] as a global BPF function: the verifier checks its walk once per program, not
/// at each call and on each path there. Negative on failure, else the rule bits, the own rule's
/// bits and the two flags packed.
#[unsafe(no_mangle)]
#[inline(never)]
extern "C" fn gatekeeper_placement(dentry: u64) -> i32 {
    match unsafe { walk_placement(dentry as *const u8) } {
        Ok(placed) => {
            let mut packed = placed.bits & PACKED_RULE | (placed.own & PACKED_RULE) << PACKED_OWN;
            if placed.in_read_tree {
                packed |= PACKED_IN_READ_TREE;
            }
            if placed.unplaced {
                packed |= PACKED_UNPLACED;
            }
            packed as i32
        }
        Err(error) if error >= 0 => -1,
        Err(error) => error,
    }
}

#[inline(always)]
unsafe fn walk_placement(dentry: *const u8) -> Result<Placement, i32> {
    let inode: *const u8 = unsafe { read_field(dentry, &OFF_DENTRY_INODE)? };
    let sb: *const u8 = unsafe { read_field(inode, &OFF_INODE_SB)? };
    let btrfs = unsafe { on_btrfs(sb)? };
    let dev = if btrfs {
        unsafe { btrfs_subvolume_device(inode)? }
    } else {
        unsafe { read_field(sb, &OFF_SB_DEV)? }
    };
    let own = rule_bits(&Target::exec(dev, unsafe {
        read_field(inode, &OFF_INODE_INO)?
    }));
    let mut placed = Placement {
        own,
        bits: own,
        in_read_tree: own & (file_rule::TREE | file_rule::READ)
            == file_rule::TREE | file_rule::READ,
        unplaced: false,
    };
    // Most devices hold no directory rule: one lookup says so. On btrfs a directory above may
    // be another subvolume's, of another device number: whether this btrfs holds one.
    let above = if btrfs {
        unsafe { btrfs_directory_rules(sb)? }
    } else {
        rule_bits(&file_rule::device_marker(dev)) != 0
    };
    if !above {
        return Ok(placed);
    }
    let mut walk = TreeWalk {
        current: dentry as u64,
        root: unsafe { read_field::<*const u8>(sb, &OFF_SB_ROOT)? } as u64,
        dev,
        per_directory: btrfs as u32,
        bits: placed.bits,
        in_read_tree: placed.in_read_tree as u32,
        unplaced: 1,
        failed: 0,
    };
    turns(MAX_TREE_DEPTH, tree_step, &mut walk)?;
    if walk.failed != 0 {
        return Err(-1);
    }
    placed.bits = walk.bits;
    placed.in_read_tree = walk.in_read_tree != 0;
    placed.unplaced = walk.unplaced != 0;
    Ok(placed)
}

/// [`walk_placement`]'s walk up the dentry tree, kept on its stack for the loop's steps.
/// `unplaced` stays set when the walk ends before the top.
#[repr(C)]
struct TreeWalk {
    current: u64,
    root: u64,
    dev: u32,
    /// Each directory's device number is its own (btrfs subvolumes), not `dev`.
    per_directory: u32,
    bits: u32,
    in_read_tree: u32,
    unplaced: u32,
    failed: u32,
}

/// One step of [`walk_placement`]: the directory above `current`, and its rule.
#[inline(never)]
extern "C" fn tree_step(_turn: u64, walk: *mut c_void) -> i64 {
    let walk = unsafe { &mut *walk.cast::<TreeWalk>() };
    let current = walk.current as *const u8;
    let Ok(parent) = (unsafe { read_field::<*const u8>(current, &OFF_DENTRY_PARENT) }) else {
        walk.failed = 1;
        return TURN_DONE;
    };
    if parent == current {
        // The top: the file system's root, or a dentry cut off from it (a file opened by its
        // handle before its directory was looked up).
        walk.unplaced = (walk.current != walk.root) as u32;
        return TURN_DONE;
    }
    let target = unsafe {
        read_field::<*const u8>(parent, &OFF_DENTRY_INODE).and_then(|inode| {
            let dev = if walk.per_directory != 0 {
                btrfs_subvolume_device(inode)?
            } else {
                walk.dev
            };
            Ok(Target::exec(dev, read_field::<u64>(inode, &OFF_INODE_INO)?))
        })
    };
    let Ok(target) = target else {
        walk.failed = 1;
        return TURN_DONE;
    };
    let bits = rule_bits(&target);
    if bits & file_rule::TREE != 0 {
        walk.bits |= bits;
        walk.in_read_tree |= (bits & file_rule::READ != 0) as u32;
    }
    walk.current = parent as u64;
    TURN_AGAIN
}

/// The dentry of an inode: for a directory its only one, for a file one of its names.
#[inline(always)]
pub unsafe fn alias_of(inode: *const u8) -> Result<*const u8, i32> {
    // `i_dentry` is a list head: its first member points at the `d_alias` of a dentry.
    let first: *const u8 = unsafe { read_field(inode, &OFF_INODE_DENTRY)? };
    if first.is_null() {
        return Err(-1);
    }
    Ok(container_of(first, &OFF_DENTRY_ALIAS))
}

/// Whether moving or linking the file `moved` (a dentry) into the directory `to` (an inode)
/// takes it into or out of a directory whose rule protects reading, or moves it within one. Out,
/// its new name would be free to read; in, a file the agent holds open, or has another name
/// for, would become the secret a trusted writer puts there; within, the agent would choose the
/// name reviewers are shown for a secret, or take it out of a stricter nested rule.
#[inline(always)]
pub unsafe fn moves_with_read_tree(moved: *const u8, to: *const u8) -> Result<bool, i32> {
    let from = unsafe { placement(read_field(moved, &OFF_DENTRY_PARENT)?)? };
    if from.unplaced || from.in_read_tree {
        return Ok(true);
    }
    let to = unsafe { placement(alias_of(to)?)? };
    Ok(to.unplaced || to.in_read_tree)
}

/// Whether the mount `mnt` (a `struct vfsmount`, not null: 0 would ask [`on_unguarded_mount`]'s
/// question) is in the host's mount namespace over a place the rules care about and not yet
/// looked at by the daemon, looking at its own mount point and those of up to three mounts
/// above (for a write, a mount deeper than that counts as unguarded). A place the rules care
/// about: below a directory rule, or on a path the daemon follows (a rule's file or directory, a
/// protected binary, the directory holding a rule's file, a directory above one, a file of the
/// daemon's). Looked at: the mount's root is as covered as the place it hides (the daemon guards
/// a mount below a directory rule and follows a rule's path onto what is mounted on it moments
/// after it appears), and on a followed path the daemon began a look after the mount's
/// superblock was made and after the last attach at its mount point; until then
/// an agent watching the mount table could read or run the new file at a rule's path, or open
/// a file there for writing first and keep it. For a write (`writes`), one at or below a guarded
/// name, which no rule follows, stays unguarded. A bind of a ruled device is looked at too: the
/// walk up the file's own tree does not pass the place it is bound to. A mount in another
/// namespace is judged as the newest mount in the host's of the file's (`inode`'s) file system
/// with the same root, else its first, so that a copy of a new host mount (a namespace the
/// mount propagated into, an `unshare`, a bind or `open_tree` of it, an overlay over it) is no
/// way around; a file system mounted only in the agents' own namespaces is theirs, and so is
/// where they bind it (a sandbox binding its scratch space over a host path).
#[inline(always)]
pub unsafe fn below_unguarded_mount(
    mnt: *const u8,
    inode: *const u8,
    writes: bool,
) -> Result<bool, i32> {
    unguarded_mount_answer(gatekeeper_unguarded_mount(
        mnt as u64,
        inode as u64,
        writes as u64,
    ))
}

/// Whether the file system of `inode` is mounted in the host's namespace over a place the rules
/// care about, or for a write (`writes`) at or below a guarded name, and the daemon has not
/// looked at it yet: [`below_unguarded_mount`] of its first mount there. Its names and
/// attributes, which the hooks see without a mount, change only once the daemon has, and while
/// no daemon runs not at all. A hook's own inode argument goes through [`crate::read::untyped`]
/// first.
#[inline(always)]
pub unsafe fn on_unguarded_mount(inode: *const u8, writes: bool) -> Result<bool, i32> {
    unguarded_mount_answer(gatekeeper_unguarded_mount(0, inode as u64, writes as u64))
}

/// [`gatekeeper_unguarded_mount`]'s answers. Neither is 0: given 0, the compiler returned the
/// answer itself as a hook's verdict of 0, and 6.12's verifier, which holds a hook's return to
/// an errno, cannot tell that of a global function's answer.
const MOUNT_GUARDED: i32 = 1;
const MOUNT_UNGUARDED: i32 = 2;

#[inline(always)]
fn unguarded_mount_answer(answer: i32) -> Result<bool, i32> {
    match answer {
        MOUNT_GUARDED => Ok(false),
        MOUNT_UNGUARDED => Ok(true),
        error => Err(error),
    }
}

/// [`below_unguarded_mount`] of `mnt`, or with `mnt` 0 [`on_unguarded_mount`], as a global BPF
/// function: the verifier checks the two walks over mounts once per program rather than at
/// each call (inlined twice into `file_open`, they made 6.1's check of it take seconds).
/// [`MOUNT_UNGUARDED`], [`MOUNT_GUARDED`], or negative when unreadable or when the file system
/// has more mounts than are looked at for its first in the host's namespace.
#[unsafe(no_mangle)]
#[inline(never)]
extern "C" fn gatekeeper_unguarded_mount(mnt: u64, inode: u64, writes: u64) -> i32 {
    let inode = inode as *const u8;
    // One walk for both, which the verifier then checks once.
    let found = unsafe {
        let mnt = match mnt {
            0 => read_field(inode, &OFF_INODE_SB)
                .and_then(|sb: *const u8| host_mount_of(sb, core::ptr::null()))
                .map(|mount| mount.map_or(core::ptr::null(), |mount| vfsmount_of(mount))),
            mnt => Ok(mnt as *const u8),
        };
        match mnt {
            Ok(mnt) if mnt.is_null() => Ok(false),
            Ok(mnt) => walk_below_unguarded_mount(mnt, inode, writes != 0),
            Err(error) => Err(error),
        }
    };
    match found {
        Ok(false) => MOUNT_GUARDED,
        Ok(true) => MOUNT_UNGUARDED,
        Err(error) if error >= 0 => -1,
        Err(error) => error,
    }
}

/// The accesses a rule may ask approval for.
const RULE_ACCESS: u32 = file_rule::READ | file_rule::WRITE;

#[inline(always)]
unsafe fn walk_below_unguarded_mount(
    mnt: *const u8,
    inode: *const u8,
    writes: bool,
) -> Result<bool, i32> {
    let mut mount = unsafe { mount_of(mnt) };
    if !unsafe { mount_in_host_namespace(mount) } {
        // The file's own superblock: on 6.1 a file an overlay opened below carries the
        // overlay's mount.
        let sb: *const u8 = unsafe { read_field(inode, &OFF_INODE_SB)? };
        let root: *const u8 = unsafe { read_field(mnt, &OFF_VFSMOUNT_ROOT)? };
        match unsafe { host_mount_of(sb, root) } {
            Ok(Some(host)) => mount = host,
            Ok(None) => return Ok(false),
            // More mounts of it than are looked at: refused, and journaled.
            Err(_) => return Ok(true),
        }
    }
    for _ in 0..MOUNT_HOPS {
        if !unsafe { mount_in_host_namespace(mount) } {
            return Ok(false);
        }
        let parent: *const u8 = unsafe { read_field(mount, &OFF_MOUNT_PARENT)? };
        if parent == mount {
            return Ok(false);
        }
        let mountpoint: *const u8 = unsafe { read_field(mount, &OFF_MOUNT_MOUNTPOINT)? };
        let hidden = unsafe { placement(mountpoint)? };
        let hidden_watched = hidden.own != 0 || watched(mountpoint)?;
        // At or below a guarded name too (a file system the host mounts at `/run/samba`): the
        // names' walk stops at the mount's root, and no rule of the daemon's follows.
        if hidden.unplaced || writes && gatekeeper_below_guarded_name(mountpoint as u64) != 0 {
            return Ok(true);
        }
        if hidden.bits & RULE_ACCESS != 0 || hidden_watched {
            let root: *const u8 = unsafe { read_field(vfsmount_of(mount), &OFF_VFSMOUNT_ROOT)? };
            let covering = unsafe { placement(root)? };
            // The marks name files by device and inode, and a file system attached since the
            // daemon looked may have an old one's device number: its root's old marks say
            // nothing of the files on the followed path below it. (A directory rule's bits on
            // its root cover every file below, whichever file system it is.)
            if covering.unplaced
                || hidden.bits & RULE_ACCESS & !covering.bits != 0
                || hidden_watched
                    && (covering.own == 0 && !watched(root)?
                        || unsafe { made_since_look(mount, mountpoint)? })
            {
                return Ok(true);
            }
        }
        mount = parent;
    }
    // For a write, mounts nested deeper than that are refused rather than let through: rare on
    // real hosts, and the journal names them. (Where `/` sits on the kernel's rootfs, `/` is one
    // of them.) Reads and execs there pass: only the host mounts, and refusing every read so
    // deep would break hosts for a mount over a rule's path made that deep.
    let parent: *const u8 = unsafe { read_field(mount, &OFF_MOUNT_PARENT)? };
    Ok(writes && parent != mount)
}

/// Whether the mount `mount` (a `struct mount`) is over a place the rules care about, as far as
/// the daemon has seen it: it is below a directory rule, or the daemon followed a path onto its
/// root. What taking it away shows there is no file the daemon has looked at. Unreadable counts
/// as over one.
#[inline(always)]
pub unsafe fn over_rule_place(mount: *const u8) -> bool {
    let over = unsafe {
        read_field::<*const u8>(mount, &OFF_MOUNT_MOUNTPOINT)
            .and_then(|mountpoint| placement(mountpoint))
            .and_then(|hidden| {
                if hidden.unplaced || hidden.bits & RULE_ACCESS != 0 {
                    return Ok(true);
                }
                let root: *const u8 = read_field(vfsmount_of(mount), &OFF_VFSMOUNT_ROOT)?;
                Ok(placement(root)?.own != 0 || watched(root)?)
            })
    };
    over.unwrap_or(true)
}

/// Whether the directory `dir` (an inode) is on a path the daemon follows: it has an entry of
/// its own (a rule's directory, the directory holding a rule's file) or is a directory above
/// one (see [`watched`]). Unreadable counts as on one.
#[inline(always)]
pub unsafe fn on_followed_path(dir: *const u8) -> bool {
    let on = unsafe { alias_of(dir) }
        .and_then(|dentry| Ok(unsafe { placement(dentry)? }.own != 0 || watched(dentry)?));
    on.unwrap_or(true)
}

/// Whether the daemon follows a path through the directory or file `dentry` names: a protected
/// binary, or one of the daemon's own files (the directories above every path it follows among
/// them). (A rule's own file or directory, or the directory holding a rule's file, has a file
/// rule entry of its own.)
#[inline(always)]
fn watched(dentry: *const u8) -> Result<bool, i32> {
    match gatekeeper_watched(dentry as u64) {
        0 => Ok(false),
        1 => Ok(true),
        error => Err(error),
    }
}

/// [`watched`] as a global BPF function: its stack is not added to that of
/// [`gatekeeper_unguarded_mount`], which `file_open` calls at 6.1's limit.
#[unsafe(no_mangle)]
#[inline(never)]
extern "C" fn gatekeeper_watched(dentry: u64) -> i32 {
    let target = unsafe {
        read_field::<*const u8>(dentry as *const u8, &OFF_DENTRY_INODE)
            .and_then(|inode| inode_target(inode))
    };
    match target {
        Ok(target) => (daemon_file_bits(&target) != 0 || is_protected(&target)) as i32,
        Err(error) if error >= 0 => -1,
        Err(error) => error,
    }
}
