//! The directories above the host's mount points (see
//! [`gatekeeper_common::maps::MOUNT_ANCESTORS`]), looked at in the file system each is on,
//! through a copy of one of its mounts that holds no other mount (`open_tree(2)` without
//! `AT_RECURSIVE`): a later mount over one of them, which an agent's descriptor or its own
//! mount namespace sees past, hides none of them. Names are followed one at a time, so that no
//! path is too long to look at. Behind an overlay's directories, its layers' are held too,
//! found by handles of the layers taken when the daemon first saw the overlay.

use std::{
    collections::{HashMap, HashSet},
    ffi::OsString,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use gatekeeper_common::Target;
use nix::{
    fcntl::{OFlag, OpenHow, ResolveFlag, open, openat, openat2},
    sys::stat::{Mode, fstat},
};

use crate::{
    config::{Mount, Overlay, mount_point_routes, names_of, overlays},
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
    #[error(
        "the overlay layer {layer}: no mount of its file system is reachable by its own path (each is covered by another)"
    )]
    LayerUnreachable { layer: PathBuf },
    #[error("the overlay layer {layer} is on a mount made since the mount table was read")]
    LayerMountNew { layer: PathBuf },
    #[error(
        "the overlay {overlay} (mount id) has overlays stacked deeper on it than the kernel stacks them"
    )]
    StackedDeeper { overlay: u64 },
    #[error("the overlay layer {layer}: {name:?} in it: {source}")]
    LayerWalk {
        layer: PathBuf,
        name: OsString,
        source: nix::Error,
    },
    #[error(
        "the overlay at {overlay}: its directory {dir} above a mount point is in none of its layers as found (a layer's path may lead elsewhere than when the overlay was mounted: covered or replaced before the daemon first saw it)"
    )]
    BehindNothing { overlay: PathBuf, dir: PathBuf },
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
pub fn mount_ancestors(
    mounts: &[Mount],
    layers: &mut LayerHandles,
) -> Result<HashSet<Target>, AncestorError> {
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
                // The mount point itself the kernel refuses to rename.
                let directories = route.names.split_last().map_or(&[][..], |(_, above)| above);
                let walked_down = walk_down(copy, directories, route.held_from, &mut held);
                walked_down.map_err(|(name, source)| AncestorError::Walk {
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
    let overlays = overlays(mounts);
    let mut stacked = Vec::new();
    for overlay in &overlays {
        let (copies, held, stacked) = (&mut copies, &mut held, &mut stacked);
        layer_dirs(overlay, mounts, layers, copies, held, stacked)
            .inspect_err(|error| layers.forget_if_misled(overlay, error))?;
    }
    // A layer on another overlay: renaming the directories there, in that overlay's own layers,
    // moves the first overlay's directories too. Overlays stack two deep at most (the kernel's
    // FILESYSTEM_MAX_STACK_DEPTH); a deeper stack, were there one, fails the look.
    for _ in 0..2 {
        let mut below: HashMap<u64, Vec<(Vec<OsString>, usize)>> = HashMap::new();
        for (id, names) in stacked.drain(..) {
            below.entry(id).or_default().push(names);
        }
        for overlay in &overlays {
            if let Some(below) = below.remove(&overlay.mount.id()) {
                let layers_below = Overlay {
                    below,
                    layers: overlay.layers.clone(),
                    ..*overlay
                };
                let (copies, held, stacked) = (&mut copies, &mut held, &mut stacked);
                layer_dirs(&layers_below, mounts, layers, copies, held, stacked)
                    .inspect_err(|error| layers.forget_if_misled(overlay, error))?;
            }
        }
    }
    if let Some((id, _)) = stacked.first() {
        return Err(AncestorError::StackedDeeper { overlay: *id });
    }
    layers.keep_only(mounts);
    Ok(held)
}

/// The overlays' layers as the daemon first saw them: by overlay and layer path, a handle of
/// the layer's directory, which finds it later wherever it was renamed to, whatever was mounted
/// over its path or linked in its way since; None where its file system gives no handles (the
/// layer is followed by its path then).
#[derive(Default)]
pub struct LayerHandles {
    first_seen: HashMap<LayerKey, Option<LayerHandle>>,
}

/// An overlay's mount id and device (a mount id may be used again), and a layer's path.
type LayerKey = (u64, Option<u32>, PathBuf);

impl LayerHandles {
    /// Forgets `overlay`'s layers, to be taken again where their paths lead at the next look,
    /// when its look failed since they led elsewhere (a mount over one) when first taken.
    fn forget_if_misled(&mut self, overlay: &Overlay, error: &AncestorError) {
        if !matches!(error, AncestorError::BehindNothing { .. }) {
            return;
        }
        let id = (overlay.mount.id(), overlay.mount.kernel_device());
        (self.first_seen).retain(|(mount, device, _), _| (*mount, *device) != id);
    }

    /// Forgets the layers of overlays no longer mounted.
    fn keep_only(&mut self, mounts: &[Mount]) {
        let mounted: HashSet<_> = (mounts.iter())
            .filter(|mount| mount.is_overlay())
            .map(|mount| (mount.id(), mount.kernel_device()))
            .collect();
        (self.first_seen).retain(|(id, device, _), _| mounted.contains(&(*id, *device)));
    }
}

/// A file handle (`name_to_handle_at(2)`), and the file system (mountinfo's `major:minor`) to
/// open it in.
struct LayerHandle {
    device: Vec<u8>,
    handle: FileHandle,
}

/// `struct file_handle` with room for the largest handle (`MAX_HANDLE_SZ`).
#[repr(C)]
struct FileHandle {
    bytes: u32,
    kind: i32,
    handle: [u8; 128],
}

/// Holds the directories of `overlay`'s layers behind its directories above the mount points
/// of the mounts on it, and each layer's own; takes a handle of each layer not seen before.
/// Adds to `stacked`, by the overlay a layer is on, the names of the directories held in it.
fn layer_dirs(
    overlay: &Overlay,
    mounts: &[Mount],
    layers: &mut LayerHandles,
    copies: &mut HashMap<u64, Option<OwnedFd>>,
    held: &mut HashSet<Target>,
    stacked: &mut Vec<(u64, (Vec<OsString>, usize))>,
) -> Result<(), AncestorError> {
    let id = (overlay.mount.id(), overlay.mount.kernel_device());
    let xattr = match overlay.user_xattrs {
        true => c"user.overlay.redirect",
        false => c"trusted.overlay.redirect",
    };
    // For each mount on it, the ways to the directories behind the overlay's (see
    // [`behind_in_layer`]): at first their names.
    let mut ways: Vec<Ways> = (overlay.below.iter())
        .map(|(names, _)| {
            (1..=names.len())
                .map(|depth| vec![names[..depth].to_vec()])
                .collect()
        })
        .collect();
    // For each mount on it, by depth: whether a layer has a directory behind the overlay's.
    let mut behind: Vec<Vec<bool>> = (overlay.below.iter())
        .map(|(names, _)| vec![false; names.len()])
        .collect();
    for layer in &overlay.layers {
        if !layer.is_absolute() {
            // Given relative to its mounter's directory then: the layer cannot be found.
            if overlay.below.is_empty() {
                continue;
            }
            return Err(AncestorError::RelativeLayers {
                overlay: overlay.mount.point.clone(),
            });
        }
        let key = (id.0, id.1, layer.clone());
        let seen = match layers.first_seen.get(&key) {
            Some(seen) => seen,
            None => {
                let Some(seen) = first_sight(layer, mounts)? else {
                    // Gone (removed while empty: nothing in it to hold); looked for again later.
                    continue;
                };
                layers.first_seen.entry(key).or_insert(seen)
            }
        };
        if overlay.below.is_empty() {
            continue;
        }
        let root = match seen {
            Some(seen) => open_handle(seen, mounts, copies, layer)?.map(|root| (root, None)),
            None => open_by_path(layer, mounts, held)?,
        };
        let Some((root, on_overlay)) = root else {
            continue;
        };
        hold(&root, held).map_err(|error| AncestorError::Layer {
            dir: layer.clone(),
            source: error.into(),
        })?;
        let each_below = overlay.below.iter().zip(&mut ways).zip(&mut behind);
        for (((names, held_from), ways), behind) in each_below {
            let walk = Walk {
                names,
                held_from: *held_from,
                xattr,
            };
            let found =
                behind_in_layer(&root, &walk, ways, behind, held).map_err(|(name, source)| {
                    AncestorError::LayerWalk {
                        layer: layer.clone(),
                        name,
                        source,
                    }
                })?;
            // Each held here is a directory of that overlay: those behind it are held in its
            // layers too.
            for path in found
                .iter()
                .filter_map(|path| Some((path, on_overlay.as_ref()?)))
            {
                let ((inner, place), path) = (path.1, path.0);
                let names: Vec<_> = place.iter().chain(path).cloned().collect();
                let held_from = names.len() - 1;
                stacked.push((*inner, (names, held_from)));
            }
        }
    }
    // Each of the overlay's directories is behind something in a layer: one behind nothing,
    // as the daemon finds the layers, tells that a layer's path leads elsewhere than the
    // overlay's does (covered or replaced before the daemon first saw it).
    for ((names, held_from), behind) in overlay.below.iter().zip(&behind) {
        let missing = (*held_from..names.len()).find(|depth| !behind[*depth]);
        if let Some(depth) = missing {
            return Err(AncestorError::BehindNothing {
                overlay: overlay.mount.point.clone(),
                dir: names[..=depth].iter().collect(),
            });
        }
    }
    Ok(())
}

/// A layer's directory as first seen: its handle, None where its file system gives none, or
/// nothing when it is gone.
fn first_sight(
    layer: &Path,
    mounts: &[Mount],
) -> Result<Option<Option<LayerHandle>>, AncestorError> {
    let failed = |source| AncestorError::Layer {
        dir: layer.to_path_buf(),
        source,
    };
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let dir = match open(layer, flags, Mode::empty()) {
        Ok(dir) => dir,
        Err(nix::Error::ENOENT | nix::Error::ENOTDIR) => return Ok(None),
        Err(error) => return Err(failed(error.into())),
    };
    let mut handle = FileHandle {
        bytes: 128,
        kind: 0,
        handle: [0; 128],
    };
    let mut mount_id: libc::c_int = 0;
    // SAFETY: an open descriptor, an empty path, a handle buffer as large as `bytes` says and
    // an int, all outliving the call.
    let done = unsafe {
        libc::name_to_handle_at(
            dir.as_raw_fd(),
            c"".as_ptr(),
            (&raw mut handle).cast(),
            &mut mount_id,
            libc::AT_EMPTY_PATH,
        )
    };
    if done != 0 {
        let error = std::io::Error::last_os_error();
        return match error.raw_os_error() {
            Some(libc::EOPNOTSUPP | libc::EOVERFLOW) => Ok(Some(None)),
            _ => Err(failed(error)),
        };
    }
    let mount = layer_mount(mounts, u64::from(mount_id.unsigned_abs()), layer)?;
    // Where it is in that overlay is known by its path only.
    if mount.is_overlay() {
        return Ok(Some(None));
    }
    Ok(Some(Some(LayerHandle {
        device: mount.device().to_vec(),
        handle,
    })))
}

/// The layer directory `seen` is a handle of, opened in a copy of a mount of its file system;
/// nothing when it is gone.
fn open_handle(
    seen: &LayerHandle,
    mounts: &[Mount],
    copies: &mut HashMap<u64, Option<OwnedFd>>,
    layer: &Path,
) -> Result<Option<OwnedFd>, AncestorError> {
    let failed = |source| AncestorError::Layer {
        dir: layer.to_path_buf(),
        source,
    };
    let mut copy_failed = None;
    for mount in mounts.iter().filter(|mount| mount.device() == seen.device) {
        let copy = copies.entry(mount.id()).or_insert_with(|| {
            copy_of(mount).unwrap_or_else(|error| {
                copy_failed.get_or_insert(error);
                None
            })
        });
        let Some(copy) = copy else {
            continue;
        };
        // open_by_handle_at takes no O_PATH descriptor (as open_tree's are).
        let read = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let anchor =
            openat(copy, ".", read, Mode::empty()).map_err(|error| failed(error.into()))?;
        let mut handle = FileHandle { ..seen.handle };
        let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC;
        // SAFETY: an open descriptor and a handle that outlive the call.
        let dir =
            unsafe { libc::open_by_handle_at(anchor.as_raw_fd(), (&raw mut handle).cast(), flags) };
        if dir < 0 {
            let error = std::io::Error::last_os_error();
            return match error.raw_os_error() {
                Some(libc::ESTALE) => Ok(None),
                _ => Err(failed(error)),
            };
        }
        // SAFETY: open_by_handle_at returned a descriptor of its own, owned from here.
        return Ok(Some(unsafe { OwnedFd::from_raw_fd(dir) }));
    }
    Err(match copy_failed {
        Some(source) => failed(source),
        None => AncestorError::LayerUnreachable {
            layer: layer.to_path_buf(),
        },
    })
}

/// Where the layer has no handle (its file system gives none, or it is on another overlay): the
/// layer opened by its path, as a copy without the mounts below it, and where it is in the
/// overlay it is on, if it is; nothing when it is gone. The directories above it are held (a
/// symlink on the way, renamed, leads elsewhere).
fn open_by_path(
    layer: &Path,
    mounts: &[Mount],
    held: &mut HashSet<Target>,
) -> Result<Option<(OwnedFd, Option<OverlayPlace>)>, AncestorError> {
    let failed = |source| AncestorError::Layer {
        dir: layer.to_path_buf(),
        source,
    };
    for dir in layer.ancestors().filter(|dir| dir.parent().is_some()) {
        match node_of(dir) {
            Ok(node) => {
                held.insert(node);
            }
            Err(error) if is_gone(&error) => {}
            Err(source) => return Err(failed(source)),
        }
    }
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let dir = match open(layer, flags, Mode::empty()) {
        Ok(dir) => dir,
        Err(error) if is_gone(&error.into()) => return Ok(None),
        Err(error) => return Err(failed(error.into())),
    };
    let on = mount_id(&dir).map_err(failed)?;
    let mount = layer_mount(mounts, on, layer)?;
    let on_overlay = if mount.is_overlay() {
        let path = std::fs::read_link(format!("/proc/self/fd/{}", dir.as_raw_fd()));
        let path = path.map_err(failed)?;
        let inside = path.strip_prefix(&mount.point).map_err(|_| {
            failed(std::io::Error::other(format!(
                "found at {}, not below the overlay at {}",
                path.display(),
                mount.point.display()
            )))
        })?;
        Some((mount.id(), names_of(&mount.root().join(inside))))
    } else {
        None
    };
    Ok(Some((without_mounts(dir).map_err(failed)?, on_overlay)))
}

/// An overlay's mount id, and the names from its root down to a directory in it.
type OverlayPlace = (u64, Vec<OsString>);

/// A path that leads to no directory: gone, no directory, or a loop of symlinks.
fn is_gone(error: &std::io::Error) -> bool {
    error.kind() == std::io::ErrorKind::NotFound
        || matches!(error.raw_os_error(), Some(libc::ENOTDIR | libc::ELOOP))
}

/// A name an overlay looks a directory up by in the layers below one that left it (an
/// `overlay.redirect` extended attribute, set when a directory is renamed in an overlay with
/// `redirect_dir=on`): another name in the same directory, or a path from the layer's root.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Redirect {
    Name(OsString),
    FromRoot(Vec<OsString>),
}

/// What to look for in each layer: the names from the overlay's root down to a mount point on
/// it, how many of the first are above the overlay mount's root, and the redirects' attribute.
struct Walk<'a> {
    names: &'a [OsString],
    held_from: usize,
    xattr: &'a std::ffi::CStr,
}

/// By depth below the overlay's root, the paths (from a layer's root) the overlay may look the
/// directory at that depth up by in a layer.
type Ways = Vec<Vec<Vec<OsString>>>;

/// At most this many ways to one directory; more fails the look.
const MAX_WAYS: usize = 64;

/// In the layer whose root `root` is, the directories behind the overlay's directories
/// `walk.names` (from its root), held from depth `walk.held_from` on, and those on the ways to
/// them; their paths in the layer; `behind` marks the depths a directory was found at. Each is
/// looked up by each of its `ways`: its names, and what the redirects of the layers above made
/// of them. A redirect met on the way here (on the directory or one above it) makes another
/// way for the layers below, as the overlay rewrites the path it looks up there; all are held,
/// since the overlay may have looked a directory up by any of them. A way that leads to no
/// directory here (none there, no directory, a symlink) ends there.
fn behind_in_layer(
    root: &OwnedFd,
    walk: &Walk,
    ways: &mut Ways,
    behind: &mut [bool],
    held: &mut HashSet<Target>,
) -> Result<Vec<Vec<OsString>>, (OsString, nix::Error)> {
    let Walk {
        names,
        held_from,
        xattr,
    } = *walk;
    let how = beneath();
    let mut found = Vec::new();
    let mut redirected_ways = Vec::new();
    for (depth, paths) in ways.iter().enumerate() {
        for path in paths {
            // The path the layers below look up, as the redirects met so far rewrote it: it
            // ends with the names still to follow.
            let mut below = path.clone();
            // Every directory on a redirected way (renaming one there would hide the redirect
            // on it from the daemon); on the names themselves, those of the overlay's mount.
            let names_themselves = path.as_slice() == &names[..=depth];
            let mut dir: Option<OwnedFd> = None;
            let mut opened = 0;
            for (index, name) in path.iter().enumerate() {
                let at = dir.as_ref().unwrap_or(root);
                let next = match openat2(at, name.as_os_str(), how) {
                    Ok(next) => next,
                    Err(nix::Error::ENOENT | nix::Error::ENOTDIR | nix::Error::ELOOP) => break,
                    Err(error) => return Err((name.clone(), error)),
                };
                let failed = |error| (name.clone(), error);
                if !names_themselves || index >= held_from {
                    hold(&next, held).map_err(failed)?;
                    let on_the_way = path[..=index].to_vec();
                    if !found.contains(&on_the_way) {
                        found.push(on_the_way);
                    }
                }
                if let Some(redirect) = redirect_of(&next, xattr).map_err(failed)? {
                    below = redirected(&below, &path[index + 1..], redirect);
                }
                dir = Some(next);
                opened += 1;
            }
            if opened == path.len() {
                behind[depth] = true;
            }
            if below != *path {
                redirected_ways.push((depth, below));
            }
        }
    }
    // For the layers below: the redirected way, and the ways to the directories below it.
    for (depth, way) in redirected_ways {
        for (deeper, paths) in ways.iter_mut().enumerate().skip(depth) {
            let path: Vec<_> = way
                .iter()
                .chain(&names[depth + 1..=deeper])
                .cloned()
                .collect();
            if !paths.contains(&path) {
                paths.push(path);
            }
            if paths.len() > MAX_WAYS {
                return Err((names[deeper].clone(), nix::Error::E2BIG));
            }
        }
    }
    Ok(found)
}

/// `below`, the path the layers below look up (ending with the names `rest` still to follow),
/// as the overlay rewrites it for a redirect on the directory before `rest`.
fn redirected(below: &[OsString], rest: &[OsString], redirect: Redirect) -> Vec<OsString> {
    let this = below.len().saturating_sub(rest.len() + 1);
    let mut rewritten: Vec<OsString> = match redirect {
        Redirect::Name(name) => below[..this].iter().cloned().chain([name]).collect(),
        Redirect::FromRoot(path) => path,
    };
    rewritten.extend_from_slice(rest);
    rewritten
}

/// The redirect the overlay left on directory `dir`, if any (see [`Redirect`]).
fn redirect_of(dir: &OwnedFd, xattr: &std::ffi::CStr) -> nix::Result<Option<Redirect>> {
    // An O_PATH descriptor has no extended attributes to read: its file's, through /proc.
    let path = std::ffi::CString::new(format!("/proc/self/fd/{}", dir.as_raw_fd()))
        .map_err(|_| nix::Error::EINVAL)?;
    // Any size the file system takes (the overlay reads any): asked first, then read; a value
    // that grew in between is asked again.
    let mut value: Vec<u8> = Vec::new();
    for _ in 0..4 {
        // SAFETY: NUL-terminated names and a buffer as large as said, all outliving the call.
        let size = unsafe {
            libc::getxattr(
                path.as_ptr(),
                xattr.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        match usize::try_from(size) {
            Ok(size) if value.is_empty() && size > 0 => value.resize(size, 0),
            Ok(size) => {
                value.truncate(size);
                return Ok(redirect(&value));
            }
            Err(_) => match nix::Error::last() {
                nix::Error::ENODATA | nix::Error::EOPNOTSUPP => return Ok(None),
                nix::Error::ERANGE => value.clear(),
                error => return Err(error),
            },
        }
    }
    // Changed at every read.
    Err(nix::Error::ERANGE)
}

/// The redirect an `overlay.redirect` value says.
fn redirect(value: &[u8]) -> Option<Redirect> {
    use std::os::unix::ffi::OsStrExt as _;
    let text = std::ffi::OsStr::from_bytes(value);
    match value.first() {
        Some(b'/') => Some(Redirect::FromRoot(names_of(Path::new(text)))),
        // The overlay takes no other kind (nor would it follow this one).
        Some(_) if !value.contains(&b'/') => Some(Redirect::Name(text.to_owned())),
        _ => None,
    }
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
    without_mounts(dir).map(Some)
}

/// A copy of the mount `dir` is on, rooted at `dir`, without the mounts below it; `dir` itself
/// when its mount is unbindable (the walk down from it crosses no mount).
fn without_mounts(dir: OwnedFd) -> std::io::Result<OwnedFd> {
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
            Some(libc::EINVAL) => Ok(dir),
            _ => Err(error),
        };
    }
    // SAFETY: open_tree returned a descriptor of its own, owned from here.
    Ok(unsafe { OwnedFd::from_raw_fd(copy as i32) })
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

/// Follows `names` down from `from`, one at a time, and holds each directory reached after the
/// first `held_from` names; the name that could not be followed.
fn walk_down(
    from: &OwnedFd,
    names: &[OsString],
    held_from: usize,
    held: &mut HashSet<Target>,
) -> Result<(), (OsString, nix::Error)> {
    let how = beneath();
    let mut dir: Option<OwnedFd> = None;
    for (index, name) in names.iter().enumerate() {
        let at = dir.as_ref().unwrap_or(from);
        let next = openat2(at, name.as_os_str(), how).map_err(|error| (name.clone(), error))?;
        if index >= held_from {
            hold(&next, held).map_err(|error| (name.clone(), error))?;
        }
        dir = Some(next);
    }
    Ok(())
}

/// How the walks open a directory's name: not across a mount (none in a copy; a mount over a
/// name below an unbindable mount, whose directory the walk cannot see), nor through a symlink
/// (a name changed since the table, or one an agent put in a layer).
fn beneath() -> OpenHow {
    OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_NO_XDEV | ResolveFlag::RESOLVE_NO_SYMLINKS)
}

/// The mount of `mounts` a layer's directory was found on.
fn layer_mount<'a>(mounts: &'a [Mount], id: u64, layer: &Path) -> Result<&'a Mount, AncestorError> {
    // Mounted since the table was read: the next look, which that change wakes, takes it.
    (mounts.iter())
        .find(|mount| mount.id() == id)
        .ok_or_else(|| AncestorError::LayerMountNew {
            layer: layer.to_path_buf(),
        })
}

/// Holds the directory `dir` is open on.
fn hold(dir: &OwnedFd, held: &mut HashSet<Target>) -> nix::Result<()> {
    let stat = fstat(dir)?;
    held.insert(Target::exec(kernel_dev(stat.st_dev), stat.st_ino));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(path: &str) -> Vec<OsString> {
        names_of(Path::new(path))
    }

    #[test]
    fn redirects_rewrite_the_path_the_layers_below_look_up() {
        assert_eq!(redirect(b"la"), Some(Redirect::Name("la".into())));
        assert_eq!(redirect(b"/r/t"), Some(Redirect::FromRoot(names("r/t"))));
        // Neither an empty value nor a relative one with a slash is a redirect to the overlay.
        assert_eq!((redirect(b""), redirect(b"a/b")), (None, None));
        // `ra` (redirect `la`) on the way to `ra/b/m`: the layers below look up `la/b/m`.
        let path = names("ra/b/m");
        let rewritten = redirected(&path, &path[1..], Redirect::Name("la".into()));
        assert_eq!(rewritten, names("la/b/m"));
        // Then `/s/t` on `b`, where the path was rewritten above it.
        let rewritten = redirected(&rewritten, &path[2..], Redirect::FromRoot(names("s/t")));
        assert_eq!(rewritten, names("s/t/m"));
        // A relative redirect on the last directory keeps its parent's rewritten path.
        let below = names("s/t/m");
        assert_eq!(
            redirected(&below, &[], Redirect::Name("n".into())),
            names("s/t/n")
        );
    }
}
