//! A damaged store file never panics and never opens as an empty or partial store: open and
//! load give an error (naming the file and the way out) or exactly what was stored.

mod common;

use std::fs;
use std::path::Path;

use moat_core::store::{Snapshot, Store};
use moat_store::{DiskStore, Durability, StoreError, FILE_NAME};

struct Fixture {
    _dir: tempfile::TempDir,
    bytes: Vec<u8>,
    snapshot: Snapshot,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mut store = DiskStore::open(dir.path(), Durability::GroupCommit).unwrap();
    common::populate(&mut store);
    let snapshot = store.load().unwrap();
    drop(store);
    let bytes = fs::read(dir.path().join(FILE_NAME)).unwrap();
    Fixture {
        _dir: dir,
        bytes,
        snapshot,
    }
}

/// Opens a store made of `bytes`: Ok only with the full snapshot.
fn check(bytes: &[u8], want: &Snapshot, what: &str) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(FILE_NAME);
    fs::write(&path, bytes).unwrap();
    let result = DiskStore::open(dir.path(), Durability::GroupCommit).and_then(|s| s.load());
    match result {
        Ok(snap) => {
            assert!(&snap == want, "{what}: opened with different contents");
            Outcome::Same
        }
        Err(e) => {
            assert_error_is_useful(&e, &path, what);
            Outcome::Refused
        }
    }
}

#[derive(PartialEq, Eq, Debug)]
enum Outcome {
    Same,
    Refused,
}

fn assert_error_is_useful(e: &StoreError, path: &Path, what: &str) {
    let text = e.to_string();
    assert!(
        matches!(e, StoreError::Corrupt { .. } | StoreError::Version { .. }),
        "{what}: {text}"
    );
    assert!(text.contains(&path.display().to_string()), "{what}: {text}");
    assert!(text.contains("move"), "{what}: {text}");
}

#[test]
fn truncated_files_are_refused() {
    let f = fixture();
    let len = f.bytes.len();
    let mut cuts = vec![
        0,
        1,
        8,
        100,
        511,
        512,
        4095,
        4096,
        4097,
        len / 2,
        len - 4096,
        len - 1,
    ];
    let mut rng = fastrand::Rng::with_seed(6);
    cuts.extend((0..20).map(|_| rng.usize(..len)));
    let mut refused = 0;
    for cut in cuts {
        if check(
            &f.bytes[..cut],
            &f.snapshot,
            &format!("cut at {cut} of {len}"),
        ) == Outcome::Refused
        {
            refused += 1;
        }
    }
    // Cutting the tail of a file with unused space at its end can leave the data intact;
    // the cuts in the first pages cannot.
    assert!(refused >= 8, "only {refused} truncations were noticed");
}

#[test]
fn flipped_bytes_never_panic_nor_load_wrong_data() {
    let f = fixture();
    let len = f.bytes.len();
    let mut rng = fastrand::Rng::with_seed(66);
    // Every 61st byte of the header and the first pages, then spread over the whole file.
    let mut offsets: Vec<usize> = (0..8192.min(len)).step_by(61).collect();
    offsets.extend((0..120).map(|_| rng.usize(..len)));
    let mut refused = 0;
    for &off in &offsets {
        let mut b = f.bytes.clone();
        b[off] ^= 1 << rng.u8(..8);
        if check(&b, &f.snapshot, &format!("flip at {off}")) == Outcome::Refused {
            refused += 1;
        }
    }
    assert!(refused > 0, "no flip was noticed");
    eprintln!(
        "{refused} of {} flips refused, the rest hit unused bytes",
        offsets.len()
    );
}

#[test]
fn flipped_bytes_in_the_data_are_noticed() {
    let f = fixture();
    // The payloads of the stored messages: a flip there must never load.
    let needle = b"\x00\xffpayload";
    let hits: Vec<usize> = f
        .bytes
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect();
    assert!(!hits.is_empty());
    let mut refused = 0;
    for off in hits.into_iter().take(20) {
        let mut b = f.bytes.clone();
        b[off + 3] ^= 0x20;
        // A stale copy of a page (from an older transaction) may hold the bytes too, so
        // not every hit is live data; the live ones must be refused.
        if check(&b, &f.snapshot, &format!("payload flip at {off}")) == Outcome::Refused {
            refused += 1;
        }
    }
    assert!(refused > 0, "a flipped payload byte was not noticed");
}

#[test]
fn zeroed_pages_are_refused_or_harmless() {
    let f = fixture();
    let len = f.bytes.len();
    let mut refused = 0;
    for page in (0..len).step_by(4096).take(64) {
        let mut b = f.bytes.clone();
        let end = (page + 4096).min(len);
        b[page..end].fill(0);
        if check(&b, &f.snapshot, &format!("zeroed page at {page}")) == Outcome::Refused {
            refused += 1;
        }
    }
    assert!(refused > 0);
}
