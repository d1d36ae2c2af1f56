//! The JetStream sink over TLS (rustls, ring) to a private nats-server that requires it.

mod common;

use common::{pki, record, rules};
use moat_forward::testing::NatsServer;

fn config(url: &str, ca_file: &str) -> String {
    format!(
        r#"
        [[forward.sinks]]
        name = "queue"
        kind = "jetstream"
        url = "{url}"
        tls = {{ ca = "{ca_file}" }}
        connect_timeout = "3s"
        write_timeout = "5s"

        [[forward.rules]]
        name = "secure"
        filters = ["devices/+"]
        sink = "queue"
        stream = "SECURE"
        "#
    )
}

#[tokio::test]
async fn tls_to_nats_verifies_the_server_against_the_ca() {
    let (ca, cert, key) = pki();
    let (other_ca, ..) = pki();
    let nats = NatsServer::start_with_tls(&cert, &key)
        .await
        .expect("private nats-server with TLS");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("ca.pem"), ca).expect("ca");
    std::fs::write(dir.path().join("other-ca.pem"), other_ca).expect("other ca");

    let mut sink = rules(&config(&nats.url(), "ca.pem"), dir.path())[0].open();
    sink.write(&[record(1, "devices/a", b"1", true)])
        .await
        .expect("write over TLS");
    sink.write(&[record(1, "devices/a", b"1", true)])
        .await
        .expect("again");

    let mut wrong = rules(&config(&nats.url(), "other-ca.pem"), dir.path())[0].open();
    let e = wrong
        .write(&[record(2, "devices/a", b"2", true)])
        .await
        .expect_err("untrusted server");
    assert!(e.is_unavailable(), "{e:?}");
}
