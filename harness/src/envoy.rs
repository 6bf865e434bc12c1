//! Envoy for the experiments: start one from a YAML bootstrap, wait until it is LIVE, read its
//! listeners' ports and stats back from admin, and kill it on drop.
//!
//! Why: two Envoys on one machine collide through hot restart's shared memory and sockets unless
//! it is off ([`NO_HOT_RESTART`]), and listener ports must be read back from admin instead of
//! guessed. Write `port_value: 0` in listeners and admin; the ports are read back.
//!
//! Envoy runs as a supervised [`Proc`]: forked from the harness's long-lived spawner thread (Envoy
//! sets a parent-death signal on the thread that forked it), in its own process group, and killed
//! when the handle drops or the process exits.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::http::{http_get, http_request};
use crate::process::Proc;
use crate::procfs::{proc_cpu_time, proc_rss_bytes};
use crate::{output, repo_root, Result};

/// `envoy --version`, e.g. `1.40.0/…/RELEASE/BoringSSL`.
pub fn envoy_version(bin: &Path) -> String {
    let v = output(Command::new(bin).arg("--version")).unwrap_or_default();
    v.split("version:").nth(1).unwrap_or(&v).trim().to_string()
}

/// The flag every Envoy the project starts gets: hot restart off. Hot restart is what names
/// shared memory and domain sockets after `--base-id`, so two Envoys on one machine with it on
/// need ids at least 10 apart, and each Envoy killed leaves a `/dev/shm/envoy_shared_memory_*`
/// file behind. Nothing here restarts an Envoy hot (a reload goes through LDS, as Istio's does),
/// so with it off any number of Envoys run side by side with no id to hand out and nothing left
/// in `/dev/shm`.
pub const NO_HOT_RESTART: &str = "--disable-hot-restart";

/// How to run one Envoy.
#[derive(Clone, Debug)]
pub struct EnvoyOpts {
    /// `--concurrency` (worker threads).
    pub concurrency: u32,
    /// A `taskset -c` CPU list (e.g. `"1"`, `"0-1"`) to pin every thread of Envoy to, or none.
    pub cpus: Option<String>,
    /// `--log-level`.
    pub log_level: String,
    /// Anything else to pass.
    pub extra_args: Vec<String>,
}

impl Default for EnvoyOpts {
    fn default() -> Self {
        EnvoyOpts {
            concurrency: 1,
            cpus: None,
            log_level: "warning".into(),
            extra_args: Vec::new(),
        }
    }
}

/// The Envoy command for bootstrap `cfg`: cwd the repository root (so relative paths resolve as
/// in the shipped config), hot restart off, admin's address written to `admin_path`, under
/// `taskset` when `opts.cpus` is set; stdin closed, stdout and stderr left to the caller.
pub fn command(bin: &Path, cfg: &Path, admin_path: &Path, opts: &EnvoyOpts) -> Command {
    let mut cmd = match &opts.cpus {
        Some(cpus) => {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(cpus).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    cmd.current_dir(repo_root())
        .arg("-c")
        .arg(cfg)
        .arg("--concurrency")
        .arg(opts.concurrency.to_string())
        .arg("--log-level")
        .arg(&opts.log_level)
        .arg(NO_HOT_RESTART)
        .arg("--admin-address-path")
        .arg(admin_path)
        .args(&opts.extra_args)
        .stdin(Stdio::null());
    cmd
}

/// The admin port Envoy wrote to its `--admin-address-path` file (`127.0.0.1:PORT`), once it has.
pub fn admin_port(admin_path: &Path) -> Option<u16> {
    let s = std::fs::read_to_string(admin_path).ok()?;
    s.trim().rsplit(':').next()?.parse().ok()
}

/// The listeners' names and ports, in Envoy's order, from admin `/listeners?format=json`.
pub fn parse_listeners(body: &str) -> Result<Vec<(String, u16)>> {
    let v: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("/listeners: {e}: {body}"))?;
    let mut out = Vec::new();
    for l in v["listener_statuses"].as_array().into_iter().flatten() {
        let name = l["name"].as_str().unwrap_or_default().to_string();
        let port = l["local_address"]["socket_address"]["port_value"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok());
        if let Some(port) = port {
            out.push((name, port));
        }
    }
    Ok(out)
}

/// A running Envoy, a supervised [`Proc`]: killed (SIGKILL) and reaped on drop. Its files live
/// in `dir`.
pub struct Envoy {
    pub name: String,
    pub pid: u32,
    pub admin_port: u16,
    pub dir: PathBuf,
    proc: Proc,
}

impl Envoy {
    /// Starts Envoy with `yaml` under `target/bench/<name>/` (cwd = repo root, so relative wasm
    /// paths resolve as in the shipped config) and waits up to 60 s for admin `/ready` = LIVE.
    /// The admin listener must use `port_value: 0`; its port is read from `--admin-address-path`.
    pub fn start(bin: &Path, name: &str, yaml: &str, opts: &EnvoyOpts) -> Result<Envoy> {
        let dir = repo_root().join("target").join("bench").join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let cfg = dir.join("envoy.yaml");
        std::fs::write(&cfg, yaml).map_err(|e| format!("{}: {e}", cfg.display()))?;
        let admin_path = dir.join("admin.txt");
        let log = std::fs::File::create(dir.join("envoy.log")).map_err(|e| e.to_string())?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = command(bin, &cfg, &admin_path, opts);
        cmd.stdout(log).stderr(log2);
        let proc = Proc::spawn(&format!("Envoy {name}"), &mut cmd)?;
        let mut envoy = Envoy {
            name: name.to_string(),
            pid: proc.pid(),
            admin_port: 0,
            dir,
            proc,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = envoy.proc.exited() {
                return Err(format!(
                    "Envoy {name} exited during startup ({status}); log tail:\n{}",
                    envoy.log_tail(40)
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "Envoy {name} not LIVE within 60s; log tail:\n{}",
                    envoy.log_tail(40)
                ));
            }
            if envoy.admin_port == 0 {
                envoy.admin_port = admin_port(&admin_path).unwrap_or(0);
            } else if let Ok((200, body)) = http_get(envoy.admin_port, "/ready", None) {
                if body.trim() == "LIVE" {
                    return Ok(envoy);
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// GET on the admin API; the body if the status is 200.
    pub fn admin_get(&self, path: &str) -> Result<String> {
        match http_get(self.admin_port, path, None)? {
            (200, body) => Ok(body),
            (s, body) => Err(format!("admin GET {path}: {s} {body}")),
        }
    }

    /// POST on the admin API (e.g. `/reset_counters`).
    pub fn admin_post(&self, path: &str) -> Result<String> {
        match http_request(self.admin_port, "POST", path, None)? {
            (200, body) => Ok(body),
            (s, body) => Err(format!("admin POST {path}: {s} {body}")),
        }
    }

    /// The listeners' ports by listener name (admin `/listeners?format=json`).
    pub fn listeners(&self) -> Result<BTreeMap<String, u16>> {
        Ok(parse_listeners(&self.admin_get("/listeners?format=json")?)?
            .into_iter()
            .collect())
    }

    /// One counter or gauge from admin `/stats` (`name: value`), e.g.
    /// `http.none.downstream_rq_completed`.
    pub fn stat(&self, name: &str) -> Result<Option<u64>> {
        let body = self.admin_get(&format!("/stats?filter=^{}$", name.replace('.', "\\.")))?;
        Ok(body.lines().find_map(|l| {
            let (k, v) = l.split_once(": ")?;
            (k == name).then(|| v.trim().parse().ok()).flatten()
        }))
    }

    /// User + system CPU time of the whole process (all threads) so far.
    pub fn cpu_time(&self) -> Result<Duration> {
        proc_cpu_time(self.pid)
    }

    /// Resident set size (includes the wasm VMs' linear memory, which admin `/memory` does not).
    pub fn rss_bytes(&self) -> Result<u64> {
        proc_rss_bytes(self.pid)
    }

    /// The last `n` lines of Envoy's stdout/stderr log.
    pub fn log_tail(&self, n: usize) -> String {
        let s = std::fs::read_to_string(self.dir.join("envoy.log")).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }
}
