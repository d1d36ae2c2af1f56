//! One client connection: CONNECT under a timeout, then a loop that reads packets for the
//! router and writes what the router queued, with keep-alive and write timeouts.
//!
//! Everything here runs inside the connection's own task, never in the accept loop.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::BytesMut;
use moat_codec::{
    Codec, ConnAck, Connect, DecodeError, Disconnect, Packet, Properties, ProtocolVersion,
    ReasonCode,
};
use moat_core::{ClientInfo, ConnId};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::auth::AuthState;
use crate::config::{ListenerConfig, ServerConfig};
use crate::metrics::ConnectionSlot;
use crate::outbox::{CloseReason, Outbox};
use crate::router::{EndNote, ToRouter};
use moat_tls::{ConnectionGuard, IdentitySource, PeerIdentity};

/// The smallest and largest read (bytes) of a connection. An idle connection keeps a buffer of
/// the smallest size; a busy one doubles it on every full read.
const MIN_READ: usize = 256;
const MAX_READ: usize = 64 * 1024;

/// A connection's byte stream (TCP, TLS, WebSocket), boxed: the connection task's future
/// then has one small size whatever the transport, and an idle connection costs little.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {
    /// Ready once a read would find data (or the end of the stream), so that an idle
    /// connection needs no read buffer. Transports that cannot tell are ready at once.
    fn poll_read_ready(&mut self, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl Io for TcpStream {
    fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Self::poll_read_ready(self, cx)
    }
}

// rustls and the WebSocket layer may hold decoded bytes the socket no longer shows: they read
// into a buffer at once.
impl Io for crate::TlsTcp {}
impl<IO: AsyncRead + AsyncWrite + Unpin + Send> Io for moat_ws::WsStream<IO> {}

/// A boxed [`Io`].
pub(crate) type BoxIo = Box<dyn Io>;

/// What every connection task shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Arc<ServerConfig>,
    pub(crate) router: mpsc::Sender<ToRouter>,
    /// Cancelled when shutdown's grace period is over: connections still open are dropped.
    pub(crate) hard_stop: CancellationToken,
    /// Passwords, ACL, failure counters.
    pub(crate) auth: Arc<AuthState>,
}

/// What a TLS handshake established.
#[derive(Debug)]
pub(crate) struct TlsConn {
    /// The verified client certificate's names, if one was presented.
    pub(crate) identity: Option<PeerIdentity>,
    /// Which name becomes the username.
    pub(crate) source: IdentitySource,
    /// Cancelled when the listener's certificate is removed or a CRL revokes the peer.
    pub(crate) guard: ConnectionGuard,
    /// The TLS version agreed ("TLSv1.3").
    pub(crate) version: &'static str,
}

impl TlsConn {
    /// The facts the admin API shows.
    fn info(&self) -> moat_core::TlsInfo {
        let cert = self.identity.as_ref();
        moat_core::TlsInfo {
            version: self.version.to_owned(),
            identity: cert.and_then(|id| id.name(self.source)).map(str::to_owned),
            subject: cert.map(|id| id.dn.clone()),
            fingerprint: cert.map(|id| id.fingerprint.clone()),
            serial: cert.map(|id| serial_hex(&id.serial)),
            not_after: cert.map(|id| id.not_after),
            ca_subject: cert.and_then(|id| id.ca_subject.clone()),
            ca_fingerprint: cert.and_then(|id| id.ca_fingerprint.clone()),
        }
    }
}

/// A serial number's bytes as hex pairs with colons (`01:a2:...`).
fn serial_hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 3);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        let _ = std::fmt::Write::write_fmt(&mut out, format_args!("{b:02x}"));
    }
    out
}

/// What [`Connection::forward_packet`] stopped at. Boxed payloads keep it small: it is held
/// while the connection task waits.
enum Forwarded {
    /// One packet went to the router.
    One,
    AllBuffered,
    RouterFull(Box<ToRouter>),
    RouterGone,
    Malformed(Box<DecodeError>),
}

/// Aborts a helper task when the connection ends.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Why a connection ended, for the log.
#[derive(Debug)]
enum End {
    Closed,
    ClosedByBroker,
    Io(std::io::Error),
    Decode(DecodeError),
    ConnectTimeout,
    WriteTimeout,
    Refused(ReasonCode),
    NotConnect,
    Stopped,
    CertificateWithdrawn,
    CertificateRevoked,
    CaRemoved,
    CaDisconnected,
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Closed => f.write_str("closed by the client"),
            Self::ClosedByBroker => f.write_str("closed by the broker"),
            Self::Io(e) => write!(f, "I/O error: {e}"),
            Self::Decode(e) => write!(f, "{e}"),
            Self::ConnectTimeout => f.write_str("no CONNECT in time"),
            Self::WriteTimeout => f.write_str("write timed out (client not reading)"),
            Self::Refused(code) => write!(f, "CONNECT refused: {code}"),
            Self::NotConnect => f.write_str("first packet was not CONNECT [MQTT-3.1.0-1]"),
            Self::Stopped => f.write_str("server stopping"),
            Self::CertificateWithdrawn => f.write_str("the listener's certificate was removed"),
            Self::CertificateRevoked => f.write_str("a CRL now revokes the client's certificate"),
            Self::CaRemoved => {
                f.write_str("the client CA its certificate chains to is no longer trusted")
            }
            Self::CaDisconnected => {
                f.write_str("an operator disconnected the clients of its client CA")
            }
        }
    }
}

/// A connection as the accept loop hands it over.
pub(crate) struct Accepted {
    pub(crate) stream: TcpStream,
    pub(crate) conn: ConnId,
    pub(crate) peer: SocketAddr,
    pub(crate) listener: Arc<ListenerConfig>,
    pub(crate) live_tls: Option<Arc<moat_tls::LiveTls>>,
    pub(crate) shared: Arc<Shared>,
    /// The connection's place under `max_connections` and its listener's counters.
    pub(crate) slot: ConnectionSlot,
}

/// Serves one connection until it ends: the connection task's whole future. It takes one
/// boxed argument (an async fn keeps its arguments for its whole life), the transport
/// handshakes run boxed (their state is freed once done), and what stays for the life of the
/// connection is `Connection` and the MQTT loop's state.
pub(crate) async fn serve(accepted: Box<Accepted>) {
    let opened = async move {
        let Accepted {
            stream,
            conn,
            peer,
            listener,
            live_tls,
            shared,
            slot,
        } = *accepted;
        let transport = crate::open_transport(stream, peer, &listener, live_tls, &shared);
        let (io, tls) = Box::pin(transport).await?;
        if let Some(t) = &tls {
            let span = tracing::Span::current();
            span.record("tls", true);
            if let Some(id) = &t.identity {
                span.record("cert", id.fingerprint.as_str());
                if let Some(name) = id.name(t.source).or(id.cn.as_deref()) {
                    span.record("identity", name);
                }
            }
        }
        let max_packet_size = shared.config.broker.max_packet_size;
        let c = Connection {
            io,
            rbuf: BytesMut::with_capacity(MIN_READ),
            wbuf: BytesMut::new(),
            codec: Codec::new(max_packet_size),
            conn,
            shared,
            peer,
            listener,
            slot,
        };
        Some((c, tls))
    };
    let Some((mut c, tls)) = Box::pin(opened).await else {
        return;
    };
    // One level of async state for the connection's life: `c`, and the loop's (CONNECT and
    // authentication run boxed inside `establish_or_stop`).
    let end = 'run: {
        let (outbox, version) = match c.establish_or_stop(tls.as_deref()).await {
            Ok(established) => established,
            Err(end) => break 'run end,
        };
        let guard = tls.as_deref().map(|t| &t.guard);
        c.run_connected(&outbox, version, guard).await
    };
    let closed = closed_message(&c, end);
    let router = &c.shared.router;
    if let Err(Some(msg)) = try_hand_over(router, closed) {
        let _ = Box::pin(router.send(*msg)).await;
    }
}

/// The router's notice that a connection ended. An unusual end is logged at info level by the
/// router, which knows the client id.
fn closed_message(c: &Connection, end: End) -> ToRouter {
    let note = match end {
        End::Closed | End::ClosedByBroker | End::Io(_) => {
            debug!(reason = %end, "connection ended");
            None
        }
        other => Some(Box::new(EndNote {
            reason: other.to_string(),
            peer: c.peer,
            listener: Arc::clone(&c.slot.listener.name),
        })),
    };
    ToRouter::Closed { conn: c.conn, note }
}

/// Sends `msg` to the router if its channel has room. If it is full, returns the message
/// (boxed: small to hold across the wait); `Err(None)`: the router is gone.
fn try_hand_over(
    router: &mpsc::Sender<ToRouter>,
    msg: ToRouter,
) -> Result<(), Option<Box<ToRouter>>> {
    router.try_send(msg).map_err(|e| match e {
        mpsc::error::TrySendError::Full(msg) => Some(Box::new(msg)),
        mpsc::error::TrySendError::Closed(_) => None,
    })
}

struct Connection {
    io: BoxIo,
    rbuf: BytesMut,
    wbuf: BytesMut,
    codec: Codec,
    conn: ConnId,
    shared: Arc<Shared>,
    peer: SocketAddr,
    listener: Arc<ListenerConfig>,
    /// The connection's place under `max_connections`, and its listener's name and counters.
    slot: ConnectionSlot,
}

/// What woke a connected connection's task.
enum Event {
    /// The server's hard stop.
    Stop,
    /// Its outbox: packets to write, a close, or reading resumed.
    Outbox,
    /// Input: `None` when `rbuf` already held a packet, else what a read brought.
    Input(std::io::Result<Option<(usize, usize)>>),
}

impl Connection {
    /// [`Connection::establish`] in a boxed future, given up when the server stops.
    async fn establish_or_stop(
        &mut self,
        tls: Option<&TlsConn>,
    ) -> Result<(Arc<Outbox>, ProtocolVersion), End> {
        let shared = Arc::clone(&self.shared);
        let listener = Arc::clone(&self.listener);
        let peer = self.peer;
        tokio::select! {
            established = Box::pin(self.establish(peer, &listener, tls)) => established,
            () = shared.hard_stop.cancelled() => Err(End::Stopped),
        }
    }

    /// CONNECT under the timeout, authentication, and the router's CONNACK decision. Returns
    /// the outbox and the protocol version.
    async fn establish(
        &mut self,
        peer: SocketAddr,
        listener: &ListenerConfig,
        tls: Option<&TlsConn>,
    ) -> Result<(Arc<Outbox>, ProtocolVersion), End> {
        let config = Arc::clone(&self.shared.config);
        let connect = match timeout(config.connect_timeout, self.read_connect()).await {
            Err(_) => return Err(End::ConnectTimeout),
            Ok(Err(end)) => return Err(end),
            Ok(Ok(connect)) => connect,
        };
        let version = connect.protocol;
        self.codec.set_version(version);

        // A verified client certificate names the client; its identity may become the
        // username (identity = cn | san | dn).
        let cert_name = tls
            .and_then(|t| t.identity.as_ref().and_then(|id| id.name(t.source)))
            .map(str::to_owned);
        let policy = moat_auth::ListenerPolicy {
            proof: listener.proof,
            allow_anonymous: listener.allow_anonymous,
            identity_as_username: tls.is_some_and(|t| t.source != IdentitySource::None),
        };
        let decided = self
            .shared
            .auth
            .authenticate(
                policy,
                connect.username.clone(),
                connect.password.clone(),
                cert_name,
                peer.ip(),
            )
            .await;
        let principal = match decided {
            Ok(p) => p,
            Err(failure) => {
                let code = failure.reason_code();
                self.refuse(version, code).await;
                return Err(End::Refused(code));
            }
        };

        let info = ClientInfo {
            listener: Arc::clone(&self.slot.listener.name),
            peer: Some(peer),
            username: principal.username,
            tls: tls.map(|t| Arc::new(t.info())),
            on_cert_expiry: listener.on_client_cert_expiry,
            client_id_from: listener.client_id,
        };
        let outbox = Arc::new(Outbox::default());
        let (reply, outcome) = oneshot::channel();
        let msg = ToRouter::Connect {
            conn: self.conn,
            connect: Box::new(connect),
            info,
            outbox: Arc::clone(&outbox),
            reply,
        };
        if self.shared.router.send(msg).await.is_err() {
            return Err(End::Stopped);
        }
        let Ok(outcome) = outcome.await else {
            return Err(End::Stopped);
        };
        if outcome.accepted {
            tracing::Span::current().record("client_id", outcome.client_id.as_str());
            debug!(keep_alive = outcome.keep_alive, %version, "connected");
        }
        Ok((outbox, version))
    }

    /// Reads until CONNECT is decoded. Anything else first is a protocol violation. A CONNECT
    /// that declares MQTT 5 but does not decode is answered with a CONNACK carrying the error's
    /// reason code before the connection closes (section 4.13.1 allows it, and the client
    /// learns why); 3.1.1 has no code for it and closes without CONNACK [MQTT-3.1.4-1].
    async fn read_connect(&mut self) -> Result<Connect, End> {
        loop {
            // Read before decoding, which may take the packet's bytes whatever it finds.
            let declared = moat_codec::connect_version(&self.rbuf);
            match self.codec.decode(&mut self.rbuf) {
                Ok(Some(Packet::Connect(c))) => return Ok(*c),
                Ok(Some(_)) => return Err(End::NotConnect),
                Ok(None) => {}
                Err(e @ DecodeError::UnsupportedProtocolVersion { .. }) => {
                    // [MQTT-3.1.2-2]: an MQTT client asking for a level we do not speak gets
                    // "unacceptable protocol version" in the 3.1.1 format every version reads.
                    if let DecodeError::UnsupportedProtocolVersion { name, .. } = &e {
                        if name == "MQTT" || name == "MQIsdp" {
                            let code = ReasonCode::UNSUPPORTED_PROTOCOL_VERSION;
                            self.refuse(ProtocolVersion::V3_1_1, code).await;
                        }
                    }
                    return Err(End::Decode(e));
                }
                Err(e) => {
                    if declared == Some(ProtocolVersion::V5) {
                        self.refuse(ProtocolVersion::V5, e.reason_code()).await;
                    }
                    return Err(End::Decode(e));
                }
            }
            match self.io.read_buf(&mut self.rbuf).await {
                Ok(0) => return Err(End::Closed),
                Ok(n) => self.slot.listener.received(n),
                Err(e) => return Err(End::Io(e)),
            }
        }
    }

    /// Sends a refusing CONNACK and shuts the connection down.
    async fn refuse(&mut self, version: ProtocolVersion, code: ReasonCode) {
        let ack = Packet::ConnAck(ConnAck {
            session_present: false,
            reason_code: code,
            properties: Properties::default(),
        });
        self.write_now(&ack, version).await;
        let _ = self.io.shutdown().await;
    }

    /// Encodes everything waiting in the outbox into `wbuf`. Returns whether the outbox is
    /// closed and whether this was a small burst (fewer than 16 packets).
    fn encode_outbox(&mut self, outbox: &Outbox, version: ProtocolVersion) -> (bool, bool) {
        let (mut batch, closed) = outbox.take_all();
        let n = batch.len();
        for packet in batch.drain(..) {
            if let Err(e) = moat_codec::encode(&packet, version, &mut self.wbuf) {
                warn!(error = %e, "packet not encodable; dropped");
            }
        }
        // A busy connection keeps its buffer as the outbox's spare (the router then never
        // regrows it); a quiet one (a small burst) frees both.
        if n >= 16 {
            outbox.recycle(batch);
        } else {
            drop(batch);
            outbox.drop_spare();
        }
        (closed, n < 16)
    }

    /// Reads what the transport has, up to the buffer's spare room (at least `hint`). Without
    /// a buffer (an idle connection), waits until the transport has data before making one.
    /// Returns the bytes read and the room there was.
    fn poll_read_some(
        &mut self,
        cx: &mut Context<'_>,
        hint: usize,
    ) -> Poll<std::io::Result<(usize, usize)>> {
        if self.rbuf.capacity() == 0 {
            ready!(self.io.poll_read_ready(cx))?;
        }
        if self.rbuf.capacity() - self.rbuf.len() < hint {
            self.rbuf.reserve(hint);
        }
        let spare = self.rbuf.capacity() - self.rbuf.len();
        let n = ready!(tokio_util::io::poll_read_buf(
            std::pin::Pin::new(&mut self.io),
            cx,
            &mut self.rbuf
        ))?;
        self.slot.listener.received(n);
        Poll::Ready(Ok((n, spare)))
    }

    /// Ready with `None` at once when `rbuf` already holds a packet (or an error) to decode,
    /// otherwise as [`Connection::poll_read_some`]. Every byte read is thus processed before
    /// the connection waits for the transport: the packets a client sent together with CONNECT
    /// are in `rbuf` when the loop starts, and the transport may have nothing more to say (with
    /// keep-alive 0, never). Bytes a TLS or WebSocket stream decoded but has not yet handed
    /// over are found by its read, which [`Io::poll_read_ready`] does not hold back for them.
    fn poll_input(
        &mut self,
        cx: &mut Context<'_>,
        hint: usize,
    ) -> Poll<std::io::Result<Option<(usize, usize)>>> {
        if self.codec.is_decodable(&self.rbuf) {
            return Poll::Ready(Ok(None));
        }
        self.poll_read_some(cx, hint).map_ok(Some)
    }

    /// Decodes the next buffered packet and hands it to the router, if its channel has room.
    fn forward_packet(&mut self) -> Forwarded {
        let packet = match self.codec.decode(&mut self.rbuf) {
            Ok(Some(p)) => p,
            Ok(None) => return Forwarded::AllBuffered,
            Err(e) => return Forwarded::Malformed(Box::new(e)),
        };
        let msg = ToRouter::Packet {
            conn: self.conn,
            packet,
        };
        match try_hand_over(&self.shared.router, msg) {
            Ok(()) => Forwarded::One,
            Err(Some(msg)) => Forwarded::RouterFull(msg),
            Err(None) => Forwarded::RouterGone,
        }
    }

    /// Sends a v5 DISCONNECT with `code` (callers box this future: the packet then never sits
    /// in the connection task's own state).
    async fn disconnect_v5(&mut self, code: ReasonCode) {
        let d = Packet::Disconnect(Disconnect {
            reason_code: code,
            properties: Properties::default(),
        });
        self.write_now(&d, ProtocolVersion::V5).await;
    }

    async fn write_now(&mut self, packet: &Packet, version: ProtocolVersion) {
        self.wbuf.clear();
        if moat_codec::encode(packet, version, &mut self.wbuf).is_ok() {
            let _ = self.write_wbuf().await;
        }
        self.wbuf.clear();
    }

    /// Writes what the transport takes from `wbuf` now, without waiting: usually all of it (a
    /// socket with room), and then there is no write future to make. Returns whether `wbuf` is
    /// written and flushed; otherwise what is left of it is for [`Connection::write_wbuf`].
    fn write_at_once(&mut self, cx: &mut Context<'_>) -> std::io::Result<bool> {
        use bytes::Buf;
        let mut io = std::pin::Pin::new(&mut self.io);
        while !self.wbuf.is_empty() {
            match io.as_mut().poll_write(cx, &self.wbuf) {
                Poll::Ready(Ok(0)) => return Err(std::io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(n)) => {
                    self.slot.listener.sent(n);
                    self.wbuf.advance(n);
                }
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => return Ok(false),
            }
        }
        match io.poll_flush(cx) {
            Poll::Ready(Ok(())) => Ok(true),
            Poll::Ready(Err(e)) => Err(e),
            Poll::Pending => Ok(false),
        }
    }

    /// Writes everything in `wbuf` and flushes (TLS and WebSocket streams buffer) within the
    /// write timeout.
    async fn write_wbuf(&mut self) -> Result<(), End> {
        let io = &mut self.io;
        let buf = &self.wbuf;
        let write = async move {
            io.write_all(buf).await?;
            io.flush().await
        };
        match timeout(self.shared.config.write_timeout, write).await {
            Err(_) => Err(End::WriteTimeout),
            Ok(Err(e)) => Err(End::Io(e)),
            Ok(Ok(())) => {
                self.slot.listener.sent(self.wbuf.len());
                Ok(())
            }
        }
    }

    async fn run_connected(
        &mut self,
        outbox: &Arc<Outbox>,
        version: ProtocolVersion,
        tls_guard: Option<&ConnectionGuard>,
    ) -> End {
        let shared = Arc::clone(&self.shared);
        // Keep-alive is the core's timer, a withdrawn certificate a small watcher task: both
        // end the connection through its outbox, so this loop waits on the outbox and the
        // socket only.
        let _watcher = tls_guard.map(|g| {
            let closing = g.closing();
            let outbox = Arc::clone(outbox);
            AbortOnDrop(
                tokio::spawn(async move {
                    let reason = match closing.await {
                        moat_tls::CloseCause::Revoked => CloseReason::CertificateRevoked,
                        moat_tls::CloseCause::CaRemoved => CloseReason::CaRemoved,
                        moat_tls::CloseCause::Disconnected => CloseReason::CaDisconnected,
                        _ => CloseReason::CertificateWithdrawn,
                    };
                    outbox.close_because(reason);
                })
                .abort_handle(),
            )
        });
        // Read size: grows while reads fill the buffer (a busy publisher: many packets per
        // syscall), shrinks back when the client goes quiet (little memory per idle client).
        let mut read_hint = MIN_READ;
        if self.rbuf.is_empty() {
            // Nothing came after CONNECT: no read buffer until something does.
            self.rbuf = BytesMut::new();
        }
        // The hard stop (connections still open after the shutdown grace) is registered for
        // once; every wake-up then only checks its flag.
        let stop = shared.hard_stop.cancelled();
        tokio::pin!(stop);
        let mut stop_armed = false;
        loop {
            // A client that does not read what it is sent is not read from either.
            let paused = outbox.len() >= shared.config.max_outbox_packets || outbox.reading_held();
            // One hand-written poll instead of a `select!`: nothing is made and dropped each
            // time the task waits (this loop runs once per packet of a quiet device).
            let event = std::future::poll_fn(|cx| {
                if shared.hard_stop.is_cancelled() {
                    return Poll::Ready(Event::Stop);
                }
                if !stop_armed {
                    stop_armed = true;
                    if stop.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Event::Stop);
                    }
                }
                if outbox.poll_signalled(cx).is_ready() {
                    return Poll::Ready(Event::Outbox);
                }
                if paused {
                    return Poll::Pending;
                }
                self.poll_input(cx, read_hint).map(Event::Input)
            })
            .await;
            match event {
                Event::Stop => return End::Stopped,
                Event::Outbox => {
                    let (closed, small) = self.encode_outbox(outbox, version);
                    if outbox.take_room_wanted() {
                        // The router waits for room to send more retained messages.
                        let room = ToRouter::Room { conn: self.conn };
                        match try_hand_over(&self.shared.router, room) {
                            Ok(()) => {}
                            Err(Some(msg)) => {
                                if Box::pin(self.shared.router.send(*msg)).await.is_err() {
                                    return End::Stopped;
                                }
                            }
                            Err(None) => return End::Stopped,
                        }
                    }
                    if !self.wbuf.is_empty() {
                        let at_once =
                            std::future::poll_fn(|cx| Poll::Ready(self.write_at_once(cx)));
                        match at_once.await {
                            Ok(true) => {}
                            // Boxed: a write in progress (with its timeout) is the largest state
                            // of this loop, and an idle connection should not pay for it.
                            Ok(false) => {
                                if let Err(end) = Box::pin(self.write_wbuf()).await {
                                    return end;
                                }
                            }
                            Err(e) => return End::Io(e),
                        }
                        self.wbuf.clear();
                        // Small bursts (a quiet client) or a huge one: let the buffer go.
                        if small || self.wbuf.capacity() > 64 * 1024 {
                            self.wbuf = BytesMut::new();
                        }
                    }
                    if closed {
                        let (code, end) = match outbox.close_reason() {
                            CloseReason::Broker => {
                                let limit = shared.config.write_timeout;
                                let _ = Box::pin(timeout(limit, self.io.shutdown())).await;
                                return End::ClosedByBroker;
                            }
                            CloseReason::CertificateWithdrawn => {
                                (ReasonCode::ADMINISTRATIVE_ACTION, End::CertificateWithdrawn)
                            }
                            CloseReason::CertificateRevoked => {
                                (ReasonCode::NOT_AUTHORIZED, End::CertificateRevoked)
                            }
                            CloseReason::CaRemoved => (ReasonCode::NOT_AUTHORIZED, End::CaRemoved),
                            CloseReason::CaDisconnected => {
                                (ReasonCode::ADMINISTRATIVE_ACTION, End::CaDisconnected)
                            }
                        };
                        if version.is_v5() {
                            Box::pin(self.disconnect_v5(code)).await;
                        }
                        return end;
                    }
                }
                Event::Input(read) => {
                    match read {
                        // Already in `rbuf`.
                        Ok(None) => {}
                        Ok(Some((0, _))) => return End::Closed,
                        Ok(Some((n, spare))) if n >= spare => {
                            read_hint = (read_hint * 2).min(MAX_READ);
                        }
                        Ok(Some((n, _))) if n < read_hint / 4 => {
                            read_hint = (read_hint / 2).max(MIN_READ);
                        }
                        Ok(Some(_)) => {}
                        Err(e) => return End::Io(e),
                    }
                    // Decoding and handing packets over is synchronous; only a full router
                    // channel or a decode error waits, in a boxed future: no packet is kept
                    // across an await in this task's own (long-lived) state.
                    loop {
                        match self.forward_packet() {
                            // Like an awaited send, each packet counts against the task's
                            // scheduling budget: a publisher with a full buffer yields to the
                            // router and the subscribers every so often instead of flooding
                            // them with one read's worth of packets (QoS 0 would then be
                            // dropped at full outboxes).
                            Forwarded::One => tokio::task::consume_budget().await,
                            Forwarded::AllBuffered => break,
                            Forwarded::RouterFull(msg) => {
                                let router = &self.shared.router;
                                if Box::pin(router.send(*msg)).await.is_err() {
                                    return End::Stopped;
                                }
                            }
                            Forwarded::RouterGone => return End::Stopped,
                            Forwarded::Malformed(e) => {
                                if version.is_v5() {
                                    let code = e.reason_code();
                                    Box::pin(self.disconnect_v5(code)).await;
                                }
                                return End::Decode(*e);
                            }
                        }
                    }
                    // Quiet (or much smaller reads than the buffer): let the buffer go.
                    if self.rbuf.is_empty()
                        && (read_hint == MIN_READ || self.rbuf.capacity() > 2 * read_hint)
                    {
                        self.rbuf = BytesMut::new();
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{serve, Accepted};

    fn future_size<F, Fut>(_: F) -> usize
    where
        F: FnOnce(Box<Accepted>) -> Fut,
    {
        size_of::<Fut>()
    }

    /// Every idle connection pays for its task's future: tokio allocates it with about 104
    /// bytes of header and trailer, in 128-byte steps. 512 bytes (a 640-byte task) keeps an
    /// idle TCP connection under 2 KiB; beyond 536 it would cost 128 more. Box or move state
    /// out of the loop instead of growing it (ARCHITECTURE.md).
    #[test]
    fn connection_task_stays_small() {
        let n = future_size(serve);
        assert!(n <= 536, "the connection task's future grew to {n} bytes");
    }
}
