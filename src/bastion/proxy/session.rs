//! A session channel (shell, exec, subsystem): the client's requests go up to the target
//! when the certificate allows them, the target's answers come back to the Handler, and the
//! recording starts when the program does.

use std::future::Future;
use std::sync::Arc;

use chrono::Utc;
use russh::server::{self, Msg};
use russh::{Channel, ChannelMsg, ChannelWriteHalf};
use tokio::sync::OnceCell;

use super::{
    allows, lock, queue, read_ahead, Ahead, Answers, Asked, Budgets, Cutoff, Relay, Request, Stop,
};
use crate::bastion::files::{scp_files, sftp_denied, Piece, SftpFrames, SftpTracker};
use crate::bastion::{Bastion, Upstream};
use crate::domain::login::Login;
use crate::domain::policy::FlagOn;
use crate::recordings::writer::Recorder;

/// Relays a session channel (shell, exec, subsystem) until either side closes it; the
/// target's answer to each request goes to `answers`.
#[allow(clippy::too_many_arguments)]
pub async fn session(
    ctx: Arc<Bastion>,
    login: Arc<Login>,
    upstream: Result<Arc<Upstream>, String>,
    client: Channel<Msg>,
    handle: server::Handle,
    ender: tokio::sync::watch::Sender<Option<String>>,
    warning: Cutoff,
    answers: Answers,
    budgets: Budgets,
) {
    let cutoff = ender.subscribe();
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
    let (shared, stop) = Relay::new(OnceCell::new(), &cutoff, Some(answers), Some(ender));
    let (up_tx, up_rx) = queue();
    let (down_tx, down_rx) = queue();
    let refusals = Refusals::default();
    tokio::join!(
        read_ahead(client_rx, up_tx, budgets.up.clone(), stop.clone()),
        upward(
            &ctx,
            &login,
            &shared,
            stop.clone(),
            up_rx,
            &target_tx,
            &refusals
        ),
        read_ahead(target_rx, down_tx, budgets.down.clone(), stop.clone()),
        downward(
            &login.target.name,
            &shared,
            stop.clone(),
            warning,
            down_rx,
            (&client_tx, &handle),
            &say,
            &refusals,
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

/// The bastion's own SFTP answers (a refused operation's status, and the line that tells
/// the user why on stderr), for the downward half to send between two of the target's
/// packets. Set once the sftp subsystem starts.
#[derive(Default)]
struct Refusals {
    sftp: std::sync::atomic::AtomicBool,
    queue: std::sync::Mutex<Vec<(Vec<u8>, String)>>,
    ready: tokio::sync::Notify,
}

impl Refusals {
    fn sftp(&self) -> bool {
        self.sftp.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn push(&self, status: Vec<u8>, why: String) {
        lock(&self.queue).push((status, why));
        self.ready.notify_one();
    }

    fn take(&self) -> Vec<(Vec<u8>, String)> {
        std::mem::take(&mut *lock(&self.queue))
    }
}

/// Client to target: input and requests. Starts the recording when the program starts.
#[allow(clippy::too_many_arguments)]
async fn upward(
    ctx: &Bastion,
    login: &Login,
    shared: &Relay,
    mut stop: Stop,
    mut client: Ahead,
    target: &ChannelWriteHalf<russh::client::Msg>,
    refusals: &Refusals,
) {
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
                let Some(tracker) = sftp.as_mut() else {
                    if !shared.record(&mut stop, |r| r.input(&data)).await {
                        break;
                    }
                    let sent = stop.guard(target.data_bytes(data)).await;
                    if !passed(sent, shared, login) {
                        return;
                    }
                    continue;
                };
                // sftp: each packet naming a file operation is run past the rules; a refused
                // one is kept back and answered here (permission denied), the session goes on.
                let pieces = tracker.feed(&data);
                let mut forward: Vec<u8> = Vec::with_capacity(data.len());
                let mut oversized = None;
                if !shared
                    .record(&mut stop, |r| {
                        r.input(&data);
                        for piece in pieces {
                            match piece {
                                Piece::Pass(bytes) => forward.extend(bytes),
                                Piece::Op { packet, id, op } => {
                                    match blocked(r, FlagOn::File, &op) {
                                        Some(why) => refusals.push(sftp_denied(id, &why), why),
                                        None => forward.extend(packet),
                                    }
                                    r.file(op);
                                }
                                Piece::Oversized { kind, len } => {
                                    oversized = Some(format!(
                                        "refused an sftp request of {len} bytes (type {kind}): only data writes may be larger than 64 KiB"
                                    ))
                                }
                            }
                        }
                    })
                    .await
                {
                    break;
                }
                if let Some(why) = oversized {
                    // Nothing of it reaches the target (what came before it did).
                    if !forward.is_empty() {
                        let _ = stop.guard(target.data_bytes(forward)).await;
                    }
                    shared.end(Some(why));
                    break;
                }
                if forward.is_empty() {
                    Some(Ok(()))
                } else {
                    stop.guard(target.data_bytes(forward)).await
                }
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
                shared.ask(Asked::Pty(term.clone(), col_width, row_height));
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
                shared.ask(Asked::Env(variable_name.clone(), variable_value.clone()));
                stop.guard(target.set_env(true, variable_name, variable_value))
                    .await
            }
            Some(ChannelMsg::RequestShell { .. })
                if allows(&login.options, Request::Shell, started) =>
            {
                match login.options.force_command.clone() {
                    // force-command replaces the shell too, as in sshd.
                    Some(cmd) => match start(ctx, login, shared, "exec", Some(cmd.clone())).await {
                        true => stop.guard(target.exec(true, cmd)).await,
                        false => break,
                    },
                    None => match start(ctx, login, shared, "shell", None).await {
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
                if !start(ctx, login, shared, "exec", Some(command.clone())).await {
                    break;
                }
                if let Some(rec) = shared.recorder.get() {
                    let files = scp_files(&command);
                    files.iter().for_each(|f| rec.file(f.clone()));
                    let refused = blocked(rec, FlagOn::Command, &command)
                        .or_else(|| files.iter().find_map(|f| blocked(rec, FlagOn::File, f)));
                    if let Some(why) = refused {
                        shared.end(Some(why));
                        break;
                    }
                }
                stop.guard(target.exec(true, command)).await
            }
            Some(ChannelMsg::RequestSubsystem { name, .. })
                if allows(&login.options, Request::Subsystem(&name), started) =>
            {
                if !start(ctx, login, shared, "subsystem", Some(name.clone())).await {
                    break;
                }
                sftp = Some(SftpTracker::default());
                refusals
                    .sftp
                    .store(true, std::sync::atomic::Ordering::Relaxed);
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
        if !passed(sent, shared, login) {
            return;
        }
    }
    shared.end(None);
}

/// Whether what was sent to the target went; a failed connection ends the session.
fn passed(sent: Option<Result<(), russh::Error>>, shared: &Relay, login: &Login) -> bool {
    match sent {
        Some(Ok(())) => true,
        Some(Err(_)) => {
            shared.end(Some(format!(
                "the connection to {} failed",
                login.target.name
            )));
            false
        }
        None => false,
    }
}

/// Runs an exact operation past the flag rules: why it is refused, when a rule blocks it
/// (the user reads it; an exec command's session ends with it, an sftp operation alone is
/// answered permission denied).
fn blocked(rec: &Recorder, on: FlagOn, text: &str) -> Option<String> {
    let rule = rec.operation(on, text)?;
    Some(format!(
        "blocked by rule {rule}: {}",
        crate::shown::shown(text)
    ))
}

/// Starts the recording, with what the target agreed to so far, and notes the program
/// request about to be forwarded; refuses the session if it cannot be recorded, since none
/// runs unrecorded.
async fn start(
    ctx: &Bastion,
    login: &Login,
    shared: &Relay,
    kind: &str,
    command: Option<String>,
) -> bool {
    let what = match kind {
        "subsystem" => format!("{} subsystem", command.as_deref().unwrap_or("")),
        other => other.to_string(),
    };
    let mut meta = {
        let agreed = lock(&shared.agreed);
        let id = crate::service::new_id();
        let mut meta = login.session_meta(id, kind, command, agreed.pty.clone(), Utc::now());
        meta.env = agreed.env.clone();
        meta
    };
    meta.env.sort();
    meta.review = ctx.service.review_due(&login.grant);
    match ctx
        .recorders
        .start(meta, ctx.service.flag_rules(&login.grant))
        .await
    {
        Ok(rec) => {
            if let Some(ender) = &shared.ender {
                rec.ends_with(ender.clone());
            }
            let _ = shared.recorder.set(rec);
            shared.ask(Asked::Program(what));
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

/// Sends the bastion's queued SFTP answers to the client (recorded as output), each with
/// its reason on stderr; false when the client is gone.
async fn answer_refusals(
    shared: &Relay,
    stop: &mut Stop,
    refusals: &Refusals,
    client: &ChannelWriteHalf<Msg>,
) -> bool {
    for (status, why) in refusals.take() {
        if !shared.record(stop, |r| r.output(&status)).await {
            return false;
        }
        let line = format!("ramp-ca: {why}\n").into_bytes();
        let sent = match stop.guard(client.data_bytes(status)).await {
            Some(Ok(())) => stop.guard(client.extended_data_bytes(1, line)).await,
            other => other,
        };
        if !matches!(sent, Some(Ok(()))) {
            return false;
        }
    }
    true
}

/// Target to client: output, exit status, end of stream, answers to requests; the expiry
/// warning on a terminal.
#[allow(clippy::too_many_arguments)]
async fn downward<F, Fut>(
    target_name: &str,
    shared: &Relay,
    mut stop: Stop,
    mut warning: Cutoff,
    mut target: Ahead,
    (client, handle): (&ChannelWriteHalf<Msg>, &server::Handle),
    say: &F,
    refusals: &Refusals,
) where
    F: Fn(String) -> Fut,
    Fut: Future<Output = ()>,
{
    // Each new warning is said once: the one before expiry, and the new end after an
    // extension.
    let mut said: Option<String> = None;
    let mut frames = SftpFrames::default();
    loop {
        // The select only picks; the work (and its awaits) happens after, outside it.
        enum Next {
            Msg(Option<ChannelMsg>),
            Warn(Option<String>),
            Refused,
        }
        let next = tokio::select! {
            msg = target.recv() => Next::Msg(msg),
            text = warning.wait_for(|w| w.is_some() && *w != said) => Next::Warn(text.ok().and_then(|t| t.clone())),
            _ = refusals.ready.notified() => Next::Refused,
            _ = stop.wait() => return,
        };
        let msg = match next {
            Next::Msg(msg) => msg,
            Next::Refused => {
                if frames.at_boundary()
                    && !answer_refusals(shared, &mut stop, refusals, client).await
                {
                    return;
                }
                continue;
            }
            Next::Warn(text) => {
                said = text.clone();
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
                let sftp = refusals.sftp();
                if sftp {
                    frames.feed(&data);
                }
                let sent = stop.guard(client.data_bytes(data)).await;
                // The bastion's answers go in between two of the target's packets.
                if sftp
                    && frames.at_boundary()
                    && matches!(sent, Some(Ok(())))
                    && !answer_refusals(shared, &mut stop, refusals, client).await
                {
                    return;
                }
                sent
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
            Some(ChannelMsg::Success) => {
                shared.answered(true, target_name);
                Some(Ok(()))
            }
            Some(ChannelMsg::Failure) => {
                shared.answered(false, target_name);
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
