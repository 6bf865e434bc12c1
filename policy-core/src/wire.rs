//! Numbers as Envoy and an upstream send them to the shells: bytes, bounded.
//!
//! A status, a gRPC code or an attempt count arrives as header bytes that a client or an
//! upstream controls: a number too long, out of range or with anything but digits is "absent",
//! never a panic. Both shells (the wasm filter and the dynamic module) read them with this.

/// A decimal number of at most 10 digits (optional surrounding whitespace), `None` otherwise.
pub fn parse_u32(b: &[u8]) -> Option<u32> {
    let b = b.trim_ascii();
    if b.is_empty() || b.len() > 10 {
        return None;
    }
    let mut v: u64 = 0;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u64::from(c - b'0');
    }
    u32::try_from(v).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_from_headers_are_bounded() {
        assert_eq!(parse_u32(b" 14 "), Some(14));
        assert_eq!(parse_u32(b"4294967295"), Some(u32::MAX));
        assert_eq!(parse_u32(b"4294967296"), None);
        assert_eq!(parse_u32(b"99999999999999999999"), None);
        assert_eq!(parse_u32(b"1\xff"), None);
        assert_eq!(parse_u32(b"-1"), None);
        assert_eq!(parse_u32(b""), None);
    }
}
