//! One fuzz run: the targets listed, built, their known findings replayed, each fuzzed for its
//! time and every crash it wrote replayed against the known findings.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::docs::first_line;
use crate::util::{output, root, step, Result};

use super::results::TargetRun;

fn nightly_cargo() -> Command {
    let mut c = Command::new("cargo");
    c.arg("+nightly");
    c
}

fn fuzz_dir() -> PathBuf {
    root().join("fuzz")
}

pub(super) fn work_dir() -> PathBuf {
    root().join("target").join("fuzz")
}

pub(super) fn targets() -> Result<Vec<String>> {
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

pub(super) fn fuzz_target(target: &str, seconds: u64) -> Result<TargetRun> {
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

/// The versions a fuzz run's figures depend on.
pub(super) fn versions() -> Vec<String> {
    vec![
        first_line(Command::new("rustc").arg("-V")),
        first_line(Command::new("rustc").args(["+nightly", "-V"])),
        first_line(Command::new("cargo-fuzz").arg("--version")),
    ]
}
