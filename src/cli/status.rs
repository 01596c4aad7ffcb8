//! `rebuy status`: per portal, what is cached, the token, the outbox and the inbox.

use super::*;

pub(super) fn cmd_status(cfg: &Config) -> Result<ExitCode> {
    if let Some(mode) = rebuy::store::exposed_mode(&cfg.data_dir) {
        println!(
            "warning: the data directory {} is open to other users (mode {mode:o}) and holds the \
             portals' tokens: chmod 700 it",
            cfg.data_dir.display()
        );
    }
    for p in &cfg.portals {
        println!("portal {} ({}, {})", p.id, p.kind.as_str(), p.base_url);
        let store = match Store::open(&cfg.data_dir, &p.id) {
            Ok(s) => s,
            Err(e) => {
                println!("  store: {e}");
                continue;
            }
        };
        for kind in EntityKind::ALL {
            let n = store.count(kind)?;
            let st = store.sync_state(kind)?;
            println!(
                "  {:<10} {:>8}  last sync {}{}",
                kind.as_str(),
                n,
                st.last_sync_at
                    .map(|t| t.to_string())
                    .unwrap_or_else(|| "never".into()),
                if st.in_progress.is_some() {
                    "  (a listing is under way or was interrupted)"
                } else {
                    ""
                }
            );
        }
        match store.load_tokens()? {
            Some(t) => println!(
                "  token: expires {}",
                t.expires_at
                    .map(|e| e.to_string())
                    .unwrap_or_else(|| "never (long-lived)".into())
            ),
            None => match p.auth {
                rebuy::config::AuthConfig::OAuth { .. } => {
                    println!("  token: none stored (run `rebuy auth`)")
                }
                rebuy::config::AuthConfig::LongLivedToken { .. } => {
                    println!("  token: long-lived, from the environment")
                }
                rebuy::config::AuthConfig::Webhook { .. } => {
                    println!("  auth: inbound webhook URL, from the environment")
                }
            },
        }
        let w = rebuy::sync::last_warnings(&store)?;
        if !w.warnings.is_empty() {
            println!(
                "  last sync ({}) went without {} optional part(s):",
                w.at,
                w.warnings.len()
            );
            for line in &w.warnings {
                println!("    warning: {line}");
            }
        }
        if let Some(r) = store.needs_reauth()? {
            println!("  NEEDS RE-AUTHORIZATION since {}: {}", r.at, r.reason);
        }
        let dead = store.inbox_dead_count()?;
        if dead > 0 {
            println!(
                "  WEBHOOKS GIVEN UP: {dead} in the dead-letter table (rebuy inbox dead --portal {} lists them; rebuy inbox replay puts them back)",
                p.id
            );
        }
        plan::print_outbox_status(&store)?;
    }
    Ok(ExitCode::SUCCESS)
}
