//! Kernel events become inputs for the engine: decoded from the ring buffer and completed with
//! what /proc and cgroupfs say of the process, here, so that no blocking read runs in the engine.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

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
/// How long one command line is waited for. Reading it takes the process's memory map lock,
/// which an agent can keep taken for as long as it likes (a page of a file that a FUSE server
/// of its own never serves): past this the request goes on without it. (The other /proc files
/// read here take no lock of the process's.)
const CMDLINE_WAIT: Duration = Duration::from_secs(1);
/// Reader threads alive at most, each left waiting on a read but the current one; beyond them
/// no command line is read until one returns, so that an agent cannot leave a thread behind
/// with every request.
const CMDLINE_READERS: usize = 4;
/// How long no command line is read for the requests of an agent cgroup after one of its
/// processes held a read past [`CMDLINE_WAIT`]: else it could hold up every later request, its
/// own and other agents', by a wait each.
const CMDLINE_PAUSE: Duration = Duration::from_secs(60);

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

/// Reads files on a thread of its own and waits for each at most `wait`: a read that takes
/// longer is left to its thread, and the next read starts another.
struct PatientReader {
    wait: Duration,
    current: Option<ReaderThread>,
    /// Reader threads alive, the current one's included.
    alive: Arc<AtomicUsize>,
    /// Whether it said that no reader is left.
    said_full: bool,
}

/// Why [`PatientReader::read`] has no answer.
#[derive(Debug, PartialEq, Eq)]
enum Unread {
    /// The read took longer than the wait; its thread is left to it.
    TooLong,
    /// No thread to read with: as many as allowed are left waiting.
    NoReader,
}

struct ReaderThread {
    paths: mpsc::Sender<PathBuf>,
    contents: mpsc::Receiver<Option<Vec<u8>>>,
}

/// Counts a reader thread out when it ends.
struct Alive(Arc<AtomicUsize>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl PatientReader {
    fn new(wait: Duration) -> Self {
        Self {
            wait,
            current: None,
            alive: Arc::new(AtomicUsize::new(0)),
            said_full: false,
        }
    }

    /// At most [`MAX_CMDLINE`] bytes of `path` (None if it cannot be read), if read in time.
    fn read(&mut self, path: PathBuf) -> Result<Option<Vec<u8>>, Unread> {
        let thread = match self.current.take() {
            Some(thread) => thread,
            None => self.start().ok_or(Unread::NoReader)?,
        };
        if thread.paths.send(path.clone()).is_err() {
            warn!("a command line reader ended");
            return Err(Unread::NoReader);
        }
        match thread.contents.recv_timeout(self.wait) {
            Ok(contents) => {
                self.current = Some(thread);
                Ok(contents)
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                warn!(path = %path.display(), wait = ?self.wait, "read took too long, left behind");
                Err(Unread::TooLong)
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                warn!("a command line reader ended");
                Err(Unread::NoReader)
            }
        }
    }

    fn start(&mut self) -> Option<ReaderThread> {
        if self.alive.load(Ordering::SeqCst) >= CMDLINE_READERS {
            if !self.said_full {
                warn!(
                    readers = CMDLINE_READERS,
                    "every command line reader is left waiting: requests go without command lines"
                );
                self.said_full = true;
            }
            return None;
        }
        self.said_full = false;
        let (paths, asked) = mpsc::channel::<PathBuf>();
        let (answer, contents) = mpsc::channel();
        self.alive.fetch_add(1, Ordering::SeqCst);
        let alive = Alive(Arc::clone(&self.alive));
        let spawned = std::thread::Builder::new()
            .name("gk-cmdline".into())
            .spawn(move || {
                let _alive = alive;
                for path in asked {
                    // The reader gave up on this thread: end with it.
                    if answer.send(read_bounded(&path)).is_err() {
                        break;
                    }
                }
            });
        match spawned {
            Ok(_) => Some(ReaderThread { paths, contents }),
            Err(error) => {
                // The closure, and with it the count, was dropped.
                warn!(%error, "cannot start a thread to read command lines");
                None
            }
        }
    }
}

/// Command lines for the requests of agent cgroups, none for [`CMDLINE_PAUSE`] for a cgroup
/// whose process held a read past the wait.
struct Cmdlines {
    reader: PatientReader,
    /// Agent cgroups by id, and when their last read took too long.
    paused: HashMap<u64, Instant>,
}

impl Cmdlines {
    fn new(wait: Duration) -> Self {
        Self {
            reader: PatientReader::new(wait),
            paused: HashMap::new(),
        }
    }

    /// Whether command lines are read for a request of `cgroup` now.
    fn reading(&mut self, cgroup: u64) -> bool {
        let now = Instant::now();
        self.paused
            .retain(|_, since| now.duration_since(*since) < CMDLINE_PAUSE);
        !self.paused.contains_key(&cgroup)
    }

    /// The command line of `pid` for a request of `cgroup`; after one read that takes too
    /// long, none for its requests for a while (see [`Cmdlines::reading`]).
    fn of(&mut self, cgroup: u64, pid: u32) -> Option<Vec<String>> {
        self.read_for(cgroup, PathBuf::from(format!("/proc/{pid}/cmdline")))
            .map(|raw| argv_of(&raw))
    }

    fn read_for(&mut self, cgroup: u64, path: PathBuf) -> Option<Vec<u8>> {
        if !self.reading(cgroup) {
            return None;
        }
        match self.reader.read(path) {
            Ok(raw) => raw,
            Err(Unread::TooLong) => {
                self.paused.insert(cgroup, Instant::now());
                None
            }
            Err(Unread::NoReader) => None,
        }
    }
}

/// A command line as /proc gives it: at most [`MAX_ARGS`] arguments of [`MAX_CMDLINE`] bytes.
fn argv_of(raw: &[u8]) -> Vec<String> {
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
fn describe_process(event: &KernelEvent, cmdlines: &mut Cmdlines) -> Process {
    // First: a caller whose exec was denied often exits at once.
    let cwd = std::fs::read_link(format!("/proc/{}/cwd", event.pid))
        .ok()
        .map(|cwd| cwd.display().to_string());
    let argv = cmdlines.of(event.cgroup_id, event.pid);
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
            argv: cmdlines.of(event.cgroup_id, pid),
        });
        below = pid;
    }
    Process {
        pid: event.pid,
        tgid: event.tgid,
        uid: event.uid,
        user: crate::users::name_of(event.uid),
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

/// What completes events, carried from batch to batch.
struct Enricher {
    names: CgroupNames,
    cmdlines: Cmdlines,
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

fn describe(event: KernelEvent, enricher: &mut Enricher) -> KernelInput {
    let names = &mut enricher.names;
    match event.kind {
        EventKind::Denied => KernelInput::Denied {
            process: describe_process(&event, &mut enricher.cmdlines),
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
    let mut enricher = Some(Enricher {
        names: CgroupNames {
            roots,
            known: HashMap::new(),
        },
        cmdlines: Cmdlines::new(CMDLINE_WAIT),
    });
    loop {
        let batch = reader.next_batch().await?;
        let Some(mut owned) = enricher.take() else {
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
        enricher = Some(returned);
        for input in inputs {
            if !handle.send(Command::Kernel(input)).await {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::OpenOptionsExt;

    /// A FIFO stands for a process whose memory map lock an agent holds: opening it for
    /// reading waits until someone opens it for writing.
    struct Scratch {
        dir: PathBuf,
        file: PathBuf,
        fifo: PathBuf,
    }

    impl Scratch {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("gk-{name}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let file = dir.join("cmdline");
            std::fs::write(&file, b"sh\0-c\0true\0").unwrap();
            let fifo = dir.join("stalled");
            let _ = std::fs::remove_file(&fifo);
            nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
            Self { dir, file, fifo }
        }

        /// Ends every read waiting on the FIFO, and waits until their threads are gone.
        fn release(&self, alive: &AtomicUsize) {
            let deadline = Instant::now() + Duration::from_secs(10);
            while alive.load(Ordering::SeqCst) > 0 {
                assert!(Instant::now() < deadline, "stalled readers never ended");
                // Fails while no reader has the FIFO open yet.
                let _ = std::fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(&self.fifo);
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[test]
    fn a_read_that_never_ends_is_left_behind_and_reading_goes_on() {
        let scratch = Scratch::new("patient");
        let (file, fifo) = (&scratch.file, &scratch.fifo);
        let mut reader = PatientReader::new(Duration::from_millis(500));
        let alive = Arc::clone(&reader.alive);
        let contents = Some(b"sh\0-c\0true\0".to_vec());
        assert_eq!(reader.read(file.clone()), Ok(contents.clone()));
        // Each stalled read leaves its thread behind; the next read starts another.
        for stalled in 1..CMDLINE_READERS {
            assert_eq!(reader.read(fifo.clone()), Err(Unread::TooLong));
            assert_eq!(alive.load(Ordering::SeqCst), stalled);
            assert_eq!(reader.read(file.clone()), Ok(contents.clone()));
        }
        assert_eq!(reader.read(fifo.clone()), Err(Unread::TooLong));
        assert_eq!(alive.load(Ordering::SeqCst), CMDLINE_READERS);
        // As many threads wait as allowed: no more are started, and nothing is read.
        assert_eq!(reader.read(file.clone()), Err(Unread::NoReader));
        assert_eq!(alive.load(Ordering::SeqCst), CMDLINE_READERS);

        // Once the stalled reads end, their threads end with them, and reading resumes.
        scratch.release(&alive);
        assert_eq!(reader.read(file.clone()), Ok(contents));
        // A file that is not there is no failure of the reader.
        assert_eq!(reader.read(scratch.dir.join("gone")), Ok(None));
    }

    #[test]
    fn a_cgroup_that_held_a_read_gets_no_command_lines_for_a_while() {
        let scratch = Scratch::new("paused");
        let mut cmdlines = Cmdlines::new(Duration::from_millis(500));
        let alive = Arc::clone(&cmdlines.reader.alive);
        let (held, other) = (7, 8);
        assert!(cmdlines.read_for(held, scratch.file.clone()).is_some());
        assert_eq!(cmdlines.read_for(held, scratch.fifo.clone()), None);
        scratch.release(&alive);
        // Its next requests go without, at once; another agent's still get theirs.
        assert_eq!(cmdlines.read_for(held, scratch.file.clone()), None);
        assert!(cmdlines.read_for(other, scratch.file.clone()).is_some());
        // Until the pause is over.
        let since = cmdlines.paused.get_mut(&held).unwrap();
        *since -= CMDLINE_PAUSE;
        assert!(cmdlines.read_for(held, scratch.file.clone()).is_some());
        assert!(cmdlines.paused.is_empty());
    }

    #[test]
    fn a_command_line_is_split_at_nuls_and_cut() {
        assert_eq!(argv_of(b"sh\0-c\0true\0"), ["sh", "-c", "true"]);
        let long = vec![b'a'; MAX_CMDLINE as usize];
        assert_eq!(argv_of(&long).last().map(String::as_str), Some(TRUNCATED));
    }
}
