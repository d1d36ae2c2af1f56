//! Forwarding (docs/ADMIN-API.md, "Forwarding"): each rule's sink state and spool.

use axum::extract::State;
use axum::Json;
use serde::Serialize;

use super::AppState;

#[derive(Serialize)]
pub(crate) struct RuleView {
    rule: String,
    filters: Vec<String>,
    sink: String,
    /// "starting" (nothing written yet), "up" or "down".
    state: &'static str,
    spooled: u64,
    spooled_bytes: u64,
    oldest_age_seconds: u64,
    forwarded: u64,
    retries: u64,
    dropped_qos0: u64,
    full: bool,
}

/// Every forwarding rule, in configuration order.
pub(crate) async fn list(State(app): State<AppState>) -> Json<Vec<RuleView>> {
    Json(
        app.broker
            .forwarding()
            .into_iter()
            .map(|s| RuleView {
                rule: s.rule,
                filters: s.filters,
                sink: s.sink,
                state: s.state.label(),
                spooled: s.spooled,
                spooled_bytes: s.spooled_bytes,
                oldest_age_seconds: s.oldest_age_seconds,
                forwarded: s.forwarded,
                retries: s.retries,
                dropped_qos0: s.dropped_qos0,
                full: s.full,
            })
            .collect(),
    )
}
