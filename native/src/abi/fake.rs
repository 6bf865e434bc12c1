//! An in-memory Envoy for the unit tests: the callbacks [`super`] declares, defined here under the
//! same symbol names (the test binary has no Envoy to link against), over a [`FakeEnvoy`] that the
//! test owns; the stream and configuration pointers point at it. Header maps, attributes, defined
//! metrics and updates, the local reply and log lines are recorded for the tests to read.

use std::cell::RefCell;

#[cfg(test)]
use super::hooks::*;
use super::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

/// A local reply: status, headers, body, details (`None` for the null details buffer).
pub type Sent = (u32, Vec<(Vec<u8>, Vec<u8>)>, Vec<u8>, Option<Vec<u8>>);

/// A header list, owned.
pub type Headers = Vec<(Vec<u8>, Vec<u8>)>;

#[derive(Debug, Default)]
pub struct FakeEnvoy {
    /// One list per [`HeaderMap`], in its numeric order.
    pub headers: [Vec<(Vec<u8>, Vec<u8>)>; 4],
    pub attrs_int: Vec<(i32, u64)>,
    pub attrs_str: Vec<(i32, Vec<u8>)>,
    pub defined: Vec<(Kind, String, Vec<String>)>,
    /// `(id, label values, value)` per update.
    pub counters: Vec<(usize, Vec<Vec<u8>>, u64)>,
    pub gauges: Vec<(usize, Vec<Vec<u8>>, u64)>,
    pub sent: Option<Sent>,
    /// Answer every metric definition with `Frozen`.
    pub frozen: bool,
    /// What `get_worker_index` answers.
    pub worker: u32,
    /// Callouts sent: cluster, headers, timeout.
    pub callouts: Vec<(String, Headers, u64)>,
    /// What `http_callout` answers (0: sent).
    pub callout_refusal: i32,
}

impl FakeEnvoy {
    /// A stream handle whose callbacks land on `self`.
    pub fn stream(&mut self) -> Stream<'_> {
        Stream::new(std::ptr::from_mut(self).cast())
    }

    /// A configuration handle whose callbacks land on `self`.
    pub fn config(&mut self) -> ConfigEnvoy<'_> {
        ConfigEnvoy::new(std::ptr::from_mut(self).cast())
    }

    pub fn push_request_header(&mut self, name: &str, value: &[u8]) {
        self.headers[0].push((name.as_bytes().to_vec(), value.to_vec()));
    }

    pub fn request_header(&self, name: &str) -> Option<&[u8]> {
        self.headers[0]
            .iter()
            .find(|(k, _)| k == name.as_bytes())
            .map(|(_, v)| v.as_slice())
    }

    fn map(&mut self, header_type: i32) -> &mut Vec<(Vec<u8>, Vec<u8>)> {
        let i = usize::try_from(header_type).unwrap_or(0).min(3);
        &mut self.headers[i]
    }
}

thread_local! {
    static LOGS: RefCell<Vec<(i32, String)>> = const { RefCell::new(Vec::new()) };
}

/// The log lines of this thread so far, emptied.
pub fn take_logs() -> Vec<(i32, String)> {
    LOGS.with(|l| std::mem::take(&mut *l.borrow_mut()))
}

/// # Safety
/// `p` points at a live `FakeEnvoy` that nothing else borrows during the call.
unsafe fn envoy<'a>(p: *mut c_void) -> &'a mut FakeEnvoy {
    // SAFETY: per the contract, handed over by `FakeEnvoy::stream`/`config`.
    unsafe { &mut *p.cast::<FakeEnvoy>() }
}

/// # Safety
/// `b` is null or points at `len` live bytes.
unsafe fn bytes(b: ModuleBuffer) -> Option<Vec<u8>> {
    if b.ptr.is_null() {
        None
    } else {
        // SAFETY: non-null, and the wrapper lent `len` bytes for the call.
        Some(unsafe { std::slice::from_raw_parts(b.ptr, b.len) }.to_vec())
    }
}

/// # Safety
/// `p` points at `n` initialized buffers (or `n` is 0), each valid as in [`bytes`].
unsafe fn buffers(p: *mut ModuleBuffer, n: usize) -> Vec<Vec<u8>> {
    if n == 0 {
        return Vec::new();
    }
    // SAFETY: per the contract.
    let bufs = unsafe { std::slice::from_raw_parts(p, n) };
    // SAFETY: each buffer as in `bytes`.
    bufs.iter()
        .map(|b| unsafe { bytes(*b) }.unwrap_or_default())
        .collect()
}

#[no_mangle]
unsafe extern "C" fn envoy_dynamic_module_callback_log(level: i32, message: ModuleBuffer) {
    // SAFETY: the wrapper lends the message for the call.
    let text = String::from_utf8_lossy(&unsafe { bytes(message) }.unwrap_or_default()).into_owned();
    LOGS.with(|l| l.borrow_mut().push((level, text)));
}

#[no_mangle]
unsafe extern "C" fn envoy_dynamic_module_callback_http_get_header(
    filter: FilterEnvoyPtr,
    header_type: i32,
    key: ModuleBuffer,
    result: *mut EnvoyBuffer,
    index: usize,
    optional_count: *mut usize,
) -> bool {
    // SAFETY: the wrapper passes the fake's pointer, a live key and valid out-pointers.
    let (e, key) = unsafe { (envoy(filter), bytes(key).unwrap_or_default()) };
    let values: Vec<&(Vec<u8>, Vec<u8>)> = e
        .map(header_type)
        .iter()
        .filter(|(k, _)| *k == key)
        .collect();
    let out = values
        .get(index)
        .map_or(EnvoyBuffer::NULL, |(_, v)| EnvoyBuffer {
            ptr: v.as_ptr(),
            len: v.len(),
        });
    // SAFETY: valid out-pointers (the count one is optional).
    unsafe {
        *result = out;
        if !optional_count.is_null() {
            *optional_count = values.len();
        }
    }
    true
}

#[no_mangle]
unsafe extern "C" fn envoy_dynamic_module_callback_http_set_header(
    filter: FilterEnvoyPtr,
    header_type: i32,
    key: ModuleBuffer,
    value: ModuleBuffer,
) -> bool {
    // SAFETY: as in `get_header`.
    let (e, key, value) = unsafe { (envoy(filter), bytes(key).unwrap_or_default(), bytes(value)) };
    let map = e.map(header_type);
    map.retain(|(k, _)| *k != key);
    if let Some(v) = value {
        map.push((key, v));
    }
    true
}

#[no_mangle]
unsafe extern "C" fn envoy_dynamic_module_callback_http_add_header(
    filter: FilterEnvoyPtr,
    header_type: i32,
    key: ModuleBuffer,
    value: ModuleBuffer,
) -> bool {
    // SAFETY: as in `get_header`.
    let (e, key, value) = unsafe { (envoy(filter), bytes(key).unwrap_or_default(), bytes(value)) };
    e.map(header_type).push((key, value.unwrap_or_default()));
    true
}

#[no_mangle]
unsafe extern "C" fn envoy_dynamic_module_callback_http_send_response(
    filter: FilterEnvoyPtr,
    status_code: u32,
    headers: *mut ModuleHttpHeader,
    headers_len: usize,
    body: ModuleBuffer,
    details: ModuleBuffer,
) {
    // SAFETY: the wrapper lends `headers_len` initialized headers and live buffers.
    unsafe {
        let hs = if headers_len == 0 {
            &[][..]
        } else {
            std::slice::from_raw_parts(headers, headers_len)
        };
        let hs = hs
            .iter()
            .map(|h| {
                (
                    std::slice::from_raw_parts(h.key_ptr, h.key_len).to_vec(),
                    std::slice::from_raw_parts(h.value_ptr, h.value_len).to_vec(),
                )
            })
            .collect();
        envoy(filter).sent = Some((
            status_code,
            hs,
            bytes(body).unwrap_or_default(),
            bytes(details),
        ));
    }
}

#[no_mangle]
unsafe extern "C" fn envoy_dynamic_module_callback_http_filter_get_attribute_int(
    filter: FilterEnvoyPtr,
    attribute_id: i32,
    result: *mut u64,
) -> bool {
    // SAFETY: the fake's pointer and a valid out-pointer.
    let e = unsafe { envoy(filter) };
    match e.attrs_int.iter().find(|(id, _)| *id == attribute_id) {
        Some((_, v)) => {
            // SAFETY: valid out-pointer.
            unsafe { *result = *v };
            true
        }
        None => false,
    }
}

#[no_mangle]
unsafe extern "C" fn envoy_dynamic_module_callback_http_filter_get_attribute_string(
    filter: FilterEnvoyPtr,
    attribute_id: i32,
    result: *mut EnvoyBuffer,
) -> bool {
    // SAFETY: the fake's pointer and a valid out-pointer.
    let e = unsafe { envoy(filter) };
    match e.attrs_str.iter().find(|(id, _)| *id == attribute_id) {
        Some((_, v)) => {
            // SAFETY: valid out-pointer; the bytes live in the fake.
            unsafe {
                *result = EnvoyBuffer {
                    ptr: v.as_ptr(),
                    len: v.len(),
                }
            };
            true
        }
        None => false,
    }
}

/// # Safety
/// As the `define_*` callbacks' arguments.
unsafe fn define(
    kind: Kind,
    config: FilterConfigEnvoyPtr,
    name: ModuleBuffer,
    labels: *mut ModuleBuffer,
    labels_len: usize,
    id: *mut usize,
) -> i32 {
    // SAFETY: the fake's pointer, live buffers, a valid out-pointer.
    unsafe {
        let e = envoy(config);
        if e.frozen {
            return 3;
        }
        let name = String::from_utf8_lossy(&bytes(name).unwrap_or_default()).into_owned();
        let labels = buffers(labels, labels_len)
            .into_iter()
            .map(|l| String::from_utf8_lossy(&l).into_owned())
            .collect();
        e.defined.push((kind, name, labels));
        // Ids are 1-based and per kind, as in Envoy.
        *id = e.defined.iter().filter(|(k, ..)| *k == kind).count();
    }
    0
}

#[no_mangle]
unsafe extern "C" fn envoy_dynamic_module_callback_http_filter_config_define_counter(
    config: FilterConfigEnvoyPtr,
    name: ModuleBuffer,
    label_names: *mut ModuleBuffer,
    label_names_len: usize,
    id: *mut usize,
) -> i32 {
    // SAFETY: forwarded arguments.
    unsafe {
        define(
            Kind::Counter,
            config,
            name,
            label_names,
            label_names_len,
            id,
        )
    }
}

#[no_mangle]
unsafe extern "C" fn envoy_dynamic_module_callback_http_filter_config_define_gauge(
    config: FilterConfigEnvoyPtr,
    name: ModuleBuffer,
    label_names: *mut ModuleBuffer,
    label_names_len: usize,
    id: *mut usize,
) -> i32 {
    // SAFETY: forwarded arguments.
    unsafe { define(Kind::Gauge, config, name, label_names, label_names_len, id) }
}

/// # Safety
/// As the update callbacks' arguments.
unsafe fn update(
    kind: Kind,
    filter: FilterEnvoyPtr,
    id: usize,
    labels: *mut ModuleBuffer,
    labels_len: usize,
    value: u64,
) -> i32 {
    // SAFETY: the fake's pointer and live label buffers.
    unsafe {
        let e = envoy(filter);
        let Some((_, _, names)) = e
            .defined
            .iter()
            .filter(|(k, ..)| *k == kind)
            .nth(id.wrapping_sub(1))
        else {
            return 1;
        };
        if names.len() != labels_len {
            return 2;
        }
        let values = buffers(labels, labels_len);
        match kind {
            Kind::Counter => e.counters.push((id, values, value)),
            Kind::Gauge => e.gauges.push((id, values, value)),
        }
    }
    0
}

#[no_mangle]
unsafe extern "C" fn envoy_dynamic_module_callback_http_filter_increment_counter(
    filter: FilterEnvoyPtr,
    id: usize,
    label_values: *mut ModuleBuffer,
    label_values_len: usize,
    value: u64,
) -> i32 {
    // SAFETY: forwarded arguments.
    unsafe {
        update(
            Kind::Counter,
            filter,
            id,
            label_values,
            label_values_len,
            value,
        )
    }
}

#[no_mangle]
unsafe extern "C" fn envoy_dynamic_module_callback_http_filter_set_gauge(
    filter: FilterEnvoyPtr,
    id: usize,
    label_values: *mut ModuleBuffer,
    label_values_len: usize,
    value: u64,
) -> i32 {
    // SAFETY: forwarded arguments.
    unsafe {
        update(
            Kind::Gauge,
            filter,
            id,
            label_values,
            label_values_len,
            value,
        )
    }
}

#[no_mangle]
unsafe extern "C" fn envoy_dynamic_module_callback_http_filter_get_worker_index(
    filter: FilterEnvoyPtr,
) -> u32 {
    // SAFETY: the fake's pointer.
    unsafe { envoy(filter) }.worker
}

/// The unit tests run as `--mode validate` would: the module starts no ticker thread.
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_is_validation_mode() -> bool {
    true
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_filter_config_scheduler_new(
    _config: FilterConfigEnvoyPtr,
) -> SchedulerPtr {
    std::ptr::null_mut()
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_filter_config_scheduler_commit(
    _scheduler: SchedulerPtr,
    _event_id: u64,
) {
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_filter_config_scheduler_delete(
    _scheduler: SchedulerPtr,
) {
}

#[no_mangle]
unsafe extern "C" fn envoy_dynamic_module_callback_http_filter_config_increment_counter(
    config: FilterConfigEnvoyPtr,
    id: usize,
    label_values: *mut ModuleBuffer,
    label_values_len: usize,
    value: u64,
) -> i32 {
    // SAFETY: forwarded arguments (the fake serves configurations and streams alike).
    unsafe {
        update(
            Kind::Counter,
            config,
            id,
            label_values,
            label_values_len,
            value,
        )
    }
}

#[no_mangle]
unsafe extern "C" fn envoy_dynamic_module_callback_http_filter_config_set_gauge(
    config: FilterConfigEnvoyPtr,
    id: usize,
    label_values: *mut ModuleBuffer,
    label_values_len: usize,
    value: u64,
) -> i32 {
    // SAFETY: forwarded arguments.
    unsafe {
        update(
            Kind::Gauge,
            config,
            id,
            label_values,
            label_values_len,
            value,
        )
    }
}

// ---- The wrappers, one behaviour each, against the fake.

#[test]
fn header_reads_bytes_that_are_not_utf8() {
    let mut e = FakeEnvoy::default();
    e.push_request_header("x-raw", b"\xff\xfe ok");
    assert_eq!(
        e.stream().header(HeaderMap::RequestHeaders, "x-raw"),
        Some(&b"\xff\xfe ok"[..])
    );
}

#[test]
fn header_is_none_when_absent_or_in_another_map() {
    let mut e = FakeEnvoy::default();
    e.push_request_header("x-a", b"1");
    let s = e.stream();
    assert_eq!(s.header(HeaderMap::RequestHeaders, "x-b"), None);
    assert_eq!(s.header(HeaderMap::ResponseHeaders, "x-a"), None);
}

#[test]
fn header_reads_an_empty_value_as_present() {
    let mut e = FakeEnvoy::default();
    e.push_request_header("x-empty", b"");
    assert_eq!(
        e.stream().header(HeaderMap::RequestHeaders, "x-empty"),
        Some(&b""[..])
    );
}

#[test]
fn set_header_replaces_every_value() {
    let mut e = FakeEnvoy::default();
    e.push_request_header("x-a", b"1");
    e.push_request_header("x-a", b"2");
    assert!(e
        .stream()
        .set_header(HeaderMap::RequestHeaders, "x-a", b"3"));
    assert_eq!(e.headers[0], [(b"x-a".to_vec(), b"3".to_vec())]);
}

#[test]
fn remove_header_sends_a_null_value() {
    let mut e = FakeEnvoy::default();
    e.push_request_header("x-a", b"1");
    e.push_request_header("x-a", b"2");
    assert!(e.stream().remove_header(HeaderMap::RequestHeaders, "x-a"));
    assert!(e.headers[0].is_empty());
}

#[test]
fn add_header_keeps_the_values_already_there() {
    let mut e = FakeEnvoy::default();
    e.push_request_header("x-a", b"1");
    assert!(e
        .stream()
        .add_header(HeaderMap::RequestHeaders, "x-a", b"2"));
    assert_eq!(e.headers[0].len(), 2);
}

#[test]
fn send_response_lends_status_headers_body_and_details() {
    let mut e = FakeEnvoy::default();
    e.stream()
        .send_response(503, &[("x-meshbreaker", b"open")], b"{}", "breaker_open");
    let (status, headers, body, details) = e.sent.unwrap();
    assert_eq!(status, 503);
    assert_eq!(headers, [(b"x-meshbreaker".to_vec(), b"open".to_vec())]);
    assert_eq!(body, b"{}");
    assert_eq!(details.as_deref(), Some(&b"breaker_open"[..]));
}

#[test]
fn send_response_lends_more_headers_than_the_stack_holds() {
    let mut e = FakeEnvoy::default();
    let names: Vec<String> = (0..STACK_HEADERS + 3).map(|i| format!("x-{i}")).collect();
    let headers: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b"v"[..])).collect();
    e.stream().send_response(200, &headers, b"", "");
    let (_, sent, _, details) = e.sent.unwrap();
    assert_eq!(sent.len(), STACK_HEADERS + 3);
    assert_eq!(sent[STACK_HEADERS + 2].0, b"x-10");
    assert_eq!(details, None, "empty details are the null buffer");
}

#[test]
fn attribute_int_reads_the_value_or_none() {
    let mut e = FakeEnvoy::default();
    e.attrs_int.push((Attribute::ResponseCode as i32, 503));
    let s = e.stream();
    assert_eq!(s.attribute_int(Attribute::ResponseCode), Some(503));
    assert_eq!(
        s.attribute_int(Attribute::UpstreamRequestAttemptCount),
        None
    );
}

#[test]
fn attribute_bytes_reads_the_value_or_none() {
    let mut e = FakeEnvoy::default();
    e.attrs_str
        .push((Attribute::XdsClusterName as i32, b"backend".to_vec()));
    let s = e.stream();
    assert_eq!(
        s.attribute_bytes(Attribute::XdsClusterName),
        Some(&b"backend"[..])
    );
    assert_eq!(s.attribute_bytes(Attribute::XdsRouteName), None);
}

#[test]
fn define_counter_and_gauge_have_their_own_id_spaces() {
    let mut e = FakeEnvoy::default();
    let mut c = e.config();
    assert_eq!(c.define_counter("a", &["key"]), Ok(CounterId(1)));
    assert_eq!(c.define_gauge("b", &["key"]), Ok(GaugeId(1)));
    assert_eq!(c.define_counter("c", &[]), Ok(CounterId(2)));
}

#[test]
fn define_is_refused_when_frozen() {
    let mut e = FakeEnvoy {
        frozen: true,
        ..FakeEnvoy::default()
    };
    assert_eq!(
        e.config().define_counter("a", &[]),
        Err(MetricsError::Frozen)
    );
}

#[test]
fn increment_counter_passes_label_values_in_order() {
    let mut e = FakeEnvoy::default();
    let id = e
        .config()
        .define_counter("r", &["key", "decision"])
        .unwrap();
    assert_eq!(
        e.stream().increment_counter(id, &[b"k", b"allowed"], 2),
        Ok(())
    );
    assert_eq!(
        e.counters,
        [(1, vec![b"k".to_vec(), b"allowed".to_vec()], 2)]
    );
}

#[test]
fn increment_counter_reports_a_label_count_mismatch() {
    let mut e = FakeEnvoy::default();
    let id = e
        .config()
        .define_counter("r", &["key", "decision"])
        .unwrap();
    assert_eq!(
        e.stream().increment_counter(id, &[b"k"], 1),
        Err(MetricsError::InvalidLabels)
    );
}

#[test]
fn increment_counter_refuses_more_labels_than_it_lends_without_calling_envoy() {
    let mut e = FakeEnvoy::default();
    let id = e.config().define_counter("r", &["a"]).unwrap();
    let labels = [&b"x"[..]; MAX_LABELS + 1];
    assert!(e.stream().increment_counter(id, &labels, 1).is_err());
    assert!(e.counters.is_empty());
}

#[test]
fn set_gauge_passes_value_and_labels() {
    let mut e = FakeEnvoy::default();
    let id = e.config().define_gauge("state", &["key"]).unwrap();
    assert_eq!(e.stream().set_gauge(id, &[b"k"], 2), Ok(()));
    assert_eq!(e.gauges, [(1, vec![b"k".to_vec()], 2)]);
}

#[test]
fn log_sends_level_and_message() {
    take_logs();
    log(LogLevel::Warn, "meshbreaker: hello");
    assert_eq!(
        take_logs(),
        [(LogLevel::Warn as i32, "meshbreaker: hello".to_owned())]
    );
}

#[test]
fn program_init_answers_the_1_40_abi_version() {
    let v = envoy_dynamic_module_on_program_init();
    // SAFETY: a pointer to a static C string.
    assert_eq!(unsafe { CStr::from_ptr(v) }, c"v0.2.0");
}

#[test]
fn guard_turns_a_panic_into_none() {
    assert_eq!(guard(|| 1), Some(1));
    #[allow(clippy::panic)]
    let r: Option<()> = guard(|| panic!("boom"));
    assert_eq!(r, None);
}

#[test]
fn request_headers_hook_continues_on_a_null_module_pointer() {
    let mut e = FakeEnvoy::default();
    let f: FilterEnvoyPtr = std::ptr::from_mut(&mut e).cast();
    // SAFETY: a live stream object and a null module pointer, which the hook must tolerate.
    let status =
        unsafe { envoy_dynamic_module_on_http_filter_request_headers(f, std::ptr::null(), true) };
    assert_eq!(status, Status::Continue as i32);
}

#[test]
fn config_new_hook_returns_null_for_a_bad_config_and_a_box_for_a_good_one() {
    let mut e = FakeEnvoy::default();
    let c: FilterConfigEnvoyPtr = std::ptr::from_mut(&mut e).cast();
    let buf = |b: &'static [u8]| EnvoyBuffer {
        ptr: b.as_ptr(),
        len: b.len(),
    };
    // SAFETY: static buffers and the fake's configuration object; `good` is destroyed once.
    unsafe {
        let bad = envoy_dynamic_module_on_http_filter_config_new(
            c,
            buf(b"meshbreaker"),
            buf(b"{\"mode\":1}"),
        );
        assert!(bad.is_null());
        let good =
            envoy_dynamic_module_on_http_filter_config_new(c, buf(b"meshbreaker"), buf(b"{}"));
        assert!(!good.is_null());
        envoy_dynamic_module_on_http_filter_config_destroy(good);
    }
}

#[no_mangle]
#[allow(clippy::too_many_arguments)]
unsafe extern "C" fn envoy_dynamic_module_callback_http_filter_config_http_callout(
    config: FilterConfigEnvoyPtr,
    callout_id_out: *mut u64,
    cluster_name: ModuleBuffer,
    headers: *mut ModuleHttpHeader,
    headers_len: usize,
    _body: ModuleBuffer,
    timeout_ms: u64,
) -> i32 {
    // SAFETY: the fake's pointer; the wrapper lends the name and `headers_len` headers for the
    // call; a valid out-pointer.
    unsafe {
        let e = envoy(config);
        let cluster =
            String::from_utf8_lossy(&bytes(cluster_name).unwrap_or_default()).into_owned();
        let lent = slice_of(headers, headers_len);
        let headers = lent
            .iter()
            .map(|h| {
                (
                    std::slice::from_raw_parts(h.key_ptr, h.key_len).to_vec(),
                    std::slice::from_raw_parts(h.value_ptr, h.value_len).to_vec(),
                )
            })
            .collect();
        e.callouts.push((cluster, headers, timeout_ms));
        if e.callout_refusal != 0 {
            return e.callout_refusal;
        }
        *callout_id_out = e.callouts.len() as u64;
    }
    0
}

/// A callout's answer as Envoy would lend it to the done hook.
pub struct FakeResponse {
    owned: (Headers, Vec<Vec<u8>>),
    headers: Vec<EnvoyHttpHeader>,
    chunks: Vec<EnvoyBuffer>,
}

impl FakeResponse {
    /// Headers and body chunks (each chunk one buffer, as Envoy's slices).
    pub fn new(headers: &[(&str, &[u8])], chunks: &[&[u8]]) -> FakeResponse {
        let owned: (Headers, Vec<Vec<u8>>) = (
            headers
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.to_vec()))
                .collect(),
            chunks.iter().map(|c| c.to_vec()).collect(),
        );
        let headers = owned
            .0
            .iter()
            .map(|(k, v)| EnvoyHttpHeader {
                key_ptr: k.as_ptr(),
                key_len: k.len(),
                value_ptr: v.as_ptr(),
                value_len: v.len(),
            })
            .collect();
        let chunks = owned
            .1
            .iter()
            .map(|c| EnvoyBuffer {
                ptr: c.as_ptr(),
                len: c.len(),
            })
            .collect();
        FakeResponse {
            owned,
            headers,
            chunks,
        }
    }

    pub fn view(&self, end: CalloutEnd) -> CalloutResponse<'_> {
        let _ = &self.owned;
        CalloutResponse {
            end,
            headers: &self.headers,
            body: &self.chunks,
        }
    }
}
