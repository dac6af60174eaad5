//! The bastion: a russh server that lets in ramp-ca user certificates only, hops to the
//! target with its own node-ca certificate, records every channel, and cuts connections off
//! at expiry or revocation.
//!
//! The russh `Handler` (`handler`) is a thin adapter: authentication asks the service
//! (`Service::check_login`), each channel becomes a task in [`proxy`], each connection gets
//! a `watchdog` that decides when it ends. [`run`] recovers what a crash left, sets the
//! server up, accepts until the shutdown future fires, then drains.

mod files;
mod handler;
pub mod proxy;
mod upstream;
mod watchdog;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use russh::keys::ssh_key::Fingerprint;
use russh::server;
use russh::{MethodKind, MethodSet};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::limits::{self, Gate, Limits, Rate};
use crate::recordings::writer::Recorders;
use crate::service::Service;

use self::handler::ConnHandler;
pub use self::upstream::Upstream;

/// Key exchanges the bastion offers its clients and its targets, best first: the post-quantum
/// hybrid ML-KEM-768 + X25519 (OpenSSH 9.9 and later), then curve25519-sha256 for older
/// OpenSSH (russh has no sntrup761x25519, the hybrid OpenSSH 9.0 to 9.8 prefer). Named here, not
/// left to russh's defaults, so an upgrade cannot drop the post-quantum one unnoticed. The
/// last four are not key exchanges but flags in the same list: extension negotiation and
/// strict kex (the Terrapin fix), which russh only uses when they are listed.
pub const KEX_ORDER: &[russh::kex::Name] = &[
    russh::kex::MLKEM768X25519_SHA256,
    russh::kex::CURVE25519,
    russh::kex::CURVE25519_PRE_RFC_8731,
    russh::kex::DH_GEX_SHA256,
    russh::kex::DH_G18_SHA512,
    russh::kex::DH_G17_SHA512,
    russh::kex::DH_G16_SHA512,
    russh::kex::DH_G15_SHA512,
    russh::kex::DH_G14_SHA256,
    russh::kex::EXTENSION_SUPPORT_AS_CLIENT,
    russh::kex::EXTENSION_SUPPORT_AS_SERVER,
    russh::kex::EXTENSION_OPENSSH_STRICT_KEX_AS_CLIENT,
    russh::kex::EXTENSION_OPENSSH_STRICT_KEX_AS_SERVER,
];

/// Connections served at once; more wait in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = 2048;

/// A connection must log in within this long, so idle sockets cannot hold every slot.
pub const LOGIN_GRACE: Duration = Duration::from_secs(60);

/// A client must send its SSH version line within this long of connecting; real clients send
/// it at once, so a socket that stays silent is let go well before [`LOGIN_GRACE`].
pub const VERSION_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections that have not logged in yet, from everyone (OpenSSH's MaxStartups, without the
/// random early drop); past it new connections are dropped at once.
pub const MAX_UNAUTHENTICATED: usize = 256;

/// Connections that have not logged in yet from one source, an IPv4 address or an IPv6 /64
/// (OpenSSH's PerSourceMaxStartups). Above the 50 logins `scripts/bench` starts at once from
/// one host; a team behind one NAT address shares it.
pub const MAX_UNAUTHENTICATED_PER_SOURCE: usize = 64;

/// Each source's budget of connections that never log in: a new connection takes a token and
/// a login gives it back, so logins are never throttled however fast they come, while
/// scanners, floods and clients that keep failing are held to 20 a second after a burst of
/// 128 (each costs a key exchange). Past it new connections are dropped at once.
pub const UNAUTHENTICATED_RATE: Rate = Rate {
    burst: 128,
    per_second: 20,
};

/// Sources the rate limit remembers at most (a quiet source is forgotten once its budget is
/// full again); a new source past it is held back by [`MAX_UNAUTHENTICATED`] only.
pub const MAX_TRACKED_SOURCES: usize = 10_000;

/// Channels (sessions, forwards) one connection may have open at once, as OpenSSH's
/// `MaxSessions`: each holds read-ahead buffers, so a connection of stalled channels stays small.
pub const MAX_CHANNELS: usize = 10;

/// Connections one user may have through the bastion at once unless the config says
/// otherwise (`bastion: {max_connections_per_user: N}`): one grant holder cannot take every
/// connection slot, and with [`MAX_CHANNELS`] bounds the russh queues they can fill.
pub const MAX_CONNECTIONS_PER_USER: usize = 32;

/// Bastion settings from the config file.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Connections one user may have at once ([`MAX_CONNECTIONS_PER_USER`]).
    #[serde(default = "default_max_connections_per_user")]
    pub max_connections_per_user: usize,
}

fn default_max_connections_per_user() -> usize {
    MAX_CONNECTIONS_PER_USER
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            max_connections_per_user: MAX_CONNECTIONS_PER_USER,
        }
    }
}

/// How long the Handler waits for the target to answer a channel request before it answers
/// the client with a failure and closes the channel.
pub const TARGET_ANSWER: Duration = Duration::from_secs(10);

/// What every connection shares.
pub struct Bastion {
    pub service: Arc<Service>,
    pub recorders: Arc<Recorders>,
    /// Connections logged in, by user.
    users: std::sync::Mutex<std::collections::HashMap<String, usize>>,
    settings: Settings,
    /// The CA whose host certificates targets present.
    host_ca: Fingerprint,
}

/// Serves the bastion on an already-bound listener until `shutdown`, then ends every
/// session with a message and flushes the recordings.
pub async fn run(
    listener: TcpListener,
    service: Arc<Service>,
    recorders: Arc<Recorders>,
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    recover(&service).await?;
    let config = server_config(&service);
    let (stop_tx, stop_rx) = watch::channel(false);
    // The flusher stops last, after the sessions have written their ends.
    let (flush_stop_tx, flush_stop_rx) = watch::channel(false);
    let flusher = tokio::spawn(recorders.clone().run(flush_stop_rx));
    let bastion = Arc::new(Bastion {
        host_ca: service.host_ca(),
        service,
        recorders,
        users: std::sync::Mutex::new(std::collections::HashMap::new()),
        settings,
    });
    tokio::spawn(act_on_stop_orders(bastion.clone(), stop_rx.clone()));
    accept(&listener, &bastion, config, &stop_rx, shutdown).await;
    let _ = stop_tx.send(true);
    drain(&bastion).await;
    let _ = flush_stop_tx.send(true);
    let _ = flusher.await;
    Ok(())
}

/// Ends the sessions someone ended (`sessions end`, the dashboard) that run here: the
/// orders travel as revocations, so this wakes on every revocation, from any node, and
/// whenever news may have been missed.
async fn act_on_stop_orders(bastion: Arc<Bastion>, mut stop: watch::Receiver<bool>) {
    let mut news = bastion.service.revocations();
    loop {
        tokio::select! {
            changed = news.changed() => if changed.is_err() { return },
            _ = stop.changed() => return,
        }
        let orders = match bastion.service.stop_orders(Utc::now()).await {
            Ok(orders) => orders,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the orders to end sessions");
                continue;
            }
        };
        for order in orders {
            bastion.recorders.stop(&order.session, order.told);
        }
    }
}

/// Seals and audits (`session-interrupted`) the sessions a crash left live.
async fn recover(service: &Arc<Service>) -> std::io::Result<()> {
    let interrupted = service
        .recover_interrupted(Utc::now())
        .await
        .map_err(std::io::Error::other)?;
    for s in &interrupted {
        tracing::warn!(session = %s.id, user = %s.user, target = %s.target, "session was interrupted by a crash");
    }
    Ok(())
}

/// The SSH server's settings: public keys only, the bastion's host key and certificate,
/// our key exchanges, short refusals.
fn server_config(service: &Service) -> Arc<server::Config> {
    let mut methods = MethodSet::empty();
    methods.push(MethodKind::PublicKey);
    let (host_key, host_cert) = service.bastion_identity();
    Arc::new(server::Config {
        methods,
        keys: vec![host_key],
        certificates: host_cert.into_iter().collect(),
        // OpenSSH probes with "none" first; answering it at once saves a second per login.
        // OpenSSH offers the plain key beside the certificate, often first; its refusal is held
        // this long before the certificate is tried, so it is short (refusals here do not
        // depend on secrets, so a long constant time buys nothing).
        auth_rejection_time: Duration::from_millis(20),
        auth_rejection_time_initial: Some(Duration::ZERO),
        max_auth_attempts: 6,
        inactivity_timeout: Some(Duration::from_secs(3600)),
        keepalive_interval: Some(Duration::from_secs(30)),
        nodelay: true,
        window_size: 8 * 1024 * 1024,
        // Messages russh queues per channel before its connection loop waits (default 100):
        // the read-ahead empties it at once, so a few messages do (see proxy::RUSSH_CHANNEL_QUEUE).
        channel_buffer_size: proxy::RUSSH_CHANNEL_QUEUE,
        preferred: russh::Preferred {
            kex: std::borrow::Cow::Borrowed(KEX_ORDER),
            ..russh::Preferred::default()
        },
        ..server::Config::default()
    })
}

/// Accepts connections until `shutdown`, each served by its own task with a
/// [`ConnHandler`]; connections not logged in are bounded by the [`Gate`].
async fn accept(
    listener: &TcpListener,
    bastion: &Arc<Bastion>,
    config: Arc<server::Config>,
    stop_rx: &watch::Receiver<bool>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let gate = Gate::new(Limits {
        what: "connections not logged in",
        total: MAX_UNAUTHENTICATED,
        per_source: MAX_UNAUTHENTICATED_PER_SOURCE,
        rate: Some(UNAUTHENTICATED_RATE),
        max_sources: MAX_TRACKED_SOURCES,
    });
    tokio::pin!(shutdown);
    // Lines before the version string are allowed (RFC 4253 4.2); `ssh -v` shows them.
    let refuse = |socket: tokio::net::TcpStream, turned: &limits::TurnedAway| {
        let _ = socket.try_write(format!("ramp-ca: {turned}\r\n").as_bytes());
    };
    while let Some((socket, peer, admission)) =
        limits::accept("bastion", listener, &gate, &mut shutdown, refuse).await
    {
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "too many connections; dropping");
            continue;
        };
        let _ = socket.set_nodelay(true);
        let grace_ends = tokio::time::Instant::now() + LOGIN_GRACE;
        let logged_in = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let handler = ConnHandler::new(
            bastion.clone(),
            peer,
            stop_rx.clone(),
            logged_in.clone(),
            admission,
        );
        let config = config.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            // russh waits for the version line without a deadline of its own.
            let version_by = tokio::time::Instant::now() + VERSION_TIMEOUT;
            let setup = tokio::time::timeout_at(
                version_by.min(grace_ends),
                server::run_stream(config, socket, handler),
            );
            let session = match setup.await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "connection setup failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "no SSH version line in time");
                    return;
                }
            };
            let handle = session.handle();
            let grace = handle.clone();
            tokio::spawn(async move {
                tokio::time::sleep_until(grace_ends).await;
                if !logged_in.load(std::sync::atomic::Ordering::SeqCst) {
                    let _ = grace
                        .disconnect(
                            russh::Disconnect::ByApplication,
                            "login grace time exceeded".into(),
                            String::new(),
                        )
                        .await;
                }
            });
            tokio::select! {
                result = session => {
                    if let Err(e) = result {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                }
                _ = stop.changed() => {
                    // Give the channel tasks a moment to tell their users why.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let _ = handle.disconnect(russh::Disconnect::ByApplication, "ramp-ca bastion shutting down".into(), String::new()).await;
                }
            }
        });
    }
}

/// Sessions tell their users and finish their recordings, bounded by a short grace.
async fn drain(bastion: &Bastion) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while !bastion.recorders.live().is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::KEX_ORDER;
    use russh::kex;

    /// Extension negotiation and strict kex: flags in the key exchange list, not key exchanges.
    const FLAGS: [kex::Name; 4] = [
        kex::EXTENSION_SUPPORT_AS_CLIENT,
        kex::EXTENSION_SUPPORT_AS_SERVER,
        kex::EXTENSION_OPENSSH_STRICT_KEX_AS_CLIENT,
        kex::EXTENSION_OPENSSH_STRICT_KEX_AS_SERVER,
    ];

    #[test]
    fn kex_order_offers_post_quantum_first_then_curve25519_and_keeps_strict_kex() {
        assert_eq!(
            KEX_ORDER[..2],
            [kex::MLKEM768X25519_SHA256, kex::CURVE25519]
        );
        for flag in &FLAGS {
            assert!(KEX_ORDER.contains(flag), "{flag:?} missing");
        }
        for name in KEX_ORDER.iter().filter(|n| !FLAGS.contains(n)) {
            assert!(
                kex::ALL_KEX_ALGORITHMS.contains(&name),
                "russh has no {name:?}"
            );
        }
    }
}
