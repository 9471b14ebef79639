//! `cargo xtask bench`, inside the guest: what Gatekeeper costs, measured in one boot.
//!
//! `gatekeeper-bench run` measures everything and prints the raw figures as JSON between
//! [`BEGIN`] and [`END`] lines; xtask turns them into the table. Sizes come from the kernel
//! command line, `gk.bench=rounds:15,flood:1000000,...` (see [`Params`]).
//! `gatekeeper-bench worker CGROUP` is the measured process (see `worker`).

mod approval;
mod fapolicyd;
mod footprint;
mod kernel;
mod overhead;
mod procfs;
mod worker;

use std::{
    panic::AssertUnwindSafe,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use gatekeeper_tests::{Options, Scenario};
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::{kernel::GatekeeperLinks, worker::Worker};

const BEGIN: &str = "GK-BENCH-JSON-BEGIN";
const END: &str = "GK-BENCH-JSON-END";
const PHASES: [&str; 5] = ["overhead", "hooks", "approval", "flood", "footprint"];
const RESTARTS: usize = 3;

/// How much to measure. Smaller figures make a quicker, noisier run.
#[derive(Debug, Clone, Serialize)]
pub struct Params {
    /// Interleaved rounds of the syscall loops.
    pub rounds: usize,
    /// Target length of one loop run, in ms (iterations are sized to it).
    pub run_ms: u64,
    /// Approval cycles timed.
    pub requests: usize,
    /// Denied attempts in the flood, and a time cap on it.
    pub flood: u64,
    pub flood_secs: u64,
    /// Records added to the journal for the long-journal starts, and a time cap on writing them.
    /// Starts are timed at a tenth and at all of them, so start-up's cost per record shows.
    pub journal: u64,
    pub journal_secs: u64,
    /// The phases to run (all by default).
    pub only: Vec<String>,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            rounds: 10,
            run_ms: 150,
            requests: 500,
            flood: 1_000_000,
            flood_secs: 300,
            journal: 1_000_000,
            journal_secs: 600,
            only: PHASES.iter().map(|phase| phase.to_string()).collect(),
        }
    }
}

impl Params {
    /// Reads `gk.bench=key:value,...` from a kernel command line.
    fn parse(cmdline: &str) -> anyhow::Result<Self> {
        let mut params = Self::default();
        let Some(spec) = cmdline
            .split_whitespace()
            .find_map(|word| word.strip_prefix("gk.bench="))
        else {
            return Ok(params);
        };
        for pair in spec.split(',').filter(|pair| !pair.is_empty()) {
            let (key, value) = pair
                .split_once(':')
                .with_context(|| format!("gk.bench: {pair} is not key:value"))?;
            let number = || {
                value
                    .parse::<u64>()
                    .with_context(|| format!("gk.bench: {key} wants a number"))
            };
            match key {
                "rounds" => params.rounds = number()?.max(1) as usize,
                "run_ms" => params.run_ms = number()?.max(1),
                "requests" => params.requests = number()? as usize,
                "flood" => params.flood = number()?,
                "flood_secs" => params.flood_secs = number()?,
                "journal" => params.journal = number()?,
                "journal_secs" => params.journal_secs = number()?,
                "only" => params.only = value.split('+').map(str::to_owned).collect(),
                _ => bail!("gk.bench: unknown key {key}"),
            }
        }
        Ok(params)
    }

    fn wants(&self, phase: &str) -> bool {
        self.only.iter().any(|wanted| wanted == phase)
    }
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|text| text.to_string()))
        .unwrap_or_else(|| "panicked".into())
}

/// Runs one part of the bench; its failure (or a harness panic) is recorded and the rest runs.
fn phase<T: Serialize>(
    report: &mut Map<String, Value>,
    name: &str,
    body: impl FnOnce() -> anyhow::Result<T>,
) {
    println!("bench: {name}");
    let started = Instant::now();
    let value = match std::panic::catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(value)) => serde_json::to_value(value)
            .unwrap_or_else(|error| json!({ "error": error.to_string() })),
        Ok(Err(error)) => json!({ "error": format!("{error:#}") }),
        Err(panic) => json!({ "error": panic_text(panic.as_ref()) }),
    };
    if let Some(error) = value.get("error") {
        println!("bench: {name} failed: {error}");
    }
    println!("bench: {name} took {:.1?}", started.elapsed());
    report.insert(name.to_owned(), value);
}

fn run() -> anyhow::Result<()> {
    let params = Params::parse(&std::fs::read_to_string("/proc/cmdline")?)?;
    println!("bench: {params:?}");
    let started = Instant::now();
    let mut report = Map::new();
    report.insert(
        "kernel".into(),
        json!(std::fs::read_to_string("/proc/sys/kernel/osrelease")?.trim()),
    );
    report.insert("params".into(), serde_json::to_value(&params)?);

    // A protected directory on the device of the loops' files: every open of an agent there
    // walks up to the file system's root looking for it.
    let secrets = "/tmp/gk-bench/secrets";
    let mut scenario = Scenario::prepare(
        "bench",
        Options {
            extra: format!(
                "{}[[protect.file]]\npath = \"{secrets}\"\nname = \"bench secrets\"\n",
                approval::FLOOD_RULE
            ),
            // The default rate limit (10, then one per 6 s) would time itself, not the path.
            webhook_burst: Some(approval::WEBHOOK_BURST),
            ..Options::default()
        },
    );
    std::fs::create_dir_all(secrets)?;
    let mut footprint = Map::new();
    let fresh = footprint::timed_start(&mut scenario)?;
    footprint.insert("fresh_start_ns".into(), json!(fresh.as_nanos() as u64));
    phase(&mut footprint, "idle", || footprint::idle(&scenario));

    let mut outside = Worker::spawn(&scenario.outside)?;
    let mut agent = Worker::spawn(&scenario.agents)?;

    if params.wants("overhead") || params.wants("hooks") {
        let adopted = GatekeeperLinks::adopt(&scenario.pin_dir);
        match adopted {
            Ok(mut links) => {
                links.detach();
                let mut floors = kernel::Floors::load();
                if let Err(error) = &floors {
                    println!("bench: no floor programs: {error:#}");
                }
                let mut sizes = Default::default();
                phase(&mut report, "iterations", || {
                    sizes = overhead::calibrate(&mut outside, &params)?;
                    Ok(sizes.clone())
                });
                if params.wants("overhead") {
                    phase(&mut report, "overhead", || {
                        overhead::run(
                            &params,
                            &mut links,
                            floors.as_mut().ok(),
                            &mut outside,
                            &mut agent,
                            &sizes,
                        )
                    });
                }
                if params.wants("hooks") {
                    phase(&mut report, "hooks", || {
                        let floors = floors
                            .as_mut()
                            .map_err(|error| anyhow::anyhow!("no floor programs: {error:#}"))?;
                        overhead::hooks(&mut links, floors, &mut outside, &mut agent, &sizes)
                    });
                }
                links.restore().context("pin the daemon's links back")?;
            }
            Err(error) => {
                let error = json!({ "error": format!("take the daemon's links: {error:#}") });
                report.insert("overhead".into(), error.clone());
                report.insert("hooks".into(), error);
            }
        }
    }
    if params.wants("approval") {
        phase(&mut report, "approval", || {
            approval::approval(&scenario, &mut agent, &params)
        });
    }
    if params.wants("flood") {
        phase(&mut report, "flood", || {
            approval::flood(&scenario, &mut agent, &params)
        });
    }
    if params.wants("footprint") {
        phase(&mut footprint, "restart_ns", || {
            footprint::restarts(&mut scenario, RESTARTS)
        });
        phase(&mut footprint, "long_journal", || {
            footprint::long_journal(&mut scenario, &params)
        });
    }
    report.insert("footprint".into(), Value::Object(footprint));
    report.insert(
        "bench_secs".into(),
        json!(started.elapsed().as_secs_f64().round()),
    );
    // Workers live in the scenario's cgroups, which go when it is dropped.
    drop(agent);
    drop(outside);
    drop(scenario);

    println!("{BEGIN}");
    println!("{}", serde_json::to_string_pretty(&Value::Object(report))?);
    println!("{END}");
    // Lets the console drain before the guest powers off.
    std::thread::sleep(Duration::from_millis(500));
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["run"] => run(),
        ["worker", cgroup] => worker::serve(cgroup),
        _ => {
            eprintln!("usage: gatekeeper-bench run | worker CGROUP");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("gatekeeper-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_come_from_the_command_line() {
        let params =
            Params::parse("console=ttyS0 gk.mode=bench gk.bench=rounds:3,only:hooks+flood")
                .expect("valid");
        assert_eq!(params.rounds, 3);
        assert!(params.wants("flood") && !params.wants("overhead"));
        assert_eq!(params.flood, Params::default().flood);
        assert!(Params::parse("gk.bench=speed:9").is_err());
    }
}
