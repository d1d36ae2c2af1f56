//! Metrics over real sockets: what clients do on TCP and TLS listeners (connections, bytes,
//! messages, a refused CONNECT, a failed handshake, a durable commit) shows in the Prometheus
//! text of `BrokerHandle::metrics_text` with exact values, and in `$SYS/broker/...`.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use moat_codec::{
    Packet, PacketId, Properties, ProtocolVersion, Publish, QoS, Subscribe, SubscriptionOptions,
};
use moat_server::{
    BrokerHandle, Durability, ListenerConfig, Proof, Server, StoreConfig, TlsSettings,
};
use moat_testkit::pki::{tls_connect, TestPki};
use moat_testkit::{connect_packet, RawClient, TestBroker, TIMEOUT};

const V5: ProtocolVersion = ProtocolVersion::V5;
const DAY: f64 = 86_400.0;

/// A client that adds up the MQTT bytes it sends and receives (each packet's encoded length).
struct Counted {
    c: RawClient,
    sent: usize,
    received: usize,
}

impl Counted {
    async fn connect(addr: SocketAddr, id: &str) -> Self {
        let mut c = RawClient::open(addr, V5).await;
        let connect = Packet::Connect(Box::new(connect_packet(id, V5, true)));
        let sent = moat_codec::encoded_len(&connect, V5);
        c.send(&connect).await;
        let mut this = Self {
            c,
            sent,
            received: 0,
        };
        match this.recv().await {
            Packet::ConnAck(a) if !a.reason_code.is_error() => this,
            other => panic!("expected a successful CONNACK, got {other:?}"),
        }
    }

    async fn send(&mut self, p: &Packet) {
        self.sent += moat_codec::encoded_len(p, V5);
        self.c.send(p).await;
    }

    async fn recv(&mut self) -> Packet {
        let p = self.c.recv().await.expect("connection closed");
        self.received += moat_codec::encoded_len(&p, V5);
        p
    }
}

fn subscribe(filter: &str) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id: PacketId::new(1).unwrap(),
        properties: Properties::default(),
        filters: vec![(filter.into(), SubscriptionOptions::default())],
    })
}

fn publish(topic: &str, payload: &'static [u8], id: u16, retain: bool) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain,
        topic: topic.into(),
        packet_id: PacketId::new(id),
        properties: Properties::default(),
        payload: Bytes::from_static(payload),
    })
}

/// Samples of the Prometheus text: `name{labels}` -> value.
fn parse(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (key, value) = l.rsplit_once(' ').expect("sample line");
            (key.to_owned(), value.parse().expect("sample value"))
        })
        .collect()
}

/// Waits until `check` holds for the metrics (values written after a client already saw the
/// bytes, or a connection's end, land a moment later). Panics with the text if it never does.
async fn wait_metrics(
    handle: &BrokerHandle,
    what: &str,
    check: impl Fn(&HashMap<String, f64>) -> bool,
) {
    let mut text = String::new();
    let waited = tokio::time::timeout(TIMEOUT, async {
        loop {
            text = handle.metrics_text().await;
            if check(&parse(&text)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "{what} never held; last metrics:\n{text}");
}

fn value(m: &HashMap<String, f64>, key: &str) -> f64 {
    m.get(key).copied().unwrap_or(f64::NAN)
}

async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(TIMEOUT, f).await.expect("timed out")
}

#[tokio::test]
async fn metrics_count_connections_bytes_failures_and_show_on_sys() {
    let pki = TestPki::new("Metrics CA");
    let (cert, key) = pki.server("server", &["localhost", "127.0.0.1"]);
    let store_dir = tempfile::tempdir().unwrap();
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut config = TestBroker::config();
    config.broker.sys_interval = Some(Duration::from_millis(50));
    config.tls_poll_interval = Duration::from_secs(3600);
    config.store = Some(StoreConfig {
        dir: store_dir.path().to_owned(),
        durability: Durability::GroupCommit,
    });
    config.listeners = vec![
        ListenerConfig::tcp("open", any, true),
        ListenerConfig::tcp("closed", any, false),
        ListenerConfig {
            allow_anonymous: true,
            proof: Proof::Either,
            ..ListenerConfig::tls("mqtts", any, TlsSettings::new(cert, key))
        },
    ];
    let server = Server::bind(config).await.expect("bind");
    let addrs: HashMap<_, _> = server.local_addrs().into_iter().collect();
    let broker = TestBroker::start_server(server);
    let handle = broker.handle();

    // Two clients on "open": three QoS 1 messages, one of them retained (a durable commit).
    let mut sub = Counted::connect(addrs["open"], "sub").await;
    sub.send(&subscribe("t/#")).await;
    assert!(matches!(sub.recv().await, Packet::SubAck(_)));
    let mut pubc = Counted::connect(addrs["open"], "pub").await;
    for (id, retain) in [(1, false), (2, false), (3, true)] {
        pubc.send(&publish("t/1", b"payload", id, retain)).await;
        assert!(matches!(pubc.recv().await, Packet::PubAck(_)));
    }
    for _ in 0..3 {
        assert!(matches!(sub.recv().await, Packet::Publish(_)));
    }

    // An anonymous CONNECT on a listener that refuses anonymous clients.
    let mut refused = RawClient::open(addrs["closed"], V5).await;
    let ack = refused
        .handshake(connect_packet("anon", V5, true))
        .await
        .expect("CONNACK");
    assert!(ack.reason_code.is_error());

    // One good TLS client, and one that does not trust the server's CA.
    let tls = tls_connect(addrs["mqtts"], "localhost", pki.client_config(None))
        .await
        .expect("TLS");
    let mut tls_client = RawClient::over(tls, V5);
    let ack = tls_client
        .handshake(connect_packet("tls1", V5, true))
        .await
        .expect("CONNACK");
    assert!(!ack.reason_code.is_error());
    let other = TestPki::new("Other CA");
    let rejected = tls_connect(addrs["mqtts"], "localhost", other.client_config(None)).await;
    assert!(
        rejected.is_err(),
        "a client trusting another CA refuses the server"
    );

    let (bytes_in, bytes_out) = (sub.sent + pubc.sent, sub.received + pubc.received);
    wait_metrics(handle, "exact counts", |m| {
        value(m, r#"moat_bytes_received_total{listener="open"}"#) == bytes_in as f64
            && value(m, r#"moat_bytes_sent_total{listener="open"}"#) == bytes_out as f64
            && value(m, r#"moat_connections{listener="closed"}"#) == 0.0
            && value(
                m,
                r#"moat_tls_handshake_failures_total{listener="mqtts",reason="client_rejected_server_certificate"}"#,
            ) == 1.0
    })
    .await;

    let m = parse(&handle.metrics_text().await);
    let expect = [
        (r#"moat_connections{listener="open"}"#, 2.0),
        (r#"moat_connections_accepted_total{listener="open"}"#, 2.0),
        (r#"moat_connections_accepted_total{listener="closed"}"#, 1.0),
        (r#"moat_connections_accepted_total{listener="mqtts"}"#, 2.0),
        (r#"moat_connections{listener="mqtts"}"#, 1.0),
        ("moat_clients_connected", 3.0),
        ("moat_messages_received_total", 3.0),
        ("moat_messages_sent_total", 3.0),
        (
            r#"moat_messages_dropped_total{reason="slow_subscriber"}"#,
            0.0,
        ),
        (
            r#"moat_auth_failures_total{reason="anonymous_not_allowed"}"#,
            1.0,
        ),
        (r#"moat_auth_failures_total{reason="wrong_password"}"#, 0.0),
        ("moat_auth_password_checks_total", 0.0),
        (
            r#"moat_tls_handshake_failures_total{listener="mqtts",reason="unknown_ca"}"#,
            0.0,
        ),
        ("moat_queued_messages", 0.0),
    ];
    for (key, want) in expect {
        assert_eq!(value(&m, key), want, "{key}");
    }
    // Every reason is listed (rate() needs the zeros).
    let auth_reasons = m
        .keys()
        .filter(|k| k.starts_with("moat_auth_failures_total{"))
        .count();
    assert_eq!(auth_reasons, moat_server::FailureKind::ALL.len());
    // The retained message went to the store before its PUBACK.
    assert!(value(&m, "moat_store_commit_duration_seconds_count") >= 1.0);
    assert!(value(&m, "moat_store_bytes") > 0.0);
    assert!(value(&m, "moat_retained_messages") >= 1.0);
    // The server certificate (30 days) and its expiry, by listener, role and subject.
    let expiry: Vec<f64> = m
        .iter()
        .filter(|(k, _)| {
            k.starts_with(
                r#"moat_tls_certificate_expiry_seconds{listener="mqtts",role="server",subject="#,
            )
        })
        .map(|(_, v)| *v)
        .collect();
    assert_eq!(expiry.len(), 1, "one server certificate: {m:?}");
    assert!(
        (29.0 * DAY..=30.0 * DAY + 60.0).contains(&expiry[0]),
        "expires in {} s",
        expiry[0]
    );

    // $SYS shows the server's metrics with the core's.
    let mut sys = RawClient::connect(addrs["open"], V5, "sys", true).await;
    sys.send(&subscribe("$SYS/broker/#")).await;
    let want: &[(&str, &str)] = &[
        ("$SYS/broker/auth/failures/anonymous_not_allowed", "1"),
        ("$SYS/broker/auth/failures", "1"),
        (
            "$SYS/broker/listeners/mqtts/tls/failures/client_rejected_server_certificate",
            "1",
        ),
        ("$SYS/broker/listeners/closed/connections/total", "1"),
        ("$SYS/broker/listeners/closed/connections", "0"),
        ("$SYS/broker/listeners/mqtts/connections", "1"),
        ("$SYS/broker/messages/received", "3"),
    ];
    let positive = [
        "$SYS/broker/listeners/open/bytes/received",
        "$SYS/broker/listeners/open/bytes/sent",
        "$SYS/broker/bytes/received",
        "$SYS/broker/bytes/sent",
        "$SYS/broker/store/bytes",
    ];
    let mut seen: HashMap<String, String> = HashMap::new();
    within(async {
        loop {
            let done = want
                .iter()
                .all(|(t, v)| seen.get(*t).map(String::as_str) == Some(*v))
                && positive.iter().all(|t| {
                    seen.get(*t)
                        .and_then(|v| v.parse::<u64>().ok())
                        .is_some_and(|n| n > 0)
                });
            if done {
                break;
            }
            match sys.recv().await {
                Some(Packet::Publish(p)) => {
                    let v = String::from_utf8_lossy(&p.payload).into_owned();
                    seen.insert(p.topic.to_string(), v);
                }
                Some(_) => {}
                None => panic!("the $SYS subscriber was disconnected"),
            }
        }
    })
    .await;

    drop((sub, pubc, refused, tls_client, sys));
    broker.stop().await;
}
