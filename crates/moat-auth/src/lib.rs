//! Auth (draft).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod acl;
pub mod binding;
mod error;
pub mod password;
mod pattern;
pub mod policy;

pub use error::LoadError;
