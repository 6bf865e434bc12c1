//! The schedule: the key, the phases of a cycle, when the reloads and the sidecar's deaths come, and what a run is asked for.

use std::time::Duration;

/// What the upstream does during one phase of the flap cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Healthy,
    Failing,
    Slow,
    Resetting,
}

impl Phase {
    pub(super) fn name(self) -> &'static str {
        match self {
            Phase::Healthy => "healthy",
            Phase::Failing => "failing",
            Phase::Slow => "slow",
            Phase::Resetting => "resetting",
        }
    }
}

pub(super) const CYCLE: [Phase; 6] = [
    Phase::Healthy,
    Phase::Failing,
    Phase::Healthy,
    Phase::Slow,
    Phase::Healthy,
    Phase::Resetting,
];

/// The events of one soak, as fractions of its duration.
pub(super) const RELOADS: [f64; 2] = [0.30, 0.70];
pub(super) const SIDECAR_KILLS: [f64; 2] = [0.45, 0.85];
/// How long the sidecar stays dead.
pub(super) const SIDECAR_DOWN: Duration = Duration::from_secs(3);

/// How long to soak.
#[derive(Clone, Debug)]
pub struct Opts {
    pub duration: Duration,
    /// The short run `cargo xtask test` asserts: `docs/RELIABILITY.md` is left as it is.
    pub ci: bool,
}

/// Something that happened during the soak (a phase change, a reload, a sidecar death), for the
/// picture.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(super) struct Event {
    pub(super) at: f64,
    pub(super) what: String,
}

/// The cluster (and so the breaker key) the soak's traffic goes to.
pub(super) const KEY: &str = "demo";
