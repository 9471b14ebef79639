//! What a parsed config names must exist on this host: agent cgroups as readable cgroup v2
//! directories, protected and allowlisted binaries as files, protected files as files or
//! directories. Keys index the config's lists, which
//! keep the order of the file.

use std::path::Path;

use super::{Config, ConfigError, Problem, WebhookKind};
use crate::cgroups;

pub(super) fn check(config: &Config) -> Result<(), ConfigError> {
    let mut problems = Vec::new();
    for (index, cgroup) in config.agent_cgroups.iter().enumerate() {
        if let Err(error) = cgroups::check_cgroup_dir(cgroup) {
            problems.push(Problem::new(format!("agents.cgroups[{index}]"), error));
        }
    }
    let allowed = (config.allowed.iter().enumerate())
        .map(|(index, path)| (format!("agents.allow[{index}]"), path));
    let protected = (config.exec_rules.iter().enumerate())
        .map(|(index, rule)| (format!("protect.exec[{index}].path"), &rule.path));
    for (key, path) in allowed.chain(protected) {
        if let Err(message) = check_file(path) {
            problems.push(Problem::new(key, message));
        }
    }
    for (index, rule) in config.file_rules.iter().enumerate() {
        if let Err(message) = check_file_or_directory(&rule.path) {
            problems.push(Problem::new(format!("protect.file[{index}].path"), message));
        }
    }
    if let Some(problem) = exposed_secrets(config) {
        problems.push(problem);
    }
    for (index, forward) in config.forwards.iter().enumerate() {
        if let Some(path) = forward.ca_file() {
            let certificates = std::fs::read(path)
                .map_err(|error| error.to_string())
                .and_then(|pem| {
                    reqwest::Certificate::from_pem_bundle(&pem).map_err(|error| error.to_string())
                });
            match certificates {
                Ok(certificates) if !certificates.is_empty() => {}
                Ok(_) => problems.push(Problem::new(
                    format!("audit.forward[{index}].ca_file"),
                    format!("{} holds no certificate", path.display()),
                )),
                Err(error) => problems.push(Problem::new(
                    format!("audit.forward[{index}].ca_file"),
                    format!("{}: {error}", path.display()),
                )),
            }
        }
    }
    if let Err(message) = check_seal_key_place(&config.seal_key) {
        problems.push(Problem::new("daemon.seal_key", message));
    }
    for (index, _, path) in config.socket_rules() {
        if let Err(message) = check_socket(path) {
            problems.push(Problem::new(
                format!("protect.connect[{index}].path"),
                message,
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            path: config.path.clone(),
            problems,
        })
    }
}

/// A config holding secrets must be readable by its owner only: a reviewer's key signs their
/// decisions, and a Slack signing secret forges button presses.
fn exposed_secrets(config: &Config) -> Option<Problem> {
    use std::os::unix::fs::PermissionsExt as _;
    let hook = config
        .webhooks
        .iter()
        .enumerate()
        .find(|(_, hook)| !matches!(hook.kind, WebhookKind::Teams));
    let key = match (hook, config.reviewer_keys.keys().next()) {
        (Some((index, hook)), _) => match hook.kind {
            WebhookKind::Slack { .. } => format!("webhook[{index}].signing_secret"),
            WebhookKind::Generic { .. } | WebhookKind::Teams => format!("webhook[{index}].secret"),
        },
        (None, Some(name)) => format!("approval.keys.{name}"),
        (None, None) => return None,
    };
    let mode = std::fs::metadata(&config.path).ok()?.permissions().mode();
    (mode & 0o077 != 0).then(|| {
        Problem::new(
            key,
            format!(
                "{} holds secrets but is open to group or others (mode {:04o}): run chmod 600 {}",
                config.path.display(),
                mode & 0o7777,
                config.path.display()
            ),
        )
    })
}

/// The sealing key must be the daemon's own: a key file put in place before the daemon made
/// its key, by someone who could write where it goes, would be a key they know. So the key's
/// directories must belong to root (or the daemon's user) and be closed to others' writes (one
/// above the key's own directory may be open if it is sticky, as `/tmp` is: others cannot move
/// a name they do not own there), and a key file already there must belong to them too.
fn check_seal_key_place(key: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt as _;
    // SAFETY: geteuid has no preconditions.
    let daemon = unsafe { libc::geteuid() };
    let ours = |uid: u32| uid == 0 || uid == daemon;
    const STICKY: u32 = 0o1000;
    const OTHERS_WRITE: u32 = 0o022;
    match std::fs::symlink_metadata(key) {
        Ok(metadata) if !metadata.is_file() || !ours(metadata.uid()) => {
            return Err(format!(
                "{} is already there and is not a file of root's: remove it, or name another \
                 path",
                key.display()
            ));
        }
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(format!("{}: {error}", key.display())),
    }
    for (depth, directory) in key.ancestors().skip(1).enumerate() {
        let metadata = match std::fs::metadata(directory) {
            Ok(metadata) => metadata,
            // Made by the daemon, as root, when it makes the key.
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => return Err(format!("{}: {error}", directory.display())),
        };
        let mode = metadata.mode();
        let open = mode & OTHERS_WRITE != 0 && (depth == 0 || mode & STICKY == 0);
        if !ours(metadata.uid()) || open {
            return Err(format!(
                "{} (owner uid {}, mode {:04o}) lets others than root put a key there before \
                 the daemon makes its own: keep the key in a directory only root writes, such \
                 as /var/lib/gatekeeper",
                directory.display(),
                metadata.uid(),
                mode & 0o7777
            ));
        }
    }
    Ok(())
}

fn check_file(path: &Path) -> Result<(), String> {
    let metadata =
        std::fs::metadata(path).map_err(|error| format!("{}: {error}", path.display()))?;
    if metadata.is_file() {
        Ok(())
    } else {
        Err(format!("{} is not a file", path.display()))
    }
}

fn check_file_or_directory(path: &Path) -> Result<(), String> {
    let metadata =
        std::fs::metadata(path).map_err(|error| format!("{}: {error}", path.display()))?;
    if metadata.is_file() || metadata.is_dir() {
        Ok(())
    } else {
        Err(format!(
            "{} is neither a file nor a directory",
            path.display()
        ))
    }
}

/// A protected socket path need not exist yet (its server may start later); what is there must
/// be a socket.
fn check_socket(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::FileTypeExt as _;
    match std::fs::metadata(path) {
        Ok(metadata) if metadata.file_type().is_socket() => Ok(()),
        Ok(_) => Err(format!("{} is not a unix socket", path.display())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(format!("{}: {error}", path.display())),
    }
}
