//! The journal as auditors rely on it: sealed with keys the host no longer holds, and out of
//! agents' reach.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::Path,
    sync::{Arc, Mutex},
};

use gatekeeper_tests::{
    Exec, HttpsReceiver, Options, Outcome, Scenario, SyslogReceiver, TEST_CA_PEM, free_port,
    wait_for,
};
use sha2::{Digest as _, Sha256};

const HASH_FIELD: &str = ",\"hash\":\"";

/// The journal with `edit` applied to every record's body and every hash and link recomputed:
/// what someone who can write the file, but holds no sealing key, can do.
fn rewrite_with_fresh_hashes(journal: &Path, edit: impl Fn(&str) -> String) {
    let text = std::fs::read_to_string(journal).unwrap();
    let mut prev = "0".repeat(64);
    let mut out = String::new();
    for line in text.lines() {
        let (head, _) = line.rsplit_once(HASH_FIELD).unwrap();
        let mut body: serde_json::Value = serde_json::from_str(&format!("{head}}}")).unwrap();
        body["prev"] = serde_json::Value::String(prev.clone());
        let body = edit(&serde_json::to_string(&body).unwrap());
        let hash = hex::encode(Sha256::digest(body.as_bytes()));
        out.push_str(&format!(
            "{}{HASH_FIELD}{hash}\"}}\n",
            &body[..body.len() - 1]
        ));
        prev = hash;
    }
    std::fs::write(journal, out).unwrap();
}

#[test]
fn a_sealed_journal_rewritten_with_every_hash_recomputed_fails_verification() {
    let mut scenario = Scenario::prepare("sealing", Options::default());
    // Sealed by record count first (no interval comes due in this test), by time later.
    set_sealing(&scenario, "2", "1h");
    scenario.start_daemon();
    assert!(
        scenario
            .daemon_log()
            .contains("the journal is not sealed: `gatekeeper journal setup-keys`"),
        "{}",
        scenario.daemon_log()
    );
    let config = scenario.config.display().to_string();
    let journal = scenario.journal.display().to_string();
    // Made through the running daemon, which guards the file before the key is in it.
    let setup = scenario.gatekeeper(&["--config", &config, "journal", "setup-keys"]);
    assert!(setup.status.success(), "{setup:?}");
    let printed = String::from_utf8_lossy(&setup.stdout).into_owned();
    let verification = printed.lines().last().unwrap().to_owned();
    assert!(verification.starts_with("gkseal1-"), "{printed}");
    let key = scenario.seal_key.clone();
    let mode = std::fs::metadata(&key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let again = scenario.gatekeeper(&["--config", &config, "journal", "setup-keys"]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already sealed"),
        "{again:?}"
    );

    // Agents can neither read the key nor change it; the journal neither.
    let key_path = key.display().to_string();
    for path in [&key_path, &journal] {
        assert_eq!(
            scenario.tamper(&scenario.agents, "read", &[path]),
            Outcome::Denied,
            "read {path}"
        );
        assert_ne!(
            scenario.tamper_as_user(&scenario.agents, "read", &[path]),
            Outcome::Ok,
            "read {path} as a user"
        );
        assert_eq!(
            scenario.tamper(&scenario.agents, "append", &[path, "x"]),
            Outcome::Denied,
            "append to {path}"
        );
        assert_eq!(
            scenario.tamper(&scenario.agents, "unlink", &[path]),
            Outcome::Denied,
            "unlink {path}"
        );
        // Control: outside the agent cgroups root reads it.
        assert_eq!(
            scenario.tamper(&scenario.outside, "read", &[path]),
            Outcome::Ok,
            "{path}"
        );
    }

    let before = seals(&scenario);
    let id = scenario.denied_request();
    // Sealed while it runs, every second record.
    wait_for("a seal by count", || {
        (seals(&scenario) > before).then_some(())
    });
    // Stopping seals what came last.
    scenario.stop_daemon();
    let verify = |scenario: &Scenario, key: &str| {
        scenario.gatekeeper(&["journal", "verify", "--key", key, &journal])
    };
    let intact = verify(&scenario, &verification);
    assert!(intact.status.success(), "{intact:?}");
    assert!(
        String::from_utf8_lossy(&intact.stdout).contains("sealed through record"),
        "{intact:?}"
    );
    // By time: a daemon that writes a few records at start and nothing after seals them once
    // the interval is up.
    let before = seals(&scenario);
    set_sealing(&scenario, "1000000", "2s");
    scenario.start_daemon();
    wait_for("a seal by time", || {
        (seals(&scenario) > before).then_some(())
    });
    scenario.stop_daemon();
    let intact = verify(&scenario, &verification);
    assert!(intact.status.success(), "{intact:?}");
    let other_key = format!("gkseal1-{}", "11".repeat(32));
    assert!(!verify(&scenario, &other_key).status.success());
    let bad_key = verify(&scenario, "not-a-key");
    assert!(
        String::from_utf8_lossy(&bad_key.stderr).contains("not a verification key"),
        "{bad_key:?}"
    );

    // The request's record rewritten (another id) and every hash after it recomputed: the
    // chain alone looks intact, the seals do not.
    rewrite_with_fresh_hashes(&scenario.journal, |body| body.replace(&id, "forged"));
    let chain = scenario.gatekeeper(&["journal", "verify", &journal]);
    assert!(chain.status.success(), "{chain:?}");
    let sealed = verify(&scenario, &verification);
    assert!(!sealed.status.success(), "{sealed:?}");
    assert!(
        String::from_utf8_lossy(&sealed.stderr).contains("seal of epoch"),
        "{sealed:?}"
    );
}

fn seals(scenario: &Scenario) -> usize {
    scenario
        .journal_events()
        .iter()
        .filter(|event| event["type"] == "seal")
        .count()
}

/// Sets `[daemon] seal_every` and `seal_interval` in the scenario's config.
fn set_sealing(scenario: &Scenario, every: &str, interval: &str) {
    let text = std::fs::read_to_string(&scenario.config).unwrap();
    let text: String = text
        .lines()
        .filter(|line| !line.starts_with("seal_every") && !line.starts_with("seal_interval"))
        .map(|line| format!("{line}\n"))
        .collect();
    let text = text.replacen(
        "[daemon]\n",
        &format!("[daemon]\nseal_every = {every}\nseal_interval = \"{interval}\"\n"),
        1,
    );
    std::fs::write(&scenario.config, text).unwrap();
}

/// The journal's records as a syslog receiver got them: (seq, type) of each record message.
fn forwarded_records(messages: &[String]) -> Vec<(u64, String)> {
    messages
        .iter()
        .filter_map(|message| message.split_once(" record - "))
        .map(|(_, line)| {
            let record: serde_json::Value = serde_json::from_str(line).unwrap();
            (
                record["seq"].as_u64().unwrap(),
                record["event"]["type"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// `[[audit.forward]]` sends every record to a syslog receiver listening in the guest (RFC 5424
/// messages in octet-counted frames); while the receiver is down the records wait in the
/// journal, and once it is back it gets them all, none missing. Its checkpoints then catch a
/// journal cut after them, which the chain alone does not (the control).
#[test]
fn records_reach_a_syslog_receiver_without_a_gap_and_its_checkpoints_catch_a_cut() {
    let port = free_port();
    let received = Arc::new(Mutex::new(Vec::new()));
    let receiver = SyslogReceiver::start_on(port, received.clone(), false);
    let mut scenario = Scenario::start(
        "forward",
        Options {
            extra: format!(
                "[[audit.forward]]\nkind = \"syslog\"\naddress = \"127.0.0.1:{port}\"\n"
            ),
            ..Options::default()
        },
    );
    let id = scenario.denied_request();
    wait_for("the request at the receiver", || {
        forwarded_records(&receiver.messages())
            .iter()
            .any(|(_, kind)| kind == "request_created")
            .then_some(())
    });
    let first = receiver.messages();
    assert!(first[0].starts_with("<110>1 "), "{}", first[0]);
    assert!(first[0].contains(" gatekeeper "), "{}", first[0]);
    // The receiver goes away; the request is approved and its grant used meanwhile.
    drop(receiver);
    let approved = scenario.gatekeeper(&["approve", &id]);
    assert!(approved.status.success(), "{approved:?}");
    assert_eq!(scenario.agent_exec(), Exec::Ran);
    scenario.wait_journal("grant_used", |event| event["request_id"] == id.as_str());
    // Back on the same port: the backlog arrives, and no record is missing.
    let receiver = SyslogReceiver::start_on(port, received, false);
    wait_for("the backlog at the receiver", || {
        forwarded_records(&receiver.messages())
            .iter()
            .any(|(_, kind)| kind == "grant_used")
            .then_some(())
    });
    let records = forwarded_records(&receiver.messages());
    let seqs: std::collections::BTreeSet<u64> = records.iter().map(|(seq, _)| *seq).collect();
    let last = *seqs.last().unwrap();
    assert_eq!(seqs, (0..=last).collect(), "a gap in {records:?}");
    assert!(records.iter().any(|(_, kind)| kind == "decision"));

    // What left the host holds the journal to account: intact now...
    scenario.stop_daemon();
    let log = scenario.dir.join("receiver.log");
    std::fs::write(&log, receiver.messages().join("\n")).unwrap();
    let journal = scenario.journal.display().to_string();
    let log_text = log.display().to_string();
    let verified =
        scenario.gatekeeper(&["journal", "verify", "--checkpoints", &log_text, &journal]);
    assert!(verified.status.success(), "{verified:?}");
    // ...and cut back to before the grant's use: its own chain is still intact (the control),
    // the checkpoints are not.
    let text = std::fs::read_to_string(&scenario.journal).unwrap();
    let kept: Vec<&str> = text
        .lines()
        .take_while(|line| !line.contains("\"grant_used\""))
        .collect();
    std::fs::write(&scenario.journal, kept.join("\n") + "\n").unwrap();
    let chain = scenario.gatekeeper(&["journal", "verify", &journal]);
    assert!(chain.status.success(), "{chain:?}");
    let cut = scenario.gatekeeper(&["journal", "verify", "--checkpoints", &log_text, &journal]);
    assert!(!cut.status.success(), "{cut:?}");
    assert!(
        String::from_utf8_lossy(&cut.stderr).contains("the journal was cut"),
        "{cut:?}"
    );
}

/// `[[audit.forward]]` kind `https`: each batch is POSTed as JSON lines ending in a checkpoint,
/// and counts once answered 2xx. A receiver that is not there at first (nothing listens on its
/// port) gets every record once it is, none missing, over TLS it trusts through `ca_file`; one
/// that goes away after it had records gets what was written meanwhile when it is back; the
/// journal's checkpoints note how far it has acknowledged.
#[test]
fn records_reach_an_https_receiver_that_was_down_for_a_while() {
    let port = free_port();
    let dir = Path::new("/tmp/gk-forward-https");
    let mut scenario = Scenario::prepare(
        "forward-https",
        Options {
            extra: format!(
                "[[audit.forward]]\nkind = \"https\"\nurl = \"https://127.0.0.1:{port}/records\"\nca_file = \"{}\"\n",
                dir.join("ca.pem").display()
            ),
            ..Options::default()
        },
    );
    assert_eq!(scenario.dir, dir);
    std::fs::write(dir.join("ca.pem"), TEST_CA_PEM).unwrap();
    scenario.start_daemon();
    let id = scenario.denied_request();
    // The records wait while nobody listens.
    std::thread::sleep(std::time::Duration::from_secs(3));
    let received = Arc::new(Mutex::new(Vec::<String>::new()));
    let receiver = HttpsReceiver::start_on(port, received.clone());
    let records = || {
        received
            .lock()
            .unwrap()
            .iter()
            .flat_map(|body| body.lines().map(str::to_owned).collect::<Vec<_>>())
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(&line).ok())
            .filter(|value| value["seq"].is_u64())
            .collect::<Vec<_>>()
    };
    let seqs = || -> std::collections::BTreeSet<u64> {
        records()
            .iter()
            .map(|record| record["seq"].as_u64().unwrap())
            .collect()
    };
    wait_for("the request at the receiver", || {
        records()
            .iter()
            .any(|record| record["event"]["request"]["id"] == id.as_str())
            .then_some(())
    });
    let got = seqs();
    let last = *got.last().unwrap();
    assert_eq!(got, (0..=last).collect(), "a gap");
    // Every body ends in its checkpoint, which the journal holds.
    for body in receiver.bodies() {
        assert!(
            body.lines()
                .last()
                .unwrap()
                .starts_with(r#"{"checkpoint":"#),
            "{body}"
        );
    }
    // Down after it had records: what is written meanwhile waits, and arrives once it is back.
    let had = last;
    drop(receiver);
    let approved = scenario.gatekeeper(&["approve", &id]);
    assert!(approved.status.success(), "{approved:?}");
    assert_eq!(scenario.agent_exec(), Exec::Ran);
    scenario.wait_journal("grant_used", |event| event["request_id"] == id.as_str());
    std::thread::sleep(std::time::Duration::from_secs(2));
    let receiver = HttpsReceiver::start_on(port, received.clone());
    wait_for("the backlog at the receiver", || {
        records()
            .iter()
            .any(|record| record["event"]["type"] == "grant_used")
            .then_some(())
    });
    let got = seqs();
    let last = *got.last().unwrap();
    assert!(last > had);
    assert_eq!(
        got,
        (0..=last).collect(),
        "a gap after the receiver was down"
    );
    // The journal notes how far the receiver has acknowledged.
    scenario.stop_daemon();
    let url = format!("https://127.0.0.1:{port}/records");
    let noted = scenario
        .journal_events()
        .iter()
        .rev()
        .find(|event| event["type"] == "checkpoint")
        .and_then(|event| event["state"]["forwarded"][&url].as_u64());
    assert!(noted.is_some_and(|noted| noted >= had), "{noted:?}");
    let log = dir.join("receiver.log");
    std::fs::write(&log, receiver.bodies().join("\n")).unwrap();
    let verified = scenario.gatekeeper(&[
        "journal",
        "verify",
        "--checkpoints",
        &log.display().to_string(),
        &scenario.journal.display().to_string(),
    ]);
    assert!(verified.status.success(), "{verified:?}");
}

/// Syslog over TLS (`tls = true`): the receiver's certificate verified against `ca_file`; the
/// records arrive as over plain TCP.
#[test]
fn records_reach_a_syslog_receiver_over_tls() {
    let port = free_port();
    let dir = Path::new("/tmp/gk-forward-tls");
    let received = Arc::new(Mutex::new(Vec::new()));
    let receiver = SyslogReceiver::start_on(port, received, true);
    let mut scenario = Scenario::prepare(
        "forward-tls",
        Options {
            extra: format!(
                "[[audit.forward]]\nkind = \"syslog\"\naddress = \"127.0.0.1:{port}\"\ntls = true\nca_file = \"{}\"\n",
                dir.join("ca.pem").display()
            ),
            ..Options::default()
        },
    );
    std::fs::write(dir.join("ca.pem"), TEST_CA_PEM).unwrap();
    scenario.start_daemon();
    let id = scenario.denied_request();
    wait_for("the request at the receiver", || {
        receiver
            .messages()
            .iter()
            .any(|message| message.contains(" record - ") && message.contains(&id))
            .then_some(())
    });
    let records = forwarded_records(&receiver.messages());
    assert_eq!(records[0].0, 0, "{records:?}");
}
