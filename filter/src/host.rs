//! The host interface the filter needs from proxy-wasm, as a trait: the clock, shared data with
//! compare-and-swap, metrics, and the current request's headers, properties and local reply.
//!
//! Why a trait: every decision the filter makes can then run in unit tests (and a fuzz target)
//! against [`fake::FakeHost`], several "workers" sharing one fake store, without Envoy. The real
//! implementation ([`crate::abi::ProxyWasmHost`]) calls the proxy-wasm ABI directly instead of the
//! SDK's wrappers, because those panic on any status they do not expect (and the `String` getters
//! on any header value that is not UTF-8), and a panic kills the worker's VM.

/// Which header map of the current HTTP stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Map {
    RequestHeaders,
    ResponseHeaders,
    ResponseTrailers,
    /// The response of an `http_call` (the sidecar poll), in the root context.
    HttpCallResponseHeaders,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
}

/// Why a shared-data write did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetError {
    /// Someone else wrote the entry since it was read: read again and retry.
    CasMismatch,
    /// The host refused for another reason (any status but Ok and CasMismatch).
    Failed,
}

pub trait Host {
    /// The host's wall clock, in nanoseconds since the Unix epoch.
    fn now_ns(&self) -> u64;
    /// The value and its CAS token; `(None, None)` when the entry does not exist.
    fn get_shared(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>);
    /// Writes `value`. Envoy's rule: with `cas: Some(t)` the write happens only if the entry still
    /// has token `t` — **but only if the entry exists**; an absent entry is written whatever the
    /// token (there is no "create if absent").
    fn set_shared(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SetError>;
    fn define_metric(&self, kind: MetricKind, name: &str) -> Option<u32>;
    fn increment_metric(&self, id: u32, delta: i64);
    fn record_metric(&self, id: u32, value: u64);
    /// A header's value as bytes (header values need not be UTF-8).
    fn header(&self, map: Map, name: &str) -> Option<Vec<u8>>;
    /// Every header of `map` in one call, in proxy-wasm's map serialization (see
    /// [`parse_pairs`]).
    fn header_pairs(&self, map: Map) -> Option<Vec<u8>>;
    /// Sets a header, replacing every value it had.
    fn replace_header(&self, map: Map, name: &str, value: &[u8]);
    fn remove_header(&self, map: Map, name: &str);
    fn add_header(&self, map: Map, name: &str, value: &[u8]);
    /// A property by its serialized path (the segments joined by NUL bytes, see
    /// [`crate::request::PropertyPath`]).
    fn property(&self, path: &[u8]) -> Option<Vec<u8>>;
    /// Answers the request locally.
    fn send_local_response(&self, status: u32, headers: &[(&str, &[u8])], body: &[u8]);
    /// Registers this VM's shared queue `name` (from the root context, whose `on_queue_ready`
    /// then hears of every enqueue) and returns its token. proxy-wasm-cpp-host keys queues by VM
    /// id and name: registering a name again moves the notifications to the new registrant.
    fn register_queue(&self, name: &str) -> Option<u32>;
    /// The token of queue `name` of this VM id, if some VM registered it.
    fn resolve_queue(&self, name: &str) -> Option<u32>;
    /// Appends to a queue; false when it no longer exists.
    fn enqueue(&self, token: u32, value: &[u8]) -> bool;
    /// Takes the oldest item of a queue; `None` when it is empty or gone.
    fn dequeue(&self, token: u32) -> Option<Vec<u8>>;
}

/// Parses proxy-wasm's map serialization: a `u32` count, `count` pairs of `u32` sizes, then each
/// name and value followed by a NUL. Bounded: anything inconsistent ends the list. An iterator,
/// so the request path reads the header map without allocating.
pub fn pairs(buf: &[u8]) -> Pairs<'_> {
    let n = u32_at(buf, 0).unwrap_or(0);
    let data = n.checked_mul(8).and_then(|x| x.checked_add(4));
    Pairs {
        buf,
        n: n.min(buf.len() / 8),
        i: 0,
        data: data.unwrap_or(usize::MAX),
    }
}

/// The pairs of a serialized header map ([`pairs`]).
pub struct Pairs<'a> {
    buf: &'a [u8],
    n: usize,
    i: usize,
    /// Where the next name starts.
    data: usize,
}

fn u32_at(buf: &[u8], i: usize) -> Option<usize> {
    let b = buf.get(i..i.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
}

impl<'a> Iterator for Pairs<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.i >= self.n {
            return None;
        }
        let at = 4 + 8 * self.i;
        let (Some(kl), Some(vl)) = (u32_at(self.buf, at), u32_at(self.buf, at + 4)) else {
            self.i = self.n;
            return None;
        };
        let data = self.data;
        let item = (|| {
            let k = self.buf.get(data..data.checked_add(kl)?)?;
            let vs = data.checked_add(kl)?.checked_add(1)?;
            let v = self.buf.get(vs..vs.checked_add(vl)?)?;
            Some((k, v, vs + vl + 1))
        })();
        match item {
            Some((k, v, next)) => {
                self.i += 1;
                self.data = next;
                Some((k, v))
            }
            None => {
                self.i = self.n;
                None
            }
        }
    }
}

/// Every pair of a serialized header map, collected ([`pairs`]).
pub fn parse_pairs(buf: &[u8]) -> Vec<(&[u8], &[u8])> {
    pairs(buf).collect()
}

/// proxy-wasm's map serialization of `pairs` (what [`parse_pairs`] reads).
pub fn serialize_pairs(pairs: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        4 + pairs
            .iter()
            .map(|(n, v)| n.len() + v.len() + 10)
            .sum::<usize>(),
    );
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (n, v) in pairs {
        out.extend_from_slice(&(n.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (n, v) in pairs {
        out.extend_from_slice(n.as_bytes());
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

#[cfg(any(test, feature = "fake-host"))]
pub mod fake {
    //! An in-memory host for unit tests and the fuzz target (never in the release wasm).
    //!
    //! It follows Envoy's rules where they matter: the CAS rule of proxy-wasm-cpp-host
    //! (`shared_data.cc`: a token is checked only when the entry exists, an absent entry is a
    //! blind write, tokens are never 0), and header maps that hold bytes. It also counts every
    //! host call by kind, and can run another "worker" between a read and the following write of
    //! an entry ([`FakeHost::before_set`]), which turns races into deterministic tests.

    use super::{Host, Map, MetricKind, SetError};
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::rc::Rc;

    type Hook = Box<dyn FnOnce()>;
    /// Hooks waiting for an entry: (name part, reads or writes still to skip, the hook).
    type Hooks = Rc<RefCell<Vec<(String, u32, Option<Hook>)>>>;
    /// A local reply: status, headers, body.
    pub type LocalResponse = (u32, Vec<(String, Vec<u8>)>, Vec<u8>);

    /// One host shared by several engines (workers): clones share the store.
    #[derive(Clone, Default)]
    pub struct FakeHost {
        pub inner: Rc<RefCell<FakeStore>>,
        hooks: Hooks,
        get_hooks: Hooks,
    }

    /// What one request's stream holds, and what the filter did to it.
    #[derive(Default, Debug, Clone)]
    pub struct FakeStream {
        pub maps: HashMap<Map, Vec<(String, Vec<u8>)>>,
        pub properties: HashMap<Vec<u8>, Vec<u8>>,
        pub local_response: Option<LocalResponse>,
    }

    #[derive(Default)]
    pub struct FakeStore {
        pub shared: HashMap<String, (Vec<u8>, u32)>,
        pub next_cas: u32,
        pub metric_names: Vec<(MetricKind, String)>,
        pub metric_values: HashMap<String, i64>,
        /// Host calls by kind (`get_shared`, `set_shared`, `header`, `property`, ...).
        pub calls: HashMap<&'static str, u64>,
        /// Writes refused with a mismatch, per entry name.
        pub cas_mismatches: u64,
        /// Wall clock in ns.
        pub now_ns: u64,
        /// Makes every `set_shared` on an entry whose name contains this fail with `Failed`.
        pub fail_sets_containing: Option<String>,
        /// Makes every `set_shared` on an entry whose name contains this fail with `CasMismatch`.
        pub mismatch_sets_containing: Option<String>,
        pub stream: FakeStream,
        /// Shared queues as proxy-wasm-cpp-host keeps them: name → token (registering a name
        /// again keeps its token and data), token → items.
        pub queue_tokens: HashMap<String, u32>,
        pub queues: HashMap<u32, std::collections::VecDeque<Vec<u8>>>,
        /// Tokens with an enqueue not yet delivered (Envoy posts `on_queue_ready` to the
        /// registrant's thread; tests deliver them with [`FakeHost::take_ready`]).
        pub queue_ready: Vec<u32>,
        /// Makes `register_queue` fail (a host without shared queues).
        pub refuse_queues: bool,
    }

    impl FakeHost {
        pub fn metric(&self, name: &str) -> Option<i64> {
            self.inner.borrow().metric_values.get(name).copied()
        }

        pub fn set_now_ms(&self, ms: u64) {
            self.inner.borrow_mut().now_ns = ms.saturating_mul(1_000_000);
        }

        /// Host calls of `kind` so far.
        pub fn calls(&self, kind: &str) -> u64 {
            self.inner.borrow().calls.get(kind).copied().unwrap_or(0)
        }

        /// Every host call so far.
        pub fn total_calls(&self) -> u64 {
            self.inner.borrow().calls.values().sum()
        }

        pub fn reset_calls(&self) {
            self.inner.borrow_mut().calls.clear();
        }

        /// Runs `f` right before the `nth` (0-based) later write to an entry whose name contains
        /// `name_contains`, i.e. between the writer's read and its write: another worker's
        /// whole request or flush can happen there.
        pub fn before_set(&self, name_contains: &str, nth: u32, f: impl FnOnce() + 'static) {
            self.hooks
                .borrow_mut()
                .push((name_contains.to_string(), nth, Some(Box::new(f))));
        }

        /// Starts a new request stream with these request headers and properties.
        pub fn new_stream(&self, request_headers: &[(&str, &[u8])], properties: &[(&[u8], &[u8])]) {
            let mut s = self.inner.borrow_mut();
            let mut stream = FakeStream::default();
            stream.maps.insert(
                Map::RequestHeaders,
                request_headers
                    .iter()
                    .map(|(k, v)| (k.to_ascii_lowercase(), v.to_vec()))
                    .collect(),
            );
            for (k, v) in properties {
                stream.properties.insert(k.to_vec(), v.to_vec());
            }
            s.stream = stream;
        }

        /// Sets the response headers (and trailers) the upstream sent.
        pub fn set_map(&self, map: Map, headers: &[(&str, &[u8])]) {
            self.inner.borrow_mut().stream.maps.insert(
                map,
                headers
                    .iter()
                    .map(|(k, v)| (k.to_ascii_lowercase(), v.to_vec()))
                    .collect(),
            );
        }

        pub fn set_property(&self, path: &[u8], value: &[u8]) {
            self.inner
                .borrow_mut()
                .stream
                .properties
                .insert(path.to_vec(), value.to_vec());
        }

        pub fn stream(&self) -> FakeStream {
            self.inner.borrow().stream.clone()
        }

        /// A header of the current stream as the router would see it.
        pub fn stream_header(&self, map: Map, name: &str) -> Option<Vec<u8>> {
            let s = self.inner.borrow();
            s.stream
                .maps
                .get(&map)
                .and_then(|m| m.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
        }

        /// The queue notifications not delivered yet, oldest first (and forgets them).
        pub fn take_ready(&self) -> Vec<u32> {
            std::mem::take(&mut self.inner.borrow_mut().queue_ready)
        }

        fn count(&self, kind: &'static str) {
            *self.inner.borrow_mut().calls.entry(kind).or_insert(0) += 1;
        }

        /// Runs `f` right after the `nth` (0-based) later read of an entry whose name contains
        /// `name_contains`, before the reader sees the value it got: another worker can change
        /// shared data between two reads (the value handed back is the one read before `f`).
        pub fn after_get(&self, name_contains: &str, nth: u32, f: impl FnOnce() + 'static) {
            self.get_hooks
                .borrow_mut()
                .push((name_contains.to_string(), nth, Some(Box::new(f))));
        }

        fn take_hook(&self, key: &str) -> Option<Hook> {
            Self::take_from(&self.hooks, key)
        }

        fn take_from(hooks: &Hooks, key: &str) -> Option<Hook> {
            let mut hooks = hooks.borrow_mut();
            for h in hooks.iter_mut() {
                if key.contains(h.0.as_str()) && h.2.is_some() {
                    if h.1 == 0 {
                        return h.2.take();
                    }
                    h.1 -= 1;
                }
            }
            None
        }
    }

    impl Host for FakeHost {
        fn now_ns(&self) -> u64 {
            self.count("now");
            self.inner.borrow().now_ns
        }

        fn get_shared(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
            self.count("get_shared");
            let got = {
                let s = self.inner.borrow();
                match s.shared.get(key) {
                    Some((v, c)) => (Some(v.clone()), Some(*c)),
                    None => (None, None),
                }
            };
            if let Some(hook) = Self::take_from(&self.get_hooks, key) {
                hook();
            }
            got
        }

        fn set_shared(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SetError> {
            self.count("set_shared");
            // The other worker runs with no borrow held, between our read and this write.
            if let Some(hook) = self.take_hook(key) {
                hook();
            }
            let mut s = self.inner.borrow_mut();
            if s.fail_sets_containing
                .as_deref()
                .is_some_and(|n| key.contains(n))
            {
                return Err(SetError::Failed);
            }
            if s.mismatch_sets_containing
                .as_deref()
                .is_some_and(|n| key.contains(n))
            {
                s.cas_mismatches += 1;
                return Err(SetError::CasMismatch);
            }
            // proxy-wasm-cpp-host: `if (cas && cas != it->second.second) return CasMismatch;`,
            // evaluated only when the key exists.
            if let (Some(want), Some((_, have))) = (cas, s.shared.get(key)) {
                if want != 0 && want != *have {
                    s.cas_mismatches += 1;
                    return Err(SetError::CasMismatch);
                }
            }
            s.next_cas = s.next_cas.wrapping_add(1).max(1);
            let c = s.next_cas;
            s.shared.insert(key.to_string(), (value.to_vec(), c));
            Ok(())
        }

        fn define_metric(&self, kind: MetricKind, name: &str) -> Option<u32> {
            self.count("define_metric");
            let mut s = self.inner.borrow_mut();
            if let Some(i) = s.metric_names.iter().position(|(_, n)| n == name) {
                return Some(i as u32);
            }
            s.metric_names.push((kind, name.to_string()));
            s.metric_values.insert(name.to_string(), 0);
            Some((s.metric_names.len() - 1) as u32)
        }

        fn increment_metric(&self, id: u32, delta: i64) {
            self.count("increment_metric");
            let mut s = self.inner.borrow_mut();
            if let Some((_, n)) = s.metric_names.get(id as usize).cloned() {
                *s.metric_values.entry(n).or_insert(0) += delta;
            }
        }

        fn record_metric(&self, id: u32, value: u64) {
            self.count("record_metric");
            let mut s = self.inner.borrow_mut();
            if let Some((_, n)) = s.metric_names.get(id as usize).cloned() {
                s.metric_values.insert(n, value as i64);
            }
        }

        fn header(&self, map: Map, name: &str) -> Option<Vec<u8>> {
            self.count("header");
            self.stream_header(map, name)
        }

        fn header_pairs(&self, map: Map) -> Option<Vec<u8>> {
            self.count("header_pairs");
            let s = self.inner.borrow();
            let m = s.stream.maps.get(&map)?;
            let pairs: Vec<(&str, &[u8])> =
                m.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect();
            Some(super::serialize_pairs(&pairs))
        }

        fn replace_header(&self, map: Map, name: &str, value: &[u8]) {
            self.count("replace_header");
            let mut s = self.inner.borrow_mut();
            let m = s.stream.maps.entry(map).or_default();
            m.retain(|(k, _)| k != name);
            m.push((name.to_string(), value.to_vec()));
        }

        fn remove_header(&self, map: Map, name: &str) {
            self.count("remove_header");
            let mut s = self.inner.borrow_mut();
            s.stream
                .maps
                .entry(map)
                .or_default()
                .retain(|(k, _)| k != name);
        }

        fn add_header(&self, map: Map, name: &str, value: &[u8]) {
            self.count("add_header");
            let mut s = self.inner.borrow_mut();
            s.stream
                .maps
                .entry(map)
                .or_default()
                .push((name.to_string(), value.to_vec()));
        }

        fn property(&self, path: &[u8]) -> Option<Vec<u8>> {
            self.count("property");
            self.inner.borrow().stream.properties.get(path).cloned()
        }

        fn send_local_response(&self, status: u32, headers: &[(&str, &[u8])], body: &[u8]) {
            self.count("send_local_response");
            self.inner.borrow_mut().stream.local_response = Some((
                status,
                headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_vec()))
                    .collect(),
                body.to_vec(),
            ));
        }

        fn register_queue(&self, name: &str) -> Option<u32> {
            self.count("register_queue");
            let mut s = self.inner.borrow_mut();
            if s.refuse_queues {
                return None;
            }
            if let Some(t) = s.queue_tokens.get(name) {
                return Some(*t);
            }
            let t = s.queue_tokens.len() as u32 + 1;
            s.queue_tokens.insert(name.to_string(), t);
            s.queues.insert(t, Default::default());
            Some(t)
        }

        fn resolve_queue(&self, name: &str) -> Option<u32> {
            self.count("resolve_queue");
            self.inner.borrow().queue_tokens.get(name).copied()
        }

        fn enqueue(&self, token: u32, value: &[u8]) -> bool {
            self.count("enqueue");
            let mut s = self.inner.borrow_mut();
            let Some(q) = s.queues.get_mut(&token) else {
                return false;
            };
            q.push_back(value.to_vec());
            s.queue_ready.push(token);
            true
        }

        fn dequeue(&self, token: u32) -> Option<Vec<u8>> {
            self.count("dequeue");
            self.inner.borrow_mut().queues.get_mut(&token)?.pop_front()
        }
    }
}

#[cfg(any(test, feature = "fake-host"))]
pub use fake::FakeHost;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn header_pairs_round_trip_and_garbage_never_panics() {
        let pairs: Vec<(&str, &[u8])> =
            vec![(":method", b"GET"), ("x-obs", b"\xff\x00"), ("e", b"")];
        let b = serialize_pairs(&pairs);
        let back = parse_pairs(&b);
        assert_eq!(back.len(), 3);
        assert_eq!(back[1], (&b"x-obs"[..], &b"\xff\x00"[..]));
        for n in 0..b.len() {
            let _ = parse_pairs(&b[..n]);
        }
        assert!(parse_pairs(&[0xff, 0xff, 0xff, 0xff, 1, 0, 0, 0]).is_empty());
    }
}
