//! Moat's admin HTTP API and web console (docs/ADMIN-API.md), served by `moat serve` beside
//! the broker and driving it through a [`BrokerHandle`]: certificates (staged, activated with
//! a test handshake, restored, deleted), clients, users and ACLs, retained messages, metrics.
//!
//! - [`Admin::bind`] makes the tokens (0600) on the first start and binds the address;
//!   [`Admin::run`] serves until shutdown.
//! - Every request passes one gate ([`gate`]): a bearer token or a console session (cookie
//!   plus CSRF token for changes), the per-address slow-down of failures, the viewer's
//!   read-only rule, and the audit log of every change.
//! - The console's assets are compiled in ([`console`]); nothing is fetched from a network.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
// ApiError (144 bytes) is made at most once per request, as the answer: boxing it buys nothing.
#![allow(clippy::result_large_err)]

mod api;
mod audit;
mod auth;
mod console;
mod error;
mod tls;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use moat_server::config_file::{AdminSettings, Settings};
use moat_server::BrokerHandle;
use tokio::net::TcpListener;

pub use audit::AuditEntry;
pub use auth::Role;
pub use error::{ApiError, LineError};

use crate::audit::Audit;
use crate::auth::{Sessions, Throttle, Tokens};
use crate::error::ErrorCode;

/// Where the admin API writes configuration changes (a listener's client authentication, a
/// new file path): the config file `moat serve` read, or `<data_dir>/moat.toml` under the
/// embedded defaults (which `moat serve` then reads on its next start).
#[derive(Debug, Clone)]
pub struct ConfigTarget {
    /// The file to write.
    pub path: PathBuf,
    /// The settings in force; their `base_dir` is the file's folder.
    pub settings: Settings,
}

/// What the admin API needs besides the broker.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// `[admin]`.
    pub settings: AdminSettings,
    /// The password file (`moat user`'s).
    pub password_file: Option<PathBuf>,
    /// The ACL file.
    pub acl_file: Option<PathBuf>,
    /// Where configuration changes are written.
    pub config: ConfigTarget,
}

/// Why the admin API cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// A token file cannot be read or written.
    #[error("admin token file {}: {source}", path.display())]
    Token {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The audit log cannot be opened.
    #[error("audit log {}: {source}", path.display())]
    Audit {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The address cannot be bound.
    #[error("cannot bind the admin API to {addr} ([admin] bind): {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The TLS listener named by `[admin] tls_listener` cannot lend its certificates.
    #[error("admin API TLS ([admin] tls_listener): {0}")]
    Tls(String),
}

/// (when, messages received, sent, received per second, sent per second).
pub(crate) type RateSample = (Instant, u64, u64, f64, f64);

/// State shared by every request.
pub(crate) struct App {
    pub(crate) broker: BrokerHandle,
    pub(crate) config: AdminConfig,
    pub(crate) tokens: Tokens,
    pub(crate) sessions: Sessions,
    pub(crate) throttle: Throttle,
    pub(crate) audit: Audit,
    pub(crate) started: Instant,
    /// The last (time, received, sent) sample, for rates.
    pub(crate) rate_sample: Mutex<Option<RateSample>>,
    /// Configuration writes are serialized.
    pub(crate) config_target: tokio::sync::Mutex<ConfigTarget>,
    /// Password and ACL file edits are serialized.
    pub(crate) auth_files: tokio::sync::Mutex<()>,
    pub(crate) secure_cookie: bool,
}

/// The bound admin API.
pub struct Admin {
    listener: TcpListener,
    /// The TLS listener whose certificates it serves, and those it serves now.
    tls: Option<(String, moat_tls::Borrowed)>,
    app: Arc<App>,
    created_tokens: Vec<PathBuf>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("addr", &self.listener.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl Admin {
    /// Reads (or makes, 0600) the tokens, opens the audit log and binds the address.
    ///
    /// # Errors
    /// [`AdminError`].
    pub async fn bind(config: AdminConfig, broker: BrokerHandle) -> Result<Self, AdminError> {
        let mut created_tokens = Vec::new();
        let mut token = |path: &PathBuf| {
            let (t, made) =
                auth::load_or_create_token(path).map_err(|source| AdminError::Token {
                    path: path.clone(),
                    source,
                })?;
            if made {
                created_tokens.push(path.clone());
            }
            Ok::<_, AdminError>(t)
        };
        let tokens = Tokens {
            admin: token(&config.settings.token_file)?,
            viewer: token(&config.settings.viewer_token_file)?,
        };
        let audit =
            Audit::open(&config.settings.audit_log).map_err(|source| AdminError::Audit {
                path: config.settings.audit_log.clone(),
                source,
            })?;
        let tls = match &config.settings.tls_listener {
            Some(name) => Some((
                name.clone(),
                tls::borrow(&broker, name).map_err(AdminError::Tls)?,
            )),
            None => None,
        };
        let addr = config.settings.bind;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| AdminError::Bind { addr, source })?;
        let app = Arc::new(App {
            broker,
            config_target: tokio::sync::Mutex::new(config.config.clone()),
            config,
            tokens,
            sessions: Sessions::default(),
            throttle: Throttle::default(),
            audit,
            started: Instant::now(),
            rate_sample: Mutex::new(None),
            auth_files: tokio::sync::Mutex::new(()),
            secure_cookie: tls.is_some(),
        });
        Ok(Self {
            listener,
            tls,
            app,
            created_tokens,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Whether it serves HTTPS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The token files made by this start (the others existed).
    pub fn created_tokens(&self) -> &[PathBuf] {
        &self.created_tokens
    }

    /// Serves until `shutdown` completes.
    ///
    /// # Errors
    /// An I/O error of the listening socket.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let broker = self.app.broker.clone();
        let router = api::router()
            .layer(axum::middleware::from_fn_with_state(
                Arc::clone(&self.app),
                gate,
            ))
            .with_state(self.app);
        let service = router.into_make_service_with_connect_info::<SocketAddr>();
        match self.tls {
            None => {
                axum::serve(self.listener, service)
                    .with_graceful_shutdown(shutdown)
                    .await
            }
            Some((name, current)) => {
                use axum::serve::ListenerExt;
                // tap_io makes the peer address available as ConnectInfo<SocketAddr>.
                let listener =
                    tls::TlsListener::new(self.listener, broker, name, current).tap_io(|_| {});
                axum::serve(listener, service)
                    .with_graceful_shutdown(shutdown)
                    .await
            }
        }
    }
}

/// The authenticated caller of a request (set by [`gate`]).
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub(crate) role: Role,
    /// The console session's cookie value, if the caller came with one.
    pub(crate) session: Option<String>,
}

/// The cookie that carries a console session.
pub(crate) const SESSION_COOKIE: &str = "moat_session";

/// Paths anyone may fetch: the console's assets, the login and the OpenAPI document.
fn is_public(method: &Method, path: &str) -> bool {
    (method == Method::GET || method == Method::HEAD)
        && (path == "/"
            || path == "/index.html"
            || path.starts_with("/assets/")
            || path == "/api/v1/openapi.json")
        || (method == Method::POST && path == "/api/v1/login")
}

pub(crate) fn cookie<'a>(req_headers: &'a axum::http::HeaderMap, name: &str) -> Option<&'a str> {
    req_headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn is_read(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}

/// Authentication, the viewer's read-only rule, CSRF, and the audit log of every change.
async fn gate(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut req: Request,
    next: Next,
) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    if is_public(&method, &path) {
        return next.run(req).await;
    }
    let ip = peer.ip();
    let now = Instant::now();
    let caller = match authenticate(&app, &req, ip, now) {
        Ok(c) => c,
        Err(e) => {
            if !is_read(&method) {
                record(&app, "anonymous", ip, &method, &path, e.code);
            }
            return e.into_response();
        }
    };
    if !is_read(&method) && caller.role == Role::Viewer && path != "/api/v1/logout" {
        let e = ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the viewer role may only read",
        )
        .fix("log in with the admin token (admin.token in the data dir)");
        record(&app, caller.role.name(), ip, &method, &path, e.code);
        return e.into_response();
    }
    let role = caller.role;
    req.extensions_mut().insert(caller);
    let resp = next.run(req).await;
    if !is_read(&method) {
        let result = resp.extensions().get::<ErrorCode>().map_or("ok", |c| c.0);
        record(&app, role.name(), ip, &method, &path, result);
    }
    resp
}

fn record(app: &App, who: &'static str, ip: IpAddr, method: &Method, path: &str, result: &str) {
    app.audit.record(AuditEntry {
        at: audit::now_rfc3339(),
        who,
        address: ip.to_string(),
        action: format!("{method} {path}"),
        result: result.to_owned(),
    });
}

fn authenticate(app: &App, req: &Request, ip: IpAddr, now: Instant) -> Result<Caller, ApiError> {
    if let Some(wait) = app.throttle.blocked(ip, now) {
        return Err(too_many(wait));
    }
    let headers = req.headers();
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .unwrap_or("");
        return match app.tokens.role_of(token) {
            Some(role) => {
                app.throttle.succeeded(ip);
                Ok(Caller {
                    role,
                    session: None,
                })
            }
            None => match app.throttle.failed(ip, now) {
                Some(wait) => Err(too_many(wait)),
                None => Err(unauthorized("the bearer token is not valid")),
            },
        };
    }
    let Some(id) = cookie(headers, SESSION_COOKIE) else {
        return Err(unauthorized("no token and no session"));
    };
    let Some((role, csrf)) = app.sessions.get(id, now) else {
        return Err(unauthorized("the session has ended"));
    };
    if !is_read(req.method()) {
        let given = headers
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !auth::same(given.as_bytes(), csrf.as_bytes()) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "csrf",
                "a change made with the session cookie needs the X-CSRF-Token header",
            )
            .fix("send the csrf value the login answered in the X-CSRF-Token header"));
        }
    }
    Ok(Caller {
        role,
        session: Some(id.to_owned()),
    })
}

pub(crate) fn unauthorized(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).fix(
        "send Authorization: Bearer <token> (admin.token or viewer.token in the data dir), or log in",
    )
}

pub(crate) fn too_many(wait: u64) -> ApiError {
    let mut e = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_attempts",
        format!("too many failed attempts from this address; try again in {wait} s"),
    );
    e.retry_after = Some(wait);
    e
}
