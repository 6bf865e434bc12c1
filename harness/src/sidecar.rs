//! The eBPF sidecar (`meshbreaker-sidecar`) for tests and experiments: whether it can run here,
//! its binary, and one running instance waited for until it serves.
//!
//! ## Preflight
//! The sidecar loads BPF programs on kernel tracepoints: it needs root, a kernel with BTF, and
//! tracefs mounted. A freshly booted machine or CI runner often has tracefs unmounted (systemd
//! mounts it on demand); as root, [`ensure_tracefs`] mounts it. Kernel tests fail loudly when the
//! sidecar cannot run; only `MESHBREAKER_SKIP_BPF_TESTS=1` skips them ([`skip_bpf_tests`]), and
//! says so.
//!
//! ## A running sidecar
//! [`Sidecar::start`] runs it as a supervised [`Proc`] on a given address, keeps its stderr lines
//! (echoed to ours, and to a log file when asked), and waits up to 30 s for `/healthz`; if it
//! exits first, the error carries what it said.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use crate::http::http_get;
use crate::process::Proc;
use crate::Result;

/// True (and says so) when the operator opted out of kernel tests (`MESHBREAKER_SKIP_BPF_TESTS=1`);
/// anything else runs them.
pub fn skip_bpf_tests(test: &str) -> bool {
    if std::env::var("MESHBREAKER_SKIP_BPF_TESTS").as_deref() == Ok("1") {
        // Written to stderr directly, not through eprintln!, so a test harness's output capture
        // cannot hide that this test did not run.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED {test}: MESHBREAKER_SKIP_BPF_TESTS=1 (this test did not run)"
        );
        return true;
    }
    false
}

/// This process's effective uid, from `/proc/self/status`.
pub fn euid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let uids = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    uids.split_whitespace().nth(1)?.parse().ok()
}

/// Mounts tracefs at `/sys/kernel/tracing` when neither it nor debugfs's copy is mounted and we
/// are root (once per process; says on stderr when it had to).
pub fn ensure_tracefs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let mounted = [
            "/sys/kernel/tracing/events",
            "/sys/kernel/debug/tracing/events",
        ]
        .iter()
        .any(|p| Path::new(p).is_dir());
        if !mounted && euid() == Some(0) {
            let ok = Command::new("mount")
                .args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"])
                .status()
                .is_ok_and(|s| s.success());
            eprintln!(
                "tracefs was not mounted; mount -t tracefs tracefs /sys/kernel/tracing: ok={ok}"
            );
        }
    });
}

/// Why the sidecar cannot run here, if it cannot: not root, no BTF, or no `tcp_receive_reset`
/// tracepoint (after [`ensure_tracefs`]).
pub fn unavailable() -> Option<String> {
    if euid() != Some(0) {
        return Some("not root (the sidecar needs CAP_BPF and CAP_PERFMON)".into());
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Some("the kernel has no BTF (/sys/kernel/btf/vmlinux)".into());
    }
    ensure_tracefs();
    let tracepoint = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .any(|d| Path::new(d).join("events/tcp/tcp_receive_reset").exists());
    if !tracepoint {
        return Some("no tcp:tcp_receive_reset tracepoint in tracefs".into());
    }
    None
}

/// The sidecar binary: `MESHBREAKER_SIDECAR` when set, else built from this checkout.
pub fn binary(release: bool) -> Result<PathBuf> {
    crate::binary_from_env("MESHBREAKER_SIDECAR").unwrap_or_else(|| {
        crate::cargo::build_bin("meshbreaker-sidecar", "meshbreaker-sidecar", release)
    })
}

/// How to start one sidecar.
#[derive(Clone, Debug, Default)]
pub struct SidecarOpts {
    /// A command the binary runs under (e.g. `setpriv` restricting capabilities, `nice`).
    pub wrapper: Vec<String>,
    /// Arguments after `--listen <addr>`.
    pub extra_args: Vec<String>,
    /// A file that gets every stderr line too.
    pub log: Option<PathBuf>,
    /// Echo its stderr lines to ours, prefixed `[sidecar <addr>]`.
    pub echo: bool,
}

/// A running sidecar, stopped (SIGKILL) on drop.
pub struct Sidecar {
    proc: Proc,
    pub addr: SocketAddr,
    /// Its stderr, line by line, as far as it has been read.
    pub stderr: Arc<Mutex<Vec<String>>>,
}

impl Sidecar {
    /// Starts `bin` on `addr` and waits (30 s) until `/healthz` answers 200.
    pub fn start(bin: &Path, addr: SocketAddr, opts: &SidecarOpts) -> Result<Sidecar> {
        ensure_tracefs();
        let mut cmd = match opts.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.arg("--listen")
            .arg(addr.to_string())
            .args(&opts.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let proc = Proc::spawn("meshbreaker-sidecar", &mut cmd)?;
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut log = match &opts.log {
            Some(p) => Some(std::fs::File::create(p).map_err(|e| format!("{}: {e}", p.display()))?),
            None => None,
        };
        let reader = proc.take_stderr().map(|pipe| {
            let lines = Arc::clone(&stderr);
            let echo = opts.echo;
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(std::io::Result::ok) {
                    if echo {
                        eprintln!("[sidecar {addr}] {line}");
                    }
                    if let Some(f) = log.as_mut() {
                        let _ = writeln!(f, "{line}");
                    }
                    lines.lock().unwrap_or_else(|p| p.into_inner()).push(line);
                }
            })
        });
        let sidecar = Sidecar { proc, addr, stderr };
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = sidecar.proc.exited() {
                // The reader ends at the pipe's end: everything it said is in.
                if let Some(r) = reader {
                    let _ = r.join();
                }
                return Err(format!(
                    "meshbreaker-sidecar exited with {status} before serving (the kernel refused \
                     the program?); stderr:\n{}",
                    sidecar.stderr_lines().join("\n")
                ));
            }
            if matches!(http_get(addr.port(), "/healthz", None), Ok((200, _))) {
                return Ok(sidecar);
            }
            if Instant::now() > end {
                return Err("meshbreaker-sidecar did not answer /healthz within 30 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its stderr lines so far.
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn is_running(&self) -> bool {
        self.proc.is_running()
    }

    /// SIGKILL: no goodbye, the way a crashed or OOM-killed sidecar disappears.
    pub fn kill(&mut self) {
        self.proc.stop();
    }

    /// SIGTERM, then up to `timeout` for its exit status (`None` if it ignored the signal).
    pub fn terminate(&self, timeout: Duration) -> Option<ExitStatus> {
        self.proc.signal(libc::SIGTERM);
        self.proc.wait_exit(timeout)
    }
}
