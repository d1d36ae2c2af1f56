//! Drives the broker core (`moat_core::Broker`) with operations read from the input: CONNECT,
//! PUBLISH, SUBSCRIBE, acknowledgements, raw bytes decoded by moat-codec, disconnects, lost
//! connections and virtual time, from five clients. It must never panic, and cheap invariants
//! hold after every step (no packet for a closed connection, every packet encodes, ...).
//!
//! The interpreter is shared with the stable tests, which replay `corpus/core/` and run seeded
//! pseudo-random inputs: `crates/moat-core/tests/support/interp.rs` (input format and
//! invariants) and `crates/moat-core/tests/fuzz_core.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../crates/moat-core/tests/support/interp.rs"]
mod interp;

fuzz_target!(|data: &[u8]| {
    interp::run(data);
});
