//! News from the other nodes sharing the database: grants they wrote (a `sign --wait` here
//! may be waiting on one) and revocations they made (this node's bastion cuts the sessions
//! they end). A dedicated connection outside the pool `LISTEN`s on the ledger's channel and
//! reconnects by itself; whenever it was not listening, news may have been missed, so
//! waiters read again and watchdogs re-check ([`Feeds::missed`]). The watchdogs' periodic
//! re-check stays the backstop for anything lost in between.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio_postgres::AsyncMessage;

use super::ledger::CHANNEL;
use super::Pg;
use crate::store::Feeds;

/// How often the listening connection is asked whether it is still there: a silent network
/// is noticed within this (plus the answer's bound).
const PING_EVERY: Duration = Duration::from_secs(10);
/// How long a ping may take.
const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest wait between attempts to connect again.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Starts listening; the task runs until aborted.
pub(super) fn spawn(pg: &Pg, node: String, feeds: Arc<Feeds>) -> tokio::task::JoinHandle<()> {
    let config = pg.url.config.clone();
    let tls = pg.tls.clone();
    let hosts = pg.url.config.get_hosts().len().max(1) as u32;
    let bound = pg.url.connect_timeout * hosts;
    let target = pg.target().to_string();
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(250);
        loop {
            let listening = Listening {
                config: &config,
                tls: tls.clone(),
                bound,
                node: &node,
                feeds: &feeds,
            };
            match listening.run(&mut backoff).await {
                Ok(()) => {}
                Err(why) => {
                    tracing::warn!(%target, %why, retry_in = ?backoff, "not listening to the other nodes; connecting again")
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    })
}

/// One listening connection's life.
struct Listening<'a> {
    config: &'a tokio_postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    /// The bound on connecting.
    bound: Duration,
    node: &'a str,
    feeds: &'a Feeds,
}

impl Listening<'_> {
    /// Connects, listens, and hands on news until the connection fails (the reason).
    async fn run(self, backoff: &mut Duration) -> Result<(), String> {
        let (client, mut connection) =
            tokio::time::timeout(self.bound, self.config.connect(self.tls.clone()))
                .await
                .map_err(|_| format!("no connection within {:?}", self.bound))?
                .map_err(|e| e.to_string())?;
        let (tx, mut news) = tokio::sync::mpsc::unbounded_channel();
        // The connection delivers notifications only while it is polled for them.
        let driver = tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(m) = messages.next().await {
                match m {
                    Ok(AsyncMessage::Notification(n)) => {
                        let _ = tx.send(Ok(n.payload().to_string()));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        return;
                    }
                }
            }
            let _ = tx.send(Err("the server closed the connection".into()));
        });
        let _stop_driver = AbortOnDrop(driver);
        client
            .batch_execute(&format!("LISTEN {CHANNEL}"))
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!("listening to the other nodes");
        *backoff = Duration::from_millis(250);
        // Whatever happened while nobody listened.
        self.feeds.missed();
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        loop {
            tokio::select! {
                got = news.recv() => match got {
                    Some(Ok(payload)) => self.hand_on(&payload),
                    Some(Err(e)) => return Err(e),
                    None => return Err("the connection's task ended".into()),
                },
                _ = ping.tick() => {
                    match tokio::time::timeout(PING_TIMEOUT, client.simple_query("SELECT 1")).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return Err(e.to_string()),
                        Err(_) => return Err(format!("no answer to a ping within {PING_TIMEOUT:?}")),
                    }
                }
            }
        }
    }

    /// `NODE g GRANT-ID` or `NODE r`, from another node.
    fn hand_on(&self, payload: &str) {
        let mut words = payload.splitn(3, ' ');
        let (Some(node), Some(what)) = (words.next(), words.next()) else {
            return;
        };
        if node == self.node {
            return;
        }
        match (what, words.next()) {
            ("g", Some(id)) => self.feeds.grants_written(&[id.to_string()]),
            ("r", None) => self.feeds.revocation(),
            _ => tracing::debug!(%payload, "unknown news from another node"),
        }
    }
}

/// Stops the connection's task with the listening that started it.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
