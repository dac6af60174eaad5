//! The Review page: the browser's user's review queue and their verdict on a session, through
//! the same service calls as `ramp-ca sessions review` (so the same rules: never one's own
//! session, never a live one, never twice, only with a role its review names). The verdict
//! carries the session's CSRF token like every other change from the page.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;

use super::App;
use crate::api::ApiError;
use crate::wire::sessions::{ReviewBody, Session};
use crate::wire::ui;

pub(super) fn routes() -> Router<App> {
    Router::new()
        .route(ui::REVIEWS, get(queue))
        .route(ui::REVIEW, post(verdict))
}

/// `GET /ui/api/reviews`: what the user may sign off, the one due first first (empty for
/// someone no review names, as on the command line).
async fn queue(State(app): State<App>, headers: HeaderMap) -> Result<Response, ApiError> {
    let s = app.web_user(&headers)?;
    let rows = app.service.review_page(&s.user, Utc::now()).await?;
    Ok(Json(rows).into_response())
}

/// `POST /ui/api/reviews/{id}`: the user's verdict, audited as `session-review`.
async fn verdict(
    State(app): State<App>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<ReviewBody>,
) -> Result<Response, ApiError> {
    let s = app.web_change(&headers)?;
    let out = app
        .service
        .review(&s.user, &id, body.verdict, &body.note, Utc::now())
        .await?;
    Ok(Json(Session::from(out)).into_response())
}
