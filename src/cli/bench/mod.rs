//! `rebuy bench ...`: benchmarks that print their figures (speed and memory targets are checked
//! here, never by timed tests).
//!
//! `rebuy bench sync` runs the amoCRM emulator as a child process (so the peak RSS measured is
//! the sidecar's alone, and the two share the machine's cores as they would in production),
//! syncs fully at the default 7 req/s and again with the limit raised, and prints records/s
//! against the ceiling, 429s seen and peak RSS.
mod analytics;
mod plan;
mod serve;
mod sync;
mod ui;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use rebuy::emulated::{authorize_automatically, emulator_portal};
use rebuy::portal;
use rebuy::store::Store;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Full sync of an emulated amoCRM account at the default and at a raised rate limit.
    Sync {
        /// Contacts in the account.
        #[arg(long, default_value_t = 20_000)]
        contacts: usize,
        /// Leads in the account.
        #[arg(long, default_value_t = 60_000)]
        leads: usize,
        /// Rate limits to run at (requests/s), one run each (Bitrix24: the bucket's drain).
        #[arg(long, value_delimiter = ',', default_value = "7,1000")]
        rates: Vec<u32>,
        /// Which CRM.
        #[arg(long, default_value = "amocrm")]
        crm: String,
        /// Bitrix24: also list the deals' product rows (their own stream, counted as records).
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        product_rows: bool,
        /// Bitrix24: list the same contacts, companies and deals with the Python client
        /// fast_bitrix24 too (`pip install fast_bitrix24`; bench only) and compare the times,
        /// on two portals without product rows (both clients list the same records): a
        /// burst-sized one (`--burst-contacts`, `--burst-leads`) and one past the burst
        /// (`--past-burst-contacts`, `--past-burst-leads`), instead of `--contacts` / `--leads`.
        #[arg(long)]
        compare_fast_bitrix24: bool,
        /// Contacts of the past-burst portal of `--compare-fast-bitrix24`.
        #[arg(long, default_value_t = 40_000)]
        past_burst_contacts: usize,
        /// Deals of the past-burst portal: with the contacts, about 65 requests for either
        /// client, well past the bucket's 50.
        #[arg(long, default_value_t = 120_000)]
        past_burst_leads: usize,
        /// Contacts of the burst-sized portal of `--compare-fast-bitrix24`.
        #[arg(long, default_value_t = 10_000)]
        burst_contacts: usize,
        /// Deals of the burst-sized portal: with the contacts, it fits in the leaky bucket's 50
        /// requests at 2,500 records per `batch`.
        #[arg(long, default_value_t = 60_000)]
        burst_leads: usize,
        /// Bitrix24: milliseconds the emulated portal takes per list call (a `batch` of 50:
        /// 50 times that), as a real portal's database does; 4 ms makes a `batch` of 2,500
        /// rows take about 0.2 s, like the independent implementation of issue 12.
        #[arg(long, default_value_t = 4)]
        call_time_ms: u64,
    },
    /// The model backtest on CDNOW's published 39 + 39 week split (built-in sample), then on
    /// a generated base of periodic buyers (Erlang-k gaps).
    Backtest,
    /// The analytics on a synthetic base: dataset build, whole analysis, BG/NBD fit alone.
    Analytics {
        /// Customers.
        #[arg(long, default_value_t = 1_000_000)]
        customers: usize,
        /// Deals.
        #[arg(long, default_value_t = 5_000_000)]
        deals: usize,
        /// Also fit BG/NBD on the same summary with the Python package `lifetimes`
        /// (`pip install lifetimes`; bench only) and report both times.
        #[arg(long)]
        compare_lifetimes: bool,
        /// Generate the records straight into the analysis instead of into a portal cache
        /// first (by default they are written to a redb cache, untimed, and the timed run
        /// reads them back as the sidecar does).
        #[arg(long)]
        in_memory: bool,
    },
    /// The planner on a synthetic base (all ready playbooks, funnel, segment fields).
    Plan {
        /// Customers.
        #[arg(long, default_value_t = 1_000_000)]
        customers: usize,
    },
    /// Tasks through the outbox into the amoCRM emulator at its rate limit (bulk writes).
    Apply {
        /// Actions to send.
        #[arg(long, default_value_t = 10_000)]
        actions: usize,
        /// The emulator's (and the connector's) limit, requests/s (Bitrix24: the drain).
        #[arg(long)]
        rate: Option<u32>,
        /// Which CRM: amocrm (bulk arrays) or bitrix24 (`batch` of 50).
        #[arg(long, default_value = "amocrm")]
        crm: String,
    },
    /// Latency from a CRM webhook to the routed task in the emulated amoCRM: new leads of past
    /// buyers at a fixed rate; the emulator delivers its webhooks to an in-process server.
    Route {
        /// Leads per second.
        #[arg(long, default_value_t = 50)]
        rate: u64,
        /// Seconds.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// The emulated account's rate limit (requests/s): each routing costs about five
        /// requests, so 50 events/s need more than amoCRM's 7.
        #[arg(long, default_value_t = 1000)]
        crm_rps: u32,
    },
    /// Dashboard page render times on a synthetic portal: the cached analysis of `customers`
    /// customers is built once, then every page is requested `requests` times through the real
    /// router (logged in), and p50 / p99 are printed against the 200 ms target.
    Ui {
        /// Customers.
        #[arg(long, default_value_t = 1_000_000)]
        customers: usize,
        /// Deals.
        #[arg(long, default_value_t = 5_000_000)]
        deals: usize,
        /// Requests per page.
        #[arg(long, default_value_t = 30)]
        requests: usize,
        /// Outbox entries (1% of them failed) for the touches page.
        #[arg(long, default_value_t = 50_000)]
        outbox: usize,
    },
    /// The webhook parsers' fuzz target at scale.
    Fuzz {
        /// Bodies to generate.
        #[arg(long, default_value_t = 1_000_000)]
        bodies: u64,
        /// Generator seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Webhook ingest of `rebuy serve` on loopback: throughput with the fsync'd inbox, latency
    /// at a fixed rate, and the same with the inbox write off (upper bound).
    Ingest {
        /// Requests of the throughput run.
        #[arg(long, default_value_t = 40_000)]
        requests: u64,
        /// Concurrent senders of the throughput run.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Rate of the latency run (requests/s).
        #[arg(long, default_value_t = 2000)]
        rate: u64,
        /// Seconds of the latency run.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
    },
}

/// Runs a benchmark.
pub async fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Backtest => {
            let b = rebuy::analytics::backtest::cdnow();
            println!(
                "CDNOW (1/10 sample, 39 + 39 weeks: calibration to {}, holdout to {}, {} customers)",
                rebuy::analytics::date_of_day(b.cutoff_day),
                rebuy::analytics::date_of_day(b.end_day),
                b.customers
            );
            print!("{}", rebuy::analytics::backtest::render_table(&b));
            let customers = 20_000;
            let b = rebuy::analytics::backtest::periodic(customers, 14);
            println!(
                "\n{} ({} generated customers, seed 14, 52 + 39 weeks: calibration to {}, holdout to {}, {} customers)",
                rebuy::analytics::periodic::NAME,
                customers,
                rebuy::analytics::date_of_day(b.cutoff_day),
                rebuy::analytics::date_of_day(b.end_day),
                b.customers
            );
            print!("{}", rebuy::analytics::backtest::render_table(&b));
            Ok(())
        }
        BenchCommand::Sync {
            contacts,
            leads,
            rates,
            crm,
            product_rows,
            compare_fast_bitrix24,
            burst_contacts,
            burst_leads,
            past_burst_contacts,
            past_burst_leads,
            call_time_ms,
        } => {
            let crm = match crm.as_str() {
                "amocrm" => rebuy_core::CrmKind::Amocrm,
                "bitrix24" => rebuy_core::CrmKind::Bitrix24,
                other => bail!("unknown CRM {other:?}: expected amocrm or bitrix24"),
            };
            for rate in rates {
                if compare_fast_bitrix24 && crm == rebuy_core::CrmKind::Bitrix24 {
                    println!("burst-sized portal (fits in the bucket's burst):");
                    let burst = sync::SyncCase {
                        contacts: burst_contacts,
                        leads: burst_leads,
                        rate,
                        product_rows: false,
                        call_time_ms,
                    };
                    sync::bench_sync(crm, burst, true).await?;
                    println!("past-burst portal:");
                    let past = sync::SyncCase {
                        contacts: past_burst_contacts,
                        leads: past_burst_leads,
                        ..burst
                    };
                    sync::bench_sync(crm, past, true).await?;
                    continue;
                }
                let case = sync::SyncCase {
                    contacts,
                    leads,
                    rate,
                    product_rows,
                    call_time_ms,
                };
                sync::bench_sync(crm, case, compare_fast_bitrix24).await?;
            }
            Ok(())
        }
        BenchCommand::Analytics {
            customers,
            deals,
            compare_lifetimes,
            in_memory,
        } => {
            let dir = tempfile::tempdir()?;
            let csv = dir.path().join("summary.csv");
            let export = compare_lifetimes.then(|| csv.clone());
            let cache_dir = dir.path().to_path_buf();
            let (report, fit) = tokio::task::spawn_blocking(move || {
                if in_memory {
                    analytics::bench_export(customers, deals, export.as_deref())
                } else {
                    analytics::bench_analytics_from_cache(
                        &cache_dir,
                        customers,
                        deals,
                        export.as_deref(),
                    )
                }
            })
            .await??;
            println!("{report}");
            if let Some(f) = fit {
                println!(
                    "  rebuy BG/NBD     r={:.4} alpha={:.4} a={:.4} b={:.4}",
                    f.r, f.alpha, f.a, f.b
                );
            }
            if compare_lifetimes {
                analytics::compare_with_lifetimes(&csv, report.bgnbd_fit)?;
            }
            Ok(())
        }
        BenchCommand::Plan { customers } => {
            let report = tokio::task::spawn_blocking(move || plan::bench_plan(customers)).await??;
            print!("{report}");
            Ok(())
        }
        BenchCommand::Apply { actions, rate, crm } => {
            match crm.as_str() {
                "amocrm" => print!("{}", plan::bench_apply(actions, rate.unwrap_or(7)).await?),
                "bitrix24" => plan::bench_apply_b24(actions, rate.unwrap_or(2)).await?,
                other => bail!("unknown CRM {other:?}: expected amocrm or bitrix24"),
            }
            Ok(())
        }
        BenchCommand::Route {
            rate,
            seconds,
            crm_rps,
        } => serve::bench_route(rate, seconds, crm_rps).await,
        BenchCommand::Ui {
            customers,
            deals,
            requests,
            outbox,
        } => ui::bench_ui(customers, deals, requests, outbox).await,
        BenchCommand::Fuzz { bodies, seed } => {
            let started = Instant::now();
            // Caught panics would print their message: keep the output to the figures.
            std::panic::set_hook(Box::new(|_| {}));
            let r =
                tokio::task::spawn_blocking(move || rebuy::server::fuzz::run(bodies, seed)).await?;
            let _ = std::panic::take_hook();
            println!(
                "bench fuzz: {} bodies in {:.1} s, {} accepted by a parser, {} panics",
                r.bodies,
                started.elapsed().as_secs_f64(),
                r.accepted,
                r.panics
            );
            if r.panics > 0 {
                bail!("{} bodies made a parser panic", r.panics);
            }
            Ok(())
        }
        BenchCommand::Ingest {
            requests,
            concurrency,
            rate,
            seconds,
        } => serve::bench_ingest(requests, concurrency, rate, seconds).await,
    }
}

/// Peak resident set size of this process in bytes (Linux `VmHWM`).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// A free TCP port on loopback.
pub(super) fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
