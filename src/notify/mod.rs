//! Webhooks: the audit records people act on (requests waiting for approval, approvals,
//! denials, grants, break-glass grants, revocations, sessions the bastion cut off), and the
//! signed checkpoints of the audit chain (so a receiver keeps a copy off this machine),
//! posted as Slack-compatible or plain JSON to the receivers in the service config.
//!
//! Off every request's path: the notifier follows the audit stream
//! (`Service::subscribe_audit`), turns the records people act on into [`Notice`]s from their
//! typed actions ([`notice`]), and queues each for each receiver that wants it. Every receiver has its own bounded queue and one worker that posts in order,
//! retrying with backoff, so a receiver that fails or hangs delays only its own events, and
//! a full queue drops (and counts) events rather than hold anything up.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;

use crate::checkpoint::Signed;
use crate::domain::audit::AuditRecord;
use crate::domain::Vocabulary;
use crate::metrics::{Delivery, Metrics};
use crate::service::Service;
use crate::wire::webhook::Topic;

mod notice;

pub use self::notice::{checkpoint_notice, notice, Notice};

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
    pub events: Option<Vec<Topic>>,
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

fn event_list<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Topic>>, D::Error> {
    let list = Option::<Vec<Topic>>::deserialize(d)?;
    if list.as_ref().is_some_and(|l| l.is_empty()) {
        return Err(serde::de::Error::custom(
            "events is an empty list; leave `events` out to get every event",
        ));
    }
    Ok(list)
}

impl Webhook {
    fn wants(&self, topic: Topic) -> bool {
        self.events.as_ref().is_none_or(|l| l.contains(&topic))
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
        let feed = service.subscribe_audit();
        let checkpoints = service.subscribe_checkpoints();
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
                service.metrics().clone(),
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
            if !hook.wants(notice.topic) {
                continue;
            }
            if tx.try_send(notice.clone()).is_err() {
                service.metrics().webhook(Delivery::Dropped);
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
                    if let Err(e) = service.on_disk().await {
                        tracing::error!(error = %e, dropped = batch.len(), "cannot sync the ledger; these records are not announced");
                        continue;
                    }
                    for rec in batch {
                        dispatch(notice(&service, &rec).await);
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
        dispatch(notice(&service, &rec).await);
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
        tracing::debug!(url = %hook.shown(), event = notice.topic.label(), attempt = attempt + 1, error = %last, "webhook attempt failed");
    }
    tracing::warn!(url = %hook.shown(), event = notice.topic.label(), error = %last, "webhook not delivered");
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
        assert!(ok[0].wants(Topic::BreakGlass) && !ok[0].wants(Topic::Grant));
        assert_eq!(ok[1].format, Format::Json);
        assert!(ok[1].wants(Topic::Revoke), "every event by default");
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
}
