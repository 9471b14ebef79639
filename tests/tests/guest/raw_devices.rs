//! Agents reach storage only through files, and the host's hardware not at all: no SCSI generic,
//! bsg or NVMe device, no device-mapper control, no input device, no console or serial port,
//! and no file system on a device mounted, in any mount namespace, whether the node is the
//! host's or one the agent made; nor do they reconfigure a console or serial port they were
//! handed. The guests boot with a small SCSI disk in memory (scsi_debug) and device-mapper
//! loaded.

use std::{
    ffi::CString,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
};

use gatekeeper_tests::{Exec, Options, Outcome, Scenario};
use serde_json::Value;

fn journaled(scenario: &Scenario, hook: &str) -> Value {
    scenario.wait_journal("tamper_attempt", |event| event["hook"] == hook)
}

/// The first entry of a sysfs class directory (`/sys/class/scsi_generic`, ...), by name.
fn first_in(dir: &str) -> String {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|error| panic!("{dir}: {error} (are the guest's storage modules loaded?)"))
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("nothing in {dir}"))
}

/// (major, minor) of a sysfs device directory's `dev`.
fn numbers_of(sys: &str) -> (u32, u32) {
    let dev = std::fs::read_to_string(format!("{sys}/dev")).unwrap();
    let (major, minor) = dev.trim().split_once(':').unwrap();
    (major.parse().unwrap(), minor.parse().unwrap())
}

/// The major `/proc/devices` gives the character driver `name`.
fn char_major(name: &str) -> u32 {
    let devices = std::fs::read_to_string("/proc/devices").unwrap();
    devices
        .lines()
        .skip_while(|line| line.trim() != "Character devices:")
        .take_while(|line| !line.trim().is_empty())
        .find_map(|line| {
            let (major, driver) = line.trim().split_once(' ')?;
            (driver == name).then(|| major.parse().ok())?
        })
        .unwrap_or_else(|| panic!("no character driver {name} in /proc/devices"))
}

/// A major for local or experimental use (60-63) that no character driver has registered.
fn unregistered_major() -> u32 {
    let devices = std::fs::read_to_string("/proc/devices").unwrap();
    let registered: Vec<u32> = devices
        .lines()
        .skip_while(|line| line.trim() != "Character devices:")
        .take_while(|line| !line.trim().is_empty())
        .filter_map(|line| line.trim().split_once(' ')?.0.parse().ok())
        .collect();
    (60..=63)
        .find(|major| !registered.contains(major))
        .expect("a free local major")
}

/// A misc minor for local or experimental use (240-254) that no misc device has registered.
fn unregistered_misc_minor() -> u32 {
    let misc = std::fs::read_to_string("/proc/misc").unwrap();
    let registered: Vec<u32> = misc
        .lines()
        .filter_map(|line| line.trim().split_once(' ')?.0.parse().ok())
        .collect();
    (240..=254)
        .find(|minor| !registered.contains(minor))
        .expect("a free local misc minor")
}

/// A character device node `name` in the scenario's directory, open to everyone: one an agent
/// could make itself.
fn node(scenario: &Scenario, name: &str, (major, minor): (u32, u32)) -> String {
    let path = scenario.dir.join(name);
    let c_path = CString::new(path.display().to_string()).unwrap();
    // SAFETY: mknod and chmod on a NUL-terminated path.
    unsafe {
        assert_eq!(
            libc::mknod(
                c_path.as_ptr(),
                libc::S_IFCHR | 0o666,
                libc::makedev(major, minor)
            ),
            0,
            "mknod {major}:{minor}"
        );
        assert_eq!(libc::chmod(c_path.as_ptr(), 0o666), 0);
    }
    path.display().to_string()
}

#[test]
fn agents_reach_no_disk_past_its_files() {
    let scenario = Scenario::start("raw-storage", Options::default());
    let (agents, outside) = (&scenario.agents, &scenario.outside);

    // SCSI commands through the disk's SCSI generic device read (and would write) its sectors
    // with no block device opened: from outside the read works, from agents not.
    let sg_name = first_in("/sys/class/scsi_generic");
    let sg = format!("/dev/{sg_name}");
    let made_sg = node(
        &scenario,
        "sg",
        numbers_of(&format!("/sys/class/scsi_generic/{sg_name}")),
    );
    for path in [&sg, &made_sg] {
        assert_eq!(scenario.tamper(outside, "sg-read", &[path]), Outcome::Ok);
        assert_eq!(
            scenario.tamper(agents, "sg-read", &[path]),
            Outcome::Denied,
            "a root agent's SCSI read through {path}"
        );
    }
    assert_eq!(
        scenario.tamper_as_user(agents, "sg-read", &[&made_sg]),
        Outcome::Denied
    );

    // The same disk's bsg node: a major the kernel hands out at boot, read from /proc/devices.
    let bsg = format!("/dev/bsg/{}", first_in("/sys/class/bsg"));
    assert_eq!(scenario.tamper(outside, "open", &[&bsg]), Outcome::Ok);
    assert_eq!(scenario.tamper(agents, "open", &[&bsg]), Outcome::Denied);

    // device-mapper's control maps any disk's blocks into a device of its own (a mirror copies
    // them) with no block device opened by the caller.
    let control = "/dev/mapper/control";
    assert_eq!(
        scenario.tamper(outside, "dm-version", &[control]),
        Outcome::Ok
    );
    assert_eq!(
        scenario.tamper(agents, "dm-version", &[control]),
        Outcome::Denied
    );
    // btrfs's control, where a root agent would forget the devices of a host's btrfs (its next
    // mount fails).
    assert_eq!(
        scenario.tamper(outside, "open", &["/dev/btrfs-control"]),
        Outcome::Ok
    );
    assert_eq!(
        scenario.tamper(agents, "open", &["/dev/btrfs-control"]),
        Outcome::Denied
    );

    // Nodes of drivers the guest has no device for (NVMe's passthrough, built in), or has not
    // loaded (input's event devices, uinput), and of numbers no driver has registered (as one
    // the host loads next would have, until the daemon has looked): refused before the driver
    // opens, which from outside answers for itself (no device: not EPERM).
    for (name, numbers) in [
        ("nvme", (char_major("nvme"), 0)),
        ("nvme-generic", (char_major("nvme-generic"), 0)),
        ("event", (13, 64)),
        ("uinput", (10, 223)),
        ("unregistered", (unregistered_major(), 0)),
        ("unregistered-misc", (10, unregistered_misc_minor())),
    ] {
        let path = node(&scenario, name, numbers);
        assert!(
            matches!(scenario.tamper(outside, "open", &[&path]), Outcome::Errno(errno) if errno != libc::EPERM),
            "outside: {name} reaches its driver"
        );
        scenario.agents_denied("open", &[&path]);
    }
    journaled(&scenario, "raw_device");
    // Registered devices no rule refuses stay the agents' (dynamic majors and misc minors
    // among them: the rtc, fuse).
    for path in ["/dev/null", "/dev/urandom", "/dev/fuse", "/dev/rtc0"] {
        if std::path::Path::new(path).exists() {
            assert_eq!(
                scenario.tamper(agents, "open", &[path]),
                Outcome::Ok,
                "{path}"
            );
        }
    }
    for path in ["/dev/null", "/dev/urandom"] {
        assert_eq!(
            scenario.tamper_as_user(agents, "open", &[path]),
            Outcome::Ok,
            "{path}"
        );
    }
}

#[test]
fn agents_mount_no_file_system_on_a_device() {
    let scenario = Scenario::start("raw-mount", Options::default());
    let (agents, outside) = (&scenario.agents, &scenario.outside);
    let disk = std::fs::read_dir("/sys/block")
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .find(|name| name.starts_with("sd"))
        .map(|name| format!("/dev/{name}"))
        .expect("the guest's SCSI disk (scsi_debug)");
    let status = std::process::Command::new("mke2fs")
        .args(["-F", "-q", &disk])
        .status()
        .unwrap();
    assert!(status.success(), "mke2fs {disk}");
    let at = scenario.dir.join("mnt").display().to_string();
    std::fs::create_dir(&at).unwrap();
    let private = |cgroup, op: &str, args: &[&str]| {
        let mut all = vec!["private", op];
        all.extend_from_slice(args);
        scenario.tamper(cgroup, "in-ns", &all)
    };
    // In a mount namespace of its own, as a container's root: by mount(2) and by fsconfig.
    assert_eq!(
        private(agents, "mount", &["ext4", &disk, &at]),
        Outcome::Denied,
        "a root agent mounted {disk}"
    );
    let source = format!("source={disk}");
    assert_eq!(
        private(agents, "fsmount", &["ext4", &at, &source]),
        Outcome::Denied
    );
    // What a container needs still mounts.
    assert_eq!(
        private(agents, "mount", &["tmpfs", "tmp", &at]),
        Outcome::Ok
    );
    // Control: outside, the same mounts work.
    assert_eq!(
        private(outside, "mount", &["ext4", &disk, &at]),
        Outcome::Ok
    );
    assert_eq!(
        private(outside, "fsmount", &["ext4", &at, &source]),
        Outcome::Ok
    );
    let event = journaled(&scenario, "mount_fs");
    assert_eq!(event["detail"][1], 5, "refused as a file system: {event}");

    // Nor do agents freeze a file system the host mounts (every write to it waits for the
    // thaw), root or not; from outside it freezes and thaws.
    let host = scenario.dir.join("host").display().to_string();
    std::fs::create_dir(&host).unwrap();
    let status = std::process::Command::new("mount")
        .args(["-t", "ext4", &disk, &host])
        .status()
        .unwrap();
    assert!(status.success(), "mount {disk} {host}");
    scenario.agents_denied("fs-freeze", &[&host]);
    let control = scenario.tamper(outside, "fs-freeze", &[&host]);
    // Nor resize it: outside, ext4 answers for itself (it does not shrink: EINVAL).
    let resized = scenario.tamper(agents, "fs-resize", &[&host]);
    let resize_control = scenario.tamper(outside, "fs-resize", &[&host]);
    let _ = std::process::Command::new("umount").arg(&host).status();
    assert_eq!(control, Outcome::Ok);
    assert_eq!(resized, Outcome::Denied);
    assert_eq!(resize_control, Outcome::Errno(libc::EINVAL));
    journaled(&scenario, "device_control");
}

/// Runs a command of the guest's and says what it printed; panics if it fails.
fn ran(program: &str, args: &[&str]) -> String {
    let output = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("{program}: {error}"));
    assert!(output.status.success(), "{program} {args:?}: {output:?}");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// A file system the host made on a loop device over a sparse image in the scenario's
/// directory and mounted there at `at`; unmounted, detached and deleted when dropped.
struct LoopMount {
    at: String,
    device: String,
    image: std::path::PathBuf,
}

impl LoopMount {
    fn new(scenario: &Scenario, kind: &str, megabytes: u64, mkfs: &[&str]) -> Self {
        Self::named(scenario, kind, kind, megabytes, mkfs)
    }

    /// [`LoopMount::new`] at the scenario's directory's `name`.
    fn named(scenario: &Scenario, name: &str, kind: &str, megabytes: u64, mkfs: &[&str]) -> Self {
        let image = scenario.dir.join(format!("{name}.img"));
        std::fs::File::create(&image)
            .and_then(|file| file.set_len(megabytes << 20))
            .unwrap();
        // (Tests run one at a time: no other takes the free device first.)
        let device = ran("losetup", &["-f"]);
        ran("losetup", &[&device, &image.display().to_string()]);
        let at = scenario.dir.join(name).display().to_string();
        // From here on a failure detaches and deletes what was made.
        let made = Self { at, device, image };
        let mut args = mkfs.to_vec();
        args.push(&made.device);
        ran(&format!("mkfs.{kind}"), &args);
        std::fs::create_dir(&made.at).unwrap();
        ran("mount", &["-t", kind, &made.device, &made.at]);
        made
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.at).status();
        let _ = std::process::Command::new("losetup")
            .args(["-d", &self.device])
            .status();
        let _ = std::fs::remove_file(&self.image);
    }
}

#[test]
fn agents_use_no_btrfs_subvolume_of_the_host() {
    let scenario = Scenario::start("raw-btrfs", Options::default());
    let (agents, outside) = (&scenario.agents, &scenario.outside);
    // A btrfs the host mounts, with a subvolume of the host's holding a file.
    let btrfs = LoopMount::new(&scenario, "btrfs", 64, &["-q", "-M"]);
    let host = btrfs.at.clone();
    let volume = format!("{host}/volume");
    let made = scenario.tamper(outside, "btrfs", &[&host, "create", "volume"]);
    std::fs::write(format!("{volume}/secret"), "the host's").unwrap();
    // Agents snapshot no subvolume (a copy of every file in it, past the checks
    // of opening them), make or delete none, make none read-only, and search no tree (small
    // files' data is inline there); from outside each works.
    let mut outcomes = Vec::new();
    let mut try_all = |args: &[&str], at: &str| {
        let all = [&[at][..], args].concat();
        let root = scenario.tamper(agents, "btrfs", &all);
        let control = scenario.tamper(outside, "btrfs", &all);
        outcomes.push((all.join(" "), root, control));
    };
    // An ordinary user may make a subvolume where it may write (the rest asks ownership or
    // CAP_SYS_ADMIN, which the kernel refuses it anyway): not in an agent.
    let open = format!("{host}/open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    // Deep below the top (70 directories, more than the kernel walks up): with no directory rule
    // on any btrfs, agents' files there are judged by their own rules alone, not refused as
    // unplaced.
    let deep: String = (0..70).fold(host.clone(), |path, level| format!("{path}/d{level}"));
    std::fs::create_dir_all(&deep).unwrap();
    let deep_file = format!("{deep}/file");
    std::fs::write(&deep_file, "deep").unwrap();
    let deep_reads = [
        scenario.tamper(agents, "read", &[&deep_file]),
        scenario.tamper_as_user(agents, "read", &[&deep_file]),
        scenario.tamper(agents, "write", &[&format!("{deep}/made"), "agent"]),
        scenario.tamper(outside, "read", &[&deep_file]),
    ];
    let by_user = |cgroup, name| scenario.tamper_as_user(cgroup, "btrfs", &[&open, "create", name]);
    let users = [by_user(agents, "agent"), by_user(outside, "outside")];
    try_all(&["snapshot", "copy", &volume], &host);
    let copied = std::fs::read_to_string(format!("{host}/copy/secret"));
    try_all(&["create", "agents"], &host);
    try_all(&["search"], &host);
    try_all(&["destroy", "copy"], &host);
    try_all(&["destroy", "agents"], &host);
    try_all(&["readonly"], &volume);
    drop(btrfs);
    assert_eq!(made, Outcome::Ok);
    assert_eq!(
        copied.ok().as_deref(),
        Some("the host's"),
        "the control's snapshot"
    );
    for (args, root, control) in outcomes {
        assert_eq!(root, Outcome::Denied, "root agent: btrfs {args}");
        assert_eq!(control, Outcome::Ok, "outside: btrfs {args}");
    }
    assert_eq!(users, [Outcome::Denied, Outcome::Ok], "a user's subvolume");
    assert_eq!(deep_reads, [const { Outcome::Ok }; 4], "deep below the top");
    journaled(&scenario, "device_control");
}

/// Runs a command of the guest's and says whether it succeeded.
fn succeeded(command: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", command])
        .status()
        .is_ok_and(|status| status.success())
}

/// btrfs loaded after the daemon started (and not loaded at its start, which it then does not
/// refuse): a btrfs the host mounts over a rule's directory is followed, and its files are told
/// apart by subvolume from then on, a nested subvolume's too. Controls: the host reads them.
#[test]
fn a_btrfs_loaded_after_the_start_is_told_apart() {
    const BTRFS_MODULE: &str = "insmod /lib/modules/$(uname -r)/btrfs.ko";
    let mut scenario = Scenario::prepare("raw-btrfs-late", Options::default());
    let at = scenario.dir.join("m").display().to_string();
    let (secret, tree) = (format!("{at}/secret"), format!("{at}/tree"));
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(&secret, "before").unwrap();
    let rules = format!(
        "[[protect.file]]\npath = \"{secret}\"\nname = \"late secret\"\naccess = \"read\"\n\
         [[protect.file]]\npath = \"{tree}\"\nname = \"late tree\"\naccess = \"read\"\n"
    );
    let config = std::fs::read_to_string(&scenario.config).unwrap() + &rules;
    std::fs::write(&scenario.config, config).unwrap();
    // Loaded again however the test ends: the guest's other tests use it.
    let _loaded = gatekeeper_tests::Restore::new(|| {
        succeeded(&format!(
            "grep -q '^btrfs ' /proc/modules || {BTRFS_MODULE}"
        ));
    });
    assert!(
        succeeded("rmmod btrfs"),
        "btrfs unloaded (nothing may be mounted)"
    );
    scenario.start_daemon();
    assert!(succeeded(BTRFS_MODULE));
    let image = scenario.dir.join("late.img").display().to_string();
    std::fs::File::create(&image)
        .and_then(|file| file.set_len(64 << 20))
        .unwrap();
    let device = ran("losetup", &["-f"]);
    ran("losetup", &[&device, &image]);
    let _detached = gatekeeper_tests::Restore::new(|| {
        succeeded(&format!("umount {at}; losetup -d {device}"));
    });
    ran("mkfs.btrfs", &["-q", "-M", &device]);
    ran("mount", &["-t", "btrfs", &device, &at]);
    let host = std::path::Path::new("-");
    std::fs::create_dir(&tree).unwrap();
    assert_eq!(
        scenario.tamper(host, "btrfs", &[&tree, "create", "inner"]),
        Outcome::Ok
    );
    let inner = format!("{tree}/inner/file");
    std::fs::write(&inner, "on btrfs").unwrap();
    std::fs::write(&secret, "on btrfs").unwrap();
    // A file of no rule, the first of another subvolume, as `inner` is of its own: agents'.
    assert_eq!(
        scenario.tamper(host, "btrfs", &[&at, "create", "other"]),
        Outcome::Ok
    );
    let other = format!("{at}/other/file");
    std::fs::write(&other, "on btrfs").unwrap();
    gatekeeper_tests::wait_for("the daemon to follow both paths onto the btrfs", || {
        let followed = |path: &str| {
            let dev = std::fs::metadata(path).unwrap().dev();
            let kernel_dev = gatekeeper_daemon::policy::kernel_dev(dev);
            scenario.journal_events().iter().any(|event| {
                event["type"] == "protection_updated"
                    && event["path"] == path
                    && event["dev"] == u64::from(kernel_dev)
            })
        };
        (followed(&secret) && followed(&tree)).then_some(())
    });
    for path in [&secret, &inner] {
        let outcomes = [
            scenario.tamper(&scenario.agents, "read", &[path]),
            scenario.tamper_as_user(&scenario.agents, "read", &[path]),
            scenario.tamper(&scenario.outside, "read", &[path]),
        ];
        assert_eq!(
            outcomes,
            [Outcome::Denied, Outcome::Denied, Outcome::Ok],
            "{path}: root agent, user agent, outside"
        );
    }
    let others = [
        scenario.tamper(&scenario.agents, "read", &[&other]),
        scenario.tamper_as_user(&scenario.agents, "read", &[&other]),
    ];
    assert_eq!(
        others,
        [Outcome::Ok, Outcome::Ok],
        "{other}: root, user agent"
    );
    let log = scenario.daemon_log();
    assert!(log.contains("told apart by subvolume from now on"), "{log}");
}

/// On btrfs each subvolume numbers its files itself and `stat` reports a device number of the
/// subvolume's own; the kernel's checks key files the same way. A directory rule covers a
/// nested subvolume below it, an exec rule its binary, and files of other subvolumes with the
/// same inode numbers are not taken for them; a file system mounted below the directory rule
/// is the rule's before the daemon sees it. Controls: the host reads, runs and writes them all.
#[test]
fn rules_hold_on_btrfs() {
    let mut scenario = Scenario::prepare("raw-btrfs-rule", Options::default());
    let btrfs = LoopMount::new(&scenario, "btrfs", 64, &["-q", "-M"]);
    let at = btrfs.at.clone();
    let host = std::path::Path::new("-");
    let data = format!("{at}/data");
    for (dir, volume) in [
        (&at, "data"),
        (&data, "inner"),
        (&at, "tools"),
        (&at, "other"),
    ] {
        assert_eq!(
            scenario.tamper(host, "btrfs", &[dir, "create", volume]),
            Outcome::Ok
        );
    }
    // The first file of each subvolume: one inode number, four device numbers.
    let (top, secret) = (format!("{data}/top"), format!("{data}/inner/secret"));
    let (tool, plain) = (format!("{at}/tools/tool"), format!("{at}/other/plain"));
    std::fs::write(&top, "the host's").unwrap();
    std::fs::write(&secret, "the host's").unwrap();
    let late = format!("{data}/inner/late");
    std::fs::create_dir(&late).unwrap();
    // Another btrfs, with no rule: a file deeper than the kernel walks up stays the agents'.
    let plain_btrfs = LoopMount::named(&scenario, "plain-btrfs", "btrfs", 64, &["-q", "-M"]);
    let deep: String = (0..70).fold(plain_btrfs.at.clone(), |path, level| {
        format!("{path}/d{level}")
    });
    std::fs::create_dir_all(&deep).unwrap();
    let deep = format!("{deep}/file");
    std::fs::write(&deep, "deep").unwrap();
    // A subvolume of it with a file, for a mount below a protected directory of the root file
    // system (at the end).
    assert_eq!(
        scenario.tamper(host, "btrfs", &[&plain_btrfs.at, "create", "sub"]),
        Outcome::Ok
    );
    let sub_file = "file";
    std::fs::write(format!("{}/sub/{sub_file}", plain_btrfs.at), "the host's").unwrap();
    let ruled = "/srv/gk-raw-btrfs-ruled";
    std::fs::create_dir_all(ruled).unwrap();
    for program in [&tool, &plain] {
        std::fs::copy(gatekeeper_tests::bin("gk-helper"), program).unwrap();
    }
    let [top_meta, secret_meta, tool_meta, plain_meta] =
        [&top, &secret, &tool, &plain].map(|path| std::fs::metadata(path).unwrap());
    assert_eq!(top_meta.ino(), plain_meta.ino(), "the same inode number");
    assert_eq!(tool_meta.ino(), plain_meta.ino(), "the same inode number");
    assert_ne!(
        top_meta.dev(),
        secret_meta.dev(),
        "subvolumes' own device numbers"
    );
    assert_ne!(
        tool_meta.dev(),
        plain_meta.dev(),
        "subvolumes' own device numbers"
    );
    let rules = format!(
        "[[protect.file]]\npath = \"{data}\"\nname = \"on btrfs\"\naccess = \"any\"\n\
         [[protect.exec]]\npath = \"{tool}\"\nname = \"tool on btrfs\"\n\
         [[protect.file]]\npath = \"{ruled}\"\nname = \"above btrfs\"\naccess = \"any\"\n"
    );
    let config = std::fs::read_to_string(&scenario.config).unwrap() + &rules;
    std::fs::write(&scenario.config, config).unwrap();
    scenario.start_daemon();
    let (agents, outside) = (&scenario.agents, &scenario.outside);
    let deep_reads = [
        scenario.tamper(agents, "read", &[&deep]),
        scenario.tamper_as_user(agents, "read", &[&deep]),
    ];
    let reads = [&top, &secret, &plain].map(|path| {
        (
            path.clone(),
            scenario.tamper(agents, "read", &[path]),
            scenario.tamper_as_user(agents, "read", &[path]),
            scenario.tamper(outside, "read", &[path]),
        )
    });
    let execs = [&tool, &plain].map(|program| {
        let program = std::path::Path::new(program);
        (
            scenario.exec_in(agents, program),
            scenario.exec_in(outside, program),
        )
    });
    assert_eq!(
        deep_reads,
        [Outcome::Ok, Outcome::Ok],
        "agents read a deep file on a btrfs with no rule (root, user)"
    );
    let [top_read, secret_read, plain_read] = reads;
    for (path, root, user, control) in [top_read, secret_read] {
        assert_eq!(
            (root, user),
            (Outcome::Denied, Outcome::Denied),
            "agents read {path}"
        );
        assert_eq!(control, Outcome::Ok, "the host reads {path}");
    }
    let (path, root, user, control) = plain_read;
    assert_eq!(
        (root, user, control),
        (Outcome::Ok, Outcome::Ok, Outcome::Ok),
        "{path}"
    );
    assert_eq!(
        execs,
        [(Exec::Denied, Exec::Ran), (Exec::Ran, Exec::Ran)],
        "{tool}, {plain}"
    );
    // A file system the host mounts in the nested subvolume while the daemon is held up: the
    // kernel finds the directory rule above its mount point itself (the daemon would guard it
    // once it saw it).
    let held = gatekeeper_tests::Stopped::new(scenario.daemon_pid());
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "gk-btrfs-late", &late])
        .status()
        .unwrap();
    assert!(mounted.success());
    std::fs::set_permissions(&late, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let planted = |who: &str| format!("{late}/planted-{who}");
    let writes = [
        scenario.tamper(agents, "write", &[&planted("root"), "agent"]),
        scenario.tamper_as_user(agents, "write", &[&planted("user"), "agent"]),
        scenario.tamper_as_user(outside, "write", &[&planted("outside"), "host"]),
    ];
    drop(held);
    let _ = std::process::Command::new("umount").arg(&late).status();
    assert_eq!(
        writes,
        [Outcome::Denied, Outcome::Denied, Outcome::Ok],
        "writes below the mount (root agent, user agent, user outside)"
    );
    let nested = gatekeeper_tests::wait_for("a request for the nested subvolume's file", || {
        scenario
            .requests(true)
            .into_iter()
            .find(|request| request["kind"] == "file" && request["target"] == secret.as_str())
    });
    assert_eq!(nested["rule"], "on btrfs");

    // The rule-less btrfs's subvolume mounted below a protected directory of the root file
    // system: the daemon guards the mount with the directory's rule, and the kernel walks up
    // from the subvolume's files to it (a btrfs it did not walk on before). Until the daemon
    // has (held up here), the kernel refuses agents the files there itself.
    let below = format!("{ruled}/volume");
    std::fs::create_dir(&below).unwrap();
    let held = gatekeeper_tests::Stopped::new(scenario.daemon_pid());
    let subvol = ["-o", "subvol=sub", &plain_btrfs.device, &below];
    let mounted = std::process::Command::new("mount")
        .args(["-t", "btrfs"])
        .args(subvol)
        .status()
        .unwrap();
    assert!(mounted.success());
    let file = format!("{below}/{sub_file}");
    let agents_read = || {
        [
            scenario.tamper(agents, "read", &[&file]),
            scenario.tamper_as_user(agents, "read", &[&file]),
            scenario.tamper_as_user(outside, "read", &[&file]),
        ]
    };
    let before_the_guard = agents_read();
    drop(held);
    gatekeeper_tests::wait_for("the daemon guards the subvolume's mount", || {
        let log = scenario.daemon_log();
        log.lines()
            .any(|line| line.contains("guarding a mount") && line.contains(&below))
            .then_some(())
    });
    let after_the_guard = agents_read();
    let expected = [Outcome::Denied, Outcome::Denied, Outcome::Ok];
    assert_eq!(
        before_the_guard, expected,
        "{file} before the daemon guards the mount (root agent, user agent, user outside)"
    );
    assert_eq!(
        after_the_guard, expected,
        "{file} once guarded (root agent, user agent, user outside)"
    );
    assert_eq!(scenario.wait_request_for(&file)["rule"], "above btrfs");
    let _ = std::process::Command::new("umount").arg(&below).status();
    std::fs::remove_dir_all(ruled).unwrap();
    drop(btrfs);
}

#[test]
fn agents_reach_no_xfs_file_by_handle() {
    let scenario = Scenario::start("raw-xfs", Options::default());
    // An xfs the host mounts (mkfs.xfs makes none under 300 MB; the image is sparse, its 64 MB
    // log aside), with a file of the host's.
    let xfs = LoopMount::new(&scenario, "xfs", 300, &["-q"]);
    let file = format!("{}/file", xfs.at);
    std::fs::write(&file, "the host's").unwrap();
    // A root agent opens no file by its handle (past the names on its paths, as with
    // open_by_handle_at), nor sets an extended attribute by it (which passes no xattr hook: an
    // ACL or a security attribute of any file there); from outside both work. (The kernel
    // asks CAP_SYS_ADMIN of both: a user agent is refused either way.)
    let mut outcomes = Vec::new();
    for op in ["open", "attr"] {
        outcomes.push((
            op,
            scenario.tamper(&scenario.agents, "xfs-handle", &[&file, op]),
            scenario.tamper(&scenario.outside, "xfs-handle", &[&file, op]),
        ));
    }
    drop(xfs);
    for (op, agent, control) in outcomes {
        assert_eq!(agent, Outcome::Denied, "agent: {op}");
        assert_eq!(control, Outcome::Ok, "outside: {op}");
    }
    journaled(&scenario, "device_control");
}

/// An encryption key (fscrypt, v2) added for the file system of `dir` by this process (outside
/// the agents): its identifier, in hex.
fn add_encryption_key(dir: &str) -> String {
    const ADD_KEY: libc::c_ulong = 0xc050_6617;
    // `struct fscrypt_add_key_arg`: the key's specifier (type 2, an identifier, which the
    // kernel writes at 8..24), raw size, key id, reserved; then the raw key.
    let mut arg = [0u8; 80 + 64];
    arg[0] = 2;
    arg[40] = 64;
    arg[80..].fill(0x42);
    let file = std::fs::File::open(dir).unwrap();
    // SAFETY: the argument outlives the call, on a descriptor that stays open through it.
    let added = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            ADD_KEY,
            arg.as_mut_ptr(),
        )
    };
    assert_eq!(added, 0, "add key: {}", std::io::Error::last_os_error());
    arg[8..24]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

#[test]
fn agents_neither_encrypt_nor_lock_files_of_the_host() {
    let scenario = Scenario::start("raw-fscrypt", Options::default());
    let (agents, outside) = (&scenario.agents, &scenario.outside);
    let ext4 = LoopMount::new(&scenario, "ext4", 32, &["-q", "-F", "-O", "encrypt"]);
    let empty = |name: &str| {
        let dir = format!("{}/{name}", ext4.at);
        std::fs::create_dir(&dir).unwrap();
        dir
    };
    // The host's encryption key: agents, root or not, encrypt no empty directory of the
    // host's with it (the host's later files there in a key an agent could then take away),
    // nor remove it from the host's users (their encrypted files locked). From outside both
    // work. (The kernel's own answers to an ordinary user differ: not the owner, EACCES; no
    // claim on the key, ENOKEY.)
    let key = add_encryption_key(&ext4.at);
    let (first, second) = (empty("first"), empty("second"));
    let fscrypt = |cgroup, dir: &str, op| scenario.tamper(cgroup, "fscrypt", &[dir, op, &key]);
    let as_user = |dir: &str, op| scenario.tamper_as_user(agents, "fscrypt", &[dir, op, &key]);
    let outcomes = [
        fscrypt(agents, &first, "policy"),
        as_user(&first, "policy"),
        fscrypt(agents, &ext4.at, "remove"),
        fscrypt(agents, &ext4.at, "remove-own"),
        as_user(&ext4.at, "remove-own"),
    ];
    let mut controls = vec![
        fscrypt(outside, &second, "policy"),
        fscrypt(outside, &ext4.at, "remove-own"),
    ];
    assert_eq!(add_encryption_key(&ext4.at), key);
    controls.push(fscrypt(outside, &ext4.at, "remove"));
    drop(ext4);
    assert_eq!(outcomes, [const { Outcome::Denied }; 5]);
    assert_eq!(controls, [Outcome::Ok, Outcome::Ok, Outcome::Ok]);
    journaled(&scenario, "device_control");
}

#[test]
fn agents_use_no_console_or_serial_port_of_the_host() {
    let scenario = Scenario::start("raw-console", Options::default());
    let (agents, outside) = (&scenario.agents, &scenario.outside);
    // A virtual console, a serial port the guest does not use, the console: where an operator
    // types. Opened from outside, by agents not, nor through nodes they made.
    for (path, numbers) in [
        ("/dev/tty5", (4, 5)),
        ("/dev/ttyS1", (4, 65)),
        ("/dev/console", (5, 1)),
    ] {
        assert_eq!(scenario.tamper(outside, "open", &[path]), Outcome::Ok);
        assert_eq!(
            scenario.tamper(agents, "open", &[path]),
            Outcome::Denied,
            "{path}"
        );
        let made = node(&scenario, &path.replace('/', "-"), numbers);
        scenario.agents_denied("open", &[&made]);
    }
    journaled(&scenario, "raw_device");
    // Handed one, as an agent started from a console is: its keymap (shared by every console,
    // so a key the operator presses would type the agent's text), the console shown, a serial
    // port's settings (its I/O address), a terminal's settings and line discipline (which
    // could cut the host's input) stay as they are. Each is written back as it reads.
    for (path, what) in [
        ("/dev/tty5", "keymap"),
        ("/dev/tty5", "activate"),
        ("/dev/ttyS1", "serial"),
        ("/dev/tty5", "unlock"),
        // A serial port without a carrier hangs up: these on a virtual console.
        ("/dev/tty5", "termios"),
        ("/dev/tty5", "discipline"),
    ] {
        assert_eq!(
            scenario.tamper_holding(outside, path, "vt-ioctl", &[what]),
            Outcome::Ok,
            "outside: {what}"
        );
        assert_eq!(
            scenario.tamper_holding(agents, path, "vt-ioctl", &[what]),
            Outcome::Denied,
            "a root agent's {what} on {path}"
        );
    }
    journaled(&scenario, "device_control");
    // What programs ask of their terminal still answers there, and a terminal's settings on a
    // file that is none answer for themselves (not a terminal: ENOTTY, not EPERM).
    assert_eq!(
        scenario.tamper_holding(agents, "/dev/tty5", "vt-ioctl", &["query"]),
        Outcome::Ok
    );
    // Nor through /dev/tty, when the console is the agent's controlling terminal.
    let controlling = |cgroup: &std::path::Path, op| {
        let cgroup = cgroup.display().to_string();
        gatekeeper_tests::helper_outcome(&["controlling", "/dev/tty5", &cgroup, op])
    };
    assert_eq!(controlling(outside, "devtty-termios"), Outcome::Ok);
    assert_eq!(controlling(agents, "devtty-termios"), Outcome::Denied);
    assert_eq!(
        scenario.tamper_holding(agents, "/dev/null", "vt-ioctl", &["termios"]),
        Outcome::Errno(libc::ENOTTY)
    );
    // Nor does a root agent hang it up by vhangup(2), which asks CAP_SYS_TTY_CONFIG alone
    // (refused as `device_control`, with the capability's number). From outside it hangs up.
    assert_eq!(controlling(agents, "vhangup"), Outcome::Denied);
    scenario.wait_journal("tamper_attempt", |event| {
        event["hook"] == "device_control" && event["detail"][0] == 26
    });
    assert_eq!(controlling(outside, "vhangup"), Outcome::Ok);
}
