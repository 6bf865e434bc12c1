//! meshbreaker as an Envoy dynamic module (`libmeshbreaker.so`): native glue around `policy-core`,
//! for one exact Envoy (1.40.0, dynamic-module ABI `v0.2.0`).
//!
//! Why a second shell beside the proxy-wasm filter: in process memory all of Envoy's workers see
//! one state without shared-data round trips, and no wasm VM sits on the request path. The
//! configuration is the same JSON, parsed by the same [`policy_core::config::Config::parse`].
//!
//! Today this crate is the ABI layer and the decision-free part of the request path: it loads and
//! validates the configuration, strips client-sent retry headers, and counts requests. The
//! breaker's per-key decisions arrive on it next, from policy-core's shared flow.
//!
//! ## Layout
//! - [`abi`]: the hooks Envoy calls and the callbacks it offers, declared by hand; the only module
//!   with `unsafe` (the crate denies it elsewhere).
//! - [`filter`]: what the hooks do, in safe Rust: configuration, the request path.
//! - [`request`]: pure helpers over the bytes a request carries (key, strip list).
//! - [`labels`]: the process-wide budget of `key` metric labels.
//! - `probe` (feature `abi-probe`, never in `target/dist/libmeshbreaker.so`): a second filter that
//!   drives the callbacks the request path does not use yet, for the smoke test.
#![deny(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
// Unit tests may unwrap: a panic there is a failed test, not a dead Envoy.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

#[allow(unsafe_code)]
pub mod abi;
pub mod filter;
pub mod labels;
#[cfg(feature = "abi-probe")]
pub mod probe;
pub mod request;
pub mod store;
