//! Files: protected code runs only through an approved exec, and agents change no protected,
//! allowlisted or daemon file. Each attempt is made as root and as an ordinary user from inside
//! an agent cgroup, with a control from outside that shows the same action works there.

use std::{os::unix::fs::PermissionsExt as _, path::Path, process::Command};

use gatekeeper_tests::{Exec, Options, Outcome, Scenario, TARGET_RAN, UNLISTED_UID, bin, wait_for};

fn journaled(scenario: &Scenario, hook: &str) {
    scenario.wait_journal("tamper_attempt", |event| event["hook"] == hook);
}

/// The pending request of kind `file` for `path`.
fn file_request(scenario: &Scenario, path: &Path) -> serde_json::Value {
    let path = path.display().to_string();
    wait_for(&format!("a file request for {path}"), || {
        scenario.requests(true).into_iter().rev().find(|request| {
            request["kind"] == "file" && request["target"] == path && request["state"] == "pending"
        })
    })
}

fn chown_to_user(path: &Path) {
    std::os::unix::fs::chown(path, Some(UNLISTED_UID), Some(UNLISTED_UID)).unwrap();
}

#[test]
fn reading_a_protected_binary_needs_approval_once() {
    let scenario = Scenario::start("files-read", Options::default());
    let protected = scenario.protected.display().to_string();
    // cat, cp and `sh file` all start with a read: denied, and asked for.
    assert_eq!(
        scenario.tamper(&scenario.agents, "read", &[&protected]),
        Outcome::Denied
    );
    assert_eq!(
        scenario.tamper_as_user(&scenario.agents, "read", &[&protected]),
        Outcome::Denied
    );
    let request = file_request(&scenario, &scenario.protected);
    assert_eq!(request["rule"], "database export");
    let id = request["id"].as_str().unwrap().to_owned();
    // Control: outside the agent cgroups the same read works.
    assert_eq!(
        scenario.tamper(&scenario.outside, "read", &[&protected]),
        Outcome::Ok
    );

    scenario.approve(&id);
    assert_eq!(
        scenario.tamper(&scenario.agents, "read", &[&protected]),
        Outcome::Ok,
        "the approved read"
    );
    scenario.wait_journal("grant_used", |_| true);
    assert_eq!(
        scenario.tamper(&scenario.agents, "read", &[&protected]),
        Outcome::Denied,
        "a grant serves one open"
    );
    // A read grant is no exec grant.
    assert_eq!(scenario.agent_exec(), Exec::Denied);
}

#[test]
fn a_protected_script_does_not_run_through_its_interpreter() {
    let mut scenario = Scenario::prepare(
        "files-script",
        Options {
            extra: "[[protect.exec]]\npath = \"/tmp/gk-files-script/protected/deploy.sh\"\nname = \"deploy\"\n".into(),
            ..Options::default()
        },
    );
    let script = scenario.dir.join("protected/deploy.sh");
    std::fs::write(&script, format!("#!/bin/sh\necho {TARGET_RAN}\n")).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    scenario.start_daemon();
    let script_text = script.display().to_string();
    let through_sh = |prefix: &[&str]| {
        let output = Command::new(bin("gk-helper"))
            .args(prefix)
            .args(["/bin/sh", &script_text])
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).contains(TARGET_RAN)
    };
    let agents = scenario.agents.display().to_string();
    let outside = scenario.outside.display().to_string();
    let uid = UNLISTED_UID.to_string();
    assert!(
        !through_sh(&["run", &agents]),
        "sh ran the script for a root agent"
    );
    assert!(
        !through_sh(&["as-user", &uid, &agents]),
        "sh ran the script for a user agent"
    );
    file_request(&scenario, &script);
    // Control: outside the agent cgroups sh runs it.
    assert!(through_sh(&["run", &outside]));
    assert!(through_sh(&["as-user", &uid, &outside]));
    // Run directly, it is an exec, asked for as such; approved, it runs once, its interpreter
    // reading it.
    assert_eq!(scenario.exec_in(&scenario.agents, &script), Exec::Denied);
    let id = wait_for("the exec request", || {
        scenario
            .requests(false)
            .into_iter()
            .find(|request| request["kind"] == "exec" && request["target"] == script_text.as_str())
    })["id"]
        .as_str()
        .unwrap()
        .to_owned();
    scenario.approve(&id);
    assert_eq!(scenario.exec_in(&scenario.agents, &script), Exec::Ran);
    assert_eq!(scenario.exec_in(&scenario.agents, &script), Exec::Denied);
    assert!(
        !through_sh(&["run", &agents]),
        "the approval was for one run"
    );
}

#[test]
fn the_loader_cannot_read_a_protected_binary() {
    let scenario = Scenario::start("files-loader", Options::default());
    let loader = "/lib64/ld-linux-x86-64.so.2";
    let protected = scenario.protected.display().to_string();
    let via_loader = |cgroup: &Path| {
        let output = Command::new(bin("gk-helper"))
            .arg("run")
            .arg(cgroup)
            .args([loader, &protected, "target"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).contains(TARGET_RAN)
    };
    assert!(!via_loader(&scenario.agents));
    let id = file_request(&scenario, &scenario.protected)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Control: outside, the loader runs it.
    assert!(via_loader(&scenario.outside));
    // An approved read is no licence to map the code executable: the loader is still refused.
    scenario.approve(&id);
    assert!(!via_loader(&scenario.agents));
    journaled(&scenario, "exec_mapping");
}

#[test]
fn agents_change_no_protected_file() {
    // The protected file belongs to the ordinary user, in the user's own directory: only
    // Gatekeeper stands between that user and the file.
    let mut scenario = Scenario::prepare(
        "files-change",
        Options {
            extra: "[[protect.exec]]\npath = \"/tmp/gk-files-change/user/tool\"\nname = \"tool\"\n"
                .into(),
            ..Options::default()
        },
    );
    let dir = scenario.dir.join("user");
    std::fs::create_dir(&dir).unwrap();
    let tool = dir.join("tool");
    let other = dir.join("other");
    std::fs::copy(bin("gk-helper"), &tool).unwrap();
    std::fs::write(&other, "other").unwrap();
    for path in [&dir, &tool, &other] {
        chown_to_user(path);
    }
    scenario.start_daemon();
    let original = std::fs::read(&tool).unwrap();
    let text = |path: &Path| path.display().to_string();
    let (tool_t, other_t) = (text(&tool), text(&other));
    let moved = text(&dir.join("moved"));
    let alias = text(&dir.join("alias"));
    let attempts: [(&str, Vec<&str>); 8] = [
        ("write", vec![&tool_t, "replaced"]),
        ("append", vec![&tool_t]),
        ("open-trunc", vec![&tool_t]),
        ("truncate", vec![&tool_t]),
        ("rename", vec![&tool_t, &moved]),
        ("rename", vec![&other_t, &tool_t]),
        ("unlink", vec![&tool_t]),
        ("link", vec![&tool_t, &alias]),
    ];
    for (op, args) in &attempts {
        scenario.agents_denied(op, args);
    }
    assert_eq!(
        std::fs::read(&tool).unwrap(),
        original,
        "the file is as it was"
    );
    assert!(!dir.join("alias").exists() && !dir.join("moved").exists());
    journaled(&scenario, "protected_change");

    // Controls: the same user outside the agent cgroups does each of these.
    let outside = |op: &str, args: &[&str]| {
        assert_eq!(
            scenario.tamper_as_user(&scenario.outside, op, args),
            Outcome::Ok,
            "outside: {op} {args:?}"
        );
    };
    outside("link", &[&tool_t, &alias]);
    outside("unlink", &[&alias]);
    outside("rename", &[&tool_t, &moved]);
    outside("rename", &[&moved, &tool_t]);
    outside("append", &[&tool_t]);
    outside("truncate", &[&tool_t]);
    outside("rename", &[&other_t, &tool_t]);
    outside("unlink", &[&tool_t]);
}

#[test]
fn agents_neither_read_nor_change_the_daemons_files() {
    let scenario = Scenario::start("files-daemon", Options::default());
    let config = scenario.config.display().to_string();
    let journal = scenario.journal.display().to_string();
    let binary = bin("gatekeeper").display().to_string();
    let pin_dir = scenario.pin_dir.display().to_string();
    let pin = scenario
        .pin_dir
        .join("link_bprm_check_security")
        .display()
        .to_string();
    let dir = scenario.dir.display().to_string();
    let elsewhere = format!("{dir}-moved");
    let attempts: [(&str, Vec<&str>); 11] = [
        ("read", vec![&config]),
        ("write", vec![&config, "[daemon]\n"]),
        ("read", vec![&journal]),
        ("append", vec![&journal]),
        ("unlink", vec![&journal]),
        ("rename", vec![&config, &elsewhere]),
        // The directory above them: renamed, another config could take the path.
        ("rename", vec![&dir, &elsewhere]),
        ("read", vec![&binary]),
        ("unlink", vec![&binary]),
        ("list", vec![&pin_dir]),
        ("read", vec![&pin]),
    ];
    for (op, args) in &attempts {
        assert_eq!(
            scenario.tamper(&scenario.agents, op, args),
            Outcome::Denied,
            "root agent: {op} {args:?}"
        );
        // The ordinary user is refused too, by the file modes or by Gatekeeper.
        assert_ne!(
            scenario.tamper_as_user(&scenario.agents, op, args),
            Outcome::Ok,
            "user agent: {op} {args:?}"
        );
    }
    // The binary is world-readable: only Gatekeeper refuses the user.
    scenario.user_agent_denied("read", &[&binary]);
    journaled(&scenario, "daemon_file");
    journaled(&scenario, "pin_open");
    // Agents still run the binary: it is also their CLI.
    let help = scenario.gatekeeper_in(&scenario.agents, &["--help"]);
    assert!(help.status.success(), "{help:?}");
    // Controls: outside the agent cgroups each read works.
    for (op, args) in [
        ("read", &config),
        ("read", &journal),
        ("read", &binary),
        ("list", &pin_dir),
    ] {
        assert_eq!(
            scenario.tamper(&scenario.outside, op, &[args]),
            Outcome::Ok,
            "outside: {op} {args}"
        );
    }
    assert!(scenario.gatekeeper(&["status"]).status.success());
}

#[test]
fn an_allowlisted_path_stays_allowed_only_with_the_same_content() {
    let mut scenario = Scenario::prepare("files-allow", Options::default());
    let allowed = scenario.unprotected.clone();
    scenario.allow_only(&[&allowed]);
    scenario.start_daemon();
    assert_eq!(scenario.exec_in(&scenario.agents, &allowed), Exec::Ran);
    let allowed_text = allowed.display().to_string();
    // Agents change no allowlisted file.
    assert_eq!(
        scenario.tamper(&scenario.agents, "append", &[&allowed_text]),
        Outcome::Denied
    );

    // Replaced (outside the agent cgroups) by a file with the same content: still allowed.
    let staged = scenario.dir.join("bin/staged");
    std::fs::copy(&allowed, &staged).unwrap();
    std::fs::rename(&staged, &allowed).unwrap();
    wait_for("the same content to be followed", || {
        scenario
            .journal_events()
            .iter()
            .any(|event| {
                event["type"] == "protection_updated" && event["path"] == allowed_text.as_str()
            })
            .then_some(())
    });
    assert_eq!(scenario.exec_in(&scenario.agents, &allowed), Exec::Ran);

    // Replaced by other content: not allowed.
    std::fs::copy(bin("gatekeeper"), &staged).unwrap();
    std::fs::rename(&staged, &allowed).unwrap();
    scenario.wait_journal("allowlist_refused", |event| {
        event["why"] == "replaced by different content"
    });
    assert_eq!(scenario.exec_in(&scenario.agents, &allowed), Exec::Denied);

    // Back to the allowed content, then changed in place by a trusted writer: no longer allowed.
    std::fs::copy(bin("gk-helper"), &staged).unwrap();
    std::fs::rename(&staged, &allowed).unwrap();
    wait_for("the allowed content again", || {
        (scenario.exec_in(&scenario.agents, &allowed) == Exec::Ran).then_some(())
    });
    assert_eq!(
        scenario.tamper(&scenario.outside, "append", &[&allowed_text]),
        Outcome::Ok
    );
    assert_eq!(scenario.exec_in(&scenario.agents, &allowed), Exec::Denied);
    scenario.wait_journal("allowlist_refused", |event| {
        event["why"] == "opened for writing or truncated"
    });
    // Control: outside the agent cgroups it runs.
    assert_eq!(scenario.exec_in(&scenario.outside, &allowed), Exec::Ran);
}

#[test]
fn agents_cannot_open_block_devices() {
    let scenario = Scenario::start("files-block", Options::default());
    // A node for a block device the guest has, if any (else loop0's numbers): its raw blocks
    // would hold every file, protected or the daemon's.
    let (major, minor) = std::fs::read_dir("/sys/block")
        .ok()
        .and_then(|mut entries| entries.next())
        .and_then(|entry| std::fs::read_to_string(entry.ok()?.path().join("dev")).ok())
        .and_then(|dev| {
            let (major, minor) = dev.trim().split_once(':')?;
            Some((major.parse().ok()?, minor.parse().ok()?))
        })
        .unwrap_or((7u32, 0u32));
    let node = scenario.dir.join("disk");
    let c_node = std::ffi::CString::new(node.display().to_string()).unwrap();
    // SAFETY: mknod on a NUL-terminated path.
    let made = unsafe {
        libc::mknod(
            c_node.as_ptr(),
            libc::S_IFBLK | 0o666,
            libc::makedev(major, minor),
        )
    };
    assert_eq!(made, 0, "mknod {major}:{minor}");
    let node = node.display().to_string();
    assert_eq!(
        scenario.tamper(&scenario.agents, "open", &[&node]),
        Outcome::Denied
    );
    scenario.user_agent_denied("open", &[&node]);
    journaled(&scenario, "block_device");
    // Control: outside, the open reaches the device (which may still fail for its own reasons).
    assert_ne!(
        scenario.tamper(&scenario.outside, "open", &[&node]),
        Outcome::Denied
    );
}
