//! The web dashboard on the API port: `/ui/`. Nobody gets in anonymously: `ramp-ca
//! dashboard` (a signed request like every client command) gets a one-time link that lives
//! [`Settings::link_ttl`]; opening it starts a browser session that carries that user and
//! lasts [`Settings::session_ttl`]. This module keeps the browser sessions; everything else
//! is asked of the service, with the same authorisation and audit as the command line:
//! the live view (`live`: approve, deny, revoke, with the session's CSRF token),
//! recordings and the audit log (`review`), and the Review page's queue and verdicts
//! (`signoff`).
//!
//! The page is one small HTML/JS/CSS bundle of our own (`assets/`), its paths filled in from
//! [`crate::wire::ui`]. Live state comes as server-sent events, pushed on every audit record
//! and every few seconds; terminal screens are rendered by [`crate::recordings::screen`].

mod live;
mod review;
mod signoff;

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::api::{ApiError, Caller};
use crate::domain::policy;
use crate::recordings::writer::Recorders;
use crate::service::Service;
use crate::wire::dashboard::{LinkBody, LoginQuery};
use crate::wire::{self, ui};

/// Cookie that carries a browser session.
const COOKIE: &str = "ramp_session";
/// Header that must carry the session's CSRF token on every change.
const CSRF_HEADER: &str = "x-ramp-csrf";

/// Service-config options of the dashboard (`dashboard:` in the config file).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// How long a browser session lasts, like `8h`.
    pub session_ttl: String,
    /// How long a login link may wait to be opened, like `2m`.
    pub link_ttl: String,
    /// The address people reach the API at (`https://ramp.example.com`), for the links
    /// `ramp-ca dashboard` prints; by default the client's `--server`.
    pub public_url: Option<String>,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            session_ttl: "8h".into(),
            link_ttl: "2m".into(),
            public_url: None,
        }
    }
}

/// Parsed settings.
#[derive(Debug, Clone)]
struct Ttls {
    session: chrono::Duration,
    link: chrono::Duration,
}

impl Settings {
    /// Whether the settings make sense, with what is wrong.
    pub fn check(&self) -> Result<(), String> {
        self.ttls().map(|_| ())
    }

    fn ttls(&self) -> Result<Ttls, String> {
        let parse = |field: &str, text: &str| {
            policy::parse_duration(text)
                .and_then(|d| chrono::Duration::from_std(d).ok())
                .ok_or_else(|| format!("dashboard.{field}: `{text}` is not a duration like 2m, 8h"))
        };
        Ok(Ttls {
            session: parse("session_ttl", &self.session_ttl)?,
            link: parse("link_ttl", &self.link_ttl)?,
        })
    }
}

/// A browser session.
#[derive(Debug, Clone)]
struct WebSession {
    user: String,
    csrf: String,
    expires: DateTime<Utc>,
}

/// What the dashboard's routes share.
pub struct Dashboard {
    service: Arc<Service>,
    recorders: Arc<Recorders>,
    ttls: Ttls,
    public_url: Option<String>,
    /// Whether the session cookie is `Secure`: the API serves HTTPS, or `public_url` is
    /// https (a TLS proxy in front).
    secure_cookie: bool,
    /// One-time login tokens -> (user, expiry).
    links: Mutex<HashMap<String, (String, DateTime<Utc>)>>,
    sessions: Mutex<HashMap<String, WebSession>>,
    /// The audit chain's last verification, and when.
    verified: Mutex<Option<(std::time::Instant, wire::audit::AuditReport)>>,
}

type App = Arc<Dashboard>;

fn token() -> String {
    hex::encode(rand::random::<[u8; 24]>())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Dashboard {
    pub fn new(
        service: Arc<Service>,
        recorders: Arc<Recorders>,
        settings: &Settings,
        https: bool,
    ) -> Result<Arc<Dashboard>, String> {
        let public_https = settings
            .public_url
            .as_deref()
            .is_some_and(|u| u.starts_with("https://"));
        Ok(Arc::new(Dashboard {
            service,
            recorders,
            ttls: settings.ttls()?,
            public_url: settings.public_url.clone(),
            secure_cookie: https || public_https,
            links: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
            verified: Mutex::new(None),
        }))
    }

    /// The browser session a request carries, if it is live and its user still exists.
    fn web_user(&self, headers: &HeaderMap) -> Result<WebSession, ApiError> {
        let id = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| *k == COOKIE)
            .map(|(_, v)| v.to_string());
        let unauthorized = |why: &str| {
            ApiError(
                StatusCode::UNAUTHORIZED,
                format!("{why}: run `ramp-ca dashboard` for a new login link"),
            )
        };
        let id = id.ok_or_else(|| unauthorized("not logged in"))?;
        let now = Utc::now();
        let mut sessions = lock(&self.sessions);
        sessions.retain(|_, s| s.expires > now);
        let session = sessions
            .get(&id)
            .cloned()
            .ok_or_else(|| unauthorized("the dashboard session expired"))?;
        drop(sessions);
        if !self.service.knows_user(&session.user) {
            return Err(unauthorized(&format!(
                "`{}` is no longer in people.yaml",
                session.user
            )));
        }
        Ok(session)
    }

    /// [`Dashboard::web_user`] for a change: the CSRF header must match.
    fn web_change(&self, headers: &HeaderMap) -> Result<WebSession, ApiError> {
        let session = self.web_user(headers)?;
        let sent = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
        if sent != Some(session.csrf.as_str()) {
            return Err(ApiError(
                StatusCode::FORBIDDEN,
                "missing or wrong CSRF token; reload the page".into(),
            ));
        }
        Ok(session)
    }

    /// Whether a browser session still stands (not expired, not logged out, its user still
    /// in people.yaml, and a reviewer when `reviewer`): long-lived streams ask on every step.
    fn still_allowed(&self, session: &WebSession, reviewer: bool) -> bool {
        let now = Utc::now();
        let live = lock(&self.sessions)
            .values()
            .any(|s| s.csrf == session.csrf && s.expires > now);
        live && self.service.knows_user(&session.user)
            && (!reviewer || self.service.is_reviewer(&session.user))
    }
}

/// The dashboard's routes: `/ui/...` and the signed `POST /v1/dashboard/link`.
pub fn router(app: App) -> Router {
    Router::new()
        .route(ui::HOME, get(|| async { Redirect::to(ui::PAGE) }))
        .route(ui::ROOT, get(|| async { Redirect::to(ui::PAGE) }))
        .route(ui::PAGE, get(page))
        .route(ui::SCRIPT, get(script))
        .route(
            ui::PLAYER_SCRIPT,
            get(|| script_of(include_str!("assets/player.js"))),
        )
        .route(
            ui::REVIEW_SCRIPT,
            get(|| script_of(include_str!("assets/review.js"))),
        )
        .route(ui::STYLE, get(style))
        .route(ui::LOGIN, get(login))
        .route(ui::LOGOUT, post(logout))
        .merge(live::routes())
        .merge(review::routes())
        .merge(signoff::routes())
        .with_state(app.clone())
        .merge(
            Router::new()
                .route(wire::DASHBOARD_LINK, post(link))
                .with_state(app.service.clone()),
        )
        .layer(axum::Extension(app))
}

/// The page, its script and its stylesheet, with the paths they use filled in.
static PAGE: LazyLock<String> = LazyLock::new(|| {
    include_str!("assets/index.html")
        .replace("__RAMP_STYLE__", ui::STYLE)
        .replace("__RAMP_SCRIPT__", ui::SCRIPT)
        .replace("__RAMP_PLAYER_SCRIPT__", ui::PLAYER_SCRIPT)
        .replace("__RAMP_REVIEW_SCRIPT__", ui::REVIEW_SCRIPT)
});
static SCRIPT: LazyLock<String> = LazyLock::new(|| {
    let routes: serde_json::Map<String, serde_json::Value> = ui::ROUTES
        .iter()
        .map(|(name, path)| (name.to_string(), (*path).into()))
        .collect();
    include_str!("assets/app.js").replace(
        "__RAMP_ROUTES__",
        &serde_json::Value::Object(routes).to_string(),
    )
});

async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Html(PAGE.as_str()),
    )
        .into_response()
}

async fn script() -> Response {
    script_of(SCRIPT.as_str()).await
}

/// One of the page's scripts (app.js first: the others use what it defines).
async fn script_of(text: &'static str) -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        text,
    )
        .into_response()
}

async fn style() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("assets/app.css"),
    )
        .into_response()
}

/// `POST /v1/dashboard/link` (signed): a one-time login link for the caller.
async fn link(
    axum::Extension(app): axum::Extension<App>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let now = Utc::now();
    let t = token();
    let expires = now + app.ttls.link;
    {
        let mut links = lock(&app.links);
        links.retain(|_, (_, e)| *e > now);
        links.insert(t.clone(), (caller.user.clone(), expires));
    }
    app.service
        .dashboard_linked(&caller.user, expires, now)
        .await?;
    let path = format!("{}?token={t}", ui::LOGIN);
    let url = app
        .public_url
        .as_ref()
        .map(|base| format!("{}{path}", base.trim_end_matches('/')));
    Ok(Json(LinkBody { expires, path, url }).into_response())
}

fn error_page(status: StatusCode, text: &str) -> Response {
    let body = format!(
        "<!doctype html><meta charset=utf-8><title>ramp-ca</title>\
         <body style=\"font:15px system-ui;background:#0f1115;color:#e6e6e6;padding:3em\">\
         <h1>ramp-ca</h1><p>{}</p><p>Run <code>ramp-ca dashboard</code> for a new login link.</p>",
        text.replace('<', "&lt;")
    );
    (status, Html(body)).into_response()
}

/// `GET /ui/login?token=T`: spends the link, starts the browser session.
async fn login(
    State(app): State<App>,
    Query(q): Query<LoginQuery>,
    headers: HeaderMap,
) -> Response {
    let now = Utc::now();
    let found = lock(&app.links).remove(&q.token);
    let Some((user, expires)) = found.filter(|(_, e)| *e > now) else {
        // A link opened again (a reload, the browser's history) by someone logged in already.
        if app.web_user(&headers).is_ok() {
            return Redirect::to(ui::PAGE).into_response();
        }
        return error_page(
            StatusCode::UNAUTHORIZED,
            "This login link is unknown, already used or expired.",
        );
    };
    let session = WebSession {
        user: user.clone(),
        csrf: token(),
        expires: now + app.ttls.session,
    };
    let id = token();
    lock(&app.sessions).insert(id.clone(), session.clone());
    if let Err(e) = app
        .service
        .dashboard_logged_in(&user, expires, session.expires, now)
        .await
    {
        lock(&app.sessions).remove(&id);
        return error_page(StatusCode::INTERNAL_SERVER_ERROR, &ApiError::from(e).1);
    }
    // Over https (served here, or a proxy's public_url) the cookie never travels in the clear.
    let secure = if app.secure_cookie { "; Secure" } else { "" };
    let cookie = format!(
        "{COOKIE}={id}; Path={}; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        ui::ROOT,
        app.ttls.session.num_seconds()
    );
    (
        StatusCode::SEE_OTHER,
        [
            (header::SET_COOKIE, cookie),
            (header::LOCATION, ui::PAGE.to_string()),
        ],
    )
        .into_response()
}

async fn logout(State(app): State<App>, headers: HeaderMap) -> Response {
    if let Ok(s) = app.web_change(&headers) {
        lock(&app.sessions).retain(|_, v| v.csrf != s.csrf);
    }
    (
        StatusCode::NO_CONTENT,
        [(
            header::SET_COOKIE,
            format!(
                "{COOKIE}=; Path={}; HttpOnly; SameSite=Strict; Max-Age=0",
                ui::ROOT
            ),
        )],
    )
        .into_response()
}
