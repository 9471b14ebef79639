//! cgroup v2 lookups: what the kernel calls a cgroup id is the inode number of its directory.

use std::{
    fs, io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use nix::sys::statfs::{CGROUP2_SUPER_MAGIC, statfs};

/// How deep below an agent cgroup the daemon looks when naming a cgroup id.
const MAX_WALK_DEPTH: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("{path}: {cause}")]
    Io { path: PathBuf, cause: io::Error },
    #[error("{0} is not a directory")]
    NotDirectory(PathBuf),
    #[error("{0} is not on a cgroup v2 filesystem")]
    NotCgroup2(PathBuf),
    #[error("no cgroup v2 filesystem is mounted")]
    NoCgroup2Mount,
    #[error("process {0} has no cgroup v2 membership")]
    NoMembership(u32),
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> CgroupError + '_ {
    move |cause| CgroupError::Io {
        path: path.to_owned(),
        cause,
    }
}

/// Checks that `path` is a cgroup v2 directory whose membership can be read.
pub fn check_cgroup_dir(path: &Path) -> Result<(), CgroupError> {
    let metadata = fs::metadata(path).map_err(io_error(path))?;
    if !metadata.is_dir() {
        return Err(CgroupError::NotDirectory(path.to_owned()));
    }
    let fs = statfs(path).map_err(|errno| CgroupError::Io {
        path: path.to_owned(),
        cause: errno.into(),
    })?;
    if fs.filesystem_type() != CGROUP2_SUPER_MAGIC {
        return Err(CgroupError::NotCgroup2(path.to_owned()));
    }
    let procs = path.join("cgroup.procs");
    fs::read(&procs).map_err(io_error(&procs))?;
    Ok(())
}

/// The kernel's id of the cgroup at `path`.
pub fn id_of(path: &Path) -> Result<u64, CgroupError> {
    Ok(fs::metadata(path).map_err(io_error(path))?.ino())
}

/// Where the (first) cgroup v2 hierarchy is mounted, from /proc/self/mountinfo.
pub fn mount_point() -> Result<PathBuf, CgroupError> {
    let path = Path::new("/proc/self/mountinfo");
    // An agent may put a name that is no UTF-8 above a mount point: read past it.
    let mountinfo = fs::read(path).map_err(io_error(path))?;
    String::from_utf8_lossy(&mountinfo)
        .lines()
        .find_map(|line| {
            let (mount, fs) = line.split_once(" - ")?;
            (fs.split_whitespace().next() == Some("cgroup2"))
                .then(|| mount.split_whitespace().nth(4).map(PathBuf::from))?
        })
        .ok_or(CgroupError::NoCgroup2Mount)
}

/// The cgroup directory of process `pid`, as seen from the daemon's cgroup namespace.
pub fn of_process(pid: u32) -> Result<PathBuf, CgroupError> {
    let path = PathBuf::from(format!("/proc/{pid}/cgroup"));
    let membership = fs::read_to_string(&path).map_err(io_error(&path))?;
    let relative = membership
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .ok_or(CgroupError::NoMembership(pid))?;
    Ok(mount_point()?.join(relative.trim_start_matches('/')))
}

/// The longest name `gatekeeper agent run` gives a cgroup.
pub const MAX_AGENT_NAME: usize = 64;

/// A name for an agent's cgroup: letters, digits and `._@-`, not starting with a dot (no `..`,
/// no hidden or cgroup core file names).
pub fn check_agent_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_AGENT_NAME {
        return Err(format!(
            "an agent name has 1 to {MAX_AGENT_NAME} characters"
        ));
    }
    if name.starts_with('.') || name.starts_with("cgroup.") {
        return Err(format!(
            "{name:?}: an agent name may not start with a dot or \"cgroup.\""
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "._@-".contains(*c)))
    {
        return Err(format!(
            "{name:?}: {bad:?} is not allowed in an agent name (letters, digits and ._@- are)"
        ));
    }
    Ok(())
}

/// Whether `cgroup` is one of `roots` or below one of them.
pub fn is_within(cgroup: &Path, roots: &[PathBuf]) -> bool {
    roots.iter().any(|root| cgroup.starts_with(root))
}

/// Finds the directory of cgroup `id` at or below one of `roots`.
pub fn find_by_id(roots: &[PathBuf], id: u64) -> Option<PathBuf> {
    roots.iter().find_map(|root| find_below(root, id, 0))
}

fn find_below(dir: &Path, id: u64, depth: usize) -> Option<PathBuf> {
    let metadata = fs::metadata(dir).ok()?;
    if metadata.ino() == id {
        return Some(dir.to_owned());
    }
    if depth >= MAX_WALK_DEPTH {
        return None;
    }
    fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_dir()))
        .find_map(|entry| find_below(&entry.path(), id, depth + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn within_roots_is_prefix_by_component() {
        let roots = [PathBuf::from("/sys/fs/cgroup/agents")];
        assert!(is_within(Path::new("/sys/fs/cgroup/agents"), &roots));
        assert!(is_within(Path::new("/sys/fs/cgroup/agents/a/b"), &roots));
        assert!(!is_within(Path::new("/sys/fs/cgroup/agents2"), &roots));
        assert!(!is_within(Path::new("/sys/fs/cgroup"), &roots));
    }

    #[test]
    fn own_process_cgroup_is_found_by_id() {
        let mount = mount_point().expect("cgroup v2 mounted");
        check_cgroup_dir(&mount).expect("mount point is a cgroup v2 directory");
        let own = of_process(std::process::id()).expect("own cgroup");
        let id = id_of(&own).expect("id");
        assert_eq!(find_by_id(std::slice::from_ref(&own), id), Some(own));
    }

    #[test]
    fn agent_names_stay_one_plain_directory() {
        for good in ["deploy", "agent-123", "bob@build.1", "A_b"] {
            assert_eq!(check_agent_name(good), Ok(()), "{good}");
        }
        let long = "a".repeat(MAX_AGENT_NAME + 1);
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "../up",
            "a/b",
            "cgroup.procs",
            "sp ace",
            "nl\n",
            "é",
            &long,
        ] {
            assert!(check_agent_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn non_cgroup_directory_refused() {
        assert!(matches!(
            check_cgroup_dir(Path::new("/proc")),
            Err(CgroupError::NotCgroup2(_))
        ));
    }
}
