//! `rebuy demo`: the whole product against built-in emulators, on a fresh machine, with no
//! configuration: start an emulated amoCRM account with generated data, authorise over OAuth,
//! sync it fully into a fresh cache, and print what happened and what the base looks like.
mod amocrm;
mod live;

use crate::cli::sync::{print_sync_report, sync_with_progress};
use anyhow::{Context, Result, bail};
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
use rebuy_emulator::seed::SeedConfig;
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
    /// The last day of the generated history (`YYYY-MM-DD`). Default: today.
    #[arg(long, value_parser = crate::cli::parse_history_end)]
    pub history_end: Option<jiff::civil::Date>,
}

/// The generated history of `rebuy emulate` and `rebuy demo`: three years ending today, or at
/// the start of the pinned `end` day.
pub fn history(
    seed: u64,
    contacts: usize,
    deals: usize,
    end: Option<jiff::civil::Date>,
) -> SeedConfig {
    match end {
        Some(d) => SeedConfig::new(seed, contacts, deals).ending_on(d),
        None => SeedConfig::ending_today(seed, contacts, deals),
    }
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
    let mut amo_cfg = AmoConfig {
        seed: history(args.seed, args.contacts, args.leads, args.history_end),
        ..AmoConfig::default()
    };
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

/// The amoCRM emulator's configuration from `rebuy emulate amocrm`'s flags; flags that apply
/// to Bitrix24 only are refused by name.
pub fn amo_emulator_config(a: &crate::cli::EmulateArgs) -> Result<AmoConfig> {
    let b24_only = [
        ("--call-time-ms", a.call_time_ms != 0),
        ("--bucket-capacity", a.bucket_capacity.is_some()),
        ("--enterprise", a.enterprise),
        ("--operating-limit", a.operating_limit.is_some()),
        ("--operating-window", a.operating_window.is_some()),
        ("--method-cost-ms", a.method_cost_ms.is_some()),
    ];
    if let Some((flag, _)) = b24_only.iter().find(|(_, set)| *set) {
        bail!("{flag} applies to the Bitrix24 emulator only");
    }
    let mut cfg = AmoConfig {
        seed: history(a.seed, a.contacts, a.leads, a.history_end),
        clock_offset_secs: a.clock_offset,
        ..AmoConfig::default()
    };
    if let Some(r) = a.rate {
        cfg.rate_limit_per_sec = r;
    }
    if let Some(t) = a.token_ttl {
        cfg.access_token_ttl_secs = t;
    }
    if let Some(m) = &a.customers_mode {
        cfg.customers_mode = m.clone();
    }
    if let Some(t) = &a.long_lived_token {
        cfg.long_lived_token = Some(t.clone());
    }
    if let Some(f) = &a.faults {
        cfg.faults = f.clone();
    }
    if let Some(n) = a.block_after {
        cfg.block_after_violations = n;
    }
    if let Some(bad) = a.deny.iter().find(|p| !p.starts_with("/api/v4/")) {
        bail!("--deny {bad}: amoCRM denials are API path prefixes such as /api/v4/companies");
    }
    Ok(cfg)
}

/// The Bitrix24 emulator's configuration from `rebuy emulate bitrix24`'s flags; flags that
/// apply to amoCRM only are refused by name.
pub fn b24_emulator_config(a: &crate::cli::EmulateArgs) -> Result<B24Config> {
    let amo_only = [
        ("--customers-mode", a.customers_mode.is_some()),
        ("--long-lived-token", a.long_lived_token.is_some()),
        ("--block-after", a.block_after.is_some()),
    ];
    if let Some((flag, _)) = amo_only.iter().find(|(_, set)| *set) {
        bail!("{flag} applies to the amoCRM emulator only");
    }
    let mut cfg = B24Config {
        seed: history(a.seed, a.contacts, a.leads, a.history_end),
        clock_offset_secs: a.clock_offset,
        call_time_ms: a.call_time_ms,
        ..B24Config::default()
    };
    if a.enterprise {
        cfg.bucket_capacity = 250;
        cfg.drain_per_sec = 5.0;
    }
    if let Some(c) = a.bucket_capacity {
        cfg.bucket_capacity = c;
    }
    if let Some(r) = a.rate {
        cfg.drain_per_sec = f64::from(r);
    }
    if let Some(t) = a.token_ttl {
        cfg.access_token_ttl_secs = t;
    }
    for (flag, v) in [
        ("--operating-limit", a.operating_limit),
        ("--operating-window", a.operating_window),
    ] {
        if v.is_some_and(|x| !x.is_finite() || x < 0.0) {
            bail!("{flag} must be a number of seconds, 0 or more");
        }
    }
    if let Some(l) = a.operating_limit {
        cfg.operating_limit_secs = l;
    }
    if let Some(w) = a.operating_window {
        if w <= 0.0 {
            bail!("--operating-window must be more than 0 seconds");
        }
        cfg.operating_window_secs = w;
    }
    if let Some(c) = a.method_cost_ms {
        cfg.method_cost_ms = c;
    }
    if let Some(f) = &a.faults {
        cfg.faults = f.clone();
    }
    if let Some(bad) = a.deny.iter().find(|m| m.contains('/')) {
        bail!("--deny {bad}: Bitrix24 denials are method names such as crm.company.list");
    }
    Ok(cfg)
}

/// Where `--tls` writes the certificate: `--tls-cert`, else the temporary directory.
fn tls_cert_path(a: &crate::cli::EmulateArgs, crm: &str) -> Option<PathBuf> {
    a.tls.then(|| {
        a.tls_cert.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!("rebuy-emulator-{crm}-{}.pem", a.port))
        })
    })
}

/// `rebuy emulate amocrm`.
pub async fn emulate_amocrm(a: crate::cli::EmulateArgs) -> Result<()> {
    let cfg = amo_emulator_config(&a)?;
    let deny = a.deny.clone();
    let tls = tls_cert_path(&a, "amocrm");
    rebuy_emulator::amocrm::run_amocrm(cfg, a.port, tls.as_deref(), &deny)
        .await
        .context("running the amoCRM emulator")
}

/// `rebuy emulate bitrix24`.
pub async fn emulate_bitrix24(a: crate::cli::EmulateArgs) -> Result<()> {
    let cfg = b24_emulator_config(&a)?;
    let deny = a.deny.clone();
    let tls = tls_cert_path(&a, "bitrix24");
    rebuy_emulator::bitrix24::run_bitrix24(cfg, a.port, tls.as_deref(), &deny)
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
