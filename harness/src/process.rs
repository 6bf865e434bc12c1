//! Supervised child processes: the long-lived processes the harness starts (Envoy, the sidecar,
//! upstreams, background load) go through [`Proc`], so none outlives the test binary or command
//! that started it, however that one ends. Short runs that the caller waits for (one `oha` run,
//! `perf record`) are plain commands.
//!
//! ## How a child is held
//! - It is forked from one thread that lives as long as the process. A parent-death signal
//!   (Envoy asks for one itself, and [`Proc`] sets SIGKILL for every child) fires when the
//!   *thread* that forked the child exits, and test threads exit after each test: a child shared
//!   by a file's tests must not be forked from one of them.
//! - It runs in its own process group, so a stop reaches what it started in turn (a launcher's
//!   child, `taskset`'s or `nice`'s target) and a terminal's Ctrl-C reaches only the parent,
//!   which then stops its children in order.
//! - It is registered until stopped: children held in statics (which Rust never drops) are killed
//!   by an `atexit` hook when the process exits normally; the death signal covers the rest.
//! - Dropping a [`Proc`] stops it: SIGKILL to its group, or SIGTERM first with a grace period
//!   ([`Proc::term_grace`]), then reaped.

use std::io;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Mutex, MutexGuard, Once, OnceLock};
use std::time::{Duration, Instant};

use crate::Result;

static CHILDREN: Mutex<Vec<(u64, Child)>> = Mutex::new(Vec::new());
static NEXT_ID: AtomicU64 = AtomicU64::new(1);
static ATEXIT: Once = Once::new();

extern "C" {
    fn atexit(cb: extern "C" fn()) -> i32;
}

extern "C" fn kill_all_children() {
    let mut g = children();
    for (_, c) in g.iter_mut() {
        kill_unreaped(c);
    }
    g.clear();
}

/// Kills `c`'s whole process group (a launcher's children with it) and reaps `c`. The group is
/// signalled only while `c` is not reaped yet (running, or exited and still a zombie): until then
/// its pid, the group's id, cannot belong to anyone else. Once an earlier status check has reaped
/// it, the pid may already name another process group, so that group is left alone.
fn kill_unreaped(c: &mut Child) {
    if unreaped(c.id()) {
        kill_group(c.id(), libc::SIGKILL);
    }
    let _ = c.kill();
    let _ = c.wait();
}

/// Whether `pid` is a child of this process that nobody has reaped yet.
fn unreaped(pid: u32) -> bool {
    // SAFETY: waitid(2) with WNOWAIT only looks (it reaps nothing) and writes into our zeroed
    // siginfo; it fails with ECHILD once the child was reaped.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        ) == 0
    }
}

fn children() -> MutexGuard<'static, Vec<(u64, Child)>> {
    // A panic while the lock was held leaves the list intact: keep using it.
    CHILDREN.lock().unwrap_or_else(|p| p.into_inner())
}

fn kill_group(pid: u32, signal: libc::c_int) {
    // SAFETY: kill(2) on a process group this process created; ESRCH when it is gone.
    unsafe {
        libc::kill(-(pid as libc::pid_t), signal);
    }
}

/// Spawns `cmd` from the one long-lived spawner thread (see the module doc for why).
pub fn spawn_from_long_lived_thread(cmd: Command) -> io::Result<Child> {
    type Job = (Command, Sender<io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<Sender<Job>>> = OnceLock::new();
    let tx = SPAWNER.get_or_init(|| {
        let (tx, rx) = channel::<Job>();
        std::thread::spawn(move || {
            for (mut cmd, reply) in rx {
                let _ = reply.send(cmd.spawn());
            }
        });
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = channel();
    tx.lock()
        .map_err(|_| io::Error::other("spawner lock poisoned"))?
        .send((cmd, reply_tx))
        .map_err(|_| io::Error::other("spawner thread gone"))?;
    reply_rx
        .recv()
        .map_err(|_| io::Error::other("spawner thread gone"))?
}

/// A supervised child process (see the module doc); stopped and reaped on drop.
#[derive(Debug)]
pub struct Proc {
    name: String,
    id: u64,
    pid: u32,
    grace: Option<Duration>,
    stopped: bool,
}

impl Proc {
    /// Starts `cmd` (named `name` in errors) in its own process group, with SIGKILL as its
    /// parent-death signal, from the long-lived spawner thread. The command is taken (a builder
    /// chain can be passed as it is); what is left in `cmd` is an empty command.
    pub fn spawn(name: &str, cmd: &mut Command) -> Result<Proc> {
        let mut cmd = std::mem::replace(cmd, Command::new(""));
        ATEXIT.call_once(|| {
            // SAFETY: registering a plain extern "C" fn with libc's atexit.
            unsafe {
                atexit(kill_all_children);
            }
        });
        // The death signal is armed only once the child has run `prctl`: a parent that dies
        // between the fork and that call leaves a child nobody kills. The child sees that as a
        // new parent (`getppid` no longer the process that forked it) and does not exec.
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: pre_exec runs in the forked child before exec; prctl and getppid are
        // async-signal-safe, and the closure allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
                if libc::getppid() != parent {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
        cmd.process_group(0);
        let shown = format!("{cmd:?}");
        let child = spawn_from_long_lived_thread(cmd)
            .map_err(|e| format!("cannot start {name} ({shown}): {e}"))?;
        let id = NEXT_ID.fetch_add(1, Ordering::SeqCst);
        let pid = child.id();
        children().push((id, child));
        Ok(Proc {
            name: name.to_owned(),
            id,
            pid,
            grace: None,
            stopped: false,
        })
    }

    /// Like [`Proc::spawn`], with stdin closed and stdout and stderr written to a new file `log`.
    pub fn spawn_logged(name: &str, cmd: &mut Command, log: &Path) -> Result<Proc> {
        let out = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        Proc::spawn(name, cmd)
    }

    /// Stops with SIGTERM first, and SIGKILL only after `grace`.
    pub fn term_grace(mut self, grace: Duration) -> Proc {
        self.grace = Some(grace);
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    fn with_child<T>(&self, f: impl FnOnce(&mut Child) -> T) -> Option<T> {
        children()
            .iter_mut()
            .find(|(id, _)| *id == self.id)
            .map(|(_, c)| f(c))
    }

    /// Its exit status, once it has exited (and until it is stopped).
    pub fn exited(&self) -> Option<ExitStatus> {
        self.with_child(|c| c.try_wait().ok().flatten()).flatten()
    }

    /// Whether it is still running.
    pub fn is_running(&self) -> bool {
        self.with_child(|c| matches!(c.try_wait(), Ok(None)))
            .unwrap_or(false)
    }

    /// Its stdin, if it was piped (taken once).
    pub fn take_stdin(&self) -> Option<ChildStdin> {
        self.with_child(|c| c.stdin.take()).flatten()
    }

    /// Its stdout, if it was piped (taken once).
    pub fn take_stdout(&self) -> Option<ChildStdout> {
        self.with_child(|c| c.stdout.take()).flatten()
    }

    /// Its stderr, if it was piped (taken once).
    pub fn take_stderr(&self) -> Option<ChildStderr> {
        self.with_child(|c| c.stderr.take()).flatten()
    }

    /// Sends `signal` to the process alone (not its group), e.g. SIGTERM to see it exit cleanly.
    pub fn signal(&self, signal: libc::c_int) {
        if self.is_running() {
            // SAFETY: kill(2) on our own, not yet reaped, child.
            unsafe {
                libc::kill(self.pid as libc::pid_t, signal);
            }
        }
    }

    /// Waits up to `timeout` for it to exit on its own; its status if it did.
    pub fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(s) = self.exited() {
                return Some(s);
            }
            if Instant::now() > end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Asks its group to stop (SIGTERM) without waiting; [`Proc::stop`] finishes the job.
    pub fn terminate(&self) {
        if self.is_running() {
            kill_group(self.pid, libc::SIGTERM);
        }
    }

    /// Stops it now: SIGTERM and up to the grace period when one is set, then SIGKILL to the
    /// group; reaped and unregistered. Once stopped, stopping again does nothing.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        if let Some(grace) = self.grace {
            self.terminate();
            self.wait_exit(grace);
        }
        let child = {
            let mut g = children();
            g.iter()
                .position(|(id, _)| *id == self.id)
                .map(|i| g.swap_remove(i).1)
        };
        // The group goes with its leader (a launcher's children with it).
        if let Some(mut c) = child {
            kill_unreaped(&mut c);
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn alive(pid: u32) -> bool {
        // SAFETY: signal 0 only checks that the process exists.
        unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
    }

    /// Whether `pid` is gone or a zombie (a killed grandchild lingers as one until init reaps it).
    fn dead(pid: u32) -> bool {
        !alive(pid)
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.contains(") Z "))
    }

    /// Polls until `pid` is [`dead`], failing with `what` after 10 s.
    fn wait_dead(pid: u32, what: &str) {
        let end = Instant::now() + Duration::from_secs(10);
        while !dead(pid) {
            assert!(Instant::now() < end, "{what} ({pid})");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Runs `sh -c script`, where the script starts `sleep 60` in the background and prints its
    /// pid first; returns the shell and that grandchild, which shares the shell's group.
    fn shell_with_grandchild(script: &str) -> (Proc, u32) {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]).stdout(Stdio::piped());
        let p = Proc::spawn("sh", &mut cmd).unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(p.take_stdout().unwrap()),
            &mut line,
        )
        .unwrap();
        (p, line.trim().parse().unwrap())
    }

    #[test]
    fn a_launcher_that_exited_unreaped_still_takes_its_group_with_it() {
        // The shell leaves a grandchild behind and exits; nothing has reaped it when it is
        // stopped, so its group is still its own and goes.
        let (p, grandchild) = shell_with_grandchild("sleep 60 & echo $!");
        wait_dead(p.pid(), "the shell never exited");
        assert!(alive(grandchild));
        drop(p);
        wait_dead(grandchild, "the grandchild survived");
    }

    #[test]
    fn a_dropped_proc_takes_its_whole_group_with_it() {
        // The shell starts a grandchild in the background and waits: the grandchild shares the
        // group, and must go too.
        let (p, grandchild) = shell_with_grandchild("sleep 60 & echo $!; wait");
        assert!(p.is_running() && alive(grandchild));
        let pid = p.pid();
        drop(p);
        wait_dead(grandchild, "the grandchild survived");
        assert!(!alive(pid), "the child was reaped");
    }

    /// Stopping twice (an explicit stop, then the drop) must not wait out the grace period again.
    #[test]
    fn a_stopped_proc_drops_at_once() {
        let mut cmd = Command::new("sleep");
        cmd.arg("60");
        let mut p = Proc::spawn("sleep", &mut cmd)
            .unwrap()
            .term_grace(Duration::from_secs(5));
        p.stop();
        let t = Instant::now();
        drop(p);
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }

    #[test]
    fn a_term_grace_lets_a_child_exit_on_sigterm() {
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "trap 'exit 7' TERM; echo ready; while :; do sleep 0.05; done",
        ])
        .stdout(Stdio::piped());
        let p = Proc::spawn("sh", &mut cmd)
            .unwrap()
            .term_grace(Duration::from_secs(5));
        // The shell says when its trap is installed.
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(p.take_stdout().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line.trim(), "ready");
        p.terminate();
        let status = p.wait_exit(Duration::from_secs(5)).unwrap();
        assert_eq!(status.code(), Some(7));
    }
}
