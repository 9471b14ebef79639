//! The append-only, hash-chained audit journal (JSON Lines).
//!
//! Each line is `{"seq":N,"time":"…","prev":"<hash of line N-1>","event":{…},"hash":"<hex>"}`
//! where `hash` is the SHA-256 of the line's exact bytes up to `,"hash"` followed by `}`: the body.
//! Hashing bytes rather than re-serialised values keeps verification independent of how any JSON
//! library orders keys. Editing, removing or reordering a line breaks the chain at that line.

use std::{
    fs::{File, OpenOptions},
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use time::OffsetDateTime;

use crate::requests::{Decision, Request};

/// `prev` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const HASH_SUFFIX_START: &str = ",\"hash\":\"";

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("journal {path}: record at line {line} is invalid: {reason}")]
    Corrupt {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("cannot encode journal record: {0}")]
    Encode(#[from] serde_json::Error),
}

/// What happened. Field names are part of the journal format auditors read.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum JournalEvent {
    DaemonStarted {
        version: String,
        pid: u32,
        kernel: String,
    },
    DaemonStopped {
        reason: String,
    },
    /// Programs attached and pinned where none were: enforcement starts here.
    EnforcementInstalled {
        pin_dir: String,
    },
    /// `gatekeeper uninstall`: enforcement ends here.
    Uninstalled {
        pin_dir: String,
        by: String,
    },
    ProtectionUpdated {
        path: String,
        dev: u32,
        ino: u64,
    },
    /// A `host` destination now resolves to (also) these addresses.
    HostResolved {
        rule: String,
        host: String,
        addresses: Vec<String>,
    },
    RequestCreated {
        request: Box<Request>,
    },
    WebhookDelivery {
        request_id: String,
        url: String,
        attempt: u32,
        delivered: bool,
        status: Option<u16>,
        error: Option<String>,
    },
    Decision {
        request_id: String,
        decision: Decision,
        reviewer: String,
        reason: Option<String>,
        channel: String,
    },
    DecisionRefused {
        request_id: String,
        reviewer: Option<String>,
        channel: String,
        why: String,
    },
    GrantIssued {
        grant_id: u64,
        request_id: String,
        #[serde(with = "time::serde::rfc3339")]
        expires: OffsetDateTime,
    },
    GrantUsed {
        grant_id: u64,
        request_id: String,
        /// None when the kernel's event was lost (ring buffer full) and only the consumed map
        /// entry tells that the grant was used.
        pid: Option<u32>,
    },
    GrantExpired {
        grant_id: u64,
        request_id: String,
    },
    /// An agent tried to disable or walk around the enforcer, and was denied.
    TamperAttempt {
        hook: String,
        pid: u32,
        uid: u32,
        comm: String,
        cgroup: String,
        /// Hook-specific: e.g. (target pid, signal), (bpf command, 0).
        detail: [u64; 2],
    },
    RequestExpired {
        request_id: String,
    },
}

#[derive(Serialize)]
struct Body<'a> {
    seq: u64,
    #[serde(with = "time::serde::rfc3339")]
    time: OffsetDateTime,
    prev: &'a str,
    event: &'a JournalEvent,
}

#[derive(Deserialize)]
struct ParsedBody {
    seq: u64,
    prev: String,
    #[serde(with = "time::serde::rfc3339")]
    time: OffsetDateTime,
    event: serde_json::Value,
}

/// One record as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub seq: u64,
    pub time: OffsetDateTime,
    pub event: JournalEvent,
}

pub struct Journal {
    path: PathBuf,
    file: File,
    next_seq: u64,
    last_hash: String,
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl Journal {
    /// Opens (or creates) the journal and reads it back, verified, so that new records extend an
    /// intact chain and the daemon can pick up where the last one left.
    pub fn open(path: &Path) -> Result<(Self, Vec<Record>), JournalError> {
        let io_error = |cause| JournalError::Io {
            path: path.to_owned(),
            cause,
        };
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io_error)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(path)
            .map_err(io_error)?;
        let (records, tail) = read(path)?;
        let journal = Self {
            path: path.to_owned(),
            file,
            next_seq: tail.records,
            last_hash: tail.last_hash,
        };
        Ok((journal, records))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record and makes it durable before returning; returns the record's time.
    pub fn append(&mut self, event: &JournalEvent) -> Result<OffsetDateTime, JournalError> {
        let seq = self.next_seq;
        let time = OffsetDateTime::now_utc();
        let body = serde_json::to_string(&Body {
            seq,
            time,
            prev: &self.last_hash,
            event,
        })?;
        let hash = sha256_hex(body.as_bytes());
        let line = format!("{}{HASH_SUFFIX_START}{hash}\"}}\n", &body[..body.len() - 1]);
        let io_error = |cause| JournalError::Io {
            path: self.path.clone(),
            cause,
        };
        self.file.write_all(line.as_bytes()).map_err(io_error)?;
        self.file.sync_data().map_err(io_error)?;
        self.next_seq += 1;
        self.last_hash = hash;
        Ok(time)
    }
}

/// The end of an intact chain.
#[derive(Debug, PartialEq, Eq)]
pub struct ChainTail {
    pub records: u64,
    pub last_hash: String,
}

/// Checks every record of the journal at `path`: its own hash, its sequence number and its link
/// to the record before. Returns the first bad record's line number on failure.
pub fn verify(path: &Path) -> Result<ChainTail, JournalError> {
    walk(path, |_| Ok(()))
}

/// Every record of an intact journal, in order; a record this version cannot read is an error.
pub fn records(path: &Path) -> Result<Vec<Record>, JournalError> {
    read(path).map(|(records, _)| records)
}

fn read(path: &Path) -> Result<(Vec<Record>, ChainTail), JournalError> {
    let mut records = Vec::new();
    let tail = walk(path, |body| {
        let event = serde_json::from_value(body.event.clone())
            .map_err(|error| format!("unreadable event: {error}"))?;
        records.push(Record {
            seq: body.seq,
            time: body.time,
            event,
        });
        Ok(())
    })?;
    Ok((records, tail))
}

fn walk(
    path: &Path,
    mut visit: impl FnMut(&ParsedBody) -> Result<(), String>,
) -> Result<ChainTail, JournalError> {
    let file = File::open(path).map_err(|cause| JournalError::Io {
        path: path.to_owned(),
        cause,
    })?;
    let mut tail = ChainTail {
        records: 0,
        last_hash: GENESIS.to_owned(),
    };
    for (index, line) in BufReader::new(file).split(b'\n').enumerate() {
        let line = line.map_err(|cause| JournalError::Io {
            path: path.to_owned(),
            cause,
        })?;
        let corrupt = |reason: String| JournalError::Corrupt {
            path: path.to_owned(),
            line: index + 1,
            reason,
        };
        let line = String::from_utf8(line).map_err(|_| corrupt("not UTF-8".into()))?;
        let (hash, body) = check_record(&line, &tail).map_err(corrupt)?;
        visit(&body).map_err(corrupt)?;
        tail.records += 1;
        tail.last_hash = hash;
    }
    Ok(tail)
}

/// Checks one line against the chain so far; returns its hash and body.
fn check_record(line: &str, tail: &ChainTail) -> Result<(String, ParsedBody), String> {
    let (head, stated_hash) = line
        .rsplit_once(HASH_SUFFIX_START)
        .and_then(|(head, rest)| Some((head, rest.strip_suffix("\"}")?)))
        .ok_or("no trailing hash field")?;
    let body = format!("{head}}}");
    let hash = sha256_hex(body.as_bytes());
    if hash != stated_hash {
        return Err("content does not match its hash (edited)".into());
    }
    let parsed: ParsedBody =
        serde_json::from_str(&body).map_err(|error| format!("malformed record: {error}"))?;
    if parsed.seq != tail.records {
        return Err(format!(
            "sequence number {} where {} was expected (removed or reordered)",
            parsed.seq, tail.records
        ));
    }
    if parsed.prev != tail.last_hash {
        return Err("does not link to the record before it (removed or reordered)".into());
    }
    Ok((hash, parsed))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempJournal(PathBuf);

    impl TempJournal {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir()
                .join(format!("gatekeeper-journal-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            Self(dir.join("journal.jsonl"))
        }
    }

    impl Drop for TempJournal {
        fn drop(&mut self) {
            if let Some(dir) = self.0.parent() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }

    fn write_records(path: &Path, count: u64) {
        let (mut journal, _) = Journal::open(path).expect("open");
        for index in 0..count {
            journal
                .append(&JournalEvent::RequestExpired {
                    request_id: format!("r{index}"),
                })
                .expect("append");
        }
    }

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .expect("read")
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn write_lines(path: &Path, lines: &[String]) {
        std::fs::write(path, lines.join("\n") + "\n").expect("write");
    }

    fn bad_line(path: &Path) -> usize {
        match verify(path) {
            Err(JournalError::Corrupt { line, .. }) => line,
            other => panic!("expected a corrupt journal, got {other:?}"),
        }
    }

    #[test]
    fn intact_journal_verifies_and_reopens_on_the_chain() {
        let temp = TempJournal::new("intact");
        write_records(&temp.0, 3);
        write_records(&temp.0, 2);
        let tail = verify(&temp.0).expect("intact");
        assert_eq!(tail.records, 5);
        let first: serde_json::Value = serde_json::from_str(&lines(&temp.0)[0]).unwrap();
        assert_eq!(first["prev"], GENESIS);
        assert_eq!(first["event"]["type"], "request_expired");
    }

    #[test]
    fn edited_line_is_named() {
        let temp = TempJournal::new("edited");
        write_records(&temp.0, 4);
        let mut all = lines(&temp.0);
        all[2] = all[2].replace("\"r2\"", "\"r9\"");
        write_lines(&temp.0, &all);
        assert_eq!(bad_line(&temp.0), 3);
    }

    #[test]
    fn edited_last_line_is_named() {
        let temp = TempJournal::new("edited-last");
        write_records(&temp.0, 2);
        let mut all = lines(&temp.0);
        all[1] = all[1].replace("\"r1\"", "\"rX\"");
        write_lines(&temp.0, &all);
        assert_eq!(bad_line(&temp.0), 2);
    }

    #[test]
    fn removed_line_is_named() {
        let temp = TempJournal::new("removed");
        write_records(&temp.0, 4);
        let mut all = lines(&temp.0);
        all.remove(1);
        write_lines(&temp.0, &all);
        assert_eq!(bad_line(&temp.0), 2);
    }

    #[test]
    fn reordered_lines_are_named() {
        let temp = TempJournal::new("reordered");
        write_records(&temp.0, 4);
        let mut all = lines(&temp.0);
        all.swap(1, 2);
        write_lines(&temp.0, &all);
        assert_eq!(bad_line(&temp.0), 2);
    }

    #[test]
    fn garbage_line_is_named() {
        let temp = TempJournal::new("garbage");
        write_records(&temp.0, 1);
        let mut all = lines(&temp.0);
        all.push("not json".into());
        write_lines(&temp.0, &all);
        assert_eq!(bad_line(&temp.0), 2);
    }

    #[test]
    fn records_read_back_in_order() {
        let temp = TempJournal::new("records");
        write_records(&temp.0, 3);
        let records = records(&temp.0).expect("intact");
        assert_eq!(records.len(), 3);
        assert_eq!(records[2].seq, 2);
        assert_eq!(
            records[1].event,
            JournalEvent::RequestExpired {
                request_id: "r1".into()
            }
        );
    }

    #[test]
    fn corrupt_journal_refuses_to_open() {
        let temp = TempJournal::new("refuse");
        write_records(&temp.0, 2);
        let mut all = lines(&temp.0);
        all.remove(0);
        write_lines(&temp.0, &all);
        let before = std::fs::read(&temp.0).unwrap();
        assert!(Journal::open(&temp.0).is_err());
        assert_eq!(std::fs::read(&temp.0).unwrap(), before, "nothing appended");
    }
}
