//! Crash consistency: a child process applies numbered batches and reports each one `apply`
//! returned Ok for; the parent kills it with SIGKILL at a random moment, reopens the store
//! and checks that every reported batch is there in full and no batch is there in part.
//!
//! The child is this test binary run again with `MOAT_STORE_CRASH_CHILD` set.

#![cfg(unix)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use moat_core::store::{Snapshot, Store, StoreOp};
use moat_store::{DiskStore, Durability};

const ENV: &str = "MOAT_STORE_CRASH_CHILD";
/// Messages per batch, beside the session and retained updates.
const PER_BATCH: u64 = 50;

/// The batch `n`: `PER_BATCH` messages to client "c/1" (seqs n*1000..), the same for
/// "c/2" with a removal of its previous batch, and the retained message "last" := n.
fn batch(n: u64) -> Vec<StoreOp> {
    let mut ops = vec![common::upsert("c/1", 3600), common::upsert("c/2", 3600)];
    for i in 0..PER_BATCH {
        let seq = n * 1000 + i;
        ops.push(common::put("c/1", seq, common::msg("t", &n.to_le_bytes())));
        ops.push(common::put("c/2", seq, common::msg("t", &n.to_le_bytes())));
        if n > 1 {
            ops.push(StoreOp::MessageRemove {
                client_id: "c/2".into(),
                seq: (n - 1) * 1000 + i,
            });
        }
    }
    ops.push(StoreOp::RetainedSet {
        message: common::msg("last", &n.to_le_bytes()),
    });
    ops
}

fn last_batch(snap: &Snapshot) -> u64 {
    snap.retained
        .iter()
        .find(|m| m.topic == "last")
        .map_or(0, |m| {
            u64::from_le_bytes(m.payload[..8].try_into().unwrap())
        })
}

/// The child: apply batches from where the store is until killed.
#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os(ENV) else {
        return;
    };
    let mut store = DiskStore::open(Path::new(&dir), Durability::FsyncEach).unwrap();
    let mut n = last_batch(&store.load().unwrap());
    loop {
        n += 1;
        store.apply(&batch(n)).unwrap();
        println!("durable {n}");
    }
}

/// Checks the store against the batches: all of 1..=last, nothing after.
fn verify(snap: &Snapshot, reported: u64) -> u64 {
    let last = last_batch(snap);
    assert!(
        last >= reported,
        "batch {reported} was reported durable, store has {last}"
    );
    let c1 = snap.sessions.iter().find(|s| s.client_id == "c/1");
    let c2 = snap.sessions.iter().find(|s| s.client_id == "c/2");
    if last == 0 {
        assert!(c1.is_none() && c2.is_none());
        return 0;
    }
    let (c1, c2) = (c1.unwrap(), c2.unwrap());
    let want1: Vec<u64> = (1..=last)
        .flat_map(|n| (0..PER_BATCH).map(move |i| n * 1000 + i))
        .collect();
    let got1: Vec<u64> = c1.messages.iter().map(|m| m.0).collect();
    assert_eq!(got1, want1, "c/1 holds exactly batches 1..={last}");
    for (seq, m, _) in &c1.messages {
        assert_eq!(&m.payload[..], &(seq / 1000).to_le_bytes());
    }
    let got2: Vec<u64> = c2.messages.iter().map(|m| m.0).collect();
    let want2: Vec<u64> = (0..PER_BATCH).map(|i| last * 1000 + i).collect();
    assert_eq!(got2, want2, "c/2 holds exactly batch {last}");
    last
}

#[test]
fn every_batch_reported_durable_survives_sigkill() {
    if std::env::var_os(ENV).is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut rng = fastrand::Rng::new();
    let mut last = 0;
    for round in 0..5 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
            .env(ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut reported = 0;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(n) = line.strip_prefix("durable ") {
                    reported = n.parse().unwrap();
                }
            }
            reported
        });
        std::thread::sleep(Duration::from_millis(rng.u64(150..1500)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let reported: u64 = reader.join().unwrap();

        let store = DiskStore::open(dir.path(), Durability::FsyncEach).unwrap();
        let snap = store.load().unwrap();
        let now = verify(&snap, reported);
        eprintln!("round {round}: {reported} reported durable, {now} in the store");
        assert!(now >= last);
        last = now;
    }
    assert!(last > 0, "the child never got a batch through");
}
