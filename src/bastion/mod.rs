//! The bastion: a russh server that lets in ramp-ca user certificates only, hops to the
//! target with its own node-ca certificate, records every channel, and cuts connections off
//! at expiry or revocation.
//!
//! The russh `Handler` here is a thin adapter: authentication goes to [`login::check`],
//! each channel becomes a task in [`proxy`], each connection gets a watchdog that decides
//! when it ends.

mod files;
pub mod login;
pub mod proxy;
pub mod recorder;
mod upstream;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use russh::keys::ssh_key::{Certificate, Fingerprint, HashAlg};
use russh::server::{self, Auth, Msg, Session};
use russh::{Channel, ChannelOpenFailure, MethodKind, MethodSet};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{watch, OnceCell, Semaphore};

use crate::limits::{self, Admission, Gate, Limits, Rate};

use self::login::Login;
use self::recorder::Recorders;
pub use self::upstream::Upstream;
use crate::service::Service;
use crate::store::Event;

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
pub struct Ctx {
    pub service: Arc<Service>,
    pub recorders: Arc<Recorders>,
    /// Connections logged in, by user.
    users: std::sync::Mutex<std::collections::HashMap<String, usize>>,
    settings: Settings,
    /// The only CA whose user certificates log in.
    user_ca: Fingerprint,
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
    // Sealed and audited (`session-interrupted`) by the store, in one commit.
    let interrupted = service
        .store
        .mark_interrupted(Utc::now())
        .map_err(std::io::Error::other)?;
    for s in &interrupted {
        tracing::warn!(session = %s.id, user = %s.user, target = %s.target, "session was interrupted by a crash");
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    // The flusher stops last, after the sessions have written their ends.
    let (flush_stop_tx, flush_stop_rx) = watch::channel(false);
    let flusher = tokio::spawn(recorders.clone().run(flush_stop_rx));
    let mut methods = MethodSet::empty();
    methods.push(MethodKind::PublicKey);
    let config = Arc::new(server::Config {
        methods,
        keys: vec![service.keys.bastion_host.clone()],
        certificates: crate::keys::read_certificate(&crate::keys::cert_path(
            &service.dir.join("keys").join(crate::keys::BASTION_HOST),
        ))
        .ok()
        .into_iter()
        .collect(),
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
    });
    let ctx = Arc::new(Ctx {
        user_ca: service
            .keys
            .user_ca
            .public_key()
            .fingerprint(HashAlg::Sha256),
        host_ca: service
            .keys
            .host_ca
            .public_key()
            .fingerprint(HashAlg::Sha256),
        service,
        recorders,
        users: std::sync::Mutex::new(std::collections::HashMap::new()),
        settings,
    });
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
    let refuse = |socket: tokio::net::TcpStream, refusal: &limits::Refusal| {
        let _ = socket.try_write(format!("ramp-ca: {refusal}\r\n").as_bytes());
    };
    while let Some((socket, peer, admission)) =
        limits::accept("bastion", &listener, &gate, &mut shutdown, refuse).await
    {
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "too many connections; dropping");
            continue;
        };
        let _ = socket.set_nodelay(true);
        let grace_ends = tokio::time::Instant::now() + LOGIN_GRACE;
        let logged_in = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let handler = ConnHandler::new(
            ctx.clone(),
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
    let _ = stop_tx.send(true);
    // Sessions tell their users and finish their recordings, bounded by a short grace.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while !ctx.recorders.live().is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = flush_stop_tx.send(true);
    let _ = flusher.await;
    Ok(())
}

/// Why a connection that only managed to offer a plain key got nowhere, and whose key it is
/// when this CA knows it (registered in people.yaml, or certified before). The SSH layer
/// refuses expired, not-yet-valid and badly signed certificates before [`login::check`] sees
/// them, so the ledger's newest certificate for the key tells the likely story.
fn unusable_key(
    service: &Service,
    key: &russh::keys::ssh_key::PublicKey,
    now: chrono::DateTime<Utc>,
) -> (login::Refused, Option<String>) {
    let fp = crate::keys::fingerprint(key);
    // From memory: anyone may offer a plain key, so this must not read the ledger.
    let newest = service.store.newest_cert_for(&fp);
    let owner = service
        .policies()
        .user_by_key(key)
        .map(|u| u.name.clone())
        .or_else(|| newest.as_ref().map(|c| c.user.clone()));
    let secs = now.timestamp().max(0) as u64;
    let why = match &newest {
        Some(c) if secs >= c.valid_before => login::Refused { label: "expired", why: format!(
            "certificate expired: the newest certificate for key {fp} (serial {}) was valid until {}",
            c.serial,
            chrono::DateTime::<Utc>::from_timestamp(c.valid_before as i64, 0).map_or_else(String::new, |t| t.to_rfc3339())
        ) },
        Some(c) if secs < c.valid_after => login::Refused { label: "not-yet-valid", why: format!("certificate not yet valid: serial {} for key {fp}", c.serial) },
        _ => login::Refused { label: "plain-key", why: format!("a plain key ({fp}) is not accepted: sign in with a ramp-ca certificate (ramp-ca sign)") },
    };
    (why, owner)
}

/// The refusal of a channel past [`MAX_CHANNELS`].
fn too_many_channels() -> ChannelOpenFailure {
    ChannelOpenFailure::Other {
        code: 4, // SSH_OPEN_RESOURCE_SHORTAGE
        reason: format!("ramp-ca: at most {MAX_CHANNELS} channels at once on one connection"),
    }
}

/// One client connection.
pub struct ConnHandler {
    ctx: Arc<Ctx>,
    peer: SocketAddr,
    login: Option<Arc<Login>>,
    /// The hop to the target, made on the first channel and shared by the rest.
    upstream: Arc<OnceCell<Result<Arc<Upstream>, String>>>,
    /// Why the connection is being ended; every channel task watches it.
    cutoff: watch::Sender<Option<String>>,
    /// The warning before expiry.
    warning: watch::Sender<Option<String>>,
    /// The bastion is shutting down.
    stop: watch::Receiver<bool>,
    /// A plain key this connection tried; refused (logged, counted, audited) only if the
    /// connection offered no certificate and never logs in, since OpenSSH offers the plain key
    /// beside its certificate on every login.
    plain_key_tried: Option<(String, russh::keys::ssh_key::PublicKey)>,
    /// A certificate this connection offered was refused: that refusal says why, so the plain
    /// key offered beside it adds nothing.
    certificate_refused: bool,
    /// Dropped with the connection, which tells its watchdog to stop.
    _alive: tokio::sync::oneshot::Sender<()>,
    /// The watchdog's end of `_alive`, until it starts.
    gone: Option<tokio::sync::oneshot::Receiver<()>>,
    /// Set once a login succeeds; the login grace timer reads it.
    logged_in: Arc<std::sync::atomic::AtomicBool>,
    /// This connection's place among those not logged in yet, given up at login.
    waiting: Option<Admission>,
    /// Channels whose program (shell, exec, subsystem) has started: one program each.
    started: std::collections::HashSet<russh::ChannelId>,
    /// Per session channel, where its task hands back the target's answers to requests.
    answers: std::collections::HashMap<russh::ChannelId, tokio::sync::mpsc::Receiver<bool>>,
    /// Permits for the channels open at once ([`MAX_CHANNELS`]).
    channels: Arc<Semaphore>,
    /// This connection counts against its user's connection limit.
    counted: bool,
    /// What its channels may hold read ahead, per direction.
    budgets: proxy::Budgets,
}

impl Drop for ConnHandler {
    fn drop(&mut self) {
        if let (true, Some(login)) = (self.counted, &self.login) {
            let mut users = self.ctx.users.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = users.get_mut(&login.user) {
                *n -= 1;
                if *n == 0 {
                    users.remove(&login.user);
                }
            }
        }
        if let (None, Some((login_name, key))) = (&self.login, self.plain_key_tried.take()) {
            if self.certificate_refused {
                return;
            }
            let (refused, owner) = unusable_key(&self.ctx.service, &key, Utc::now());
            self.refuse(&login_name, None, &refused, owner.as_deref());
        }
    }
}

impl ConnHandler {
    fn new(
        ctx: Arc<Ctx>,
        peer: SocketAddr,
        stop: watch::Receiver<bool>,
        logged_in: Arc<std::sync::atomic::AtomicBool>,
        waiting: Admission,
    ) -> ConnHandler {
        let (alive, gone) = tokio::sync::oneshot::channel();
        ConnHandler {
            logged_in,
            waiting: Some(waiting),
            started: std::collections::HashSet::new(),
            answers: std::collections::HashMap::new(),
            channels: Arc::new(Semaphore::new(MAX_CHANNELS)),
            counted: false,
            budgets: proxy::Budgets::default(),
            _alive: alive,
            gone: Some(gone),
            ctx,
            peer,
            login: None,
            upstream: Arc::new(OnceCell::new()),
            cutoff: watch::channel(None).0,
            warning: watch::channel(None).0,
            stop,
            plain_key_tried: None,
            certificate_refused: false,
        }
    }

    /// Answers a channel request. One the certificate does not permit ([`proxy::allows`],
    /// the rule the channel task follows too) is refused at once; one it permits is forwarded
    /// by the channel task, and the target's answer is the client's, so a request the target
    /// refuses (an sftp subsystem it lacks, a pty) fails at once instead of hanging. russh
    /// waits for this before reading the next packet, which keeps replies in request order.
    async fn answer(
        &mut self,
        channel: russh::ChannelId,
        request: proxy::Request<'_>,
        session: &mut Session,
    ) -> Result<(), russh::Error> {
        let started = self.started.contains(&channel);
        let allowed = self
            .login
            .as_ref()
            .is_some_and(|l| proxy::allows(&l.options, request, started));
        if !allowed {
            tracing::info!(peer = %self.peer, ?request, "channel request refused");
            return session.channel_failure(channel);
        }
        if matches!(
            request,
            proxy::Request::Shell | proxy::Request::Exec | proxy::Request::Subsystem(_)
        ) {
            self.started.insert(channel);
        }
        let agreed = match self.answers.get_mut(&channel) {
            Some(answers) => match tokio::time::timeout(TARGET_ANSWER, answers.recv()).await {
                Ok(Some(ok)) => ok,
                // The channel task ended the channel itself (the hop failed, the recording
                // could not start, a cut-off) after telling the client why: a failure here
                // would make the client quit before it prints that.
                Ok(None) => true,
                Err(_) => {
                    tracing::warn!(peer = %self.peer, ?request, "the target did not answer a channel request; closing the channel");
                    session.close(channel)?;
                    false
                }
            },
            None => false,
        };
        if agreed {
            session.channel_success(channel)
        } else {
            session.channel_failure(channel)
        }
    }

    fn audit(&self, actor: &str, action: &str, subject: &str, detail: serde_json::Value) {
        let event = Event::new(actor, action, subject, detail);
        if let Err(e) = self.ctx.service.store.audit_events(vec![event], Utc::now()) {
            tracing::error!(error = %e, "cannot audit {action}");
        }
    }

    /// Logs a refusal, and audits it when it concerns someone this CA knows: a certificate
    /// user-ca signed, or a registered or certified key (`owner`, who it belongs to).
    /// Anonymous junk is only logged, so strangers cannot flood the chain or put names in it.
    fn refuse(
        &self,
        login_name: &str,
        cert: Option<&Certificate>,
        refused: &login::Refused,
        owner: Option<&str>,
    ) {
        let why = &refused.why;
        tracing::warn!(peer = %self.peer, login = %login_name, reason = %why, "login refused");
        self.ctx.service.metrics.login_refused(refused.label);
        let ours = cert
            .is_some_and(|c| c.signature_key().fingerprint(HashAlg::Sha256) == self.ctx.user_ca);
        if !(ours || owner.is_some()) {
            return;
        }
        let actor = cert
            .filter(|_| ours)
            .and_then(|c| c.key_id().split(':').nth(1).map(String::from))
            .or(owner.map(String::from))
            .unwrap_or_else(|| "unknown".into());
        self.audit(
            &actor,
            "login-refused",
            login_name,
            json!({"reason": why, "client": self.peer.to_string(),
                   "serial": cert.map(|c| c.serial()), "key_id": cert.map(|c| c.key_id().to_string())}),
        );
    }

    /// Counts this connection against its user's connection limit; false when the user has
    /// that many connections already.
    fn count_user(&mut self, user: &str) -> bool {
        if self.counted {
            return true;
        }
        let mut users = self.ctx.users.lock().unwrap_or_else(|e| e.into_inner());
        let n = users.entry(user.to_string()).or_insert(0);
        if *n >= self.ctx.settings.max_connections_per_user {
            return false;
        }
        *n += 1;
        self.counted = true;
        true
    }

    async fn upstream(&self, login: &Login) -> Result<Arc<Upstream>, String> {
        let ctx = self.ctx.clone();
        self.upstream
            .get_or_init(|| async move {
                let up = upstream::connect(
                    login,
                    &ctx.service.keys.node_ca,
                    ctx.host_ca,
                    &ctx.service.store,
                )
                .await;
                if let Err(why) = &up {
                    tracing::warn!(target = %login.target.name, reason = %why, "hop failed");
                }
                up.map(Arc::new)
            })
            .await
            .clone()
    }

    /// Ends the connection at expiry or revocation, warning shortly before expiry.
    fn watch_expiry(&mut self, login: Arc<Login>, handle: server::Handle) {
        let Some(mut gone) = self.gone.take() else {
            return;
        };
        let cutoff = self.cutoff.clone();
        let warning = self.warning.clone();
        let service = self.ctx.service.clone();
        let mut revoked = service.revocations();
        let mut stop = self.stop.clone();
        let lifetime = login.valid_before.saturating_sub(login.valid_after);
        let warn_before = (lifetime / 4).clamp(1, 60);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            // The clock is checked every tick; the ledger and policies on every revocation and
            // every RECHECK_TICKS ticks (policy reloads), so idle connections cost little.
            const RECHECK_TICKS: u32 = 10;
            let mut ticks = 0u32;
            let reason = loop {
                let revocation = tokio::select! {
                    _ = tick.tick() => false,
                    _ = revoked.changed() => true,
                    _ = stop.changed() => break "the bastion is shutting down".to_string(),
                    _ = &mut gone => return,
                };
                ticks += 1;
                let now = Utc::now();
                let secs = now.timestamp().max(0) as u64;
                if secs >= login.valid_before {
                    break format!(
                        "access to {} ended: the certificate expired",
                        login.target.name
                    );
                }
                if secs + warn_before >= login.valid_before && warning.borrow().is_none() {
                    let left = login.valid_before - secs;
                    let _ = warning.send(Some(format!(
                        "access to {} ends in {left}s, when the certificate expires",
                        login.target.name
                    )));
                }
                if !revocation && !ticks.is_multiple_of(RECHECK_TICKS) {
                    continue;
                }
                let store = &service.store;
                let grant_ended = store
                    .grant(&login.grant.id)
                    .ok()
                    .flatten()
                    .is_none_or(|g| g.state(now) != crate::grant::State::Active);
                if grant_ended {
                    break format!(
                        "access to {} ended: the grant was revoked",
                        login.target.name
                    );
                }
                // Revoking the grant revokes its serials too; a serial alone says so.
                if store.is_revoked(login.serial).unwrap_or(false) {
                    break format!(
                        "access to {} ended: certificate serial {} was revoked",
                        login.target.name, login.serial
                    );
                }
                if let Err(why) =
                    login::still_entitled(&service.policies(), &login.user, &login.grant.contract)
                {
                    break format!("access to {} ended: {why}", login.target.name);
                }
            };
            tracing::info!(user = %login.user, target = %login.target.name, %reason, "cutting the connection off");
            let _ = cutoff.send(Some(reason.clone()));
            tokio::time::sleep(Duration::from_millis(300)).await;
            let _ = handle
                .disconnect(russh::Disconnect::ByApplication, reason, String::new())
                .await;
        });
    }
}

impl server::Handler for ConnHandler {
    type Error = russh::Error;

    async fn auth_none(&mut self, _user: &str) -> Result<Auth, Self::Error> {
        let mut methods = MethodSet::empty();
        methods.push(MethodKind::PublicKey);
        Ok(Auth::Reject {
            proceed_with_methods: Some(methods),
            partial_success: false,
        })
    }

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        _key: server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        // An offer only earns the chance to prove possession; nothing is decided yet.
        Ok(Auth::Accept)
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        tracing::info!(peer = %self.peer, login = %user, "plain key refused");
        self.plain_key_tried = Some((user.to_string(), key.public_key.clone()));
        Ok(Auth::reject())
    }

    async fn auth_openssh_certificate(
        &mut self,
        user: &str,
        cert: &Certificate,
    ) -> Result<Auth, Self::Error> {
        let p = self.ctx.service.policies();
        let store = &self.ctx.service.store;
        match login::check(
            &p,
            store,
            &self.ctx.user_ca,
            cert,
            user,
            self.peer.ip(),
            Utc::now(),
        ) {
            Ok(login) => {
                if !self.count_user(&login.user) {
                    let busy = login::Refused {
                        label: "busy",
                        why: format!(
                            "`{}` already has {} connections through the bastion; close one",
                            login.user, self.ctx.settings.max_connections_per_user
                        ),
                    };
                    self.refuse(user, Some(cert), &busy, Some(&login.user));
                    self.certificate_refused = true;
                    return Ok(Auth::reject());
                }
                tracing::info!(user = %login.user, principal = %login.principal, target = %login.target.name, peer = %self.peer, "login");
                self.audit(
                    &login.user,
                    "login",
                    &login.target.name,
                    json!({"principal": login.principal, "grant": login.grant.id, "serial": login.serial,
                           "client": login.client}),
                );
                self.login = Some(Arc::new(login));
                Ok(Auth::Accept)
            }
            Err(refused) => {
                let key = russh::keys::ssh_key::PublicKey::from(cert.public_key().clone());
                let owner = p.user_by_key(&key).map(|u| u.name.clone());
                self.refuse(user, Some(cert), &refused, owner.as_deref());
                self.certificate_refused = true;
                Ok(Auth::reject())
            }
        }
    }

    async fn auth_succeeded(&mut self, session: &mut Session) -> Result<(), Self::Error> {
        self.logged_in
            .store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(waiting) = self.waiting.take() {
            waiting.logged_in();
        }
        if let Some(login) = self.login.clone() {
            self.watch_expiry(login, session.handle());
        }
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: server::ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(login) = self.login.clone() else {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        };
        let Ok(permit) = self.channels.clone().try_acquire_owned() else {
            reply.reject(too_many_channels()).await;
            return Ok(());
        };
        reply.accept().await;
        let upstream = self.upstream(&login).await;
        let (answers_tx, answers) = tokio::sync::mpsc::channel(4);
        self.answers.insert(channel.id(), answers);
        let (ctx, handle) = (self.ctx.clone(), session.handle());
        let (cutoff, warning) = (self.cutoff.subscribe(), self.warning.subscribe());
        let budgets = self.budgets.clone();
        tokio::spawn(async move {
            proxy::session(
                ctx, login, upstream, channel, handle, cutoff, warning, answers_tx, budgets,
            )
            .await;
            drop(permit);
            proxy::give_back_memory();
        });
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host: &str,
        port: u32,
        originator: &str,
        originator_port: u32,
        reply: server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(login) = self.login.clone() else {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        };
        let Ok(permit) = self.channels.clone().try_acquire_owned() else {
            reply.reject(too_many_channels()).await;
            return Ok(());
        };
        let dest = format!("{host}:{port}");
        if !login.options.port_forwarding {
            self.audit(
                &login.user,
                "forward-refused",
                &dest,
                json!({"reason": "the certificate does not permit port forwarding"}),
            );
            reply
                .reject(ChannelOpenFailure::Other {
                    code: 1,
                    reason: "ramp-ca: the certificate does not permit port forwarding".into(),
                })
                .await;
            return Ok(());
        }
        let opened = match self.upstream(&login).await {
            Ok(up) => up
                .handle
                .channel_open_direct_tcpip(host, port, originator, originator_port)
                .await
                .map_err(|e| format!("{} could not open {dest}: {e}", login.target.name)),
            Err(why) => Err(why),
        };
        let target = match opened {
            Ok(t) => t,
            Err(why) => {
                reply
                    .reject(ChannelOpenFailure::Other {
                        code: 2,
                        reason: format!("ramp-ca: {why}"),
                    })
                    .await;
                return Ok(());
            }
        };
        let meta = login.session_meta("direct-tcpip", Some(dest), None);
        match self.ctx.recorders.start(meta) {
            Ok(rec) => {
                reply.accept().await;
                let cutoff = self.cutoff.subscribe();
                let budgets = self.budgets.clone();
                tokio::spawn(async move {
                    proxy::tcpip(channel, target, rec, cutoff, budgets).await;
                    drop(permit);
                    proxy::give_back_memory();
                });
            }
            Err(e) => {
                reply
                    .reject(ChannelOpenFailure::Other {
                        code: 2,
                        reason: format!("ramp-ca: cannot record: {e}"),
                    })
                    .await;
            }
        }
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: russh::ChannelId,
        _term: &str,
        _cols: u32,
        _rows: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.answer(channel, proxy::Request::Pty, session).await
    }

    async fn env_request(
        &mut self,
        channel: russh::ChannelId,
        _name: &str,
        _value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.answer(channel, proxy::Request::Env, session).await
    }

    async fn shell_request(
        &mut self,
        channel: russh::ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.answer(channel, proxy::Request::Shell, session).await
    }

    async fn exec_request(
        &mut self,
        channel: russh::ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.answer(channel, proxy::Request::Exec, session).await
    }

    async fn subsystem_request(
        &mut self,
        channel: russh::ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.answer(channel, proxy::Request::Subsystem(name), session)
            .await
    }

    async fn x11_request(
        &mut self,
        channel: russh::ChannelId,
        _single: bool,
        _protocol: &str,
        _cookie: &str,
        _screen: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.answer(channel, proxy::Request::X11, session).await
    }

    async fn agent_request(
        &mut self,
        _channel: russh::ChannelId,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        // russh answers this one itself from the returned value.
        tracing::info!(peer = %self.peer, request = ?proxy::Request::Agent, "channel request refused");
        Ok(false)
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        // Remote forwarding would let a target reach into the engineer's network; not offered.
        tracing::info!(peer = %self.peer, %address, port = *port, "remote forwarding refused");
        Ok(false)
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
