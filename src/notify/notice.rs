//! Which audited actions people act on, and what a receiver reads about each: one match on
//! the typed action, with the grant or session it concerns looked up through the service.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::Format;
use crate::checkpoint::Signed;
use crate::domain::audit::{Action, AuditRecord};
use crate::domain::grant::{Grant, SERVICE_ACTOR};
use crate::domain::policy::format_duration;
use crate::domain::review::Verdict;
use crate::domain::session::INTERRUPTED_REASON;
use crate::domain::Vocabulary;
use crate::service::Service;
use crate::wire::grants::Grant as GrantBody;
use crate::wire::webhook::{to_value, CheckpointDetail, CutOffSession, Payload, SlackBody, Topic};

/// An event ready to post, in both shapes.
#[derive(Debug, Clone)]
pub struct Notice {
    pub topic: Topic,
    /// The plain JSON body ([`Payload`]).
    pub json: Value,
    /// The one line a person reads (Slack's `text`).
    pub text: String,
}

impl Notice {
    pub(super) fn body(&self, format: Format) -> Vec<u8> {
        let v = match format {
            Format::Json => self.json.clone(),
            Format::Slack => to_value(&SlackBody { text: &self.text }),
        };
        serde_json::to_vec(&v).expect("json values serialise")
    }
}

/// Slack reads `&`, `<` and `>` as markup; everything people typed is escaped.
fn esc(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn hhmm(t: DateTime<Utc>) -> String {
    t.format("%H:%M UTC").to_string()
}

/// A time up to 30 days ahead (a window asked for with `--start`): with its date.
fn dated(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M UTC").to_string()
}

/// `: reason` when there is one.
fn because(reason: Option<&str>) -> String {
    reason
        .filter(|r| !r.trim().is_empty())
        .map(|r| format!(": {}", esc(r)))
        .unwrap_or_default()
}

fn plural(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

/// The audit record's `detail`, with what people need to read it added.
struct Detail(Value);

impl Detail {
    fn add(&mut self, key: &str, v: Value) {
        if let Some(map) = self.0.as_object_mut() {
            map.insert(key.into(), v);
        }
    }

    fn grant(&mut self, g: &Grant) {
        self.add("grant", to_value(&GrantBody::from(g)));
    }
}

/// The event an audit record is, if it is one people act on, with the grant or session it
/// concerns looked up and added to `detail`.
pub async fn notice(service: &Service, rec: &AuditRecord) -> Option<Notice> {
    let grant = || async { service.grant_record(&rec.subject).await.ok().flatten() };
    let mut detail = Detail(rec.detail.clone());
    let (topic, text) = match rec.typed()? {
        Action::Request(d) if d.needs_approvals > 0 => {
            let g = grant().await?;
            let n = g.approvals_needed;
            let from = d
                .start
                .map(|s| format!(" from {}", dated(s)))
                .unwrap_or_default();
            let text = format!(
                ":unlock: {} requested {} for {}{from}{} (needs {n} approval{} from {}; `ramp-ca approve {}`)",
                g.user,
                g.what(),
                format_duration(Duration::from_secs(g.ttl_secs)),
                because(g.reason.as_deref()),
                if n == 1 { "" } else { "s" },
                g.approvals_from.join(" or "),
                g.id
            );
            detail.grant(&g);
            (Topic::Request, text)
        }
        Action::Extend(d) => {
            let g = grant().await?;
            let to = d.to.format("%Y-%m-%d %H:%M UTC");
            let reason = because(d.reason.as_deref());
            let text = match (&d.pending, &d.by_rule) {
                (true, _) => format!(
                    ":hourglass: {} asks to extend {} ({}) to {to}{reason}: waiting for approval from {}",
                    rec.actor,
                    g.what(),
                    g.id,
                    g.approvals_from.join(" or ")
                ),
                (false, Some(rule)) => format!(
                    ":hourglass: {}'s grant of {} ({}) extended to {to} by rule `{rule}`{reason}",
                    g.user,
                    g.what(),
                    g.id
                ),
                (false, None) => format!(
                    ":hourglass: {}'s grant of {} ({}) extended to {to}{reason}",
                    g.user,
                    g.what(),
                    g.id
                ),
            };
            detail.grant(&g);
            (Topic::Extend, text)
        }
        Action::Approve(d) => {
            let g = grant().await?;
            let what = if d.extension {
                "extension of"
            } else {
                "request for"
            };
            let text = format!(
                ":ballot_box_with_check: {} approved {}'s {what} {} ({} of {})",
                rec.actor,
                g.user,
                g.what(),
                d.approvals,
                d.needed
            );
            detail.grant(&g);
            (Topic::Approve, text)
        }
        Action::Deny(d) => {
            let g = grant().await?;
            let reason = because(Some(&d.reason));
            let text = if rec.actor == SERVICE_ACTOR {
                format!(
                    ":no_entry: {}'s request for {} could not be activated after approval{reason}",
                    g.user,
                    g.what()
                )
            } else if rec.actor == g.user {
                format!(
                    ":no_entry: {} withdrew their request for {}{reason}",
                    g.user,
                    g.what()
                )
            } else {
                format!(
                    ":no_entry: {} denied {}'s request for {}{reason}",
                    rec.actor,
                    g.user,
                    g.what()
                )
            };
            detail.grant(&g);
            (Topic::Deny, text)
        }
        Action::RequestDenied(d) => {
            let step = d.step.map(|s| format!("/{s}")).unwrap_or_default();
            let text = format!(
                ":no_entry: the policy refused {}'s request for {}{step}{}",
                rec.actor,
                rec.subject,
                because(Some(&d.denied))
            );
            (Topic::Deny, text)
        }
        Action::Grant(granted) => {
            let g = grant().await?;
            let step = service.step_of(&g);
            let glass = step.as_ref().is_some_and(|s| s.break_glass);
            let principals = step.map(|s| s.principals).unwrap_or_default();
            let approved = match (&granted.by_rule, g.approvals.is_empty()) {
                (Some(rule), _) => format!("; {rule}"),
                (None, true) => String::new(),
                (None, false) => format!("; approved by {}", g.approvers().join(", ")),
            };
            // A window approved ahead is not held yet: when it opens, with the dates.
            let (holds, until) = match (g.start, g.end) {
                (Some(s), Some(e)) if s > rec.at => (
                    "will hold",
                    format!(" from {} until {}", dated(s), dated(e)),
                ),
                (_, Some(e)) => ("holds", format!(" (until {})", hhmm(e))),
                _ => ("holds", String::new()),
            };
            let holds = format!(
                "{} {holds} {} as {} for {}{until}{}{approved}",
                g.user,
                g.what(),
                principals.join(", "),
                format_duration(Duration::from_secs(g.ttl_secs)),
                because(g.reason.as_deref()),
            );
            detail.grant(&g);
            detail.add("principals", to_value(&principals));
            if glass {
                (
                    Topic::BreakGlass,
                    format!(":rotating_light: BREAK-GLASS: {holds}"),
                )
            } else {
                (Topic::Grant, format!(":key: {holds}"))
            }
        }
        Action::Revoke(d) => {
            let reason = because(Some(&d.reason));
            let scope = format!(
                "{}, {}",
                plural(d.grants.len(), "grant"),
                plural(d.serials.len(), "certificate")
            );
            let text = match rec.subject.split_once(':') {
                Some(("grant", id)) => match service.grant_record(id).await.ok().flatten() {
                    Some(g) => {
                        detail.grant(&g);
                        format!(
                            ":lock: {} revoked {}'s grant of {} ({id}){reason} ({scope})",
                            rec.actor,
                            g.user,
                            g.what()
                        )
                    }
                    None => format!(":lock: {} revoked grant {id}{reason} ({scope})", rec.actor),
                },
                Some(("user", u)) => format!(
                    ":lock: {} revoked everything {u} held{reason} ({scope})",
                    rec.actor
                ),
                Some(("serial", s)) => {
                    let owner = match s.parse() {
                        Ok(n) => service.cert_owner(n).await.ok().flatten(),
                        Err(_) => None,
                    }
                    .map(|user| format!(" of {user}"))
                    .unwrap_or_default();
                    format!(
                        ":lock: {} revoked certificate serial {s}{owner}{reason} ({scope})",
                        rec.actor
                    )
                }
                _ => format!(":lock: {} revoked {}{reason}", rec.actor, rec.subject),
            };
            (Topic::Revoke, text)
        }
        Action::SessionEnd(d) => (
            Topic::SessionCutOff,
            cut_off(service, rec, &mut detail, d.reason?).await,
        ),
        Action::SessionInterrupted(_) => (
            Topic::SessionCutOff,
            cut_off(service, rec, &mut detail, INTERRUPTED_REASON.into()).await,
        ),
        Action::SessionFlag(d) => {
            let f = &d.flag;
            let what = if f.blocked { "refused" } else { "flagged" };
            let text = format!(
                ":warning: {what} in {}'s session {} on {} (rule {}, {} at +{:.1}s): `{}` (`ramp-ca sessions show {}`)",
                rec.actor,
                rec.subject,
                d.target,
                esc(&f.rule),
                f.on.label(),
                f.at_ms as f64 / 1000.0,
                esc(&f.line),
                rec.subject
            );
            (Topic::RiskyCommand, text)
        }
        Action::SessionReview(d) if d.verdict == Verdict::Concern => {
            let text = format!(
                ":mag: {} has a concern about {}'s session {} on {}{}",
                rec.actor,
                d.user,
                rec.subject,
                d.target,
                because(Some(&d.note))
            );
            (Topic::ReviewConcern, text)
        }
        Action::ReviewOverdue(d) => {
            let text = format!(
                ":hourglass: the review of {}'s session {} on {} was due at {} ({}; `ramp-ca sessions review {}`)",
                d.user,
                rec.subject,
                d.target,
                hhmm(d.due),
                d.by.join(" or "),
                rec.subject
            );
            (Topic::ReviewOverdue, text)
        }
        _ => return None,
    };
    let payload = Payload {
        actor: rec.actor.clone(),
        at: rec.at,
        audit_seq: rec.seq,
        detail: detail.0,
        event: topic.label(),
        subject: rec.subject.clone(),
        text: text.clone(),
    };
    Some(Notice {
        topic,
        json: to_value(&payload),
        text,
    })
}

/// The line about a session the bastion cut off (`why`), with the session added to
/// `detail`.
async fn cut_off(service: &Service, rec: &AuditRecord, detail: &mut Detail, why: String) -> String {
    let s = service.session_record(&rec.subject).await.ok().flatten();
    let place = s
        .as_ref()
        .map(|s| format!(" on {}@{} (since {})", s.principal, s.target, hhmm(s.start)))
        .unwrap_or_default();
    if let Some(s) = s {
        let session = CutOffSession {
            client: s.client,
            end: s.end,
            id: s.id,
            kind: s.kind,
            principal: s.principal,
            start: s.start,
            target: s.target,
            user: s.user,
        };
        detail.add("session", to_value(&session));
    }
    detail.add("reason", Value::String(why.clone()));
    format!(
        ":scissors: the bastion cut off {}'s session{place}: {}",
        rec.actor,
        esc(&why)
    )
}

/// The event a kept checkpoint is: its text whole in `detail.checkpoint` (and in the Slack
/// line, as a code block), so a receiver holds a copy the ledger's writer cannot reach.
pub fn checkpoint_notice(signed: &Signed) -> Notice {
    let c = &signed.checkpoint;
    let text = signed.text();
    let line = format!(
        ":receipt: audit checkpoint: record {} of the audit chain, signed by {} (keep it; `ramp-ca audit verify --checkpoint FILE`)\n```\n{text}```",
        c.seq, c.signer
    );
    let detail = CheckpointDetail {
        checkpoint: text,
        hash: c.hash.clone(),
        seq: c.seq,
        signer: c.signer.clone(),
    };
    let payload = Payload {
        actor: SERVICE_ACTOR.into(),
        at: c.at,
        audit_seq: c.seq,
        detail: to_value(&detail),
        event: Topic::Checkpoint.label(),
        subject: "audit".into(),
        text: line.clone(),
    };
    Notice {
        topic: Topic::Checkpoint,
        json: to_value(&payload),
        text: line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slack_text_is_escaped() {
        assert_eq!(because(Some("a<b> & c")), ": a&lt;b&gt; &amp; c");
        assert_eq!(because(Some("  ")), "");
        assert_eq!(because(None), "");
    }
}
