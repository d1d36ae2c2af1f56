//! The store's error.

use std::io;
use std::path::{Path, PathBuf};

/// Why the store could not open, load or apply.
///
/// `Display` describes this level only; an I/O cause is reached through
/// [`source`](std::error::Error::source) (print with `{:#}` in anyhow, or walk the chain).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A file system error.
    #[error("store {}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The store is damaged or is not a Moat store.
    #[error(
        "store {p} is corrupt ({detail}); to start again with an empty store, stop moat, move {p} \
         aside (for example to {p}.broken, where it is kept for inspection) and restart: \
         persistent sessions, queued and retained messages it held are then lost",
        p = path.display()
    )]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The store has a format version this build does not read.
    #[error(
        "store {p} has format version {found} but this moat reads version {expected}: run a moat \
         that reads version {found} (a newer release), or move {p} aside and restart to start \
         with an empty store",
        p = path.display()
    )]
    Version {
        /// The version in the file.
        found: u64,
        /// The version this build reads.
        expected: u64,
        /// The database file.
        path: PathBuf,
    },
    /// Another process has the store open.
    #[error("store {} is in use by another process (is another moat running on this data dir?)", path.display())]
    Locked {
        /// The database file.
        path: PathBuf,
    },
    /// A client id or topic is longer than the 65,535 bytes MQTT allows.
    #[error("store: {what} longer than 65535 bytes")]
    TooLong {
        /// What was too long.
        what: &'static str,
    },
    /// Another failure of the database engine.
    #[error("store {}: {detail}", path.display())]
    Engine {
        /// The database file.
        path: PathBuf,
        /// The engine's message.
        detail: String,
    },
}

impl StoreError {
    pub(crate) fn io(path: &Path, source: io::Error) -> Self {
        Self::Io {
            path: path.to_owned(),
            source,
        }
    }

    pub(crate) fn from_redb(path: &Path, e: redb::Error) -> Self {
        let path = path.to_owned();
        match e {
            redb::Error::Corrupted(detail) => Self::Corrupt { path, detail },
            redb::Error::Io(source)
                if matches!(
                    source.kind(),
                    io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData
                ) =>
            {
                Self::Corrupt {
                    path,
                    detail: format!("unreadable: {source}"),
                }
            }
            redb::Error::Io(source) => Self::Io { path, source },
            redb::Error::DatabaseAlreadyOpen => Self::Locked { path },
            redb::Error::UpgradeRequired(v) => Self::Corrupt {
                path,
                detail: format!("database engine file format {v} is not supported"),
            },
            other => Self::Engine {
                path,
                detail: other.to_string(),
            },
        }
    }
}
