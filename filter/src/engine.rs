//! The per-VM engine: keys, shared slots, decisions, recording, flushing, metrics.
//!
//! Each Envoy worker runs its own VM and so its own `Engine`. What must be one per process lives in
//! proxy-wasm shared data ([`Host`]), in a fixed set of `max_keys` slots (entries can never be
//! deleted), each slot two entries:
//!
//! - `…/s/<i>`: the key's name and [`BreakerState`], read once per request. In CLOSED nothing is
//!   written on the request path; transitions and HALF_OPEN probe admission are compare-and-swap.
//! - `…/w/<i>`: the merged [`Window`]. Each worker records into its own [`Recorder`] per key (O(1),
//!   no shared traffic) and merges it into this entry at least every [`FLUSH_MS`], with CAS. The
//!   worker whose merge makes the window trip writes the transition.
//!
//! A key finds its slot by hashing into the table and probing up to [`PROBE_SLOTS`] slots; when
//! all of them are taken, the least recently used idle one among them is taken over. Label
//! creation for metrics is bounded process-wide by a shared counter: at most `max_keys` distinct
//! `key` labels ever exist, later keys report as `_other`.

use std::collections::HashMap;
use std::fmt::Write as _;

use policy_core::breaker::{BreakerState, Decision, Jitter, SplitMix64, State, Transition};
use policy_core::config::{BreakerConfig, Config, Mode};
use policy_core::encoding::{ResetTotals, SlotState};
use policy_core::keys::{self, KeyRegistry, OTHER_LABEL};
use policy_core::retry::{budget_allows_retry, CompiledRetry, RequestView, RetryDecision};
use policy_core::window::{
    bucket_ms, kernel_resets_exceed, threshold_us, Outcome, Recorder, TripReason, Window,
};

use crate::host::{Host, MetricKind, SetError};

/// A worker merges its samples into the shared window at least this often.
pub const FLUSH_MS: u64 = 100;
/// Slots probed per key before taking over the least recently used idle one.
pub const PROBE_SLOTS: u32 = 8;
/// A key counts as idle (its slot may be taken over) after this long without a completed request.
pub const IDLE_MS: u64 = 1_000;
/// Compare-and-swap attempts before giving up on one update (contention across workers).
const CAS_ATTEMPTS: usize = 16;

/// Shared-data entry names, prefixed per plugin so two plugins in one Envoy never collide.
#[derive(Debug, Clone)]
pub struct Names {
    prefix: String,
}

impl Names {
    pub fn new(plugin: &str) -> Names {
        Names {
            prefix: format!("meshbreaker/{}/", keys::sanitize_key(plugin)),
        }
    }
    fn state(&self, slot: u32, out: &mut String) {
        out.clear();
        let _ = write!(out, "{}s/{slot}", self.prefix);
    }
    fn window(&self, slot: u32, out: &mut String) {
        out.clear();
        let _ = write!(out, "{}w/{slot}", self.prefix);
    }
    fn label_marker(&self, key: &str) -> String {
        format!("{}label/{key}", self.prefix)
    }
    fn label_count(&self) -> String {
        format!("{}labels", self.prefix)
    }
    pub fn resets(&self) -> String {
        format!("{}resets", self.prefix)
    }
    pub fn poller_lease(&self) -> String {
        format!("{}poller", self.prefix)
    }
}

/// The metric ids of one `key` label.
#[derive(Debug, Clone, Copy, Default)]
struct LabelMetrics {
    state: Option<u32>,
    allowed: Option<u32>,
    rejected: Option<u32>,
    probe: Option<u32>,
    dry_run_reject: Option<u32>,
    to_open: Option<u32>,
    to_half_open: Option<u32>,
    to_closed: Option<u32>,
    error_rate_ppm: Option<u32>,
    latency_p95_ms: Option<u32>,
    budget_denied: Option<u32>,
    kernel_resets: Option<u32>,
}

/// What this worker keeps per key: its slot, its recorder, its label, what the last flush learned.
struct KeyLocal {
    slot: Option<u32>,
    /// Index into `Config::overrides` + 1, or 0 for the top level.
    cfg_index: usize,
    recorder: Recorder,
    label: String,
    last_flush_ms: u64,
    budget_ok: bool,
    in_flight: u32,
    /// Upstream hosts seen since the last flush (for the kernel reset signal).
    new_hosts: Vec<String>,
}

/// The request-time identity of a key (from Envoy properties and headers).
#[derive(Debug, Clone, Default)]
pub struct KeyParts<'a> {
    pub cluster: &'a str,
    pub route: &'a str,
    pub authority: &'a str,
}

/// What the filter must do with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub key: String,
    pub decision: Decision,
    /// Retry headers to set (after stripping), already rendered.
    pub retry_headers: Vec<(&'static str, String)>,
    /// Record the outcome (false for `disabled`, rejected requests and untracked errors).
    pub record: bool,
}

pub struct Engine<H: Host> {
    pub host: H,
    cfg: Config,
    /// Compiled retry policies: `[0]` the top level, `[i + 1]` override `i`.
    retry: Vec<CompiledRetry>,
    names: Names,
    keys: KeyRegistry<KeyLocal>,
    labels: HashMap<String, LabelMetrics>,
    /// Keys known to have no label of their own (bounded: cleared when it grows past max_keys).
    no_label: HashMap<String, ()>,
    rng: SplitMix64,
    window: Window,
    bins: Vec<(u64, u64)>,
    name_buf: String,
    key_buf: String,
    enc: Vec<u8>,
    warned_no_slot: bool,
    /// Sequence of the last kernel reset totals this VM attributed.
    resets_seen: Option<u64>,
    /// Shared-data traffic, for the per-request cost measurement.
    pub shared_reads: u64,
    pub shared_writes: u64,
}

fn slot_hash(key: &str) -> u64 {
    // FNV-1a: stable across VMs (unlike std's randomized hasher), so every worker probes alike.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl<H: Host> Engine<H> {
    pub fn new(host: H, cfg: Config, plugin: &str, seed: u64) -> Engine<H> {
        let mut retry = vec![CompiledRetry::new(&cfg.retry)];
        retry.extend(cfg.overrides.iter().map(|o| CompiledRetry::new(&o.retry)));
        Engine {
            host,
            keys: KeyRegistry::new(cfg.max_keys),
            retry,
            names: Names::new(plugin),
            labels: HashMap::new(),
            no_label: HashMap::new(),
            rng: SplitMix64(seed),
            window: Window::new(cfg.breaker.buckets, 0),
            bins: Vec::new(),
            name_buf: String::new(),
            key_buf: String::new(),
            enc: Vec::new(),
            warned_no_slot: false,
            resets_seen: None,
            shared_reads: 0,
            shared_writes: 0,
            cfg,
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn names(&self) -> &Names {
        &self.names
    }

    fn effective(&self, cfg_index: usize) -> (Mode, &BreakerConfig) {
        match cfg_index
            .checked_sub(1)
            .and_then(|i| self.cfg.overrides.get(i))
        {
            Some(o) => (o.mode, &o.breaker),
            None => (self.cfg.mode, &self.cfg.breaker),
        }
    }

    fn get(&mut self, name: &str) -> (Option<Vec<u8>>, Option<u32>) {
        self.shared_reads += 1;
        self.host.get_shared(name)
    }

    fn set(&mut self, name: &str, value: &[u8], cas: Option<u32>) -> Result<(), SetError> {
        self.shared_writes += 1;
        self.host.set_shared(name, value, cas)
    }

    // ---------------------------------------------------------------- metrics

    fn label_metrics(&mut self, label: &str) -> LabelMetrics {
        if let Some(m) = self.labels.get(label) {
            return *m;
        }
        let h = &self.host;
        let tag = |name: &str| format!("key=.={label};.;{name}");
        let dec = |d: &str| format!("key=.={label};.;decision=.={d};.;meshbreaker_requests_total");
        let to = |t: &str| format!("key=.={label};.;to=.={t};.;meshbreaker_transitions_total");
        let m = LabelMetrics {
            state: h.define_metric(MetricKind::Gauge, &tag("meshbreaker_state")),
            allowed: h.define_metric(MetricKind::Counter, &dec("allowed")),
            rejected: h.define_metric(MetricKind::Counter, &dec("rejected")),
            probe: h.define_metric(MetricKind::Counter, &dec("probe")),
            dry_run_reject: h.define_metric(MetricKind::Counter, &dec("dry_run_reject")),
            to_open: h.define_metric(MetricKind::Counter, &to("open")),
            to_half_open: h.define_metric(MetricKind::Counter, &to("half_open")),
            to_closed: h.define_metric(MetricKind::Counter, &to("closed")),
            error_rate_ppm: h.define_metric(MetricKind::Gauge, &tag("meshbreaker_error_rate_ppm")),
            latency_p95_ms: h.define_metric(MetricKind::Gauge, &tag("meshbreaker_latency_p95_ms")),
            budget_denied: h.define_metric(
                MetricKind::Counter,
                &tag("meshbreaker_retry_budget_denied_total"),
            ),
            kernel_resets: h
                .define_metric(MetricKind::Counter, &tag("meshbreaker_kernel_resets_total")),
        };
        self.labels.insert(label.to_string(), m);
        m
    }

    fn inc(&self, id: Option<u32>, by: i64) {
        if let Some(id) = id {
            self.host.increment_metric(id, by);
        }
    }

    fn gauge(&self, id: Option<u32>, v: u64) {
        if let Some(id) = id {
            self.host.record_metric(id, v);
        }
    }

    /// The label for `key`: its own while fewer than `max_keys` labels were ever created in this
    /// Envoy process (a shared counter), `_other` after that.
    fn label_for(&mut self, key: &str) -> String {
        if self.labels.contains_key(key) {
            return key.to_string();
        }
        if self.no_label.contains_key(key) {
            return OTHER_LABEL.to_string();
        }
        let marker = self.names.label_marker(key);
        if self.get(&marker).0.is_some() {
            return key.to_string();
        }
        let count_name = self.names.label_count();
        for _ in 0..CAS_ATTEMPTS {
            let (v, cas) = self.get(&count_name);
            let n: u32 = v
                .as_deref()
                .and_then(|b| std::str::from_utf8(b).ok())
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            if !keys::may_create_label(n, self.cfg.max_keys) {
                if self.no_label.len() >= self.cfg.max_keys as usize {
                    self.no_label.clear();
                }
                self.no_label.insert(key.to_string(), ());
                return OTHER_LABEL.to_string();
            }
            let next = (n + 1).to_string();
            match self.set(&count_name, next.as_bytes(), Some(cas.unwrap_or(0))) {
                Ok(()) => {
                    let _ = self.set(&marker, b"1", None);
                    return key.to_string();
                }
                Err(SetError::CasMismatch) => continue,
                Err(SetError::Failed) => break,
            }
        }
        OTHER_LABEL.to_string()
    }

    // ---------------------------------------------------------------- slots

    fn read_state(&mut self, slot: u32) -> Option<(SlotState, Option<u32>)> {
        let mut name = std::mem::take(&mut self.name_buf);
        self.names.state(slot, &mut name);
        let (v, cas) = self.get(&name);
        self.name_buf = name;
        let state = match v {
            Some(b) => SlotState::decode(&b).unwrap_or_default(),
            None => return None,
        };
        Some((state, cas))
    }

    fn write_state(
        &mut self,
        slot: u32,
        state: &SlotState,
        cas: Option<u32>,
    ) -> Result<(), SetError> {
        let mut name = std::mem::take(&mut self.name_buf);
        let mut enc = std::mem::take(&mut self.enc);
        self.names.state(slot, &mut name);
        state.encode_into(&mut enc);
        let r = self.set(&name, &enc, Some(cas.unwrap_or(0)));
        self.name_buf = name;
        self.enc = enc;
        r
    }

    fn read_window_last_used(&mut self, slot: u32) -> u64 {
        let mut name = std::mem::take(&mut self.name_buf);
        self.names.window(slot, &mut name);
        let (v, _) = self.get(&name);
        self.name_buf = name;
        let mut w = Window::default();
        match v {
            Some(b) if w.decode_into(&b).is_ok() => w.last_used_ms,
            _ => 0,
        }
    }

    /// Finds or claims the slot of `key`. `None` when every probed slot is busy.
    fn find_slot(&mut self, key: &str, now_ms: u64) -> Option<u32> {
        let n = self.cfg.max_keys.max(1);
        let start = (slot_hash(key) % u64::from(n)) as u32;
        let probes = PROBE_SLOTS.min(n);
        for _attempt in 0..CAS_ATTEMPTS {
            let mut free: Option<(u32, Option<u32>, u32)> = None; // (slot, cas, generation)
            let mut victim: Option<(u32, Option<u32>, u32, u64)> = None;
            for i in 0..probes {
                let slot = (start + i) % n;
                let (state, cas) = match self.read_state(slot) {
                    Some(s) => s,
                    None => {
                        // Never used: create it empty (racing creators write the same bytes).
                        let _ = self.write_state(slot, &SlotState::default(), None);
                        match self.read_state(slot) {
                            Some(s) => s,
                            None => continue,
                        }
                    }
                };
                if state.key == key {
                    return Some(slot);
                }
                if state.key.is_empty() {
                    if free.is_none() {
                        free = Some((slot, cas, state.breaker.generation));
                    }
                    continue;
                }
                let idle =
                    state.breaker.probes.is_empty() && state.breaker.state != State::HalfOpen;
                if idle {
                    let last = self.read_window_last_used(slot);
                    if now_ms.saturating_sub(last) >= IDLE_MS && victim.is_none_or(|v| last < v.3) {
                        victim = Some((slot, cas, state.breaker.generation, last));
                    }
                }
            }
            let (slot, cas, generation) = match (free, victim) {
                (Some(f), _) => f,
                (None, Some(v)) => (v.0, v.1, v.2),
                (None, None) => return None,
            };
            let fresh = SlotState {
                key: key.to_string(),
                breaker: BreakerState {
                    generation: generation.wrapping_add(1),
                    ..Default::default()
                },
            };
            match self.write_state(slot, &fresh, cas) {
                Ok(()) => return Some(slot),
                Err(SetError::CasMismatch) => continue,
                Err(SetError::Failed) => return None,
            }
        }
        None
    }

    /// The key's local entry, created (slot, label, recorder) on first sight.
    fn ensure_key(&mut self, key: &str, parts: &KeyParts<'_>, now_ms: u64) -> bool {
        if self.keys.touch(key, now_ms) {
            return true;
        }
        let cfg_index = {
            let mut c = String::new();
            let mut r = String::new();
            let mut a = String::new();
            keys::sanitize_key_into(parts.cluster, &mut c);
            keys::sanitize_key_into(parts.route, &mut r);
            keys::sanitize_key_into(parts.authority, &mut a);
            let eff = self.cfg.effective(&c, &r, &a);
            self.cfg
                .overrides
                .iter()
                .position(|o| std::ptr::eq(&o.breaker, eff.breaker))
                .map(|i| i + 1)
                .unwrap_or(0)
        };
        let (_, bcfg) = self.effective(cfg_index);
        let Some(recorder) = Recorder::new(threshold_us(bcfg)) else {
            return false;
        };
        let label = self.label_for(key);
        let slot = self.find_slot(key, now_ms);
        if slot.is_none() && !self.warned_no_slot {
            self.warned_no_slot = true;
            log::warn!(
                "meshbreaker: no free slot for key {key} (max_keys={}): its requests pass unguarded",
                self.cfg.max_keys
            );
        }
        let local = KeyLocal {
            slot,
            cfg_index,
            recorder,
            label,
            last_flush_ms: now_ms,
            budget_ok: true,
            in_flight: 0,
            new_hosts: Vec::new(),
        };
        let idle = |l: &KeyLocal| l.in_flight == 0 && l.recorder.is_empty();
        if self.keys.len() >= self.keys.capacity() {
            // Full: flush the least recently used key so that it becomes idle and can make room
            // without losing its samples.
            if let Some(lru) = self.keys.lru_key().map(str::to_string) {
                self.flush_key(&lru, now_ms);
            }
        }
        self.keys.insert(key, local, now_ms, idle).is_ok()
    }

    // ---------------------------------------------------------------- requests

    /// Decides a request: the key, the decision, the retry headers.
    pub fn on_request(&mut self, parts: &KeyParts<'_>, req: &RequestView<'_>, now_ms: u64) -> Plan {
        let mut key = std::mem::take(&mut self.key_buf);
        keys::key_for(
            self.cfg.key_by,
            parts.cluster,
            parts.route,
            parts.authority,
            &mut key,
        );
        let plan = self.decide(key.clone(), parts, req, now_ms);
        self.key_buf = key;
        plan
    }

    fn decide(
        &mut self,
        key: String,
        parts: &KeyParts<'_>,
        req: &RequestView<'_>,
        now_ms: u64,
    ) -> Plan {
        let pass = |key: String, decision: Decision| Plan {
            key,
            decision,
            retry_headers: Vec::new(),
            record: false,
        };
        if self.cfg.mode == Mode::Disabled && self.cfg.overrides.is_empty() {
            return pass(key, Decision::PassThrough);
        }
        if !self.ensure_key(&key, parts, now_ms) {
            // Every local entry is busy: the request passes unguarded, counted under `_other`.
            let metrics = self.label_metrics(OTHER_LABEL);
            self.inc(metrics.allowed, 1);
            return pass(key, Decision::Allow);
        }
        let Some(local) = self.keys.get(&key) else {
            return pass(key, Decision::Allow);
        };
        let (cfg_index, slot, label, budget_ok) = (
            local.cfg_index,
            local.slot,
            local.label.clone(),
            local.budget_ok,
        );
        let (mode, bcfg) = self.effective(cfg_index);
        let bcfg = bcfg.clone();
        let metrics = self.label_metrics(&label);

        let mut decision = Decision::Allow;
        if let Some(slot) = slot {
            decision = self.decide_shared(&key, slot, mode, &bcfg, &metrics, now_ms);
        } else if mode == Mode::ForcedOpen || mode == Mode::Disabled {
            decision = BreakerState::default().decide(mode, &bcfg, now_ms).decision;
        }
        let (counter, record) = match decision {
            Decision::Allow | Decision::PassThrough => (metrics.allowed, mode != Mode::Disabled),
            Decision::Probe(_) => (metrics.probe, true),
            Decision::Reject(_) => (metrics.rejected, false),
            Decision::DryRunReject(_) => (metrics.dry_run_reject, true),
        };
        self.inc(counter, 1);
        let retry = self.retry.get(cfg_index).or(self.retry.first());
        let rd = match (decision, retry) {
            (Decision::Reject(_), _) | (_, None) => RetryDecision::NoHeaders,
            (Decision::Probe(_), Some(r)) => r.decide(req, mode, true, budget_ok),
            (_, Some(r)) => r.decide(req, mode, false, budget_ok),
        };
        if rd.budget_denied() {
            self.inc(metrics.budget_denied, 1);
        }
        let retry_headers = rd.headers().map(|(n, v)| (n, v.to_string())).collect();
        if record {
            if let Some(l) = self.keys.get_mut(&key, now_ms) {
                l.in_flight = l.in_flight.saturating_add(1);
            }
        }
        Plan {
            key,
            decision,
            retry_headers,
            record,
        }
    }

    /// Reads the key's breaker state (one shared read), decides, and writes back with CAS only if
    /// the decision changed the state (OPEN→HALF_OPEN, probe admission).
    fn decide_shared(
        &mut self,
        key: &str,
        slot: u32,
        mode: Mode,
        bcfg: &BreakerConfig,
        metrics: &LabelMetrics,
        now_ms: u64,
    ) -> Decision {
        for _ in 0..CAS_ATTEMPTS {
            let Some((mut st, cas)) = self.read_state(slot) else {
                break;
            };
            if st.key != key {
                // Another worker took the slot over: find (or claim) one again next time.
                if let Some(l) = self.keys.get_mut(key, now_ms) {
                    l.slot = None;
                }
                let new_slot = self.find_slot(key, now_ms);
                if let Some(l) = self.keys.get_mut(key, now_ms) {
                    l.slot = new_slot;
                }
                match new_slot {
                    Some(_) => continue,
                    None => break,
                }
            }
            let step = st.breaker.decide(mode, bcfg, now_ms);
            if !step.changed {
                return step.decision;
            }
            match self.write_state(slot, &st, cas) {
                Ok(()) => {
                    if let Some(t) = step.transition {
                        self.on_transition(key, &t, metrics, None);
                    }
                    self.gauge(metrics.state, st.breaker.state.gauge() as u64);
                    return step.decision;
                }
                Err(SetError::CasMismatch) => continue,
                Err(SetError::Failed) => break,
            }
        }
        // Contention or host failure: fail open, as a breaker must not become the outage.
        Decision::Allow
    }

    fn on_transition(
        &self,
        key: &str,
        t: &Transition,
        metrics: &LabelMetrics,
        figures: Option<String>,
    ) {
        if !t.is_change() {
            return;
        }
        let counter = match t.to {
            State::Open => metrics.to_open,
            State::HalfOpen => metrics.to_half_open,
            State::Closed => metrics.to_closed,
        };
        self.inc(counter, 1);
        log::info!(
            "meshbreaker: transition key={key} from={} to={} reason={}{}{}",
            t.from.as_str(),
            t.to.as_str(),
            t.reason
                .map(TripReason::as_str)
                .unwrap_or("probes_succeeded"),
            if t.to == State::Open {
                format!(" open_for_ms={}", t.open_for_ms)
            } else {
                String::new()
            },
            figures.map(|f| format!(" {f}")).unwrap_or_default(),
        );
    }

    /// Records a completed request. `probe` is the probe id when the request was a HALF_OPEN probe;
    /// `upstream_host` is Envoy's `upstream.address`, learned for the kernel reset signal.
    pub fn on_complete(
        &mut self,
        key: &str,
        outcome: &Outcome,
        probe: Option<u32>,
        upstream_host: Option<&str>,
        now_ms: u64,
    ) {
        let Some(local) = self.keys.get_mut(key, now_ms) else {
            return;
        };
        local.in_flight = local.in_flight.saturating_sub(1);
        let (cfg_index, slot) = (local.cfg_index, local.slot);
        if let Some(h) = upstream_host {
            if !h.is_empty() && !local.new_hosts.iter().any(|x| x == h) && local.new_hosts.len() < 4
            {
                local.new_hosts.push(h.to_string());
            }
        }
        let (_, bcfg) = self.effective(cfg_index);
        let bcfg = bcfg.clone();
        let failure = outcome.failure(&bcfg.failure);
        let epoch = now_ms / bucket_ms(&bcfg);
        if let (Some(id), Some(slot)) = (probe, slot) {
            self.complete_probe(
                key,
                slot,
                id,
                failure.is_none() && outcome.retried_attempts() == 0,
                &bcfg,
                now_ms,
            );
        }
        let (recorded, due) = match self.keys.get_mut(key, now_ms) {
            Some(l) => {
                let recorded = l.recorder.record(epoch, outcome, failure).is_ok();
                (
                    recorded,
                    !recorded || now_ms.saturating_sub(l.last_flush_ms) >= FLUSH_MS,
                )
            }
            None => return,
        };
        if due {
            self.flush_key(key, now_ms);
            if !recorded {
                if let Some(l) = self.keys.get_mut(key, now_ms) {
                    let _ = l.recorder.record(epoch, outcome, failure);
                }
            }
        }
    }

    fn complete_probe(
        &mut self,
        key: &str,
        slot: u32,
        id: u32,
        success: bool,
        bcfg: &BreakerConfig,
        now_ms: u64,
    ) {
        let label = self
            .keys
            .get(key)
            .map(|l| l.label.clone())
            .unwrap_or_else(|| OTHER_LABEL.into());
        let metrics = self.label_metrics(&label);
        for _ in 0..CAS_ATTEMPTS {
            let Some((mut st, cas)) = self.read_state(slot) else {
                return;
            };
            if st.key != key {
                return;
            }
            let mut rng = self.rng.clone();
            let Some(t) = st
                .breaker
                .complete_probe(id, success, bcfg, now_ms, &mut rng)
            else {
                return;
            };
            match self.write_state(slot, &st, cas) {
                Ok(()) => {
                    self.rng = rng;
                    self.on_transition(key, &t, &metrics, Some(format!("probe_success={success}")));
                    self.gauge(metrics.state, st.breaker.state.gauge() as u64);
                    return;
                }
                Err(SetError::CasMismatch) => continue,
                Err(SetError::Failed) => return,
            }
        }
    }

    // ---------------------------------------------------------------- flushing

    /// Flushes every key with samples older than [`FLUSH_MS`] (called from the root's tick).
    pub fn on_tick(&mut self, now_ms: u64) {
        let mut due = Vec::new();
        // New kernel reset totals from the poller: every key with a slot takes its share.
        let mut resets_changed = false;
        if self.cfg.reset_signals.is_some() {
            let name = self.names.resets();
            let seq = self
                .get(&name)
                .0
                .and_then(|b| ResetTotals::decode(&b).ok())
                .map(|t| t.sequence);
            if seq.is_some() && seq != self.resets_seen {
                self.resets_seen = seq;
                resets_changed = true;
            }
        }
        for (k, l) in self.keys.iter() {
            let stale = now_ms.saturating_sub(l.last_flush_ms) >= FLUSH_MS;
            let has_news = !l.recorder.is_empty() || !l.new_hosts.is_empty();
            if (stale && has_news) || (resets_changed && l.slot.is_some()) {
                due.push(k.to_string());
            }
        }
        for k in due {
            self.flush_key(&k, now_ms);
        }
    }

    /// Merges the key's recorder into the shared window (CAS), attributes kernel resets, updates
    /// gauges and the retry budget, and trips the breaker when the merged window says so.
    pub fn flush_key(&mut self, key: &str, now_ms: u64) {
        let Some(local) = self.keys.get_mut(key, now_ms) else {
            return;
        };
        local.last_flush_ms = now_ms;
        let (cfg_index, label) = (local.cfg_index, local.label.clone());
        let Some(slot) = local.slot else {
            local.recorder.clear();
            return;
        };
        let (_, bcfg) = self.effective(cfg_index);
        let bcfg = bcfg.clone();
        let metrics = self.label_metrics(&label);
        let bms = bucket_ms(&bcfg);
        let now_epoch = now_ms / bms;
        let resets = match &self.cfg.reset_signals {
            Some(_) => {
                let name = self.names.resets();
                self.get(&name).0.and_then(|b| ResetTotals::decode(&b).ok())
            }
            None => None,
        };

        let mut window_name = String::new();
        self.names.window(slot, &mut window_name);
        for _ in 0..CAS_ATTEMPTS {
            let Some((st, _)) = self.read_state(slot) else {
                return;
            };
            if st.key != key {
                if let Some(l) = self.keys.get_mut(key, now_ms) {
                    l.recorder.clear();
                    l.slot = None;
                }
                return;
            }
            let (bytes, cas) = self.get(&window_name);
            let mut w = std::mem::take(&mut self.window);
            let ok = bytes.as_deref().is_some_and(|b| w.decode_into(b).is_ok());
            if !ok
                || w.generation != st.breaker.generation
                || w.buckets.len() != bcfg.buckets as usize
            {
                let hosts = if ok {
                    std::mem::take(&mut w.hosts)
                } else {
                    Vec::new()
                };
                w.reset(bcfg.buckets, st.breaker.generation);
                w.hosts = hosts;
                w.last_used_ms = 0;
            }
            let mut bins = std::mem::take(&mut self.bins);
            let mut attributed = 0u64;
            if let Some(l) = self.keys.get(key) {
                w.merge_recorder(&l.recorder, now_epoch, &mut bins);
                for h in &l.new_hosts {
                    let total = resets.as_ref().map(|r| r.total_for(h)).unwrap_or(0);
                    w.learn_host(h, total);
                }
            }
            if let Some(r) = &resets {
                for h in w.hosts.iter_mut() {
                    let total = r.total_for(&h.host);
                    if total > h.seen {
                        attributed = attributed.saturating_add(total - h.seen);
                    }
                    h.seen = total;
                }
            }
            if attributed > 0 {
                let mut kr = Recorder::new(None);
                if let Some(kr) = kr.as_mut() {
                    let _ = kr.record_kernel_resets(now_epoch, attributed);
                    w.merge_recorder(kr, now_epoch, &mut bins);
                }
            }
            if !self.keys.get(key).is_some_and(|l| l.recorder.is_empty()) {
                w.last_used_ms = now_ms;
            }
            let mut enc = std::mem::take(&mut self.enc);
            w.encode_into(&mut enc);
            let r = self.set(&window_name, &enc, Some(cas.unwrap_or(0)));
            self.enc = enc;
            match r {
                Ok(()) => {
                    let totals = w.totals(now_epoch);
                    let p95 = w.p95_us(now_epoch, &mut bins);
                    self.bins = bins;
                    self.window = w;
                    let budget = self.cfg_budget(cfg_index);
                    if let Some(l) = self.keys.get_mut(key, now_ms) {
                        l.recorder.clear();
                        l.new_hosts.clear();
                        l.budget_ok = budget_allows_retry(
                            &budget,
                            bcfg.window,
                            totals.requests,
                            totals.retries,
                        );
                    }
                    self.inc(metrics.kernel_resets, attributed as i64);
                    self.gauge(
                        metrics.error_rate_ppm,
                        (totals.error_rate() * 1e6).round() as u64,
                    );
                    self.gauge(
                        metrics.latency_p95_ms,
                        p95.map(|us| us.div_ceil(1000)).unwrap_or(0),
                    );
                    self.gauge(metrics.state, st.breaker.state.gauge() as u64);
                    let figures = format!(
                        "samples={} failures={} error_rate_ppm={} p95_ms={} kernel_resets={}",
                        totals.samples,
                        totals.failed(),
                        (totals.error_rate() * 1e6).round() as u64,
                        p95.map(|us| us.div_ceil(1000)).unwrap_or(0),
                        totals.kernel_resets
                    );
                    let kernel = self.cfg.reset_signals.as_ref().is_some_and(|rs| {
                        kernel_resets_exceed(&totals, bcfg.window, rs.max_resets_per_second)
                    });
                    self.maybe_trip(key, slot, &bcfg, &totals, kernel, &metrics, figures, now_ms);
                    return;
                }
                Err(SetError::CasMismatch) => {
                    self.bins = bins;
                    self.window = w;
                    continue;
                }
                Err(SetError::Failed) => {
                    self.bins = bins;
                    self.window = w;
                    return;
                }
            }
        }
    }

    fn cfg_budget(&self, cfg_index: usize) -> policy_core::config::BudgetConfig {
        match cfg_index
            .checked_sub(1)
            .and_then(|i| self.cfg.overrides.get(i))
        {
            Some(o) => o.retry.budget.clone(),
            None => self.cfg.retry.budget.clone(),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn maybe_trip(
        &mut self,
        key: &str,
        slot: u32,
        bcfg: &BreakerConfig,
        totals: &policy_core::window::Counts,
        kernel: bool,
        metrics: &LabelMetrics,
        figures: String,
        now_ms: u64,
    ) {
        for _ in 0..CAS_ATTEMPTS {
            let Some((mut st, cas)) = self.read_state(slot) else {
                return;
            };
            if st.key != key || st.breaker.state != State::Closed {
                return;
            }
            let mut rng = self.rng.clone();
            let t = if kernel {
                st.breaker.trip(
                    TripReason::KernelResets,
                    bcfg,
                    now_ms,
                    &mut rng as &mut dyn Jitter,
                )
            } else {
                st.breaker.evaluate(totals, bcfg, now_ms, &mut rng)
            };
            let Some(t) = t else { return };
            match self.write_state(slot, &st, cas) {
                Ok(()) => {
                    self.rng = rng;
                    self.on_transition(key, &t, metrics, Some(figures));
                    self.gauge(metrics.state, st.breaker.state.gauge() as u64);
                    return;
                }
                Err(SetError::CasMismatch) => continue,
                Err(SetError::Failed) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::FakeHost;

    fn engine(host: &FakeHost, json: &str, seed: u64) -> Engine<FakeHost> {
        Engine::new(
            host.clone(),
            Config::parse(json.as_bytes()).unwrap(),
            "mb",
            seed,
        )
    }

    const FAST: &str = r#"{"breaker":{"window":"10s","buckets":10,"min_requests":5,"error_rate_threshold":0.5,
        "sleep_window":"1s","half_open_max_probes":2,"half_open_successes_to_close":2}}"#;

    fn get() -> RequestView<'static> {
        RequestView {
            method: "GET",
            path: "/",
            content_type: None,
            headers: &(),
        }
    }

    fn parts(c: &str) -> KeyParts<'_> {
        KeyParts {
            cluster: c,
            route: "r",
            authority: "a",
        }
    }

    fn fail(ms: u64) -> Outcome {
        Outcome {
            http_status: Some(503),
            latency_us: ms * 1000,
            attempts: 1,
            ..Default::default()
        }
    }

    fn ok() -> Outcome {
        Outcome {
            http_status: Some(200),
            latency_us: 1000,
            attempts: 1,
            ..Default::default()
        }
    }

    #[test]
    fn closed_request_path_reads_shared_state_once_and_writes_nothing() {
        let host = FakeHost::default();
        let mut e = engine(&host, FAST, 1);
        e.on_request(&parts("backend"), &get(), 0);
        let (r, w) = (e.shared_reads, e.shared_writes);
        let p = e.on_request(&parts("backend"), &get(), 1);
        assert_eq!(p.decision, Decision::Allow);
        assert_eq!((e.shared_reads - r, e.shared_writes - w), (1, 0));
    }

    #[test]
    fn default_get_gets_idempotent_retry_headers() {
        let host = FakeHost::default();
        let mut e = engine(&host, "{}", 1);
        let p = e.on_request(&parts("backend"), &get(), 0);
        assert!(
            p.retry_headers
                .contains(&("x-envoy-retry-on", "5xx,reset".to_string())),
            "{:?}",
            p.retry_headers
        );
        assert!(p
            .retry_headers
            .contains(&("x-envoy-max-retries", "2".to_string())));
    }

    #[test]
    fn failures_seen_by_two_workers_trip_the_shared_breaker_for_both() {
        let host = FakeHost::default();
        let mut a = engine(&host, FAST, 1);
        let mut b = engine(&host, FAST, 2);
        for i in 0..3 {
            a.on_request(&parts("backend"), &get(), i);
            a.on_complete("backend", &fail(1), None, None, i);
            b.on_request(&parts("backend"), &get(), i);
            b.on_complete("backend", &fail(1), None, None, i);
        }
        a.on_tick(200);
        assert_eq!(
            b.on_request(&parts("backend"), &get(), 201).decision,
            Decision::Allow,
            "3 of 6 seen"
        );
        b.on_tick(300);
        let p = a.on_request(&parts("backend"), &get(), 301);
        assert!(
            matches!(p.decision, Decision::Reject(r) if r.reason == TripReason::ErrorRate),
            "{p:?}"
        );
        assert!(matches!(
            b.on_request(&parts("backend"), &get(), 302).decision,
            Decision::Reject(_)
        ));
        assert_eq!(
            host.metric("key=.=backend;.;to=.=open;.;meshbreaker_transitions_total"),
            Some(1)
        );
        assert_eq!(host.metric("key=.=backend;.;meshbreaker_state"), Some(1));
    }

    #[test]
    fn half_open_probe_quota_is_exact_across_workers_and_successes_close() {
        let host = FakeHost::default();
        let mut w: Vec<_> = (0..3).map(|i| engine(&host, FAST, i)).collect();
        for i in 0..5 {
            w[0].on_request(&parts("backend"), &get(), i);
            w[0].on_complete("backend", &fail(1), None, None, i);
        }
        w[0].on_tick(200);
        let t = 200 + 1300; // past the jittered sleep window
        let mut probes = vec![];
        for (n, e) in w.iter_mut().enumerate() {
            for _ in 0..2 {
                let p = e.on_request(&parts("backend"), &get(), t);
                if let Decision::Probe(id) = p.decision {
                    assert!(p
                        .retry_headers
                        .contains(&("x-envoy-max-retries", "0".to_string())));
                    probes.push((n, id));
                }
            }
        }
        assert_eq!(probes.len(), 2, "{probes:?}");
        for (n, id) in probes {
            w[n].on_complete("backend", &ok(), Some(id), None, t + 10);
        }
        assert_eq!(
            w[2].on_request(&parts("backend"), &get(), t + 20).decision,
            Decision::Allow
        );
        assert_eq!(
            host.metric("key=.=backend;.;to=.=closed;.;meshbreaker_transitions_total"),
            Some(1)
        );
    }

    #[test]
    fn labels_are_bounded_by_max_keys_across_workers() {
        let host = FakeHost::default();
        let cfg = r#"{"key_by":"authority","max_keys":3}"#;
        let mut a = engine(&host, cfg, 1);
        let mut b = engine(&host, cfg, 2);
        for i in 0..20u64 {
            let auth = format!("h{i};.;x=.=y");
            let p = KeyParts {
                cluster: "c",
                route: "r",
                authority: &auth,
            };
            let e = if i % 2 == 0 { &mut a } else { &mut b };
            e.on_request(&p, &get(), i * 2000);
        }
        let names: Vec<String> = host
            .inner
            .borrow()
            .metric_names
            .iter()
            .map(|(_, n)| n.clone())
            .collect();
        let mut labels: Vec<&str> = names
            .iter()
            .filter_map(|n| n.strip_prefix("key=.=").and_then(|r| r.split(";.;").next()))
            .collect();
        labels.sort();
        labels.dedup();
        assert!(labels.len() <= 4, "{labels:?}");
        assert!(labels.contains(&"_other"));
        assert!(labels.iter().all(|l| !l.contains(';') && !l.contains('=')));
    }

    #[test]
    fn forced_open_rejects_and_disabled_passes_without_headers() {
        let host = FakeHost::default();
        let mut f = engine(&host, r#"{"mode":"forced_open"}"#, 1);
        assert!(
            matches!(f.on_request(&parts("c"), &get(), 0).decision, Decision::Reject(r) if r.reason == TripReason::ForcedOpen && r.retry_after_s == 30)
        );
        let mut d = engine(&FakeHost::default(), r#"{"mode":"disabled"}"#, 1);
        let p = d.on_request(&parts("c"), &get(), 0);
        assert_eq!(p.decision, Decision::PassThrough);
        assert!(p.retry_headers.is_empty());
    }

    #[test]
    fn override_applies_to_its_cluster_only() {
        let host = FakeHost::default();
        let mut e = engine(
            &host,
            r#"{"overrides":[{"match":{"cluster":"hot"},"mode":"forced_open"}]}"#,
            1,
        );
        assert!(matches!(
            e.on_request(&parts("hot"), &get(), 0).decision,
            Decision::Reject(_)
        ));
        assert_eq!(
            e.on_request(&parts("cold"), &get(), 0).decision,
            Decision::Allow
        );
    }

    #[test]
    fn budget_denies_retries_after_sustained_retrying() {
        let host = FakeHost::default();
        let cfg = r#"{"retry":{"budget":{"ratio":0.1,"min_retries_per_second":0}},"breaker":{"min_requests":1000}}"#;
        let mut e = engine(&host, cfg, 1);
        for i in 0..20 {
            e.on_request(&parts("c"), &get(), i * 10);
            e.on_complete(
                "c",
                &Outcome {
                    attempts: 2,
                    ..ok()
                },
                None,
                None,
                i * 10,
            );
        }
        e.on_tick(1000);
        let p = e.on_request(&parts("c"), &get(), 1001);
        assert!(
            p.retry_headers
                .contains(&("x-envoy-max-retries", "0".to_string())),
            "{:?}",
            p.retry_headers
        );
        // The flush at t=100ms saw 11 retries for 11 requests (allowance 1.1): requests 11..19 and
        // this one went out with retries switched off.
        assert_eq!(
            host.metric("key=.=c;.;meshbreaker_retry_budget_denied_total"),
            Some(10)
        );
    }

    #[test]
    fn kernel_resets_published_for_a_learned_host_trip_the_key() {
        let host = FakeHost::default();
        let cfg = r#"{"reset_signals":{"max_resets_per_second":1},"breaker":{"window":"10s","buckets":10}}"#;
        let mut e = engine(&host, cfg, 1);
        let name = e.names().resets();
        host.set_shared(
            &name,
            &ResetTotals {
                sequence: 1,
                peers: vec![("127.0.0.1:80".into(), 100)],
            }
            .encode(),
            None,
        )
        .unwrap();
        e.on_request(&parts("c"), &get(), 0);
        e.on_complete("c", &ok(), None, Some("127.0.0.1:80"), 0);
        e.on_tick(200);
        assert_eq!(
            e.on_request(&parts("c"), &get(), 201).decision,
            Decision::Allow,
            "old resets are a baseline"
        );
        host.set_shared(
            &name,
            &ResetTotals {
                sequence: 2,
                peers: vec![("127.0.0.1:80".into(), 111)],
            }
            .encode(),
            None,
        )
        .unwrap();
        e.on_tick(400);
        let p = e.on_request(&parts("c"), &get(), 401);
        assert!(
            matches!(p.decision, Decision::Reject(r) if r.reason == TripReason::KernelResets),
            "{p:?}"
        );
        assert_eq!(
            host.metric("key=.=c;.;meshbreaker_kernel_resets_total"),
            Some(11)
        );
    }
}
