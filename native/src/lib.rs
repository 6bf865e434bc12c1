//! meshbreaker as an Envoy dynamic module (`libmeshbreaker.so`): native glue around `policy-core`,
//! for one exact Envoy (1.40.0, dynamic-module ABI `v0.2.0`).
//!
//! Why a second shell beside the proxy-wasm filter: in process memory all of Envoy's workers see
//! one state without shared-data round trips, and no wasm VM sits on the request path. The
//! configuration is the same JSON, parsed by the same [`policy_core::config::Config::parse`].
//!
//! It makes the wasm filter's decisions: the per-key protocol is policy-core's `flow` (the one
//! the filter runs), its store is process memory shared by every worker ([`store`]), and the
//! replies, retry headers, metrics and transition lines are policy-core's too.
//!
//! ## Layout
//! - [`abi`]: the hooks Envoy calls and the callbacks it offers, declared by hand; the only module
//!   with `unsafe` (the crate denies it elsewhere). Also the ticker thread.
//! - [`filter`]: what the hooks do, in safe Rust: configuration, request, outcome, tick.
//! - [`engine`]: the breaker per worker over the shared store: decide, complete, merge, tick.
//! - [`store`]: every key's state and window in process memory, with compare-and-swap.
//! - [`request`]: pure helpers over the bytes a request carries (key, profile, numbers).
//! - [`labels`]: the process-wide budget of `key` metric labels.
//! - [`resets`]: kernel reset signals: polling the eBPF sidecar through Envoy, the reset totals.
//! - `probe` (feature `abi-probe`, never in `target/dist/libmeshbreaker.so`): a second filter that
//!   drives callbacks the request path does not reach in the smoke test.
#![deny(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
// Unit tests may unwrap: a panic there is a failed test, not a dead Envoy.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

#[allow(unsafe_code)]
pub mod abi;
pub mod engine;
pub mod filter;
pub mod labels;
#[cfg(feature = "abi-probe")]
pub mod probe;
pub mod request;
pub mod resets;
pub mod store;
