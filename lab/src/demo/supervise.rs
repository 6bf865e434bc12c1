//! The demo's processes: every child it starts, held so that none outlives it, and Ctrl-C.
//!
//! Each child is a supervised [`Proc`] (its own process group, so the terminal's SIGINT reaches
//! only this supervisor, and a parent-death signal, so even a SIGKILLed supervisor takes it
//! along); the sidecar is the harness's [`Sidecar`], started and waited for the way the tests
//! start it. SIGINT and SIGTERM only set a flag, which the demo's loops watch: it then stops the
//! children in order.

use std::fs;
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use meshbreaker_harness::sidecar::Sidecar;
use meshbreaker_harness::Proc;

use crate::util::Result;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

pub(super) fn install_signal_handlers() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

/// Whether Ctrl-C (or SIGTERM) came.
pub(super) fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// The processes the demo started, stopped (SIGTERM, then SIGKILL after 5 s) in reverse order,
/// the sidecar last.
#[derive(Default)]
pub(super) struct Supervisor {
    pub(super) children: Vec<Proc>,
    /// The eBPF sidecar, when it runs here.
    pub(super) sidecar: Option<Sidecar>,
}

impl Supervisor {
    pub(super) fn spawn(&mut self, name: &str, cmd: &mut Command) -> Result<u32> {
        let p = Proc::spawn(name, cmd)?.term_grace(Duration::from_secs(5));
        let pid = p.pid();
        self.children.push(p);
        Ok(pid)
    }

    pub(super) fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.children.iter().map(Proc::pid).collect();
        pids.extend(self.sidecar.as_ref().map(Sidecar::pid));
        pids
    }

    /// The first child that exited, with its status.
    pub(super) fn exited(&mut self) -> Option<String> {
        self.children
            .iter()
            .find_map(|c| Some(format!("{} exited ({})", c.name(), c.exited()?)))
            .or_else(|| {
                self.sidecar
                    .as_ref()
                    .filter(|s| !s.is_running())
                    .map(|_| "meshbreaker-sidecar exited".to_string())
            })
    }

    pub(super) fn stop_all(&mut self) {
        for c in self.children.iter().rev() {
            c.terminate();
        }
        while let Some(mut c) = self.children.pop() {
            c.stop();
        }
        if let Some(mut s) = self.sidecar.take() {
            if s.terminate(Duration::from_secs(5)).is_none() {
                s.kill();
            }
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.stop_all();
    }
}

pub(super) fn free_port() -> Result<u16> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

pub(super) fn log_file(out: &Path, name: &str) -> Result<fs::File> {
    let p = out.join(format!("{name}.log"));
    fs::File::create(&p).map_err(|e| format!("{}: {e}", p.display()))
}

/// Polls `ready` for up to `secs`, saying every 2 s that it still waits; fails at once on Ctrl-C
/// or when a child exits.
pub(super) fn wait_for(
    what: &str,
    sup: &mut Supervisor,
    secs: u64,
    mut ready: impl FnMut() -> bool,
) -> Result {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let mut told = 0;
    while Instant::now() < deadline {
        if ready() {
            if told > 0 {
                eprintln!("{what} ready after {:.1} s", start.elapsed().as_secs_f64());
            }
            return Ok(());
        }
        let waited = start.elapsed().as_secs();
        if waited >= 2 && waited / 2 > told {
            told = waited / 2;
            eprintln!("  … waiting for {what} ({waited} s of at most {secs} s)");
        }
        if interrupted() {
            return Err("interrupted".into());
        }
        if let Some(e) = sup.exited() {
            return Err(format!("{e} while waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("{what} not ready within {secs} s"))
}
