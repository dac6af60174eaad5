//! Who is calling: the signed-request extractor ([`Caller`]), and how the service's refusals
//! become HTTP answers ([`ApiError`]).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use russh::keys::ssh_key::PublicKey;
use serde::de::DeserializeOwned;

use super::server::{BODY_TIMEOUT, MAX_BODY};
use crate::auth::{self, AuthError, Headers};
use crate::service::{Service, ServiceError};
use crate::wire::ErrorBody;

type App = Arc<Service>;

/// An error as the client sees it: a status and `{"error": "..."}`.
#[derive(Debug)]
pub struct ApiError(pub(crate) StatusCode, pub(crate) String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.0, Json(ErrorBody::new(self.1))).into_response();
        if self.0 == StatusCode::SERVICE_UNAVAILABLE {
            // The ledger is away: worth asking again in a few seconds.
            resp.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
        }
        resp
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        if let ServiceError::Ledger(l) = &e {
            if let Some(why) = l.outage() {
                tracing::warn!("answered 503: {why}");
                return ApiError(StatusCode::SERVICE_UNAVAILABLE, why);
            }
        }
        let status = match &e {
            ServiceError::Denied(_) => StatusCode::FORBIDDEN,
            ServiceError::NotFound(_) => StatusCode::NOT_FOUND,
            ServiceError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ServiceError::Conflict(_) => StatusCode::CONFLICT,
            ServiceError::Gone(_) => StatusCode::GONE,
            ServiceError::Ledger(_) | ServiceError::Cert(_) | ServiceError::Internal(_) => {
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
        // One compare-and-swap in sled (inline: quicker than a hop to a thread), one
        // insert on PostgreSQL (shared: a request replayed to another node is refused).
        let fresh = app.fresh_nonce(&signed.nonce, now).await?;
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
