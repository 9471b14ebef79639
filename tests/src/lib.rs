//! The guest test harness: each scenario gets its own agent cgroup, protected binary, webhook
//! receiver, config, journal and daemon, all torn down when it is dropped.
//!
//! Everything here runs for real inside a guest kernel with the BPF LSM on: the daemon is the
//! release binary, the webhook is a real HTTP listener on loopback.

use std::{
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde_json::Value;

/// Hands `path` (and everything below it) to the ordinary user [`UNLISTED_UID`], open to all,
/// so that only Gatekeeper stands between that user and the files. A scenario's config keeps its
/// owner and mode: it holds secrets the daemon wants private.
pub fn hand_to_user(path: &Path) {
    if path.file_name().is_some_and(|name| name == "config.toml") {
        return;
    }
    std::os::unix::fs::chown(path, Some(UNLISTED_UID), Some(UNLISTED_UID)).unwrap();
    let mode = if path.is_dir() { 0o777 } else { 0o666 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            hand_to_user(&entry.unwrap().path());
        }
    }
}

/// How long to wait for something asynchronous (a daemon start, an event) before giving up. Guests
/// run under software emulation, so this is generous; it bounds a hang, it measures nothing.
pub const PATIENCE: Duration = Duration::from_secs(60);

pub const WEBHOOK_SECRET: &str = "guest-webhook-secret-0123456789";

/// The key that signs a scenario reviewer's HTTP decisions (`[approval.keys]`).
pub fn reviewer_key(reviewer: &str) -> String {
    format!("guest-http-key-of-{reviewer}-0123456789")
}
pub const TARGET_RAN: &str = "TARGET RAN";
pub const UNLISTED_UID: u32 = 1001;

/// Where the guest keeps the project's binaries.
pub fn bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("GK_BIN_DIR").unwrap_or_else(|| "/usr/local/bin".into());
    PathBuf::from(dir).join(name)
}

/// This process's RLIMIT_RTPRIO and RLIMIT_NICE raised (as from PAM or a unit's LimitRTPRIO=),
/// which the processes it starts inherit, until dropped: then back to what they were, for the
/// tests after.
pub struct PriorityLimits([libc::rlimit; 2]);

impl PriorityLimits {
    const RESOURCES: [libc::__rlimit_resource_t; 2] = [libc::RLIMIT_RTPRIO, libc::RLIMIT_NICE];

    /// Both limits, soft and hard, at `rtprio` and `nice`.
    pub fn raise(rtprio: u64, nice: u64) -> Self {
        let mut before = [libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        }; 2];
        for (resource, old) in Self::RESOURCES.into_iter().zip(&mut before) {
            // SAFETY: getrlimit writes a local struct.
            assert_eq!(unsafe { libc::getrlimit(resource, old) }, 0);
        }
        // Made first, so that a failure below puts back what was raised.
        let raised = Self(before);
        for (resource, limit) in Self::RESOURCES.into_iter().zip([rtprio, nice]) {
            let limits = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            // SAFETY: setrlimit reads a local struct; raising is root's.
            assert_eq!(unsafe { libc::setrlimit(resource, &limits) }, 0);
        }
        raised
    }
}

impl Drop for PriorityLimits {
    fn drop(&mut self) {
        for (resource, old) in Self::RESOURCES.into_iter().zip(&self.0) {
            // SAFETY: setrlimit reads a local struct.
            unsafe { libc::setrlimit(resource, old) };
        }
    }
}

/// Waits until `check` returns something, or panics naming `what`.
pub fn wait_for<T>(what: &str, check: impl FnMut() -> Option<T>) -> T {
    wait_or_tell(what, check, String::new)
}

/// [`wait_for`], with what `tell` says when it gives up.
fn wait_or_tell<T>(
    what: &str,
    mut check: impl FnMut() -> Option<T>,
    tell: impl Fn() -> String,
) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "gave up waiting for {what}{}",
            tell()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A process held stopped (SIGSTOP) until this is dropped, also when a test fails meanwhile.
pub struct Stopped(String);

impl Stopped {
    pub fn new(pid: u32) -> Self {
        let pid = pid.to_string();
        let stopped = Command::new("kill").args(["-STOP", &pid]).status().unwrap();
        assert!(stopped.success());
        Self(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-CONT", &self.0]).status();
    }
}

/// Puts back what a test changed in the guest when dropped, also when the test fails: later
/// tests in the same guest find it as it was.
pub struct Restore<F: FnOnce()>(Option<F>);

impl<F: FnOnce()> Restore<F> {
    pub fn new(restore: F) -> Self {
        Self(Some(restore))
    }
}

impl<F: FnOnce()> Drop for Restore<F> {
    fn drop(&mut self) {
        if let Some(restore) = self.0.take() {
            restore();
        }
    }
}

/// What an attempted exec came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Exec {
    Ran,
    /// execve failed with EPERM.
    Denied,
    Other(String),
}

fn exec_result(output: &Output) -> Exec {
    match exec_outcome(output) {
        (Exec::Ran, _) if !output.status.success() => {
            Exec::Other(format!("{}: ran, then failed", output.status))
        }
        (exec, _) => exec,
    }
}

/// How a helper's exec ended, with what it printed: ran (the target printed that it did),
/// denied (the helper's exec failed with EPERM, on a line of its own) or something else.
pub fn exec_outcome(output: &Output) -> (Exec, String) {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let denied = format!("EXEC_ERRNO={}", libc::EPERM);
    let exec = if stdout.contains(TARGET_RAN) {
        Exec::Ran
    } else if stderr.lines().any(|line| line == denied) {
        Exec::Denied
    } else {
        Exec::Other(format!("{}: {stdout}{stderr}", output.status))
    };
    (exec, stdout)
}

/// A syslog receiver over TCP on loopback (RFC 6587 octet-counted frames of RFC 5424
/// messages, with TLS as RFC 5425 when asked), as a log collector off the host would run one:
/// it keeps every message it got. Dropping it closes the port and every connection.
pub struct SyslogReceiver {
    pub port: u16,
    received: Arc<Mutex<Vec<String>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SyslogReceiver {
    /// A receiver on `port` (0: any free one), appending to `received`; with `tls`, it
    /// presents the certificate [`TEST_CA_PEM`] signed for 127.0.0.1.
    pub fn start_on(port: u16, received: Arc<Mutex<Vec<String>>>, tls: bool) -> Self {
        use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
        let config = tls.then(test_server_tls);
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("syslog listener");
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (received, stop) = (received.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut connections = Vec::new();
                while !stop.load(SeqCst) {
                    let Ok((tcp, _)) = listener.accept() else {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    };
                    tcp.set_nonblocking(false).unwrap();
                    tcp.set_read_timeout(Some(Duration::from_millis(100)))
                        .unwrap();
                    let stream: Box<dyn std::io::Read + Send> = match &config {
                        Some(config) => Box::new(rustls::StreamOwned::new(
                            rustls::ServerConnection::new(config.clone()).unwrap(),
                            tcp,
                        )),
                        None => Box::new(tcp),
                    };
                    let (received, stop) = (received.clone(), stop.clone());
                    connections.push(std::thread::spawn(move || {
                        read_frames(stream, &received, &stop)
                    }));
                }
                for connection in connections {
                    let _ = connection.join();
                }
            })
        };
        Self {
            port,
            received,
            stop,
            thread: Some(thread),
        }
    }

    /// Every message so far, in the order it came.
    pub fn messages(&self) -> Vec<String> {
        self.received.lock().unwrap().clone()
    }
}

/// Reads octet-counted frames (its length in octets, a space, the message) from `stream` into
/// `received` until it ends or `stop` is set; the stream is closed then.
fn read_frames(
    mut stream: Box<dyn std::io::Read + Send>,
    received: &Mutex<Vec<String>>,
    stop: &std::sync::atomic::AtomicBool,
) {
    let mut pending = Vec::new();
    let mut buffer = [0u8; 65536];
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        match stream.read(&mut buffer) {
            Ok(0) => return,
            Ok(read) => pending.extend_from_slice(&buffer[..read]),
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
        while let Some(space) = pending.iter().position(|byte| *byte == b' ') {
            let length: usize = std::str::from_utf8(&pending[..space])
                .ok()
                .and_then(|digits| digits.parse().ok())
                .expect("an octet count");
            if pending.len() < space + 1 + length {
                break;
            }
            let message = pending[space + 1..space + 1 + length].to_vec();
            pending.drain(..space + 1 + length);
            received
                .lock()
                .unwrap()
                .push(String::from_utf8(message).expect("UTF-8 message"));
        }
    }
}

impl Drop for SyslogReceiver {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// TLS for the test receivers: the certificate [`TEST_CA_PEM`] signed for 127.0.0.1.
fn test_server_tls() -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
    let certificates = CertificateDer::pem_slice_iter(TEST_SERVER_PEM.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("test certificate");
    let key = PrivateKeyDer::from_pem_slice(TEST_SERVER_KEY.as_bytes()).expect("test key");
    Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(certificates, key)
        .expect("TLS config"),
    )
}

/// The test CA that signed [`HttpsReceiver`]'s certificate (for 127.0.0.1), for the daemon to
/// trust.
pub const TEST_CA_PEM: &str = include_str!("../fixtures/tls/ca.pem");
const TEST_SERVER_PEM: &str = include_str!("../fixtures/tls/server.pem");
/// A key for tests only: it protects nothing.
const TEST_SERVER_KEY: &str = include_str!("../fixtures/tls/server.key");

/// An HTTPS listener on loopback, as a log collector off the host would run one: it answers
/// every POST with 200 and keeps each body. Dropping it closes the port.
pub struct HttpsReceiver {
    pub port: u16,
    received: Arc<Mutex<Vec<String>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HttpsReceiver {
    /// A receiver on `port` (0: any free one), appending the bodies it gets to `received`.
    pub fn start_on(port: u16, received: Arc<Mutex<Vec<String>>>) -> Self {
        use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
        let config = test_server_tls();
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("https listener");
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (received, stop) = (received.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(SeqCst) {
                    let Ok((tcp, _)) = listener.accept() else {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    };
                    tcp.set_nonblocking(false).unwrap();
                    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    let connection = rustls::ServerConnection::new(config.clone()).unwrap();
                    let mut tls = rustls::StreamOwned::new(connection, tcp);
                    if let Some(body) = read_post(&mut tls) {
                        received.lock().unwrap().push(body);
                        let _ = std::io::Write::write_all(
                            &mut tls,
                            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                        );
                        tls.conn.send_close_notify();
                        let _ = std::io::Write::flush(&mut tls);
                    }
                }
            })
        };
        Self {
            port,
            received,
            stop,
            thread: Some(thread),
        }
    }

    /// Every body so far, in the order it came.
    pub fn bodies(&self) -> Vec<String> {
        self.received.lock().unwrap().clone()
    }
}

/// The body of one HTTP/1.1 request (with a Content-Length) read from `stream`.
fn read_post(stream: &mut impl std::io::Read) -> Option<String> {
    let mut data = Vec::new();
    let mut buffer = [0u8; 16384];
    let head_end = loop {
        if let Some(end) = data.windows(4).position(|window| window == b"\r\n\r\n") {
            break end + 4;
        }
        let read = stream.read(&mut buffer).ok().filter(|read| *read > 0)?;
        data.extend_from_slice(&buffer[..read]);
    };
    let head = String::from_utf8_lossy(&data[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|value| value.trim().parse().ok())?;
    while data.len() < head_end + length {
        let read = stream.read(&mut buffer).ok().filter(|read| *read > 0)?;
        data.extend_from_slice(&buffer[..read]);
    }
    String::from_utf8(data[head_end..head_end + length].to_vec()).ok()
}

impl Drop for HttpsReceiver {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A real HTTP listener on loopback that records every POST and answers 200.
pub struct WebhookReceiver {
    pub url: String,
    server: Arc<tiny_http::Server>,
    received: Arc<Mutex<Vec<Received>>>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Debug, Clone)]
pub struct Received {
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// When the whole request had arrived, in [`monotonic_ns`] time.
    pub at_ns: u64,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("webhook body is JSON")
    }
}

impl WebhookReceiver {
    pub fn start() -> Self {
        Self::start_on(0)
    }

    /// A receiver on `port` (0: any free one).
    pub fn start_on(port: u16) -> Self {
        let server =
            Arc::new(tiny_http::Server::http(("127.0.0.1", port)).expect("webhook listener"));
        let port = server.server_addr().to_ip().expect("ip listener").port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let server = server.clone();
            let received = received.clone();
            std::thread::spawn(move || {
                for mut request in server.incoming_requests() {
                    let mut body = String::new();
                    let _ = request.as_reader().read_to_string(&mut body);
                    let at_ns = monotonic_ns();
                    let headers = request
                        .headers()
                        .iter()
                        .map(|h| (h.field.to_string(), h.value.to_string()))
                        .collect();
                    received.lock().unwrap().push(Received {
                        headers,
                        body,
                        at_ns,
                    });
                    let _ = request.respond(tiny_http::Response::from_string("ok"));
                }
            })
        };
        Self {
            url: format!("http://127.0.0.1:{port}/hook"),
            server,
            received,
            thread: Some(thread),
        }
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// How many requests arrived so far.
    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    /// Request number `index` (from 0), once it arrived.
    pub fn nth(&self, index: usize) -> Option<Received> {
        self.received.lock().unwrap().get(index).cloned()
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

pub struct Options {
    pub grant_ttl: &'static str,
    pub request_ttl: &'static str,
    pub webhook: bool,
    /// More config, appended as is (e.g. `[[protect.connect]]` rules).
    pub extra: String,
    pub resolve_interval: &'static str,
    pub redeliver_interval: &'static str,
    /// Delivery attempts per round for the scenario's webhook.
    pub webhook_attempts: u32,
    /// Give the webhook a URL nobody listens on yet (see `Scenario::bring_webhook_up`).
    pub webhook_down: bool,
    /// Keep the journal in this subdirectory of the scenario's (e.g. to mount a small
    /// filesystem there).
    pub journal_subdir: Option<&'static str>,
    /// The webhook's `burst` (messages before its rate limit), when not the default.
    pub webhook_burst: Option<u32>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            grant_ttl: "60s",
            request_ttl: "15m",
            webhook: true,
            extra: String::new(),
            resolve_interval: "30s",
            redeliver_interval: "30s",
            webhook_attempts: 5,
            webhook_down: false,
            journal_subdir: None,
            webhook_burst: None,
        }
    }
}

/// What a network operation or tamper attempt came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// Refused with EPERM.
    Denied,
    /// Failed otherwise (e.g. ECONNREFUSED: not Gatekeeper's doing).
    Errno(i32),
}

/// An agent's name service ([`Scenario::agents_name_service`]), ended and its socket removed
/// when dropped (also when a test fails): later tests must not meet it.
pub struct NameService(Child);

impl Drop for NameService {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_file("/var/run/nscd/socket");
    }
}

/// One test's world.
pub struct Scenario {
    pub dir: PathBuf,
    /// The configured agent cgroup.
    pub agents: PathBuf,
    /// A cgroup outside every agent cgroup.
    pub outside: PathBuf,
    /// The protected binary (a copy of gk-helper that says it ran).
    pub protected: PathBuf,
    /// Another copy, not protected.
    pub unprotected: PathBuf,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub journal: PathBuf,
    /// Where the config puts the journal's sealing key (`[daemon] seal_key`).
    pub seal_key: PathBuf,
    pub pin_dir: PathBuf,
    pub http: String,
    /// The metrics and health listener.
    pub metrics: String,
    pub webhook: Option<WebhookReceiver>,
    /// The port of a webhook that is down until brought up.
    pub webhook_down_port: Option<u16>,
    daemon: Option<Child>,
}

/// A request named by its id or given whole, as the daemon lists it.
pub trait RequestId {
    fn request_id(&self) -> &str;
}

impl RequestId for str {
    fn request_id(&self) -> &str {
        self
    }
}

impl RequestId for String {
    fn request_id(&self) -> &str {
        self
    }
}

impl RequestId for Value {
    fn request_id(&self) -> &str {
        self["id"].as_str().expect("a request with an id")
    }
}

/// An HTTP client that answers every status rather than failing on 4xx and 5xx.
fn http_client() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("free port")
}

impl Scenario {
    /// Builds the world and starts a daemon on it.
    pub fn start(name: &str, options: Options) -> Self {
        let scenario = Self::prepare(name, options);
        scenario.with_daemon()
    }

    /// Builds the world (files, cgroups, config) without starting the daemon.
    pub fn prepare(name: &str, options: Options) -> Self {
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/gk-{name}"));
        // A scenario of the same name before this one: its uninstall reads the config and
        // journal made again below, so it finishes first.
        let same_name = UNINSTALLING
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|(pending, _)| *pending == pin_dir);
        if same_name && let Err(error) = finish_uninstall() {
            panic!("{error}");
        }
        let dir = PathBuf::from(format!("/tmp/gk-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("protected")).unwrap();
        // Outside the scenario's directory, which tests may hand to an ordinary user: the
        // daemon refuses a sealing key where others than root could put one first.
        let keys = PathBuf::from(format!("/tmp/gk-keys-{name}"));
        let _ = std::fs::remove_dir_all(&keys);
        std::fs::create_dir_all(&keys).unwrap();
        std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o755)).unwrap();
        let seal_key = keys.join("seal.key");
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        let agents = PathBuf::from(format!("/sys/fs/cgroup/gk-{name}-agents"));
        let outside = PathBuf::from(format!("/sys/fs/cgroup/gk-{name}-outside"));
        for cgroup in [&agents, &outside] {
            if !cgroup.exists() {
                std::fs::create_dir(cgroup).unwrap();
            }
        }
        let protected = dir.join("protected/dbexport");
        let unprotected = dir.join("bin/harmless");
        std::fs::copy(bin("gk-helper"), &protected).unwrap();
        std::fs::copy(bin("gk-helper"), &unprotected).unwrap();
        let webhook_down_port = (options.webhook && options.webhook_down).then(free_port);
        let webhook = (options.webhook && !options.webhook_down).then(WebhookReceiver::start);
        let webhook_url = webhook
            .as_ref()
            .map(|hook| hook.url.clone())
            .or_else(|| webhook_down_port.map(|port| format!("http://127.0.0.1:{port}/hook")));
        let port = free_port();
        let metrics_port = std::iter::repeat_with(free_port)
            .find(|other| *other != port)
            .expect("a second free port");
        // The daemon's own directory: agents may create nothing in it.
        let socket = dir.join("run/api.sock");
        let journal = match options.journal_subdir {
            Some(subdir) => {
                std::fs::create_dir_all(dir.join(subdir)).unwrap();
                dir.join(subdir).join("journal.jsonl")
            }
            None => dir.join("journal.jsonl"),
        };
        let burst = options
            .webhook_burst
            .map(|burst| format!("burst = {burst}\n"))
            .unwrap_or_default();
        let webhook_section = webhook_url
            .map(|url| {
                format!(
                    "[[webhook]]\nurl = \"{url}\"\nsecret = \"{WEBHOOK_SECRET}\"\ntimeout = \"5s\"\nattempts = {}\n{burst}",
                    options.webhook_attempts
                )
            })
            .unwrap_or_default();
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                r#"[daemon]
socket = "{socket}"
listen = "127.0.0.1:{port}"
metrics = "127.0.0.1:{metrics_port}"
journal = "{journal}"
seal_key = "{seal_key}"
pin_dir = "{pin_dir}"
resolve_interval = "{resolve_interval}"
redeliver_interval = "{redeliver_interval}"

[agents]
cgroups = ["{agents}"]

[[protect.exec]]
path = "{protected}"
name = "database export"

[approval]
reviewers = ["root", "alice"]
grant_ttl = "{grant_ttl}"
request_ttl = "{request_ttl}"

[approval.keys]
root = "{root_key}"
alice = "{alice_key}"

{webhook_section}
{extra}"#,
                socket = socket.display(),
                journal = journal.display(),
                seal_key = seal_key.display(),
                pin_dir = pin_dir.display(),
                agents = agents.display(),
                protected = protected.display(),
                grant_ttl = options.grant_ttl,
                root_key = reviewer_key("root"),
                alice_key = reviewer_key("alice"),
                request_ttl = options.request_ttl,
                resolve_interval = options.resolve_interval,
                redeliver_interval = options.redeliver_interval,
                extra = options.extra,
            ),
        )
        .unwrap();
        // It holds the webhook's secret: the daemon refuses it open to others.
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
        Self {
            dir,
            agents,
            outside,
            protected,
            unprotected,
            config,
            socket,
            journal,
            seal_key,
            pin_dir,
            http: format!("http://127.0.0.1:{port}"),
            metrics: format!("http://127.0.0.1:{metrics_port}"),
            webhook,
            webhook_down_port,
            daemon: None,
        }
    }

    /// Puts the prepared config in allowlist mode: agents run only `allowed` unasked.
    pub fn allow_only(&self, allowed: &[&Path]) {
        let list: Vec<String> = allowed
            .iter()
            .map(|path| format!("\"{}\"", path.display()))
            .collect();
        let text = std::fs::read_to_string(&self.config).unwrap();
        let agents = format!(
            "[agents]\nexec = \"allowlist\"\nallow = [{}]\n",
            list.join(", ")
        );
        std::fs::write(&self.config, text.replacen("[agents]\n", &agents, 1)).unwrap();
    }

    fn with_daemon(mut self) -> Self {
        self.start_daemon();
        self
    }

    /// Starts (or restarts) the daemon and waits until it enforces.
    pub fn start_daemon(&mut self) {
        self.start_daemon_with(&[]);
    }

    /// [`Scenario::start_daemon`] with more environment variables.
    pub fn start_daemon_with(&mut self, env: &[(&str, &Path)]) {
        self.spawn_daemon_with(env);
        let deadline = Instant::now() + PATIENCE;
        // The API listens once the programs enforce. A connect costs the guest nothing beside
        // the daemon's start, where each `gatekeeper status` is a process.
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err()
            || !self.gatekeeper(&["status"]).status.success()
        {
            if let Some(status) = self.daemon_exited() {
                panic!("daemon exited with {status}:\n{}", self.daemon_log());
            }
            assert!(
                Instant::now() < deadline,
                "gave up waiting for the daemon to enforce:\n{}",
                self.daemon_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // Enforcing, but the last scenario's programs may still be attached: not for long.
        if let Err(error) = finish_uninstall() {
            panic!("{error}");
        }
    }

    /// Starts the daemon without waiting for it (see [`Scenario::daemon_exited`]).
    pub fn spawn_daemon(&mut self) {
        self.spawn_daemon_with(&[]);
    }

    /// [`Scenario::spawn_daemon`] with more environment variables.
    pub fn spawn_daemon_with(&mut self, env: &[(&str, &Path)]) {
        assert!(self.daemon.is_none(), "a daemon is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("daemon.log"))
            .unwrap();
        let child = Command::new(bin("gatekeeper"))
            .arg("daemon")
            .arg("--config")
            .arg(&self.config)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start gatekeeper daemon");
        self.daemon = Some(child);
    }

    /// The exit status of a daemon that has stopped by itself; another may be started then.
    pub fn daemon_exited(&mut self) -> Option<std::process::ExitStatus> {
        let status = (self.daemon.as_mut()).and_then(|d| d.try_wait().ok().flatten())?;
        self.daemon = None;
        Some(status)
    }

    /// Starts the receiver of a webhook that was down.
    pub fn bring_webhook_up(&mut self) {
        let port = self.webhook_down_port.expect("a webhook that is down");
        self.webhook = Some(WebhookReceiver::start_on(port));
    }

    /// Starts the CLI from inside `cgroup` without waiting for it.
    pub fn spawn_gatekeeper_in(&self, cgroup: &Path, args: &[&str]) -> Child {
        Command::new(bin("gk-helper"))
            .arg("run")
            .arg(cgroup)
            .arg(bin("gatekeeper"))
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start gatekeeper in a cgroup")
    }

    /// Sends a Slack interaction, signed like Slack signs (with `secret`, at `timestamp`), whose
    /// form body is `body`; returns (status, body).
    pub fn slack_interaction(&self, body: &str, secret: &str, timestamp: i64) -> (u16, String) {
        let signature = slack_signature(secret, timestamp, body);
        self.post_slack(body, &timestamp.to_string(), &signature)
    }

    /// Posts to the Slack interactions endpoint with the given headers as they are.
    pub fn post_slack(&self, body: &str, timestamp: &str, signature: &str) -> (u16, String) {
        let agent = http_client();
        let mut response = agent
            .post(format!("{}/v1/slack/interactions", self.http))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-slack-request-timestamp", timestamp)
            .header("x-slack-signature", signature)
            .send(body)
            .expect("Slack interaction sent");
        let status = response.status().as_u16();
        (
            status,
            response.body_mut().read_to_string().unwrap_or_default(),
        )
    }

    /// SIGKILLs the daemon, as a crash or the OOM killer would.
    pub fn kill_daemon(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            child.kill().expect("SIGKILL the daemon");
            let _ = child.wait();
        }
    }

    /// `gatekeeper uninstall` as root from outside any agent cgroup.
    pub fn uninstall(&self) -> Output {
        Command::new(bin("gatekeeper"))
            .arg("--config")
            .arg(&self.config)
            .arg("uninstall")
            .output()
            .expect("run gatekeeper uninstall")
    }

    /// [`wait_for`], showing the daemon's log when it gives up.
    pub fn wait_for<T>(&self, what: &str, check: impl FnMut() -> Option<T>) -> T {
        wait_or_tell(what, check, || {
            format!("; the daemon's log:\n{}", self.daemon_log())
        })
    }

    pub fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    /// Stops the daemon with SIGTERM and waits for it.
    pub fn stop_daemon(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
    }

    /// Runs the CLI against this scenario's daemon as root from outside any agent cgroup.
    pub fn gatekeeper(&self, args: &[&str]) -> Output {
        Command::new(bin("gatekeeper"))
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run gatekeeper")
    }

    /// Runs the CLI against this scenario's daemon as the user (and group) `uid`, from outside
    /// any agent cgroup.
    pub fn gatekeeper_as(&self, uid: u32, args: &[&str]) -> Output {
        Command::new(bin("gatekeeper"))
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .uid(uid)
            .gid(uid)
            .output()
            .expect("run gatekeeper")
    }

    /// Runs the CLI from inside `cgroup` (joined by the helper before the exec).
    pub fn gatekeeper_in(&self, cgroup: &Path, args: &[&str]) -> Output {
        let gatekeeper = bin("gatekeeper");
        Command::new(bin("gk-helper"))
            .arg("run")
            .arg(cgroup)
            .arg(&gatekeeper)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run gatekeeper in a cgroup")
    }

    /// Execs `program` from a fresh process in `cgroup` (or none with "-").
    pub fn exec_in(&self, cgroup: &Path, program: &Path) -> Exec {
        let output = Command::new(bin("gk-helper"))
            .arg("run")
            .arg(cgroup)
            .arg(program)
            .arg("target")
            .output()
            .expect("run gk-helper");
        exec_result(&output)
    }

    /// Execs `program args...` from a fresh process in `cgroup`; with what it printed.
    pub fn exec_with(&self, cgroup: &Path, program: &Path, args: &[&str]) -> (Exec, String) {
        self.exec_with_env(cgroup, program, args, &[])
    }

    /// [`Scenario::exec_with`] with `env` added to the environment.
    pub fn exec_with_env(
        &self,
        cgroup: &Path,
        program: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> (Exec, String) {
        let output = Command::new(bin("gk-helper"))
            .arg("run")
            .arg(cgroup)
            .arg(program)
            .args(args)
            .envs(env.iter().copied())
            .output()
            .expect("run gk-helper");
        (
            exec_result(&output),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    }

    /// The agent tries the protected binary.
    pub fn agent_exec(&self) -> Exec {
        self.exec_in(&self.agents, &self.protected)
    }

    /// `threads` simultaneous execs of `program` from one process in `cgroup`:
    /// returns (ran, denied, other).
    pub fn race(&self, cgroup: &Path, threads: usize, program: &Path) -> (usize, usize, usize) {
        let program = program.display().to_string();
        race_counts(&[
            "race",
            &cgroup.display().to_string(),
            &threads.to_string(),
            &program,
        ])
    }

    /// One network operation (`tcp`, `udp`, `sendto`, `sendmmsg`, `fastopen`) from a fresh
    /// process in `cgroup`.
    pub fn net(&self, cgroup: &Path, op: &str, address: &str) -> Outcome {
        helper_outcome(&["net", &cgroup.display().to_string(), op, address])
    }

    /// One attempt against the enforcer (see gk-helper's `tamper`) from a fresh process, as
    /// root, in `cgroup`.
    pub fn tamper(&self, cgroup: &Path, op: &str, args: &[&str]) -> Outcome {
        let cgroup = cgroup.display().to_string();
        let mut all = vec!["tamper", cgroup.as_str(), op];
        all.extend_from_slice(args);
        helper_outcome(&all)
    }

    /// [`Scenario::tamper`] with `path` opened outside the agent cgroups as the standard input
    /// (a terminal the agent was started from).
    pub fn tamper_holding(&self, cgroup: &Path, path: &str, op: &str, args: &[&str]) -> Outcome {
        let cgroup = cgroup.display().to_string();
        let mut all = vec!["holding", path, cgroup.as_str(), op];
        all.extend_from_slice(args);
        helper_outcome(&all)
    }

    /// [`Scenario::tamper`] as the ordinary user [`UNLISTED_UID`] (no capabilities) in `cgroup`.
    pub fn tamper_as_user(&self, cgroup: &Path, op: &str, args: &[&str]) -> Outcome {
        let uid = UNLISTED_UID.to_string();
        let cgroup = cgroup.display().to_string();
        let helper = bin("gk-helper").display().to_string();
        let mut all = vec![
            "as-user",
            uid.as_str(),
            cgroup.as_str(),
            helper.as_str(),
            "tamper",
            "-",
            op,
        ];
        all.extend_from_slice(args);
        helper_outcome(&all)
    }

    /// A root agent's nscd (gk-helper's `name-service`, each pair `UID=NAME` or `HOST=IPV4`),
    /// serving once this returns; ended when the value is dropped.
    pub fn agents_name_service(&self, pairs: &[String]) -> NameService {
        use std::io::BufRead as _;
        let agents = self.agents.display().to_string();
        let mut args = vec!["tamper", agents.as_str(), "name-service"];
        args.extend(pairs.iter().map(String::as_str));
        let mut service = NameService(
            Command::new(bin("gk-helper"))
                .args(&args)
                .stdout(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let mut ready = String::new();
        std::io::BufReader::new(service.0.stdout.as_mut().unwrap())
            .read_line(&mut ready)
            .unwrap();
        assert_eq!(ready.trim(), "READY", "the agent's name service");
        service
    }

    /// Root and user agents in the configured agent cgroup are both denied `op` on `args`. (For
    /// the user, EPERM alone: a refusal that becomes an approval request journals nothing per
    /// attempt. Where the kernel refuses the user anyway, use [`Scenario::user_refused_anyway`];
    /// for a tamper attempt, [`Scenario::user_agent_denied`].)
    pub fn agents_denied(&self, op: &str, args: &[&str]) {
        assert_eq!(
            self.tamper(&self.agents, op, args),
            Outcome::Denied,
            "root agent: {op} {args:?}"
        );
        assert_eq!(
            self.tamper_as_user(&self.agents, op, args),
            Outcome::Denied,
            "user agent: {op} {args:?}"
        );
    }

    /// The ordinary user [`UNLISTED_UID`] in the configured agent cgroup is denied `op` on
    /// `args` by Gatekeeper: EPERM, and a `tamper_attempt` of that user journaled. The kernel's
    /// own refusal of what the user may not do anyway (a capability it lacks) is EPERM too but
    /// passes no hook of Gatekeeper's: a test of that would prove nothing, and fails here.
    pub fn user_agent_denied(&self, op: &str, args: &[&str]) {
        let attempts = || {
            self.journal_events()
                .iter()
                .filter(|event| {
                    event["type"] == "tamper_attempt" && event["uid"] == u64::from(UNLISTED_UID)
                })
                .count()
        };
        let before = attempts();
        assert_eq!(
            self.tamper_as_user(&self.agents, op, args),
            Outcome::Denied,
            "user agent: {op} {args:?}"
        );
        wait_for(
            &format!("the user agent's {op} {args:?} journaled as a tamper attempt"),
            || (attempts() > before).then_some(()),
        );
    }

    /// `op` on `args` is what the kernel refuses [`UNLISTED_UID`] itself (a process of another
    /// user, a capability it lacks), before any hook of Gatekeeper's: refused outside the agent
    /// cgroups as well as inside, so the property holds for ordinary users without Gatekeeper
    /// (and [`Scenario::user_agent_denied`] could not tell).
    pub fn user_refused_anyway(&self, op: &str, args: &[&str]) {
        for cgroup in [&self.outside, &self.agents] {
            assert_eq!(
                self.tamper_as_user(cgroup, op, args),
                Outcome::Denied,
                "the kernel refuses the user in {}: {op} {args:?}",
                cgroup.display()
            );
        }
    }

    pub fn daemon_pid(&self) -> u32 {
        self.daemon.as_ref().expect("daemon running").id()
    }

    /// `threads` simultaneous operations from one process in `cgroup`: (passed, denied, other).
    pub fn race_net(
        &self,
        cgroup: &Path,
        threads: usize,
        op: &str,
        address: &str,
    ) -> (usize, usize, usize) {
        race_counts(&[
            "race-net",
            &cgroup.display().to_string(),
            &threads.to_string(),
            op,
            address,
        ])
    }

    /// One operation from a fresh process in `cgroup` to each of `count` ports from
    /// `first_port`: (passed, denied, other).
    pub fn sweep(
        &self,
        cgroup: &Path,
        op: &str,
        address: &str,
        first_port: u16,
        count: u16,
    ) -> (usize, usize, usize) {
        race_counts(&[
            "sweep",
            &cgroup.display().to_string(),
            op,
            address,
            &first_port.to_string(),
            &count.to_string(),
        ])
    }

    /// `gatekeeper status --json` as root outside the agent cgroups.
    pub fn status(&self) -> Value {
        let output = self.gatekeeper(&["status", "--json"]);
        assert!(output.status.success(), "status failed: {output:?}");
        serde_json::from_slice(&output.stdout).expect("status --json is JSON")
    }

    pub fn requests(&self, all: bool) -> Vec<Value> {
        let mut args = vec!["requests", "--json"];
        if all {
            args.push("--all");
        }
        let output = self.gatekeeper(&args);
        assert!(output.status.success(), "requests failed: {output:?}");
        serde_json::from_slice(&output.stdout).expect("requests --json is JSON")
    }

    /// The request for an exec of `program`, once the daemon has it.
    pub fn wait_request(&self, program: &Path) -> Value {
        self.wait_request_for(&program.display().to_string())
    }

    /// The pending request whose target reads `target` (a path, or e.g. `tcp 127.0.5.1:5432`).
    pub fn wait_request_for(&self, target: &str) -> Value {
        wait_for(&format!("a request for {target}"), || {
            self.requests(true)
                .into_iter()
                .rev()
                .find(|request| request["target"] == target && request["state"] == "pending")
        })
    }

    /// The pending request for an exec whose arguments, as the kernel read them, are `argv`.
    pub fn wait_exec_request(&self, argv: &[&str]) -> Value {
        wait_for(&format!("a request to run {argv:?}"), || {
            self.requests(true).into_iter().rev().find(|request| {
                request["state"] == "pending" && request["exec"]["argv"] == serde_json::json!(argv)
            })
        })
    }

    /// The agent tries the protected binary, is denied, and this returns the request's id.
    pub fn denied_request(&self) -> String {
        assert_eq!(self.agent_exec(), Exec::Denied);
        self.wait_request(&self.protected)["id"]
            .as_str()
            .expect("request id")
            .to_owned()
    }

    /// Whether the journal holds an event of `kind`.
    pub fn journal_has(&self, kind: &str) -> bool {
        self.journal_events()
            .iter()
            .any(|event| event["type"] == kind)
    }

    pub fn request(&self, id: &str) -> Value {
        self.requests(true)
            .into_iter()
            .find(|request| request["id"] == id)
            .unwrap_or_else(|| panic!("no request {id}"))
    }

    /// The journal's complete records. A line still being written (no newline yet) is left for
    /// the next read; a complete line that is not JSON fails the test.
    pub fn journal_events(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.journal)
            .unwrap_or_default()
            .split_inclusive('\n')
            .filter_map(|line| line.strip_suffix('\n'))
            .map(|line| {
                serde_json::from_str::<Value>(line).expect("journal line is JSON")["event"].clone()
            })
            .collect()
    }

    /// Waits until the journal holds an event of `kind` matching `predicate`.
    pub fn wait_journal(&self, kind: &str, predicate: impl Fn(&Value) -> bool) -> Value {
        wait_for(&format!("a {kind} journal record"), || {
            self.journal_events()
                .into_iter()
                .find(|event| event["type"] == kind && predicate(event))
        })
    }

    /// Sends an HTTP decision signed with `secret` at `timestamp`; returns (status, body).
    /// Approves `request` as root on the CLI and waits until its grant is in the kernel.
    pub fn approve<R: RequestId + ?Sized>(&self, request: &R) {
        let id = request.request_id();
        let output = self.gatekeeper(&["approve", id, "--reason", "test"]);
        assert!(output.status.success(), "approve failed: {output:?}");
        self.wait_journal("grant_issued", |event| event["request_id"] == id);
    }

    /// GETs `path` from the metrics listener: the status and the body.
    pub fn get_metrics(&self, path: &str) -> (u16, String) {
        let agent = http_client();
        let mut response = agent
            .get(format!("{}{path}", self.metrics))
            .call()
            .expect("metrics listener answers");
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        (status, text)
    }

    /// The value of the sample `name` (with its labels, as exposed), if there is one.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let (status, text) = self.get_metrics("/metrics");
        assert_eq!(status, 200, "{text}");
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }

    pub fn http_decision(
        &self,
        id: &str,
        body: &str,
        secret: &str,
        timestamp: i64,
    ) -> (u16, String) {
        let signature = decision_signature(secret, timestamp, body);
        let agent = http_client();
        let mut response = agent
            .post(format!("{}/v1/requests/{id}/decision", self.http))
            .header("content-type", "application/json")
            .header("x-gatekeeper-timestamp", timestamp.to_string())
            .header("x-gatekeeper-signature", signature)
            .send(body)
            .expect("HTTP decision sent");
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        (status, text)
    }
}

/// A gk-helper op started in an agent cgroup (as root, or as the ordinary user) that printed
/// READY and waits for a line on its standard input before it goes on.
pub struct Waiting {
    child: std::process::Child,
    stdout: std::io::BufReader<std::process::ChildStdout>,
    seen: String,
}

impl Waiting {
    /// Starts gk-helper `op args` in `cgroup` (with `user`, as [`UNLISTED_UID`]) and waits for
    /// its READY; the whole output when there is none.
    pub fn start(user: bool, cgroup: &Path, op: &str, args: &[&str]) -> Result<Self, String> {
        use std::io::BufRead as _;
        let helper = bin("gk-helper").display().to_string();
        let cgroup = cgroup.display().to_string();
        let uid = UNLISTED_UID.to_string();
        let mut all: Vec<&str> = if user {
            vec!["as-user", &uid, &cgroup, &helper, "tamper", "-"]
        } else {
            vec!["tamper", &cgroup]
        };
        all.push(op);
        all.extend_from_slice(args);
        let mut child = Command::new(&helper)
            .args(&all)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run gk-helper");
        let stdout = std::io::BufReader::new(child.stdout.take().expect("piped stdout"));
        // From here on dropping it ends the helper.
        let mut waiting = Self {
            child,
            stdout,
            seen: String::new(),
        };
        loop {
            let mut line = String::new();
            if waiting.stdout.read_line(&mut line).unwrap_or(0) == 0 {
                return Err(format!("no READY: {}", waiting.seen));
            }
            waiting.seen.push_str(&line);
            if line.trim() == "READY" {
                return Ok(waiting);
            }
        }
    }

    /// Lets the op go on; the outcome its `RESULT=` line reports.
    pub fn outcome(self) -> Outcome {
        let output = self.finish();
        outcome_in(&output).unwrap_or_else(|| panic!("unexpected gk-helper output: {output}"))
    }

    /// Lets the op go on; its whole output once it ends.
    pub fn finish(mut self) -> String {
        use std::io::{Read as _, Write as _};
        if let Some(mut stdin) = self.child.stdin.take() {
            let _ = stdin.write_all(b"\n");
        }
        let mut rest = String::new();
        let _ = self.stdout.read_to_string(&mut rest);
        let _ = self.child.wait();
        std::mem::take(&mut self.seen) + &rest
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        // Ended already when it finished; else (no READY, or never let go) ended here.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs gk-helper and reads its `RESULT=` line (or a target that ran, for exec routes).
pub fn helper_outcome(args: &[&str]) -> Outcome {
    let output = Command::new(bin("gk-helper"))
        .args(args)
        .output()
        .expect("run gk-helper");
    let text = String::from_utf8_lossy(&output.stdout);
    outcome_in(&text).unwrap_or_else(|| panic!("unexpected gk-helper output: {output:?}"))
}

/// The outcome gk-helper's standard output `text` reports: its `RESULT=` line (or a target that
/// ran, for exec routes). None when it reports none.
pub fn outcome_in(text: &str) -> Option<Outcome> {
    if text.contains(TARGET_RAN) {
        return Some(Outcome::Ok);
    }
    let result = text
        .lines()
        .find_map(|line| line.trim().strip_prefix("RESULT="))?;
    match result {
        "ok" => Some(Outcome::Ok),
        errno => match errno.strip_prefix("errno:")?.parse().ok()? {
            libc::EPERM => Some(Outcome::Denied),
            errno => Some(Outcome::Errno(errno)),
        },
    }
}

fn race_counts(args: &[&str]) -> (usize, usize, usize) {
    let output = Command::new(bin("gk-helper"))
        .args(args)
        .output()
        .expect("run gk-helper race");
    let text = String::from_utf8_lossy(&output.stdout);
    let count = |key: &str| {
        text.split_whitespace()
            .find_map(|part| part.strip_prefix(key)?.parse().ok())
            .unwrap_or_else(|| panic!("race output without {key}: {output:?}"))
    };
    (count("passed="), count("denied="), count("other="))
}

/// The `X-Gatekeeper-Signature` of an HTTP decision, computed here independently of the daemon's
/// code.
pub fn decision_signature(secret: &str, timestamp: i64, body: &str) -> String {
    use hmac::Mac as _;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("any key");
    mac.update(format!("{timestamp}.{body}").as_bytes());
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// CLOCK_MONOTONIC in nanoseconds: one clock for every process in the guest.
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// Slack's request signature, computed here independently of the daemon's code.
pub fn slack_signature(secret: &str, timestamp: i64, body: &str) -> String {
    use hmac::Mac as _;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("any key");
    mac.update(format!("v0:{timestamp}:{body}").as_bytes());
    format!("v0={}", hex::encode(mac.finalize().into_bytes()))
}

pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs() as i64)
        .unwrap_or(0)
}

/// The last scenario's `gatekeeper uninstall`, left running when it was dropped. Each link's
/// detach waits out a grace period in the kernel, seconds for all of them in an emulated guest,
/// and the next scenario's daemon spends them verifying its programs instead of waiting.
static UNINSTALLING: Mutex<Option<(PathBuf, Child)>> = Mutex::new(None);

/// Waits for the uninstall [`UNINSTALLING`] holds, if any; says what went wrong if its programs
/// may still be attached.
fn finish_uninstall() -> Result<(), String> {
    let pending = UNINSTALLING
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    let Some((pin_dir, child)) = pending else {
        return Ok(());
    };
    match child.wait_with_output() {
        Ok(output) if output.status.success() && !pin_dir.exists() => Ok(()),
        output => Err(format!(
            "the uninstall of the last scenario's {} failed: {output:?}",
            pin_dir.display()
        )),
    }
}

impl Drop for Scenario {
    fn drop(&mut self) {
        self.stop_daemon();
        // Stopping leaves the programs enforcing: take them away before the next test's daemon
        // enforces (it waits for this; see UNINSTALLING).
        if self.pin_dir.exists() {
            // No panic here: one while a failed test unwinds would end the whole run.
            if let Err(error) = finish_uninstall() {
                eprintln!("{error}");
            }
            let uninstall = Command::new(bin("gatekeeper"))
                .arg("--config")
                .arg(&self.config)
                .arg("uninstall")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn();
            match uninstall {
                Ok(child) => {
                    *UNINSTALLING.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some((self.pin_dir.clone(), child))
                }
                Err(error) => eprintln!("cannot start gatekeeper uninstall: {error}"),
            }
        }
        // Children first: a cgroup with children cannot be removed.
        for cgroup in [&self.agents, &self.outside] {
            if let Ok(entries) = std::fs::read_dir(cgroup) {
                for entry in entries.filter_map(Result::ok) {
                    if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                        let _ = std::fs::remove_dir(entry.path());
                    }
                }
            }
            let _ = std::fs::remove_dir(cgroup);
        }
    }
}
