//! The HTTP daemon: a thin axum adapter over [`Service`]. Every route but `/healthz` and
//! `/metrics` takes a request signed as [`crate::auth`] describes ([`Caller`]); paths and
//! bodies are [`crate::wire`]'s. [`run`] serves them with limits of our own.

mod caller;
mod server;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;

use crate::domain::session::SessionFilter;
use crate::recordings::format::encode_event;
use crate::service::Service;
use crate::wire::audit::{AuditQuery, AuditRecord, VerifyQuery};
use crate::wire::grants::{
    ExtendBody, GrantQuery, HostCertificate, ListQuery, ReasonBody, RequestBody, Revocation,
    RevokeBody, SignHostBody,
};
use crate::wire::sessions::{self, GrepBody, ReviewBody, SessionBody, SessionQuery};
use crate::wire::{self as routes};

pub use self::caller::{ApiError, Caller};
pub use self::server::{
    run, BODY_TIMEOUT, HEADER_TIMEOUT, MAX_BODY, MAX_CONNECTIONS, MAX_CONNECTIONS_PER_SOURCE,
    MAX_HEAD,
};

type App = Arc<Service>;

/// The routes, for tests that want to drive them directly.
pub fn router(app: App) -> Router {
    Router::new()
        .route(routes::HEALTHZ, get(|| async { "ok\n" }))
        .route(routes::METRICS, get(metrics))
        .route(routes::WHOAMI, get(whoami))
        .route(routes::REQUESTS, post(request))
        .route(routes::GRANTS, get(grants))
        .route(routes::GRANT, get(grant))
        .route(routes::GRANT_CERTIFICATE, post(certificate))
        .route(routes::GRANT_APPROVE, post(approve))
        .route(routes::GRANT_DENY, post(deny))
        .route(routes::GRANT_EXTEND, post(extend))
        .route(routes::REVOKE, post(revoke))
        .route(routes::KRL, get(krl))
        .route(routes::HOSTS_SIGN, post(sign_host))
        .route(routes::AUDIT, get(audit))
        .route(routes::AUDIT_VERIFY, get(verify_audit))
        .route(routes::AUDIT_CHECKPOINT, get(audit_checkpoint))
        .route(routes::AUDIT_CHECKPOINTS, get(audit_checkpoints))
        .route(routes::AUDIT_SIGNER, get(audit_signer))
        .route(routes::SESSIONS, get(sessions))
        .route(routes::SESSIONS_GREP, post(grep))
        .route(routes::SESSIONS_REVIEW, get(review_queue))
        .route(routes::REPORT, get(report))
        .route(routes::SESSION_REVIEW, post(review))
        .route(routes::SESSION, get(session))
        .route(routes::SESSION_END, post(end_session))
        .with_state(app)
}

/// `GET /metrics`: Prometheus text, unauthenticated like `/healthz` (the API binds loopback
/// by default; see the README before exposing it).
async fn metrics(State(app): State<App>) -> Result<Response, ApiError> {
    let text = app.metrics_text(Utc::now()).await?;
    Ok(([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response())
}

async fn whoami(State(app): State<App>, caller: Caller) -> Response {
    Json(app.whoami(&caller.user, &caller.key)).into_response()
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
    let id = app.grant_id(&caller.user, &id).await?;
    let out = app
        .certificate(&caller.user, &caller.key, &id, Utc::now())
        .await?;
    Ok(Json(out).into_response())
}

async fn grants(
    State(app): State<App>,
    Query(q): Query<ListQuery>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let out = app.grants(&caller.user, q.all, Utc::now()).await?;
    Ok(Json(out).into_response())
}

async fn grant(
    State(app): State<App>,
    Path(id): Path<String>,
    Query(q): Query<GrantQuery>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let id = app.grant_id(&caller.user, &id).await?;
    let out = app
        .wait_grant_while(
            &caller.user,
            &id,
            Duration::from_secs(q.wait),
            |v| match q.extension {
                true => {
                    v.grant.extension.is_some()
                        && v.grant.state == crate::domain::grant::State::Active
                }
                false => v.grant.state == crate::domain::grant::State::Pending,
            },
        )
        .await?;
    Ok(Json(out).into_response())
}

async fn approve(
    State(app): State<App>,
    Path(id): Path<String>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let id = app.grant_id(&caller.user, &id).await?;
    let out = app.approve(&caller.user, &id, Utc::now()).await?;
    Ok(Json(out).into_response())
}

async fn extend(
    State(app): State<App>,
    Path(id): Path<String>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let body: ExtendBody = caller.json()?;
    let id = app.grant_id(&caller.user, &id).await?;
    let out = app
        .extend(&caller.user, &caller.key, &id, &body, Utc::now())
        .await?;
    Ok(Json(out).into_response())
}

async fn deny(
    State(app): State<App>,
    Path(id): Path<String>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let body: ReasonBody = caller.json()?;
    let id = app.grant_id(&caller.user, &id).await?;
    let out = app
        .deny(&caller.user, &id, &body.reason, Utc::now())
        .await?;
    Ok(Json(out).into_response())
}

async fn revoke(State(app): State<App>, caller: Caller) -> Result<Response, ApiError> {
    let mut body: RevokeBody = caller.json()?;
    if let Some(given) = &body.grant {
        body.grant = Some(app.grant_id(&caller.user, given).await?);
    }
    let (out, cascade) = app
        .revoke_cascading(&caller.user, &body, body.dry_run, Utc::now())
        .await?;
    let answer = Revocation {
        cascade: Some((&cascade).into()),
        dry_run: body.dry_run,
        ..Revocation::from(out)
    };
    Ok(Json(answer).into_response())
}

async fn krl(State(app): State<App>, _caller: Caller) -> Result<Response, ApiError> {
    let bytes = app.krl().await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

async fn sign_host(State(app): State<App>, caller: Caller) -> Result<Response, ApiError> {
    let body: SignHostBody = caller.json()?;
    let certificate = app.sign_host(&caller.user, &body, Utc::now()).await?;
    Ok(Json(HostCertificate { certificate }).into_response())
}

async fn audit(
    State(app): State<App>,
    Query(q): Query<AuditQuery>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let out = match q.upto {
        Some(upto) => app.audit_upto(&caller.user, upto).await?,
        None => app.audit(&caller.user, q.since, Utc::now()).await?,
    };
    let out: Vec<AuditRecord> = out.into_iter().map(AuditRecord::from).collect();
    Ok(Json(out).into_response())
}

async fn verify_audit(
    State(app): State<App>,
    Query(q): Query<VerifyQuery>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let out = app.verify_audit(&caller.user, !q.skip_recordings).await?;
    Ok(Json(out).into_response())
}

/// A checkpoint of the chain's head signed now: its text, and the key that signed it.
async fn audit_checkpoint(State(app): State<App>, caller: Caller) -> Result<Response, ApiError> {
    let out = app.audit_checkpoint(&caller.user, Utc::now()).await?;
    Ok(Json(out).into_response())
}

/// Every checkpoint kept, newest first.
async fn audit_checkpoints(State(app): State<App>, caller: Caller) -> Result<Response, ApiError> {
    Ok(Json(app.kept_checkpoints(&caller.user).await?).into_response())
}

/// The audit-signer's public key, which every checkpoint must be signed with.
async fn audit_signer(State(app): State<App>, _caller: Caller) -> Response {
    Json(app.audit_signer()).into_response()
}

async fn sessions(
    State(app): State<App>,
    Query(filter): Query<sessions::SessionFilter>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let out = app
        .sessions(&caller.user, SessionFilter::from(filter), Utc::now())
        .await?;
    let out: Vec<sessions::Session> = out.into_iter().map(Into::into).collect();
    Ok(Json(out).into_response())
}

/// A session's metadata and its events, encoded as the recording keeps them (base64).
async fn session(
    State(app): State<App>,
    Path(id): Path<String>,
    Query(q): Query<SessionQuery>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let purpose = q.purpose.unwrap_or_else(|| "show".into());
    let id = app.session_id(&caller.user, &id).await?;
    let (meta, events) = app.session(&caller.user, &id, &purpose, Utc::now()).await?;
    let mut encoded = Vec::new();
    for e in &events {
        encode_event(&mut encoded, e.at_ms, e.kind, &e.data);
    }
    let body = SessionBody {
        events: base64::Engine::encode(&base64::engine::general_purpose::STANDARD, encoded),
        session: meta.into(),
    };
    Ok(Json(body).into_response())
}

async fn end_session(
    State(app): State<App>,
    Path(id): Path<String>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let body: ReasonBody = caller.json()?;
    let id = app.session_id(&caller.user, &id).await?;
    let out = app
        .stop_session(&caller.user, &id, &body.reason, Utc::now())
        .await?;
    Ok(Json(Revocation::from(out)).into_response())
}

async fn review_queue(State(app): State<App>, caller: Caller) -> Result<Response, ApiError> {
    let out = app.review_queue(&caller.user, Utc::now()).await?;
    let out: Vec<sessions::Session> = out.into_iter().map(Into::into).collect();
    Ok(Json(out).into_response())
}

/// `?since=SECS` (default 30 days).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportQuery {
    since: Option<i64>,
}

async fn report(
    State(app): State<App>,
    Query(q): Query<ReportQuery>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let since = q.since.unwrap_or(30 * 86400);
    let out = app.report(&caller.user, since, Utc::now()).await?;
    Ok(Json(out).into_response())
}

async fn review(
    State(app): State<App>,
    Path(id): Path<String>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let body: ReviewBody = caller.json()?;
    let id = app.session_id(&caller.user, &id).await?;
    let out = app
        .review(&caller.user, &id, body.verdict, &body.note, Utc::now())
        .await?;
    Ok(Json(sessions::Session::from(out)).into_response())
}

async fn grep(State(app): State<App>, caller: Caller) -> Result<Response, ApiError> {
    let body: GrepBody = caller.json()?;
    let out = app.grep(&caller.user, &body, Utc::now()).await?;
    Ok(Json(sessions::Grepped::from(out)).into_response())
}
