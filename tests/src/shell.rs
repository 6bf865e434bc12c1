//! Which meshbreaker a test runs: the proxy-wasm filter or the dynamic module. The behavioural
//! tests run once per shell ([`crate::per_shell`]), against the same bootstrap but for the
//! filter block, and read metrics under the names a shell gives them
//! ([`Shell::metric_name`]), so one assertion holds for both.

/// A meshbreaker shell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Shell {
    /// `meshbreaker.wasm` in Envoy's V8 (`envoy.filters.http.wasm`).
    Wasm,
    /// `libmeshbreaker.so` (`envoy.filters.http.dynamic_modules`).
    Native,
}

/// The Prometheus prefix Envoy gives a dynamic module's metrics: `envoy_` and the default
/// `metrics_namespace`.
pub const NATIVE_METRIC_PREFIX: &str = "envoy_dynamicmodulescustom_";

impl Shell {
    pub const ALL: [Shell; 2] = [Shell::Wasm, Shell::Native];

    /// The metric `name` (a `policy_core::metrics` name) as this shell's Envoy serves it in
    /// `/stats/prometheus`.
    pub fn metric_name(self, name: &str) -> String {
        match self {
            Shell::Wasm => name.to_string(),
            Shell::Native => format!("{NATIVE_METRIC_PREFIX}{name}"),
        }
    }

    /// The SPEC name of a served metric name, if it is one of this shell's.
    pub fn spec_name(self, served: &str) -> Option<&str> {
        match self {
            Shell::Wasm => Some(served),
            Shell::Native => served.strip_prefix(NATIVE_METRIC_PREFIX),
        }
    }

    /// An index, for per-shell statics.
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            Shell::Wasm => "wasm",
            Shell::Native => "native",
        }
    }
}

/// Defines each test once per shell: `per_shell! { fn name(shell) { body } }` makes module `name`
/// with tests `name::wasm` and `name::native`, each running `body` with its [`Shell`].
#[macro_export]
macro_rules! per_shell {
    ($($(#[$meta:meta])* fn $name:ident($shell:ident) $body:block)*) => {$(
        $(#[$meta])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            fn body($shell: $crate::Shell) $body

            #[test]
            fn wasm() {
                body($crate::Shell::Wasm)
            }

            #[test]
            fn native() {
                body($crate::Shell::Native)
            }
        }
    )*};
}
