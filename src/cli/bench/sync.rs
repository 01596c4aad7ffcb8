//! `rebuy bench sync`: a full sync from an emulator running as a child process, against the
//! rate ceiling; `--compare-fast-bitrix24` lists the same portal with the Python client too.
use super::*;

/// A child `rebuy emulate` process, killed on drop.
struct ChildEmulator(std::process::Child);
impl Drop for ChildEmulator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(super) async fn wait_listening(port: u16, limit: Duration) -> Result<()> {
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

impl rebuy::sync::Progress for Samples {
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
pub(super) struct SyncCase {
    pub(super) contacts: usize,
    pub(super) leads: usize,
    pub(super) rate: u32,
    pub(super) product_rows: bool,
    /// Bitrix24: the emulated portal's time per call.
    pub(super) call_time_ms: u64,
}

pub(super) async fn bench_sync(
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
            rebuy::emulated::emulator_b24_portal("bench", &base_url, &emu)?
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
    let opts = rebuy::portal::sync_options(&p, true);
    let samples = std::sync::Arc::new(Samples {
        started: Instant::now(),
        conn: std::sync::OnceLock::new(),
        points: std::sync::Mutex::new(Vec::new()),
        records: std::sync::atomic::AtomicU64::new(0),
    });
    let _ = samples.conn.set(handle.connector.clone());
    let report = rebuy::sync::sync_portal(handle.connector, store, &opts, samples.clone()).await?;
    let secs = report.elapsed.as_secs_f64();
    let records = report.records();
    let per_sec = records as f64 / secs;
    let per_request = rebuy::portal::records_per_request(&p);
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
