//! The measured side: a long-lived process in one cgroup that runs the syscall loops, the agent's
//! denied and granted attempts, and floods, on request over its stdin. Being the same process for
//! every round keeps the baseline and the variants alike in all but what is measured.
//!
//! Requests are single lines; each answer is one line, `ok ...` or `err <reason>`.

use std::{
    ffi::CString,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use gatekeeper_tests::monotonic_ns;

/// The loops whose cost is compared: (name, what the table calls it).
pub const LOOPS: [(&str, &str); 4] = [
    ("exec", "fork+exec"),
    ("connect", "TCP connect+accept"),
    ("open", "open+read+close"),
    ("sendto", "UDP sendto+recv"),
];

/// Run only for the per-hook statistics: the hooks the loops above do not reach.
pub const MISC_LOOP: &str = "misc";

/// A static binary that exits at once: the cheapest exec, so the hooks' share is the largest.
const EXEC_TARGET: &str = "/bin/true";

/// Handle on a worker, from the controlling side.
pub struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Worker {
    /// Starts a worker that joins `cgroup` before it does anything else.
    pub fn spawn(cgroup: &Path) -> anyhow::Result<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .arg("worker")
            .arg(cgroup)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("start a bench worker")?;
        let stdin = child.stdin.take().context("worker stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("worker stdout")?);
        let mut worker = Self {
            child,
            stdin,
            stdout,
        };
        worker.call("ping")?;
        Ok(worker)
    }

    /// Sends one request and returns the fields after `ok`.
    pub fn call(&mut self, request: &str) -> anyhow::Result<Vec<u64>> {
        writeln!(self.stdin, "{request}").context("write to the worker")?;
        self.stdin.flush()?;
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!("the worker exited during `{request}`");
        }
        let line = line.trim();
        match line.strip_prefix("ok") {
            Some(rest) => rest
                .split_whitespace()
                .map(|field| field.parse().with_context(|| format!("worker said {line}")))
                .collect(),
            None => bail!("worker, on `{request}`: {line}"),
        }
    }

    /// Runs `iterations` of loop `kind`; returns the nanoseconds they took.
    pub fn run(&mut self, kind: &str, iterations: u64) -> anyhow::Result<u64> {
        let fields = self.call(&format!("loop {kind} {iterations}"))?;
        fields.first().copied().context("no time from the worker")
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.stdin.flush();
        let _ = self.child.wait();
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
}

/// The worker's own side: serves requests until `quit` or the end of its input.
pub fn serve(cgroup: &str) -> anyhow::Result<()> {
    std::fs::write(
        Path::new(cgroup).join("cgroup.procs"),
        std::process::id().to_string(),
    )
    .with_context(|| format!("join {cgroup}"))?;
    pin_to_first_cpu();
    let mut state = State::default();
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    for line in stdin.lock().lines() {
        let line = line?;
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() == Some(&"quit") {
            break;
        }
        let answer = match state.handle(&words) {
            Ok(fields) => {
                let fields: Vec<String> = fields.iter().map(u64::to_string).collect();
                format!("ok {}", fields.join(" "))
            }
            Err(error) => format!("err {error:#}"),
        };
        writeln!(stdout, "{answer}")?;
        stdout.flush()?;
    }
    Ok(())
}

/// One CPU for every measured loop: the scheduler moving it between vCPUs is noise.
fn pin_to_first_cpu() {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET and sched_setaffinity only touch it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Sockets and files made once, so that the loops measure only their own syscalls.
#[derive(Default)]
struct State {
    listener: Option<(TcpListener, SocketAddr)>,
    udp: Option<(UdpSocket, UdpSocket, SocketAddr)>,
    file: Option<PathBuf>,
}

impl State {
    fn handle(&mut self, words: &[&str]) -> anyhow::Result<Vec<u64>> {
        let number = |index: usize| -> anyhow::Result<u64> {
            words
                .get(index)
                .context("missing argument")?
                .parse()
                .context("not a number")
        };
        let text = |index: usize| words.get(index).copied().context("missing argument");
        match words.first().copied() {
            Some("ping") => Ok(vec![]),
            Some("loop") => {
                let kind = text(1)?;
                let iterations = number(2)?;
                let started = Instant::now();
                self.run_loop(kind, iterations)?;
                Ok(vec![started.elapsed().as_nanos() as u64])
            }
            Some("deny") => deny(text(1)?),
            Some("pass") => pass(text(1)?),
            Some("connect") => connect_once(text(1)?.parse()?),
            Some("flood") => flood(text(1)?.parse()?, number(2)?, number(3)?),
            _ => bail!("unknown request {words:?}"),
        }
    }

    fn run_loop(&mut self, kind: &str, iterations: u64) -> anyhow::Result<()> {
        match kind {
            "exec" => exec_loop(iterations),
            "connect" => {
                if self.listener.is_none() {
                    let listener = TcpListener::bind("127.0.0.1:0")?;
                    let address = listener.local_addr()?;
                    self.listener = Some((listener, address));
                }
                let Some((listener, address)) = &self.listener else {
                    bail!("no listener");
                };
                connect_loop(listener, *address, iterations)
            }
            "open" => {
                let path = match &self.file {
                    Some(path) => path.clone(),
                    None => {
                        let path =
                            PathBuf::from(format!("/tmp/gk-bench-data-{}", std::process::id()));
                        std::fs::write(&path, [7u8; 4096])?;
                        self.file = Some(path.clone());
                        path
                    }
                };
                open_loop(&path, iterations)
            }
            "sendto" => {
                if self.udp.is_none() {
                    let receiver = UdpSocket::bind("127.0.0.1:0")?;
                    let sender = UdpSocket::bind("127.0.0.1:0")?;
                    let address = receiver.local_addr()?;
                    self.udp = Some((receiver, sender, address));
                }
                let Some((receiver, sender, address)) = &self.udp else {
                    bail!("no sockets");
                };
                sendto_loop(receiver, sender, *address, iterations)
            }
            MISC_LOOP => misc_loop(iterations),
            _ => bail!("unknown loop {kind}"),
        }
    }
}

impl Drop for State {
    fn drop(&mut self) {
        if let Some(path) = &self.file {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn c_string(text: &str) -> anyhow::Result<CString> {
    CString::new(text).context("NUL in a path")
}

/// fork, execve of a static binary that exits 0, waitpid.
fn exec_loop(iterations: u64) -> anyhow::Result<()> {
    let path = c_string(EXEC_TARGET)?;
    let argv = [path.as_ptr(), std::ptr::null()];
    let envp = [std::ptr::null::<libc::c_char>()];
    for _ in 0..iterations {
        let status = spawn_and_wait(&path, &argv, &envp, None)?;
        if status != 0 {
            bail!("{EXEC_TARGET} exited with wait status {status}");
        }
    }
    Ok(())
}

/// Forks a child that execs `path`, with `stdout` as its standard output if given; returns its
/// wait status.
fn spawn_and_wait(
    path: &CString,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    stdout: Option<i32>,
) -> anyhow::Result<i32> {
    // SAFETY: the child only calls execve and _exit, both async-signal-safe, on memory prepared
    // before the fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        bail!("fork: errno {}", errno());
    }
    if pid == 0 {
        // SAFETY: as above.
        unsafe {
            if let Some(fd) = stdout {
                libc::dup2(fd, 1);
            }
            libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr());
            libc::_exit(127);
        }
    }
    let mut status = 0;
    // SAFETY: waits for our own child.
    if unsafe { libc::waitpid(pid, &mut status, 0) } < 0 {
        bail!("waitpid: errno {}", errno());
    }
    Ok(status)
}

/// Closing with a zero linger resets the connection: no TIME_WAIT piles up, so thousands of
/// rounds never run out of local ports.
fn reset_on_close(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt reads a linger struct of the size given.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

fn connect_loop(
    listener: &TcpListener,
    address: SocketAddr,
    iterations: u64,
) -> anyhow::Result<()> {
    for _ in 0..iterations {
        let client = TcpStream::connect(address)?;
        let (server, _) = listener.accept()?;
        reset_on_close(&client);
        drop(client);
        drop(server);
    }
    Ok(())
}

fn open_loop(path: &Path, iterations: u64) -> anyhow::Result<()> {
    let mut buffer = [0u8; 4096];
    for _ in 0..iterations {
        let mut file = std::fs::File::open(path)?;
        let read = file.read(&mut buffer)?;
        if read == 0 {
            bail!("{} is empty", path.display());
        }
    }
    Ok(())
}

/// Unconnected sends name their destination: each one passes `socket_sendmsg` with an address.
fn sendto_loop(
    receiver: &UdpSocket,
    sender: &UdpSocket,
    address: SocketAddr,
    iterations: u64,
) -> anyhow::Result<()> {
    let mut buffer = [0u8; 64];
    for _ in 0..iterations {
        sender.send_to(&buffer[..32], address)?;
        receiver.recv(&mut buffer)?;
    }
    Ok(())
}

/// What the loops above leave out: rename and unlink, names made as a directory, a symlink and a
/// FIFO, a signal check, another process's /proc, an fcntl, an ioctl, an inotify watch and a
/// SIGIO.
fn misc_loop(iterations: u64) -> anyhow::Result<()> {
    let first = PathBuf::from(format!("/tmp/gk-bench-misc-{}", std::process::id()));
    let second = first.with_extension("moved");
    let (ready, notify) = (sigio_pipe()?, c_string("/tmp")?);
    // SAFETY: a new inotify instance, watched paths that live for the call.
    let watches = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
    if watches < 0 {
        bail!("inotify_init1: errno {}", errno());
    }
    let fifo = c_string(&format!("{}.fifo", first.display()))?;
    for _ in 0..iterations {
        std::fs::write(&first, b"x")?;
        std::fs::rename(&first, &second)?;
        std::fs::remove_file(&second)?;
        // The other ways a name is made: a directory, a symlink, a node.
        std::fs::create_dir(&first)?;
        std::fs::remove_dir(&first)?;
        std::os::unix::fs::symlink(&second, &first)?;
        std::fs::remove_file(&first)?;
        // SAFETY (all below): plain syscalls on descriptors, paths and buffers that live for the
        // call. Signal 0 to ourselves only checks permission.
        unsafe {
            libc::mkfifo(fifo.as_ptr(), 0o600);
            libc::unlink(fifo.as_ptr());
            libc::kill(libc::getpid(), 0);
        }
        let _ = std::fs::read_to_string("/proc/1/stat")?;
        unsafe {
            libc::fcntl(ready[0], libc::F_GETFL);
            // An ioctl none of the hooks judges: what every other process's ioctls pay.
            let mut queued: libc::c_int = 0;
            libc::ioctl(ready[0], libc::FIONREAD, &raw mut queued);
            libc::inotify_add_watch(watches, notify.as_ptr(), libc::IN_CREATE);
            // Data on the pipe: the kernel sends its owner (this process, which ignores it) SIGIO.
            let mut byte = 0u8;
            libc::write(ready[1], (&raw const byte).cast(), 1);
            libc::read(ready[0], (&raw mut byte).cast(), 1);
        }
    }
    // SAFETY: closing descriptors this function opened.
    unsafe {
        libc::close(watches);
        libc::close(ready[0]);
        libc::close(ready[1]);
    }
    Ok(())
}

/// A pipe whose read end signals this process (SIGIO, ignored) when data reaches it.
fn sigio_pipe() -> anyhow::Result<[i32; 2]> {
    let mut fds = [0; 2];
    // SAFETY: plain syscalls on the new pipe; ignoring SIGIO changes no memory.
    unsafe {
        libc::signal(libc::SIGIO, libc::SIG_IGN);
        if libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) != 0
            || libc::fcntl(fds[0], libc::F_SETOWN, libc::getpid()) != 0
            || libc::fcntl(fds[0], libc::F_SETFL, libc::O_ASYNC) != 0
        {
            bail!("a SIGIO pipe: errno {}", errno());
        }
    }
    Ok(fds)
}

/// One exec of the protected binary, which must be denied: returns when execve came back.
fn deny(path: &str) -> anyhow::Result<Vec<u64>> {
    let path = c_string(path)?;
    let target = c_string("target")?;
    let argv = [path.as_ptr(), target.as_ptr(), std::ptr::null()];
    let envp = [std::ptr::null::<libc::c_char>()];
    // SAFETY: NUL-terminated argv and envp. Were it allowed, this process would be replaced and
    // the controller would see it go.
    unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    let at = monotonic_ns();
    match errno() {
        libc::EPERM => Ok(vec![at]),
        other => bail!("execve failed with errno {other}, not EPERM"),
    }
}

/// One exec of the protected binary in a child, which must run.
fn pass(path: &str) -> anyhow::Result<Vec<u64>> {
    let path_c = c_string(path)?;
    let target = c_string("target")?;
    let argv = [path_c.as_ptr(), target.as_ptr(), std::ptr::null()];
    let envp = [std::ptr::null::<libc::c_char>()];
    // Our stdout is the answer channel: the target's greeting goes elsewhere.
    let null = std::fs::OpenOptions::new().write(true).open("/dev/null")?;
    let started = monotonic_ns();
    let status = spawn_and_wait(&path_c, &argv, &envp, Some(null.as_raw_fd()))?;
    let done = monotonic_ns();
    if status != 0 {
        bail!("{path} did not run: wait status {status}");
    }
    Ok(vec![started, done])
}

fn tcp_socket() -> anyhow::Result<std::os::fd::OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned from here on.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        bail!("socket: errno {}", errno());
    }
    // SAFETY: a fresh fd nothing else owns.
    Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) })
}

fn sockaddr_v4(address: SocketAddr) -> anyhow::Result<libc::sockaddr_in> {
    let SocketAddr::V4(v4) = address else {
        bail!("IPv4 only");
    };
    Ok(libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: v4.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(v4.ip().octets()),
        },
        sin_zero: [0; 8],
    })
}

fn raw_connect(fd: i32, address: &libc::sockaddr_in) -> i32 {
    // SAFETY: the address lives for the call and its size is given.
    let result = unsafe {
        libc::connect(
            fd,
            (address as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if result == 0 { 0 } else { errno() }
}

/// One TCP connect from a fresh socket; returns its errno (0 when it connected).
fn connect_once(address: SocketAddr) -> anyhow::Result<Vec<u64>> {
    let socket = tcp_socket()?;
    let errno = raw_connect(socket.as_raw_fd(), &sockaddr_v4(address)?);
    Ok(vec![errno as u64])
}

/// Denied connects as fast as one thread makes them, on one socket (a denied connect leaves it
/// unconnected): up to `count` of them, or for `seconds`. Returns (attempts, denied, other,
/// elapsed ns).
fn flood(address: SocketAddr, count: u64, seconds: u64) -> anyhow::Result<Vec<u64>> {
    let socket = tcp_socket()?;
    let address = sockaddr_v4(address)?;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let (mut attempts, mut denied, mut other) = (0u64, 0u64, 0u64);
    while attempts < count {
        match raw_connect(socket.as_raw_fd(), &address) {
            libc::EPERM => denied += 1,
            _ => other += 1,
        }
        attempts += 1;
        if attempts.is_multiple_of(4096) && Instant::now() > deadline {
            break;
        }
    }
    Ok(vec![
        attempts,
        denied,
        other,
        started.elapsed().as_nanos() as u64,
    ])
}
