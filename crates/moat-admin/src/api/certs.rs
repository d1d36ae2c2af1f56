//! Certificate sets (docs/ADMIN-API.md, "Listeners and certificates"): listed, staged from
//! uploaded files or pasted PEM, activated with a test handshake (rolled back by itself when
//! it fails), restored, deleted; the expiry overview; handshake failures.

use std::collections::BTreeMap;
use std::time::SystemTime;

use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{header, StatusCode};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use moat_server::config_file::ConfigFile;
use moat_server::{
    Activation, CertError, CertSet, CertUpload, DeleteReport, ExpiryItem, PendingSet,
};
use moat_tls::ClientAuth;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{AppState, Body, PathParam};
use crate::error::{ApiError, ApiResult};

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/certificates", get(list))
        .route("/api/v1/certificates/{id}", get(one).delete(delete))
        .route(
            "/api/v1/certificates/{id}/pending",
            put(stage).delete(discard),
        )
        .route("/api/v1/certificates/{id}/activate", post(activate))
        .route("/api/v1/certificates/{id}/restore", post(restore))
        .route("/api/v1/certificates/{id}/delete-preview", get(preview))
        .route("/api/v1/expiry", get(expiry))
        .route("/api/v1/client-cas", get(client_cas))
        .route(
            "/api/v1/client-cas/{fingerprint}/disconnect",
            post(disconnect_client_ca),
        )
}

fn cert_error(e: CertError) -> ApiError {
    match e {
        CertError::NoSet(id) => {
            ApiError::not_found("no_certificate_set", format!("no certificate set {id:?}")).fix(
                "GET /api/v1/certificates lists them (a set's id is its first listener's name)",
            )
        }
        CertError::Refused { findings, notes } => {
            let errors = findings
                .iter()
                .filter(|f| f.severity == moat_pki::lint::Severity::Error)
                .count();
            let mut err = ApiError::unprocessable(
                "certificate_refused",
                format!(
                    "the certificate set was refused: {errors} error(s); nothing was staged and \
                     the active set is unchanged"
                ),
            )
            .fix("fix each finding marked error (each says how), then upload again");
            err.findings = serde_json::to_value(&findings).ok();
            if !notes.is_empty() {
                err.message.push_str(&format!(" ({})", notes.join("; ")));
            }
            err
        }
        CertError::NoPending => {
            ApiError::not_found("no_pending", "this certificate set has no pending material")
                .fix("upload a set first (PUT .../pending)")
        }
        CertError::NoPrevious => ApiError::not_found(
            "no_previous",
            "this certificate set has no previous material to restore",
        ),
        CertError::Invalid(message) => ApiError::unprocessable("invalid_certificate_set", message),
        e @ CertError::TestHandshakeFailed { .. } => {
            ApiError::conflict("test_handshake_failed", e.to_string()).fix(
                "the previous material is in use again; check the findings of the set and its key",
            )
        }
        CertError::Install { listener, source } => ApiError::unprocessable(
            "install_failed",
            format!("listener {listener:?}: {source}; every listener was rolled back"),
        ),
        CertError::Stopped => ApiError::stopped(),
        other => ApiError::internal(other.to_string()),
    }
}

async fn list(State(app): State<AppState>) -> Json<Vec<CertSet>> {
    Json(app.broker.certificate_sets())
}

async fn one(State(app): State<AppState>, PathParam(id): PathParam) -> ApiResult<Json<CertSet>> {
    app.broker
        .certificate_set(&id)
        .map(Json)
        .ok_or_else(|| cert_error(CertError::NoSet(id)))
}

#[derive(Deserialize)]
struct UploadJson {
    cert: Option<String>,
    chain: Option<String>,
    key: Option<Zeroizing<String>>,
    key_passphrase: Option<Zeroizing<String>>,
    client_ca: Option<String>,
    client_auth: Option<String>,
}

fn client_auth(text: Option<&str>) -> ApiResult<Option<ClientAuth>> {
    match text.map(str::trim) {
        None | Some("") => Ok(None),
        Some("none") => Ok(Some(ClientAuth::None)),
        Some("optional") => Ok(Some(ClientAuth::Optional)),
        Some("required") => Ok(Some(ClientAuth::Required)),
        Some(other) => Err(ApiError::unprocessable(
            "invalid_certificate_set",
            format!("client_auth {other:?} is not one of none, optional, required"),
        )),
    }
}

fn nonempty(b: Option<Vec<u8>>) -> Option<Vec<u8>> {
    b.filter(|b| !b.iter().all(u8::is_ascii_whitespace))
}

fn upload(
    cert: Option<Vec<u8>>,
    chain: Option<Vec<u8>>,
    key: Option<Zeroizing<Vec<u8>>>,
    key_passphrase: Option<Zeroizing<String>>,
    client_ca: Option<Vec<u8>>,
    auth: Option<ClientAuth>,
) -> ApiResult<CertUpload> {
    let cert = nonempty(cert);
    let key = key.filter(|k| !k.iter().all(u8::is_ascii_whitespace));
    let (Some(cert), Some(key)) = (cert, key) else {
        return Err(ApiError::unprocessable(
            "invalid_certificate_set",
            "a certificate set needs the certificate and its private key",
        )
        .fix("give both cert and key (chain and client_ca are optional)"));
    };
    Ok(CertUpload {
        cert,
        chain: nonempty(chain),
        key,
        key_passphrase: key_passphrase.filter(|p| !p.is_empty()),
        client_ca: nonempty(client_ca),
        client_auth: auth,
    })
}

/// Reads a JSON or multipart/form-data upload.
async fn read_upload(req: Request) -> ApiResult<CertUpload> {
    let multipart = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    if !multipart {
        let Body(j) = Body::<UploadJson>::from_request(req, &()).await?;
        return upload(
            j.cert.map(String::into_bytes),
            j.chain.map(String::into_bytes),
            j.key.map(|k| Zeroizing::new(k.as_bytes().to_vec())),
            j.key_passphrase,
            j.client_ca.map(String::into_bytes),
            client_auth(j.client_auth.as_deref())?,
        );
    }
    let mut form = Multipart::from_request(req, &())
        .await
        .map_err(|e| ApiError::new(e.status(), "bad_request", e.body_text()))?;
    let (mut cert, mut chain, mut key, mut pass, mut ca, mut auth) =
        (None, None, None, None, None, None);
    while let Some(field) = form
        .next_field()
        .await
        .map_err(|e| ApiError::new(e.status(), "bad_request", e.body_text()))?
    {
        let name = field.name().unwrap_or("").to_owned();
        let data = field
            .bytes()
            .await
            .map_err(|e| ApiError::new(e.status(), "bad_request", e.body_text()))?
            .to_vec();
        match name.as_str() {
            "cert" => cert = Some(data),
            "chain" => chain = Some(data),
            "key" => key = Some(Zeroizing::new(data)),
            "key_passphrase" => {
                let data = Zeroizing::new(data);
                pass = Some(Zeroizing::new(
                    String::from_utf8_lossy(&data)
                        .trim_end_matches(['\r', '\n'])
                        .to_owned(),
                ));
            }
            "client_ca" => ca = Some(data),
            "client_auth" => auth = Some(String::from_utf8_lossy(&data).into_owned()),
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown form field {other:?}: the fields are cert, chain, key, \
                     key_passphrase, client_ca, client_auth"
                )))
            }
        }
    }
    upload(cert, chain, key, pass, ca, client_auth(auth.as_deref())?)
}

async fn stage(
    State(app): State<AppState>,
    PathParam(id): PathParam,
    req: Request,
) -> ApiResult<Json<PendingSet>> {
    let upload = read_upload(req).await?;
    app.broker
        .stage_certificates(&id, upload)
        .await
        .map(Json)
        .map_err(cert_error)
}

async fn discard(State(app): State<AppState>, PathParam(id): PathParam) -> ApiResult<StatusCode> {
    app.broker.discard_pending(&id).map_err(cert_error)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Writes the listeners' TLS settings in force into the config file, so that a restart
/// serves what the console showed. Only those listeners' `tls` tables change in the file as
/// written (the rest keeps its text); a file that cannot be read, or that does not name the
/// listener, is written whole from the settings in force.
async fn persist(app: &AppState, activation: &Activation) -> ApiResult<()> {
    let mut target = app.config_target.lock().await;
    let mut changed = Vec::new();
    for (name, tls) in &activation.settings {
        if let Some(l) = target
            .settings
            .server
            .listeners
            .iter_mut()
            .find(|l| &l.name == name)
        {
            if l.tls.as_ref() != Some(tls) {
                l.tls = Some(tls.clone());
                changed.push(name.clone());
            }
        }
    }
    if changed.is_empty() {
        return Ok(());
    }
    let effective = target.settings.effective();
    let path = target.path.clone();
    super::blocking(move || as_written(&path, &changed, effective).save(&path))
        .await?
        .map_err(|e| {
            ApiError::internal(format!(
                "the new material is active but the configuration could not be written: {e}"
            ))
        })
}

/// The file at `path` with the `tls` tables of the `changed` listeners taken from
/// `effective`; `effective` itself when that cannot be done.
fn as_written(path: &std::path::Path, changed: &[String], effective: ConfigFile) -> ConfigFile {
    let Ok(mut raw) = ConfigFile::load(path) else {
        return effective;
    };
    for name in changed {
        let new = effective
            .listeners
            .iter()
            .find(|l| l.name.as_ref() == Some(name));
        let old = raw
            .listeners
            .iter_mut()
            .find(|l| l.name.as_ref() == Some(name));
        match (old, new) {
            (Some(old), Some(new)) => old.tls.clone_from(&new.tls),
            _ => return effective,
        }
    }
    raw
}

async fn activate(
    State(app): State<AppState>,
    PathParam(id): PathParam,
) -> ApiResult<Json<Activation>> {
    let activation = app.broker.activate_pending(&id).await.map_err(cert_error)?;
    persist(&app, &activation).await?;
    Ok(Json(activation))
}

async fn restore(
    State(app): State<AppState>,
    PathParam(id): PathParam,
) -> ApiResult<Json<Activation>> {
    let activation = app.broker.restore_previous(&id).await.map_err(cert_error)?;
    persist(&app, &activation).await?;
    Ok(Json(activation))
}

async fn preview(
    State(app): State<AppState>,
    PathParam(id): PathParam,
) -> ApiResult<Json<DeleteReport>> {
    app.broker.delete_preview(&id).map(Json).map_err(cert_error)
}

async fn delete(
    State(app): State<AppState>,
    PathParam(id): PathParam,
) -> ApiResult<Json<DeleteReport>> {
    app.broker
        .delete_certificates(&id)
        .await
        .map(Json)
        .map_err(cert_error)
}

/// Connected clients scanned for their certificates at most (pages of 1000).
const MAX_CLIENT_SCAN: usize = 100_000;

/// Client pages asked for at most (each examines at most the core's 10,000 sessions).
const MAX_PAGES: usize = 1_000;

/// Calls `f` with every connected client, a page at a time, within [`MAX_CLIENT_SCAN`]
/// clients and [`MAX_PAGES`] pages.
async fn each_client(
    app: &AppState,
    mut f: impl FnMut(&moat_core::ClientSummary),
) -> ApiResult<()> {
    let mut after = None;
    let mut seen = 0;
    for _ in 0..MAX_PAGES {
        let page = app
            .broker
            .clients(moat_core::ClientQuery {
                after: after.take(),
                limit: 1000,
                ..moat_core::ClientQuery::default()
            })
            .await?;
        seen += page.items.len();
        page.items.iter().for_each(&mut f);
        if !page.more || seen >= MAX_CLIENT_SCAN {
            break;
        }
        // `next_after`, not the page's last client: a page cut short by the core's scan
        // budget (10,000 disconnected sessions in a row) may be empty, and starting over
        // from the first client would never end.
        match page.next_after {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    Ok(())
}

/// Every certificate the broker serves or trusts, CRL next updates, and the certificates of
/// connected clients, sorted by expiry.
pub(crate) async fn expiry_with_clients(app: &AppState) -> ApiResult<Vec<ExpiryItem>> {
    let mut items = app.broker.expiry();
    let now = SystemTime::now();
    each_client(app, |c| {
        if let Some(tls) = &c.tls {
            if let Some(not_after) = tls.not_after {
                let subject = tls.subject.as_deref().unwrap_or("");
                items.push(ExpiryItem::client(&c.client_id, subject, not_after, now));
            }
        }
    })
    .await?;
    items.sort_by_key(|i| i.seconds_left);
    Ok(items)
}

async fn expiry(State(app): State<AppState>) -> ApiResult<Json<Vec<ExpiryItem>>> {
    expiry_with_clients(&app).await.map(Json)
}

/// listener name -> certificate set id.
pub(crate) fn set_of_listener(app: &AppState) -> BTreeMap<String, String> {
    app.broker
        .listeners()
        .into_iter()
        .filter_map(|l| {
            app.broker
                .certificate_set_of(&l.name)
                .map(|id| (l.name, id))
        })
        .collect()
}

/// Client ids listed per client CA at most (the count is exact).
const CLIENT_IDS_PER_CA: usize = 100;

#[derive(Serialize)]
struct ClientCaView {
    listener: String,
    subject: String,
    fingerprint: String,
    not_after: String,
    file: String,
    /// Connected clients whose certificate chains to this CA.
    clients: usize,
    /// Their client ids, sorted, at most [`CLIENT_IDS_PER_CA`].
    client_ids: Vec<String>,
}

/// Every client CA of every TLS listener and who uses it: a CA being rotated out can be
/// removed from `client_ca` once its `clients` is 0 (removing it disconnects the rest).
async fn client_cas(State(app): State<AppState>) -> ApiResult<Json<Vec<ClientCaView>>> {
    let uses = app.broker.client_cas();
    // (listener, CA fingerprint) -> client ids, from one bounded scan of the clients.
    let mut ids: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    if !uses.is_empty() {
        each_client(&app, |c| {
            let Some(fp) = c.tls.as_ref().and_then(|t| t.ca_fingerprint.clone()) else {
                return;
            };
            let list = ids.entry((c.listener.clone(), fp)).or_default();
            if list.len() < CLIENT_IDS_PER_CA {
                list.push(c.client_id.clone());
            }
        })
        .await?;
    }
    let mut out = Vec::new();
    for l in uses {
        for u in l.cas {
            let key = (l.listener.clone(), u.ca.fingerprint.clone());
            out.push(ClientCaView {
                client_ids: ids.remove(&key).unwrap_or_default(),
                listener: l.listener.clone(),
                subject: u.ca.subject,
                fingerprint: u.ca.fingerprint,
                not_after: moat_pki::inspect::rfc3339(u.ca.not_after),
                file: u.ca.path.display().to_string(),
                clients: u.clients,
            });
        }
    }
    Ok(Json(out))
}

#[derive(Serialize)]
struct CaDisconnected {
    disconnected: usize,
}

/// Disconnects every connected client whose certificate chains to the client CA with this
/// fingerprint (v5: DISCONNECT 0x98). The CA stays trusted: remove it from `client_ca` to
/// refuse its clients from now on.
async fn disconnect_client_ca(
    State(app): State<AppState>,
    PathParam(fingerprint): PathParam,
) -> ApiResult<Json<CaDisconnected>> {
    let known = app
        .broker
        .client_cas()
        .iter()
        .flat_map(|l| &l.cas)
        .any(|u| same_fingerprint(&u.ca.fingerprint, &fingerprint));
    if !known {
        return Err(ApiError::not_found(
            "no_client_ca",
            format!("no listener trusts a client CA with fingerprint {fingerprint:?}"),
        )
        .fix("GET /api/v1/client-cas lists them with their SHA-256 fingerprints"));
    }
    let disconnected = app.broker.disconnect_client_ca(&fingerprint);
    Ok(Json(CaDisconnected { disconnected }))
}

/// Fingerprints compared as hex digits: colons and case do not matter.
fn same_fingerprint(a: &str, b: &str) -> bool {
    let hex = |s: &str| {
        s.chars()
            .filter(char::is_ascii_hexdigit)
            .map(|c| c.to_ascii_uppercase())
            .collect::<String>()
    };
    let a = hex(a);
    !a.is_empty() && a == hex(b)
}
