//! The overview page's numbers, listeners, `/metrics` and the audit log.

use std::collections::BTreeMap;
use std::time::Instant;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use super::{certs, AppState, Query};
use crate::audit::AuditEntry;
use crate::error::{ApiError, ApiResult};
use crate::{Caller, Role};

pub(crate) async fn metrics(State(app): State<AppState>) -> Response {
    let text = app.broker.metrics_text().await;
    (
        [(header::CONTENT_TYPE, moat_server::METRICS_CONTENT_TYPE)],
        text,
    )
        .into_response()
}

#[derive(Serialize)]
pub(crate) struct Overview {
    version: &'static str,
    uptime_secs: u64,
    connections: Connections,
    messages: Messages,
    sessions: usize,
    subscriptions: usize,
    retained: usize,
    handshake_failures: moat_server::HandshakeFailures,
    expiry: Vec<moat_server::ExpiryItem>,
}

#[derive(Serialize)]
struct Connections {
    total: u64,
    by_listener: BTreeMap<String, u64>,
}

#[derive(Serialize)]
struct Messages {
    received: u64,
    sent: u64,
    received_per_sec: f64,
    sent_per_sec: f64,
}

/// Rates over the time since the previous sample (at least 1 s; a faster poll reuses it).
fn rates(app: &AppState, received: u64, sent: u64) -> (f64, f64) {
    let now = Instant::now();
    let mut sample = app.rate_sample.lock().unwrap_or_else(|e| e.into_inner());
    match *sample {
        Some((at, r, s, rr, sr)) => {
            let secs = now.duration_since(at).as_secs_f64();
            if secs < 1.0 {
                return (rr, sr);
            }
            let rr = received.saturating_sub(r) as f64 / secs;
            let sr = sent.saturating_sub(s) as f64 / secs;
            *sample = Some((now, received, sent, rr, sr));
            (rr, sr)
        }
        None => {
            let secs = app.started.elapsed().as_secs_f64().max(1.0);
            let (rr, sr) = (received as f64 / secs, sent as f64 / secs);
            *sample = Some((now, received, sent, rr, sr));
            (rr, sr)
        }
    }
}

pub(crate) async fn overview(State(app): State<AppState>) -> ApiResult<Json<Overview>> {
    let snap = app.broker.stats().await?;
    let listeners = app.broker.listeners();
    let (rr, sr) = rates(&app, snap.stats.messages_received, snap.stats.messages_sent);
    // What the broker serves and trusts, soonest first (no client scan: the overview is polled).
    let mut expiry = app.broker.expiry();
    expiry.truncate(10);
    Ok(Json(Overview {
        version: env!("CARGO_PKG_VERSION"),
        uptime_secs: app.started.elapsed().as_secs(),
        connections: Connections {
            total: listeners.iter().map(|l| l.connections).sum(),
            by_listener: listeners
                .into_iter()
                .map(|l| (l.name, l.connections))
                .collect(),
        },
        messages: Messages {
            received: snap.stats.messages_received,
            sent: snap.stats.messages_sent,
            received_per_sec: rr,
            sent_per_sec: sr,
        },
        sessions: snap.sessions,
        subscriptions: snap.subscriptions,
        retained: snap.retained,
        handshake_failures: app.broker.handshake_failures(),
        expiry,
    }))
}

#[derive(Serialize)]
pub(crate) struct ListenerView {
    name: String,
    kind: &'static str,
    address: String,
    certificate_set: Option<String>,
    connections: u64,
}

pub(crate) fn kind_name(kind: moat_server::ListenerKind) -> &'static str {
    match kind {
        moat_server::ListenerKind::Tcp => "tcp",
        moat_server::ListenerKind::Tls => "tls",
        moat_server::ListenerKind::Ws => "ws",
        moat_server::ListenerKind::Wss => "wss",
    }
}

pub(crate) async fn listeners(State(app): State<AppState>) -> Json<Vec<ListenerView>> {
    let sets = certs::set_of_listener(&app);
    Json(
        app.broker
            .listeners()
            .into_iter()
            .map(|l| ListenerView {
                certificate_set: sets.get(&l.name).cloned(),
                kind: kind_name(l.kind),
                address: l.address.to_string(),
                name: l.name,
                connections: l.connections,
            })
            .collect(),
    )
}

#[derive(Deserialize)]
pub(crate) struct AuditQuery {
    limit: Option<usize>,
}

pub(crate) async fn audit(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Json<Vec<AuditEntry>>> {
    if caller.role != Role::Admin {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the audit log is for the admin role",
        ));
    }
    Ok(Json(
        app.audit.recent(q.limit.unwrap_or(100).clamp(1, 1000)),
    ))
}
