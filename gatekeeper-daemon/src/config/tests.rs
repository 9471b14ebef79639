use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use super::{
    parse::{
        DEFAULT_CHECKPOINT_EVERY, DEFAULT_LISTEN, DEFAULT_MAX_CLIENTS, DEFAULT_MAX_PENDING,
        DEFAULT_RETENTION, DEFAULT_WEBHOOK_ATTEMPTS, DEFAULT_WEBHOOK_BURST, DEFAULT_WEBHOOK_REFILL,
    },
    *,
};
use crate::cgroups;

/// A config whose host-dependent parts (cgroup, protected file) point at things that exist on
/// any Linux host with cgroup v2.
fn config_text(extra: &str) -> String {
    let cgroup = cgroups::mount_point().expect("cgroup v2 mounted");
    format!(
        r#"
[agents]
cgroups = ["{}"]
[[protect.exec]]
path = "/bin/sh"
name = "shell"
[approval]
reviewers = ["root"]
grant_ttl = "60s"
request_ttl = "15m"
{extra}
"#,
        cgroup.display()
    )
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(Path::new("test.toml"), text)
}

/// Parses and checks the host, as `Config::load` does.
fn load(text: &str) -> Result<Config, ConfigError> {
    let config = parse(text)?;
    config.check_host()?;
    Ok(config)
}

fn error_of(text: &str) -> String {
    match load(text) {
        Ok(_) => panic!("config was accepted:\n{text}"),
        Err(error) => error.to_string(),
    }
}

/// The keys of the problems `result` reports, in order.
fn keys_of(result: Result<impl std::fmt::Debug, ConfigError>) -> Vec<String> {
    match result {
        Err(ConfigError::Invalid { problems, .. }) => {
            problems.into_iter().map(|problem| problem.key).collect()
        }
        other => panic!("expected problems, got {other:?}"),
    }
}

#[test]
fn valid_config_has_defaults() {
    let config = load(&config_text(
        "[[webhook]]\nurl = \"http://127.0.0.1:9000/hook\"\nsecret = \"0123456789abcdef\"",
    ))
    .expect("valid config");
    assert_eq!(config.socket, PathBuf::from(DEFAULT_SOCKET));
    assert_eq!(config.grant_ttl, Duration::from_secs(60));
    assert_eq!(config.request_ttl, Duration::from_secs(15 * 60));
    assert_eq!(config.exec_rules[0].name, "shell");
    assert_eq!(config.webhooks[0].attempts, DEFAULT_WEBHOOK_ATTEMPTS);
    assert_eq!(config.listen, Some(DEFAULT_LISTEN.parse().unwrap()));
}

#[test]
fn new_keys_have_defaults() {
    let config = parse(&config_text(
        "[[webhook]]\nurl = \"http://127.0.0.1:9000/hook\"\nsecret = \"0123456789abcdef\"",
    ))
    .expect("valid config");
    assert_eq!(config.max_pending, DEFAULT_MAX_PENDING);
    assert_eq!(config.max_pending, 16);
    assert_eq!(config.retention, DEFAULT_RETENTION);
    assert_eq!(config.retention, Duration::from_secs(3600));
    assert_eq!(config.checkpoint_every, DEFAULT_CHECKPOINT_EVERY);
    assert_eq!(config.checkpoint_every, 1000);
    assert_eq!(config.max_clients, DEFAULT_MAX_CLIENTS);
    assert_eq!(config.max_clients, 256);
    assert_eq!(config.webhooks[0].burst, DEFAULT_WEBHOOK_BURST);
    assert_eq!(config.webhooks[0].burst, 10);
    assert_eq!(config.webhooks[0].refill, DEFAULT_WEBHOOK_REFILL);
    assert_eq!(config.webhooks[0].refill, Duration::from_secs(6));
}

#[test]
fn new_keys_are_read() {
    let text = config_text(
        r#"
[daemon]
retention = "2h"
checkpoint_every = 50
max_clients = 8
[[webhook]]
url = "http://127.0.0.1:9000/hook"
secret = "0123456789abcdef"
burst = 1000
refill = "1m"
"#,
    )
    .replace("[agents]", "[agents]\nmax_pending = 1000");
    let config = parse(&text).expect("valid config");
    assert_eq!(config.max_pending, 1000);
    assert_eq!(config.retention, Duration::from_secs(2 * 3600));
    assert_eq!(config.checkpoint_every, 50);
    assert_eq!(config.max_clients, 8);
    assert_eq!(config.webhooks[0].burst, 1000);
    assert_eq!(config.webhooks[0].refill, Duration::from_secs(60));
}

#[test]
fn new_keys_are_bounded() {
    let hook = "[[webhook]]\nurl = \"http://127.0.0.1:9000/hook\"\nsecret = \"0123456789abcdef\"";
    let daemon = |line: &str| config_text(&format!("[daemon]\n{line}"));
    let agents = |line: &str| config_text("").replace("[agents]", &format!("[agents]\n{line}"));
    let webhook = |line: &str| config_text(&format!("{hook}\n{line}"));
    let accepted = [
        agents("max_pending = 1"),
        agents("max_pending = 1000"),
        daemon("checkpoint_every = 10"),
        daemon("checkpoint_every = 1000000"),
        daemon("max_clients = 8"),
        daemon("max_clients = 65536"),
        webhook("burst = 1"),
        webhook("burst = 1000"),
        webhook("refill = \"1ms\""),
    ];
    for text in accepted {
        parse(&text).unwrap_or_else(|error| panic!("{error}\n{text}"));
    }
    let refused = [
        (agents("max_pending = 0"), "agents.max_pending"),
        (agents("max_pending = 1001"), "agents.max_pending"),
        (agents("max_pending = -1"), "agents.max_pending"),
        (daemon("retention = \"0s\""), "daemon.retention"),
        (daemon("retention = \"forever\""), "daemon.retention"),
        (daemon("checkpoint_every = 9"), "daemon.checkpoint_every"),
        (
            daemon("checkpoint_every = 1000001"),
            "daemon.checkpoint_every",
        ),
        (daemon("max_clients = 7"), "daemon.max_clients"),
        (daemon("max_clients = 65537"), "daemon.max_clients"),
        (webhook("burst = 0"), "webhook[0].burst"),
        (webhook("burst = 1001"), "webhook[0].burst"),
        (webhook("refill = \"0s\""), "webhook[0].refill"),
    ];
    for (text, key) in refused {
        assert_eq!(keys_of(parse(&text)), [key], "{text}");
    }
}

#[test]
fn every_problem_is_reported_with_its_key() {
    let text = config_text(
        r#"
[daemon]
listen = "nowhere"
resolve_interval = "0s"
[[protect.connect]]
cidr = "10.0.0.0/8"
ports = [22, "90-80", 0]
protocol = "icmp"
[[webhook]]
url = "http://127.0.0.1:1/"
secret = "short"
[[webhook]]
kind = "pager"
url = "ftp://example/"
"#,
    )
    .replace("\"60s\"", "\"sixty\"")
    .replace("[\"root\"]", "[\"root\", \" \"]");
    let error = parse(&text).expect_err("several problems");
    let expected = [
        "daemon.listen",
        "daemon.resolve_interval",
        "protect.connect[0].ports[1]",
        "protect.connect[0].ports[2]",
        "protect.connect[0].protocol",
        "approval.reviewers[1]",
        "approval.grant_ttl",
        "webhook[0].secret",
        "webhook[1].kind",
        "webhook[1].url",
    ];
    let message = error.to_string();
    assert!(
        message.starts_with("invalid config test.toml:\n"),
        "{message}"
    );
    for key in expected {
        assert!(
            message.contains(&format!("\n  {key}: ")),
            "{key}: {message}"
        );
    }
    assert_eq!(message.lines().count(), 1 + expected.len(), "{message}");
    assert_eq!(keys_of(Err::<(), _>(error)), expected);
}

#[test]
fn missing_sections_are_problems_not_syntax_errors() {
    assert_eq!(
        keys_of(parse("")),
        [
            "agents.cgroups",
            "approval.reviewers",
            "approval.grant_ttl",
            "approval.request_ttl"
        ]
    );
}

#[test]
fn parse_leaves_the_host_to_check_host() {
    let text = r#"
[agents]
cgroups = ["/nonexistent/cgroup", "/proc", "/nonexistent/other"]
exec = "allowlist"
allow = ["/nonexistent/allowed", "/bin/sh"]
[[protect.exec]]
path = "/nonexistent/protected"
[[protect.exec]]
path = "/tmp"
[approval]
reviewers = ["root"]
grant_ttl = "60s"
request_ttl = "15m"
"#;
    let config = parse(text).expect("parsing consults no filesystem");
    assert_eq!(
        keys_of(config.check_host()),
        [
            "agents.cgroups[0]",
            "agents.cgroups[1]",
            "agents.cgroups[2]",
            "agents.allow[0]",
            "protect.exec[0].path",
            "protect.exec[1].path",
        ]
    );
    let message = config.check_host().expect_err("missing paths").to_string();
    for path in [
        "/nonexistent/cgroup",
        "/nonexistent/allowed",
        "/nonexistent/protected",
    ] {
        assert!(message.contains(path), "{path}: {message}");
    }
}

#[test]
fn unknown_key_is_named() {
    let error = error_of(&config_text("[daemon]\nsockett = \"/x\""));
    assert!(error.contains("sockett"), "{error}");
}

#[test]
fn the_socket_needs_a_directory_of_its_own_and_another_name_than_the_agents() {
    for (socket, expected) in [
        ("/api.sock", "directory of the daemon's own"),
        ("/run/api.sock", "directory of the daemon's own"),
        ("run/gatekeeper/api.sock", "absolute"),
        ("/run/gatekeeper/agent.sock", "agents' socket's name"),
    ] {
        let error = error_of(&config_text(&format!("[daemon]\nsocket = \"{socket}\"")));
        assert!(error.contains("daemon.socket"), "{socket}: {error}");
        assert!(error.contains(expected), "{socket}: {error}");
    }
    let config = load(&config_text(
        "[daemon]\nsocket = \"/run/gk/reviewers.sock\"",
    ))
    .unwrap();
    assert_eq!(
        agent_socket(&config.socket),
        PathBuf::from("/run/gk/agent.sock")
    );
}

/// `config_text` with `host_paths = [paths]` in `[agents]`.
fn with_host_paths(paths: &str) -> String {
    config_text("").replacen(
        "[agents]\n",
        &format!("[agents]\nhost_paths = [{paths}]\n"),
        1,
    )
}

#[test]
fn host_paths_become_write_rules_where_they_are_directories() {
    let dir = std::env::temp_dir();
    let text = with_host_paths(&format!("\"{}\", \"/nonexistent/dir\"", dir.display()));
    let file = dir.join(format!("gk-host-paths-{}.toml", std::process::id()));
    std::fs::write(&file, &text).unwrap();
    let config = Config::load(&file);
    std::fs::remove_file(&file).unwrap();
    // Beside the host services' directories this host has (see host_services).
    let guarded: Vec<_> = config
        .unwrap()
        .file_rules
        .iter()
        .filter(|rule| rule.path.starts_with(&dir))
        .map(|rule| (rule.path.clone(), rule.access))
        .collect();
    assert_eq!(guarded, [(dir, gatekeeper_common::file_access::WRITE)]);
    let defaults = parse(&config_text("")).unwrap();
    assert!(defaults.host_paths.contains(&PathBuf::from("/etc")));
    let error = error_of(&with_host_paths("\"etc\""));
    assert!(error.contains("agents.host_paths[0]"), "{error}");
}

#[test]
fn file_systems_mounted_below_host_paths_are_guarded_too() {
    let base = std::env::temp_dir().join(format!("gk-host-mounts-{}", std::process::id()));
    let (host, below, beside) = (
        base.join("host"),
        base.join("host/sub"),
        base.join("beside"),
    );
    for dir in [&below, &beside] {
        std::fs::create_dir_all(dir).unwrap();
    }
    // A file mounted over one, as container runtimes mount /etc/resolv.conf.
    let file = host.join("resolv.conf");
    std::fs::write(&file, "").unwrap();
    let mut config = parse(&with_host_paths(&format!("\"{}\"", host.display()))).unwrap();
    assert!(!config.guards_host_paths());
    let mountinfo = format!(
        "22 1 0:21 / {} rw - tmpfs tmpfs rw\n23 1 0:22 / {} rw - tmpfs tmpfs rw\n24 1 0:23 / {} rw - tmpfs tmpfs rw\n25 1 0:24 /r {} rw - tmpfs tmpfs rw\n",
        host.display(),
        below.display(),
        beside.display(),
        file.display()
    );
    config.guard_host_paths();
    let mounted = host_guards(
        &config.guard_roots,
        &config.file_rules,
        &mount_table(mountinfo.as_bytes()),
    );
    config.file_rules.extend(mounted);
    let guarded: Vec<_> = config
        .file_rules
        .iter()
        .filter(|rule| rule.path.starts_with(&base))
        .map(|rule| rule.path.clone())
        .collect();
    assert_eq!(guarded, [host, below, file]);
    assert!(config.guards_host_paths());
    std::fs::remove_dir_all(&base).unwrap();
}

/// Mounts seen while the daemon runs: only those below a host path that no rule names yet get
/// a rule, each once.
#[test]
fn later_mounts_get_rules_once() {
    let base = std::env::temp_dir().join(format!("gk-later-mounts-{}", std::process::id()));
    let (host, first, second) = (base.join("host"), base.join("host/a"), base.join("host/b"));
    for dir in [&first, &second] {
        std::fs::create_dir_all(dir).unwrap();
    }
    let roots = super::guard_roots(std::slice::from_ref(&host), &[]);
    let at_start = super::host_guards(&roots, &[], &mounts_at(std::slice::from_ref(&first)));
    let paths = |rules: &[super::FileRule]| -> Vec<PathBuf> {
        rules.iter().map(|rule| rule.path.clone()).collect()
    };
    assert_eq!(paths(&at_start), [host.clone(), first.clone()]);
    let mounts = [
        first.clone(),
        second.clone(),
        second.clone(),
        base.join("elsewhere"),
        host.clone(),
    ];
    let later = super::host_guards(&roots, &at_start, &mounts_at(&mounts));
    assert_eq!(paths(&later), [second]);
    assert_eq!(later[0].access, gatekeeper_common::file_access::WRITE);
    std::fs::remove_dir_all(&base).unwrap();
}

/// A mount below a `[[protect.file]]` directory that is no host path takes the accesses of
/// every rule above it and the approval and name of the strictest; beside them, none.
#[test]
fn mounts_below_file_rule_directories_take_their_rules() {
    // Resolved, as the mount table names paths.
    let base = std::env::temp_dir()
        .canonicalize()
        .unwrap()
        .join(format!("gk-rule-mounts-{}", std::process::id()));
    let (secrets, inner, volume, beside) = (
        base.join("secrets"),
        base.join("secrets/inner"),
        base.join("secrets/inner/volume"),
        base.join("beside"),
    );
    for dir in [&volume, &beside] {
        std::fs::create_dir_all(dir).unwrap();
    }
    let rule = |path: &Path, name: &str, access: u32, approvals: u32| super::FileRule {
        path: path.to_owned(),
        name: name.to_owned(),
        access,
        approval: super::RulePolicy {
            approvals,
            ..super::RulePolicy::default()
        },
    };
    use gatekeeper_common::file_access::{READ, WRITE};
    let rules = [
        rule(&secrets, "prod secrets", READ, 2),
        rule(&inner, "inner configs", WRITE, 1),
    ];
    // Named through a symlink, as the config may: the mount table names resolved paths.
    let link = base.join("link");
    std::os::unix::fs::symlink(&secrets, &link).unwrap();
    let linked = [rule(&link, "linked secrets", READ, 1)];
    let guards = super::host_guards(
        &super::guard_roots(&[], &rules),
        &rules,
        &mounts_at(&[volume.clone(), beside.clone()]),
    );
    let shown: Vec<_> = guards
        .iter()
        .map(|guard| (guard.path.clone(), guard.name.as_str(), guard.access))
        .collect();
    assert_eq!(shown, [(volume.clone(), "prod secrets", READ | WRITE)]);
    assert_eq!(guards[0].approval.approvals, 2);
    // Mounted at a rule's own path: a guard beside that rule takes the rules above it, once.
    let roots = super::guard_roots(&[], &rules);
    let at_rule = super::host_guards(&roots, &rules, &mounts_at(std::slice::from_ref(&inner)));
    let shown: Vec<_> = (at_rule.iter())
        .map(|guard| (guard.path.clone(), guard.name.as_str(), guard.access))
        .collect();
    assert_eq!(shown, [(inner.clone(), "prod secrets", READ)]);
    let guarded = [rules.to_vec(), at_rule].concat();
    let again = super::host_guards(&roots, &guarded, &mounts_at(std::slice::from_ref(&inner)));
    assert!(again.is_empty(), "{again:?}");
    let roots = super::guard_roots(&[], &linked);
    let guards = super::host_guards(&roots, &linked, &mounts_at(std::slice::from_ref(&inner)));
    assert_eq!(guards.len(), 1, "{guards:?}");
    assert_eq!(
        (guards[0].name.as_str(), guards[0].access),
        ("linked secrets", READ)
    );
    // Pointed elsewhere while the daemon runs: the mounts below the new place are the rule's.
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(&beside, &link).unwrap();
    let below_beside = beside.join("mounted");
    std::fs::create_dir(&below_beside).unwrap();
    let guards = super::host_guards(
        &roots,
        &linked,
        &mounts_at(&[inner.clone(), below_beside.clone()]),
    );
    let paths: Vec<_> = guards.iter().map(|guard| guard.path.clone()).collect();
    assert_eq!(paths, [below_beside]);
    std::fs::remove_dir_all(&base).unwrap();
}

/// Mounts of a file system each, at `points`, on one mounted at `/`.
fn mounts_at(points: &[PathBuf]) -> Vec<super::Mount> {
    let lines: String = (points.iter().enumerate())
        .map(|(index, point)| {
            format!(
                "{} 1 0:{index} / {} rw - tmpfs t rw\n",
                index + 2,
                point.display()
            )
        })
        .collect();
    mount_table(format!("1 0 8:1 / / rw - ext4 /dev/root rw\n{lines}").as_bytes())[1..].to_vec()
}

#[test]
fn the_directories_above_mount_points_are_reached_in_their_own_file_system() {
    let mounts = mount_table(
        b"1 0 8:1 / / rw - ext4 /dev/root rw\n\
          2 1 0:30 / /srv/a/b/m rw - tmpfs t rw\n\
          3 2 0:31 / /srv/a/b/m/inner rw - tmpfs t rw\n\
          4 1 0:32 / /srv/a/c rw - tmpfs t rw\n\
          5 1 0:33 / /var rw - tmpfs t rw\n\
          6 1 0:34 / relative/m rw - tmpfs t rw\n\
          7 1 8:1 /data /mnt/data rw - ext4 /dev/root rw\n\
          8 7 0:35 / /mnt/data/x/y/m8 rw - tmpfs t rw\n\
          9 1 0:36 / /srv/a rw - tmpfs t rw\n",
    );
    assert_eq!(mounts.len(), 9);
    // Each route as `through-id:names@held_from`.
    let routes: Vec<(String, Vec<String>)> = super::mount_point_routes(&mounts)
        .into_iter()
        .map(|(mount, routes)| {
            let routes = (routes.into_iter())
                .map(|route| {
                    let names: Vec<_> = (route.names.iter())
                        .map(|name| name.to_string_lossy().into_owned())
                        .collect();
                    format!(
                        "{}:{}@{}",
                        route.through.id(),
                        names.join("/"),
                        route.held_from
                    )
                })
                .collect();
            (mount.point.display().to_string(), routes)
        })
        .collect();
    let expected = [
        // Through `/`, whatever is mounted over /srv/a since (mount 9).
        ("/srv/a/b/m", vec!["1:srv/a/b/m@0"]),
        ("/srv/a/c", vec!["1:srv/a/c@0"]),
        ("/mnt/data", vec!["1:mnt/data@0"]),
        // Through its parent, a bind of /data; else through `/`, from whose root /data itself
        // is above the parent's root and not held.
        ("/mnt/data/x/y/m8", vec!["7:x/y/m8@0", "1:data/x/y/m8@1"]),
        ("/srv/a", vec!["1:srv/a@0"]),
    ]
    .map(|(point, routes)| {
        (
            point.to_owned(),
            routes.into_iter().map(str::to_owned).collect(),
        )
    });
    assert_eq!(
        routes, expected,
        "mounts at their parent's root (inner, /var), and names that are not absolute, have no \
         directories to hold"
    );
    assert!(super::mount_point_routes(&[]).is_empty());
}

#[test]
fn overlays_show_their_layers_and_the_mounts_on_them() {
    let mounts = mount_table(
        b"1 0 8:1 / / rw - ext4 /dev/root rw\n\
          30 1 0:40 / /srv/ov rw,relatime shared:5 - overlay overlay rw,lowerdir=/srv/l1:/srv/l\\134:2:/srv/x\\134\\134::/srv/d3,upperdir=/srv/u,workdir=/srv/w,lowerdir+=/srv/p\\134lo,datadir+=/srv/dd\n\
          31 30 0:41 / /srv/ov/ua/m rw - tmpfs t rw\n\
          32 1 0:42 / /srv/free-ov rw - overlay overlay rw,lowerdir=l/ABC:l/DEF,upperdir=/srv/y,workdir=/srv/z\n\
          33 1 0:40 /ua /srv/ub rw - overlay overlay rw,lowerdir=/srv/l1,upperdir=/srv/u,workdir=/srv/w,userxattr\n\
          34 33 0:43 / /srv/ub/x/m rw - tmpfs t rw\n\
          35 30 0:44 / /srv/ov/top rw - tmpfs t rw\n",
    );
    let overlays = super::overlays(&mounts);
    let user_xattrs: Vec<bool> = overlays.iter().map(|overlay| overlay.user_xattrs).collect();
    assert_eq!(user_xattrs, [false, false, true]);
    let shown: Vec<(u64, Vec<String>, Vec<String>)> = overlays
        .into_iter()
        .map(|overlay| {
            let layers = (overlay.layers.iter())
                .map(|layer| layer.display().to_string())
                .collect();
            let below = (overlay.below.iter())
                .map(|(names, held_from)| {
                    let names: Vec<_> = names.iter().map(|name| name.to_string_lossy()).collect();
                    format!("{}@{held_from}", names.join("/"))
                })
                .collect();
            (overlay.mount.id(), layers, below)
        })
        .collect();
    let strings = |texts: &[&str]| texts.iter().map(|text| text.to_string()).collect();
    assert_eq!(
        shown,
        [
            (
                30,
                strings(&[
                    "/srv/u",
                    "/srv/l1",
                    "/srv/l:2",
                    "/srv/x\\",
                    "/srv/d3",
                    "/srv/p\\lo",
                    "/srv/dd"
                ]),
                // Behind the directories above each mount point and the mount point itself.
                strings(&["ua/m@0", "top@0"]),
            ),
            // Docker's short relative names, as they are.
            (32, strings(&["/srv/y", "l/ABC", "l/DEF"]), strings(&[])),
            // A bind of the overlay's `ua`: `ua` is above its root.
            (33, strings(&["/srv/u", "/srv/l1"]), strings(&["ua/x/m@1"])),
        ],
        "upper first; the mounter's escapes undone, `:` splitting lower layers but when escaped"
    );
}

#[test]
fn mount_table_decodes_the_kernels_escapes() {
    let points = |mountinfo: &[u8]| -> Vec<PathBuf> {
        mount_table(mountinfo)
            .into_iter()
            .map(|mount| mount.point)
            .collect()
    };
    let mountinfo =
        b"36 35 98:0 /mnt1 /mnt\\040two\\134x rw,noatime master:1 - ext3 /dev/root rw\n";
    assert_eq!(points(mountinfo), [PathBuf::from("/mnt two\\x")]);
    assert_eq!(points(b""), Vec::<PathBuf>::new());
    // A name that is no UTF-8 (an agent renamed a directory above a mount point) hides nothing.
    let mountinfo =
        b"40 1 0:30 / /tmp/d\xff/m rw - tmpfs t rw\n41 1 0:31 / /var/lib/new rw - tmpfs t rw\n";
    assert_eq!(
        points(mountinfo),
        [
            PathBuf::from(std::ffi::OsString::from_vec(b"/tmp/d\xff/m".to_vec())),
            PathBuf::from("/var/lib/new")
        ]
    );
    // Not a mount table: nothing, rather than made-up mounts.
    assert_eq!(points(b"x y 0:1 / /a\n12\n"), Vec::<PathBuf>::new());
}

/// A volume mounted below a bind of a protected directory made elsewhere (or of a directory
/// above one) is below the rule, as the kernel walks up from its mount point; a bind of the
/// directory itself and a mount beside are not.
#[test]
fn mounts_below_binds_of_rule_directories_take_their_rules() {
    let base = std::env::temp_dir()
        .canonicalize()
        .unwrap()
        .join(format!("gk-bind-mounts-{}", std::process::id()));
    let secrets = base.join("etc/secrets");
    let (bind, above, beside) = (base.join("bind"), base.join("above"), base.join("beside"));
    let (in_bind, in_above, stacked) = (bind.join("v"), above.join("secrets/w"), bind.clone());
    for dir in [&secrets, &in_bind, &in_above, &beside] {
        std::fs::create_dir_all(dir).unwrap();
    }
    let fs_path = |path: &Path| path.strip_prefix("/").unwrap().display().to_string();
    let mountinfo = format!(
        "1 0 8:1 / / rw - ext4 /dev/root rw\n\
         2 1 8:1 /{secrets} {bind} rw - ext4 /dev/root rw\n\
         3 2 0:50 / {in_bind} rw - tmpfs t rw\n\
         4 1 8:1 /{etc} {above} rw - ext4 /dev/root rw\n\
         5 4 0:51 / {in_above} rw - tmpfs t rw\n\
         6 1 0:52 / {beside} rw - tmpfs t rw\n",
        secrets = fs_path(&secrets),
        etc = fs_path(&base.join("etc")),
        bind = bind.display(),
        in_bind = in_bind.display(),
        above = above.display(),
        in_above = in_above.display(),
        beside = beside.display(),
    );
    let rules = [super::FileRule {
        path: secrets.clone(),
        name: "prod secrets".to_owned(),
        access: gatekeeper_common::file_access::READ,
        approval: super::RulePolicy::default(),
    }];
    let roots = super::guard_roots(&[], &rules);
    let guards = super::host_guards(&roots, &rules, &mount_table(mountinfo.as_bytes()));
    let shown: Vec<_> = (guards.iter())
        .map(|guard| (guard.path.clone(), guard.name.as_str()))
        .collect();
    assert_eq!(
        shown,
        [
            (in_bind.clone(), "prod secrets"),
            (in_above, "prod secrets")
        ]
    );
    // A file system mounted over the bind itself sits on the protected directory.
    let mountinfo = format!(
        "{mountinfo}7 2 0:53 / {} rw - tmpfs t rw\n",
        stacked.display()
    );
    let guards = super::host_guards(&roots, &rules, &mount_table(mountinfo.as_bytes()));
    assert!(
        guards.iter().any(|guard| guard.path == stacked),
        "{guards:?}"
    );
    std::fs::remove_dir_all(&base).unwrap();
}

#[test]
fn syntax_error_is_reported() {
    let error = error_of("[agents\ncgroups = []");
    assert!(error.starts_with("invalid config test.toml"), "{error}");
}

#[test]
fn bad_duration_names_key() {
    let text = config_text("").replace("\"60s\"", "\"sixty\"");
    let error = error_of(&text);
    assert!(error.contains("approval.grant_ttl"), "{error}");
    let error = error_of(&config_text("").replace("\"15m\"", "\"0s\""));
    assert!(error.contains("approval.request_ttl"), "{error}");
}

#[test]
fn missing_protected_path_names_key() {
    let text = config_text("").replace("/bin/sh", "/nonexistent/gatekeeper-test");
    let error = error_of(&text);
    assert!(error.contains("protect.exec[0].path"), "{error}");
}

#[test]
fn relative_protected_path_refused() {
    let error = error_of(&config_text("").replace("/bin/sh", "bin/sh"));
    assert!(error.contains("protect.exec[0].path"), "{error}");
}

#[test]
fn protected_path_listed_twice_refused() {
    let text = config_text("[[protect.exec]]\npath = \"/bin/sh\"");
    assert_eq!(keys_of(parse(&text)), ["protect.exec[1].path"]);
}

#[test]
fn unreadable_cgroup_names_key() {
    let mount = cgroups::mount_point().expect("cgroup v2 mounted");
    let mount = mount.display().to_string();
    let text = config_text("").replace(&mount, "/nonexistent/cgroup");
    let error = error_of(&text);
    assert!(error.contains("agents.cgroups[0]"), "{error}");
    // A directory that is not a cgroup.
    let error = error_of(&config_text("").replace(&mount, "/proc"));
    assert!(error.contains("agents.cgroups[0]"), "{error}");
}

#[test]
fn webhook_checks_name_keys() {
    let error = error_of(&config_text(
        "[[webhook]]\nurl = \"not a url\"\nsecret = \"0123456789abcdef\"",
    ));
    assert!(error.contains("webhook[0].url"), "{error}");
    let error = error_of(&config_text(
        "[[webhook]]\nurl = \"http://127.0.0.1:1/\"\nsecret = \"short\"",
    ));
    assert!(error.contains("webhook[0].secret"), "{error}");
}

#[test]
fn each_webhook_kind_has_its_own_secret() {
    let config = parse(&config_text(
        r#"
[[webhook]]
url = "https://reviewers.example/hook"
secret = "0123456789abcdef"
[[webhook]]
kind = "slack"
url = "https://hooks.slack.example/services/T/B/X"
signing_secret = "slack-secret"
[[webhook]]
kind = "teams"
url = "https://teams.example/webhook"
"#,
    ))
    .expect("valid config");
    let kinds: Vec<_> = config.webhooks.iter().map(|hook| &hook.kind).collect();
    assert_eq!(
        kinds,
        [
            &WebhookKind::Generic {
                secret: "0123456789abcdef".into()
            },
            &WebhookKind::Slack {
                signing_secret: "slack-secret".into()
            },
            &WebhookKind::Teams,
        ]
    );
    let names: Vec<_> = kinds.iter().map(|kind| kind.name()).collect();
    assert_eq!(names, ["generic", "slack", "teams"]);

    let hook = |lines: &str| {
        config_text(&format!(
            "[[webhook]]\nurl = \"https://x.example/\"\n{lines}"
        ))
    };
    let cases = [
        (hook("kind = \"generic\""), vec!["webhook[0].secret"]),
        (
            hook("secret = \"0123456789abcdef\"\nsigning_secret = \"s\""),
            vec!["webhook[0].signing_secret"],
        ),
        (hook("kind = \"slack\""), vec!["webhook[0].signing_secret"]),
        (
            hook("kind = \"slack\"\nsigning_secret = \"\""),
            vec!["webhook[0].signing_secret"],
        ),
        (
            hook("kind = \"slack\"\nsigning_secret = \"s\"\nsecret = \"0123456789abcdef\""),
            vec!["webhook[0].secret"],
        ),
        (
            hook("kind = \"teams\"\nsecret = \"0123456789abcdef\"\nsigning_secret = \"s\""),
            vec!["webhook[0].secret", "webhook[0].signing_secret"],
        ),
        (
            hook("kind = \"pager\"\nsecret = \"x\""),
            vec!["webhook[0].kind"],
        ),
    ];
    for (text, keys) in cases {
        assert_eq!(keys_of(parse(&text)), keys, "{text}");
    }
}

#[test]
fn empty_reviewers_refused() {
    let error = error_of(&config_text("").replace("[\"root\"]", "[]"));
    assert!(error.contains("approval.reviewers"), "{error}");
}

#[test]
fn connect_rules_parse() {
    let config = parse(&config_text(
        r#"
[[protect.connect]]
name = "prod postgres"
cidr = "10.20.0.0/16"
ports = [5432, "8000-8100"]
protocol = "tcp"
[[protect.connect]]
host = "db.internal"
"#,
    ))
    .expect("valid config");
    let first = &config.connect_rules[0];
    assert_eq!(first.name, "prod postgres");
    assert_eq!(first.ports, vec![(5432, 5432), (8000, 8100)]);
    assert_eq!(first.protocols, gatekeeper_common::PROTOCOL_TCP);
    let second = &config.connect_rules[1];
    assert_eq!(
        second.destination,
        DestinationSpec::Host("db.internal".into())
    );
    assert!(second.ports.is_empty(), "no ports: every port");
    assert_eq!(second.name, "db.internal");
}

#[test]
fn unix_socket_rules_parse_and_need_no_socket_yet() {
    let config = load(&config_text(
        r#"
[[protect.connect]]
cidr = "10.0.0.0/8"
[[protect.connect]]
name = "docker"
path = "/run/gatekeeper-test-no-such.sock"
approvals = 2
"#,
    ))
    .expect("valid config: the socket may appear later");
    let rule = &config.connect_rules[1];
    assert_eq!(
        rule.destination,
        DestinationSpec::Socket("/run/gatekeeper-test-no-such.sock".into())
    );
    assert_eq!(rule.approval.approvals, 2);
    let sockets: Vec<usize> = config.socket_rules().map(|(index, ..)| index).collect();
    assert_eq!(sockets, vec![1]);
}

#[test]
fn bad_unix_socket_rules_name_the_key() {
    let cases = [
        ("path = \"run/docker.sock\"", "protect.connect[0].path"),
        (
            "path = \"/run/docker.sock\"\nports = [22]",
            "protect.connect[0].ports",
        ),
        (
            "path = \"/run/docker.sock\"\nprotocol = \"tcp\"",
            "protect.connect[0].protocol",
        ),
        (
            "path = \"/run/docker.sock\"\nhost = \"db\"",
            "protect.connect[0].cidr",
        ),
        // Something other than a socket is there.
        ("path = \"/bin/sh\"", "protect.connect[0].path"),
    ];
    for (rule, key) in cases {
        let error = error_of(&config_text(&format!("[[protect.connect]]\n{rule}")));
        assert!(error.contains(key), "{rule}: {error}");
    }
}

#[test]
fn bad_connect_rules_name_the_key() {
    let cases = [
        ("cidr = \"10.20.0.0/33\"", "protect.connect[0].cidr"),
        ("cidr = \"10.20.1.0/16\"", "protect.connect[0].cidr"),
        (
            "cidr = \"10.0.0.0/8\"\nports = [0]",
            "protect.connect[0].ports[0]",
        ),
        (
            "cidr = \"10.0.0.0/8\"\nports = [22, \"90-80\"]",
            "protect.connect[0].ports[1]",
        ),
        (
            "cidr = \"10.0.0.0/8\"\nports = []",
            "protect.connect[0].ports",
        ),
        (
            "cidr = \"10.0.0.0/8\"\nprotocol = \"icmp\"",
            "protect.connect[0].protocol",
        ),
        ("name = \"nothing\"", "protect.connect[0].cidr"),
        (
            "cidr = \"10.0.0.0/8\"\nhost = \"db\"",
            "protect.connect[0].cidr",
        ),
        ("cidr = \"10.0.0.0/8\"\nport = 22", "port"),
    ];
    for (rule, key) in cases {
        let error = error_of(&config_text(&format!("[[protect.connect]]\n{rule}")));
        assert!(error.contains(key), "{rule}: {error}");
    }
}

#[test]
fn too_many_port_ranges_reported_with_rule_problems() {
    let ports: Vec<String> = (1..=17).map(|port| port.to_string()).collect();
    let text = config_text(&format!(
        "[[protect.connect]]\ncidr = \"10.0.0.0/8\"\nports = [{}]\n\
         [[protect.connect]]\ncidr = \"10.0.0.0/33\"",
        ports.join(", ")
    ));
    assert_eq!(
        keys_of(parse(&text)),
        ["protect.connect[1].cidr", "protect.connect"]
    );
}

#[test]
fn allowlist_mode_is_checked() {
    let text = config_text("").replace(
        "[[protect.exec]]",
        "exec = \"allowlist\"\nallow = [\"/bin/sh\"]\n[[protect.exec]]",
    );
    let config = load(&text).expect("valid allowlist config");
    assert!(config.exec_allowlist);
    assert_eq!(config.allowed, vec![PathBuf::from("/bin/sh")]);
    let error = error_of(&text.replace("allow = [\"/bin/sh\"]", "allow = []"));
    assert!(error.contains("agents.allow"), "{error}");
    let error = error_of(&text.replace("\"allowlist\"", "\"everything\""));
    assert!(error.contains("agents.exec"), "{error}");
    let error = error_of(&text.replace("\"/bin/sh\"]", "\"/nonexistent/x\"]"));
    assert!(error.contains("agents.allow[0]"), "{error}");
}

#[test]
fn webhook_kinds_owners_and_slack_users() {
    let mount = cgroups::mount_point().expect("cgroup v2 mounted");
    let owned = mount.join("agent-of-alice");
    let extra = format!(
        r#"
[[webhook]]
kind = "slack"
url = "https://hooks.slack.example/services/T/B/X"
signing_secret = "slack-secret"
[[webhook]]
kind = "teams"
url = "https://teams.example/webhook"
[approval.slack_users]
U012ABCDEF = "root"
[[agents.owner]]
cgroup = "{}"
owner = "alice"
[[protect.connect]]
cidr = "10.0.0.0/8"
approvals = 2
require_reason = true
risk = "critical"
"#,
        owned.display()
    );
    let config = load(&config_text(&extra)).expect("valid config");
    assert_eq!(config.webhooks[0].kind.name(), "slack");
    assert_eq!(config.webhooks[1].kind, WebhookKind::Teams);
    assert_eq!(config.slack_users["U012ABCDEF"], "root");
    assert_eq!(config.owner_of(&owned.join("task")), Some("alice"));
    assert_eq!(config.owner_of(&mount), None);
    assert_eq!(config.exec_rules[0].approval, RulePolicy::default());
    assert_eq!(
        config.connect_rules[0].approval,
        RulePolicy {
            approvals: 2,
            require_reason: true,
            risk: Risk::Critical,
        }
    );

    let cases = [
        (
            extra.replace("signing_secret = \"slack-secret\"\n", ""),
            "webhook[0].signing_secret",
        ),
        (
            extra.replace("kind = \"teams\"", "kind = \"pager\""),
            "webhook[1].kind",
        ),
        (
            extra.replace("= \"root\"", "= \"mallory\""),
            "approval.slack_users.U012ABCDEF",
        ),
        (
            extra.replace(&owned.display().to_string(), "/elsewhere"),
            "agents.owner[0].cgroup",
        ),
        (
            extra.replace("approvals = 2", "approvals = 0"),
            "protect.connect[0].approvals",
        ),
        (
            extra.replace("risk = \"critical\"", "risk = \"severe\""),
            "protect.connect[0].risk",
        ),
    ];
    for (text, key) in cases {
        let error = error_of(&config_text(&text));
        assert!(error.contains(key), "{key}: {error}");
    }
}

#[test]
fn bad_listen_address_names_key() {
    let error = error_of(&config_text("[daemon]\nlisten = \"nowhere\""));
    assert!(error.contains("daemon.listen"), "{error}");
}

#[test]
fn metrics_listen_on_loopback_only() {
    let error = error_of(&config_text("[daemon]\nmetrics = \"0.0.0.0:9464\""));
    assert!(error.contains("daemon.metrics"), "{error}");
    assert!(error.contains("loopback"), "{error}");
    let error = error_of(&config_text("[daemon]\nmetrics = \"nowhere\""));
    assert!(error.contains("daemon.metrics"), "{error}");
    let config = parse(&config_text("[daemon]\nmetrics = \"127.0.0.1:9464\"")).unwrap();
    assert_eq!(config.metrics, Some("127.0.0.1:9464".parse().unwrap()));
    assert_eq!(parse(&config_text("")).unwrap().metrics, None);
}

#[test]
fn a_config_with_secrets_must_be_private() {
    use std::os::unix::fs::PermissionsExt as _;
    let path = std::env::temp_dir().join(format!("gk-secret-config-{}.toml", std::process::id()));
    let text = config_text(
        "[[webhook]]\nurl = \"https://hooks.example/x\"\nsecret = \"0123456789abcdef\"\n",
    );
    std::fs::write(&path, &text).unwrap();
    for (mode, private) in [(0o644, false), (0o640, false), (0o600, true), (0o400, true)] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        match Config::load(&path) {
            Ok(_) => assert!(private, "mode {mode:o} was accepted"),
            Err(error) => {
                assert!(!private, "mode {mode:o}: {error}");
                let error = error.to_string();
                assert!(error.contains("webhook[0].secret"), "{error}");
                assert!(
                    error.contains(&format!("chmod 600 {}", path.display())),
                    "{error}"
                );
            }
        }
    }
    // Without secrets (a Teams webhook only) the mode is the operator's business.
    let teams = config_text("[[webhook]]\nkind = \"teams\"\nurl = \"https://teams.example/x\"\n");
    std::fs::write(&path, teams).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    Config::load(&path).expect("no secrets, no restriction");
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn file_rules_parse_with_access_defaulting_to_any() {
    use gatekeeper_common::file_access::{READ, WRITE};
    let config = load(&config_text(
        r#"
[[protect.file]]
path = "/etc/passwd"
name = "accounts"
access = "read"
approvals = 2
require_reason = true
[[protect.file]]
path = "/etc"
access = "write"
[[protect.file]]
path = "/bin/sh"
"#,
    ))
    .expect("valid config");
    let rules = &config.file_rules;
    assert_eq!(rules[0].name, "accounts");
    assert_eq!(rules[0].access, READ);
    assert_eq!(rules[0].approval.approvals, 2);
    assert!(rules[0].approval.require_reason);
    assert_eq!(rules[1].access, WRITE);
    assert_eq!(rules[1].name, "/etc", "the path names an unnamed rule");
    assert_eq!(rules[2].access, READ | WRITE);
}

#[test]
fn bad_file_rules_name_the_key() {
    let cases = [
        ("path = \"etc/passwd\"", "protect.file[0].path"),
        (
            "path = \"/etc/passwd\"\naccess = \"execute\"",
            "protect.file[0].access",
        ),
        (
            "path = \"/etc/passwd\"\napprovals = 0",
            "protect.file[0].approvals",
        ),
        // Missing at start: an error, as for exec rules.
        (
            "path = \"/etc/gatekeeper-test-no-such\"",
            "protect.file[0].path",
        ),
        // Neither a file nor a directory.
        ("path = \"/dev/null\"", "protect.file[0].path"),
    ];
    for (rule, key) in cases {
        let error = error_of(&config_text(&format!("[[protect.file]]\n{rule}")));
        assert!(error.contains(key), "{rule}: {error}");
    }
    let twice = config_text("[[protect.file]]\npath = \"/etc\"\n[[protect.file]]\npath = \"/etc\"");
    assert_eq!(keys_of(parse(&twice)), ["protect.file[1].path"]);
    let error = error_of(&config_text(
        "[[protect.file]]\npath = \"/etc/passwd\"\naccess = \"execute\"",
    ));
    assert!(
        error.contains("use \"read\", \"write\" or \"any\""),
        "{error}"
    );
}

#[test]
fn reviewer_keys_are_their_own() {
    let hook = "[[webhook]]\nurl = \"https://hooks.example/x\"\nsecret = \"webhook-secret-0123\"\n";
    let with_keys = |keys: &str| config_text(&format!("{hook}[approval.keys]\n{keys}"));
    let config = parse(&with_keys("root = \"roots-own-key-01234\"\n")).expect("valid keys");
    assert_eq!(config.reviewer_keys["root"], "roots-own-key-01234");
    let cases = [
        ("bob = \"bobs-own-key-0123456\"\n", "approval.keys.bob"),
        ("root = \"short\"\n", "approval.keys.root"),
        ("root = \"webhook-secret-0123\"\n", "approval.keys.root"),
    ];
    for (keys, key) in cases {
        let error = match parse(&with_keys(keys)) {
            Ok(_) => panic!("accepted: {keys}"),
            Err(error) => error.to_string(),
        };
        assert!(error.contains(key), "{keys}: {error}");
    }
    // One key for two reviewers names both.
    let shared = config_text(&format!(
        "{hook}[approval.keys]\nroot = \"shared-key-0123456\"\n"
    ))
    .replace(
        "reviewers = [\"root\"]",
        "reviewers = [\"root\", \"alice\"]",
    )
    .replace(
        "root = \"shared-key-0123456\"\n",
        "root = \"shared-key-0123456\"\nalice = \"shared-key-0123456\"\n",
    );
    assert_eq!(
        keys_of(parse(&shared)),
        ["approval.keys.alice", "approval.keys.root"]
    );
}

#[test]
fn an_exec_rule_binds_the_arguments_unless_it_says_binary() {
    let config = parse(&config_text("")).expect("valid config");
    assert_eq!(config.exec_rules[0].bind, Bind::Argv);
    let text = config_text("").replace("name = \"shell\"", "name = \"shell\"\nbind = \"binary\"");
    assert_eq!(
        parse(&text).expect("valid config").exec_rules[0].bind,
        Bind::Binary
    );
    let text = config_text("").replace("name = \"shell\"", "name = \"shell\"\nbind = \"args\"");
    let error = error_of(&text);
    assert!(error.contains("protect.exec[0].bind"), "{error}");
    assert!(error.contains("\"args\""), "{error}");
}

#[test]
fn a_seal_key_goes_where_only_root_writes() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = std::env::temp_dir().join(format!("gk-seal-place-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.toml");
    let key = dir.join("keys/seal.key");
    let text = config_text(&format!("[daemon]\nseal_key = \"{}\"\n", key.display()));
    std::fs::write(&path, &text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    // Not there yet, below a closed directory: the daemon makes it.
    Config::load(&path).expect("a closed directory");
    // A directory others write, sticky or not, is refused for the key itself; above it only
    // when not sticky.
    std::fs::create_dir_all(key.parent().unwrap()).unwrap();
    for (keys_mode, dir_mode, accepted) in [
        (0o755, 0o755, true),
        (0o777, 0o755, false),
        (0o1777, 0o755, false),
        (0o755, 0o1777, true),
        (0o755, 0o777, false),
        (0o775, 0o755, false),
    ] {
        std::fs::set_permissions(
            key.parent().unwrap(),
            std::fs::Permissions::from_mode(keys_mode),
        )
        .unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(dir_mode)).unwrap();
        match Config::load(&path) {
            Ok(_) => assert!(accepted, "{keys_mode:o} below {dir_mode:o} was accepted"),
            Err(error) => {
                let error = error.to_string();
                assert!(!accepted, "{keys_mode:o} below {dir_mode:o}: {error}");
                assert!(error.contains("daemon.seal_key"), "{error}");
            }
        }
    }
    // Something other than a file where the key goes is refused.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(
        key.parent().unwrap(),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::fs::create_dir(&key).unwrap();
    let error = Config::load(&path).unwrap_err().to_string();
    assert!(error.contains("is already there"), "{error}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_mounts_device_reads_in_the_kernels_encoding() {
    let mounts = mount_table(
        b"36 35 0:52 / /srv/b rw - btrfs /dev/loop0 rw\n40 36 259:3 / /x rw - ext4 /dev/x rw\n",
    );
    assert_eq!(mounts[0].id(), 36);
    assert_eq!(mounts[0].kernel_device(), Some(52));
    assert_eq!(mounts[1].kernel_device(), Some(259 << 20 | 3));
    assert_eq!(mount_table(b"7 1 junk / /y rw\n")[0].kernel_device(), None);
}
