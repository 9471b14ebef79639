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
    check_stack(&linked).context("the eBPF object's stack")?;
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

/// The most stack a program's deepest chain of calls may take: 6.1's verifier counts each
/// function's frame rounded up to 32 bytes (an empty one as 32), callbacks handed to helpers
/// such as `bpf_loop` among the calls, and refuses a program past this.
const MAX_STACK: u64 = 512;

/// Fails when a program's deepest chain of calls needs more stack than [`MAX_STACK`], naming
/// the chain: caught here, not by the first guest that boots a 6.1 kernel.
fn check_stack(object: &[u8]) -> anyhow::Result<()> {
    use object::{
        Object as _, ObjectSection as _, ObjectSymbol as _, RelocationFlags, SectionKind,
    };
    use std::collections::HashMap;

    const INSN: u64 = 8;
    const R_BPF_64_64: u32 = 1;
    const R_BPF_64_32: u32 = 10;
    let file = object::File::parse(object)?;
    // Functions by (section, offset): name, frame and callees.
    struct Function {
        name: String,
        frame: u64,
        calls: Vec<(object::SectionIndex, u64)>,
    }
    let mut functions: HashMap<(object::SectionIndex, u64), Function> = HashMap::new();
    let mut entries = Vec::new();
    for symbol in file.symbols() {
        if symbol.kind() != object::SymbolKind::Text || symbol.size() == 0 {
            continue;
        }
        let Some(index) = symbol.section_index() else {
            continue;
        };
        let section = file.section_by_index(index)?;
        if section.kind() != SectionKind::Text {
            continue;
        }
        let data = section.data()?;
        let relocations: HashMap<u64, object::Relocation> = section.relocations().collect();
        let (start, end) = (symbol.address(), symbol.address() + symbol.size());
        let mut function = Function {
            name: symbol.name()?.to_owned(),
            frame: 0,
            calls: Vec::new(),
        };
        let mut at = start;
        while at + INSN <= end {
            let Some(insn) = data.get(at as usize..(at + INSN) as usize) else {
                bail!("{} runs past its section", function.name);
            };
            let (op, dst, src) = (insn[0], insn[1] & 0xf, insn[1] >> 4);
            let off = i16::from_le_bytes([insn[2], insn[3]]);
            let imm = i32::from_le_bytes([insn[4], insn[5], insn[6], insn[7]]);
            // Loads from and stores to the frame, below r10.
            let base = match op & 7 {
                1 => Some(src),
                2 | 3 => Some(dst),
                _ => None,
            };
            if base == Some(10) && off < 0 {
                function.frame = function.frame.max(u64::from(off.unsigned_abs()));
            }
            let target = relocations.get(&at).and_then(|relocation| {
                let RelocationFlags::Elf { r_type } = relocation.flags() else {
                    return None;
                };
                let object::RelocationTarget::Symbol(target) = relocation.target() else {
                    return None;
                };
                let target = file.symbol_by_index(target).ok()?;
                Some((
                    r_type,
                    target.section_index()?,
                    target.kind(),
                    target.address(),
                ))
            });
            if op == 0x85 && src == 1 {
                // A call of a function: by its symbol, by its section's and the offset in the
                // instruction, or within this section.
                let callee = match target {
                    Some((R_BPF_64_32, section, object::SymbolKind::Section, _)) => {
                        (section, (i64::from(imm) + 1) as u64 * INSN)
                    }
                    Some((R_BPF_64_32, section, _, address)) => (section, address),
                    _ => (
                        index,
                        (at / INSN).wrapping_add_signed(i64::from(imm) + 1) * INSN,
                    ),
                };
                function.calls.push(callee);
            }
            if op == 0x18 {
                // A function's address loaded: a callback.
                if let Some((R_BPF_64_64, section, kind, address)) = target {
                    let section_kind = file.section_by_index(section)?.kind();
                    if section_kind == SectionKind::Text {
                        let offset = match kind {
                            object::SymbolKind::Section => u64::from(imm as u32),
                            _ => address,
                        };
                        function.calls.push((section, offset));
                    }
                }
                at += INSN;
            }
            at += INSN;
        }
        if section.name()? != ".text" {
            entries.push((index, start, section.name()?.to_owned()));
        }
        functions.insert((index, start), function);
    }
    fn deepest(
        functions: &HashMap<(object::SectionIndex, u64), Function>,
        at: (object::SectionIndex, u64),
        chain: &mut Vec<(object::SectionIndex, u64)>,
    ) -> (u64, Vec<String>) {
        let Some(function) = functions.get(&at) else {
            return (0, Vec::new());
        };
        chain.push(at);
        let mut below = (0, Vec::new());
        for callee in &function.calls {
            if chain.contains(callee) {
                continue;
            }
            let found = deepest(functions, *callee, chain);
            if found.0 > below.0 {
                below = found;
            }
        }
        chain.pop();
        let frame = function.frame.max(1).div_ceil(32) * 32;
        let mut names = vec![format!("{} ({frame})", function.name)];
        names.extend(below.1);
        (frame + below.0, names)
    }
    for (section, offset, program) in entries {
        let (depth, names) = deepest(&functions, (section, offset), &mut Vec::new());
        if depth > MAX_STACK {
            bail!(
                "{program} needs {depth} bytes of stack, over the {MAX_STACK} that 6.1's verifier allows: {}",
                names.join(" -> ")
            );
        }
    }
    Ok(())
}
