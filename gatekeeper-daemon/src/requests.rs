//! Approval requests: the pure state machine from a kernel denial to one human decision.
//!
//! A request is decided once; repeats of the same action (cgroup, target and, for a grant bound to
//! them, the exec's arguments) while it is pending join it.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use gatekeeper_common::Target;

use crate::destinations::Destination;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Approve,
    Deny,
}

/// How much harm the protected action can do, as the rule's author judged it; shown to
/// reviewers first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Risk {
    Low,
    #[default]
    Medium,
    High,
    Critical,
}

impl Risk {
    pub const ALL: [Self; 4] = [Self::Low, Self::Medium, Self::High, Self::Critical];

    /// The word the config and the channels use.
    pub fn name(self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::Medium => "medium",
            Self::High => "high",
            Self::Critical => "critical",
        }
    }
}

/// What an exec grant covers: the exact arguments the reviewer saw, or any arguments of the binary
/// (for tools whose arguments change on every call).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Bind {
    #[default]
    Argv,
    Binary,
}

impl Bind {
    pub const ALL: [Self; 2] = [Self::Argv, Self::Binary];

    /// The word the config uses.
    pub fn name(self) -> &'static str {
        match self {
            Self::Argv => "argv",
            Self::Binary => "binary",
        }
    }
}

/// An exec's arguments as the kernel read them from the caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecCall {
    /// As passed to execve; for a script from `argv[1]` (its interpreter gets the script's path
    /// instead of `argv[0]`).
    pub argv: Vec<String>,
    /// Whether `argv[0]` is left out (a script).
    pub script: bool,
    /// Read whole: otherwise what is shown is cut and no argument-bound grant can match.
    pub complete: bool,
    /// The kernel's keyed hash of the arguments, which an argument-bound grant carries.
    pub hash: u64,
}

/// Which pending request a denial joins: (cgroup, target, hash of the arguments a grant would be
/// bound to).
pub type PendingKey = (u64, Target, Option<u64>);

/// The hash an argument-bound grant for this exec would carry.
fn bound_hash(exec: &Option<ExecCall>, bind: Bind) -> Option<u64> {
    exec.as_ref()
        .filter(|_| bind == Bind::Argv)
        .map(|exec| exec.hash)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Pending,
    Approved,
    Denied,
    Expired,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Exec,
    Connect,
    /// An open of a protected file other than to execute it (reading a protected binary).
    File,
}

/// The process that attempted the action, as far as /proc still knew it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Process {
    pub pid: u32,
    pub tgid: u32,
    pub uid: u32,
    pub user: Option<String>,
    pub comm: String,
    /// Command line of the process that attempted the exec (the new program never started).
    pub argv: Option<Vec<String>>,
    pub parent: Option<Parent>,
    /// Its working directory, as /proc told it.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Up to [`MAX_ANCESTORS`] processes above it, its parent first.
    #[serde(default)]
    pub ancestors: Vec<Ancestor>,
}

/// Processes above the one that asked, shown to reviewers.
pub const MAX_ANCESTORS: usize = 3;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ancestor {
    pub pid: u32,
    pub comm: Option<String>,
    pub argv: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Parent {
    pub pid: u32,
    pub comm: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionInfo {
    pub decision: Decision,
    pub reviewer: String,
    pub reason: Option<String>,
    pub channel: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub id: String,
    pub state: State,
    pub kind: Kind,
    /// Name of the rule that matched.
    pub rule: String,
    /// What was attempted: for exec, the path as the caller named it; for connect, the
    /// destination as `tcp 10.20.0.5:5432`.
    pub target: String,
    pub target_key: Target,
    /// For connect: the destination in parts.
    pub destination: Option<Destination>,
    /// The cgroup of the process: grants are issued for exactly this cgroup.
    pub cgroup: String,
    pub cgroup_id: u64,
    pub process: Process,
    #[serde(with = "time::serde::rfc3339")]
    pub created: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires: OffsetDateTime,
    /// Denials joined into this request, the first included.
    pub attempts: u32,
    /// The final decision.
    pub decision: Option<DecisionInfo>,
    pub grant_id: Option<u64>,
    /// Who runs the agent: never allowed to approve its requests.
    pub owner: Option<String>,
    /// Distinct approvals needed before the grant.
    pub approvals_required: u32,
    pub require_reason: bool,
    /// The rule's risk (requests made before risks existed read as medium).
    #[serde(default)]
    pub risk: Risk,
    /// For an exec: its arguments as the kernel read them (absent in older records).
    #[serde(default)]
    pub exec: Option<ExecCall>,
    /// For an exec: what its grant covers.
    #[serde(default)]
    pub bind: Bind,
    /// The agent's own words on why it needs this: untrusted, shown as the agent's.
    #[serde(default)]
    pub justification: Option<String>,
    /// Approvals so far (the last one completes the decision).
    pub approvals: Vec<DecisionInfo>,
    /// Approved, but the grant could not be put into the kernel: why.
    #[serde(default)]
    pub grant_error: Option<String>,
    /// When it left pending.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub finished: Option<OffsetDateTime>,
    /// Denials in this agent cgroup that became no request because it had its cap of pending
    /// requests.
    #[serde(default)]
    pub over_cap: u64,
}

/// A kernel denial, enriched by the daemon.
#[derive(Debug, Clone)]
pub struct Denial {
    pub kind: Kind,
    pub rule: String,
    pub target: String,
    pub target_key: Target,
    pub destination: Option<Destination>,
    pub cgroup: String,
    pub cgroup_id: u64,
    pub process: Process,
    pub owner: Option<String>,
    pub approvals_required: u32,
    pub require_reason: bool,
    pub risk: Risk,
    pub exec: Option<ExecCall>,
    pub bind: Bind,
    /// Given by the agent before the action (`gatekeeper run --reason`).
    pub justification: Option<String>,
}

impl Denial {
    pub fn pending_key(&self) -> PendingKey {
        (
            self.cgroup_id,
            self.target_key,
            bound_hash(&self.exec, self.bind),
        )
    }
}

impl Request {
    pub fn pending_key(&self) -> PendingKey {
        (
            self.cgroup_id,
            self.target_key,
            bound_hash(&self.exec, self.bind),
        )
    }

    /// For an exec, the command that would run as the kernel read it: the binary as the caller
    /// named it (a script's path), then its arguments, each quoted where needed.
    pub fn will_run(&self) -> Option<String> {
        let exec = self.exec.as_ref()?;
        let script_path = exec.script.then_some(self.target.as_str());
        let line = crate::shown::quoted_args(
            script_path
                .into_iter()
                .chain(exec.argv.iter().map(String::as_str)),
        );
        Some(if exec.complete {
            line
        } else {
            format!("{line} …(not bindable: cut, changed, or run as an interpreter)")
        })
    }

    /// What an approval lets through, in a reviewer's words.
    pub fn grant_covers(&self) -> Option<&'static str> {
        if self.kind != Kind::Exec {
            return None;
        }
        Some(match (self.bind, &self.exec) {
            (Bind::Binary, _) => "one run of the binary, with any arguments",
            (Bind::Argv, Some(exec)) if exec.complete => "one run of exactly this command",
            (Bind::Argv, _) => {
                "nothing: these arguments cannot be bound (longer than the kernel reads, changed after it copied them, or the binary runs as another file's interpreter), so no run can match (bind = \"binary\" covers such tools)"
            }
        })
    }

    /// Whether its grant lets through only the arguments shown: an exec under `bind = "argv"`.
    /// One whose arguments the kernel did not report is bound to none, and never passes.
    pub fn binds_argv(&self) -> bool {
        self.kind == Kind::Exec && self.bind == Bind::Argv
    }

    /// The argument hash its grant is bound to, if it is.
    pub fn bound_argv(&self) -> Option<u64> {
        bound_hash(&self.exec, self.bind).filter(|_| self.binds_argv())
    }
}

/// Why an agent's justification was not taken.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JustifyError {
    #[error("no such request {0} for this cgroup")]
    NoRequest(String),
    #[error("no pending request for this cgroup")]
    NothingPending,
    #[error("request {0} is no longer pending")]
    NotPending(String),
    #[error("request {0} already has the agent's justification")]
    AlreadyJustified(String),
    #[error("the justification is empty")]
    Empty,
    #[error("the justification is {0} bytes; at most {MAX_JUSTIFICATION} are taken")]
    TooLong(usize),
    #[error("this cgroup has {MAX_ANNOUNCED} justifications waiting for their actions already")]
    TooMany,
    #[error("arguments: {0} given, at most {MAX_ANNOUNCED_ARGS} are taken")]
    TooManyArgs(usize),
}

/// Bytes of an agent's justification taken at most.
pub const MAX_JUSTIFICATION: usize = 2000;
/// Justifications one agent cgroup may have announced and not yet used.
pub const MAX_ANNOUNCED: usize = 8;
/// Arguments of an announced command taken at most (the kernel reads no more).
pub const MAX_ANNOUNCED_ARGS: usize = gatekeeper_common::MAX_ARGS as usize;

/// Checks an agent's justification: not empty, not longer than [`MAX_JUSTIFICATION`].
pub fn check_justification(text: &str) -> Result<(), JustifyError> {
    if text.trim().is_empty() {
        return Err(JustifyError::Empty);
    }
    if text.len() > MAX_JUSTIFICATION {
        return Err(JustifyError::TooLong(text.len()));
    }
    Ok(())
}

impl ExecCall {
    /// Whether these are the arguments of `argv` as a caller passed it to execve.
    pub fn matches(&self, argv: &[String]) -> bool {
        let passed = if self.script {
            argv.get(1..).unwrap_or_default()
        } else {
            argv
        };
        self.complete && self.argv == passed
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    /// A new request with this id: journaled and sent to reviewers.
    New(String),
    /// Joined the pending request with this id.
    Joined(String),
    /// Its cgroup has its cap of pending requests: counted, no request.
    OverCap,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecideError {
    #[error("no request {0}")]
    NotFound(String),
    #[error("request {id} is already {state:?}")]
    AlreadyDecided { id: String, state: State },
    #[error("request {0} has expired")]
    Expired(String),
    #[error("{reviewer} owns the agent behind request {id} and cannot approve it")]
    Owner { id: String, reviewer: String },
    #[error("request {0} needs a reason to be approved")]
    ReasonRequired(String),
    #[error("{reviewer} has already approved request {id}")]
    AlreadyApproved { id: String, reviewer: String },
}

/// What a decision did.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Decided: approved (grant now) or denied.
    Decided(Request),
    /// An approval counted; more are needed.
    Approval { request: Request, missing: u32 },
}

/// Why a would-be reviewer may not decide.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    #[error("{0} is not a listed reviewer")]
    NotReviewer(String),
    #[error("decisions cannot come from inside an agent cgroup")]
    FromAgent,
}

/// Only listed reviewers decide, and never from inside an agent cgroup.
pub fn authorize_reviewer(
    reviewers: &[String],
    reviewer: &str,
    caller_is_agent: bool,
) -> Result<(), Refusal> {
    if caller_is_agent {
        return Err(Refusal::FromAgent);
    }
    if !reviewers.iter().any(|listed| listed == reviewer) {
        return Err(Refusal::NotReviewer(reviewer.to_owned()));
    }
    Ok(())
}

pub struct Requests {
    ttl: Duration,
    by_id: BTreeMap<String, Request>,
    pending: HashMap<PendingKey, String>,
}

impl Requests {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            by_id: BTreeMap::new(),
            pending: HashMap::new(),
        }
    }

    /// The pending request a denial with this key joins, if there is one.
    pub fn pending_for(&self, key: &PendingKey) -> Option<String> {
        self.pending.get(key).cloned()
    }

    /// Counts a repeat of a pending request's action.
    pub fn join(&mut self, id: &str) {
        if let Some(request) = self.by_id.get_mut(id) {
            request.attempts += 1;
        }
    }

    pub fn pending_in_cgroup(&self, cgroup_id: u64) -> usize {
        self.pending
            .keys()
            .filter(|(cgroup, _, _)| *cgroup == cgroup_id)
            .count()
    }

    /// A new pending request `id` for `denial`.
    pub fn create(&mut self, denial: Denial, id: String, now: OffsetDateTime) -> &Request {
        let request = Request {
            id: id.clone(),
            state: State::Pending,
            kind: denial.kind,
            rule: denial.rule,
            target: denial.target,
            target_key: denial.target_key,
            destination: denial.destination,
            cgroup: denial.cgroup,
            cgroup_id: denial.cgroup_id,
            process: denial.process,
            created: now,
            expires: now + self.ttl,
            attempts: 1,
            decision: None,
            grant_id: None,
            owner: denial.owner,
            approvals_required: denial.approvals_required.max(1),
            require_reason: denial.require_reason,
            risk: denial.risk,
            exec: denial.exec,
            bind: denial.bind,
            justification: denial.justification,
            approvals: Vec::new(),
            grant_error: None,
            finished: None,
            over_cap: 0,
        };
        self.pending.insert(request.pending_key(), id.clone());
        self.by_id.entry(id).or_insert(request)
    }

    pub fn get(&self, id: &str) -> Option<&Request> {
        self.by_id.get(id)
    }

    /// Pending requests, or all with `all`, oldest first.
    pub fn list(&self, all: bool) -> Vec<&Request> {
        let mut requests: Vec<_> = self
            .by_id
            .values()
            .filter(|request| all || request.state == State::Pending)
            .collect();
        requests.sort_by_key(|request| request.created);
        requests
    }

    /// Whether `id` can be decided now; nothing changes.
    pub fn check_decidable(&self, id: &str, now: OffsetDateTime) -> Result<&Request, DecideError> {
        let request = self
            .by_id
            .get(id)
            .ok_or_else(|| DecideError::NotFound(id.to_owned()))?;
        match request.state {
            State::Pending if now >= request.expires => Err(DecideError::Expired(id.to_owned())),
            State::Pending => Ok(request),
            State::Expired => Err(DecideError::Expired(id.to_owned())),
            state => Err(DecideError::AlreadyDecided {
                id: id.to_owned(),
                state,
            }),
        }
    }

    /// Whether `info` may be taken on request `id` now: a pending, unexpired request; the owner
    /// of the agent never approves, nor does anyone twice, and a reason may be required.
    pub fn check(&self, id: &str, info: &DecisionInfo) -> Result<(), DecideError> {
        let request = self.check_decidable(id, info.at)?;
        if info.decision == Decision::Deny {
            return Ok(());
        }
        if request.owner.as_deref() == Some(info.reviewer.as_str()) {
            return Err(DecideError::Owner {
                id: id.to_owned(),
                reviewer: info.reviewer.clone(),
            });
        }
        if request.require_reason && info.reason.as_deref().is_none_or(|r| r.trim().is_empty()) {
            return Err(DecideError::ReasonRequired(id.to_owned()));
        }
        if request
            .approvals
            .iter()
            .any(|a| a.reviewer == info.reviewer)
        {
            return Err(DecideError::AlreadyApproved {
                id: id.to_owned(),
                reviewer: info.reviewer.clone(),
            });
        }
        Ok(())
    }

    /// Whether `info`, already checked, is the approval that completes request `id`.
    pub fn completes_approval(&self, id: &str, info: &DecisionInfo) -> bool {
        info.decision == Decision::Approve
            && self.by_id.get(id).is_some_and(|request| {
                request.approvals.len() as u32 + 1 >= request.approvals_required
            })
    }

    /// Records a decision on request `id`: a deny ends it, an approval counts towards the
    /// approvals it needs.
    pub fn decide(&mut self, id: &str, info: DecisionInfo) -> Result<Outcome, DecideError> {
        self.check(id, &info)?;
        self.apply(id, info)
            .ok_or_else(|| DecideError::NotFound(id.to_owned()))
    }

    /// Applies a checked (or recorded) decision; None for an unknown request.
    fn apply(&mut self, id: &str, info: DecisionInfo) -> Option<Outcome> {
        let request = self.by_id.get_mut(id)?;
        if info.decision == Decision::Approve {
            request.approvals.push(info.clone());
            let have = request.approvals.len() as u32;
            if have < request.approvals_required {
                return Some(Outcome::Approval {
                    request: request.clone(),
                    missing: request.approvals_required - have,
                });
            }
        }
        request.state = match info.decision {
            Decision::Approve => State::Approved,
            Decision::Deny => State::Denied,
        };
        request.finished = Some(info.at);
        request.decision = Some(info);
        self.pending.remove(&request.pending_key());
        Some(Outcome::Decided(request.clone()))
    }

    /// Takes back a request an earlier daemon made, as it was recorded.
    pub fn restore(&mut self, request: Request) {
        if request.state == State::Pending {
            self.pending
                .insert(request.pending_key(), request.id.clone());
        }
        self.by_id.insert(request.id.clone(), request);
    }

    /// Replays a recorded decision: it was valid when taken, so nothing is checked again.
    pub fn restore_decision(&mut self, id: &str, info: DecisionInfo) {
        self.apply(id, info);
    }

    /// Replays a recorded expiry.
    pub fn restore_expired(&mut self, id: &str, at: OffsetDateTime) {
        if let Some(request) = self.by_id.get_mut(id) {
            request.state = State::Expired;
            request.finished = Some(at);
            self.pending.remove(&request.pending_key());
        }
    }

    /// Records the agent's justification of pending request `id`, once.
    pub fn justify(&mut self, id: &str, text: String) -> Result<(), JustifyError> {
        let request = self
            .by_id
            .get_mut(id)
            .ok_or_else(|| JustifyError::NoRequest(id.to_owned()))?;
        if request.state != State::Pending {
            return Err(JustifyError::NotPending(id.to_owned()));
        }
        if request.justification.is_some() {
            return Err(JustifyError::AlreadyJustified(id.to_owned()));
        }
        request.justification = Some(text);
        Ok(())
    }

    pub fn attach_grant(&mut self, id: &str, grant_id: u64) {
        if let Some(request) = self.by_id.get_mut(id) {
            request.grant_id = Some(grant_id);
        }
    }

    pub fn set_grant_error(&mut self, id: &str, error: String) {
        if let Some(request) = self.by_id.get_mut(id) {
            request.grant_error = Some(error);
        }
    }

    /// Finished requests that finished before `cutoff`.
    pub fn finished_before(&self, cutoff: OffsetDateTime) -> Vec<String> {
        self.by_id
            .values()
            .filter(|request| request.finished.is_some_and(|at| at < cutoff))
            .map(|request| request.id.clone())
            .collect()
    }

    pub fn remove(&mut self, id: &str) {
        if let Some(request) = self.by_id.remove(id)
            && self.pending.get(&request.pending_key()) == Some(&request.id)
        {
            self.pending.remove(&request.pending_key());
        }
    }

    /// Expires pending requests whose time is up; returns their ids.
    pub fn expire_due(&mut self, now: OffsetDateTime) -> Vec<String> {
        let mut expired = Vec::new();
        for request in self.by_id.values_mut() {
            if request.state == State::Pending && now >= request.expires {
                request.state = State::Expired;
                request.finished = Some(now);
                self.pending.remove(&request.pending_key());
                expired.push(request.id.clone());
            }
        }
        expired
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(60);

    /// A denial of an exec of target (1, `ino`) from cgroup `cgroup_id`, owned by olivia.
    pub(crate) fn denial(cgroup_id: u64, ino: u64) -> Denial {
        Denial {
            kind: Kind::Exec,
            rule: "database export".into(),
            target: "/usr/bin/pg_dump".into(),
            target_key: Target::exec(1, ino),
            destination: None,
            cgroup: "/sys/fs/cgroup/agents".into(),
            cgroup_id,
            process: Process {
                pid: 10,
                tgid: 10,
                uid: 0,
                user: Some("root".into()),
                comm: "sh".into(),
                argv: None,
                parent: None,
                cwd: None,
                ancestors: Vec::new(),
            },
            owner: Some("olivia".into()),
            approvals_required: 1,
            risk: Risk::Medium,
            require_reason: false,
            exec: Some(exec_call(&["pg_dump", "prod"], 0xfeed)),
            bind: Bind::Argv,
            justification: None,
        }
    }

    pub(crate) fn exec_call(argv: &[&str], hash: u64) -> ExecCall {
        ExecCall {
            argv: argv.iter().map(|arg| arg.to_string()).collect(),
            script: false,
            complete: true,
            hash,
        }
    }

    fn decision(decision: Decision, at: OffsetDateTime) -> DecisionInfo {
        decision_by("alice", decision, at)
    }

    fn decision_by(reviewer: &str, decision: Decision, at: OffsetDateTime) -> DecisionInfo {
        DecisionInfo {
            decision,
            reviewer: reviewer.into(),
            reason: None,
            channel: "cli".into(),
            at,
        }
    }

    /// Joins a pending request or creates one, as the core does (without its cap).
    fn admit(requests: &mut Requests, denial: Denial, now: OffsetDateTime) -> Admission {
        if let Some(id) = requests.pending_for(&denial.pending_key()) {
            requests.join(&id);
            return Admission::Joined(id);
        }
        let id = format!("r{}", requests.list(true).len());
        requests.create(denial, id.clone(), now);
        Admission::New(id)
    }

    fn new_id_of(admission: Admission) -> String {
        match admission {
            Admission::New(id) => id,
            other => panic!("{other:?}, expected a new request"),
        }
    }

    #[test]
    fn repeats_join_the_pending_request() {
        let now = OffsetDateTime::now_utc();
        let mut requests = Requests::new(TTL);
        let id = new_id_of(admit(&mut requests, denial(7, 100), now));
        assert_eq!(
            admit(&mut requests, denial(7, 100), now),
            Admission::Joined(id.clone())
        );
        assert_eq!(requests.get(&id).unwrap().attempts, 2);
        // Another cgroup or another target is another request.
        let other_cgroup = new_id_of(admit(&mut requests, denial(8, 100), now));
        let other_target = new_id_of(admit(&mut requests, denial(7, 101), now));
        assert_ne!(other_cgroup, id);
        assert_ne!(other_target, id);
        assert_eq!(requests.list(false).len(), 3);
    }

    #[test]
    fn other_arguments_are_another_request_unless_the_rule_binds_the_binary() {
        let now = OffsetDateTime::now_utc();
        let mut requests = Requests::new(TTL);
        let with_args = |argv: &[&str], hash, bind| Denial {
            exec: Some(exec_call(argv, hash)),
            bind,
            ..denial(7, 100)
        };
        let one = new_id_of(admit(
            &mut requests,
            with_args(&["echo", "one"], 1, Bind::Argv),
            now,
        ));
        let two = new_id_of(admit(
            &mut requests,
            with_args(&["echo", "two"], 2, Bind::Argv),
            now,
        ));
        assert_ne!(one, two);
        assert_eq!(
            admit(
                &mut requests,
                with_args(&["echo", "one"], 1, Bind::Argv),
                now
            ),
            Admission::Joined(one.clone())
        );
        // Under bind = "binary" every argument list is the same action.
        let any = new_id_of(admit(
            &mut requests,
            with_args(&["a"], 3, Bind::Binary),
            now,
        ));
        assert_eq!(
            admit(&mut requests, with_args(&["b"], 4, Bind::Binary), now),
            Admission::Joined(any.clone())
        );
        let request = requests.get(&one).unwrap();
        assert_eq!(request.bound_argv(), Some(1));
        assert_eq!(request.will_run().as_deref(), Some("echo one"));
        assert_eq!(requests.get(&any).unwrap().bound_argv(), None);
    }

    #[test]
    fn what_an_approval_covers_is_said_plainly() {
        let now = OffsetDateTime::now_utc();
        let mut requests = Requests::new(TTL);
        let mut cut = exec_call(&["psql", "-c", "select"], 5);
        cut.complete = false;
        let mut script = exec_call(&["--prod", "it's"], 6);
        script.script = true;
        let cases = [
            (
                Some(exec_call(&["ls"], 1)),
                Bind::Argv,
                "exactly this command",
            ),
            (Some(exec_call(&["ls"], 1)), Bind::Binary, "any arguments"),
            (Some(cut), Bind::Argv, "nothing"),
            (None, Bind::Argv, "nothing"),
        ];
        for (index, (exec, bind, covers)) in cases.into_iter().enumerate() {
            let denial = Denial {
                exec,
                bind,
                ..denial(7, 200 + index as u64)
            };
            let id = new_id_of(admit(&mut requests, denial, now));
            let request = requests.get(&id).unwrap();
            assert!(request.grant_covers().unwrap().contains(covers), "{index}");
        }
        let denial = Denial {
            exec: Some(script),
            target: "/opt/deploy.sh".into(),
            ..denial(7, 300)
        };
        let id = new_id_of(admit(&mut requests, denial, now));
        // A script's path stands where argv[0] stood.
        assert_eq!(
            requests.get(&id).unwrap().will_run().as_deref(),
            Some("/opt/deploy.sh --prod 'it'\\''s'")
        );
    }

    #[test]
    fn decided_once() {
        let now = OffsetDateTime::now_utc();
        let mut requests = Requests::new(TTL);
        let id = new_id_of(admit(&mut requests, denial(7, 100), now));
        let Ok(Outcome::Decided(request)) = requests.decide(&id, decision(Decision::Approve, now))
        else {
            panic!("one approval decides");
        };
        assert_eq!(request.state, State::Approved);
        assert_eq!(
            requests.decide(&id, decision(Decision::Deny, now)),
            Err(DecideError::AlreadyDecided {
                id: id.clone(),
                state: State::Approved
            })
        );
        // After a decision, the next denial is a new request.
        let next = new_id_of(admit(&mut requests, denial(7, 100), now));
        assert_ne!(next, id);
        assert_eq!(requests.list(false).len(), 1);
        assert_eq!(requests.list(true).len(), 2);
    }

    #[test]
    fn unknown_request_not_found() {
        let mut requests = Requests::new(TTL);
        let now = OffsetDateTime::now_utc();
        assert_eq!(
            requests.decide("nope", decision(Decision::Approve, now)),
            Err(DecideError::NotFound("nope".into()))
        );
    }

    #[test]
    fn expired_requests_cannot_be_decided() {
        let now = OffsetDateTime::now_utc();
        let mut requests = Requests::new(TTL);
        let id = new_id_of(admit(&mut requests, denial(7, 100), now));
        let later = now + TTL;
        // Past its time but before the sweep: still refused.
        assert_eq!(
            requests.check_decidable(&id, later).err(),
            Some(DecideError::Expired(id.clone()))
        );
        assert_eq!(requests.expire_due(now), Vec::<String>::new());
        assert_eq!(requests.expire_due(later), vec![id.clone()]);
        assert_eq!(requests.get(&id).unwrap().state, State::Expired);
        assert_eq!(
            requests.decide(&id, decision(Decision::Approve, later)),
            Err(DecideError::Expired(id.clone()))
        );
    }

    #[test]
    fn owner_never_approves_but_may_deny() {
        let now = OffsetDateTime::now_utc();
        let mut requests = Requests::new(TTL);
        let id = new_id_of(admit(&mut requests, denial(7, 100), now));
        assert_eq!(
            requests.decide(&id, decision_by("olivia", Decision::Approve, now)),
            Err(DecideError::Owner {
                id: id.clone(),
                reviewer: "olivia".into()
            })
        );
        assert!(matches!(
            requests.decide(&id, decision_by("olivia", Decision::Deny, now)),
            Ok(Outcome::Decided(_))
        ));
    }

    #[test]
    fn two_approvals_need_two_reviewers_and_one_deny_ends_it() {
        let now = OffsetDateTime::now_utc();
        let mut requests = Requests::new(TTL);
        let mut two = denial(7, 100);
        two.approvals_required = 2;
        let id = new_id_of(admit(&mut requests, two.clone(), now));
        assert!(matches!(
            requests.decide(&id, decision_by("alice", Decision::Approve, now)),
            Ok(Outcome::Approval { missing: 1, .. })
        ));
        assert_eq!(
            requests.decide(&id, decision_by("alice", Decision::Approve, now)),
            Err(DecideError::AlreadyApproved {
                id: id.clone(),
                reviewer: "alice".into()
            })
        );
        assert_eq!(requests.get(&id).unwrap().state, State::Pending);
        let Ok(Outcome::Decided(request)) =
            requests.decide(&id, decision_by("bob", Decision::Approve, now))
        else {
            panic!("the second reviewer decides");
        };
        assert_eq!(request.state, State::Approved);

        let other = new_id_of(admit(&mut requests, two, now));
        requests
            .decide(&other, decision_by("alice", Decision::Approve, now))
            .unwrap();
        let Ok(Outcome::Decided(denied)) =
            requests.decide(&other, decision_by("bob", Decision::Deny, now))
        else {
            panic!("a deny decides");
        };
        assert_eq!(denied.state, State::Denied);
    }

    #[test]
    fn required_reason_is_enforced() {
        let now = OffsetDateTime::now_utc();
        let mut requests = Requests::new(TTL);
        let mut strict = denial(7, 100);
        strict.require_reason = true;
        let id = new_id_of(admit(&mut requests, strict, now));
        assert_eq!(
            requests.decide(&id, decision(Decision::Approve, now)),
            Err(DecideError::ReasonRequired(id.clone()))
        );
        let mut with_reason = decision(Decision::Approve, now);
        with_reason.reason = Some("ticket 7".into());
        assert!(matches!(
            requests.decide(&id, with_reason),
            Ok(Outcome::Decided(_))
        ));
    }

    #[test]
    fn restored_requests_behave_as_before() {
        let now = OffsetDateTime::now_utc();
        let mut original = Requests::new(TTL);
        let pending = new_id_of(admit(&mut original, denial(7, 100), now)).clone();
        let decided = new_id_of(admit(&mut original, denial(7, 101), now));
        let expired = new_id_of(admit(&mut original, denial(7, 102), now));

        let mut restored = Requests::new(TTL);
        for id in [&pending, &decided, &expired] {
            restored.restore(original.get(id).unwrap().clone());
        }
        restored.restore_decision(&decided, decision(Decision::Deny, now));
        restored.restore_expired(&expired, now);
        assert_eq!(restored.list(false).len(), 1);
        assert_eq!(
            admit(&mut restored, denial(7, 100), now),
            Admission::Joined(pending.clone())
        );
        assert!(matches!(
            admit(&mut restored, denial(7, 101), now),
            Admission::New(_)
        ));
        assert!(
            restored
                .decide(&pending, decision(Decision::Approve, now))
                .is_ok()
        );
    }

    #[test]
    fn reviewer_authorization() {
        let reviewers = vec!["alice".to_owned(), "root".to_owned()];
        assert_eq!(authorize_reviewer(&reviewers, "alice", false), Ok(()));
        assert_eq!(
            authorize_reviewer(&reviewers, "bob", false),
            Err(Refusal::NotReviewer("bob".into()))
        );
        // Even a listed reviewer cannot decide from inside an agent cgroup.
        assert_eq!(
            authorize_reviewer(&reviewers, "root", true),
            Err(Refusal::FromAgent)
        );
    }
}
