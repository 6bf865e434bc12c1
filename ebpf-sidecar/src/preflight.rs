//! Checks, before touching the bpf() syscall, the three things the sidecar needs
//! from its host, so an operator gets one line naming what is missing instead
//! of an errno from deep inside the loader.

use std::fs;
use std::path::Path;

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Where tracefs is looked for (aya looks at the same two places).
const TRACEFS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];
const BTF: &str = "/sys/kernel/btf/vmlinux";

/// `Err` carries one line saying what is missing and how to provide it.
pub fn check() -> Result<(), String> {
    check_capabilities(&fs::read_to_string("/proc/self/status").unwrap_or_default())?;
    check_tracefs()?;
    if !Path::new(BTF).is_file() {
        return Err(format!(
            "no BTF at {BTF} (the kernel needs CONFIG_DEBUG_INFO_BTF=y; in a container mount it read-only)"
        ));
    }
    Ok(())
}

fn check_capabilities(proc_status: &str) -> Result<(), String> {
    let effective = proc_status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| effective & (1u64 << cap) != 0;
    let admin = has(CAP_SYS_ADMIN);
    let mut missing = Vec::new();
    if !(has(CAP_BPF) || admin) {
        missing.push("CAP_BPF");
    }
    if !(has(CAP_PERFMON) || admin) {
        missing.push("CAP_PERFMON");
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "not root and missing {}: run as root or grant CAP_BPF and CAP_PERFMON",
            missing.join(" and ")
        ))
    }
}

fn check_tracefs() -> Result<(), String> {
    if let Some(denied) = TRACEFS
        .iter()
        .map(Path::new)
        .find(|p| fs::read_dir(p).is_err_and(|e| e.kind() == std::io::ErrorKind::PermissionDenied))
    {
        return Err(format!(
            "tracefs at {} is not readable by this user (run as uid 0 with CAP_BPF and CAP_PERFMON)",
            denied.display()
        ));
    }
    let Some(root) = TRACEFS
        .iter()
        .map(Path::new)
        .find(|p| p.join("events").is_dir())
    else {
        return Err(
            "no tracefs mounted at /sys/kernel/tracing (mount -t tracefs tracefs /sys/kernel/tracing, \
             or mount the host's read-only into the container)"
                .to_string(),
        );
    };
    for (_, category, name) in crate::abi::TRACEPOINTS {
        if !root
            .join("events")
            .join(category)
            .join(name)
            .join("id")
            .is_file()
        {
            return Err(format!(
                "the kernel has no tracepoint {category}:{name} (no {}/events/{category}/{name}/id)",
                root.display()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_name_what_is_missing() {
        let none = "Name:\tx\nCapEff:\t0000000000000000\n";
        assert_eq!(
            check_capabilities(none).unwrap_err(),
            "not root and missing CAP_BPF and CAP_PERFMON: run as root or grant CAP_BPF and CAP_PERFMON"
        );
        let bpf_only = format!("CapEff:\t{:016x}\n", 1u64 << CAP_BPF);
        assert!(check_capabilities(&bpf_only)
            .unwrap_err()
            .contains("missing CAP_PERFMON:"));
        let both = format!(
            "CapEff:\t{:016x}\n",
            (1u64 << CAP_BPF) | (1u64 << CAP_PERFMON)
        );
        assert_eq!(check_capabilities(&both), Ok(()));
        let admin = format!("CapEff:\t{:016x}\n", 1u64 << CAP_SYS_ADMIN);
        assert_eq!(check_capabilities(&admin), Ok(()));
        assert!(check_capabilities("").is_err());
    }
}
