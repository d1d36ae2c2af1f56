//! moat.toml: the raw file as written ([`ConfigFile`], every key optional, unknown keys
//! refused), its validation into the server's settings ([`ConfigFile::validate_in`] ->
//! [`Settings`]) and the way back ([`Settings::effective`]: the settings in force as a file,
//! what `moat serve --print-config` prints). [`ConfigFile::save`] writes a file atomically, so
//! that the server and an admin API can write the configuration as well as read it.
//!
//! Errors ([`ConfigError`]) name the file, the key and the fix.
//!
//! What this module does not do: make certificates (the CLI's first run does) or read the
//! environment. A file it rewrites keeps its comments and layout where its values did not
//! change ([`merge_text`]).

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

mod settings;

pub use settings::{AdminSettings, Settings, DEFAULT_ADMIN_BIND};

/// The file as written by the user. Every key is optional; an unknown key is an error (a
/// typo must not silently keep a default). (Not `Eq`: `warn_days` are floats.)
#[derive(Debug, Default, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// The data directory (default "moat-data"), relative to the file's folder.
    pub data_dir: Option<PathBuf>,
    /// Threads that run connections and the router (default: half the CPUs the process may
    /// use, at least 1; see docs/BENCHMARKS.md, "Worker threads").
    pub worker_threads: Option<usize>,
    /// `[[listeners]]`; none means one anonymous plain TCP listener on 127.0.0.1:1883.
    #[serde(default)]
    pub listeners: Vec<ListenerFile>,
    /// `[auth]`.
    pub auth: Option<AuthFile>,
    /// `[store]`.
    pub store: Option<StoreFile>,
    /// `[limits]`.
    pub limits: Option<LimitsFile>,
    /// `[admin]`: the admin API and web console.
    pub admin: Option<AdminFile>,
    /// `[tls_alarms]`: warnings before certificates and CRLs expire.
    pub tls_alarms: Option<TlsAlarmsFile>,
    /// `[forward]`: rules that forward accepted messages to PostgreSQL or NATS JetStream
    /// (docs/FORWARDING.md). Its paths are relative to the file's folder.
    pub forward: Option<moat_forward::ForwardFile>,
}

/// `[tls_alarms]`: when the broker warns (log, `$SYS/broker/tls/expiry/warning`, metrics)
/// that a certificate it serves or trusts, a CRL's next update or a connected client's
/// certificate is about to expire.
#[derive(Debug, Default, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsAlarmsFile {
    /// Days before expiry to warn at, each once (default [30, 7, 1]); fractions are allowed
    /// (0.5 is 12 hours, at least a second); sorted and deduplicated; [] turns the warnings
    /// off.
    pub warn_days: Option<Vec<f64>>,
    /// Seconds between checks (default 60, at least 1).
    pub check_interval_secs: Option<u64>,
}

/// `[admin]`: the admin HTTP API and web console (docs/ADMIN-API.md). Relative paths are
/// relative to `data_dir`.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminFile {
    /// false: no admin API (default true).
    pub enabled: Option<bool>,
    /// IP:PORT (default 127.0.0.1:18083).
    pub bind: Option<String>,
    /// The admin role's bearer token, made on the first start, 0600 (default "admin.token").
    pub token_file: Option<PathBuf>,
    /// The viewer role's (read-only) bearer token, made on the first start, 0600 (default
    /// "viewer.token").
    pub viewer_token_file: Option<PathBuf>,
    /// The audit log: one JSON line per change (default "audit.log").
    pub audit_log: Option<PathBuf>,
    /// Serve the API over TLS with the certificate and key of this TLS listener (default:
    /// plain HTTP, which is why the default bind is loopback).
    pub tls_listener: Option<String>,
}

/// `[store]`: the durable store under data_dir.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StoreFile {
    /// false keeps sessions and retained messages in memory only (default true).
    pub enabled: Option<bool>,
    /// The store directory, relative to data_dir (default "store").
    pub path: Option<PathBuf>,
    /// "group-commit" (default) or "fsync-each".
    pub durability: Option<String>,
}

/// `[auth]`. Relative paths are relative to `data_dir`.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthFile {
    /// The password file (default "passwd").
    pub password_file: Option<PathBuf>,
    /// The ACL file (default: none, every authenticated client may use every topic).
    pub acl_file: Option<PathBuf>,
}

/// One `[[listeners]]` entry.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerFile {
    /// Its name in logs and metrics (default "listener0", "listener1", ...).
    pub name: Option<String>,
    /// tcp (default) | tls | ws | wss.
    pub kind: Option<String>,
    /// IP:PORT (default by kind: 127.0.0.1:1883, 0.0.0.0:8883, 127.0.0.1:8083, 0.0.0.0:8084).
    pub bind: Option<String>,
    /// Whether clients without credentials may connect (default: only on loopback plain TCP).
    pub allow_anonymous: Option<bool>,
    /// Which proofs a non-anonymous client needs: password | certificate | either | both.
    pub auth: Option<String>,
    /// WebSocket path (ws, wss; default "/mqtt").
    pub path: Option<String>,
    /// `[listeners.tls]` (tls, wss).
    pub tls: Option<TlsFile>,
    /// client (default: as sent) | certificate (the client certificate's identity).
    pub client_id: Option<String>,
    /// disconnect (default) | warn: when a connected client's certificate expires.
    pub on_client_cert_expiry: Option<String>,
}

/// `[listeners.tls]`. Relative paths are relative to the config file's folder.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    /// The server certificate (PEM).
    pub cert: Option<PathBuf>,
    /// Intermediate certificates sent after it (PEM).
    pub chain: Option<PathBuf>,
    /// The private key (PEM).
    pub key: Option<PathBuf>,
    /// A file holding the passphrase of an encrypted key.
    pub key_passphrase_file: Option<PathBuf>,
    /// none (default) | optional | required.
    pub client_auth: Option<String>,
    /// The CA that signed client certificates: one file, or several trusted at once
    /// (`["new-ca.pem", "old-ca.pem"]`, to rotate a client CA).
    pub client_ca: Option<Paths>,
    /// Certificate revocation lists (PEM or DER).
    #[serde(default)]
    pub crl: Vec<PathBuf>,
    /// What a CRL past its next update does: warn (default: it is still applied, with a
    /// warning, a metric and $SYS) | fail_closed (every handshake is refused until a fresh
    /// CRL is loaded).
    pub crl_stale: Option<String>,
    /// Where a client certificate's identity comes from: none | cn (default) | san | dn.
    pub identity: Option<String>,
    /// Accept X.509 v1 client certificates (default false).
    pub accept_v1_client_certs: Option<bool>,
    /// An OCSP response for `cert` (DER as `openssl ocsp -respout` writes it, or PEM),
    /// stapled when it checks out; re-read with the other files.
    pub ocsp: Option<PathBuf>,
    /// More certificates chosen by the name the client asks for (SNI); `cert` stays the
    /// default. `sni = [{ cert = "...", key = "...", names = ["b.example"] }]` or
    /// `[[listeners.tls.sni]]` tables.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sni: Vec<SniFile>,
}

/// One `[[listeners.tls.sni]]` certificate set. Relative paths are relative to the config
/// file's folder.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SniFile {
    /// The certificate (PEM).
    pub cert: Option<PathBuf>,
    /// Intermediate certificates sent after it (PEM).
    pub chain: Option<PathBuf>,
    /// The private key (PEM).
    pub key: Option<PathBuf>,
    /// A file holding the passphrase of an encrypted key.
    pub key_passphrase_file: Option<PathBuf>,
    /// An OCSP response for `cert`, stapled when it checks out.
    pub ocsp: Option<PathBuf>,
    /// The names this set answers for (`*.example.com` matches one label); default: the DNS
    /// names of its certificate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
}

/// One path or several: `"ca.pem"` or `["new-ca.pem", "old-ca.pem"]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Paths {
    /// One file.
    One(PathBuf),
    /// Several files, in order.
    Several(Vec<PathBuf>),
}

impl Paths {
    /// The files, in order.
    pub fn paths(&self) -> &[PathBuf] {
        match self {
            Self::One(p) => std::slice::from_ref(p),
            Self::Several(v) => v,
        }
    }

    /// `first` and `more` as written: a string for one file, a list for more.
    pub fn of(first: PathBuf, more: Vec<PathBuf>) -> Self {
        if more.is_empty() {
            Self::One(first)
        } else {
            Self::Several(std::iter::once(first).chain(more).collect())
        }
    }
}

/// `[limits]`: the broker's protective limits (docs/LIMITS.md has each one's default and what
/// a client gets at and over it). 0 is never "unlimited".
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    /// The largest packet a client may send, in bytes.
    pub max_packet_size: Option<u32>,
    /// QoS 2 publishes a client may have unacknowledged.
    pub receive_maximum: Option<u16>,
    /// QoS 1/2 messages in flight to one client.
    pub max_inflight: Option<u16>,
    /// Messages queued for one session.
    pub max_queued_messages: Option<usize>,
    /// Bytes (topic + payload) queued for one session.
    pub max_queued_bytes: Option<usize>,
    /// A subscriber's queue length at which its publishers' acknowledgements are held back.
    pub flow_control_queued: Option<usize>,
    /// Topic aliases a v5 client may use (0: none).
    pub topic_alias_maximum: Option<u16>,
    /// The longest keep-alive granted, in seconds.
    pub max_keep_alive: Option<u16>,
    /// The longest session expiry granted, in seconds (0: sessions end with the connection).
    pub max_session_expiry: Option<u32>,
    /// Retained messages kept.
    pub max_retained_messages: Option<usize>,
    /// Bytes (topic + payload) of retained messages kept.
    pub max_retained_bytes: Option<usize>,
    /// Levels of a topic name or filter (at most 1024).
    pub max_topic_levels: Option<usize>,
    /// Bytes of a topic name or filter (at most 65535).
    pub max_topic_length: Option<usize>,
    /// Subscriptions of one session.
    pub max_subscriptions_per_client: Option<usize>,
    /// Open connections over all listeners.
    pub max_connections: Option<usize>,
    /// Password checks (argon2id, 19 MiB each) at once; default 2 per CPU, 2 to 32.
    pub max_concurrent_auth: Option<usize>,
    /// Seconds a client has to send CONNECT.
    pub connect_timeout_secs: Option<u64>,
    /// Packets waiting to be written to one client before QoS 0 to it is dropped.
    pub max_outbox_packets: Option<usize>,
    /// Seconds between $SYS publications (0: none).
    pub sys_interval_secs: Option<u64>,
    /// Records one forwarding rule's spool holds before its publishers are slowed.
    pub forward_spool_messages: Option<u64>,
    /// Bytes one forwarding rule's spool holds before its publishers are slowed.
    pub forward_spool_bytes: Option<u64>,
    /// Records per sink write at most.
    pub forward_batch: Option<usize>,
}

/// Why a config file cannot be read, used or written.
///
/// `Display` describes one level; the cause is reached through
/// [`source`](std::error::Error::source) (`{:#}` in anyhow prints `config file moat.toml:
/// listeners[0].bind: ...`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// The file could not be written; the file at `path`, if any, is unchanged.
    #[error("cannot write config file {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// Something in this file is wrong: the source says what.
    #[error("config file {}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// The problem.
        source: Box<Self>,
    },
    /// Not TOML, a value of the wrong type, or a key Moat does not know (a typo); the message
    /// shows the line and names the key.
    #[error("{message}")]
    Syntax {
        /// The TOML parser's message.
        message: String,
        /// The 1-based line of the problem, when known.
        line: Option<usize>,
    },
    /// A key whose value is not one of the words it takes.
    #[error("{key}: {value:?} is not one of {}", OneOf(allowed))]
    NotOneOf {
        /// The key, e.g. `listeners[0].kind`.
        key: String,
        /// The value given.
        value: String,
        /// The values it takes.
        allowed: &'static [&'static str],
    },
    /// A limit set to 0: limits are never unlimited.
    #[error(
        "{key}: 0 is not allowed (limits are never unlimited); remove the key to use the default"
    )]
    ZeroLimit {
        /// The key, e.g. `limits.max_inflight`.
        key: String,
    },
    /// Another invalid or missing value.
    #[error("{key}: {reason}")]
    Invalid {
        /// The key, e.g. `listeners[0].bind`.
        key: String,
        /// What is wrong and how to fix it, lower case.
        reason: String,
    },
    /// The settings hold something TOML cannot carry (a path that is not UTF-8).
    #[error("cannot write the settings as TOML: {reason}")]
    Unrepresentable {
        /// The TOML serializer's message.
        reason: String,
    },
}

impl ConfigError {
    /// The key the problem is about (`listeners[0].bind`, `limits.max_inflight`), if it is
    /// about one key.
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::NotOneOf { key, .. } | Self::ZeroLimit { key } | Self::Invalid { key, .. } => {
                Some(key)
            }
            Self::File { source, .. } => source.key(),
            _ => None,
        }
    }

    pub(crate) fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn in_file(self, path: &Path) -> Self {
        Self::File {
            path: path.to_owned(),
            source: Box::new(self),
        }
    }
}

/// `"a", "b", "c"`.
struct OneOf(&'static [&'static str]);

impl std::fmt::Display for OneOf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, v) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{v:?}")?;
        }
        Ok(())
    }
}

impl FromStr for ConfigFile {
    type Err = ConfigError;

    /// Parses the text of a config file.
    ///
    /// # Errors
    /// [`ConfigError::Syntax`]: not TOML, a value of the wrong type or an unknown key.
    fn from_str(text: &str) -> Result<Self, ConfigError> {
        // toml's own text shows the line, a caret under the key and the message; it ends
        // with a newline.
        toml::from_str(text).map_err(|e| ConfigError::Syntax {
            message: e.to_string().trim_end().to_owned(),
            line: e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1),
        })
    }
}

impl ConfigFile {
    /// Reads and parses a config file (without validating it: see [`Settings::load`]).
    ///
    /// # Errors
    /// [`ConfigError::Read`] when the file cannot be read; [`ConfigError::File`] around a
    /// [`ConfigError::Syntax`] when it is not a valid config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_str(&text).map_err(|e| e.in_file(path))
    }

    /// The file as TOML text: keys in the order of this model, tables after plain keys,
    /// unset keys left out.
    ///
    /// # Errors
    /// [`ConfigError::Unrepresentable`] for a path that is not UTF-8.
    pub fn to_toml_string(&self) -> Result<String, ConfigError> {
        toml::to_string(self).map_err(|e| ConfigError::Unrepresentable {
            reason: e.to_string().trim_end().to_owned(),
        })
    }

    /// Writes the file atomically: a temporary file in the same folder, written and flushed
    /// to disk, renamed over `path`, then the folder flushed (so the rename survives a crash).
    /// A reader sees the old file or the new one, never a part.
    ///
    /// The mode of an existing file is kept; a new file gets 0644 (less what the umask
    /// removes): a config file holds paths and limits, never a secret (keys, passphrases and
    /// password hashes live in the files it names). A symbolic link at `path` is followed:
    /// its target is replaced. What did not change keeps the old file's text (comments,
    /// order, quoting: [`merge_text`]).
    ///
    /// Validate first ([`validate_in`](Self::validate_in)): `save` writes what it is given.
    ///
    /// # Errors
    /// [`ConfigError::Write`] for an I/O error (the old file is unchanged, unless only the
    /// last step, flushing the folder, failed) and [`ConfigError::File`] around
    /// [`ConfigError::Unrepresentable`].
    pub fn save(&self, path: &Path) -> Result<(), ConfigError> {
        let text = self.to_toml_string().map_err(|e| e.in_file(path))?;
        let write_err = |source| ConfigError::Write {
            path: path.to_owned(),
            source,
        };
        let target = match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_symlink() => {
                std::fs::canonicalize(path).map_err(write_err)?
            }
            _ => path.to_owned(),
        };
        let text = match std::fs::read_to_string(&target) {
            Ok(old) => merge_text(&old, &text).unwrap_or(text),
            Err(_) => text,
        };
        write_atomic(&target, text.as_bytes()).map_err(write_err)
    }
}

/// `new` (a whole file) written over `old` so that what did not change keeps the old text:
/// comments, blank lines, the order of keys and tables, quoting, inline tables. A changed
/// value keeps the comments around it; a key only in `new` is added at the end of its table;
/// a key only in `old` is removed. Arrays of tables (`[[listeners]]`) are matched by
/// position. `None` if either text is not TOML (the caller writes `new` as it is).
pub fn merge_text(old: &str, new: &str) -> Option<String> {
    let mut doc: toml_edit::DocumentMut = old.parse().ok()?;
    let new: toml_edit::DocumentMut = new.parse().ok()?;
    merge_table(doc.as_table_mut(), new.as_table());
    Some(doc.to_string())
}

/// Returns whether a key was added.
fn merge_table(old: &mut dyn toml_edit::TableLike, new: &dyn toml_edit::TableLike) -> bool {
    let gone: Vec<String> = old
        .iter()
        .map(|(k, _)| k.to_owned())
        .filter(|k| !new.contains_key(k))
        .collect();
    for k in gone {
        old.remove(&k);
    }
    let mut added = false;
    for (k, n) in new.iter() {
        match old.get_mut(k) {
            Some(o) => merge_item(o, n),
            None => {
                old.insert(k, n.clone());
                added = true;
            }
        }
    }
    added
}

fn merge_item(old: &mut toml_edit::Item, new: &toml_edit::Item) {
    use toml_edit::{Item, Value};
    match (old, new) {
        (Item::Table(o), Item::Table(n)) => {
            merge_table(o, n);
        }
        // The user wrote `tls = { ... }` (where the serializer writes `[listeners.tls]`): an
        // inline table that gained a key is spaced again (its own comments stay).
        (
            Item::Value(Value::InlineTable(o)),
            Item::Table(_) | Item::Value(Value::InlineTable(_)),
        ) => {
            if new.as_table_like().is_some_and(|n| merge_table(o, n)) {
                o.fmt();
            }
        }
        (Item::ArrayOfTables(o), Item::ArrayOfTables(n)) => {
            for (i, nt) in n.iter().enumerate() {
                match o.get_mut(i) {
                    Some(ot) => {
                        merge_table(ot, nt);
                    }
                    None => o.push(nt.clone()),
                }
            }
            while o.len() > n.len() {
                o.remove(o.len() - 1);
            }
        }
        (Item::Value(o), Item::Value(n)) => {
            if !same_value(o, n) {
                let decor = o.decor().clone();
                *o = n.clone();
                *o.decor_mut() = decor;
            }
        }
        (o, n) => *o = n.clone(),
    }
}

/// Equal as TOML values, whatever their spelling (`'a'` and `"a"`, `1_000` and `1000`).
fn same_value(a: &toml_edit::Value, b: &toml_edit::Value) -> bool {
    use toml_edit::Value;
    match (a, b) {
        (Value::String(x), Value::String(y)) => x.value() == y.value(),
        (Value::Integer(x), Value::Integer(y)) => x.value() == y.value(),
        (Value::Float(x), Value::Float(y)) => x.value().to_bits() == y.value().to_bits(),
        (Value::Boolean(x), Value::Boolean(y)) => x.value() == y.value(),
        (Value::Datetime(x), Value::Datetime(y)) => x.value() == y.value(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y.iter()).all(|(p, q)| same_value(p, q))
        }
        (Value::InlineTable(x), Value::InlineTable(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_value(v, w)))
        }
        _ => false,
    }
}

/// Temporary files of concurrent saves in one process get distinct names.
static SAVES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(
        ".tmp{}-{}",
        std::process::id(),
        SAVES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let tmp = dir.join(tmp_name);
    let existing = std::fs::metadata(path).ok().map(|m| m.permissions());
    let result = (|| {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o644);
        let mut f = opts.open(&tmp)?;
        if let Some(perms) = existing {
            f.set_permissions(perms)?;
        }
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    // The rename is durable once the folder is. Not every platform opens a folder as a file.
    #[cfg(unix)]
    std::fs::File::open(&dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syntax_errors_give_the_line_and_the_key() {
        let e = ConfigFile::from_str("data_dir = \"d\"\n[[listeners]]\nallow_anonymus = true\n")
            .unwrap_err();
        assert!(
            matches!(e, ConfigError::Syntax { line: Some(3), .. }),
            "{e:?}"
        );
        assert!(e.to_string().contains("allow_anonymus"), "{e}");
        assert!(!e.to_string().ends_with('\n'));
    }

    #[test]
    fn worker_threads_default_and_bounds() {
        let s = ConfigFile::from_str("").unwrap().validate().unwrap();
        assert_eq!(s.worker_threads, crate::default_worker_threads());
        assert!(s.worker_threads >= 1);
        assert_eq!(s.effective().worker_threads, Some(s.worker_threads));
        let s = ConfigFile::from_str("worker_threads = 3").unwrap();
        assert_eq!(s.validate().unwrap().worker_threads, 3);
        for bad in ["worker_threads = 0", "worker_threads = 5000"] {
            let e = ConfigFile::from_str(bad).unwrap().validate().unwrap_err();
            assert!(e.to_string().contains("worker_threads"), "{e}");
        }
    }

    #[test]
    fn load_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.toml");
        let e = ConfigFile::load(&missing).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }));
        assert!(e.to_string().contains("nope.toml"), "{e}");

        let path = dir.path().join("moat.toml");
        std::fs::write(&path, "[limits]\nmax_inflight = \"x\"\n").unwrap();
        let e = ConfigFile::load(&path).unwrap_err();
        assert_eq!(e.to_string(), format!("config file {}", path.display()));
        let cause = std::error::Error::source(&e).unwrap().to_string();
        assert!(cause.contains("max_inflight"), "{cause}");
    }

    #[test]
    fn save_writes_atomically_and_keeps_the_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("moat.toml");
        let mut file = ConfigFile::from_str("[limits]\nmax_inflight = 7\n").unwrap();
        file.save(&path).unwrap();
        assert_eq!(ConfigFile::load(&path).unwrap(), file);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            // A new file: 0644 at most (the umask may remove more).
            assert_eq!(mode(&path) & !0o644, 0);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            file.data_dir = Some("elsewhere".into());
            file.save(&path).unwrap();
            assert_eq!(mode(&path), 0o600);
            assert_eq!(ConfigFile::load(&path).unwrap(), file);

            // A link is followed, not replaced.
            let link = dir.path().join("link.toml");
            std::os::unix::fs::symlink(&path, &link).unwrap();
            file.data_dir = Some("third".into());
            file.save(&link).unwrap();
            assert!(std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink());
            assert_eq!(ConfigFile::load(&path).unwrap(), file);
        }
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().contains(".tmp"))
            .collect();
        assert!(names.is_empty(), "{names:?}");
    }

    #[test]
    fn save_keeps_the_comments_and_layout_of_what_did_not_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("moat.toml");
        let old = "# Moat on the gateway.\n\
                   data_dir = 'state'   # kept across upgrades\n\
                   \n\
                   [[listeners]]\n\
                   # the devices' port\n\
                   name = \"mqtts\"\n\
                   kind = \"tls\"\n\
                   bind = \"127.0.0.1:8883\"\n\
                   tls = { cert = \"pki/server.pem\", key = \"pki/server.key\" } # from the CA\n\
                   \n\
                   [limits]\n\
                   max_inflight = 1_000 # measured\n\
                   receive_maximum = 64\n";
        std::fs::write(&path, old).unwrap();
        let mut file = ConfigFile::load(&path).unwrap();
        // What the console does: a new certificate path; a limit removed; a section added.
        let listener = file.listeners.first_mut().unwrap();
        listener.tls.as_mut().unwrap().cert = Some("pki/server-2.pem".into());
        file.limits.as_mut().unwrap().receive_maximum = None;
        file.worker_threads = Some(2);
        file.save(&path).unwrap();

        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(ConfigFile::load(&path).unwrap(), file, "{text}");
        for kept in [
            "# Moat on the gateway.",
            "data_dir = 'state'   # kept across upgrades",
            "# the devices' port",
            "max_inflight = 1_000 # measured",
            "key = \"pki/server.key\"",
            "# from the CA",
        ] {
            assert!(text.contains(kept), "{kept:?} lost:\n{text}");
        }
        assert!(text.contains("\"pki/server-2.pem\""), "{text}");
        assert!(!text.contains("receive_maximum"), "{text}");
        assert!(text.contains("worker_threads = 2"), "{text}");
        // A file that is not TOML is replaced by the model.
        std::fs::write(&path, "not [ toml").unwrap();
        file.save(&path).unwrap();
        assert_eq!(ConfigFile::load(&path).unwrap(), file);
    }

    #[test]
    fn failed_save_leaves_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("moat.toml");
        std::fs::write(&path, "data_dir = \"old\"\n").unwrap();
        let file = ConfigFile {
            data_dir: Some("new".into()),
            ..ConfigFile::default()
        };
        // The folder is gone: nothing can be written there.
        let gone = dir.path().join("gone").join("moat.toml");
        let e = file.save(&gone).unwrap_err();
        assert!(matches!(e, ConfigError::Write { .. }), "{e:?}");
        assert!(e.to_string().contains("gone"), "{e}");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "data_dir = \"old\"\n"
        );
    }
}
