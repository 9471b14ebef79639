//! Whether a file a protected path named before still exists, asked by its handle: once the file
//! is freed its inode number may be given to another file, which the kernel's maps would then
//! take for the protected one.

use std::{
    ffi::CString,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::{ffi::OsStrExt as _, fs::MetadataExt as _},
    },
    path::Path,
};

use gatekeeper_common::Target;

use super::kernel_dev;

/// The longest handle a file system gives (`MAX_HANDLE_SZ`).
const MAX_HANDLE_BYTES: usize = 128;
/// `struct file_handle`'s header: `handle_bytes` and `handle_type`.
const HEADER_BYTES: usize = 8;

/// A file's handle (`struct file_handle`, header and bytes), kept in u32s for its alignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileHandle(Vec<u32>);

/// `path` opened with `flags` (and O_CLOEXEC).
fn open_path(path: &Path, flags: i32) -> Option<OwnedFd> {
    let path = CString::new(path.as_os_str().as_bytes()).ok()?;
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_CLOEXEC | flags) };
    // SAFETY: a descriptor open just now, owned by nothing else.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The (device, inode) of an open file, as the kernel writes them.
fn target_of_fd(fd: &OwnedFd) -> Option<[u64; 2]> {
    let file = std::fs::File::from(fd.try_clone().ok()?);
    let metadata = file.metadata().ok()?;
    Some([u64::from(kernel_dev(metadata.dev())), metadata.ino()])
}

/// The handle of the file `path` names, if that is still `target` (asked of one open file);
/// None where the file system gives no handles.
pub fn handle_of(path: &Path, target: Target) -> Option<FileHandle> {
    let fd = open_path(path, libc::O_PATH)?;
    if target_of_fd(&fd)? != target.data {
        return None;
    }
    let mut raw = vec![0u32; (HEADER_BYTES + MAX_HANDLE_BYTES) / 4];
    raw[0] = MAX_HANDLE_BYTES as u32;
    let mut mount_id = 0;
    // SAFETY: `raw` holds a file_handle header with room for MAX_HANDLE_BYTES after it.
    let named = unsafe {
        libc::name_to_handle_at(
            fd.as_raw_fd(),
            c"".as_ptr(),
            raw.as_mut_ptr().cast(),
            &mut mount_id,
            libc::AT_EMPTY_PATH,
        )
    };
    (named == 0).then_some(FileHandle(raw))
}

/// Whether the file behind `handle` (device `dev`) is gone, asked on the file system of the
/// directory `on`. Anything that cannot be asked (another file system there now, an error) is
/// taken for a file that still exists.
pub fn is_freed(handle: &FileHandle, dev: u32, on: &Path) -> bool {
    // Not O_PATH: open_by_handle_at takes no such descriptor for the mount.
    let Some(mount) = open_path(on, libc::O_RDONLY | libc::O_DIRECTORY) else {
        return false;
    };
    if target_of_fd(&mount).is_none_or(|[mount_dev, _]| mount_dev != u64::from(dev)) {
        return false;
    }
    let mut raw = handle.0.clone();
    // SAFETY: `raw` is a file_handle as name_to_handle_at wrote it.
    let fd = unsafe {
        libc::open_by_handle_at(mount.as_raw_fd(), raw.as_mut_ptr().cast(), libc::O_PATH)
    };
    if fd >= 0 {
        // SAFETY: a descriptor open just now, owned by nothing else.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
        return false;
    }
    std::io::Error::last_os_error().raw_os_error() == Some(libc::ESTALE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::exec_target_of;

    #[test]
    fn a_handle_tells_a_freed_file_from_one_still_linked() {
        let dir = std::env::temp_dir().join(format!("gk-handles-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("binary");
        std::fs::write(&file, "v1").unwrap();
        let target = exec_target_of(&file).unwrap();
        let handle = handle_of(&file, target).expect("ext4 and tmpfs give handles");
        let dev = target.data[0] as u32;
        // Another file at the path: no handle for the one asked about.
        assert_eq!(
            handle_of(&file, Target::exec(dev, target.data[1] + 1)),
            None
        );
        // Replaced, but a second name keeps it.
        let link = dir.join("kept");
        std::fs::hard_link(&file, &link).unwrap();
        std::fs::write(dir.join("new"), "v2").unwrap();
        std::fs::rename(dir.join("new"), &file).unwrap();
        assert!(!is_freed(&handle, dev, &dir));
        std::fs::remove_file(&link).unwrap();
        assert!(is_freed(&handle, dev, &dir));
        // Asked on another file system: not known, so kept.
        assert!(!is_freed(&handle, dev + 1, &dir));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
