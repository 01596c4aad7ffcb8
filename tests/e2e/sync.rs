//! The sync against the amoCRM emulator: exact equality, incremental changes and deletions,
//! token expiry and refresh races, rejected refresh, faults, crash and resume.
use crate::support::*;
use rebuy::sync::Progress;
use rebuy_core::{ConnectorError, Deal, EntityKind};
use rebuy_emulator::faults::FaultConfig;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_sync_equals_emulator_data_exactly() {
    let env = amo_env(amo_config(11, 700, 2100)).await;
    let report = sync(&env, true).await.expect("full sync");
    assert!(report.kinds.values().all(|k| k.full));
    assert_cache_equals_emulator(&env);
    assert_eq!(
        report.traffic.rate_limited, 0,
        "a healthy run never sees a 429"
    );
    // The emulator's data has duplicate people and mixed phone formats: both must be there.
    let contacts = env.store.all::<rebuy_core::Contact>().unwrap();
    let normalised = contacts
        .iter()
        .flat_map(|c| &c.phones)
        .filter(|p| p.e164.is_some())
        .count();
    let raw_not_e164 = contacts
        .iter()
        .flat_map(|c| &c.phones)
        .filter(|p| p.e164.as_deref() != Some(p.raw.as_str()))
        .count();
    assert!(
        normalised > 0 && raw_not_e164 > 0,
        "phones are normalised and raw text is kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_sync_picks_up_changes_and_deletions() {
    let env = amo_env(amo_config(12, 300, 900)).await;
    sync(&env, true).await.expect("full sync");
    let emu = env.emulator();
    let (lead_a, lead_b, lead_c, contact) = emu.with_data(|d| {
        let mut ids = d.leads.keys().copied();
        let a = ids.next().unwrap();
        let b = ids.nth(10).unwrap();
        let c = ids.nth(10).unwrap();
        (a, b, c, *d.contacts.keys().nth(5).unwrap())
    });
    assert!(emu.update_lead(lead_a, Some(123_456), None));
    assert!(emu.update_contact_name(contact, "Изменённое Имя"));
    assert!(emu.delete_lead(lead_b));
    let (pipeline, status) = emu.with_data(|d| {
        let l = &d.leads[&lead_c];
        (l.pipeline_id, l.status_id)
    });
    let new_lead = emu
        .add_lead(contact, 777, pipeline, status)
        .expect("lead added");

    let report = sync(&env, false).await.expect("incremental sync");
    let deals = report.kinds[&EntityKind::Deals];
    assert!(!deals.full, "second run is incremental");
    assert!(
        deals.records < 50,
        "incremental reads only what changed (read {})",
        deals.records
    );
    assert_eq!(deals.deleted, 1, "the deleted lead is removed");
    assert!(env.store.get::<Deal>(lead_b).unwrap().is_none());
    let a: Deal = env.store.get(lead_a).unwrap().unwrap();
    assert_eq!(
        a.amount.unwrap().amount,
        rust_decimal::Decimal::from(123_456)
    );
    let n: Deal = env.store.get(new_lead).unwrap().expect("new lead cached");
    assert_eq!(n.main_contact_id.map(|c| c.0), Some(contact));
    let c: rebuy_core::Contact = env.store.get(contact).unwrap().unwrap();
    assert_eq!(c.name, "Изменённое Имя");
    assert_cache_equals_emulator(&env);
}

/// Expires every access token once, after the first committed page.
struct ExpireAfterFirstPage {
    emu: rebuy_emulator::amocrm::AmoEmulator,
    done: AtomicBool,
}

impl Progress for ExpireAfterFirstPage {
    fn page(&self, kind: EntityKind, _records: u64) {
        if kind == EntityKind::Contacts && !self.done.swap(true, Ordering::SeqCst) {
            self.emu.expire_access_tokens();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_token_expiring_mid_sync_is_refreshed_transparently() {
    let env = amo_env(amo_config(13, 800, 1600)).await;
    let progress = Arc::new(ExpireAfterFirstPage {
        emu: env.emulator().clone(),
        done: AtomicBool::new(false),
    });
    sync_with(&env, true, progress.clone())
        .await
        .expect("sync survives the expiry");
    assert!(progress.done.load(Ordering::SeqCst));
    let stats = env.emulator().stats();
    assert_eq!(stats.token_refreshes, 1, "exactly one refresh");
    assert!(
        stats.unauthorized_401 >= 1,
        "the expired token was refused at least once"
    );
    assert_cache_equals_emulator(&env);
    // The rotated pair was committed: the stored refresh token is the new one and works.
    let stored = env.store.load_tokens().unwrap().unwrap();
    assert!(stored.refresh_token.is_some());
    sync(&env, false)
        .await
        .expect("a later run works with the stored tokens");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_calls_meeting_an_expired_token_cause_one_refresh() {
    let env = amo_env(amo_config(14, 50, 100)).await;
    let handle = rebuy::portal::open(&env.portal, env.store.clone()).unwrap();
    handle.connector.account().await.expect("warm up");
    env.emulator().expire_access_tokens();
    let before = env.emulator().stats().token_refreshes;
    let calls: Vec<_> = (0..50)
        .map(|_| {
            let c = handle.connector.clone();
            tokio::spawn(async move { c.account().await })
        })
        .collect();
    for c in calls {
        c.await.unwrap().expect("every call succeeds");
    }
    assert_eq!(env.emulator().stats().token_refreshes - before, 1);
    assert_eq!(handle.tokens.refreshes(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_refresh_marks_needs_reauthorization() {
    let env = amo_env(amo_config(15, 50, 100)).await;
    // Spend the stored refresh token behind the portal's back, as a second rebuy would.
    let stored = env.store.load_tokens().unwrap().unwrap();
    let settings = rebuy::portal::amo_settings(&env.portal).unwrap();
    let refresher = rebuy_amocrm::auth::AmoRefresher::new(&settings);
    rebuy_core::TokenRefresher::refresh(&refresher, &stored)
        .await
        .expect("first use works");
    env.emulator().expire_access_tokens();

    let err = sync(&env, true).await.expect_err("sync must fail");
    assert!(
        matches!(
            err.connector_error(),
            Some(ConnectorError::NeedsReauth { .. })
        ),
        "got {err:#}"
    );
    let mark = env.store.needs_reauth().unwrap().expect("portal marked");
    assert!(
        mark.reason.contains("revoked"),
        "reason carries the CRM's hint: {}",
        mark.reason
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_faults_give_the_same_cache_as_a_fault_free_run() {
    let clean = amo_env(amo_config(16, 400, 1200)).await;
    sync(&clean, true).await.expect("clean sync");

    let mut cfg = amo_config(16, 400, 1200);
    cfg.faults = FaultConfig {
        error_5xx_rate: 0.08,
        extra_429_rate: 0.08,
        slow_rate: 0.05,
        slow_ms: 50,
        drop_rate: 0.05,
        drop_after_write_rate: 0.05,
        malformed_rate: 0.05,
    };
    let faulty = amo_env(cfg).await;
    faulty.emulator().set_faults(FaultConfig {
        error_5xx_rate: 0.08,
        extra_429_rate: 0.08,
        slow_rate: 0.05,
        slow_ms: 50,
        drop_rate: 0.05,
        drop_after_write_rate: 0.05,
        malformed_rate: 0.05,
    });
    let report = sync(&faulty, true).await.expect("sync survives faults");
    assert!(
        faulty.emulator().stats().faults_injected > 0,
        "faults were injected"
    );
    assert!(report.traffic.retries > 0, "and retried");
    assert_eq!(
        dump(&faulty.store),
        dump(&clean.store),
        "same cache as the fault-free run"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_answers_fail_cleanly_and_write_nothing() {
    let env = amo_env(amo_config(17, 300, 300)).await;
    env.emulator().set_faults(FaultConfig {
        malformed_rate: 1.0,
        ..FaultConfig::default()
    });
    let err = sync(&env, true)
        .await
        .expect_err("every answer is malformed");
    let text = format!("{err:#}");
    assert!(
        text.contains("account") || text.contains("invalid") || text.contains("transient"),
        "{text}"
    );
    for kind in [
        EntityKind::Contacts,
        EntityKind::Deals,
        EntityKind::Companies,
    ] {
        assert_eq!(env.store.count(kind).unwrap(), 0, "nothing half-written");
    }
}

/// amoCRM counts requests in any one-second window: two full syncs back to back at the
/// default rate (each from a fresh connector, as two commands would) get no 429.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_to_back_syncs_at_the_default_rate_get_no_429_from_a_sliding_window() {
    let mut cfg = amo_config(17, 1500, 4000);
    cfg.rate_limit_per_sec = 7;
    let env = amo_env(cfg).await;
    assert_eq!(rebuy::portal::ceiling_rps(&env.portal), 7);
    let first = sync(&env, true).await.expect("first sync");
    let second = sync(&env, true).await.expect("second sync");
    let stats = env.emulator().stats();
    assert!(stats.requests >= 40, "{stats:?}");
    assert_eq!(stats.rate_limited_429, 0, "{stats:?}");
    assert_eq!(first.traffic.rate_limited + second.traffic.rate_limited, 0);
    // Still close to the limit: at least 5.5 requests/s over the two syncs.
    let secs = (first.elapsed + second.elapsed).as_secs_f64();
    let rps = (first.traffic.requests + second.traffic.requests) as f64 / secs;
    assert!(rps >= 5.5, "{rps:.2} requests/s");
}
