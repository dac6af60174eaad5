//! The live view: what is active, pending and connected now, pushed as server-sent events,
//! and the changes people make from it (approve, deny, revoke) through the service.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;

use super::{App, WebSession};
use crate::api::ApiError;
use crate::service::{ServiceError, WebUser};
use crate::wire::dashboard;
use crate::wire::grants::{ReasonBody, RequestBody, Revocation, RevokeBody};
use crate::wire::ui;

/// The live state is pushed at least this often (time left, bytes moved).
const TICK: Duration = Duration::from_secs(5);

pub(super) fn routes() -> Router<App> {
    Router::new()
        .route(ui::STATE, get(state))
        .route(ui::STREAM, get(stream))
        .route(ui::APPROVE, post(approve))
        .route(ui::DENY, post(deny))
        .route(ui::REVOKE, get(revoke_preview).post(revoke))
        .route(ui::END, post(end_session))
        .route(ui::REQUEST, post(request))
}

/// The live view as the browser session's user may see it.
async fn view(app: &App, session: WebSession) -> Result<dashboard::LiveView, ServiceError> {
    let web = WebUser {
        user: &session.user,
        csrf: &session.csrf,
        expires: session.expires,
    };
    app.service
        .live_view(&web, app.recorders.live(), Utc::now())
        .await
}

async fn state(State(app): State<App>, headers: HeaderMap) -> Result<Response, ApiError> {
    let session = app.web_user(&headers)?;
    Ok(Json(view(&app, session).await?).into_response())
}

/// `GET /ui/api/stream`: the live state as server-sent events, on every audit record
/// (debounced) and every [`TICK`], until the browser session ends.
async fn stream(State(app): State<App>, headers: HeaderMap) -> Result<Response, ApiError> {
    let session = app.web_user(&headers)?;
    let feed = app.service.subscribe_audit();
    let state = (app, session, feed, true);
    let events =
        futures_util::stream::unfold(state, |(app, session, mut feed, first)| async move {
            if !first {
                let tick = tokio::time::sleep(TICK);
                tokio::pin!(tick);
                tokio::select! {
                    _ = &mut tick => {}
                    _ = feed.recv() => {
                        // Let a burst of records settle into one push.
                        tokio::time::sleep(Duration::from_millis(150)).await;
                        while feed.try_recv().is_ok() {}
                    }
                }
            }
            // The browser session may have ended, or its user been removed, meanwhile.
            if !app.still_allowed(&session, false) {
                return None;
            }
            let data = match view(&app, session.clone()).await {
                Ok(v) => serde_json::to_string(&v).unwrap_or_default(),
                Err(e) => crate::wire::ErrorBody::new(e.to_string()).text(),
            };
            let event = SseEvent::default().event("state").data(data);
            Some((
                Ok::<_, std::convert::Infallible>(event),
                (app, session, feed, false),
            ))
        });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}

async fn approve(
    State(app): State<App>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let s = app.web_change(&headers)?;
    let out = app.service.approve(&s.user, &id, Utc::now()).await?;
    Ok(Json(out).into_response())
}

async fn deny(
    State(app): State<App>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<ReasonBody>,
) -> Result<Response, ApiError> {
    let s = app.web_change(&headers)?;
    let out = app
        .service
        .deny(&s.user, &id, &body.reason, Utc::now())
        .await?;
    Ok(Json(out).into_response())
}

/// Files a request from the page's form.
async fn request(
    State(app): State<App>,
    headers: HeaderMap,
    Json(body): Json<RequestBody>,
) -> Result<Response, ApiError> {
    let s = app.web_change(&headers)?;
    let out = app
        .service
        .request_from_page(&s.user, &body, Utc::now())
        .await?;
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

/// Ends a live session, saying why (see [`crate::service::Service::stop_session`]).
async fn end_session(
    State(app): State<App>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<ReasonBody>,
) -> Result<Response, ApiError> {
    let s = app.web_change(&headers)?;
    let out = app
        .service
        .stop_session(&s.user, &id, &body.reason, Utc::now())
        .await?;
    Ok(Json(Revocation::from(out)).into_response())
}

/// What revoking grant `id` would reach, shown before the page confirms.
async fn revoke_preview(
    State(app): State<App>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let s = app.web_user(&headers)?;
    let revoke = RevokeBody {
        grant: Some(id),
        reason: Some("preview".into()),
        ..RevokeBody::default()
    };
    let (out, cascade) = app
        .service
        .revoke_cascading(&s.user, &revoke, true, Utc::now())
        .await?;
    let answer = Revocation {
        cascade: Some((&cascade).into()),
        dry_run: true,
        ..Revocation::from(out)
    };
    Ok(Json(answer).into_response())
}

async fn revoke(
    State(app): State<App>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<ReasonBody>,
) -> Result<Response, ApiError> {
    let s = app.web_change(&headers)?;
    if body.reason.trim().is_empty() {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "a revocation from the dashboard needs a reason".into(),
        ));
    }
    let revoke = RevokeBody {
        grant: Some(id),
        reason: Some(body.reason),
        ..RevokeBody::default()
    };
    let (out, cascade) = app
        .service
        .revoke_cascading(&s.user, &revoke, false, Utc::now())
        .await?;
    let answer = Revocation {
        cascade: Some((&cascade).into()),
        ..Revocation::from(out)
    };
    Ok(Json(answer).into_response())
}
