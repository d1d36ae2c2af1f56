//! Forwarding end to end: `moat serve` with rules into a real PostgreSQL and a real
//! nats-server (private instances on loopback ports of their own). Rows and stream messages
//! match what was published; PostgreSQL and nats-server killed during load and the broker
//! killed with SIGKILL during that outage: after all three restart, every acknowledged message
//! is in the table and in the stream exactly once.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use moat_client::{connect_tcp, ConnectOptions, ProtocolVersion, QoS};
use moat_forward::testing::{NatsServer, PgServer, PG_PASSWORD};

const TIMEOUT: Duration = Duration::from_secs(60);

/// `moat serve` with a config in `dir`; its MQTT address.
struct Moat {
    child: Child,
    addr: SocketAddr,
}

impl Moat {
    fn start(dir: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_moat"))
            .args(["serve", "--config"])
            .arg(dir.join("moat.toml"))
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.join("stderr.log")).expect("stderr file"))
            .spawn()
            .expect("start moat serve");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let addr = loop {
            let line = rx.recv_timeout(TIMEOUT).unwrap_or_else(|_| {
                panic!(
                    "moat serve printed no listener line: {}",
                    std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default()
                )
            });
            if let Some(rest) = line.strip_prefix("moat: listener tcp on mqtt://") {
                break rest.parse().expect("address");
            }
        };
        Self { child, addr }
    }

    /// SIGKILL: no shutdown, no flush.
    fn kill9(mut self) {
        self.child.kill().expect("kill");
        self.child.wait().expect("wait");
    }
}

impl Drop for Moat {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn publish_all(addr: SocketAddr, id: &str, items: &[(String, String)]) {
    let opts = ConnectOptions::new(id).protocol(ProtocolVersion::V5);
    let (client, _) = tokio::time::timeout(TIMEOUT, connect_tcp(addr, opts))
        .await
        .expect("connect timed out")
        .expect("connect");
    for (topic, payload) in items {
        // Ok means the PUBACK came: the message is acknowledged.
        tokio::time::timeout(
            TIMEOUT,
            client.publish(topic.clone(), payload.clone(), QoS::AtLeastOnce, false),
        )
        .await
        .expect("PUBACK timed out")
        .expect("publish");
    }
}

/// Polls `f` (bounded) until it returns `Some`.
async fn until<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn rows(pg: &PgServer) -> Option<i64> {
    let client = pg.client().await.ok()?;
    let row = client
        .query_one("SELECT count(*) FROM telemetry", &[])
        .await
        .ok()?;
    Some(row.get(0))
}

fn telemetry(range: std::ops::Range<u32>) -> Vec<(String, String)> {
    range
        .map(|i| ("devices/d1/telemetry".to_owned(), format!("{{\"t\":{i}}}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_reach_postgres_and_jetstream_once_across_an_outage_and_a_kill_9() {
    let mut pg = PgServer::start().await.expect("postgres");
    let mut nats = NatsServer::start().await.expect("nats-server");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pg.pass"), PG_PASSWORD).unwrap();
    let config = format!(
        r#"[[listeners]]
name = "tcp"
bind = "127.0.0.1:0"
allow_anonymous = true

[admin]
enabled = false

[[forward.sinks]]
name = "db"
kind = "postgres"
url = "{pg}"
password_file = "pg.pass"
connect_timeout = "2s"
write_timeout = "5s"

[[forward.sinks]]
name = "queue"
kind = "jetstream"
url = "{nats}"

[[forward.rules]]
name = "telemetry"
filters = ["devices/+/telemetry"]
sink = "db"
payload = "jsonb"
columns = {{ temp = "t" }}

[[forward.rules]]
name = "events"
filters = ["devices/+/events/#"]
sink = "queue"
stream = "MOAT_EVENTS"
"#,
        pg = pg.url(),
        nats = nats.url()
    );
    std::fs::write(dir.path().join("moat.toml"), config).unwrap();

    let moat = Moat::start(dir.path());
    let events: Vec<(String, String)> = (0..10)
        .map(|i| (format!("devices/d1/events/door/{i}"), format!("open {i}")))
        .collect();
    publish_all(moat.addr, "dev-1", &telemetry(0..30)).await;
    publish_all(moat.addr, "dev-1", &events).await;

    until("30 rows", || async { rows(&pg).await.filter(|n| *n == 30) }).await;
    let client = pg.client().await.unwrap();
    let row = client
        .query_one(
            "SELECT topic, client_id, qos, (temp)::text, payload_json->>'t' FROM telemetry \
             WHERE payload = '{\"t\":7}'::bytea",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "devices/d1/telemetry");
    assert_eq!(row.get::<_, String>(1), "dev-1");
    assert_eq!(row.get::<_, i16>(2), 1);
    assert_eq!(row.get::<_, String>(3), "7");
    assert_eq!(row.get::<_, String>(4), "7");

    let js = nats.jetstream().await.unwrap();
    let stored = until("10 stream messages", || {
        let js = js.clone();
        async move {
            let mut stream = js.get_stream("MOAT_EVENTS").await.ok()?;
            let n = stream.info().await.ok()?.state.messages;
            (n == 10).then_some(n)
        }
    })
    .await;
    assert_eq!(stored, 10);

    // The database goes down; the broker still acknowledges (the spool takes them), then is
    // killed with SIGKILL before the database is back.
    pg.kill();
    nats.kill();
    publish_all(moat.addr, "dev-1", &telemetry(30..70)).await;
    let more: Vec<(String, String)> = (10..30)
        .map(|i| (format!("devices/d1/events/door/{i}"), format!("open {i}")))
        .collect();
    publish_all(moat.addr, "dev-1", &more).await;
    moat.kill9();
    let moat = Moat::start(dir.path());
    pg.restart().await.expect("postgres restart");
    nats.restart().await.expect("nats-server restart");
    until("70 rows", || async { rows(&pg).await.filter(|n| *n >= 70) }).await;
    let client = pg.client().await.unwrap();
    let row = client
        .query_one(
            "SELECT count(*), count(DISTINCT payload), count(DISTINCT msg_key), \
             min((temp)::text::int), max((temp)::text::int) FROM telemetry",
            &[],
        )
        .await
        .unwrap();
    let counts: (i64, i64, i64, i32, i32) =
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
    assert_eq!(
        counts,
        (70, 70, 70, 0, 69),
        "every acknowledged message, once"
    );
    // The stream has every event once (a redelivery is dropped by its Nats-Msg-Id).
    let js = nats.jetstream().await.unwrap();
    until("30 stream messages", || {
        let js = js.clone();
        async move {
            let mut stream = js.get_stream("MOAT_EVENTS").await.ok()?;
            let n = stream.info().await.ok()?.state.messages;
            (n >= 30).then_some(n)
        }
    })
    .await;
    let mut stream = js.get_stream("MOAT_EVENTS").await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 30);
    drop(moat);
}
