//! The flow's store in process memory: every key's two entries (breaker state, merged window),
//! shared by all of Envoy's workers, which all run in this one process.
//!
//! Why not one lock: every request reads its key's state. The table is split into [`SHARDS`]
//! maps, each behind its own `RwLock` that is only written when a key arrives or is evicted; a
//! worker keeps the `Arc` of its keys' entries ([`KeyEntries`]), so the request path takes no map
//! lock at all, only the key's own state mutex for the copy of its bytes (and the compare-and-swap
//! when a decision changes the state). Keys never contend with each other.
//!
//! The entries implement [`policy_core::flow::Store`] with its compare-and-swap semantics: each
//! write names the version it read, and a write at another version is refused
//! ([`WriteError::Mismatch`]). Entries are created present (CLOSED, an empty window), as the
//! flow requires.
//!
//! ## Bounds and eviction (SPEC `max_keys`)
//!
//! The table holds at most `max_keys` keys. A new key beyond that takes over the place of a key
//! that is CLOSED, has no probe in flight and has been idle (no request started or completed) for
//! longer than the idle time ([`policy_core::flow::takeover_allowed`]'s rule, with the idle clock
//! kept beside the entries instead of in the state); an OPEN or HALF_OPEN key is never evicted.
//! With no such key the new one is not tracked (its requests pass unguarded). An evicted key's
//! state is overwritten with an empty one before it leaves the map, so a worker still holding its
//! entries finds another key there, which the flow reports as lost: the worker then looks the key
//! up again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};

use policy_core::breaker::State;
use policy_core::encoding::SlotState;
use policy_core::flow::{Entry, Geometry, Read, Store, WriteError};
use policy_core::keys::EVICTION_SCAN;

/// How many independently locked maps the table is split into.
pub const SHARDS: usize = 16;

/// One entry's bytes and version.
#[derive(Debug, Default)]
struct Cell {
    bytes: Vec<u8>,
    version: u32,
}

/// A key's two entries, and when it was last used.
#[derive(Debug)]
pub struct KeyEntries {
    state: Mutex<Cell>,
    window: Mutex<Cell>,
    /// When a request of the key last started or completed (the module's clock, ms).
    touched_ms: AtomicU64,
}

/// A mutex whose holder panicked still holds whole bytes (every write replaces them in one
/// call), so its value is used rather than given up.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl KeyEntries {
    /// The entries of `key`: CLOSED, with an empty window of `geometry`.
    pub fn new(key: &str, geometry: &Geometry, now_ms: u64) -> KeyEntries {
        let st = SlotState {
            key: key.to_string(),
            ..SlotState::default()
        };
        KeyEntries {
            state: Mutex::new(Cell {
                bytes: st.encode(),
                version: 1,
            }),
            window: Mutex::new(Cell {
                bytes: geometry.empty_window(0).encode(),
                version: 1,
            }),
            touched_ms: AtomicU64::new(now_ms),
        }
    }

    fn cell(&self, entry: Entry) -> &Mutex<Cell> {
        match entry {
            Entry::State => &self.state,
            Entry::Window => &self.window,
        }
    }

    /// Marks the key used now (a request started or completed).
    pub fn touch(&self, now_ms: u64) {
        self.touched_ms.fetch_max(now_ms, Ordering::Relaxed);
    }

    /// The key's state as stored, decoded.
    pub fn slot_state(&self) -> Option<SlotState> {
        SlotState::decode(&lock(&self.state).bytes).ok()
    }

    /// Whether another key may take this one's place: CLOSED, no probe in flight, idle for
    /// longer than `idle_ms`.
    fn evictable(&self, now_ms: u64, idle_ms: u64) -> bool {
        let touched = self.touched_ms.load(Ordering::Relaxed);
        if now_ms < touched || now_ms - touched <= idle_ms {
            return false;
        }
        self.slot_state()
            .is_some_and(|st| st.breaker.state == State::Closed && st.breaker.probes.is_empty())
    }

    /// Gives the entries up: the state names no key any more, so a worker that still holds them
    /// finds them lost at its next decision or merge.
    fn retire(&self) {
        let mut c = lock(&self.state);
        c.bytes = SlotState::default().encode();
        c.version = c.version.wrapping_add(1);
    }
}

impl Store for &KeyEntries {
    fn read(&mut self, entry: Entry) -> Read {
        let c = lock(self.cell(entry));
        (Some(c.bytes.clone()), Some(c.version))
    }

    fn write(
        &mut self,
        entry: Entry,
        bytes: &[u8],
        version: Option<u32>,
    ) -> Result<(), WriteError> {
        let mut c = lock(self.cell(entry));
        if version.is_some_and(|v| v != c.version) {
            return Err(WriteError::Mismatch);
        }
        c.bytes.clear();
        c.bytes.extend_from_slice(bytes);
        c.version = c.version.wrapping_add(1);
        Ok(())
    }
}

type Shard = RwLock<HashMap<Box<str>, Arc<KeyEntries>>>;

/// Every key's entries in this process.
#[derive(Debug, Default)]
pub struct Table {
    shards: [Shard; SHARDS],
    len: AtomicUsize,
    /// Where the next eviction scan starts, so scans spread over the shards.
    next_scan: AtomicUsize,
}

/// FNV-1a: a fixed, cheap spread of keys over the shards.
fn shard_of(key: &str) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % SHARDS as u64) as usize
}

impl Table {
    /// How many keys the table holds.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shard(&self, key: &str) -> &Shard {
        &self.shards[shard_of(key)]
    }

    /// The entries of `key`, if the table holds it.
    pub fn get(&self, key: &str) -> Option<Arc<KeyEntries>> {
        self.shard(key)
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    /// The entries of `key`, created (CLOSED, an empty window of `geometry`) if absent and there
    /// is room: fewer than `max_keys` keys, or one that may be evicted. `None`: the key is not
    /// tracked.
    pub fn get_or_insert(
        &self,
        key: &str,
        geometry: &Geometry,
        max_keys: u32,
        idle_ms: u64,
        now_ms: u64,
    ) -> Option<Arc<KeyEntries>> {
        if let Some(e) = self.get(key) {
            return Some(e);
        }
        let max = usize::try_from(max_keys).unwrap_or(usize::MAX);
        // Reserve a place first, so racing inserts never take the table past `max_keys`.
        if self.len.fetch_add(1, Ordering::AcqRel) >= max {
            self.len.fetch_sub(1, Ordering::AcqRel);
            if !self.evict_one(now_ms, idle_ms) {
                return None;
            }
            if self.len.fetch_add(1, Ordering::AcqRel) >= max {
                self.len.fetch_sub(1, Ordering::AcqRel);
                return None;
            }
        }
        let mut shard = self.shard(key).write().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = shard.get(key) {
            // Another worker inserted it meanwhile: give the reserved place back.
            self.len.fetch_sub(1, Ordering::AcqRel);
            return Some(e.clone());
        }
        let e = Arc::new(KeyEntries::new(key, geometry, now_ms));
        shard.insert(key.into(), e.clone());
        Some(e)
    }

    /// Removes one evictable key (looking at up to [`EVICTION_SCAN`] keys); false when none was.
    fn evict_one(&self, now_ms: u64, idle_ms: u64) -> bool {
        let start = self.next_scan.fetch_add(1, Ordering::Relaxed);
        let mut scanned = 0usize;
        for i in 0..SHARDS {
            let mut shard = self.shards[(start + i) % SHARDS]
                .write()
                .unwrap_or_else(|p| p.into_inner());
            let victim = shard
                .iter()
                .take(EVICTION_SCAN.saturating_sub(scanned))
                .find(|(_, e)| e.evictable(now_ms, idle_ms))
                .map(|(k, _)| k.clone());
            scanned += shard.len();
            if let Some(k) = victim {
                if let Some(e) = shard.remove(&k) {
                    e.retire();
                    self.len.fetch_sub(1, Ordering::AcqRel);
                    return true;
                }
            }
            if scanned >= EVICTION_SCAN {
                break;
            }
        }
        false
    }
}

/// The process's table: it outlives every filter configuration (the module is loaded with
/// `do_not_close`), so a reload keeps every key's state.
pub fn process() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(Table::default)
}

#[cfg(test)]
mod tests {
    use super::*;
    use policy_core::breaker::FixedJitter;
    use policy_core::config::{Config, Mode};
    use policy_core::flow::{self, Admitted};

    fn geometry() -> Geometry {
        Geometry::of(&Config::default().breaker)
    }

    #[test]
    fn entries_are_created_closed_and_found_again() {
        let t = Table::default();
        let e = t.get_or_insert("a", &geometry(), 4, 1_000, 0).unwrap();
        assert_eq!(e.slot_state().unwrap().key, "a");
        assert_eq!(e.slot_state().unwrap().breaker.state, State::Closed);
        let again = t.get_or_insert("a", &geometry(), 4, 1_000, 0).unwrap();
        assert!(Arc::ptr_eq(&e, &again));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn a_write_at_another_version_is_refused() {
        let e = KeyEntries::new("a", &geometry(), 0);
        let mut s = &e;
        let (bytes, v) = s.read(Entry::State);
        assert_eq!(v, Some(1));
        let bytes = bytes.unwrap();
        assert_eq!(s.write(Entry::State, &bytes, Some(1)), Ok(()));
        assert_eq!(
            s.write(Entry::State, &bytes, Some(1)),
            Err(WriteError::Mismatch)
        );
        assert_eq!(s.read(Entry::State).1, Some(2));
    }

    #[test]
    fn the_table_is_bounded_and_evicts_only_idle_closed_keys() {
        let t = Table::default();
        let g = geometry();
        assert!(t.get_or_insert("a", &g, 2, 1_000, 0).is_some());
        assert!(t.get_or_insert("b", &g, 2, 1_000, 500).is_some());
        assert!(
            t.get_or_insert("c", &g, 2, 1_000, 900).is_none(),
            "none idle"
        );
        let c = t.get_or_insert("c", &g, 2, 1_000, 1_200).unwrap();
        assert_eq!(t.len(), 2);
        assert!(t.get("a").is_none(), "a, idle longest, made room");
        assert!(t.get("b").is_some());
        assert_eq!(c.slot_state().unwrap().key, "c");
    }

    #[test]
    fn an_open_key_is_never_evicted() {
        let t = Table::default();
        let g = geometry();
        let a = t.get_or_insert("a", &g, 1, 1_000, 0).unwrap();
        let mut st = a.slot_state().unwrap();
        st.breaker.state = State::Open;
        (&*a).write(Entry::State, &st.encode(), Some(1)).unwrap();
        assert!(t.get_or_insert("b", &g, 1, 1_000, 60_000).is_none());
        assert!(t.get("a").is_some());
    }

    #[test]
    fn a_worker_holding_evicted_entries_finds_them_lost() {
        let t = Table::default();
        let g = geometry();
        let a = t.get_or_insert("a", &g, 1, 1_000, 0).unwrap();
        t.get_or_insert("b", &g, 1, 1_000, 5_000).unwrap();
        let cfg = Config::default().breaker;
        let got = flow::admit(
            &mut &*a,
            "a",
            Mode::Enforce,
            &cfg,
            5_000,
            &mut FixedJitter(0.0),
            &mut Vec::new(),
        );
        assert_eq!(got, Admitted::Lost);
    }

    #[test]
    fn racing_inserts_of_many_keys_never_pass_max_keys() {
        let t = Arc::new(Table::default());
        let handles: Vec<_> = (0..4)
            .map(|w| {
                let t = t.clone();
                std::thread::spawn(move || {
                    for i in 0..200 {
                        let _ = t.get_or_insert(
                            &format!("k{}", (i * 7 + w) % 50),
                            &geometry(),
                            32,
                            1_000,
                            0,
                        );
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(t.len(), 32);
        let held: usize = t.shards.iter().map(|s| s.read().unwrap().len()).sum();
        assert_eq!(held, 32);
    }
}
