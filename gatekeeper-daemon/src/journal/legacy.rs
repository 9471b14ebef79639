//! Format 0: the records written before the format was versioned (no `"v"` field). They are read
//! into format 1 events, so journals from those builds still open and replay.

use serde::Deserialize;
use time::OffsetDateTime;

use super::schema::{
    BindRecord, DestinationRecord, Event, ProcessRecord, RequestKind, RequestRecord, RiskRecord,
    TargetRecord,
};

/// The events format 0 knew; all but two read as format 1 unchanged.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum LegacyEvent {
    /// Embedded the whole in-memory request of the day.
    RequestCreated { request: Box<LegacyRequest> },
    /// Named one request.
    WebhookDelivery {
        request_id: String,
        url: String,
        attempt: u32,
        delivered: bool,
        status: Option<u16>,
        error: Option<String>,
    },
    #[serde(other)]
    Other,
}

/// The in-memory request of format 0, as it was serialised. What was decided about it has records
/// of its own (`decision`, `grant_issued`...), so only what it was created with is read.
#[derive(Deserialize)]
struct LegacyRequest {
    id: String,
    kind: RequestKind,
    rule: String,
    target: String,
    target_key: TargetRecord,
    destination: Option<DestinationRecord>,
    cgroup: String,
    cgroup_id: u64,
    process: ProcessRecord,
    #[serde(with = "time::serde::rfc3339")]
    created: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    expires: OffsetDateTime,
    #[serde(default)]
    owner: Option<String>,
    #[serde(default = "one")]
    approvals_required: u32,
    #[serde(default)]
    require_reason: bool,
}

fn one() -> u32 {
    1
}

/// Reads a format 0 event as the format 1 event it means.
pub fn read(value: serde_json::Value) -> Result<Event, String> {
    let legacy: LegacyEvent =
        serde_json::from_value(value.clone()).map_err(|error| error.to_string())?;
    Ok(match legacy {
        LegacyEvent::RequestCreated { request } => Event::RequestCreated {
            request: Box::new(RequestRecord {
                id: request.id,
                kind: request.kind,
                rule: request.rule,
                target: request.target,
                target_key: request.target_key,
                destination: request.destination,
                cgroup: request.cgroup,
                cgroup_id: request.cgroup_id,
                process: request.process,
                created: request.created,
                expires: request.expires,
                owner: request.owner,
                approvals_required: request.approvals_required.max(1),
                require_reason: request.require_reason,
                risk: RiskRecord::default(),
                exec: None,
                bind: BindRecord::default(),
                justification: None,
            }),
        },
        LegacyEvent::WebhookDelivery {
            request_id,
            url,
            attempt,
            delivered,
            status,
            error,
        } => Event::WebhookDelivery {
            request_ids: vec![request_id],
            url,
            attempt,
            delivered,
            status,
            error,
        },
        LegacyEvent::Other => {
            let event: Event = serde_json::from_value(value).map_err(|error| error.to_string())?;
            // Events format 0 never wrote are not format 0.
            if matches!(
                event,
                Event::GrantFailed { .. }
                    | Event::PendingCapReached { .. }
                    | Event::JournalRepaired { .. }
                    | Event::Checkpoint { .. }
            ) {
                return Err(format!("{} is not a format 0 event", event.name()));
            }
            event
        }
    })
}
