//! Rows per second of the PostgreSQL sink against a private PostgreSQL, for batches of 1 and
//! of 500, and, for comparison, the same 500-row batches through COPY into a temporary table
//! followed by `INSERT ... SELECT ... ON CONFLICT DO NOTHING`.
//!
//! ```sh
//! cargo run -p moat-forward --features testing --example pg_throughput
//! ```
//! Prints one line per case. Bounded: 2,000 single-row batches and 100 batches of 500.

use std::pin::pin;
use std::time::{Duration, Instant, UNIX_EPOCH};

use bytes::Bytes;
use moat_forward::testing::{PgServer, PG_PASSWORD};
use moat_forward::{ForwardFile, Record};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};

fn record(key: u64) -> Record {
    Record {
        key,
        topic: format!("devices/d{}/telemetry", key % 100),
        payload: Bytes::from(format!(r#"{{"temp":{}.5,"site":"north"}}"#, key % 40)),
        qos: 1,
        retain: false,
        client_id: format!("d{}", key % 100),
        username: Some("device".into()),
        cert_identity: None,
        received_at_ms: 1_700_000_000_000 + key,
        content_type: None,
        user_properties: vec![("fw".into(), "1.2".into())],
    }
}

fn report(case: &str, rows: usize, took: Duration) {
    println!(
        "{case:<44} {rows:>6} rows in {:>7.3} s: {:>8.0} rows/s",
        took.as_secs_f64(),
        rows as f64 / took.as_secs_f64()
    );
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pg = PgServer::start().await?;
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("pg.pass"), PG_PASSWORD)?;
    let text = format!(
        r##"
        [[sinks]]
        name = "db"
        kind = "postgres"
        url = "{}"
        password_file = "pg.pass"
        [[rules]]
        name = "single"
        filters = ["#"]
        sink = "db"
        [[rules]]
        name = "batched"
        filters = ["#"]
        sink = "db"
        "##,
        pg.url()
    );
    let file: ForwardFile = toml::from_str(&text)?;
    let rules = file.validate(dir.path())?;

    let mut single = rules[0].open();
    single.write(&[record(1 << 40)]).await?; // connect and create the table
    let start = Instant::now();
    for key in 0..2_000 {
        single.write(&[record(key)]).await?;
    }
    report("sink INSERT, batches of 1", 2_000, start.elapsed());

    let mut batched = rules[1].open();
    batched.write(&[record(1 << 40)]).await?;
    let batches: Vec<Vec<Record>> = (0..100u64)
        .map(|b| (0..500).map(|i| record(b * 500 + i)).collect())
        .collect();
    let start = Instant::now();
    for b in &batches {
        batched.write(b).await?;
    }
    report("sink INSERT, batches of 500", 50_000, start.elapsed());

    // COPY variant, same table shape, written by hand here.
    let mut client = pg.client().await?;
    client
        .batch_execute("CREATE TABLE copied (LIKE batched INCLUDING ALL)")
        .await?;
    let types = [
        Type::INT8,
        Type::TEXT,
        Type::BYTEA,
        Type::INT2,
        Type::BOOL,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TIMESTAMPTZ,
        Type::TEXT,
        Type::JSONB,
    ];
    let start = Instant::now();
    for b in &batches {
        let tx = client.transaction().await?;
        tx.batch_execute("CREATE TEMP TABLE staging (LIKE copied) ON COMMIT DROP")
            .await?;
        let sink = tx.copy_in("COPY staging FROM STDIN BINARY").await?;
        let mut writer = pin!(BinaryCopyInWriter::new(sink, &types));
        for r in b {
            let key = r.key as i64;
            let qos = i16::from(r.qos);
            let at = UNIX_EPOCH + Duration::from_millis(r.received_at_ms);
            let props = serde_json::json!(r.user_properties);
            let row: [&(dyn ToSql + Sync); 11] = [
                &key,
                &r.topic,
                &&r.payload[..],
                &qos,
                &r.retain,
                &r.client_id,
                &r.username,
                &r.cert_identity,
                &at,
                &r.content_type,
                &props,
            ];
            writer.as_mut().write(&row).await?;
        }
        writer.finish().await?;
        tx.batch_execute(
            "INSERT INTO copied SELECT * FROM staging ON CONFLICT (msg_key) DO NOTHING",
        )
        .await?;
        tx.commit().await?;
    }
    report(
        "COPY + INSERT SELECT, batches of 500",
        50_000,
        start.elapsed(),
    );
    Ok(())
}
