//! Test helpers for Moat: a real broker on an ephemeral loopback port ([`TestBroker`]), a
//! raw-packet client for scripting exact packet sequences ([`RawClient`], moat-client's
//! [`Framed`] with panicking conveniences) and a throwaway PKI ([`pki::TestPki`]). Not
//! published.

use std::net::SocketAddr;
use std::time::Duration;

pub mod pki;

use moat_client::{ClientError, Framed};
use moat_codec::{Codec, Connect, Packet, Properties, ProtocolVersion};
use moat_server::{ListenerConfig, Server, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long any single wait in a test may take before it fails. Generous: the machine is
/// small and shared.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// A broker running in this process on 127.0.0.1 with an ephemeral port.
#[derive(Debug)]
pub struct TestBroker {
    addr: SocketAddr,
    handle: moat_server::BrokerHandle,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestBroker {
    /// The default configuration with one anonymous tcp listener on 127.0.0.1:0.
    pub fn config() -> ServerConfig {
        let mut config = ServerConfig {
            listeners: vec![ListenerConfig::tcp(
                "test",
                SocketAddr::from(([127, 0, 0, 1], 0)),
                true,
            )],
            ..ServerConfig::default()
        };
        config.broker.sys_interval = None;
        config
    }

    /// Starts a broker with [`TestBroker::config`].
    pub async fn start() -> Self {
        Self::start_with(Self::config()).await
    }

    /// Starts a broker with `config` (its first listener is the one [`TestBroker::addr`] gives).
    ///
    /// # Panics
    /// If the broker cannot bind.
    pub async fn start_with(config: ServerConfig) -> Self {
        Self::start_server(Server::bind(config).await.expect("bind test broker"))
    }

    /// Runs a server already bound (to read its handles, such as
    /// [`Server::auth_stats`], first).
    pub fn start_server(server: Server) -> Self {
        let addr = server.local_addrs()[0].1;
        let handle = server.handle();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = server
                .run(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Self {
            addr,
            handle,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// A handle on the running broker (admin requests, accepted messages).
    pub fn handle(&self) -> &moat_server::BrokerHandle {
        &self.handle
    }

    /// The first listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Shuts the broker down gracefully and waits for it.
    ///
    /// # Panics
    /// If shutdown takes longer than [`TIMEOUT`].
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(TIMEOUT, task)
                .await
                .expect("broker shutdown timed out")
                .ok();
        }
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Any byte stream a client can run over (TCP, TLS, WebSocket).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A client that sends and receives exact packets, with nothing automatic: a [`Framed`] whose
/// methods panic where a test would only `expect`, and that waits at most [`TIMEOUT`].
///
/// It decodes packets of any size (the broker's limits are what tests examine, not ours).
pub struct RawClient {
    framed: Framed<Box<dyn Io>>,
}

impl std::fmt::Debug for RawClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawClient")
            .field("version", &self.framed.version())
            .finish_non_exhaustive()
    }
}

impl RawClient {
    /// Opens a TCP connection (no CONNECT sent).
    ///
    /// # Panics
    /// If the connection fails.
    pub async fn open(addr: SocketAddr, version: ProtocolVersion) -> Self {
        let stream = tokio::time::timeout(TIMEOUT, TcpStream::connect(addr))
            .await
            .expect("connect timed out")
            .expect("connect");
        Self::over(stream, version)
    }

    /// A client over an already open stream (no CONNECT sent).
    pub fn over(stream: impl Io + 'static, version: ProtocolVersion) -> Self {
        let mut codec = Codec::new(u32::MAX);
        codec.set_version(version);
        let stream: Box<dyn Io> = Box::new(stream);
        Self {
            framed: Framed::with_codec(stream, codec),
        }
    }

    /// The connection underneath, for what the conveniences here do not cover (batched
    /// writes, reads without a timeout).
    pub fn framed(&mut self) -> &mut Framed<Box<dyn Io>> {
        &mut self.framed
    }

    /// Sends CONNECT and returns the CONNACK (or `None` if the connection closed).
    ///
    /// # Panics
    /// If something other than CONNACK arrives.
    pub async fn handshake(&mut self, connect: Connect) -> Option<moat_codec::ConnAck> {
        self.send(&Packet::Connect(Box::new(connect))).await;
        match self.recv().await {
            Some(Packet::ConnAck(a)) => Some(a),
            Some(other) => panic!("expected CONNACK, got {other:?}"),
            None => None,
        }
    }

    /// Opens a connection and completes CONNECT/CONNACK, asserting success.
    ///
    /// # Panics
    /// If the broker does not answer with a successful CONNACK.
    pub async fn connect(
        addr: SocketAddr,
        version: ProtocolVersion,
        client_id: &str,
        clean: bool,
    ) -> Self {
        let mut c = Self::open(addr, version).await;
        c.send(&Packet::Connect(Box::new(connect_packet(
            client_id, version, clean,
        ))))
        .await;
        match c.recv().await {
            Some(Packet::ConnAck(ack)) if !ack.reason_code.is_error() => c,
            other => panic!("expected a successful CONNACK, got {other:?}"),
        }
    }

    /// Sends one packet (write errors surface on the next `recv`).
    ///
    /// # Panics
    /// If it cannot be encoded.
    pub async fn send(&mut self, packet: &Packet) {
        self.framed.feed(packet).expect("encode");
        // As in send_raw, a write error shows on the next recv.
        let _ = self.framed.flush().await;
    }

    /// Sends raw bytes (for malformed input). A write error (the broker closed the
    /// connection) is not reported here: the next [`RawClient::recv`] returns `None`.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        let _ = self.framed.send_raw(bytes).await;
    }

    /// The next packet, or `None` when the broker closed the connection.
    ///
    /// # Panics
    /// If nothing arrives within [`TIMEOUT`] or the bytes do not decode.
    pub async fn recv(&mut self) -> Option<Packet> {
        self.try_recv(TIMEOUT)
            .await
            .expect("no packet within the timeout")
    }

    /// The next packet if one arrives within `wait` (`Some(None)`: the connection closed).
    ///
    /// # Panics
    /// If the bytes do not decode.
    pub async fn try_recv(&mut self, wait: Duration) -> Option<Option<Packet>> {
        match self.framed.recv_timeout(wait).await {
            Ok(packet) => Some(packet),
            Err(ClientError::Timeout(_)) => None,
            Err(ClientError::Decode(e)) => panic!("broker sent undecodable bytes: {e}"),
            // Closed inside a packet, reset, or a TLS alert: closed all the same.
            Err(_) => Some(None),
        }
    }

    /// True if the connection is closed (or fails) before `wait`: for TLS refusals that
    /// surface on the first read.
    pub async fn closed_within(&mut self, wait: Duration) -> bool {
        matches!(self.try_recv(wait).await, Some(None))
    }

    /// Asserts the client is still served: a PINGREQ gets its PINGRESP.
    ///
    /// # Panics
    /// If anything else comes back.
    pub async fn assert_alive(&mut self) {
        self.send(&Packet::PingReq).await;
        match self.recv().await {
            Some(Packet::PingResp) => {}
            other => panic!("expected PINGRESP, got {other:?}"),
        }
    }

    /// Asserts the broker sends DISCONNECT with `code` and then closes the connection.
    ///
    /// # Panics
    /// If anything else comes back, or the connection stays open.
    pub async fn assert_disconnected_with(&mut self, code: moat_codec::ReasonCode) {
        match self.recv().await {
            Some(Packet::Disconnect(d)) => assert_eq!(d.reason_code, code),
            other => panic!("expected DISCONNECT {code:?}, got {other:?}"),
        }
        assert!(
            self.closed_within(TIMEOUT).await,
            "still open after DISCONNECT"
        );
    }

    /// Drops the TCP connection without DISCONNECT.
    pub fn abort(self) {
        drop(self);
    }
}

/// A CONNECT packet with keep-alive 60 and no credentials.
pub fn connect_packet(client_id: &str, version: ProtocolVersion, clean: bool) -> Connect {
    Connect {
        protocol: version,
        clean_start: clean,
        keep_alive: 60,
        client_id: client_id.into(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    }
}
