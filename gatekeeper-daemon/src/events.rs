//! Kernel events: decoding the ring buffer's records and reading them without blocking.

use std::ffi::CStr;

use aya::maps::{MapData, RingBuf};
use gatekeeper_common::{ARGV_BYTES, Event, EventKind, ExecEvent, Target, argv_flags};
use tokio::io::unix::AsyncFd;

use crate::requests::ExecCall;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelEvent {
    pub kind: EventKind,
    pub pid: u32,
    pub tgid: u32,
    pub uid: u32,
    pub cgroup_id: u64,
    pub agent_cgroup_id: u64,
    pub target: Target,
    pub grant_id: u64,
    pub comm: String,
    pub filename: String,
    /// Set on an exec's denial.
    pub exec: Option<ExecCall>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("event of {0} bytes is shorter than an event record")]
    Short(usize),
    #[error("unknown event kind {0}")]
    UnknownKind(u32),
}

fn c_string(bytes: &[u8]) -> String {
    CStr::from_bytes_until_nul(bytes)
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|_| String::from_utf8_lossy(bytes).into_owned())
}

pub fn decode(bytes: &[u8]) -> Result<KernelEvent, DecodeError> {
    if bytes.len() < size_of::<Event>() {
        return Err(DecodeError::Short(bytes.len()));
    }
    // SAFETY: the length is checked, every bit pattern is a valid `Event` (integers and byte
    // arrays only), and the read is unaligned-safe.
    let raw: Event = unsafe { bytes.as_ptr().cast::<Event>().read_unaligned() };
    let kind = EventKind::from_raw(raw.kind).ok_or(DecodeError::UnknownKind(raw.kind))?;
    let exec = (bytes.len() >= size_of::<ExecEvent>()).then(|| {
        // SAFETY: as above, for the longer record.
        let record: ExecEvent = unsafe { bytes.as_ptr().cast::<ExecEvent>().read_unaligned() };
        exec_call(&record)
    });
    Ok(KernelEvent {
        kind,
        pid: raw.pid,
        tgid: raw.tgid,
        uid: raw.uid,
        cgroup_id: raw.cgroup_id,
        agent_cgroup_id: raw.agent_cgroup_id,
        target: raw.target,
        grant_id: raw.grant_id,
        comm: c_string(&raw.comm),
        filename: c_string(&raw.filename),
        exec,
    })
}

/// The arguments of an exec record: NUL-terminated strings, the last one cut if it ran over.
fn exec_call(record: &ExecEvent) -> ExecCall {
    let args = record.args;
    let used = &record.argv[..(args.len as usize).min(ARGV_BYTES)];
    let mut argv: Vec<String> = used
        .split_inclusive(|byte| *byte == 0)
        .map(|arg| String::from_utf8_lossy(arg.strip_suffix(&[0]).unwrap_or(arg)).into_owned())
        .collect();
    argv.truncate(args.count as usize + 1);
    ExecCall {
        argv,
        script: args.flags & argv_flags::WITHOUT_ARGV0 != 0,
        complete: args.bindable(),
        hash: args.hash,
    }
}

/// Async reader over the kernel's ring buffer.
pub struct EventReader {
    ring: AsyncFd<RingBuf<MapData>>,
}

impl EventReader {
    pub fn new(ring: RingBuf<MapData>) -> std::io::Result<Self> {
        // SAFETY: the ring buffer owns its map fd and keeps it open for as long as the AsyncFd
        // owns the ring buffer; nothing else closes or replaces it.
        let ring = unsafe { AsyncFd::register(ring)? };
        Ok(Self { ring })
    }

    /// Waits for events and returns every one available (undecodable ones as errors).
    pub async fn next_batch(&mut self) -> std::io::Result<Vec<Result<KernelEvent, DecodeError>>> {
        loop {
            let mut guard = self.ring.readable_mut().await?;
            let ring = guard.get_inner_mut();
            let mut batch = Vec::new();
            while let Some(item) = ring.next() {
                batch.push(decode(&item));
            }
            guard.clear_ready();
            if !batch.is_empty() {
                return Ok(batch);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatekeeper_common::{COMM_LEN, FILENAME_LEN};

    fn raw_event(kind: u32) -> Event {
        let mut comm = [0u8; COMM_LEN];
        comm[..2].copy_from_slice(b"sh");
        let mut filename = [0u8; FILENAME_LEN];
        filename[..16].copy_from_slice(b"/usr/bin/pg_dump");
        Event {
            kind,
            pid: 42,
            tgid: 41,
            uid: 1000,
            cgroup_id: 7,
            agent_cgroup_id: 6,
            target: Target::exec(0x0010_0001, 99),
            grant_id: 5,
            comm,
            filename,
        }
    }

    fn bytes_of(event: &Event) -> Vec<u8> {
        // SAFETY: `Event` is plain old data without padding.
        unsafe {
            std::slice::from_raw_parts((event as *const Event).cast::<u8>(), size_of::<Event>())
        }
        .to_vec()
    }

    #[test]
    fn decodes_a_denial() {
        let event = decode(&bytes_of(&raw_event(EventKind::Denied as u32))).unwrap();
        assert_eq!(event.kind, EventKind::Denied);
        assert_eq!((event.pid, event.tgid, event.uid), (42, 41, 1000));
        assert_eq!((event.cgroup_id, event.agent_cgroup_id), (7, 6));
        assert_eq!(event.target, Target::exec(0x0010_0001, 99));
        assert_eq!(event.comm, "sh");
        assert_eq!(event.filename, "/usr/bin/pg_dump");
    }

    #[test]
    fn refuses_short_and_unknown() {
        let bytes = bytes_of(&raw_event(EventKind::GrantUsed as u32));
        assert_eq!(decode(&bytes[..10]), Err(DecodeError::Short(10)));
        assert_eq!(
            decode(&bytes_of(&raw_event(77))),
            Err(DecodeError::UnknownKind(77))
        );
    }
}
