//! Serving the API: hyper with limits of our own (`axum::serve` has neither a head timeout
//! nor a connection cap): connections past the caps get an answer and are closed, heads and
//! bodies that come too slowly are cut off, and a stop drains the requests in flight.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::Router;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{watch, Semaphore};

use crate::limits::{self, Cap, Gate, Limits, TurnedAway};

/// Largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;

/// HTTP connections open at once, from everyone; past it a new connection gets 503 at once.
pub const MAX_CONNECTIONS: usize = 1024;

/// HTTP connections open at once from one source (an IPv4 address or an IPv6 /64); past it a
/// new connection gets 429 at once. The command line uses one connection a command.
pub const MAX_CONNECTIONS_PER_SOURCE: usize = 128;

/// A request's head (request line and headers) must arrive within this long once the
/// connection is ready for it, so slow heads (slowloris) and idle keep-alive connections are
/// closed; the command line's `--wait` long-polls (one request at a time, each answered
/// within `service::MAX_GRANT_WAIT`).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest request head; a larger one gets 431. A signed request needs well under 1 KiB.
pub const MAX_HEAD: usize = 16 * 1024;

/// A request body must arrive within this long of its head; a slower one gets 408.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a stop waits for requests in flight.
const DRAIN: Duration = Duration::from_secs(10);

/// Refused connections being answered at once; past it they are closed without an answer.
const MAX_REFUSING: usize = 64;

/// How long a refused connection is kept to read the request its answer cuts short, so that
/// closing does not reset the connection before the client reads the answer.
const REFUSE_LINGER: Duration = Duration::from_secs(2);

/// requests in flight (bounded by `DRAIN`).
pub async fn run(
    listener: tokio::net::TcpListener,
    routes: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEAD)
        .max_header_size(MAX_HEAD);
    let gate = Gate::new(Limits {
        what: "connections",
        total: MAX_CONNECTIONS,
        per_source: MAX_CONNECTIONS_PER_SOURCE,
        rate: None,
        max_sources: MAX_CONNECTIONS,
    });
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    // Every connection holds a receiver: `closed()` on the sender means all have ended.
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    let refuse = |socket, turned: &TurnedAway| {
        let status = match turned.why {
            Cap::Full => StatusCode::SERVICE_UNAVAILABLE,
            Cap::SourceFull | Cap::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        };
        answer_refused(socket, status, &turned.to_string(), &refusing);
    };
    while let Some((socket, peer, admission)) =
        limits::accept("API", &listener, &gate, &mut shutdown, refuse).await
    {
        let _ = socket.set_nodelay(true);
        let conn = http.serve_connection(
            hyper_util::rt::TokioIo::new(socket),
            hyper_util::service::TowerToHyperService::new(routes.clone()),
        );
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let _admission = admission;
            tokio::pin!(conn);
            let ended = tokio::select! {
                ended = conn.as_mut() => ended,
                _ = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(%peer, error = %e, "API connection ended with an error");
            }
            drop(stop);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(stop_rx);
    if tokio::time::timeout(DRAIN, stop_tx.closed()).await.is_err() {
        tracing::warn!(
            open = gate.waiting(),
            "API requests still running at stop; leaving them"
        );
    }
    Ok(())
}

/// Answers a connection the [`Gate`] refused with `status` and closes it, off the accept loop.
fn answer_refused(socket: TcpStream, status: StatusCode, why: &str, refusing: &Arc<Semaphore>) {
    let body = crate::wire::ErrorBody::new(why).text();
    let answer = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let Ok(permit) = refusing.clone().try_acquire_owned() else {
        // Too many being answered already: a best-effort answer, then close.
        let _ = socket.try_write(answer.as_bytes());
        return;
    };
    tokio::spawn(async move {
        let _permit = permit;
        let mut socket = socket;
        let _ = tokio::time::timeout(REFUSE_LINGER, async {
            socket.write_all(answer.as_bytes()).await?;
            socket.shutdown().await?;
            let mut sink = [0u8; 4096];
            let mut left = MAX_HEAD + MAX_BODY;
            while left > 0 {
                match socket.read(&mut sink).await? {
                    0 => break,
                    n => left = left.saturating_sub(n),
                }
            }
            std::io::Result::Ok(())
        })
        .await;
    });
}
