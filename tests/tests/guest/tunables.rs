//! No agent sets a kernel tunable that acts on the whole host (sysctls outside a network
//! namespace of its own, sysfs, cgroup v1 files), nor has the kernel load a module for it.

use std::{path::Path, process::Command};

use gatekeeper_tests::{Options, Outcome, Scenario};

fn journaled(scenario: &Scenario, hook: &str) {
    scenario.wait_journal("tamper_attempt", |event| event["hook"] == hook);
}

/// Host-wide tunables, each written back with the value it has: denied to agents, root or not
/// (an ordinary user could not open most of them anyway), and working from outside.
#[test]
fn agent_cannot_set_host_tunables() {
    let scenario = Scenario::start("tunables", Options::default());
    let sysfs = [
        "/sys/kernel/uevent_helper",
        "/sys/module/printk/parameters/time",
    ]
    .into_iter()
    .find(|path| Path::new(path).exists())
    .expect("a writable sysfs file");
    let tunables = [
        "/proc/sys/kernel/core_pattern",
        "/proc/sys/kernel/modprobe",
        "/proc/sys/net/ipv4/ip_forward",
        sysfs,
    ];
    for file in tunables {
        assert_eq!(
            scenario.tamper(&scenario.agents, "rewrite", &[file]),
            Outcome::Denied,
            "{file}"
        );
    }
    journaled(&scenario, "sysctl_write");
    journaled(&scenario, "kernel_fs_write");
    // sysrq-trigger acts on the whole host too ("h" only prints the help).
    assert_eq!(
        scenario.tamper(&scenario.agents, "write", &["/proc/sysrq-trigger", "h"]),
        Outcome::Denied
    );
    for file in tunables {
        assert_eq!(
            scenario.tamper(&scenario.outside, "rewrite", &[file]),
            Outcome::Ok,
            "{file} from outside"
        );
    }
    assert_eq!(
        scenario.tamper(&scenario.outside, "write", &["/proc/sysrq-trigger", "h"]),
        Outcome::Ok
    );
    // Nor the kernel's log: its console messages turned on or off or their level set
    // (syslog(2), here to what they are), lines written into it that read as the kernel's
    // (/dev/kmsg). Reading it stays theirs.
    for how in ["level", "on"] {
        assert_eq!(
            scenario.tamper(&scenario.agents, "syslog", &[how]),
            Outcome::Denied,
            "root agent: syslog {how}"
        );
        // CAP_SYSLOG: the kernel asks it before the hook.
        scenario.user_refused_anyway("syslog", &[how]);
        assert_eq!(
            scenario.tamper(&scenario.outside, "syslog", &[how]),
            Outcome::Ok,
            "outside: syslog {how}"
        );
    }
    let line = ["/dev/kmsg", "<0>gatekeeper test: a kernel emergency"];
    assert_eq!(
        scenario.tamper(&scenario.agents, "write", &line),
        Outcome::Denied
    );
    assert_eq!(
        scenario.tamper(&scenario.agents, "syslog", &["size"]),
        Outcome::Ok
    );
    assert_eq!(
        scenario.tamper(&scenario.agents, "open", &["/dev/kmsg"]),
        Outcome::Ok
    );
    let line = [
        "/dev/kmsg",
        "<6>gatekeeper test: a line from outside the agents",
    ];
    assert_eq!(
        scenario.tamper(&scenario.outside, "write", &line),
        Outcome::Ok
    );
    // Nor /proc/kmsg, whose reads take what they read from the host's log readers.
    assert_eq!(
        scenario.tamper(&scenario.agents, "open", &["/proc/kmsg"]),
        Outcome::Denied
    );
    assert_eq!(
        scenario.tamper(&scenario.outside, "open", &["/proc/kmsg"]),
        Outcome::Ok
    );
    journaled(&scenario, "kernel_log");
    // Nor the audit trail, where a user message's text (printed to the kernel's log with no
    // audit daemon running) is the sender's to choose.
    assert_eq!(
        scenario.tamper(&scenario.agents, "audit-user", &[]),
        Outcome::Denied
    );
    assert_eq!(
        scenario.tamper(&scenario.outside, "audit-user", &[]),
        Outcome::Ok
    );
    journaled(&scenario, "audit");

    // A network namespace inside a user namespace of the agent's own is the agent's to
    // configure; one the host's user namespace owns is not (see the network test below).
    let forward = "/proc/sys/net/ipv4/ip_forward";
    assert_eq!(
        scenario.tamper(
            &scenario.agents,
            "unshare-net-write",
            &[forward, "1", "own-userns"]
        ),
        Outcome::Ok
    );
    assert_eq!(
        scenario.tamper_as_user(
            &scenario.agents,
            "unshare-net-write",
            &[forward, "1", "own-userns"]
        ),
        Outcome::Ok
    );
    assert_eq!(
        scenario.tamper(
            &scenario.agents,
            "unshare-net-write",
            &[forward, "1", "own-netns"]
        ),
        Outcome::Denied
    );
    assert_eq!(
        scenario.tamper(
            &scenario.outside,
            "unshare-net-write",
            &[forward, "1", "own-netns"]
        ),
        Outcome::Ok
    );
}

#[test]
fn agent_cannot_write_cgroup_v1_files() {
    let scenario = Scenario::start("tunables-v1", Options::default());
    // A named hierarchy without controllers: every kernel allows one next to cgroup v2.
    let mount = scenario.dir.join("cgroup-v1");
    std::fs::create_dir_all(&mount).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "cgroup", "-o", "none,name=gktest", "cgroup"])
        .arg(&mount)
        .status()
        .unwrap();
    assert!(mounted.success());
    let release_agent = mount.join("release_agent").display().to_string();
    let outcome = scenario.tamper(&scenario.agents, "rewrite", &[&release_agent]);
    let control = scenario.tamper(&scenario.outside, "rewrite", &[&release_agent]);
    let _ = Command::new("umount").arg(&mount).status();
    assert_eq!(outcome, Outcome::Denied);
    assert_eq!(control, Outcome::Ok);
    journaled(&scenario, "cgroup_write");
}

/// Opening a character device no driver has registered, or mounting a file system type no
/// module has brought, asks the kernel to load one.
#[test]
fn agent_cannot_have_a_module_loaded() {
    let scenario = Scenario::start("tunables-modules", Options::default());
    // Major 120 is reserved for local use: no driver of the guest's has it.
    let node = scenario.dir.join("nodriver");
    let c_node = std::ffi::CString::new(node.display().to_string()).unwrap();
    // SAFETY: mknod on a NUL-terminated path.
    let made = unsafe {
        libc::mknod(
            c_node.as_ptr(),
            libc::S_IFCHR | 0o666,
            libc::makedev(120, 0),
        )
    };
    assert_eq!(made, 0);
    let node = node.display().to_string();
    // A file system type no module has (in a mount namespace of the caller's own).
    let dir = scenario.dir.join("nofs");
    std::fs::create_dir(&dir).unwrap();
    let dir = dir.display().to_string();
    let no_fs = |mode| [mode, "mount", "gatekeeper-nofs", "none", dir.as_str()];
    // Outside first, then something journaled from the agent: by then the outside calls would
    // have been journaled too, had they been taken for attempts.
    assert_ne!(
        scenario.tamper(&scenario.outside, "open", &[&node]),
        Outcome::Denied
    );
    assert_eq!(
        scenario.tamper(&scenario.outside, "in-ns", &no_fs("private")),
        Outcome::Errno(libc::ENODEV)
    );
    assert_eq!(
        scenario.tamper(&scenario.agents, "bpf", &["0"]),
        Outcome::Denied
    );
    journaled(&scenario, "bpf");
    let module_requests = || {
        scenario
            .journal_events()
            .iter()
            .filter(|event| event["type"] == "tamper_attempt" && event["hook"] == "module_request")
            .count()
    };
    assert_eq!(module_requests(), 0, "a request from outside was taken");
    for user in [false, true] {
        let (node_outcome, mount_outcome) = if user {
            (
                scenario.tamper_as_user(&scenario.agents, "open", &[&node]),
                scenario.tamper_as_user(&scenario.agents, "in-ns", &no_fs("user")),
            )
        } else {
            (
                scenario.tamper(&scenario.agents, "open", &[&node]),
                scenario.tamper(&scenario.agents, "in-ns", &no_fs("private")),
            )
        };
        // A device number no driver has registered is refused before the kernel looks for
        // one (raw_device); the file system's module may not be loaded (module_request), so
        // the type is not there.
        assert_eq!(node_outcome, Outcome::Denied, "user: {user}");
        assert_eq!(mount_outcome, Outcome::Errno(libc::ENODEV), "user: {user}");
    }
    journaled(&scenario, "raw_device");
    journaled(&scenario, "module_request");
}

/// A route or NAT rule would send an agent's connection somewhere else than the destination the
/// socket hooks judged: agents administer no network the host's user namespace owns, by
/// netlink or by ioctl, root or not. A network namespace inside a user namespace of the
/// agent's own is the agent's to configure.
#[test]
fn agent_cannot_reconfigure_the_host_network() {
    let scenario = Scenario::start("netadmin", Options::default());
    let address = "198.51.100.77";
    let mtu = std::fs::read_to_string("/sys/class/net/lo/mtu").unwrap();
    let mtu = mtu.trim();

    assert_eq!(
        scenario.tamper(&scenario.agents, "net-address", &["add", address]),
        Outcome::Denied
    );
    // CAP_NET_ADMIN, which the kernel asks an ordinary user for itself.
    scenario.user_refused_anyway("net-address", &["add", address]);
    assert_eq!(
        scenario.tamper(&scenario.agents, "loopback-mtu", &["1500"]),
        Outcome::Denied
    );
    // A network namespace made without a user namespace is owned by the host's one too.
    assert_eq!(
        scenario.tamper(
            &scenario.agents,
            "net-address",
            &["add", address, "own-netns"]
        ),
        Outcome::Denied
    );
    journaled(&scenario, "net_admin");

    // From outside, the same changes work (and are undone).
    assert_eq!(
        scenario.tamper(&scenario.outside, "net-address", &["add", address]),
        Outcome::Ok
    );
    assert_eq!(
        scenario.tamper(&scenario.outside, "net-address", &["del", address]),
        Outcome::Ok
    );
    assert_eq!(
        scenario.tamper(&scenario.outside, "loopback-mtu", &["1500"]),
        Outcome::Ok
    );
    assert_eq!(
        scenario.tamper(&scenario.outside, "loopback-mtu", &[mtu]),
        Outcome::Ok
    );
    assert_eq!(
        scenario.tamper(
            &scenario.outside,
            "net-address",
            &["add", address, "own-netns"]
        ),
        Outcome::Ok
    );

    for own in [
        scenario.tamper(
            &scenario.agents,
            "net-address",
            &["add", address, "own-userns"],
        ),
        scenario.tamper_as_user(
            &scenario.agents,
            "net-address",
            &["add", address, "own-userns"],
        ),
    ] {
        assert_eq!(
            own,
            Outcome::Ok,
            "an agent's own user and network namespace"
        );
    }
}

/// The ports below 1024 of the host's network are its services': an agent's DNS server on 53
/// (while the host's is down or killed, or beside it with SO_REUSEADDR) would answer host
/// programs and the daemon's own lookups. Root agents bind none in the host's network, nor in a
/// network namespace the host's user namespace owns; their own ports above, and any port in a
/// network of their own user namespace, stay theirs. An ordinary user gets none from the kernel.
#[test]
fn agents_take_no_host_port() {
    let scenario = Scenario::start("hostport", Options::default());
    // bind(2) answers a refused capability with EACCES, as it answers an ordinary user; the
    // journal tells Gatekeeper's refusal.
    for (address, place) in [
        ("0.0.0.0:53", "host"),
        ("127.0.0.53:53", "host"),
        ("0.0.0.0:22", "own-netns"),
    ] {
        assert_eq!(
            scenario.tamper(&scenario.agents, "bind-port", &[address, place]),
            Outcome::Errno(libc::EACCES),
            "{address} {place}"
        );
    }
    journaled(&scenario, "host_port");
    assert_eq!(
        scenario.tamper_as_user(&scenario.agents, "bind-port", &["0.0.0.0:53"]),
        Outcome::Errno(libc::EACCES)
    );
    for (address, place) in [("0.0.0.0:5353", "host"), ("0.0.0.0:53", "own-userns")] {
        assert_eq!(
            scenario.tamper(&scenario.agents, "bind-port", &[address, place]),
            Outcome::Ok,
            "{address} {place}"
        );
    }
    assert_eq!(
        scenario.tamper(&scenario.outside, "bind-port", &["0.0.0.0:53"]),
        Outcome::Ok
    );
}

/// The system clock is the whole host's: agents, root or not, set it neither by
/// `clock_settime` nor by `adjtimex` (each here sets it to what it is), and still read it,
/// also by `adjtimex` without changes. Nor do they get I/O ports (`ioperm`, `iopl`), through
/// which the real-time clock, PCI configuration space and every device's DMA are reached. From
/// outside each works. (An ordinary user gets neither from the kernel either.)
/// A key the test (root, outside the agents) adds to root's user keyring, as a host service
/// keeps a secret there: its serial number.
fn add_host_key(description: &str) -> i64 {
    let (kind, name) = (c"user", std::ffi::CString::new(description).unwrap());
    let payload = b"a secret of the host's";
    const KEY_SPEC_USER_KEYRING: libc::c_long = -4;
    // SAFETY: NUL-terminated strings and a payload that outlive the call.
    let id = unsafe {
        libc::syscall(
            libc::SYS_add_key,
            kind.as_ptr(),
            name.as_ptr(),
            payload.as_ptr(),
            payload.len(),
            KEY_SPEC_USER_KEYRING,
        )
    };
    assert!(id > 0, "add_key: {}", std::io::Error::last_os_error());
    id
}

/// The serial number of a keyring of this description, from /proc/keys (which shows this root
/// process every key).
fn keyring_serial(description: &str) -> Option<String> {
    let keys = std::fs::read_to_string("/proc/keys").expect("/proc/keys");
    keys.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (serial, kind, name) = (fields.first()?, fields.get(7)?, fields.get(8)?);
        (*kind == "keyring" && name.trim_end_matches(':') == description)
            .then(|| u64::from_str_radix(serial, 16).ok())?
            .map(|serial| serial.to_string())
    })
}

#[test]
fn agents_use_no_key_of_the_host() {
    let scenario = Scenario::start("keys", Options::default());
    // Root's user keyring is every root process's: a root agent would read what host
    // services keep there. From outside it reads. (keyctl's read answers ENOKEY to any
    // refusal of its first lookup, which asks the LSM before it reads: the journal says whose.)
    let id = add_host_key("gatekeeper-test-host-key").to_string();
    assert_eq!(
        scenario.tamper(&scenario.agents, "key-read", &[&id]),
        Outcome::Errno(libc::ENOKEY)
    );
    journaled(&scenario, "host_key");
    assert_ne!(
        scenario.tamper_as_user(&scenario.agents, "key-read", &[&id]),
        Outcome::Ok
    );
    assert_eq!(
        scenario.tamper(&scenario.outside, "key-read", &[&id]),
        Outcome::Ok
    );
    // A user's persistent keyring (where Kerberos keeps tickets) is the host's too, also when
    // an agent makes it first: agents plant no key there. Outside, one is added.
    scenario.agents_denied("key-persistent-add", &[]);
    assert_eq!(
        scenario.tamper(&scenario.outside, "key-persistent-add", &[]),
        Outcome::Ok
    );
    // The register of persistent keyrings, which the first agent's call made, is no agent's
    // either: root owns it, and a root agent would read every user's persistent keyring's
    // serial there. From outside it reads.
    let register = keyring_serial(".persistent_register").expect("the persistent register");
    assert_eq!(
        scenario.tamper(&scenario.agents, "key-read", &[&register]),
        Outcome::Errno(libc::ENOKEY)
    );
    assert_ne!(
        scenario.tamper_as_user(&scenario.agents, "key-read", &[&register]),
        Outcome::Ok
    );
    assert_eq!(
        scenario.tamper(&scenario.outside, "key-read", &[&register]),
        Outcome::Ok
    );
    // Nor does an agent hand a session keyring of its own to its parent, where the parent's
    // later keys would land.
    let agents = scenario.agents.display().to_string();
    let outside = scenario.outside.display().to_string();
    assert_eq!(
        gatekeeper_tests::helper_outcome(&["key-to-parent", &agents]),
        Outcome::Denied
    );
    assert_eq!(
        gatekeeper_tests::helper_outcome(&["key-to-parent", &outside]),
        Outcome::Ok
    );
    // Not even to a parent among the agents: the kernel looks the parent up again after the
    // check, when an agent parent that exited may have left its children to a host subreaper.
    assert_eq!(
        gatekeeper_tests::helper_outcome(&["key-to-parent", &agents, "parent-too"]),
        Outcome::Denied
    );
    // Keys the agents make are theirs, also keys (not keyrings) named as the shared keyrings
    // are.
    for description in ["gatekeeper-agent-key", ".agent", "_uid.0", "_persistent.0"] {
        assert_eq!(
            scenario.tamper(&scenario.agents, "key-own", &[description]),
            Outcome::Ok,
            "root agent: {description}"
        );
        assert_eq!(
            scenario.tamper_as_user(&scenario.agents, "key-own", &[description]),
            Outcome::Ok,
            "user agent: {description}"
        );
    }
    // A keyring named as the shared ones is no agent's, though the kernel makes it: nothing is
    // linked into it (refused at the search for a key to update first, EACCES). Outside, root
    // and the user link.
    for description in ["_uid.0", "_uid_ses.0", "_persistent.0"] {
        let made = [
            scenario.tamper(&scenario.agents, "key-own-ring", &[description, "made"]),
            scenario.tamper_as_user(&scenario.agents, "key-own-ring", &[description, "made"]),
        ];
        assert_eq!(
            made,
            [Outcome::Ok, Outcome::Ok],
            "agents make {description}"
        );
        let outcomes = [&scenario.agents, &scenario.outside].map(|cgroup| {
            [
                scenario.tamper(cgroup, "key-own-ring", &[description]),
                scenario.tamper_as_user(cgroup, "key-own-ring", &[description]),
            ]
        });
        assert_eq!(
            outcomes,
            [
                [Outcome::Errno(libc::EACCES), Outcome::Errno(libc::EACCES)],
                [Outcome::Ok, Outcome::Ok]
            ],
            "agents, outside (root, user): {description}"
        );
    }
}

#[test]
fn agents_set_no_clock_and_reach_no_hardware() {
    let scenario = Scenario::start("clock", Options::default());
    for (op, how) in [
        ("io-ports", "ioperm"),
        ("io-ports", "iopl"),
        ("set-clock", "settime"),
        ("set-clock", "adjtime"),
    ] {
        assert_eq!(
            scenario.tamper(&scenario.agents, op, &[how]),
            Outcome::Denied,
            "root agent: {op} {how}"
        );
        // CAP_SYS_RAWIO and CAP_SYS_TIME, which the kernel asks an ordinary user for itself.
        scenario.user_refused_anyway(op, &[how]);
        assert_eq!(
            scenario.tamper(&scenario.outside, op, &[how]),
            Outcome::Ok,
            "outside: {op} {how}"
        );
    }
    journaled(&scenario, "kernel_memory");
    journaled(&scenario, "clock");
    assert_eq!(
        scenario.tamper(&scenario.agents, "set-clock", &["read"]),
        Outcome::Ok
    );
    // Nor do they reboot the host (CAP_SYS_BOOT): reboot(2) with a wrong magic number is
    // refused to a root agent, and answered EINVAL outside, which has the capability.
    assert_eq!(
        scenario.tamper(&scenario.agents, "reboot", &[]),
        Outcome::Denied
    );
    assert_eq!(
        scenario.tamper(&scenario.outside, "reboot", &[]),
        Outcome::Errno(libc::EINVAL)
    );
    journaled(&scenario, "reboot");
    // Nor a timer that wakes the host from suspend (CAP_WAKE_ALARM).
    assert_eq!(
        scenario.tamper(&scenario.agents, "wake-alarm", &[]),
        Outcome::Denied
    );
    assert_eq!(
        scenario.tamper(&scenario.outside, "wake-alarm", &[]),
        Outcome::Ok
    );
}
