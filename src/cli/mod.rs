//! The command line: raw arguments (clap) and the dispatch of each command.
mod analyse;
mod auth;
mod bench;
mod config;
mod demo;
mod plan;
mod serve;
mod status;
mod sync;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use rebuy::config::{Config, PortalConfig};
use rebuy::portal;
use rebuy::store::Store;
use rebuy::sync::{Progress, SyncOptions};
use rebuy_core::{Connector, EntityKind};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// rebuy: repeat sales for amoCRM and Bitrix24.
#[derive(Debug, Parser)]
#[command(name = "rebuy", version, about)]
pub struct Cli {
    /// Config file.
    #[arg(
        long,
        global = true,
        env = "REBUY_CONFIG",
        default_value = "rebuy.toml"
    )]
    pub config: PathBuf,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "REBUY_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Log output format.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check the config file and list every problem.
    Config {
        /// What to do with the config.
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Pull a portal (or all) into the local cache.
    Sync(SyncArgs),
    /// Authorise rebuy for an OAuth portal.
    Auth(AuthArgs),
    /// Per portal: cached counts, last sync, token expiry, re-authorisation needs.
    Status,
    /// One row per customer with every score (RFM, ABC, XYZ, cycle, models).
    Segments(SegmentsArgs),
    /// Business figures, the RFM grid, ABC x XYZ and warnings as terminal tables.
    Report(ReportArgs),
    /// Split the cached history, fit every model on the calibration part and score the holdout.
    Backtest(BacktestArgs),
    /// Print the planned CRM writes (playbooks, routing, funnel); writes nothing.
    Plan(PlanArgs),
    /// Plan, commit the actions to the outbox and send them to the CRM.
    Apply(ApplyArgs),
    /// Treated vs holdout per playbook rule and overall: purchase rate, revenue per customer,
    /// incremental revenue with a 95% interval.
    Results(ResultsArgs),
    /// List the CRM's pipelines, stages, users and fields and check the mapping and playbooks.
    Mapping(MappingArgs),
    /// Run the sidecar: webhooks, scheduled syncs, the outbox.
    Serve,
    /// The webhook inbox's dead-letter table: list it, or put events back to be processed.
    Inbox {
        /// What to do.
        #[command(subcommand)]
        action: InboxAction,
    },
    /// Hash a dashboard password (argon2id) for a `[server.ui]` user's password variable.
    /// Reads the password from the first line of standard input.
    HashPassword,
    /// Run the whole product against built-in emulators and print what it did.
    Demo(demo::DemoArgs),
    /// Run a CRM emulator.
    Emulate {
        /// Which CRM.
        #[command(subcommand)]
        crm: EmulateCrm,
    },
    /// Benchmarks that print their figures.
    Bench {
        /// Which benchmark.
        #[command(subcommand)]
        what: bench::BenchCommand,
    },
}

/// `rebuy config ...`
#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Validate the config and print every problem (file, key, reason).
    Check,
    /// Print the commented example config.
    Example,
}

/// `rebuy sync` arguments.
#[derive(Debug, Args)]
pub struct SyncArgs {
    /// Portal id; all portals when omitted.
    #[arg(long)]
    pub portal: Option<String>,
    /// List everything instead of the changes since the last sync.
    #[arg(long)]
    pub full: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// `rebuy segments` arguments.
#[derive(Debug, Args)]
pub struct SegmentsArgs {
    /// Portal id.
    #[arg(long)]
    pub portal: String,
    /// Analysis date (`2026-11-23`, end of day in the portal's zone) or RFC 3339 instant.
    #[arg(long)]
    pub as_of: Option<String>,
    /// Output format: table, csv or json.
    #[arg(long, default_value = "table")]
    pub format: rebuy::analytics::render::Format,
    /// Only this RFM segment (`at_risk`, "can't lose them", ...).
    #[arg(long)]
    pub segment: Option<String>,
    /// Write to this file instead of stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// `rebuy report` arguments.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Portal id.
    #[arg(long)]
    pub portal: String,
    /// Analysis date or instant.
    #[arg(long)]
    pub as_of: Option<String>,
}

/// Output format of `rebuy plan`, `results` and `backtest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// A terminal table.
    Table,
    /// JSON.
    Json,
}

/// `rebuy backtest` arguments.
#[derive(Debug, Args)]
pub struct BacktestArgs {
    /// Portal id.
    #[arg(long)]
    pub portal: String,
    /// Holdout length in days, ending at the analysis date (default: 273 days, 39 weeks, or
    /// half the history when it is shorter than 78 weeks).
    #[arg(long)]
    pub holdout_days: Option<u32>,
    /// End of the holdout: a date or an RFC 3339 instant; now when omitted.
    #[arg(long)]
    pub as_of: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = crate::cli::OutputFormat::Table)]
    pub format: crate::cli::OutputFormat,
}

/// `rebuy plan` arguments.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Portal id.
    #[arg(long)]
    pub portal: String,
    /// Plan instant: a date (`2026-11-23`, the start of that day in the portal's zone) or an
    /// RFC 3339 instant; now when omitted.
    #[arg(long)]
    pub as_of: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = crate::cli::OutputFormat::Table)]
    pub format: crate::cli::OutputFormat,
}

/// `rebuy results` arguments.
#[derive(Debug, Args)]
pub struct ResultsArgs {
    /// Portal id.
    #[arg(long)]
    pub portal: String,
    /// Touches of this period only: a month (`2026-11`), a quarter (`2026-Q4`), a year
    /// (`2026`) or `all` (default).
    #[arg(long)]
    pub period: Option<String>,
    /// Results instant: a date or an RFC 3339 instant; now when omitted. Windows not closed by
    /// then are counted as awaiting.
    #[arg(long)]
    pub as_of: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = crate::cli::OutputFormat::Table)]
    pub format: crate::cli::OutputFormat,
}

/// `rebuy apply` arguments.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// Portal id.
    #[arg(long)]
    pub portal: String,
    /// Plan instant (see `rebuy plan`).
    #[arg(long)]
    pub as_of: Option<String>,
}

/// `rebuy inbox ...`
#[derive(Debug, Subcommand)]
pub enum InboxAction {
    /// List the dead-letter events (sequence, CRM, received, attempts, last error).
    Dead {
        /// Portal id.
        #[arg(long)]
        portal: String,
    },
    /// Put dead-letter events back into the inbox (all, or the given sequences); the running
    /// server's worker, or the next `rebuy serve`, processes them.
    Replay {
        /// Portal id.
        #[arg(long)]
        portal: String,
        /// Sequences to put back (default: all).
        #[arg(long = "seq")]
        seqs: Vec<u64>,
    },
}

/// `rebuy mapping` arguments.
#[derive(Debug, Args)]
pub struct MappingArgs {
    /// Portal id.
    #[arg(long)]
    pub portal: String,
}

/// `rebuy auth` arguments.
#[derive(Debug, Args)]
pub struct AuthArgs {
    /// Portal id.
    #[arg(long)]
    pub portal: String,
    /// The authorization code, if you already have it (otherwise it is asked for).
    #[arg(long)]
    pub code: Option<String>,
    /// Print a signed link that starts the OAuth flow on the running `rebuy serve`
    /// (`/oauth/{portal}/start`) instead of authorising here; give it to whoever will consent.
    #[arg(long, conflicts_with = "code")]
    pub link: bool,
    /// How long the link from `--link` is valid, in hours (at most 168).
    #[arg(long, default_value_t = 24, requires = "link", value_parser = clap::value_parser!(u64).range(1..=168))]
    pub valid_hours: u64,
}

/// `rebuy emulate ...`
#[derive(Debug, Subcommand)]
pub enum EmulateCrm {
    /// The amoCRM emulator.
    Amocrm(EmulateArgs),
    /// The Bitrix24 emulator (`--rate` is the leaky bucket's drain per second).
    Bitrix24(EmulateArgs),
}

/// Emulator arguments.
#[derive(Debug, Args)]
pub struct EmulateArgs {
    /// Port on 127.0.0.1 (0 = any free port).
    #[arg(long, default_value_t = 8081)]
    pub port: u16,
    /// Data generator seed.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Contacts to generate.
    #[arg(long, default_value_t = 2000)]
    pub contacts: usize,
    /// Leads / deals to generate.
    #[arg(long, default_value_t = 6000)]
    pub leads: usize,
    /// The last day of the generated history (`YYYY-MM-DD`; the history is three years long
    /// and ends at 00:00 UTC of that day). Default: today, so the base looks alive; pin it for
    /// reproducible data.
    #[arg(long, value_parser = parse_history_end)]
    pub history_end: Option<jiff::civil::Date>,
    /// Requests per second allowed (0 = unlimited).
    #[arg(long)]
    pub rate: Option<u32>,
    /// Access token lifetime in seconds.
    #[arg(long)]
    pub token_ttl: Option<u64>,
    /// amoCRM only: the account's customers mode (`disabled`, `periodicity`, `segments`,
    /// `unavailable`); `periodicity` turns the customers entity and its statuses on.
    #[arg(long, value_parser = ["disabled", "periodicity", "segments", "unavailable"])]
    pub customers_mode: Option<String>,
    /// amoCRM only: a long-lived token (private integration) the emulator accepts as a
    /// bearer token besides the OAuth tokens it issues.
    #[arg(long)]
    pub long_lived_token: Option<String>,
    /// Bitrix24 only: milliseconds each REST call takes before its answer (each command of a
    /// `batch` counts), as a real portal's database time; 0 answers at once.
    #[arg(long, default_value_t = 0)]
    pub call_time_ms: u64,
    /// Injected faults on API calls: one share for every kind (`0.02`) or a list of
    /// `kind=share` with the kinds `5xx`, `429`, `drop` (connection dropped, a write not
    /// applied), `drop-after-write` (the write applied, then the connection dropped),
    /// `malformed` (truncated JSON), `slow`, plus `slow-ms=MS`; e.g.
    /// `--faults 5xx=0.05,drop-after-write=0.02,slow=0.1,slow-ms=3000`.
    #[arg(long, value_parser = parse_faults)]
    pub faults: Option<rebuy_emulator::faults::FaultConfig>,
    /// Seconds the emulator's clock runs ahead (or, negative, behind) this machine's, for the
    /// times of records and events it writes.
    #[arg(long, allow_negative_numbers = true, default_value_t = 0)]
    pub clock_offset: i64,
    /// API access the emulated user lacks, comma-separated: amoCRM path prefixes
    /// (`/api/v4/companies` answers 403) or Bitrix24 methods (`crm.company.list` answers
    /// `insufficient_scope`).
    #[arg(long, value_delimiter = ',')]
    pub deny: Vec<String>,
    /// amoCRM only: more than this many 429s within 60 s block the integration (403 on
    /// every call until `POST /_emulator/unblock`); 0 = never. Default 20.
    #[arg(long)]
    pub block_after: Option<u32>,
    /// Bitrix24 only: the leaky bucket's capacity (50 in the cloud; Enterprise 250).
    #[arg(long)]
    pub bucket_capacity: Option<u32>,
    /// Bitrix24 only: Enterprise plan limits, a bucket of 250 drained at 5 per second
    /// (`--bucket-capacity` and `--rate` override either).
    #[arg(long)]
    pub enterprise: bool,
    /// Bitrix24 only: seconds of operating time one method may use per window before it
    /// answers 429 `OPERATION_TIME_LIMIT` (480; 0 = unlimited).
    #[arg(long)]
    pub operating_limit: Option<f64>,
    /// Bitrix24 only: the operating-time window in seconds (600).
    #[arg(long)]
    pub operating_window: Option<f64>,
    /// Bitrix24 only: operating time each method call counts, in milliseconds (5); with a
    /// small `--operating-limit` it makes `OPERATION_TIME_LIMIT` reachable in a few calls.
    #[arg(long)]
    pub method_cost_ms: Option<u64>,
    /// Serve HTTPS with a self-signed certificate generated at start (real CRMs speak HTTPS
    /// only; Bitrix24 answers "Https required" to plain HTTP).
    #[arg(long)]
    pub tls: bool,
    /// Where `--tls` writes its certificate (PEM) for clients to trust. Default:
    /// `rebuy-emulator-{crm}-{port}.pem` in the temporary directory.
    #[arg(long, requires = "tls")]
    pub tls_cert: Option<std::path::PathBuf>,
}

/// Parses `--faults` (see [`rebuy_emulator::faults::FaultConfig`]'s `FromStr`).
fn parse_faults(s: &str) -> Result<rebuy_emulator::faults::FaultConfig, String> {
    s.parse()
}

/// Parses `--history-end`: a calendar date.
pub fn parse_history_end(s: &str) -> Result<jiff::civil::Date, String> {
    s.parse::<jiff::civil::Date>()
        .map_err(|e| format!("expected a date like 2026-03-01: {e}"))
}

/// Sets up logging: `RUST_LOG` filters (default `info`), text or JSON lines on stderr.
pub fn init_tracing(cli: &Cli) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,rebuy=info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match cli.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Config {
            action: ConfigAction::Check,
        } => config::config_check(&cli.config),
        Command::Config {
            action: ConfigAction::Example,
        } => {
            print!("{}", rebuy::config::EXAMPLE);
            Ok(ExitCode::SUCCESS)
        }
        Command::Sync(args) => {
            let cfg = load_config(&cli.config)?;
            sync::cmd_sync(&cfg, &args).await
        }
        Command::Auth(args) => {
            let cfg = load_config(&cli.config)?;
            auth::cmd_auth(&cfg, &args).await
        }
        Command::Status => {
            let cfg = load_config(&cli.config)?;
            status::cmd_status(&cfg)
        }
        Command::Segments(a) => {
            let cfg = load_config(&cli.config)?;
            let (p, store) = portal_store(&cfg, &a.portal)?;
            let as_of = a
                .as_of
                .as_deref()
                .map(|s| rebuy::analyse::parse_as_of(s, p))
                .transpose()?;
            analyse::cmd_segments(
                &store,
                p,
                as_of,
                a.format,
                a.segment.as_deref(),
                a.out.as_ref(),
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Report(a) => {
            let cfg = load_config(&cli.config)?;
            let (p, store) = portal_store(&cfg, &a.portal)?;
            let as_of = a
                .as_of
                .as_deref()
                .map(|s| rebuy::analyse::parse_as_of(s, p))
                .transpose()?;
            analyse::cmd_report(&store, p, as_of)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Backtest(a) => {
            let cfg = load_config(&cli.config)?;
            let (p, store) = portal_store(&cfg, &a.portal)?;
            let as_of = a
                .as_of
                .as_deref()
                .map(|s| rebuy::analyse::parse_as_of(s, p))
                .transpose()?;
            analyse::cmd_backtest(&store, p, as_of, a.holdout_days, a.format)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Plan(a) => {
            let cfg = load_config(&cli.config)?;
            plan::cmd_plan(&cfg, &a.portal, a.as_of.as_deref(), a.format).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Results(a) => {
            let cfg = load_config(&cli.config)?;
            let (p, store) = portal_store(&cfg, &a.portal)?;
            let as_of = match a.as_of.as_deref() {
                Some(s) => rebuy::writeback::parse_plan_as_of(s, p)?,
                None => jiff::Timestamp::now(),
            };
            let r = rebuy::results::portal_results(&store, p, as_of, a.period.as_deref())?;
            match a.format {
                crate::cli::OutputFormat::Json => {
                    println!("{}", serde_json::to_string_pretty(&r)?)
                }
                crate::cli::OutputFormat::Table => print!("{}", r.table()),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Apply(a) => {
            let cfg = load_config(&cli.config)?;
            let ok = plan::cmd_apply(&cfg, &a.portal, a.as_of.as_deref()).await?;
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            })
        }
        Command::Mapping(a) => {
            let cfg = load_config(&cli.config)?;
            let ok = plan::cmd_mapping(&cfg, &a.portal).await?;
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            })
        }
        Command::Inbox { action } => {
            let cfg = load_config(&cli.config)?;
            match action {
                InboxAction::Dead { portal } => {
                    let (_, store) = portal_store(&cfg, &portal)?;
                    let dead = store.inbox_dead()?;
                    println!("{} dead-letter event(s) in portal {portal}", dead.len());
                    for d in dead {
                        println!(
                            "  seq {}  {}  received {}  {} attempts, given up {}: {}",
                            d.event.seq,
                            d.event.crm,
                            d.event.received_at,
                            d.attempts,
                            d.dead_at,
                            d.last_error
                        );
                    }
                }
                InboxAction::Replay { portal, seqs } => {
                    let (_, store) = portal_store(&cfg, &portal)?;
                    let n = store.inbox_replay(&seqs)?;
                    println!("{n} event(s) put back into the inbox of portal {portal}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::HashPassword => {
            let mut line = String::new();
            if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                eprint!("password (shown as typed; pipe it in to keep it off the screen): ");
            }
            std::io::stdin()
                .read_line(&mut line)
                .context("reading the password from standard input")?;
            let password = line.trim_end_matches(['\r', '\n']);
            if password.is_empty() {
                anyhow::bail!("empty password on standard input");
            }
            let hash = rebuy::config::passwords::hash_password(password)
                .map_err(|e| anyhow::anyhow!("hashing the password: {e}"))?;
            println!("{hash}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve => {
            let cfg = load_config(&cli.config)?;
            serve::cmd_serve(cfg).await.map(|()| ExitCode::SUCCESS)
        }
        Command::Demo(args) => demo::run(args).await.map(|()| ExitCode::SUCCESS),
        Command::Emulate {
            crm: EmulateCrm::Amocrm(a),
        } => demo::emulate_amocrm(a).await.map(|()| ExitCode::SUCCESS),
        Command::Emulate {
            crm: EmulateCrm::Bitrix24(a),
        } => demo::emulate_bitrix24(a).await.map(|()| ExitCode::SUCCESS),
        Command::Bench { what } => bench::run(what).await.map(|()| ExitCode::SUCCESS),
    }
}

fn env_lookup(k: &str) -> Option<String> {
    std::env::var(k).ok()
}

/// Loads and validates the config, turning problems into one error listing them all.
pub fn load_config(path: &std::path::Path) -> Result<Config> {
    rebuy::config::load(path, &env_lookup).map_err(|p| {
        anyhow::anyhow!(
            "invalid config:\n{}",
            rebuy::config::format_problems(&p).trim_end()
        )
    })
}

/// A configured portal and its opened store.
pub fn portal_store<'a>(cfg: &'a Config, id: &str) -> Result<(&'a PortalConfig, Store)> {
    let p = cfg
        .portal(id)
        .with_context(|| format!("unknown portal {id:?}: not in the config"))?;
    let store = Store::open(&cfg.data_dir, &p.id)?;
    Ok((p, store))
}

fn selected<'a>(cfg: &'a Config, portal: Option<&str>) -> Result<Vec<&'a PortalConfig>> {
    match portal {
        Some(id) => Ok(vec![cfg.portal(id).with_context(|| {
            format!("unknown portal {id:?}: not in the config")
        })?]),
        None => Ok(cfg.portals.iter().collect()),
    }
}
