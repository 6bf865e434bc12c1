//! Breaker keys: sanitization, the bounded key registry, and the metric label budget (SPEC "key_by").
//!
//! Why this module exists: a key is built from values a client may choose (the `:authority` of a
//! request), and it ends up in Envoy stat names, log lines and shared-data keys. So:
//!
//! - **Sanitization** makes a key harmless before any use. Envoy turns raw stat names such as
//!   `key=.=<key>;.;decision=.=allowed;.;meshbreaker_requests_total` into labels with a regex, so a
//!   key holding `;.;` or `=.=` could forge other tags. Every character outside `[a-z0-9._:|-]`
//!   (after ASCII lowercasing) becomes `_` — one `_` per *character*, not per byte, so `"é"` gives
//!   `"_"` — and the result is cut to [`MAX_KEY_LEN`] bytes. The output is pure ASCII, so the cut can
//!   never split a character, and sanitizing twice changes nothing.
//! - **[`KeyRegistry`]** bounds memory: at most `max_keys` keys are tracked, and when full the least
//!   recently used *idle* key (as judged by the caller, e.g. a closed breaker with nothing in flight)
//!   is evicted, so a flood of client-chosen authorities can never grow memory without bound, and a
//!   key with an open breaker is never forgotten by a flood.
//! - **The label budget** ([`may_create_label`], kept as a process-wide counter in shared data by the
//!   filter) bounds metrics: Envoy cannot delete a wasm metric, so at most `max_keys` distinct `key`
//!   labels are ever created; an evicted key keeps its label forever (the metric still exists), and
//!   keys that arrive once the budget is spent report under [`OTHER_LABEL`].

use std::collections::HashMap;

/// Longest key, in bytes (the key is pure ASCII, so also in characters).
pub const MAX_KEY_LEN: usize = 128;

/// What one breaker guards (the configuration's `key_by`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(rename_all = "snake_case"))]
pub enum KeyBy {
    Cluster,
    Route,
    ClusterRoute,
    Authority,
}

impl KeyBy {
    /// The names the configuration writes, in the order of [`KeyBy::ALL`].
    pub const NAMES: [&'static str; 4] = ["cluster", "route", "cluster_route", "authority"];
    pub const ALL: [KeyBy; 4] = [
        KeyBy::Cluster,
        KeyBy::Route,
        KeyBy::ClusterRoute,
        KeyBy::Authority,
    ];
}

/// The `key` label of every key that arrived after the label budget was spent.
pub const OTHER_LABEL: &str = "_other";

/// Stands for a missing (empty) cluster, route or authority in [`key_for`], so that a request
/// without a route name is visibly `_unknown` in metrics rather than an empty label.
pub const UNKNOWN_PART: &str = "_unknown";

/// Whether `c` may appear in a sanitized key: `[a-z0-9._:|-]`.
fn is_allowed(c: char) -> bool {
    matches!(c, 'a'..='z' | '0'..='9' | '.' | '_' | ':' | '|' | '-')
}

/// Appends the sanitized form of `raw` to `out`, stopping once `out` is [`MAX_KEY_LEN`] bytes long.
fn push_sanitized(raw: &str, out: &mut String) {
    for c in raw.chars() {
        if out.len() >= MAX_KEY_LEN {
            return;
        }
        let lower = c.to_ascii_lowercase();
        out.push(if is_allowed(lower) { lower } else { '_' });
    }
}

/// Appends one part of a composite key; an empty part is written as [`UNKNOWN_PART`].
fn push_part(raw: &str, out: &mut String) {
    if raw.is_empty() {
        push_sanitized(UNKNOWN_PART, out);
    } else {
        push_sanitized(raw, out);
    }
}

/// The sanitized form of `raw`: ASCII-lowercased, every character outside `[a-z0-9._:|-]`
/// (including every non-ASCII character) replaced by one `_`, cut to [`MAX_KEY_LEN`] bytes.
pub fn sanitize_key(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len().min(MAX_KEY_LEN));
    sanitize_key_into(raw, &mut out);
    out
}

/// [`sanitize_key`] into a reusable buffer: `out` is cleared first; no allocation once `out` has
/// [`MAX_KEY_LEN`] bytes of capacity.
pub fn sanitize_key_into(raw: &str, out: &mut String) {
    out.clear();
    push_sanitized(raw, out);
}

/// Writes the sanitized key of a request into `out` (cleared first), according to `key_by`:
///
/// - `Cluster` → the cluster name (Envoy `xds.cluster_name`);
/// - `Route` → the route name (`xds.route_name`);
/// - `ClusterRoute` → `cluster|route`, each part sanitized on its own and joined with `|`;
///   the whole is then cut to [`MAX_KEY_LEN`] bytes. (Istio cluster names contain `|` themselves,
///   so the join is for humans, not meant to be split again.)
/// - `Authority` → the `:authority` exactly as sent apart from sanitization: `Host:8080` gives
///   `host:8080`; the port is kept because `host` and `host:8080` may be different services.
///
/// An empty part becomes [`UNKNOWN_PART`] (`_unknown`).
pub fn key_for(key_by: KeyBy, cluster: &str, route: &str, authority: &str, out: &mut String) {
    out.clear();
    match key_by {
        KeyBy::Cluster => push_part(cluster, out),
        KeyBy::Route => push_part(route, out),
        KeyBy::ClusterRoute => {
            push_part(cluster, out);
            if out.len() < MAX_KEY_LEN {
                out.push('|');
            }
            push_part(route, out);
        }
        KeyBy::Authority => push_part(authority, out),
    }
}

/// The label rule of the filter's process-wide label counter in shared data:
/// a new label may be created while fewer than `max_keys` exist.
pub fn may_create_label(labels_created: u32, max_keys: u32) -> bool {
    labels_created < max_keys
}

/// Returned by [`KeyRegistry::insert`] when the registry is full and none of the least recently
/// used entries it looked at is idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

impl std::fmt::Display for Full {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("key registry full and no idle key to evict")
    }
}

impl std::error::Error for Full {}

/// How many entries, from the LRU end, an insert into a full registry inspects looking for an idle
/// one. Bounds the cost of an insert when many keys are busy.
pub const EVICTION_SCAN: usize = 64;

const NIL: usize = usize::MAX;

#[derive(Debug, Clone)]
struct Slot<V> {
    key: String,
    /// `None` for a slot on the free list.
    value: Option<V>,
    /// Towards the most recently used end.
    prev: usize,
    /// Towards the least recently used end.
    next: usize,
    touched_ms: u64,
}

/// A map from key to `V` holding at most `capacity` entries, in exact least-recently-used order.
///
/// Entries live in a `Vec` of slots linked into a doubly linked list (most recently used at the
/// head) and are found through a `HashMap<String, usize>`; get, touch, insert and remove are O(1),
/// eviction walks at most [`EVICTION_SCAN`] entries from the LRU end.
/// A key's slot number ([`slot`](Self::slot)) is in `0..capacity` and stays the same while the key
/// lives, so it can index a fixed table (the filter's shared-data slots).
///
/// No allocation per operation except the key strings of an insert into a never-used or removed
/// slot; an insert that evicts reuses the evicted key's buffers.
#[derive(Debug, Clone)]
pub struct KeyRegistry<V> {
    slots: Vec<Slot<V>>,
    index: HashMap<String, usize>,
    free: Vec<usize>,
    head: usize,
    tail: usize,
    capacity: usize,
}

impl<V> KeyRegistry<V> {
    /// A registry of at most `max_keys` entries (SPEC `max_keys`). `0` gives a registry that
    /// refuses every insert.
    pub fn new(max_keys: u32) -> Self {
        let capacity = usize::try_from(max_keys).unwrap_or(usize::MAX);
        let initial = capacity.min(1024);
        KeyRegistry {
            slots: Vec::with_capacity(initial),
            index: HashMap::with_capacity(initial),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            capacity,
        }
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn contains(&self, key: &str) -> bool {
        self.index.contains_key(key)
    }

    /// The slot number of `key`, in `0..capacity`, stable while the key is present.
    pub fn slot(&self, key: &str) -> Option<usize> {
        self.index.get(key).copied()
    }

    /// The key and value in slot `i` (from [`slot`](Self::slot)), without touching it: lets a
    /// caller that holds an entry busy (so it cannot be evicted) find it again without the name.
    pub fn at_mut(&mut self, i: usize) -> Option<(&str, &mut V)> {
        let s = self.slots.get_mut(i)?;
        let v = s.value.as_mut()?;
        Some((s.key.as_str(), v))
    }

    /// The value of `key` without touching it.
    pub fn get(&self, key: &str) -> Option<&V> {
        let i = *self.index.get(key)?;
        self.slots.get(i)?.value.as_ref()
    }

    /// The value of `key`, mutably, without touching it (flushes and ticks must not make a key
    /// look recently used).
    pub fn peek_mut(&mut self, key: &str) -> Option<&mut V> {
        let i = *self.index.get(key)?;
        self.slots.get_mut(i)?.value.as_mut()
    }

    /// The value of `key`, marking it most recently used at `now_ms`.
    pub fn get_mut(&mut self, key: &str, now_ms: u64) -> Option<&mut V> {
        let i = *self.index.get(key)?;
        self.touch_slot(i, now_ms);
        self.slots.get_mut(i)?.value.as_mut()
    }

    /// When `key` was last inserted or touched.
    pub fn touched_ms(&self, key: &str) -> Option<u64> {
        let i = *self.index.get(key)?;
        self.slots.get(i).map(|s| s.touched_ms)
    }

    /// Marks the entry in slot `i` (from [`slot`](Self::slot)) most recently used, and returns
    /// its value: one index lookup per request instead of one per use.
    pub fn touch_at(&mut self, i: usize, now_ms: u64) -> Option<&mut V> {
        self.slots.get(i)?.value.as_ref()?;
        self.touch_slot(i, now_ms);
        self.slots.get_mut(i)?.value.as_mut()
    }

    /// Marks `key` most recently used; returns whether it is present.
    pub fn touch(&mut self, key: &str, now_ms: u64) -> bool {
        match self.index.get(key) {
            Some(&i) => {
                self.touch_slot(i, now_ms);
                true
            }
            None => false,
        }
    }

    /// Inserts `key` → `value` as most recently used. If `key` is present its value is replaced.
    /// If the registry is full, the least recently used entry for which `is_idle` is true (looking
    /// at no more than the eviction scan from the LRU end) is evicted; if none is, `Err(Full)` and
    /// nothing changes.
    pub fn insert(
        &mut self,
        key: &str,
        value: V,
        now_ms: u64,
        is_idle: impl Fn(&V) -> bool,
    ) -> Result<&mut V, Full> {
        if let Some(&i) = self.index.get(key) {
            self.touch_slot(i, now_ms);
            let slot = self.slots.get_mut(i).ok_or(Full)?;
            slot.value = Some(value);
            return slot.value.as_mut().ok_or(Full);
        }
        let (i, _evicted) = self.place(key, now_ms, &is_idle)?;
        let slot = self.slots.get_mut(i).ok_or(Full)?;
        slot.value = Some(value);
        slot.value.as_mut().ok_or(Full)
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<V> {
        let i = self.index.remove(key)?;
        self.unlink(i);
        let slot = self.slots.get_mut(i)?;
        slot.key.clear();
        let value = slot.value.take();
        self.free.push(i);
        value
    }

    /// Entries from most to least recently used.
    pub fn iter(&self) -> Iter<'_, V> {
        Iter {
            registry: self,
            cursor: self.head,
            remaining: self.len(),
        }
    }

    /// Visits every entry from most to least recently used, mutably, without touching any.
    pub fn for_each_mut(&mut self, mut f: impl FnMut(&str, &mut V)) {
        let mut cursor = self.head;
        let mut remaining = self.len();
        while cursor != NIL && remaining > 0 {
            let Some(slot) = self.slots.get_mut(cursor) else {
                return;
            };
            if let Some(v) = slot.value.as_mut() {
                f(&slot.key, v);
            }
            cursor = slot.next;
            remaining -= 1;
        }
    }

    /// The least recently used key, if any.
    pub fn lru_key(&self) -> Option<&str> {
        self.slots.get(self.tail).map(|s| s.key.as_str())
    }

    /// Finds a slot for a new key, links it at the head and indexes it. Returns the slot and the
    /// evicted value.
    fn place(
        &mut self,
        key: &str,
        now_ms: u64,
        is_idle: &impl Fn(&V) -> bool,
    ) -> Result<(usize, Option<V>), Full> {
        let (i, map_key, evicted) = if let Some(i) = self.free.pop() {
            (i, key.to_owned(), None)
        } else if self.slots.len() < self.capacity {
            self.slots.push(Slot {
                key: String::new(),
                value: None,
                prev: NIL,
                next: NIL,
                touched_ms: now_ms,
            });
            (self.slots.len() - 1, key.to_owned(), None)
        } else {
            let victim = self.find_idle_victim(is_idle).ok_or(Full)?;
            self.unlink(victim);
            let slot = self.slots.get_mut(victim).ok_or(Full)?;
            let mut map_key = match self.index.remove_entry(slot.key.as_str()) {
                Some((k, _)) => k,
                None => String::new(),
            };
            map_key.clear();
            map_key.push_str(key);
            (victim, map_key, slot.value.take())
        };
        if let Some(slot) = self.slots.get_mut(i) {
            slot.key.clear();
            slot.key.push_str(key);
            slot.touched_ms = now_ms;
        }
        self.index.insert(map_key, i);
        self.push_front(i);
        Ok((i, evicted))
    }

    fn find_idle_victim(&self, is_idle: &impl Fn(&V) -> bool) -> Option<usize> {
        let mut cursor = self.tail;
        let mut scanned = 0;
        while cursor != NIL && scanned < EVICTION_SCAN {
            let slot = self.slots.get(cursor)?;
            if slot.value.as_ref().is_some_and(is_idle) {
                return Some(cursor);
            }
            cursor = slot.prev;
            scanned += 1;
        }
        None
    }

    fn touch_slot(&mut self, i: usize, now_ms: u64) {
        if let Some(slot) = self.slots.get_mut(i) {
            slot.touched_ms = now_ms;
        }
        if self.head != i {
            self.unlink(i);
            self.push_front(i);
        }
    }

    fn unlink(&mut self, i: usize) {
        let Some(slot) = self.slots.get_mut(i) else {
            return;
        };
        let (prev, next) = (slot.prev, slot.next);
        slot.prev = NIL;
        slot.next = NIL;
        match self.slots.get_mut(prev) {
            Some(p) => p.next = next,
            None => {
                if self.head == i {
                    self.head = next;
                }
            }
        }
        match self.slots.get_mut(next) {
            Some(n) => n.prev = prev,
            None => {
                if self.tail == i {
                    self.tail = prev;
                }
            }
        }
    }

    fn push_front(&mut self, i: usize) {
        let old_head = self.head;
        if let Some(slot) = self.slots.get_mut(i) {
            slot.prev = NIL;
            slot.next = old_head;
        }
        match self.slots.get_mut(old_head) {
            Some(h) => h.prev = i,
            None => self.tail = i,
        }
        self.head = i;
    }
}

/// Iterator over a [`KeyRegistry`], most recently used first.
pub struct Iter<'a, V> {
    registry: &'a KeyRegistry<V>,
    cursor: usize,
    remaining: usize,
}

impl<'a, V> Iterator for Iter<'a, V> {
    type Item = (&'a str, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        while self.remaining > 0 {
            let slot = self.registry.slots.get(self.cursor)?;
            self.cursor = slot.next;
            self.remaining -= 1;
            if let Some(v) = slot.value.as_ref() {
                return Some((slot.key.as_str(), v));
            }
        }
        None
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn never_idle(_: &u32) -> bool {
        false
    }
    fn always_idle(_: &u32) -> bool {
        true
    }

    #[test]
    fn sanitize_lowercases_ascii() {
        assert_eq!(
            sanitize_key("Reviews.Default.SVC:8080"),
            "reviews.default.svc:8080"
        );
    }

    #[test]
    fn sanitize_keeps_every_allowed_character() {
        let allowed = "abcdefghijklmnopqrstuvwxyz0123456789._:|-";
        assert_eq!(sanitize_key(allowed), allowed);
        assert_eq!(
            sanitize_key("outbound|8080||reviews.default.svc"),
            "outbound|8080||reviews.default.svc"
        );
    }

    #[test]
    fn sanitize_replaces_each_forbidden_ascii_character() {
        for b in 0u8..=127 {
            let c = char::from(b);
            let lower = c.to_ascii_lowercase();
            let expected = if lower.is_ascii_lowercase()
                || lower.is_ascii_digit()
                || "._:|-".contains(lower)
            {
                lower.to_string()
            } else {
                "_".to_string()
            };
            assert_eq!(sanitize_key(&c.to_string()), expected, "byte {b}");
        }
    }

    #[test]
    fn sanitize_defuses_stat_tag_forgery() {
        let forged = "evil;.;key=.=victim;.;";
        let clean = sanitize_key(forged);
        assert_eq!(clean, "evil_._key_._victim_._");
        assert!(!clean.contains(";.;"));
        assert!(!clean.contains("=.="));
        assert_eq!(sanitize_key("=.="), "_._");
        assert_eq!(sanitize_key(";.;"), "_._");
        assert_eq!(sanitize_key("a b\tc\nd/e\"f'g"), "a_b_c_d_e_f_g");
    }

    #[test]
    fn sanitize_replaces_each_non_ascii_character_by_one_underscore() {
        assert_eq!(sanitize_key("café"), "caf_");
        assert_eq!(sanitize_key("ÉCOLE"), "_cole");
        assert_eq!(sanitize_key("日本.jp"), "__.jp");
        assert_eq!(sanitize_key("🦀"), "_");
        // Unicode uppercase is not folded: the output must stay ASCII.
        assert_eq!(sanitize_key("İ"), "_");
        assert!(sanitize_key("ünïcödé").is_ascii());
    }

    #[test]
    fn sanitize_cuts_at_128_bytes() {
        let long = "a".repeat(300);
        assert_eq!(sanitize_key(&long).len(), MAX_KEY_LEN);
        let exactly = "b".repeat(128);
        assert_eq!(sanitize_key(&exactly), exactly);
        // Multi-byte input is cut by output bytes, one byte per character.
        let wide = "é".repeat(200);
        assert_eq!(sanitize_key(&wide), "_".repeat(128));
        assert_eq!(sanitize_key(""), "");
    }

    #[test]
    fn sanitize_is_idempotent() {
        for raw in [
            "Host;.;X=.=Y",
            "café:80",
            &"Z".repeat(500),
            "",
            "outbound|80||a.b",
        ] {
            let once = sanitize_key(raw);
            assert_eq!(sanitize_key(&once), once);
        }
    }

    #[test]
    fn sanitize_into_reuses_and_clears_the_buffer() {
        let mut buf = String::from("leftover");
        sanitize_key_into("New", &mut buf);
        assert_eq!(buf, "new");
        let mut buf = String::with_capacity(MAX_KEY_LEN);
        let cap = buf.capacity();
        sanitize_key_into(&"x".repeat(1000), &mut buf);
        assert_eq!(buf.capacity(), cap);
    }

    #[test]
    fn key_for_each_key_by() {
        let mut out = String::new();
        key_for(
            KeyBy::Cluster,
            "outbound|8080||Reviews",
            "r1",
            "Host:80",
            &mut out,
        );
        assert_eq!(out, "outbound|8080||reviews");
        key_for(KeyBy::Route, "c", "Route-A", "h", &mut out);
        assert_eq!(out, "route-a");
        key_for(KeyBy::ClusterRoute, "C1", "R 1", "h", &mut out);
        assert_eq!(out, "c1|r_1");
        key_for(KeyBy::Authority, "c", "r", "API.Example.com:8443", &mut out);
        assert_eq!(out, "api.example.com:8443");
    }

    #[test]
    fn key_for_authority_cannot_forge_tags() {
        let mut out = String::new();
        key_for(
            KeyBy::Authority,
            "c",
            "r",
            "x;.;decision=.=allowed;.;",
            &mut out,
        );
        assert_eq!(out, "x_._decision_._allowed_._");
    }

    #[test]
    fn key_for_writes_unknown_for_empty_parts() {
        let mut out = String::new();
        key_for(KeyBy::Cluster, "", "r", "h", &mut out);
        assert_eq!(out, "_unknown");
        key_for(KeyBy::Route, "c", "", "h", &mut out);
        assert_eq!(out, "_unknown");
        key_for(KeyBy::ClusterRoute, "c", "", "h", &mut out);
        assert_eq!(out, "c|_unknown");
        key_for(KeyBy::ClusterRoute, "", "", "h", &mut out);
        assert_eq!(out, "_unknown|_unknown");
        key_for(KeyBy::Authority, "c", "r", "", &mut out);
        assert_eq!(out, "_unknown");
    }

    #[test]
    fn key_for_cluster_route_is_cut_at_128_bytes() {
        let mut out = String::new();
        key_for(
            KeyBy::ClusterRoute,
            &"c".repeat(100),
            &"r".repeat(100),
            "",
            &mut out,
        );
        assert_eq!(out.len(), MAX_KEY_LEN);
        assert_eq!(out, format!("{}|{}", "c".repeat(100), "r".repeat(27)));
        key_for(KeyBy::ClusterRoute, &"c".repeat(128), "r", "", &mut out);
        assert_eq!(out, "c".repeat(128));
    }

    #[test]
    fn may_create_label_while_below_max() {
        assert!(may_create_label(0, 1));
        assert!(may_create_label(9, 10));
        assert!(!may_create_label(10, 10));
        assert!(!may_create_label(11, 10));
        assert!(!may_create_label(0, 0));
    }

    #[test]
    fn registry_at_mut_finds_an_entry_by_its_slot() {
        let mut reg = KeyRegistry::new(3);
        reg.insert("a", 1u32, 10, always_idle).unwrap();
        let i = reg.slot("a").unwrap();
        let (k, v) = reg.at_mut(i).unwrap();
        assert_eq!((k, *v), ("a", 1));
        *v = 5;
        assert_eq!(reg.get("a"), Some(&5));
        reg.remove("a");
        assert!(reg.at_mut(i).is_none());
    }

    #[test]
    fn registry_peek_mut_does_not_touch() {
        let mut reg = KeyRegistry::new(3);
        reg.insert("a", 1u32, 10, always_idle).unwrap();
        reg.insert("b", 2u32, 11, always_idle).unwrap();
        *reg.peek_mut("a").unwrap() += 1;
        assert_eq!(reg.lru_key(), Some("a"));
        assert_eq!(reg.touched_ms("a"), Some(10));
    }

    #[test]
    fn registry_get_mut_touches_and_returns_value() {
        let mut reg = KeyRegistry::new(3);
        reg.insert("a", 1u32, 10, always_idle).unwrap();
        *reg.get_mut("a", 20).unwrap() += 5;
        assert_eq!(reg.get("a"), Some(&6));
        assert_eq!(reg.touched_ms("a"), Some(20));
        assert!(reg.get_mut("missing", 30).is_none());
    }

    #[test]
    fn registry_iterates_most_recently_used_first() {
        let mut reg = KeyRegistry::new(4);
        for (i, k) in ["a", "b", "c", "d"].iter().enumerate() {
            reg.insert(k, i as u32, i as u64, always_idle).unwrap();
        }
        let order: Vec<&str> = reg.iter().map(|(k, _)| k).collect();
        assert_eq!(order, ["d", "c", "b", "a"]);
        reg.get_mut("b", 10);
        reg.touch("a", 11);
        let order: Vec<&str> = reg.iter().map(|(k, _)| k).collect();
        assert_eq!(order, ["a", "b", "d", "c"]);
        assert_eq!(reg.lru_key(), Some("c"));
    }

    #[test]
    fn registry_evicts_least_recently_used_when_full() {
        let mut reg = KeyRegistry::new(3);
        reg.insert("a", 1u32, 1, always_idle).unwrap();
        reg.insert("b", 2, 2, always_idle).unwrap();
        reg.insert("c", 3, 3, always_idle).unwrap();
        reg.get_mut("a", 4);
        reg.insert("d", 4, 5, always_idle).unwrap();
        assert!(!reg.contains("b"));
        assert!(reg.contains("a") && reg.contains("c") && reg.contains("d"));
        assert_eq!(reg.len(), 3);
    }

    #[test]
    fn registry_skips_busy_entries_when_evicting() {
        let mut reg = KeyRegistry::new(3);
        // Values: even = idle, odd = busy.
        reg.insert("busy-oldest", 1u32, 1, always_idle).unwrap();
        reg.insert("idle", 2, 2, always_idle).unwrap();
        reg.insert("busy-new", 3, 3, always_idle).unwrap();
        let is_idle = |v: &u32| v.is_multiple_of(2);
        reg.insert("e", 4, 4, is_idle).unwrap();
        assert!(reg.contains("busy-oldest"));
        assert!(!reg.contains("idle"));
        // Now the only idle entry is the newest one, "e".
        reg.insert("f", 6, 5, is_idle).unwrap();
        assert!(!reg.contains("e"));
        assert!(reg.contains("busy-oldest") && reg.contains("busy-new") && reg.contains("f"));
    }

    #[test]
    fn registry_refuses_insert_when_nothing_is_idle() {
        let mut reg = KeyRegistry::new(2);
        reg.insert("a", 1u32, 1, never_idle).unwrap();
        reg.insert("b", 2, 2, never_idle).unwrap();
        assert_eq!(reg.insert("c", 3, 3, never_idle).map(|v| *v), Err(Full));
        assert_eq!(reg.len(), 2);
        assert!(reg.contains("a") && reg.contains("b"));
        let order: Vec<&str> = reg.iter().map(|(k, _)| k).collect();
        assert_eq!(order, ["b", "a"]);
    }

    #[test]
    fn registry_insert_existing_key_replaces_value() {
        let mut reg = KeyRegistry::new(2);
        reg.insert("a", 1u32, 1, never_idle).unwrap();
        reg.insert("b", 2, 2, never_idle).unwrap();
        assert_eq!(*reg.insert("a", 7, 3, never_idle).unwrap(), 7);
        assert_eq!(reg.len(), 2);
        assert_eq!(reg.lru_key(), Some("b"));
    }

    #[test]
    fn registry_remove_frees_a_slot_for_reuse() {
        let mut reg = KeyRegistry::new(2);
        reg.insert("a", 1u32, 1, never_idle).unwrap();
        reg.insert("b", 2, 2, never_idle).unwrap();
        let slot_a = reg.slot("a").unwrap();
        assert_eq!(reg.remove("a"), Some(1));
        assert_eq!(reg.remove("a"), None);
        reg.insert("c", 3, 3, never_idle).unwrap();
        assert_eq!(reg.slot("c"), Some(slot_a));
        let order: Vec<(&str, u32)> = reg.iter().map(|(k, v)| (k, *v)).collect();
        assert_eq!(order, [("c", 3), ("b", 2)]);
    }

    #[test]
    fn registry_slots_stay_below_capacity_and_stable() {
        let mut reg = KeyRegistry::new(3);
        reg.insert("a", 0u32, 0, always_idle).unwrap();
        let slot = reg.slot("a").unwrap();
        for i in 0..10u32 {
            reg.get_mut("a", u64::from(i));
            reg.insert(&format!("k{i}"), i, u64::from(i), |v: &u32| *v != 0)
                .ok();
            assert_eq!(reg.slot("a"), Some(slot));
            for (k, _) in reg.iter() {
                assert!(reg.slot(k).unwrap() < 3);
            }
        }
    }

    #[test]
    fn registry_never_exceeds_capacity_under_10000_inserts() {
        let mut reg = KeyRegistry::new(100);
        for i in 0..10_000u32 {
            let key = format!("host-{i}");
            // Every 7th key is busy forever; the rest are idle.
            reg.insert(&key, i, u64::from(i), |v: &u32| !v.is_multiple_of(7))
                .ok();
            assert!(reg.len() <= 100);
        }
        assert_eq!(reg.len(), 100);
        assert_eq!(reg.iter().count(), 100);
    }

    #[test]
    fn registry_with_zero_capacity_refuses_everything() {
        let mut reg: KeyRegistry<u32> = KeyRegistry::new(0);
        assert_eq!(reg.insert("a", 1, 1, always_idle).map(|_| ()), Err(Full));
        assert!(reg.is_empty());
    }

    #[test]
    fn registry_for_each_mut_visits_all_without_reordering() {
        let mut reg = KeyRegistry::new(3);
        for (i, k) in ["a", "b", "c"].iter().enumerate() {
            reg.insert(k, i as u32, i as u64, always_idle).unwrap();
        }
        reg.for_each_mut(|_, v| *v += 10);
        let all: Vec<(&str, u32)> = reg.iter().map(|(k, v)| (k, *v)).collect();
        assert_eq!(all, [("c", 12), ("b", 11), ("a", 10)]);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u8, bool),
        Get(u8),
        Remove(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (any::<u8>(), any::<bool>()).prop_map(|(k, busy)| Op::Insert(k, busy)),
            any::<u8>().prop_map(Op::Get),
            any::<u8>().prop_map(Op::Remove),
        ]
    }

    proptest! {
        #[test]
        fn sanitize_output_is_always_a_valid_key(raw in any::<String>()) {
            let out = sanitize_key(&raw);
            prop_assert!(out.len() <= MAX_KEY_LEN);
            prop_assert!(out.chars().all(is_allowed));
            prop_assert_eq!(sanitize_key(&out), out.clone());
            prop_assert_eq!(out.len(), raw.chars().count().min(MAX_KEY_LEN));
        }

        #[test]
        fn sanitize_output_matches_key_regex_for_hostile_ascii(raw in "[ -~;=.]{0,300}") {
            let out = sanitize_key(&raw);
            prop_assert!(out.len() <= 128);
            prop_assert!(out.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._:|-".contains(&b)));
        }

        #[test]
        fn registry_never_exceeds_capacity(cap in 0u32..16, ops in proptest::collection::vec(op(), 0..300)) {
            let mut reg: KeyRegistry<bool> = KeyRegistry::new(cap);
            // Model: keys in LRU order (front = most recent), to check exact order.
            let mut model: Vec<(String, bool)> = Vec::new();
            for (t, o) in ops.into_iter().enumerate() {
                let now = t as u64;
                match o {
                    Op::Insert(k, busy) => {
                        let key = format!("k{}", k % 24);
                        let res = reg.insert(&key, busy, now, |b: &bool| !*b).is_ok();
                        if let Some(pos) = model.iter().position(|(m, _)| *m == key) {
                            model.remove(pos);
                            model.insert(0, (key, busy));
                            prop_assert!(res);
                        } else if model.len() < cap as usize {
                            model.insert(0, (key, busy));
                            prop_assert!(res);
                        } else if let Some(pos) = model.iter().rposition(|(_, b)| !*b) {
                            model.remove(pos);
                            model.insert(0, (key, busy));
                            prop_assert!(res);
                        } else {
                            prop_assert!(!res);
                        }
                    }
                    Op::Get(k) => {
                        let key = format!("k{}", k % 24);
                        let hit = reg.get_mut(&key, now).is_some();
                        if let Some(pos) = model.iter().position(|(m, _)| *m == key) {
                            let e = model.remove(pos);
                            model.insert(0, e);
                            prop_assert!(hit);
                        } else {
                            prop_assert!(!hit);
                        }
                    }
                    Op::Remove(k) => {
                        let key = format!("k{}", k % 24);
                        let got = reg.remove(&key).is_some();
                        let pos = model.iter().position(|(m, _)| *m == key);
                        prop_assert_eq!(got, pos.is_some());
                        if let Some(pos) = pos { model.remove(pos); }
                    }
                }
                prop_assert!(reg.len() <= cap as usize);
                let order: Vec<&str> = reg.iter().map(|(k, _)| k).collect();
                let expected: Vec<&str> = model.iter().map(|(k, _)| k.as_str()).collect();
                prop_assert_eq!(order, expected);
                for (k, _) in reg.iter() {
                    prop_assert!(reg.slot(k).unwrap() < cap as usize);
                }
            }
        }
    }
}
