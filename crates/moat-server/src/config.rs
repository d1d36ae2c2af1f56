//! Validated server settings ([`crate::config_file`] turns moat.toml into these).

use std::net::SocketAddr;
use std::time::Duration;

use moat_auth::Proof;
use moat_core::{BrokerConfig, CertExpiryAction, ClientIdSource};

use crate::auth::AuthConfig;
use moat_tls::TlsSettings;

/// The transport of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    /// Plain MQTT over TCP.
    Tcp,
    /// MQTT over TLS (mqtts).
    Tls,
    /// MQTT over WebSocket.
    Ws,
    /// MQTT over WebSocket over TLS (wss).
    Wss,
}

impl ListenerKind {
    /// True for the kinds that run TLS.
    pub fn is_tls(self) -> bool {
        matches!(self, Self::Tls | Self::Wss)
    }

    /// True for the kinds that run WebSocket.
    pub fn is_ws(self) -> bool {
        matches!(self, Self::Ws | Self::Wss)
    }
}

/// One listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    /// Name used in logs and metrics.
    pub name: String,
    /// Transport.
    pub kind: ListenerKind,
    /// Address to bind (port 0 picks a free port).
    pub bind: SocketAddr,
    /// Whether clients without credentials may connect.
    pub allow_anonymous: bool,
    /// Which proofs a client must bring when it is not anonymous: a password, a verified
    /// client certificate, either, or both.
    pub proof: Proof,
    /// TLS files and client-certificate policy (tls and wss listeners).
    pub tls: Option<TlsSettings>,
    /// The HTTP path of WebSocket listeners.
    pub path: String,
    /// Where the client id comes from: as sent (default), or the client certificate's
    /// identity (`client_id = "certificate"`; see [`ClientIdSource::Certificate`] for what is
    /// refused and why).
    pub client_id: ClientIdSource,
    /// What happens when a connected client's certificate expires: disconnect (default) or
    /// warn ([`CertExpiryAction`]).
    pub on_client_cert_expiry: CertExpiryAction,
}

impl ListenerConfig {
    /// A plain TCP listener.
    pub fn tcp(name: &str, bind: SocketAddr, allow_anonymous: bool) -> Self {
        Self {
            name: name.into(),
            kind: ListenerKind::Tcp,
            bind,
            allow_anonymous,
            proof: Proof::Password,
            tls: None,
            path: "/mqtt".into(),
            client_id: ClientIdSource::Client,
            on_client_cert_expiry: CertExpiryAction::Disconnect,
        }
    }

    /// A TLS listener (MQTT over TLS) with the defaults of a `[[listeners]]` entry that says
    /// only `kind = "tls"`: no anonymous clients; a password, or a client certificate as well
    /// when `tls` asks for one.
    pub fn tls(name: &str, bind: SocketAddr, tls: TlsSettings) -> Self {
        let client_certs = tls.client_auth != moat_tls::ClientAuth::None;
        Self {
            kind: ListenerKind::Tls,
            proof: if client_certs {
                Proof::Either
            } else {
                Proof::Password
            },
            tls: Some(tls),
            ..Self::tcp(name, bind, false)
        }
    }
}

/// Where and how sessions, queued and retained messages are kept durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// The store directory.
    pub dir: std::path::PathBuf,
    /// Group commit (many messages per fsync) or one fsync per message.
    pub durability: moat_store::Durability,
}

/// Everything the server needs to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Listeners; at least one.
    pub listeners: Vec<ListenerConfig>,
    /// The broker core's limits.
    pub broker: BrokerConfig,
    /// The password file and the ACL.
    pub auth: AuthConfig,
    /// The durable store; `None` keeps everything in memory.
    pub store: Option<StoreConfig>,
    /// A client must send CONNECT within this time after the connection opens.
    pub connect_timeout: Duration,
    /// Open connections at most (over all listeners); more are closed at once.
    pub max_connections: usize,
    /// Password checks (argon2id, 19 MiB each while it runs) at most at once over all
    /// listeners; the checks of one address run one at a time. A CONNECT whose check cannot
    /// start within `connect_timeout` is refused with "server busy" (v5 0x89, v3 3). Default:
    /// [`default_max_concurrent_auth`].
    pub max_concurrent_auth: usize,
    /// Packets waiting to be written to one client before QoS 0 messages to it are dropped
    /// (the slow-consumer policy) and reading from it pauses.
    pub max_outbox_packets: usize,
    /// A write to a client that makes no progress for this long closes the connection.
    pub write_timeout: Duration,
    /// How long shutdown waits for connections to flush before closing them.
    pub shutdown_grace: Duration,
    /// A TLS handshake or WebSocket upgrade must finish within this time.
    pub handshake_timeout: Duration,
    /// How often TLS files are checked for changes (SIGHUP checks at once).
    pub tls_poll_interval: Duration,
    /// Where the certificate sets keep their state: the previous material, the marker of a
    /// deleted set, parts a listener had no file for. Default `<data_dir>/tls`.
    pub tls_state_dir: std::path::PathBuf,
    /// Forwarding rules and the spool's limits (rules need the store).
    pub forward: crate::ForwardConfig,
    /// When certificates and CRLs that are about to expire are warned about (`[tls_alarms]`).
    pub tls_alarms: TlsAlarmsConfig,
}

/// Expiry alarms (`[tls_alarms]` in moat.toml): when the broker warns, in the log and on
/// `$SYS/broker/tls/expiry/warning`, that a certificate it serves or trusts, a CRL's next
/// update, or a connected client's certificate is about to expire (see `crate::alarms`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsAlarmsConfig {
    /// How long before expiry each warning is given, longest first, without repeats (each
    /// at least a second). One warning per item and threshold crossed, one more when it
    /// has expired. Empty: no warnings (the counts in metrics and `$SYS` stay). Default 30,
    /// 7 and 1 days.
    pub warn_before: Vec<Duration>,
    /// How often everything is looked at (at least a second). Default 60 s.
    pub check_interval: Duration,
}

impl Default for TlsAlarmsConfig {
    fn default() -> Self {
        const DAY: u64 = 86_400;
        Self {
            warn_before: [30, 7, 1]
                .into_iter()
                .map(|d| Duration::from_secs(d * DAY))
                .collect(),
            check_interval: Duration::from_secs(60),
        }
    }
}

/// The default of [`ServerConfig::max_concurrent_auth`]: 2 per CPU, at least 2 and at most
/// 32 (4 on a 2-CPU machine). More than the CPUs adds no throughput, only memory.
pub fn default_max_concurrent_auth() -> usize {
    std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .saturating_mul(2)
        .clamp(2, 32)
}

/// The default number of worker threads: half the CPUs this process may use (its affinity
/// counts), at least 1. One task routes every message (ADR 0005), so more workers mostly add
/// hand-offs between threads; on 2 CPUs one worker costs less per message and carries more at
/// saturation than two (docs/BENCHMARKS.md, "Worker threads").
pub fn default_worker_threads() -> usize {
    (std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get) / 2).max(1)
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listeners: vec![ListenerConfig::tcp(
                "local",
                SocketAddr::from(([127, 0, 0, 1], 1883)),
                true,
            )],
            broker: BrokerConfig::default(),
            auth: AuthConfig::default(),
            store: None,
            connect_timeout: Duration::from_secs(10),
            max_connections: 10_000,
            max_concurrent_auth: default_max_concurrent_auth(),
            max_outbox_packets: 1_000,
            write_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(10),
            tls_poll_interval: Duration::from_secs(2),
            tls_state_dir: std::path::PathBuf::from("moat-data/tls"),
            forward: crate::ForwardConfig::default(),
            tls_alarms: TlsAlarmsConfig::default(),
        }
    }
}
