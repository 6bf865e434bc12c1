//! Compiles the eBPF program (bpf/meshbreaker.bpf.c) with clang into OUT_DIR so
//! src/main.rs can embed it with `aya::include_bytes_aligned!`. Needs the Debian
//! packages `clang` (the BPF backend) and `libbpf-dev` (bpf/bpf_helpers.h); the
//! kernel definitions are hand-written in bpf/tracepoints.h, so neither bpftool
//! nor the build machine's BTF is needed. `CLANG` overrides the compiler.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() -> Result<(), String> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?);
    let out = PathBuf::from(env::var("OUT_DIR").map_err(|e| e.to_string())?);
    let bpf_dir = manifest.join("bpf");
    let src = bpf_dir.join("meshbreaker.bpf.c");
    let obj = out.join("meshbreaker.bpf.o");
    for file in ["meshbreaker.bpf.c", "meshbreaker.h", "tracepoints.h"] {
        println!("cargo:rerun-if-changed=bpf/{file}");
    }
    println!("cargo:rerun-if-env-changed=CLANG");

    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".to_string());
    let output = Command::new(&clang)
        .args(["-target", "bpf", "-O2", "-g", "-Wall", "-Werror"])
        .arg("-I")
        .arg(&bpf_dir)
        .arg("-c")
        .arg(&src)
        .arg("-o")
        .arg(&obj)
        .output()
        .map_err(|e| {
            format!(
                "cannot run `{clang}` to compile the eBPF program ({e}); \
                 install the Debian packages: apt-get install clang libbpf-dev"
            )
        })?;
    if !output.status.success() {
        return Err(format!(
            "`{clang} -target bpf` failed on {} (need apt packages clang libbpf-dev):\n{}",
            src.display(),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(())
}
