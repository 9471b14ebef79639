//! An agent acts on no process outside its own agent subtree, and cannot change how the daemon
//! runs; as root and as an ordinary user, each attempt against a control that shows the same
//! call works on the agent's own processes and from outside.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
};

use gatekeeper_tests::{Options, Outcome, PriorityLimits, Scenario, UNLISTED_UID, bin};

fn journaled(scenario: &Scenario, hook: &str) {
    scenario.wait_journal("tamper_attempt", |event| event["hook"] == hook);
}

/// A process that sleeps in `cgroup` ("-": where the test runs, outside every agent cgroup),
/// as root or as the ordinary user; killed when dropped.
struct Sleeper(Child);

impl Sleeper {
    fn start(cgroup: &Path, user: bool) -> Self {
        let mut command = Command::new(bin("gk-helper"));
        if user {
            command.args(["as-user", &UNLISTED_UID.to_string()]);
        } else {
            command.arg("run");
        }
        command
            .arg(cgroup)
            .args(["/bin/sleep", "600"])
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        let sleeper = Self(command.spawn().unwrap());
        // Started once it runs sleep (and so has joined its cgroup).
        let exe = format!("/proc/{}/exe", sleeper.0.id());
        gatekeeper_tests::wait_for("the sleeper to run", || {
            std::fs::read_link(&exe)
                .ok()
                .filter(|target| target.ends_with("busybox"))
        });
        sleeper
    }

    fn pid(&self) -> String {
        self.0.id().to_string()
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `kernel.perf_event_paranoid` set to -1 (perf open to every user) until dropped, when the
/// host's value comes back.
pub(crate) struct ParanoidPerf(String);

impl ParanoidPerf {
    const PATH: &'static str = "/proc/sys/kernel/perf_event_paranoid";

    pub(crate) fn open_to_all() -> Self {
        let was = std::fs::read_to_string(Self::PATH).unwrap();
        std::fs::write(Self::PATH, "-1").unwrap();
        Self(was)
    }
}

impl Drop for ParanoidPerf {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::PATH, self.0.trim());
    }
}

/// A cgroup below the agent cgroup (made from outside, as the agent may not).
fn below(scenario: &Scenario) -> std::path::PathBuf {
    let sub = scenario.agents.join("sub");
    if !sub.exists() {
        std::fs::create_dir(&sub).unwrap();
    }
    sub
}

/// The ways to act through another process, each with its arguments for `pid` and the errno
/// a refusal comes to (through /proc files, the kernel reports a failed ptrace check as EACCES).
fn reaches(pid: &str) -> Vec<(&'static str, Vec<String>, Outcome)> {
    let proc = |file: &str| vec![format!("/proc/{pid}/{file}")];
    vec![
        ("ptrace", vec![pid.to_owned()], Outcome::Denied),
        ("vm-read", vec![pid.to_owned()], Outcome::Denied),
        (
            "pidfd-getfd",
            vec![pid.to_owned(), "0".to_owned()],
            Outcome::Denied,
        ),
        ("open", proc("mem"), Outcome::Errno(libc::EACCES)),
        ("open", proc("environ"), Outcome::Errno(libc::EACCES)),
        ("open", proc("ns/net"), Outcome::Errno(libc::EACCES)),
    ]
}

/// Each way to act through `pid`, from `cgroup`, as root or the ordinary user, is `allowed` or
/// refused.
fn each_reach(scenario: &Scenario, cgroup: &Path, user: bool, pid: &str, allowed: bool) {
    for (op, args, refused) in reaches(pid) {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let outcome = if user {
            scenario.tamper_as_user(cgroup, op, &args)
        } else {
            scenario.tamper(cgroup, op, &args)
        };
        let expected = if allowed { Outcome::Ok } else { refused };
        assert_eq!(
            outcome, expected,
            "{op} {args:?} from {cgroup:?} (user: {user})"
        );
    }
}

#[test]
fn agent_cannot_act_through_processes_outside_its_subtree() {
    let scenario = Scenario::start("procs-reach", Options::default());
    let sub = below(&scenario);
    let outside = Path::new("-");
    for user in [false, true] {
        let host = Sleeper::start(outside, user);
        let fellow = Sleeper::start(&sub, user);
        // The attack: a process outside the agent cgroups, the agent's own user's when it is one.
        each_reach(&scenario, &scenario.agents, user, &host.pid(), false);
        each_reach(&scenario, &sub, user, &host.pid(), false);
        // Controls: the same on a process in the agent's subtree, and from outside.
        each_reach(&scenario, &scenario.agents, user, &fellow.pid(), true);
        each_reach(&scenario, &scenario.outside, user, &host.pid(), true);
        each_reach(&scenario, &scenario.outside, user, &fellow.pid(), true);
    }
    journaled(&scenario, "ptrace_outside");

    // perf: an event on a process outside is refused as ptrace is (EACCES: the kernel would
    // let CAP_PERFMON past that check, which agents do not get); from outside it opens.
    let host = Sleeper::start(outside, false);
    let pid = host.pid();
    let perf = |cgroup: &Path, user: bool, args: &[&str]| {
        if user {
            scenario.tamper_as_user(cgroup, "perf", args)
        } else {
            scenario.tamper(cgroup, "perf", args)
        }
    };
    assert_eq!(
        perf(&scenario.agents, false, &["task", &pid]),
        Outcome::Errno(libc::EACCES)
    );
    assert_eq!(perf(&scenario.outside, false, &["task", &pid]), Outcome::Ok);
    // An event on a whole CPU samples every process that runs there. With perf open to every
    // user (perf_event_paranoid -1; Debian's kernels allow unprivileged users none), it is
    // still refused to agents, root or not, while their own process stays theirs to profile.
    let paranoid = ParanoidPerf::open_to_all();
    let user_host = Sleeper::start(outside, true);
    for user in [false, true] {
        assert_eq!(
            perf(&scenario.agents, user, &["cpu"]),
            Outcome::Denied,
            "user: {user}"
        );
        assert_eq!(perf(&scenario.outside, user, &["cpu"]), Outcome::Ok);
        assert_eq!(perf(&scenario.agents, user, &["self"]), Outcome::Ok);
    }
    assert_eq!(
        perf(&scenario.agents, true, &["task", &user_host.pid()]),
        Outcome::Errno(libc::EACCES)
    );
    assert_eq!(
        perf(&scenario.outside, true, &["task", &user_host.pid()]),
        Outcome::Ok
    );
    drop(paranoid);
    journaled(&scenario, "perf");

    // A debugger or container runtime in the agent cgroup still handles its own children.
    assert_eq!(
        scenario.tamper(&scenario.agents, "own-child", &["userns"]),
        Outcome::Ok
    );
    assert_eq!(
        scenario.tamper_as_user(&scenario.agents, "own-child", &[]),
        Outcome::Ok
    );

    // PTRACE_TRACEME would make the agent's parent, outside, its tracer.
    assert_eq!(
        scenario.tamper(&scenario.agents, "traceme", &[]),
        Outcome::Denied
    );
    scenario.user_agent_denied("traceme", &[]);
    journaled(&scenario, "ptrace_traceme");
    assert_eq!(
        scenario.tamper(&scenario.outside, "traceme", &[]),
        Outcome::Ok
    );
    assert_eq!(
        scenario.tamper_as_user(&scenario.outside, "traceme", &[]),
        Outcome::Ok
    );
}

/// The calls that change how a process runs, each made with the values it has, so that the
/// controls change nothing.
const RESOURCE_OPS: [&str; 5] = [
    "prlimit",
    "setscheduler",
    "setnice",
    "ioprio",
    "migrate-pages",
];

#[test]
fn agent_cannot_change_how_the_daemon_runs() {
    let scenario = Scenario::start("procs-daemon", Options::default());
    let daemon = scenario.daemon_pid().to_string();
    // A thread of the daemon other than the first: its /proc files reach the same process.
    let thread = std::fs::read_dir(format!("/proc/{daemon}/task"))
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .find(|tid| *tid != daemon)
        .expect("the daemon has threads");
    let proc_files = [
        format!("/proc/{daemon}/oom_score_adj"),
        format!("/proc/{daemon}/oom_adj"),
        format!("/proc/{daemon}/task/{thread}/oom_score_adj"),
    ];
    for op in RESOURCE_OPS {
        assert_eq!(
            scenario.tamper(&scenario.agents, op, &[&daemon]),
            Outcome::Denied,
            "{op}"
        );
        // Another user's process: the kernel refuses an ordinary user before the hook.
        scenario.user_refused_anyway(op, &[&daemon]);
    }
    for file in &proc_files {
        assert_eq!(
            scenario.tamper(&scenario.agents, "rewrite", &[file]),
            Outcome::Denied,
            "{file}"
        );
    }
    // The nice value of the daemon's autogroup, where the kernel has them.
    let autogroup = format!("/proc/{daemon}/autogroup");
    let has_autogroup = Path::new(&autogroup).exists();
    if has_autogroup {
        assert_eq!(
            scenario.tamper(&scenario.agents, "write", &[&autogroup, "0"]),
            Outcome::Denied
        );
    }
    // Nor outrun it: a root agent takes no priority above the ordinary for itself, nor raises
    // the limits that would let it; root outside does. (The kernel refuses ordinary users all
    // of it.)
    // setpriority says EACCES where the capability is missing.
    let outrun = [
        ("realtime", Outcome::Denied),
        ("nice", Outcome::Errno(libc::EACCES)),
        ("io", Outcome::Denied),
        ("rlimit-nice", Outcome::Denied),
        ("rlimit-rtprio", Outcome::Denied),
    ];
    for (how, refused) in outrun {
        assert_eq!(
            scenario.tamper(&scenario.agents, "outrun", &[how]),
            refused,
            "{how}"
        );
        assert_eq!(
            scenario.tamper(&scenario.outside, "outrun", &[how]),
            Outcome::Ok,
            "{how} outside"
        );
    }
    // Nor when it was given limits above the ordinary (PAM, a unit's LimitRTPRIO=, a container's
    // spec), within which the kernel grants all of this without CAP_SYS_NICE: an ordinary user
    // outside gets it. Changes of placement stay the agent's.
    let raised = PriorityLimits::raise(50, 50);
    let mut outcomes = Vec::new();
    for how in ["realtime", "nice", "attr-nice", "affinity"] {
        outcomes.push((
            how,
            scenario.tamper(&scenario.agents, "outrun", &[how]),
            scenario.tamper_as_user(&scenario.agents, "outrun", &[how]),
            scenario.tamper_as_user(&scenario.outside, "outrun", &[how]),
        ));
    }
    let own_autogroup = has_autogroup.then(|| {
        (
            scenario.tamper_as_user(&scenario.agents, "write", &["/proc/self/autogroup", "-1"]),
            scenario.tamper_as_user(&scenario.outside, "write", &["/proc/self/autogroup", "-1"]),
        )
    });
    drop(raised);
    for (how, root, user, outside) in outcomes {
        let refused = || {
            if how == "affinity" {
                Outcome::Ok
            } else {
                Outcome::Denied
            }
        };
        assert_eq!((root, user), (refused(), refused()), "{how} with limits");
        assert_eq!(outside, Outcome::Ok, "{how} with limits outside");
    }
    if let Some((agent, outside)) = own_autogroup {
        assert_eq!(agent, Outcome::Denied, "autogroup nice with limits");
        // Past every permission check outside: a process in no session of its own is in the
        // root autogroup, whose weight the kernel keeps (EINVAL).
        assert!(
            matches!(outside, Outcome::Ok | Outcome::Errno(libc::EINVAL)),
            "autogroup nice with limits outside: {outside:?}"
        );
    }
    // The limit that allowed it is recorded.
    scenario.wait_journal("tamper_attempt", |event| {
        event["hook"] == "priority" && event["detail"] == serde_json::json!([14, 50])
    });
    // A nice limit alone (nice down to -10): the same for nice values. At the ordinary limit
    // (nice 0 at the lowest) the kernel refuses by itself, without CAP_SYS_NICE.
    for (nice_limit, refused) in [(30, Outcome::Denied), (20, Outcome::Errno(libc::EACCES))] {
        let raised = PriorityLimits::raise(0, nice_limit);
        let agent = scenario.tamper_as_user(&scenario.agents, "outrun", &["nice"]);
        let outside = scenario.tamper_as_user(&scenario.outside, "outrun", &["nice"]);
        drop(raised);
        assert_eq!(agent, refused, "nice with a nice limit of {nice_limit}");
        if nice_limit > 20 {
            assert_eq!(outside, Outcome::Ok, "nice with a nice limit outside");
        }
    }
    scenario.wait_journal("tamper_attempt", |event| {
        event["hook"] == "priority" && event["detail"] == serde_json::json!([13, 30])
    });
    for hook in [
        "priority",
        "daemon_rlimit",
        "daemon_scheduler",
        "daemon_nice",
        "daemon_ioprio",
        "proc_write",
    ] {
        journaled(&scenario, hook);
    }
    assert!(
        scenario.gatekeeper(&["status"]).status.success(),
        "the daemon lives on"
    );

    // Controls: the same calls on the agent's own process work, for root and for the user.
    for user in [false, true] {
        let own = Sleeper::start(&scenario.agents, user);
        let pid = own.pid();
        for op in RESOURCE_OPS {
            let outcome = if user {
                scenario.tamper_as_user(&scenario.agents, op, &[&pid])
            } else {
                scenario.tamper(&scenario.agents, op, &[&pid])
            };
            assert_eq!(outcome, Outcome::Ok, "{op} on its own (user: {user})");
        }
        let own_file = format!("/proc/{pid}/oom_score_adj");
        let outcome = if user {
            scenario.tamper_as_user(&scenario.agents, "rewrite", &[&own_file])
        } else {
            scenario.tamper(&scenario.agents, "rewrite", &[&own_file])
        };
        assert_eq!(outcome, Outcome::Ok, "own oom_score_adj (user: {user})");
    }
    // And on the daemon from outside the agent cgroups.
    for op in RESOURCE_OPS {
        assert_eq!(
            scenario.tamper(&scenario.outside, op, &[&daemon]),
            Outcome::Ok,
            "{op} from outside"
        );
    }
    for file in &proc_files {
        assert_eq!(
            scenario.tamper(&scenario.outside, "rewrite", &[file]),
            Outcome::Ok,
            "{file} from outside"
        );
    }
    if has_autogroup {
        // The kernel itself may refuse it (EINVAL for a process in the root autogroup).
        assert_ne!(
            scenario.tamper(&scenario.outside, "write", &[&autogroup, "0"]),
            Outcome::Denied
        );
    }
}
