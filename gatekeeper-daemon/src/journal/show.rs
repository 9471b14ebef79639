//! `gatekeeper journal show`: the journal as a timeline a person reads. Who asked for what
//! exactly and why, who decided and why, when the grant was used and by which process. Text
//! that agents control is shown visibly ([`visible`]): it cannot draw a line of its own.

use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use super::{Event, Record, schema::RequestRecord};
use crate::shown::{FIELD_LIMIT, quoted_args, visible};

/// Every record type, as written in the journal's `type` field.
pub const RECORD_TYPES: [&str; 22] = [
    "daemon_started",
    "daemon_stopped",
    "enforcement_installed",
    "uninstalled",
    "protection_updated",
    "allowlist_refused",
    "host_resolved",
    "request_created",
    "webhook_delivery",
    "decision",
    "decision_refused",
    "grant_issued",
    "grant_failed",
    "grant_used",
    "grant_expired",
    "tamper_attempt",
    "request_expired",
    "justification",
    "pending_cap_reached",
    "journal_repaired",
    "checkpoint",
    "seal",
];

#[derive(Debug, thiserror::Error)]
pub enum ShowError {
    #[error("unknown record type {given:?}: one of {}", RECORD_TYPES.join(", "))]
    UnknownType { given: String },
}

/// Which records to show: all of one request's, of one type, from a time on.
#[derive(Debug, Default)]
pub struct Filter {
    request: Option<String>,
    kind: Option<&'static str>,
    since: Option<OffsetDateTime>,
}

impl Filter {
    pub fn new(
        request: Option<String>,
        kind: Option<&str>,
        since: Option<OffsetDateTime>,
    ) -> Result<Self, ShowError> {
        let kind = match kind {
            Some(given) => Some(
                RECORD_TYPES
                    .into_iter()
                    .find(|known| *known == given)
                    .ok_or_else(|| ShowError::UnknownType {
                        given: given.to_owned(),
                    })?,
            ),
            None => None,
        };
        Ok(Self {
            request,
            kind,
            since,
        })
    }

    fn keeps(&self, record: &Record) -> bool {
        self.kind.is_none_or(|kind| record.event.name() == kind)
            && self.since.is_none_or(|since| record.time >= since)
            && self
                .request
                .as_deref()
                .is_none_or(|id| request_ids(&record.event).contains(&id))
    }
}

/// One line per record the filter keeps: time, type, what happened.
pub fn timeline(records: &[Record], filter: &Filter) -> Vec<String> {
    records
        .iter()
        .filter(|record| filter.keeps(record))
        .map(|record| {
            format!(
                "{} #{} {:<21} {}",
                record.time.format(&Rfc3339).unwrap_or_default(),
                record.seq,
                record.event.name(),
                describe(&record.event)
            )
        })
        .collect()
}

/// The requests a record is about.
fn request_ids(event: &Event) -> Vec<&str> {
    match event {
        Event::RequestCreated { request } => vec![request.id.as_str()],
        Event::WebhookDelivery { request_ids, .. } => {
            request_ids.iter().map(String::as_str).collect()
        }
        Event::Decision { request_id, .. }
        | Event::DecisionRefused { request_id, .. }
        | Event::GrantIssued { request_id, .. }
        | Event::GrantFailed { request_id, .. }
        | Event::GrantUsed { request_id, .. }
        | Event::GrantExpired { request_id, .. }
        | Event::RequestExpired { request_id }
        | Event::Justification { request_id, .. } => vec![request_id.as_str()],
        _ => Vec::new(),
    }
}

fn shown(text: &str) -> String {
    visible(text, FIELD_LIMIT)
}

fn describe(event: &Event) -> String {
    match event {
        Event::DaemonStarted {
            version,
            pid,
            kernel,
        } => format!("gatekeeper {version}, pid {pid}, kernel {kernel}"),
        Event::DaemonStopped { reason } => shown(reason),
        Event::EnforcementInstalled { pin_dir } => format!("pins in {}", shown(pin_dir)),
        Event::Uninstalled { pin_dir, by } => {
            format!("by {}, pins in {}", shown(by), shown(pin_dir))
        }
        Event::ProtectionUpdated { path, dev, ino } => {
            format!("{} is now device {dev} inode {ino}", shown(path))
        }
        Event::MountUnguarded { path, why } => {
            format!("{} is not guarded: {}", shown(path), shown(why))
        }
        Event::AllowlistRefused { path, why, .. } => format!("{}: {}", shown(path), shown(why)),
        Event::HostResolved {
            rule,
            host,
            addresses,
        } => format!(
            "rule {}: {} is {}",
            shown(rule),
            shown(host),
            addresses.join(", ")
        ),
        Event::RequestCreated { request } => describe_request(request),
        Event::WebhookDelivery {
            request_ids,
            url,
            attempt,
            delivered,
            status,
            error,
        } => format!(
            "{} to {} (attempt {attempt}): {}",
            request_ids.join(", "),
            shown(url),
            match (delivered, status, error) {
                (true, _, _) => "delivered".to_owned(),
                (false, Some(status), _) => format!("failed, status {status}"),
                (false, None, Some(error)) => format!("failed: {}", shown(error)),
                (false, None, None) => "failed".to_owned(),
            }
        ),
        Event::Decision {
            request_id,
            decision,
            reviewer,
            reason,
            channel,
            ..
        } => format!(
            "{request_id} {} by {} on {}{}",
            match decision {
                super::schema::Verdict::Approve => "approved",
                super::schema::Verdict::Deny => "denied",
            },
            shown(reviewer),
            shown(channel),
            reason
                .as_deref()
                .map(|reason| format!(", reason: {}", shown(reason)))
                .unwrap_or_default()
        ),
        Event::DecisionRefused {
            request_id,
            reviewer,
            channel,
            why,
            repeated,
        } => format!(
            "{request_id}: a decision by {} on {} refused: {}{}",
            reviewer
                .as_deref()
                .map_or("someone unknown".to_owned(), shown),
            shown(channel),
            shown(why),
            repeat_note(*repeated)
        ),
        Event::GrantIssued {
            grant_id,
            request_id,
            expires,
        } => format!(
            "{request_id}: grant {grant_id:x} in the kernel until {}",
            expires.format(&Rfc3339).unwrap_or_default()
        ),
        Event::GrantFailed {
            grant_id,
            request_id,
            error,
        } => format!(
            "{request_id}: grant {grant_id:x} could not be put into the kernel: {}",
            shown(error)
        ),
        Event::GrantUsed {
            grant_id,
            request_id,
            pid,
        } => format!(
            "{request_id}: grant {grant_id:x} used by {}",
            pid.map_or("a process the kernel did not report".to_owned(), |pid| {
                format!("pid {pid}")
            })
        ),
        Event::GrantExpired {
            grant_id,
            request_id,
        } => format!("{request_id}: grant {grant_id:x} expired unused"),
        Event::TamperAttempt {
            hook,
            pid,
            uid,
            comm,
            cgroup,
            detail,
            repeated,
        } => format!(
            "{} by pid {pid} ({}) uid {uid} in {} (detail {}, {}){}",
            shown(hook),
            shown(comm),
            shown(cgroup),
            detail[0],
            detail[1],
            repeat_note(*repeated)
        ),
        Event::RequestExpired { request_id } => format!("{request_id} expired undecided"),
        Event::Justification { request_id, text } => {
            format!("{request_id}: the agent says: {}", shown(text))
        }
        Event::PendingCapReached { cgroup, cap } => {
            format!(
                "{} has {cap} pending requests, the most it may",
                shown(cgroup)
            )
        }
        Event::AgentStarted {
            cgroup,
            owner,
            by,
            command,
            ..
        } => format!(
            "{} for {} by {}: {}",
            shown(cgroup),
            shown(owner),
            shown(by),
            shown(&command.join(" "))
        ),
        Event::JournalRepaired {
            offset,
            bytes,
            saved_to,
        } => format!(
            "{bytes} torn bytes at offset {offset} moved to {}",
            shown(saved_to)
        ),
        Event::Checkpoint { state } => format!(
            "{} requests, {} grants outstanding",
            state.requests.len(),
            state.grants.len()
        ),
        Event::Seal { epoch, .. } => format!("epoch {epoch}"),
    }
}

fn repeat_note(repeated: u64) -> String {
    if repeated == 0 {
        String::new()
    } else {
        format!(", and {repeated} more like it in the second before")
    }
}

/// A request: its id, what exactly, who asked (process, user, cgroup, owner), the rule and its
/// risk, and the agent's own words.
fn describe_request(request: &RequestRecord) -> String {
    let what = match &request.exec {
        Some(exec) if !exec.argv.is_empty() => format!(
            "run {} {}",
            shown(&request.target),
            shown(&quoted_args(exec.argv.iter().skip(1).map(String::as_str)))
        ),
        _ => format!(
            "{} {}",
            format!("{:?}", request.kind).to_lowercase(),
            shown(&request.target)
        ),
    };
    let process = &request.process;
    let mut line = format!(
        "{} {what}; asked by pid {} ({}) as {} in {}",
        request.id,
        process.pid,
        shown(&process.comm),
        process
            .user
            .as_deref()
            .map_or_else(|| format!("uid {}", process.uid), shown),
        shown(&request.cgroup),
    );
    if let Some(owner) = &request.owner {
        line.push_str(&format!(", owner {}", shown(owner)));
    }
    line.push_str(&format!(
        "; rule {}, risk {}",
        shown(&request.rule),
        format!("{:?}", request.risk).to_lowercase()
    ));
    if let Some(justification) = &request.justification {
        line.push_str(&format!("; the agent says: {}", shown(justification)));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64, minute: u8, event: Event) -> Record {
        Record {
            seq,
            time: OffsetDateTime::UNIX_EPOCH + time::Duration::minutes(i64::from(minute)),
            event,
        }
    }

    fn sample() -> Vec<Record> {
        vec![
            record(
                0,
                0,
                Event::Justification {
                    request_id: "aaa".into(),
                    text: "deploy\nAPPROVED by security".into(),
                },
            ),
            record(
                1,
                1,
                Event::Decision {
                    request_id: "aaa".into(),
                    decision: super::super::schema::Verdict::Approve,
                    reviewer: "alice".into(),
                    reason: Some("ok".into()),
                    channel: "cli".into(),
                    grant_id: None,
                },
            ),
            record(
                2,
                2,
                Event::GrantUsed {
                    grant_id: 255,
                    request_id: "aaa".into(),
                    pid: Some(42),
                },
            ),
            record(
                3,
                3,
                Event::RequestExpired {
                    request_id: "bbb".into(),
                },
            ),
        ]
    }

    #[test]
    fn a_request_reads_as_a_story_and_agents_text_cannot_draw_lines() {
        let all = timeline(&sample(), &Filter::default());
        assert_eq!(all.len(), 4);
        assert!(
            all[0].ends_with("aaa: the agent says: deploy\\nAPPROVED by security"),
            "{}",
            all[0]
        );
        assert!(all[1].contains("aaa approved by alice on cli, reason: ok"));
        assert!(all[2].contains("grant ff used by pid 42"));
        assert!(all.iter().all(|line| !line.contains('\n')));
    }

    #[test]
    fn filters_keep_one_request_one_type_or_a_time_on() {
        let by_request = Filter::new(Some("aaa".into()), None, None).unwrap();
        assert_eq!(timeline(&sample(), &by_request).len(), 3);
        let by_type = Filter::new(None, Some("grant_used"), None).unwrap();
        assert_eq!(timeline(&sample(), &by_type).len(), 1);
        let since = OffsetDateTime::UNIX_EPOCH + time::Duration::minutes(2);
        let recent = Filter::new(None, None, Some(since)).unwrap();
        assert_eq!(timeline(&sample(), &recent).len(), 2);
        let error = Filter::new(None, Some("grants"), None)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("\"grants\"") && error.contains("grant_used"),
            "{error}"
        );
    }

    #[test]
    fn every_record_type_is_known_to_the_filter() {
        // Each name is a record type the journal reads (missing its fields, not unknown).
        for name in RECORD_TYPES {
            let error = serde_json::from_value::<Event>(serde_json::json!({ "type": name }))
                .err()
                .map(|error| error.to_string())
                .unwrap_or_default();
            assert!(!error.contains("unknown variant"), "{name}: {error}");
        }
        let mut names = RECORD_TYPES.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), RECORD_TYPES.len());
    }
}
