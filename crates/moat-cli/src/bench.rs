//! `moat bench`: a bounded load generator.
//!
//! Three modes:
//! - publish/subscribe (default): `--pub N` publishers and `--sub M` subscribers, each its own
//!   connection. Every payload starts with the send time (8 bytes, nanoseconds since the
//!   bench started, big endian) and a sequence number (8 bytes: the publisher's index in the
//!   top 24 bits, its counter below), padded to `--size`. Subscribers record the latency in an
//!   HDR histogram and track each publisher's sequence for losses, duplicates and
//!   out-of-order deliveries.
//! - connection storm (`--storm`): `--connections N` connect / CONNACK / DISCONNECT cycles,
//!   `--concurrency C` at a time, over TCP or TLS (full handshakes; with `--resume`, TLS 1.3
//!   session resumption after the first), for connections per second and connect latency.
//! - idle connections (`--idle`): `--connections N` clients connect and stay idle for
//!   `--hold` seconds; with `--broker-pid` the broker's resident memory per idle connection.
//!
//! Always bounded: the duration is capped at 600 s, the message count at 10,000,000, the
//! connections at 20,000; only the address given (default 127.0.0.1:1883) is contacted.
//! Exit 1 when connections fail or (QoS 1 and 2) messages are lost.

use std::collections::HashSet;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use hdrhistogram::Histogram;
use moat_client::moat_codec::Subscribe;
use moat_client::transport::{self, Target};
use moat_client::{ConnectOptions, Packet, PacketId, ProtocolVersion, QoS, SubscriptionOptions};
use serde_json::json;
use tokio::sync::watch;

use crate::pubsub::common::{self, TlsArgs};

mod idle;
mod wire;

use wire::{Connected, PublisherJob};

/// The longest run.
const MAX_DURATION_SECS: u64 = 600;
/// The most messages in one run.
const MAX_COUNT: u64 = 10_000_000;
/// The most connections (storm) or clients (publishers + subscribers).
const MAX_CONNECTIONS: u32 = 20_000;
/// The smallest payload: timestamp and sequence.
const HEADER: usize = 16;
/// The largest payload.
const MAX_SIZE: usize = 16 * 1024 * 1024;
/// Sequence gaps remembered per publisher (beyond, a late arrival counts as a duplicate).
const MAX_GAPS: usize = 1_000_000;

/// Flags of `moat bench`.
#[derive(Debug, clap::Args)]
pub(crate) struct BenchArgs {
    /// Broker URL: mqtt://, mqtts://, ws://, wss://.
    #[arg(short = 'L', long = "url", default_value = "mqtt://127.0.0.1:1883")]
    url: String,
    /// Publishers (one connection each).
    #[arg(long = "pub", default_value_t = 1)]
    publishers: u32,
    /// Subscribers (one connection each); each subscribes to every publisher's topic.
    #[arg(long = "sub", default_value_t = 1)]
    subscribers: u32,
    /// QoS of publishes and subscriptions.
    #[arg(short = 'q', long, value_parser = common::parse_qos, default_value = "0")]
    qos: QoS,
    /// Payload size in bytes (at least 16).
    #[arg(short = 's', long, default_value_t = 64)]
    size: usize,
    /// Topic; %i is the publisher's index (subscribers use + there).
    #[arg(short = 't', long, default_value = "bench/%i")]
    topic: String,
    /// Subscribers share one subscription (`$share/GROUP/filter`): each message goes to one of
    /// them, as to a pool of workers, instead of to every subscriber.
    #[arg(long, value_name = "GROUP")]
    share: Option<String>,
    /// Target rate in messages per second over all publishers; 0: as fast as possible.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Run for this many seconds (at most 600; default 10 unless --count is given).
    #[arg(long)]
    duration: Option<u64>,
    /// Send this many messages in all (at most 10,000,000).
    #[arg(long)]
    count: Option<u64>,
    /// Seconds to wait for the last messages after publishing ends.
    #[arg(long, default_value_t = 5)]
    drain: u64,
    /// Connection-storm mode: connect, CONNACK, disconnect, --connections times.
    #[arg(long)]
    storm: bool,
    /// Idle mode: open --connections connections, hold them idle for --hold seconds.
    #[arg(long, conflicts_with = "storm")]
    idle: bool,
    /// Seconds to hold the idle connections before measuring and closing them.
    #[arg(long, default_value_t = 2)]
    hold: u64,
    /// The broker's process id (Linux): --idle reports its memory per idle connection, a
    /// publish/subscribe run the broker's CPU per message while publishing (from /proc, from
    /// the first publish until the last delivery: connecting is not counted).
    #[arg(long, value_name = "PID")]
    broker_pid: Option<u32>,
    /// TLS session resumption: connections after the first resume a session (TLS 1.3 tickets)
    /// instead of a full handshake.
    #[arg(long)]
    resume: bool,
    /// Connections for --storm and --idle (at most 20,000).
    #[arg(long, default_value_t = 100)]
    connections: u32,
    /// Connections in progress at once for --storm and --idle.
    #[arg(long, default_value_t = 16)]
    concurrency: u32,
    /// MQTT version: mqttv311 (default) or mqttv5.
    #[arg(short = 'V', long = "protocol-version", value_parser = common::parse_version, default_value = "mqttv311")]
    version: ProtocolVersion,
    /// User name.
    #[arg(short = 'u', long)]
    username: Option<String>,
    /// Password (visible to `ps`: prefer --password-file).
    #[arg(short = 'P', long = "pw")]
    password: Option<String>,
    /// Read the password from the first line of this file.
    #[arg(long, value_name = "FILE", conflicts_with = "password")]
    password_file: Option<std::path::PathBuf>,
    #[command(flatten)]
    tls: TlsArgs,
    /// Print the results as one JSON object.
    #[arg(long)]
    json: bool,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
    /// Subscribers keep persistent sessions (v3 clean session off, v5 session expiry 300 s),
    /// so QoS 1/2 deliveries go through the broker's durable store.
    #[arg(long)]
    persistent: bool,
}

/// Runs `moat bench`.
pub(crate) fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let plan = Plan::new(&args)?;
    // One worker per core the bench may use (`taskset -c 1` leaves one): two workers on one
    // core would only add thread switches.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let rt = common::runtime(cores.min(2))?;
    let result = if args.idle {
        rt.block_on(idle::idle(Arc::new(plan), &args))
    } else if args.storm {
        rt.block_on(storm(Arc::new(plan), &args))
    } else {
        rt.block_on(pubsub(&plan, &args))
    };
    // Usage errors were caught above (exit 2); what fails now is the broker or the network.
    Ok(result.unwrap_or_else(|e| {
        eprintln!("moat bench: {e:#}");
        ExitCode::from(1)
    }))
}

/// A client session store for `--resume`: the TLS 1.3 tickets of one server, up to `max` (the
/// oldest go first), and what rustls' in-memory cache keeps besides (key exchange hints, TLS 1.2
/// sessions).
#[derive(Debug)]
struct BenchSessions {
    max: usize,
    tickets: std::sync::Mutex<std::collections::VecDeque<rustls::client::Tls13ClientSessionValue>>,
    rest: rustls::client::ClientSessionMemoryCache,
}

impl BenchSessions {
    fn with_tickets(max: usize) -> Self {
        Self {
            max,
            tickets: std::sync::Mutex::default(),
            rest: rustls::client::ClientSessionMemoryCache::new(16),
        }
    }

    fn tickets(
        &self,
    ) -> std::sync::MutexGuard<
        '_,
        std::collections::VecDeque<rustls::client::Tls13ClientSessionValue>,
    > {
        self.tickets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

// One bench run talks to one server: the tickets are not keyed by name.
impl rustls::client::ClientSessionStore for BenchSessions {
    fn set_kx_hint(&self, name: rustls::pki_types::ServerName<'static>, group: rustls::NamedGroup) {
        self.rest.set_kx_hint(name, group);
    }

    fn kx_hint(&self, name: &rustls::pki_types::ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.rest.kx_hint(name)
    }

    fn set_tls12_session(
        &self,
        name: rustls::pki_types::ServerName<'static>,
        value: rustls::client::Tls12ClientSessionValue,
    ) {
        self.rest.set_tls12_session(name, value);
    }

    fn tls12_session(
        &self,
        name: &rustls::pki_types::ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.rest.tls12_session(name)
    }

    fn remove_tls12_session(&self, name: &rustls::pki_types::ServerName<'static>) {
        self.rest.remove_tls12_session(name);
    }

    fn insert_tls13_ticket(
        &self,
        _name: rustls::pki_types::ServerName<'static>,
        value: rustls::client::Tls13ClientSessionValue,
    ) {
        let mut t = self.tickets();
        if t.len() >= self.max {
            t.pop_front();
        }
        t.push_back(value);
    }

    fn take_tls13_ticket(
        &self,
        _name: &rustls::pki_types::ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        // The newest first, as rustls' cache does.
        self.tickets().pop_back()
    }
}

/// What every connection shares.
struct Plan {
    target: Target,
    tls: Option<Arc<rustls::ClientConfig>>,
    /// Counts the full TLS handshakes (each verifies a server certificate; a resumed one
    /// does not).
    observer: transport::Observer,
    opts: ConnectOptions,
    run_id: String,
    progress: bool,
    persistent: bool,
}

impl Plan {
    fn new(args: &BenchArgs) -> anyhow::Result<Self> {
        let mut tls_opts = args.tls.options()?;
        tls_opts.resumption = args.resume;
        let target = transport::parse_url(&args.url)?;
        if args.size < HEADER || args.size > MAX_SIZE {
            bail!("--size must be from {HEADER} to {MAX_SIZE} bytes (16 hold the timestamp and sequence)");
        }
        if args
            .duration
            .is_some_and(|d| d == 0 || d > MAX_DURATION_SECS)
        {
            bail!("--duration must be from 1 to {MAX_DURATION_SECS} seconds");
        }
        if args.count.is_some_and(|c| c == 0 || c > MAX_COUNT) {
            bail!("--count must be from 1 to {MAX_COUNT}");
        }
        if args.storm || args.idle {
            if args.connections == 0 || args.connections > MAX_CONNECTIONS {
                bail!("--connections must be from 1 to {MAX_CONNECTIONS}");
            }
            if args.concurrency == 0 || args.concurrency > 1000 {
                bail!("--concurrency must be from 1 to 1000");
            }
        } else {
            if args.publishers == 0
                || args.publishers.saturating_add(args.subscribers) > MAX_CONNECTIONS
            {
                bail!("--pub must be at least 1, and --pub plus --sub at most {MAX_CONNECTIONS}");
            }
            if args.publishers >= 1 << 24 {
                bail!("too many publishers");
            }
        }
        let observer = transport::Observer::new();
        let tls = if target.scheme.is_tls() {
            let config = transport::client_config(&tls_opts, Some(&observer))?;
            Some(if args.resume {
                // rustls' own cache keeps at most 8 TLS 1.3 tickets per server: fewer than
                // `--concurrency` connections may be starting at once, and the ones without a
                // ticket would make full handshakes in a "resumed" storm.
                let mut c = (*config).clone();
                c.resumption = rustls::client::Resumption::store(Arc::new(
                    BenchSessions::with_tickets(2 * args.concurrency as usize + 16),
                ));
                Arc::new(c)
            } else {
                config
            })
        } else {
            None
        };
        let password = match (&args.password, &args.password_file) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(f)) => Some(common::read_password_file(f)?),
            (None, None) => target.password.clone(),
        };
        let mut opts = ConnectOptions::new("")
            .protocol(args.version)
            .keep_alive(60);
        opts.username = args.username.clone().or_else(|| target.username.clone());
        opts.password = password.map(Bytes::from);
        opts.max_inflight = 64;
        opts.incoming_capacity = 4096;
        Ok(Self {
            target,
            tls,
            observer,
            opts,
            run_id: common::random_suffix(),
            progress: !args.json && !args.quiet && std::io::stderr().is_terminal(),
            persistent: args.persistent,
        })
    }

    /// Opens a connection for the load generator: CONNECT / CONNACK, and for a subscriber
    /// SUBSCRIBE / SUBACK, then the stream is handed over as it is.
    async fn open(&self, id: String, subscribe: Option<(&str, QoS)>) -> anyhow::Result<Connected> {
        let io = transport::open_with(&self.target, self.tls.as_ref(), Duration::from_secs(10))
            .await
            .map_err(|e| anyhow::anyhow!(common::explain_transport_error(&e, &self.target)))?;
        let mut opts = self.opts.clone();
        opts.client_id = id;
        if subscribe.is_some() && self.persistent {
            opts = opts.clean_start(false).session_expiry(300);
        }
        let (mut framed, connack) = moat_client::connect_framed(io, &opts).await.map_err(|e| {
            anyhow::anyhow!(common::explain_client_error(
                &e,
                self.opts.username.is_some(),
                self.opts.password.is_some()
            ))
        })?;
        let v5 = opts.protocol.is_v5();
        if let Some((filter, qos)) = subscribe {
            let sub = Packet::Subscribe(Subscribe {
                packet_id: PacketId::MIN,
                properties: moat_client::Properties::default(),
                filters: vec![(
                    filter.to_owned(),
                    SubscriptionOptions {
                        qos,
                        ..SubscriptionOptions::default()
                    },
                )],
            });
            framed.send(&sub).await?;
            let suback = loop {
                match framed.recv_timeout(Duration::from_secs(10)).await {
                    Err(moat_client::ClientError::Timeout(_)) => bail!("no SUBACK within 10 s"),
                    Ok(Some(Packet::SubAck(a))) => break a,
                    Ok(Some(_)) => {}
                    Ok(None) => bail!("the broker closed the connection after SUBSCRIBE"),
                    Err(e) => return Err(e.into()),
                }
            };
            if let Some(rc) = suback.reason_codes.first().filter(|rc| rc.is_error()) {
                bail!(
                    "the broker refused the subscription to {filter}: {} (0x{:02X}); check its ACL",
                    rc.description(),
                    rc.0
                );
            }
        }
        let keep_alive = connack
            .properties
            .server_keep_alive
            .filter(|_| v5)
            .unwrap_or(opts.keep_alive);
        Ok(Connected {
            framed,
            keep_alive: (keep_alive > 0).then(|| Duration::from_secs(u64::from(keep_alive))),
            receive_maximum: connack.properties.receive_maximum.filter(|_| v5),
        })
    }
}

/// Counters the progress line reads.
#[derive(Default)]
struct Live {
    sent: AtomicU64,
    received: AtomicU64,
    errors: AtomicU64,
}

/// One subscriber's findings.
struct SubResult {
    latency: Histogram<u64>,
    received: u64,
    duplicates: u64,
    out_of_order: u64,
    unique: u64,
}

/// Per-publisher sequence tracking.
#[derive(Default)]
struct Sequence {
    highest: Option<u64>,
    gaps: HashSet<u64>,
}

impl Sequence {
    /// Records `n`: returns (new, out of order).
    fn record(&mut self, n: u64) -> (bool, bool) {
        match self.highest {
            None => {
                for missing in 0..n.min(MAX_GAPS as u64) {
                    self.gaps.insert(missing);
                }
                self.highest = Some(n);
                (true, false)
            }
            Some(h) if n > h => {
                for missing in (h + 1)..n {
                    if self.gaps.len() >= MAX_GAPS {
                        break;
                    }
                    self.gaps.insert(missing);
                }
                self.highest = Some(n);
                (true, false)
            }
            Some(_) => {
                if self.gaps.remove(&n) {
                    (true, true)
                } else {
                    (false, false)
                }
            }
        }
    }
}

/// A process's CPU time (user, system) in seconds, from `/proc/PID/stat` (Linux).
fn cpu_seconds(pid: u32) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // In USER_HZ ticks: 100 per second on Linux whatever the kernel's own tick rate.
    Some((utime as f64 / 100.0, stime as f64 / 100.0))
}

fn new_histogram() -> Histogram<u64> {
    // Microseconds, 1 µs to 1 hour, 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))
}

async fn pubsub(plan: &Plan, args: &BenchArgs) -> anyhow::Result<ExitCode> {
    let start = Instant::now();
    let live = Arc::new(Live::default());
    let filter = args.topic.replace("%i", "+");
    let filter = match &args.share {
        Some(group) => format!("$share/{group}/{filter}"),
        None => filter,
    };
    let (stop_tx, stop_rx) = watch::channel(false);

    // Subscribers first, subscribed before anything is published.
    let mut subs = Vec::new();
    for i in 0..args.subscribers {
        let conn = plan
            .open(
                format!("moat-bench-{}-s{i}", plan.run_id),
                Some((filter.as_str(), args.qos)),
            )
            .await
            .with_context(|| format!("subscriber {i} could not connect to {}", plan.target))?;
        subs.push(tokio::spawn(wire::subscriber(
            conn,
            start,
            Arc::clone(&live),
            stop_rx.clone(),
        )));
    }

    let mut conns = Vec::new();
    for i in 0..args.publishers {
        let conn = plan
            .open(format!("moat-bench-{}-p{i}", plan.run_id), None)
            .await
            .with_context(|| format!("publisher {i} could not connect to {}", plan.target))?;
        conns.push(conn);
    }
    let deadline = match (args.duration, args.count) {
        (Some(d), _) => Some(Instant::now() + Duration::from_secs(d)),
        (None, Some(_)) => Some(Instant::now() + Duration::from_secs(MAX_DURATION_SECS)),
        (None, None) => Some(Instant::now() + Duration::from_secs(10)),
    };
    let publishers = u64::from(args.publishers);
    let cpu_start = args.broker_pid.and_then(cpu_seconds);
    let pub_start = Instant::now();
    let mut pubs = Vec::new();
    for (i, conn) in conns.into_iter().enumerate() {
        let index = i as u64;
        let count = args
            .count
            .map(|c| c / publishers + u64::from(index < c % publishers));
        let rate = (args.rate > 0).then(|| args.rate as f64 / publishers as f64);
        // Spread evenly over one period: publisher i of N starts i/N of a period late.
        let phase = rate.map_or(Duration::ZERO, |r| {
            Duration::from_secs_f64(index as f64 / publishers as f64 / r)
        });
        pubs.push(tokio::spawn(wire::publisher(
            conn,
            PublisherJob {
                index,
                topic: args.topic.replace("%i", &i.to_string()),
                qos: args.qos,
                size: args.size,
                count,
                rate,
                phase,
                deadline,
                start,
                drain: Duration::from_secs(args.drain),
            },
            Arc::clone(&live),
        )));
    }

    let progress = plan.progress.then(|| {
        let live = Arc::clone(&live);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            let t0 = Instant::now();
            loop {
                tick.tick().await;
                let secs = t0.elapsed().as_secs_f64().max(0.001);
                let sent = live.sent.load(Ordering::Relaxed);
                let received = live.received.load(Ordering::Relaxed);
                eprint!(
                    "\r{secs:6.1} s  sent {sent:>10} ({:>9.0}/s)  received {received:>10} ({:>9.0}/s)  errors {}   ",
                    sent as f64 / secs,
                    received as f64 / secs,
                    live.errors.load(Ordering::Relaxed)
                );
                let _ = std::io::stderr().flush();
            }
        })
    });

    let mut sent = 0;
    for p in pubs {
        sent += p.await.unwrap_or(0);
    }
    let pub_elapsed = pub_start.elapsed();
    // Drain: wait for the expected deliveries, or for the flow to stop.
    // A shared subscription delivers each message once, to one of the subscribers.
    let copies = if args.share.is_some() {
        u64::from(args.subscribers.min(1))
    } else {
        u64::from(args.subscribers)
    };
    let expected = sent * copies;
    let drain_deadline = Instant::now() + Duration::from_secs(args.drain);
    let mut last = live.received.load(Ordering::Relaxed);
    let mut still = Instant::now();
    while Instant::now() < drain_deadline {
        let now = live.received.load(Ordering::Relaxed);
        if now >= expected {
            break;
        }
        if now != last {
            last = now;
            still = Instant::now();
        } else if still.elapsed() > Duration::from_secs(1) && args.qos == QoS::AtMostOnce {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let recv_elapsed = pub_start.elapsed();
    let broker_split = cpu_start
        .zip(args.broker_pid.and_then(cpu_seconds))
        .map(|(a, b)| (b.0 - a.0, b.1 - a.1));
    let broker_cpu = broker_split.map(|(u, s)| u + s);
    let _ = stop_tx.send(true);
    if let Some(p) = progress {
        p.abort();
        eprintln!();
    }
    let mut latency = new_histogram();
    let (mut received, mut duplicates, mut out_of_order, mut unique) = (0, 0, 0, 0);
    for s in subs {
        if let Ok(r) = s.await {
            let _ = latency.add(&r.latency);
            received += r.received;
            duplicates += r.duplicates;
            out_of_order += r.out_of_order;
            unique += r.unique;
        }
    }
    let losses = expected.saturating_sub(unique);
    let errors = live.errors.load(Ordering::Relaxed);
    let per_sec = |n: u64, d: Duration| n as f64 / d.as_secs_f64().max(1e-9);
    let q = |p: f64| latency.value_at_quantile(p);
    let report = json!({
        "mode": "pubsub",
        "url": plan.target.to_string(),
        "publishers": args.publishers,
        "subscribers": args.subscribers,
        "qos": args.qos as u8,
        "size": args.size,
        "topic": args.topic,
        "target_rate": args.rate,
        "share": args.share,
        "broker_cpu_secs": broker_cpu,
        "broker_cpu_us_per_message": broker_cpu.map(|c| c * 1e6 / received.max(1) as f64),
        // The kernel's share (system calls, and on loopback the peer's TCP receive run inline).
        "broker_sys_us_per_message": broker_split.map(|(_, s)| s * 1e6 / received.max(1) as f64),
        "sent": sent,
        "publish_errors": errors,
        "expected": expected,
        "received": received,
        "losses": losses,
        "duplicates": duplicates,
        "out_of_order": out_of_order,
        "publish_secs": pub_elapsed.as_secs_f64(),
        "elapsed_secs": recv_elapsed.as_secs_f64(),
        "sent_per_sec": per_sec(sent, pub_elapsed),
        "received_per_sec": per_sec(received, recv_elapsed),
        "latency_us": {
            "p50": q(0.50),
            "p90": q(0.90),
            "p99": q(0.99),
            "max": latency.max(),
            "mean": latency.mean(),
            "samples": latency.len(),
        },
    });
    if args.json {
        println!("{report}");
    } else {
        println!(
            "moat bench {}: {} publisher(s), {} subscriber(s), QoS {}, {}-byte payloads, topic {}",
            plan.target, args.publishers, args.subscribers, args.qos as u8, args.size, args.topic
        );
        println!(
            "sent      {sent} msgs in {:.2} s: {:.0} msgs/s{}",
            pub_elapsed.as_secs_f64(),
            per_sec(sent, pub_elapsed),
            if errors > 0 {
                format!(" ({errors} publish errors)")
            } else {
                String::new()
            }
        );
        println!(
            "received  {received} of {expected} expected in {:.2} s: {:.0} msgs/s",
            recv_elapsed.as_secs_f64(),
            per_sec(received, recv_elapsed)
        );
        if !latency.is_empty() {
            println!(
                "latency   p50 {}  p90 {}  p99 {}  max {}",
                us(q(0.50)),
                us(q(0.90)),
                us(q(0.99)),
                us(latency.max())
            );
        }
        println!("losses {losses}  duplicates {duplicates}  out of order {out_of_order}");
    }
    let problem = errors > 0 || (args.qos != QoS::AtMostOnce && losses > 0);
    Ok(if problem {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn us(v: u64) -> String {
    if v >= 10_000 {
        format!("{:.1} ms", v as f64 / 1000.0)
    } else {
        format!("{:.3} ms", v as f64 / 1000.0)
    }
}

fn header(payload: &[u8]) -> Option<(u64, u64)> {
    let ts = u64::from_be_bytes(payload.get(0..8)?.try_into().ok()?);
    let seq = u64::from_be_bytes(payload.get(8..16)?.try_into().ok()?);
    Some((ts, seq))
}

async fn storm(plan: Arc<Plan>, args: &BenchArgs) -> anyhow::Result<ExitCode> {
    let total = args.connections;
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.duration.unwrap_or(MAX_DURATION_SECS));
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency.min(total) {
        let plan = Arc::clone(&plan);
        let next = Arc::clone(&next);
        let done = Arc::clone(&done);
        tasks.push(tokio::spawn(async move {
            let mut hist = new_histogram();
            let mut failed = 0u64;
            let mut first_error = None;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= u64::from(total) || Instant::now() >= deadline {
                    break;
                }
                let t = Instant::now();
                match plan
                    .open(format!("moat-storm-{}-{i}", plan.run_id), None)
                    .await
                {
                    Ok(mut conn) => {
                        let _ = hist.record((t.elapsed().as_micros() as u64).max(1));
                        wire::disconnect(&mut conn.framed).await;
                    }
                    Err(e) => {
                        failed += 1;
                        first_error.get_or_insert_with(|| format!("{e:#}"));
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            (hist, failed, first_error)
        }));
    }
    let progress = plan.progress.then(|| {
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tick.tick().await;
                let secs = start.elapsed().as_secs_f64().max(0.001);
                let n = done.load(Ordering::Relaxed);
                eprint!(
                    "\r{secs:6.1} s  connections {n:>7} of {total} ({:>7.0}/s)   ",
                    n as f64 / secs
                );
                let _ = std::io::stderr().flush();
            }
        })
    });
    let mut latency = new_histogram();
    let mut failed = 0;
    let mut first_error = None;
    for t in tasks {
        if let Ok((h, f, e)) = t.await {
            let _ = latency.add(&h);
            failed += f;
            if first_error.is_none() {
                first_error = e;
            }
        }
    }
    let elapsed = start.elapsed();
    if let Some(p) = progress {
        p.abort();
        eprintln!();
    }
    let succeeded = latency.len();
    let rate = succeeded as f64 / elapsed.as_secs_f64().max(1e-9);
    let q = |p: f64| latency.value_at_quantile(p);
    // Handshakes that verified a server certificate were full ones; with --resume every other
    // one resumed a session (what the broker accepted, not only what was offered).
    let full = plan.observer.snapshot().server_certs_verified;
    let tls_resumed = plan
        .target
        .scheme
        .is_tls()
        .then(|| succeeded.saturating_sub(full));
    let report = json!({
        "mode": "storm",
        "url": plan.target.to_string(),
        "tls": plan.target.scheme.is_tls(),
        "connections": total,
        "concurrency": args.concurrency,
        "succeeded": succeeded,
        "failed": failed,
        "elapsed_secs": elapsed.as_secs_f64(),
        "connections_per_sec": rate,
        "tls_full_handshakes": plan.target.scheme.is_tls().then_some(full),
        "tls_resumed": tls_resumed,
        "connect_latency_us": {
            "p50": q(0.50),
            "p90": q(0.90),
            "p99": q(0.99),
            "max": latency.max(),
            "mean": latency.mean(),
        },
        "first_error": first_error,
    });
    if args.json {
        println!("{report}");
    } else {
        println!(
            "moat bench --storm {}: {total} connections, {} at a time{}",
            plan.target,
            args.concurrency,
            match (plan.target.scheme.is_tls(), args.resume) {
                (true, false) => ", full TLS handshakes",
                (true, true) => ", TLS sessions resumed after the first",
                (false, _) => "",
            }
        );
        println!(
            "connected {succeeded} ({failed} failed) in {:.2} s: {rate:.0} connections/s",
            elapsed.as_secs_f64()
        );
        if let Some(resumed) = tls_resumed {
            println!("TLS: {full} full handshakes, {resumed} resumed");
        }
        if succeeded > 0 {
            println!(
                "connect + CONNACK latency  p50 {}  p90 {}  p99 {}  max {}",
                us(q(0.50)),
                us(q(0.90)),
                us(q(0.99)),
                us(latency.max())
            );
        }
        if let Some(e) = &first_error {
            println!("first error: {e}");
        }
    }
    Ok(if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{BufMut, BytesMut};

    #[test]
    fn sequences_count_duplicates_and_reordering() {
        let mut s = Sequence::default();
        assert_eq!(s.record(0), (true, false));
        assert_eq!(s.record(1), (true, false));
        assert_eq!(s.record(3), (true, false));
        assert_eq!(s.record(2), (true, true));
        assert_eq!(s.record(2), (false, false));
        assert_eq!(s.record(3), (false, false));
        let mut late_start = Sequence::default();
        assert_eq!(late_start.record(2), (true, false));
        assert_eq!(late_start.record(0), (true, true));
    }

    #[test]
    fn payload_header_round_trips() {
        let mut b = BytesMut::new();
        b.put_u64(123);
        b.put_u64((5 << 40) | 9);
        b.put_slice(&[0; 4]);
        let (ts, seq) = header(&b).unwrap();
        assert_eq!(ts, 123);
        assert_eq!((seq >> 40, seq & ((1 << 40) - 1)), (5, 9));
        assert_eq!(header(&[0; 15]), None);
    }
}
