//! `sessions list | show | play | export | grep`: recorded sessions, read through the daemon
//! (which checks the role and audits every read) and shown, played or exported here.

use reqwest::Method;

use super::output::{describe_session, sessions_table};
use super::{
    connect, emit, since, write_atomic, CliError, ExportFormat, FilterArgs, Result, SessionsCommand,
};
use crate::client::{Client, ClientError};
use crate::domain::policy;
use crate::domain::session::SessionMeta;
use crate::recordings::export;
use crate::recordings::format::{decode_events, Event};
use crate::shown::Shown;
use crate::wire::sessions::{GrepBody, Grepped, Hit, Session, SessionBody, SessionFilter};
use crate::wire::{self as routes, path};

impl FilterArgs {
    fn filter(self) -> Result<SessionFilter> {
        let since = match self.since {
            Some(s) => Some(since(&s)?.as_secs() as i64),
            None => None,
        };
        Ok(SessionFilter {
            user: self.user,
            target: self.target,
            since,
            flagged: self.flagged,
            unreviewed: self.unreviewed,
            overdue: self.overdue,
        })
    }
}

/// Fetches a session's metadata and events, naming why (show, play, export) for the audit.
async fn fetch_session(
    client: &Client,
    id: &str,
    purpose: &str,
) -> Result<(SessionMeta, Vec<Event>)> {
    let out: serde_json::Value = client
        .call(
            Method::GET,
            &format!("{}?purpose={purpose}", path(routes::SESSION, id)),
            None::<&()>,
        )
        .await?;
    let bad = |why: String| {
        CliError::Client(ClientError::Refused {
            status: 0,
            message: format!("malformed session from the daemon: {why}"),
        })
    };
    let body: SessionBody = serde_json::from_value(out).map_err(|e| bad(e.to_string()))?;
    let raw = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &body.events)
        .map_err(|e| bad(e.to_string()))?;
    let events = decode_events(&raw).map_err(|e| bad(e.to_string()))?;
    Ok((body.session.into(), events))
}

/// Hits as lines: session, time, where the line was, the line.
fn grep_text(hits: &[Hit]) -> String {
    let mut out = String::new();
    for h in hits {
        let stream = match h.stream.as_str() {
            "input" => "typed",
            "command" => "command",
            _ => "output",
        };
        out.push_str(&format!(
            "{} +{:.1}s {stream}: {}\n",
            Shown(&h.session),
            h.at_ms as f64 / 1000.0,
            Shown(&h.line)
        ));
    }
    if hits.is_empty() {
        out.push_str("no matches\n");
    }
    out
}

pub(super) async fn run(cmd: SessionsCommand) -> Result {
    match cmd {
        SessionsCommand::List {
            filter,
            client: opts,
        } => {
            let query = serde_urlencoded::to_string(filter.filter()?).unwrap_or_default();
            let client = connect(&opts).await?;
            let out: Vec<Session> = client
                .call(
                    Method::GET,
                    &format!("{}?{query}", routes::SESSIONS),
                    None::<&()>,
                )
                .await?;
            emit(&opts, &out, || sessions_table(&out))
        }
        SessionsCommand::Show {
            id,
            commands: true,
            client: opts,
        } => {
            let client = connect(&opts).await?;
            let (meta, events) = fetch_session(&client, &id, "show").await?;
            if let Some(r) = &meta.removed {
                eprintln!(
                    "ramp-ca: the recording was {}: typed lines are gone; the exec command, files and flags below are the ledger's",
                    r.words()
                );
            }
            let timeline = crate::recordings::timeline::commands(&meta, &events);
            emit(&opts, &timeline, || {
                let mut out = String::new();
                for e in &timeline {
                    out.push_str(&format!(
                        "+{:.1}s {:<6} {}\n",
                        e.at_ms as f64 / 1000.0,
                        e.kind,
                        Shown(&e.line)
                    ));
                }
                if timeline.is_empty() {
                    out.push_str("no commands\n");
                }
                out
            })
        }
        SessionsCommand::Show {
            id,
            commands: false,
            client: opts,
        } => {
            let client = connect(&opts).await?;
            let (meta, events) = fetch_session(&client, &id, "show").await?;
            let shown = Session::from(meta.clone());
            emit(&opts, &shown, || describe_session(&meta, events.len()))
        }
        SessionsCommand::Play {
            id,
            speed,
            idle_cap,
            from,
            client: opts,
        } => {
            if !(speed > 0.0 && speed.is_finite()) {
                return Err(CliError::Usage("--speed must be a positive number".into()));
            }
            let cap = policy::parse_duration(&idle_cap)
                .ok_or_else(|| CliError::Usage(format!("--idle-cap: bad duration `{idle_cap}`")))?;
            let from_ms = match from.as_deref() {
                Some("0") | None => 0,
                Some(f) => policy::parse_duration(f)
                    .ok_or_else(|| {
                        CliError::Usage(format!("--from: bad offset `{f}` (like 1m30s)"))
                    })?
                    .as_millis() as u64,
            };
            let client = connect(&opts).await?;
            let (_, events) = fetch_session(&client, &id, "play").await?;
            let mut stdout = tokio::io::stdout();
            export::play_from(&events, from_ms, speed, cap, &mut stdout)
                .await
                .map_err(crate::Error::io("stdout"))?;
            Ok(())
        }
        SessionsCommand::Export {
            id,
            format,
            out,
            client: opts,
        } => {
            let client = connect(&opts).await?;
            let (meta, events) = fetch_session(&client, &id, "export").await?;
            let text = match format {
                ExportFormat::Asciicast => export::to_asciicast(&meta, &events),
                ExportFormat::Json => {
                    serde_json::to_string_pretty(&export::to_json(&meta, &events))
                        .unwrap_or_default()
                        + "\n"
                }
            };
            match out {
                Some(path) => write_atomic(&path, text.as_bytes()),
                None => {
                    print!("{text}");
                    Ok(())
                }
            }
        }
        SessionsCommand::End {
            id,
            reason,
            client: opts,
        } => {
            let client = connect(&opts).await?;
            let body = crate::wire::grants::ReasonBody { reason };
            let out: crate::wire::grants::Revocation = client
                .call(Method::POST, &path(routes::SESSION_END, &id), Some(&body))
                .await?;
            emit(&opts, &out, || {
                format!(
                    "ended session {}: its user is told \"{} ended this session: {}\"\n",
                    Shown(&id),
                    out.by,
                    Shown(&out.reason)
                )
            })
        }
        SessionsCommand::Review {
            id,
            ok,
            concern,
            note,
            client,
        } => super::review::run(id, ok, concern, note, client).await,
        SessionsCommand::Grep {
            pattern,
            ignore_case,
            regex,
            filter,
            client: opts,
        } => {
            let body = GrepBody {
                pattern,
                filter: filter.filter()?,
                ignore_case,
                regex,
            };
            let client = connect(&opts).await?;
            let found: Grepped = client
                .call(Method::POST, routes::SESSIONS_GREP, Some(&body))
                .await?;
            // The recordings that could not be searched are named whatever the format: a
            // damaged one must not pass for one without matches.
            for d in &found.damaged {
                eprintln!(
                    "ramp-ca: session {} was not searched: {}",
                    Shown(&d.session),
                    Shown(&d.error)
                );
            }
            if let Some(first) = found.removed.first() {
                let more = found.removed.len() - 1;
                eprintln!(
                    "ramp-ca: {} not searched: removed by retention ({}{})",
                    if more == 0 {
                        format!("session {}'s recording was", Shown(first))
                    } else {
                        format!("{} sessions' recordings were", more + 1)
                    },
                    Shown(first),
                    if more == 0 {
                        String::new()
                    } else {
                        format!(" and {more} more; `sessions show ID` says when and why")
                    }
                );
            }
            emit(&opts, &found, || grep_text(&found.hits))
        }
    }
}
