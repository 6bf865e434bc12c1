//! What one soak measured, kept as `target/soak/summary.json`: everything the verdicts, the
//! sections and the picture are drawn from, so that `--reanalyse` draws them again without
//! measuring. serde writes it and reads it back, field names as in the structs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::docs::Environment;

use super::access_log::*;
use super::client::*;
use super::sampling::*;
use super::schedule::*;

/// What oha reported (the figures the report shows).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct Oha {
    pub(super) responses: u64,
    pub(super) requests_per_sec: f64,
    pub(super) statuses: BTreeMap<u16, u64>,
    pub(super) errors: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct Summary {
    /// `--ci`: the sections are printed, not written into the doc.
    pub(super) ci: bool,
    /// The length asked for and the time it took, in seconds.
    pub(super) asked_s: f64,
    pub(super) elapsed_s: f64,
    pub(super) phase_len_s: f64,
    pub(super) warmup_s: f64,
    pub(super) envoy_version: String,
    pub(super) oha: Oha,
    pub(super) seen: Seen,
    pub(super) explained: Explained,
    /// Every 10 s, and one more at the end.
    pub(super) samples: Vec<Sample>,
    pub(super) events: Vec<Event>,
    /// LDS updates Envoy applied during the soak.
    pub(super) lds_updates: u64,
    /// Trap or panic lines in Envoy's log.
    pub(super) traps: usize,
    /// The filter logged the sidecar coming back.
    pub(super) sidecar_back: bool,
    /// Envoy still running and `LIVE` at the end.
    pub(super) envoy_alive: bool,
    pub(super) environment: Environment,
}
