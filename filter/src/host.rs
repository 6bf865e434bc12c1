//! The small host interface the engine needs from proxy-wasm: shared data with compare-and-swap
//! and metrics. Keeping it a trait lets the engine's logic run in unit tests with [`FakeHost`],
//! several "workers" sharing one fake store, without Envoy.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

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
    /// The host refused for another reason.
    Failed,
}

pub trait Host {
    /// The value and its CAS token; `(None, None)` when the entry does not exist.
    fn get_shared(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>);
    /// Writes `value`; with `cas: Some(t)` only if the entry still has token `t`.
    fn set_shared(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SetError>;
    fn define_metric(&self, kind: MetricKind, name: &str) -> Option<u32>;
    fn increment_metric(&self, id: u32, delta: i64);
    fn record_metric(&self, id: u32, value: u64);
}

/// The real host: proxy-wasm host calls into Envoy.
pub struct ProxyWasmHost;

impl Host for ProxyWasmHost {
    fn get_shared(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        proxy_wasm::hostcalls::get_shared_data(key).unwrap_or((None, None))
    }

    fn set_shared(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SetError> {
        match proxy_wasm::hostcalls::set_shared_data(key, Some(value), cas) {
            Ok(()) => Ok(()),
            Err(proxy_wasm::types::Status::CasMismatch) => Err(SetError::CasMismatch),
            Err(_) => Err(SetError::Failed),
        }
    }

    fn define_metric(&self, kind: MetricKind, name: &str) -> Option<u32> {
        let t = match kind {
            MetricKind::Counter => proxy_wasm::types::MetricType::Counter,
            MetricKind::Gauge => proxy_wasm::types::MetricType::Gauge,
        };
        proxy_wasm::hostcalls::define_metric(t, name).ok()
    }

    fn increment_metric(&self, id: u32, delta: i64) {
        let _ = proxy_wasm::hostcalls::increment_metric(id, delta);
    }

    fn record_metric(&self, id: u32, value: u64) {
        let _ = proxy_wasm::hostcalls::record_metric(id, value);
    }
}

/// An in-memory host for unit tests: one store shared by several engines (workers), with Envoy's
/// CAS semantics (a token that changes on every write) and metrics by name.
#[derive(Clone, Default)]
pub struct FakeHost {
    pub inner: Rc<RefCell<FakeStore>>,
}

#[derive(Default)]
pub struct FakeStore {
    pub shared: HashMap<String, (Vec<u8>, u32)>,
    pub next_cas: u32,
    pub metric_names: Vec<(MetricKind, String)>,
    pub metric_values: HashMap<String, i64>,
    pub gets: u64,
    pub sets: u64,
}

impl FakeHost {
    pub fn metric(&self, name: &str) -> Option<i64> {
        self.inner.borrow().metric_values.get(name).copied()
    }
}

impl Host for FakeHost {
    fn get_shared(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        let mut s = self.inner.borrow_mut();
        s.gets += 1;
        match s.shared.get(key) {
            Some((v, c)) => (Some(v.clone()), Some(*c)),
            None => (None, None),
        }
    }

    fn set_shared(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SetError> {
        let mut s = self.inner.borrow_mut();
        s.sets += 1;
        if let (Some(want), Some((_, have))) = (cas, s.shared.get(key)) {
            if want != 0 && want != *have {
                return Err(SetError::CasMismatch);
            }
        }
        s.next_cas = s.next_cas.wrapping_add(1).max(1);
        let c = s.next_cas;
        s.shared.insert(key.to_string(), (value.to_vec(), c));
        Ok(())
    }

    fn define_metric(&self, kind: MetricKind, name: &str) -> Option<u32> {
        let mut s = self.inner.borrow_mut();
        if let Some(i) = s.metric_names.iter().position(|(_, n)| n == name) {
            return Some(i as u32);
        }
        s.metric_names.push((kind, name.to_string()));
        s.metric_values.insert(name.to_string(), 0);
        Some((s.metric_names.len() - 1) as u32)
    }

    fn increment_metric(&self, id: u32, delta: i64) {
        let mut s = self.inner.borrow_mut();
        if let Some((_, n)) = s.metric_names.get(id as usize).cloned() {
            *s.metric_values.entry(n).or_insert(0) += delta;
        }
    }

    fn record_metric(&self, id: u32, value: u64) {
        let mut s = self.inner.borrow_mut();
        if let Some((_, n)) = s.metric_names.get(id as usize).cloned() {
            s.metric_values.insert(n, value as i64);
        }
    }
}
