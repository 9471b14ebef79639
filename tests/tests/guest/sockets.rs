//! No side door on the network: agents, as root or not, get no socket whose traffic Gatekeeper
//! does not judge; IPv4 rules hold for the NAT64 form; unix sockets at protected paths need
//! approval like any destination.

use std::{
    os::unix::{
        fs::PermissionsExt as _,
        net::{UnixDatagram, UnixListener},
    },
    path::{Path, PathBuf},
};

use gatekeeper_tests::{Options, Outcome, Scenario, wait_for};

const AF_INET: &str = "2";
const AF_INET6: &str = "10";
const SOCK_STREAM: &str = "1";
const SOCK_DGRAM: &str = "2";
const SOCK_RAW: &str = "3";

/// (what, family, type, protocol): sockets agents may not have.
const REFUSED: [(&str, &str, &str, &str); 15] = [
    ("raw", AF_INET, SOCK_RAW, "1"),
    ("raw v6", AF_INET6, SOCK_RAW, "58"),
    // ETH_P_ALL in network order.
    ("packet", "17", SOCK_RAW, "768"),
    ("packet datagram", "17", SOCK_DGRAM, "768"),
    // The kernel turns AF_INET SOCK_PACKET into AF_PACKET before asking the LSMs.
    ("legacy SOCK_PACKET", AF_INET, "10", "768"),
    ("sctp", AF_INET, SOCK_STREAM, "132"),
    ("sctp seqpacket", AF_INET6, "5", "132"),
    ("ping", AF_INET, SOCK_DGRAM, "1"),
    ("ping v6", AF_INET6, SOCK_DGRAM, "58"),
    ("dccp", AF_INET, "6", "33"),
    // Families refused because they are not on the allowlist.
    ("vsock", "40", SOCK_STREAM, "0"),
    ("tipc", "30", "4", "0"),
    ("smc", "43", SOCK_STREAM, "0"),
    ("xdp", "44", SOCK_RAW, "0"),
    ("rds", "21", "5", "0"),
];

fn tamper_attempts(scenario: &Scenario) -> u64 {
    scenario.status()["tamper_attempts"]
        .as_u64()
        .expect("status counts tamper attempts")
}

#[test]
fn agents_get_no_raw_packet_or_unguarded_sockets() {
    let scenario = Scenario::start("sockets-refused", Options::default());
    for (what, family, kind, protocol) in REFUSED {
        let args = [family, kind, protocol];
        let before = tamper_attempts(&scenario);
        assert_eq!(
            scenario.tamper(&scenario.agents, "socket", &args),
            Outcome::Denied,
            "{what} as root"
        );
        scenario.user_agent_denied("socket", &args);
        assert_eq!(
            tamper_attempts(&scenario),
            before + 2,
            "{what}: both refusals were Gatekeeper's"
        );
        // Outside the agent cgroups Gatekeeper stays out of it: root gets the socket (or the
        // kernel's own answer, e.g. a family this kernel lacks); the ordinary user may be
        // refused by the kernel (raw sockets need CAP_NET_RAW), never by Gatekeeper.
        assert_ne!(
            scenario.tamper(&scenario.outside, "socket", &args),
            Outcome::Denied,
            "{what} as root outside"
        );
        scenario.tamper_as_user(&scenario.outside, "socket", &args);
        assert_eq!(
            tamper_attempts(&scenario),
            before + 2,
            "{what}: nothing outside was Gatekeeper's refusal"
        );
    }
    // socketpair makes its sockets through the same check.
    let packet_pair = ["17", SOCK_RAW, "0"];
    assert_eq!(
        scenario.tamper(&scenario.agents, "socketpair", &packet_pair),
        Outcome::Denied
    );
    assert_ne!(
        scenario.tamper(&scenario.outside, "socketpair", &packet_pair),
        Outcome::Denied
    );
    // The first attempt (a raw ICMP socket as root) is journaled at once, with what it asked.
    let record = scenario.wait_journal("tamper_attempt", |event| event["hook"] == "socket_create");
    assert_eq!(record["detail"][0], 2, "AF_INET");
    assert_eq!(
        record["detail"][1],
        (3u64 << 32) | 1,
        "SOCK_RAW, IPPROTO_ICMP"
    );
    assert_eq!(record["uid"], 0);
    assert_eq!(record["cgroup"], scenario.agents.display().to_string());
}

#[test]
fn agents_keep_the_sockets_they_need() {
    let scenario = Scenario::start("sockets-kept", Options::default());
    let before = tamper_attempts(&scenario);
    let nonblocking_stream = (1 | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC).to_string();
    let kept: [(&str, [&str; 3]); 11] = [
        ("tcp", [AF_INET, SOCK_STREAM, "0"]),
        ("tcp v6", [AF_INET6, SOCK_STREAM, "6"]),
        ("tcp, flags", [AF_INET, &nonblocking_stream, "0"]),
        ("udp", [AF_INET, SOCK_DGRAM, "0"]),
        ("udp v6", [AF_INET6, SOCK_DGRAM, "17"]),
        ("udp-lite", [AF_INET, SOCK_DGRAM, "136"]),
        ("unix stream", ["1", SOCK_STREAM, "0"]),
        ("unix datagram", ["1", SOCK_DGRAM, "0"]),
        ("unix seqpacket", ["1", "5", "0"]),
        ("netlink route", ["16", SOCK_RAW, "0"]),
        ("netlink datagram", ["16", SOCK_DGRAM, "0"]),
    ];
    for (what, args) in kept {
        assert_eq!(
            scenario.tamper(&scenario.agents, "socket", &args),
            Outcome::Ok,
            "{what} as root"
        );
        assert_eq!(
            scenario.tamper_as_user(&scenario.agents, "socket", &args),
            Outcome::Ok,
            "{what} as uid 1001"
        );
    }
    assert_eq!(
        scenario.tamper(&scenario.agents, "socketpair", &["1", SOCK_STREAM, "0"]),
        Outcome::Ok
    );
    assert_eq!(tamper_attempts(&scenario), before);
    // These depend on what the kernel has (MPTCP may be off, AF_ALG a module, which agents may
    // not have loaded for them: a module_request attempt, EAFNOSUPPORT): never EPERM.
    for (what, args) in [
        ("mptcp", [AF_INET, SOCK_STREAM, "262"]),
        ("kernel crypto", ["38", "5", "0"]),
    ] {
        assert_ne!(
            scenario.tamper(&scenario.agents, "socket", &args),
            Outcome::Denied,
            "{what}"
        );
    }
}

#[test]
fn v4_rules_hold_in_nat64_form() {
    let rules = r#"
[[protect.connect]]
name = "prod postgres"
cidr = "127.0.5.0/24"
ports = [5432]
protocol = "tcp"

[[protect.connect]]
name = "resolver"
cidr = "127.0.6.1"
ports = [53]
protocol = "udp"
"#;
    let scenario = Scenario::start(
        "sockets-nat64",
        Options {
            extra: rules.to_owned(),
            ..Options::default()
        },
    );
    // 127.0.5.1 and 127.0.6.1 behind the well-known NAT64 prefix.
    let postgres = "[64:ff9b::7f00:501]:5432";
    let resolver = "[64:ff9b::7f00:601]:53";
    assert_eq!(
        scenario.net(&scenario.agents, "tcp", postgres),
        Outcome::Denied
    );
    let request = scenario.wait_request_for("tcp [64:ff9b::7f00:501]:5432");
    assert_eq!(request["rule"], "prod postgres");
    assert_eq!(
        scenario.net(&scenario.agents, "sendto", resolver),
        Outcome::Denied
    );
    scenario.wait_request_for("udp [64:ff9b::7f00:601]:53");
    // Other ports, and the same connect from outside: the guest has no route there, so the
    // kernel answers, not Gatekeeper.
    assert_ne!(
        scenario.net(&scenario.agents, "tcp", "[64:ff9b::7f00:501]:5433"),
        Outcome::Denied
    );
    assert_ne!(
        scenario.net(&scenario.outside, "tcp", postgres),
        Outcome::Denied
    );
    assert_ne!(
        scenario.net(&scenario.outside, "sendto", resolver),
        Outcome::Denied
    );
}

/// A directory everyone may enter, for sockets everyone may connect to.
fn socket_dir(name: &str) -> PathBuf {
    let dir = Path::new("/tmp").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

fn open_to_all(path: &Path) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777)).unwrap();
}

/// A listening seqpacket socket bound at `path` (std has none).
fn seqpacket_listener(path: &Path) -> std::os::fd::OwnedFd {
    use std::os::{fd::FromRawFd as _, unix::ffi::OsStrExt as _};
    // SAFETY: plain socket calls on a zeroed sockaddr_un holding a short path.
    unsafe {
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET, 0);
        assert!(fd >= 0);
        let mut address: libc::sockaddr_un = std::mem::zeroed();
        address.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (slot, byte) in address.sun_path.iter_mut().zip(path.as_os_str().as_bytes()) {
            *slot = *byte as libc::c_char;
        }
        let length = size_of::<libc::sockaddr_un>() as libc::socklen_t;
        assert_eq!(libc::bind(fd, (&raw const address).cast(), length), 0);
        assert_eq!(libc::listen(fd, 64), 0);
        std::os::fd::OwnedFd::from_raw_fd(fd)
    }
}

#[test]
fn unix_sockets_at_protected_paths_need_approval() {
    let dir = socket_dir("gatekeeper-unix");
    let docker = dir.join("docker.sock");
    let seqpacket = dir.join("seqpacket.sock");
    let datagram = dir.join("datagram.sock");
    let other = dir.join("other.sock");
    let mut listener = UnixListener::bind(&docker).unwrap();
    let _seqpacket = seqpacket_listener(&seqpacket);
    let _datagram = UnixDatagram::bind(&datagram).unwrap();
    let _other = UnixListener::bind(&other).unwrap();
    for path in [&docker, &seqpacket, &datagram, &other] {
        open_to_all(path);
    }
    let rules = format!(
        "[[protect.connect]]\nname = \"docker\"\npath = \"{}\"\n\
         [[protect.connect]]\npath = \"{}\"\n\
         [[protect.connect]]\npath = \"{}\"\n",
        docker.display(),
        seqpacket.display(),
        datagram.display(),
    );
    let scenario = Scenario::start(
        "sockets-unix",
        Options {
            extra: rules,
            ..Options::default()
        },
    );
    let text = |path: &Path| path.display().to_string();
    let (docker_text, seqpacket_text, datagram_text) =
        (text(&docker), text(&seqpacket), text(&datagram));

    for (op, path) in [
        ("unix-connect", &docker_text),
        ("unix-seqpacket", &seqpacket_text),
        ("unix-send", &datagram_text),
    ] {
        assert_eq!(
            scenario.tamper(&scenario.agents, op, &[path]),
            Outcome::Denied,
            "{op} as root"
        );
        assert_eq!(
            scenario.tamper_as_user(&scenario.agents, op, &[path]),
            Outcome::Denied,
            "{op} as uid 1001"
        );
        assert_eq!(
            scenario.tamper(&scenario.outside, op, &[path]),
            Outcome::Ok,
            "{op} as root outside"
        );
        assert_eq!(
            scenario.tamper_as_user(&scenario.outside, op, &[path]),
            Outcome::Ok,
            "{op} as uid 1001 outside"
        );
    }
    assert_eq!(
        scenario.tamper(&scenario.agents, "unix-connect", &[&text(&other)]),
        Outcome::Ok,
        "an unprotected socket"
    );

    // The socket is matched, not the name the caller gives it.
    let symlink = dir.join("symlink.sock");
    std::os::unix::fs::symlink(&docker, &symlink).unwrap();
    let hard_link = dir.join("hard.sock");
    std::fs::hard_link(&docker, &hard_link).unwrap();
    let dir_text = text(&dir);
    let names: [(&str, &[&str]); 4] = [
        ("unix-connect", &[&text(&symlink)]),
        ("unix-connect", &[&text(&hard_link)]),
        ("unix-connect-in", &[&dir_text, "docker.sock"]),
        (
            "unix-connect-in",
            &[&dir_text, "/proc/self/cwd/docker.sock"],
        ),
    ];
    for (op, args) in names {
        assert_eq!(
            scenario.tamper(&scenario.agents, op, args),
            Outcome::Denied,
            "{op} {args:?}"
        );
    }

    // One request for the socket, whatever the name; an approval lets exactly one connect in.
    let target = format!("unix socket {docker_text}");
    let request = scenario.wait_request_for(&target);
    assert_eq!(request["kind"], "connect");
    assert_eq!(request["rule"], "docker");
    let id = request["id"].as_str().unwrap();
    assert!(scenario.gatekeeper(&["approve", id]).status.success());
    assert_eq!(
        scenario.tamper(&scenario.agents, "unix-connect", &[&docker_text]),
        Outcome::Ok
    );
    assert_eq!(
        scenario.tamper(&scenario.agents, "unix-connect", &[&docker_text]),
        Outcome::Denied
    );
    scenario.wait_journal("grant_used", |event| event["request_id"] == id);
    let hook = scenario.webhook.as_ref().unwrap();
    wait_for("the webhook delivery for the socket", || {
        hook.received()
            .into_iter()
            .find(|message| message.json()["request"]["target"] == target.as_str())
    });

    // The server makes its socket anew (a restart): the new one is protected too.
    drop(listener);
    std::fs::remove_file(&docker).unwrap();
    listener = UnixListener::bind(&docker).unwrap();
    scenario.wait_journal("protection_updated", |event| {
        event["path"] == docker_text.as_str()
    });
    assert_eq!(
        scenario.tamper(&scenario.agents, "unix-connect", &[&docker_text]),
        Outcome::Denied
    );
    assert_eq!(
        scenario.tamper(&scenario.outside, "unix-connect", &[&docker_text]),
        Outcome::Ok
    );
    drop(listener);
}
