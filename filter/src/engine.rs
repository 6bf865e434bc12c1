//! The per-VM engine's entry points: configure, decide a request, record its outcome, tick.
//!
//! Each Envoy worker runs its own VM and so its own `Engine`. What must be one per process lives in
//! proxy-wasm shared data ([`crate::shared`]), in a fixed table of `max_keys` slots (entries can
//! never be deleted), each slot two entries: the key's name and breaker state (`s/<i>`, read once
//! per request; written only on transitions and probe admission, with compare-and-swap), and its
//! merged window (`w/g<table>/<i>`, one table per window geometry, written by the workers' flushes). The other jobs live in
//! their own files: slots ([`crate::slots`]), flushing and trips ([`crate::flush`]), labels and
//! batched counters ([`crate::metrics`]), the request glue ([`crate::request`]).
//!
//! Failure policy: the breaker must not become the outage, but it must not silently stop guarding
//! a recovering upstream either. So a request fails open only when the last state it could read
//! was CLOSED (or there is no state it may use); when the state could not be updated from OPEN or
//! HALF_OPEN (contention, a host refusal) the request is rejected with `retry-after: 1`.

use std::time::Duration;

use policy_core::breaker::{Decision, Rejection, SplitMix64, State, Transition, TransitionLine};
use policy_core::config::{BreakerConfig, BudgetConfig, Config, Mode, OverrideMatch};
use policy_core::encoding::SlotState;
use policy_core::flow::{self, Admitted, Local};
use policy_core::keys::{self, KeyRegistry};
use policy_core::retry::{CompiledRetry, RequestView};
pub use policy_core::retry::{RetryPlan, MAX_ATTEMPTS};
use policy_core::window::{Outcome, TripReason};

use crate::host::Host;
use crate::metrics::{Counter, Gauge, LabelId, Metrics};
use crate::resets::ResetView;
pub use crate::shared::Names;
use crate::shared::{self, cas_update, Entries, Geometry, Meta, Scratch, Update};
use crate::slots::{Shared, SlotSearch, SlotTable};

pub use policy_core::flow::{since, FLUSH_MS, MIN_TAKEOVER_IDLE_MS};
pub use policy_core::resets::normalize_upstream;
/// A busy worker refreshes its keys' `last_active_ms` at most this often (one state write per
/// key and second, off the request path).
pub const ACTIVE_WRITE_MS: u64 = 1_000;
/// A key without a slot tries to get one again at most this often.
pub const SLOT_RETRY_MS: u64 = 1_000;
/// Upstream hosts a worker reports per key and flush (only with `reset_signals`): new ones are
/// learned, known ones move up in the key's least-recently-seen order. As many as a key remembers,
/// so that with round-robin balancing no endpoint is always past the cut.
pub const HOSTS_PER_FLUSH: usize = policy_core::window::MAX_HOSTS_PER_KEY;

/// The configuration in force for a group of keys, compiled once: `[0]` the top level, `[i + 1]`
/// override `i`.
pub(crate) struct Profile {
    pub mode: Mode,
    pub breaker: BreakerConfig,
    pub retry: CompiledRetry,
    pub budget: BudgetConfig,
    pub geometry: Geometry,
    /// The window table of that geometry (its position in `…/meta`).
    pub table: usize,
}

/// What this worker keeps per key.
pub(crate) struct KeyLocal {
    pub slot: Option<u32>,
    /// When this worker last looked for a slot for the key (`None`: look at the next request).
    pub slot_tried_ms: Option<u64>,
    pub profile: usize,
    /// The samples not merged yet, and when they last were.
    pub flow: Local,
    pub label: LabelId,
    /// When a request of this key last started or completed here.
    pub last_activity_ms: u64,
    /// The activity time last written to the slot's `last_active_ms` (`None`: never).
    pub activity_written: Option<u64>,
    pub budget_ok: bool,
    pub in_flight: u32,
    /// The circuit state this worker last read: keys not CLOSED are never evicted.
    pub state: State,
    /// The cache epoch ([`Engine::cache_epoch`]) in which this worker last read the key's state
    /// as CLOSED from its slot: while it is the current one, a request is allowed without
    /// reading shared data ([`crate::peers`]).
    pub closed_epoch: u64,
    /// Upstream hosts seen since the last flush (only with `reset_signals`), normalized.
    pub new_hosts: Vec<String>,
}

impl KeyLocal {
    /// The activity time to write to the slot now, if any: the last request start or completion
    /// (or now, while requests are in flight, so long streams keep their key's slot), at most
    /// once per [`ACTIVE_WRITE_MS`] and only when newer than what was written.
    pub fn activity_to_write(&self, now_ms: u64) -> Option<u64> {
        let activity = if self.in_flight > 0 {
            now_ms
        } else {
            self.last_activity_ms
        };
        match self.activity_written {
            None => Some(activity),
            Some(w) if activity > w && activity - w >= ACTIVE_WRITE_MS => Some(activity),
            // The clock stepped back past the last mark: write the present one, or the key's
            // marks would stop for the size of the step and it would look idle meanwhile.
            Some(w) if w > activity.saturating_add(ACTIVE_WRITE_MS) => Some(activity),
            Some(_) => None,
        }
    }
}

/// The request-time identity of a key (from Envoy properties and headers).
#[derive(Debug, Clone, Default)]
pub struct KeyParts<'a> {
    pub cluster: &'a str,
    pub route: &'a str,
    pub authority: &'a str,
}

/// What the request glue must do with, and remember about, one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    /// Where the key's entry is in this worker's registry while this request is in flight (it
    /// cannot be evicted while it has a request in flight), so the outcome finds it without
    /// the key's name being copied per request.
    pub local: Option<usize>,
    pub decision: Decision,
    /// Record the outcome (false for `disabled`, rejected requests and untracked keys).
    pub record: bool,
    /// The most attempts this request may make (`max_retries + 1`, 1 for probes and
    /// budget-denied requests): a larger attempt count from Envoy or an upstream is clamped.
    pub max_attempts: u32,
    /// The retry headers to write and whether to strip the client's: applied by
    /// [`Engine::apply_retry_headers`].
    pub profile: usize,
    pub retry: RetryPlan,
}

pub struct Engine<H: Host> {
    pub host: H,
    /// What the request path reads (from the configuration, once).
    pub needs: std::rc::Rc<crate::needs::Needs>,
    pub(crate) cfg: Config,
    pub(crate) profiles: Vec<Profile>,
    pub(crate) names: Names,
    pub(crate) keys: KeyRegistry<KeyLocal>,
    pub(crate) metrics: Metrics,
    /// The sleep-window jitter.
    pub(crate) rng: SplitMix64,
    /// Where keys' shared state lives ([`crate::slots`]).
    pub(crate) slots: SlotTable,
    /// The sidecar's reset totals as this VM last read them ([`crate::resets`]).
    pub(crate) resets: ResetView,
    pub(crate) scratch: Scratch,
    /// The key of the request decided last (for the local reply).
    key_buf: String,
    /// The other workers of this plugin, who say when they trip a key ([`crate::peers`]).
    pub(crate) peers: crate::peers::Peers,
    /// Moves on at every tick and whenever another worker tripped a key: a key's CLOSED state
    /// read in an older epoch is read again ([`KeyLocal::closed_epoch`]).
    pub(crate) cache_epoch: u64,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl<H: Host> Engine<H> {
    /// Compiles the configuration and creates every shared entry it uses (see
    /// [`crate::shared`]); `seed` feeds the sleep-window jitter and, if this is the first VM of
    /// the process, the slot hash.
    pub fn new(host: H, cfg: Config, plugin: &str, seed: u64) -> Engine<H> {
        let profile =
            |mode: Mode, b: &BreakerConfig, r: &policy_core::config::RetryConfig| Profile {
                mode,
                breaker: b.clone(),
                retry: CompiledRetry::new(r),
                budget: r.budget.clone(),
                geometry: Geometry::of(b),
                table: 0,
            };
        let mut profiles = vec![profile(cfg.mode, &cfg.breaker, &cfg.retry)];
        profiles.extend(
            cfg.overrides
                .iter()
                .map(|o| profile(o.mode, &o.breaker, &o.retry)),
        );
        let longest_window = profiles
            .iter()
            .map(|p| ms(p.breaker.window))
            .max()
            .unwrap_or(0);
        let mut e = Engine {
            host,
            needs: std::rc::Rc::new(crate::needs::Needs::of(&cfg)),
            keys: KeyRegistry::new(cfg.max_keys),
            metrics: Metrics::new(cfg.max_keys),
            names: Names::new(plugin),
            rng: SplitMix64(seed),
            slots: SlotTable::new(longest_window.max(MIN_TAKEOVER_IDLE_MS)),
            resets: ResetView::default(),
            scratch: Scratch::default(),
            key_buf: String::new(),
            peers: crate::peers::Peers::default(),
            cache_epoch: 1,
            profiles,
            cfg,
        };
        e.configure_shared(seed);
        let now_ms = e.host.now_ns() / 1_000_000;
        e.peers = crate::peers::Peers::join(&e.host, &e.names, seed, now_ms);
        e
    }

    /// Creates the table description, the label counter and every slot and window entry this
    /// configuration uses, where absent.
    fn configure_shared(&mut self, seed: u64) {
        let mut geometries: Vec<Geometry> = Vec::new();
        for p in &self.profiles {
            if !geometries.contains(&p.geometry) {
                geometries.push(p.geometry);
            }
        }
        let meta_name = self.names.meta();
        let (first, _) = Meta {
            seeds: vec![SplitMix64(seed ^ 0x6d62_7368_6173_6821).next_u64()],
            sizes: vec![self.cfg.max_keys],
            geoms: Vec::new(),
        }
        .with_geometries(&geometries);
        first.encode(&mut self.scratch.enc);
        shared::create_if_absent(&self.host, &meta_name, &self.scratch.enc);
        let max_keys = self.cfg.max_keys;
        let meta = cas_update(
            &self.host,
            &meta_name,
            &mut self.scratch.enc,
            Meta::decode,
            Meta::encode,
            |m| {
                if m.sizes.last() != Some(&max_keys) {
                    *m = m.with_size(max_keys);
                }
                *m = m.with_geometries(&geometries).0;
                Update::Write(m.clone())
            },
            |_, last| last.unwrap_or_else(|| first.clone()),
        );
        // Where each geometry's windows are (on a failed update, where they would have gone).
        let (_, tables) = meta.with_geometries(&geometries);
        for p in &mut self.profiles {
            let i = geometries.iter().position(|g| *g == p.geometry);
            p.table = i.and_then(|i| tables.get(i).copied()).unwrap_or(0);
        }
        self.slots.meta = meta;
        shared::create_if_absent(&self.host, &self.names.label_count(), b"0");
        if self.cfg.reset_signals.is_some() {
            crate::resets::Poller::prepare_lease(&self.host, &self.names);
        }
        let empty_state = SlotState::default().encode();
        let mut empty_windows = Vec::new();
        for (g, t) in geometries.iter().zip(&tables) {
            empty_windows.push((*t, g.empty_window(0).encode()));
        }
        // Each table (states, and windows per geometry) is walked only until one VM has created
        // all of it: a marker written afterwards lets every later VM (the other workers, reloads
        // that keep the size and geometry) skip the `max_keys` lookups.
        let mut name = String::new();
        let marker = self.names.made(None, self.cfg.max_keys);
        if self.host.get_shared(&marker).0.is_none() {
            let mut all = true;
            for slot in 0..self.cfg.max_keys {
                self.names.state(slot, &mut name);
                all &= shared::ensure_exists(&self.host, &name, &empty_state);
            }
            if all {
                shared::create_if_absent(&self.host, &marker, b"1");
            }
        }
        for (t, bytes) in &empty_windows {
            let marker = self.names.made(Some(*t), self.cfg.max_keys);
            if self.host.get_shared(&marker).0.is_some() {
                continue;
            }
            let mut all = true;
            for slot in 0..self.cfg.max_keys {
                self.names.window(*t, slot, &mut name);
                all &= shared::ensure_exists(&self.host, &name, bytes);
            }
            if all {
                shared::create_if_absent(&self.host, &marker, b"1");
            }
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn names(&self) -> &Names {
        &self.names
    }

    /// This worker's shared queue, where other workers say they tripped a key
    /// ([`crate::peers`]); `None` if the host refused it.
    pub fn queue_token(&self) -> Option<u32> {
        self.peers.token()
    }

    /// The profile index for a key with these (raw) parts: the first override that matches, 1-based,
    /// or 0. Only dimensions the key carries are compared (configuration refuses overrides on others).
    fn profile_for(&self, parts: &KeyParts<'_>) -> usize {
        if self.cfg.overrides.is_empty() {
            return 0;
        }
        let mut buf = String::new();
        for (i, o) in self.cfg.overrides.iter().enumerate() {
            let (raw, want) = match &o.matcher {
                OverrideMatch::Cluster(c) => (parts.cluster, c),
                OverrideMatch::Route(r) => (parts.route, r),
                OverrideMatch::Authority(a) => (parts.authority, a),
            };
            keys::sanitize_key_into(raw, &mut buf);
            if &buf == want {
                return i + 1;
            }
        }
        0
    }

    pub(crate) fn profile(&self, i: usize) -> &Profile {
        self.profiles.get(i).unwrap_or(&self.profiles[0])
    }

    /// The key's local entry, created (slot, label, recorder) on first sight. The local entry is
    /// made first, so a full registry spends neither a label nor a slot on a key it cannot track.
    fn ensure_key(&mut self, key: &str, parts: &KeyParts<'_>, now_ms: u64) -> bool {
        if self.keys.touch(key, now_ms) {
            return true;
        }
        let profile = self.profile_for(parts);
        let Some(flow) = Local::new(&self.profile(profile).breaker, now_ms) else {
            return false;
        };
        if self.keys.len() >= self.keys.capacity() {
            // Full: flush the least recently used key so that it becomes idle and can make room
            // without losing its samples.
            if let Some(lru) = self.keys.lru_key().map(str::to_string) {
                self.flush_key(&lru, now_ms);
            }
        }
        let other = self.metrics.other(&self.host);
        let local = KeyLocal {
            slot: None,
            slot_tried_ms: None,
            profile,
            flow,
            label: other,
            last_activity_ms: now_ms,
            activity_written: None,
            budget_ok: true,
            in_flight: 0,
            state: State::Closed,
            closed_epoch: 0,
            new_hosts: Vec::new(),
        };
        let idle = |l: &KeyLocal| {
            l.in_flight == 0 && l.flow.recorder.is_empty() && l.state == State::Closed
        };
        if self.keys.insert(key, local, now_ms, idle).is_err() {
            return false;
        }
        // The slot is sought by the caller, right after (`decide`, as for a key that lost one).
        let label = self.metrics.label_for(&self.host, &self.names, key);
        if let Some(l) = self.keys.peek_mut(key) {
            l.label = label;
        }
        true
    }

    /// Decides a request: the key, the decision, the retry plan. Writes nothing to the request.
    pub fn on_request(
        &mut self,
        parts: &KeyParts<'_>,
        req: &RequestView<'_>,
        now_ms: u64,
    ) -> Admission {
        let mut key = std::mem::take(&mut self.key_buf);
        keys::key_for(
            self.cfg.key_by,
            parts.cluster,
            parts.route,
            parts.authority,
            &mut key,
        );
        let a = self.decide(&key, parts, req, now_ms);
        self.key_buf = key;
        a
    }

    fn decide(
        &mut self,
        key: &str,
        parts: &KeyParts<'_>,
        req: &RequestView<'_>,
        now_ms: u64,
    ) -> Admission {
        let untracked = |e: &Self, decision: Decision, profile: usize| {
            let retry = e.retry_plan(profile, &decision, req, true);
            Admission {
                local: None,
                decision,
                record: false,
                max_attempts: retry.1,
                profile,
                retry: retry.0,
            }
        };
        if self.cfg.mode == Mode::Disabled && self.cfg.overrides.is_empty() {
            return untracked(self, Decision::PassThrough, 0);
        }
        // One lookup of the key's name per request: the rest goes by its registry index.
        let tracked = self.keys.slot(key);
        if tracked.is_none() {
            // A key whose mode never reads its state (`disabled`, `forced_open`) is decided here
            // and never tracked: it spends no registry entry and no slot, which the keys that are
            // guarded need, and a `disabled` key no label either (its requests count under
            // `_other`); a `forced_open` key keeps its label, so its rejections show under it.
            let profile = self.profile_for(parts);
            let p = self.profile(profile);
            let decision = match p.mode {
                Mode::Disabled => Some(Decision::PassThrough),
                Mode::ForcedOpen => Some(Decision::Reject(Rejection {
                    reason: TripReason::ForcedOpen,
                    retry_after_s: ms(p.breaker.sleep_window).div_ceil(1000).max(1),
                })),
                Mode::Enforce | Mode::DryRun => None,
            };
            if let Some(d) = decision {
                let (label, counter) = if matches!(d, Decision::Reject(_)) {
                    let label = self.metrics.label_for(&self.host, &self.names, key);
                    (label, Counter::Rejected)
                } else {
                    (self.metrics.other(&self.host), Counter::Allowed)
                };
                self.metrics.inc(label, counter, 1);
                return untracked(self, d, profile);
            }
        }
        let known = tracked.is_some_and(|i| self.keys.touch_at(i, now_ms).is_some());
        if !known && !self.ensure_key(key, parts, now_ms) {
            // Every local entry is busy: the request is not tracked here (no samples, no probe),
            // but the key's shared state still guards it, counted under `_other`.
            let profile = self.profile_for(parts);
            let decision = self.decide_untracked(key, profile, now_ms);
            let other = self.metrics.other(&self.host);
            let counter = match decision {
                Decision::Reject(_) => Counter::Rejected,
                Decision::DryRunReject(_) => Counter::DryRunReject,
                _ => Counter::Allowed,
            };
            self.metrics.inc(other, counter, 1);
            return untracked(self, decision, profile);
        }
        let Some(ki) = tracked.filter(|_| known).or_else(|| self.keys.slot(key)) else {
            return untracked(self, Decision::Allow, 0);
        };
        let Some((_, local)) = self.keys.at_mut(ki) else {
            return untracked(self, Decision::Allow, 0);
        };
        let (profile, mut slot, label, budget_ok) =
            (local.profile, local.slot, local.label, local.budget_ok);
        // This worker read the key CLOSED in its slot in the current epoch, and another worker's
        // trip would have moved the epoch on: allowed without reading shared data.
        let cached_closed = slot.is_some()
            && local.state == State::Closed
            && local.closed_epoch == self.cache_epoch
            && self.peers.listening();
        if slot.is_none()
            && local
                .slot_tried_ms
                .is_none_or(|t| since(now_ms, t) >= SLOT_RETRY_MS)
        {
            // A key new here looks for its slot; one that lost (or never got) it asks again, at
            // most once a second (it used to pass unguarded until evicted locally).
            let mut at = Shared {
                host: &self.host,
                names: &self.names,
                scratch: &mut self.scratch,
                max_keys: self.cfg.max_keys,
            };
            let searched = self.slots.search(&mut at, key, now_ms);
            if searched == SlotSearch::NoneFree && !self.slots.warned_no_slot {
                self.slots.warned_no_slot = true;
                log::warn!(
                    "meshbreaker: no free slot for key {key} (max_keys={}): its requests pass unguarded until one frees",
                    self.cfg.max_keys
                );
            }
            slot = match searched {
                SlotSearch::Found(s) => Some(s),
                _ => None,
            };
            if let Some((_, l)) = self.keys.at_mut(ki) {
                l.slot = slot;
                l.slot_tried_ms = (searched != SlotSearch::BudgetSpent).then_some(now_ms);
            }
        }
        let mode = self.profile(profile).mode;
        let decision = match (slot, mode) {
            (_, Mode::Disabled) => Decision::PassThrough,
            (_, Mode::ForcedOpen) => Decision::Reject(Rejection {
                reason: TripReason::ForcedOpen,
                retry_after_s: ms(self.profile(profile).breaker.sleep_window)
                    .div_ceil(1000)
                    .max(1),
            }),
            (Some(_), _) if cached_closed => Decision::Allow,
            (Some(s), _) => self.decide_shared(key, s, profile, label, now_ms),
            (None, _) => Decision::Allow,
        };
        let (counter, record) = match decision {
            Decision::Allow | Decision::PassThrough => (Counter::Allowed, mode != Mode::Disabled),
            Decision::Probe(_) => (Counter::Probe, true),
            Decision::Reject(_) => (Counter::Rejected, false),
            Decision::DryRunReject(_) => (Counter::DryRunReject, true),
        };
        self.metrics.inc(label, counter, 1);
        let (retry, max_attempts, budget_denied) =
            self.retry_plan(profile, &decision, req, budget_ok);
        if budget_denied {
            self.metrics.inc(label, Counter::BudgetDenied, 1);
        }
        let mut local = None;
        if record {
            if let Some((_, l)) = self.keys.at_mut(ki) {
                l.in_flight = l.in_flight.saturating_add(1);
                l.last_activity_ms = now_ms;
                local = Some(ki);
            }
        }
        Admission {
            local,
            decision,
            record,
            max_attempts,
            profile,
            retry,
        }
    }

    /// The decision for a key this worker cannot track (its registry is full of keys with requests
    /// in flight): the slot the key already holds is looked up (reads, no claim) and its state read
    /// without writing it. CLOSED (or no slot) allows; OPEN and HALF_OPEN reject as they would for
    /// a tracked key, except that a request that would have been a probe is rejected with
    /// `retry-after: 1` (an untracked request cannot report a probe's outcome; workers that track
    /// the key probe for it).
    fn decide_untracked(&mut self, key: &str, profile: usize, now_ms: u64) -> Decision {
        let p = self.profile(profile);
        let (mode, cfg) = (p.mode, p.breaker.clone());
        match mode {
            Mode::Disabled => return Decision::PassThrough,
            Mode::ForcedOpen => {
                return Decision::Reject(Rejection {
                    reason: TripReason::ForcedOpen,
                    retry_after_s: ms(cfg.sleep_window).div_ceil(1000).max(1),
                })
            }
            Mode::Enforce | Mode::DryRun => {}
        }
        let mut at = Shared {
            host: &self.host,
            names: &self.names,
            scratch: &mut self.scratch,
            max_keys: self.cfg.max_keys,
        };
        let Some(slot) = self.slots.lookup(&mut at, key, now_ms) else {
            return Decision::Allow;
        };
        let mut name = std::mem::take(&mut self.scratch.name);
        self.names.state(slot, &mut name);
        let st = self
            .host
            .get_shared(&name)
            .0
            .and_then(|b| SlotState::decode(&b).ok());
        self.scratch.name = name;
        let Some(mut st) = st.filter(|st| st.key == key) else {
            return Decision::Allow;
        };
        let step = st.breaker.decide(mode, &cfg, now_ms, &mut self.rng);
        match step.decision {
            Decision::Probe(_) => {
                let r = Rejection {
                    reason: st.breaker.reason.unwrap_or(TripReason::ErrorRate),
                    retry_after_s: 1,
                };
                if mode == Mode::DryRun {
                    Decision::DryRunReject(r)
                } else {
                    Decision::Reject(r)
                }
            }
            d => d,
        }
    }

    /// The retry plan of a request, the most attempts it allows, and whether the budget denied
    /// (or, in `dry_run`, would have denied) its retries.
    fn retry_plan(
        &self,
        profile: usize,
        decision: &Decision,
        req: &RequestView<'_>,
        budget_ok: bool,
    ) -> (RetryPlan, u32, bool) {
        let p = self.profile(profile);
        p.retry.plan(p.mode, decision, req, budget_ok)
    }

    /// Whether any configuration of this filter strips client retry headers.
    pub fn strips_any(&self) -> bool {
        self.profiles
            .iter()
            .any(|p| !p.retry.headers_to_strip().is_empty())
    }

    /// Writes the router's retry headers for `a` and strips the client's (per the key's
    /// configuration): headers the plan writes are replaced (which removes every client value),
    /// the others are removed only when stripping is on and the client sent them (`present`:
    /// bit `i` for `ROUTER_RETRY_HEADERS[i]`; all ones when unknown).
    pub fn apply_retry_headers(&self, a: &Admission, present: u8) {
        use crate::host::Map;
        if matches!(a.decision, Decision::Reject(_)) {
            return;
        }
        self.profile(a.profile).retry.edit_headers(
            a.retry,
            present,
            |h| self.host.remove_header(Map::RequestHeaders, h),
            |n, v| {
                self.host
                    .replace_header(Map::RequestHeaders, n, v.as_bytes())
            },
        );
    }

    /// Reads the key's breaker state (one shared read), decides, and writes back with CAS only if
    /// the decision changed the state (OPEN→HALF_OPEN, probe admission).
    fn decide_shared(
        &mut self,
        key: &str,
        slot: u32,
        profile: usize,
        label: LabelId,
        now_ms: u64,
    ) -> Decision {
        let mut name = std::mem::take(&mut self.scratch.name);
        self.names.state(slot, &mut name);
        let p = self.profiles.get(profile).unwrap_or(&self.profiles[0]);
        let mut store = Entries {
            host: &self.host,
            state: &name,
            window: &name,
        };
        let seen = flow::admit(
            &mut store,
            key,
            p.mode,
            &p.breaker,
            now_ms,
            &mut self.rng,
            &mut self.scratch.enc,
        );
        self.scratch.name = name;
        match seen {
            Admitted::Lost => {
                // The slot was taken over (only possible while this key was CLOSED and idle):
                // look for a slot again, now or within a second.
                let mut at = Shared {
                    host: &self.host,
                    names: &self.names,
                    scratch: &mut self.scratch,
                    max_keys: self.cfg.max_keys,
                };
                let again = self.slots.find(&mut at, key, now_ms);
                if let Some(l) = self.keys.peek_mut(key) {
                    l.slot = again;
                    l.slot_tried_ms = Some(now_ms);
                }
                match again {
                    Some(s) if s != slot => self.decide_shared(key, s, profile, label, now_ms),
                    _ => Decision::Allow,
                }
            }
            Admitted::Decided {
                decision: d,
                transition,
                state,
            } => {
                let epoch = self.cache_epoch;
                if let Some(l) = self.keys.peek_mut(key) {
                    l.state = state;
                    if state == State::Closed {
                        l.closed_epoch = epoch;
                    }
                }
                if let Some(t) = transition {
                    self.on_transition(key, &t, label, Some(t.arrival_figures()));
                    self.metrics
                        .gauge(&self.host, label, Gauge::State, state.gauge() as u64);
                }
                d
            }
            Admitted::Failed(d) => d,
        }
    }

    pub(crate) fn on_transition(
        &mut self,
        key: &str,
        t: &Transition,
        label: LabelId,
        figures: Option<&str>,
    ) {
        if !t.is_change() {
            return;
        }
        if t.from == State::Closed {
            // Other workers may trust their CLOSED cache of this key: tell them it left CLOSED.
            let now_ms = self.host.now_ns() / 1_000_000;
            self.peers.notify(&self.host, &self.names, now_ms);
        }
        let counter = match t.to {
            State::Open => Counter::ToOpen,
            State::HalfOpen => Counter::ToHalfOpen,
            State::Closed => Counter::ToClosed,
        };
        self.metrics.inc(label, counter, 1);
        log::info!("{}", TransitionLine::of(key, t, figures.unwrap_or("")));
    }

    /// The key of the request [`Engine::on_request`] decided last (for the local reply).
    pub fn last_key(&self) -> &str {
        &self.key_buf
    }

    /// Records a completed request of `key` (see [`Engine::on_complete_at`]).
    pub fn on_complete(
        &mut self,
        key: &str,
        outcome: &Outcome,
        probe: Option<u32>,
        upstream_host: Option<&str>,
        now_ms: u64,
    ) {
        if let Some(i) = self.keys.slot(key) {
            self.on_complete_at(i, outcome, probe, upstream_host, now_ms);
        }
    }

    /// Records a completed request whose key is at `local` ([`Admission::local`]). `probe` is the
    /// probe id when the request was a HALF_OPEN probe; `upstream_host` is Envoy's
    /// `upstream.address` (used only with `reset_signals`). The key's name is copied only when a
    /// probe completes or a flush is due, not per request.
    pub fn on_complete_at(
        &mut self,
        at: usize,
        outcome: &Outcome,
        probe: Option<u32>,
        upstream_host: Option<&str>,
        now_ms: u64,
    ) {
        let learn = self.cfg.reset_signals.is_some();
        let Some((_, local)) = self.keys.at_mut(at) else {
            return;
        };
        local.in_flight = local.in_flight.saturating_sub(1);
        local.last_activity_ms = now_ms;
        let (profile, slot) = (local.profile, local.slot);
        if let (true, Some(h)) = (learn, upstream_host.and_then(normalize_upstream)) {
            if !local.new_hosts.contains(&h) && local.new_hosts.len() < HOSTS_PER_FLUSH {
                local.new_hosts.push(h);
            }
        }
        let p = self.profile(profile);
        let (failure, geometry) = (outcome.failure(&p.breaker.failure), p.geometry);
        if let (Some(id), Some(slot)) = (probe, slot) {
            let success = flow::probe_succeeded(outcome, failure, &p.breaker);
            if let Some(key) = self.keys.at_mut(at).map(|(k, _)| k.to_string()) {
                self.complete_probe(&key, slot, id, ProbeEnd::Done(success), profile, now_ms);
            }
        }
        let Some((_, l)) = self.keys.at_mut(at) else {
            return;
        };
        let recorded = l.flow.record(outcome, failure, &geometry, now_ms);
        if recorded.due {
            let Some(key) = self.keys.at_mut(at).map(|(k, _)| k.to_string()) else {
                return;
            };
            self.flush_key(&key, now_ms);
            if let Some((_, l)) = self.keys.at_mut(at) {
                l.flow
                    .record_after_flush(outcome, failure, &geometry, now_ms, recorded);
            }
        }
    }

    fn complete_probe(
        &mut self,
        key: &str,
        slot: u32,
        id: u32,
        end: ProbeEnd,
        profile: usize,
        now_ms: u64,
    ) {
        let label = self
            .keys
            .get(key)
            .map(|l| l.label)
            .unwrap_or_else(|| self.metrics.other(&self.host));
        let mut name = std::mem::take(&mut self.scratch.name);
        self.names.state(slot, &mut name);
        let bcfg = &self
            .profiles
            .get(profile)
            .unwrap_or(&self.profiles[0])
            .breaker;
        let mut store = Entries {
            host: &self.host,
            state: &name,
            window: &name,
        };
        let (rng, enc) = (&mut self.rng, &mut self.scratch.enc);
        let t = match end {
            ProbeEnd::Done(success) => {
                flow::complete_probe(&mut store, key, id, success, bcfg, now_ms, rng, enc)
            }
            ProbeEnd::Abandoned { ran_us } => {
                flow::abandon_probe(&mut store, key, id, ran_us, bcfg, now_ms, rng, enc)
            }
        };
        self.scratch.name = name;
        if let Some((t, state)) = t {
            let figures = match end {
                ProbeEnd::Done(true) => "probe_success=true",
                ProbeEnd::Done(false) => "probe_success=false",
                ProbeEnd::Abandoned { .. } => "probe_abandoned=true",
            };
            self.on_transition(key, &t, label, Some(figures));
            self.metrics
                .gauge(&self.host, label, Gauge::State, state.gauge() as u64);
            if let Some(l) = self.keys.peek_mut(key) {
                l.state = state;
            }
        }
    }

    /// A request that ended without a response and without an upstream failure (the client went
    /// away): no sample, but it is no longer in flight. A probe among them frees its quota slot
    /// at once, and fails if it had already waited `ran_us` ≥ the latency threshold upstream.
    pub fn on_abandoned(&mut self, at: usize, probe: Option<u32>, ran_us: u64, now_ms: u64) {
        let Some((key, l)) = self.keys.at_mut(at) else {
            return;
        };
        l.in_flight = l.in_flight.saturating_sub(1);
        if let (Some(id), Some(slot)) = (probe, l.slot) {
            let (key, profile) = (key.to_string(), l.profile);
            let end = ProbeEnd::Abandoned { ran_us };
            self.complete_probe(&key, slot, id, end, profile, now_ms);
        }
    }
}

/// How a HALF_OPEN probe ended.
#[derive(Debug, Clone, Copy)]
enum ProbeEnd {
    /// Its outcome came: success or not.
    Done(bool),
    /// Its client went away before any response, after `ran_us` upstream.
    Abandoned { ran_us: u64 },
}
