//! Client CA rotation over real sockets: a listener trusts an old and a new client CA at once
//! (both named "Fleet CA", as a re-keyed CA is), tells which connected client chains to which,
//! takes a CA added or removed while running, and disconnects the clients of a CA it no longer
//! trusts (v5 0x87) or whose clients an operator sends away (0x98).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use moat_codec::{ProtocolVersion, ReasonCode};
use moat_server::{
    BrokerHandle, ClientAuth, ListenerConfig, Proof, Server, ServerConfig, TlsSettings,
};
use moat_testkit::pki::{client_config, tls_connect, TestPki};
use moat_testkit::{connect_packet, RawClient, TestBroker};
use moat_tls::LiveTls;

const V5: ProtocolVersion = ProtocolVersion::V5;

struct Fleet {
    /// Issues the server certificate and, as "Fleet CA", the old devices' certificates.
    old: TestPki,
    /// The new "Fleet CA" (same name, another key).
    new: TestPki,
    /// Where the listener's client CA files live.
    dir: tempfile::TempDir,
}

impl Fleet {
    fn new() -> Self {
        Self {
            old: TestPki::new("Fleet CA"),
            new: TestPki::new("Fleet CA"),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn file(&self, name: &str, cas: &[&TestPki]) -> PathBuf {
        let path = self.dir.path().join(name);
        let mut pem = Vec::new();
        for ca in cas {
            pem.extend(std::fs::read(&ca.ca_pem).unwrap());
        }
        std::fs::write(&path, pem).unwrap();
        path
    }

    fn settings(&self, client_ca: PathBuf, extra: Vec<PathBuf>) -> TlsSettings {
        let (cert, key) = self.old.server("server", &["localhost", "127.0.0.1"]);
        let mut s = TlsSettings::new(cert, key);
        s.client_auth = ClientAuth::Required;
        s.client_ca = Some(client_ca);
        s.extra_client_ca = extra;
        s
    }
}

struct Broker {
    addr: SocketAddr,
    tls: Arc<LiveTls>,
    handle: BrokerHandle,
    /// Runs the server (stops it when dropped).
    _running: TestBroker,
}

async fn start(tls: TlsSettings) -> Broker {
    let mut config = ServerConfig::default();
    config.broker.sys_interval = None;
    // Reloads are the tests' (what the file watcher and SIGHUP do).
    config.tls_poll_interval = Duration::from_secs(3600);
    config.listeners = vec![ListenerConfig {
        proof: Proof::Certificate,
        ..ListenerConfig::tls("mqtts", SocketAddr::from(([127, 0, 0, 1], 0)), tls)
    }];
    let server = Server::bind(config).await.expect("bind");
    let tls = server.tls("mqtts").expect("tls state");
    let running = TestBroker::start_server(server);
    Broker {
        addr: running.addr(),
        tls,
        handle: running.handle().clone(),
        _running: running,
    }
}

/// A v5 client with a certificate of `ca`; `None` when the TLS layer refused it.
async fn connect(fleet: &Fleet, addr: SocketAddr, ca: &TestPki, id: &str) -> Option<RawClient> {
    let (cert, key) = ca.client(id);
    let config = client_config(&fleet.old.ca_pem, Some((&cert, &key)));
    let tls = tls_connect(addr, "localhost", config).await.ok()?;
    let mut c = RawClient::over(tls, V5);
    let ack = c.handshake(connect_packet(id, V5, true)).await?;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS, "{id}");
    Some(c)
}

/// The CA certificate's SHA-256 fingerprint, as the broker writes it.
fn fingerprint(ca: &TestPki) -> String {
    moat_tls::PeerIdentity::from_der(&ca.ca.cert_der)
        .unwrap()
        .fingerprint
}

/// (CA fingerprint, connected clients) of the listener, by the broker's handle.
fn uses(handle: &BrokerHandle) -> Vec<(String, usize)> {
    handle
        .client_cas()
        .into_iter()
        .flat_map(|l| l.cas)
        .map(|u| (u.ca.fingerprint, u.clients))
        .collect()
}

/// The client CA fingerprint the broker's client listing shows for `id`.
async fn ca_of(handle: &BrokerHandle, id: &str) -> Option<String> {
    let page = handle
        .clients(moat_core::ClientQuery {
            client_id_prefix: id.into(),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    page.items
        .into_iter()
        .find(|c| c.client_id == id)
        .and_then(|c| c.tls)
        .and_then(|t| t.ca_fingerprint.clone())
}

fn reload(tls: &LiveTls) -> (usize, usize) {
    match tls.reload(std::time::SystemTime::now()) {
        moat_tls::ReloadOutcome::Replaced {
            revoked, untrusted, ..
        } => (revoked, untrusted),
        other => panic!("expected the material replaced, got {other:?}"),
    }
}

#[tokio::test]
async fn a_bundle_rotates_a_client_ca_while_clients_stay_connected() {
    let fleet = Fleet::new();
    let (old_fp, new_fp) = (fingerprint(&fleet.old), fingerprint(&fleet.new));
    let bundle = fleet.file("clients-ca.pem", &[&fleet.old]);
    let b = start(fleet.settings(bundle.clone(), Vec::new())).await;

    let mut a = connect(&fleet, b.addr, &fleet.old, "dev-old")
        .await
        .unwrap();
    assert!(
        connect(&fleet, b.addr, &fleet.new, "dev-new-early")
            .await
            .is_none(),
        "the new CA is not trusted yet"
    );

    // Adding the new CA applies live; clients of both are served and told apart although
    // both CAs are named "Fleet CA".
    fleet.file("clients-ca.pem", &[&fleet.old, &fleet.new]);
    assert_eq!(reload(&b.tls), (0, 0));
    let mut n = connect(&fleet, b.addr, &fleet.new, "dev-new")
        .await
        .unwrap();
    a.assert_alive().await;
    assert_eq!(
        uses(&b.handle),
        [(old_fp.clone(), 1), (new_fp.clone(), 1)],
        "one client per CA"
    );
    assert_eq!(ca_of(&b.handle, "dev-old").await.as_deref(), Some(&*old_fp));
    assert_eq!(ca_of(&b.handle, "dev-new").await.as_deref(), Some(&*new_fp));
    let metrics = b.handle.metrics_text().await;
    assert!(
        metrics.contains(&format!(
            "moat_tls_client_ca_clients{{listener=\"mqtts\",subject=\"CN=Fleet CA\",fingerprint=\"{old_fp}\"}} 1"
        )),
        "{metrics}"
    );

    // Removing the old CA disconnects its client (0x87) and keeps the other.
    fleet.file("clients-ca.pem", &[&fleet.new]);
    assert_eq!(reload(&b.tls), (0, 1));
    a.assert_disconnected_with(ReasonCode::NOT_AUTHORIZED).await;
    n.assert_alive().await;
    assert_eq!(uses(&b.handle), [(new_fp.clone(), 1)]);
    assert!(
        connect(&fleet, b.addr, &fleet.old, "dev-old-again")
            .await
            .is_none(),
        "the old CA's clients are refused from now on"
    );
}

#[tokio::test]
async fn a_client_ca_file_of_the_list_removed_drops_its_clients_and_an_operator_can_send_them_away()
{
    let fleet = Fleet::new();
    let (old_fp, new_fp) = (fingerprint(&fleet.old), fingerprint(&fleet.new));
    let new_file = fleet.file("new-ca.pem", &[&fleet.new]);
    let old_file = fleet.file("old-ca.pem", &[&fleet.old]);
    let b = start(fleet.settings(new_file, vec![old_file.clone()])).await;

    let mut old1 = connect(&fleet, b.addr, &fleet.old, "old-1").await.unwrap();
    let mut old2 = connect(&fleet, b.addr, &fleet.old, "old-2").await.unwrap();
    let mut new1 = connect(&fleet, b.addr, &fleet.new, "new-1").await.unwrap();
    assert_eq!(uses(&b.handle), [(new_fp.clone(), 1), (old_fp.clone(), 2)]);

    // An operator sends one CA's clients away (0x98); the CA stays trusted.
    let lower = old_fp.replace(':', "").to_ascii_lowercase();
    assert_eq!(b.handle.disconnect_client_ca(&lower), 2);
    old1.assert_disconnected_with(ReasonCode::ADMINISTRATIVE_ACTION)
        .await;
    old2.assert_disconnected_with(ReasonCode::ADMINISTRATIVE_ACTION)
        .await;
    new1.assert_alive().await;
    let mut old3 = connect(&fleet, b.addr, &fleet.old, "old-3").await.unwrap();

    // Its file gone from the list: no longer trusted, its client dropped with 0x87.
    std::fs::remove_file(&old_file).unwrap();
    assert_eq!(reload(&b.tls), (0, 1));
    old3.assert_disconnected_with(ReasonCode::NOT_AUTHORIZED)
        .await;
    new1.assert_alive().await;
    assert_eq!(uses(&b.handle), [(new_fp.clone(), 1)]);
    assert!(connect(&fleet, b.addr, &fleet.old, "old-4").await.is_none());

    // Put back: trusted again, live.
    fleet.file("old-ca.pem", &[&fleet.old]);
    assert_eq!(reload(&b.tls), (0, 0));
    let _old5 = connect(&fleet, b.addr, &fleet.old, "old-5").await.unwrap();
    assert_eq!(uses(&b.handle), [(new_fp, 1), (old_fp, 1)]);
}
