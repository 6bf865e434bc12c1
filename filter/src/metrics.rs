//! SPEC's metrics per `key` label, the process-wide label budget, and batched counters.
//!
//! Envoy cannot delete a wasm metric, so at most `max_keys` distinct `key` labels may ever be
//! created per Envoy process: a counter in shared data (`…/labels`, created at configure time, so
//! every increment is a real compare-and-swap) and a marker per key (`…/label/<key>`) hand them
//! out; later keys report as `_other`. Two workers seeing a new key at the same instant may both
//! spend a label on it: the budget then runs out a little early, but never over `max_keys`.
//!
//! Counter increments on the request path are added up per worker and handed to Envoy on the
//! tick ([`Metrics::flush`], at least every 100 ms), so a request costs no metric host call.

use std::collections::HashMap;

use policy_core::keys::{self, OTHER_LABEL};

use crate::host::{Host, MetricKind};
use crate::shared::{cas_update, Names, Update};

/// The counters of one label, in the order of [`Counter`].
const COUNTERS: usize = 9;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    Allowed = 0,
    Rejected = 1,
    Probe = 2,
    DryRunReject = 3,
    ToOpen = 4,
    ToHalfOpen = 5,
    ToClosed = 6,
    BudgetDenied = 7,
    KernelResets = 8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gauge {
    State = 0,
    ErrorRatePpm = 1,
    LatencyP95Ms = 2,
}

/// The metric ids of one `key` label and its not yet flushed counter deltas.
#[derive(Debug, Clone, Default)]
struct LabelMetrics {
    counters: [Option<u32>; COUNTERS],
    gauges: [Option<u32>; 3],
    pending: [i64; COUNTERS],
    dirty: bool,
}

/// A label, by index (so per-request code never clones a label string).
pub type LabelId = usize;

pub struct Metrics {
    labels: Vec<LabelMetrics>,
    index: HashMap<String, LabelId>,
    /// Keys known to have no label of their own (bounded: cleared past `max_keys`).
    no_label: HashMap<String, ()>,
    dirty: Vec<LabelId>,
    max_keys: u32,
}

impl Metrics {
    pub fn new(max_keys: u32) -> Metrics {
        Metrics {
            labels: Vec::new(),
            index: HashMap::new(),
            no_label: HashMap::new(),
            dirty: Vec::new(),
            max_keys,
        }
    }

    /// The label id of `label`, defining its metrics on first use.
    fn define<H: Host>(&mut self, host: &H, label: &str) -> LabelId {
        if let Some(&i) = self.index.get(label) {
            return i;
        }
        use policy_core::metrics as names;
        let tag = |name: &str| format!("{}=.={label};.;{name}", names::KEY);
        let dec = |d: &str| {
            format!(
                "{}=.={label};.;{}=.={d};.;{}",
                names::KEY,
                names::DECISION,
                names::REQUESTS_TOTAL
            )
        };
        let to = |t: &str| {
            format!(
                "{}=.={label};.;{}=.={t};.;{}",
                names::KEY,
                names::TO,
                names::TRANSITIONS_TOTAL
            )
        };
        let c = |n: String| host.define_metric(MetricKind::Counter, &n);
        let g = |n: String| host.define_metric(MetricKind::Gauge, &n);
        let [allowed, rejected, probe, dry_run_reject] = names::DECISIONS;
        let [open, half_open, closed] = names::TRANSITIONS_TO;
        let m = LabelMetrics {
            counters: [
                c(dec(allowed)),
                c(dec(rejected)),
                c(dec(probe)),
                c(dec(dry_run_reject)),
                c(to(open)),
                c(to(half_open)),
                c(to(closed)),
                c(tag(names::RETRY_BUDGET_DENIED_TOTAL)),
                c(tag(names::KERNEL_RESETS_TOTAL)),
            ],
            gauges: [
                g(tag(names::STATE)),
                g(tag(names::ERROR_RATE_PPM)),
                g(tag(names::LATENCY_P95_MS)),
            ],
            pending: [0; COUNTERS],
            dirty: false,
        };
        self.labels.push(m);
        let id = self.labels.len() - 1;
        self.index.insert(label.to_string(), id);
        id
    }

    /// The `_other` label.
    pub fn other<H: Host>(&mut self, host: &H) -> LabelId {
        self.define(host, OTHER_LABEL)
    }

    /// The label for `key`: its own while fewer than `max_keys` labels were ever created in this
    /// Envoy process, `_other` after that. Called once per key and worker (on first sight).
    pub fn label_for<H: Host>(&mut self, host: &H, names: &Names, key: &str) -> LabelId {
        if self.index.contains_key(key) {
            return self.define(host, key);
        }
        if self.no_label.contains_key(key) {
            return self.other(host);
        }
        let marker = names.label_marker(key);
        if host.get_shared(&marker).0.is_some() {
            return self.define(host, key);
        }
        let count_name = names.label_count();
        let max_keys = self.max_keys;
        let mut enc = Vec::new();
        let granted = cas_update(
            host,
            &count_name,
            &mut enc,
            |b| std::str::from_utf8(b).ok()?.parse::<u32>().ok(),
            |n, out| {
                out.clear();
                out.extend_from_slice(n.to_string().as_bytes());
            },
            |n| {
                if keys::may_create_label(*n, max_keys) {
                    *n += 1;
                    Update::Write(Some(true))
                } else {
                    Update::Keep(Some(false))
                }
            },
            // Contention or a host failure: `_other` for now; the next first sight tries again.
            |_, _| None,
        );
        match granted {
            Some(true) => {
                // The marker is idempotent ("1" from whoever writes it): a blind write is fine.
                let _ = host.set_shared(&marker, b"1", None);
                self.define(host, key)
            }
            Some(false) => {
                if self.no_label.len() >= self.max_keys as usize {
                    self.no_label.clear();
                }
                self.no_label.insert(key.to_string(), ());
                self.other(host)
            }
            None => self.other(host),
        }
    }

    /// Adds `by` to a counter; handed to Envoy on the next [`Metrics::flush`].
    pub fn inc(&mut self, label: LabelId, c: Counter, by: i64) {
        if by == 0 {
            return;
        }
        if let Some(m) = self.labels.get_mut(label) {
            m.pending[c as usize] = m.pending[c as usize].saturating_add(by);
            if !m.dirty {
                m.dirty = true;
                self.dirty.push(label);
            }
        }
    }

    /// Records a gauge of `label`. Never for `_other`: the keys without a label of their own
    /// would each overwrite it (last writer wins), so its value would describe no key; its gauges
    /// stay at 0 and only its counters (which add up) are meaningful.
    pub fn gauge<H: Host>(&self, host: &H, label: LabelId, g: Gauge, v: u64) {
        if self.index.get(OTHER_LABEL) == Some(&label) {
            return;
        }
        if let Some(id) = self.labels.get(label).and_then(|m| m.gauges[g as usize]) {
            host.record_metric(id, v);
        }
    }

    /// Hands every counter delta to Envoy (from the tick).
    pub fn flush<H: Host>(&mut self, host: &H) {
        for label in self.dirty.drain(..) {
            let Some(m) = self.labels.get_mut(label) else {
                continue;
            };
            for (i, d) in m.pending.iter_mut().enumerate() {
                if *d != 0 {
                    if let Some(id) = m.counters[i] {
                        host.increment_metric(id, *d);
                    }
                    *d = 0;
                }
            }
            m.dirty = false;
        }
    }
}
