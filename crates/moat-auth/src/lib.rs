//! Authentication and authorization for Moat: who may connect, and what each client may
//! publish and subscribe to.
//!
//! This crate is synchronous and does no network I/O: it reads the password and ACL files when
//! asked ([`PasswordFile::load`], [`Acl::load`]) and answers questions. It does not read the
//! clock ([`FailureTracker`] takes `now`), spawn threads, log, or know about sockets, TLS or
//! packets; the server does those.
//!
//! # Using it from the server
//!
//! Build once, share behind `Arc`, swap on reload:
//!
//! - [`PasswordFile::load`]`(path)` and [`Acl::load`]`(path)` return a [`LoadError`] whose
//!   `Display` is `path:line: reason`. On SIGHUP or a file change, load again; on error log it
//!   and keep the old `Arc` (clients stay connected either way).
//! - Per listener a [`ListenerPolicy`] `{ proof, allow_anonymous, identity_as_username }`.
//!
//! On CONNECT (after the TLS handshake), inside `tokio::task::spawn_blocking` because a
//! password check runs argon2id:
//!
//! ```
//! # use std::net::IpAddr;
//! # use std::path::Path;
//! use moat_auth::{Acl, AuthRequest, ListenerPolicy, PasswordFile, Proof, Subject};
//!
//! # let passwords = PasswordFile::new();
//! # let acl = Acl::parse("default = \"allow\"", Path::new("acl.toml")).unwrap();
//! let policy = ListenerPolicy { proof: Proof::Either, allow_anonymous: true, identity_as_username: true };
//! let req = AuthRequest {
//!     username: None,          // from CONNECT
//!     password: None,          // from CONNECT
//!     cert_identity: None,     // CN/SAN of the verified client certificate
//!     peer_ip: "127.0.0.1".parse::<IpAddr>().unwrap(),
//! };
//! match policy.authenticate(&req, Some(&passwords), Some(&acl)) {
//!     Ok(principal) => {
//!         // principal.username goes into moat_core::ClientInfo::username.
//!         let subject = Subject::new(principal.username.as_deref(), "client-id");
//!         assert!(acl.check_publish(&subject, "a/b"));
//!     }
//!     Err(failure) => {
//!         // CONNACK failure.reason_code() (v5 0x86 / 0x87) or failure.v3_return_code()
//!         // (4 / 5); count failure.counter_name(); log failure.reason() with the peer;
//!         // FailureTracker::record_failure(ip, now); the next check from that address
//!         // first waits FailureTracker::wait_before(ip, now).
//!         # let _ = failure;
//!     }
//! }
//! ```
//!
//! For every PUBLISH (and a will, when it is published) [`Acl::check_publish`]; for every
//! SUBSCRIBE filter [`Acl::check_subscribe`] (`$share/` included; refused: v5 0x87 in SUBACK, v3
//! 0x80); for a retained message sent on SUBSCRIBE [`Acl::check_receive`]. These are cheap
//! (no allocation for PUBLISH, rules looked up per user, client id and group) and fine on the
//! reactor. A `moat_core::Authorizer` adapter holds an `Arc<Acl>` and builds a [`Subject`]
//! from `ClientInfo::username` and the client id.
//!
//! Failures: [`FailureCounters`] counts per [`FailureKind`]; [`FailureTracker`] (behind a
//! `Mutex`) gives the delay for repeated failures from one address, to wait out before that
//! address's next password check ([`FailureTracker::wait_before`]). The server bounds how many
//! checks run at once (argon2id takes 19 MiB each) and answers a CONNECT that cannot get a
//! check in time with [`AuthFailure::ServerBusy`].
//!
//! File formats and semantics: docs/AUTH.md.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod acl;
pub mod binding;
mod error;
pub mod password;
mod pattern;
pub mod policy;
pub mod throttle;

pub use acl::{Acl, Action, Permission, Subject};
pub use binding::Bindings;
pub use error::LoadError;
pub use password::{
    validate_username, CheckMemory, EditError, HashScheme, Password, PasswordFile, Verdict,
};
pub use policy::{
    AuthFailure, AuthRequest, FailureCounters, FailureKind, ListenerPolicy, Principal, Proof,
};
pub use throttle::{address_key, FailureTracker, ThrottleConfig};
