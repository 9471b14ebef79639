//! What /proc tells about the daemon: memory and CPU time.

use anyhow::{Context as _, bail};

/// A `kB` field of /proc/PID/status (VmRSS, VmHWM, RssAnon...).
pub fn status_kb(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| {
            let rest = line.strip_prefix(field)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// User plus system CPU time the process has used, in nanoseconds.
pub fn cpu_ns(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces: fields resume after the last ')'.
    let (_, rest) = stat.rsplit_once(')').context("malformed stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    let ticks: u64 = [11, 12]
        .iter()
        .map(|index| {
            fields
                .get(*index)
                .and_then(|field| field.parse::<u64>().ok())
        })
        .sum::<Option<u64>>()
        .context("no utime/stime in stat")?;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if per_second <= 0 {
        bail!("no clock tick rate");
    }
    Ok(ticks * 1_000_000_000 / per_second as u64)
}

/// Starts the peak (VmHWM) afresh from the current resident size.
pub fn reset_peak(pid: u32) -> anyhow::Result<()> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").context("reset VmHWM")
}
