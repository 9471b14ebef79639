//! fapolicyd, Debian's package, as `cargo xtask bench` put it into the guest: started for its
//! rounds and stopped after them, so the other rounds run without it.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

const BINARY: &str = "/usr/sbin/fapolicyd";
const LOG: &str = "/tmp/fapolicyd.log";
const READY: &str = "Starting to listen for events";
const USER: &str = "fapolicyd";
const START_PATIENCE: Duration = Duration::from_secs(120);

pub struct Fapolicyd {
    child: Child,
}

/// Why fapolicyd cannot be measured in this guest, if it cannot.
pub fn unavailable() -> Option<String> {
    if !Path::new(BINARY).exists() {
        return Some("not installed in the guest (cargo xtask bench could not fetch it)".into());
    }
    None
}

/// (uid, gid) of a user in /etc/passwd.
fn user_ids(name: &str) -> anyhow::Result<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd")?;
    passwd
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.first() == Some(&name))
                .then(|| Some((fields.get(2)?.parse().ok()?, fields.get(3)?.parse().ok()?)))
                .flatten()
        })
        .with_context(|| format!("no user {name} in /etc/passwd"))
}

/// The tail of fapolicyd's log, to say why it failed.
pub fn log_tail() -> String {
    let log = std::fs::read_to_string(LOG).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(8)..].join(" | ")
}

impl Fapolicyd {
    /// Starts it in the foreground (`--debug-deny` prints only denials) and waits until it
    /// listens for events: from then on every exec waits for its verdict.
    pub fn start() -> anyhow::Result<Self> {
        // What the package's tmpfiles.d entry and postinst would have made.
        let (uid, gid) = user_ids(USER)?;
        std::fs::create_dir_all("/run/fapolicyd")?;
        std::os::unix::fs::chown("/run/fapolicyd", Some(0), Some(gid))?;
        std::fs::create_dir_all("/var/lib/fapolicyd")?;
        std::os::unix::fs::chown("/var/lib/fapolicyd", Some(uid), Some(gid))?;
        std::fs::create_dir_all("/var/log")?;
        let _ = std::fs::remove_file("/run/fapolicyd.pid");
        let log = std::fs::File::create(LOG)?;
        let mut child = Command::new(BINARY)
            .arg("--debug-deny")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start fapolicyd")?;
        let deadline = Instant::now() + START_PATIENCE;
        loop {
            if let Some(status) = child.try_wait()? {
                bail!("fapolicyd exited with {status}: {}", log_tail());
            }
            if std::fs::read_to_string(LOG).is_ok_and(|log| log.contains(READY)) {
                return Ok(Self { child });
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("fapolicyd did not start listening: {}", log_tail());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops it and waits until it is gone (its marks with it).
    pub fn stop(mut self) -> anyhow::Result<()> {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Fapolicyd {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
