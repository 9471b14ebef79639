//! Project tasks: `setup`, `test`, `demo`, `bench` and `lint`.

mod bench;
mod debian;
mod guest;
mod package;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

/// A guest's whole suite: about 55 to 60 min on 6.1 under TCG beside the 6.12 guest (a daemon
/// start is ~11 s of verifier and BTF work, and most tests start one). CI allows 90 min for
/// setup, build, both guests and the packaging test.
const GUEST_TEST_TIMEOUT: Duration = Duration::from_secs(80 * 60);
const GUEST_CHECK_TIMEOUT: Duration = Duration::from_secs(5 * 60);
const DEMO_TIMEOUT: Duration = Duration::from_secs(10 * 60);

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what this machine lacks: apt packages, rust-src, bpf-linker, guest kernels.
    Setup,
    /// Host unit tests, then the integration suite inside a guest for each kernel.
    Test {
        /// Run only the guest tests whose names contain this, or one of several given as
        /// `a,b` (no host tests, no LSM-off check).
        filter: Option<String>,
        /// Only this kernel (6.1 or 6.12).
        #[arg(long)]
        kernel: Option<String>,
        /// Only the packaging test, in a Debian guest with systemd.
        #[arg(long, conflicts_with = "filter")]
        debian: bool,
    },
    /// Boot a guest and walk through the main story.
    Demo,
    /// rustfmt and clippy, the kernel crate included.
    Lint,
    /// Build the Debian package (target/package/gatekeeper_VERSION_amd64.deb).
    Package {
        /// The package's version [default: the workspace's].
        #[arg(long)]
        version: Option<String>,
    },
    /// Boot one guest and measure what Gatekeeper costs; prints the table and writes it (and the
    /// raw figures) under target/bench/.
    Bench {
        /// The guest kernel: 6.12 or 6.1.
        #[arg(long, default_value = "6.12")]
        kernel: String,
        /// What guest time is: instructions executed (steady on a busy host) or the host's clock.
        #[arg(long, value_enum, default_value = "instructions")]
        clock: bench::Clock,
        /// A few rounds and small floods and journals: quick and noisy, for development.
        #[arg(long)]
        quick: bool,
        /// Interleaved rounds of the syscall loops (default 15).
        #[arg(long)]
        rounds: Option<usize>,
        /// Only these phases, joined by '+': overhead, hooks, approval, flood, footprint.
        #[arg(long)]
        only: Option<String>,
        /// More guest settings, e.g. flood:200000,journal:100000,run_ms:200,requests:100.
        #[arg(long)]
        set: Option<String>,
    },
}

fn main() -> ExitCode {
    let result = match Cli::parse().task {
        Task::Setup => setup::setup().map(|()| ExitCode::SUCCESS),
        Task::Test {
            filter,
            kernel,
            debian,
        } => test(filter.as_deref(), kernel.as_deref(), debian),
        Task::Demo => demo(),
        Task::Lint => lint().map(|()| ExitCode::SUCCESS),
        Task::Package { version } => {
            package::package(version.as_deref()).map(|_| ExitCode::SUCCESS)
        }
        Task::Bench {
            kernel,
            clock,
            quick,
            rounds,
            only,
            set,
        } => bench::bench(&bench::Options {
            kernel,
            clock,
            quick,
            rounds,
            only,
            set,
        }),
    };
    result.unwrap_or_else(|error| {
        eprintln!("xtask: {error:#}");
        ExitCode::FAILURE
    })
}

/// Runs a command, failing on a non-zero exit.
pub fn run(command: &mut Command) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("cannot run {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed: {status}");
    }
    Ok(())
}

/// Runs a command and returns its standard output.
pub fn cmd_output(command: &mut Command) -> anyhow::Result<String> {
    let output = command
        .output()
        .with_context(|| format!("cannot run {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed: {}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn cargo() -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.current_dir(workspace_root());
    command
}

fn ensure_setup() -> anyhow::Result<()> {
    if !setup::is_complete() {
        setup::setup()?;
    }
    Ok(())
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    passed: usize,
    failed: usize,
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, other: Self) {
        self.passed += other.passed;
        self.failed += other.failed;
    }
}

/// Sums libtest's `test result:` lines.
fn parse_summaries(output: &str) -> Option<Counts> {
    let mut counts = None;
    for line in output.lines() {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            continue;
        };
        let number_before = |word: &str| {
            rest.split(';').find_map(|part| {
                part.trim()
                    .strip_suffix(word)?
                    .trim()
                    .rsplit(' ')
                    .next()?
                    .parse::<usize>()
                    .ok()
            })
        };
        let total: &mut Counts = counts.get_or_insert_with(Counts::default);
        total.passed += number_before("passed")?;
        total.failed += number_before("failed")?;
    }
    counts
}

fn host_tests() -> anyhow::Result<Counts> {
    println!("== host unit tests");
    let output = cargo()
        .args([
            "test",
            "--workspace",
            "--exclude",
            "gatekeeper-tests",
            "--exclude",
            "gatekeeper-ebpf",
        ])
        .output()
        .context("cargo test")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    print!("{stdout}");
    if !output.status.success() {
        eprint!("{}", String::from_utf8_lossy(&output.stderr));
    }
    match parse_summaries(&stdout) {
        Some(counts) if output.status.success() || counts.failed > 0 => Ok(counts),
        _ => {
            println!("host unit tests did not run to completion");
            Ok(Counts {
                passed: 0,
                failed: 1,
            })
        }
    }
}

/// Builds the release binaries guests run: the daemon and the tests crate's programs.
pub fn build_release_binaries() -> anyhow::Result<()> {
    run(cargo().args([
        "build",
        "--release",
        "-p",
        "gatekeeper-daemon",
        "-p",
        "gatekeeper-tests",
        "--bins",
    ]))?;
    Ok(())
}

/// Builds the tests crate's test target `name` for release and returns its executable.
pub fn test_executable(name: &str) -> anyhow::Result<PathBuf> {
    let listing = cmd_output(cargo().args([
        "test",
        "--release",
        "-p",
        "gatekeeper-tests",
        "--test",
        name,
        "--no-run",
        "--message-format=json",
    ]))?;
    listing
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|message| message["target"]["name"] == name && message["executable"].is_string())
        .and_then(|message| message["executable"].as_str().map(PathBuf::from))
        .with_context(|| format!("cargo did not report the {name} test executable"))
}

/// Builds the release binaries the guest runs and returns (path, name in the guest).
fn guest_binaries() -> anyhow::Result<Vec<(PathBuf, &'static str)>> {
    build_release_binaries()?;
    let tests = test_executable("guest")?;
    let release = workspace_root().join("target/release");
    Ok(vec![
        (release.join("gatekeeper"), "gatekeeper"),
        (release.join("gk-helper"), "gk-helper"),
        (release.join("gatekeeper-demo"), "gatekeeper-demo"),
        (tests, "guest-tests"),
        (PathBuf::from(setup::MKFS_BTRFS), "mkfs.btrfs"),
        (PathBuf::from(setup::MKFS_XFS), "mkfs.xfs"),
        (PathBuf::from(setup::MKFS_EXT4), "mkfs.ext4"),
    ])
}

fn build_guest() -> anyhow::Result<PathBuf> {
    let binaries = guest_binaries()?;
    guest::build_initramfs(&workspace_root().join("target/guest"), &binaries)
}

/// Counts libtest's per-test lines in a guest's console output.
fn guest_counts(output: &str) -> Counts {
    let mut counts = Counts::default();
    for line in output.lines() {
        let line = line.trim();
        if !line.starts_with("test ") || line.starts_with("test result:") {
            continue;
        }
        if line.ends_with(" ... ok") {
            counts.passed += 1;
        } else if line.ends_with(" ... FAILED") {
            counts.failed += 1;
        }
    }
    counts
}

/// One guest boot: its console is kept in a log, and a run that did not finish is a failure.
fn guest_run(
    label: &str,
    initramfs: &Path,
    cmdline: &str,
    expected_min: usize,
    timeout: Duration,
) -> anyhow::Result<Counts> {
    let kernel = setup::kernel_image(label);
    let output = guest::boot(&kernel, initramfs, cmdline, timeout, false)?;
    guest_report(label, cmdline, &output, expected_min)
}

/// Counts a guest's tests from its console `output` (kept in target/guest) and prints them, or
/// all of the console when something failed.
fn guest_report(
    label: &str,
    cmdline: &str,
    output: &str,
    expected_min: usize,
) -> anyhow::Result<Counts> {
    let log = workspace_root().join(format!(
        "target/guest/console-{label}-{}.log",
        cmdline.split_whitespace().last().unwrap_or("run")
    ));
    std::fs::write(&log, output)?;
    // libtest's summary is the authority; per-test lines can be interleaved with output.
    let summary = parse_summaries(output);
    let mut counts = summary.unwrap_or_else(|| guest_counts(output));
    let finished = summary.is_some();
    let failed = counts.failed > 0 || !finished || counts.passed < expected_min;
    if failed {
        println!("{output}");
        if !finished || counts.passed < expected_min {
            println!(
                "guest on {label} did not finish its tests (console in {})",
                log.display()
            );
            counts.failed += 1;
        }
    } else {
        for line in output
            .lines()
            .filter(|line| line.starts_with("test ") || line.starts_with("guest:"))
        {
            println!("  {line}");
        }
    }
    Ok(counts)
}

/// Every stage counts: one that cannot run is a failure, and the last line always sums up.
fn test(filter: Option<&str>, kernel: Option<&str>, debian: bool) -> anyhow::Result<ExitCode> {
    if let Some(filter) = filter
        && (filter.is_empty()
            || !filter
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | ',')))
    {
        bail!(
            "the filter {filter:?} must be test names or parts of them, separated by commas (letters, digits, _ and :)"
        );
    }
    if let Some(kernel) = kernel
        && !setup::KERNELS.iter().any(|(label, _)| *label == kernel)
    {
        bail!("no kernel {kernel:?}: use 6.1 or 6.12");
    }
    let mut total = Counts::default();
    let mut stage = |name: &str, result: anyhow::Result<Counts>| match result {
        Ok(counts) => {
            println!("{name}: {} passed, {} failed", counts.passed, counts.failed);
            total += counts;
        }
        Err(error) => {
            println!("{name}: could not run: {error:#}");
            total.failed += 1;
        }
    };
    stage("setup", ensure_setup().map(|()| Counts::default()));
    let labels: Vec<&str> = setup::KERNELS
        .iter()
        .map(|(label, _)| *label)
        .filter(|label| kernel.is_none_or(|only| only == *label))
        .collect();
    if debian {
        debian_tests(&labels, &mut stage);
        return Ok(summary(total));
    }
    if filter.is_none() {
        stage("host", host_tests());
    }
    match build_guest() {
        Ok(initramfs) => {
            let mut cmdline = format!("{} gk.mode=tests", guest::LSM_ON);
            if let Some(filter) = filter {
                cmdline.push_str(&format!(" gk.filter={filter}"));
            }
            // Each guest is one emulator thread: the kernels run side by side, one per core.
            println!(
                "== guest tests on Linux {} (BPF LSM on), side by side",
                labels.join(" and ")
            );
            let outputs = side_by_side(&labels, |label| {
                guest::boot(
                    &setup::kernel_image(label),
                    &initramfs,
                    &cmdline,
                    GUEST_TEST_TIMEOUT,
                    false,
                )
            });
            for (label, output) in outputs {
                println!("== Linux {label}");
                let result = output.and_then(|output| guest_report(label, &cmdline, &output, 1));
                stage(&format!("linux {label}"), result);
            }
            if filter.is_some() || kernel.is_some() {
                return Ok(summary(total));
            }
            let (label, _) = setup::KERNELS[0];
            println!("== daemon on Linux {label} with the BPF LSM off");
            let cmdline = format!("{} gk.mode=nolsm", guest::LSM_OFF);
            let result = guest_run(label, &initramfs, &cmdline, 1, GUEST_CHECK_TIMEOUT);
            stage(&format!("linux {label}, BPF LSM off"), result);
        }
        Err(error) => {
            stage("guest build", Err(error));
            // A filtered run asked for guest tests alone.
            if filter.is_some() || kernel.is_some() {
                return Ok(summary(total));
            }
        }
    }
    debian_tests(&labels, &mut stage);
    Ok(summary(total))
}

/// Prints the last line, `N passed, N failed`, and exits accordingly.
fn summary(total: Counts) -> ExitCode {
    println!("{} passed, {} failed", total.passed, total.failed);
    if total.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Runs `boot` for each kernel at once (each guest is one emulator thread, one per core).
fn side_by_side<'a>(
    labels: &[&'a str],
    boot: impl Fn(&str) -> anyhow::Result<String> + Sync,
) -> Vec<(&'a str, anyhow::Result<String>)> {
    std::thread::scope(|scope| {
        let boot = &boot;
        let running: Vec<_> = labels
            .iter()
            .map(|label| scope.spawn(move || boot(label)))
            .collect();
        labels
            .iter()
            .zip(running)
            .map(|(label, run)| {
                let output = run
                    .join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("the guest's thread panicked")));
                (*label, output)
            })
            .collect()
    })
}

/// The package on Debian with systemd, on each kernel.
fn debian_tests(labels: &[&str], stage: &mut impl FnMut(&str, anyhow::Result<Counts>)) {
    let archive = match debian::build_boot_archive() {
        Ok(archive) => archive,
        Err(error) => return stage("debian build", Err(error)),
    };
    println!(
        "== the Debian package under systemd on Linux {}, side by side",
        labels.join(" and ")
    );
    for (label, output) in side_by_side(labels, |label| debian::boot(label, &archive)) {
        println!("== Debian bookworm on Linux {label}");
        let result = output.and_then(|output| guest_report(label, "gk.mode=debian", &output, 1));
        stage(&format!("debian on linux {label}"), result);
    }
}

fn demo() -> anyhow::Result<ExitCode> {
    ensure_setup()?;
    let initramfs = build_guest()?;
    let (label, _) = setup::KERNELS[1];
    println!("== booting Linux {label} with the BPF LSM on (software emulation: give it a minute)");
    let output = guest::boot(
        &setup::kernel_image(label),
        &initramfs,
        &format!("{} gk.mode=demo", guest::LSM_ON),
        DEMO_TIMEOUT,
        true,
    )?;
    Ok(if output.contains("demo: complete") {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn lint() -> anyhow::Result<()> {
    run(cargo().args(["fmt", "--all", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The guest suites are no test targets of their own (`test = false`): --all-targets skips
    // them.
    run(cargo().args([
        "clippy",
        "-p",
        "gatekeeper-tests",
        "--test",
        "guest",
        "--test",
        "package",
        "--",
        "-D",
        "warnings",
    ]))?;
    // Broken doc links: rustdoc's lints, which clippy does not run.
    run(cargo()
        .args([
            "doc",
            "--workspace",
            "--exclude",
            "gatekeeper-ebpf",
            "--no-deps",
        ])
        .env("RUSTDOCFLAGS", "-D warnings"))?;
    // The kernel crate only builds for the BPF target, with the nightly toolchain.
    run(Command::new("rustup")
        .args([
            "run",
            "nightly",
            "cargo",
            "clippy",
            "--release",
            "--target",
            "bpfel-unknown-none",
        ])
        .args(["-Z", "build-std=core", "--", "-D", "warnings"])
        .current_dir(workspace_root().join("gatekeeper-ebpf")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_are_summed() {
        let output = "test a ... ok\n\
            test result: ok. 3 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s\n\
            test result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out\n";
        assert_eq!(
            parse_summaries(output),
            Some(Counts {
                passed: 5,
                failed: 1
            })
        );
        assert_eq!(parse_summaries("nothing here"), None);
    }

    #[test]
    fn guest_lines_are_counted() {
        let output = "test exec::denied ... ok\r\ntest exec::other ... FAILED\ntest result: FAILED. 1 passed; 1 failed\n";
        assert_eq!(
            guest_counts(output),
            Counts {
                passed: 1,
                failed: 1
            }
        );
    }
}
