//! Flushing: merging a worker's recorder into the shared window, kernel reset attribution, gauges,
//! the retry budget, and the generation-checked trip.
//!
//! A flush reads the key's state (for its generation), then merges into the window of this
//! configuration's geometry with compare-and-swap. The window is started afresh when it is of an
//! older generation (the circuit closed, or the slot has a new tenant) or of another geometry; a
//! window *newer* than the state just read means the state read was stale, so it is read again
//! rather than wiping a freshly closed window. The trip is then written only if the state is still
//! CLOSED and of the same generation as the window it was computed from, so a circuit that closed
//! meanwhile is never re-opened by the samples that opened it.

use policy_core::breaker::State;
use policy_core::encoding::SlotState;
use policy_core::flow::{self, takeover_allowed, FlushInput, Flushed};
use policy_core::retry::budget_allows_retry;

use crate::engine::Engine;
use crate::host::Host;
use crate::metrics::{Counter, Gauge};
use crate::shared::{cas_update, Entries, Meta, Update};

/// The table description (seed, sizes) is re-read this often, so that VMs which raced to create
/// it at startup converge on one seed.
const META_REFRESH_MS: u64 = 1_000;

impl<H: Host> Engine<H> {
    /// Flushes every key with samples older than [`FLUSH_MS`], refreshes activity marks, and
    /// hands the batched counters to Envoy (called from the root's tick).
    pub fn on_tick(&mut self, now_ms: u64) {
        // Every key's CLOSED state is read again at least once per tick: by its flush below, or
        // by its next request.
        self.cache_epoch = self.cache_epoch.wrapping_add(1);
        self.peers.on_tick(&self.host, &self.names, now_ms);
        self.slots.searches_left = crate::slots::SLOT_SEARCHES_PER_TICK;
        if crate::engine::since(now_ms, self.slots.meta_checked_ms) >= META_REFRESH_MS {
            self.release_idle_keys(now_ms);
        }
        self.refresh_meta(now_ms);
        let resets_changed = self.refresh_resets();
        let mut due = Vec::new();
        for (k, l) in self.keys.iter() {
            let stale = l.flow.stale(now_ms);
            let has_news = !l.flow.recorder.is_empty() || !l.new_hosts.is_empty();
            let refresh = l.slot.is_some() && l.activity_to_write(now_ms).is_some();
            if (stale && has_news) || (resets_changed && l.slot.is_some()) || refresh {
                due.push(k.to_string());
            }
        }
        for k in due {
            self.flush_key(&k, now_ms);
        }
        self.metrics.flush(&self.host);
    }

    /// Once a second: the keys this worker last saw OPEN or HALF_OPEN and that have no request in
    /// flight here are read again. One that stopped getting traffic after its open period ended
    /// (or whose probes are gone) releases its slot ([`takeover_allowed`]): the slot is emptied by
    /// compare-and-swap, the key's state gauge goes back to closed, and the key starts afresh from
    /// CLOSED if it is seen again. Without this such a key held its slot, and showed
    /// `meshbreaker_state` 1, until Envoy restarted. A key another worker closed or took over is
    /// seen as such.
    fn release_idle_keys(&mut self, now_ms: u64) {
        let idle_ms = self.slots.takeover_idle_ms;
        let mut check = Vec::new();
        for (k, l) in self.keys.iter() {
            if l.state != State::Closed && l.in_flight == 0 {
                if let Some(slot) = l.slot {
                    check.push((k.to_string(), slot, l.label));
                }
            }
        }
        for (key, slot, label) in check {
            let mut name = std::mem::take(&mut self.scratch.name);
            self.names.state(slot, &mut name);
            let seen = cas_update(
                &self.host,
                &name,
                &mut self.scratch.enc,
                |b| SlotState::decode(b).ok(),
                SlotState::encode_into,
                |st| {
                    if st.key != key {
                        return Update::Keep(Some(None));
                    }
                    if takeover_allowed(st, now_ms, idle_ms) {
                        let generation = st.breaker.generation.wrapping_add(1);
                        *st = SlotState::default();
                        st.breaker.generation = generation;
                        return Update::Write(Some(None));
                    }
                    Update::Keep(Some(Some(st.breaker.state)))
                },
                // Contention or a refusal: look again at the next check.
                |_, _| None,
            );
            self.scratch.name = name;
            let Some(seen) = seen else { continue };
            let state = seen.unwrap_or(State::Closed);
            if let Some(l) = self.keys.peek_mut(&key) {
                l.state = state;
                if seen.is_none() {
                    l.slot = None;
                    l.slot_tried_ms = None;
                }
            }
            self.metrics
                .gauge(&self.host, label, Gauge::State, state.gauge() as u64);
        }
    }

    /// Reads the published kernel reset totals ([`crate::resets::ResetView::refresh`]), only with
    /// `reset_signals`.
    fn refresh_resets(&mut self) -> bool {
        self.cfg.reset_signals.is_some() && self.resets.refresh(&self.host, &self.names)
    }

    /// Another worker said it tripped a key ([`crate::peers`]): empties this worker's queue and
    /// moves the cache epoch on, so every key's next request reads its state again.
    pub fn on_queue_ready(&mut self, token: u32) {
        if self.peers.token() == Some(token) {
            self.peers.drain(&self.host);
        }
        self.cache_epoch = self.cache_epoch.wrapping_add(1);
    }

    /// Flushes every key that holds samples or hosts, whatever their age (the plugin is going
    /// away), and the batched counters.
    pub fn flush_all(&mut self, now_ms: u64) {
        let due: Vec<String> = self
            .keys
            .iter()
            .filter(|(_, l)| !l.flow.recorder.is_empty() || !l.new_hosts.is_empty())
            .map(|(k, _)| k.to_string())
            .collect();
        for k in due {
            self.flush_key(&k, now_ms);
        }
        self.metrics.flush(&self.host);
    }

    /// Re-reads `…/meta`. If another VM's startup write replaced the seed this VM claimed slots
    /// under, that seed is added back (a real CAS now that the entry exists), so every worker
    /// can find those slots; a changed seed list makes every key look its slot up again, and
    /// lookups prefer a key's OPEN or HALF_OPEN slot, so all workers settle on the same one.
    fn refresh_meta(&mut self, now_ms: u64) {
        if crate::engine::since(now_ms, self.slots.meta_checked_ms) < META_REFRESH_MS {
            return;
        }
        self.slots.meta_checked_ms = now_ms;
        let mine = self.slots.meta.seed();
        let name = self.names.meta();
        let m = cas_update(
            &self.host,
            &name,
            &mut self.scratch.enc,
            Meta::decode,
            Meta::encode,
            |m| {
                if m.seeds.contains(&mine) {
                    Update::Keep(m.clone())
                } else {
                    *m = m.with_seed(mine);
                    Update::Write(m.clone())
                }
            },
            |_, last| last.unwrap_or_else(|| self.slots.meta.clone()),
        );
        if m.seeds != self.slots.meta.seeds {
            self.keys.for_each_mut(|_, l| {
                l.slot = None;
                l.slot_tried_ms = None;
            });
        }
        self.slots.meta = m;
    }

    /// Merges the key's samples into the shared window, attributes kernel resets, updates
    /// gauges and the retry budget, refreshes the key's activity mark, and trips the breaker when
    /// the merged window says so ([`flow::flush`]).
    pub fn flush_key(&mut self, key: &str, now_ms: u64) {
        let Some(local) = self.keys.peek_mut(key) else {
            return;
        };
        local.flow.last_flush_ms = now_ms;
        let (profile, label) = (local.profile, local.label);
        let activity = local.activity_to_write(now_ms);
        let Some(slot) = local.slot else {
            local.flow.recorder.clear();
            local.new_hosts.clear();
            return;
        };
        // The totals as of this VM's last tick (decoded once per published change, not per flush);
        // read now if no tick has read them yet, so a host is never learned with a zero baseline
        // while totals exist (that would attribute the sidecar's history to this key).
        if self.resets.totals.is_none() {
            self.refresh_resets();
        }
        let resets = self.resets.totals.clone();
        let p = self.profiles.get(profile).unwrap_or(&self.profiles[0]);
        let g = p.geometry;
        let mut state_name = std::mem::take(&mut self.scratch.name);
        self.names.state(slot, &mut state_name);
        let mut window_name = String::new();
        self.names.window(p.table, slot, &mut window_name);
        let Some(local) = self.keys.peek_mut(key) else {
            return;
        };
        let input = FlushInput {
            key,
            cfg: &p.breaker,
            geometry: g,
            new_hosts: &local.new_hosts,
            resets: resets.as_deref(),
            max_resets_per_second: self
                .cfg
                .reset_signals
                .as_ref()
                .map(|rs| rs.max_resets_per_second),
            activity,
            now_ms,
        };
        let mut store = Entries {
            host: &self.host,
            state: &state_name,
            window: &window_name,
        };
        let flushed = flow::flush(
            &mut store,
            &mut local.flow,
            &input,
            &mut self.rng,
            &mut self.scratch.enc,
            &mut self.scratch.bins,
        );
        self.scratch.name = state_name;
        let m = match flushed {
            Flushed::Merged(m) => m,
            Flushed::Kept => return,
            Flushed::Lost => {
                local.new_hosts.clear();
                local.slot = None;
                local.slot_tried_ms = None;
                return;
            }
        };
        let totals = &m.totals;
        local.new_hosts.clear();
        local.budget_ok =
            budget_allows_retry(&p.budget, p.breaker.window, totals.requests, totals.retries);
        local.state = m.state_read;
        if let Some((_, state)) = m.written {
            if activity.is_some() {
                local.activity_written = activity;
            }
            local.state = state;
        }
        if local.state == State::Closed {
            local.closed_epoch = self.cache_epoch;
        }
        self.metrics
            .inc(label, Counter::KernelResets, m.attributed as i64);
        let error_rate_ppm = (totals.error_rate() * 1e6).round() as u64;
        // To the nearest millisecond: the histogram's bin is within 1% of the sample, so the
        // gauge is within 2% from 50 ms up (rounding up made a 30 ms P95 read 31).
        let p95_ms = m
            .p95_us
            .map(|us| us.saturating_add(500) / 1000)
            .unwrap_or(0);
        self.metrics
            .gauge(&self.host, label, Gauge::ErrorRatePpm, error_rate_ppm);
        self.metrics
            .gauge(&self.host, label, Gauge::LatencyP95Ms, p95_ms);
        self.metrics
            .gauge(&self.host, label, Gauge::State, m.state_read.gauge() as u64);
        if let Some((Some(t), state)) = m.written {
            let figures = format!(
                "samples={} failures={} error_rate_ppm={} p95_ms={p95_ms} kernel_resets={}",
                totals.samples,
                totals.failed(),
                error_rate_ppm,
                totals.kernel_resets
            );
            self.on_transition(key, &t, label, Some(&figures));
            self.metrics
                .gauge(&self.host, label, Gauge::State, state.gauge() as u64);
        }
    }
}
