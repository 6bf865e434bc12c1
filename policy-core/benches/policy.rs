//! Cost of the request path and of the shared state, at the default configuration.
//!
//! Why: every request through Envoy pays `decide` (read the breaker) and `record` (count the
//! outcome), on every worker, and every tracked key costs memory on every worker and bytes in
//! proxy-wasm shared data. Targets: `record+decide` median ≤ 100 ns; ≤ 16 KiB per key per worker.
//!
//! Before criterion runs, the binary measures and prints the memory per key with a counting global
//! allocator (live heap bytes before/after), so the figures are measured, not computed by hand.
// Benchmark harness code, not the library: a failed unwrap aborts the run, which is what we want.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};

use criterion::{BatchSize, Criterion};
use policy_core::breaker::{BreakerState, FixedJitter, SplitMix64};
use policy_core::config::{Config, Mode};
use policy_core::encoding::SlotState;
use policy_core::keys::KeyRegistry;
use policy_core::retry::{CompiledRetry, RequestView};
use policy_core::window::{bucket_ms, threshold_us, Outcome, Recorder, Window};

// ---- counting allocator ---------------------------------------------------------------------

/// Counts live heap bytes and allocation calls of the whole process.
struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        LIVE_BYTES.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Live heap bytes and allocation calls made by `f`, and what it returned (kept alive).
fn measure<T>(f: impl FnOnce() -> T) -> (T, isize, usize) {
    let bytes = LIVE_BYTES.load(Ordering::SeqCst);
    let calls = ALLOCATIONS.load(Ordering::SeqCst);
    let v = f();
    (
        v,
        LIVE_BYTES.load(Ordering::SeqCst) - bytes,
        ALLOCATIONS.load(Ordering::SeqCst) - calls,
    )
}

// ---- fixtures -------------------------------------------------------------------------------

/// A key of the length Istio cluster names have.
const KEY: &str = "outbound|8080||reviews.default.svc.cluster.local";

/// Latencies of a busy key: 10–12 ms, which spans ~31 histogram bins (64 µs wide there).
fn latencies(n: usize, seed: u64) -> Vec<u64> {
    let mut rng = SplitMix64(seed);
    (0..n).map(|_| 10_000 + rng.next_u64() % 2_000).collect()
}

fn outcome(latency_us: u64, i: u64) -> Outcome {
    Outcome {
        http_status: Some(if i.is_multiple_of(50) { 503 } else { 200 }),
        latency_us: Some(latency_us),
        attempts: if i.is_multiple_of(20) { 2 } else { 1 },
        ..Default::default()
    }
}

/// A full recorder for `epoch`: 300 requests of a busy key.
fn full_recorder(cfg: &Config, epoch: u64, seed: u64) -> Recorder {
    let mut r = Recorder::new(threshold_us(&cfg.breaker)).unwrap();
    for (i, v) in latencies(300, seed).into_iter().enumerate() {
        let o = outcome(v, i as u64);
        r.record(epoch, &o, o.failure(&cfg.breaker.failure))
            .unwrap();
    }
    r
}

/// The merged window of a typical busy key: all 12 buckets full, epochs `first..first + 12`.
fn busy_window(cfg: &Config, first: u64) -> Window {
    let mut w = Window::new(cfg.breaker.buckets, 0);
    let mut scratch = Vec::new();
    for e in first..first + u64::from(cfg.breaker.buckets) {
        assert!(w.merge_recorder(&full_recorder(cfg, e, e), e, &mut scratch));
    }
    w.last_used_ms = 1_700_000_000_000;
    w.learn_host("10.12.3.45:8080", 0);
    w
}

// ---- memory report --------------------------------------------------------------------------

fn report_memory(cfg: &Config) {
    const KEYS: u32 = 1024;
    let recorder_inline = std::mem::size_of::<Recorder>();
    let (recorder, recorder_heap, recorder_allocs) =
        measure(|| Recorder::new(threshold_us(&cfg.breaker)).unwrap());
    // Recording must not allocate (the hot path).
    let mut r = recorder;
    let lat = latencies(1_000, 1);
    let (_, _, record_allocs) = measure(|| {
        for (i, v) in lat.iter().enumerate() {
            let o = outcome(*v, i as u64);
            r.record(7, &o, None).unwrap();
        }
    });
    drop(r);

    // The registry's own cost per key: a registry of `max_keys` unit values, filled with distinct
    // keys of typical length, divided by the keys.
    let (registry, registry_heap, _) = measure(|| {
        let mut reg: KeyRegistry<()> = KeyRegistry::new(KEYS);
        for i in 0..KEYS {
            let key = format!("{KEY}-{i:04}");
            reg.insert(&key, (), u64::from(i), |_| true).unwrap();
        }
        reg
    });
    let registry_per_key = registry_heap as f64 / f64::from(KEYS);
    drop(registry);

    // Everything together, as a worker holds it: a registry of recorders, full.
    let (full, full_heap, _) = measure(|| {
        let mut reg: KeyRegistry<Recorder> = KeyRegistry::new(KEYS);
        for i in 0..KEYS {
            let key = format!("{KEY}-{i:04}");
            let rec = Recorder::new(threshold_us(&cfg.breaker)).unwrap();
            reg.insert(&key, rec, u64::from(i), |_| true).unwrap();
        }
        reg
    });
    let full_per_key = full_heap as f64 / f64::from(KEYS);
    drop(full);

    let per_key = recorder_inline as f64 + recorder_heap as f64 + registry_per_key;

    let closed = SlotState {
        key: KEY.into(),
        breaker: BreakerState::default(),
        last_active_ms: 0,
    };
    let window = busy_window(cfg, 100);
    let bins: usize = window.buckets.iter().map(|b| b.bins.len()).sum();

    eprintln!("== policy-core memory per tracked key (default config, measured) ==");
    eprintln!("Recorder inline (size_of):              {recorder_inline} B");
    eprintln!(
        "Recorder heap (Recorder::new):           {recorder_heap} B in {recorder_allocs} allocation(s)"
    );
    eprintln!("allocations made by 1000 Recorder::record: {record_allocs}");
    eprintln!(
        "KeyRegistry<()> entry (1024 keys of {} B): {registry_per_key:.0} B",
        KEY.len() + 5
    );
    eprintln!(
        "per key per worker = recorder + heap + registry entry: {per_key:.0} B ({:.2} KiB; target <= 16 KiB)",
        per_key / 1024.0
    );
    eprintln!(
        "cross-check, KeyRegistry<Recorder> of 1024 full: {full_per_key:.0} B per key ({:.2} KiB)",
        full_per_key / 1024.0
    );
    eprintln!(
        "shared slot, state entry of a closed key ({} B key): {} B",
        KEY.len(),
        closed.encode().len()
    );
    eprintln!(
        "shared slot, window entry of a busy key (12 buckets, {:.1} bins/bucket avg): {} B",
        bins as f64 / window.buckets.len() as f64,
        window.encode().len()
    );
    eprintln!();
}

// ---- benchmarks -----------------------------------------------------------------------------

fn benches(c: &mut Criterion, cfg: &Config) {
    let breaker = &cfg.breaker;
    let lat = latencies(1024, 42);
    let outcomes: Vec<Outcome> = lat
        .iter()
        .enumerate()
        .map(|(i, v)| outcome(*v, i as u64))
        .collect();
    let epoch_ms = bucket_ms(breaker);

    c.bench_function("record", |b| {
        let mut r = Recorder::new(threshold_us(breaker)).unwrap();
        let mut i = 0usize;
        b.iter(|| {
            let o = &outcomes[i & 1023];
            i = i.wrapping_add(1);
            let f = o.failure(&breaker.failure);
            black_box(r.record(black_box(7), o, f)).ok();
        })
    });

    c.bench_function("decide (closed)", |b| {
        let mut s = BreakerState::default();
        let mut now = 1_700_000_000_000u64;
        b.iter(|| {
            now += 1;
            black_box(s.decide(
                Mode::Enforce,
                breaker,
                black_box(now),
                &mut FixedJitter(0.0),
            ));
        })
    });

    c.bench_function("record+decide", |b| {
        let mut s = BreakerState::default();
        let mut r = Recorder::new(threshold_us(breaker)).unwrap();
        let mut now = 1_700_000_000_000u64;
        let epoch = now / epoch_ms;
        let mut i = 0usize;
        b.iter(|| {
            now += 1;
            let step = s.decide(
                Mode::Enforce,
                breaker,
                black_box(now),
                &mut FixedJitter(0.0),
            );
            black_box(step);
            let o = &outcomes[i & 1023];
            i = i.wrapping_add(1);
            let f = o.failure(&breaker.failure);
            black_box(r.record(epoch, o, f)).ok();
        })
    });

    c.bench_function(
        "bucket rotation (merge full recorder on new epoch + totals + p95)",
        |b| {
            // The window holds epochs 100..112; the recorder holds epoch 112, which replaces 100.
            let window = busy_window(cfg, 100);
            let recorder = full_recorder(cfg, 112, 999);
            let mut scratch = Vec::with_capacity(1024);
            b.iter_batched_ref(
                || window.clone(),
                |w| {
                    assert!(w.merge_recorder(&recorder, 112, &mut scratch));
                    black_box(w.totals(112));
                    black_box(w.p95_us(112, &mut scratch));
                },
                BatchSize::SmallInput,
            )
        },
    );

    let slot = SlotState {
        key: KEY.into(),
        breaker: BreakerState::default(),
        last_active_ms: 0,
    };
    let slot_bytes = slot.encode();
    let window = busy_window(cfg, 100);
    let window_bytes = window.encode();
    let mut out = Vec::with_capacity(4096);
    c.bench_function("encode SlotState (closed)", |b| {
        b.iter(|| {
            black_box(&slot).encode_into(&mut out);
            black_box(&out);
        })
    });
    c.bench_function("decode SlotState (closed)", |b| {
        b.iter(|| black_box(SlotState::decode(black_box(&slot_bytes))).ok())
    });
    c.bench_function("encode Window (12 buckets x ~31 bins)", |b| {
        b.iter(|| {
            black_box(&window).encode_into(&mut out);
            black_box(&out);
        })
    });
    c.bench_function("decode_into Window (12 buckets x ~31 bins)", |b| {
        let mut w = Window::default();
        b.iter(|| black_box(w.decode_into(black_box(&window_bytes))).ok())
    });

    let retry = CompiledRetry::new(&cfg.retry);
    c.bench_function("retry select+headers (GET)", |b| {
        b.iter(|| {
            let get = RequestView {
                method: black_box("GET"),
                path: black_box("/api/items/42"),
                content_type: None,
                headers: &(),
            };
            for (name, value) in retry.decide(&get, Mode::Enforce, false, true).headers() {
                black_box((name, value));
            }
        })
    });
}

fn main() {
    let cfg = Config::parse(b"{}").unwrap();
    report_memory(&cfg);
    let mut c = Criterion::default().configure_from_args();
    benches(&mut c, &cfg);
    c.final_summary();
}
