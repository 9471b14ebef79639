//! Syscall overhead, in interleaved rounds, and the kernel's cost per hook next to the floor.

use std::collections::BTreeMap;

use anyhow::Context as _;
use serde::Serialize;

use crate::{
    Params,
    fapolicyd::{self, Fapolicyd},
    kernel::{Floors, GatekeeperLinks, program_stats, set_bpf_stats},
    worker::{LOOPS, MISC_LOOP, Worker},
};

/// Iterations of a probe run, to size the measured ones.
const PROBE_ITERATIONS: u64 = 20;

#[derive(Serialize, Default)]
pub struct LoopSamples {
    pub kind: &'static str,
    pub label: &'static str,
    pub iterations: u64,
    /// Nanoseconds per run of the worker outside every agent cgroup with no program attached,
    /// rounds + 1 of them: every variant run sits between two.
    pub baseline: Vec<u64>,
    /// The same for the agent's worker: each process is compared with itself.
    pub agent_baseline: Vec<u64>,
    pub non_agent: Vec<u64>,
    pub agent: Vec<u64>,
    /// Only the empty floor programs attached, on the same hooks (outside worker): what any BPF
    /// LSM program there costs.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub floor: Vec<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fapolicyd: Vec<u64>,
}

#[derive(Serialize)]
pub struct Overhead {
    pub rounds: usize,
    pub loops: Vec<LoopSamples>,
    /// "measured", or why not.
    pub fapolicyd: String,
}

/// Iterations per loop such that one run takes about `params.run_ms`.
pub fn calibrate(worker: &mut Worker, params: &Params) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut sizes = BTreeMap::new();
    for kind in LOOPS.iter().map(|(kind, _)| *kind).chain([MISC_LOOP]) {
        // Once to warm caches, once to measure.
        worker.run(kind, PROBE_ITERATIONS)?;
        let ns = worker.run(kind, PROBE_ITERATIONS)?.max(1);
        let per_iteration = ns / PROBE_ITERATIONS;
        let wanted = params.run_ms * 1_000_000 / per_iteration.max(1);
        sizes.insert(kind.to_owned(), wanted.clamp(PROBE_ITERATIONS, 200_000));
    }
    Ok(sizes)
}

#[derive(Clone, Copy)]
enum Block {
    Gatekeeper,
    Floor,
    Fapolicyd,
}

/// Every round measures the baseline (no program attached) of each loop with each worker, then,
/// in an order that rotates from round to round, Gatekeeper attached (the non-agent and the
/// agent worker, alternating), the empty programs alone, and fapolicyd running. The next round's
/// baseline closes the bracket.
pub fn run(
    params: &Params,
    links: &mut GatekeeperLinks,
    mut floors: Option<&mut Floors>,
    outside: &mut Worker,
    agent: &mut Worker,
    sizes: &BTreeMap<String, u64>,
) -> anyhow::Result<Overhead> {
    let mut loops: Vec<LoopSamples> = LOOPS
        .iter()
        .map(|(kind, label)| LoopSamples {
            kind,
            label,
            iterations: sizes.get(*kind).copied().unwrap_or(PROBE_ITERATIONS),
            ..LoopSamples::default()
        })
        .collect();
    let mut fapolicyd_state = fapolicyd::unavailable();
    links.detach();
    // A round nobody counts: first runs in each state fault in pages and fill caches.
    for round in 0..=params.rounds + 1 {
        let counted = round > 0;
        let agent_first = round % 2 == 1;
        for samples in &mut loops {
            for is_agent in [agent_first, !agent_first] {
                let worker = if is_agent { &mut *agent } else { &mut *outside };
                let ns = worker.run(samples.kind, samples.iterations)?;
                match (counted, is_agent) {
                    (false, _) => {}
                    (true, true) => samples.agent_baseline.push(ns),
                    (true, false) => samples.baseline.push(ns),
                }
            }
        }
        if round == params.rounds + 1 {
            break;
        }
        let mut blocks = [Block::Gatekeeper, Block::Floor, Block::Fapolicyd];
        let kinds = blocks.len();
        blocks.rotate_left(round % kinds);
        for block in blocks {
            match block {
                Block::Gatekeeper => {
                    links.attach()?;
                    for samples in &mut loops {
                        for is_agent in [agent_first, !agent_first] {
                            let worker = if is_agent { &mut *agent } else { &mut *outside };
                            let ns = worker.run(samples.kind, samples.iterations)?;
                            match (counted, is_agent) {
                                (false, _) => {}
                                (true, true) => samples.agent.push(ns),
                                (true, false) => samples.non_agent.push(ns),
                            }
                        }
                    }
                    links.detach();
                }
                Block::Floor => {
                    if let Some(floors) = floors.as_deref_mut() {
                        floors.attach()?;
                        for samples in &mut loops {
                            let ns = outside.run(samples.kind, samples.iterations)?;
                            if counted {
                                samples.floor.push(ns);
                            }
                        }
                        floors.detach();
                    }
                }
                Block::Fapolicyd if fapolicyd_state.is_none() => {
                    match fapolicyd_round(outside, &loops[0]) {
                        Ok(ns) if counted => loops[0].fapolicyd.push(ns),
                        Ok(_) => {}
                        Err(error) => {
                            println!("bench: fapolicyd cannot be measured: {error:#}");
                            fapolicyd_state = Some(format!("{error:#}"));
                            loops[0].fapolicyd.clear();
                        }
                    }
                }
                Block::Fapolicyd => {}
            }
        }
        if counted {
            println!("bench: overhead round {round}/{} done", params.rounds);
        }
    }
    Ok(Overhead {
        rounds: params.rounds,
        loops,
        fapolicyd: fapolicyd_state.unwrap_or_else(|| "measured".into()),
    })
}

/// The exec loop with fapolicyd deciding every exec.
fn fapolicyd_round(outside: &mut Worker, exec: &LoopSamples) -> anyhow::Result<u64> {
    let daemon = Fapolicyd::start()?;
    let ns = outside
        .run(exec.kind, exec.iterations)
        .with_context(|| format!("exec loop under fapolicyd ({})", fapolicyd::log_tail()));
    daemon.stop()?;
    ns
}

#[derive(Serialize, Default, Clone, Copy)]
pub struct Window {
    pub runs: u64,
    pub run_ns: u64,
    pub floor_runs: u64,
    pub floor_run_ns: u64,
}

#[derive(Serialize)]
pub struct HookCost {
    pub hook: &'static str,
    /// While the agent worker ran every loop.
    pub agent: Window,
    /// While the worker outside every agent cgroup ran them.
    pub non_agent: Window,
}

/// Per-program run counts and times with Gatekeeper and the floor attached side by side, the
/// agent's loops in one window and the non-agent's in another.
pub fn hooks(
    links: &mut GatekeeperLinks,
    floors: &mut Floors,
    outside: &mut Worker,
    agent: &mut Worker,
    sizes: &BTreeMap<String, u64>,
) -> anyhow::Result<Vec<HookCost>> {
    links.attach()?;
    // Attached after Gatekeeper's, the floor runs second on every hook.
    floors.attach()?;
    let pairs: Vec<(&'static str, u32, u32)> = links
        .program_ids()?
        .into_iter()
        .zip(floors.program_ids()?)
        .map(|((hook, id), (_, floor))| (hook, id, floor))
        .collect();
    let ids: Vec<u32> = pairs
        .iter()
        .flat_map(|(_, id, floor)| [*id, *floor])
        .collect();
    let kinds: Vec<&str> = LOOPS
        .iter()
        .map(|(kind, _)| *kind)
        .chain([MISC_LOOP])
        .collect();
    set_bpf_stats(true)?;
    let measured = (|| {
        let mut snapshots = vec![program_stats(&ids)?];
        for worker in [&mut *agent, &mut *outside] {
            for kind in &kinds {
                worker.run(kind, sizes.get(*kind).copied().unwrap_or(PROBE_ITERATIONS))?;
            }
            snapshots.push(program_stats(&ids)?);
        }
        Ok::<_, anyhow::Error>(snapshots)
    })();
    set_bpf_stats(false)?;
    floors.detach();
    links.detach();
    let snapshots = measured?;
    let window = |from: usize, id: u32, floor: u32| {
        let delta = |id: u32| {
            let (runs_after, ns_after) = snapshots[from + 1].get(&id).copied().unwrap_or_default();
            let (runs_before, ns_before) = snapshots[from].get(&id).copied().unwrap_or_default();
            (
                runs_after.saturating_sub(runs_before),
                ns_after.saturating_sub(ns_before),
            )
        };
        let (runs, run_ns) = delta(id);
        let (floor_runs, floor_run_ns) = delta(floor);
        Window {
            runs,
            run_ns,
            floor_runs,
            floor_run_ns,
        }
    };
    Ok(pairs
        .iter()
        .map(|(hook, id, floor)| HookCost {
            hook,
            agent: window(0, *id, *floor),
            non_agent: window(1, *id, *floor),
        })
        .collect())
}
