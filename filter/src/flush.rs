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

use policy_core::breaker::{Jitter, State};
use policy_core::encoding::{ResetTotals, SlotState};
use policy_core::retry::budget_allows_retry;
use policy_core::window::{kernel_resets_exceed, trip_reason, Counts, Recorder, TripReason};

use crate::engine::{Engine, ACTIVE_WRITE_MS, FLUSH_MS};
use crate::host::{Host, SetError};
use crate::metrics::Gauge;
use crate::shared::{cas_update, newer, Meta, Update, CAS_ATTEMPTS};

/// The table description (seed, sizes) is re-read this often, so that VMs which raced to create
/// it at startup converge on one seed.
const META_REFRESH_MS: u64 = 1_000;

impl<H: Host> Engine<H> {
    /// Flushes every key with samples older than [`FLUSH_MS`], refreshes activity marks, and
    /// hands the batched counters to Envoy (called from the root's tick).
    pub fn on_tick(&mut self, now_ms: u64) {
        self.refresh_meta(now_ms);
        let mut resets_changed = false;
        if self.cfg.reset_signals.is_some() {
            let seq = self
                .host
                .get_shared(&self.names.resets())
                .0
                .and_then(|b| ResetTotals::decode(&b).ok())
                .map(|t| t.sequence);
            if seq.is_some() && seq != self.resets_seen {
                self.resets_seen = seq;
                resets_changed = true;
            }
        }
        let mut due = Vec::new();
        for (k, l) in self.keys.iter() {
            let stale = crate::engine::since(now_ms, l.last_flush_ms) >= FLUSH_MS;
            let has_news = !l.recorder.is_empty() || !l.new_hosts.is_empty();
            let refresh = l.slot.is_some()
                && (l.active || l.in_flight > 0)
                && crate::engine::since(now_ms, l.active_written_ms) >= ACTIVE_WRITE_MS;
            if (stale && has_news) || (resets_changed && l.slot.is_some()) || refresh {
                due.push(k.to_string());
            }
        }
        for k in due {
            self.flush_key(&k, now_ms);
        }
        self.metrics.flush(&self.host);
    }

    /// Re-reads `…/meta`; a different seed (another VM won the startup race) moves every key to
    /// the slots that seed gives.
    fn refresh_meta(&mut self, now_ms: u64) {
        if crate::engine::since(now_ms, self.meta_checked_ms) < META_REFRESH_MS {
            return;
        }
        self.meta_checked_ms = now_ms;
        let Some(m) = self
            .host
            .get_shared(&self.names.meta())
            .0
            .and_then(|b| Meta::decode(&b))
        else {
            return;
        };
        if m.seed != self.meta.seed {
            self.keys.for_each_mut(|_, l| {
                l.slot = None;
                l.slot_tried_ms = None;
            });
        }
        self.meta = m;
    }

    /// Merges the key's recorder into the shared window (CAS), attributes kernel resets, updates
    /// gauges and the retry budget, refreshes the key's activity mark, and trips the breaker when
    /// the merged window says so.
    pub fn flush_key(&mut self, key: &str, now_ms: u64) {
        let Some(local) = self.keys.peek_mut(key) else {
            return;
        };
        local.last_flush_ms = now_ms;
        let (profile, label) = (local.profile, local.label);
        let refresh_active = (local.active || local.in_flight > 0)
            && crate::engine::since(now_ms, local.active_written_ms) >= ACTIVE_WRITE_MS;
        let Some(slot) = local.slot else {
            local.recorder.clear();
            local.new_hosts.clear();
            return;
        };
        let pi = profile.min(self.profiles.len() - 1);
        let g = self.profiles[pi].geometry;
        let now_epoch = now_ms / g.bucket_ms.max(1);
        let resets = match &self.cfg.reset_signals {
            Some(_) => self
                .host
                .get_shared(&self.names.resets())
                .0
                .and_then(|b| ResetTotals::decode(&b).ok()),
            None => None,
        };
        let mut state_name = String::new();
        self.names.state(slot, &mut state_name);
        let mut window_name = String::new();
        self.names.window(&g, slot, &mut window_name);

        let mut merged = None;
        for _ in 0..CAS_ATTEMPTS {
            let (sb, _) = self.host.get_shared(&state_name);
            let Some(st) = sb.and_then(|b| SlotState::decode(&b).ok()) else {
                return;
            };
            if st.key != key {
                // Taken over (this key was CLOSED and idle): its samples belong to no slot now.
                if let Some(l) = self.keys.peek_mut(key) {
                    l.recorder.clear();
                    l.new_hosts.clear();
                    l.slot = None;
                    l.slot_tried_ms = None;
                }
                return;
            }
            let (wb, cas) = self.host.get_shared(&window_name);
            let (Some(wb), Some(cas)) = (wb, cas) else {
                return;
            };
            let mut w = std::mem::take(&mut self.window);
            if w.decode_into(&wb).is_err() {
                // Not ours to overwrite (see `shared`); the samples wait for the next flush.
                self.window = w;
                return;
            }
            let gen = st.breaker.generation;
            if newer(w.generation, gen) {
                // Our state read is older than the window: read the state again.
                self.window = w;
                continue;
            }
            if newer(gen, w.generation)
                || w.bucket_ms != g.bucket_ms
                || w.threshold_us != g.threshold_us
                || w.buckets.len() != g.buckets as usize
            {
                w.reset(g.buckets, gen);
                w.bucket_ms = g.bucket_ms;
                w.threshold_us = g.threshold_us;
            }
            w.clear_future(now_epoch);
            let mut bins = std::mem::take(&mut self.bins);
            let mut attributed = 0u64;
            if let Some(l) = self.keys.get(key) {
                w.merge_recorder(&l.recorder, now_epoch, &mut bins);
                for h in &l.new_hosts {
                    let total = resets.as_ref().map(|r| r.total_for(h)).unwrap_or(0);
                    w.learn_host(h, total);
                }
                if !l.recorder.is_empty() {
                    w.last_used_ms = now_ms;
                }
            }
            if let Some(r) = &resets {
                for h in w.hosts.iter_mut() {
                    let total = r.total_for(&h.host);
                    if total > h.seen {
                        attributed = attributed.saturating_add(total - h.seen);
                    }
                    // Totals never go backwards; if they seem to, keep the cursor where it was
                    // so the next rise is not counted twice.
                    h.seen = h.seen.max(total);
                }
            }
            if attributed > 0 {
                if let Some(mut kr) = Recorder::new(None) {
                    let _ = kr.record_kernel_resets(now_epoch, attributed);
                    w.merge_recorder(&kr, now_epoch, &mut bins);
                }
            }
            let mut enc = std::mem::take(&mut self.enc);
            w.encode_into(&mut enc);
            let r = self.host.set_shared(&window_name, &enc, Some(cas));
            self.enc = enc;
            match r {
                Ok(()) => {
                    let totals = w.totals(now_epoch);
                    let p95 = w.p95_us(now_epoch, &mut bins);
                    merged = Some((totals, p95, w.generation, attributed, st.breaker.state));
                    self.bins = bins;
                    self.window = w;
                    break;
                }
                Err(SetError::CasMismatch) => {
                    self.bins = bins;
                    self.window = w;
                }
                Err(SetError::Failed) => {
                    self.bins = bins;
                    self.window = w;
                    return;
                }
            }
        }
        // Contention: the recorder keeps its samples for the next flush.
        let Some((totals, p95, gen, attributed, seen_state)) = merged else {
            return;
        };
        let p = &self.profiles[pi];
        let budget_ok =
            budget_allows_retry(&p.budget, p.breaker.window, totals.requests, totals.retries);
        if let Some(l) = self.keys.peek_mut(key) {
            l.recorder.clear();
            l.new_hosts.clear();
            l.budget_ok = budget_ok;
            l.state = seen_state;
        }
        self.metrics.inc(
            label,
            crate::metrics::Counter::KernelResets,
            attributed as i64,
        );
        let error_rate_ppm = (totals.error_rate() * 1e6).round() as u64;
        let p95_ms = p95.map(|us| us.div_ceil(1000)).unwrap_or(0);
        self.metrics
            .gauge(&self.host, label, Gauge::ErrorRatePpm, error_rate_ppm);
        self.metrics
            .gauge(&self.host, label, Gauge::LatencyP95Ms, p95_ms);
        self.metrics
            .gauge(&self.host, label, Gauge::State, seen_state.gauge() as u64);
        let kernel = self.cfg.reset_signals.as_ref().is_some_and(|rs| {
            kernel_resets_exceed(&totals, p.breaker.window, rs.max_resets_per_second)
        });
        let may_trip =
            seen_state == State::Closed && (kernel || trip_reason(&totals, &p.breaker).is_some());
        if may_trip || refresh_active {
            self.update_state_after_flush(
                key,
                slot,
                pi,
                gen,
                &totals,
                p95_ms,
                kernel,
                refresh_active,
                now_ms,
            );
        }
    }

    /// One compare-and-swap on the key's state after a merge: the activity mark and, if the window
    /// of the same generation says so, the trip.
    #[allow(clippy::too_many_arguments)]
    fn update_state_after_flush(
        &mut self,
        key: &str,
        slot: u32,
        profile: usize,
        window_gen: u32,
        totals: &Counts,
        p95_ms: u64,
        kernel: bool,
        refresh_active: bool,
        now_ms: u64,
    ) {
        let mut name = std::mem::take(&mut self.name_buf);
        self.names.state(slot, &mut name);
        let bcfg = &self.profiles[profile].breaker;
        let mut rng = self.rng.clone();
        let out = cas_update(
            &self.host,
            &name,
            &mut self.enc,
            |b| SlotState::decode(b).ok(),
            SlotState::encode_into,
            |st| {
                if st.key != key {
                    return Update::Keep(None);
                }
                let mut write = false;
                if refresh_active && now_ms > st.last_active_ms {
                    st.last_active_ms = now_ms;
                    write = true;
                }
                let mut t = None;
                if st.breaker.generation == window_gen && st.breaker.state == State::Closed {
                    let mut r = rng.clone();
                    t = if kernel {
                        st.breaker.trip(
                            TripReason::KernelResets,
                            bcfg,
                            now_ms,
                            &mut r as &mut dyn Jitter,
                        )
                    } else {
                        st.breaker.evaluate(totals, bcfg, now_ms, &mut r)
                    };
                    if t.is_some() {
                        rng = r;
                        write = true;
                    }
                }
                let res = Some((t, st.breaker.state));
                if write {
                    Update::Write(res)
                } else {
                    Update::Keep(res)
                }
            },
            // Exhausted: the window still holds the samples, so the next flush evaluates again.
            |_, _| None,
        );
        self.name_buf = name;
        self.rng = rng;
        let Some((t, state)) = out else {
            return;
        };
        let label = match self.keys.peek_mut(key) {
            Some(l) => {
                if refresh_active {
                    l.active_written_ms = now_ms;
                    l.active = false;
                }
                l.state = state;
                l.label
            }
            None => return,
        };
        if let Some(t) = t {
            let figures = format!(
                "samples={} failures={} error_rate_ppm={} p95_ms={p95_ms} kernel_resets={}",
                totals.samples,
                totals.failed(),
                (totals.error_rate() * 1e6).round() as u64,
                totals.kernel_resets
            );
            self.on_transition(key, &t, label, Some(&figures));
            self.metrics
                .gauge(&self.host, label, Gauge::State, state.gauge() as u64);
        }
    }
}
