//! Output of the analysis: `rebuy segments` rows as an aligned table, CSV or JSON, and the
//! `rebuy report` terminal tables (figures, RFM grid, segments, ABC x XYZ, models, warnings).
//! The CLI (owned elsewhere) parses its flags and calls these.
use super::{Analysis, CustomerRow};
use rust_decimal::Decimal;
use std::fmt::Write as _;
use std::io::{self, Write};
use std::str::FromStr;

/// Output format of `rebuy segments`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// Aligned columns for a terminal.
    #[default]
    Table,
    /// RFC 4180 CSV with a header row.
    Csv,
    /// A JSON array of row objects.
    Json,
}

impl FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "table" => Ok(Format::Table),
            "csv" => Ok(Format::Csv),
            "json" => Ok(Format::Json),
            other => Err(format!(
                "unknown format {other:?}: expected table, csv or json"
            )),
        }
    }
}

/// The columns of `rebuy segments`, in order.
pub const COLUMNS: [&str; 31] = [
    "customer",
    "contact_ids",
    "name",
    "phones",
    "emails",
    "first_purchase",
    "last_purchase",
    "purchases",
    "revenue",
    "recency_days",
    "r",
    "f",
    "m",
    "rfm_segment",
    "abc",
    "xyz",
    "tier",
    "cycle_days",
    "next_purchase",
    "cycle_status",
    "p_alive",
    "expected_purchases_90d",
    "clv",
    "company_ids",
    "deals",
    "one_time",
    "sleeping",
    "expected_order_value",
    "next_purchase_forecast",
    "next_purchase_50",
    "next_purchase_80",
];

/// An interval as `first..last`.
fn span(v: Option<(jiff::civil::Date, jiff::civil::Date)>) -> String {
    v.map_or_else(String::new, |(a, b)| format!("{a}..{b}"))
}

fn join<T: ToString>(v: &[T]) -> String {
    v.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(";")
}

fn opt<T>(v: Option<T>, f: impl Fn(T) -> String) -> String {
    v.map_or_else(String::new, f)
}

/// One row as the text cells of [`COLUMNS`].
pub fn cells(c: &CustomerRow) -> Vec<String> {
    vec![
        c.key.to_string(),
        join(&c.contact_ids),
        c.name.clone(),
        join(&c.phones),
        join(&c.emails),
        c.first_purchase.to_string(),
        c.last_purchase.to_string(),
        c.purchases.to_string(),
        c.revenue.to_string(),
        c.recency_days.to_string(),
        c.r.to_string(),
        c.f.to_string(),
        c.m.to_string(),
        c.rfm_segment.as_str().to_string(),
        c.abc.as_str().to_string(),
        c.xyz.as_str().to_string(),
        c.tier.as_str().to_string(),
        opt(c.cycle_days, |v| format!("{v:.1}")),
        opt(c.next_purchase, |v| v.to_string()),
        opt(c.cycle_status, |v| v.as_str().to_string()),
        opt(c.p_alive, |v| format!("{v:.4}")),
        opt(c.expected_purchases_90d, |v| format!("{v:.3}")),
        opt(c.clv, |v| v.to_string()),
        join(&c.company_ids),
        c.deals.to_string(),
        c.one_time.to_string(),
        c.sleeping.to_string(),
        opt(c.expected_order_value, |v| v.to_string()),
        opt(c.next_purchase_forecast, |v| v.date.to_string()),
        span(c.next_purchase_forecast.and_then(|v| v.interval_50)),
        span(c.next_purchase_forecast.and_then(|v| v.interval_80)),
    ]
}

/// One cell of an XLSX export: a value with its spreadsheet type.
#[derive(Debug, Clone, PartialEq)]
pub enum XlsxCell {
    /// Text, stored as a string cell (never read as a number or formula: phones keep their
    /// `+` and leading digits).
    Text(String),
    /// A number.
    Number(f64),
    /// An amount (a number cell; the decimal is converted only when the file is written).
    Money(Decimal),
    /// A date cell (`yyyy-mm-dd`).
    Date(jiff::civil::Date),
    /// TRUE / FALSE.
    Bool(bool),
    /// Nothing.
    Empty,
}

/// One row as typed cells, parallel to [`COLUMNS`] (the CSV's columns, the same values).
pub fn typed_cells(c: &CustomerRow) -> Vec<XlsxCell> {
    use XlsxCell::*;
    let round = |v: f64, dp: i32| {
        let k = 10f64.powi(dp);
        (v * k).round() / k
    };
    let opt_num = |v: Option<f64>, dp| v.map_or(Empty, |v| Number(round(v, dp)));
    let opt_money = |v: Option<Decimal>| v.map_or(Empty, Money);
    vec![
        Text(c.key.to_string()),
        Text(join(&c.contact_ids)),
        Text(c.name.clone()),
        Text(join(&c.phones)),
        Text(join(&c.emails)),
        Date(c.first_purchase),
        Date(c.last_purchase),
        Number(f64::from(c.purchases)),
        Money(c.revenue),
        Number(c.recency_days as f64),
        Number(f64::from(c.r)),
        Number(f64::from(c.f)),
        Number(f64::from(c.m)),
        Text(c.rfm_segment.as_str().to_string()),
        Text(c.abc.as_str().to_string()),
        Text(c.xyz.as_str().to_string()),
        Text(c.tier.as_str().to_string()),
        opt_num(c.cycle_days, 1),
        c.next_purchase.map_or(Empty, Date),
        c.cycle_status
            .map_or(Empty, |v| Text(v.as_str().to_string())),
        opt_num(c.p_alive, 4),
        opt_num(c.expected_purchases_90d, 3),
        opt_money(c.clv),
        Text(join(&c.company_ids)),
        Number(f64::from(c.deals)),
        Bool(c.one_time),
        Bool(c.sleeping),
        opt_money(c.expected_order_value),
        c.next_purchase_forecast.map_or(Empty, |v| Date(v.date)),
        c.next_purchase_forecast
            .and_then(|v| v.interval_50)
            .map_or(Empty, |v| Text(span(Some(v)))),
        c.next_purchase_forecast
            .and_then(|v| v.interval_80)
            .map_or(Empty, |v| Text(span(Some(v)))),
    ]
}

/// Most data rows one XLSX sheet holds (Excel's 1 048 576 rows less the header).
pub const XLSX_MAX_ROWS: usize = 1_048_575;

/// Customer rows as an XLSX workbook (one sheet `customers`, header row frozen and filtered):
/// the columns of the CSV, with phones and emails as text, numbers as numbers and dates as
/// dates. Written row by row (constant memory), so a whole base can be exported.
pub fn write_segments_xlsx<'a>(
    rows: impl IntoIterator<Item = &'a CustomerRow>,
) -> Result<Vec<u8>, rust_xlsxwriter::XlsxError> {
    use rust_xlsxwriter::{Format as XFormat, Workbook, XlsxError};
    let mut wb = Workbook::new();
    let date = XFormat::new().set_num_format("yyyy-mm-dd");
    let money = XFormat::new().set_num_format("#,##0.00");
    let bold = XFormat::new().set_bold();
    let ws = wb.add_worksheet_with_constant_memory()?;
    ws.set_name("customers")?;
    for (col, name) in COLUMNS.iter().enumerate() {
        ws.write_string_with_format(0, col as u16, *name, &bold)?;
    }
    let mut n = 0usize;
    for r in rows {
        n += 1;
        if n > XLSX_MAX_ROWS {
            return Err(XlsxError::ParameterError(format!(
                "more than {XLSX_MAX_ROWS} customers do not fit one XLSX sheet: narrow the segment or export CSV"
            )));
        }
        let row = n as u32;
        for (col, cell) in typed_cells(r).into_iter().enumerate() {
            let col = col as u16;
            match cell {
                XlsxCell::Text(s) if s.is_empty() => {}
                XlsxCell::Text(s) => {
                    ws.write_string(row, col, s)?;
                }
                XlsxCell::Number(v) => {
                    ws.write_number(row, col, v)?;
                }
                XlsxCell::Money(d) => {
                    ws.write_with_format(row, col, d, &money)?;
                }
                XlsxCell::Date(d) => {
                    ws.write_datetime_with_format(row, col, d, &date)?;
                }
                XlsxCell::Bool(b) => {
                    ws.write_boolean(row, col, b)?;
                }
                XlsxCell::Empty => {}
            }
        }
    }
    ws.set_freeze_panes(1, 0)?;
    ws.autofilter(0, 0, n as u32, COLUMNS.len() as u16 - 1)?;
    for (col, width) in [(0u16, 16.0), (2, 28.0), (3, 18.0), (4, 26.0)] {
        ws.set_column_width(col, width)?;
    }
    wb.save_to_buffer()
}

/// Writes customer rows (e.g. `analysis.customers`, or one segment's) in `format`.
pub fn write_segments<'a>(
    rows: impl IntoIterator<Item = &'a CustomerRow>,
    format: Format,
    out: &mut dyn Write,
) -> io::Result<()> {
    match format {
        Format::Csv => {
            let mut w = csv::Writer::from_writer(out);
            w.write_record(COLUMNS)?;
            for r in rows {
                w.write_record(cells(r).iter().map(|c| csv_safe(c).into_owned()))?;
            }
            w.flush()
        }
        Format::Json => {
            out.write_all(b"[")?;
            for (i, r) in rows.into_iter().enumerate() {
                out.write_all(if i == 0 { b"\n" } else { b",\n" })?;
                serde_json::to_writer(&mut *out, r)?;
            }
            out.write_all(b"\n]\n")
        }
        Format::Table => {
            let body: Vec<Vec<String>> = rows.into_iter().map(cells).collect();
            let header: Vec<String> = COLUMNS.iter().map(|s| s.to_string()).collect();
            out.write_all(table(&header, &body).as_bytes())
        }
    }
}

/// An aligned text table; numbers right-aligned.
pub fn table(header: &[String], rows: &[Vec<String>]) -> String {
    let n = header.len();
    let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate().take(n) {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let numeric = |s: &str| !s.is_empty() && s.parse::<f64>().is_ok();
    let mut out = String::new();
    let line = |out: &mut String, r: &[String]| {
        for (i, c) in r.iter().enumerate().take(n) {
            let pad = width[i] - c.chars().count();
            if i > 0 {
                out.push_str("  ");
            }
            if numeric(c) {
                out.extend(std::iter::repeat_n(' ', pad));
                out.push_str(c);
            } else {
                out.push_str(c);
                if i + 1 < n {
                    out.extend(std::iter::repeat_n(' ', pad));
                }
            }
        }
        out.push('\n');
    };
    line(&mut out, header);
    let total: usize = width.iter().sum::<usize>() + 2 * n.saturating_sub(1);
    out.push_str(&"-".repeat(total));
    out.push('\n');
    for r in rows {
        line(&mut out, r);
    }
    out
}

fn pct(v: Option<f64>) -> String {
    opt(v, |x| format!("{:.1}%", x * 100.0))
}

fn money(v: Decimal) -> String {
    // Thousands separated by spaces, as Russian users read amounts; kopecks only when present,
    // so amoCRM's whole amounts and Bitrix24's `.00` ones print alike.
    crate::playbooks::templates::group_money(v, ' ', '.')
}

/// The `rebuy report` text: figures, concentration, RFM grid, segments, ABC x XYZ, models,
/// merged identities and warnings.
pub fn render_report(a: &Analysis) -> String {
    let f = &a.figures;
    let cur = &a.currency;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Analysis as of {} ({}); money in {cur}\n",
        a.as_of_date, a.as_of
    );
    let _ = writeln!(s, "Figures for {} .. {}", f.period_start, f.period_end);
    let m = |v: Decimal| money(v);
    let figures: Vec<(&str, String)> = vec![
        ("customers (bought in period)", f.customers.to_string()),
        ("new customers", f.new_customers.to_string()),
        ("repeat customers", f.repeat_customers.to_string()),
        ("repeat-purchase rate", pct(f.repeat_purchase_rate)),
        ("revenue", m(f.revenue)),
        ("orders (won deals)", f.orders.to_string()),
        ("AOV", opt(f.aov, m)),
        ("revenue from repeat purchases", m(f.repeat_revenue)),
        ("  share of revenue", pct(f.repeat_revenue_share)),
        (
            "active customers at start / end",
            format!("{} / {}", f.active_at_start, f.active_at_end),
        ),
        ("CRR", pct(f.crr)),
        ("customers (all time)", f.customers_total.to_string()),
        ("revenue (all time)", m(f.revenue_total)),
        ("historical LTV", opt(f.historical_ltv, m)),
        ("predicted CLV, mean", opt(f.predicted_clv_mean, m)),
        ("predicted CLV, total", opt(f.predicted_clv_total, m)),
        ("marketing spend", opt(f.marketing_spend, m)),
        ("CAC", opt(f.cac, m)),
        (
            "top 1 customer share",
            pct(Some(f.concentration.top1_share)),
        ),
        (
            "top 3 customers share",
            pct(Some(f.concentration.top3_share)),
        ),
        (
            "top 10 customers share",
            pct(Some(f.concentration.top10_share)),
        ),
        (
            "top 20% customers share",
            format!(
                "{} ({} customers)",
                pct(Some(f.concentration.top20pct_share)),
                f.concentration.top20pct_customers
            ),
        ),
    ];
    let rows: Vec<Vec<String>> = figures
        .into_iter()
        .map(|(k, v)| vec![k.to_string(), v])
        .collect();
    s.push_str(&table(&["figure".into(), "value".into()], &rows));
    if let Some(w) = &f.concentration_warning {
        let _ = writeln!(s, "\n!! {w}");
    }

    let g = &a.rfm_grid;
    let _ = writeln!(
        s,
        "\nRFM grid: customers / revenue (rows R: days since the last purchase, columns F: purchases{})",
        match (g.recency_thresholds_days, g.median_cycle_days) {
            (None, _) => "; R by quintiles".to_string(),
            (Some(_), Some(c)) => format!("; the base's median purchase cycle {c:.0} d"),
            (Some(_), None) => String::new(),
        }
    );
    let mut header = vec!["R \\ F".to_string()];
    header.extend((1..=5).map(|f| match g.frequency_thresholds {
        Some(_) => format!("F{f} {}", g.f_label(f)),
        None => g.f_label(f),
    }));
    let rows: Vec<Vec<String>> = (1..=5)
        .rev()
        .map(|r| {
            let mut row = vec![match g.recency_thresholds_days {
                Some(_) => format!("R{r} {}", g.r_label(r as u8)),
                None => g.r_label(r as u8),
            }];
            row.extend((0..5).map(|f| {
                let c = a.rfm_grid.cells[r - 1][f];
                format!("{} / {}", c.customers, money(c.revenue))
            }));
            row
        })
        .collect();
    s.push_str(&table(&header, &rows));

    let _ = writeln!(s, "\nRFM segments");
    let total_rev: Decimal = a.segments.iter().map(|x| x.revenue).sum();
    let rows: Vec<Vec<String>> = a
        .segments
        .iter()
        .map(|x| {
            let share = if total_rev.is_zero() {
                0.0
            } else {
                (x.revenue / total_rev).try_into().unwrap_or(0.0)
            };
            vec![
                x.segment.as_str().to_string(),
                x.customers.to_string(),
                money(x.revenue),
                pct(Some(share)),
            ]
        })
        .collect();
    s.push_str(&table(
        &[
            "segment".into(),
            "customers".into(),
            "revenue".into(),
            "revenue share".into(),
        ],
        &rows,
    ));

    let _ = writeln!(s, "\nABC x XYZ: customers / revenue");
    let rows: Vec<Vec<String>> = ["A", "B", "C"]
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let mut row = vec![name.to_string()];
            row.extend(
                a.abc_xyz.cells[i]
                    .iter()
                    .map(|c| format!("{} / {}", c.customers, money(c.revenue))),
            );
            row
        })
        .collect();
    s.push_str(&table(
        &["ABC \\ XYZ".into(), "X".into(), "Y".into(), "Z".into()],
        &rows,
    ));

    let _ = writeln!(s, "\nModels");
    match &a.models.bgnbd {
        Some(p) => {
            let _ = writeln!(
                s,
                "  BG/NBD (days): r={:.4} alpha={:.4} a={:.4} b={:.4} log-likelihood={:.1}{} ({} customers, {} distinct rows)",
                p.r,
                p.alpha,
                p.a,
                p.b,
                p.log_likelihood,
                if p.converged { "" } else { " NOT CONVERGED" },
                a.models.customers,
                a.models.distinct_rows
            );
        }
        None => s.push_str("  BG/NBD: not fitted\n"),
    }
    match &a.models.gamma_gamma {
        Some(p) => {
            let _ = writeln!(
                s,
                "  Gamma-Gamma ({cur}): p={:.4} q={:.4} gamma={:.4}",
                p.p, p.q, p.gamma
            );
        }
        None => s.push_str("  Gamma-Gamma: not fitted\n"),
    }
    let _ = writeln!(s, "{}", driving_model_line(&a.models));
    let _ = writeln!(
        s,
        "\nMerged identities: {} groups (see `rebuy segments` contact_ids)",
        a.merged.len()
    );
    if !a.warnings.is_empty() {
        let _ = writeln!(s, "\nWarnings");
        for w in &a.warnings {
            let _ = writeln!(s, "  - {w}");
        }
    }
    s
}

/// `driving model: MBG/CNBD-k (backtest on this portal, holdout 2025-06-01 .. 2026-02-28:
/// MAE 0.755, AUC 0.779, MAPE 1.33%; chosen: ...)`: the model behind the predictions with
/// its figures in the backtest that chose it.
pub fn driving_model_line(m: &super::ModelParams) -> String {
    let name = m.driving.as_deref().unwrap_or("none (models are off)");
    let Some(e) = &m.evidence else {
        return format!("driving model: {name} (no backtest figures)");
    };
    let f = |v: Option<f64>, d: usize| v.map_or_else(|| "-".into(), |v| format!("{v:.d$}"));
    let mape = e
        .mape_pct
        .map_or_else(String::new, |v| format!(", MAPE {v:.2}%"));
    let sample = e.sampled_from.map_or_else(String::new, |n| {
        format!(", a sample of {} of {n} customers", e.customers)
    });
    let why = match e.chosen.as_deref() {
        Some(c) if c == name => e.reason.clone(),
        Some(c) => format!("the backtest chose {c}, whose fit on the whole history is degenerate"),
        None => "the backtest chose none".into(),
    };
    format!(
        "driving model: {name} (backtest on this portal, holdout {} .. {}{sample}: MAE {}, AUC {}{mape}; {why})",
        e.holdout.0,
        e.holdout.1,
        f(e.mae, 3),
        f(e.auc, 3),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_groups_thousands() {
        assert_eq!(money(Decimal::new(123456789, 2)), "1 234 567.89");
        assert_eq!(money(Decimal::new(-1000, 0)), "-1 000");
        assert_eq!(money(Decimal::new(999, 0)), "999");
        assert_eq!(money(Decimal::new(39857605000, 2)), "398 576 050");
    }

    #[test]
    fn formats_parse() {
        assert_eq!("CSV".parse::<Format>(), Ok(Format::Csv));
        assert!("xml".parse::<Format>().is_err());
    }

    #[test]
    fn table_aligns_unicode() {
        let t = table(
            &["name".into(), "n".into()],
            &[
                vec!["Вода".into(), "5".into()],
                vec!["ab".into(), "10".into()],
            ],
        );
        assert_eq!(t, "name  n\n--------\nВода   5\nab    10\n");
    }
}

/// Neutralises a CSV cell a spreadsheet would run as a formula (CRM names are typed by anyone):
/// a leading `=`, `@`, tab or carriage return, or a `+`/`-` not followed by a number, gets a
/// `'` in front. Phones such as `+79123456789` and negative numbers stay as they are.
pub fn csv_safe(cell: &str) -> std::borrow::Cow<'_, str> {
    // A list of phones (`+7912...;+7913...`) is data: each `;`-part is checked on its own.
    let number = |part: &str| {
        let rest = &part[1..];
        !rest.is_empty()
            && rest
                .chars()
                .all(|c| c.is_ascii_digit() || matches!(c, '.' | ',' | ' '))
    };
    let risky = match cell.chars().next() {
        Some('=' | '@' | '\t' | '\r') => true,
        Some('+' | '-') => !cell
            .split(';')
            .map(str::trim)
            .all(|p| p.starts_with(['+', '-']) && number(p)),
        _ => false,
    };
    if risky {
        std::borrow::Cow::Owned(format!("'{cell}"))
    } else {
        std::borrow::Cow::Borrowed(cell)
    }
}

#[cfg(test)]
mod xlsx_cell_tests {
    use super::*;

    /// The typed cells are the CSV's cells, column by column.
    #[test]
    fn typed_cells_match_the_csv_cells() {
        let data = crate::analytics::synthetic::synthetic_dataset(400, 2_000, 7);
        let a = crate::analytics::analyse(
            &data,
            &crate::analytics::Settings::default(),
            crate::analytics::synthetic::SYNTHETIC_AS_OF
                .parse()
                .unwrap(),
            jiff::tz::TimeZone::UTC,
        );
        assert!(a.customers.len() > 100);
        for c in &a.customers {
            let text = cells(c);
            let typed = typed_cells(c);
            assert_eq!(typed.len(), COLUMNS.len());
            for (i, (t, x)) in text.iter().zip(&typed).enumerate() {
                let same = match x {
                    XlsxCell::Text(s) => s == t,
                    XlsxCell::Number(v) => t.parse::<f64>().is_ok_and(|p| (p - v).abs() < 1e-9),
                    XlsxCell::Money(d) => &d.to_string() == t,
                    XlsxCell::Date(d) => &d.to_string() == t,
                    XlsxCell::Bool(b) => &b.to_string() == t,
                    XlsxCell::Empty => t.is_empty(),
                };
                assert!(same, "column {}: csv {t:?}, xlsx {x:?}", COLUMNS[i]);
            }
        }
    }
}

#[cfg(test)]
mod csv_safe_tests {
    use super::csv_safe;

    #[test]
    fn formulas_are_neutralised_and_phones_kept() {
        assert_eq!(csv_safe("=HYPERLINK(\"x\")"), "'=HYPERLINK(\"x\")");
        assert_eq!(csv_safe("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(csv_safe("+cmd|' /C calc'!A0"), "'+cmd|' /C calc'!A0");
        assert_eq!(csv_safe("-2+3"), "'-2+3");
        assert_eq!(csv_safe("+79123456789"), "+79123456789");
        assert_eq!(
            csv_safe("+79123456789;+79130000000"),
            "+79123456789;+79130000000"
        );
        assert_eq!(csv_safe("+1+2"), "'+1+2");
        assert_eq!(csv_safe("-12.5"), "-12.5");
        assert_eq!(csv_safe("Иван Петров"), "Иван Петров");
        assert_eq!(csv_safe(""), "");
    }
}
