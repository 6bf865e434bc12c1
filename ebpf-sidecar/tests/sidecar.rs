//! End-to-end tests of the real binary against the running kernel (root).
//! They fail when the kernel refuses the program; only
//! MESHBREAKER_SKIP_BPF_TESTS=1 skips them, and says so.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use support::*;

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A loopback port nothing listens on, below the ephemeral range so no client
/// socket's own port can equal it (no TCP self-connect).
/// A loopback port that refuses connects for as long as the returned guard lives: a socket bound to
/// it that never listens. Holding the bind keeps parallel tests (and anything else) off the port,
/// so a connect can only be answered by the kernel's RST.
fn closed_port() -> (u16, ClosedPort) {
    // SAFETY: plain socket calls on a fresh fd with correctly sized sockaddr structs.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let rc = libc::bind(fd, &addr as *const _ as *const libc::sockaddr, len);
        assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
        let mut got: libc::sockaddr_in = std::mem::zeroed();
        let mut got_len = len;
        let rc = libc::getsockname(fd, &mut got as *mut _ as *mut libc::sockaddr, &mut got_len);
        assert_eq!(rc, 0, "getsockname: {}", std::io::Error::last_os_error());
        (u16::from_be(got.sin_port), ClosedPort(fd))
    }
}

struct ClosedPort(libc::c_int);

impl Drop for ClosedPort {
    fn drop(&mut self) {
        // SAFETY: the fd is owned by this guard.
        unsafe {
            libc::close(self.0);
        }
    }
}

fn zero() -> Counts {
    Counts::default()
}

#[test]
fn refused_connects_on_loopback_count_once_each_and_nothing_else() {
    if skip_bpf_tests("refused_connects_on_loopback_count_once_each_and_nothing_else") {
        return;
    }
    let sidecar = Sidecar::start(&[]);
    let (port, _reserved) = closed_port();
    refuse_n(LOCALHOST, port, 25);
    let unrelated = normal_exchange(LOCALHOST);

    let want = Counts {
        refused: 25,
        ..zero()
    };
    let seen = sidecar.wait_counts(LOCALHOST, port, want);
    eprintln!("127.0.0.1:{port} after 25 refused connects: {seen:?}");
    assert_eq!(seen, want);
    assert_eq!(
        sidecar.counts(LOCALHOST, unrelated),
        zero(),
        "a normal exchange was counted"
    );

    // IPv6 keys are counted apart from IPv4 ones.
    let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
    refuse_n(v6, port, 5);
    let want6 = Counts {
        refused: 5,
        ..zero()
    };
    assert_eq!(sidecar.wait_counts(v6, port, want6), want6);
    assert_eq!(
        sidecar.counts(LOCALHOST, port),
        want,
        "IPv6 refusals leaked into the IPv4 peer"
    );
}

#[test]
fn ipv4_mapped_peers_are_reported_as_ipv4() {
    if skip_bpf_tests("ipv4_mapped_peers_are_reported_as_ipv4") {
        return;
    }
    let sidecar = Sidecar::start(&[]);
    let (port, _reserved) = closed_port();
    // A dual-stack (AF_INET6) socket connecting to ::ffff:127.0.0.1 talks IPv4 on the wire; Envoy
    // would print that upstream as 127.0.0.1:port, and so must the sidecar.
    let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
    refuse_n(mapped, port, 4);
    let want = Counts {
        refused: 4,
        ..zero()
    };
    assert_eq!(sidecar.wait_counts(LOCALHOST, port, want), want);
    let doc = sidecar.resets();
    let listed: Vec<&str> = doc["peers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["port"] == port)
        .map(|p| p["peer"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [format!("127.0.0.1:{port}")], "{doc}");
}

#[test]
fn server_abort_with_linger_zero_counts_resets_at_the_client_not_refused() {
    if skip_bpf_tests("server_abort_with_linger_zero_counts_resets_at_the_client_not_refused") {
        return;
    }
    let sidecar = Sidecar::start(&[]);
    let port = reset_n(LOCALHOST, 25);
    let unrelated = normal_exchange(LOCALHOST);

    let want = Counts {
        resets: 25,
        ..zero()
    };
    let seen = sidecar.wait_counts(LOCALHOST, port, want);
    eprintln!("127.0.0.1:{port} after 25 server aborts: {seen:?}");
    assert_eq!(seen, want);
    assert_eq!(
        sidecar.counts(LOCALHOST, unrelated),
        zero(),
        "a normal exchange was counted"
    );
}

#[test]
fn normal_traffic_counts_nothing() {
    if skip_bpf_tests("normal_traffic_counts_nothing") {
        return;
    }
    let sidecar = Sidecar::start(&[]);
    let ports: Vec<u16> = (0..10).map(|_| normal_exchange(LOCALHOST)).collect();
    // A refusal afterwards proves the program was attached while the exchanges ran.
    let (marker, _reserved_marker) = closed_port();
    refuse_n(LOCALHOST, marker, 1);
    let one = Counts {
        refused: 1,
        ..zero()
    };
    assert_eq!(sidecar.wait_counts(LOCALHOST, marker, one), one);
    for port in ports {
        assert_eq!(
            sidecar.counts(LOCALHOST, port),
            zero(),
            "normal exchange on port {port} counted"
        );
    }
}

#[test]
fn connect_abandoned_in_syn_sent_counts_as_timeout() {
    if skip_bpf_tests("connect_abandoned_in_syn_sent_counts_as_timeout") {
        return;
    }
    let sidecar = Sidecar::start(&[]);
    // In a namespace of our own: a veth whose far end answers nothing. The
    // permanent neighbour entry sends the SYN to a MAC nobody has, so the
    // client stays in SYN_SENT (no RST, no ICMP) until it gives up.
    let ns = NetNs::new("silent");
    ns.ip(&[
        "link", "add", "mbv0", "type", "veth", "peer", "name", "mbv1",
    ]);
    ns.ip(&["addr", "add", "198.18.1.1/24", "dev", "mbv0"]);
    ns.ip(&["link", "set", "mbv0", "up"]);
    ns.ip(&["link", "set", "mbv1", "up"]);
    ns.ip(&[
        "neigh",
        "add",
        "198.18.1.2",
        "lladdr",
        "02:00:00:00:00:02",
        "dev",
        "mbv0",
        "nud",
        "permanent",
    ]);
    let silent: IpAddr = "198.18.1.2".parse().unwrap();
    let port = 47_001;

    let started = Instant::now();
    ns.run(move || abandon_n(silent, port, 5, Duration::from_millis(200)));
    eprintln!("5 abandoned connects took {:?}", started.elapsed());

    let want = Counts {
        timeouts: 5,
        ..zero()
    };
    let seen = sidecar.wait_counts(silent, port, want);
    eprintln!("{silent}:{port} after 5 abandoned connects: {seen:?}");
    assert_eq!(seen, want);
}

#[test]
fn refused_and_resets_count_exactly_inside_a_test_namespace() {
    if skip_bpf_tests("refused_and_resets_count_exactly_inside_a_test_namespace") {
        return;
    }
    let sidecar = Sidecar::start(&[]);
    let ns = NetNs::new("local");
    ns.ip(&["addr", "add", "198.18.2.1/32", "dev", "lo"]);
    let ip: IpAddr = "198.18.2.1".parse().unwrap();
    let (refused_port, reset_port, unrelated) = ns.run(move || {
        refuse_n(ip, 4_242, 10);
        (4_242, reset_n(ip, 10), normal_exchange(ip))
    });

    let refused = Counts {
        refused: 10,
        ..zero()
    };
    let resets = Counts {
        resets: 10,
        ..zero()
    };
    assert_eq!(sidecar.wait_counts(ip, refused_port, refused), refused);
    assert_eq!(sidecar.wait_counts(ip, reset_port, resets), resets);
    assert_eq!(sidecar.counts(ip, unrelated), zero());
}

/// Every non-comment line is `name{labels} value` or `name value`.
fn assert_prometheus_text(text: &str) {
    let mut families = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            families.push(rest.split_whitespace().next().unwrap().to_string());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        value
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        let name = match series.split_once('{') {
            Some((name, labels)) => {
                let labels = labels
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("unclosed labels: {line}"));
                for pair in labels.split(',') {
                    let (k, v) = pair
                        .split_once('=')
                        .unwrap_or_else(|| panic!("bad label: {line}"));
                    assert!(
                        k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                        "{line}"
                    );
                    assert!(
                        v.len() >= 2 && v.starts_with('"') && v.ends_with('"'),
                        "{line}"
                    );
                }
                name
            }
            None => series,
        };
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                && !name.starts_with(|c: char| c.is_ascii_digit()),
            "bad metric name: {line}"
        );
        assert!(
            families.iter().any(|f| f == name),
            "{name} has no TYPE line"
        );
    }
}

#[test]
fn http_api_serves_spec_json_prometheus_healthz_and_404() {
    if skip_bpf_tests("http_api_serves_spec_json_prometheus_healthz_and_404") {
        return;
    }
    let sidecar = Sidecar::start(&[]);
    let (port, _reserved) = closed_port();
    refuse_n(LOCALHOST, port, 3);
    let want = Counts {
        refused: 3,
        ..zero()
    };
    assert_eq!(sidecar.wait_counts(LOCALHOST, port, want), want);

    let doc = sidecar.resets();
    let obj = doc.as_object().unwrap();
    let mut keys: Vec<_> = obj.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["now_ms", "peers", "started_at_ms"]);
    let started = doc["started_at_ms"].as_u64().unwrap();
    let now = doc["now_ms"].as_u64().unwrap();
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(
        started <= now && now <= wall + 1000 && wall - now < 60_000,
        "{doc}"
    );
    let peers = doc["peers"].as_array().unwrap();
    assert!(!peers.is_empty());
    for p in peers {
        let mut keys: Vec<_> = p.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(
            keys,
            ["addr", "last_ms", "peer", "port", "refused", "resets", "timeouts"],
            "{p}"
        );
        p["addr"].as_str().unwrap().parse::<IpAddr>().unwrap();
        assert_eq!(p["peer"], envoy_address(&p["addr"], &p["port"]), "{p}");
        assert!(p["port"].as_u64().unwrap() > 0 && p["port"].as_u64().unwrap() <= 65535);
        for k in ["resets", "refused", "timeouts"] {
            p[k].as_u64().unwrap();
        }
        let last = p["last_ms"].as_u64().unwrap();
        assert!(
            last + 5 >= started && last <= now,
            "last_ms {last} outside [{started}, {now}]"
        );
    }

    let (status, text) = sidecar.get("/metrics");
    assert_eq!(status, 200);
    assert_prometheus_text(&text);
    let series =
        format!("meshbreaker_sidecar_refused_total{{addr=\"127.0.0.1\",port=\"{port}\"}} 3");
    assert!(
        text.lines().any(|l| l == series),
        "missing `{series}` in:\n{text}"
    );
    for family in ["resets", "refused", "timeouts"] {
        assert!(text.contains(&format!("# HELP meshbreaker_sidecar_{family}_total ")));
        assert!(text.contains(&format!(
            "# TYPE meshbreaker_sidecar_{family}_total counter\n"
        )));
    }

    assert_eq!(sidecar.get("/healthz").0, 200);
    assert_eq!(sidecar.get("/nope").0, 404);
    assert_eq!(sidecar.get("/v1/resets/extra").0, 404);
    assert_eq!(http(sidecar.addr, "POST", "/v1/resets").unwrap().0, 404);
}

#[test]
fn restart_gives_a_new_started_at_and_fresh_counters() {
    if skip_bpf_tests("restart_gives_a_new_started_at_and_fresh_counters") {
        return;
    }
    let first = Sidecar::start(&[]);
    let (port, _reserved) = closed_port();
    refuse_n(LOCALHOST, port, 2);
    let two = Counts {
        refused: 2,
        ..zero()
    };
    assert_eq!(first.wait_counts(LOCALHOST, port, two), two);
    let first_started = first.resets()["started_at_ms"].as_u64().unwrap();
    let stderr = first.stderr.clone();
    let status = first.stop();
    assert!(status.success(), "SIGTERM exit status {status}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !stderr
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("programs detached"))
    {
        assert!(
            Instant::now() < deadline,
            "no detach message: {:?}",
            stderr.lock().unwrap()
        );
        thread::sleep(Duration::from_millis(10));
    }

    // Wall-clock ms: make sure a new millisecond has begun.
    thread::sleep(Duration::from_millis(2));
    let second = Sidecar::start(&[]);
    let second_started = second.resets()["started_at_ms"].as_u64().unwrap();
    assert!(
        second_started > first_started,
        "{second_started} <= {first_started}"
    );
    assert_eq!(
        second.counts(LOCALHOST, port),
        zero(),
        "counters survived a restart"
    );
}

#[test]
fn more_peers_than_the_map_holds_keep_counting_with_bounded_rss() {
    if skip_bpf_tests("more_peers_than_the_map_holds_keep_counting_with_bounded_rss") {
        return;
    }
    const MAX_PEERS: usize = 128;
    const EVENTS: usize = 100_000;
    const PORTS: u16 = 2_000;
    let mut sidecar = Sidecar::start(&["--max-peers", &MAX_PEERS.to_string()]);
    let _ = sidecar.resets();
    let _ = sidecar.get("/metrics");
    let rss_rest = sidecar.rss_kib();
    let events_before = sidecar.metric("meshbreaker_sidecar_events_total");

    // 100,000 refused connects spread over 2,000 loopback ports (10000..12000),
    // many more peers than the map holds.
    let started = Instant::now();
    let workers: Vec<_> = (0..2)
        .map(|w| {
            thread::spawn(move || {
                let mut refused = 0usize;
                for i in 0..EVENTS / 2 {
                    let port = 10_000 + ((i * 2 + w) % PORTS as usize) as u16;
                    if std::net::TcpStream::connect((LOCALHOST, port)).is_err() {
                        refused += 1;
                    }
                }
                refused
            })
        })
        .collect();
    let refused: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
    eprintln!(
        "{refused} refused connects over {PORTS} ports in {:?}",
        started.elapsed()
    );
    assert!(
        refused >= EVENTS - 1_000,
        "only {refused} of {EVENTS} connects were refused"
    );

    for _ in 0..20 {
        let _ = sidecar.resets();
        let _ = sidecar.get("/metrics");
    }
    assert!(sidecar.is_running(), "sidecar died under load");
    let rss_after = sidecar.rss_kib();
    eprintln!("sidecar RSS at rest: {rss_rest} KiB; after {refused} events: {rss_after} KiB");

    let peers = sidecar.resets()["peers"].as_array().unwrap().len();
    assert!(
        peers <= MAX_PEERS,
        "{peers} peers listed with --max-peers {MAX_PEERS}"
    );
    let events = sidecar.metric("meshbreaker_sidecar_events_total") - events_before;
    assert!(
        events >= refused as u64,
        "program counted {events} events for {refused} refusals"
    );
    assert_eq!(
        sidecar.metric("meshbreaker_sidecar_map_update_failures_total"),
        0
    );
    assert_eq!(sidecar.metric("meshbreaker_sidecar_read_failures_total"), 0);
    assert!(
        rss_after <= rss_rest + 16 * 1024,
        "RSS grew from {rss_rest} KiB to {rss_after} KiB"
    );

    // Still counting exactly after all that eviction.
    let (port, _reserved) = closed_port();
    refuse_n(LOCALHOST, port, 7);
    let want = Counts {
        refused: 7,
        ..zero()
    };
    assert_eq!(sidecar.wait_counts(LOCALHOST, port, want), want);
}

/// Runs the binary through `wrapper`, expecting it to refuse to start; returns
/// (exit success, stderr lines). Kills it and fails if it is still running after 20 s.
fn run_failing(wrapper: &[&str]) -> (bool, Vec<String>) {
    let mut child = Command::new(wrapper[0])
        .args(&wrapper[1..])
        .arg(BIN)
        .args(["--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the sidecar started although it should have refused to");
        }
        thread::sleep(Duration::from_millis(10));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (
        status.success(),
        stderr.lines().map(str::to_string).collect(),
    )
}

#[test]
fn cap_bpf_and_cap_perfmon_are_all_it_needs_as_uid_0() {
    if skip_bpf_tests("cap_bpf_and_cap_perfmon_are_all_it_needs_as_uid_0") {
        return;
    }
    // What docker-compose.yml and the DaemonSet grant: no CAP_SYS_ADMIN, no DAC override.
    let sidecar =
        Sidecar::start_wrapped(&["setpriv", "--bounding-set=-all,+bpf,+perfmon", "--"], &[]);
    let caps = std::fs::read_to_string(format!("/proc/{}/status", sidecar.pid())).unwrap();
    let eff = caps
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .unwrap()
        .trim();
    assert_eq!(
        u64::from_str_radix(eff, 16).unwrap(),
        (1 << 38) | (1 << 39),
        "CapEff {eff}"
    );
    let (port, _reserved) = closed_port();
    refuse_n(LOCALHOST, port, 3);
    let want = Counts {
        refused: 3,
        ..zero()
    };
    assert_eq!(sidecar.wait_counts(LOCALHOST, port, want), want);
}

#[test]
fn without_capabilities_it_names_them_in_one_line() {
    if skip_bpf_tests("without_capabilities_it_names_them_in_one_line") {
        return;
    }
    let (ok, lines) = run_failing(&[
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
    ]);
    assert!(!ok);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("CAP_BPF") && lines[0].contains("CAP_PERFMON"),
        "{lines:?}"
    );
}

#[test]
fn without_tracefs_it_says_so_in_one_line() {
    if skip_bpf_tests("without_tracefs_it_says_so_in_one_line") {
        return;
    }
    // A private mount namespace in which tracefs is not mounted anywhere.
    let script = "umount -l /sys/kernel/tracing 2>/dev/null; umount -l /sys/kernel/debug/tracing 2>/dev/null; \
                  mount -t tmpfs none /sys/kernel/tracing && exec \"$0\" \"$@\"";
    let (ok, lines) = run_failing(&["unshare", "-m", "sh", "-c", script]);
    assert!(!ok);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("no tracefs mounted at /sys/kernel/tracing"),
        "{lines:?}"
    );
}

#[test]
fn without_btf_it_says_so_in_one_line() {
    if skip_bpf_tests("without_btf_it_says_so_in_one_line") {
        return;
    }
    ensure_tracefs();
    let script = "mount -t tmpfs none /sys/kernel/btf && exec \"$0\" \"$@\"";
    let (ok, lines) = run_failing(&["unshare", "-m", "sh", "-c", script]);
    assert!(!ok);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("no BTF at /sys/kernel/btf/vmlinux"),
        "{lines:?}"
    );
}
