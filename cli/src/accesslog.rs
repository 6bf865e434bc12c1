//! The access log `meshbreaker replay` reads: Envoy's JSON access log, one object per line, with
//! the fields the shipped `envoy-config/envoy.yaml` writes (docs/replay.md):
//!
//! | field | Envoy command | used for |
//! | --- | --- | --- |
//! | `start_time` | `%START_TIME(%s%3f)%` (epoch ms; RFC 3339 and `s.fff` also read) | the replay clock |
//! | `duration_ms` | `%DURATION%` | completion time (and the latency, in logs without the next two) |
//! | `request_duration_ms` | `%REQUEST_DURATION%` | the upstream latency: from the request complete… |
//! | `response_duration_ms` | `%RESPONSE_DURATION%` | …to the upstream's response headers |
//! | `method`, `upgrade` | `%REQ(:METHOD)%`, `%REQ(UPGRADE)%` | no latency sample for `CONNECT` and upgrades |
//! | `cluster`, `route` | `%UPSTREAM_CLUSTER%`, `%ROUTE_NAME%` | the key |
//! | `authority` | `%REQ(:AUTHORITY)%` | the key (`key_by: authority`) |
//! | `status` | `%RESPONSE_CODE%` | failure (`http_statuses`) |
//! | `grpc_status` | `%GRPC_STATUS_NUMBER%` | failure (`grpc_statuses`) |
//! | `response_flags` | `%RESPONSE_FLAGS%` | failure (`upstream_resets`: UF, UR, UC, UPE) |
//! | `attempts` | `%UPSTREAM_REQUEST_ATTEMPT_COUNT%` | every attempt counts |
//! | `upstream_host` | `%UPSTREAM_HOST%` | whether the request reached an upstream |
//!
//! Values may be JSON numbers or strings (Envoy's typed and untyped JSON formats); `null`, `""`
//! and `"-"` mean absent. Other fields are ignored, so a richer log works too.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// A number written as a JSON number or a numeric string; absent for `null`, `""`, `"-"`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Num(pub Option<f64>);

impl<'de> Deserialize<'de> for Num {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Num;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number or a numeric string")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Num, E> {
                Ok(Num(Some(v as f64)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Num, E> {
                Ok(Num(Some(v as f64)))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Num, E> {
                Ok(Num(Some(v)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Num, E> {
                if s.is_empty() || s == "-" {
                    return Ok(Num(None));
                }
                s.parse()
                    .map(|v| Num(Some(v)))
                    .map_err(|_| E::custom(format!("not a number: {s:?}")))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Num, E> {
                Ok(Num(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// One access log line, borrowing from the line's bytes where it can.
#[derive(Debug, Deserialize, Default)]
pub struct Line<'a> {
    #[serde(borrow, default)]
    pub start_time: Option<Cow<'a, str>>,
    #[serde(default)]
    pub duration_ms: Num,
    #[serde(default)]
    pub request_duration_ms: Num,
    #[serde(default)]
    pub response_duration_ms: Num,
    #[serde(borrow, default)]
    pub method: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub upgrade: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub cluster: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub route: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub authority: Option<Cow<'a, str>>,
    #[serde(default)]
    pub status: Num,
    #[serde(default)]
    pub grpc_status: Num,
    #[serde(borrow, default)]
    pub response_flags: Option<Cow<'a, str>>,
    #[serde(default)]
    pub attempts: Num,
    #[serde(borrow, default)]
    pub upstream_host: Option<Cow<'a, str>>,
}

/// `None` for Envoy's "absent" spellings.
pub fn present<'s>(v: &'s Option<Cow<'_, str>>) -> Option<&'s str> {
    match v.as_deref() {
        None | Some("") | Some("-") => None,
        Some(s) => Some(s),
    }
}

impl Line<'_> {
    /// Envoy's response flags for an upstream connect failure or reset (the filter's rule:
    /// `UpstreamRemoteReset`, `UpstreamConnectionFailure`, `UpstreamConnectionTermination`,
    /// `UpstreamProtocolError`, which a reset in the middle of a response body gives).
    pub fn upstream_reset(&self) -> bool {
        present(&self.response_flags).is_some_and(|f| {
            f.split(',')
                .any(|t| policy_core::window::is_upstream_reset_flag(t.trim()))
        })
    }

    /// The request never reached an upstream and had no upstream failure: it was answered
    /// locally (by the live breaker, or another filter), so its upstream outcome is unknown.
    pub fn answered_locally(&self) -> bool {
        present(&self.upstream_host).is_none() && present(&self.response_flags).is_none()
    }

    /// The upstream's latency in ms as the filter measures it: from the request being complete
    /// (`%REQUEST_DURATION%`) to the upstream's response headers (`%RESPONSE_DURATION%`), 0 when
    /// the upstream answered before the request was complete. `None` for an upgraded or
    /// `CONNECT` request (no latency sample). A log without those fields falls back to the
    /// whole exchange (`%DURATION%`), as the filter measured before it timed the upstream.
    pub fn latency_ms(&self) -> Option<u64> {
        if present(&self.upgrade).is_some()
            || present(&self.method).is_some_and(|m| m.eq_ignore_ascii_case("CONNECT"))
        {
            return None;
        }
        let ms = |n: Num| n.0.map(|v| v.max(0.0) as u64);
        match (ms(self.request_duration_ms), ms(self.response_duration_ms)) {
            (Some(req), Some(resp)) => Some(resp.saturating_sub(req)),
            // The upstream answered before the request was complete.
            (None, Some(_)) => Some(0),
            _ => Some(ms(self.duration_ms).unwrap_or(0)),
        }
    }

    /// Start time in epoch milliseconds.
    pub fn start_ms(&self) -> Option<u64> {
        parse_time_ms(present(&self.start_time)?)
    }
}

/// Epoch milliseconds from `1700000000123` (ms), `1700000000.123` (s) or RFC 3339
/// (`2023-11-14T22:13:20.123Z`, Envoy's default `%START_TIME%`).
pub fn parse_time_ms(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.iter().all(u8::is_ascii_digit) {
        let v: u64 = s.parse().ok()?;
        // Ten digits are seconds (until 2286), thirteen are milliseconds.
        return Some(if b.len() <= 11 { v * 1000 } else { v });
    }
    if b.iter().all(|c| c.is_ascii_digit() || *c == b'.') {
        let v: f64 = s.parse().ok()?;
        return Some((v * 1000.0).round() as u64);
    }
    // YYYY-MM-DDTHH:MM:SS[.fff][Z|±HH:MM]
    let num = |r: std::ops::Range<usize>| -> Option<i64> { s.get(r)?.parse().ok() };
    if b.len() < 19 || b.get(4) != Some(&b'-') || b.get(10).is_none_or(|c| *c != b'T' && *c != b' ')
    {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut rest = s.get(19..)?;
    let mut ms = 0i64;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        let f = frac.get(..digits)?;
        let mut scaled = String::from(f);
        scaled.truncate(3);
        while scaled.len() < 3 {
            scaled.push('0');
        }
        ms = scaled.parse().ok()?;
        rest = frac.get(digits..)?;
    }
    let offset_min = match rest {
        "" | "Z" | "z" => 0,
        tz => {
            let sign = match tz.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let h: i64 = tz.get(1..3)?.parse().ok()?;
            let m: i64 = tz.get(tz.len() - 2..)?.parse().ok()?;
            sign * (h * 60 + m)
        }
    };
    let days = days_from_civil(y, mo, d);
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset_min * 60;
    u64::try_from(secs * 1000 + ms).ok()
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `2023-11-14T22:13:20.123Z` for epoch milliseconds.
pub fn format_time_ms(ms: u64) -> String {
    let secs = (ms / 1000) as i64;
    let days = secs.div_euclid(86_400);
    let tod = secs.rem_euclid(86_400);
    // civil_from_days
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        tod / 3600,
        tod / 60 % 60,
        tod % 60,
        ms % 1000
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn line_reads_typed_and_untyped_values() {
        let typed = br#"{"start_time":"1700000000123","duration_ms":12,"cluster":"backend","route":"r","authority":"a:80","status":503,"grpc_status":null,"response_flags":"UF,URX","attempts":2,"upstream_host":"127.0.0.1:8080","extra":1}"#;
        let l: Line = serde_json::from_slice(typed).unwrap();
        assert_eq!(l.start_ms(), Some(1_700_000_000_123));
        assert_eq!(l.duration_ms.0, Some(12.0));
        assert_eq!(l.status.0, Some(503.0));
        assert_eq!(l.grpc_status.0, None);
        assert!(l.upstream_reset());
        assert!(!l.answered_locally());
        let untyped = br#"{"start_time":"2023-11-14T22:13:20.123Z","duration_ms":"7","status":"200","grpc_status":"-","response_flags":"-","attempts":"1","upstream_host":"-"}"#;
        let l: Line = serde_json::from_slice(untyped).unwrap();
        assert_eq!(l.start_ms(), Some(1_700_000_000_123));
        assert_eq!(l.status.0, Some(200.0));
        assert!(!l.upstream_reset());
        assert!(l.answered_locally());
    }

    #[test]
    fn upstream_resets_are_the_filters_flags() {
        let flags = |f: &str| {
            let json = format!(r#"{{"start_time":"1700000000123","response_flags":"{f}"}}"#);
            serde_json::from_str::<Line>(&json)
                .unwrap()
                .upstream_reset()
        };
        for f in ["UR", "UF", "UC", "UPE", "URX,UC", "UPE,DC"] {
            assert!(flags(f), "{f}");
        }
        for f in ["-", "DC", "UO", "URX", "NR", "UT", "UPEX"] {
            assert!(!flags(f), "{f}");
        }
    }

    #[test]
    fn times_parse_in_every_accepted_form_and_format_back() {
        assert_eq!(parse_time_ms("1700000000"), Some(1_700_000_000_000));
        assert_eq!(parse_time_ms("1700000000.5"), Some(1_700_000_000_500));
        assert_eq!(
            parse_time_ms("2023-11-14T23:13:20.1+01:00"),
            Some(1_700_000_000_100)
        );
        assert_eq!(parse_time_ms("yesterday"), None);
        assert_eq!(
            format_time_ms(1_700_000_000_123),
            "2023-11-14T22:13:20.123Z"
        );
        assert_eq!(format_time_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            parse_time_ms(&format_time_ms(951_782_400_007)),
            Some(951_782_400_007)
        );
    }
}
