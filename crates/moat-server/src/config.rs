//! Validated server settings (the CLI turns moat.toml into these).

use std::net::SocketAddr;
use std::time::Duration;

use moat_core::BrokerConfig;

/// The transport of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ListenerKind {
    /// Plain MQTT over TCP.
    Tcp,
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
}

/// Everything the server needs to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Listeners; at least one.
    pub listeners: Vec<ListenerConfig>,
    /// The broker core's limits.
    pub broker: BrokerConfig,
    /// A client must send CONNECT within this time after the connection opens.
    pub connect_timeout: Duration,
    /// Open connections at most (over all listeners); more are closed at once.
    pub max_connections: usize,
    /// Packets waiting to be written to one client before QoS 0 messages to it are dropped
    /// (the slow-consumer policy) and reading from it pauses.
    pub max_outbox_packets: usize,
    /// A write to a client that makes no progress for this long closes the connection.
    pub write_timeout: Duration,
    /// How long shutdown waits for connections to flush before closing them.
    pub shutdown_grace: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listeners: vec![ListenerConfig {
                name: "local".into(),
                kind: ListenerKind::Tcp,
                bind: SocketAddr::from(([127, 0, 0, 1], 1883)),
                allow_anonymous: true,
            }],
            broker: BrokerConfig::default(),
            connect_timeout: Duration::from_secs(10),
            max_connections: 10_000,
            max_outbox_packets: 1_000,
            write_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}
