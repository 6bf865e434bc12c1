//! The hooks Envoy calls: the module's entry points, each running the filter's code under
//! [`guard`] so that a panic fails open instead of unwinding into Envoy (see the parent module's
//! `## Safety of the hooks`). They are a part of the FFI module of their own so that the wrappers
//! the filter calls ([`super`]) do not depend on the filter that the hooks call.

use std::ffi::{c_char, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};

use super::*;
use crate::filter::{self, Exchange, FilterConfig};

/// Runs a hook body; a panic becomes `None` (the caller fails open) instead of unwinding into
/// Envoy. The default panic hook has already printed the message to stderr.
pub(super) fn guard<T>(f: impl FnOnce() -> T) -> Option<T> {
    catch_unwind(AssertUnwindSafe(f)).ok()
}

/// The filter configuration behind a module pointer Envoy hands back.
///
/// # Safety
/// `ptr` is null or came from [`envoy_dynamic_module_on_http_filter_config_new`] and has not been
/// destroyed (Envoy destroys a configuration only after every stream that uses it).
unsafe fn config_ref<'a>(ptr: ModulePtr) -> Option<&'a FilterConfig> {
    // SAFETY: per the contract above, a non-null `ptr` is a live `Box<FilterConfig>`.
    unsafe { ptr.cast::<FilterConfig>().as_ref() }
}

/// What the module keeps per stream: its configuration and the exchange's state.
struct StreamState {
    config: ModulePtr,
    exchange: Exchange,
}

/// The configuration and exchange behind a stream's module pointer.
///
/// # Safety
/// `ptr` is null or came from [`envoy_dynamic_module_on_http_filter_new`] and has not been
/// destroyed; Envoy calls one hook of a stream at a time, so the exchange is not aliased.
unsafe fn stream_ref<'a>(ptr: ModulePtr) -> Option<(&'a FilterConfig, &'a mut Exchange)> {
    // SAFETY: per the contract, a non-null `ptr` is a live `Box<StreamState>` used by one hook.
    let st = unsafe { ptr.cast::<StreamState>().cast_mut().as_mut() }?;
    // SAFETY: the configuration outlives its streams.
    let cfg = unsafe { config_ref(st.config) }?;
    Some((cfg, &mut st.exchange))
}

// ---- Exported hooks. Names checked with `strings` against the 1.40 binary: Envoy 1.40 resolves
// ---- all of the `on_http_filter_*` ones below when it creates the filter configuration, and
// ---- refuses the configuration when one is missing.

/// Called once when Envoy loads the module.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
    ABI_VERSION.as_ptr()
}

/// A filter configuration (`filter_name`, `filter_config`) is created, on the main thread. Null
/// rejects it; the reason has been logged.
///
/// # Safety
/// Envoy's contract: `name` and `config` point at live bytes for the call, and `config_envoy` is
/// its configuration object.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    config_envoy: FilterConfigEnvoyPtr,
    name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> ModulePtr {
    // SAFETY: Envoy passes its name and configuration bytes, alive for this call.
    let (name, config) = unsafe { (name.as_slice(), config.as_slice()) };
    let mut envoy = ConfigEnvoy::new(config_envoy);
    match guard(|| filter::config_new(&mut envoy, name, config)) {
        Some(Some(cfg)) => Box::into_raw(Box::new(cfg)).cast_const().cast(),
        Some(None) => std::ptr::null(),
        None => {
            log(
                LogLevel::Error,
                "meshbreaker: the configuration could not be loaded (panic)",
            );
            std::ptr::null()
        }
    }
}

/// The configuration is gone from Envoy (after all its streams). Dropping it stops its ticker.
///
/// # Safety
/// `config` is null or a pointer `config_new` returned, destroyed once.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(config: ModulePtr) {
    if config.is_null() {
        return;
    }
    // SAFETY: a non-null pointer here is one `config_new` made with `Box::into_raw`, destroyed once.
    let cfg = unsafe { Box::from_raw(config.cast::<FilterConfig>().cast_mut()) };
    let _ = guard(move || drop(cfg));
}

/// The ticker's event, on the main thread: merge what the workers hold ([`filter::on_tick`]).
///
/// # Safety
/// `config` is the live configuration whose scheduler was committed to; `config_envoy` is
/// Envoy's configuration object, valid for the call.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled(
    config_envoy: FilterConfigEnvoyPtr,
    config: ModulePtr,
    _event_id: u64,
) {
    // SAFETY: Envoy runs this only for a configuration that is still alive.
    let Some(cfg) = (unsafe { config_ref(config) }) else {
        return;
    };
    let mut envoy = ConfigEnvoy::new(config_envoy);
    let _ = guard(|| filter::on_tick(cfg, &mut envoy));
}

/// A callout this configuration sent ([`ConfigEnvoy::http_callout`]) ended, on the main thread:
/// the sidecar's answer ([`filter::on_callout_done`]).
///
/// # Safety
/// `config` is the live configuration that sent the callout; `headers` and `body` are null or
/// point at `headers_len` headers and `body_len` chunks that Envoy keeps alive for the call.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_http_callout_done(
    _config_envoy: FilterConfigEnvoyPtr,
    config: ModulePtr,
    callout_id: u64,
    result: i32,
    headers: *const EnvoyHttpHeader,
    headers_len: usize,
    body: *const EnvoyBuffer,
    body_len: usize,
) {
    // SAFETY: Envoy runs this only for a configuration that is still alive.
    let Some(cfg) = (unsafe { config_ref(config) }) else {
        return;
    };
    // SAFETY: per the hook's contract, both arrays live for this call.
    let (headers, body) = unsafe { (slice_of(headers, headers_len), slice_of(body, body_len)) };
    let response = CalloutResponse {
        end: CalloutEnd::of(result),
        headers,
        body,
    };
    let _ = guard(|| filter::on_callout_done(cfg, callout_id, &response));
}

/// A stream starts: its state is boxed here and freed by `on_http_filter_destroy`.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config: ModulePtr,
    _filter_envoy: FilterEnvoyPtr,
) -> ModulePtr {
    if config.is_null() {
        return std::ptr::null();
    }
    let st = StreamState {
        config,
        exchange: Exchange::default(),
    };
    Box::into_raw(Box::new(st)).cast_const().cast()
}

/// The stream is gone (after `stream_complete`).
///
/// # Safety
/// `filter` is null or what `on_http_filter_new` returned, destroyed once.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_destroy(filter: ModulePtr) {
    if filter.is_null() {
        return;
    }
    // SAFETY: made by `on_http_filter_new` with `Box::into_raw`, destroyed once.
    let st = unsafe { Box::from_raw(filter.cast::<StreamState>().cast_mut()) };
    let _ = guard(move || drop(st));
}

/// Runs a stream hook's body on its configuration and exchange; `fallback` when the pointer is
/// null or the body panicked (fail open).
///
/// # Safety
/// As [`stream_ref`]; `filter_envoy` is Envoy's stream object, valid for the call.
unsafe fn on_stream<T>(
    filter_envoy: FilterEnvoyPtr,
    filter: ModulePtr,
    fallback: T,
    f: impl FnOnce(&FilterConfig, &mut Stream<'_>, &mut Exchange) -> T,
) -> T {
    // SAFETY: per this function's contract.
    let Some((cfg, x)) = (unsafe { stream_ref(filter) }) else {
        return fallback;
    };
    let mut stream = Stream::new(filter_envoy);
    guard(|| f(cfg, &mut stream, x)).unwrap_or(fallback)
}

/// Request headers: the decision ([`filter::on_request_headers`]).
///
/// # Safety
/// `filter` is what `on_http_filter_new` returned for this stream, and `filter_envoy` is Envoy's
/// stream object, valid for the call. (The same for every stream hook below.)
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    filter_envoy: FilterEnvoyPtr,
    filter: ModulePtr,
    end_of_stream: bool,
) -> i32 {
    // SAFETY: per the hook's contract.
    let status = unsafe {
        on_stream(filter_envoy, filter, Status::Continue, |c, s, x| {
            filter::on_request_headers(c, s, x, end_of_stream)
        })
    };
    status as i32
}

/// # Safety
/// As for `on_http_filter_request_headers`.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    filter_envoy: FilterEnvoyPtr,
    filter: ModulePtr,
    end_of_stream: bool,
) -> i32 {
    if end_of_stream {
        // SAFETY: per the hook's contract.
        unsafe { on_stream(filter_envoy, filter, (), |_, _, x| x.on_request_end()) };
    }
    Status::Continue as i32
}

/// # Safety
/// As for `on_http_filter_request_headers`.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    filter_envoy: FilterEnvoyPtr,
    filter: ModulePtr,
) -> i32 {
    // SAFETY: per the hook's contract.
    unsafe { on_stream(filter_envoy, filter, (), |_, _, x| x.on_request_end()) };
    Status::Continue as i32
}

/// # Safety
/// As for `on_http_filter_request_headers`.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    filter_envoy: FilterEnvoyPtr,
    filter: ModulePtr,
    _end_of_stream: bool,
) -> i32 {
    // SAFETY: per the hook's contract.
    let status = unsafe {
        on_stream(
            filter_envoy,
            filter,
            Status::Continue,
            filter::on_response_headers,
        )
    };
    status as i32
}

/// # Safety
/// As for `on_http_filter_request_headers`.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
    filter_envoy: FilterEnvoyPtr,
    filter: ModulePtr,
) -> i32 {
    // SAFETY: per the hook's contract.
    unsafe {
        on_stream(filter_envoy, filter, (), |_, s, x| {
            x.on_response_trailers(s)
        })
    };
    Status::Continue as i32
}

/// The stream is complete (before access logs; its callbacks still work): the outcome.
///
/// # Safety
/// As for `on_http_filter_request_headers`.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
    filter_envoy: FilterEnvoyPtr,
    filter: ModulePtr,
) {
    // SAFETY: per the hook's contract.
    unsafe { on_stream(filter_envoy, filter, (), filter::on_stream_complete) };
}

/// Stubs: Envoy 1.40 requires these hooks; meshbreaker has nothing to do in them.
macro_rules! continue_hooks {
    ($($name:ident($($arg:ident: $ty:ty),*);)*) => {$(
        #[no_mangle]
        pub extern "C" fn $name($($arg: $ty),*) -> i32 {
            guard(|| Status::Continue).unwrap_or(Status::Continue) as i32
        }
    )*};
}

macro_rules! void_hooks {
    ($($name:ident($($arg:ident: $ty:ty),*);)*) => {$(
        #[no_mangle]
        pub extern "C" fn $name($($arg: $ty),*) {
            let _ = guard(|| ());
        }
    )*};
}

continue_hooks! {
    envoy_dynamic_module_on_http_filter_response_body(_f: FilterEnvoyPtr, _m: ModulePtr, _eos: bool);
}

void_hooks! {
    envoy_dynamic_module_on_http_filter_http_callout_done(
        _f: FilterEnvoyPtr, _m: ModulePtr, _callout_id: u64, _result: i32,
        _headers: *const c_void, _headers_len: usize, _body: *const EnvoyBuffer, _body_len: usize);
    envoy_dynamic_module_on_http_filter_http_stream_headers(
        _f: FilterEnvoyPtr, _m: ModulePtr, _stream_id: u64,
        _headers: *const c_void, _headers_len: usize, _end_stream: bool);
    envoy_dynamic_module_on_http_filter_http_stream_data(
        _f: FilterEnvoyPtr, _m: ModulePtr, _stream_id: u64,
        _data: *const EnvoyBuffer, _data_len: usize, _end_stream: bool);
    envoy_dynamic_module_on_http_filter_http_stream_trailers(
        _f: FilterEnvoyPtr, _m: ModulePtr, _stream_id: u64, _trailers: *const c_void, _trailers_len: usize);
    envoy_dynamic_module_on_http_filter_http_stream_complete(_f: FilterEnvoyPtr, _m: ModulePtr, _stream_id: u64);
    envoy_dynamic_module_on_http_filter_http_stream_reset(_f: FilterEnvoyPtr, _m: ModulePtr, _stream_id: u64, _reason: i32);
    envoy_dynamic_module_on_http_filter_scheduled(_f: FilterEnvoyPtr, _m: ModulePtr, _event_id: u64);
    envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(_f: FilterEnvoyPtr, _m: ModulePtr);
    envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(_f: FilterEnvoyPtr, _m: ModulePtr);
}
