//! Console sessions: log in with a token, get a cookie and a CSRF token.

use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{AppState, Body};
use crate::audit::AuditEntry;
use crate::auth::{Role, SESSION_LIFETIME};
use crate::error::{ApiError, ApiResult};
use crate::{Caller, SESSION_COOKIE};

#[derive(Deserialize)]
pub(crate) struct Login {
    token: Zeroizing<String>,
}

#[derive(Serialize)]
pub(crate) struct SessionInfo {
    role: Role,
    csrf: String,
}

fn audit_login(app: &AppState, peer: SocketAddr, who: &'static str, result: &str) {
    app.audit.record(AuditEntry {
        at: crate::audit::now_rfc3339(),
        who,
        address: peer.ip().to_string(),
        action: "POST /api/v1/login".into(),
        result: result.to_owned(),
    });
}

pub(crate) async fn login(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Result<Body<Login>, ApiError>,
) -> ApiResult<Response> {
    let now = Instant::now();
    let ip = peer.ip();
    if let Some(wait) = app.throttle.blocked(ip, now) {
        audit_login(&app, peer, "anonymous", "too_many_attempts");
        return Err(crate::too_many(wait));
    }
    let Body(login) = body?;
    let Some(role) = app.tokens.role_of(login.token.trim()) else {
        audit_login(&app, peer, "anonymous", "unauthorized");
        return Err(match app.throttle.failed(ip, now) {
            Some(wait) => crate::too_many(wait),
            None => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "that token is not valid",
            )
            .fix("paste the content of admin.token (or viewer.token) from the data dir"),
        });
    };
    app.throttle.succeeded(ip);
    let (id, csrf) = app
        .sessions
        .start(role, now)
        .map_err(|e| ApiError::internal(format!("no random numbers: {e}")))?;
    audit_login(&app, peer, role.name(), "ok");
    let secure = if app.secure_cookie { "; Secure" } else { "" };
    let cookie = format!(
        "{SESSION_COOKIE}={}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{secure}",
        id.as_str(),
        SESSION_LIFETIME.as_secs()
    );
    let mut resp = Json(SessionInfo {
        role,
        csrf: csrf.to_string(),
    })
    .into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).map_err(|_| ApiError::internal("bad cookie"))?,
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

pub(crate) async fn session(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<SessionInfo>> {
    let Some(id) = caller.session else {
        // A bearer caller has no session: it needs no CSRF token.
        return Ok(Json(SessionInfo {
            role: caller.role,
            csrf: String::new(),
        }));
    };
    let (role, csrf) = app
        .sessions
        .get(&id, Instant::now())
        .ok_or_else(|| crate::unauthorized("the session has ended"))?;
    Ok(Json(SessionInfo {
        role,
        csrf: csrf.to_string(),
    }))
}

pub(crate) async fn logout(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    _headers: HeaderMap,
) -> Response {
    if let Some(id) = &caller.session {
        app.sessions.end(id);
    }
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("moat_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"),
    );
    resp
}
