//! Network destinations end to end: connect and send from agents need approval.

use std::{net::TcpListener, time::Duration};

use gatekeeper_tests::{Options, Outcome, Scenario, wait_for};

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
    let hosts = "/etc/hosts";
    let original = std::fs::read_to_string(hosts).unwrap_or_default();
    std::fs::write(hosts, format!("{original}127.0.7.1 db.gatekeeper.test\n")).unwrap();
    let scenario = Scenario::start(
        "net-host",
        Options {
            extra: "[[protect.connect]]\nname = \"db by name\"\nhost = \"db.gatekeeper.test\"\nports = [5432]\nprotocol = \"tcp\"\n".to_owned(),
            resolve_interval: "1s",
            ..Options::default()
        },
    );
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
    std::fs::write(hosts, format!("{original}127.0.7.2 db.gatekeeper.test\n")).unwrap();
    scenario.wait_journal("host_resolved", |event| {
        event["addresses"]
            .as_array()
            .is_some_and(|addresses| addresses.iter().any(|a| a == "127.0.7.2"))
    });
    std::fs::write(hosts, original).unwrap();
    assert_eq!(
        scenario.net(&scenario.agents, "tcp", "127.0.7.2:5432"),
        Outcome::Denied
    );
    assert_eq!(
        scenario.net(&scenario.agents, "tcp", "127.0.7.1:5432"),
        Outcome::Denied
    );
}
