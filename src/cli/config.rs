//! `rebuy config check`: every problem of a config file at once.

use super::*;

pub(super) fn config_check(path: &std::path::Path) -> Result<ExitCode> {
    match rebuy::config::load(path, &env_lookup) {
        Ok(cfg) => {
            println!("{}: ok ({} portals)", path.display(), cfg.portals.len());
            for (user, form) in cfg.server.ui.weak_passwords() {
                if let Some(w) = form.warning() {
                    println!("warning: server.ui user {user:?}: {w}");
                }
            }
            // With a cache, the managers who own customers but cannot be given work.
            for p in &cfg.portals {
                if p.mapping.is_null() || !rebuy::store::portal_path(&cfg.data_dir, &p.id).exists()
                {
                    continue;
                }
                let Ok(store) = Store::open(&cfg.data_dir, &p.id) else {
                    continue;
                };
                let users: Vec<rebuy_core::User> = store.all().unwrap_or_default();
                if users.is_empty() {
                    continue;
                }
                if let Ok(owners) = rebuy::writeback::unusable_owners(&store, p, &users) {
                    for o in owners {
                        println!("warning: portal {}: {} (cached users)", p.id, o.describe());
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(problems) => {
            eprintln!("{} problem(s):", problems.len());
            eprint!("{}", rebuy::config::format_problems(&problems));
            Ok(ExitCode::from(2))
        }
    }
}
