//! Synthetic portals and timings for `rebuy bench analytics`: generates contacts and deals
//! (deterministic for a seed), streams them through the [`DatasetBuilder`], runs [`analyse`] and
//! times the BG/NBD fit alone. Target: 1M customers / 5M deals in <= 10 s with peak RSS <= 2 GB
//! on 2 cores; the BG/NBD fit on 1M customers in <= 1 s.
use super::{Analysis, Dataset, DatasetBuilder, Settings, analyse, bgnbd, day_of_date};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use rebuy_core::phone::Phone;
use rebuy_core::{
    Contact, ContactId, Currency, Deal, DealId, DealState, Money, PipelineId, StageId,
};
use rust_decimal::Decimal;
use std::fmt;
use std::time::{Duration, Instant};

/// The analysis date of the synthetic portals: the end of their three years of history (so
/// the backtest has a holdout with purchases).
pub const SYNTHETIC_AS_OF: &str = "2024-01-01T00:00:00Z";
const START: i64 = 1_609_459_200; // 2021-01-01T00:00:00Z
const SPAN_DAYS: i64 = 3 * 365 + 1;

/// splitmix64: small, fast, deterministic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Where [`feed_synthetic`] sends its records: straight into a [`DatasetBuilder`], or into a
/// portal cache for a benchmark that reads them back the way the sidecar does.
pub trait SyntheticSink {
    /// Takes one contact.
    fn add_contact(&mut self, contact: &Contact);
    /// Takes one deal.
    fn add_deal(&mut self, deal: &Deal);
}

impl SyntheticSink for DatasetBuilder {
    fn add_contact(&mut self, contact: &Contact) {
        DatasetBuilder::add_contact(self, contact);
    }
    fn add_deal(&mut self, deal: &Deal) {
        DatasetBuilder::add_deal(self, deal);
    }
}

/// Streams a synthetic portal into `builder`: `customers` contacts (about 1% share a phone with
/// another contact, so identities merge) and `deals` deals (80% won, 10% lost, 10% open) spread
/// over three years with customer-specific activity, amounts 500..50 000 RUB.
pub fn feed_synthetic(builder: &mut impl SyntheticSink, customers: usize, deals: usize, seed: u64) {
    let mut rng = Rng(seed);
    let created = Timestamp::from_second(START).expect("valid start");
    for i in 0..customers as u64 {
        // 1% of contacts reuse the phone of an earlier contact (a duplicate).
        let phone_of = if i > 0 && rng.below(100) == 0 {
            rng.below(i)
        } else {
            i
        };
        let phone = format!("+7900{:07}", phone_of % 10_000_000);
        builder.add_contact(&Contact {
            id: ContactId(i + 1),
            name: format!("Клиент {}", i + 1),
            phones: vec![Phone {
                raw: phone.clone(),
                e164: Some(phone),
            }],
            emails: vec![format!("client{}@example.ru", i + 1)],
            company_id: None,
            responsible_user_id: None,
            created_at: created,
            updated_at: created,
            custom_fields: vec![],
        });
    }
    // Deals per customer: most buy once or twice, a few buy often (a heavy-tailed mix), scaled
    // to the requested total.
    let mean = deals as f64 / customers.max(1) as f64;
    let mut left = deals;
    let mut id = 0u64;
    let rub = Currency::new("RUB");
    for c in 0..customers {
        let remaining_customers = customers - c;
        let k = if remaining_customers == 1 {
            left
        } else {
            let heavy = rng.unit() < 0.15;
            let draw = if heavy {
                mean * 4.0 * rng.unit() * 1.6
            } else {
                1.0 + rng.unit() * (mean * 0.9)
            };
            (draw.round() as usize)
                .clamp(1, left.saturating_sub(remaining_customers - 1).max(1))
                .min(left)
        };
        left -= k;
        let first = rng.below(SPAN_DAYS as u64 - 30) as i64;
        // Active for a customer-specific part of the rest of the span.
        let active = 1 + rng.below((SPAN_DAYS - first) as u64) as i64;
        for _ in 0..k {
            id += 1;
            let day = first + rng.below(active as u64) as i64;
            let at = START + day * 86_400 + rng.below(86_400) as i64;
            let state = match rng.below(10) {
                0 => DealState::Lost,
                1 => DealState::Open,
                _ => DealState::Won,
            };
            let created_at = Timestamp::from_second(at - 3_600).expect("valid");
            let amount = Decimal::from(500 + rng.below(49_500));
            builder.add_deal(&Deal {
                id: DealId(id),
                name: String::new(),
                pipeline_id: PipelineId(1),
                stage_id: StageId::from(match state {
                    DealState::Won => "142",
                    DealState::Lost => "143",
                    DealState::Open => "100",
                }),
                state,
                amount: Some(Money::new(amount, rub.clone())),
                main_contact_id: Some(ContactId(c as u64 + 1)),
                contact_ids: vec![ContactId(c as u64 + 1)],
                company_id: None,
                responsible_user_id: None,
                created_at,
                updated_at: created_at,
                closed_at: (state != DealState::Open)
                    .then(|| Timestamp::from_second(at).expect("valid")),
                products: vec![],
                custom_fields: vec![],
            });
        }
    }
}

/// A synthetic portal (see [`feed_synthetic`]) built with the default settings.
pub fn synthetic_dataset(customers: usize, deals: usize, seed: u64) -> Dataset {
    let mut b = DatasetBuilder::new(&Settings::default());
    feed_synthetic(&mut b, customers, deals, seed);
    b.build()
}

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

/// Peak RSS of this process from `/proc/self/status` (`VmHWM`), in bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Generates a portal, builds, analyses and fits BG/NBD alone, timing each step.
pub fn bench(customers: usize, deals: usize) -> BenchReport {
    bench_export(customers, deals, None).0
}

/// Like [`bench`]; with `export`, also writes the BG/NBD summary the fit used (distinct
/// `frequency,recency,T,weight` rows, time in days) as CSV for a side-by-side fit by another
/// tool, and returns the fitted parameters.
pub fn bench_export(
    customers: usize,
    deals: usize,
    export: Option<&std::path::Path>,
) -> (BenchReport, Option<bgnbd::BgNbdParams>) {
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
) -> (BenchReport, Option<bgnbd::BgNbdParams>) {
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
        if let Ok(f) = std::fs::File::create(path) {
            let mut w = std::io::BufWriter::new(f);
            let _ = writeln!(w, "frequency,recency,T,weight");
            for r in &rows {
                let _ = writeln!(w, "{},{},{},{}", r.x, r.t_x, r.t, r.count);
            }
        }
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
    (report, fit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_bench_runs() {
        let r = bench(2_000, 10_000);
        assert!(r.buyers > 1_000, "{r}");
        assert!(r.fit_rows <= r.fit_customers);
    }

    /// `cargo test --release -p rebuy --lib analytics::bench::tests::full_size -- --ignored --nocapture`
    #[test]
    #[ignore = "1M customers / 5M deals: run in release"]
    fn full_size() {
        let r = bench(1_000_000, 5_000_000);
        eprintln!("{r}");
    }
}
