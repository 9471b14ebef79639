//! The journal as auditors rely on it: sealed with keys the host no longer holds, and out of
//! agents' reach.

use std::{os::unix::fs::PermissionsExt as _, path::Path};

use gatekeeper_tests::{Options, Outcome, Scenario};
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
    let mut scenario = Scenario::start("sealing", Options::default());
    let config = scenario.config.display().to_string();
    let journal = scenario.journal.display().to_string();
    // Made through the running daemon, which guards the file before the key is in it.
    let setup = scenario.gatekeeper(&["--config", &config, "journal", "setup-keys"]);
    assert!(setup.status.success(), "{setup:?}");
    let printed = String::from_utf8_lossy(&setup.stdout).into_owned();
    let verification = printed.lines().last().unwrap().to_owned();
    assert!(verification.starts_with("gkseal1-"), "{printed}");
    let key = scenario.dir.join("seal.key");
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

    let id = scenario.denied_request();
    // Stopping seals what came last.
    scenario.stop_daemon();
    let verify = |key: &str| scenario.gatekeeper(&["journal", "verify", "--key", key, &journal]);
    let intact = verify(&verification);
    assert!(intact.status.success(), "{intact:?}");
    assert!(
        String::from_utf8_lossy(&intact.stdout).contains("sealed through record"),
        "{intact:?}"
    );
    let other_key = format!("gkseal1-{}", "11".repeat(32));
    assert!(!verify(&other_key).status.success());
    let bad_key = verify("not-a-key");
    assert!(
        String::from_utf8_lossy(&bad_key.stderr).contains("not a verification key"),
        "{bad_key:?}"
    );

    // The request's record rewritten (another id) and every hash after it recomputed: the
    // chain alone looks intact, the seals do not.
    rewrite_with_fresh_hashes(&scenario.journal, |body| body.replace(&id, "forged"));
    let chain = scenario.gatekeeper(&["journal", "verify", &journal]);
    assert!(chain.status.success(), "{chain:?}");
    let sealed = verify(&verification);
    assert!(!sealed.status.success(), "{sealed:?}");
    assert!(
        String::from_utf8_lossy(&sealed.stderr).contains("seal of epoch"),
        "{sealed:?}"
    );
}
