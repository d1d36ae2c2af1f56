//! The PostgreSQL sink against a private PostgreSQL (see `moat_forward::testing`).

mod common;

use common::{chain, record, rules, write_until_ok};
use moat_forward::testing::{PgServer, PG_PASSWORD};
use moat_forward::{Record, Sink, SinkError};
use serde_json::{json, Value};

/// payload, payload_json, temp, site, first
type Readings = (
    Vec<u8>,
    Option<Value>,
    Option<Value>,
    Option<Value>,
    Option<Value>,
);

struct Setup {
    pg: PgServer,
    _dir: tempfile::TempDir,
}

/// A server and a config folder with its password file.
async fn setup() -> Setup {
    let pg = PgServer::start().await.expect("private PostgreSQL starts");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("pg.pass"), format!("{PG_PASSWORD}\n")).expect("password file");
    Setup { pg, _dir: dir }
}

impl Setup {
    fn sink(&self, rule: &str) -> Box<dyn Sink> {
        let text = format!(
            r#"
            [[forward.sinks]]
            name = "db"
            kind = "postgres"
            url = "{}"
            password_file = "pg.pass"
            write_timeout = "10s"

            [[forward.rules]]
            filters = ["devices/#"]
            sink = "db"
            {rule}
            "#,
            self.pg.url()
        );
        rules(&text, self._dir.path())[0].open()
    }

    async fn count(&self, table: &str) -> i64 {
        let client = self.pg.client().await.expect("connect");
        let row = client
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .expect("count");
        row.get(0)
    }
}

#[tokio::test]
async fn rows_match_records_and_a_repeat_adds_nothing() {
    let s = setup().await;
    let mut sink = s.sink(r#"name = "telemetry""#);
    assert!(!sink.describe().contains(PG_PASSWORD));
    let batch = vec![
        record(1, "devices/d1/telemetry", b"\x00\x01binary", true),
        record(2, "devices/d2/telemetry", b"", false),
        record(u64::MAX, "devices/d3/telemetry", b"max key", false),
    ];
    sink.write(&batch).await.expect("first write");
    sink.write(&batch).await.expect("same batch again");
    sink.write(&batch[..1]).await.expect("part of it again");
    assert_eq!(s.count("telemetry").await, 3);

    let client = s.pg.client().await.expect("connect");
    let rows = client
        .query(
            "SELECT msg_key, topic, payload, qos, retain, client_id, username, cert_identity, \
             (extract(epoch from received_at) * 1000)::bigint, content_type, user_properties \
             FROM telemetry ORDER BY received_at",
            &[],
        )
        .await
        .expect("select");
    assert_eq!(rows.len(), 3);
    for (row, rec) in rows.iter().zip(&batch) {
        assert_eq!(row.get::<_, i64>(0), rec.key as i64);
        assert_eq!(row.get::<_, String>(1), rec.topic);
        assert_eq!(row.get::<_, Vec<u8>>(2), rec.payload.to_vec());
        assert_eq!(row.get::<_, i16>(3), i16::from(rec.qos));
        assert_eq!(row.get::<_, bool>(4), rec.retain);
        assert_eq!(row.get::<_, String>(5), rec.client_id);
        assert_eq!(row.get::<_, Option<String>>(6), rec.username);
        assert_eq!(row.get::<_, Option<String>>(7), rec.cert_identity);
        assert_eq!(row.get::<_, i64>(8), rec.received_at_ms as i64);
        assert_eq!(row.get::<_, Option<String>>(9), rec.content_type);
        let props: Vec<Value> = rec
            .user_properties
            .iter()
            .map(|(n, v)| json!([n, v]))
            .collect();
        assert_eq!(row.get::<_, Value>(10), Value::Array(props));
    }
}

#[tokio::test]
async fn jsonb_payload_and_extracted_columns() {
    let s = setup().await;
    let mut sink = s.sink(
        r#"name = "json"
        table = "readings"
        payload = "jsonb"
        columns = { temp = "temperature", site = "meta.site", first = "list.0" }"#,
    );
    let batch = vec![
        record(
            10,
            "devices/a",
            br#"{"temperature": 21.5, "meta": {"site": "north"}, "list": [7]}"#,
            false,
        ),
        record(11, "devices/b", b"not json", false),
        record(12, "devices/c", br#"{"temperature": "warm"}"#, false),
        record(13, "devices/d", br#"{"bad": "\u0000"}"#, false),
    ];
    sink.write(&batch).await.expect("write");
    let client = s.pg.client().await.expect("connect");
    let rows = client
        .query(
            "SELECT payload, payload_json, temp, site, first FROM readings ORDER BY msg_key",
            &[],
        )
        .await
        .expect("select");
    let got: Vec<Readings> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect();
    assert_eq!(
        got[0].1,
        Some(json!({"temperature": 21.5, "meta": {"site": "north"}, "list": [7]}))
    );
    assert_eq!(
        (got[0].2.clone(), got[0].3.clone(), got[0].4.clone()),
        (Some(json!(21.5)), Some(json!("north")), Some(json!(7)))
    );
    assert_eq!(got[1], (b"not json".to_vec(), None, None, None, None));
    assert_eq!(got[2].2, Some(json!("warm")));
    assert_eq!(got[2].3, None);
    // jsonb cannot hold U+0000: the raw bytes are kept, the JSON column is NULL.
    assert_eq!(got[3].0, br#"{"bad": "\u0000"}"#.to_vec());
    assert_eq!(got[3].1, None);
    let numeric: f64 = client
        .query_one(
            "SELECT (temp)::numeric::float8 FROM readings WHERE msg_key = 10",
            &[],
        )
        .await
        .expect("numeric cast")
        .get(0);
    assert!((numeric - 21.5).abs() < f64::EPSILON);
}

#[tokio::test]
async fn a_table_that_does_not_fit_is_refused_naming_the_column() {
    let s = setup().await;
    let client = s.pg.client().await.expect("connect");
    client
        .batch_execute(
            "CREATE TABLE missing_col (msg_key bigint PRIMARY KEY, topic text); \
             CREATE TABLE wrong_type (msg_key bigint PRIMARY KEY, topic text, payload bytea, qos text, \
               retain boolean, client_id text, username text, cert_identity text, received_at timestamptz, \
               content_type text, user_properties jsonb); \
             CREATE TABLE not_unique (msg_key bigint, topic text, payload bytea, qos smallint, \
               retain boolean, client_id text, username text, cert_identity text, received_at timestamptz, \
               content_type text, user_properties jsonb)",
        )
        .await
        .expect("create tables");
    let batch = [record(1, "devices/x", b"1", false)];
    for (table, expected) in [
        ("missing_col", "has no column payload"),
        (
            "wrong_type",
            "column qos of table wrong_type is text, not smallint",
        ),
        ("not_unique", "msg_key of table not_unique is not unique"),
    ] {
        let mut sink = s.sink(&format!("name = \"r\"\ntable = \"{table}\""));
        let e = sink.write(&batch).await.expect_err("refused");
        assert!(matches!(e, SinkError::Rejected { .. }), "{e:?}");
        assert!(chain(&e).contains(expected), "{table}: {}", chain(&e));
        assert!(chain(&e).contains("fix:"), "{}", chain(&e));
        // Refused again on retry (the table is checked again), and nothing was written.
        assert!(sink.write(&batch).await.is_err());
    }
    // Once fixed, the same sink writes.
    client
        .batch_execute("ALTER TABLE not_unique ADD PRIMARY KEY (msg_key)")
        .await
        .expect("fix");
    let mut sink = s.sink("name = \"r\"\ntable = \"not_unique\"");
    sink.write(&batch).await.expect("fixed table works");
}

#[tokio::test]
async fn a_killed_database_is_unavailable_then_the_same_sink_reconnects() {
    let mut s = setup().await;
    let mut sink = s.sink(r#"name = "crash""#);
    let batches: Vec<Vec<Record>> = (0..3)
        .map(|b| {
            (0..50)
                .map(|i| record(b * 100 + i, "devices/k", b"x", i % 2 == 0))
                .collect()
        })
        .collect();
    sink.write(&batches[0]).await.expect("before the crash");
    s.pg.kill();
    let e = sink.write(&batches[1]).await.expect_err("database is down");
    assert!(e.is_unavailable(), "{e:?}");
    let e = sink.write(&batches[1]).await.expect_err("still down");
    assert!(e.is_unavailable(), "{e:?}");
    s.pg.restart().await.expect("restart");
    write_until_ok(sink.as_mut(), &batches[1]).await;
    sink.write(&batches[2]).await.expect("after the restart");
    assert_eq!(s.count("crash").await, 150);
}

#[tokio::test]
async fn an_unreachable_database_at_start_is_only_unavailable() {
    let s = setup().await;
    let text = r##"
        [[forward.sinks]]
        name = "db"
        kind = "postgres"
        url = "postgresql://moat@127.0.0.1:1/postgres"
        connect_timeout = "2s"

        [[forward.rules]]
        name = "nowhere"
        filters = ["#"]
        sink = "db"
    "##;
    let mut sink = rules(text, s._dir.path())[0].open();
    let e = sink
        .write(&[record(1, "a", b"", false)])
        .await
        .expect_err("nothing listens on port 1");
    assert!(e.is_unavailable(), "{e:?}");
}

#[tokio::test]
async fn large_batches_split_below_the_parameter_limit() {
    let s = setup().await;
    let mut sink = s.sink(r#"name = "big""#);
    // 11 parameters a row: 6000 rows need two statements.
    let batch: Vec<Record> = (0..6000)
        .map(|i| record(i, "devices/big", b"p", false))
        .collect();
    sink.write(&batch).await.expect("write");
    sink.write(&batch[..10]).await.expect("write again");
    assert_eq!(s.count("big").await, 6000);
}

#[tokio::test]
async fn a_wrong_password_is_rejected_without_showing_it() {
    let s = setup().await;
    std::fs::write(s._dir.path().join("wrong.pass"), "not-the-password\n").expect("write");
    let text = format!(
        r#"
        [[forward.sinks]]
        name = "db"
        kind = "postgres"
        url = "{}"
        password_file = "wrong.pass"

        [[forward.rules]]
        name = "denied"
        filters = ["devices/+"]
        sink = "db"
        "#,
        s.pg.url()
    );
    let mut sink = rules(&text, s._dir.path())[0].open();
    let e = sink
        .write(&[record(1, "devices/a", b"", false)])
        .await
        .expect_err("wrong password");
    assert!(matches!(e, SinkError::Rejected { .. }), "{e:?}");
    assert!(chain(&e).contains("28P01"), "{}", chain(&e));
    assert!(!chain(&e).contains("not-the-password"), "{}", chain(&e));
}

#[tokio::test]
async fn two_rules_creating_one_table_at_once_both_deliver() {
    let s = setup().await;
    let mut a = s.sink("name = \"a\"\ntable = \"shared\"");
    let mut b = s.sink("name = \"b\"\ntable = \"shared\"");
    let (ba, bb) = (
        [record(1, "devices/a", b"", false)],
        [record(2, "devices/b", b"", false)],
    );
    tokio::join!(
        write_until_ok(a.as_mut(), &ba),
        write_until_ok(b.as_mut(), &bb)
    );
    assert_eq!(s.count("shared").await, 2);
}
