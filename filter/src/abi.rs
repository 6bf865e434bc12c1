//! [`Host`] on the proxy-wasm ABI (0.2.1), called directly.
//!
//! The Rust SDK's `hostcalls` wrappers `panic!` on every status they do not expect (for example
//! `set_shared_data` on anything but Ok and CasMismatch, `get_property` on BadArgument), and its
//! `String` header getters `unwrap()` UTF-8. A panic traps the VM and kills the worker's traffic
//! (or, with Istio's FAIL_OPEN, silently removes the breaker), so this module calls the imports
//! itself and turns every status into a value. It also takes pre-serialized property paths, so
//! the hot path does not build a path `Vec` per property read.
//!
//! The SDK is still used for what it does well: the context dispatch (`proxy_on_*` exports),
//! ticks, `http_call` and logging.

use crate::host::{Host, Map, MetricKind, SetError};

const OK: u32 = 0;
const NOT_FOUND: u32 = 1;
const CAS_MISMATCH: u32 = 8;

#[allow(improper_ctypes)]
extern "C" {
    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
    fn proxy_register_shared_queue(
        name_data: *const u8,
        name_size: usize,
        return_id: *mut u32,
    ) -> u32;
    fn proxy_resolve_shared_queue(
        vm_id_data: *const u8,
        vm_id_size: usize,
        name_data: *const u8,
        name_size: usize,
        return_id: *mut u32,
    ) -> u32;
    fn proxy_enqueue_shared_queue(queue_id: u32, value_data: *const u8, value_size: usize) -> u32;
    fn proxy_dequeue_shared_queue(
        queue_id: u32,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    fn proxy_replace_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map_type: u32, key_data: *const u8, key_size: usize) -> u32;
    fn proxy_get_header_map_pairs(
        map_type: u32,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> u32;
    fn proxy_add_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_get_property(
        path_data: *const u8,
        path_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    fn proxy_get_shared_data(
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
        return_cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;
    fn proxy_send_local_response(
        status_code: u32,
        status_code_details_data: *const u8,
        status_code_details_size: usize,
        body_data: *const u8,
        body_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
    fn proxy_define_metric(
        metric_type: u32,
        name_data: *const u8,
        name_size: usize,
        return_id: *mut u32,
    ) -> u32;
    fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
    fn proxy_record_metric(metric_id: u32, value: u64) -> u32;
}

fn map_type(m: Map) -> u32 {
    match m {
        Map::RequestHeaders => 0,
        Map::ResponseHeaders => 2,
        Map::ResponseTrailers => 3,
        Map::HttpCallResponseHeaders => 6,
    }
}

/// Takes ownership of a buffer the host allocated through the SDK's `proxy_on_memory_allocate`
/// (a boxed slice of exactly `size` bytes).
///
/// # Safety
/// `data` must be null or a buffer of `size` bytes that the host allocated for this call.
unsafe fn take_buffer(data: *mut u8, size: usize) -> Vec<u8> {
    if data.is_null() {
        Vec::new()
    } else {
        // SAFETY: the host allocated `size` bytes with the SDK's allocator and handed them over.
        unsafe { Vec::from_raw_parts(data, size, size) }
    }
}

/// The real host: the proxy-wasm ABI of the Envoy this VM runs in.
pub struct ProxyWasmHost;

impl Host for ProxyWasmHost {
    fn now_ns(&self) -> u64 {
        let mut t = 0u64;
        // SAFETY: a plain out-parameter.
        let _ = unsafe { proxy_get_current_time_nanoseconds(&mut t) };
        t
    }

    fn get_shared(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        let (mut data, mut size, mut cas) = (std::ptr::null_mut(), 0usize, 0u32);
        // SAFETY: key is a valid slice; the out-parameters are ours.
        let status = unsafe {
            proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas)
        };
        // SAFETY: on Ok the host handed over `size` bytes at `data` (or null).
        let value = unsafe { take_buffer(data, size) };
        match status {
            OK => (Some(value), (cas != 0).then_some(cas)),
            _ => (None, None),
        }
    }

    fn set_shared(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SetError> {
        // SAFETY: both slices are valid for the call.
        let status = unsafe {
            proxy_set_shared_data(
                key.as_ptr(),
                key.len(),
                value.as_ptr(),
                value.len(),
                cas.unwrap_or(0),
            )
        };
        match status {
            OK => Ok(()),
            CAS_MISMATCH => Err(SetError::CasMismatch),
            _ => Err(SetError::Failed),
        }
    }

    fn define_metric(&self, kind: MetricKind, name: &str) -> Option<u32> {
        let t = match kind {
            MetricKind::Counter => 0,
            MetricKind::Gauge => 1,
        };
        let mut id = 0u32;
        // SAFETY: name is a valid slice; id is ours.
        let status = unsafe { proxy_define_metric(t, name.as_ptr(), name.len(), &mut id) };
        (status == OK).then_some(id)
    }

    fn increment_metric(&self, id: u32, delta: i64) {
        // SAFETY: no pointers.
        let _ = unsafe { proxy_increment_metric(id, delta) };
    }

    fn record_metric(&self, id: u32, value: u64) {
        // SAFETY: no pointers.
        let _ = unsafe { proxy_record_metric(id, value) };
    }

    fn header(&self, map: Map, name: &str) -> Option<Vec<u8>> {
        let (mut data, mut size) = (std::ptr::null_mut(), 0usize);
        // SAFETY: name is a valid slice; the out-parameters are ours.
        let status = unsafe {
            proxy_get_header_map_value(
                map_type(map),
                name.as_ptr(),
                name.len(),
                &mut data,
                &mut size,
            )
        };
        // SAFETY: as in get_shared.
        let value = unsafe { take_buffer(data, size) };
        (status == OK).then_some(value)
    }

    fn header_pairs(&self, map: Map) -> Option<Vec<u8>> {
        let (mut data, mut size) = (std::ptr::null_mut(), 0usize);
        // SAFETY: the out-parameters are ours.
        let status = unsafe { proxy_get_header_map_pairs(map_type(map), &mut data, &mut size) };
        // SAFETY: as in get_shared.
        let value = unsafe { take_buffer(data, size) };
        (status == OK).then_some(value)
    }

    fn replace_header(&self, map: Map, name: &str, value: &[u8]) {
        // SAFETY: both slices are valid for the call.
        let _ = unsafe {
            proxy_replace_header_map_value(
                map_type(map),
                name.as_ptr(),
                name.len(),
                value.as_ptr(),
                value.len(),
            )
        };
    }

    fn remove_header(&self, map: Map, name: &str) {
        // SAFETY: name is a valid slice.
        let _ = unsafe { proxy_remove_header_map_value(map_type(map), name.as_ptr(), name.len()) };
    }

    fn add_header(&self, map: Map, name: &str, value: &[u8]) {
        // SAFETY: both slices are valid for the call.
        let _ = unsafe {
            proxy_add_header_map_value(
                map_type(map),
                name.as_ptr(),
                name.len(),
                value.as_ptr(),
                value.len(),
            )
        };
    }

    fn property(&self, path: &[u8]) -> Option<Vec<u8>> {
        let (mut data, mut size) = (std::ptr::null_mut(), 0usize);
        // SAFETY: path is a valid slice; the out-parameters are ours.
        let status = unsafe { proxy_get_property(path.as_ptr(), path.len(), &mut data, &mut size) };
        // SAFETY: as in get_shared.
        let value = unsafe { take_buffer(data, size) };
        match status {
            OK if !data.is_null() => Some(value),
            OK | NOT_FOUND => None,
            _ => None,
        }
    }

    fn send_local_response(&self, status: u32, headers: &[(&str, &[u8])], body: &[u8]) {
        let map = crate::host::serialize_pairs(headers);
        // SAFETY: all slices are valid for the call.
        let _ = unsafe {
            proxy_send_local_response(
                status,
                std::ptr::null(),
                0,
                body.as_ptr(),
                body.len(),
                map.as_ptr(),
                map.len(),
                -1,
            )
        };
    }

    fn register_queue(&self, name: &str) -> Option<u32> {
        let mut id = 0u32;
        // SAFETY: name is a valid slice; the out-parameter is ours.
        let status = unsafe { proxy_register_shared_queue(name.as_ptr(), name.len(), &mut id) };
        (status == OK && id != 0).then_some(id)
    }

    fn resolve_queue(&self, name: &str) -> Option<u32> {
        let mut id = 0u32;
        // SAFETY: an empty VM id (this VM's own id, in proxy-wasm-cpp-host) and a valid name
        // slice; the out-parameter is ours.
        let status = unsafe {
            proxy_resolve_shared_queue(std::ptr::null(), 0, name.as_ptr(), name.len(), &mut id)
        };
        (status == OK && id != 0).then_some(id)
    }

    fn enqueue(&self, token: u32, value: &[u8]) -> bool {
        // SAFETY: value is a valid slice for the call.
        let status = unsafe { proxy_enqueue_shared_queue(token, value.as_ptr(), value.len()) };
        status == OK
    }

    fn dequeue(&self, token: u32) -> Option<Vec<u8>> {
        let (mut data, mut size) = (std::ptr::null_mut(), 0usize);
        // SAFETY: the out-parameters are ours.
        let status = unsafe { proxy_dequeue_shared_queue(token, &mut data, &mut size) };
        // SAFETY: on Ok the host handed over `size` bytes at `data` (or null).
        let value = unsafe { take_buffer(data, size) };
        (status == OK).then_some(value)
    }
}

#[allow(improper_ctypes)]
extern "C" {
    fn proxy_get_buffer_bytes(
        buffer_type: u32,
        start: usize,
        max_size: usize,
        return_buffer_data: *mut *mut u8,
        return_buffer_size: *mut usize,
    ) -> u32;
}

/// proxy-wasm buffer types this filter reads.
pub const HTTP_CALL_RESPONSE_BODY: u32 = 4;
pub const PLUGIN_CONFIGURATION: u32 = 7;

/// Up to `max` bytes of a host buffer; `None` on any status but Ok.
pub fn buffer(kind: u32, max: usize) -> Option<Vec<u8>> {
    let (mut data, mut size) = (std::ptr::null_mut(), 0usize);
    // SAFETY: the out-parameters are ours.
    let status = unsafe { proxy_get_buffer_bytes(kind, 0, max, &mut data, &mut size) };
    // SAFETY: on Ok the host handed over `size` bytes at `data` (or null).
    let value = unsafe { take_buffer(data, size) };
    (status == OK).then_some(value)
}
