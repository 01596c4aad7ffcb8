//! Shared set-up: an emulated amoCRM account, a portal config pointing at it, a fresh store,
//! and comparisons of the cache with the emulator's own records.
#![allow(dead_code)]
use rebuy::config::PortalConfig;
use rebuy::store::Store;
use rebuy::sync::{NoProgress, Progress, SyncOptions, SyncReport};
use rebuy_core::{Company, Contact, Deal, DealState, EntityKind};
use rebuy_emulator::amocrm::{AmoConfig, AmoEmulator, RunningAmo};
use rust_decimal::Decimal;
use std::sync::Arc;

/// Rate limit used by tests that are not about rate limits: fast, but still limited.
pub const TEST_RPS: u32 = 500;

/// A small emulated account.
pub fn amo_config(seed: u64, contacts: usize, leads: usize) -> AmoConfig {
    let mut cfg = AmoConfig::default();
    cfg.seed.seed = seed;
    cfg.seed.contacts = contacts;
    cfg.seed.deals = leads;
    cfg.rate_limit_per_sec = TEST_RPS;
    cfg
}

/// An emulator, a portal on it and that portal's store in a temporary directory.
pub struct Env {
    pub emu: RunningAmo,
    pub dir: tempfile::TempDir,
    pub portal: PortalConfig,
    pub store: Store,
}

impl Env {
    pub fn emulator(&self) -> &AmoEmulator {
        &self.emu.emulator
    }
}

/// Starts an emulator and an authorised portal on it.
pub async fn amo_env(cfg: AmoConfig) -> Env {
    let rps = if cfg.rate_limit_per_sec == 0 {
        1000
    } else {
        cfg.rate_limit_per_sec
    };
    let emu = AmoEmulator::spawn(cfg.clone())
        .await
        .expect("emulator starts");
    let dir = tempfile::tempdir().unwrap();
    let portal = rebuy::emulated::emulator_portal(
        "test",
        &emu.base_url,
        &cfg.client_id,
        &cfg.redirect_uri,
        rps,
    )
    .unwrap();
    let store = Store::open(dir.path(), &portal.id).unwrap();
    rebuy::emulated::authorize_automatically(&portal, &store)
        .await
        .expect("automatic OAuth against the emulator");
    Env {
        emu,
        dir,
        portal,
        store,
    }
}

pub fn opts(full: bool) -> SyncOptions {
    SyncOptions {
        full,
        ..SyncOptions::default()
    }
}

/// Runs a sync of the env's portal with its own connector.
pub async fn sync(env: &Env, full: bool) -> Result<SyncReport, rebuy::sync::SyncError> {
    sync_with(env, full, Arc::new(NoProgress)).await
}

pub async fn sync_with(
    env: &Env,
    full: bool,
    progress: Arc<dyn Progress>,
) -> Result<SyncReport, rebuy::sync::SyncError> {
    let handle = rebuy::portal::open(&env.portal, env.store.clone()).unwrap();
    rebuy::sync::sync_portal(handle.connector, env.store.clone(), &opts(full), progress).await
}

fn ts(secs: i64) -> jiff::Timestamp {
    jiff::Timestamp::from_second(secs).unwrap()
}

/// Asserts that the cache holds exactly the emulator's contacts, companies and leads, value by
/// value: names, phones (raw and E.164), emails, links, amounts, stages, timestamps.
pub fn assert_cache_equals_emulator(env: &Env) {
    let store = &env.store;
    env.emulator().with_data(|data| {
        assert_eq!(
            store.count(EntityKind::Contacts).unwrap(),
            data.contacts.len() as u64,
            "contact count"
        );
        assert_eq!(
            store.count(EntityKind::Companies).unwrap(),
            data.companies.len() as u64,
            "company count"
        );
        assert_eq!(
            store.count(EntityKind::Deals).unwrap(),
            data.leads.len() as u64,
            "deal count"
        );
        assert_eq!(
            store.count(EntityKind::Users).unwrap(),
            data.users.len() as u64,
            "user count"
        );
        assert_eq!(
            store.count(EntityKind::Pipelines).unwrap(),
            data.pipelines.len() as u64,
            "pipeline count"
        );

        for (id, c) in &data.contacts {
            let got: Contact = store
                .get(*id)
                .unwrap()
                .unwrap_or_else(|| panic!("contact {id} missing"));
            assert_eq!(got.name, c.name, "contact {id} name");
            assert_eq!(got.created_at, ts(c.created_at), "contact {id} created_at");
            assert_eq!(got.updated_at, ts(c.updated_at), "contact {id} updated_at");
            assert_eq!(
                got.company_id.map(|x| x.0),
                c.company_id,
                "contact {id} company"
            );
            assert_eq!(
                got.responsible_user_id.map(|u| u.0),
                Some(c.responsible_user_id),
                "contact {id} responsible"
            );
            let raw_phones: Vec<String> = field_values(&c.custom_fields, "PHONE");
            let got_raw: Vec<String> = got.phones.iter().map(|p| p.raw.clone()).collect();
            assert_eq!(got_raw, raw_phones, "contact {id} phones");
            for p in &got.phones {
                assert_eq!(
                    p.e164,
                    rebuy_core::phone::normalize(&p.raw, "7"),
                    "contact {id} phone {:?}",
                    p.raw
                );
            }
            let emails: Vec<String> = field_values(&c.custom_fields, "EMAIL")
                .iter()
                .filter_map(|e| rebuy_core::phone::normalize_email(e))
                .collect();
            assert_eq!(got.emails, emails, "contact {id} emails");
        }
        for (id, c) in &data.companies {
            let got: Company = store
                .get(*id)
                .unwrap()
                .unwrap_or_else(|| panic!("company {id} missing"));
            assert_eq!(got.name, c.name, "company {id} name");
            assert_eq!(got.updated_at, ts(c.updated_at), "company {id} updated_at");
        }
        for (id, l) in &data.leads {
            let got: Deal = store
                .get(*id)
                .unwrap()
                .unwrap_or_else(|| panic!("lead {id} missing"));
            assert_eq!(got.name, l.name, "lead {id} name");
            let amount = got
                .amount
                .as_ref()
                .map(|m| (m.amount, m.currency.0.clone()));
            assert_eq!(
                amount,
                Some((Decimal::from(l.price), "RUB".to_owned())),
                "lead {id} amount"
            );
            assert_eq!(got.pipeline_id.0, l.pipeline_id, "lead {id} pipeline");
            assert_eq!(got.stage_id.0, l.status_id.to_string(), "lead {id} status");
            let state = match l.status_id {
                142 => DealState::Won,
                143 => DealState::Lost,
                _ => DealState::Open,
            };
            assert_eq!(got.state, state, "lead {id} state");
            assert_eq!(got.created_at, ts(l.created_at), "lead {id} created_at");
            assert_eq!(got.updated_at, ts(l.updated_at), "lead {id} updated_at");
            assert_eq!(got.closed_at, l.closed_at.map(ts), "lead {id} closed_at");
            assert_eq!(
                got.company_id.map(|c| c.0),
                l.company_id,
                "lead {id} company"
            );
            assert_eq!(
                got.responsible_user_id.map(|u| u.0),
                Some(l.responsible_user_id),
                "lead {id} responsible"
            );
            let contacts: Vec<u64> = l.contacts.iter().map(|c| c.id).collect();
            let got_contacts: Vec<u64> = got.contact_ids.iter().map(|c| c.0).collect();
            assert_eq!(got_contacts, contacts, "lead {id} contacts");
            let main = l.contacts.iter().find(|c| c.is_main).map(|c| c.id);
            assert_eq!(
                got.main_contact_id.map(|c| c.0),
                main,
                "lead {id} main contact"
            );
            let quantities: Vec<Decimal> = l
                .products
                .iter()
                .map(|p| Decimal::from(p.quantity))
                .collect();
            let got_q: Vec<Decimal> = got.products.iter().map(|p| p.quantity).collect();
            assert_eq!(got_q, quantities, "lead {id} product quantities");
        }
    });
}

fn field_values(fields: &[rebuy_emulator::amocrm::AmoFieldValue], code: &str) -> Vec<String> {
    fields
        .iter()
        .filter(|f| f.field_code.as_deref() == Some(code))
        .flat_map(|f| {
            f.values.iter().map(|v| {
                v.value
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| v.value.to_string())
            })
        })
        .collect()
}

/// Every record of a store as JSON, for comparing two caches.
pub fn dump(store: &Store) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    out.insert(
        "contacts".into(),
        serde_json::to_value(store.all::<Contact>().unwrap()).unwrap(),
    );
    out.insert(
        "companies".into(),
        serde_json::to_value(store.all::<Company>().unwrap()).unwrap(),
    );
    out.insert(
        "deals".into(),
        serde_json::to_value(store.all::<Deal>().unwrap()).unwrap(),
    );
    out.insert(
        "users".into(),
        serde_json::to_value(store.all::<rebuy_core::User>().unwrap()).unwrap(),
    );
    out.insert(
        "pipelines".into(),
        serde_json::to_value(store.all::<rebuy_core::Pipeline>().unwrap()).unwrap(),
    );
    serde_json::Value::Object(out)
}

/// Writes a config file with one portal per emulator and returns its path.
pub fn write_config(dir: &std::path::Path, portals: &[(&str, &str, u32)]) -> std::path::PathBuf {
    let cfg = AmoConfig::default();
    let mut text = format!("data_dir = {:?}\n", dir.join("data").display().to_string());
    for (id, base_url, rps) in portals {
        text.push_str(&format!(
            "[[portal]]\nid = \"{id}\"\nkind = \"amocrm\"\nbase_url = \"{base_url}\"\nrequests_per_sec = {rps}\nexceed_documented_limit = true\n\
             [portal.auth]\ntype = \"oauth\"\nclient_id = \"{}\"\nclient_secret_env = \"EMULATOR_CLIENT_SECRET\"\nredirect_uri = \"{}\"\n",
            cfg.client_id, cfg.redirect_uri
        ));
    }
    let path = dir.join("rebuy.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs the rebuy binary with the emulator's client secret in its environment.
pub fn rebuy(args: &[&str], extra_env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_rebuy"));
    cmd.args(args)
        .env("EMULATOR_CLIENT_SECRET", AmoConfig::default().client_secret)
        .env_remove("REBUY_FAILPOINTS");
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    cmd.output().expect("rebuy binary runs")
}

/// Runs the rebuy binary on a blocking thread (so the in-process emulator keeps serving).
pub async fn rebuy_async(
    args: Vec<String>,
    extra_env: Vec<(String, String)>,
) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let e: Vec<(&str, &str)> = extra_env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        rebuy(&a, &e)
    })
    .await
    .unwrap()
}

/// Asserts every "<count> покупк…" in a task text agrees in number ("1 покупка", "2 покупки",
/// "5 покупок", "21 покупка") and that the text has at least one such count.
pub fn assert_purchase_counts_agree(text: &str) {
    let words: Vec<&str> = text
        .split(|c: char| c.is_whitespace() || c == ',' || c == '.')
        .collect();
    let mut seen = 0;
    for w in words.windows(2) {
        if let (Ok(n), true) = (w[0].parse::<i64>(), w[1].starts_with("покуп")) {
            let want = rebuy::playbooks::templates::ru_plural(n, ["покупка", "покупки", "покупок"]);
            assert_eq!(format!("{} {}", w[0], w[1]), want, "in {text:?}");
            seen += 1;
        }
    }
    assert!(seen > 0, "no purchase count in {text:?}");
}
