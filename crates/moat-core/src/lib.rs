//! The broker's state machine: sessions, subscriptions, retained messages, QoS 1/2 flows,
//! wills, topic aliases and expiry.
//!
//! This crate does no I/O and reads no clock: the caller passes [`Input`]s and the current
//! [`std::time::Instant`] in, and takes [`Output`]s (packets to send, connections to close,
//! store ops to make durable, replies) out of one ordered stream; every timer (keep-alive, will
//! delay, session and message expiry) runs on the `now` it is given. That makes every protocol
//! rule testable with scripted clients and a virtual clock, and the same inputs give the same
//! outputs (randomness comes from [`BrokerConfig::seed`]). Authentication happens before
//! [`Input::Connect`] (in the server); authorization is asked of an [`Authorizer`].
#![warn(missing_docs)]

mod broker;
mod config;
mod message;
mod session;
pub mod store;
pub mod topic;
pub mod tree;

pub use broker::{
    AcceptedMessage, AdminReply, AdminRequest, AllowAll, Authorizer, Broker, CertExpiryAction,
    ClientDetail, ClientIdSource, ClientInfo, ClientQuery, ClientSummary, ConnId, ConnectOutcome,
    Input, Output, RequestId, RetainedEntry, Stats, StatsSnapshot, SysSource, TlsInfo,
    MAX_CLIENT_SCAN,
};
pub use config::{BrokerConfig, MAX_TOPIC_LEVELS_CAP};
pub use message::{Delivery, Message, SessionId};
