//! Prometheus metrics and health, on a loopback listener of their own (`[daemon] metrics`).
//!
//! Counted from what the engine journals (so a metric never says more than the record), plus
//! what `status` knows at scrape time (enforcing, pending requests, the kernel's counters).
//! Labels carry only fixed vocabularies (outcome, hook, result): never a cgroup path or argv,
//! which agents choose.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    Router,
    extract::State as AxumState,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram, info::Info},
    registry::Registry,
};

use crate::{
    api::ApiError,
    handle::{Handle, Status},
    journal::Event,
    requests::State,
};

/// Longest a scrape or probe waits for the engine before it answers 503.
const ENGINE_PATIENCE: Duration = Duration::from_secs(2);

/// Decision latency buckets, in seconds: humans answer in seconds to hours.
const LATENCY_BUCKETS: [f64; 11] = [
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 14400.0,
];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HookLabel {
    hook: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

pub struct Metrics {
    registry: Registry,
    enforcing: Gauge,
    pending: Gauge,
    denials: Counter,
    events_lost: Counter,
    requests_created: Counter,
    requests: Family<OutcomeLabel, Counter>,
    decision_latency: Histogram,
    grants_issued: Counter,
    grants_used: Counter,
    grants_expired: Counter,
    tamper: Family<HookLabel, Counter>,
    deliveries: Family<ResultLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut metrics = Self {
            registry: Registry::default(),
            enforcing: Gauge::default(),
            pending: Gauge::default(),
            denials: Counter::default(),
            events_lost: Counter::default(),
            requests_created: Counter::default(),
            requests: Family::default(),
            decision_latency: Histogram::new(LATENCY_BUCKETS),
            grants_issued: Counter::default(),
            grants_used: Counter::default(),
            grants_expired: Counter::default(),
            tamper: Family::default(),
            deliveries: Family::default(),
        };
        let registry = &mut metrics.registry;
        registry.register(
            "gatekeeper_build",
            "The running build",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        let gauges = [
            (
                "gatekeeper_enforcing",
                "1 while this daemon's programs are pinned and enforcing",
                &metrics.enforcing,
            ),
            (
                "gatekeeper_pending_requests",
                "Requests waiting for a decision",
                &metrics.pending,
            ),
        ];
        for (name, help, gauge) in gauges {
            registry.register(name, help, gauge.clone());
        }
        let counters = [
            (
                "gatekeeper_denials",
                "Protected actions the kernel denied since the programs were loaded",
                &metrics.denials,
            ),
            (
                "gatekeeper_ring_buffer_events_lost",
                "Kernel events that did not fit into the ring buffer (the action was still denied)",
                &metrics.events_lost,
            ),
            (
                "gatekeeper_requests_created",
                "Approval requests created",
                &metrics.requests_created,
            ),
            (
                "gatekeeper_grants_issued",
                "Grants put into the kernel",
                &metrics.grants_issued,
            ),
            (
                "gatekeeper_grants_used",
                "Grants an agent's action consumed",
                &metrics.grants_used,
            ),
            (
                "gatekeeper_grants_expired",
                "Grants that expired unused",
                &metrics.grants_expired,
            ),
        ];
        for (name, help, counter) in counters {
            registry.register(name, help, counter.clone());
        }
        registry.register(
            "gatekeeper_requests",
            "Requests that left pending, by outcome",
            metrics.requests.clone(),
        );
        registry.register(
            "gatekeeper_decision_latency_seconds",
            "From a request to each reviewer's decision on it",
            metrics.decision_latency.clone(),
        );
        registry.register(
            "gatekeeper_tamper_attempts",
            "Attempts by agents to disable or walk around enforcement, by hook",
            metrics.tamper.clone(),
        );
        registry.register(
            "gatekeeper_webhook_deliveries",
            "Webhook delivery attempts, by result",
            metrics.deliveries.clone(),
        );
        metrics
    }

    /// Counts a record as it is journaled; `latency` is how long the request of a decision
    /// had waited.
    pub fn journaled(&self, event: &Event, latency: Option<Duration>) {
        match event {
            Event::RequestCreated { .. } => {
                self.requests_created.inc();
            }
            Event::Decision { .. } => {
                if let Some(latency) = latency {
                    self.decision_latency.observe(latency.as_secs_f64());
                }
            }
            Event::GrantIssued { .. } => {
                self.grants_issued.inc();
            }
            Event::GrantUsed { .. } => {
                self.grants_used.inc();
            }
            Event::GrantExpired { .. } => {
                self.grants_expired.inc();
            }
            Event::TamperAttempt { hook, repeated, .. } => {
                self.tamper
                    .get_or_create(&HookLabel { hook: hook.clone() })
                    .inc_by(1 + repeated);
            }
            Event::WebhookDelivery { delivered, .. } => {
                let result = if *delivered { "delivered" } else { "failed" };
                self.deliveries.get_or_create(&ResultLabel { result }).inc();
            }
            _ => {}
        }
    }

    /// Counts a request that left pending.
    pub fn settled(&self, state: State) {
        let outcome = match state {
            State::Pending => return,
            State::Approved => "approved",
            State::Denied => "denied",
            State::Expired => "expired",
        };
        self.requests.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    /// The exposition, with `status` for what only the engine and the kernel know.
    pub fn render(&self, status: &Status) -> Result<String, std::fmt::Error> {
        self.enforcing.set(i64::from(status.enforcing));
        self.pending
            .set(i64::try_from(status.pending_requests).unwrap_or(i64::MAX));
        // The kernel's counters are absolute: stored, not added.
        store(&self.denials, status.denied);
        store(&self.events_lost, status.events_dropped);
        let mut text = String::new();
        encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

fn store(counter: &Counter, value: u64) {
    counter
        .inner()
        .store(value, std::sync::atomic::Ordering::Relaxed);
}

/// Ready: enforcing with pins that are this daemon's, and the journal can be written.
pub fn ready(status: &Status) -> Result<(), &'static str> {
    if !status.enforcing {
        return Err("not enforcing: the pinned programs are not this daemon's");
    }
    if !status.journal_writable {
        return Err("the journal cannot be written");
    }
    Ok(())
}

#[derive(Clone)]
struct MetricsState {
    metrics: Arc<Metrics>,
    handle: Handle,
}

impl MetricsState {
    async fn status(&self) -> Option<Status> {
        tokio::time::timeout(ENGINE_PATIENCE, self.handle.status())
            .await
            .ok()
            .flatten()
    }
}

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

async fn serve_metrics(AxumState(state): AxumState<MetricsState>) -> Response {
    let Some(status) = state.status().await else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the engine does not answer\n",
        )
            .into_response();
    };
    match state.metrics.render(&status) {
        Ok(text) => ([(header::CONTENT_TYPE, OPENMETRICS)], text).into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n").into_response(),
    }
}

async fn livez(AxumState(state): AxumState<MetricsState>) -> Response {
    match state.status().await {
        Some(_) => (StatusCode::OK, "ok\n").into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the engine does not answer\n",
        )
            .into_response(),
    }
}

async fn readyz(AxumState(state): AxumState<MetricsState>) -> Response {
    let Some(status) = state.status().await else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the engine does not answer\n",
        )
            .into_response();
    };
    match ready(&status) {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response(),
    }
}

/// Binds the metrics listener; the future serves it.
pub async fn bind(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    handle: Handle,
) -> Result<impl std::future::Future<Output = Result<(), ApiError>>, ApiError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|cause| ApiError::Listen { addr, cause })?;
    let router = Router::new()
        .route("/metrics", get(serve_metrics))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .with_state(MetricsState { metrics, handle });
    Ok(async move { axum::serve(listener, router).await.map_err(ApiError::Serve) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> Status {
        Status {
            enforcing: true,
            since: None,
            pid: 1,
            pending_requests: 2,
            retained_requests: 0,
            active_grants: 0,
            denials_over_cap: 0,
            denied: 7,
            grants_used: 1,
            events_dropped: 3,
            tamper_attempts: 0,
            journal_writable: true,
            journal_error: None,
            directory_renames_refused: None,
            protected: Vec::new(),
            protected_files: 0,
            protected_files_capacity: 4096,
            unguarded_mounts: Vec::new(),
        }
    }

    fn line<'a>(text: &'a str, name: &str) -> Option<&'a str> {
        text.lines().find(|line| line.starts_with(name))
    }

    #[test]
    fn exposition_has_the_conventional_names_and_the_kernels_counts() {
        let metrics = Metrics::new();
        metrics.journaled(
            &Event::TamperAttempt {
                hook: "task_kill".into(),
                pid: 1,
                uid: 0,
                comm: "sh".into(),
                cgroup: "/agents/secret-name".into(),
                detail: [0, 0],
                repeated: 4,
            },
            None,
        );
        metrics.journaled(
            &Event::GrantUsed {
                grant_id: 1,
                request_id: "r".into(),
                pid: None,
            },
            None,
        );
        metrics.journaled(
            &Event::Decision {
                request_id: "r".into(),
                decision: crate::journal::schema::Verdict::Approve,
                reviewer: "alice".into(),
                reason: None,
                channel: "cli".into(),
                grant_id: None,
            },
            Some(Duration::from_secs(42)),
        );
        metrics.settled(State::Approved);
        metrics.settled(State::Pending);
        let text = metrics.render(&status()).unwrap();
        for (name, want) in [
            ("gatekeeper_enforcing ", "gatekeeper_enforcing 1"),
            (
                "gatekeeper_pending_requests ",
                "gatekeeper_pending_requests 2",
            ),
            ("gatekeeper_denials_total ", "gatekeeper_denials_total 7"),
            (
                "gatekeeper_ring_buffer_events_lost_total ",
                "gatekeeper_ring_buffer_events_lost_total 3",
            ),
            (
                "gatekeeper_grants_used_total ",
                "gatekeeper_grants_used_total 1",
            ),
            (
                "gatekeeper_tamper_attempts_total{",
                "gatekeeper_tamper_attempts_total{hook=\"task_kill\"} 5",
            ),
            (
                "gatekeeper_requests_total{",
                "gatekeeper_requests_total{outcome=\"approved\"} 1",
            ),
            (
                "gatekeeper_decision_latency_seconds_count",
                "gatekeeper_decision_latency_seconds_count 1",
            ),
            ("gatekeeper_build_info{", "gatekeeper_build_info{version="),
        ] {
            let found = line(&text, name).unwrap_or_else(|| panic!("no {name} in\n{text}"));
            assert!(found.starts_with(want), "{found} is not {want}");
        }
        assert!(!text.contains("secret-name"), "a cgroup path in a label");
        assert!(!text.contains("outcome=\"pending\""));
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn the_kernels_counters_follow_the_kernel() {
        let metrics = Metrics::new();
        metrics.render(&status()).unwrap();
        let mut later = status();
        later.denied = 9;
        let text = metrics.render(&later).unwrap();
        assert_eq!(
            line(&text, "gatekeeper_denials_total "),
            Some("gatekeeper_denials_total 9")
        );
    }

    #[test]
    fn ready_only_when_enforcing_and_the_journal_is_writable() {
        assert!(ready(&status()).is_ok());
        let mut hidden = status();
        hidden.enforcing = false;
        assert!(ready(&hidden).is_err());
        let mut stuck = status();
        stuck.journal_writable = false;
        assert!(ready(&stuck).is_err());
    }
}
