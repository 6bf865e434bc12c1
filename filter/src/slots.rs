//! The slot table: where in shared data a key's state lives, and who may take a slot over.
//!
//! A key hashes (keyed by the process's seed, so a client cannot aim collisions at a victim) into
//! the table of `max_keys` slots and probes [`PROBE_SLOTS`] of them. It uses the first slot holding
//! its name; otherwise it claims a free one, or else takes over the least recently active slot
//! among those probed whose key has been idle for longer than any window (and at least
//! [`MIN_TAKEOVER_IDLE_MS`]): CLOSED with no probe in flight, or OPEN/HALF_OPEN with its open
//! period over and its probes gone ([`takeover_allowed`]). A key whose open period or probes are
//! live is therefore never taken over, whatever the key churn, and one that stopped getting
//! traffic cannot pin its slot forever (SPEC "key_by"). A slot that does not decode is someone
//! else's (another filter version): it is neither free nor taken over.
//!
//! Every claim is a compare-and-swap that re-checks, on the value it replaces, that the slot is
//! still free or still a legal takeover. After a reload that changed `max_keys`, a key also looks
//! in the probe ranges of the table sizes used before (kept in `…/meta`), so it finds its state
//! again; if that slot is outside the new table, the state is carried into a new slot and the old
//! slot is emptied. A slot in the current table always wins over one found under an older size,
//! so a stale copy can never bring an old OPEN state back after the key recovered.
//!
//! [`MIN_TAKEOVER_IDLE_MS`]: policy_core::flow::MIN_TAKEOVER_IDLE_MS

use policy_core::breaker::{BreakerState, State};
use policy_core::encoding::SlotState;
use policy_core::flow::{takeover_allowed, FUTURE_MARK_MS};

use crate::host::Host;
use crate::shared::{cas_update, slot_hash, Meta, Names, Scratch, Update};

/// Slot searches (up to [`PROBE_SLOTS`] reads each, per seed and table size) a
/// worker makes per tick for keys it has not placed yet: a claim (free or taken-over slot, with
/// its compare-and-swap) happens only within it. Keys over the budget still look up the slot they
/// already hold (the probe reads, no write), so an OPEN key new to this worker is rejected, and
/// pass unguarded only if they hold none, until the next tick.
pub const SLOT_SEARCHES_PER_TICK: u32 = 64;

/// Slots probed per key. Changing it moves keys to other slots on the next configuration.
pub const PROBE_SLOTS: u32 = 8;

/// What a slot search found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SlotSearch {
    Found(u32),
    /// Every probed slot is busy.
    NoneFree,
    /// The tick's search budget is spent and the key holds no slot: it asks again.
    BudgetSpent,
}

/// The shared entries a search reads and claims: the host, the entry names, the buffers.
pub(crate) struct Shared<'a, H: Host> {
    pub host: &'a H,
    pub names: &'a Names,
    pub scratch: &'a mut Scratch,
    /// The current table size (`max_keys`).
    pub max_keys: u32,
}

impl<H: Host> Shared<'_, H> {
    fn read_slot(&mut self, slot: u32) -> Option<SlotState> {
        self.names.state(slot, &mut self.scratch.name);
        let (v, _) = self.host.get_shared(&self.scratch.name);
        SlotState::decode(&v?).ok()
    }
}

impl SlotTable {
    /// Finds or claims the slot of `key`. `None` when every probed slot is busy.
    pub fn find<H: Host>(&self, at: &mut Shared<'_, H>, key: &str, now_ms: u64) -> Option<u32> {
        self.locate(at, key, now_ms, true)
    }

    /// The slot `key` already holds in the current table, if any: reads only, never a claim.
    pub fn lookup<H: Host>(&self, at: &mut Shared<'_, H>, key: &str, now_ms: u64) -> Option<u32> {
        self.locate(at, key, now_ms, false)
    }

    /// [`SlotTable::find`] within this tick's search budget. Once it is spent, only the slot the
    /// key already holds in the current table is looked up (reads, no claim): a flood of new keys
    /// can never let an OPEN or HALF_OPEN key through unguarded.
    pub fn search<H: Host>(
        &mut self,
        at: &mut Shared<'_, H>,
        key: &str,
        now_ms: u64,
    ) -> SlotSearch {
        let found = if self.searches_left == 0 {
            match self.locate(at, key, now_ms, false) {
                Some(slot) => return SlotSearch::Found(slot),
                None => return SlotSearch::BudgetSpent,
            }
        } else {
            self.searches_left -= 1;
            self.locate(at, key, now_ms, true)
        };
        found.map_or(SlotSearch::NoneFree, SlotSearch::Found)
    }

    fn locate<H: Host>(
        &self,
        at: &mut Shared<'_, H>,
        key: &str,
        now_ms: u64,
        claim: bool,
    ) -> Option<u32> {
        let current = at.max_keys.max(1);
        let mut sizes = self.meta.sizes.clone();
        if sizes.last() != Some(&current) {
            sizes.push(current);
        }
        let idle_ms = self.takeover_idle_ms;
        let seeds = self.meta.seeds.clone();
        // Where the key is now, if anywhere, and the candidates to claim: in the current table,
        // under the seed new claims use. A slot found in the current table's probe range beats
        // one found only under an older table size, whatever its state: the older one is a copy
        // left behind by a reload that changed `max_keys`, and its state is stale. Between two
        // slots of the same rank (workers that raced to seed the hash), an OPEN/HALF_OPEN one
        // wins over a CLOSED one, so workers that found the key in two places settle on the one
        // that matters.
        let rank = |round: usize, st: &SlotState| (round > 0, st.breaker.state == State::Closed);
        let mut found: Option<(u32, SlotState, (bool, bool))> = None;
        let mut free: Vec<u32> = Vec::new();
        let mut victims: Vec<(u64, u32)> = Vec::new();
        let mut future_marks: Vec<u32> = Vec::new();
        for (si, &seed) in seeds.iter().enumerate() {
            let h = slot_hash(seed, key);
            for (round, &n) in sizes.iter().rev().enumerate() {
                let start = (h % u64::from(n)) as u32;
                for i in 0..PROBE_SLOTS.min(n) {
                    let slot = (start + i) % n;
                    let Some(st) = at.read_slot(slot) else {
                        continue;
                    };
                    if st.key == key {
                        let r = rank(round, &st);
                        if found.as_ref().is_none_or(|f| r < f.2) {
                            found = Some((slot, st, r));
                        }
                        continue;
                    }
                    if round > 0 || si > 0 {
                        continue;
                    }
                    if st.key.is_empty() {
                        free.push(slot);
                    } else if takeover_allowed(&st, now_ms, idle_ms) {
                        victims.push((st.last_active_ms, slot));
                    } else if st.last_active_ms > now_ms.saturating_add(FUTURE_MARK_MS) {
                        future_marks.push(slot);
                    }
                }
            }
        }
        let mut inherit: Option<(u32, BreakerState)> = None;
        if let Some((slot, st, _)) = found {
            if slot < current {
                return Some(slot);
            }
            if !claim {
                return None;
            }
            // Only in an old, larger table: carry the state into the current one.
            inherit = Some((slot, st.breaker));
        }
        if !claim {
            return None;
        }
        for slot in future_marks {
            bring_back_mark(at, slot, now_ms);
        }
        victims.sort_unstable();
        let candidates = free.into_iter().chain(victims.into_iter().map(|v| v.1));
        for slot in candidates {
            let mut name = std::mem::take(&mut at.scratch.name);
            at.names.state(slot, &mut name);
            let inherited = inherit.as_ref().map(|(_, b)| b.clone());
            let got = cas_update(
                at.host,
                &name,
                &mut at.scratch.enc,
                |b| SlotState::decode(b).ok(),
                SlotState::encode_into,
                |st| {
                    if st.key == key {
                        // Another worker claimed it for the same key meanwhile.
                        return Update::Keep(true);
                    }
                    if !st.key.is_empty() && !takeover_allowed(st, now_ms, idle_ms) {
                        return Update::Keep(false);
                    }
                    // A new generation, newer than any window left in this slot, so the previous
                    // tenant's samples and hosts are never read as this key's.
                    let generation = st.breaker.generation.wrapping_add(1);
                    let mut breaker = inherited.clone().unwrap_or_default();
                    breaker.generation = generation;
                    *st = SlotState {
                        key: key.to_string(),
                        breaker,
                        last_active_ms: now_ms,
                    };
                    Update::Write(true)
                },
                |_, _| false,
            );
            at.scratch.name = name;
            if got {
                if let Some((old, _)) = inherit {
                    tombstone(at, old, key);
                }
                return Some(slot);
            }
        }
        None
    }
}

/// Sets the activity mark of `slot` to `now_ms` if it still lies in the future (written before the
/// wall clock stepped back): its key then counts as active now, and may be taken over once idle for
/// the usual time instead of after the size of the step. Its own workers replace the mark with
/// theirs while it is busy.
fn bring_back_mark<H: Host>(at: &mut Shared<'_, H>, slot: u32, now_ms: u64) {
    update_slot(at, slot, |st| {
        if st.key.is_empty() || st.last_active_ms <= now_ms.saturating_add(FUTURE_MARK_MS) {
            return Update::Keep(());
        }
        st.last_active_ms = now_ms;
        Update::Write(())
    });
}

/// Empties `slot` if it still holds `key` (whose state was just carried into the current table):
/// a stale copy is then never found again, and VMs of the old configuration still draining lose
/// it and find the key's one live slot instead of running a second breaker for it.
fn tombstone<H: Host>(at: &mut Shared<'_, H>, slot: u32, key: &str) {
    update_slot(at, slot, |st| {
        if st.key != key {
            return Update::Keep(());
        }
        let generation = st.breaker.generation.wrapping_add(1);
        *st = SlotState::default();
        st.breaker.generation = generation;
        Update::Write(())
    });
}

/// One compare-and-swap on the state entry of `slot` (nothing written when it does not decode,
/// or when `f` keeps it).
fn update_slot<H: Host>(
    at: &mut Shared<'_, H>,
    slot: u32,
    f: impl FnMut(&mut SlotState) -> Update<()>,
) {
    let mut name = std::mem::take(&mut at.scratch.name);
    at.names.state(slot, &mut name);
    cas_update(
        at.host,
        &name,
        &mut at.scratch.enc,
        |b| SlotState::decode(b).ok(),
        SlotState::encode_into,
        f,
        |_, _| (),
    );
    at.scratch.name = name;
}

/// This VM's view of the slot table: the table description it last read, and the budget and
/// warnings of its searches.
pub(crate) struct SlotTable {
    /// The seeds and table sizes keys may have been placed under (`…/meta`).
    pub meta: Meta,
    pub meta_checked_ms: u64,
    /// How long a CLOSED key must have been idle before its slot may be taken over.
    pub takeover_idle_ms: u64,
    /// Slot searches left until the next tick ([`SLOT_SEARCHES_PER_TICK`]).
    pub searches_left: u32,
    /// A key found no free slot once (warned once per VM).
    pub warned_no_slot: bool,
}

impl SlotTable {
    pub fn new(takeover_idle_ms: u64) -> SlotTable {
        SlotTable {
            meta: Meta {
                seeds: Vec::new(),
                sizes: Vec::new(),
                geoms: Vec::new(),
            },
            meta_checked_ms: 0,
            takeover_idle_ms,
            searches_left: SLOT_SEARCHES_PER_TICK,
            warned_no_slot: false,
        }
    }
}
