use std::{os::unix::fs::MetadataExt as _, process::ExitCode};

use clap::Parser as _;
use gatekeeper_daemon::cli::{Cli, run};
use tracing_subscriber::{EnvFilter, fmt, layer::SubscriberExt as _, util::SubscriberInitExt as _};

/// Whether systemd connected stderr to the journal (`JOURNAL_STREAM` names its device and inode).
fn stderr_is_journal() -> bool {
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(stderr) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    stream == format!("{}:{}", stderr.dev(), stderr.ino())
}

/// Logs go to the journal with structured fields (GATEKEEPER_ID, GATEKEEPER_REVIEWER, ...) under
/// systemd; elsewhere to stderr, as JSON lines with `GATEKEEPER_LOG_FORMAT=json`.
fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::registry().with(filter);
    if stderr_is_journal()
        && let Ok(journald) = tracing_journald::layer()
    {
        logs.with(
            journald
                .with_syslog_identifier("gatekeeper".into())
                .with_field_prefix(Some("GATEKEEPER".into())),
        )
        .init();
    } else if std::env::var("GATEKEEPER_LOG_FORMAT").as_deref() == Ok("json") {
        logs.with(fmt::layer().json().with_writer(std::io::stderr))
            .init();
    } else {
        // Colours for a terminal only: a log file gets plain `field=value` text to search.
        let colours = std::io::IsTerminal::is_terminal(&std::io::stderr());
        logs.with(fmt::layer().with_ansi(colours).with_writer(std::io::stderr))
            .init();
    }
}

fn main() -> ExitCode {
    init_logging();
    run(Cli::parse())
}
