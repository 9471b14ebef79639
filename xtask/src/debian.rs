//! The packaging test's guest: a real Debian bookworm with systemd as PID 1, built from Debian's
//! packages by mmdebstrap and cached beside the kernels. The whole root is the initramfs (both
//! cloud kernels unpack it without a module); each run appends a small archive with the
//! packages under test, the test program and the unit that runs it.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::Context as _;

use crate::{guest, run, setup, workspace_root};

/// How long one packaging guest may take (about 3 min on an idle machine).
pub const TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// The root lives in memory: room for it, apt and the daemon.
const MEMORY_MB: u32 = 1536;

const PACKAGES: &str = "systemd,systemd-sysv,dbus,iproute2,curl,ca-certificates,passwd";

/// Runs the test program once the system is up; its end powers the guest off.
const TEST_UNIT: &str = "[Unit]
Description=Gatekeeper packaging test
After=multi-user.target
SuccessAction=poweroff
FailureAction=poweroff

[Service]
Type=simple
WorkingDirectory=/root
EnvironmentFile=/root/versions.env
ExecStart=/bin/sh -c '/usr/local/bin/package-tests --test-threads=1 --color=never 2>&1; echo \"guest: finished with status $?\"'
StandardOutput=tty
StandardError=inherit
TTYPath=/dev/ttyS0
TTYReset=no
TTYVHangup=no
";

/// The cached root, as a cpio archive.
pub fn root_archive() -> PathBuf {
    setup::cache_dir().join("debian-bookworm-root.cpio")
}

/// Builds the root once (about a minute with a good mirror): mmdebstrap, then cpio.
pub fn ensure_root() -> anyhow::Result<()> {
    let archive = root_archive();
    if archive.exists() {
        return Ok(());
    }
    eprintln!("setup: building a Debian bookworm root with systemd for the packaging test");
    let work = setup::cache_dir().join("debian-build");
    if work.exists() {
        std::fs::remove_dir_all(&work)?;
    }
    let root = work.join("root");
    std::fs::create_dir_all(&root)?;
    let tar = work.join("root.tar");
    let hooks = [
        "echo gkguest > \"$1/etc/hostname\"",
        "printf '127.0.0.1 localhost gkguest\\n::1 localhost\\n' > \"$1/etc/hosts\"",
        "echo 0123456789abcdef0123456789abcdef > \"$1/etc/machine-id\"",
        "ln -sf /sbin/init \"$1/init\"",
        // The console is the test's: no login prompts on it.
        "ln -sf /dev/null \"$1/etc/systemd/system/serial-getty@ttyS0.service\"",
        "ln -sf /dev/null \"$1/etc/systemd/system/getty@tty1.service\"",
        "rm -f \"$1\"/var/lib/apt/lists/*_Packages \"$1\"/var/cache/apt/*.bin",
    ];
    let mut mmdebstrap = Command::new("mmdebstrap");
    mmdebstrap.args([
        "--quiet",
        "--variant=minbase",
        &format!("--include={PACKAGES}"),
        "--dpkgopt=path-exclude=/usr/share/man/*",
        "--dpkgopt=path-exclude=/usr/share/doc/*",
        "--dpkgopt=path-exclude=/usr/share/locale/*",
        "--dpkgopt=path-exclude=/usr/share/info/*",
    ]);
    for hook in hooks {
        mmdebstrap.arg(format!("--customize-hook={hook}"));
    }
    mmdebstrap
        .arg("bookworm")
        .arg(&tar)
        .arg("deb http://deb.debian.org/debian bookworm main");
    run(&mut mmdebstrap)?;
    run(Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-xpf")
        .arg(&tar))?;
    let packed = guest::pack(&work, &root)?;
    std::fs::rename(&packed, &archive)?;
    std::fs::remove_dir_all(&work)?;
    Ok(())
}

/// Builds the two packages (the second an upgrade of the first) and the boot archive: the
/// cached root with the run's files appended.
pub fn build_boot_archive() -> anyhow::Result<PathBuf> {
    ensure_root()?;
    let version = env!("CARGO_PKG_VERSION");
    let upgrade = format!("{version}+upgrade1");
    let first = crate::package::package(Some(version))?;
    let second = crate::package::package(Some(&upgrade))?;
    let program = crate::test_executable("package")?;

    let out = workspace_root().join("target/debian");
    let overlay = out.join("overlay");
    if overlay.exists() {
        std::fs::remove_dir_all(&overlay)?;
    }
    let place = |from: &Path, to: &str, mode: u32| -> anyhow::Result<()> {
        let to = overlay.join(to);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(from, &to).with_context(|| format!("copy {}", from.display()))?;
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode))?;
        Ok(())
    };
    for deb in [&first, &second] {
        let name = deb.file_name().context("package name")?.to_string_lossy();
        place(deb, &format!("root/{name}"), 0o644)?;
    }
    place(&program, "usr/local/bin/package-tests", 0o755)?;
    let units = overlay.join("etc/systemd/system");
    std::fs::create_dir_all(units.join("multi-user.target.wants"))?;
    std::fs::write(units.join("gk-test.service"), TEST_UNIT)?;
    std::os::unix::fs::symlink(
        "/etc/systemd/system/gk-test.service",
        units.join("multi-user.target.wants/gk-test.service"),
    )?;
    std::fs::write(
        overlay.join("root/versions.env"),
        format!("GK_VERSION={version}\nGK_UPGRADE={upgrade}\n"),
    )?;
    // Directory entries in the appended archive set modes too: keep the root's.
    std::fs::set_permissions(overlay.join("root"), std::fs::Permissions::from_mode(0o700))?;
    let appended = guest::pack(&out, &overlay)?;
    let boot = out.join("boot.cpio");
    run(Command::new("sh")
        .arg("-c")
        .arg("cat \"$0\" \"$1\" > \"$2\"")
        .arg(root_archive())
        .arg(&appended)
        .arg(&boot))?;
    Ok(boot)
}

/// Boots the Debian guest on kernel `label` and returns its console.
pub fn boot(label: &str, archive: &Path) -> anyhow::Result<String> {
    guest::boot_with(
        &setup::kernel_image(label),
        archive,
        &format!("{} systemd.show_status=0", guest::LSM_ON),
        TIMEOUT,
        |_| false,
        MEMORY_MB,
        &[],
    )
}
