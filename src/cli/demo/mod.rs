//! `rebuy demo`: the whole product against built-in emulators, on a fresh machine, with no
//! configuration: start an emulated amoCRM account with generated data, authorise over OAuth,
//! sync it fully into a fresh cache, and print what happened and what the base looks like.
mod amocrm;
mod live;

use crate::cli::{print_sync_report, sync_with_progress};
use anyhow::{Context, Result};
use clap::Args;
use jiff::Timestamp;
use rebuy::analyse::analyse_portal;
use rebuy::analytics::{Analysis, render};
use rebuy::config::PortalConfig;
use rebuy::emulated::{authorize_automatically, emulator_b24_portal, emulator_portal};
use rebuy::portal;
use rebuy::store::Store;
use rebuy_emulator::amocrm::{AmoConfig, AmoEmulator};
use rebuy_emulator::bitrix24::{B24Config, B24Emulator};
use std::path::PathBuf;

/// `rebuy demo` arguments.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Contacts in the emulated account.
    #[arg(long, default_value_t = 3000)]
    pub contacts: usize,
    /// Leads in the emulated account.
    #[arg(long, default_value_t = 9000)]
    pub leads: usize,
    /// Data generator seed.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Keep the cache here instead of a temporary directory.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// Authorises, syncs fully and prints the report of one demo portal.
async fn demo_portal(p: &PortalConfig, data_dir: &std::path::Path, quiet: bool) -> Result<Store> {
    let store = Store::open(data_dir, &p.id)?;
    authorize_automatically(p, &store).await?;
    println!(
        "  {}: authorised over OAuth (authorization code -> tokens committed to the cache)",
        p.id
    );
    let handle = portal::open(p, store.clone())?;
    let opts = rebuy::portal::sync_options(p, true);
    let report = sync_with_progress(handle.connector.clone(), store.clone(), &opts, quiet).await?;
    print_sync_report(
        &p.id.0,
        &report,
        Some(portal::ceiling_rps(p)),
        portal::burst_requests(p),
    );
    Ok(store)
}

/// Runs the demo.
pub async fn run(args: DemoArgs) -> Result<()> {
    println!(
        "rebuy demo: an emulated amoCRM account and an emulated Bitrix24 portal, {} contacts and {} deals each",
        args.contacts, args.leads
    );
    let mut amo_cfg = AmoConfig::default();
    amo_cfg.seed.seed = args.seed;
    amo_cfg.seed.contacts = args.contacts;
    amo_cfg.seed.deals = args.leads;
    // The account has periodic purchases on: the demo keeps its funnel on amoCRM customers.
    amo_cfg.customers_mode = "periodicity".into();
    let mut b24_cfg = B24Config::default();
    b24_cfg.seed = amo_cfg.seed.clone();
    b24_cfg.seed.seed = args.seed + 1;
    let t0 = std::time::Instant::now();
    let amo = AmoEmulator::spawn(amo_cfg.clone())
        .await
        .context("starting the amoCRM emulator")?;
    let b24 = B24Emulator::spawn(b24_cfg.clone())
        .await
        .context("starting the Bitrix24 emulator")?;
    println!(
        "  amoCRM emulator at {}, Bitrix24 emulator at {} (data generated in {:.1} s)",
        amo.base_url,
        b24.base_url,
        t0.elapsed().as_secs_f64()
    );

    let tmp;
    let data_dir = match &args.data_dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::tempdir().context("creating a temporary data directory")?;
            tmp.path().to_owned()
        }
    };
    let amo_portal = emulator_portal(
        "demo-amocrm",
        &amo.base_url,
        &amo_cfg.client_id,
        &amo_cfg.redirect_uri,
        portal::AMOCRM_DEFAULT_RPS,
    )?;
    let b24_portal = emulator_b24_portal("demo-bitrix24", &b24.base_url, &b24_cfg)?;
    // The two portals are independent: they sync at the same time, each under its own limit.
    let (amo_store, b24_store) = tokio::try_join!(
        demo_portal(&amo_portal, &data_dir, args.quiet),
        demo_portal(&b24_portal, &data_dir, args.quiet)
    )?;
    // The generated history ends at the emulators' "now": analyse as of that day.
    println!("\n== {} ==", amo_portal.id);
    demo_summary(&amo_store, &amo_portal, amo_cfg.seed.now)?;
    amocrm::demo_amocrm(&amo_portal, &amo_store, &amo.emulator, amo_cfg.seed.now)
        .await
        .context("the demo's write-back")?;
    println!("\n== {} ==", b24_portal.id);
    demo_summary(&b24_store, &b24_portal, b24_cfg.seed.now)?;
    live::live_routing(
        &amo_portal,
        &amo_store,
        &amo.emulator,
        &b24_portal,
        &b24_store,
        &b24.emulator,
    )
    .await
    .context("the demo's live routing")?;
    Ok(())
}

/// `rebuy emulate amocrm`.
pub async fn emulate_amocrm(a: crate::cli::EmulateArgs) -> Result<()> {
    let mut cfg = AmoConfig::default();
    cfg.seed.seed = a.seed;
    cfg.seed.contacts = a.contacts;
    cfg.seed.deals = a.leads;
    if let Some(r) = a.rate {
        cfg.rate_limit_per_sec = r;
    }
    if let Some(t) = a.token_ttl {
        cfg.access_token_ttl_secs = t;
    }
    if let Some(m) = a.customers_mode {
        cfg.customers_mode = m;
    }
    if let Some(t) = a.long_lived_token {
        cfg.long_lived_token = Some(t);
    }
    rebuy_emulator::amocrm::run_amocrm(cfg, a.port)
        .await
        .context("running the amoCRM emulator")
}

/// `rebuy emulate bitrix24`.
pub async fn emulate_bitrix24(a: crate::cli::EmulateArgs) -> Result<()> {
    let mut cfg = B24Config::default();
    cfg.seed.seed = a.seed;
    cfg.seed.contacts = a.contacts;
    cfg.seed.deals = a.leads;
    if let Some(r) = a.rate {
        cfg.drain_per_sec = f64::from(r);
    }
    if let Some(t) = a.token_ttl {
        cfg.access_token_ttl_secs = t;
    }
    cfg.call_time_ms = a.call_time_ms;
    rebuy_emulator::bitrix24::run_bitrix24(cfg, a.port)
        .await
        .context("running the Bitrix24 emulator")
}

/// The demo's closing page: the report of the synced portal.
pub fn demo_summary(store: &Store, portal: &PortalConfig, as_of: Timestamp) -> Result<Analysis> {
    let started = std::time::Instant::now();
    let (data, analysis) = analyse_portal(store, portal, Some(as_of))?;
    println!(
        "\nanalysis of {} customers and {} deals in {:.2} s (as of {}):\n",
        data.customer_count(),
        data.deal_count(),
        started.elapsed().as_secs_f64(),
        analysis.as_of_date
    );
    println!("{}", render::render_report(&analysis));
    Ok(analysis)
}
