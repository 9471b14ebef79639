//! Attacks on the reviewers' socket: an agent, root or an ordinary user, tries to get a decision
//! taken, or to replace or impersonate the daemon's sockets, or to have a program of its own run
//! outside its cgroup to do it. Each test collects what got through ("BROKEN: ...") and fails
//! listing them; controls run outside.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::Path,
    process::{Command, Stdio},
};

use gatekeeper_tests::{Exec, Options, Outcome, Scenario, bin};

const ALICE_UID: &str = "1000";
const BOB_UID: &str = "1001";

/// The helper's stdout for `args`.
fn helper(args: &[&str]) -> String {
    let output = Command::new(bin("gk-helper")).args(args).output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// One raw JSON call on `socket` from `cgroup`, as root (`uid` None) or as `uid`.
fn local_call(cgroup: &str, uid: Option<&str>, socket: &str, line: &str) -> String {
    let gk = bin("gk-helper").display().to_string();
    match uid {
        None => helper(&["tamper", cgroup, "local-call", socket, line]),
        Some(uid) => helper(&[
            "as-user",
            uid,
            cgroup,
            &gk,
            "tamper",
            "-",
            "local-call",
            socket,
            line,
        ]),
    }
}

/// Connects to `socket` from `from`, has the trusted outside move the connected process into
/// `to`, and only then sends `line` on that connection; the reply.
fn call_after_a_move(from: &Path, to: &Path, socket: &str, line: &str) -> String {
    let mut child = Command::new(bin("gk-helper"))
        .arg("call-later")
        .arg(from)
        .arg(socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut connected = String::new();
    stdout.read_line(&mut connected).unwrap();
    assert_eq!(connected.trim_end(), "connected");
    let pid = child.id();
    std::fs::write(to.join("cgroup.procs"), pid.to_string()).unwrap();
    let membership = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let relative = to
        .strip_prefix("/sys/fs/cgroup")
        .unwrap()
        .display()
        .to_string();
    assert_eq!(
        membership.trim_end(),
        format!("0::/{relative}"),
        "not moved"
    );
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "{line}").unwrap();
    let mut reply = String::new();
    stdout.read_line(&mut reply).unwrap();
    let _ = child.wait();
    reply
}

fn decide(id: &str, decision: &str) -> String {
    format!(r#"{{"op":"decide","id":"{id}","decision":"{decision}","reason":null}}"#)
}

fn finish(broken: Vec<String>) {
    for finding in &broken {
        eprintln!("{finding}");
    }
    assert!(broken.is_empty(), "attacks that got through: {broken:#?}");
}

/// The agents' socket, spoken to raw (not through the CLI) and from connections moved between
/// cgroups, and other paths to the reviewers' socket: /proc/self/root, /proc/DAEMON/root,
/// /proc/DAEMON/fd/N.
#[test]
fn attack_sockets_raw_calls_and_proc_paths() {
    let scenario = Scenario::start("atk-raw", Options::default());
    let id = scenario.denied_request();
    let agents = scenario.agents.display().to_string();
    let outside = scenario.outside.display().to_string();
    let socket = scenario.socket.display().to_string();
    let agent_socket = scenario
        .socket
        .with_file_name("agent.sock")
        .display()
        .to_string();
    let mut broken = Vec::new();

    let calls = [
        decide(&id, "approve"),
        r#"{"op":"list","all":true}"#.to_owned(),
        r#"{"op":"uninstall"}"#.to_owned(),
        // Leading whitespace, then the call.
        format!("   {}", decide(&id, "approve")),
    ];
    for uid in [None, Some(ALICE_UID), Some(BOB_UID)] {
        for call in &calls {
            let reply = local_call(&agents, uid, &agent_socket, call);
            eprintln!("agent.sock uid {uid:?} {call}: {reply}");
            if reply.contains(r#""ok":true"#) {
                broken.push(format!("BROKEN agent.sock uid {uid:?} {call}: {reply}"));
            }
            let reply = local_call(&agents, uid, &socket, call);
            if reply.contains(r#""ok":true"#) {
                broken.push(format!("BROKEN api.sock uid {uid:?} {call}: {reply}"));
            }
        }
    }

    // The agents' socket knows a caller by the cgroup it connected from, as the kernel noted it,
    // never by where its pid is when the call comes: a connection made in another agent cgroup,
    // or outside them, then moved into the requester's cgroup, cannot give the request its words
    // (nor would a pid reused by then).
    let other = scenario.agents.join("other");
    std::fs::create_dir_all(&other).unwrap();
    let justify = |reason: &str| format!(r#"{{"op":"justify","id":"{id}","reason":"{reason}"}}"#);
    for from in [&other, &scenario.outside] {
        let reply = call_after_a_move(from, &scenario.agents, &agent_socket, &justify("moved"));
        if reply.contains(r#""ok":true"#) {
            broken.push(format!(
                "BROKEN justify from {} moved in: {reply}",
                from.display()
            ));
        }
    }
    assert!(scenario.request(&id)["justification"].is_null());
    // Control: connected from the requester's own cgroup, its words are taken.
    let reply = call_after_a_move(
        &scenario.agents,
        &scenario.agents,
        &agent_socket,
        &justify("mine"),
    );
    assert!(reply.contains(r#""ok":true"#), "{reply}");
    assert_eq!(scenario.request(&id)["justification"], "mine");

    let daemon = scenario.daemon_pid();
    let mut paths = vec![
        format!("/proc/self/root{socket}"),
        format!("/proc/{daemon}/root{socket}"),
        format!("/proc/1/root{socket}"),
    ];
    for entry in std::fs::read_dir(format!("/proc/{daemon}/fd")).unwrap() {
        let entry = entry.unwrap();
        if std::fs::read_link(entry.path())
            .map(|target| target.display().to_string().starts_with("socket:"))
            .unwrap_or(false)
        {
            paths.push(entry.path().display().to_string());
        }
    }
    for path in &paths {
        for user in [false, true] {
            let outcome = match user {
                false => scenario.tamper(&scenario.agents, "unix-connect", &[path]),
                true => scenario.tamper_as_user(&scenario.agents, "unix-connect", &[path]),
            };
            eprintln!("agent connect {path} user={user}: {outcome:?}");
            if outcome == Outcome::Ok {
                broken.push(format!("BROKEN agent connect {path} user={user}"));
            }
        }
    }
    assert_eq!(scenario.request(&id)["state"], "pending");

    // Controls: outside, list works on the reviewers' socket, and the /proc/self/root path
    // reaches it.
    let reply = local_call(&outside, None, &socket, r#"{"op":"list","all":true}"#);
    assert!(reply.contains(r#""ok":true"#), "{reply}");
    assert_eq!(
        scenario.tamper(&scenario.outside, "unix-connect", &[&paths[0]]),
        Outcome::Ok
    );
    let reply = local_call(&outside, None, &socket, &decide(&id, "approve"));
    assert!(reply.contains(r#""ok":true"#), "{reply}");
    finish(broken);
}

/// Names in the sockets' directory, changes to the sockets and the directory, the directory's
/// parent, a mount namespace's mount over it; then with the daemon stopped, a socket planted.
#[test]
fn attack_sockets_directory_and_plants() {
    let mut scenario = Scenario::start("atk-dir", Options::default());
    let run_dir = scenario.socket.parent().unwrap().to_owned();
    std::fs::set_permissions(
        &run_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let dir = run_dir.display().to_string();
    let socket = scenario.socket.display().to_string();
    let agent_socket = run_dir.join("agent.sock").display().to_string();
    let spare = scenario.dir.join("spare");
    std::fs::write(&spare, "x").unwrap();
    std::fs::set_permissions(&spare, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    let spare_dir = scenario.dir.join("spare-dir");
    std::fs::create_dir(&spare_dir).unwrap();
    let spare = spare.display().to_string();
    let spare_dir = spare_dir.display().to_string();
    let parent = scenario.dir.display().to_string();
    let parent_moved = format!("{parent}-moved");
    let mut broken = Vec::new();

    let planted = |name: &str| format!("{dir}/{name}");
    let attempts: Vec<(&str, Vec<String>)> = vec![
        ("tmpfile-link", vec![dir.clone(), planted("tmp")]),
        ("mkfifo", vec![planted("fifo")]),
        ("symlink", vec!["/tmp".into(), planted("sym")]),
        ("unix-bind", vec![planted("fake.sock")]),
        ("link", vec![spare.clone(), planted("hard")]),
        ("rename", vec![spare.clone(), planted("moved")]),
        ("exchange", vec![spare_dir.clone(), dir.clone()]),
        ("exchange", vec![spare.clone(), socket.clone()]),
        ("whiteout", vec![socket.clone(), planted("wo")]),
        ("rename", vec![parent.clone(), parent_moved.clone()]),
        ("rename", vec![dir.clone(), format!("{parent}/run-moved")]),
        ("chmod", vec![socket.clone(), "000".into()]),
        ("chmod", vec![agent_socket.clone(), "000".into()]),
        ("chmod", vec![dir.clone(), "000".into()]),
        ("chown", vec![socket.clone(), "1001".into()]),
        ("chown", vec![dir.clone(), "1001".into()]),
        (
            "setxattr",
            vec![socket.clone(), "user.x".into(), "y".into()],
        ),
        (
            "setxattr",
            vec![dir.clone(), "trusted.overlay.opaque".into(), "y".into()],
        ),
        ("utimes", vec![socket.clone()]),
        ("utimes", vec![dir.clone()]),
    ];
    for (op, args) in &attempts {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        for user in [false, true] {
            let outcome = match user {
                false => scenario.tamper(&scenario.agents, op, &args),
                true => scenario.tamper_as_user(&scenario.agents, op, &args),
            };
            eprintln!("agent {op} {args:?} user={user}: {outcome:?}");
            if outcome == Outcome::Ok {
                broken.push(format!("BROKEN agent {op} {args:?} user={user}"));
            }
        }
    }
    // A mount over the directory in the agent's own mount namespace (propagation unchanged).
    let in_ns = scenario.tamper(
        &scenario.agents,
        "in-ns",
        &["bare", "mount", "tmpfs", "none", &dir],
    );
    eprintln!("agent in-ns bare mount over dir: {in_ns:?}");
    if !scenario.socket.exists() || !scenario.gatekeeper(&["status"]).status.success() {
        broken.push("BROKEN host lost the reviewers' socket after an agent's ns mount".into());
    }
    let in_ns = scenario.tamper(
        &scenario.agents,
        "in-ns",
        &["private", "mount", "tmpfs", "none", &dir],
    );
    eprintln!("agent in-ns private mount over dir: {in_ns:?}");
    if !scenario.socket.exists() {
        broken.push("BROKEN host lost the reviewers' socket after a private ns mount".into());
    }

    // The daemon away (SIGTERM removes both sockets): plant one at its path.
    scenario.stop_daemon();
    assert!(!scenario.socket.exists());
    for user in [false, true] {
        for path in [&socket, &agent_socket] {
            let outcome = match user {
                false => scenario.tamper(&scenario.agents, "unix-bind", &[path]),
                true => scenario.tamper_as_user(&scenario.agents, "unix-bind", &[path]),
            };
            eprintln!("daemon away: agent bind {path} user={user}: {outcome:?}");
            if outcome == Outcome::Ok || std::path::Path::new(path).exists() {
                broken.push(format!(
                    "BROKEN daemon away: agent bound {path} user={user}"
                ));
                let _ = std::fs::remove_file(path);
            }
        }
    }
    // Controls: outside, the same names are made and changed.
    assert_eq!(
        scenario.tamper(&scenario.outside, "unix-bind", &[&socket]),
        Outcome::Ok
    );
    std::fs::remove_file(&socket).unwrap();
    assert_eq!(
        scenario.tamper(&scenario.outside, "mkfifo", &[&planted("fifo")]),
        Outcome::Ok
    );
    assert_eq!(
        scenario.tamper(&scenario.outside, "tmpfile-link", &[&dir, &planted("tmp")]),
        Outcome::Ok
    );
    assert_eq!(
        scenario.tamper(&scenario.outside, "rename", &[&spare, &planted("moved")]),
        Outcome::Ok
    );
    assert_eq!(
        scenario.tamper(&scenario.outside, "rename", &[&parent, &parent_moved]),
        Outcome::Ok
    );
    std::fs::rename(&parent_moved, &parent).unwrap();
    finish(broken);
}

/// A connection to the reviewers' socket made outside the agent cgroups, used from inside one:
/// handed over SCM_RIGHTS to an agent, or kept by a process that then joins an agent cgroup
/// (what an agent inherits from whoever launched it).
#[test]
fn attack_sockets_connection_made_outside_used_by_an_agent() {
    let scenario = Scenario::start("atk-fd", Options::default());
    let id = scenario.denied_request();
    let agents = scenario.agents.display().to_string();
    let outside = scenario.outside.display().to_string();
    let socket = scenario.socket.display().to_string();
    let mut broken = Vec::new();
    // The direct way is closed.
    assert_eq!(
        scenario.tamper(&scenario.agents, "unix-connect", &[&socket]),
        Outcome::Denied
    );

    // (A connection handed over by a process outside, over SCM_RIGHTS, is that process's act:
    // outside the agent cgroups everything is trusted.)
    let joined = helper(&[
        "tamper",
        &outside,
        "connect-then-join",
        &socket,
        &agents,
        &decide(&id, "approve"),
    ]);
    eprintln!("connect-then-join decide: {joined}");
    let state = scenario.request(&id)["state"].clone();
    eprintln!("request state after connect-then-join: {state}");
    if joined.contains(r#""ok":true"#) || state != "pending" {
        let ran = scenario.agent_exec();
        broken.push(format!(
            "BROKEN connection kept into an agent cgroup decided: state {state}, agent exec {ran:?}: {joined}"
        ));
    } else {
        // Control: outside, the same call decides.
        let reply = local_call(&outside, None, &socket, &decide(&id, "approve"));
        assert!(reply.contains(r#""ok":true"#), "{reply}");
        assert_eq!(scenario.agent_exec(), Exec::Ran);
    }
    finish(broken);
}

/// The kernel runs /sbin/request-key as root from a kernel thread, outside every agent cgroup,
/// when request_key(2) misses a key with a callout: an agent that writes that file has its
/// program run outside, where it reaches the reviewers' socket.
#[test]
fn attack_sockets_request_key_helper_decides() {
    let scenario = Scenario::start("atk-rk", Options::default());
    let id = scenario.denied_request();
    let agents = scenario.agents.display().to_string();
    let outside = scenario.outside.display().to_string();
    let mut broken = Vec::new();
    let helper_path = "/sbin/request-key";
    let out = scenario.dir.join("rk.out");
    let script = format!(
        "#!/bin/sh\ncat /proc/self/cgroup > {out}\n{gk} --socket {socket} approve {id} >> {out} 2>&1\n",
        out = out.display(),
        gk = bin("gatekeeper").display(),
        socket = scenario.socket.display(),
    );
    // An ordinary user cannot write it.
    let as_user = scenario.tamper_as_user(&scenario.agents, "write", &[helper_path, &script]);
    eprintln!("user writes {helper_path}: {as_user:?}");
    if as_user == Outcome::Ok {
        broken.push("BROKEN user agent wrote /sbin/request-key".into());
    }
    let wrote = scenario.tamper(&scenario.agents, "write", &[helper_path, &script]);
    let chmod = scenario.tamper(&scenario.agents, "chmod", &[helper_path, "755"]);
    eprintln!("root agent writes {helper_path}: {wrote:?}, chmod {chmod:?}");
    let triggered = helper(&[
        "tamper",
        &agents,
        "request-key",
        "user",
        "gk-attack:1",
        "callout",
    ]);
    eprintln!("request-key from the agent: {triggered}");
    std::thread::sleep(std::time::Duration::from_secs(3));
    let ran = std::fs::read_to_string(&out).unwrap_or_default();
    let state = scenario.request(&id)["state"].clone();
    eprintln!("helper output: {ran:?}; request state {state}");
    if state != "pending" {
        let exec = scenario.agent_exec();
        broken.push(format!(
            "BROKEN request-key helper (planted by a root agent) decided: state {state}, agent exec now {exec:?}, helper said {ran:?}"
        ));
    } else {
        // Control: the same from outside.
        std::fs::write(helper_path, &script).unwrap();
        std::fs::set_permissions(
            helper_path,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let _ = helper(&[
            "tamper",
            &outside,
            "request-key",
            "user",
            "gk-attack:2",
            "callout",
        ]);
        std::thread::sleep(std::time::Duration::from_secs(3));
        assert_ne!(scenario.request(&id)["state"], "pending");
    }
    let _ = std::fs::remove_file(helper_path);
    finish(broken);
}
