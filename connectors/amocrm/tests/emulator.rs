//! The connector against the real amoCRM emulator (`rebuy-emulator`): OAuth, listing, token
//! expiry, single-flight refresh, rate limits, faults, deletions and writes.
use rebuy_amocrm::auth::{AmoRefresher, exchange_code};
use rebuy_amocrm::{AmoClient, AmoSettings};
use rebuy_core::auth::MemoryTokenStore;
use rebuy_core::connector::{EntityRef, FieldWrite, TaskKind};
use rebuy_core::retry::RetryPolicy;
use rebuy_core::{
    Connector, ConnectorError, ContactId, Cursor, DealId, DealState, EntityKind, ListQuery,
    PipelineId, StageId, TokenManager, TokenRefresher, TokenStore, UserId, WriteOp,
};
use rebuy_emulator::amocrm::{AmoConfig, AmoEmulator, RunningAmo};
use rebuy_emulator::faults::FaultConfig;
use rebuy_emulator::seed::SeedConfig;
use secrecy::SecretString;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Env {
    amo: RunningAmo,
    settings: AmoSettings,
    store: Arc<MemoryTokenStore>,
    tokens: Arc<TokenManager>,
    client: AmoClient,
}

fn config(contacts: usize, deals: usize, rate: u32) -> AmoConfig {
    AmoConfig {
        seed: SeedConfig::new(7, contacts, deals),
        rate_limit_per_sec: rate,
        ..AmoConfig::default()
    }
}

async fn env(cfg: AmoConfig, client_rate: u32) -> Env {
    let amo = AmoEmulator::spawn(cfg.clone())
        .await
        .expect("emulator starts");
    let mut settings = AmoSettings::new(
        amo.base_url.parse().unwrap(),
        cfg.client_id.clone(),
        SecretString::from(cfg.client_secret.clone()),
        cfg.redirect_uri.clone(),
    );
    settings.requests_per_sec = client_rate;
    settings.retry = RetryPolicy {
        max_attempts: 8,
        base: Duration::from_millis(20),
        cap: Duration::from_secs(2),
    };
    settings.request_timeout = Duration::from_secs(10);
    let code = amo.emulator.issue_authorization_code();
    let set = exchange_code(&settings, &code)
        .await
        .expect("code exchange");
    assert!(set.refresh_token.is_some());
    assert!(set.expires_at.is_some());
    let store = Arc::new(MemoryTokenStore::new(Some(set)));
    let tokens = Arc::new(TokenManager::new(
        store.clone(),
        Some(Arc::new(AmoRefresher::new(&settings))),
    ));
    let client = AmoClient::new(settings.clone(), tokens.clone()).unwrap();
    Env {
        amo,
        settings,
        store,
        tokens,
        client,
    }
}

async fn all_deals(c: &AmoClient, q: &ListQuery) -> Vec<rebuy_core::Deal> {
    let mut out = Vec::new();
    let mut cursor: Option<Cursor> = None;
    loop {
        let page = c.deals(q, cursor.as_ref()).await.expect("deals page");
        out.extend(page.items);
        match page.next {
            Some(n) => cursor = Some(n),
            None => return out,
        }
    }
}

#[tokio::test]
async fn full_listing_matches_the_emulator() {
    let e = env(config(300, 700, 0), 1000).await;
    let deals = all_deals(&e.client, &ListQuery::default()).await;
    let (want_leads, want_contacts, want_companies) = e.amo.emulator.with_data(|d| {
        (
            d.leads.keys().copied().collect::<Vec<_>>(),
            d.contacts.len(),
            d.companies.len(),
        )
    });
    let got: Vec<u64> = deals.iter().map(|d| d.id.0).collect();
    assert_eq!(got, want_leads, "every lead once, in id order");

    // Spot-check the mapping against the emulator's own record.
    let d = &deals[deals.len() / 2];
    e.amo.emulator.with_data(|data| {
        let l = &data.leads[&d.id.0];
        assert_eq!(d.amount.as_ref().map(|m| m.amount), Some(l.price.into()));
        assert_eq!(
            d.amount.as_ref().map(|m| m.currency.0.as_str()),
            Some("RUB")
        );
        assert_eq!(d.pipeline_id.0, l.pipeline_id);
        assert_eq!(d.stage_id.0, l.status_id.to_string());
        let state = match l.status_id {
            142 => DealState::Won,
            143 => DealState::Lost,
            _ => DealState::Open,
        };
        assert_eq!(d.state, state);
        assert_eq!(d.contact_ids.len(), l.contacts.len());
        assert_eq!(d.products.len(), l.products.len());
        for (row, p) in d.products.iter().zip(&l.products) {
            let el = &data.catalog.elements[&p.element_id];
            assert_eq!(row.name, el.name);
            assert_eq!(row.price, el.price.into());
            assert_eq!(row.quantity, p.quantity.into());
        }
    });

    let mut contacts = 0;
    let mut with_phone = 0;
    let mut cursor = None;
    loop {
        let page = e
            .client
            .contacts(&ListQuery::default(), cursor.as_ref())
            .await
            .unwrap();
        contacts += page.items.len();
        with_phone += page
            .items
            .iter()
            .filter(|c| c.phones.iter().any(|p| p.e164.is_some()))
            .count();
        match page.next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    assert_eq!(contacts, want_contacts);
    assert!(with_phone > 0, "phones are mapped");

    let mut companies = 0;
    let mut cursor = None;
    loop {
        let page = e
            .client
            .companies(&ListQuery::default(), cursor.as_ref())
            .await
            .unwrap();
        companies += page.items.len();
        match page.next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    assert_eq!(companies, want_companies);

    let users = e.client.users().await.unwrap();
    assert_eq!(users.len(), e.amo.emulator.with_data(|d| d.users.len()));
    let pipelines = e.client.pipelines().await.unwrap();
    assert!(!pipelines.is_empty());
    for p in &pipelines {
        assert!(
            p.stages
                .iter()
                .any(|s| s.id.0 == "142" && s.kind == rebuy_core::StageKind::Won)
        );
        assert!(
            p.stages
                .iter()
                .any(|s| s.id.0 == "143" && s.kind == rebuy_core::StageKind::Lost)
        );
    }
    let account = e.client.account().await.unwrap();
    assert_eq!(account.currency.0, "RUB");
    assert_eq!(e.client.stats().rate_limited, 0);
}

#[tokio::test]
async fn incremental_listing_returns_changed_records() {
    let e = env(config(100, 400, 0), 1000).await;
    let now = e.amo.emulator.now();
    let first = e
        .amo
        .emulator
        .with_data(|d| *d.leads.keys().next().unwrap());
    assert!(e.amo.emulator.update_lead(first, Some(123_456), None));
    let q = ListQuery {
        updated_from: Some(jiff::Timestamp::from_second(now).unwrap()),
        updated_to: None,
    };
    let deals = all_deals(&e.client, &q).await;
    assert!(
        deals
            .iter()
            .any(|d| d.id.0 == first && d.amount.as_ref().unwrap().amount == 123_456.into())
    );
    let ids: BTreeSet<u64> = deals.iter().map(|d| d.id.0).collect();
    assert!(ids.len() <= 3, "only recent changes: {ids:?}");

    // From the beginning of time, the incremental order also sees every lead exactly once.
    let q = ListQuery {
        updated_from: Some(jiff::Timestamp::from_second(0).unwrap()),
        updated_to: None,
    };
    let all: BTreeSet<u64> = all_deals(&e.client, &q)
        .await
        .iter()
        .map(|d| d.id.0)
        .collect();
    assert_eq!(all.len(), e.amo.emulator.with_data(|d| d.leads.len()));
}

#[tokio::test]
async fn missing_entities_are_none() {
    let e = env(config(20, 20, 0), 1000).await;
    assert!(e.client.deal(DealId(999_999_999)).await.unwrap().is_none());
    assert!(
        e.client
            .contact(ContactId(999_999_999))
            .await
            .unwrap()
            .is_none()
    );
    let id = e
        .amo
        .emulator
        .with_data(|d| *d.leads.keys().next().unwrap());
    assert_eq!(e.client.deal(DealId(id)).await.unwrap().unwrap().id.0, id);
}

#[tokio::test]
async fn token_expiry_mid_listing_refreshes_once() {
    let e = env(config(50, 1000, 0), 1000).await;
    let page = e.client.deals(&ListQuery::default(), None).await.unwrap();
    e.amo.emulator.expire_access_tokens();
    let mut n = page.items.len();
    let mut cursor = page.next;
    while let Some(c) = cursor {
        let page = e
            .client
            .deals(&ListQuery::default(), Some(&c))
            .await
            .unwrap();
        n += page.items.len();
        cursor = page.next;
    }
    assert_eq!(n, 1000);
    assert_eq!(e.tokens.refreshes(), 1);
    assert_eq!(e.amo.emulator.stats().token_refreshes, 1);
    // The rotated pair was committed to the store.
    assert_eq!(e.store.saves(), 1);
}

#[tokio::test]
async fn fifty_concurrent_calls_with_an_expired_token_refresh_once() {
    let e = env(config(50, 50, 0), 1000).await;
    // Warm the account currency so every call below is one lead request.
    e.client.account().await.unwrap();
    e.amo.emulator.expire_access_tokens();
    let ids: Vec<u64> = e
        .amo
        .emulator
        .with_data(|d| d.leads.keys().copied().take(50).collect());
    let tasks: Vec<_> = ids
        .iter()
        .map(|&id| {
            let c = e.client.clone();
            tokio::spawn(async move { c.deal(DealId(id)).await })
        })
        .collect();
    for t in tasks {
        assert!(t.await.unwrap().unwrap().is_some());
    }
    assert_eq!(e.tokens.refreshes(), 1);
    assert_eq!(e.amo.emulator.stats().token_refreshes, 1);
}

#[tokio::test]
async fn rejected_refresh_needs_reauth() {
    let e = env(config(10, 10, 0), 1000).await;
    // Spend the stored refresh token behind the manager's back (as a second process would).
    let current = e.store.load().await.unwrap().unwrap();
    AmoRefresher::new(&e.settings)
        .refresh(&current)
        .await
        .unwrap();
    e.amo.emulator.expire_access_tokens();
    let err = e
        .client
        .deals(&ListQuery::default(), None)
        .await
        .unwrap_err();
    match &err {
        ConnectorError::NeedsReauth { message } => {
            assert!(message.contains("revoked"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert!(e.store.needs_reauth().is_some());
}

#[tokio::test]
async fn rate_limit_is_respected_and_429s_are_survived() {
    // The client runs at the emulator's limit: burst 1 keeps it clear of 429s.
    let e = env(config(10, 600, 7), 7).await;
    let start = Instant::now();
    let deals = all_deals(&e.client, &ListQuery::default()).await;
    assert_eq!(deals.len(), 600);
    assert_eq!(e.amo.emulator.stats().rate_limited_429, 0);
    assert!(start.elapsed() < Duration::from_secs(5));

    // Injected 429s (HTML, no Retry-After) are retried, never fatal.
    let e2 = env(config(10, 300, 0), 1000).await;
    e2.amo.emulator.set_faults(FaultConfig {
        extra_429_rate: 0.3,
        ..FaultConfig::none()
    });
    let deals = all_deals(&e2.client, &ListQuery::default()).await;
    assert_eq!(deals.len(), 300);
}

#[tokio::test]
async fn concurrent_calls_share_one_limiter() {
    // 60 calls at once against an emulator allowing 20/s (burst 20): the client's evenly
    // spaced slots never trip it.
    let e = env(config(10, 60, 20), 20).await;
    e.client.account().await.unwrap();
    let ids: Vec<u64> = e
        .amo
        .emulator
        .with_data(|d| d.leads.keys().copied().collect());
    let start = Instant::now();
    let tasks: Vec<_> = ids
        .iter()
        .map(|&id| {
            let c = e.client.clone();
            tokio::spawn(async move { c.deal(DealId(id)).await })
        })
        .collect();
    for t in tasks {
        assert!(t.await.unwrap().unwrap().is_some());
    }
    let took = start.elapsed();
    assert_eq!(e.amo.emulator.stats().rate_limited_429, 0);
    assert_eq!(e.client.stats().rate_limited, 0);
    assert!(
        took >= Duration::from_millis(2_800),
        "60 requests at 20/s took {took:?}"
    );
}

/// Records per second of a full lead listing with the limit at 1000 requests/s. Run with
/// `cargo test -p rebuy-amocrm --release --test emulator throughput -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn throughput() {
    let e = env(config(5_000, 30_000, 0), 1000).await;
    e.client.account().await.unwrap();
    let start = Instant::now();
    let deals = all_deals(&e.client, &ListQuery::default()).await;
    let took = start.elapsed();
    assert_eq!(deals.len(), 30_000);
    println!(
        "{} deals in {took:?}: {:.0} records/s, {:?}",
        deals.len(),
        deals.len() as f64 / took.as_secs_f64(),
        e.client.stats()
    );
}

#[tokio::test]
async fn faults_cost_retries_not_data() {
    let e = env(config(50, 800, 0), 1000).await;
    e.amo.emulator.set_faults(FaultConfig {
        error_5xx_rate: 0.1,
        drop_rate: 0.1,
        malformed_rate: 0.1,
        slow_rate: 0.05,
        slow_ms: 50,
        ..FaultConfig::none()
    });
    let deals = all_deals(&e.client, &ListQuery::default()).await;
    let ids: BTreeSet<u64> = deals.iter().map(|d| d.id.0).collect();
    assert_eq!(ids.len(), 800);
    let stats = e.client.stats();
    assert!(stats.retries > 0 && stats.transient > 0, "{stats:?}");
}

#[tokio::test]
async fn deletions_come_from_events() {
    let e = env(config(30, 30, 0), 1000).await;
    let since = jiff::Timestamp::from_second(e.amo.emulator.now() - 1).unwrap();
    let (lead, contact) = e.amo.emulator.with_data(|d| {
        (
            *d.leads.keys().next().unwrap(),
            *d.contacts.keys().last().unwrap(),
        )
    });
    assert!(e.amo.emulator.delete_lead(lead));
    assert!(e.amo.emulator.delete_contact(contact));
    let mut got = Vec::new();
    let mut cursor = None;
    loop {
        let page = e.client.deletions(since, cursor.as_ref()).await.unwrap();
        got.extend(page.items);
        match page.next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    assert!(
        got.iter()
            .any(|d| d.entity == EntityKind::Deals && d.id == lead),
        "{got:?}"
    );
    assert!(
        got.iter()
            .any(|d| d.entity == EntityKind::Contacts && d.id == contact),
        "{got:?}"
    );
}

#[tokio::test]
async fn writes_are_batched_and_mapped_back() {
    let e = env(config(30, 30, 0), 1000).await;
    let (lead, contact, user, pipeline, stage) = e.amo.emulator.with_data(|d| {
        let l = d.leads.values().next().unwrap();
        let p = &d.pipelines[&l.pipeline_id];
        let stage = p
            .statuses
            .iter()
            .find(|s| s.id != l.status_id && s.id != 142 && s.id != 143)
            .unwrap()
            .id;
        (
            l.id,
            *d.contacts.keys().next().unwrap(),
            *d.users.keys().next().unwrap(),
            l.pipeline_id,
            stage,
        )
    });
    let due = jiff::Timestamp::from_second(e.amo.emulator.now() + 86_400).unwrap();
    let ops = vec![
        WriteOp::CreateTask {
            entity: EntityRef::Contact(ContactId(contact)),
            responsible: UserId(user),
            text: "Позвонить: повторная покупка [rebuy:1]".into(),
            due,
            kind: TaskKind::Call,
        },
        WriteOp::MoveDeal {
            deal: DealId(lead),
            pipeline: PipelineId(pipeline),
            stage: StageId(stage.to_string()),
        },
        WriteOp::FlagRepeat { deal: DealId(lead) },
        WriteOp::CreateTask {
            entity: EntityRef::Deal(DealId(lead)),
            responsible: UserId(user),
            text: "Встреча [rebuy:2]".into(),
            due,
            kind: TaskKind::Meeting,
        },
        // Not a field of the account: amoCRM (and the emulator) reject this item only.
        WriteOp::UpdateFields {
            entity: EntityRef::Contact(ContactId(contact)),
            fields: vec![FieldWrite {
                field_id: "1".into(),
                value: Some("x".into()),
            }],
        },
        WriteOp::UpdateFields {
            entity: EntityRef::Contact(ContactId(contact)),
            fields: vec![FieldWrite {
                field_id: "264915".into(),
                value: Some("champions".into()),
            }],
        },
    ];
    let results = e.client.apply(&ops).await;
    assert_eq!(results.len(), ops.len());
    let t1 = results[0]
        .as_ref()
        .expect("task 1")
        .created_id
        .expect("task id");
    let t2 = results[3]
        .as_ref()
        .expect("task 2")
        .created_id
        .expect("task id");
    assert_ne!(t1, t2);
    assert!(results[1].is_ok(), "{:?}", results[1]);
    assert!(results[2].is_ok(), "{:?}", results[2]);
    assert!(
        matches!(
            &results[4],
            Err(ConnectorError::Rejected { status: 400, .. })
        ),
        "{:?}",
        results[4]
    );
    assert!(results[5].is_ok(), "{:?}", results[5]);

    let deal = e.client.deal(DealId(lead)).await.unwrap().unwrap();
    assert_eq!(deal.stage_id.0, stage.to_string());
    e.amo.emulator.with_data(|d| {
        assert!(d.leads[&lead].tags.iter().any(|t| t.name == "repeat"));
        assert_eq!(d.tasks[&t1].entity_id, Some(contact));
    });
    // Flagging again does not write again.
    let again = e
        .client
        .apply(&[WriteOp::FlagRepeat { deal: DealId(lead) }])
        .await;
    assert!(again[0].is_ok());
}

#[tokio::test]
async fn customers_fields_and_lookups_after_a_lost_answer() {
    let mut cfg = config(30, 30, 0);
    cfg.customers_mode = "periodicity".into();
    // Counts the customers rebuy creates: no generated ones.
    cfg.history_customers = false;
    let e = env(cfg, 1000).await;
    let c = &e.client;
    let funnel = c.customers_funnel().await.unwrap();
    assert_eq!(funnel.mode, "periodicity");
    assert!(funnel.statuses.len() >= 4);
    let status = funnel.statuses[1].id.clone();
    let (contact, pipeline, stage) = e.amo.emulator.with_data(|d| {
        let p = d.pipelines.values().find(|p| !p.is_main).unwrap();
        (*d.contacts.keys().next().unwrap(), p.id, p.statuses[1].id)
    });
    let next = jiff::Timestamp::from_second(1_800_000_000).unwrap();
    let ops = vec![
        WriteOp::CreateField {
            entity: rebuy_core::FieldEntityKind::Contacts,
            name: "ABC-класс".into(),
            code: None,
            kind: rebuy_core::FieldKind::Select(vec!["A".into(), "B".into(), "C".into()]),
        },
        WriteOp::CreateCustomer {
            name: "Клиент".into(),
            contact: ContactId(contact),
            company: None,
            status: status.clone(),
            next_date: next,
            next_price: Some(rust_decimal::Decimal::new(45_006, 1)),
            responsible: None,
        },
        WriteOp::CreateDeal {
            name: "Повторная покупка: Клиент".into(),
            pipeline: PipelineId(pipeline),
            stage: StageId(stage.to_string()),
            contact: Some(ContactId(contact)),
            company: None,
            responsible: None,
            price: None,
        },
        WriteOp::CreateCustomer {
            name: "Клиент".into(),
            contact: ContactId(contact),
            company: None,
            status: StageId("1".into()),
            next_date: next,
            next_price: None,
            responsible: None,
        },
    ];
    let res = c.apply(&ops).await;
    let field = res[0].as_ref().unwrap().created_id.unwrap();
    let customer = res[1].as_ref().unwrap().created_id.unwrap();
    let deal = res[2].as_ref().unwrap().created_id.unwrap();
    let err = res[3].as_ref().unwrap_err().to_string();
    assert!(err.contains("status_id"), "{err}");
    // The new field is listed, with its type.
    let fields = c.custom_fields().await.unwrap();
    let f = fields.iter().find(|f| f.id == field.to_string()).unwrap();
    assert_eq!(
        (f.name.as_str(), f.field_type.as_str()),
        ("ABC-класс", "select")
    );
    // Listing and the lookups a restarted outbox makes.
    let page = c.customers(None).await.unwrap();
    assert_eq!(page.items.len(), 1);
    let got = &page.items[0];
    assert_eq!(
        (
            got.id,
            &got.status,
            got.next_date,
            got.next_price,
            got.contact
        ),
        (
            customer,
            &status,
            Some(next),
            4501,
            Some(ContactId(contact))
        )
    );
    assert_eq!(
        c.find_customer(ContactId(contact)).await.unwrap(),
        Some(customer)
    );
    let other = e
        .amo
        .emulator
        .with_data(|d| *d.contacts.keys().nth(1).unwrap());
    assert_eq!(c.find_customer(ContactId(other)).await.unwrap(), None);
    let name = "Повторная покупка: Клиент";
    assert_eq!(
        c.find_deal(name, PipelineId(pipeline), Some(ContactId(contact)), None)
            .await
            .unwrap(),
        Some(deal)
    );
    assert_eq!(
        c.find_deal(
            "другая",
            PipelineId(pipeline),
            Some(ContactId(contact)),
            None
        )
        .await
        .unwrap(),
        None
    );
    // A company's segment field (B2B customers): PATCH /api/v4/companies.
    let company = e
        .amo
        .emulator
        .with_data(|d| *d.companies.keys().next().unwrap());
    let res = c
        .apply(&[WriteOp::UpdateFields {
            entity: EntityRef::Company(rebuy_core::CompanyId(company)),
            fields: vec![rebuy_core::FieldWrite {
                field_id: rebuy_emulator::amocrm::field_ids::COMPANY_WEB.to_string(),
                value: Some("https://example.ru".into()),
            }],
        }])
        .await;
    assert!(res[0].is_ok(), "{res:?}");
    let w = e.amo.emulator.writes();
    assert!(w.field_updates.iter().any(|u| u.entity_type == "companies"
        && u.entity_id == company
        && u.values == Some(vec![serde_json::json!("https://example.ru")])));
    // Moved and re-dated.
    let later = jiff::Timestamp::from_second(1_800_086_400).unwrap();
    let res = c
        .apply(&[WriteOp::UpdateCustomer {
            customer,
            status: funnel.statuses[2].id.clone(),
            next_date: later,
            next_price: None,
        }])
        .await;
    assert!(res[0].is_ok(), "{res:?}");
    e.amo.emulator.with_data(|d| {
        let x = &d.customers[&customer];
        assert_eq!(x.status_id.to_string(), funnel.statuses[2].id.0);
        assert_eq!(x.next_date, 1_800_086_400);
        assert_eq!(x.next_price, 4501, "kept when not sent");
    });
}
