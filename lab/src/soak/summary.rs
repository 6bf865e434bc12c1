//! What one soak measured, kept as `target/soak/summary.json`: everything the verdicts, the
//! sections and the picture are drawn from, so that `--reanalyse` draws them again without
//! measuring.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::docs::Environment;
use crate::util::Result;

use super::access_log::*;
use super::client::*;
use super::sampling::*;
use super::schedule::*;

/// What oha reported (the figures the report shows).
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Oha {
    pub(super) responses: u64,
    pub(super) requests_per_sec: f64,
    pub(super) statuses: BTreeMap<u16, u64>,
    pub(super) errors: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, PartialEq)]
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

fn map(v: &Value, what: &str) -> Result<BTreeMap<String, u64>> {
    serde_json::from_value(v.clone()).map_err(|e| format!("soak summary: `{what}`: {e}"))
}

/// A map by HTTP status (JSON keeps its keys as text).
fn by_status(v: &Value, what: &str) -> Result<BTreeMap<u16, u64>> {
    serde_json::from_value(v.clone()).map_err(|e| format!("soak summary: `{what}`: {e}"))
}

fn num(v: &Value, what: &str) -> Result<u64> {
    v.as_u64()
        .ok_or_else(|| format!("soak summary: `{what}` is not a count"))
}

fn float(v: &Value, what: &str) -> Result<f64> {
    v.as_f64()
        .ok_or_else(|| format!("soak summary: `{what}` is not a number"))
}

fn text(v: &Value, what: &str) -> Result<String> {
    v.as_str()
        .map(String::from)
        .ok_or_else(|| format!("soak summary: `{what}` is not text"))
}

impl Summary {
    pub(super) fn to_json(&self) -> Value {
        let (seen, ex) = (&self.seen, &self.explained);
        json!({
            "ci": self.ci,
            "asked_s": self.asked_s,
            "elapsed_s": self.elapsed_s,
            "phase_len_s": self.phase_len_s,
            "warmup_s": self.warmup_s,
            "envoy_version": self.envoy_version,
            "oha": {
                "responses": self.oha.responses,
                "requests_per_sec": self.oha.requests_per_sec,
                "statuses": self.oha.statuses,
                "errors": self.oha.errors,
            },
            "checker": {
                "responses": seen.responses,
                "ok": seen.ok,
                "rejections": seen.rejections,
                "upstream_answers": seen.upstream_answers,
                "upstream_failures": seen.upstream_failures,
                "unexplained": seen.unexplained,
                "examples": seen.examples,
                "reconnects": seen.reconnects,
                "transport_errors": seen.transport_errors,
            },
            "access_log": {
                "lines": ex.lines,
                "ok": ex.ok,
                "rejections": ex.rejections,
                "upstream_answers": ex.upstream_answers,
                "upstream_failures": ex.upstream_failures,
                "client_gone": ex.client_gone,
                "unexplained": ex.unexplained,
            },
            "samples": self.samples.iter().map(|s| json!({
                "t": s.t,
                "phase": s.phase,
                "rss": s.rss,
                "wasm": s.wasm,
                "filter": s.filter,
                "checker_responses": s.checker_responses,
                "checker_non_2xx": s.checker_non_2xx,
            })).collect::<Vec<_>>(),
            "events": self.events.iter().map(|e| json!({"at": e.at, "what": e.what})).collect::<Vec<_>>(),
            "lds_updates": self.lds_updates,
            "traps": self.traps,
            "sidecar_back": self.sidecar_back,
            "envoy_alive": self.envoy_alive,
            "environment": self.environment.to_json(),
        })
    }

    pub(super) fn from_json(v: &Value) -> Result<Summary> {
        let (o, c, a) = (&v["oha"], &v["checker"], &v["access_log"]);
        let samples = v["samples"]
            .as_array()
            .ok_or("soak summary: no `samples`")?
            .iter()
            .map(|s| {
                Ok(Sample {
                    t: float(&s["t"], "samples.t")?,
                    phase: text(&s["phase"], "samples.phase")?,
                    rss: num(&s["rss"], "samples.rss")?,
                    wasm: map(&s["wasm"], "samples.wasm")?,
                    filter: map(&s["filter"], "samples.filter")?,
                    checker_responses: num(&s["checker_responses"], "samples.checker_responses")?,
                    checker_non_2xx: num(&s["checker_non_2xx"], "samples.checker_non_2xx")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let events = v["events"]
            .as_array()
            .ok_or("soak summary: no `events`")?
            .iter()
            .map(|e| {
                Ok(Event {
                    at: float(&e["at"], "events.at")?,
                    what: text(&e["what"], "events.what")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Summary {
            ci: v["ci"].as_bool().unwrap_or(false),
            asked_s: float(&v["asked_s"], "asked_s")?,
            elapsed_s: float(&v["elapsed_s"], "elapsed_s")?,
            phase_len_s: float(&v["phase_len_s"], "phase_len_s")?,
            warmup_s: float(&v["warmup_s"], "warmup_s")?,
            envoy_version: text(&v["envoy_version"], "envoy_version")?,
            oha: Oha {
                responses: num(&o["responses"], "oha.responses")?,
                requests_per_sec: float(&o["requests_per_sec"], "oha.requests_per_sec")?,
                statuses: by_status(&o["statuses"], "oha.statuses")?,
                errors: map(&o["errors"], "oha.errors")?,
            },
            seen: Seen {
                responses: num(&c["responses"], "checker.responses")?,
                ok: num(&c["ok"], "checker.ok")?,
                rejections: map(&c["rejections"], "checker.rejections")?,
                upstream_answers: by_status(&c["upstream_answers"], "checker.upstream_answers")?,
                upstream_failures: map(&c["upstream_failures"], "checker.upstream_failures")?,
                unexplained: num(&c["unexplained"], "checker.unexplained")?,
                examples: serde_json::from_value(c["examples"].clone())
                    .map_err(|e| format!("soak summary: `checker.examples`: {e}"))?,
                reconnects: num(&c["reconnects"], "checker.reconnects")?,
                transport_errors: num(&c["transport_errors"], "checker.transport_errors")?,
            },
            explained: Explained {
                lines: num(&a["lines"], "access_log.lines")?,
                ok: num(&a["ok"], "access_log.ok")?,
                rejections: map(&a["rejections"], "access_log.rejections")?,
                upstream_answers: by_status(&a["upstream_answers"], "access_log.upstream_answers")?,
                upstream_failures: map(&a["upstream_failures"], "access_log.upstream_failures")?,
                client_gone: num(&a["client_gone"], "access_log.client_gone")?,
                unexplained: map(&a["unexplained"], "access_log.unexplained")?,
            },
            samples,
            events,
            lds_updates: num(&v["lds_updates"], "lds_updates")?,
            traps: num(&v["traps"], "traps")? as usize,
            sidecar_back: v["sidecar_back"].as_bool().unwrap_or(false),
            envoy_alive: v["envoy_alive"].as_bool().unwrap_or(false),
            environment: Environment::from_json(&v["environment"])?,
        })
    }
}
