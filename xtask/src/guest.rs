//! Guests: a busybox initramfs carrying the project's binaries, booted under QEMU (TCG) on a
//! Debian kernel with the BPF LSM switched on.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{cmd_output, run, setup};

/// Where the project's binaries go inside the guest (busybox owns /bin).
pub const GUEST_BIN: &str = "/usr/local/bin";

/// LSMs the guests boot with: the BPF LSM on, as on a production host.
pub const LSM_ON: &str = "lsm=lockdown,capability,bpf";
/// The same kernel with the BPF LSM off, to prove the daemon refuses to run there.
pub const LSM_OFF: &str = "lsm=lockdown,capability";

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/usr/local/bin:/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mount -t tmpfs run /run
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t securityfs securityfs /sys/kernel/security
mount -t bpf bpf /sys/fs/bpf
# overlayfs and NFS are modules in these kernels; setup put them here, dependencies first.
m=/lib/modules/$(uname -r)
[ -f $m/order ] && for name in $(cat $m/order); do
  insmod $m/$name.ko || echo "guest: insmod $name failed"
done
echo "guest: modules:" $(cut -d' ' -f1 /proc/modules)
ip link set lo up
mode=$(sed -n 's/.*gk\.mode=\([a-z-]*\).*/\1/p' /proc/cmdline)
filter=$(sed -n 's/.*gk\.filter=\([A-Za-z0-9_:,]*\).*/\1/p' /proc/cmdline | tr , ' ')
echo "guest: kernel $(uname -r), LSMs $(cat /sys/kernel/security/lsm), mode $mode"
case "$mode" in
  tests) guest-tests --test-threads=1 --skip refuses_without_bpf_lsm $filter 2>&1 ;;
  nolsm) guest-tests --test-threads=1 --exact refuses_without_bpf_lsm 2>&1 ;;
  demo) gatekeeper-demo 2>&1 ;;
  bench) gatekeeper-bench run 2>&1 ;;
  *) echo "guest: unknown mode $mode" ;;
esac
echo "guest: finished with status $?"
poweroff -f
"#;

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
alice:x:1000:1000:reviewer:/tmp:/bin/sh\n\
bob:x:1001:1001:not a reviewer:/tmp:/bin/sh\n";
const GROUP: &str = "root:x:0:\nalice:x:1000:\nbob:x:1001:\n";
const HOSTS: &str = "127.0.0.1 localhost\n::1 localhost\n";
/// Host names come from /etc/hosts alone: guests have no DNS.
const NSSWITCH: &str = "hosts: files\n";

/// Builds `out/initramfs.cpio` holding busybox, `binaries` and the libraries they link.
pub fn build_initramfs(out: &Path, binaries: &[(PathBuf, &str)]) -> anyhow::Result<PathBuf> {
    let root = populate_root(out, binaries)?;
    pack(out, &root)
}

/// Lays out `out/root`: busybox, `binaries`, the libraries they link, /etc and /init.
pub fn populate_root(out: &Path, binaries: &[(PathBuf, &str)]) -> anyhow::Result<PathBuf> {
    let root = out.join("root");
    if root.exists() {
        std::fs::remove_dir_all(&root)?;
    }
    for dir in [
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "usr/local/bin",
        "etc",
        "proc",
        "sys",
        "dev",
        "tmp",
        "run",
        "root",
        "var/lib",
    ] {
        std::fs::create_dir_all(root.join(dir))?;
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))?;
    let mut libraries = Vec::new();
    for (source, name) in binaries {
        let target = root.join(GUEST_BIN.trim_start_matches('/')).join(name);
        std::fs::copy(source, &target)
            .with_context(|| format!("copy {} into the guest", source.display()))?;
        libraries.extend(linked_libraries(source, &[])?);
    }
    copy_libraries(&root, libraries, None)?;
    copy_modules(&root)?;
    std::fs::write(root.join("etc/passwd"), PASSWD)?;
    std::fs::write(root.join("etc/group"), GROUP)?;
    std::fs::write(root.join("etc/hosts"), HOSTS)?;
    std::fs::write(root.join("etc/nsswitch.conf"), NSSWITCH)?;
    let init = root.join("init");
    std::fs::write(&init, INIT)?;
    run(Command::new("chmod").arg("755").arg(&init))?;
    Ok(root)
}

/// Copies every kernel's modules (`modules-<label>/<release>` in the cache) to
/// `/lib/modules/<release>`: one initramfs serves all kernels, and /init picks by `uname -r`.
fn copy_modules(root: &Path) -> anyhow::Result<()> {
    let cache = setup::cache_dir();
    let entries = std::fs::read_dir(&cache).with_context(|| format!("read {}", cache.display()))?;
    for entry in entries {
        let entry = entry?;
        if !entry.file_name().to_string_lossy().starts_with("modules-") {
            continue;
        }
        for release in std::fs::read_dir(entry.path())? {
            let release = release?;
            let target = root.join("lib/modules").join(release.file_name());
            std::fs::create_dir_all(&target)?;
            for file in std::fs::read_dir(release.path())? {
                let file = file?;
                std::fs::copy(file.path(), target.join(file.file_name()))
                    .with_context(|| format!("copy {} into the guest", file.path().display()))?;
            }
        }
    }
    Ok(())
}

/// Copies `libraries` into the guest `root` at the paths the loader looks for them; those under
/// `staged` (an unpacked package tree) go to their path inside it.
pub fn copy_libraries(
    root: &Path,
    mut libraries: Vec<PathBuf>,
    staged: Option<&Path>,
) -> anyhow::Result<()> {
    libraries.sort();
    libraries.dedup();
    for library in libraries {
        let inside = staged
            .and_then(|staged| library.strip_prefix(staged).ok())
            .unwrap_or(&library);
        let target = root.join(inside.strip_prefix("/").unwrap_or(inside));
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir)?;
        }
        // Follows symlinks: the guest gets the file under the name the loader asks for.
        std::fs::copy(&library, &target)
            .with_context(|| format!("copy {} into the guest", library.display()))?;
    }
    Ok(())
}

/// Packs `root` into `out/initramfs.cpio`.
pub fn pack(out: &Path, root: &Path) -> anyhow::Result<PathBuf> {
    let cpio = out.join("initramfs.cpio");
    run(Command::new("sh")
        .arg("-c")
        .arg("find . -print0 | cpio --null --create --format=newc --quiet > \"$0\"")
        .arg(&cpio)
        .current_dir(root))?;
    Ok(cpio)
}

/// Shared libraries `binary` loads, as `ldd` resolves them on this machine, looking in
/// `extra_dirs` first.
pub fn linked_libraries(binary: &Path, extra_dirs: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut ldd = Command::new("ldd");
    ldd.arg(binary);
    if !extra_dirs.is_empty() {
        ldd.env("LD_LIBRARY_PATH", std::env::join_paths(extra_dirs)?);
    }
    let listing = cmd_output(&mut ldd)?;
    Ok(listing
        .lines()
        .filter_map(|line| {
            let path = match line.split_once("=>") {
                Some((_, resolved)) => resolved.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

/// Boots `kernel` with the initramfs and returns everything the guest printed. With `echo`, the
/// console is also shown live.
pub fn boot(
    kernel: &Path,
    initramfs: &Path,
    cmdline: &str,
    timeout: Duration,
    echo: bool,
) -> anyhow::Result<String> {
    let shown: fn(&str) -> bool = if echo { |_| true } else { |_| false };
    boot_with(
        kernel,
        initramfs,
        cmdline,
        timeout,
        shown,
        DEFAULT_MEMORY_MB,
        &[],
    )
}

/// Guest memory for tests and the demo.
pub const DEFAULT_MEMORY_MB: u32 = 2048;

/// [`boot`] with `memory_mb` of guest memory and more QEMU arguments, showing live the console
/// lines `echo` picks.
pub fn boot_with(
    kernel: &Path,
    initramfs: &Path,
    cmdline: &str,
    timeout: Duration,
    echo: fn(&str) -> bool,
    memory_mb: u32,
    qemu_args: &[&str],
) -> anyhow::Result<String> {
    if !kernel.exists() {
        bail!("{} is missing: run cargo xtask setup", kernel.display());
    }
    let mut child = Command::new("qemu-system-x86_64")
        // KVM fails with Debian's kernels on these machines: software emulation it is. One TCG
        // thread for both vCPUs: with a thread per vCPU, the kernel patching its own code as BPF
        // trampolines attach and detach (int3, then the new instruction) was seen to leave a stale
        // int3 on the other vCPU, an oops that real hardware does not have.
        .args(["-accel", "tcg,thread=single", "-cpu", "max", "-smp", "2"])
        .arg("-m")
        .arg(memory_mb.to_string())
        .args(qemu_args)
        .args([
            "-display",
            "none",
            "-serial",
            "stdio",
            "-monitor",
            "none",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initramfs)
        .arg("-append")
        .arg(format!("console=ttyS0 panic=-1 quiet loglevel=1 {cmdline}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("start qemu-system-x86_64 (run cargo xtask setup)")?;
    let stdout = child.stdout.take().context("qemu stdout")?;
    let (lines, received) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let line = line.trim_end_matches('\r').to_owned();
            if echo(&line) {
                println!("{line}");
            }
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + timeout;
    let mut output = String::new();
    loop {
        match received.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                output.push_str(&line);
                output.push('\n');
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            output.push_str(&format!("xtask: guest killed after {timeout:?}\n"));
            break;
        }
    }
    let _ = child.wait();
    Ok(output)
}
