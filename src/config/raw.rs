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
        // REBUY_CONFIG, REBUY_LOG_FORMAT and REBUY_FAILPOINTS are read elsewhere, not config keys.
        .merge(
            Env::prefixed("REBUY_")
                .split("__")
                .ignore(&["config", "log_format", "failpoints"]),
        )
        .extract::<serde_json::Value>()
        .map_err(|e| {
            let key = e.path.join(".");
            ConfigProblem::new(&path.display().to_string(), &key, &e.kind.to_string())
        })
}
