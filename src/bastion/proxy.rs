//! One task per channel relays between the engineer's channel and the matching channel on
//! the target, one future per direction, so a side that is slow to read never stops the
//! other direction nor the cut-off. It records what passes, forwards only the requests the
//! certificate permits ([`allows`], which the Handler also uses to answer the client), and
//! ends the channel when the connection is cut off (expiry, revocation, shutdown).

use std::future::Future;
use std::sync::{Arc, Mutex};

use russh::server::{self, Msg};
use russh::{Channel, ChannelMsg, ChannelReadHalf, ChannelWriteHalf};
use tokio::sync::{watch, OnceCell};

use super::files::{scp_files, SftpTracker};
use super::login::Login;
use super::recorder::Recorder;
use super::{Ctx, Upstream};
use crate::policy::CertOptions;

/// Why the bastion is ending a connection, once it is; every channel task watches it.
pub type Cutoff = watch::Receiver<Option<String>>;

/// A channel request, as far as the decision to allow it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request<'a> {
    Pty,
    Env,
    Shell,
    Exec,
    Subsystem(&'a str),
    X11,
    Agent,
}

/// Whether a request is allowed on a channel whose program may or may not have started.
/// The Handler answers the client with this; the channel task forwards only what it allows.
pub fn allows(options: &CertOptions, request: Request<'_>, started: bool) -> bool {
    match request {
        Request::Pty => options.pty && !started,
        Request::Env => !started,
        Request::Shell | Request::Exec => !started,
        // A forced command replaces subsystems too, as in sshd; sftp is the only one offered.
        Request::Subsystem(name) => !started && name == "sftp" && options.force_command.is_none(),
        // Forwarding back through the bastion would let a target reach the engineer's machine.
        Request::X11 | Request::Agent => false,
    }
}

/// Ends both directions when the connection is cut off or either direction is done.
#[derive(Clone)]
struct Stop {
    cutoff: Cutoff,
    done: watch::Receiver<bool>,
}

impl Stop {
    async fn wait(&mut self) {
        tokio::select! {
            _ = self.cutoff.wait_for(Option::is_some) => {}
            _ = self.done.wait_for(|d| *d) => {}
        }
    }

    /// Runs `f` unless the channel is stopped first.
    async fn guard<F: Future>(&mut self, f: F) -> Option<F::Output> {
        tokio::select! {
            out = f => Some(out),
            _ = self.wait() => None,
        }
    }
}

/// Messages read ahead per direction (up to ~16 MiB of 32 KiB packets). russh's connection
/// loop waits whenever a channel's own queue is full; reading ahead keeps it moving so one
/// direction waiting on its peer's window does not stall the other direction's replies.
const READ_AHEAD: usize = 512;

/// Reads a channel ahead into `to` until it ends or the channel stops.
async fn read_ahead(
    mut from: ChannelReadHalf,
    to: tokio::sync::mpsc::Sender<ChannelMsg>,
    mut stop: Stop,
) {
    loop {
        let msg = tokio::select! {
            msg = from.wait() => msg,
            _ = stop.wait() => return,
        };
        let last = matches!(msg, None | Some(ChannelMsg::Close));
        if let Some(msg) = msg {
            if stop
                .guard(to.send(msg))
                .await
                .is_none_or(|sent| sent.is_err())
            {
                return;
            }
        }
        if last {
            return;
        }
    }
}

/// A read-ahead queue for one direction of a channel.
fn queue() -> (
    tokio::sync::mpsc::Sender<ChannelMsg>,
    tokio::sync::mpsc::Receiver<ChannelMsg>,
) {
    tokio::sync::mpsc::channel(READ_AHEAD)
}

/// What both directions of one channel share.
struct Shared {
    /// Set when the program starts; from then on every byte is recorded.
    recorder: OnceCell<Arc<Recorder>>,
    /// Why the bastion ended the channel, when it did (first reason wins).
    end_reason: Mutex<Option<String>>,
    exit_status: Mutex<Option<u32>>,
    done: watch::Sender<bool>,
}

impl Shared {
    /// A channel's shared state, recording into `recorder` once it is set, and the stop
    /// signal both directions watch.
    fn new(recorder: OnceCell<Arc<Recorder>>, cutoff: &Cutoff) -> (Shared, Stop) {
        let (done, done_rx) = watch::channel(false);
        let shared = Shared {
            recorder,
            end_reason: Mutex::new(None),
            exit_status: Mutex::new(None),
            done,
        };
        let stop = Stop {
            cutoff: cutoff.clone(),
            done: done_rx,
        };
        (shared, stop)
    }

    fn end(&self, reason: Option<String>) {
        if let Some(r) = reason {
            self.end_reason
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_or_insert(r);
        }
        self.done.send_replace(true);
    }

    /// Records, then waits while the recording's buffer is full; ends the channel if the
    /// recording failed. Returns false when the channel must stop.
    async fn record(&self, stop: &mut Stop, f: impl FnOnce(&Recorder)) -> bool {
        let Some(rec) = self.recorder.get() else {
            return true;
        };
        f(rec);
        if let Some(why) = rec.failure() {
            self.end(Some(format!("{why}; ending the session")));
            return false;
        }
        stop.guard(rec.backpressure()).await.is_some()
    }
}

/// Relays a session channel (shell, exec, subsystem) until either side closes it.
#[allow(clippy::too_many_arguments)]
pub async fn session(
    ctx: Arc<Ctx>,
    login: Arc<Login>,
    upstream: Result<Arc<Upstream>, String>,
    client: Channel<Msg>,
    handle: server::Handle,
    cutoff: Cutoff,
    warning: Cutoff,
) {
    let id = client.id();
    let say = |text: String| {
        let handle = handle.clone();
        async move {
            let _ = handle
                .extended_data(id, 1, format!("\r\nramp-ca: {text}\r\n").into_bytes())
                .await;
        }
    };
    let opened = match upstream {
        Ok(up) => up
            .handle
            .channel_open_session()
            .await
            .map_err(|e| format!("cannot open a session on {}: {e}", login.target.name)),
        Err(why) => Err(why),
    };
    let target = match opened {
        Ok(t) => t,
        Err(why) => {
            say(why).await;
            let _ = client.exit_status(255).await;
            let _ = client.close().await;
            return;
        }
    };
    let (client_rx, client_tx) = client.split();
    let (target_rx, target_tx) = target.split();
    let (shared, stop) = Shared::new(OnceCell::new(), &cutoff);
    let (up_tx, up_rx) = queue();
    let (down_tx, down_rx) = queue();
    tokio::join!(
        read_ahead(client_rx, up_tx, stop.clone()),
        upward(&ctx, &login, &shared, stop.clone(), up_rx, &target_tx),
        read_ahead(target_rx, down_tx, stop.clone()),
        downward(
            &shared,
            stop.clone(),
            warning,
            down_rx,
            &client_tx,
            &handle,
            &say
        ),
    );
    let cut = cutoff.borrow().clone();
    if let Some(reason) = &cut {
        shared.end(Some(reason.clone()));
    }
    let reason = shared
        .end_reason
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    if let Some(reason) = &reason {
        say(reason.clone()).await;
        let _ = client_tx.exit_status(255).await;
        let _ = client_tx.eof().await;
    }
    let _ = target_tx.close().await;
    let _ = client_tx.close().await;
    if let Some(rec) = shared.recorder.get() {
        let exit = *shared.exit_status.lock().unwrap_or_else(|e| e.into_inner());
        rec.finish(exit, reason);
    }
}

/// Client to target: input and requests. Starts the recording when the program starts.
async fn upward(
    ctx: &Ctx,
    login: &Login,
    shared: &Shared,
    mut stop: Stop,
    mut client: tokio::sync::mpsc::Receiver<ChannelMsg>,
    target: &ChannelWriteHalf<russh::client::Msg>,
) {
    let mut pty: Option<(String, u32, u32)> = None;
    let mut sftp: Option<SftpTracker> = None;
    loop {
        let msg = tokio::select! {
            msg = client.recv() => msg,
            _ = stop.wait() => return,
        };
        let started = shared.recorder.initialized();
        let sent = match msg {
            None | Some(ChannelMsg::Close) => break,
            // Bytes before the program starts go nowhere, as in sshd: nothing unrecorded passes.
            Some(ChannelMsg::Data { data }) if started => {
                let files = sftp.as_mut().map(|t| t.feed(&data)).unwrap_or_default();
                if !shared
                    .record(&mut stop, |r| {
                        r.input(&data);
                        files.into_iter().for_each(|f| r.file(f));
                    })
                    .await
                {
                    break;
                }
                stop.guard(target.data_bytes(data)).await
            }
            Some(ChannelMsg::ExtendedData { data, ext }) if started => {
                if !shared.record(&mut stop, |r| r.input(&data)).await {
                    break;
                }
                stop.guard(target.extended_data_bytes(ext, data)).await
            }
            Some(ChannelMsg::Eof) => stop.guard(target.eof()).await,
            Some(ChannelMsg::RequestPty {
                term,
                col_width,
                row_height,
                pix_width,
                pix_height,
                terminal_modes,
                ..
            }) if allows(&login.options, Request::Pty, started) => {
                pty = Some((term.clone(), col_width, row_height));
                stop.guard(target.request_pty(
                    true,
                    &term,
                    col_width,
                    row_height,
                    pix_width,
                    pix_height,
                    &terminal_modes,
                ))
                .await
            }
            Some(ChannelMsg::SetEnv {
                variable_name,
                variable_value,
                ..
            }) if allows(&login.options, Request::Env, started) => {
                stop.guard(target.set_env(false, variable_name, variable_value))
                    .await
            }
            Some(ChannelMsg::RequestShell { .. })
                if allows(&login.options, Request::Shell, started) =>
            {
                match login.options.force_command.clone() {
                    // force-command replaces the shell too, as in sshd.
                    Some(cmd) => match start(ctx, login, shared, "exec", Some(cmd.clone()), &pty) {
                        true => stop.guard(target.exec(true, cmd)).await,
                        false => break,
                    },
                    None => match start(ctx, login, shared, "shell", None, &pty) {
                        true => stop.guard(target.request_shell(true)).await,
                        false => break,
                    },
                }
            }
            Some(ChannelMsg::Exec { command, .. })
                if allows(&login.options, Request::Exec, started) =>
            {
                let command = login
                    .options
                    .force_command
                    .clone()
                    .unwrap_or_else(|| String::from_utf8_lossy(&command).into_owned());
                if !start(ctx, login, shared, "exec", Some(command.clone()), &pty) {
                    break;
                }
                if let Some(rec) = shared.recorder.get() {
                    scp_files(&command).into_iter().for_each(|f| rec.file(f));
                }
                stop.guard(target.exec(true, command)).await
            }
            Some(ChannelMsg::RequestSubsystem { name, .. })
                if allows(&login.options, Request::Subsystem(&name), started) =>
            {
                if !start(ctx, login, shared, "subsystem", Some(name.clone()), &pty) {
                    break;
                }
                sftp = Some(SftpTracker::default());
                stop.guard(target.request_subsystem(true, name)).await
            }
            Some(ChannelMsg::WindowChange {
                col_width,
                row_height,
                pix_width,
                pix_height,
            }) => {
                if !shared
                    .record(&mut stop, |r| r.resize(col_width, row_height))
                    .await
                {
                    break;
                }
                stop.guard(target.window_change(col_width, row_height, pix_width, pix_height))
                    .await
            }
            Some(ChannelMsg::Signal { signal }) => stop.guard(target.signal(signal)).await,
            // Refused requests (answered by the Handler) and anything else stop here.
            Some(_) => Some(Ok(())),
        };
        match sent {
            Some(Ok(())) => {}
            Some(Err(_)) => {
                shared.end(Some(format!(
                    "the connection to {} failed",
                    login.target.name
                )));
                return;
            }
            None => return,
        }
    }
    shared.end(None);
}

/// Starts the recording; refuses the session if it cannot be, since none runs unrecorded.
fn start(
    ctx: &Ctx,
    login: &Login,
    shared: &Shared,
    kind: &str,
    command: Option<String>,
    pty: &Option<(String, u32, u32)>,
) -> bool {
    match ctx
        .recorders
        .start(login.session_meta(kind, command, pty.clone()))
    {
        Ok(rec) => {
            let _ = shared.recorder.set(rec);
            true
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot start a recording; refusing the session");
            shared.end(Some(format!(
                "cannot record this session: {e}; refusing it"
            )));
            false
        }
    }
}

/// Target to client: output, exit status, end of stream; the expiry warning on a terminal.
async fn downward<F, Fut>(
    shared: &Shared,
    mut stop: Stop,
    mut warning: Cutoff,
    mut target: tokio::sync::mpsc::Receiver<ChannelMsg>,
    client: &ChannelWriteHalf<Msg>,
    handle: &server::Handle,
    say: &F,
) where
    F: Fn(String) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut warned = false;
    loop {
        // The select only picks; the work (and its awaits) happens after, outside it.
        enum Next {
            Msg(Option<ChannelMsg>),
            Warn(Option<String>),
        }
        let next = tokio::select! {
            msg = target.recv() => Next::Msg(msg),
            text = warning.wait_for(Option::is_some), if !warned => Next::Warn(text.ok().and_then(|t| t.clone())),
            _ = stop.wait() => return,
        };
        let msg = match next {
            Next::Msg(msg) => msg,
            Next::Warn(text) => {
                warned = true;
                let on_terminal = shared
                    .recorder
                    .get()
                    .is_some_and(|r| r.meta().term.is_some());
                if let (Some(text), true) = (text, on_terminal) {
                    say(text).await;
                }
                continue;
            }
        };
        let sent = match msg {
            None | Some(ChannelMsg::Close) => break,
            Some(ChannelMsg::Data { data }) => {
                if !shared.record(&mut stop, |r| r.output(&data)).await {
                    break;
                }
                stop.guard(client.data_bytes(data)).await
            }
            Some(ChannelMsg::ExtendedData { data, ext }) => {
                if !shared.record(&mut stop, |r| r.output(&data)).await {
                    break;
                }
                stop.guard(client.extended_data_bytes(ext, data)).await
            }
            Some(ChannelMsg::Eof) => stop.guard(client.eof()).await,
            Some(ChannelMsg::ExitStatus { exit_status }) => {
                *shared.exit_status.lock().unwrap_or_else(|e| e.into_inner()) = Some(exit_status);
                stop.guard(client.exit_status(exit_status)).await
            }
            Some(ChannelMsg::ExitSignal {
                signal_name,
                core_dumped,
                error_message,
                lang_tag,
            }) => {
                let _ = handle
                    .exit_signal_request(
                        client.id(),
                        signal_name,
                        core_dumped,
                        error_message,
                        lang_tag,
                    )
                    .await;
                Some(Ok(()))
            }
            Some(ChannelMsg::Failure) => {
                tracing::info!("the target refused a channel request");
                Some(Ok(()))
            }
            Some(_) => Some(Ok(())),
        };
        match sent {
            Some(Ok(())) => {}
            Some(Err(_)) | None => return,
        }
    }
    shared.end(None);
}

/// Relays a direct-tcpip channel (ssh -L / -W), already opened on both sides and recorded.
pub async fn tcpip(
    client: Channel<Msg>,
    target: Channel<russh::client::Msg>,
    rec: Arc<Recorder>,
    cutoff: Cutoff,
) {
    let (shared, stop) = Shared::new(OnceCell::new_with(Some(rec.clone())), &cutoff);
    let (client_rx, client_tx) = client.split();
    let (target_rx, target_tx) = target.split();
    let (up_tx, up_rx) = queue();
    let (down_tx, down_rx) = queue();
    tokio::join!(
        read_ahead(client_rx, up_tx, stop.clone()),
        pump(&shared, stop.clone(), up_rx, &target_tx, true),
        read_ahead(target_rx, down_tx, stop.clone()),
        pump(&shared, stop.clone(), down_rx, &client_tx, false),
    );
    let _ = target_tx.close().await;
    let _ = client_tx.close().await;
    let reason = cutoff.borrow().clone().or_else(|| {
        shared
            .end_reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    });
    rec.finish(None, reason);
}

/// One direction of a forwarded TCP stream.
async fn pump<S>(
    shared: &Shared,
    mut stop: Stop,
    mut from: tokio::sync::mpsc::Receiver<ChannelMsg>,
    to: &ChannelWriteHalf<S>,
    is_input: bool,
) where
    S: From<(russh::ChannelId, ChannelMsg)> + Send + Sync + 'static,
{
    loop {
        let msg = tokio::select! {
            msg = from.recv() => msg,
            _ = stop.wait() => return,
        };
        match msg {
            Some(ChannelMsg::Data { data }) => {
                let recorded = shared
                    .record(&mut stop, |r| {
                        if is_input {
                            r.input(&data)
                        } else {
                            r.output(&data)
                        }
                    })
                    .await;
                if !recorded || !matches!(stop.guard(to.data_bytes(data)).await, Some(Ok(()))) {
                    break;
                }
            }
            Some(ChannelMsg::Eof) => {
                let _ = to.eof().await;
            }
            None | Some(ChannelMsg::Close) => break,
            Some(_) => {}
        }
    }
    shared.end(None);
}
