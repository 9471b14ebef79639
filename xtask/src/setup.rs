//! Installs what a fresh machine lacks: apt packages, the nightly's rust-src, bpf-linker and the
//! Debian kernels the guests boot. Each step checks first, so a second run costs seconds.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{cmd_output, run};

/// The kernels every guest test runs on: (label, apt package name pattern).
pub const KERNELS: [(&str, &str); 2] = [
    ("6.1", r"^linux-image-6\.1\.0-[0-9]+-cloud-amd64-unsigned$"),
    (
        "6.12",
        r"^linux-image-6\.12\.[0-9]+\+deb12-cloud-amd64-unsigned$",
    ),
];

const APT_PACKAGES: [(&str, &str); 3] = [
    ("qemu-system-x86", "/usr/bin/qemu-system-x86_64"),
    ("busybox-static", "/bin/busybox"),
    ("cpio", "/usr/bin/cpio"),
];

/// Where downloaded kernels live: outside the checkout, so fresh clones on this machine reuse them.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("GATEKEEPER_CACHE")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/gatekeeper"))
        })
        .unwrap_or_else(|| PathBuf::from("/var/cache/gatekeeper"))
}

pub fn kernel_image(label: &str) -> PathBuf {
    cache_dir().join(format!("vmlinuz-{label}"))
}

/// Whether everything is already in place (no network, no changes).
pub fn is_complete() -> bool {
    APT_PACKAGES
        .iter()
        .all(|(_, path)| Path::new(path).exists())
        && has_rust_src()
        && has_bpf_linker()
        && KERNELS
            .iter()
            .all(|(label, _)| kernel_image(label).exists())
}

pub fn setup() -> anyhow::Result<()> {
    let mut apt_updated = false;
    let apt_update = |done: &mut bool| -> anyhow::Result<()> {
        if !*done {
            run(Command::new("apt-get").args(["update", "-q"]))?;
            *done = true;
        }
        Ok(())
    };

    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .filter(|(_, path)| !Path::new(path).exists())
        .map(|(package, _)| *package)
        .collect();
    if !missing.is_empty() {
        apt_update(&mut apt_updated)?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }

    if !has_rust_src() {
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }

    if !has_bpf_linker() {
        install_bpf_linker()?;
    }

    std::fs::create_dir_all(cache_dir())?;
    for (label, pattern) in KERNELS {
        if kernel_image(label).exists() {
            continue;
        }
        apt_update(&mut apt_updated)?;
        fetch_kernel(label, pattern)?;
    }
    eprintln!("setup: complete (kernels in {})", cache_dir().display());
    Ok(())
}

fn has_rust_src() -> bool {
    cmd_output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]))
    .is_ok_and(|installed| installed.lines().any(|line| line.starts_with("rust-src")))
}

/// bpf-linker loads the nightly's libLLVM, which only `rustup run nightly` puts on the library path
/// (as aya-build does when it links the kernel programs).
fn has_bpf_linker() -> bool {
    Command::new("rustup")
        .args(["run", "nightly", "bpf-linker", "--version"])
        .output()
        .is_ok_and(|output| output.status.success())
}

/// bpf-linker needs an LLVM the distribution does not ship; the nightly toolchain carries one.
fn install_bpf_linker() -> anyhow::Result<()> {
    let sysroot = cmd_output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let lib = Path::new(sysroot.trim()).join("lib");
    let llvm = std::fs::read_dir(&lib)?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("libLLVM.so."))
        })
        .with_context(|| format!("no libLLVM in {}", lib.display()))?;
    let major = cmd_output(Command::new("rustc").args(["+nightly", "--version", "--verbose"]))?
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version: "))
        .and_then(|version| version.split('.').next())
        .map(str::to_owned)
        .context("nightly rustc does not say its LLVM version")?;
    let prefix = cache_dir().join("llvm-prefix");
    std::fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&llvm, &link)?;
    run(Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--version",
            "0.13.0",
            "--locked",
            "--no-default-features",
            "--features",
        ])
        .arg(format!("llvm-{major}"))
        .env("LLVM_PREFIX", &prefix))
}

/// Downloads the newest package matching `pattern` (falling back to older ones the mirror still
/// has) and keeps only its kernel image.
fn fetch_kernel(label: &str, pattern: &str) -> anyhow::Result<()> {
    let found = cmd_output(Command::new("apt-cache").args(["search", "--names-only", pattern]))?;
    let mut packages: Vec<&str> = found
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    packages.sort_by_key(|name| version_key(name));
    let work = cache_dir().join(format!("download-{label}"));
    for package in packages.iter().rev() {
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work)?;
        let downloaded = Command::new("apt-get")
            .args(["download", "-q", package])
            .current_dir(&work)
            .status()
            .is_ok_and(|status| status.success());
        if !downloaded {
            eprintln!("setup: {package} could not be downloaded, trying an older one");
            continue;
        }
        let deb = std::fs::read_dir(&work)?
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .find(|path| path.extension().is_some_and(|ext| ext == "deb"))
            .context("apt-get download left no .deb")?;
        let extract = work.join("root");
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&extract))?;
        let boot = extract.join("boot");
        let image = std::fs::read_dir(&boot)?
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .find(|path| {
                path.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("vmlinuz-"))
            })
            .with_context(|| format!("{package} has no kernel image"))?;
        std::fs::copy(&image, kernel_image(label))?;
        std::fs::write(
            cache_dir().join(format!("vmlinuz-{label}.package")),
            package,
        )?;
        std::fs::remove_dir_all(&work)?;
        eprintln!("setup: kernel {label} from {package}");
        return Ok(());
    }
    bail!("no package matching {pattern} could be downloaded (run apt-get update?)")
}

/// Orders package names by the numbers in them, so 6.1.0-56 sorts after 6.1.0-9.
fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter(|part| !part.is_empty())
        .filter_map(|part| part.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::version_key;

    #[test]
    fn newest_kernel_sorts_last() {
        let mut names = [
            "linux-image-6.12.117+deb12-cloud-amd64-unsigned",
            "linux-image-6.12.9+deb12-cloud-amd64-unsigned",
            "linux-image-6.12.111+deb12-cloud-amd64-unsigned",
        ];
        names.sort_by_key(|name| version_key(name));
        assert_eq!(names[2], "linux-image-6.12.117+deb12-cloud-amd64-unsigned");
    }
}
