//! The approval path end to end, and a flood of denials: the daemon seen from outside, through
//! its webhook, its HTTP decision endpoint and its CLI.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use gatekeeper_tests::{
    PATIENCE, Scenario, decision_signature, monotonic_ns, now_unix, reviewer_key,
};
use serde::Serialize;
use serde_json::Value;

use crate::{Params, procfs, worker::Worker};

/// The destination the flood hammers: protected by the bench's config, and nothing listens.
pub const FLOOD_TARGET: &str = "127.0.9.9:9";
pub const FLOOD_RULE: &str = "[[protect.connect]]\nname = \"flood target\"\ncidr = \"127.0.9.9\"\nports = [9]\nprotocol = \"tcp\"\n";
/// The bench's webhook may take this many messages before its rate limit: more than the bench
/// sends (the largest `burst` the config allows).
pub const WEBHOOK_BURST: u32 = 1000;
/// First cycles are not counted: the first delivery opens connections, pages fault in.
const WARM_UP: usize = 5;

/// Decides over HTTP like a generic webhook's receiver would, on one kept-alive connection.
pub struct Reviewer {
    agent: ureq::Agent,
    base: String,
}

impl Reviewer {
    pub fn new(scenario: &Scenario) -> Self {
        Self {
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build()
                .into(),
            base: scenario.http.clone(),
        }
    }

    pub fn approve(&self, id: &str) -> anyhow::Result<()> {
        let body = r#"{"decision":"approve","reviewer":"alice"}"#;
        let timestamp = now_unix();
        let mut response = self
            .agent
            .post(format!("{}/v1/requests/{id}/decision", self.base))
            .header("content-type", "application/json")
            .header("x-gatekeeper-timestamp", timestamp.to_string())
            .header(
                "x-gatekeeper-signature",
                decision_signature(&reviewer_key("alice"), timestamp, body),
            )
            .send(body)?;
        let status = response.status().as_u16();
        if status != 200 {
            let text = response.body_mut().read_to_string().unwrap_or_default();
            bail!("approving {id}: HTTP {status} {text}");
        }
        Ok(())
    }
}

/// Waits for the first webhook delivery from number `from` (counted from 0) on that names
/// `target`; returns (request id, arrival ns).
fn webhook(scenario: &Scenario, from: usize, target: &str) -> anyhow::Result<(String, u64)> {
    let hook = scenario
        .webhook
        .as_ref()
        .context("the scenario has no webhook")?;
    let deadline = Instant::now() + PATIENCE;
    let mut index = from;
    loop {
        while let Some(message) = hook.nth(index) {
            index += 1;
            let body = message.json();
            // One request, or several in a digest.
            let mut requests = vec![body["request"].clone()];
            requests.extend(body["requests"].as_array().cloned().unwrap_or_default());
            if let Some(request) = requests.iter().find(|request| request["target"] == target) {
                let id = request["id"]
                    .as_str()
                    .context("webhook without request id")?
                    .to_owned();
                return Ok((id, message.at_ns));
            }
        }
        if Instant::now() > deadline {
            bail!("no webhook delivery for {target}");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[derive(Serialize)]
pub struct Approval {
    pub requests: usize,
    /// From the denied execve returning in the agent to the webhook's POST received.
    pub deny_to_webhook_ns: Vec<u64>,
    /// From sending the approval to its answer: the daemon answers once the grant is in the
    /// kernel's map.
    pub decision_to_grant_ns: Vec<u64>,
    /// Retries that ran after their approval (each must).
    pub retries_passed: usize,
}

/// One whole cycle: denial, webhook, approval, retry. Returns (deny to webhook, decision to
/// grant) in ns.
fn cycle(
    scenario: &Scenario,
    agent: &mut Worker,
    reviewer: &Reviewer,
    index: usize,
) -> anyhow::Result<(u64, u64)> {
    let protected = scenario.protected.display().to_string();
    let denied_at = *agent
        .call(&format!("deny {protected}"))?
        .first()
        .context("no time")?;
    let (id, received_at) = webhook(scenario, index, &protected)?;
    let sent = monotonic_ns();
    reviewer.approve(&id)?;
    let granted = monotonic_ns();
    agent
        .call(&format!("pass {protected}"))
        .context("the retry after approval")?;
    Ok((
        received_at.saturating_sub(denied_at),
        granted.saturating_sub(sent),
    ))
}

/// Deliveries the webhook has had so far.
fn deliveries(scenario: &Scenario) -> usize {
    scenario.webhook.as_ref().map_or(0, |hook| hook.count())
}

pub fn approval(
    scenario: &Scenario,
    agent: &mut Worker,
    params: &Params,
) -> anyhow::Result<Approval> {
    let reviewer = Reviewer::new(scenario);
    let mut result = Approval {
        requests: params.requests,
        deny_to_webhook_ns: Vec::new(),
        decision_to_grant_ns: Vec::new(),
        retries_passed: 0,
    };
    for index in 0..params.requests + WARM_UP {
        let (to_webhook, to_grant) = cycle(scenario, agent, &reviewer, deliveries(scenario))?;
        if index >= WARM_UP {
            result.deny_to_webhook_ns.push(to_webhook);
            result.decision_to_grant_ns.push(to_grant);
            result.retries_passed += 1;
        }
    }
    Ok(result)
}

fn status(scenario: &Scenario) -> anyhow::Result<Value> {
    let output = scenario.gatekeeper(&["status", "--json"]);
    if !output.status.success() {
        bail!("gatekeeper status failed: {output:?}");
    }
    Ok(serde_json::from_slice(&output.stdout)?)
}

fn counter(status: &Value, name: &str) -> u64 {
    status[name].as_u64().unwrap_or(0)
}

fn flood_request(scenario: &Scenario) -> Option<Value> {
    let target = format!("tcp {FLOOD_TARGET}");
    scenario
        .requests(true)
        .into_iter()
        .rev()
        .find(|request| request["target"] == target.as_str())
}

#[derive(Serialize, Default)]
pub struct Flood {
    pub attempts: u64,
    /// Attempts the agent saw denied (EPERM).
    pub denied: u64,
    pub elapsed_ns: u64,
    /// The daemon's kernel counters over the flood.
    pub kernel_denied: u64,
    pub events_dropped: u64,
    /// Denials the daemon took in: the flood request's attempts.
    pub events_received: u64,
    /// Requests the flood made (one, joined by the rest, while it is pending).
    pub requests: usize,
    /// From the flood's end until the daemon had taken in every event not dropped.
    pub drain_ns: u64,
    pub daemon_cpu_ns: u64,
    pub daemon_rss_before_kb: u64,
    pub daemon_peak_kb: u64,
    pub daemon_rss_after_kb: u64,
    /// After the flood: its request approved, and the retry let through.
    pub decision_after: bool,
    /// After the flood: a fresh exec request delivered, approved and used.
    pub exec_cycle_after: bool,
}

pub fn flood(scenario: &Scenario, agent: &mut Worker, params: &Params) -> anyhow::Result<Flood> {
    let pid = scenario.daemon_pid();
    let before = status(scenario)?;
    let requests_before = scenario.requests(true).len();
    let mut result = Flood {
        daemon_rss_before_kb: procfs::status_kb(pid, "VmRSS")?,
        ..Flood::default()
    };
    procfs::reset_peak(pid)?;
    let cpu_before = procfs::cpu_ns(pid)?;
    // VmHWM is the kernel's peak; sampling VmRSS too keeps an eye on it.
    let stop = Arc::new(AtomicBool::new(false));
    let sampled_peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let stop = stop.clone();
        let sampled_peak = sampled_peak.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(rss) = procfs::status_kb(pid, "VmRSS") {
                    sampled_peak.fetch_max(rss, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        })
    };
    let fields = agent.call(&format!(
        "flood {FLOOD_TARGET} {} {}",
        params.flood, params.flood_secs
    ));
    let flood_end = Instant::now();
    let measured = (|| {
        let fields = fields?;
        let field = |index: usize| fields.get(index).copied().context("short flood answer");
        result.attempts = field(0)?;
        result.denied = field(1)?;
        result.elapsed_ns = field(3)?;
        // The daemon catches up with the ring buffer: done when every denial is either taken
        // in or counted as dropped, or when nothing moves any more.
        let deadline = Instant::now() + Duration::from_secs(600);
        let mut last = (u64::MAX, u64::MAX);
        let mut still_since = Instant::now();
        loop {
            let now = status(scenario)?;
            result.kernel_denied =
                counter(&now, "denied").saturating_sub(counter(&before, "denied"));
            result.events_dropped =
                counter(&now, "events_dropped").saturating_sub(counter(&before, "events_dropped"));
            result.events_received = flood_request(scenario)
                .and_then(|request| request["attempts"].as_u64())
                .unwrap_or(0);
            if result.events_received + result.events_dropped >= result.kernel_denied {
                break;
            }
            let seen = (result.events_received, result.events_dropped);
            if seen != last {
                last = seen;
                still_since = Instant::now();
            } else if still_since.elapsed() > Duration::from_secs(10) {
                break;
            }
            if Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        result.drain_ns = flood_end.elapsed().as_nanos() as u64;
        Ok::<_, anyhow::Error>(())
    })();
    result.daemon_cpu_ns = procfs::cpu_ns(pid)?.saturating_sub(cpu_before);
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    result.daemon_peak_kb =
        procfs::status_kb(pid, "VmHWM")?.max(sampled_peak.load(Ordering::Relaxed));
    measured?;
    result.requests = scenario
        .requests(true)
        .len()
        .saturating_sub(requests_before);

    // Decisions still work: the flood's own request, then a whole exec cycle.
    let reviewer = Reviewer::new(scenario);
    if let Some(id) =
        flood_request(scenario).and_then(|request| request["id"].as_str().map(str::to_owned))
    {
        reviewer.approve(&id)?;
        let errno = agent
            .call(&format!("connect {FLOOD_TARGET}"))?
            .first()
            .copied()
            .unwrap_or(0);
        // Nothing listens there: refused by the peer, not by Gatekeeper.
        result.decision_after = errno != libc::EPERM as u64;
    }
    result.exec_cycle_after = cycle(scenario, agent, &reviewer, deliveries(scenario)).is_ok();
    std::thread::sleep(Duration::from_secs(2));
    result.daemon_rss_after_kb = procfs::status_kb(pid, "VmRSS")?;
    Ok(result)
}
