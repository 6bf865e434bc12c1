//! Replay throughput on a generated 1,000,000-line access log (the replay must keep up with a busy Envoy: ≥ 500,000 lines/s on
//! one core, memory flat). The log is written once to `target/replay-bench.log` and replayed from
//! the file, as `meshbreaker replay` reads it; criterion reports lines/s with its spread, and the
//! process's peak RSS is printed after the last sample.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/support/gen.rs"]
mod gen;

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use meshbreaker_cli::replay::Replay;
use policy_core::config::Config;

const LINES: u64 = 1_000_000;

fn log_file() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target");
    let path = dir.join("replay-bench.log");
    if !path.exists() {
        let _ = std::fs::create_dir_all(&dir);
        let mut f =
            std::io::BufWriter::new(std::fs::File::create(&path).unwrap_or_else(|e| panic!("{e}")));
        gen::write_log(&mut f, LINES, 50).unwrap_or_else(|e| panic!("{e}"));
    }
    path
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn replay_1m_lines(c: &mut Criterion) {
    let path = log_file();
    let cfg =
        Config::parse(br#"{"breaker": {"window": "10s", "buckets": 10, "min_requests": 20}}"#)
            .unwrap_or_else(|e| panic!("{e}"));
    let mut g = c.benchmark_group("replay");
    g.throughput(Throughput::Elements(LINES));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(30));
    g.bench_function("1m_lines_50_keys", |b| {
        b.iter(|| {
            let f = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{e}"));
            let mut r = [Replay::new(cfg.clone())];
            meshbreaker_cli::replay_stream(f, &mut r, |_| {}).unwrap_or_else(|e| panic!("{e}"));
            let [r] = r;
            let (totals, keys) = r.finish();
            assert_eq!(totals.lines, LINES);
            black_box(keys)
        })
    });
    g.finish();
    eprintln!("peak RSS after the replays: {} KiB", peak_rss_kib());
}

criterion_group!(benches, replay_1m_lines);
criterion_main!(benches);
