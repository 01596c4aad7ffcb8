//! Outgoing webhooks of the emulators: amoCRM account hooks and Bitrix24 event handlers,
//! delivered to a local receiver, with retries and seeded faults.
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use rebuy_emulator::amocrm::{AmoConfig, AmoEmulator, RunningAmo, STATUS_WON};
use rebuy_emulator::bitrix24::{B24Config, B24Emulator};
use rebuy_emulator::delivery::DeliveryConfig;
use rebuy_emulator::seed::SeedConfig;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One received POST.
#[derive(Debug, Clone)]
struct Hit {
    path: String,
    content_type: String,
    user_agent: String,
    form: BTreeMap<String, String>,
    at: Instant,
}

#[derive(Clone)]
struct Receiver {
    hits: Arc<Mutex<Vec<Hit>>>,
    status: Arc<AtomicU16>,
    base: String,
}

async fn record(
    State(r): State<Receiver>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let h = |k: &str| {
        headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let form = url::form_urlencoded::parse(&body).into_owned().collect();
    r.hits.lock().unwrap().push(Hit {
        path: name,
        content_type: h("content-type"),
        user_agent: h("user-agent"),
        form,
        at: Instant::now(),
    });
    StatusCode::from_u16(r.status.load(Ordering::SeqCst)).unwrap()
}

impl Receiver {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let r = Receiver {
            hits: Arc::default(),
            status: Arc::new(AtomicU16::new(200)),
            base: format!("http://{}", listener.local_addr().unwrap()),
        };
        let app = Router::new()
            .route("/hook/{name}", post(record))
            .with_state(r.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        r
    }

    fn url(&self, name: &str) -> String {
        format!("{}/hook/{name}", self.base)
    }

    fn hits(&self, name: &str) -> Vec<Hit> {
        let all = self.hits.lock().unwrap();
        all.iter().filter(|h| h.path == name).cloned().collect()
    }

    /// Waits until `name` got `n` POSTs (or 3 s), then returns them.
    async fn wait(&self, name: &str, n: usize) -> Vec<Hit> {
        let t0 = Instant::now();
        while self.hits(name).len() < n && t0.elapsed() < Duration::from_secs(3) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.hits(name)
    }
}

fn amo_cfg() -> AmoConfig {
    AmoConfig {
        seed: SeedConfig::new(7, 60, 150),
        rate_limit_per_sec: 0,
        ..AmoConfig::default()
    }
}

async fn amo_token(run: &RunningAmo) -> String {
    let c = run.emulator.config();
    let code = run.emulator.issue_authorization_code();
    let v: Value = reqwest::Client::new()
        .post(format!("{}/oauth2/access_token", run.base_url))
        .json(&json!({"client_id": c.client_id, "client_secret": c.client_secret, "grant_type": "authorization_code", "code": code, "redirect_uri": c.redirect_uri}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["access_token"].as_str().unwrap().to_owned()
}

/// A lead with a contact, and another open status of its pipeline.
fn lead_fixture(emu: &AmoEmulator) -> (u64, u64, u64, u64) {
    emu.with_data(|d| {
        let l = d
            .leads
            .values()
            .find(|l| !l.contacts.is_empty() && l.status_id != STATUS_WON)
            .unwrap();
        let p = &d.pipelines[&l.pipeline_id];
        let other = p
            .statuses
            .iter()
            .find(|s| s.status_type == 0 && s.id != l.status_id && s.id != 143 && s.id != 142)
            .unwrap()
            .id;
        (l.id, l.contacts[0].id, l.pipeline_id, other)
    })
}

fn check_account(f: &BTreeMap<String, String>, emu: &AmoEmulator) {
    let c = emu.config();
    assert_eq!(f["account[subdomain]"], c.subdomain);
    assert_eq!(f["account[id]"], c.account_id.to_string());
    assert_eq!(
        f["account[_links][self]"],
        format!("https://{}.amocrm.ru", c.subdomain)
    );
}

#[tokio::test]
async fn amocrm_hooks_in_the_documented_format() {
    let rx = Receiver::start().await;
    let run = AmoEmulator::spawn(amo_cfg()).await.unwrap();
    let emu = run.emulator.clone();
    let token = amo_token(&run).await;
    let http = reqwest::Client::new();

    // Subscribe through the API.
    let r = http
        .post(format!("{}/api/v4/webhooks", run.base_url))
        .bearer_auth(&token)
        .json(&json!({"destination": rx.url("api"), "settings": ["add_lead", "update_lead", "status_lead", "delete_lead"], "sort": 10}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let m: Value = r.json().await.unwrap();
    assert_eq!(m["destination"], json!(rx.url("api")));
    assert_eq!(m["sort"], json!(10));
    assert_eq!(m["disabled"], json!(false));
    assert_eq!(m["account_id"], json!(emu.config().account_id));
    for k in ["id", "created_by", "created_at", "updated_at", "settings"] {
        assert!(m.get(k).is_some(), "{k} in {m}");
    }
    // A bad code is refused.
    let r = http
        .post(format!("{}/api/v4/webhooks", run.base_url))
        .bearer_auth(&token)
        .json(&json!({"destination": rx.url("x"), "settings": ["no_such_code"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // And through the library: contacts only (the settings filter).
    emu.register_webhook(&rx.url("contacts"), &["update_contact", "delete_contact"]);
    let list: Value = http
        .get(format!("{}/api/v4/webhooks", run.base_url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["_embedded"]["webhooks"].as_array().unwrap().len(), 2);

    let (lead, contact, pipeline, other) = lead_fixture(&emu);
    // add_lead → leads[add]
    let new = emu.add_lead(contact, 1234, pipeline, other).unwrap();
    let hits = rx.wait("api", 1).await;
    let f = &hits[0].form;
    assert_eq!(hits[0].content_type, "application/x-www-form-urlencoded");
    assert_eq!(hits[0].user_agent, "amoCRM-WebHook-client/1.0");
    assert_eq!(f["leads[add][0][id]"], new.to_string());
    assert_eq!(f["leads[add][0][status_id]"], other.to_string());
    assert_eq!(f["leads[add][0][pipeline_id]"], pipeline.to_string());
    assert_eq!(f["leads[add][0][price]"], "1234");
    for k in [
        "name",
        "responsible_user_id",
        "last_modified",
        "modified_user_id",
        "created_user_id",
        "date_create",
        "created_at",
        "updated_at",
        "account_id",
    ] {
        assert!(f.contains_key(&format!("leads[add][0][{k}]")), "{k}: {f:?}");
    }
    check_account(f, &emu);

    // update_lead with a status change → leads[status] with the old status.
    let old_status = emu.with_data(|d| d.leads[&lead].status_id);
    assert!(emu.update_lead(lead, None, Some((pipeline, STATUS_WON))));
    let hits = rx.wait("api", 2).await;
    let f = &hits[1].form;
    assert_eq!(f["leads[status][0][id]"], lead.to_string());
    assert_eq!(f["leads[status][0][status_id]"], STATUS_WON.to_string());
    assert_eq!(f["leads[status][0][old_status_id]"], old_status.to_string());
    assert_eq!(f["leads[status][0][old_pipeline_id]"], pipeline.to_string());
    assert!(!f.keys().any(|k| k.starts_with("leads[update]")), "{f:?}");
    check_account(f, &emu);

    // PATCH through the API: a price change → leads[update]; a status change → leads[status].
    let r = http
        .patch(format!("{}/api/v4/leads/{lead}", run.base_url))
        .bearer_auth(&token)
        .json(&json!({"price": 777}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let hits = rx.wait("api", 3).await;
    let f = &hits[2].form;
    assert_eq!(f["leads[update][0][id]"], lead.to_string());
    assert_eq!(f["leads[update][0][price]"], "777");
    let r = http
        .patch(format!("{}/api/v4/leads", run.base_url))
        .bearer_auth(&token)
        .json(&json!([{"id": lead, "status_id": other, "pipeline_id": pipeline}]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let hits = rx.wait("api", 4).await;
    let f = &hits[3].form;
    assert_eq!(f["leads[status][0][status_id]"], other.to_string());
    assert_eq!(f["leads[status][0][old_status_id]"], STATUS_WON.to_string());

    // delete_lead → leads[delete] with id, status and pipeline.
    assert!(emu.delete_lead(new));
    let hits = rx.wait("api", 5).await;
    let f = &hits[4].form;
    assert_eq!(f["leads[delete][0][id]"], new.to_string());
    assert_eq!(f["leads[delete][0][status_id]"], other.to_string());
    assert_eq!(f["leads[delete][0][pipeline_id]"], pipeline.to_string());
    check_account(f, &emu);

    // The contacts destination got none of the lead hooks; a rename reaches it only.
    assert!(rx.hits("contacts").is_empty());
    assert!(emu.update_contact_name(contact, "Новое Имя"));
    let hits = rx.wait("contacts", 1).await;
    let f = &hits[0].form;
    assert_eq!(f["contacts[update][0][id]"], contact.to_string());
    assert_eq!(f["contacts[update][0][name]"], "Новое Имя");
    check_account(f, &emu);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(rx.hits("api").len(), 5, "no lead hook for a rename");

    // Unsubscribe: nothing more.
    let r = http
        .delete(format!("{}/api/v4/webhooks", run.base_url))
        .bearer_auth(&token)
        .json(&json!({"destination": rx.url("api")}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert!(emu.update_lead(lead, Some(1), None));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(rx.hits("api").len(), 5);
    let s = emu.delivery_stats();
    assert_eq!(s.delivered, 6, "{s:?}");
    assert_eq!(s.failed, 0);
}

#[tokio::test]
async fn amocrm_retries_per_schedule() {
    let rx = Receiver::start().await;
    rx.status.store(500, Ordering::SeqCst);
    let run = AmoEmulator::spawn(AmoConfig {
        delivery: DeliveryConfig {
            retry_schedule: vec![Duration::from_millis(100), Duration::from_millis(200)],
            ..DeliveryConfig::default()
        },
        ..amo_cfg()
    })
    .await
    .unwrap();
    let emu = run.emulator.clone();
    emu.register_webhook(&rx.url("r"), &["update_lead"]);
    let (lead, ..) = lead_fixture(&emu);
    let t0 = Instant::now();
    assert!(emu.update_lead(lead, Some(5), None));
    let hits = rx.wait("r", 3).await;
    assert_eq!(hits.len(), 3);
    assert!(hits[1].at - hits[0].at >= Duration::from_millis(90));
    assert!(hits[2].at - hits[1].at >= Duration::from_millis(190));
    assert!(
        hits.iter()
            .all(|h| h.form["leads[update][0][id]"] == lead.to_string())
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    let s = emu.delivery_stats();
    assert_eq!(
        (s.sent, s.failed, s.retried, s.given_up),
        (3, 3, 2, 1),
        "{s:?}"
    );
    assert_eq!(s.in_flight, 0);
    assert!(t0.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn amocrm_duplicate_drop_delay() {
    let rx = Receiver::start().await;
    let run = AmoEmulator::spawn(amo_cfg()).await.unwrap();
    let emu = run.emulator.clone();
    emu.register_webhook(&rx.url("f"), &["update_lead"]);
    let (lead, ..) = lead_fixture(&emu);

    emu.set_delivery(DeliveryConfig {
        duplicate_rate: 1.0,
        ..DeliveryConfig::default()
    });
    assert!(emu.update_lead(lead, Some(11), None));
    let hits = rx.wait("f", 2).await;
    assert_eq!(hits.len(), 2);
    assert_eq!(hits[0].form, hits[1].form);
    assert_eq!(emu.delivery_stats().duplicated, 1);

    emu.set_delivery(DeliveryConfig {
        drop_rate: 1.0,
        ..DeliveryConfig::default()
    });
    assert!(emu.update_lead(lead, Some(12), None));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(rx.hits("f").len(), 2);
    assert_eq!(emu.delivery_stats().dropped, 1);

    emu.set_delivery(DeliveryConfig {
        delay_ms: (300, 300),
        ..DeliveryConfig::default()
    });
    let t0 = Instant::now();
    assert!(emu.update_lead(lead, Some(13), None));
    let hits = rx.wait("f", 3).await;
    assert_eq!(hits.len(), 3);
    assert!(hits[2].at - t0 >= Duration::from_millis(290));
    assert_eq!(hits[2].form["leads[update][0][price]"], "13");
}

#[tokio::test]
async fn amocrm_order_kept_per_destination() {
    let rx = Receiver::start().await;
    let run = AmoEmulator::spawn(amo_cfg()).await.unwrap();
    let emu = run.emulator.clone();
    emu.register_webhook(&rx.url("o"), &["update_lead"]);
    let (lead, ..) = lead_fixture(&emu);
    for p in 1..=20 {
        assert!(emu.update_lead(lead, Some(p), None));
    }
    let hits = rx.wait("o", 20).await;
    let prices: Vec<String> = hits
        .iter()
        .map(|h| h.form["leads[update][0][price]"].clone())
        .collect();
    let want: Vec<String> = (1..=20).map(|p: i64| p.to_string()).collect();
    assert_eq!(prices, want);
}

fn b24_cfg() -> B24Config {
    B24Config {
        seed: SeedConfig::new(5, 60, 120),
        bucket_capacity: 10_000,
        drain_per_sec: 10_000.0,
        ..B24Config::default()
    }
}

#[tokio::test]
async fn bitrix24_events_reach_bound_handlers_without_retries() {
    let rx = Receiver::start().await;
    let run = B24Emulator::spawn(b24_cfg()).await.unwrap();
    let emu = run.emulator.clone();
    let c = emu.config().clone();
    let code = emu.issue_authorization_code();
    let v: Value = reqwest::Client::new()
        .get(format!("{}/oauth/token/", run.base_url))
        .query(&[
            ("grant_type", "authorization_code"),
            ("client_id", c.client_id.as_str()),
            ("client_secret", c.client_secret.as_str()),
            ("code", code.as_str()),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let access = v["access_token"].as_str().unwrap().to_owned();
    let handler = format!("{}?portal=a&x=1", rx.url("b24"));
    let r: Value = reqwest::Client::new()
        .post(format!("{}/rest/event.bind", run.base_url))
        .json(&json!({"auth": access, "event": "onCrmDealUpdate", "handler": handler}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["result"], json!(true), "{r}");
    let got: Value = reqwest::Client::new()
        .post(format!("{}/rest/event.get", run.base_url))
        .json(&json!({"auth": access}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        got["result"][0]["handler"],
        json!(handler),
        "stored as given"
    );

    let deal = emu.with_data(|d| *d.deals.keys().next().unwrap());
    assert!(emu.update_deal(deal, |_| {}));
    let hits = rx.wait("b24", 1).await;
    assert_eq!(hits.len(), 1);
    let f = &hits[0].form;
    assert_eq!(hits[0].content_type, "application/x-www-form-urlencoded");
    assert_eq!(f["event"], "ONCRMDEALUPDATE");
    assert_eq!(f["data[FIELDS][ID]"], deal.to_string());
    assert_eq!(f["auth[application_token]"], c.application_token);
    assert_eq!(f["auth[domain]"], c.domain);
    assert_eq!(
        f["auth[client_endpoint]"],
        format!("{}/rest/", run.base_url)
    );
    // Other events are not sent to this handler.
    let contact = emu.with_data(|d| *d.contacts.keys().next().unwrap());
    assert!(emu.update_contact(contact, |_| {}));

    // A failing handler is called once: no retries.
    rx.status.store(500, Ordering::SeqCst);
    assert!(emu.update_deal(deal, |_| {}));
    let hits = rx.wait("b24", 2).await;
    assert_eq!(hits.len(), 2);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(rx.hits("b24").len(), 2, "no retry");
    let s = emu.delivery_stats();
    assert_eq!(
        (s.sent, s.delivered, s.failed, s.given_up),
        (2, 1, 1, 1),
        "{s:?}"
    );
}
