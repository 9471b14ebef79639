//! Where host programs outside meet the host's services by path, and where the daemon's own
//! name lookups read: kept out of agents' hands. glibc asks nscd (at `/var/run/nscd/socket`)
//! first for users, groups and host names, and the services of `/etc/nsswitch.conf` over sockets
//! in `/run` (systemd's user database and resolved, nslcd, winbind, avahi) and `/var/lib/sss`
//! (sssd), or reads their records there (systemd's `/run/userdb`); host programs log to
//! journald's sockets (and `/dev/log`) and ask the system bus and systemd at theirs. A root
//! agent's socket or record in their place would decide what host programs believe (who a uid
//! is to `sudo` or `sshd`, with a password hash of the agent's choosing for a uid 0 account;
//! which address a name has; what `systemctl` says of a unit) and hear what they log. The daemon
//! itself reads `/etc/passwd`, `/etc/group` and `/etc/hosts` and asks the name servers of
//! `/etc/resolv.conf` ([`crate::users`], [`crate::resolver`]); where those are links out of the
//! host paths, the directories they lead to are guarded as well.

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

/// The directories of host services' sockets and of the records glibc's name services read
/// in place, each as (the directory it sits in, its path there): guarded where they exist, and
/// by the first name of that path always (see [`guarded_names`]). systemd's holds its user
/// database, resolved's, journald's, its own private one and the notify socket; systemd's name
/// service also reads user records straight from `/run/userdb` and `/run/host/userdb`;
/// avahi's answers `.local` names (nss-mdns), sssd's pipes and winbind's answer for users,
/// and winbind's Samba's RPC sockets sit beside it.
const SOCKET_DIRS: [(&str, &str); 9] = [
    ("/var/run", "nscd"),
    ("/run", "systemd"),
    ("/run", "dbus"),
    ("/run", "nslcd"),
    ("/run", "samba/winbindd"),
    ("/run", "userdb"),
    ("/run", "host/userdb"),
    ("/run", "avahi-daemon"),
    ("/var/lib/sss", "pipes"),
];

/// The places in `/run` from which host programs that run as root take code or configuration,
/// kept as [`SOCKET_DIRS`] are: what an agent put there would run, or decide what runs, outside
/// the agent cgroups.
const CODE_DIRS: [(&str, &str); 33] = [
    // udev's rules (`RUN+=` at the next device event) and the device database libudev believes.
    ("/run", "udev"),
    // kmod: `install` lines run at the next module the host has loaded; depmod maps a module's
    // name to a file of the agent's.
    ("/run", "modprobe.d"),
    ("/run", "depmod.d"),
    // What systemd's services take in when started again (`systemd-sysctl`, which udev runs for
    // each new network link; tmpfiles, binfmt, modules-load, sysusers, repart), the environment
    // of every user manager (root's too), the credentials `LoadCredential=` looks for, and the
    // system extensions and portable services laid over `/usr`, `/opt` and `/etc`.
    ("/run", "sysctl.d"),
    ("/run", "tmpfiles.d"),
    ("/run", "binfmt.d"),
    ("/run", "modules-load.d"),
    ("/run", "sysusers.d"),
    ("/run", "repart.d"),
    ("/run", "environment.d"),
    ("/run", "credstore"),
    ("/run", "credstore.encrypted"),
    ("/run", "extensions"),
    ("/run", "confexts"),
    ("/run", "portables"),
    // Root's own sessions: its user manager's units and its session bus.
    ("/run/user", "0"),
    // The initramfs systemd hands the machine to at shutdown (`/run/initramfs/shutdown`, which
    // could rewrite the root file system for the next boot).
    ("/run", "initramfs"),
    // The network: NetworkManager's runtime connections and settings, netplan's (routes, name
    // servers, VPNs), and where resolvconf, connman, netconfig and dnsmasq keep the name servers
    // `/etc/resolv.conf` may come to point at.
    ("/run", "NetworkManager"),
    ("/run", "netplan"),
    ("/run", "resolvconf"),
    ("/run", "connman"),
    ("/run", "netconfig"),
    ("/run", "dnsmasq"),
    // The clock's servers as DHCP gave them (chrony's `sourcedir`, ntp's file) and chrony's
    // command socket.
    ("/run", "chrony-dhcp"),
    ("/run", "ntp.conf.dhcp"),
    ("/run", "chrony"),
    // Container engines' state: runc runs a container's hooks, as root on the host, from it.
    ("/run", "docker"),
    ("/run", "containerd"),
    // polkit's rules; what the host's storage tools believe of its disks (blkid's cache, LVM's
    // hints); pam_motd's messages, shown on operators' terminals; the volatile system journal.
    ("/run", "polkit-1"),
    ("/run", "blkid"),
    ("/run", "lvm"),
    ("/run", "motd.d"),
    ("/run", "log"),
];

/// [`SOCKET_DIRS`] and [`CODE_DIRS`].
fn service_dirs() -> impl Iterator<Item = (&'static str, &'static str)> {
    SOCKET_DIRS.into_iter().chain(CODE_DIRS)
}

/// The paths of [`service_dirs`].
fn service_paths() -> Vec<PathBuf> {
    service_dirs()
        .map(|(base, path)| Path::new(base).join(path))
        .collect()
}

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

/// The directories to guard like host paths beside `host_paths`: those of the services' lists
/// that exist (host services' sockets, and where root's programs take code from), and those the
/// name servers' and hosts' files lead to out of the host paths; none below another.
pub fn guarded_dirs(host_paths: &[PathBuf]) -> Vec<PathBuf> {
    let service_paths = service_paths();
    let service_paths: Vec<&Path> = service_paths.iter().map(PathBuf::as_path).collect();
    guarded(
        host_paths,
        &service_paths,
        &[Path::new(RESOLV_CONF), Path::new(HOSTS)],
    )
}

/// [`guarded_dirs`] of the services' directories `service_dirs` and the files `files`.
fn guarded(host_paths: &[PathBuf], service_dirs: &[&Path], files: &[&Path]) -> Vec<PathBuf> {
    let services = (service_dirs.iter())
        .filter_map(|dir| std::fs::canonicalize(dir).ok())
        .filter(|dir| dir.is_dir() && !below(dir, host_paths));
    let mut dirs: Vec<PathBuf> = Vec::new();
    for dir in services.chain(dirs_led_to(host_paths, files)) {
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
    let files = [RESOLV_CONF, HOSTS, DEV_LOG].map(PathBuf::from);
    for link in (service_paths().iter().chain(&files)).flat_map(|path| links_on_the_way(path)) {
        if !names.contains(&link) {
            names.push(link);
        }
    }
    names
}

/// The names agents may not make, as (directory, name): each of the kept names `kept` (see
/// [`kept_names`]), whether or not it is there (a syslog daemon that stops takes `/dev/log` with
/// it, and makes it again as it starts), and the first name of each host service's directory in the
/// directory it sits in (`/run/nslcd`; `/run/samba` for winbind's), there or not. So no agent
/// stands up a service before the host does, nor while its own service has taken its directory away
/// (systemd removes a unit's runtime directory as it stops), and nothing is made up to seven names
/// below either (the kernel's `LEVELS`), also in a directory the host made again. Directories are
/// canonical; a name whose directory is not there is left out.
pub fn guarded_names(kept: &[&Path]) -> Vec<(PathBuf, OsString)> {
    names_agents_make_not(
        kept,
        &service_dirs()
            .map(|(base, path)| (Path::new(base), Path::new(path)))
            .collect::<Vec<_>>(),
    )
}

/// [`guarded_names`] of the kept names `kept` and the services' directories `service_dirs`,
/// each (the directory it sits in, its path there).
fn names_agents_make_not(
    kept: &[&Path],
    service_dirs: &[(&Path, &Path)],
) -> Vec<(PathBuf, OsString)> {
    let mut names: Vec<(PathBuf, OsString)> = Vec::new();
    let kept = kept
        .iter()
        .filter_map(|path| Some((path.parent()?, path.file_name()?)));
    let services =
        (service_dirs.iter()).filter_map(|(base, path)| Some((*base, path.iter().next()?)));
    for (parent, name) in kept.chain(services) {
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
    fn kept_names_and_service_directories_are_names_agents_make_not() {
        let root = std::env::temp_dir().join(format!("gk-names-{}", std::process::id()));
        let (dev, run, var) = (root.join("dev"), root.join("run"), root.join("var"));
        for dir in [&dev, &run.join("systemd"), &var] {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::os::unix::fs::symlink(&run, var.join("run")).unwrap();
        let canonical = |path: &Path| std::fs::canonicalize(path).unwrap();
        let kept = [dev.join("log"), var.join("run"), dev.join("log")];
        let kept: Vec<&Path> = kept.iter().map(PathBuf::as_path).collect();
        let var_run = var.join("run");
        let services = [
            (run.as_path(), Path::new("systemd")),
            (&var_run, Path::new("nslcd")),
            (&run, Path::new("samba/winbindd")),
            (&root.join("gone"), Path::new("deeper")),
        ];
        let name = |dir: &Path, name: &str| (canonical(dir), OsString::from(name));
        // Kept whether there or not (dev/log is not), once each; a service's directory by its
        // first name, there or not, in the canonical directory it sits in; not where even that
        // directory is missing.
        assert_eq!(
            names_agents_make_not(&kept, &services),
            [
                name(&dev, "log"),
                name(&var, "run"),
                name(&run, "systemd"),
                name(&run, "nslcd"),
                name(&run, "samba"),
            ]
        );
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn every_service_directory_fits_the_kernels_name_guard() {
        use gatekeeper_common::{GUARDED_NAME_BYTES, MAX_GUARDED_NAMES};
        let dirs: Vec<(&str, &str)> = service_dirs().collect();
        for (index, (base, path)) in dirs.iter().enumerate() {
            assert!(Path::new(base).is_absolute(), "{base}");
            let first = Path::new(path).iter().next().expect("a first name");
            assert!(
                Path::new(path).is_relative() && !path.contains(".."),
                "{path}"
            );
            // Cut names would still be guarded, but a longer one would guard its cut too.
            assert!(first.len() < GUARDED_NAME_BYTES, "{path}");
            assert!(
                !dirs[..index].contains(&(base, path)),
                "{base}/{path} twice"
            );
        }
        // The kept names (`/dev/log` and the links on the way) need room beside these.
        assert!(dirs.len() + 16 <= MAX_GUARDED_NAMES as usize);
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
