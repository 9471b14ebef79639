//! The daemon's footprint: start-up (fresh, adopting its pins, on a long journal) and memory.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use gatekeeper_daemon::journal::{Event, Journal};
use gatekeeper_tests::Scenario;
use serde::Serialize;
use serde_json::Value;

use crate::{Params, procfs};

const START_PATIENCE: Duration = Duration::from_secs(30 * 60);
/// Records between checkpoints, as the daemon writes them by default.
const CHECKPOINT_EVERY: u64 = 1000;
/// How long the daemon is left alone before its idle memory and CPU are read.
pub const IDLE: Duration = Duration::from_secs(5);

/// Starts the daemon and returns how long until it answered `status` as enforcing: the time of
/// the first successful status call's start (the socket only exists once it enforces).
pub fn timed_start(scenario: &mut Scenario) -> anyhow::Result<Duration> {
    // A socket a crashed daemon left would make the first polls look ready.
    let _ = std::fs::remove_file(&scenario.socket);
    let started = Instant::now();
    scenario.spawn_daemon();
    loop {
        if let Some(status) = scenario.daemon_exited() {
            bail!("the daemon exited with {status}: {}", scenario.daemon_log());
        }
        if scenario.socket.exists() {
            let at = started.elapsed();
            if scenario.gatekeeper(&["status"]).status.success() {
                return Ok(at);
            }
        }
        if started.elapsed() > START_PATIENCE {
            bail!("the daemon did not start within {START_PATIENCE:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[derive(Serialize)]
pub struct Idle {
    pub rss_kb: u64,
    pub anon_kb: u64,
    /// CPU the daemon used per second while idle.
    pub cpu_ns_per_s: u64,
}

pub fn idle(scenario: &Scenario) -> anyhow::Result<Idle> {
    let pid = scenario.daemon_pid();
    let cpu = procfs::cpu_ns(pid)?;
    std::thread::sleep(IDLE);
    let used = procfs::cpu_ns(pid)?.saturating_sub(cpu);
    Ok(Idle {
        rss_kb: procfs::status_kb(pid, "VmRSS")?,
        anon_kb: procfs::status_kb(pid, "RssAnon")?,
        cpu_ns_per_s: used * 1_000_000_000 / IDLE.as_nanos() as u64,
    })
}

/// Restarts that adopt the pinned programs and maps, as after an upgrade or a crash.
pub fn restarts(scenario: &mut Scenario, count: usize) -> anyhow::Result<Vec<u64>> {
    let mut times = Vec::new();
    for _ in 0..count {
        scenario.stop_daemon();
        times.push(timed_start(scenario)?.as_nanos() as u64);
    }
    Ok(times)
}

#[derive(Serialize)]
pub struct JournalStart {
    /// Records added so far.
    pub records: u64,
    pub bytes: u64,
    pub start_ns: u64,
    pub rss_kb: u64,
}

#[derive(Serialize)]
pub struct LongJournal {
    pub asked: u64,
    pub generate_ns: u64,
    /// A start at half the records and one at all of them: start-up's cost per record.
    pub starts: Vec<JournalStart>,
    /// `gatekeeper journal verify` on the whole journal.
    pub verify_ns: u64,
}

/// What the generator copies, as the daemon itself wrote it.
struct Templates {
    /// The events of the last request seen through to a used grant, in order: a whole life.
    cycle: Vec<Value>,
    request_id: String,
    grant_id: u64,
    /// The daemon's last checkpoint (its state then), if it wrote one.
    checkpoint: Option<Value>,
}

fn templates(journal: &Path) -> anyhow::Result<Templates> {
    let events: Vec<Value> = std::fs::read_to_string(journal)?
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).map(|record| record["event"].clone()))
        .collect::<Result<_, _>>()?;
    let used = events
        .iter()
        .rev()
        .find(|event| event["type"] == "grant_used")
        .context("no used grant in the journal to copy")?;
    let request_id = used["request_id"]
        .as_str()
        .context("grant_used without request_id")?
        .to_owned();
    let grant_id = used["grant_id"]
        .as_u64()
        .context("grant_used without grant_id")?;
    let checkpoint = events
        .iter()
        .rev()
        .find(|event| event["type"] == "checkpoint")
        .cloned();
    let needle = format!("\"{request_id}\"");
    let cycle: Vec<Value> = events
        .into_iter()
        .filter(|event| event["type"] != "checkpoint" && event.to_string().contains(&needle))
        .collect();
    Ok(Templates {
        cycle,
        request_id,
        grant_id,
        checkpoint,
    })
}

/// `value` with every occurrence of the template's ids replaced by this copy's.
fn instantiate(value: &Value, request_id: &str, grant_id: u64, copy: u64) -> Value {
    match value {
        Value::String(text) if text == request_id => Value::String(format!("{request_id}{copy:x}")),
        Value::Number(number) if number.as_u64() == Some(grant_id) => {
            Value::from(grant_id.wrapping_add(copy + 1) & (u64::MAX >> 1))
        }
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|item| instantiate(item, request_id, grant_id, copy))
                .collect(),
        ),
        Value::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(key, item)| (key.clone(), instantiate(item, request_id, grant_id, copy)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Appends copies of one request's whole life to the daemon's journal through the daemon's own
/// journal code (so the records follow its format), with a copy of its last checkpoint every
/// [`CHECKPOINT_EVERY`] records as the daemon would write them, and times a start at a tenth
/// and at all of `params.journal` records.
pub fn long_journal(scenario: &mut Scenario, params: &Params) -> anyhow::Result<LongJournal> {
    scenario.stop_daemon();
    let templates = templates(&scenario.journal)?;
    let checkpoint: Option<Event> = templates
        .checkpoint
        .clone()
        .map(serde_json::from_value)
        .transpose()?;
    let mut result = LongJournal {
        asked: params.journal,
        generate_ns: 0,
        starts: Vec::new(),
        verify_ns: 0,
    };
    let mut records = 0u64;
    let mut copy = 0u64;
    let mut writing = Duration::ZERO;
    // Two sizes: the line through them tells the cost per record.
    for target in [params.journal / 10, params.journal] {
        let started = Instant::now();
        let mut journal = Journal::open(&scenario.journal)?.journal;
        'fill: while records < target {
            for template in &templates.cycle {
                let event: Event = serde_json::from_value(instantiate(
                    template,
                    &templates.request_id,
                    templates.grant_id,
                    copy,
                ))?;
                journal.append(&event)?;
                records += 1;
                if let Some(checkpoint) = &checkpoint
                    && journal.since_checkpoint() >= CHECKPOINT_EVERY
                {
                    journal.append(checkpoint)?;
                    records += 1;
                }
                if records >= target
                    || (records.is_multiple_of(1000)
                        && (writing + started.elapsed()).as_secs() > params.journal_secs)
                {
                    break 'fill;
                }
            }
            copy += 1;
        }
        drop(journal);
        writing += started.elapsed();
        result.generate_ns = writing.as_nanos() as u64;
        println!("bench: journal has {records} more records");
        let bytes = std::fs::metadata(&scenario.journal)?.len();
        let start_ns = timed_start(scenario)?.as_nanos() as u64;
        std::thread::sleep(Duration::from_secs(2));
        let rss_kb = procfs::status_kb(scenario.daemon_pid(), "VmRSS")?;
        scenario.stop_daemon();
        result.starts.push(JournalStart {
            records,
            bytes,
            start_ns,
            rss_kb,
        });
    }
    // Verified with the daemon stopped: it would append while the journal is read.
    let verify_started = Instant::now();
    let journal_path = scenario.journal.display().to_string();
    let verified = scenario.gatekeeper(&["journal", "verify", &journal_path]);
    result.verify_ns = verify_started.elapsed().as_nanos() as u64;
    if !verified.status.success() {
        bail!("the long journal does not verify: {verified:?}");
    }
    Ok(result)
}
