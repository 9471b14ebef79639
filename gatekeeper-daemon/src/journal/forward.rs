//! `[[audit.forward]]`: every journal record, as written, to syslog receivers off the host, each
//! batch followed by a checkpoint (the last record's `seq`, `hash` and time, and the last seal)
//! that an auditor holds the journal against later (`gatekeeper journal verify --checkpoints`).
//!
//! Each receiver has a task of its own that reads the journal file from the record after the
//! last one the receiver had: nothing waits in memory, so a receiver that was down gets the
//! backlog when it is back, in order and without a gap. The engine notes each receiver's last
//! record in its checkpoints; a restarted daemon goes on from there (what came after that note
//! may arrive twice, each record with its `seq`).

use std::{
    io::{Read as _, Seek as _, SeekFrom},
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::{Value, json};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use tokio::{io::AsyncWriteExt as _, net::TcpStream};
use tracing::{info, warn};

use crate::handle::{Command, Handle};

/// Facility "log audit" (13), severity informational (6).
const PRIORITY: u32 = 13 * 8 + 6;
/// Bytes of the journal read at a time; a longer record makes it grow.
const CHUNK: usize = 1 << 20;
const IDLE_POLL: Duration = Duration::from_millis(250);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MOST: Duration = Duration::from_secs(30);

/// One RFC 5424 message (the journal line, or a checkpoint, as its MSG) in an RFC 6587
/// octet-counted frame.
pub fn frame(time: &str, host: &str, pid: u32, msgid: &str, msg: &str) -> String {
    let message = format!("<{PRIORITY}>1 {time} {host} gatekeeper {pid} {msgid} - {msg}");
    format!("{} {message}", message.len())
}

/// What the forwarder needs of a journal line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineHead {
    pub seq: u64,
    pub time: String,
    pub hash: String,
    /// The epoch of a seal record.
    pub seal: Option<u64>,
}

/// The head of a journal line; None for one that is not a record.
pub fn line_head(line: &str) -> Option<LineHead> {
    let value: Value = serde_json::from_str(line).ok()?;
    let event = &value["event"];
    Some(LineHead {
        seq: value["seq"].as_u64()?,
        time: value["time"].as_str()?.to_owned(),
        hash: value["hash"].as_str()?.to_owned(),
        seal: (event["type"] == "seal")
            .then(|| event["epoch"].as_u64())
            .flatten(),
    })
}

/// A checkpoint after `last`: what the journal held up to then, and its last seal so far
/// (epoch, seq).
pub fn checkpoint(last: &LineHead, seal: Option<(u64, u64)>) -> String {
    let mut checkpoint = json!({
        "seq": last.seq,
        "hash": last.hash,
        "time": last.time,
    });
    if let Some((epoch, seq)) = seal {
        checkpoint["seal"] = json!({ "epoch": epoch, "seq": seq });
    }
    json!({ "checkpoint": checkpoint }).to_string()
}

/// The whole lines of the journal from byte `offset` on, at most about [`CHUNK`] bytes of them,
/// and the offset after the last; a journal now shorter than `offset` (a torn line moved aside)
/// is read from the start.
fn read_lines(path: &Path, offset: u64) -> std::io::Result<(Vec<String>, u64)> {
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let mut offset = if len < offset { 0 } else { offset };
    file.seek(SeekFrom::Start(offset))?;
    let mut limit = CHUNK;
    loop {
        let mut bytes = Vec::new();
        let read = (&mut file).take(limit as u64).read_to_end(&mut bytes)?;
        let Some(end) = bytes.iter().rposition(|byte| *byte == b'\n') else {
            if read < limit {
                return Ok((Vec::new(), offset));
            }
            limit *= 2;
            file.seek(SeekFrom::Start(offset))?;
            continue;
        };
        let text = String::from_utf8_lossy(&bytes[..end]);
        let lines = text.lines().map(str::to_owned).collect();
        offset += end as u64 + 1;
        return Ok((lines, offset));
    }
}

/// One receiver's forwarding, run until the daemon stops.
pub struct Forwarder {
    pub address: String,
    pub journal: PathBuf,
    /// The last record the receiver had; None: none yet.
    pub after: Option<u64>,
    pub host: String,
    pub handle: Handle,
}

impl Forwarder {
    pub async fn run(mut self) {
        let pid = std::process::id();
        let mut offset = 0;
        let mut seal = None;
        let mut retry = RETRY_FIRST;
        let mut down = false;
        loop {
            let connected =
                tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.address)).await;
            let mut stream = match connected {
                Ok(Ok(stream)) => stream,
                failed => {
                    if !down {
                        let why = match failed {
                            Ok(Err(error)) => error.to_string(),
                            _ => "timed out".to_owned(),
                        };
                        warn!(receiver = %self.address, %why, "audit receiver unreachable; records wait in the journal");
                        down = true;
                    }
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(RETRY_MOST);
                    continue;
                }
            };
            if std::mem::take(&mut down) {
                info!(receiver = %self.address, "audit receiver back; sending what it missed");
            }
            retry = RETRY_FIRST;
            // What the receiver surely has: a batch counts once the connection was still open
            // after it was written (a receiver that went away answers the next look with its
            // close). On a lost connection, sending resumes from here.
            let mut confirmed = (self.after, offset);
            loop {
                if !still_open(&stream) {
                    break;
                }
                if confirmed != (self.after, offset) {
                    confirmed = (self.after, offset);
                    if let Some(seq) = self.after {
                        let receiver = self.address.clone();
                        self.handle.send(Command::Forwarded { receiver, seq }).await;
                    }
                }
                let journal = self.journal.clone();
                let read = tokio::task::spawn_blocking(move || read_lines(&journal, offset)).await;
                let (lines, next) = match read {
                    Ok(Ok(read)) => read,
                    Ok(Err(error)) => {
                        warn!(journal = %self.journal.display(), %error, "cannot read the journal to forward it");
                        tokio::time::sleep(RETRY_MOST).await;
                        continue;
                    }
                    Err(_) => return,
                };
                let mut batch = String::new();
                let mut last = None;
                for line in &lines {
                    let Some(head) = line_head(line) else {
                        continue;
                    };
                    if let Some(epoch) = head.seal {
                        seal = Some((epoch, head.seq));
                    }
                    if self.after.is_some_and(|after| head.seq <= after) {
                        continue;
                    }
                    batch.push_str(&frame(&head.time, &self.host, pid, "record", line));
                    last = Some(head);
                }
                let Some(last) = last else {
                    offset = next;
                    tokio::time::sleep(IDLE_POLL).await;
                    continue;
                };
                let now = OffsetDateTime::now_utc().format(&Rfc3339).unwrap_or_default();
                batch.push_str(&frame(
                    &now,
                    &self.host,
                    pid,
                    "checkpoint",
                    &checkpoint(&last, seal),
                ));
                let sent = async {
                    stream.write_all(batch.as_bytes()).await?;
                    stream.flush().await
                };
                if sent.await.is_err() {
                    break;
                }
                offset = next;
                self.after = Some(last.seq);
                // Give a receiver that is going away time to say so before the batch counts.
                tokio::time::sleep(IDLE_POLL).await;
            }
            warn!(receiver = %self.address, "audit receiver lost; records wait in the journal");
            down = true;
            (self.after, offset) = confirmed;
        }
    }
}

/// Whether the receiver has neither closed the connection nor reset it.
fn still_open(stream: &TcpStream) -> bool {
    let mut probe = [0u8; 512];
    loop {
        match stream.try_read(&mut probe) {
            Ok(0) => return false,
            // A receiver that talks back is ignored.
            Ok(_) => continue,
            Err(error) => return error.kind() == std::io::ErrorKind::WouldBlock,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_count_their_octets_and_carry_the_line_whole() {
        let line = r#"{"v":1,"seq":3,"event":{"type":"x","text":"é"}}"#;
        let framed = frame("2026-12-03T10:00:00Z", "host-1", 42, "record", line);
        let (count, message) = framed.split_once(' ').unwrap();
        assert_eq!(count.parse::<usize>().unwrap(), message.len());
        assert_eq!(
            message,
            format!("<110>1 2026-12-03T10:00:00Z host-1 gatekeeper 42 record - {line}")
        );
    }

    #[test]
    fn checkpoints_name_the_last_record_and_seal() {
        let line = r#"{"v":1,"seq":7,"time":"2026-12-03T10:00:00Z","prev":"aa","event":{"type":"seal","epoch":2,"tag":"t"},"hash":"bb"}"#;
        let head = line_head(line).unwrap();
        assert_eq!(head.seal, Some(2));
        let text = checkpoint(&head, Some((2, 7)));
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["checkpoint"]["seq"], 7);
        assert_eq!(value["checkpoint"]["hash"], "bb");
        assert_eq!(value["checkpoint"]["seal"]["epoch"], 2);
        assert!(line_head("not json").is_none());
    }

    #[test]
    fn whole_lines_are_read_and_a_torn_end_waits() {
        let path = std::env::temp_dir().join(format!("gk-forward-{}", std::process::id()));
        std::fs::write(&path, "one\ntwo\nthr").unwrap();
        let (lines, offset) = read_lines(&path, 0).unwrap();
        assert_eq!(lines, ["one", "two"]);
        assert_eq!(offset, 8);
        let (lines, same) = read_lines(&path, offset).unwrap();
        assert!(lines.is_empty());
        assert_eq!(same, 8);
        std::fs::write(&path, "one\n").unwrap();
        // Shorter than the offset: from the start again.
        assert_eq!(read_lines(&path, 8).unwrap(), (vec!["one".to_owned()], 4));
        std::fs::remove_file(&path).unwrap();
    }
}
