//! `rebuy demo`: the whole product against built-in emulators, on a fresh machine, with no
//! configuration: start an emulated amoCRM account with generated data, authorise over OAuth,
//! sync it fully into a fresh cache, and print what happened and what the base looks like.
use crate::cli::{print_sync_report, random_state, sync_with_progress};
use crate::config::{self, PortalConfig};
use crate::portal;
use crate::store::Store;
use crate::sync::SyncOptions;
use anyhow::{Context, Result, bail};
use clap::Args;
use rebuy_emulator::amocrm::{AmoConfig, AmoEmulator};
use std::path::PathBuf;
use std::time::Duration;

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

/// The config of a portal pointing at an emulator (built through the real config path).
pub fn emulator_portal(
    id: &str,
    base_url: &str,
    client_id: &str,
    redirect_uri: &str,
    rps: u32,
) -> Result<PortalConfig> {
    let text = format!(
        r#"
        [[portal]]
        id = "{id}"
        kind = "amocrm"
        base_url = "{base_url}"
        requests_per_sec = {rps}
        [portal.auth]
        type = "oauth"
        client_id = "{client_id}"
        client_secret_env = "EMULATOR_CLIENT_SECRET"
        redirect_uri = "{redirect_uri}"
        "#
    );
    use figment::providers::Format;
    let doc: serde_json::Value = figment::Figment::from(figment::providers::Toml::string(&text))
        .extract()
        .context("building the demo portal config")?;
    let secret = AmoConfig::default().client_secret;
    let env = move |k: &str| (k == "EMULATOR_CLIENT_SECRET").then(|| secret.clone());
    let cfg = config::resolve(&doc, "<demo>", &env)
        .map_err(|p| anyhow::anyhow!("demo config invalid:\n{}", config::format_problems(&p)))?;
    cfg.portals
        .into_iter()
        .next()
        .context("demo config has no portal")
}

/// Authorises a portal against an emulator without a person.
pub async fn authorize_automatically(p: &PortalConfig, store: &Store) -> Result<()> {
    let state = random_state();
    let url = portal::authorize_url(p, &state)?;
    let Some(code) = portal::try_automatic_code(&url, &state).await else {
        bail!(
            "portal {}: the CRM did not authorise automatically (not an emulator?)",
            p.id
        );
    };
    portal::exchange_code(p, store, &code).await?;
    Ok(())
}

/// Runs the demo.
pub async fn run(args: DemoArgs) -> Result<()> {
    println!(
        "rebuy demo: an emulated amoCRM account with {} contacts and {} leads",
        args.contacts, args.leads
    );
    let mut emu_cfg = AmoConfig::default();
    emu_cfg.seed.seed = args.seed;
    emu_cfg.seed.contacts = args.contacts;
    emu_cfg.seed.deals = args.leads;
    let t0 = std::time::Instant::now();
    let running = AmoEmulator::spawn(emu_cfg.clone())
        .await
        .context("starting the amoCRM emulator")?;
    println!(
        "  emulator at {} (data generated in {:.1} s)",
        running.base_url,
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
    let p = emulator_portal(
        "demo-amocrm",
        &running.base_url,
        &emu_cfg.client_id,
        &emu_cfg.redirect_uri,
        portal::AMOCRM_DEFAULT_RPS,
    )?;
    let store = Store::open(&data_dir, &p.id)?;
    authorize_automatically(&p, &store).await?;
    println!("  authorised over OAuth (authorization code -> tokens committed to the cache)");

    let handle = portal::open(&p, store.clone())?;
    let opts = SyncOptions {
        full: true,
        overlap: Duration::from_secs(p.sync.overlap_secs),
        concurrency: p.sync.concurrency,
    };
    let report =
        sync_with_progress(handle.connector.clone(), store.clone(), &opts, args.quiet).await?;
    print_sync_report(&p.id.0, &report, Some(portal::AMOCRM_DEFAULT_RPS));
    // The generated history ends at the emulator's "now": analyse as of that day.
    crate::analyse::demo_summary(&store, &p, emu_cfg.seed.now)?;
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
    rebuy_emulator::amocrm::run_amocrm(cfg, a.port)
        .await
        .context("running the amoCRM emulator")
}
