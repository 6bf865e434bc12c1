//! [`ConfigError`]: the field path and the reason, the one shape every configuration error has.
//!
//! Why one shape: the filter logs it as one line (`meshbreaker: config error at
//! breaker.error_rate_threshold: must be in (0, 1], got 1.5`) and the CLI prints it per error,
//! so a user finds the field without reading the code. Errors come from two places: serde (wrong
//! types, unknown or repeated fields, JSON syntax), whose path `serde_path_to_error` tracks, and
//! [`super::validate`] (ranges and cross-field rules), which carries its own paths.

use serde_json::error::Category;

/// A configuration error: the field path (`breaker.error_rate_threshold`, `overrides[0].breaker.window`,
/// `retry.policies[1].max_retries`; `""` for the document itself) and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub reason: String,
}

impl std::fmt::Display for ConfigError {
    /// `config error at breaker.error_rate_threshold: must be in (0, 1], got 1.5`
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            write!(f, "config error: {}", self.reason)
        } else {
            write!(f, "config error at {}: {}", self.path, self.reason)
        }
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    pub(crate) fn new(path: &str, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            path: path.to_string(),
            reason: reason.into(),
        }
    }

    /// A JSON syntax error (or trailing characters): a document error, with serde_json's line
    /// and column kept in the reason, since there is no field to name.
    pub(crate) fn syntax(e: &serde_json::Error) -> ConfigError {
        ConfigError::new("", format!("invalid JSON: {e}"))
    }

    /// A serde error with its path. serde_json's ` at line L column C` suffix is dropped for data
    /// errors (the path says where); an unknown or repeated field is reported by serde at the
    /// object that holds it, so its name is appended to the path.
    pub(crate) fn from_serde(e: serde_path_to_error::Error<serde_json::Error>) -> ConfigError {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.classify() != Category::Data {
            return ConfigError::syntax(&inner);
        }
        let full = inner.to_string();
        let suffix = format!(" at line {} column {}", inner.line(), inner.column());
        let reason = full.strip_suffix(suffix.as_str()).unwrap_or(&full);
        let mut path = if path == "." { String::new() } else { path };
        let field = reason
            .strip_prefix("unknown field `")
            .or_else(|| reason.strip_prefix("duplicate field `"))
            .and_then(|rest| rest.split_once('`'))
            .map(|(name, _)| name);
        let last = path.rsplit(['.', ']']).next().unwrap_or_default();
        if let Some(name) = field.filter(|name| *name != last) {
            path = child(&path, name);
        }
        ConfigError::new(&path, reason)
    }
}

/// `parent.key`, or `key` at the document root.
pub(crate) fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// `path[i]`.
pub(crate) fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}
