//! `sessions review [ID --ok|--concern --note T]`: the caller's review queue, or their
//! verdict on one session, through the daemon (which checks who may, and audits it); and
//! `report`, the auditors' evidence.

use reqwest::Method;

use super::args::ListFormat;
use super::output::rfc3339;
use super::{connect, emit, since, CliError, ClientOpts, Result};
use crate::domain::report::Row;
use crate::domain::review::Verdict;
use crate::shown::Shown;
use crate::wire::sessions::{ReviewBody, Session};
use crate::wire::{self as routes, path};

/// The queue as a table: the one due first first, with its flags.
fn queue_table(queue: &[Session]) -> String {
    if queue.is_empty() {
        return "nothing to review\n".into();
    }
    let mut out = format!(
        "{:<13} {:<8} {:<18} {:<20} {:<20} {}\n",
        "ID", "USER", "PRINCIPAL@TARGET", "ENDED", "DUE", "FLAGS"
    );
    for s in queue {
        let meta = crate::domain::session::SessionMeta::from(s.clone());
        let due = crate::domain::review::due(&meta).map_or("-".into(), rfc3339);
        let mut rules: Vec<&str> = s.flags.iter().map(|f| f.rule.as_str()).collect();
        rules.dedup();
        out.push_str(&format!(
            "{:<13} {:<8} {:<18} {:<20} {:<20} {}\n",
            Shown(&s.id),
            Shown(&s.user),
            Shown(&format!("{}@{}", s.principal, s.target)),
            s.end.map_or("-".into(), rfc3339),
            due,
            match s.flags.len() {
                0 => "-".to_string(),
                n => format!("{n} ({})", rules.join(", ")),
            }
        ));
    }
    out
}

pub(super) async fn run(
    id: Option<String>,
    ok: bool,
    concern: bool,
    note: Option<String>,
    opts: ClientOpts,
) -> Result {
    let client = connect(&opts).await?;
    let Some(id) = id else {
        let queue: Vec<Session> = client
            .call(Method::GET, routes::SESSIONS_REVIEW, None::<&()>)
            .await?;
        return emit(&opts, &queue, || queue_table(&queue));
    };
    let verdict = match (ok, concern) {
        (true, false) => Verdict::Ok,
        (false, true) => Verdict::Concern,
        _ => {
            return Err(CliError::Usage(
                "give a verdict: --ok or --concern, with --note TEXT".into(),
            ))
        }
    };
    let Some(note) = note else {
        return Err(CliError::Usage(
            "a verdict needs --note TEXT saying what you looked at".into(),
        ));
    };
    let body = ReviewBody { verdict, note };
    let out: Session = client
        .call(
            Method::POST,
            &path(routes::SESSION_REVIEW, &id),
            Some(&body),
        )
        .await?;
    emit(&opts, &out, || {
        format!(
            "reviewed session {} of {}: {}\n",
            Shown(&out.id),
            Shown(&out.user),
            crate::domain::Vocabulary::label(verdict)
        )
    })
}

/// `report --since 30d [--format table|csv|json]`.
pub(super) async fn report(period: &str, format: ListFormat, opts: ClientOpts) -> Result {
    let secs = since(period)?.as_secs();
    let client = connect(&opts).await?;
    let rows: Vec<Row> = client
        .call(
            Method::GET,
            &format!("{}?since={secs}", routes::REPORT),
            None::<&()>,
        )
        .await?;
    let header = [
        "contract",
        "step",
        "grants",
        "approvers",
        "sessions",
        "flags",
        "blocked",
        "needed",
        "reviewed",
        "late",
        "missing",
        "pending",
    ];
    let fields = |r: &Row| {
        [
            r.contract.clone(),
            r.step.clone(),
            r.grants.to_string(),
            r.approvers.join(" "),
            r.sessions.to_string(),
            r.flags.to_string(),
            r.blocked.to_string(),
            r.reviews_needed.to_string(),
            r.reviewed.to_string(),
            r.late.to_string(),
            r.missing.to_string(),
            r.pending.to_string(),
        ]
    };
    match format {
        ListFormat::Csv if !opts.json => {
            let mut w = csv::Writer::from_writer(Vec::new());
            // Writing to memory cannot fail.
            let _ = w.write_record(header);
            for r in &rows {
                let _ = w.write_record(fields(r));
            }
            print!(
                "{}",
                String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default()
            );
            Ok(())
        }
        ListFormat::Json => emit(&ClientOpts { json: true, ..opts }, &rows, String::new),
        _ => emit(&opts, &rows, || {
            if rows.is_empty() {
                return format!("no grants or sessions in the last {period}\n");
            }
            let line =
                |f: [String; 12]| {
                    format!(
                    "{:<14} {:<12} {:>6} {:<16} {:>8} {:>5} {:>7} {:>6} {:>8} {:>4} {:>7} {:>7}\n",
                    Shown(&f[0]), Shown(&f[1]), f[2], Shown(&f[3]), f[4], f[5], f[6], f[7], f[8],
                    f[9], f[10], f[11]
                )
                };
            let mut out = line(header.map(String::from));
            for r in &rows {
                out.push_str(&line(fields(r)));
            }
            out
        }),
    }
}
