//! Revocation over real sockets: `moat cert revoke` (the library call behind it) reaches
//! connected mqtts and wss clients on the next reload, handshakes of revoked certificates fail
//! with the serial and the CRL in the record, CRLs made by `openssl ca -gencrl` and CRLs of
//! intermediates apply, and a stale CRL warns (still applied) or, with `fail_closed`, refuses
//! every handshake with the reason `crl_stale`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use moat_codec::{ProtocolVersion, ReasonCode};
use moat_pki::crl::{self, RevocationReason, RevokedEntry};
use moat_server::{
    BrokerHandle, ClientAuth, ListenerConfig, ListenerKind, Proof, Server, ServerConfig,
    TlsSettings,
};
use moat_testkit::pki::{tls_connect, TestPki};
use moat_testkit::{connect_packet, RawClient, TIMEOUT};
use moat_tls::{CrlStalePolicy, HandshakeFailure, LiveTls};
use tokio::sync::oneshot;

const V5: ProtocolVersion = ProtocolVersion::V5;
const DAY: Duration = Duration::from_secs(86_400);

struct Broker {
    mqtts: SocketAddr,
    wss: SocketAddr,
    tls: Arc<LiveTls>,
    wss_tls: Arc<LiveTls>,
    handle: BrokerHandle,
    _stop: oneshot::Sender<()>,
}

/// A broker with an mqtts and a wss listener, both with `tls` (mutual TLS).
async fn start(tls: &TlsSettings) -> Broker {
    let mut config = ServerConfig::default();
    config.broker.sys_interval = None;
    // Reloads are triggered by the tests (what the file watcher and SIGHUP do).
    config.tls_poll_interval = Duration::from_secs(3600);
    let listener = |name: &str, kind, tls: TlsSettings| ListenerConfig {
        kind,
        proof: Proof::Either,
        ..ListenerConfig::tls(name, SocketAddr::from(([127, 0, 0, 1], 0)), tls)
    };
    let mut wss_tls = tls.clone();
    wss_tls.alpn = vec![b"http/1.1".to_vec()];
    config.listeners = vec![
        listener("mqtts", ListenerKind::Tls, tls.clone()),
        listener("wss", ListenerKind::Wss, wss_tls),
    ];
    let server = Server::bind(config).await.expect("bind");
    let addrs = server.local_addrs();
    let broker = |stop| Broker {
        mqtts: addrs[0].1,
        wss: addrs[1].1,
        tls: server.tls("mqtts").expect("tls state"),
        wss_tls: server.tls("wss").expect("tls state"),
        handle: server.handle(),
        _stop: stop,
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let b = broker(stop);
    tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    b
}

fn settings(pki: &TestPki, crls: Vec<PathBuf>) -> TlsSettings {
    let (cert, key) = pki.server("server", &["localhost", "127.0.0.1"]);
    let mut s = TlsSettings::new(cert, key);
    s.client_auth = ClientAuth::Required;
    s.client_ca = Some(pki.ca_pem.clone());
    s.crl = crls;
    s
}

/// An MQTT v5 client over TLS (or WebSocket over TLS) with a client certificate; `None` when
/// the TLS layer refused it (on connect or on the first read).
async fn connect(
    pki: &TestPki,
    addr: SocketAddr,
    wss: bool,
    client: (&Path, &Path),
    id: &str,
) -> Option<RawClient> {
    let tls = tls_connect(addr, "localhost", pki.client_config(Some(client)))
        .await
        .ok()?;
    let mut c = if wss {
        RawClient::over(
            moat_client::ws::connect(tls, "localhost", "/mqtt")
                .await
                .ok()?,
            V5,
        )
    } else {
        RawClient::over(tls, V5)
    };
    let ack = c.handshake(connect_packet(id, V5, true)).await?;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS, "{id}");
    Some(c)
}

/// Waits (bounded) until `live` has counted a failure for `reason`; returns the last record's
/// detail for it.
async fn failure_detail(live: &LiveTls, reason: HandshakeFailure) -> String {
    tokio::time::timeout(TIMEOUT, async {
        loop {
            if let Some(r) = live
                .failures
                .recent()
                .into_iter()
                .rev()
                .find(|r| r.reason == reason)
            {
                return r.detail;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {reason} failure: {:?}", live.failures.snapshot()))
}

fn serial_of(cert: &Path) -> Vec<u8> {
    let der = moat_pki::decode::decode(&std::fs::read(cert).unwrap())
        .unwrap()
        .certificates()
        .remove(0);
    moat_tls::PeerIdentity::from_der(&der).unwrap().serial
}

#[tokio::test]
async fn revoke_disconnects_exactly_the_revoked_clients_on_tls_and_wss() {
    let pki = TestPki::new("Fleet CA");
    let now = SystemTime::now();
    // The CA directory's CRL, revoking nothing yet (what `moat cert crl` writes).
    let first = crl::refresh(pki.path(), &pki.ca, now, 7).unwrap();
    let broker = start(&settings(&pki, vec![first.path.clone()])).await;

    let certs: Vec<_> = ["tls-bad", "tls-good", "wss-bad", "wss-good"]
        .into_iter()
        .map(|cn| pki.client(cn))
        .collect();
    let pair = |i: usize| (certs[i].0.as_path(), certs[i].1.as_path());
    let mut tls_bad = connect(&pki, broker.mqtts, false, pair(0), "tls-bad")
        .await
        .unwrap();
    let mut tls_good = connect(&pki, broker.mqtts, false, pair(1), "tls-good")
        .await
        .unwrap();
    let mut wss_bad = connect(&pki, broker.wss, true, pair(2), "wss-bad")
        .await
        .unwrap();
    let mut wss_good = connect(&pki, broker.wss, true, pair(3), "wss-good")
        .await
        .unwrap();

    // `moat cert revoke --ca DIR tls-bad.pem`, then the same for wss-bad.
    for i in [0, 2] {
        let der = moat_pki::decode::decode(&std::fs::read(&certs[i].0).unwrap())
            .unwrap()
            .certificates()
            .remove(0);
        let serial = crl::serial_issued_by(&pki.ca, &der, "cert").unwrap();
        crl::revoke(
            pki.path(),
            &pki.ca,
            &serial,
            RevocationReason::KeyCompromise,
            now,
            7,
        )
        .unwrap();
    }
    // What the file watcher or SIGHUP does.
    broker.handle.reload_tls("mqtts").await.unwrap();
    broker.handle.reload_tls("wss").await.unwrap();

    tls_bad
        .assert_disconnected_with(ReasonCode::NOT_AUTHORIZED)
        .await;
    wss_bad
        .assert_disconnected_with(ReasonCode::NOT_AUTHORIZED)
        .await;
    tls_good.assert_alive().await;
    wss_good.assert_alive().await;

    // Coming back fails, and the failure names the serial and the CRL.
    assert!(connect(&pki, broker.mqtts, false, pair(0), "tls-bad")
        .await
        .is_none());
    let detail = failure_detail(&broker.tls, HandshakeFailure::Revoked).await;
    let serial = crl::serial_hex(&serial_of(&certs[0].0));
    assert!(detail.contains(&serial), "{serial} not in {detail}");
    assert!(detail.contains("ca.crl"), "{detail}");
    assert!(detail.contains("CN=Fleet CA"), "{detail}");
    assert!(connect(&pki, broker.wss, true, pair(2), "wss-bad")
        .await
        .is_none());
    let detail = failure_detail(&broker.wss_tls, HandshakeFailure::Revoked).await;
    assert!(
        detail.contains(&crl::serial_hex(&serial_of(&certs[2].0))),
        "{detail}"
    );
    let failures = broker.handle.handshake_failures();
    assert!(failures.by_reason.contains_key("revoked"), "{failures:?}");
    // The good ones still connect.
    assert!(connect(&pki, broker.mqtts, false, pair(1), "tls-good-2")
        .await
        .is_some());
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("openssl is needed for this test ({e})"));
    assert!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn a_crl_made_by_openssl_ca_gencrl_revokes() {
    let pki = TestPki::new("OpenSSL CA");
    let (bad_c, bad_k) = pki.client("bad");
    let (good_c, good_k) = pki.client("good");
    let d = pki.path();
    std::fs::write(
        d.join("openssl-ca.cnf"),
        "[ ca ]\ndefault_ca = the_ca\n[ the_ca ]\ndir = .\ndatabase = index.txt\n\
         certificate = ca.pem\nprivate_key = ca.key\ncrlnumber = crlnumber\ndefault_md = sha256\n\
         default_crl_days = 1\n",
    )
    .unwrap();
    std::fs::write(d.join("index.txt"), "").unwrap();
    std::fs::write(d.join("crlnumber"), "01\n").unwrap();
    openssl(
        d,
        &["ca", "-config", "openssl-ca.cnf", "-revoke", "bad.pem"],
    );
    openssl(
        d,
        &[
            "ca",
            "-config",
            "openssl-ca.cnf",
            "-gencrl",
            "-out",
            "openssl.crl",
        ],
    );
    let broker = start(&settings(&pki, vec![d.join("openssl.crl")])).await;
    assert!(connect(&pki, broker.mqtts, false, (&bad_c, &bad_k), "bad")
        .await
        .is_none());
    let detail = failure_detail(&broker.tls, HandshakeFailure::Revoked).await;
    assert!(
        detail.contains(&crl::serial_hex(&serial_of(&bad_c))),
        "{detail}"
    );
    assert!(detail.contains("openssl.crl"), "{detail}");
    assert!(
        connect(&pki, broker.mqtts, false, (&good_c, &good_k), "good")
            .await
            .is_some()
    );
}

#[tokio::test]
async fn crls_of_the_root_and_of_an_intermediate_both_apply() {
    let root = TestPki::new("Root CA");
    let inter = root.intermediate("Devices CA");
    let now = SystemTime::now();
    // A client sends its certificate and the intermediate; the broker trusts the root.
    let with_chain = |cn: &str| {
        let (c, k) = inter.client(cn);
        let mut pem = std::fs::read(&c).unwrap();
        pem.extend(std::fs::read(&inter.ca_pem).unwrap());
        std::fs::write(&c, pem).unwrap();
        (c, k)
    };
    let (bad_c, bad_k) = with_chain("bad");
    let (good_c, good_k) = with_chain("good");
    let root_crl = crl::refresh(root.path(), &root.ca, now, 7).unwrap();
    let inter_crl = crl::revoke(
        inter.path(),
        &inter.ca,
        &serial_of(&bad_c),
        RevocationReason::Superseded,
        now,
        7,
    )
    .unwrap();
    let broker = start(&settings(&root, vec![root_crl.path, inter_crl.path])).await;
    assert!(connect(&root, broker.mqtts, false, (&bad_c, &bad_k), "bad")
        .await
        .is_none());
    let detail = failure_detail(&broker.tls, HandshakeFailure::Revoked).await;
    assert!(detail.contains("CN=Devices CA"), "{detail}");
    assert!(
        connect(&root, broker.mqtts, false, (&good_c, &good_k), "good")
            .await
            .is_some()
    );

    // Only the intermediate's CRL: the root's certificates have no CRL, and are not refused
    // for that.
    let only = start(&settings(&root, vec![inter.path().join("ca.crl")])).await;
    assert!(
        connect(&root, only.mqtts, false, (&good_c, &good_k), "good")
            .await
            .is_some()
    );
    assert!(connect(&root, only.mqtts, false, (&bad_c, &bad_k), "bad")
        .await
        .is_none());
}

/// A CRL whose next update was yesterday, revoking `revoked`.
fn stale_crl(pki: &TestPki, revoked: &Path, out: &str) -> PathBuf {
    let now = SystemTime::now();
    let pem = crl::sign_crl(
        &pki.ca,
        &[RevokedEntry {
            serial: serial_of(revoked),
            revoked_at: now - 3 * DAY,
            reason: RevocationReason::KeyCompromise,
        }],
        1,
        now - 2 * DAY,
        now - DAY,
    )
    .unwrap();
    let path = pki.path().join(out);
    std::fs::write(&path, pem).unwrap();
    path
}

#[tokio::test]
async fn a_stale_crl_warns_and_is_still_applied_by_default() {
    let pki = TestPki::new("Slow CA");
    let (bad_c, bad_k) = pki.client("bad");
    let (good_c, good_k) = pki.client("good");
    let path = stale_crl(&pki, &bad_c, "stale.crl");
    let s = settings(&pki, vec![path.clone()]);
    assert_eq!(s.crl_stale, CrlStalePolicy::Warn);
    let broker = start(&s).await;

    let status = broker.tls.check_crls(SystemTime::now());
    assert_eq!(status.len(), 1);
    assert!(status[0].stale && status[0].path == path, "{status:?}");
    assert!(broker.tls.crl_refusal(SystemTime::now()).is_none());
    assert!(connect(&pki, broker.mqtts, false, (&bad_c, &bad_k), "bad")
        .await
        .is_none());
    failure_detail(&broker.tls, HandshakeFailure::Revoked).await;
    assert!(
        connect(&pki, broker.mqtts, false, (&good_c, &good_k), "good")
            .await
            .is_some()
    );

    let text = broker.handle.metrics_text().await;
    let stale_line = "moat_tls_crl_stale{listener=\"mqtts\",issuer=\"CN=Slow CA\"} 1";
    assert!(text.contains(stale_line), "{text}");
    assert!(
        text.contains("moat_tls_crl_next_update_seconds{listener=\"mqtts\""),
        "{text}"
    );

    // A fresh CRL clears it.
    let fresh = crl::sign_crl(&pki.ca, &[], 2, SystemTime::now(), SystemTime::now() + DAY).unwrap();
    std::fs::write(&path, fresh).unwrap();
    broker.handle.reload_tls("mqtts").await.unwrap();
    assert!(!broker.tls.check_crls(SystemTime::now())[0].stale);
    let text = broker.handle.metrics_text().await;
    assert!(text.contains(&stale_line.replace("} 1", "} 0")), "{text}");
}

#[tokio::test]
async fn fail_closed_refuses_every_handshake_while_a_crl_is_stale() {
    let pki = TestPki::new("Strict CA");
    let (bad_c, _) = pki.client("bad");
    let (good_c, good_k) = pki.client("good");
    let path = stale_crl(&pki, &bad_c, "stale.crl");
    let mut s = settings(&pki, vec![path.clone()]);
    s.crl_stale = CrlStalePolicy::FailClosed;
    let broker = start(&s).await;

    assert!(
        connect(&pki, broker.mqtts, false, (&good_c, &good_k), "good")
            .await
            .is_none()
    );
    let detail = failure_detail(&broker.tls, HandshakeFailure::CrlStale).await;
    assert!(
        detail.contains("stale.crl") && detail.contains("fail_closed"),
        "{detail}"
    );
    assert!(connect(&pki, broker.wss, true, (&good_c, &good_k), "good")
        .await
        .is_none());
    failure_detail(&broker.wss_tls, HandshakeFailure::CrlStale).await;
    let failures = broker.handle.handshake_failures();
    assert!(failures.by_reason.contains_key("crl_stale"), "{failures:?}");

    // A fresh CRL is loaded: handshakes work again.
    let fresh = crl::sign_crl(&pki.ca, &[], 2, SystemTime::now(), SystemTime::now() + DAY).unwrap();
    std::fs::write(&path, fresh).unwrap();
    broker.handle.reload_tls("mqtts").await.unwrap();
    assert!(
        connect(&pki, broker.mqtts, false, (&good_c, &good_k), "good")
            .await
            .is_some()
    );
}
