//! The HTTP daemon: a thin axum adapter over [`Service`]. Every route but `/healthz` takes a
//! request signed as [`crate::auth`] describes; bodies over 64 KiB are refused unread.
//! Connections are served by hyper with limits of our own ([`MAX_CONNECTIONS`] and the rest),
//! since `axum::serve` has neither a head timeout nor a connection cap.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use russh::keys::ssh_key::PublicKey;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{watch, Semaphore};

use crate::auth::{self, AuthError, Headers};
use crate::limits::{self, Gate, Limits, Refusal, Refused};
use crate::service::{
    GrepBody, RequestBody, RevokeBody, Service, ServiceError, SessionFilter, SignHostBody,
};
use crate::store::StoreError;

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

type App = Arc<Service>;

/// An error as the client sees it: a status and `{"error": "..."}`.
#[derive(Debug)]
pub struct ApiError(pub(crate) StatusCode, pub(crate) String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        let status = match &e {
            ServiceError::Denied(_) => StatusCode::FORBIDDEN,
            ServiceError::NotFound(_) => StatusCode::NOT_FOUND,
            ServiceError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ServiceError::Conflict(_) => StatusCode::CONFLICT,
            ServiceError::Store(_) | ServiceError::Ca(_) => {
                tracing::error!(error = %e, "internal error");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        ApiError(status, e.to_string())
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        tracing::warn!(error = %e, "unauthenticated request refused");
        ApiError(StatusCode::UNAUTHORIZED, e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ServiceError::Store(e).into()
    }
}

/// A verified caller and the body they signed.
pub struct Caller {
    pub user: String,
    pub key: PublicKey,
    pub body: Bytes,
}

impl Caller {
    /// The signed body as JSON, with a clear message when it is not what the route expects.
    pub(crate) fn json<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            ApiError(
                StatusCode::BAD_REQUEST,
                format!("invalid request body: {e}"),
            )
        })
    }
}

impl FromRequest<App> for Caller {
    type Rejection = ApiError;

    async fn from_request(req: Request, app: &App) -> Result<Self, ApiError> {
        let (parts, body) = req.into_parts();
        let too_large = || {
            ApiError(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body over {} KiB", MAX_BODY / 1024),
            )
        };
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
        if declared.is_some_and(|n| n > MAX_BODY) {
            return Err(too_large());
        }
        let body = tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, MAX_BODY))
            .await
            .map_err(|_| {
                ApiError(
                    StatusCode::REQUEST_TIMEOUT,
                    format!("request body not received within {BODY_TIMEOUT:?}"),
                )
            })?
            .map_err(|e| {
                let inner = e.into_inner();
                if inner.is::<http_body_util::LengthLimitError>() {
                    too_large()
                } else {
                    ApiError(
                        StatusCode::BAD_REQUEST,
                        format!("request body incomplete: {inner}"),
                    )
                }
            })?;
        let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
        let headers = Headers {
            timestamp: header(auth::HDR_TIMESTAMP),
            nonce: header(auth::HDR_NONCE),
            signature: header(auth::HDR_SIGNATURE),
        };
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let now = Utc::now();
        let signed = auth::verify(
            &app.policies(),
            parts.method.as_str(),
            path,
            &headers,
            &body,
            now,
        )?;
        // A compare-and-swap and an insert in sled: quicker inline than a hop to a thread.
        let fresh = app.store.remember_nonce(&signed.nonce, now)?;
        if !fresh {
            return Err(AuthError::Replay.into());
        }
        Ok(Caller {
            user: signed.user,
            key: signed.key,
            body,
        })
    }
}

/// Runs a service call off the async threads: reads that scan the ledger.
pub(crate) async fn blocking<T: Send + 'static>(
    app: &App,
    f: impl FnOnce(&Service) -> Result<T, ServiceError> + Send + 'static,
) -> Result<T, ApiError> {
    let app = app.clone();
    tokio::task::spawn_blocking(move || f(&app))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(ApiError::from)
}

/// The routes, for tests that want to drive them directly.
pub fn router(app: App) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/v1/whoami", get(whoami))
        .route("/v1/requests", post(request))
        .route("/v1/grants", get(grants))
        .route("/v1/grants/{id}", get(grant))
        .route("/v1/grants/{id}/certificate", post(certificate))
        .route("/v1/grants/{id}/approve", post(approve))
        .route("/v1/grants/{id}/deny", post(deny))
        .route("/v1/revoke", post(revoke))
        .route("/v1/krl", get(krl))
        .route("/v1/hosts/sign", post(sign_host))
        .route("/v1/audit", get(audit))
        .route("/v1/audit/verify", get(verify_audit))
        .route("/v1/audit/checkpoint", get(audit_checkpoint))
        .route("/v1/audit/signer", get(audit_signer))
        .route("/v1/sessions", get(sessions))
        .route("/v1/sessions/grep", post(grep))
        .route("/v1/sessions/{id}", get(session))
        .with_state(app)
}

/// `GET /metrics`: Prometheus text, unauthenticated like `/healthz` (the API binds loopback
/// by default; see the README before exposing it).
async fn metrics(State(app): State<App>) -> Result<Response, ApiError> {
    let text = blocking(&app, |s| {
        Ok(crate::metrics::render_now(&s.metrics, &s.store)?)
    })
    .await?;
    Ok(([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response())
}

/// Serves the API on an already-bound listener until `shutdown` completes, then drains the
/// requests in flight (bounded by [`DRAIN`]).
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
    let refuse = |socket, refusal: &Refusal| {
        let status = match refusal.why {
            Refused::Full => StatusCode::SERVICE_UNAVAILABLE,
            Refused::SourceFull | Refused::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        };
        answer_refused(socket, status, &refusal.to_string(), &refusing);
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
    let body = json!({ "error": why }).to_string();
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

async fn whoami(State(app): State<App>, caller: Caller) -> Json<serde_json::Value> {
    let p = app.policies();
    let roles = p
        .users
        .get(&caller.user)
        .map(|u| u.roles.clone())
        .unwrap_or_default();
    Json(json!({"user": caller.user, "roles": roles, "key": crate::keys::fingerprint(&caller.key)}))
}

async fn request(State(app): State<App>, caller: Caller) -> Result<Response, ApiError> {
    let body: RequestBody = caller.json()?;
    // Changes run inline: the work under the lock is short, and the wait for the disk is a
    // wait of this task, not of a thread.
    let out = app
        .request(&caller.user, &caller.key, &body, Utc::now())
        .await?;
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

async fn certificate(
    State(app): State<App>,
    Path(id): Path<String>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let out = app
        .certificate(&caller.user, &caller.key, &id, Utc::now())
        .await?;
    Ok(Json(out).into_response())
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(default)]
    all: bool,
}

async fn grants(
    State(app): State<App>,
    Query(q): Query<ListQuery>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let out = blocking(&app, move |s| s.grants(&caller.user, q.all, Utc::now())).await?;
    Ok(Json(out).into_response())
}

#[derive(Deserialize)]
struct GrantQuery {
    /// Seconds to wait while the grant is pending (long-poll), capped by the service.
    #[serde(default)]
    wait: u64,
}

async fn grant(
    State(app): State<App>,
    Path(id): Path<String>,
    Query(q): Query<GrantQuery>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let out = app
        .wait_grant(&caller.user, &id, Duration::from_secs(q.wait))
        .await?;
    Ok(Json(out).into_response())
}

async fn approve(
    State(app): State<App>,
    Path(id): Path<String>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let out = app.approve(&caller.user, &id, Utc::now()).await?;
    Ok(Json(out).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DenyBody {
    reason: String,
}

async fn deny(
    State(app): State<App>,
    Path(id): Path<String>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let body: DenyBody = caller.json()?;
    let out = app
        .deny(&caller.user, &id, &body.reason, Utc::now())
        .await?;
    Ok(Json(out).into_response())
}

async fn revoke(State(app): State<App>, caller: Caller) -> Result<Response, ApiError> {
    let body: RevokeBody = caller.json()?;
    let out = app.revoke(&caller.user, &body, Utc::now()).await?;
    Ok(Json(out).into_response())
}

async fn krl(State(app): State<App>, _caller: Caller) -> Result<Response, ApiError> {
    let bytes = blocking(&app, |s| s.krl()).await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

async fn sign_host(State(app): State<App>, caller: Caller) -> Result<Response, ApiError> {
    let body: SignHostBody = caller.json()?;
    let cert = blocking(&app, move |s| s.sign_host(&caller.user, &body, Utc::now())).await?;
    Ok(Json(json!({ "certificate": cert })).into_response())
}

#[derive(Deserialize)]
struct AuditQuery {
    /// Seconds back from now.
    since: Option<i64>,
    /// Records 1 to this one, instead of `since` (what a client checks checkpoints against).
    upto: Option<u64>,
}

async fn audit(
    State(app): State<App>,
    Query(q): Query<AuditQuery>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let out = blocking(&app, move |s| match q.upto {
        Some(upto) => s.audit_upto(&caller.user, upto),
        None => s.audit(&caller.user, q.since, Utc::now()),
    })
    .await?;
    Ok(Json(out).into_response())
}

#[derive(Deserialize)]
struct VerifyQuery {
    /// Compare recording seals with the chain but do not read the recording files.
    #[serde(default)]
    skip_recordings: bool,
}

async fn verify_audit(
    State(app): State<App>,
    Query(q): Query<VerifyQuery>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let out = blocking(&app, move |s| {
        s.verify_audit(&caller.user, !q.skip_recordings)
    })
    .await?;
    Ok(Json(out).into_response())
}

/// A checkpoint of the chain's head signed now: its text, and the key that signed it.
async fn audit_checkpoint(State(app): State<App>, caller: Caller) -> Result<Response, ApiError> {
    let signed = blocking(&app, move |s| s.audit_checkpoint(&caller.user, Utc::now())).await?;
    let c = &signed.checkpoint;
    Ok(Json(json!({
        "checkpoint": signed.text(), "seq": c.seq, "hash": c.hash, "at": c.at,
        "signer": c.signer, "signer_key": signer_line(&app),
    }))
    .into_response())
}

/// The audit-signer's public key, which every checkpoint must be signed with.
async fn audit_signer(State(app): State<App>, _caller: Caller) -> Json<serde_json::Value> {
    let key = app.keys.audit_signer.public_key();
    Json(json!({"signer_key": signer_line(&app), "fingerprint": crate::keys::fingerprint(key)}))
}

fn signer_line(app: &App) -> String {
    app.keys
        .audit_signer
        .public_key()
        .to_openssh()
        .unwrap_or_default()
}

async fn sessions(
    State(app): State<App>,
    Query(filter): Query<SessionFilter>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let out = blocking(&app, move |s| s.sessions(&caller.user, &filter, Utc::now())).await?;
    Ok(Json(out).into_response())
}

#[derive(Deserialize)]
struct SessionQuery {
    /// Why the recording is read (show, play, export), for the audit log.
    purpose: Option<String>,
}

/// A session's metadata and its events, encoded as the ledger keeps them (base64).
async fn session(
    State(app): State<App>,
    Path(id): Path<String>,
    Query(q): Query<SessionQuery>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let purpose = q.purpose.unwrap_or_else(|| "show".into());
    let (meta, events) = blocking(&app, move |s| {
        s.session(&caller.user, &id, &purpose, Utc::now())
    })
    .await?;
    let mut encoded = Vec::new();
    for e in &events {
        crate::recording::encode_event(&mut encoded, e.at_ms, e.kind, &e.data);
    }
    let events = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, encoded);
    Ok(Json(json!({ "session": meta, "events": events })).into_response())
}

async fn grep(State(app): State<App>, caller: Caller) -> Result<Response, ApiError> {
    let body: GrepBody = caller.json()?;
    let out = blocking(&app, move |s| s.grep(&caller.user, &body, Utc::now())).await?;
    Ok(Json(out).into_response())
}
