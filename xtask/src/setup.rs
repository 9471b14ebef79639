//! Installs what a fresh machine lacks: apt packages, the nightly's rust-src, bpf-linker and the
//! Debian kernels the guests boot. Each step checks first, so a second run costs seconds.

use std::{
    collections::{HashMap, HashSet},
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

/// Modules the guests load at boot (with their dependencies), for tests that need overlayfs,
/// NFS or FUSE, and real storage behind the raw devices agents may not open: a small SCSI disk
/// in memory (`scsi_debug`) with its block (`sd_mod`) and SCSI generic (`sg`) devices, and
/// device-mapper; and btrfs, xfs and an encrypting ext4 on loop devices, for their ioctls (an
/// encryption key is named by a SHA-512 HMAC of it). One a kernel has built
/// in is left out.
pub const GUEST_MODULES: [&str; 11] = [
    "overlay",
    "nfsv3",
    "fuse",
    "scsi_debug",
    "sd_mod",
    "sg",
    "dm_mod",
    "loop",
    "btrfs",
    "xfs",
    "sha512_generic",
];

const APT_PACKAGES: [(&str, &str); 8] = [
    ("qemu-system-x86", "/usr/bin/qemu-system-x86_64"),
    ("busybox-static", "/bin/busybox"),
    ("cpio", "/usr/bin/cpio"),
    ("xz-utils", "/usr/bin/xz"),
    ("mmdebstrap", "/usr/bin/mmdebstrap"),
    ("btrfs-progs", MKFS_BTRFS),
    ("xfsprogs", MKFS_XFS),
    ("e2fsprogs", MKFS_EXT4),
];

/// Guests make a btrfs, an xfs and an ext4 that encrypts with these (busybox has none of them;
/// its mke2fs knows no encryption).
pub const MKFS_BTRFS: &str = "/sbin/mkfs.btrfs";
pub const MKFS_XFS: &str = "/sbin/mkfs.xfs";
pub const MKFS_EXT4: &str = "/sbin/mkfs.ext4";

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

/// Where a kernel's modules live: `modules-{label}/<release>/`, with `<name>.ko` files and `order`.
fn modules_dir(label: &str) -> PathBuf {
    cache_dir().join(format!("modules-{label}"))
}

/// Whether the kernel's modules were extracted (`order` is written last, so it marks completion),
/// for today's [`GUEST_MODULES`] (a cache from before a module was added is fetched again).
fn has_modules(label: &str) -> bool {
    std::fs::read_dir(modules_dir(label)).is_ok_and(|entries| {
        entries.filter_map(Result::ok).any(|entry| {
            entry.path().join("order").exists()
                && std::fs::read_to_string(entry.path().join("wanted"))
                    .is_ok_and(|wanted| wanted == wanted_modules())
        })
    })
}

/// What `wanted` holds beside `order`: the [`GUEST_MODULES`] it was made for.
fn wanted_modules() -> String {
    GUEST_MODULES.join("\n") + "\n"
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
            .all(|(label, _)| kernel_image(label).exists() && has_modules(label))
        && crate::debian::root_archive().exists()
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
        // Caches from before modules were kept have the image alone: fetch the package again.
        if kernel_image(label).exists() && has_modules(label) {
            continue;
        }
        apt_update(&mut apt_updated)?;
        fetch_kernel(label, pattern)?;
    }
    // Only the packaging test needs it, and fails on its own (trying again) without it.
    if let Err(error) = crate::debian::ensure_root() {
        eprintln!("setup: the Debian root (for the packaging test) is not available: {error:#}");
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
/// has) and keeps only its kernel image and the modules in [`GUEST_MODULES`].
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
        // Staged in the work dir and renamed into place, so nothing is ever half there (guests
        // may be booting the old image right now). Modules go last: they mark the kernel done.
        let staged = work.join("modules");
        let loaded = extract_modules(&extract, &staged)
            .with_context(|| format!("extract modules from {package}"))?;
        let copied = work.join("vmlinuz");
        std::fs::copy(&image, &copied)?;
        std::fs::rename(&copied, kernel_image(label))?;
        std::fs::write(
            cache_dir().join(format!("vmlinuz-{label}.package")),
            package,
        )?;
        let modules = modules_dir(label);
        let _ = std::fs::remove_dir_all(&modules);
        std::fs::rename(&staged, &modules)
            .with_context(|| format!("move modules to {}", modules.display()))?;
        std::fs::remove_dir_all(&work)?;
        eprintln!(
            "setup: kernel {label} from {package}, modules {}",
            loaded.join(" ")
        );
        return Ok(());
    }
    bail!("no package matching {pattern} could be downloaded (run apt-get update?)")
}

/// Copies [`GUEST_MODULES`] and the modules they depend on from the unpacked package `extract`
/// to `out/<release>/<name>.ko` (decompressed), then writes `order`. Returns the load order.
fn extract_modules(extract: &Path, out: &Path) -> anyhow::Result<Vec<String>> {
    let lib = extract.join("lib/modules");
    let release = std::fs::read_dir(&lib)
        .with_context(|| format!("read {}", lib.display()))?
        .filter_map(Result::ok)
        .find(|entry| entry.path().is_dir())
        .with_context(|| format!("no release directory in {}", lib.display()))?
        .file_name();
    let mut files = HashMap::new();
    index_modules(&lib.join(&release).join("kernel"), &mut files)?;
    let builtin_list = lib.join(&release).join("modules.builtin");
    let builtin = builtin_modules(
        &std::fs::read_to_string(&builtin_list)
            .with_context(|| format!("read {}", builtin_list.display()))?,
    );
    let target = out.join(&release);
    std::fs::create_dir_all(&target)?;
    let mut order = Vec::new();
    let mut seen = HashSet::new();
    for name in GUEST_MODULES {
        if files.contains_key(name) || !builtin.contains(name) {
            add_module(name, &files, &target, &mut seen, &mut order)?;
        }
    }
    std::fs::write(target.join("wanted"), wanted_modules())?;
    std::fs::write(target.join("order"), order.join("\n") + "\n")?;
    Ok(order)
}

/// Module name (dashes made underscores, as the kernel names them) to file, under `dir`.
fn index_modules(dir: &Path, files: &mut HashMap<String, PathBuf>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            index_modules(&path, files)?;
            continue;
        }
        let file = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if let Some(name) = file
            .strip_suffix(".ko")
            .or_else(|| file.strip_suffix(".ko.xz"))
        {
            files.insert(name.replace('-', "_"), path);
        }
    }
    Ok(())
}

/// Copies module `name` to `target`, after its dependencies, appending each to `order`.
fn add_module(
    name: &str,
    files: &HashMap<String, PathBuf>,
    target: &Path,
    seen: &mut HashSet<String>,
    order: &mut Vec<String>,
) -> anyhow::Result<()> {
    if !seen.insert(name.to_owned()) {
        return Ok(());
    }
    let path = files
        .get(name)
        .with_context(|| format!("no module {name} in the package"))?;
    let bytes = if path.extension().is_some_and(|ext| ext == "xz") {
        let output = Command::new("xz")
            .arg("-dc")
            .arg(path)
            .output()
            .context("cannot run xz")?;
        if !output.status.success() {
            bail!("xz -dc {} failed: {}", path.display(), output.status);
        }
        output.stdout
    } else {
        std::fs::read(path).with_context(|| format!("read {}", path.display()))?
    };
    for dependency in module_depends(&bytes) {
        add_module(&dependency, files, target, seen, order)
            .with_context(|| format!("{name} depends on {dependency}"))?;
    }
    std::fs::write(target.join(format!("{name}.ko")), &bytes)?;
    order.push(name.to_owned());
    Ok(())
}

/// The names of the modules `modules.builtin` lists (paths such as `kernel/fs/fuse/fuse.ko`).
fn builtin_modules(list: &str) -> HashSet<String> {
    list.lines()
        .filter_map(|line| line.rsplit('/').next()?.strip_suffix(".ko"))
        .map(|name| name.replace('-', "_"))
        .collect()
}

/// The `depends=` entry of a module's .modinfo section: NUL-terminated, comma-separated names.
fn module_depends(bytes: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"\0depends=";
    let Some(start) = bytes.windows(KEY.len()).position(|window| window == KEY) else {
        return Vec::new();
    };
    let value = &bytes[start + KEY.len()..];
    let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
    String::from_utf8_lossy(&value[..end])
        .split(',')
        .filter(|name| !name.is_empty())
        .map(|name| name.replace('-', "_"))
        .collect()
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
    use super::{builtin_modules, module_depends, version_key};

    #[test]
    fn builtin_modules_named_as_the_kernel_names_them() {
        let builtin = builtin_modules("kernel/fs/fuse/fuse.ko\nkernel/fs/nfs_common/nfs-acl.ko\n");
        assert!(builtin.contains("fuse") && builtin.contains("nfs_acl"));
        assert!(!builtin.contains("overlay"));
    }

    #[test]
    fn depends_read_from_modinfo() {
        let modinfo = b"\x7fELF\0license=GPL\0depends=sunrpc,nfs-acl\0intree=Y\0";
        assert_eq!(module_depends(modinfo), ["sunrpc", "nfs_acl"]);
        assert!(module_depends(b"\0depends=\0name=overlay\0").is_empty());
    }

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
