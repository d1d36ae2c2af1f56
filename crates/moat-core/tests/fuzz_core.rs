//! The core fuzz target's interpreter on stable: the committed corpus (`fuzz/corpus/core/`) is
//! replayed, the seeds in it are checked against the generator below, and a fixed budget of
//! pseudo-random inputs from a fixed seed is run. See `tests/support/interp.rs` for the input
//! format and the invariants, and `fuzz/README.md` for longer runs with libFuzzer.

#[path = "support/interp.rs"]
mod interp;

use std::fs;
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use moat_codec::{
    encode, Connect, Packet, PacketId, Properties, ProtocolVersion, PubAck, Publish, QoS,
    Subscribe, SubscriptionOptions,
};

use interp::{deep_topic_arg, op, raw_topic_arg, table_topic, topic, Script};

/// The corpus file with a 20,000-level filter and topic (it overflowed the stack in the
/// recursive topic trees; now refused for `max_topic_levels`).
const DEEP_SEED: &str = "deep-topic-20000";

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/core")
}

fn corpus() -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir();
    let mut paths: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let name = path
                .file_name()
                .expect("a file name")
                .to_string_lossy()
                .into_owned();
            let bytes = fs::read(&path).unwrap_or_else(|e| panic!("reading {name}: {e}"));
            (name, bytes)
        })
        .collect()
}

#[test]
fn corpus_replays_without_broken_invariants() {
    let corpus = corpus();
    assert!(corpus.len() >= 30, "only {} corpus files", corpus.len());
    for (name, bytes) in &corpus {
        match std::panic::catch_unwind(|| interp::run(bytes)) {
            Ok(report) => {
                eprintln!("{name}: {report:?}");
                if name == DEEP_SEED {
                    // The SUBSCRIBE, PUBLISH and UNSUBSCRIBE of 20,000 levels reach the broker
                    // (and are refused).
                    assert_eq!(report.over_limits, 3, "{name}: {report:?}");
                }
            }
            Err(panic) => {
                eprintln!("corpus file {name} failed");
                std::panic::resume_unwind(panic);
            }
        }
    }
}

/// The generated seeds are in the corpus as the generator writes them. To rewrite them after
/// changing the generator or the input format: `MOAT_WRITE_CORPUS=1 cargo test -p moat-core
/// --test fuzz_core seeds`.
#[test]
fn seeds_in_the_corpus_match_the_generator() {
    let dir = corpus_dir();
    let write = std::env::var_os("MOAT_WRITE_CORPUS").is_some();
    for (name, bytes) in seeds() {
        let path = dir.join(&name);
        if write {
            fs::create_dir_all(&dir).expect("creating the corpus directory");
            fs::write(&path, &bytes).unwrap_or_else(|e| panic!("writing {name}: {e}"));
            continue;
        }
        let committed = fs::read(&path)
            .unwrap_or_else(|e| panic!("{name}: {e}; rewrite the seeds with MOAT_WRITE_CORPUS=1"));
        assert!(
            committed == bytes,
            "{name} differs from the generator; rewrite the seeds with MOAT_WRITE_CORPUS=1"
        );
    }
}

/// Pseudo-random inputs from a fixed seed: most are sequences of well-formed operations with
/// arguments that reach the broker's interesting paths, some are bytes of any kind.
#[test]
fn seeded_random_inputs_keep_the_invariants() {
    let mut rng = XorShift(0x6d6f_6174_2d63_6f72);
    let mut total = interp::Report::default();
    for i in 0..3_000 {
        let input = if i % 4 == 3 {
            let len = 1 + rng.below(400);
            rng.bytes(len)
        } else {
            random_input(&mut rng)
        };
        match std::panic::catch_unwind(|| interp::run(&input)) {
            Ok(r) => {
                total.steps += r.steps;
                total.accepted += r.accepted;
                total.sent += r.sent;
                total.delivered += r.delivered;
                total.over_limits += r.over_limits;
                total.keep_alive_closes += r.keep_alive_closes;
            }
            Err(panic) => {
                eprintln!("random input {i} failed: {input:?}");
                std::panic::resume_unwind(panic);
            }
        }
    }
    eprintln!("{total:?}");
    // The inputs must reach the broker, or this test checks nothing.
    assert!(total.accepted > 10_000, "{total:?}");
    assert!(total.delivered > 2_500, "{total:?}");
    assert!(total.over_limits > 500, "{total:?}");
    assert!(total.keep_alive_closes > 100, "{total:?}");
}

/// xorshift64: a fixed, dependency-free stream of pseudo-random bytes.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn byte(&mut self) -> u8 {
        self.next().to_le_bytes()[3]
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }

    /// A number in `0..n`.
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

// ---- structured pseudo-random inputs ----

/// A sequence of operations with arguments chosen so that clients mostly connect, subscribe,
/// publish and answer on topics that match (see `interp` for the layout of each operation).
fn random_input(rng: &mut XorShift) -> Vec<u8> {
    // Mostly the default configuration, sometimes another one.
    let config = if rng.chance(50) { 0 } else { rng.byte() };
    let mut s = Script::new(config);
    // Three clients usually connect and subscribe first.
    for slot in 0..3 {
        if rng.chance(80) {
            let version = if rng.chance(50) { V5 } else { V311 };
            let expiry = u8::try_from(rng.below(interp::EXPIRIES.len())).unwrap_or(0);
            s = s.connect(slot, version, rng.chance(50), expiry);
            if rng.chance(80) {
                s = s.subscribe(slot, &random_topic(rng, false), rng.byte());
            }
        }
    }
    let ops = 5 + rng.below(60);
    for _ in 0..ops {
        // Mostly three clients, so that they meet.
        let slots = if rng.chance(80) { 3 } else { interp::SLOTS };
        let slot = u8::try_from(rng.below(slots)).unwrap_or(0);
        s = match rng.below(100) {
            0..=7 => {
                let mut flags = rng.byte();
                if rng.chance(75) {
                    flags &= !2;
                }
                let props = if rng.chance(90) {
                    rng.byte() & 0x7F
                } else {
                    rng.byte()
                };
                let keep_alive = if rng.chance(70) { 0 } else { rng.byte() };
                let mut args = vec![slot, rng.byte() % 3, flags, rng.byte(), keep_alive, props];
                if flags & 2 != 0 {
                    args.extend(random_topic(rng, true));
                    args.push(rng.byte());
                }
                s.op(op::CONNECT, &args)
            }
            8..=13 => {
                let version = if rng.chance(50) { V5 } else { V311 };
                let expiry = u8::try_from(rng.below(interp::EXPIRIES.len())).unwrap_or(0);
                s.connect(slot, version, rng.chance(30), expiry)
            }
            14..=35 => {
                let flags = if rng.chance(70) {
                    rng.byte() & 0x0F
                } else {
                    rng.byte()
                };
                let mut args = vec![slot, flags];
                if flags & 0x10 != 0 {
                    args.push(rng.byte());
                }
                if flags & 0x20 != 0 {
                    args.push(rng.byte());
                }
                args.extend(random_topic(rng, true));
                args.push(rng.byte());
                s.op(op::PUBLISH, &args)
            }
            36..=49 => {
                let count = rng.byte() % 3;
                let mut args = vec![slot, count];
                for _ in 0..=count {
                    args.extend(random_topic(rng, false));
                    args.push(rng.byte());
                }
                args.push(if rng.chance(80) { 0 } else { rng.byte() });
                s.op(op::SUBSCRIBE, &args)
            }
            50..=54 => {
                let count = rng.byte() % 3;
                let mut args = vec![slot, count];
                for _ in 0..=count {
                    args.extend(random_topic(rng, false));
                }
                s.op(op::UNSUBSCRIBE, &args)
            }
            55..=58 => {
                let id = 1 + rng.byte() % 8;
                s.op(op::ACK, &[slot, rng.byte(), id, rng.byte()])
            }
            59..=72 => s.answer(slot),
            73..=76 => s.op(op::DISCONNECT, &[slot, rng.byte(), rng.byte()]),
            77..=80 => s.op(op::LOSE, &[slot]),
            81..=88 => s.advance(rng.byte()),
            89..=94 => s.raw(slot, &random_wire(rng)),
            95..=97 => s.op(op::PING, &[slot]),
            98 => s.op(op::STALE, &[slot]),
            _ if rng.chance(20) => s.op(op::SHUTDOWN, &[]),
            _ => s,
        };
    }
    s.into_bytes()
}

/// Topic argument bytes: mostly a valid topic name (`name`) or filter from the table, sometimes
/// any table entry, a built, deep or raw one.
fn random_topic(rng: &mut XorShift, name: bool) -> Vec<u8> {
    let valid = |t: &str| {
        if name {
            moat_core::topic::validate_topic_name(t).is_ok()
        } else {
            moat_core::topic::Filter::parse(t).is_ok()
        }
    };
    // Most of the time, a few topics and filters that match each other.
    let common: &[&str] = if name {
        &["a", "a/b", "b"]
    } else {
        &["#", "a/#", "a/+", "a/b", "b"]
    };
    match rng.below(100) {
        0..=39 => vec![table_topic(common[rng.below(common.len())])[0]],
        40..=69 => {
            let valid: Vec<usize> = (0..interp::TOPICS.len())
                .filter(|&i| valid(interp::TOPICS[i]))
                .collect();
            vec![u8::try_from(valid[rng.below(valid.len())]).unwrap_or(0)]
        }
        70..=74 => vec![u8::try_from(rng.below(interp::TOPICS.len())).unwrap_or(0)],
        75..=84 => {
            let n = rng.byte() & 7;
            let mut v = vec![topic::BUILT | n];
            for _ in 0..=n {
                v.push(rng.byte());
            }
            v
        }
        85..=89 => {
            // Mostly below the default limit of 128 levels, sometimes around it, sometimes far
            // beyond it or beyond 4,096 bytes.
            let depth = match rng.below(10) {
                0..=5 => rng.below(128),
                6..=8 => 120 + rng.below(16),
                _ => rng.below(5_000),
            };
            deep_topic_arg(u16::try_from(depth).unwrap_or(1), rng.byte())
        }
        _ => {
            const ALPHABET: &[u8] = b"ab/+#$\0\xff";
            let n = rng.below(8);
            let raw: Vec<u8> = (0..n)
                .map(|_| ALPHABET[rng.below(ALPHABET.len())])
                .collect();
            raw_topic_arg(&raw)
        }
    }
}

/// Bytes a client sends: encoded packets with odd but decodable fields, sometimes with one
/// byte changed, or a few random bytes.
fn random_wire(rng: &mut XorShift) -> Vec<u8> {
    if rng.chance(15) {
        let n = rng.below(24);
        return rng.bytes(n);
    }
    let version = [
        ProtocolVersion::V3_1,
        ProtocolVersion::V3_1_1,
        ProtocolVersion::V5,
    ][rng.below(3)];
    let v5 = version.is_v5();
    let mut packets = Vec::new();
    for _ in 0..1 + rng.below(3) {
        let id = PacketId::new(1 + rng.below(8) as u16).expect("non-zero");
        let topic = interp::TOPICS[rng.below(interp::TOPICS.len())];
        let mut properties = Properties::default();
        let packet = match rng.below(9) {
            0 => raw_connect(["c0", "c1", "", "x"][rng.below(4)], version, rng.chance(50)),
            1 => {
                let qos = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce][rng.below(3)];
                if v5 && rng.chance(50) {
                    properties.topic_alias = Some(1 + rng.below(3) as u16);
                    properties.message_expiry_interval = Some(rng.below(3) as u32);
                    properties.user_properties.push(("k".into(), "v".into()));
                }
                let len = rng.below(4);
                Packet::Publish(Publish {
                    dup: rng.chance(20),
                    qos,
                    retain: rng.chance(30),
                    topic: topic.into(),
                    packet_id: (qos != QoS::AtMostOnce).then_some(id),
                    properties,
                    payload: Bytes::from(rng.bytes(len)),
                })
            }
            2 => {
                if v5 && rng.chance(50) {
                    properties
                        .subscription_identifiers
                        .push(1 + rng.below(5) as u32);
                }
                let mut sub = raw_subscribe(topic, QoS::AtLeastOnce);
                sub.properties = properties;
                sub.packet_id = id;
                Packet::Subscribe(sub)
            }
            3 => Packet::Unsubscribe(moat_codec::Unsubscribe {
                packet_id: id,
                properties,
                filters: vec![topic.into()],
            }),
            4..=6 => {
                let mut ack = PubAck::new(id);
                if v5 && rng.chance(30) {
                    ack.reason_code =
                        moat_codec::ReasonCode([0x00, 0x10, 0x80, 0x92][rng.below(4)]);
                }
                match rng.below(4) {
                    0 => Packet::PubAck(ack),
                    1 => Packet::PubRec(ack),
                    2 => Packet::PubRel(ack),
                    _ => Packet::PubComp(ack),
                }
            }
            7 => {
                let mut d = moat_codec::Disconnect::default();
                if v5 {
                    d.reason_code = moat_codec::ReasonCode([0x00, 0x04, 0x81][rng.below(3)]);
                    if rng.chance(50) {
                        d.properties.session_expiry_interval = Some(rng.below(10) as u32);
                    }
                }
                Packet::Disconnect(d)
            }
            _ if v5 => Packet::Auth(moat_codec::Auth::default()),
            _ => Packet::PingReq,
        };
        packets.push(packet);
    }
    let mut bytes = BytesMut::new();
    for p in &packets {
        // A packet the encoder refuses is left out.
        let _ = encode(p, version, &mut bytes);
    }
    let mut bytes = bytes.to_vec();
    if !bytes.is_empty() && rng.chance(20) {
        let i = rng.below(bytes.len());
        bytes[i] = rng.byte();
    }
    bytes
}

// ---- the seed generator ----

const V311: u8 = 1;
const V5: u8 = 2;
/// Indexes into the interpreter's expiry table: none, 5 s, 3600 s, never.
const NO_EXPIRY: u8 = 0;
const EXPIRY_5S: u8 = 2;
const EXPIRY_HOUR: u8 = 4;
const EXPIRY_NEVER: u8 = 5;
/// Indexes into the interpreter's advance table.
const ADVANCE_1S: u8 = 3;
const ADVANCE_10S: u8 = 6;
const ADVANCE_100S: u8 = 9;

fn t(name: &str) -> Vec<u8> {
    table_topic(name)
}

/// Bytes of packets as a client of `version` sends them.
fn wire(version: ProtocolVersion, packets: &[Packet]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    for p in packets {
        encode(p, version, &mut buf).unwrap_or_else(|e| panic!("{p:?}: {e}"));
    }
    buf.to_vec()
}

fn raw_connect(id: &str, version: ProtocolVersion, clean: bool) -> Packet {
    Packet::Connect(Box::new(Connect {
        protocol: version,
        clean_start: clean,
        keep_alive: 30,
        client_id: id.into(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    }))
}

fn raw_publish(topic: &str, qos: QoS, id: u16, retain: bool) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain,
        topic: topic.into(),
        packet_id: PacketId::new(id),
        properties: Properties::default(),
        payload: Bytes::from_static(b"raw"),
    })
}

fn raw_subscribe(filter: &str, qos: QoS) -> Subscribe {
    Subscribe {
        packet_id: PacketId::MIN,
        properties: Properties::default(),
        filters: vec![(
            filter.into(),
            SubscriptionOptions {
                qos,
                ..Default::default()
            },
        )],
    }
}

/// The named seeds: one scenario each, then pseudo-random ones.
fn seeds() -> Vec<(String, Vec<u8>)> {
    let mut seeds: Vec<(&str, Script)> = vec![
        (
            "seed-v311-qos1-pubsub",
            Script::new(0)
                .connect(0, V311, true, NO_EXPIRY)
                .subscribe(0, &t("a/#"), 1)
                .connect(1, V311, true, NO_EXPIRY)
                .publish(1, 1, false, &t("a/b"), 3)
                .answer(0)
                .answer(1),
        ),
        (
            "seed-v5-qos2-both-ways",
            Script::new(0)
                .connect(0, V5, true, NO_EXPIRY)
                .subscribe(0, &t("a/+"), 2)
                .publish(0, 2, false, &t("a/b"), 4)
                .answer(0)
                .answer(0)
                .answer(0),
        ),
        (
            "seed-persistent-offline-queue",
            Script::new(0)
                .connect(0, V311, false, NO_EXPIRY)
                .subscribe(0, &t("a/b"), 2)
                .op(op::LOSE, &[0])
                .connect(1, V5, true, NO_EXPIRY)
                .publish(1, 1, false, &t("a/b"), 1)
                .publish(1, 2, false, &t("a/b"), 2)
                .publish(1, 0, false, &t("a/b"), 3)
                .connect(0, V311, false, NO_EXPIRY)
                .answer(0)
                .answer(0),
        ),
        (
            "seed-unacked-resent-after-reconnect",
            Script::new(0)
                .connect(0, V5, false, EXPIRY_HOUR)
                .subscribe(0, &t("#"), 2)
                .connect(1, V311, true, NO_EXPIRY)
                .publish(1, 2, false, &t("b"), 2)
                .publish(1, 1, false, &t("b"), 2)
                .op(op::LOSE, &[0])
                .connect(0, V5, false, EXPIRY_HOUR)
                .answer(0)
                .op(op::LOSE, &[0])
                .connect(0, V5, false, EXPIRY_HOUR)
                .answer(0),
        ),
        (
            "seed-takeover",
            Script::new(0)
                .connect(0, V5, false, EXPIRY_NEVER)
                .subscribe(0, &t("a"), 1)
                .connect(0, V5, false, EXPIRY_NEVER)
                .connect(0, V311, true, NO_EXPIRY)
                .publish(0, 1, false, &t("a"), 1)
                .connect(0, V5, true, EXPIRY_5S),
        ),
        (
            "seed-session-expiry",
            Script::new(0)
                .connect(2, V5, true, EXPIRY_5S)
                .subscribe(2, &t("a/c"), 1)
                .op(op::DISCONNECT, &[2, 0, 0])
                .connect(1, V311, true, NO_EXPIRY)
                .publish(1, 1, false, &t("a/c"), 1)
                .advance(ADVANCE_1S)
                .connect(2, V5, false, EXPIRY_5S)
                .op(op::DISCONNECT, &[2, 0, 0])
                .advance(ADVANCE_10S)
                .connect(2, V5, false, EXPIRY_5S),
        ),
        (
            "seed-disconnect-changes-expiry",
            Script::new(0)
                .connect(2, V5, true, EXPIRY_5S)
                .op(op::DISCONNECT, &[2, 0, 5])
                .connect(2, V5, true, NO_EXPIRY)
                .op(op::DISCONNECT, &[2, 0, 3])
                .connect(2, V5, false, NO_EXPIRY),
        ),
        (
            "seed-will-and-will-delay",
            Script::new(0)
                .connect(0, V311, true, NO_EXPIRY)
                .subscribe(0, &t("b/x"), 1)
                // v5, will (flags: will 0x02, QoS 1 0x08, delay 0x80, expiry 0x40), 60 s.
                .op(
                    op::CONNECT,
                    &[1, V5, 0x02 | 0x08 | 0x80 | 0x40, 3, 3, 0, 5, 4],
                )
                .op(op::LOSE, &[1])
                .advance(ADVANCE_10S)
                .advance(ADVANCE_100S)
                .op(op::CONNECT, &[1, V311, 0x02 | 0x04, 0, 3, 0, 5, 2])
                .op(op::DISCONNECT, &[1, 0, 0])
                .op(op::CONNECT, &[1, V5, 0x02, 0, 3, 0, 5, 2])
                .op(op::DISCONNECT, &[1, 1, 0])
                .answer(0),
        ),
        (
            "seed-retained-set-replace-clear",
            Script::new(0)
                .connect(0, V311, true, NO_EXPIRY)
                .publish(0, 1, true, &t("a/b"), 3)
                .publish(0, 0, true, &t("a/b"), 4)
                .publish(0, 2, true, &t("a/c"), 5)
                .answer(0)
                .publish(0, 0, true, &t("a/c"), 0)
                .connect(1, V5, true, NO_EXPIRY)
                .subscribe(1, &t("#"), 2)
                .subscribe(1, &t("a/+"), 2 | 0x10)
                .subscribe(1, &t("a/+"), 1 | 0x10)
                .answer(1),
        ),
        (
            "seed-shared-subscription",
            Script::new(0)
                .connect(0, V5, true, NO_EXPIRY)
                .connect(1, V5, true, NO_EXPIRY)
                .subscribe(0, &t("$share/g/a/+"), 1)
                .subscribe(1, &t("$share/g/a/+"), 1)
                .connect(2, V311, true, NO_EXPIRY)
                .publish(2, 1, false, &t("a/b"), 1)
                .publish(2, 1, false, &t("a/c"), 1)
                .op(op::LOSE, &[0])
                .publish(2, 1, false, &t("a/b"), 1)
                // No Local on a shared subscription: a protocol error.
                .subscribe(1, &t("$share/g/#"), 4),
        ),
        (
            "seed-topic-aliases",
            Script::new(0)
                // v5 with Topic Alias Maximum 4 (properties bits 4-5 = 3).
                .op(op::CONNECT, &[0, V5, 1, 0, 3, 0x30])
                .subscribe(0, &t("a/#"), 0)
                // flags: alias 0x10; alias byte: index 0 (alias 1), then with an empty topic.
                .op(op::PUBLISH, &[0, 0x10, 0, t("a/b")[0], 1])
                .op(op::PUBLISH, &[0, 0x10, 0x80, t("a/b")[0], 1])
                .op(op::PUBLISH, &[0, 0x10, 0x81, t("a/b")[0], 1])
                .op(op::PUBLISH, &[0, 0x10, 3, t("a/c")[0], 1]),
        ),
        (
            "seed-flow-control-slow-subscriber",
            Script::new(1)
                .connect(0, V311, true, NO_EXPIRY)
                .subscribe(0, &t("b"), 1)
                .connect(1, V5, true, NO_EXPIRY)
                .publish(1, 1, false, &t("b"), 1)
                .publish(1, 1, false, &t("b"), 1)
                .publish(1, 1, false, &t("b"), 1)
                .publish(1, 2, false, &t("b"), 1)
                .publish(1, 1, false, &t("b"), 1)
                .publish(1, 1, false, &t("a"), 1)
                .publish(1, 1, false, &t("b"), 1)
                .publish(1, 1, false, &t("b"), 1)
                .answer(0)
                .answer(1)
                .op(op::LOSE, &[0])
                .answer(1),
        ),
        (
            "seed-keep-alive-timeout",
            Script::new(0x20)
                .op(op::CONNECT, &[0, V5, 1, 0, 2, 0])
                .op(op::CONNECT, &[1, V311, 1, 0, 1, 0])
                .advance(ADVANCE_1S)
                .op(op::PING, &[0])
                .advance(ADVANCE_10S)
                .advance(ADVANCE_10S)
                .advance(ADVANCE_100S),
        ),
        (
            "seed-raw-valid-packets",
            Script::new(0)
                .raw(
                    0,
                    &wire(
                        ProtocolVersion::V5,
                        &[
                            raw_connect("c0", ProtocolVersion::V5, true),
                            Packet::Subscribe(raw_subscribe("r/#", QoS::ExactlyOnce)),
                            raw_publish("r/1", QoS::ExactlyOnce, 7, true),
                            Packet::PubRel(PubAck::new(PacketId::new(7).expect("non-zero"))),
                            Packet::PingReq,
                        ],
                    ),
                )
                .answer(0)
                .raw(
                    1,
                    &wire(
                        ProtocolVersion::V3_1_1,
                        &[
                            raw_connect("c1", ProtocolVersion::V3_1_1, false),
                            raw_publish("r/2", QoS::AtLeastOnce, 1, false),
                            Packet::Subscribe(raw_subscribe("r/+", QoS::AtLeastOnce)),
                        ],
                    ),
                )
                .answer(1),
        ),
        (
            "seed-raw-odd-packets",
            Script::new(0)
                .connect(0, V5, true, NO_EXPIRY)
                .raw(
                    0,
                    &wire(
                        ProtocolVersion::V5,
                        &[
                            Packet::PubComp(PubAck::new(PacketId::MIN)),
                            Packet::PubRec(PubAck::new(PacketId::MIN)),
                            Packet::PingResp,
                        ],
                    ),
                )
                .connect(1, V311, true, NO_EXPIRY)
                .raw(
                    1,
                    &wire(
                        ProtocolVersion::V3_1_1,
                        &[raw_connect("c1", ProtocolVersion::V3_1_1, true)],
                    ),
                )
                .connect(2, V311, true, NO_EXPIRY)
                // A PUBLISH header with QoS 3, then bytes that are no packet at all.
                .raw(2, &[0x36, 0x03, 0x00, 0x01, 0x61])
                .raw(3, &[0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F])
                .raw(3, &[0x30, 0x02, 0x00, 0x00]),
        ),
        (
            "seed-sys-statistics",
            Script::new(4)
                .connect(0, V311, true, NO_EXPIRY)
                .subscribe(0, &raw_topic_arg(b"$SYS/#"), 0)
                .subscribe(0, &t("$SYS/x"), 0)
                .subscribe(0, &t("#"), 0)
                .op(op::SUBSCRIBE, &[0, 0, 0xC2, 6, 1, 0, 0])
                .advance(ADVANCE_10S)
                .advance(ADVANCE_100S)
                .publish(0, 0, false, &t("$SYS/x"), 1),
        ),
        (
            "seed-persistence-ops",
            Script::new(2)
                .connect(0, V5, false, EXPIRY_HOUR)
                .subscribe(0, &t("a/b"), 2)
                .connect(1, V5, false, EXPIRY_NEVER)
                .publish(1, 2, true, &t("a/b"), 2)
                .publish(1, 1, false, &t("a/b"), 2)
                .op(op::LOSE, &[0])
                .publish(1, 1, false, &t("a/b"), 2)
                .answer(1)
                .advance(ADVANCE_100S)
                .connect(0, V5, false, EXPIRY_HOUR)
                .answer(0)
                .answer(0)
                .unsubscribe(0, &t("a/b"))
                .op(op::DISCONNECT, &[0, 0, 1]),
        ),
        (
            "seed-shutdown",
            Script::new(0)
                .connect(0, V5, true, NO_EXPIRY)
                .connect(1, V311, false, NO_EXPIRY)
                .op(op::SHUTDOWN, &[])
                .connect(2, V5, true, NO_EXPIRY),
        ),
        (
            "seed-stale-connections",
            Script::new(0)
                .op(op::STALE, &[0])
                .connect(0, V311, true, NO_EXPIRY)
                .op(op::LOSE, &[0])
                .op(op::STALE, &[0])
                .op(op::ACK, &[0, 1, 1, 0])
                .connect(0, V311, true, NO_EXPIRY)
                .op(op::DISCONNECT, &[0, 0, 0])
                .op(op::STALE, &[0]),
        ),
        (
            "seed-max-qos-1",
            Script::new(8)
                .connect(0, V5, true, NO_EXPIRY)
                .subscribe(0, &t("a"), 2)
                .publish(0, 1, false, &t("a"), 1)
                .publish(0, 2, false, &t("a"), 1)
                .op(op::CONNECT, &[1, V5, 0x02 | 0x10, 0, 3, 0, 0, 1]),
        ),
        (
            "seed-receive-maximum-exceeded",
            Script::new(0x80)
                .connect(0, V5, true, NO_EXPIRY)
                .publish(0, 2, false, &t("b"), 1)
                .publish(0, 2, false, &t("b"), 1)
                .publish(0, 2, false, &t("b"), 1),
        ),
        (
            "seed-explicit-acks",
            Script::new(0)
                .connect(0, V5, true, NO_EXPIRY)
                .subscribe(0, &t("a"), 2)
                .publish(0, 2, false, &t("a"), 1)
                .op(op::ACK, &[0, 1, 1, 0x80])
                .op(op::ACK, &[0, 0, 1, 0])
                .op(op::ACK, &[0, 3, 1, 0])
                .op(op::ACK, &[0, 2, 9, 0])
                .op(op::ACK, &[0, 1, 9, 0]),
        ),
        (
            "seed-no-local-and-subscription-ids",
            Script::new(0)
                .connect(0, V5, true, NO_EXPIRY)
                .op(
                    op::SUBSCRIBE,
                    &[0, 1, t("a/b")[0], 1 | 4, t("a/+")[0], 2 | 8, 7],
                )
                .publish(0, 2, true, &t("a/b"), 1)
                .answer(0)
                .unsubscribe(0, &t("a/+"))
                .publish(0, 1, false, &t("a/b"), 1),
        ),
        (
            "seed-empty-client-ids",
            Script::new(0)
                .connect(4, V5, true, NO_EXPIRY)
                .connect(4, V311, true, NO_EXPIRY)
                .connect(4, V311, false, NO_EXPIRY)
                .op(op::CONNECT, &[4, 0, 1, 0, 0, 0])
                .op(op::CONNECT, &[3, V5, 1, 0, 0, 0x80]),
        ),
        (
            "seed-built-and-raw-topics",
            Script::new(0)
                .connect(0, V5, true, NO_EXPIRY)
                .subscribe(0, &[0xC3, 0, 3, 3, 4], 1)
                .subscribe(0, &raw_topic_arg(b"\xff/+"), 1)
                .publish(0, 1, false, &[0xC2, 0, 1, 2], 1)
                .publish(0, 1, false, &raw_topic_arg(b"a\0b"), 1),
        ),
        (
            "seed-message-expiry",
            Script::new(0)
                .connect(0, V5, false, EXPIRY_HOUR)
                .subscribe(0, &t("a"), 1)
                .op(op::LOSE, &[0])
                .connect(1, V5, true, NO_EXPIRY)
                // flags: QoS 1, retain, expiry 0x20; expiry index 1 (1 s).
                .op(op::PUBLISH, &[1, 1 | 4 | 0x20, 1, t("a")[0], 2])
                .advance(ADVANCE_10S)
                .advance(9)
                .connect(0, V5, false, EXPIRY_HOUR)
                .connect(2, V5, true, NO_EXPIRY)
                .subscribe(2, &t("#"), 1),
        ),
        (
            "seed-small-queues-overflow",
            Script::new(1)
                .connect(0, V311, false, NO_EXPIRY)
                .subscribe(0, &t("a"), 1)
                .op(op::LOSE, &[0])
                .connect(1, V5, true, NO_EXPIRY)
                .publish(1, 1, false, &t("a"), 15)
                .publish(1, 1, false, &t("a"), 15)
                .publish(1, 1, false, &t("a"), 15)
                .publish(1, 1, false, &t("a"), 15)
                .publish(1, 1, false, &t("a"), 15)
                .connect(0, V311, false, NO_EXPIRY)
                .answer(0),
        ),
        (
            "seed-deep-topic-64",
            Script::new(0)
                .connect(0, V5, true, NO_EXPIRY)
                .subscribe(0, &deep_topic_arg(64, 0), 1)
                .subscribe(0, &deep_topic_arg(64, 1), 1)
                .subscribe(0, &deep_topic_arg(64, 2), 1)
                .publish(0, 1, true, &deep_topic_arg(64, 0), 1)
                .publish(0, 1, true, &deep_topic_arg(63, 3), 1)
                .subscribe(0, &t("#"), 1)
                .unsubscribe(0, &deep_topic_arg(64, 1))
                .answer(0),
        ),
        (
            "seed-topic-limits",
            Script::new(0)
                .connect(0, V5, true, NO_EXPIRY)
                .connect(1, V311, true, NO_EXPIRY)
                // 129 levels: beyond the limit; 128: at it.
                .subscribe(0, &deep_topic_arg(129, 0), 1)
                .subscribe(0, &deep_topic_arg(128, 0), 1)
                .subscribe(1, &deep_topic_arg(129, 1), 1)
                .publish(1, 1, true, &deep_topic_arg(128, 0), 1)
                .publish(1, 1, true, &deep_topic_arg(129, 0), 1)
                .publish(0, 1, false, &deep_topic_arg(129, 0), 1)
                .publish(0, 2, false, &deep_topic_arg(129, 3), 1)
                .publish(0, 0, false, &deep_topic_arg(129, 3), 1)
                // 2,100 levels of "a/b": beyond 4,096 bytes too.
                .publish(0, 1, true, &deep_topic_arg(2_100, 3), 1)
                .unsubscribe(0, &deep_topic_arg(129, 0))
                .unsubscribe(1, &deep_topic_arg(129, 1))
                .connect(2, V5, true, NO_EXPIRY)
                .subscribe(2, &t("#"), 1)
                .answer(0)
                // A will topic beyond the limits: CONNACK 0x90 (flags: clean, will).
                .op(
                    op::CONNECT,
                    &[2, V5, 0x03, 0, 0, 0, topic::DEEP, 0, 200, 0, 1],
                )
                .op(
                    op::CONNECT,
                    &[3, V311, 0x03, 0, 0, 0, topic::DEEP, 0, 200, 0, 1],
                ),
        ),
        (
            "seed-small-topic-limits",
            Script::new(1)
                .connect(0, V5, true, NO_EXPIRY)
                .connect(1, V311, true, NO_EXPIRY)
                .subscribe(0, &t("sport/tennis/player1"), 1)
                .subscribe(0, &[0xC4, 0, 0, 0, 0, 0], 1)
                .subscribe(0, &t("a"), 1)
                .subscribe(0, &t("b"), 1)
                .subscribe(0, &t("a/b"), 1)
                .subscribe(0, &t("a/c"), 1)
                // A fifth subscription: 0x97; beyond the limits too: 0x8F or 0x97.
                .subscribe(0, &t("b/x"), 1)
                .subscribe(0, &[0xC4, 0, 0, 0, 0, 0], 1)
                .subscribe(1, &t("b/x"), 1)
                .publish(1, 1, false, &t("sport/tennis/player1"), 1)
                .publish(1, 1, false, &raw_topic_arg(b"a/b/a/b/a"), 1)
                .publish(0, 1, false, &t("sport/tennis/player1"), 1)
                .answer(0),
        ),
        (
            "seed-retained-one-at-a-time",
            Script::new(0x80)
                .connect(0, V5, true, NO_EXPIRY)
                .publish(0, 1, true, &t("a/b"), 1)
                .publish(0, 1, true, &t("a/c"), 2)
                .connect(1, V311, true, NO_EXPIRY)
                .subscribe(1, &t("a/+"), 0)
                .subscribe(1, &t("#"), 1)
                .answer(1)
                .answer(1),
        ),
        (
            DEEP_SEED,
            Script::new(0)
                .connect(0, V5, true, NO_EXPIRY)
                .subscribe(0, &deep_topic_arg(20_000, 0), 1)
                .publish(0, 1, true, &deep_topic_arg(20_000, 0), 1)
                .subscribe(0, &t("#"), 1)
                .unsubscribe(0, &deep_topic_arg(20_000, 0)),
        ),
    ];
    let mut named: Vec<(String, Vec<u8>)> = seeds
        .drain(..)
        .map(|(name, script)| (name.to_owned(), script.into_bytes()))
        .collect();
    let mut rng = XorShift(0x5eed_0000_0000_0001);
    for i in 0..12 {
        named.push((format!("seed-random-{i:02}"), random_input(&mut rng)));
    }
    named
}
