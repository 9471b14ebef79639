//! Network destinations end to end: connect and send from agents need approval.

use std::{
    net::TcpListener,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex},
    time::Duration,
};

use gatekeeper_tests::{Options, Outcome, Scenario, SyslogReceiver, bin, wait_for};

const ECONNREFUSED: i32 = 111;

/// Rules used by most tests: a v4 range with a port list (TCP), a v6 host (any protocol), and
/// a v4 range for DNS over UDP only.
const RULES: &str = r#"
[[protect.connect]]
name = "prod postgres"
cidr = "127.0.5.0/24"
ports = [5432, "8000-8100"]
protocol = "tcp"

[[protect.connect]]
name = "v6 service"
cidr = "::1/128"
ports = [7000]

[[protect.connect]]
name = "resolver"
cidr = "127.0.6.0/24"
ports = [53]
protocol = "udp"
"#;

fn scenario(name: &str) -> Scenario {
    Scenario::start(
        name,
        Options {
            extra: RULES.to_owned(),
            ..Options::default()
        },
    )
}

/// Listeners so that allowed connects succeed and denials cannot be mistaken for refusals.
fn listen(addresses: &[&str]) -> Vec<TcpListener> {
    addresses
        .iter()
        .map(|address| TcpListener::bind(address).expect("test listener"))
        .collect()
}

fn approve_request_for(scenario: &Scenario, target: &str) -> String {
    let id = scenario.wait_request_for(target)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let output = scenario.gatekeeper(&["approve", &id]);
    assert!(output.status.success(), "approve failed: {output:?}");
    id
}

#[test]
fn tcp_connect_to_protected_v4_is_denied_and_requested() {
    let scenario = scenario("net-denied");
    let _listeners = listen(&["127.0.5.1:5432"]);
    assert_eq!(
        scenario.net(&scenario.agents, "tcp", "127.0.5.1:5432"),
        Outcome::Denied
    );
    let request = scenario.wait_request_for("tcp 127.0.5.1:5432");
    assert_eq!(request["kind"], "connect");
    assert_eq!(request["rule"], "prod postgres");
    assert_eq!(request["destination"]["address"], "127.0.5.1");
    assert_eq!(request["destination"]["port"], 5432);
    assert_eq!(request["destination"]["protocol"], "tcp");
    assert_eq!(request["cgroup"], scenario.agents.display().to_string());
    let hook = scenario.webhook.as_ref().unwrap();
    let message = wait_for("the webhook delivery", || {
        hook.received().into_iter().next()
    });
    assert_eq!(message.json()["request"]["target"], "tcp 127.0.5.1:5432");
    assert_eq!(message.json()["request"]["rule"], "prod postgres");
}

#[test]
fn v4_rule_holds_through_a_v6_socket_and_v6_rules_hold() {
    let scenario = scenario("net-v6");
    let _listeners = listen(&["127.0.5.1:5432", "[::1]:7000"]);
    assert_eq!(
        scenario.net(&scenario.agents, "tcp", "[::ffff:127.0.5.1]:5432"),
        Outcome::Denied
    );
    scenario.wait_request_for("tcp 127.0.5.1:5432");
    assert_eq!(
        scenario.net(&scenario.agents, "tcp", "[::1]:7000"),
        Outcome::Denied
    );
    let request = scenario.wait_request_for("tcp [::1]:7000");
    assert_eq!(request["rule"], "v6 service");
}

#[test]
fn only_protected_ports_and_agents_are_stopped() {
    let scenario = scenario("net-ports");
    let _listeners = listen(&["127.0.5.1:5432", "127.0.5.1:5433", "127.0.5.1:8050"]);
    assert_eq!(
        scenario.net(&scenario.agents, "tcp", "127.0.5.1:5433"),
        Outcome::Ok
    );
    assert_eq!(
        scenario.net(&scenario.agents, "tcp", "127.0.5.1:8050"),
        Outcome::Denied,
        "inside the 8000-8100 range"
    );
    // Outside every agent cgroup nothing is stopped.
    assert_eq!(
        scenario.net(&scenario.outside, "tcp", "127.0.5.1:5432"),
        Outcome::Ok
    );
    // A TCP-only rule leaves UDP to the same place alone, and the reverse.
    assert_eq!(
        scenario.net(&scenario.agents, "udp", "127.0.5.1:5432"),
        Outcome::Ok
    );
    assert_eq!(
        scenario.net(&scenario.agents, "tcp", "127.0.6.1:53"),
        Outcome::Errno(ECONNREFUSED)
    );
}

#[test]
fn udp_connect_and_unconnected_sends_are_denied() {
    let scenario = scenario("net-udp");
    for op in ["udp", "sendto", "sendmmsg"] {
        assert_eq!(
            scenario.net(&scenario.agents, op, "127.0.6.1:53"),
            Outcome::Denied,
            "{op}"
        );
        assert_eq!(
            scenario.net(&scenario.agents, op, "127.0.6.1:54"),
            Outcome::Ok,
            "{op} to an unprotected port"
        );
    }
    // Through a v6 socket too.
    assert_eq!(
        scenario.net(&scenario.agents, "sendto", "[::ffff:127.0.6.1]:53"),
        Outcome::Denied
    );
    let request = scenario.wait_request_for("udp 127.0.6.1:53");
    assert_eq!(request["rule"], "resolver");
}

#[test]
fn tcp_fast_open_is_denied() {
    let scenario = scenario("net-tfo");
    let _listeners = listen(&["127.0.5.1:5432", "127.0.5.1:5433"]);
    assert_eq!(
        scenario.net(&scenario.agents, "fastopen", "127.0.5.1:5432"),
        Outcome::Denied
    );
    assert_ne!(
        scenario.net(&scenario.agents, "fastopen", "127.0.5.1:5433"),
        Outcome::Denied,
        "fast open to an unprotected port"
    );
}

#[test]
fn approval_lets_exactly_one_connect_pass() {
    let scenario = scenario("net-once");
    let _listeners = listen(&["127.0.5.1:5432"]);
    assert_eq!(
        scenario.net(&scenario.agents, "tcp", "127.0.5.1:5432"),
        Outcome::Denied
    );
    let id = approve_request_for(&scenario, "tcp 127.0.5.1:5432");
    assert_eq!(
        scenario.net(&scenario.agents, "tcp", "127.0.5.1:5432"),
        Outcome::Ok
    );
    assert_eq!(
        scenario.net(&scenario.agents, "tcp", "127.0.5.1:5432"),
        Outcome::Denied
    );
    scenario.wait_journal("grant_used", |event| event["request_id"] == id.as_str());

    // One datagram per approval for unconnected UDP.
    assert_eq!(
        scenario.net(&scenario.agents, "sendto", "127.0.6.1:53"),
        Outcome::Denied
    );
    approve_request_for(&scenario, "udp 127.0.6.1:53");
    assert_eq!(
        scenario.net(&scenario.agents, "sendto", "127.0.6.1:53"),
        Outcome::Ok
    );
    assert_eq!(
        scenario.net(&scenario.agents, "sendto", "127.0.6.1:53"),
        Outcome::Denied
    );
}

#[test]
fn concurrent_connects_after_one_approval_pass_exactly_once() {
    let scenario = scenario("net-race");
    let _listeners = listen(&["127.0.5.1:5432"]);
    assert_eq!(
        scenario.net(&scenario.agents, "tcp", "127.0.5.1:5432"),
        Outcome::Denied
    );
    approve_request_for(&scenario, "tcp 127.0.5.1:5432");
    assert_eq!(
        scenario.race_net(&scenario.agents, 8, "tcp", "127.0.5.1:5432"),
        (1, 7, 0)
    );
}

#[test]
fn expired_connect_grant_never_allows() {
    let scenario = Scenario::start(
        "net-expiry",
        Options {
            extra: RULES.to_owned(),
            grant_ttl: "2s",
            ..Options::default()
        },
    );
    let _listeners = listen(&["127.0.5.1:5432"]);
    assert_eq!(
        scenario.net(&scenario.agents, "tcp", "127.0.5.1:5432"),
        Outcome::Denied
    );
    let id = approve_request_for(&scenario, "tcp 127.0.5.1:5432");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        scenario.net(&scenario.agents, "tcp", "127.0.5.1:5432"),
        Outcome::Denied
    );
    scenario.wait_journal("grant_expired", |event| event["request_id"] == id.as_str());
}

#[test]
fn host_rules_resolve_and_follow_the_name() {
    let hosts = Restored::add_to("/etc/hosts", "127.0.7.1 db.gatekeeper.test\n");
    let scenario = Scenario::start(
        "net-host",
        Options {
            extra: "[[protect.connect]]\nname = \"db by name\"\nhost = \"db.gatekeeper.test\"\nports = [5432]\nprotocol = \"tcp\"\n".to_owned(),
            resolve_interval: "1s",
            ..Options::default()
        },
    );
    // What the name protects from the start is on record.
    scenario.wait_journal("host_resolved", |event| {
        event["rule"] == "db by name"
            && event["host"] == "db.gatekeeper.test"
            && event["addresses"] == serde_json::json!(["127.0.7.1"])
    });
    let _listeners = listen(&["127.0.7.1:5432", "127.0.7.2:5432"]);
    assert_eq!(
        scenario.net(&scenario.agents, "tcp", "127.0.7.1:5432"),
        Outcome::Denied
    );
    let request = scenario.wait_request_for("tcp 127.0.7.1:5432 (db.gatekeeper.test)");
    assert_eq!(request["destination"]["host"], "db.gatekeeper.test");
    assert_eq!(request["rule"], "db by name");

    // The name moves: the new address is protected after re-resolution, the old one still is.
    assert_eq!(
        scenario.net(&scenario.agents, "tcp", "127.0.7.2:5432"),
        Outcome::Ok
    );
    std::fs::write(
        hosts.path,
        format!("{}127.0.7.2 db.gatekeeper.test\n", hosts.original),
    )
    .unwrap();
    scenario.wait_journal("host_resolved", |event| {
        event["addresses"]
            .as_array()
            .is_some_and(|addresses| addresses.iter().any(|a| a == "127.0.7.2"))
    });
    std::fs::write(hosts.path, &hosts.original).unwrap();
    assert_eq!(
        scenario.net(&scenario.agents, "tcp", "127.0.7.2:5432"),
        Outcome::Denied
    );
    assert_eq!(
        scenario.net(&scenario.agents, "tcp", "127.0.7.1:5432"),
        Outcome::Denied
    );
}

/// A host rule's name that does not resolve as the daemon starts (the guest has no name server):
/// never resolved, the daemon refuses to start and says which; resolved at an earlier start, the
/// addresses the journal has for it stay protected, also after an uninstall emptied the maps.
#[test]
fn a_host_that_stops_resolving_keeps_its_journaled_addresses() {
    let mut scenario = Scenario::prepare(
        "net-host-gone",
        Options {
            extra: "[[protect.connect]]\nname = \"db by name\"\nhost = \"gone.gatekeeper.test\"\nports = [5432]\nprotocol = \"tcp\"\n".to_owned(),
            ..Options::default()
        },
    );
    scenario.spawn_daemon();
    let status = wait_for("the daemon to give up", || scenario.daemon_exited());
    assert_eq!(status.code(), Some(1), "{}", scenario.daemon_log());
    assert!(
        scenario
            .daemon_log()
            .contains("cannot resolve gone.gatekeeper.test"),
        "{}",
        scenario.daemon_log()
    );

    let hosts = Restored::add_to("/etc/hosts", "127.0.7.5 gone.gatekeeper.test\n");
    scenario.start_daemon();
    scenario.wait_journal("host_resolved", |event| {
        event["addresses"] == serde_json::json!(["127.0.7.5"])
    });
    scenario.stop_daemon();
    assert!(scenario.uninstall().status.success());
    drop(hosts);

    scenario.start_daemon();
    assert!(
        scenario
            .daemon_log()
            .contains("protecting the addresses it had when last journaled"),
        "{}",
        scenario.daemon_log()
    );
    let _listeners = listen(&["127.0.7.5:5432"]);
    assert_eq!(
        scenario.net(&scenario.agents, "tcp", "127.0.7.5:5432"),
        Outcome::Denied
    );
    assert_eq!(
        scenario.net(&scenario.outside, "tcp", "127.0.7.5:5432"),
        Outcome::Ok
    );
}

/// Host names are the daemon's own lookups, in /etc/hosts and with the name servers of
/// /etc/resolv.conf: a root agent's nscd, up before the daemon (glibc asks it first), that gives
/// a protected host and the journal's receiver an address of the agent's moves neither, while
/// glibc outside believes it.
#[test]
fn an_agents_name_service_moves_no_destination() {
    let _hosts = Restored::add_to(
        "/etc/hosts",
        "127.0.7.1 db.gatekeeper.test\n127.0.0.1 logs.gatekeeper.test\n",
    );
    let received = Arc::new(Mutex::new(Vec::new()));
    let receiver = SyslogReceiver::start_on(0, received.clone(), false);
    // Where the agent's nscd says the journal's receiver is.
    let decoy = TcpListener::bind(("127.0.7.9", receiver.port)).unwrap();
    decoy.set_nonblocking(true).unwrap();
    let mut scenario = Scenario::prepare(
        "net-nscd",
        Options {
            extra: format!(
                "[[protect.connect]]\nname = \"db by name\"\nhost = \"db.gatekeeper.test\"\n\
                 ports = [5432]\nprotocol = \"tcp\"\n\n[[audit.forward]]\nkind = \"syslog\"\n\
                 address = \"logs.gatekeeper.test:{}\"\n",
                receiver.port
            ),
            ..Options::default()
        },
    );
    let pairs =
        ["db.gatekeeper.test", "logs.gatekeeper.test"].map(|host| format!("{host}=127.0.7.9"));
    let _service = scenario.agents_name_service(&pairs);
    let lookup = Command::new(bin("gk-helper"))
        .args(["tamper", "-", "host-address", "db.gatekeeper.test"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&lookup.stdout);
    let addresses: Vec<&str> = said
        .lines()
        .filter_map(|line| line.strip_prefix("ADDRESS="))
        .collect();
    assert_eq!(addresses, ["127.0.7.9"], "glibc outside: {lookup:?}");
    scenario.start_daemon();
    let _listeners = listen(&["127.0.7.1:5432", "127.0.7.9:5432"]);
    assert_eq!(
        scenario.net(&scenario.agents, "tcp", "127.0.7.1:5432"),
        Outcome::Denied
    );
    scenario.wait_request_for("tcp 127.0.7.1:5432 (db.gatekeeper.test)");
    // The agent's own address is no protected host's.
    assert_eq!(
        scenario.net(&scenario.agents, "tcp", "127.0.7.9:5432"),
        Outcome::Ok
    );
    assert_eq!(
        scenario.net(&scenario.outside, "tcp", "127.0.7.1:5432"),
        Outcome::Ok
    );
    wait_for("the journal's records at its receiver", || {
        (!received.lock().unwrap().is_empty()).then_some(())
    });
    assert_eq!(
        decoy.accept().map(|_| ()).map_err(|error| error.kind()),
        Err(std::io::ErrorKind::WouldBlock),
        "the journal went to the agent's address"
    );
}

/// /etc/resolv.conf is often a link into /run (systemd-resolved, resolvconf): the directory it
/// leads to is guarded like a host path, so agents, root or not, neither rewrite nor replace the
/// name servers the daemon will ask after its next start. The directory and the file are
/// everyone's to write, so only Gatekeeper stands in a user agent's way.
#[test]
fn the_name_servers_are_host_files_wherever_they_live() {
    let dir = "/run/gk-names";
    let file = "/run/gk-names/resolv.conf";
    let _link = ResolvConfIn::make(dir);
    let scenario = Scenario::start("net-resolv", Options::default());
    let spoofed = "nameserver 127.0.7.9\n";
    scenario.agents_denied("write", &[file, spoofed]);
    scenario.agents_denied("unlink", &[file]);
    scenario.agents_denied("rename", &[file, "/run/gk-names/old"]);
    scenario.agents_denied("write", &["/run/gk-names/new", spoofed]);
    // /run is sticky: only a root agent could move the directory.
    assert_eq!(
        scenario.tamper(&scenario.agents, "rename", &[dir, "/run/gk-names-old"]),
        Outcome::Denied
    );
    assert!(std::fs::read_to_string(file).unwrap().contains("127.0.0.1"));
    // Outside, the host's own tools (systemd-resolved) keep writing it.
    assert_eq!(
        scenario.tamper(
            &scenario.outside,
            "write",
            &[file, "nameserver 127.0.0.2\n"]
        ),
        Outcome::Ok
    );
}

/// A host file with lines added, put back as it was when dropped (also when a test fails).
struct Restored {
    path: &'static str,
    original: String,
}

impl Restored {
    fn add_to(path: &'static str, lines: &str) -> Self {
        let original = std::fs::read_to_string(path).unwrap_or_default();
        std::fs::write(path, format!("{original}{lines}")).unwrap();
        Self { path, original }
    }
}

impl Drop for Restored {
    fn drop(&mut self) {
        let _ = std::fs::write(self.path, &self.original);
    }
}

/// /etc/resolv.conf made a link to `DIR/resolv.conf` (mode 0666 in a directory of mode 0777),
/// as systemd-resolved links it; the host's own put back when dropped.
struct ResolvConfIn {
    dir: &'static str,
    /// Where the host's own was put aside, if it had one.
    aside: Option<PathBuf>,
}

impl ResolvConfIn {
    const PATH: &'static str = "/etc/resolv.conf";

    fn make(dir: &'static str) -> Self {
        let aside = PathBuf::from("/etc/resolv.conf.gk-aside");
        let aside = std::fs::rename(Self::PATH, &aside).is_ok().then_some(aside);
        let made = Self { dir, aside };
        std::fs::create_dir_all(dir).unwrap();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let file = Path::new(dir).join("resolv.conf");
        std::fs::write(&file, "nameserver 127.0.0.1\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
        std::os::unix::fs::symlink(&file, Self::PATH).unwrap();
        made
    }
}

impl Drop for ResolvConfIn {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(Self::PATH);
        if let Some(aside) = &self.aside {
            let _ = std::fs::rename(aside, Self::PATH);
        }
        let _ = std::fs::remove_dir_all(self.dir);
    }
}
