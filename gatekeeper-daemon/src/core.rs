//! The daemon's core: the request lifecycle, decisions, grants, expiry, delivery scheduling and
//! the limits no agent can exhaust, as a state machine without I/O.
//!
//! Inputs arrive as method calls carrying the time; effects queue up for the owner, which carries
//! them out in order and reports what the world answered (a grant put into the kernel, taken
//! out, a delivery done) through further calls. Replay after a restart feeds the journal's
//! records back through [`Core::replay`].

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    time::Duration,
};

use gatekeeper_common::{GRANT_BINDS_ARGV, GrantKey};
use time::OffsetDateTime;

use crate::{
    journal::schema::{Event, GrantSnapshot, LaunchedAgent, Snapshot},
    //, GrantSnapshot, Snapshot},
    records,
    requests::{
        Admission, DecideError, Decision, DecisionInfo, Denial, JustifyError, MAX_ANNOUNCED,
        MAX_ANNOUNCED_ARGS, Outcome, Refusal, Request, Requests, State, authorize_reviewer,
        check_justification,
    },
};

/// How long a justification announced for an exec waits for it.
pub const ANNOUNCED_FOR: Duration = Duration::from_secs(30);

/// A justification given before the exec it is for.
struct Announced {
    cgroup_id: u64,
    argv: Vec<String>,
    text: String,
    until: OffsetDateTime,
}

/// How long after its expiry a consumed grant waits for its kernel event before it is journaled
/// as used without one.
pub const USED_EVENT_GRACE: Duration = Duration::from_secs(2);
/// Requests one digest message lists at most; the rest wait for the next one.
pub const MAX_DIGEST: usize = 20;

/// The time, on both clocks the core needs: the wall clock for what people read, and
/// CLOCK_BOOTTIME, the clock the kernel checks grant expiry against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    pub wall: OffsetDateTime,
    pub boot_ns: u64,
}

impl Now {
    pub fn plus(self, duration: Duration) -> Self {
        Self {
            wall: self.wall + duration,
            boot_ns: self.boot_ns.saturating_add(duration.as_nanos() as u64),
        }
    }
}

/// One webhook as the core schedules it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookSettings {
    pub url: String,
    /// Messages that may go out at once...
    pub burst: u32,
    /// ...and then one per this long.
    pub refill: Duration,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub reviewers: Vec<String>,
    pub request_ttl: Duration,
    pub grant_ttl: Duration,
    /// How long finished requests stay in memory (they stay in the journal).
    pub retention: Duration,
    /// Pending requests per agent cgroup.
    pub max_pending: u32,
    /// How long after a failed round of delivery attempts the next round starts.
    pub redeliver_interval: Duration,
    pub hooks: Vec<HookSettings>,
}

/// Who decides, as the channel established it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decider {
    pub reviewer: String,
    pub caller_is_agent: bool,
    pub channel: &'static str,
}

/// Why a decision was not taken.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecisionFailure {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error(transparent)]
    Request(#[from] DecideError),
}

/// What the owner must do, in this order.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Append durably; nothing after it may happen before it is on disk.
    Journal(Event),
    /// Put the grant into the kernel; answer with [`Core::grant_put`].
    PutGrant {
        grant_id: u64,
        key: GrantKey,
        expires_boot_ns: u64,
        /// Bound to the exec arguments of this hash (the id carries
        /// [`gatekeeper_common::GRANT_BINDS_ARGV`]).
        argv: Option<u64>,
    },
    /// Take an expired grant out of the kernel; answer with [`Core::grant_taken`].
    TakeGrant { grant_id: u64, key: GrantKey },
    /// Send these pending requests to webhook `hook` (one: its message; more: a digest); answer
    /// with [`Core::delivery_done`].
    Deliver {
        delivery: u64,
        hook: usize,
        requests: Vec<Request>,
    },
    /// A request left pending: whoever waits on it may stop.
    Settled { request_id: String, state: State },
}

/// One attempt to deliver a message, as journaled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryAttempt {
    pub attempt: u32,
    pub delivered: bool,
    pub status: Option<u16>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GrantPhase {
    /// Asked into the kernel, not confirmed yet.
    Installing,
    Live,
    /// Asked out of the kernel at expiry.
    Taking,
    /// Gone from the kernel without the daemon taking it: consumed, its event on the way.
    Consumed {
        since_boot_ns: u64,
    },
}

#[derive(Debug, Clone)]
struct Grant {
    request_id: String,
    key: GrantKey,
    expires_boot_ns: u64,
    phase: GrantPhase,
    /// Known to have reached the kernel (false: restored from a decision record without its
    /// `grant_issued`, so only the kernel can tell).
    confirmed: bool,
}

#[derive(Debug, Clone, Default)]
struct DeliveryState {
    delivered: bool,
    in_flight: bool,
    /// The request changed (the agent gave its reason) while a delivery of it was in flight:
    /// it goes out again once that one is done.
    stale: bool,
    /// A failed round waits until then.
    not_before: Option<OffsetDateTime>,
}

#[derive(Debug, Clone)]
struct Bucket {
    tokens: f64,
    at: OffsetDateTime,
}

/// Records of a noisy kind journaled at most once per this interval.
pub const NOISE_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
struct Noise {
    /// When one of this kind was last journaled.
    last: OffsetDateTime,
    /// How many came since, not journaled.
    count: u64,
    latest: Option<Event>,
}

/// The numbers `status` reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub pending: usize,
    pub retained: usize,
    pub grants: usize,
    pub over_cap: u64,
}

pub struct Core {
    settings: Settings,
    requests: Requests,
    grants: BTreeMap<u64, Grant>,
    /// Per (request, webhook index).
    deliveries: HashMap<(String, usize), DeliveryState>,
    /// Delivery id -> (webhook index, request ids) while in flight.
    in_flight: HashMap<u64, (usize, Vec<String>)>,
    buckets: Vec<Bucket>,
    /// Agent cgroups at their cap of pending requests: denials not turned into requests.
    over_cap: HashMap<u64, u64>,
    capped: HashSet<u64>,
    enforcing_since: Option<OffsetDateTime>,
    /// Forwarding receiver -> the last record it has had.
    forwarded: BTreeMap<String, u64>,
    /// Agents started by `gatekeeper agent run`, by cgroup id.
    agents: BTreeMap<u64, LaunchedAgent>,
    /// Host of a `host` rule -> the addresses it protected as last journaled.
    hosts: BTreeMap<String, Vec<String>>,
    /// Records of noisy kinds (tamper attempts, refusals) held back, by kind.
    noise: HashMap<String, Noise>,
    /// Justifications agents gave for an exec they are about to try, until it comes.
    announced: Vec<Announced>,
    effects: VecDeque<Effect>,
    ids: Box<dyn FnMut() -> u64 + Send>,
}

impl Core {
    /// `ids` gives fresh random numbers for request, grant and delivery ids.
    pub fn new(settings: Settings, now: Now, ids: Box<dyn FnMut() -> u64 + Send>) -> Self {
        let buckets = settings
            .hooks
            .iter()
            .map(|hook| Bucket {
                tokens: f64::from(hook.burst),
                at: now.wall,
            })
            .collect();
        Self {
            requests: Requests::new(settings.request_ttl),
            settings,
            grants: BTreeMap::new(),
            deliveries: HashMap::new(),
            in_flight: HashMap::new(),
            buckets,
            over_cap: HashMap::new(),
            capped: HashSet::new(),
            enforcing_since: None,
            forwarded: BTreeMap::new(),
            agents: BTreeMap::new(),
            hosts: BTreeMap::new(),
            noise: HashMap::new(),
            announced: Vec::new(),
            effects: VecDeque::new(),
            ids,
        }
    }

    /// The effects queued so far, oldest first.
    pub fn take_effects(&mut self) -> VecDeque<Effect> {
        std::mem::take(&mut self.effects)
    }

    fn journal(&mut self, event: Event) {
        self.effects.push_back(Effect::Journal(event));
    }

    /// Journals what the owner observed itself (start, stop, policy changes).
    pub fn note(&mut self, event: Event) {
        match &event {
            Event::EnforcementInstalled { .. } => {}
            Event::Uninstalled { .. } => self.enforcing_since = None,
            Event::HostResolved {
                host, addresses, ..
            } => self.remember_addresses(host, addresses),
            _ => {}
        }
        self.journal(event);
    }

    pub fn set_enforcing_since(&mut self, since: OffsetDateTime) {
        self.enforcing_since = Some(since);
    }

    pub fn enforcing_since(&self) -> Option<OffsetDateTime> {
        self.enforcing_since
    }

    fn request_id(&mut self) -> String {
        loop {
            let id = hex::encode(&(self.ids)().to_le_bytes()[..6]);
            if self.requests.get(&id).is_none() {
                return id;
            }
        }
    }

    /// A kernel denial. Repeats of a pending (cgroup, target) join it; a cgroup at its cap of
    /// pending requests gets no new one, only a count on the open ones.
    pub fn on_denial(&mut self, denial: Denial, now: Now) -> Admission {
        if let Some(id) = self.requests.pending_for(&denial.pending_key()) {
            self.requests.join(&id);
            return Admission::Joined(id);
        }
        let cgroup_id = denial.cgroup_id;
        if self.requests.pending_in_cgroup(cgroup_id) >= self.settings.max_pending as usize {
            *self.over_cap.entry(cgroup_id).or_default() += 1;
            if self.capped.insert(cgroup_id) {
                self.journal(Event::PendingCapReached {
                    cgroup: denial.cgroup.clone(),
                    cap: self.settings.max_pending,
                });
            }
            return Admission::OverCap;
        }
        let mut denial = denial;
        denial.justification = self.take_announced(&denial, now);
        let id = self.request_id();
        let request = self.requests.create(denial, id.clone(), now.wall).clone();
        self.journal(Event::RequestCreated {
            request: Box::new(records::request_record(&request)),
        });
        self.schedule_deliveries(now);
        Admission::New(id)
    }

    /// An agent says why it is about to run `argv` (`gatekeeper run --reason`): the request its
    /// exec makes within [`ANNOUNCED_FOR`] carries the text from the start.
    pub fn announce(
        &mut self,
        cgroup_id: u64,
        argv: Vec<String>,
        text: String,
        now: Now,
    ) -> Result<(), JustifyError> {
        check_justification(&text)?;
        if argv.len() > MAX_ANNOUNCED_ARGS {
            return Err(JustifyError::TooManyArgs(argv.len()));
        }
        self.announced
            .retain(|announced| announced.until > now.wall);
        let waiting = self
            .announced
            .iter()
            .filter(|announced| announced.cgroup_id == cgroup_id)
            .count();
        if waiting >= MAX_ANNOUNCED {
            return Err(JustifyError::TooMany);
        }
        self.announced.push(Announced {
            cgroup_id,
            argv,
            text,
            until: now.wall + ANNOUNCED_FOR,
        });
        Ok(())
    }

    /// The justification announced for the exec `denial` is.
    fn take_announced(&mut self, denial: &Denial, now: Now) -> Option<String> {
        let exec = denial.exec.as_ref()?;
        let index = self.announced.iter().position(|announced| {
            announced.cgroup_id == denial.cgroup_id
                && announced.until > now.wall
                && exec.matches(&announced.argv)
        })?;
        Some(self.announced.remove(index).text)
    }

    /// An agent says why it needs the action of its cgroup's pending request `id` (its latest
    /// pending one without): journaled and shown with the request. Returns the request's id.
    pub fn justify(
        &mut self,
        cgroup_id: u64,
        id: Option<&str>,
        text: String,
    ) -> Result<String, JustifyError> {
        check_justification(&text)?;
        let request = match id {
            Some(id) => self
                .request_for_cgroup(cgroup_id, Some(id))
                .ok_or_else(|| JustifyError::NoRequest(id.to_owned()))?,
            None => self
                .requests
                .list(false)
                .into_iter()
                .filter(|request| request.cgroup_id == cgroup_id)
                .max_by_key(|request| request.created)
                .cloned()
                .ok_or(JustifyError::NothingPending)?,
        };
        self.requests.justify(&request.id, text.clone())?;
        self.journal(Event::Justification {
            request_id: request.id.clone(),
            text,
        });
        self.deliver_again(&request.id);
        Ok(request.id)
    }

    /// Reviewers who already have `request_id` get it again (with what changed), on every
    /// channel; one on its way goes again when it arrives.
    fn deliver_again(&mut self, request_id: &str) {
        for ((id, _), state) in &mut self.deliveries {
            if id == request_id {
                if state.in_flight {
                    state.stale = true;
                } else {
                    state.delivered = false;
                }
            }
        }
    }

    /// An agent's tamper attempt, denied by the kernel: journaled, at most once a second per
    /// cgroup and hook (the rest counted on the next record), so attempts cannot flood the
    /// journal.
    pub fn on_tamper(&mut self, event: Event, now: Now) {
        let key = match &event {
            Event::TamperAttempt { hook, cgroup, .. } => format!("tamper {cgroup} {hook}"),
            _ => String::new(),
        };
        self.journal_noise(key, event, now);
    }

    /// Journals `event` unless one of its kind (`key`) was journaled in the last
    /// [`NOISE_INTERVAL`]; then it is held and counted, and the latest goes out when the
    /// interval is over.
    fn journal_noise(&mut self, key: String, event: Event, now: Now) {
        match self.noise.get_mut(&key) {
            Some(held) if now.wall < held.last + NOISE_INTERVAL => {
                held.count += 1;
                held.latest = Some(event);
            }
            _ => {
                self.journal(event);
                self.noise.insert(
                    key,
                    Noise {
                        last: now.wall,
                        count: 0,
                        latest: None,
                    },
                );
            }
        }
    }

    /// Writes what was held back once its interval is over; forgets quiet kinds.
    fn release_noise(&mut self, now: Now) {
        let mut due = Vec::new();
        self.noise.retain(|_, held| {
            if now.wall < held.last + NOISE_INTERVAL {
                return true;
            }
            if let Some(event) = held.latest.take() {
                due.push((held.count, event));
                held.count = 0;
                held.last = now.wall;
                return true;
            }
            false
        });
        for (count, mut event) in due {
            if let Event::TamperAttempt { repeated, .. } | Event::DecisionRefused { repeated, .. } =
                &mut event
            {
                *repeated = count.saturating_sub(1);
            }
            self.journal(event);
        }
    }

    /// The kernel let an action through on `grant_id`, consuming it.
    pub fn on_grant_used(&mut self, grant_id: u64, pid: u32) -> bool {
        let Some(grant) = self.grants.remove(&grant_id) else {
            return false;
        };
        self.journal(Event::GrantUsed {
            grant_id,
            request_id: grant.request_id,
            pid: Some(pid),
        });
        true
    }

    /// Journals a refused decision (also one refused before it reached a request, e.g. an
    /// unmapped Slack user), at most once a second per caller and channel.
    pub fn refuse(
        &mut self,
        request_id: &str,
        reviewer: Option<String>,
        channel: &str,
        why: String,
        now: Now,
    ) {
        let key = format!("refused {channel} {}", reviewer.as_deref().unwrap_or(""));
        let event = Event::DecisionRefused {
            request_id: request_id.to_owned(),
            reviewer,
            channel: channel.to_owned(),
            why,
            repeated: 0,
        };
        self.journal_noise(key, event, now);
    }

    /// A reviewer's decision: authorised, checked, journaled, then (for the approval that
    /// completes it) a grant goes to the kernel. Refusals are journaled and change nothing.
    pub fn decide(
        &mut self,
        id: &str,
        decision: Decision,
        reason: Option<String>,
        decider: &Decider,
        now: Now,
    ) -> Result<Request, DecisionFailure> {
        // Unknown ids are not journaled: anyone could fill the journal with them.
        if self.requests.get(id).is_none() {
            return Err(DecideError::NotFound(id.to_owned()).into());
        }
        if let Err(refusal) = authorize_reviewer(
            &self.settings.reviewers,
            &decider.reviewer,
            decider.caller_is_agent,
        ) {
            self.refuse(
                id,
                Some(decider.reviewer.clone()),
                decider.channel,
                refusal.to_string(),
                now,
            );
            return Err(refusal.into());
        }
        let info = DecisionInfo {
            decision,
            reviewer: decider.reviewer.clone(),
            reason,
            channel: decider.channel.to_owned(),
            at: now.wall,
        };
        if let Err(error) = self.requests.check(id, &info) {
            if !matches!(error, DecideError::NotFound(_)) {
                self.refuse(
                    id,
                    Some(decider.reviewer.clone()),
                    decider.channel,
                    error.to_string(),
                    now,
                );
            }
            return Err(error.into());
        }
        // The approval that completes the request names its grant in the decision record.
        let binds_argv = self.requests.get(id).is_some_and(Request::binds_argv);
        let grant_id = self
            .requests
            .completes_approval(id, &info)
            .then(|| (self.ids)() >> 1 | if binds_argv { GRANT_BINDS_ARGV } else { 0 });
        self.journal(records::decision_event(id, &info, grant_id));
        let outcome = self.requests.decide(id, info)?;
        let request = match outcome {
            Outcome::Approval { request, .. } => return Ok(request),
            Outcome::Decided(request) => request,
        };
        if let Some(grant_id) = grant_id {
            self.start_grant(&request, grant_id, now);
        }
        self.settled(&request.id, request.state);
        Ok(self.requests.get(id).cloned().unwrap_or(request))
    }

    fn settled(&mut self, request_id: &str, state: State) {
        self.effects.push_back(Effect::Settled {
            request_id: request_id.to_owned(),
            state,
        });
        self.release_caps();
    }

    /// Cgroups below their cap again journal the next time they reach it.
    fn release_caps(&mut self) {
        let max = self.settings.max_pending as usize;
        let requests = &self.requests;
        self.capped
            .retain(|cgroup_id| requests.pending_in_cgroup(*cgroup_id) >= max);
    }

    fn start_grant(&mut self, request: &Request, grant_id: u64, now: Now) {
        let key = GrantKey {
            cgroup_id: request.cgroup_id,
            target: request.target_key,
        };
        let expires_boot_ns = now.plus(self.settings.grant_ttl).boot_ns;
        self.grants.insert(
            grant_id,
            Grant {
                request_id: request.id.clone(),
                key,
                expires_boot_ns,
                phase: GrantPhase::Installing,
                confirmed: true,
            },
        );
        self.effects.push_back(Effect::PutGrant {
            grant_id,
            key,
            expires_boot_ns,
            argv: request.bound_argv(),
        });
    }

    /// What became of a [`Effect::PutGrant`]. Only a grant in the kernel is journaled as
    /// issued; a failed one is journaled and shown on its request.
    pub fn grant_put(&mut self, grant_id: u64, result: Result<(), String>, now: Now) {
        let Some(grant) = self.grants.get(&grant_id).cloned() else {
            return;
        };
        match result {
            Ok(()) => {
                // The kernel holds one grant per key: an older one for it is gone.
                let replaced: Vec<u64> = self
                    .grants
                    .iter()
                    .filter(|(id, other)| **id != grant_id && other.key == grant.key)
                    .map(|(id, _)| *id)
                    .collect();
                for old in replaced {
                    if let Some(old_grant) = self.grants.remove(&old) {
                        self.journal(Event::GrantExpired {
                            grant_id: old,
                            request_id: old_grant.request_id,
                        });
                    }
                }
                if let Some(live) = self.grants.get_mut(&grant_id) {
                    live.phase = GrantPhase::Live;
                }
                self.requests.attach_grant(&grant.request_id, grant_id);
                self.journal(Event::GrantIssued {
                    grant_id,
                    request_id: grant.request_id,
                    expires: now.wall + self.settings.grant_ttl,
                });
            }
            Err(error) => {
                self.grants.remove(&grant_id);
                self.requests
                    .set_grant_error(&grant.request_id, error.clone());
                self.journal(Event::GrantFailed {
                    grant_id,
                    request_id: grant.request_id,
                    error,
                });
            }
        }
    }

    /// What became of a [`Effect::TakeGrant`]: true if it was still there (unused), false if
    /// the kernel consumed it and its event is on the way; an error leaves it for the next tick.
    pub fn grant_taken(&mut self, grant_id: u64, removed: Result<bool, String>, now: Now) {
        let Some(grant) = self.grants.get_mut(&grant_id) else {
            return;
        };
        let Ok(removed) = removed else {
            grant.phase = GrantPhase::Live;
            return;
        };
        if removed {
            let request_id = grant.request_id.clone();
            self.grants.remove(&grant_id);
            self.journal(Event::GrantExpired {
                grant_id,
                request_id,
            });
        } else {
            grant.phase = GrantPhase::Consumed {
                since_boot_ns: now.boot_ns,
            };
        }
    }

    /// What became of a [`Effect::Deliver`]: every attempt is journaled; a failed round is
    /// tried again after the redelivery interval.
    pub fn delivery_done(
        &mut self,
        delivery: u64,
        attempts: Vec<DeliveryAttempt>,
        delivered: bool,
        now: Now,
    ) {
        let Some((hook, request_ids)) = self.in_flight.remove(&delivery) else {
            return;
        };
        let url = self
            .settings
            .hooks
            .get(hook)
            .map(|hook| hook.url.clone())
            .unwrap_or_default();
        for attempt in attempts {
            self.journal(Event::WebhookDelivery {
                request_ids: request_ids.clone(),
                url: url.clone(),
                attempt: attempt.attempt,
                delivered: attempt.delivered,
                status: attempt.status,
                error: attempt.error,
            });
        }
        let retry_at = now.wall + self.settings.redeliver_interval;
        for id in request_ids {
            if let Some(state) = self.deliveries.get_mut(&(id, hook)) {
                state.in_flight = false;
                state.delivered |= delivered && !state.stale;
                state.stale = false;
                if !delivered {
                    state.not_before = Some(retry_at);
                }
            }
        }
    }

    /// Time passes: requests and grants expire, deliveries go out as the rate allows, finished
    /// requests leave memory after the retention period.
    pub fn tick(&mut self, now: Now) {
        for request_id in self.requests.expire_due(now.wall) {
            self.journal(Event::RequestExpired {
                request_id: request_id.clone(),
            });
            self.settled(&request_id, State::Expired);
        }
        let grace = USED_EVENT_GRACE.as_nanos() as u64;
        let mut used_silently = Vec::new();
        for (grant_id, grant) in &mut self.grants {
            match grant.phase {
                GrantPhase::Live if now.boot_ns >= grant.expires_boot_ns => {
                    grant.phase = GrantPhase::Taking;
                    self.effects.push_back(Effect::TakeGrant {
                        grant_id: *grant_id,
                        key: grant.key,
                    });
                }
                GrantPhase::Consumed { since_boot_ns }
                    if now.boot_ns >= since_boot_ns.saturating_add(grace) =>
                {
                    used_silently.push(*grant_id);
                }
                _ => {}
            }
        }
        for grant_id in used_silently {
            if let Some(grant) = self.grants.remove(&grant_id) {
                // Gone from the kernel without an event: used with the event lost, or, for a
                // grant never confirmed, perhaps never there. Either way it can no longer pass.
                self.journal(if grant.confirmed {
                    Event::GrantUsed {
                        grant_id,
                        request_id: grant.request_id,
                        pid: None,
                    }
                } else {
                    Event::GrantExpired {
                        grant_id,
                        request_id: grant.request_id,
                    }
                });
            }
        }
        self.schedule_deliveries(now);
        self.forget_finished(now);
        self.release_noise(now);
    }

    fn forget_finished(&mut self, now: Now) {
        let granted: HashSet<&str> = self
            .grants
            .values()
            .map(|grant| grant.request_id.as_str())
            .collect();
        let due = self
            .requests
            .finished_before(now.wall - self.settings.retention);
        let forget: Vec<String> = due
            .into_iter()
            .filter(|id| !granted.contains(id.as_str()))
            .collect();
        for id in forget {
            self.requests.remove(&id);
            for hook in 0..self.settings.hooks.len() {
                self.deliveries.remove(&(id.clone(), hook));
            }
        }
    }

    /// Sends what each webhook has not had yet, as its rate allows: one message while the
    /// bucket has tokens, and what piled up meanwhile as one digest.
    fn schedule_deliveries(&mut self, now: Now) {
        for hook in 0..self.settings.hooks.len() {
            let settings = &self.settings.hooks[hook];
            let bucket = &mut self.buckets[hook];
            let elapsed = (now.wall - bucket.at).as_seconds_f64().max(0.0);
            let refill = settings.refill.as_secs_f64().max(f64::MIN_POSITIVE);
            bucket.tokens = (bucket.tokens + elapsed / refill).min(f64::from(settings.burst));
            bucket.at = now.wall;
            while self.buckets[hook].tokens >= 1.0 {
                let due: Vec<Request> = self
                    .requests
                    .list(false)
                    .into_iter()
                    .filter(|request| {
                        let state = self.deliveries.get(&(request.id.clone(), hook));
                        state.is_none_or(|state| {
                            !state.delivered
                                && !state.in_flight
                                && state.not_before.is_none_or(|at| at <= now.wall)
                        })
                    })
                    .take(MAX_DIGEST)
                    .cloned()
                    .collect();
                if due.is_empty() {
                    break;
                }
                self.buckets[hook].tokens -= 1.0;
                let delivery = (self.ids)();
                let ids: Vec<String> = due.iter().map(|request| request.id.clone()).collect();
                for id in &ids {
                    self.deliveries
                        .entry((id.clone(), hook))
                        .or_default()
                        .in_flight = true;
                }
                self.in_flight.insert(delivery, (hook, ids));
                let requests = due
                    .into_iter()
                    .map(|request| self.with_over_cap(request))
                    .collect();
                self.effects.push_back(Effect::Deliver {
                    delivery,
                    hook,
                    requests,
                });
            }
        }
    }

    fn with_over_cap(&self, mut request: Request) -> Request {
        request.over_cap = self.over_cap.get(&request.cgroup_id).copied().unwrap_or(0);
        request
    }

    pub fn get(&self, id: &str) -> Option<Request> {
        self.requests
            .get(id)
            .cloned()
            .map(|r| self.with_over_cap(r))
    }

    /// Pending requests, or all still in memory with `all`, oldest first.
    pub fn list(&self, all: bool) -> Vec<Request> {
        self.requests
            .list(all)
            .into_iter()
            .cloned()
            .map(|request| self.with_over_cap(request))
            .collect()
    }

    /// The caller's own request: `id` if it belongs to cgroup `cgroup_id`, else its latest.
    pub fn request_for_cgroup(&self, cgroup_id: u64, id: Option<&str>) -> Option<Request> {
        let own = self
            .requests
            .list(true)
            .into_iter()
            .filter(|request| request.cgroup_id == cgroup_id);
        match id {
            Some(id) => own.into_iter().find(|request| request.id == id),
            None => own.into_iter().max_by_key(|request| request.created),
        }
        .cloned()
    }

    /// The latest request of cgroup `cgroup_id` for an exec of exactly `argv` that is pending
    /// or finished at or after `since`.
    pub fn request_for_exec(
        &self,
        cgroup_id: u64,
        argv: &[String],
        since: OffsetDateTime,
    ) -> Option<Request> {
        self.requests
            .list(true)
            .into_iter()
            .filter(|request| {
                request.cgroup_id == cgroup_id
                    && request.exec.as_ref().is_some_and(|exec| exec.matches(argv))
                    && request.finished.is_none_or(|finished| finished >= since)
            })
            .max_by_key(|request| request.created)
            .cloned()
    }

    pub fn counts(&self) -> Counts {
        let pending = self.requests.list(false).len();
        Counts {
            pending,
            retained: self.requests.list(true).len() - pending,
            grants: self.grants.len(),
            over_cap: self.over_cap.values().sum(),
        }
    }

    /// Everything a restart needs, for a checkpoint record.
    pub fn snapshot(&self) -> Snapshot {
        let requests = self
            .requests
            .list(true)
            .into_iter()
            .map(|request| {
                let delivered_to = self
                    .settings
                    .hooks
                    .iter()
                    .enumerate()
                    .filter(|(index, _)| {
                        self.deliveries
                            .get(&(request.id.clone(), *index))
                            .is_some_and(|state| state.delivered)
                    })
                    .map(|(_, hook)| hook.url.clone())
                    .collect();
                records::request_snapshot(request, delivered_to)
            })
            .collect();
        let grants = self
            .grants
            .iter()
            .filter(|(_, grant)| grant.phase != GrantPhase::Installing)
            .map(|(grant_id, grant)| GrantSnapshot {
                grant_id: *grant_id,
                request_id: grant.request_id.clone(),
            })
            .collect();
        Snapshot {
            enforcing_since: self.enforcing_since,
            requests,
            grants,
            forwarded: self.forwarded.clone(),
            agents: self.agents.values().cloned().collect(),
            host_addresses: self.hosts.clone(),
        }
    }

    /// Remembers the addresses a `host_resolved` record says `host` protects.
    fn remember_addresses(&mut self, host: &str, addresses: &[String]) {
        self.hosts.insert(host.to_owned(), addresses.to_vec());
    }

    /// Forgets the addresses of hosts no rule names any more.
    pub fn keep_hosts(&mut self, named: impl Fn(&str) -> bool) {
        self.hosts.retain(|host, _| named(host));
    }

    /// The addresses `host` protected as last journaled, if it ever had some.
    pub fn remembered_addresses(&self, host: &str) -> Option<&[String]> {
        self.hosts.get(host).map(Vec::as_slice)
    }

    /// `gatekeeper agent run` made cgroup `cgroup_id` for an agent of `owner`.
    pub fn agent_started(
        &mut self,
        cgroup: String,
        cgroup_id: u64,
        owner: String,
        by: String,
        command: Vec<String>,
    ) {
        self.agents.insert(
            cgroup_id,
            LaunchedAgent {
                cgroup_id,
                cgroup: cgroup.clone(),
                owner: owner.clone(),
            },
        );
        self.note(Event::AgentStarted {
            cgroup,
            cgroup_id,
            owner,
            by,
            command,
        });
    }

    /// The agent `gatekeeper agent run` started in cgroup `cgroup_id`.
    pub fn launched(&self, cgroup_id: u64) -> Option<&LaunchedAgent> {
        self.agents.get(&cgroup_id)
    }

    /// A forwarding receiver has had the records up to `seq`: the next checkpoint notes it.
    pub fn note_forwarded(&mut self, receiver: &str, seq: u64) {
        let last = self.forwarded.entry(receiver.to_owned()).or_default();
        *last = (*last).max(seq);
    }

    /// Forwarding receiver -> the last record it has had, as the journal last noted.
    pub fn forwarded(&self) -> &BTreeMap<String, u64> {
        &self.forwarded
    }

    fn mark_delivered(&mut self, request_id: &str, url: &str) {
        if let Some(hook) = self.settings.hooks.iter().position(|hook| hook.url == url) {
            self.deliveries
                .entry((request_id.to_owned(), hook))
                .or_default()
                .delivered = true;
        }
    }

    fn restore_grant(&mut self, grant_id: u64, request_id: &str, confirmed: bool) {
        let Some(request) = self.requests.get(request_id) else {
            return;
        };
        let key = GrantKey {
            cgroup_id: request.cgroup_id,
            target: request.target_key,
        };
        self.requests.attach_grant(request_id, grant_id);
        self.grants.insert(
            grant_id,
            Grant {
                request_id: request_id.to_owned(),
                key,
                // Read from the kernel by the owner before anything expires (see `adopt_grant`).
                expires_boot_ns: 0,
                phase: GrantPhase::Live,
                confirmed,
            },
        );
    }

    /// Feeds one journaled record back: the state is rebuilt as it was, nothing is journaled.
    pub fn replay(&mut self, time: OffsetDateTime, event: &Event) {
        match event {
            Event::Checkpoint { state } => {
                self.requests = Requests::new(self.settings.request_ttl);
                self.grants.clear();
                self.deliveries.clear();
                self.enforcing_since = state.enforcing_since;
                self.forwarded = state.forwarded.clone();
                self.hosts = state.host_addresses.clone();
                self.agents = state
                    .agents
                    .iter()
                    .map(|agent| (agent.cgroup_id, agent.clone()))
                    .collect();
                for snapshot in &state.requests {
                    let request = records::request_from_snapshot(snapshot);
                    let id = request.id.clone();
                    self.requests.restore(request);
                    for url in &snapshot.delivered_to {
                        self.mark_delivered(&id, url);
                    }
                }
                for grant in &state.grants {
                    self.restore_grant(grant.grant_id, &grant.request_id, true);
                }
            }
            Event::EnforcementInstalled { .. } => self.enforcing_since = Some(time),
            Event::Uninstalled { .. } => {
                self.enforcing_since = None;
                self.grants.clear();
            }
            Event::RequestCreated { request } => {
                self.requests.restore(records::request_from_record(request));
            }
            Event::Decision {
                request_id,
                decision,
                reviewer,
                reason,
                channel,
                grant_id,
            } => {
                self.requests.restore_decision(
                    request_id,
                    DecisionInfo {
                        decision: records::decision_of(*decision),
                        reviewer: reviewer.clone(),
                        reason: reason.clone(),
                        channel: channel.clone(),
                        at: time,
                    },
                );
                if let Some(grant_id) = grant_id {
                    self.restore_grant(*grant_id, request_id, false);
                }
            }
            Event::RequestExpired { request_id } => self.requests.restore_expired(request_id, time),
            Event::AgentStarted {
                cgroup_id,
                cgroup,
                owner,
                ..
            } => {
                self.agents.insert(
                    *cgroup_id,
                    LaunchedAgent {
                        cgroup_id: *cgroup_id,
                        cgroup: cgroup.clone(),
                        owner: owner.clone(),
                    },
                );
            }
            Event::HostResolved {
                host, addresses, ..
            } => self.remember_addresses(host, addresses),
            Event::Justification { request_id, text } => {
                let _ = self.requests.justify(request_id, text.clone());
                self.deliver_again(request_id);
            }
            Event::GrantIssued {
                grant_id,
                request_id,
                ..
            } => self.restore_grant(*grant_id, request_id, true),
            Event::GrantFailed {
                grant_id,
                request_id,
                error,
            } => {
                self.grants.remove(grant_id);
                self.requests.set_grant_error(request_id, error.clone());
            }
            Event::GrantUsed { grant_id, .. } | Event::GrantExpired { grant_id, .. } => {
                self.grants.remove(grant_id);
            }
            Event::WebhookDelivery {
                request_ids,
                url,
                delivered: true,
                ..
            } => {
                for id in request_ids {
                    self.mark_delivered(id, url);
                }
            }
            _ => {}
        }
    }

    /// Grants the journal says may be outstanding, for the owner to look up in the kernel.
    pub fn outstanding_grants(&self) -> Vec<(u64, GrantKey)> {
        self.grants
            .iter()
            .map(|(grant_id, grant)| (*grant_id, grant.key))
            .collect()
    }

    /// After replay, with the pins still in place: each outstanding grant's expiry as the kernel
    /// holds it, or None where the kernel no longer has it (used while the daemon was away;
    /// its event waits in the ring buffer).
    pub fn adopt_grant(&mut self, grant_id: u64, expires_boot_ns: Option<u64>, now: Now) {
        let Some(grant) = self.grants.get_mut(&grant_id) else {
            return;
        };
        match expires_boot_ns {
            Some(expires) => {
                grant.expires_boot_ns = expires;
                if !grant.confirmed {
                    // It did reach the kernel: the record the stop cut off is written now.
                    grant.confirmed = true;
                    let request_id = grant.request_id.clone();
                    let wall = now.wall + Duration::from_nanos(expires.saturating_sub(now.boot_ns));
                    self.journal(Event::GrantIssued {
                        grant_id,
                        request_id,
                        expires: wall,
                    });
                }
            }
            None => {
                grant.phase = GrantPhase::Consumed {
                    since_boot_ns: now.boot_ns,
                }
            }
        }
    }

    /// After replay, with nothing pinned (first start, a reboot): no earlier grant can be used.
    pub fn void_grants(&mut self) {
        let void: Vec<(u64, Grant)> = std::mem::take(&mut self.grants).into_iter().collect();
        for (grant_id, grant) in void {
            self.journal(Event::GrantExpired {
                grant_id,
                request_id: grant.request_id,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::requests::tests::denial;
    use gatekeeper_common::Target;

    const URL: &str = "http://127.0.0.1:9000/hook";

    fn settings() -> Settings {
        Settings {
            reviewers: vec!["alice".into(), "bob".into(), "olivia".into()],
            request_ttl: Duration::from_secs(900),
            grant_ttl: Duration::from_secs(60),
            retention: Duration::from_secs(3600),
            max_pending: 3,
            redeliver_interval: Duration::from_secs(30),
            hooks: vec![HookSettings {
                url: URL.into(),
                burst: 2,
                refill: Duration::from_secs(10),
            }],
        }
    }

    fn start() -> Now {
        Now {
            wall: OffsetDateTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            boot_ns: 1_000_000_000,
        }
    }

    fn core_with(settings: Settings) -> Core {
        let mut next = 0u64;
        Core::new(
            settings,
            start(),
            Box::new(move || {
                next += 1;
                next
            }),
        )
    }

    fn core() -> Core {
        core_with(settings())
    }

    fn cli(reviewer: &str) -> Decider {
        Decider {
            reviewer: reviewer.into(),
            caller_is_agent: false,
            channel: "cli",
        }
    }

    fn new_id(admission: Admission) -> String {
        match admission {
            Admission::New(id) => id,
            other => panic!("{other:?}, expected a new request"),
        }
    }

    fn journaled(effects: &VecDeque<Effect>) -> Vec<&'static str> {
        effects
            .iter()
            .filter_map(|effect| match effect {
                Effect::Journal(event) => Some(event.name()),
                _ => None,
            })
            .collect()
    }

    fn deliveries(effects: &VecDeque<Effect>) -> Vec<(u64, Vec<String>)> {
        effects
            .iter()
            .filter_map(|effect| match effect {
                Effect::Deliver {
                    delivery, requests, ..
                } => Some((
                    *delivery,
                    requests.iter().map(|request| request.id.clone()).collect(),
                )),
                _ => None,
            })
            .collect()
    }

    fn put_grant(effects: &VecDeque<Effect>) -> Option<(u64, GrantKey)> {
        effects.iter().find_map(|effect| match effect {
            Effect::PutGrant { grant_id, key, .. } => Some((*grant_id, *key)),
            _ => None,
        })
    }

    /// Approves `id` and confirms the grant reached the kernel; returns the grant id.
    fn approve(core: &mut Core, id: &str, now: Now) -> u64 {
        approve_logged(core, id, now, &mut Vec::new())
    }

    /// The same, keeping what was journaled on the way in `log`.
    fn approve_logged(core: &mut Core, id: &str, now: Now, log: &mut Vec<Event>) -> u64 {
        core.decide(id, Decision::Approve, None, &cli("alice"), now)
            .expect("approved");
        let effects = core.take_effects();
        log.extend(journal_events(&effects));
        let (grant_id, _) = put_grant(&effects).expect("a grant goes to the kernel");
        core.grant_put(grant_id, Ok(()), now);
        grant_id
    }

    fn journal_events(effects: &VecDeque<Effect>) -> Vec<Event> {
        effects
            .iter()
            .filter_map(|effect| match effect {
                Effect::Journal(event) => Some(event.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_denial_is_journaled_then_delivered_and_repeats_join_it() {
        let mut core = core();
        let id = new_id(core.on_denial(denial(7, 100), start()));
        let effects = core.take_effects();
        assert_eq!(journaled(&effects), ["request_created"]);
        assert!(matches!(effects[0], Effect::Journal(_)), "journaled first");
        assert_eq!(deliveries(&effects)[0].1, std::slice::from_ref(&id));

        assert_eq!(
            core.on_denial(denial(7, 100), start()),
            Admission::Joined(id.clone())
        );
        assert!(core.take_effects().is_empty(), "a repeat sends nothing");
        assert_eq!(core.get(&id).unwrap().attempts, 2);
    }

    #[test]
    fn approval_journals_the_decision_before_the_grant_and_the_grant_once_in_the_kernel() {
        let mut core = core();
        let id = new_id(core.on_denial(denial(7, 100), start()));
        core.take_effects();
        let request = core
            .decide(&id, Decision::Approve, None, &cli("alice"), start())
            .unwrap();
        assert_eq!(request.state, State::Approved);
        let effects = core.take_effects();
        assert!(matches!(
            &effects[0],
            Effect::Journal(Event::Decision { .. })
        ));
        assert!(matches!(effects[1], Effect::PutGrant { .. }));
        assert!(
            !journaled(&effects).contains(&"grant_issued"),
            "not before the kernel has it"
        );
        assert!(effects.contains(&Effect::Settled {
            request_id: id.clone(),
            state: State::Approved
        }));
        let (grant_id, key) = put_grant(&effects).unwrap();
        assert_eq!(key.cgroup_id, 7);
        assert_eq!(key.target, Target::exec(1, 100));
        core.grant_put(grant_id, Ok(()), start());
        assert_eq!(journaled(&core.take_effects()), ["grant_issued"]);
        assert_eq!(core.get(&id).unwrap().grant_id, Some(grant_id));
        assert_eq!(core.counts().grants, 1);
    }

    #[test]
    fn an_exec_grant_is_bound_to_the_approved_arguments_unless_the_rule_binds_the_binary() {
        let mut core = core();
        let bound = new_id(core.on_denial(denial(7, 100), start()));
        let any = new_id(core.on_denial(
            crate::requests::Denial {
                bind: crate::requests::Bind::Binary,
                ..denial(7, 101)
            },
            start(),
        ));
        core.take_effects();
        let grant = |core: &mut Core, id: &str| {
            core.decide(id, Decision::Approve, None, &cli("alice"), start())
                .unwrap();
            core.take_effects()
                .into_iter()
                .find_map(|effect| match effect {
                    Effect::PutGrant { grant_id, argv, .. } => Some((grant_id, argv)),
                    _ => None,
                })
                .unwrap()
        };
        let (grant_id, argv) = grant(&mut core, &bound);
        assert_ne!(grant_id & GRANT_BINDS_ARGV, 0);
        assert_eq!(argv, Some(0xfeed), "the hash the kernel reported");
        let (grant_id, argv) = grant(&mut core, &any);
        assert_eq!(grant_id & GRANT_BINDS_ARGV, 0);
        assert_eq!(argv, None);
    }

    #[test]
    fn an_agents_reason_joins_its_request_and_stays_its_own() {
        use crate::requests::MAX_JUSTIFICATION;
        let mut core = core();
        let argv = |words: &[&str]| words.iter().map(|word| word.to_string()).collect();
        assert_eq!(
            core.announce(7, argv(&["pg_dump", "prod"]), " ".into(), start()),
            Err(JustifyError::Empty)
        );
        assert_eq!(
            core.announce(
                7,
                argv(&["pg_dump", "prod"]),
                "x".repeat(MAX_JUSTIFICATION + 1),
                start()
            ),
            Err(JustifyError::TooLong(MAX_JUSTIFICATION + 1))
        );
        core.announce(
            7,
            argv(&["pg_dump", "prod"]),
            "nightly export".into(),
            start(),
        )
        .unwrap();
        core.announce(
            7,
            argv(&["pg_dump", "other"]),
            "not this one".into(),
            start(),
        )
        .unwrap();
        // Another cgroup's exec of the same command does not take it.
        let other = new_id(core.on_denial(denial(8, 100), start()));
        assert_eq!(core.get(&other).unwrap().justification, None);
        let own = new_id(core.on_denial(denial(7, 100), start()));
        assert_eq!(
            core.get(&own).unwrap().justification.as_deref(),
            Some("nightly export")
        );
        let created = core.take_effects();
        assert!(
            created.iter().any(|effect| matches!(effect,
                Effect::Journal(Event::RequestCreated { request })
                    if request.justification.as_deref() == Some("nightly export"))),
            "journaled with the request"
        );
        // A reason announced too long ago is dropped.
        core.announce(9, argv(&["pg_dump", "prod"]), "stale".into(), start())
            .unwrap();
        let late = start().plus(ANNOUNCED_FOR + Duration::from_secs(1));
        let stale = new_id(core.on_denial(denial(9, 100), late));
        assert_eq!(core.get(&stale).unwrap().justification, None);
        core.take_effects();

        // Afterwards, on a pending request of the caller's own cgroup only, once.
        assert_eq!(
            core.justify(9, Some(&other), "mine".into()),
            Err(JustifyError::NoRequest(other.clone()))
        );
        assert_eq!(core.justify(8, None, "because".into()), Ok(other.clone()));
        assert_eq!(journaled(&core.take_effects()), ["justification"]);
        assert_eq!(
            core.get(&other).unwrap().justification.as_deref(),
            Some("because")
        );
        assert_eq!(
            core.justify(8, Some(&other), "again".into()),
            Err(JustifyError::AlreadyJustified(other.clone()))
        );
        core.decide(&other, Decision::Deny, None, &cli("alice"), start())
            .unwrap();
        assert_eq!(
            core.justify(8, None, "late".into()),
            Err(JustifyError::NothingPending)
        );
    }

    #[test]
    fn a_grant_the_kernel_refused_is_journaled_and_shown() {
        let mut core = core();
        let id = new_id(core.on_denial(denial(7, 100), start()));
        core.decide(&id, Decision::Approve, None, &cli("alice"), start())
            .unwrap();
        let (grant_id, _) = put_grant(&core.take_effects()).unwrap();
        core.grant_put(grant_id, Err("map full".into()), start());
        let effects = core.take_effects();
        assert_eq!(journaled(&effects), ["grant_failed"]);
        let request = core.get(&id).unwrap();
        assert_eq!(request.grant_error.as_deref(), Some("map full"));
        assert_eq!(request.grant_id, None);
        assert_eq!(core.counts().grants, 0);
    }

    #[test]
    fn refusals_are_journaled_and_change_nothing() {
        let mut core = core();
        let id = new_id(core.on_denial(denial(7, 100), start()));
        core.take_effects();
        let outsider = core.decide(&id, Decision::Approve, None, &cli("mallory"), start());
        assert!(matches!(
            outsider,
            Err(DecisionFailure::Refused(Refusal::NotReviewer(_)))
        ));
        let agent = Decider {
            caller_is_agent: true,
            ..cli("alice")
        };
        assert!(matches!(
            core.decide(&id, Decision::Approve, None, &agent, start()),
            Err(DecisionFailure::Refused(Refusal::FromAgent))
        ));
        assert!(matches!(
            core.decide(&id, Decision::Approve, None, &cli("olivia"), start()),
            Err(DecisionFailure::Request(DecideError::Owner { .. }))
        ));
        let late = start().plus(Duration::from_secs(900));
        assert!(matches!(
            core.decide(&id, Decision::Approve, None, &cli("alice"), late),
            Err(DecisionFailure::Request(DecideError::Expired(_)))
        ));
        // mallory again within the second: held, counted, journaled after it.
        for _ in 0..3 {
            assert!(
                core.decide(&id, Decision::Approve, None, &cli("mallory"), start())
                    .is_err()
            );
        }
        let effects = core.take_effects();
        assert_eq!(journaled(&effects), ["decision_refused"; 4]);
        assert!(
            effects
                .iter()
                .all(|effect| matches!(effect, Effect::Journal(_)))
        );
        assert_eq!(core.get(&id).unwrap().state, State::Pending);
        core.tick(start().plus(NOISE_INTERVAL));
        let held: Vec<Effect> = core
            .take_effects()
            .into_iter()
            .filter(|effect| matches!(effect, Effect::Journal(Event::DecisionRefused { .. })))
            .collect();
        assert!(matches!(
            &held[..],
            [Effect::Journal(Event::DecisionRefused { reviewer: Some(who), repeated: 2, .. })] if who == "mallory"
        ));
        // Unknown ids are not journaled, whoever asks: anyone could fill the journal with them.
        assert!(
            core.decide("nope", Decision::Approve, None, &cli("alice"), start())
                .is_err()
        );
        let made_up = "f".repeat(60_000);
        assert!(
            core.decide(&made_up, Decision::Deny, None, &cli("mallory"), start())
                .is_err()
        );
        assert!(core.take_effects().is_empty());
    }

    #[test]
    fn tamper_attempts_are_journaled_at_most_once_a_second_and_counted() {
        let mut core = core();
        let attempt = |pid: u32, hook: &str| Event::TamperAttempt {
            hook: hook.into(),
            pid,
            uid: 0,
            comm: "kill".into(),
            cgroup: "/sys/fs/cgroup/agents".into(),
            detail: [1, 9],
            repeated: 0,
        };
        for pid in 0..1000 {
            core.on_tamper(attempt(pid, "signal"), start());
        }
        core.on_tamper(attempt(5000, "bpf"), start());
        assert_eq!(journaled(&core.take_effects()), ["tamper_attempt"; 2]);
        core.tick(start().plus(Duration::from_millis(500)));
        assert!(core.take_effects().is_empty());
        core.tick(start().plus(NOISE_INTERVAL));
        let effects = core.take_effects();
        assert_eq!(effects.len(), 1);
        assert!(matches!(
            &effects[0],
            Effect::Journal(Event::TamperAttempt {
                pid: 999,
                repeated: 998,
                ..
            })
        ));
        // Quiet again: the next one goes out at once.
        core.tick(start().plus(NOISE_INTERVAL * 3));
        core.on_tamper(attempt(1, "signal"), start().plus(NOISE_INTERVAL * 3));
        assert_eq!(journaled(&core.take_effects()), ["tamper_attempt"]);
    }

    #[test]
    fn several_approvals_grant_only_at_the_last() {
        let mut core = core();
        let mut two = denial(7, 100);
        two.approvals_required = 2;
        let id = new_id(core.on_denial(two, start()));
        core.take_effects();
        let first = core
            .decide(&id, Decision::Approve, None, &cli("alice"), start())
            .unwrap();
        assert_eq!(first.state, State::Pending);
        assert_eq!(put_grant(&core.take_effects()), None);
        core.decide(&id, Decision::Approve, None, &cli("bob"), start())
            .unwrap();
        assert!(put_grant(&core.take_effects()).is_some());
    }

    #[test]
    fn an_unused_grant_is_taken_out_at_expiry() {
        let mut core = core();
        let id = new_id(core.on_denial(denial(7, 100), start()));
        let grant_id = approve(&mut core, &id, start());
        core.take_effects();
        core.tick(start().plus(Duration::from_secs(59)));
        assert!(core.take_effects().is_empty());
        let expiry = start().plus(Duration::from_secs(60));
        core.tick(expiry);
        let effects = core.take_effects();
        assert!(matches!(
            effects[0],
            Effect::TakeGrant { grant_id: taken, .. } if taken == grant_id
        ));
        // Not asked twice while the answer is pending.
        core.tick(expiry);
        assert!(core.take_effects().is_empty());
        core.grant_taken(grant_id, Ok(true), expiry);
        assert_eq!(journaled(&core.take_effects()), ["grant_expired"]);
        assert_eq!(core.counts().grants, 0);
    }

    #[test]
    fn a_failed_take_is_tried_again() {
        let mut core = core();
        let id = new_id(core.on_denial(denial(7, 100), start()));
        let grant_id = approve(&mut core, &id, start());
        core.take_effects();
        let expiry = start().plus(Duration::from_secs(60));
        core.tick(expiry);
        core.take_effects();
        core.grant_taken(grant_id, Err("EBUSY".into()), expiry);
        assert!(core.take_effects().is_empty());
        core.tick(expiry);
        assert!(matches!(core.take_effects()[0], Effect::TakeGrant { .. }));
    }

    #[test]
    fn a_consumed_grant_is_journaled_used_by_its_event_or_after_the_grace() {
        let mut core = core();
        let id = new_id(core.on_denial(denial(7, 100), start()));
        let used = approve(&mut core, &id, start());
        core.take_effects();
        assert!(core.on_grant_used(used, 42));
        let effects = core.take_effects();
        assert!(matches!(
            &effects[0],
            Effect::Journal(Event::GrantUsed { pid: Some(42), .. })
        ));
        assert!(!core.on_grant_used(used, 42), "used once");

        // The event was lost: the kernel no longer has it at expiry.
        let other = new_id(core.on_denial(denial(7, 101), start()));
        let lost = approve(&mut core, &other, start());
        core.take_effects();
        let expiry = start().plus(Duration::from_secs(60));
        core.tick(expiry);
        core.take_effects();
        core.grant_taken(lost, Ok(false), expiry);
        core.tick(expiry.plus(Duration::from_secs(1)));
        assert!(
            journaled(&core.take_effects()).is_empty(),
            "its event may come"
        );
        core.tick(expiry.plus(USED_EVENT_GRACE));
        let effects = core.take_effects();
        assert!(matches!(
            &effects[0],
            Effect::Journal(Event::GrantUsed { pid: None, .. })
        ));
    }

    #[test]
    fn a_new_grant_for_the_same_action_replaces_the_old() {
        let mut core = core();
        let first = new_id(core.on_denial(denial(7, 100), start()));
        let old = approve(&mut core, &first, start());
        core.take_effects();
        let second = new_id(core.on_denial(denial(7, 100), start()));
        core.decide(&second, Decision::Approve, None, &cli("alice"), start())
            .unwrap();
        let (new, _) = put_grant(&core.take_effects()).unwrap();
        core.grant_put(new, Ok(()), start());
        let effects = core.take_effects();
        assert_eq!(journaled(&effects), ["grant_expired", "grant_issued"]);
        assert!(matches!(
            &effects[0],
            Effect::Journal(Event::GrantExpired { grant_id, .. }) if *grant_id == old
        ));
    }

    #[test]
    fn pending_requests_expire_and_their_waiters_are_told() {
        let mut core = core();
        let id = new_id(core.on_denial(denial(7, 100), start()));
        core.take_effects();
        core.tick(start().plus(Duration::from_secs(900)));
        let effects = core.take_effects();
        assert_eq!(journaled(&effects), ["request_expired"]);
        assert!(effects.contains(&Effect::Settled {
            request_id: id.clone(),
            state: State::Expired
        }));
        assert_eq!(core.get(&id).unwrap().state, State::Expired);
    }

    #[test]
    fn a_cgroup_at_its_cap_gets_counts_not_requests() {
        let mut core = core();
        let ids: Vec<String> = (0..3)
            .map(|ino| new_id(core.on_denial(denial(7, ino), start())))
            .collect();
        core.take_effects();
        for ino in 3..50 {
            assert_eq!(core.on_denial(denial(7, ino), start()), Admission::OverCap);
        }
        let effects = core.take_effects();
        assert_eq!(
            journaled(&effects),
            ["pending_cap_reached"],
            "journaled once"
        );
        assert!(deliveries(&effects).is_empty(), "nothing more to reviewers");
        assert_eq!(core.list(false).len(), 3);
        assert!(
            core.list(false)
                .iter()
                .all(|request| request.over_cap == 47)
        );
        assert_eq!(core.counts().over_cap, 47);
        // Another cgroup is not affected.
        assert!(matches!(
            core.on_denial(denial(8, 0), start()),
            Admission::New(_)
        ));
        // A decision frees a place; reaching the cap again is journaled again.
        core.decide(&ids[0], Decision::Deny, None, &cli("alice"), start())
            .unwrap();
        core.take_effects();
        assert!(matches!(
            core.on_denial(denial(7, 60), start()),
            Admission::New(_)
        ));
        assert_eq!(core.on_denial(denial(7, 61), start()), Admission::OverCap);
        assert!(journaled(&core.take_effects()).contains(&"pending_cap_reached"));
    }

    #[test]
    fn a_reason_given_after_delivery_reaches_the_reviewers_again() {
        let mut core = core();
        let delivered = new_id(core.on_denial(denial(1, 1), start()));
        let on_its_way = new_id(core.on_denial(denial(2, 2), start()));
        let sent = deliveries(&core.take_effects());
        assert_eq!(sent.len(), 2);
        let done = |core: &mut Core, delivery: u64| {
            let attempt = DeliveryAttempt {
                attempt: 1,
                delivered: true,
                status: Some(200),
                error: None,
            };
            core.delivery_done(delivery, vec![attempt], true, start());
            core.take_effects();
        };
        done(&mut core, sent[0].0);
        // One reason after its request was delivered, one while it is on its way.
        core.justify(1, None, "nightly export".into()).unwrap();
        core.justify(2, None, "<!channel> urgent".into()).unwrap();
        done(&mut core, sent[1].0);
        let mut again = Vec::new();
        for step in 1..=3 {
            core.tick(start().plus(Duration::from_secs(10 * step)));
            for effect in core.take_effects() {
                if let Effect::Deliver {
                    delivery, requests, ..
                } = effect
                {
                    done(&mut core, delivery);
                    again.extend(requests);
                }
            }
        }
        let reasons: Vec<(String, Option<String>)> = again
            .into_iter()
            .map(|request| (request.id, request.justification))
            .collect();
        assert_eq!(
            reasons,
            [
                (delivered, Some("nightly export".into())),
                (on_its_way, Some("<!channel> urgent".into()))
            ]
        );
        // Delivered and unchanged: never again.
        core.tick(start().plus(Duration::from_secs(120)));
        assert!(deliveries(&core.take_effects()).is_empty());
    }

    #[test]
    fn deliveries_are_rate_limited_into_digests() {
        let mut core = core();
        let ids: Vec<String> = (0..6)
            .map(|ino| new_id(core.on_denial(denial(ino, ino), start())))
            .collect();
        let sent = deliveries(&core.take_effects());
        assert_eq!(sent.len(), 2, "the burst");
        assert_eq!(sent[0].1, [ids[0].clone()]);
        assert_eq!(sent[1].1, [ids[1].clone()]);
        core.tick(start().plus(Duration::from_secs(5)));
        assert!(deliveries(&core.take_effects()).is_empty(), "no token yet");
        core.tick(start().plus(Duration::from_secs(10)));
        let digest = deliveries(&core.take_effects());
        assert_eq!(digest.len(), 1);
        assert_eq!(digest[0].1, ids[2..].to_vec(), "the rest as one digest");
        // Delivered: never again. Failed: again after the redelivery interval.
        let at = start().plus(Duration::from_secs(10));
        core.delivery_done(
            sent[0].0,
            vec![DeliveryAttempt {
                attempt: 1,
                delivered: true,
                status: Some(200),
                error: None,
            }],
            true,
            at,
        );
        core.delivery_done(
            digest[0].0,
            vec![DeliveryAttempt {
                attempt: 1,
                delivered: false,
                status: None,
                error: Some("connection refused".into()),
            }],
            false,
            at,
        );
        let effects = core.take_effects();
        assert_eq!(
            journaled(&effects),
            ["webhook_delivery", "webhook_delivery"]
        );
        assert!(matches!(
            &effects[1],
            Effect::Journal(Event::WebhookDelivery { request_ids, .. }) if request_ids.len() == 4
        ));
        core.tick(at.plus(Duration::from_secs(29)));
        assert!(deliveries(&core.take_effects()).is_empty());
        core.tick(at.plus(Duration::from_secs(30)));
        let again = deliveries(&core.take_effects());
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].1, ids[2..].to_vec());
    }

    #[test]
    fn finished_requests_leave_memory_after_the_retention() {
        let mut core = core();
        let denied = new_id(core.on_denial(denial(7, 100), start()));
        let granted = new_id(core.on_denial(denial(7, 101), start()));
        let pending = new_id(core.on_denial(denial(7, 102), start()));
        core.decide(&denied, Decision::Deny, None, &cli("alice"), start())
            .unwrap();
        let grant_id = approve(&mut core, &granted, start());
        core.take_effects();
        let later = start().plus(Duration::from_secs(3601));
        // The pending one has expired by now too, but only just: it stays.
        core.tick(later);
        core.take_effects();
        assert!(core.get(&denied).is_none());
        assert!(core.get(&granted).is_some(), "its grant is still accounted");
        assert!(core.get(&pending).is_some());
        core.grant_taken(grant_id, Ok(true), later);
        core.tick(later);
        assert!(core.get(&granted).is_none());
        assert_eq!(core.counts().retained, 1);
    }

    #[test]
    fn replaying_the_journal_rebuilds_the_state() {
        let mut original = core();
        let mut records = Vec::new();
        let keep = |core: &mut Core, records: &mut Vec<Event>| {
            records.extend(journal_events(&core.take_effects()));
        };
        let approved = new_id(original.on_denial(denial(7, 100), start()));
        keep(&mut original, &mut records);
        let grant_id = approve_logged(&mut original, &approved, start(), &mut records);
        let mut two = denial(7, 101);
        two.approvals_required = 2;
        let half = new_id(original.on_denial(two, start()));
        original
            .decide(&half, Decision::Approve, None, &cli("bob"), start())
            .unwrap();
        let denied = new_id(original.on_denial(denial(8, 100), start()));
        original
            .decide(&denied, Decision::Deny, None, &cli("alice"), start())
            .unwrap();
        keep(&mut original, &mut records);

        let mut replayed = core();
        for event in &records {
            replayed.replay(start().wall, event);
        }
        let states = |core: &Core| {
            core.list(true)
                .into_iter()
                .map(|request| {
                    (
                        request.id,
                        request.state,
                        request.approvals.len(),
                        request.grant_id,
                    )
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(states(&replayed), states(&original));
        assert_eq!(replayed.outstanding_grants()[0].0, grant_id);
        // Deliveries were not journaled as done: they go out again.
        replayed.tick(start());
        assert!(!deliveries(&replayed.take_effects()).is_empty());
    }

    #[test]
    fn a_checkpoint_holds_what_a_restart_needs() {
        let mut original = core();
        let approved = new_id(original.on_denial(denial(7, 100), start()));
        let grant_id = approve(&mut original, &approved, start());
        let pending = new_id(original.on_denial(denial(7, 101), start()));
        for (delivery, _) in deliveries(&original.take_effects()) {
            original.delivery_done(delivery, Vec::new(), true, start());
        }
        original.set_enforcing_since(start().wall);
        let snapshot = original.snapshot();
        let event = Event::Checkpoint {
            state: snapshot.clone(),
        };
        // Through the file format and back.
        let event: Event = serde_json::from_str(&serde_json::to_string(&event).unwrap()).unwrap();

        let mut restarted = core();
        restarted.replay(start().wall, &event);
        assert_eq!(restarted.snapshot(), snapshot);
        assert_eq!(restarted.enforcing_since(), Some(start().wall));
        assert_eq!(restarted.get(&pending).unwrap().state, State::Pending);
        assert_eq!(restarted.outstanding_grants()[0].0, grant_id);
        restarted.tick(start());
        assert!(
            deliveries(&restarted.take_effects()).is_empty(),
            "what was delivered is not sent again"
        );
        // Repeats still join the restored pending request.
        assert_eq!(
            restarted.on_denial(denial(7, 101), start()),
            Admission::Joined(pending)
        );
    }

    #[test]
    fn a_host_rules_addresses_survive_a_restart_by_record_and_by_checkpoint() {
        let resolved = |addresses: &[&str]| Event::HostResolved {
            rule: "db".into(),
            host: "db.example".into(),
            addresses: addresses.iter().map(|a| a.to_string()).collect(),
        };
        let mut original = core();
        assert_eq!(original.remembered_addresses("db.example"), None);
        original.note(resolved(&["10.0.0.1"]));
        original.note(resolved(&["10.0.0.1", "10.0.0.2"]));
        let last: &[String] = &["10.0.0.1".into(), "10.0.0.2".into()];
        assert_eq!(original.remembered_addresses("db.example"), Some(last));
        assert_eq!(original.remembered_addresses("other.example"), None);
        let records = journal_events(&original.take_effects());
        assert_eq!(records.len(), 2, "noted, and journaled");

        let mut from_records = core();
        for record in &records {
            from_records.replay(start().wall, record);
        }
        assert_eq!(from_records.remembered_addresses("db.example"), Some(last));

        let checkpoint = Event::Checkpoint {
            state: original.snapshot(),
        };
        let checkpoint: Event =
            serde_json::from_str(&serde_json::to_string(&checkpoint).unwrap()).unwrap();
        let mut from_checkpoint = core();
        from_checkpoint.note(resolved(&["10.9.9.9"]));
        from_checkpoint.replay(start().wall, &checkpoint);
        assert_eq!(
            from_checkpoint.remembered_addresses("db.example"),
            Some(last),
            "the checkpoint's addresses replace what came before it"
        );
        // A host no rule names any more is forgotten.
        from_checkpoint.keep_hosts(|host| host == "other.example");
        assert_eq!(from_checkpoint.remembered_addresses("db.example"), None);
        assert!(from_checkpoint.snapshot().host_addresses.is_empty());
    }

    #[test]
    fn launched_agents_owners_survive_a_restart_by_record_and_by_checkpoint() {
        let mut original = core();
        original.agent_started(
            "/sys/fs/cgroup/agents/deploy".into(),
            42,
            "alice".into(),
            "root".into(),
            vec!["/usr/bin/agent".into()],
        );
        let owner = |core: &Core, id| core.launched(id).map(|agent| agent.owner.clone());
        assert_eq!(owner(&original, 42).as_deref(), Some("alice"));
        assert_eq!(owner(&original, 43), None);
        let records = journal_events(&original.take_effects());
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].name(), "agent_started");

        let mut from_record = core();
        from_record.replay(start().wall, &records[0]);
        assert_eq!(from_record.launched(42), original.launched(42));

        let checkpoint = Event::Checkpoint {
            state: original.snapshot(),
        };
        let checkpoint: Event =
            serde_json::from_str(&serde_json::to_string(&checkpoint).unwrap()).unwrap();
        let mut from_checkpoint = core();
        from_checkpoint.replay(start().wall, &checkpoint);
        assert_eq!(from_checkpoint.launched(42), original.launched(42));
    }

    #[test]
    fn after_a_restart_grants_are_adopted_or_voided_never_issued_again() {
        let mut original = core();
        let mut events = Vec::new();
        let first = new_id(original.on_denial(denial(7, 100), start()));
        events.extend(journal_events(&original.take_effects()));
        let grant_id = approve_logged(&mut original, &first, start(), &mut events);
        events.extend(journal_events(&original.take_effects()));
        let second = new_id(original.on_denial(denial(7, 101), start()));
        original
            .decide(&second, Decision::Approve, None, &cli("alice"), start())
            .unwrap();
        // The daemon stops after the decision record, before `grant_issued` was written:
        // whether the grant reached the kernel only the kernel knows.
        let effects = original.take_effects();
        let (unconfirmed, _) = put_grant(&effects).unwrap();
        events.extend(journal_events(&effects));
        assert!(matches!(
            events.last(),
            Some(Event::Decision { grant_id: Some(named), .. }) if *named == unconfirmed
        ));
        let replay = || {
            let mut core = core();
            for event in &events {
                core.replay(start().wall, event);
            }
            core
        };

        // The kernel has both: adopted, and the missing record written now.
        let mut adopted = replay();
        let expiry = start().plus(Duration::from_secs(30)).boot_ns;
        for (grant, _) in adopted.outstanding_grants() {
            adopted.adopt_grant(grant, Some(expiry), start());
        }
        let effects = adopted.take_effects();
        assert_eq!(put_grant(&effects), None, "nothing is granted again");
        assert!(matches!(
            &effects[0],
            Effect::Journal(Event::GrantIssued { grant_id, .. }) if *grant_id == unconfirmed
        ));
        adopted.tick(Now {
            boot_ns: expiry,
            ..start()
        });
        assert!(matches!(
            adopted.take_effects()[0],
            Effect::TakeGrant { .. }
        ));

        // The kernel has neither (used, or never put): no new grant; after the grace the
        // confirmed one reads as used, the unconfirmed one as expired.
        let mut gone = replay();
        for (grant, _) in gone.outstanding_grants() {
            gone.adopt_grant(grant, None, start());
        }
        assert!(gone.take_effects().is_empty());
        gone.tick(start().plus(USED_EVENT_GRACE));
        let effects = gone.take_effects();
        assert_eq!(put_grant(&effects), None);
        assert!(effects.iter().any(|effect| matches!(
            effect,
            Effect::Journal(Event::GrantUsed { grant_id: used, pid: None, .. }) if *used == grant_id
        )));
        assert!(effects.iter().any(|effect| matches!(
            effect,
            Effect::Journal(Event::GrantExpired { grant_id: expired, .. }) if *expired == unconfirmed
        )));

        let mut rebooted = replay();
        rebooted.void_grants();
        assert_eq!(
            journaled(&rebooted.take_effects()),
            ["grant_expired", "grant_expired"]
        );
        assert_eq!(rebooted.counts().grants, 0);
    }

    #[test]
    fn one_approval_is_never_granted_twice_across_a_restart() {
        let mut original = core();
        let mut disk = Vec::new();
        let id = new_id(original.on_denial(denial(7, 100), start()));
        disk.extend(journal_events(&original.take_effects()));
        original
            .decide(&id, Decision::Approve, None, &cli("alice"), start())
            .unwrap();
        let effects = original.take_effects();
        // The decision is on disk, the grant reaches the kernel, `grant_issued` cannot be
        // written, and the agent uses the grant.
        disk.extend(
            journal_events(&effects)
                .into_iter()
                .filter(|event| matches!(event, Event::Decision { .. })),
        );
        let (first_grant, _) = put_grant(&effects).unwrap();
        original.grant_put(first_grant, Ok(()), start());
        assert!(original.on_grant_used(first_grant, 4242));

        let mut restarted = core();
        for event in &disk {
            restarted.replay(start().wall, event);
        }
        let later = start().plus(Duration::from_secs(5));
        for (grant_id, _) in restarted.outstanding_grants() {
            restarted.adopt_grant(grant_id, None, later);
        }
        restarted.tick(later.plus(USED_EVENT_GRACE));
        assert_eq!(put_grant(&restarted.take_effects()), None, "granted once");
    }

    #[test]
    fn the_journal_of_format_zero_replays() {
        let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/journal-v0.jsonl");
        crate::journal::verify(&fixture).expect("the fixture's chain is intact");
        let records = crate::journal::records(&fixture).expect("format 0 reads");
        let mut core = core();
        for record in &records {
            core.replay(record.time, &record.event);
        }
        let pending: Vec<String> = core.list(false).into_iter().map(|r| r.id).collect();
        assert_eq!(pending, ["b00000000002", "f00000000006"]);
        let two = core.get("b00000000002").unwrap();
        assert_eq!(two.approvals.len(), 1);
        assert_eq!(two.approvals_required, 2);
        assert!(two.require_reason);
        assert_eq!(core.get("a00000000001").unwrap().state, State::Approved);
        assert_eq!(core.get("c00000000003").unwrap().state, State::Denied);
        assert_eq!(core.get("d00000000004").unwrap().state, State::Expired);
        assert_eq!(
            core.counts().grants,
            0,
            "used, expired, or voided by uninstall"
        );
        assert!(core.enforcing_since().is_some());
        // The webhook of the day had them both: nothing is sent again.
        core.tick(start());
        assert!(deliveries(&core.take_effects()).is_empty());
        // And the restored request decides as any other.
        let request = core
            .decide(
                "f00000000006",
                Decision::Approve,
                None,
                &cli("alice"),
                start(),
            )
            .unwrap();
        assert_eq!(request.state, State::Approved);
        assert!(put_grant(&core.take_effects()).is_some());
    }
}
