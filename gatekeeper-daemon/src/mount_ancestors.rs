//! The directories above the host's mount points (see
//! [`gatekeeper_common::maps::MOUNT_ANCESTORS`]), looked at in the file system each is on,
//! through a copy of one of its mounts that holds no other mount (`open_tree(2)` without
//! `AT_RECURSIVE`): a later mount over one of them, which an agent's descriptor or its own
//! mount namespace sees past, hides none of them. Names are followed one at a time, so that no
//! path is too long to look at. Behind an overlay's directories, its layers' are held too.

use std::{
    collections::{HashMap, HashSet},
    ffi::OsString,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::PathBuf,
};

use gatekeeper_common::Target;
use nix::{
    fcntl::{OFlag, OpenHow, ResolveFlag, open, openat2},
    sys::stat::{Mode, fstat},
};

use crate::{
    config::{Mount, MountPointRoute, mount_point_routes, overlay_layer_dirs},
    policy::{kernel_dev, node_of},
};

/// `open_tree(2)`: a copy of the mount, detached, without the mounts below it.
const OPEN_TREE_CLONE: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum AncestorError {
    #[error(
        "the directories above the mount point {point}: no mount of their file system is reachable by its own path (each is covered by another)"
    )]
    Unreachable { point: PathBuf },
    #[error(
        "the directories above the mount point {point}: copying the mount at {through}: {source}"
    )]
    Copy {
        point: PathBuf,
        through: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the overlay at {overlay} has a mount below it and layers given as relative paths: the directories in its layers cannot be found"
    )]
    RelativeLayers { overlay: PathBuf },
    #[error("the overlay layer's directory {dir}: {source}")]
    Layer {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("the directories above the mount point {point}: {name:?} below {through}: {source}")]
    Walk {
        point: PathBuf,
        through: PathBuf,
        name: OsString,
        source: nix::Error,
    },
}

/// What the directories above the mount points of `mounts` (the host's mount table) are now.
pub fn mount_ancestors(mounts: &[Mount]) -> Result<HashSet<Target>, AncestorError> {
    // By mount id: a copy of the mount (or the mount), or None when it cannot be had.
    let mut copies: HashMap<u64, Option<OwnedFd>> = HashMap::new();
    let mut held = HashSet::new();
    for (mount, routes) in mount_point_routes(mounts) {
        let mut walked = false;
        let mut failed = None;
        for route in &routes {
            let copy = copies.entry(route.through.id()).or_insert_with(|| {
                copy_of(route.through).unwrap_or_else(|source| {
                    failed.get_or_insert(AncestorError::Copy {
                        point: mount.point.clone(),
                        through: route.through.point.clone(),
                        source,
                    });
                    None
                })
            });
            if let Some(copy) = copy {
                walk(copy, route, &mut held).map_err(|(name, source)| AncestorError::Walk {
                    point: mount.point.clone(),
                    through: route.through.point.clone(),
                    name,
                    source,
                })?;
                walked = true;
                break;
            }
        }
        if !walked {
            return Err(failed.unwrap_or_else(|| AncestorError::Unreachable {
                point: mount.point.clone(),
            }));
        }
    }
    let layer_dirs =
        overlay_layer_dirs(mounts).map_err(|overlay| AncestorError::RelativeLayers { overlay })?;
    // A layer gone was removed while empty (agents may, as any empty directory of theirs): there
    // is nothing in it to hold. (Renamed away it would not be: it is held, and a trusted
    // rename of it leaves its directories unheld from the next look on.)
    for dir in layer_dirs.layers.into_iter().chain(layer_dirs.inside) {
        match node_of(&dir) {
            Ok(node) => {
                held.insert(node);
            }
            // Not in that layer, or the layer gone.
            Err(error)
                if error.kind() == std::io::ErrorKind::NotFound
                    || error.raw_os_error() == Some(libc::ENOTDIR) => {}
            Err(source) => return Err(AncestorError::Layer { dir, source }),
        }
    }
    Ok(held)
}

/// A copy of `mount` without the mounts below it, when its own path leads to it (not to a mount
/// over it or over a directory above). An unbindable mount, which has no copy, is itself: the
/// walk down from it crosses no mount.
fn copy_of(mount: &Mount) -> std::io::Result<Option<OwnedFd>> {
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let Ok(dir) = open(&mount.point, flags, Mode::empty()) else {
        return Ok(None);
    };
    if mount_id(&dir)? != mount.id() {
        return Ok(None);
    }
    // SAFETY: an open descriptor and a NUL-terminated empty path, which outlive the call.
    let copy = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            dir.as_raw_fd(),
            c"".as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as u32 | libc::AT_EMPTY_PATH as u32,
        )
    };
    if copy < 0 {
        let error = std::io::Error::last_os_error();
        return match error.raw_os_error() {
            Some(libc::EINVAL) => Ok(Some(dir)),
            _ => Err(error),
        };
    }
    // SAFETY: open_tree returned a descriptor of its own, owned from here.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(copy as i32) }))
}

/// The id (as /proc/self/mountinfo numbers it) of the mount `dir` is on.
fn mount_id(dir: &OwnedFd) -> std::io::Result<u64> {
    // SAFETY: statx is plain data, all zeroes a valid value.
    let mut statx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: an open descriptor, an empty path and a statx buffer that outlive the call.
    let done = unsafe {
        libc::statx(
            dir.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_MNT_ID,
            &mut statx,
        )
    };
    if done != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(statx.stx_mnt_id)
}

/// Follows `route`'s names down from `copy` (its mount's root) to the mount point's directory,
/// holding each directory after the first `held_from` names; the name that could not be followed.
fn walk(
    copy: &OwnedFd,
    route: &MountPointRoute,
    held: &mut HashSet<Target>,
) -> Result<(), (OsString, nix::Error)> {
    // Not across a mount (none in a copy; a mount over a name below an unbindable mount, whose
    // directory the walk cannot see), nor through a symlink (a name changed since the table).
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_NO_XDEV | ResolveFlag::RESOLVE_NO_SYMLINKS);
    let Some((_, directories)) = route.names.split_last() else {
        return Ok(());
    };
    let mut dir: Option<OwnedFd> = None;
    for (index, name) in directories.iter().enumerate() {
        let at = dir.as_ref().unwrap_or(copy);
        let failed = |error| (name.clone(), error);
        let next = openat2(at, name.as_os_str(), how).map_err(failed)?;
        if index >= route.held_from {
            let stat = fstat(&next).map_err(failed)?;
            held.insert(Target::exec(kernel_dev(stat.st_dev), stat.st_ino));
        }
        dir = Some(next);
    }
    Ok(())
}
