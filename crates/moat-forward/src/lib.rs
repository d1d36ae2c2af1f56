//! Forwarding of accepted MQTT messages to PostgreSQL and NATS JetStream, at least once.
//!
//! The broker spools each accepted message as an encoded [`Record`] before it acknowledges it,
//! and a forwarder task per rule hands batches of records, in order, to that rule's [`Sink`].
//! A batch leaves the spool only when [`Sink::write`] returns `Ok`, which a sink returns only
//! once the backend has durably accepted every record of it. Both sinks are idempotent by
//! [`Record::key`], so a batch written again after a crash or a lost reply adds nothing.
//!
//! This crate holds the record and its spool encoding ([`record`]), the sink trait and its
//! error, the two sinks ([`postgres`], [`jetstream`]) and the `[forward]` configuration
//! ([`config`]). It does not spool, match topic filters, retry or back off: the broker does.
//! With the `testing` feature, [`testing`] starts private PostgreSQL and nats-server instances.
//!
//! The table schema, the headers and the subject mapping are described in the crate's
//! README.md and in the docs of [`postgres`] and [`jetstream`].
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod jetstream;
pub mod postgres;
pub mod record;
#[cfg(feature = "testing")]
pub mod testing;
mod tls;

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;

pub use crate::config::{ForwardConfigError, ForwardFile, RuleSpec, Target};
pub use crate::record::{DecodeError, Record};

/// A boxed error from a backend client library.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// A backend that receives batches of records.
pub trait Sink: Send + 'static {
    /// What it writes to, for logs: never a password.
    fn describe(&self) -> String;

    /// Delivers a batch (1..=N records, in order). `Ok` only when the backend has durably
    /// accepted every record (PostgreSQL: committed; JetStream: every publish acknowledged by
    /// the stream). Idempotent by [`Record::key`]: the same record delivered again creates no
    /// second row and no second stream message.
    ///
    /// The first call connects; after a failure the next call connects again.
    ///
    /// # Errors
    /// [`SinkError::Unavailable`] when the backend cannot be reached or did not answer in
    /// time; [`SinkError::Rejected`] when it answered but refused (a table that does not fit,
    /// a permission, a message too large). Neither drops anything: the caller retries.
    ///
    /// # Cancel safety
    /// Dropping the future leaves the batch written, partly written or not written; writing it
    /// again is safe, since writes are idempotent.
    fn write<'a>(
        &'a mut self,
        batch: &'a [Record],
    ) -> Pin<Box<dyn Future<Output = Result<(), SinkError>> + Send + 'a>>;
}

/// Why a batch was not delivered. Either way nothing is lost: the caller keeps the batch and
/// retries it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    /// The backend could not be reached, the connection broke, or it did not answer in time.
    /// Retry with backoff; the sink reconnects on its next write.
    #[error("{target} is unavailable")]
    Unavailable {
        /// [`Sink::describe`] of the sink.
        target: String,
        /// The client library's error.
        #[source]
        source: BoxError,
    },
    /// The backend answered and refused, and will likely refuse again until someone changes
    /// something (the table, a permission, the stream, a size limit). Log it loudly and retry
    /// slowly; never drop the batch.
    #[error("{target} refused the batch: {problem}")]
    Rejected {
        /// [`Sink::describe`] of the sink.
        target: String,
        /// What is wrong and, where known, how to fix it.
        problem: String,
        /// The client library's error, when there is one.
        #[source]
        source: Option<BoxError>,
    },
}

impl SinkError {
    /// Whether this is [`SinkError::Unavailable`] (retry soon) rather than
    /// [`SinkError::Rejected`] (log loudly, retry slowly).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }
}

/// Makes a string storable as PostgreSQL `text` and as a NATS header value: U+0000 (which MQTT
/// forbids but a client may still send) becomes U+FFFD.
pub(crate) fn without_nul(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains('\0') {
        s.replace('\0', "\u{FFFD}").into()
    } else {
        s.into()
    }
}
