//! The durable store for Moat: persistent sessions, their subscriptions, queued and in-flight
//! messages, incoming QoS 2 packet ids, pending wills and retained messages, kept in one
//! embedded database file under the data dir (`moat-data/store/moat.redb` by default).
//!
//! [`DiskStore`] implements [`moat_core::store::Store`]: the server hands it each batch of
//! [`StoreOp`]s and releases PUBACK/PUBREC only once [`Store::apply`] has returned. Every
//! `apply` is one transaction and one fsync, durable when it returns, whatever the
//! [`Durability`]: the setting says how the *server* batches (see [`Durability`]), never that
//! an acknowledged batch may still be lost.
//!
//! The engine is [redb](https://www.redb.org) (pure Rust, copy-on-write B-trees with
//! checksums, one file); docs/adr/0001-embedded-store.md gives the reasons and the figures.
//!
//! # Recovery
//! After a crash (kill -9, power loss) the last committed transaction is what opens: a batch
//! is all there or not there at all. A file that is damaged (truncated, overwritten, checksum
//! mismatch) or that is not a Moat store gives [`StoreError::Corrupt`], a file written by a
//! newer Moat gives [`StoreError::Version`]; neither is ever replaced by an empty store. The
//! way out of a corrupt store, which the error message repeats: stop the broker, move the file
//! aside (it is kept for inspection) and start again, which begins with an empty store.
//!
//! # What the store does not do
//! It does not read the clock: expiry (sessions, messages, wills) is decided by the core,
//! which emits `SessionRemove`/`MessageRemove`/`WillRemove` ops. Queue limits are the core's
//! too. The store only keeps what it is told, in order.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod encoding;
mod error;

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use moat_core::store::{Snapshot, Store, StoreOp, StoredSession};
use redb::{ReadableTable, ReadableTableMetadata, TableDefinition, TableHandle};

use crate::encoding as enc;
pub use crate::error::StoreError;

/// The store format this build reads and writes, kept under the key `format` in the `meta`
/// table. A store with another version is refused at start-up ([`StoreError::Version`]).
pub const FORMAT_VERSION: u64 = 1;

/// The name of the database file inside the store directory.
pub const FILE_NAME: &str = "moat.redb";

const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
/// Client id -> session meta.
const SESSIONS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("sessions");
/// (client id, filter) -> options.
const SUBS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("subscriptions");
/// (client id, seq) -> state and message.
const MESSAGES: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("messages");
/// (client id, packet id) -> nothing.
const QOS2: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("incoming_qos2");
/// Client id -> will and due time.
const WILLS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("wills");
/// Topic -> message.
const RETAINED: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("retained");
/// (rule, key) -> forwarding record.
const SPOOL: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("spool");
/// The `meta` key holding the next spool key (keys are never reused, so a sink's
/// de-duplication by key never drops a new message).
const SPOOL_NEXT: &str = "spool_next";

/// How the server batches writes; both settings make every acknowledged message durable.
///
/// Every [`Store::apply`] call is one transaction and one fsync and is durable when it
/// returns. The difference is who batches: with [`Durability::GroupCommit`] the server hands
/// the store everything that arrived while the previous fsync ran (many messages per fsync);
/// with [`Durability::FsyncEach`] it calls `apply` once per message. "Fsync at most every N
/// ms" is not offered: it would acknowledge messages that are not yet durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Durability {
    /// Many messages per fsync (the default, `group-commit` in the config).
    #[default]
    GroupCommit,
    /// One fsync per message (`fsync-each` in the config).
    FsyncEach,
}

/// The durable store: one redb file in a directory.
pub struct DiskStore {
    db: std::sync::Arc<redb::Database>,
    path: PathBuf,
    durability: Durability,
    created: bool,
}

impl fmt::Debug for DiskStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiskStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl DiskStore {
    /// Opens the store in `dir` (created, mode 0700, if missing), or creates an empty one.
    ///
    /// A new store is initialised in a temporary file that is renamed into place once it
    /// holds its format version, so a crash during creation never leaves a file that later
    /// looks like an empty store. An existing file is checked in full (page checksums) before
    /// it is used.
    ///
    /// # Errors
    /// [`StoreError::Io`] if the directory or file cannot be created or read,
    /// [`StoreError::Locked`] if another process has the store open, [`StoreError::Corrupt`]
    /// for a damaged file or one that is not a Moat store, [`StoreError::Version`] for an
    /// unknown format version.
    pub fn open(dir: &Path, durability: Durability) -> Result<Self, StoreError> {
        create_dir(dir)?;
        let path = dir.join(FILE_NAME);
        let created = match fs::symlink_metadata(&path) {
            Ok(_) => false,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                create_file(dir, &path)?;
                true
            }
            Err(e) => return Err(StoreError::io(&path, e)),
        };
        let db = std::sync::Arc::new(guard(&path, || open_existing(&path))??);
        Ok(Self {
            db,
            path,
            durability,
            created,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The durability this store was opened with (informational: see [`Durability`]).
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// True when [`DiskStore::open`] found no store and created an empty one (worth a log
    /// line: an operator who expected data sees where it went).
    pub fn created(&self) -> bool {
        self.created
    }

    /// Bytes on disk (the database file's size), for metrics and `$SYS`. The file grows
    /// with its contents and reuses freed pages; it does not shrink by itself.
    pub fn disk_usage(&self) -> u64 {
        fs::metadata(&self.path).map_or(0, |m| m.len())
    }

    /// Counts of what is stored, cheaply (no values are read): for metrics.
    ///
    /// # Errors
    /// [`StoreError`] if the file cannot be read.
    pub fn stats(&self) -> Result<StoreStats, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let len = |t: TableDefinition<'_, &[u8], &[u8]>| -> Result<u64, StoreError> {
            let t = tx.open_table(t).map_err(|e| self.err(e))?;
            t.len().map_err(|e| self.err(e))
        };
        Ok(StoreStats {
            sessions: len(SESSIONS)?,
            subscriptions: len(SUBS)?,
            messages: len(MESSAGES)?,
            retained: len(RETAINED)?,
            disk_bytes: self.disk_usage(),
        })
    }

    fn err(&self, e: impl Into<redb::Error>) -> StoreError {
        StoreError::from_redb(&self.path, e.into())
    }

    fn apply_ops(&self, ops: &[StoreOp]) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut t = Tables {
                sessions: tx.open_table(SESSIONS).map_err(|e| self.err(e))?,
                subs: tx.open_table(SUBS).map_err(|e| self.err(e))?,
                messages: tx.open_table(MESSAGES).map_err(|e| self.err(e))?,
                qos2: tx.open_table(QOS2).map_err(|e| self.err(e))?,
                wills: tx.open_table(WILLS).map_err(|e| self.err(e))?,
                retained: tx.open_table(RETAINED).map_err(|e| self.err(e))?,
                spool: tx.open_table(SPOOL).map_err(|e| self.err(e))?,
                spool_next: None,
            };
            for op in ops {
                t.apply(op).map_err(|e| match e {
                    OpError::Redb(e) => self.err(*e),
                    OpError::TooLong(what) => StoreError::TooLong { what },
                })?;
            }
            if let Some(next) = t.spool_next {
                let mut meta = tx.open_table(META).map_err(|e| self.err(e))?;
                let old = meta
                    .get(SPOOL_NEXT)
                    .map_err(|e| self.err(e))?
                    .map_or(0, |v| v.value());
                meta.insert(SPOOL_NEXT, next.max(old))
                    .map_err(|e| self.err(e))?;
            }
        }
        // Durability::Immediate (redb's default): one fsync, durable on return.
        tx.commit().map_err(|e| self.err(e))
    }

    fn load_all(&self) -> Result<Snapshot, StoreError> {
        let corrupt = |table: &str, e: enc::DecodeError| StoreError::Corrupt {
            path: self.path.clone(),
            detail: format!("table {table}: {}", e.0),
        };
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let open = |d| tx.open_table(d).map_err(|e| self.err(e));

        // Keyed by the encoded client prefix so the other tables find their session.
        let mut sessions: BTreeMap<Vec<u8>, StoredSession> = BTreeMap::new();
        for row in open(SESSIONS)?.iter().map_err(|e| self.err(e))? {
            let (k, v) = row.map_err(|e| self.err(e))?;
            let client_id = enc::decode_key_str(k.value()).map_err(|e| corrupt("sessions", e))?;
            let (expiry_interval, offline_since_ms) =
                enc::decode_session(v.value()).map_err(|e| corrupt("sessions", e))?;
            sessions.insert(
                k.value().to_vec(),
                StoredSession {
                    client_id: client_id.to_owned(),
                    expiry_interval,
                    offline_since_ms,
                    ..StoredSession::default()
                },
            );
        }
        let mut orphans = 0usize;
        let mut each = |def, name: &'static str, f: &mut RowFn<'_>| -> Result<(), StoreError> {
            for row in open(def)?.iter().map_err(|e| self.err(e))? {
                let (k, v) = row.map_err(|e| self.err(e))?;
                let (id, rest) = enc::split_client_key(k.value()).map_err(|e| corrupt(name, e))?;
                let prefix = enc::client_prefix(id);
                match sessions.get_mut(&prefix) {
                    Some(s) => f(s, rest, v.value()).map_err(|e| corrupt(name, e))?,
                    None => orphans += 1,
                }
            }
            Ok(())
        };
        each(SUBS, "subscriptions", &mut |s, filter, v| {
            let filter =
                std::str::from_utf8(filter).map_err(|_| enc::DecodeError("filter is not UTF-8"))?;
            let (options, id) = enc::decode_subscription(v)?;
            s.subscriptions.push((filter.to_owned(), options, id));
            Ok(())
        })?;
        each(MESSAGES, "messages", &mut |s, seq, v| {
            let seq = enc::decode_u64_be(seq)?;
            let (m, state) = enc::decode_outgoing(v)?;
            s.messages.push((seq, m, state));
            Ok(())
        })?;
        each(QOS2, "incoming_qos2", &mut |s, pid, _| {
            s.incoming_qos2.push(enc::decode_u16_be(pid)?);
            Ok(())
        })?;
        each(WILLS, "wills", &mut |s, rest, v| {
            if !rest.is_empty() {
                return Err(enc::DecodeError("bad will key"));
            }
            s.will = Some(enc::decode_will(v)?);
            Ok(())
        })?;
        if orphans > 0 {
            tracing::warn!(
                path = %self.path.display(),
                orphans,
                "store: entries of sessions that do not exist were ignored"
            );
        }
        let mut retained = Vec::new();
        for row in open(RETAINED)?.iter().map_err(|e| self.err(e))? {
            let (k, v) = row.map_err(|e| self.err(e))?;
            let topic = enc::decode_key_str(k.value()).map_err(|e| corrupt("retained", e))?;
            let m = enc::decode_retained(v.value()).map_err(|e| corrupt("retained", e))?;
            if m.topic != topic {
                return Err(corrupt(
                    "retained",
                    enc::DecodeError("key and topic differ"),
                ));
            }
            retained.push(m);
        }
        Ok(Snapshot {
            sessions: sessions.into_values().collect(),
            retained,
        })
    }
}

impl Store for DiskStore {
    type Error = StoreError;

    /// Applies the batch in one transaction and returns once it is on disk (one fsync).
    ///
    /// Ops that refer to something missing (a state change or removal of a message that is
    /// not stored, `SessionOffline` for an unknown session) change nothing.
    fn apply(&mut self, ops: &[StoreOp]) -> Result<(), StoreError> {
        if ops.is_empty() {
            return Ok(());
        }
        self.apply_ops(ops)
    }

    /// Loads everything: sessions (messages in sequence order, subscriptions in filter
    /// order, incoming QoS 2 ids ascending) and retained messages (in topic order).
    fn load(&self) -> Result<Snapshot, StoreError> {
        guard(&self.path, || self.load_all())?
    }
}

impl DiskStore {
    /// A reader of the forwarding spools, usable from any thread while the server writes
    /// (a redb read transaction sees the last commit and never blocks the writer).
    pub fn spool_reader(&self) -> SpoolReader {
        SpoolReader {
            db: std::sync::Arc::clone(&self.db),
            path: self.path.clone(),
        }
    }
}

type SpoolTable = redb::ReadOnlyTable<&'static [u8], &'static [u8]>;

/// Reads the forwarding spools ([`StoreOp::SpoolPut`]) of a [`DiskStore`].
#[derive(Clone)]
pub struct SpoolReader {
    db: std::sync::Arc<redb::Database>,
    path: PathBuf,
}

impl fmt::Debug for SpoolReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpoolReader")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SpoolReader {
    fn err(&self, e: impl Into<redb::Error>) -> StoreError {
        StoreError::from_redb(&self.path, e.into())
    }

    fn table(&self) -> Result<Option<SpoolTable>, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        match tx.open_table(SPOOL) {
            Ok(t) => Ok(Some(t)),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Up to `limit` records of `rule` with keys after `after` (from the first when `None`),
    /// in key order, as (key, encoded record).
    ///
    /// # Errors
    /// [`StoreError`] if the file cannot be read.
    pub fn read(
        &self,
        rule: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let Some(t) = self.table()? else {
            return Ok(Vec::new());
        };
        let prefix = enc::client_prefix(rule);
        let start = match after {
            Some(k) => match k.checked_add(1) {
                Some(next) => enc::key_with(rule, &next.to_be_bytes()),
                None => return Ok(Vec::new()),
            },
            None => prefix.clone(),
        };
        let range = match enc::prefix_end(&prefix) {
            Some(end) => t.range(start.as_slice()..end.as_slice()),
            None => t.range(start.as_slice()..),
        }
        .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in range.take(limit) {
            let (k, v) = row.map_err(|e| self.err(e))?;
            let (_, key) = enc::split_client_key(k.value()).map_err(|e| StoreError::Corrupt {
                path: self.path.clone(),
                detail: format!("table spool: {}", e.0),
            })?;
            let key = enc::decode_u64_be(key).map_err(|e| StoreError::Corrupt {
                path: self.path.clone(),
                detail: format!("table spool: {}", e.0),
            })?;
            out.push((key, v.value().to_vec()));
        }
        Ok(out)
    }

    /// Every rule with spooled records: (rule, records, bytes). Reads the whole spool: for
    /// start-up.
    ///
    /// # Errors
    /// [`StoreError`] if the file cannot be read.
    pub fn usage(&self) -> Result<Vec<(String, u64, u64)>, StoreError> {
        let Some(t) = self.table()? else {
            return Ok(Vec::new());
        };
        let mut out: Vec<(String, u64, u64)> = Vec::new();
        for row in t.iter().map_err(|e| self.err(e))? {
            let (k, v) = row.map_err(|e| self.err(e))?;
            let (rule, _) = enc::split_client_key(k.value()).map_err(|e| StoreError::Corrupt {
                path: self.path.clone(),
                detail: format!("table spool: {}", e.0),
            })?;
            let bytes = v.value().len() as u64;
            match out.last_mut() {
                Some((r, n, b)) if r == rule => {
                    *n += 1;
                    *b += bytes;
                }
                _ => out.push((rule.to_owned(), 1, bytes)),
            }
        }
        Ok(out)
    }

    /// The next spool key: one past the highest ever put (0 for a new store).
    ///
    /// # Errors
    /// [`StoreError`] if the file cannot be read.
    pub fn next_key(&self) -> Result<u64, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let meta = tx.open_table(META).map_err(|e| self.err(e))?;
        Ok(meta
            .get(SPOOL_NEXT)
            .map_err(|e| self.err(e))?
            .map_or(0, |v| v.value()))
    }
}

/// What a store holds, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct StoreStats {
    /// Persistent sessions.
    pub sessions: u64,
    /// Subscriptions of persistent sessions.
    pub subscriptions: u64,
    /// Queued and in-flight outgoing messages.
    pub messages: u64,
    /// Retained messages.
    pub retained: u64,
    /// Bytes on disk.
    pub disk_bytes: u64,
}

/// Adds one row of a session's table to the session: (session, key after the client id, value).
type RowFn<'a> = dyn FnMut(&mut StoredSession, &[u8], &[u8]) -> Result<(), enc::DecodeError> + 'a;

struct Tables<'tx> {
    sessions: redb::Table<'tx, &'static [u8], &'static [u8]>,
    subs: redb::Table<'tx, &'static [u8], &'static [u8]>,
    messages: redb::Table<'tx, &'static [u8], &'static [u8]>,
    qos2: redb::Table<'tx, &'static [u8], &'static [u8]>,
    wills: redb::Table<'tx, &'static [u8], &'static [u8]>,
    retained: redb::Table<'tx, &'static [u8], &'static [u8]>,
    spool: redb::Table<'tx, &'static [u8], &'static [u8]>,
    /// One past the highest spool key put in this batch.
    spool_next: Option<u64>,
}

enum OpError {
    Redb(Box<redb::Error>),
    TooLong(&'static str),
}

impl<E: Into<redb::Error>> From<E> for OpError {
    fn from(e: E) -> Self {
        Self::Redb(Box::new(e.into()))
    }
}

fn check_len(s: &str, what: &'static str) -> Result<(), OpError> {
    if enc::key_str_fits(s) {
        Ok(())
    } else {
        Err(OpError::TooLong(what))
    }
}

impl Tables<'_> {
    fn apply(&mut self, op: &StoreOp) -> Result<(), OpError> {
        match op {
            StoreOp::SessionUpsert {
                client_id,
                expiry_interval,
            } => {
                check_len(client_id, "client id")?;
                let k = enc::encode_key_str(client_id);
                self.sessions.insert(
                    k.as_slice(),
                    enc::encode_session(*expiry_interval, None).as_slice(),
                )?;
            }
            StoreOp::SessionOffline { client_id, at_ms } => {
                let k = enc::encode_key_str(client_id);
                let old = self.sessions.get(k.as_slice())?.map(|v| v.value().to_vec());
                if let Some(Ok((expiry, _))) = old.as_deref().map(enc::decode_session) {
                    self.sessions.insert(
                        k.as_slice(),
                        enc::encode_session(expiry, Some(*at_ms)).as_slice(),
                    )?;
                }
            }
            StoreOp::SessionRemove { client_id } => {
                let prefix = enc::client_prefix(client_id);
                self.sessions.remove(prefix.as_slice())?;
                self.wills.remove(prefix.as_slice())?;
                remove_prefix(&mut self.subs, &prefix)?;
                remove_prefix(&mut self.messages, &prefix)?;
                remove_prefix(&mut self.qos2, &prefix)?;
            }
            StoreOp::SubscriptionSet {
                client_id,
                filter,
                options,
                id,
            } => {
                check_len(client_id, "client id")?;
                let k = enc::key_with(client_id, filter.as_bytes());
                self.subs.insert(
                    k.as_slice(),
                    enc::encode_subscription(*options, *id).as_slice(),
                )?;
            }
            StoreOp::SubscriptionRemove { client_id, filter } => {
                let k = enc::key_with(client_id, filter.as_bytes());
                self.subs.remove(k.as_slice())?;
            }
            StoreOp::MessagePut {
                client_id,
                seq,
                message,
                state,
            } => {
                check_len(client_id, "client id")?;
                let k = enc::key_with(client_id, &seq.to_be_bytes());
                self.messages.insert(
                    k.as_slice(),
                    enc::encode_outgoing(message, *state).as_slice(),
                )?;
            }
            StoreOp::MessageState {
                client_id,
                seq,
                state,
            } => {
                let k = enc::key_with(client_id, &seq.to_be_bytes());
                let old = self.messages.get(k.as_slice())?.map(|v| v.value().to_vec());
                if let Some(mut v) = old {
                    if v.len() >= enc::STATE_RANGE.end {
                        v[enc::STATE_RANGE].copy_from_slice(&enc::encode_state(*state));
                        self.messages.insert(k.as_slice(), v.as_slice())?;
                    }
                }
            }
            StoreOp::MessageRemove { client_id, seq } => {
                let k = enc::key_with(client_id, &seq.to_be_bytes());
                self.messages.remove(k.as_slice())?;
            }
            StoreOp::IncomingQos2Add {
                client_id,
                packet_id,
            } => {
                check_len(client_id, "client id")?;
                let k = enc::key_with(client_id, &packet_id.to_be_bytes());
                self.qos2.insert(k.as_slice(), [].as_slice())?;
            }
            StoreOp::IncomingQos2Remove {
                client_id,
                packet_id,
            } => {
                let k = enc::key_with(client_id, &packet_id.to_be_bytes());
                self.qos2.remove(k.as_slice())?;
            }
            StoreOp::WillSet {
                client_id,
                will,
                at_ms,
            } => {
                check_len(client_id, "client id")?;
                let k = enc::client_prefix(client_id);
                self.wills
                    .insert(k.as_slice(), enc::encode_will(will, *at_ms).as_slice())?;
            }
            StoreOp::WillRemove { client_id } => {
                let k = enc::client_prefix(client_id);
                self.wills.remove(k.as_slice())?;
            }
            StoreOp::RetainedSet { message } => {
                check_len(&message.topic, "topic")?;
                let k = enc::encode_key_str(&message.topic);
                self.retained
                    .insert(k.as_slice(), enc::encode_retained(message).as_slice())?;
            }
            StoreOp::SpoolPut { rule, key, record } => {
                check_len(rule, "rule name")?;
                let k = enc::key_with(rule, &key.to_be_bytes());
                self.spool.insert(k.as_slice(), record.as_ref())?;
                let next = key.saturating_add(1);
                self.spool_next = Some(self.spool_next.map_or(next, |n| n.max(next)));
            }
            StoreOp::SpoolRemove { rule, keys } => {
                for key in keys {
                    let k = enc::key_with(rule, &key.to_be_bytes());
                    self.spool.remove(k.as_slice())?;
                }
            }
            StoreOp::RetainedRemove { topic } => {
                let k = enc::encode_key_str(topic);
                self.retained.remove(k.as_slice())?;
            }
        }
        Ok(())
    }
}

/// Removes every key that starts with `prefix`.
fn remove_prefix(
    t: &mut redb::Table<'_, &'static [u8], &'static [u8]>,
    prefix: &[u8],
) -> Result<(), OpError> {
    let keys: Vec<Vec<u8>> = match enc::prefix_end(prefix) {
        Some(end) => t.range(prefix..end.as_slice())?,
        None => t.range(prefix..)?,
    }
    .map(|r| r.map(|(k, _)| k.value().to_vec()))
    .collect::<Result<_, _>>()?;
    for k in keys {
        t.remove(k.as_slice())?;
    }
    Ok(())
}

fn create_dir(dir: &Path) -> Result<(), StoreError> {
    let mut b = fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir).map_err(|e| StoreError::io(dir, e))
}

/// Creates an initialised store at `path` via a temporary file and a rename.
fn create_file(dir: &Path, path: &Path) -> Result<(), StoreError> {
    let tmp = dir.join(format!("{FILE_NAME}.new"));
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(StoreError::io(&tmp, e)),
    }
    {
        let mut o = fs::OpenOptions::new();
        o.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
        o.open(&tmp).map_err(|e| StoreError::io(&tmp, e))?;
        let db = redb::Database::builder()
            .create(&tmp)
            .map_err(|e| StoreError::from_redb(&tmp, e.into()))?;
        let tx = db
            .begin_write()
            .map_err(|e| StoreError::from_redb(&tmp, e.into()))?;
        {
            let mut meta = tx
                .open_table(META)
                .map_err(|e| StoreError::from_redb(&tmp, e.into()))?;
            meta.insert("format", FORMAT_VERSION)
                .map_err(|e| StoreError::from_redb(&tmp, e.into()))?;
            for t in [SESSIONS, SUBS, MESSAGES, QOS2, WILLS, RETAINED] {
                tx.open_table(t)
                    .map_err(|e| StoreError::from_redb(&tmp, e.into()))?;
            }
        }
        tx.commit()
            .map_err(|e| StoreError::from_redb(&tmp, e.into()))?;
    }
    fs::rename(&tmp, path).map_err(|e| StoreError::io(path, e))?;
    // The rename is durable once the directory is.
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(dir, e))
}

fn open_existing(path: &Path) -> Result<redb::Database, StoreError> {
    let meta = fs::metadata(path).map_err(|e| StoreError::io(path, e))?;
    if meta.len() == 0 {
        // redb would initialise an empty file: refuse, a store is never empty on disk.
        return Err(StoreError::Corrupt {
            path: path.to_owned(),
            detail: "the file is empty".into(),
        });
    }
    let mut db = redb::Database::builder()
        .open(path)
        .map_err(|e| StoreError::from_redb(path, e.into()))?;
    // Verify every page checksum: a damaged page is found now, not in the middle of a run.
    if !db
        .check_integrity()
        .map_err(|e| StoreError::from_redb(path, e.into()))?
    {
        tracing::warn!(path = %path.display(), "store: repaired after an unclean shutdown");
    }
    let tx = db
        .begin_read()
        .map_err(|e| StoreError::from_redb(path, e.into()))?;
    let found = match tx.open_table(META) {
        Ok(t) => t
            .get("format")
            .map_err(|e| StoreError::from_redb(path, e.into()))?
            .map(|v| v.value()),
        Err(redb::TableError::TableDoesNotExist(_)) => None,
        Err(e) => return Err(StoreError::from_redb(path, e.into())),
    };
    let Some(found) = found else {
        return Err(StoreError::Corrupt {
            path: path.to_owned(),
            detail: "no format version: this is not a Moat store".into(),
        });
    };
    if found != FORMAT_VERSION {
        return Err(StoreError::Version {
            found,
            expected: FORMAT_VERSION,
            path: path.to_owned(),
        });
    }
    for t in [SESSIONS, SUBS, MESSAGES, QOS2, WILLS, RETAINED] {
        if let Err(e) = tx.open_table(t) {
            return Err(StoreError::Corrupt {
                path: path.to_owned(),
                detail: format!("table {}: {e}", t.name()),
            });
        }
    }
    drop(tx);
    Ok(db)
}

/// Runs `f`, turning a panic inside the engine (which is not built to survive every kind of
/// damaged file) into [`StoreError::Corrupt`]. A panic message may still be printed by the
/// panic hook; the broker gets an error it can report, never an abort.
fn guard<T>(path: &Path, f: impl FnOnce() -> T) -> Result<T, StoreError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| {
        let msg = p
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown".into());
        StoreError::Corrupt {
            path: path.to_owned(),
            detail: format!("the database engine failed while reading it: {msg}"),
        }
    })
}
