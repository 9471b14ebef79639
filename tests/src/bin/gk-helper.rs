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
  | tamper CGROUP OP [ARGS...]             (see `tamper` below)
  | sweep CGROUP OP ADDRESS FIRST_PORT COUNT   (one OP to each of COUNT ports)
  | hold SOCKET COUNT SECONDS              (open COUNT connections to a unix socket, keep them)
  | as-user UID CGROUP PROGRAM [ARGS...]   (join CGROUP as root, become UID, exec)
  | net-hold OP ADDRESS:PORT SECONDS [PAD...]  (one OP, then stay alive; PAD fills argv)
  | bpf-flood COUNT SECONDS                (bpf() calls until COUNT or SECONDS)
  | env-swap CGROUP PROGRAM                (exec PROGRAM target one with X=agent in its
                                           environment, rewritten to HOME=/ after the copy)
  | argv-swap CGROUP PROGRAM               (exec PROGRAM target two, rewriting it to one
                                           after the kernel copied it; see argv_swap)
  | exec-rooted CGROUP UID|- PLACE PROGRAM ARGS...  (exec with a loader of the caller's;
                                           PLACE: private, user, threaded, fd-root,
                                           seccomp-listener, chroot:DIR)
  | script-swap CGROUP UID|- LINK SCRIPT OTHER [ENV]  (exec LINK -> SCRIPT, then LINK -> OTHER)
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

/// Sets the system clock without moving it (see the `set-clock` op): each change needs
/// CAP_SYS_TIME, a read needs nothing.
fn set_clock(how: &str) -> Result<(), i32> {
    // SAFETY: all-zero is a valid timespec and timex; both are only passed to the kernel.
    let mut now: libc::timespec = unsafe { std::mem::zeroed() };
    let mut timex: libc::timex = unsafe { std::mem::zeroed() };
    // SAFETY: each call gets a pointer to a live struct of the type it takes.
    let status = unsafe {
        match how {
            "settime" => match libc::clock_gettime(libc::CLOCK_REALTIME, &mut now) {
                0 => libc::clock_settime(libc::CLOCK_REALTIME, &now),
                failed => failed,
            },
            "adjtime" => match libc::adjtimex(&mut timex) {
                -1 => -1,
                _ => {
                    timex.modes = libc::ADJ_FREQUENCY;
                    libc::adjtimex(&mut timex)
                }
            },
            "read" => libc::adjtimex(&mut timex),
            _ => return Err(libc::EINVAL),
        }
    };
    if status == -1 {
        Err(last_errno())
    } else {
        Ok(())
    }
}

/// Takes and gives back access to I/O ports (see the `io-ports` op): CAP_SYS_RAWIO.
fn io_ports(how: &str) -> Result<(), i32> {
    let (take, give_back): (&[libc::c_long], &[libc::c_long]) = match how {
        "ioperm" => (
            &[libc::SYS_ioperm, 0x80, 1, 1],
            &[libc::SYS_ioperm, 0x80, 1, 0],
        ),
        "iopl" => (&[libc::SYS_iopl, 3], &[libc::SYS_iopl, 0]),
        _ => return Err(libc::EINVAL),
    };
    let call = |args: &[libc::c_long]| {
        // SAFETY: ioperm and iopl take plain numbers; neither touches this process's memory.
        let status = unsafe {
            match args {
                [number, a, b, c] => libc::syscall(*number, *a, *b, *c),
                [number, a] => libc::syscall(*number, *a),
                _ => -1,
            }
        };
        if status == -1 {
            Err(last_errno())
        } else {
            Ok(())
        }
    };
    call(take)?;
    call(give_back)
}

fn perf_open(on: &str, pid: Option<&str>) -> Result<(), i32> {
    const PERF_TYPE_SOFTWARE: u32 = 1;
    // struct perf_event_attr as of its 128-byte version: type, size, config (cpu-clock: 0),
    // then at byte 40 the flags: disabled, exclude_kernel, exclude_hv.
    const ATTR_SIZE: usize = 128;
    const FLAGS: u64 = 1 | 1 << 5 | 1 << 6;
    let (pid, cpu): (libc::c_long, libc::c_long) = match (on, pid) {
        ("cpu", None) => (-1, 0),
        ("self", None) => (0, -1),
        ("task", Some(pid)) => (pid.parse().map_err(|_| libc::EINVAL)?, -1),
        _ => return Err(libc::EINVAL),
    };
    let mut attr = [0u8; ATTR_SIZE];
    attr[0..4].copy_from_slice(&PERF_TYPE_SOFTWARE.to_ne_bytes());
    attr[4..8].copy_from_slice(&(ATTR_SIZE as u32).to_ne_bytes());
    attr[40..48].copy_from_slice(&FLAGS.to_ne_bytes());
    // SAFETY: the attribute outlives the call and says its own size.
    let fd =
        fd_of(unsafe { libc::syscall(libc::SYS_perf_event_open, attr.as_ptr(), pid, cpu, -1, 0) })?;
    // SAFETY: closes the descriptor opened above.
    unsafe { libc::close(fd) };
    Ok(())
}

fn kernel_log(how: &str) -> Result<(), i32> {
    const SYSLOG_ACTION_CONSOLE_ON: libc::c_long = 7;
    const SYSLOG_ACTION_CONSOLE_LEVEL: libc::c_long = 8;
    const SYSLOG_ACTION_SIZE_BUFFER: libc::c_long = 10;
    let (action, argument) = match how {
        "level" => {
            let printk = std::fs::read_to_string("/proc/sys/kernel/printk")
                .map_err(|e| e.raw_os_error().unwrap_or(-1))?;
            let level = printk
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok());
            (SYSLOG_ACTION_CONSOLE_LEVEL, level.ok_or(libc::EINVAL)?)
        }
        "on" => (SYSLOG_ACTION_CONSOLE_ON, 0),
        "size" => (SYSLOG_ACTION_SIZE_BUFFER, 0),
        _ => return Err(libc::EINVAL),
    };
    // SAFETY: none of these actions reads or writes the (null) buffer.
    errno_of(unsafe { libc::syscall(libc::SYS_syslog, action, std::ptr::null::<u8>(), argument) })
}

/// Runs `program target` in a child that a perf event (user-space task clock) counts from
/// before its exec: Ok once the child ran and the event counted it. Errors: the exec's errno, 1000 the child
/// killed, 1001 it exited other than 0, 1002 nothing counted.
fn perf_exec(program: &str) -> Result<(), i32> {
    const PERF_TYPE_SOFTWARE: u32 = 1;
    const PERF_COUNT_SW_TASK_CLOCK: u64 = 1;
    // struct perf_event_attr as of its 128-byte version: type, size, config, then at byte 40
    // the flags: exclude_kernel, exclude_hv (enabled from the start).
    const ATTR_SIZE: usize = 128;
    const FLAGS: u64 = 1 << 5 | 1 << 6;
    let (program, target) = (c_path(program)?, c_path("target")?);
    let argv = [program.as_ptr(), target.as_ptr(), std::ptr::null()];
    let (mut go, mut failed) = ([0; 2], [0; 2]);
    // SAFETY: pipes for this process; the child only calls async-signal-safe functions.
    let pid = unsafe {
        if libc::pipe2(go.as_mut_ptr(), libc::O_CLOEXEC) != 0
            || libc::pipe2(failed.as_mut_ptr(), libc::O_CLOEXEC) != 0
        {
            return Err(last_errno());
        }
        libc::fork()
    };
    if pid < 0 {
        return Err(last_errno());
    }
    if pid == 0 {
        // SAFETY: the child waits for the event, then executes; a failed exec's errno goes back
        // through the pipe the exec closes when it succeeds.
        unsafe {
            libc::close(go[1]);
            libc::close(failed[0]);
            let mut byte = 0u8;
            libc::read(go[0], (&raw mut byte).cast(), 1);
            libc::execv(program.as_ptr(), argv.as_ptr());
            let errno = last_errno();
            libc::write(failed[1], (&raw const errno).cast(), 4);
            libc::_exit(127);
        }
    }
    let mut attr = [0u8; ATTR_SIZE];
    attr[0..4].copy_from_slice(&PERF_TYPE_SOFTWARE.to_ne_bytes());
    attr[4..8].copy_from_slice(&(ATTR_SIZE as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&PERF_COUNT_SW_TASK_CLOCK.to_ne_bytes());
    attr[40..48].copy_from_slice(&FLAGS.to_ne_bytes());
    // SAFETY: the attribute outlives the call and says its own size; the child is ours.
    let event = unsafe { libc::syscall(libc::SYS_perf_event_open, attr.as_ptr(), pid, -1, -1, 0) };
    let (mut status, mut errno, mut count) = (0, 0i32, 0u64);
    // SAFETY: our own descriptors and child; buffers outlive the calls.
    unsafe {
        libc::close(go[1]);
        libc::close(failed[1]);
        libc::waitpid(pid, &mut status, 0);
        let read = libc::read(failed[0], (&raw mut errno).cast(), 4);
        if event >= 0 {
            libc::read(event as i32, (&raw mut count).cast(), 8);
            libc::close(event as i32);
        }
        libc::close(go[0]);
        libc::close(failed[0]);
        if read == 4 {
            return Err(errno);
        }
    }
    fd_of(event)?;
    if libc::WIFSIGNALED(status) {
        Err(1000)
    } else if libc::WEXITSTATUS(status) != 0 {
        Err(1001)
    } else if count == 0 {
        Err(1002)
    } else {
        Ok(())
    }
}

/// Opens `path` for reading and writing (no controlling terminal, no wait for a carrier) as
/// standard input.
fn hold_as_stdin(path: &str) -> Result<(), i32> {
    let fd = open_raw(path, libc::O_RDWR | libc::O_NONBLOCK | libc::O_NOCTTY)?;
    // SAFETY: dup2 and close of descriptors this process owns.
    errno_of(unsafe { libc::dup2(fd, 0) } as libc::c_long)?;
    unsafe { libc::close(fd) };
    Ok(())
}

fn vt_ioctl(what: &str) -> Result<(), i32> {
    const KDGKBENT: libc::c_ulong = 0x4b46;
    const KDSKBENT: libc::c_ulong = 0x4b47;
    const VT_GETSTATE: libc::c_ulong = 0x5603;
    const VT_ACTIVATE: libc::c_ulong = 0x5606;
    const VT_UNLOCKSWITCH: libc::c_ulong = 0x560c;
    const TIOCGSERIAL: libc::c_ulong = 0x541e;
    const TIOCSSERIAL: libc::c_ulong = 0x541f;
    const TIOCGETD: libc::c_ulong = 0x5424;
    const TIOCSETD: libc::c_ulong = 0x5423;
    // A buffer large enough for struct kbentry, vt_stat and serial_struct; for the keymap,
    // table 0 (plain), key 28 (Enter).
    let mut buffer = [0u8; 128];
    if what == "keymap" {
        buffer[1] = 28;
    }
    let at = buffer.as_mut_ptr();
    let call = |request: libc::c_ulong, arg: *mut u8| {
        // SAFETY: each request gets a buffer of at least its size that outlives the call.
        errno_of(unsafe { libc::ioctl(0, request, arg) } as libc::c_long)
    };
    match what {
        "keymap" => {
            call(KDGKBENT, at)?;
            call(KDSKBENT, at)
        }
        "activate" => {
            call(VT_GETSTATE, at)?;
            // SAFETY: v_active, the first field, as VT_GETSTATE wrote it.
            let active = unsafe { at.cast::<u16>().read_unaligned() };
            // SAFETY: VT_ACTIVATE takes the console's number.
            errno_of(
                unsafe { libc::ioctl(0, VT_ACTIVATE, libc::c_ulong::from(active)) } as libc::c_long,
            )
        }
        "serial" => {
            call(TIOCGSERIAL, at)?;
            call(TIOCSSERIAL, at)
        }
        // SAFETY: VT_UNLOCKSWITCH takes no argument.
        "unlock" => errno_of(unsafe { libc::ioctl(0, VT_UNLOCKSWITCH) } as libc::c_long),
        "termios" => {
            call(libc::TCGETS, at)?;
            call(libc::TCSETS, at)
        }
        "discipline" => {
            call(TIOCGETD, at)?;
            call(TIOCSETD, at)
        }
        // What a program asks of its terminal: isatty, the window's size, the discipline.
        "query" => {
            call(libc::TCGETS, at)?;
            call(libc::TIOCGWINSZ, at)?;
            call(TIOCGETD, at)
        }
        _ => Err(libc::EINVAL),
    }
}

fn audit_user() -> Result<(), i32> {
    const NETLINK_AUDIT: i32 = 9;
    const AUDIT_USER_AVC: u16 = 1107;
    const NLM_F_REQUEST_ACK: u16 = 0x1 | 0x4;
    const NLMSG_ERROR: u16 = 2;
    let text = b"gatekeeper test: a user AVC message\0";
    // SAFETY: a socket owned here.
    let socket =
        fd_of(unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW, NETLINK_AUDIT) }.into())?;
    // struct nlmsghdr: length, type, flags, sequence, port; then the text.
    let mut message = Vec::with_capacity(16 + text.len());
    message.extend_from_slice(&((16 + text.len()) as u32).to_ne_bytes());
    message.extend_from_slice(&AUDIT_USER_AVC.to_ne_bytes());
    message.extend_from_slice(&NLM_F_REQUEST_ACK.to_ne_bytes());
    message.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]);
    message.extend_from_slice(text);
    let mut reply = [0u8; 256];
    // SAFETY: buffers that outlive the calls; the kernel is the default destination.
    let result = unsafe {
        let sent = libc::send(socket, message.as_ptr().cast(), message.len(), 0);
        let received = if sent < 0 {
            -1
        } else {
            libc::recv(socket, reply.as_mut_ptr().cast(), reply.len(), 0)
        };
        let result = if received < 0 {
            Err(last_errno())
        } else {
            Ok(received as usize)
        };
        libc::close(socket);
        result
    };
    let received = result?;
    // The acknowledgement: an NLMSG_ERROR message whose error is 0 or minus the errno.
    let kind = u16::from_ne_bytes([reply[4], reply[5]]);
    if received < 20 || kind != NLMSG_ERROR {
        return Err(libc::EPROTO);
    }
    match i32::from_ne_bytes([reply[16], reply[17], reply[18], reply[19]]) {
        0 => Ok(()),
        error => Err(-error),
    }
}

const KEYCTL_READ: libc::c_long = 11;
const KEY_SPEC_PROCESS_KEYRING: libc::c_long = -2;

/// A key of type `user` added to `keyring`: its serial number.
fn add_user_key(description: &str, payload: &[u8], keyring: libc::c_long) -> Result<i64, i32> {
    let (kind, name) = (c_path("user")?, c_path(description)?);
    // SAFETY: NUL-terminated strings and a payload that outlive the call.
    let id = unsafe {
        libc::syscall(
            libc::SYS_add_key,
            kind.as_ptr(),
            name.as_ptr(),
            payload.as_ptr(),
            payload.len(),
            keyring,
        )
    };
    errno_of(id).map(|()| id)
}

/// The ext4 file system of `dir` asked to resize to one block (EXT4_IOC_RESIZE_FS): ext4
/// refuses to shrink, EINVAL, once the caller may resize at all.
fn fs_resize(dir: &str) -> Result<(), i32> {
    const EXT4_IOC_RESIZE_FS: libc::c_ulong = 0x4008_6610;
    let fd = open_raw(dir, libc::O_RDONLY | libc::O_DIRECTORY)?;
    let blocks: u64 = 1;
    // SAFETY: the new block count outlives the call, on a descriptor owned here.
    let resized =
        errno_of(unsafe { libc::ioctl(fd, EXT4_IOC_RESIZE_FS, &raw const blocks) } as libc::c_long);
    // SAFETY: closes the descriptor opened above.
    unsafe { libc::close(fd) };
    resized
}

/// `struct btrfs_ioctl_vol_args`: a descriptor and a name.
#[repr(C)]
struct BtrfsVolArgs {
    fd: i64,
    name: [u8; 4088],
}

/// `struct btrfs_ioctl_search_args`: the key (which items of which tree) and room for them.
#[repr(C)]
struct BtrfsSearchArgs {
    tree_id: u64,
    min_objectid: u64,
    max_objectid: u64,
    min_offset: u64,
    max_offset: u64,
    min_transid: u64,
    max_transid: u64,
    min_type: u32,
    max_type: u32,
    nr_items: u32,
    unused: [u32; 9],
    buf: [u8; 3992],
}

/// A btrfs ioctl on directory `dir`: `create NAME` (a subvolume), `snapshot NAME SOURCE` (of
/// the subvolume SOURCE), `destroy NAME` (a subvolume), `readonly` (`dir`, a subvolume, made
/// read-only) or `search` (one item of the tree of `dir`'s subvolume).
fn btrfs(dir: &str, op: &str, name: Option<&str>, source: Option<&str>) -> Result<(), i32> {
    const SNAP_CREATE: libc::c_ulong = 0x5000_9401;
    const SUBVOL_CREATE: libc::c_ulong = 0x5000_940e;
    const SNAP_DESTROY: libc::c_ulong = 0x5000_940f;
    const SUBVOL_SETFLAGS: libc::c_ulong = 0x4008_941a;
    const TREE_SEARCH: libc::c_ulong = 0xd000_9411;
    const SUBVOL_RDONLY: u64 = 1 << 1;
    let source = source
        .map(|path| open_raw(path, libc::O_RDONLY | libc::O_DIRECTORY))
        .transpose()?;
    let mut volume = BtrfsVolArgs {
        fd: source.map_or(0, i64::from),
        name: [0; 4088],
    };
    let name = name.unwrap_or("").as_bytes();
    volume
        .name
        .get_mut(..name.len())
        .ok_or(libc::ENAMETOOLONG)?
        .copy_from_slice(name);
    // Tree 0 is that of `dir`'s subvolume; every key, one item.
    let mut search = BtrfsSearchArgs {
        tree_id: 0,
        min_objectid: 0,
        max_objectid: u64::MAX,
        min_offset: 0,
        max_offset: u64::MAX,
        min_transid: 0,
        max_transid: u64::MAX,
        min_type: 0,
        max_type: u32::MAX,
        nr_items: 1,
        unused: [0; 9],
        buf: [0; 3992],
    };
    let read_only = SUBVOL_RDONLY;
    let (command, argument): (libc::c_ulong, *mut libc::c_void) = match op {
        "create" => (SUBVOL_CREATE, (&raw mut volume).cast()),
        "snapshot" => (SNAP_CREATE, (&raw mut volume).cast()),
        "destroy" => (SNAP_DESTROY, (&raw mut volume).cast()),
        "search" => (TREE_SEARCH, (&raw mut search).cast()),
        "readonly" => (SUBVOL_SETFLAGS, (&raw const read_only).cast_mut().cast()),
        _ => return Err(libc::EINVAL),
    };
    let fd = open_raw(dir, libc::O_RDONLY | libc::O_DIRECTORY)?;
    // SAFETY: the argument outlives the call, on a descriptor owned here.
    let done = errno_of(unsafe { libc::ioctl(fd, command, argument) } as libc::c_long);
    // SAFETY: closes the descriptors opened above.
    unsafe {
        libc::close(fd);
        if let Some(source) = source {
            libc::close(source);
        }
    }
    done
}

/// `struct xfs_fsop_handlereq`: the xfs handle interface's request.
#[repr(C)]
struct XfsHandleRequest {
    fd: u32,
    path: *const libc::c_char,
    oflags: u32,
    ihandle: *const u8,
    ihandlen: u32,
    ohandle: *mut u8,
    ohandlen: *mut u32,
}

/// `struct xfs_attr_multiop`: one attribute operation.
#[repr(C)]
struct XfsAttrOp {
    opcode: u32,
    error: i32,
    name: *const libc::c_char,
    value: *const u8,
    length: u32,
    flags: u32,
}

/// `struct xfs_fsop_attrmulti_handlereq`.
#[repr(C)]
struct XfsAttrMulti {
    request: XfsHandleRequest,
    count: u32,
    ops: *mut XfsAttrOp,
}

/// `path`, a file of an xfs, reached by its handle (XFS_IOC_PATH_TO_HANDLE, then on its
/// directory): its extended attribute `user.gatekeeper` set (`attr`,
/// XFS_IOC_ATTRMULTI_BY_HANDLE) or the file opened for reading (`open`,
/// XFS_IOC_OPEN_BY_HANDLE).
fn xfs_by_handle(path: &str, op: &str) -> Result<(), i32> {
    const PATH_TO_HANDLE: libc::c_ulong = 0xc038_5869;
    const OPEN_BY_HANDLE: libc::c_ulong = 0xc038_586b;
    const ATTRMULTI_BY_HANDLE: libc::c_ulong = 0x4048_587b;
    const ATTR_OP_SET: u32 = 2;
    let c_path = c_path(path)?;
    let (name, value) = (c"gatekeeper", b"set by handle");
    let mut handle = [0u8; 64];
    let mut length = handle.len() as u32;
    // xfs takes handles only on a directory's descriptor: the file's own.
    let directory = std::path::Path::new(path)
        .parent()
        .and_then(|parent| parent.to_str())
        .ok_or(libc::EINVAL)?;
    let fd = open_raw(directory, libc::O_RDONLY | libc::O_DIRECTORY)?;
    let mut request = XfsHandleRequest {
        fd: 0,
        path: c_path.as_ptr(),
        oflags: 0,
        ihandle: std::ptr::null(),
        ihandlen: 0,
        ohandle: handle.as_mut_ptr(),
        ohandlen: &raw mut length,
    };
    // SAFETY: the requests and the buffers they point to outlive the calls, on a descriptor
    // owned here.
    let done = unsafe {
        errno_of(libc::ioctl(fd, PATH_TO_HANDLE, &raw mut request) as libc::c_long).and_then(|()| {
            let by_handle = XfsHandleRequest {
                ihandle: handle.as_ptr(),
                ihandlen: length,
                oflags: libc::O_RDONLY as u32,
                ..request
            };
            match op {
                "open" => {
                    let opened = libc::ioctl(fd, OPEN_BY_HANDLE, &raw const by_handle);
                    if opened >= 0 {
                        libc::close(opened);
                    }
                    errno_of(opened as libc::c_long)
                }
                "attr" => {
                    let mut op = XfsAttrOp {
                        opcode: ATTR_OP_SET,
                        error: 0,
                        name: name.as_ptr(),
                        value: value.as_ptr(),
                        length: value.len() as u32,
                        flags: 0,
                    };
                    let mut multi = XfsAttrMulti {
                        request: by_handle,
                        count: 1,
                        ops: &raw mut op,
                    };
                    errno_of(libc::ioctl(fd, ATTRMULTI_BY_HANDLE, &raw mut multi) as libc::c_long)?;
                    if op.error == 0 {
                        Ok(())
                    } else {
                        Err(op.error.abs())
                    }
                }
                _ => Err(libc::EINVAL),
            }
        })
    };
    // SAFETY: closes the descriptor opened above.
    unsafe { libc::close(fd) };
    done
}

/// On the file system of directory `dir`, with the encryption key (fscrypt, v2) of
/// `identifier` (hex): the key `remove`d from all its users, or from this user
/// (`remove-own`), or made `dir`'s encryption `policy` (`dir` empty).
fn fscrypt(dir: &str, op: &str, identifier: &str) -> Result<(), i32> {
    const REMOVE_KEY: libc::c_ulong = 0xc040_6618;
    const REMOVE_KEY_ALL_USERS: libc::c_ulong = 0xc040_6619;
    const SET_POLICY: libc::c_ulong = 0x800c_6613;
    const SPEC_TYPE_IDENTIFIER: u8 = 2;
    let mut key = [0u8; 16];
    for (index, byte) in key.iter_mut().enumerate() {
        let digits = identifier
            .get(index * 2..index * 2 + 2)
            .ok_or(libc::EINVAL)?;
        *byte = u8::from_str_radix(digits, 16).map_err(|_| libc::EINVAL)?;
    }
    let fd = open_raw(dir, libc::O_RDONLY | libc::O_DIRECTORY)?;
    // SAFETY: the arguments outlive the calls, on a descriptor owned here.
    let done = unsafe {
        match op {
            "remove" | "remove-own" => {
                // `struct fscrypt_remove_key_arg`: the key's specifier (type, reserved, the
                // identifier in a union of 32 bytes), status flags, reserved.
                let mut remove = [0u8; 64];
                remove[0] = SPEC_TYPE_IDENTIFIER;
                remove[8..24].copy_from_slice(&key);
                let command = if op == "remove" {
                    REMOVE_KEY_ALL_USERS
                } else {
                    REMOVE_KEY
                };
                errno_of(libc::ioctl(fd, command, remove.as_mut_ptr()) as libc::c_long)
            }
            "policy" => {
                // `struct fscrypt_policy_v2`: version 2, AES-256-XTS contents, AES-256-CTS
                // names, no flags, reserved, the key's identifier.
                let mut policy = [0u8; 24];
                policy[..4].copy_from_slice(&[2, 1, 4, 0]);
                policy[8..].copy_from_slice(&key);
                errno_of(libc::ioctl(fd, SET_POLICY, policy.as_ptr()) as libc::c_long)
            }
            _ => Err(libc::EINVAL),
        }
    };
    // SAFETY: closes the descriptor opened above.
    unsafe { libc::close(fd) };
    done
}

fn fs_freeze(dir: &str) -> Result<(), i32> {
    const FIFREEZE: libc::c_ulong = 0xc004_5877;
    const FITHAW: libc::c_ulong = 0xc004_5878;
    let fd = open_raw(dir, libc::O_RDONLY | libc::O_DIRECTORY)?;
    // SAFETY: FIFREEZE and FITHAW take an unused int argument, on a descriptor owned here.
    let frozen = errno_of(unsafe { libc::ioctl(fd, FIFREEZE, 0) } as libc::c_long);
    let thawed = match frozen {
        Ok(()) => errno_of(unsafe { libc::ioctl(fd, FITHAW, 0) } as libc::c_long),
        Err(_) => Ok(()),
    };
    // SAFETY: closes the descriptor opened above.
    unsafe { libc::close(fd) };
    frozen.and(thawed)
}

/// The fields of `struct sg_io_hdr` (the v3 SG_IO interface) sg_read sets or reads.
#[repr(C)]
struct SgIoHdr {
    interface_id: i32,
    dxfer_direction: i32,
    cmd_len: u8,
    mx_sb_len: u8,
    iovec_count: u16,
    dxfer_len: u32,
    dxferp: *mut u8,
    cmdp: *const u8,
    sbp: *mut u8,
    timeout: u32,
    flags: u32,
    pack_id: i32,
    usr_ptr: *mut u8,
    status: u8,
    masked_status: u8,
    msg_status: u8,
    sb_len_wr: u8,
    host_status: u16,
    driver_status: u16,
    resid: i32,
    duration: u32,
    info: u32,
}

fn sg_read(path: &str) -> Result<(), i32> {
    const SG_IO: libc::c_ulong = 0x2285;
    const SG_DXFER_FROM_DEV: i32 = -3;
    // READ(10) of one block at LBA 0.
    let command: [u8; 10] = [0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0];
    let mut sector = [0u8; 512];
    let mut sense = [0u8; 32];
    let fd = open_raw(path, libc::O_RDONLY)?;
    // SAFETY: all-zero is a valid sg_io_hdr; the buffers it points to outlive the ioctl.
    let mut header: SgIoHdr = unsafe { std::mem::zeroed() };
    header.interface_id = i32::from(b'S');
    header.dxfer_direction = SG_DXFER_FROM_DEV;
    header.cmd_len = command.len() as u8;
    header.mx_sb_len = sense.len() as u8;
    header.dxfer_len = sector.len() as u32;
    header.dxferp = sector.as_mut_ptr();
    header.cmdp = command.as_ptr();
    header.sbp = sense.as_mut_ptr();
    header.timeout = 5000;
    // SAFETY: SG_IO on a descriptor this function owns, with the header above.
    let status = unsafe { libc::ioctl(fd, SG_IO, &mut header as *mut SgIoHdr) };
    let result = errno_of(status as libc::c_long);
    // SAFETY: closes the descriptor opened above.
    unsafe { libc::close(fd) };
    result?;
    // A command the device failed is no read.
    if header.status != 0 || header.host_status != 0 || header.driver_status != 0 {
        return Err(libc::EIO);
    }
    Ok(())
}

fn dm_version(path: &str) -> Result<(), i32> {
    // struct dm_ioctl: version[3], data_size, data_start, ..., 312 bytes in all.
    const DM_IOCTL_SIZE: usize = 312;
    const DM_VERSION: libc::c_ulong =
        0xc000_0000 | ((DM_IOCTL_SIZE as libc::c_ulong) << 16) | 0xfd00;
    let mut request = [0u32; DM_IOCTL_SIZE / 4];
    request[0] = 4;
    request[3] = DM_IOCTL_SIZE as u32;
    request[4] = DM_IOCTL_SIZE as u32;
    let fd = open_raw(path, libc::O_RDWR)?;
    // SAFETY: DM_VERSION on a descriptor this function owns, with a request of the size it says.
    let status = unsafe { libc::ioctl(fd, DM_VERSION, request.as_mut_ptr()) };
    let result = errno_of(status as libc::c_long);
    // SAFETY: closes the descriptor opened above.
    unsafe { libc::close(fd) };
    result
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

/// Pushes `text` into the input queue of the terminal on fd 0 (TIOCSTI), as if it were typed.
fn tiocsti(text: &str) -> Result<(), i32> {
    for byte in text.bytes().chain(std::iter::once(b'\n')) {
        // SAFETY: TIOCSTI reads one byte from a live pointer.
        errno_of(unsafe { libc::ioctl(0, libc::TIOCSTI, &byte as *const u8) } as libc::c_long)?;
    }
    Ok(())
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

fn errno_of(result: libc::c_long) -> Result<(), i32> {
    if result < 0 {
        Err(last_errno())
    } else {
        Ok(())
    }
}

fn c_path(path: &str) -> Result<CString, i32> {
    CString::new(path).map_err(|_| libc::EINVAL)
}

/// The bpf() syscall with a zeroed attribute, except for the first word.
fn bpf(cmd: i32, first: u32) -> Result<(), i32> {
    let mut attr = [0u32; 32];
    attr[0] = first;
    // SAFETY: attr outlives the call and its size is passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            size_of_val(&attr) as u32,
        )
    };
    if fd >= 0 {
        // SAFETY: an fd the call returned to us.
        unsafe { libc::close(fd as i32) };
    }
    errno_of(fd)
}

/// clone3 with CLONE_INTO_CGROUP: a child born straight into another cgroup.
fn clone_into(cgroup: &str) -> Result<(), i32> {
    const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
    let dir = std::fs::File::open(cgroup).map_err(|error| error.raw_os_error().unwrap_or(-1))?;
    use std::os::fd::AsRawFd as _;
    // flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls, set_tid,
    // set_tid_size, cgroup
    let mut args = [0u64; 11];
    args[0] = CLONE_INTO_CGROUP;
    args[4] = libc::SIGCHLD as u64;
    args[10] = dir.as_raw_fd() as u64;
    // SAFETY: clone3 without a new stack behaves like fork; the child only exits.
    let pid = unsafe { libc::syscall(libc::SYS_clone3, args.as_mut_ptr(), size_of_val(&args)) };
    if pid == 0 {
        // SAFETY: leave the child at once, without running the parent's destructors.
        unsafe { libc::_exit(0) };
    }
    if pid > 0 {
        // SAFETY: reap our own child.
        unsafe { libc::waitpid(pid as i32, std::ptr::null_mut(), 0) };
    }
    errno_of(pid)
}

/// Runs `path target` by a route other than a plain execve of its path.
fn exec_by(route: &str, path: &str) -> Result<(), i32> {
    use std::os::fd::{AsRawFd as _, IntoRawFd as _};
    let argv0 = c_path(path)?;
    let arg1 = c_path("target")?;
    let argv = [argv0.as_ptr(), arg1.as_ptr(), std::ptr::null()];
    let envp = [std::ptr::null::<libc::c_char>()];
    let empty = c_path("")?;
    let fd = match route {
        "memfd" => {
            let name = c_path("copy")?;
            // SAFETY: plain memfd_create.
            let fd = unsafe { libc::memfd_create(name.as_ptr(), 0) };
            if fd < 0 {
                return Err(last_errno());
            }
            let bytes = std::fs::read(path).map_err(|error| error.raw_os_error().unwrap_or(-1))?;
            // SAFETY: fd is ours; bytes outlive the call.
            if unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) } < 0 {
                return Err(last_errno());
            }
            fd
        }
        "opath" => open_raw(path, libc::O_PATH)?,
        _ => std::fs::File::open(path)
            .map_err(|error| error.raw_os_error().unwrap_or(-1))?
            .into_raw_fd(),
    };
    match route {
        "proc-fd" => {
            let proc_path = c_path(&format!("/proc/self/fd/{fd}"))?;
            // SAFETY: NUL-terminated argv and envp.
            unsafe { libc::execve(proc_path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
        }
        _ => {
            // SAFETY: as above; AT_EMPTY_PATH runs the open file itself.
            unsafe {
                libc::syscall(
                    libc::SYS_execveat,
                    fd.as_raw_fd(),
                    empty.as_ptr(),
                    argv.as_ptr(),
                    envp.as_ptr(),
                    libc::AT_EMPTY_PATH,
                )
            };
        }
    }
    Err(last_errno())
}

/// Makes the kernel send `signal` to `id` (a process, or with `thread` a thread) as the owner of
/// a pipe's read end that data just reached: a signal that passes no kill(2). Ok says the pipe
/// was set up and written, not that the signal arrived.
fn sigio(thread: bool, id: i32, signal: i32) -> Result<(), i32> {
    // fcntl commands and owner kinds the libc crate does not name for this target.
    const F_SETSIG: i32 = 10;
    const F_SETOWN_EX: i32 = 15;
    const F_OWNER_TID: i32 = 0;
    const F_OWNER_PID: i32 = 1;
    let mut fds = [0; 2];
    // SAFETY (all below): plain syscalls on arguments that live for the call.
    errno_of(unsafe { libc::pipe(fds.as_mut_ptr()) } as libc::c_long)?;
    // struct f_owner_ex: the owner's kind, then its id.
    let owner: [i32; 2] = [if thread { F_OWNER_TID } else { F_OWNER_PID }, id];
    errno_of(unsafe { libc::fcntl(fds[0], F_SETOWN_EX, owner.as_ptr()) } as libc::c_long)?;
    errno_of(unsafe { libc::fcntl(fds[0], F_SETSIG, signal) } as libc::c_long)?;
    errno_of(unsafe { libc::fcntl(fds[0], libc::F_SETFL, libc::O_ASYNC) } as libc::c_long)?;
    errno_of(unsafe { libc::write(fds[1], b"x".as_ptr().cast(), 1) } as libc::c_long)
}

/// Marks `path` (its inode, or with `mount` its mount) for fanotify's open events: `perm` the
/// permission event, whose listener holds every such open until it answers, else the one that
/// only reports.
fn fanotify(path: &str, events: &str, kind: &str) -> Result<(), i32> {
    let path = std::ffi::CString::new(path).map_err(|_| libc::EINVAL)?;
    let (class, mask) = match events {
        "perm" => (libc::FAN_CLASS_CONTENT, libc::FAN_OPEN_PERM),
        _ => (libc::FAN_CLASS_NOTIF, libc::FAN_OPEN),
    };
    let flags = match kind {
        "mount" => libc::FAN_MARK_ADD | libc::FAN_MARK_MOUNT,
        _ => libc::FAN_MARK_ADD,
    };
    // SAFETY: plain syscalls on arguments that live for the call.
    let group = unsafe { libc::fanotify_init(class, libc::O_RDONLY as u32) };
    errno_of(group as libc::c_long)?;
    let marked = unsafe { libc::fanotify_mark(group, flags, mask, libc::AT_FDCWD, path.as_ptr()) };
    errno_of(marked as libc::c_long)
}

/// Takes a read lease on the file at `path`.
fn lease(path: &str) -> Result<(), i32> {
    use std::os::fd::AsRawFd as _;
    let file = std::fs::File::open(path).map_err(|error| error.raw_os_error().unwrap_or(-1))?;
    // SAFETY: a plain fcntl on a descriptor the File keeps open.
    let leased = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLEASE, libc::F_RDLCK) };
    errno_of(leased as libc::c_long)
}

/// Attempts against the enforcer. Each prints RESULT=ok or RESULT=errno:N.
fn tamper(op: &str, args: &[&str]) -> Result<(), i32> {
    let number = |index: usize| -> Result<i32, i32> {
        args.get(index)
            .and_then(|arg| arg.parse().ok())
            .ok_or(libc::EINVAL)
    };
    let text = |index: usize| args.get(index).copied().ok_or(libc::EINVAL);
    match op {
        "bpf" => bpf(number(0)?, number(1).unwrap_or(0) as u32),
        // SAFETY (all below): plain syscalls on arguments that live for the call.
        "kill" => errno_of(unsafe { libc::kill(number(0)?, number(1)?) } as libc::c_long),
        "tgkill" => {
            errno_of(unsafe { libc::syscall(libc::SYS_tgkill, number(0)?, number(0)?, number(1)?) })
        }
        "fanotify" => fanotify(text(0)?, text(1)?, text(2)?),
        "lease" => lease(text(0)?),
        "sigio" => sigio(text(0)? == "tid", number(1)?, number(2)?),
        "pidfd-signal" => {
            let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, number(0)?, 0) };
            errno_of(pidfd)?;
            errno_of(unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    pidfd,
                    number(1)?,
                    std::ptr::null::<u8>(),
                    0,
                )
            })
        }
        "ptrace" => errno_of(unsafe { libc::ptrace(libc::PTRACE_SEIZE, number(0)?, 0, 0) }),
        "vm-write" => {
            let mut byte = [0u8; 1];
            let local = libc::iovec {
                iov_base: byte.as_mut_ptr().cast(),
                iov_len: 1,
            };
            let remote = libc::iovec {
                iov_base: 0x1000 as *mut libc::c_void,
                iov_len: 1,
            };
            errno_of(
                unsafe { libc::process_vm_writev(number(0)?, &local, 1, &remote, 1, 0) }
                    as libc::c_long,
            )
        }
        "unlink" => outcome(std::fs::remove_file(text(0)?)),
        "rename" => outcome(std::fs::rename(text(0)?, text(1)?)),
        "symlink" => outcome(std::os::unix::fs::symlink(text(0)?, text(1)?)),
        "mkfifo" => {
            let path = c_path(text(0)?)?;
            errno_of(unsafe { libc::mkfifo(path.as_ptr(), 0o600) } as libc::c_long)
        }
        "umount" => {
            let path = c_path(text(0)?)?;
            errno_of(unsafe { libc::umount2(path.as_ptr(), 0) } as libc::c_long)
        }
        "remount" => {
            let path = c_path(text(0)?)?;
            errno_of(unsafe {
                libc::mount(
                    std::ptr::null(),
                    path.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REMOUNT | libc::MS_RDONLY,
                    std::ptr::null(),
                )
            } as libc::c_long)
        }
        "write" => outcome(std::fs::write(text(0)?, text(1)?)),
        "read" => std::fs::read(text(0)?)
            .map(|bytes| println!("READ={}", bytes.len()))
            .map_err(|error| error.raw_os_error().unwrap_or(-1)),
        "open" => outcome(std::fs::File::open(text(0)?).map(drop)),
        "cat" => std::fs::read_to_string(text(0)?)
            .map(|content| println!("CONTENT={content}"))
            .map_err(|error| error.raw_os_error().unwrap_or(-1)),
        "append" => outcome(
            std::fs::OpenOptions::new()
                .append(true)
                .open(text(0)?)
                .and_then(|mut file| std::io::Write::write_all(&mut file, b"#")),
        ),
        "open-trunc" => {
            let path = c_path(text(0)?)?;
            let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_TRUNC) };
            if fd >= 0 {
                unsafe { libc::close(fd) };
            }
            errno_of(fd as libc::c_long)
        }
        "truncate" => {
            let path = c_path(text(0)?)?;
            errno_of(unsafe { libc::truncate(path.as_ptr(), 0) } as libc::c_long)
        }
        "link" => outcome(std::fs::hard_link(text(0)?, text(1)?)),
        "list" => outcome(std::fs::read_dir(text(0)?).map(drop)),
        "mkdir" => outcome(std::fs::create_dir(text(0)?)),
        "rmdir" => outcome(std::fs::remove_dir(text(0)?)),
        "clone-into" => clone_into(text(0)?),
        "finit-module" => {
            let file = std::fs::File::open(text(0)?).map_err(|e| e.raw_os_error().unwrap_or(-1))?;
            use std::os::fd::AsRawFd as _;
            let empty = c_path("")?;
            errno_of(unsafe {
                libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), empty.as_ptr(), 0)
            })
        }
        "init-module" => {
            let image = [0u8; 64];
            let empty = c_path("")?;
            errno_of(unsafe {
                libc::syscall(
                    libc::SYS_init_module,
                    image.as_ptr(),
                    image.len(),
                    empty.as_ptr(),
                )
            })
        }
        // delete-module NAME: unload the kernel's module NAME (without waiting for its users).
        "delete-module" => {
            let name = c_path(text(0)?)?;
            // SAFETY: a NUL-terminated name that outlives the call.
            errno_of(unsafe {
                libc::syscall(libc::SYS_delete_module, name.as_ptr(), libc::O_NONBLOCK)
            })
        }
        "exec-proc-fd" => exec_by("proc-fd", text(0)?),
        "execveat" => exec_by("execveat", text(0)?),
        "exec-memfd" => exec_by("memfd", text(0)?),
        "vm-read" => vm_read(number(0)?),
        "pidfd-getfd" => pidfd_getfd(number(0)?, number(1)?),
        "rewrite" => rewrite(text(0)?),
        "traceme" => errno_of(unsafe { libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) }),
        "own-child" => own_child(args.first() == Some(&"userns")),
        "prlimit" => prlimit_same(number(0)?),
        "setscheduler" => {
            let param = libc::sched_param { sched_priority: 0 };
            errno_of(
                unsafe { libc::sched_setscheduler(number(0)?, libc::SCHED_OTHER, &param) }
                    as libc::c_long,
            )
        }
        "setnice" => setnice_same(number(0)?),
        "ioprio" => ioprio_same(number(0)?),
        "outrun" => outrun(text(0)?),
        "migrate-pages" => migrate_pages(number(0)?),
        "socket" => {
            let fd = unsafe { libc::socket(number(0)?, number(1)?, number(2)?) };
            if fd >= 0 {
                unsafe { libc::close(fd) };
            }
            errno_of(fd as libc::c_long)
        }
        "socketpair" => {
            let mut fds = [-1; 2];
            let result =
                unsafe { libc::socketpair(number(0)?, number(1)?, number(2)?, fds.as_mut_ptr()) };
            let outcome = errno_of(result as libc::c_long);
            // On failure the kernel may have written descriptors it then took back.
            if outcome.is_ok() {
                for fd in fds {
                    unsafe { libc::close(fd) };
                }
            }
            outcome
        }
        "unix-connect" => unix_socket_op("stream", text(0)?),
        "unix-seqpacket" => unix_socket_op("seqpacket", text(0)?),
        "unix-send" => unix_socket_op("send", text(0)?),
        // From inside DIR, so that the path may be relative.
        "unix-connect-in" => {
            outcome(std::env::set_current_dir(text(0)?))?;
            unix_socket_op("stream", text(1)?)
        }
        "mount" | "bind" | "bind-then" | "move" | "umount-lazy" | "pivot-root" | "fsmount"
        | "open-tree" | "fspick-ro" | "in-ns" | "runtime" | "mount-remount" | "mount-setattr"
        | "overlay-then" | "tmpfs-binds-then" | "pty" | "umount-then" | "mount-past" => {
            mount_op(op, args)
        }
        "unshare-net-write" => unshare_net_write(text(0)?, text(1)?, text(2)?),
        // add|del ADDRESS [host|own-netns|own-userns]
        "net-address" => net_address(text(0)?, text(1)?, args.get(2).copied().unwrap_or("host")),
        "loopback-mtu" => loopback_mtu(number(0)?),
        // bind-port ADDR:PORT [host|own-netns|own-userns]: a UDP socket bound there, in that
        // network namespace.
        "bind-port" => {
            enter_network_namespace(args.get(1).copied().unwrap_or("host"))?;
            outcome(std::net::UdpSocket::bind(text(0)?).map(drop))
        }
        // set-clock settime|adjtime|read: the system clock set to what it reads (clock_settime),
        // its frequency to what it is (adjtimex), or only read (adjtimex without modes).
        "set-clock" => set_clock(text(0)?),
        // io-ports ioperm|iopl: access to I/O port 0x80 (POST codes, which nothing reads), or
        // to all ports, taken and given back.
        "io-ports" => io_ports(text(0)?),
        // reboot: reboot(2) with a wrong magic number, which the kernel answers with EINVAL
        // once the caller has CAP_SYS_BOOT (and reboots nothing).
        "reboot" => errno_of(unsafe { libc::syscall(libc::SYS_reboot, 0, 0, 0, 0) }),
        // perf cpu|self|task PID: a software event (cpu-clock, user space only) opened on CPU 0,
        // on this process, or on process PID.
        "perf" => perf_open(text(0)?, args.get(1).copied()),
        // syslog level|on|size: the consoles' log level set to what it is, their messages
        // turned on (as they are), or the log's size asked (syslog(2)).
        "syslog" => kernel_log(text(0)?),
        // perf-exec PROGRAM: see perf_exec.
        "perf-exec" => perf_exec(text(0)?),
        // vt-ioctl keymap|activate|serial|termios|discipline|unlock|query: on standard input, a
        // setting written back as it reads (a console keymap entry, the active console, a
        // serial port's settings, the terminal's settings or line discipline), console
        // switching unlocked (as it is unless someone locked it), or what programs ask.
        "vt-ioctl" => vt_ioctl(text(0)?),
        // fs-freeze DIR: the file system of DIR frozen and thawed at once (FIFREEZE, FITHAW).
        "fs-freeze" => fs_freeze(text(0)?),
        // audit-user: a user AVC message sent to the kernel's audit (which prints it to the
        // kernel's log when no audit daemon runs), its acknowledgement awaited.
        "audit-user" => audit_user(),
        // key-read ID: the key's payload (keyctl read).
        "key-read" => {
            let id: libc::c_long = text(0)?.parse().map_err(|_| libc::EINVAL)?;
            let mut payload = [0u8; 256];
            // SAFETY: the buffer outlives the call and says its size.
            errno_of(unsafe {
                libc::syscall(
                    libc::SYS_keyctl,
                    KEYCTL_READ,
                    id,
                    payload.as_mut_ptr(),
                    payload.len(),
                )
            })
        }
        // key-persistent-add: its user's persistent keyring, and a key added to it.
        "key-persistent-add" => {
            const KEYCTL_GET_PERSISTENT: libc::c_long = 22;
            // SAFETY: numbers only: this process's uid (-1), linked into its own keyring.
            let ring = unsafe {
                libc::syscall(
                    libc::SYS_keyctl,
                    KEYCTL_GET_PERSISTENT,
                    -1,
                    KEY_SPEC_PROCESS_KEYRING,
                )
            };
            errno_of(ring)?;
            add_user_key("gatekeeper-planted", b"x", ring).map(drop)
        }
        // vhangup: the controlling terminal hung up (vhangup(2)).
        // SAFETY: no arguments.
        "vhangup" => errno_of(unsafe { libc::vhangup() }.into()),
        // devtty-termios: the controlling terminal's settings, through /dev/tty, written back
        // as they read.
        "devtty-termios" => {
            let fd = open_raw("/dev/tty", libc::O_RDWR | libc::O_NOCTTY | libc::O_NONBLOCK)?;
            // SAFETY: a termios that outlives the calls, on a descriptor owned here.
            let result = unsafe {
                let mut settings: libc::termios = std::mem::zeroed();
                errno_of(libc::ioctl(fd, libc::TCGETS, &raw mut settings) as libc::c_long).and_then(
                    |()| {
                        errno_of(libc::ioctl(fd, libc::TCSETS, &raw const settings) as libc::c_long)
                    },
                )
            };
            // SAFETY: closes the descriptor opened above.
            unsafe { libc::close(fd) };
            result
        }
        // key-own [DESCRIPTION]: a key of its own added to this process's keyring, then read
        // back.
        "key-own" => {
            let description = args.first().copied().unwrap_or("gatekeeper-agent-key");
            let id = add_user_key(description, b"own", KEY_SPEC_PROCESS_KEYRING)?;
            let mut back = [0u8; 16];
            // SAFETY: the buffer outlives the call and says its size.
            errno_of(unsafe {
                libc::syscall(
                    libc::SYS_keyctl,
                    KEYCTL_READ,
                    id,
                    back.as_mut_ptr(),
                    back.len(),
                )
            })
        }
        // key-own-ring DESCRIPTION [made]: a keyring of its own added to this process's
        // keyring, then (unless `made`) a key linked into it.
        "key-own-ring" => {
            let description = c_path(text(0)?)?;
            let kind = c_path("keyring")?;
            // SAFETY: NUL-terminated strings that outlive the call; a keyring takes no payload.
            let ring = unsafe {
                libc::syscall(
                    libc::SYS_add_key,
                    kind.as_ptr(),
                    description.as_ptr(),
                    std::ptr::null::<u8>(),
                    0,
                    KEY_SPEC_PROCESS_KEYRING,
                )
            };
            errno_of(ring)?;
            if args.get(1) == Some(&"made") {
                return Ok(());
            }
            add_user_key("gatekeeper-linked-key", b"own", ring).map(drop)
        }
        // fs-resize DIR: see fs_resize.
        "fs-resize" => fs_resize(text(0)?),
        // fscrypt DIR remove|remove-own|policy IDENTIFIER: see `fscrypt`.
        "fscrypt" => fscrypt(text(0)?, text(1)?, text(2)?),
        // xfs-handle PATH attr|open: see `xfs_by_handle`.
        "xfs-handle" => xfs_by_handle(text(0)?, text(1)?),
        // btrfs DIR OP [NAME [SOURCE]]: see `btrfs`.
        "btrfs" => btrfs(
            text(0)?,
            text(1)?,
            args.get(2).copied(),
            args.get(3).copied(),
        ),
        // wake-alarm: a timer that would wake the host from suspend (CLOCK_BOOTTIME_ALARM).
        "wake-alarm" => {
            const CLOCK_BOOTTIME_ALARM: libc::c_int = 9;
            // SAFETY: timerfd_create takes numbers; the descriptor is closed at once.
            let fd = fd_of(unsafe { libc::timerfd_create(CLOCK_BOOTTIME_ALARM, 0) }.into())?;
            unsafe { libc::close(fd) };
            Ok(())
        }
        // sg-read PATH: the disk's first sector, read with a SCSI command (SG_IO, READ(10))
        // through a SCSI generic device.
        "sg-read" => sg_read(text(0)?),
        // dm-version PATH: device-mapper's control asked for its version (DM_VERSION).
        "dm-version" => dm_version(text(0)?),
        // hold-mm private|user PROGRAM (see hold_mm).
        "hold-mm" => hold_mm(text(0)?, text(1)?),
        // name-service UID=NAME|HOST=IPV4...: see name_service.
        "name-service" => name_service(args),
        // host-address HOST: ADDRESS= each address glibc's getaddrinfo gives.
        "host-address" => {
            use std::net::ToSocketAddrs as _;
            let found = (text(0)?, 0).to_socket_addrs().map_err(|_| libc::ENOENT)?;
            for address in found {
                println!("ADDRESS={}", address.ip());
            }
            Ok(())
        }
        // user-name UID: NAME= what glibc's getpwuid says.
        "user-name" => {
            // SAFETY: getpwuid's result is read before any other lookup.
            let entry = unsafe { libc::getpwuid(number(0)? as libc::uid_t) };
            if entry.is_null() {
                return Err(libc::ENOENT);
            }
            // SAFETY: a non-null entry's name is a NUL-terminated string.
            let name = unsafe { std::ffi::CStr::from_ptr((*entry).pw_name) };
            println!("NAME={}", name.to_string_lossy());
            Ok(())
        }
        _ => attack(op, args),
    }
}

/// A stream or seqpacket connect, or one datagram, to the unix socket at `path`.
fn unix_socket_op(op: &str, path: &str) -> Result<(), i32> {
    use std::os::unix::net::{UnixDatagram, UnixStream};
    match op {
        "stream" => outcome(UnixStream::connect(path).map(drop)),
        "send" => outcome(
            UnixDatagram::unbound()
                .and_then(|socket| socket.send_to(b"datagram", path))
                .map(drop),
        ),
        _ => {
            let c_path = c_path(path)?;
            // SAFETY: all-zero is a valid sockaddr_un; the path is copied in bounded.
            let mut address: libc::sockaddr_un = unsafe { std::mem::zeroed() };
            address.sun_family = libc::AF_UNIX as libc::sa_family_t;
            let bytes = c_path.as_bytes();
            if bytes.len() >= address.sun_path.len() {
                return Err(libc::ENAMETOOLONG);
            }
            for (slot, byte) in address.sun_path.iter_mut().zip(bytes) {
                *slot = *byte as libc::c_char;
            }
            // SAFETY: a plain socket; the address outlives the connect.
            let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET, 0) };
            errno_of(fd as libc::c_long)?;
            let result = unsafe {
                libc::connect(
                    fd,
                    (&raw const address).cast(),
                    size_of::<libc::sockaddr_un>() as libc::socklen_t,
                )
            };
            unsafe { libc::close(fd) };
            errno_of(result as libc::c_long)
        }
    }
}

fn io_errno(error: std::io::Error) -> i32 {
    error.raw_os_error().unwrap_or(-1)
}

/// Reads a file and writes the same bytes back: the write is attempted, nothing changes.
fn rewrite(path: &str) -> Result<(), i32> {
    let text = std::fs::read(path).map_err(io_errno)?;
    outcome(std::fs::write(path, text))
}

/// process_vm_readv of one byte at the start of `pid`'s first mapping (of a page no process
/// maps when its maps cannot be read: the call still shows whether it may access the process).
fn vm_read(pid: i32) -> Result<(), i32> {
    let start = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .ok()
        .and_then(|maps| {
            let start = maps.split('-').next()?;
            usize::from_str_radix(start, 16).ok()
        })
        .unwrap_or(0x1000);
    let mut byte = [0u8; 1];
    let local = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let remote = libc::iovec {
        iov_base: start as *mut libc::c_void,
        iov_len: 1,
    };
    // SAFETY: one local byte, described by `local`, receives the copy.
    errno_of(unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) } as libc::c_long)
}

/// pidfd_getfd: a duplicate of `pid`'s descriptor `fd`.
fn pidfd_getfd(pid: i32, fd: i32) -> Result<(), i32> {
    // SAFETY: plain syscalls; the descriptors they return are closed here.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid, 0);
        errno_of(pidfd)?;
        let got = libc::syscall(libc::SYS_pidfd_getfd, pidfd, fd, 0);
        libc::close(pidfd as i32);
        errno_of(got)?;
        libc::close(got as i32);
    }
    Ok(())
}

/// Takes, for this process, a priority above the ordinary: `realtime` (SCHED_FIFO 1), `nice`
/// (-1), `io` (the realtime I/O class), or raises the limit that would allow one without
/// CAP_SYS_NICE (`rlimit-nice`, `rlimit-rtprio`).
fn outrun(how: &str) -> Result<(), i32> {
    // ioprio_set's "this process", and the realtime class at level 0, as the kernel packs it.
    const IOPRIO_WHO_PROCESS: i32 = 1;
    const IOPRIO_REALTIME: i32 = 1 << 13;
    let raise = |resource, limit| {
        let limits = libc::rlimit {
            rlim_cur: limit,
            rlim_max: limit,
        };
        // SAFETY: setrlimit reads a local struct.
        errno_of(unsafe { libc::setrlimit(resource, &limits) } as libc::c_long)
    };
    // SAFETY (all below): plain syscalls on arguments that live for the call.
    match how {
        "realtime" => {
            let param = libc::sched_param { sched_priority: 1 };
            errno_of(
                unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } as libc::c_long,
            )
        }
        "nice" => errno_of(unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, -1) } as libc::c_long),
        // sched_setattr's own nice value, which passes no setpriority.
        "attr-nice" => {
            let attr = SchedAttr {
                size: std::mem::size_of::<SchedAttr>() as u32,
                nice: -1,
                ..SchedAttr::default()
            };
            errno_of(unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr, 0) })
        }
        // Prints this process's I/O priority class.
        "io-class" => {
            let ioprio = unsafe { libc::syscall(libc::SYS_ioprio_get, IOPRIO_WHO_PROCESS, 0) };
            errno_of(ioprio).map(|()| println!("IOCLASS={}", ioprio >> 13))
        }
        // The first CPU only: a change of placement, not of priority.
        "affinity" => {
            let mut cpus: libc::cpu_set_t = unsafe { std::mem::zeroed() };
            unsafe { libc::CPU_SET(0, &mut cpus) };
            errno_of(
                unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&cpus), &cpus) }
                    as libc::c_long,
            )
        }
        "io" => errno_of(unsafe {
            libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, 0, IOPRIO_REALTIME)
        }),
        // Nice down to -20; realtime priorities up to 99.
        "rlimit-nice" => raise(libc::RLIMIT_NICE, 40),
        "rlimit-rtprio" => raise(libc::RLIMIT_RTPRIO, 99),
        _ => Err(libc::EINVAL),
    }
}

/// The xattr form of an access ACL with the owner's, group's and others' entries of `mode`
/// (octal), and with `user` (a uid) an entry for that user and the mask, both with the group's
/// permissions: version 2, then (tag, permissions, id) for each, in the kernel's order.
fn access_acl(mode: &str, user: Option<u32>) -> Option<Vec<u8>> {
    const ACL_USER_OBJ: u16 = 0x01;
    const ACL_USER: u16 = 0x02;
    const ACL_GROUP_OBJ: u16 = 0x04;
    const ACL_MASK: u16 = 0x10;
    const ACL_OTHER: u16 = 0x20;
    let mode = u32::from_str_radix(mode, 8).ok()?;
    let bits = |shift: u32| ((mode >> shift) & 7) as u16;
    let mut entries = vec![(ACL_USER_OBJ, bits(6), u32::MAX)];
    if let Some(uid) = user {
        entries.push((ACL_USER, bits(3), uid));
    }
    entries.push((ACL_GROUP_OBJ, bits(3), u32::MAX));
    if user.is_some() {
        entries.push((ACL_MASK, bits(3), u32::MAX));
    }
    entries.push((ACL_OTHER, bits(0), u32::MAX));
    let mut acl = 2u32.to_le_bytes().to_vec();
    for (tag, permissions, id) in entries {
        acl.extend_from_slice(&tag.to_le_bytes());
        acl.extend_from_slice(&permissions.to_le_bytes());
        acl.extend_from_slice(&id.to_le_bytes());
    }
    Some(acl)
}

/// The first version of the kernel's `struct sched_attr` (policy SCHED_OTHER when zeroed).
#[repr(C)]
#[derive(Default)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
}

/// prlimit on `pid` with its own RLIMIT_NOFILE: the call is made, the limit unchanged.
fn prlimit_same(pid: i32) -> Result<(), i32> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit reads into and from a local struct.
    unsafe {
        errno_of(
            libc::prlimit(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut limit) as libc::c_long,
        )?;
        errno_of(
            libc::prlimit(pid, libc::RLIMIT_NOFILE, &limit, std::ptr::null_mut()) as libc::c_long,
        )
    }
}

/// setpriority on `pid` with its own nice value.
fn setnice_same(pid: i32) -> Result<(), i32> {
    // SAFETY: plain syscalls; getpriority's -1 is also a valid nice value, hence errno.
    unsafe {
        *libc::__errno_location() = 0;
        let nice = libc::getpriority(libc::PRIO_PROCESS, pid as libc::id_t);
        if nice == -1 && last_errno() != 0 {
            return Err(last_errno());
        }
        errno_of(libc::setpriority(libc::PRIO_PROCESS, pid as libc::id_t, nice) as libc::c_long)
    }
}

/// ioprio_set on `pid` with its own I/O priority.
fn ioprio_same(pid: i32) -> Result<(), i32> {
    const IOPRIO_WHO_PROCESS: i32 = 1;
    // SAFETY: plain syscalls on numbers.
    unsafe {
        let ioprio = libc::syscall(libc::SYS_ioprio_get, IOPRIO_WHO_PROCESS, pid);
        errno_of(ioprio)?;
        // The class "none" takes no level (the kernel may report one).
        let ioprio = if ioprio >> 13 == 0 { 0 } else { ioprio };
        errno_of(libc::syscall(
            libc::SYS_ioprio_set,
            IOPRIO_WHO_PROCESS,
            pid,
            ioprio,
        ))
    }
}

/// migrate_pages of `pid` from node 0 to node 0: asks to move its memory, moves nothing.
fn migrate_pages(pid: i32) -> Result<(), i32> {
    let nodes: u64 = 1;
    // SAFETY: both node masks are one live u64, and maxnode says 64 bits.
    errno_of(unsafe {
        libc::syscall(
            libc::SYS_migrate_pages,
            pid,
            64,
            &raw const nodes,
            &raw const nodes,
        )
    })
}

/// What a process does to its own child, as a debugger or a container runtime would: trace it,
/// read its memory, take a descriptor, set its OOM score (and with `userns`, its uid map),
/// and a second child asks to be traced. Fails with the first errno.
fn own_child(userns: bool) -> Result<(), i32> {
    let mut fds = [0; 2];
    // SAFETY: fork in a single-threaded helper; the children only make syscalls and exit.
    unsafe {
        errno_of(libc::pipe(fds.as_mut_ptr()) as libc::c_long)?;
        let child = libc::fork();
        errno_of(child as libc::c_long)?;
        if child == 0 {
            if userns {
                libc::unshare(libc::CLONE_NEWUSER);
            }
            libc::write(fds[1], [1u8].as_ptr().cast(), 1);
            libc::sleep(60);
            libc::_exit(0);
        }
        let mut ready = [0u8; 1];
        libc::read(fds[0], ready.as_mut_ptr().cast(), 1);
        let result = child_actions(child, userns);
        libc::kill(child, libc::SIGKILL);
        libc::waitpid(child, std::ptr::null_mut(), 0);
        result?;

        let tracee = libc::fork();
        errno_of(tracee as libc::c_long)?;
        if tracee == 0 {
            let traced = libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0);
            libc::_exit(if traced < 0 { last_errno() } else { 0 });
        }
        let mut status = 0;
        libc::waitpid(tracee, &mut status, 0);
        match libc::WEXITSTATUS(status) {
            0 => Ok(()),
            errno => Err(errno),
        }
    }
}

fn child_actions(child: i32, userns: bool) -> Result<(), i32> {
    // SAFETY: PTRACE_SEIZE of our own child; it ends when the child is killed.
    errno_of(unsafe { libc::ptrace(libc::PTRACE_SEIZE, child, 0, 0) })?;
    vm_read(child)?;
    pidfd_getfd(child, 0)?;
    outcome(std::fs::File::open(format!("/proc/{child}/mem")).map(drop))?;
    rewrite(&format!("/proc/{child}/oom_score_adj"))?;
    if userns {
        // SAFETY: geteuid cannot fail.
        let uid = unsafe { libc::geteuid() };
        outcome(std::fs::write(
            format!("/proc/{child}/uid_map"),
            format!("0 {uid} 1"),
        ))?;
    }
    Ok(())
}

/// Writes `value` to the sysctl at `path` from a network namespace of its own (`place`, as for
/// [`net_address`]).
fn unshare_net_write(path: &str, value: &str, place: &str) -> Result<(), i32> {
    enter_network_namespace(place)?;
    outcome(std::fs::write(path, value))
}

/// Stays in the host's network namespace (`host`), or enters a new one: owned by the caller's
/// user namespace (`own-netns`), or inside a new user namespace that maps the caller to root
/// (`own-userns`).
fn enter_network_namespace(place: &str) -> Result<(), i32> {
    // SAFETY: plain calls on this single-threaded process.
    unsafe {
        let uid = libc::geteuid();
        match place {
            "host" => Ok(()),
            "own-netns" => errno_of(libc::unshare(libc::CLONE_NEWNET) as libc::c_long),
            "own-userns" => {
                errno_of(libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET) as libc::c_long)?;
                outcome(std::fs::write("/proc/self/uid_map", format!("0 {uid} 1")))
            }
            _ => Err(libc::EINVAL),
        }
    }
}

/// Adds or deletes (`op`) ADDRESS/32 on the loopback interface over rtnetlink, in the network
/// namespace `place` names (see [`enter_network_namespace`]).
fn net_address(op: &str, address: &str, place: &str) -> Result<(), i32> {
    let address: std::net::Ipv4Addr = address.parse().map_err(|_| libc::EINVAL)?;
    enter_network_namespace(place)?;
    #[repr(C)]
    struct Request {
        header: libc::nlmsghdr,
        message: libc::ifaddrmsg,
        attribute: libc::rtattr,
        local: [u8; 4],
    }
    let (kind, flags) = match op {
        "add" => (libc::RTM_NEWADDR, libc::NLM_F_CREATE | libc::NLM_F_EXCL),
        "del" => (libc::RTM_DELADDR, 0),
        _ => return Err(libc::EINVAL),
    };
    let lo = c_path("lo")?;
    // SAFETY: a NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(lo.as_ptr()) };
    if index == 0 {
        return Err(last_errno());
    }
    let request = Request {
        header: libc::nlmsghdr {
            nlmsg_len: size_of::<Request>() as u32,
            nlmsg_type: kind,
            nlmsg_flags: (libc::NLM_F_REQUEST | libc::NLM_F_ACK | flags) as u16,
            nlmsg_seq: 1,
            nlmsg_pid: 0,
        },
        message: libc::ifaddrmsg {
            ifa_family: libc::AF_INET as u8,
            ifa_prefixlen: 32,
            ifa_flags: 0,
            ifa_scope: 0,
            ifa_index: index,
        },
        attribute: libc::rtattr {
            rta_len: (size_of::<libc::rtattr>() + 4) as u16,
            rta_type: libc::IFA_LOCAL,
        },
        local: address.octets(),
    };
    // SAFETY: a netlink socket of our own; the request and the reply buffer outlive the calls.
    unsafe {
        let fd = libc::socket(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_ROUTE);
        errno_of(fd as libc::c_long)?;
        let sent = libc::send(fd, (&raw const request).cast(), size_of::<Request>(), 0);
        if sent < 0 {
            let errno = last_errno();
            libc::close(fd);
            return Err(errno);
        }
        let mut reply = [0u8; 256];
        let received = libc::recv(fd, reply.as_mut_ptr().cast(), reply.len(), 0);
        let errno = last_errno();
        libc::close(fd);
        let header_len = size_of::<libc::nlmsghdr>();
        if received < (header_len + 4) as isize {
            return Err(if received < 0 { errno } else { libc::EPROTO });
        }
        // The acknowledgement: NLMSG_ERROR carrying 0 or a negative errno.
        let header: libc::nlmsghdr = std::ptr::read_unaligned(reply.as_ptr().cast());
        if header.nlmsg_type != libc::NLMSG_ERROR as u16 {
            return Err(libc::EPROTO);
        }
        let error: i32 = std::ptr::read_unaligned(reply[header_len..].as_ptr().cast());
        if error < 0 { Err(-error) } else { Ok(()) }
    }
}

/// Sets the loopback interface's MTU with the SIOCSIFMTU ioctl: the older door to the same
/// configuration.
fn loopback_mtu(mtu: i32) -> Result<(), i32> {
    // SAFETY: all-zero is a valid ifreq; the name fits; the socket is ours.
    unsafe {
        let mut request: libc::ifreq = std::mem::zeroed();
        for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo") {
            *slot = *byte as libc::c_char;
        }
        request.ifr_ifru.ifru_mtu = mtu;
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        errno_of(fd as libc::c_long)?;
        let result = libc::ioctl(fd, libc::SIOCSIFMTU, &mut request);
        libc::close(fd);
        errno_of(result as libc::c_long)
    }
}

/// More doors around file protection (attack_files tests). RESULT=ok means the door is open.
fn attack(op: &str, args: &[&str]) -> Result<(), i32> {
    let text = |index: usize| args.get(index).copied().ok_or(libc::EINVAL);
    let number = |index: usize| -> Result<i32, i32> {
        text(index).and_then(|arg| arg.parse().map_err(|_| libc::EINVAL))
    };
    let io = |error: std::io::Error| error.raw_os_error().unwrap_or(-1);
    match op {
        "peek-exec" => peek_exec(text(0)?, text(1)?, args.get(2..4).unwrap_or_default()),
        // SAFETY (all below): plain syscalls on arguments that live for the call.
        "chmod" => {
            let path = c_path(text(0)?)?;
            let mode = u32::from_str_radix(text(1)?, 8).map_err(|_| libc::EINVAL)?;
            errno_of(unsafe { libc::chmod(path.as_ptr(), mode) } as libc::c_long)
        }
        "chown" => {
            let path = c_path(text(0)?)?;
            let owner: libc::uid_t = text(1)?.parse().map_err(|_| libc::EINVAL)?;
            errno_of(unsafe { libc::chown(path.as_ptr(), owner, owner) } as libc::c_long)
        }
        "setxattr" => {
            let (path, name) = (c_path(text(0)?)?, c_path(text(1)?)?);
            let value = text(2)?;
            errno_of(unsafe {
                libc::setxattr(
                    path.as_ptr(),
                    name.as_ptr(),
                    value.as_ptr().cast(),
                    value.len(),
                    0,
                )
            } as libc::c_long)
        }
        // An access ACL: MODE ("0750"), which it sets too, [and an entry for the user UID].
        "acl" => {
            let path = c_path(text(0)?)?;
            let user = match args.get(2) {
                Some(uid) => Some(uid.parse().map_err(|_| libc::EINVAL)?),
                None => None,
            };
            let acl = access_acl(text(1)?, user).ok_or(libc::EINVAL)?;
            errno_of(unsafe {
                libc::setxattr(
                    path.as_ptr(),
                    c"system.posix_acl_access".as_ptr(),
                    acl.as_ptr().cast(),
                    acl.len(),
                    0,
                )
            } as libc::c_long)
        }
        "remove-acl" => {
            let path = c_path(text(0)?)?;
            errno_of(unsafe {
                libc::removexattr(path.as_ptr(), c"system.posix_acl_access".as_ptr())
            } as libc::c_long)
        }
        "exchange" => rename_with(text(0)?, text(1)?, libc::RENAME_EXCHANGE),
        "opath-reopen" => {
            let fd = open_raw(text(0)?, libc::O_PATH)?;
            std::fs::read(format!("/proc/self/fd/{fd}"))
                .map(|bytes| println!("READ={}", bytes.len()))
                .map_err(io)
        }
        "link-opath" => {
            let fd = open_raw(text(0)?, libc::O_PATH)?;
            let (empty, new) = (c_path("")?, c_path(text(1)?)?);
            errno_of(unsafe {
                libc::linkat(
                    fd,
                    empty.as_ptr(),
                    libc::AT_FDCWD,
                    new.as_ptr(),
                    libc::AT_EMPTY_PATH,
                )
            } as libc::c_long)
        }
        "by-handle" => by_handle(text(0)?),
        "swap-hold" => swap_hold(text(0)?, text(1)?, text(2)?),
        "hold-open" => hold_open(text(0)?, text(1)?),
        // read-on-line PATH: READY, then on a line on stdin PATH read (CONTENT=, one line).
        "read-on-line" => {
            use std::io::{BufRead as _, Write as _};
            let io = |error: std::io::Error| error.raw_os_error().unwrap_or(-1);
            println!("READY");
            std::io::stdout().flush().map_err(io)?;
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line).map_err(io)?;
            let content = std::fs::read_to_string(text(0)?).map_err(io)?;
            println!("CONTENT={}", content.replace('\n', "|"));
            Ok(())
        }
        // rename-on-line DIR FROM TO: DIR opened (O_PATH), READY, then on a line on stdin FROM
        // renamed to TO, both relative to that descriptor (TO may be absolute).
        "rename-on-line" => {
            use std::{
                io::{BufRead as _, Write as _},
                os::{fd::AsRawFd as _, unix::fs::OpenOptionsExt as _},
            };
            let io = |error: std::io::Error| error.raw_os_error().unwrap_or(-1);
            let dir = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
                .open(text(0)?)
                .map_err(io)?;
            println!("READY");
            std::io::stdout().flush().map_err(io)?;
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line).map_err(io)?;
            let (from, to) = (c_path(text(1)?)?, c_path(text(2)?)?);
            let fd = dir.as_raw_fd();
            // SAFETY: an open descriptor and NUL-terminated paths that outlive the call.
            errno_of(unsafe { libc::renameat(fd, from.as_ptr(), fd, to.as_ptr()) }.into())
        }
        "exec-opath" => exec_by("opath", text(0)?),
        "getfd" => getfd(number(0)?, number(1)?),
        "race-read" => race_read(number(0)? as usize, text(1)?),
        "uring-read" => uring_read(text(0)?),
        "kcore" => kcore(),
        "tiocsti" => tiocsti(text(0)?),
        "chattr" => {
            // FS_IOC_SETFLAGS with FS_IMMUTABLE_FL set (`+i`) or cleared (`-i`), on a read-only
            // open: no write open needed.
            const FS_IOC_SETFLAGS: libc::c_ulong = 0x4008_6602;
            const FS_IMMUTABLE_FL: libc::c_long = 0x10;
            let fd = open_raw(text(0)?, libc::O_RDONLY)?;
            // SAFETY: an ioctl on our own fd with a long that lives for the call, then close.
            let mut flags: libc::c_long = if text(1)? == "+i" { FS_IMMUTABLE_FL } else { 0 };
            let result =
                errno_of(unsafe { libc::ioctl(fd, FS_IOC_SETFLAGS, &mut flags) } as libc::c_long);
            unsafe { libc::close(fd) };
            result
        }
        "chattr-compat" => chattr_compat(text(0)?, text(1)? == "+i"),
        // ancestor-hold ANCESTOR ASIDE INNER rename|exchange (see ancestor_hold).
        "ancestor-hold" => ancestor_hold(text(0)?, text(1)?, text(2)?, text(3)?),
        // wronly-hold PATH: made and held write-only; later reopened for reading via /proc.
        "wronly-hold" => wronly_hold(text(0)?),
        // create-rdwr PATH: a new file opened for reading and writing (O_CREAT|O_RDWR).
        "create-rdwr" => {
            let fd = fd_of(unsafe {
                libc::open(
                    c_path(text(0)?)?.as_ptr(),
                    libc::O_CREAT | libc::O_RDWR,
                    0o644,
                )
            } as libc::c_long)?;
            unsafe { libc::close(fd) };
            Ok(())
        }
        // poll-read PATH NEEDLE MILLIS: READY, then reads PATH over and over for MILLIS until
        // what it holds contains NEEDLE (printed as CONTENT=); the last errno otherwise.
        "poll-read" => poll_read(
            text(0)?,
            text(1)?,
            number(2)? as u64,
            number(3).unwrap_or(0) as u64,
        ),
        // symlink-hold TARGET LINK: TARGET made and held open for reading and writing, LINK a
        // symlink to it; READY, then what TARGET holds as CONTENT=.
        "symlink-hold" => {
            let io = |error: std::io::Error| error.raw_os_error().unwrap_or(-1);
            std::fs::write(text(0)?, "mine").map_err(io)?;
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(text(0)?)
                .map_err(io)?;
            std::os::unix::fs::symlink(text(0)?, text(1)?).map_err(io)?;
            ready_then_read(&file)
        }
        // plant-hold OUTSIDE INSIDE link|rename|replace (see plant_hold).
        "plant-hold" => plant_hold(text(0)?, text(1)?, text(2)?),
        // tmpfile-link SCRATCH_DIR NEW: an O_TMPFILE made in SCRATCH_DIR, linked in as NEW.
        "tmpfile-link" => {
            let dir = c_path(text(0)?)?;
            let fd =
                fd_of(
                    unsafe { libc::open(dir.as_ptr(), libc::O_TMPFILE | libc::O_WRONLY, 0o644) }
                        as libc::c_long,
                )?;
            let _ = unsafe { libc::write(fd, b"tmp".as_ptr().cast(), 3) };
            let (from, new) = (c_path(&format!("/proc/self/fd/{fd}"))?, c_path(text(1)?)?);
            errno_of(unsafe {
                libc::linkat(
                    libc::AT_FDCWD,
                    from.as_ptr(),
                    libc::AT_FDCWD,
                    new.as_ptr(),
                    libc::AT_SYMLINK_FOLLOW,
                )
            } as libc::c_long)
        }
        "mkfifo" => {
            let path = c_path(text(0)?)?;
            errno_of(unsafe { libc::mkfifo(path.as_ptr(), 0o644) } as libc::c_long)
        }
        "symlink" => {
            let (target, path) = (c_path(text(0)?)?, c_path(text(1)?)?);
            errno_of(unsafe { libc::symlink(target.as_ptr(), path.as_ptr()) } as libc::c_long)
        }
        // utimes PATH: `touch` (times set to now, no fd).
        "utimes" => {
            let path = c_path(text(0)?)?;
            errno_of(
                unsafe { libc::utimensat(libc::AT_FDCWD, path.as_ptr(), std::ptr::null(), 0) }
                    as libc::c_long,
            )
        }
        // unix-bind PATH: a stream socket bound (and listening) at PATH.
        "unix-bind" => outcome(std::os::unix::net::UnixListener::bind(text(0)?).map(drop)),
        // local-call SOCKET LINE: one call on a daemon socket, reply printed.
        // http-post ADDRESS PATH BODY [HEADER]...: one HTTP POST; prints the status line.
        "http-post" => {
            use std::io::{BufRead as _, Write as _};
            let address: SocketAddr = text(0)?.parse().map_err(|_| libc::EINVAL)?;
            let mut stream =
                TcpStream::connect_timeout(&address, Duration::from_secs(10)).map_err(io)?;
            let body = text(2)?;
            let mut request = format!(
                "POST {} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Length: {}\r\n",
                text(1)?,
                body.len()
            );
            for header in args.iter().skip(3) {
                request.push_str(&format!("{header}\r\n"));
            }
            request.push_str(&format!("\r\n{body}"));
            stream.write_all(request.as_bytes()).map_err(io)?;
            let mut status = String::new();
            std::io::BufReader::new(&stream)
                .read_line(&mut status)
                .map_err(io)?;
            println!("STATUS={}", status.trim_end());
            Ok(())
        }
        "local-call" => {
            let stream = std::os::unix::net::UnixStream::connect(text(0)?).map_err(io)?;
            call_line(stream, text(1)?)
        }
        // connect-then-join SOCKET CGROUP LINE: connect while here, then join CGROUP, then call.
        "connect-then-join" => {
            let stream = std::os::unix::net::UnixStream::connect(text(0)?).map_err(io)?;
            std::thread::sleep(Duration::from_millis(1500));
            join_cgroup(text(1)?).map_err(|error| {
                println!("JOIN={error}");
                libc::EIO
            })?;
            println!(
                "CGROUP={}",
                std::fs::read_to_string("/proc/self/cgroup")
                    .unwrap_or_default()
                    .trim()
            );
            call_line(stream, text(2)?)
        }
        // request-key TYPE DESC CALLOUT: request_key(2) with a callout: the kernel runs
        // /sbin/request-key as root from a kernel thread when the key is not found.
        "request-key" => {
            let (kind, desc, callout) = (c_path(text(0)?)?, c_path(text(1)?)?, c_path(text(2)?)?);
            let result = unsafe {
                libc::syscall(
                    libc::SYS_request_key,
                    kind.as_ptr(),
                    desc.as_ptr(),
                    callout.as_ptr(),
                    0,
                )
            };
            println!("REQUEST_KEY={} errno={}", result, last_errno());
            Ok(())
        }
        // whiteout FROM TO: renameat2 with RENAME_WHITEOUT (leaves a whiteout at FROM).
        "whiteout" => rename_with(text(0)?, text(1)?, libc::RENAME_WHITEOUT),
        // deep-read ROOT DEPTH: DEPTH nested directories below ROOT, a file at the bottom, then
        // a read of it; prints the path.
        "deep-read" => {
            let depth: usize = number(1)? as usize;
            let mut path = std::path::PathBuf::from(text(0)?);
            for _ in 0..depth {
                path.push("d");
            }
            std::fs::create_dir_all(&path).map_err(io)?;
            path.push("f");
            std::fs::write(&path, "deep").map_err(io)?;
            println!("PATH={}", path.display());
            std::fs::read(&path).map(drop).map_err(io)
        }
        _ => Err(libc::EINVAL),
    }
}

/// A file of the agent's own made at OUTSIDE and held open for reading, then given
/// a name INSIDE a read-protected place: `link` (INSIDE removed first if there, then a hard link),
/// `rename` (renamed over INSIDE), `replace` (INSIDE, a read-protected file of its own rule, is
/// first renamed to OUTSIDE.orig, then OUTSIDE renamed to INSIDE). Prints READY, waits for a
/// line on stdin (meanwhile someone trusted writes INSIDE in place), then reads the held fd and
/// prints CONTENT=.
fn plant_hold(outside: &str, inside: &str, how: &str) -> Result<(), i32> {
    use std::io::{BufRead as _, Write as _};
    use std::os::unix::fs::FileExt as _;
    let io = |error: std::io::Error| error.raw_os_error().unwrap_or(-1);
    std::fs::write(outside, "planted").map_err(io)?;
    let file = std::fs::File::open(outside).map_err(io)?;
    match how {
        "link" => {
            let _ = std::fs::remove_file(inside);
            std::fs::hard_link(outside, inside).map_err(io)?;
        }
        "rename" => std::fs::rename(outside, inside).map_err(io)?,
        "replace" => {
            std::fs::rename(inside, format!("{outside}.orig")).map_err(io)?;
            std::fs::rename(outside, inside).map_err(io)?;
        }
        _ => return Err(libc::EINVAL),
    }
    println!("READY");
    std::io::stdout().flush().map_err(io)?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).map_err(io)?;
    let mut bytes = vec![0u8; 256];
    let read = file.read_at(&mut bytes, 0).map_err(io)?;
    println!(
        "CONTENT={}",
        String::from_utf8_lossy(&bytes[..read]).trim_end()
    );
    Ok(())
}

/// renameat2(2) of `first` to `second` with `flags`.
fn rename_with(first: &str, second: &str, flags: libc::c_uint) -> Result<(), i32> {
    let (first, second) = (c_path(first)?, c_path(second)?);
    // SAFETY: a plain syscall on paths that live for the call.
    errno_of(unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            first.as_ptr(),
            libc::AT_FDCWD,
            second.as_ptr(),
            flags,
        )
    })
}

/// Waits for a line on stdin after printing READY, then prints what `file` holds as CONTENT=.
fn ready_then_read(file: &std::fs::File) -> Result<(), i32> {
    use std::io::{BufRead as _, Write as _};
    use std::os::unix::fs::FileExt as _;
    let io = |error: std::io::Error| error.raw_os_error().unwrap_or(-1);
    println!("READY");
    std::io::stdout().flush().map_err(io)?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).map_err(io)?;
    let mut bytes = vec![0u8; 256];
    let read = file.read_at(&mut bytes, 0).map_err(io)?;
    println!(
        "CONTENT={}",
        String::from_utf8_lossy(&bytes[..read]).trim_end()
    );
    Ok(())
}

/// A directory above a rule's path swapped for the agent's own tree, whose file at the rule's
/// path (ANCESTOR/INNER) the agent holds open for reading and writing. `rename`: ANCESTOR is
/// renamed to ASIDE, then the tree made afresh; `exchange`: the tree is made at ASIDE first and
/// swapped in with RENAME_EXCHANGE (no moment without the path).
fn ancestor_hold(ancestor: &str, aside: &str, inner: &str, how: &str) -> Result<(), i32> {
    let io = |error: std::io::Error| error.raw_os_error().unwrap_or(-1);
    let open_rw = |path: &str| {
        let path = std::path::Path::new(path);
        std::fs::create_dir_all(path.parent().unwrap()).map_err(io)?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io)?;
        std::io::Write::write_all(&mut &file, b"planted").map_err(io)?;
        Ok::<_, i32>(file)
    };
    let file = match how {
        "rename" => {
            std::fs::rename(ancestor, aside).map_err(io)?;
            open_rw(&format!("{ancestor}/{inner}"))?
        }
        "exchange" => {
            let file = open_rw(&format!("{aside}/{inner}"))?;
            let (from, to) = (c_path(ancestor)?, c_path(aside)?);
            errno_of(unsafe {
                libc::syscall(
                    libc::SYS_renameat2,
                    libc::AT_FDCWD,
                    from.as_ptr(),
                    libc::AT_FDCWD,
                    to.as_ptr(),
                    libc::RENAME_EXCHANGE,
                )
            })?;
            file
        }
        _ => return Err(libc::EINVAL),
    };
    ready_then_read(&file)
}

/// A new file made write-only (writing is free under a read rule) and held; once READY is
/// answered, reopened for reading through /proc/self/fd.
fn wronly_hold(path: &str) -> Result<(), i32> {
    use std::io::{BufRead as _, Write as _};
    let io = |error: std::io::Error| error.raw_os_error().unwrap_or(-1);
    let held = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io)?;
    println!("READY");
    std::io::stdout().flush().map_err(io)?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).map_err(io)?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&held);
    let reopened = std::fs::File::open(format!("/proc/self/fd/{fd}")).map_err(io)?;
    let mut bytes = vec![0u8; 256];
    let read = std::os::unix::fs::FileExt::read_at(&reopened, &mut bytes, 0).map_err(io)?;
    println!(
        "CONTENT={}",
        String::from_utf8_lossy(&bytes[..read]).trim_end()
    );
    Ok(())
}

fn poll_read(path: &str, needle: &str, millis: u64, pause_millis: u64) -> Result<(), i32> {
    use std::io::Write as _;
    println!("READY");
    std::io::stdout()
        .flush()
        .map_err(|e| e.raw_os_error().unwrap_or(-1))?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(millis);
    let mut last = Ok(());
    let mut tries = 0u64;
    while std::time::Instant::now() < deadline {
        tries += 1;
        match std::fs::read_to_string(path) {
            Ok(content) if content.contains(needle) => {
                println!("TRIES={tries}");
                println!("CONTENT={}", content.trim_end());
                return Ok(());
            }
            Ok(_) => last = Ok(()),
            Err(error) => last = Err(error.raw_os_error().unwrap_or(-1)),
        }
        std::thread::sleep(std::time::Duration::from_millis(pause_millis));
    }
    println!("TRIES={tries}");
    last.and(Err(libc::ETIMEDOUT))
}

/// `chattr +i` or `-i` as 32-bit code does it: FS_IOC32_SETFLAGS through the 32-bit system
/// call entry (`int 0x80`), whose ioctls reach the file_ioctl_compat hook, not file_ioctl.
fn chattr_compat(path: &str, immutable: bool) -> Result<(), i32> {
    const FS_IOC32_SETFLAGS: u32 = 0x4004_6602;
    const FS_IMMUTABLE_FL: u32 = 0x10;
    /// ioctl in the 32-bit system call table.
    const IA32_IOCTL: u32 = 54;
    let fd = open_raw(path, libc::O_RDONLY)?;
    // SAFETY: a fresh anonymous page below 4 GiB (a 32-bit pointer reaches it), written once and
    // unmapped after the call; the fd is ours. `int 0x80` takes its arguments in ebx, ecx and
    // edx; rbx is reserved by the compiler, so the fd is swapped in and out around the call,
    // and the registers the 32-bit entry does not preserve are marked clobbered.
    unsafe {
        let page = libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_32BIT,
            -1,
            0,
        );
        if page == libc::MAP_FAILED {
            let errno = last_errno();
            libc::close(fd);
            return Err(errno);
        }
        *page.cast::<u32>() = if immutable { FS_IMMUTABLE_FL } else { 0 };
        let result: i32;
        std::arch::asm!(
            "xchg {fd:r}, rbx",
            "int 0x80",
            "xchg {fd:r}, rbx",
            fd = inout(reg) fd as u64 => _,
            inlateout("eax") IA32_IOCTL => result,
            in("ecx") FS_IOC32_SETFLAGS,
            in("edx") page as u64 as u32,
            out("r8") _, out("r9") _, out("r10") _, out("r11") _,
            out("r12") _, out("r13") _, out("r14") _, out("r15") _,
        );
        libc::munmap(page, 4096);
        libc::close(fd);
        if result < 0 { Err(-result) } else { Ok(()) }
    }
}

fn open_raw(path: &str, flags: i32) -> Result<i32, i32> {
    let path = c_path(path)?;
    // SAFETY: plain open of a NUL-terminated path.
    let fd = unsafe { libc::open(path.as_ptr(), flags) };
    if fd < 0 { Err(last_errno()) } else { Ok(fd) }
}

/// Runs `path target` stopped under ptrace (an exec that may need a grant), then reads the start
/// of its executable mapping through /proc/PID/mem (`mem`), process_vm_readv (`vm`),
/// /proc/PID/map_files (`map_files`) or /proc/PID/exe (`exe`), or dumps
/// it to `DUMPS/core.PID` (`core DUMPS COPY`, with that core_pattern; COPY holds the same
/// bytes as `path`, to look for them in the dump). Ok only when the ELF magic was read.
/// An exec that did not happen is errno 1000.
fn peek_exec(path: &str, how: &str, dump: &[&str]) -> Result<(), i32> {
    let program = c_path(path)?;
    let arg = c_path("target")?;
    let argv = [program.as_ptr(), arg.as_ptr(), std::ptr::null()];
    if how == "core" {
        // Every mapping in the dump, the file-backed code too; inherited across the exec.
        std::fs::write("/proc/self/coredump_filter", "0x7f")
            .map_err(|e| e.raw_os_error().unwrap_or(-1))?;
        let unlimited = libc::rlimit {
            rlim_cur: libc::RLIM_INFINITY,
            rlim_max: libc::RLIM_INFINITY,
        };
        // SAFETY: sets this process's own limit.
        unsafe { libc::setrlimit(libc::RLIMIT_CORE, &unlimited) };
    }
    // SAFETY: the child only calls async-signal-safe functions before the exec.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(last_errno());
    }
    if pid == 0 {
        unsafe {
            libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0);
            libc::execv(program.as_ptr(), argv.as_ptr());
            libc::_exit(127);
        }
    }
    let mut status = 0;
    // SAFETY: our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    if !libc::WIFSTOPPED(status) {
        return Err(1000);
    }
    match how {
        "core" => {
            // SAFETY: our stopped tracee: let it go with a signal that dumps core.
            unsafe {
                libc::ptrace(libc::PTRACE_DETACH, pid, 0, libc::SIGQUIT);
                libc::waitpid(pid, &mut status, 0);
            }
            if libc::WIFSIGNALED(status) && libc::WCOREDUMP(status) {
                let [dumps, copy] = dump else {
                    return Err(libc::EINVAL);
                };
                let core = std::fs::read(format!("{dumps}/core.{pid}"))
                    .map_err(|e| e.raw_os_error().unwrap_or(-1))?;
                let code = std::fs::read(copy).unwrap_or_default();
                // A stretch of the binary's code past its first page, found in the dump.
                let sample = code.get(8192..8192 + 64).ok_or(libc::EINVAL)?;
                if core.windows(sample.len()).any(|window| window == sample) {
                    Ok(())
                } else {
                    Err(1001)
                }
            } else {
                Err(1002)
            }
        }
        _ => {
            let result = read_exe_start(pid, how);
            // SAFETY: our stopped tracee.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            result
        }
    }
}

fn read_exe_start(pid: i32, how: &str) -> Result<(), i32> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .map_err(|e| e.raw_os_error().unwrap_or(-1))?;
    let start = maps
        .lines()
        .next()
        .and_then(|line| line.split('-').next())
        .and_then(|start| u64::from_str_radix(start, 16).ok())
        .ok_or(libc::EINVAL)?;
    let mut bytes = [0u8; 4];
    let first = maps
        .lines()
        .next()
        .and_then(|line| line.split(' ').next())
        .unwrap_or("");
    if how == "map_files" || how == "exe" {
        use std::io::Read as _;
        let link = match how {
            "exe" => format!("/proc/{pid}/exe"),
            _ => format!("/proc/{pid}/map_files/{first}"),
        };
        let mut file = std::fs::File::open(link).map_err(|e| e.raw_os_error().unwrap_or(-1))?;
        file.read_exact(&mut bytes)
            .map_err(|e| e.raw_os_error().unwrap_or(-1))?;
    } else if how == "vm" {
        let local = libc::iovec {
            iov_base: bytes.as_mut_ptr().cast(),
            iov_len: 4,
        };
        let remote = libc::iovec {
            iov_base: start as *mut libc::c_void,
            iov_len: 4,
        };
        // SAFETY: local buffer outlives the call.
        errno_of(unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) } as libc::c_long)?;
    } else {
        use std::os::unix::fs::FileExt as _;
        let mem = std::fs::File::open(format!("/proc/{pid}/mem"))
            .map_err(|e| e.raw_os_error().unwrap_or(-1))?;
        mem.read_exact_at(&mut bytes, start)
            .map_err(|e| e.raw_os_error().unwrap_or(-1))?;
    }
    if &bytes == b"\x7fELF" {
        Ok(())
    } else {
        Err(1003)
    }
}

/// name_to_handle_at, then open_by_handle_at: a second way to open a file, by its handle.
fn by_handle(path: &str) -> Result<(), i32> {
    let c = c_path(path)?;
    // struct file_handle: bytes, type, then up to 128 bytes of handle.
    let mut handle = [0u32; 2 + 32];
    handle[0] = 128;
    let mut mount_id = 0i32;
    // SAFETY: handle is large enough for the size it declares.
    errno_of(unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            libc::AT_FDCWD,
            c.as_ptr(),
            handle.as_mut_ptr(),
            &mut mount_id,
            0,
        )
    })?;
    let dir = Path::new(path)
        .parent()
        .and_then(|dir| dir.to_str())
        .ok_or(libc::EINVAL)?;
    let mount_fd = open_raw(dir, libc::O_RDONLY | libc::O_DIRECTORY)?;
    // SAFETY: as above.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mount_fd,
            handle.as_mut_ptr(),
            libc::O_RDONLY,
        )
    };
    errno_of(fd)?;
    let mut byte = [0u8; 1];
    // SAFETY: reads one byte from the fd we got.
    errno_of(unsafe { libc::read(fd as i32, byte.as_mut_ptr().cast(), 1) } as libc::c_long)
}

/// Moves `dir` aside and puts a copy of its `name` back at the same path, kept open for
/// writing; prints READY, waits for a line on stdin, then writes `other` over it through that
/// open file.
fn swap_hold(dir: &str, name: &str, other: &str) -> Result<(), i32> {
    use std::io::{BufRead as _, Write as _};
    use std::os::unix::fs::FileExt as _;
    let io = |error: std::io::Error| error.raw_os_error().unwrap_or(-1);
    let aside = format!("{dir}.aside");
    std::fs::rename(dir, &aside).map_err(io)?;
    std::fs::create_dir(dir).map_err(io)?;
    let content = std::fs::read(format!("{aside}/{name}")).map_err(io)?;
    let path = format!("{dir}/{name}");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(io)?;
    file.write_all_at(&content, 0).map_err(io)?;
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .map_err(io)?;
    println!("READY");
    std::io::stdout().flush().map_err(io)?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).map_err(io)?;
    let other = std::fs::read(other).map_err(io)?;
    file.write_all_at(&other, 0).map_err(io)?;
    Ok(())
}

/// One operation to each of `count` consecutive ports: `passed= denied= other=`.
fn sweep(op: &str, address: std::net::IpAddr, first_port: u16, count: u16) -> String {
    let (mut passed, mut denied, mut other) = (0, 0, 0);
    for port in first_port..first_port.saturating_add(count) {
        match net(op, &SocketAddr::new(address, port)) {
            Ok(()) => passed += 1,
            Err(libc::EPERM) => denied += 1,
            Err(_) => other += 1,
        }
    }
    format!("passed={passed} denied={denied} other={other}")
}

/// Opens up to `count` connections to the unix socket at `path` and keeps them for `seconds`;
/// prints `held=N` once they are open.
fn hold(path: &str, count: usize, seconds: u64) {
    // As many descriptors as this user may have.
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
    let held: Vec<std::os::unix::net::UnixStream> = (0..count)
        .map_while(|_| std::os::unix::net::UnixStream::connect(path).ok())
        .collect();
    println!("held={}", held.len());
    std::thread::sleep(Duration::from_secs(seconds));
    drop(held);
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
            // What it ran with, for tests of argument-bound grants, and whether the dynamic
            // loader ran it in secure-execution mode (which drops LD_PRELOAD, TMPDIR, ...).
            ["target", rest @ ..] => {
                println!("{RAN} {}", rest.join(" "));
                // SAFETY: getauxval reads the process's own auxiliary vector.
                let secure = unsafe { libc::getauxval(libc::AT_SECURE) };
                let var = |name| std::env::var(name).unwrap_or_else(|_| "-".into());
                let mut names: Vec<_> = std::env::vars_os()
                    .map(|(name, _)| name.to_string_lossy().into_owned())
                    .collect();
                names.sort();
                println!(
                    "TARGET ENV secure={secure} LD_PRELOAD={} TMPDIR={} NAMES={}",
                    var("LD_PRELOAD"),
                    var("TMPDIR"),
                    names.join(",")
                );
            }
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
            ["tamper", cgroup, op, rest @ ..] => {
                joined(cgroup)?;
                print_result(tamper(op, rest));
            }
            // holding PATH CGROUP OP [ARGS...]: PATH opened here, before joining CGROUP, as the
            // standard input OP then has (a terminal an agent was started from).
            ["holding", path, cgroup, op, rest @ ..] => {
                hold_as_stdin(path).map_err(|_| ExitCode::from(2))?;
                joined(cgroup)?;
                print_result(tamper(op, rest));
            }
            // controlling PATH CGROUP OP [ARGS...]: in a session of its own, PATH opened here
            // as its controlling terminal and standard input, then CGROUP joined (an agent
            // started from a console).
            ["controlling", path, cgroup, op, rest @ ..] => {
                // SAFETY: a new session for this process, which leads no process group.
                if unsafe { libc::setsid() } < 0 {
                    return Err(ExitCode::from(2));
                }
                let fd = open_raw(path, libc::O_RDWR | libc::O_NONBLOCK)
                    .map_err(|_| ExitCode::from(2))?;
                // SAFETY: dup2 of a descriptor this process owns; a hangup of that terminal
                // (the `vhangup` op) signals its session's leader, this process, which lives on.
                unsafe {
                    libc::dup2(fd, 0);
                    libc::signal(libc::SIGHUP, libc::SIG_IGN);
                }
                joined(cgroup)?;
                print_result(tamper(op, rest));
            }
            // key-to-parent CGROUP [parent-too]: a child that joins CGROUP, makes a session
            // keyring and hands it to this process, its parent, which stays where it is (or
            // joins CGROUP first with `parent-too`).
            ["key-to-parent", cgroup, rest @ ..] => {
                let parent_too = rest == ["parent-too"];
                if parent_too {
                    joined(cgroup)?;
                }
                // A step before the one tried failed: the child says so apart from any errno.
                const SETUP_FAILED: i32 = 255;
                // SAFETY: the child joins, makes system calls and exits with their errno.
                let pid = unsafe { libc::fork() };
                if pid == 0 {
                    const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;
                    const KEYCTL_SESSION_TO_PARENT: libc::c_long = 18;
                    // (An agent moves no process, itself included: the child of one is in.)
                    // SAFETY: a null name asks for a new anonymous keyring; then numbers only.
                    let code = unsafe {
                        if (!parent_too && joined(cgroup).is_err())
                            || libc::syscall(
                                libc::SYS_keyctl,
                                KEYCTL_JOIN_SESSION_KEYRING,
                                std::ptr::null::<u8>(),
                            ) < 0
                        {
                            SETUP_FAILED
                        } else if libc::syscall(libc::SYS_keyctl, KEYCTL_SESSION_TO_PARENT) < 0 {
                            last_errno()
                        } else {
                            0
                        }
                    };
                    // SAFETY: ends the child.
                    unsafe { libc::_exit(code) };
                }
                let mut status = 0;
                // SAFETY: our own child.
                unsafe { libc::waitpid(pid, &mut status, 0) };
                if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) == SETUP_FAILED {
                    eprintln!("key-to-parent: the child ended before its try ({status})");
                    return Err(ExitCode::from(2));
                }
                print_result(match libc::WEXITSTATUS(status) {
                    0 => Ok(()),
                    errno => Err(errno),
                });
            }
            ["race-net", cgroup, threads, op, target] => {
                let target = address(target)?;
                joined(cgroup)?;
                let threads = threads.parse().map_err(|_| ExitCode::from(2))?;
                let op = op.to_string();
                println!("{}", race(threads, move || net(&op, &target)));
            }
            ["sweep", cgroup, op, address, first_port, count] => {
                let address = address.parse().map_err(|_| ExitCode::from(2))?;
                let first_port = first_port.parse().map_err(|_| ExitCode::from(2))?;
                let count = count.parse().map_err(|_| ExitCode::from(2))?;
                joined(cgroup)?;
                println!("{}", sweep(op, address, first_port, count));
            }
            ["as-user", uid, cgroup, program, rest @ ..] => {
                joined(cgroup)?;
                become_user(uid)?;
                let errno = exec(program, rest);
                eprintln!("EXEC_ERRNO={errno}");
                return Err(ExitCode::from(126));
            }
            // Connects to a daemon socket in `cgroup`, says so, and sends the line it then reads
            // on stdin: the caller moves elsewhere between the two.
            ["call-later", cgroup, socket] => {
                use std::io::{BufRead as _, Write as _};
                joined(cgroup)?;
                let mut stream =
                    std::os::unix::net::UnixStream::connect(socket).map_err(|error| {
                        eprintln!("connect {socket}: {error}");
                        ExitCode::from(2)
                    })?;
                println!("connected");
                let _ = std::io::stdout().flush();
                let mut call = String::new();
                let _ = std::io::stdin().lock().read_line(&mut call);
                let mut reply = String::new();
                let sent = stream.write_all(call.as_bytes());
                let read = std::io::BufReader::new(&stream).read_line(&mut reply);
                if sent.is_err() || read.is_err() {
                    eprintln!("call failed: {sent:?} {read:?}");
                    return Err(ExitCode::from(2));
                }
                print!("{reply}");
            }
            ["net-hold", op, target, seconds, ..] => {
                let target = address(target)?;
                let seconds: u64 = seconds.parse().map_err(|_| ExitCode::from(2))?;
                print_result(net(op, &target));
                use std::io::Write as _;
                let _ = std::io::stdout().flush();
                std::thread::sleep(Duration::from_secs(seconds));
            }
            ["hold-tcp", target, count, seconds] => {
                let target = address(target)?;
                let count: usize = count.parse().map_err(|_| ExitCode::from(2))?;
                let seconds: u64 = seconds.parse().map_err(|_| ExitCode::from(2))?;
                // SAFETY: getrlimit/setrlimit on this process with a valid struct.
                unsafe {
                    let mut limit: libc::rlimit = std::mem::zeroed();
                    if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
                        limit.rlim_cur = limit.rlim_max;
                        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
                    }
                }
                use std::io::Write as _;
                let mut held = Vec::new();
                for _ in 0..count {
                    match TcpStream::connect_timeout(&target, Duration::from_secs(5)) {
                        Ok(mut stream) => {
                            // A whole request: the connection then idles in keep-alive.
                            let _ = stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
                            held.push(stream);
                        }
                        Err(_) => break,
                    }
                }
                println!("held={}", held.len());
                let _ = std::io::stdout().flush();
                std::thread::sleep(Duration::from_secs(seconds));
            }
            ["bpf-flood", count, seconds] => {
                let count: u64 = count.parse().map_err(|_| ExitCode::from(2))?;
                let seconds: u64 = seconds.parse().map_err(|_| ExitCode::from(2))?;
                let until = std::time::Instant::now() + Duration::from_secs(seconds);
                let (mut denied, mut other) = (0u64, 0u64);
                for done in 0..count {
                    if done % 1024 == 0 && std::time::Instant::now() >= until {
                        break;
                    }
                    match bpf(1, 0) {
                        Err(libc::EPERM) => denied += 1,
                        _ => other += 1,
                    }
                }
                println!("denied={denied} other={other}");
            }
            // exec-as CGROUP UID|- DIR|- ENV|- PROGRAM ARGV...: execve(PROGRAM, ARGV) exactly
            // (ARGV[0] included), from DIR, with no environment or the one ENV entry.
            ["exec-as", cgroup, uid, dir, env, program, argv @ ..] => {
                joined(cgroup)?;
                become_user(uid)?;
                if *dir != "-" && std::env::set_current_dir(dir).is_err() {
                    eprintln!("cannot enter {dir}");
                    return Err(ExitCode::from(2));
                }
                let errno = exec_exact(program, argv, (*env != "-").then_some(*env));
                eprintln!("EXEC_ERRNO={errno}");
                return Err(ExitCode::from(126));
            }
            // exec-rooted CGROUP UID|- PLACE PROGRAM ARGS...: see exec_own_root.
            ["exec-rooted", cgroup, uid, place, program, args @ ..] => {
                joined(cgroup)?;
                become_user(uid)?;
                let errno = exec_own_root(place, program, args);
                eprintln!("EXEC_ERRNO={errno}");
                return Err(ExitCode::from(126));
            }
            // script-swap CGROUP UID|- LINK SCRIPT OTHER [ENV]: see script_swap.
            ["script-swap", cgroup, uid, link, script, other, env @ ..] => {
                joined(cgroup)?;
                become_user(uid)?;
                println!("{}", script_swap(link, script, other, env.first().copied()));
            }
            // exec-hostile CGROUP PROGRAM KIND: an exec with a hostile argument vector.
            ["exec-hostile", cgroup, program, kind] => {
                joined(cgroup)?;
                let errno = exec_hostile(program, kind);
                eprintln!("EXEC_ERRNO={errno}");
                return Err(ExitCode::from(126));
            }
            // argv-shift CGROUP PROGRAM ARGV0: the kernel copies `x target ARGV0 target one`,
            // the caller's vector reads `ARGV0 target one` by the time the exec is judged.
            ["argv-shift", cgroup, program, argv0] => {
                joined(cgroup)?;
                println!("{}", argv_shift(program, argv0));
            }
            ["argv-swap", cgroup, program] => {
                joined(cgroup)?;
                println!("{}", argv_swap(program));
            }
            // env-attack CGROUP UID|- KIND PROGRAM ARGV...: see env_attack.
            ["env-attack", cgroup, uid, kind, program, argv @ ..] => {
                joined(cgroup)?;
                become_user(uid)?;
                let errno = env_attack(kind, program, argv);
                eprintln!("EXEC_ERRNO={errno}");
                return Err(ExitCode::from(126));
            }
            ["env-swap", cgroup, program] => {
                joined(cgroup)?;
                println!("{}", env_swap(program));
            }
            ["hold", socket, count, seconds] => {
                let count = count.parse().map_err(|_| ExitCode::from(2))?;
                let seconds = seconds.parse().map_err(|_| ExitCode::from(2))?;
                hold(socket, count, seconds);
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

/// Drops from root to `uid` (its own group, no others); `-` stays root.
fn become_user(uid: &str) -> Result<(), ExitCode> {
    if uid == "-" {
        return Ok(());
    }
    let uid: u32 = uid.parse().map_err(|_| ExitCode::from(2))?;
    // SAFETY: plain credential calls on this process before an exec.
    let dropped = unsafe {
        libc::setgroups(0, std::ptr::null()) == 0
            && libc::setgid(uid) == 0
            && libc::setuid(uid) == 0
    };
    if !dropped {
        eprintln!("cannot become uid {uid}");
        return Err(ExitCode::from(2));
    }
    Ok(())
}

/// The ELF interpreter the programs here name.
const LOADER: &str = "/lib64/ld-linux-x86-64.so.2";

/// Execs `program args` where the caller chose the loader the kernel starts for it: `private`
/// or `user` (a mount namespace of its own, as root or as root of a user namespace of its own,
/// with a copy of the loader bound over the host's), `threaded` (from a process with a second
/// thread, which shares its root and could move it mid-exec), `fd-root` (under a bind of `/`
/// made in another mount namespace, see enter_foreign_bind_of_root), `seccomp-listener` (under
/// a filter a listener answers), or `chroot:DIR` (DIR filled with copies of
/// the loader and of the libraries this helper maps, the program opened first and run by its
/// descriptor from under DIR). Returns the errno of the exec, or SETUP_ERRNO_BASE + the errno of
/// a step before it.
fn exec_own_root(place: &str, program: &str, args: &[&str]) -> i32 {
    let setup = |error: std::io::Error| SETUP_ERRNO_BASE + error.raw_os_error().unwrap_or(-1);
    if place == "fd-root" {
        return match enter_foreign_bind_of_root() {
            Ok(()) => exec(program, args),
            Err(errno) => SETUP_ERRNO_BASE + errno,
        };
    }
    if place == "seccomp-listener" {
        return match listen_to_own_system_calls() {
            Ok(_listener) => exec(program, args),
            Err(errno) => SETUP_ERRNO_BASE + errno,
        };
    }
    if place == "threaded" {
        // A thread shares the root (and could chroot while the kernel opens the loader).
        std::thread::spawn(|| std::thread::sleep(std::time::Duration::from_secs(60)));
        return exec(program, args);
    }
    if let Some(dir) = place.strip_prefix("chroot:") {
        if let Err(error) = build_jail(Path::new(dir)) {
            return setup(error);
        }
        let fd = match open_raw(program, libc::O_PATH) {
            Ok(fd) => fd,
            Err(errno) => return SETUP_ERRNO_BASE + errno,
        };
        if let Err(error) =
            std::os::unix::fs::chroot(dir).and_then(|()| std::env::set_current_dir("/"))
        {
            return setup(error);
        }
        return exec_fd(fd, program, args);
    }
    let copy = std::env::temp_dir().join(format!("gk-loader-{}", std::process::id()));
    if let Err(error) = std::fs::copy(LOADER, &copy) {
        eprintln!("copy {LOADER} to {}: {error}", copy.display());
        return setup(error);
    }
    // A root process that became a user is not dumpable: its /proc/self files, uid_map
    // among them, stay root's. (An exec would reset that; so does this.)
    // SAFETY: prctl on this process.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1) };
    if let Err(errno) = enter_namespace(place) {
        eprintln!("enter a namespace ({place}): errno {errno}");
        return errno;
    }
    let copy = copy.display().to_string();
    if let Err(errno) = mount(&copy, LOADER, None, libc::MS_BIND, None) {
        eprintln!("bind {copy} over {LOADER}: errno {errno}");
        return SETUP_ERRNO_BASE + errno;
    }
    exec(program, args)
}

/// Takes as root a bind of `/` made in another mount namespace, staying in the host's: a child
/// in a mount namespace of its own binds `/` at a directory of its own, and this process goes
/// there through the child's /proc/PID/root and chroots. The root's dentry is the host's; its
/// mount is the child namespace's. As a user, this process first enters a user namespace of its
/// own (keeping the host's mount namespace) so that it may chroot.
fn enter_foreign_bind_of_root() -> Result<(), i32> {
    let io = |error: std::io::Error| error.raw_os_error().unwrap_or(-1);
    // SAFETY: plain calls on this single-threaded process.
    unsafe {
        if libc::geteuid() != 0 {
            let (uid, gid) = (libc::getuid(), libc::getgid());
            libc::prctl(libc::PR_SET_DUMPABLE, 1);
            errno_of(libc::unshare(libc::CLONE_NEWUSER) as libc::c_long)?;
            std::fs::write("/proc/self/setgroups", "deny").map_err(io)?;
            std::fs::write("/proc/self/uid_map", format!("0 {uid} 1")).map_err(io)?;
            std::fs::write("/proc/self/gid_map", format!("0 {gid} 1")).map_err(io)?;
        }
    }
    let bind = std::env::temp_dir().join(format!("gk-fd-root-{}", std::process::id()));
    std::fs::create_dir_all(&bind).map_err(io)?;
    let bind_text = bind.display().to_string();
    let mut ready = [0i32; 2];
    // SAFETY: pipe, then fork in a single-threaded process; the child only makes syscalls.
    let child = unsafe {
        errno_of(libc::pipe(ready.as_mut_ptr()) as libc::c_long)?;
        libc::fork()
    };
    if child == 0 {
        // Its namespace must outlive the exec (a dying namespace takes the mounts below the
        // bind with it): it ends with its parent, whatever that runs by then.
        // SAFETY: prctl on this process.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
        let made = enter_namespace("private")
            .and_then(|()| mount("/", &bind_text, None, libc::MS_BIND | libc::MS_REC, None));
        // SAFETY: tells the parent, then waits for its end.
        unsafe {
            libc::write(ready[1], [u8::from(made.is_ok())].as_ptr().cast(), 1);
            libc::sleep(60);
            libc::_exit(0);
        }
    }
    let mut made = [0u8; 1];
    // SAFETY: reads one byte the child writes.
    unsafe { libc::read(ready[0], made.as_mut_ptr().cast(), 1) };
    let entered = if made[0] == 1 {
        let there = format!("/proc/{child}/root{bind_text}");
        std::env::set_current_dir(&there)
            .and_then(|()| std::os::unix::fs::chroot("."))
            .and_then(|()| std::env::set_current_dir("/"))
            .map_err(io)
    } else {
        Err(libc::EPERM)
    };
    if entered.is_err() {
        // SAFETY: ends the child forked above.
        unsafe {
            libc::kill(child, libc::SIGKILL);
            libc::waitpid(child, std::ptr::null_mut(), 0);
        }
    }
    entered
}

/// Puts this process under a seccomp filter whose `getppid` calls a listener answers (user
/// notification), as a supervisor would; returns the listener's descriptor, which stays open
/// until the exec.
fn listen_to_own_system_calls() -> Result<i32, i32> {
    const SECCOMP_SET_MODE_FILTER: libc::c_ulong = 1;
    const SECCOMP_FILTER_FLAG_NEW_LISTENER: libc::c_ulong = 1 << 3;
    const SECCOMP_RET_USER_NOTIF: u32 = 0x7fc0_0000;
    const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
    // Load the system call number; getppid goes to the listener, the rest are allowed.
    let program = [
        libc::sock_filter {
            code: 0x20,
            jt: 0,
            jf: 0,
            k: 0,
        },
        libc::sock_filter {
            code: 0x15,
            jt: 0,
            jf: 1,
            k: libc::SYS_getppid as u32,
        },
        libc::sock_filter {
            code: 0x06,
            jt: 0,
            jf: 0,
            k: SECCOMP_RET_USER_NOTIF,
        },
        libc::sock_filter {
            code: 0x06,
            jt: 0,
            jf: 0,
            k: SECCOMP_RET_ALLOW,
        },
    ];
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: no_new_privs, then the filter from a valid program that outlives the call.
    unsafe {
        errno_of(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) as libc::c_long)?;
        let listener = libc::syscall(
            libc::SYS_seccomp,
            SECCOMP_SET_MODE_FILTER,
            SECCOMP_FILTER_FLAG_NEW_LISTENER,
            &fprog as *const libc::sock_fprog,
        );
        if listener < 0 {
            return Err(last_errno());
        }
        Ok(listener as i32)
    }
}

/// Waits up to `millis` for an event on the inotify descriptor `fd`; whether one came.
fn wait_inotify(fd: i32, millis: i32) -> bool {
    let mut poll = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    if unsafe { libc::poll(&mut poll, 1, millis) } != 1 {
        return false;
    }
    let mut buffer = [0u8; 4096];
    // SAFETY: reads into a local buffer of its size.
    unsafe { libc::read(fd, buffer.as_mut_ptr().cast(), buffer.len()) > 0 }
}

/// An inotify descriptor watching `path` for opens.
fn watch_opens(path: &str) -> Result<i32, i32> {
    let path = c_path(path)?;
    // SAFETY: plain syscalls with a valid path.
    unsafe {
        let fd = libc::inotify_init1(libc::IN_CLOEXEC);
        if fd < 0 || libc::inotify_add_watch(fd, path.as_ptr(), libc::IN_OPEN) < 0 {
            return Err(last_errno());
        }
        Ok(fd)
    }
}

/// Execs `link` (made a symlink to the protected `script`) in a child, and once the kernel's
/// exec has opened `script`, points `link` at `other`: the kernel's checks saw the script, the
/// interpreter opens `link` by path afterwards. Prints what the child printed and how it ended.
fn script_swap(link: &str, script: &str, other: &str, env: Option<&str>) -> String {
    let _ = std::fs::remove_file(link);
    if let Err(error) = std::os::unix::fs::symlink(script, link) {
        return format!("SETUP symlink: {error}");
    }
    let watch = match watch_opens(script) {
        Ok(fd) => fd,
        Err(errno) => return format!("SETUP watch: errno {errno}"),
    };
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    // Both on one CPU and the child at idle priority: the watcher's wake-up preempts the child
    // between the kernel's open and the interpreter's, so a loaded host does not lose the race.
    pin_to_one_cpu();
    // SAFETY: single-threaded; the child only execs or exits.
    let child = unsafe { libc::fork() };
    if child == 0 {
        let idle = libc::sched_param { sched_priority: 0 };
        // SAFETY: changes this process's own policy; SCHED_IDLE needs no privilege.
        unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &idle) };
        let errno = exec_exact(link, &[link], env);
        eprintln!("EXEC_ERRNO={errno}");
        // SAFETY: leaves the child.
        unsafe { libc::_exit(126) };
    }
    let seen = wait_inotify(watch, 5000);
    let aside = format!("{link}.new");
    let _ = std::fs::remove_file(&aside);
    let swapped = std::os::unix::fs::symlink(other, &aside)
        .and_then(|()| std::fs::rename(&aside, link))
        .is_ok();
    let mut status = 0;
    // SAFETY: waits for the child forked above.
    unsafe { libc::waitpid(child, &mut status, 0) };
    format!("SWAP seen={seen} swapped={swapped} status={status}")
}

/// Keeps this process (and what it forks) on the CPU it runs on now.
fn pin_to_one_cpu() {
    // SAFETY: sched_getcpu has no arguments; the set is zeroed before CPU_SET.
    unsafe {
        let Ok(cpu) = usize::try_from(libc::sched_getcpu()) else {
            return;
        };
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Copies into `dir`, at their own paths, the loader and every library this process maps.
fn build_jail(dir: &Path) -> std::io::Result<()> {
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let mut files: Vec<&str> = maps
        .lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .filter(|path| path.starts_with('/') && path.contains(".so"))
        .collect();
    files.push(LOADER);
    for file in files {
        let copy = dir.join(file.trim_start_matches('/'));
        if let Some(parent) = copy.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(file, &copy)?;
    }
    Ok(())
}

/// execveat(fd, "", [argv0, args...], AT_EMPTY_PATH) with an empty environment; returns the
/// errno.
fn exec_fd(fd: i32, argv0: &str, args: &[&str]) -> i32 {
    let mut argv: Vec<CString> = CString::new(argv0).into_iter().collect();
    argv.extend(args.iter().filter_map(|arg| CString::new(*arg).ok()));
    let mut pointers: Vec<*const libc::c_char> = argv.iter().map(|arg| arg.as_ptr()).collect();
    pointers.push(std::ptr::null());
    let envp = [std::ptr::null::<libc::c_char>()];
    // SAFETY: NUL-terminated argv and envp; AT_EMPTY_PATH runs the open file itself.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            fd,
            c"".as_ptr(),
            pointers.as_ptr(),
            envp.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    last_errno()
}

/// userfaultfd(2) ABI pieces (not in the libc crate).
mod uffd {
    pub const API: u64 = 0xaa;
    /// `_IOWR(0xaa, 0x3f, struct uffdio_api)`.
    pub const IOCTL_API: u64 = 0xc018_aa3f;
    /// `_IOWR(0xaa, 0x00, struct uffdio_register)`.
    pub const IOCTL_REGISTER: u64 = 0xc020_aa00;
    /// `_IOWR(0xaa, 0x03, struct uffdio_copy)`.
    pub const IOCTL_COPY: u64 = 0xc028_aa03;
    pub const REGISTER_MODE_MISSING: u64 = 1;
    pub const EVENT_PAGEFAULT: u8 = 0x12;
    pub const MSG_BYTES: usize = 32;
}

/// `argv-swap`: execs `program target two`, where the page holding "target" is not there yet.
/// The kernel copies the arguments last to first: "two" is copied, then copying "target" faults
/// into userfaultfd, whose handler here writes "one" over "two" before it supplies the page. A
/// check that reads the caller's memory after the copy then sees `program target one`.
/// Prints how the exec ended.
fn argv_swap(program: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
    static WORD: AtomicU32 = AtomicU32::new(0);
    let Ok(path) = CString::new(program) else {
        return "bad program".into();
    };
    WORD.store(u32::from_le_bytes(*b"two\0"), SeqCst);
    exec_with_faulting_page(
        b"target\0",
        move |page| {
            let argv = [
                path.as_ptr(),
                page as *const libc::c_char,
                WORD.as_ptr().cast::<libc::c_char>(),
                std::ptr::null(),
            ];
            // SAFETY: NUL-terminated strings and a null-terminated vector.
            unsafe { libc::execv(path.as_ptr(), argv.as_ptr()) };
        },
        || WORD.store(u32::from_le_bytes(*b"one\0"), SeqCst),
    )
}

/// `env-swap`: execs `program target one` with the environment `PATH=/bin X=agent`, where the
/// page holding "PATH=/bin" is not there yet. The kernel copies the environment before the
/// arguments, last to first: "X=agent" is copied, then copying "PATH=/bin" faults, and the
/// handler here writes "HOME=/" over "X=agent" before it supplies the page. A check that reads
/// the caller's memory after the copy then sees approved names alone. Prints how the exec ended.
fn env_swap(program: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
    static ENTRY: AtomicU64 = AtomicU64::new(0);
    let Ok(path) = CString::new(program) else {
        return "bad program".into();
    };
    ENTRY.store(u64::from_le_bytes(*b"X=agent\0"), SeqCst);
    exec_with_faulting_page(
        b"PATH=/bin\0",
        move |page| {
            let argv = [
                path.as_ptr(),
                c"target".as_ptr(),
                c"one".as_ptr(),
                std::ptr::null(),
            ];
            let envp = [
                page as *const libc::c_char,
                ENTRY.as_ptr().cast::<libc::c_char>(),
                std::ptr::null(),
            ];
            // SAFETY: NUL-terminated strings and null-terminated vectors.
            unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
        },
        || ENTRY.store(u64::from_le_bytes(*b"HOME=/\0\0"), SeqCst),
    )
}

/// In a child: maps a page that is not there yet and calls `exec` with its address, which
/// execs with a vector pointing into it. When the kernel's copy of the strings faults on the
/// page, the userfaultfd handler calls `on_fault`, then supplies the page holding `content`.
/// Returns how the exec ended: `SIGNAL=N`, `DENIED` (EPERM) or `EXIT=N` with what it printed.
fn exec_with_faulting_page(
    content: &'static [u8],
    exec: impl FnOnce(u64),
    on_fault: impl FnOnce() + Send + 'static,
) -> String {
    let mut pipe = [0i32; 2];
    // SAFETY: pipe fills two descriptors; fork in a single-threaded process.
    let pid = unsafe {
        if libc::pipe(pipe.as_mut_ptr()) != 0 {
            return "pipe failed".into();
        }
        libc::fork()
    };
    if pid == 0 {
        // SAFETY: raw userfaultfd setup on memory this child maps; the handler thread only
        // touches the fault page through the kernel, and what `on_fault` does.
        unsafe {
            libc::dup2(pipe[1], 1);
            let fd = libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC) as i32;
            let mut api = [uffd::API, 0, 0];
            if fd < 0 || libc::ioctl(fd, uffd::IOCTL_API as _, api.as_mut_ptr()) != 0 {
                println!("SETUP uffd errno {}", last_errno());
                libc::_exit(3);
            }
            let page = libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            let mut register = [page as u64, 4096, uffd::REGISTER_MODE_MISSING, 0];
            if page == libc::MAP_FAILED
                || libc::ioctl(fd, uffd::IOCTL_REGISTER as _, register.as_mut_ptr()) != 0
            {
                println!("SETUP register errno {}", last_errno());
                libc::_exit(3);
            }
            let page = page as u64;
            std::thread::spawn(move || {
                let mut message = [0u8; uffd::MSG_BYTES];
                if libc::read(fd, message.as_mut_ptr().cast(), message.len()) as usize
                    != message.len()
                    || message[0] != uffd::EVENT_PAGEFAULT
                {
                    return;
                }
                on_fault();
                let mut source = [0u8; 4096];
                source[..content.len()].copy_from_slice(content);
                let mut copy = [page, source.as_ptr() as u64, 4096, 0, 0];
                libc::ioctl(fd, uffd::IOCTL_COPY as _, copy.as_mut_ptr());
            });
            // A file system context of its own, as a single-threaded process has: an exec on
            // a grant from one shared with the handler thread is refused before any of this.
            if libc::unshare(libc::CLONE_FS) != 0 {
                println!("SETUP unshare errno {}", last_errno());
                libc::_exit(3);
            }
            exec(page);
            libc::_exit(100 + last_errno());
        }
    }
    let mut output = String::new();
    let mut status = 0;
    // SAFETY: the read end is ours; the write end is closed here first.
    unsafe {
        use std::{io::Read as _, os::fd::FromRawFd as _};
        libc::close(pipe[1]);
        let _ = std::fs::File::from_raw_fd(pipe[0]).read_to_string(&mut output);
        libc::waitpid(pid, &mut status, 0);
    }
    if libc::WIFSIGNALED(status) {
        format!("SIGNAL={}", libc::WTERMSIG(status))
    } else if libc::WEXITSTATUS(status) == 100 + libc::EPERM {
        "DENIED".into()
    } else {
        format!("EXIT={} {}", libc::WEXITSTATUS(status), output.trim())
    }
}

/// Errors of setting up a namespace, told apart from the errno of the attempt itself.
const SETUP_ERRNO_BASE: i32 = 1000;

const FSOPEN_CLOEXEC: u32 = 1;
const FSCONFIG_SET_FLAG: u32 = 0;
const FSCONFIG_SET_STRING: u32 = 1;
const FSCONFIG_CMD_CREATE: u32 = 6;
const FSCONFIG_CMD_RECONFIGURE: u32 = 7;
const FSMOUNT_CLOEXEC: u32 = 1;
const MOVE_MOUNT_F_EMPTY_PATH: u32 = 4;
const OPEN_TREE_CLONE: u32 = 1;
const AT_RECURSIVE: u32 = 0x8000;

/// mount(2) with optional strings.
fn mount(
    source: &str,
    target: &str,
    fstype: Option<&str>,
    flags: u64,
    data: Option<&str>,
) -> Result<(), i32> {
    let source = c_path(source)?;
    let target = c_path(target)?;
    let fstype = fstype.map(c_path).transpose()?;
    let data = data.map(c_path).transpose()?;
    // SAFETY: every pointer is a NUL-terminated string that outlives the call, or null.
    errno_of(unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ref().map_or(std::ptr::null(), |t| t.as_ptr()),
            flags,
            data.as_ref()
                .map_or(std::ptr::null(), |d| d.as_ptr().cast()),
        )
    } as libc::c_long)
}

fn umount(target: &str, flags: i32) -> Result<(), i32> {
    let target = c_path(target)?;
    // SAFETY: a NUL-terminated path that outlives the call.
    errno_of(unsafe { libc::umount2(target.as_ptr(), flags) } as libc::c_long)
}

/// A raw syscall returning a descriptor.
fn fd_of(result: libc::c_long) -> Result<i32, i32> {
    errno_of(result).map(|()| result as i32)
}

/// Attaches the detached mount `fd` at `target` (move_mount with an empty source path).
fn move_mount_fd(fd: i32, target: &str) -> Result<(), i32> {
    let empty = c_path("")?;
    let target = c_path(target)?;
    // SAFETY: strings outlive the call.
    errno_of(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            fd,
            empty.as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    })
}

/// fsconfig(2) with a key and an optional string value.
fn fsconfig(fd: i32, command: u32, key: Option<&str>, value: Option<&str>) -> Result<(), i32> {
    let key = key.map(c_path).transpose()?;
    let value = value.map(c_path).transpose()?;
    // SAFETY: strings outlive the call, or are null.
    errno_of(unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fd,
            command,
            key.as_ref().map_or(std::ptr::null(), |k| k.as_ptr()),
            value.as_ref().map_or(std::ptr::null(), |v| v.as_ptr()),
            0,
        )
    })
}

/// The new mount API: fsopen FSTYPE, its options (KEY=VALUE or FLAG), create, fsmount, attach.
fn fs_mount(fstype: &str, target: &str, options: &[&str]) -> Result<(), i32> {
    let name = c_path(fstype)?;
    // SAFETY: a NUL-terminated name that outlives the call.
    let fs = fd_of(unsafe { libc::syscall(libc::SYS_fsopen, name.as_ptr(), FSOPEN_CLOEXEC) })?;
    for option in options {
        match option.split_once('=') {
            Some((key, value)) => fsconfig(fs, FSCONFIG_SET_STRING, Some(key), Some(value))?,
            None => fsconfig(fs, FSCONFIG_SET_FLAG, Some(option), None)?,
        }
    }
    fsconfig(fs, FSCONFIG_CMD_CREATE, None, None)?;
    // SAFETY: plain syscall on a descriptor this process owns.
    let mnt = fd_of(unsafe { libc::syscall(libc::SYS_fsmount, fs, FSMOUNT_CLOEXEC, 0) })?;
    move_mount_fd(mnt, target)
}

/// Enters a new mount namespace the way `MODE` says: `private` as container runtimes and
/// `unshare -m` do (then / recursively private), `bare` (propagation left as it was: shared
/// mounts stay peers of the host's), `user` (with a user namespace mapping this uid to root).
fn enter_namespace(mode: &str) -> Result<(), i32> {
    let setup = |errno: i32| SETUP_ERRNO_BASE + errno;
    let (uid, gid) = (unsafe { libc::getuid() }, unsafe { libc::getgid() });
    let flags = match mode {
        "private" | "bare" => libc::CLONE_NEWNS,
        "user" => libc::CLONE_NEWUSER | libc::CLONE_NEWNS,
        _ => return Err(setup(libc::EINVAL)),
    };
    // SAFETY: unshare of this single-threaded process.
    errno_of(unsafe { libc::unshare(flags) } as libc::c_long).map_err(setup)?;
    if mode == "user" {
        let write = |file: &str, text: String| {
            std::fs::write(file, text).map_err(|e| setup(e.raw_os_error().unwrap_or(-1)))
        };
        write("/proc/self/setgroups", "deny".into())?;
        write("/proc/self/uid_map", format!("0 {uid} 1"))?;
        write("/proc/self/gid_map", format!("0 {gid} 1"))?;
    }
    if mode != "bare" {
        mount("none", "/", None, libc::MS_REC | libc::MS_PRIVATE, None).map_err(setup)?;
    }
    Ok(())
}

/// What a container runtime does in its private namespace: a tmpfs for the new root, a bind
/// mount into it, pivot_root, unmounting the old root (lazily, with everything under it) and a
/// bind mount. The guest's root is the initramfs, which pivot_root cannot leave, so the runtime
/// first moves into a recursive bind of it, as runtimes on a ramdisk do.
fn runtime(dir: &str) -> Result<(), i32> {
    let step = |name: &'static str| {
        move |errno: i32| {
            eprintln!("runtime: {name} failed: errno {errno}");
            errno
        }
    };
    let io = |e: std::io::Error| e.raw_os_error().unwrap_or(-1);
    mount("tmp", dir, Some("tmpfs"), 0, None).map_err(step("tmpfs"))?;
    for sub in ["host", "rootfs"] {
        std::fs::create_dir(format!("{dir}/{sub}")).map_err(io)?;
    }
    let rootfs = format!("{dir}/rootfs");
    mount("tmp", &rootfs, Some("tmpfs"), 0, None).map_err(step("root tmpfs"))?;
    for sub in ["old", "bin"] {
        std::fs::create_dir(format!("{rootfs}/{sub}")).map_err(io)?;
    }
    mount(
        "/usr/local/bin",
        &format!("{rootfs}/bin"),
        None,
        libc::MS_BIND,
        None,
    )
    .map_err(step("bind"))?;
    let host = format!("{dir}/host");
    mount("/", &host, None, libc::MS_BIND | libc::MS_REC, None).map_err(step("rbind /"))?;
    std::os::unix::fs::chroot(&host)
        .map_err(io)
        .map_err(step("chroot"))?;
    std::env::set_current_dir("/").map_err(io)?;
    let new = c_path(&rootfs)?;
    let old = c_path(&format!("{rootfs}/old"))?;
    // SAFETY: strings outlive the call.
    errno_of(unsafe { libc::syscall(libc::SYS_pivot_root, new.as_ptr(), old.as_ptr()) })
        .map_err(step("pivot_root"))?;
    std::env::set_current_dir("/").map_err(io)?;
    umount("/old", libc::MNT_DETACH).map_err(step("umount old root"))?;
    if !Path::new("/bin/gk-helper").exists() {
        eprintln!("runtime: the bind mount is not in the new root");
        return Err(libc::ENOENT);
    }
    umount("/bin", 0).map_err(step("umount bind"))
}

/// What a container runtime or terminal program does with pseudo-terminals: a devpts of its
/// own at `dir`, a pair from its ptmx, and in a new session the terminal taken as controlling
/// terminal, its settings and window size set.
fn pseudo_terminal(dir: &str) -> Result<(), i32> {
    const TIOCGPTN: libc::c_ulong = 0x8004_5430;
    const TIOCSPTLCK: libc::c_ulong = 0x4004_5431;
    mount(
        "devpts",
        dir,
        Some("devpts"),
        0,
        Some("newinstance,ptmxmode=0666"),
    )?;
    let master = open_raw(&format!("{dir}/ptmx"), libc::O_RDWR | libc::O_NOCTTY)?;
    let (mut number, mut unlock) = (0u32, 0i32);
    // SAFETY: each request gets an integer that outlives the call.
    unsafe {
        errno_of(libc::ioctl(master, TIOCSPTLCK, &raw mut unlock) as libc::c_long)?;
        errno_of(libc::ioctl(master, TIOCGPTN, &raw mut number) as libc::c_long)?;
    }
    let terminal = open_raw(&format!("{dir}/{number}"), libc::O_RDWR | libc::O_NOCTTY)?;
    // SAFETY: the child only makes system calls before it exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(last_errno());
    }
    if pid == 0 {
        // SAFETY: a new session of this child; buffers outlive the calls.
        unsafe {
            let mut settings: libc::termios = std::mem::zeroed();
            let size = libc::winsize {
                ws_row: 24,
                ws_col: 80,
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            let steps = [
                libc::setsid() as libc::c_long,
                libc::ioctl(terminal, libc::TIOCSCTTY, 0) as libc::c_long,
                libc::ioctl(terminal, libc::TCGETS, &raw mut settings) as libc::c_long,
                libc::ioctl(terminal, libc::TCSETS, &raw const settings) as libc::c_long,
                libc::ioctl(terminal, libc::TIOCSWINSZ, &raw const size) as libc::c_long,
            ];
            let failed = steps.iter().position(|result| *result < 0);
            libc::_exit(failed.map_or(0, |step| 10 + step as i32));
        }
    }
    let mut status = 0;
    // SAFETY: our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    match libc::WEXITSTATUS(status) {
        0 => Ok(()),
        step => Err(1000 + step),
    }
}

/// Mount attempts (see `tamper`).
fn mount_op(op: &str, args: &[&str]) -> Result<(), i32> {
    let text = |index: usize| args.get(index).copied().ok_or(libc::EINVAL);
    match op {
        // mount FSTYPE SOURCE TARGET [DATA]
        "mount" => mount(text(1)?, text(2)?, Some(text(0)?), 0, args.get(3).copied()),
        "bind" => mount(text(0)?, text(1)?, None, libc::MS_BIND, None),
        // bind-then SOURCE TARGET OP [ARGS...]: OP once SOURCE is bound at TARGET.
        "bind-then" => {
            mount(text(0)?, text(1)?, None, libc::MS_BIND, None)?;
            tamper(text(2)?, args.get(3..).unwrap_or_default())
        }
        // tmpfs-binds-then DIR N OP [ARGS...]: a tmpfs at DIR bound again at N directories of
        // its own, then OP.
        "tmpfs-binds-then" => {
            mount("gk", text(0)?, Some("tmpfs"), 0, None)?;
            let count: u32 = text(1)?.parse().map_err(|_| libc::EINVAL)?;
            for index in 0..count {
                let at = format!("{}/{index}", text(0)?);
                std::fs::create_dir(&at).map_err(|error| error.raw_os_error().unwrap_or(-1))?;
                mount(text(0)?, &at, None, libc::MS_BIND, None)?;
            }
            tamper(text(2)?, args.get(3..).unwrap_or_default())
        }
        "move" => mount(text(0)?, text(1)?, None, libc::MS_MOVE, None),
        // mount-past DIR: a tmpfs on DIR, then another named by a descriptor of DIR opened
        // before (through /proc/self/fd), which the kernel attaches on top of the first.
        "mount-past" => {
            use std::os::fd::AsRawFd as _;
            let setup = |errno: i32| SETUP_ERRNO_BASE + errno;
            let dir = std::fs::File::open(text(0)?)
                .map_err(|error| setup(error.raw_os_error().unwrap_or(0)))?;
            mount("gk", text(0)?, Some("tmpfs"), 0, None).map_err(setup)?;
            let past = format!("/proc/self/fd/{}", dir.as_raw_fd());
            mount("gk", &past, Some("tmpfs"), 0, None)
        }
        "umount-lazy" => umount(text(0)?, libc::MNT_DETACH),
        "pivot-root" => {
            let new = c_path(text(0)?)?;
            let old = c_path(text(1)?)?;
            // SAFETY: strings outlive the call.
            errno_of(unsafe { libc::syscall(libc::SYS_pivot_root, new.as_ptr(), old.as_ptr()) })
        }
        // fsmount FSTYPE TARGET [OPTION...]
        "fsmount" => fs_mount(text(0)?, text(1)?, args.get(2..).unwrap_or_default()),
        // open-tree SOURCE TARGET: a detached recursive clone, attached at TARGET.
        "open-tree" => {
            let source = c_path(text(0)?)?;
            // SAFETY: a string that outlives the call.
            let tree = fd_of(unsafe {
                libc::syscall(
                    libc::SYS_open_tree,
                    libc::AT_FDCWD,
                    source.as_ptr(),
                    OPEN_TREE_CLONE | AT_RECURSIVE | libc::O_CLOEXEC as u32,
                )
            })?;
            move_mount_fd(tree, text(1)?)
        }
        // fspick-ro PATH: reconfigure the superblock at PATH read-only through the new API.
        "fspick-ro" => {
            let path = c_path(text(0)?)?;
            // SAFETY: a string that outlives the call.
            let fs = fd_of(unsafe {
                libc::syscall(libc::SYS_fspick, libc::AT_FDCWD, path.as_ptr(), 1)
            })?;
            fsconfig(fs, FSCONFIG_SET_FLAG, Some("ro"), None)?;
            fsconfig(fs, FSCONFIG_CMD_RECONFIGURE, None, None)
        }
        // umount-then PATH OP [ARGS...]: OP once the mount at PATH is unmounted (in a namespace
        // of the caller's own, its copy only).
        "umount-then" => {
            umount(text(0)?, 0).map_err(|errno| SETUP_ERRNO_BASE + errno)?;
            tamper(text(1)?, args.get(2..).unwrap_or_default())
        }
        // in-ns MODE OP [ARGS...]: OP in a new mount namespace (see enter_namespace).
        "in-ns" => {
            enter_namespace(text(0)?)?;
            tamper(text(1)?, args.get(2..).unwrap_or_default())
        }
        "runtime" => runtime(text(0)?),
        // pty DIR: see pseudo_terminal.
        "pty" => pseudo_terminal(text(0)?),
        // overlay-then LOWER UPPER WORK MERGED OP [ARGS...]: an overlay at MERGED, then OP
        // (in the same mount namespace).
        "overlay-then" => {
            let options = format!(
                "lowerdir={},upperdir={},workdir={}",
                text(0)?,
                text(1)?,
                text(2)?
            );
            mount("overlay", text(3)?, Some("overlay"), 0, Some(&options))?;
            tamper(text(4)?, args.get(5..).unwrap_or_default())
        }
        // mount-setattr PATH ro|rw: the mount at PATH made read-only or writable again.
        "mount-setattr" => {
            const MOUNT_ATTR_RDONLY: u64 = 1;
            // `struct mount_attr`: attr_set, attr_clr, propagation, userns_fd.
            let mut attr = [0u64; 4];
            match text(1)? {
                "ro" => attr[0] = MOUNT_ATTR_RDONLY,
                "rw" => attr[1] = MOUNT_ATTR_RDONLY,
                _ => return Err(libc::EINVAL),
            }
            let path = c_path(text(0)?)?;
            // SAFETY: a string and a struct that outlive the call.
            errno_of(unsafe {
                libc::syscall(
                    libc::SYS_mount_setattr,
                    libc::AT_FDCWD,
                    path.as_ptr(),
                    0,
                    attr.as_mut_ptr(),
                    size_of_val(&attr),
                )
            })
        }
        // mount-remount DIR: a fresh tmpfs at DIR, then its superblock remounted read-only.
        "mount-remount" => {
            mount("tmp", text(0)?, Some("tmpfs"), 0, None)?;
            mount(
                "none",
                text(0)?,
                None,
                libc::MS_REMOUNT | libc::MS_RDONLY,
                None,
            )
        }
        _ => Err(libc::EINVAL),
    }
}

/// Opens `path` for reading and writing, prints READY, waits for a line on stdin, then reads
/// (`read`: Ok when the ELF magic came back) or writes (`write`) through that open file.
fn hold_open(path: &str, how: &str) -> Result<(), i32> {
    use std::io::{BufRead as _, Write as _};
    use std::os::unix::fs::FileExt as _;
    let io = |error: std::io::Error| error.raw_os_error().unwrap_or(-1);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io)?;
    println!("READY");
    std::io::stdout().flush().map_err(io)?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).map_err(io)?;
    match how {
        "read" => {
            let mut bytes = [0u8; 4];
            file.read_exact_at(&mut bytes, 0).map_err(io)?;
            if &bytes == b"\x7fELF" {
                Ok(())
            } else {
                Err(1003)
            }
        }
        _ => {
            let size = file.metadata().map_err(io)?.len();
            file.write_all_at(b"#", size).map_err(io)
        }
    }
}

/// pidfd_getfd: a copy of another process's open file, taken without opening anything. Ok when
/// the ELF magic reads through it.
fn getfd(pid: i32, fd: i32) -> Result<(), i32> {
    // SAFETY (all below): plain syscalls on numbers and a buffer that lives for the call.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    errno_of(pidfd)?;
    let copy = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd, fd, 0) };
    errno_of(copy)?;
    let mut bytes = [0u8; 4];
    errno_of(unsafe { libc::pread(copy as i32, bytes.as_mut_ptr().cast(), 4, 0) } as libc::c_long)?;
    if &bytes == b"\x7fELF" {
        Ok(())
    } else {
        Err(1003)
    }
}

/// `threads` simultaneous opens of `path`: Ok when exactly one got through, else errno
/// 1000 + how many did.
fn race_read(threads: usize, path: &str) -> Result<(), i32> {
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (barrier, path) = (barrier.clone(), path.to_owned());
            std::thread::spawn(move || {
                barrier.wait();
                std::fs::File::open(path).is_ok()
            })
        })
        .collect();
    let passed = handles
        .into_iter()
        .filter_map(|handle| handle.join().ok())
        .filter(|opened| *opened)
        .count();
    match passed {
        1 => Ok(()),
        passed => Err(1000 + passed as i32),
    }
}

/// Opens `path` with an io_uring OPENAT (done by the kernel, maybe in a worker thread), then
/// reads it: Ok when the ELF magic came back.
fn uring_read(path: &str) -> Result<(), i32> {
    const IORING_OP_OPENAT: u8 = 18;
    const IORING_ENTER_GETEVENTS: u32 = 1;
    const IORING_OFF_CQ_RING: i64 = 0x800_0000;
    const IORING_OFF_SQES: i64 = 0x1000_0000;
    let path = c_path(path)?;
    let mut params = UringParams::default();
    // SAFETY (all below): the ring's memory is mapped at the sizes the kernel reported, and
    // every offset into it comes from the kernel's own params.
    unsafe {
        let fd = libc::syscall(libc::SYS_io_uring_setup, 1, &mut params);
        errno_of(fd)?;
        let fd = fd as i32;
        let map = |size: usize, offset: i64| -> Result<*mut u8, i32> {
            let ptr = libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd,
                offset,
            );
            if ptr == libc::MAP_FAILED {
                Err(last_errno())
            } else {
                Ok(ptr.cast())
            }
        };
        let sq = map(
            params.sq_off.array_or_flags as usize + params.sq_entries as usize * 4,
            0,
        )?;
        let cq = map(
            params.cq_off.dropped_or_cqes as usize + params.cq_entries as usize * 16,
            IORING_OFF_CQ_RING,
        )?;
        let sqes = map(params.sq_entries as usize * 64, IORING_OFF_SQES)?;
        let sqe = sqes;
        std::ptr::write_bytes(sqe, 0, 64);
        *sqe = IORING_OP_OPENAT;
        *(sqe.add(4) as *mut i32) = libc::AT_FDCWD;
        *(sqe.add(16) as *mut u64) = path.as_ptr() as u64;
        *(sqe.add(28) as *mut u32) = libc::O_RDONLY as u32;
        let tail = sq.add(params.sq_off.tail as usize) as *mut u32;
        let mask = *(sq.add(params.sq_off.ring_mask as usize) as *const u32);
        let array = sq.add(params.sq_off.array_or_flags as usize) as *mut u32;
        let index = *tail & mask;
        *array.add(index as usize) = 0;
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        *tail = tail.read_volatile() + 1;
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        errno_of(libc::syscall(
            libc::SYS_io_uring_enter,
            fd,
            1,
            1,
            IORING_ENTER_GETEVENTS,
            std::ptr::null::<u8>(),
            0,
        ))?;
        let head = (cq.add(params.cq_off.head as usize) as *const u32).read_volatile();
        let cq_mask = *(cq.add(params.cq_off.ring_mask as usize) as *const u32);
        let cqe = cq.add(params.cq_off.dropped_or_cqes as usize + (head & cq_mask) as usize * 16);
        let res = (cqe.add(8) as *const i32).read_volatile();
        if res < 0 {
            return Err(-res);
        }
        let mut bytes = [0u8; 4];
        errno_of(libc::pread(res, bytes.as_mut_ptr().cast(), 4, 0) as libc::c_long)?;
        if &bytes == b"\x7fELF" {
            Ok(())
        } else {
            Err(1003)
        }
    }
}

/// Reads a page of RAM through /proc/kcore (the kernel's direct map: page cache, every
/// process's memory). Ok when a page of a RAM segment came back.
fn kcore() -> Result<(), i32> {
    use std::os::unix::fs::FileExt as _;
    let io = |error: std::io::Error| error.raw_os_error().unwrap_or(-1);
    let file = std::fs::File::open("/proc/kcore").map_err(io)?;
    let mut header = [0u8; 64];
    file.read_exact_at(&mut header, 0).map_err(io)?;
    let field = |bytes: &[u8], at: usize, size: usize| -> u64 {
        bytes[at..at + size]
            .iter()
            .rev()
            .fold(0, |value, byte| (value << 8) | u64::from(*byte))
    };
    let (phoff, phentsize, phnum) = (
        field(&header, 32, 8),
        field(&header, 54, 2),
        field(&header, 56, 2),
    );
    let mut last_error = 1004;
    for index in 0..phnum {
        let mut entry = [0u8; 56];
        file.read_exact_at(&mut entry, phoff + index * phentsize)
            .map_err(io)?;
        // PT_LOAD segments; the biggest ones are RAM.
        if field(&entry, 0, 4) != 1 || field(&entry, 32, 8) < (64 << 20) {
            continue;
        }
        let mut page = [0u8; 4096];
        match file.read_exact_at(&mut page, field(&entry, 8, 8) + (16 << 20)) {
            Ok(()) => return Ok(()),
            Err(error) => last_error = io(error),
        }
    }
    Err(last_error)
}

/// The io_uring ABI pieces an OPENAT needs (include/uapi/linux/io_uring.h).
#[repr(C)]
#[derive(Default)]
struct RingOffsets {
    head: u32,
    tail: u32,
    ring_mask: u32,
    ring_entries: u32,
    flags_or_overflow: u32,
    dropped_or_cqes: u32,
    array_or_flags: u32,
    resv1: u32,
    user_addr: u64,
}

#[repr(C)]
#[derive(Default)]
struct UringParams {
    sq_entries: u32,
    cq_entries: u32,
    flags: u32,
    sq_thread_cpu: u32,
    sq_thread_idle: u32,
    features: u32,
    wq_fd: u32,
    resv: [u32; 3],
    sq_off: RingOffsets,
    cq_off: RingOffsets,
}

/// execve(program, argv) with argv exactly as given and no environment (or just `env`).
fn exec_exact(program: &str, argv: &[&str], env: Option<&str>) -> i32 {
    let Ok(path) = CString::new(program) else {
        return libc::EINVAL;
    };
    let args: Vec<CString> = argv
        .iter()
        .filter_map(|arg| CString::new(*arg).ok())
        .collect();
    let mut pointers: Vec<*const libc::c_char> = args.iter().map(|arg| arg.as_ptr()).collect();
    pointers.push(std::ptr::null());
    let env = env.and_then(|env| CString::new(env).ok());
    let mut envp: Vec<*const libc::c_char> = env.iter().map(|env| env.as_ptr()).collect();
    envp.push(std::ptr::null());
    // SAFETY: NUL-terminated strings, null-terminated vectors.
    unsafe { libc::execve(path.as_ptr(), pointers.as_ptr(), envp.as_ptr()) };
    last_errno()
}

/// Execs `program` with a hostile argument vector of `kind`; returns the errno on failure.
fn exec_hostile(program: &str, kind: &str) -> i32 {
    let Ok(path) = CString::new(program) else {
        return libc::EINVAL;
    };
    let envp = [std::ptr::null::<libc::c_char>()];
    let strings: Vec<Vec<u8>> = match kind {
        "null-argv" => {
            // SAFETY: a NULL argv is what this attack is; the kernel accepts it.
            unsafe { libc::execve(path.as_ptr(), std::ptr::null(), envp.as_ptr()) };
            return last_errno();
        }
        "empty-argv" => vec![],
        "many" => std::iter::repeat_n(b"x".to_vec(), 100_000).collect(),
        "long" => vec![
            program.as_bytes().to_vec(),
            b"target".to_vec(),
            vec![b'a'; 131_000],
        ],
        "nonutf8" => vec![
            program.as_bytes().to_vec(),
            b"target".to_vec(),
            vec![0xff, 0xfe, b'o', b'n', b'e'],
            vec![0xc3],
            b"\x1b[2K\xe2\x80\xae".to_vec(),
        ],
        // Exactly the bytes the kernel reads, then one more.
        "exact" | "exact-plus-one" => {
            let mut args = vec![program.as_bytes().to_vec(), b"target".to_vec()];
            let used = program.len() + 1 + 7;
            let fill = 4096 - used - 1 + usize::from(kind == "exact-plus-one");
            args.push(vec![b'e'; fill]);
            args
        }
        "sixty-five" => {
            let mut args = vec![program.as_bytes().to_vec(), b"target".to_vec()];
            args.extend(std::iter::repeat_n(b"y".to_vec(), 63));
            args
        }
        // 32-bit int 0x80 execve of `program target one`.
        "int80" | "int80-two" => {
            let word: &[u8] = if kind == "int80" { b"one" } else { b"two" };
            return int80_exec(program, &[b"target", word]);
        }
        // A 64-bit execve whose rax has bits above 32 set (the kernel uses only the low half).
        "high-rax" => {
            let target = CString::new("target").unwrap();
            let one = CString::new("one").unwrap();
            let argv = [
                path.as_ptr(),
                target.as_ptr(),
                one.as_ptr(),
                std::ptr::null(),
            ];
            let ret: i64;
            // SAFETY: execve's arguments are live; on success this never returns.
            unsafe {
                core::arch::asm!("syscall",
                    inlateout("rax") (1i64 << 32) | 59 => ret,
                    in("rdi") path.as_ptr(), in("rsi") argv.as_ptr(), in("rdx") envp.as_ptr(),
                    lateout("rcx") _, lateout("r11") _);
            }
            return if ret < 0 { -ret as i32 } else { 0 };
        }
        _ => return libc::EINVAL,
    };
    let args: Vec<CString> = strings
        .into_iter()
        .map(|s| CString::new(s).unwrap())
        .collect();
    let mut pointers: Vec<*const libc::c_char> = args.iter().map(|arg| arg.as_ptr()).collect();
    pointers.push(std::ptr::null());
    // SAFETY: NUL-terminated strings, null-terminated vectors.
    unsafe { libc::execve(path.as_ptr(), pointers.as_ptr(), envp.as_ptr()) };
    last_errno()
}

/// The 32-bit system call execve (int 0x80, number 11) of `program` with `argv[0] = program`.
fn int80_exec(program: &str, rest: &[&[u8]]) -> i32 {
    // SAFETY: memory below 4 GiB that this process maps and fills, then execs from.
    unsafe {
        let base = libc::mmap(
            std::ptr::null_mut(),
            1 << 16,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_32BIT,
            -1,
            0,
        );
        if base == libc::MAP_FAILED {
            return last_errno();
        }
        let base = base as *mut u8;
        let mut at = 1024usize;
        let mut put = |bytes: &[u8]| -> u32 {
            let start = base.add(at);
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), start, bytes.len());
            *start.add(bytes.len()) = 0;
            at += bytes.len() + 1;
            start as u64 as u32
        };
        let path = put(program.as_bytes());
        let mut vector = vec![path];
        for arg in rest {
            vector.push(put(arg));
        }
        vector.push(0);
        let argv = base as *mut u32;
        for (index, pointer) in vector.iter().enumerate() {
            *argv.add(index) = *pointer;
        }
        let envp = base.add(512) as *mut u32;
        *envp = 0;
        let ret: i64;
        core::arch::asm!(
            "xchg {path}, rbx",
            "int 0x80",
            "xchg {path}, rbx",
            path = inout(reg) path as u64 => _,
            inlateout("rax") 11i64 => ret,
            in("rcx") argv as u64,
            in("rdx") envp as u64,
        );
        let ret = ret as i32;
        if ret < 0 { -ret } else { 0 }
    }
}

/// `argv-shift`: execs `program` with the vector `[page, "target", argv0, "target", "one"]`,
/// where `page` (`argv[0]`) is not there yet. The kernel copies the strings last to first; copying
/// `argv[0]` faults, and while it waits the vector is rewritten in place to
/// `[argv0, "target", "one", NULL]`, then the page is supplied holding "x". The kernel's copy has
/// five arguments, the vector read afterwards three.
fn argv_shift(program: &str, argv0: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
    static VECTOR: [AtomicU64; 6] = [const { AtomicU64::new(0) }; 6];
    let (Ok(path), Ok(argv0)) = (CString::new(program), CString::new(argv0)) else {
        return "bad program".into();
    };
    let target = c"target";
    let one = c"one";
    let (argv0_at, target_at, one_at) = (
        argv0.as_ptr() as u64,
        target.as_ptr() as u64,
        one.as_ptr() as u64,
    );
    exec_with_faulting_page(
        b"x\0",
        move |page| {
            for (slot, value) in VECTOR
                .iter()
                .zip([page, target_at, argv0_at, target_at, one_at, 0])
            {
                slot.store(value, SeqCst);
            }
            // SAFETY: the vector points at NUL-terminated strings that outlive the exec, and
            // ends in a null pointer.
            unsafe { libc::execv(path.as_ptr(), VECTOR.as_ptr().cast()) };
            drop(argv0);
        },
        move || {
            for (slot, value) in VECTOR.iter().zip([argv0_at, target_at, one_at, 0]) {
                slot.store(value, SeqCst);
            }
        },
    )
}

/// Sends one line on a daemon socket and prints the reply line (`REPLY=...`).
fn call_line(mut stream: std::os::unix::net::UnixStream, line: &str) -> Result<(), i32> {
    use std::io::{BufRead as _, Write as _};
    let io = |error: std::io::Error| error.raw_os_error().unwrap_or(-1);
    stream
        .write_all(format!("{line}\n").as_bytes())
        .map_err(io)?;
    let mut reply = String::new();
    std::io::BufReader::new(&stream)
        .read_line(&mut reply)
        .map_err(io)?;
    println!("REPLY={}", reply.trim());
    Ok(())
}

/// Execs PROGRAM with ARGV (`argv[0]` included) and an environment of `kind`:
/// - `cloexec-then:OTHER`: execveat of PROGRAM by an O_CLOEXEC descriptor (O_PATH; a script then
///   fails with ENOENT after its grant was used), prints FIRST_ERRNO, then execs `OTHER target
///   second` with an unapproved variable (GK_AGENT=1) from the same process.
/// - `vector:SPEC`: a hostile environment vector (see the match below).
/// - `long-approved`: 18 approved names whose values are 130000 bytes each, the stack limit
///   raised so that the kernel takes them.
fn env_attack(kind: &str, program: &str, argv: &[&str]) -> i32 {
    let cstrings = |items: &[String]| -> Vec<CString> {
        items
            .iter()
            .filter_map(|item| CString::new(item.as_str()).ok())
            .collect()
    };
    let vector = |items: &[CString]| -> Vec<*const libc::c_char> {
        let mut pointers: Vec<*const libc::c_char> = items.iter().map(|c| c.as_ptr()).collect();
        pointers.push(std::ptr::null());
        pointers
    };
    let args = cstrings(&argv.iter().map(|a| a.to_string()).collect::<Vec<_>>());
    let argp = vector(&args);
    if let Some(other) = kind.strip_prefix("cloexec-then:") {
        let env = cstrings(&["PATH=/usr/sbin:/usr/bin:/sbin:/bin".to_string()]);
        let envp = vector(&env);
        let Ok(path) = CString::new(program) else {
            return libc::EINVAL;
        };
        // SAFETY: plain system calls with NUL-terminated strings and null-terminated vectors.
        let first = unsafe {
            let fd = libc::open(path.as_ptr(), libc::O_PATH | libc::O_CLOEXEC);
            if fd < 0 {
                return SETUP_ERRNO_BASE + last_errno();
            }
            libc::syscall(
                libc::SYS_execveat,
                fd,
                c"".as_ptr(),
                argp.as_ptr(),
                envp.as_ptr(),
                libc::AT_EMPTY_PATH,
            );
            let errno = last_errno();
            libc::close(fd);
            errno
        };
        eprintln!("FIRST_ERRNO={first}");
        let env2 = cstrings(&[
            "PATH=/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
            "GK_AGENT=1".to_string(),
        ]);
        let envp2 = vector(&env2);
        let args2 = cstrings(&[
            other.to_string(),
            "target".to_string(),
            "second".to_string(),
        ]);
        let argp2 = vector(&args2);
        // SAFETY: as above.
        unsafe { libc::execve(args2[0].as_ptr(), argp2.as_ptr(), envp2.as_ptr()) };
        return last_errno();
    }
    if let Some(spec) = kind.strip_prefix("vector:") {
        let path_entry = b"PATH=/usr/sbin:/usr/bin:/sbin:/bin".to_vec();
        let entries: Vec<Vec<u8>> = match spec {
            "noeq" => vec![path_entry, b"PATH".to_vec(), b"GK_NOEQ".to_vec()],
            "highbyte" => vec![path_entry, b"PATH\xbd=x".to_vec()],
            "name32" => vec![path_entry, [vec![b'A'; 32], b"=x".to_vec()].concat()],
            "name33" => vec![
                path_entry,
                [b"PATH".to_vec(), vec![b'A'; 29], b"=x".to_vec()].concat(),
            ],
            "emptyname" => vec![path_entry, b"=x".to_vec()],
            "many257" => vec![path_entry; 257],
            "dup" => vec![path_entry, b"PATH=/tmp/agent".to_vec()],
            "null" => vec![],
            _ => return libc::EINVAL,
        };
        let env: Vec<CString> = entries
            .into_iter()
            .filter_map(|e| CString::new(e).ok())
            .collect();
        let envp = vector(&env);
        let Ok(path) = CString::new(program) else {
            return libc::EINVAL;
        };
        // SAFETY: as above; "null" passes a NULL environment vector, which Linux takes as empty.
        unsafe {
            libc::execve(
                path.as_ptr(),
                argp.as_ptr(),
                if spec == "null" {
                    std::ptr::null()
                } else {
                    envp.as_ptr()
                },
            )
        };
        return last_errno();
    }
    if kind == "long-approved" {
        let names = [
            "PATH",
            "HOME",
            "PWD",
            "OLDPWD",
            "USER",
            "LOGNAME",
            "HOSTNAME",
            "TERM",
            "TZ",
            "LANG",
            "SHLVL",
            "LC_ALL",
            "LC_CTYPE",
            "LC_TIME",
            "LC_NAME",
            "LC_PAPER",
            "LC_NUMERIC",
            "LC_COLLATE",
        ];
        let value = "a".repeat(130_000);
        let env = cstrings(
            &names
                .iter()
                .map(|name| format!("{name}={value}"))
                .collect::<Vec<_>>(),
        );
        let envp = vector(&env);
        let limit = libc::rlimit {
            rlim_cur: 64 << 20,
            rlim_max: libc::RLIM_INFINITY,
        };
        // SAFETY: as above.
        unsafe {
            let mut old = limit;
            libc::getrlimit(libc::RLIMIT_STACK, &mut old);
            let raised = libc::rlimit {
                rlim_cur: 64 << 20,
                rlim_max: old.rlim_max.max(64 << 20),
            };
            if libc::setrlimit(libc::RLIMIT_STACK, &raised) != 0 {
                let _ = libc::setrlimit(
                    libc::RLIMIT_STACK,
                    &libc::rlimit {
                        rlim_cur: old.rlim_max,
                        rlim_max: old.rlim_max,
                    },
                );
            }
            let Ok(path) = CString::new(program) else {
                return libc::EINVAL;
            };
            libc::execve(path.as_ptr(), argp.as_ptr(), envp.as_ptr());
        }
        return last_errno();
    }
    libc::EINVAL
}

/// Holds this process's memory-map lock for as long as a FUSE server of its own leaves a read
/// unanswered, as any agent can, so that every reader of its `/proc/PID/cmdline` waits (the
/// daemon reads the command lines of a denied process's parents). A thread reads a page of the
/// server's file through /proc/self/mem, which faults with the lock held for reading; another
/// thread's mmap then queues for it, so later readers queue behind. A child (forked first: fork
/// takes the lock) sets the two threads off and then execs PROGRAM. Prints PID=; the child prints
/// EXEC=denied or EXEC=failed (PROGRAM prints its own line if it runs). A line on stdin ends the
/// server, which lets go. This process does nothing once the lock is held: on kernels without
/// per-VMA locks (6.1) even its own page faults wait for it. MODE is the server's namespace (see
/// enter_namespace): `private` as root, `user` as an ordinary user.
fn hold_mm(mode: &str, program: &str) -> Result<(), i32> {
    let dir = format!("/tmp/gk-hold-mm-{}", std::process::id());
    let mount_point = c_path(&dir)?;
    let program = c_path(program)?;
    let target = c_path("target")?;
    let mem = c_path("/proc/self/mem")?;
    let pipe = || {
        let mut ends = [0i32; 2];
        // SAFETY: a two-int array for pipe(2) to fill.
        errno_of(unsafe { libc::pipe(ends.as_mut_ptr()) } as libc::c_long).map(|()| ends)
    };
    let wait_byte = |fd: i32| {
        let mut byte = 0u8;
        // SAFETY: one byte into a local.
        unsafe { libc::read(fd, (&raw mut byte).cast(), 1) };
    };
    // SAFETY: one byte from a static.
    let send_byte = |fd: i32| unsafe { libc::write(fd, b"g".as_ptr().cast(), 1) };
    let [setup_read, setup_write] = pipe()?;
    // SAFETY: fork of a single-threaded process; the child sets up, serves and exits.
    let server = unsafe { libc::fork() };
    if server == 0 {
        let errno = match unreadable_file_system(mode, &mount_point) {
            Ok(fuse) => {
                // SAFETY: four bytes from a local.
                unsafe { libc::write(setup_write, 0i32.to_ne_bytes().as_ptr().cast(), 4) };
                serve_unreadable_file(fuse)
            }
            Err(errno) => errno,
        };
        // SAFETY: four bytes from a local; then the child ends.
        unsafe {
            libc::write(setup_write, errno.to_ne_bytes().as_ptr().cast(), 4);
            libc::_exit(1)
        }
    }
    let mut errno = [0u8; 4];
    // SAFETY: four bytes into a local.
    if unsafe { libc::read(setup_read, errno.as_mut_ptr().cast(), 4) } != 4 {
        return Err(SETUP_ERRNO_BASE);
    }
    match i32::from_ne_bytes(errno) {
        0 => {}
        errno => return Err(SETUP_ERRNO_BASE + errno),
    }
    // The file, through the server's namespace (this process is outside it).
    let file = c_path(&format!("/proc/{server}/root{dir}/f"))?;
    // SAFETY: plain open and mmap; the mapping is never touched by this thread.
    let map = unsafe {
        let fd = fd_of(libc::open(file.as_ptr(), libc::O_RDONLY) as libc::c_long)?;
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ,
            libc::MAP_SHARED,
            fd,
            0,
        )
    };
    if map == libc::MAP_FAILED {
        return Err(last_errno());
    }
    // SAFETY: plain open.
    let mem = fd_of(unsafe { libc::open(mem.as_ptr(), libc::O_RDONLY) } as libc::c_long)?;
    // The child sets the hold off and execs: after the fork every page this process writes
    // is copy-on-write, so even its own stack faults, and waits, once the lock is held.
    let [go_read, go_write] = pipe()?;
    let [fault_read, fault_write] = pipe()?;
    let [queue_read, queue_write] = pipe()?;
    // SAFETY: fork before any thread. The child waits for the word, lets the thread that holds
    // the lock go, then the one that queues behind it, and execs; if that fails it says why and
    // stays (a request's parents are read while it lives) until this process ends.
    let child = unsafe { libc::fork() };
    if child == 0 {
        let argv = [program.as_ptr(), target.as_ptr(), std::ptr::null()];
        // SAFETY: closes of its own descriptors; NUL-terminated strings and a null-terminated
        // array that outlive the exec; bytes from statics.
        unsafe {
            libc::close(go_write);
            wait_byte(go_read);
            send_byte(fault_write);
            libc::usleep(500_000);
            send_byte(queue_write);
            libc::usleep(500_000);
            libc::execv(program.as_ptr(), argv.as_ptr());
            let said: &[u8] = if last_errno() == libc::EPERM {
                b"EXEC=denied\n"
            } else {
                b"EXEC=failed\n"
            };
            libc::write(libc::STDOUT_FILENO, said.as_ptr().cast(), said.len());
            wait_byte(go_read);
            libc::_exit(1)
        }
    }
    // Both threads are made (their stacks mapped) before the lock is held.
    let address = map as i64;
    std::thread::spawn(move || {
        wait_byte(fault_read);
        let mut page = [0u8; 16];
        // SAFETY: into a local; the read faults on the unanswered page.
        unsafe { libc::pread(mem, page.as_mut_ptr().cast(), page.len(), address) };
    });
    std::thread::spawn(move || {
        wait_byte(queue_read);
        // SAFETY: a fresh anonymous mapping, queued behind the held lock.
        unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
    });
    println!("PID={}", std::process::id());
    send_byte(go_write);
    // Until the server ends; then the child sees its pipe closed and ends too.
    // SAFETY: our own children and descriptor.
    unsafe {
        libc::waitpid(server, std::ptr::null_mut(), 0);
        libc::close(go_write);
        libc::waitpid(child, std::ptr::null_mut(), 0);
    }
    let _ = std::fs::remove_dir(&dir);
    Ok(())
}

/// In a namespace of its own (MODE), a FUSE file system mounted at `mount_point`; returns the
/// connection's descriptor.
fn unreadable_file_system(mode: &str, mount_point: &CString) -> Result<i32, i32> {
    enter_namespace(mode)?;
    // SAFETY: plain syscalls on strings that outlive them.
    let fuse = unsafe {
        libc::mkdir(mount_point.as_ptr(), 0o755);
        fd_of(libc::open(c"/dev/fuse".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) as libc::c_long)?
    };
    // Ids as the new namespace sees them: its owner may use the mount from outside it.
    // SAFETY: plain getters.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let options = format!("fd={fuse},rootmode=40000,user_id={uid},group_id={gid}");
    let mount_point = mount_point.to_str().map_err(|_| libc::EINVAL)?;
    mount(
        "gk-hold-mm",
        mount_point,
        Some("fuse"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some(&options),
    )?;
    Ok(fuse)
}

const FUSE_LOOKUP: u32 = 1;
const FUSE_FORGET: u32 = 2;
const FUSE_GETATTR: u32 = 3;
const FUSE_OPEN: u32 = 14;
const FUSE_READ: u32 = 15;
const FUSE_RELEASE: u32 = 18;
const FUSE_FLUSH: u32 = 25;
const FUSE_INIT: u32 = 26;
const FUSE_OPENDIR: u32 = 27;
const FUSE_RELEASEDIR: u32 = 29;
const FUSE_INTERRUPT: u32 = 36;
const FUSE_DESTROY: u32 = 38;
const FUSE_BATCH_FORGET: u32 = 42;
/// Node ids: the root directory and its one file, `f`.
const FUSE_ROOT: u64 = 1;
const FUSE_FILE: u64 = 2;

/// Serves the FUSE connection `fuse` until it ends, or stdin has a line or ends: a root
/// directory holding `f`, one page long, whose reads are never answered.
fn serve_unreadable_file(fuse: i32) -> ! {
    // Big enough for any request with the 4 KiB writes INIT allows.
    let mut request = vec![0u8; 64 * 1024];
    loop {
        let mut ready = [
            libc::pollfd {
                fd: fuse,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: libc::STDIN_FILENO,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two pollfds of ours.
        unsafe { libc::poll(ready.as_mut_ptr(), 2, -1) };
        if ready[1].revents != 0 {
            // SAFETY: told to end (the connection aborts with it).
            unsafe { libc::_exit(0) };
        }
        // SAFETY: into our buffer.
        let read = unsafe { libc::read(fuse, request.as_mut_ptr().cast(), request.len()) };
        if read < 0 {
            if matches!(last_errno(), libc::EINTR | libc::ENOENT) {
                continue;
            }
            // SAFETY: the connection ended.
            unsafe { libc::_exit(0) };
        }
        // fuse_in_header: len, opcode, unique, nodeid, uid, gid, pid, padding.
        let Some(header) = request.get(..40) else {
            continue;
        };
        let opcode = u32::from_ne_bytes(header[4..8].try_into().unwrap_or_default());
        let unique = u64::from_ne_bytes(header[8..16].try_into().unwrap_or_default());
        let node = u64::from_ne_bytes(header[16..24].try_into().unwrap_or_default());
        let name = request.get(40..read as usize).unwrap_or_default();
        let (error, body): (i32, Vec<u8>) = match opcode {
            FUSE_INIT => {
                // fuse_init_out: major 7, minor 31, max_readahead, flags 0, max_background,
                // congestion_threshold, max_write 4096, time_gran 1, then zeros.
                let mut out = Vec::new();
                for word in [7u32, 31, 4096, 0] {
                    out.extend(word.to_ne_bytes());
                }
                out.extend([1u16, 1].iter().flat_map(|half| half.to_ne_bytes()));
                out.extend([4096u32, 1].iter().flat_map(|word| word.to_ne_bytes()));
                out.resize(64, 0);
                (0, out)
            }
            FUSE_LOOKUP if node == FUSE_ROOT && name.starts_with(b"f\0") => {
                // fuse_entry_out: nodeid, generation, entry and attribute validity, then
                // their nanoseconds and the attributes.
                let mut out = Vec::new();
                for word in [FUSE_FILE, 0, 3600, 3600] {
                    out.extend(word.to_ne_bytes());
                }
                out.extend([0u8; 8]);
                out.extend(fuse_attributes(FUSE_FILE));
                (0, out)
            }
            FUSE_LOOKUP => (-libc::ENOENT, Vec::new()),
            FUSE_GETATTR => {
                // fuse_attr_out: attribute validity and its nanoseconds, padding, attributes.
                let mut out = 3600u64.to_ne_bytes().to_vec();
                out.extend([0u8; 8]);
                out.extend(fuse_attributes(node));
                (0, out)
            }
            // fuse_open_out: no handle, no flags.
            FUSE_OPEN | FUSE_OPENDIR => (0, vec![0u8; 16]),
            FUSE_READ | FUSE_FORGET | FUSE_BATCH_FORGET | FUSE_INTERRUPT | FUSE_DESTROY => {
                continue;
            }
            FUSE_RELEASE | FUSE_RELEASEDIR | FUSE_FLUSH => (0, Vec::new()),
            _ => (-libc::ENOSYS, Vec::new()),
        };
        // fuse_out_header: len, error, unique.
        let mut reply = ((16 + body.len()) as u32).to_ne_bytes().to_vec();
        reply.extend(error.to_ne_bytes());
        reply.extend(unique.to_ne_bytes());
        reply.extend(body);
        // SAFETY: from our buffer.
        unsafe { libc::write(fuse, reply.as_ptr().cast(), reply.len()) };
    }
}

/// fuse_attr of `node`: the root directory, or the one-page file.
fn fuse_attributes(node: u64) -> Vec<u8> {
    let (mode, links, size) = if node == FUSE_ROOT {
        (libc::S_IFDIR | 0o755, 2, 0)
    } else {
        (libc::S_IFREG | 0o644, 1, 4096)
    };
    // ino, size, blocks, atime, mtime, ctime; their nanoseconds; mode, nlink, uid, gid, rdev,
    // blksize, flags.
    let mut attributes = Vec::new();
    for word in [node, size, size / 512, 0, 0, 0] {
        attributes.extend(word.to_ne_bytes());
    }
    for word in [0, 0, 0, mode, links, 0, 0, 0, 4096, 0] {
        attributes.extend(word.to_ne_bytes());
    }
    attributes
}

/// nscd, as far as glibc's lookups of a passwd entry by uid and of a host's addresses go, at
/// /var/run/nscd/socket (where glibc asks before /etc/passwd, /etc/hosts and DNS): each UID of
/// UID=NAME is named NAME, each HOST of HOST=IPV4 has the one address IPV4, and no other is
/// known. Prints READY, then serves until killed.
fn name_service(pairs: &[&str]) -> Result<(), i32> {
    use std::io::{Read as _, Write as _};
    const GETPWBYUID: i32 = 1;
    const GETAI: i32 = 14;
    let io = |error: std::io::Error| error.raw_os_error().unwrap_or(-1);
    let pairs: Vec<(String, &str)> = pairs
        .iter()
        .filter_map(|pair| pair.split_once('='))
        .map(|(key, value)| (format!("{key}\0"), value))
        .collect();
    std::fs::create_dir_all("/var/run/nscd").map_err(io)?;
    let _ = std::fs::remove_file("/var/run/nscd/socket");
    let listener = std::os::unix::net::UnixListener::bind("/var/run/nscd/socket").map_err(io)?;
    std::fs::set_permissions(
        "/var/run/nscd/socket",
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    )
    .map_err(io)?;
    println!("READY");
    std::io::stdout().flush().map_err(io)?;
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        // request_header: version, type, key length; then the key.
        let mut header = [0u8; 12];
        if stream.read_exact(&mut header).is_err() {
            continue;
        }
        let word =
            |at: usize| i32::from_ne_bytes(header[at..at + 4].try_into().unwrap_or_default());
        let kind = word(4);
        let mut key = vec![0u8; word(8).clamp(0, 1024) as usize];
        // Anything else (the cache's shared map first) is dropped: glibc then asks this way.
        if stream.read_exact(&mut key).is_err() || ![GETPWBYUID, GETAI].contains(&kind) {
            continue;
        }
        let value = pairs
            .iter()
            .find(|(known, _)| known.as_bytes() == key)
            .map(|(_, value)| *value);
        let reply = match (kind, value) {
            (GETPWBYUID, Some(name)) => passwd_reply(&key, name),
            (GETAI, Some(address)) => {
                let Ok(address) = address.parse::<std::net::Ipv4Addr>() else {
                    continue;
                };
                host_reply(&key, address)
            }
            // A host not known: "not found", so glibc looks no further.
            (GETAI, None) => [2i32, 0, 0, 0, 0, 0]
                .iter()
                .flat_map(|word| word.to_ne_bytes())
                .collect(),
            _ => continue,
        };
        let _ = stream.write_all(&reply);
    }
    Ok(())
}

/// nscd's answer to GETPWBYUID for `key` (the uid, NUL-terminated): found, named `name`.
fn passwd_reply(key: &[u8], name: &str) -> Vec<u8> {
    let uid: i32 = String::from_utf8_lossy(key)
        .trim_end_matches('\0')
        .parse()
        .unwrap_or(0);
    let strings = [
        format!("{name}\0"),
        "x\0".into(),
        "\0".into(),
        "/tmp\0".into(),
        "/bin/sh\0".into(),
    ];
    // pw_response_header: version, found, the lengths of name and password, uid, gid, the
    // lengths of gecos, home and shell; then the strings.
    let mut reply = Vec::new();
    let lengths = strings
        .iter()
        .map(|text| text.len() as i32)
        .collect::<Vec<_>>();
    for word in [
        2, 1, lengths[0], lengths[1], uid, uid, lengths[2], lengths[3], lengths[4],
    ] {
        reply.extend(word.to_ne_bytes());
    }
    for text in &strings {
        reply.extend(text.as_bytes());
    }
    reply
}

/// nscd's answer to GETAI for `key` (the host, NUL-terminated): the one address `address`.
fn host_reply(key: &[u8], address: std::net::Ipv4Addr) -> Vec<u8> {
    // ai_response_header: version, found, how many addresses, their bytes, the canonical
    // name's length, an error; then the addresses, a family byte for each, the canonical name.
    let mut reply = Vec::new();
    for word in [2i32, 1, 1, 4, key.len() as i32, 0] {
        reply.extend(word.to_ne_bytes());
    }
    reply.extend(address.octets());
    reply.push(libc::AF_INET as u8);
    reply.extend(key);
    reply
}
