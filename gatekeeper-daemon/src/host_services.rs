//! Where host programs outside meet the host's services by path, and where the daemon's own
//! name lookups read: kept out of agents' hands. glibc asks nscd (at `/var/run/nscd/socket`)
//! first for users, groups and host names, and the services of `/etc/nsswitch.conf` over sockets
//! in `/run` (systemd's user database and resolved, nslcd, winbind); host programs log to
//! journald's sockets (and `/dev/log`) and ask the system bus and systemd at theirs. A root
//! agent's socket in their place would decide what host programs believe (who a uid is to `sudo`
//! or `sshd`, with a password hash of the agent's choosing for a uid 0 account; which address a
//! name has; what `systemctl` says of a unit) and hear what they log. The daemon itself reads
//! `/etc/passwd`, `/etc/group` and `/etc/hosts` and asks the name servers of `/etc/resolv.conf`
//! ([`crate::users`], [`crate::resolver`]); where those are links out of the host paths, the
//! directories they lead to are guarded as well.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
};

use crate::resolver::{HOSTS, RESOLV_CONF};

/// Where host programs send syslog messages: a name of its own in `/dev`, kept by the daemon
/// (see `policy::daemon_files`).
pub const DEV_LOG: &str = "/dev/log";

/// nscd's directory: glibc asks a socket there on every host, with or without nscd installed.
pub const NSCD_DIR: &str = "/var/run/nscd";

/// The directories of host services' sockets, guarded where they exist. systemd's holds its
/// user database, resolved's, journald's, its own private one and the notify socket.
const SOCKET_DIRS: [&str; 5] = [
    NSCD_DIR,
    "/run/systemd",
    "/run/dbus",
    "/run/nslcd",
    "/run/samba/winbindd",
];

/// Makes nscd's directory where there is none, so that it is there to guard: an agent would
/// otherwise make it and stand up its own nscd.
pub fn make_nscd_dir() -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    if Path::new(NSCD_DIR).exists() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(NSCD_DIR)?;
    // Not the daemon's umask (0077): host programs must reach nscd's socket once it runs.
    std::fs::set_permissions(NSCD_DIR, std::fs::Permissions::from_mode(0o755))
}

/// The directories to guard like host paths beside `host_paths`: those of host services'
/// sockets that exist, and those the name servers' and hosts' files lead to out of the host
/// paths; none below another.
pub fn guarded_dirs(host_paths: &[PathBuf]) -> Vec<PathBuf> {
    guarded(
        host_paths,
        &SOCKET_DIRS.map(Path::new),
        &[Path::new(RESOLV_CONF), Path::new(HOSTS)],
    )
}

/// [`guarded_dirs`] of `socket_dirs` and the files `files`.
fn guarded(host_paths: &[PathBuf], socket_dirs: &[&Path], files: &[&Path]) -> Vec<PathBuf> {
    let sockets = (socket_dirs.iter())
        .filter_map(|dir| std::fs::canonicalize(dir).ok())
        .filter(|dir| dir.is_dir() && !below(dir, host_paths));
    let mut dirs: Vec<PathBuf> = Vec::new();
    for dir in sockets.chain(dirs_led_to(host_paths, files)) {
        if !below(&dir, &dirs) {
            dirs.retain(|known| !known.starts_with(&dir));
            dirs.push(dir);
        }
    }
    dirs
}

/// The names agents must neither unlink nor rename, outside the guarded directories: `/dev/log`
/// and every symlink on the way to the directories and files above (`/var/run`, a link to
/// `/run`; `/etc/resolv.conf`'s links), so each path keeps leading where it led.
pub fn kept_names() -> Vec<PathBuf> {
    let mut names = vec![PathBuf::from(DEV_LOG)];
    let paths = SOCKET_DIRS.into_iter().chain([RESOLV_CONF, HOSTS, DEV_LOG]);
    for link in paths.flat_map(|path| links_on_the_way(Path::new(path))) {
        if !names.contains(&link) {
            names.push(link);
        }
    }
    names
}

/// The names agents may not make, as (directory, name): each of the kept names `kept` (see
/// [`kept_names`]), whether or not it is there (a syslog daemon that stops takes `/dev/log` with
/// it, and makes it again as it starts), and for each host service's directory that is missing,
/// the first missing name on its way (`/run/nslcd` where nslcd is not installed), so that no
/// agent stands up a service before the host does. Directories are canonical; a name whose
/// directory is not there is left out.
pub fn guarded_names(kept: &[&Path]) -> Vec<(PathBuf, OsString)> {
    names_agents_make_not(kept, &SOCKET_DIRS.map(Path::new))
}

/// [`guarded_names`] of the kept names `kept` and the services' directories `service_dirs`.
fn names_agents_make_not(kept: &[&Path], service_dirs: &[&Path]) -> Vec<(PathBuf, OsString)> {
    let mut names: Vec<(PathBuf, OsString)> = Vec::new();
    let missing = service_dirs.iter().filter_map(|dir| first_missing(dir));
    for path in kept.iter().copied().chain(missing) {
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            continue;
        };
        let Ok(dir) = std::fs::canonicalize(parent) else {
            continue;
        };
        let entry = (dir, name.to_owned());
        if !names.contains(&entry) {
            names.push(entry);
        }
    }
    names
}

/// The first name on the way to `path` that is not there, if one is not (links followed).
fn first_missing(path: &Path) -> Option<&Path> {
    let mut at = path;
    while let Some(parent) = at.parent() {
        if parent.is_dir() {
            return (!at.exists()).then_some(at);
        }
        at = parent;
    }
    None
}

/// Every symlink met on the way from the absolute `path` to what it names, followed as the
/// kernel follows them (at most 40).
fn links_on_the_way(path: &Path) -> Vec<PathBuf> {
    let mut links = Vec::new();
    let mut pending: std::collections::VecDeque<std::ffi::OsString> = path
        .components()
        .map(|component| component.as_os_str().to_owned())
        .collect();
    let mut at = PathBuf::from("/");
    while let Some(name) = pending.pop_front() {
        if name == "/" {
            at = PathBuf::from("/");
        } else if name == ".." {
            at.pop();
        } else if name != "." {
            let next = at.join(&name);
            match std::fs::read_link(&next) {
                Ok(target) if links.len() < 40 => {
                    links.push(next);
                    for component in target.components().rev() {
                        pending.push_front(component.as_os_str().to_owned());
                    }
                }
                _ => at = next,
            }
        }
    }
    links
}

/// Whether `dir` is the root of a mount: another device than its parent's.
fn is_mount_root(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let device = |path: &Path| std::fs::metadata(path).map(|meta| meta.dev()).ok();
    dir.parent()
        .is_some_and(|parent| device(dir) != device(parent))
}

fn below(path: &Path, roots: &[PathBuf]) -> bool {
    roots.iter().any(|root| path.starts_with(root))
}

/// The directories of the files `files` below `host_paths` lead to, where not below one.
fn dirs_led_to(host_paths: &[PathBuf], files: &[&Path]) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for file in files {
        // A name outside the host paths is the agents' to change anyway.
        if !below(file, host_paths) {
            continue;
        }
        let Some(dir) = std::fs::canonicalize(file)
            .ok()
            .and_then(|target| target.parent().map(Path::to_path_buf))
        else {
            continue;
        };
        // A file straight in `/run`, or in the root of a mount (WSL's `/mnt/wsl`): guarding the
        // whole directory would hold up every write of agents there (see README, Limits).
        if dir.components().count() <= 2 || is_mount_root(&dir) {
            continue;
        }
        if !below(&dir, host_paths) && !below(&dir, &dirs) {
            dirs.push(dir);
        }
    }
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_directories_links_lead_to_are_guarded() {
        let root = std::env::temp_dir().join(format!("gk-resolver-{}", std::process::id()));
        let (etc, run) = (root.join("etc"), root.join("run/resolve"));
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::create_dir_all(&run).unwrap();
        std::fs::write(run.join("stub-resolv.conf"), "nameserver 127.0.0.53\n").unwrap();
        std::fs::write(etc.join("hosts"), "127.0.0.1 localhost\n").unwrap();
        let link = etc.join("resolv.conf");
        std::os::unix::fs::symlink(run.join("stub-resolv.conf"), &link).unwrap();
        let files = [link.as_path(), &etc.join("hosts"), &etc.join("missing")];
        let run = std::fs::canonicalize(run).unwrap();
        assert_eq!(dirs_led_to(std::slice::from_ref(&etc), &files), vec![run]);
        // Below a host path already, or a link agents could point elsewhere anyway.
        assert!(dirs_led_to(std::slice::from_ref(&root), &files).is_empty());
        assert!(dirs_led_to(&[root.join("elsewhere")], &files).is_empty());
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn every_link_on_the_way_is_found() {
        let root = std::env::temp_dir().join(format!("gk-links-{}", std::process::id()));
        let (var, run) = (root.join("var"), root.join("run"));
        std::fs::create_dir_all(run.join("resolve")).unwrap();
        std::fs::create_dir_all(&var).unwrap();
        std::fs::write(run.join("resolve/stub"), "").unwrap();
        // var/run -> ../run (relative); run/hop -> run/resolve/stub (absolute); a file beside.
        std::os::unix::fs::symlink("../run", var.join("run")).unwrap();
        std::os::unix::fs::symlink(run.join("resolve/stub"), run.join("hop")).unwrap();
        std::os::unix::fs::symlink(var.join("run/hop"), root.join("resolv.conf")).unwrap();
        assert_eq!(
            links_on_the_way(&root.join("resolv.conf")),
            [root.join("resolv.conf"), var.join("run"), run.join("hop")]
        );
        assert!(links_on_the_way(&run.join("resolve/stub")).is_empty());
        // A loop ends.
        std::os::unix::fs::symlink(root.join("loop"), root.join("loop")).unwrap();
        assert_eq!(links_on_the_way(&root.join("loop")).len(), 40);
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn kept_names_and_missing_service_directories_are_names_agents_make_not() {
        let root = std::env::temp_dir().join(format!("gk-names-{}", std::process::id()));
        let (dev, run, var) = (root.join("dev"), root.join("run"), root.join("var"));
        for dir in [&dev, &run.join("systemd"), &var] {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::os::unix::fs::symlink(&run, var.join("run")).unwrap();
        let canonical = |path: &Path| std::fs::canonicalize(path).unwrap();
        let kept = [dev.join("log"), var.join("run"), dev.join("log")];
        let kept: Vec<&Path> = kept.iter().map(PathBuf::as_path).collect();
        let services = [
            run.join("systemd"),
            var.join("run/nslcd"),
            run.join("samba/winbindd"),
            root.join("gone/deeper/still"),
        ];
        let services: Vec<&Path> = services.iter().map(PathBuf::as_path).collect();
        let name = |dir: &Path, name: &str| (canonical(dir), OsString::from(name));
        // Kept whether there or not (dev/log is not), once each; the services' directories
        // there are guarded as directories; a missing one by its first missing name, through
        // links; where even the name's directory is missing, by the first one that is.
        assert_eq!(
            names_agents_make_not(&kept, &services),
            [
                name(&dev, "log"),
                name(&var, "run"),
                name(&run, "nslcd"),
                name(&run, "samba"),
                name(&root, "gone"),
            ]
        );
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn socket_directories_are_guarded_where_they_are() {
        let root = std::env::temp_dir().join(format!("gk-services-{}", std::process::id()));
        let (etc, systemd, userdb, resolve) = (
            root.join("etc"),
            root.join("run/systemd"),
            root.join("run/systemd/userdb"),
            root.join("run/resolvconf"),
        );
        for dir in [&etc, &userdb, &resolve] {
            std::fs::create_dir_all(dir).unwrap();
        }
        let link = etc.join("resolv.conf");
        std::fs::write(resolve.join("resolv.conf"), "nameserver 127.0.0.1\n").unwrap();
        std::os::unix::fs::symlink(resolve.join("resolv.conf"), &link).unwrap();
        let canonical = |path: &Path| std::fs::canonicalize(path).unwrap();
        let sockets = [userdb.as_path(), &systemd, &root.join("run/nslcd")];
        // The one below another goes; the missing one is left out.
        assert_eq!(
            guarded(std::slice::from_ref(&etc), &sockets, &[&link]),
            [canonical(&systemd), canonical(&resolve)]
        );
        assert!(guarded(std::slice::from_ref(&root), &sockets, &[&link]).is_empty());
        std::fs::remove_dir_all(root).unwrap();
    }
}
