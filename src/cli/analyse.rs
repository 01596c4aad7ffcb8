//! `rebuy segments`, `report` and `backtest`: the terminal side of `rebuy::analyse`.
use anyhow::{Context, Result};
use jiff::Timestamp;
use rebuy::analyse::{analyse_portal, backtest_portal};
use rebuy::analytics::{self, render};
use rebuy::config::PortalConfig;
use rebuy::store::Store;
use std::io::Write;
use std::path::PathBuf;

/// `rebuy backtest`.
pub fn cmd_backtest(
    store: &Store,
    portal: &PortalConfig,
    as_of: Option<Timestamp>,
    holdout_days: Option<u32>,
    format: crate::cli::OutputFormat,
) -> Result<()> {
    let b = backtest_portal(store, portal, as_of, holdout_days)?;
    let mut out = std::io::stdout().lock();
    match format {
        crate::cli::OutputFormat::Table => {
            let sample = b.sampled_from.map_or_else(String::new, |n| {
                format!(", an evenly spread sample of the base's {n}")
            });
            writeln!(
                out,
                "backtest of {}: calibration to {}, holdout {} .. {} ({} customers{sample})",
                portal.id,
                analytics::date_of_day(b.cutoff_day),
                analytics::date_of_day(b.cutoff_day + 1),
                analytics::date_of_day(b.end_day),
                b.customers
            )?;
            write!(out, "{}", analytics::backtest::render_table(&b))?;
        }
        crate::cli::OutputFormat::Json => {
            serde_json::to_writer_pretty(&mut out, &b)?;
            writeln!(out)?;
        }
    }
    Ok(())
}

/// `rebuy segments`.
pub fn cmd_segments(
    store: &Store,
    portal: &PortalConfig,
    as_of: Option<Timestamp>,
    format: render::Format,
    segment: Option<&str>,
    out: Option<&PathBuf>,
) -> Result<()> {
    let (_, analysis) = analyse_portal(store, portal, as_of)?;
    let wanted = match segment {
        Some(name) => Some(analytics::RfmSegment::parse(name).with_context(|| {
            let known: Vec<&str> = analytics::RfmSegment::ALL
                .iter()
                .map(|s| s.as_str())
                .collect();
            format!(
                "unknown segment {name:?}: expected one of {}",
                known.join(", ")
            )
        })?),
        None => None,
    };
    let rows = analysis
        .customers
        .iter()
        .filter(|c| wanted.is_none_or(|w| c.rfm_segment == w));
    match out {
        Some(path) => {
            let mut f = std::io::BufWriter::new(
                std::fs::File::create(path)
                    .with_context(|| format!("creating {}", path.display()))?,
            );
            render::write_segments(rows, format, &mut f)?;
            f.flush()?;
        }
        None => {
            let stdout = std::io::stdout();
            let mut lock = stdout.lock();
            render::write_segments(rows, format, &mut lock)?;
        }
    }
    Ok(())
}

/// `rebuy report`: the report ends its Models section with the driving model and its
/// backtest figures (carried by the analysis).
pub fn cmd_report(store: &Store, portal: &PortalConfig, as_of: Option<Timestamp>) -> Result<()> {
    let (_, analysis) = analyse_portal(store, portal, as_of)?;
    println!("{}", render::render_report(&analysis));
    Ok(())
}
