//! Unit tests of the filter's glue: whole requests through [`Exchange`] and the [`Engine`] against
//! the fake host (Envoy's CAS rule, byte header maps, a hook between a worker's read and write).
//! Several engines sharing one fake host are several Envoy workers.

use policy_core::config::Config;
use policy_core::encoding::SlotState;
use policy_core::window::Window;

use crate::engine::{normalize_upstream, Engine, MIN_TAKEOVER_IDLE_MS};
use crate::host::{FakeHost, Host, Map};
use crate::request::{
    Exchange, ATTEMPT_COUNT, CLUSTER_NAME, REQUEST_DURATION, RESPONSE_FLAGS, UPSTREAM_ADDRESS,
};
use crate::shared::Names;

const FAST: &str = r#"{"breaker":{"window":"10s","buckets":10,"min_requests":5,"error_rate_threshold":0.5,
    "sleep_window":"1s","max_sleep_window":"4s","half_open_max_probes":2,"half_open_successes_to_close":2}}"#;

fn engine(host: &FakeHost, json: &str, seed: u64) -> Engine<FakeHost> {
    Engine::new(
        host.clone(),
        Config::parse(json.as_bytes()).unwrap(),
        "mb",
        seed,
    )
}

/// A request as the client sends it.
#[derive(Clone)]
struct Req {
    cluster: Vec<u8>,
    headers: Vec<(String, Vec<u8>)>,
}

fn get(cluster: &str) -> Req {
    Req {
        cluster: cluster.as_bytes().to_vec(),
        headers: vec![
            (":method".into(), b"GET".to_vec()),
            (":path".into(), b"/".to_vec()),
            (":authority".into(), b"svc".to_vec()),
        ],
    }
}

impl Req {
    fn with(mut self, name: &str, value: &[u8]) -> Req {
        self.headers.retain(|(n, _)| n != name);
        self.headers.push((name.to_string(), value.to_vec()));
        self
    }
}

/// What the upstream and Envoy's stream info say about the response.
#[derive(Clone)]
struct Resp {
    headers: Vec<(String, Vec<u8>)>,
    trailers: Option<Vec<(String, Vec<u8>)>>,
    attempt_count: Option<u64>,
    duration_ms: Option<u64>,
    flags: u64,
    upstream: Option<Vec<u8>>,
}

fn status(code: u16) -> Resp {
    Resp {
        headers: vec![(":status".into(), code.to_string().into_bytes())],
        trailers: None,
        attempt_count: Some(1),
        duration_ms: Some(1),
        flags: 0,
        upstream: Some(b"10.0.0.5:8080".to_vec()),
    }
}

fn ok() -> Resp {
    status(200)
}

fn fail() -> Resp {
    status(503)
}

impl Resp {
    fn header(mut self, name: &str, value: &[u8]) -> Resp {
        self.headers.push((name.to_string(), value.to_vec()));
        self
    }
    fn attempts(mut self, n: Option<u64>) -> Resp {
        self.attempt_count = n;
        self
    }
}

/// What the client (and the router) saw of one request.
#[derive(Debug)]
struct Seen {
    admitted: bool,
    status: Option<u32>,
    local_headers: Vec<(String, Vec<u8>)>,
    request_headers: Vec<(String, Vec<u8>)>,
}

impl Seen {
    fn rejected(&self) -> bool {
        !self.admitted
    }
    fn local(&self, name: &str) -> Option<String> {
        self.local_headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
    fn upstream_header(&self, name: &str) -> Option<String> {
        self.request_headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
}

/// Delivers the queue notifications Envoy would have posted to this worker's thread before its
/// next event (another worker tripped a key): [`Engine::on_queue_ready`].
fn deliver(e: &mut Engine<FakeHost>) {
    let mine = e.queue_token();
    let ready = e.host.take_ready();
    let (for_me, others): (Vec<u32>, Vec<u32>) = ready.into_iter().partition(|t| Some(*t) == mine);
    e.host.inner.borrow_mut().queue_ready.extend(others);
    for t in for_me {
        e.on_queue_ready(t);
    }
}

fn start(e: &mut Engine<FakeHost>, now_ms: u64, req: &Req) -> (Exchange, Seen) {
    deliver(e);
    let host = e.host.clone();
    host.set_now_ms(now_ms);
    let headers: Vec<(&str, &[u8])> = req
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_slice()))
        .collect();
    host.new_stream(&headers, &[(CLUSTER_NAME, &req.cluster)]);
    let mut x = Exchange::default();
    let admitted = x.on_request_headers(e, true);
    let stream = host.stream();
    let (status, local_headers) = match stream.local_response {
        Some((s, h, _)) => (Some(s), h),
        None => (None, Vec::new()),
    };
    let request_headers = stream
        .maps
        .get(&Map::RequestHeaders)
        .cloned()
        .unwrap_or_default();
    (
        x,
        Seen {
            admitted,
            status,
            local_headers,
            request_headers,
        },
    )
}

fn finish(e: &mut Engine<FakeHost>, mut x: Exchange, now_ms: u64, resp: &Resp) {
    let host = e.host.clone();
    host.set_now_ms(now_ms);
    host.new_stream(&[], &[]);
    let h: Vec<(&str, &[u8])> = resp
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_slice()))
        .collect();
    host.set_map(Map::ResponseHeaders, &h);
    x.on_response_headers(e);
    if let Some(t) = &resp.trailers {
        let t: Vec<(&str, &[u8])> = t.iter().map(|(n, v)| (n.as_str(), v.as_slice())).collect();
        host.set_map(Map::ResponseTrailers, &t);
        x.on_response_trailers(e);
    }
    if let Some(n) = resp.attempt_count {
        host.set_property(ATTEMPT_COUNT, &n.to_le_bytes());
    }
    if let Some(ms) = resp.duration_ms {
        host.set_property(REQUEST_DURATION, &((ms * 1_000_000) as i64).to_le_bytes());
    }
    host.set_property(RESPONSE_FLAGS, &resp.flags.to_le_bytes());
    if let Some(u) = &resp.upstream {
        host.set_property(UPSTREAM_ADDRESS, u);
    }
    x.on_log(e);
}

/// One whole request.
fn exchange(e: &mut Engine<FakeHost>, now_ms: u64, req: &Req, resp: &Resp) -> Seen {
    let (x, seen) = start(e, now_ms, req);
    if seen.admitted {
        finish(e, x, now_ms, resp);
    }
    seen
}

fn metric(host: &FakeHost, key: &str, name: &str) -> i64 {
    host.metric(&format!("key=.={key};.;{name}")).unwrap_or(0)
}

#[allow(dead_code)]
fn decision(host: &FakeHost, key: &str, d: &str) -> i64 {
    host.metric(&format!(
        "key=.={key};.;decision=.={d};.;meshbreaker_requests_total"
    ))
    .unwrap_or(0)
}

/// Trips `cluster` on engine `e` at `now_ms` with 5 failures and a tick.
fn trip(e: &mut Engine<FakeHost>, cluster: &str, now_ms: u64) {
    trip_req(e, &get(cluster), now_ms);
}

fn trip_req(e: &mut Engine<FakeHost>, req: &Req, now_ms: u64) {
    for i in 0..5 {
        exchange(e, now_ms + i, req, &fail());
    }
    e.on_tick(now_ms + 200);
    assert!(
        exchange(e, now_ms + 201, req, &ok()).rejected(),
        "the key should be open"
    );
}

fn slot_of(host: &FakeHost, key: &str) -> Option<(u32, SlotState)> {
    let s = host.inner.borrow();
    s.shared.iter().find_map(|(name, (v, _))| {
        let slot: u32 = name.strip_prefix("meshbreaker/mb/v3/s/")?.parse().ok()?;
        let st = SlotState::decode(v).ok()?;
        (st.key == key).then_some((slot, st))
    })
}

// ---------------------------------------------------------------- the basics

#[test]
fn closed_request_path_reads_shared_data_only_when_its_cache_is_old_and_writes_nothing() {
    let host = FakeHost::default();
    let mut e = engine(&host, FAST, 1);
    host.reset_calls();
    let seen = exchange(&mut e, 0, &get("backend"), &ok());
    assert!(seen.admitted);
    let first = host.calls("get_shared");
    assert!(
        first >= 1,
        "a new key looks for its slot and reads its state"
    );
    host.reset_calls();
    assert!(exchange(&mut e, 1, &get("backend"), &ok()).admitted);
    assert_eq!(host.calls("get_shared"), 0, "known CLOSED in this epoch");
    assert_eq!(host.calls("set_shared"), 0);
    // A tick moves the epoch on; the flush of the key's samples reads the state again, so the
    // request after it still reads nothing.
    e.on_tick(200);
    host.reset_calls();
    assert!(exchange(&mut e, 201, &get("backend"), &ok()).admitted);
    assert_eq!(host.calls("get_shared"), 0, "the tick's flush refreshed it");
    // An idle key (no flush at the tick) reads its state once at its next request.
    e.on_tick(400);
    e.on_tick(600);
    host.reset_calls();
    let (x, seen) = start(&mut e, 601, &get("backend"));
    assert!(seen.admitted);
    assert_eq!(
        host.calls("get_shared"),
        1,
        "one read after the epoch moved on"
    );
    assert_eq!(host.calls("set_shared"), 0);
    finish(&mut e, x, 602, &ok());
}

#[test]
fn default_get_gets_idempotent_retry_headers_and_client_retry_headers_are_stripped() {
    let host = FakeHost::default();
    let mut e = engine(&host, "{}", 1);
    let req = get("backend")
        .with("x-envoy-max-retries", b"10")
        .with("x-envoy-retry-grpc-on", b"unavailable")
        .with("x-envoy-upstream-rq-per-try-timeout-ms", b"1");
    let seen = exchange(&mut e, 0, &req, &ok());
    assert_eq!(
        seen.upstream_header("x-envoy-retry-on").as_deref(),
        Some("5xx,reset")
    );
    assert_eq!(
        seen.upstream_header("x-envoy-max-retries").as_deref(),
        Some("2")
    );
    assert_eq!(seen.upstream_header("x-envoy-retry-grpc-on"), None);
    assert_eq!(
        seen.upstream_header("x-envoy-upstream-rq-per-try-timeout-ms"),
        None
    );
}

#[test]
fn failures_seen_by_two_workers_trip_the_shared_breaker_for_both() {
    let host = FakeHost::default();
    let mut a = engine(&host, FAST, 1);
    let mut b = engine(&host, FAST, 2);
    for i in 0..3 {
        exchange(&mut a, i, &get("backend"), &fail());
        exchange(&mut b, i, &get("backend"), &fail());
    }
    a.on_tick(200);
    assert!(
        exchange(&mut b, 201, &get("backend"), &ok()).admitted,
        "3 of 6 seen"
    );
    b.on_tick(300);
    let seen = exchange(&mut a, 301, &get("backend"), &ok());
    assert_eq!(seen.status, Some(503));
    assert_eq!(
        seen.local("x-meshbreaker-reason").as_deref(),
        Some("error_rate")
    );
    assert!(exchange(&mut b, 302, &get("backend"), &ok()).rejected());
    a.on_tick(400);
    b.on_tick(400);
    assert_eq!(
        host.metric("key=.=backend;.;to=.=open;.;meshbreaker_transitions_total"),
        Some(1)
    );
    assert_eq!(metric(&host, "backend", "meshbreaker_state"), 1);
}

#[test]
fn a_worker_that_knows_a_key_closed_rejects_on_its_next_request_after_another_worker_trips_it() {
    let host = FakeHost::default();
    let mut a = engine(&host, FAST, 1);
    let mut b = engine(&host, FAST, 2);
    exchange(&mut b, 0, &get("c"), &ok());
    host.reset_calls();
    assert!(exchange(&mut b, 1, &get("c"), &ok()).admitted);
    assert_eq!(host.calls("get_shared"), 0, "b trusts its cache");
    for i in 0..6 {
        exchange(&mut a, 2 + i, &get("c"), &fail());
    }
    // a trips the key at its tick (before b's tick moves b's epoch on) and tells b.
    a.on_tick(200);
    let seen = exchange(&mut b, 201, &get("c"), &ok());
    assert!(seen.rejected(), "b's next request is rejected");
    assert_eq!(
        seen.local("x-meshbreaker-reason").as_deref(),
        Some("error_rate")
    );
}

#[test]
fn a_worker_without_a_queue_reads_the_state_on_every_request() {
    let host = FakeHost::default();
    let mut a = engine(&host, FAST, 1);
    host.inner.borrow_mut().refuse_queues = true;
    let mut b = engine(&host, FAST, 2);
    assert_eq!(b.queue_token(), None);
    exchange(&mut b, 0, &get("c"), &ok());
    let (x, _) = {
        host.reset_calls();
        start(&mut b, 1, &get("c"))
    };
    assert_eq!(
        host.calls("get_shared"),
        1,
        "no cache without notifications"
    );
    finish(&mut b, x, 1, &ok());
    for i in 0..6 {
        exchange(&mut a, 2 + i, &get("c"), &fail());
    }
    a.on_tick(200);
    assert!(exchange(&mut b, 201, &get("c"), &ok()).rejected());
}

/// Two workers, a and b; a's VM goes away (a reload replaced it) and b keeps ticking for 6 s, so
/// a's heartbeat is stale. Returns a's queue token and b.
fn a_peer_went_away(host: &FakeHost) -> (Option<u32>, Engine<FakeHost>) {
    host.set_now_ms(0);
    let a = engine(host, FAST, 1);
    let mut b = engine(host, FAST, 2);
    let token = a.queue_token();
    drop(a);
    for t in (100..=6_000).step_by(100) {
        b.on_tick(t);
    }
    (token, b)
}

#[test]
fn a_new_vm_takes_over_the_worker_index_of_a_vm_that_went_away_and_is_told_of_trips() {
    let host = FakeHost::default();
    let (old, mut b) = a_peer_went_away(&host);
    host.set_now_ms(6_000);
    let mut c = engine(&host, FAST, 3);
    assert_eq!(
        c.queue_token(),
        old,
        "a's index (and queue) is reused, not a new one"
    );
    assert_eq!(
        host.get_shared("meshbreaker/mb/v3/peers").0.as_deref(),
        Some(&b"2"[..])
    );
    exchange(&mut c, 6_001, &get("c"), &ok());
    trip(&mut b, "c", 6_002);
    assert!(exchange(&mut c, 6_203, &get("c"), &ok()).rejected());
}

#[test]
fn trips_are_not_queued_for_a_vm_that_went_away() {
    let host = FakeHost::default();
    let (gone, mut b) = a_peer_went_away(&host);
    let gone = gone.unwrap();
    trip(&mut b, "c", 6_002);
    assert!(
        host.inner.borrow().queues.get(&gone).unwrap().is_empty(),
        "nothing piles up in a dead VM's queue"
    );
}

#[test]
fn half_open_probe_quota_is_exact_across_workers_and_successes_close() {
    let host = FakeHost::default();
    let mut w: Vec<_> = (0..3).map(|i| engine(&host, FAST, i)).collect();
    trip(&mut w[0], "backend", 0);
    // Past the jittered sleep window (1 s × ≤ 1.2).
    let t = 2_000;
    // Each worker asks for one probe in turn, then once more: the quota of 2 is taken by the
    // first two workers, and every later request on any worker is rejected.
    let mut probes = vec![];
    for round in 0..2 {
        for (n, e) in w.iter_mut().enumerate() {
            let (x, seen) = start(e, t + round, &get("backend"));
            if seen.admitted {
                assert_eq!(
                    seen.upstream_header("x-envoy-max-retries").as_deref(),
                    Some("0")
                );
                probes.push((n, x));
            } else {
                assert_eq!(seen.local("retry-after").as_deref(), Some("1"));
            }
        }
    }
    let holders: Vec<usize> = probes.iter().map(|(n, _)| *n).collect();
    assert_eq!(holders, vec![0, 1], "one probe each on workers 0 and 1");
    // The first success (worker 1) does not close; the second, on another worker, does.
    let mut probes = probes.into_iter();
    let (n0, x0) = probes.next().unwrap();
    let (n1, x1) = probes.next().unwrap();
    finish(&mut w[n1], x1, t + 10, &ok());
    let (x2, seen) = start(&mut w[2], t + 11, &get("backend"));
    assert!(seen.admitted, "a probe slot freed: worker 2 probes");
    assert!(start(&mut w[1], t + 12, &get("backend")).1.rejected());
    assert_eq!(
        slot_of(&host, "backend").unwrap().1.breaker.state,
        policy_core::breaker::State::HalfOpen
    );
    finish(&mut w[n0], x0, t + 20, &ok());
    finish(&mut w[2], x2, t + 21, &ok());
    assert_eq!(
        slot_of(&host, "backend").unwrap().1.breaker.state,
        policy_core::breaker::State::Closed
    );
    assert!(exchange(&mut w[1], t + 30, &get("backend"), &ok()).admitted);
    w[0].on_tick(t + 300);
    assert_eq!(
        host.metric("key=.=backend;.;to=.=closed;.;meshbreaker_transitions_total"),
        Some(1)
    );
}

#[test]
fn forced_open_rejects_and_disabled_passes_without_headers() {
    let host = FakeHost::default();
    let mut f = engine(&host, r#"{"mode":"forced_open"}"#, 1);
    let seen = exchange(&mut f, 0, &get("c"), &ok());
    assert_eq!(
        seen.local("x-meshbreaker-reason").as_deref(),
        Some("forced_open")
    );
    assert_eq!(seen.local("retry-after").as_deref(), Some("30"));
    let host = FakeHost::default();
    let mut d = engine(&host, r#"{"mode":"disabled"}"#, 1);
    let seen = exchange(
        &mut d,
        0,
        &get("c").with("x-envoy-max-retries", b"5"),
        &ok(),
    );
    assert!(seen.admitted);
    assert_eq!(seen.upstream_header("x-envoy-retry-on"), None);
    assert_eq!(
        seen.upstream_header("x-envoy-max-retries"),
        None,
        "client retry headers are stripped in every mode"
    );
}

#[test]
fn disabled_and_forced_open_keys_spend_no_label_entry_or_slot() {
    // Keys whose mode never reads state took registry entries, labels and slots: with a disabled
    // default, a few thousand hostnames pushed the one enforced authority into `_other` and
    // competed with it for a slot.
    let host = FakeHost::default();
    let cfg = r#"{"key_by":"authority","max_keys":4,"mode":"disabled","breaker":{"window":"10s","buckets":10,
        "min_requests":5,"error_rate_threshold":0.5},"overrides":[
        {"match":{"authority":"pay.example.com"},"mode":"enforce"},
        {"match":{"authority":"closed.example.com"},"mode":"forced_open"}]}"#;
    let mut e = engine(&host, cfg, 1);
    for i in 0..50 {
        let seen = exchange(&mut e, i, &auth(&format!("h{i}.example")), &fail());
        assert!(seen.admitted);
        assert_eq!(seen.upstream_header("x-envoy-max-retries"), None);
        assert!(exchange(&mut e, i, &auth("closed.example.com"), &ok()).rejected());
    }
    e.on_tick(100);
    assert_eq!(e.keys.len(), 0, "nothing tracked");
    assert!(host
        .get_shared("meshbreaker/mb/v3/label/h0.example")
        .0
        .is_none());
    for i in 0..5 {
        exchange(&mut e, 200 + i, &auth("pay.example.com"), &fail());
    }
    e.on_tick(400);
    assert!(exchange(&mut e, 401, &auth("pay.example.com"), &ok()).rejected());
    e.on_tick(500);
    assert_eq!(
        metric(&host, "pay.example.com", "meshbreaker_state"),
        1,
        "its own label"
    );
    let held: Vec<String> = (0..4)
        .filter_map(|s| {
            let (v, _) = host.get_shared(&format!("meshbreaker/mb/v3/s/{s}"));
            let k = SlotState::decode(&v?).ok()?.key;
            (!k.is_empty()).then_some(k)
        })
        .collect();
    assert_eq!(held, vec!["pay.example.com".to_string()]);
}

#[test]
fn override_applies_to_its_cluster_only() {
    let host = FakeHost::default();
    let mut e = engine(
        &host,
        r#"{"overrides":[{"match":{"cluster":"hot"},"mode":"forced_open"}]}"#,
        1,
    );
    assert!(exchange(&mut e, 0, &get("hot"), &ok()).rejected());
    assert!(exchange(&mut e, 0, &get("cold"), &ok()).admitted);
}

#[test]
fn override_strip_downstream_headers_applies_to_its_keys() {
    // Smaller item: `overrides[].retry.strip_downstream_headers` used to be ignored.
    let host = FakeHost::default();
    let mut e = engine(
        &host,
        r#"{"overrides":[{"match":{"cluster":"trusted"},"retry":{"strip_downstream_headers":false,"policies":[]}}]}"#,
        1,
    );
    let req = |c: &str| get(c).with("x-envoy-retry-on", b"gateway-error");
    let trusted = exchange(&mut e, 0, &req("trusted"), &ok());
    assert_eq!(
        trusted.upstream_header("x-envoy-retry-on").as_deref(),
        Some("gateway-error")
    );
    let other = exchange(&mut e, 0, &req("other"), &ok());
    assert_eq!(
        other.upstream_header("x-envoy-retry-on").as_deref(),
        Some("5xx,reset")
    );
}

#[test]
fn labels_are_bounded_by_max_keys_across_workers() {
    let host = FakeHost::default();
    let cfg = r#"{"key_by":"authority","max_keys":3}"#;
    let mut a = engine(&host, cfg, 1);
    let mut b = engine(&host, cfg, 2);
    for i in 0..20u64 {
        let auth = format!("h{i};.;x=.=y");
        let e = if i % 2 == 0 { &mut a } else { &mut b };
        exchange(
            e,
            i * 2000,
            &get("c").with(":authority", auth.as_bytes()),
            &ok(),
        );
    }
    let names: Vec<String> = host
        .inner
        .borrow()
        .metric_names
        .iter()
        .map(|(_, n)| n.clone())
        .collect();
    let mut labels: Vec<&str> = names
        .iter()
        .filter_map(|n| n.strip_prefix("key=.=").and_then(|r| r.split(";.;").next()))
        .collect();
    labels.sort();
    labels.dedup();
    assert!(labels.len() <= 4, "{labels:?}");
    assert!(labels.contains(&"_other"));
    assert!(labels.iter().all(|l| !l.contains(';') && !l.contains('=')));
}

#[test]
fn keys_without_a_label_do_not_write_the_other_gauges() {
    // Every unlabelled key wrote the `_other` gauges (last writer wins): a state of 1 there said
    // nothing about which key, or whether any key, was open.
    let host = FakeHost::default();
    let cfg = r#"{"max_keys":2,"breaker":{"window":"10s","buckets":10,"min_requests":5,"error_rate_threshold":0.5}}"#;
    let mut e = engine(&host, cfg, 1);
    exchange(&mut e, 0, &get("a"), &ok());
    exchange(&mut e, 0, &get("b"), &ok());
    e.on_tick(100);
    // Both labels are spent for good; the slots free up once a and b have idled.
    for i in 0..5 {
        exchange(&mut e, 20_000 + i, &get("unlabelled"), &fail());
    }
    e.on_tick(20_200);
    assert!(exchange(&mut e, 20_201, &get("unlabelled"), &ok()).rejected());
    e.on_tick(20_300);
    assert_eq!(metric(&host, "_other", "meshbreaker_state"), 0);
    assert_eq!(metric(&host, "_other", "meshbreaker_error_rate_ppm"), 0);
    assert!(
        decision(&host, "_other", "allowed") >= 5,
        "its counters still add up"
    );
}

#[test]
fn budget_denies_retries_after_sustained_retrying() {
    let host = FakeHost::default();
    let cfg = r#"{"retry":{"budget":{"ratio":0.1,"min_retries_per_second":0}},"breaker":{"min_requests":1000}}"#;
    let mut e = engine(&host, cfg, 1);
    for i in 0..20 {
        exchange(&mut e, i * 10, &get("c"), &ok().attempts(Some(2)));
    }
    e.on_tick(1000);
    let seen = exchange(&mut e, 1001, &get("c"), &ok());
    assert_eq!(
        seen.upstream_header("x-envoy-max-retries").as_deref(),
        Some("0")
    );
    e.on_tick(1100);
    // The flush at t=100ms saw 11 retries for 11 requests (allowance 1.1): requests 11..19 and
    // the last one went out with retries switched off.
    assert_eq!(
        metric(&host, "c", "meshbreaker_retry_budget_denied_total"),
        10
    );
}

#[test]
fn kernel_resets_published_for_a_learned_host_trip_the_key() {
    use policy_core::encoding::ResetTotals;
    let host = FakeHost::default();
    let cfg =
        r#"{"reset_signals":{"max_resets_per_second":1},"breaker":{"window":"10s","buckets":10}}"#;
    let mut e = engine(&host, cfg, 1);
    let name = e.names().resets();
    let publish = |seq: u64, n: u64| {
        host.set_shared(
            &name,
            &ResetTotals {
                sequence: seq,
                peers: vec![("10.0.0.5:8080".into(), n)],
            }
            .encode(),
            None,
        )
        .unwrap();
    };
    publish(1, 100);
    // Envoy reports the IPv4-mapped form; the sidecar's peer is plain IPv4.
    let mut mapped = ok();
    mapped.upstream = Some(b"[::ffff:10.0.0.5]:8080".to_vec());
    exchange(&mut e, 0, &get("c"), &mapped);
    e.on_tick(200);
    assert!(
        exchange(&mut e, 201, &get("c"), &ok()).admitted,
        "old resets are a baseline"
    );
    publish(2, 111);
    e.on_tick(400);
    let seen = exchange(&mut e, 401, &get("c"), &ok());
    assert_eq!(
        seen.local("x-meshbreaker-reason").as_deref(),
        Some("kernel_resets")
    );
    e.on_tick(500);
    assert_eq!(metric(&host, "c", "meshbreaker_kernel_resets_total"), 11);
}

#[test]
fn kernel_resets_towards_one_of_40_upstream_hosts_are_all_attributed() {
    // A key remembered 16 hosts in a FIFO, learned at most 4 per flush: behind round-robin over
    // 40 endpoints, the resetting one was mostly not in the list and its events were lost.
    use policy_core::encoding::ResetTotals;
    let host = FakeHost::default();
    let cfg = r#"{"reset_signals":{"max_resets_per_second":100000},"breaker":{"window":"10s","buckets":10}}"#;
    let mut e = engine(&host, cfg, 1);
    let names = e.names().clone();
    let publish = |sequence: u64, total: u64| {
        let mut peers: Vec<(String, u64)> =
            (0..40).map(|i| (format!("10.0.0.{i}:8080"), 0)).collect();
        peers[27].1 = total;
        let t = ResetTotals { sequence, peers };
        host.set_shared(&names.resets(), &t.encode(), None).unwrap();
    };
    publish(1, 0);
    let mut now = 0;
    let mut total = 0;
    for step in 0..200u64 {
        for j in 0..40u64 {
            let mut r = ok();
            r.upstream = Some(format!("10.0.0.{}:8080", (step * 7 + j) % 40).into_bytes());
            exchange(&mut e, now, &get("c"), &r);
        }
        now += 100;
        if step % 10 == 9 {
            total += 20;
            publish(2 + step, total);
        }
        e.on_tick(now);
    }
    e.on_tick(now + 100);
    let attributed = metric(&host, "c", "meshbreaker_kernel_resets_total") as u64;
    assert!(
        attributed * 10 >= total * 9 && attributed <= total,
        "{attributed} of the sidecar's {total} resets attributed"
    );
}

#[test]
fn a_reset_poll_that_changes_nothing_for_a_key_does_not_rewrite_its_window() {
    // Every change of the published totals made every placed key on every worker rewrite its
    // whole window under Envoy's shared-data lock, with nothing merged or attributed.
    use policy_core::encoding::ResetTotals;
    let host = FakeHost::default();
    let cfg = r#"{"reset_signals":{},"breaker":{"window":"10s","buckets":10}}"#;
    let mut e = engine(&host, cfg, 1);
    let names = e.names().clone();
    let publish = |sequence: u64, other: u64| {
        let t = ResetTotals {
            sequence,
            peers: vec![("10.0.0.5:8080".into(), 0), ("10.9.9.9:80".into(), other)],
        };
        host.set_shared(&names.resets(), &t.encode(), None).unwrap();
    };
    publish(1, 0);
    exchange(&mut e, 0, &get("c"), &ok());
    e.on_tick(200);
    let writes = std::rc::Rc::new(std::cell::Cell::new(0));
    for n in 0..3 {
        let w = writes.clone();
        host.before_set("/w/", n, move || w.set(w.get() + 1));
    }
    // Another host resets: the key's host saw nothing.
    for (i, t) in [1_400u64, 2_600, 3_800].iter().enumerate() {
        publish(2 + i as u64, 10 * (i as u64 + 1));
        e.on_tick(*t);
    }
    assert_eq!(writes.get(), 0, "window rewritten with nothing new");
    // Its own host resets: attributed, written.
    let t = ResetTotals {
        sequence: 9,
        peers: vec![("10.0.0.5:8080".into(), 4)],
    };
    host.set_shared(&names.resets(), &t.encode(), None).unwrap();
    e.on_tick(5_000);
    assert_eq!(writes.get(), 1);
    e.on_tick(5_100);
    assert_eq!(metric(&host, "c", "meshbreaker_kernel_resets_total"), 4);
}

// ---------------------------------------------------------------- header bytes, never a panic

#[test]
fn non_utf8_header_values_never_panic() {
    let host = FakeHost::default();
    let cfg = r#"{"breaker":{"window":"10s","buckets":10,"min_requests":5,"error_rate_threshold":0.5},
        "retry":{"policies":[{"name":"h","match":{"headers":{"x-tenant":"a"},"path_prefix":"/api"},"retry_on":["5xx"],"max_retries":1},
                              {"name":"g","match":{"grpc":true},"retry_on":["reset"],"max_retries":1}]}}"#;
    let mut e = engine(&host, cfg, 1);
    let all_high: Vec<u8> = (0x80..=0xffu8).collect();
    let req = get("backend")
        .with(":authority", &all_high)
        .with(":method", b"G\xffT")
        .with(":path", b"/api\xff\xfe")
        .with("content-type", b"application/grpc\xff")
        .with("x-tenant", &all_high);
    let mut resp = fail()
        .header("grpc-status", &all_high)
        .header("x-envoy-attempt-count", &all_high);
    resp.headers[0].1 = b"50\xff".to_vec();
    resp.trailers = Some(vec![("grpc-status".into(), b"1\xff4".to_vec())]);
    resp.attempt_count = None;
    resp.upstream = Some(all_high.clone());
    for i in 0..5 {
        exchange(&mut e, i, &req, &resp);
    }
    // Broken property values too: a cluster name that is not UTF-8, flags of the wrong size.
    let mut odd = req.clone();
    odd.cluster = all_high.clone();
    host.set_property(RESPONSE_FLAGS, b"\xff");
    exchange(&mut e, 6, &odd, &resp);
    // The breaker still works: five 503s trip the key.
    for i in 0..5 {
        exchange(&mut e, 10 + i, &get("backend"), &fail());
    }
    e.on_tick(300);
    assert!(exchange(&mut e, 301, &get("backend"), &ok()).rejected());
}

#[test]
fn grpc_status_is_read_from_trailers_for_grpc_requests_only() {
    let host = FakeHost::default();
    let mut e = engine(&host, FAST, 1);
    let grpc = get("g").with("content-type", b"application/grpc");
    let mut unavailable = ok();
    unavailable.trailers = Some(vec![("grpc-status".into(), b"14".to_vec())]);
    for i in 0..5 {
        exchange(&mut e, i, &grpc, &unavailable);
    }
    e.on_tick(200);
    assert!(
        exchange(&mut e, 201, &grpc, &ok()).rejected(),
        "UNAVAILABLE in trailers trips"
    );
    // Smaller item: an HTTP upstream's `grpc-status` header is not a gRPC failure.
    let http_with_grpc_status = ok().header("grpc-status", b"14");
    for i in 0..10 {
        exchange(&mut e, 300 + i, &get("h"), &http_with_grpc_status);
    }
    e.on_tick(500);
    assert!(exchange(&mut e, 501, &get("h"), &ok()).admitted);
}

#[test]
fn a_request_without_a_response_is_not_a_sample() {
    // Smaller item: a downstream-cancelled request used to count as a success.
    let host = FakeHost::default();
    let mut e = engine(&host, FAST, 1);
    let mut cancelled = ok();
    cancelled.headers.clear();
    for i in 0..20 {
        exchange(&mut e, i, &get("c"), &cancelled);
    }
    for i in 0..5 {
        exchange(&mut e, 20 + i, &get("c"), &fail());
    }
    e.on_tick(200);
    assert!(
        exchange(&mut e, 201, &get("c"), &ok()).rejected(),
        "5 of 5 samples failed; the 20 cancelled requests do not dilute them"
    );
}

#[test]
fn a_response_cut_by_an_upstream_reset_is_a_failure_whatever_its_status() {
    // Envoy flags UR, UF, UC and UPE (0x800000: an HTTP/1.1 upstream reset in the middle of
    // its body, after a 200 went downstream) count under upstream_resets; a downstream reset
    // (DC 0x4000) says nothing about the upstream; with upstream_resets off, none counts.
    for (flags, counted) in [
        (0x10, true),
        (0x20, true),
        (0x40, true),
        (0x80_0000, true),
        (0x4000, false),
    ] {
        for upstream_resets in [true, false] {
            let cfg = FAST.replacen(
                "\"breaker\":{",
                &format!("\"breaker\":{{\"failure\":{{\"upstream_resets\":{upstream_resets}}},"),
                1,
            );
            assert_ne!(cfg, FAST);
            let host = FakeHost::default();
            let mut e = engine(&host, &cfg, 1);
            let mut cut = ok();
            cut.flags = flags;
            for i in 0..10 {
                exchange(&mut e, i, &get("c"), &cut);
            }
            e.on_tick(200);
            assert_eq!(
                exchange(&mut e, 201, &get("c"), &ok()).rejected(),
                counted && upstream_resets,
                "flags {flags:#x}, upstream_resets {upstream_resets}"
            );
        }
    }
}

// ---------------------------------------------------------------- attempt counts

#[test]
fn a_forged_attempt_count_from_the_upstream_is_clamped_to_the_policy() {
    let host = FakeHost::default();
    let mut e = engine(&host, FAST, 1);
    // No property (an Envoy without it), the upstream's header says 4294967295.
    let forged = ok()
        .attempts(None)
        .header("x-envoy-attempt-count", b"4294967295");
    for i in 0..10 {
        exchange(&mut e, i, &get("c"), &forged);
    }
    e.on_tick(200);
    // GET: idempotent policy, max_retries 2 → at most 3 attempts: 2 of 3 samples "failed" per
    // request is 0.67 ≥ 0.5, so clamping alone would still trip; what must not happen is 4e9
    // failures. Check the window holds exactly 30 samples.
    let (slot, _) = slot_of(&host, "c").unwrap();
    let w = window_of(&host, FAST, slot);
    assert_eq!(w.totals(200 / 1000).samples, 30);
    assert_eq!(w.totals(200 / 1000).retries, 20);
}

fn window_of(host: &FakeHost, cfg: &str, slot: u32) -> Window {
    let cfg = Config::parse(cfg.as_bytes()).unwrap();
    let g = crate::shared::Geometry {
        bucket_ms: policy_core::window::bucket_ms(&cfg.breaker),
        buckets: cfg.breaker.buckets,
        threshold_us: policy_core::window::threshold_us(&cfg.breaker).unwrap_or(0),
    };
    // The window table of that geometry, from the process's table description.
    let meta = host.get_shared(&Names::new("mb").meta()).0.unwrap();
    let meta = crate::shared::Meta::decode(&meta).unwrap();
    let table = meta
        .geoms
        .iter()
        .position(|x| x.is_some_and(|(h, _)| h == g))
        .unwrap();
    let mut name = String::new();
    Names::new("mb").window(table, slot, &mut name);
    Window::decode(&host.get_shared(&name).0.unwrap()).unwrap()
}

#[test]
fn attempt_count_comes_from_the_stream_info_when_the_response_has_none() {
    // Istio's virtual hosts add no x-envoy-attempt-count to responses: the property counts.
    let host = FakeHost::default();
    let mut e = engine(&host, FAST, 1);
    for i in 0..5 {
        exchange(&mut e, i, &get("c"), &ok().attempts(Some(2)));
    }
    e.on_tick(200);
    let seen = exchange(&mut e, 201, &get("c"), &ok());
    assert!(seen.rejected(), "5 of 10 attempts failed (0.5): trips");
}

#[test]
fn probes_and_budget_denied_requests_count_one_attempt() {
    let host = FakeHost::default();
    let mut e = engine(&host, FAST, 1);
    trip(&mut e, "c", 0);
    let (x, seen) = start(&mut e, 2_000, &get("c"));
    assert!(seen.admitted);
    // Envoy cannot retry a probe (x-envoy-max-retries: 0); a claimed 3 is clamped to 1, so the
    // probe is a success and not two retried failures.
    finish(&mut e, x, 2_001, &ok().attempts(Some(3)));
    let (_, st) = slot_of(&host, "c").unwrap();
    assert_eq!(st.breaker.successes, 1);

    // Budget-denied: no budget at all, so after the first merge every GET goes out with
    // x-envoy-max-retries: 0; a claimed 3 attempts is one sample, not two retried failures.
    let host = FakeHost::default();
    let cfg = r#"{"retry":{"budget":{"ratio":0.0,"min_retries_per_second":0}},
        "breaker":{"window":"10s","buckets":10,"min_requests":1000}}"#;
    let mut e = engine(&host, cfg, 1);
    exchange(&mut e, 0, &get("d"), &ok());
    e.on_tick(200);
    let (x, seen) = start(&mut e, 300, &get("d"));
    assert_eq!(
        seen.upstream_header("x-envoy-max-retries").as_deref(),
        Some("0"),
        "budget-denied"
    );
    finish(&mut e, x, 301, &status(503).attempts(Some(3)));
    e.on_tick(500);
    let (slot, _) = slot_of(&host, "d").unwrap();
    let t = window_of(&host, cfg, slot).totals(0);
    assert_eq!((t.samples, t.failed(), t.retries), (2, 1, 0));
    assert_eq!(
        metric(&host, "d", "meshbreaker_retry_budget_denied_total"),
        1
    );
}

#[test]
fn dry_run_sends_probes_and_over_budget_requests_with_their_policys_retries() {
    // dry_run switched retries off (x-envoy-max-retries: 0) for (virtual) probes and requests
    // over the budget: it changed traffic it was only meant to observe.
    let host = FakeHost::default();
    let cfg = r#"{"mode":"dry_run","retry":{"budget":{"ratio":0.0,"min_retries_per_second":0}},
        "breaker":{"window":"10s","buckets":10,"min_requests":5,"error_rate_threshold":0.5,
        "sleep_window":"1s","max_sleep_window":"4s","half_open_max_probes":2,"half_open_successes_to_close":2}}"#;
    let mut e = engine(&host, cfg, 1);
    for i in 0..5 {
        exchange(&mut e, i, &get("c"), &fail());
    }
    e.on_tick(200);
    let over_budget = exchange(&mut e, 201, &get("c"), &fail());
    assert!(over_budget.admitted);
    assert_eq!(
        over_budget
            .upstream_header("x-envoy-max-retries")
            .as_deref(),
        Some("2")
    );
    assert_eq!(
        over_budget.upstream_header("x-envoy-retry-on").as_deref(),
        Some("5xx,reset")
    );
    let (_, probe) = start(&mut e, 2_000, &get("c"));
    assert!(probe.admitted);
    assert_eq!(
        probe.upstream_header("x-envoy-max-retries").as_deref(),
        Some("2")
    );
    e.on_tick(2_100);
    assert_eq!(decision(&host, "c", "probe"), 1, "it was the probe");
    assert!(
        metric(&host, "c", "meshbreaker_retry_budget_denied_total") >= 1,
        "what the budget would have denied is counted"
    );
}

#[test]
fn the_p95_gauge_is_the_nearest_millisecond() {
    // Rounded up, a P95 of 30 ms (its histogram bin ends a little above 30,000 µs) read 31.
    let host = FakeHost::default();
    let mut e = engine(&host, r#"{"breaker":{"window":"10s","buckets":10}}"#, 1);
    for i in 0..20 {
        let (x, seen) = start(&mut e, 1_000 + i, &get("c"));
        assert!(seen.admitted);
        let mut r = ok();
        r.duration_ms = Some(30);
        finish(&mut e, x, 1_030 + i, &r);
    }
    e.on_tick(1_200);
    assert_eq!(metric(&host, "c", "meshbreaker_latency_p95_ms"), 30);
}

// ---------------------------------------------------------------- slots under churn

const CHURN: &str = r#"{"key_by":"authority","max_keys":8,"breaker":{"window":"2s","buckets":4,"min_requests":5,
    "error_rate_threshold":0.5,"sleep_window":"30s","max_sleep_window":"60s"}}"#;

fn auth(a: &str) -> Req {
    get("c").with(":authority", a.as_bytes())
}

#[test]
fn an_open_key_is_never_taken_over_while_its_open_period_lasts() {
    let host = FakeHost::default();
    let mut a = engine(&host, CHURN, 1);
    let mut b = engine(&host, CHURN, 2);
    trip_req(&mut a, &auth("victim"), 0);
    // A flood of other authorities on both workers, long after every idle bound, for 20 s of a
    // 30 s sleep window: every slot of the 8-slot table is contended.
    let mut now = 1_000;
    for i in 0..400u64 {
        now += 50;
        let e = if i % 2 == 0 { &mut a } else { &mut b };
        exchange(e, now, &auth(&format!("flood{i}")), &ok());
        if i % 10 == 0 {
            a.on_tick(now);
            b.on_tick(now);
        }
    }
    assert!(now > MIN_TAKEOVER_IDLE_MS * 2);
    assert!(exchange(&mut a, now, &auth("victim"), &ok()).rejected());
    assert!(exchange(&mut b, now, &auth("victim"), &ok()).rejected());
    assert_eq!(
        slot_of(&host, "victim").unwrap().1.breaker.state,
        policy_core::breaker::State::Open
    );
}

#[test]
fn a_half_open_key_keeps_its_slot_while_its_probe_is_in_flight() {
    let host = FakeHost::default();
    let cfg = CHURN.replace("\"30s\"", "\"1s\"");
    let mut a = engine(&host, &cfg, 1);
    let mut b = engine(&host, &cfg, 2);
    trip_req(&mut a, &auth("victim"), 0);
    // One probe in flight that outlives every idle bound (a long request): its worker's activity
    // marks keep the key live while the other worker floods the table.
    let (_x, seen) = start(&mut a, 1_500, &auth("victim"));
    assert!(seen.admitted);
    let mut now = 1_500;
    for i in 0..400u64 {
        now += 50;
        exchange(&mut b, now, &auth(&format!("flood{i}")), &ok());
        a.on_tick(now);
        b.on_tick(now);
    }
    assert!(now > 1_500 + MIN_TAKEOVER_IDLE_MS * 3);
    assert_eq!(
        slot_of(&host, "victim").unwrap().1.breaker.state,
        policy_core::breaker::State::HalfOpen
    );
}

#[test]
fn an_open_key_left_alone_after_its_open_period_releases_its_slot_and_its_gauge() {
    // An OPEN key that got no further request held its slot and showed state 1 forever.
    let host = FakeHost::default();
    let cfg = CHURN.replace("\"30s\"", "\"1s\"");
    let mut a = engine(&host, &cfg, 1);
    trip_req(&mut a, &auth("victim"), 0);
    assert_eq!(metric(&host, "victim", "meshbreaker_state"), 1);
    // Open for at most 1.2 s, then idle for the takeover bound (5 s) and a tick.
    let mut now = 200;
    while now < 1_200 + MIN_TAKEOVER_IDLE_MS + 2_000 {
        now += 100;
        a.on_tick(now);
    }
    assert!(slot_of(&host, "victim").is_none(), "the slot was released");
    assert_eq!(metric(&host, "victim", "meshbreaker_state"), 0);
    // Seen again, the key starts afresh from CLOSED.
    assert!(exchange(&mut a, now, &auth("victim"), &ok()).admitted);
    assert_eq!(
        slot_of(&host, "victim").unwrap().1.breaker.state,
        policy_core::breaker::State::Closed
    );
}

#[test]
fn a_table_full_of_tripped_junk_authorities_cannot_be_pinned() {
    // Tripping max_keys junk authorities once pinned every slot for good: later keys ran
    // unguarded. Once their open periods end and they stay idle, their slots are reclaimed.
    let host = FakeHost::default();
    let cfg = CHURN.replace("\"30s\"", "\"1s\"");
    let mut a = engine(&host, &cfg, 1);
    let mut b = engine(&host, &cfg, 2);
    let mut now = 0;
    for i in 0..32 {
        for _ in 0..5 {
            now += 1;
            exchange(&mut a, now, &auth(&format!("junk{i}")), &fail());
        }
        now += 200;
        a.on_tick(now);
    }
    let open = (0..8u32)
        .filter(|s| {
            let (v, _) = host.get_shared(&format!("meshbreaker/mb/v3/s/{s}"));
            SlotState::decode(&v.unwrap()).unwrap().breaker.state
                == policy_core::breaker::State::Open
        })
        .count();
    assert_eq!(open, 8, "every slot holds a tripped junk authority");
    // Worker b sees none of the junk: its claims must take over the abandoned slots.
    now += 1_200 + MIN_TAKEOVER_IDLE_MS + 100;
    b.on_tick(now);
    for i in 0..10 {
        exchange(&mut b, now + i, &auth("guarded"), &fail());
    }
    b.on_tick(now + 200);
    assert!(
        slot_of(&host, "guarded").is_some(),
        "a slot for the new key"
    );
    assert!(
        exchange(&mut b, now + 201, &auth("guarded"), &ok()).rejected(),
        "the new key is guarded: it tripped"
    );
}

#[test]
fn closed_key_loses_its_slot_only_after_idling_longer_than_the_window() {
    let host = FakeHost::default();
    // One slot: the second key can only get it by taking it over.
    let cfg = r#"{"key_by":"authority","max_keys":1,"breaker":{"window":"20s","buckets":4}}"#;
    let mut e = engine(&host, cfg, 1);
    exchange(&mut e, 0, &auth("old"), &ok());
    e.on_tick(1_500);
    exchange(&mut e, 10_000, &auth("new"), &ok());
    assert_eq!(
        slot_of(&host, "old").map(|s| s.0),
        Some(0),
        "idle 10 s < window 20 s"
    );
    // "old" was last active at 0 s, its only request.
    exchange(&mut e, 22_000, &auth("new"), &ok());
    assert_eq!(
        slot_of(&host, "new").map(|s| s.0),
        Some(0),
        "idle 22 s > window"
    );
}

#[test]
fn key_that_lost_its_slot_gets_one_back() {
    // A key whose slot was taken over used to pass unguarded until evicted locally.
    let host = FakeHost::default();
    let cfg = r#"{"key_by":"authority","max_keys":1,"breaker":{"window":"1s","buckets":2,"min_requests":5,"error_rate_threshold":0.5}}"#;
    let mut a = engine(&host, cfg, 1);
    let mut b = engine(&host, cfg, 2);
    exchange(&mut a, 0, &auth("x"), &ok());
    a.on_tick(200);
    // Worker b takes the idle slot over for y; y then goes idle too.
    exchange(&mut b, 10_000, &auth("y"), &ok());
    b.on_tick(10_200);
    assert!(slot_of(&host, "y").is_some());
    // Worker a's x fails; it must get the (now idle) slot back and trip.
    for i in 0..10 {
        exchange(&mut a, 20_000 + i * 200, &auth("x"), &fail());
        a.on_tick(20_000 + i * 200 + 100);
    }
    assert!(slot_of(&host, "x").is_some());
    assert!(exchange(&mut a, 22_500, &auth("x"), &ok()).rejected());
}

#[test]
fn an_open_key_is_rejected_on_a_worker_whose_registry_is_full_of_busy_keys() {
    // A worker whose registry held only keys with requests in flight let every key new to it
    // through without reading its state, an OPEN one included, with its full retry policy.
    let host = FakeHost::default();
    let cfg = r#"{"key_by":"authority","max_keys":4,"breaker":{"window":"10s","buckets":10,"min_requests":5,
        "error_rate_threshold":0.5,"sleep_window":"30s","max_sleep_window":"60s"}}"#;
    let mut a = engine(&host, cfg, 1);
    let mut b = engine(&host, cfg, 2);
    trip_req(&mut a, &auth("victim"), 0);
    // Worker b: four long requests on other authorities fill its registry; none completes.
    let mut long = Vec::new();
    for i in 0..4 {
        let (x, seen) = start(&mut b, 300 + i, &auth(&format!("long{i}")));
        assert!(seen.admitted);
        long.push(x);
    }
    for t in [400, 1_000] {
        let seen = exchange(&mut b, t, &auth("victim"), &ok());
        assert!(
            seen.rejected(),
            "the OPEN victim passed on worker b at {t} ms"
        );
        assert_eq!(seen.status, Some(503));
    }
    // Still no probe on the untracked worker once the open period is over: the tracking worker
    // probes, and the victim closes there.
    let later = 40_000;
    assert!(exchange(&mut b, later, &auth("victim"), &ok()).rejected());
    assert!(exchange(&mut a, later, &auth("victim"), &ok()).admitted);
    // A CLOSED key new to b passes, untracked.
    assert!(exchange(&mut b, later, &auth("fresh"), &ok()).admitted);
    drop(long);
}

#[test]
fn a_full_registry_spends_no_label_and_no_slot() {
    // Smaller item: the label and the slot were taken before the local insert could fail.
    let host = FakeHost::default();
    let cfg = r#"{"key_by":"authority","max_keys":1,"breaker":{"sleep_window":"30s"}}"#;
    let mut e = engine(&host, cfg, 1);
    let (_x, seen) = start(&mut e, 0, &auth("busy"));
    assert!(seen.admitted);
    exchange(&mut e, 1, &auth("other"), &ok());
    assert!(host.get_shared("meshbreaker/mb/v3/label/other").0.is_none());
    assert_eq!(
        host.get_shared("meshbreaker/mb/v3/labels").0.as_deref(),
        Some(&b"1"[..])
    );
}

#[test]
fn undecodable_state_entry_is_never_treated_as_free() {
    // A state entry that does not decode (another version, damage) used to read as free.
    let host = FakeHost::default();
    let cfg = r#"{"max_keys":1}"#;
    let mut e = engine(&host, cfg, 1);
    host.set_shared("meshbreaker/mb/v3/s/0", b"Mx\x09garbage", None)
        .unwrap();
    let seen = exchange(&mut e, 0, &get("c"), &ok());
    assert!(seen.admitted, "fails open for the request");
    assert_eq!(
        host.get_shared("meshbreaker/mb/v3/s/0").0.as_deref(),
        Some(&b"Mx\x09garbage"[..]),
        "never overwritten"
    );
}

// ---------------------------------------------------------------- races between workers

#[test]
fn cas_exhaustion_fails_open_only_from_closed() {
    let host = FakeHost::default();
    let mut e = engine(&host, FAST, 1);
    trip(&mut e, "c", 0);
    host.inner.borrow_mut().mismatch_sets_containing = Some("/s/".into());
    // OPEN → HALF_OPEN needs a write that never succeeds: reject with retry-after 1.
    let seen = exchange(&mut e, 5_000, &get("c"), &ok());
    assert!(seen.rejected());
    assert_eq!(seen.local("retry-after").as_deref(), Some("1"));
    // A CLOSED key needs no write at all and passes.
    assert!(exchange(&mut e, 5_000, &get("d"), &ok()).admitted);
}

#[test]
fn cas_exhaustion_in_half_open_does_not_bypass_the_probe_quota() {
    let host = FakeHost::default();
    let mut e = engine(&host, FAST, 1);
    trip(&mut e, "c", 0);
    let (_p1, s1) = start(&mut e, 2_000, &get("c"));
    assert!(s1.admitted);
    host.inner.borrow_mut().fail_sets_containing = Some("/s/".into());
    for i in 0..20 {
        assert!(exchange(&mut e, 2_001 + i, &get("c"), &ok()).rejected());
    }
}

#[test]
fn two_workers_claiming_one_free_slot_never_overwrite_each_other() {
    // The first write to a never-written slot was blind and could erase a claim.
    let host = FakeHost::default();
    let cfg = r#"{"key_by":"authority","max_keys":1}"#;
    let mut a = engine(&host, cfg, 1);
    let b = std::rc::Rc::new(std::cell::RefCell::new(engine(&host, cfg, 2)));
    let b2 = b.clone();
    // Worker b claims the only slot for "kb" between worker a's read and a's claim of it for "ka".
    host.before_set("/s/0", 0, move || {
        exchange(&mut b2.borrow_mut(), 0, &auth("kb"), &ok());
    });
    exchange(&mut a, 0, &auth("ka"), &ok());
    assert!(slot_of(&host, "kb").is_some(), "b's claim survives");
    assert!(slot_of(&host, "ka").is_none());
}

#[test]
fn every_runtime_write_targets_an_entry_created_at_configure() {
    let host = FakeHost::default();
    let mut a = engine(&host, FAST, 1);
    let mut b = engine(&host, FAST, 2);
    let created: std::collections::HashSet<String> =
        host.inner.borrow().shared.keys().cloned().collect();
    trip(&mut a, "c", 0);
    exchange(&mut b, 2_000, &get("c"), &ok());
    exchange(&mut a, 2_000, &get("c"), &ok());
    a.on_tick(3_000);
    b.on_tick(3_000);
    let now: Vec<String> = host.inner.borrow().shared.keys().cloned().collect();
    let new: Vec<&String> = now
        .iter()
        .filter(|k| !created.contains(*k) && !k.contains("/label/"))
        .collect();
    assert!(new.is_empty(), "entries created at run time: {new:?}");
}

#[test]
fn a_circuit_closed_between_a_merge_and_its_trip_is_not_reopened() {
    // A trip once re-read the state and tripped a circuit that had just closed.
    let host = FakeHost::default();
    let mut a = engine(&host, FAST, 1);
    for i in 0..5 {
        exchange(&mut a, i, &get("c"), &fail());
    }
    let (slot, st) = slot_of(&host, "c").unwrap();
    let h = host.clone();
    // Between a's merge and a's trip, another worker trips, probes and closes (generation + 1).
    host.before_set(&format!("/s/{slot}"), 0, move || {
        let (_, cas) = h.get_shared(&format!("meshbreaker/mb/v3/s/{slot}"));
        let mut closed = st.clone();
        closed.breaker.generation += 1;
        h.set_shared(
            &format!("meshbreaker/mb/v3/s/{slot}"),
            &closed.encode(),
            cas,
        )
        .unwrap();
    });
    a.on_tick(200);
    assert_eq!(
        slot_of(&host, "c").unwrap().1.breaker.state,
        policy_core::breaker::State::Closed
    );
    assert!(exchange(&mut a, 201, &get("c"), &ok()).admitted);
}

#[test]
fn a_stale_state_read_does_not_wipe_a_newer_window() {
    // A flush that read the state before a close reset the freshly closed window.
    let host = FakeHost::default();
    let mut a = engine(&host, FAST, 1);
    let mut b = engine(&host, FAST, 2);
    exchange(&mut a, 0, &get("c"), &ok());
    // b's recorder holds one success and 3 failures, not yet flushed.
    exchange(&mut b, 0, &get("c"), &ok());
    for i in 1..4 {
        exchange(&mut b, i, &get("c"), &fail());
    }
    a.on_tick(200);
    let (slot, st) = slot_of(&host, "c").unwrap();
    let h = host.clone();
    let b = std::rc::Rc::new(std::cell::RefCell::new(b));
    let b2 = b.clone();
    // Right after a's flush reads the state (generation g; a's request reads none: it knows the
    // key CLOSED since its tick), the circuit
    // closes (g + 1) and b flushes into a window of g + 1.
    host.after_get(&format!("/s/{slot}"), 0, move || {
        let name = format!("meshbreaker/mb/v3/s/{slot}");
        let (_, cas) = h.get_shared(&name);
        let mut closed = st.clone();
        closed.breaker.generation += 1;
        h.set_shared(&name, &closed.encode(), cas).unwrap();
        b2.borrow_mut().on_tick(450);
    });
    exchange(&mut a, 400, &get("c"), &ok());
    let w = window_of(&host, FAST, slot);
    assert_eq!(
        w.totals(0).failed(),
        3,
        "b's failures survive a's stale read"
    );
    assert_eq!(w.totals(0).samples, 5, "and a's sample joined them");
}

#[test]
fn a_tick_with_a_stale_now_keeps_another_workers_samples_past_a_boundary() {
    // Worker b's tick took its `now` just before a bucket boundary; worker a merged after the
    // boundary, into the next bucket; b's flush of the same key then wiped that bucket as
    // "future".
    let host = FakeHost::default();
    let cfg = r#"{"breaker":{"window":"4s","buckets":4,"min_requests":100}}"#;
    let mut a = engine(&host, cfg, 1);
    let mut b = engine(&host, cfg, 2);
    for i in 0..3 {
        exchange(&mut b, 10_900 + i, &get("c"), &fail());
    }
    for i in 0..5 {
        exchange(&mut a, 11_000 + i, &get("c"), &fail());
    }
    a.on_tick(11_010);
    let (slot, _) = slot_of(&host, "c").unwrap();
    assert_eq!(window_of(&host, cfg, slot).totals(11).samples, 5);
    b.on_tick(10_990);
    let w = window_of(&host, cfg, slot);
    assert_eq!(
        w.totals(11).samples,
        8,
        "a's 5 samples survive b's stale tick"
    );
}

#[test]
fn with_one_bucket_samples_recorded_before_a_boundary_still_count() {
    // `buckets: 1`: a recorder of epoch E merged at E + 1 was dropped, every boundary.
    let host = FakeHost::default();
    let cfg =
        r#"{"breaker":{"window":"1s","buckets":1,"min_requests":5,"error_rate_threshold":0.5}}"#;
    let mut e = engine(&host, cfg, 1);
    e.on_tick(10_000);
    for i in 0..5 {
        exchange(&mut e, 10_950 + i, &get("c"), &fail());
    }
    e.on_tick(11_050);
    assert!(
        exchange(&mut e, 11_060, &get("c"), &ok()).rejected(),
        "the 5 failures merged after the boundary trip the key"
    );
}

#[test]
fn a_full_recorder_whose_merge_keeps_failing_retries_at_most_once_a_millisecond() {
    // Once full, every completion retried the merge (up to 16 compare-and-swaps each) with no
    // backoff: under contention on a hot key that multiplied the cost of every request.
    let host = FakeHost::default();
    let mut e = engine(
        &host,
        r#"{"breaker":{"window":"10s","buckets":10,"min_requests":100000}}"#,
        1,
    );
    exchange(&mut e, 0, &get("c"), &ok());
    host.inner.borrow_mut().mismatch_sets_containing = Some("/w/".into());
    host.reset_calls();
    for _ in 0..400 {
        exchange(&mut e, 50, &get("c"), &ok());
    }
    let sets = host.calls("set_shared");
    assert!(
        sets <= 2 * 17,
        "{sets} shared writes for 400 completions in one millisecond"
    );
    // The samples are still there, merged once the contention ends.
    host.inner.borrow_mut().mismatch_sets_containing = None;
    e.on_tick(200);
    let (slot, _) = slot_of(&host, "c").unwrap();
    let cfg = r#"{"breaker":{"window":"10s","buckets":10,"min_requests":100000}}"#;
    assert_eq!(window_of(&host, cfg, slot).totals(0).samples, 401);
}

// ---------------------------------------------------------------- reloads

#[test]
fn window_change_on_reload_restarts_the_window() {
    let host = FakeHost::default();
    let old =
        r#"{"breaker":{"window":"10s","buckets":10,"min_requests":5,"error_rate_threshold":0.5}}"#;
    let new =
        r#"{"breaker":{"window":"20s","buckets":10,"min_requests":5,"error_rate_threshold":0.5}}"#;
    let mut a = engine(&host, old, 1);
    for i in 0..50 {
        exchange(&mut a, 1_000_000 + i * 100, &get("busy"), &ok());
        a.on_tick(1_000_000 + i * 100 + 100);
    }
    // The reload: a new VM with the new window; the old one drains.
    let mut b = engine(&host, new, 2);
    for i in 0..10 {
        exchange(&mut b, 1_010_000 + i, &get("busy"), &fail());
    }
    b.on_tick(1_010_200);
    assert!(exchange(&mut b, 1_010_201, &get("busy"), &ok()).rejected());
}

#[test]
fn reload_keeps_an_open_key_open() {
    let host = FakeHost::default();
    let cfg = r#"{"breaker":{"window":"10s","buckets":10,"min_requests":5,"error_rate_threshold":0.5,"sleep_window":"30s"}}"#;
    let mut a = engine(&host, cfg, 1);
    trip(&mut a, "c", 0);
    let mut b = engine(
        &host,
        r#"{"breaker":{"window":"5s","buckets":5,"sleep_window":"30s"}}"#,
        2,
    );
    assert!(exchange(&mut b, 1_000, &get("c"), &ok()).rejected());
}

fn slots_of(host: &FakeHost, key: &str) -> Vec<(u32, SlotState)> {
    let s = host.inner.borrow();
    let mut v: Vec<(u32, SlotState)> = s
        .shared
        .iter()
        .filter_map(|(name, (v, _))| {
            let slot: u32 = name.strip_prefix("meshbreaker/mb/v3/s/")?.parse().ok()?;
            let st = SlotState::decode(v).ok()?;
            (st.key == key).then_some((slot, st))
        })
        .collect();
    v.sort_by_key(|x| x.0);
    v
}

#[test]
fn max_keys_change_on_reload_keeps_an_open_key_open() {
    let host = FakeHost::default();
    let cfg = |n: u32| {
        format!(
            r#"{{"key_by":"authority","max_keys":{n},"breaker":{{"window":"10s","buckets":10,"min_requests":5,"error_rate_threshold":0.5,"sleep_window":"30s"}}}}"#
        )
    };
    let mut a = engine(&host, &cfg(1000), 1);
    for k in ["k1", "k2", "k3", "k4"] {
        for i in 0..5 {
            exchange(&mut a, i, &auth(k), &fail());
        }
    }
    a.on_tick(200);
    for n in [10, 2000] {
        let mut b = engine(&host, &cfg(n), 2);
        for k in ["k1", "k2", "k3", "k4"] {
            assert!(
                exchange(&mut b, 1_000, &auth(k), &ok()).rejected(),
                "{k} with max_keys {n}"
            );
        }
    }
}

#[test]
fn a_key_that_recovered_after_max_keys_shrank_is_not_reopened_by_its_old_slot() {
    // After a reload that shrank max_keys, the OPEN copy left in the old, larger table won over
    // the live slot: once the key recovered, every later reload carried the stale OPEN state
    // into a new slot again, and the key went HALF_OPEN and rejected traffic.
    let host = FakeHost::default();
    let cfg = |n: u32, rate: f64| {
        format!(
            r#"{{"key_by":"authority","max_keys":{n},"breaker":{{"window":"10s","buckets":10,"min_requests":5,
            "error_rate_threshold":{rate},"sleep_window":"1s","max_sleep_window":"4s","half_open_max_probes":2,
            "half_open_successes_to_close":2}}}}"#
        )
    };
    let keys = ["k1", "k2", "k3", "k4"];
    let mut a = engine(&host, &cfg(1000, 0.5), 1);
    for k in keys {
        for i in 0..5 {
            exchange(&mut a, i, &auth(k), &fail());
        }
    }
    a.on_tick(200);
    assert!(
        keys.iter().any(|k| slot_of(&host, k).unwrap().0 >= 10),
        "some key sits outside the smaller table"
    );
    // Shrink: the new VM carries the open state into its table; the upstream recovers there.
    let mut b = engine(&host, &cfg(10, 0.5), 2);
    for k in keys {
        assert!(exchange(&mut b, 1_000, &auth(k), &ok()).rejected(), "{k}");
        for t in [3_000, 3_001] {
            assert!(exchange(&mut b, t, &auth(k), &ok()).admitted, "{k} probe");
        }
        assert!(
            exchange(&mut b, 3_002, &auth(k), &ok()).admitted,
            "{k} closed"
        );
    }
    // The old VM, still draining, uses the same breaker.
    a.on_tick(3_100);
    for k in keys {
        assert!(
            exchange(&mut a, 3_200, &auth(k), &ok()).admitted,
            "{k} on the old VM"
        );
        let held = slots_of(&host, k);
        assert_eq!(held.len(), 1, "{k} in one slot: {held:?}");
        assert!(held[0].0 < 10);
    }
    // Another reload (a threshold tweak): nothing reopens.
    let mut c = engine(&host, &cfg(10, 0.6), 3);
    for k in keys {
        let mut open = Vec::new();
        for i in 0..5 {
            let (x, seen) = start(&mut c, 10_000 + i, &auth(k));
            assert!(
                seen.admitted,
                "{k}: request {i} rejected after the second reload"
            );
            open.push(x);
        }
    }
}

#[test]
fn old_and_new_configurations_draining_side_by_side_do_not_blind_each_other() {
    let host = FakeHost::default();
    let old =
        r#"{"breaker":{"window":"10s","buckets":10,"min_requests":10,"error_rate_threshold":0.5}}"#;
    let new =
        r#"{"breaker":{"window":"10s","buckets":5,"min_requests":10,"error_rate_threshold":0.5}}"#;
    let mut a = engine(&host, old, 1);
    let mut b = engine(&host, new, 2);
    // Both flush every 100 ms; each sees only half the failures, and the new one gets enough.
    for i in 0..20u64 {
        let now = i * 100;
        exchange(&mut a, now, &get("c"), &fail());
        exchange(&mut b, now, &get("c"), &fail());
        a.on_tick(now + 50);
        b.on_tick(now + 50);
    }
    assert!(exchange(&mut b, 2_100, &get("c"), &ok()).rejected());
}

// ---------------------------------------------------------------- clock steps

#[test]
fn a_clock_step_back_never_holds_a_circuit_open_past_max_sleep_window() {
    let host = FakeHost::default();
    let mut e = engine(&host, FAST, 1);
    trip(&mut e, "c", 10_000_000);
    // One hour back: 1 s sleep, 4 s max, so at most 4.8 s more.
    let seen = exchange(&mut e, 10_000_000 - 3_600_000, &get("c"), &ok());
    assert!(seen.admitted, "a probe is let through");
}

#[test]
fn probes_started_before_a_clock_step_back_do_not_block_half_open() {
    let host = FakeHost::default();
    let mut e = engine(&host, FAST, 1);
    trip(&mut e, "c", 10_000_000);
    let (_p1, s1) = start(&mut e, 10_002_000, &get("c"));
    let (_p2, s2) = start(&mut e, 10_002_000, &get("c"));
    assert!(s1.admitted && s2.admitted);
    assert!(
        exchange(&mut e, 10_002_001, &get("c"), &ok()).rejected(),
        "quota full"
    );
    assert!(exchange(&mut e, 10_002_000 - 3_600_000, &get("c"), &ok()).admitted);
}

#[test]
fn a_clock_step_back_does_not_blind_the_window() {
    let host = FakeHost::default();
    let mut e = engine(&host, FAST, 1);
    for i in 0..4 {
        exchange(&mut e, 10_000_000 + i, &get("c"), &ok());
    }
    e.on_tick(10_000_200);
    let back = 10_000_000 - 3_600_000;
    for i in 0..10 {
        exchange(&mut e, back + i, &get("c"), &fail());
    }
    e.on_tick(back + 200);
    assert!(exchange(&mut e, back + 201, &get("c"), &ok()).rejected());
}

#[test]
fn latency_comes_from_the_stream_timer_not_the_wall_clock() {
    let host = FakeHost::default();
    let cfg = r#"{"breaker":{"window":"10s","buckets":10,"min_requests":5,"latency_p95_threshold":"100ms"}}"#;
    let mut e = engine(&host, cfg, 1);
    // The wall clock jumps 1 h forward while each request is in flight; Envoy's timer says 2 ms.
    for i in 0..10 {
        let (x, _) = start(&mut e, 1_000 + i, &get("c"));
        let mut r = ok();
        r.duration_ms = Some(2);
        finish(&mut e, x, 3_601_000 + i, &r);
    }
    e.on_tick(1_200);
    assert!(exchange(&mut e, 1_201, &get("c"), &ok()).admitted);
}

#[test]
fn after_a_clock_step_back_an_idle_key_can_be_taken_over_and_a_busy_one_cannot() {
    // Activity marks written before a step back lay in the future: no slot could be taken over,
    // and no mark was written, for the size of the step.
    let cfg = r#"{"key_by":"authority","max_keys":1,"breaker":{"window":"1s","buckets":2}}"#;
    // An idle key: a new key gets its slot once idle for the usual bound after the step.
    let host = FakeHost::default();
    let mut e = engine(&host, cfg, 1);
    exchange(&mut e, 600_000, &auth("old"), &ok());
    e.on_tick(600_100);
    assert!(slot_of(&host, "old").unwrap().1.last_active_ms >= 600_000);
    exchange(&mut e, 60_000, &auth("new"), &ok());
    e.on_tick(60_100);
    exchange(
        &mut e,
        60_000 + MIN_TAKEOVER_IDLE_MS + 1_500,
        &auth("new"),
        &ok(),
    );
    assert!(
        slot_of(&host, "new").is_some(),
        "the idle key's slot, 6.5 s after the step"
    );
    // A busy key keeps its slot across the step: its marks go on being written.
    let host = FakeHost::default();
    let mut busy = engine(&host, cfg, 1);
    let mut other = engine(&host, cfg, 2);
    for i in 0..10 {
        exchange(&mut busy, 600_000 + i * 100, &auth("busy"), &ok());
        busy.on_tick(600_050 + i * 100);
    }
    let mut now = 60_000;
    while now < 60_000 + 3 * MIN_TAKEOVER_IDLE_MS {
        exchange(&mut busy, now, &auth("busy"), &ok());
        busy.on_tick(now + 50);
        if now % 500 == 0 {
            exchange(&mut other, now + 60, &auth("other"), &ok());
            other.on_tick(now + 70);
        }
        now += 100;
    }
    assert!(
        slot_of(&host, "busy").is_some(),
        "the busy key kept its slot"
    );
    let mark = slot_of(&host, "busy").unwrap().1.last_active_ms;
    assert!(
        mark <= now && now - mark < 2_000,
        "its mark is the present: {mark}"
    );
}

// ---------------------------------------------------------------- upstream hosts

#[test]
fn upstream_hosts_are_normalized_and_non_ip_addresses_dropped() {
    assert_eq!(
        normalize_upstream("[::ffff:10.0.0.5]:8080").as_deref(),
        Some("10.0.0.5:8080")
    );
    assert_eq!(
        normalize_upstream("10.0.0.5:8080").as_deref(),
        Some("10.0.0.5:8080")
    );
    assert_eq!(normalize_upstream("[::1]:80").as_deref(), Some("[::1]:80"));
    assert_eq!(
        normalize_upstream("[0:0::1]:80").as_deref(),
        Some("[::1]:80")
    );
    assert_eq!(
        normalize_upstream("/var/run/some/very/long/pipe/path/that/goes/on.sock"),
        None
    );
    assert_eq!(normalize_upstream("envoy://internal_listener/x"), None);
    assert_eq!(normalize_upstream(""), None);
}

#[test]
fn hosts_are_learned_only_with_reset_signals_and_a_long_address_never_breaks_the_window() {
    let host = FakeHost::default();
    let mut e = engine(&host, FAST, 1);
    let mut pipe = fail();
    pipe.upstream =
        Some(b"/a/pipe/path/that/is/longer/than/sixty/four/bytes/for/sure/really.sock".to_vec());
    for i in 0..5 {
        exchange(&mut e, i, &get("c"), &pipe);
    }
    e.on_tick(200);
    assert!(
        exchange(&mut e, 201, &get("c"), &ok()).rejected(),
        "a long address used to wipe the window"
    );
    let (slot, _) = slot_of(&host, "c").unwrap();
    assert!(window_of(&host, FAST, slot).hosts.is_empty());
}

// ---------------------------------------------------------------- host calls per request

/// Host calls and shared-data operations per request, default configuration, for the three
/// states (memory per key is bounded): a change that adds any fails here.
#[test]
fn host_calls_per_request_are_pinned_for_the_default_config() {
    let host = FakeHost::default();
    let mut e = engine(&host, "{}", 1);
    exchange(&mut e, 0, &get("c"), &ok());
    e.on_tick(1);
    host.reset_calls();
    exchange(&mut e, 10, &get("c"), &ok());
    let closed = host.inner.borrow().calls.clone();
    let total: u64 = closed.values().sum();
    eprintln!("CLOSED: {total} host calls {closed:?}");
    assert_eq!(host.calls("get_shared"), 0, "{closed:?}");
    assert_eq!(host.calls("set_shared"), 0, "{closed:?}");
    assert_eq!(host.calls("increment_metric"), 0, "{closed:?}");
    assert_eq!(host.calls("property"), 3, "{closed:?}");
    // Round 1: 23; round 2: 10; with upstream latency: 11. Now: clock, cluster, all request
    // headers in one call, 2 retry headers (no strip: the client sent none); clock (the
    // upstream's latency ends here), :status; flags, attempt count, clock. No shared data: the
    // worker knows the key CLOSED (its tick's flush read it), and `request.duration` is read only
    // for a span that a latency rule could call slow.
    assert_eq!(total, 10, "{closed:?}");
    assert_eq!(host.calls("remove_header"), 0, "{closed:?}");

    // OPEN: the state read and the local reply; nothing written, no metric call.
    let mut e = engine(&FakeHost::default(), "{}", 1);
    let host = e.host.clone();
    for i in 0..20 {
        exchange(&mut e, 100 + i, &get("c"), &fail());
    }
    e.on_tick(300);
    host.reset_calls();
    assert!(exchange(&mut e, 301, &get("c"), &ok()).rejected());
    let open = host.inner.borrow().calls.clone();
    eprintln!("OPEN: {} host calls {open:?}", host.total_calls());
    assert_eq!(
        (host.calls("get_shared"), host.calls("set_shared")),
        (1, 0),
        "{open:?}"
    );
    assert_eq!(host.calls("send_local_response"), 1);
    assert_eq!(host.total_calls(), 5, "{open:?}");

    // HALF_OPEN: a probe is admitted with one CAS write; its completion is one more read and
    // write; the probe gets x-envoy-max-retries: 0 and no attempt-count read.
    let t = 300 + 40_000;
    exchange(&mut e, t, &get("c"), &ok().attempts(Some(1)));
    let (x, _) = {
        host.reset_calls();
        start(&mut e, t + 1, &get("c"))
    };
    let probe_start = host.inner.borrow().calls.clone();
    eprintln!(
        "HALF_OPEN probe admission: {} host calls {probe_start:?}",
        host.total_calls()
    );
    assert_eq!(
        (host.calls("get_shared"), host.calls("set_shared")),
        (1, 1),
        "{probe_start:?}"
    );
    assert_eq!(host.total_calls(), 6, "{probe_start:?}");
    host.reset_calls();
    finish(&mut e, x, t + 2, &ok());
    let probe_end = host.inner.borrow().calls.clone();
    eprintln!(
        "HALF_OPEN probe completion: {} host calls {probe_end:?}",
        host.total_calls()
    );
    assert_eq!(host.calls("property"), 1, "flags only: {probe_end:?}");
    // The clock at the response headers, :status, flags, the clock at the end, the state's read
    // and write, the state gauge.
    assert_eq!(host.total_calls(), 7, "{probe_end:?}");
}

#[test]
fn workers_that_raced_to_seed_the_slot_hash_settle_on_the_open_slot() {
    // Shared data has no create-if-absent: two VMs starting together can each write a seed.
    let host = FakeHost::default();
    let cfg = r#"{"key_by":"authority","max_keys":64,"breaker":{"window":"10s","buckets":10,"min_requests":5,
        "error_rate_threshold":0.5,"sleep_window":"30s"}}"#;
    let mut a = engine(&host, cfg, 1);
    // b's blind first write lands after a's: b never sees a's seed at configure time.
    host.set_shared("meshbreaker/mb/v3/meta", b"999|64", None)
        .unwrap();
    let mut b = engine(&host, cfg, 2);
    trip_req(&mut a, &auth("victim"), 0);
    // Until the next meta refresh b may look in the wrong place; after it, never.
    exchange(&mut b, 300, &auth("victim"), &ok());
    a.on_tick(1_500);
    b.on_tick(1_600);
    assert!(exchange(&mut b, 1_700, &auth("victim"), &ok()).rejected());
    assert!(exchange(&mut a, 1_700, &auth("victim"), &ok()).rejected());
}

/// Counts the heap bytes this thread holds (allocated minus freed), for the memory test: the real
/// allocations, not an estimate of them.
struct CountingAlloc;

thread_local! {
    static HELD: std::cell::Cell<isize> = const { std::cell::Cell::new(0) };
    static ALLOCATIONS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Allocations (and reallocations) this thread made so far.
fn allocations() -> u64 {
    ALLOCATIONS.with(|a| a.get())
}

fn count_allocation() {
    let _ = ALLOCATIONS.try_with(|a| a.set(a.get() + 1));
}

fn held_bytes() -> isize {
    HELD.with(|h| h.get())
}

fn count_held(delta: isize) {
    let _ = HELD.try_with(|h| h.set(h.get() + delta));
}

unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        count_held(layout.size() as isize);
        count_allocation();
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        count_held(-(layout.size() as isize));
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new: usize) -> *mut u8 {
        count_held(new as isize - layout.size() as isize);
        count_allocation();
        unsafe { std::alloc::System.realloc(ptr, layout, new) }
    }
}

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

#[test]
fn a_closed_request_allocates_nothing_in_the_engine() {
    // The engine's whole part of a CLOSED request (key, decision, retry plan, outcome), after
    // warm-up: no host call (the state is cached, no flush is due) and no allocation. What the
    // host hands back (header map, properties) is the host's allocation, not counted here.
    use policy_core::retry::RequestView;
    let host = FakeHost::default();
    let mut e = engine(&host, "{}", 1);
    exchange(&mut e, 0, &get("backend"), &ok());
    e.on_tick(100);
    let parts = crate::engine::KeyParts {
        cluster: "backend",
        route: "",
        authority: "",
    };
    let view = RequestView {
        method: "GET",
        path: "/",
        content_type: None,
        headers: &(),
    };
    let outcome = policy_core::window::Outcome {
        http_status: Some(200),
        grpc_status: None,
        upstream_reset: false,
        latency_us: Some(900),
        attempts: 1,
    };
    // Warm the buffers (recorder, registry) once.
    for i in 0..300 {
        let a = e.on_request(&parts, &view, 101 + i / 100);
        e.on_complete_at(a.local.unwrap(), &outcome, None, None, 101 + i / 100);
    }
    host.reset_calls();
    let before = allocations();
    for _ in 0..100 {
        let a = e.on_request(&parts, &view, 104);
        assert_eq!(a.decision, policy_core::breaker::Decision::Allow);
        e.on_complete_at(a.local.unwrap(), &outcome, None, None, 104);
    }
    let made = allocations() - before;
    assert_eq!(host.total_calls(), 0, "{:?}", host.inner.borrow().calls);
    assert_eq!(made, 0, "allocations in 100 CLOSED requests");
}

#[test]
fn a_tracked_key_costs_well_under_2_kib_of_heap_per_worker() {
    // A dense 12 KiB histogram per key and worker made 10,000 keys cost 160 MiB. Measured: the
    // heap a worker's engine holds (what dropping it frees; the fake host, standing for Envoy,
    // stays alive) with 2,000 tracked keys against one with none.
    use policy_core::window::RECORDER_MAX_SAMPLES;
    let host = FakeHost::default();
    let cfg = r#"{"key_by":"authority","max_keys":4000}"#;
    let held_by = |keys: u64| {
        let mut e = engine(&host, cfg, 1);
        for i in 0..keys {
            exchange(&mut e, i, &auth(&format!("host-{i}.example.com")), &ok());
        }
        e.on_tick(5_000);
        let before = held_bytes();
        drop(e);
        before - held_bytes()
    };
    let empty = held_by(0);
    let full = held_by(2_000);
    let per_key = usize::try_from((full - empty) / 2_000).unwrap();
    // A key whose recorder fills between two merges holds its latencies too.
    let worst_recorder = RECORDER_MAX_SAMPLES * std::mem::size_of::<u32>();
    eprintln!("heap per key: {per_key} B (+ at most {worst_recorder} B of unmerged latencies)");
    assert!(per_key > 100, "{per_key} B per key: not measuring the keys");
    assert!(per_key + worst_recorder <= 2048, "{per_key} B per key");
}

#[test]
fn reloads_through_many_windows_reuse_a_bounded_set_of_window_tables() {
    // Every reload that changed the window's geometry added max_keys window entries for good.
    let host = FakeHost::default();
    for i in 0..12u64 {
        let cfg = format!(
            r#"{{"max_keys":16,"breaker":{{"window":"{}s","buckets":10,"min_requests":5,"error_rate_threshold":0.5}}}}"#,
            10 + i
        );
        let mut e = engine(&host, &cfg, i);
        let key = format!("c{i}");
        for j in 0..5 {
            exchange(&mut e, 1_000 * i + j, &get(&key), &fail());
        }
        e.on_tick(1_000 * i + 200);
        assert!(
            exchange(&mut e, 1_000 * i + 201, &get(&key), &ok()).rejected(),
            "reload {i}: the new window trips"
        );
    }
    let tables: std::collections::BTreeSet<String> = host
        .inner
        .borrow()
        .shared
        .keys()
        .filter_map(|k| {
            let rest = k.strip_prefix("meshbreaker/mb/v3/w/")?;
            Some(rest.split('/').next()?.to_string())
        })
        .collect();
    assert!(
        tables.len() <= 1 + crate::shared::SPARE_GEOMETRIES,
        "{} window tables after 12 geometries: {tables:?}",
        tables.len()
    );
}

#[test]
fn a_plugin_going_away_hands_over_its_unmerged_samples() {
    // Unflushed recorders (up to 100 ms per worker) died with an old root on reload.
    let host = FakeHost::default();
    let mut old = engine(&host, FAST, 1);
    for i in 0..5 {
        exchange(&mut old, 10 + i, &get("c"), &fail());
    }
    old.flush_all(20);
    let mut new = engine(&host, FAST, 2);
    assert!(
        exchange(&mut new, 30, &get("c"), &ok()).rejected(),
        "the old VM's failures count"
    );
}

#[test]
fn a_slot_taken_over_does_not_inherit_the_previous_keys_hosts() {
    // Smaller item: a takeover kept the previous key's host cursors.
    let host = FakeHost::default();
    let cfg = r#"{"key_by":"authority","max_keys":1,"reset_signals":{},"breaker":{"window":"1s","buckets":2}}"#;
    let mut e = engine(&host, cfg, 1);
    exchange(&mut e, 0, &auth("old"), &ok());
    e.on_tick(200);
    let w = window_of(&host, cfg, 0);
    assert_eq!(w.hosts.len(), 1);
    let mut other = ok();
    other.upstream = Some(b"10.9.9.9:80".to_vec());
    exchange(&mut e, 10_000, &auth("new"), &other);
    e.on_tick(10_200);
    assert!(slot_of(&host, "new").is_some());
    let w = window_of(&host, cfg, 0);
    let hosts: Vec<&str> = w.hosts.iter().map(|h| h.host.as_str()).collect();
    assert_eq!(hosts, vec!["10.9.9.9:80"]);
}

#[test]
fn a_flood_of_new_keys_costs_a_bounded_number_of_slot_searches() {
    // Review §3: every request for an unknown key ran a slot search (8+ shared reads), so an
    // authority flood multiplied lock traffic under Envoy's one shared-data mutex.
    let host = FakeHost::default();
    let mut e = engine(&host, r#"{"key_by":"authority","max_keys":100000}"#, 1);
    e.on_tick(0);
    host.reset_calls();
    for i in 0..1000u64 {
        exchange(
            &mut e,
            1 + i / 100,
            &auth(&format!("flood{i}.example")),
            &ok(),
        );
    }
    let reads = host.calls("get_shared");
    let sets = host.calls("set_shared");
    // 64 searched keys (label marker, counter, 8 probes, claim, decide) and 936 others (label
    // marker, counter and the 8 probe reads that look for a slot they already hold: no claim,
    // no write, no state read for the decision).
    assert!(
        reads <= 64 * 13 + 936 * 11,
        "{reads} shared reads for 1000 new keys"
    );
    // Writes: each key's label (marker and counter, within max_keys) and one claim per searched
    // key; keys over the budget claim nothing.
    assert!(
        sets <= 1000 * 2 + 64,
        "{sets} shared writes for 1000 new keys"
    );
    e.on_tick(20);
    let seen = exchange(&mut e, 21, &auth("flood999.example"), &ok());
    assert!(seen.admitted);
    assert!(
        slot_of(&host, "flood999.example").is_some(),
        "searched again after the tick"
    );
}

#[test]
fn an_open_key_new_to_a_worker_is_rejected_while_its_search_budget_is_spent() {
    // Regression (tests/tests/hostile.rs in the real Envoy): with the tick's slot searches spent
    // by a flood of new authorities, a worker that had never seen the OPEN victim let it through.
    let host = FakeHost::default();
    let cfg = r#"{"key_by":"authority","max_keys":1000,"breaker":{"min_requests":5,"sleep_window":"3m","max_sleep_window":"5m"}}"#;
    let mut a = engine(&host, cfg, 1);
    let mut b = engine(&host, cfg, 2);
    a.on_tick(0);
    b.on_tick(0);
    for i in 0..20 {
        exchange(&mut a, 1 + i, &auth("victim.example"), &status(503));
    }
    a.on_tick(200);
    assert!(!exchange(&mut a, 201, &auth("victim.example"), &ok()).admitted);
    // Worker b spends its whole budget on new keys, then sees the victim for the first time.
    for i in 0..200u64 {
        exchange(&mut b, 202, &auth(&format!("flood{i}.example")), &ok());
    }
    assert_eq!(b.slots.searches_left, 0);
    let seen = exchange(&mut b, 203, &auth("victim.example"), &ok());
    assert!(
        !seen.admitted,
        "the OPEN victim passed on a worker out of slot searches"
    );
}

#[test]
fn a_host_learned_before_the_first_tick_takes_the_published_totals_as_baseline() {
    use policy_core::encoding::ResetTotals;
    let host = FakeHost::default();
    let cfg =
        r#"{"reset_signals":{"max_resets_per_second":1},"breaker":{"window":"10s","buckets":10}}"#;
    let mut e = engine(&host, cfg, 1);
    let totals = ResetTotals {
        sequence: 7,
        peers: vec![("10.0.0.5:8080".into(), 5_000)],
    };
    host.set_shared(&e.names().resets(), &totals.encode(), None)
        .unwrap();
    // Two completions 100 ms apart: the second flushes from the request path, before any tick.
    exchange(&mut e, 0, &get("c"), &ok());
    exchange(&mut e, 150, &get("c"), &ok());
    e.on_tick(300);
    assert!(
        exchange(&mut e, 301, &get("c"), &ok()).admitted,
        "history is not news"
    );
    e.on_tick(400);
    assert_eq!(metric(&host, "c", "meshbreaker_kernel_resets_total"), 0);
}

// ---------------------------------------------------------------- upstream latency

#[test]
fn shared_names_carry_the_encoding_version() {
    // A new encoding under old names would have two filter versions misread each other.
    let mut name = String::new();
    Names::new("mb").state(0, &mut name);
    assert!(
        name.starts_with(&format!(
            "meshbreaker/mb/v{}/",
            policy_core::encoding::VERSION
        )),
        "{name}"
    );
}

const SLOW_AT_100MS: &str = r#"{"breaker":{"window":"10s","buckets":10,"min_requests":4,
    "latency_p95_threshold":"100ms","sleep_window":"30s"}}"#;

/// A request whose body ends `upload_ms` after its headers, answered `upstream_ms` later; Envoy's
/// whole-stream timer says `whole_ms`.
fn timed(
    e: &mut Engine<FakeHost>,
    t: u64,
    req: &Req,
    upload_ms: Option<u64>,
    upstream_ms: u64,
    whole_ms: u64,
    status_code: u16,
) {
    let host = e.host.clone();
    host.set_now_ms(t);
    let headers: Vec<(&str, &[u8])> = req
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_slice()))
        .collect();
    host.new_stream(&headers, &[(CLUSTER_NAME, &req.cluster)]);
    let mut x = Exchange::default();
    assert!(x.on_request_headers(e, upload_ms.is_none()));
    let body_end = t + upload_ms.unwrap_or(0);
    if upload_ms.is_some() {
        host.set_now_ms(body_end);
        x.on_request_end(e);
    }
    let mut resp = status(status_code);
    resp.duration_ms = Some(whole_ms);
    finish(e, x, body_end + upstream_ms, &resp);
}

fn window_totals(
    host: &FakeHost,
    cfg: &str,
    key: &str,
    now_ms: u64,
) -> policy_core::window::Counts {
    let (slot, _) = slot_of(host, key).unwrap();
    let w = window_of(host, cfg, slot);
    let bucket_ms = policy_core::window::bucket_ms(&Config::parse(cfg.as_bytes()).unwrap().breaker);
    w.totals(now_ms / bucket_ms)
}

#[test]
fn a_slow_upload_is_not_upstream_latency() {
    let host = FakeHost::default();
    let mut e = engine(&host, SLOW_AT_100MS, 1);
    let post = get("c").with(":method", b"POST");
    // The client trickles its body for 5 s; the upstream answers 10 ms after the last byte.
    for i in 0..10 {
        timed(&mut e, i * 6_000, &post, Some(5_000), 10, 5_010, 200);
    }
    e.on_tick(60_100);
    let c = window_totals(&host, SLOW_AT_100MS, "c", 60_100);
    assert!(c.latency_samples > 0 && c.slow == 0, "{c:?}");
    assert!(!exchange(&mut e, 60_200, &get("c"), &ok()).rejected());
}

#[test]
fn an_upgraded_request_records_no_latency_sample() {
    let host = FakeHost::default();
    let mut e = engine(&host, SLOW_AT_100MS, 1);
    let ws = get("c")
        .with("upgrade", b"websocket")
        .with("connection", b"upgrade");
    // The upstream upgrades at once, or only after 5 s: neither is a latency sample.
    for i in 0..5 {
        timed(&mut e, i * 100, &ws, None, 5_000, 5_000, 101);
    }
    // A CONNECT tunnel neither.
    let connect = get("c").with(":method", b"CONNECT");
    for i in 0..5 {
        timed(&mut e, 1_000 + i * 100, &connect, None, 5_000, 5_000, 200);
    }
    e.on_tick(7_000);
    let c = window_totals(&host, SLOW_AT_100MS, "c", 7_000);
    assert_eq!((c.requests, c.latency_samples), (10, 0), "{c:?}");
    assert!(!exchange(&mut e, 7_100, &get("c"), &ok()).rejected());
}

#[test]
fn a_slow_upstream_is_still_slow() {
    let host = FakeHost::default();
    let mut e = engine(&host, SLOW_AT_100MS, 1);
    let post = get("c").with(":method", b"POST");
    for i in 0..4 {
        timed(&mut e, i * 1_000, &post, Some(10), 300, 310, 200);
    }
    e.on_tick(5_100);
    let c = window_totals(&host, SLOW_AT_100MS, "c", 5_100);
    assert_eq!(c.slow, 4, "{c:?}");
    let seen = exchange(&mut e, 5_200, &get("c"), &ok());
    assert_eq!(
        seen.local("x-meshbreaker-reason").as_deref(),
        Some("latency_p95")
    );
}

#[test]
fn a_forward_clock_step_cannot_inflate_upstream_latency() {
    let host = FakeHost::default();
    let mut e = engine(&host, SLOW_AT_100MS, 1);
    // The wall clock jumps an hour between the request and its response; Envoy's monotonic timer
    // says the whole exchange took 5 ms.
    for i in 0..5 {
        timed(&mut e, i * 100, &get("c"), None, 3_600_000, 5, 200);
    }
    let now = 4 * 100 + 3_600_000;
    e.on_tick(now + 200);
    let c = window_totals(&host, SLOW_AT_100MS, "c", now + 200);
    assert_eq!(c.slow, 0, "{c:?}");
}

#[test]
fn a_probe_whose_client_goes_away_frees_its_quota_slot_at_once() {
    let host = FakeHost::default();
    let cfg = r#"{"breaker":{"window":"10s","buckets":10,"min_requests":5,"latency_p95_threshold":"1s",
        "sleep_window":"1s","half_open_max_probes":1}}"#;
    let mut e = engine(&host, cfg, 1);
    for i in 0..5 {
        exchange(&mut e, i, &get("c"), &fail());
    }
    e.on_tick(100);
    assert!(exchange(&mut e, 200, &get("c"), &ok()).rejected());
    // After the sleep window: one probe, whose client hangs up after 50 ms with no response.
    let (x, seen) = start(&mut e, 1_500, &get("c"));
    assert!(seen.admitted);
    assert!(
        start(&mut e, 1_501, &get("c")).1.rejected(),
        "the quota is one"
    );
    let mut gone = ok();
    gone.headers.clear();
    gone.duration_ms = Some(50);
    finish(&mut e, x, 1_550, &gone);
    // Its slot is free: the next request is a probe, not a rejection.
    assert!(start(&mut e, 1_551, &get("c")).1.admitted);
}

// ---------------------------------------------------------------- adaptive shedding

#[test]
fn requests_an_adaptive_circuit_admits_keep_their_retries() {
    let host = FakeHost::default();
    let cfg =
        r#"{"breaker":{"window":"10s","buckets":10,"min_requests":20,"shedding":"adaptive"}}"#;
    let mut e = engine(&host, cfg, 3);
    // One client request in four succeeds: below the 50% target, so a share is shed.
    let mut t = 0;
    for i in 0..200u64 {
        let resp = if i % 4 == 0 { ok() } else { fail() };
        exchange(&mut e, t, &get("c"), &resp);
        t += 5;
        if i % 20 == 0 {
            e.on_tick(t);
        }
    }
    e.on_tick(t + 100);
    let (_, st) = slot_of(&host, "c").unwrap();
    assert_eq!(
        st.breaker.reason,
        Some(policy_core::window::TripReason::Adaptive)
    );
    assert!(st.breaker.shed > 0 && st.breaker.shed < policy_core::breaker::SHED_ALL);
    let (mut rejected, mut admitted_with_retries) = (0, 0);
    for i in 0..200 {
        let (_, seen) = start(&mut e, t + 200 + i, &get("c"));
        if seen.rejected() {
            assert_eq!(
                seen.local("x-meshbreaker-reason").as_deref(),
                Some("adaptive")
            );
            rejected += 1;
        } else if seen.upstream_header("x-envoy-max-retries").as_deref() == Some("2") {
            admitted_with_retries += 1;
        }
    }
    assert!(
        rejected > 20 && admitted_with_retries > 20,
        "{rejected} rejected, {admitted_with_retries} admitted with retries"
    );
}
