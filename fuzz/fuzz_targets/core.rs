//! Drives the broker core (`moat_core::Broker`) with operations read from the input: CONNECT,
//! PUBLISH, SUBSCRIBE, acknowledgements, raw bytes decoded by moat-codec, disconnects, lost
//! connections and virtual time, from five clients. It must never panic, and cheap invariants
//! hold after every step (no packet for a closed connection, every packet encodes, ...).
//!
//! The interpreter is shared with the stable tests, which replay `corpus/core/` and run seeded
//! pseudo-random inputs: `crates/moat-core/tests/support/interp.rs` (input format and
//! invariants) and `crates/moat-core/tests/fuzz_core.rs`.
//!
//! `MOAT_FUZZ_MAX_DEPTH=N` cuts deep topics and filters to N levels (default: no cut).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

#[path = "../../crates/moat-core/tests/support/interp.rs"]
mod interp;

fn max_depth() -> usize {
    static MAX_DEPTH: OnceLock<usize> = OnceLock::new();
    *MAX_DEPTH.get_or_init(|| {
        std::env::var("MOAT_FUZZ_MAX_DEPTH")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(usize::MAX)
    })
}

fuzz_target!(|data: &[u8]| {
    interp::run(data, max_depth());
});
