//! The kernel side of the bench: switching the daemon's programs off and on between rounds, the
//! empty floor programs, and the kernel's per-program statistics.

use std::{
    borrow::Cow,
    collections::HashMap,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use aya::{
    Btf, Ebpf, EbpfLoader,
    programs::{
        Lsm,
        links::{FdLink, PinnedLink},
        loaded_programs,
    },
};
use gatekeeper_common::{LATER_PROGRAMS, PROGRAMS};
use gatekeeper_daemon::loader::{EBPF_OBJECT, link_pin};

const BPF_STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";
/// The floor object's maps are pinned here, away from the daemon's.
const FLOOR_PIN_DIR: &str = "/sys/fs/bpf/gk-bench-floor";

/// One of the daemon's programs, held by the bench so it can be detached and attached again.
struct Hooked {
    name: &'static str,
    program: Lsm,
    link: Option<FdLink>,
}

/// The daemon's programs with their links in the bench's hands. Dropping a link detaches the
/// program from its hook: what remains is the kernel without Gatekeeper, with the same daemon
/// process idling beside it.
pub struct GatekeeperLinks {
    pin_dir: PathBuf,
    hooked: Vec<Hooked>,
}

impl GatekeeperLinks {
    /// Takes over the links the daemon pinned in `pin_dir` (the pins go; `restore` puts them
    /// back).
    pub fn adopt(pin_dir: &Path) -> anyhow::Result<Self> {
        let mut hooked = Vec::new();
        // Later programs where the daemon attached them (where the kernel has their hooks).
        let later = LATER_PROGRAMS
            .into_iter()
            .filter(|name| link_pin(pin_dir, name).exists());
        for name in PROGRAMS.into_iter().chain(later) {
            let path = link_pin(pin_dir, name);
            let link = PinnedLink::from_pin(&path)
                .with_context(|| format!("open {}", path.display()))?
                .unpin()
                .with_context(|| format!("unpin {}", path.display()))?;
            let id = link.info()?.program_id();
            let info = loaded_programs()
                .filter_map(Result::ok)
                .find(|info| info.id() == id)
                .with_context(|| format!("program {id} of {name} is not loaded"))?;
            let program = Lsm::from_program_info(info, Cow::Borrowed(name))?;
            hooked.push(Hooked {
                name,
                program,
                link: Some(link),
            });
        }
        Ok(Self {
            pin_dir: pin_dir.to_owned(),
            hooked,
        })
    }

    pub fn detach(&mut self) {
        for hooked in &mut self.hooked {
            // Closing the last reference to a link detaches it before close returns.
            hooked.link = None;
        }
    }

    pub fn attach(&mut self) -> anyhow::Result<()> {
        for hooked in &mut self.hooked {
            if hooked.link.is_none() {
                let id = hooked
                    .program
                    .attach()
                    .with_context(|| format!("attach {}", hooked.name))?;
                hooked.link = Some(hooked.program.take_link(id)?.into());
            }
        }
        Ok(())
    }

    /// (hook, program id) of every program.
    pub fn program_ids(&self) -> anyhow::Result<Vec<(&'static str, u32)>> {
        self.hooked
            .iter()
            .map(|hooked| Ok((hooked.name, hooked.program.info()?.id())))
            .collect()
    }

    /// Attaches everything and pins the links where the daemon keeps them.
    pub fn restore(mut self) -> anyhow::Result<()> {
        self.attach()?;
        for hooked in &mut self.hooked {
            if let Some(link) = hooked.link.take() {
                let path = link_pin(&self.pin_dir, hooked.name);
                link.pin(&path)
                    .with_context(|| format!("pin {}", path.display()))?;
            }
        }
        Ok(())
    }
}

/// Empty LSM programs on the same hooks, from the object the daemon embeds.
pub struct Floors {
    // Owns the programs; dropping it unloads them.
    ebpf: Ebpf,
    links: Vec<FdLink>,
}

pub fn floor_name(hook: &str) -> String {
    format!("floor_{hook}")
}

impl Floors {
    pub fn load() -> anyhow::Result<Self> {
        let btf = Btf::from_sys_fs()?;
        std::fs::create_dir_all(FLOOR_PIN_DIR)?;
        let mut loader = EbpfLoader::new();
        loader
            .btf(Some(&btf))
            .default_map_pin_directory(FLOOR_PIN_DIR);
        let mut ebpf = loader.load(EBPF_OBJECT)?;
        for hook in PROGRAMS {
            let name = floor_name(hook);
            let program: &mut Lsm = ebpf
                .program_mut(&name)
                .with_context(|| format!("the eBPF object has no {name}"))?
                .try_into()?;
            program
                .load(hook, &btf)
                .with_context(|| format!("load {name}"))?;
        }
        Ok(Self {
            ebpf,
            links: Vec::new(),
        })
    }

    pub fn attach(&mut self) -> anyhow::Result<()> {
        for hook in PROGRAMS {
            let program: &mut Lsm = self
                .ebpf
                .program_mut(&floor_name(hook))
                .context("floor program")?
                .try_into()?;
            let id = program.attach()?;
            self.links.push(program.take_link(id)?.into());
        }
        Ok(())
    }

    pub fn detach(&mut self) {
        self.links.clear();
    }

    /// (hook, program id) of every floor program.
    pub fn program_ids(&self) -> anyhow::Result<Vec<(&'static str, u32)>> {
        PROGRAMS
            .iter()
            .map(|hook| {
                let program: &Lsm = self
                    .ebpf
                    .program(&floor_name(hook))
                    .context("floor program")?
                    .try_into()?;
                Ok((*hook, program.info()?.id()))
            })
            .collect()
    }
}

impl Drop for Floors {
    fn drop(&mut self) {
        self.links.clear();
        // The object's maps were pinned for the floor alone.
        let _ = std::fs::remove_dir_all(FLOOR_PIN_DIR);
    }
}

/// The kernel counts runs and run time of every program while this is on; it costs two clock
/// reads per run, so it is on only for the hook measurements.
pub fn set_bpf_stats(on: bool) -> anyhow::Result<()> {
    std::fs::write(BPF_STATS_SYSCTL, if on { "1" } else { "0" })
        .with_context(|| format!("write {BPF_STATS_SYSCTL}"))
}

/// (run count, run time in ns) of each program by id.
pub fn program_stats(ids: &[u32]) -> anyhow::Result<HashMap<u32, (u64, u64)>> {
    let stats: HashMap<u32, (u64, u64)> = loaded_programs()
        .filter_map(Result::ok)
        .filter(|info| ids.contains(&info.id()))
        .map(|info| {
            (
                info.id(),
                (info.run_count(), info.run_time().as_nanos() as u64),
            )
        })
        .collect();
    if let Some(missing) = ids.iter().find(|id| !stats.contains_key(id)) {
        bail!("program {missing} is no longer loaded");
    }
    Ok(stats)
}
