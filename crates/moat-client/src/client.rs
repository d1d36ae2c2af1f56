//! [`Client`]: a connection driven by a background task.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use moat_codec::{
    Codec, ConnAck, Disconnect, Packet, PacketId, Properties, ProtocolVersion, PubAck, Publish,
    QoS, ReasonCode, SubAck, Subscribe, SubscriptionOptions, UnsubAck, Unsubscribe,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, timeout, Instant};

use crate::error::ClientError;
use crate::framed::Framed;
use crate::options::ConnectOptions;

/// Requests queued from the [`Client`] handle to its task.
const COMMAND_CAPACITY: usize = 64;
/// The longest a single packet write may take before the connection is given up.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`Client::disconnect`] waits for the server to close its side.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Connects over TCP (with `TCP_NODELAY`) and performs the MQTT handshake.
///
/// `addr` is anything [`ToSocketAddrs`] accepts: `"127.0.0.1:1883"`, a [`std::net::SocketAddr`],
/// `("localhost", 1883)`. The TCP connect and the handshake each get
/// [`ConnectOptions::connect_timeout`].
///
/// # Errors
/// As [`Client::connect`], plus [`ClientError::Io`] and [`ClientError::Timeout`] for the TCP
/// connection.
pub async fn connect_tcp(
    addr: impl ToSocketAddrs,
    opts: ConnectOptions,
) -> Result<(Client, ConnAck), ClientError> {
    let stream = timeout(opts.connect_timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| ClientError::Timeout("the TCP connection"))??;
    stream.set_nodelay(true)?;
    Client::connect(stream, opts).await
}

/// A connected MQTT 3.1.1 or 5.0 client.
///
/// A background task owns the connection and does the protocol's bookkeeping: it allocates
/// packet identifiers, completes the QoS 1 and QoS 2 flows of outgoing messages, acknowledges
/// incoming ones (PUBACK; PUBREC, then PUBCOMP on PUBREL, delivering a QoS 2 message once),
/// resolves incoming topic aliases, and sends PINGREQ when nothing was sent for the keep-alive
/// interval, failing the connection if no PINGRESP comes back within another interval.
///
/// Every method takes `&self`, so one task can [`publish`](Self::publish) while another awaits
/// [`recv`](Self::recv) (share the client with an `Arc`, or use `tokio::join!`).
///
/// # Backpressure
/// Received messages wait in a buffer of [`ConnectOptions::incoming_capacity`] messages. When it
/// is full the task stops reading from the connection, and acknowledgements for our own
/// requests are not read either: a client that subscribes must keep calling `recv`.
/// Outgoing QoS 1 and 2 messages, subscribes and unsubscribes in flight are limited to
/// [`ConnectOptions::max_inflight`] and the server's receive maximum; further requests wait.
///
/// # Dropping
/// Dropping the client closes the connection at once, without DISCONNECT, so the server
/// publishes the will message. Use [`disconnect`](Self::disconnect) for a clean close.
#[derive(Debug)]
pub struct Client {
    commands: mpsc::Sender<Command>,
    incoming: tokio::sync::Mutex<mpsc::Receiver<Publish>>,
    end: Arc<Mutex<Option<Result<(), ClientError>>>>,
    task: JoinHandle<()>,
    version: ProtocolVersion,
}

impl Client {
    /// Sends CONNECT over `io`, waits for the CONNACK and starts the connection task.
    ///
    /// Returns the CONNACK too: it says whether a session was present and, in v5, carries the
    /// server's limits and any assigned client identifier.
    ///
    /// # Errors
    /// - [`ClientError::Refused`] when the CONNACK carries a failure code (v3.1.1 return codes
    ///   are mapped to their v5 equivalents, e.g. 5 to [`ReasonCode::NOT_AUTHORIZED`]);
    /// - [`ClientError::Timeout`] when no CONNACK arrives within
    ///   [`ConnectOptions::connect_timeout`];
    /// - [`ClientError::Disconnected`] when the server closes the connection (or sends
    ///   DISCONNECT) instead;
    /// - [`ClientError::Protocol`] for any other packet (AUTH included: enhanced authentication
    ///   is not supported), and [`ClientError::Io`], [`ClientError::Decode`] or
    ///   [`ClientError::Encode`].
    ///
    /// # Panics
    /// When called outside a Tokio runtime (the connection task is spawned with
    /// [`tokio::spawn`]).
    pub async fn connect<IO>(io: IO, opts: ConnectOptions) -> Result<(Self, ConnAck), ClientError>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (framed, connack) = connect_framed(io, &opts).await?;

        let v5 = opts.protocol.is_v5();
        let keep_alive = connack
            .properties
            .server_keep_alive
            .filter(|_| v5)
            .unwrap_or(opts.keep_alive);
        let server_receive_maximum = connack.properties.receive_maximum.filter(|_| v5);
        let send_limit = opts
            .max_inflight
            .min(server_receive_maximum.unwrap_or(u16::MAX));
        let (command_tx, command_rx) = mpsc::channel(COMMAND_CAPACITY);
        let (incoming_tx, incoming_rx) = mpsc::channel(opts.incoming_capacity.max(1));
        let end = Arc::new(Mutex::new(None));
        let driver = Driver {
            framed,
            commands: command_rx,
            incoming: incoming_tx,
            end: Arc::clone(&end),
            pending: HashMap::new(),
            next_id: PacketId::MIN,
            send_limit: usize::from(send_limit.max(1)),
            server_max_packet_size: connack.properties.maximum_packet_size.filter(|_| v5),
            incoming_qos2: HashSet::new(),
            receive_maximum: usize::from(opts.receive_maximum.filter(|_| v5).unwrap_or(u16::MAX)),
            topic_alias_maximum: opts
                .properties
                .topic_alias_maximum
                .filter(|_| v5)
                .unwrap_or(0),
            topic_aliases: HashMap::new(),
            undelivered: None,
            keep_alive: (keep_alive > 0).then(|| Duration::from_secs(u64::from(keep_alive))),
            last_sent: Instant::now(),
            ping_deadline: None,
        };
        tracing::debug!(
            client_id = %opts.client_id,
            protocol = %opts.protocol,
            session_present = connack.session_present,
            "mqtt client connected"
        );
        let client = Self {
            commands: command_tx,
            incoming: tokio::sync::Mutex::new(incoming_rx),
            end,
            task: tokio::spawn(driver.run()),
            version: opts.protocol,
        };
        Ok((client, connack))
    }

    /// The protocol version of this connection.
    pub fn version(&self) -> ProtocolVersion {
        self.version
    }

    /// True once the connection has ended (after [`disconnect`](Self::disconnect), a server
    /// DISCONNECT or an error). Messages already received can still be read with `recv`.
    pub fn is_closed(&self) -> bool {
        self.commands.is_closed()
    }

    /// Publishes a message with no properties and waits until its flow completes: at once
    /// for QoS 0 (once written), on PUBACK for QoS 1, on PUBCOMP for QoS 2.
    ///
    /// # Errors
    /// [`ClientError::PublishRejected`] when the PUBACK, PUBREC or PUBCOMP carries a failure
    /// reason code (v5), [`ClientError::PacketTooLarge`] when the message exceeds the server's
    /// maximum packet size, and otherwise the error that ended the connection.
    ///
    /// # Cancel safety
    /// If the future is dropped after the message was handed to the connection task, the
    /// message is still sent and its flow still completed; only the outcome is lost.
    pub async fn publish(
        &self,
        topic: impl Into<String>,
        payload: impl Into<Bytes>,
        qos: QoS,
        retain: bool,
    ) -> Result<(), ClientError> {
        let publish = Publish {
            dup: false,
            qos,
            retain,
            topic: topic.into(),
            packet_id: None,
            properties: Properties::default(),
            payload: payload.into(),
        };
        self.publish_with(publish).await.map(|_| ())
    }

    /// Publishes `publish` as given (properties, DUP flag, topic alias...), except for its
    /// packet identifier, which the client assigns (and clears for QoS 0).
    ///
    /// Returns the reason code of the server's verdict: [`ReasonCode::SUCCESS`] for QoS 0, the
    /// PUBACK's code for QoS 1 and the PUBREC's for QoS 2; in v5 this may be
    /// [`ReasonCode::NO_MATCHING_SUBSCRIBERS`].
    ///
    /// # Errors
    /// As [`publish`](Self::publish).
    ///
    /// # Cancel safety
    /// As [`publish`](Self::publish).
    pub async fn publish_with(&self, publish: Publish) -> Result<ReasonCode, ClientError> {
        let (reply, rx) = oneshot::channel();
        self.request(Command::Publish { publish, reply }, rx).await
    }

    /// Subscribes to `filters` and returns the SUBACK, which carries one reason code per
    /// filter (the granted QoS, or a failure the caller should check).
    ///
    /// # Errors
    /// [`ClientError::InvalidRequest`] for an empty list, and otherwise the error that ended
    /// the connection.
    ///
    /// # Cancel safety
    /// As [`publish`](Self::publish).
    pub async fn subscribe<S: AsRef<str>>(
        &self,
        filters: &[(S, SubscriptionOptions)],
    ) -> Result<SubAck, ClientError> {
        self.subscribe_with(filters, Properties::default()).await
    }

    /// [`subscribe`](Self::subscribe) with SUBSCRIBE properties (v5: a subscription identifier,
    /// user properties).
    ///
    /// # Errors
    /// As [`subscribe`](Self::subscribe).
    pub async fn subscribe_with<S: AsRef<str>>(
        &self,
        filters: &[(S, SubscriptionOptions)],
        properties: Properties,
    ) -> Result<SubAck, ClientError> {
        let filters = filters
            .iter()
            .map(|(f, o)| (f.as_ref().to_owned(), *o))
            .collect();
        let (reply, rx) = oneshot::channel();
        self.request(
            Command::Subscribe {
                filters,
                properties,
                reply,
            },
            rx,
        )
        .await
    }

    /// Unsubscribes from `filters` and returns the UNSUBACK (v5: one reason code per filter).
    ///
    /// # Errors
    /// As [`subscribe`](Self::subscribe).
    pub async fn unsubscribe<S: AsRef<str>>(&self, filters: &[S]) -> Result<UnsubAck, ClientError> {
        self.unsubscribe_with(filters, Properties::default()).await
    }

    /// [`unsubscribe`](Self::unsubscribe) with UNSUBSCRIBE properties (v5: user properties).
    ///
    /// # Errors
    /// As [`subscribe`](Self::subscribe).
    pub async fn unsubscribe_with<S: AsRef<str>>(
        &self,
        filters: &[S],
        properties: Properties,
    ) -> Result<UnsubAck, ClientError> {
        let filters = filters.iter().map(|f| f.as_ref().to_owned()).collect();
        let (reply, rx) = oneshot::channel();
        self.request(
            Command::Unsubscribe {
                filters,
                properties,
                reply,
            },
            rx,
        )
        .await
    }

    /// The next application message from the server, already acknowledged as its QoS
    /// requires. QoS 2 messages are delivered once even if the server retransmits them.
    ///
    /// Returns `Ok(None)` once the connection was closed by [`disconnect`](Self::disconnect)
    /// and every buffered message has been read.
    ///
    /// # Errors
    /// Once the buffered messages are read, the error that ended the connection:
    /// [`ClientError::Disconnected`] with the reason code of a server DISCONNECT (or `None`
    /// when the server just closed the stream), [`ClientError::Timeout`] when no PINGRESP
    /// came back, [`ClientError::Protocol`], [`ClientError::Decode`] or [`ClientError::Io`].
    /// The same error is returned by every later call.
    ///
    /// # Cancel safety
    /// Cancel safe: a message is either returned or stays buffered for the next call.
    pub async fn recv(&self) -> Result<Option<Publish>, ClientError> {
        let mut incoming = self.incoming.lock().await;
        match incoming.recv().await {
            Some(publish) => Ok(Some(publish)),
            None => match &*lock(&self.end) {
                Some(Err(e)) => Err(e.clone()),
                _ => Ok(None),
            },
        }
    }

    /// Sends DISCONNECT (normal disconnection, so no will message is published) and closes
    /// the connection. Requests still in flight fail with [`ClientError::Closed`].
    ///
    /// # Errors
    /// [`ClientError::Closed`] if the client was already disconnected, or the error that ended
    /// the connection.
    pub async fn disconnect(&self) -> Result<(), ClientError> {
        self.disconnect_with(Disconnect::default()).await
    }

    /// Sends this DISCONNECT (v5: any reason code, session expiry interval, reason string)
    /// and closes the connection. Reason code 0x04 asks the server to publish the will.
    ///
    /// # Errors
    /// As [`disconnect`](Self::disconnect).
    pub async fn disconnect_with(&self, disconnect: Disconnect) -> Result<(), ClientError> {
        let (reply, rx) = oneshot::channel();
        self.request(Command::Disconnect { disconnect, reply }, rx)
            .await
    }

    async fn request<T>(
        &self,
        command: Command,
        rx: oneshot::Receiver<Result<T, ClientError>>,
    ) -> Result<T, ClientError> {
        if self.commands.send(command).await.is_err() {
            return Err(self.end_error());
        }
        rx.await.unwrap_or_else(|_| Err(self.end_error()))
    }

    fn end_error(&self) -> ClientError {
        match &*lock(&self.end) {
            Some(Err(e)) => e.clone(),
            _ => ClientError::Closed,
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Sends CONNECT and reads the answer.
/// CONNECT / CONNACK over `io` without starting a connection task: returns the [`Framed`]
/// stream (its version set to `opts.protocol`) for code that drives the packets itself, such
/// as `moat bench`'s load generator.
///
/// # Errors
/// As [`Client::connect`].
pub async fn connect_framed<IO>(
    io: IO,
    opts: &ConnectOptions,
) -> Result<(Framed<IO>, ConnAck), ClientError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let mut framed = Framed::with_codec(io, Codec::new(opts.max_packet_size));
    framed.set_version(opts.protocol);
    let connack = timeout(opts.connect_timeout, handshake(&mut framed, opts))
        .await
        .map_err(|_| ClientError::Timeout("CONNACK"))??;
    Ok((framed, connack))
}

async fn handshake<IO>(
    framed: &mut Framed<IO>,
    opts: &ConnectOptions,
) -> Result<ConnAck, ClientError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    framed
        .send(&Packet::Connect(Box::new(opts.to_connect())))
        .await?;
    let connack = match framed.recv().await? {
        Some(Packet::ConnAck(connack)) => connack,
        Some(Packet::Disconnect(d)) => return Err(ClientError::Disconnected(Some(d.reason_code))),
        Some(Packet::Auth(_)) => {
            return Err(ClientError::Protocol(
                "AUTH instead of CONNACK: enhanced authentication is not supported".to_owned(),
            ))
        }
        Some(other) => {
            return Err(ClientError::Protocol(format!(
                "expected CONNACK, got {:?}",
                other.packet_type()
            )))
        }
        None => return Err(ClientError::Disconnected(None)),
    };
    if connack.reason_code.is_error() {
        return Err(ClientError::Refused(connack.reason_code));
    }
    Ok(connack)
}

type Reply<T> = oneshot::Sender<Result<T, ClientError>>;

/// A request from the [`Client`] handle.
enum Command {
    Publish {
        publish: Publish,
        reply: Reply<ReasonCode>,
    },
    Subscribe {
        filters: Vec<(String, SubscriptionOptions)>,
        properties: Properties,
        reply: Reply<SubAck>,
    },
    Unsubscribe {
        filters: Vec<String>,
        properties: Properties,
        reply: Reply<UnsubAck>,
    },
    Disconnect {
        disconnect: Disconnect,
        reply: Reply<()>,
    },
}

impl Command {
    fn fail(self, e: ClientError) {
        match self {
            Self::Publish { reply, .. } => drop(reply.send(Err(e))),
            Self::Subscribe { reply, .. } => drop(reply.send(Err(e))),
            Self::Unsubscribe { reply, .. } => drop(reply.send(Err(e))),
            Self::Disconnect { reply, .. } => drop(reply.send(Err(e))),
        }
    }
}

/// A request waiting for the server's acknowledgement, by packet id.
enum Pending {
    PubAck(Reply<ReasonCode>),
    PubRec(Reply<ReasonCode>),
    /// Waiting for PUBCOMP, with the PUBREC's reason code.
    PubComp(Reply<ReasonCode>, ReasonCode),
    SubAck(Reply<SubAck>),
    UnsubAck(Reply<UnsubAck>),
}

impl Pending {
    fn fail(self, e: ClientError) {
        match self {
            Self::PubAck(reply) | Self::PubRec(reply) | Self::PubComp(reply, _) => {
                drop(reply.send(Err(e)));
            }
            Self::SubAck(reply) => drop(reply.send(Err(e))),
            Self::UnsubAck(reply) => drop(reply.send(Err(e))),
        }
    }
}

/// Whether the connection task goes on.
enum Flow {
    Continue,
    Stop,
}

/// The connection task's state.
struct Driver<IO> {
    framed: Framed<IO>,
    commands: mpsc::Receiver<Command>,
    incoming: mpsc::Sender<Publish>,
    end: Arc<Mutex<Option<Result<(), ClientError>>>>,
    /// Our requests in flight.
    pending: HashMap<PacketId, Pending>,
    next_id: PacketId,
    /// At most this many requests in flight (our maximum and the server's receive maximum).
    send_limit: usize,
    server_max_packet_size: Option<u32>,
    /// Incoming QoS 2 messages delivered and PUBREC'd, waiting for PUBREL.
    incoming_qos2: HashSet<PacketId>,
    /// Our receive maximum.
    receive_maximum: usize,
    topic_alias_maximum: u16,
    topic_aliases: HashMap<u16, String>,
    /// A message waiting for room in the incoming buffer, with the acknowledgement to send
    /// once it is delivered. While it waits the connection is not read.
    undelivered: Option<(Publish, Option<Packet>)>,
    keep_alive: Option<Duration>,
    last_sent: Instant,
    /// When the PINGRESP to our PINGREQ is due.
    ping_deadline: Option<Instant>,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Driver<IO> {
    async fn run(mut self) {
        let result = self.drive().await;
        if let Err(e) = &result {
            tracing::debug!(error = %e, "mqtt client connection ended");
        }
        let err = result
            .as_ref()
            .err()
            .cloned()
            .unwrap_or(ClientError::Closed);
        *lock(&self.end) = Some(result);
        self.commands.close();
        while let Ok(command) = self.commands.try_recv() {
            command.fail(err.clone());
        }
        for (_, pending) in self.pending.drain() {
            pending.fail(err.clone());
        }
    }

    async fn drive(&mut self) -> Result<(), ClientError> {
        loop {
            let deadline = self.keep_alive_deadline();
            let waiting = self.undelivered.is_some();
            let flow = tokio::select! {
                delivered = deliver_when_ready(&self.incoming, &mut self.undelivered), if waiting => {
                    match delivered {
                        Ok(Some(ack)) => self.send(&ack).await?,
                        Ok(None) => {}
                        // The client handle is gone.
                        Err(()) => return Ok(()),
                    }
                    Flow::Continue
                }
                packet = self.framed.recv(), if !waiting => match packet {
                    Ok(Some(packet)) => self.on_packet(packet).await?,
                    Ok(None) => return Err(ClientError::Disconnected(None)),
                    Err(ClientError::Decode(e)) => {
                        self.abort_with(e.reason_code()).await;
                        return Err(e.into());
                    }
                    Err(e) => return Err(e),
                },
                command = self.commands.recv(), if self.pending.len() < self.send_limit => {
                    match command {
                        Some(command) => self.on_command(command).await?,
                        // The client handle is gone.
                        None => Flow::Stop,
                    }
                }
                () = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    self.on_keep_alive_timer().await?
                }
            };
            if let Flow::Stop = flow {
                return Ok(());
            }
        }
    }

    async fn on_packet(&mut self, packet: Packet) -> Result<Flow, ClientError> {
        match packet {
            Packet::Publish(publish) => return self.on_publish(publish).await,
            Packet::PubAck(ack) => match self.pending.remove(&ack.packet_id) {
                Some(Pending::PubAck(reply)) => drop(reply.send(publish_outcome(ack.reason_code))),
                other => return Err(self.unexpected_ack("PUBACK", ack.packet_id, other).await),
            },
            Packet::PubRec(ack) => match self.pending.remove(&ack.packet_id) {
                Some(Pending::PubRec(reply)) if ack.reason_code.is_error() => {
                    drop(reply.send(Err(ClientError::PublishRejected(ack.reason_code))));
                }
                Some(Pending::PubRec(reply)) => {
                    self.pending
                        .insert(ack.packet_id, Pending::PubComp(reply, ack.reason_code));
                    self.send(&Packet::PubRel(PubAck::new(ack.packet_id)))
                        .await?;
                }
                other => return Err(self.unexpected_ack("PUBREC", ack.packet_id, other).await),
            },
            Packet::PubComp(ack) => match self.pending.remove(&ack.packet_id) {
                Some(Pending::PubComp(reply, rec_code)) => {
                    let outcome = publish_outcome(ack.reason_code).map(|_| rec_code);
                    drop(reply.send(outcome));
                }
                other => return Err(self.unexpected_ack("PUBCOMP", ack.packet_id, other).await),
            },
            Packet::PubRel(rel) => {
                let known = self.incoming_qos2.remove(&rel.packet_id);
                let mut comp = PubAck::new(rel.packet_id);
                if !known && self.framed.version().is_v5() {
                    comp.reason_code = ReasonCode::PACKET_IDENTIFIER_NOT_FOUND;
                }
                self.send(&Packet::PubComp(comp)).await?;
            }
            Packet::SubAck(suback) => match self.pending.remove(&suback.packet_id) {
                Some(Pending::SubAck(reply)) => drop(reply.send(Ok(suback))),
                other => return Err(self.unexpected_ack("SUBACK", suback.packet_id, other).await),
            },
            Packet::UnsubAck(unsuback) => match self.pending.remove(&unsuback.packet_id) {
                Some(Pending::UnsubAck(reply)) => drop(reply.send(Ok(unsuback))),
                other => {
                    return Err(self
                        .unexpected_ack("UNSUBACK", unsuback.packet_id, other)
                        .await)
                }
            },
            Packet::PingResp => self.ping_deadline = None,
            Packet::Disconnect(d) => return Err(ClientError::Disconnected(Some(d.reason_code))),
            Packet::Auth(_) => {
                let msg = "AUTH received, but enhanced authentication is not supported".to_owned();
                return Err(self.violation(ReasonCode::PROTOCOL_ERROR, msg).await);
            }
            other @ (Packet::Connect(_)
            | Packet::ConnAck(_)
            | Packet::Subscribe(_)
            | Packet::Unsubscribe(_)
            | Packet::PingReq) => {
                let msg = format!("the server sent {:?}", other.packet_type());
                return Err(self.violation(ReasonCode::PROTOCOL_ERROR, msg).await);
            }
        }
        Ok(Flow::Continue)
    }

    async fn on_publish(&mut self, mut publish: Publish) -> Result<Flow, ClientError> {
        if let Some(alias) = publish.properties.topic_alias {
            if alias == 0 || alias > self.topic_alias_maximum {
                let msg = format!(
                    "topic alias {alias} above our maximum {}",
                    self.topic_alias_maximum
                );
                return Err(self.violation(ReasonCode::TOPIC_ALIAS_INVALID, msg).await);
            }
            if publish.topic.is_empty() {
                match self.topic_aliases.get(&alias) {
                    Some(topic) => publish.topic.clone_from(topic),
                    None => {
                        let msg = format!("unknown topic alias {alias}");
                        return Err(self.violation(ReasonCode::PROTOCOL_ERROR, msg).await);
                    }
                }
            } else {
                self.topic_aliases.insert(alias, publish.topic.clone());
            }
        }
        let id = match (publish.qos, publish.packet_id) {
            (QoS::AtMostOnce, _) => return self.deliver(publish, None).await,
            (_, Some(id)) => id,
            (_, None) => {
                let msg = "QoS 1 or 2 PUBLISH without a packet id".to_owned();
                return Err(self.violation(ReasonCode::PROTOCOL_ERROR, msg).await);
            }
        };
        if publish.qos == QoS::AtLeastOnce {
            return self
                .deliver(publish, Some(Packet::PubAck(PubAck::new(id))))
                .await;
        }
        if self.incoming_qos2.contains(&id) {
            // A retransmission of a message already delivered: acknowledge it again only.
            self.send(&Packet::PubRec(PubAck::new(id))).await?;
            return Ok(Flow::Continue);
        }
        if self.incoming_qos2.len() >= self.receive_maximum {
            let msg = format!(
                "more than {} QoS 2 messages in flight",
                self.receive_maximum
            );
            return Err(self
                .violation(ReasonCode::RECEIVE_MAXIMUM_EXCEEDED, msg)
                .await);
        }
        self.incoming_qos2.insert(id);
        self.deliver(publish, Some(Packet::PubRec(PubAck::new(id))))
            .await
    }

    /// Hands `publish` to the client and then sends `ack`; if the buffer is full, both wait.
    async fn deliver(
        &mut self,
        publish: Publish,
        ack: Option<Packet>,
    ) -> Result<Flow, ClientError> {
        match self.incoming.try_send(publish) {
            Ok(()) => {
                if let Some(ack) = ack {
                    self.send(&ack).await?;
                }
                Ok(Flow::Continue)
            }
            Err(TrySendError::Full(publish)) => {
                self.undelivered = Some((publish, ack));
                Ok(Flow::Continue)
            }
            Err(TrySendError::Closed(_)) => Ok(Flow::Stop),
        }
    }

    async fn on_command(&mut self, command: Command) -> Result<Flow, ClientError> {
        match command {
            Command::Publish { mut publish, reply } => {
                if publish.qos == QoS::AtMostOnce {
                    publish.packet_id = None;
                    let outcome = self.try_send(&Packet::Publish(publish)).await;
                    return answer(reply, outcome.map(|r| r.map(|()| ReasonCode::SUCCESS)));
                }
                let Some(id) = self.allocate_id() else {
                    drop(reply.send(Err(ClientError::InvalidRequest(
                        "no free packet identifier",
                    ))));
                    return Ok(Flow::Continue);
                };
                publish.packet_id = Some(id);
                let pending = if publish.qos == QoS::AtLeastOnce {
                    Pending::PubAck(reply)
                } else {
                    Pending::PubRec(reply)
                };
                self.request(id, pending, Packet::Publish(publish)).await?;
            }
            Command::Subscribe {
                filters,
                properties,
                reply,
            } => {
                if filters.is_empty() {
                    drop(reply.send(Err(ClientError::InvalidRequest("SUBSCRIBE needs a filter"))));
                    return Ok(Flow::Continue);
                }
                let Some(id) = self.allocate_id() else {
                    drop(reply.send(Err(ClientError::InvalidRequest(
                        "no free packet identifier",
                    ))));
                    return Ok(Flow::Continue);
                };
                let packet = Packet::Subscribe(Subscribe {
                    packet_id: id,
                    properties,
                    filters,
                });
                self.request(id, Pending::SubAck(reply), packet).await?;
            }
            Command::Unsubscribe {
                filters,
                properties,
                reply,
            } => {
                if filters.is_empty() {
                    drop(reply.send(Err(ClientError::InvalidRequest(
                        "UNSUBSCRIBE needs a filter",
                    ))));
                    return Ok(Flow::Continue);
                }
                let Some(id) = self.allocate_id() else {
                    drop(reply.send(Err(ClientError::InvalidRequest(
                        "no free packet identifier",
                    ))));
                    return Ok(Flow::Continue);
                };
                let packet = Packet::Unsubscribe(Unsubscribe {
                    packet_id: id,
                    properties,
                    filters,
                });
                self.request(id, Pending::UnsubAck(reply), packet).await?;
            }
            Command::Disconnect { disconnect, reply } => {
                match self.try_send(&Packet::Disconnect(disconnect)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        drop(reply.send(Err(e)));
                        return Ok(Flow::Continue);
                    }
                    Err(fatal) => {
                        drop(reply.send(Err(fatal.clone())));
                        return Err(fatal);
                    }
                }
                self.close().await;
                drop(reply.send(Ok(())));
                return Ok(Flow::Stop);
            }
        }
        Ok(Flow::Continue)
    }

    /// Sends a packet that expects an acknowledgement, recording `pending` under `id`.
    async fn request(
        &mut self,
        id: PacketId,
        pending: Pending,
        packet: Packet,
    ) -> Result<(), ClientError> {
        // Recorded first, so that if the connection fails the request fails with its error.
        self.pending.insert(id, pending);
        if let Err(e) = self.try_send(&packet).await? {
            if let Some(pending) = self.pending.remove(&id) {
                pending.fail(e);
            }
        }
        Ok(())
    }

    /// Sends `packet`. The outer error is fatal to the connection; the inner one only fails
    /// this request (the packet could not be encoded or is too large, and nothing was sent).
    async fn try_send(&mut self, packet: &Packet) -> Result<Result<(), ClientError>, ClientError> {
        if let Some(max) = self.server_max_packet_size {
            let size = moat_codec::encoded_len(packet, self.framed.version());
            if size > max as usize {
                return Ok(Err(ClientError::PacketTooLarge { size, max }));
            }
        }
        match self.send(packet).await {
            Ok(()) => Ok(Ok(())),
            Err(e @ ClientError::Encode(_)) => Ok(Err(e)),
            Err(e) => Err(e),
        }
    }

    async fn send(&mut self, packet: &Packet) -> Result<(), ClientError> {
        timeout(WRITE_TIMEOUT, self.framed.send(packet))
            .await
            .map_err(|_| ClientError::Timeout("the server to accept our data"))??;
        self.last_sent = Instant::now();
        Ok(())
    }

    fn allocate_id(&mut self) -> Option<PacketId> {
        let id = next_free_id(self.next_id, |id| self.pending.contains_key(&id))?;
        self.next_id = id.next();
        Some(id)
    }

    fn keep_alive_deadline(&self) -> Option<Instant> {
        let keep_alive = self.keep_alive?;
        Some(self.ping_deadline.unwrap_or(self.last_sent + keep_alive))
    }

    async fn on_keep_alive_timer(&mut self) -> Result<Flow, ClientError> {
        let Some(keep_alive) = self.keep_alive else {
            return Ok(Flow::Continue);
        };
        let now = Instant::now();
        match self.ping_deadline {
            Some(deadline) if now >= deadline => return Err(ClientError::Timeout("PINGRESP")),
            Some(_) => {}
            None if now >= self.last_sent + keep_alive => {
                self.send(&Packet::PingReq).await?;
                self.ping_deadline = Some(now + keep_alive);
            }
            None => {}
        }
        Ok(Flow::Continue)
    }

    /// An acknowledgement that matches no request of ours.
    async fn unexpected_ack(
        &mut self,
        kind: &str,
        id: PacketId,
        found: Option<Pending>,
    ) -> ClientError {
        if let Some(pending) = found {
            self.pending.insert(id, pending);
        }
        let msg = format!("{kind} for packet id {id}, which is not waiting for one");
        self.violation(ReasonCode::PROTOCOL_ERROR, msg).await
    }

    /// Ends the connection because the server broke the protocol.
    async fn violation(&mut self, reason_code: ReasonCode, msg: String) -> ClientError {
        self.abort_with(reason_code).await;
        ClientError::Protocol(msg)
    }

    /// Best effort: tells a v5 server why we close the connection.
    async fn abort_with(&mut self, reason_code: ReasonCode) {
        if self.framed.version().is_v5() {
            let disconnect = Disconnect {
                reason_code,
                properties: Properties::default(),
            };
            let _ = timeout(
                CLOSE_TIMEOUT,
                self.framed.send(&Packet::Disconnect(disconnect)),
            )
            .await;
        }
    }

    /// After our DISCONNECT: half-closes and waits briefly for the server to close, so that
    /// unread data does not turn our close into a reset that could lose the DISCONNECT.
    async fn close(&mut self) {
        let framed = &mut self.framed;
        let _ = timeout(CLOSE_TIMEOUT, async {
            let _ = framed.shutdown().await;
            while let Ok(Some(_)) = framed.recv().await {}
        })
        .await;
    }
}

/// Replies to a request that needs no acknowledgement from the server. The outer error of
/// `outcome` is fatal to the connection and is passed on.
fn answer<T>(
    reply: Reply<T>,
    outcome: Result<Result<T, ClientError>, ClientError>,
) -> Result<Flow, ClientError> {
    match outcome {
        Ok(result) => {
            drop(reply.send(result));
            Ok(Flow::Continue)
        }
        Err(fatal) => {
            drop(reply.send(Err(fatal.clone())));
            Err(fatal)
        }
    }
}

/// Waits for room in the incoming buffer, then moves the waiting message into it and returns
/// its acknowledgement. `Err` when the receiver is gone.
///
/// Cancel safe: nothing is taken from `slot` until there is room.
async fn deliver_when_ready(
    incoming: &mpsc::Sender<Publish>,
    slot: &mut Option<(Publish, Option<Packet>)>,
) -> Result<Option<Packet>, ()> {
    let permit = incoming.reserve().await.map_err(drop)?;
    Ok(slot.take().and_then(|(publish, ack)| {
        permit.send(publish);
        ack
    }))
}

/// Maps an acknowledgement's reason code to the outcome of a publish.
fn publish_outcome(reason_code: ReasonCode) -> Result<ReasonCode, ClientError> {
    if reason_code.is_error() {
        Err(ClientError::PublishRejected(reason_code))
    } else {
        Ok(reason_code)
    }
}

/// The first packet id from `start` on (wrapping) for which `in_use` is false.
fn next_free_id(start: PacketId, in_use: impl Fn(PacketId) -> bool) -> Option<PacketId> {
    let mut id = start;
    for _ in 0..u16::MAX {
        if !in_use(id) {
            return Some(id);
        }
        id = id.next();
    }
    None
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::io::DuplexStream;

    use super::*;

    /// A client connected to a scripted server over an in-memory stream.
    async fn pair(opts: ConnectOptions, connack: ConnAck) -> (Client, Framed<DuplexStream>) {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let mut server = Framed::new(server_io);
        server.set_version(opts.protocol);
        let script = async {
            match server.recv().await {
                Ok(Some(Packet::Connect(_))) => {}
                other => panic!("expected CONNECT, got {other:?}"),
            }
            server
                .send(&Packet::ConnAck(connack))
                .await
                .expect("send CONNACK");
        };
        let (connected, ()) = tokio::join!(Client::connect(client_io, opts), script);
        let (client, _) = connected.expect("connect");
        (client, server)
    }

    fn connack() -> ConnAck {
        ConnAck {
            session_present: false,
            reason_code: ReasonCode::SUCCESS,
            properties: Properties::default(),
        }
    }

    fn v5() -> ConnectOptions {
        ConnectOptions::new("test")
            .protocol(ProtocolVersion::V5)
            .keep_alive(0)
    }

    fn publish(qos: QoS, id: Option<u16>, payload: &'static str) -> Publish {
        Publish {
            dup: false,
            qos,
            retain: false,
            topic: "t".to_owned(),
            packet_id: id.and_then(PacketId::new),
            properties: Properties::default(),
            payload: Bytes::from_static(payload.as_bytes()),
        }
    }

    fn id(v: u16) -> PacketId {
        PacketId::new(v).expect("non-zero")
    }

    async fn expect(server: &mut Framed<DuplexStream>) -> Packet {
        server.recv().await.expect("recv").expect("a packet")
    }

    #[tokio::test]
    async fn incoming_qos2_is_delivered_once() {
        let (client, mut server) = pair(v5(), connack()).await;
        let message = publish(QoS::ExactlyOnce, Some(7), "once");
        server
            .send(&Packet::Publish(message.clone()))
            .await
            .expect("send");
        assert_eq!(
            expect(&mut server).await,
            Packet::PubRec(PubAck::new(id(7)))
        );
        let retransmission = Publish {
            dup: true,
            ..message
        };
        server
            .send(&Packet::Publish(retransmission))
            .await
            .expect("send");
        assert_eq!(
            expect(&mut server).await,
            Packet::PubRec(PubAck::new(id(7)))
        );
        server
            .send(&Packet::PubRel(PubAck::new(id(7))))
            .await
            .expect("send");
        assert_eq!(
            expect(&mut server).await,
            Packet::PubComp(PubAck::new(id(7)))
        );
        // The id is free again: a new message with it is a new message.
        server
            .send(&Packet::Publish(publish(
                QoS::ExactlyOnce,
                Some(7),
                "again",
            )))
            .await
            .expect("send");
        assert_eq!(
            expect(&mut server).await,
            Packet::PubRec(PubAck::new(id(7)))
        );

        assert_eq!(
            client.recv().await.expect("recv").expect("message").payload,
            "once"
        );
        assert_eq!(
            client.recv().await.expect("recv").expect("message").payload,
            "again"
        );

        // An unknown PUBREL gets PUBCOMP "packet identifier not found" in v5.
        server
            .send(&Packet::PubRel(PubAck::new(id(9))))
            .await
            .expect("send");
        let not_found = PubAck {
            reason_code: ReasonCode::PACKET_IDENTIFIER_NOT_FOUND,
            ..PubAck::new(id(9))
        };
        assert_eq!(expect(&mut server).await, Packet::PubComp(not_found));
    }

    #[tokio::test]
    async fn incoming_qos1_is_acknowledged() {
        let (client, mut server) = pair(ConnectOptions::new("v3").keep_alive(0), connack()).await;
        server
            .send(&Packet::Publish(publish(QoS::AtLeastOnce, Some(3), "one")))
            .await
            .expect("send");
        assert_eq!(
            expect(&mut server).await,
            Packet::PubAck(PubAck::new(id(3)))
        );
        assert_eq!(
            client.recv().await.expect("recv").expect("message").payload,
            "one"
        );
    }

    #[tokio::test]
    async fn failure_codes_in_acks_are_errors() {
        let (client, mut server) = pair(v5(), connack()).await;
        let script = async {
            let Packet::Publish(p) = expect(&mut server).await else {
                panic!("expected PUBLISH")
            };
            let ack = PubAck {
                reason_code: ReasonCode::QUOTA_EXCEEDED,
                ..PubAck::new(p.packet_id.expect("id"))
            };
            server.send(&Packet::PubAck(ack)).await.expect("send");
        };
        let (result, ()) = tokio::join!(client.publish("t", "x", QoS::AtLeastOnce, false), script);
        let err = result.expect_err("rejected");
        assert!(
            matches!(
                err,
                ClientError::PublishRejected(ReasonCode::QUOTA_EXCEEDED)
            ),
            "{err:?}"
        );

        let script = async {
            let Packet::Publish(p) = expect(&mut server).await else {
                panic!("expected PUBLISH")
            };
            let ack = PubAck {
                reason_code: ReasonCode::NOT_AUTHORIZED,
                ..PubAck::new(p.packet_id.expect("id"))
            };
            server.send(&Packet::PubRec(ack)).await.expect("send");
        };
        let (result, ()) = tokio::join!(client.publish("t", "x", QoS::ExactlyOnce, false), script);
        assert_eq!(
            result.expect_err("rejected").reason_code(),
            Some(ReasonCode::NOT_AUTHORIZED)
        );

        // The flow ended at the failed PUBREC: no PUBREL, and the connection still works.
        let script = async {
            let Packet::Publish(p) = expect(&mut server).await else {
                panic!("expected PUBLISH, not PUBREL")
            };
            let rec = PubAck {
                reason_code: ReasonCode::NO_MATCHING_SUBSCRIBERS,
                ..PubAck::new(p.packet_id.expect("id"))
            };
            server
                .send(&Packet::PubRec(rec.clone()))
                .await
                .expect("send");
            assert_eq!(
                expect(&mut server).await,
                Packet::PubRel(PubAck::new(rec.packet_id))
            );
            server
                .send(&Packet::PubComp(PubAck::new(rec.packet_id)))
                .await
                .expect("send");
        };
        let message = publish(QoS::ExactlyOnce, None, "x");
        let (result, ()) = tokio::join!(client.publish_with(message), script);
        assert_eq!(
            result.expect("completed"),
            ReasonCode::NO_MATCHING_SUBSCRIBERS
        );
    }

    #[tokio::test]
    async fn refusal_is_typed() {
        let (client_io, server_io) = tokio::io::duplex(4096);
        let mut server = Framed::new(server_io);
        let script = async {
            expect(&mut server).await;
            let refusal = ConnAck {
                reason_code: ReasonCode::BAD_USER_NAME_OR_PASSWORD,
                ..connack()
            };
            server.send(&Packet::ConnAck(refusal)).await.expect("send");
        };
        let opts = ConnectOptions::new("c").credentials("u", "wrong");
        let (result, ()) = tokio::join!(Client::connect(client_io, opts), script);
        let err = result.expect_err("refused");
        assert!(
            matches!(
                err,
                ClientError::Refused(ReasonCode::BAD_USER_NAME_OR_PASSWORD)
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "connection refused: bad user name or password"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn keep_alive_pings_then_times_out() {
        let (client, mut server) = pair(v5().keep_alive(10), connack()).await;
        let start = Instant::now();
        assert_eq!(expect(&mut server).await, Packet::PingReq);
        assert_eq!(start.elapsed(), Duration::from_secs(10));
        server.send(&Packet::PingResp).await.expect("send");
        assert_eq!(expect(&mut server).await, Packet::PingReq);
        assert_eq!(start.elapsed(), Duration::from_secs(20));
        // No PINGRESP this time.
        let err = client.recv().await.expect_err("keep-alive timeout");
        assert!(matches!(err, ClientError::Timeout("PINGRESP")), "{err:?}");
        assert_eq!(start.elapsed(), Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn server_receive_maximum_limits_requests_in_flight() {
        let limited = ConnAck {
            properties: Properties::from(moat_codec::PropertySet {
                receive_maximum: Some(2),
                ..Default::default()
            }),
            ..connack()
        };
        let (client, mut server) = pair(v5(), limited).await;
        let client = Arc::new(client);
        let tasks: Vec<_> = (0..3)
            .map(|_| {
                let client = Arc::clone(&client);
                tokio::spawn(async move { client.publish("t", "x", QoS::AtLeastOnce, false).await })
            })
            .collect();
        let mut ids = Vec::new();
        for _ in 0..2 {
            let Packet::Publish(p) = expect(&mut server).await else {
                panic!("expected PUBLISH")
            };
            ids.push(p.packet_id.expect("id"));
        }
        assert!(
            timeout(Duration::from_secs(5), server.recv())
                .await
                .is_err(),
            "a third PUBLISH in flight"
        );
        server
            .send(&Packet::PubAck(PubAck::new(ids[0])))
            .await
            .expect("send");
        let Packet::Publish(third) = expect(&mut server).await else {
            panic!("expected PUBLISH")
        };
        let third = third.packet_id.expect("id");
        assert_ne!(third, ids[1], "an id in flight is not reused");
        server
            .send(&Packet::PubAck(PubAck::new(ids[1])))
            .await
            .expect("send");
        server
            .send(&Packet::PubAck(PubAck::new(third)))
            .await
            .expect("send");
        for task in tasks {
            task.await.expect("task").expect("publish");
        }
    }

    #[tokio::test]
    async fn server_disconnect_fails_requests_and_recv() {
        let (client, mut server) = pair(v5(), connack()).await;
        let script = async {
            expect(&mut server).await;
            let bye = Disconnect {
                reason_code: ReasonCode::SERVER_SHUTTING_DOWN,
                ..Disconnect::default()
            };
            server.send(&Packet::Disconnect(bye)).await.expect("send");
        };
        let (result, ()) = tokio::join!(client.publish("t", "x", QoS::AtLeastOnce, false), script);
        let err = result.expect_err("disconnected");
        assert_eq!(
            err.to_string(),
            "disconnected by the server: server shutting down"
        );
        let from_recv = client.recv().await.expect_err("disconnected");
        assert_eq!(
            from_recv.reason_code(),
            Some(ReasonCode::SERVER_SHUTTING_DOWN)
        );
        assert!(client.is_closed());
    }

    #[tokio::test]
    async fn unknown_ack_is_a_protocol_error() {
        let (client, mut server) = pair(v5(), connack()).await;
        server
            .send(&Packet::PubAck(PubAck::new(id(42))))
            .await
            .expect("send");
        let Packet::Disconnect(d) = expect(&mut server).await else {
            panic!("expected DISCONNECT")
        };
        assert_eq!(d.reason_code, ReasonCode::PROTOCOL_ERROR);
        assert!(matches!(client.recv().await, Err(ClientError::Protocol(_))));
    }

    #[tokio::test(start_paused = true)]
    async fn disconnect_is_clean() {
        let (client, mut server) = pair(v5(), connack()).await;
        let script = async {
            assert_eq!(
                expect(&mut server).await,
                Packet::Disconnect(Disconnect::default())
            );
            assert_eq!(server.recv().await.expect("eof"), None);
        };
        let (result, ()) = tokio::join!(client.disconnect(), script);
        result.expect("disconnect");
        assert_eq!(client.recv().await.expect("clean end"), None);
        assert!(matches!(
            client.disconnect().await,
            Err(ClientError::Closed)
        ));
    }

    #[test]
    fn packet_ids_skip_those_in_flight() {
        let in_flight = [id(1), id(2), id(4)];
        assert_eq!(next_free_id(id(1), |i| in_flight.contains(&i)), Some(id(3)));
        assert_eq!(
            next_free_id(id(65535), |i| i == id(65535) || i == id(1)),
            Some(id(2))
        );
        assert_eq!(next_free_id(id(5), |_| true), None);
    }
}
