//! Serving the API: hyper with limits of our own (`axum::serve` has neither a head timeout
//! nor a connection cap): connections past the caps get an answer and are closed, heads and
//! bodies that come too slowly are cut off, and a stop drains the requests in flight. With a
//! TLS configuration every connection is HTTPS: the handshake runs in the connection's own
//! task, counted by the caps and bounded by the head timeout, and plain HTTP sent there is
//! answered with a 400 that says to use https.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::Router;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

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
/// within `service::MAX_GRANT_WAIT`). Over TLS the handshake must finish within it too
/// (before the head's own wait starts).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest request head; a larger one gets 431. A signed request needs well under 1 KiB.
pub const MAX_HEAD: usize = 16 * 1024;

/// A request body must arrive within this long of its head; a slower one gets 408.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a stop waits for requests in flight.
const DRAIN: Duration = Duration::from_secs(10);

/// Refused connections being answered at once; past it they are closed without an answer.
const MAX_REFUSING: usize = 64;

/// The first byte of every TLS connection: a handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// How long a refused connection is kept to read the request its answer cuts short, so that
/// closing does not reset the connection before the client reads the answer.
const REFUSE_LINGER: Duration = Duration::from_secs(2);

/// Serves `routes` on `listener` (over TLS when `tls` is given) until `shutdown`, then drains
/// the requests in flight (bounded by `DRAIN`).
pub async fn run(
    listener: tokio::net::TcpListener,
    routes: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEAD)
        .max_header_size(MAX_HEAD);
    let http = Arc::new(http);
    let tls = tls.map(TlsAcceptor::from);
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
        let (http, routes, tls) = (http.clone(), routes.clone(), tls.clone());
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let _admission = admission;
            let ended = match tls {
                None => serve(&http, socket, routes, &mut stop).await,
                Some(tls) => {
                    let opened = tokio::select! {
                        opened = tokio::time::timeout(HEADER_TIMEOUT, handshake(&tls, socket)) => opened,
                        _ = stop.changed() => return,
                    };
                    match opened {
                        Ok(Ok(stream)) => serve(&http, stream, routes, &mut stop).await,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "no TLS handshake within the head timeout; closed");
                            return;
                        }
                    }
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

/// One connection's HTTP, until it ends or a stop lets its request in flight finish.
async fn serve<I>(
    http: &hyper::server::conn::http1::Builder,
    io: I,
    routes: Router,
    stop: &mut watch::Receiver<bool>,
) -> hyper::Result<()>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = http.serve_connection(
        hyper_util::rt::TokioIo::new(io),
        hyper_util::service::TowerToHyperService::new(routes),
    );
    tokio::pin!(conn);
    tokio::select! {
        ended = conn.as_mut() => ended,
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    }
}

/// The server side of a TLS handshake. A connection that starts with anything but a TLS
/// record (plain HTTP, most likely) is told in plain HTTP to use https, and closed.
async fn handshake(tls: &TlsAcceptor, socket: TcpStream) -> std::io::Result<TlsStream<TcpStream>> {
    let mut first = [0u8; 1];
    if socket.peek(&mut first).await? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    if first[0] != TLS_HANDSHAKE_RECORD {
        let why = "this port serves HTTPS: use an https:// URL (ramp-ca --server https://...)";
        answer(socket, &plain_answer(StatusCode::BAD_REQUEST, why, false)).await;
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "plain HTTP on the HTTPS port; told to use https",
        ));
    }
    tls.accept(socket).await
}

/// Answers a connection the [`Gate`] refused with `status` and closes it, off the accept loop.
fn answer_refused(socket: TcpStream, status: StatusCode, why: &str, refusing: &Arc<Semaphore>) {
    let answer = plain_answer(status, why, true);
    let Ok(permit) = refusing.clone().try_acquire_owned() else {
        // Too many being answered already: a best-effort answer, then close.
        let _ = socket.try_write(answer.as_bytes());
        return;
    };
    tokio::spawn(async move {
        let _permit = permit;
        self::answer(socket, &answer).await;
    });
}

/// A whole HTTP/1.1 answer carrying an error body, closing the connection.
fn plain_answer(status: StatusCode, why: &str, retry: bool) -> String {
    let body = crate::wire::ErrorBody::new(why).text();
    let retry = if retry { "retry-after: 1\r\n" } else { "" };
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{retry}connection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Writes `answer` and closes, reading (bounded) what the client still sends, so that closing
/// does not reset the connection before the client reads the answer.
async fn answer(mut socket: TcpStream, answer: &str) {
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
}
