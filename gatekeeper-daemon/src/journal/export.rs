//! `gatekeeper journal export`: the journal for a SIEM, one JSON object per line.
//!
//! `jsonl` carries every record as written (its `seq`, `time` and fields). `ocsf` and `ecs`
//! carry what reviewers and auditors ask about: each request (the agent's action, denied), each
//! decision on it and each use of its grant, in the class of the action (OCSF 1.3.0: Process
//! Activity for an exec, Network Activity for a connect, File System Activity for a file) or
//! with the ECS 8.11 fields of one. Values the agent controls (arguments, paths, justifications)
//! are exported as they were taken, JSON-escaped: consumers treat them as untrusted text.

use std::collections::HashMap;

use gatekeeper_common::file_access::WRITE;
use serde_json::{Map, Value, json};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use super::{
    Event, Record,
    schema::{RequestKind, RequestRecord, RiskRecord, Verdict},
};
use crate::shown::quoted_args;

/// The OCSF schema version the `ocsf` format follows.
pub const OCSF_VERSION: &str = "1.3.0";
/// The ECS version the `ecs` format follows.
pub const ECS_VERSION: &str = "8.11.0";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Open Cybersecurity Schema Framework events.
    Ocsf,
    /// Elastic Common Schema documents.
    Ecs,
    /// Every record as the journal holds it.
    Jsonl,
}

/// Which records to export: from `since` on, before `until`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Window {
    pub since: Option<OffsetDateTime>,
    pub until: Option<OffsetDateTime>,
}

impl Window {
    fn holds(&self, time: OffsetDateTime) -> bool {
        self.since.is_none_or(|since| time >= since) && self.until.is_none_or(|until| time < until)
    }
}

/// What the export made: the lines, and how many decisions and grant uses were left out for
/// want of their request (a journal that starts after it).
#[derive(Debug, Default)]
pub struct Exported {
    pub lines: Vec<Value>,
    pub orphans: usize,
}

/// The records of `records` in `window`, in `format`; `host` names the machine the journal
/// comes from (OCSF `device.hostname`, ECS `host.hostname`).
pub fn export(records: &[Record], format: Format, window: Window, host: &str) -> Exported {
    let in_window = records.iter().filter(|record| window.holds(record.time));
    let shape = match format {
        Format::Ocsf => Action::ocsf,
        Format::Ecs => Action::ecs,
        Format::Jsonl => {
            return Exported {
                lines: in_window.map(as_written).collect(),
                orphans: 0,
            };
        }
    };
    let requests = requests_by_id(records);
    let mut exported = Exported::default();
    for record in in_window {
        let (request_id, step) = match &record.event {
            Event::RequestCreated { request } => (request.id.as_str(), Step::Asked),
            Event::Decision {
                request_id,
                decision,
                reviewer,
                reason,
                channel,
                ..
            } => (
                request_id.as_str(),
                Step::Decided {
                    verdict: *decision,
                    reviewer,
                    reason: reason.as_deref(),
                    channel,
                },
            ),
            Event::GrantUsed {
                request_id, pid, ..
            } => (request_id.as_str(), Step::Used { pid: *pid }),
            _ => continue,
        };
        let Some(request) = requests.get(request_id) else {
            exported.orphans += 1;
            continue;
        };
        exported.lines.push(shape(&Action {
            record,
            request,
            step,
            host,
        }));
    }
    exported
}

/// Every request the journal knows, from its creation or from a checkpoint.
fn requests_by_id(records: &[Record]) -> HashMap<&str, &RequestRecord> {
    let mut requests = HashMap::new();
    for record in records {
        match &record.event {
            Event::RequestCreated { request } => {
                requests.insert(request.id.as_str(), request.as_ref());
            }
            Event::Checkpoint { state } => {
                for snapshot in &state.requests {
                    requests
                        .entry(snapshot.request.id.as_str())
                        .or_insert(&snapshot.request);
                }
            }
            _ => {}
        }
    }
    requests
}

fn as_written(record: &Record) -> Value {
    let mut line = Map::new();
    line.insert("seq".into(), record.seq.into());
    line.insert("time".into(), rfc3339(record.time).into());
    if let Ok(Value::Object(fields)) = serde_json::to_value(&record.event) {
        line.extend(fields);
    }
    Value::Object(line)
}

fn rfc3339(time: OffsetDateTime) -> String {
    time.format(&Rfc3339).unwrap_or_default()
}

/// Where a request stands in the record exported.
#[derive(Clone, Copy)]
enum Step<'a> {
    /// The agent tried it and was denied; the request was made.
    Asked,
    Decided {
        verdict: Verdict,
        reviewer: &'a str,
        reason: Option<&'a str>,
        channel: &'a str,
    },
    /// The grant let the action through (by this process, when the kernel's report arrived).
    Used { pid: Option<u32> },
}

struct Action<'a> {
    record: &'a Record,
    request: &'a RequestRecord,
    step: Step<'a>,
    host: &'a str,
}

/// OCSF `action_id` and `disposition_id` values (Security Control profile).
const ACTION_ALLOWED: u32 = 1;
const ACTION_DENIED: u32 = 2;
const DISPOSITION_ALLOWED: u32 = 1;
const DISPOSITION_BLOCKED: u32 = 2;
const DISPOSITION_APPROVED: u32 = 8;
const DISPOSITION_REJECTED: u32 = 25;
const STATUS_SUCCESS: u32 = 1;
const STATUS_FAILURE: u32 = 2;
const SEVERITY_INFORMATIONAL: u32 = 1;

impl Action<'_> {
    fn writes(&self) -> bool {
        self.request.target_key.aux & WRITE != 0
    }

    /// (class_uid, class_name, category_uid, activity_id, activity_name) of the action.
    fn ocsf_class(&self) -> (u32, &'static str, u32, u32, &'static str) {
        match self.request.kind {
            RequestKind::Exec => (1007, "Process Activity", 1, 1, "Launch"),
            RequestKind::Connect => (4001, "Network Activity", 4, 1, "Open"),
            RequestKind::File if self.writes() => (1001, "File System Activity", 1, 3, "Update"),
            RequestKind::File => (1001, "File System Activity", 1, 2, "Read"),
        }
    }

    fn outcome(&self) -> (&'static str, u32, u32, Option<u32>) {
        // (text, action_id, disposition_id, status_id)
        match self.step {
            Step::Asked => (
                "denied",
                ACTION_DENIED,
                DISPOSITION_BLOCKED,
                Some(STATUS_FAILURE),
            ),
            Step::Decided {
                verdict: Verdict::Approve,
                ..
            } => ("approved", ACTION_ALLOWED, DISPOSITION_APPROVED, None),
            Step::Decided {
                verdict: Verdict::Deny,
                ..
            } => ("rejected", ACTION_DENIED, DISPOSITION_REJECTED, None),
            Step::Used { .. } => (
                "allowed",
                ACTION_ALLOWED,
                DISPOSITION_ALLOWED,
                Some(STATUS_SUCCESS),
            ),
        }
    }

    fn severity_id(&self) -> u32 {
        match self.step {
            Step::Asked => match self.request.risk {
                RiskRecord::Low => 2,
                RiskRecord::Medium => 3,
                RiskRecord::High => 4,
                RiskRecord::Critical => 5,
            },
            _ => SEVERITY_INFORMATIONAL,
        }
    }

    fn message(&self) -> String {
        let what = match self.request.kind {
            RequestKind::Exec => format!("exec of {}", self.command_line()),
            RequestKind::Connect => format!("connect to {}", self.request.target),
            RequestKind::File => format!("open of {}", self.request.target),
        };
        match self.step {
            Step::Asked => format!("{what} denied; request {} made", self.request.id),
            Step::Decided {
                verdict, reviewer, ..
            } => format!(
                "request {} ({what}) {} by {reviewer}",
                self.request.id,
                match verdict {
                    Verdict::Approve => "approved",
                    Verdict::Deny => "denied",
                }
            ),
            Step::Used { .. } => format!("{what} let through once on request {}", self.request.id),
        }
    }

    /// What the agent asked to run: the arguments as the kernel read them, else the target.
    fn command_line(&self) -> String {
        match &self.request.exec {
            Some(exec) => quoted_args(
                std::iter::once(self.request.target.as_str())
                    .chain(exec.argv.iter().skip(1).map(String::as_str)),
            ),
            None => self.request.target.clone(),
        }
    }

    /// The pid the action ran (or would have run) as.
    fn pid(&self) -> u32 {
        match self.step {
            Step::Used { pid: Some(pid) } => pid,
            _ => self.request.process.pid,
        }
    }

    fn file_name(&self) -> &str {
        self.request
            .target
            .rsplit('/')
            .next()
            .unwrap_or(&self.request.target)
    }

    /// Our own fields, for what neither schema has a place for.
    fn gatekeeper_fields(&self) -> Value {
        let mut fields = json!({
            "type": self.record.event.name(),
            "seq": self.record.seq,
            "request_id": self.request.id,
            "rule": self.request.rule,
            "risk": self.request.risk,
            "cgroup": self.request.cgroup,
            "owner": self.request.owner,
            "justification": self.request.justification,
        });
        if let Step::Decided {
            reviewer,
            reason,
            channel,
            ..
        } = self.step
        {
            fields["reviewer"] = reviewer.into();
            fields["reason"] = reason.into();
            fields["channel"] = channel.into();
        }
        fields
    }

    fn ocsf(&self) -> Value {
        let (class_uid, class_name, category_uid, activity_id, activity_name) = self.ocsf_class();
        let (disposition, action_id, disposition_id, status_id) = self.outcome();
        let caller = &self.request.process;
        let user = json!({
            "uid": caller.uid.to_string(),
            "name": caller.user,
        });
        let caller_process = json!({
            "pid": caller.pid,
            "name": caller.comm,
            "cmd_line": caller.argv.as_ref().map(|argv| quoted_args(argv.iter().map(String::as_str))),
            "cwd": caller.cwd,
            "user": user,
            "parent_process": caller.parent.as_ref().map(|parent| json!({
                "pid": parent.pid,
                "name": parent.comm,
            })),
        });
        let actor = match self.step {
            Step::Decided { reviewer, .. } => json!({ "user": { "name": reviewer } }),
            _ => json!({ "process": caller_process, "user": user }),
        };
        let mut event = json!({
            "class_uid": class_uid,
            "class_name": class_name,
            "category_uid": category_uid,
            "activity_id": activity_id,
            "activity_name": activity_name,
            "type_uid": class_uid * 100 + activity_id,
            "time": self.record.time.unix_timestamp_nanos() / 1_000_000,
            "severity_id": self.severity_id(),
            "action_id": action_id,
            "disposition_id": disposition_id,
            "disposition": disposition,
            "message": self.message(),
            "metadata": {
                "version": OCSF_VERSION,
                "uid": self.record.seq.to_string(),
                "correlation_uid": self.request.id,
                "product": {
                    "name": "Gatekeeper",
                    "vendor_name": "Gatekeeper",
                    "version": env!("CARGO_PKG_VERSION"),
                },
            },
            "device": { "type_id": 0, "hostname": self.host },
            "actor": actor,
            "unmapped": { "gatekeeper": self.gatekeeper_fields() },
        });
        if let Some(status_id) = status_id {
            event["status_id"] = status_id.into();
        }
        match self.request.kind {
            RequestKind::Exec => {
                event["process"] = json!({
                    "pid": self.pid(),
                    "name": self.file_name(),
                    "cmd_line": self.command_line(),
                    "file": { "path": self.request.target, "name": self.file_name(), "type_id": 1 },
                    "user": user,
                });
            }
            RequestKind::Connect => {
                let destination = self.request.destination.as_ref();
                event["dst_endpoint"] = json!({
                    "ip": destination.map(|to| to.address.as_str()),
                    "port": destination.map(|to| to.port),
                    "hostname": destination.and_then(|to| to.host.as_deref()),
                });
                event["connection_info"] =
                    json!({ "protocol_name": destination.map(|to| to.protocol.as_str()) });
            }
            RequestKind::File => {
                event["file"] = json!({
                    "path": self.request.target,
                    "name": self.file_name(),
                    "type_id": 1,
                });
            }
        }
        without_nulls(event)
    }

    fn ecs(&self) -> Value {
        let (outcome_text, _, _, _) = self.outcome();
        let (category, mut types) = match self.request.kind {
            RequestKind::Exec => ("process", vec!["start"]),
            RequestKind::Connect => ("network", vec!["connection", "start"]),
            RequestKind::File if self.writes() => ("file", vec!["change"]),
            RequestKind::File => ("file", vec!["access"]),
        };
        types.push(match outcome_text {
            "approved" | "allowed" => "allowed",
            _ => "denied",
        });
        let (action, outcome) = match self.step {
            Step::Asked => ("request-created", "failure"),
            Step::Decided {
                verdict: Verdict::Approve,
                ..
            } => ("request-approved", "success"),
            Step::Decided {
                verdict: Verdict::Deny,
                ..
            } => ("request-denied", "success"),
            Step::Used { .. } => ("grant-used", "success"),
        };
        let caller = &self.request.process;
        let mut document = json!({
            "@timestamp": rfc3339(self.record.time),
            "ecs": { "version": ECS_VERSION },
            "message": self.message(),
            "event": {
                "kind": "event",
                "category": [category],
                "type": types,
                "action": action,
                "outcome": outcome,
                "id": self.record.seq.to_string(),
                "provider": "gatekeeper",
                "dataset": "gatekeeper.journal",
                "severity": self.severity_id(),
            },
            "host": { "hostname": self.host },
            "rule": { "name": self.request.rule },
            "user": { "id": caller.uid.to_string(), "name": caller.user },
            "process": {
                "pid": self.pid(),
                "name": caller.comm,
                "args": caller.argv,
                "working_directory": caller.cwd,
                "parent": caller.parent.as_ref().map(|parent| json!({
                    "pid": parent.pid,
                    "name": parent.comm,
                })),
            },
            "gatekeeper": self.gatekeeper_fields(),
        });
        match self.request.kind {
            RequestKind::Exec => {
                // The program the agent asked for, in place of the caller.
                let argv: Option<Vec<&str>> = self.request.exec.as_ref().map(|exec| {
                    std::iter::once(self.request.target.as_str())
                        .chain(exec.argv.iter().skip(1).map(String::as_str))
                        .collect()
                });
                document["process"] = json!({
                    "pid": self.pid(),
                    "name": self.file_name(),
                    "executable": self.request.target,
                    "args": argv,
                    "command_line": self.command_line(),
                    "working_directory": caller.cwd,
                    "parent": { "pid": caller.pid, "name": caller.comm },
                });
            }
            RequestKind::Connect => {
                let destination = self.request.destination.as_ref();
                document["destination"] = json!({
                    "ip": destination.map(|to| to.address.as_str()),
                    "port": destination.map(|to| to.port),
                    "domain": destination.and_then(|to| to.host.as_deref()),
                });
                document["network"] =
                    json!({ "transport": destination.map(|to| to.protocol.to_lowercase()) });
            }
            RequestKind::File => {
                document["file"] = json!({ "path": self.request.target, "name": self.file_name() });
            }
        }
        without_nulls(document)
    }
}

/// `value` without the members that are null: absent rather than null, as both schemas expect.
fn without_nulls(value: Value) -> Value {
    match value {
        Value::Object(members) => Value::Object(
            members
                .into_iter()
                .filter(|(_, member)| !member.is_null())
                .map(|(name, member)| (name, without_nulls(member)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(without_nulls).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::schema::{
        BindRecord, DestinationRecord, ExecRecord, ParentRecord, ProcessRecord, TargetRecord,
    };

    fn at(minute: i64) -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000) + time::Duration::minutes(minute)
    }

    fn request(id: &str, kind: RequestKind, target: &str, aux: u32) -> RequestRecord {
        RequestRecord {
            id: id.into(),
            kind,
            rule: "prod".into(),
            target: target.into(),
            target_key: TargetRecord {
                kind: 1,
                aux,
                data: [8, 42],
            },
            destination: (kind == RequestKind::Connect).then(|| DestinationRecord {
                address: "10.0.0.5".into(),
                port: 5432,
                protocol: "TCP".into(),
                host: Some("db.internal".into()),
            }),
            cgroup: "/agents/a1".into(),
            cgroup_id: 7,
            process: ProcessRecord {
                pid: 4242,
                tgid: 4242,
                uid: 1000,
                user: Some("agent".into()),
                comm: "python3".into(),
                argv: Some(vec!["python3".into(), "agent.py".into()]),
                parent: Some(ParentRecord {
                    pid: 1,
                    comm: Some("init".into()),
                }),
                cwd: Some("/srv".into()),
                ancestors: Vec::new(),
            },
            created: at(0),
            expires: at(10),
            owner: Some("alice".into()),
            approvals_required: 1,
            require_reason: false,
            risk: RiskRecord::High,
            exec: (kind == RequestKind::Exec).then(|| ExecRecord {
                argv: vec!["pg_dump".into(), "prod".into(), "-t orders".into()],
                script: false,
                complete: true,
                hash: 1,
            }),
            bind: BindRecord::Argv,
            justification: Some("nightly export <!channel>".into()),
        }
    }

    fn record(seq: u64, minute: i64, event: Event) -> Record {
        Record {
            seq,
            time: at(minute),
            event,
        }
    }

    fn decision(seq: u64, id: &str, verdict: Verdict) -> Record {
        record(
            seq,
            seq as i64,
            Event::Decision {
                request_id: id.into(),
                decision: verdict,
                reviewer: "bob".into(),
                reason: Some("ok".into()),
                channel: "cli".into(),
                grant_id: None,
            },
        )
    }

    fn journal() -> Vec<Record> {
        let created = |seq, request| {
            record(
                seq,
                seq as i64,
                Event::RequestCreated {
                    request: Box::new(request),
                },
            )
        };
        vec![
            record(
                0,
                0,
                Event::DaemonStarted {
                    version: "0.1.0".into(),
                    pid: 1,
                    kernel: "6.12".into(),
                },
            ),
            created(
                1,
                request("r-exec", RequestKind::Exec, "/usr/bin/pg_dump", 0),
            ),
            decision(2, "r-exec", Verdict::Approve),
            record(
                3,
                3,
                Event::GrantUsed {
                    grant_id: 9,
                    request_id: "r-exec".into(),
                    pid: Some(5000),
                },
            ),
            created(
                4,
                request("r-net", RequestKind::Connect, "10.0.0.5:5432", 0),
            ),
            decision(5, "r-net", Verdict::Deny),
            created(
                6,
                request("r-file", RequestKind::File, "/etc/shadow", WRITE),
            ),
            // A decision whose request this journal does not hold.
            decision(7, "r-gone", Verdict::Approve),
        ]
    }

    fn exported(format: Format) -> Exported {
        export(&journal(), format, Window::default(), "agent-host-1")
    }

    /// The attributes OCSF 1.3.0 requires (base event; System Activity's actor and device;
    /// the class's own; the Security Control profile's action_id), and the objects' own
    /// requirements used here: metadata's product and version, device's type_id, file's name
    /// and type_id, at least one of an actor's process or user, a process's pid, an
    /// endpoint's ip or hostname.
    fn assert_ocsf_complete(event: &Value) {
        for required in [
            "activity_id",
            "category_uid",
            "class_uid",
            "metadata",
            "severity_id",
            "time",
            "type_uid",
            "action_id",
        ] {
            assert!(!event[required].is_null(), "{required} missing: {event}");
        }
        // Product: its vendor_name is required in OCSF 1.3.0, the name recommended.
        assert!(
            event["metadata"]["product"]["vendor_name"].is_string(),
            "{event}"
        );
        assert!(event["metadata"]["product"]["name"].is_string(), "{event}");
        assert_eq!(event["metadata"]["version"], OCSF_VERSION);
        let class = event["class_uid"].as_u64().unwrap();
        assert_eq!(
            event["type_uid"].as_u64(),
            Some(class * 100 + event["activity_id"].as_u64().unwrap())
        );
        assert_eq!(event["category_uid"].as_u64(), Some(class / 1000));
        if class / 1000 == 1 {
            assert!(event["device"]["type_id"].is_u64(), "{event}");
            assert!(event["device"]["hostname"].is_string(), "{event}");
            let actor = &event["actor"];
            assert!(
                actor["process"].is_object() || actor["user"].is_object(),
                "{event}"
            );
        }
        match class {
            1007 => assert!(event["process"]["pid"].is_u64(), "{event}"),
            1001 => {
                assert!(event["file"]["name"].is_string(), "{event}");
                assert!(event["file"]["type_id"].is_u64(), "{event}");
            }
            4001 => assert!(
                event["dst_endpoint"]["ip"].is_string()
                    || event["dst_endpoint"]["hostname"].is_string(),
                "{event}"
            ),
            other => panic!("unexpected class {other}"),
        }
    }

    #[test]
    fn ocsf_events_carry_every_required_attribute_of_their_class() {
        let exported = exported(Format::Ocsf);
        assert_eq!(exported.orphans, 1);
        let lines = exported.lines;
        let classes: Vec<u64> = lines
            .iter()
            .map(|event| event["class_uid"].as_u64().unwrap())
            .collect();
        assert_eq!(classes, [1007, 1007, 1007, 4001, 4001, 1001]);
        for event in &lines {
            assert_ocsf_complete(event);
        }
        // The request: denied, its risk as severity, the command as the kernel read it.
        let asked = &lines[0];
        assert_eq!(asked["disposition_id"], DISPOSITION_BLOCKED);
        assert_eq!(asked["status_id"], STATUS_FAILURE);
        assert_eq!(asked["severity_id"], 4);
        assert_eq!(
            asked["process"]["cmd_line"],
            "/usr/bin/pg_dump prod '-t orders'"
        );
        assert_eq!(asked["actor"]["process"]["pid"], 4242);
        assert_eq!(asked["metadata"]["correlation_uid"], "r-exec");
        assert_eq!(
            asked["unmapped"]["gatekeeper"]["justification"],
            "nightly export <!channel>"
        );
        // The decision: by the reviewer; the use: by the pid the kernel reported.
        assert_eq!(lines[1]["disposition_id"], DISPOSITION_APPROVED);
        assert_eq!(lines[1]["actor"]["user"]["name"], "bob");
        assert_eq!(lines[2]["disposition_id"], DISPOSITION_ALLOWED);
        assert_eq!(lines[2]["process"]["pid"], 5000);
        assert_eq!(lines[4]["disposition_id"], DISPOSITION_REJECTED);
        assert_eq!(lines[3]["dst_endpoint"]["port"], 5432);
        // A write is an update.
        assert_eq!(lines[5]["activity_id"], 3);
    }

    #[test]
    fn ecs_documents_name_the_action_its_outcome_and_who_decided() {
        let lines = exported(Format::Ecs).lines;
        assert_eq!(lines.len(), 6);
        for document in &lines {
            assert_eq!(document["ecs"]["version"], ECS_VERSION);
            assert_eq!(document["event"]["kind"], "event");
            assert_eq!(document["host"]["hostname"], "agent-host-1");
            assert!(document["@timestamp"].is_string());
        }
        let asked = &lines[0];
        assert_eq!(asked["event"]["category"], json!(["process"]));
        assert_eq!(asked["event"]["type"], json!(["start", "denied"]));
        assert_eq!(asked["event"]["outcome"], "failure");
        assert_eq!(asked["process"]["executable"], "/usr/bin/pg_dump");
        assert_eq!(
            asked["process"]["args"],
            json!(["/usr/bin/pg_dump", "prod", "-t orders"])
        );
        assert_eq!(lines[1]["gatekeeper"]["reviewer"], "bob");
        assert_eq!(lines[1]["event"]["type"], json!(["start", "allowed"]));
        assert_eq!(lines[2]["event"]["action"], "grant-used");
        assert_eq!(lines[3]["destination"]["ip"], "10.0.0.5");
        assert_eq!(lines[3]["network"]["transport"], "tcp");
        assert_eq!(lines[4]["event"]["action"], "request-denied");
        assert_eq!(lines[5]["event"]["type"], json!(["change", "denied"]));
        // No nulls: absent fields are left out.
        for document in &lines {
            assert!(!document.to_string().contains("null"), "{document}");
        }
    }

    #[test]
    fn jsonl_keeps_every_record_and_windows_cut_by_time() {
        let all = exported(Format::Jsonl).lines;
        assert_eq!(all.len(), 8);
        assert_eq!(all[0]["type"], "daemon_started");
        assert_eq!(all[3]["seq"], 3);
        assert_eq!(all[3]["pid"], 5000);
        let window = Window {
            since: Some(at(2)),
            until: Some(at(4)),
        };
        let cut = export(&journal(), Format::Jsonl, window, "h").lines;
        let seqs: Vec<&Value> = cut.iter().map(|line| &line["seq"]).collect();
        assert_eq!(seqs, [2, 3]);
        // A decision in the window whose request came before it still has its class.
        let ocsf = export(&journal(), Format::Ocsf, window, "h");
        assert_eq!(ocsf.lines.len(), 2);
        assert_eq!(ocsf.lines[0]["class_uid"], 1007);
    }
}
