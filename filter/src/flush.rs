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
use policy_core::window::{
    kernel_resets_exceed, trip_reason, Counts, Recorder, TripReason, Window,
};

use crate::engine::{Engine, FLUSH_MS};
use crate::host::Host;
use crate::metrics::Gauge;
use crate::shared::{cas_update, newer, Meta, Update};

/// The table description (seed, sizes) is re-read this often, so that VMs which raced to create
/// it at startup converge on one seed.
const META_REFRESH_MS: u64 = 1_000;

impl<H: Host> Engine<H> {
    /// Flushes every key with samples older than [`FLUSH_MS`], refreshes activity marks, and
    /// hands the batched counters to Envoy (called from the root's tick).
    pub fn on_tick(&mut self, now_ms: u64) {
        self.slot_searches_left = crate::engine::SLOT_SEARCHES_PER_TICK;
        self.refresh_meta(now_ms);
        let resets_changed = self.refresh_resets();
        let mut due = Vec::new();
        for (k, l) in self.keys.iter() {
            let stale = crate::engine::since(now_ms, l.last_flush_ms) >= FLUSH_MS;
            let has_news = !l.recorder.is_empty() || !l.new_hosts.is_empty();
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

    /// Reads the published kernel reset totals (one shared read per tick) and decodes them only
    /// when their bytes changed, into a map that flushes look hosts up in. True when the
    /// sequence moved (every placed key then takes its share).
    fn refresh_resets(&mut self) -> bool {
        if self.cfg.reset_signals.is_none() {
            return false;
        }
        let Some(bytes) = self.host.get_shared(&self.names.resets()).0 else {
            return false;
        };
        if bytes == self.reset_bytes {
            return false;
        }
        let Ok(t) = ResetTotals::decode(&bytes) else {
            return false;
        };
        self.reset_bytes = bytes;
        let changed = self.resets_seen != Some(t.sequence);
        self.resets_seen = Some(t.sequence);
        self.reset_totals = Some(std::rc::Rc::new(t.peers.into_iter().collect()));
        changed
    }

    /// Flushes every key that holds samples or hosts, whatever their age (the plugin is going
    /// away), and the batched counters.
    pub fn flush_all(&mut self, now_ms: u64) {
        let due: Vec<String> = self
            .keys
            .iter()
            .filter(|(_, l)| !l.recorder.is_empty() || !l.new_hosts.is_empty())
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
        if crate::engine::since(now_ms, self.meta_checked_ms) < META_REFRESH_MS {
            return;
        }
        self.meta_checked_ms = now_ms;
        let mine = self.meta.seed();
        let name = self.names.meta();
        let m = cas_update(
            &self.host,
            &name,
            &mut self.enc,
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
            |_, last| last.unwrap_or_else(|| self.meta.clone()),
        );
        if m.seeds != self.meta.seeds {
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
        let activity = local.activity_to_write(now_ms);
        let Some(slot) = local.slot else {
            local.recorder.clear();
            local.new_hosts.clear();
            return;
        };
        let pi = profile.min(self.profiles.len() - 1);
        let g = self.profiles[pi].geometry;
        let now_epoch = now_ms / g.bucket_ms.max(1);
        // The totals as of this VM's last tick (decoded once per published change, not per flush);
        // read now if no tick has read them yet, so a host is never learned with a zero baseline
        // while totals exist (that would attribute the sidecar's history to this key).
        if self.reset_totals.is_none() {
            self.refresh_resets();
        }
        let resets = self.reset_totals.clone();
        let mut state_name = String::new();
        self.names.state(slot, &mut state_name);
        let mut window_name = String::new();
        self.names.window(&g, slot, &mut window_name);

        enum Merge {
            /// The slot holds another key now (this key was CLOSED and idle).
            Lost,
            /// The state or window is not ours to read or write, or the merge lost every CAS:
            /// the recorder keeps its samples for the next flush.
            Kept,
            Merged {
                totals: Counts,
                p95: Option<u64>,
                generation: u32,
                attributed: u64,
                state: State,
            },
        }
        let host = &self.host;
        let local = self.keys.get(key);
        let mut bins = std::mem::take(&mut self.bins);
        let merge = cas_update(
            host,
            &window_name,
            &mut self.enc,
            |b| Window::decode(b).ok(),
            |w, out| w.encode_into(out),
            |w| {
                // The state first, for the generation the window must have.
                let sb = host.get_shared(&state_name).0;
                let Some(st) = sb.and_then(|b| SlotState::decode(&b).ok()) else {
                    return Update::Keep(Merge::Kept);
                };
                if st.key != key {
                    return Update::Keep(Merge::Lost);
                }
                let gen = st.breaker.generation;
                if newer(w.generation, gen) {
                    // Our state read is older than the window: read both again.
                    return Update::Again;
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
                let mut attributed = 0u64;
                if let Some(l) = local {
                    w.merge_recorder(&l.recorder, now_epoch, &mut bins);
                    for h in &l.new_hosts {
                        let total = resets
                            .as_ref()
                            .and_then(|r| r.get(h.as_str()).copied())
                            .unwrap_or(0);
                        w.learn_host(h, total);
                    }
                    if !l.recorder.is_empty() {
                        w.last_used_ms = now_ms;
                    }
                }
                if let Some(r) = &resets {
                    for h in w.hosts.iter_mut() {
                        let total = r.get(h.host.as_str()).copied().unwrap_or(0);
                        if total > h.seen {
                            attributed = attributed.saturating_add(total - h.seen);
                        }
                        // Totals never go backwards; if they seem to, keep the cursor where it
                        // was so the next rise is not counted twice.
                        h.seen = h.seen.max(total);
                    }
                }
                if attributed > 0 {
                    if let Some(mut kr) = Recorder::new(None) {
                        let _ = kr.record_kernel_resets(now_epoch, attributed);
                        w.merge_recorder(&kr, now_epoch, &mut bins);
                    }
                }
                Update::Write(Merge::Merged {
                    totals: w.totals(now_epoch),
                    p95: w.p95_us(now_epoch, &mut bins),
                    generation: w.generation,
                    attributed,
                    state: st.breaker.state,
                })
            },
            |_, _| Merge::Kept,
        );
        self.bins = bins;
        let (totals, p95, gen, attributed, seen_state) = match merge {
            Merge::Merged {
                totals,
                p95,
                generation,
                attributed,
                state,
            } => (totals, p95, generation, attributed, state),
            Merge::Kept => return,
            Merge::Lost => {
                if let Some(l) = self.keys.peek_mut(key) {
                    l.recorder.clear();
                    l.new_hosts.clear();
                    l.slot = None;
                    l.slot_tried_ms = None;
                }
                return;
            }
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
        if may_trip || activity.is_some() {
            self.update_state_after_flush(
                key, slot, pi, gen, &totals, p95_ms, kernel, activity, now_ms,
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
        activity: Option<u64>,
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
                if let Some(a) = activity.filter(|a| *a > st.last_active_ms) {
                    st.last_active_ms = a;
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
                if activity.is_some() {
                    l.activity_written = activity;
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
