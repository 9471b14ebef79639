//! `cargo xtask package`: the Debian package, laid out from `packaging/` and built with
//! Debian's own `dpkg-deb` (already on every Debian host: nothing to install first).

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context as _;

use crate::{cargo, run, workspace_root};

/// What goes where, and with which mode.
const FILES: &[(&str, &str, u32)] = &[
    ("target/release/gatekeeper", "usr/bin/gatekeeper", 0o755),
    ("packaging/config.toml", "etc/gatekeeper/config.toml", 0o600),
    (
        "packaging/gatekeeper.service",
        "lib/systemd/system/gatekeeper.service",
        0o644,
    ),
    (
        "packaging/gatekeeper-agent@.service",
        "lib/systemd/system/gatekeeper-agent@.service",
        0o644,
    ),
    (
        "packaging/agents.slice",
        "lib/systemd/system/agents.slice",
        0o644,
    ),
    ("README.md", "usr/share/doc/gatekeeper/README.md", 0o644),
    (
        "packaging/copyright",
        "usr/share/doc/gatekeeper/copyright",
        0o644,
    ),
    ("packaging/debian/postinst", "DEBIAN/postinst", 0o755),
    ("packaging/debian/prerm", "DEBIAN/prerm", 0o755),
    ("packaging/debian/postrm", "DEBIAN/postrm", 0o755),
];

fn control(version: &str) -> String {
    format!(
        "Package: gatekeeper\n\
         Version: {version}\n\
         Architecture: amd64\n\
         Maintainer: Gatekeeper developers <gatekeeper@localhost>\n\
         Section: admin\n\
         Priority: optional\n\
         Depends: libc6 (>= 2.34), libgcc-s1\n\
         Recommends: systemd\n\
         Description: privileged actions of AI agents wait for a human\n \
         eBPF programs on LSM hooks deny protected actions of processes in agent cgroups;\n \
         the daemon turns each denial into an approval request for reviewers and an\n \
         approval into a single-use grant. Needs a kernel with the BPF LSM on.\n"
    )
}

/// Builds the release binary and `target/package/gatekeeper_VERSION_amd64.deb`; returns its path.
pub fn package(version: Option<&str>) -> anyhow::Result<PathBuf> {
    let version = version.unwrap_or(env!("CARGO_PKG_VERSION"));
    anyhow::ensure!(
        !version.is_empty()
            && version.starts_with(|c: char| c.is_ascii_digit())
            && version
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".+~-".contains(c)),
        "{version:?} is not a Debian version (digits first, then letters, digits and .+~-)"
    );
    run(cargo().args(["build", "--release", "-p", "gatekeeper-daemon"]))?;
    let root = workspace_root();
    let out = root.join("target/package");
    let stage = out.join(format!("gatekeeper_{version}_amd64"));
    if stage.exists() {
        std::fs::remove_dir_all(&stage)?;
    }
    for (from, to, mode) in FILES {
        let to = stage.join(to);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(root.join(from), &to)
            .with_context(|| format!("copy {from} into the package"))?;
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(*mode))?;
    }
    std::fs::create_dir_all(stage.join("var/lib/gatekeeper"))?;
    std::fs::set_permissions(
        stage.join("var/lib/gatekeeper"),
        std::fs::Permissions::from_mode(0o700),
    )?;
    std::fs::write(stage.join("DEBIAN/control"), control(version))?;
    std::fs::write(
        stage.join("DEBIAN/conffiles"),
        "/etc/gatekeeper/config.toml\n",
    )?;
    let deb = out.join(format!("gatekeeper_{version}_amd64.deb"));
    build_deb(&stage, &deb)?;
    println!("package: {}", deb.display());
    Ok(deb)
}

fn build_deb(stage: &Path, deb: &Path) -> anyhow::Result<()> {
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zxz", "--build"])
        .arg(stage)
        .arg(deb))
}
