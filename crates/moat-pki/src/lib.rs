//! moat-pki: Moat's certificate toolkit as a library.
//!
//! It makes certificates (a root or intermediate CA, server and client certificates), reads
//! what users bring (PEM or DER, the key formats `openssl` writes, legacy-encrypted PEM keys),
//! inspects them, verifies chains with rustls-webpki (the verifier the broker's rustls uses) and
//! lints certificate, chain and key files against the rules in the design's "Certificate
//! rules" table. The broker calls [`lint::lint`] at start-up, on reload and on upload; the
//! `moat cert` commands are thin glue over this crate.
//!
//! What it does not do: no network I/O, no async, no global state, no printing. It never
//! links OpenSSL. Reading the clock is left to the caller (every check takes `now`).
//!
//! Crypto backend: *ring*, for all signing (through rcgen) and signature checks (webpki and
//! x509-parser). ring cannot generate RSA keys, so RSA key generation, and only that, uses the
//! pure-Rust `rsa` crate.
//!
//! Layout:
//! - [`decode`]: what is in a file (PEM blocks or DER, which kind of object).
//! - [`key`]: private keys: loading every common format, decrypting, matching a certificate.
//! - [`generate`]: building CAs, intermediates, server and client certificates.
//! - [`store`]: the CA directory layout and writing files (keys with mode 0600, no overwrite).
//! - [`inspect`]: a description of each certificate, and which certificate signed which.
//! - [`verify`]: chain verification for a host and a purpose, now.
//! - [`diagnose`]: why a TLS peer refuses a certificate, with the fix (`moat check`, the
//!   broker's handshake log).
//! - [`lint`]: the rules, as findings with stable codes ([`code::LintCode`]).
//! - [`split`]: a bundle into leaf, ordered chain and root.
//! - [`crl`]: a CA directory's revocations (`revoked.toml`) and the CRL signed from them.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod code;
pub mod crl;
pub mod decode;
pub mod diagnose;
pub mod error;
pub mod generate;
pub mod inspect;
pub mod key;
pub mod lint;
pub mod split;
pub mod store;
pub mod verify;

pub use code::LintCode;
pub use error::{CaError, ContentError, Error, InvalidParameter, KeyError};
pub use generate::{KeyType, Validity};
pub use key::PrivateKey;
pub use lint::{Finding, LintInput, LintProfile, Severity};
pub use verify::Purpose;
