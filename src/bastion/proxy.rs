//! One task per channel relays between the engineer's channel and the matching channel on
//! the target, one future per direction, so a side that is slow to read never stops the
//! other direction nor the cut-off. It records what passes, forwards only the requests the
//! certificate permits ([`allows`], which the Handler also uses), hands the target's answer
//! to each forwarded request back to the Handler (which answers the client with it), and
//! ends the channel when the connection is cut off (expiry, revocation, shutdown) or the
//! target refuses its program.

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

/// Messages read ahead per direction of one channel (up to 16 MiB of 32 KiB packets).
/// russh's connection loop waits whenever a channel's own queue is full, and while it waits
/// nothing moves on the connection, window adjustments included; reading ahead keeps it moving
/// so one direction waiting on its peer's window does not stall the other direction's
/// replies (a `cat` echoing a large upload is a test). russh grants window as data arrives,
/// so only this buffer absorbs what a peer sends while its reader stalls: it must stay large.
pub const READ_AHEAD: usize = 512;

/// Bytes all the channels of one connection may hold read ahead in each direction: the bound
/// on what a client that stops reading (or a target that stops reading) makes the bastion hold
/// for one connection, however many channels it opens. A stalled channel holding it all slows
/// the other channels of its own connection only, which russh's one loop per connection would
/// stall anyway. Half of [`READ_AHEAD`], and as large as the client's window.
pub const CONNECTION_READ_AHEAD: usize = 8 * 1024 * 1024;

/// Messages russh queues per channel before its connection loop waits (its default is 100):
/// small, since [`read_ahead`] empties it at once while the budget lasts, and it is what each
/// channel holds beyond the budget when the budget is spent.
pub const RUSSH_CHANNEL_QUEUE: usize = 4;

/// Budget units: read-ahead is counted in KiB.
const UNIT: usize = 1024;

/// A connection's read-ahead budgets, one per direction ([`CONNECTION_READ_AHEAD`]).
#[derive(Clone)]
pub struct Budgets {
    up: Arc<tokio::sync::Semaphore>,
    down: Arc<tokio::sync::Semaphore>,
}

impl Default for Budgets {
    fn default() -> Budgets {
        let units = CONNECTION_READ_AHEAD / UNIT;
        Budgets {
            up: Arc::new(tokio::sync::Semaphore::new(units)),
            down: Arc::new(tokio::sync::Semaphore::new(units)),
        }
    }
}

/// One direction's read-ahead as its consumer sees it: each message holds its share of the
/// connection's budget until the consumer asks for the next one (by then it has been passed on).
struct Ahead {
    rx: tokio::sync::mpsc::Receiver<(ChannelMsg, tokio::sync::OwnedSemaphorePermit)>,
    held: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Ahead {
    async fn recv(&mut self) -> Option<ChannelMsg> {
        self.held = None;
        let (msg, share) = self.rx.recv().await?;
        self.held = Some(share);
        Some(msg)
    }
}

/// The target's answer to a request the client asked for, as the Handler waits for it.
pub type Answers = tokio::sync::mpsc::Sender<bool>;

/// A request forwarded to the target, waiting for its answer.
#[derive(Debug)]
enum Asked {
    Pty(String, u32, u32),
    Env(String, String),
    /// The program: shell, exec or subsystem, as the recording names it.
    Program(String),
}

/// Reads a channel ahead into `to`, each message taking its size from `budget` first,
/// until the channel ends or stops.
async fn read_ahead(
    mut from: ChannelReadHalf,
    to: tokio::sync::mpsc::Sender<(ChannelMsg, tokio::sync::OwnedSemaphorePermit)>,
    budget: Arc<tokio::sync::Semaphore>,
    mut stop: Stop,
) {
    loop {
        let msg = tokio::select! {
            msg = from.wait() => msg,
            _ = stop.wait() => return,
        };
        let last = matches!(msg, None | Some(ChannelMsg::Close));
        if let Some(msg) = msg {
            let size = match &msg {
                ChannelMsg::Data { data } | ChannelMsg::ExtendedData { data, .. } => data.len(),
                _ => 0,
            };
            let units = size.div_ceil(UNIT).clamp(1, CONNECTION_READ_AHEAD / UNIT) as u32;
            let Some(Ok(share)) = stop.guard(budget.clone().acquire_many_owned(units)).await else {
                return;
            };
            if stop
                .guard(to.send((msg, share)))
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
    tokio::sync::mpsc::Sender<(ChannelMsg, tokio::sync::OwnedSemaphorePermit)>,
    Ahead,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(READ_AHEAD);
    (tx, Ahead { rx, held: None })
}

/// What the target agreed to before the program started: the session's recording records it.
#[derive(Debug, Default)]
struct Agreed {
    pty: Option<(String, u32, u32)>,
    env: Vec<String>,
}

/// What both directions of one channel share.
struct Shared {
    /// Set when the program starts; from then on every byte is recorded.
    recorder: OnceCell<Arc<Recorder>>,
    /// Why the bastion ended the channel, when it did (first reason wins).
    end_reason: Mutex<Option<String>>,
    exit_status: Mutex<Option<u32>>,
    done: watch::Sender<bool>,
    /// Requests forwarded to the target, oldest first; the target answers in order.
    asked: Mutex<std::collections::VecDeque<Asked>>,
    /// Where the target's answers go (the Handler, which answers the client).
    answers: Option<Answers>,
    agreed: Mutex<Agreed>,
}

impl Shared {
    /// A channel's shared state, recording into `recorder` once it is set, and the stop
    /// signal both directions watch.
    fn new(
        recorder: OnceCell<Arc<Recorder>>,
        cutoff: &Cutoff,
        answers: Option<Answers>,
    ) -> (Shared, Stop) {
        let (done, done_rx) = watch::channel(false);
        let shared = Shared {
            recorder,
            end_reason: Mutex::new(None),
            exit_status: Mutex::new(None),
            done,
            asked: Mutex::new(std::collections::VecDeque::new()),
            answers,
            agreed: Mutex::new(Agreed::default()),
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

    /// Notes a request about to be forwarded, so its answer finds it.
    fn ask(&self, what: Asked) {
        lock(&self.asked).push_back(what);
    }

    /// The target answered the oldest request: tell the Handler, keep what it agreed to, and
    /// end the channel if it refused the program (the recording ends with why).
    fn answered(&self, ok: bool, target: &str) {
        let asked = lock(&self.asked).pop_front();
        if let Some(answers) = &self.answers {
            let _ = answers.try_send(ok);
        }
        match (asked, ok) {
            (Some(Asked::Pty(term, cols, rows)), true) => {
                lock(&self.agreed).pty = Some((term, cols, rows))
            }
            (Some(Asked::Env(name, value)), true) => {
                lock(&self.agreed).env.push(format!("{name}={value}"))
            }
            (Some(Asked::Program(what)), false) => {
                self.end(Some(format!("{target} refused the {what} request")))
            }
            (Some(refused), false) => {
                tracing::info!(target, ?refused, "the target refused a channel request")
            }
            _ => {}
        }
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

/// Hands freed memory back to the system after a channel ends, at most once a second: glibc
/// keeps freed buffers in per-thread arenas, so a burst of stalled channels would otherwise
/// leave the daemon holding their peak long after they closed.
pub fn give_back_memory() {
    use std::sync::atomic::{AtomicI64, Ordering};
    static LAST: AtomicI64 = AtomicI64::new(0);
    let now = chrono::Utc::now().timestamp_millis();
    let last = LAST.load(Ordering::Relaxed);
    if now - last < 1000
        || LAST
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
    {
        return;
    }
    #[cfg(target_env = "gnu")]
    tokio::task::spawn_blocking(|| {
        // SAFETY: malloc_trim only releases free memory; it is safe to call at any time.
        unsafe {
            libc::malloc_trim(0);
        }
    });
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Relays a session channel (shell, exec, subsystem) until either side closes it; the
/// target's answer to each request goes to `answers`.
#[allow(clippy::too_many_arguments)]
pub async fn session(
    ctx: Arc<Ctx>,
    login: Arc<Login>,
    upstream: Result<Arc<Upstream>, String>,
    client: Channel<Msg>,
    handle: server::Handle,
    cutoff: Cutoff,
    warning: Cutoff,
    answers: Answers,
    budgets: Budgets,
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
    let (shared, stop) = Shared::new(OnceCell::new(), &cutoff, Some(answers));
    let (up_tx, up_rx) = queue();
    let (down_tx, down_rx) = queue();
    tokio::join!(
        read_ahead(client_rx, up_tx, budgets.up.clone(), stop.clone()),
        upward(&ctx, &login, &shared, stop.clone(), up_rx, &target_tx),
        read_ahead(target_rx, down_tx, budgets.down.clone(), stop.clone()),
        downward(
            &login.target.name,
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
    mut client: Ahead,
    target: &ChannelWriteHalf<russh::client::Msg>,
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
                    Some(cmd) => match start(ctx, login, shared, "exec", Some(cmd.clone())) {
                        true => stop.guard(target.exec(true, cmd)).await,
                        false => break,
                    },
                    None => match start(ctx, login, shared, "shell", None) {
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
                if !start(ctx, login, shared, "exec", Some(command.clone())) {
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
                if !start(ctx, login, shared, "subsystem", Some(name.clone())) {
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

/// Starts the recording, with what the target agreed to so far, and notes the program
/// request about to be forwarded; refuses the session if it cannot be recorded, since none
/// runs unrecorded.
fn start(ctx: &Ctx, login: &Login, shared: &Shared, kind: &str, command: Option<String>) -> bool {
    let what = match kind {
        "subsystem" => format!("{} subsystem", command.as_deref().unwrap_or("")),
        other => other.to_string(),
    };
    let mut meta = {
        let agreed = lock(&shared.agreed);
        let mut meta = login.session_meta(kind, command, agreed.pty.clone());
        meta.env = agreed.env.clone();
        meta
    };
    meta.env.sort();
    match ctx.recorders.start(meta) {
        Ok(rec) => {
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

/// Target to client: output, exit status, end of stream, answers to requests; the expiry
/// warning on a terminal.
#[allow(clippy::too_many_arguments)]
async fn downward<F, Fut>(
    target_name: &str,
    shared: &Shared,
    mut stop: Stop,
    mut warning: Cutoff,
    mut target: Ahead,
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

/// Relays a direct-tcpip channel (ssh -L / -W), already opened on both sides and recorded.
pub async fn tcpip(
    client: Channel<Msg>,
    target: Channel<russh::client::Msg>,
    rec: Arc<Recorder>,
    cutoff: Cutoff,
    budgets: Budgets,
) {
    let (shared, stop) = Shared::new(OnceCell::new_with(Some(rec.clone())), &cutoff, None);
    let (client_rx, client_tx) = client.split();
    let (target_rx, target_tx) = target.split();
    let (up_tx, up_rx) = queue();
    let (down_tx, down_rx) = queue();
    tokio::join!(
        read_ahead(client_rx, up_tx, budgets.up.clone(), stop.clone()),
        pump(&shared, stop.clone(), up_rx, &target_tx, true),
        read_ahead(target_rx, down_tx, budgets.down.clone(), stop.clone()),
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
    mut from: Ahead,
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
