use std::path::PathBuf;

use anyhow::Context as _;
use aya_build::{Package, Toolchain};

/// Builds the kernel programs with the nightly toolchain and leaves the object in OUT_DIR, from
/// where `loader` embeds it.
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
    )
}
