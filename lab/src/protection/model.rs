//! The model: the faults, the systems, the scenarios and what a run records, with the constants they share.

use policy_core::breaker::State;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

/// Requests per second each system's listener gets.
pub(super) const RATE: f64 = 200.0;
/// Client connection pools per listener (so at least this many connections each).
pub(super) const CLIENTS: usize = 16;
/// The share of traffic meshbreaker must keep away from a hard-down lone upstream after its trip.
pub(super) const MIN_KEPT_AFTER_TRIP: f64 = 0.90;
/// Delay of the "slow" fault: over meshbreaker's default 800 ms P95 threshold, no errors.
pub(super) const SLOW_MS: u64 = 1000;
/// The long-lived-stream scenario: the share of requests that are long-lived, and how long each
/// is held (a websocket open, an upload's body trickling in).
pub(super) const STREAM_SHARE: f64 = 0.1;
pub(super) const STREAM_HOLD_MS: u64 = 3000;
/// The adaptive shedding targets measured beside the recommended one on the 1-host 50% 5xx run.
pub(super) const SHEDDING_CHOICES: [f64; 2] = [0.3, 0.7];

/// The recommended configuration, as shipped in `envoy-config/recommended.json` (the one place
/// it is written; `docs/configuration.md` shows the same block).
pub(super) const RECOMMENDED_JSON: &str = include_str!("../../../envoy-config/recommended.json");

pub(super) fn recommended() -> Value {
    serde_json::from_str(RECOMMENDED_JSON).unwrap_or(Value::Null)
}

/// The recommended configuration with `shedding_success_rate` set to `rate`.
pub(super) fn recommended_with_success_rate(rate: f64) -> Value {
    let mut c = recommended();
    c["breaker"]["shedding_success_rate"] = json!(rate);
    c
}

/// One line of JSON for a table cell.
pub(super) fn compact(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Fault {
    Down,
    Errors,
    Slow,
    Resets,
    /// No fault: a healthy upstream while a share of the requests are long-lived (websockets,
    /// slow uploads). The "fault" phase is the time they are sent.
    Streams,
}

impl Fault {
    pub(super) const ALL: [Fault; 5] = [
        Fault::Down,
        Fault::Errors,
        Fault::Slow,
        Fault::Resets,
        Fault::Streams,
    ];

    pub(super) fn id(self) -> &'static str {
        match self {
            Fault::Down => "down",
            Fault::Errors => "5xx",
            Fault::Slow => "slow",
            Fault::Resets => "resets",
            Fault::Streams => "streams",
        }
    }

    pub(super) fn title(self) -> String {
        match self {
            Fault::Down => "hard down (port closed: connection refused)".into(),
            Fault::Errors => "50% 5xx".into(),
            Fault::Slow => format!("slow: every answer {SLOW_MS} ms late, no errors"),
            Fault::Resets => "connection-reset storm (RST mid-response, SO_LINGER 0)".into(),
            Fault::Streams => format!(
                "long-lived streams on a healthy upstream: {:.0}% of requests are websockets held \
                 {} s or uploads trickling in for {} s",
                STREAM_SHARE * 100.0,
                STREAM_HOLD_MS / 1000,
                STREAM_HOLD_MS / 1000
            ),
        }
    }

    pub(super) fn control_query(self) -> String {
        match self {
            Fault::Down => "mode=down".into(),
            Fault::Errors => "mode=error&value=0.5".into(),
            Fault::Slow => format!("mode=delay&value={SLOW_MS}"),
            Fault::Resets => "mode=reset".into(),
            Fault::Streams => "mode=ok".into(),
        }
    }

    /// Whether the upstream fails at all (the streams scenario has no bad host).
    pub(super) fn fails(self) -> bool {
        self != Fault::Streams
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum System {
    NoProtection,
    OdDefault,
    OdTuned,
    AdmissionControl,
    MbDefault,
    MbRecommended,
    /// The recommended configuration with `shedding_success_rate` 0.3 and 0.7: the runs that
    /// chose the target (1-host 50% 5xx only).
    MbRecommendedSr30,
    MbRecommendedSr70,
    MbDefaultSidecar,
    MbRecommendedSidecar,
}

impl System {
    pub(super) const BASE: [System; 6] = [
        System::NoProtection,
        System::OdDefault,
        System::OdTuned,
        System::AdmissionControl,
        System::MbDefault,
        System::MbRecommended,
    ];
    pub(super) const SIDECAR: [System; 2] =
        [System::MbDefaultSidecar, System::MbRecommendedSidecar];
    pub(super) const SHEDDING: [System; 2] = [System::MbRecommendedSr30, System::MbRecommendedSr70];

    /// Listener, cluster and meshbreaker key name.
    pub(super) fn name(self) -> &'static str {
        match self {
            System::NoProtection => "no-protection",
            System::OdDefault => "od-default",
            System::OdTuned => "od-tuned",
            System::AdmissionControl => "admission-control",
            System::MbDefault => "mb-default",
            System::MbRecommended => "mb-recommended",
            System::MbRecommendedSr30 => "mb-recommended-sr30",
            System::MbRecommendedSr70 => "mb-recommended-sr70",
            System::MbDefaultSidecar => "mb-default-ebpf",
            System::MbRecommendedSidecar => "mb-recommended-ebpf",
        }
    }

    pub(super) fn label(self) -> &'static str {
        match self {
            System::NoProtection => "no protection",
            System::OdDefault => "outlier detection, defaults",
            System::OdTuned => "outlier detection, tuned",
            System::AdmissionControl => "admission control, tuned",
            System::MbDefault => "meshbreaker, defaults",
            System::MbRecommended => "meshbreaker, recommended",
            System::MbRecommendedSr30 => {
                "meshbreaker, recommended but shedding_success_rate 0.3 (choice run)"
            }
            System::MbRecommendedSr70 => {
                "meshbreaker, recommended but shedding_success_rate 0.7 (choice run)"
            }
            System::MbDefaultSidecar => "meshbreaker, defaults + eBPF sidecar",
            System::MbRecommendedSidecar => "meshbreaker, recommended + eBPF sidecar",
        }
    }

    pub(super) fn is_meshbreaker(self) -> bool {
        !matches!(
            self,
            System::NoProtection | System::OdDefault | System::OdTuned | System::AdmissionControl
        )
    }

    pub(super) fn uses_sidecar(self) -> bool {
        matches!(
            self,
            System::MbDefaultSidecar | System::MbRecommendedSidecar
        )
    }

    /// The plugin configuration of a meshbreaker system.
    pub(super) fn plugin_config(self) -> Value {
        let sidecar = |poll: &str| {
            json!({
                "cluster": "meshbreaker_sidecar",
                "path": "/v1/resets",
                "poll_interval": poll,
                "max_resets_per_second": 5
            })
        };
        match self {
            System::MbDefault => json!({}),
            System::MbRecommended => recommended(),
            System::MbRecommendedSr30 => recommended_with_success_rate(SHEDDING_CHOICES[0]),
            System::MbRecommendedSr70 => recommended_with_success_rate(SHEDDING_CHOICES[1]),
            System::MbDefaultSidecar => json!({ "reset_signals": sidecar("1s") }),
            System::MbRecommendedSidecar => {
                let mut c = recommended();
                c["reset_signals"] = sidecar("250ms");
                c
            }
            _ => Value::Null,
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Phases {
    pub(super) warm: Duration,
    pub(super) fault: Duration,
    pub(super) recover: Duration,
}

impl Phases {
    pub(super) fn total(&self) -> Duration {
        self.warm + self.fault + self.recover
    }
}

#[derive(Clone, Debug)]
pub(super) struct Scenario {
    pub(super) fault: Fault,
    pub(super) hosts: usize,
    pub(super) systems: Vec<System>,
    pub(super) phases: Phases,
}

impl Scenario {
    pub(super) fn id(&self) -> String {
        format!("{}-{}host", self.fault.id(), self.hosts)
    }

    pub(super) fn title(&self) -> String {
        format!(
            "{}, {} upstream host{}",
            self.fault.title(),
            self.hosts,
            match (self.hosts, self.fault.fails()) {
                (1, _) => "",
                (_, true) => "s (one of them bad)",
                (_, false) => "s",
            }
        )
    }
}

/// What the client saw for one request (`steady-load`'s classes).
pub(super) mod class {
    pub const OK: u8 = 0;
    pub const MB_OPEN: u8 = 2;
    pub const SHED: u8 = 3;
    pub const NO_HEALTHY: u8 = 4;

    /// Answered by the proxy itself without any upstream attempt being made for it.
    pub fn local(c: u8) -> bool {
        matches!(c, MB_OPEN | SHED | NO_HEALTHY)
    }
}

/// What the client sent (`steady-load`'s kinds).
pub(super) mod kind {
    pub const GET: u8 = 0;
    pub const WEBSOCKET: u8 = 1;
    pub const SLOW_UPLOAD: u8 = 2;
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Req {
    pub(super) t: u64,
    pub(super) lat_us: u64,
    pub(super) class: u8,
    pub(super) att: u64,
    pub(super) id: u64,
    pub(super) kind: u8,
}

/// One state change of a meshbreaker key, from the filter's transition log line.
#[derive(Clone, Debug)]
pub(super) struct Change {
    pub(super) t: u64,
    pub(super) to: State,
    pub(super) reason: String,
}

/// One request that reached, or was sent towards, the bad host.
#[derive(Clone, Copy, Debug)]
pub(super) struct BadHit {
    pub(super) t: u64,
    pub(super) id: u64,
}

#[derive(Debug, Default)]
pub(super) struct SysData {
    pub(super) client: Vec<Req>,
    /// Requests the bad host received (its own count) plus Envoy's connect attempts to it that
    /// the closed port refused (router upstream log).
    pub(super) bad: Vec<BadHit>,
    /// Of `bad`, the part the bad host counted itself.
    pub(super) bad_received: Vec<u64>,
    /// Arrival times at the healthy hosts.
    pub(super) healthy: Vec<u64>,
    /// Upstream log entries for the bad host, for cross-checking the upstream's own count.
    pub(super) uplog_bad_total: usize,
    pub(super) stats: BTreeMap<&'static str, f64>,
    /// meshbreaker only: the key's transitions over the run, in order (Envoy's log).
    pub(super) changes: Vec<Change>,
}

pub(super) struct ScenarioRun {
    pub(super) scenario: Scenario,
    /// The machine's 1-minute load average when the run started (other builds share it).
    pub(super) loadavg: f64,
    pub(super) t_start: u64,
    pub(super) t_fault: u64,
    pub(super) t_heal: u64,
    pub(super) t_end: u64,
    pub(super) data: Vec<(System, SysData)>,
    pub(super) bootstrap: String,
}

/// Seconds a scenario costs beyond its phases: Envoy's start with one wasm VM per meshbreaker
/// listener, the wait for the access logs, the upstream's counts.
pub(super) const OVERHEAD_S: u64 = 8;

/// How long `scenarios` take to measure.
pub(super) fn estimate(scenarios: &[Scenario]) -> Duration {
    scenarios
        .iter()
        .map(|s| s.phases.total() + Duration::from_secs(OVERHEAD_S))
        .sum()
}

/// The phases of the full run's fault scenarios (the hand-written prose of docs/PROTECTION.md
/// quotes them, as it does the rate, the slow delay and the streams' share and hold: edit it
/// with them).
pub(super) const FULL: Phases = Phases {
    warm: Duration::from_secs(8),
    fault: Duration::from_secs(25),
    recover: Duration::from_secs(45),
};
/// The full run's long-lived-stream scenario: nothing to recover from, only the last streams
/// to finish.
pub(super) const FULL_STREAMS: Phases = Phases {
    warm: Duration::from_secs(5),
    fault: Duration::from_secs(30),
    recover: Duration::from_secs(5),
};

pub(super) fn plan(quick: bool, only: Option<&[String]>) -> Vec<Scenario> {
    let wanted = |f: Fault| only.is_none_or(|o| o.iter().any(|x| x == f.id()));
    let mut s = Vec::new();
    if quick {
        let phases = Phases {
            warm: Duration::from_secs(3),
            fault: Duration::from_secs(6),
            recover: Duration::from_secs(4),
        };
        for fault in [Fault::Down, Fault::Errors] {
            s.push(Scenario {
                fault,
                hosts: 1,
                systems: System::BASE.to_vec(),
                phases,
            });
        }
        // Streams held 3 s complete from 3 s on: 10 s of them give 7 s of completions, enough
        // for a 60 s window that holds 1 s of plain GETs to see more than 5% long-lived
        // samples (which tripped round 2's whole-exchange P95 at about 6 s).
        s.push(Scenario {
            fault: Fault::Streams,
            hosts: 1,
            systems: vec![
                System::NoProtection,
                System::MbDefault,
                System::MbRecommended,
            ],
            phases: Phases {
                warm: Duration::from_secs(1),
                fault: Duration::from_secs(10),
                recover: Duration::from_secs(4),
            },
        });
        s.retain(|sc| wanted(sc.fault));
        return s;
    }
    for fault in Fault::ALL {
        if !wanted(fault) {
            continue;
        }
        if fault == Fault::Streams {
            // A trip is cluster-wide: more hosts would show nothing new.
            s.push(Scenario {
                fault,
                hosts: 1,
                systems: System::BASE.to_vec(),
                phases: FULL_STREAMS,
            });
            continue;
        }
        for hosts in [1, 3] {
            let mut systems = System::BASE.to_vec();
            if fault == Fault::Resets {
                systems.extend(System::SIDECAR);
            }
            if fault == Fault::Errors && hosts == 1 {
                systems.extend(System::SHEDDING);
            }
            s.push(Scenario {
                fault,
                hosts,
                systems,
                phases: FULL,
            });
        }
    }
    s
}
