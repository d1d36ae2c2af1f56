//! Round trips of every op through apply, reopen and load.

mod common;

use std::fs;

use common::*;
use moat_codec::QoS;
use moat_core::store::{Snapshot, Store, StoreOp, StoredSession, StoredState};
use moat_store::{DiskStore, Durability, StoreError, FILE_NAME, FORMAT_VERSION};

fn reopen(dir: &std::path::Path) -> Snapshot {
    DiskStore::open(dir, Durability::GroupCommit)
        .unwrap()
        .load()
        .unwrap()
}

fn session<'a>(s: &'a Snapshot, id: &str) -> &'a StoredSession {
    s.sessions
        .iter()
        .find(|x| x.client_id == id)
        .unwrap_or_else(|| panic!("no session {id}"))
}

#[test]
fn a_new_store_is_empty_and_marked_created() {
    let dir = tempfile::tempdir().unwrap();
    let store = DiskStore::open(&dir.path().join("store"), Durability::FsyncEach).unwrap();
    assert!(store.created());
    assert_eq!(store.durability(), Durability::FsyncEach);
    assert_eq!(store.load().unwrap(), Snapshot::default());
    assert!(store.disk_usage() > 0);
    assert_eq!(
        format!("{store:?}"),
        format!("DiskStore {{ path: {:?}, .. }}", store.path())
    );
    drop(store);
    let store = DiskStore::open(&dir.path().join("store"), Durability::FsyncEach).unwrap();
    assert!(!store.created());
    assert!(!dir.path().join("store").join("moat.redb.new").exists());
}

#[test]
fn every_op_kind_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = DiskStore::open(dir.path(), Durability::GroupCommit).unwrap();
    let w = will("w/t");
    store
        .apply(&[
            upsert("c1", 60),
            StoreOp::SubscriptionSet {
                client_id: "c1".into(),
                filter: "a/+/c".into(),
                options: opts(QoS::AtLeastOnce),
                id: Some(9),
            },
            StoreOp::SubscriptionSet {
                client_id: "c1".into(),
                filter: "gone".into(),
                options: opts(QoS::AtMostOnce),
                id: None,
            },
            StoreOp::MessagePut {
                client_id: "c1".into(),
                seq: 1,
                message: rich_msg("t/1"),
                state: StoredState::Sent(11),
            },
            put("c1", 2, msg("t/2", b"two")),
            put("c1", 3, msg("t/3", b"three")),
            StoreOp::IncomingQos2Add {
                client_id: "c1".into(),
                packet_id: 7,
            },
            StoreOp::IncomingQos2Add {
                client_id: "c1".into(),
                packet_id: 8,
            },
            StoreOp::WillSet {
                client_id: "c1".into(),
                will: w.clone(),
                at_ms: 1234,
            },
            StoreOp::RetainedSet {
                message: rich_msg("r/1"),
            },
            StoreOp::RetainedSet {
                message: msg("r/2", b"r2"),
            },
        ])
        .unwrap();
    store
        .apply(&[
            StoreOp::SessionOffline {
                client_id: "c1".into(),
                at_ms: 99,
            },
            StoreOp::SubscriptionRemove {
                client_id: "c1".into(),
                filter: "gone".into(),
            },
            StoreOp::MessageState {
                client_id: "c1".into(),
                seq: 1,
                state: StoredState::Released(11),
            },
            StoreOp::MessageState {
                client_id: "c1".into(),
                seq: 2,
                state: StoredState::Sent(12),
            },
            StoreOp::MessageRemove {
                client_id: "c1".into(),
                seq: 3,
            },
            StoreOp::IncomingQos2Remove {
                client_id: "c1".into(),
                packet_id: 7,
            },
            StoreOp::RetainedRemove {
                topic: "r/2".into(),
            },
            // Ops on things that are not there change nothing.
            StoreOp::MessageState {
                client_id: "c1".into(),
                seq: 1000,
                state: StoredState::Queued,
            },
            StoreOp::SessionOffline {
                client_id: "nobody".into(),
                at_ms: 1,
            },
        ])
        .unwrap();
    drop(store);

    let snap = reopen(dir.path());
    assert_eq!(snap.sessions.len(), 1);
    let s = &snap.sessions[0];
    assert_eq!(s.client_id, "c1");
    assert_eq!(s.expiry_interval, 60);
    assert_eq!(s.offline_since_ms, Some(99));
    assert_eq!(
        s.subscriptions,
        vec![("a/+/c".to_owned(), opts(QoS::AtLeastOnce), Some(9))]
    );
    assert_eq!(
        s.messages,
        vec![
            (1, rich_msg("t/1"), StoredState::Released(11)),
            (2, msg("t/2", b"two"), StoredState::Sent(12)),
        ]
    );
    assert_eq!(s.incoming_qos2, vec![8]);
    assert_eq!(s.will, Some((w, 1234)));
    assert_eq!(snap.retained, vec![rich_msg("r/1")]);

    // The will goes, and a resumed session is online again.
    let mut store = DiskStore::open(dir.path(), Durability::GroupCommit).unwrap();
    store
        .apply(&[
            StoreOp::WillRemove {
                client_id: "c1".into(),
            },
            upsert("c1", 120),
        ])
        .unwrap();
    drop(store);
    let snap = reopen(dir.path());
    let s = session(&snap, "c1");
    assert_eq!((s.will.as_ref(), s.offline_since_ms), (None, None));
    assert_eq!(s.expiry_interval, 120);
}

#[test]
fn session_remove_removes_everything_of_that_session_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = DiskStore::open(dir.path(), Durability::GroupCommit).unwrap();
    populate(&mut store);
    // "alic" and "alice2" share a string prefix with "alice" but are other sessions.
    store
        .apply(&[
            upsert("alic", 1),
            upsert("alice2", 1),
            put("alic", 1, msg("t", b"x")),
            put("alice2", 1, msg("t", b"y")),
            StoreOp::IncomingQos2Add {
                client_id: "alice2".into(),
                packet_id: 1,
            },
        ])
        .unwrap();
    store
        .apply(&[StoreOp::SessionRemove {
            client_id: "alice".into(),
        }])
        .unwrap();
    let stats = store.stats().unwrap();
    drop(store);
    let snap = reopen(dir.path());
    let mut ids: Vec<_> = snap.sessions.iter().map(|s| s.client_id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["alic", "alice2", "bob/with/slashes"]);
    assert_eq!(session(&snap, "alic").messages.len(), 1);
    assert_eq!(session(&snap, "alice2").incoming_qos2, vec![1]);
    assert_eq!(session(&snap, "bob/with/slashes").messages.len(), 50);
    assert_eq!(snap.retained.len(), 1);
    assert_eq!(stats.sessions, 3);
    assert_eq!(stats.messages, 52);
    assert_eq!(stats.subscriptions, 1);

    // Upserting it again starts empty.
    let mut store = DiskStore::open(dir.path(), Durability::GroupCommit).unwrap();
    store.apply(&[upsert("alice", 5)]).unwrap();
    let snap = store.load().unwrap();
    let a = session(&snap, "alice");
    assert!(a.messages.is_empty() && a.subscriptions.is_empty() && a.will.is_none());
    assert!(a.incoming_qos2.is_empty());
}

#[test]
fn messages_load_in_sequence_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = DiskStore::open(dir.path(), Durability::GroupCommit).unwrap();
    let seqs = [5u64, 1, 256, 255, 70_000, 2, u64::MAX, 0, 1 << 40];
    let mut ops = vec![upsert("c", 10)];
    ops.extend(
        seqs.iter()
            .map(|s| put("c", *s, msg("t", &s.to_be_bytes()))),
    );
    store.apply(&ops).unwrap();
    let snap = store.load().unwrap();
    let got: Vec<u64> = snap.sessions[0].messages.iter().map(|m| m.0).collect();
    let mut want = seqs.to_vec();
    want.sort_unstable();
    assert_eq!(got, want);
    for (seq, m, _) in &snap.sessions[0].messages {
        assert_eq!(&m.payload[..], &seq.to_be_bytes());
    }
    // A batch applies in order: put then remove leaves nothing; remove then put leaves it.
    store
        .apply(&[
            put("c", 9, msg("t", b"9")),
            StoreOp::MessageRemove {
                client_id: "c".into(),
                seq: 9,
            },
            StoreOp::MessageRemove {
                client_id: "c".into(),
                seq: 5,
            },
            put("c", 5, msg("t", b"again")),
        ])
        .unwrap();
    let snap = store.load().unwrap();
    let m: Vec<_> = snap.sessions[0].messages.iter().map(|m| m.0).collect();
    assert!(!m.contains(&9));
    let five = snap.sessions[0].messages.iter().find(|m| m.0 == 5).unwrap();
    assert_eq!(&five.1.payload[..], b"again");
}

#[test]
fn odd_client_ids_and_topics() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = DiskStore::open(dir.path(), Durability::GroupCommit).unwrap();
    let ids = [
        "",
        "/",
        "a/b",
        "a",
        "ab",
        "日本語/クライアント",
        "emoji🦀",
        "\u{0}nul",
        "x".repeat(65_535).leak(),
    ];
    let mut ops = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        ops.push(upsert(id, i as u32));
        ops.push(StoreOp::SubscriptionSet {
            client_id: (*id).into(),
            filter: format!("{id}/#"),
            options: opts(QoS::AtLeastOnce),
            id: None,
        });
        ops.push(put(id, 1, msg(&format!("t/{id}"), id.as_bytes())));
        ops.push(StoreOp::RetainedSet {
            message: msg(
                &format!("{}/ü", id.chars().take(50).collect::<String>()),
                id.as_bytes(),
            ),
        });
    }
    store.apply(&ops).unwrap();
    drop(store);
    let snap = reopen(dir.path());
    assert_eq!(snap.sessions.len(), ids.len());
    for (i, id) in ids.iter().enumerate() {
        let s = session(&snap, id);
        assert_eq!(s.expiry_interval, i as u32);
        assert_eq!(s.subscriptions.len(), 1, "{id}");
        assert_eq!(s.subscriptions[0].0, format!("{id}/#"));
        assert_eq!(s.messages.len(), 1);
        assert_eq!(&s.messages[0].1.payload[..], id.as_bytes());
    }
    assert_eq!(snap.retained.len(), ids.len());

    // Too long for MQTT: refused, and the batch is not applied.
    let mut store = DiskStore::open(dir.path(), Durability::GroupCommit).unwrap();
    let long = "y".repeat(65_536);
    let err = store
        .apply(&[upsert("fine", 1), upsert(&long, 1)])
        .unwrap_err();
    assert!(matches!(err, StoreError::TooLong { .. }), "{err}");
    assert!(store
        .load()
        .unwrap()
        .sessions
        .iter()
        .all(|s| s.client_id != "fine"));
}

#[test]
fn data_of_unknown_sessions_is_not_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = DiskStore::open(dir.path(), Durability::GroupCommit).unwrap();
    store.apply(&[put("ghost", 1, msg("t", b"x"))]).unwrap();
    assert!(store.load().unwrap().sessions.is_empty());
}

#[test]
fn a_newer_format_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(DiskStore::open(dir.path(), Durability::GroupCommit).unwrap());
    let path = dir.path().join(FILE_NAME);
    set_format(&path, Some(FORMAT_VERSION + 1));
    let err = DiskStore::open(dir.path(), Durability::GroupCommit).unwrap_err();
    match &err {
        StoreError::Version {
            found,
            expected,
            path: p,
        } => {
            assert_eq!((*found, *expected), (FORMAT_VERSION + 1, FORMAT_VERSION));
            assert_eq!(p, &path);
        }
        other => panic!("{other}"),
    }
    let text = err.to_string();
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(text.contains("format version 2"), "{text}");
    assert!(text.contains("move"), "{text}");
    // The file is left alone.
    set_format(&path, Some(FORMAT_VERSION));
    DiskStore::open(dir.path(), Durability::GroupCommit).unwrap();
}

#[test]
fn a_redb_file_that_is_not_a_store_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    drop(DiskStore::open(dir.path(), Durability::GroupCommit).unwrap());
    let path = dir.path().join(FILE_NAME);
    set_format(&path, None);
    let err = DiskStore::open(dir.path(), Durability::GroupCommit).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("not a Moat store"), "{err}");
}

#[test]
fn an_empty_or_foreign_file_is_corrupt_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(FILE_NAME);
    for content in [&b""[..], b"hello, world", &[0u8; 10_000]] {
        fs::write(&path, content).unwrap();
        let err = DiskStore::open(dir.path(), Durability::GroupCommit).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        let text = err.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains("move"), "{text}");
        assert_eq!(fs::read(&path).unwrap(), content);
    }
}

#[test]
fn a_second_open_is_refused_while_the_first_is_open() {
    let dir = tempfile::tempdir().unwrap();
    let _first = DiskStore::open(dir.path(), Durability::GroupCommit).unwrap();
    let err = DiskStore::open(dir.path(), Durability::GroupCommit).unwrap_err();
    assert!(matches!(err, StoreError::Locked { .. }), "{err}");
}

#[test]
fn a_leftover_temporary_file_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("moat.redb.new"), b"half-made").unwrap();
    let store = DiskStore::open(dir.path(), Durability::GroupCommit).unwrap();
    assert!(store.created());
    assert_eq!(store.load().unwrap(), Snapshot::default());
}

#[cfg(unix)]
#[test]
fn the_store_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("data").join("store");
    let store = DiskStore::open(&store_dir, Durability::GroupCommit).unwrap();
    let mode = |p: &std::path::Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&store_dir), 0o700);
    assert_eq!(mode(store.path()), 0o600);
}

#[test]
fn one_fsync_batch_of_100_puts_is_fast_enough() {
    // Not a benchmark: a guard against a per-op transaction sneaking in (100 fsyncs would
    // take far longer than one on any disk).
    let dir = tempfile::tempdir().unwrap();
    let mut store = DiskStore::open(dir.path(), Durability::GroupCommit).unwrap();
    store.apply(&[upsert("c", 1)]).unwrap();
    let ops: Vec<_> = (0..100).map(|i| put("c", i, msg("t", &[0; 64]))).collect();
    store.apply(&ops).unwrap();
    assert_eq!(store.load().unwrap().sessions[0].messages.len(), 100);
}

/// Writes (or removes) the format version directly with redb.
fn set_format(path: &std::path::Path, v: Option<u64>) {
    const META: redb::TableDefinition<'_, &str, u64> = redb::TableDefinition::new("meta");
    let db = redb::Database::open(path).unwrap();
    let tx = db.begin_write().unwrap();
    {
        let mut t = tx.open_table(META).unwrap();
        match v {
            Some(v) => t.insert("format", v).unwrap(),
            None => t.remove("format").unwrap(),
        };
    }
    tx.commit().unwrap();
}

#[test]
fn spools_keep_records_per_rule_in_key_order_and_never_reuse_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let put = |rule: &str, key: u64| StoreOp::SpoolPut {
        rule: rule.into(),
        key,
        record: bytes::Bytes::from(format!("{rule}-{key}")),
    };
    {
        let mut store = DiskStore::open(&path, Durability::GroupCommit).unwrap();
        let reader = store.spool_reader();
        assert_eq!(reader.next_key().unwrap(), 0);
        assert!(reader.read("a", None, 10).unwrap().is_empty());
        store
            .apply(&[put("a", 1), put("b", 2), put("a", 3), put("a", 300)])
            .unwrap();
        let keys = |after, limit| -> Vec<u64> {
            reader
                .read("a", after, limit)
                .unwrap()
                .into_iter()
                .map(|(k, _)| k)
                .collect()
        };
        assert_eq!(keys(None, 10), [1, 3, 300]);
        assert_eq!(keys(Some(1), 1), [3]);
        assert_eq!(keys(Some(300), 10), Vec::<u64>::new());
        assert_eq!(reader.read("b", None, 10).unwrap()[0].1, b"b-2");
        // Every key removed: the next one is still past the highest ever put.
        store
            .apply(&[StoreOp::SpoolRemove {
                rule: "a".into(),
                keys: vec![1, 3, 300],
            }])
            .unwrap();
        assert_eq!(keys(None, 10), Vec::<u64>::new());
    }
    let store = DiskStore::open(&path, Durability::GroupCommit).unwrap();
    let reader = store.spool_reader();
    assert_eq!(reader.next_key().unwrap(), 301);
    assert_eq!(reader.usage().unwrap(), [("b".to_owned(), 1, 3)]);
    // Spools are not sessions: loading ignores them.
    assert_eq!(store.load().unwrap(), Snapshot::default());
}
