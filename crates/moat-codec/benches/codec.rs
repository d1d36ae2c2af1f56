//! Decode and encode costs of the packets on the hot path.
//! Run: `cargo bench -p moat-codec --bench codec`.

use bytes::{Bytes, BytesMut};
use divan::{black_box, Bencher};
use moat_codec::{Codec, Packet, PacketId, Properties, ProtocolVersion, PubAck, Publish, QoS};

fn main() {
    divan::main();
}

fn publish(size: usize, qos: QoS) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: "sensors/building-1/floor-3/temperature".into(),
        packet_id: (qos != QoS::AtMostOnce).then_some(PacketId::MIN),
        properties: Properties::default(),
        payload: Bytes::from(vec![0x5a; size]),
    })
}

#[divan::bench(args = [64, 1024, 65536])]
fn encode_publish_qos0_v5(bencher: Bencher, size: usize) {
    let p = publish(size, QoS::AtMostOnce);
    let mut buf = BytesMut::with_capacity(size + 64);
    bencher.bench_local(|| {
        buf.clear();
        moat_codec::encode(black_box(&p), ProtocolVersion::V5, &mut buf).unwrap();
        black_box(buf.len())
    });
}

#[divan::bench(args = [64, 1024, 65536])]
fn decode_publish_qos1_v311(bencher: Bencher, size: usize) {
    let mut wire = BytesMut::new();
    moat_codec::encode(
        &publish(size, QoS::AtLeastOnce),
        ProtocolVersion::V3_1_1,
        &mut wire,
    )
    .unwrap();
    let wire = wire.freeze();
    let mut codec = Codec::new(1 << 20);
    codec.set_version(ProtocolVersion::V3_1_1);
    bencher.bench_local(|| {
        let mut buf = BytesMut::from(&wire[..]);
        black_box(codec.decode(&mut buf).unwrap())
    });
}

/// 100 PUBACKs in one buffer, as a busy connection reads them.
#[divan::bench]
fn decode_100_pubacks_v5(bencher: Bencher) {
    let mut wire = BytesMut::new();
    for i in 1..=100 {
        let ack = Packet::PubAck(PubAck::new(PacketId::new(i).unwrap()));
        moat_codec::encode(&ack, ProtocolVersion::V5, &mut wire).unwrap();
    }
    let wire = wire.freeze();
    let mut codec = Codec::new(1 << 20);
    codec.set_version(ProtocolVersion::V5);
    bencher
        .counter(divan::counter::ItemsCount::new(100usize))
        .bench_local(|| {
            let mut buf = BytesMut::from(&wire[..]);
            let mut n = 0;
            while let Some(p) = codec.decode(&mut buf).unwrap() {
                black_box(p);
                n += 1;
            }
            n
        });
}
