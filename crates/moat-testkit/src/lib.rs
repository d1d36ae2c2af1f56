//! Test helpers for Moat: a real broker on an ephemeral loopback port, and small raw-packet
//! clients for scripting exact packet sequences. Not published.

use std::net::SocketAddr;
use std::time::Duration;

pub mod pki;

use bytes::BytesMut;
use moat_codec::{Codec, Connect, Packet, Properties, ProtocolVersion};
use moat_server::{ListenerConfig, Server, ServerConfig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
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

impl std::fmt::Debug for RawClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawClient")
            .field("version", &self.version)
            .finish_non_exhaustive()
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

/// A client that sends and receives exact packets, with nothing automatic.
pub struct RawClient {
    stream: Box<dyn Io>,
    codec: Codec,
    rbuf: BytesMut,
    version: ProtocolVersion,
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
        Self {
            stream: Box::new(stream),
            codec,
            rbuf: BytesMut::new(),
            version,
        }
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
        let mut buf = BytesMut::new();
        moat_codec::encode(packet, self.version, &mut buf).expect("encode");
        self.send_raw(&buf).await;
    }

    /// Sends raw bytes (for malformed input). A write error (the broker closed the
    /// connection) is not reported here: the next [`RawClient::recv`] returns `None`.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        if self.stream.write_all(bytes).await.is_ok() {
            let _ = self.stream.flush().await;
        }
    }

    /// The next packet, or `None` when the broker closed the connection.
    ///
    /// # Panics
    /// If nothing arrives within [`TIMEOUT`] or the bytes do not decode.
    pub async fn recv(&mut self) -> Option<Packet> {
        tokio::time::timeout(TIMEOUT, self.recv_inner())
            .await
            .expect("no packet within the timeout")
    }

    /// The next packet if one arrives within `wait`.
    pub async fn try_recv(&mut self, wait: Duration) -> Option<Option<Packet>> {
        tokio::time::timeout(wait, self.recv_inner()).await.ok()
    }

    async fn recv_inner(&mut self) -> Option<Packet> {
        loop {
            match self.codec.decode(&mut self.rbuf) {
                Ok(Some(p)) => return Some(p),
                Ok(None) => {}
                Err(e) => panic!("broker sent undecodable bytes: {e}"),
            }
            match self.stream.read_buf(&mut self.rbuf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// True if the connection is closed (or fails) before `wait`: for TLS refusals that
    /// surface on the first read.
    pub async fn closed_within(&mut self, wait: Duration) -> bool {
        matches!(self.try_recv(wait).await, Some(None))
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
