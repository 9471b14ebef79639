//! The agent cannot switch Gatekeeper off or walk around it: each attempt, made as root from inside
//! an agent cgroup, fails and is journaled as a tamper attempt.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::{fs::PermissionsExt as _, process::ExitStatusExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use gatekeeper_tests::{
    Exec, Options, Outcome, PATIENCE, Scenario, TARGET_RAN, UNLISTED_UID, bin, wait_for,
};

/// Waits until the journal holds a tamper attempt through `hook`.
fn journaled(scenario: &Scenario, hook: &str) {
    scenario.wait_journal("tamper_attempt", |event| event["hook"] == hook);
}

const BPF_MAP_UPDATE_ELEM: &str = "2";
const BPF_PROG_LOAD: &str = "5";
const BPF_MAP_GET_FD_BY_ID: &str = "14";
const BPF_LINK_DETACH: &str = "34";

#[test]
fn agent_cannot_use_bpf() {
    let scenario = Scenario::start("defend-bpf", Options::default());
    for cmd in [
        BPF_MAP_GET_FD_BY_ID,
        BPF_LINK_DETACH,
        BPF_MAP_UPDATE_ELEM,
        BPF_PROG_LOAD,
    ] {
        assert_eq!(
            scenario.tamper(&scenario.agents, "bpf", &[cmd, "1"]),
            Outcome::Denied,
            "bpf command {cmd}"
        );
    }
    // The same call from outside the agent cgroup reaches bpf() itself (and fails there).
    assert_ne!(
        scenario.tamper(&scenario.outside, "bpf", &[BPF_LINK_DETACH, "0"]),
        Outcome::Denied
    );
    journaled(&scenario, "bpf");
    assert_eq!(scenario.agent_exec(), Exec::Denied);
}

#[test]
fn agent_cannot_signal_trace_or_stall_the_daemon() {
    let scenario = Scenario::start("defend-signal", Options::default());
    let daemon = scenario.daemon_pid().to_string();
    let cases: [(&str, &[&str]); 7] = [
        ("kill", &[&daemon, "9"]),
        ("kill", &[&daemon, "19"]),
        ("kill", &[&daemon, "15"]),
        ("tgkill", &[&daemon, "9"]),
        ("pidfd-signal", &[&daemon, "9"]),
        ("ptrace", &[&daemon]),
        ("vm-write", &[&daemon]),
    ];
    for (op, args) in cases {
        assert_eq!(
            scenario.tamper(&scenario.agents, op, args),
            Outcome::Denied,
            "{op} {args:?}"
        );
    }
    journaled(&scenario, "signal");
    journaled(&scenario, "ptrace");
    assert!(
        scenario.gatekeeper(&["status"]).status.success(),
        "the daemon lives on"
    );

    // Nor by making it, or one of its threads, the owner of a pipe that data reaches: the kernel
    // sends that signal (SIGKILL chosen with F_SETSIG) past kill(2).
    let thread = std::fs::read_dir(format!("/proc/{daemon}/task"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .find(|tid| *tid != daemon)
        .expect("the daemon has threads");
    for (kind, id) in [("pid", &daemon), ("tid", &thread)] {
        assert_eq!(
            scenario.tamper(&scenario.agents, "sigio", &[kind, id, "9"]),
            Outcome::Ok,
            "the pipe is set up ({kind})"
        );
        assert!(
            scenario.gatekeeper(&["status"]).status.success(),
            "the daemon lives on after SIGKILL to its {kind} through a pipe"
        );
    }
    journaled(&scenario, "file_signal");

    // Nor hold its opens (and everyone's) with a fanotify permission mark; marks that only
    // report are the agent's, and outside a permission mark is made.
    let watched = "/tmp/gk-defend-fanotify";
    std::fs::create_dir_all(watched).unwrap();
    for kind in ["inode", "mount"] {
        assert_eq!(
            scenario.tamper(&scenario.agents, "fanotify", &[watched, "perm", kind]),
            Outcome::Denied,
            "a permission mark on the {kind}"
        );
    }
    journaled(&scenario, "notify_permission");
    assert_eq!(
        scenario.tamper(&scenario.agents, "fanotify", &[watched, "report", "inode"]),
        Outcome::Ok
    );
    assert_eq!(
        scenario.tamper(&scenario.outside, "fanotify", &[watched, "perm", "inode"]),
        Outcome::Ok
    );

    // Nor make its opens wait with a lease on a file: root and user agents take none, on files
    // of their own, as root and the user outside do.
    let leased = Path::new("/tmp/gk-defend-lease");
    std::fs::write(leased, "").unwrap();
    std::os::unix::fs::chown(leased, Some(UNLISTED_UID), None).unwrap();
    let leased = leased.to_str().unwrap();
    assert_eq!(
        scenario.tamper(&scenario.agents, "lease", &[leased]),
        Outcome::Denied
    );
    scenario.user_agent_denied("lease", &[leased]);
    journaled(&scenario, "lease");
    assert_eq!(
        scenario.tamper(&scenario.outside, "lease", &[leased]),
        Outcome::Ok
    );
    assert_eq!(
        scenario.tamper_as_user(&scenario.outside, "lease", &[leased]),
        Outcome::Ok
    );

    // Other processes are still the agent's to signal, either way.
    for op in ["kill", "sigio"] {
        let mut bystander = Command::new("sleep")
            .arg("60")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let pid = bystander.id().to_string();
        let args = match op {
            "kill" => vec![pid.as_str(), "9"],
            _ => vec!["pid", &pid, "9"],
        };
        assert_eq!(scenario.tamper(&scenario.agents, op, &args), Outcome::Ok);
        let status = bystander.wait().unwrap();
        assert_eq!(status.signal(), Some(9), "{op} reached the bystander");
    }
}

/// Nor hold its work up by making a read of a command line wait. Any agent can hold its own
/// memory-map lock behind a FUSE read it never answers, and every reader of its
/// `/proc/PID/cmdline` then waits; the daemon reads those of a denied process's parents.
/// Requests and tamper records still arrive while one such read waits, the holder's command line
/// left out. Root and user agents, each in a cgroup of its own (a cgroup whose read was held gets
/// none read for a while); outside, the same hold lets the program run.
#[test]
fn a_held_command_line_holds_up_no_request() {
    let scenario = Scenario::start("defend-held-cmdline", Options::default());
    // Ordinary users open /dev/fuse on distributions (udev makes it 0666).
    std::fs::set_permissions("/dev/fuse", std::fs::Permissions::from_mode(0o666))
        .expect("/dev/fuse: the guest kernel has FUSE");
    for user in [false, true] {
        let cgroup = scenario
            .agents
            .join(if user { "held-user" } else { "held-root" });
        std::fs::create_dir_all(&cgroup).unwrap();
        let cgroup_text = cgroup.display().to_string();
        let hold = MemoryHold::start(&scenario, &cgroup, user);
        assert!(hold.said("EXEC=denied"), "user {user}: {:?}", hold.lines);
        hold.assert_held();
        let request = wait_for("the request made during the hold", || {
            scenario
                .requests(true)
                .into_iter()
                .find(|request| request["cgroup"] == cgroup_text.as_str())
        });
        let ancestors = request["process"]["ancestors"].as_array().unwrap();
        let holder = ancestors
            .iter()
            .find(|ancestor| ancestor["pid"] == hold.pid)
            .unwrap_or_else(|| panic!("the holder is a parent: {request}"));
        assert!(holder["argv"].is_null(), "{request}");
        // A tamper attempt as well: a lease on a file of the user's, which users and root alike
        // take outside (see above).
        let leased = Path::new("/tmp/gk-defend-held-lease");
        std::fs::write(leased, "").unwrap();
        std::os::unix::fs::chown(leased, Some(UNLISTED_UID), None).unwrap();
        let leased = leased.to_str().unwrap();
        let lease = if user {
            scenario.tamper_as_user(&cgroup, "lease", &[leased])
        } else {
            scenario.tamper(&cgroup, "lease", &[leased])
        };
        assert_eq!(lease, Outcome::Denied, "user {user}");
        scenario.wait_journal("tamper_attempt", |event| {
            event["hook"] == "lease" && event["cgroup"] == cgroup_text.as_str()
        });
        // All of that while the hold lasted.
        hold.assert_held();
    }
    let hold = MemoryHold::start(&scenario, &scenario.outside, false);
    hold.assert_held();
    assert!(
        hold.lines.iter().any(|line| line.contains(TARGET_RAN)),
        "outside: {:?}",
        hold.lines
    );
}

/// A `gk-helper hold-mm` in `cgroup`, holding its memory-map lock until dropped; dropping it
/// lets go (and, should that not end it, kills its cgroup, which ends the FUSE server).
struct MemoryHold {
    child: Child,
    cgroup: PathBuf,
    pid: u64,
    /// What it printed up to its exec's outcome.
    lines: Vec<String>,
}

impl MemoryHold {
    fn start(scenario: &Scenario, cgroup: &Path, user: bool) -> Self {
        let cgroup_text = cgroup.display().to_string();
        let program = scenario.protected.display().to_string();
        let helper = bin("gk-helper").display().to_string();
        let uid = UNLISTED_UID.to_string();
        let mut args = vec!["tamper", &cgroup_text, "hold-mm", "private", &program];
        if user {
            args = vec![
                "as-user",
                &uid,
                &cgroup_text,
                &helper,
                "tamper",
                "-",
                "hold-mm",
                "user",
                &program,
            ];
        }
        let mut child = Command::new(bin("gk-helper"))
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        // Read on a thread of its own (to the end, so that it can print as it ends), so that a
        // holder that never gets ready fails the test instead of holding it up.
        let output = BufReader::new(child.stdout.take().unwrap());
        let (said, heard) = mpsc::channel();
        std::thread::spawn(move || {
            for line in output.lines().map_while(Result::ok) {
                let _ = said.send(line);
            }
        });
        let mut hold = Self {
            child,
            cgroup: cgroup.to_owned(),
            pid: 0,
            lines: Vec::new(),
        };
        loop {
            let line = heard.recv_timeout(PATIENCE).unwrap_or_else(|_| {
                panic!(
                    "hold-mm did not get ready: {:?}\n{}",
                    hold.lines,
                    kernel_stacks(&hold.cgroup)
                )
            });
            assert!(!line.starts_with("RESULT="), "hold-mm failed: {line}");
            // The child's word on its exec, or the program's own if it ran.
            let done = line.starts_with("EXEC=") || line.contains(TARGET_RAN);
            hold.lines.push(line);
            if done {
                break;
            }
        }
        hold.pid = hold
            .lines
            .iter()
            .find_map(|line| line.strip_prefix("PID=")?.parse().ok())
            .unwrap_or_else(|| panic!("hold-mm said no PID: {:?}", hold.lines));
        hold
    }

    fn said(&self, line: &str) -> bool {
        self.lines.iter().any(|said| said == line)
    }

    /// The holder's command line cannot be read now (the reader is left waiting).
    fn assert_held(&self) {
        let (done, finished) = mpsc::channel();
        let cmdline = format!("/proc/{}/cmdline", self.pid);
        std::thread::spawn(move || {
            let _ = std::fs::read(cmdline);
            let _ = done.send(());
        });
        assert!(
            finished.recv_timeout(Duration::from_secs(2)).is_err(),
            "the command line of {} was read: nothing is held",
            self.pid
        );
    }
}

/// Where each thread of `cgroup` waits in the kernel, for a failure's message.
fn kernel_stacks(cgroup: &Path) -> String {
    let procs = std::fs::read_to_string(cgroup.join("cgroup.procs")).unwrap_or_default();
    let mut stacks = String::new();
    for pid in procs.lines() {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten();
        for task in tasks.filter_map(Result::ok) {
            let stack = std::fs::read_to_string(task.path().join("stack")).unwrap_or_default();
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            stacks += &format!("{pid}/{:?} {}{stack}", task.file_name(), comm);
        }
    }
    stacks
}

impl Drop for MemoryHold {
    fn drop(&mut self) {
        if let Some(mut stdin) = self.child.stdin.take() {
            let _ = writeln!(stdin);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = std::fs::write(self.cgroup.join("cgroup.kill"), "1");
        let _ = self.child.wait();
    }
}

/// Nor put systemd's notify socket aside for one of its own: a restarted daemon's READY would
/// never reach systemd, which would stop it again and again. Root and user agents neither
/// unlink nor rename the socket the daemon was given, nor rename its directory; root outside
/// does. (The guest has no systemd: the test stands in for it.)
#[test]
fn agent_cannot_take_the_notify_socket() {
    let mut scenario = Scenario::prepare("defend-notify", Options::default());
    let dir = Path::new("/run/gk-defend-notify");
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let socket_path = dir.join("notify");
    let systemd = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    systemd
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    scenario.start_daemon_with(&[("NOTIFY_SOCKET", &socket_path)]);
    let mut ready = [0u8; 256];
    let size = systemd.recv(&mut ready).expect("the daemon's READY");
    assert!(
        String::from_utf8_lossy(&ready[..size]).contains("READY=1"),
        "{:?}",
        &ready[..size]
    );
    let socket = socket_path.display().to_string();
    let aside = dir.join("aside").display().to_string();
    let dir_text = dir.display().to_string();
    let moved_dir = "/run/gk-defend-notify-moved";
    for (op, args) in [
        ("unlink", vec![socket.as_str()]),
        ("rename", vec![socket.as_str(), aside.as_str()]),
        ("rename", vec![dir_text.as_str(), moved_dir]),
    ] {
        scenario.agents_denied(op, &args);
    }
    assert!(socket_path.exists());
    journaled(&scenario, "daemon_file");
    assert_eq!(
        scenario.tamper(&scenario.outside, "rename", &[&socket, &aside]),
        Outcome::Ok
    );
    assert_eq!(
        scenario.tamper(&scenario.outside, "rename", &[&aside, &socket]),
        Outcome::Ok
    );
    drop(scenario);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn agent_cannot_remove_pins_or_unmount_bpffs() {
    let scenario = Scenario::start("defend-pins", Options::default());
    let link = scenario.pin_dir.join("link_bprm_check_security");
    let link_text = link.display().to_string();
    let moved = scenario.pin_dir.join("moved").display().to_string();
    let cases: [(&str, &[&str]); 4] = [
        ("unlink", &[&link_text]),
        ("rename", &[&link_text, &moved]),
        ("umount", &["/sys/fs/bpf"]),
        ("remount", &["/sys/fs/bpf"]),
    ];
    for (op, args) in cases {
        assert_eq!(
            scenario.tamper(&scenario.agents, op, args),
            Outcome::Denied,
            "{op} {args:?}"
        );
    }
    assert!(link.exists(), "the pin is still there");
    for hook in ["pin_unlink", "pin_rename", "umount", "remount"] {
        journaled(&scenario, hook);
    }
    assert_eq!(scenario.agent_exec(), Exec::Denied, "still enforcing");
}

#[test]
fn agent_cannot_leave_its_cgroup() {
    let scenario = Scenario::start("defend-cgroup", Options::default());
    let outside_procs = scenario.outside.join("cgroup.procs").display().to_string();
    let child = scenario.agents.join("hideout").display().to_string();
    let outside = scenario.outside.display().to_string();
    let cases: [(&str, &[&str]); 3] = [
        ("write", &[&outside_procs, "0"]),
        ("mkdir", &[&child]),
        ("clone-into", &[&outside]),
    ];
    for (op, args) in cases {
        assert_eq!(
            scenario.tamper(&scenario.agents, op, args),
            Outcome::Denied,
            "{op} {args:?}"
        );
    }
    assert!(!scenario.agents.join("hideout").exists());
    journaled(&scenario, "cgroup_write");
    // The same clone3 from outside the agent cgroups works: the test is not of clone3 itself.
    assert_eq!(
        scenario.tamper(&scenario.outside, "clone-into", &[&outside]),
        Outcome::Ok
    );
}

/// Agents load no module into the kernel and unload none. Controls: outside, the kernel reads
/// the same images and finds no module in them (ENOEXEC), and looks up the name to unload
/// (ENOENT: no such module). An ordinary user may do neither anyway (CAP_SYS_MODULE).
#[test]
fn agent_cannot_load_or_unload_kernel_modules() {
    let scenario = Scenario::start("defend-modules", Options::default());
    let helper = bin("gk-helper").display().to_string();
    let attempts: [(&str, Vec<&str>, i32); 3] = [
        ("finit-module", vec![&helper], libc::ENOEXEC),
        ("init-module", vec![], libc::ENOEXEC),
        ("delete-module", vec!["gk_no_such_module"], libc::ENOENT),
    ];
    for (op, args, outside) in &attempts {
        assert_eq!(
            scenario.tamper(&scenario.agents, op, args),
            Outcome::Denied,
            "root agent: {op}"
        );
        assert_eq!(
            scenario.tamper(&scenario.outside, op, args),
            Outcome::Errno(*outside),
            "outside: {op}"
        );
        scenario.user_refused_anyway(op, args);
    }
    // The capability comes first in all three system calls: the module's read or load is not
    // reached.
    journaled(&scenario, "kernel_module");
}

#[test]
fn protected_binary_cannot_run_by_other_routes() {
    let scenario = Scenario::start("defend-routes", Options::default());
    let protected = scenario.protected.display().to_string();
    // Through the open file: the same inode, so the same denial (and request).
    for route in ["exec-proc-fd", "execveat"] {
        assert_eq!(
            scenario.tamper(&scenario.agents, route, &[&protected]),
            Outcome::Denied,
            "{route}"
        );
    }
    let request = wait_for("a request for the open-file routes", || {
        scenario.requests(false).into_iter().next()
    });
    assert_eq!(request["rule"], "database export");

    // A memfd copy lives on no mounted filesystem: agents may not run such files at all, not
    // even a copy of an unprotected one.
    let unprotected = scenario.unprotected.display().to_string();
    assert_eq!(
        scenario.tamper(&scenario.agents, "exec-memfd", &[&unprotected]),
        Outcome::Denied
    );
    journaled(&scenario, "exec_internal");
    // Control: outside the agent cgroups the memfd copy runs.
    assert_eq!(
        scenario.tamper(&scenario.outside, "exec-memfd", &[&unprotected]),
        Outcome::Ok
    );

    // The dynamic loader: an unprotected binary through it still works for agents (the
    // protected one is in files.rs: the loader cannot even read it).
    let loader = "/lib64/ld-linux-x86-64.so.2";
    let unprotected = Command::new(bin("gk-helper"))
        .arg("run")
        .arg(&scenario.agents)
        .args([loader, &unprotected, "target"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&unprotected.stdout).contains(TARGET_RAN),
        "{unprotected:?}"
    );
}

#[test]
fn allowlist_mode_denies_a_copied_binary() {
    let mut scenario = Scenario::prepare("allowlist", Options::default());
    scenario.allow_only(&[&scenario.unprotected]);
    scenario.start_daemon();

    let copy = scenario.dir.join("bin/copied");
    std::fs::copy(&scenario.protected, &copy).unwrap();
    assert_eq!(scenario.exec_in(&scenario.agents, &copy), Exec::Denied);
    let request = scenario.wait_request(&copy);
    assert_eq!(request["rule"], "not on the allowlist");
    assert_eq!(
        scenario.exec_in(&scenario.agents, &scenario.unprotected),
        Exec::Ran
    );
    assert_eq!(
        scenario.agent_exec(),
        Exec::Denied,
        "protected stays protected"
    );
    // Approval works as for any request.
    let id = request["id"].as_str().unwrap();
    assert!(scenario.gatekeeper(&["approve", id]).status.success());
    assert_eq!(scenario.exec_in(&scenario.agents, &copy), Exec::Ran);
    assert_eq!(scenario.exec_in(&scenario.agents, &copy), Exec::Denied);
}
