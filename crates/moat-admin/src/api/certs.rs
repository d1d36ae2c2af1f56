//! Certificate sets: listed, staged, activated, restored, deleted; expiry; handshake failures.
//! (Filled in when the certificate engine lands in moat-server.)

use std::collections::BTreeMap;

use axum::Router;
use serde::Serialize;

use super::AppState;
use crate::error::ApiResult;

#[derive(Serialize, Default)]
pub(crate) struct HandshakeFailuresView {
    by_reason: BTreeMap<String, u64>,
    recent: Vec<serde_json::Value>,
}

#[derive(Serialize)]
pub(crate) struct ExpiryView {}

pub(crate) async fn expiry_items(_app: &AppState) -> ApiResult<Vec<ExpiryView>> {
    Ok(Vec::new())
}

pub(crate) fn handshake_failures(_app: &AppState) -> HandshakeFailuresView {
    HandshakeFailuresView::default()
}

pub(crate) fn set_of_listener(_app: &AppState) -> BTreeMap<String, String> {
    BTreeMap::new()
}

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
}
