//! The sidecar on a Bitrix24 portal: sync (inbound-webhook auth), deletions found by id
//! reconciliation, and `rebuy serve` taking an app install and events.
use crate::support::rebuy_async;
use rebuy::config::{Config, PortalConfig};
use rebuy::server::{AppState, runtime};
use rebuy::store::Store;
use rebuy::sync::{NoProgress, SyncOptions};
use rebuy_core::{Deal, DealState, EntityKind};
use rebuy_emulator::bitrix24::{B24Config, B24Emulator, RunningB24};
use std::sync::Arc;
use std::time::Duration;

fn b24_config(seed: u64, contacts: usize, deals: usize) -> B24Config {
    let mut c = B24Config::default();
    c.seed.seed = seed;
    c.seed.contacts = contacts;
    c.seed.deals = deals;
    c
}

/// A config with one Bitrix24 portal on the emulator; `oauth` picks the app auth, else the
/// inbound webhook.
pub(crate) fn config(
    dir: &std::path::Path,
    emu: &RunningB24,
    oauth: bool,
    public_url: Option<&str>,
) -> Config {
    let c = emu.emulator.config().clone();
    let auth = if oauth {
        format!(
            "type = \"oauth\"\nclient_id = \"{}\"\nclient_secret_env = \"B24_SECRET\"\nredirect_uri = \"{}\"",
            c.client_id, c.redirect_uri
        )
    } else {
        "type = \"webhook\"\nurl_env = \"B24_WEBHOOK\"".to_owned()
    };
    let server = public_url
        .map(|u| format!("[server]\npublic_url = \"{u}\"\n"))
        .unwrap_or_default();
    let text = format!(
        "data_dir = {:?}\n{server}[[portal]]\nid = \"b24\"\nkind = \"bitrix24\"\nbase_url = \"{}\"\n[portal.auth]\n{auth}\n",
        dir.display().to_string(),
        emu.base_url
    );
    use figment::providers::Format;
    let doc: serde_json::Value = figment::Figment::from(figment::providers::Toml::string(&text))
        .extract()
        .unwrap();
    let (secret, hook) = (c.client_secret.clone(), emu.webhook_url());
    let env = move |k: &str| match k {
        "B24_SECRET" => Some(secret.clone()),
        "B24_WEBHOOK" => Some(hook.clone()),
        _ => None,
    };
    rebuy::config::resolve(&doc, "test.toml", &env).unwrap()
}

async fn sync(p: &PortalConfig, store: &Store, opts: SyncOptions) -> rebuy::sync::SyncReport {
    let handle = rebuy::portal::open(p, store.clone()).unwrap();
    rebuy::sync::sync_portal(handle.connector, store.clone(), &opts, Arc::new(NoProgress))
        .await
        .expect("sync")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bitrix24_sync_equals_the_portal_and_reconciles_deletions() {
    let emu = B24Emulator::spawn(b24_config(71, 400, 1300)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &emu, false, None);
    let p = &cfg.portals[0];
    let store = Store::open(dir.path(), &p.id).unwrap();
    let report = sync(
        p,
        &store,
        SyncOptions {
            full: true,
            ..SyncOptions::default()
        },
    )
    .await;
    assert_eq!(
        report.traffic.rate_limited, 0,
        "no QUERY_LIMIT_EXCEEDED on a healthy run"
    );
    emu.emulator.with_data(|d| {
        assert_eq!(
            store.count(EntityKind::Contacts).unwrap(),
            d.contacts.len() as u64
        );
        assert_eq!(
            store.count(EntityKind::Companies).unwrap(),
            d.companies.len() as u64
        );
        assert_eq!(
            store.count(EntityKind::Deals).unwrap(),
            d.deals.len() as u64
        );
        assert_eq!(
            store.count(EntityKind::Pipelines).unwrap(),
            d.categories.len() as u64
        );
        for (id, deal) in &d.deals {
            let got: Deal = store
                .get(*id)
                .unwrap()
                .unwrap_or_else(|| panic!("deal {id} missing"));
            assert_eq!(
                got.amount.as_ref().map(|m| m.amount),
                Some(deal.opportunity),
                "deal {id} amount"
            );
            assert_eq!(got.stage_id.0, deal.stage_id, "deal {id} stage");
            assert_eq!(got.pipeline_id.0, deal.category_id, "deal {id} category");
            let state = match deal.stage_semantic_id.as_str() {
                "S" => DealState::Won,
                "F" => DealState::Lost,
                _ => DealState::Open,
            };
            assert_eq!(got.state, state, "deal {id} state");
            assert_eq!(
                got.created_at.as_second(),
                deal.date_create,
                "deal {id} created"
            );
            assert_eq!(
                got.main_contact_id.map(|c| c.0),
                deal.contact_id,
                "deal {id} contact"
            );
        }
    });
    // Product rows came as their own stream and join their deals.
    let quantities = |store: &Store| {
        let mut out = std::collections::BTreeMap::new();
        store
            .for_each_deal_with_rows(|d| {
                let q: Vec<rust_decimal::Decimal> = d.products.iter().map(|r| r.quantity).collect();
                out.insert(d.id.0, q);
            })
            .unwrap();
        out
    };
    let emulator_quantities = || {
        emu.emulator.with_data(|d| {
            d.deals
                .iter()
                .map(|(id, deal)| (*id, deal.products.iter().map(|r| r.quantity).collect()))
                .collect::<std::collections::BTreeMap<u64, Vec<rust_decimal::Decimal>>>()
        })
    };
    let rows = report.kinds[&EntityKind::ProductRows];
    assert!(rows.records > 0 && rows.full);
    assert_eq!(store.count(EntityKind::ProductRows).unwrap(), rows.records);
    assert_eq!(quantities(&store), emulator_quantities());

    // A deal deleted in the CRM (its event lost), one changed (amount, and one product row
    // fewer).
    let (gone, changed) = emu.emulator.with_data(|d| {
        let mut ids = d.deals.keys().copied();
        let gone = ids.nth(3).unwrap();
        let changed = d
            .deals
            .values()
            .filter(|x| x.id != gone && x.products.len() >= 2)
            .map(|x| x.id)
            .nth(5)
            .unwrap();
        (gone, changed)
    });
    assert!(emu.emulator.delete_deal(gone));
    assert!(emu.emulator.update_deal(changed, |d| {
        d.opportunity = rust_decimal::Decimal::new(777_00, 2);
        d.products.pop();
    }));
    let report = sync(
        p,
        &store,
        SyncOptions {
            reconcile_every: Duration::ZERO,
            ..SyncOptions::default()
        },
    )
    .await;
    let deals = report.kinds[&EntityKind::Deals];
    assert!(!deals.full);
    assert_eq!(deals.deleted, 1, "reconciliation removed the deleted deal");
    assert!(store.get::<Deal>(gone).unwrap().is_none());
    let c: Deal = store.get(changed).unwrap().unwrap();
    assert_eq!(
        c.amount.unwrap().amount,
        rust_decimal::Decimal::new(777_00, 2)
    );
    // The incremental run did not list the rows again; the changed deal brought its own, the
    // deleted one took its rows along.
    assert!(!report.kinds.contains_key(&EntityKind::ProductRows));
    assert_eq!(quantities(&store), emulator_quantities());
    // Not due again right away: the next run does not list ids.
    let report = sync(p, &store, SyncOptions::default()).await;
    assert_eq!(report.kinds[&EntityKind::Deals].deleted, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bitrix24_app_install_binds_handlers_and_events_update_the_cache() {
    let emu = B24Emulator::spawn(b24_config(72, 60, 180)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let cfg = config(dir.path(), &emu, true, Some(&url));
    let state = AppState::new(&cfg, true).unwrap();
    let cancel = tokio_util::sync::CancellationToken::new();
    runtime::spawn_all(&state, &cfg.server, cancel.clone());
    let st = state.clone();
    let c = cancel.clone();
    tokio::spawn(async move {
        rebuy::server::serve(
            listener,
            st.clone(),
            Some(rebuy::ui::router_from_config(st)),
            c.cancelled_owned(),
        )
        .await
    });

    // The portal installs the app: ONAPPINSTALL carries tokens and the application token.
    let p = &cfg.portals[0];
    let settings = rebuy::portal::b24_settings(p).unwrap();
    let code = emu.emulator.issue_authorization_code();
    let tokens = rebuy_bitrix24::auth::exchange_code(&settings, &code)
        .await
        .unwrap();
    use secrecy::ExposeSecret;
    let host = emu.base_url.trim_start_matches("http://").to_owned();
    let app_token = emu.emulator.config().application_token.clone();
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    form.append_pair("event", "ONAPPINSTALL")
        .append_pair("data[VERSION]", "1")
        .append_pair("auth[access_token]", tokens.access_token.expose_secret())
        .append_pair(
            "auth[refresh_token]",
            tokens.refresh_token.as_ref().unwrap().expose_secret(),
        )
        .append_pair("auth[expires_in]", "3600")
        .append_pair("auth[domain]", &host)
        .append_pair("auth[member_id]", &emu.emulator.config().member_id)
        .append_pair("auth[application_token]", &app_token);
    let hook = format!("{url}/hooks/bitrix24/b24");
    let http = reqwest::Client::new();
    let post = |body: String| {
        let (http, hook) = (http.clone(), hook.clone());
        async move {
            let r = http
                .post(&hook)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (status, text) = post(form.finish()).await;
    assert_eq!(status, 200, "{text}");
    let store = state.portal("b24").unwrap().store.clone();

    // The worker stores the tokens and binds the handlers (the emulator records event.bind).
    let started = std::time::Instant::now();
    loop {
        let bound = emu
            .emulator
            .writes()
            .iter()
            .filter(|w| w.method == "event.bind")
            .count();
        if bound >= 7 && store.load_tokens().unwrap().is_some() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "handlers not bound within 5 s ({bound} bound)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // An event signed with another token is refused; the real one is processed.
    let deal = emu.emulator.with_data(|d| *d.deals.keys().next().unwrap());
    assert!(emu.emulator.update_deal(deal, |d| d.opportunity =
        rust_decimal::Decimal::new(4242_00, 2)));
    let ev = emu
        .emulator
        .fired_events()
        .into_iter()
        .rev()
        .find(|e| e.event == "ONCRMDEALUPDATE")
        .unwrap();
    let body = emu.emulator.event_body(&ev, &emu.base_url);
    let (forged, _) = post(body.replace(&app_token, "forged-token")).await;
    assert_eq!(forged, 403);
    let (status, text) = post(body).await;
    assert_eq!(status, 200, "{text}");
    let started = std::time::Instant::now();
    loop {
        if let Some(d) = store.get::<Deal>(deal).unwrap()
            && d.amount.as_ref().map(|m| m.amount) == Some(rust_decimal::Decimal::new(4242_00, 2))
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "deal {deal} not updated within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bitrix24_new_deal_of_a_past_customer_is_moved_and_tasked_within_5_s() {
    let emu = B24Emulator::spawn(b24_config(73, 150, 450)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let mut cfg = config(dir.path(), &emu, true, Some(&url));
    cfg.portals[0].mapping = serde_json::json!({"repeat_pipeline": "Повторные продажи"});
    let p = cfg.portals[0].clone();
    {
        let store = Store::open(dir.path(), &p.id).unwrap();
        rebuy::emulated::authorize_automatically(&p, &store)
            .await
            .unwrap();
        sync(
            &p,
            &store,
            SyncOptions {
                full: true,
                ..SyncOptions::default()
            },
        )
        .await;
    }
    let state = AppState::new(&cfg, true).unwrap();
    let cancel = tokio_util::sync::CancellationToken::new();
    runtime::spawn_all(&state, &cfg.server, cancel.clone());
    let st = state.clone();
    let c = cancel.clone();
    tokio::spawn(async move {
        rebuy::server::serve(
            listener,
            st.clone(),
            Some(rebuy::ui::router_from_config(st)),
            c.cancelled_owned(),
        )
        .await
    });

    // Install the app: the server stores its token and binds the handlers; from then on the
    // emulator delivers its events to the server by itself.
    let code = emu.emulator.issue_authorization_code();
    let tokens =
        rebuy_bitrix24::auth::exchange_code(&rebuy::portal::b24_settings(&p).unwrap(), &code)
            .await
            .unwrap();
    use secrecy::ExposeSecret;
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    form.append_pair("event", "ONAPPINSTALL")
        .append_pair("auth[access_token]", tokens.access_token.expose_secret())
        .append_pair(
            "auth[refresh_token]",
            tokens.refresh_token.as_ref().unwrap().expose_secret(),
        )
        .append_pair("auth[expires_in]", "3600")
        .append_pair("auth[domain]", emu.base_url.trim_start_matches("http://"))
        .append_pair("auth[member_id]", &emu.emulator.config().member_id)
        .append_pair(
            "auth[application_token]",
            &emu.emulator.config().application_token,
        );
    let r = reqwest::Client::new()
        .post(format!("{url}/hooks/bitrix24/b24"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form.finish())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let started = std::time::Instant::now();
    while emu
        .emulator
        .writes()
        .iter()
        .filter(|w| w.method == "event.bind")
        .count()
        < 7
    {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "handlers not bound"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (buyer, main, repeat) = emu.emulator.with_data(|d| {
        let won = d
            .deals
            .values()
            .find(|x| x.stage_semantic_id == "S" && x.contact_id.is_some())
            .unwrap();
        let repeat = d
            .categories
            .values()
            .find(|c| c.name == "Повторные продажи")
            .unwrap()
            .id;
        let main = d
            .categories
            .values()
            .find(|c| c.name != "Повторные продажи")
            .unwrap()
            .id;
        (won.contact_id.unwrap(), main, repeat)
    });
    let started = std::time::Instant::now();
    let deal = emu.emulator.add_deal(buyer, 12_000, main).unwrap();
    let moved_to = |w: &rebuy_emulator::bitrix24::WriteRecord| {
        w.method == "crm.item.update" && w.params.to_string().contains(&format!("\"id\":{deal}"))
            || w.method == "crm.item.update"
                && w.params.to_string().contains(&format!("\"id\":\"{deal}\""))
    };
    loop {
        let writes = emu.emulator.writes();
        let moved = writes.iter().filter(|w| moved_to(w)).count();
        let todo = writes
            .iter()
            .filter(|w| {
                w.method == "crm.activity.todo.add"
                    && w.params.to_string().contains(&deal.to_string())
            })
            .count();
        if moved >= 1 && todo == 1 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "deal {deal} not routed within 5 s ({moved} moves, {todo} to-dos)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("Bitrix24 repeat deal routed in {:?}", started.elapsed());
    let d = emu.emulator.with_data(|d| d.deals[&deal].clone());
    assert_eq!(d.category_id, repeat, "the deal is in the repeat funnel");
    assert!(d.is_return_customer, "flagged IS_RETURN_CUSTOMER");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let todos = emu
        .emulator
        .writes()
        .iter()
        .filter(|w| {
            w.method == "crm.activity.todo.add" && w.params.to_string().contains(&deal.to_string())
        })
        .count();
    assert_eq!(
        todos, 1,
        "one to-do, even though our writes echo back as events"
    );
    cancel.cancel();
}

/// A webhook without the scope of currencies and product rows (403 `insufficient_scope`): the
/// first sync caches contacts and deals and reports what it went without.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_without_optional_scopes_still_syncs() {
    let emu = B24Emulator::spawn(b24_config(58, 80, 240)).await.unwrap();
    emu.emulator
        .set_denied(&["crm.currency.base.get", "crm.item.productrow.list"]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &emu, false, None);
    let p = &cfg.portals[0];
    let store = Store::open(dir.path(), &p.id).unwrap();
    let report = sync(p, &store, SyncOptions::default()).await;
    let (contacts, deals) = emu
        .emulator
        .with_data(|d| (d.contacts.len() as u64, d.deals.len() as u64));
    assert_eq!(store.count(EntityKind::Contacts).unwrap(), contacts);
    assert_eq!(store.count(EntityKind::Deals).unwrap(), deals);
    assert_eq!(report.warnings.len(), 2, "{:?}", report.warnings);
    assert!(
        report.warnings[0].starts_with("account details:"),
        "{:?}",
        report.warnings
    );
    assert!(
        report.warnings[0].contains("insufficient_scope"),
        "{:?}",
        report.warnings
    );
    assert!(
        report.warnings[1].starts_with("product rows:"),
        "{:?}",
        report.warnings
    );
    let kept = rebuy::sync::last_warnings(&store).unwrap();
    assert_eq!(kept.warnings, report.warnings);
    // Amounts without a currency of their own fall back to RUB, and nothing else failed.
    assert!(store.count(EntityKind::ProductRows).unwrap() == 0);
}

/// Two commands back to back (`rebuy sync && rebuy apply`): the second starts from the bucket
/// level the first left in the store, instead of a full burst the portal still counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_second_command_starts_from_the_bucket_the_first_left() {
    let emu = B24Emulator::spawn(b24_config(59, 20, 40)).await.unwrap();
    // A bucket of 50 draining 10/s on both sides, so the test takes seconds, not minutes.
    emu.emulator.set_bucket(50, 10.0);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &emu, false, None);
    let mut p = cfg.portals[0].clone();
    p.requests_per_sec = Some(10);
    let store = Store::open(dir.path(), &p.id).unwrap();
    let calls = |n: usize| {
        let p = p.clone();
        let store = store.clone();
        async move {
            let conn = rebuy::portal::open(&p, store).unwrap().connector;
            for _ in 0..n {
                conn.users().await.expect("users");
            }
            // Dropping the connector (the end of a command) keeps its limiter state.
        }
    };
    calls(45).await;
    assert_eq!(
        emu.emulator.stats().query_limit_503,
        0,
        "the first burst fits"
    );
    let started = std::time::Instant::now();
    calls(45).await;
    assert_eq!(
        emu.emulator.stats().query_limit_503,
        0,
        "the second command did not overrun the portal's bucket"
    );
    // It had to wait for the bucket to drain: about 40 of its 45 calls at 10/s.
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

/// A full sync of a portal bigger than one `batch` splits each big listing into segments listed
/// at once, within the bucket; killed (like `kill -9`) while they run, the next run resumes
/// every segment after its last committed page: the cache ends equal to the portal, and the
/// resumed run reads less than the whole portal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bitrix24_segmented_full_sync_resumes_after_a_crash() {
    let emu = B24Emulator::spawn(b24_config(83, 1500, 8000))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("rebuy.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\n[[portal]]\nid = \"seg\"\nkind = \"bitrix24\"\nbase_url = \"{}\"\n[portal.auth]\ntype = \"webhook\"\nurl_env = \"B24_WEBHOOK\"\n",
            dir.path().join("data").display().to_string(),
            emu.base_url
        ),
    )
    .unwrap();
    let cfg = config.to_str().unwrap().to_owned();
    let hook = emu.webhook_url();
    let run = |failpoint: Option<&str>| {
        let mut env = vec![("B24_WEBHOOK".to_owned(), hook.clone())];
        if let Some(f) = failpoint {
            env.push(("REBUY_FAILPOINTS".to_owned(), f.to_owned()));
        }
        let args = vec![
            "--config".to_owned(),
            cfg.clone(),
            "sync".to_owned(),
            "--portal".to_owned(),
            "seg".to_owned(),
            "--quiet".to_owned(),
        ];
        rebuy_async(args, env)
    };
    // The prelude cuts the deals (8,000) and the rows (8,263) into 3 segments of 2,500 and a
    // counted rest each; with the companies' and the contacts' single pages that is 10 page
    // commits: the 8th leaves two segment pages of the deals or the rows unwritten.
    let out = run(Some("sync.after_page=8")).await;
    assert!(!out.status.success(), "the failpoint aborts the process");
    assert!(String::from_utf8_lossy(&out.stderr).contains("failpoint sync.after_page"));
    let store = Store::open(&dir.path().join("data"), &"seg".into()).unwrap();
    let segmented = [EntityKind::Deals, EntityKind::ProductRows]
        .iter()
        .filter_map(|k| store.sync_state(*k).unwrap().in_progress)
        .filter_map(|ip| ip.cursor)
        // Several segments open, or the last one (`id:{after}..{below}`, `id:{after}..`).
        .any(|c| c.0.starts_with("segments:") || c.0.contains(".."));
    let states: Vec<_> = [EntityKind::Deals, EntityKind::ProductRows]
        .iter()
        .map(|k| {
            store
                .sync_state(*k)
                .unwrap()
                .in_progress
                .map(|ip| ip.cursor)
        })
        .collect();
    assert!(
        segmented,
        "a listing was under way in segments: {states:?}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let partial = store.count(EntityKind::ProductRows).unwrap();
    drop(store);

    let out = run(None).await;
    assert!(
        out.status.success(),
        "resume: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let store = Store::open(&dir.path().join("data"), &"seg".into()).unwrap();
    emu.emulator.with_data(|d| {
        assert_eq!(
            store.count(EntityKind::Deals).unwrap(),
            d.deals.len() as u64
        );
        assert_eq!(
            store.count(EntityKind::Contacts).unwrap(),
            d.contacts.len() as u64
        );
        for id in d.deals.keys() {
            assert!(
                store.get::<Deal>(*id).unwrap().is_some(),
                "deal {id} missing"
            );
        }
        let rows: usize = d.deals.values().map(|x| x.products.len()).sum();
        assert_eq!(
            store.count(EntityKind::ProductRows).unwrap(),
            rows as u64,
            "every product row once"
        );
        // The resumed run finished the listings where they stopped, it did not start over.
        let read: u64 = stdout
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix("product_rows")
                    .and_then(|r| r.split_whitespace().next())
                    .and_then(|n| n.parse().ok())
            })
            .unwrap_or_else(|| panic!("report has a product_rows line: {stdout}"));
        assert!(
            read + partial >= rows as u64 && read < rows as u64,
            "resumed run read {read} product rows of {rows} ({partial} before the crash)"
        );
    });
    for k in [EntityKind::Deals, EntityKind::ProductRows] {
        assert!(
            store.sync_state(k).unwrap().in_progress.is_none(),
            "{k:?} done"
        );
    }
    assert_eq!(
        emu.emulator.stats().query_limit_503,
        0,
        "never over the bucket"
    );
}
