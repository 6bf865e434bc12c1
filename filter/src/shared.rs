//! Shared data: entry names, the one compare-and-swap helper, and pre-creation.
//!
//! Envoy's shared data has no "create if absent": proxy-wasm-cpp-host checks a CAS token only when
//! the entry already exists, so the first write to an entry is blind and can overwrite whatever a
//! racing worker wrote in between. That is why every entry the filter uses at run time is created
//! in `on_configure`, before any traffic, with the same bytes from every VM (a blind write of an
//! empty slot over an empty slot is harmless), and why [`cas_update`] refuses to write an entry it
//! found absent: after configure, every runtime write is a real compare-and-swap.
//!
//! Names are versioned (`meshbreaker/<plugin>/v3/…`) so that a rollout mixing filter versions never
//! has one version misread or overwrite the other's entries. A window entry is named by its
//! geometry's window table (`w/g<i>/<slot>`, the geometry's position in [`Meta`]): VMs of an old
//! and a new configuration draining side by side each merge into their own window and never reset
//! each other, while the breaker state (`s/<slot>`) stays shared, so a reload keeps open circuits
//! open; the tables of geometries no configuration uses any more are reused, not added to.

use std::fmt::Write as _;

use policy_core::{flow, keys};

use crate::host::{Host, SetError};

pub use policy_core::flow::{newer, Exhausted, Geometry, Update, CAS_ATTEMPTS};

/// The encoding generation in entry names; bump with `policy_core::encoding::VERSION`.
const NAME_VERSION: &str = "v3";

/// Shared-data entry names, prefixed per plugin so two plugins in one Envoy never collide.
#[derive(Debug, Clone)]
pub struct Names {
    prefix: String,
}

impl Names {
    pub fn new(plugin: &str) -> Names {
        Names {
            prefix: format!("meshbreaker/{}/{NAME_VERSION}/", keys::sanitize_key(plugin)),
        }
    }

    pub fn state(&self, slot: u32, out: &mut String) {
        out.clear();
        let _ = write!(out, "{}s/{slot}", self.prefix);
    }

    /// The window of `slot` in window table `table` (a geometry's position in [`Meta::geoms`]).
    pub fn window(&self, table: usize, slot: u32, out: &mut String) {
        out.clear();
        let _ = write!(out, "{}w/g{table}/{slot}", self.prefix);
    }

    /// The marker saying every state entry (`None`) or every entry of window table `t` of a
    /// table of `size` slots exists.
    pub fn made(&self, table: Option<usize>, size: u32) -> String {
        match table {
            None => format!("{}made/s/{size}", self.prefix),
            Some(t) => format!("{}made/w/g{t}/{size}", self.prefix),
        }
    }

    /// The process-wide table description: slot hash seed and the table sizes in use.
    pub fn meta(&self) -> String {
        format!("{}meta", self.prefix)
    }

    pub fn label_marker(&self, key: &str) -> String {
        format!("{}label/{key}", self.prefix)
    }

    pub fn label_count(&self) -> String {
        format!("{}labels", self.prefix)
    }

    pub fn resets(&self) -> String {
        format!("{}resets", self.prefix)
    }

    pub fn poller_lease(&self) -> String {
        format!("{}poller", self.prefix)
    }

    /// How many worker indexes exist ([`crate::peers`]).
    pub fn peers(&self) -> String {
        format!("{}peers", self.prefix)
    }

    /// Worker index `i`'s heartbeat entry.
    pub fn peer(&self, i: u32, out: &mut String) {
        out.clear();
        let _ = write!(out, "{}peer/{i}", self.prefix);
    }

    /// Worker index `i`'s shared queue (a queue name, not a shared-data entry).
    pub fn peer_queue(&self, i: u32, out: &mut String) {
        out.clear();
        let _ = write!(out, "{}q/{i}", self.prefix);
    }
}

/// Read-modify-write of one shared entry with compare-and-swap ([`policy_core::flow::cas_update`]
/// on the entry `name`): reads it, decodes it, lets `f` change it, and writes it back only with
/// the token it was read with, retrying on a mismatch.
///
/// `on_exhausted` is the explicit policy for when that cannot complete; it gets the last value
/// that decoded (if any), so a caller can, say, fail open only when that value was CLOSED.
pub fn cas_update<H: Host, T, R>(
    host: &H,
    name: &str,
    enc: &mut Vec<u8>,
    decode: impl Fn(&[u8]) -> Option<T>,
    encode: impl Fn(&T, &mut Vec<u8>),
    mut f: impl FnMut(&mut T) -> Update<R>,
    on_exhausted: impl FnOnce(Exhausted, Option<T>) -> R,
) -> R {
    let mut entry = Entries {
        host,
        state: name,
        window: name,
    };
    flow::cas_update(
        &mut entry,
        flow::Entry::State,
        None,
        enc,
        decode,
        encode,
        |_, v| f(v),
        on_exhausted,
    )
}

/// A key's two shared entries (its state `s/<slot>` and its window `w/<geometry>/<slot>`) as the
/// flow's store: reads and compare-and-swap writes on proxy-wasm shared data.
pub struct Entries<'a, H: Host> {
    pub host: &'a H,
    pub state: &'a str,
    pub window: &'a str,
}

impl<H: Host> flow::Store for Entries<'_, H> {
    fn read(&mut self, entry: flow::Entry) -> flow::Read {
        self.host.get_shared(match entry {
            flow::Entry::State => self.state,
            flow::Entry::Window => self.window,
        })
    }

    fn write(
        &mut self,
        entry: flow::Entry,
        bytes: &[u8],
        version: Option<u32>,
    ) -> Result<(), flow::WriteError> {
        let name = match entry {
            flow::Entry::State => self.state,
            flow::Entry::Window => self.window,
        };
        self.host
            .set_shared(name, bytes, version)
            .map_err(|e| match e {
                SetError::CasMismatch => flow::WriteError::Mismatch,
                SetError::Failed => flow::WriteError::Failed,
            })
    }
}

/// Creates `name` with `value` if it does not exist. Only for configure time (see the module
/// docs): the write is blind, so `value` must be what every VM would write.
pub fn create_if_absent<H: Host>(host: &H, name: &str, value: &[u8]) -> bool {
    match host.get_shared(name) {
        (Some(_), _) => false,
        (None, _) => host.set_shared(name, value, None).is_ok(),
    }
}

/// [`create_if_absent`], true when the entry exists afterwards (it did, or the write went through).
pub fn ensure_exists<H: Host>(host: &H, name: &str, value: &[u8]) -> bool {
    match host.get_shared(name) {
        (Some(_), _) => true,
        (None, _) => host.set_shared(name, value, None).is_ok(),
    }
}

/// The process-wide slot table description, `…/meta`: `seed,seed…|size,size…|geometries` in text.
///
/// The seed keys the slot hash so a client cannot aim collisions at a victim key. Shared data
/// has no create-if-absent, so worker VMs starting at the same instant can each write their own
/// first seed; the losers add theirs back with a real compare-and-swap once the entry exists. So
/// the entry lists every seed a VM may have claimed slots under (the first is the one new claims
/// use), and a lookup probes under each: a key is always found where any worker put it. The sizes
/// are every `max_keys` a configuration used (newest last), for the same reason across reloads.
///
/// The geometries are the window tables: a window entry is named by its geometry's position
/// here (`w/g<i>/<slot>`), so that a reload changing `window`, `buckets` or the latency threshold
/// reuses the entries of a geometry no configuration uses any more instead of adding `max_keys`
/// entries that Envoy can never free. Each position remembers when a configuration last asked for
/// it; a new geometry takes an empty position, or a new one while there are fewer than the
/// configuration's geometries plus [`SPARE_GEOMETRIES`] (room for configurations still draining),
/// or else the position asked for longest ago. The window's bytes carry their geometry, so a
/// reused entry is started afresh at its first merge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub seeds: Vec<u64>,
    pub sizes: Vec<u32>,
    /// Window tables: a geometry and the sequence number of the configuration that last asked
    /// for it (`None`: free).
    pub geoms: Vec<Option<(Geometry, u64)>>,
}

/// Window tables kept beyond the current configuration's geometries, for configurations still
/// draining.
pub const SPARE_GEOMETRIES: usize = 4;
/// The most window tables `…/meta` may list (it is input: bounded when decoded).
pub const MAX_GEOMETRIES: usize = 1024;

fn geometry_text(g: &Geometry, seq: u64, out: &mut String) {
    let _ = write!(
        out,
        "{}x{}t{}@{seq}",
        g.bucket_ms, g.buckets, g.threshold_us
    );
}

fn parse_geometry(s: &str) -> Option<Option<(Geometry, u64)>> {
    if s == "-" {
        return Some(None);
    }
    let (g, seq) = s.split_once('@')?;
    let (bucket_ms, rest) = g.split_once('x')?;
    let (buckets, threshold_us) = rest.split_once('t')?;
    Some(Some((
        Geometry {
            bucket_ms: bucket_ms.parse().ok()?,
            buckets: buckets.parse().ok()?,
            threshold_us: threshold_us.parse().ok()?,
        },
        seq.parse().ok()?,
    )))
}

/// Seeds and table sizes remembered in [`Meta`] (each).
pub const MAX_SIZES: usize = 4;

fn list<T: std::fmt::Display>(out: &mut String, items: &[T]) {
    for (i, n) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{n}");
    }
}

fn parse_list<T: std::str::FromStr>(s: &str) -> Option<Vec<T>> {
    s.split(',')
        .filter(|x| !x.is_empty())
        .map(|x| x.parse().ok())
        .collect()
}

impl Meta {
    /// The seed new claims use.
    pub fn seed(&self) -> u64 {
        self.seeds.first().copied().unwrap_or(0)
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.clear();
        let mut s = String::new();
        list(&mut s, &self.seeds);
        s.push('|');
        list(&mut s, &self.sizes);
        s.push('|');
        for (i, g) in self.geoms.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            match g {
                Some((g, seq)) => geometry_text(g, *seq, &mut s),
                None => s.push('-'),
            }
        }
        out.extend_from_slice(s.as_bytes());
    }

    pub fn decode(b: &[u8]) -> Option<Meta> {
        let s = std::str::from_utf8(b).ok()?;
        let mut parts = s.split('|');
        let seeds: Vec<u64> = parse_list(parts.next()?)?;
        let sizes: Vec<u32> = parse_list(parts.next()?)?;
        let geoms = match parts.next() {
            None | Some("") => Vec::new(),
            Some(g) => g
                .split(',')
                .take(MAX_GEOMETRIES + 1)
                .map(parse_geometry)
                .collect::<Option<Vec<_>>>()?,
        };
        if seeds.is_empty()
            || seeds.len() > MAX_SIZES
            || sizes.len() > MAX_SIZES
            || sizes.contains(&0)
            || geoms.len() > MAX_GEOMETRIES
            || parts.next().is_some()
        {
            return None;
        }
        Some(Meta {
            seeds,
            sizes,
            geoms,
        })
    }

    /// Records that a configuration uses `want` (its distinct geometries, in its order): returns
    /// the table with every one of them placed, and the position of each.
    pub fn with_geometries(&self, want: &[Geometry]) -> (Meta, Vec<usize>) {
        let mut m = self.clone();
        let seq = m
            .geoms
            .iter()
            .flatten()
            .map(|(_, s)| *s)
            .max()
            .unwrap_or(0)
            .saturating_add(1);
        let mut at = Vec::with_capacity(want.len());
        for g in want {
            if let Some(i) = m.geoms.iter().position(|x| x.is_some_and(|(h, _)| h == *g)) {
                m.geoms[i] = Some((*g, seq));
                at.push(i);
                continue;
            }
            let free = m.geoms.iter().position(Option::is_none);
            let i = match free {
                Some(i) => i,
                None if m.geoms.len() < want.len() + SPARE_GEOMETRIES => {
                    m.geoms.push(None);
                    m.geoms.len() - 1
                }
                None => m
                    .geoms
                    .iter()
                    .enumerate()
                    .filter_map(|(i, x)| x.map(|(_, s)| (s, i)))
                    .filter(|(s, _)| *s < seq)
                    .min()
                    .map_or(m.geoms.len(), |(_, i)| i),
            };
            if i == m.geoms.len() {
                m.geoms.push(None);
            }
            m.geoms[i] = Some((*g, seq));
            at.push(i);
        }
        (m, at)
    }

    /// Records `size` as the newest table size.
    pub fn with_size(&self, size: u32) -> Meta {
        let mut sizes: Vec<u32> = self.sizes.iter().copied().filter(|n| *n != size).collect();
        sizes.push(size);
        while sizes.len() > MAX_SIZES {
            sizes.remove(0);
        }
        Meta {
            seeds: self.seeds.clone(),
            sizes,
            geoms: self.geoms.clone(),
        }
    }

    /// Adds `seed` (one this VM claimed slots under) after the others, if missing.
    pub fn with_seed(&self, seed: u64) -> Meta {
        let mut seeds = self.seeds.clone();
        if !seeds.contains(&seed) {
            seeds.push(seed);
        }
        while seeds.len() > MAX_SIZES {
            seeds.remove(1);
        }
        Meta {
            seeds,
            sizes: self.sizes.clone(),
            geoms: self.geoms.clone(),
        }
    }
}

/// The slot hash: FNV-1a over the key, keyed by the process's seed, then mixed (SplitMix64's
/// finalizer) so that the low bits used for `% max_keys` depend on every input bit.
pub fn slot_hash(seed: u64, key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= seed.rotate_left(29);
    h = (h ^ (h >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    h ^ (h >> 31)
}

/// Buffers reused across calls so the request path does not allocate: encoding, histogram
/// merges, entry names.
#[derive(Default)]
pub(crate) struct Scratch {
    pub bins: Vec<(u64, u64)>,
    pub enc: Vec<u8>,
    pub name: String,
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::host::FakeHost;

    #[test]
    fn meta_round_trips_and_keeps_the_newest_sizes() {
        let m = Meta {
            seeds: vec![42],
            sizes: vec![1024],
            geoms: Vec::new(),
        };
        let mut b = Vec::new();
        m.encode(&mut b);
        assert_eq!(Meta::decode(&b), Some(m.clone()));
        let m2 = m.with_size(10).with_size(20).with_size(30).with_size(1024);
        assert_eq!(m2.sizes, vec![10, 20, 30, 1024]);
        assert_eq!(m2.with_size(5).sizes, vec![20, 30, 1024, 5]);
        let m3 = m.with_seed(7).with_seed(42);
        assert_eq!((m3.seed(), m3.seeds.clone()), (42, vec![42, 7]));
        m3.encode(&mut b);
        assert_eq!(Meta::decode(&b), Some(m3));
        assert_eq!(Meta::decode(b"x|1"), None);
        assert_eq!(Meta::decode(b"1|0"), None);
        assert_eq!(Meta::decode(b"|1"), None);
    }

    fn geometry(bucket_ms: u64) -> Geometry {
        Geometry {
            bucket_ms,
            buckets: 10,
            threshold_us: 800_000,
        }
    }

    #[test]
    fn window_tables_are_reused_once_no_configuration_asks_for_them() {
        // Each geometry a reload introduced added max_keys window entries that Envoy can never
        // free. A configuration's own geometries keep their tables; others are reused.
        let mut m = Meta {
            seeds: vec![1],
            sizes: vec![8],
            geoms: Vec::new(),
        };
        let base = geometry(1_000);
        for i in 0..20u64 {
            let (next, at) = m.with_geometries(&[base, geometry(2_000 + i)]);
            assert_eq!(
                at[0], 0,
                "the geometry every configuration uses keeps its table"
            );
            m = next;
            let mut b = Vec::new();
            m.encode(&mut b);
            assert_eq!(Meta::decode(&b), Some(m.clone()));
        }
        assert_eq!(
            m.geoms.len(),
            2 + SPARE_GEOMETRIES,
            "bounded, whatever the reloads"
        );
        // The most recent ones survive (configurations still draining).
        let (_, at) = m.with_geometries(&[geometry(2_019), geometry(2_018)]);
        let (again, at2) = m.with_geometries(&[geometry(2_019), geometry(2_018)]);
        assert_eq!(at, at2);
        assert_eq!(again.geoms.len(), m.geoms.len(), "found, not added");
        assert_eq!(
            Meta::decode(b"1|8"),
            Some(Meta {
                seeds: vec![1],
                sizes: vec![8],
                geoms: vec![]
            })
        );
        assert_eq!(Meta::decode(b"1|8|garbage"), None);
    }

    #[test]
    fn cas_update_never_writes_an_absent_or_undecodable_entry() {
        let host = FakeHost::default();
        let mut enc = Vec::new();
        let r = cas_update(
            &host,
            "e",
            &mut enc,
            |b| Some(b.to_vec()),
            |v, out| *out = v.clone(),
            |v| {
                v.push(1);
                Update::Write(true)
            },
            |why, _| {
                assert_eq!(why, Exhausted::Absent);
                false
            },
        );
        assert!(!r);
        assert!(host.inner.borrow().shared.is_empty());
        host.set_shared("e", b"garbage", None).unwrap();
        let r = cas_update(
            &host,
            "e",
            &mut enc,
            |_| None::<Vec<u8>>,
            |v, out| *out = v.clone(),
            |_| Update::Write(true),
            |why, _| {
                assert_eq!(why, Exhausted::Undecodable);
                false
            },
        );
        assert!(!r);
        assert_eq!(host.get_shared("e").0.as_deref(), Some(&b"garbage"[..]));
    }

    #[test]
    fn cas_update_redoes_the_change_when_another_worker_wrote_in_between() {
        let host = FakeHost::default();
        host.set_shared("n", b"0", None).unwrap();
        let other = host.clone();
        host.before_set("n", 0, move || {
            other.set_shared("n", b"5", None).unwrap();
        });
        let mut enc = Vec::new();
        let parse = |b: &[u8]| std::str::from_utf8(b).ok()?.parse::<u32>().ok();
        cas_update(
            &host,
            "n",
            &mut enc,
            parse,
            |v, out| *out = v.to_string().into_bytes(),
            |v| {
                *v += 1;
                Update::Write(())
            },
            |_, _| panic!("exhausted"),
        );
        assert_eq!(host.get_shared("n").0.as_deref(), Some(&b"6"[..]));
    }

    #[test]
    fn cas_exhaustion_hands_the_last_decoded_value_to_the_policy() {
        let host = FakeHost::default();
        host.set_shared("n", b"7", None).unwrap();
        host.inner.borrow_mut().mismatch_sets_containing = Some("n".into());
        let mut enc = Vec::new();
        let got = cas_update(
            &host,
            "n",
            &mut enc,
            |b| std::str::from_utf8(b).ok()?.parse::<u32>().ok(),
            |v, out| *out = v.to_string().into_bytes(),
            |_| Update::Write(0),
            |why, last| {
                assert_eq!(why, Exhausted::Contention);
                last.unwrap_or(0)
            },
        );
        assert_eq!(got, 7);
        assert_eq!(host.calls("set_shared"), 1 + CAS_ATTEMPTS as u64);
    }

    #[test]
    fn slot_hash_depends_on_the_seed() {
        assert_ne!(slot_hash(1, "victim") % 1024, slot_hash(2, "victim") % 1024);
        assert_eq!(slot_hash(7, "k"), slot_hash(7, "k"));
    }

    #[test]
    fn generations_compare_across_wrap_around() {
        assert!(newer(1, 0));
        assert!(newer(0, u32::MAX));
        assert!(!newer(5, 5));
        assert!(!newer(4, 5));
    }
}
