//! Webhooks: the audit records people act on (requests waiting for approval, approvals,
//! denials, grants, break-glass grants, revocations, sessions the bastion cut off), and the
//! signed checkpoints of the audit chain (so a receiver keeps a copy off this machine),
//! posted as Slack-compatible or plain JSON to the receivers in the service config.
//!
//! Off every request's path: the notifier follows the audit stream
//! ([`crate::store::Store::subscribe_audit`]) and queues each event for each receiver that
//! wants it. Every receiver has its own bounded queue and one worker that posts in order,
//! retrying with backoff, so a receiver that fails or hangs delays only its own events, and
//! a full queue drops (and counts) events rather than hold anything up.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;

use crate::checkpoint::Signed;
use crate::grant::Grant;
use crate::metrics::{Delivery, Metrics};
use crate::policy::format_duration;
use crate::service::Service;
use crate::store::{AuditRecord, SESSION_END, SESSION_INTERRUPTED};

/// Events one receiver may have waiting; past it new ones are dropped and counted.
pub const QUEUE: usize = 1024;
/// How long one attempt may take, connecting included.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// The waits before the second, third and fourth attempts.
pub const BACKOFF: [Duration; 3] = [
    Duration::from_millis(500),
    Duration::from_secs(2),
    Duration::from_secs(8),
];

/// One receiver, as the service config (`webhooks:`) gives it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    /// Where events are POSTed: an http:// or https:// URL.
    #[serde(deserialize_with = "http_url")]
    pub url: String,
    /// The body's shape (default `json`).
    #[serde(default)]
    pub format: Format,
    /// The events it wants; every event when left out.
    #[serde(default, deserialize_with = "event_list")]
    pub events: Option<Vec<Kind>>,
}

/// The body of a post.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// `{"event", "at", "actor", "subject", "detail", "audit_seq", "text"}`.
    #[default]
    Json,
    /// `{"text": "<one readable line>"}`, for Slack incoming webhooks and look-alikes.
    Slack,
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// A request waiting for approval.
    Request,
    /// One approval of a request.
    Approve,
    /// A request denied by a person, withdrawn, or refused by the policy.
    Deny,
    /// A grant became active (on request or at its last approval).
    Grant,
    /// A grant of a break-glass step became active (instead of `grant`).
    BreakGlass,
    /// A revocation.
    Revoke,
    /// The bastion ended a session: expiry, revocation, removal from the policies, full
    /// recording disk, shutdown, or a crash found at the next start.
    SessionCutOff,
    /// A signed checkpoint of the audit chain, carried whole.
    Checkpoint,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Request => "request",
            Kind::Approve => "approve",
            Kind::Deny => "deny",
            Kind::Grant => "grant",
            Kind::BreakGlass => "break-glass",
            Kind::Revoke => "revoke",
            Kind::SessionCutOff => "session-cut-off",
            Kind::Checkpoint => "checkpoint",
        }
    }
}

fn http_url<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let text = String::deserialize(d)?;
    match reqwest::Url::parse(&text) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(text),
        Ok(_) => Err(serde::de::Error::custom(format!(
            "url `{text}` is not an http:// or https:// URL"
        ))),
        Err(e) => Err(serde::de::Error::custom(format!(
            "url `{text}` is not a URL ({e}); write one like https://hooks.slack.com/services/..."
        ))),
    }
}

fn event_list<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Kind>>, D::Error> {
    let list = Option::<Vec<Kind>>::deserialize(d)?;
    if list.as_ref().is_some_and(|l| l.is_empty()) {
        return Err(serde::de::Error::custom(
            "events is an empty list; leave `events` out to get every event",
        ));
    }
    Ok(list)
}

impl Webhook {
    fn wants(&self, kind: Kind) -> bool {
        self.events.as_ref().is_none_or(|l| l.contains(&kind))
    }

    /// The URL without its path and query, which often carry a secret (Slack's do).
    fn shown(&self) -> String {
        match reqwest::Url::parse(&self.url) {
            Ok(u) => format!(
                "{}://{}{}/...",
                u.scheme(),
                u.host_str().unwrap_or("?"),
                u.port().map(|p| format!(":{p}")).unwrap_or_default()
            ),
            Err(_) => "(bad url)".into(),
        }
    }
}

/// An event ready to post, in both shapes.
#[derive(Debug, Clone)]
pub struct Notice {
    pub kind: Kind,
    /// The plain JSON body.
    pub json: Value,
    /// The one line a person reads (Slack's `text`).
    pub text: String,
}

impl Notice {
    fn body(&self, format: Format) -> Vec<u8> {
        let v = match format {
            Format::Json => &self.json,
            Format::Slack => &json!({ "text": self.text }),
        };
        serde_json::to_vec(v).expect("json values serialise")
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

/// `: reason` when there is one.
fn because(reason: Option<&str>) -> String {
    reason
        .filter(|r| !r.trim().is_empty())
        .map(|r| format!(": {}", esc(r)))
        .unwrap_or_default()
}

fn what(g: &Grant) -> String {
    format!("{}/{}", g.contract, g.step)
}

/// The event an audit record is, if it is one, with what people need to read it: the grant
/// or session it concerns is looked up and added to `detail`.
pub fn notice(service: &Service, rec: &AuditRecord) -> Option<Notice> {
    let d = &rec.detail;
    let grant = || service.store.grant(&rec.subject).ok().flatten();
    let mut detail = d.clone();
    let mut add = |key: &str, v: Value| {
        if let Some(map) = detail.as_object_mut() {
            map.insert(key.into(), v);
        }
    };
    let (kind, text) = match rec.action.as_str() {
        "request" if d["needs_approvals"].as_u64().unwrap_or(0) > 0 => {
            let g = grant()?;
            let n = g.approvals_needed;
            let text = format!(
                ":unlock: {} requested {} for {}{} (needs {n} approval{} from {}; `ramp-ca approve {}`)",
                g.user,
                what(&g),
                format_duration(Duration::from_secs(g.ttl_secs)),
                because(g.reason.as_deref()),
                if n == 1 { "" } else { "s" },
                g.approvals_from.join(" or "),
                g.id
            );
            add("grant", json!(g));
            (Kind::Request, text)
        }
        "approve" => {
            let g = grant()?;
            let text = format!(
                ":ballot_box_with_check: {} approved {}'s request for {} ({} of {})",
                rec.actor,
                g.user,
                what(&g),
                d["approvals"].as_u64().unwrap_or(0),
                g.approvals_needed
            );
            add("grant", json!(g));
            (Kind::Approve, text)
        }
        "deny" => {
            let g = grant()?;
            let reason = because(d["reason"].as_str());
            let text = if rec.actor == "ramp-ca" {
                format!(
                    ":no_entry: {}'s request for {} could not be activated after approval{reason}",
                    g.user,
                    what(&g)
                )
            } else if rec.actor == g.user {
                format!(
                    ":no_entry: {} withdrew their request for {}{reason}",
                    g.user,
                    what(&g)
                )
            } else {
                format!(
                    ":no_entry: {} denied {}'s request for {}{reason}",
                    rec.actor,
                    g.user,
                    what(&g)
                )
            };
            add("grant", json!(g));
            (Kind::Deny, text)
        }
        "request-denied" => {
            let step = d["step"]
                .as_str()
                .map(|s| format!("/{s}"))
                .unwrap_or_default();
            let text = format!(
                ":no_entry: the policy refused {}'s request for {}{step}{}",
                rec.actor,
                rec.subject,
                because(d["denied"].as_str())
            );
            (Kind::Deny, text)
        }
        "grant" => {
            let g = grant()?;
            let step = service
                .policies()
                .contracts
                .get(&g.contract)
                .and_then(|c| c.step(&g.step))
                .cloned();
            let glass = step.as_ref().is_some_and(|s| s.break_glass);
            let principals = step.map(|s| s.principals).unwrap_or_default();
            let approved = if g.approvals.is_empty() {
                String::new()
            } else {
                format!("; approved by {}", g.approvers().join(", "))
            };
            let until = g
                .end
                .map(|e| format!(" (until {})", hhmm(e)))
                .unwrap_or_default();
            let holds = format!(
                "{} holds {} as {} for {}{until}{}{approved}",
                g.user,
                what(&g),
                principals.join(", "),
                format_duration(Duration::from_secs(g.ttl_secs)),
                because(g.reason.as_deref()),
            );
            add("grant", json!(g));
            add("principals", json!(principals));
            if glass {
                (
                    Kind::BreakGlass,
                    format!(":rotating_light: BREAK-GLASS: {holds}"),
                )
            } else {
                (Kind::Grant, format!(":key: {holds}"))
            }
        }
        "revoke" => {
            let reason = because(d["reason"].as_str());
            let certs = d["serials"].as_array().map_or(0, |a| a.len());
            let grants = d["grants"].as_array().map_or(0, |a| a.len());
            let scope = format!(
                "{grants} grant{}, {certs} certificate{}",
                if grants == 1 { "" } else { "s" },
                if certs == 1 { "" } else { "s" }
            );
            let text = match rec.subject.split_once(':') {
                Some(("grant", id)) => match service.store.grant(id).ok().flatten() {
                    Some(g) => {
                        let t = format!(
                            ":lock: {} revoked {}'s grant of {} ({id}){reason} ({scope})",
                            rec.actor,
                            g.user,
                            what(&g)
                        );
                        add("grant", json!(g));
                        t
                    }
                    None => format!(":lock: {} revoked grant {id}{reason} ({scope})", rec.actor),
                },
                Some(("user", u)) => {
                    format!(
                        ":lock: {} revoked everything {u} held{reason} ({scope})",
                        rec.actor
                    )
                }
                Some(("serial", s)) => {
                    let owner = s
                        .parse()
                        .ok()
                        .and_then(|n| service.store.cert(n).ok().flatten())
                        .map(|c| format!(" of {}", c.user))
                        .unwrap_or_default();
                    format!(
                        ":lock: {} revoked certificate serial {s}{owner}{reason} ({scope})",
                        rec.actor
                    )
                }
                _ => format!(":lock: {} revoked {}{reason}", rec.actor, rec.subject),
            };
            (Kind::Revoke, text)
        }
        SESSION_END | SESSION_INTERRUPTED => {
            let why = match rec.action.as_str() {
                SESSION_END => d["reason"].as_str()?.to_string(),
                _ => "the bastion stopped without ending the session (crash or kill -9)".into(),
            };
            let s = service.store.session(&rec.subject).ok().flatten();
            let place = s
                .as_ref()
                .map(|s| format!(" on {}@{} (since {})", s.principal, s.target, hhmm(s.start)))
                .unwrap_or_default();
            if let Some(s) = &s {
                add(
                    "session",
                    json!({"id": s.id, "user": s.user, "principal": s.principal, "target": s.target,
                           "client": s.client, "kind": s.kind, "start": s.start, "end": s.end}),
                );
            }
            add("reason", json!(why));
            let text = format!(
                ":scissors: the bastion cut off {}'s session{place}: {}",
                rec.actor,
                esc(&why)
            );
            (Kind::SessionCutOff, text)
        }
        _ => return None,
    };
    let json = json!({
        "event": kind.as_str(),
        "at": rec.at,
        "actor": rec.actor,
        "subject": rec.subject,
        "detail": detail,
        "audit_seq": rec.seq,
        "text": text,
    });
    Some(Notice { kind, json, text })
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
    let json = json!({
        "event": Kind::Checkpoint.as_str(),
        "at": c.at,
        "actor": "ramp-ca",
        "subject": "audit",
        "detail": {"seq": c.seq, "hash": c.hash, "signer": c.signer, "checkpoint": text},
        "audit_seq": c.seq,
        "text": line,
    });
    Notice {
        kind: Kind::Checkpoint,
        json,
        text: line,
    }
}

/// The running notifier: the audit follower and one worker per receiver.
pub struct Notifier {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Notifier {
    /// Starts following the audit stream (from now on) for `hooks`; `None` without hooks.
    pub fn start(service: Arc<Service>, hooks: &[Webhook]) -> Option<Notifier> {
        if hooks.is_empty() {
            return None;
        }
        let client = reqwest::Client::builder()
            .timeout(ATTEMPT_TIMEOUT)
            .connect_timeout(ATTEMPT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("ramp-ca/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| tracing::error!(error = %e, "webhooks disabled: cannot set up HTTP"))
            .ok()?;
        let feed = service.store.subscribe_audit();
        let checkpoints = service.store.checkpoints.subscribe();
        let (stop, stopped) = watch::channel(false);
        let mut queues = Vec::new();
        let mut tasks = Vec::new();
        for hook in hooks {
            let (tx, rx) = mpsc::channel(QUEUE);
            queues.push((hook.clone(), tx, Dropping::default()));
            tasks.push(tokio::spawn(deliver_all(
                client.clone(),
                hook.clone(),
                rx,
                service.metrics.clone(),
            )));
        }
        tracing::info!(receivers = hooks.len(), "webhooks on");
        tasks.push(tokio::spawn(follow(
            service,
            feed,
            checkpoints,
            queues,
            stopped,
        )));
        Some(Notifier { stop, tasks })
    }

    /// Stops following the audit stream and gives the workers up to `within` to post what
    /// is queued; what is left then is dropped (and logged).
    pub async fn stop(self, within: Duration) {
        let _ = self.stop.send(true);
        let deadline = tokio::time::Instant::now() + within;
        let mut unfinished = 0;
        // The follower first: it closes the queues the workers finish on.
        for task in self.tasks.into_iter().rev() {
            let abort = task.abort_handle();
            if tokio::time::timeout_at(deadline, task).await.is_err() {
                abort.abort();
                unfinished += 1;
            }
        }
        if unfinished > 0 {
            tracing::warn!(
                receivers = unfinished,
                "webhook events still queued at stop were not delivered"
            );
        }
    }
}

/// Drop bookkeeping for one queue: log a full queue at most every 10 s, with the count.
#[derive(Default)]
struct Dropping {
    since_log: u64,
    logged: Option<tokio::time::Instant>,
}

/// Turns audit records and kept checkpoints into notices and queues them for the receivers
/// that want them, until `stop`; then queues what was already committed and closes the
/// queues.
async fn follow(
    service: Arc<Service>,
    mut feed: broadcast::Receiver<AuditRecord>,
    mut checkpoints: broadcast::Receiver<Signed>,
    mut queues: Vec<(Webhook, mpsc::Sender<Arc<Notice>>, Dropping)>,
    mut stop: watch::Receiver<bool>,
) {
    let mut dispatch = |notice: Option<Notice>| {
        let Some(notice) = notice else {
            return;
        };
        let notice = Arc::new(notice);
        for (hook, tx, dropping) in &mut queues {
            if !hook.wants(notice.kind) {
                continue;
            }
            if tx.try_send(notice.clone()).is_err() {
                service.metrics.webhook(Delivery::Dropped);
                dropping.since_log += 1;
                let now = tokio::time::Instant::now();
                if dropping
                    .logged
                    .is_none_or(|t| now - t >= Duration::from_secs(10))
                {
                    tracing::warn!(url = %hook.shown(), dropped = dropping.since_log, "webhook queue full; dropping events");
                    dropping.since_log = 0;
                    dropping.logged = Some(now);
                }
            }
        }
    };
    loop {
        tokio::select! {
            got = feed.recv() => match got {
                Ok(rec) => {
                    // Records are broadcast once committed, before the disk flush: announce
                    // only what is on disk, so a crash cannot leave a notice of a lost record.
                    let mut batch = vec![rec];
                    while let Ok(more) = feed.try_recv() {
                        batch.push(more);
                    }
                    if let Err(e) = service.store.durable().await {
                        tracing::error!(error = %e, dropped = batch.len(), "cannot sync the ledger; these records are not announced");
                        continue;
                    }
                    for rec in batch {
                        dispatch(notice(&service, &rec));
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "webhooks fell behind the audit log; some events were not sent");
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            // Checkpoints are kept on disk before they are broadcast.
            got = checkpoints.recv() => match got {
                Ok(c) => dispatch(Some(checkpoint_notice(&c))),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "webhooks fell behind the audit checkpoints; some were not sent");
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = stop.changed() => break,
        }
    }
    while let Ok(rec) = feed.try_recv() {
        dispatch(notice(&service, &rec));
    }
    while let Ok(c) = checkpoints.try_recv() {
        dispatch(Some(checkpoint_notice(&c)));
    }
}

/// Posts one receiver's events in order until its queue closes.
async fn deliver_all(
    client: reqwest::Client,
    hook: Webhook,
    mut queue: mpsc::Receiver<Arc<Notice>>,
    metrics: Arc<Metrics>,
) {
    while let Some(notice) = queue.recv().await {
        let outcome = deliver(&client, &hook, &notice).await;
        metrics.webhook(outcome);
    }
}

/// One event to one receiver: the first attempt at once, then one after each [`BACKOFF`]
/// wait. A 2xx answer is success; another 4xx but 408 and 429 will not change, so it is not
/// retried.
async fn deliver(client: &reqwest::Client, hook: &Webhook, notice: &Notice) -> Delivery {
    let body = notice.body(hook.format);
    let mut last = String::new();
    let waits = std::iter::once(Duration::ZERO).chain(BACKOFF);
    for (attempt, wait) in waits.enumerate() {
        tokio::time::sleep(wait).await;
        let sent = client
            .post(&hook.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.clone())
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => return Delivery::Ok,
            Ok(r) => {
                let status = r.status();
                last = format!("answered {status}");
                let lasting = status.is_client_error()
                    && status != reqwest::StatusCode::REQUEST_TIMEOUT
                    && status != reqwest::StatusCode::TOO_MANY_REQUESTS;
                if lasting {
                    break;
                }
            }
            Err(e) if e.is_timeout() => last = format!("no answer within {ATTEMPT_TIMEOUT:?}"),
            Err(e) => last = format!("cannot post: {e}"),
        }
        tracing::debug!(url = %hook.shown(), event = notice.kind.as_str(), attempt = attempt + 1, error = %last, "webhook attempt failed");
    }
    tracing::warn!(url = %hook.shown(), event = notice.kind.as_str(), error = %last, "webhook not delivered");
    Delivery::Failed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Hooks {
        webhooks: Vec<Webhook>,
    }

    fn parse(yaml: &str) -> Result<Vec<Webhook>, String> {
        serde_yaml::from_str::<Hooks>(yaml)
            .map(|h| h.webhooks)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn webhook_config_is_checked_field_by_field() {
        let ok = parse(
            "webhooks:\n  - url: https://hooks.example.com/T/B/x\n    format: slack\n    events: [request, break-glass, session-cut-off]\n  - url: http://127.0.0.1:9000/hook\n",
        )
        .unwrap();
        assert_eq!(ok[0].format, Format::Slack);
        assert!(ok[0].wants(Kind::BreakGlass) && !ok[0].wants(Kind::Grant));
        assert_eq!(ok[1].format, Format::Json);
        assert!(ok[1].wants(Kind::Revoke), "every event by default");
        assert_eq!(ok[0].shown(), "https://hooks.example.com/...");
        let check = |yaml: &str, want: &[&str]| {
            let err = parse(yaml).unwrap_err();
            for w in want {
                assert!(err.contains(w), "{err:?} should mention {w:?}");
            }
        };
        check(
            "webhooks:\n  - url: ftp://x/y\n",
            &[
                "webhooks[0]: url `ftp://x/y` is not an http:// or https:// URL",
                "line 2",
            ],
        );
        check(
            "webhooks:\n  - url: hooks\n",
            &["webhooks[0]: url `hooks` is not a URL"],
        );
        check(
            "webhooks:\n  - url: http://h/\n    format: xml\n",
            &["webhooks[0].format", "unknown variant `xml`", "slack"],
        );
        check(
            "webhooks:\n  - url: http://h/\n    events: [request, aproved]\n",
            &[
                "webhooks[0].events[1]",
                "unknown variant `aproved`",
                "break-glass",
            ],
        );
        check(
            "webhooks:\n  - url: http://h/\n    events: []\n",
            &["empty"],
        );
        check(
            "webhooks:\n  - url: http://h/\n    retries: 3\n",
            &["unknown field `retries`"],
        );
    }

    #[test]
    fn slack_text_is_escaped() {
        assert_eq!(because(Some("a<b> & c")), ": a&lt;b&gt; &amp; c");
        assert_eq!(because(Some("  ")), "");
        assert_eq!(because(None), "");
    }
}
