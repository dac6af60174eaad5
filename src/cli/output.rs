//! How client commands print: tables and descriptions, every user-supplied text escaped
//! for the terminal ([`Shown`]).

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::domain::grant::State;
use crate::domain::policy;
use crate::domain::session::SessionMeta;
use crate::shown::Shown;
use crate::wire::audit::AuditRecord;
use crate::wire::grants::GrantView;
use crate::wire::sessions::Session;

pub(super) fn sessions_table(sessions: &[Session]) -> String {
    if sessions.is_empty() {
        return "no sessions\n".into();
    }
    let mut out = format!(
        "{:<13} {:<20} {:<8} {:<18} {:<10} {:<12} {:<10} {:<12} {}\n",
        "ID", "START", "USER", "PRINCIPAL@TARGET", "KIND", "STATE", "EXIT", "NODE", "COMMAND"
    );
    for s in sessions {
        out.push_str(&format!(
            "{:<13} {:<20} {:<8} {:<18} {:<10} {:<12} {:<10} {:<12} {}\n",
            Shown(&s.id),
            s.start.format("%Y-%m-%dT%H:%M:%SZ"),
            Shown(&s.user),
            Shown(&format!("{}@{}", s.principal, s.target)),
            Shown(&s.kind),
            s.state.to_string(),
            s.exit_status.map_or("-".into(), |c| c.to_string()),
            Shown(s.node.as_deref().unwrap_or("-")),
            Shown(s.command.as_deref().unwrap_or(""))
        ));
    }
    out
}

pub(super) fn describe_session(s: &SessionMeta, events: usize) -> String {
    let mut out = format!(
        "session   {}\nuser      {} (grant {}, serial {}, key id {})\nlogin     {}@{} from {}\nnode      {}\nkind      {} {}\nstart     {}\nend       {}\nstate     {}{}\nexit      {}\nbytes     {} in, {} out, {} events\n",
        Shown(&s.id),
        Shown(&s.user),
        Shown(&s.grant),
        s.serial,
        Shown(&s.key_id),
        Shown(&s.principal),
        Shown(&s.target),
        Shown(&s.client),
        Shown(s.node.as_deref().unwrap_or("-")),
        Shown(&s.kind),
        Shown(s.command.as_deref().unwrap_or("")),
        rfc3339(s.start),
        s.end.map(rfc3339).unwrap_or_else(|| "-".into()),
        s.state,
        s.end_reason
            .as_ref()
            .map(|r| format!(" ({})", Shown(r)))
            .unwrap_or_default(),
        s.exit_status.map_or("-".into(), |c| c.to_string()),
        s.bytes_in,
        s.bytes_out,
        events
    );
    for e in &s.env {
        out.push_str(&format!("env       {}\n", Shown(e)));
    }
    for f in &s.files {
        out.push_str(&format!("file      {}\n", Shown(f)));
    }
    for f in &s.flags {
        out.push_str(&format!(
            "flag      +{:.1}s {} ({}{}): {}\n",
            f.at_ms as f64 / 1000.0,
            Shown(&f.rule),
            crate::domain::Vocabulary::label(f.on),
            if f.blocked { ", blocked" } else { "" },
            Shown(&f.line)
        ));
    }
    let review = match (&s.reviewed, &s.review) {
        (Some(r), _) => format!(
            "{} by {} at {}: {}",
            crate::domain::Vocabulary::label(r.verdict),
            Shown(&r.by),
            rfc3339(r.at),
            Shown(&r.note)
        ),
        (None, Some(need)) => format!(
            "waiting for {}{}",
            need.by.join(" or "),
            crate::domain::review::due(s)
                .map(|d| format!(", due {}", rfc3339(d)))
                .unwrap_or_default()
        ),
        (None, None) => "none asked".into(),
    };
    out.push_str(&format!("review    {review}\n"));
    if let Some(r) = &s.removed {
        out.push_str(&format!("recording {}\n", r.words()));
    }
    out
}

pub(super) fn unix_time(secs: u64) -> String {
    DateTime::<Utc>::from_timestamp(secs as i64, 0).map_or_else(|| secs.to_string(), rfc3339)
}

pub(super) fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The policy's reasons worth repeating to the person who asked (the last one: why this
/// answer), as an indented line.
pub(super) fn reasons_text(reasons: &[String]) -> String {
    reasons
        .last()
        .map(|r| format!("  {}\n", Shown(r)))
        .unwrap_or_default()
}

pub(super) fn describe_grant(g: &GrantView) -> String {
    let gr = &g.grant;
    let mut s = format!(
        "{} {}/{} for {}: {}",
        gr.id, gr.contract, gr.step, gr.user, g.grant.state
    );
    match g.grant.state {
        State::Active => s.push_str(&format!(
            " until {}",
            gr.end.map(rfc3339).unwrap_or_default()
        )),
        State::Scheduled => s.push_str(&format!(
            ": opens at {} ({}), until {}",
            gr.start.map(rfc3339).unwrap_or_default(),
            gr.start
                .map(|t| policy::until(t, Utc::now()))
                .unwrap_or_default(),
            gr.end.map(rfc3339).unwrap_or_default()
        )),
        State::Pending => {
            s.push_str(&format!(
                " ({} of {} approvals from {})",
                gr.approvals.len(),
                gr.approvals_needed,
                gr.approvals_from.join(", ")
            ));
            if let Some(t) = gr.scheduled {
                s.push_str(&format!(", for a window opening at {}", rfc3339(t)));
            }
        }
        _ => {
            if let Some(c) = &gr.closed {
                s.push_str(&format!(" by {}: {}", Shown(&c.by), Shown(&c.reason)));
            }
        }
    }
    s.push('\n');
    s
}

/// Grants and requests, with what each grants (principals, targets, options), so an
/// approver sees what approving a pending request gives; `!` marks a break-glass step.
pub(super) fn grants_table(grants: &[GrantView], now: DateTime<Utc>) -> String {
    if grants.is_empty() {
        return "no grants\n".into();
    }
    let list = |items: &[String]| {
        if items.is_empty() {
            "-".to_string()
        } else {
            items.join(",")
        }
    };
    let mut out = format!(
        "{:<13} {:<10} {:<26} {:<9} {:<10} {:<18} {:<18} {}\n",
        "ID", "USER", "CONTRACT/STEP", "STATE", "LEFT", "PRINCIPALS", "TARGETS", "OPTIONS"
    );
    for g in grants {
        let left = match (g.grant.state, g.grant.start, g.grant.end) {
            (State::Active, _, Some(end)) => policy::format_duration(Duration::from_secs(
                (end - now).num_seconds().max(0) as u64,
            )),
            // A window not yet open: how long until it does.
            (State::Scheduled, Some(start), _) => policy::until(start, now),
            _ => "-".into(),
        };
        let step = format!(
            "{}/{}{}",
            g.grant.contract,
            g.grant.step,
            if g.break_glass { "!" } else { "" }
        );
        out.push_str(&format!(
            "{:<13} {:<10} {:<26} {:<9} {:<10} {:<18} {:<18} {}\n",
            Shown(&g.grant.id),
            Shown(&g.grant.user),
            Shown(&step),
            g.grant.state.to_string(),
            left,
            Shown(&list(&g.principals)),
            Shown(&list(&g.targets)),
            Shown(&list(&g.options))
        ));
    }
    if grants.iter().any(|g| g.break_glass) {
        out.push_str("! break-glass step\n");
    }
    out
}

/// The audit log as a table: a header, columns as wide as their widest value (bounded), one
/// time format (UTC, seconds), every field escaped.
pub(super) fn audit_table(records: &[AuditRecord]) -> String {
    if records.is_empty() {
        return "no audit records\n".into();
    }
    let rows: Vec<[String; 6]> = records
        .iter()
        .map(|r| {
            [
                r.seq.to_string(),
                r.at.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
                Shown(&r.actor).to_string(),
                Shown(&r.action).to_string(),
                Shown(&r.subject).to_string(),
                Shown(&r.detail.to_string()).to_string(),
            ]
        })
        .collect();
    let header = ["SEQ", "AT", "ACTOR", "ACTION", "SUBJECT", "DETAIL"];
    // Width of each column but the last, at most 24 (longer values just push the line).
    let width = |i: usize| {
        rows.iter()
            .map(|r| r[i].chars().count())
            .chain([header[i].len()])
            .max()
            .unwrap_or(0)
            .min(24)
    };
    let widths: Vec<usize> = (0..5).map(width).collect();
    let line = |cells: [&str; 6]| {
        let mut out = format!("{:>w$}", cells[0], w = widths[0]);
        for (i, cell) in cells.iter().enumerate().skip(1).take(4) {
            out.push_str(&format!("  {:<w$}", cell, w = widths[i]));
        }
        out.push_str("  ");
        out.push_str(cells[5]);
        out.push('\n');
        out
    };
    let mut out = line(header);
    for r in &rows {
        out.push_str(&line([&r[0], &r[1], &r[2], &r[3], &r[4], &r[5]]));
    }
    out
}

/// The audit log as CSV: seq, at, actor, action, subject, detail (compact JSON), hash.
pub(super) fn audit_csv(records: &[AuditRecord]) -> String {
    let mut w = csv::Writer::from_writer(Vec::new());
    let fields = |r: &AuditRecord| {
        [
            r.seq.to_string(),
            r.at.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            r.actor.clone(),
            r.action.clone(),
            r.subject.clone(),
            r.detail.to_string(),
            r.hash.clone(),
        ]
    };
    // Writing to memory cannot fail.
    let _ = w.write_record(["seq", "at", "actor", "action", "subject", "detail", "hash"]);
    for r in records {
        let _ = w.write_record(fields(r));
    }
    String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default()
}
