//! The Debian package on a real Debian bookworm with systemd as PID 1 (`cargo xtask test` boots
//! one per kernel, with the packages in /root). One walk through a host's life with the package:
//! install, refusal of the starter config, start, an agent denied, metrics, restart and upgrade
//! without a gap, purge.

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

const CONFIG: &str = "/etc/gatekeeper/config.toml";
const PINS: &str = "/sys/fs/bpf/gatekeeper";
const PROTECTED: &str = "/usr/local/bin/deploy";

fn sh(script: &str) -> Output {
    Command::new("/bin/sh")
        .args(["-c", script])
        .output()
        .expect("run /bin/sh")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs `script`, which must succeed; returns what it printed.
fn ok(script: &str) -> String {
    let output = sh(script);
    assert!(output.status.success(), "{script}:\n{}", text(&output));
    text(&output)
}

/// The one package of `version` in /root.
fn deb(version: &str) -> String {
    format!("./gatekeeper_{version}_amd64.deb")
}

fn install(version: &str) -> String {
    ok(&format!(
        "cd /root && DEBIAN_FRONTEND=noninteractive apt-get install -y -q {} 2>&1",
        deb(version)
    ))
}

/// Waits until `check` passes; it answers what it saw otherwise.
fn wait_until(what: &str, mut check: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while let Err(seen) = check() {
        assert!(
            Instant::now() < deadline,
            "gave up waiting for {what}:\n{seen}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn metrics() -> String {
    ok("curl -sS --max-time 10 http://127.0.0.1:9464/metrics")
}

fn metric(name: &str) -> Option<f64> {
    metrics()
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// An agent that tries the protected program every 50 ms and prints RAN or DENIED each time.
struct Prober {
    child: Child,
}

impl Prober {
    fn start(name: &str) -> Self {
        let child = Command::new("/usr/bin/gatekeeper")
            .args(["agent", "run", "--name", name, "--owner", "alice", "--"])
            .args([
                "/bin/sh",
                "-c",
                &format!(
                    "echo STARTED; while :; do if {PROTECTED}; then echo RAN; else echo DENIED; fi; sleep 0.05; done"
                ),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the prober");
        let mut prober = Self { child };
        let mut first = String::new();
        if let Some(stdout) = prober.child.stdout.as_mut() {
            BufReader::new(stdout).read_line(&mut first).ok();
        }
        assert_eq!(first.trim(), "STARTED", "the prober did not start");
        prober
    }

    /// Stops it; what it printed after starting.
    fn stop(self) -> String {
        let pid = self.child.id().to_string();
        ok(&format!("kill -TERM {pid}"));
        let output = self.child.wait_with_output().expect("prober output");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

fn valid_config() -> String {
    std::fs::read_to_string(CONFIG)
        .expect("starter config")
        .replace("reviewers = []", "reviewers = [\"root\", \"alice\"]")
        + &format!("\n[[protect.exec]]\npath = \"{PROTECTED}\"\nname = \"deploy\"\n")
}

#[test]
fn the_package_installs_enforces_upgrades_and_purges_under_systemd() {
    let version = std::env::var("GK_VERSION").expect("GK_VERSION names the package");
    let upgrade = std::env::var("GK_UPGRADE").expect("GK_UPGRADE names the newer package");
    ok(&format!("cp /bin/true {PROTECTED} && useradd -M alice"));
    ok("systemctl is-system-running --wait || systemctl --failed --no-pager; true");

    // Installed, enabled, but nothing enforces before the config is valid.
    install(&version);
    ok("test -x /usr/bin/gatekeeper");
    assert_eq!(ok(&format!("stat -c %a {CONFIG}")).trim(), "600");
    assert_eq!(ok("systemctl is-enabled gatekeeper").trim(), "enabled");
    assert!(!Path::new(PINS).exists(), "enforcing on the starter config");
    let refused = sh("systemctl start gatekeeper");
    assert!(!refused.status.success(), "started on the starter config");
    let says_why = || {
        let status = text(&sh("systemctl status gatekeeper --no-pager -l"));
        match status.contains("at least one reviewer is required") && status.contains("failed") {
            true => Ok(()),
            false => Err(status),
        }
    };
    wait_until("systemctl status to say why it failed", says_why);

    // A valid config: READY only once enforcement is live, agents in their unit after it.
    std::fs::write(CONFIG, valid_config()).expect("write the config");
    ok(&format!("gatekeeper check-config {CONFIG}"));
    ok("systemctl start gatekeeper");
    assert_eq!(ok("systemctl is-active gatekeeper").trim(), "active");
    assert!(Path::new(PINS).exists(), "active without pins");
    // Enforcing under the unit's hardening and OOM protection, as the running daemon has them.
    let pid = ok("systemctl show -p MainPID --value gatekeeper");
    let pid = pid.trim();
    assert_eq!(
        ok(&format!("cat /proc/{pid}/oom_score_adj")).trim(),
        "-1000"
    );
    assert!(ok(&format!("cat /proc/{pid}/status")).contains("NoNewPrivs:\t1"));
    // In init's mount namespace, where it sees every mount the host makes.
    assert_eq!(
        ok(&format!("readlink /proc/{pid}/ns/mnt")),
        ok("readlink /proc/1/ns/mnt"),
        "the daemon runs in a mount namespace of its own"
    );
    let shown = ok(
        "systemctl show gatekeeper -p ProtectClock -p ProtectHostname \
         -p MemoryDenyWriteExecute -p RestrictNamespaces -p LockPersonality -p Type",
    );
    for setting in [
        "ProtectClock=yes",
        "ProtectHostname=yes",
        "MemoryDenyWriteExecute=yes",
        "RestrictNamespaces=yes",
        "LockPersonality=yes",
        "Type=notify",
    ] {
        assert!(shown.contains(setting), "{setting} not in effect:\n{shown}");
    }
    let readyz = ok("curl -sS --max-time 10 http://127.0.0.1:9464/readyz");
    assert_eq!(readyz.trim(), "ready");

    // Control: outside the agents the protected program runs.
    ok(PROTECTED);
    let denied = sh(&format!(
        "gatekeeper agent run --name first --owner alice -- {PROTECTED}"
    ));
    assert!(
        !denied.status.success(),
        "an agent ran it: {}",
        text(&denied)
    );
    let requests = ok("gatekeeper requests --json");
    let listed: serde_json::Value = serde_json::from_str(&requests).expect("requests as JSON");
    assert!(
        listed.as_array().is_some_and(|all| all
            .iter()
            .any(|request| request["target"] == PROTECTED && request["owner"] == "alice")),
        "{requests}"
    );
    assert_eq!(metric("gatekeeper_pending_requests"), Some(1.0));
    assert!(metric("gatekeeper_denials_total").is_some_and(|n| n >= 1.0));

    // The agent template unit: ordered after the daemon, the agent denied the same way.
    std::fs::write(
        "/etc/gatekeeper/agents/unit.env",
        format!("AGENT_OWNER=alice\nAGENT_USER=alice\nAGENT_COMMAND={PROTECTED}\n"),
    )
    .expect("agent env");
    let unit = sh("systemctl start gatekeeper-agent@unit");
    wait_until("the agent unit to end", || {
        let state = ok("systemctl is-active gatekeeper-agent@unit || true");
        match state.contains("activ") {
            true => Err(state),
            false => Ok(()),
        }
    });
    let unit_log = text(&sh("journalctl -u gatekeeper-agent@unit --no-pager"));
    assert!(
        unit_log.contains("Operation not permitted"),
        "{unit:?}\n{unit_log}"
    );

    // The daemon's logs are in the journal with their fields.
    let fields = ok("journalctl -u gatekeeper -o verbose --no-pager");
    assert!(
        fields.contains("GATEKEEPER_ID="),
        "no structured fields:\n{fields}"
    );

    // A file system mounted below a host path after the service started (the host's mounts
    // reach the unit's own mount namespace) is guarded: an agent cannot write there, alice
    // outside can; unmounted, its guard goes, journaled both times.
    ok(
        "mkdir -p /etc/gk-mounted && mount -t tmpfs gk /etc/gk-mounted && chmod 1777 /etc/gk-mounted",
    );
    let journaled = |kind: &str| {
        let journal = ok("cat /var/lib/gatekeeper/journal.jsonl");
        match journal
            .lines()
            .any(|line| line.contains(kind) && line.contains("\"/etc/gk-mounted\""))
        {
            true => Ok(()),
            false => Err(format!("no {kind} for /etc/gk-mounted")),
        }
    };
    wait_until("the daemon to guard the new mount", || {
        journaled("\"protection_updated\"")
    });
    let planted = sh(
        "gatekeeper agent run --name mounted --owner alice --user alice -- \
         /bin/sh -c 'echo agent > /etc/gk-mounted/planted'",
    );
    assert!(!planted.status.success(), "{}", text(&planted));
    assert!(!Path::new("/etc/gk-mounted/planted").exists());
    ok("runuser -u alice -- /bin/sh -c 'echo outside > /etc/gk-mounted/planted'");
    ok("umount /etc/gk-mounted && rmdir /etc/gk-mounted");
    wait_until("the daemon to drop the mount's guard", || {
        journaled("\"mount_unguarded\"")
    });

    // Restart and upgrade: an agent trying all along never gets through.
    let prober = Prober::start("prober");
    ok("systemctl restart gatekeeper");
    assert_eq!(ok("systemctl is-active gatekeeper").trim(), "active");
    install(&upgrade);
    assert!(ok("dpkg-query -W gatekeeper").contains(&upgrade));
    assert_eq!(ok("systemctl is-active gatekeeper").trim(), "active");
    let probed = prober.stop();
    assert!(
        !probed.contains("RAN"),
        "ran during restart or upgrade:\n{probed}"
    );
    assert!(
        probed.matches("DENIED").count() >= 10,
        "the agent hardly tried:\n{probed}"
    );
    ok("gatekeeper status");

    // Removal keeps enforcing (fail closed); purge ends it and journals that.
    ok("DEBIAN_FRONTEND=noninteractive apt-get remove -y -q gatekeeper 2>&1");
    assert!(Path::new(PINS).exists(), "removal ended enforcement");
    ok("DEBIAN_FRONTEND=noninteractive apt-get purge -y -q gatekeeper 2>&1");
    assert!(!Path::new(PINS).exists(), "purge left enforcement on");
    let journal = ok("cat /var/lib/gatekeeper/journal.jsonl");
    assert!(journal.contains("\"uninstalled\""), "{journal}");
    ok(&format!(
        "mkdir -p /sys/fs/cgroup/agents.slice/after && echo $$ > /sys/fs/cgroup/agents.slice/after/cgroup.procs && {PROTECTED}"
    ));
}
