//! Portals on the built-in emulators: their configs, built through the real config checks,
//! and authorisation without a person. Used by `rebuy demo`, the benchmarks and the tests.
use crate::config::{self, PortalConfig};
use crate::store::Store;
use crate::{playbooks, portal};
use anyhow::{Context, Result, bail};
use rebuy_emulator::amocrm::AmoConfig;
use rebuy_emulator::bitrix24::B24Config;

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
        exceed_documented_limit = true
        [portal.auth]
        type = "oauth"
        client_id = "{client_id}"
        client_secret_env = "EMULATOR_CLIENT_SECRET"
        redirect_uri = "{redirect_uri}"
        "#
    );
    one_portal(
        &text,
        "EMULATOR_CLIENT_SECRET",
        AmoConfig::default().client_secret,
    )
}

/// Resolves a one-portal TOML text through the real config checks; `secret_env` holds `secret`.
fn one_portal(text: &str, secret_env: &'static str, secret: String) -> Result<PortalConfig> {
    let env = move |k: &str| (k == secret_env).then(|| secret.clone());
    let cfg = config::resolve_toml(text, "<demo>", &env)
        .map_err(|p| anyhow::anyhow!("demo config invalid:\n{}", config::format_problems(&p)))?;
    cfg.portals
        .into_iter()
        .next()
        .context("demo config has no portal")
}

/// Authorises a portal against an emulator without a person.
pub async fn authorize_automatically(p: &PortalConfig, store: &Store) -> Result<()> {
    let state = portal::random_state();
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

/// The config of a Bitrix24 portal pointing at an emulator, authorised as a local OAuth app.
pub fn emulator_b24_portal(id: &str, base_url: &str, emu: &B24Config) -> Result<PortalConfig> {
    let text = format!(
        r#"
        [[portal]]
        id = "{id}"
        kind = "bitrix24"
        base_url = "{base_url}"
        [portal.auth]
        type = "oauth"
        client_id = "{}"
        client_secret_env = "EMULATOR_B24_CLIENT_SECRET"
        redirect_uri = "{}"
        "#,
        emu.client_id, emu.redirect_uri
    );
    one_portal(
        &text,
        "EMULATOR_B24_CLIENT_SECRET",
        emu.client_secret.clone(),
    )
}

/// The demo mapping of the emulated amoCRM account: every ready playbook, repeat routing to
/// "Повторные продажи", the cyclic funnel on amoCRM customers (the demo account has customers
/// mode "periodicity"), segment fields on contacts (the ABC class in a field rebuy creates).
pub fn demo_mapping() -> serde_json::Value {
    let names: Vec<&str> = playbooks::BUILT_IN.iter().map(|(n, _)| *n).collect();
    serde_json::json!({
        "playbooks": names,
        "repeat_pipeline": "Повторные продажи",
        "funnel": {"entity": "customers", "stages": [
            "Больше 30 дней", "30 дней до покупки", "7 дней до покупки", "Ожидается покупка"]},
        "fields": {"entity": "contacts", "rfm_segment": "Сегмент", "abc": "ABC-класс",
                   "next_purchase": "Дата следующей покупки", "create_missing": true},
    })
}
