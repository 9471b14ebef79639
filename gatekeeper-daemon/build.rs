use std::path::PathBuf;

use anyhow::{Context as _, bail};
use aya_build::{Package, Toolchain};
use object::build::elf::{Builder, SectionData};

/// Builds the kernel programs with the nightly toolchain and leaves the object, without its
/// DWARF, in OUT_DIR, from where `loader` embeds it.
fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let ebpf_dir = PathBuf::from(manifest_dir).join("../gatekeeper-ebpf");
    let ebpf_dir = ebpf_dir
        .to_str()
        .context("non-UTF-8 path to gatekeeper-ebpf")?;
    aya_build::build_ebpf(
        [Package {
            name: "gatekeeper-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        Toolchain::default(),
    )?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").context("OUT_DIR")?);
    let linked = std::fs::read(out_dir.join("gatekeeper")).context("read the eBPF object")?;
    let stripped = without_dwarf(&linked).context("strip the eBPF object's DWARF")?;
    std::fs::write(out_dir.join("gatekeeper.stripped"), stripped)
        .context("write the stripped eBPF object")
}

/// `object` without its DWARF sections and their relocations: three quarters of its bytes,
/// which the daemon would parse at every start and carry in memory. The kernel and the loader
/// need only the BTF, which stays.
fn without_dwarf(object: &[u8]) -> anyhow::Result<Vec<u8>> {
    let is_dwarf = |name: &[u8]| name.starts_with(b".debug_") || name.starts_with(b".rel.debug_");
    let mut builder = Builder::read(object)?;
    let relocations = |builder: &Builder| -> usize {
        (builder.sections.iter())
            .filter(|section| !section.delete)
            .map(|section| match &section.data {
                SectionData::Relocation(relocations) => relocations.len(),
                _ => 0,
            })
            .sum()
    };
    for section in builder.sections.iter_mut() {
        section.delete = is_dwarf(&section.name);
    }
    // Whatever its name, a relocation section of a section that goes, goes with it.
    let gone: Vec<_> = (builder.sections.iter())
        .filter(|section| section.delete)
        .map(|section| section.id())
        .collect();
    for section in builder.sections.iter_mut() {
        if matches!(section.data, SectionData::Relocation(_))
            && section.sh_info_section.is_some_and(|of| gone.contains(&of))
        {
            section.delete = true;
        }
    }
    let kept = relocations(&builder);
    builder.delete_orphans();
    // LLVM keeps section names in the symbols' string table, which the writer does not share.
    let has_names =
        (builder.sections.iter()).any(|section| matches!(section.data, SectionData::SectionString));
    if !has_names {
        let names = builder.sections.add();
        names.name = b".shstrtab"[..].into();
        names.sh_type = object::elf::SHT_STRTAB;
        names.sh_addralign = 1;
        names.data = SectionData::SectionString;
    }
    // A relocation of a program or of the BTF that named a DWARF section would be lost.
    if relocations(&builder) != kept {
        bail!("a relocation outside the DWARF refers to it");
    }
    let mut stripped = Vec::new();
    builder.write(&mut stripped)?;
    Ok(stripped)
}
