//! `rebuy sync`: the progress bar and the report of a pull.

use super::*;

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
) -> Result<rebuy::sync::SyncReport, rebuy::sync::SyncError> {
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
    let result = rebuy::sync::sync_portal(conn, store, opts, progress.clone()).await;
    ticker.abort();
    progress.finish();
    result
}

/// Prints a sync report.
/// `burst` is the CRM's allowance of requests above the rate (Bitrix24's bucket: 50; amoCRM: 0):
/// a run that fits in it is reported as such, not as a share of the per-second ceiling.
pub fn print_sync_report(
    portal: &str,
    r: &rebuy::sync::SyncReport,
    ceiling_rps: Option<u32>,
    burst: u64,
) {
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

pub(super) async fn cmd_sync(cfg: &Config, args: &SyncArgs) -> Result<ExitCode> {
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
