//! An agent changes no mount the host or the daemon sees: nothing mounted, moved, remounted or
//! unmounted in the host's mount namespace, no bpffs or cgroup v1 anywhere, and no propagation
//! out of a namespace of its own. A container runtime's private namespace keeps working.

use std::{path::Path, process::Command};

use gatekeeper_tests::{
    Exec, Options, Outcome, Scenario, Stopped, Waiting, bin, hand_to_user, wait_for,
};
use serde_json::Value;

/// Waits until the journal holds a tamper attempt through `hook`; returns it.
fn journaled(scenario: &Scenario, hook: &str) -> Value {
    scenario.wait_journal("tamper_attempt", |event| event["hook"] == hook)
}

/// Waits for a refusal by `hook` of the mount hooks' reason `why` (their second detail word).
fn journaled_why(scenario: &Scenario, hook: &str, why: u64) -> Value {
    scenario.wait_journal("tamper_attempt", |event| {
        event["hook"] == hook && event["detail"][1] == why
    })
}

/// The second detail word of the mount hooks (gatekeeper_common::MountRefusal).
const HOST_NAMESPACE: u64 = 1;
const SHARED: u64 = 2;
const HOST_SUPERBLOCK: u64 = 3;
const FILESYSTEM: u64 = 5;
const MOUNT_POINT: u64 = 6;
const ABOVE_MOUNT_POINT: u64 = 7;
const MOUNTS_NOT_LOOKED: u64 = 8;

/// Whether something is mounted at `path` in the test's (the host's) mount namespace.
fn mounted(path: &Path) -> bool {
    let path = path.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|line| line.split(' ').nth(4) == Some(path.as_str()))
}

/// Runs a command of the host's, outside the agent cgroups, which must work.
fn host(program: &str, args: &[&str]) {
    let status = Command::new(program).args(args).status().unwrap();
    assert!(status.success(), "{program} {args:?}: {status}");
}

fn mkdirs(paths: &[&str]) {
    for path in paths {
        std::fs::create_dir_all(path).unwrap();
    }
}

/// Waits until the root agent renames `dir` (to `dir-moved`, then back from outside): the daemon
/// has looked at the mounts since the last change (until then agents rename no directory).
fn wait_until_agents_rename(scenario: &Scenario, what: &str, dir: &Path) {
    let (from, to) = (
        dir.display().to_string(),
        format!("{}-moved", dir.display()),
    );
    scenario.wait_for(what, || {
        let renamed = scenario.tamper(&scenario.agents, "rename", &[&from, &to]);
        (renamed == Outcome::Ok).then_some(())
    });
    std::fs::rename(&to, &from).unwrap();
}

/// Mounts an overlay at `at` of the lower layers `lower` (top first), the upper one and its
/// work directory, with `more` options (each after a comma).
fn mount_overlay(lower: &[&Path], upper: &Path, work: &Path, at: &Path, more: &str) {
    let lower: Vec<String> = lower.iter().map(|dir| dir.display().to_string()).collect();
    let options = format!(
        "lowerdir={},upperdir={},workdir={}{more}",
        lower.join(":"),
        upper.display(),
        work.display()
    );
    let at = at.display().to_string();
    host(
        "mount",
        &["-t", "overlay", "gk-overlay", "-o", &options, &at],
    );
}

/// Why `gatekeeper status --json` says agents rename no directory, if it does.
fn renames_refused(scenario: &Scenario) -> Option<String> {
    let output = scenario.gatekeeper(&["status", "--json"]);
    let data: Value = serde_json::from_slice(&output.stdout).expect("status --json is JSON");
    data["directory_renames_refused"]
        .as_str()
        .map(str::to_owned)
}

/// `gatekeeper status --json`, whatever its exit code: (enforcing, exit success).
fn status(scenario: &Scenario) -> (bool, bool) {
    let output = scenario.gatekeeper(&["status", "--json"]);
    let data: Value = serde_json::from_slice(&output.stdout).expect("status --json is JSON");
    (data["enforcing"] == true, output.status.success())
}

#[test]
fn agent_mounts_nothing_in_the_host_namespace() {
    let scenario = Scenario::start("mounts-host", Options::default());
    let (agents, outside) = (&scenario.agents, &scenario.outside);
    let dir = scenario.dir.display().to_string();
    let protected_dir = scenario.dir.join("protected").display().to_string();
    let pin_dir = scenario.pin_dir.display().to_string();
    let [src, a, b, cg, bpf, fs, tree, rm, pr] =
        ["src", "a", "b", "cg", "bpf", "fs", "tree", "rm", "pr"].map(|d| format!("{dir}/{d}"));
    mkdirs(&[
        &src,
        &a,
        &b,
        &cg,
        &bpf,
        &fs,
        &tree,
        &rm,
        &format!("{pr}/old"),
    ]);
    let tamper = |cgroup, op, args: &[&str]| scenario.tamper(cgroup, op, args);
    // The agent's refused attempt and the control mount name the same cgroup v1 hierarchy: the
    // refused one never made it (mount(2) in the host's namespace stops before any superblock).
    let v1 = "none,name=gkmounts";

    // Each attempt is denied to the agent and works from outside (then undone).
    let cases: [(&str, &[&str], &str); 6] = [
        ("mount", &["tmpfs", "tmp", &protected_dir], &protected_dir),
        ("mount", &["cgroup", "none", &cg, v1], &cg),
        ("mount", &["bpf", "bpf", &bpf], &bpf),
        ("fsmount", &["tmpfs", &fs], &fs),
        ("open-tree", &[&src, &tree], &tree),
        ("fsmount", &["bpf", &fs], &fs),
    ];
    for (op, args, target) in cases {
        assert_eq!(tamper(agents, op, args), Outcome::Denied, "{op} {args:?}");
        assert!(!mounted(Path::new(target)), "{op} {args:?} left a mount");
        assert_eq!(
            tamper(outside, op, args),
            Outcome::Ok,
            "control {op} {args:?}"
        );
        assert!(mounted(Path::new(target)), "control {op} {args:?}");
        assert_eq!(tamper(outside, "umount", &[target]), Outcome::Ok);
    }
    assert_eq!(
        scenario.agent_exec(),
        Exec::Denied,
        "the protected binary is still seen"
    );

    // Over the pin directory (the control for this one is in status_tells_when_pins_are_hidden).
    assert_eq!(tamper(agents, "bind", &[&src, &pin_dir]), Outcome::Denied);

    // Moving, unmounting and remounting what the host mounted.
    assert_eq!(tamper(outside, "mount", &["tmpfs", "tmp", &a]), Outcome::Ok);
    assert_eq!(tamper(agents, "move", &[&a, &b]), Outcome::Denied);
    assert_eq!(tamper(outside, "move", &[&a, &b]), Outcome::Ok);
    assert_eq!(tamper(agents, "umount", &[&b]), Outcome::Denied);
    assert_eq!(tamper(agents, "umount-lazy", &[&b]), Outcome::Denied);
    assert!(mounted(Path::new(&b)));
    assert_eq!(tamper(outside, "umount", &[&b]), Outcome::Ok);
    assert_eq!(
        tamper(outside, "mount", &["tmpfs", "tmp", &rm]),
        Outcome::Ok
    );
    assert_eq!(tamper(agents, "remount", &[&rm]), Outcome::Denied);
    assert_eq!(tamper(agents, "fspick-ro", &[&rm]), Outcome::Denied);
    assert_eq!(tamper(outside, "fspick-ro", &[&rm]), Outcome::Ok);
    assert_eq!(tamper(outside, "umount", &[&rm]), Outcome::Ok);

    // pivot_root from the initramfs fails for everyone (EINVAL); the agent is stopped first.
    let old = format!("{pr}/old");
    assert_eq!(tamper(agents, "pivot-root", &[&pr, &old]), Outcome::Denied);
    assert_ne!(tamper(outside, "pivot-root", &[&pr, &old]), Outcome::Denied);

    for hook in [
        "mount",
        "move_mount",
        "mount_fs",
        "umount",
        "remount",
        "pivot_root",
    ] {
        let event = journaled(&scenario, hook);
        let why = event["detail"][1].as_u64();
        assert!(
            why == Some(HOST_NAMESPACE) || why == Some(FILESYSTEM),
            "{hook}: {event}"
        );
    }
}

#[test]
fn a_runtime_mounts_in_its_private_namespace() {
    let scenario = Scenario::start("mounts-runtime", Options::default());
    let (agents, outside) = (&scenario.agents, &scenario.outside);
    let dir = scenario.dir.display().to_string();
    let [rt, own, fs, tree, src, cg, bpf, hosts] =
        ["rt", "own", "fs", "tree", "src", "cg", "bpf", "hosts"].map(|d| format!("{dir}/{d}"));
    mkdirs(&[&rt, &own, &fs, &tree, &src, &cg, &bpf, &hosts]);
    let private = |cgroup, op: &str, args: &[&str]| {
        let mut all = vec!["private", op];
        all.extend_from_slice(args);
        scenario.tamper(cgroup, "in-ns", &all)
    };

    // What a runtime does: tmpfs, bind, pivot_root, lazy unmount of the old root, unmount.
    assert_eq!(private(agents, "runtime", &[&rt]), Outcome::Ok);
    assert_eq!(private(agents, "mount-remount", &[&own]), Outcome::Ok);
    assert_eq!(private(agents, "fsmount", &["tmpfs", &fs]), Outcome::Ok);
    assert_eq!(private(agents, "open-tree", &[&src, &tree]), Outcome::Ok);
    // Pseudo-terminals of its own, configured as a terminal program does (controlling
    // terminal, settings, window size): root and user agents alike.
    let pts = format!("{dir}/pts");
    mkdirs(&[&pts]);
    assert_eq!(private(agents, "pty", &[&pts]), Outcome::Ok);
    assert_eq!(
        scenario.tamper_as_user(agents, "in-ns", &["user", "pty", &pts]),
        Outcome::Ok
    );
    // None of it is seen from the host.
    for path in [&rt, &own, &fs, &tree, &pts] {
        assert!(!mounted(Path::new(path)), "{path}");
    }

    // Still never: bpffs and cgroup v1, by either mount API.
    assert_eq!(
        private(agents, "mount", &["bpf", "bpf", &bpf]),
        Outcome::Denied
    );
    assert_eq!(private(agents, "fsmount", &["bpf", &bpf]), Outcome::Denied);
    // A named hierarchy per attempt: one refused is torn down asynchronously, and mounting it
    // again meanwhile is EBUSY.
    let v1 = |name: &str| format!("none,name={name}");
    let mount_v1 =
        |cgroup, name: &str| private(cgroup, "mount", &["cgroup", "none", &cg, &v1(name)]);
    let fsmount_v1 = |cgroup, name: &str| {
        private(
            cgroup,
            "fsmount",
            &["cgroup", &cg, "none", &format!("name={name}")],
        )
    };
    assert_eq!(mount_v1(agents, "gkrt1"), Outcome::Denied);
    assert_eq!(fsmount_v1(agents, "gkrt2"), Outcome::Denied);
    assert_eq!(
        private(outside, "mount", &["bpf", "bpf", &bpf]),
        Outcome::Ok
    );
    assert_eq!(mount_v1(outside, "gkrt3"), Outcome::Ok);
    assert_eq!(fsmount_v1(outside, "gkrt4"), Outcome::Ok);
    let event = journaled(&scenario, "mount_fs");
    assert_eq!(event["detail"][1], FILESYSTEM, "{event}");

    // A superblock the host mounts is the host's, from any namespace.
    host("mount", &["-t", "tmpfs", "tmp", &hosts]);
    assert_eq!(private(agents, "remount", &[&hosts]), Outcome::Denied);
    assert_eq!(private(agents, "fspick-ro", &[&hosts]), Outcome::Denied);
    assert_eq!(private(outside, "remount", &[&hosts]), Outcome::Ok);
    host("umount", &[&hosts]);
    let event = journaled(&scenario, "remount");
    assert_eq!(event["detail"][1], HOST_SUPERBLOCK, "{event}");
}

#[test]
fn a_bare_namespace_does_not_reach_the_host() {
    let scenario = Scenario::start("mounts-bare", Options::default());
    let (agents, outside) = (&scenario.agents, &scenario.outside);
    let dir = scenario.dir.display().to_string();
    let shared = format!("{dir}/shared");
    let sub = format!("{shared}/sub");
    let bare = |cgroup, op: &str, args: &[&str]| {
        let mut all = vec!["bare", op];
        all.extend_from_slice(args);
        scenario.tamper(cgroup, "in-ns", &all)
    };
    // A shared mount of the host's, as systemd makes every mount.
    mkdirs(&[&shared]);
    host("mount", &["-t", "tmpfs", "tmp", &shared]);
    host("mount", &["--make-shared", &shared]);
    mkdirs(&[&sub]);

    // unshare(CLONE_NEWNS) alone: the copy of the shared mount is a peer of the host's.
    assert_eq!(
        bare(agents, "mount", &["tmpfs", "tmp", &sub]),
        Outcome::Denied
    );
    assert_eq!(bare(agents, "fsmount", &["tmpfs", &sub]), Outcome::Denied);
    assert_eq!(bare(agents, "bind", &[&dir, &sub]), Outcome::Denied);
    assert!(!mounted(Path::new(&sub)));
    let event = journaled(&scenario, "mount");
    assert_eq!(event["detail"][1], SHARED, "{event}");
    journaled(&scenario, "move_mount");
    // The control: the same from outside propagates into the host's namespace.
    assert_eq!(bare(outside, "mount", &["tmpfs", "tmp", &sub]), Outcome::Ok);
    assert!(mounted(Path::new(&sub)), "the mount propagated to the host");
    host("umount", &[&sub]);
    // Made private first, as runtimes do, the same mount stays in the agent's namespace.
    let private = ["private", "mount", "tmpfs", "tmp", sub.as_str()];
    assert_eq!(scenario.tamper(agents, "in-ns", &private), Outcome::Ok);
    assert!(!mounted(Path::new(&sub)));

    // A lazy unmount propagates from under every shared mount in the tree it takes away.
    let tree = format!("{dir}/tree");
    let peer = format!("{tree}/peer");
    let leaf = format!("{peer}/leaf");
    mkdirs(&[&tree]);
    host("mount", &["-t", "tmpfs", "tmp", &tree]);
    mkdirs(&[&peer]);
    host("mount", &["-t", "tmpfs", "tmp", &peer]);
    host("mount", &["--make-shared", &peer]);
    mkdirs(&[&leaf]);
    host("mount", &["-t", "tmpfs", "tmp", &leaf]);
    assert_eq!(bare(agents, "umount-lazy", &[&tree]), Outcome::Denied);
    assert!(mounted(Path::new(&leaf)));
    journaled_why(&scenario, "umount", SHARED);
    // The control: the same unmount from outside takes the host's leaf away.
    assert_eq!(bare(outside, "umount-lazy", &[&tree]), Outcome::Ok);
    assert!(
        !mounted(Path::new(&leaf)),
        "the unmount propagated to the host"
    );
    for path in [&peer, &tree, &shared] {
        host("umount", &["-l", path]);
    }
}

#[test]
fn an_unprivileged_user_namespace_mounts_no_bpffs_or_cgroup_v1() {
    let scenario = Scenario::start("mounts-user", Options::default());
    let (agents, outside) = (&scenario.agents, &scenario.outside);
    let dir = scenario.dir.display().to_string();
    let [tmp, bpf, cg] = ["tmp", "bpf", "cg"].map(|d| format!("{dir}/{d}"));
    mkdirs(&[&tmp, &bpf, &cg]);
    let user = |cgroup, op: &str, args: &[&str]| {
        let mut all = vec!["user", op];
        all.extend_from_slice(args);
        scenario.tamper_as_user(cgroup, "in-ns", &all)
    };
    // As an ordinary user the host's namespace is out of reach anyway (the kernel refuses).
    assert_eq!(
        scenario.tamper_as_user(agents, "mount", &["bpf", "bpf", &bpf]),
        Outcome::Denied
    );
    // The control: Debian's kernels let users make user namespaces.
    assert_eq!(user(outside, "mount", &["tmpfs", "tmp", &tmp]), Outcome::Ok);
    // Its own tmpfs in its own namespaces is the agent's too.
    assert_eq!(user(agents, "mount", &["tmpfs", "tmp", &tmp]), Outcome::Ok);
    // Denied whether the kernel refuses first (bpffs before 6.9, cgroup v1 in a user
    // namespace) or Gatekeeper does.
    let v1 = ["cgroup", "none", cg.as_str(), "none,name=gkuser"];
    assert_eq!(
        user(agents, "mount", &["bpf", "bpf", &bpf]),
        Outcome::Denied
    );
    assert_eq!(user(agents, "fsmount", &["bpf", &bpf]), Outcome::Denied);
    assert_eq!(user(agents, "mount", &v1), Outcome::Denied);
    // Where the kernel lets users mount bpffs (6.9 on), only Gatekeeper stops the agent.
    if user(outside, "mount", &["bpf", "bpf", &bpf]) == Outcome::Ok {
        scenario.wait_journal("tamper_attempt", |event| {
            event["hook"] == "mount_fs" && event["uid"] == 1001
        });
    }
}

#[test]
fn status_tells_when_pins_are_hidden() {
    let scenario = Scenario::start("mounts-status", Options::default());
    let pin_dir = scenario.pin_dir.display().to_string();
    let empty = scenario.dir.join("empty").display().to_string();
    mkdirs(&[&empty]);
    assert_eq!(status(&scenario), (true, true));
    // A confused admin hides the pins: with a bind mount, then with another bpffs.
    let hiders: [&[&str]; 2] = [
        &["--bind", &empty, &pin_dir],
        &["-t", "bpf", "bpf", &pin_dir],
    ];
    for hider in hiders {
        host("mount", hider);
        assert_eq!(status(&scenario), (false, false), "hidden by {hider:?}");
        // The programs enforce on; only what status can see changed.
        assert_eq!(scenario.agent_exec(), Exec::Denied);
        host("umount", &[&pin_dir]);
        assert_eq!(status(&scenario), (true, true), "uncovered after {hider:?}");
    }
}

/// mount_setattr(2) passes no LSM hook: it is refused at its capability check. In the host's
/// namespace an agent, root or not, changes no mount's flags (a read-only journal directory
/// would blind the daemon); in a private namespace it changes its own copies.
#[test]
fn agents_change_no_host_mount_flags() {
    let scenario = Scenario::start("mounts-setattr", Options::default());
    let (agents, outside) = (&scenario.agents, &scenario.outside);
    let target = format!("{}/setattr", scenario.dir.display());
    mkdirs(&[&target]);
    host("mount", &["-t", "tmpfs", "tmp", &target]);

    assert_eq!(
        scenario.tamper(agents, "mount-setattr", &[&target, "ro"]),
        Outcome::Denied
    );
    assert_eq!(
        scenario.tamper_as_user(agents, "mount-setattr", &[&target, "ro"]),
        Outcome::Denied
    );
    let event = journaled(&scenario, "mount_setattr");
    assert_eq!(event["detail"][1], HOST_NAMESPACE, "{event}");
    assert!(std::fs::write(format!("{target}/still-writable"), "x").is_ok());
    // Its own copy in a private namespace is the agent's.
    assert_eq!(
        scenario.tamper(
            agents,
            "in-ns",
            &["private", "mount-setattr", &target, "ro"]
        ),
        Outcome::Ok
    );
    assert!(std::fs::write(format!("{target}/host-copy-untouched"), "x").is_ok());

    // From outside it works.
    assert_eq!(
        scenario.tamper(outside, "mount-setattr", &[&target, "ro"]),
        Outcome::Ok
    );
    assert!(std::fs::write(format!("{target}/now-read-only"), "x").is_err());
    assert_eq!(
        scenario.tamper(outside, "mount-setattr", &[&target, "rw"]),
        Outcome::Ok
    );
    host("umount", &[&target]);
}

/// A network file system's kernel sockets pass no socket hook: agents mount none, even in a
/// private namespace, by mount(2) or by fsconfig, and the server never hears of them. The
/// guests load NFS (cargo xtask setup ships the module); a listener stands in for the server
/// and counts the kernel's connections. From outside, the same fsconfig mount reaches it.
#[test]
fn agents_mount_no_network_file_system() {
    assert!(
        std::fs::read_to_string("/proc/filesystems")
            .unwrap()
            .contains("\tnfs\n"),
        "the guest has NFS loaded"
    );
    let scenario = Scenario::start("mounts-netfs", Options::default());
    let (agents, outside) = (&scenario.agents, &scenario.outside);
    let target = format!("{}/netfs", scenario.dir.display());
    mkdirs(&[&target]);
    let server = std::net::TcpListener::bind("127.0.0.1:2049").unwrap();
    let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    {
        let connections = connections.clone();
        std::thread::spawn(move || {
            for stream in server.incoming() {
                connections.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                drop(stream);
            }
        });
    }
    let heard = || connections.load(std::sync::atomic::Ordering::SeqCst);
    let options = "vers=3,proto=tcp,mountproto=tcp,port=2049,mountport=2049,addr=127.0.0.1,\
                   mountaddr=127.0.0.1,nolock,soft,timeo=5,retrans=1";
    let mut fsmount = vec![
        "private",
        "fsmount",
        "nfs",
        &target,
        "source=127.0.0.1:/export",
    ];
    fsmount.extend(options.split(','));

    assert_eq!(
        scenario.tamper(agents, "in-ns", &fsmount),
        Outcome::Denied,
        "fsconfig"
    );
    for (fs_type, source) in [
        ("nfs", "127.0.0.1:/export"),
        ("nfs4", "127.0.0.1:/export"),
        ("cifs", "//127.0.0.1/share"),
        ("ceph", "127.0.0.1:/"),
    ] {
        let mount = ["private", "mount", fs_type, source, &target, options];
        assert_eq!(
            scenario.tamper(agents, "in-ns", &mount),
            Outcome::Denied,
            "{fs_type}"
        );
    }
    let event = journaled(&scenario, "mount_fs");
    assert_eq!(event["detail"][1], FILESYSTEM, "{event}");
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert_eq!(heard(), 0, "the server heard from an agent's mount");

    // From outside the same mount reaches the server (and then gives up, or is stopped here).
    let mut control = Command::new(bin("gk-helper"))
        .args(["tamper", &outside.display().to_string(), "in-ns"])
        .args(&fsmount)
        .spawn()
        .unwrap();
    wait_for("the server to hear from the outside mount", || {
        (heard() > 0).then_some(())
    });
    let _ = control.kill();
    let _ = control.wait();
}

/// A name the host mounts on is a mount point in an agent's own mount namespace too, where the
/// kernel refuses to rename or remove it; once the agent unmounts its copy there, the kernel
/// would let it, and that takes the host's mount away (or moves it, renamed). A root agent
/// renames nothing over such a name, renames none away and removes none (in a directory no rule
/// guards the names of); from outside the same rename over a bound rule's file works, and what
/// it shows at the rule's path waits for the daemon's look. (A user agent's copies are locked
/// to it: it unmounts none.)
#[test]
fn agents_take_no_host_mount_away_by_its_name() {
    let base = Path::new("/srv/gk-named-mounts");
    let (ruled, free) = (base.join("ruled"), base.join("free"));
    let (source, bound, renamed) = (base.join("source"), ruled.join("bound"), ruled.join("new"));
    let (free_bound, covered, new_file, new_dir) = (
        free.join("bound"),
        free.join("covered"),
        free.join("new-file"),
        free.join("new-dir"),
    );
    let text = |path: &Path| path.display().to_string();
    mkdirs(&[&text(&ruled), &text(&covered), &text(&new_dir)]);
    for (file, content) in [
        (&source, "bound\n"),
        (&bound, "below\n"),
        (&renamed, "new\n"),
        (&free_bound, "below\n"),
        (&new_file, "new\n"),
    ] {
        std::fs::write(file, content).unwrap();
    }
    for target in [&bound, &free_bound] {
        host("mount", &["--bind", &text(&source), &text(target)]);
    }
    host("mount", &["-t", "tmpfs", "gk-named", &text(&covered)]);
    let scenario = Scenario::start(
        "mount-names",
        Options {
            extra: format!(
                "[[protect.file]]\npath = \"{}\"\nname = \"bound\"\naccess = \"read\"\n",
                text(&bound)
            ),
            ..Options::default()
        },
    );
    let in_own_namespace = |cgroup: &Path, mount: &Path, op: &str, args: &[&str]| {
        let mount = text(mount);
        let mut all = vec!["private", "umount-then", &mount, op];
        all.extend_from_slice(args);
        scenario.tamper(cgroup, "in-ns", &all)
    };
    let agents = &scenario.agents;
    let attempts = [
        in_own_namespace(
            agents,
            &free_bound,
            "rename",
            &[&text(&new_file), &text(&free_bound)],
        ),
        in_own_namespace(agents, &free_bound, "unlink", &[&text(&free_bound)]),
        in_own_namespace(
            agents,
            &covered,
            "rename",
            &[&text(&new_dir), &text(&covered)],
        ),
        in_own_namespace(
            agents,
            &covered,
            "rename",
            &[&text(&covered), &text(&new_dir)],
        ),
        in_own_namespace(agents, &covered, "rmdir", &[&text(&covered)]),
    ];
    let still = (
        std::fs::read_to_string(&free_bound).unwrap(),
        mounted(&covered),
    );
    assert_eq!(
        attempts,
        [const { Outcome::Denied }; 5],
        "root agent: rename over a bound file, unlink it, rename over a mounted directory, \
         rename it away, remove it"
    );
    assert_eq!(still, ("bound\n".to_owned(), true), "the host's mounts");
    journaled_why(&scenario, "umount", MOUNT_POINT);

    // From outside (held, so that the moment lasts): the host's bind over the rule's file goes,
    // and the file renamed over it waits for the daemon's look. (Which way a mount went, the
    // kernel does not tell: until the look agents open nothing no rule covers, nor start a
    // program, so they are started before.)
    let read_later = |user: bool, cgroup: &Path| {
        Waiting::start(user, cgroup, "read-on-line", &[&text(&bound)]).unwrap()
    };
    let waiting = [
        read_later(false, agents),
        read_later(true, agents),
        read_later(true, &scenario.outside),
    ];
    let held = Stopped::new(scenario.daemon_pid());
    let control = in_own_namespace(
        &scenario.outside,
        &bound,
        "rename",
        &[&text(&renamed), &text(&bound)],
    );
    let shown = std::fs::read_to_string(&bound).unwrap();
    let reads = waiting.map(Waiting::outcome);
    drop(held);
    assert_eq!(control, Outcome::Ok, "outside: rename over the bound file");
    assert_eq!(shown, "new\n", "the host's bind is gone");
    assert_eq!(
        reads,
        [Outcome::Denied, Outcome::Denied, Outcome::Ok],
        "the renamed file at the rule's path (root agent, user agent, user outside)"
    );
    // Once the daemon has looked, the rule follows the new file: an agent's read asks.
    wait_for("a request for the renamed file", || {
        let read = Waiting::start(false, agents, "read-on-line", &[&text(&bound)]).ok()?;
        assert_eq!(read.outcome(), Outcome::Denied);
        (scenario.requests(true).into_iter())
            .any(|request| request["target"] == text(&bound).as_str())
            .then_some(())
    });
    for mount in [&free_bound, &covered] {
        let _ = Command::new("umount").arg(mount).status();
    }
    std::fs::remove_dir_all(base).unwrap();
}

/// Nor does an agent, root or not, rename a directory above a mount point of the host's, in the
/// host's namespace or its own (the directories are the same in every namespace): the kernel
/// refuses only a rename of the mount point itself, and the host's mounts below would move with
/// the directory. A directory with nothing mounted below stays the agents' to rename. A mount
/// made while the daemon is held leaves agents renaming no directory until it has looked, and an
/// unmount gives the directories above back once it has.
#[test]
fn agents_move_no_host_mount_by_a_directory_above() {
    let base = Path::new("/srv/gk-above");
    let (upper, middle) = (base.join("upper"), base.join("upper/middle"));
    let point = middle.join("point");
    let (user_dir, free) = (base.join("user"), base.join("free"));
    let (user_inner, user_free) = (user_dir.join("inner"), user_dir.join("free"));
    let user_point = user_inner.join("point");
    let (later, other) = (free.join("later"), free.join("other"));
    let later_point = later.join("point");
    let text = |path: &Path| path.display().to_string();
    let moved = |path: &Path| {
        let mut name = path.as_os_str().to_owned();
        name.push("-moved");
        std::path::PathBuf::from(name)
    };
    mkdirs(&[
        &text(&point),
        &text(&user_point),
        &text(&user_free),
        &text(&later_point),
        &text(&other),
    ]);
    hand_to_user(&user_dir);
    for mount in [&point, &user_point] {
        host("mount", &["-t", "tmpfs", "gk-above", &text(mount)]);
    }
    let scenario = Scenario::start("mounts-above", Options::default());
    let agents = &scenario.agents;
    // (the directory, where it is renamed to)
    let away = |path: &Path| (text(path), text(&moved(path)));
    let [
        upper_away,
        middle_away,
        inner_away,
        user_free_away,
        other_away,
        later_away,
    ] = [&upper, &middle, &user_inner, &user_free, &other, &later].map(|path| away(path));
    let run = |cgroup: &Path, (from, to): &(String, String)| {
        scenario.tamper(cgroup, "rename", &[from, to])
    };
    let run_as_user =
        |(from, to): &(String, String)| scenario.tamper_as_user(agents, "rename", &[from, to]);
    let back = |(from, to): &(String, String)| std::fs::rename(to, from).unwrap();

    // Once the daemon has read the mount table (until then agents rename no directory), a
    // directory with nothing mounted below is the root agent's.
    wait_until_agents_rename(&scenario, "the daemon's first look at the mounts", &free);
    let (from, to) = &middle_away;
    let attempts = [
        run(agents, &upper_away),
        run(agents, &middle_away),
        scenario.tamper(agents, "in-ns", &["private", "rename", from, to]),
        run_as_user(&inner_away),
    ];
    assert_eq!(
        attempts,
        [const { Outcome::Denied }; 4],
        "root agent: two directories above a host mount point, one in its own namespace; user \
         agent: its own directory above one"
    );
    assert!(
        mounted(&point) && mounted(&user_point),
        "the host's mounts stay"
    );
    journaled_why(&scenario, "umount", ABOVE_MOUNT_POINT);
    // Controls: a directory with nothing mounted below is the user agent's too; from outside,
    // the one above the mount point renames (the mount goes with it).
    assert_eq!(
        run_as_user(&user_free_away),
        Outcome::Ok,
        "user agent, nothing below"
    );
    back(&user_free_away);
    assert_eq!(run(&scenario.outside, &middle_away), Outcome::Ok, "outside");
    assert!(
        mounted(&moved(&middle).join("point")),
        "the mount went with it"
    );
    back(&middle_away);

    // Mounted while the daemon is held: until it has looked, agents rename no directory.
    let held = Stopped::new(scenario.daemon_pid());
    host("mount", &["-t", "tmpfs", "gk-above", &text(&later_point)]);
    let while_held = [run(agents, &later_away), run(agents, &other_away)];
    drop(held);
    assert_eq!(
        while_held,
        [Outcome::Denied, Outcome::Denied],
        "root agent, the daemon held: above the new mount, and elsewhere"
    );
    journaled_why(&scenario, "umount", MOUNTS_NOT_LOOKED);
    wait_until_agents_rename(&scenario, "the daemon's look at the new mount", &other);
    assert_eq!(
        run(agents, &later_away),
        Outcome::Denied,
        "above the new mount"
    );
    host("umount", &[&text(&later_point)]);
    wait_until_agents_rename(&scenario, "the daemon's look after the unmount", &later);
    for mount in [&point, &user_point] {
        let _ = Command::new("umount").arg(mount).status();
    }
    std::fs::remove_dir_all(base).unwrap();
}

/// Nor a mount named by a descriptor of a directory opened before something was mounted on it
/// (through `/proc/self/fd`), in a namespace of the agent's own: the kernel attaches it on top of
/// that mount, which the hook does not name and which may be shared with the host's. The same
/// from outside the agents mounts.
#[test]
fn agents_mount_nothing_named_past_a_mount() {
    let dir = Path::new("/srv/gk-mount-past");
    let text = dir.display().to_string();
    mkdirs(&[&text]);
    let scenario = Scenario::start("mount-past", Options::default());
    let attempt =
        |cgroup: &Path| scenario.tamper(cgroup, "in-ns", &["private", "mount-past", &text]);
    assert_eq!(attempt(&scenario.agents), Outcome::Denied, "root agent");
    let event = journaled(&scenario, "mount");
    assert_eq!(event["detail"][1], SHARED, "{event}");
    assert_eq!(attempt(&scenario.outside), Outcome::Ok, "outside");
    assert!(!mounted(dir), "each in a namespace of its own");
    std::fs::remove_dir(dir).unwrap();
}

/// The directories above a host mount point hold where a later mount covers them too (the
/// daemon finds them in their own file system, not by path): the root agent renames none in a
/// namespace of its own once it took its copy of the cover away, nor through a bind of their file
/// system made without the cover, and the user agent none through a descriptor it opened before
/// the cover came. The same from outside renames, and the host's mount goes with it.
#[test]
fn agents_move_no_host_mount_from_below_a_cover() {
    let base = Path::new("/srv/gk-covered");
    let (root_cov, user_dir, src, view) = (
        base.join("root/cov"),
        base.join("user"),
        base.join("src"),
        base.join("view"),
    );
    let (user_cov, src_cov, free) = (user_dir.join("cov"), src.join("cov"), base.join("free"));
    let text = |path: &Path| path.display().to_string();
    let covs = [&root_cov, &user_cov, &src_cov];
    for cov in covs {
        mkdirs(&[&text(&cov.join("b/m"))]);
    }
    mkdirs(&[&text(&view), &text(&free)]);
    hand_to_user(&user_dir);
    for cov in covs {
        host(
            "mount",
            &["-t", "tmpfs", "gk-covered", &text(&cov.join("b/m"))],
        );
    }
    // Without the mounts below (not --rbind): what a later mount covers in src, view shows.
    host("mount", &["--bind", &text(&src), &text(&view)]);
    // An unbindable file system (no copy of its mount can be had) with a mount below.
    let unbindable = base.join("unbindable");
    let unbindable_dir = unbindable.join("a/b");
    mkdirs(&[&text(&unbindable)]);
    host(
        "mount",
        &["-t", "tmpfs", "gk-unbindable", &text(&unbindable)],
    );
    mkdirs(&[&text(&unbindable_dir.join("m"))]);
    host(
        "mount",
        &[
            "-t",
            "tmpfs",
            "gk-covered",
            &text(&unbindable_dir.join("m")),
        ],
    );
    host("mount", &["--make-unbindable", &text(&unbindable)]);
    let scenario = Scenario::start("mounts-covered", Options::default());
    let (agents, outside) = (&scenario.agents, &scenario.outside);
    let [user_out, user_out_outside] = ["b-out", "b-out-outside"].map(|name| user_dir.join(name));
    let rename_later = |cgroup: &Path, to: &Path| {
        Waiting::start(
            true,
            cgroup,
            "rename-on-line",
            &[&text(&user_cov), "b", &text(to)],
        )
        .unwrap()
    };
    let user_renames = [
        rename_later(agents, &user_out),
        rename_later(outside, &user_out_outside),
    ];
    for cov in covs {
        host("mount", &["-t", "tmpfs", "gk-cover", &text(cov)]);
    }
    // Until the daemon has looked at the new mounts, agents rename no directory at all (nor
    // would they, had it failed to look at the unbindable one).
    wait_until_agents_rename(&scenario, "the daemon's look at the covers", &free);

    let root_out = base.join("root/b-out");
    let in_own_namespace = |cgroup: &Path| {
        let (cov, from, to) = (text(&root_cov), text(&root_cov.join("b")), text(&root_out));
        scenario.tamper(
            cgroup,
            "in-ns",
            &["private", "umount-then", &cov, "rename", &from, &to],
        )
    };
    let (view_from, view_to) = (text(&view.join("cov/b")), text(&view.join("b-out")));
    let through_view = |cgroup: &Path| scenario.tamper(cgroup, "rename", &[&view_from, &view_to]);
    let (unbindable_from, unbindable_to) = (text(&unbindable_dir), text(&unbindable.join("b")));
    let on_unbindable =
        |cgroup: &Path| scenario.tamper(cgroup, "rename", &[&unbindable_from, &unbindable_to]);
    let [user_rename, user_rename_outside] = user_renames;
    let attempts = [
        in_own_namespace(agents),
        through_view(agents),
        on_unbindable(agents),
        user_rename.outcome(),
    ];
    assert_eq!(
        attempts,
        [const { Outcome::Denied }; 4],
        "root agent: in its own namespace, through the bind, on the unbindable file system; user \
         agent: by a descriptor"
    );
    let points = covs.map(|cov| cov.join("b/m"));
    assert!(
        points.iter().all(|point| mounted(point)),
        "the host's mounts stay"
    );
    journaled_why(&scenario, "umount", ABOVE_MOUNT_POINT);

    let controls = [
        in_own_namespace(outside),
        through_view(outside),
        on_unbindable(outside),
        user_rename_outside.outcome(),
    ];
    assert_eq!(
        controls,
        [const { Outcome::Ok }; 4],
        "the same from outside"
    );
    let moved = [
        &root_out,
        &src.join("b-out"),
        &unbindable.join("b"),
        &user_out_outside,
    ]
    .map(|dir| dir.join("m"));
    assert!(
        moved.iter().all(|point| mounted(point)),
        "the mounts went along"
    );
    for mount in moved.iter().chain(covs).chain([&view, &unbindable]) {
        let _ = Command::new("umount").arg(mount).status();
    }
    std::fs::remove_dir_all(base).unwrap();
}

/// Nor through an overlay's layers: renaming the directory in a layer behind an overlay's
/// directory above a host mount point (the upper one, or a lower one where the upper has none)
/// moves the overlay's directory, and the mount, to the new name at its next lookup. Held for
/// the root agent and the user agent (on layers of its own); from outside the same moves the
/// host's mount.
#[test]
fn agents_move_no_host_mount_through_an_overlays_layers() {
    let base = Path::new("/srv/gk-overlaid");
    let [lower, upper, work, merged, free] =
        ["lower", "upper", "work", "merged", "free"].map(|name| base.join(name));
    let text = |path: &Path| path.display().to_string();
    mkdirs(&[
        &text(&lower.join("la/b/m")),
        &text(&upper),
        &text(&work),
        &text(&merged),
        &text(&free),
    ]);
    hand_to_user(&lower);
    mount_overlay(&[&lower], &upper, &work, &merged, "");
    mkdirs(&[&text(&merged.join("ua/b/m"))]);
    for point in [merged.join("ua/b/m"), merged.join("la/b/m")] {
        host("mount", &["-t", "tmpfs", "gk-overlaid", &text(&point)]);
    }
    let scenario = Scenario::start("mounts-overlaid", Options::default());
    let (agents, outside) = (&scenario.agents, &scenario.outside);
    wait_until_agents_rename(&scenario, "the daemon's look at the mounts", &free);
    let (upper_from, upper_to) = (text(&upper.join("ua")), text(&upper.join("uz")));
    let (lower_from, lower_to) = (text(&lower.join("la")), text(&lower.join("lz")));
    // The layer itself too: renamed, the overlay's options would name nothing.
    let (layer_from, layer_to) = (text(&upper), text(&base.join("upper-moved")));
    let attempts = [
        scenario.tamper(agents, "rename", &[&upper_from, &upper_to]),
        scenario.tamper(agents, "rename", &[&layer_from, &layer_to]),
        scenario.tamper_as_user(agents, "rename", &[&lower_from, &lower_to]),
    ];
    assert_eq!(
        attempts,
        [Outcome::Denied, Outcome::Denied, Outcome::Denied],
        "root agent: the upper layer's directory, the upper layer; user agent: its lower \
         layer's directory"
    );
    journaled_why(&scenario, "umount", ABOVE_MOUNT_POINT);
    // From outside: renamed in the layer, then looked up by the new name in the overlay.
    assert_eq!(
        scenario.tamper(outside, "rename", &[&upper_from, &upper_to]),
        Outcome::Ok
    );
    let _ = std::fs::metadata(merged.join("uz/b/m"));
    assert!(
        mounted(&merged.join("uz/b/m")),
        "the host's mount went with the layer's directory"
    );
    for point in [merged.join("uz/b/m"), merged.join("la/b/m"), merged] {
        let _ = Command::new("umount").arg(point).status();
    }
    std::fs::remove_dir_all(base).unwrap();
}

/// An overlay's layers are found where the overlay found them, not where their paths lead
/// later: a layer reached through a symlink whose directory its owner renamed away, and a layer
/// whose path the host covered since, keep their directories held.
#[test]
fn agents_move_no_host_mount_through_a_layer_moved_or_covered() {
    let base = Path::new("/srv/gk-layered");
    let user_dir = base.join("user");
    let (real, away, link) = (
        user_dir.join("real"),
        user_dir.join("away"),
        user_dir.join("link"),
    );
    let (lower, merged, free) = (base.join("lower"), base.join("merged"), base.join("free"));
    // A second lower layer, a directory in which the host covered before the overlay's mount:
    // the overlay, whose layers are copies without the mounts below, sees past the cover.
    let (lower2, sub) = (base.join("lower2"), base.join("lower2/sub"));
    let text = |path: &Path| path.display().to_string();
    mkdirs(&[
        &text(&real.join("upper")),
        &text(&base.join("work")),
        &text(&lower.join("la/b/m")),
        &text(&sub.join("b/m")),
        &text(&merged),
        &text(&free),
    ]);
    std::os::unix::fs::symlink("real", &link).unwrap();
    host("mount", &["-t", "tmpfs", "gk-layer-cover", &text(&sub)]);
    let (upper, work) = (link.join("upper"), base.join("work"));
    mount_overlay(&[&lower, &lower2], &upper, &work, &merged, "");
    mkdirs(&[&text(&merged.join("ua/b/m"))]);
    hand_to_user(&user_dir);
    for point in ["ua/b/m", "la/b/m", "sub/b/m"].map(|point| merged.join(point)) {
        host("mount", &["-t", "tmpfs", "gk-layered", &text(&point)]);
    }
    let scenario = Scenario::start("mounts-layered", Options::default());
    let (agents, outside) = (&scenario.agents, &scenario.outside);
    wait_until_agents_rename(&scenario, "the daemon's look at the mounts", &free);

    // The user agent's own directory, above its layer: not one the overlay's are behind.
    assert_eq!(
        scenario.tamper_as_user(agents, "rename", &[&text(&real), &text(&away)]),
        Outcome::Ok
    );
    // The host covers the lower layer's path with a look-alike.
    host("mount", &["-t", "tmpfs", "gk-layer-cover", &text(&lower)]);
    mkdirs(&[&text(&lower.join("la/b"))]);
    wait_until_agents_rename(&scenario, "the daemon's look at the cover", &free);

    let (upper_from, upper_to) = (text(&away.join("upper/ua")), text(&away.join("upper/uz")));
    let (lower_from, lower_to) = (text(&lower.join("la")), text(&lower.join("lz")));
    let below_the_cover = |cgroup: &Path| {
        scenario.tamper(
            cgroup,
            "in-ns",
            &[
                "private",
                "umount-then",
                &text(&lower),
                "rename",
                &lower_from,
                &lower_to,
            ],
        )
    };
    let (sub_from, sub_to) = (text(&sub.join("b")), text(&sub.join("z")));
    let in_the_layer_below_a_cover = |cgroup: &Path| {
        let (sub, rename) = (text(&sub), "rename");
        let args = ["private", "umount-then", &sub, rename, &sub_from, &sub_to];
        scenario.tamper(cgroup, "in-ns", &args)
    };
    let attempts = [
        scenario.tamper_as_user(agents, "rename", &[&upper_from, &upper_to]),
        below_the_cover(agents),
        in_the_layer_below_a_cover(agents),
    ];
    assert_eq!(
        attempts,
        [Outcome::Denied, Outcome::Denied, Outcome::Denied],
        "user agent: in its layer moved away from the symlink's target; root agent, in its own \
         namespace: in the layer below the host's cover, and below a cover in the layer"
    );
    journaled_why(&scenario, "umount", ABOVE_MOUNT_POINT);

    let controls = [
        scenario.tamper_as_user(outside, "rename", &[&upper_from, &upper_to]),
        below_the_cover(outside),
        in_the_layer_below_a_cover(outside),
    ];
    assert_eq!(
        controls,
        [const { Outcome::Ok }; 3],
        "the same from outside"
    );
    let moved = ["uz/b/m", "lz/b/m", "sub/z/m"].map(|point| merged.join(point));
    for point in &moved {
        let _ = std::fs::metadata(point);
    }
    assert!(
        moved.iter().all(|point| mounted(point)),
        "the host's mounts went with the layers' directories"
    );
    for point in moved.iter().chain([&merged, &lower, &sub]) {
        let _ = Command::new("umount").arg(point).status();
    }
    std::fs::remove_dir_all(base).unwrap();
}

/// `gatekeeper status` says when agents rename no directory at all, and why: here a host
/// overlay given relative layers, with a mount on it, whose directories cannot be found.
#[test]
fn status_tells_when_agents_rename_no_directory() {
    let base = Path::new("/srv/gk-relative");
    let (merged, free) = (base.join("merged"), base.join("free"));
    let text = |path: &Path| path.display().to_string();
    let point = merged.join("a/m");
    for dir in ["lower/a/m", "upper", "work", "merged", "free"] {
        mkdirs(&[&text(&base.join(dir))]);
    }
    let mounted_overlay = Command::new("mount")
        .current_dir(base)
        .args(["-t", "overlay", "gk-relative", "-o"])
        .args(["lowerdir=lower,upperdir=upper,workdir=work", "merged"])
        .status()
        .unwrap();
    assert!(mounted_overlay.success(), "{mounted_overlay}");
    let scenario = Scenario::start("mounts-relative", Options::default());
    let (agents, outside) = (&scenario.agents, &scenario.outside);
    let refused = || renames_refused(&scenario);
    // Nothing mounted on it: nothing in its layers to find.
    wait_until_agents_rename(&scenario, "the daemon's look at the mounts", &free);
    assert_eq!(refused(), None);

    host("mount", &["-t", "tmpfs", "gk-relative", &text(&point)]);
    let why = scenario.wait_for("status to say agents rename no directory", refused);
    assert!(why.contains("relative"), "{why}");
    let shown = scenario.gatekeeper(&["status"]);
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.contains(&format!("AGENTS RENAME NO DIRECTORY: {why}")),
        "{shown}"
    );
    let (from, to) = (text(&free), text(&base.join("free-moved")));
    assert_eq!(
        scenario.tamper(agents, "rename", &[&from, &to]),
        Outcome::Denied,
        "as status says"
    );
    assert_eq!(
        scenario.tamper(outside, "rename", &[&from, &to]),
        Outcome::Ok
    );
    std::fs::rename(&to, &from).unwrap();

    // The host unmounts it: agents rename again, and status says nothing.
    host("umount", &[&text(&point)]);
    wait_until_agents_rename(&scenario, "the daemon's look after the unmount", &free);
    assert_eq!(refused(), None);
    host("umount", &[&text(&merged)]);
    std::fs::remove_dir_all(base).unwrap();
}

/// An overlay on another overlay: the directories behind the outer one's are held in the inner
/// one's layers too, and a symlink loop an agent puts in its own layer, where the daemon looks
/// for such a directory, does not stop it looking. An overlay directory the host renamed with
/// `redirect_dir=on`: the lower one behind it, under its old name, is held, also where a
/// redirect on the way to an absolute one rewrote that name; and agents neither remove nor
/// change the redirecting directory.
#[test]
fn agents_move_no_host_mount_through_stacked_or_redirected_overlays() {
    let base = Path::new("/srv/gk-stacked");
    let dir = |name: &str| base.join(name);
    let text = |path: &Path| path.display().to_string();
    let (inner_lower, inner, outer, free) = (dir("il"), dir("im"), dir("om"), dir("free"));
    for name in [
        "il/la/b/m",
        "il/ka/b/m",
        "iu",
        "iw",
        "im",
        "ou",
        "ow",
        "om",
        "rl/la/b/m",
        "rl/ka/b/m",
        "ru",
        "rw",
        "rm",
        "al/r/t/b/m",
        "a1u",
        "a1w",
        "a1m",
        "a2u",
        "a2w",
        "a2m",
        "free",
    ] {
        mkdirs(&[&text(&dir(name))]);
    }
    let (redirected_lower, redirected) = (dir("rl"), dir("rm"));
    hand_to_user(&inner_lower);
    hand_to_user(&redirected_lower);
    hand_to_user(&dir("al"));
    let overlay = |lower: &str, upper: &str, work: &str, at: &Path, more: &str| {
        mount_overlay(&[&dir(lower)], &dir(upper), &dir(work), at, more);
    };
    overlay("il", "iu", "iw", &inner, "");
    overlay("im", "ou", "ow", &outer, "");
    overlay("rl", "ru", "rw", &redirected, ",redirect_dir=on");
    for (from, to) in [("la", "ra"), ("ka", "rk")] {
        std::fs::rename(redirected.join(from), redirected.join(to)).unwrap();
        host(
            "mount",
            &[
                "-t",
                "tmpfs",
                "gk-stacked",
                &text(&redirected.join(to).join("b/m")),
            ],
        );
    }
    hand_to_user(&dir("ru"));
    // Image layers made by renames: in the first overlay `r` renamed `s` (a1u/s: redirect `r`),
    // in the second, on the first's upper layer, `s/t` renamed `x` (a2u/x: redirect `/s/t`).
    // Looking `/s/t` up in a1u, the overlay meets `s`'s redirect: in `al` it looks up `r/t`.
    let (absolute_lower, absolute) = (dir("al"), dir("a2m"));
    overlay("al", "a1u", "a1w", &dir("a1m"), ",redirect_dir=on");
    std::fs::rename(dir("a1m/r"), dir("a1m/s")).unwrap();
    std::fs::write(dir("a1m/s/t/f"), "copied up").unwrap();
    host("umount", &[&text(&dir("a1m"))]);
    let two_lower: [&Path; 2] = [&dir("a1u"), &absolute_lower];
    let on = ",redirect_dir=on";
    mount_overlay(&two_lower, &dir("a2u"), &dir("a2w"), &absolute, on);
    std::fs::rename(absolute.join("s/t"), absolute.join("x")).unwrap();
    host(
        "mount",
        &["-t", "tmpfs", "gk-stacked", &text(&absolute.join("x/b/m"))],
    );
    // `ua` in the outer overlay's upper layer only: the daemon looks for it in the inner's too.
    mkdirs(&[&text(&outer.join("ua/b/m"))]);
    for point in ["la/b/m", "ka/b/m", "ua/b/m"] {
        host(
            "mount",
            &["-t", "tmpfs", "gk-stacked", &text(&outer.join(point))],
        );
    }
    let scenario = Scenario::start("mounts-stacked", Options::default());
    let (agents, outside) = (&scenario.agents, &scenario.outside);
    wait_until_agents_rename(&scenario, "the daemon's look at the mounts", &free);

    let looped = text(&inner_lower.join("ua"));
    assert_eq!(
        scenario.tamper_as_user(agents, "symlink", &["ua", &looped]),
        Outcome::Ok
    );
    host("mount", &["-t", "tmpfs", "gk-stacked", &text(&free)]);
    host("umount", &[&text(&free)]);
    wait_until_agents_rename(&scenario, "the daemon's look past the loop", &free);

    let [(la, lz), (ka, kz)] = [("la", "lz"), ("ka", "kz")]
        .map(|(from, to)| (inner_lower.join(from), inner_lower.join(to)));
    let [(lb, lz_b), (kb, kz_b)] = [("la", "ra"), ("ka", "rk")].map(|(old, _)| {
        (
            redirected_lower.join(old).join("b"),
            redirected_lower.join(old).join("z"),
        )
    });
    let (tb, tz) = (absolute_lower.join("r/t/b"), absolute_lower.join("r/t/z"));
    let (ra, rk) = (text(&dir("ru/ra")), text(&dir("ru/rk")));
    let redirect = ["trusted.overlay.redirect", "zz"];
    // `s`, on the way to the absolute redirect's directory, with the redirect to `r`.
    let (on_the_way, away) = (text(&dir("a1u/s")), text(&dir("a1u/s-away")));
    let attempts = [
        scenario.tamper_as_user(agents, "rename", &[&text(&la), &text(&lz)]),
        scenario.tamper(agents, "rename", &[&text(&ka), &text(&kz)]),
        scenario.tamper_as_user(agents, "rename", &[&text(&lb), &text(&lz_b)]),
        scenario.tamper(agents, "rename", &[&text(&kb), &text(&kz_b)]),
        scenario.tamper_as_user(agents, "rename", &[&text(&tb), &text(&tz)]),
        scenario.tamper_as_user(agents, "rmdir", &[&ra]),
        scenario.tamper(agents, "setxattr", &[&rk, redirect[0], redirect[1]]),
        scenario.tamper(agents, "rename", &[&on_the_way, &away]),
    ];
    assert_eq!(
        attempts,
        [const { Outcome::Denied }; 8],
        "user agent and root agent: in the inner overlay's lower layer; behind the redirected \
         directories, in the lower layer; user agent: behind a redirect met on the way to an \
         absolute one; the redirecting directory removed (user), its redirect changed (root), the \
         redirecting directory on the way to an absolute redirect renamed (root)"
    );
    journaled_why(&scenario, "umount", ABOVE_MOUNT_POINT);

    let controls = [
        scenario.tamper_as_user(outside, "rename", &[&text(&la), &text(&lz)]),
        scenario.tamper_as_user(outside, "rename", &[&text(&lb), &text(&lz_b)]),
        scenario.tamper_as_user(outside, "rename", &[&text(&tb), &text(&tz)]),
    ];
    assert_eq!(
        controls,
        [const { Outcome::Ok }; 3],
        "the same from outside"
    );
    let moved = outer.join("lz/b/m");
    let moved_behind = redirected.join("ra/z/m");
    let moved_absolute = absolute.join("x/z/m");
    for point in [&moved, &moved_behind, &moved_absolute] {
        let _ = std::fs::metadata(point);
    }
    assert!(
        [&moved, &moved_behind, &moved_absolute]
            .iter()
            .all(|point| mounted(point)),
        "the host's mounts went with the inner layer's directory, and the redirected ones'"
    );
    // Last, as they undo the redirects: removing and changing them works from outside.
    let undone = [
        scenario.tamper(outside, "setxattr", &[&rk, redirect[0], redirect[1]]),
        scenario.tamper_as_user(outside, "rmdir", &[&ra]),
        scenario.tamper(outside, "rename", &[&on_the_way, &away]),
    ];
    assert_eq!(undone, [const { Outcome::Ok }; 3], "the same from outside");
    for point in [
        moved_absolute,
        absolute,
        moved,
        moved_behind,
        redirected.join("rk/b/m"),
        redirected.clone(),
        outer.join("ka/b/m"),
        outer.join("ua/b/m"),
        outer,
        inner,
    ] {
        let _ = Command::new("umount").arg(point).status();
    }
    std::fs::remove_dir_all(base).unwrap();
}

/// A host mount over an overlay's layer made before the daemon first saw the overlay hides the
/// real layer from it: the overlay's directories above a mount point are behind nothing it
/// finds there, so agents rename no directory (and status says why) until the host takes the
/// cover away; then the layer is taken again, and held.
#[test]
fn a_layer_covered_before_the_daemon_starts_fails_its_look_closed() {
    let base = Path::new("/srv/gk-precovered");
    let [lower, upper, work, merged, free] =
        ["lower", "upper", "work", "merged", "free"].map(|name| base.join(name));
    let text = |path: &Path| path.display().to_string();
    for dir in [&lower.join("la/b/m"), &upper, &work, &merged, &free] {
        mkdirs(&[&text(dir)]);
    }
    mount_overlay(&[&lower], &upper, &work, &merged, "");
    host(
        "mount",
        &[
            "-t",
            "tmpfs",
            "gk-precovered",
            &text(&merged.join("la/b/m")),
        ],
    );
    host("mount", &["-t", "tmpfs", "gk-layer-cover", &text(&lower)]);
    let scenario = Scenario::start("mounts-precovered", Options::default());
    let (agents, outside) = (&scenario.agents, &scenario.outside);
    let why = scenario.wait_for("status to say agents rename no directory", || {
        renames_refused(&scenario)
    });
    assert!(why.contains("in none of its layers"), "{why}");
    let (from, to) = (text(&lower.join("la/b")), text(&lower.join("la/z")));
    let below_the_cover = scenario.tamper(
        agents,
        "in-ns",
        &[
            "private",
            "umount-then",
            &text(&lower),
            "rename",
            &from,
            &to,
        ],
    );
    assert_eq!(
        below_the_cover,
        Outcome::Denied,
        "root agent, in its own namespace"
    );
    journaled_why(&scenario, "umount", MOUNTS_NOT_LOOKED);

    host("umount", &[&text(&lower)]);
    wait_until_agents_rename(&scenario, "the daemon's look after the cover", &free);
    assert_eq!(renames_refused(&scenario), None);
    assert_eq!(
        scenario.tamper(agents, "rename", &[&from, &to]),
        Outcome::Denied,
        "root agent, the layer found again"
    );
    journaled_why(&scenario, "umount", ABOVE_MOUNT_POINT);
    assert_eq!(
        scenario.tamper(outside, "rename", &[&from, &to]),
        Outcome::Ok,
        "the same from outside"
    );
    let moved = merged.join("la/z/m");
    let _ = std::fs::metadata(&moved);
    assert!(
        mounted(&moved),
        "the host's mount went with the layer's directory"
    );
    for point in [&moved, &merged] {
        let _ = Command::new("umount").arg(point).status();
    }
    std::fs::remove_dir_all(base).unwrap();
}
