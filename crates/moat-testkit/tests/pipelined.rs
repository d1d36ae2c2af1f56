//! Packets a client sends together with CONNECT, before CONNACK arrives, are answered without
//! the client sending anything more: the broker processes every byte it already holds (in its
//! read buffer, or decrypted inside TLS, or unread in a WebSocket message) before it waits for
//! the socket. Keep-alive 0 throughout, so no PINGREQ of the client's can mask a stall.
//! MQTT 3.1.1 and 5.0 over TCP, TLS, WebSocket and secure WebSocket.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use moat_codec::{
    Packet, PacketId, Properties, ProtocolVersion, Publish, QoS, Subscribe, SubscriptionOptions,
};
use moat_server::{ListenerConfig, ListenerKind, Proof, Server, ServerConfig, TlsSettings};
use moat_testkit::pki::{tls_connect, TestPki};
use moat_testkit::{connect_packet, RawClient, TIMEOUT};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

const VERSIONS: [ProtocolVersion; 2] = [ProtocolVersion::V3_1_1, ProtocolVersion::V5];
const TRANSPORTS: [ListenerKind; 4] = [
    ListenerKind::Tcp,
    ListenerKind::Tls,
    ListenerKind::Ws,
    ListenerKind::Wss,
];

/// A broker with one anonymous listener of each kind on 127.0.0.1, and the PKI its TLS
/// listeners use.
struct Broker {
    addrs: Vec<(ListenerKind, SocketAddr)>,
    tls: Arc<rustls::ClientConfig>,
    stop: Option<oneshot::Sender<()>>,
    _pki: TestPki,
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

impl Broker {
    async fn start() -> Self {
        let pki = TestPki::new("Pipelining CA");
        let (cert, key) = pki.server("server", &["localhost", "127.0.0.1"]);
        let mut config = ServerConfig::default();
        config.broker.sys_interval = None;
        config.listeners = TRANSPORTS
            .iter()
            .map(|&kind| ListenerConfig {
                name: format!("{kind:?}").to_lowercase(),
                kind,
                bind: SocketAddr::from(([127, 0, 0, 1], 0)),
                allow_anonymous: true,
                proof: Proof::Either,
                tls: kind
                    .is_tls()
                    .then(|| TlsSettings::new(cert.clone(), key.clone())),
                path: "/mqtt".into(),
                client_id: Default::default(),
                on_client_cert_expiry: Default::default(),
            })
            .collect();
        let server = Server::bind(config).await.expect("bind");
        let addrs = TRANSPORTS
            .iter()
            .copied()
            .zip(server.local_addrs().into_iter().map(|(_, addr)| addr))
            .collect();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        Self {
            addrs,
            tls: pki.client_config(None),
            stop: Some(stop),
            _pki: pki,
        }
    }

    /// A raw client over `kind`, with its transport handshakes done and no CONNECT sent.
    async fn open(&self, kind: ListenerKind, version: ProtocolVersion) -> RawClient {
        let addr = self
            .addrs
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|&(_, addr)| addr)
            .expect("a listener of each kind");
        let opened = async {
            match kind {
                ListenerKind::Tcp => RawClient::open(addr, version).await,
                ListenerKind::Tls => {
                    let tls = tls_connect(addr, "localhost", Arc::clone(&self.tls)).await;
                    RawClient::over(tls.expect("TLS handshake"), version)
                }
                ListenerKind::Ws => {
                    let tcp = TcpStream::connect(addr).await.expect("connect");
                    let ws = moat_client::ws::connect(tcp, &addr.to_string(), "/mqtt").await;
                    RawClient::over(ws.expect("WebSocket upgrade"), version)
                }
                ListenerKind::Wss => {
                    let tls = tls_connect(addr, "localhost", Arc::clone(&self.tls)).await;
                    let tls = tls.expect("TLS handshake");
                    let ws = moat_client::ws::connect(tls, "localhost", "/mqtt").await;
                    RawClient::over(ws.expect("WebSocket upgrade"), version)
                }
            }
        };
        tokio::time::timeout(TIMEOUT, opened)
            .await
            .expect("transport handshakes within the timeout")
    }
}

fn pid(v: u16) -> PacketId {
    PacketId::new(v).expect("non-zero")
}

fn publish_qos1(topic: &str, id: u16) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: topic.into(),
        packet_id: Some(pid(id)),
        properties: Properties::default(),
        payload: Bytes::from_static(b"x"),
    })
}

fn subscribe(filter: &str, id: u16) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id: pid(id),
        properties: Properties::default(),
        filters: vec![(filter.into(), SubscriptionOptions::default())],
    })
}

/// CONNECT (keep-alive 0, clean) followed by `then`, encoded into one buffer: the client
/// sends it with one write.
fn connect_then(client_id: &str, version: ProtocolVersion, then: &[Packet]) -> BytesMut {
    let mut connect = connect_packet(client_id, version, true);
    connect.keep_alive = 0;
    let mut buf = BytesMut::new();
    let connect = Packet::Connect(Box::new(connect));
    for packet in std::iter::once(&connect).chain(then) {
        moat_codec::encode(packet, version, &mut buf).expect("encode");
    }
    buf
}

/// Sends CONNECT and `then` in one write, checks the CONNACK, and returns the client for the
/// answers to `then`.
async fn connect_pipelined(
    broker: &Broker,
    kind: ListenerKind,
    version: ProtocolVersion,
    then: &[Packet],
) -> RawClient {
    let mut c = broker.open(kind, version).await;
    let id = format!("pipe-{kind:?}-{version}");
    c.send_raw(&connect_then(&id, version, then)).await;
    match c.recv().await {
        Some(Packet::ConnAck(ack)) if !ack.reason_code.is_error() => c,
        other => panic!("{kind:?} {version}: expected a successful CONNACK, got {other:?}"),
    }
}

#[tokio::test]
async fn subscribe_sent_with_connect_is_acknowledged() {
    let broker = Broker::start().await;
    for kind in TRANSPORTS {
        for version in VERSIONS {
            let mut c = connect_pipelined(&broker, kind, version, &[subscribe("a/#", 7)]).await;
            match c.recv().await {
                Some(Packet::SubAck(ack)) => assert_eq!(ack.packet_id, pid(7), "{kind:?}"),
                other => panic!("{kind:?} {version}: expected SUBACK, got {other:?}"),
            }
        }
    }
}

#[tokio::test]
async fn qos1_publish_sent_with_connect_is_acknowledged() {
    let broker = Broker::start().await;
    for kind in TRANSPORTS {
        for version in VERSIONS {
            let mut c = connect_pipelined(&broker, kind, version, &[publish_qos1("p", 9)]).await;
            match c.recv().await {
                Some(Packet::PubAck(ack)) => assert_eq!(ack.packet_id, pid(9), "{kind:?}"),
                other => panic!("{kind:?} {version}: expected PUBACK, got {other:?}"),
            }
        }
    }
}

#[tokio::test]
async fn pingreq_sent_with_connect_is_answered() {
    let broker = Broker::start().await;
    for kind in TRANSPORTS {
        for version in VERSIONS {
            let mut c = connect_pipelined(&broker, kind, version, &[Packet::PingReq]).await;
            assert_eq!(c.recv().await, Some(Packet::PingResp), "{kind:?} {version}");
        }
    }
}

/// More than fits the broker's first read: the rest waits in the socket, in rustls or in the
/// WebSocket message.
#[tokio::test]
async fn a_hundred_publishes_sent_with_connect_are_all_acknowledged() {
    let broker = Broker::start().await;
    let publishes: Vec<Packet> = (1..=100).map(|i| publish_qos1("many", i)).collect();
    for kind in TRANSPORTS {
        for version in VERSIONS {
            let mut c = connect_pipelined(&broker, kind, version, &publishes).await;
            for i in 1..=100 {
                match c.recv().await {
                    Some(Packet::PubAck(ack)) => {
                        assert_eq!(ack.packet_id, pid(i), "{kind:?} {version}");
                    }
                    other => panic!("{kind:?} {version}: expected PUBACK {i}, got {other:?}"),
                }
            }
        }
    }
}

/// A subscription made in the first write receives a message published in the same write,
/// and the PINGREQ at its end is answered too.
#[tokio::test]
async fn subscribe_publish_and_pingreq_in_the_connect_write() {
    let broker = Broker::start().await;
    for kind in TRANSPORTS {
        for version in VERSIONS {
            let topic = format!("self/{kind:?}/{version}");
            let then = [
                subscribe(&topic, 1),
                publish_qos1(&topic, 2),
                Packet::PingReq,
            ];
            let mut c = connect_pipelined(&broker, kind, version, &then).await;
            let (mut suback, mut puback, mut message, mut pingresp) = (false, false, false, false);
            while !(suback && puback && message && pingresp) {
                match c.recv().await {
                    Some(Packet::SubAck(_)) => suback = true,
                    Some(Packet::PubAck(_)) => puback = true,
                    Some(Packet::Publish(p)) => {
                        assert_eq!(p.topic, topic);
                        message = true;
                        if let Some(id) = p.packet_id {
                            let ack = Packet::PubAck(moat_codec::PubAck::new(id));
                            c.send(&ack).await;
                        }
                    }
                    Some(Packet::PingResp) => pingresp = true,
                    other => panic!("{kind:?} {version}: unexpected {other:?}"),
                }
            }
        }
    }
}
