//! The CDNOW reproduction (see `tests/fixtures/cdnow/README.md`): customer summaries computed
//! by the engine from the raw transactions equal the published ones, and the fitted BG/NBD and
//! Gamma-Gamma parameters agree with the published ones within 0.5%.
use super::tests::{contact, won};
use super::*;
use rebuy_core::{Currency, Money};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/cdnow/");

fn read(name: &str) -> String {
    std::fs::read_to_string(format!("{DIR}{name}"))
        .unwrap_or_else(|e| panic!("reading {name}: {e}"))
}

fn csv_rows(name: &str) -> Vec<Vec<f64>> {
    read(name)
        .lines()
        .skip(1)
        .map(|l| {
            l.split(',')
                .map(|v| v.trim().parse().expect("number"))
                .collect()
        })
        .collect()
}

fn within(got: f64, want: f64, tol: f64) -> bool {
    ((got - want) / want).abs() <= tol
}

const BG: [f64; 4] = [0.242593, 4.413532, 0.792886, 2.425752];
const GG: [f64; 3] = [6.248802, 3.744588, 15.447748];

fn assert_bg(p: &BgNbdParams, alpha_unit: f64, what: &str) {
    let got = [p.r, p.alpha / alpha_unit, p.a, p.b];
    eprintln!(
        "{what}: bg/nbd r={:.6} alpha={:.6} a={:.6} b={:.6} ll={:.2}",
        got[0], got[1], got[2], got[3], p.log_likelihood
    );
    for (i, name) in ["r", "alpha", "a", "b"].iter().enumerate() {
        assert!(
            within(got[i], BG[i], 0.005),
            "{what}: {name} = {} vs {}",
            got[i],
            BG[i]
        );
    }
}

fn assert_gg(p: &GammaGammaParams, what: &str) {
    let got = [p.p, p.q, p.gamma];
    eprintln!(
        "{what}: gamma-gamma p={:.6} q={:.6} gamma={:.6}",
        got[0], got[1], got[2]
    );
    for (i, name) in ["p", "q", "gamma"].iter().enumerate() {
        assert!(
            within(got[i], GG[i], 0.005),
            "{what}: {name} = {} vs {}",
            got[i],
            GG[i]
        );
    }
}

#[test]
fn bgnbd_fit_on_published_summary_matches_lifetimes() {
    let rows: Vec<(u32, f64, f64)> = csv_rows("cdnow_customers_summary.csv")
        .iter()
        .map(|r| (r[1] as u32, r[2], r[3]))
        .collect();
    assert_eq!(rows.len(), 2357);
    let agg = bgnbd::aggregate(rows);
    let p = bgnbd::fit(&agg).expect("fit");
    assert!(p.converged);
    assert_bg(&p, 1.0, "published summary");
    assert!(
        (p.log_likelihood - -9582.4).abs() < 0.5,
        "ll {}",
        p.log_likelihood
    );
}

fn published_summary() -> Vec<bgnbd::SummaryRow> {
    let rows: Vec<(u32, f64, f64)> = csv_rows("cdnow_customers_summary.csv")
        .iter()
        .map(|r| (r[1] as u32, r[2], r[3]))
        .collect();
    bgnbd::aggregate(rows)
}

fn assert_params(what: &str, got: [f64; 4], want: [f64; 4], names: [&str; 4]) {
    eprintln!("{what}: {names:?} = {got:?}");
    for i in 0..4 {
        assert!(
            within(got[i], want[i], 0.005),
            "{what}: {} = {} vs {}",
            names[i],
            got[i],
            want[i]
        );
    }
}

#[test]
fn pareto_nbd_fit_on_published_summary_matches_published() {
    let rows = published_summary();
    let t0 = std::time::Instant::now();
    let p = pareto_nbd::fit(&rows).expect("fit");
    eprintln!(
        "pareto/nbd fit in {:?}, ll {:.2}",
        t0.elapsed(),
        p.log_likelihood
    );
    assert!(p.converged);
    assert_params(
        "pareto/nbd",
        [p.r, p.alpha, p.s, p.beta],
        [0.5533, 10.577, 0.6063, 11.669],
        ["r", "alpha", "s", "beta"],
    );
}

#[test]
fn mbgnbd_fit_on_published_summary_matches_published() {
    let rows = published_summary();
    let t0 = std::time::Instant::now();
    let p = mbgnbd::fit(&rows).expect("fit");
    eprintln!(
        "mbg/nbd fit in {:?}, ll {:.2}",
        t0.elapsed(),
        p.log_likelihood
    );
    assert!(p.converged);
    assert_params(
        "mbg/nbd",
        [p.r, p.alpha, p.a, p.b],
        [0.5248, 6.183, 0.8914, 1.614],
        ["r", "alpha", "a", "b"],
    );
}

#[test]
fn gamma_gamma_fit_on_published_summary_matches_lifetimes() {
    let rows: Vec<(f64, f64)> = csv_rows("cdnow_customers_summary_with_transactions.csv")
        .iter()
        .filter(|r| r[1] > 0.0)
        .map(|r| (r[1], r[4]))
        .collect();
    assert_eq!(rows.len(), 946);
    let p = gamma_gamma::fit(&rows).expect("fit");
    assert!(p.converged);
    assert_gg(&p, "published summary");
}

/// The raw transactions as a portal: one contact per customer, one won deal per transaction
/// (created and closed at noon UTC on its date), amounts in USD.
fn cdnow_portal() -> (Settings, Dataset) {
    let s = Settings {
        currency: Some("USD".into()),
        ..Settings::default()
    };
    let mut b = DatasetBuilder::new(&s);
    let mut last_contact = 0;
    for (i, line) in read("CDNOW_sample.txt").lines().enumerate() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let id: u64 = f[1].parse().expect("sample id");
        let date = format!("{}-{}-{}", &f[2][..4], &f[2][4..6], &f[2][6..8]);
        if id != last_contact {
            b.add_contact(&contact(
                id,
                &format!("customer {}", f[0]),
                &[],
                &[],
                "1996-12-31",
            ));
            last_contact = id;
        }
        let mut d = won(i as u64 + 1, id, &date, f[4].parse().expect("dollars"));
        d.amount = Some(Money::new(
            f[4].parse().expect("dollars"),
            Currency::new("USD"),
        ));
        b.add_deal(&d);
    }
    (s, b.build())
}

#[test]
fn summaries_from_raw_transactions_equal_the_published_ones() {
    let (s, data) = cdnow_portal();
    // End of the 39-week calibration period.
    let a = analyse(
        &data,
        &s,
        "1997-09-30T23:59:59Z".parse().unwrap(),
        TimeZone::UTC,
    );
    assert_eq!(a.customers.len(), 2357);
    let want = csv_rows("cdnow_customers_summary.csv");
    let weeks = |from: jiff::civil::Date, to: jiff::civil::Date| {
        (day_of_date(to) - day_of_date(from)) as f64 / 7.0
    };
    for w in &want {
        let key = CustomerKey::Contact(ContactId(w[0] as u64));
        let c = a.customers.iter().find(|c| c.key == key).expect("customer");
        let frequency = (c.purchases - 1) as f64;
        let recency = weeks(c.first_purchase, c.last_purchase);
        let t = weeks(c.first_purchase, a.as_of_date);
        assert_eq!(frequency, w[1], "frequency of {}", w[0]);
        assert!(
            (recency - w[2]).abs() <= 0.005 + 1e-9,
            "recency of {}: {recency} vs {}",
            w[0],
            w[2]
        );
        assert!(
            (t - w[3]).abs() <= 0.005 + 1e-9,
            "T of {}: {t} vs {}",
            w[0],
            w[3]
        );
    }
    // The default RFM grid shows the base: every F column (1, 2, 3-4, 5-7, 8+) holds customers.
    for f in 0..5 {
        assert!(
            (0..5).any(|r| a.rfm_grid.cells[r][f].customers > 0),
            "F{} empty: {:?}",
            f + 1,
            a.rfm_grid
        );
    }
    // The engine's own fits, in days: alpha in days = alpha in weeks x 7.
    let bg = a.models.bgnbd.expect("bg/nbd fitted");
    assert_bg(&bg, 7.0, "engine, raw transactions");
    let gg = a.models.gamma_gamma.expect("gamma-gamma fitted");
    assert_gg(&gg, "engine, raw transactions");
}

/// The 39 + 39 week backtest on the raw transactions: every model fitted on the calibration
/// weeks, scored on the holdout; the chosen model reaches Pareto/NBD's published figures.
#[test]
fn backtest_of_the_published_split() {
    let b = backtest::cdnow();
    let table = backtest::render_table(&b);
    eprintln!("{table}");
    // The table's fixed interface: MAE, MAPE and AUC columns, the chosen row marked `chosen`.
    let header = table.lines().find(|l| l.contains("MAE")).expect("a header");
    assert!(
        header.contains("MAPE") && header.contains("AUC"),
        "{header}"
    );
    let marked: Vec<&str> = table.lines().filter(|l| l.contains("chosen")).collect();
    let chosen_name = &b.rows.iter().find(|r| r.chosen).expect("chosen").name;
    assert!(
        marked.iter().any(|l| l.contains(chosen_name.as_str())),
        "{chosen_name} not marked:\n{table}"
    );
    assert_eq!(b.customers, 2357);
    let actual = b.rows[0].actual;
    assert_eq!(actual, 1882.0);
    let chosen = b.rows.iter().find(|r| r.chosen).expect("chosen");
    assert_eq!(chosen.kind, backtest::Kind::Model, "{}", b.reason);
    // Pareto/NBD's published per-customer MAE and cumulative tracking MAPE (over the holdout
    // weeks) on this split.
    assert!(chosen.mae <= 0.755, "MAE {}", chosen.mae);
    assert!(chosen.mape_pct <= 1.33, "MAPE {}", chosen.mape_pct);
    assert!(chosen.holdout_mape_pct.is_finite());
    let hiatus = b.rows.iter().find(|r| r.name == "hiatus").expect("hiatus");
    assert!(
        chosen.auc > hiatus.auc,
        "AUC {} vs {}",
        chosen.auc,
        hiatus.auc
    );
}
