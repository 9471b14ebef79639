//! The append-only, hash-chained audit journal (JSON Lines).
//!
//! Each line is `{"v":1,"seq":N,"time":"…","prev":"<hash of line N-1>","event":{…},"hash":"<hex>"}`
//! where `hash` is the SHA-256 of the line's exact bytes up to `,"hash"` followed by `}`: the body.
//! Hashing bytes rather than re-serialised values keeps verification independent of how any JSON
//! library orders keys, and of the format version. Editing, removing or reordering a line breaks
//! the chain at that line. `docs/journal-format.md` describes the format.
//!
//! A daemon reads back only from the last `checkpoint` record on, so start-up does not grow with
//! the history; `verify` still walks every record.

pub mod export;
pub mod forward;
pub mod legacy;
pub mod schema;
pub mod seal;
pub mod show;

use std::{
    collections::HashMap,
    fs::{File, OpenOptions},
    io::{BufRead as _, BufReader, Read as _, Seek as _, SeekFrom, Write as _},
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use time::OffsetDateTime;

pub use schema::{Event, FORMAT};
pub use seal::{SealError, SealKey, VerificationKey};

/// `prev` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const HASH_SUFFIX_START: &str = ",\"hash\":\"";
/// How a checkpoint record's event starts; serde writes the tag first.
const CHECKPOINT_MARK: &[u8] = b"\"event\":{\"type\":\"checkpoint\"";
/// What starts the event of a seal record.
const SEAL_MARK: &[u8] = b"\"event\":{\"type\":\"seal\"";
/// How far into a line the event tag can be (format, seq, time and prev come before it).
const LINE_HEAD: usize = 256;
const MODE: u32 = 0o600;

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
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error(
        "journal {path}: it ends before record {seq}, which a checkpoint sent off the host at \
         {time} had ({records} records left): the journal was cut"
    )]
    Cut {
        path: PathBuf,
        records: u64,
        seq: u64,
        time: String,
    },
}

#[derive(Serialize)]
struct Body<'a> {
    v: u32,
    seq: u64,
    #[serde(with = "time::serde::rfc3339")]
    time: OffsetDateTime,
    prev: &'a str,
    event: &'a Event,
}

#[derive(Deserialize)]
struct ParsedBody {
    /// Absent in format 0.
    #[serde(default)]
    v: u32,
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
    pub event: Event,
}

/// A torn last line found at open, and where its bytes went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repair {
    pub offset: u64,
    pub bytes: u64,
    pub saved_to: PathBuf,
}

/// An opened journal and what a daemon needs from its past.
pub struct Opened {
    pub journal: Journal,
    /// The records from the last checkpoint on (everything when there is none), verified.
    pub records: Vec<Record>,
    /// Set when a torn last line was moved aside; the repair is already journaled.
    pub repaired: Option<Repair>,
}

pub struct Journal {
    path: PathBuf,
    file: File,
    /// Bytes of whole records: a failed append is cut back to this.
    len: u64,
    next_seq: u64,
    last_hash: String,
    since_checkpoint: u64,
    since_seal: u64,
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl Journal {
    /// Opens (or creates, mode 0600) the journal, moves a torn last line aside, and reads back
    /// the records from the last checkpoint on, verified, so that new records extend an intact
    /// chain and the daemon can pick up where the last one left.
    pub fn open(path: &Path) -> Result<Opened, JournalError> {
        let io_error = |cause| JournalError::Io {
            path: path.to_owned(),
            cause,
        };
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io_error)?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .mode(MODE)
            .open(path)
            .map_err(io_error)?;
        // It carries agents' command lines and reviewers' reasons.
        file.set_permissions(std::fs::Permissions::from_mode(MODE))
            .map_err(io_error)?;
        let torn = torn_tail(&mut file).map_err(io_error)?;
        let whole = torn.as_ref().map_or_else(
            || file.metadata().map(|metadata| metadata.len()),
            |(offset, _)| Ok(*offset),
        );
        let whole = whole.map_err(io_error)?;
        let start = last_checkpoint(&mut file, whole).map_err(io_error)?;
        let (records, tail) = read_from(path, start, whole)?;
        let since_checkpoint = records
            .iter()
            .rev()
            .position(|record| matches!(record.event, Event::Checkpoint { .. }))
            .unwrap_or(records.len()) as u64;
        // Counted from the records read back: at most since the last checkpoint.
        let since_seal = records
            .iter()
            .rev()
            .position(|record| matches!(record.event, Event::Seal { .. }))
            .unwrap_or(records.len()) as u64;
        let mut journal = Self {
            path: path.to_owned(),
            file,
            len: whole,
            next_seq: tail.records,
            last_hash: tail.last_hash,
            since_checkpoint,
            since_seal,
        };
        let repaired = match torn {
            Some((offset, bytes)) => Some(journal.repair(offset, &bytes)?),
            None => None,
        };
        Ok(Opened {
            journal,
            records,
            repaired,
        })
    }

    /// Moves the torn bytes at `offset` to a file beside the journal, cuts them off and
    /// journals the repair.
    fn repair(&mut self, offset: u64, bytes: &[u8]) -> Result<Repair, JournalError> {
        let io_error = |cause| JournalError::Io {
            path: self.path.clone(),
            cause,
        };
        let mut saved_to = self.path.clone().into_os_string();
        saved_to.push(format!(
            ".torn-{}-{offset}",
            OffsetDateTime::now_utc().unix_timestamp()
        ));
        let saved_to = PathBuf::from(saved_to);
        let mut saved = OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(MODE)
            .open(&saved_to)
            .map_err(io_error)?;
        saved.write_all(bytes).map_err(io_error)?;
        saved.sync_all().map_err(io_error)?;
        self.file.set_len(offset).map_err(io_error)?;
        self.file.sync_all().map_err(io_error)?;
        let repair = Repair {
            offset,
            bytes: bytes.len() as u64,
            saved_to,
        };
        self.append(&Event::JournalRepaired {
            offset,
            bytes: repair.bytes,
            saved_to: repair.saved_to.display().to_string(),
        })?;
        Ok(repair)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records appended since the last checkpoint (or since the start of the journal).
    pub fn since_checkpoint(&self) -> u64 {
        self.since_checkpoint
    }

    /// Records appended since the last seal (or since the last checkpoint, at most, after a
    /// restart).
    pub fn since_seal(&self) -> u64 {
        self.since_seal
    }

    /// Seals every record so far with `key`, which moves on to the next epoch once the seal is
    /// durable: a seal that could not be written is made again later at the same epoch, so the
    /// epochs in the journal have no gaps.
    pub fn seal(&mut self, key: &mut SealKey) -> Result<(), JournalError> {
        let seal = key.seal(self.next_seq, &self.last_hash);
        self.append(&Event::Seal {
            epoch: seal.epoch,
            tag: seal.tag,
        })?;
        key.advance()?;
        Ok(())
    }

    /// The epoch of the journal's last seal, found by reading back from its end.
    pub fn last_seal_epoch(&mut self) -> Result<Option<u64>, JournalError> {
        let io_error = |cause| JournalError::Io {
            path: self.path.clone(),
            cause,
        };
        let Some(start) = last_line_with(&mut self.file, self.len, SEAL_MARK).map_err(io_error)?
        else {
            return Ok(None);
        };
        let (records, _) = read_from(&self.path, start, self.len)?;
        Ok(records.first().and_then(|record| match record.event {
            Event::Seal { epoch, .. } => Some(epoch),
            _ => None,
        }))
    }

    /// Appends one record and makes it durable before returning; returns the record's time. On
    /// failure nothing of the record stays in the file, so the append can be tried again.
    pub fn append(&mut self, event: &Event) -> Result<OffsetDateTime, JournalError> {
        let seq = self.next_seq;
        let time = OffsetDateTime::now_utc();
        let body = serde_json::to_string(&Body {
            v: FORMAT,
            seq,
            time,
            prev: &self.last_hash,
            event,
        })?;
        let hash = sha256_hex(body.as_bytes());
        let line = format!("{}{HASH_SUFFIX_START}{hash}\"}}\n", &body[..body.len() - 1]);
        let written = self
            .file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.sync_data());
        if let Err(cause) = written {
            // A partial line would break every record after it.
            let _ = self.file.set_len(self.len);
            return Err(JournalError::Io {
                path: self.path.clone(),
                cause,
            });
        }
        self.len += line.len() as u64;
        self.next_seq += 1;
        self.last_hash = hash;
        self.since_checkpoint = match event {
            Event::Checkpoint { .. } => 0,
            _ => self.since_checkpoint + 1,
        };
        self.since_seal = match event {
            Event::Seal { .. } => 0,
            _ => self.since_seal + 1,
        };
        Ok(time)
    }
}

/// The bytes after the last newline, if any: a record cut short mid-write (every append ends
/// with a newline). Returns (offset, bytes).
fn torn_tail(file: &mut File) -> std::io::Result<Option<(u64, Vec<u8>)>> {
    let len = file.metadata()?.len();
    let whole = last_line_end(file, len)?;
    if whole == len {
        return Ok(None);
    }
    let mut bytes = Vec::with_capacity((len - whole) as usize);
    file.seek(SeekFrom::Start(whole))?;
    file.read_to_end(&mut bytes)?;
    Ok(Some((whole, bytes)))
}

/// Offset just past the last newline before `end` (0 when there is none).
fn last_line_end(file: &mut File, end: u64) -> std::io::Result<u64> {
    const CHUNK: u64 = 64 * 1024;
    let mut chunk_end = end;
    let mut buffer = vec![0u8; CHUNK as usize];
    while chunk_end > 0 {
        let start = chunk_end.saturating_sub(CHUNK);
        let chunk = &mut buffer[..(chunk_end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(chunk)?;
        if let Some(position) = chunk.iter().rposition(|byte| *byte == b'\n') {
            return Ok(start + position as u64 + 1);
        }
        chunk_end = start;
    }
    Ok(0)
}

/// Where the last checkpoint record before `end` starts (0 when there is none): found from the
/// end, so a long history costs nothing at start.
fn last_checkpoint(file: &mut File, end: u64) -> std::io::Result<u64> {
    Ok(last_line_with(file, end, CHECKPOINT_MARK)?.unwrap_or(0))
}

/// The offset of the last line before `end` whose head holds `mark`.
fn last_line_with(file: &mut File, end: u64, mark: &[u8]) -> std::io::Result<Option<u64>> {
    let mut line_end = end;
    let mut head = vec![0u8; LINE_HEAD];
    while line_end > 0 {
        // The newline ending the line before this one.
        let line_start = last_line_end(file, line_end - 1)?;
        let length = ((line_end - line_start) as usize).min(LINE_HEAD);
        file.seek(SeekFrom::Start(line_start))?;
        file.read_exact(&mut head[..length])?;
        if head[..length]
            .windows(mark.len())
            .any(|window| window == mark)
        {
            return Ok(Some(line_start));
        }
        line_end = line_start;
    }
    Ok(None)
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
    walk(path, 0, u64::MAX, |_, _| Ok(()))
}

/// A checkpoint that left the host (`[[audit.forward]]`): the journal's record `seq` had `hash`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ForwardedCheckpoint {
    pub seq: u64,
    pub hash: String,
    pub time: String,
}

/// The checkpoints in a receiver's log: each line that holds `{"checkpoint":{...}}` (a syslog
/// message's text) gives one; other lines are skipped. An error names a line whose checkpoint
/// cannot be read.
pub fn forwarded_checkpoints(text: &str) -> Result<Vec<ForwardedCheckpoint>, String> {
    #[derive(Deserialize)]
    struct Message {
        checkpoint: ForwardedCheckpoint,
    }
    let mut checkpoints = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let Some(start) = line.find(r#"{"checkpoint":"#) else {
            continue;
        };
        let message: Message = serde_json::from_str(&line[start..])
            .map_err(|error| format!("line {}: not a checkpoint: {error}", index + 1))?;
        checkpoints.push(message.checkpoint);
    }
    Ok(checkpoints)
}

/// Holds the journal at `path` against checkpoints that left the host: the chain must be intact
/// and hold, for every checkpoint, its record with its hash. A journal cut after a checkpoint,
/// or rewritten up to one (every hash recomputed), fails, naming the checkpoint.
pub fn verify_checkpoints(
    path: &Path,
    checkpoints: &[ForwardedCheckpoint],
) -> Result<ChainTail, JournalError> {
    let wanted: HashMap<u64, &ForwardedCheckpoint> = checkpoints
        .iter()
        .map(|checkpoint| (checkpoint.seq, checkpoint))
        .collect();
    let mismatch = |checkpoint: &ForwardedCheckpoint| {
        format!(
            "record {} is not the one a checkpoint sent off the host at {} had (hash {}): the \
             journal was rewritten",
            checkpoint.seq, checkpoint.time, checkpoint.hash
        )
    };
    let tail = walk(path, 0, u64::MAX, |body, hash| {
        match wanted.get(&body.seq) {
            Some(checkpoint) if checkpoint.hash != hash => Err(mismatch(checkpoint)),
            _ => Ok(()),
        }
    })?;
    if let Some(beyond) = checkpoints
        .iter()
        .filter(|checkpoint| checkpoint.seq >= tail.records)
        .max_by_key(|checkpoint| checkpoint.seq)
    {
        return Err(JournalError::Cut {
            path: path.to_owned(),
            records: tail.records,
            seq: beyond.seq,
            time: beyond.time.clone(),
        });
    }
    Ok(tail)
}

/// What `verify --key` found: the chain and how far the seals reach.
#[derive(Debug, PartialEq, Eq)]
pub struct SealedTail {
    pub chain: ChainTail,
    pub seals: u64,
    /// The last record a seal covers (the one before the last seal), and its time.
    pub sealed_through: Option<(u64, OffsetDateTime)>,
}

/// [`verify`], and every seal checked with `key`: a seal that does not verify, or a record
/// changed before a seal (even with every hash after it recomputed), names its line.
pub fn verify_sealed(path: &Path, key: &VerificationKey) -> Result<SealedTail, JournalError> {
    let mut checker = seal::SealChecker::new(key);
    let mut seals = 0;
    let mut sealed_through = None;
    let mut previous_time = None;
    let chain = walk(path, 0, u64::MAX, |body, _| {
        if body.event.get("type").and_then(|kind| kind.as_str()) == Some("seal") {
            let Ok(Event::Seal { epoch, tag }) = serde_json::from_value(body.event.clone()) else {
                return Err("seal without an epoch or a tag".into());
            };
            checker.check(epoch, &tag, body.seq, &body.prev)?;
            seals += 1;
            if let (Some(before), Some(time)) = (body.seq.checked_sub(1), previous_time) {
                sealed_through = Some((before, time));
            }
        }
        previous_time = Some(body.time);
        Ok(())
    })?;
    Ok(SealedTail {
        chain,
        seals,
        sealed_through,
    })
}

/// Every record of an intact journal, in order; a record this version cannot read is an error.
pub fn records(path: &Path) -> Result<Vec<Record>, JournalError> {
    read_from(path, 0, u64::MAX).map(|(records, _)| records)
}

/// The records between byte offsets `start` (a record's first byte) and `end`.
fn read_from(path: &Path, start: u64, end: u64) -> Result<(Vec<Record>, ChainTail), JournalError> {
    let mut records = Vec::new();
    let tail = walk(path, start, end, |body, _| {
        let event = match body.v {
            0 => legacy::read(body.event.clone())?,
            FORMAT => serde_json::from_value(body.event.clone())
                .map_err(|error| format!("unreadable event: {error}"))?,
            newer => {
                return Err(format!(
                    "written in format {newer}, newer than this build's {FORMAT}"
                ));
            }
        };
        records.push(Record {
            seq: body.seq,
            time: body.time,
            event,
        });
        Ok(())
    })?;
    Ok((records, tail))
}

/// Walks the records from byte `start` to `end`. From the file's start the chain begins at
/// genesis; from a later record it begins with what that record says of its predecessor.
fn walk(
    path: &Path,
    start: u64,
    end: u64,
    mut visit: impl FnMut(&ParsedBody, &str) -> Result<(), String>,
) -> Result<ChainTail, JournalError> {
    let io_error = |cause| JournalError::Io {
        path: path.to_owned(),
        cause,
    };
    let mut file = File::open(path).map_err(io_error)?;
    file.seek(SeekFrom::Start(start)).map_err(io_error)?;
    let mut tail = (start == 0).then(|| ChainTail {
        records: 0,
        last_hash: GENESIS.to_owned(),
    });
    let reader = BufReader::new(file.take(end.saturating_sub(start)));
    for (index, line) in reader.split(b'\n').enumerate() {
        let line = line.map_err(io_error)?;
        // Line numbers count from the start of the file only when reading from there.
        let corrupt = |reason: String| JournalError::Corrupt {
            path: path.to_owned(),
            line: index + 1,
            reason,
        };
        let line = String::from_utf8(line).map_err(|_| corrupt("not UTF-8".into()))?;
        let (hash, body) = check_record(&line, tail.as_ref()).map_err(corrupt)?;
        visit(&body, &hash).map_err(corrupt)?;
        tail = Some(ChainTail {
            records: body.seq + 1,
            last_hash: hash,
        });
    }
    Ok(tail.unwrap_or(ChainTail {
        records: 0,
        last_hash: GENESIS.to_owned(),
    }))
}

/// Checks one line against the chain so far (None: the first record read, trusted for its place
/// in the chain); returns its hash and body.
fn check_record(line: &str, tail: Option<&ChainTail>) -> Result<(String, ParsedBody), String> {
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
    if let Some(tail) = tail {
        if parsed.seq != tail.records {
            return Err(format!(
                "sequence number {} where {} was expected (removed or reordered)",
                parsed.seq, tail.records
            ));
        }
        if parsed.prev != tail.last_hash {
            return Err("does not link to the record before it (removed or reordered)".into());
        }
    }
    Ok((hash, parsed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use schema::Snapshot;

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

    fn expired(index: u64) -> Event {
        Event::RequestExpired {
            request_id: format!("r{index}"),
        }
    }

    fn write_records(path: &Path, count: u64) {
        let mut journal = Journal::open(path).expect("open").journal;
        for index in 0..count {
            journal.append(&expired(index)).expect("append");
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
        assert_eq!(first["v"], FORMAT);
        assert_eq!(first["event"]["type"], "request_expired");
        let mode = std::fs::metadata(&temp.0).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    /// What a syslog receiver logged of the journal at `path`: every line framed, and a
    /// checkpoint after the last.
    fn receiver_log(path: &Path) -> String {
        let lines = lines(path);
        let last = forward::line_head(lines.last().unwrap()).unwrap();
        let mut log: String = lines
            .iter()
            .map(|line| forward::frame("-", "h", 1, "record", line) + "\n")
            .collect();
        log.push_str(&forward::frame(
            "-",
            "h",
            1,
            "checkpoint",
            &forward::checkpoint(&last, None),
        ));
        log
    }

    #[test]
    fn checkpoints_off_the_host_catch_a_cut_or_a_rewritten_journal() {
        let temp = TempJournal::new("checkpoints");
        write_records(&temp.0, 4);
        let log = receiver_log(&temp.0);
        let checkpoints = forwarded_checkpoints(&log).unwrap();
        assert_eq!(checkpoints.len(), 1);
        assert_eq!(
            verify_checkpoints(&temp.0, &checkpoints).unwrap().records,
            4
        );
        // More records since: still holds.
        write_records(&temp.0, 2);
        assert!(verify_checkpoints(&temp.0, &checkpoints).is_ok());
        // Cut after the checkpoint's record: its chain is intact, the checkpoint names the cut.
        let all = lines(&temp.0);
        write_lines(&temp.0, &all[..3]);
        verify(&temp.0).expect("a cut chain is intact on its own");
        let error = verify_checkpoints(&temp.0, &checkpoints).unwrap_err();
        assert!(
            matches!(
                error,
                JournalError::Cut {
                    seq: 3,
                    records: 3,
                    ..
                }
            ),
            "{error}"
        );
        // Regenerated with other records and every hash recomputed: intact, but not the one.
        std::fs::remove_file(&temp.0).unwrap();
        {
            let mut journal = Journal::open(&temp.0).unwrap().journal;
            for index in [0, 1, 7, 3] {
                journal.append(&expired(index)).unwrap();
            }
        }
        verify(&temp.0).expect("a regenerated chain is intact on its own");
        let error = verify_checkpoints(&temp.0, &checkpoints)
            .unwrap_err()
            .to_string();
        assert!(error.contains("rewritten"), "{error}");
        assert!(error.contains("line 4"), "{error}");
        // A receiver's log with a broken checkpoint is named, not skipped.
        let broken = forwarded_checkpoints("x {\"checkpoint\":{\"seq\":\"a\"}}").unwrap_err();
        assert!(broken.contains("line 1"), "{broken}");
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
        assert_eq!(records[1].event, expired(1));
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

    #[test]
    fn torn_last_line_is_moved_aside_and_journaled() {
        let temp = TempJournal::new("torn");
        write_records(&temp.0, 3);
        let intact = std::fs::read(&temp.0).unwrap();
        let mut torn = intact.clone();
        torn.extend_from_slice(b"{\"v\":1,\"seq\":3,\"time\":\"2026-");
        std::fs::write(&temp.0, &torn).unwrap();

        let opened = Journal::open(&temp.0).expect("a torn tail is repaired");
        let repair = opened.repaired.expect("repair reported");
        assert_eq!(repair.offset, intact.len() as u64);
        assert_eq!(
            std::fs::read(&repair.saved_to).unwrap(),
            &torn[intact.len()..],
            "the damaged bytes are kept"
        );
        assert_eq!(opened.records.len(), 3);
        let all = records(&temp.0).expect("the chain goes on intact");
        assert_eq!(all.len(), 4);
        assert!(matches!(
            &all[3].event,
            Event::JournalRepaired { offset, .. } if *offset == intact.len() as u64
        ));
        // Appends go on after the repair record.
        let mut journal = opened.journal;
        journal.append(&expired(9)).unwrap();
        assert_eq!(verify(&temp.0).unwrap().records, 5);
    }

    #[test]
    fn a_torn_line_in_the_middle_is_corruption() {
        let temp = TempJournal::new("torn-middle");
        write_records(&temp.0, 3);
        let mut all = lines(&temp.0);
        all[1].truncate(20);
        write_lines(&temp.0, &all);
        assert!(Journal::open(&temp.0).is_err());
    }

    #[test]
    fn reading_starts_at_the_last_checkpoint() {
        let temp = TempJournal::new("checkpoint");
        let mut journal = Journal::open(&temp.0).unwrap().journal;
        for index in 0..5 {
            journal.append(&expired(index)).unwrap();
        }
        let first = Snapshot::default();
        journal
            .append(&Event::Checkpoint {
                state: first.clone(),
            })
            .unwrap();
        journal.append(&expired(5)).unwrap();
        let second = Snapshot {
            enforcing_since: Some(OffsetDateTime::UNIX_EPOCH),
            ..Snapshot::default()
        };
        journal
            .append(&Event::Checkpoint {
                state: second.clone(),
            })
            .unwrap();
        journal.append(&expired(6)).unwrap();
        journal.append(&expired(7)).unwrap();
        assert_eq!(journal.since_checkpoint(), 2);
        drop(journal);

        let opened = Journal::open(&temp.0).unwrap();
        let events: Vec<Event> = opened.records.into_iter().map(|r| r.event).collect();
        assert_eq!(
            events,
            vec![Event::Checkpoint { state: second }, expired(6), expired(7)]
        );
        assert_eq!(opened.journal.since_checkpoint(), 2);
        // The chain goes on from the end.
        let mut journal = opened.journal;
        journal.append(&expired(8)).unwrap();
        assert_eq!(verify(&temp.0).unwrap().records, 11);
    }

    #[test]
    fn a_mark_inside_agent_text_is_no_checkpoint() {
        let temp = TempJournal::new("mark");
        let mut journal = Journal::open(&temp.0).unwrap().journal;
        // Agent-controlled text is escaped inside a JSON string: it cannot look like the tag.
        journal
            .append(&Event::RequestExpired {
                request_id: "\"event\":{\"type\":\"checkpoint\"".into(),
            })
            .unwrap();
        journal.append(&expired(1)).unwrap();
        drop(journal);
        assert_eq!(Journal::open(&temp.0).unwrap().records.len(), 2);
    }

    #[test]
    fn newer_formats_are_refused_by_name() {
        let temp = TempJournal::new("newer");
        write_records(&temp.0, 1);
        let (line, body) = {
            let all = lines(&temp.0);
            let head = all[0].rsplit_once(HASH_SUFFIX_START).unwrap().0.to_owned();
            let body = format!("{}}}", head.replacen("\"v\":1", "\"v\":9", 1));
            (all[0].clone(), body)
        };
        let _ = line;
        let hash = sha256_hex(body.as_bytes());
        let rewritten = format!("{}{HASH_SUFFIX_START}{hash}\"}}", &body[..body.len() - 1]);
        write_lines(&temp.0, &[rewritten]);
        let error = Journal::open(&temp.0).err().expect("refused").to_string();
        assert!(error.contains("format 9"), "{error}");
    }

    /// The journal's lines with `edit` applied to the `index`th, every hash and link after it
    /// recomputed: what someone who can write the file, but holds no sealing key, can do.
    fn rehashed(path: &Path, index: usize, edit: impl Fn(&str) -> String) -> Vec<String> {
        let mut prev = GENESIS.to_owned();
        let mut out = Vec::new();
        for (at, line) in lines(path).iter().enumerate() {
            let (head, _) = line.rsplit_once(HASH_SUFFIX_START).expect("hash");
            let mut body: serde_json::Value =
                serde_json::from_str(&format!("{head}}}")).expect("body");
            body["prev"] = serde_json::Value::String(prev.clone());
            let mut text = serde_json::to_string(&body).expect("encode");
            if at == index {
                text = edit(&text);
            }
            let hash = sha256_hex(text.as_bytes());
            out.push(format!(
                "{}{HASH_SUFFIX_START}{hash}\"}}",
                &text[..text.len() - 1]
            ));
            prev = hash;
        }
        out
    }

    #[test]
    fn sealed_records_cannot_be_rewritten_even_with_every_hash_recomputed() {
        let temp = TempJournal::new("sealed");
        let key_path = temp.0.with_file_name("seal.key");
        write_records(&temp.0, 3);
        let (mut key, verification) = {
            std::fs::create_dir_all(temp.0.parent().unwrap()).unwrap();
            SealKey::create(&key_path, |_| Ok(())).unwrap()
        };
        let mut journal = Journal::open(&temp.0).unwrap().journal;
        journal.seal(&mut key).unwrap();
        assert_eq!(journal.since_seal(), 0);
        journal.append(&expired(3)).unwrap();
        journal.seal(&mut key).unwrap();
        journal.append(&expired(4)).unwrap();
        drop(journal);

        let mut reopened = Journal::open(&temp.0).unwrap().journal;
        assert_eq!(reopened.last_seal_epoch().unwrap(), Some(1));
        drop(reopened);
        let report = verify_sealed(&temp.0, &verification).unwrap();
        assert_eq!(report.seals, 2);
        assert_eq!(report.chain.records, 7);
        assert_eq!(report.sealed_through.map(|(seq, _)| seq), Some(4));
        // Another key does not verify these seals.
        let other: VerificationKey = format!("gkseal1-{}", "00".repeat(32)).parse().unwrap();
        assert!(verify_sealed(&temp.0, &other).is_err());
        // The plain chain check cannot tell a rewrite; the seals can.
        let forged = rehashed(&temp.0, 1, |text| text.replace("\"r1\"", "\"r9\""));
        write_lines(&temp.0, &forged);
        verify(&temp.0).expect("a recomputed chain is intact");
        let error = verify_sealed(&temp.0, &verification)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("line 4") && error.contains("seal"),
            "{error}"
        );
    }

    /// Someone who takes the host later holds the current key: they cut the journal after an
    /// early seal, append records of their own and seal them with that key. The seals cut out
    /// leave a gap in the epochs, which verification names.
    #[test]
    fn sealed_records_cannot_be_cut_out_and_resealed_with_a_later_key() {
        let temp = TempJournal::new("cut-reseal");
        let key_path = temp.0.with_file_name("seal.key");
        write_records(&temp.0, 2);
        let (mut key, verification) = {
            std::fs::create_dir_all(temp.0.parent().unwrap()).unwrap();
            SealKey::create(&key_path, |_| Ok(())).unwrap()
        };
        let mut journal = Journal::open(&temp.0).unwrap().journal;
        assert_eq!(journal.last_seal_epoch().unwrap(), None);
        journal.seal(&mut key).unwrap();
        journal.append(&expired(2)).unwrap();
        journal.seal(&mut key).unwrap();
        drop(journal);
        verify_sealed(&temp.0, &verification).unwrap();
        // Cut after the first seal (line 3), then the attacker's record and seal.
        let kept: Vec<String> = lines(&temp.0).into_iter().take(3).collect();
        write_lines(&temp.0, &kept);
        let mut stolen = SealKey::load(&key_path).unwrap();
        assert_eq!(stolen.epoch(), 2);
        let mut journal = Journal::open(&temp.0).unwrap().journal;
        journal.append(&expired(9)).unwrap();
        journal.seal(&mut stolen).unwrap();
        drop(journal);
        verify(&temp.0).expect("the chain itself is intact");
        let error = verify_sealed(&temp.0, &verification)
            .unwrap_err()
            .to_string();
        assert!(error.contains("cut out"), "{error}");
    }
}
