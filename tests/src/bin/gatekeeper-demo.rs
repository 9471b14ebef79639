//! `cargo xtask demo`: the main story, told step by step inside a guest.

use std::time::Duration;

use gatekeeper_tests::{Exec, Options, Outcome, Scenario, wait_for};

fn step(text: &str) {
    println!("\ndemo: {text}");
    std::thread::sleep(Duration::from_millis(300));
}

fn show(label: &str, exec: &Exec) {
    let verdict = match exec {
        Exec::Ran => "ran".to_owned(),
        Exec::Denied => "blocked by the kernel (EPERM)".to_owned(),
        Exec::Other(what) => format!("unexpected: {what}"),
    };
    println!("      {label}: {verdict}");
}

fn main() -> std::process::ExitCode {
    step("starting the Gatekeeper daemon; the agent runs in its own cgroup");
    let scenario = Scenario::start("demo", Options::default());
    println!("      agent cgroup: {}", scenario.agents.display());
    println!(
        "      protected:    {} (\"database export\")",
        scenario.protected.display()
    );

    step("the agent tries to run the database export");
    let first = scenario.agent_exec();
    show("agent exec", &first);

    step("the daemon turned the denial into a request and sent it to the reviewers' webhook");
    let request = scenario.wait_request(&scenario.protected);
    let id = request["id"].as_str().unwrap_or_default().to_owned();
    let hook = scenario.webhook.as_ref().map(|hook| {
        wait_for("the webhook delivery", || {
            hook.received().into_iter().next()
        })
    });
    if let Some(message) = &hook {
        let body = message.json();
        let field = |name: &str| body["request"][name].as_str().unwrap_or("?").to_owned();
        println!(
            "      webhook received request {} for {} from {} (rule: {})",
            field("id"),
            field("target"),
            field("cgroup"),
            field("rule")
        );
    }

    step(&format!(
        "a reviewer approves: gatekeeper approve {id} --reason 'nightly backup'"
    ));
    let approval = scenario.gatekeeper(&["approve", &id, "--reason", "nightly backup"]);
    print!("      {}", String::from_utf8_lossy(&approval.stdout));

    step("the agent retries: the single-use grant lets exactly this one through");
    let retry = scenario.agent_exec();
    show("retry", &retry);

    step("and tries once more: the grant is spent");
    let again = scenario.agent_exec();
    show("next try", &again);

    step("the agent, root in its cgroup, tries to kill the daemon and to detach the programs");
    let daemon = scenario.daemon_pid().to_string();
    let kill = scenario.tamper(&scenario.agents, "kill", &[&daemon, "9"]);
    let link = scenario.pin_dir.join("link_bprm_check_security");
    let unpin = scenario.tamper(&scenario.agents, "unlink", &[&link.display().to_string()]);
    println!(
        "      kill -9 {daemon}: {kill:?}; rm {}: {unpin:?}",
        link.display()
    );
    let alive = scenario.gatekeeper(&["status"]).status.success();
    println!("      daemon still enforcing: {alive}");
    scenario.wait_journal("tamper_attempt", |_| true);

    step("an auditor verifies the hash-chained journal");
    scenario.wait_journal("grant_used", |event| event["request_id"] == id.as_str());
    let journal = scenario.journal.display().to_string();
    let verify = scenario.gatekeeper(&["journal", "verify", &journal]);
    print!("      {}", String::from_utf8_lossy(&verify.stdout));
    for event in scenario.journal_events() {
        println!("      journal: {}", event["type"].as_str().unwrap_or("?"));
    }

    let told = first == Exec::Denied
        && hook.is_some()
        && approval.status.success()
        && retry == Exec::Ran
        && again == Exec::Denied
        && kill == Outcome::Denied
        && unpin == Outcome::Denied
        && alive
        && verify.status.success();
    if told {
        println!("\ndemo: complete");
        std::process::ExitCode::SUCCESS
    } else {
        println!("\ndemo: FAILED (see above)");
        std::process::ExitCode::FAILURE
    }
}
