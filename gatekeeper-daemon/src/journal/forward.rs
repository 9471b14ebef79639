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
    sync::Arc,
    time::Duration,
};

use serde_json::{Value, json};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use tokio::{io::AsyncWriteExt as _, net::TcpStream};
use tokio_rustls::{
    TlsConnector,
    rustls::{
        ClientConfig, RootCertStore,
        pki_types::{CertificateDer, ServerName, pem::PemObject as _},
    },
};
use tracing::{error, info, warn};

use crate::{
    config::Forward,
    handle::{Command, Handle},
    resolver::HostResolver,
};

/// Facility "log audit" (13), severity informational (6).
const PRIORITY: u32 = 13 * 8 + 6;
/// Bytes of the journal read at a time; a longer record makes it grow.
const CHUNK: usize = 1 << 20;
const IDLE_POLL: Duration = Duration::from_millis(250);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MOST: Duration = Duration::from_secs(30);
const HTTPS_TIMEOUT: Duration = Duration::from_secs(30);

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
    pub receiver: Forward,
    pub journal: PathBuf,
    /// The last record the receiver had; None: none yet.
    pub after: Option<u64>,
    pub host: String,
    pub resolver: HostResolver,
    pub handle: Handle,
}

/// The records to send next: their lines, the head of the last, and where the journal goes on.
struct Batch {
    lines: Vec<(LineHead, String)>,
    next_offset: u64,
}

impl Batch {
    fn last(&self) -> Option<&LineHead> {
        self.lines.last().map(|(head, _)| head)
    }
}

/// Where a forwarder is in the journal.
struct Reader {
    offset: u64,
    /// The last seal read so far: (epoch, seq).
    seal: Option<(u64, u64)>,
}

impl Reader {
    /// The records after `after` from the reader's place on; None when the journal cannot be
    /// read (warned; tried again later).
    async fn next_batch(&mut self, journal: &Path, after: Option<u64>) -> Option<Batch> {
        let path = journal.to_owned();
        let offset = self.offset;
        let (lines, next_offset) = match tokio::task::spawn_blocking(move || {
            read_lines(&path, offset)
        })
        .await
        {
            Ok(Ok(read)) => read,
            Ok(Err(error)) => {
                warn!(journal = %journal.display(), %error, "cannot read the journal to forward it");
                return None;
            }
            Err(_) => return None,
        };
        let mut batch = Batch {
            lines: Vec::new(),
            next_offset,
        };
        for line in lines {
            let Some(head) = line_head(&line) else {
                continue;
            };
            if let Some(epoch) = head.seal {
                self.seal = Some((epoch, head.seq));
            }
            if after.is_none_or(|after| head.seq > after) {
                batch.lines.push((head, line));
            }
        }
        Some(batch)
    }
}

impl Forwarder {
    pub async fn run(self) {
        match self.receiver.clone() {
            Forward::Syslog { address, tls } => {
                let tls = match tls
                    .map(|tls| tls_connector(tls.ca_file.as_deref()))
                    .transpose()
                {
                    Ok(tls) => tls,
                    Err(error) => {
                        error!(receiver = %address, %error, "cannot forward the journal there");
                        return;
                    }
                };
                self.send_to_syslog(&address, tls.as_ref()).await
            }
            Forward::Https { url, ca_file } => {
                let client = match https_client(ca_file.as_deref(), &self.resolver) {
                    Ok(client) => client,
                    Err(error) => {
                        error!(receiver = %url, %error, "cannot forward the journal there");
                        return;
                    }
                };
                self.send_to_https(&client, url).await
            }
        }
    }

    async fn noted(&self, seq: u64) {
        let receiver = self.receiver.name();
        self.handle.send(Command::Forwarded { receiver, seq }).await;
    }

    async fn send_to_syslog(mut self, address: &str, tls: Option<&TlsConnector>) {
        let pid = std::process::id();
        let mut reader = Reader {
            offset: 0,
            seal: None,
        };
        let mut retry = RETRY_FIRST;
        let mut down = false;
        loop {
            let connected = tokio::time::timeout(
                CONNECT_TIMEOUT,
                SyslogStream::connect(address, tls, &self.resolver),
            )
            .await;
            let mut stream = match connected {
                Ok(Ok(stream)) => stream,
                failed => {
                    if !down {
                        let why = match failed {
                            Ok(Err(error)) => error.to_string(),
                            _ => "timed out".to_owned(),
                        };
                        warn!(receiver = %address, %why, "audit receiver unreachable; records wait in the journal");
                        down = true;
                    }
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(RETRY_MOST);
                    continue;
                }
            };
            if std::mem::take(&mut down) {
                info!(receiver = %address, "audit receiver back; sending what it missed");
            }
            retry = RETRY_FIRST;
            // What the receiver surely has: a batch counts once the connection was still open
            // after it was written (a receiver that went away answers the next look with its
            // close). On a lost connection, sending resumes from here.
            let mut confirmed = (self.after, reader.offset);
            loop {
                if !still_open(stream.tcp()) {
                    break;
                }
                if confirmed != (self.after, reader.offset) {
                    confirmed = (self.after, reader.offset);
                    if let Some(seq) = self.after {
                        self.noted(seq).await;
                    }
                }
                let Some(batch) = reader.next_batch(&self.journal, self.after).await else {
                    tokio::time::sleep(RETRY_MOST).await;
                    continue;
                };
                let Some(last) = batch.last() else {
                    reader.offset = batch.next_offset;
                    tokio::time::sleep(IDLE_POLL).await;
                    continue;
                };
                let mut frames: String = batch
                    .lines
                    .iter()
                    .map(|(head, line)| frame(&head.time, &self.host, pid, "record", line))
                    .collect();
                let now = OffsetDateTime::now_utc()
                    .format(&Rfc3339)
                    .unwrap_or_default();
                let checkpoint = checkpoint(last, reader.seal);
                frames.push_str(&frame(&now, &self.host, pid, "checkpoint", &checkpoint));
                if stream.send(frames.as_bytes()).await.is_err() {
                    break;
                }
                self.after = Some(last.seq);
                reader.offset = batch.next_offset;
                // Give a receiver that is going away time to say so before the batch counts.
                tokio::time::sleep(IDLE_POLL).await;
            }
            warn!(receiver = %address, "audit receiver lost; records wait in the journal");
            down = true;
            (self.after, reader.offset) = confirmed;
        }
    }

    async fn send_to_https(mut self, client: &reqwest::Client, url: reqwest::Url) {
        let mut reader = Reader {
            offset: 0,
            seal: None,
        };
        let mut retry = RETRY_FIRST;
        let mut down = false;
        loop {
            let Some(batch) = reader.next_batch(&self.journal, self.after).await else {
                tokio::time::sleep(RETRY_MOST).await;
                continue;
            };
            let Some(last) = batch.last() else {
                reader.offset = batch.next_offset;
                tokio::time::sleep(IDLE_POLL).await;
                continue;
            };
            let mut body: String = batch
                .lines
                .iter()
                .map(|(_, line)| format!("{line}\n"))
                .collect();
            body.push_str(&checkpoint(last, reader.seal));
            body.push('\n');
            let answer = client
                .post(url.clone())
                .header(reqwest::header::CONTENT_TYPE, "application/x-ndjson")
                .body(body)
                .send()
                .await;
            match answer {
                Ok(answer) if answer.status().is_success() => {
                    if std::mem::take(&mut down) {
                        info!(receiver = %url, "audit receiver back; it has what it missed");
                    }
                    retry = RETRY_FIRST;
                    self.after = Some(last.seq);
                    reader.offset = batch.next_offset;
                    self.noted(last.seq).await;
                }
                failed => {
                    if !down {
                        let why = match failed {
                            Ok(answer) => format!("status {}", answer.status()),
                            Err(error) => error.to_string(),
                        };
                        warn!(receiver = %url, %why, "audit receiver did not take the records; they wait in the journal");
                        down = true;
                    }
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(RETRY_MOST);
                }
            }
        }
    }
}

/// A connection to a syslog receiver, with TLS or without.
enum SyslogStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl SyslogStream {
    async fn connect(
        address: &str,
        tls: Option<&TlsConnector>,
        resolver: &HostResolver,
    ) -> std::io::Result<Self> {
        let addresses = resolver.socket_addresses(address).await?;
        // Addresses only: the names were resolved above.
        #[allow(clippy::disallowed_methods)]
        let tcp = TcpStream::connect(&addresses[..]).await?;
        let Some(tls) = tls else {
            return Ok(Self::Plain(tcp));
        };
        // The name the receiver's certificate must carry: the address's host part.
        let host = address
            .rsplit_once(':')
            .map_or(address, |(host, _)| host)
            .trim_start_matches('[')
            .trim_end_matches(']');
        let name = ServerName::try_from(host.to_owned())
            .map_err(|error| std::io::Error::other(format!("{host}: {error}")))?;
        Ok(Self::Tls(Box::new(tls.connect(name, tcp).await?)))
    }

    async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Self::Plain(stream) => {
                stream.write_all(bytes).await?;
                stream.flush().await
            }
            Self::Tls(stream) => {
                stream.write_all(bytes).await?;
                stream.flush().await
            }
        }
    }

    /// The TCP connection below, to see whether the receiver closed it. What a TLS receiver
    /// sends (session tickets) is read and dropped there: nothing is read from it otherwise.
    fn tcp(&self) -> &TcpStream {
        match self {
            Self::Plain(stream) => stream,
            Self::Tls(stream) => stream.get_ref().0,
        }
    }
}

/// The certificates in the PEM file at `path`.
fn pem_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let failed = |error: &dyn std::fmt::Display| format!("{}: {error}", path.display());
    let pem = std::fs::read(path).map_err(|error| failed(&error))?;
    CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| failed(&error))
}

/// TLS that trusts the usual roots, and the certificates in `ca_file` if given.
fn tls_connector(ca_file: Option<&Path>) -> Result<TlsConnector, String> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = ca_file {
        for certificate in pem_certificates(path)? {
            roots
                .add(certificate)
                .map_err(|error| format!("{}: {error}", path.display()))?;
        }
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| error.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// A client trusting the usual roots, and the certificates in `ca_file` if given.
fn https_client(
    ca_file: Option<&Path>,
    resolver: &HostResolver,
) -> Result<reqwest::Client, String> {
    let mut builder = resolver.client_builder().timeout(HTTPS_TIMEOUT);
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|error| format!("{}: {error}", path.display()))?;
        let certificates = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|error| format!("{}: {error}", path.display()))?;
        for certificate in certificates {
            builder = builder.add_root_certificate(certificate);
        }
    }
    builder.build().map_err(|error| error.to_string())
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
