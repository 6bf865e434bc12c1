//! Test harness: starts the real `meshbreaker-sidecar` binary, talks to its HTTP
//! API, generates TCP traffic on loopback and inside network namespaces the
//! tests create (and delete). Everything waits by polling with deadlines.
#![allow(dead_code)]

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use meshbreaker_harness::sidecar::SidecarOpts;

pub const BIN: &str = env!("CARGO_BIN_EXE_meshbreaker-sidecar");

pub use meshbreaker_harness::sidecar::{ensure_tracefs, skip_bpf_tests};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub resets: u64,
    pub refused: u64,
    pub timeouts: u64,
}

pub struct Sidecar {
    running: meshbreaker_harness::sidecar::Sidecar,
    pub addr: SocketAddr,
    pub stderr: Arc<Mutex<Vec<String>>>,
}

impl Sidecar {
    /// Starts the binary on a free port and waits until /healthz answers.
    pub fn start(extra_args: &[&str]) -> Sidecar {
        Sidecar::start_wrapped(&[], extra_args)
    }

    /// Starts the binary through `wrapper` (e.g. setpriv restricting capabilities).
    pub fn start_wrapped(wrapper: &[&str], extra_args: &[&str]) -> Sidecar {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let opts = SidecarOpts {
            wrapper: wrapper.iter().map(|s| s.to_string()).collect(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            echo: true,
            log: None,
        };
        let running = meshbreaker_harness::sidecar::Sidecar::start(Path::new(BIN), addr, &opts)
            .unwrap_or_else(|e| panic!("{e}"));
        let sidecar = Sidecar {
            stderr: Arc::clone(&running.stderr),
            running,
            addr,
        };
        if let Some(ms) = sidecar.attach_ms() {
            eprintln!("attach time: {ms} ms");
        }
        sidecar
    }

    pub fn pid(&self) -> u32 {
        self.running.pid()
    }

    /// The load+attach time the binary logs at startup.
    pub fn attach_ms(&self) -> Option<f64> {
        self.stderr.lock().unwrap().iter().find_map(|l| {
            let rest = l.split_once("tracepoints in ")?.1;
            rest.split_once(" ms")?.0.parse().ok()
        })
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        http(self.addr, "GET", path).unwrap()
    }

    pub fn resets(&self) -> serde_json::Value {
        let (status, body) = self.get("/v1/resets");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Counters of one peer; zeros when the sidecar does not list it. The peer is looked up by
    /// its `peer` field, in Envoy's `upstream.address` form written out here by hand
    /// (`127.0.0.1:80`, `[::1]:80`), and its `addr`/`port` must agree with it.
    pub fn counts(&self, addr: IpAddr, port: u16) -> Counts {
        let doc = self.resets();
        let peers = doc["peers"].as_array().unwrap();
        let want = match addr {
            IpAddr::V4(v4) => format!("{v4}:{port}"),
            IpAddr::V6(v6) => format!("[{v6}]:{port}"),
        };
        let found: Vec<_> = peers
            .iter()
            .filter(|p| p["peer"] == want.as_str())
            .collect();
        assert!(found.len() <= 1, "peer {want} listed twice: {found:?}");
        for p in &found {
            assert_eq!(p["addr"], addr.to_string(), "{p}");
            assert_eq!(p["port"], port, "{p}");
        }
        found
            .first()
            .map(|p| Counts {
                resets: p["resets"].as_u64().unwrap(),
                refused: p["refused"].as_u64().unwrap(),
                timeouts: p["timeouts"].as_u64().unwrap(),
            })
            .unwrap_or_default()
    }

    /// Polls until the peer's counts equal `want` (or any exceeds it) or 10 s pass;
    /// returns what it saw last.
    pub fn wait_counts(&self, addr: IpAddr, port: u16, want: Counts) -> Counts {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let seen = self.counts(addr, port);
            let over = seen.resets > want.resets
                || seen.refused > want.refused
                || seen.timeouts > want.timeouts;
            if seen == want || over || Instant::now() > deadline {
                return seen;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// A metric without labels from /metrics.
    pub fn metric(&self, name: &str) -> u64 {
        let (_, text) = self.get("/metrics");
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("metric {name} missing from:\n{text}"))
    }

    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    pub fn is_running(&mut self) -> bool {
        self.running.is_running()
    }

    /// SIGTERM, then waits (10 s deadline) for the exit status.
    pub fn stop(self) -> ExitStatus {
        self.running
            .terminate(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("sidecar ignored SIGTERM for 10 s"))
    }
}

/// One HTTP/1.1 request, `Connection: close`; returns (status, body).
pub fn http(addr: SocketAddr, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no header end"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("no status"))?;
    Ok((status, body.to_string()))
}

// ---- traffic ----

/// `n` connects to `ip:port`, where nothing listens: each must be refused.
pub fn refuse_n(ip: IpAddr, port: u16, n: usize) {
    for i in 0..n {
        let err = TcpStream::connect((ip, port)).expect_err("connect to a closed port succeeded");
        assert_eq!(
            err.kind(),
            ErrorKind::ConnectionRefused,
            "connect #{i} to {ip}:{port}: {err}"
        );
    }
}

fn set_linger_zero(s: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid socket fd and a correctly sized linger struct.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER");
}

/// A server on `ip` that accepts `n` connections and aborts each (SO_LINGER 0,
/// so close sends an RST); the client sees each reset. Returns the server port.
pub fn reset_n(ip: IpAddr, n: usize) -> u16 {
    let listener = TcpListener::bind((ip, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = thread::spawn(move || {
        for _ in 0..n {
            let (conn, _) = listener.accept().unwrap();
            set_linger_zero(&conn);
            drop(conn);
        }
    });
    for i in 0..n {
        let mut c = TcpStream::connect((ip, port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 16];
        let err = c
            .read(&mut buf)
            .expect_err("server abort did not reset the client");
        assert_eq!(err.kind(), ErrorKind::ConnectionReset, "client #{i}: {err}");
    }
    server.join().unwrap();
    port
}

/// An ordinary exchange: connect, request, response, FIN both ways. Returns the port.
pub fn normal_exchange(ip: IpAddr) -> u16 {
    let listener = TcpListener::bind((ip, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut buf = [0u8; 4];
        conn.read_exact(&mut buf).unwrap();
        conn.write_all(b"pong").unwrap();
        conn.shutdown(Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        conn.read_to_end(&mut rest).unwrap();
    });
    let mut c = TcpStream::connect((ip, port)).unwrap();
    c.write_all(b"ping").unwrap();
    let mut reply = Vec::new();
    c.read_to_end(&mut reply).unwrap();
    assert_eq!(reply, b"pong");
    drop(c);
    server.join().unwrap();
    port
}

/// `n` connects to `ip:port` that never get an answer, each abandoned by the
/// client after `wait` while the socket is still in SYN_SENT.
pub fn abandon_n(ip: IpAddr, port: u16, n: usize, wait: Duration) {
    for i in 0..n {
        let err = TcpStream::connect_timeout(&SocketAddr::new(ip, port), wait)
            .expect_err("connect to a silent address succeeded");
        assert_eq!(
            err.kind(),
            ErrorKind::TimedOut,
            "connect #{i} to {ip}:{port}: {err}"
        );
    }
}

// ---- network namespaces ----

/// A network namespace owned by the test, deleted on drop.
pub struct NetNs {
    pub name: String,
}

fn run_ok(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl NetNs {
    pub fn new(tag: &str) -> NetNs {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "mbsc-{}-{}-{tag}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        run_ok("ip", &["netns", "add", &name]);
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run_ok("ip", &all);
    }

    /// Runs `f` on a thread that joined this namespace; threads it spawns
    /// inherit the namespace. The sidecar stays in the root namespace.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        thread::spawn(move || {
            let ns = File::open(&path).unwrap();
            // SAFETY: setns on a namespace fd we hold open; affects this thread only.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Envoy's `upstream.address` form of a listed peer's `addr` and `port`, by hand: `a.b.c.d:port`,
/// `[v6]:port`.
pub fn envoy_address(addr: &serde_json::Value, port: &serde_json::Value) -> String {
    let addr = addr.as_str().unwrap();
    let port = port.as_u64().unwrap();
    if addr.contains(':') {
        format!("[{addr}]:{port}")
    } else {
        format!("{addr}:{port}")
    }
}
