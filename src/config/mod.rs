//! Configuration: one TOML file with `[[portal]]` entries, overridable by `REBUY_` environment
//! variables (`REBUY_DATA_DIR=/var/lib/rebuy`; nested keys with `__`).
//!
//! Loading has two steps (ripgrep's raw/validated split): [`raw`] merges the layers into one
//! JSON document, then [`resolve`] checks every section and returns either a [`Config`] or the
//! full list of problems, each naming the file, the key and the reason, so `rebuy config check`
//! shows them all at once instead of one per run.
//!
//! Secrets are never written in the file: it names the environment variable that holds each
//! one (`client_secret_env = "SHOP_CLIENT_SECRET"`), and resolved secrets are
//! `secrecy::SecretString`s.
pub mod passwords;
mod raw;
mod resolve;

pub use raw::load_layers;
pub use resolve::{
    AuthConfig, Config, ConfigProblem, PortalConfig, ServerSettings, SyncSettings, UiConfig,
    UiUser, resolve,
};

use std::path::Path;

/// The example configuration shipped in `config/rebuy.example.toml`.
pub const EXAMPLE: &str = include_str!("../../config/rebuy.example.toml");

/// Loads and validates a config file (with env overrides). `env` is the process environment
/// or, in tests, a fixed map.
pub fn load(
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, Vec<ConfigProblem>> {
    let doc = load_layers(path).map_err(|p| vec![p])?;
    let mut cfg = resolve(&doc, &path.display().to_string(), env)?;
    let dir = playbooks_dir(path);
    for p in &mut cfg.portals {
        p.playbooks_dir = dir.clone();
    }
    Ok(cfg)
}

/// The playbooks directory of a config file: `playbooks/` beside it, when it exists.
fn playbooks_dir(config_path: &Path) -> Option<std::path::PathBuf> {
    let dir = config_path
        .parent()
        .unwrap_or(Path::new("."))
        .join("playbooks");
    dir.is_dir().then_some(dir)
}

/// Validates config given as TOML text (the demo, benchmarks and tests build portals this way,
/// through the same checks as a file). `file` names it in problems.
pub fn resolve_toml(
    text: &str,
    file: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, Vec<ConfigProblem>> {
    use figment::providers::Format;
    let doc: serde_json::Value = figment::Figment::from(figment::providers::Toml::string(text))
        .extract()
        .map_err(|e| {
            vec![ConfigProblem::new(
                file,
                &e.path.join("."),
                &e.kind.to_string(),
            )]
        })?;
    resolve(&doc, file, env)
}

/// Formats problems one per line.
pub fn format_problems(problems: &[ConfigProblem]) -> String {
    problems.iter().map(|p| format!("{p}\n")).collect()
}

/// amoCRM's documented ceiling: 7 requests per second per integration.
pub const AMOCRM_DEFAULT_RPS: u32 = 7;
/// Bitrix24's leaky bucket drains 2 requests per second (capacity 50) on non-Enterprise plans.
pub const BITRIX24_DEFAULT_RPS: u32 = 2;

/// The CRM's documented request rate (requests/s).
pub fn documented_rps(kind: rebuy_core::CrmKind) -> u32 {
    use rebuy_core::CrmKind;
    match kind {
        CrmKind::Amocrm => AMOCRM_DEFAULT_RPS,
        CrmKind::Bitrix24 => BITRIX24_DEFAULT_RPS,
    }
}
