//! Replays the committed fuzz corpus (`fuzz/corpus/decode`) through the fuzz target's check, so
//! that `cargo test` on stable covers it. File names carry expectations; see `fuzz/README.md`.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use moat_codec::ProtocolVersion;

use common::{decode_all, VERSIONS};

fn corpus() -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/decode");
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

/// The version a corpus file name is about, and whether it must be refused.
fn expectation(name: &str) -> Option<(ProtocolVersion, bool)> {
    let (bad, rest) = match name.strip_prefix("bad-") {
        Some(rest) => (true, rest),
        None => (false, name),
    };
    let version = match rest.split('-').next()? {
        "v31" => ProtocolVersion::V3_1,
        "v311" => ProtocolVersion::V3_1_1,
        "v5" => ProtocolVersion::V5,
        _ => return None,
    };
    Some((version, bad))
}

#[test]
fn corpus_replays_without_panics_and_round_trips() {
    let corpus = corpus();
    assert!(corpus.len() >= 20, "only {} corpus files", corpus.len());
    for (name, bytes) in &corpus {
        let replay = || {
            for version in VERSIONS {
                decode_all(bytes, version, 1 << 20);
                // A small limit exercises the size check at every header.
                decode_all(bytes, version, 16);
            }
        };
        if let Err(panic) = std::panic::catch_unwind(replay) {
            eprintln!("corpus file {name} failed");
            std::panic::resume_unwind(panic);
        }
    }
}

#[test]
fn corpus_files_meet_the_expectation_in_their_name() {
    let mut checked = 0;
    for (name, bytes) in corpus() {
        let Some((version, bad)) = expectation(&name) else {
            continue;
        };
        let out = decode_all(&bytes, version, 1 << 20);
        if bad {
            assert!(
                out.error.is_some(),
                "{name}: decoded {:?} without an error",
                out.packets
            );
        } else {
            assert_eq!(out.error, None, "{name}");
            assert!(!out.packets.is_empty(), "{name}: no packet decoded");
            assert_eq!(out.left, 0, "{name}: bytes left over");
        }
        checked += 1;
    }
    assert!(
        checked >= 20,
        "only {checked} corpus files have an expectation"
    );
}
