//! The `gatekeeper` command line: the daemon itself, and the clients that talk to it.
//!
//! Its doc comments are clap's help text, where `[daemon]` names the config's table, not an item.
#![allow(rustdoc::broken_intra_doc_links)]

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{Context as _, anyhow, bail};
use clap::{Parser, Subcommand};
use gatekeeper_common::APPROVED_ENV;

use crate::{
    api::{LocalCall, LocalReply},
    config::{Config, ConfigError, DEFAULT_CONFIG, DEFAULT_SOCKET, agent_socket},
    journal,
    requests::{Decision, Request, State},
    shown::{FIELD_LIMIT, visible},
};

/// Exit code for a bad configuration or bad arguments.
pub const EXIT_USAGE: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "gatekeeper",
    version,
    about = "Kernel-enforced human approval for AI agents"
)]
pub struct Cli {
    /// Configuration file (the daemon's, and where clients find the socket).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The daemon's (reviewers') socket; agents' calls go to agent.sock beside it [default: the
    /// config's [daemon] socket, else /run/gatekeeper/api.sock].
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the LSM programs and enforce until stopped.
    Daemon,
    /// Validate a configuration file without loading anything.
    CheckConfig { file: PathBuf },
    /// List pending approval requests, or show one whole: what it would do, who asked and why.
    Requests {
        /// Show this request with everything a reviewer needs to decide it.
        id: Option<String>,
        /// Include decided and expired requests.
        #[arg(long)]
        all: bool,
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Approve a request: its agent's retry passes once.
    Approve {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Deny a request.
    Deny {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Exit 0 only while the daemon is up and enforcing.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// End enforcement: detach the programs and remove their pins (root only).
    Uninstall,
    /// Wait for the decision on this cgroup's latest (or given) request: exit 0 approved (retry
    /// now), 1 denied, 2 expired or timed out, 3 no such request or no daemon.
    Await {
        /// A request of the caller's own cgroup [default: its latest].
        #[arg(conflicts_with = "last")]
        id: Option<String>,
        /// Wait on the latest request (the default).
        #[arg(long)]
        last: bool,
        /// Give up after this long, e.g. "5m" [default: until the request expires].
        #[arg(long, value_parser = parse_duration)]
        timeout: Option<std::time::Duration>,
        /// Why the agent needs it, in its own words: shown to reviewers as the agent's.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// Run a command that may need approval (from an agent): ask with a reason, wait for the
    /// decision, then run exactly this command, with only the environment variables an approved
    /// program may be given (PATH, HOME, the locale, ...). Not approved: exits like `await`.
    Run {
        /// Why the agent needs it, in its own words: shown to reviewers as the agent's.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        /// Give up after this long, e.g. "5m" [default: until the request expires].
        #[arg(long, value_parser = parse_duration)]
        timeout: Option<std::time::Duration>,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// Audit journal tools.
    Journal {
        #[command(subcommand)]
        command: JournalCommand,
    },
    /// Start agents (root, outside agent cgroups).
    Agent {
        #[command(subcommand)]
        command: AgentCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Run a command as an agent, in a cgroup of its own below the first agent cgroup, with its
    /// owner journaled (who may then not approve its requests). Exits as the command did.
    Run {
        /// The agent's cgroup [default: agent-PID]: letters, digits and ._@-.
        #[arg(long)]
        name: Option<String>,
        /// Who runs the agent (a user of this host) [default: the sudo user, else the caller].
        #[arg(long)]
        owner: Option<String>,
        /// Run the command as this user (with its groups, HOME, USER and LOGNAME) [default:
        /// as the caller].
        #[arg(long)]
        user: Option<String>,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum JournalCommand {
    /// Check the hash chain, and with --key every seal; exits non-zero naming the first bad
    /// record.
    Verify {
        /// The verification key `setup-keys` printed (gkseal1-...).
        #[arg(long, value_name = "VERIFICATION_KEY")]
        key: Option<String>,
        /// A receiver's log of what `[[audit.forward]]` sent: the journal must still hold every
        /// record a checkpoint there names, as it was.
        #[arg(long, value_name = "FILE")]
        checkpoints: Option<PathBuf>,
        file: PathBuf,
    },
    /// Make the host's forward-secure sealing key ([daemon] seal_key) and print the
    /// verification key, to keep off this host, as the last line.
    SetupKeys,
    /// The journal as a timeline: who asked for what and why, who decided, when the grant was
    /// used and by which process.
    Show {
        /// Only the records of this request.
        #[arg(long, value_name = "ID")]
        request: Option<String>,
        /// Only records of this type (request_created, decision, grant_used, ...).
        #[arg(long = "type", value_name = "TYPE")]
        kind: Option<String>,
        /// Only records from this time on: RFC 3339 (2026-12-01T09:00:00Z) or a span before
        /// now (2h, 3days).
        #[arg(long, value_name = "TIME", value_parser = parse_since)]
        since: Option<time::OffsetDateTime>,
        /// The journal to read (default: [daemon] journal of the config).
        file: Option<PathBuf>,
    },
    /// The journal for a SIEM, one JSON object per line: requests, decisions and grant uses as
    /// OCSF 1.3.0 events or ECS 8.11 documents, or every record as written (jsonl).
    Export {
        #[arg(long, value_enum)]
        format: journal::export::Format,
        /// Only records from this time on: RFC 3339 or a span before now (2h).
        #[arg(long, value_name = "TIME", value_parser = parse_since)]
        since: Option<time::OffsetDateTime>,
        /// Only records before this time: RFC 3339 or a span before now.
        #[arg(long, value_name = "TIME", value_parser = parse_since)]
        until: Option<time::OffsetDateTime>,
        /// The host the journal comes from [default: this machine's host name].
        #[arg(long, value_name = "NAME")]
        host: Option<String>,
        /// The journal to read (default: [daemon] journal of the config).
        file: Option<PathBuf>,
    },
}

/// `--since`: an RFC 3339 time, or a span before now.
fn parse_since(text: &str) -> Result<time::OffsetDateTime, String> {
    if let Ok(time) =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
    {
        return Ok(time);
    }
    let span = humantime::parse_duration(text).map_err(|_| {
        format!("{text:?} is neither an RFC 3339 time (2026-12-01T09:00:00Z) nor a span (2h)")
    })?;
    Ok(time::OffsetDateTime::now_utc() - span)
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text).map_err(|error| error.to_string())
}

/// Exit codes of `gatekeeper await`.
const AWAIT_DENIED: u8 = 1;
const AWAIT_EXPIRED: u8 = 2;
const AWAIT_UNKNOWN: u8 = 3;
/// Longer than any request lives: without --timeout, await ends when the request does.
const AWAIT_FOREVER: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// How long `run` looks for the request its denied exec made.
const RUN_FINDS_REQUEST: std::time::Duration = std::time::Duration::from_secs(10);

fn await_decision(
    cli: &Cli,
    id: &Option<String>,
    timeout: Option<std::time::Duration>,
    reason: &Option<String>,
) -> ExitCode {
    let mut id = id.clone();
    if let Some(reason) = reason {
        let justify = LocalCall::Justify {
            id: id.clone(),
            reason: reason.clone(),
        };
        match call(cli, &justify) {
            // Wait on the very request the reason went to.
            Ok(data) => id = data["id"].as_str().map(str::to_owned),
            Err(error) => {
                eprintln!("gatekeeper: the reason was not taken: {error:#}");
                return ExitCode::from(AWAIT_UNKNOWN);
            }
        }
    }
    let call = LocalCall::Await {
        id,
        argv: None,
        since_ms: 0,
        timeout_ms: millis(timeout.unwrap_or(AWAIT_FOREVER)),
    };
    match call_with_timeout(cli, &call, None) {
        Ok(data) => await_exit(&data),
        Err(error) => {
            eprintln!("gatekeeper: {error:#}");
            ExitCode::from(AWAIT_UNKNOWN)
        }
    }
}

fn millis(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Prints an `await` answer; its exit code.
fn await_exit(data: &serde_json::Value) -> ExitCode {
    let state = data["state"].as_str().unwrap_or_default();
    println!("request {}: {state}", data["id"].as_str().unwrap_or("?"));
    match state {
        "approved" => {
            let unapproved = unapproved_env_names();
            if !unapproved.is_empty() {
                eprintln!(
                    "gatekeeper: an approved program is refused these environment variables: {}; \
                     run it without them (`gatekeeper run -- COMMAND` drops them)",
                    visible(&unapproved.join(" "), FIELD_LIMIT)
                );
            }
            ExitCode::SUCCESS
        }
        "denied" => ExitCode::from(AWAIT_DENIED),
        _ => ExitCode::from(AWAIT_EXPIRED),
    }
}

/// `gatekeeper run`: the exec itself asks (the kernel denies it and the daemon makes the request
/// with the arguments it read); an approval lets exactly this command through once.
fn run_command(
    cli: &Cli,
    reason: &Option<String>,
    timeout: Option<std::time::Duration>,
    command: &[String],
) -> ExitCode {
    use std::os::unix::process::CommandExt as _;
    if let Some(reason) = reason {
        let announce = LocalCall::Announce {
            argv: command.to_vec(),
            reason: reason.clone(),
        };
        if let Err(error) = call(cli, &announce) {
            eprintln!("gatekeeper: the reason was not taken, nothing was run: {error:#}");
            return ExitCode::from(AWAIT_UNKNOWN);
        }
    }
    let since_ms = millis(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default(),
    );
    let exec = || {
        std::process::Command::new(&command[0])
            .args(&command[1..])
            .env_clear()
            .envs(std::env::vars_os().filter(|(name, _)| env_approved(name)))
            .exec()
    };
    let error = exec();
    if error.raw_os_error() != Some(libc::EPERM) {
        return exec_failed(&command[0], &error);
    }
    eprintln!(
        "gatekeeper: {} needs approval; waiting for a decision",
        visible(&command[0], FIELD_LIMIT)
    );
    let wait = LocalCall::Await {
        id: None,
        argv: Some(command.to_vec()),
        since_ms,
        timeout_ms: millis(timeout.unwrap_or(AWAIT_FOREVER)),
    };
    let give_up = std::time::Instant::now() + RUN_FINDS_REQUEST;
    let data = loop {
        match call_with_timeout(cli, &wait, None) {
            Ok(data) => break data,
            // The daemon makes the request from the kernel's report, a moment after the denial.
            Err(error)
                if error.to_string().contains("no such request")
                    && std::time::Instant::now() < give_up =>
            {
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            Err(error) => {
                eprintln!("gatekeeper: {error:#}");
                return ExitCode::from(AWAIT_UNKNOWN);
            }
        }
    };
    if data["state"] != "approved" {
        return await_exit(&data);
    }
    let error = exec();
    exec_failed(&command[0], &error)
}

/// Whether an exec on a grant may pass the variable `name` (see [`APPROVED_ENV`]).
fn env_approved(name: &std::ffi::OsStr) -> bool {
    name.to_str()
        .is_some_and(|name| APPROVED_ENV.contains(&name))
}

/// The names in this process's environment that an exec on a grant may not pass.
fn unapproved_env_names() -> Vec<String> {
    std::env::vars_os()
        .map(|(name, _)| name)
        .filter(|name| !env_approved(name))
        .map(|name| name.to_string_lossy().into_owned())
        .collect()
}

/// The exit code of a command that could not be started, as shells use them.
fn exec_failed(program: &str, error: &std::io::Error) -> ExitCode {
    eprintln!(
        "gatekeeper: cannot run {}: {error}",
        visible(program, FIELD_LIMIT)
    );
    ExitCode::from(match error.kind() {
        std::io::ErrorKind::NotFound => 127,
        _ => 126,
    })
}

/// Runs the parsed command line; errors are printed here, once, with the right exit code.
pub fn run(cli: Cli) -> ExitCode {
    match dispatch(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("gatekeeper: {error:#}");
            let usage = error.chain().any(|cause| cause.is::<ConfigError>());
            ExitCode::from(if usage { EXIT_USAGE } else { 1 })
        }
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Await {
            id,
            timeout,
            reason,
            ..
        } => Ok(await_decision(&cli, id, *timeout, reason)),
        Command::Run {
            reason,
            timeout,
            command,
        } => Ok(run_command(&cli, reason, *timeout, command)),
        Command::Agent {
            command:
                AgentCommand::Run {
                    name,
                    owner,
                    user,
                    command,
                },
        } => crate::launcher::run_agent(
            |request| call(&cli, request),
            name.as_deref(),
            owner.as_deref(),
            user.as_deref(),
            command,
        ),
        Command::Daemon => {
            // A host that cannot enforce is told so first, before any name is looked up.
            crate::loader::check_bpf_lsm()?;
            let path = cli.config.as_deref().unwrap_or(Path::new(DEFAULT_CONFIG));
            let mut config = Config::read(path)?;
            config.check_host()?;
            // Only for a config that holds, and before the guards: they cover the directories
            // there are.
            crate::host_services::make_nscd_dir()
                .with_context(|| format!("cannot make {}", crate::host_services::NSCD_DIR))?;
            config.guard_host_paths();
            let runtime = tokio::runtime::Runtime::new().context("tokio runtime")?;
            runtime.block_on(crate::service::run(config))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { file } => {
            let config = Config::load(file)?;
            println!(
                "{}: ok ({} agent cgroups, {} protected binaries, {} protected files, {} webhooks)",
                file.display(),
                config.agent_cgroups.len(),
                config.exec_rules.len(),
                config.file_rules.len(),
                config.webhooks.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Journal {
            command:
                JournalCommand::Verify {
                    key,
                    checkpoints,
                    file,
                },
        } => {
            match key {
                Some(key) => verify_sealed(file, key)?,
                None => {
                    let tail = journal::verify(file)?;
                    println!("{}: intact, {} records", file.display(), tail.records);
                }
            }
            if let Some(checkpoints) = checkpoints {
                verify_against_checkpoints(file, checkpoints)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Journal {
            command: JournalCommand::SetupKeys,
        } => setup_keys(&cli),
        Command::Journal {
            command:
                JournalCommand::Show {
                    request,
                    kind,
                    since,
                    file,
                },
        } => {
            let filter = journal::show::Filter::new(request.clone(), kind.as_deref(), *since)?;
            let path = match file {
                Some(file) => file.clone(),
                None => client_config(&cli)?.journal,
            };
            for line in journal::show::timeline(&journal::records(&path)?, &filter) {
                println!("{line}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Journal {
            command:
                JournalCommand::Export {
                    format,
                    since,
                    until,
                    host,
                    file,
                },
        } => {
            let path = match file {
                Some(file) => file.clone(),
                None => client_config(&cli)?.journal,
            };
            let host = match host {
                Some(host) => host.clone(),
                None => std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .context("this machine's host name (give --host)")?
                    .trim()
                    .to_owned(),
            };
            if let (Some(since), Some(until)) = (since, until)
                && until <= since
            {
                bail!("--until must be later than --since");
            }
            let window = journal::export::Window {
                since: *since,
                until: *until,
            };
            let exported =
                journal::export::export(&journal::records(&path)?, *format, window, &host);
            let mut out = std::io::stdout().lock();
            for line in &exported.lines {
                writeln!(out, "{line}")?;
            }
            if exported.orphans > 0 {
                eprintln!(
                    "gatekeeper: {} decisions or grant uses left out: their request is not in {}",
                    exported.orphans,
                    path.display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Requests {
            id: Some(id), json, ..
        } => {
            let data = call(&cli, &LocalCall::List { all: true })?;
            let requests: Vec<Request> = serde_json::from_value(data)?;
            let Some(request) = requests.iter().find(|request| request.id == *id) else {
                bail!("no request {}", visible(id, FIELD_LIMIT));
            };
            if *json {
                println!("{}", serde_json::to_string_pretty(request)?);
            } else {
                for (label, value) in crate::notify::facts(request) {
                    println!("{label}: {value}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Requests {
            id: None,
            all,
            json,
        } => {
            let data = call(&cli, &LocalCall::List { all: *all })?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&data)?);
            } else {
                let requests: Vec<Request> = serde_json::from_value(data)?;
                print_requests(&requests);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Approve { id, reason } => decide(&cli, id, Decision::Approve, reason),
        Command::Deny { id, reason } => decide(&cli, id, Decision::Deny, reason),
        Command::Uninstall => uninstall(&cli),
        Command::Status { json } => {
            let data = match call(&cli, &LocalCall::Status) {
                Ok(data) => data,
                Err(error) => {
                    // The daemon is down; say whether its pinned programs still enforce.
                    if let Ok(config) = client_config(&cli) {
                        let live = crate::loader::links_pinned(&config.pin_dir);
                        eprintln!(
                            "enforcement is {} (pins in {})",
                            if live { "still live" } else { "off" },
                            config.pin_dir.display()
                        );
                    }
                    return Err(error);
                }
            };
            if *json {
                println!("{}", serde_json::to_string_pretty(&data)?);
            } else {
                println!(
                    "enforcing since {}: {} pending requests, {} denied, {} grants used, {} events dropped",
                    data["since"].as_str().unwrap_or("?"),
                    data["pending_requests"],
                    data["denied"],
                    data["grants_used"],
                    data["events_dropped"]
                );
                if let Some(why) = data["directory_renames_refused"].as_str() {
                    println!("AGENTS RENAME NO DIRECTORY: {}", visible(why, FIELD_LIMIT));
                }
                // Agents may write below these: say so where the operator looks.
                for path in data["unguarded_mounts"].as_array().into_iter().flatten() {
                    println!(
                        "NOT GUARDED: {} (mounted below a host path or protected directory; the kernel's map of protected files is full: {} of {})",
                        visible(path.as_str().unwrap_or("?"), FIELD_LIMIT),
                        data["protected_files"],
                        data["protected_files_capacity"]
                    );
                }
            }
            if data["enforcing"] == true {
                Ok(ExitCode::SUCCESS)
            } else {
                bail!("the daemon is not enforcing")
            }
        }
    }
}

fn decide(
    cli: &Cli,
    id: &str,
    decision: Decision,
    reason: &Option<String>,
) -> anyhow::Result<ExitCode> {
    let data = call(
        cli,
        &LocalCall::Decide {
            id: id.to_owned(),
            decision,
            reason: reason.clone(),
        },
    )?;
    let request: Request = serde_json::from_value(data)?;
    if let Some(error) = &request.grant_error {
        bail!(
            "request {} is approved, but its grant could not reach the kernel ({error}): the agent's retry stays denied",
            request.id
        );
    }
    match (decision, request.state) {
        (Decision::Approve, State::Pending) => println!(
            "approval recorded for request {}: {} of {} approvals",
            request.id,
            request.approvals.len(),
            request.approvals_required
        ),
        (Decision::Approve, _) => println!(
            "approved request {} ({} for {})",
            request.id,
            visible(&request.target, FIELD_LIMIT),
            visible(&request.cgroup, FIELD_LIMIT)
        ),
        (Decision::Deny, _) => println!(
            "denied request {} ({} for {})",
            request.id,
            visible(&request.target, FIELD_LIMIT),
            visible(&request.cgroup, FIELD_LIMIT)
        ),
    }
    Ok(ExitCode::SUCCESS)
}

fn print_requests(requests: &[Request]) {
    println!(
        "{:<13} {:<9} {:<9} {:<5} {:<25} {:<30} TARGET",
        "ID", "STATE", "RISK", "KIND", "CREATED", "CGROUP"
    );
    for request in requests {
        let created = request
            .created
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        println!(
            "{:<13} {:<9} {:<9} {:<5} {:<25} {:<30} {}",
            request.id,
            format!("{:?}", request.state).to_lowercase(),
            request.risk.name().to_uppercase(),
            format!("{:?}", request.kind).to_lowercase(),
            created,
            visible(&request.cgroup, FIELD_LIMIT),
            visible(&request.target, FIELD_LIMIT)
        );
    }
}

/// The config a client command was pointed at (`--config`, else the default file), read as far
/// as a client needs it: where the daemon's socket, journal and pins are.
fn client_config(cli: &Cli) -> anyhow::Result<Config> {
    let path = cli.config.as_deref().unwrap_or(Path::new(DEFAULT_CONFIG));
    Ok(Config::read(path)?)
}

fn socket_path(cli: &Cli) -> anyhow::Result<PathBuf> {
    if let Some(socket) = &cli.socket {
        return Ok(socket.clone());
    }
    if cli.config.is_some() || Path::new(DEFAULT_CONFIG).exists() {
        return Ok(client_config(cli)?.socket);
    }
    Ok(PathBuf::from(DEFAULT_SOCKET))
}

/// Whether a daemon answers on the reviewers' socket.
fn daemon_reachable(cli: &Cli) -> bool {
    socket_path(cli)
        .map(|path| UnixStream::connect(path).is_ok())
        .unwrap_or(false)
}

/// `journal verify --key`: the chain, every seal, and how far the seals reach.
fn verify_against_checkpoints(file: &Path, checkpoints: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(checkpoints)
        .with_context(|| format!("checkpoints {}", checkpoints.display()))?;
    let checkpoints_found = journal::forwarded_checkpoints(&text)
        .map_err(|error| anyhow!("checkpoints {}: {error}", checkpoints.display()))?;
    let Some(last) = checkpoints_found
        .iter()
        .max_by_key(|checkpoint| checkpoint.seq)
    else {
        bail!("checkpoints {}: none in it", checkpoints.display());
    };
    journal::verify_checkpoints(file, &checkpoints_found)?;
    println!(
        "{}: holds all {} checkpoints of {}, the last for record {} ({})",
        file.display(),
        checkpoints_found.len(),
        checkpoints.display(),
        last.seq,
        last.time
    );
    Ok(())
}

fn verify_sealed(file: &Path, key: &str) -> anyhow::Result<()> {
    let key: journal::VerificationKey = key.parse()?;
    let report = journal::verify_sealed(file, &key)?;
    let Some((sealed, time)) = report.sealed_through else {
        bail!(
            "{}: the chain is intact ({} records) but no seal covers any record: the journal was not sealed, or its seals were cut off",
            file.display(),
            report.chain.records
        );
    };
    let time = time
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    println!(
        "{}: intact, {} records, {} seals; sealed through record {sealed} ({time})",
        file.display(),
        report.chain.records,
        report.seals
    );
    let unsealed = report.chain.records.saturating_sub(sealed + 2);
    if unsealed > 0 {
        println!("{unsealed} records after the last seal are not sealed yet");
    }
    Ok(())
}

/// Through the daemon when it runs, which guards the key file from agents before writing the
/// key. With no daemon, only on a host where nothing enforces yet: under pins with no daemon
/// the file could not be guarded before the key is in it.
fn setup_keys(cli: &Cli) -> anyhow::Result<ExitCode> {
    let verification = if daemon_reachable(cli) {
        let data = call(cli, &LocalCall::SetupKeys)?;
        data.as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("unexpected answer from the daemon: {data}"))?
    } else {
        let config =
            client_config(cli).context("no daemon is running; setup-keys needs its config")?;
        if crate::loader::links_pinned(&config.pin_dir) {
            bail!(
                "enforcement is live in {} but the daemon is not running: start it, then run setup-keys again, so the key is guarded from agents before it is written",
                config.pin_dir.display()
            );
        }
        let (_, verification) = journal::SealKey::create(&config.seal_key, |_| Ok(()))?;
        verification.to_string()
    };
    println!(
        "The journal is sealed from now on. Keep the verification key below off this host; auditors check the journal with\n  gatekeeper journal verify --key VERIFICATION_KEY JOURNAL\nverification key:"
    );
    println!("{verification}");
    Ok(ExitCode::SUCCESS)
}

/// Through the daemon when it runs (it detaches and exits); otherwise directly, from the config.
fn uninstall(cli: &Cli) -> anyhow::Result<ExitCode> {
    if daemon_reachable(cli) {
        call(cli, &LocalCall::Uninstall)?;
        println!("uninstalled: enforcement has ended");
        return Ok(ExitCode::SUCCESS);
    }
    let config = client_config(cli).context("no daemon is running; uninstall needs its config")?;
    let own_cgroup = crate::cgroups::of_process(std::process::id())?;
    if crate::cgroups::is_within(&own_cgroup, &config.agent_cgroups) {
        bail!("uninstall cannot run from inside an agent cgroup");
    }
    let user = nix::unistd::getuid();
    if !user.is_root() {
        bail!("only root may uninstall");
    }
    let mut journal = journal::Journal::open(&config.journal)?.journal;
    journal.append(&journal::Event::Uninstalled {
        pin_dir: config.pin_dir.display().to_string(),
        by: crate::users::name_of(user.as_raw()).unwrap_or_else(|| "root".into()),
    })?;
    crate::loader::uninstall(&config.pin_dir)
        .with_context(|| format!("remove pins in {}", config.pin_dir.display()))?;
    println!("uninstalled: enforcement has ended");
    Ok(ExitCode::SUCCESS)
}

/// How long a client waits for the daemon's answer.
const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// One call on the daemon's socket.
fn call(cli: &Cli, request: &LocalCall) -> anyhow::Result<serde_json::Value> {
    call_with_timeout(cli, request, Some(CALL_TIMEOUT))
}

fn call_with_timeout(
    cli: &Cli,
    request: &LocalCall,
    timeout: Option<std::time::Duration>,
) -> anyhow::Result<serde_json::Value> {
    let reviewers = socket_path(cli)?;
    let agents = agent_socket(&reviewers);
    let connect = |path: &Path| {
        UnixStream::connect(path)
            .with_context(|| format!("cannot reach the daemon at {}", path.display()))
    };
    let mut stream = match request {
        request if request.is_agents() => connect(&agents)?,
        _ => match UnixStream::connect(&reviewers) {
            Ok(stream) => stream,
            // An agent asking how the daemon is: the agents' socket answers that too.
            Err(error) if error.kind() == std::io::ErrorKind::PermissionDenied => {
                if matches!(request, LocalCall::Status) {
                    connect(&agents)?
                } else {
                    bail!(
                        "cannot reach the daemon at {}: {error} (the reviewers' socket refuses processes in agent cgroups)",
                        reviewers.display()
                    );
                }
            }
            Err(error) => Err(error)
                .with_context(|| format!("cannot reach the daemon at {}", reviewers.display()))?,
        },
    };
    stream.set_read_timeout(timeout)?;
    let mut line = serde_json::to_string(request)?;
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer)?;
    let reply: LocalReply = serde_json::from_str(&answer)
        .with_context(|| format!("unexpected answer from the daemon: {answer:?}"))?;
    match (reply.ok, reply.data) {
        (true, Some(data)) => Ok(data),
        _ => Err(anyhow!(reply.error.unwrap_or_else(|| "refused".into()))),
    }
}
