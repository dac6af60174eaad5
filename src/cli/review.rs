//! `sessions review [ID --ok|--concern --note T]`: the caller's review queue, or their
//! verdict on one session, through the daemon (which checks who may, and audits it).

use reqwest::Method;

use super::output::rfc3339;
use super::{connect, emit, CliError, ClientOpts, Result};
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
