//! The subset of Envoy 1.40's dynamic-module ABI (`v0.2.0`) that meshbreaker uses: the exported
//! hooks, the declared callbacks, and safe wrappers around them. The only module with `unsafe`.
//!
//! Why by hand: the ABI is a C header (`source/extensions/dynamic_modules/abi/abi.h` in Envoy)
//! that changes between Envoy releases, and Envoy checks only symbol *names* when it loads a
//! module (`dlopen(RTLD_NOW)`: a callback missing from the binary fails the load; a wrong argument
//! list or enum value is silent undefined behaviour). So the declarations here are few, each one
//! written against the header and its name checked against the pinned binary (`nm -D` for the
//! callbacks, `strings` for the hook names Envoy looks up), and the smoke test in
//! `tests/tests/native_smoke.rs` runs every one of them against the real Envoy.
//!
//! ## Conventions of the ABI
//! - Buffers are `{ptr, len}` structs passed by value ([`EnvoyBuffer`] when Envoy owns the bytes,
//!   [`ModuleBuffer`] when the module does); a header is `{key_ptr, key_len, value_ptr, value_len}`.
//! - C enums are `i32`. Hook statuses: Continue = 0, StopIteration = 1.
//! - Bytes Envoy hands out live until the end of the current hook, or until the module changes the
//!   map they came from. [`Stream`] encodes that: reads borrow it, writes need it mutably.
//!
//! ## Safety of the hooks
//! Every hook that runs module code ([`hooks`]) runs it under `hooks::guard` (`catch_unwind`): a panic fails open
//! (the stream continues, nothing is recorded; a configuration is refused) instead of unwinding
//! into Envoy's C++ frames, which would abort the process. That needs `panic = "unwind"`, hence
//! the workspace's `native` profile. (`on_program_init` and `on_http_filter_new` only return a
//! constant or box a default value: nothing there can panic.)
//!
//! ## Threads
//! Configuration hooks and `on_http_filter_config_scheduled` run on Envoy's main thread, stream
//! hooks on the stream's worker. The one thread the module starts ([`Ticker`]) only sleeps and
//! commits events to the configuration's scheduler; the work of the tick runs on the main thread.

use std::ffi::{c_void, CStr};
use std::marker::PhantomData;

#[cfg(any(test, feature = "fake-abi"))]
pub mod fake;
pub mod hooks;

/// What `envoy_dynamic_module_on_program_init` answers. Envoy 1.40 compares it with its own
/// `ENVOY_DYNAMIC_MODULES_ABI_VERSION`; a mismatch is only a warning, so the real check is the
/// pinned Envoy and the smoke test.
pub const ABI_VERSION: &CStr = c"v0.2.0";

/// Bytes owned by Envoy, valid until the end of the hook (or the next write to their map).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EnvoyBuffer {
    ptr: *const u8,
    len: usize,
}

impl EnvoyBuffer {
    const NULL: EnvoyBuffer = EnvoyBuffer {
        ptr: std::ptr::null(),
        len: 0,
    };

    /// The bytes, for as long as the caller's borrow says.
    ///
    /// # Safety
    /// `ptr` is null or points at `len` readable bytes that outlive `'a`.
    unsafe fn as_slice<'a>(self) -> &'a [u8] {
        if self.ptr.is_null() || self.len == 0 {
            &[]
        } else {
            // SAFETY: non-null, and the caller vouches for `len` bytes living for 'a.
            unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
        }
    }
}

/// Bytes owned by the module, lent to Envoy for one call.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ModuleBuffer {
    ptr: *const u8,
    len: usize,
}

impl ModuleBuffer {
    /// The null buffer: "remove" as a header value, "none" as details.
    const NULL: ModuleBuffer = ModuleBuffer {
        ptr: std::ptr::null(),
        len: 0,
    };

    fn of(b: &[u8]) -> ModuleBuffer {
        ModuleBuffer {
            ptr: b.as_ptr(),
            len: b.len(),
        }
    }
}

/// A response header lent to Envoy (`envoy_dynamic_module_type_module_http_header`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct ModuleHttpHeader {
    key_ptr: *const u8,
    key_len: usize,
    value_ptr: *const u8,
    value_len: usize,
}

impl ModuleHttpHeader {
    const EMPTY: ModuleHttpHeader = ModuleHttpHeader {
        key_ptr: std::ptr::null(),
        key_len: 0,
        value_ptr: std::ptr::null(),
        value_len: 0,
    };
}

type FilterEnvoyPtr = *mut c_void;
type FilterConfigEnvoyPtr = *mut c_void;
type ModulePtr = *const c_void;

/// `envoy_dynamic_module_type_http_header_type`.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderMap {
    RequestHeaders = 0,
    RequestTrailers = 1,
    ResponseHeaders = 2,
    ResponseTrailers = 3,
}

/// The attributes meshbreaker reads (`envoy_dynamic_module_type_attribute_id`). Values 0–67 are
/// the same in the v0.1.0 header and in 1.40; 1.40 appends after 67. Each was read back from the
/// real 1.40 binary by the feasibility probe; a renumbering upstream reads the wrong attribute
/// silently, which the smoke test's key label would show.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attribute {
    /// `response.code` (int).
    ResponseCode = 15,
    /// `response.flags` (int): Envoy's legacy response-flag bit mask.
    ResponseFlags = 17,
    /// `upstream.address` (string), in the form the sidecar reports peers.
    UpstreamAddress = 41,
    /// `upstream.request_attempt_count` (int): 0 for a local reply.
    UpstreamRequestAttemptCount = 53,
    /// `xds.cluster_name` (string).
    XdsClusterName = 57,
    /// `xds.route_name` (string).
    XdsRouteName = 61,
}

/// `envoy_dynamic_module_type_log_level`.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLevel {
    Trace = 0,
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
    Critical = 5,
}

/// What a request or response hook tells Envoy (the `*_status` enums share these two values).
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Continue = 0,
    /// After [`Stream::send_response`]: the stream goes no further.
    StopIteration = 1,
}

/// `envoy_dynamic_module_type_metrics_result` other than Success.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricsError {
    NotFound,
    InvalidLabels,
    /// Metrics can no longer be defined (only in `on_http_filter_config_new` they can).
    Frozen,
    /// A value this module does not know, or more labels than [`MAX_LABELS`].
    Other(i32),
}

fn metrics_result(r: i32) -> Result<(), MetricsError> {
    match r {
        0 => Ok(()),
        1 => Err(MetricsError::NotFound),
        2 => Err(MetricsError::InvalidLabels),
        3 => Err(MetricsError::Frozen),
        other => Err(MetricsError::Other(other)),
    }
}

/// Most labels a metric has; label values are lent to Envoy from a stack array of this size, so
/// updating a metric allocates nothing. SPEC's metrics have at most two (`key` and `decision`/`to`).
pub const MAX_LABELS: usize = 4;

/// Most headers of a local reply lent from the stack; more go through one allocation.
const STACK_HEADERS: usize = 8;

/// A counter defined by [`ConfigEnvoy::define_counter`]. Counters, gauges and histograms have
/// separate id spaces in Envoy (all three start at 1), so each kind has its own type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CounterId(usize);

/// A gauge defined by [`ConfigEnvoy::define_gauge`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GaugeId(usize);

// Callback names checked with `nm -D` against Envoy 1.40.0
// (9e5580933739775e8bce696a57a2e1bc99368f23); every one is exported by the binary.
extern "C" {
    fn envoy_dynamic_module_callback_log(level: i32, message: ModuleBuffer);

    fn envoy_dynamic_module_callback_http_get_header(
        filter: FilterEnvoyPtr,
        header_type: i32,
        key: ModuleBuffer,
        result: *mut EnvoyBuffer,
        index: usize,
        optional_count: *mut usize,
    ) -> bool;

    fn envoy_dynamic_module_callback_http_set_header(
        filter: FilterEnvoyPtr,
        header_type: i32,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;

    fn envoy_dynamic_module_callback_http_add_header(
        filter: FilterEnvoyPtr,
        header_type: i32,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;

    fn envoy_dynamic_module_callback_http_send_response(
        filter: FilterEnvoyPtr,
        status_code: u32,
        headers: *mut ModuleHttpHeader,
        headers_len: usize,
        body: ModuleBuffer,
        details: ModuleBuffer,
    );

    fn envoy_dynamic_module_callback_http_filter_get_attribute_int(
        filter: FilterEnvoyPtr,
        attribute_id: i32,
        result: *mut u64,
    ) -> bool;

    fn envoy_dynamic_module_callback_http_filter_get_attribute_string(
        filter: FilterEnvoyPtr,
        attribute_id: i32,
        result: *mut EnvoyBuffer,
    ) -> bool;

    fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        config: FilterConfigEnvoyPtr,
        name: ModuleBuffer,
        label_names: *mut ModuleBuffer,
        label_names_len: usize,
        id: *mut usize,
    ) -> i32;

    fn envoy_dynamic_module_callback_http_filter_config_define_gauge(
        config: FilterConfigEnvoyPtr,
        name: ModuleBuffer,
        label_names: *mut ModuleBuffer,
        label_names_len: usize,
        id: *mut usize,
    ) -> i32;

    fn envoy_dynamic_module_callback_http_filter_increment_counter(
        filter: FilterEnvoyPtr,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_len: usize,
        value: u64,
    ) -> i32;

    fn envoy_dynamic_module_callback_http_filter_set_gauge(
        filter: FilterEnvoyPtr,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_len: usize,
        value: u64,
    ) -> i32;
}

// Callbacks the breaker added; names checked with `nm -D` against the same binary. The
// configuration-level metric callbacks take the same arguments as the stream-level ones, with
// the configuration in place of the stream (checked in the 1.40 binary's machine code: label
// values in the third argument, their count in the fourth, the value in the fifth).
extern "C" {
    fn envoy_dynamic_module_callback_http_filter_get_worker_index(filter: FilterEnvoyPtr) -> u32;

    fn envoy_dynamic_module_callback_is_validation_mode() -> bool;

    fn envoy_dynamic_module_callback_http_filter_config_scheduler_new(
        config: FilterConfigEnvoyPtr,
    ) -> SchedulerPtr;

    fn envoy_dynamic_module_callback_http_filter_config_scheduler_commit(
        scheduler: SchedulerPtr,
        event_id: u64,
    );

    fn envoy_dynamic_module_callback_http_filter_config_scheduler_delete(scheduler: SchedulerPtr);

    fn envoy_dynamic_module_callback_http_filter_config_increment_counter(
        config: FilterConfigEnvoyPtr,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_len: usize,
        value: u64,
    ) -> i32;

    fn envoy_dynamic_module_callback_http_filter_config_set_gauge(
        config: FilterConfigEnvoyPtr,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_len: usize,
        value: u64,
    ) -> i32;
}

// The configuration's HTTP callout (kernel reset signals: the sidecar is polled through an Envoy
// cluster). Name checked with `nm -D` against the 1.40 binary; the argument list is the one
// Envoy's own SDKs (C++, Go, Rust) for the same ABI pass: the id is written through the second
// argument, the timeout is a `u64` of milliseconds, the result an `i32` enum. It must be called
// on the main thread (Envoy looks the cluster up in the main thread's cluster view): the module
// calls it only from `on_http_filter_config_scheduled`.
extern "C" {
    fn envoy_dynamic_module_callback_http_filter_config_http_callout(
        config: FilterConfigEnvoyPtr,
        callout_id_out: *mut u64,
        cluster_name: ModuleBuffer,
        headers: *mut ModuleHttpHeader,
        headers_len: usize,
        body: ModuleBuffer,
        timeout_ms: u64,
    ) -> i32;
}

/// Why Envoy did not start a callout (`envoy_dynamic_module_type_http_callout_init_result`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CalloutError {
    /// `:method`, `:path` or `:authority` missing.
    MissingRequiredHeaders,
    /// No cluster of that name.
    ClusterNotFound,
    DuplicateCalloutId,
    /// Envoy could not create the request (e.g. it failed at once).
    CannotCreateRequest,
    Other(i32),
}

impl std::fmt::Display for CalloutError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CalloutError::MissingRequiredHeaders => f.write_str("missing required headers"),
            CalloutError::ClusterNotFound => f.write_str("no such cluster"),
            CalloutError::DuplicateCalloutId => f.write_str("duplicate callout id"),
            CalloutError::CannotCreateRequest => f.write_str("Envoy could not create the request"),
            CalloutError::Other(n) => write!(f, "callout refused ({n})"),
        }
    }
}

fn callout_result(r: i32) -> Result<(), CalloutError> {
    match r {
        0 => Ok(()),
        1 => Err(CalloutError::MissingRequiredHeaders),
        2 => Err(CalloutError::ClusterNotFound),
        3 => Err(CalloutError::DuplicateCalloutId),
        4 => Err(CalloutError::CannotCreateRequest),
        other => Err(CalloutError::Other(other)),
    }
}

/// How a callout ended (`envoy_dynamic_module_type_http_callout_result`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CalloutEnd {
    /// A response came (any status).
    Response,
    /// The request was reset (Envoy's `AsyncClient::FailureReason::Reset`).
    Reset,
    /// The response was larger than Envoy's buffer limit.
    TooLarge,
    Other(i32),
}

impl CalloutEnd {
    fn of(r: i32) -> CalloutEnd {
        match r {
            0 => CalloutEnd::Response,
            1 => CalloutEnd::Reset,
            2 => CalloutEnd::TooLarge,
            other => CalloutEnd::Other(other),
        }
    }
}

/// A header of a callout's response, owned by Envoy (`envoy_dynamic_module_type_envoy_http_header`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EnvoyHttpHeader {
    key_ptr: *const u8,
    key_len: usize,
    value_ptr: *const u8,
    value_len: usize,
}

/// A callout's answer, borrowed from Envoy for the duration of the done hook.
pub struct CalloutResponse<'h> {
    pub end: CalloutEnd,
    headers: &'h [EnvoyHttpHeader],
    body: &'h [EnvoyBuffer],
}

impl<'h> CalloutResponse<'h> {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&'h [u8]> {
        self.headers.iter().find_map(|h| {
            // SAFETY: Envoy's header bytes live until the done hook returns, which `'h` spans.
            let key = unsafe {
                EnvoyBuffer {
                    ptr: h.key_ptr,
                    len: h.key_len,
                }
                .as_slice()
            };
            key.eq_ignore_ascii_case(name.as_bytes()).then(|| {
                // SAFETY: as for the key.
                unsafe {
                    EnvoyBuffer {
                        ptr: h.value_ptr,
                        len: h.value_len,
                    }
                    .as_slice()
                }
            })
        })
    }

    /// The body's size in bytes.
    pub fn body_len(&self) -> usize {
        self.body.iter().map(|c| c.len).sum()
    }

    /// The body, copied into one buffer.
    pub fn body(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.body_len());
        for c in self.body {
            // SAFETY: each chunk lives until the done hook returns.
            out.extend_from_slice(unsafe { c.as_slice() });
        }
        out
    }
}

/// `ptr` as a slice of `len` items, empty when null.
///
/// # Safety
/// `ptr` is null or points at `len` initialized `T`s that outlive `'a`.
unsafe fn slice_of<'a, T>(ptr: *const T, len: usize) -> &'a [T] {
    if ptr.is_null() || len == 0 {
        &[]
    } else {
        // SAFETY: per the contract.
        unsafe { std::slice::from_raw_parts(ptr, len) }
    }
}

/// Whether Envoy runs `--mode validate` (no traffic will come: the module starts no thread).
pub fn is_validation_mode() -> bool {
    // SAFETY: no arguments; Envoy answers from its server options.
    unsafe { envoy_dynamic_module_callback_is_validation_mode() }
}

/// Where metric updates go: a stream during a stream hook, the configuration in the tick.
pub trait MetricSink {
    fn increment_counter(
        &mut self,
        id: CounterId,
        labels: &[&[u8]],
        by: u64,
    ) -> Result<(), MetricsError>;
    fn set_gauge(&mut self, id: GaugeId, labels: &[&[u8]], value: u64) -> Result<(), MetricsError>;
}

/// Envoy's scheduler of a filter configuration: a commit from any thread runs
/// `on_http_filter_config_scheduled` on the main thread.
type SchedulerPtr = *mut c_void;

/// The scheduler, owned by the ticker thread alone (its only user after creation).
struct Scheduler(SchedulerPtr);

// SAFETY: Envoy's configuration scheduler is made to be committed to from any thread (it posts to
// the main dispatcher through a weak reference to the configuration); the ticker thread is its
// only user and deletes it once.
unsafe impl Send for Scheduler {}

/// A module thread that asks for the tick every period, until dropped.
#[derive(Debug)]
pub struct Ticker {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
    }
}

/// Logs one line under Envoy's `dynamic_modules` logger.
pub fn log(level: LogLevel, message: &str) {
    // SAFETY: the buffer points at `message`, which outlives the call; Envoy copies it.
    unsafe { envoy_dynamic_module_callback_log(level as i32, ModuleBuffer::of(message.as_bytes())) }
}

/// Label values as the ABI takes them, on the stack; `None` when there are more than [`MAX_LABELS`].
fn label_buffers(values: &[&[u8]]) -> Option<[ModuleBuffer; MAX_LABELS]> {
    if values.len() > MAX_LABELS {
        return None;
    }
    let mut out = [ModuleBuffer::NULL; MAX_LABELS];
    for (slot, v) in out.iter_mut().zip(values) {
        *slot = ModuleBuffer::of(v);
    }
    Some(out)
}

/// The filter configuration's Envoy side, during `on_http_filter_config_new` (the only time
/// metrics may be defined).
pub struct ConfigEnvoy<'h> {
    ptr: FilterConfigEnvoyPtr,
    _hook: PhantomData<&'h mut ()>,
}

impl ConfigEnvoy<'_> {
    fn new(ptr: FilterConfigEnvoyPtr) -> Self {
        ConfigEnvoy {
            ptr,
            _hook: PhantomData,
        }
    }

    fn define(
        &mut self,
        f: unsafe extern "C" fn(
            FilterConfigEnvoyPtr,
            ModuleBuffer,
            *mut ModuleBuffer,
            usize,
            *mut usize,
        ) -> i32,
        name: &str,
        labels: &[&str],
    ) -> Result<usize, MetricsError> {
        let names: Vec<&[u8]> = labels.iter().map(|l| l.as_bytes()).collect();
        let mut buffers = label_buffers(&names).ok_or(MetricsError::Other(-1))?;
        let mut id = 0usize;
        // SAFETY: `self.ptr` is the config pointer of the running hook; the name and label buffers
        // point at live `&str`s for the duration of the call (Envoy copies them); `id` is a valid
        // out-pointer.
        let r = unsafe {
            f(
                self.ptr,
                ModuleBuffer::of(name.as_bytes()),
                buffers.as_mut_ptr(),
                names.len(),
                &mut id,
            )
        };
        metrics_result(r).map(|()| id)
    }

    /// Defines a counter `name` with these label names (values are given per update).
    pub fn define_counter(
        &mut self,
        name: &str,
        labels: &[&str],
    ) -> Result<CounterId, MetricsError> {
        self.define(
            envoy_dynamic_module_callback_http_filter_config_define_counter,
            name,
            labels,
        )
        .map(CounterId)
    }

    /// Defines a gauge `name` with these label names.
    pub fn define_gauge(&mut self, name: &str, labels: &[&str]) -> Result<GaugeId, MetricsError> {
        self.define(
            envoy_dynamic_module_callback_http_filter_config_define_gauge,
            name,
            labels,
        )
        .map(GaugeId)
    }
}

impl ConfigEnvoy<'_> {
    /// Starts the ticker: a module thread that commits an event to this configuration's
    /// scheduler every `period`, so `on_http_filter_config_scheduled` runs on the main thread
    /// (HTTP filters have no timer). `None` when Envoy gives no scheduler or no thread starts.
    /// The thread stops, and deletes the scheduler, within one period of the [`Ticker`]'s drop;
    /// a commit racing the configuration's destruction is dropped by Envoy (weak reference).
    pub fn start_ticker(&mut self, period: std::time::Duration) -> Option<Ticker> {
        // SAFETY: `self.ptr` is the configuration of the running `config_new` hook.
        let ptr =
            unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_new(self.ptr) };
        if ptr.is_null() {
            return None;
        }
        let scheduler = Scheduler(ptr);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let spawned = std::thread::Builder::new()
            .name("meshbreaker-tick".into())
            .spawn(move || {
                let scheduler = scheduler;
                while !flag.load(std::sync::atomic::Ordering::Acquire) {
                    std::thread::sleep(period);
                    if flag.load(std::sync::atomic::Ordering::Acquire) {
                        break;
                    }
                    // SAFETY: the scheduler is alive until this thread deletes it below.
                    unsafe {
                        envoy_dynamic_module_callback_http_filter_config_scheduler_commit(
                            scheduler.0,
                            0,
                        )
                    };
                }
                // SAFETY: created by `scheduler_new`, deleted once, by its only user.
                unsafe {
                    envoy_dynamic_module_callback_http_filter_config_scheduler_delete(scheduler.0)
                };
            });
        match spawned {
            Ok(_) => Some(Ticker { stop }),
            // The closure (and the scheduler in it) is gone with the error: nothing leaks but
            // the scheduler object, which Envoy frees with the configuration's dispatcher.
            Err(_) => None,
        }
    }
}

impl ConfigEnvoy<'_> {
    /// Sends `GET`-style request `headers` (with `:method`, `:path` and `:authority`) to Envoy's
    /// cluster `cluster`; the answer comes to `on_http_filter_config_http_callout_done` with the
    /// id returned here, on the main thread. Call only on the main thread (the tick). Envoy may
    /// answer before this returns (then the done hook has already run with this id).
    pub fn http_callout(
        &mut self,
        cluster: &str,
        headers: &[(&str, &[u8])],
        timeout_ms: u64,
    ) -> Result<u64, CalloutError> {
        let mut lent = [ModuleHttpHeader::EMPTY; STACK_HEADERS];
        let n = headers.len().min(STACK_HEADERS);
        for (slot, (k, v)) in lent.iter_mut().zip(headers) {
            *slot = ModuleHttpHeader {
                key_ptr: k.as_ptr(),
                key_len: k.len(),
                value_ptr: v.as_ptr(),
                value_len: v.len(),
            };
        }
        let mut id = 0u64;
        // SAFETY: the configuration pointer is the running hook's; the cluster name, the header
        // array and its bytes outlive the call (Envoy copies them into its request); `id` is a
        // valid out-pointer; an empty body is the null buffer.
        let r = unsafe {
            envoy_dynamic_module_callback_http_filter_config_http_callout(
                self.ptr,
                &mut id,
                ModuleBuffer::of(cluster.as_bytes()),
                lent.as_mut_ptr(),
                n,
                ModuleBuffer::NULL,
                timeout_ms,
            )
        };
        callout_result(r).map(|()| id)
    }
}

impl MetricSink for ConfigEnvoy<'_> {
    fn increment_counter(
        &mut self,
        id: CounterId,
        labels: &[&[u8]],
        by: u64,
    ) -> Result<(), MetricsError> {
        let mut buffers = label_buffers(labels).ok_or(MetricsError::Other(-1))?;
        // SAFETY: the configuration pointer is the running hook's; the label buffers point at
        // slices that outlive the call.
        let r = unsafe {
            envoy_dynamic_module_callback_http_filter_config_increment_counter(
                self.ptr,
                id.0,
                buffers.as_mut_ptr(),
                labels.len(),
                by,
            )
        };
        metrics_result(r)
    }

    fn set_gauge(&mut self, id: GaugeId, labels: &[&[u8]], value: u64) -> Result<(), MetricsError> {
        let mut buffers = label_buffers(labels).ok_or(MetricsError::Other(-1))?;
        // SAFETY: as in `increment_counter`.
        let r = unsafe {
            envoy_dynamic_module_callback_http_filter_config_set_gauge(
                self.ptr,
                id.0,
                buffers.as_mut_ptr(),
                labels.len(),
                value,
            )
        };
        metrics_result(r)
    }
}

impl MetricSink for Stream<'_> {
    fn increment_counter(
        &mut self,
        id: CounterId,
        labels: &[&[u8]],
        by: u64,
    ) -> Result<(), MetricsError> {
        Stream::increment_counter(self, id, labels, by)
    }

    fn set_gauge(&mut self, id: GaugeId, labels: &[&[u8]], value: u64) -> Result<(), MetricsError> {
        Stream::set_gauge(self, id, labels, value)
    }
}

/// One HTTP stream's Envoy side, during one hook. Bytes read from it borrow it; every write takes
/// it mutably, so no read can outlive a write that may have moved Envoy's bytes.
pub struct Stream<'h> {
    ptr: FilterEnvoyPtr,
    _hook: PhantomData<&'h mut ()>,
}

impl Stream<'_> {
    fn new(ptr: FilterEnvoyPtr) -> Self {
        Stream {
            ptr,
            _hook: PhantomData,
        }
    }

    /// The index of the worker running this stream (0-based, fewer than Envoy's concurrency).
    pub fn worker_index(&self) -> u32 {
        // SAFETY: the stream pointer is the running hook's.
        unsafe { envoy_dynamic_module_callback_http_filter_get_worker_index(self.ptr) }
    }

    /// The first value of header `name` in `map`, as bytes (header values need not be UTF-8).
    pub fn header(&self, map: HeaderMap, name: &str) -> Option<&[u8]> {
        let mut out = EnvoyBuffer::NULL;
        let mut count = 0usize;
        // SAFETY: the stream pointer is the running hook's; the key buffer lives across the call;
        // `out` and `count` are valid out-pointers.
        let ok = unsafe {
            envoy_dynamic_module_callback_http_get_header(
                self.ptr,
                map as i32,
                ModuleBuffer::of(name.as_bytes()),
                &mut out,
                0,
                &mut count,
            )
        };
        if !ok || count == 0 || out.ptr.is_null() {
            return None;
        }
        // SAFETY: Envoy keeps the value alive until the hook ends or the map is written; the
        // result borrows `self`, and every write takes `&mut self`.
        Some(unsafe { out.as_slice() })
    }

    /// Replaces every value of `name` in `map` with `value`.
    pub fn set_header(&mut self, map: HeaderMap, name: &str, value: &[u8]) -> bool {
        // SAFETY: the stream pointer is the running hook's; both buffers live across the call.
        unsafe {
            envoy_dynamic_module_callback_http_set_header(
                self.ptr,
                map as i32,
                ModuleBuffer::of(name.as_bytes()),
                ModuleBuffer::of(value),
            )
        }
    }

    /// Removes every value of `name` from `map` (the ABI has no remove: a null value removes).
    pub fn remove_header(&mut self, map: HeaderMap, name: &str) -> bool {
        // SAFETY: as in `set_header`; a null value buffer is the documented "remove".
        unsafe {
            envoy_dynamic_module_callback_http_set_header(
                self.ptr,
                map as i32,
                ModuleBuffer::of(name.as_bytes()),
                ModuleBuffer::NULL,
            )
        }
    }

    /// Adds a value of `name` to `map`, keeping the values already there.
    pub fn add_header(&mut self, map: HeaderMap, name: &str, value: &[u8]) -> bool {
        // SAFETY: the stream pointer is the running hook's; both buffers live across the call.
        unsafe {
            envoy_dynamic_module_callback_http_add_header(
                self.ptr,
                map as i32,
                ModuleBuffer::of(name.as_bytes()),
                ModuleBuffer::of(value),
            )
        }
    }

    /// Answers the request locally; the hook must then return [`Status::StopIteration`]. `details`
    /// becomes the response code details (`%RESPONSE_CODE_DETAILS%`), e.g. `breaker_open`.
    pub fn send_response(
        &mut self,
        status: u32,
        headers: &[(&str, &[u8])],
        body: &[u8],
        details: &str,
    ) {
        let mut stack = [ModuleHttpHeader::EMPTY; STACK_HEADERS];
        let mut heap = Vec::new();
        let lent: &mut [ModuleHttpHeader] = if headers.len() <= STACK_HEADERS {
            &mut stack[..headers.len()]
        } else {
            heap.resize(headers.len(), ModuleHttpHeader::EMPTY);
            &mut heap
        };
        for (slot, (k, v)) in lent.iter_mut().zip(headers) {
            *slot = ModuleHttpHeader {
                key_ptr: k.as_ptr(),
                key_len: k.len(),
                value_ptr: v.as_ptr(),
                value_len: v.len(),
            };
        }
        let details = if details.is_empty() {
            ModuleBuffer::NULL
        } else {
            ModuleBuffer::of(details.as_bytes())
        };
        // SAFETY: the stream pointer is the running hook's; the header array, its keys and values,
        // the body and the details all outlive the call (Envoy copies them).
        unsafe {
            envoy_dynamic_module_callback_http_send_response(
                self.ptr,
                status,
                lent.as_mut_ptr(),
                lent.len(),
                ModuleBuffer::of(body),
                details,
            )
        }
    }

    /// An integer attribute, `None` when Envoy has none (yet) for this stream.
    pub fn attribute_int(&self, id: Attribute) -> Option<u64> {
        let mut out = 0u64;
        // SAFETY: the stream pointer is the running hook's; `out` is a valid out-pointer.
        let ok = unsafe {
            envoy_dynamic_module_callback_http_filter_get_attribute_int(
                self.ptr, id as i32, &mut out,
            )
        };
        ok.then_some(out)
    }

    /// A string attribute as bytes, `None` when Envoy has none (yet) for this stream.
    pub fn attribute_bytes(&self, id: Attribute) -> Option<&[u8]> {
        let mut out = EnvoyBuffer::NULL;
        // SAFETY: the stream pointer is the running hook's; `out` is a valid out-pointer.
        let ok = unsafe {
            envoy_dynamic_module_callback_http_filter_get_attribute_string(
                self.ptr, id as i32, &mut out,
            )
        };
        if !ok || out.ptr.is_null() {
            return None;
        }
        // SAFETY: Envoy's stream info outlives the hook; the result borrows `self`.
        Some(unsafe { out.as_slice() })
    }

    /// Adds `by` to a counter, with one value per label name it was defined with.
    pub fn increment_counter(
        &mut self,
        id: CounterId,
        labels: &[&[u8]],
        by: u64,
    ) -> Result<(), MetricsError> {
        let mut buffers = label_buffers(labels).ok_or(MetricsError::Other(-1))?;
        // SAFETY: the stream pointer is the running hook's; the label buffers point at slices that
        // outlive the call.
        let r = unsafe {
            envoy_dynamic_module_callback_http_filter_increment_counter(
                self.ptr,
                id.0,
                buffers.as_mut_ptr(),
                labels.len(),
                by,
            )
        };
        metrics_result(r)
    }

    /// Sets a gauge, with one value per label name it was defined with.
    pub fn set_gauge(
        &mut self,
        id: GaugeId,
        labels: &[&[u8]],
        value: u64,
    ) -> Result<(), MetricsError> {
        let mut buffers = label_buffers(labels).ok_or(MetricsError::Other(-1))?;
        // SAFETY: as in `increment_counter`.
        let r = unsafe {
            envoy_dynamic_module_callback_http_filter_set_gauge(
                self.ptr,
                id.0,
                buffers.as_mut_ptr(),
                labels.len(),
                value,
            )
        };
        metrics_result(r)
    }
}
