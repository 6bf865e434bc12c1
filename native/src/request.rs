//! Pure helpers over what a request carries: the key's raw parts as Envoy hands them (bytes), the
//! key, the profile in force. No ABI here, so property tests can feed them any
//! bytes.
//!
//! Header values need not be UTF-8 (SPEC "Nothing a client or an upstream sends can crash the
//! filter"): bytes become text with [`text`], which borrows valid UTF-8 and replaces each invalid
//! sequence with U+FFFD (one allocation, only for such a value); key sanitization then turns that
//! into `_`. The per-thread [`Scratch`] buffers make the rest allocation-free once warm.

use std::borrow::Cow;

use policy_core::config::{Config, KeyBy};
use policy_core::keys::{self, MAX_KEY_LEN};

/// The raw parts a key can be built from; empty when Envoy has none.
#[derive(Clone, Copy, Debug, Default)]
pub struct RawParts<'a> {
    /// `xds.cluster_name`.
    pub cluster: &'a [u8],
    /// `xds.route_name`.
    pub route: &'a [u8],
    /// The `:authority` header.
    pub authority: &'a [u8],
}

/// Which raw parts the configuration makes the module read per request: the key's (overrides may
/// only match on the key's own dimensions; the configuration refuses others).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Needs {
    pub cluster: bool,
    pub route: bool,
    pub authority: bool,
}

impl Needs {
    pub fn of(cfg: &Config) -> Needs {
        Needs {
            cluster: matches!(cfg.key_by, KeyBy::Cluster | KeyBy::ClusterRoute),
            route: matches!(cfg.key_by, KeyBy::Route | KeyBy::ClusterRoute),
            authority: cfg.key_by == KeyBy::Authority,
        }
    }
}

/// Header or attribute bytes as text: borrowed when they are UTF-8, else with each invalid
/// sequence replaced by U+FFFD.
pub fn text(b: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(b)
}

/// Per-thread buffers of the request path.
#[derive(Debug, Default)]
pub struct Scratch {
    key: String,
    cluster: String,
    route: String,
    authority: String,
}

impl Scratch {
    /// Writes the sanitized key of `parts` (policy-core's [`keys::key_for`]) and returns it.
    pub fn key(&mut self, key_by: KeyBy, parts: &RawParts<'_>) -> &str {
        if self.key.capacity() < MAX_KEY_LEN {
            self.key.reserve(MAX_KEY_LEN);
        }
        keys::key_for(
            key_by,
            &text(parts.cluster),
            &text(parts.route),
            &text(parts.authority),
            &mut self.key,
        );
        &self.key
    }

    /// The key [`Scratch::key`] wrote last.
    pub fn last_key(&self) -> &str {
        &self.key
    }
}

/// The profile in force for a request with these parts: `0` the top level, `i + 1` override `i`
/// (policy-core's [`Config::effective`], on the sanitized parts).
pub fn profile_index(cfg: &Config, parts: &RawParts<'_>, scratch: &mut Scratch) -> usize {
    if cfg.overrides.is_empty() {
        return 0;
    }
    keys::sanitize_key_into(&text(parts.cluster), &mut scratch.cluster);
    keys::sanitize_key_into(&text(parts.route), &mut scratch.route);
    keys::sanitize_key_into(&text(parts.authority), &mut scratch.authority);
    let eff = cfg.effective(&scratch.cluster, &scratch.route, &scratch.authority);
    // `effective` answers with a reference into `cfg`: its position names the profile.
    cfg.overrides
        .iter()
        .position(|o| std::ptr::eq(eff.retry, &o.retry))
        .map_or(0, |i| i + 1)
}

pub use policy_core::wire::parse_u32;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cfg(json: &str) -> Config {
        Config::parse(json.as_bytes()).unwrap()
    }

    fn parts<'a>(cluster: &'a [u8], route: &'a [u8], authority: &'a [u8]) -> RawParts<'a> {
        RawParts {
            cluster,
            route,
            authority,
        }
    }

    #[test]
    fn needs_follow_key_by() {
        let n = Needs::of(&cfg(r#"{"key_by":"cluster_route"}"#));
        assert_eq!(
            n,
            Needs {
                cluster: true,
                route: true,
                authority: false
            }
        );
        assert_eq!(
            Needs::of(&cfg(r#"{"key_by":"authority"}"#)),
            Needs {
                cluster: false,
                route: false,
                authority: true
            }
        );
    }

    #[test]
    fn key_is_policy_core_key_for_the_parts() {
        let mut s = Scratch::default();
        let key = s.key(
            KeyBy::ClusterRoute,
            &parts(b"Outbound|8080||Reviews", b"", b"x"),
        );
        assert_eq!(key, "outbound|8080||reviews|_unknown");
    }

    #[test]
    fn key_of_non_utf8_authority_is_sanitized() {
        let mut s = Scratch::default();
        let key = s.key(KeyBy::Authority, &parts(b"", b"", b"h\xffst:80"));
        assert_eq!(key, "h_st:80");
    }

    #[test]
    fn profile_is_the_first_matching_override() {
        let c = cfg(
            r#"{"overrides":[{"match":{"cluster":"trusted"},"retry":{"strip_downstream_headers":false}}]}"#,
        );
        let mut s = Scratch::default();
        assert_eq!(profile_index(&c, &parts(b"Trusted", b"", b""), &mut s), 1);
        assert_eq!(profile_index(&c, &parts(b"other", b"", b""), &mut s), 0);
        assert_eq!(profile_index(&cfg("{}"), &parts(b"x", b"", b""), &mut s), 0);
    }

    fn key_by() -> impl Strategy<Value = KeyBy> {
        prop_oneof![
            Just(KeyBy::Cluster),
            Just(KeyBy::Route),
            Just(KeyBy::ClusterRoute),
            Just(KeyBy::Authority),
        ]
    }

    proptest! {
        /// Any bytes a client or Envoy hands over give a key that is safe in a stat tag: only
        /// `[a-z0-9._:|-]`, 1 to 128 bytes, the same for the same input.
        #[test]
        fn key_of_any_bytes_is_sanitized_and_bounded(
            kb in key_by(),
            cluster in proptest::collection::vec(any::<u8>(), 0..300),
            route in proptest::collection::vec(any::<u8>(), 0..300),
            authority in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let p = parts(&cluster, &route, &authority);
            let mut s = Scratch::default();
            let key = s.key(kb, &p).to_owned();
            prop_assert!(!key.is_empty() && key.len() <= MAX_KEY_LEN);
            prop_assert!(key.bytes().all(|c| matches!(c, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b':' | b'|' | b'-')));
            prop_assert_eq!(s.key(kb, &p), key.as_str());
        }

        /// For UTF-8 input the key is exactly policy-core's, so both shells report one key.
        #[test]
        fn key_of_utf8_parts_equals_policy_core(kb in key_by(), c in ".{0,40}", r in ".{0,40}", a in ".{0,40}") {
            let mut want = String::new();
            keys::key_for(kb, &c, &r, &a, &mut want);
            let mut s = Scratch::default();
            prop_assert_eq!(s.key(kb, &parts(c.as_bytes(), r.as_bytes(), a.as_bytes())), want.as_str());
        }

        /// Whatever the parts, the profile is one the configuration has.
        #[test]
        fn profile_of_any_bytes_is_a_profile(
            cluster in proptest::collection::vec(any::<u8>(), 0..64),
            route in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let c = cfg(r#"{"key_by":"cluster_route",
                            "overrides":[{"match":{"cluster":"a"},"retry":{"strip_downstream_headers":false}},
                                         {"match":{"route":"b"},"mode":"dry_run"}]}"#);
            let got = profile_index(&c, &parts(&cluster, &route, b""), &mut Scratch::default());
            prop_assert!(got <= 2);
        }
    }
}
