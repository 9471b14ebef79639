//! Between the daemon's in-memory requests and the journal's record types: the one place where
//! one becomes the other, so the format changes only when this file says so.

use std::net::IpAddr;

use gatekeeper_common::Target;

use crate::{
    destinations::Destination,
    journal::schema::{
        AncestorRecord, BindRecord, DecisionRecord, DestinationRecord, Event, ExecRecord,
        ParentRecord, ProcessRecord, RequestKind, RequestRecord, RequestSnapshot, RequestState,
        RiskRecord, TargetRecord, Verdict,
    },
    requests::{
        Ancestor, Bind, Decision, DecisionInfo, ExecCall, Kind, Parent, Process, Request, Risk,
        State,
    },
};

pub fn verdict_of(decision: Decision) -> Verdict {
    match decision {
        Decision::Approve => Verdict::Approve,
        Decision::Deny => Verdict::Deny,
    }
}

pub fn decision_of(verdict: Verdict) -> Decision {
    match verdict {
        Verdict::Approve => Decision::Approve,
        Verdict::Deny => Decision::Deny,
    }
}

fn state_record(state: State) -> RequestState {
    match state {
        State::Pending => RequestState::Pending,
        State::Approved => RequestState::Approved,
        State::Denied => RequestState::Denied,
        State::Expired => RequestState::Expired,
    }
}

fn state_of(state: RequestState) -> State {
    match state {
        RequestState::Pending => State::Pending,
        RequestState::Approved => State::Approved,
        RequestState::Denied => State::Denied,
        RequestState::Expired => State::Expired,
    }
}

pub fn decision_event(request_id: &str, info: &DecisionInfo, grant_id: Option<u64>) -> Event {
    Event::Decision {
        request_id: request_id.to_owned(),
        decision: verdict_of(info.decision),
        reviewer: info.reviewer.clone(),
        reason: info.reason.clone(),
        channel: info.channel.clone(),
        grant_id,
    }
}

fn decision_record(info: &DecisionInfo) -> DecisionRecord {
    DecisionRecord {
        decision: verdict_of(info.decision),
        reviewer: info.reviewer.clone(),
        reason: info.reason.clone(),
        channel: info.channel.clone(),
        at: info.at,
    }
}

fn decision_info(record: &DecisionRecord) -> DecisionInfo {
    DecisionInfo {
        decision: decision_of(record.decision),
        reviewer: record.reviewer.clone(),
        reason: record.reason.clone(),
        channel: record.channel.clone(),
        at: record.at,
    }
}

pub fn request_record(request: &Request) -> RequestRecord {
    let process = &request.process;
    RequestRecord {
        id: request.id.clone(),
        kind: match request.kind {
            Kind::Exec => RequestKind::Exec,
            Kind::Connect => RequestKind::Connect,
            Kind::File => RequestKind::File,
        },
        rule: request.rule.clone(),
        target: request.target.clone(),
        target_key: TargetRecord {
            kind: request.target_key.kind,
            aux: request.target_key.aux,
            data: request.target_key.data,
        },
        destination: request
            .destination
            .as_ref()
            .map(|destination| DestinationRecord {
                address: destination.address.to_string(),
                port: destination.port,
                protocol: destination.protocol.clone(),
                host: destination.host.clone(),
            }),
        cgroup: request.cgroup.clone(),
        cgroup_id: request.cgroup_id,
        process: ProcessRecord {
            pid: process.pid,
            tgid: process.tgid,
            uid: process.uid,
            user: process.user.clone(),
            comm: process.comm.clone(),
            argv: process.argv.clone(),
            parent: process.parent.as_ref().map(|parent| ParentRecord {
                pid: parent.pid,
                comm: parent.comm.clone(),
            }),
            cwd: process.cwd.clone(),
            ancestors: process
                .ancestors
                .iter()
                .map(|ancestor| AncestorRecord {
                    pid: ancestor.pid,
                    comm: ancestor.comm.clone(),
                    argv: ancestor.argv.clone(),
                })
                .collect(),
        },
        created: request.created,
        expires: request.expires,
        owner: request.owner.clone(),
        approvals_required: request.approvals_required,
        require_reason: request.require_reason,
        risk: match request.risk {
            Risk::Low => RiskRecord::Low,
            Risk::Medium => RiskRecord::Medium,
            Risk::High => RiskRecord::High,
            Risk::Critical => RiskRecord::Critical,
        },
        exec: request.exec.as_ref().map(|exec| ExecRecord {
            argv: exec.argv.clone(),
            script: exec.script,
            complete: exec.complete,
            hash: exec.hash,
        }),
        bind: match request.bind {
            Bind::Argv => BindRecord::Argv,
            Bind::Binary => BindRecord::Binary,
        },
        justification: request.justification.clone(),
    }
}

/// A request as it was created, pending.
pub fn request_from_record(record: &RequestRecord) -> Request {
    let process = &record.process;
    Request {
        id: record.id.clone(),
        state: State::Pending,
        kind: match record.kind {
            RequestKind::Exec => Kind::Exec,
            RequestKind::Connect => Kind::Connect,
            RequestKind::File => Kind::File,
        },
        rule: record.rule.clone(),
        target: record.target.clone(),
        target_key: Target {
            kind: record.target_key.kind,
            aux: record.target_key.aux,
            data: record.target_key.data,
        },
        destination: record.destination.as_ref().map(|destination| Destination {
            // An address this build cannot parse is shown unspecified rather than refusing
            // the whole journal.
            address: destination
                .address
                .parse()
                .unwrap_or(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)),
            port: destination.port,
            protocol: destination.protocol.clone(),
            host: destination.host.clone(),
        }),
        cgroup: record.cgroup.clone(),
        cgroup_id: record.cgroup_id,
        process: Process {
            pid: process.pid,
            tgid: process.tgid,
            uid: process.uid,
            user: process.user.clone(),
            comm: process.comm.clone(),
            argv: process.argv.clone(),
            parent: process.parent.as_ref().map(|parent| Parent {
                pid: parent.pid,
                comm: parent.comm.clone(),
            }),
            cwd: process.cwd.clone(),
            ancestors: process
                .ancestors
                .iter()
                .map(|ancestor| Ancestor {
                    pid: ancestor.pid,
                    comm: ancestor.comm.clone(),
                    argv: ancestor.argv.clone(),
                })
                .collect(),
        },
        created: record.created,
        expires: record.expires,
        attempts: 1,
        decision: None,
        grant_id: None,
        owner: record.owner.clone(),
        approvals_required: record.approvals_required.max(1),
        require_reason: record.require_reason,
        risk: match record.risk {
            RiskRecord::Low => Risk::Low,
            RiskRecord::Medium => Risk::Medium,
            RiskRecord::High => Risk::High,
            RiskRecord::Critical => Risk::Critical,
        },
        exec: record.exec.as_ref().map(|exec| ExecCall {
            argv: exec.argv.clone(),
            script: exec.script,
            complete: exec.complete,
            hash: exec.hash,
        }),
        bind: match record.bind {
            BindRecord::Argv => Bind::Argv,
            BindRecord::Binary => Bind::Binary,
        },
        justification: record.justification.clone(),
        approvals: Vec::new(),
        grant_error: None,
        finished: None,
        over_cap: 0,
    }
}

pub fn request_snapshot(request: &Request, delivered_to: Vec<String>) -> RequestSnapshot {
    RequestSnapshot {
        request: request_record(request),
        state: state_record(request.state),
        attempts: request.attempts,
        approvals: request.approvals.iter().map(decision_record).collect(),
        decision: request.decision.as_ref().map(decision_record),
        grant_id: request.grant_id,
        grant_error: request.grant_error.clone(),
        finished: request.finished,
        delivered_to,
    }
}

pub fn request_from_snapshot(snapshot: &RequestSnapshot) -> Request {
    Request {
        state: state_of(snapshot.state),
        attempts: snapshot.attempts.max(1),
        approvals: snapshot.approvals.iter().map(decision_info).collect(),
        decision: snapshot.decision.as_ref().map(decision_info),
        grant_id: snapshot.grant_id,
        grant_error: snapshot.grant_error.clone(),
        finished: snapshot.finished,
        ..request_from_record(&snapshot.request)
    }
}
