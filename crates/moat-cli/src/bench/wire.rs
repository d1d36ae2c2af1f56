//! The load generator's side of each connection.
//!
//! A load generator has to be cheaper than the broker it measures, and it runs on one core: a
//! publisher encodes as many PUBLISH packets as are due (up to [`BATCH_BYTES`]) and writes them
//! with one write; a subscriber reads up to [`READ_BYTES`] at a time, decodes every packet in
//! the buffer and writes the acknowledgements of a whole read with one write. Each connection
//! is a [`Framed`] over moat-client's transport (TCP, TLS, WebSocket), fed packets and flushed
//! once a batch; no client task or channel sits in between. The broker under test sees ordinary MQTT clients that
//! happen to send in large writes, as a busy gateway does.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use moat_client::transport::BoxStream;
use moat_client::{Framed, Packet, PacketId, Properties, PubAck, Publish, QoS};
use tokio::io::{AsyncWrite, ReadHalf};
use tokio::sync::{mpsc, watch, Semaphore};

use super::{header, Live, Sequence, SubResult, HEADER};

/// The most bytes a publisher encodes before writing.
pub(super) const BATCH_BYTES: usize = 32 * 1024;
/// Read size.
const READ_BYTES: usize = 64 * 1024;
/// QoS 1 and 2 messages a publisher has in flight at most (less when a v5 broker's Receive
/// Maximum is lower).
pub(super) const WINDOW: usize = 256;

/// A connected client: the connection (with any bytes read after the CONNACK and the protocol
/// version), the keep-alive the broker expects (none when 0) and its receive maximum.
pub(super) struct Connected {
    pub(super) framed: Framed<BoxStream>,
    pub(super) keep_alive: Option<Duration>,
    pub(super) receive_maximum: Option<u16>,
}

/// What one publisher does.
pub(super) struct PublisherJob {
    pub(super) index: u64,
    pub(super) topic: String,
    pub(super) qos: QoS,
    pub(super) size: usize,
    pub(super) count: Option<u64>,
    pub(super) rate: Option<f64>,
    /// With a rate: how far into its first period this publisher starts, so that many paced
    /// publishers spread their messages over the period instead of sending together.
    pub(super) phase: Duration,
    pub(super) deadline: Option<Instant>,
    pub(super) start: Instant,
    /// How long to wait for the last acknowledgements.
    pub(super) drain: Duration,
}

/// Queues `packet` for the next flush.
fn feed<IO>(framed: &mut Framed<IO>, packet: &Packet) {
    // The bench builds only packets the codec accepts (topic and sizes were checked up front).
    if let Err(e) = framed.feed(packet) {
        unreachable!("bench packet not encodable: {e}");
    }
}

/// Publishes until the count or the deadline; returns how many were sent (QoS 0) or
/// acknowledged (QoS 1 and 2).
pub(super) async fn publisher(conn: Connected, job: PublisherJob, live: Arc<Live>) -> u64 {
    let (reader, mut writer) = conn.framed.split();
    let window = usize::from(conn.receive_maximum.unwrap_or(u16::MAX)).clamp(1, WINDOW);
    let credits = Arc::new(Semaphore::new(window));
    let acked = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (rel_tx, mut rel_rx) = mpsc::unbounded_channel();
    let acks = tokio::spawn(publisher_acks(
        reader,
        Arc::clone(&credits),
        Arc::clone(&acked),
        rel_tx,
        Arc::clone(&live),
    ));
    let padding = vec![0u8; job.size - HEADER];
    let began = Instant::now() + job.phase;
    let mut n: u64 = 0;
    let mut next_id = PacketId::MIN;
    let mut rel_open = true;
    let reliable = job.qos != QoS::AtMostOnce;
    loop {
        let finished =
            job.count.is_some_and(|c| n >= c) || job.deadline.is_some_and(|d| Instant::now() >= d);
        if finished {
            break;
        }
        // How many messages are due now.
        let due = match job.rate {
            Some(_) if Instant::now() < began => 0,
            Some(rate) => ((began.elapsed().as_secs_f64() * rate) as u64 + 1).saturating_sub(n),
            None => u64::MAX,
        };
        let due = match job.count {
            Some(c) => due.min(c - n),
            None => due,
        };
        let mut batch = 0u64;
        if due == 0 {
            // Ahead of the rate: sleep until the next message is due (a paced publisher wakes
            // once per message, so thousands of them stay cheap for the load generator);
            // PUBRELs still go out while waiting.
            let next = began + Duration::from_secs_f64(n as f64 / job.rate.unwrap_or(1.0));
            let next = match job.deadline {
                Some(d) => next.min(d),
                None => next,
            };
            tokio::select! {
                biased;
                Some(id) = rel_rx.recv(), if rel_open => pubrel(&mut writer, id),
                () = tokio::time::sleep_until(next.into()) => {}
            }
        } else if reliable {
            // Wait for a window credit (or a PUBREL to send).
            tokio::select! {
                biased;
                r = rel_rx.recv(), if rel_open => match r {
                    Some(id) => pubrel(&mut writer, id),
                    None => rel_open = false,
                },
                permit = credits.acquire() => match permit {
                    Ok(p) => {
                        p.forget();
                        publish(&mut writer, &job, n, &padding, &mut next_id);
                        n += 1;
                        batch += 1;
                    }
                    Err(_) => break,
                },
            }
        }
        // Everything else that is due and allowed, up to a batch.
        while rel_open {
            match rel_rx.try_recv() {
                Ok(id) => pubrel(&mut writer, id),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => rel_open = false,
            }
        }
        while writer.write_buffer().len() < BATCH_BYTES && batch < due {
            if reliable {
                match credits.try_acquire() {
                    Ok(p) => p.forget(),
                    Err(_) => break,
                }
            }
            publish(&mut writer, &job, n, &padding, &mut next_id);
            n += 1;
            batch += 1;
        }
        if writer.write_buffer().is_empty() {
            continue;
        }
        if writer.flush().await.is_err() {
            live.errors.fetch_add(1, Ordering::Relaxed);
            break;
        }
        if !reliable {
            live.sent.store(n, Ordering::Relaxed);
        }
    }
    if reliable {
        // The last acknowledgements (PUBRELs still go out meanwhile).
        let until = tokio::time::Instant::now() + job.drain;
        while acked.load(Ordering::Relaxed) < n {
            tokio::select! {
                r = rel_rx.recv(), if rel_open => match r {
                    Some(id) => {
                        pubrel(&mut writer, id);
                        let _ = writer.flush().await;
                    }
                    None => rel_open = false,
                },
                () = tokio::time::sleep_until(until) => break,
                _ = credits.acquire_many(window as u32) => break,
            }
        }
    }
    disconnect(&mut writer).await;
    acks.abort();
    if reliable {
        acked.load(Ordering::Relaxed)
    } else {
        n
    }
}

fn publish<IO>(
    writer: &mut Framed<IO>,
    job: &PublisherJob,
    n: u64,
    padding: &[u8],
    next_id: &mut PacketId,
) {
    let mut payload = BytesMut::with_capacity(job.size);
    payload.put_u64(u64::try_from(job.start.elapsed().as_nanos()).unwrap_or(u64::MAX));
    payload.put_u64((job.index << 40) | n);
    payload.put_slice(padding);
    let packet_id = (job.qos != QoS::AtMostOnce).then(|| {
        let id = *next_id;
        *next_id = id.next();
        id
    });
    let p = Packet::Publish(Publish {
        dup: false,
        qos: job.qos,
        retain: false,
        topic: job.topic.clone(),
        packet_id,
        properties: Properties::default(),
        payload: payload.freeze(),
    });
    feed(writer, &p);
}

fn pubrel<IO>(writer: &mut Framed<IO>, id: PacketId) {
    feed(writer, &Packet::PubRel(PubAck::new(id)));
}

/// Reads a publisher's acknowledgements: PUBACK and PUBCOMP return a window credit, PUBREC
/// asks the writer for a PUBREL. A refusal (v5 reason code 0x80 or above) counts as an error.
async fn publisher_acks(
    mut reader: Framed<ReadHalf<BoxStream>>,
    credits: Arc<Semaphore>,
    acked: Arc<std::sync::atomic::AtomicU64>,
    rel_tx: mpsc::UnboundedSender<PacketId>,
    live: Arc<Live>,
) {
    loop {
        loop {
            match reader.recv_buffered() {
                Ok(Some(Packet::PubAck(a) | Packet::PubComp(a))) => {
                    if a.reason_code.is_error() {
                        live.errors.fetch_add(1, Ordering::Relaxed);
                    }
                    acked.fetch_add(1, Ordering::Relaxed);
                    credits.add_permits(1);
                }
                Ok(Some(Packet::PubRec(a))) => {
                    if a.reason_code.is_error() {
                        live.errors.fetch_add(1, Ordering::Relaxed);
                        acked.fetch_add(1, Ordering::Relaxed);
                        credits.add_permits(1);
                    } else if rel_tx.send(a.packet_id).is_err() {
                        return;
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => {
                    live.errors.fetch_add(1, Ordering::Relaxed);
                    credits.close();
                    return;
                }
            }
        }
        match reader.read_more().await {
            Ok(0) | Err(_) => {
                credits.close();
                return;
            }
            Ok(_) => {}
        }
    }
}

/// Receives until told to stop: latency of every message, and each publisher's sequence.
pub(super) async fn subscriber(
    conn: Connected,
    start: Instant,
    live: Arc<Live>,
    mut stop: watch::Receiver<bool>,
) -> SubResult {
    let mut result = SubResult {
        latency: super::new_histogram(),
        received: 0,
        duplicates: 0,
        out_of_order: 0,
        unique: 0,
    };
    let mut framed = conn.framed;
    framed.set_read_size(READ_BYTES);
    let mut sequences: Vec<Sequence> = Vec::new();
    let ping_every = conn.keep_alive.map_or(Duration::from_secs(3600), |k| k / 2);
    let mut ping = tokio::time::interval(ping_every.max(Duration::from_secs(1)));
    ping.tick().await;
    'run: loop {
        // What is already buffered first (the first pass: bytes that came with the SUBACK).
        let mut batch = 0u64;
        loop {
            let packet = match framed.recv_buffered() {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(_) => {
                    live.errors.fetch_add(1, Ordering::Relaxed);
                    break 'run;
                }
            };
            let Packet::Publish(m) = packet else {
                if let Packet::PubRel(a) = packet {
                    feed(&mut framed, &Packet::PubComp(PubAck::new(a.packet_id)));
                }
                continue;
            };
            match (m.qos, m.packet_id) {
                (QoS::AtLeastOnce, Some(id)) => {
                    feed(&mut framed, &Packet::PubAck(PubAck::new(id)));
                }
                (QoS::ExactlyOnce, Some(id)) => {
                    feed(&mut framed, &Packet::PubRec(PubAck::new(id)));
                }
                _ => {}
            }
            batch += 1;
            let Some((sent_at, seq)) = header(&m.payload) else {
                continue;
            };
            let now = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
            let _ = result
                .latency
                .record((now.saturating_sub(sent_at) / 1000).max(1));
            let publisher = usize::try_from(seq >> 40).unwrap_or(usize::MAX);
            if publisher >= sequences.len() {
                if publisher > (1 << 24) {
                    continue;
                }
                sequences.resize_with(publisher + 1, Sequence::default);
            }
            let (new, late) = sequences[publisher].record(seq & ((1 << 40) - 1));
            if new {
                result.unique += 1;
            } else {
                result.duplicates += 1;
            }
            if late {
                result.out_of_order += 1;
            }
        }
        result.received += batch;
        live.received.fetch_add(batch, Ordering::Relaxed);
        if !framed.write_buffer().is_empty() && framed.flush().await.is_err() {
            break;
        }
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            read = framed.read_more() => match read {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            },
            _ = ping.tick() => {
                feed(&mut framed, &Packet::PingReq);
                if framed.flush().await.is_err() {
                    break;
                }
            }
        }
    }
    disconnect(&mut framed).await;
    result
}

/// Ends a connection cleanly: DISCONNECT (success), then the write side is shut down. Errors
/// are ignored: the run is over either way.
pub(super) async fn disconnect<W: AsyncWrite + Unpin>(framed: &mut Framed<W>) {
    let bye = Packet::Disconnect(moat_client::Disconnect {
        reason_code: moat_client::ReasonCode::SUCCESS,
        properties: Properties::default(),
    });
    feed(framed, &bye);
    let _ = framed.shutdown().await;
}
