//! Named failure points for crash-safety tests (after meilisearch's `test_failure.rs`).
//!
//! `REBUY_FAILPOINTS="sync.after_page=3"` makes the process abort (as `kill -9` would: no
//! destructors, no flush) the third time it passes `sync.after_page`. Production runs never set
//! the variable; the check is one cached lookup.
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::OnceLock;

fn table() -> &'static Mutex<HashMap<String, u64>> {
    static T: OnceLock<Mutex<HashMap<String, u64>>> = OnceLock::new();
    T.get_or_init(|| {
        let mut m = HashMap::new();
        if let Ok(spec) = std::env::var("REBUY_FAILPOINTS") {
            for part in spec.split(',').filter(|p| !p.is_empty()) {
                let (name, n) = part.split_once('=').unwrap_or((part, "1"));
                m.insert(name.trim().to_owned(), n.trim().parse().unwrap_or(1));
            }
        }
        Mutex::new(m)
    })
}

/// Passes the failure point `name`; aborts the process when its count is reached.
pub fn hit(name: &str) {
    let mut t = table().lock().unwrap_or_else(|p| p.into_inner());
    if let Some(left) = t.get_mut(name) {
        *left = left.saturating_sub(1);
        if *left == 0 {
            tracing::error!(failpoint = name, "failpoint {name}: aborting the process");
            std::process::abort();
        }
    }
}
