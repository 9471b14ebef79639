//! Attacks on what an approved exec loads: the agent chooses the files the kernel and the loader
//! open by path for the approved program (its ELF interpreter, its libraries, a script's
//! interpreter) from a mount namespace or a root of its own, or through `env` on its PATH; or
//! reads the approved script from another process. Each attack has a control outside the agent
//! cgroups showing the same action does what it claims there.

use std::{
    os::{
        fd::AsRawFd as _,
        unix::fs::{MetadataExt as _, PermissionsExt as _},
    },
    path::{Path, PathBuf},
    process::Command,
};

use gatekeeper_common::file_access;
use gatekeeper_tests::{
    Exec, Options, Outcome, Restore, Scenario, Stopped, TARGET_RAN, UNLISTED_UID, Waiting, bin,
    exec_outcome, hand_to_user, wait_for,
};
use serde_json::Value;

/// `program target one` from `cgroup`, as root or `uid`, with the loader `place` chooses (see
/// gk-helper's exec_own_root).
fn exec_rooted(cgroup: &Path, uid: Option<u32>, place: &str, program: &Path) -> Exec {
    let uid = uid.map_or("-".to_owned(), |uid| uid.to_string());
    let output = Command::new(bin("gk-helper"))
        .arg("exec-rooted")
        .arg(cgroup)
        .args([&uid, place])
        .arg(program)
        .args(["target", "one"])
        .output()
        .unwrap();
    let (exec, _) = exec_outcome(&output);
    eprintln!(
        "exec-rooted {cgroup:?} {uid} {place} -> {exec:?} ({})",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    exec
}

/// execve(program, argv) exactly, from `cgroup`, as root or `uid`, with `env` alone.
fn exec_as(cgroup: &Path, uid: Option<u32>, env: &str, program: &str) -> (Exec, String) {
    let uid = uid.map_or("-".to_owned(), |uid| uid.to_string());
    let output = Command::new(bin("gk-helper"))
        .arg("exec-as")
        .arg(cgroup)
        .args([&uid, "-", env, program, program])
        .output()
        .unwrap();
    exec_outcome(&output)
}

/// The pending exec request for `program` (its denied reads make file requests of their own).
fn exec_request(scenario: &Scenario, program: &str) -> Value {
    wait_for("the exec request", || {
        // Without --all: the pending ones.
        scenario
            .requests(false)
            .into_iter()
            .find(|request| request["kind"] == "exec" && request["target"] == program)
    })
}

fn write_script(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// An approved `P target one` run from a mount namespace of the agent's own with its copy of the
/// loader bound over the host's (as root, and as a user through a user namespace), from a
/// chroot it filled with copies, from a process whose second thread shares its root (and could
/// chroot while the kernel opens the loader), or under a bind of `/` made in another namespace
/// (the host's root dentry, the agent's mounts): refused as `foreign_root_exec`. Under a seccomp
/// filter a listener answers (which could hand the loader files of its own): refused as
/// `listened_exec`. The grant is left for the exec from the host's root, which runs once.
#[test]
fn an_approved_exec_does_not_run_with_a_loader_of_the_agents() {
    let scenario = Scenario::start("aa-roots", Options::default());
    let program = scenario.protected.display().to_string();
    let jail = scenario.dir.join("jail");
    let places = [
        (None, "private".to_owned()),
        (Some(UNLISTED_UID), "user".to_owned()),
        (None, format!("chroot:{}", jail.display())),
        (Some(UNLISTED_UID), "threaded".to_owned()),
        (None, "fd-root".to_owned()),
        (Some(UNLISTED_UID), "fd-root".to_owned()),
        (None, "seccomp-listener".to_owned()),
        (Some(UNLISTED_UID), "seccomp-listener".to_owned()),
    ];
    // Control: outside the agent cgroups each route runs the program (with the copies).
    for (uid, place) in &places {
        let control_jail = format!("chroot:{}", scenario.dir.join("control-jail").display());
        let place = if place.starts_with("chroot:") {
            &control_jail
        } else {
            place
        };
        assert_eq!(
            exec_rooted(&scenario.outside, *uid, place, &scenario.protected),
            Exec::Ran,
            "control {place} as {uid:?}"
        );
    }
    assert_eq!(
        scenario
            .exec_with(&scenario.agents, &scenario.protected, &["target", "one"])
            .0,
        Exec::Denied
    );
    let request = scenario.wait_exec_request(&[&program, "target", "one"]);
    scenario.approve(&request);
    // The user agent's approved command is the same: the grant is its cgroup's.
    for (uid, place) in &places {
        assert_eq!(
            exec_rooted(&scenario.agents, *uid, place, &scenario.protected),
            Exec::Denied,
            "{place} as {uid:?}"
        );
    }
    for hook in ["foreign_root_exec", "listened_exec"] {
        scenario.wait_journal("tamper_attempt", |event| event["hook"] == hook);
    }
    assert!(
        !scenario
            .journal_events()
            .iter()
            .any(|event| event["type"] == "grant_used"),
        "a refused exec used the grant"
    );
    // From the host's root the approved command runs, once.
    let (exec, printed) =
        scenario.exec_with(&scenario.agents, &scenario.protected, &["target", "one"]);
    assert_eq!(exec, Exec::Ran, "{printed}");
    assert_eq!(
        scenario
            .exec_with(&scenario.agents, &scenario.protected, &["target", "one"])
            .0,
        Exec::Denied
    );
}

/// An approved script's read belongs to the interpreter the kernel starts for it, before it
/// opens anything of the agent's:
/// - a `#!` line through `env` gets no read at all, whatever `PATH` finds (the agent's own
///   interpreter of that name, or a host one);
/// - a variable of the agent's in its environment (`BASH_ENV`) refuses the run, grant kept;
/// - a process of the agent's reading the script while an approved run starts gets nothing;
/// - the agent's symlink to the script, pointed at a script of its own (a file, or a FIFO) once
///   the kernel opened the real one, hands the interpreter the agent's script, which gets no
///   read.
#[test]
fn an_approved_scripts_read_belongs_to_its_interpreter() {
    let mut scenario = Scenario::prepare(
        "aa-script-read",
        Options {
            extra: "[[protect.exec]]\npath = \"/tmp/gk-aa-script-read/protected/deploy.sh\"\nname = \"deploy\"\n[[protect.exec]]\npath = \"/tmp/gk-aa-script-read/protected/env.sh\"\nname = \"env\"\n".into(),
            ..Options::default()
        },
    );
    let script = scenario.dir.join("protected/deploy.sh");
    write_script(
        &script,
        &format!("#!/bin/sh\necho {TARGET_RAN} SECRET-LINE\n"),
    );
    let env_script = scenario.dir.join("protected/env.sh");
    write_script(
        &env_script,
        &format!("#!/bin/env gk-aa-sh\necho {TARGET_RAN} SECRET-LINE\n"),
    );
    // The host's interpreter, in a host directory: runs the script in its own process.
    let host_bin = Path::new("/usr/local/bin");
    std::fs::create_dir_all(host_bin).unwrap();
    let host_interpreter = host_bin.join("gk-aa-sh");
    write_script(&host_interpreter, "#!/bin/sh\n. \"$1\"\n");
    // The agent's: its interpreter of that name, and a script of its own; both print what they
    // can read of the protected script.
    let agent_bin = scenario.dir.join("agent-bin");
    std::fs::create_dir_all(&agent_bin).unwrap();
    let leak = |path: &str| {
        format!("while IFS= read -r line; do echo \"LEAK $line\"; done < \"{path}\"\n")
    };
    let agent_interpreter = agent_bin.join("gk-aa-sh");
    write_script(
        &agent_interpreter,
        &format!(
            "#!/bin/sh\n{}/bin/cat \"$1\" | sed 's/^/LEAK-CAT /'\necho AGENT-SH-RAN\n",
            leak("$1")
        ),
    );
    let script_text = script.display().to_string();
    let agent_script = agent_bin.join("evil.sh");
    write_script(
        &agent_script,
        &format!("#!/bin/sh\n{}echo AGENT-SCRIPT-RAN\n", leak(&script_text)),
    );
    hand_to_user(&agent_bin);
    for file in [&agent_interpreter, &agent_script] {
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    scenario.start_daemon();
    let env_text = env_script.display().to_string();
    let host_path = "PATH=/usr/local/bin:/bin";
    let agent_path = format!("PATH={}:/usr/local/bin:/bin", agent_bin.display());

    // Control: outside the agent cgroups the agent's PATH hands the script to its interpreter,
    // the host's runs it, and the swapped symlink runs the agent's script, which reads it.
    let (exec, printed) = exec_as(&scenario.outside, None, &agent_path, &env_text);
    assert!(printed.contains("LEAK echo"), "{exec:?} {printed}");
    assert!(printed.contains("LEAK-CAT echo"), "{printed}");
    let (exec, printed) = exec_as(&scenario.outside, None, host_path, &env_text);
    assert_eq!(exec, Exec::Ran, "{printed}");
    let link = agent_bin.join("run.sh").display().to_string();
    let agent_script_text = agent_script.display().to_string();
    let swap = |cgroup: &Path, uid: Option<u32>| {
        let uid = uid.map_or("-".to_owned(), |uid| uid.to_string());
        let output = Command::new(bin("gk-helper"))
            .arg("script-swap")
            .arg(cgroup)
            .args([&uid, &link, &script_text, &agent_script_text, host_path])
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let swapped_outside = (0..4).any(|_| swap(&scenario.outside, None).contains("LEAK echo"));
    assert!(
        swapped_outside,
        "the swap never ran the agent's script outside"
    );

    for uid in [None, Some(UNLISTED_UID)] {
        let ask = |path: &str, env: &str| {
            let (exec, _) = exec_as(&scenario.agents, uid, env, path);
            assert_eq!(exec, Exec::Denied, "as {uid:?}");
            scenario.approve(&exec_request(&scenario, path));
        };
        // Through env: neither the agent's interpreter nor the host's gets a read.
        for path in [agent_path.as_str(), host_path] {
            ask(&env_text, host_path);
            let (exec, printed) = exec_as(&scenario.agents, uid, path, &env_text);
            assert!(
                !printed.contains("SECRET-LINE"),
                "as {uid:?} with {path}: {exec:?} {printed}"
            );
        }
        // With a variable of the agent's in its environment (BASH_ENV, which bash would run
        // first) the approved script is refused, and its grant waits for the run without it.
        ask(&script_text, host_path);
        let (exec, printed) = exec_as(&scenario.agents, uid, "BASH_ENV=/dev/null", &script_text);
        assert_eq!(exec, Exec::Denied, "as {uid:?}: {printed}");
        let (exec, printed) = exec_as(&scenario.agents, uid, host_path, &script_text);
        assert_eq!(exec, Exec::Ran, "as {uid:?}: {printed}");
        assert!(printed.contains("SECRET-LINE"), "{printed}");
        // A reader of the agent's racing an approved run.
        ask(&script_text, host_path);
        let reader = race_reader(&scenario, uid, &script_text);
        let (exec, printed) = exec_as(&scenario.agents, uid, host_path, &script_text);
        assert_eq!(exec, Exec::Ran, "as {uid:?}: {printed}");
        assert!(printed.contains("SECRET-LINE"), "{printed}");
        let read = reader.wait_with_output().unwrap();
        let read = String::from_utf8_lossy(&read.stdout);
        assert!(!read.contains("SECRET-LINE"), "as {uid:?}: {read}");
        assert!(read.contains("RESULT="), "the reader did not run: {read}");
        // The swapped symlink: the agent's script runs in the approved process (or, when the
        // swap comes too late, the approved script itself), and never reads the script.
        let mut agent_script_ran = false;
        for _ in 0..8 {
            ask(&script_text, host_path);
            let printed = swap(&scenario.agents, uid);
            assert!(!printed.contains("LEAK"), "as {uid:?}: {printed}");
            agent_script_ran |= printed.contains("AGENT-SCRIPT-RAN");
            if agent_script_ran {
                break;
            }
        }
        assert!(agent_script_ran, "as {uid:?}: the swap never came in time");
        // The same with a FIFO that hands the interpreter the agent's script.
        let fifo = agent_bin.join("evil.fifo");
        let _ = std::fs::remove_file(&fifo);
        let fifo_text = fifo.display().to_string();
        let made = std::ffi::CString::new(fifo_text.clone()).unwrap();
        // SAFETY: mkfifo with a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(made.as_ptr(), 0o666) }, 0);
        std::fs::set_permissions(&fifo, std::fs::Permissions::from_mode(0o666)).unwrap();
        let evil = format!("{}echo AGENT-FIFO-RAN\n", leak(&script_text));
        let mut fifo_ran = false;
        for _ in 0..8 {
            ask(&script_text, host_path);
            let writer = feed_fifo(fifo.clone(), evil.clone());
            let output = Command::new(bin("gk-helper"))
                .arg("script-swap")
                .arg(&scenario.agents)
                .args([
                    &uid.map_or("-".to_owned(), |uid| uid.to_string()),
                    &link,
                    &script_text,
                    &fifo_text,
                    host_path,
                ])
                .output()
                .unwrap();
            let printed = String::from_utf8_lossy(&output.stdout).into_owned();
            let _ = writer.join();
            assert!(
                !printed.contains("LEAK"),
                "as {uid:?} through a FIFO: {printed}"
            );
            fifo_ran |= printed.contains("AGENT-FIFO-RAN");
            if fifo_ran {
                break;
            }
        }
        assert!(fifo_ran, "as {uid:?}: the FIFO swap never came in time");
    }
    // Nothing left over: the agent does not read it now.
    assert_eq!(
        scenario.tamper(&scenario.agents, "cat", &[&script_text]),
        Outcome::Denied
    );
    let _ = std::fs::remove_file(&host_interpreter);
}

/// Writes `text` into the FIFO at `path` once a reader opens it (for up to five seconds).
fn feed_fifo(path: std::path::PathBuf, text: String) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            // Non-blocking: no reader yet is ENXIO, tried again.
            let opened = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&path);
            if let Ok(mut fifo) = opened {
                let _ = fifo.write_all(text.as_bytes());
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    })
}

/// A process in the agent cgroup that tries to read `script` for five seconds, every 5 ms (each
/// try is a denial the daemon handles: as fast as it can go, the tries would bury the requests
/// the test waits for).
fn race_reader(scenario: &Scenario, uid: Option<u32>, script: &str) -> std::process::Child {
    let cgroup = scenario.agents.display().to_string();
    let helper = bin("gk-helper").display().to_string();
    let mut command = Command::new(bin("gk-helper"));
    match uid {
        None => command.args([
            "tamper",
            &cgroup,
            "poll-read",
            script,
            "SECRET",
            "5000",
            "5",
        ]),
        Some(uid) => command.args([
            "as-user",
            &uid.to_string(),
            &cgroup,
            &helper,
            "tamper",
            "-",
            "poll-read",
            script,
            "SECRET",
            "5000",
            "5",
        ]),
    };
    let child = command
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Let it start polling before the run.
    std::thread::sleep(std::time::Duration::from_millis(300));
    child
}

/// Mounts a tmpfs open to all at `path` (made if missing).
fn mount_open_tmpfs(path: &Path) {
    std::fs::create_dir_all(path).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "gk-aa"])
        .arg(path)
        .status()
        .unwrap();
    assert!(mounted.success());
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o1777)).unwrap();
}

/// Mounts `source`, a file open to all, over the host's file `target`.
fn bind_open_file(source: &Path, target: &Path) {
    std::fs::write(target, "host\n").unwrap();
    std::fs::write(source, "mounted\n").unwrap();
    std::fs::set_permissions(source, std::fs::Permissions::from_mode(0o666)).unwrap();
    bind(source, target);
}

/// Binds `source` (a file or directory) at `target`, in the host's mount namespace.
fn bind(source: &Path, target: &Path) {
    let bound = Command::new("mount")
        .arg("--bind")
        .args([source, target])
        .status()
        .unwrap();
    assert!(bound.success(), "mount --bind {source:?} {target:?}");
}

/// Waits until the daemon has logged guarding the mount at `path` `times` times.
fn wait_guarded(scenario: &Scenario, path: &Path, times: usize) {
    let path = path.display().to_string();
    wait_for(&format!("{path} guarded ({times})"), || {
        let log = scenario.daemon_log();
        let logged = log
            .lines()
            .filter(|line| line.contains("guarding a mount") && line.contains(&path))
            .count();
        (logged >= times).then_some(())
    });
}

/// Root and user agents cannot write in `dir` through a copy of its mount in a namespace of
/// their own (a private one for root, a user namespace for the user); root and the user outside
/// can.
fn copies_written_only_from_outside(scenario: &Scenario, dir: &Path) {
    let copy = |who: &str| dir.join(format!("copied-{who}")).display().to_string();
    let [root, user, root_out, user_out] = ["root", "user", "root-out", "user-out"].map(copy);
    let private = |cgroup: &Path, path: &str| {
        scenario.tamper(cgroup, "in-ns", &["private", "write", path, "a"])
    };
    let user_ns = |cgroup: &Path, path: &str| {
        scenario.tamper_as_user(cgroup, "in-ns", &["user", "write", path, "a"])
    };
    assert_eq!(
        (
            private(&scenario.agents, &root),
            user_ns(&scenario.agents, &user),
            private(&scenario.outside, &root_out),
            user_ns(&scenario.outside, &user_out),
        ),
        (Outcome::Denied, Outcome::Denied, Outcome::Ok, Outcome::Ok),
        "copies of {dir:?} in namespaces of one's own"
    );
}

/// Root and user agents cannot write `target`; the user outside can (the control).
fn writes_only_from_outside(scenario: &Scenario, target: &str) {
    only_from_outside(scenario, "write", &[target, "agent"]);
}

/// Unmounts `path`, again for a while when busy (the daemon following a path there opens the
/// file it names for a moment).
fn unmount(path: &Path) {
    let unmounted = (0..50).any(|_| {
        let output = Command::new("umount").arg(path).output().unwrap();
        let busy = String::from_utf8_lossy(&output.stderr).contains("busy");
        if busy {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        output.status.success() || !busy && panic!("umount {path:?}: {output:?}")
    });
    assert!(unmounted, "umount {path:?}: busy");
}

/// Root and user agents neither make, remove nor move names in `dir`; root outside does.
fn names_changed_only_from_outside(scenario: &Scenario, dir: &Path) {
    let path = |name: &str| dir.join(name).display().to_string();
    let victim = path("victim");
    std::fs::write(&victim, "host\n").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o666)).unwrap();
    let attempts = |who: &str| {
        [
            ("mkdir", vec![path(&format!("dir-{who}"))]),
            (
                "symlink",
                vec!["/etc/passwd".to_owned(), path(&format!("link-{who}"))],
            ),
            ("mkfifo", vec![path(&format!("fifo-{who}"))]),
            (
                "rename",
                vec![victim.clone(), path(&format!("moved-{who}"))],
            ),
        ]
    };
    // Nor its attributes changed by path (a user may truncate it; only root may chmod it or set
    // its flags).
    for (op, args) in [
        ("truncate", vec![victim.as_str()]),
        ("utimes", vec![victim.as_str()]),
    ] {
        scenario.agents_denied(op, &args);
    }
    for (op, args) in [
        ("chmod", vec![victim.as_str(), "0600"]),
        ("acl", vec![victim.as_str(), "0600"]),
        ("setxattr", vec![victim.as_str(), "trusted.gk", "x"]),
        ("chattr", vec![victim.as_str(), "+a"]),
    ] {
        assert_eq!(
            scenario.tamper(&scenario.agents, op, &args),
            Outcome::Denied,
            "root agent: {op}"
        );
    }
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "host\n");
    for (op, args) in attempts("root")
        .into_iter()
        .chain([("unlink", vec![victim.clone()])])
    {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        scenario.agents_denied(op, &args);
    }
    assert_eq!(
        scenario.tamper(&scenario.outside, "acl", &[&victim, "0666"]),
        Outcome::Ok
    );
    for op in ["truncate", "utimes"] {
        let args = [victim.as_str()];
        assert_eq!(
            scenario.tamper_as_user(&scenario.outside, op, &args),
            Outcome::Ok,
            "outside user: {op} {args:?}"
        );
    }
    let moved = path("moved-outside");
    for (op, args) in attempts("outside")
        .into_iter()
        .chain([("unlink", vec![moved])])
    {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_eq!(
            scenario.tamper(&scenario.outside, op, &args),
            Outcome::Ok,
            "outside: {op} {args:?}"
        );
    }
}

/// Root and user agents are denied `op` on `args`; the user outside is not.
fn only_from_outside(scenario: &Scenario, op: &str, args: &[&str]) {
    scenario.agents_denied(op, args);
    assert_eq!(
        scenario.tamper_as_user(&scenario.outside, op, args),
        Outcome::Ok,
        "outside: {op} {args:?}"
    );
}

/// A root agent neither unlinks `/dev/log` nor renames it aside; outside the agent cgroups it is
/// renamed aside and back.
fn dev_log_kept(scenario: &Scenario, when: &str) {
    let aside = "/dev/log.aside";
    for (op, args) in [
        ("unlink", vec!["/dev/log"]),
        ("rename", vec!["/dev/log", aside]),
    ] {
        assert_eq!(
            scenario.tamper(&scenario.agents, op, &args),
            Outcome::Denied,
            "{op}, {when}"
        );
    }
    for args in [["/dev/log", aside], [aside, "/dev/log"]] {
        assert_eq!(
            scenario.tamper(&scenario.outside, "rename", &args),
            Outcome::Ok,
            "{when}"
        );
    }
}

/// Host programs meet the host's services by path: glibc asks nscd's socket first, and the
/// services of nsswitch.conf over sockets in `/run` (systemd's user database), before the host's
/// files; they log to journald and ask systemd and the system bus at their sockets. Agents, root
/// or not, make no name there, so none stands up a service that tells `sudo` or `sshd` outside
/// who a uid is (with a password hash of its choosing) or hears what they log, nor puts
/// `/dev/log` aside. The daemon makes nscd's directory where there is none. The directories are everyone's to write here, so only
/// Gatekeeper stands in a user agent's way.
#[test]
fn agents_stand_up_no_host_service() {
    // Where glibc looks (`/var/run` is a link to `/run` on most hosts).
    let nscd = Path::new("/var/run/nscd");
    let _ = std::fs::remove_file(nscd.join("socket"));
    let _ = std::fs::remove_dir(nscd);
    assert!(!nscd.exists(), "nscd's directory left by an earlier test");
    // Each directory as it was: its permissions, or none when the test makes it.
    let dirs = ["/run/systemd", "/run/systemd/userdb", "/run/dbus"].map(|dir| {
        let before = std::fs::metadata(dir).ok().map(|meta| meta.permissions());
        std::fs::create_dir_all(dir).unwrap();
        (Path::new(dir), before)
    });
    // Where host programs log: journald's link, made here where the guest has none.
    let dev_log = Path::new("/dev/log");
    let made_dev_log = std::fs::symlink_metadata(dev_log).is_err();
    if made_dev_log {
        std::os::unix::fs::symlink("/run/systemd/journal/dev-log", dev_log).unwrap();
    }
    let made = dirs.clone();
    let sockets = [
        "/var/run/nscd/socket",
        "/run/systemd/userdb/io.gk.Agent",
        "/run/systemd/private",
        "/run/dbus/system_bus_socket",
    ];
    // The test makes these (the guest runs no such service), and takes away only what it made.
    for name in sockets {
        assert!(std::fs::symlink_metadata(name).is_err(), "{name} is there");
    }
    let _restore = Restore::new(move || {
        for name in sockets.into_iter().chain(["/var/run/nscd/passwd"]) {
            let _ = std::fs::remove_file(name);
        }
        let _ = std::fs::set_permissions(nscd, std::fs::Permissions::from_mode(0o755));
        if made_dev_log {
            let _ = std::fs::remove_file(dev_log);
        }
        let _ = std::fs::remove_file("/dev/log.aside");
        for (dir, before) in made.into_iter().rev() {
            let _ = match before {
                Some(mode) => std::fs::set_permissions(dir, mode),
                None => std::fs::remove_dir(dir),
            };
        }
    });
    let scenario = Scenario::start("services-run", Options::default());
    assert!(nscd.is_dir(), "the daemon makes nscd's directory");
    // /dev is root's alone: only a root agent could put the link aside.
    dev_log_kept(&scenario, "at the start");
    for dir in dirs.iter().map(|(dir, _)| *dir).chain([nscd]) {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    for socket in sockets {
        only_from_outside(&scenario, "unix-bind", &[socket]);
        std::fs::remove_file(socket).unwrap();
    }
    only_from_outside(
        &scenario,
        "write",
        &["/var/run/nscd/passwd", "root::0:0::/:/bin/sh\n"],
    );
    std::fs::remove_file("/var/run/nscd/passwd").unwrap();
    // Taken away as its service stops (systemd removes a unit's runtime directory), the bus's
    // directory is made by no agent while it is away; made again by the host, it takes no socket
    // of an agent's, at once.
    std::fs::remove_dir("/run/dbus").unwrap();
    assert_eq!(
        scenario.tamper(&scenario.agents, "mkdir", &["/run/dbus"]),
        Outcome::Denied
    );
    assert_eq!(
        scenario.tamper(&scenario.outside, "mkdir", &["/run/dbus"]),
        Outcome::Ok
    );
    std::fs::set_permissions("/run/dbus", std::fs::Permissions::from_mode(0o777)).unwrap();
    only_from_outside(&scenario, "unix-bind", &["/run/dbus/system_bus_socket"]);
    std::fs::remove_file("/run/dbus/system_bus_socket").unwrap();
    // Nor is a directory put aside for one of the agent's.
    for dir in ["/var/run/nscd", "/run/systemd/userdb"] {
        let aside = format!("{dir}.old");
        assert_eq!(
            scenario.tamper(&scenario.agents, "rename", &[dir, &aside]),
            Outcome::Denied,
            "{dir}"
        );
    }
}

/// `/dev/log` is kept whenever it is made anew: by a syslog daemon that binds it after the daemon
/// started, or again as it restarts. A root agent unlinks and renames none of them (it would hear
/// what host programs log, or drop it); the node it named before is let go. Outside the agent
/// cgroups both work. While it is missing (before the first, and once the host takes it away
/// again), and while nslcd's, winbind's and systemd's user records' directories are (also once
/// the host took one away again), no agent makes it in any way, nor anything up to seven names
/// below them once the host makes them, nor writes or changes what the host made there, nor
/// puts the directory above aside.
#[test]
fn names_host_programs_trust_are_made_by_no_agent() {
    let dev_log = Path::new("/dev/log");
    // The guest runs no syslog: the test binds it as one would.
    assert!(
        std::fs::symlink_metadata(dev_log).is_err(),
        "/dev/log left by an earlier test"
    );
    let _restore = Restore::new(|| {
        for name in [
            "/dev/log",
            "/dev/log.old",
            "/dev/log.host",
            "/dev/log.agent",
            "/dev/log.own",
            "/run/nslcd.own",
            "/run/samba.own",
            "/run/winbindd.own",
            "/run/userdb.own",
            "/run/modprobe.own",
            "/run/initramfs.own",
            "/run/udev.own",
            "/run/gk-host-link",
        ] {
            let _ = std::fs::remove_file(name);
        }
        for dir in [
            "/run/nslcd",
            "/run/nslcd.aside",
            "/run/samba",
            "/run/samba.host",
            "/run/userdb",
            "/run/modprobe.d",
            "/run/initramfs",
            "/run/udev",
        ] {
            let _ = std::fs::remove_dir_all(dir);
        }
    });
    // Samba's directory without winbind's.
    assert!(
        !Path::new("/run/samba").exists(),
        "/run/samba left by an earlier test"
    );
    std::fs::create_dir("/run/samba").unwrap();
    std::fs::write("/run/samba/smbd.pid", "1\n").unwrap();
    let scenario = Scenario::start("services-kept", Options::default());
    // Everyone's to write here, so that only Gatekeeper stands in a user agent's way.
    let open_dirs = ["/dev", "/run", "/run/samba"].map(|dir| {
        let mode = std::fs::metadata(dir).unwrap().permissions();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        Restore::new(move || {
            let _ = std::fs::set_permissions(dir, mode);
        })
    });
    // Missing at the start: neither made by an agent, nor nslcd's directory (the guest has no
    // nslcd).
    made_by_no_agent(&scenario, "/dev/log", "/dev/log.own");
    made_by_no_agent(&scenario, "/run/nslcd", "/run/nslcd.own");
    made_by_no_agent(&scenario, "/run/samba/winbindd", "/run/winbindd.own");
    // Samba's directory is not put aside for one of the agent's, where winbind's would be free.
    assert_eq!(
        scenario.tamper(
            &scenario.agents,
            "rename",
            &["/run/samba", "/run/samba.agent"]
        ),
        Outcome::Denied
    );
    for args in [
        ["/run/samba", "/run/samba.host"],
        ["/run/samba.host", "/run/samba"],
    ] {
        assert_eq!(
            scenario.tamper(&scenario.outside, "rename", &args),
            Outcome::Ok
        );
    }
    // Taken away by the host as its service stops, and made again: no agent makes Samba's
    // directory while it is away, nor winbind's in it once it is back.
    std::fs::remove_dir_all("/run/samba").unwrap();
    made_by_no_agent(&scenario, "/run/samba", "/run/samba.own");
    std::fs::create_dir("/run/samba").unwrap();
    std::fs::set_permissions("/run/samba", std::fs::Permissions::from_mode(0o777)).unwrap();
    made_by_no_agent(&scenario, "/run/samba/winbindd", "/run/winbindd.own");
    // Nor anything three names below Samba's, where winbind's socket and Samba's RPC sockets
    // sit, nor a record in systemd's user records, which its name service reads itself.
    std::fs::create_dir_all("/run/samba/winbindd/sub").unwrap();
    std::fs::set_permissions(
        "/run/samba/winbindd/sub",
        std::fs::Permissions::from_mode(0o777),
    )
    .unwrap();
    for (op, path) in [
        ("mkdir", "/run/samba/winbindd/sub/made"),
        ("unix-bind", "/run/samba/winbindd/sub/socket"),
    ] {
        only_from_outside(&scenario, op, &[path]);
        let _ = std::fs::remove_file(path);
        let _ = std::fs::remove_dir(path);
    }
    made_by_no_agent(&scenario, "/run/userdb", "/run/userdb.own");
    // Nor where host programs that run as root take code from: kmod's `install` lines, the
    // initramfs systemd runs at shutdown, udev's rules; nor, once the host made udev's rules
    // directory, a rule in it (a `RUN+=` would run outside at the next device event).
    made_by_no_agent(&scenario, "/run/modprobe.d", "/run/modprobe.own");
    made_by_no_agent(&scenario, "/run/initramfs", "/run/initramfs.own");
    made_by_no_agent(&scenario, "/run/udev", "/run/udev.own");
    std::fs::create_dir_all("/run/udev/rules.d").unwrap();
    std::fs::set_permissions("/run/udev/rules.d", std::fs::Permissions::from_mode(0o777)).unwrap();
    only_from_outside(&scenario, "write", &["/run/udev/rules.d/99-gk.rules", "x"]);
    // Nor six names below the initramfs the host unpacks after the start, where the shutdown
    // program's hooks are.
    let hooks = "/run/initramfs/usr/lib/dracut/hooks/shutdown";
    std::fs::create_dir_all(hooks).unwrap();
    std::fs::set_permissions(hooks, std::fs::Permissions::from_mode(0o777)).unwrap();
    only_from_outside(&scenario, "write", &[&format!("{hooks}/99-gk.sh"), "x"]);
    // Made by the host after the start, nslcd's directory takes no name of an agent's, nor does
    // a directory the host makes in it (two and three names below the guarded one), and what the
    // host made there stays.
    for dir in ["/run/nslcd", "/run/nslcd/sub"] {
        std::fs::create_dir(dir).unwrap();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        for (op, args) in [
            ("unix-bind", vec![format!("{dir}/socket")]),
            ("mkdir", vec![format!("{dir}/made")]),
        ] {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            only_from_outside(&scenario, op, &args);
            let _ = std::fs::remove_file(args[0]);
            let _ = std::fs::remove_dir(args[0]);
        }
        // Nor is what the host made there written, moved or removed by an agent, nor given
        // another mode or owner (handed to a user agent, or made one its service refuses).
        let file = format!("{dir}/host");
        std::fs::write(&file, "").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
        only_from_outside(&scenario, "write", &[&file, "agent"]);
        // Nor given a name elsewhere to write it by.
        only_from_outside(&scenario, "link", &[&file, "/run/gk-host-link"]);
        std::fs::remove_file("/run/gk-host-link").unwrap();
        for (op, args) in [
            ("chmod", vec![dir, "0777"]),
            ("chown", vec![dir, "0"]),
            ("utimes", vec![&file]),
        ] {
            assert_eq!(
                scenario.tamper(&scenario.agents, op, &args),
                Outcome::Denied,
                "{op} {args:?}"
            );
            assert_eq!(
                scenario.tamper(&scenario.outside, op, &args),
                Outcome::Ok,
                "outside: {op} {args:?}"
            );
        }
        only_from_outside(&scenario, "unlink", &[&file]);
        let aside = format!("{dir}.aside");
        only_from_outside(&scenario, "rename", &[dir, &aside]);
        std::fs::rename(&aside, dir).unwrap();
    }
    for round in ["made after the start", "made again"] {
        if dev_log.exists() {
            // The old one put aside as a restart would leave it.
            std::fs::rename(dev_log, "/dev/log.old").unwrap();
        }
        assert_eq!(
            scenario.tamper(&scenario.outside, "unix-bind", &["/dev/log"]),
            Outcome::Ok
        );
        let node = std::fs::symlink_metadata(dev_log).unwrap().ino();
        scenario.wait_journal("protection_updated", |event| {
            event["path"] == "/dev/log" && event["ino"] == node
        });
        dev_log_kept(&scenario, round);
    }
    // Nor does an agent give it a second name or put a socket of its own in its place.
    assert_eq!(
        scenario.tamper(&scenario.agents, "unix-bind", &["/dev/log.agent"]),
        Outcome::Ok
    );
    for (op, args) in [
        ("link", ["/dev/log", "/dev/log.link"]),
        ("rename", ["/dev/log.agent", "/dev/log"]),
    ] {
        assert_eq!(
            scenario.tamper(&scenario.agents, op, &args),
            Outcome::Denied,
            "{op}"
        );
    }
    assert_eq!(
        scenario.tamper(&scenario.outside, "link", &["/dev/log", "/dev/log.link"]),
        Outcome::Ok
    );
    // No longer the name's node: an agent may remove it like any file of root's.
    assert_eq!(
        scenario.tamper(&scenario.agents, "unlink", &["/dev/log.old"]),
        Outcome::Ok
    );
    // Taken away as a syslog daemon that stops takes it (rsyslog without systemd): still no
    // agent's to make while the host's is away.
    std::fs::remove_file(dev_log).unwrap();
    made_by_no_agent(&scenario, "/dev/log", "/dev/log.own");
    drop(open_dirs);
}

/// What the host put at or below a guarded name is no agent's to write, also where a rule asks
/// approval to read it: the approved read passes, an open for reading and writing with that
/// approval is refused (and leaves the grant); and a file system the host mounts at a guarded
/// name after the start takes no names, writes or changes of agents either (the names' own walk
/// stops at its root), also through a bind of it elsewhere. Outside the agent cgroups each works.
#[test]
fn a_read_approval_at_a_guarded_name_writes_nothing() {
    let (samba, record) = (Path::new("/run/samba"), "/run/samba/record");
    assert!(!samba.exists(), "/run/samba left by an earlier test");
    let _restore = Restore::new(|| {
        for mount in ["/tmp/gk-nslcd-view", "/run/nslcd"] {
            let _ = Command::new("umount").arg(mount).status();
        }
        let _ = std::fs::remove_dir("/tmp/gk-nslcd-view");
        for dir in ["/run/samba", "/run/nslcd"] {
            let _ = std::fs::remove_dir_all(dir);
        }
    });
    std::fs::create_dir(samba).unwrap();
    std::fs::write(record, "host\n").unwrap();
    std::fs::set_permissions(record, std::fs::Permissions::from_mode(0o666)).unwrap();
    let scenario = Scenario::start(
        "guarded-read",
        Options {
            extra: "[[protect.file]]\npath = \"/run/samba\"\nname = \"samba\"\naccess = \"read\"\n"
                .into(),
            ..Options::default()
        },
    );
    assert_eq!(
        scenario.tamper(&scenario.agents, "read", &[record]),
        Outcome::Denied
    );
    let request = scenario.wait_request_for(record);
    scenario.approve(&request);
    assert_eq!(
        scenario.tamper(&scenario.agents, "create-rdwr", &[record]),
        Outcome::Denied,
        "approved for reading, opened for writing too"
    );
    assert_eq!(
        scenario.tamper(&scenario.agents, "read", &[record]),
        Outcome::Ok,
        "the approved read"
    );
    assert_eq!(
        scenario.tamper(&scenario.outside, "create-rdwr", &[record]),
        Outcome::Ok
    );
    assert_eq!(std::fs::read_to_string(record).unwrap(), "host\n");
    // A file system the host mounts at nslcd's directory after the start.
    let nslcd = Path::new("/run/nslcd");
    assert!(!nslcd.exists(), "/run/nslcd left by an earlier test");
    std::fs::create_dir(nslcd).unwrap();
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "mode=0777", "gk-guarded", "/run/nslcd"])
        .status()
        .unwrap();
    assert!(status.success(), "mount a tmpfs at /run/nslcd");
    let pid = "/run/nslcd/nslcd.pid";
    std::fs::write(pid, "1\n").unwrap();
    std::fs::set_permissions(pid, std::fs::Permissions::from_mode(0o666)).unwrap();
    only_from_outside(&scenario, "write", &[pid, "agent"]);
    for path in ["/run/nslcd/made", "/run/nslcd/socket"] {
        let op = if path.ends_with("made") {
            "mkdir"
        } else {
            "unix-bind"
        };
        only_from_outside(&scenario, op, &[path]);
        let _ = std::fs::remove_dir(path);
        let _ = std::fs::remove_file(path);
    }
    assert_eq!(
        scenario.tamper(&scenario.agents, "chmod", &["/run/nslcd", "0700"]),
        Outcome::Denied
    );
    // Nor through a bind of it elsewhere.
    let view = Path::new("/tmp/gk-nslcd-view");
    std::fs::create_dir_all(view).unwrap();
    let status = Command::new("mount")
        .args(["--bind", "/run/nslcd", "/tmp/gk-nslcd-view"])
        .status()
        .unwrap();
    assert!(status.success(), "bind /run/nslcd at {}", view.display());
    only_from_outside(
        &scenario,
        "write",
        &["/tmp/gk-nslcd-view/nslcd.pid", "agent"],
    );
}

/// No agent, root or user, makes the missing `path` in any way: a socket bound there, a
/// symlink, a FIFO, a file, a directory, a hard link or a rename of its own file `own` (made on
/// the same file system) to it (journaled as `guarded_name`). Outside the agent cgroups each
/// works, and is taken away again.
fn made_by_no_agent(scenario: &Scenario, path: &str, own: &str) {
    assert!(std::fs::symlink_metadata(path).is_err(), "{path} is there");
    let take_away = || {
        let _ = std::fs::remove_file(path);
        let _ = std::fs::remove_dir(path);
    };
    for (op, args) in [
        ("unix-bind", vec![path]),
        ("symlink", vec!["/run/gk-elsewhere", path]),
        ("mkfifo", vec![path]),
        ("write", vec![path, "x"]),
        ("mkdir", vec![path]),
    ] {
        only_from_outside(scenario, op, &args);
        take_away();
    }
    assert_eq!(
        scenario.tamper(&scenario.agents, "write", &[own, "x"]),
        Outcome::Ok
    );
    // Linked first, so the agent's file is still there to rename.
    for op in ["link", "rename"] {
        assert_eq!(
            scenario.tamper(&scenario.agents, op, &[own, path]),
            Outcome::Denied,
            "{op} to {path}"
        );
        assert_eq!(
            scenario.tamper(&scenario.outside, op, &[own, path]),
            Outcome::Ok,
            "outside: {op} to {path}"
        );
        take_away();
    }
    scenario.wait_journal("tamper_attempt", |event| event["hook"] == "guarded_name");
}

/// Most hosts reach nscd's directory through `/var/run`, a link to `/run`: the link stays, or a
/// root agent would put its own `/var/run` (and nscd) in its place. Made here: the guest's
/// `/var/run`, where there is one, is a directory of its own.
#[test]
fn the_links_on_the_way_to_host_services_stay() {
    let (var_run, aside) = (Path::new("/var/run"), Path::new("/var/run.gk-aside"));
    let had = std::fs::rename(var_run, aside).is_ok();
    let _restore = Restore::new(move || {
        for name in ["/var/run", "/var/run.agent", "/var/run.host"] {
            let _ = std::fs::remove_file(name);
        }
        if had {
            let _ = std::fs::rename(aside, var_run);
        }
    });
    std::os::unix::fs::symlink("/run", var_run).unwrap();
    let scenario = Scenario::start("services-links", Options::default());
    let outcomes = [
        scenario.tamper(&scenario.agents, "rename", &["/var/run", "/var/run.agent"]),
        scenario.tamper(&scenario.agents, "unlink", &["/var/run"]),
        scenario.tamper(&scenario.outside, "rename", &["/var/run", "/var/run.host"]),
        scenario.tamper(&scenario.outside, "rename", &["/var/run.host", "/var/run"]),
    ];
    assert_eq!(
        outcomes,
        [Outcome::Denied, Outcome::Denied, Outcome::Ok, Outcome::Ok]
    );
}

/// The host's directories keep their names in `/` (merged-/usr systems link `/bin`, `/lib64` and
/// the like there: replaced, they would hand host processes and approved execs the agent's
/// files), and a file system or a file mounted below a host path, before the daemon started or
/// after, is guarded like the path: root and user agents change none of them; outside the agent
/// cgroups they change.
#[test]
fn host_names_in_root_and_mounts_below_host_paths_stay_the_hosts() {
    let mut scenario = Scenario::prepare("aa-host-names", Options::default());
    let link = Path::new("/gk-aa-host-names-lib");
    let _ = std::fs::remove_file(link);
    std::os::unix::fs::symlink("usr/lib", link).unwrap();
    let mount_point = Path::new("/var/lib/gk-aa-host-names");
    mount_open_tmpfs(mount_point);
    // A file mounted over one in /etc, as container runtimes mount /etc/resolv.conf.
    let mounted_file = Path::new("/etc/gk-aa-host-names.conf");
    let source = Path::new("/run/gk-aa-host-names.conf");
    bind_open_file(source, mounted_file);
    scenario.start_daemon();
    let mounted_text = mounted_file.display().to_string();
    assert_eq!(
        scenario.tamper(&scenario.agents, "write", &[&mounted_text, "agent"]),
        Outcome::Denied,
        "root agent writes a file mounted below a host path"
    );
    assert_eq!(
        scenario.tamper_as_user(&scenario.agents, "write", &[&mounted_text, "agent"]),
        Outcome::Denied,
        "user agent writes a file mounted below a host path"
    );
    assert_eq!(
        scenario.tamper_as_user(&scenario.outside, "write", &[&mounted_text, "outside"]),
        Outcome::Ok
    );
    let unbound = Command::new("umount").arg(mounted_file).status().unwrap();
    assert!(unbound.success());
    let _ = std::fs::remove_file(mounted_file);
    let _ = std::fs::remove_file(source);
    let link_text = link.display().to_string();
    let planted = mount_point.join("planted").display().to_string();
    let fresh = "/gk-aa-host-names-new";
    for attempt in [
        ("unlink", vec![link_text.as_str()]),
        (
            "rename",
            vec![link_text.as_str(), "/gk-aa-host-names-moved"],
        ),
        ("symlink", vec!["/tmp", fresh]),
        ("write", vec![planted.as_str(), "agent"]),
    ] {
        let (op, args) = &attempt;
        assert_eq!(
            scenario.tamper(&scenario.agents, op, args),
            Outcome::Denied,
            "root agent: {attempt:?}"
        );
    }
    assert_eq!(
        scenario.tamper_as_user(&scenario.agents, "write", &[&planted, "agent"]),
        Outcome::Denied,
        "user agent writes below a host path's mount"
    );
    assert!(std::fs::symlink_metadata(link).is_ok());
    assert!(!Path::new(fresh).exists() && !Path::new(&planted).exists());
    // Control: outside the agent cgroups the same changes go through.
    assert_eq!(
        scenario.tamper_as_user(&scenario.outside, "write", &[&planted, "host"]),
        Outcome::Ok
    );
    for (op, args) in [
        ("write", vec![planted.as_str(), "host"]),
        ("symlink", vec!["/tmp", fresh]),
        ("unlink", vec![fresh]),
        ("unlink", vec![link_text.as_str()]),
    ] {
        assert_eq!(
            scenario.tamper(&scenario.outside, op, &args),
            Outcome::Ok,
            "{op} {args:?}"
        );
    }
    // Mounted while the daemon runs: guarded as soon as the daemon sees it, a file system and
    // a file alike.
    let later = Path::new("/var/lib/gk-aa-host-names-later");
    mount_open_tmpfs(later);
    let later_file = Path::new("/etc/gk-aa-host-names-later.conf");
    let later_source = Path::new("/run/gk-aa-host-names-later.conf");
    bind_open_file(later_source, later_file);
    for path in [later, later_file] {
        wait_guarded(&scenario, path, 1);
    }
    let planted_later = later.join("planted").display().to_string();
    let later_file_text = later_file.display().to_string();
    for target in [&planted_later, &later_file_text] {
        writes_only_from_outside(&scenario, target);
    }
    // Mounted there again (another device: a mount in between takes the freed number), then
    // another mounted over it: each new file system guarded in turn.
    let unmounted = Command::new("umount").arg(later).status().unwrap();
    assert!(unmounted.success());
    let spacer = Path::new("/run/gk-aa-host-names-spacer");
    mount_open_tmpfs(spacer);
    mount_open_tmpfs(later);
    wait_guarded(&scenario, later, 2);
    writes_only_from_outside(&scenario, &later.join("again").display().to_string());
    mount_open_tmpfs(later);
    wait_guarded(&scenario, later, 3);
    writes_only_from_outside(&scenario, &later.join("over").display().to_string());
    for path in [later, spacer] {
        let unmounted = Command::new("umount").arg(path).status().unwrap();
        assert!(unmounted.success());
    }
    let _ = std::fs::remove_dir(spacer);
    for path in [later_file, later] {
        let unmounted = Command::new("umount").arg(path).status().unwrap();
        assert!(unmounted.success());
    }
    let _ = std::fs::remove_file(later_file);
    let _ = std::fs::remove_file(later_source);
    let _ = std::fs::remove_dir(later);
    let unmounted = Command::new("umount").arg(mount_point).status().unwrap();
    assert!(unmounted.success());
    let _ = std::fs::remove_dir(mount_point);
}

/// Mounts a tmpfs at `path` (made if missing) with mount(2) itself: a test makes thousands.
fn mount_tmpfs_quickly(path: &Path) {
    std::fs::create_dir_all(path).unwrap();
    let target = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let mounted = unsafe {
        libc::mount(
            c"gk-aa".as_ptr(),
            target.as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    assert_eq!(
        mounted,
        0,
        "mount {path:?}: {}",
        std::io::Error::last_os_error()
    );
}

/// Entries in the kernel's map of protected files, as `gatekeeper status` says.
fn protected_files(scenario: &Scenario) -> u64 {
    scenario.status()["protected_files"]
        .as_u64()
        .expect("status names protected_files")
}

/// A guard the daemon put in for a mount made while it ran goes with the mount, so a host that
/// mounts below host paths all day does not fill the kernel's map; the path it guarded stays its
/// host path's. When the map has no room left, the daemon says which mounts it leaves unguarded
/// (status, journal) and guards them once room is free again.
#[test]
fn mount_guards_go_with_their_mounts_and_a_full_map_is_said() {
    let mut scenario = Scenario::prepare("aa-mount-guards", Options::default());
    scenario.start_daemon();

    // Before the daemon guards a mount below a host path (here it is held up, stopped), the
    // kernel refuses agents' opens for writing there itself: a root agent watching the mount
    // table gets no file open first. So for a bind of a directory of a device with rules, whose
    // own tree does not pass the host path. Mounts elsewhere, an agent's sandbox bound over a
    // host path in a namespace of its own, and pipes reached through /proc, stay the agents'.
    let held = Stopped::new(scenario.daemon_pid());
    let early = Path::new("/var/lib/gk-aa-mount-guards-early");
    mount_open_tmpfs(early);
    let nested = early.join("inner");
    mount_open_tmpfs(&nested);
    // Deeper than the kernel looks up (five mounts): refused all the same.
    let deep = [nested.join("3"), nested.join("3/4"), nested.join("3/4/5")];
    for level in &deep {
        mount_open_tmpfs(level);
    }
    let beside = Path::new("/run/gk-aa-mount-guards-beside");
    mount_open_tmpfs(beside);
    let bound_source = Path::new("/gk-aa-mount-guards-source");
    std::fs::create_dir_all(bound_source).unwrap();
    std::fs::set_permissions(bound_source, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let bound = Path::new("/var/lib/gk-aa-mount-guards-bound");
    std::fs::create_dir_all(bound).unwrap();
    bind(bound_source, bound);
    // Each writer its own file: a root agent's denied open may leave the name it made.
    let outcomes = |target: &str| {
        (
            scenario.tamper(&scenario.agents, "write", &[&format!("{target}-root"), "a"]),
            scenario.tamper_as_user(&scenario.agents, "write", &[&format!("{target}-user"), "a"]),
            scenario.tamper_as_user(&scenario.outside, "write", &[&format!("{target}-out"), "o"]),
        )
    };
    for target in [
        early.join("planted"),
        nested.join("planted"),
        deep[2].join("planted"),
        bound.join("planted"),
    ] {
        let target = target.display().to_string();
        assert_eq!(
            outcomes(&target),
            (Outcome::Denied, Outcome::Denied, Outcome::Ok),
            "{target} before its guard"
        );
    }
    // Nor are names made, removed or moved there.
    names_changed_only_from_outside(&scenario, early);
    // A copy of the mount in a namespace of the agent's own is judged as the host's mount.
    copies_written_only_from_outside(&scenario, early);
    let shadow = beside.display().to_string();
    let own = early.join("own").display().to_string();
    std::fs::create_dir(&own).unwrap();
    for (mode, agent) in [("private", false), ("user", true)] {
        let sandboxed = format!("{own}/planted-{mode}");
        let args = [
            "in-ns",
            mode,
            "bind-then",
            &shadow,
            &own,
            "write",
            &sandboxed,
            "a",
        ];
        let outcome = match agent {
            false => scenario.tamper(&scenario.agents, args[0], &args[1..]),
            true => scenario.tamper_as_user(&scenario.agents, args[0], &args[1..]),
        };
        assert_eq!(
            outcome,
            Outcome::Ok,
            "a {mode} agent's own bind over a host path"
        );
    }
    // A file system of the agent's own bound more often than the kernel looks through for a
    // mount in the host's namespace is refused (journaled), not let through unjudged.
    let scratch = beside.join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    let scratch = scratch.display().to_string();
    let file = format!("{scratch}/file");
    let binds = |count: &'static str| {
        [
            "user",
            "tmpfs-binds-then",
            &scratch,
            count,
            "write",
            &file,
            "a",
        ]
    };
    assert_eq!(
        (
            scenario.tamper_as_user(&scenario.agents, "in-ns", &binds("8")),
            scenario.tamper_as_user(&scenario.agents, "in-ns", &binds("64")),
            scenario.tamper_as_user(&scenario.outside, "in-ns", &binds("64")),
        ),
        (Outcome::Ok, Outcome::Denied, Outcome::Ok),
        "an agent's own tmpfs bound 8 and 64 times"
    );
    let beside_text = beside.join("planted").display().to_string();
    assert_eq!(
        outcomes(&beside_text),
        (Outcome::Ok, Outcome::Ok, Outcome::Ok)
    );
    assert_eq!(
        scenario.tamper(&scenario.agents, "write", &["/proc/self/fd/2", "agent\n"]),
        Outcome::Ok,
        "an agent writes its own stderr pipe through /proc"
    );
    // An overlay of the agent's own whose upper directory is on the new mount (on 6.1 the
    // file below carries the overlay's mount): refused, or read-only from the start, since the
    // overlay makes no names in its work directory there.
    let layers = ["lower", "upper", "work", "merged"].map(|layer| early.join(layer));
    for layer in &layers {
        std::fs::create_dir(layer).unwrap();
    }
    let [lower, upper, work, merged] = layers.map(|layer| layer.display().to_string());
    let overlay = |cgroup: &Path, who: &str| {
        let file = format!("{merged}/through-{who}");
        let args = [
            "private",
            "overlay-then",
            &lower,
            &upper,
            &work,
            &merged,
            "write",
            &file,
            "a",
        ];
        scenario.tamper(cgroup, "in-ns", &args)
    };
    let through_overlay = overlay(&scenario.agents, "agent");
    assert!(
        [Outcome::Denied, Outcome::Errno(libc::EROFS)].contains(&through_overlay),
        "an overlay of one's own with its upper directory on the new mount: {through_overlay:?}"
    );
    assert_eq!(overlay(&scenario.outside, "outside"), Outcome::Ok);
    // A file system mounted first where no guard is needed, then bound below a host path: a
    // copy of the bind is judged by the bind.
    let rebound = Path::new("/var/lib/gk-aa-mount-guards-rebound");
    std::fs::create_dir_all(rebound).unwrap();
    bind(beside, rebound);
    copies_written_only_from_outside(&scenario, rebound);
    drop(held);
    scenario.wait_journal("tamper_attempt", |event| event["hook"] == "unguarded_mount");
    wait_guarded(&scenario, early, 1);
    wait_guarded(&scenario, &nested, 1);
    writes_only_from_outside(&scenario, &nested.join("after").display().to_string());
    wait_guarded(&scenario, bound, 1);
    for path in (deep.iter().rev().map(PathBuf::as_path)).chain([
        nested.as_path(),
        early,
        rebound,
        beside,
        bound,
    ]) {
        let unmounted = Command::new("umount").arg(path).status().unwrap();
        assert!(unmounted.success(), "umount {path:?}");
    }
    for path in [early, rebound, beside, bound] {
        let _ = std::fs::remove_dir(path);
    }
    let _ = std::fs::remove_dir_all(bound_source);

    let before = protected_files(&scenario);
    let mount_point = Path::new("/var/lib/gk-aa-mount-guards");
    mount_open_tmpfs(mount_point);
    wait_guarded(&scenario, mount_point, 1);
    // Its root and the marker of its device.
    assert_eq!(protected_files(&scenario), before + 2);
    writes_only_from_outside(
        &scenario,
        &mount_point.join("planted").display().to_string(),
    );
    let unmounted = Command::new("umount").arg(mount_point).status().unwrap();
    assert!(unmounted.success());
    let path = mount_point.display().to_string();
    scenario.wait_journal("mount_unguarded", |event| {
        event["path"] == path.as_str() && event["why"] == "unmounted"
    });
    assert_eq!(protected_files(&scenario), before);
    // The mount point is /var/lib's again, and guarded as such.
    let below = mount_point.join("after").display().to_string();
    assert_eq!(
        scenario.tamper(&scenario.agents, "write", &[&below, "agent"]),
        Outcome::Denied,
        "root agent writes where a mount was"
    );
    assert_eq!(
        scenario.tamper(&scenario.outside, "write", &[&below, "outside"]),
        Outcome::Ok
    );
    std::fs::remove_file(&below).unwrap();
    std::fs::remove_dir(mount_point).unwrap();

    // A container host's day: more file systems below host paths than the map holds.
    let fill = Path::new("/var/lib/gk-aa-mount-guards-fill");
    mount_tmpfs_quickly(fill);
    let capacity = u64::from(gatekeeper_common::MAX_PROTECTED_FILES);
    for index in 0..capacity / 2 {
        mount_tmpfs_quickly(&fill.join(index.to_string()));
    }
    let late = Path::new("/var/lib/gk-aa-mount-guards-late");
    mount_open_tmpfs(late);
    let late_text = late.display().to_string();
    let full = scenario.wait_journal("mount_unguarded", |event| {
        event["path"] == late_text.as_str()
    });
    assert!(
        full["why"]
            .as_str()
            .is_some_and(|why| why.contains("map of protected files")),
        "{full}"
    );
    wait_for("the late mount listed unguarded", || {
        let status = scenario.status();
        let listed = status["unguarded_mounts"]
            .as_array()
            .is_some_and(|paths| paths.iter().any(|path| *path == late_text.as_str()));
        listed.then_some(status)
    });
    // Room is kept for protected files replaced meanwhile.
    assert!(protected_files(&scenario) <= capacity - 512);
    let text = scenario.gatekeeper(&["status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.lines()
            .any(|line| line.starts_with("NOT GUARDED: ") && line.contains(&late_text)),
        "{text}"
    );
    // Meanwhile the kernel still refuses agents' opens for writing there (of a file the host
    // made: a name an agent makes there in this state is a limit the README states).
    let unguarded = late.join("unguarded");
    std::fs::write(&unguarded, "host\n").unwrap();
    std::fs::set_permissions(&unguarded, std::fs::Permissions::from_mode(0o666)).unwrap();
    writes_only_from_outside(&scenario, &unguarded.display().to_string());
    // All of them gone at once: their guards go, and the late one is guarded now.
    let detached = Command::new("umount").arg("-l").arg(fill).status().unwrap();
    assert!(detached.success());
    wait_guarded(&scenario, late, 1);
    writes_only_from_outside(&scenario, &late.join("planted").display().to_string());
    wait_for("the fill's guards taken out", || {
        (protected_files(&scenario) == before + 2).then_some(())
    });
    assert_eq!(scenario.status()["unguarded_mounts"], serde_json::json!([]));
    let unmounted = Command::new("umount").arg(late).status().unwrap();
    assert!(unmounted.success());
    let _ = std::fs::remove_dir(late);
    let _ = std::fs::remove_dir(fill);
}

/// A file system mounted below a `[[protect.file]]` directory that is no host path is covered
/// by that rule like the files beside it: once the daemon has guarded it, an agent's read or
/// write there is a request named by the rule, and an approval passes one open. Before the guard
/// (the daemon held stopped) the kernel refuses agents' writes there itself.
#[test]
fn a_mount_below_a_protected_directory_keeps_its_rule() {
    let ruled = Path::new("/srv/gk-aa-ruled-mounts");
    std::fs::create_dir_all(ruled).unwrap();
    let scenario = Scenario::start(
        "aa-ruled-mounts",
        Options {
            extra: format!(
                "[[protect.file]]\npath = \"{}\"\nname = \"ruled volume\"\naccess = \"any\"\n",
                ruled.display()
            ),
            ..Options::default()
        },
    );
    let held = Stopped::new(scenario.daemon_pid());
    let volume = ruled.join("volume");
    mount_open_tmpfs(&volume);
    let data = volume.join("data");
    std::fs::write(&data, "secret\n").unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o666)).unwrap();
    let data_text = data.display().to_string();
    writes_only_from_outside(&scenario, &data_text);
    drop(held);
    scenario.wait_journal("tamper_attempt", |event| event["hook"] == "unguarded_mount");
    wait_guarded(&scenario, &volume, 1);

    asked_once_per_approval(&scenario, &data_text, "ruled volume");

    // A volume below a bind of the directory made elsewhere (private: nothing propagates to the
    // directory's own path) is below the rule as the kernel sees it, and guarded as such.
    let bind = Path::new("/mnt/gk-aa-ruled-bind");
    std::fs::create_dir_all(bind).unwrap();
    std::fs::create_dir_all(ruled.join("elsewhere")).unwrap();
    for args in [
        vec![
            "--bind",
            &ruled.display().to_string(),
            "/mnt/gk-aa-ruled-bind",
        ],
        vec!["--make-private", "/mnt/gk-aa-ruled-bind"],
    ] {
        assert!(Command::new("mount").args(args).status().unwrap().success());
    }
    let below_bind = bind.join("elsewhere");
    mount_open_tmpfs(&below_bind);
    let data = below_bind.join("data");
    std::fs::write(&data, "secret\n").unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o666)).unwrap();
    wait_guarded(&scenario, &below_bind, 1);
    asked_once_per_approval(&scenario, &data.display().to_string(), "ruled volume");
    for mount in [&below_bind, bind, &volume] {
        unmount(mount);
    }
    std::fs::remove_dir_all(ruled).unwrap();
}

/// A file system the host mounts over a rule's path, over a directory above one, or below a
/// protected directory hides the file the daemon keyed the rule to. Until the daemon has looked
/// at it (held stopped here, so that the moment lasts) the kernel refuses agents, root and user,
/// every read and run of the files there, while the host reads them and a mount elsewhere stays
/// the agents'. Once the daemon has followed the paths, the rules hold on the new files and the
/// other files there are the agents' again.
#[test]
fn host_mounts_over_rule_paths_wait_for_the_daemon() {
    let base = Path::new("/srv/gk-aa-mounted-over");
    let (read_dir, above, write_dir, free) = (
        base.join("read"),
        base.join("above"),
        base.join("write"),
        base.join("free"),
    );
    let ruled_file = above.join("inner/secret");
    for dir in [&read_dir, &above.join("inner"), &write_dir, &free] {
        std::fs::create_dir_all(dir).unwrap();
    }
    for file in [&read_dir.join("secret"), &ruled_file] {
        std::fs::write(file, "host\n").unwrap();
    }
    let scenario = Scenario::start(
        "aa-mounted-over",
        Options {
            extra: format!(
                "[[protect.file]]\npath = \"{}\"\nname = \"read dir\"\naccess = \"read\"\n\
                 [[protect.file]]\npath = \"{}\"\nname = \"inner secret\"\naccess = \"read\"\n\
                 [[protect.file]]\npath = \"{}\"\nname = \"write dir\"\naccess = \"write\"\n",
                read_dir.display(),
                ruled_file.display(),
                write_dir.display()
            ),
            ..Options::default()
        },
    );
    let (agents, outside) = (&scenario.agents, &scenario.outside);
    let tools = scenario.protected.parent().unwrap().to_owned();
    let volume = write_dir.join("volume");
    let text = |path: &Path| path.display().to_string();
    let (new_secret, inner_other, volume_data, free_data) = (
        read_dir.join("secret"),
        above.join("inner/other"),
        volume.join("data"),
        free.join("data"),
    );
    let other_tool = tools.join("other");
    // The daemon has looked once the other file at the rule's file's directory is the agents'
    // again.
    let looked = |what: &str| {
        wait_for(what, || {
            (scenario.tamper(agents, "read", &[&text(&inner_other)]) == Outcome::Ok).then_some(())
        })
    };

    // The directory of the rule's file on the root file system, for when an unmount shows it
    // again (at the end).
    let lower_inner = std::fs::File::open(above.join("inner")).unwrap();
    let held = Stopped::new(scenario.daemon_pid());
    // Over a directory rule, over a directory above a file rule, below a write rule, over the
    // directory of an exec rule's binary, and elsewhere.
    for dir in [&read_dir, &above, &volume, &tools, &free] {
        mount_open_tmpfs(dir);
    }
    std::fs::create_dir_all(above.join("inner")).unwrap();
    // Open to all: the only refusal of a name made there is Gatekeeper's.
    std::fs::set_permissions(above.join("inner"), std::fs::Permissions::from_mode(0o777)).unwrap();
    for file in [
        &new_secret,
        &ruled_file,
        &inner_other,
        &volume_data,
        &free_data,
    ] {
        std::fs::write(file, "mounted\n").unwrap();
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    for tool in [&scenario.protected, &other_tool] {
        std::fs::copy(bin("gk-helper"), tool).unwrap();
    }
    for path in [&new_secret, &ruled_file, &inner_other, &volume_data] {
        only_from_outside(&scenario, "read", &[&text(path)]);
    }
    let runs = [&scenario.protected, &other_tool].map(|tool| {
        (
            scenario.exec_in(agents, tool),
            scenario.exec_in(outside, tool),
        )
    });
    let free_reads = [
        scenario.tamper(agents, "read", &[&text(&free_data)]),
        scenario.tamper_as_user(agents, "read", &[&text(&free_data)]),
    ];
    drop(held);
    assert_eq!(
        runs,
        [(Exec::Denied, Exec::Ran), (Exec::Denied, Exec::Ran)],
        "runs of the binaries mounted over the exec rule's directory (agent, outside)"
    );
    assert_eq!(free_reads, [Outcome::Ok, Outcome::Ok], "{free_data:?}");
    scenario.wait_journal("tamper_attempt", |event| event["hook"] == "unguarded_mount");

    looked("the daemon's look at the mounts");
    assert_eq!(
        scenario.tamper_as_user(agents, "read", &[&text(&inner_other)]),
        Outcome::Ok
    );
    // The new directory holding the rule's file is held as the old one was: agents make no
    // names there (one of theirs at the name a trusted writer renames over the secret would
    // catch what it writes).
    only_from_outside(&scenario, "mkdir", &[&text(&above.join("inner/made"))]);
    for path in [&volume_data, &free_data] {
        assert_eq!(
            scenario.tamper_as_user(agents, "read", &[&text(path)]),
            Outcome::Ok,
            "{path:?}"
        );
    }
    assert_eq!(scenario.exec_in(agents, &other_tool), Exec::Ran);
    assert_eq!(scenario.agent_exec(), Exec::Denied);
    scenario.wait_request(&scenario.protected);
    for (path, rule) in [(&new_secret, "read dir"), (&ruled_file, "inner secret")] {
        scenario.agents_denied("read", &[&text(path)]);
        let request = wait_for(&format!("a request for {path:?}"), || {
            (scenario.requests(true).into_iter())
                .find(|request| request["kind"] == "file" && request["target"] == text(path))
        });
        assert_eq!(request["rule"], rule, "{request}");
    }

    // Again held: the host mounts a new file system where it had, which the kernel gives the
    // old one's device number (and a tmpfs's root is always inode 1): what the daemon marked of
    // the old one says nothing of it (its secret is made last, another inode than before). And
    // a file bound over the exec rule's binary itself is no binary the rule knows yet.
    let held = Stopped::new(scenario.daemon_pid());
    let device = |path: &Path| std::fs::metadata(path).unwrap().dev();
    let before = device(&above);
    unmount(&above);
    mount_open_tmpfs(&above);
    let after = device(&above);
    std::fs::create_dir_all(above.join("inner")).unwrap();
    for file in [&above.join("inner/pad"), &inner_other, &ruled_file] {
        std::fs::write(file, "mounted again\n").unwrap();
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let bound = Command::new("mount")
        .arg("--bind")
        .arg(&other_tool)
        .arg(&scenario.protected)
        .status()
        .unwrap();
    assert!(bound.success());
    for path in [&ruled_file, &inner_other] {
        only_from_outside(&scenario, "read", &[&text(path)]);
    }
    let runs = (
        scenario.exec_in(agents, &scenario.protected),
        scenario.exec_in(outside, &scenario.protected),
    );
    drop(held);
    assert_eq!(
        before, after,
        "the new file system got the old one's device number"
    );
    assert_eq!(
        runs,
        (Exec::Denied, Exec::Ran),
        "the file bound over the exec rule's binary (agent, outside)"
    );
    looked("the daemon's look at the new file systems");
    scenario.agents_denied("read", &[&text(&ruled_file)]);
    assert_eq!(scenario.agent_exec(), Exec::Denied);

    // A file system the host made while the daemon looked, somewhere it does not care about,
    // then moved over the directory above the rule's file: the move makes no superblock.
    let stage = base.join("stage");
    let before = device(&above);
    unmount(&above);
    mount_open_tmpfs(&stage);
    let staged = device(&stage);
    std::fs::create_dir_all(stage.join("inner")).unwrap();
    for name in ["pad", "pad2", "other", "secret"] {
        let file = stage.join("inner").join(name);
        std::fs::write(&file, "moved\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    // The daemon looks every half second, and as the mount table changes.
    std::thread::sleep(std::time::Duration::from_secs(3));
    let held = Stopped::new(scenario.daemon_pid());
    let moved = Command::new("mount")
        .arg("--move")
        .arg(&stage)
        .arg(&above)
        .status()
        .unwrap();
    assert!(moved.success());
    only_from_outside(&scenario, "read", &[&text(&ruled_file)]);
    drop(held);
    assert_eq!(
        before, staged,
        "the staged file system got the old one's device number"
    );
    looked("the daemon's look at the moved file system");
    scenario.agents_denied("read", &[&text(&ruled_file)]);

    // The mount over the directory above the rule's file made shared: a trusted process in a
    // mount namespace of its own that keeps it peered with the host's binds (then copies and
    // moves) the file system's root over the directory holding the rule's file, and the bind
    // comes to the host's namespace too. The root is a directory the daemon followed, and the
    // file at the rule's path now one it never saw.
    let shared = Command::new("mount")
        .arg("--make-shared")
        .arg(&above)
        .status()
        .unwrap();
    assert!(shared.success());
    for (name, content) in [("other", "moved\n"), ("secret", "propagated\n")] {
        let file = above.join(name);
        std::fs::write(&file, content).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let inner = above.join("inner");
    for op in ["bind", "open-tree"] {
        std::thread::sleep(std::time::Duration::from_secs(3));
        let held = Stopped::new(scenario.daemon_pid());
        assert_eq!(
            scenario.tamper(
                outside,
                "in-ns",
                &["bare", op, &text(&above), &text(&inner)]
            ),
            Outcome::Ok,
            "{op} from a namespace of the host's peers"
        );
        assert_eq!(
            std::fs::read_to_string(&ruled_file).unwrap(),
            "propagated\n",
            "{op}: the host sees the propagated mount"
        );
        only_from_outside(&scenario, "read", &[&text(&ruled_file)]);
        drop(held);
        looked(&format!("the daemon's look at the propagated {op}"));
        scenario.agents_denied("read", &[&text(&ruled_file)]);
        unmount(&inner);
    }

    // A host mount somewhere no rule cares about waits for no look of the daemon's, and leaves
    // the mounts it looked at the agents' meanwhile (the daemon held up again).
    let elsewhere = base.join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    looked("the daemon's look after the unmount");
    let held = Stopped::new(scenario.daemon_pid());
    mount_open_tmpfs(&elsewhere);
    let reads = [
        scenario.tamper(agents, "read", &[&text(&inner_other)]),
        scenario.tamper_as_user(agents, "read", &[&text(&inner_other)]),
    ];
    drop(held);
    assert_eq!(
        reads,
        [Outcome::Ok, Outcome::Ok],
        "{inner_other:?} after a mount elsewhere (root agent, user agent)"
    );

    // What an unmount shows: the file system stacked below one the daemon followed its paths
    // onto, at the rule's path a file the daemon never saw (the host made it there through a
    // descriptor of the hidden directory). Until the daemon has looked, agents get none of it.
    let hidden = std::fs::File::open(above.join("inner")).unwrap();
    mount_open_tmpfs(&above);
    std::fs::create_dir_all(above.join("inner")).unwrap();
    for file in [&inner_other, &ruled_file] {
        std::fs::write(file, "stacked\n").unwrap();
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    looked("the daemon's look at the stacked file system");
    remake_hidden(&hidden, "revealed\n");
    drop(hidden);
    let held = Stopped::new(scenario.daemon_pid());
    unmount(&above);
    assert_eq!(
        std::fs::read_to_string(&ruled_file).unwrap(),
        "revealed\n",
        "the unmount shows the file made below"
    );
    only_from_outside(&scenario, "read", &[&text(&ruled_file)]);
    // Nor is it read by another name: agents link it nowhere (the stacked file system's root,
    // open to all, outside the place shown), nor move it out.
    let (linked, moved) = (above.join("linked"), above.join("moved"));
    std::fs::set_permissions(&above, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let names = [
        scenario.tamper(agents, "link", &[&text(&ruled_file), &text(&linked)]),
        scenario.tamper(agents, "rename", &[&text(&inner_other), &text(&moved)]),
        scenario.tamper(outside, "link", &[&text(&ruled_file), &text(&linked)]),
    ];
    drop(held);
    assert_eq!(
        names,
        [Outcome::Denied, Outcome::Denied, Outcome::Ok],
        "a link to the file shown, a rename of one out (root agent), a link from outside"
    );
    looked("the daemon's look after the unmount of the stacked file system");
    scenario.agents_denied("read", &[&text(&ruled_file)]);

    // An unmount that shows a directory of `/`'s own file system, whose mount is over no place
    // the daemon follows: there too the file at the rule's path is one the daemon never saw.
    // Until it has looked, agents open nothing on that file system (nor run anything from it:
    // the agents here are started before), while files on those mounted on it are theirs.
    remake_hidden(&lower_inner, "lower\n");
    let read_later = |user: bool, cgroup: &Path, path: &Path| {
        Waiting::start(user, cgroup, "read-on-line", &[&text(path)]).unwrap()
    };
    let waiting = [
        read_later(false, agents, &ruled_file),
        read_later(true, agents, &ruled_file),
        read_later(false, agents, &free_data),
        read_later(true, agents, &free_data),
        read_later(true, outside, &ruled_file),
    ];
    let held = Stopped::new(scenario.daemon_pid());
    unmount(&above);
    assert_eq!(
        std::fs::read_to_string(&ruled_file).unwrap(),
        "lower\n",
        "the unmount shows the file made on the root file system"
    );
    let reads = waiting.map(Waiting::outcome);
    drop(held);
    assert_eq!(
        reads,
        [
            Outcome::Denied,
            Outcome::Denied,
            Outcome::Ok,
            Outcome::Ok,
            Outcome::Ok
        ],
        "{ruled_file:?} shown on the root file system (root agent, user agent), {free_data:?} \
         on another (root agent, user agent), {ruled_file:?} (user outside)"
    );
    looked("the daemon's look after the unmount over the root file system");
    scenario.agents_denied("read", &[&text(&ruled_file)]);
    unmount(&scenario.protected);
    for dir in [&elsewhere, &tools, &free, &volume, &read_dir] {
        unmount(dir);
    }
    std::fs::remove_dir_all(base).unwrap();
}

/// A trusted rename that brings another directory to a rule's directory's path (exchanged with
/// it, or renamed in once the rule's directory was moved away), or the file system the host
/// mounts on a name to the rule's name (exchanged with it in a mount namespace of the trusted
/// process's own, its copy of the mount taken away first), brings files the daemon never saw.
/// Until the daemon has looked (held stopped here, so that the moment lasts) agents, root and
/// user, read none of them, while a user outside does; after, the rule holds on the new
/// directory. The agents' readers are started before: while a mount may have moved, agents start
/// nothing.
#[test]
fn trusted_renames_onto_rule_paths_wait_for_the_daemon() {
    let base = Path::new("/srv/gk-aa-swapped");
    let ruled = base.join("ruled");
    let (swap_rule, swap_in) = (ruled.join("swap"), base.join("swap-in"));
    let (move_rule, move_in, move_old) = (
        ruled.join("move"),
        base.join("move-in"),
        base.join("move-old"),
    );
    let (mount_rule, mounted) = (ruled.join("mount"), base.join("mounted"));
    let free = base.join("free");
    let text = |path: &Path| path.display().to_string();
    for (dir, content) in [
        (&swap_rule, "rule\n"),
        (&move_rule, "rule\n"),
        (&mount_rule, "rule\n"),
        (&swap_in, "swapped in\n"),
        (&move_in, "moved in\n"),
        (&free, "free\n"),
    ] {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("secret"), content).unwrap();
    }
    mount_open_tmpfs(&mounted);
    std::fs::write(mounted.join("secret"), "mounted\n").unwrap();
    std::fs::set_permissions(
        mounted.join("secret"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let rules: String = [
        (&swap_rule, "swap"),
        (&move_rule, "move"),
        (&mount_rule, "mount"),
    ]
    .iter()
    .map(|(dir, name)| {
        format!(
            "[[protect.file]]\npath = \"{}\"\nname = \"{name}\"\naccess = \"read\"\n",
            text(dir)
        )
    })
    .collect();
    let scenario = Scenario::start(
        "aa-swapped",
        Options {
            extra: rules,
            ..Options::default()
        },
    );
    let (agents, outside) = (&scenario.agents, &scenario.outside);
    let free_data = free.join("secret");
    /// How the trusted process brings another directory to the rule's path.
    #[derive(Debug)]
    enum Swap {
        /// RENAME_EXCHANGE with the rule's directory.
        Exchange,
        /// The rule's directory renamed away, another renamed onto its path.
        RenameOnto,
        /// RENAME_EXCHANGE of the name the host mounts on with the rule's directory, in a mount
        /// namespace of its own where its copy of the mount was taken away first.
        MountedExchange,
    }
    let trusted = |op: &str, args: [&Path; 2]| {
        let [from, to] = args.map(text);
        let outcome = scenario.tamper(outside, op, &[&from, &to]);
        assert_eq!(outcome, Outcome::Ok, "trusted {op} {args:?}");
    };
    let act = |swap: &Swap| match swap {
        Swap::Exchange => trusted("exchange", [&swap_in, &swap_rule]),
        Swap::RenameOnto => {
            trusted("rename", [&move_rule, &move_old]);
            trusted("rename", [&move_in, &move_rule]);
        }
        Swap::MountedExchange => {
            let (mounted, rule) = (text(&mounted), text(&mount_rule));
            let exchanged = scenario.tamper(
                outside,
                "in-ns",
                &[
                    "private",
                    "umount-then",
                    &mounted,
                    "exchange",
                    &rule,
                    &mounted,
                ],
            );
            assert_eq!(exchanged, Outcome::Ok, "the trusted exchange");
        }
    };
    let swaps = [
        (Swap::Exchange, &swap_rule, "swapped in\n"),
        (Swap::RenameOnto, &move_rule, "moved in\n"),
        (Swap::MountedExchange, &mount_rule, "mounted\n"),
    ];
    for (swap, rule_dir, content) in swaps {
        // The daemon has looked once agents read a file no rule covers.
        wait_for(&format!("the daemon's look before {swap:?}"), || {
            (scenario.tamper(agents, "read", &[&text(&free_data)]) == Outcome::Ok).then_some(())
        });
        let secret = rule_dir.join("secret");
        let read_later = |user: bool, cgroup: &Path| {
            Waiting::start(user, cgroup, "read-on-line", &[&text(&secret)]).unwrap()
        };
        let waiting = [
            read_later(false, agents),
            read_later(true, agents),
            read_later(true, outside),
        ];
        let held = Stopped::new(scenario.daemon_pid());
        act(&swap);
        let shown = std::fs::read_to_string(&secret).unwrap();
        let reads = waiting.map(Waiting::outcome);
        drop(held);
        assert_eq!(
            shown, content,
            "{swap:?}: what the host reads at the rule's path"
        );
        assert_eq!(
            reads,
            [Outcome::Denied, Outcome::Denied, Outcome::Ok],
            "{swap:?}: the file brought to the rule's path (root agent, user agent, user outside)"
        );
        // Once the daemon has looked, the rule holds on the new directory: an agent's read asks.
        wait_for(&format!("a request for the file {swap:?} brought"), || {
            assert_eq!(
                scenario.tamper(agents, "read", &[&text(&secret)]),
                Outcome::Denied
            );
            (scenario.requests(true).into_iter())
                .any(|request| request["target"] == text(&secret).as_str())
                .then_some(())
        });
    }
    unmount(&mount_rule);
    std::fs::remove_dir_all(base).unwrap();
}

/// Makes `secret` and `other` anew, each holding `content`, in the directory `dir` holds open
/// (hidden below a mount by now): files the daemon never saw. (Made anew rather than renamed
/// over the old ones: a file renamed over a rule's file takes its rule.)
fn remake_hidden(dir: &std::fs::File, content: &str) {
    for name in ["secret", "other"] {
        let path = format!("/proc/self/fd/{}/{name}", dir.as_raw_fd());
        let _ = std::fs::remove_file(&path);
        std::fs::write(&path, content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
}

/// Root and user agents' reads and writes of `target` are denied and asked for under `rule`, one
/// open passes per approval, and the user outside reads and writes it.
fn asked_once_per_approval(scenario: &Scenario, target: &str, rule: &str) {
    let request_for = |access: u32| {
        wait_for(&format!("a request for {target} ({access})"), || {
            scenario.requests(true).into_iter().rev().find(|request| {
                request["target"] == target
                    && request["target_key"]["aux"] == access
                    && request["state"] == "pending"
            })
        })
    };
    for (op, args, access) in [
        ("cat", vec![target], file_access::READ),
        ("write", vec![target, "agent"], file_access::WRITE),
    ] {
        scenario.agents_denied(op, &args);
        let request = request_for(access);
        assert_eq!(request["rule"], rule, "{request}");
        scenario.approve(&request);
        assert_eq!(scenario.tamper(&scenario.agents, op, &args), Outcome::Ok);
        assert_eq!(
            scenario.tamper(&scenario.agents, op, &args),
            Outcome::Denied,
            "one open per approval"
        );
        assert_eq!(
            scenario.tamper_as_user(&scenario.outside, op, &args),
            Outcome::Ok
        );
    }
}

/// A file that two entries name (a rule, and the guard of a bind of it below a host path or a
/// protected directory; a rule, and the guard of a mount at its path below another rule) keeps
/// the bits of both: neither weakens the other, and once the bind or mount is gone the rule's
/// own are left.
#[test]
fn binds_and_mounts_keep_every_rules_bits() {
    let base = Path::new("/srv/gk-aa-bits");
    let (secrets, key, read_dir) = (base.join("secrets"), base.join("key"), base.join("read"));
    let volume = read_dir.join("vol");
    let host_file = Path::new("/etc/gk-aa-bits-file");
    for dir in [&secrets, &volume] {
        std::fs::create_dir_all(dir).unwrap();
    }
    for file in [&secrets.join("data"), &key, &host_file.to_path_buf()] {
        std::fs::write(file, "secret\n").unwrap();
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o666)).unwrap();
    }
    let rule = |path: &Path, name: &str, access: &str| {
        format!(
            "[[protect.file]]\npath = \"{}\"\nname = \"{name}\"\naccess = \"{access}\"\n",
            path.display()
        )
    };
    let scenario = Scenario::start(
        "aa-bits",
        Options {
            extra: [
                rule(&secrets, "bits secrets", "read"),
                rule(&key, "bits key", "read"),
                rule(&read_dir, "bits read", "read"),
                rule(&volume, "bits volume", "write"),
            ]
            .concat(),
            ..Options::default()
        },
    );
    let text = |path: &Path| path.display().to_string();
    let only_outside = |op: &str, path: &Path| match op {
        "write" => only_from_outside(&scenario, op, &[&text(path), "agent"]),
        _ => only_from_outside(&scenario, op, &[&text(path)]),
    };
    let reads_and_writes_guarded = || {
        only_outside("cat", &secrets.join("data"));
        only_outside("cat", &key);
        only_outside("write", host_file);
    };
    reads_and_writes_guarded();

    // The host binds the read-protected directory and file below /var/lib, and /etc (a host
    // path, protected from writing) below the read-protected directory.
    let app = Path::new("/var/lib/gk-aa-bits");
    let (bound_secrets, bound_key, bound_etc) =
        (app.join("secrets"), app.join("key"), read_dir.join("etc"));
    for dir in [&bound_secrets, &bound_etc] {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(&bound_key, "").unwrap();
    bind(&secrets, &bound_secrets);
    bind(&key, &bound_key);
    bind(Path::new("/etc"), &bound_etc);
    for guarded in [&bound_secrets, &bound_key, &bound_etc] {
        wait_guarded(&scenario, guarded, 1);
    }
    reads_and_writes_guarded();
    only_outside("cat", &bound_secrets.join("data"));

    // A file system mounted at the write rule's path below the read rule: read there too only
    // with approval.
    mount_open_tmpfs(&volume);
    let mounted = volume.join("data");
    std::fs::write(&mounted, "secret\n").unwrap();
    std::fs::set_permissions(&mounted, std::fs::Permissions::from_mode(0o666)).unwrap();
    wait_guarded(&scenario, &volume, 1);
    only_outside("cat", &mounted);
    only_outside("write", &mounted);

    // Gone again: each rule keeps its own bits.
    for mount in [&bound_secrets, &bound_key, &bound_etc, &volume] {
        unmount(mount);
    }
    scenario.wait_journal("mount_unguarded", |event| {
        event["path"] == text(&bound_etc).as_str()
    });
    reads_and_writes_guarded();
    std::fs::remove_dir_all(base).unwrap();
    std::fs::remove_dir_all(app).unwrap();
    std::fs::remove_file(host_file).unwrap();
}
