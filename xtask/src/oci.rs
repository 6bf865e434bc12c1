//! `cargo xtask oci`: the filter as a Wasm OCI image that Istio's `WasmPlugin` pulls
//! (`url: oci://…`), written as an OCI image layout in `target/oci/meshbreaker/` and as a
//! tarball of it (`target/oci/meshbreaker.tar`), ready for `oras cp`/`skopeo copy`/`crane push`.
//!
//! Why this format: Istio's image fetcher (istio/istio `pkg/wasm/imagefetcher.go`) accepts a
//! Docker image, the "compat" variant (one `tar+gzip` layer holding `plugin.wasm`), or the "oci"
//! variant of the Wasm image spec: exactly two layers, one of them
//! `application/vnd.module.wasm.content.layer.v1+wasm` holding the raw module, read as is. The
//! oci variant is the one where the layer *is* `meshbreaker.wasm`, byte for byte, so the digest
//! that `sha256sum target/dist/meshbreaker.wasm` prints is the layer's digest. Its other layer and
//! the config are the runtime config (`application/vnd.module.wasm.config.v1+json`).
//!
//! For `oci://` URLs Istio compares `WasmPlugin.spec.sha256` with the image *manifest* digest;
//! `--pin` writes that into `istio/wasmplugin.yaml` and `gateway/extension-wasm.yaml` (and the
//! module's own digest into `istio/wasmplugin-file.yaml`). Nothing here depends on the time: the same module gives the
//! same digests.

use std::fs;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::flags::OciArgs;
use crate::util::{root, step, Result};

pub const WASM_LAYER: &str = "application/vnd.module.wasm.content.layer.v1+wasm";
pub const WASM_CONFIG: &str = "application/vnd.module.wasm.config.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const TAG: &str = "0.1.0";

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

struct Blob {
    digest: String,
    size: usize,
}

fn write_blob(layout: &Path, bytes: &[u8]) -> Result<Blob> {
    let hex = sha256_hex(bytes);
    let dir = layout.join("blobs").join("sha256");
    fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let path = dir.join(&hex);
    fs::write(&path, bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Blob {
        digest: format!("sha256:{hex}"),
        size: bytes.len(),
    })
}

fn json_bytes(v: &serde_json::Value) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| e.to_string())
}

pub struct Image {
    pub layout: PathBuf,
    pub tarball: PathBuf,
    pub manifest_digest: String,
    pub wasm_digest: String,
}

/// Writes the layout and the tarball for `wasm`.
pub fn write_image(wasm: &Path, out: &Path) -> Result<Image> {
    let module = fs::read(wasm).map_err(|e| format!("{}: {e}", wasm.display()))?;
    if module.get(..4) != Some(b"\0asm".as_slice()) {
        return Err(format!("{} is not a wasm module", wasm.display()));
    }
    let layout = out.join("meshbreaker");
    if layout.exists() {
        fs::remove_dir_all(&layout).map_err(|e| format!("{}: {e}", layout.display()))?;
    }
    fs::create_dir_all(&layout).map_err(|e| format!("{}: {e}", layout.display()))?;

    let runtime_config = serde_json::json!({
        "type": "envoy_proxy",
        "abiVersions": ["proxy_abi_version_0_2_1"],
        "config": { "root_ids": ["meshbreaker"] }
    });
    let config = write_blob(&layout, &json_bytes(&runtime_config)?)?;
    let layer = write_blob(&layout, &module)?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": { "mediaType": WASM_CONFIG, "digest": config.digest, "size": config.size },
        "layers": [
            {
                "mediaType": WASM_CONFIG,
                "digest": config.digest,
                "size": config.size,
                "annotations": { "org.opencontainers.image.title": "runtime-config.json" }
            },
            {
                "mediaType": WASM_LAYER,
                "digest": layer.digest,
                "size": layer.size,
                "annotations": { "org.opencontainers.image.title": "meshbreaker.wasm" }
            }
        ],
        "annotations": {
            "org.opencontainers.image.title": "meshbreaker",
            "org.opencontainers.image.version": TAG,
            "org.opencontainers.image.description": "meshbreaker proxy-wasm filter (Wasm image spec, oci variant)"
        }
    });
    let manifest_blob = write_blob(&layout, &json_bytes(&manifest)?)?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{
            "mediaType": OCI_MANIFEST,
            "digest": manifest_blob.digest,
            "size": manifest_blob.size,
            "annotations": { "org.opencontainers.image.ref.name": TAG }
        }]
    });
    let write = |name: &str, bytes: Vec<u8>| -> Result {
        let p = layout.join(name);
        fs::write(&p, bytes).map_err(|e| format!("{}: {e}", p.display()))
    };
    write("index.json", json_bytes(&index)?)?;
    write(
        "oci-layout",
        json_bytes(&serde_json::json!({ "imageLayoutVersion": "1.0.0" }))?,
    )?;

    let tarball = out.join("meshbreaker.tar");
    write_tarball(&layout, &tarball)?;
    Ok(Image {
        layout,
        tarball,
        manifest_digest: manifest_blob.digest,
        wasm_digest: layer.digest,
    })
}

/// The layout as a tarball with the layout at its root (what `skopeo copy oci-archive:` and
/// `oras` read), with fixed owners and times so the same image gives the same bytes.
fn write_tarball(layout: &Path, tarball: &Path) -> Result {
    let file = fs::File::create(tarball).map_err(|e| format!("{}: {e}", tarball.display()))?;
    let mut tar = tar::Builder::new(file);
    tar.mode(tar::HeaderMode::Deterministic);
    let mut files = Vec::new();
    for name in ["oci-layout", "index.json"] {
        files.push(PathBuf::from(name));
    }
    let blobs = layout.join("blobs").join("sha256");
    let mut names: Vec<String> = fs::read_dir(&blobs)
        .map_err(|e| format!("{}: {e}", blobs.display()))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    names.sort();
    for n in names {
        files.push(Path::new("blobs").join("sha256").join(n));
    }
    for rel in files {
        let mut f =
            fs::File::open(layout.join(&rel)).map_err(|e| format!("{}: {e}", rel.display()))?;
        tar.append_file(&rel, &mut f)
            .map_err(|e| format!("{}: {e}", tarball.display()))?;
    }
    tar.into_inner()
        .map_err(|e| format!("{}: {e}", tarball.display()))?;
    Ok(())
}

/// Replaces the one `sha256: "…"` line of a manifest (an Istio WasmPlugin, an Envoy Gateway
/// EnvoyExtensionPolicy), keeping its indentation.
fn pin(file: &Path, hex: &str) -> Result {
    let text = fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let mut n = 0;
    let out: Vec<String> = text
        .lines()
        .map(|l| match l.split_once("sha256: ") {
            Some((indent, _)) if indent.trim().is_empty() => {
                n += 1;
                format!("{indent}sha256: \"{hex}\"")
            }
            _ => l.to_owned(),
        })
        .collect();
    if n != 1 {
        return Err(format!(
            "{}: expected one `sha256:` line, found {n}",
            file.display()
        ));
    }
    fs::write(file, out.join("\n") + "\n").map_err(|e| format!("{}: {e}", file.display()))
}

pub fn oci(args: &OciArgs) -> Result {
    let (pin_manifests, skip_build) = (args.pin, args.skip_build);
    let wasm = if skip_build {
        root().join("target/dist/meshbreaker.wasm")
    } else {
        crate::setup::build()?
    };
    step("Wasm OCI image (Istio WasmPlugin, oci variant)");
    let image = write_image(&wasm, &root().join("target").join("oci"))?;
    let strip = |d: &str| d.trim_start_matches("sha256:").to_owned();
    eprintln!("layout:          {}", image.layout.display());
    eprintln!("tarball:         {}", image.tarball.display());
    eprintln!(
        "module digest:   {}  (the wasm layer = target/dist/meshbreaker.wasm)",
        image.wasm_digest
    );
    println!("manifest digest: {}", image.manifest_digest);
    eprintln!(
        "push:            oras cp --from-oci-layout {}:{TAG} ghcr.io/OWNER/meshbreaker:{TAG}\n\
         WasmPlugin:      url: oci://ghcr.io/OWNER/meshbreaker:{TAG}\n                 sha256: {}",
        image.layout.display(),
        strip(&image.manifest_digest)
    );
    if pin_manifests {
        pin(
            &root().join("istio/wasmplugin.yaml"),
            &strip(&image.manifest_digest),
        )?;
        pin(
            &root().join("istio/wasmplugin-file.yaml"),
            &strip(&image.wasm_digest),
        )?;
        pin(
            &root().join("gateway/extension-wasm.yaml"),
            &strip(&image.manifest_digest),
        )?;
        eprintln!("pinned istio/wasmplugin.yaml and gateway/extension-wasm.yaml (manifest digest), istio/wasmplugin-file.yaml (module digest)");
    }
    Ok(())
}
