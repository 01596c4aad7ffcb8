//! End-to-end tests of the Bitrix24 connector against the Bitrix24 emulator.
//!
//! The expected records are derived from the emulator's own records (`with_data`) by the
//! documented mapping rules, not from the connector's code.
use rebuy_bitrix24::{B24Auth, B24Client, B24Settings, auth};
use rebuy_core::auth::MemoryTokenStore;
use rebuy_core::connector::{EntityRef, FieldWrite, ListQuery, TaskKind, WriteOp};
use rebuy_core::phone::{Phone, normalize_email};
use rebuy_core::retry::RetryPolicy;
use rebuy_core::*;
use rebuy_emulator::bitrix24::{B24Config, B24Contact, B24Deal, B24Emulator, RunningB24};
use rebuy_emulator::faults::FaultConfig;
use rebuy_emulator::seed::SeedConfig;
use rust_decimal::Decimal;
use secrecy::SecretString;
use std::sync::Arc;
use std::time::Duration;

fn fast_cfg(contacts: usize, deals: usize) -> B24Config {
    B24Config {
        seed: SeedConfig::new(7, contacts, deals),
        bucket_capacity: 10_000,
        drain_per_sec: 10_000.0,
        method_cost_ms: 0,
        ..B24Config::default()
    }
}

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 12,
        base: Duration::from_millis(10),
        cap: Duration::from_secs(3),
    }
}

fn oauth_settings(run: &RunningB24) -> B24Settings {
    let c = run.emulator.config();
    let mut s = B24Settings::oauth(
        run.base_url.parse().unwrap(),
        &c.client_id,
        SecretString::from(c.client_secret.clone()),
        &c.redirect_uri,
    );
    s.bucket_capacity = c.bucket_capacity;
    s.drain_per_sec = c.drain_per_sec;
    s.retry = fast_retry();
    s.request_timeout = Duration::from_secs(20);
    s
}

async fn oauth_client(
    run: &RunningB24,
    tweak: impl FnOnce(&mut B24Settings),
) -> (B24Client, Arc<TokenManager>, Arc<MemoryTokenStore>) {
    let mut s = oauth_settings(run);
    tweak(&mut s);
    let code = run.emulator.issue_authorization_code();
    let tokens = auth::exchange_code(&s, &code).await.expect("code exchange");
    let store = Arc::new(MemoryTokenStore::new(Some(tokens)));
    let mgr = Arc::new(TokenManager::new(
        store.clone(),
        Some(Arc::new(auth::B24Refresher::new(&s))),
    ));
    (B24Client::new(s, Some(mgr.clone())).unwrap(), mgr, store)
}

fn webhook_client(run: &RunningB24, tweak: impl FnOnce(&mut B24Settings)) -> B24Client {
    let mut s = B24Settings::webhook(&run.webhook_url()).unwrap();
    let c = run.emulator.config();
    s.bucket_capacity = c.bucket_capacity;
    s.drain_per_sec = c.drain_per_sec;
    s.retry = fast_retry();
    tweak(&mut s);
    B24Client::new(s, None).unwrap()
}

fn ts(s: i64) -> jiff::Timestamp {
    jiff::Timestamp::from_second(s).unwrap()
}

fn uf_values(v: &serde_json::Value) -> Vec<String> {
    match v {
        serde_json::Value::Array(a) => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| x.to_string())
            })
            .collect(),
        serde_json::Value::Null => vec![],
        serde_json::Value::String(s) => vec![s.clone()],
        other => vec![other.to_string()],
    }
}

fn expected_contact(c: &B24Contact) -> Contact {
    let mut custom = Vec::new();
    if !c.phones.is_empty() {
        custom.push(CustomFieldValue {
            field_id: "PHONE".into(),
            code: Some("PHONE".into()),
            name: None,
            values: c.phones.iter().map(|p| p.value.clone()).collect(),
        });
    }
    if !c.emails.is_empty() {
        custom.push(CustomFieldValue {
            field_id: "EMAIL".into(),
            code: Some("EMAIL".into()),
            name: None,
            values: c.emails.iter().map(|p| p.value.clone()).collect(),
        });
    }
    for (k, v) in &c.uf {
        custom.push(CustomFieldValue {
            field_id: k.clone(),
            code: None,
            name: None,
            values: uf_values(v),
        });
    }
    let name = [
        c.name.as_str(),
        c.second_name.as_str(),
        c.last_name.as_str(),
    ]
    .iter()
    .filter(|s| !s.trim().is_empty())
    .map(|s| s.trim())
    .collect::<Vec<_>>()
    .join(" ");
    Contact {
        id: ContactId(c.id),
        name,
        phones: c.phones.iter().map(|p| Phone::parse(&p.value)).collect(),
        emails: c
            .emails
            .iter()
            .filter_map(|e| normalize_email(&e.value))
            .collect(),
        company_id: c.company_id.map(CompanyId),
        responsible_user_id: Some(UserId(c.assigned_by_id)),
        created_at: ts(c.date_create),
        updated_at: ts(c.date_modify),
        custom_fields: custom,
    }
}

fn expected_deal(d: &B24Deal, with_products: bool) -> Deal {
    let state = match d.stage_semantic_id.as_str() {
        "S" => DealState::Won,
        "F" => DealState::Lost,
        _ => DealState::Open,
    };
    let mut custom: Vec<CustomFieldValue> =
        d.uf.iter()
            .map(|(k, v)| CustomFieldValue {
                field_id: k.clone(),
                code: None,
                name: None,
                values: uf_values(v),
            })
            .collect();
    custom.push(CustomFieldValue {
        field_id: "IS_RETURN_CUSTOMER".into(),
        code: Some("IS_RETURN_CUSTOMER".into()),
        name: None,
        values: vec![if d.is_return_customer { "Y" } else { "N" }.into()],
    });
    let products = if with_products {
        d.products
            .iter()
            .map(|r| ProductRow {
                product_id: Some(r.product_id),
                name: r.product_name.clone(),
                price: r.price,
                quantity: r.quantity,
            })
            .collect()
    } else {
        vec![]
    };
    Deal {
        id: DealId(d.id),
        name: d.title.clone(),
        pipeline_id: PipelineId(d.category_id),
        stage_id: StageId(d.stage_id.clone()),
        state,
        amount: Some(Money::new(d.opportunity, Currency::new(&d.currency_id))),
        main_contact_id: d.contact_id.map(ContactId),
        contact_ids: d.contact_id.map(ContactId).into_iter().collect(),
        company_id: d.company_id.map(CompanyId),
        responsible_user_id: Some(UserId(d.assigned_by_id)),
        created_at: ts(d.date_create),
        updated_at: ts(d.date_modify),
        closed_at: d.closed.then(|| ts(d.closedate)),
        products,
        custom_fields: custom,
    }
}

async fn all_contacts(
    c: &B24Client,
    q: &ListQuery,
) -> Result<(Vec<Contact>, usize), ConnectorError> {
    let mut out = Vec::new();
    let mut cursor = None;
    let mut pages = 0;
    loop {
        let page = c.contacts(q, cursor.as_ref()).await?;
        pages += 1;
        out.extend(page.items);
        match page.next {
            Some(n) => cursor = Some(n),
            None => return Ok((out, pages)),
        }
    }
}

async fn all_deals(c: &B24Client, q: &ListQuery) -> Result<Vec<Deal>, ConnectorError> {
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let page = c.deals(q, cursor.as_ref()).await?;
        out.extend(page.items);
        match page.next {
            Some(n) => cursor = Some(n),
            None => return Ok(out),
        }
    }
}

#[tokio::test]
async fn listing_equals_emulator_data_exactly() {
    let run = B24Emulator::spawn(fast_cfg(420, 1_300)).await.unwrap();
    // 3 commands per batch: 150 rows per page, so pages, chains and the partial end all occur.
    let (client, _, _) = oauth_client(&run, |s| s.batch_size = 3).await;
    let (contacts, pages) = all_contacts(&client, &ListQuery::default()).await.unwrap();
    let expected: Vec<Contact> = run
        .emulator
        .with_data(|d| d.contacts.values().map(expected_contact).collect());
    assert_eq!(contacts.len(), 420);
    assert_eq!(pages, 3);
    assert_eq!(contacts, expected);

    // A full listing leaves the product rows to their own stream...
    let deals = all_deals(&client, &ListQuery::default()).await.unwrap();
    let expected: Vec<Deal> = run
        .emulator
        .with_data(|d| d.deals.values().map(|d| expected_deal(d, false)).collect());
    assert_eq!(deals.len(), expected.len());
    for (a, e) in deals.iter().zip(&expected) {
        assert_eq!(a, e, "deal {}", e.id);
    }
    // ...which brings every row once, in row id order, each placed on its deal.
    assert!(client.lists_product_rows());
    let mut rows: Vec<DealProductRow> = Vec::new();
    let mut cursor = None;
    let mut row_pages = 0;
    loop {
        let page = client.product_rows(cursor.as_ref()).await.unwrap();
        row_pages += 1;
        rows.extend(page.items);
        match page.next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert!(rows.windows(2).all(|w| w[0].id < w[1].id));
    let with_rows: Vec<Deal> = run
        .emulator
        .with_data(|d| d.deals.values().map(|d| expected_deal(d, true)).collect());
    let expected_rows: usize = with_rows.iter().map(|d| d.products.len()).sum();
    assert_eq!(rows.len(), expected_rows);
    assert!(row_pages > 1, "{expected_rows} rows in {row_pages} pages");
    let mut joined = deals.clone();
    for r in rows {
        let d = joined.iter_mut().find(|d| d.id == r.deal_id).unwrap();
        d.products.push(r.row);
    }
    assert_eq!(joined, with_rows);
    assert!(
        joined
            .iter()
            .any(|d| d.state == DealState::Won && !d.products.is_empty())
    );
    // An incremental listing attaches each changed deal's current rows.
    let since = ListQuery {
        updated_from: Some(jiff::Timestamp::UNIX_EPOCH),
        updated_to: None,
    };
    assert_eq!(all_deals(&client, &since).await.unwrap(), with_rows);
    let deals = with_rows;
    assert!(deals.iter().any(
        |d| d.pipeline_id.0 > 0 && d.stage_id.0.starts_with(&format!("C{}:", d.pipeline_id.0))
    ));

    let companies_seen = {
        let mut n = 0;
        let mut cursor = None;
        loop {
            let p = client
                .companies(&ListQuery::default(), cursor.as_ref())
                .await
                .unwrap();
            n += p.items.len();
            match p.next {
                Some(c) => cursor = Some(c),
                None => break n,
            }
        }
    };
    assert_eq!(
        companies_seen,
        run.emulator.with_data(|d| d.companies.len())
    );

    // Single gets agree with the listing.
    let one = client.deal(deals[5].id).await.unwrap().unwrap();
    assert_eq!(one, deals[5]);
    let c = client.contact(contacts[7].id).await.unwrap().unwrap();
    assert_eq!(c, contacts[7]);
    assert_eq!(client.deal(DealId(1)).await.unwrap(), None);
    assert_eq!(client.contact(ContactId(1)).await.unwrap(), None);
}

#[tokio::test]
async fn chains_have_no_gap_or_duplicate_at_exact_multiples() {
    // 150 contacts = exactly 3 full list calls: the next command returns [] and ends the page.
    let run = B24Emulator::spawn(fast_cfg(150, 200)).await.unwrap();
    let client = webhook_client(&run, |s| s.batch_size = 3);
    let (contacts, pages) = all_contacts(&client, &ListQuery::default()).await.unwrap();
    let ids: Vec<u64> = contacts.iter().map(|c| c.id.0).collect();
    let expected: Vec<u64> = run
        .emulator
        .with_data(|d| d.contacts.keys().copied().collect());
    assert_eq!(ids, expected);
    assert_eq!(pages, 2, "a full page then an empty one");
    // Deal ids for reconciliation see a deletion.
    let victim = run.emulator.with_data(|d| *d.deals.keys().nth(17).unwrap());
    assert!(run.emulator.delete_deal(victim));
    let mut ids = Vec::new();
    let mut cursor = None;
    loop {
        let p = client.deal_ids(cursor.as_ref()).await.unwrap();
        ids.extend(p.items);
        match p.next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let expected: Vec<DealId> = run
        .emulator
        .with_data(|d| d.deals.keys().map(|k| DealId(*k)).collect());
    assert_eq!(ids, expected);
    assert!(!ids.contains(&DealId(victim)));
}

#[tokio::test]
async fn incremental_listing_by_date_modify() {
    let run = B24Emulator::spawn(fast_cfg(200, 400)).await.unwrap();
    let client = webhook_client(&run, |_| {});
    let since = ts(run.emulator.now());
    let id = run.emulator.with_data(|d| *d.deals.keys().nth(3).unwrap());
    assert!(
        run.emulator
            .update_deal(id, |d| d.title = "Изменено".into())
    );
    let deals = all_deals(
        &client,
        &ListQuery {
            updated_from: Some(since),
            updated_to: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(deals.iter().map(|d| d.id.0).collect::<Vec<_>>(), vec![id]);
    assert_eq!(deals[0].name, "Изменено");
    // A few changed records cost one list call (and one for the changed deal's product
    // rows), not a chain of 50.
    assert_eq!(run.emulator.stats().batch_commands, 2);

    // Many changed records still come whole, the chain taking over after the first page, as
    // long as the first call counted: 120 = 50, then a chain of 2 calls for the 70 left, and
    // no empty request after them.
    let since = ts(run.emulator.now());
    let ids: Vec<u64> = run
        .emulator
        .with_data(|d| d.deals.keys().copied().take(120).collect());
    for id in &ids {
        assert!(run.emulator.update_deal(*id, |d| d.title.push('!')));
    }
    let lists = |run: &RunningB24| {
        run.emulator
            .stats()
            .by_method
            .get("crm.deal.list")
            .copied()
            .unwrap_or(0)
    };
    let before = lists(&run);
    let deals = all_deals(
        &client,
        &ListQuery {
            updated_from: Some(since),
            updated_to: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(deals.iter().map(|d| d.id.0).collect::<Vec<_>>(), ids);
    assert_eq!(lists(&run) - before, 3, "list calls for 120 changed deals");
}

#[tokio::test]
async fn expiry_mid_listing_is_refreshed_once() {
    let run = B24Emulator::spawn(fast_cfg(400, 100)).await.unwrap();
    let (client, mgr, store) = oauth_client(&run, |s| s.batch_size = 2).await;
    let q = ListQuery::default();
    let first = client.contacts(&q, None).await.unwrap();
    run.emulator.expire_access_tokens();
    let mut all = first.items;
    let mut cursor = first.next;
    while let Some(c) = cursor {
        let p = client.contacts(&q, Some(&c)).await.unwrap();
        all.extend(p.items);
        cursor = p.next;
    }
    assert_eq!(all.len(), 400);
    assert_eq!(mgr.refreshes(), 1);
    assert_eq!(run.emulator.stats().token_refreshes, 1);
    assert_eq!(store.saves(), 1, "the rotated pair was committed");
}

#[tokio::test]
async fn fifty_concurrent_calls_meeting_an_expired_token_refresh_once() {
    let run = B24Emulator::spawn(fast_cfg(100, 100)).await.unwrap();
    let (client, mgr, _) = oauth_client(&run, |_| {}).await;
    client.users().await.unwrap();
    run.emulator.expire_access_tokens();
    let ids: Vec<u64> = run
        .emulator
        .with_data(|d| d.contacts.keys().take(50).copied().collect());
    let tasks: Vec<_> = ids
        .into_iter()
        .map(|id| {
            let c = client.clone();
            tokio::spawn(async move { c.contact(ContactId(id)).await })
        })
        .collect();
    for t in tasks {
        assert!(t.await.unwrap().unwrap().is_some());
    }
    assert_eq!(mgr.refreshes(), 1);
    assert_eq!(run.emulator.stats().token_refreshes, 1);
}

#[tokio::test]
async fn rejected_refresh_needs_reauth() {
    let run = B24Emulator::spawn(fast_cfg(20, 20)).await.unwrap();
    let (client, _, store) = oauth_client(&run, |_| {}).await;
    run.emulator.revoke_refresh_tokens();
    run.emulator.expire_access_tokens();
    let err = client.users().await.unwrap_err();
    assert!(matches!(err, ConnectorError::NeedsReauth { .. }), "{err:?}");
    assert!(store.needs_reauth().unwrap().contains("invalid_grant"));
    assert!(run.emulator.stats().token_refusals >= 1);
}

#[tokio::test]
async fn inbound_webhook_auth() {
    let run = B24Emulator::spawn(fast_cfg(60, 60)).await.unwrap();
    let client = webhook_client(&run, |_| {});
    assert_eq!(client.users().await.unwrap().len(), 8);
    let (a, _) = all_contacts(&client, &ListQuery::default()).await.unwrap();
    assert_eq!(a.len(), 60);
    // Both auth styles work for one portal.
    let (oauth, _, _) = oauth_client(&run, |_| {}).await;
    assert_eq!(
        all_contacts(&oauth, &ListQuery::default()).await.unwrap().0,
        a
    );
    // A wrong secret is refused, and not retried.
    let bad = format!("{}/rest/1/wrongsecret/", run.base_url);
    let mut s = B24Settings::webhook(&bad).unwrap();
    s.retry = fast_retry();
    let before = run.emulator.stats().requests;
    let err = B24Client::new(s, None).unwrap().users().await.unwrap_err();
    assert!(
        matches!(&err, ConnectorError::Auth { message } if message.contains("NO_AUTH_FOUND")),
        "{err:?}"
    );
    assert_eq!(run.emulator.stats().requests, before + 1);
    assert!(matches!(
        B24Settings::webhook(&bad).unwrap().auth,
        B24Auth::Webhook { .. }
    ));
}

#[tokio::test]
async fn injected_faults_give_the_same_data() {
    let run = B24Emulator::spawn(fast_cfg(500, 800)).await.unwrap();
    let clean = webhook_client(&run, |s| s.batch_size = 2);
    let (want_c, _) = all_contacts(&clean, &ListQuery::default()).await.unwrap();
    let want_d = all_deals(&clean, &ListQuery::default()).await.unwrap();
    run.emulator.set_faults(FaultConfig {
        slow_ms: 20,
        ..FaultConfig::uniform(0.06)
    });
    let (faulty, _, _) = oauth_client(&run, |s| s.batch_size = 2).await;
    let (got_c, _) = all_contacts(&faulty, &ListQuery::default()).await.unwrap();
    let got_d = all_deals(&faulty, &ListQuery::default()).await.unwrap();
    assert_eq!(got_c, want_c);
    assert_eq!(got_d, want_d);
    assert!(run.emulator.stats().faults_injected > 0);
    assert!(faulty.stats().retries > 0);
}

#[tokio::test]
async fn query_limit_exceeded_is_handled_without_a_storm() {
    let run = B24Emulator::spawn(fast_cfg(600, 100)).await.unwrap();
    // The portal is far stricter than the client believes (another app filled the bucket).
    run.emulator.set_bucket(3, 10.0);
    let client = webhook_client(&run, |s| {
        s.batch_size = 1;
        s.bucket_capacity = 1_000;
        s.drain_per_sec = 1_000.0;
    });
    let (all, pages) = all_contacts(&client, &ListQuery::default()).await.unwrap();
    assert_eq!(all.len(), 600);
    let stats = run.emulator.stats();
    assert!(stats.query_limit_503 > 0, "the test must provoke 503s");
    assert!(client.stats().rate_limited > 0);
    // Growing, shared pauses: far fewer refusals than successful pages.
    assert!(
        stats.query_limit_503 <= pages as u64,
        "{} 503s for {pages} pages",
        stats.query_limit_503
    );
}

#[tokio::test]
async fn matching_limits_never_hit_the_bucket() {
    let run = B24Emulator::spawn(B24Config {
        bucket_capacity: 10,
        drain_per_sec: 20.0,
        method_cost_ms: 0,
        seed: SeedConfig::new(3, 2_000, 100),
        ..B24Config::default()
    })
    .await
    .unwrap();
    let client = webhook_client(&run, |s| s.batch_size = 1);
    let start = std::time::Instant::now();
    let (all, pages) = all_contacts(&client, &ListQuery::default()).await.unwrap();
    assert_eq!(all.len(), 2_000);
    assert_eq!(pages, 41);
    assert_eq!(run.emulator.stats().query_limit_503, 0);
    // 8 requests of burst, then 20/s: the rest take at least (41 - 8) / 20 s.
    assert!(
        start.elapsed() >= Duration::from_millis(1_500),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn operation_time_limit_is_handled() {
    let run = B24Emulator::spawn(B24Config {
        method_cost_ms: 10,
        ..fast_cfg(400, 50)
    })
    .await
    .unwrap();
    // 20 ms of crm.contact.list per 2 s: the third call in a window is refused.
    run.emulator.set_operating_limit(0.02, 2.0);
    let client = webhook_client(&run, |s| s.batch_size = 1);
    let (all, _) = all_contacts(&client, &ListQuery::default()).await.unwrap();
    assert_eq!(all.len(), 400);
    assert!(run.emulator.stats().operation_limit_429 > 0);
    assert!(
        client.stats().rate_limited > 0,
        "{:?} {:?}",
        client.stats(),
        run.emulator.stats()
    );
}

#[tokio::test]
async fn malformed_answers_are_errors() {
    // A truncated body on every answer: retried as transient, then reported.
    let run = B24Emulator::spawn(B24Config {
        faults: FaultConfig {
            malformed_rate: 1.0,
            ..Default::default()
        },
        ..fast_cfg(20, 20)
    })
    .await
    .unwrap();
    let client = webhook_client(&run, |s| {
        s.retry = RetryPolicy {
            max_attempts: 3,
            base: Duration::from_millis(5),
            cap: Duration::from_millis(50),
        }
    });
    let err = client.users().await.unwrap_err();
    assert!(matches!(err, ConnectorError::Transient { .. }), "{err:?}");

    // A well-formed answer with a wrong value: Invalid, naming the JSON path.
    let app = axum::Router::new().route(
        "/rest/1/s/batch",
        axum::routing::post(|| async {
            axum::Json(serde_json::json!({"result": {"result": {"c00": [
                {"ID": "5", "TITLE": "x", "DATE_CREATE": "2024-01-01T00:00:00+03:00", "DATE_MODIFY": "2024-01-01T00:00:00+03:00",
                 "OPPORTUNITY": "много"}]},
                "result_error": [], "result_total": [], "result_next": [], "result_time": []}, "time": {}}))
        }),
    )
    .route("/rest/1/s/crm.currency.base.get", axum::routing::post(|| async { axum::Json(serde_json::json!({"result": "RUB"})) }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let mut s = B24Settings::webhook(&format!("http://{addr}/rest/1/s/")).unwrap();
    s.retry = fast_retry();
    let err = B24Client::new(s, None)
        .unwrap()
        .deals(&ListQuery::default(), None)
        .await
        .unwrap_err();
    match err {
        ConnectorError::Invalid { path, .. } => {
            assert_eq!(path, "result.result.c00[0].OPPORTUNITY")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn pipelines_users_and_account() {
    let run = B24Emulator::spawn(fast_cfg(50, 50)).await.unwrap();
    let (client, _, _) = oauth_client(&run, |_| {}).await;
    let pipes = client.pipelines().await.unwrap();
    assert_eq!(pipes.len(), 3);
    assert!(pipes[0].is_main && pipes[0].id == PipelineId(0));
    let p1 = &pipes[1];
    assert!(
        p1.stages
            .iter()
            .all(|s| s.id.0.starts_with(&format!("C{}:", p1.id.0)))
    );
    for p in &pipes {
        assert_eq!(
            p.stages.iter().filter(|s| s.kind == StageKind::Won).count(),
            1
        );
        assert_eq!(
            p.stages
                .iter()
                .filter(|s| s.kind == StageKind::Lost)
                .count(),
            2,
            "LOSE and APOLOGY"
        );
    }
    let users = client.users().await.unwrap();
    assert_eq!(users.len(), 8);
    assert!(users.iter().any(|u| !u.active));
    let acc = client.account().await.unwrap();
    assert_eq!(acc.currency, Currency::new("RUB"));
    assert_eq!(acc.domain, run.emulator.config().domain);
}

#[tokio::test]
async fn writes_are_packed_into_one_batch() {
    let run = B24Emulator::spawn(fast_cfg(50, 120)).await.unwrap();
    let (client, _, _) = oauth_client(&run, |_| {}).await;
    let (deal, contact) = run.emulator.with_data(|d| {
        let deal = d.deals.values().find(|x| x.category_id == 0).unwrap().id;
        (deal, *d.contacts.keys().next().unwrap())
    });
    let before = run.emulator.stats().requests;
    let ops = vec![
        // Commands run in order: the field exists before the update below writes it.
        WriteOp::CreateField {
            entity: rebuy_core::FieldEntityKind::Contacts,
            name: "Сегмент rebuy".into(),
            code: Some("REBUY_SEGMENT".into()),
            kind: rebuy_core::FieldKind::Select(vec!["sleeping".into(), "loyal".into()]),
        },
        WriteOp::MoveDeal {
            deal: DealId(deal),
            pipeline: PipelineId(1),
            stage: StageId("C1:PREPARATION".into()),
        },
        WriteOp::CreateTask {
            entity: EntityRef::Deal(DealId(deal)),
            responsible: UserId(6_100_001),
            text: "Позвонить: пора повторить заказ [rebuy:abc]".into(),
            due: ts(1_800_000_000),
            kind: TaskKind::Call,
        },
        WriteOp::FlagRepeat { deal: DealId(deal) },
        WriteOp::UpdateFields {
            entity: EntityRef::Contact(ContactId(contact)),
            fields: vec![FieldWrite {
                field_id: "UF_CRM_REBUY_SEGMENT".into(),
                value: Some("sleeping".into()),
            }],
        },
        WriteOp::FlagRepeat { deal: DealId(1) },
    ];
    let res = client.apply(&ops).await;
    assert_eq!(
        run.emulator.stats().requests,
        before + 1,
        "one batch request"
    );
    assert!(
        res[0].is_ok() && res[1].is_ok() && res[3].is_ok() && res[4].is_ok(),
        "{res:?}"
    );
    assert!(res[0].as_ref().unwrap().created_id.is_some(), "field id");
    assert!(res[2].as_ref().unwrap().created_id.is_some());
    assert!(
        matches!(res[5], Err(ConnectorError::NotFound { .. })),
        "{:?}",
        res[5]
    );
    // The new field is listed with its label, as a string (lists are written by item id).
    let fields = client.custom_fields().await.unwrap();
    let f = fields
        .iter()
        .find(|f| f.id == "UF_CRM_REBUY_SEGMENT")
        .expect("created field listed");
    assert_eq!(
        (f.name.as_str(), f.field_type.as_str()),
        ("Сегмент rebuy", "string")
    );
    run.emulator.with_data(|d| {
        let x = &d.deals[&deal];
        assert_eq!((x.category_id, x.stage_id.as_str()), (1, "C1:PREPARATION"));
        assert!(x.is_return_customer);
        assert_eq!(
            d.contacts[&contact].uf["UF_CRM_REBUY_SEGMENT"],
            serde_json::json!("sleeping")
        );
    });
    let fired = run.emulator.fired_events();
    assert!(
        fired
            .iter()
            .any(|e| e.event == "ONCRMDEALMOVETOCATEGORY" && e.id == deal)
    );
    let w = run.emulator.writes();
    assert!(w.iter().any(|w| w.method == "crm.activity.todo.add"));
    // The moved deal reads back in its new funnel.
    let d = client.deal(DealId(deal)).await.unwrap().unwrap();
    assert_eq!(d.pipeline_id, PipelineId(1));
    assert_eq!(
        d.custom_fields
            .iter()
            .find(|f| f.field_id == "IS_RETURN_CUSTOMER")
            .unwrap()
            .values,
        vec!["Y"]
    );
}

#[tokio::test]
async fn emulator_events_parse() {
    let run = B24Emulator::spawn(fast_cfg(20, 20)).await.unwrap();
    let id = run.emulator.with_data(|d| *d.deals.keys().next().unwrap());
    run.emulator
        .update_deal(id, |d| d.opportunity = Decimal::new(123_400, 2));
    let ev = run.emulator.fired_events().pop().unwrap();
    let body = run.emulator.event_body(&ev, &run.base_url);
    let parsed =
        rebuy_bitrix24::events::parse(body.as_bytes(), Some("application/x-www-form-urlencoded"))
            .unwrap();
    assert_eq!(parsed.kind, rebuy_bitrix24::events::EventKind::DealUpdate);
    assert_eq!(parsed.entity_id, Some(id));
    assert!(parsed.verify(&run.emulator.config().application_token));
}

/// A portal that moved to another domain: the configured address no longer answers, but the
/// OAuth server's `client_endpoint` names the new one, and the calls follow it.
#[tokio::test]
async fn calls_follow_client_endpoint_after_a_domain_change() {
    let run = B24Emulator::spawn(fast_cfg(60, 80)).await.unwrap();
    // Nothing listens on the old address (a port just released).
    let old = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/", l.local_addr().unwrap())
    };
    let (client, _, _) = oauth_client(&run, |s| {
        let B24Auth::OAuth { oauth_server, .. } = &mut s.auth else {
            unreachable!("OAuth settings")
        };
        *oauth_server = Some(s.base_url.clone());
        // The new address is one the integrator allowed.
        s.allowed_hosts = vec![format!(
            "{}:{}",
            s.base_url.host_str().unwrap(),
            s.base_url.port().unwrap()
        )];
        s.base_url = old.parse().unwrap();
    })
    .await;
    let (contacts, _) = all_contacts(&client, &ListQuery::default()).await.unwrap();
    assert_eq!(contacts.len(), 60);

    // Without tokens naming an endpoint the old address is used, and fails.
    let mut dead_settings = B24Settings::webhook(&format!("{old}rest/1/x/")).unwrap();
    dead_settings.retry = RetryPolicy {
        max_attempts: 1,
        ..fast_retry()
    };
    let dead = B24Client::new(dead_settings, None).unwrap();
    assert!(matches!(
        dead.contacts(&ListQuery::default(), None).await,
        Err(ConnectorError::Transient { .. })
    ));
}

/// A `client_endpoint` naming a host that is neither the portal's nor allowed (here: in the
/// stored token answer, as a forged install or a hostile token server would leave it) is never
/// called: every request stays on the configured portal.
#[tokio::test]
async fn a_client_endpoint_on_a_host_not_allowed_is_never_called() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let run = B24Emulator::spawn(fast_cfg(40, 40)).await.unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let foreign = format!("http://{}/rest/", listener.local_addr().unwrap());
    let app = axum::Router::new().fallback(move || {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            axum::Json(serde_json::json!({"result": [], "total": 0}))
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await });

    let s = oauth_settings(&run);
    let code = run.emulator.issue_authorization_code();
    let mut tokens = auth::exchange_code(&s, &code).await.unwrap();
    tokens
        .extra
        .insert("client_endpoint".into(), foreign.clone());
    let store = Arc::new(MemoryTokenStore::new(Some(tokens)));
    let mgr = Arc::new(TokenManager::new(
        store,
        Some(Arc::new(auth::B24Refresher::new(&s))),
    ));
    let client = B24Client::new(s.clone(), Some(mgr)).unwrap();
    let (contacts, _) = all_contacts(&client, &ListQuery::default()).await.unwrap();
    assert_eq!(contacts.len(), 40, "the portal itself answered");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "the foreign host was called"
    );

    // The same host on another port is another host; listing it allows it.
    assert!(!s.endpoint_allowed(&foreign.parse().unwrap()));
    let mut allowed = s.clone();
    allowed.allowed_hosts = vec![
        foreign
            .trim_start_matches("http://")
            .trim_end_matches("/rest/")
            .into(),
    ];
    assert!(allowed.endpoint_allowed(&foreign.parse().unwrap()));
}

/// Pages of one cursor until its end: (rows' ids, requests).
async fn segment_ids<F, Fut>(start: Cursor, fetch: F) -> (Vec<u64>, u32)
where
    F: Fn(Cursor) -> Fut,
    Fut: std::future::Future<Output = Page<u64>>,
{
    let (mut ids, mut pages, mut cur) = (Vec::new(), 0, start);
    loop {
        let p = fetch(cur).await;
        pages += 1;
        ids.extend(p.items);
        match p.next {
            Some(c) => cur = c,
            None => return (ids, pages),
        }
    }
}

/// `split` cuts the rest of a listing into id ranges that together hold every row once, each
/// closed range listed by a single request (its last command counts what is left), for deals
/// and product rows alike; a row deleted after the probe leaves no gap and no repeat.
#[tokio::test]
async fn split_segments_cover_the_table_once() {
    let run = B24Emulator::spawn(fast_cfg(300, 1000)).await.unwrap();
    // 3 commands of 50: 150 rows a request, so 1,000 deals make several segments.
    let client = webhook_client(&run, |s| s.batch_size = 3);
    let q = ListQuery::default();
    let first = client.deals(&q, None).await.unwrap();
    assert_eq!(first.items.len(), 150);
    let next = first.next.clone().unwrap();
    let parts = client.split(EntityKind::Deals, &next).await.unwrap();
    // One probe of 3 commands: 3 closed ranges of 150 deals, then the open rest (400).
    assert_eq!(parts.len(), 4, "{parts:?}");
    assert!(parts[..parts.len() - 1].iter().all(|c| c.0.contains("..")));
    // A segment cannot be split again, and a plain cursor is needed for the deals' own paging.
    assert!(
        client
            .split(EntityKind::Deals, &parts[0])
            .await
            .unwrap()
            .is_empty()
    );
    let victim = run
        .emulator
        .with_data(|d| *d.deals.keys().nth(400).unwrap());
    assert!(run.emulator.delete_deal(victim));
    let mut ids: Vec<u64> = first.items.iter().map(|d| d.id.0).collect();
    for (i, part) in parts.iter().enumerate() {
        let (got, pages) = segment_ids(part.clone(), |c| {
            let client = &client;
            let q = &q;
            async move {
                let p = client.deals(q, Some(&c)).await.unwrap();
                Page {
                    items: p.items.iter().map(|d| d.id.0).collect(),
                    next: p.next,
                }
            }
        })
        .await;
        if i + 1 < parts.len() {
            assert_eq!(pages, 1, "segment {i} ({}) in one request", part.0);
        }
        ids.extend(got);
    }
    let expected: Vec<u64> = run
        .emulator
        .with_data(|d| d.deals.keys().copied().collect());
    assert_eq!(ids, expected, "every deal once, in order");

    // Product rows split the same way.
    let first = client.product_rows(None).await.unwrap();
    let parts = client
        .split(EntityKind::ProductRows, first.next.as_ref().unwrap())
        .await
        .unwrap();
    assert!(parts.len() >= 2, "{parts:?}");
    let mut rows: Vec<u64> = first.items.iter().map(|r| r.id).collect();
    for part in &parts {
        let (got, _) = segment_ids(part.clone(), |c| {
            let client = &client;
            async move {
                let p = client.product_rows(Some(&c)).await.unwrap();
                Page {
                    items: p.items.iter().map(|r| r.id).collect(),
                    next: p.next,
                }
            }
        })
        .await;
        rows.extend(got);
    }
    let expected: Vec<u64> = run.emulator.with_data(|d| {
        let mut v: Vec<u64> = d
            .deals
            .values()
            .flat_map(|x| x.products.iter().map(|r| r.id))
            .collect();
        v.sort_unstable();
        v
    });
    assert_eq!(rows, expected, "every product row once, in order");
}
