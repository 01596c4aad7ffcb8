//! `rebuy bench ...`: benchmarks that print their figures (speed and memory targets are checked
//! here, never by timed tests).
//!
//! `rebuy bench sync` runs the amoCRM emulator as a child process (so the peak RSS measured is
//! the sidecar's alone, and the two share the machine's cores as they would in production),
//! syncs fully at the default 7 req/s and again with the limit raised, and prints records/s
//! against the ceiling, 429s seen and peak RSS.
use crate::demo::{authorize_automatically, emulator_portal};
use crate::portal;
use crate::store::Store;
use anyhow::{Context, Result, bail};
use clap::Subcommand;
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
            let b = crate::analytics::backtest::cdnow();
            println!(
                "CDNOW (1/10 sample, 39 + 39 weeks: calibration to {}, holdout to {}, {} customers)",
                crate::analytics::date_of_day(b.cutoff_day),
                crate::analytics::date_of_day(b.end_day),
                b.customers
            );
            print!("{}", crate::analytics::backtest::render_table(&b));
            let customers = 20_000;
            let b = crate::analytics::backtest::periodic(customers, 14);
            println!(
                "\n{} ({} generated customers, seed 14, 52 + 39 weeks: calibration to {}, holdout to {}, {} customers)",
                crate::analytics::periodic::NAME,
                customers,
                crate::analytics::date_of_day(b.cutoff_day),
                crate::analytics::date_of_day(b.end_day),
                b.customers
            );
            print!("{}", crate::analytics::backtest::render_table(&b));
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
                    let burst = SyncCase {
                        contacts: burst_contacts,
                        leads: burst_leads,
                        rate,
                        product_rows: false,
                        call_time_ms,
                    };
                    bench_sync(crm, burst, true).await?;
                    println!("past-burst portal:");
                    let past = SyncCase {
                        contacts: past_burst_contacts,
                        leads: past_burst_leads,
                        ..burst
                    };
                    bench_sync(crm, past, true).await?;
                    continue;
                }
                let case = SyncCase {
                    contacts,
                    leads,
                    rate,
                    product_rows,
                    call_time_ms,
                };
                bench_sync(crm, case, compare_fast_bitrix24).await?;
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
                    Ok(crate::analytics::bench::bench_export(
                        customers,
                        deals,
                        export.as_deref(),
                    ))
                } else {
                    bench_analytics_from_cache(&cache_dir, customers, deals, export.as_deref())
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
                compare_with_lifetimes(&csv, report.bgnbd_fit)?;
            }
            Ok(())
        }
        BenchCommand::Plan { customers } => {
            let report =
                tokio::task::spawn_blocking(move || crate::writeback::bench_plan(customers))
                    .await??;
            print!("{report}");
            Ok(())
        }
        BenchCommand::Apply { actions, rate, crm } => {
            match crm.as_str() {
                "amocrm" => print!(
                    "{}",
                    crate::writeback::bench_apply(actions, rate.unwrap_or(7)).await?
                ),
                "bitrix24" => bench_apply_b24(actions, rate.unwrap_or(2)).await?,
                other => bail!("unknown CRM {other:?}: expected amocrm or bitrix24"),
            }
            Ok(())
        }
        BenchCommand::Route {
            rate,
            seconds,
            crm_rps,
        } => bench_route(rate, seconds, crm_rps).await,
        BenchCommand::Ui {
            customers,
            deals,
            requests,
            outbox,
        } => bench_ui(customers, deals, requests, outbox).await,
        BenchCommand::Fuzz { bodies, seed } => {
            let started = Instant::now();
            // Caught panics would print their message: keep the output to the figures.
            std::panic::set_hook(Box::new(|_| {}));
            let r =
                tokio::task::spawn_blocking(move || crate::server::fuzz::run(bodies, seed)).await?;
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
        } => bench_ingest(requests, concurrency, rate, seconds).await,
    }
}

/// Peak resident set size of this process in bytes (Linux `VmHWM`).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A child `rebuy emulate` process, killed on drop.
struct ChildEmulator(std::process::Child);
impl Drop for ChildEmulator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn wait_listening(port: u16, limit: Duration) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the emulator did not start listening on port {port} within {limit:?}")
}

/// Records, per committed page, the time, the records so far and the requests so far, to
/// compute the steady-state rate after Bitrix24's burst.
struct Samples {
    started: Instant,
    conn: std::sync::OnceLock<std::sync::Arc<dyn rebuy_core::Connector>>,
    points: std::sync::Mutex<Vec<(f64, u64, u64)>>,
    records: std::sync::atomic::AtomicU64,
}

impl crate::sync::Progress for Samples {
    fn page(&self, _kind: rebuy_core::EntityKind, records: u64) {
        let total = self
            .records
            .fetch_add(records, std::sync::atomic::Ordering::Relaxed)
            + records;
        let requests = self.conn.get().map(|c| c.stats().requests).unwrap_or(0);
        let t = self.started.elapsed().as_secs_f64();
        self.points
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((t, total, requests));
    }
}

/// One portal of `bench sync`.
#[derive(Debug, Clone, Copy)]
struct SyncCase {
    contacts: usize,
    leads: usize,
    rate: u32,
    product_rows: bool,
    /// Bitrix24: the emulated portal's time per call.
    call_time_ms: u64,
}

async fn bench_sync(
    crm: rebuy_core::CrmKind,
    case: SyncCase,
    compare_fast_bitrix24: bool,
) -> Result<()> {
    let SyncCase {
        contacts,
        leads,
        rate,
        product_rows,
        call_time_ms,
    } = case;
    let port = free_port()?;
    let exe = std::env::current_exe().context("locating the rebuy binary")?;
    let child = std::process::Command::new(exe)
        .args([
            "emulate",
            crm.as_str(),
            "--port",
            &port.to_string(),
            "--contacts",
            &contacts.to_string(),
        ])
        .args(["--leads", &leads.to_string(), "--rate", &rate.to_string()])
        .args(if crm == rebuy_core::CrmKind::Bitrix24 {
            vec!["--call-time-ms".to_owned(), call_time_ms.to_string()]
        } else {
            Vec::new()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting the emulator child process")?;
    let _child = ChildEmulator(child);
    wait_listening(port, Duration::from_secs(300)).await?;
    let base_url = format!("http://127.0.0.1:{port}");
    let mut p = match crm {
        rebuy_core::CrmKind::Amocrm => {
            let emu = rebuy_emulator::amocrm::AmoConfig::default();
            emulator_portal("bench", &base_url, &emu.client_id, &emu.redirect_uri, rate)?
        }
        rebuy_core::CrmKind::Bitrix24 => {
            let emu = rebuy_emulator::bitrix24::B24Config::default();
            crate::demo::emulator_b24_portal("bench", &base_url, &emu)?
        }
    };
    p.sync.product_rows = product_rows;
    if crm == rebuy_core::CrmKind::Bitrix24 {
        p.requests_per_sec = Some(rate);
    }
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path(), &p.id)?;
    authorize_automatically(&p, &store).await?;
    let handle = portal::open(&p, store.clone())?;
    let opts = crate::portal::sync_options(&p, true);
    let samples = std::sync::Arc::new(Samples {
        started: Instant::now(),
        conn: std::sync::OnceLock::new(),
        points: std::sync::Mutex::new(Vec::new()),
        records: std::sync::atomic::AtomicU64::new(0),
    });
    let _ = samples.conn.set(handle.connector.clone());
    let report = crate::sync::sync_portal(handle.connector, store, &opts, samples.clone()).await?;
    let secs = report.elapsed.as_secs_f64();
    let records = report.records();
    let per_sec = records as f64 / secs;
    let per_request = crate::portal::records_per_request(&p);
    let ceiling = f64::from(rate) * f64::from(per_request);
    println!(
        "bench sync ({}): {contacts} contacts + {leads} deals at {rate} req/s{}",
        crm.as_str(),
        if crm == rebuy_core::CrmKind::Bitrix24 {
            format!(
                "{}, {call_time_ms} ms per call on the portal",
                if product_rows {
                    ", with product rows (their own >id-chained stream)"
                } else {
                    ", without product rows"
                }
            )
        } else {
            String::new()
        }
    );
    let kinds: Vec<String> = report
        .kinds
        .iter()
        .map(|(k, r)| format!("{} {}", k.as_str(), r.records))
        .collect();
    println!("  records          {records} ({})", kinds.join(", "));
    println!("  time             {secs:.2} s");
    println!(
        "  requests         {} ({:.2}/s)",
        report.traffic.requests,
        report.traffic.requests as f64 / secs
    );
    println!("  records/s        {per_sec:.0}");
    println!("  ceiling          {ceiling:.0} records/s ({rate} x {per_request})");
    println!("  efficiency       {:.3} (whole run)", per_sec / ceiling);
    if crm == rebuy_core::CrmKind::Bitrix24 {
        // After the bucket's burst (capacity - 2 requests), the drain rate rules.
        let points = samples
            .points
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let (Some(start), Some(end)) = (points.iter().find(|p| p.2 >= 48), points.last())
            && end.0 > start.0
        {
            let steady = (end.1 - start.1) as f64 / (end.0 - start.0);
            println!(
                "  steady state     {steady:.0} records/s after the burst, efficiency {:.3}",
                steady / ceiling
            );
        }
    }
    println!(
        "  rate-limited     {} (429 / QUERY_LIMIT_EXCEEDED)",
        report.traffic.rate_limited
    );
    println!("  retries          {}", report.traffic.retries);
    if let Some(rss) = peak_rss_bytes() {
        println!(
            "  peak RSS         {:.1} MB (this process; the emulator runs apart)",
            rss as f64 / 1e6
        );
    }
    if compare_fast_bitrix24 && crm == rebuy_core::CrmKind::Bitrix24 {
        // Both start with an empty bucket: let the emulator's drain it first.
        tokio::time::sleep(Duration::from_secs(30)).await;
        let hook = {
            let c = rebuy_emulator::bitrix24::B24Config::default();
            format!(
                "{base_url}/rest/{}/{}/",
                c.webhook_user_id, c.webhook_secret
            )
        };
        compare_with_fast_bitrix24(&hook, records, secs)?;
    }
    Ok(())
}

/// Lists the same contacts, companies and deals with fast_bitrix24 and compares the times.
fn compare_with_fast_bitrix24(webhook: &str, rebuy_records: u64, rebuy_secs: f64) -> Result<()> {
    const SCRIPT: &str = r#"
import sys, time
from fast_bitrix24 import Bitrix
b = Bitrix(sys.argv[1], verbose=False)
t = time.time()
n = 0
for method, select in [
    ("crm.company.list", ["ID", "TITLE", "ASSIGNED_BY_ID", "DATE_CREATE", "DATE_MODIFY", "PHONE", "EMAIL"]),
    ("crm.contact.list", ["ID", "NAME", "LAST_NAME", "COMPANY_ID", "ASSIGNED_BY_ID", "DATE_CREATE", "DATE_MODIFY", "PHONE", "EMAIL"]),
    ("crm.deal.list", ["ID", "TITLE", "CATEGORY_ID", "STAGE_ID", "STAGE_SEMANTIC_ID", "OPPORTUNITY", "CURRENCY_ID", "CONTACT_ID", "COMPANY_ID", "ASSIGNED_BY_ID", "DATE_CREATE", "DATE_MODIFY", "CLOSEDATE"]),
]:
    n += len(b.get_all(method, params={"select": select}))
print(n, time.time() - t)
"#;
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .arg(webhook)
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8_lossy(&o.stdout);
            let v: Vec<f64> = text
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            if v.len() == 2 {
                println!(
                    "  fast_bitrix24    {:.0} records in {:.2} s ({:.0} records/s)",
                    v[0],
                    v[1],
                    v[0] / v[1]
                );
                println!(
                    "  rebuy            {rebuy_records} records in {rebuy_secs:.2} s: {:.2}x the speed of fast_bitrix24",
                    (rebuy_records as f64 / rebuy_secs) / (v[0] / v[1])
                );
            } else {
                println!("  fast_bitrix24: unexpected output {text:?}");
            }
        }
        Ok(o) => println!(
            "  fast_bitrix24: not run ({})",
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .last()
                .unwrap_or("failed")
        ),
        Err(e) => println!("  fast_bitrix24: not run (python3: {e})"),
    }
    Ok(())
}

/// Starts a server with one amoCRM portal (inbox on or off) on loopback; returns its hook URL.
async fn ingest_server(
    durable: bool,
    dir: &std::path::Path,
) -> Result<(String, tokio_util::sync::CancellationToken)> {
    let text = format!(
        "data_dir = {:?}\n[[portal]]\nid = \"bench\"\nkind = \"amocrm\"\nbase_url = \"http://127.0.0.1:9\"\n\
         [portal.auth]\ntype = \"long_lived_token\"\ntoken_env = \"T\"\n[portal.webhooks]\nsecret_env = \"S\"\n",
        dir.display().to_string()
    );
    let env = |k: &str| match k {
        "T" => Some("token".to_owned()),
        "S" => Some("bench-secret".to_owned()),
        _ => None,
    };
    let cfg = crate::config::resolve_toml(&text, "<bench>", &env)
        .map_err(|p| anyhow::anyhow!("{}", crate::config::format_problems(&p)))?;
    let state = crate::server::AppState::new(&cfg, durable)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!(
        "http://{}/hooks/amocrm/bench/bench-secret",
        listener.local_addr()?
    );
    let cancel = tokio_util::sync::CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move { crate::server::serve(listener, state, c.cancelled_owned()).await });
    Ok((url, cancel))
}

fn hook_body(i: u64) -> String {
    format!(
        "leads[update][0][id]={i}&leads[update][0][status_id]=142&leads[update][0][updated_at]={i}\
         &account[subdomain]=bench&account[id]=1&account[_links][self]=https://bench.amocrm.ru"
    )
}

async fn ingest_throughput(url: &str, requests: u64, concurrency: usize) -> Result<f64> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()?;
    let next = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (client, next, url) = (client.clone(), next.clone(), url.to_owned());
        tasks.spawn(async move {
            let mut failed = 0u64;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= requests {
                    return failed;
                }
                let ok = client
                    .post(&url)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(hook_body(i))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                failed += u64::from(!ok);
            }
        });
    }
    let mut failed = 0;
    while let Some(r) = tasks.join_next().await {
        failed += r?;
    }
    if failed > 0 {
        bail!("{failed} webhook requests failed");
    }
    Ok(requests as f64 / started.elapsed().as_secs_f64())
}

async fn ingest_latency(
    url: &str,
    rate: u64,
    seconds: u64,
    offset: u64,
) -> Result<(f64, f64, f64)> {
    let client = reqwest::Client::new();
    let total = rate * seconds;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..total {
        ticker.tick().await;
        let (client, url) = (client.clone(), url.to_owned());
        tasks.spawn(async move {
            let t = Instant::now();
            let ok = client
                .post(&url)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(hook_body(offset + i))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            (t.elapsed(), ok)
        });
    }
    let mut lat = Vec::with_capacity(total as usize);
    while let Some(r) = tasks.join_next().await {
        let (d, ok) = r?;
        if !ok {
            bail!("a webhook request failed in the latency run");
        }
        lat.push(d.as_secs_f64() * 1000.0);
    }
    lat.sort_by(f64::total_cmp);
    let q = |p: f64| lat[((lat.len() as f64 - 1.0) * p).round() as usize];
    Ok((q(0.5), q(0.99), lat[lat.len() - 1]))
}

async fn bench_ingest(requests: u64, concurrency: usize, rate: u64, seconds: u64) -> Result<()> {
    println!(
        "bench ingest: {requests} webhooks from {concurrency} senders; latency at {rate}/s for {seconds} s (loopback, same machine)"
    );
    let mut throughput = Vec::new();
    for durable in [true, false] {
        let dir = tempfile::tempdir()?;
        let (url, cancel) = ingest_server(durable, dir.path()).await?;
        let rps = ingest_throughput(&url, requests, concurrency).await?;
        let (p50, p99, max) = ingest_latency(&url, rate, seconds, requests).await?;
        cancel.cancel();
        println!(
            "  inbox {:<9} {:>8.0} requests/s   latency at {rate}/s: p50 {p50:.2} ms  p99 {p99:.2} ms  max {max:.1} ms",
            if durable { "fsync'd" } else { "off" },
            rps
        );
        throughput.push(rps);
    }
    println!(
        "  durable / upper bound: {:.2}",
        throughput[0] / throughput[1]
    );
    Ok(())
}

async fn bench_route(rate: u64, seconds: u64, crm_rps: u32) -> Result<()> {
    let mut emu_cfg = rebuy_emulator::amocrm::AmoConfig::default();
    emu_cfg.seed.contacts = 2000;
    emu_cfg.seed.deals = 6000;
    emu_cfg.rate_limit_per_sec = crm_rps;
    emu_cfg.block_after_violations = 0;
    let emu = rebuy_emulator::amocrm::AmoEmulator::spawn(emu_cfg.clone()).await?;
    let mut p = emulator_portal(
        "route",
        &emu.base_url,
        &emu_cfg.client_id,
        &emu_cfg.redirect_uri,
        crm_rps,
    )?;
    p.mapping = serde_json::json!({"repeat_pipeline": "Повторные продажи"});
    p.webhook_secret = Some(secrecy::SecretString::from("bench-secret"));
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path(), &p.id)?;
    authorize_automatically(&p, &store).await?;
    let handle = portal::open(&p, store.clone())?;
    crate::sync::sync_portal(
        handle.connector,
        store.clone(),
        &crate::portal::sync_options(&p, true),
        std::sync::Arc::new(crate::sync::NoProgress),
    )
    .await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let state = crate::server::AppState::from_stores(vec![(p.clone(), store.clone())], true);
    let cancel = tokio_util::sync::CancellationToken::new();
    let settings = crate::config::ServerSettings::default();
    let tasks = crate::server::runtime::spawn_all(&state, &settings, None, cancel.clone());
    let c = cancel.clone();
    tokio::spawn(async move { crate::server::serve(listener, state, c.cancelled_owned()).await });
    let e = &emu.emulator;
    e.register_webhook(
        &format!("{url}/hooks/amocrm/route/bench-secret"),
        &["add_lead", "update_lead", "status_lead"],
    );
    let (buyers, pipeline, status) = e.with_data(|d| {
        let mut buyers: Vec<u64> = d
            .leads
            .values()
            .filter(|l| l.status_id == 142 && !l.contacts.is_empty())
            .map(|l| l.contacts[0].id)
            .collect();
        buyers.sort_unstable();
        buyers.dedup();
        let main = d
            .pipelines
            .values()
            .find(|p| p.name != "Повторные продажи")
            .map(|m| {
                (
                    m.id,
                    m.statuses
                        .iter()
                        .find(|s| s.id != 142 && s.id != 143)
                        .map(|s| s.id),
                )
            });
        (buyers, main.map(|m| m.0), main.and_then(|m| m.1))
    });
    let (Some(pipeline), Some(status)) = (pipeline, status) else {
        bail!("no main pipeline in the emulated account")
    };
    if buyers.is_empty() {
        bail!("no past buyers in the emulated account");
    }
    // Warm the server's cached analysis with one lead before measuring.
    let total = rate * seconds;
    let mut created: std::collections::HashMap<u64, Instant> = std::collections::HashMap::new();
    let mut latencies = Vec::with_capacity(total as usize);
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    let started = Instant::now();
    let mut i = 0u64;
    let deadline = started + Duration::from_secs(seconds + 30);
    while (latencies.len() as u64) < total && Instant::now() < deadline {
        if i < total {
            ticker.tick().await;
            let buyer = buyers[(i as usize) % buyers.len()];
            if let Some(lead) = e.add_lead(buyer, 1000, pipeline, status) {
                created.insert(lead, Instant::now());
            }
            i += 1;
        } else {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for t in e.writes().tasks_created.iter() {
            if let Some(at) = t.entity_id.and_then(|id| created.remove(&id)) {
                latencies.push(at.elapsed().as_secs_f64() * 1000.0);
            }
        }
    }
    cancel.cancel();
    tasks.wait().await;
    if latencies.is_empty() {
        bail!("no lead was routed");
    }
    latencies.sort_by(f64::total_cmp);
    let q = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "bench route: {total} new leads of past buyers at {rate}/s (emulated amoCRM at {crm_rps} req/s), webhook delivered by the emulator"
    );
    println!(
        "  routed           {} of {total} (moved + tasked)",
        latencies.len()
    );
    println!(
        "  webhook -> task  p50 {:.0} ms  p99 {:.0} ms  max {:.0} ms",
        q(0.5),
        q(0.99),
        latencies[latencies.len() - 1]
    );
    Ok(())
}

/// Fits BG/NBD with the Python package `lifetimes` on the exported summary and prints the
/// time and the ratio to rebuy's fit.
fn compare_with_lifetimes(csv: &std::path::Path, rebuy_fit: Duration) -> Result<()> {
    const SCRIPT: &str = r#"
import sys, time
import pandas as pd
from lifetimes import BetaGeoFitter
d = pd.read_csv(sys.argv[1])
m = BetaGeoFitter(penalizer_coef=0.0)
t = time.time()
m.fit(d["frequency"], d["recency"], d["T"], weights=d["weight"])
el = time.time() - t
p = m.params_
print(f"{el} {p['r']} {p['alpha']} {p['a']} {p['b']}")
"#;
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .arg(csv)
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8_lossy(&o.stdout);
            let v: Vec<f64> = text
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            if v.len() == 5 {
                println!(
                    "  lifetimes BG/NBD r={:.4} alpha={:.4} a={:.4} b={:.4}",
                    v[1], v[2], v[3], v[4]
                );
                println!(
                    "  lifetimes fit    {:.3} s on the same summary; rebuy is {:.1}x faster",
                    v[0],
                    v[0] / rebuy_fit.as_secs_f64()
                );
            } else {
                println!("  lifetimes: unexpected output {text:?}");
            }
        }
        Ok(o) => println!(
            "  lifetimes: not run ({})",
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .last()
                .unwrap_or("failed")
        ),
        Err(e) => println!("  lifetimes: not run (python3: {e})"),
    }
    Ok(())
}

/// 10k tasks through the outbox into the Bitrix24 emulator: packed into `batch` requests of
/// 50 `crm.activity.todo.add` commands, at the leaky bucket's drain rate.
async fn bench_apply_b24(actions: usize, rate: u32) -> Result<()> {
    use rebuy_emulator::bitrix24::{B24Config, B24Emulator};
    let mut cfg = B24Config::default();
    cfg.seed.contacts = 1_000;
    cfg.seed.deals = 3_000;
    cfg.drain_per_sec = f64::from(rate);
    let emu = B24Emulator::spawn(cfg.clone()).await?;
    let mut p = crate::demo::emulator_b24_portal("bench", &emu.base_url, &cfg)?;
    p.requests_per_sec = Some(rate);
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path(), &p.id)?;
    authorize_automatically(&p, &store).await?;
    let handle = portal::open(&p, store.clone())?;
    let deals: Vec<(u64, u64)> = emu
        .emulator
        .with_data(|d| d.deals.values().map(|x| (x.id, x.assigned_by_id)).collect());
    let due = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24);
    let list: Vec<crate::outbox::Action> = (0..actions)
        .map(|i| {
            let (deal, user) = deals[i % deals.len()];
            crate::outbox::Action {
                merged: Vec::new(),
                key: format!("bench/bench.touch/deal:{deal}/{i}"),
                op: rebuy_core::WriteOp::CreateTask {
                    entity: rebuy_core::EntityRef::Deal(rebuy_core::DealId(deal)),
                    responsible: rebuy_core::UserId(user),
                    text: format!("Касание {i}"),
                    due,
                    kind: rebuy_core::TaskKind::Call,
                },
                rule: "bench.touch".into(),
                customer: format!("deal:{deal}"),
                summary: String::new(),
            }
        })
        .collect();
    let s = store.clone();
    tokio::task::spawn_blocking(move || s.outbox_enqueue(list)).await??;
    let before = handle.connector.stats();
    let r = crate::writeback::drain_all(
        handle.connector.as_ref(),
        &store,
        &crate::outbox::DrainOptions::default(),
        Duration::from_secs(120),
    )
    .await?;
    let after = handle.connector.stats();
    let secs = r.elapsed.as_secs_f64().max(1e-3);
    let sent = r.drain.done + r.drain.failed;
    let requests = after.requests - before.requests;
    let landed = emu
        .emulator
        .writes()
        .iter()
        .filter(|w| w.method == "crm.activity.todo.add")
        .count();
    let ceiling = f64::from(rate) * 50.0;
    println!(
        "bench apply: {actions} to-dos through the outbox into the Bitrix24 emulator at {rate} req/s (bucket 50)"
    );
    println!(
        "  send             {secs:.1} s, {} done, {} failed, {landed} landed in the emulator",
        r.drain.done, r.drain.failed
    );
    println!(
        "  requests         {requests} ({:.2}/s, QUERY_LIMIT_EXCEEDED seen {})",
        requests as f64 / secs,
        after.rate_limited - before.rate_limited
    );
    println!(
        "  actions/request  {:.1} (batch of up to 50)",
        sent as f64 / requests.max(1) as f64
    );
    println!(
        "  actions/s        {:.0} (ceiling {ceiling:.0} after the burst)",
        sent as f64 / secs
    );
    Ok(())
}

/// Collects synthetic records into a portal cache in transactions of [`CacheSink::BATCH`].
struct CacheSink {
    store: Store,
    contacts: Vec<rebuy_core::Contact>,
    deals: Vec<rebuy_core::Deal>,
    error: Option<crate::store::StoreError>,
}

impl CacheSink {
    const BATCH: usize = 20_000;

    fn flush(&mut self) {
        if self.error.is_some() {
            return;
        }
        let (contacts, deals) = (
            std::mem::take(&mut self.contacts),
            std::mem::take(&mut self.deals),
        );
        if let Err(e) = self.store.write(|w| {
            w.put_all(&contacts)?;
            w.put_all(&deals)
        }) {
            self.error = Some(e);
        }
    }
}

impl crate::analytics::bench::SyntheticSink for CacheSink {
    fn add_contact(&mut self, contact: &rebuy_core::Contact) {
        self.contacts.push(contact.clone());
        if self.contacts.len() >= Self::BATCH {
            self.flush();
        }
    }
    fn add_deal(&mut self, deal: &rebuy_core::Deal) {
        self.deals.push(deal.clone());
        if self.deals.len() >= Self::BATCH {
            self.flush();
        }
    }
}

/// The analytics bench on the sidecar's own path: the synthetic portal is generated into a
/// redb cache in `dir` first (timed and printed, but not part of the analysis figure), then
/// read back record by record into the dataset builder and analysed.
fn bench_analytics_from_cache(
    dir: &std::path::Path,
    customers: usize,
    deals: usize,
    export: Option<&std::path::Path>,
) -> Result<(
    crate::analytics::bench::BenchReport,
    Option<crate::analytics::bgnbd::BgNbdParams>,
)> {
    let path = dir.join("bench.redb");
    let store = Store::open_path(&path, rebuy_core::PortalId::from("bench"))?;
    let started = Instant::now();
    let mut sink = CacheSink {
        store: store.clone(),
        contacts: Vec::with_capacity(CacheSink::BATCH),
        deals: Vec::with_capacity(CacheSink::BATCH),
        error: None,
    };
    crate::analytics::bench::feed_synthetic(&mut sink, customers, deals, 42);
    sink.flush();
    if let Some(e) = sink.error {
        return Err(e).context("writing the synthetic portal into the cache");
    }
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    println!(
        "cache: {customers} contacts + {deals} deals written in {:.1} s ({:.0} MiB; not part of the figures below)",
        started.elapsed().as_secs_f64(),
        size as f64 / (1024.0 * 1024.0)
    );
    // Peak RSS from here on: the writing above is set-up (Linux resets VmHWM on "5").
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let t0 = Instant::now();
    let data = crate::analyse::load_dataset_with(&store, &crate::analytics::Settings::default())
        .context("reading the synthetic portal back from the cache")?;
    let build = t0.elapsed();
    Ok(crate::analytics::bench::bench_dataset(
        &data,
        "read cache + build",
        build,
        (customers, deals),
        export,
    ))
}

/// Target render time of a dashboard page.
const UI_TARGET: Duration = Duration::from_millis(200);

/// `rebuy bench ui`: builds the dashboard's cached view of a synthetic portal (the analysis and
/// its monthly trend), fills its outbox, then times each page through the real router (session
/// cookie, every middleware) and prints p50 / p99 per page. The CRM is not reachable (the
/// mapping page shows the cached pipelines, as it does when a CRM is down).
async fn bench_ui(customers: usize, deals: usize, requests: usize, outbox: usize) -> Result<()> {
    use crate::analytics::bench::{SYNTHETIC_AS_OF, synthetic_dataset};
    use crate::outbox::{Action, ActionState};
    use axum::body::Body;
    use rebuy_core::{DealId, PipelineId, Stage, StageId, StageKind, User, UserId, WriteOp};
    use tower::ServiceExt as _;

    let requests = requests.max(2);
    let dir = tempfile::tempdir()?;
    // Port 1 on loopback: nothing listens, so the CRM is unreachable at once.
    let portal = crate::demo::emulator_portal(
        "bench",
        "http://127.0.0.1:1",
        "bench-client",
        "http://127.0.0.1:1/callback",
        7,
    )?;
    let store = Store::open(dir.path(), &portal.id)?;
    let t0 = Instant::now();
    let (view, pipelines) = {
        let cfg = portal.clone();
        tokio::task::spawn_blocking(move || {
            let data = synthetic_dataset(customers, deals, 42);
            let as_of: jiff::Timestamp = SYNTHETIC_AS_OF.parse().expect("valid instant");
            let analysis =
                crate::analytics::analyse(&data, &cfg.analytics, as_of, jiff::tz::TimeZone::UTC);
            let months = crate::ui::monthly(&data, &analysis, &cfg, 12);
            let pipelines: Vec<rebuy_core::Pipeline> = data
                .pipelines
                .iter()
                .map(|id| rebuy_core::Pipeline {
                    id: PipelineId(*id),
                    name: format!("Pipeline {id}"),
                    is_main: *id == 1,
                    sort: 0,
                    stages: data
                        .stages
                        .iter()
                        .enumerate()
                        .map(|(i, s)| Stage {
                            id: StageId(s.clone()),
                            name: format!("Stage {s}"),
                            sort: i as i64,
                            kind: match s.as_str() {
                                "142" => StageKind::Won,
                                "143" => StageKind::Lost,
                                _ => StageKind::Open,
                            },
                        })
                        .collect(),
                })
                .collect();
            (crate::ui::PortalView::new(analysis, months), pipelines)
        })
        .await?
    };
    let built = t0.elapsed();
    let users: Vec<User> = (1..=20)
        .map(|i| User {
            id: UserId(i),
            name: format!("Manager {i}"),
            email: None,
            active: true,
        })
        .collect();
    let actions: Vec<Action> = (0..outbox)
        .map(|i| Action {
            merged: Vec::new(),
            key: format!("bench/after_purchase_7/contact:{i}/2025-01-01"),
            op: WriteOp::MoveDeal {
                deal: DealId(i as u64 + 1),
                pipeline: PipelineId(1),
                stage: StageId("2".into()),
            },
            rule: "after_purchase_7".into(),
            customer: format!("contact:{i}"),
            summary: format!("move deal {} to stage 2", i + 1),
        })
        .collect();
    let failed_keys: Vec<String> = actions.iter().step_by(100).map(|a| a.key.clone()).collect();
    store
        .blocking(move |s| {
            s.write(|w| {
                w.put_all(&pipelines)?;
                w.put_all(&users)
            })?;
            s.outbox_enqueue(actions)?;
            let mut failed = Vec::new();
            for k in &failed_keys {
                if let Some(mut e) = s.outbox_get(k)? {
                    e.state = ActionState::Failed {
                        code: "rejected".into(),
                        message: "stage is closed".into(),
                        at: jiff::Timestamp::now(),
                    };
                    failed.push(e);
                }
            }
            s.outbox_update(&failed)
        })
        .await?;

    let buyers = view.analysis.customers.len();
    let state = crate::server::AppState::from_stores(vec![(portal.clone(), store)], true);
    // What the pages' background refresh of the outbox costs (at most once per OUTBOX_TTL).
    let rt = state.portal("bench").context("bench portal")?.clone();
    let t1 = Instant::now();
    tokio::task::spawn_blocking(move || crate::ui::OutboxSnapshot::read(&rt)).await??;
    let outbox_read = t1.elapsed();
    let mut settings = crate::ui::UiSettings::single("bench", "bench");
    settings.cache_ttl = Duration::from_secs(24 * 3600);
    let ui = crate::ui::UiState::new(state, settings);
    ui.put_view(&portal.id, view);
    let (sid, _) = ui
        .sessions
        .create(Some("bench".into()), Duration::from_secs(3600));
    let cookie = format!("{}={sid}", crate::ui::auth::SESSION_COOKIE);
    let app = axum::Router::new().nest("/ui", crate::ui::router_with(ui));

    let pages = [
        ("portals", "/ui".to_string()),
        ("overview", "/ui/p/bench".into()),
        ("rfm heatmap + abc/xyz", "/ui/p/bench/rfm".into()),
        ("rfm by revenue", "/ui/p/bench/rfm?by=revenue".into()),
        ("segments, all (page 1)", "/ui/p/bench/segments".into()),
        (
            "segments, all (page 5000)",
            "/ui/p/bench/segments?page=5000".into(),
        ),
        (
            "segments, champions",
            "/ui/p/bench/segments?segment=champions".into(),
        ),
        (
            "segments, heat cell r5 f5",
            "/ui/p/bench/segments?r=5&f=5".into(),
        ),
        (
            "segments, search by phone",
            "/ui/p/bench/segments?q=79000012345".into(),
        ),
        (
            "segments, search by name",
            "/ui/p/bench/segments?q=%D0%BA%D0%BB%D0%B8%D0%B5%D0%BD%D1%82+99999".into(),
        ),
        ("touches", "/ui/p/bench/touches".into()),
        ("touches, failed", "/ui/p/bench/touches?state=failed".into()),
        ("mapping (CRM offline)", "/ui/p/bench/mapping".into()),
    ];
    println!(
        "bench ui: {customers} customers, {deals} deals ({buyers} buyers), outbox {outbox}; cached view built in {:.1} s; {requests} requests per page",
        built.as_secs_f64()
    );
    println!(
        "  outbox snapshot read in {:.0} ms (in the background, at most every {} s)",
        outbox_read.as_secs_f64() * 1e3,
        crate::ui::OUTBOX_TTL.as_secs()
    );
    println!(
        "  {:<28} {:>9} {:>9} {:>9} {:>10}",
        "page", "p50 ms", "p99 ms", "max ms", "bytes"
    );
    let mut over = Vec::new();
    for (name, path) in &pages {
        let mut times = Vec::with_capacity(requests);
        let mut bytes = 0;
        // One warm-up request, not counted.
        for i in 0..=requests {
            let req = axum::http::Request::get(path.as_str())
                .header("cookie", &cookie)
                .body(Body::empty())?;
            let started = Instant::now();
            let res = app.clone().oneshot(req).await?;
            let status = res.status();
            let body = axum::body::to_bytes(res.into_body(), usize::MAX).await?;
            let took = started.elapsed();
            if status != axum::http::StatusCode::OK {
                bail!(
                    "{path}: status {status}: {}",
                    String::from_utf8_lossy(&body[..body.len().min(300)])
                );
            }
            bytes = body.len();
            if i > 0 {
                times.push(took);
            }
        }
        times.sort();
        let q = |p: f64| times[((times.len() - 1) as f64 * p).round() as usize];
        let (p50, p99, max) = (q(0.5), q(0.99), times[times.len() - 1]);
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "  {name:<28} {:>9.1} {:>9.1} {:>9.1} {bytes:>10}",
            ms(p50),
            ms(p99),
            ms(max)
        );
        if p99 > UI_TARGET {
            over.push(*name);
        }
    }
    if over.is_empty() {
        println!("  every page p99 <= {} ms", UI_TARGET.as_millis());
    } else {
        println!(
            "  over {} ms at p99: {}",
            UI_TARGET.as_millis(),
            over.join(", ")
        );
    }
    Ok(())
}
