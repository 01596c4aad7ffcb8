//! The command line: raw arguments (clap) and the dispatch of each command.
mod analyse;
mod bench;
mod demo;
mod plan;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use rebuy::config::{self, Config, PortalConfig};
use rebuy::portal;
use rebuy::store::Store;
use rebuy::sync::{self, Progress, SyncOptions};
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
    #[arg(long, value_enum, default_value_t = analyse::BacktestFormat::Table)]
    pub format: analyse::BacktestFormat,
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
    #[arg(long, value_enum, default_value_t = plan::PlanFormat::Table)]
    pub format: plan::PlanFormat,
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
    #[arg(long, value_enum, default_value_t = plan::PlanFormat::Table)]
    pub format: plan::PlanFormat,
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
        } => config_check(&cli.config),
        Command::Config {
            action: ConfigAction::Example,
        } => {
            print!("{}", config::EXAMPLE);
            Ok(ExitCode::SUCCESS)
        }
        Command::Sync(args) => {
            let cfg = load_config(&cli.config)?;
            cmd_sync(&cfg, &args).await
        }
        Command::Auth(args) => {
            let cfg = load_config(&cli.config)?;
            cmd_auth(&cfg, &args).await
        }
        Command::Status => {
            let cfg = load_config(&cli.config)?;
            cmd_status(&cfg)
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
                plan::PlanFormat::Json => {
                    println!("{}", serde_json::to_string_pretty(&r)?)
                }
                plan::PlanFormat::Table => print!("{}", r.table()),
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
            cmd_serve(cfg).await.map(|()| ExitCode::SUCCESS)
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
    config::load(path, &env_lookup).map_err(|p| {
        anyhow::anyhow!(
            "invalid config:\n{}",
            config::format_problems(&p).trim_end()
        )
    })
}

fn config_check(path: &std::path::Path) -> Result<ExitCode> {
    match config::load(path, &env_lookup) {
        Ok(cfg) => {
            println!("{}: ok ({} portals)", path.display(), cfg.portals.len());
            for (user, form) in cfg.server.ui.weak_passwords() {
                if let Some(w) = form.warning() {
                    println!("warning: server.ui user {user:?}: {w}");
                }
            }
            // With a cache, the managers who own customers but cannot be given work.
            for p in &cfg.portals {
                if p.mapping.is_null() || !rebuy::store::portal_path(&cfg.data_dir, &p.id).exists()
                {
                    continue;
                }
                let Ok(store) = Store::open(&cfg.data_dir, &p.id) else {
                    continue;
                };
                let users: Vec<rebuy_core::User> = store.all().unwrap_or_default();
                if users.is_empty() {
                    continue;
                }
                if let Ok(owners) = rebuy::writeback::unusable_owners(&store, p, &users) {
                    for o in owners {
                        println!("warning: portal {}: {} (cached users)", p.id, o.describe());
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(problems) => {
            eprintln!("{} problem(s):", problems.len());
            eprint!("{}", config::format_problems(&problems));
            Ok(ExitCode::from(2))
        }
    }
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

/// Live progress of a sync: counts per kind, records/s and requests/s on one line.
pub struct SyncProgress {
    bar: ProgressBar,
    counts: [AtomicU64; EntityKind::ALL.len()],
    started: Instant,
}

impl SyncProgress {
    /// A progress line (hidden when `quiet`).
    pub fn new(quiet: bool, portal: &str) -> Arc<Self> {
        let bar = if quiet {
            ProgressBar::hidden()
        } else {
            ProgressBar::new_spinner()
        };
        bar.set_style(
            ProgressStyle::with_template("{spinner} {prefix} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_prefix(portal.to_owned());
        bar.enable_steady_tick(Duration::from_millis(200));
        Arc::new(Self {
            bar,
            counts: Default::default(),
            started: Instant::now(),
        })
    }

    fn idx(kind: EntityKind) -> usize {
        EntityKind::ALL.iter().position(|k| *k == kind).unwrap_or(0)
    }

    /// Redraws the line with the connector's request count.
    pub fn refresh(&self, requests: u64) {
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let total: u64 = self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum();
        let parts: Vec<String> = EntityKind::ALL
            .iter()
            .map(|k| {
                format!(
                    "{} {}",
                    k.as_str(),
                    self.counts[Self::idx(*k)].load(Ordering::Relaxed)
                )
            })
            .collect();
        self.bar.set_message(format!(
            "{} | {:.0} records/s | {:.1} requests/s",
            parts.join(", "),
            total as f64 / secs,
            requests as f64 / secs
        ));
    }

    /// Ends the line.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Progress for SyncProgress {
    fn page(&self, kind: EntityKind, records: u64) {
        self.counts[Self::idx(kind)].fetch_add(records, Ordering::Relaxed);
    }
}

/// Syncs one portal with a live progress line; returns the report.
pub async fn sync_with_progress(
    conn: Arc<dyn Connector>,
    store: Store,
    opts: &SyncOptions,
    quiet: bool,
) -> Result<sync::SyncReport, sync::SyncError> {
    let progress = SyncProgress::new(quiet, &store.portal().0);
    let ticker = {
        let progress = progress.clone();
        let conn = conn.clone();
        tokio::spawn(async move {
            loop {
                progress.refresh(conn.stats().requests);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let result = sync::sync_portal(conn, store, opts, progress.clone()).await;
    ticker.abort();
    progress.finish();
    result
}

/// Prints a sync report.
/// `burst` is the CRM's allowance of requests above the rate (Bitrix24's bucket: 50; amoCRM: 0):
/// a run that fits in it is reported as such, not as a share of the per-second ceiling.
pub fn print_sync_report(portal: &str, r: &sync::SyncReport, ceiling_rps: Option<u32>, burst: u64) {
    let secs = r.elapsed.as_secs_f64().max(1e-3);
    println!("portal {portal}: synced in {:.1} s", secs);
    for (kind, k) in &r.kinds {
        println!(
            "  {:<10} {:>8} records {:>6} pages{}{}",
            kind.as_str(),
            k.records,
            k.pages,
            if k.deleted > 0 {
                format!(" {:>5} deleted", k.deleted)
            } else {
                String::new()
            },
            if k.full { " (full)" } else { "" }
        );
    }
    let rps = r.traffic.requests as f64 / secs;
    print!(
        "  {} requests ({:.2}/s), {} rate-limited, {} retries, {:.0} records/s",
        r.traffic.requests,
        rps,
        r.traffic.rate_limited,
        r.traffic.retries,
        r.records() as f64 / secs
    );
    match ceiling_rps {
        Some(_) if burst > 0 && r.traffic.requests <= burst => {
            println!(", within the CRM's burst of {burst} requests")
        }
        Some(c) => println!(
            ", {:.0}% of the {c} req/s ceiling used",
            100.0 * rps / f64::from(c)
        ),
        None => println!(),
    }
    for w in &r.warnings {
        println!("  warning: {w}");
    }
}

async fn cmd_sync(cfg: &Config, args: &SyncArgs) -> Result<ExitCode> {
    let portals = selected(cfg, args.portal.as_deref())?;
    // Portals are independent: run them concurrently, and one failing never stops the others.
    let mut tasks = tokio::task::JoinSet::new();
    for p in portals {
        let p = p.clone();
        let data_dir = cfg.data_dir.clone();
        let opts = rebuy::portal::sync_options(&p, args.full);
        let quiet = args.quiet;
        tasks.spawn(async move {
            let id = p.id.0.clone();
            let res: Result<()> = async {
                let store = Store::open(&data_dir, &p.id)?;
                let handle = portal::open(&p, store.clone())?;
                let ceiling = portal::ceiling_rps(&p);
                let report = sync_with_progress(handle.connector, store, &opts, quiet).await?;
                print_sync_report(&id, &report, Some(ceiling), portal::burst_requests(&p));
                Ok(())
            }
            .await;
            (id, res)
        });
    }
    let mut failed = 0;
    while let Some(joined) = tasks.join_next().await {
        let (id, res) = joined.context("sync task panicked")?;
        if let Err(e) = res {
            failed += 1;
            eprintln!("portal {id}: sync failed: {e:#}");
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn cmd_auth(cfg: &Config, args: &AuthArgs) -> Result<ExitCode> {
    let p = cfg
        .portal(&args.portal)
        .with_context(|| format!("unknown portal {:?}: not in the config", args.portal))?;
    if !matches!(p.auth, config::AuthConfig::OAuth { .. }) {
        // A long-lived token or an inbound webhook URL is already the authorisation.
        println!(
            "portal {}: {} needs no authorization: its credentials come from the environment",
            p.id,
            match p.auth {
                config::AuthConfig::LongLivedToken { .. } => "a long-lived token",
                _ => "an inbound webhook",
            }
        );
        return Ok(ExitCode::SUCCESS);
    }
    if args.link {
        // Signed with the key `serve` checks, from the data directory; no store is opened, so
        // this works while the server runs.
        let key = rebuy::server::oauth::LinkKey::load_or_create(&cfg.data_dir)
            .with_context(|| format!("reading the link key in {}", cfg.data_dir.display()))?;
        let base = cfg
            .server
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", cfg.server.listen));
        let valid = std::time::Duration::from_secs(args.valid_hours * 3600);
        println!(
            "Open this link within {} hour(s) to connect portal {} (it works for anyone who has it):\n\n  {}\n",
            args.valid_hours,
            p.id,
            key.start_link(&base, &p.id.0, valid)
        );
        return Ok(ExitCode::SUCCESS);
    }
    let store = Store::open(&cfg.data_dir, &p.id)?;
    let state = portal::random_state();
    let url = portal::authorize_url(p, &state)?;
    let code = match &args.code {
        Some(c) => c.clone(),
        None => match portal::try_automatic_code(&url, &state).await {
            Some(code) => {
                println!(
                    "authorised automatically (the CRM at {} is an emulator)",
                    p.base_url
                );
                code
            }
            None => {
                println!(
                    "Open this URL, allow access, and paste the `code` parameter of the page you are sent to:\n\n  {url}\n"
                );
                print!("code: ");
                use std::io::Write;
                std::io::stdout().flush().ok();
                let mut line = String::new();
                std::io::stdin()
                    .read_line(&mut line)
                    .context("reading the code from stdin")?;
                line.trim().to_owned()
            }
        },
    };
    if code.is_empty() {
        bail!("no authorization code given");
    }
    let tokens = portal::exchange_code(p, &store, &code).await?;
    println!(
        "portal {}: authorised; access token valid until {}",
        p.id,
        tokens
            .expires_at
            .map(|t| t.to_string())
            .unwrap_or_else(|| "unknown".into())
    );
    Ok(ExitCode::SUCCESS)
}

fn cmd_status(cfg: &Config) -> Result<ExitCode> {
    if let Some(mode) = rebuy::store::exposed_mode(&cfg.data_dir) {
        println!(
            "warning: the data directory {} is open to other users (mode {mode:o}) and holds the \
             portals' tokens: chmod 700 it",
            cfg.data_dir.display()
        );
    }
    for p in &cfg.portals {
        println!("portal {} ({}, {})", p.id, p.kind.as_str(), p.base_url);
        let store = match Store::open(&cfg.data_dir, &p.id) {
            Ok(s) => s,
            Err(e) => {
                println!("  store: {e}");
                continue;
            }
        };
        for kind in EntityKind::ALL {
            let n = store.count(kind)?;
            let st = store.sync_state(kind)?;
            println!(
                "  {:<10} {:>8}  last sync {}{}",
                kind.as_str(),
                n,
                st.last_sync_at
                    .map(|t| t.to_string())
                    .unwrap_or_else(|| "never".into()),
                if st.in_progress.is_some() {
                    "  (a listing is under way or was interrupted)"
                } else {
                    ""
                }
            );
        }
        match store.load_tokens()? {
            Some(t) => println!(
                "  token: expires {}",
                t.expires_at
                    .map(|e| e.to_string())
                    .unwrap_or_else(|| "never (long-lived)".into())
            ),
            None => match p.auth {
                config::AuthConfig::OAuth { .. } => {
                    println!("  token: none stored (run `rebuy auth`)")
                }
                config::AuthConfig::LongLivedToken { .. } => {
                    println!("  token: long-lived, from the environment")
                }
                config::AuthConfig::Webhook { .. } => {
                    println!("  auth: inbound webhook URL, from the environment")
                }
            },
        }
        let w = rebuy::sync::last_warnings(&store)?;
        if !w.warnings.is_empty() {
            println!(
                "  last sync ({}) went without {} optional part(s):",
                w.at,
                w.warnings.len()
            );
            for line in &w.warnings {
                println!("    warning: {line}");
            }
        }
        if let Some(r) = store.needs_reauth()? {
            println!("  NEEDS RE-AUTHORIZATION since {}: {}", r.at, r.reason);
        }
        let dead = store.inbox_dead_count()?;
        if dead > 0 {
            println!(
                "  WEBHOOKS GIVEN UP: {dead} in the dead-letter table (rebuy inbox dead --portal {} lists them; rebuy inbox replay puts them back)",
                p.id
            );
        }
        plan::print_outbox_status(&store)?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn cmd_serve(cfg: Config) -> Result<()> {
    let state = rebuy::server::AppState::new(&cfg, true)?;
    let listener = tokio::net::TcpListener::bind(&cfg.server.listen)
        .await
        .with_context(|| format!("listening on {}", cfg.server.listen))?;
    tracing::info!(listen = %cfg.server.listen, portals = cfg.portals.len(), "Serving.");
    for (user, form) in cfg.server.ui.weak_passwords() {
        if let Some(w) = form.warning() {
            tracing::warn!(user = ?user, "Dashboard user: {w}.");
        }
    }
    let cancel = tokio_util::sync::CancellationToken::new();
    let tasks = rebuy::server::runtime::spawn_all(&state, &cfg.server, cancel.clone());
    let shutdown = {
        let cancel = cancel.clone();
        async move {
            shutdown_signal().await;
            tracing::info!(
                "Shutting down: finishing in-flight requests; the inbox keeps the rest."
            );
            cancel.cancel();
        }
    };
    // `/metrics` without a token on an address of its own, when configured (keep it internal).
    if let Some(addr) = &cfg.server.metrics_listen {
        let metrics_listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening on {addr} (server.metrics_listen)"))?;
        tracing::info!(listen = %addr, "Serving /metrics.");
        let app = rebuy::server::metrics::open_router(state.clone());
        let stop = cancel.clone();
        tokio::spawn(async move {
            if let Err(e) = axum::serve(metrics_listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
            {
                tracing::error!(error = %e, "The metrics listener failed.");
            }
        });
    }
    // The dashboard is on when `[server.ui]` (or REBUY_UI_USER / REBUY_UI_PASSWORD) gives it a
    // user (else /ui is 404).
    let dashboard = rebuy::ui::router_from_config(state.clone());
    rebuy::server::serve(listener, state, Some(dashboard), shutdown)
        .await
        .context("serving")?;
    cancel.cancel();
    tasks.wait().await;
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
