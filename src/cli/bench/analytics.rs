//! `rebuy bench analytics`: builds a synthetic portal (generated straight into the dataset, or
//! read back from a portal cache), runs the analysis and times the BG/NBD fit alone. Target:
//! 1M customers / 5M deals in <= 10 s with peak RSS <= 2 GB on 2 cores; the BG/NBD fit on 1M
//! customers in <= 1 s.
use super::peak_rss_bytes;
use anyhow::{Context, Result};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use rebuy::analytics::synthetic::{SYNTHETIC_AS_OF, synthetic_dataset};
use rebuy::analytics::{Analysis, Dataset, Settings, analyse, bgnbd, day_of_date};
use rebuy::store::Store;
use std::fmt;
use std::time::{Duration, Instant};

/// Timings of one benchmark run.
#[derive(Debug, Clone)]
pub struct BenchReport {
    /// Customers (contacts) generated.
    pub customers: usize,
    /// Deals generated.
    pub deals: usize,
    /// Where the records came from: generated straight into the builder, or read back from a
    /// portal cache they were generated into beforehand (the sidecar's own path).
    pub source: &'static str,
    /// Streaming the records into the builder (generating them, or reading them from the
    /// cache), plus `build`.
    pub build: Duration,
    /// The whole `analyse` (identity-indexed pass, scores, both model fits, predictions).
    pub analyse: Duration,
    /// The BG/NBD fit alone (aggregation + maximum likelihood) on the analysed customers.
    pub bgnbd_fit: Duration,
    /// Customers the BG/NBD was fitted on, and the distinct rows they collapsed to.
    pub fit_customers: usize,
    /// Distinct (x, t_x, T) rows.
    pub fit_rows: usize,
    /// Peak resident set size in bytes (Linux `VmHWM`), when known.
    pub peak_rss_bytes: Option<u64>,
    /// Customers with at least one purchase in the analysis.
    pub buyers: usize,
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "analytics benchmark: {} customers, {} deals",
            self.customers, self.deals
        )?;
        writeln!(
            f,
            "  {:<26} {:>8.3} s",
            self.source,
            self.build.as_secs_f64()
        )?;
        writeln!(
            f,
            "  analyse (incl. model fits) {:>8.3} s",
            self.analyse.as_secs_f64()
        )?;
        writeln!(
            f,
            "  total                      {:>8.3} s",
            (self.build + self.analyse).as_secs_f64()
        )?;
        writeln!(
            f,
            "  bg/nbd fit alone           {:>8.3} s ({} customers -> {} distinct rows)",
            self.bgnbd_fit.as_secs_f64(),
            self.fit_customers,
            self.fit_rows
        )?;
        writeln!(f, "  buyers                     {:>8}", self.buyers)?;
        match self.peak_rss_bytes {
            Some(b) => writeln!(
                f,
                "  peak RSS                   {:>8.0} MiB",
                b as f64 / (1024.0 * 1024.0)
            ),
            None => writeln!(f, "  peak RSS                   unknown"),
        }
    }
}

/// Generates a portal, builds, analyses and fits BG/NBD alone, timing each step; with `export`, also writes the BG/NBD summary the fit used (distinct
/// `frequency,recency,T,weight` rows, time in days) as CSV for a side-by-side fit by another
/// tool, and returns the fitted parameters.
pub fn bench_export(
    customers: usize,
    deals: usize,
    export: Option<&std::path::Path>,
) -> Result<(BenchReport, Option<bgnbd::BgNbdParams>)> {
    let t0 = Instant::now();
    let data = synthetic_dataset(customers, deals, 42);
    let build = t0.elapsed();
    bench_dataset(
        &data,
        "generate + stream + build",
        build,
        (customers, deals),
        export,
    )
}

/// Analyses an already built synthetic portal (`size` = customers and deals it was generated
/// with, `build` = how long building it took, from `source`), timing the analysis and the BG/NBD
/// fit alone; with `export`, writes the fit's summary rows as CSV.
pub fn bench_dataset(
    data: &Dataset,
    source: &'static str,
    build: Duration,
    (customers, deals): (usize, usize),
    export: Option<&std::path::Path>,
) -> Result<(BenchReport, Option<bgnbd::BgNbdParams>)> {
    let settings = Settings::default();
    let as_of: Timestamp = SYNTHETIC_AS_OF.parse().expect("valid");
    let t1 = Instant::now();
    let analysis: Analysis = analyse(data, &settings, as_of, TimeZone::UTC);
    let analyse_time = t1.elapsed();
    let as_of_day = day_of_date(analysis.as_of_date);
    let summaries: Vec<(u32, f64, f64)> = analysis
        .customers
        .iter()
        .map(|c| {
            let (first, last) = (day_of_date(c.first_purchase), day_of_date(c.last_purchase));
            (
                c.purchases - 1,
                (last - first) as f64,
                (as_of_day - first) as f64,
            )
        })
        .collect();
    let fit_customers = summaries.len();
    let t2 = Instant::now();
    let rows = bgnbd::aggregate(summaries);
    let fit = bgnbd::fit(&rows);
    let bgnbd_fit = t2.elapsed();
    if let Some(path) = export {
        use std::io::Write as _;
        let write = || -> std::io::Result<()> {
            let mut w = std::io::BufWriter::new(std::fs::File::create(path)?);
            writeln!(w, "frequency,recency,T,weight")?;
            for r in &rows {
                writeln!(w, "{},{},{},{}", r.x, r.t_x, r.t, r.count)?;
            }
            w.flush()
        };
        write().with_context(|| format!("writing the fit summary to {}", path.display()))?;
    }
    let report = BenchReport {
        customers,
        deals,
        source,
        build,
        analyse: analyse_time,
        bgnbd_fit,
        fit_customers,
        fit_rows: rows.len(),
        peak_rss_bytes: peak_rss_bytes(),
        buyers: analysis.customers.len(),
    };
    Ok((report, fit))
}

/// Collects synthetic records into a portal cache in transactions of [`CacheSink::BATCH`].
struct CacheSink {
    store: Store,
    contacts: Vec<rebuy_core::Contact>,
    deals: Vec<rebuy_core::Deal>,
    error: Option<rebuy::store::StoreError>,
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

impl rebuy::analytics::synthetic::SyntheticSink for CacheSink {
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
pub(super) fn bench_analytics_from_cache(
    dir: &std::path::Path,
    customers: usize,
    deals: usize,
    export: Option<&std::path::Path>,
) -> Result<(BenchReport, Option<rebuy::analytics::bgnbd::BgNbdParams>)> {
    let path = dir.join("bench.redb");
    let store = Store::open_path(&path, rebuy_core::PortalId::from("bench"))?;
    let started = Instant::now();
    let mut sink = CacheSink {
        store: store.clone(),
        contacts: Vec::with_capacity(CacheSink::BATCH),
        deals: Vec::with_capacity(CacheSink::BATCH),
        error: None,
    };
    rebuy::analytics::synthetic::feed_synthetic(&mut sink, customers, deals, 42);
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
    let data = rebuy::analyse::load_dataset_with(&store, &rebuy::analytics::Settings::default())
        .context("reading the synthetic portal back from the cache")?;
    let build = t0.elapsed();
    bench_dataset(
        &data,
        "read cache + build",
        build,
        (customers, deals),
        export,
    )
}

/// Fits BG/NBD with the Python package `lifetimes` on the exported summary and prints the
/// time and the ratio to rebuy's fit.
pub(super) fn compare_with_lifetimes(csv: &std::path::Path, rebuy_fit: Duration) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_bench_runs() {
        let r = bench_export(2_000, 10_000, None).unwrap().0;
        assert!(r.buyers > 1_000, "{r}");
        assert!(r.fit_rows <= r.fit_customers);
    }

    /// `cargo test --release -p rebuy --bin rebuy cli::bench::analytics::tests::full_size -- --ignored --nocapture`
    #[test]
    #[ignore = "1M customers / 5M deals: run in release"]
    fn full_size() {
        let r = bench_export(1_000_000, 5_000_000, None).unwrap().0;
        eprintln!("{r}");
    }
}
