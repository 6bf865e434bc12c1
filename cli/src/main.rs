//! `meshbreaker`: check, schema, status, replay (SPEC "Commands").

use std::io::{IsTerminal, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use meshbreaker_cli::{check_file, load_config, replay, report, status, svg};

#[derive(Parser)]
#[command(
    name = "meshbreaker",
    version,
    about = "meshbreaker's command line: check configurations, print the schema, watch a running Envoy, replay access logs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validates the plugin configuration(s) in CONFIG: a JSON document, an Envoy bootstrap
    /// (the meshbreaker wasm filter's `configuration`), an Istio WasmPlugin (`pluginConfig`) or
    /// TrafficExtension (`wasm.pluginConfig`), or an Envoy Gateway EnvoyExtensionPolicy
    /// (`wasm[].config`, `dynamicModule[].config`).
    /// Exit 0 when all are valid, 1 when one is not (field path and reason printed), 2 when
    /// the file cannot be read or holds no meshbreaker configuration.
    Check {
        #[arg(required = true)]
        config: Vec<PathBuf>,
    },
    /// Prints the JSON Schema of the plugin configuration.
    Schema,
    /// Shows every key of a running Envoy: state, error rate, P95, decisions, transitions.
    Status {
        /// Envoy's admin address.
        #[arg(long, default_value = "http://127.0.0.1:9901")]
        admin: String,
        /// Redraw every --interval seconds until interrupted.
        #[arg(long)]
        watch: bool,
        #[arg(long, default_value_t = 2.0)]
        interval: f64,
    },
    /// Replays Envoy JSON access logs (docs/replay.md) through the breaker of CONFIG on the log's
    /// own clock: when each key would have opened and closed, and what it would have spared or
    /// cost.
    Replay {
        #[arg(long)]
        config: PathBuf,
        /// A second configuration, replayed in the same pass, side by side.
        #[arg(long)]
        compare: Option<PathBuf>,
        /// Writes a timeline per key (SVG).
        #[arg(long)]
        svg: Option<PathBuf>,
        /// Access log files (`-` for standard input).
        #[arg(required = true)]
        log: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Check { config } => check(&config),
        Command::Schema => {
            let text = match serde_json::to_string_pretty(&policy_core::config::schema()) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("meshbreaker: {e}");
                    return ExitCode::from(2);
                }
            };
            // A closed pipe (`| head`) is not an error worth a message.
            let _ = writeln!(std::io::stdout(), "{text}");
            ExitCode::SUCCESS
        }
        Command::Status {
            admin,
            watch,
            interval,
        } => loop {
            let text = match status::fetch(&admin) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("meshbreaker: {e}");
                    if !watch {
                        return ExitCode::from(2);
                    }
                    String::new()
                }
            };
            let table = status::table(&status::rows(&text));
            if watch {
                // Clear the screen and home the cursor, then redraw.
                print!("\x1b[2J\x1b[H{admin}  (every {interval}s, Ctrl-C to stop)\n\n{table}");
                std::thread::sleep(Duration::from_secs_f64(interval.max(0.2)));
            } else {
                print!("{table}");
                return ExitCode::SUCCESS;
            }
        },
        Command::Replay {
            config,
            compare,
            svg,
            log,
        } => match run_replay(&config, compare.as_deref(), svg.as_deref(), &log) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("meshbreaker: {e}");
                ExitCode::from(2)
            }
        },
    }
}

fn check(files: &[PathBuf]) -> ExitCode {
    let mut code = ExitCode::SUCCESS;
    let mut failed = false;
    for f in files {
        match check_file(f) {
            Ok(results) => {
                for (location, result) in results {
                    match result {
                        Ok(_) => println!("{}: {location}: ok", f.display()),
                        Err(errors) => {
                            for e in errors {
                                println!("{}: {location}: {e}", f.display());
                            }
                            failed = true;
                        }
                    }
                }
            }
            Err(e) => {
                eprintln!("meshbreaker: {e}");
                code = ExitCode::from(2);
            }
        }
    }
    if failed {
        ExitCode::from(1)
    } else {
        code
    }
}

fn run_replay(
    config: &std::path::Path,
    compare: Option<&std::path::Path>,
    svg_path: Option<&std::path::Path>,
    logs: &[PathBuf],
) -> Result<(), String> {
    let mut names = vec![config.display().to_string()];
    let mut replays = vec![replay::Replay::new(load_config(config)?)];
    if let Some(c) = compare {
        names.push(c.display().to_string());
        replays.push(replay::Replay::new(load_config(c)?));
    }
    let total: u64 = logs
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok().map(|m| m.len()))
        .sum();
    let bar = if std::io::stderr().is_terminal() {
        let b = indicatif::ProgressBar::new(total);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        ) {
            b.set_style(style);
        }
        Some(b)
    } else {
        None
    };
    let mut done = 0u64;
    for path in logs {
        let reader: Box<dyn std::io::Read> = if path.as_os_str() == "-" {
            Box::new(std::io::stdin().lock())
        } else {
            Box::new(std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?)
        };
        let before = done;
        meshbreaker_cli::replay_stream(reader, &mut replays, |read| {
            if let Some(b) = &bar {
                b.set_position(before + read);
            }
            done = before + read;
        })
        .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let runs: Vec<report::Run> = replays
        .into_iter()
        .zip(names)
        .map(|(r, name)| {
            let (totals, keys) = r.finish();
            report::Run { name, totals, keys }
        })
        .collect();
    for r in &runs {
        print!("{}", report::transitions(r));
    }
    print!("{}", report::summary(&runs));
    if let Some(p) = svg_path {
        svg::draw(p, &runs)?;
        eprintln!("meshbreaker: timeline written to {}", p.display());
    }
    Ok(())
}
