//! The filter's size budget (≤ 400 KiB): Envoy loads one copy per worker VM, and Istio
//! pulls it to every sidecar, so it is held as a test, not only as a build warning.
// Tests: a failed expectation panics, by design.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

const MAX_WASM_BYTES: u64 = 400 * 1024;

#[test]
fn built_filter_is_at_most_400_kib() {
    let path = meshbreaker_tests::wasm_path();
    let size = std::fs::metadata(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run `cargo xtask build`)", path.display()))
        .len();
    eprintln!("{}: {size} bytes", path.display());
    assert!(
        size <= MAX_WASM_BYTES,
        "meshbreaker.wasm is {size} bytes, over {MAX_WASM_BYTES}"
    );
    assert!(
        size > 10 * 1024,
        "{size} bytes is too small to be the filter"
    );
}
