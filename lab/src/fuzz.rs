//! `cargo xtask fuzz [--minutes N | --seconds N] [--target NAME]... [--ci]`: the cargo-fuzz
//! targets in `fuzz/`, each for the given time, then `docs/RELIABILITY.md` (its fuzzing section).
//!
//! Why a command and not a bare `cargo fuzz run`: the targets need nightly and cargo-fuzz (both
//! installed here when missing), a scratch corpus outside the committed seeds (libFuzzer writes new
//! inputs into its first corpus directory, and `fuzz/corpus/` must stay small and meaningful), the
//! dictionaries in `fuzz/dicts/`, and a verdict that distinguishes a new crash from a known one.
//!
//! Known open findings live in `fuzz/findings/<target>/`: an input `NAME` and `NAME.expect`, lines
//! that must all appear in its failure output (the panic message, and a backtrace frame naming
//! the function, so that another overflow elsewhere does not pass for this one). They work like a strict expected failure:
//! - every finding is replayed first and must still fail with its message — once the bug is
//!   fixed the run fails too, saying to move the input into `fuzz/corpus/<target>/` (where it
//!   becomes a regression seed) and to delete the `.expect` file;
//! - the fuzzer runs with `-fork=1 -ignore_crashes=1`, so a known bug found in the first second
//!   does not end the target's run; every crash it writes is replayed, and one whose message
//!   matches no `.expect` of that target fails the run.
//!
//! `--ci` (what `cargo xtask test` runs): 30 s per target, report printed, `docs/` untouched.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{output, root, step, Result};

/// What one target did in this run.
#[derive(Debug, Clone, Default)]
pub struct TargetRun {
    pub name: String,
    /// The time asked for, and the time it took.
    pub requested: u64,
    pub seconds: u64,
    pub execs: u64,
    pub exec_per_s: u64,
    /// Coverage (libFuzzer `cov:` edges) and corpus size at the end.
    pub cov: u64,
    pub corpus: u64,
    pub seeds: usize,
    /// Known findings replayed (all still failing as expected), by file name.
    pub known: Vec<String>,
    /// Crashes this run wrote that match a known finding.
    pub crashes_known: usize,
    /// Crashes that match none: message and input.
    pub new_findings: Vec<String>,
}

fn nightly_cargo() -> Command {
    let mut c = Command::new("cargo");
    c.arg("+nightly");
    c
}

fn fuzz_dir() -> PathBuf {
    root().join("fuzz")
}

fn work_dir() -> PathBuf {
    root().join("target").join("fuzz")
}

fn targets() -> Result<Vec<String>> {
    let out = output(
        nightly_cargo()
            .args(["fuzz", "list"])
            .current_dir(fuzz_dir()),
    )
    .ok_or("cargo +nightly fuzz list failed")?;
    Ok(out
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect())
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.retain(|p| p.is_file());
    v.sort();
    v
}

/// Known findings of `target`: (input, lines its failure output must all contain).
fn known_findings(target: &str) -> Result<Vec<(PathBuf, Vec<String>)>> {
    let dir = fuzz_dir().join("findings").join(target);
    let mut v = Vec::new();
    for f in files_in(&dir) {
        if f.extension().is_some_and(|e| e == "expect") {
            continue;
        }
        let expect = f.with_extension("expect");
        let msg = fs::read_to_string(&expect).map_err(|e| {
            format!(
                "{}: every finding needs a .expect file: {e}",
                expect.display()
            )
        })?;
        let lines: Vec<String> = msg
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        if lines.is_empty() {
            return Err(format!("{} is empty", expect.display()));
        }
        v.push((f, lines));
    }
    Ok(v)
}

fn matches(stderr: &str, expect: &[String]) -> bool {
    expect.iter().all(|l| stderr.contains(l.as_str()))
}

fn binary(target: &str) -> PathBuf {
    work_dir()
        .join("build")
        .join("x86_64-unknown-linux-gnu")
        .join("release")
        .join(target)
}

/// Runs the built target on one input; `Some(stderr)` if it failed.
fn replay(target: &str, input: &Path) -> Result<Option<String>> {
    let out = Command::new(binary(target))
        .arg(input)
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", binary(target).display()))?;
    Ok((!out.status.success()).then(|| String::from_utf8_lossy(&out.stderr).into_owned()))
}

/// The panic message (or sanitizer summary) of a failing replay, for the report.
fn failure_message(stderr: &str) -> String {
    let mut lines = stderr.lines();
    while let Some(l) = lines.next() {
        if l.contains("panicked at") {
            return lines.next().unwrap_or(l).trim().to_string();
        }
    }
    stderr
        .lines()
        .find(|l| l.contains("SUMMARY:") || l.contains("ERROR:"))
        .unwrap_or("unknown failure")
        .trim()
        .to_string()
}

fn build(target: &str) -> Result {
    crate::util::run(
        nightly_cargo()
            .args(["fuzz", "build", "--target-dir"])
            .arg(work_dir().join("build"))
            .arg(target)
            .current_dir(fuzz_dir()),
    )
}

fn last_number_after(line: &str, key: &str) -> Option<u64> {
    let rest = &line[line.find(key)? + key.len()..];
    rest.trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

fn fuzz_target(target: &str, seconds: u64) -> Result<TargetRun> {
    step(&format!("fuzz {target} for {seconds}s"));
    build(target)?;
    let mut r = TargetRun {
        name: target.to_string(),
        requested: seconds,
        seconds,
        ..Default::default()
    };
    // Known findings first: each must still fail, with its own message.
    let known = known_findings(target)?;
    for (input, expect) in &known {
        match replay(target, input)? {
            Some(err) if matches(&err, expect) => {
                eprintln!(
                    "known open finding still fails as expected: {} ({})",
                    input.display(),
                    expect.join(" / ")
                );
                r.known.push(
                    input
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                );
            }
            Some(err) => {
                return Err(format!(
                    "{}: fails, but not with {expect:?}: {}",
                    input.display(),
                    failure_message(&err)
                ))
            }
            None => {
                return Err(format!(
                    "{} passes now: the finding is fixed. Move it into fuzz/corpus/{target}/ \
                     (a regression seed from now on) and delete its .expect file",
                    input.display()
                ))
            }
        }
    }
    let seeds_dir = fuzz_dir().join("corpus").join(target);
    r.seeds = files_in(&seeds_dir).len();
    let corpus = work_dir().join("corpus").join(target);
    let artifacts = work_dir().join("artifacts").join(target);
    let _ = fs::remove_dir_all(&artifacts);
    fs::create_dir_all(&corpus).map_err(|e| e.to_string())?;
    fs::create_dir_all(&artifacts).map_err(|e| e.to_string())?;
    let logs = work_dir().join("logs");
    fs::create_dir_all(&logs).map_err(|e| e.to_string())?;
    let log_path = logs.join(format!("{target}.log"));

    let mut cmd = Command::new(binary(target));
    cmd.arg(format!("-max_total_time={seconds}"))
        .arg("-fork=1")
        .arg("-ignore_crashes=1")
        .arg("-timeout=10")
        .arg("-rss_limit_mb=2048")
        .arg(format!("-artifact_prefix={}/", artifacts.display()));
    let dict = fuzz_dir().join("dicts").join(format!("{target}.dict"));
    if dict.is_file() {
        cmd.arg(format!("-dict={}", dict.display()));
    }
    cmd.arg(&corpus).arg(&seeds_dir);
    cmd.current_dir(work_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    eprintln!("+ {cmd:?}");
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", binary(target).display()))?;
    let mut log = Vec::new();
    let mut last_print = Instant::now();
    if let Some(pipe) = child.stderr.take() {
        for line in BufReader::new(pipe).lines().map_while(|l| l.ok()) {
            // Fork mode's status lines: `#N: cov: C ft: F corp: K exec/s: E ... time: Ts`.
            if line.starts_with('#') && line.contains("cov:") {
                if let Some(n) = line
                    .get(1..)
                    .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
                    .and_then(|s| s.parse().ok())
                {
                    r.execs = n;
                }
                r.cov = last_number_after(&line, "cov:").unwrap_or(r.cov);
                r.corpus = last_number_after(&line, "corp:").unwrap_or(r.corpus);
                if last_print.elapsed() >= Duration::from_secs(10) {
                    eprintln!(
                        "  {target}: {:>4.0}s  {} execs  cov {}  corpus {}",
                        started.elapsed().as_secs_f64(),
                        r.execs,
                        r.cov,
                        r.corpus
                    );
                    last_print = Instant::now();
                }
            }
            log.push(line);
        }
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    let elapsed = started.elapsed().as_secs().max(1);
    fs::write(&log_path, log.join("\n")).map_err(|e| e.to_string())?;
    r.seconds = elapsed;
    r.exec_per_s = r.execs / elapsed;

    // Every crash this run wrote must be a known finding.

    for a in files_in(&artifacts) {
        let Some(err) = replay(target, &a)? else {
            // A crash that does not reproduce alone (state across inputs) is still a crash.
            return Err(format!(
                "{target}: {} was written as a failure but passes on replay (flaky?); log: {}",
                a.display(),
                log_path.display()
            ));
        };
        if known.iter().any(|(_, e)| matches(&err, e)) {
            r.crashes_known += 1;
        } else {
            let msg = failure_message(&err);
            eprintln!(
                "{target}: NEW FINDING {}: {msg}\n  reproduce: cd fuzz && cargo +nightly fuzz run {target} {}\n  log: {}",
                a.display(),
                a.display(),
                log_path.display()
            );
            r.new_findings.push(format!("{msg} ({})", a.display()));
        }
    }
    if !status.success() && r.execs == 0 {
        return Err(format!(
            "{target}: libFuzzer exited with {status} before fuzzing; log: {}",
            log_path.display()
        ));
    }
    eprintln!(
        "{target}: {} execs in {}s ({} exec/s), cov {}, corpus {} (from {} seeds), {} known findings{}",
        r.execs,
        r.seconds,
        r.exec_per_s,
        r.cov,
        r.corpus,
        r.seeds,
        r.known.len(),
        if r.crashes_known > 0 {
            format!(", rediscovered {} times", r.crashes_known)
        } else {
            String::new()
        }
    );
    Ok(r)
}

/// What to fuzz, and for how long.
#[derive(Clone, Debug)]
pub struct Opts {
    /// Seconds per target.
    pub seconds: u64,
    /// Only these targets (all when empty).
    pub targets: Vec<String>,
    /// Report only: `docs/RELIABILITY.md` is left as it is.
    pub ci: bool,
}

/// Runs the chosen targets (the nightly toolchain and cargo-fuzz installed) and writes their
/// section of `docs/RELIABILITY.md` unless `ci`.
pub fn run(a: &Opts) -> Result {
    let commit = commit();
    let all = targets()?;
    let chosen: Vec<String> = if a.targets.is_empty() {
        all.clone()
    } else {
        for t in &a.targets {
            if !all.contains(t) {
                return Err(format!("no fuzz target {t} (have: {})", all.join(", ")));
            }
        }
        a.targets.clone()
    };
    if chosen.is_empty() {
        return Err("cargo fuzz list found no targets".into());
    }
    let mut runs = Vec::new();
    for t in &chosen {
        runs.push(fuzz_target(t, a.seconds)?);
    }
    let section = report(&runs, &commit);
    eprintln!("\n{section}");
    if !a.ci {
        write_section("fuzz", &section)?;
        eprintln!("wrote docs/RELIABILITY.md (fuzzing section)");
    }
    let new: Vec<String> = runs
        .iter()
        .flat_map(|r| {
            r.new_findings
                .iter()
                .map(move |f| format!("{}: {f}", r.name))
        })
        .collect();
    if new.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "new findings (add a reproducer and .expect under fuzz/findings/ once reported, or fix):\n  - {}",
            new.join("\n  - ")
        ))
    }
}

fn report(runs: &[TargetRun], commit: &str) -> String {
    let total: u64 = runs.iter().map(|r| r.execs).sum();
    let mut s = String::new();
    s.push_str("## Fuzzing\n\n");
    s.push_str(&format!(
        "`cargo xtask fuzz --minutes {}`: each cargo-fuzz target (libFuzzer, AddressSanitizer, \
         optimized with debug assertions and overflow checks on) for the time shown, from the seed \
         corpus in `fuzz/corpus/<target>/` plus the dictionaries in `fuzz/dicts/`. \
         {} inputs executed in all.\n\n",
        runs.first().map_or(0.0, |r| r.requested as f64 / 60.0),
        group(total)
    ));
    s.push_str("| target | what it feeds | seconds | inputs executed | exec/s | coverage (edges) | corpus (seeds) | known open findings, in `fuzz/README.md` (crashes this run that match them) |\n");
    s.push_str("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |\n");
    for r in runs {
        s.push_str(&format!(
            "| `{}` | {} | {} | {} | {} | {} | {} ({}) | {} |\n",
            r.name,
            describe(&r.name),
            r.seconds,
            group(r.execs),
            group(r.exec_per_s),
            r.cov,
            r.corpus,
            r.seeds,
            if r.known.is_empty() {
                "none".to_string()
            } else {
                format!(
                    "{} ({})",
                    r.known
                        .iter()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join("; "),
                    r.crashes_known
                )
            }
        ));
    }
    let new: Vec<String> = runs
        .iter()
        .flat_map(|r| {
            r.new_findings
                .iter()
                .map(move |f| format!("`{}`: {f}", r.name))
        })
        .collect();
    if new.is_empty() {
        s.push_str(
            "\nHeld: no crash, hang (10 s per input), out-of-memory (2 GiB) or failed property other \
             than the known open findings listed (each in `fuzz/findings/<target>/` with the message \
             it fails with, described in `fuzz/README.md`; replayed on every run, so a fix is \
             noticed).\n\n",
        );
    } else {
        s.push_str(&format!(
            "\n**New findings in this run** (not yet in `fuzz/findings/`):\n\n- {}\n\n",
            new.join("\n- ")
        ));
    }
    s.push_str(&environment(commit));
    s.push_str(
        "\nReproduce: `cargo xtask fuzz --minutes 2` (all targets), `cargo xtask fuzz --target \
         config --minutes 10` (one); a crash prints the command that replays it.\n",
    );
    s
}

fn describe(target: &str) -> &'static str {
    match target {
        "config" => "plugin configuration JSON → `Config::parse`; accepted configs checked against SPEC's ranges, errors one line",
        "shared_state" => "shared-data entries → slot state, window, reset totals decoders; re-encoding round trip, scratch reuse, window arithmetic",
        "sidecar_snapshot" => "`GET /v1/resets` bodies → `parse_snapshot` and `ResetTracker`",
        "peer_address" => "socket addresses and strings → `is_peer_address`: every address std prints passes, nothing else does",
        "request_path" => "two workers' engines on the fake host (Envoy's CAS rule): arbitrary request and response header bytes, client retry headers, trailers, properties, clock steps, abandoned requests",
        _ => "",
    }
}

/// 1234567 → "1,234,567".
pub fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn first_line(cmd: &mut Command) -> String {
    output(cmd)
        .and_then(|s| s.lines().next().map(|l| l.trim().to_string()))
        .unwrap_or_else(|| "unknown".into())
}

/// The commit being measured (`git describe`-like: short hash, `+dirty` with local changes):
/// take it when a run starts, since the tree may change while it runs.
pub fn commit() -> String {
    let hash = first_line(
        Command::new("git")
            .args(["rev-parse", "--short", "HEAD"])
            .current_dir(root()),
    );
    let dirty = output(
        Command::new("git")
            .args(["status", "--porcelain", "--untracked-files=no"])
            .current_dir(root()),
    )
    .is_some_and(|s| !s.trim().is_empty());
    if dirty {
        format!("{hash}+dirty")
    } else {
        hash
    }
}

/// Machine, versions, the commit measured and the date, for a report section.
pub fn environment(commit: &str) -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<u64>().ok())
        })
        .map_or(0.0, |kib| kib as f64 / (1024.0 * 1024.0));
    let mut s = String::new();
    s.push_str(&format!(
        "Machine: {cpu}, {cores} cores (shared with other jobs), {mem_gib:.0} GiB, {}. ",
        first_line(Command::new("uname").args(["-sr"]))
    ));
    s.push_str(&format!(
        "Versions: {}, {}, {}. ",
        first_line(Command::new("rustc").arg("-V")),
        first_line(Command::new("rustc").args(["+nightly", "-V"])),
        first_line(Command::new("cargo-fuzz").arg("--version"))
    ));
    s.push_str(&format!(
        "Commit {commit} (finished {}).\n",
        first_line(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))
    ));
    s
}

const DOC_HEAD: &str = "# Reliability\n\n\
Generated by `cargo xtask fuzz` and `cargo xtask soak` from their measurements; each command \
rewrites its own section and keeps the other. Do not edit by hand.\n\n\
What is tried: every parser and decoder that reads bytes written by someone else is fuzzed \
(plugin configuration, shared-data entries, the sidecar's body, Envoy address strings, the \
filter's request path), and the real Envoy with the real filter and sidecar is run for minutes at \
full load while the upstream flaps, the plugin configuration is reloaded and the sidecar is killed. \
Hostile clients, upstreams and sidecars are also in the integration tests (`tests/tests/hostile.rs`).\n";

/// Replaces (or adds) the `name` section of docs/RELIABILITY.md, keeping the others.
pub fn write_section(name: &str, body: &str) -> Result {
    let path = root().join("docs").join("RELIABILITY.md");
    let old = fs::read_to_string(&path).unwrap_or_default();
    let mut sections: BTreeMap<String, String> = BTreeMap::new();
    let mut rest = old.as_str();
    while let Some(start) = rest.find("<!-- section:") {
        let after = &rest[start + "<!-- section:".len()..];
        let Some(close) = after.find(" -->") else {
            break;
        };
        let sec = after[..close].to_string();
        let body_start = &after[close + " -->".len()..];
        let end_marker = format!("<!-- /section:{sec} -->");
        let Some(end) = body_start.find(&end_marker) else {
            break;
        };
        sections.insert(sec, body_start[..end].trim().to_string());
        rest = &body_start[end + end_marker.len()..];
    }
    sections.insert(name.to_string(), body.trim().to_string());
    let mut doc = String::from(DOC_HEAD);
    // Soak first (what users look for), then fuzzing.
    let mut names: Vec<&String> = sections.keys().collect();
    names.sort_by_key(|n| (n.as_str() != "soak", n.as_str() != "fuzz", n.to_string()));
    for n in names {
        doc.push_str(&format!(
            "\n<!-- section:{n} -->\n{}\n<!-- /section:{n} -->\n",
            sections[n]
        ));
    }
    fs::create_dir_all(root().join("docs")).map_err(|e| e.to_string())?;
    fs::write(&path, doc).map_err(|e| format!("{}: {e}", path.display()))
}
