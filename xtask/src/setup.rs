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
    // Only the bench needs it, and it measures without it if it cannot be had.
    if let Err(error) = ensure_fapolicyd() {
        eprintln!("setup: fapolicyd (for cargo xtask bench) is not available: {error:#}");
    }
    eprintln!("setup: complete (kernels in {})", cache_dir().display());
    Ok(())
}

/// Where fapolicyd's package, and the libraries it needs that this machine lacks, are unpacked
/// for the bench guest. Nothing is installed on this machine.
pub fn fapolicyd_root() -> PathBuf {
    cache_dir().join("fapolicyd/root")
}

/// The magic database fapolicyd's libmagic reads, beside the libraries it links.
const FAPOLICYD_DATA: [&str; 1] = ["libmagic-mgc"];

/// Downloads and unpacks fapolicyd (once; the unpacked tree is kept in the cache).
pub fn ensure_fapolicyd() -> anyhow::Result<PathBuf> {
    let work = cache_dir().join("fapolicyd");
    let complete = work.join("complete");
    if complete.exists() {
        return Ok(fapolicyd_root());
    }
    let fetch = || -> anyhow::Result<()> {
        let _ = std::fs::remove_dir_all(&work);
        let debs = work.join("debs");
        std::fs::create_dir_all(&debs)?;
        let packages = fapolicyd_packages()?;
        cmd_output(
            Command::new("apt-get")
                .args(["download", "-qq"])
                .args(&packages)
                .current_dir(&debs),
        )?;
        for deb in std::fs::read_dir(&debs)? {
            run(Command::new("dpkg-deb")
                .arg("-x")
                .arg(deb?.path())
                .arg(fapolicyd_root()))?;
        }
        std::fs::write(&complete, packages.join("\n") + "\n")?;
        Ok(())
    };
    // Stale or missing package lists are the usual reason for a failed download.
    if fetch().is_err() {
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        fetch()?;
    }
    eprintln!(
        "setup: fapolicyd unpacked in {}",
        fapolicyd_root().display()
    );
    Ok(fapolicyd_root())
}

/// fapolicyd, and those of its dependencies (and their data) this machine has not installed.
fn fapolicyd_packages() -> anyhow::Result<Vec<String>> {
    let listing = cmd_output(Command::new("apt-cache").args([
        "depends",
        "--no-recommends",
        "--no-suggests",
        "--no-conflicts",
        "--no-breaks",
        "--no-replaces",
        "--no-enhances",
        "fapolicyd",
    ]))?;
    let depends = listing
        .lines()
        .filter_map(|line| line.trim().strip_prefix("Depends: "))
        // Virtual packages read <name>: something real provides them.
        .filter(|name| !name.starts_with('<'))
        .map(str::to_owned);
    let mut packages = vec!["fapolicyd".to_owned()];
    packages.extend(
        depends
            .chain(FAPOLICYD_DATA.iter().map(|name| name.to_string()))
            .filter(|name| !is_installed(name)),
    );
    Ok(packages)
}

fn is_installed(package: &str) -> bool {
    cmd_output(Command::new("dpkg-query").args(["-W", "-f=${db:Status-Status}", package]))
        .is_ok_and(|status| status.trim() == "installed")
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
