//! `cargo xtask oci` (see SPEC, Commands).

use crate::util::Result;

pub fn oci(_args: &[String]) -> Result {
    Err("not implemented yet".into())
}
