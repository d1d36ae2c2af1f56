//! TLS listeners over real sockets with certificates made at test time by moat-pki: one-way
//! and mutual TLS, refusals with their counted reasons, live replacement, removal and CRLs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use moat_codec::{Packet, ProtocolVersion, ReasonCode};
use moat_server::{ClientAuth, ListenerConfig, Proof, Server, ServerConfig, TlsSettings};
use moat_testkit::pki::{tls_connect, TestPki};
use moat_testkit::{connect_packet, RawClient, TestBroker, TIMEOUT};
use moat_tls::{HandshakeFailure, LiveTls, ReloadOutcome};

const V5: ProtocolVersion = ProtocolVersion::V5;
const V3: ProtocolVersion = ProtocolVersion::V3_1_1;

struct TlsBroker {
    addr: SocketAddr,
    live: Arc<LiveTls>,
    handle: moat_server::BrokerHandle,
    /// Runs the server (stops it when dropped).
    _running: TestBroker,
}

async fn start(tls: TlsSettings, allow_anonymous: bool) -> TlsBroker {
    let mut config = ServerConfig::default();
    config.broker.sys_interval = None;
    // Reloads are triggered by the tests themselves.
    config.tls_poll_interval = Duration::from_secs(3600);
    config.listeners = vec![ListenerConfig {
        allow_anonymous,
        proof: Proof::Either,
        ..ListenerConfig::tls("mqtts", SocketAddr::from(([127, 0, 0, 1], 0)), tls)
    }];
    let server = Server::bind(config).await.expect("bind");
    let live = server.tls("mqtts").expect("tls state");
    let running = TestBroker::start_server(server);
    TlsBroker {
        addr: running.addr(),
        live,
        handle: running.handle().clone(),
        _running: running,
    }
}

fn settings(pki: &TestPki, auth: ClientAuth) -> TlsSettings {
    let (cert, key) = pki.server("server", &["localhost", "127.0.0.1"]);
    let mut s = TlsSettings::new(cert, key);
    s.client_auth = auth;
    if auth != ClientAuth::None {
        s.client_ca = Some(pki.ca_pem.clone());
    }
    s
}

/// Connects over TLS and sends CONNECT; returns the client and the CONNACK reason, or `None`
/// if the TLS layer refused us (on connect or on the first read).
async fn mqtt_over_tls(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    id: &str,
) -> Option<(RawClient, ReasonCode)> {
    let tls = tls_connect(addr, "localhost", config).await.ok()?;
    let mut c = RawClient::over(tls, V5);
    let ack = c.handshake(connect_packet(id, V5, true)).await?;
    Some((c, ack.reason_code))
}

async fn wait_failure(live: &LiveTls, reason: HandshakeFailure) {
    tokio::time::timeout(TIMEOUT, async {
        while live.failures.get(reason) == 0 {
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "no {reason} failure counted: {:?}",
            live.failures.snapshot()
        )
    });
}

#[tokio::test]
async fn one_way_tls_and_wrong_ca() {
    let pki = TestPki::new("Test CA");
    let broker = start(settings(&pki, ClientAuth::None), true).await;
    let (mut c, code) = mqtt_over_tls(broker.addr, pki.client_config(None), "tls1")
        .await
        .expect("TLS");
    assert_eq!(code, ReasonCode::SUCCESS);
    c.send(&Packet::PingReq).await;
    assert_eq!(c.recv().await, Some(Packet::PingResp));

    // A client that trusts another CA refuses our certificate; the broker counts why.
    let other = TestPki::new("Other CA");
    let err = tls_connect(broker.addr, "localhost", other.client_config(None)).await;
    assert!(err.is_err(), "handshake with the wrong CA must fail");
    wait_failure(
        &broker.live,
        HandshakeFailure::ClientRejectedServerCertificate,
    )
    .await;

    // A name not in the certificate is refused by the client.
    let err = tls_connect(broker.addr, "broker.example", pki.client_config(None)).await;
    assert!(err.is_err(), "name mismatch must fail");
}

#[tokio::test]
async fn mutual_tls_required_and_optional() {
    let pki = TestPki::new("Test CA");
    let (dev_cert, dev_key) = pki.client("device-1");
    let broker = start(settings(&pki, ClientAuth::Required), false).await;

    let with_cert = pki.client_config(Some((&dev_cert, &dev_key)));
    let (_c, code) = mqtt_over_tls(broker.addr, with_cert, "device-1")
        .await
        .expect("mTLS");
    assert_eq!(
        code,
        ReasonCode::SUCCESS,
        "a verified certificate authenticates the client"
    );

    // No certificate: refused.
    assert!(mqtt_over_tls(broker.addr, pki.client_config(None), "anon")
        .await
        .is_none());
    wait_failure(&broker.live, HandshakeFailure::NoClientCertificate).await;

    // A certificate from another CA: refused.
    let other = TestPki::new("Other CA");
    let (oc, ok) = other.client("intruder");
    let config = moat_testkit::pki::client_config(&pki.ca_pem, Some((&oc, &ok)));
    assert!(mqtt_over_tls(broker.addr, config, "intruder")
        .await
        .is_none());
    wait_failure(&broker.live, HandshakeFailure::UnknownCa).await;

    // Optional: no certificate is allowed at the TLS layer, but anonymous MQTT is refused.
    let optional = start(settings(&pki, ClientAuth::Optional), false).await;
    let (_c, code) = mqtt_over_tls(optional.addr, pki.client_config(None), "anon")
        .await
        .expect("TLS ok");
    assert_eq!(code, ReasonCode::NOT_AUTHORIZED);
    let with_cert = pki.client_config(Some((&dev_cert, &dev_key)));
    let (_c, code) = mqtt_over_tls(optional.addr, with_cert, "device-1")
        .await
        .expect("TLS ok");
    assert_eq!(code, ReasonCode::SUCCESS);
}

#[tokio::test]
async fn replaced_certificate_keeps_clients_and_serves_new_ones() {
    let pki = TestPki::new("First CA");
    let s = settings(&pki, ClientAuth::None);
    let broker = start(s.clone(), true).await;
    let (mut old, _) = mqtt_over_tls(broker.addr, pki.client_config(None), "old")
        .await
        .unwrap();

    // New CA, new certificate written over the same files.
    let pki2 = TestPki::new("Second CA");
    let (c2, k2) = pki2.server("server", &["localhost"]);
    std::fs::copy(&c2, &s.cert).unwrap();
    std::fs::copy(&k2, &s.key).unwrap();
    match broker.live.reload(SystemTime::now()) {
        ReloadOutcome::Replaced { .. } => {}
        other => panic!("expected Replaced, got {other:?}"),
    }
    // The connected client stays connected.
    old.send(&Packet::PingReq).await;
    assert_eq!(old.recv().await, Some(Packet::PingResp));
    // New clients get the new certificate.
    assert!(
        tls_connect(broker.addr, "localhost", pki.client_config(None))
            .await
            .is_err()
    );
    let (_n, code) = mqtt_over_tls(broker.addr, pki2.client_config(None), "new")
        .await
        .unwrap();
    assert_eq!(code, ReasonCode::SUCCESS);

    // A broken new file is refused and the current material stays.
    std::fs::write(&s.cert, "not a certificate").unwrap();
    assert!(matches!(
        broker.live.reload(SystemTime::now()),
        ReloadOutcome::Failed(_)
    ));
    let (_n, code) = mqtt_over_tls(broker.addr, pki2.client_config(None), "new2")
        .await
        .unwrap();
    assert_eq!(code, ReasonCode::SUCCESS);
}

#[tokio::test]
async fn removed_certificate_disconnects_tls_clients() {
    let pki = TestPki::new("Test CA");
    let s = settings(&pki, ClientAuth::None);
    let broker = start(s.clone(), true).await;
    let (mut v5, _) = mqtt_over_tls(broker.addr, pki.client_config(None), "v5")
        .await
        .unwrap();
    let tls = tls_connect(broker.addr, "localhost", pki.client_config(None))
        .await
        .unwrap();
    let mut v3 = RawClient::over(tls, V3);
    assert!(v3.handshake(connect_packet("v3", V3, true)).await.is_some());

    std::fs::remove_file(&s.cert).unwrap();
    match broker.live.reload(SystemTime::now()) {
        ReloadOutcome::Removed { closed } => assert_eq!(closed, 2),
        other => panic!("expected Removed, got {other:?}"),
    }
    match v5.recv().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason_code, ReasonCode::ADMINISTRATIVE_ACTION),
        other => panic!("expected DISCONNECT 0x98, got {other:?}"),
    }
    assert_eq!(v5.recv().await, None);
    assert_eq!(v3.recv().await, None);
    // New handshakes are refused until a certificate is back.
    assert!(mqtt_over_tls(broker.addr, pki.client_config(None), "late")
        .await
        .is_none());
    wait_failure(&broker.live, HandshakeFailure::NoServerCertificate).await;

    let (c, k) = pki.server("server2", &["localhost"]);
    std::fs::copy(&c, &s.cert).unwrap();
    std::fs::copy(&k, &s.key).unwrap();
    assert!(matches!(
        broker.live.reload(SystemTime::now()),
        ReloadOutcome::Replaced { .. }
    ));
    let (_c, code) = mqtt_over_tls(broker.addr, pki.client_config(None), "back")
        .await
        .unwrap();
    assert_eq!(code, ReasonCode::SUCCESS);
}

#[tokio::test]
async fn crl_refuses_and_disconnects_revoked_clients() {
    let pki = TestPki::new("Test CA");
    let (good_c, good_k) = pki.client("good");
    let (bad_c, bad_k) = pki.client("bad");
    let mut s = settings(&pki, ClientAuth::Required);
    // Start with a CRL revoking nothing relevant (revokes the "good" cert of another CA).
    let other = TestPki::new("Other");
    let (oc, _) = other.client("x");
    let empty = other.crl_revoking(&oc, "other.crl");
    let crl_path = pki.path().join("current.crl");
    std::fs::copy(&empty, &crl_path).unwrap();
    s.crl = vec![crl_path.clone()];
    // The other CA's CRL is not for our CA: use our own CRL revoking "bad" from the start for
    // the handshake check, and then a second run for the live check.
    let revoking = pki.crl_revoking(&bad_c, "revoking.crl");
    std::fs::copy(&revoking, &crl_path).unwrap();
    let broker = start(s.clone(), false).await;
    let bad = pki.client_config(Some((&bad_c, &bad_k)));
    assert!(mqtt_over_tls(broker.addr, bad, "bad").await.is_none());
    wait_failure(&broker.live, HandshakeFailure::Revoked).await;
    drop(broker);

    // Live: "good" connects, then a new CRL revokes it: it is disconnected.
    let none_revoked = pki.crl_revoking(&pki.server("unrelated", &["x"]).0, "none.crl");
    std::fs::copy(&none_revoked, &crl_path).unwrap();
    let broker = start(s, false).await;
    let good = pki.client_config(Some((&good_c, &good_k)));
    let (mut c, code) = mqtt_over_tls(broker.addr, good, "good").await.unwrap();
    assert_eq!(code, ReasonCode::SUCCESS);
    let now_revoked = pki.crl_revoking(&good_c, "good.crl");
    std::fs::copy(&now_revoked, &crl_path).unwrap();
    match broker.live.reload(SystemTime::now()) {
        ReloadOutcome::Replaced { revoked, .. } => assert_eq!(revoked, 1),
        other => panic!("expected Replaced, got {other:?}"),
    }
    // A revoked certificate: 0x87 Not authorized (a removed one gets 0x98).
    match c.recv().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason_code, ReasonCode::NOT_AUTHORIZED),
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
    // The chain was accepted (and remembered) before the CRL changed: a new handshake with it is
    // refused all the same.
    let again = pki.client_config(Some((&good_c, &good_k)));
    assert!(mqtt_over_tls(broker.addr, again, "good").await.is_none());
    wait_failure(&broker.live, HandshakeFailure::Revoked).await;
}

#[tokio::test]
async fn bad_material_refuses_to_start_with_the_finding() {
    let pki = TestPki::new("Test CA");
    let (cert, _) = pki.server("server", &["localhost"]);
    let (_, other_key) = pki.server("other", &["localhost"]);
    let config = ServerConfig {
        listeners: vec![ListenerConfig {
            allow_anonymous: true,
            proof: Proof::Either,
            ..ListenerConfig::tls(
                "mqtts",
                SocketAddr::from(([127, 0, 0, 1], 0)),
                TlsSettings::new(cert, other_key),
            )
        }],
        ..ServerConfig::default()
    };
    let err = Server::bind(config)
        .await
        .expect_err("mismatched key must refuse to start");
    // Display is one level (the listener); the finding is its source.
    let mut text = err.to_string();
    let mut cause = std::error::Error::source(&err);
    while let Some(c) = cause {
        text = format!("{text}: {c}");
        cause = c.source();
    }
    assert!(text.contains("mqtts") && text.contains("key"), "{text}");
}

#[tokio::test]
async fn v1_client_certificates_refused_unless_accepted() {
    let pki = TestPki::new("Test CA");
    let (v1_cert, v1_key) = pki.openssl_v1_client("legacy-device");
    let pem = std::fs::read(&v1_cert).unwrap();
    let der = moat_pki::decode::decode(&pem)
        .unwrap()
        .certificates()
        .remove(0);
    let info = moat_pki::inspect::CertInfo::from_der(&der).unwrap();
    assert_eq!(
        info.version, 1,
        "openssl x509 -req without extensions makes v1"
    );

    let broker = start(settings(&pki, ClientAuth::Required), false).await;
    let config = pki.client_config(Some((&v1_cert, &v1_key)));
    assert!(mqtt_over_tls(broker.addr, config.clone(), "legacy")
        .await
        .is_none());
    wait_failure(&broker.live, HandshakeFailure::V1Certificate).await;

    let mut s = settings(&pki, ClientAuth::Required);
    s.accept_v1_client_certs = true;
    let accepting = start(s, false).await;
    let (_c, code) = mqtt_over_tls(accepting.addr, config, "legacy")
        .await
        .expect("v1 accepted");
    assert_eq!(code, ReasonCode::SUCCESS);
    // Still only from the configured CA.
    let other = TestPki::new("Other");
    let (oc, ok) = other.openssl_v1_client("stranger");
    let config = moat_testkit::pki::client_config(&pki.ca_pem, Some((&oc, &ok)));
    assert!(mqtt_over_tls(accepting.addr, config, "stranger")
        .await
        .is_none());
    wait_failure(&accepting.live, HandshakeFailure::UnknownCa).await;
}

/// TLS material given as bytes through the `BrokerHandle`: checked with the same lint (a bad
/// set is refused with its findings and the old material stays), written to the listener's
/// files (the key 0600), served to new handshakes while connected clients stay; removal drops
/// the TLS clients and refuses handshakes until material is back.
#[tokio::test]
async fn material_installed_from_bytes_through_the_handle() {
    let pki = TestPki::new("First CA");
    let s = settings(&pki, ClientAuth::None);
    let broker = start(s.clone(), true).await;
    let h = &broker.handle;
    assert_eq!(h.tls_listeners(), ["mqtts"]);
    let (mut old, _) = mqtt_over_tls(broker.addr, pki.client_config(None), "old")
        .await
        .unwrap();

    let pki2 = TestPki::new("Second CA");
    let (c2, k2) = pki2.server("server", &["localhost"]);
    let pem = |cert: &std::path::Path, key: &std::path::Path| moat_tls::Pem {
        cert: std::fs::read(cert).unwrap(),
        key: std::fs::read(key).unwrap().into(),
        ..moat_tls::Pem::default()
    };
    // A key that does not match the certificate: refused with the finding, nothing changes.
    let (_, k_other) = pki2.server("other", &["localhost"]);
    let err = h
        .install_tls("mqtts", pem(&c2, &k_other))
        .await
        .unwrap_err();
    let mut text = err.to_string();
    let mut cause = std::error::Error::source(&err);
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    assert!(text.contains("key"), "{text}");
    let (_c, code) = mqtt_over_tls(broker.addr, pki.client_config(None), "still-old")
        .await
        .unwrap();
    assert_eq!(code, ReasonCode::SUCCESS);
    assert!(matches!(
        h.install_tls("nope", pem(&c2, &k2)).await,
        Err(moat_server::TlsChangeError::NoListener(_))
    ));

    // A good set: installed, written to the listener's files, served to new handshakes.
    h.install_tls("mqtts", pem(&c2, &k2)).await.unwrap();
    assert_eq!(std::fs::read(&s.cert).unwrap(), std::fs::read(&c2).unwrap());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&s.key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    old.send(&Packet::PingReq).await;
    assert_eq!(old.recv().await, Some(Packet::PingResp));
    let (_n, code) = mqtt_over_tls(broker.addr, pki2.client_config(None), "new")
        .await
        .unwrap();
    assert_eq!(code, ReasonCode::SUCCESS);
    // The file watcher finds the same material: nothing to do.
    assert!(matches!(
        broker.live.reload(SystemTime::now()),
        ReloadOutcome::Unchanged
    ));

    // Removal: connected TLS clients go (v5: DISCONNECT 0x98), handshakes are refused.
    assert!(h.remove_tls("mqtts").unwrap() >= 1);
    match old.recv().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason_code, ReasonCode::ADMINISTRATIVE_ACTION),
        None => {}
        other => panic!("{other:?}"),
    }
    assert!(
        mqtt_over_tls(broker.addr, pki2.client_config(None), "after")
            .await
            .is_none()
    );
    // Installing again brings the listener back.
    h.install_tls("mqtts", pem(&c2, &k2)).await.unwrap();
    let (_n, code) = mqtt_over_tls(broker.addr, pki2.client_config(None), "back")
        .await
        .unwrap();
    assert_eq!(code, ReasonCode::SUCCESS);
}
