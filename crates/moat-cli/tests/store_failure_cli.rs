//! A store that fails while `moat serve` runs stops the broker: clients are told, the process
//! exits non-zero with an error naming the store file (it used to keep accepting clients that
//! could never connect). The failure is real: the process runs under a file-size limit
//! (`ulimit -f`, SIGXFSZ ignored), so the store's writes fail with EFBIG once it grows.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use moat_codec::{Packet, PacketId, Properties, ProtocolVersion, Publish, QoS, ReasonCode};
use moat_testkit::RawClient;

const TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_store_stops_the_server() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("moat.toml"),
        "data_dir = \"data\"\n[[listeners]]\nname = \"local\"\nkind = \"tcp\"\nbind = \"127.0.0.1:0\"\n\
         [admin]\nbind = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let limited = format!(
        "trap '' XFSZ; ulimit -f 4096; exec {} serve --config moat.toml",
        env!("CARGO_BIN_EXE_moat")
    );
    let (mut child, addr) = start(dir.path(), &limited);
    let mut stderr = child.stderr.take().unwrap();
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });

    let v5 = ProtocolVersion::V5;
    let mut watcher = RawClient::connect(addr, v5, "watcher", true).await;
    let mut publisher = RawClient::connect(addr, v5, "publisher", true).await;
    // Retained QoS 1 messages of 200 KB until the store cannot take more (4 MiB limit).
    let payload = Bytes::from(vec![b'x'; 200_000]);
    let mut acked = 0;
    let mut refused = false;
    for i in 1..=100u16 {
        publisher
            .send(&Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtLeastOnce,
                retain: true,
                topic: format!("big/{i}"),
                packet_id: PacketId::new(i),
                properties: Properties::default(),
                payload: payload.clone(),
            }))
            .await;
        match publisher.recv().await {
            Some(Packet::PubAck(a)) => {
                assert!(!a.reason_code.is_error());
                acked += 1;
            }
            Some(Packet::Disconnect(d)) => {
                assert_eq!(d.reason_code, ReasonCode::UNSPECIFIED_ERROR);
                refused = true;
                break;
            }
            None => {
                refused = true;
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(refused, "the store never failed ({acked} acknowledged)");
    // Connected clients are told.
    match watcher.recv().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason_code, ReasonCode::UNSPECIFIED_ERROR),
        other => panic!("watcher: {other:?}"),
    }
    // The process exits non-zero on its own.
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "moat kept running after its store failed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!status.success());
    let log = err_reader.join().unwrap();
    let last = log.lines().last().unwrap_or_default();
    assert!(last.starts_with("moat: error:"), "{log}");
    assert!(last.contains("moat.redb"), "{last}");
    assert_eq!(last.matches("File too large").count(), 1, "{last}");
    // Nothing listens any more.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    // What was acknowledged is still there after a restart without the limit.
    let plain = format!(
        "exec {} serve --config moat.toml",
        env!("CARGO_BIN_EXE_moat")
    );
    let (mut again, addr) = start(dir.path(), &plain);
    let mut s = RawClient::connect(addr, v5, "reader", true).await;
    s.send(&Packet::Subscribe(moat_codec::Subscribe {
        packet_id: PacketId::new(1).unwrap(),
        properties: Properties::default(),
        filters: vec![("big/#".into(), moat_codec::SubscriptionOptions::default())],
    }))
    .await;
    assert!(matches!(s.recv().await, Some(Packet::SubAck(_))));
    let mut retained = 0;
    while let Some(Some(Packet::Publish(p))) = s.try_recv(Duration::from_secs(2)).await {
        assert!(p.retain);
        retained += 1;
    }
    assert!(retained >= acked, "{acked} acknowledged, {retained} kept");
    let _ = again.kill();
    let _ = again.wait();
}

/// Starts `bash -c script` in `dir` and reads the listener address from its first line.
fn start(dir: &std::path::Path, script: &str) -> (std::process::Child, SocketAddr) {
    let mut child = Command::new("bash")
        .args(["-c", script])
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start moat serve");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let line = rx.recv_timeout(TIMEOUT).expect("no listener line");
    let addr = line
        .rsplit("mqtt://")
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    (child, addr)
}
