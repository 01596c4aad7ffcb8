//! Layering: the TOML file, then `REBUY_` environment overrides, merged by figment into one
//! JSON document for [`super::resolve`].
use super::ConfigProblem;
use figment::Figment;
use figment::providers::{Env, Format, Toml};
use std::path::Path;

/// Reads the file and the env overrides into one document.
pub fn load_layers(path: &Path) -> Result<serde_json::Value, ConfigProblem> {
    if !path.exists() {
        return Err(ConfigProblem::new(
            &path.display().to_string(),
            "",
            "file not found",
        ));
    }
    Figment::new()
        .merge(Toml::file_exact(path))
        // Variables read elsewhere, not config keys: REBUY_CONFIG, REBUY_LOG_FORMAT,
        // REBUY_FAILPOINTS, the dashboard's fallback login (read by `[server.ui]`'s resolution)
        // and the browser tests' switch.
        .merge(Env::prefixed("REBUY_").split("__").ignore(&[
            "config",
            "log_format",
            "failpoints",
            "ui_user",
            "ui_password",
            "ui_cookie_secure",
            "ui_cache_ttl_secs",
            "require_browser",
        ]))
        .extract::<serde_json::Value>()
        .map_err(|e| {
            let key = e.path.join(".");
            ConfigProblem::new(&path.display().to_string(), &key, &e.kind.to_string())
        })
}
