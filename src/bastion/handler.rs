//! One client connection's russh `Handler`: a thin adapter. Logins are the service's to
//! check and audit, channels become [`super::proxy`] tasks, and the connection's
//! [`super::watchdog`] ends it at expiry or revocation.

use std::net::SocketAddr;
use std::sync::Arc;

use chrono::Utc;
use russh::keys::ssh_key::{Certificate, PublicKey};
use russh::server::{self, Auth, Msg, Session};
use russh::{Channel, ChannelOpenFailure, MethodKind, MethodSet};
use tokio::sync::{watch, OnceCell, OwnedSemaphorePermit, Semaphore};

use super::watchdog::Watchdog;
use super::{proxy, upstream, Bastion, Upstream, MAX_CHANNELS, TARGET_ANSWER};
use crate::domain::login::{Login, Refusal};
use crate::limits::Admission;
use crate::service::Attempt;

/// The refusal of a channel past [`MAX_CHANNELS`].
fn too_many_channels() -> ChannelOpenFailure {
    ChannelOpenFailure::Other {
        code: 4, // SSH_OPEN_RESOURCE_SHORTAGE
        reason: format!("ramp-ca: at most {MAX_CHANNELS} channels at once on one connection"),
    }
}

/// Logs a refusal, and has the service count it and audit it when it concerns someone the
/// CA knows.
async fn refuse(bastion: &Bastion, attempt: Attempt<'_>, refusal: &Refusal) {
    tracing::warn!(peer = %attempt.peer, login = %attempt.login_name, reason = %refusal, "login refused");
    if let Err(e) = bastion
        .service
        .login_refused(attempt, refusal, Utc::now())
        .await
    {
        tracing::error!(error = %e, "cannot audit login-refused");
    }
}

fn publickey_only() -> MethodSet {
    let mut methods = MethodSet::empty();
    methods.push(MethodKind::PublicKey);
    methods
}

/// One client connection.
pub struct ConnHandler {
    ctx: Arc<Bastion>,
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
    plain_key_tried: Option<(String, PublicKey)>,
    /// A certificate this connection offered was refused: that refusal says why, so the plain
    /// key offered beside it adds nothing.
    certificate_refused: bool,
    /// Why this connection's login was refused, told to the client through a
    /// keyboard-interactive round with no prompts (OpenSSH prints its instruction text):
    /// set only when the attempt proved a key this CA knows.
    notice: Option<String>,
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
            // Dropped on a runtime thread: the ledger's answer and the audit happen in a task.
            let (bastion, peer) = (self.ctx.clone(), self.peer);
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                return;
            };
            runtime.spawn(async move {
                let (refusal, owner) = bastion.service.unusable_key(&key, Utc::now()).await;
                let attempt = Attempt {
                    login_name: &login_name,
                    peer,
                    cert: None,
                    owner: owner.as_deref(),
                };
                refuse(&bastion, attempt, &refusal).await;
            });
        }
    }
}

impl ConnHandler {
    pub fn new(
        ctx: Arc<Bastion>,
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
            notice: None,
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
                let up = upstream::connect(login, &ctx.service, ctx.host_ca).await;
                if let Err(why) = &up {
                    tracing::warn!(target = %login.target.name, reason = %why, "hop failed");
                }
                up.map(Arc::new)
            })
            .await
            .clone()
    }

    /// A new channel's login and its permit among [`MAX_CHANNELS`]; refused (and `None`)
    /// before login or past the limit.
    async fn admit_channel(
        &self,
        reply: server::ChannelOpenHandle,
    ) -> Option<(Arc<Login>, OwnedSemaphorePermit, server::ChannelOpenHandle)> {
        let Some(login) = self.login.clone() else {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return None;
        };
        let Ok(permit) = self.channels.clone().try_acquire_owned() else {
            reply.reject(too_many_channels()).await;
            return None;
        };
        Some((login, permit, reply))
    }

    /// The answer to a refused key: when there is a refusal to tell, keyboard-interactive
    /// joins the methods, so the client comes back for it once its keys are tried.
    fn refused(&self) -> Auth {
        let mut methods = publickey_only();
        if self.notice.is_some() {
            methods.push(MethodKind::KeyboardInteractive);
        }
        Auth::Reject {
            proceed_with_methods: Some(methods),
            partial_success: false,
        }
    }

    /// Starts the connection's watchdog (see [`Watchdog`]), once.
    fn watch_expiry(&mut self, login: Arc<Login>, handle: server::Handle) {
        let Some(gone) = self.gone.take() else {
            return;
        };
        Watchdog {
            service: self.ctx.service.clone(),
            login,
            handle,
            gone,
            cutoff: self.cutoff.clone(),
            warning: self.warning.clone(),
            stop: self.stop.clone(),
        }
        .spawn();
    }
}

impl server::Handler for ConnHandler {
    type Error = russh::Error;

    async fn auth_none(&mut self, _user: &str) -> Result<Auth, Self::Error> {
        Ok(Auth::Reject {
            proceed_with_methods: Some(publickey_only()),
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
        if self.notice.is_none() {
            let service = &self.ctx.service;
            let (refusal, owner) = service.unusable_key(key.public_key, Utc::now()).await;
            let attempt = Attempt {
                login_name: user,
                peer: self.peer,
                cert: None,
                owner: owner.as_deref(),
            };
            self.notice = service.refusal_notice(attempt, &refusal);
        }
        Ok(self.refused())
    }

    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        _user: &str,
        _submethods: &str,
        response: Option<server::Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        // Offered only to tell a refusal: one round with no prompts, then publickey again.
        match (response, self.notice.take()) {
            (None, Some(notice)) => Ok(Auth::Partial {
                name: "".into(),
                instructions: notice.into(),
                prompts: Vec::new().into(),
            }),
            _ => Ok(Auth::Reject {
                proceed_with_methods: Some(publickey_only()),
                partial_success: false,
            }),
        }
    }

    async fn auth_openssh_certificate(
        &mut self,
        user: &str,
        cert: &Certificate,
    ) -> Result<Auth, Self::Error> {
        let (service, peer) = (self.ctx.service.clone(), self.peer);
        let attempt = |owner| Attempt {
            login_name: user,
            peer,
            cert: Some(cert),
            owner,
        };
        match service.check_login(cert, user, self.peer, Utc::now()).await {
            Ok(login) => {
                if !self.count_user(&login.user) {
                    let busy = Refusal::Busy {
                        user: login.user.clone(),
                        max: self.ctx.settings.max_connections_per_user,
                    };
                    refuse(&self.ctx, attempt(Some(&login.user)), &busy).await;
                    self.certificate_refused = true;
                    self.notice = service.refusal_notice(attempt(Some(&login.user)), &busy);
                    return Ok(self.refused());
                }
                tracing::info!(user = %login.user, principal = %login.principal, target = %login.target.name, peer = %self.peer, "login");
                if let Err(e) = service.logged_in(&login, Utc::now()).await {
                    tracing::error!(error = %e, "cannot audit login");
                }
                self.login = Some(Arc::new(login));
                Ok(Auth::Accept)
            }
            Err(refusal) => {
                let owner = service.key_owner(&PublicKey::from(cert.public_key().clone()));
                refuse(&self.ctx, attempt(owner.as_deref()), &refusal).await;
                self.certificate_refused = true;
                self.notice = service.refusal_notice(attempt(owner.as_deref()), &refusal);
                Ok(self.refused())
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
        let Some((login, permit, reply)) = self.admit_channel(reply).await else {
            return Ok(());
        };
        reply.accept().await;
        let upstream = self.upstream(&login).await;
        let (answers_tx, answers) = tokio::sync::mpsc::channel(4);
        self.answers.insert(channel.id(), answers);
        let (ctx, handle) = (self.ctx.clone(), session.handle());
        let (cutoff, warning) = (self.cutoff.clone(), self.warning.subscribe());
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
        let Some((login, permit, reply)) = self.admit_channel(reply).await else {
            return Ok(());
        };
        let dest = format!("{host}:{port}");
        if !login.options.port_forwarding {
            let why = "the certificate does not permit port forwarding";
            let service = &self.ctx.service;
            if let Err(e) = service
                .forward_refused(&login.user, &dest, why, Utc::now())
                .await
            {
                tracing::error!(error = %e, "cannot audit forward-refused");
            }
            reply
                .reject(ChannelOpenFailure::Other {
                    code: 1,
                    reason: format!("ramp-ca: {why}"),
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
        let id = crate::service::new_id();
        let meta = login.session_meta(id, "direct-tcpip", Some(dest), None, Utc::now());
        match self.ctx.recorders.start(meta).await {
            Ok(rec) => {
                rec.ends_with(self.cutoff.clone());
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
