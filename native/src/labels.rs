//! The `key` label budget of the module's metrics (SPEC "key_by"): at most `max_keys` distinct
//! `key` labels per Envoy process; later keys report as `_other`.
//!
//! Why process-wide and not per configuration: Envoy never deletes a module metric, so a label
//! once created costs memory until Envoy exits. A reload makes a new [`crate::filter::FilterConfig`],
//! but the labels the old one created still exist; the set lives in a static, which survives
//! reloads because the module is loaded with `do_not_close` (`envoy-config/README.md`).
//!
//! The rule itself is policy-core's ([`keys::may_create_label`]). A known label costs one read
//! lock and no allocation; only the first request of a new key (at most `max_keys` times per
//! process) takes the write lock and stores the key.

use std::collections::HashSet;
use std::sync::{OnceLock, RwLock};

use policy_core::keys::{self, OTHER_LABEL};

/// The labels created so far in this process.
#[derive(Debug, Default)]
pub struct Labels {
    known: RwLock<HashSet<Box<str>>>,
}

impl Labels {
    /// The label to report `key` under: `key` itself when it has a label or may get one, else
    /// [`OTHER_LABEL`]. A poisoned lock (a panic while it was held) reports `_other`.
    pub fn label<'k>(&self, key: &'k str, max_keys: u32) -> &'k str {
        if let Ok(known) = self.known.read() {
            if known.contains(key) {
                return key;
            }
            if !keys::may_create_label(count(&known), max_keys) {
                return OTHER_LABEL;
            }
        }
        let Ok(mut known) = self.known.write() else {
            return OTHER_LABEL;
        };
        if known.contains(key) {
            return key;
        }
        if !keys::may_create_label(count(&known), max_keys) {
            return OTHER_LABEL;
        }
        known.insert(key.into());
        key
    }

    /// How many labels exist.
    pub fn len(&self) -> usize {
        self.known.read().map_or(0, |k| k.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn count(known: &HashSet<Box<str>>) -> u32 {
    u32::try_from(known.len()).unwrap_or(u32::MAX)
}

/// The process's labels.
pub fn process() -> &'static Labels {
    static LABELS: OnceLock<Labels> = OnceLock::new();
    LABELS.get_or_init(Labels::default)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_is_the_key_while_the_budget_lasts() {
        let l = Labels::default();
        assert_eq!(l.label("a", 2), "a");
        assert_eq!(l.label("b", 2), "b");
        assert_eq!(l.label("a", 2), "a");
        assert_eq!(l.len(), 2);
    }

    #[test]
    fn label_is_other_once_the_budget_is_spent() {
        let l = Labels::default();
        assert_eq!(l.label("a", 1), "a");
        assert_eq!(l.label("b", 1), OTHER_LABEL);
        assert_eq!(l.label("a", 1), "a", "a key that has a label keeps it");
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn label_keeps_existing_labels_when_max_keys_shrinks() {
        let l = Labels::default();
        l.label("a", 3);
        l.label("b", 3);
        assert_eq!(l.label("b", 1), "b");
        assert_eq!(l.label("c", 1), OTHER_LABEL);
    }
}
