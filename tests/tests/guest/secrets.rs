//! Files of `[[protect.file]]`: agents read or change protected files and directories only with
//! an approval, one open per grant. Each attempt is made as root and as an ordinary user inside
//! an agent cgroup, with a control from outside that shows the same action works there.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use gatekeeper_common::file_access::{READ, WRITE};
use gatekeeper_tests::{Options, Outcome, Scenario, UNLISTED_UID, bin, hand_to_user, wait_for};

fn text(path: &Path) -> String {
    path.display().to_string()
}

/// The pending request of kind `file` for `path`, asking for `access`.
fn file_request(scenario: &Scenario, path: &Path, access: u32) -> serde_json::Value {
    let path = text(path);
    wait_for(&format!("a file request for {path}"), || {
        scenario.requests(true).into_iter().rev().find(|request| {
            request["kind"] == "file"
                && request["target"] == path.as_str()
                && request["target_key"]["aux"] == access
                && request["state"] == "pending"
        })
    })
}

/// A scenario whose config protects `rule_path` (relative to the scenario's directory) with
/// `access`; `build` fills the directory before the daemon starts.
fn start(name: &str, rule_path: &str, access: &str, build: impl FnOnce(&Path)) -> Scenario {
    let dir = PathBuf::from(format!("/tmp/gk-{name}"));
    let mut scenario = Scenario::prepare(
        name,
        Options {
            extra: format!(
                "[[protect.file]]\npath = \"{}\"\nname = \"prod {access}\"\naccess = \"{access}\"\nrisk = \"high\"\n",
                dir.join(rule_path).display()
            ),
            ..Options::default()
        },
    );
    build(&scenario.dir);
    // The ordinary user may do everything but for Gatekeeper: the scenario's files are its own.
    hand_to_user(&scenario.dir);
    scenario.start_daemon();
    scenario
}

/// gk-helper's `cat` of `path` in `cgroup`, as root: the content when the read passed.
fn cat(cgroup: &Path, path: &Path) -> Option<String> {
    let output = Command::new(bin("gk-helper"))
        .args(["tamper", &text(cgroup), "cat", &text(path)])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    stdout
        .split_once("CONTENT=")
        .map(|(_, content)| content.trim_end_matches("\nRESULT=ok\n").to_owned())
}

#[test]
fn a_protected_secret_is_read_once_per_approval() {
    let scenario = start("secret-read", "secrets.env", "read", |dir| {
        std::fs::write(dir.join("secrets.env"), "TOKEN=s3cret\n").unwrap();
    });
    let secret = scenario.dir.join("secrets.env");
    let path = text(&secret);
    let agents = &scenario.agents;
    assert_eq!(scenario.tamper(agents, "read", &[&path]), Outcome::Denied);
    assert_eq!(
        scenario.tamper_as_user(agents, "read", &[&path]),
        Outcome::Denied
    );
    let request = file_request(&scenario, &secret, READ);
    assert_eq!(request["rule"], "prod read");
    assert_eq!(request["risk"], "high");
    assert_eq!(request["process"]["comm"], "gk-helper");
    let id = request["id"].as_str().unwrap().to_owned();
    // The reviewers' webhook has it, as a file request.
    let webhook = scenario.webhook.as_ref().unwrap();
    wait_for("the webhook delivery", || {
        webhook
            .received()
            .into_iter()
            .find(|delivery| delivery.json()["request"]["id"] == id.as_str())
    });
    let delivered = webhook
        .received()
        .into_iter()
        .map(|delivery| delivery.json())
        .find(|body| body["request"]["id"] == id.as_str())
        .unwrap();
    assert_eq!(delivered["request"]["kind"], "file");
    assert_eq!(delivered["request"]["target"], path.as_str());
    // The rule's risk goes with the request everywhere: webhook, journal, the reviewer's CLI.
    assert_eq!(delivered["request"]["risk"], "high");
    let created = scenario.wait_journal("request_created", |event| {
        event["request"]["id"] == id.as_str()
    });
    assert_eq!(created["request"]["risk"], "high");
    let listed = scenario.gatekeeper(&["requests"]);
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed
            .lines()
            .any(|line| line.starts_with(id.as_str()) && line.contains(" HIGH ")),
        "{listed}"
    );
    let shown = scenario.gatekeeper(&["requests", &id]);
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert_eq!(shown.lines().next(), Some("Risk: HIGH"), "{shown}");
    // The repeat joined the request.
    let pending = |scenario: &Scenario| {
        scenario
            .requests(false)
            .into_iter()
            .filter(|request| request["kind"] == "file" && request["state"] == "pending")
            .count()
    };
    assert_eq!(pending(&scenario), 1, "one request for both reads");
    // Control: outside the agent cgroups the same reads work.
    assert_eq!(
        scenario.tamper(&scenario.outside, "read", &[&path]),
        Outcome::Ok
    );
    assert_eq!(
        scenario.tamper_as_user(&scenario.outside, "read", &[&path]),
        Outcome::Ok
    );

    // The agent waits for the decision like for any other.
    let waiting = scenario.spawn_gatekeeper_in(agents, &["await", "--last", "--timeout", "60s"]);
    std::thread::sleep(std::time::Duration::from_millis(500));
    scenario.approve(&id);
    let awaited = waiting.wait_with_output().unwrap();
    assert_eq!(awaited.status.code(), Some(0), "{awaited:?}");
    assert_eq!(
        cat(agents, &secret).as_deref(),
        Some("TOKEN=s3cret\n"),
        "the approved read prints the secret"
    );
    scenario.wait_journal("grant_used", |_| true);
    assert_eq!(
        cat(agents, &secret),
        None,
        "a grant serves one open: the next read is denied"
    );

    // Racing readers with one grant: exactly one open succeeds.
    let request = file_request(&scenario, &secret, READ);
    scenario.approve(request["id"].as_str().unwrap());
    assert_eq!(
        scenario.tamper(agents, "race-read", &["8", &path]),
        Outcome::Ok,
        "exactly one of eight racing opens passed"
    );

    // A read rule leaves writing alone.
    assert_eq!(scenario.tamper(agents, "append", &[&path]), Outcome::Ok);
    assert_eq!(
        scenario.tamper_as_user(agents, "append", &[&path]),
        Outcome::Ok
    );

    // A new file renamed over the path (from outside) is protected too, within a second; the
    // old one stays protected.
    let kept = scenario.dir.join("kept.env");
    std::fs::hard_link(&secret, &kept).unwrap();
    let fresh = scenario.dir.join("fresh.env");
    std::fs::write(&fresh, "TOKEN=new\n").unwrap();
    hand_to_user(&fresh);
    std::fs::rename(&fresh, &secret).unwrap();
    scenario.wait_journal("protection_updated", |event| event["path"] == path.as_str());
    assert_eq!(cat(agents, &secret), None, "the new file at the path");
    assert_eq!(cat(agents, &kept), None, "the old file under another name");
    assert_eq!(
        cat(&scenario.outside, &secret).as_deref(),
        Some("TOKEN=new\n")
    );
}

#[test]
fn a_protected_directory_changes_only_with_approval() {
    let scenario = start("secret-dir", "prod", "write", |dir| {
        let prod = dir.join("prod");
        std::fs::create_dir(&prod).unwrap();
        for name in ["app.conf", "old.conf", "gone.conf"] {
            std::fs::write(prod.join(name), "port=1\n").unwrap();
        }
        std::fs::create_dir(prod.join("keep")).unwrap();
        std::fs::write(dir.join("other.conf"), "port=2\n").unwrap();
    });
    let dir = &scenario.dir;
    let prod = dir.join("prod");
    let at = |name: &str| text(&prod.join(name));
    let other = text(&dir.join("other.conf"));
    let agents = &scenario.agents;
    let attempts = |who: &str| -> Vec<(&'static str, Vec<String>)> {
        let mut attempts = vec![
            ("write", vec![at("app.conf"), "port=666\n".into()]),
            ("append", vec![at("app.conf")]),
            ("truncate", vec![at("app.conf")]),
            ("chmod", vec![at("app.conf"), "600".into()]),
            ("chown", vec![at("app.conf"), UNLISTED_UID.to_string()]),
            ("write", vec![at(&format!("new-{who}.conf")), "x".into()]),
            ("mkdir", vec![at(&format!("sub-{who}"))]),
            ("link", vec![other.clone(), at(&format!("linked-{who}"))]),
            ("rename", vec![other.clone(), at("old.conf")]),
            (
                "rename",
                vec![at("app.conf"), text(&dir.join(format!("moved-{who}")))],
            ),
            ("unlink", vec![at("gone.conf")]),
            ("rmdir", vec![at("keep")]),
        ];
        // trusted.* xattrs and inode flags need root; tmpfs has user.* xattrs only since 6.6.
        if who == "root" {
            attempts.push((
                "setxattr",
                vec![at("app.conf"), "trusted.gk".into(), "x".into()],
            ));
            attempts.push(("chattr", vec![at("app.conf"), "+i".into()]));
        }
        attempts
    };
    for (who, user) in [("root", false), ("user", true)] {
        for (op, args) in attempts(who) {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let outcome = if user {
                scenario.tamper_as_user(agents, op, &args)
            } else {
                scenario.tamper(agents, op, &args)
            };
            assert_eq!(outcome, Outcome::Denied, "{who}: {op} {args:?}");
        }
    }
    let request = file_request(&scenario, &prod.join("app.conf"), WRITE);
    assert_eq!(request["rule"], "prod write");
    for name in ["app.conf", "old.conf", "gone.conf"] {
        assert_eq!(
            std::fs::read_to_string(prod.join(name)).unwrap(),
            "port=1\n",
            "{name} is unchanged"
        );
    }
    assert!(prod.join("keep").is_dir());
    let mut names: Vec<String> = std::fs::read_dir(&prod)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["app.conf", "gone.conf", "keep", "old.conf"]);
    // A write rule leaves reading alone.
    assert_eq!(
        scenario.tamper(agents, "read", &[&at("app.conf")]),
        Outcome::Ok
    );
    assert_eq!(
        scenario.tamper_as_user(agents, "read", &[&at("app.conf")]),
        Outcome::Ok
    );

    // The approved write passes once, truncating on open; the next is denied.
    scenario.approve(request["id"].as_str().unwrap());
    assert_eq!(
        scenario.tamper(agents, "write", &[&at("app.conf"), "port=2\n"]),
        Outcome::Ok
    );
    assert_eq!(
        std::fs::read_to_string(prod.join("app.conf")).unwrap(),
        "port=2\n"
    );
    assert_eq!(
        scenario.tamper(agents, "write", &[&at("app.conf"), "port=3\n"]),
        Outcome::Denied
    );

    // Control: outside the agent cgroups every one of them works.
    std::fs::write(dir.join("other.conf"), "port=2\n").unwrap();
    hand_to_user(dir);
    for (who, user) in [("root", false), ("user", true)] {
        for (op, args) in attempts(who) {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let outcome = if user {
                scenario.tamper_as_user(&scenario.outside, op, &args)
            } else {
                scenario.tamper(&scenario.outside, op, &args)
            };
            assert_eq!(outcome, Outcome::Ok, "outside, {who}: {op} {args:?}");
            // Put back what the next attempt needs.
            match (op, args.as_slice()) {
                ("rename", [from, to]) => {
                    std::fs::write(from, "x").unwrap();
                    if to.ends_with(&format!("moved-{who}")) {
                        std::fs::rename(to, from).unwrap();
                    }
                }
                ("rmdir", [path]) => std::fs::create_dir(path).unwrap(),
                ("chattr", [path, _]) => assert_eq!(
                    scenario.tamper(&scenario.outside, "chattr", &[path, "-i"]),
                    Outcome::Ok
                ),
                ("unlink", [path]) => std::fs::write(path, "x").unwrap(),
                _ => {}
            }
            hand_to_user(dir);
        }
    }
}

#[test]
fn a_secret_does_not_leave_its_directory() {
    let scenario = start("secret-tree", "vault", "read", |dir| {
        let vault = dir.join("vault");
        std::fs::create_dir_all(vault.join("sub")).unwrap();
        std::fs::write(vault.join("key.pem"), "KEY\n").unwrap();
        std::fs::write(vault.join("sub/deep.pem"), "DEEP\n").unwrap();
        std::fs::create_dir(dir.join("out")).unwrap();
        for name in ["upper", "work", "merged"] {
            std::fs::create_dir(dir.join(name)).unwrap();
        }
    });
    let dir = &scenario.dir;
    let vault = dir.join("vault");
    let in_vault = |name: &str| text(&vault.join(name));
    let out = |name: &str| text(&dir.join("out").join(name));
    let agents = &scenario.agents;
    let as_who = |user: bool, cgroup: &Path, op: &str, args: &[&str]| {
        if user {
            scenario.tamper_as_user(cgroup, op, args)
        } else {
            scenario.tamper(cgroup, op, args)
        }
    };
    for (who, user) in [("root", false), ("user", true)] {
        let denied = [
            ("read", vec![in_vault("sub/deep.pem")]),
            (
                "link",
                vec![in_vault("key.pem"), out(&format!("key-{who}"))],
            ),
            (
                "rename",
                vec![in_vault("key.pem"), out(&format!("key-{who}"))],
            ),
            ("rename", vec![in_vault("sub"), out(&format!("sub-{who}"))]),
        ];
        for (op, args) in &denied {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            assert_eq!(
                as_who(user, agents, op, &args),
                Outcome::Denied,
                "{who}: {op} {args:?}"
            );
        }
        // Not within the directory either (the agent would choose the name reviewers see); a
        // new file is covered too; writing is free.
        let renamed = in_vault(&format!("key-{who}.pem"));
        assert_eq!(
            as_who(user, agents, "rename", &[&in_vault("key.pem"), &renamed]),
            Outcome::Denied,
            "{who}: rename within"
        );
        // No new names either (a name of the agent's would catch what a trusted writer puts
        // there); writing a file in place is free; a file made later (by someone trusted) is
        // covered.
        let new = in_vault(&format!("new-{who}.pem"));
        assert_eq!(
            as_who(user, agents, "write", &[&new, "NEW\n"]),
            Outcome::Denied,
            "{who}: a new name below a read rule"
        );
        assert_eq!(
            as_who(user, agents, "append", &[&in_vault("key.pem")]),
            Outcome::Ok,
            "{who}: a read rule leaves writing in place alone"
        );
        std::fs::write(&new, "NEW\n").unwrap();
        hand_to_user(Path::new(&new));
        assert_eq!(
            as_who(user, agents, "read", &[&new]),
            Outcome::Denied,
            "{who}: a file made later is covered"
        );
        // Through an overlay whose lower layer is the directory: the file below is opened for
        // the agent, and judged.
        let (lower, upper, work, merged) = (
            text(&vault),
            text(&dir.join("upper")),
            text(&dir.join(format!("work-{who}"))),
            text(&dir.join(format!("merged-{who}"))),
        );
        std::fs::create_dir_all(&work).unwrap();
        std::fs::create_dir_all(&merged).unwrap();
        hand_to_user(dir);
        let through = text(&Path::new(&merged).join("key.pem"));
        let namespace = if user { "user" } else { "private" };
        assert_eq!(
            as_who(
                user,
                agents,
                "in-ns",
                &[
                    namespace,
                    "overlay-then",
                    &lower,
                    &upper,
                    &work,
                    &merged,
                    "read",
                    &through
                ],
            ),
            Outcome::Denied,
            "{who}: read through an overlay"
        );
    }
    // By handle (root only: open_by_handle_at needs CAP_DAC_READ_SEARCH).
    assert_eq!(
        scenario.tamper(agents, "by-handle", &[&in_vault("key.pem")]),
        Outcome::Denied
    );
    // Only the agents' appends (writing in place is free under a read rule) changed it.
    assert_eq!(
        std::fs::read_to_string(vault.join("key.pem")).unwrap(),
        "KEY\n##"
    );

    // Control: outside the agent cgroups the same actions work.
    let outside = &scenario.outside;
    assert_eq!(
        scenario.tamper(outside, "by-handle", &[&in_vault("key.pem")]),
        Outcome::Ok
    );
    for (who, user) in [("root", false), ("user", true)] {
        let key = in_vault("key.pem");
        let moved = out(&format!("key-{who}"));
        let ok = [
            ("read", vec![in_vault("sub/deep.pem")]),
            ("link", vec![key.clone(), moved.clone()]),
            ("unlink", vec![moved.clone()]),
            ("rename", vec![key.clone(), moved.clone()]),
            ("rename", vec![moved.clone(), key.clone()]),
        ];
        for (op, args) in &ok {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            assert_eq!(
                as_who(user, outside, op, &args),
                Outcome::Ok,
                "outside, {who}: {op} {args:?}"
            );
        }
        let merged = text(&dir.join(format!("merged-{who}")));
        let through = text(&Path::new(&merged).join("key.pem"));
        let namespace = if user { "user" } else { "private" };
        assert_eq!(
            as_who(
                user,
                outside,
                "in-ns",
                &[
                    namespace,
                    "overlay-then",
                    &text(&vault),
                    &text(&dir.join("upper")),
                    &text(&dir.join(format!("work-{who}"))),
                    &merged,
                    "read",
                    &through,
                ],
            ),
            Outcome::Ok,
            "outside, {who}: read through an overlay"
        );
    }
}
