//! Expiry alarms over real sockets: a served certificate and a connected client's certificate
//! close to their expiry are counted in `$SYS/broker/tls/expiry/...` and in the metrics,
//! warned about once per threshold (the warnings counter and the `$SYS` warning events), and
//! a renewed certificate starts afresh.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use moat_codec::{Packet, PacketId, Properties, ProtocolVersion, Subscribe, SubscriptionOptions};
use moat_core::{CertExpiryAction, ClientIdSource};
use moat_pki::Validity;
use moat_server::{
    BrokerHandle, ClientAuth, ListenerConfig, Proof, Server, TlsAlarmsConfig, TlsSettings,
};
use moat_testkit::pki::{tls_connect, TestPki};
use moat_testkit::{connect_packet, RawClient, TestBroker, TIMEOUT};

const V5: ProtocolVersion = ProtocolVersion::V5;
const DAY: u64 = 86_400;

/// A validity from five minutes ago to `secs` from now.
fn valid_for(secs: u64) -> Validity {
    let now = SystemTime::now();
    Validity {
        not_before: now - Duration::from_secs(300),
        not_after: now + Duration::from_secs(secs),
    }
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// A broker with an anonymous tcp listener ("open", for the `$SYS` subscriber) and an mTLS
/// listener ("mqtts") serving `server`; alarms every second at `warn_before`.
async fn start(
    pki: &TestPki,
    server: (PathBuf, PathBuf),
    warn_before: Vec<Duration>,
) -> (TestBroker, HashMap<String, SocketAddr>) {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut tls = TlsSettings::new(server.0, server.1);
    tls.client_auth = ClientAuth::Required;
    tls.client_ca = Some(pki.ca_pem.clone());
    let mut config = TestBroker::config();
    config.broker.sys_interval = Some(Duration::from_millis(50));
    // The file watcher stays out of it: material changes through the handle only.
    config.tls_poll_interval = Duration::from_secs(3600);
    config.tls_alarms = TlsAlarmsConfig {
        warn_before,
        check_interval: Duration::from_secs(1),
    };
    config.listeners = vec![
        ListenerConfig::tcp("open", any, true),
        ListenerConfig {
            proof: Proof::Certificate,
            client_id: ClientIdSource::Client,
            on_client_cert_expiry: CertExpiryAction::Warn,
            ..ListenerConfig::tls("mqtts", any, tls)
        },
    ];
    let server = Server::bind(config).await.expect("bind");
    let addrs = server.local_addrs().into_iter().collect();
    (TestBroker::start_server(server), addrs)
}

/// An mTLS client connected (CONNACK success, no keep-alive) with `cert`.
async fn mtls_client(
    addr: SocketAddr,
    pki: &TestPki,
    id: &str,
    cert: &(PathBuf, PathBuf),
) -> RawClient {
    let config = pki.client_config(Some((&cert.0, &cert.1)));
    let stream = tls_connect(addr, "localhost", config)
        .await
        .expect("TLS handshake");
    let mut c = RawClient::over(stream, V5);
    let mut connect = connect_packet(id, V5, true);
    connect.keep_alive = 0;
    let ack = c.handshake(connect).await.expect("CONNACK");
    assert!(!ack.reason_code.is_error(), "{ack:?}");
    c
}

/// Samples of the Prometheus text: `name{labels}` -> value.
fn parse(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn value(m: &HashMap<String, f64>, key: &str) -> f64 {
    m.get(key).copied().unwrap_or(f64::NAN)
}

/// Polls the metrics until `check` holds (bounded by [`TIMEOUT`]); returns them.
async fn wait_metrics(
    handle: &BrokerHandle,
    what: &str,
    check: impl Fn(&HashMap<String, f64>) -> bool,
) -> HashMap<String, f64> {
    let mut text = String::new();
    let waited = tokio::time::timeout(TIMEOUT, async {
        loop {
            text = handle.metrics_text().await;
            let m = parse(&text);
            if check(&m) {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    match waited {
        Ok(m) => m,
        Err(_) => panic!("{what} never held; last metrics:\n{text}"),
    }
}

fn warnings(m: &HashMap<String, f64>, kind: &str) -> f64 {
    value(
        m,
        &format!("moat_tls_expiry_warnings_total{{kind=\"{kind}\"}}"),
    )
}

fn checks(m: &HashMap<String, f64>) -> f64 {
    value(m, "moat_tls_expiry_checks_total")
}

/// Waits until the alarms have run `n` more checks than in `m` (so anything they would
/// warn about again would have been).
async fn more_checks(
    handle: &BrokerHandle,
    m: &HashMap<String, f64>,
    n: f64,
) -> HashMap<String, f64> {
    let start = checks(m);
    wait_metrics(handle, "more checks", |m| checks(m) >= start + n).await
}

/// A `$SYS` subscriber that keeps the last value of each topic and every warning event.
struct Sys {
    c: RawClient,
    values: HashMap<String, String>,
    warnings: Vec<serde_json::Value>,
}

impl Sys {
    async fn subscribe(addr: SocketAddr, filter: &str) -> Self {
        let mut c = RawClient::connect(addr, V5, "sys", true).await;
        c.send(&Packet::Subscribe(Subscribe {
            packet_id: PacketId::new(1).unwrap(),
            properties: Properties::default(),
            filters: vec![(filter.into(), SubscriptionOptions::default())],
        }))
        .await;
        Self {
            c,
            values: HashMap::new(),
            warnings: Vec::new(),
        }
    }

    /// Reads until `done` holds (bounded by [`TIMEOUT`]).
    async fn until(&mut self, what: &str, done: impl Fn(&Self) -> bool) {
        let waited = tokio::time::timeout(TIMEOUT, async {
            while !done(self) {
                match self.c.recv().await {
                    Some(Packet::Publish(p)) => {
                        let v = String::from_utf8_lossy(&p.payload).into_owned();
                        if p.topic == "$SYS/broker/tls/expiry/warning" {
                            assert!(!p.retain, "the warning is an event, not retained");
                            self.warnings
                                .push(serde_json::from_str(&v).expect("warning is JSON"));
                        } else {
                            self.values.insert(p.topic.to_string(), v);
                        }
                    }
                    Some(_) => {}
                    None => panic!("the $SYS subscriber was disconnected"),
                }
            }
        })
        .await;
        assert!(
            waited.is_ok(),
            "{what} never held; $SYS values {:#?}, warnings {:#?}",
            self.values,
            self.warnings
        );
    }

    fn has(&self, topic: &str, value: &str) -> bool {
        self.values
            .get(&format!("$SYS/broker/tls/expiry/{topic}"))
            .map(String::as_str)
            == Some(value)
    }

    fn warned(&self, kind: &str) -> Vec<&serde_json::Value> {
        self.warnings.iter().filter(|w| w["kind"] == kind).collect()
    }
}

fn pem(cert: &Path, key: &Path, ca: &Path) -> moat_tls::Pem {
    moat_tls::Pem {
        cert: std::fs::read(cert).unwrap(),
        key: std::fs::read(key).unwrap().into(),
        client_ca: Some(std::fs::read(ca).unwrap()),
        ..moat_tls::Pem::default()
    }
}

#[tokio::test]
async fn a_certificate_within_a_day_is_counted_warned_once_and_a_renewal_starts_afresh() {
    let pki = TestPki::new("Alarm CA");
    let twelve_hours = valid_for(12 * 3_600);
    let server_not_after = unix(twelve_hours.not_after);
    let server = pki.server_with_validity("server", &["localhost", "127.0.0.1"], twelve_hours);
    let days = [30, 7, 1].map(|d| Duration::from_secs(d * DAY)).to_vec();
    let (broker, addrs) = start(&pki, server, days).await;
    let h = broker.handle().clone();

    // The server certificate (12 h) is within a day; the test CA (30 days) within 30 days.
    let m = wait_metrics(&h, "the first check", |m| checks(m) >= 1.0).await;
    assert_eq!(warnings(&m, "server"), 1.0);
    assert_eq!(warnings(&m, "client_ca"), 1.0);
    assert_eq!(warnings(&m, "client"), 0.0);
    for within in ["30d", "7d", "1d", "expired"] {
        let key = format!(
            "moat_tls_client_certificates_expiring{{listener=\"mqtts\",within=\"{within}\"}}"
        );
        assert_eq!(value(&m, &key), 0.0, "{key}");
    }

    let mut sys = Sys::subscribe(addrs["open"], "$SYS/broker/tls/expiry/#").await;
    let soonest = moat_pki::inspect::rfc3339(server_not_after);
    sys.until("the served counts on $SYS", |s| {
        s.has("certificates/within/1d", "1")
            && s.has("certificates/within/7d", "1")
            && s.has("certificates/within/30d", "2")
            && s.has("certificates/expiring", "2")
            && s.has("certificates/expired", "0")
            && s.has("clients/expiring", "0")
            && s.has("soonest", &soonest)
            && s.has("warnings", "2")
    })
    .await;

    // A client whose certificate expires in 3 days: counted within 7 days, warned once, on
    // $SYS as an event.
    let client_cert = pki.client_with_validity("device-7", valid_for(3 * DAY));
    let _client = mtls_client(addrs["mqtts"], &pki, "device-7", &client_cert).await;
    let bucket = |w: &str| {
        format!("moat_tls_client_certificates_expiring{{listener=\"mqtts\",within=\"{w}\"}}")
    };
    let m = wait_metrics(&h, "the client counted", |m| {
        value(m, &bucket("7d")) == 1.0 && warnings(m, "client") == 1.0
    })
    .await;
    assert_eq!(value(&m, &bucket("30d")), 1.0);
    assert_eq!(value(&m, &bucket("1d")), 0.0);
    assert_eq!(value(&m, &bucket("expired")), 0.0);
    let soonest_client = value(
        &m,
        "moat_tls_client_certificate_soonest_expiry_seconds{listener=\"mqtts\"}",
    );
    assert!(
        soonest_client > (2 * DAY) as f64 && soonest_client <= (3 * DAY) as f64,
        "{soonest_client}"
    );
    sys.until("the client warning on $SYS", |s| {
        s.warned("client").len() == 1
            && s.has("clients/within/7d", "1")
            && s.has("clients/expiring", "1")
            && s.has("clients/expired", "0")
    })
    .await;
    let w = sys.warned("client")[0];
    assert_eq!(w["level"], "7d");
    assert_eq!(w["client_id"], "device-7");
    assert_eq!(w["listener"], "mqtts");
    assert_eq!(w["subject"], "CN=device-7");
    assert!(w["serial"].as_str().is_some_and(|s| !s.is_empty()), "{w}");
    let text = w["message"].as_str().unwrap();
    assert!(
        text.contains("client certificate CN=device-7") && text.contains("moat cert client"),
        "{text}"
    );

    // Once per threshold: more checks, no more warnings.
    let m = more_checks(&h, &m, 3.0).await;
    assert_eq!(warnings(&m, "server"), 1.0);
    assert_eq!(warnings(&m, "client_ca"), 1.0);
    assert_eq!(warnings(&m, "client"), 1.0);
    assert!(sys.warned("server").is_empty(), "{:?}", sys.warnings);

    // Renewed for a year: nothing within a day any more, nothing new to say.
    let ca = pki.ca_pem.clone();
    let (c, k) = pki.server_with_validity("renewed", &["localhost"], valid_for(365 * DAY));
    h.install_tls("mqtts", pem(&c, &k, &ca))
        .await
        .expect("install");
    sys.until("the renewal seen on $SYS", |s| {
        s.has("certificates/within/1d", "0") && s.has("certificates/expiring", "1")
    })
    .await;
    let m = more_checks(&h, &m, 1.0).await;
    assert_eq!(warnings(&m, "server"), 1.0);

    // A short one again: a new item, warned about again.
    let (c, k) = pki.server_with_validity("short", &["localhost"], valid_for(10 * 3_600));
    h.install_tls("mqtts", pem(&c, &k, &ca))
        .await
        .expect("install");
    wait_metrics(&h, "the new certificate warned", |m| {
        warnings(m, "server") == 2.0
    })
    .await;
    sys.until("the server warning on $SYS", |s| {
        s.warned("server").len() == 1
    })
    .await;
    let w = sys.warned("server")[0];
    assert_eq!(w["level"], "1d");
    assert_eq!(w["certificate_set"], "mqtts");
    assert!(
        w["message"]
            .as_str()
            .is_some_and(|t| t.contains("server certificate") && t.contains("moat cert server")),
        "{w}"
    );
    broker.stop().await;
}

#[tokio::test]
async fn a_client_certificate_is_warned_at_each_threshold_and_at_expiry() {
    let pki = TestPki::new("Alarm CA");
    let server = pki.server("server", &["localhost", "127.0.0.1"]);
    // 1 day and 17 seconds (0.0002 days).
    let warn = vec![Duration::from_secs(DAY), Duration::from_secs(17)];
    let (broker, addrs) = start(&pki, server, warn).await;
    let h = broker.handle().clone();
    let mut sys = Sys::subscribe(addrs["open"], "$SYS/broker/tls/expiry/warning").await;
    // Subscribed before the client comes.
    match sys.c.recv().await {
        Some(Packet::SubAck(_)) => {}
        other => panic!("expected SUBACK, got {other:?}"),
    }

    let cert = pki.client_with_validity("brief", valid_for(25));
    let _client = mtls_client(addrs["mqtts"], &pki, "brief", &cert).await;
    // First seen within a day, then within 17 s, then expired (the listener only warns
    // at expiry, so the client stays connected and listed).
    // (Each wait bounded on its own: the whole takes the certificate's 25 s.)
    sys.until("two warnings", |s| s.warned("client").len() >= 2)
        .await;
    sys.until("three warnings", |s| s.warned("client").len() >= 3)
        .await;
    let levels: Vec<&str> = sys
        .warned("client")
        .iter()
        .map(|w| w["level"].as_str().unwrap())
        .collect();
    assert_eq!(levels, ["1d", "17s", "expired"]);
    let expired = sys.warned("client")[2];
    assert!(expired["seconds_left"].as_i64().unwrap() <= 0, "{expired}");
    assert!(
        expired["message"].as_str().unwrap().contains("expired"),
        "{expired}"
    );

    let m = wait_metrics(&h, "the expired client counted", |m| {
        value(
            m,
            "moat_tls_client_certificates_expiring{listener=\"mqtts\",within=\"expired\"}",
        ) == 1.0
    })
    .await;
    let m = more_checks(&h, &m, 2.0).await;
    assert_eq!(warnings(&m, "client"), 3.0);
    assert_eq!(warnings(&m, "server"), 0.0);
    broker.stop().await;
}
