//! Placeholder while the benchmarks are written.
fn main() {}
