//! `rustng-ctl`: the operator's and CI's command line for a running RustNg, over its admin
//! API (docs/ADMIN.md). Human tables by default, `-o json` for scripts; a failure exits
//! non-zero with the server's message.

mod client;
mod table;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use base64::Engine;
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::{Value, json};

use client::AdminClient;
use table::Table;

#[derive(Parser)]
#[command(
    name = "rustng-ctl",
    version,
    about = "Drive a running RustNg through its admin API"
)]
struct Cli {
    /// The admin server's URL.
    #[arg(
        long,
        env = "RUSTNG_ADMIN",
        default_value = "http://127.0.0.1:9901",
        global = true
    )]
    admin: String,
    /// Bearer token (or JWT) for the API.
    #[arg(long, env = "RUSTNG_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// CA certificate (PEM) for an https:// admin URL.
    #[arg(long, env = "RUSTNG_CACERT", global = true)]
    cacert: Option<PathBuf>,
    /// Client certificate (PEM) for an admin port that requires mutual TLS.
    #[arg(long, env = "RUSTNG_CERT", global = true)]
    cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "RUSTNG_KEY", global = true)]
    key: Option<PathBuf>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Table, global = true)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Version running, uptime, workers, active plugin generations.
    Status,
    /// The config: show, check, apply, compare, history, roll back.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Plugins: push a module, list, show, roll back.
    #[command(subcommand)]
    Wasm(WasmCommand),
    /// Show the log filter, or set it (`info`, `warn,rustng_core=debug`).
    LogLevel {
        /// The new filter.
        level: Option<String>,
    },
    /// The newest audit entries (every mutation through the API).
    Audit {
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Start a graceful drain: stop accepting, finish in-flight requests, exit.
    Drain,
    /// Replace the running binary with the one now installed at its path: the new process
    /// takes the listening sockets over, this one drains and exits.
    Upgrade,
    /// Clusters, their endpoints (drained or not) and request counts.
    Clusters,
    /// Endpoints: drain one by hand (no new requests), or restore it.
    #[command(subcommand)]
    Endpoints(EndpointsCommand),
}

#[derive(Subcommand)]
enum EndpointsCommand {
    /// Stop sending new requests to an endpoint (`--undo` sends them again).
    Drain {
        cluster: String,
        /// `address:port`, as in the cluster's config.
        endpoint: String,
        #[arg(long)]
        undo: bool,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the running config (YAML).
    Get,
    /// Check a config file without applying it.
    Validate { file: PathBuf },
    /// Apply a config file as the next version.
    Apply { file: PathBuf },
    /// Show what a config file would change against the running one.
    Diff { file: PathBuf },
    /// The kept versions.
    History,
    /// Apply a kept version's document again, as a new version.
    Rollback { version: u64 },
}

#[derive(Subcommand)]
enum WasmCommand {
    /// Push a new module for a configured plugin (compiled and canaried before it serves).
    Push {
        /// The plugin's name in the config.
        name: String,
        /// The .wasm file.
        file: PathBuf,
        /// The plugin configuration from a file (JSON is sent as JSON, anything else as text).
        #[arg(long, conflicts_with = "config_json")]
        config: Option<PathBuf>,
        /// The plugin configuration as inline JSON.
        #[arg(long)]
        config_json: Option<String>,
        /// The plugin's root id.
        #[arg(long)]
        root_id: Option<String>,
    },
    /// Plugins and their active generation.
    List,
    /// One plugin's kept generations.
    Show { name: String },
    /// Put a plugin back on a kept generation.
    Rollback { name: String, generation: u64 },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("rustng-ctl: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rustng-ctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let tls = client::TlsFiles {
        ca: cli.cacert.clone(),
        cert: cli.cert.clone(),
        key: cli.key.clone(),
    };
    let client = AdminClient::new(&cli.admin, cli.token.clone(), &tls)?;
    let output = cli.output;
    match cli.command {
        Command::Status => {
            let status = client.get("/v1/status").await?;
            show(output, &status, || {
                let mut out = format!(
                    "version {}  pid {}  uptime {}s  workers {}  draining {}  build {}\n",
                    status["version"],
                    status["pid"],
                    status["uptime_seconds"],
                    status["workers"],
                    status["draining"],
                    status["build"].as_str().unwrap_or("-")
                );
                let mut table = Table::new(["PLUGIN", "GENERATION", "SHA256"]);
                for p in status["plugins"].as_array().into_iter().flatten() {
                    table.row([
                        text(&p["name"]),
                        text(&p["generation"]),
                        short(&p["sha256"]),
                    ]);
                }
                out.push_str(&table.render());
                out
            });
        }
        Command::Config(command) => return config(&client, output, command).await,
        Command::Wasm(command) => wasm(&client, output, command).await?,
        Command::LogLevel { level } => {
            let answer = match level {
                Some(level) => {
                    client
                        .put_json("/v1/log_level", &json!({ "level": level }))
                        .await?
                }
                None => client.get("/v1/log_level").await?,
            };
            show(output, &answer, || format!("{}\n", text(&answer["level"])));
        }
        Command::Audit { limit } => {
            let answer = client.get(&format!("/v1/audit?limit={limit}")).await?;
            show(output, &answer, || {
                let mut table =
                    Table::new(["TIME", "PRINCIPAL", "ACTION", "TARGET", "VERSION", "RESULT"]);
                for e in answer["entries"].as_array().into_iter().flatten() {
                    table.row([
                        text(&e["time"]),
                        text(&e["principal"]),
                        text(&e["action"]),
                        text(&e["target"]),
                        format!("{} -> {}", e["version_before"], e["version_after"]),
                        text(&e["result"]),
                    ]);
                }
                table.render()
            });
        }
        Command::Drain => {
            let answer = client.post_json("/v1/drain", &json!({})).await?;
            show(output, &answer, || "draining\n".to_owned());
        }
        Command::Upgrade => {
            let answer = client.post_json("/v1/upgrade", &json!({})).await?;
            show(output, &answer, || {
                format!(
                    "upgraded: pid {} -> {} (config version {}), handover {} ms\n",
                    answer["old_pid"], answer["new_pid"], answer["version"], answer["handover_ms"]
                )
            });
        }
        Command::Clusters => {
            let answer = client.get("/v1/clusters").await?;
            show(output, &answer, || {
                let mut table = Table::new([
                    "CLUSTER", "ENDPOINT", "WEIGHT", "STATE", "2XX", "5XX", "FAILURES",
                ]);
                for c in answer["clusters"].as_array().into_iter().flatten() {
                    for e in c["endpoints"].as_array().into_iter().flatten() {
                        // Drained by hand wins; else the health (`healthy` reads "active").
                        let state = if e["draining"].as_bool() == Some(true) {
                            "draining"
                        } else {
                            match e["health"].as_str() {
                                Some("failed_check") => "failed_check",
                                Some("ejected") => "ejected",
                                _ => "active",
                            }
                        };
                        table.row([
                            text(&c["name"]),
                            text(&e["address"]),
                            text(&e["weight"]),
                            state.to_owned(),
                            text(&c["requests_by_class"][1]),
                            text(&c["requests_by_class"][4]),
                            text(&c["failures"]),
                        ]);
                    }
                }
                table.render()
            });
        }
        Command::Endpoints(EndpointsCommand::Drain {
            cluster,
            endpoint,
            undo,
        }) => {
            let answer = client
                .post_json(
                    &format!("/v1/clusters/{cluster}/drain"),
                    &json!({ "endpoint": endpoint, "drain": !undo }),
                )
                .await?;
            show(output, &answer, || {
                let state = if undo { "active" } else { "draining" };
                format!("{cluster} {endpoint}: {state}\n")
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn config(
    client: &AdminClient,
    output: Output,
    command: ConfigCommand,
) -> anyhow::Result<ExitCode> {
    match command {
        ConfigCommand::Get => {
            let answer = client.get("/v1/config").await?;
            show(output, &answer, || {
                answer["yaml"].as_str().unwrap_or_default().to_owned()
            });
        }
        ConfigCommand::Validate { file } => {
            let answer = client
                .post_text("/v1/config/validate", read_text(&file)?)
                .await?;
            let valid = answer["valid"].as_bool().unwrap_or(false);
            show(output, &answer, || {
                if valid {
                    format!("{}: valid\n", file.display())
                } else {
                    errors_text(&answer)
                }
            });
            if !valid {
                return Ok(ExitCode::FAILURE);
            }
        }
        ConfigCommand::Apply { file } => {
            let answer = client.put_text("/v1/config", read_text(&file)?).await?;
            show(output, &answer, || applied_text(&answer));
        }
        ConfigCommand::Diff { file } => {
            let answer = client
                .post_text("/v1/config/diff", read_text(&file)?)
                .await?;
            show(output, &answer, || {
                if answer["changed"].as_bool() == Some(true) {
                    answer["diff"].as_str().unwrap_or_default().to_owned()
                } else {
                    "no changes\n".to_owned()
                }
            });
        }
        ConfigCommand::History => {
            let answer = client.get("/v1/config/history").await?;
            show(output, &answer, || {
                let mut table = Table::new(["VERSION", "APPLIED", "ORIGIN", ""]);
                for v in answer["versions"].as_array().into_iter().flatten() {
                    let running = if v["running"].as_bool() == Some(true) {
                        "running"
                    } else {
                        ""
                    };
                    table.row([
                        text(&v["version"]),
                        text(&v["applied_at"]),
                        text(&v["origin"]),
                        running.to_owned(),
                    ]);
                }
                table.render()
            });
        }
        ConfigCommand::Rollback { version } => {
            let answer = client
                .post_json("/v1/config/rollback", &json!({ "version": version }))
                .await?;
            show(output, &answer, || applied_text(&answer));
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn wasm(client: &AdminClient, output: Output, command: WasmCommand) -> anyhow::Result<()> {
    match command {
        WasmCommand::Push {
            name,
            file,
            config,
            config_json,
            root_id,
        } => {
            let module = std::fs::read(&file).with_context(|| format!("{}", file.display()))?;
            let mut body = json!({
                "module_base64": base64::engine::general_purpose::STANDARD.encode(module),
            });
            if let Some(path) = config {
                let text = read_text(&path)?;
                body["configuration"] =
                    serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text));
            }
            if let Some(inline) = config_json {
                body["configuration"] =
                    serde_json::from_str(&inline).context("--config-json is not JSON")?;
            }
            if let Some(root_id) = root_id {
                body["root_id"] = json!(root_id);
            }
            let answer = client
                .post_json(&format!("/v1/plugins/{name}/push"), &body)
                .await?;
            show(output, &answer, || {
                format!(
                    "plugin {name}: generation {} (sha256 {}), config version {}\n",
                    answer["generation"],
                    short(&answer["sha256"]),
                    answer["version"]
                )
            });
        }
        WasmCommand::List => {
            let answer = client.get("/v1/plugins").await?;
            show(output, &answer, || {
                let mut table = Table::new(["PLUGIN", "GENERATION", "KEPT"]);
                for p in answer["plugins"].as_array().into_iter().flatten() {
                    let kept = p["generations"].as_array().map_or(0, Vec::len);
                    table.row([text(&p["name"]), text(&p["generation"]), kept.to_string()]);
                }
                table.render()
            });
        }
        WasmCommand::Show { name } => {
            let answer = client.get(&format!("/v1/plugins/{name}")).await?;
            show(output, &answer, || {
                let mut table = Table::new(["GENERATION", "SHA256", ""]);
                for g in answer["generations"].as_array().into_iter().flatten() {
                    let active = if g["active"].as_bool() == Some(true) {
                        "active"
                    } else {
                        ""
                    };
                    table.row([
                        text(&g["generation"]),
                        text(&g["sha256"]),
                        active.to_owned(),
                    ]);
                }
                table.render()
            });
        }
        WasmCommand::Rollback { name, generation } => {
            let answer = client
                .post_json(
                    &format!("/v1/plugins/{name}/rollback"),
                    &json!({ "generation": generation }),
                )
                .await?;
            show(output, &answer, || applied_text(&answer));
        }
    }
    Ok(())
}

/// Prints `value` as JSON, or `human()` for tables.
fn show(output: Output, value: &Value, human: impl FnOnce() -> String) {
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        ),
        Output::Table => print!("{}", human()),
    }
}

fn applied_text(answer: &Value) -> String {
    let mut out = if answer["changed"].as_bool() == Some(false) {
        format!("unchanged (version {})\n", answer["version"])
    } else {
        format!("applied: version {}\n", answer["version"])
    };
    for field in answer["restart_required"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  {} changed: takes effect after a restart\n",
            text(field)
        ));
    }
    out
}

fn errors_text(answer: &Value) -> String {
    answer["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| format!("{}: {}\n", text(&e["path"]), text(&e["message"])))
        .collect()
}

fn read_text(path: &PathBuf) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))
}

/// A JSON value as table text (strings without quotes, null as `-`).
fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The first 12 hex digits of a digest.
fn short(value: &Value) -> String {
    let full = text(value);
    full.get(..12).unwrap_or(&full).to_owned()
}
