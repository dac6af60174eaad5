//! One task per channel: relays between the engineer's channel and the matching channel on
//! the target, records what passes, enforces what the certificate permits, and ends the
//! channel when the connection is cut off (expiry, revocation, shutdown).

use std::collections::VecDeque;
use std::sync::Arc;

use russh::server::{self, Msg};
use russh::{Channel, ChannelMsg};
use tokio::sync::watch;

use super::files::{scp_files, SftpTracker};
use super::login::Login;
use super::recorder::Recorder;
use super::{Ctx, Upstream};

/// How a channel ends when the bastion ends it.
pub type Cutoff = watch::Receiver<Option<String>>;

/// A reply owed to the client, in the order its requests came.
enum Owed {
    /// Forwarded to the target: its answer is the client's answer (sent when `want_reply`).
    Target { want_reply: bool },
    /// Decided here, to be sent in turn.
    Local(bool),
}

/// Relays a session channel (shell, exec, subsystem) until either side closes it.
pub async fn session(
    ctx: Arc<Ctx>,
    login: Arc<Login>,
    upstream: Result<Arc<Upstream>, String>,
    mut client: Channel<Msg>,
    handle: server::Handle,
    mut cutoff: Cutoff,
    mut warning: Cutoff,
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
    let mut target = match upstream {
        Ok(up) => match up.handle.channel_open_session().await {
            Ok(ch) => ch,
            Err(e) => {
                say(format!(
                    "cannot open a session on {}: {e}",
                    login.target.name
                ))
                .await;
                let _ = client.exit_status(255).await;
                let _ = client.close().await;
                return;
            }
        },
        Err(why) => {
            say(why).await;
            let _ = client.exit_status(255).await;
            let _ = client.close().await;
            return;
        }
    };
    let mut owed: VecDeque<Owed> = VecDeque::new();
    let mut recorder: Option<Arc<Recorder>> = None;
    let mut sftp: Option<SftpTracker> = None;
    let mut pty: Option<(String, u32, u32)> = None;
    let mut exit_status = None;
    let mut end_reason = None;
    let mut warned = false;

    // Starts the recording when the session says what it is; refuses the session if the
    // recording cannot be started, since no session runs unrecorded.
    let start = |kind: &str, command: Option<String>, pty: &Option<(String, u32, u32)>| {
        let meta = login.session_meta(kind, command, pty.clone());
        ctx.recorders.start(meta)
    };

    loop {
        tokio::select! {
            _ = cutoff.changed() => {
                let reason = cutoff.borrow().clone().unwrap_or_else(|| "access ended".into());
                say(reason.clone()).await;
                end_reason = Some(reason);
                let _ = target.close().await;
                break;
            }
            _ = warning.changed(), if !warned => {
                warned = true;
                let text = warning.borrow().clone();
                if let (Some(text), Some(_)) = (text, &pty) {
                    say(text).await;
                }
            }
            msg = client.wait() => {
                let Some(msg) = msg else { let _ = target.close().await; break };
                let forwarded = match msg {
                    ChannelMsg::Data { data } => {
                        if let Some(rec) = &recorder {
                            rec.input(&data);
                            if let Some(t) = sftp.as_mut() {
                                for entry in t.feed(&data) {
                                    rec.file(entry);
                                }
                            }
                        }
                        target.data_bytes(data).await
                    }
                    ChannelMsg::ExtendedData { data, ext } => target.extended_data_bytes(ext, data).await,
                    ChannelMsg::Eof => target.eof().await,
                    ChannelMsg::Close => { let _ = target.close().await; break }
                    ChannelMsg::RequestPty { want_reply, term, col_width, row_height, pix_width, pix_height, terminal_modes } => {
                        if login.options.pty {
                            pty = Some((term.clone(), col_width, row_height));
                            owed.push_back(Owed::Target { want_reply });
                            target.request_pty(true, &term, col_width, row_height, pix_width, pix_height, &terminal_modes).await
                        } else {
                            tracing::info!(user = %login.user, "pty refused: the certificate does not permit it");
                            if want_reply { owed.push_back(Owed::Local(false)); }
                            Ok(())
                        }
                    }
                    ChannelMsg::SetEnv { want_reply, variable_name, variable_value } => {
                        owed.push_back(Owed::Target { want_reply });
                        target.set_env(true, variable_name, variable_value).await
                    }
                    ChannelMsg::RequestShell { want_reply } | ChannelMsg::Exec { want_reply, .. } | ChannelMsg::RequestSubsystem { want_reply, .. }
                        if recorder.is_some() => {
                        // One program per session channel, as sshd does.
                        if want_reply { owed.push_back(Owed::Local(false)); }
                        Ok(())
                    }
                    ChannelMsg::RequestShell { want_reply } => {
                        let (kind, command) = match &login.options.force_command {
                            Some(cmd) => ("exec", Some(cmd.clone())),
                            None => ("shell", None),
                        };
                        match start(kind, command.clone(), &pty) {
                            Ok(rec) => {
                                recorder = Some(rec);
                                owed.push_back(Owed::Target { want_reply });
                                match command {
                                    Some(cmd) => target.exec(true, cmd).await,
                                    None => target.request_shell(true).await,
                                }
                            }
                            Err(e) => { refuse_unrecorded(&say, e).await; break }
                        }
                    }
                    ChannelMsg::Exec { want_reply, command } => {
                        // force-command replaces whatever was asked, as sshd does.
                        let command = login.options.force_command.clone()
                            .unwrap_or_else(|| String::from_utf8_lossy(&command).into_owned());
                        match start("exec", Some(command.clone()), &pty) {
                            Ok(rec) => {
                                for entry in scp_files(&command) {
                                    rec.file(entry);
                                }
                                recorder = Some(rec);
                                owed.push_back(Owed::Target { want_reply });
                                target.exec(true, command).await
                            }
                            Err(e) => { refuse_unrecorded(&say, e).await; break }
                        }
                    }
                    ChannelMsg::RequestSubsystem { want_reply, name } => {
                        if name != "sftp" || login.options.force_command.is_some() {
                            tracing::info!(user = %login.user, subsystem = %name, "subsystem refused");
                            if want_reply { owed.push_back(Owed::Local(false)); }
                            Ok(())
                        } else {
                            match start("subsystem", Some(name.clone()), &pty) {
                                Ok(rec) => {
                                    recorder = Some(rec);
                                    sftp = Some(SftpTracker::default());
                                    owed.push_back(Owed::Target { want_reply });
                                    target.request_subsystem(true, name).await
                                }
                                Err(e) => { refuse_unrecorded(&say, e).await; break }
                            }
                        }
                    }
                    ChannelMsg::WindowChange { col_width, row_height, pix_width, pix_height } => {
                        if let Some(rec) = &recorder {
                            rec.resize(col_width, row_height);
                        }
                        target.window_change(col_width, row_height, pix_width, pix_height).await
                    }
                    ChannelMsg::Signal { signal } => target.signal(signal).await,
                    ChannelMsg::RequestX11 { want_reply, .. } | ChannelMsg::AgentForward { want_reply } => {
                        // Forwarding back through the bastion is not offered; see the README.
                        if want_reply { owed.push_back(Owed::Local(false)); }
                        Ok(())
                    }
                    _ => Ok(()),
                };
                if forwarded.is_err() {
                    end_reason = Some(format!("the connection to {} failed", login.target.name));
                    break;
                }
                pay_local(&mut owed, &handle, id).await;
            }
            msg = target.wait() => {
                let Some(msg) = msg else { let _ = client.close().await; break };
                let delivered = match msg {
                    ChannelMsg::Data { data } => {
                        if let Some(rec) = &recorder { rec.output(&data); }
                        client.data_bytes(data).await
                    }
                    ChannelMsg::ExtendedData { data, ext } => {
                        if let Some(rec) = &recorder { rec.output(&data); }
                        client.extended_data_bytes(ext, data).await
                    }
                    ChannelMsg::Eof => client.eof().await,
                    ChannelMsg::Close => { let _ = client.close().await; break }
                    ChannelMsg::ExitStatus { exit_status: code } => {
                        exit_status = Some(code);
                        client.exit_status(code).await
                    }
                    ChannelMsg::ExitSignal { signal_name, core_dumped, error_message, lang_tag } => {
                        let _ = handle.exit_signal_request(id, signal_name, core_dumped, error_message, lang_tag).await;
                        Ok(())
                    }
                    ChannelMsg::Success | ChannelMsg::Failure => {
                        let ok = matches!(msg, ChannelMsg::Success);
                        if let Some(Owed::Target { want_reply }) = owed.front() {
                            if *want_reply {
                                reply(&handle, id, ok).await;
                            }
                            owed.pop_front();
                        }
                        pay_local(&mut owed, &handle, id).await;
                        Ok(())
                    }
                    _ => Ok(()),
                };
                if delivered.is_err() {
                    let _ = target.close().await;
                    break;
                }
            }
        }
        if let Some(rec) = &recorder {
            if rec.failed() {
                say("the session recording cannot be written; ending the session".into()).await;
                end_reason = Some("recording failed".into());
                let _ = target.close().await;
                break;
            }
            rec.backpressure().await;
        }
    }
    if end_reason.is_some() {
        let _ = client.exit_status(255).await;
        let _ = client.eof().await;
        let _ = client.close().await;
    }
    if let Some(rec) = recorder {
        rec.finish(exit_status, end_reason);
    }
}

async fn reply(handle: &server::Handle, id: russh::ChannelId, ok: bool) {
    let _ = if ok {
        handle.channel_success(id).await
    } else {
        handle.channel_failure(id).await
    };
}

/// Sends the local answers that are next in line.
async fn pay_local(owed: &mut VecDeque<Owed>, handle: &server::Handle, id: russh::ChannelId) {
    while let Some(Owed::Local(ok)) = owed.front() {
        reply(handle, id, *ok).await;
        owed.pop_front();
    }
}

async fn refuse_unrecorded<F, Fut>(say: &F, e: crate::store::StoreError)
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    tracing::error!(error = %e, "cannot start a recording; refusing the session");
    say(format!("cannot record this session ({e}); refusing it")).await;
}

/// Relays a direct-tcpip channel (ssh -L) already opened on both sides.
pub async fn tcpip(
    mut client: Channel<Msg>,
    mut target: Channel<client_msg::Msg>,
    rec: Arc<Recorder>,
    mut cutoff: Cutoff,
) {
    let mut reason = None;
    loop {
        tokio::select! {
            _ = cutoff.changed() => { reason = cutoff.borrow().clone(); break }
            msg = client.wait() => match msg {
                Some(ChannelMsg::Data { data }) => {
                    rec.input(&data);
                    if target.data_bytes(data).await.is_err() { break }
                }
                Some(ChannelMsg::Eof) => { let _ = target.eof().await; }
                None | Some(ChannelMsg::Close) => break,
                _ => {}
            },
            msg = target.wait() => match msg {
                Some(ChannelMsg::Data { data }) => {
                    rec.output(&data);
                    if client.data_bytes(data).await.is_err() { break }
                }
                Some(ChannelMsg::Eof) => { let _ = client.eof().await; }
                None | Some(ChannelMsg::Close) => break,
                _ => {}
            },
        }
        if rec.failed() {
            reason = Some("recording failed".into());
            break;
        }
        rec.backpressure().await;
    }
    let _ = target.close().await;
    let _ = client.close().await;
    rec.finish(None, reason);
}

/// The client-side channel message type, named apart from the server's.
mod client_msg {
    pub use russh::client::Msg;
}
