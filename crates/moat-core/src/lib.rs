//! The broker's state machine: sessions, subscriptions, retained messages, QoS 1/2 flows,
//! wills, topic aliases and expiry.
//!
//! This crate does no I/O and reads no clock: the caller passes packets and the current
//! [`std::time::Instant`] in, and takes [`Action`]s (packets to send, connections to close) out.
//! That makes every protocol rule testable with scripted clients and a virtual clock.
//! Authentication happens before [`Broker::connect`] (in the server); authorization is asked of
//! an [`Authorizer`].
#![warn(missing_docs)]

mod broker;
mod config;
mod message;
mod session;
pub mod store;
pub mod topic;
pub mod tree;

pub use broker::{Action, AllowAll, Authorizer, Broker, ClientInfo, ConnId, ConnectOutcome, Stats};
pub use config::{BrokerConfig, MAX_TOPIC_LEVELS_CAP};
pub use message::{Delivery, Message, SessionId};
