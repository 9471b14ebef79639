//! Kernel events become inputs for the engine: decoded from the ring buffer and completed with
//! what /proc and cgroupfs say of the process, here, so that no blocking read runs in the engine.

use std::{collections::HashMap, path::PathBuf};

use gatekeeper_common::{EventKind, TamperHook};
use tracing::warn;

use crate::{
    cgroups,
    events::{EventReader, KernelEvent},
    handle::{Command, Handle, KernelInput},
    requests::{Ancestor, MAX_ANCESTORS, Parent, Process},
};

/// Cgroup names remembered at most (a cgroup's id is not reused while it exists).
const CGROUP_NAMES: usize = 1024;
/// The agent sets its own command line: only this much of it is read, journaled and shown.
const MAX_CMDLINE: u64 = 4096;
const MAX_ARGS: usize = 64;
/// Stands last in an argv that was cut.
const TRUNCATED: &str = "…(truncated)";

/// At most [`MAX_CMDLINE`] bytes of a /proc file.
fn read_bounded(path: &std::path::Path) -> Option<Vec<u8>> {
    use std::io::Read as _;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .take(MAX_CMDLINE)
        .read_to_end(&mut bytes)
        .ok()?;
    Some(bytes)
}

pub fn user_name(uid: u32) -> Option<String> {
    nix::unistd::User::from_uid(uid.into())
        .ok()
        .flatten()
        .map(|user| user.name)
}

/// A command line from /proc: at most [`MAX_ARGS`] arguments of [`MAX_CMDLINE`] bytes.
fn cmdline_of(pid: u32) -> Option<Vec<String>> {
    read_bounded(&PathBuf::from(format!("/proc/{pid}/cmdline"))).map(|raw| {
        let mut argv: Vec<String> = raw
            .split(|byte| *byte == 0)
            .filter(|arg| !arg.is_empty())
            .take(MAX_ARGS)
            .map(|arg| String::from_utf8_lossy(arg).into_owned())
            .collect();
        if raw.len() as u64 >= MAX_CMDLINE {
            argv.push(TRUNCATED.to_owned());
        }
        argv
    })
}

/// `/proc/PID/FILE` as text; the agent names its processes, in bytes that need be no UTF-8.
fn proc_text(pid: u32, file: &str) -> Option<String> {
    let bytes = std::fs::read(format!("/proc/{pid}/{file}")).ok()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

fn comm_of(pid: u32) -> Option<String> {
    proc_text(pid, "comm").map(|comm| comm.trim_end().to_owned())
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = proc_text(pid, "stat")?;
    // The command name may hold spaces and parentheses; fields resume after the last ')'.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
}

/// What /proc still tells about the process that was denied, and up to [`MAX_ANCESTORS`] above
/// it (all of it written by the agent: shown as its text).
fn describe_process(event: &KernelEvent) -> Process {
    // First: a caller whose exec was denied often exits at once.
    let cwd = std::fs::read_link(format!("/proc/{}/cwd", event.pid))
        .ok()
        .map(|cwd| cwd.display().to_string());
    let argv = cmdline_of(event.pid);
    let mut ancestors = Vec::new();
    let mut below = event.pid;
    while ancestors.len() < MAX_ANCESTORS {
        // pid 0 is the kernel: nothing above init.
        let Some(pid) = parent_of(below).filter(|pid| *pid != 0) else {
            break;
        };
        ancestors.push(Ancestor {
            pid,
            comm: comm_of(pid),
            argv: cmdline_of(pid),
        });
        below = pid;
    }
    Process {
        pid: event.pid,
        tgid: event.tgid,
        uid: event.uid,
        user: user_name(event.uid),
        comm: event.comm.clone(),
        argv,
        parent: ancestors.first().map(|parent| Parent {
            pid: parent.pid,
            comm: parent.comm.clone(),
        }),
        cwd,
        ancestors,
    }
}

/// Names cgroups by id, walking cgroupfs below the agent cgroups once per cgroup.
struct CgroupNames {
    roots: Vec<PathBuf>,
    known: HashMap<u64, String>,
}

impl CgroupNames {
    fn name(&mut self, id: u64) -> String {
        if let Some(name) = self.known.get(&id) {
            return name.clone();
        }
        let Some(path) = cgroups::find_by_id(&self.roots, id) else {
            return format!("cgroup id {id}");
        };
        if self.known.len() >= CGROUP_NAMES {
            self.known.clear();
        }
        let name = path.display().to_string();
        self.known.insert(id, name.clone());
        name
    }
}

fn describe(event: KernelEvent, names: &mut CgroupNames) -> KernelInput {
    match event.kind {
        EventKind::Denied => KernelInput::Denied {
            process: describe_process(&event),
            cgroup: names.name(event.cgroup_id),
            target: event.target,
            filename: event.filename,
            cgroup_id: event.cgroup_id,
            exec: event.exec,
        },
        EventKind::Tamper => KernelInput::Tamper {
            hook: TamperHook::from_raw(event.target.aux)
                .map_or("unknown", TamperHook::name)
                .to_owned(),
            pid: event.pid,
            uid: event.uid,
            comm: event.comm,
            cgroup: names.name(event.cgroup_id),
            detail: event.target.data,
        },
        EventKind::GrantUsed => KernelInput::GrantUsed {
            grant_id: event.grant_id,
            pid: event.pid,
        },
    }
}

/// Reads the ring buffer until the engine is gone, in order, completing each event off the
/// async threads.
pub async fn forward_events(
    mut reader: EventReader,
    roots: Vec<PathBuf>,
    handle: Handle,
) -> std::io::Result<()> {
    let mut names = Some(CgroupNames {
        roots,
        known: HashMap::new(),
    });
    loop {
        let batch = reader.next_batch().await?;
        let Some(mut owned) = names.take() else {
            return Ok(());
        };
        let (inputs, returned) = tokio::task::spawn_blocking(move || {
            let inputs: Vec<KernelInput> = batch
                .into_iter()
                .filter_map(|event| match event {
                    Ok(event) => Some(describe(event, &mut owned)),
                    Err(error) => {
                        warn!(%error, "undecodable kernel event");
                        None
                    }
                })
                .collect();
            (inputs, owned)
        })
        .await
        .map_err(std::io::Error::other)?;
        names = Some(returned);
        for input in inputs {
            if !handle.send(Command::Kernel(input)).await {
                return Ok(());
            }
        }
    }
}
