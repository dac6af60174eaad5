//! One task per channel relays between the engineer's channel and the matching channel on
//! the target, one future per direction, so a side that is slow to read never stops the
//! other direction nor the cut-off. It records what passes, forwards only the requests the
//! certificate permits ([`allows`], which the Handler also uses), hands the target's answer
//! to each forwarded request back to the Handler (which answers the client with it), and
//! ends the channel when the connection is cut off (expiry, revocation, shutdown) or the
//! target refuses its program.

use std::future::Future;
use std::sync::{Arc, Mutex};

use russh::server::Msg;
use russh::{Channel, ChannelMsg, ChannelReadHalf, ChannelWriteHalf};
use tokio::sync::{watch, OnceCell};

use crate::domain::policy::CertOptions;
use crate::recordings::writer::Recorder;

mod session;

pub use self::session::session;

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
/// small, since `read_ahead` empties it at once while the budget lasts, and it is what each
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
struct Relay {
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
    /// The connection's cut-off, handed to the recording so the session can be ended.
    ender: Option<watch::Sender<Option<String>>>,
}

impl Relay {
    /// A channel's shared state, recording into `recorder` once it is set, and the stop
    /// signal both directions watch.
    fn new(
        recorder: OnceCell<Arc<Recorder>>,
        cutoff: &Cutoff,
        answers: Option<Answers>,
        ender: Option<watch::Sender<Option<String>>>,
    ) -> (Relay, Stop) {
        let (done, done_rx) = watch::channel(false);
        let shared = Relay {
            recorder,
            end_reason: Mutex::new(None),
            exit_status: Mutex::new(None),
            done,
            asked: Mutex::new(std::collections::VecDeque::new()),
            answers,
            agreed: Mutex::new(Agreed::default()),
            ender,
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

/// Relays a direct-tcpip channel (ssh -L / -W), already opened on both sides and recorded.
pub async fn tcpip(
    client: Channel<Msg>,
    target: Channel<russh::client::Msg>,
    rec: Arc<Recorder>,
    cutoff: Cutoff,
    budgets: Budgets,
) {
    let (shared, stop) = Relay::new(OnceCell::new_with(Some(rec.clone())), &cutoff, None, None);
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
    shared: &Relay,
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
