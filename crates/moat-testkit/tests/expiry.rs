//! Client certificates over real TLS: one that expires while connected closes the connection
//! at that instant (v5 DISCONNECT 0x87) or is only warned about, by listener policy; on a
//! `client_id = "certificate"` listener the certificate identity is the client id.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use moat_codec::{Packet, ProtocolVersion, ReasonCode};
use moat_core::{CertExpiryAction, ClientIdSource};
use moat_pki::Validity;
use moat_server::{ClientAuth, ListenerConfig, Proof, TlsSettings};
use moat_testkit::pki::{tls_connect, TestPki};
use moat_testkit::{connect_packet, RawClient, TestBroker, TIMEOUT};

const V5: ProtocolVersion = ProtocolVersion::V5;
const V3: ProtocolVersion = ProtocolVersion::V3_1_1;

/// A broker with one mTLS listener under the given policies.
async fn start(
    pki: &TestPki,
    client_id: ClientIdSource,
    on_client_cert_expiry: CertExpiryAction,
) -> TestBroker {
    let (cert, key) = pki.server("server", &["localhost", "127.0.0.1"]);
    let mut tls = TlsSettings::new(cert, key);
    tls.client_auth = ClientAuth::Required;
    tls.client_ca = Some(pki.ca_pem.clone());
    let mut config = TestBroker::config();
    config.listeners = vec![ListenerConfig {
        proof: Proof::Certificate,
        client_id,
        on_client_cert_expiry,
        ..ListenerConfig::tls("mqtts", SocketAddr::from(([127, 0, 0, 1], 0)), tls)
    }];
    TestBroker::start_with(config).await
}

/// A client certificate valid until a few seconds from now.
fn short_lived(pki: &TestPki, cn: &str, secs: u64) -> (std::path::PathBuf, std::path::PathBuf) {
    let now = SystemTime::now();
    let validity = Validity {
        not_before: now - Duration::from_secs(300),
        not_after: now + Duration::from_secs(secs),
    };
    pki.client_with_validity(cn, validity)
}

async fn tls_client(
    broker: &TestBroker,
    pki: &TestPki,
    cert: &(std::path::PathBuf, std::path::PathBuf),
    version: ProtocolVersion,
) -> RawClient {
    let config = pki.client_config(Some((&cert.0, &cert.1)));
    let stream = tls_connect(broker.addr(), "localhost", config)
        .await
        .expect("TLS handshake");
    RawClient::over(stream, version)
}

#[tokio::test]
async fn a_certificate_that_expires_while_connected_disconnects_with_0x87() {
    let pki = TestPki::new("Expiry CA");
    let broker = start(&pki, ClientIdSource::Client, CertExpiryAction::Disconnect).await;
    let cert = short_lived(&pki, "brief", 3);
    let mut c = tls_client(&broker, &pki, &cert, V5).await;
    let mut connect = connect_packet("brief", V5, true);
    connect.keep_alive = 0;
    let ack = c.handshake(connect).await.expect("CONNACK");
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    // Waited on, not slept: the DISCONNECT comes when the certificate expires (about 3 s).
    match c.try_recv(TIMEOUT).await {
        Some(Some(Packet::Disconnect(d))) => {
            assert_eq!(d.reason_code, ReasonCode::NOT_AUTHORIZED);
            assert_eq!(
                d.properties.reason_string.as_deref(),
                Some("client certificate expired")
            );
        }
        other => panic!("expected DISCONNECT 0x87, got {other:?}"),
    }
    assert!(c.closed_within(TIMEOUT).await);
    let text = broker.handle().metrics_text().await;
    assert!(
        text.contains("client_certificates_expired_total{action=\"disconnect\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn a_warn_listener_keeps_the_client_after_its_certificate_expires() {
    let pki = TestPki::new("Expiry CA");
    let broker = start(&pki, ClientIdSource::Client, CertExpiryAction::Warn).await;
    let cert = short_lived(&pki, "kept", 2);
    let mut c = tls_client(&broker, &pki, &cert, V5).await;
    let mut connect = connect_packet("kept", V5, true);
    connect.keep_alive = 0;
    let ack = c.handshake(connect).await.expect("CONNACK");
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    // Wait until the broker has counted the expiry, then check the client is still served.
    let counted = "client_certificates_expired_total{action=\"warn\"} 1";
    tokio::time::timeout(TIMEOUT, async {
        while !broker.handle().metrics_text().await.contains(counted) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the expiry was counted");
    c.send(&Packet::PingReq).await;
    assert_eq!(c.recv().await, Some(Packet::PingResp));
}

#[tokio::test]
async fn one_device_cannot_take_over_anothers_session() {
    let pki = TestPki::new("Device CA");
    let broker = start(
        &pki,
        ClientIdSource::Certificate,
        CertExpiryAction::Disconnect,
    )
    .await;
    let dev_a = pki.client("dev-a");
    let dev_b = pki.client("dev-b");

    // dev-a with an empty client id gets its identity.
    let mut a = tls_client(&broker, &pki, &dev_a, V5).await;
    let ack = a
        .handshake(connect_packet("", V5, true))
        .await
        .expect("CONNACK");
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    assert_eq!(
        ack.properties.assigned_client_identifier.as_deref(),
        Some("dev-a")
    );

    // dev-b asking for "dev-a" is refused, in v5 and in v3.
    let mut b = tls_client(&broker, &pki, &dev_b, V5).await;
    let ack = b.handshake(connect_packet("dev-a", V5, true)).await;
    assert_eq!(
        ack.map(|a| a.reason_code),
        Some(ReasonCode::CLIENT_IDENTIFIER_NOT_VALID)
    );
    assert!(b.closed_within(TIMEOUT).await);
    let mut b3 = tls_client(&broker, &pki, &dev_b, V3).await;
    let ack = b3.handshake(connect_packet("dev-a", V3, true)).await;
    assert_eq!(
        ack.map(|a| a.reason_code),
        Some(ReasonCode::CLIENT_IDENTIFIER_NOT_VALID)
    );

    // dev-a's connection is untouched: no DISCONNECT came, and it still answers.
    a.send(&Packet::PingReq).await;
    assert_eq!(a.recv().await, Some(Packet::PingResp));

    // dev-b with its own id is accepted.
    let mut b = tls_client(&broker, &pki, &dev_b, V5).await;
    let ack = b
        .handshake(connect_packet("dev-b", V5, true))
        .await
        .expect("CONNACK");
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    assert_eq!(ack.properties.assigned_client_identifier, None);

    let text = broker.handle().metrics_text().await;
    assert!(
        text.contains("connects_refused_client_id_total{reason=\"not_certificate_identity\"} 2"),
        "{text}"
    );
}
