//! `gatekeeper agent run`: starts a command as an agent, in a cgroup of its own that the daemon
//! makes below the first agent cgroup and journals with the agent's owner. The launcher stays
//! the agent's parent: it passes signals on, and once the command ends it ends whatever the
//! agent left running in its cgroup and removes the cgroup.

use std::{
    fs::OpenOptions,
    io::Write as _,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _, unix::process::ExitStatusExt as _},
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow};
use nix::sys::signal::{SigSet, Signal, kill};

use crate::{api::LocalCall, cgroups::check_agent_name, users};

/// How long what an agent left behind gets to die before its cgroup is given up on.
const CLEANUP_PATIENCE: Duration = Duration::from_secs(5);

/// ioprio_get and ioprio_set on one process, and where the class sits in the value.
const IOPRIO_WHO_PROCESS: libc::c_long = 1;
const IOPRIO_CLASS_SHIFT: libc::c_long = 13;
const IOPRIO_CLASS_RT: libc::c_long = 1;

/// Signals the launcher passes on to the agent; SIGCHLD tells it the agent ended.
const FORWARDED: [Signal; 4] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
];

/// The agent's owner when none is named: whoever ran sudo, else the caller.
fn default_owner() -> anyhow::Result<String> {
    let uid = nix::unistd::getuid();
    if uid.is_root()
        && let Ok(user) = std::env::var("SUDO_USER")
        && !user.is_empty()
    {
        return Ok(user);
    }
    users::name_of(uid.as_raw())
        .ok_or_else(|| anyhow!("uid {uid} has no user name: name the owner"))
}

/// Whom the agent runs as, when not as the launcher's caller.
struct RunAs {
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: Vec<libc::gid_t>,
    home: PathBuf,
    name: String,
}

impl RunAs {
    fn of(name: &str) -> anyhow::Result<Self> {
        let user = users::account(name)
            .ok_or_else(|| anyhow!("--user: {name:?} is no user in /etc/passwd"))?;
        Ok(Self {
            uid: user.uid,
            gid: user.gid,
            groups: users::groups_of(name, user.gid),
            home: user.home,
            name: user.name,
        })
    }
}

/// Runs `command` as an agent of `owner` in cgroup `name` (as `user` when given); exits as the
/// command did.
pub fn run_agent(
    call: impl FnOnce(&LocalCall) -> anyhow::Result<serde_json::Value>,
    name: Option<&str>,
    owner: Option<&str>,
    user: Option<&str>,
    command: &[String],
) -> anyhow::Result<ExitCode> {
    let run_as = user.map(RunAs::of).transpose()?;
    let owner = match owner {
        Some(owner) => owner.to_owned(),
        None => default_owner()?,
    };
    let name = name.map_or_else(|| format!("agent-{}", std::process::id()), str::to_owned);
    check_agent_name(&name).map_err(|error| anyhow!(error))?;
    let started = call(&LocalCall::StartAgent {
        name,
        owner,
        command: command.to_vec(),
    })?;
    let cgroup = PathBuf::from(
        started["cgroup"]
            .as_str()
            .context("the daemon answered without the agent's cgroup")?,
    );
    let status = supervise(&cgroup, command, run_as.as_ref());
    if let Err(error) = end_cgroup(&cgroup) {
        eprintln!("gatekeeper: {error:#}");
    }
    let status = status?;
    Ok(ExitCode::from(match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code).unwrap_or(1),
        (None, Some(signal)) => u8::try_from(128 + signal).unwrap_or(1),
        (None, None) => 1,
    }))
}

/// Starts `command` inside `cgroup` (before its first instruction), as `run_as` when given, and
/// waits for it, passing signals on.
fn supervise(
    cgroup: &Path,
    command: &[String],
    run_as: Option<&RunAs>,
) -> anyhow::Result<std::process::ExitStatus> {
    let (program, args) = command.split_first().context("no command to run")?;
    let mut signals = SigSet::empty();
    for signal in FORWARDED {
        signals.add(signal);
    }
    signals.add(Signal::SIGCHLD);
    // Blocked before the agent exists, so none is missed; waited for below.
    signals.thread_block().context("block signals")?;
    let procs_path = cgroup.join("cgroup.procs");
    let procs = OpenOptions::new()
        .write(true)
        .open(&procs_path)
        .with_context(|| format!("open {}", procs_path.display()))?;
    let procs_fd = procs.as_raw_fd();
    let mut agent = std::process::Command::new(program);
    agent.args(args);
    let identity = run_as.map(|user| (user.uid, user.gid, user.groups.clone()));
    if let Some(user) = run_as {
        agent
            .env("HOME", &user.home)
            .env("USER", &user.name)
            .env("LOGNAME", &user.name);
    }
    let no_priority = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    let ordinary = libc::sched_param { sched_priority: 0 };
    // SAFETY: between fork and exec only thin wrappers of system calls, which neither allocate
    // nor lock: setrlimit, sched_getscheduler, sched_setscheduler, getpriority, setpriority,
    // ioprio_get, ioprio_set, write, setgroups, setgid, setuid, prctl and pthread_sigmask, on a
    // descriptor and values prepared before the fork.
    unsafe {
        agent.pre_exec(move || {
            let failed = || Err(std::io::Error::last_os_error());
            // Whatever limits the launcher was given (PAM, its unit): within them the kernel
            // grants realtime policies and nice values below 0 without CAP_SYS_NICE, which would
            // let the agent spin above the daemon.
            if libc::setrlimit(libc::RLIMIT_RTPRIO, &no_priority) != 0
                || libc::setrlimit(libc::RLIMIT_NICE, &no_priority) != 0
            {
                return failed();
            }
            // Nor the priority the launcher ran at, if above the ordinary (a lower one stays).
            let policy = libc::sched_getscheduler(0) & !libc::SCHED_RESET_ON_FORK;
            if (policy == libc::SCHED_FIFO || policy == libc::SCHED_RR)
                && libc::sched_setscheduler(0, libc::SCHED_OTHER, &ordinary) != 0
            {
                return failed();
            }
            // getpriority's -1 may also be an error; setting 0 is harmless then.
            if libc::getpriority(libc::PRIO_PROCESS, 0) < 0
                && libc::setpriority(libc::PRIO_PROCESS, 0, 0) != 0
            {
                return failed();
            }
            // The realtime I/O class: back to none, which follows the CPU priority.
            let ioprio = libc::syscall(libc::SYS_ioprio_get, IOPRIO_WHO_PROCESS, 0);
            if ioprio >= 0
                && ioprio >> IOPRIO_CLASS_SHIFT == IOPRIO_CLASS_RT
                && libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, 0, 0) != 0
            {
                return failed();
            }
            // Moved while still root: the agent's user may not write cgroup.procs.
            if libc::write(procs_fd, b"0".as_ptr().cast(), 1) != 1 {
                return failed();
            }
            if let Some((uid, gid, groups)) = &identity
                && (libc::setgroups(groups.len(), groups.as_ptr()) != 0
                    || libc::setgid(*gid) != 0
                    || libc::setuid(*uid) != 0)
            {
                return failed();
            }
            // After the change of user, which clears it: the agent's first process dies with
            // its launcher (a SIGKILLed launcher cannot pass signals on or clean up).
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return failed();
            }
            SigSet::empty()
                .thread_set_mask()
                .map_err(std::io::Error::from)
        });
    }
    let mut child = agent.spawn().with_context(|| format!("start {program}"))?;
    drop(procs);
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).context("pid")?);
    loop {
        let signal = signals.wait().context("wait for signals")?;
        if signal == Signal::SIGCHLD {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
        } else {
            let _ = kill(pid, signal);
        }
    }
}

/// Kills whatever is left in the agent's cgroup and removes it.
fn end_cgroup(cgroup: &Path) -> anyhow::Result<()> {
    let kill_file = cgroup.join("cgroup.kill");
    OpenOptions::new()
        .write(true)
        .open(&kill_file)
        .and_then(|mut file| file.write_all(b"1"))
        .with_context(|| format!("end what is left in {}", cgroup.display()))?;
    let deadline = Instant::now() + CLEANUP_PATIENCE;
    let events = cgroup.join("cgroup.events");
    while std::fs::read_to_string(&events)
        .map(|text| text.lines().any(|line| line == "populated 1"))
        .unwrap_or(false)
    {
        if Instant::now() > deadline {
            anyhow::bail!("{} still has processes", cgroup.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::remove_dir(cgroup).with_context(|| format!("remove {}", cgroup.display()))
}
