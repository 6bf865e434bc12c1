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
    /// Both parts are made safe for one log line here, whatever built them: the path and the
    /// reason can quote what the configuration said (serde echoes unknown variants and field
    /// names verbatim), and a `pluginConfig` string must not be able to forge Envoy log lines.
    pub(crate) fn new(path: &str, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            path: one_line(path),
            reason: one_line(&reason.into()),
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

/// The longest path or reason kept, in characters; a longer one is cut and ends in `…`. Long
/// enough for every message the rules write; what it cuts is a value a user pasted.
const MAX_PART_CHARS: usize = 300;

/// `text` with control characters escaped (`\n`, `\u{1b}`) and cut to [`MAX_PART_CHARS`].
fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_PART_CHARS + 8));
    for (n, c) in text.chars().enumerate() {
        if n == MAX_PART_CHARS {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_error_escapes_control_characters_in_path_and_reason() {
        let e = ConfigError::new("a\nb", "unknown variant `x\ny`\r\u{1b}[2J");
        assert_eq!(e.path, "a\\nb");
        assert_eq!(e.reason, "unknown variant `x\\ny`\\r\\u{1b}[2J");
        assert!(!e.to_string().contains(['\n', '\r']));
    }

    #[test]
    fn config_error_cuts_long_values() {
        let e = ConfigError::new("mode", "x".repeat(10_000));
        assert_eq!(e.reason.chars().count(), MAX_PART_CHARS + 1);
        assert!(e.reason.ends_with('…'));
    }

    #[test]
    fn unknown_variant_with_a_newline_cannot_forge_a_log_line() {
        // Regression (fuzz finding config/unknown_variant_echoes_newline): serde quotes the value raw.
        let e = crate::config::Config::parse(br#"{"mode":"a\nb"}"#).err();
        let line = e.map(|e| e.to_string()).unwrap_or_default();
        assert!(
            line.starts_with("config error at mode: unknown variant `a\\nb`"),
            "{line}"
        );
        assert!(!line.contains('\n'));
    }
}
