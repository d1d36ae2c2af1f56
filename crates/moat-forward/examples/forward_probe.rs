//! Latency and loss probe for forwarding, end to end through a running broker: the measuring
//! tool of `scripts/bench-forward.sh latency` and `scripts/bench-forward.sh outage`.
//!
//! Publishers (one MQTT connection each, QoS 1, `moat-client`) send at a steady paced rate;
//! each payload is `<publisher> <sequence> <send time, Unix ns>` padded with spaces to 64 bytes,
//! so every message is identified exactly. A reader follows the sink while they run:
//! PostgreSQL by polling `SELECT msg_key, payload ... WHERE msg_key > $last ORDER BY msg_key`
//! every 2 ms (the rule's task commits batches one after another, in key order, so keys become
//! visible in order), JetStream by an ordered pull consumer on the stream. The time a message
//! is first seen minus its send time is its latency: an upper bound on PUBLISH-to-commit (it
//! includes up to one poll interval and the query).
//!
//! ```text
//! forward_probe latency --mqtt 127.0.0.1:1883 --topic lat --rate 5000 --secs 20 --conns 10
//!     --drain 20 (--pg-url URL --pg-password PW --table T | --nats-url URL --stream S)
//! forward_probe load --mqtt 127.0.0.1:1883 --topic out --rate 5000 --secs 110 --conns 10
//!     --acked FILE
//! forward_probe check --acked FILE (--pg-url URL --pg-password PW --table T
//!     | --nats-url URL --stream S)
//! ```
//! - `latency` prints one JSON object: rates, counts, p50/p90/p99/p99.9/max in ms (a message
//!   not seen within `--drain` s after publishing ends counts as slower than any seen).
//! - `load` survives the broker going away: a publisher whose connection breaks reconnects
//!   (every 100 ms) and carries on with its sequence. Only messages whose PUBACK arrived are
//!   written to `--acked` (`<publisher> <sequence>` a line).
//! - `check` reads the whole table or stream and compares it with `--acked`: acknowledged
//!   messages missing (lost), stored messages never acknowledged (allowed: the PUBACK was lost
//!   with the broker), and duplicates (by payload identity, by `msg_key` / `Nats-Msg-Id`).
//!
//! Bounded: at most 600 s of publishing, 100,000 msg/s, 1,000 connections, `--drain` at most
//! 600 s; only 127.0.0.1 is contacted.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, Write};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;
use moat_client::{connect_tcp, ConnectOptions, QoS};
use serde_json::json;

type Error = Box<dyn std::error::Error + Send + Sync>;
type Res<T> = Result<T, Error>;

/// Payload size: identity and send time, padded.
const PAYLOAD: usize = 64;
/// Between two PostgreSQL polls.
const POLL: Duration = Duration::from_millis(2);

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// `--key value` pairs.
struct Args(HashMap<String, String>);

impl Args {
    fn parse(args: impl Iterator<Item = String>) -> Res<Self> {
        let mut map = HashMap::new();
        let mut it = args.peekable();
        while let Some(k) = it.next() {
            let Some(key) = k.strip_prefix("--") else {
                return Err(format!("unexpected argument {k}").into());
            };
            let v = it.next().ok_or_else(|| format!("--{key} needs a value"))?;
            map.insert(key.to_owned(), v);
        }
        Ok(Self(map))
    }

    fn get(&self, key: &str) -> Res<String> {
        self.0
            .get(key)
            .cloned()
            .ok_or_else(|| format!("--{key} is required").into())
    }

    fn num<T: FromStr>(&self, key: &str, default: T) -> Res<T> {
        match self.0.get(key) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| format!("--{key}: bad number {v}").into()),
        }
    }
}

/// Where the forwarded messages land.
enum Target {
    Pg {
        url: String,
        password: String,
        table: String,
    },
    Js {
        url: String,
        stream: String,
    },
}

impl Target {
    fn from_args(a: &Args) -> Res<Self> {
        if let Ok(url) = a.get("pg-url") {
            check_loopback(&url)?;
            Ok(Self::Pg {
                url,
                password: a.get("pg-password")?,
                table: a.get("table")?,
            })
        } else {
            let url = a.get("nats-url")?;
            check_loopback(&url)?;
            Ok(Self::Js {
                url,
                stream: a.get("stream")?,
            })
        }
    }
}

fn check_loopback(url: &str) -> Res<()> {
    if url.contains("@127.0.0.1:") || url.contains("//127.0.0.1:") || url.starts_with("127.0.0.1:")
    {
        Ok(())
    } else {
        Err(format!("only 127.0.0.1 targets: {url}").into())
    }
}

fn payload(publisher: u32, seq: u64, sent_ns: u64) -> Vec<u8> {
    let mut p = format!("{publisher} {seq} {sent_ns}").into_bytes();
    p.resize(PAYLOAD.max(p.len()), b' ');
    p
}

/// (publisher, sequence, send time).
fn parse_payload(p: &[u8]) -> Option<(u32, u64, u64)> {
    let s = std::str::from_utf8(p).ok()?;
    let mut it = s.split_ascii_whitespace();
    Some((
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
    ))
}

// ---------------------------------------------------------------------------------------------
// Publishers

struct LoadPlan {
    mqtt: String,
    topic: String,
    rate: f64,
    secs: u64,
    conns: u32,
}

impl LoadPlan {
    fn from_args(a: &Args) -> Res<Self> {
        let plan = Self {
            mqtt: a.get("mqtt")?,
            topic: a.get("topic")?,
            rate: a.num("rate", 5000.0)?,
            secs: a.num("secs", 20)?,
            conns: a.num("conns", 10)?,
        };
        check_loopback(&plan.mqtt)?;
        if !(plan.rate > 0.0 && plan.rate <= 100_000.0) {
            return Err("--rate must be from 1 to 100000".into());
        }
        if plan.secs == 0 || plan.secs > 600 {
            return Err("--secs must be from 1 to 600".into());
        }
        if plan.conns == 0 || plan.conns > 1000 {
            return Err("--conns must be from 1 to 1000".into());
        }
        Ok(plan)
    }
}

#[derive(Default)]
struct PubResult {
    /// Messages handed to the client.
    sent: u64,
    /// Sequences whose PUBACK arrived.
    acked: Vec<u64>,
    /// Connections made after the first.
    reconnects: u64,
}

/// One publisher: paced at `per_sec` from its (re)connection until `end`, reconnecting when
/// the connection breaks.
async fn publisher(id: u32, addr: String, topic: String, per_sec: f64, end: Instant) -> PubResult {
    let acked = Arc::new(Mutex::new(Vec::new()));
    let mut sent = 0u64;
    let mut seq = 0u64;
    let mut connections = 0u64;
    while Instant::now() < end {
        let opts = ConnectOptions {
            max_inflight: 1000,
            keep_alive: 10,
            connect_timeout: Duration::from_secs(2),
            ..ConnectOptions::new(format!("probe-{id}"))
        };
        let client = match connect_tcp(addr.as_str(), opts).await {
            Ok((c, _)) => Arc::new(c),
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        connections += 1;
        let broken = Arc::new(AtomicBool::new(false));
        let mut tasks = tokio::task::JoinSet::new();
        let started = Instant::now();
        let mut n = 0u64;
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            let now = Instant::now();
            if now >= end || broken.load(Ordering::Relaxed) || client.is_closed() {
                break;
            }
            let due = (now.duration_since(started).as_secs_f64() * per_sec) as u64;
            while n < due {
                n += 1;
                seq += 1;
                sent += 1;
                let body = payload(id, seq, now_ns());
                let (c, a, b, t) = (
                    Arc::clone(&client),
                    Arc::clone(&acked),
                    Arc::clone(&broken),
                    topic.clone(),
                );
                tasks.spawn(async move {
                    match c.publish(t, body, QoS::AtLeastOnce, false).await {
                        Ok(()) => a.lock().expect("acked").push(seq),
                        Err(_) => b.store(true, Ordering::Relaxed),
                    }
                });
            }
            while tasks.try_join_next().is_some() {}
        }
        // The last acknowledgements (bounded); what does not come is not acknowledged.
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        tasks.abort_all();
        if Instant::now() >= end && !client.is_closed() {
            let _ = tokio::time::timeout(Duration::from_secs(2), client.disconnect()).await;
        }
    }
    let acked = std::mem::take(&mut *acked.lock().expect("acked"));
    PubResult {
        sent,
        acked,
        reconnects: connections.saturating_sub(1),
    }
}

/// Runs all publishers for `plan.secs`; one result per publisher.
async fn run_load(plan: &LoadPlan) -> Vec<PubResult> {
    let end = Instant::now() + Duration::from_secs(plan.secs);
    let per = plan.rate / f64::from(plan.conns);
    let handles: Vec<_> = (0..plan.conns)
        .map(|i| {
            tokio::spawn(publisher(
                i,
                plan.mqtt.clone(),
                format!("{}/{i}", plan.topic),
                per,
                end,
            ))
        })
        .collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap_or_default());
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Readers

/// What a reader saw.
#[derive(Default)]
struct Seen {
    /// (publisher, sequence) -> (latency ns at first sight, times seen).
    ids: HashMap<(u32, u64), (u64, u32)>,
    /// Rows or stream messages read.
    rows: u64,
    /// Sink keys (`msg_key`, `Nats-Msg-Id`) seen more than once.
    dup_keys: u64,
    /// Payloads that do not parse.
    foreign: u64,
    /// Time of the last new row.
    last_new: Option<Instant>,
    /// Reader errors (e.g. the table does not exist yet).
    errors: u64,
}

impl Seen {
    fn record(&mut self, payload: &[u8], seen_ns: u64) {
        self.rows += 1;
        self.last_new = Some(Instant::now());
        match parse_payload(payload) {
            Some((p, s, sent)) => {
                let e = self
                    .ids
                    .entry((p, s))
                    .or_insert((seen_ns.saturating_sub(sent), 0));
                e.1 += 1;
            }
            None => self.foreign += 1,
        }
    }
}

async fn pg_client(url: &str, password: &str) -> Res<tokio_postgres::Client> {
    let mut config = tokio_postgres::Config::from_str(url)?;
    config
        .password(password)
        .connect_timeout(Duration::from_secs(5));
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Follows the sink from its beginning until `stop`.
async fn read_sink(target: Arc<Target>, seen: Arc<Mutex<Seen>>, stop: Arc<AtomicBool>) -> Res<()> {
    match &*target {
        Target::Pg {
            url,
            password,
            table,
        } => {
            let client = pg_client(url, password).await?;
            let sql = format!(
                "SELECT msg_key, payload FROM \"{table}\" WHERE msg_key > $1 ORDER BY msg_key \
                 LIMIT 20000"
            );
            let mut last: i64 = -1;
            let mut keys: HashSet<i64> = HashSet::new();
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                match client.query(sql.as_str(), &[&last]).await {
                    Ok(rows) => {
                        let at = now_ns();
                        let mut s = seen.lock().expect("seen");
                        for r in rows {
                            let k: i64 = r.get(0);
                            let p: &[u8] = r.get(1);
                            last = last.max(k);
                            if !keys.insert(k) {
                                s.dup_keys += 1;
                            }
                            s.record(p, at);
                        }
                    }
                    Err(_) => {
                        // The table is created by the sink when it first connects.
                        seen.lock().expect("seen").errors += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                tokio::time::sleep_until((t0 + POLL).into()).await;
            }
        }
        Target::Js { url, stream } => {
            let js = jetstream::new(async_nats::connect(url.as_str()).await?);
            let s = js.get_stream(stream.as_str()).await?;
            let consumer = s
                .create_consumer(consumer::pull::OrderedConfig {
                    deliver_policy: consumer::DeliverPolicy::All,
                    ..Default::default()
                })
                .await?;
            let mut messages = consumer.messages().await?;
            let mut ids: HashSet<String> = HashSet::new();
            while !stop.load(Ordering::Relaxed) {
                let next = tokio::time::timeout(Duration::from_millis(50), messages.next()).await;
                let Ok(next) = next else { continue };
                match next {
                    Some(Ok(m)) => {
                        let at = now_ns();
                        let mut s = seen.lock().expect("seen");
                        let id = m
                            .headers
                            .as_ref()
                            .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
                            .map(|v| v.as_str().to_owned())
                            .unwrap_or_default();
                        if !ids.insert(id) {
                            s.dup_keys += 1;
                        }
                        s.record(&m.payload, at);
                    }
                    Some(Err(_)) => seen.lock().expect("seen").errors += 1,
                    None => return Err("the consumer ended".into()),
                }
            }
        }
    }
    Ok(())
}

/// Creates the stream as the sink would (file storage, 2 min duplicate window) so that the
/// reader can attach before the first message.
async fn ensure_stream(url: &str, name: &str, subjects: &str) -> Res<()> {
    let js = jetstream::new(async_nats::connect(url).await?);
    js.get_or_create_stream(stream::Config {
        name: name.to_owned(),
        subjects: vec![subjects.to_owned()],
        storage: stream::StorageType::File,
        duplicate_window: moat_forward::jetstream::DUPLICATE_WINDOW,
        ..Default::default()
    })
    .await?;
    Ok(())
}

async fn stream_count(url: &str, name: &str) -> Res<u64> {
    let js = jetstream::new(async_nats::connect(url).await?);
    let mut s = js.get_stream(name).await?;
    Ok(s.info().await?.state.messages)
}

// ---------------------------------------------------------------------------------------------
// Modes

fn percentile(sorted: &[u64], total: usize, q: f64) -> serde_json::Value {
    // Over every acknowledged message; those never seen rank above every seen one.
    if total == 0 {
        return serde_json::Value::Null;
    }
    let rank = ((q * total as f64).ceil() as usize).clamp(1, total);
    match sorted.get(rank - 1) {
        Some(ns) => json!((*ns as f64 / 1e6 * 10.0).round() / 10.0),
        None => json!("not seen"),
    }
}

async fn latency(a: &Args) -> Res<()> {
    let plan = LoadPlan::from_args(a)?;
    let target = Arc::new(Target::from_args(a)?);
    let drain: u64 = a.num("drain", 20)?;
    if drain > 600 {
        return Err("--drain must be at most 600".into());
    }
    if let Target::Js { url, stream } = &*target {
        ensure_stream(url, stream, &a.get("subjects")?).await?;
    }
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let reader = tokio::spawn(read_sink(
        Arc::clone(&target),
        Arc::clone(&seen),
        Arc::clone(&stop),
    ));
    let t0 = Instant::now();
    let results = run_load(&plan).await;
    let published = t0.elapsed();
    let acked: HashSet<(u32, u64)> = results
        .iter()
        .enumerate()
        .flat_map(|(i, r)| r.acked.iter().map(move |s| (i as u32, *s)))
        .collect();
    let sent: u64 = results.iter().map(|r| r.sent).sum();
    // Until every acknowledged message is seen, or --drain seconds.
    let deadline = Instant::now() + Duration::from_secs(drain);
    loop {
        let missing = {
            let s = seen.lock().expect("seen");
            acked.iter().filter(|k| !s.ids.contains_key(k)).count()
        };
        if missing == 0 || Instant::now() >= deadline || reader.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let reader_result = reader.await;
    if let Ok(Err(e)) = &reader_result {
        return Err(format!("reader: {e}").into());
    }
    let s = seen.lock().expect("seen");
    let mut lat: Vec<u64> = acked
        .iter()
        .filter_map(|k| s.ids.get(k).map(|(l, _)| *l))
        .collect();
    lat.sort_unstable();
    let total = acked.len();
    let seen_acked = lat.len();
    // The sink's rate: messages seen over the span from the first send to the last sight.
    let span = s
        .last_new
        .map_or(published, |t| t.duration_since(t0))
        .as_secs_f64();
    let out = json!({
        "mode": "latency",
        "target_rate": plan.rate,
        "secs": plan.secs,
        "conns": plan.conns,
        "sent": sent,
        "acked": total,
        "publish_rate": (total as f64 / published.as_secs_f64()).round(),
        "seen": s.ids.len(),
        "seen_acked": seen_acked,
        "not_seen": total - seen_acked,
        "sink_rate": (s.ids.len() as f64 / span).round(),
        "rows": s.rows,
        "dup_payloads": s.ids.values().filter(|(_, n)| *n > 1).count(),
        "dup_keys": s.dup_keys,
        "reconnects": results.iter().map(|r| r.reconnects).sum::<u64>(),
        "p50_ms": percentile(&lat, total, 0.50),
        "p90_ms": percentile(&lat, total, 0.90),
        "p99_ms": percentile(&lat, total, 0.99),
        "p999_ms": percentile(&lat, total, 0.999),
        "max_ms": percentile(&lat, total, 1.0),
    });
    println!("{out}");
    Ok(())
}

async fn load(a: &Args) -> Res<()> {
    let plan = LoadPlan::from_args(a)?;
    let path = a.get("acked")?;
    let t0 = Instant::now();
    let results = run_load(&plan).await;
    let took = t0.elapsed().as_secs_f64();
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path)?);
    for (i, r) in results.iter().enumerate() {
        for s in &r.acked {
            writeln!(f, "{i} {s}")?;
        }
    }
    f.flush()?;
    let sent: u64 = results.iter().map(|r| r.sent).sum();
    let acked: usize = results.iter().map(|r| r.acked.len()).sum();
    let out = json!({
        "mode": "load",
        "target_rate": plan.rate,
        "secs": plan.secs,
        "conns": plan.conns,
        "sent": sent,
        "acked": acked,
        "not_acked": sent - acked as u64,
        "acked_rate": (acked as f64 / took).round(),
        "reconnects": results.iter().map(|r| r.reconnects).sum::<u64>(),
    });
    println!("{out}");
    Ok(())
}

async fn check(a: &Args) -> Res<()> {
    let target = Arc::new(Target::from_args(a)?);
    let mut acked: HashSet<(u32, u64)> = HashSet::new();
    for line in std::io::BufReader::new(std::fs::File::open(a.get("acked")?)?).lines() {
        let line = line?;
        let mut it = line.split_ascii_whitespace();
        if let (Some(p), Some(s)) = (it.next(), it.next()) {
            acked.insert((p.parse()?, s.parse()?));
        }
    }
    let expected = match &*target {
        Target::Js { url, stream } => Some(stream_count(url, stream).await?),
        Target::Pg { .. } => None,
    };
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let reader = tokio::spawn(read_sink(
        Arc::clone(&target),
        Arc::clone(&seen),
        Arc::clone(&stop),
    ));
    // Until nothing new for 3 s (and, for a stream, its message count is reached); at most
    // 300 s.
    let started = Instant::now();
    let quiet = Duration::from_secs(3);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (rows, last) = {
            let s = seen.lock().expect("seen");
            (s.rows, s.last_new.unwrap_or(started))
        };
        let complete = expected.is_none_or(|n| rows >= n);
        if (complete && last.elapsed() > quiet)
            || started.elapsed() > Duration::from_secs(300)
            || reader.is_finished()
        {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    if let Ok(Err(e)) = reader.await {
        return Err(format!("reader: {e}").into());
    }
    let s = seen.lock().expect("seen");
    let lost: Vec<&(u32, u64)> = acked.iter().filter(|k| !s.ids.contains_key(k)).collect();
    let unacked_stored = s.ids.keys().filter(|k| !acked.contains(k)).count();
    let dup_payloads: u64 = s
        .ids
        .values()
        .map(|(_, n)| u64::from(n.saturating_sub(1)))
        .sum();
    let mut lost_sample: Vec<String> = lost
        .iter()
        .take(10)
        .map(|(p, q)| format!("{p}:{q}"))
        .collect();
    lost_sample.sort();
    let out = json!({
        "mode": "check",
        "acked": acked.len(),
        "rows": s.rows,
        "stream_messages": expected,
        "distinct_payloads": s.ids.len(),
        "lost": lost.len(),
        "lost_sample": lost_sample,
        "stored_not_acked": unacked_stored,
        "duplicate_payload_rows": dup_payloads,
        "duplicate_keys": s.dup_keys,
        "unparsable": s.foreign,
    });
    println!("{out}");
    Ok(())
}

fn main() -> Res<()> {
    let mut argv = std::env::args().skip(1);
    let mode = argv.next().unwrap_or_default();
    let args = Args::parse(argv)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        match mode.as_str() {
            "latency" => latency(&args).await,
            "load" => load(&args).await,
            "check" => check(&args).await,
            _ => Err("usage: forward_probe latency|load|check --key value ...".into()),
        }
    })
}
