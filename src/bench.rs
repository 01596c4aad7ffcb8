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
