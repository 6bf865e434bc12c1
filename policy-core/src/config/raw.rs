//! The wire format: what the plugin configuration's JSON may hold, as serde types.
//!
//! Every field is a [`Field`] (absent = not given), so the same structs serve the top level, where
//! an absent field takes SPEC's default, and an override, where it inherits the top level
//! ([`super::merge`]). `deny_unknown_fields` rejects typos; `null` is a type error except where it
//! means "off" (`breaker.latency_p95_threshold`, `reset_signals`, a policy's `per_try_timeout`
//! and `match.grpc`: those are `Field<Option<_>>`). Types and value syntax are checked here, while
//! deserializing; ranges and cross-field rules in [`super::validate`], which needs the raw values
//! (`-1`, `"999ms"`) to quote them.
//!
//! Beyond plain serde: integers may be written as integral floats (`20.0`; `20.5` is an error),
//! HTTP statuses are classes (`"5xx"`) or codes (`429`, `"429"`), gRPC statuses names
//! (case-insensitive) or codes 0–16, and `match.headers` keeps its order.
//!
//! With the `schema` feature these types also derive the configuration's JSON Schema
//! ([`super::schema`]).

use std::fmt;

#[cfg(feature = "schema")]
use schemars::JsonSchema;
use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};

use super::duration::Dur;
use super::schema_macros::{delegate_schema, inline_schema};
use super::{HttpStatusMatch, KeyBy, Mode, Shedding, GRPC_STATUS_NAMES};

/// A field that may be absent; `null` goes to `T` (a type error unless `T` is an `Option`).
#[derive(Debug, Clone, PartialEq)]
pub struct Field<T>(pub Option<T>);

impl<T> Default for Field<T> {
    fn default() -> Self {
        Field(None)
    }
}

impl<T> Field<T> {
    pub fn get(&self) -> Option<&T> {
        self.0.as_ref()
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Field<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        T::deserialize(ObjectsOnly(d)).map(|v| Field(Some(v)))
    }
}

/// A section (a struct) in a list or behind `null`: like [`Field`], it accepts only a JSON object.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Obj<T>(pub T);

impl<T> std::ops::Deref for Obj<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Obj<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        T::deserialize(ObjectsOnly(d)).map(Obj)
    }
}

delegate_schema!(Obj);

/// Reads a struct only from a JSON object. serde's derived structs also accept an array of the
/// fields in order (`"breaker": ["60s", 12]`), which no one writes on purpose and which would
/// turn `[]` into "all defaults"; this deserializer turns `deserialize_struct` into
/// `deserialize_map` and forwards everything else.
pub(crate) struct ObjectsOnly<D>(pub(crate) D);

macro_rules! forward {
    ($($method:ident)*) => {
        $(fn $method<V: Visitor<'de>>(self, v: V) -> Result<V::Value, D::Error> {
            self.0.$method(v)
        })*
    };
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for ObjectsOnly<D> {
    type Error = D::Error;
    forward! {
        deserialize_any deserialize_bool deserialize_i8 deserialize_i16 deserialize_i32
        deserialize_i64 deserialize_i128 deserialize_u8 deserialize_u16 deserialize_u32
        deserialize_u64 deserialize_u128 deserialize_f32 deserialize_f64 deserialize_char
        deserialize_str deserialize_string deserialize_bytes deserialize_byte_buf
        deserialize_option deserialize_unit deserialize_seq deserialize_map
        deserialize_identifier deserialize_ignored_any
    }
    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        v: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_unit_struct(name, v)
    }
    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        v: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_newtype_struct(name, v)
    }
    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, v: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_tuple(len, v)
    }
    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        v: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_tuple_struct(name, len, v)
    }
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_map(v)
    }
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_enum(name, variants, v)
    }
    fn is_human_readable(&self) -> bool {
        self.0.is_human_readable()
    }
}

delegate_schema!(Field);

/// A JSON integer (or an integral float), kept signed and wide so that range errors can show
/// what was written (`got -1`). Values beyond `i64` saturate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Int(pub i64);

impl<'de> Deserialize<'de> for Int {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Int;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Int, E> {
                Ok(Int(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Int, E> {
                Ok(Int(v))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Int, E> {
                if v.fract() != 0.0 || !v.is_finite() {
                    return Err(E::custom(format!("must be an integer, got {v}")));
                }
                // Integral: `as` saturates beyond i64, as the integer visitors do.
                Ok(Int(v as i64))
            }
        }
        d.deserialize_any(V)
    }
}

inline_schema!(Int, "Integer", { "type": "integer" });

/// A JSON number.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Number(pub f64);

impl<'de> Deserialize<'de> for Number {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Number;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Number, E> {
                Ok(Number(v as f64))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Number, E> {
                Ok(Number(v as f64))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Number, E> {
                Ok(Number(v))
            }
        }
        d.deserialize_any(V)
    }
}

inline_schema!(Number, "Number", { "type": "number" });

/// A string naming one of `values` (an enum such as `mode`), with serde's wording for an unknown
/// one (``unknown variant `x`, expected one of `a`, `b` ``). Not serde's derived enum: serde_json
/// reads a derived enum from a number as a syntax error ("expected value"), not a type error.
pub(crate) fn one_of<'de, D: Deserializer<'de>, T: Copy>(
    d: D,
    names: &'static [&'static str],
    values: &[T],
) -> Result<T, D::Error> {
    struct V(&'static [&'static str]);
    impl Visitor<'_> for V {
        type Value = usize;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("one of ")?;
            for (i, n) in self.0.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "`{n}`")?;
            }
            Ok(())
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<usize, E> {
            self.0
                .iter()
                .position(|n| *n == s)
                .ok_or_else(|| E::unknown_variant(s, self.0))
        }
    }
    let i = d.deserialize_str(V(names))?;
    values
        .get(i)
        .copied()
        .ok_or_else(|| de::Error::custom("unknown value"))
}

/// `"got …"` for a string in an error reason: quoted, cut to 40 characters.
pub(crate) fn quoted(s: &str) -> String {
    if s.chars().count() > 40 {
        format!("\"{}…\"", s.chars().take(40).collect::<String>())
    } else {
        format!("\"{s}\"")
    }
}

const STATUS_RANGE: &str = "must be an HTTP status code in [100, 599]";

fn status_code<E: de::Error>(code: Option<u64>, shown: &dyn fmt::Display) -> Result<u16, E> {
    match code {
        Some(c @ 100..=599) => Ok(c as u16),
        _ => Err(E::custom(format!("{STATUS_RANGE}, got {shown}"))),
    }
}

/// A status code 100–599 as a JSON integer or a numeric string (`"429"`).
struct CodeVisitor;

impl Visitor<'_> for CodeVisitor {
    type Value = u16;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an HTTP status code")
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<u16, E> {
        status_code(s.parse().ok(), &quoted(s))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u16, E> {
        status_code(Some(v), &v)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u16, E> {
        status_code(u64::try_from(v).ok(), &v)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<u16, E> {
        let integral = v.fract() == 0.0 && (0.0..=1000.0).contains(&v);
        status_code(integral.then_some(v as u64), &v)
    }
}

/// `retriable_status_codes[]`: an exact HTTP status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusCode(pub u16);

impl<'de> Deserialize<'de> for StatusCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(CodeVisitor).map(StatusCode)
    }
}

inline_schema!(StatusCode, "StatusCode", {
    "anyOf": [
        { "type": "integer", "minimum": 100, "maximum": 599 },
        { "type": "string", "pattern": "^[1-5][0-9][0-9]$" }
    ]
});

impl<'de> Deserialize<'de> for HttpStatusMatch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = HttpStatusMatch;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a status class like \"5xx\" or a code like 429")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<HttpStatusMatch, E> {
                let b = s.as_bytes();
                if b.len() == 3 && b.get(1..).is_some_and(|r| r.eq_ignore_ascii_case(b"xx")) {
                    return match b.first() {
                        Some(d @ b'1'..=b'5') => Ok(HttpStatusMatch::Class(u16::from(d - b'0'))),
                        _ => Err(E::custom(format!(
                            "status class must be one of 1xx..5xx, got {}",
                            quoted(s)
                        ))),
                    };
                }
                CodeVisitor.visit_str(s).map(HttpStatusMatch::Exact)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<HttpStatusMatch, E> {
                CodeVisitor.visit_u64(v).map(HttpStatusMatch::Exact)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<HttpStatusMatch, E> {
                CodeVisitor.visit_i64(v).map(HttpStatusMatch::Exact)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<HttpStatusMatch, E> {
                CodeVisitor.visit_f64(v).map(HttpStatusMatch::Exact)
            }
        }
        d.deserialize_any(V)
    }
}

inline_schema!(HttpStatusMatch, "HttpStatus", {
    "description": "A status class (\"5xx\", \"4xx\") or an exact code (429).",
    "anyOf": [
        { "type": "integer", "minimum": 100, "maximum": 599 },
        { "type": "string", "pattern": "^([1-5][xX][xX]|[1-5][0-9][0-9])$" }
    ]
});

/// A gRPC status: a canonical name (any case, `UNAVAILABLE`) or a code 0–16 (`14`, `"14"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrpcCode(pub u32);

fn grpc_error<E: de::Error>(shown: &dyn fmt::Display) -> E {
    E::custom(format!(
        "must be a gRPC status name (OK … UNAUTHENTICATED) or code 0–16, got {shown}"
    ))
}

impl<'de> Deserialize<'de> for GrpcCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = GrpcCode;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a gRPC status name or code")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<GrpcCode, E> {
                if let Some(code) = GRPC_STATUS_NAMES
                    .iter()
                    .position(|n| n.eq_ignore_ascii_case(s))
                {
                    return Ok(GrpcCode(code as u32));
                }
                match s.parse::<u32>() {
                    Ok(code) if code <= 16 => Ok(GrpcCode(code)),
                    _ => Err(grpc_error(&quoted(s))),
                }
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<GrpcCode, E> {
                match u32::try_from(v) {
                    Ok(code) if code <= 16 => Ok(GrpcCode(code)),
                    _ => Err(grpc_error(&v)),
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<GrpcCode, E> {
                match u64::try_from(v) {
                    Ok(u) => self.visit_u64(u),
                    Err(_) => Err(grpc_error(&v)),
                }
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<GrpcCode, E> {
                if v.fract() == 0.0 && (0.0..=16.0).contains(&v) {
                    Ok(GrpcCode(v as u32))
                } else {
                    Err(grpc_error(&v))
                }
            }
        }
        d.deserialize_any(V)
    }
}

inline_schema!(GrpcCode, "GrpcStatus", {
    "description": "A gRPC status name (UNAVAILABLE, any case) or code 0-16.",
    "anyOf": [
        { "type": "integer", "minimum": 0, "maximum": 16 },
        { "type": "string", "pattern": "^([A-Za-z_]+|[0-9]|1[0-6])$" }
    ]
});

/// `match.headers`: header name → exact value, in document order (a repeated name is kept, so
/// that validation can reject it by name).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Headers(pub Vec<(String, String)>);

impl<'de> Deserialize<'de> for Headers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Headers;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of header name to value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Headers, A::Error> {
                let mut out = Vec::new();
                while let Some(name) = map.next_key::<String>()? {
                    let value = map.next_value::<String>()?;
                    out.push((name, value));
                }
                Ok(Headers(out))
            }
        }
        d.deserialize_map(V)
    }
}

inline_schema!(Headers, "Headers", {
    "type": "object",
    "description": "Header name (an HTTP token, case-insensitive) to exact value.",
    "propertyNames": { "pattern": "^[!#$%&'*+.^_`|~0-9A-Za-z-]+$" },
    "additionalProperties": { "type": "string" }
});

/// The plugin configuration (SPEC "Plugin configuration"). Every field is optional; `{}` gives
/// the defaults.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[cfg_attr(
    feature = "schema",
    schemars(title = "meshbreaker plugin configuration")
)]
#[serde(deny_unknown_fields, default, expecting = "an object")]
pub struct RawConfig {
    /// What one breaker guards (default `cluster`).
    pub key_by: Field<KeyBy>,
    /// Most keys tracked per Envoy process, 1-100000 (default 1024).
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 100000)))]
    pub max_keys: Field<Int>,
    /// Default `enforce`.
    pub mode: Field<Mode>,
    pub breaker: Field<RawBreaker>,
    pub retry: Field<RawRetry>,
    /// Per-key replacements of breaker, retry and mode fields; the first match wins.
    pub overrides: Field<Vec<Obj<RawOverride>>>,
    /// The eBPF sidecar to poll for kernel reset signals (`null`: none).
    pub reset_signals: Field<Option<Obj<RawResetSignals>>>,
}

/// `breaker`: the sliding window and the trip rules.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields, default, expecting = "an object")]
pub struct RawBreaker {
    /// 1s-1h (default 60s); window / buckets must be at least 100ms.
    pub window: Field<Dur>,
    /// 1-60 (default 12).
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 60)))]
    pub buckets: Field<Int>,
    /// At least 1 (default 20).
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 4294967295u32)))]
    pub min_requests: Field<Int>,
    /// In (0, 1] (default 0.3).
    #[cfg_attr(feature = "schema", schemars(extend("exclusiveMinimum" = 0, "maximum" = 1)))]
    pub error_rate_threshold: Field<Number>,
    /// Up to 10m (default 800ms); `null` turns the latency trip off.
    pub latency_p95_threshold: Field<Option<Dur>>,
    /// At least 100ms and at most max_sleep_window (default 30s).
    pub sleep_window: Field<Dur>,
    /// At most 1h (default 5m).
    pub max_sleep_window: Field<Dur>,
    /// 1-1000 (default 3).
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 1000)))]
    pub half_open_max_probes: Field<Int>,
    /// 1-1000 (default 3).
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 1000)))]
    pub half_open_successes_to_close: Field<Int>,
    /// Failed attempts in a row that trip at once: 0 (off, the default) or 1-1000.
    #[cfg_attr(feature = "schema", schemars(range(min = 0, max = 1000)))]
    pub consecutive_failures: Field<Int>,
    /// What an open circuit does with new requests: `all` (default) or `adaptive`.
    pub shedding: Field<Shedding>,
    /// Adaptive shedding's target success rate as clients see it, in (0, 1] (default 0.5).
    #[cfg_attr(feature = "schema", schemars(extend("exclusiveMinimum" = 0, "maximum" = 1)))]
    pub shedding_success_rate: Field<Number>,
    pub failure: Field<RawFailure>,
}

/// `breaker.failure`: what counts as a failed request.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields, default, expecting = "an object")]
pub struct RawFailure {
    /// Default `["5xx"]`.
    pub http_statuses: Field<Vec<HttpStatusMatch>>,
    /// Default `["UNAVAILABLE", "DEADLINE_EXCEEDED", "INTERNAL"]`.
    pub grpc_statuses: Field<Vec<GrpcCode>>,
    /// Upstream connect failures and resets (Envoy's UF, UR, UC, UPE flags) are failures (default true).
    pub upstream_resets: Field<bool>,
}

/// `retry`: the retry headers the filter gives Envoy's router.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields, default, expecting = "an object")]
pub struct RawRetry {
    /// Remove client-sent retry headers (default true).
    pub strip_downstream_headers: Field<bool>,
    pub budget: Field<RawBudget>,
    /// Ordered, first match wins; replaces the default list as a whole.
    pub policies: Field<Vec<Obj<RawPolicy>>>,
}

/// `retry.budget`.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields, default, expecting = "an object")]
pub struct RawBudget {
    /// In [0, 1] (default 0.2).
    #[cfg_attr(feature = "schema", schemars(range(min = 0, max = 1)))]
    pub ratio: Field<Number>,
    /// At least 0 (default 10).
    #[cfg_attr(feature = "schema", schemars(range(min = 0)))]
    pub min_retries_per_second: Field<Number>,
}

/// `retry.policies[]`.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields, default, expecting = "an object")]
pub struct RawPolicy {
    /// Required, unique, not empty.
    #[cfg_attr(feature = "schema", schemars(required, length(min = 1)))]
    pub name: Field<String>,
    /// Empty matches everything.
    #[serde(rename = "match")]
    pub matcher: Field<RawPolicyMatch>,
    /// Envoy `x-envoy-retry-on` conditions (case-insensitive).
    pub retry_on: Field<Vec<String>>,
    /// Envoy `x-envoy-retry-grpc-on` conditions (case-insensitive).
    pub retry_grpc_on: Field<Vec<String>>,
    /// 0-10 (default 1).
    #[cfg_attr(feature = "schema", schemars(range(min = 0, max = 10)))]
    pub max_retries: Field<Int>,
    /// Greater than 0; `null`: none.
    pub per_try_timeout: Field<Option<Dur>>,
    pub retriable_status_codes: Field<Vec<StatusCode>>,
}

/// `retry.policies[].match`.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields, default, expecting = "an object")]
pub struct RawPolicyMatch {
    /// Content-type `application/grpc*` (true) or not (false); `null`: either.
    pub grpc: Field<Option<bool>>,
    /// HTTP method tokens, case-insensitive.
    pub methods: Field<Vec<String>>,
    /// Starts with "/".
    #[cfg_attr(feature = "schema", schemars(regex(pattern = "^/")))]
    pub path_prefix: Field<String>,
    pub headers: Field<Headers>,
}

/// `overrides[]`.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields, default, expecting = "an object")]
pub struct RawOverride {
    /// Exactly one of cluster, route, authority.
    #[serde(rename = "match")]
    #[cfg_attr(feature = "schema", schemars(required))]
    pub matcher: Field<RawOverrideMatch>,
    pub breaker: Field<RawBreaker>,
    pub retry: Field<RawRetry>,
    pub mode: Field<Mode>,
}

/// `overrides[].match`: compared after key sanitization.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[cfg_attr(feature = "schema", schemars(extend("minProperties" = 1, "maxProperties" = 1)))]
#[serde(deny_unknown_fields, default, expecting = "an object")]
pub struct RawOverrideMatch {
    #[cfg_attr(feature = "schema", schemars(length(min = 1)))]
    pub cluster: Field<String>,
    #[cfg_attr(feature = "schema", schemars(length(min = 1)))]
    pub route: Field<String>,
    #[cfg_attr(feature = "schema", schemars(length(min = 1)))]
    pub authority: Field<String>,
}

/// `reset_signals`.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields, default, expecting = "an object")]
pub struct RawResetSignals {
    /// The Envoy cluster of the sidecar (default `meshbreaker_sidecar`).
    #[cfg_attr(feature = "schema", schemars(length(min = 1)))]
    pub cluster: Field<String>,
    /// Starts with "/" (default `/v1/resets`).
    #[cfg_attr(feature = "schema", schemars(regex(pattern = "^/")))]
    pub path: Field<String>,
    /// 100ms-60s (default 1s).
    pub poll_interval: Field<Dur>,
    /// Greater than 0 (default 5).
    #[cfg_attr(feature = "schema", schemars(extend("exclusiveMinimum" = 0)))]
    pub max_resets_per_second: Field<Number>,
}
