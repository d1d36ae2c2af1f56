//! The client over WebSocket against a real broker: mosquitto (the Debian package) with a
//! `protocol websockets` listener, one instance per test on an ephemeral port.
//!
//! These tests fail (they do not skip) when mosquitto is not installed or was built without
//! WebSocket support.

use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use moat_client::{ws, Client, ConnectOptions, ProtocolVersion, QoS, SubscriptionOptions};

/// Every wait in these tests.
const WAIT: Duration = Duration::from_secs(10);

/// A mosquitto process with one WebSocket listener, killed on drop.
struct Mosquitto {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    fn start() -> Self {
        let bin = Path::new("/usr/sbin/mosquitto");
        assert!(
            bin.exists(),
            "mosquitto is not installed at {}: apt-get install -y mosquitto",
            bin.display()
        );
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let port = free_port();
        // The plain MQTT listener is unused, but mosquitto 2.0.11 with libwebsockets 4.1
        // (Debian 12) refuses a configuration whose only listener is a WebSocket one ("Unable
        // to start any listening sockets"). `user root` keeps a broker started as root from
        // dropping privileges.
        let mqtt_port = free_port();
        let config = dir.path().join("mosquitto.conf");
        std::fs::write(
            &config,
            format!(
                "listener {mqtt_port} 127.0.0.1\nlistener {port} 127.0.0.1\nprotocol websockets\n\
                 allow_anonymous true\npersistence false\nuser root\n"
            ),
        )
        .expect("write mosquitto.conf");
        let log = dir.path().join("mosquitto.log");
        let log_file = File::create(&log).expect("create mosquitto.log");
        let child = Command::new(bin)
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
                let log = self.log();
                if log.contains("Websockets support not available") {
                    panic!("this mosquitto was built without WebSocket support; its log:\n{log}");
                }
                panic!("mosquitto exited with {status}; its log:\n{log}");
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

/// A port that was free a moment ago and that no other broker of this test binary got (the
/// OS may hand out a just-released port again).
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

async fn ws_client(broker: &Mosquitto, client_id: &str, version: ProtocolVersion) -> Client {
    let connect = async {
        let tcp = tokio::net::TcpStream::connect(broker.addr).await?;
        tcp.set_nodelay(true)?;
        let stream = ws::connect(tcp, &broker.addr.to_string(), "/mqtt").await?;
        let opts = ConnectOptions::new(client_id).protocol(version);
        Client::connect(stream, opts).await
    };
    let (client, connack) = tokio::time::timeout(WAIT, connect)
        .await
        .expect("connected within 10 s")
        .unwrap_or_else(|e| panic!("connect over websocket: {e}; broker log:\n{}", broker.log()));
    assert!(!connack.session_present);
    client
}

async fn pub_sub_qos1(version: ProtocolVersion) {
    let broker = Mosquitto::start();
    let subscriber = ws_client(&broker, "ws-sub", version).await;
    let publisher = ws_client(&broker, "ws-pub", version).await;
    let sub = SubscriptionOptions {
        qos: QoS::AtLeastOnce,
        ..SubscriptionOptions::default()
    };
    tokio::time::timeout(WAIT, subscriber.subscribe(&[("ws/#", sub)]))
        .await
        .expect("subscribed within 10 s")
        .expect("subscribe");

    // A small message, and one large enough to span several WebSocket frames and reads.
    let large: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
    for payload in [Bytes::from_static(b"over websocket"), Bytes::from(large)] {
        tokio::time::timeout(
            WAIT,
            publisher.publish("ws/test", payload.clone(), QoS::AtLeastOnce, false),
        )
        .await
        .expect("published within 10 s")
        .expect("publish");
        let message = tokio::time::timeout(WAIT, subscriber.recv())
            .await
            .expect("received within 10 s")
            .expect("recv")
            .expect("a message, not the end of the connection");
        assert_eq!(message.topic, "ws/test");
        assert_eq!(message.qos, QoS::AtLeastOnce);
        assert_eq!(message.payload.len(), payload.len());
        assert!(message.payload == payload, "payload differs");
    }

    for client in [publisher, subscriber] {
        tokio::time::timeout(WAIT, client.disconnect())
            .await
            .expect("disconnected within 10 s")
            .expect("disconnect");
    }
}

#[tokio::test]
async fn pub_sub_qos1_v311() {
    pub_sub_qos1(ProtocolVersion::V3_1_1).await;
}

#[tokio::test]
async fn pub_sub_qos1_v5() {
    pub_sub_qos1(ProtocolVersion::V5).await;
}

#[tokio::test]
async fn a_non_websocket_server_is_an_error() {
    // A TCP server that answers the upgrade request with plain HTTP 404.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local address");
    let server = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut socket, _) = listener.accept().await.expect("accept");
        let mut request = Vec::new();
        let mut buf = [0; 1024];
        while !request.ends_with(b"\r\n\r\n") {
            let n = socket.read(&mut buf).await.expect("read");
            assert!(n > 0, "the request ended early");
            request.extend_from_slice(&buf[..n]);
        }
        socket
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            .await
            .expect("write");
        String::from_utf8_lossy(&request).into_owned()
    });
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let err = tokio::time::timeout(WAIT, ws::connect(tcp, &addr.to_string(), "/mqtt"))
        .await
        .expect("answered within 10 s")
        .expect_err("refused");
    assert_eq!(
        err.to_string(),
        "websocket handshake failed: the server refused the upgrade with HTTP 404 Not Found"
    );
    let request = server.await.expect("server task");
    assert!(request.starts_with("GET /mqtt HTTP/1.1\r\n"), "{request}");
    assert!(
        request
            .to_ascii_lowercase()
            .contains("sec-websocket-protocol: mqtt\r\n"),
        "{request}"
    );
}
