//! Clients (listed with filters, paged server-side), their details and disconnection;
//! retained messages.

use axum::extract::State;
use axum::Json;
use base64::Engine;
use moat_core::{ClientQuery, ClientSummary};
use serde::{Deserialize, Serialize};

use super::{rfc3339_ms, AppState, PathParam, Query};
use crate::error::{ApiError, ApiResult};

/// Clients per page by default, and at most.
const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 1000;

#[derive(Deserialize)]
pub(crate) struct ClientFilter {
    prefix: Option<String>,
    username: Option<String>,
    listener: Option<String>,
    cert_identity: Option<String>,
    address: Option<String>,
    after: Option<String>,
    limit: Option<usize>,
}

#[derive(Serialize)]
pub(crate) struct ClientView {
    client_id: String,
    username: Option<String>,
    listener: String,
    address: Option<String>,
    protocol: &'static str,
    connected_at: String,
    keep_alive: u16,
    subscriptions: usize,
    queued: usize,
    inflight: usize,
    tls: Option<TlsView>,
}

#[derive(Serialize)]
struct TlsView {
    version: String,
    identity: Option<String>,
    subject: Option<String>,
    fingerprint: Option<String>,
    /// Its serial number, hex bytes with colons.
    serial: Option<String>,
    not_after: Option<String>,
    /// The subject of the listener's client CA the certificate chains to.
    ca_subject: Option<String>,
    /// That CA's SHA-256 fingerprint (GET /api/v1/client-cas lists the CAs).
    ca_fingerprint: Option<String>,
}

pub(crate) fn protocol_name(p: moat_codec::ProtocolVersion) -> &'static str {
    match p {
        moat_codec::ProtocolVersion::V3_1 => "3.1",
        moat_codec::ProtocolVersion::V3_1_1 => "3.1.1",
        moat_codec::ProtocolVersion::V5 => "5.0",
    }
}

impl From<ClientSummary> for ClientView {
    fn from(c: ClientSummary) -> Self {
        Self {
            protocol: protocol_name(c.protocol),
            connected_at: rfc3339_ms(c.connected_since_ms),
            tls: c.tls.as_ref().map(|t| TlsView {
                version: t.version.clone(),
                identity: t.identity.clone(),
                subject: t.subject.clone(),
                fingerprint: t.fingerprint.clone(),
                serial: t.serial.clone(),
                not_after: t.not_after.map(moat_pki::inspect::rfc3339),
                ca_subject: t.ca_subject.clone(),
                ca_fingerprint: t.ca_fingerprint.clone(),
            }),
            client_id: c.client_id,
            username: c.username,
            listener: c.listener,
            address: c.peer.map(|a| a.to_string()),
            keep_alive: c.keep_alive,
            subscriptions: c.subscriptions,
            queued: c.queued,
            inflight: c.inflight,
        }
    }
}

#[derive(Serialize)]
pub(crate) struct ClientPage {
    items: Vec<ClientView>,
    more: bool,
    /// The `after` of the next page, when `more`.
    next_after: Option<String>,
}

fn nonempty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

pub(crate) async fn list(
    State(app): State<AppState>,
    Query(f): Query<ClientFilter>,
) -> ApiResult<Json<ClientPage>> {
    let query = ClientQuery {
        client_id_prefix: f.prefix.unwrap_or_default(),
        username: nonempty(f.username),
        listener: nonempty(f.listener),
        cert_identity: nonempty(f.cert_identity),
        address_prefix: nonempty(f.address),
        after: nonempty(f.after),
        limit: f.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT),
    };
    let page = app.broker.clients(query).await?;
    Ok(Json(ClientPage {
        items: page.items.into_iter().map(ClientView::from).collect(),
        more: page.more,
        next_after: page.next_after,
    }))
}

#[derive(Serialize)]
pub(crate) struct Subscription {
    filter: String,
    qos: u8,
}

#[derive(Serialize)]
pub(crate) struct ClientDetailView {
    client_id: String,
    connected: Option<ClientView>,
    subscriptions: Vec<Subscription>,
    queued: usize,
    persistent: bool,
    /// Seconds the session outlives its connection (null: never expires).
    expiry_secs: Option<u32>,
}

pub(crate) async fn detail(
    State(app): State<AppState>,
    PathParam(client_id): PathParam,
) -> ApiResult<Json<ClientDetailView>> {
    let Some(d) = app.broker.client(&client_id).await? else {
        return Err(ApiError::not_found(
            "no_client",
            format!("no session has the client id {client_id:?}"),
        ));
    };
    Ok(Json(ClientDetailView {
        client_id: d.client_id,
        connected: d.connected.map(ClientView::from),
        subscriptions: d
            .subscriptions
            .into_iter()
            .map(|(filter, qos)| Subscription {
                filter,
                qos: qos as u8,
            })
            .collect(),
        queued: d.queued,
        persistent: d.persistent,
        expiry_secs: (d.expiry_interval != u32::MAX).then_some(d.expiry_interval),
    }))
}

#[derive(Serialize)]
pub(crate) struct Disconnected {
    disconnected: bool,
}

pub(crate) async fn disconnect(
    State(app): State<AppState>,
    PathParam(client_id): PathParam,
) -> ApiResult<Json<Disconnected>> {
    let done = app
        .broker
        .disconnect(&client_id, moat_codec::ReasonCode::ADMINISTRATIVE_ACTION)
        .await?;
    Ok(Json(Disconnected { disconnected: done }))
}

/// Payload bytes shown per retained message.
const PREVIEW: usize = 1024;

#[derive(Deserialize)]
pub(crate) struct RetainedQuery {
    prefix: Option<String>,
    after: Option<String>,
    limit: Option<usize>,
}

#[derive(Serialize)]
pub(crate) struct RetainedView {
    topic: String,
    qos: u8,
    size: usize,
    /// The payload's first bytes as text, when they are UTF-8.
    payload: Option<String>,
    /// The payload's first bytes, base64.
    payload_base64: String,
    /// Whether the payload is longer than what is shown.
    truncated: bool,
}

#[derive(Serialize)]
pub(crate) struct RetainedPage {
    items: Vec<RetainedView>,
    more: bool,
    /// The `after` of the next page, when `more`.
    next_after: Option<String>,
}

pub(crate) async fn retained(
    State(app): State<AppState>,
    Query(q): Query<RetainedQuery>,
) -> ApiResult<Json<RetainedPage>> {
    let page = app
        .broker
        .retained(
            q.prefix.as_deref().unwrap_or(""),
            q.after.as_deref().filter(|a| !a.is_empty()),
            q.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, 200),
        )
        .await?;
    Ok(Json(RetainedPage {
        items: page
            .items
            .into_iter()
            .map(|e| {
                let m = &e.message;
                let shown = &m.payload[..m.payload.len().min(PREVIEW)];
                RetainedView {
                    topic: m.topic.clone(),
                    qos: m.qos as u8,
                    size: m.payload.len(),
                    payload: std::str::from_utf8(shown).ok().map(str::to_owned),
                    payload_base64: base64::engine::general_purpose::STANDARD.encode(shown),
                    truncated: m.payload.len() > PREVIEW,
                }
            })
            .collect(),
        more: page.more,
        next_after: page.next_after,
    }))
}

#[derive(Deserialize)]
pub(crate) struct TopicQuery {
    topic: String,
}

#[derive(Serialize)]
pub(crate) struct Deleted {
    deleted: bool,
}

pub(crate) async fn delete_retained(
    State(app): State<AppState>,
    Query(q): Query<TopicQuery>,
) -> ApiResult<Json<Deleted>> {
    if q.topic.is_empty() || q.topic.contains(['+', '#']) {
        return Err(ApiError::bad_request(
            "topic must be a topic name (not empty, no wildcards)",
        ));
    }
    let deleted = app.broker.delete_retained(&q.topic).await?;
    Ok(Json(Deleted { deleted }))
}
