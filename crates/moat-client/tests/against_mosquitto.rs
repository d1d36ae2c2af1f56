//! The client against a real broker: mosquitto (the Debian package), one instance per test on
//! an ephemeral 127.0.0.1 port. Each scenario runs over MQTT 3.1.1 and 5.0.
//!
//! These tests fail (they do not skip) when mosquitto is not installed.

use std::fs::File;
use std::future::Future;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use moat_client::{
    connect_tcp, Client, ClientError, ConnAck, ConnectOptions, Framed, LastWill, Packet,
    Properties, ProtocolVersion, Publish, QoS, ReasonCode, SubscriptionOptions,
};
use moat_codec::Connect;

/// Every wait in these tests.
const WAIT: Duration = Duration::from_secs(10);

/// A mosquitto process, killed on drop.
struct Mosquitto {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    /// A broker that accepts anonymous clients.
    fn start() -> Self {
        Self::start_with("allow_anonymous true\n", &[])
    }

    /// A broker with these extra configuration lines, in which `{dir}` stands for a temporary
    /// directory holding `files` (name, contents).
    fn start_with(extra_config: &str, files: &[(&str, &str)]) -> Self {
        let bin = mosquitto_binary();
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let port = free_port();
        for (name, contents) in files {
            std::fs::write(dir.path().join(name), contents).expect("write a broker file");
        }
        let extra_config = extra_config.replace("{dir}", &dir.path().display().to_string());
        // `user root` keeps a broker started as root from dropping privileges (and losing
        // access to the temporary directory); it has no effect otherwise.
        let config = dir.path().join("mosquitto.conf");
        std::fs::write(
            &config,
            format!("listener {port} 127.0.0.1\npersistence false\nuser root\n{extra_config}"),
        )
        .expect("write mosquitto.conf");
        let log = dir.path().join("mosquitto.log");
        let log_file = File::create(&log).expect("create mosquitto.log");
        let child = Command::new(&bin)
            .arg("-c")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let mut broker = Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            log,
            _dir: dir,
        };
        broker.wait_until_ready();
        broker
    }

    fn wait_until_ready(&mut self) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll mosquitto") {
                panic!("mosquitto exited with {status}; its log:\n{}", self.log());
            }
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "mosquitto did not listen on {} within {WAIT:?}; its log:\n{}",
                self.addr,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port that was free a moment ago and that no other broker of this test binary got: the
/// OS may hand out a just-released port again, and two brokers on one port would mix up the
/// tests.
fn free_port() -> u16 {
    static HANDED_OUT: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local address").port();
        if !handed_out.contains(&port) {
            handed_out.push(port);
            return port;
        }
    }
}

fn mosquitto_binary() -> PathBuf {
    let candidates = [
        Path::new("/usr/sbin/mosquitto"),
        Path::new("/usr/local/sbin/mosquitto"),
    ];
    if let Some(found) = candidates.iter().find(|p| p.exists()) {
        return found.to_path_buf();
    }
    let in_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("mosquitto"))
        .find(|p| p.exists());
    in_path.unwrap_or_else(|| {
        panic!("mosquitto is not installed (looked in /usr/sbin and $PATH): apt-get install -y mosquitto")
    })
}

/// Awaits `f`, failing the test after [`WAIT`].
async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(WAIT, f)
        .await
        .expect("timed out after 10 s")
}

fn options(client_id: &str, version: ProtocolVersion) -> ConnectOptions {
    ConnectOptions::new(client_id).protocol(version)
}

async fn connect(broker: &Mosquitto, opts: ConnectOptions) -> (Client, ConnAck) {
    within(connect_tcp(broker.addr(), opts))
        .await
        .expect("connect")
}

fn sub(qos: QoS) -> SubscriptionOptions {
    SubscriptionOptions {
        qos,
        ..SubscriptionOptions::default()
    }
}

async fn next_message(client: &Client) -> Publish {
    within(client.recv())
        .await
        .expect("recv")
        .expect("a message, not the end of the connection")
}

async fn pub_sub_qos_0_1_2(version: ProtocolVersion) {
    let broker = Mosquitto::start();
    let (client, connack) = connect(&broker, options("self", version)).await;
    assert!(!connack.session_present);
    assert_eq!(connack.reason_code, ReasonCode::SUCCESS);

    let suback = within(client.subscribe(&[("test/#", sub(QoS::ExactlyOnce))]))
        .await
        .expect("subscribe");
    assert_eq!(suback.reason_codes, vec![ReasonCode::GRANTED_QOS_2]);

    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let topic = format!("test/qos{}", qos as u8);
        let payload = Bytes::from(format!("payload at {qos:?}"));
        within(client.publish(topic.clone(), payload.clone(), qos, false))
            .await
            .expect("publish");
        let message = next_message(&client).await;
        assert_eq!(message.topic, topic);
        assert_eq!(message.payload, payload);
        assert_eq!(message.qos, qos);
        assert!(!message.retain);
    }

    within(client.disconnect()).await.expect("disconnect");
    assert!(within(client.recv()).await.expect("clean end").is_none());
    assert!(matches!(
        within(client.publish("test/x", "late", QoS::AtMostOnce, false)).await,
        Err(ClientError::Closed)
    ));
}

async fn many_qos2_messages_in_flight(version: ProtocolVersion) {
    let broker = Mosquitto::start();
    let (client, _) = connect(&broker, options("burst", version)).await;
    let client = Arc::new(client);
    within(client.subscribe(&[("burst/#", sub(QoS::ExactlyOnce))]))
        .await
        .expect("subscribe");
    let publishers: Vec<_> = (0..50u8)
        .map(|i| {
            let client = Arc::clone(&client);
            tokio::spawn(async move {
                client
                    .publish(format!("burst/{i}"), vec![i], QoS::ExactlyOnce, false)
                    .await
            })
        })
        .collect();
    let mut seen = Vec::new();
    for _ in 0..50 {
        let message = next_message(&client).await;
        assert_eq!(message.qos, QoS::ExactlyOnce);
        seen.push(message.payload[0]);
    }
    for publisher in publishers {
        within(publisher).await.expect("task").expect("publish");
    }
    seen.sort_unstable();
    assert_eq!(
        seen,
        (0..50).collect::<Vec<u8>>(),
        "each message exactly once"
    );
}

async fn retained_message(version: ProtocolVersion) {
    let broker = Mosquitto::start();
    let (publisher, _) = connect(&broker, options("retainer", version)).await;
    within(publisher.publish("retained/a", "kept", QoS::AtLeastOnce, true))
        .await
        .expect("publish");

    let (subscriber, _) = connect(&broker, options("late-subscriber", version)).await;
    within(subscriber.subscribe(&[("retained/#", sub(QoS::AtLeastOnce))]))
        .await
        .expect("subscribe");
    let message = next_message(&subscriber).await;
    assert_eq!(message.topic, "retained/a");
    assert_eq!(message.payload, "kept");
    assert!(
        message.retain,
        "a retained message is delivered with RETAIN set on a new subscription"
    );
}

async fn unsubscribe_stops_delivery(version: ProtocolVersion) {
    let broker = Mosquitto::start();
    let (client, _) = connect(&broker, options("unsub", version)).await;
    within(client.subscribe(&[
        ("a/#", sub(QoS::AtLeastOnce)),
        ("b/#", sub(QoS::AtLeastOnce)),
    ]))
    .await
    .expect("subscribe");
    let unsuback = within(client.unsubscribe(&["a/#"]))
        .await
        .expect("unsubscribe");
    if version.is_v5() {
        assert_eq!(unsuback.reason_codes, vec![ReasonCode::SUCCESS]);
    } else {
        assert!(unsuback.reason_codes.is_empty());
    }
    within(client.publish("a/1", "dropped", QoS::AtLeastOnce, false))
        .await
        .expect("publish a");
    within(client.publish("b/1", "marker", QoS::AtLeastOnce, false))
        .await
        .expect("publish b");
    let message = next_message(&client).await;
    assert_eq!(
        message.topic, "b/1",
        "nothing may arrive for the unsubscribed filter"
    );
}

async fn persistent_session_gets_queued_messages(version: ProtocolVersion) {
    let broker = Mosquitto::start();
    let persistent = options("persistent", version)
        .clean_start(false)
        .session_expiry(300);
    let (client, connack) = connect(&broker, persistent.clone()).await;
    assert!(!connack.session_present);
    within(client.subscribe(&[("queue/#", sub(QoS::AtLeastOnce))]))
        .await
        .expect("subscribe");
    within(client.disconnect()).await.expect("disconnect");

    let (publisher, _) = connect(&broker, options("queue-publisher", version)).await;
    for i in 0..3 {
        within(publisher.publish(
            format!("queue/{i}"),
            format!("queued {i}"),
            QoS::AtLeastOnce,
            false,
        ))
        .await
        .expect("publish");
    }

    let (client, connack) = connect(&broker, persistent).await;
    assert!(connack.session_present, "the session was kept");
    for i in 0..3 {
        let message = next_message(&client).await;
        assert_eq!(message.topic, format!("queue/{i}"));
        assert_eq!(message.qos, QoS::AtLeastOnce);
    }
}

async fn will_on_dropped_socket_only(version: ProtocolVersion) {
    let broker = Mosquitto::start();
    let (watcher, _) = connect(&broker, options("watcher", version)).await;
    within(watcher.subscribe(&[("will/#", sub(QoS::AtLeastOnce))]))
        .await
        .expect("subscribe");

    let will = |topic: &str| LastWill {
        topic: topic.to_owned(),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Properties::default(),
    };
    // A clean DISCONNECT discards the will...
    let (polite, _) = connect(
        &broker,
        options("polite", version).will(will("will/polite")),
    )
    .await;
    within(polite.disconnect()).await.expect("disconnect");
    // ...dropping the socket does not.
    let (rude, _) = connect(&broker, options("rude", version).will(will("will/rude"))).await;
    drop(rude);

    let message = next_message(&watcher).await;
    assert_eq!(message.topic, "will/rude");
    assert_eq!(message.payload, "gone");
}

async fn refused_connection(version: ProtocolVersion) {
    let broker = Mosquitto::start_with("allow_anonymous false\n", &[]);
    let err = within(connect_tcp(broker.addr(), options("anonymous", version)))
        .await
        .expect_err("refused");
    assert!(
        matches!(err, ClientError::Refused(ReasonCode::NOT_AUTHORIZED)),
        "{err:?}"
    );
    assert_eq!(err.to_string(), "connection refused: not authorized");
}

async fn session_takeover_ends_the_old_connection(version: ProtocolVersion) {
    let broker = Mosquitto::start();
    let (first, _) = connect(&broker, options("twin", version)).await;
    let (_second, _) = connect(&broker, options("twin", version)).await;
    let err = within(first.recv())
        .await
        .expect_err("the first connection ends");
    // mosquitto 2.0 closes the socket without a DISCONNECT 0x8E even for v5; later versions
    // send one.
    let ok = matches!(
        err,
        ClientError::Disconnected(None | Some(ReasonCode::SESSION_TAKEN_OVER))
    );
    assert!(ok, "{err:?}");
    // Later calls report the same end.
    let again = within(first.publish("x", "y", QoS::AtLeastOnce, false))
        .await
        .expect_err("closed");
    assert_eq!(again.to_string(), err.to_string());
    assert!(first.is_closed());
}

async fn server_disconnect_is_surfaced(version: ProtocolVersion) {
    let broker = Mosquitto::start_with("allow_anonymous true\nmax_qos 1\n", &[]);
    let (client, _) = connect(&broker, options("greedy", version)).await;
    let err = within(client.publish("q", "two", QoS::ExactlyOnce, false))
        .await
        .expect_err("QoS 2 is refused");
    // A v5 client gets DISCONNECT 0x9B; a 3.1.1 client is just cut off.
    let expected = version.is_v5().then_some(ReasonCode::QOS_NOT_SUPPORTED);
    assert!(
        matches!(err, ClientError::Disconnected(rc) if rc == expected),
        "{err:?}"
    );
    if version.is_v5() {
        assert_eq!(
            err.to_string(),
            "disconnected by the server: QoS not supported"
        );
        assert_eq!(err.reason_code(), Some(ReasonCode::QOS_NOT_SUPPORTED));
    }
    let from_recv = within(client.recv())
        .await
        .expect_err("the connection is over");
    assert!(
        matches!(from_recv, ClientError::Disconnected(rc) if rc == expected),
        "{from_recv:?}"
    );
}

async fn publish_reports_reason_code(version: ProtocolVersion) {
    // Anonymous clients may publish under open/ only.
    let acl = "topic read #\ntopic readwrite open/#\n";
    let broker = Mosquitto::start_with(
        "allow_anonymous true\nacl_file {dir}/acl\n",
        &[("acl", acl)],
    );
    let (client, _) = connect(&broker, options("acl", version)).await;
    for qos in [QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let publish = |topic: &str| Publish {
            dup: false,
            qos,
            retain: false,
            topic: topic.to_owned(),
            packet_id: None,
            properties: Properties::default(),
            payload: Bytes::from_static(b"hello?"),
        };
        let code = within(client.publish_with(publish("open/nobody")))
            .await
            .expect("allowed publish");
        // mosquitto 2.0.11 answers 0x00 where 0x10 (no matching subscribers) is also allowed.
        assert!(!code.is_error(), "{code:?}");

        let denied = within(client.publish_with(publish("closed/x"))).await;
        if version.is_v5() {
            let err = denied.expect_err("denied by the ACL");
            assert!(
                matches!(
                    err,
                    ClientError::PublishRejected(ReasonCode::NOT_AUTHORIZED)
                ),
                "{err:?}"
            );
            assert_eq!(err.to_string(), "publish rejected: not authorized");
        } else {
            // 3.1.1 acknowledgements carry no reason code: the broker drops the message quietly.
            assert_eq!(denied.expect("3.1.1 cannot be told"), ReasonCode::SUCCESS);
        }
    }
}

async fn keep_alive_pings_keep_the_connection(version: ProtocolVersion) {
    let broker = Mosquitto::start();
    let (client, _) = connect(&broker, options("sleepy", version).keep_alive(1)).await;
    within(client.subscribe(&[("awake", sub(QoS::AtLeastOnce))]))
        .await
        .expect("subscribe");
    // mosquitto drops a client silent for 1.5 keep-alive intervals; stay idle for longer.
    tokio::time::sleep(Duration::from_millis(2600)).await;
    within(client.publish("awake", "still here", QoS::AtLeastOnce, false))
        .await
        .expect("publish after idling");
    assert_eq!(next_message(&client).await.payload, "still here");
}

async fn framed_raw_exchange(version: ProtocolVersion) {
    let broker = Mosquitto::start();
    let mut framed = within(Framed::connect(broker.addr()))
        .await
        .expect("tcp connect");
    framed.set_version(version);
    let connect = Connect {
        protocol: version,
        clean_start: true,
        keep_alive: 30,
        client_id: "raw".to_owned(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    };
    within(framed.send(&Packet::Connect(Box::new(connect))))
        .await
        .expect("send CONNECT");
    match within(framed.recv()).await.expect("recv") {
        Some(Packet::ConnAck(connack)) => {
            assert_eq!(connack.reason_code, ReasonCode::SUCCESS);
            assert!(!connack.session_present);
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
    within(framed.send(&Packet::PingReq))
        .await
        .expect("send PINGREQ");
    assert_eq!(
        within(framed.recv()).await.expect("recv"),
        Some(Packet::PingResp)
    );

    // Packet type 0 is reserved: the broker must close the connection.
    within(framed.send_raw(&[0x00, 0x00]))
        .await
        .expect("send raw bytes");
    loop {
        match within(framed.recv()).await {
            Ok(None) | Err(ClientError::Io(_)) => break,
            Ok(Some(Packet::Disconnect(d))) => assert!(d.reason_code.is_error(), "{d:?}"),
            other => panic!("expected the connection to close, got {other:?}"),
        }
    }
}

macro_rules! for_both_versions {
    ($($scenario:ident),* $(,)?) => {
        mod v3_1_1 {
            $(
                #[tokio::test]
                async fn $scenario() {
                    super::$scenario(moat_client::ProtocolVersion::V3_1_1).await;
                }
            )*
        }
        mod v5 {
            $(
                #[tokio::test]
                async fn $scenario() {
                    super::$scenario(moat_client::ProtocolVersion::V5).await;
                }
            )*
        }
    };
}

for_both_versions!(
    pub_sub_qos_0_1_2,
    many_qos2_messages_in_flight,
    retained_message,
    unsubscribe_stops_delivery,
    persistent_session_gets_queued_messages,
    will_on_dropped_socket_only,
    refused_connection,
    session_takeover_ends_the_old_connection,
    server_disconnect_is_surfaced,
    publish_reports_reason_code,
    keep_alive_pings_keep_the_connection,
    framed_raw_exchange,
);
