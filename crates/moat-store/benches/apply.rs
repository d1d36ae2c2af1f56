//! `DiskStore` throughput: batches of 1 and of 100 `MessagePut` ops (64-byte payload), one
//! transaction and one fsync per `apply`, then `open` + `load` of 100k messages.
//!
//! ```text
//! cargo bench -p moat-store --bench apply [-- b1|b100|load]
//! ```
//! The data goes to `$MOAT_BENCH_DIR` (default: a temporary directory), which must be on the
//! disk under test. Count fsyncs with `strace -f -c -e trace=fsync,fdatasync` on one phase.
//! The engine comparison (redb, fjall, SQLite) behind docs/adr/0001-embedded-store.md is
//! `benches/engines.rs` at commit 5e0aff9.

use std::time::Instant;

use bytes::Bytes;
use moat_codec::{Properties, QoS};
use moat_core::store::{Store, StoreOp, StoredMessage, StoredState};
use moat_store::{DiskStore, Durability};

fn put(seq: u64) -> StoreOp {
    StoreOp::MessagePut {
        client_id: "client-0001".into(),
        seq,
        message: StoredMessage {
            topic: "sensors/t/42".into(),
            payload: Bytes::from_static(&[0x5a; 64]),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Properties::default(),
            expires_at_ms: None,
            subscription_ids: Vec::new(),
        },
        state: StoredState::Queued,
    }
}

fn tempdir() -> tempfile::TempDir {
    match std::env::var_os("MOAT_BENCH_DIR") {
        Some(b) => tempfile::tempdir_in(b).unwrap(),
        None => tempfile::tempdir().unwrap(),
    }
}

fn run(store: &mut DiskStore, size: u64, commits: u64, seq: &mut u64) -> f64 {
    let start = Instant::now();
    for _ in 0..commits {
        let ops: Vec<_> = (0..size)
            .map(|_| {
                *seq += 1;
                put(*seq)
            })
            .collect();
        store.apply(&ops).unwrap();
    }
    start.elapsed().as_secs_f64()
}

fn main() {
    let phase = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .unwrap_or_else(|| "all".into());
    let dir = tempdir();
    let mut store = DiskStore::open(dir.path(), Durability::GroupCommit).unwrap();
    store
        .apply(&[StoreOp::SessionUpsert {
            client_id: "client-0001".into(),
            expiry_interval: u32::MAX,
        }])
        .unwrap();
    let mut seq = 0;
    for (name, size, commits) in [("b1", 1u64, 500u64), ("b100", 100, 200)] {
        if phase == "all" || phase == name {
            let t = run(&mut store, size, commits, &mut seq);
            println!(
                "apply batch={size:<3} {commits} commits: {:8.0} ops/s, {:6.0} commits/s, {:5.2} ms/commit",
                (size * commits) as f64 / t,
                commits as f64 / t,
                t * 1e3 / commits as f64
            );
        }
    }
    if phase == "all" || phase == "load" {
        let dir = tempdir();
        let mut store = DiskStore::open(dir.path(), Durability::GroupCommit).unwrap();
        let mut seq = 0;
        store
            .apply(&[StoreOp::SessionUpsert {
                client_id: "client-0001".into(),
                expiry_interval: u32::MAX,
            }])
            .unwrap();
        run(&mut store, 10_000, 10, &mut seq);
        drop(store);
        let start = Instant::now();
        let store = DiskStore::open(dir.path(), Durability::GroupCommit).unwrap();
        let opened = start.elapsed().as_secs_f64();
        let snap = store.load().unwrap();
        let t = start.elapsed().as_secs_f64();
        assert_eq!(snap.sessions[0].messages.len(), 100_000);
        println!(
            "open (with integrity check) {:6.1} ms, open + load 100k {:6.1} ms, {} bytes on disk",
            opened * 1e3,
            t * 1e3,
            store.disk_usage()
        );
    }
}
