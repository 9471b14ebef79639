//! `cargo xtask bench`: boots one guest that measures what Gatekeeper costs (the
//! `gatekeeper-bench` binary), then turns its raw figures into a table with the goals.
//!
//! Everything is measured in the same guest run under TCG, so the table compares ratios (and
//! TCG times, which are upper bounds on hardware), never absolute native times.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::{ensure_setup, guest, setup, workspace_root};

const BEGIN: &str = "GK-BENCH-JSON-BEGIN";
const END: &str = "GK-BENCH-JSON-END";
const BENCH_TIMEOUT: Duration = Duration::from_secs(45 * 60);
/// The long-journal start holds the whole journal in the guest's memory (tmpfs) and the daemon's.
const BENCH_MEMORY_MB: u32 = 4096;
/// A quick, noisy run for development: a few rounds and small floods and journals.
const QUICK: &str =
    "rounds:3,run_ms:100,requests:20,flood:50000,flood_secs:60,journal:20000,journal_secs:60";

/// fapolicyd's upstream "known-libs" policy, the sample rules its README names for it, in order.
const FAPOLICYD_RULES: [&str; 11] = [
    "10-languages.rules",
    "20-dracut.rules",
    "21-updaters.rules",
    "30-patterns.rules",
    "40-bad-elf.rules",
    "41-shared-obj.rules",
    "42-trusted-elf.rules",
    "70-trusted-lang.rules",
    "72-shell.rules",
    "90-deny-execute.rules",
    "95-allow-open.rules",
];

/// Guest time under QEMU, for the bench.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Clock {
    /// One nanosecond per guest instruction (QEMU icount): what the host does meanwhile does
    /// not enter the figures.
    Instructions,
    /// The host's real time, which TCG follows: every hiccup of a shared host shows.
    Host,
}

impl Clock {
    /// Linux 6.1 hangs bringing up its second CPU under icount (QEMU 7.2): it gets one.
    fn one_cpu(self, kernel: &str) -> bool {
        self == Self::Instructions && kernel == "6.1"
    }

    fn qemu_args(self, kernel: &str) -> &'static [&'static str] {
        match self {
            // sleep=off: an idle guest's clock jumps to its next timer instead of waiting. A
            // later -smp overrides the guests' usual two CPUs.
            Self::Instructions if self.one_cpu(kernel) => {
                &["-icount", "shift=0,sleep=off", "-smp", "1"]
            }
            Self::Instructions => &["-icount", "shift=0,sleep=off"],
            Self::Host => &[],
        }
    }

    fn describe(self, kernel: &str) -> String {
        let clock = match self {
            Self::Instructions => "guest time counted in instructions (QEMU icount, 1 ns each)",
            Self::Host => "guest time following the host's clock",
        };
        let cpus = if self.one_cpu(kernel) {
            "one vCPU (6.1 does not boot a second one under icount)"
        } else {
            "two vCPUs"
        };
        format!("{clock}, {cpus}")
    }
}

pub struct Options {
    pub kernel: String,
    pub clock: Clock,
    pub quick: bool,
    pub rounds: Option<usize>,
    pub only: Option<String>,
    /// More `key:value` settings for the guest, comma-separated.
    pub set: Option<String>,
}

impl Options {
    /// The guest's `gk.bench=` setting.
    fn guest_spec(&self) -> String {
        let mut parts = Vec::new();
        if self.quick {
            parts.push(QUICK.to_owned());
        }
        if let Some(rounds) = self.rounds {
            parts.push(format!("rounds:{rounds}"));
        }
        if let Some(only) = &self.only {
            parts.push(format!("only:{only}"));
        }
        if let Some(set) = &self.set {
            parts.push(set.clone());
        }
        parts.join(",")
    }
}

fn bench_binaries() -> anyhow::Result<Vec<(PathBuf, &'static str)>> {
    crate::build_release_binaries()?;
    let release = workspace_root().join("target/release");
    Ok(["gatekeeper", "gk-helper", "gatekeeper-bench"]
        .into_iter()
        .map(|name| (release.join(name), name))
        .collect())
}

pub fn bench(options: &Options) -> anyhow::Result<ExitCode> {
    let label = setup::KERNELS
        .iter()
        .map(|(label, _)| *label)
        .find(|label| *label == options.kernel)
        .with_context(|| format!("no kernel {}: use 6.1 or 6.12", options.kernel))?;
    ensure_setup()?;
    // One tree per kernel: two benches may run side by side (instruction time does not mind).
    let out = workspace_root().join("target/guest-bench").join(label);
    let root = guest::populate_root(&out, &bench_binaries()?)?;
    let fapolicyd = setup::ensure_fapolicyd()
        .and_then(|staged| install_fapolicyd(&root, &staged))
        .map_err(|error| format!("{error:#}"));
    if let Err(error) = &fapolicyd {
        println!("bench: fapolicyd left out of the guest: {error}");
    }
    let initramfs = guest::pack(&out, &root)?;
    let mut cmdline = format!("{} gk.mode=bench", guest::LSM_ON);
    let spec = options.guest_spec();
    if !spec.is_empty() {
        cmdline.push_str(&format!(" gk.bench={spec}"));
    }
    println!("== bench on Linux {label} (software emulation: this takes a while)");
    let booted = std::time::Instant::now();
    let console = guest::boot_with(
        &setup::kernel_image(label),
        &initramfs,
        &cmdline,
        BENCH_TIMEOUT,
        |line| line.starts_with("bench: ") || line.starts_with("guest: "),
        BENCH_MEMORY_MB,
        options.clock.qemu_args(label),
    )?;
    let results = workspace_root().join("target/bench");
    std::fs::create_dir_all(&results)?;
    let log = results.join(format!("console-{label}.log"));
    std::fs::write(&log, &console)?;
    println!("guest ran for {:.0?} of real time", booted.elapsed());
    let Some(mut raw) = extract(&console) else {
        println!("the bench did not report (console in {})", log.display());
        return Ok(ExitCode::FAILURE);
    };
    if let Err(error) = &fapolicyd {
        raw["overhead"]["fapolicyd"] = json!(format!("not in the guest: {error}"));
    }
    let package =
        std::fs::read_to_string(setup::cache_dir().join(format!("vmlinuz-{label}.package")))
            .unwrap_or_default();
    let date = time::OffsetDateTime::now_utc().date().to_string();
    raw["clock"] = json!(options.clock.describe(label));
    let summary = summarize(&raw);
    let table = render(&raw, &summary, &date, package.trim());
    println!("\n{table}");
    let document =
        json!({ "date": date, "kernel_package": package.trim(), "raw": raw, "summary": summary });
    let json_path = results.join(format!("bench-{label}.json"));
    std::fs::write(&json_path, serde_json::to_string_pretty(&document)?)?;
    std::fs::write(results.join(format!("bench-{label}.md")), &table)?;
    println!("written to {}", json_path.display());
    Ok(ExitCode::SUCCESS)
}

/// The JSON the guest printed between the markers.
fn extract(console: &str) -> Option<Value> {
    let start = console.find(BEGIN)? + BEGIN.len();
    let end = start + console[start..].find(END)?;
    serde_json::from_str(&console[start..end]).ok()
}

fn copy_into(root: &Path, source: &Path, inside: &str) -> anyhow::Result<()> {
    let target = root.join(inside.trim_start_matches('/'));
    if let Some(dir) = target.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::copy(source, &target)
        .with_context(|| format!("copy {} into the guest", source.display()))?;
    Ok(())
}

/// A file of the unpacked packages, else this machine's own.
fn staged_or_host(staged: &Path, path: &str) -> PathBuf {
    let inside = staged.join(path.trim_start_matches('/'));
    if inside.exists() {
        inside
    } else {
        PathBuf::from(path)
    }
}

/// Puts fapolicyd into the guest in the smallest configuration that gates execs as shipped:
/// the package's config with the file trust backend (the guest has no package database) and
/// the root filesystem watched too, the upstream known-libs rules, and a trust list of every file
/// in the guest, as a package database would list every packaged file.
fn install_fapolicyd(root: &Path, staged: &Path) -> anyhow::Result<()> {
    let binary = staged.join("usr/sbin/fapolicyd");
    copy_into(root, &binary, "/usr/sbin/fapolicyd")?;
    let library_dirs = [
        staged.join("usr/lib/x86_64-linux-gnu"),
        staged.join("lib/x86_64-linux-gnu"),
    ];
    guest::copy_libraries(
        root,
        guest::linked_libraries(&binary, &library_dirs)?,
        Some(staged),
    )?;
    copy_into(
        root,
        &staged.join("usr/share/fapolicyd/fapolicyd-magic.mgc"),
        "/usr/share/fapolicyd/fapolicyd-magic.mgc",
    )?;
    // libmagic's own database; its package links it from /usr/share/misc.
    copy_into(
        root,
        &staged_or_host(staged, "/usr/lib/file/magic.mgc"),
        "/usr/share/misc/magic.mgc",
    )?;
    let shipped = std::fs::read_to_string(staged.join("etc/fapolicyd/fapolicyd.conf"))?;
    let config = fapolicyd_config(&shipped)?;
    let etc = root.join("etc/fapolicyd");
    std::fs::create_dir_all(etc.join("trust.d"))?;
    std::fs::write(etc.join("fapolicyd.conf"), config)?;
    let mut rules = String::new();
    for name in FAPOLICYD_RULES {
        let path = staged.join("usr/share/fapolicyd/sample-rules").join(name);
        rules.push_str(
            &std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?,
        );
        rules.push('\n');
    }
    std::fs::write(etc.join("compiled.rules"), rules)?;
    for dir in ["var/lib/fapolicyd", "var/log"] {
        std::fs::create_dir_all(root.join(dir))?;
    }
    append(
        &root.join("etc/passwd"),
        "fapolicyd:x:998:998:fapolicyd:/var/lib/fapolicyd:/bin/false\n",
    )?;
    append(&root.join("etc/group"), "fapolicyd:x:998:\n")?;
    // Last: it lists every file now in the guest.
    let trust = trust_list(root)?;
    std::fs::write(etc.join("fapolicyd.trust"), trust)?;
    Ok(())
}

fn append(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut content = std::fs::read_to_string(path)?;
    content.push_str(text);
    std::fs::write(path, content)?;
    Ok(())
}

/// The package's config with the file trust backend and the initramfs's root watched.
fn fapolicyd_config(shipped: &str) -> anyhow::Result<String> {
    let mut trust = false;
    let mut watch = false;
    let lines: Vec<String> = shipped
        .lines()
        .map(|line| {
            if line.starts_with("trust =") {
                trust = true;
                "trust = file".to_owned()
            } else if line.starts_with("watch_fs =") {
                watch = true;
                format!("{line},rootfs")
            } else {
                line.to_owned()
            }
        })
        .collect();
    if !trust || !watch {
        bail!("fapolicyd.conf has no trust or watch_fs line: the package changed");
    }
    Ok(lines.join("\n") + "\n")
}

/// fapolicyd's file trust format: `path size sha256` for every regular file under `root`.
fn trust_list(root: &Path) -> anyhow::Result<String> {
    let mut entries = Vec::new();
    let mut pending = vec![root.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_file() {
                let bytes = std::fs::read(entry.path())?;
                let inside = entry.path();
                let inside = inside.strip_prefix(root).unwrap_or(&inside);
                entries.push(format!(
                    "/{} {} {}",
                    inside.display(),
                    bytes.len(),
                    hex::encode(Sha256::digest(&bytes))
                ));
            }
        }
    }
    entries.sort();
    Ok(format!(
        "# AUTOGENERATED FILE VERSION 2\n# every file of the bench guest\n{}\n",
        entries.join("\n")
    ))
}

// ---- Statistics: computed here from the guest's raw figures, so they are tested on the host.

fn numbers(value: &Value) -> Vec<f64> {
    value
        .as_array()
        .map(|items| items.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default()
}

/// Linear-interpolated quantile of sorted values.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let position = q * (sorted.len() - 1) as f64;
    let low = position.floor() as usize;
    let high = position.ceil() as usize;
    sorted[low] + (sorted[high] - sorted[low]) * (position - low as f64)
}

/// Nearest-rank percentile, for latencies: a value that was observed.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn sorted(mut values: Vec<f64>) -> Vec<f64> {
    values.sort_by(f64::total_cmp);
    values
}

/// Each variant run against the mean of the baseline runs on either side of it.
fn bracketed_ratios(baseline: &[f64], variant: &[f64]) -> Vec<f64> {
    variant
        .iter()
        .enumerate()
        .filter_map(|(index, value)| {
            let before = baseline.get(index)?;
            let after = baseline.get(index + 1)?;
            Some(value / ((before + after) / 2.0))
        })
        .collect()
}

/// Each baseline run against the next: what the noise alone does to a ratio.
fn baseline_ratios(baseline: &[f64]) -> Vec<f64> {
    baseline.windows(2).map(|pair| pair[1] / pair[0]).collect()
}

fn spread(ratios: Vec<f64>) -> Value {
    if ratios.is_empty() {
        return Value::Null;
    }
    let sorted = sorted(ratios);
    json!({
        "n": sorted.len(),
        "median": quantile(&sorted, 0.5),
        "q1": quantile(&sorted, 0.25),
        "q3": quantile(&sorted, 0.75),
        "min": sorted[0],
        "max": sorted[sorted.len() - 1],
    })
}

fn latency(values: Vec<f64>) -> Value {
    if values.is_empty() {
        return Value::Null;
    }
    let sorted = sorted(values);
    json!({
        "n": sorted.len(),
        "p50_ms": percentile(&sorted, 50.0) / 1e6,
        "p99_ms": percentile(&sorted, 99.0) / 1e6,
        "max_ms": sorted[sorted.len() - 1] / 1e6,
    })
}

fn average(total: &Value, count: &Value) -> Value {
    match (total.as_f64(), count.as_f64()) {
        (Some(total), Some(count)) if count > 0.0 => json!(total / count),
        _ => Value::Null,
    }
}

/// The derived figures: ratio spreads, per-hook averages, percentiles, and the goals.
pub fn summarize(raw: &Value) -> Value {
    let mut loops = Vec::new();
    for samples in raw["overhead"]["loops"].as_array().into_iter().flatten() {
        let baseline = numbers(&samples["baseline"]);
        let mut entry = json!({
            "kind": samples["kind"],
            "label": samples["label"],
            "iterations": samples["iterations"],
            "noise": spread(baseline_ratios(&baseline)),
        });
        // The agent's worker is compared with its own runs without programs.
        let agent_baseline = numbers(&samples["agent_baseline"]);
        for (variant, baseline) in [
            ("non_agent", &baseline),
            ("agent", &agent_baseline),
            ("floor", &baseline),
            ("fapolicyd", &baseline),
        ] {
            entry[variant] = spread(bracketed_ratios(baseline, &numbers(&samples[variant])));
        }
        loops.push(entry);
    }
    let hooks: Vec<Value> = raw["hooks"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|hook| {
            let window = |name: &str| {
                let window = &hook[name];
                let avg = average(&window["run_ns"], &window["runs"]);
                let floor = average(&window["floor_run_ns"], &window["floor_runs"]);
                let ratio = match (avg.as_f64(), floor.as_f64()) {
                    (Some(avg), Some(floor)) if floor > 0.0 => json!(avg / floor),
                    _ => Value::Null,
                };
                json!({ "runs": window["runs"], "avg_ns": avg, "floor_avg_ns": floor, "ratio": ratio })
            };
            json!({ "hook": hook["hook"], "agent": window("agent"), "non_agent": window("non_agent") })
        })
        .collect();
    let approval = json!({
        "deny_to_webhook": latency(numbers(&raw["approval"]["deny_to_webhook_ns"])),
        "decision_to_grant": latency(numbers(&raw["approval"]["decision_to_grant_ns"])),
    });
    let mut summary = json!({ "loops": loops, "hooks": hooks, "approval": approval });
    summary["goals"] = goals(raw, &summary);
    summary
}

fn overhead_of(summary: &Value, kind: &str, variant: &str) -> Option<f64> {
    summary["loops"]
        .as_array()?
        .iter()
        .find(|entry| entry["kind"] == kind)?[variant]["median"]
        .as_f64()
        .map(|median| (median - 1.0) * 100.0)
}

fn goal(what: &str, measured: String, met: Option<bool>) -> Value {
    json!({ "goal": what, "measured": measured, "met": met })
}

fn percent(value: f64) -> String {
    format!("{value:+.1}%")
}

fn goals(raw: &Value, summary: &Value) -> Value {
    let mut goals = Vec::new();
    let worst = |kinds: &[&str], variant: &str| -> Option<(String, f64)> {
        kinds
            .iter()
            .map(|kind| Some((kind.to_string(), overhead_of(summary, kind, variant)?)))
            .collect::<Option<Vec<_>>>()?
            .into_iter()
            .max_by(|a, b| a.1.total_cmp(&b.1))
    };
    let all = ["exec", "connect", "open", "sendto"];
    let measured = |worst: &Option<(String, f64)>| match worst {
        Some((kind, value)) => format!("worst {kind}: {}", percent(*value)),
        None => "not measured".into(),
    };
    let non_agent = worst(&all, "non_agent");
    goals.push(goal(
        "non-agent overhead within noise (1% or less)",
        measured(&non_agent),
        non_agent.as_ref().map(|(_, value)| *value <= 1.0),
    ));
    let agent = worst(&["exec", "connect", "open"], "agent");
    goals.push(goal(
        "agent's unprotected exec, connect and open 3% or less",
        measured(&agent),
        agent.as_ref().map(|(_, value)| *value <= 3.0),
    ));
    let fapolicyd = overhead_of(summary, "exec", "fapolicyd");
    let gatekeeper = overhead_of(summary, "exec", "non_agent");
    let (text, met) = match (fapolicyd, gatekeeper) {
        (Some(fapolicyd), Some(gatekeeper)) => (
            format!(
                "fapolicyd {}, Gatekeeper non-agent {}",
                percent(fapolicyd),
                percent(gatekeeper)
            ),
            // An overhead at or below zero is noise: any real one is ten times that.
            Some(fapolicyd > 0.0 && fapolicyd >= 10.0 * gatekeeper.max(0.0)),
        ),
        _ => (
            format!(
                "not measured: {}",
                raw["overhead"]["fapolicyd"]
                    .as_str()
                    .unwrap_or("no fapolicyd rounds")
            ),
            None,
        ),
    };
    goals.push(goal(
        "fapolicyd's exec overhead at least 10x Gatekeeper's non-agent one",
        text,
        met,
    ));
    let worst_hook = summary["hooks"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|hook| {
            ["agent", "non_agent"]
                .into_iter()
                .filter_map(move |window| {
                    Some((
                        format!("{} ({})", hook["hook"].as_str()?, window.replace('_', "-")),
                        hook[window]["ratio"].as_f64()?,
                    ))
                })
        })
        .max_by(|a, b| a.1.total_cmp(&b.1));
    goals.push(goal(
        "each hook's average run time within 1.5x of the empty program's",
        worst_hook
            .as_ref()
            .map(|(hook, ratio)| format!("worst {hook}: {ratio:.2}x"))
            .unwrap_or_else(|| "not measured".into()),
        worst_hook.as_ref().map(|(_, ratio)| *ratio <= 1.5),
    ));
    for (key, what, limit) in [
        ("deny_to_webhook", "deny to webhook p99 20 ms or less", 20.0),
        (
            "decision_to_grant",
            "decision to grant p99 2 ms or less",
            2.0,
        ),
    ] {
        let p99 = summary["approval"][key]["p99_ms"].as_f64();
        goals.push(goal(
            what,
            p99.map(|ms| format!("{ms:.1} ms (guest time)"))
                .unwrap_or_else(|| "not measured".into()),
            p99.map(|ms| ms <= limit),
        ));
    }
    let idle = raw["footprint"]["idle"]["rss_kb"].as_f64();
    goals.push(goal(
        "idle memory 20 MB or less",
        idle.map(|kb| format!("{:.1} MB RSS", kb / 1024.0))
            .unwrap_or_else(|| "not measured".into()),
        idle.map(|kb| kb <= 20.0 * 1024.0),
    ));
    let flood = &raw["flood"];
    let (before, peak, after) = (
        flood["daemon_rss_before_kb"].as_f64(),
        flood["daemon_peak_kb"].as_f64(),
        flood["daemon_rss_after_kb"].as_f64(),
    );
    goals.push(match (before, peak, after) {
        (Some(before), Some(peak), Some(after)) => goal(
            "the flood leaves memory bounded (peak under twice the RSS before)",
            format!(
                "{:.1} MB before, {:.1} MB peak, {:.1} MB after",
                before / 1024.0,
                peak / 1024.0,
                after / 1024.0
            ),
            Some(peak <= 2.0 * before),
        ),
        _ => goal(
            "the flood leaves memory bounded",
            "not measured".into(),
            None,
        ),
    });
    let accounted = flood["events_received"].as_u64().unwrap_or(0)
        + flood["events_dropped"].as_u64().unwrap_or(0);
    let kernel = flood["kernel_denied"].as_u64();
    goals.push(match kernel {
        Some(kernel) => {
            let decisions = flood["decision_after"] == true && flood["exec_cycle_after"] == true;
            goal(
                "the flood loses no decision (and every denial is received or counted dropped)",
                format!(
                    "decisions after the flood {}; {accounted} of {kernel} denials accounted",
                    if decisions { "work" } else { "FAIL" }
                ),
                Some(decisions && accounted == kernel),
            )
        }
        None => goal("the flood loses no decision", "not measured".into(), None),
    });
    Value::Array(goals)
}

const MILLION: f64 = 1_000_000.0;

struct Extrapolation {
    seconds_per_100k: f64,
    mb_per_100k: f64,
    start_s: f64,
    rss_mb: f64,
}

/// The line through the two long-journal starts, taken to `records`.
fn journal_extrapolation(starts: &[Value], records: f64) -> Option<Extrapolation> {
    let [first, second] = starts else {
        return None;
    };
    let figure = |start: &Value, key: &str| start[key].as_f64();
    let (r1, r2) = (figure(first, "records")?, figure(second, "records")?);
    if r2 <= r1 {
        return None;
    }
    let (t1, t2) = (
        figure(first, "start_ns")? / 1e9,
        figure(second, "start_ns")? / 1e9,
    );
    let (m1, m2) = (
        figure(first, "rss_kb")? / 1024.0,
        figure(second, "rss_kb")? / 1024.0,
    );
    let time_slope = (t2 - t1) / (r2 - r1);
    let memory_slope = (m2 - m1) / (r2 - r1);
    Some(Extrapolation {
        seconds_per_100k: time_slope * 1e5,
        mb_per_100k: memory_slope * 1e5,
        start_s: t2 + time_slope * (records - r2),
        rss_mb: m2 + memory_slope * (records - r2),
    })
}

// ---- The table.

fn ratio_cell(spread: &Value) -> String {
    let Some(median) = spread["median"].as_f64() else {
        return "–".into();
    };
    let q1 = spread["q1"].as_f64().unwrap_or(median);
    let q3 = spread["q3"].as_f64().unwrap_or(median);
    format!(
        "{} ({} … {})",
        percent((median - 1.0) * 100.0),
        percent((q1 - 1.0) * 100.0),
        percent((q3 - 1.0) * 100.0)
    )
}

fn noise_cell(spread: &Value) -> String {
    match (spread["q1"].as_f64(), spread["q3"].as_f64()) {
        (Some(q1), Some(q3)) => format!("±{:.1}%", (q3 - q1) / 2.0 * 100.0),
        _ => "–".into(),
    }
}

fn number(value: &Value, digits: usize) -> String {
    value
        .as_f64()
        .map(|value| format!("{value:.digits$}"))
        .unwrap_or_else(|| "–".into())
}

fn error_line(out: &mut String, raw: &Value, phase: &str) {
    if let Some(error) = raw[phase]["error"].as_str() {
        let _ = writeln!(out, "\n*{phase} failed: {error}*");
    }
}

fn ns_as_s(value: &Value) -> String {
    value
        .as_f64()
        .map(|ns| format!("{:.2} s", ns / 1e9))
        .unwrap_or_else(|| "–".into())
}

fn kb_as_mb(value: &Value) -> String {
    value
        .as_f64()
        .map(|kb| format!("{:.1} MB", kb / 1024.0))
        .unwrap_or_else(|| "–".into())
}

pub fn render(raw: &Value, summary: &Value, date: &str, package: &str) -> String {
    let mut out = String::new();
    let rounds = &raw["params"]["rounds"];
    let _ = writeln!(
        out,
        "#### Linux {} under QEMU TCG, {date}{}; {}",
        raw["kernel"].as_str().unwrap_or("?"),
        if package.is_empty() {
            String::new()
        } else {
            format!(" ({package})")
        },
        raw["clock"]
            .as_str()
            .unwrap_or("guest time following the host's clock"),
    );
    let _ = writeln!(
        out,
        "\nSyscall overhead: median ratio to the baseline over {rounds} interleaved rounds, with the \
         interquartile range; \"noise\" is half the interquartile range of one baseline run \
         against the next.\n"
    );
    let _ = writeln!(
        out,
        "| loop | iterations | non-agent | agent, unprotected | empty programs | fapolicyd | noise |\n|---|--:|---|---|---|---|---|"
    );
    for entry in summary["loops"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} |",
            entry["label"].as_str().unwrap_or("?"),
            entry["iterations"],
            ratio_cell(&entry["non_agent"]),
            ratio_cell(&entry["agent"]),
            ratio_cell(&entry["floor"]),
            ratio_cell(&entry["fapolicyd"]),
            noise_cell(&entry["noise"]),
        );
    }
    error_line(&mut out, raw, "overhead");
    if let Some(note) = raw["overhead"]["fapolicyd"]
        .as_str()
        .filter(|note| *note != "measured")
    {
        let _ = writeln!(out, "\nfapolicyd: {note}");
    }

    let _ = writeln!(
        out,
        "\nKernel cost per hook (BPF statistics, average run time; floor: an empty LSM program on \
         the same hook, attached beside it):\n"
    );
    let _ = writeln!(
        out,
        "| hook | agent runs | agent ns | floor ns | × floor | non-agent runs | non-agent ns | floor ns | × floor |\n|---|--:|--:|--:|--:|--:|--:|--:|--:|"
    );
    for hook in summary["hooks"].as_array().into_iter().flatten() {
        let cells = |window: &Value| {
            format!(
                "{} | {} | {} | {}",
                window["runs"],
                number(&window["avg_ns"], 0),
                number(&window["floor_avg_ns"], 0),
                number(&window["ratio"], 2)
            )
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} |",
            hook["hook"].as_str().unwrap_or("?"),
            cells(&hook["agent"]),
            cells(&hook["non_agent"])
        );
    }
    error_line(&mut out, raw, "hooks");

    let _ = writeln!(out, "\nApproval path (guest time):\n");
    let _ = writeln!(out, "| | n | p50 | p99 | max |\n|---|---|---|---|---|");
    for (key, label) in [
        ("deny_to_webhook", "denied execve → webhook received"),
        (
            "decision_to_grant",
            "approval sent → answered, grant in the kernel",
        ),
    ] {
        let figures = &summary["approval"][key];
        let _ = writeln!(
            out,
            "| {label} | {} | {} ms | {} ms | {} ms |",
            figures["n"],
            number(&figures["p50_ms"], 1),
            number(&figures["p99_ms"], 1),
            number(&figures["max_ms"], 1)
        );
    }
    error_line(&mut out, raw, "approval");

    let flood = &raw["flood"];
    if flood["error"].is_null() && !flood.is_null() {
        let seconds = flood["elapsed_ns"].as_f64().unwrap_or(0.0) / 1e9;
        let rate = flood["attempts"].as_f64().unwrap_or(0.0) / seconds.max(1e-9);
        let cpu = flood["daemon_cpu_ns"].as_f64().unwrap_or(0.0) / 1e9;
        let drain = flood["drain_ns"].as_f64().unwrap_or(0.0) / 1e9;
        let _ = writeln!(
            out,
            "\nFlood: {} denied connects in {seconds:.0} s ({rate:.0}/s) from one agent thread; \
             the kernel counted {} denials, the daemon took in {} and {} were dropped from the \
             full ring buffer (counted); {} request(s). Daemon CPU {cpu:.1} s over the flood and \
             the {drain:.0} s until it had caught up; RSS {} before, {} peak, {} after. \
             Afterwards the flood's request was approved and used: {}; a new exec request went \
             the whole way: {}.",
            flood["attempts"],
            flood["kernel_denied"],
            flood["events_received"],
            flood["events_dropped"],
            flood["requests"],
            kb_as_mb(&flood["daemon_rss_before_kb"]),
            kb_as_mb(&flood["daemon_peak_kb"]),
            kb_as_mb(&flood["daemon_rss_after_kb"]),
            if flood["decision_after"] == true {
                "yes"
            } else {
                "NO"
            },
            if flood["exec_cycle_after"] == true {
                "yes"
            } else {
                "NO"
            },
        );
    }
    error_line(&mut out, raw, "flood");

    let footprint = &raw["footprint"];
    let restarts = sorted(numbers(&footprint["restart_ns"]));
    let journal = &footprint["long_journal"];
    let _ = writeln!(
        out,
        "\nFootprint (guest time): idle RSS {} ({} anonymous), idle CPU {:.2}%; start-up {} fresh, \
         {} adopting its pins (median of {}).",
        kb_as_mb(&footprint["idle"]["rss_kb"]),
        kb_as_mb(&footprint["idle"]["anon_kb"]),
        footprint["idle"]["cpu_ns_per_s"]
            .as_f64()
            .unwrap_or(f64::NAN)
            / 1e7,
        ns_as_s(&footprint["fresh_start_ns"]),
        if restarts.is_empty() {
            "–".into()
        } else {
            format!("{:.2} s", quantile(&restarts, 0.5) / 1e9)
        },
        restarts.len(),
    );
    let starts = journal["starts"].as_array().cloned().unwrap_or_default();
    if let Some(last) = starts.last() {
        let _ = writeln!(
            out,
            "With a longer journal (copies of one request's whole life, written by the daemon's \
             journal code): {}; `gatekeeper journal verify` of {} records {}.",
            starts
                .iter()
                .map(|start| format!(
                    "{} more records ({:.0} MB) start in {}, RSS then {}",
                    start["records"],
                    start["bytes"].as_f64().unwrap_or(0.0) / 1e6,
                    ns_as_s(&start["start_ns"]),
                    kb_as_mb(&start["rss_kb"])
                ))
                .collect::<Vec<_>>()
                .join("; "),
            last["records"],
            ns_as_s(&journal["verify_ns"]),
        );
        if let Some(line) = journal_extrapolation(&starts, MILLION) {
            let _ = write!(
                out,
                "Start-up grows by {:.2} s and {:.1} MB RSS per 100,000 records",
                line.seconds_per_100k, line.mb_per_100k,
            );
            if last["records"]
                .as_f64()
                .is_some_and(|records| records < MILLION)
            {
                let _ = write!(
                    out,
                    ": a million would start in about {:.0} s with {:.0} MB (extrapolated, not \
                     measured)",
                    line.start_s, line.rss_mb
                );
            }
            let _ = writeln!(out, ".");
        }
    } else if let Some(error) = journal["error"].as_str() {
        let _ = writeln!(out, "\n*long journal failed: {error}*");
    }

    let _ = writeln!(out, "\n| goal | measured | met |\n|---|---|---|");
    for goal in summary["goals"].as_array().into_iter().flatten() {
        let met = match goal["met"].as_bool() {
            Some(true) => "yes",
            Some(false) => "**missed**",
            None => "–",
        };
        let _ = writeln!(
            out,
            "| {} | {} | {met} |",
            goal["goal"].as_str().unwrap_or("?"),
            goal["measured"].as_str().unwrap_or("?")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_are_compared_with_the_baselines_around_them() {
        let ratios = bracketed_ratios(&[100.0, 120.0, 110.0], &[110.0, 115.0]);
        assert_eq!(ratios, vec![1.0, 115.0 / 115.0]);
        assert_eq!(baseline_ratios(&[100.0, 50.0]), vec![0.5]);
        // A variant without a closing baseline is not counted.
        assert_eq!(bracketed_ratios(&[100.0], &[110.0]), Vec::<f64>::new());
    }

    #[test]
    fn quantiles_and_percentiles() {
        let values = sorted(vec![4.0, 1.0, 3.0, 2.0]);
        assert_eq!(quantile(&values, 0.5), 2.5);
        assert_eq!(quantile(&values, 0.0), 1.0);
        let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&hundred, 99.0), 99.0);
        assert_eq!(percentile(&hundred, 50.0), 50.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
    }

    fn sample() -> Value {
        json!({
            "kernel": "6.12.0-test",
            "params": { "rounds": 2 },
            "overhead": {
                "rounds": 2,
                "fapolicyd": "measured",
                "loops": [
                    { "kind": "exec", "label": "fork+exec", "iterations": 10,
                      "baseline": [100, 100, 100], "non_agent": [100, 101], "agent": [102, 102],
                      "agent_baseline": [100, 100, 100],
                      "fapolicyd": [140, 150] },
                    { "kind": "connect", "label": "TCP", "iterations": 10,
                      "baseline": [100, 100, 100], "non_agent": [100, 100], "agent": [101, 101], "agent_baseline": [100, 100, 100] },
                    { "kind": "open", "label": "open", "iterations": 10,
                      "baseline": [100, 100, 100], "non_agent": [100, 100], "agent": [105, 105], "agent_baseline": [100, 100, 100] },
                    { "kind": "sendto", "label": "udp", "iterations": 10,
                      "baseline": [100, 100, 100], "non_agent": [100, 100], "agent": [100, 100], "agent_baseline": [100, 100, 100] }
                ]
            },
            "hooks": [
                { "hook": "bprm_check_security",
                  "agent": { "runs": 10, "run_ns": 3000, "floor_runs": 10, "floor_run_ns": 1000 },
                  "non_agent": { "runs": 0, "run_ns": 0, "floor_runs": 0, "floor_run_ns": 0 } }
            ],
            "approval": { "deny_to_webhook_ns": [5e6, 6e6], "decision_to_grant_ns": [1e6, 3e6] },
            "flood": { "error": "boom" },
            "footprint": { "idle": { "rss_kb": 10240, "anon_kb": 4000, "cpu_ns_per_s": 1000 },
                           "fresh_start_ns": 3e9 }
        })
    }

    #[test]
    fn goals_say_met_missed_or_unmeasured() {
        let summary = summarize(&sample());
        let goals = summary["goals"].as_array().expect("goals");
        let met = |prefix: &str| {
            goals
                .iter()
                .find(|goal| goal["goal"].as_str().unwrap().starts_with(prefix))
                .map(|goal| goal["met"].clone())
                .unwrap()
        };
        assert_eq!(met("non-agent"), json!(true));
        // open at +5% for the agent.
        assert_eq!(met("agent's"), json!(false));
        assert_eq!(met("fapolicyd"), json!(true));
        assert_eq!(met("each hook"), json!(false));
        assert_eq!(met("decision to grant"), json!(false));
        assert_eq!(met("deny to webhook"), json!(true));
        assert_eq!(met("idle memory"), json!(true));
        assert_eq!(met("the flood leaves"), Value::Null);
    }

    #[test]
    fn the_table_renders_with_failed_phases() {
        let raw = sample();
        let table = render(&raw, &summarize(&raw), "2026-01-01", "linux-image-test");
        assert!(table.contains("| fork+exec | 10 | +0.5% "), "{table}");
        assert!(table.contains("| – | +45.0% "), "{table}");
        assert!(table.contains("*flood failed: boom*"), "{table}");
        assert!(table.contains("**missed**"), "{table}");
    }

    #[test]
    fn journal_starts_extrapolate_along_their_line() {
        let starts = [
            json!({ "records": 100_000, "start_ns": 20e9, "rss_kb": 40_960 }),
            json!({ "records": 200_000, "start_ns": 30e9, "rss_kb": 61_440 }),
        ];
        let line = journal_extrapolation(&starts, MILLION).expect("two starts");
        assert!((line.seconds_per_100k - 10.0).abs() < 1e-9);
        assert!((line.start_s - 110.0).abs() < 1e-6);
        assert!((line.rss_mb - 220.0).abs() < 1e-6);
        assert!(journal_extrapolation(&starts[..1], MILLION).is_none());
    }

    #[test]
    fn guest_json_is_found_between_markers() {
        let console = format!("noise\n{BEGIN}\n{{\"a\": 1}}\n{END}\npoweroff\n");
        assert_eq!(extract(&console), Some(json!({ "a": 1 })));
        assert_eq!(extract("no markers"), None);
    }

    #[test]
    fn fapolicyd_config_uses_file_trust_and_watches_the_root() {
        let config =
            fapolicyd_config("permissive = 0\ntrust = rpmdb,file\nwatch_fs = ext4,tmpfs\n")
                .expect("valid");
        assert!(config.contains("trust = file\n"));
        assert!(config.contains("watch_fs = ext4,tmpfs,rootfs\n"));
        assert!(fapolicyd_config("permissive = 0\n").is_err());
    }
}
