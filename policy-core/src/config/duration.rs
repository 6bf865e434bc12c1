//! Durations as the configuration writes them: `"250ms"`, `"30s"`, `"1.5s"`, `"5m"`, `"1h"`.
//!
//! Why strings and not numbers: a bare `30` is ambiguous (seconds? milliseconds?), and SPEC
//! ("Plugin configuration") makes every duration a string with its unit. The rules, decided here:
//! `<digits>[.<digits>]<unit>` with unit `ms`, `s`, `m` or `h`, precise to the nanosecond; JSON
//! numbers, negative values, a missing or unknown unit, and whitespace are errors.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserialize, Deserializer, Visitor};

#[cfg(feature = "schema")]
use schemars::JsonSchema;

use super::schema_macros::inline_schema;

/// A duration as read from the configuration: its value and the text it was written as, so that
/// range errors can quote what the user wrote (`must be in [1s, 1h], got "999ms"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dur {
    pub value: Duration,
    pub text: String,
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as \"30s\" (units ms, s, m, h)")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Dur, E> {
                let value = parse_duration(s).map_err(E::custom)?;
                Ok(Dur {
                    value,
                    text: s.to_string(),
                })
            }
        }
        d.deserialize_str(V)
    }
}

inline_schema!(Dur, "Duration", {
    "type": "string",
    "pattern": "^[0-9]+(\\.[0-9]+)?(ms|s|m|h)$",
    "description": "A duration: a number and a unit, ms, s, m or h (\"250ms\", \"1.5s\", \"5m\")."
});

/// Parses a duration string: `<digits>[.<digits>]<unit>`, unit one of `ms`, `s`, `m`, `h`.
///
/// Public so other modules (and the filter) share one definition of what a duration is.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    const UNITS: &str = "ms, s, m, h";
    if s.is_empty() {
        return Err("empty duration, expected e.g. \"30s\"".into());
    }
    if s.starts_with('-') {
        return Err(format!("must not be negative, got \"{s}\""));
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let unit_nanos: u128 = match unit {
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        "" => return Err(format!("missing unit ({UNITS}) in \"{s}\"")),
        other => {
            return Err(format!(
                "unknown unit \"{other}\" in \"{s}\", expected one of {UNITS}"
            ))
        }
    };
    let (int_part, frac_part) = match num.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (num, None),
    };
    let digits_ok = |d: &str| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit());
    if !digits_ok(int_part) || frac_part.is_some_and(|f| !digits_ok(f)) {
        return Err(format!(
            "invalid number in duration \"{s}\", expected e.g. \"30s\" or \"1.5s\""
        ));
    }
    let too_large = || format!("duration \"{s}\" is too large");
    let int: u128 = int_part.parse().map_err(|_| too_large())?;
    let mut nanos = int.checked_mul(unit_nanos).ok_or_else(too_large)?;
    if let Some(frac) = frac_part {
        // 18 digits are far below a nanosecond at every unit; later digits are ignored.
        let kept = frac.get(..frac.len().min(18)).unwrap_or(frac);
        let scale = 10u128.pow(u32::try_from(kept.len()).unwrap_or(18));
        let f: u128 = kept.parse().map_err(|_| too_large())?;
        nanos = nanos
            .checked_add(f * unit_nanos / scale)
            .ok_or_else(too_large)?;
    }
    let secs = u64::try_from(nanos / 1_000_000_000).map_err(|_| too_large())?;
    // The remainder of a division by 1e9 always fits in u32.
    let sub = u32::try_from(nanos % 1_000_000_000).unwrap_or(0);
    Ok(Duration::new(secs, sub))
}

/// Formats a duration the way a user would write it (`"250ms"`, `"30s"`, `"5m"`, `"1h"`).
pub fn format_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        let s = d.as_secs();
        if s != 0 && s.is_multiple_of(3600) {
            format!("{}h", s / 3600)
        } else if s != 0 && s.is_multiple_of(60) {
            format!("{}m", s / 60)
        } else {
            format!("{s}s")
        }
    } else {
        // Like `Duration`'s Debug (`1.5s`, `83.333333ms`, `1.5µs`, `7ns`), but whole milliseconds
        // as `1500ms`, and without the float-style formatting code Debug brings into the wasm.
        let (secs, nanos) = (d.as_secs(), d.subsec_nanos());
        let (int, frac, width, unit) = if nanos.is_multiple_of(1_000_000) && secs < u64::MAX / 1000
        {
            (secs * 1000 + u64::from(nanos / 1_000_000), 0, 0, "ms")
        } else if secs > 0 {
            (secs, nanos, 9, "s")
        } else if nanos >= 1_000_000 {
            (u64::from(nanos / 1_000_000), nanos % 1_000_000, 6, "ms")
        } else if nanos >= 1_000 {
            (u64::from(nanos / 1_000), nanos % 1_000, 3, "µs")
        } else {
            (u64::from(nanos), 0, 0, "ns")
        };
        let mut out = int.to_string();
        if frac != 0 {
            let digits = format!("{frac:0width$}");
            out.push('.');
            out.push_str(digits.trim_end_matches('0'));
        }
        out.push_str(unit);
        out
    }
}
