//! What guest tests run as agents: join a cgroup, then exec, connect or send; or race several at
//! once. A copy of this binary is also the protected target: run with `target`, it says so.
//!
//! Network operations print `RESULT=ok` or `RESULT=errno:N`.

use std::{
    ffi::CString,
    net::{SocketAddr, TcpStream, UdpSocket},
    path::Path,
    process::{Command, ExitCode},
    sync::{Arc, Barrier},
    time::Duration,
};

/// Printed by a target that ran; tests look for it.
const RAN: &str = "TARGET RAN";

const USAGE: &str = "usage: gk-helper target
  | run CGROUP PROGRAM [ARGS...]
  | race CGROUP THREADS PROGRAM
  | net CGROUP OP ADDRESS:PORT         (OP: tcp, udp, sendto, sendmmsg, fastopen)
  | race-net CGROUP THREADS OP ADDRESS:PORT
CGROUP may be - to stay where the helper is.";

fn join_cgroup(cgroup: &str) -> Result<(), String> {
    if cgroup == "-" {
        return Ok(());
    }
    let procs = Path::new(cgroup).join("cgroup.procs");
    std::fs::write(&procs, std::process::id().to_string())
        .map_err(|error| format!("join {}: {error}", procs.display()))
}

/// Replaces this process with `program args`; returns only on failure, with the errno.
fn exec(program: &str, args: &[&str]) -> i32 {
    let Ok(path) = CString::new(program) else {
        return libc::EINVAL;
    };
    let mut argv: Vec<CString> = vec![path.clone()];
    argv.extend(args.iter().filter_map(|arg| CString::new(*arg).ok()));
    let mut pointers: Vec<*const libc::c_char> = argv.iter().map(|arg| arg.as_ptr()).collect();
    pointers.push(std::ptr::null());
    // SAFETY: argv holds NUL-terminated C strings and ends in a null pointer.
    unsafe {
        libc::execv(path.as_ptr(), pointers.as_ptr());
    }
    last_errno()
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn outcome(result: std::io::Result<()>) -> Result<(), i32> {
    result.map_err(|error| error.raw_os_error().unwrap_or(-1))
}

/// A `sockaddr_in`/`sockaddr_in6` for raw libc calls.
fn raw_address(address: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let length = match address {
        SocketAddr::V4(v4) => {
            let raw = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is large and aligned enough for any sockaddr.
            unsafe { std::ptr::write((&raw mut storage).cast(), raw) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let raw = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: as above.
            unsafe { std::ptr::write((&raw mut storage).cast(), raw) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, length as libc::socklen_t)
}

fn family(address: &SocketAddr) -> i32 {
    match address {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    }
}

fn unspecified(address: &SocketAddr) -> SocketAddr {
    match address {
        SocketAddr::V4(_) => "0.0.0.0:0".parse(),
        SocketAddr::V6(_) => "[::]:0".parse(),
    }
    .unwrap_or(*address)
}

/// One network operation towards `address`.
fn net(op: &str, address: &SocketAddr) -> Result<(), i32> {
    match op {
        "tcp" => outcome(TcpStream::connect_timeout(address, Duration::from_secs(10)).map(drop)),
        "udp" => outcome(
            UdpSocket::bind(unspecified(address)).and_then(|socket| socket.connect(address)),
        ),
        "sendto" => outcome(
            UdpSocket::bind(unspecified(address))
                .and_then(|socket| socket.send_to(b"datagram", address))
                .map(drop),
        ),
        "sendmmsg" => sendmmsg(address),
        "fastopen" => fastopen(address),
        _ => Err(libc::EINVAL),
    }
}

/// Two datagrams to `address` in one sendmmsg call on an unconnected UDP socket.
fn sendmmsg(address: &SocketAddr) -> Result<(), i32> {
    let socket = UdpSocket::bind(unspecified(address))
        .map_err(|error| error.raw_os_error().unwrap_or(-1))?;
    let (mut storage, length) = raw_address(address);
    let mut payloads = [*b"first", *b"other"];
    let mut vectors: Vec<libc::iovec> = payloads
        .iter_mut()
        .map(|payload| libc::iovec {
            iov_base: payload.as_mut_ptr().cast(),
            iov_len: payload.len(),
        })
        .collect();
    let mut messages: Vec<libc::mmsghdr> = vectors
        .iter_mut()
        .map(|vector| {
            // SAFETY: all-zero is a valid msghdr; the fields that matter are set below.
            let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
            header.msg_name = (&raw mut storage).cast();
            header.msg_namelen = length;
            header.msg_iov = vector;
            header.msg_iovlen = 1;
            libc::mmsghdr {
                msg_hdr: header,
                msg_len: 0,
            }
        })
        .collect();
    use std::os::fd::AsRawFd as _;
    // SAFETY: the headers point at live buffers and address storage for the whole call.
    let sent = unsafe {
        libc::sendmmsg(
            socket.as_raw_fd(),
            messages.as_mut_ptr(),
            messages.len() as u32,
            0,
        )
    };
    if sent < 0 { Err(last_errno()) } else { Ok(()) }
}

/// A TCP Fast Open `sendto`: opens the connection without calling connect.
fn fastopen(address: &SocketAddr) -> Result<(), i32> {
    // SAFETY: plain socket(2); the fd is closed below.
    let fd = unsafe { libc::socket(family(address), libc::SOCK_STREAM, 0) };
    if fd < 0 {
        return Err(last_errno());
    }
    let (storage, length) = raw_address(address);
    let payload = b"hello";
    // SAFETY: payload and address are live for the call.
    let sent = unsafe {
        libc::sendto(
            fd,
            payload.as_ptr().cast(),
            payload.len(),
            libc::MSG_FASTOPEN,
            (&raw const storage).cast(),
            length,
        )
    };
    let result = if sent < 0 { Err(last_errno()) } else { Ok(()) };
    // SAFETY: our own fd.
    unsafe { libc::close(fd) };
    result
}

fn print_result(result: Result<(), i32>) {
    match result {
        Ok(()) => println!("RESULT=ok"),
        Err(errno) => println!("RESULT=errno:{errno}"),
    }
}

/// Runs `operation` from `threads` threads released together; returns (succeeded, EPERM, other).
fn race(threads: usize, operation: impl Fn() -> Result<(), i32> + Send + Sync + 'static) -> String {
    let barrier = Arc::new(Barrier::new(threads));
    let operation = Arc::new(operation);
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let barrier = barrier.clone();
            let operation = operation.clone();
            std::thread::spawn(move || {
                barrier.wait();
                operation()
            })
        })
        .collect();
    let (mut passed, mut denied, mut other) = (0, 0, 0);
    for handle in handles {
        match handle.join() {
            Ok(Ok(())) => passed += 1,
            Ok(Err(libc::EPERM)) => denied += 1,
            _ => other += 1,
        }
    }
    format!("passed={passed} denied={denied} other={other}")
}

fn run_target(program: &str) -> Result<(), i32> {
    match Command::new(program).arg("target").output() {
        Ok(output)
            if output.status.success() && String::from_utf8_lossy(&output.stdout).contains(RAN) =>
        {
            Ok(())
        }
        Ok(_) => Err(-1),
        Err(error) => Err(error.raw_os_error().unwrap_or(-1)),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let joined = |cgroup: &str| {
        join_cgroup(cgroup).map_err(|error| {
            eprintln!("{error}");
            ExitCode::from(2)
        })
    };
    let address = |text: &str| {
        text.parse::<SocketAddr>().map_err(|error| {
            eprintln!("bad address {text}: {error}");
            ExitCode::from(2)
        })
    };
    let result = (|| -> Result<(), ExitCode> {
        match args.as_slice() {
            ["target", ..] => println!("{RAN}"),
            ["run", cgroup, program, rest @ ..] => {
                joined(cgroup)?;
                let errno = exec(program, rest);
                eprintln!("EXEC_ERRNO={errno}");
                return Err(ExitCode::from(126));
            }
            ["race", cgroup, threads, program] => {
                joined(cgroup)?;
                let threads = threads.parse().map_err(|_| ExitCode::from(2))?;
                let program = program.to_string();
                println!("{}", race(threads, move || run_target(&program)));
            }
            ["net", cgroup, op, target] => {
                let target = address(target)?;
                joined(cgroup)?;
                print_result(net(op, &target));
            }
            ["race-net", cgroup, threads, op, target] => {
                let target = address(target)?;
                joined(cgroup)?;
                let threads = threads.parse().map_err(|_| ExitCode::from(2))?;
                let op = op.to_string();
                println!("{}", race(threads, move || net(&op, &target)));
            }
            _ => {
                eprintln!("{USAGE}");
                return Err(ExitCode::from(2));
            }
        }
        Ok(())
    })();
    result.err().unwrap_or(ExitCode::SUCCESS)
}
