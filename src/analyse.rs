//! Runs the analytics on a portal's cache: streams the cached companies, contacts and deals
//! into a [`DatasetBuilder`] (one record decoded at a time), then calls the pure
//! [`analytics::analyse`]; also the backtest of a portal's own history.
//!
//! Flow position: pull -> cache -> **analyse** -> plan -> outbox -> CRM.
use crate::analytics::{self, Analysis, Dataset, DatasetBuilder};
use crate::config::PortalConfig;
use crate::store::{Store, StoreError};
use anyhow::{Context, Result};
use jiff::Timestamp;
use rebuy_core::{Company, Contact, Deal};

/// Builds the analytics dataset of a portal from its cache.
pub fn load_dataset(store: &Store, portal: &PortalConfig) -> Result<Dataset, StoreError> {
    load_dataset_with(store, &portal.analytics)
}

/// [`load_dataset`] with the analytics settings given directly. Decoding the cached records
/// and building the dataset run on two threads, handing records over in small batches (memory
/// stays flat: at most a few batches are in flight).
pub fn load_dataset_with(
    store: &Store,
    settings: &analytics::Settings,
) -> Result<Dataset, StoreError> {
    enum Rec {
        Company(Company),
        Contact(Contact),
        Deal(Deal),
    }
    const BATCH: usize = 4096;
    let mut b = DatasetBuilder::new(settings);
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Rec>>(4);
    std::thread::scope(|s| {
        let reader = s.spawn(move || {
            let mut batch = Vec::with_capacity(BATCH);
            // A closed channel means the builder side is gone: stop quietly, its error wins.
            let mut push = |r: Rec| {
                batch.push(r);
                if batch.len() == BATCH {
                    let _ = tx.send(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)));
                }
            };
            store.for_each::<Company>(|c| push(Rec::Company(c)))?;
            store.for_each::<Contact>(|c| push(Rec::Contact(c)))?;
            store.for_each_deal_with_rows(|d| push(Rec::Deal(d)))?;
            let _ = tx.send(batch);
            Ok::<(), StoreError>(())
        });
        for batch in rx {
            for r in batch {
                match r {
                    Rec::Company(c) => b.add_company(&c),
                    Rec::Contact(c) => b.add_contact(&c),
                    Rec::Deal(d) => b.add_deal(&d),
                }
            }
        }
        reader.join().expect("cache reader panicked")
    })?;
    Ok(b.build())
}

/// Analyses a portal's cache at `as_of` (now when `None`).
pub fn analyse_portal(
    store: &Store,
    portal: &PortalConfig,
    as_of: Option<Timestamp>,
) -> Result<(Dataset, Analysis)> {
    let data = load_dataset(store, portal)
        .with_context(|| format!("portal {}: reading the cache", portal.id))?;
    let as_of = as_of.unwrap_or_else(Timestamp::now);
    let analysis = analytics::analyse(&data, &portal.analytics, as_of, portal.time_zone.clone());
    Ok((data, analysis))
}

/// The backtest of a portal's cached history: the holdout ends at `as_of` (now when `None`)
/// and lasts `holdout_days` (default 273, or half the history when it is shorter).
pub fn backtest_portal(
    store: &Store,
    portal: &PortalConfig,
    as_of: Option<Timestamp>,
    holdout_days: Option<u32>,
) -> Result<analytics::backtest::Backtest> {
    let data = load_dataset(store, portal)
        .with_context(|| format!("portal {}: reading the cache", portal.id))?;
    backtest_dataset(&data, portal, as_of, holdout_days)
}

/// [`backtest_portal`] on a dataset already read from the cache.
pub fn backtest_dataset(
    data: &analytics::Dataset,
    portal: &PortalConfig,
    as_of: Option<Timestamp>,
    holdout_days: Option<u32>,
) -> Result<analytics::backtest::Backtest> {
    let as_of = as_of.unwrap_or_else(Timestamp::now);
    let (days, end) =
        analytics::purchase_days(data, &portal.analytics, as_of, portal.time_zone.clone());
    analytics::backtest::portal(&days, end, holdout_days, portal.analytics.model.as_deref())
        .with_context(|| {
            format!(
                "portal {}: no purchases in the cache to backtest",
                portal.id
            )
        })
}

/// Parses `--as-of`: a date (`2026-11-23`, end of that day in the portal's zone) or an
/// RFC 3339 instant.
pub fn parse_as_of(s: &str, portal: &PortalConfig) -> Result<Timestamp> {
    if let Ok(t) = s.parse::<Timestamp>() {
        return Ok(t);
    }
    let date: jiff::civil::Date = s.parse().with_context(|| {
        format!("--as-of {s:?}: expected a date (2026-11-23) or an RFC 3339 instant")
    })?;
    let end = date
        .at(23, 59, 59, 0)
        .to_zoned(portal.time_zone.clone())
        .with_context(|| format!("--as-of {s:?}"))?;
    Ok(end.timestamp())
}
