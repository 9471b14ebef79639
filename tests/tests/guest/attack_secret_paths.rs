//! Attacks on the paths of `[[protect.file]]` from inside an agent cgroup (as root and as an
//! ordinary user): names, symlinks and replacements that would catch what a trusted writer
//! puts at a protected path. Each asserts the secure outcome; a control
//! from outside the agent cgroups shows the action itself works. Failures are collected per
//! test so one run reports every hole at once.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use gatekeeper_tests::{Options, Outcome, Scenario, Waiting, hand_to_user};

/// One step of the agent's: a tamper op and its arguments.
type Step<'a> = (&'a str, Vec<String>);

fn text(path: &Path) -> String {
    path.display().to_string()
}

fn start(name: &str, rules: &str, build: impl FnOnce(&Path)) -> Scenario {
    let dir = PathBuf::from(format!("/tmp/gk-{name}"));
    let mut scenario = Scenario::prepare(
        name,
        Options {
            extra: rules.replace("{dir}", &text(&dir)),
            ..Options::default()
        },
    );
    build(&scenario.dir);
    hand_to_user(&scenario.dir);
    scenario.start_daemon();
    scenario
}

fn as_who(scenario: &Scenario, user: bool, cgroup: &Path, op: &str, args: &[&str]) -> Outcome {
    if user {
        scenario.tamper_as_user(cgroup, op, args)
    } else {
        scenario.tamper(cgroup, op, args)
    }
}

fn note(line: String) {
    eprintln!("{line}");
}

fn verdict(failures: Vec<String>) {
    assert!(failures.is_empty(), "BROKEN:\n{}", failures.join("\n"));
}

/// gk-helper `OP ARGS` in `cgroup` (as root or the user), an op that prints READY and waits;
/// `meanwhile` runs then (someone trusted writing the secret); returns the CONTENT= the agent
/// read afterwards, or the helper's whole output when there is none.
fn hold(
    user: bool,
    cgroup: &Path,
    op: &str,
    op_args: &[&str],
    meanwhile: impl FnOnce(),
) -> Result<String, String> {
    let waiting = Waiting::start(user, cgroup, op, op_args)?;
    meanwhile();
    let seen = waiting.finish();
    seen.lines()
        .find_map(|line| line.strip_prefix("CONTENT="))
        .map(str::to_owned)
        .ok_or(seen)
}

/// A trusted writer (this test, outside every agent cgroup) rewrites a secret in place, after
/// the daemon had time to follow any replaced path.
fn trusted_write(path: &str, secret: &str) -> impl FnOnce() {
    let (path, secret) = (path.to_owned(), secret.to_owned());
    move || {
        std::thread::sleep(Duration::from_millis(1500));
        let _ = std::fs::write(path, secret);
    }
}

/// A directory above a rule's path (its parent, or further up) is renamed away, or exchanged,
/// for a tree of the agent's own whose file at the rule's path the agent holds open. The rule
/// follows the old inode and the daemon protects the new one within a second, but the agent's
/// fd is already open: when a trusted writer rewrites the secret at its path, the agent reads
/// it.
#[test]
fn an_ancestor_swapped_away_hands_the_agent_no_secret() {
    let mut rules = String::new();
    for who in ["root", "user", "outside"] {
        for how in ["rename", "exchange"] {
            rules.push_str(&format!(
                "[[protect.file]]\npath = \"{{dir}}/d-{who}-{how}/vault\"\naccess = \"read\"\n\
                 [[protect.file]]\npath = \"{{dir}}/f-{who}-{how}/secrets.env\"\naccess = \"read\"\n\
                 [[protect.file]]\npath = \"{{dir}}/g-{who}-{how}/up/vault\"\naccess = \"read\"\n"
            ));
        }
    }
    let scenario = start("r2-ancestor", &rules, |dir| {
        for who in ["root", "user", "outside"] {
            for how in ["rename", "exchange"] {
                let vault = dir.join(format!("d-{who}-{how}/vault"));
                std::fs::create_dir_all(&vault).unwrap();
                std::fs::write(vault.join("token"), "OLD\n").unwrap();
                let file = dir.join(format!("f-{who}-{how}"));
                std::fs::create_dir_all(&file).unwrap();
                std::fs::write(file.join("secrets.env"), "OLD\n").unwrap();
                let deep = dir.join(format!("g-{who}-{how}/up/vault"));
                std::fs::create_dir_all(&deep).unwrap();
                std::fs::write(deep.join("token"), "OLD\n").unwrap();
            }
        }
    });
    let dir = text(&scenario.dir);
    let mut failures = Vec::new();
    let mut controls = Vec::new();
    for (who, user, cgroup) in [
        ("root", false, &scenario.agents),
        ("user", true, &scenario.agents),
        ("outside", false, &scenario.outside),
    ] {
        for how in ["rename", "exchange"] {
            // (ancestor, inner): the rule's directory's parent; the rule file's parent; the
            // rule directory's grandparent.
            for (kind, ancestor, inner) in [
                ("dir", format!("{dir}/d-{who}-{how}"), "vault/token"),
                ("file", format!("{dir}/f-{who}-{how}"), "secrets.env"),
                (
                    "grandparent",
                    format!("{dir}/g-{who}-{how}"),
                    "up/vault/token",
                ),
            ] {
                let aside = format!("{ancestor}-aside");
                let secret = format!("SECRET-{who}-{how}-{kind}");
                let got = hold(
                    user,
                    cgroup,
                    "ancestor-hold",
                    &[&ancestor, &aside, inner, how],
                    trusted_write(&format!("{ancestor}/{inner}"), &secret),
                );
                note(format!("ancestor {who} {how} {kind}: {got:?}"));
                if who == "outside" {
                    controls.push((format!("{how} {kind}"), got == Ok(secret)));
                } else if got == Ok(secret.clone()) {
                    failures.push(format!(
                        "{who}: {how} of {ancestor} (above {kind} rule) then held \
                         {ancestor}/{inner}: read {secret}"
                    ));
                } else if !matches!(&got, Err(output) if output.contains("RESULT=errno:1")) {
                    failures.push(format!("{who}: {how} {kind}: not refused: {got:?}"));
                }
            }
        }
    }
    for (what, worked) in controls {
        assert!(worked, "control: {what}");
    }
    verdict(failures);
}

/// The same swap above a write rule: the agent puts a file of its choosing at the protected
/// path without approval (the daemon then protects the agent's file).
#[test]
fn an_ancestor_swapped_away_changes_no_write_protected_file() {
    let mut rules = String::new();
    for who in ["root", "user", "outside"] {
        rules.push_str(&format!(
            "[[protect.file]]\npath = \"{{dir}}/w-{who}/app.conf\"\naccess = \"write\"\n"
        ));
    }
    let scenario = start("r2-ancestor-write", &rules, |dir| {
        for who in ["root", "user", "outside"] {
            std::fs::create_dir_all(dir.join(format!("w-{who}"))).unwrap();
            std::fs::write(dir.join(format!("w-{who}/app.conf")), "GOOD\n").unwrap();
        }
    });
    let dir = text(&scenario.dir);
    let mut failures = Vec::new();
    for (who, user, cgroup) in [
        ("root", false, &scenario.agents),
        ("user", true, &scenario.agents),
        ("outside", false, &scenario.outside),
    ] {
        let parent = format!("{dir}/w-{who}");
        let steps = [
            ("rename", vec![parent.clone(), format!("{parent}-aside")]),
            ("mkdir", vec![parent.clone()]),
            (
                "write",
                vec![format!("{parent}/app.conf"), "EVIL".to_owned()],
            ),
        ];
        let mut outcomes = Vec::new();
        for (op, args) in &steps {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            outcomes.push((op, as_who(&scenario, user, cgroup, op, &args)));
        }
        let content = std::fs::read_to_string(format!("{parent}/app.conf")).unwrap_or_default();
        note(format!("write-ancestor {who}: {outcomes:?} -> {content:?}"));
        if who == "outside" {
            assert_eq!(content, "EVIL", "control");
        } else if content == "EVIL" {
            failures.push(format!(
                "{who}: rename {parent} away, mkdir, write app.conf: {outcomes:?}; \
                 {parent}/app.conf now holds the agent's EVIL"
            ));
        }
    }
    verdict(failures);
}

/// Below a read rule the agent replaces a secret (or a subdirectory), or makes a name a trusted
/// writer will use, as a symlink to a file of its own: the writer's secret lands there.
#[test]
fn a_symlink_in_a_read_protected_directory_catches_no_secret() {
    let scenario = start(
        "r2-symlink",
        "[[protect.file]]\npath = \"{dir}/vault\"\nname = \"vault\"\naccess = \"read\"\n",
        |dir| {
            let vault = dir.join("vault");
            std::fs::create_dir_all(&vault).unwrap();
            std::fs::create_dir_all(dir.join("out")).unwrap();
            for who in ["root", "user", "outside"] {
                std::fs::write(vault.join(format!("token-{who}")), "OLD\n").unwrap();
                std::fs::create_dir_all(vault.join(format!("sub-{who}"))).unwrap();
            }
        },
    );
    let dir = text(&scenario.dir);
    let mut failures = Vec::new();
    for (who, user, cgroup) in [
        ("root", false, &scenario.agents),
        ("user", true, &scenario.agents),
        ("outside", false, &scenario.outside),
    ] {
        let vault = format!("{dir}/vault");
        let out = format!("{dir}/out");
        // (label, agent's steps, path the trusted writer writes, file the agent then reads)
        let cases: Vec<(&str, Vec<Step>, String, String)> = vec![
            (
                "replace an existing secret",
                vec![
                    ("write", vec![format!("{out}/catch-{who}"), "mine".into()]),
                    ("unlink", vec![format!("{vault}/token-{who}")]),
                    (
                        "symlink",
                        vec![format!("{out}/catch-{who}"), format!("{vault}/token-{who}")],
                    ),
                ],
                format!("{vault}/token-{who}"),
                format!("{out}/catch-{who}"),
            ),
            (
                "a new name",
                vec![
                    ("write", vec![format!("{out}/new-{who}"), "mine".into()]),
                    (
                        "symlink",
                        vec![format!("{out}/new-{who}"), format!("{vault}/new-{who}")],
                    ),
                ],
                format!("{vault}/new-{who}"),
                format!("{out}/new-{who}"),
            ),
            (
                "replace a subdirectory",
                vec![
                    ("mkdir", vec![format!("{out}/subdir-{who}")]),
                    ("rmdir", vec![format!("{vault}/sub-{who}")]),
                    (
                        "symlink",
                        vec![format!("{out}/subdir-{who}"), format!("{vault}/sub-{who}")],
                    ),
                ],
                format!("{vault}/sub-{who}/key"),
                format!("{out}/subdir-{who}/key"),
            ),
        ];
        for (label, steps, written, caught) in cases {
            let mut outcomes = Vec::new();
            for (op, args) in &steps {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                outcomes.push((op.to_string(), as_who(&scenario, user, cgroup, op, &args)));
            }
            let secret = format!("SECRET-{who}");
            let _ = std::fs::write(&written, &secret);
            let got = as_who(&scenario, user, cgroup, "cat", &[&caught]);
            let leaked = std::fs::read_to_string(&caught).unwrap_or_default() == secret
                && got == Outcome::Ok;
            note(format!(
                "symlink {who} {label}: {outcomes:?} cat={got:?} leaked={leaked}"
            ));
            if who == "outside" {
                assert!(leaked, "control: {label}");
            } else if leaked {
                failures.push(format!(
                    "{who}: {label}: {outcomes:?}; trusted write to {written} read by the \
                     agent at {caught}"
                ));
            }
        }
    }
    verdict(failures);
}

/// A file the agent makes in a read-protected directory, write-only (writing is free there),
/// held while a trusted writer puts a secret in it, is not read through /proc/self/fd; nor is a
/// new file opened for reading and writing without approval.
#[test]
fn a_write_only_file_made_in_a_read_protected_directory_is_not_reopened() {
    let scenario = start(
        "r2-wronly",
        "[[protect.file]]\npath = \"{dir}/vault\"\nname = \"vault\"\naccess = \"read\"\n",
        |dir| std::fs::create_dir_all(dir.join("vault")).unwrap(),
    );
    let dir = text(&scenario.dir);
    let mut failures = Vec::new();
    for (who, user, cgroup) in [
        ("root", false, &scenario.agents),
        ("user", true, &scenario.agents),
        ("outside", false, &scenario.outside),
    ] {
        let fresh = format!("{dir}/vault/fresh-{who}");
        let secret = format!("SECRET-{who}");
        let got = hold(
            user,
            cgroup,
            "wronly-hold",
            &[&fresh],
            trusted_write(&fresh, &secret),
        );
        let rdwr = as_who(
            &scenario,
            user,
            cgroup,
            "create-rdwr",
            &[&format!("{dir}/vault/rdwr-{who}")],
        );
        note(format!("wronly {who}: {got:?} create-rdwr={rdwr:?}"));
        if who == "outside" {
            assert_eq!(got.as_deref(), Ok(secret.as_str()), "control");
            assert_eq!(rdwr, Outcome::Ok, "control: create-rdwr");
            continue;
        }
        if got == Ok(secret.clone()) {
            failures.push(format!(
                "{who}: write-only fd reopened for reading: {secret}"
            ));
        }
        if rdwr != Outcome::Denied {
            failures.push(format!("{who}: O_CREAT|O_RDWR in the vault: {rdwr:?}"));
        }
    }
    verdict(failures);
}

/// An overlay whose lower layer is the read-protected directory and whose upper layer is the
/// agent's: a copy-up (append, chmod) would copy the secret into the agent's upper directory,
/// which it reads freely. Root in a private mount namespace, the user in a user namespace.
#[test]
fn an_overlay_copy_up_copies_no_secret_out() {
    let ops = ["append", "chmod"];
    let scenario = start(
        "r2-copyup",
        "[[protect.file]]\npath = \"{dir}/vault\"\nname = \"vault\"\naccess = \"read\"\n",
        |dir| {
            std::fs::create_dir_all(dir.join("vault")).unwrap();
            std::fs::write(dir.join("vault/token"), "TOPSECRET\n").unwrap();
            for who in ["root", "user", "outside"] {
                for op in ops {
                    for part in ["up", "work", "m"] {
                        std::fs::create_dir_all(dir.join(format!("{part}-{who}-{op}"))).unwrap();
                    }
                }
            }
        },
    );
    let dir = text(&scenario.dir);
    let mut failures = Vec::new();
    for (who, user, cgroup) in [
        ("root", false, &scenario.agents),
        ("user", true, &scenario.agents),
        ("outside", false, &scenario.outside),
    ] {
        for op in ops {
            let (up, work, merged) = (
                format!("{dir}/up-{who}-{op}"),
                format!("{dir}/work-{who}-{op}"),
                format!("{dir}/m-{who}-{op}"),
            );
            let file = format!("{merged}/token");
            let mut args = vec![
                if user { "user" } else { "private" },
                "overlay-then",
                &format!("{dir}/vault"),
                &up,
                &work,
                &merged,
                op,
                &file,
            ]
            .into_iter()
            .map(str::to_owned)
            .collect::<Vec<_>>();
            if op == "chmod" {
                args.push("600".into());
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let through = as_who(&scenario, user, cgroup, "in-ns", &args);
            let copied = format!("{up}/token");
            let cat = as_who(&scenario, user, cgroup, "read", &[&copied]);
            let content = std::fs::read_to_string(&copied).unwrap_or_default();
            let leaked = cat == Outcome::Ok && content.starts_with("TOPSECRET");
            note(format!(
                "copy-up {who} {op}: {through:?} read={cat:?} content={content:?}"
            ));
            if who == "outside" {
                assert!(leaked, "control: {op}: {through:?} {cat:?} {content:?}");
            } else if leaked {
                failures.push(format!(
                    "{who}: overlay lower=vault upper={up}, {op} {file} ({through:?}): the \
                     agent reads the secret at {copied}"
                ));
            }
        }
    }
    verdict(failures);
}

/// A trusted writer replaces a read-protected file (write a new file, rename it over) or a
/// read-protected directory (a new one exchanged in): the daemon follows the path only at its
/// next check, and an agent reading the path in a loop meanwhile reads the new secret.
#[test]
fn a_replaced_rule_path_is_not_readable_before_the_daemon_follows() {
    let mut rules = String::new();
    for who in ["root", "user", "outside"] {
        rules.push_str(&format!(
            "[[protect.file]]\npath = \"{{dir}}/f-{who}/secrets.env\"\naccess = \"read\"\n\
             [[protect.file]]\npath = \"{{dir}}/d-{who}/vault\"\naccess = \"read\"\n"
        ));
    }
    let scenario = start("r2-follow", &rules, |dir| {
        for who in ["root", "user", "outside"] {
            std::fs::create_dir_all(dir.join(format!("f-{who}"))).unwrap();
            std::fs::write(dir.join(format!("f-{who}/secrets.env")), "OLD\n").unwrap();
            std::fs::create_dir_all(dir.join(format!("d-{who}/vault"))).unwrap();
            std::fs::write(dir.join(format!("d-{who}/vault/token")), "OLD\n").unwrap();
        }
    });
    let dir = text(&scenario.dir);
    let mut failures = Vec::new();
    for (who, user, cgroup) in [
        ("root", false, &scenario.agents),
        ("user", true, &scenario.agents),
        ("outside", false, &scenario.outside),
    ] {
        for kind in ["file", "dir"] {
            let secret = format!("ROTATED-{who}-{kind}");
            let (path, replace): (String, Box<dyn FnOnce()>) = if kind == "file" {
                let target = format!("{dir}/f-{who}/secrets.env");
                let (t, s) = (target.clone(), secret.clone());
                (
                    target,
                    Box::new(move || {
                        std::thread::sleep(Duration::from_millis(200));
                        let new = format!("{t}.new");
                        std::fs::write(&new, s).unwrap();
                        std::fs::rename(&new, &t).unwrap();
                    }),
                )
            } else {
                let vault = format!("{dir}/d-{who}/vault");
                let (v, s) = (vault.clone(), secret.clone());
                (
                    format!("{vault}/token"),
                    Box::new(move || {
                        std::thread::sleep(Duration::from_millis(200));
                        let new = format!("{v}.new");
                        std::fs::create_dir_all(&new).unwrap();
                        std::fs::write(format!("{new}/token"), s).unwrap();
                        let (a, b) = (
                            std::ffi::CString::new(new).unwrap(),
                            std::ffi::CString::new(v).unwrap(),
                        );
                        let rc = unsafe {
                            libc::syscall(
                                libc::SYS_renameat2,
                                libc::AT_FDCWD,
                                a.as_ptr(),
                                libc::AT_FDCWD,
                                b.as_ptr(),
                                libc::RENAME_EXCHANGE,
                            )
                        };
                        assert_eq!(rc, 0, "exchange");
                    }),
                )
            };
            let got = hold(
                user,
                cgroup,
                "poll-read",
                &[&path, "ROTATED", "3000"],
                replace,
            );
            let soon = as_who(&scenario, user, cgroup, "read", &[&path]);
            std::thread::sleep(Duration::from_millis(1500));
            let after = as_who(&scenario, user, cgroup, "read", &[&path]);
            if who != "outside" && after == Outcome::Ok {
                failures.push(format!(
                    "{who}: {kind} rule at {path} replaced by a trusted writer: 1.5 s later \
                     the agent still reads it (right after: {soon:?})"
                ));
            }
            note(format!(
                "follow {who} {kind}: {got:?}; read right after: {soon:?}, 1.5 s later: {after:?}"
            ));
            if who == "outside" {
                assert_eq!(got.as_deref(), Ok(secret.as_str()), "control {kind}");
            } else if got == Ok(secret.clone()) {
                failures.push(format!(
                    "{who}: {kind} rule at {path} replaced by a trusted writer; the agent, \
                     reading in a loop, read {secret} before the daemon followed"
                ));
            }
        }
    }
    verdict(failures);
}

/// Not a hole, a cost: an editor's save (a temporary file renamed over the target) in a
/// read-protected directory is refused, as documented: agents make no names there.
#[test]
fn an_editor_save_in_a_read_protected_directory_is_refused() {
    let scenario = start(
        "r2-editor",
        "[[protect.file]]\npath = \"{dir}/vault\"\nname = \"vault\"\naccess = \"read\"\n",
        |dir| {
            std::fs::create_dir_all(dir.join("vault")).unwrap();
            std::fs::write(dir.join("vault/notes.txt"), "x\n").unwrap();
        },
    );
    let dir = text(&scenario.dir);
    for (who, user) in [("root", false), ("user", true)] {
        let tmp = format!("{dir}/vault/.notes.txt.swp-{who}");
        let write = as_who(&scenario, user, &scenario.agents, "write", &[&tmp, "y"]);
        // Had it made one anyway (here: someone trusted did), the rename is refused too.
        std::fs::write(&tmp, "y").unwrap();
        hand_to_user(Path::new(&tmp));
        let rename = as_who(
            &scenario,
            user,
            &scenario.agents,
            "rename",
            &[&tmp, &format!("{dir}/vault/notes.txt")],
        );
        note(format!("editor {who}: write={write:?} rename={rename:?}"));
        assert_eq!(write, Outcome::Denied);
        assert_eq!(rename, Outcome::Denied);
    }
}

/// A bind mount over the read-protected directory from a bare `unshare(CLONE_NEWNS)` (whose
/// mounts are the host's peers) or in the host's namespace: a trusted writer's path would land
/// in the agent's directory.
#[test]
fn a_bind_mount_over_a_read_protected_directory_does_not_reach_the_host() {
    let scenario = start(
        "r2-bind",
        "[[protect.file]]\npath = \"{dir}/vault\"\nname = \"vault\"\naccess = \"read\"\n",
        |dir| {
            std::fs::create_dir_all(dir.join("vault")).unwrap();
            std::fs::create_dir_all(dir.join("mine")).unwrap();
        },
    );
    let dir = text(&scenario.dir);
    let (mine, vault) = (format!("{dir}/mine"), format!("{dir}/vault"));
    let mut failures = Vec::new();
    for args in [
        vec!["bind", mine.as_str(), vault.as_str()],
        vec!["in-ns", "bare", "bind", mine.as_str(), vault.as_str()],
    ] {
        let got = scenario.tamper(&scenario.agents, args[0], &args[1..]);
        let _ = std::fs::write(format!("{vault}/token"), "SECRET");
        let leaked = std::fs::read_to_string(format!("{mine}/token")).is_ok();
        note(format!("bind {args:?}: {got:?} leaked={leaked}"));
        if leaked {
            failures.push(format!(
                "root: {args:?}: {got:?}; the host's write landed in {mine}"
            ));
        }
        let _ = std::fs::remove_file(format!("{vault}/token"));
        while std::process::Command::new("umount")
            .arg(&vault)
            .status()
            .is_ok_and(|s| s.success())
        {}
    }
    verdict(failures);
}

/// A read-protected single file (not a directory rule) hard-linked by the agent to an innocent
/// name outside: reading through that name still asks, but which name does the reviewer see?
#[test]
fn a_hard_link_to_a_read_protected_file_does_not_rename_the_request() {
    let scenario = start(
        "r2-flink",
        "[[protect.file]]\npath = \"{dir}/f/secrets.env\"\nname = \"prod secrets\"\naccess = \"read\"\n",
        |dir| {
            std::fs::create_dir_all(dir.join("f")).unwrap();
            std::fs::create_dir_all(dir.join("out")).unwrap();
            std::fs::write(dir.join("f/secrets.env"), "TOKEN=1\n").unwrap();
        },
    );
    let dir = text(&scenario.dir);
    let mut failures = Vec::new();
    for (who, user) in [("root", false), ("user", true)] {
        let innocent = format!("{dir}/out/README-{who}.md");
        let link = as_who(
            &scenario,
            user,
            &scenario.agents,
            "link",
            &[&format!("{dir}/f/secrets.env"), &innocent],
        );
        let read = as_who(&scenario, user, &scenario.agents, "read", &[&innocent]);
        std::thread::sleep(Duration::from_millis(500));
        let shown: Vec<String> = scenario
            .requests(true)
            .into_iter()
            .filter(|request| request["kind"] == "file")
            .map(|request| format!("{} ({})", request["target"], request["rule"]))
            .collect();
        note(format!(
            "file link {who}: link={link:?} read={read:?} requests={shown:?}"
        ));
        if read == Outcome::Ok {
            failures.push(format!("{who}: read through hard link {innocent} passed"));
        }
        if link == Outcome::Ok && shown.iter().any(|s| s.contains("README")) {
            failures.push(format!(
                "{who}: hard link {innocent} allowed; the request shows {shown:?}"
            ));
        }
    }
    assert_eq!(
        scenario.tamper(
            &scenario.outside,
            "link",
            &[
                &format!("{dir}/f/secrets.env"),
                &format!("{dir}/out/control")
            ]
        ),
        Outcome::Ok,
        "control"
    );
    verdict(failures);
}

/// A read-protected single file rotated atomically by a trusted writer through a predictable
/// temporary name beside it (`secrets.env.new`, then renamed over): the agent plants that name
/// as a symlink to a file of its own. The parent directory is no rule's (only an ancestor), so
/// nothing stops the symlink; the secret is written into the agent's file, and the rename then
/// puts the agent's symlink at the protected path.
#[test]
fn a_symlink_at_a_writers_temporary_name_catches_no_secret() {
    let scenario = start(
        "r2-tmpname",
        "[[protect.file]]\npath = \"{dir}/f/secrets.env\"\nname = \"prod secrets\"\naccess = \"read\"\n",
        |dir| {
            std::fs::create_dir_all(dir.join("f")).unwrap();
            std::fs::create_dir_all(dir.join("out")).unwrap();
            std::fs::write(dir.join("f/secrets.env"), "OLD\n").unwrap();
        },
    );
    let dir = text(&scenario.dir);
    let mut failures = Vec::new();
    for (who, user, cgroup) in [
        ("root", false, &scenario.agents),
        ("user", true, &scenario.agents),
        ("outside", false, &scenario.outside),
    ] {
        let catch = format!("{dir}/out/catch-{who}");
        let temp = format!("{dir}/f/secrets.env.new");
        let secret = format!("ROTATED-{who}");
        let (t, d, sec) = (temp.clone(), dir.clone(), secret.clone());
        let got = hold(user, cgroup, "symlink-hold", &[&catch, &temp], move || {
            let _ = std::fs::write(&t, &sec);
            let _ = std::fs::rename(&t, format!("{d}/f/secrets.env"));
            // The daemon follows the path (now the agent's symlink) meanwhile.
            std::thread::sleep(Duration::from_millis(1500));
        });
        let later = as_who(&scenario, user, cgroup, "cat", &[&catch]);
        let leaked = got == Ok(secret.clone());
        note(format!(
            "tmpname {who}: held fd read {got:?}; cat by path 1.5 s later {later:?}"
        ));
        if who == "outside" {
            assert!(leaked, "control");
        } else if leaked {
            failures.push(format!(
                "{who}: symlink {temp} -> {catch}; the trusted writer's rotation landed in {catch}"
            ));
        }
        // Put a real file back for the next round.
        let _ = std::fs::remove_file(format!("{dir}/f/secrets.env"));
        std::fs::write(format!("{dir}/f/secrets.env"), "OLD\n").unwrap();
        std::thread::sleep(Duration::from_millis(1200));
    }
    verdict(failures);
}
