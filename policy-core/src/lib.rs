//! meshbreaker's policy core: everything the circuit breaker decides, with no I/O.
//!
//! This crate is sans-IO on purpose: every call takes `now` (milliseconds on a monotonic or
//! wall clock chosen by the caller) and any randomness comes in through [`breaker::Jitter`].
//! That keeps the proxy-wasm filter a thin layer of host glue, and lets the tests drive time.
//!
//! The modules follow the life of a request:
//! - [`config`]: the plugin configuration of SPEC, parsed and validated, overrides merged;
//! - [`keys`]: key sanitization and the bounded key registry (LRU, `_other` labels);
//! - [`retry`]: retry policy matching, the router headers, header stripping, the retry budget;
//! - [`window`]: the time-bucketed sliding window (counts, exact P95 trip, reported P95);
//! - [`breaker`]: the CLOSED / OPEN / HALF_OPEN state machine and per-request decisions;
//! - [`encoding`]: the versioned byte encoding of a key's shared state (proxy-wasm shared data);
//! - [`flow`]: one key's protocol across workers (admit, complete, merge, trip, probe) over a store;
//! - [`metrics`]: the names of the metrics an operator sees;
//! - [`reply`]: the local reply to a rejected request;
//! - [`resets`]: arithmetic on the sidecar's cumulative kernel reset counters;
//! - [`wire`]: numbers read from header bytes, bounded.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
// Unit tests may unwrap: a panic there is a failed test, not a dead VM.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod breaker;
pub mod config;
pub mod encoding;
pub mod flow;
pub mod keys;
pub mod metrics;
pub mod reply;
pub mod resets;
pub mod retry;
pub mod shedding;
pub mod window;
pub mod wire;
