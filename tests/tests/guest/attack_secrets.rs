//! Attacks on `[[protect.file]]` from inside an agent cgroup (as root and as an ordinary user).
//! Each asserts the secure outcome; a control from outside shows the action itself works.
//! Failures are collected per test so one run reports every hole at once.

use std::path::{Path, PathBuf};

use gatekeeper_tests::{Options, Outcome, Scenario, Waiting, hand_to_user, wait_for};

fn text(path: &Path) -> String {
    path.display().to_string()
}

/// A scenario with `rules` (TOML of `[[protect.file]]` tables; `{dir}` stands for the
/// scenario's directory); `build` fills the directory before the daemon starts.
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

fn check(failures: &mut Vec<String>, what: String, got: Outcome, want: Outcome) {
    if got != want {
        failures.push(format!("{what}: got {got:?}, secure is {want:?}"));
    }
}

fn verdict(failures: Vec<String>) {
    assert!(failures.is_empty(), "BROKEN:\n{}", failures.join("\n"));
}

/// Runs gk-helper's `plant-hold OUTSIDE INSIDE HOW` in `cgroup` (as root or the user); once it
/// is READY, `meanwhile` runs (someone trusted writing the secret); returns what the agent then
/// read through the fd it held, or the helper's output when it failed.
fn plant(
    user: bool,
    cgroup: &Path,
    outside: &str,
    inside: &str,
    how: &str,
    meanwhile: impl FnOnce(),
) -> Result<String, String> {
    let waiting = Waiting::start(user, cgroup, "plant-hold", &[outside, inside, how])?;
    meanwhile();
    let output = waiting.finish();
    output
        .lines()
        .find_map(|line| line.strip_prefix("CONTENT="))
        .map(str::to_owned)
        .ok_or(output)
}

/// The output of a `plant` the kernel refused: the helper stopped before READY with EPERM.
fn refused(got: &Result<String, String>) -> bool {
    matches!(got, Err(output) if output.contains("RESULT=errno:1"))
}

/// A file of the agent's own, held open (or with another name outside), may not enter a
/// read-protected directory: once a trusted writer put a secret into it in place, the agent
/// would read it.
#[test]
fn a_file_of_the_agents_does_not_enter_a_read_protected_directory() {
    let scenario = start(
        "as-plant",
        "[[protect.file]]\npath = \"{dir}/vault\"\nname = \"vault\"\naccess = \"read\"\n",
        |dir| {
            let vault = dir.join("vault");
            std::fs::create_dir_all(&vault).unwrap();
            std::fs::create_dir_all(dir.join("out")).unwrap();
            for who in ["root", "user", "outside"] {
                for how in ["link", "rename"] {
                    std::fs::write(vault.join(format!("token-{who}-{how}")), "OLD\n").unwrap();
                }
            }
        },
    );
    let dir = scenario.dir.clone();
    let mut failures = Vec::new();
    for (who, user) in [("root", false), ("user", true)] {
        for how in ["link", "rename"] {
            let inside = dir.join(format!("vault/token-{who}-{how}"));
            let outside = dir.join(format!("out/plant-{who}-{how}"));
            let secret = format!("SECRET-{who}-{how}");
            let got = plant(
                user,
                &scenario.agents,
                &text(&outside),
                &text(&inside),
                how,
                || {
                    std::fs::write(&inside, &secret).unwrap();
                },
            );
            if !refused(&got) {
                failures.push(format!("{who}: plant-hold {how} into the vault: {got:?}"));
            }
        }
    }
    // Control: from outside the same plant works (and reads, as it may).
    let inside = dir.join("vault/token-outside-link");
    let got = plant(
        false,
        &scenario.outside,
        &text(&dir.join("out/plant-outside-link")),
        &text(&inside),
        "link",
        || std::fs::write(&inside, "SECRET-outside").unwrap(),
    );
    assert_eq!(got.as_deref(), Ok("SECRET-outside"), "control");
    verdict(failures);
}

/// A read rule's own file keeps its name: renamed away, a file of the agent's own held open for
/// reading could take the path, and the trusted writer's next secret would go into it.
#[test]
fn a_read_protected_file_is_not_replaced_by_the_agents() {
    let scenario = start(
        "as-replace",
        "[[protect.file]]\npath = \"{dir}/app.env\"\nname = \"app env\"\naccess = \"read\"\n",
        |dir| {
            std::fs::write(dir.join("app.env"), "TOKEN=old\n").unwrap();
            std::fs::write(dir.join("other.env"), "OTHER\n").unwrap();
        },
    );
    let dir = scenario.dir.clone();
    let mut failures = Vec::new();
    let app = text(&dir.join("app.env"));
    for (who, user) in [("root", false), ("user", true)] {
        let outside = dir.join(format!("mine-{who}"));
        let got = plant(
            user,
            &scenario.agents,
            &text(&outside),
            &app,
            "replace",
            || {
                std::fs::write(&app, "TOKEN=rotated").unwrap();
            },
        );
        if !refused(&got) {
            failures.push(format!("{who}: plant-hold {app} replace: {got:?}"));
        }
        let other = text(&dir.join("other.env"));
        for (op, args) in [
            ("rename", vec![other.clone(), app.clone()]),
            ("unlink", vec![app.clone()]),
        ] {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let got = as_who(&scenario, user, &scenario.agents, op, &args);
            check(
                &mut failures,
                format!("{who}: {op} {args:?}"),
                got,
                Outcome::Denied,
            );
        }
        // Writing it in place stays free under a read rule.
        let got = as_who(&scenario, user, &scenario.agents, "append", &[&app]);
        check(
            &mut failures,
            format!("{who}: append {app}"),
            got,
            Outcome::Ok,
        );
    }
    // Control: from outside the replacement works.
    let got = plant(
        false,
        &scenario.outside,
        &text(&dir.join("mine-outside")),
        &app,
        "replace",
        || std::fs::write(&app, "TOKEN=rotated").unwrap(),
    );
    assert_eq!(got.as_deref(), Ok("TOKEN=rotated"), "control");
    verdict(failures);
}

/// Below a read-protected directory agents choose no names: a hard link or a rename there would
/// let them name a secret for the reviewer ("read .../public-readme.txt" for the private key),
/// or move it out of a stricter nested rule.
#[test]
fn agents_name_nothing_below_a_read_protected_directory() {
    let scenario = start(
        "as-name",
        "[[protect.file]]\npath = \"{dir}/vault\"\nname = \"outer vault\"\naccess = \"read\"\n\
         [[protect.file]]\npath = \"{dir}/vault/inner\"\nname = \"inner two-person\"\naccess = \"read\"\napprovals = 2\n",
        |dir| {
            std::fs::create_dir_all(dir.join("vault/inner")).unwrap();
            std::fs::write(dir.join("vault/id_rsa"), "PRIVATE\n").unwrap();
            std::fs::write(dir.join("vault/inner/key"), "K\n").unwrap();
        },
    );
    let dir = scenario.dir.clone();
    let at = |name: &str| text(&dir.join("vault").join(name));
    let mut failures = Vec::new();
    for (who, user) in [("root", false), ("user", true)] {
        let attempts = [
            (
                "link",
                vec![at("id_rsa"), at(&format!("public-readme-{who}.txt"))],
            ),
            (
                "rename",
                vec![
                    at("id_rsa"),
                    at(&format!("notes-{who}.txt\nrule: public docs")),
                ],
            ),
            ("rename", vec![at("inner/key"), at(&format!("moved-{who}"))]),
        ];
        for (op, args) in &attempts {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let got = as_who(&scenario, user, &scenario.agents, op, &args);
            check(
                &mut failures,
                format!("{who}: {op} {args:?}"),
                got,
                Outcome::Denied,
            );
        }
    }
    // The inner key still asks for two approvals.
    let key = at("inner/key");
    assert_eq!(
        scenario.tamper(&scenario.agents, "read", &[&key]),
        Outcome::Denied
    );
    let request = wait_for("the inner key's request", || {
        scenario
            .requests(true)
            .into_iter()
            .find(|request| request["kind"] == "file" && request["target"] == key.as_str())
    });
    assert_eq!(request["rule"], "inner two-person");
    assert_eq!(request["approvals_required"], 2);
    // Control: outside both work.
    for (op, args) in [
        ("link", vec![at("id_rsa"), at("public-readme.txt")]),
        ("rename", vec![at("inner/key"), at("moved")]),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_eq!(
            scenario.tamper(&scenario.outside, op, &args),
            Outcome::Ok,
            "control: {op}"
        );
    }
    verdict(failures);
}

/// Side doors into a write-protected directory: O_TMPFILE + linkat, fifo, symlink, times,
/// RENAME_WHITEOUT, RENAME_EXCHANGE, link of an O_PATH fd out.
#[test]
fn a_write_protected_directory_has_no_side_door() {
    let scenario = start(
        "as-wdir",
        "[[protect.file]]\npath = \"{dir}/prod\"\nname = \"prod\"\naccess = \"write\"\n",
        |dir| {
            std::fs::create_dir_all(dir.join("prod")).unwrap();
            std::fs::create_dir_all(dir.join("scratch")).unwrap();
            std::fs::write(dir.join("prod/app.conf"), "port=1\n").unwrap();
            std::fs::write(dir.join("other.conf"), "port=2\n").unwrap();
        },
    );
    let dir = scenario.dir.clone();
    let at = |name: &str| text(&dir.join("prod").join(name));
    let scratch = text(&dir.join("scratch"));
    let other = text(&dir.join("other.conf"));
    let attempts = |who: &str| -> Vec<(&'static str, Vec<String>)> {
        let mut list = vec![
            (
                "tmpfile-link",
                vec![scratch.clone(), at(&format!("tmp-{who}"))],
            ),
            ("mkfifo", vec![at(&format!("fifo-{who}"))]),
            (
                "symlink",
                vec!["/etc/passwd".into(), at(&format!("sym-{who}"))],
            ),
            ("utimes", vec![at("app.conf")]),
            ("exchange", vec![at("app.conf"), other.clone()]),
            (
                "link-opath",
                vec![at("app.conf"), text(&dir.join(format!("scratch/lo-{who}")))],
            ),
        ];
        if who == "root" {
            list.push((
                "whiteout",
                vec![at("app.conf"), text(&dir.join("scratch/wo"))],
            ));
        }
        list
    };
    let mut failures = Vec::new();
    for (who, user) in [("root", false), ("user", true)] {
        for (op, args) in attempts(who) {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let mut got = as_who(&scenario, user, &scenario.agents, op, &args);
            // 6.1 refuses linkat(AT_EMPTY_PATH) without CAP_DAC_READ_SEARCH (ENOENT) before
            // any LSM: held by the kernel itself.
            if op == "link-opath" && user && got == Outcome::Errno(libc::ENOENT) {
                got = Outcome::Denied;
            }
            check(
                &mut failures,
                format!("{who}: {op} {args:?}"),
                got,
                Outcome::Denied,
            );
        }
    }
    assert_eq!(
        std::fs::read_to_string(dir.join("prod/app.conf")).unwrap(),
        "port=1\n"
    );
    // Control (root, outside): each works.
    for (op, args) in attempts("root") {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let got = scenario.tamper(&scenario.outside, op, &args);
        assert_eq!(got, Outcome::Ok, "control: {op} {args:?}");
        match op {
            "exchange" => {
                scenario.tamper(&scenario.outside, op, &args);
            }
            "whiteout" => {
                std::fs::remove_file(at("app.conf")).unwrap();
                std::fs::rename(args[1], at("app.conf")).unwrap();
            }
            _ => {}
        }
    }
    verdict(failures);
}

/// An overlay whose upper layer is the write-protected directory, mounted by a root agent in a
/// private mount namespace: inode flags (FS_IOC_SETFLAGS, also 32-bit), times, xattrs, writes,
/// new names through it.
#[test]
fn an_overlay_upper_layer_changes_no_protected_directory() {
    let scenario = start(
        "as-ovl",
        "[[protect.file]]\npath = \"{dir}/prod\"\nname = \"prod\"\naccess = \"write\"\n",
        |dir| {
            std::fs::create_dir_all(dir.join("prod")).unwrap();
            std::fs::create_dir_all(dir.join("lower")).unwrap();
            std::fs::write(dir.join("prod/app.conf"), "port=1\n").unwrap();
        },
    );
    let dir = scenario.dir.clone();
    let mut attempt = 0;
    let mut through = |cgroup: &Path, op: &str, rest: &[&str]| {
        attempt += 1;
        let work = dir.join(format!("work{attempt}"));
        let merged = dir.join(format!("m{attempt}"));
        std::fs::create_dir_all(&work).unwrap();
        std::fs::create_dir_all(&merged).unwrap();
        let file = text(&merged.join("app.conf"));
        let new = text(&merged.join("new-file"));
        let mut args = vec![
            "private".to_owned(),
            "overlay-then".to_owned(),
            text(&dir.join("lower")),
            text(&dir.join("prod")),
            text(&work),
            text(&merged),
            op.to_owned(),
        ];
        for arg in rest {
            args.push(arg.replace("FILE", &file).replace("NEW", &new));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        scenario.tamper(cgroup, "in-ns", &args)
    };
    let attempts: Vec<(&str, Vec<&str>)> = vec![
        ("chattr", vec!["FILE", "+i"]),
        ("chattr-compat", vec!["FILE", "+i"]),
        ("utimes", vec!["FILE"]),
        ("setxattr", vec!["FILE", "trusted.gk", "x"]),
        ("append", vec!["FILE"]),
        ("mkfifo", vec!["NEW"]),
        ("unlink", vec!["FILE"]),
    ];
    let mut failures = Vec::new();
    for (op, rest) in &attempts {
        let got = through(&scenario.agents, op, rest);
        check(
            &mut failures,
            format!("root overlay upper=prod: {op} {rest:?}"),
            got,
            Outcome::Denied,
        );
        // Whatever passed, undo an immutable flag for the next attempt.
        let _ = scenario.tamper(
            &scenario.outside,
            "chattr",
            &[&text(&dir.join("prod/app.conf")), "-i"],
        );
    }
    // Control: from outside the chattr through the overlay works.
    let got = through(&scenario.outside, "chattr", &["FILE", "+i"]);
    let _ = scenario.tamper(
        &scenario.outside,
        "chattr",
        &[&text(&dir.join("prod/app.conf")), "-i"],
    );
    assert_eq!(got, Outcome::Ok, "control: chattr through the overlay");
    verdict(failures);
}

/// Deep trees below a read-protected directory, within the walk and deeper than it: the agent
/// makes them (writing is free under a read rule) and reads the file at the bottom.
#[test]
fn a_deep_tree_below_a_read_protected_directory_is_judged() {
    let scenario = start(
        "as-deep",
        "[[protect.file]]\npath = \"{dir}/vault\"\nname = \"vault\"\naccess = \"read\"\n",
        |dir| {
            std::fs::create_dir_all(dir.join("vault")).unwrap();
        },
    );
    let dir = scenario.dir.clone();
    let mut failures = Vec::new();
    for (who, user) in [("root", false), ("user", true)] {
        for depth in [20, 40, 70] {
            // Made by someone trusted (agents make no names there), read by the agent.
            let mut path = dir.join(format!("vault/{who}{depth}"));
            for _ in 0..depth {
                path.push("d");
            }
            std::fs::create_dir_all(&path).unwrap();
            path.push("f");
            std::fs::write(&path, "deep").unwrap();
            hand_to_user(&dir.join(format!("vault/{who}{depth}")));
            let root = text(&path);
            let got = as_who(&scenario, user, &scenario.agents, "read", &[&root]);
            check(
                &mut failures,
                format!("{who}: read {root} ({depth} deep)"),
                got,
                Outcome::Denied,
            );
        }
    }
    let root = text(&dir.join("vault/outside"));
    assert_eq!(
        scenario.tamper(&scenario.outside, "deep-read", &[&root, "40"]),
        Outcome::Ok
    );
    verdict(failures);
}
