//! The JetStream sink against a private nats-server (see `moat_forward::testing`).

mod common;

use common::{record, rules, write_until_ok};
use moat_forward::testing::NatsServer;
use moat_forward::{Record, Sink};

fn sink(nats: &NatsServer, rule: &str) -> Box<dyn Sink> {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = format!(
        r#"
        [[forward.sinks]]
        name = "queue"
        kind = "jetstream"
        url = "{}"
        write_timeout = "3s"

        [[forward.rules]]
        filters = ["devices/#"]
        sink = "queue"
        {rule}
        "#,
        nats.url()
    );
    rules(&text, dir.path())[0].open()
}

async fn messages(nats: &NatsServer, stream: &str) -> u64 {
    let js = nats.jetstream().await.expect("connect");
    let mut s = js.get_stream(stream).await.expect("stream exists");
    s.info().await.expect("info").state.messages
}

#[tokio::test]
async fn messages_arrive_with_headers_and_a_repeat_is_dropped_by_the_stream() {
    let nats = NatsServer::start()
        .await
        .expect("private nats-server starts");
    let mut sink = sink(&nats, "name = \"events\"\nstream = \"MOAT_EVENTS\"");
    assert!(sink.describe().contains("MOAT_EVENTS"));
    let batch = vec![
        record(1, "devices/d 1/events/a.b", b"\x00payload", true),
        record(2, "devices/d2/events", b"{}", false),
    ];
    sink.write(&batch)
        .await
        .expect("first write creates the stream");
    assert_eq!(messages(&nats, "MOAT_EVENTS").await, 2);
    sink.write(&batch).await.expect("same batch again");
    sink.write(&batch[1..]).await.expect("part of it again");
    assert_eq!(
        messages(&nats, "MOAT_EVENTS").await,
        2,
        "duplicates are dropped"
    );

    let js = nats.jetstream().await.expect("connect");
    let stream = js.get_stream("MOAT_EVENTS").await.expect("stream");
    let info = stream.cached_info();
    assert_eq!(info.config.subjects, ["moat.>"]);
    assert_eq!(
        info.config.storage,
        async_nats::jetstream::stream::StorageType::File
    );
    assert!(info.config.duplicate_window >= std::time::Duration::from_secs(120));

    let m = stream.get_raw_message(1).await.expect("message 1");
    assert_eq!(m.subject.as_str(), "moat.devices.d%201.events.a%2Eb");
    assert_eq!(&m.payload[..], b"\x00payload");
    let h = |name: &str| m.headers.get(name).map(|v| v.as_str().to_owned());
    let id = m
        .headers
        .get(async_nats::header::NATS_MESSAGE_ID)
        .map(|v| v.as_str());
    assert_eq!(id, Some("events:1"));
    assert_eq!(h("Moat-Topic").as_deref(), Some("devices/d 1/events/a.b"));
    assert_eq!(h("Moat-Client-Id").as_deref(), Some("client-1"));
    assert_eq!(h("Moat-Username").as_deref(), Some("alice"));
    assert_eq!(h("Moat-Cert-Identity").as_deref(), Some("CN=device1"));
    assert_eq!(h("Moat-Qos").as_deref(), Some("2"));
    assert_eq!(h("Moat-Retain").as_deref(), Some("true"));
    assert_eq!(h("Moat-Received-At").as_deref(), Some("1700000000001"));
    assert_eq!(h("Moat-Content-Type").as_deref(), Some("application/json"));
    // The JSON escapes the newline, so the header stays on one line.
    assert_eq!(
        h("Moat-User-Properties").as_deref(),
        Some(r#"[["a","1"],["a","2"],["b","x\ny"]]"#)
    );
    let m = stream.get_raw_message(2).await.expect("message 2");
    assert_eq!(m.subject.as_str(), "moat.devices.d2.events");
    for absent in [
        "Moat-Username",
        "Moat-Cert-Identity",
        "Moat-Content-Type",
        "Moat-User-Properties",
    ] {
        assert!(m.headers.get(absent).is_none(), "{absent}");
    }
    assert_eq!(
        m.headers.get("Moat-Retain").map(|v| v.as_str()),
        Some("false")
    );
}

#[tokio::test]
async fn an_existing_stream_is_used_and_one_that_takes_other_subjects_is_refused() {
    let nats = NatsServer::start()
        .await
        .expect("private nats-server starts");
    let js = nats.jetstream().await.expect("connect");
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "OTHER".into(),
        subjects: vec!["elsewhere.>".into()],
        ..Default::default()
    })
    .await
    .expect("create stream");
    let mut refused = sink(&nats, "name = \"r\"\nstream = \"OTHER\"");
    let e = refused
        .write(&[record(1, "devices/x", b"", false)])
        .await
        .expect_err("refused");
    assert!(!e.is_unavailable(), "{e:?}");
    assert!(
        e.to_string()
            .contains("add moat.> to the stream's subjects"),
        "{e}"
    );

    let mut fixed = sink(
        &nats,
        "name = \"f\"\nstream = \"OTHER\"\nsubject = \"elsewhere.{topic}\"",
    );
    fixed
        .write(&[record(1, "devices/x", b"", false)])
        .await
        .expect("fits");
    assert_eq!(messages(&nats, "OTHER").await, 1);
}

#[tokio::test]
async fn a_killed_server_is_unavailable_then_the_same_sink_delivers() {
    let mut nats = NatsServer::start()
        .await
        .expect("private nats-server starts");
    let mut sink = sink(&nats, "name = \"crash\"\nstream = \"CRASH\"");
    let batches: Vec<Vec<Record>> = (0..3)
        .map(|b| {
            (0..20)
                .map(|i| record(b * 100 + i, "devices/k", b"x", i % 2 == 0))
                .collect()
        })
        .collect();
    sink.write(&batches[0]).await.expect("before the crash");
    nats.kill();
    let e = sink.write(&batches[1]).await.expect_err("server is down");
    assert!(e.is_unavailable(), "{e:?}");
    nats.restart().await.expect("restart");
    write_until_ok(sink.as_mut(), &batches[1]).await;
    sink.write(&batches[2]).await.expect("after the restart");
    assert_eq!(messages(&nats, "CRASH").await, 60);
}

#[tokio::test]
async fn an_unreachable_server_at_start_is_only_unavailable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = r#"
        [[forward.sinks]]
        name = "queue"
        kind = "jetstream"
        url = "nats://127.0.0.1:1"
        connect_timeout = "2s"

        [[forward.rules]]
        name = "nowhere"
        filters = ["a"]
        sink = "queue"
        stream = "S"
    "#;
    let mut sink = rules(text, dir.path())[0].open();
    let e = sink
        .write(&[record(1, "a", b"", false)])
        .await
        .expect_err("nothing listens on port 1");
    assert!(e.is_unavailable(), "{e:?}");
}

#[tokio::test]
async fn credentials_file_user_and_password() {
    let nats = NatsServer::start_with_user("moat", "nats-secret")
        .await
        .expect("nats-server with a user");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("good.toml"),
        "user = \"moat\"\npassword = \"nats-secret\"\n",
    )
    .expect("write");
    std::fs::write(
        dir.path().join("bad.toml"),
        "user = \"moat\"\npassword = \"wrong\"\n",
    )
    .expect("write");
    let config = |file: &str| {
        format!(
            r#"
            [[forward.sinks]]
            name = "queue"
            kind = "jetstream"
            url = "{}"
            credentials_file = "{file}"
            connect_timeout = "3s"
            write_timeout = "5s"

            [[forward.rules]]
            name = "auth"
            filters = ["devices/+"]
            sink = "queue"
            stream = "AUTH"
            "#,
            nats.url()
        )
    };
    let good = &rules(&config("good.toml"), dir.path())[0];
    assert!(!format!("{good:?}").contains("nats-secret"));
    let mut sink = good.open();
    sink.write(&[record(1, "devices/a", b"1", false)])
        .await
        .expect("authenticated write");
    let mut refused = rules(&config("bad.toml"), dir.path())[0].open();
    let e = refused
        .write(&[record(2, "devices/a", b"2", false)])
        .await
        .expect_err("wrong password");
    assert!(!e.is_unavailable(), "a refused login is Rejected: {e:?}");
    assert!(
        common::chain(&e).contains("credentials_file"),
        "{}",
        common::chain(&e)
    );
    assert!(
        !common::chain(&e).contains("wrong"),
        "{}",
        common::chain(&e)
    );
}
