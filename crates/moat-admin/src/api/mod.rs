//! The routes of docs/ADMIN-API.md and the extractors that turn every bad request into the
//! API's JSON error.

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::Router;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::App;

mod access;
mod certs;
mod clients;
mod forward;
mod overview;
mod session;

pub(crate) type AppState = Arc<App>;

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(crate::console::index))
        .route("/index.html", get(crate::console::index))
        .route("/assets/app.js", get(crate::console::app_js))
        .route("/assets/app.css", get(crate::console::app_css))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/login", post(session::login))
        .route("/api/v1/logout", post(session::logout))
        .route("/api/v1/session", get(session::session))
        .route("/metrics", get(overview::metrics))
        .route("/api/v1/overview", get(overview::overview))
        .route("/api/v1/listeners", get(overview::listeners))
        .route("/api/v1/audit", get(overview::audit))
        .route("/api/v1/clients", get(clients::list))
        .route("/api/v1/clients/{client_id}", get(clients::detail))
        .route(
            "/api/v1/clients/{client_id}/disconnect",
            post(clients::disconnect),
        )
        .route(
            "/api/v1/retained",
            get(clients::retained).delete(clients::delete_retained),
        )
        .route("/api/v1/users", get(access::users).post(access::add_user))
        .route(
            "/api/v1/users/{username}",
            axum::routing::delete(access::remove_user),
        )
        .route(
            "/api/v1/users/{username}/password",
            put(access::set_password),
        )
        .route("/api/v1/acl", get(access::acl).put(access::put_acl))
        .route("/api/v1/forward", get(forward::list))
        .merge(certs::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(crate::console::security_headers))
}

async fn not_found() -> ApiError {
    ApiError::not_found("not_found", "no such path").fix("see /api/v1/openapi.json")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this path does not take that method",
    )
    .fix("see /api/v1/openapi.json")
}

const OPENAPI: &str = include_str!("../../openapi.json");

async fn openapi() -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
        .into_response()
}

/// A JSON body whose rejection is the API's JSON error.
pub(crate) struct Body<T>(pub(crate) T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Self(v)),
            Err(e) => Err(json_rejection(&e)),
        }
    }
}

pub(crate) fn json_rejection(e: &JsonRejection) -> ApiError {
    let status = e.status();
    let code = match status {
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        _ => "bad_request",
    };
    ApiError::new(status, code, e.body_text())
        .fix("send a JSON body as /api/v1/openapi.json describes")
}

/// Query parameters whose rejection is the API's JSON error.
pub(crate) struct Query<T>(pub(crate) T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Self(v)),
            Err(e) => Err(query_rejection(&e)),
        }
    }
}

fn query_rejection(e: &QueryRejection) -> ApiError {
    ApiError::bad_request(e.body_text())
}

/// A path parameter whose rejection is the API's JSON error.
pub(crate) struct PathParam(pub(crate) String);

impl<S: Send + Sync> FromRequestParts<S> for PathParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<String>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Self(v)),
            Err(e) => Err(ApiError::bad_request(e.body_text())),
        }
    }
}

/// Unix milliseconds as RFC 3339.
pub(crate) fn rfc3339_ms(ms: u64) -> String {
    moat_pki::inspect::rfc3339(i64::try_from(ms / 1000).unwrap_or(i64::MAX))
}

/// Runs blocking work (file parsing, password hashing) off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| ApiError::internal("a background task failed"))
}
