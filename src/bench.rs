//! `rebuy bench ...`: benchmarks that print their figures (speed and memory targets are checked
//! here, never by timed tests).
//!
//! `rebuy bench sync` runs the amoCRM emulator as a child process (so the peak RSS measured is
//! the sidecar's alone, and the two share the machine's cores as they would in production),
//! syncs fully at the default 7 req/s and again with the limit raised, and prints records/s
//! against the ceiling, 429s seen and peak RSS.
use crate::cli::sync_with_progress;
use crate::demo::{authorize_automatically, emulator_portal};
use crate::portal;
use crate::store::Store;
use crate::sync::SyncOptions;
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
        /// Rate limits to run at (requests/s), one run each.
        #[arg(long, value_delimiter = ',', default_value = "7,1000")]
        rates: Vec<u32>,
    },
    /// The analytics on a synthetic base: dataset build, whole analysis, BG/NBD fit alone.
    Analytics {
        /// Customers.
        #[arg(long, default_value_t = 1_000_000)]
        customers: usize,
        /// Deals.
        #[arg(long, default_value_t = 5_000_000)]
        deals: usize,
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
        BenchCommand::Sync {
            contacts,
            leads,
            rates,
        } => {
            for rate in rates {
                bench_sync(contacts, leads, rate).await?;
            }
            Ok(())
        }
        BenchCommand::Analytics { customers, deals } => {
            let report = tokio::task::spawn_blocking(move || crate::analytics::bench::bench(customers, deals)).await?;
            println!("{report}");
            Ok(())
        }
        BenchCommand::Fuzz { bodies, seed } => {
            let started = Instant::now();
            // Caught panics would print their message: keep the output to the figures.
            std::panic::set_hook(Box::new(|_| {}));
            let r = tokio::task::spawn_blocking(move || crate::server::fuzz::run(bodies, seed)).await?;
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
        BenchCommand::Ingest { requests, concurrency, rate, seconds } => {
            bench_ingest(requests, concurrency, rate, seconds).await
        }
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

async fn bench_sync(contacts: usize, leads: usize, rate: u32) -> Result<()> {
    let port = free_port()?;
    let exe = std::env::current_exe().context("locating the rebuy binary")?;
    let child = std::process::Command::new(exe)
        .args([
            "emulate",
            "amocrm",
            "--port",
            &port.to_string(),
            "--contacts",
            &contacts.to_string(),
        ])
        .args(["--leads", &leads.to_string(), "--rate", &rate.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting the emulator child process")?;
    let _child = ChildEmulator(child);
    wait_listening(port, Duration::from_secs(120)).await?;
    let base_url = format!("http://127.0.0.1:{port}");
    let emu = rebuy_emulator::amocrm::AmoConfig::default();
    let p = emulator_portal("bench", &base_url, &emu.client_id, &emu.redirect_uri, rate)?;
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path(), &p.id)?;
    authorize_automatically(&p, &store).await?;
    let handle = portal::open(&p, store.clone())?;
    let opts = SyncOptions {
        full: true,
        overlap: Duration::from_secs(300),
        concurrency: p.sync.concurrency,
    };
    let report = sync_with_progress(handle.connector, store, &opts, true).await?;
    let secs = report.elapsed.as_secs_f64();
    let records = report.records();
    let per_sec = records as f64 / secs;
    let ceiling = f64::from(rate) * f64::from(p.sync.page_limit);
    println!("bench sync: {contacts} contacts + {leads} leads at {rate} req/s");
    println!("  records          {records}");
    println!("  time             {secs:.2} s");
    println!(
        "  requests         {} ({:.2}/s)",
        report.traffic.requests,
        report.traffic.requests as f64 / secs
    );
    println!("  records/s        {per_sec:.0}");
    println!(
        "  ceiling          {ceiling:.0} records/s ({rate} x {})",
        p.sync.page_limit
    );
    println!("  efficiency       {:.3}", per_sec / ceiling);
    println!("  429s seen        {}", report.traffic.rate_limited);
    println!("  retries          {}", report.traffic.retries);
    if let Some(rss) = peak_rss_bytes() {
        println!(
            "  peak RSS         {:.1} MB (this process; the emulator runs apart)",
            rss as f64 / 1e6
        );
    }
    Ok(())
}

/// Starts a server with one amoCRM portal (inbox on or off) on loopback; returns its hook URL.
async fn ingest_server(durable: bool, dir: &std::path::Path) -> Result<(String, tokio_util::sync::CancellationToken)> {
    let text = format!(
        "data_dir = {:?}\n[[portal]]\nid = \"bench\"\nkind = \"amocrm\"\nbase_url = \"http://127.0.0.1:9\"\n\
         [portal.auth]\ntype = \"long_lived_token\"\ntoken_env = \"T\"\n[portal.webhooks]\nsecret_env = \"S\"\n",
        dir.display().to_string()
    );
    use figment::providers::Format;
    let doc: serde_json::Value = figment::Figment::from(figment::providers::Toml::string(&text)).extract()?;
    let env = |k: &str| match k {
        "T" => Some("token".to_owned()),
        "S" => Some("bench-secret".to_owned()),
        _ => None,
    };
    let cfg = crate::config::resolve(&doc, "<bench>", &env).map_err(|p| anyhow::anyhow!("{}", crate::config::format_problems(&p)))?;
    let state = crate::server::AppState::new(&cfg, durable)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hooks/amocrm/bench/bench-secret", listener.local_addr()?);
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
    let client = reqwest::Client::builder().pool_max_idle_per_host(concurrency).build()?;
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

async fn ingest_latency(url: &str, rate: u64, seconds: u64, offset: u64) -> Result<(f64, f64, f64)> {
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
    println!("bench ingest: {requests} webhooks from {concurrency} senders; latency at {rate}/s for {seconds} s (loopback, same machine)");
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
    println!("  durable / upper bound: {:.2}", throughput[0] / throughput[1]);
    Ok(())
}
