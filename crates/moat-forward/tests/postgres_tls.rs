//! The PostgreSQL sink over TLS (rustls, ring) to a private PostgreSQL with `ssl = on`.

mod common;

use common::{pki, record, rules};
use moat_forward::testing::{PgServer, PG_PASSWORD};

fn config(url: &str, ca_file: &str) -> String {
    format!(
        r#"
        [[forward.sinks]]
        name = "db"
        kind = "postgres"
        url = "{url}"
        password_file = "pg.pass"
        tls = {{ ca = "{ca_file}" }}
        write_timeout = "10s"

        [[forward.rules]]
        name = "secure"
        filters = ["devices/+"]
        sink = "db"
        "#
    )
}

#[tokio::test]
async fn tls_to_postgres_verifies_the_server_against_the_ca() {
    let (ca, cert, key) = pki();
    let (other_ca, ..) = pki();
    let pg = PgServer::start_with_tls(&cert, &key)
        .await
        .expect("private PostgreSQL with TLS");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("pg.pass"), PG_PASSWORD).expect("password file");
    std::fs::write(dir.path().join("ca.pem"), ca).expect("ca");
    std::fs::write(dir.path().join("other-ca.pem"), other_ca).expect("other ca");

    let mut sink = rules(&config(&pg.url(), "ca.pem"), dir.path())[0].open();
    assert!(sink.describe().contains("tls"), "{}", sink.describe());
    sink.write(&[record(1, "devices/a", b"1", true)])
        .await
        .expect("write over TLS");

    // The sink's connection (still open) is the TLS one.
    let client = pg.client().await.expect("connect");
    let tls_connections: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
             WHERE ssl AND application_name = 'moat'",
            &[],
        )
        .await
        .expect("pg_stat_ssl")
        .get(0);
    assert_eq!(tls_connections, 1);

    // A server the CA did not sign is not trusted, and nothing is written.
    let mut wrong = rules(&config(&pg.url(), "other-ca.pem"), dir.path())[0].open();
    let e = wrong
        .write(&[record(2, "devices/a", b"2", true)])
        .await
        .expect_err("untrusted server");
    assert!(e.is_unavailable(), "{e:?}");
    let rows: i64 = client
        .query_one("SELECT count(*) FROM secure", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(rows, 1);
}
