//! The amoCRM emulator over real sockets: OAuth, lists, limits, writes, events, faults.
use rebuy_emulator::amocrm::{
    AmoConfig, AmoEmulator, RunningAmo, STATUS_LOST, STATUS_WON, field_ids,
};
use rebuy_emulator::faults::FaultConfig;
use rebuy_emulator::seed::SeedConfig;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;

fn cfg() -> AmoConfig {
    AmoConfig {
        seed: SeedConfig::new(7, 300, 900),
        rate_limit_per_sec: 0,
        ..AmoConfig::default()
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

struct Env {
    run: RunningAmo,
    http: reqwest::Client,
    token: String,
    refresh: String,
}

impl Env {
    async fn new(cfg: AmoConfig) -> Self {
        let run = AmoEmulator::spawn(cfg).await.expect("spawn");
        let http = http();
        let body = exchange_code(&run, &http).await;
        Env {
            token: body["access_token"].as_str().expect("access").to_owned(),
            refresh: body["refresh_token"].as_str().expect("refresh").to_owned(),
            run,
            http,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.run.base_url)
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("send")
    }

    async fn get_json(&self, path: &str) -> Value {
        let r = self.get(path).await;
        assert_eq!(r.status(), StatusCode::OK, "GET {path}");
        assert_eq!(r.headers()["content-type"], "application/hal+json");
        r.json().await.expect("json")
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: &Value) -> (StatusCode, Value) {
        let r = self
            .http
            .request(method, self.url(path))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .expect("send");
        let status = r.status();
        let text = r.text().await.expect("text");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

async fn exchange_code(run: &RunningAmo, http: &reqwest::Client) -> Value {
    let c = run.emulator.config();
    let code = run.emulator.issue_authorization_code();
    let r = http
        .post(format!("{}/oauth2/access_token", run.base_url))
        .json(&json!({"client_id": c.client_id, "client_secret": c.client_secret, "grant_type": "authorization_code", "code": code, "redirect_uri": c.redirect_uri}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.expect("json")
}

fn jwt_payload(token: &str) -> Value {
    let part = token.split('.').nth(1).expect("jwt payload");
    // base64url without padding, decoded by hand to keep dev-dependencies small.
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'-' => 62,
        _ => 63,
    } as u32;
    let mut out = Vec::new();
    for chunk in part.as_bytes().chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= val(c) << (18 - 6 * i);
        }
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..chunk.len() - 1]);
    }
    serde_json::from_slice(&out).expect("payload json")
}

#[tokio::test]
async fn oauth_code_exchange_json_form_and_basic() {
    let run = AmoEmulator::spawn(cfg()).await.expect("spawn");
    let http = http();
    let c = run.emulator.config().clone();
    let url = format!("{}/oauth2/access_token", run.base_url);

    // JSON, as the docs show.
    let code = run.emulator.issue_authorization_code();
    let body = json!({"client_id": c.client_id, "client_secret": c.client_secret, "grant_type": "authorization_code", "code": code, "redirect_uri": c.redirect_uri});
    let r = http.post(&url).json(&body).send().await.expect("send");
    assert_eq!(r.status(), 200);
    let t: Value = r.json().await.expect("json");
    assert_eq!(t["token_type"], "Bearer");
    assert_eq!(t["expires_in"], 86_400);
    assert!(t["server_time"].as_i64().is_some());
    let claims = jwt_payload(t["access_token"].as_str().expect("token"));
    assert_eq!(claims["aud"], c.client_id.as_str());
    assert!(claims["jti"].as_str().is_some_and(|j| !j.is_empty()));
    assert_eq!(
        claims["exp"].as_i64(),
        t["server_time"].as_i64().map(|s| s + 86_400)
    );
    assert_eq!(claims["api_domain"], "api-b.amocrm.ru");

    // The code is single use.
    let r = http.post(&url).json(&body).send().await.expect("send");
    assert_eq!(r.status(), 400);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let e: Value = r.json().await.expect("json");
    assert_eq!(e["hint"], "Authorization code has been revoked");

    // Form body, as the oauth2 crate and league/oauth2-client send it.
    let code = run.emulator.issue_authorization_code();
    let r = http
        .post(&url)
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", c.redirect_uri.as_str()),
            ("client_id", c.client_id.as_str()),
            ("client_secret", c.client_secret.as_str()),
        ])
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);

    // Client credentials in HTTP Basic auth.
    let code = run.emulator.issue_authorization_code();
    let r = http
        .post(&url)
        .basic_auth(&c.client_id, Some(&c.client_secret))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
        ])
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);

    // A bad secret.
    let code = run.emulator.issue_authorization_code();
    let r = http
        .post(&url)
        .json(&json!({"client_id": c.client_id, "client_secret": "nope", "grant_type": "authorization_code", "code": code}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let e: Value = r.json().await.expect("json");
    assert_eq!(
        e["type"],
        "https://developers.amocrm.ru/v3/errors/OAuthProblemJson"
    );
    assert_eq!(e["status"], 401);

    // Unknown code, wrong redirect URI, unknown grant.
    for (body, status, hint) in [
        (
            json!({"client_id": c.client_id, "client_secret": c.client_secret, "grant_type": "authorization_code", "code": "def50200bogus"}),
            400,
            "Cannot decrypt the authorization code",
        ),
        (
            json!({"client_id": c.client_id, "client_secret": c.client_secret, "grant_type": "authorization_code", "code": code, "redirect_uri": "https://evil.example/"}),
            400,
            "Invalid redirect URI",
        ),
        (
            json!({"client_id": c.client_id, "client_secret": c.client_secret, "grant_type": "password"}),
            400,
            "Check that all required parameters have been provided",
        ),
    ] {
        let r = http.post(&url).json(&body).send().await.expect("send");
        assert_eq!(r.status().as_u16(), status);
        let e: Value = r.json().await.expect("json");
        assert_eq!(e["hint"], hint);
    }
    assert_eq!(run.emulator.stats().token_grants, 3);
}

#[tokio::test]
async fn authorize_redirects_with_code_state_and_referer() {
    let run = AmoEmulator::spawn(cfg()).await.expect("spawn");
    let c = run.emulator.config().clone();
    let r = http()
        .get(format!("{}/oauth", run.base_url))
        .query(&[
            ("client_id", c.client_id.as_str()),
            ("state", "st-42"),
            ("mode", "post_message"),
        ])
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::FOUND);
    let loc = url::Url::parse(r.headers()["location"].to_str().expect("location")).expect("url");
    assert!(loc.as_str().starts_with(&c.redirect_uri));
    let q: std::collections::HashMap<_, _> = loc.query_pairs().into_owned().collect();
    assert_eq!(q["state"], "st-42");
    assert_eq!(q["referer"], "rebuy-demo.amocrm.ru");
    let code = q["code"].clone();
    let r = http()
        .post(format!("{}/oauth2/access_token", run.base_url))
        .json(&json!({"client_id": c.client_id, "client_secret": c.client_secret, "grant_type": "authorization_code", "code": code, "redirect_uri": c.redirect_uri}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);

    let r = http()
        .get(format!("{}/oauth?client_id=other", run.base_url))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn refresh_rotates_and_reuse_is_revoked() {
    let env = Env::new(cfg()).await;
    let c = env.run.emulator.config().clone();
    let refresh = |rt: String| {
        let c = c.clone();
        let http = env.http.clone();
        let url = env.url("/oauth2/access_token");
        async move {
            http.post(url)
                .json(&json!({"client_id": c.client_id, "client_secret": c.client_secret, "grant_type": "refresh_token", "refresh_token": rt, "redirect_uri": c.redirect_uri}))
                .send()
                .await
                .expect("send")
        }
    };
    let r = refresh(env.refresh.clone()).await;
    assert_eq!(r.status(), 200);
    let t: Value = r.json().await.expect("json");
    let (access2, refresh2) = (
        t["access_token"].as_str().expect("a").to_owned(),
        t["refresh_token"].as_str().expect("r").to_owned(),
    );
    assert_ne!(access2, env.token);
    assert_ne!(refresh2, env.refresh);

    // The old access token stays valid until its exp; the new one works.
    assert_eq!(env.get("/api/v4/account").await.status(), 200);
    let r = env
        .http
        .get(env.url("/api/v4/account"))
        .bearer_auth(&access2)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);

    // Reusing the first refresh token: exactly the doc's OAuthProblemJson.
    let r = refresh(env.refresh.clone()).await;
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let e: Value = r.json().await.expect("json");
    assert_eq!(
        e,
        json!({"hint":"Token has been revoked","title":"Некорректный запрос","type":"https://developers.amocrm.ru/v3/errors/OAuthProblemJson","status":401,"detail":"В запросе отсутствует ряд параметров или параметры невалидны"})
    );
    // The rotated one works once.
    assert_eq!(refresh(refresh2.clone()).await.status(), 200);
    assert_eq!(refresh(refresh2).await.status(), 401);
    assert_eq!(env.run.emulator.stats().token_refreshes, 2);
}

#[tokio::test]
async fn access_tokens_expire() {
    let env = Env::new(AmoConfig {
        access_token_ttl_secs: 1,
        long_lived_token: Some("long-lived-xyz".into()),
        ..cfg()
    })
    .await;
    assert_eq!(env.get("/api/v4/account").await.status(), 200);
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let r = env.get("/api/v4/leads").await;
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let e: Value = r.json().await.expect("json");
    assert_eq!(e["title"], "Unauthorized");
    assert_eq!(e["type"], "https://httpstatus.es/401");
    assert_eq!(e["status"], 401);
    assert!(e["detail"].is_string());

    // No token at all, a garbage token.
    let r = env
        .http
        .get(env.url("/api/v4/leads"))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 401);
    let r = env
        .http
        .get(env.url("/api/v4/leads"))
        .bearer_auth("garbage")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 401);

    // The long-lived token never expires.
    let r = env
        .http
        .get(env.url("/api/v4/account"))
        .bearer_auth("long-lived-xyz")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn expire_access_tokens_forces_a_refresh() {
    let env = Env::new(cfg()).await;
    assert_eq!(env.get("/api/v4/account").await.status(), 200);
    env.run.emulator.expire_access_tokens();
    assert_eq!(env.get("/api/v4/account").await.status(), 401);
}

#[tokio::test]
async fn account_users_pipelines() {
    let env = Env::new(AmoConfig {
        customers_mode: "periodicity".into(),
        ..cfg()
    })
    .await;
    let a = env
        .get_json("/api/v4/account?with=amojo_id,task_types,datetime_settings")
        .await;
    assert_eq!(a["currency"], "RUB");
    assert_eq!(a["customers_mode"], "periodicity");
    assert_eq!(a["subdomain"], "rebuy-demo");
    assert_eq!(a["_embedded"]["task_types"][0]["id"], 1);

    let u = env.get_json("/api/v4/users?limit=3").await;
    assert_eq!(u["_total_items"], 8);
    assert_eq!(u["_embedded"]["users"].as_array().map(Vec::len), Some(3));
    assert!(
        u["_links"]["next"]["href"]
            .as_str()
            .is_some_and(|h| h.contains("page=2"))
    );
    assert_eq!(env.get("/api/v4/users?limit=3&page=4").await.status(), 204);

    let p = env.get_json("/api/v4/leads/pipelines").await;
    assert_eq!(p["_total_items"], 3);
    let pipelines = p["_embedded"]["pipelines"].as_array().expect("pipelines");
    assert_eq!(pipelines.iter().filter(|p| p["is_main"] == true).count(), 1);
    for pl in pipelines {
        let statuses = pl["_embedded"]["statuses"].as_array().expect("statuses");
        let ids: Vec<u64> = statuses.iter().filter_map(|s| s["id"].as_u64()).collect();
        assert!(
            ids.contains(&STATUS_WON) && ids.contains(&STATUS_LOST),
            "{ids:?}"
        );
        assert_eq!(
            statuses.iter().filter(|s| s["type"] == 1).count(),
            1,
            "one unsorted status"
        );
        assert!(statuses.iter().all(|s| s["pipeline_id"] == pl["id"]));
    }
    let names: Vec<&str> = pipelines
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert!(names.contains(&"Повторные продажи"));
}

#[tokio::test]
async fn paging_links_and_204_past_the_end() {
    let env = Env::new(cfg()).await;
    let expected: Vec<u64> = env
        .run
        .emulator
        .with_data(|d| d.contacts.keys().copied().collect());
    let mut got = Vec::new();
    let mut page = 1;
    loop {
        let r = env
            .get(&format!("/api/v4/contacts?limit=100&page={page}"))
            .await;
        if r.status() == 204 {
            assert_eq!(
                r.bytes().await.expect("body").len(),
                0,
                "204 has an empty body"
            );
            break;
        }
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.expect("json");
        assert_eq!(v["_page"], page);
        let host = &env.run.base_url;
        let self_href = v["_links"]["self"]["href"].as_str().expect("self");
        assert!(
            self_href.starts_with(&format!("{host}/api/v4/contacts?")),
            "{self_href}"
        );
        if page > 1 {
            assert!(
                v["_links"]["prev"]["href"]
                    .as_str()
                    .is_some_and(|h| h.ends_with(&format!("page={}", page - 1)))
            );
        } else {
            assert!(v["_links"].get("prev").is_none());
        }
        let items = v["_embedded"]["contacts"].as_array().expect("contacts");
        if items.len() == 100 {
            assert!(
                v["_links"]["next"]["href"]
                    .as_str()
                    .is_some_and(|h| h.ends_with(&format!("limit=100&page={}", page + 1)))
            );
        } else {
            assert!(v["_links"].get("next").is_none());
        }
        got.extend(items.iter().filter_map(|c| c["id"].as_u64()));
        page += 1;
        assert!(page < 20, "runaway paging");
    }
    assert_eq!(got, expected);
    // A page asked out of sequence (no resume cursor) is the same exact offset page, also
    // after a change between pages.
    let v = env.get_json("/api/v4/contacts?limit=100&page=3").await;
    assert_eq!(v["_embedded"]["contacts"][0]["id"], expected[200]);
    let _ = env.get_json("/api/v4/contacts?limit=100&page=1").await;
    env.run.emulator.update_contact_name(expected[0], "Изменён");
    let v = env
        .get_json("/api/v4/contacts?limit=100&page=2&order[id]=asc")
        .await;
    assert_eq!(v["_embedded"]["contacts"][0]["id"], expected[100]);
    // Descending order.
    let v = env
        .get_json("/api/v4/contacts?limit=5&order[id]=desc")
        .await;
    let ids: Vec<u64> = v["_embedded"]["contacts"]
        .as_array()
        .expect("c")
        .iter()
        .filter_map(|c| c["id"].as_u64())
        .collect();
    assert_eq!(
        ids,
        expected.iter().rev().take(5).copied().collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn limit_is_capped_at_250_and_defaults_to_50() {
    let env = Env::new(cfg()).await;
    let v = env.get_json("/api/v4/leads?limit=1000").await;
    assert_eq!(v["_embedded"]["leads"].as_array().map(Vec::len), Some(250));
    let v = env.get_json("/api/v4/leads").await;
    assert_eq!(v["_embedded"]["leads"].as_array().map(Vec::len), Some(50));
    // Events (the generated history has hundreds): at most 100 per page.
    assert!(env.run.emulator.with_data(|d| d.events.len()) > 100);
    let v = env.get_json("/api/v4/events?limit=500").await;
    assert_eq!(v["_embedded"]["events"].as_array().map(Vec::len), Some(100));
}

#[tokio::test]
async fn filters_updated_at_and_id() {
    let env = Env::new(cfg()).await;
    let (from, expected): (i64, Vec<u64>) = env.run.emulator.with_data(|d| {
        let mut times: Vec<i64> = d.leads.values().map(|l| l.updated_at).collect();
        times.sort_unstable();
        let from = times[times.len() * 3 / 4];
        let mut ids: Vec<(i64, u64)> = d
            .leads
            .values()
            .filter(|l| l.updated_at >= from)
            .map(|l| (l.updated_at, l.id))
            .collect();
        ids.sort_unstable();
        (from, ids.into_iter().map(|(_, id)| id).collect())
    });
    let mut got = Vec::new();
    for page in 1.. {
        let r = env.get(&format!("/api/v4/leads?filter[updated_at][from]={from}&order[updated_at]=asc&limit=100&page={page}")).await;
        if r.status() == 204 {
            break;
        }
        let v: Value = r.json().await.expect("json");
        for l in v["_embedded"]["leads"].as_array().expect("leads") {
            assert!(l["updated_at"].as_i64().is_some_and(|t| t >= from));
            got.push(l["id"].as_u64().expect("id"));
        }
    }
    assert_eq!(got, expected);

    // A window with nothing in it.
    assert_eq!(
        env.get("/api/v4/leads?filter[updated_at][from]=100&filter[updated_at][to]=200")
            .await
            .status(),
        204
    );
    assert_eq!(
        env.get("/api/v4/leads?filter[updated_at][from]=300&filter[updated_at][to]=200")
            .await
            .status(),
        204
    );

    // filter[id] as an array and as a single value.
    let ids: Vec<u64> = env.run.emulator.with_data(|d| {
        d.leads
            .keys()
            .skip(10)
            .step_by(7)
            .take(3)
            .copied()
            .collect()
    });
    let v = env
        .get_json(&format!(
            "/api/v4/leads?filter[id][]={}&filter[id][]={}&filter[id][]={}",
            ids[2], ids[0], ids[1]
        ))
        .await;
    let got: Vec<u64> = v["_embedded"]["leads"]
        .as_array()
        .expect("l")
        .iter()
        .filter_map(|l| l["id"].as_u64())
        .collect();
    assert_eq!(got, ids);
    let v = env
        .get_json(&format!("/api/v4/leads?filter[id]={}", ids[1]))
        .await;
    assert_eq!(v["_embedded"]["leads"][0]["id"], ids[1]);
    assert_eq!(v["_embedded"]["leads"].as_array().map(Vec::len), Some(1));
    assert_eq!(env.get("/api/v4/leads?filter[id]=1").await.status(), 204);
}

#[tokio::test]
async fn lead_shape_with_contacts_and_catalog_elements() {
    let env = Env::new(cfg()).await;
    let (lead_id, contact_id, element, qty) = env.run.emulator.with_data(|d| {
        let l = d
            .leads
            .values()
            .find(|l| !l.products.is_empty())
            .expect("a lead with products");
        (
            l.id,
            l.contacts[0].id,
            l.products[0].element_id,
            l.products[0].quantity,
        )
    });
    let l = env
        .get_json(&format!(
            "/api/v4/leads/{lead_id}?with=contacts,catalog_elements"
        ))
        .await;
    assert!(l["price"].is_i64() || l["price"].is_u64());
    assert_eq!(l["_embedded"]["contacts"][0]["id"], contact_id);
    assert_eq!(l["_embedded"]["contacts"][0]["is_main"], true);
    assert!(
        l["_embedded"]["contacts"][0]["_links"]["self"]["href"]
            .as_str()
            .is_some_and(|h| h.ends_with(&format!("/api/v4/contacts/{contact_id}")))
    );
    let ce = &l["_embedded"]["catalog_elements"][0];
    assert_eq!(ce["id"], element);
    assert_eq!(ce["metadata"]["quantity"], qty);
    let catalog_id = ce["metadata"]["catalog_id"].as_u64().expect("catalog");
    // Name and price of the product from the catalog.
    let e = env
        .get_json(&format!(
            "/api/v4/catalogs/{catalog_id}/elements?filter[id]={element}"
        ))
        .await;
    let el = &e["_embedded"]["elements"][0];
    assert!(el["name"].as_str().is_some_and(|n| !n.is_empty()));
    let price = el["custom_fields_values"]
        .as_array()
        .expect("cf")
        .iter()
        .find(|f| f["field_code"] == "PRICE")
        .expect("price");
    assert!(price["values"][0]["value"].as_i64().is_some_and(|p| p > 0));
    // Without with=, no contacts are embedded.
    let l = env.get_json(&format!("/api/v4/leads/{lead_id}")).await;
    assert!(l["_embedded"].get("contacts").is_none());
    assert!(l["_embedded"]["tags"].is_array());
    assert!(
        l["closed_at"].is_null() == (l["status_id"] != STATUS_WON && l["status_id"] != STATUS_LOST)
    );
}

#[tokio::test]
async fn contact_shape_single_get_and_bad_input() {
    let env = Env::new(cfg()).await;
    let (with_phone, without_cf) = env.run.emulator.with_data(|d| {
        let a = d
            .contacts
            .values()
            .find(|c| {
                c.custom_fields
                    .iter()
                    .any(|f| f.field_id == field_ids::CONTACT_PHONE)
            })
            .map(|c| c.id);
        let b = d
            .contacts
            .values()
            .find(|c| c.custom_fields.is_empty())
            .map(|c| c.id);
        (a.expect("a contact with a phone"), b)
    });
    let c = env
        .get_json(&format!("/api/v4/contacts/{with_phone}?with=leads"))
        .await;
    let phone = c["custom_fields_values"]
        .as_array()
        .expect("cf")
        .iter()
        .find(|f| f["field_code"] == "PHONE")
        .expect("phone");
    assert_eq!(phone["field_type"], "multitext");
    assert!(phone["values"][0]["enum_code"].is_string());
    assert!(c["_embedded"]["leads"].is_array());
    assert!(c["_embedded"]["companies"].is_array());
    if let Some(id) = without_cf {
        let c = env.get_json(&format!("/api/v4/contacts/{id}")).await;
        assert!(c["custom_fields_values"].is_null());
    }
    // Missing entity: 204, empty body. Non-numeric id: 404.
    let r = env.get("/api/v4/leads/1").await;
    assert_eq!(r.status(), 204);
    assert!(r.bytes().await.expect("b").is_empty());
    assert_eq!(env.get("/api/v4/contacts/1").await.status(), 204);
    assert_eq!(env.get("/api/v4/leads/abc").await.status(), 404);
    // Bad query values: 400 problem json, never a panic.
    for q in [
        "page=x",
        "limit=-5",
        "filter[updated_at][from]=yesterday",
        "filter[id][]=abc",
        "order[id]=sideways",
    ] {
        let r = env.get(&format!("/api/v4/leads?{q}")).await;
        assert_eq!(r.status(), 400, "{q}");
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        let e: Value = r.json().await.expect("json");
        assert_eq!(e["status"], 400);
    }
    // Search by phone digits finds the contact whatever the format.
    let raw = env.run.emulator.with_data(|d| {
        d.contacts[&with_phone]
            .custom_fields
            .iter()
            .find(|f| f.field_id == field_ids::CONTACT_PHONE)
            .map(|f| f.values[0].value.as_str().unwrap_or_default().to_owned())
    });
    let digits: String = raw
        .unwrap_or_default()
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    if digits.len() >= 10 {
        let v = env
            .get_json(&format!(
                "/api/v4/contacts?query={}",
                &digits[digits.len() - 10..]
            ))
            .await;
        assert!(
            v["_embedded"]["contacts"]
                .as_array()
                .expect("c")
                .iter()
                .any(|c| c["id"] == with_phone)
        );
    }
}

#[tokio::test]
async fn rate_limit_429_then_sticky_403() {
    let env = Env::new(AmoConfig {
        rate_limit_per_sec: 7,
        block_after_violations: 5,
        ..cfg()
    })
    .await;
    // Hammer until the block appears (a slow machine refills the bucket in between, so the
    // number of requests needed varies), then a few more to see that it sticks.
    let mut statuses: Vec<u16> = Vec::new();
    let mut after_block = 0;
    while after_block < 5 {
        let r = env.get("/api/v4/account").await;
        let status = r.status().as_u16();
        if status == 429 {
            assert_eq!(r.headers()["content-type"], "text/html");
            assert!(r.headers().get("retry-after").is_none());
            assert!(r.text().await.expect("t").contains("429 Too Many Requests"));
        } else if status == 403 {
            assert!(r.text().await.expect("t").contains("403 Forbidden"));
            after_block += 1;
        }
        statuses.push(status);
        assert!(statuses.len() < 2_000, "never blocked: {statuses:?}");
    }
    assert!(statuses[..7].iter().all(|&s| s == 200), "{statuses:?}");
    let first_403 = statuses.iter().position(|&s| s == 403).expect("a 403");
    assert!(
        statuses[..first_403].iter().filter(|&&s| s == 429).count() > 5,
        "{statuses:?}"
    );
    assert!(
        statuses[first_403..].iter().all(|&s| s == 403),
        "the block is sticky: {statuses:?}"
    );
    assert!(env.run.emulator.stats().blocked);

    // Still blocked after the bucket refills, and on the token endpoint too.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(env.get("/api/v4/account").await.status(), 403);
    let r = env
        .http
        .post(env.url("/oauth2/access_token"))
        .json(&json!({}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 403);

    env.run.emulator.reset_block();
    assert_eq!(env.get("/api/v4/account").await.status(), 200);
    let s = env.run.emulator.stats();
    assert!(!s.blocked);
    assert!(s.rate_limited_429 >= 6 && s.blocked_403 >= 7, "{s:?}");
    let counted = s
        .by_endpoint
        .get("GET /api/v4/account")
        .copied()
        .unwrap_or(0);
    assert_eq!(
        counted as usize,
        statuses.len() + 2,
        "every request is counted"
    );
}

#[tokio::test]
async fn sustained_rate_is_respected() {
    let env = Env::new(AmoConfig {
        rate_limit_per_sec: 7,
        block_after_violations: 0,
        ..cfg()
    })
    .await;
    // At ~5 req/s nothing is rejected.
    for _ in 0..10 {
        assert_eq!(env.get("/api/v4/account").await.status(), 200);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn tasks_create_list_and_validation_errors() {
    let env = Env::new(cfg()).await;
    let (lead, user) = env.run.emulator.with_data(|d| {
        (
            *d.leads.keys().next().expect("lead"),
            *d.users.keys().next().expect("user"),
        )
    });
    let body = json!([
        {"text": "Позвонить: пора повторить заказ", "complete_till": 1_900_000_000, "entity_id": lead, "entity_type": "leads", "task_type_id": 1, "responsible_user_id": user, "request_id": "r-1"},
        {"text": "Встреча", "complete_till": 1_900_000_100, "task_type_id": 2},
    ]);
    let (status, v) = env
        .send(reqwest::Method::POST, "/api/v4/tasks", &body)
        .await;
    assert_eq!(status, 200, "{v}");
    let created = v["_embedded"]["tasks"].as_array().expect("tasks");
    assert_eq!(created[0]["request_id"], "r-1");
    assert_eq!(created[1]["request_id"], "1");
    let task_id = created[0]["id"].as_u64().expect("id");
    let w = env.run.emulator.writes();
    assert_eq!(w.tasks_created.len(), 2);
    assert_eq!(w.tasks_created[0].entity_id, Some(lead));
    assert_eq!(w.tasks_created[0].text, "Позвонить: пора повторить заказ");

    let v = env
        .get_json(&format!(
            "/api/v4/tasks?filter[entity_type]=leads&filter[entity_id]={lead}"
        ))
        .await;
    let tasks = v["_embedded"]["tasks"].as_array().expect("tasks");
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0]["id"], task_id);
    assert_eq!(tasks[0]["is_completed"], false);
    assert_eq!(
        env.get("/api/v4/tasks?filter[is_completed]=1")
            .await
            .status(),
        204
    );

    // Invalid items: the whole request is rejected, nothing is applied.
    let bad = json!([
        {"text": "ok", "complete_till": 1_900_000_000, "request_id": "good"},
        {"complete_till": 1_900_000_000, "responsible_user_id": 1, "request_id": "bad-1"},
        {"text": "x", "complete_till": "tomorrow", "entity_type": "leads", "entity_id": 1},
    ]);
    let (status, v) = env.send(reqwest::Method::POST, "/api/v4/tasks", &bad).await;
    assert_eq!(status, 400);
    assert_eq!(v["title"], "Bad Request");
    assert_eq!(v["detail"], "Request validation failed");
    let errs = v["validation-errors"]
        .as_array()
        .expect("validation-errors");
    assert_eq!(errs.len(), 2);
    assert_eq!(errs[0]["request_id"], "bad-1");
    let paths: Vec<&str> = errs[0]["errors"]
        .as_array()
        .expect("e")
        .iter()
        .filter_map(|e| e["path"].as_str())
        .collect();
    assert!(
        paths.contains(&"text") && paths.contains(&"responsible_user_id"),
        "{paths:?}"
    );
    assert_eq!(errs[1]["request_id"], "2");
    let paths: Vec<&str> = errs[1]["errors"]
        .as_array()
        .expect("e")
        .iter()
        .filter_map(|e| e["path"].as_str())
        .collect();
    assert!(
        paths.contains(&"complete_till") && paths.contains(&"entity_id"),
        "{paths:?}"
    );
    assert_eq!(env.run.emulator.writes().tasks_created.len(), 2);
    assert_eq!(env.run.emulator.with_data(|d| d.tasks.len()), 2);

    // Completing a task.
    let (status, _) = env
        .send(
            reqwest::Method::PATCH,
            "/api/v4/tasks",
            &json!([{"id": task_id, "is_completed": true, "result": {"text": "Заказал"}}]),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        env.get_json("/api/v4/tasks?filter[is_completed]=1").await["_embedded"]["tasks"][0]["result"]
            ["text"],
        "Заказал"
    );

    // Not an array, not JSON, too many.
    assert_eq!(
        env.send(
            reqwest::Method::POST,
            "/api/v4/tasks",
            &json!({"text": "x"})
        )
        .await
        .0,
        400
    );
    let r = env
        .http
        .post(env.url("/api/v4/tasks"))
        .bearer_auth(&env.token)
        .body("{nope")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 400);
    let many: Vec<Value> = (0..251)
        .map(|_| json!({"text": "x", "complete_till": 1}))
        .collect();
    assert_eq!(
        env.send(reqwest::Method::POST, "/api/v4/tasks", &Value::Array(many))
            .await
            .0,
        400
    );
}

#[tokio::test]
async fn patch_leads_moves_fields_tags_and_errors() {
    let env = Env::new(cfg()).await;
    let (lead, pipeline, before) = env.run.emulator.with_data(|d| {
        let l = d
            .leads
            .values()
            .find(|l| l.closed_at.is_none())
            .expect("an open lead");
        (l.id, l.pipeline_id, l.updated_at)
    });
    let body = json!([{
        "id": lead,
        "status_id": STATUS_WON,
        "pipeline_id": pipeline,
        "price": 12_345,
        "custom_fields_values": [
            {"field_id": field_ids::LEAD_SEGMENT, "values": [{"value": "champions"}]},
            {"field_id": field_ids::LEAD_NEXT_PURCHASE, "values": [{"value": 1_900_000_000}]},
            {"field_id": field_ids::LEAD_REPEAT, "values": [{"value": true}]}
        ],
        "_embedded": {"tags": [{"name": "повторная"}, {"name": "rebuy"}]},
        "request_id": "move-1"
    }]);
    let (status, v) = env
        .send(reqwest::Method::PATCH, "/api/v4/leads", &body)
        .await;
    assert_eq!(status, 200, "{v}");
    let item = &v["_embedded"]["leads"][0];
    assert_eq!(item["id"], lead);
    assert_eq!(item["request_id"], "move-1");
    let updated_at = item["updated_at"].as_i64().expect("updated_at");
    assert!(updated_at > before);

    let l = env.get_json(&format!("/api/v4/leads/{lead}")).await;
    assert_eq!(l["status_id"], STATUS_WON);
    assert_eq!(l["price"], 12_345);
    assert!(l["closed_at"].as_i64().is_some());
    let tags: Vec<&str> = l["_embedded"]["tags"]
        .as_array()
        .expect("t")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(tags, ["повторная", "rebuy"]);
    let seg = l["custom_fields_values"]
        .as_array()
        .expect("cf")
        .iter()
        .find(|f| f["field_id"] == field_ids::LEAD_SEGMENT)
        .expect("seg");
    assert_eq!(seg["values"][0]["value"], "champions");

    // values: null clears one field, the others stay; tags: [] detaches all.
    let (status, _) = env
        .send(
            reqwest::Method::PATCH,
            &format!("/api/v4/leads/{lead}"),
            &json!({"custom_fields_values": [{"field_id": field_ids::LEAD_SEGMENT, "values": null}], "_embedded": {"tags": []}}),
        )
        .await;
    assert_eq!(status, 200);
    let l = env.get_json(&format!("/api/v4/leads/{lead}")).await;
    let cf = l["custom_fields_values"].as_array().expect("cf");
    assert!(cf.iter().all(|f| f["field_id"] != field_ids::LEAD_SEGMENT));
    assert!(cf.iter().any(|f| f["field_id"] == field_ids::LEAD_REPEAT));
    assert_eq!(l["_embedded"]["tags"], json!([]));
    assert_eq!(l["price"], 12_345, "omitted fields keep their values");

    let w = env.run.emulator.writes();
    assert_eq!(w.lead_moves.len(), 1);
    assert_eq!(w.lead_moves[0].to_status_id, STATUS_WON);
    assert_eq!(w.field_updates.len(), 4);
    assert_eq!(w.field_updates[3].values, None);
    assert_eq!(w.tag_updates.len(), 2);

    // Events of the move.
    let e = env
        .get_json(&format!(
            "/api/v4/events?filter[type]=lead_status_changed&filter[entity_id]={lead}"
        ))
        .await;
    let ev = &e["_embedded"]["events"][0];
    assert_eq!(ev["entity_type"], "lead");
    assert_eq!(ev["value_after"][0]["lead_status"]["id"], STATUS_WON);
    assert_eq!(ev["id"].as_str().map(str::len), Some(26));

    // Validation: unknown status, unknown field, missing entity, float price.
    let bad = json!([
        {"id": lead, "status_id": 999, "request_id": "a"},
        {"id": lead, "custom_fields_values": [{"field_id": 1, "values": [{"value": "x"}]}]},
        {"id": 1, "price": 10},
        {"id": lead, "price": 10.5, "pipeline_id": 42}
    ]);
    let (status, v) = env
        .send(reqwest::Method::PATCH, "/api/v4/leads", &bad)
        .await;
    assert_eq!(status, 400);
    let errs = v["validation-errors"].as_array().expect("errs");
    assert_eq!(errs.len(), 4);
    assert_eq!(errs[0]["request_id"], "a");
    assert_eq!(errs[0]["errors"][0]["path"], "status_id");
    assert_eq!(errs[0]["errors"][0]["code"], "NotSupportedChoice");
    assert_eq!(
        errs[1]["errors"][0]["path"],
        "custom_fields_values.0.field_id"
    );
    assert_eq!(
        errs[1]["errors"][0]["detail"],
        "The value you selected is not a valid choice."
    );
    assert_eq!(errs[2]["errors"][0]["path"], "id");
    let paths: Vec<&str> = errs[3]["errors"]
        .as_array()
        .expect("e")
        .iter()
        .filter_map(|e| e["path"].as_str())
        .collect();
    assert!(
        paths.contains(&"price") && paths.contains(&"pipeline_id"),
        "{paths:?}"
    );
    assert_eq!(env.run.emulator.writes().requests_rejected, 1);
    assert_eq!(
        env.get_json(&format!("/api/v4/leads/{lead}")).await["price"],
        12_345
    );
}

#[tokio::test]
async fn patch_contacts_and_create_lead() {
    let env = Env::new(cfg()).await;
    let (contact, before) = env.run.emulator.with_data(|d| {
        let c = d.contacts.values().next().expect("c");
        (c.id, c.updated_at)
    });
    let (status, v) = env
        .send(
            reqwest::Method::PATCH,
            "/api/v4/contacts",
            &json!([{"id": contact, "custom_fields_values": [{"field_id": field_ids::CONTACT_SEGMENT, "values": [{"value": "at_risk"}]}]}]),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert!(
        v["_embedded"]["contacts"][0]["updated_at"]
            .as_i64()
            .is_some_and(|t| t > before)
    );
    let c = env.get_json(&format!("/api/v4/contacts/{contact}")).await;
    assert!(
        c["custom_fields_values"]
            .as_array()
            .expect("cf")
            .iter()
            .any(|f| f["values"][0]["value"] == "at_risk")
    );

    // A repeat lead attached to the existing contact.
    let repeat = env
        .run
        .emulator
        .with_data(|d| {
            d.pipelines
                .values()
                .find(|p| !p.is_main)
                .map(|p| (p.id, p.statuses[1].id))
        })
        .expect("p");
    let (status, v) = env
        .send(
            reqwest::Method::POST,
            "/api/v4/leads",
            &json!([{"name": "Повторная продажа", "price": 5000, "pipeline_id": repeat.0, "status_id": repeat.1, "_embedded": {"contacts": [{"id": contact}]}}]),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let id = v["_embedded"]["leads"][0]["id"].as_u64().expect("id");
    let l = env
        .get_json(&format!("/api/v4/leads/{id}?with=contacts"))
        .await;
    assert_eq!(l["_embedded"]["contacts"][0]["id"], contact);
    assert_eq!(l["pipeline_id"], repeat.0);
    let e = env.get_json("/api/v4/events?filter[type]=lead_added").await;
    assert_eq!(e["_embedded"]["events"][0]["entity_id"], id);
}

#[tokio::test]
async fn events_after_mutations_and_delete() {
    let env = Env::new(cfg()).await;
    let emu = &env.run.emulator;
    // The generated history's events all lie before now.
    let since = emu.now();
    assert_eq!(
        env.get(&format!("/api/v4/events?filter[created_at][from]={since}"))
            .await
            .status(),
        204
    );
    let (a, b, contact) = emu.with_data(|d| {
        let mut it = d.leads.keys();
        (
            *it.next().expect("a"),
            *it.next().expect("b"),
            *d.contacts.keys().next().expect("c"),
        )
    });
    assert!(emu.delete_lead(a));
    assert!(!emu.delete_lead(a), "already deleted");
    let pipeline = emu.with_data(|d| d.leads[&b].pipeline_id);
    assert!(emu.update_lead(b, Some(777), Some((pipeline, STATUS_LOST))));
    assert!(emu.update_contact_name(contact, "Новое Имя"));
    let added = emu
        .add_lead(contact, 1000, pipeline, STATUS_WON)
        .expect("added");

    assert_eq!(env.get(&format!("/api/v4/leads/{a}")).await.status(), 204);
    let v = env
        .get_json(&format!(
            "/api/v4/events?filter[type]=lead_deleted&filter[created_at][from]={since}"
        ))
        .await;
    let evs = v["_embedded"]["events"].as_array().expect("events");
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0]["entity_id"], a);
    assert_eq!(evs[0]["type"], "lead_deleted");
    for key in [
        "id",
        "type",
        "entity_id",
        "entity_type",
        "created_by",
        "created_at",
        "value_after",
        "value_before",
        "account_id",
    ] {
        assert!(evs[0].get(key).is_some(), "{key}");
    }
    // A list of types, as comma list and as array.
    let v = env
        .get_json(&format!("/api/v4/events?filter[type]=lead_deleted,lead_status_changed,lead_added&filter[created_at][from]={since}"))
        .await;
    assert_eq!(v["_embedded"]["events"].as_array().map(Vec::len), Some(3));
    let v = env.get_json(&format!("/api/v4/events?filter[type][]=lead_deleted&filter[type][]=lead_added&order[created_at]=asc&filter[created_at][from]={since}")).await;
    let types: Vec<&str> = v["_embedded"]["events"]
        .as_array()
        .expect("e")
        .iter()
        .filter_map(|e| e["type"].as_str())
        .collect();
    assert_eq!(types, ["lead_deleted", "lead_added"]);
    assert_eq!(
        env.get("/api/v4/events?filter[type]=contact_deleted")
            .await
            .status(),
        204
    );
    assert!(emu.delete_contact(contact));
    let v = env
        .get_json("/api/v4/events?filter[type]=contact_deleted")
        .await;
    assert_eq!(v["_embedded"]["events"][0]["entity_id"], contact);

    // Incremental sync sees the changed and added leads.
    let v = env
        .get_json(&format!("/api/v4/leads?filter[updated_at][from]={since}"))
        .await;
    let ids: Vec<u64> = v["_embedded"]["leads"]
        .as_array()
        .expect("l")
        .iter()
        .filter_map(|l| l["id"].as_u64())
        .collect();
    assert!(ids.contains(&b) && ids.contains(&added), "{ids:?}");
    let l = env.get_json(&format!("/api/v4/leads/{b}")).await;
    assert_eq!(l["price"], 777);
    assert_eq!(l["status_id"], STATUS_LOST);
}

#[tokio::test]
async fn faults_are_injected_and_never_corrupt_writes() {
    let env = Env::new(cfg()).await;
    let emu = &env.run.emulator;

    emu.set_faults(FaultConfig {
        error_5xx_rate: 1.0,
        ..Default::default()
    });
    let r = env.get("/api/v4/leads").await;
    assert!([502, 503, 504].contains(&r.status().as_u16()));

    emu.set_faults(FaultConfig {
        extra_429_rate: 1.0,
        ..Default::default()
    });
    assert_eq!(env.get("/api/v4/leads").await.status(), 429);

    emu.set_faults(FaultConfig {
        malformed_rate: 1.0,
        ..Default::default()
    });
    let r = env.get("/api/v4/leads").await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.expect("text");
    assert!(
        serde_json::from_str::<Value>(&text).is_err(),
        "truncated JSON"
    );

    emu.set_faults(FaultConfig {
        drop_rate: 1.0,
        ..Default::default()
    });
    // The connection is aborted mid-answer: the client sees a transport error, either before
    // the head is complete or while reading the body.
    let dropped = match env
        .http
        .get(env.url("/api/v4/leads"))
        .bearer_auth(&env.token)
        .send()
        .await
    {
        Err(_) => true,
        Ok(r) => r.bytes().await.is_err(),
    };
    assert!(dropped);

    // A faulted write is not applied.
    let (lead, price) = emu.with_data(|d| {
        d.leads
            .values()
            .next()
            .map(|l| (l.id, l.price))
            .expect("lead")
    });
    for f in [
        FaultConfig {
            error_5xx_rate: 1.0,
            ..Default::default()
        },
        FaultConfig {
            malformed_rate: 1.0,
            ..Default::default()
        },
        FaultConfig {
            drop_rate: 1.0,
            ..Default::default()
        },
    ] {
        emu.set_faults(f);
        let _ = env
            .http
            .patch(env.url("/api/v4/leads"))
            .bearer_auth(&env.token)
            .json(&json!([{"id": lead, "price": price + 1}]))
            .send()
            .await
            .map(|r| async { r.bytes().await });
    }
    emu.set_faults(FaultConfig {
        slow_rate: 1.0,
        slow_ms: 150,
        ..Default::default()
    });
    let t = std::time::Instant::now();
    assert_eq!(env.get("/api/v4/account").await.status(), 200);
    assert!(t.elapsed() >= Duration::from_millis(150));

    emu.set_faults(FaultConfig::none());
    assert_eq!(emu.with_data(|d| d.leads[&lead].price), price);
    assert_eq!(emu.writes().requests_applied, 0);
    assert!(emu.stats().faults_injected >= 8);
    // Inspection endpoints are never faulted or counted.
    emu.set_faults(FaultConfig::uniform(0.2));
    let r = env
        .http
        .get(env.url("/_emulator/writes"))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn writes_are_served_as_json() {
    let env = Env::new(cfg()).await;
    let (status, _) = env
        .send(
            reqwest::Method::POST,
            "/api/v4/tasks",
            &json!([{"text": "t", "complete_till": 1_900_000_000}]),
        )
        .await;
    assert_eq!(status, 200);
    let v: Value = env
        .http
        .get(env.url("/_emulator/writes"))
        .send()
        .await
        .expect("s")
        .json()
        .await
        .expect("j");
    assert_eq!(v["tasks_created"][0]["text"], "t");
    let v: Value = env
        .http
        .get(env.url("/_emulator/stats"))
        .send()
        .await
        .expect("s")
        .json()
        .await
        .expect("j");
    assert!(v["requests"].as_u64().is_some_and(|n| n >= 1));
    let v: Value = env
        .http
        .post(env.url("/_emulator/authorization_code"))
        .send()
        .await
        .expect("s")
        .json()
        .await
        .expect("j");
    assert!(v["code"].as_str().is_some_and(|c| c.starts_with("def502")));
}

#[tokio::test]
async fn router_works_without_a_socket_and_shutdown_is_clean() {
    let run = AmoEmulator::spawn(cfg()).await.expect("spawn");
    let base = run.base_url.clone();
    run.shutdown().await.expect("shutdown");
    assert!(
        http()
            .get(format!("{base}/api/v4/account"))
            .send()
            .await
            .is_err()
    );
    let _router = AmoEmulator::new(cfg()).router();
}

#[tokio::test]
async fn customers_mode_statuses_writes_and_validation() {
    use reqwest::Method;
    let env = Env::new(cfg()).await;
    // Mode off: the statuses are 422 and so are the customers.
    let r = env.get("/api/v4/customers/statuses").await;
    assert_eq!(r.status(), 422);
    assert_eq!(env.get("/api/v4/customers").await.status(), 422);
    // The switch: bad data is a 400 naming the field, a good body is echoed.
    let (s, v) = env
        .send(
            Method::PATCH,
            "/api/v4/customers/mode",
            &json!({"mode": "weekly", "is_enabled": true}),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["validation-errors"][0]["errors"][0]["path"], "mode");
    let body = json!({"mode": "periodicity", "is_enabled": true});
    let (s, v) = env
        .send(Method::PATCH, "/api/v4/customers/mode", &body)
        .await;
    assert_eq!((s, v), (StatusCode::OK, body));
    let st = env.get_json("/api/v4/customers/statuses").await;
    let statuses = st["_embedded"]["statuses"].as_array().unwrap();
    assert!(statuses.len() >= 4);
    assert_eq!(statuses[0]["is_default"], true);
    let (default, other) = (
        statuses[0]["id"].as_u64().unwrap(),
        statuses[2]["id"].as_u64().unwrap(),
    );
    assert_eq!(env.get("/api/v4/customers").await.status(), 204, "none yet");

    // Add: every invalid item is named, nothing is applied.
    let contact = env
        .run
        .emulator
        .with_data(|d| *d.contacts.keys().next().unwrap());
    let (s, v) = env
        .send(
            Method::POST,
            "/api/v4/customers",
            &json!([
                {"name": "", "request_id": "a"},
                {"name": "X", "status_id": 1, "next_price": -5, "request_id": "b"},
                {"name": "Y", "next_date": "soon", "_embedded": {"contacts": [{"id": 1}]}, "request_id": "c"},
            ]),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    let errs = v["validation-errors"].as_array().unwrap();
    let paths = |i: usize| -> Vec<String> {
        errs[i]["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["path"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(errs[0]["request_id"], "a");
    assert_eq!(paths(0), ["name"]);
    assert_eq!(paths(1), ["next_price", "status_id"]);
    assert_eq!(paths(2), ["next_date", "_embedded.contacts.0.id"]);
    assert!(env.run.emulator.writes().customers_created.is_empty());
    // More than 50 in one request.
    let many: Vec<Value> = (0..51).map(|i| json!({"name": format!("c{i}")})).collect();
    assert_eq!(
        env.send(Method::POST, "/api/v4/customers", &json!(many))
            .await
            .0,
        400
    );

    let (s, v) = env
        .send(
            Method::POST,
            "/api/v4/customers",
            &json!([
                {"name": "Клиент", "next_date": 1_800_000_000, "next_price": 4500,
                 "_embedded": {"contacts": [{"id": contact, "is_main": true}]}, "request_id": "r1"},
                {"name": "Без статуса", "request_id": "r2"},
            ]),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let created = v["_embedded"]["customers"].as_array().unwrap();
    assert_eq!(created[0]["request_id"], "r1");
    let id = created[0]["id"].as_u64().unwrap();
    let one = env
        .get_json(&format!("/api/v4/customers/{id}?with=contacts"))
        .await;
    assert_eq!(one["status_id"], default, "the default status");
    assert_eq!(one["next_date"], 1_800_000_000);
    assert_eq!(one["next_price"], 4500);
    assert_eq!(one["_embedded"]["contacts"][0]["id"], contact);
    assert_eq!(one["_embedded"]["contacts"][0]["is_main"], true);
    // The contact shows its customer.
    let c = env
        .get_json(&format!("/api/v4/contacts/{contact}?with=customers"))
        .await;
    assert_eq!(c["_embedded"]["customers"][0]["id"], id);
    // List with paging and filter.
    let list = env
        .get_json("/api/v4/customers?limit=1&with=contacts")
        .await;
    assert_eq!(list["_embedded"]["customers"].as_array().unwrap().len(), 1);
    assert!(
        list["_links"]["next"]["href"]
            .as_str()
            .unwrap()
            .contains("page=2")
    );
    let f = env
        .get_json(&format!("/api/v4/customers?filter[id][]={id}"))
        .await;
    assert_eq!(f["_embedded"]["customers"][0]["id"], id);

    // Update: move and re-date; an unknown id and status are named.
    let (s, v) = env
        .send(
            Method::PATCH,
            "/api/v4/customers",
            &json!([{"id": id, "status_id": other, "next_date": 1_800_086_400},
                    {"id": 1, "status_id": 7}]),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["validation-errors"][0]["request_id"], "1");
    let (s, v) = env
        .send(
            Method::PATCH,
            "/api/v4/customers",
            &json!([{"id": id, "status_id": other, "next_date": 1_800_086_400}]),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let w = env.run.emulator.writes();
    assert_eq!(w.customers_created.len(), 2);
    assert_eq!(w.customers_updated.len(), 1);
    let u = &w.customers_updated[0];
    assert_eq!(
        (u.id, u.from_status_id, u.status_id, u.next_date),
        (id, Some(default), other, 1_800_086_400)
    );
    assert_eq!(w.customers_mode_changes, ["periodicity"]);
    // Segments mode: no statuses.
    env.send(
        Method::PATCH,
        "/api/v4/customers/mode",
        &json!({"mode": "segments", "is_enabled": true}),
    )
    .await;
    assert_eq!(env.get("/api/v4/customers/statuses").await.status(), 422);
}

#[tokio::test]
async fn customers_unavailable_on_the_tariff_is_402() {
    let env = Env::new(AmoConfig {
        customers_mode: "unavailable".into(),
        ..cfg()
    })
    .await;
    assert_eq!(env.get("/api/v4/customers").await.status(), 402);
    let (s, _) = env
        .send(
            reqwest::Method::PATCH,
            "/api/v4/customers/mode",
            &json!({"mode": "periodicity", "is_enabled": true}),
        )
        .await;
    assert_eq!(s, 402);
}

#[tokio::test]
async fn custom_fields_are_created_with_validation_and_listed() {
    let env = Env::new(cfg()).await;
    let (s, v) = env
        .send(
            reqwest::Method::POST,
            "/api/v4/contacts/custom_fields",
            &json!([
                {"name": "", "type": "text"},
                {"name": "Сегмент RFM", "type": "select"},
                {"name": "X", "type": "spreadsheet"},
                {"name": "Y", "type": "text", "code": "PHONE"},
            ]),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    let errs = v["validation-errors"].as_array().unwrap();
    assert_eq!(errs.len(), 4);
    assert_eq!(errs[0]["errors"][0]["path"], "name");
    assert_eq!(errs[1]["errors"][0]["path"], "enums");
    assert_eq!(errs[2]["errors"][0]["code"], "NotSupportedChoice");
    assert_eq!(errs[3]["errors"][0]["path"], "code");
    let (s, v) = env
        .send(
            reqwest::Method::POST,
            "/api/v4/contacts/custom_fields",
            &json!([
                {"name": "Сегмент RFM", "type": "select", "enums": [{"value": "champions", "sort": 1}, {"value": "lost", "sort": 2}], "request_id": "s"},
                {"name": "Дата визита", "type": "date"},
            ]),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let made = v["_embedded"]["custom_fields"].as_array().unwrap();
    assert_eq!(made[0]["request_id"], "s");
    assert_eq!(made[0]["type"], "select");
    let id = made[0]["id"].as_u64().unwrap();
    let list = env
        .get_json("/api/v4/contacts/custom_fields?limit=250")
        .await;
    let f = list["_embedded"]["custom_fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == id)
        .expect("listed")
        .clone();
    assert_eq!(f["enums"].as_array().unwrap().len(), 2);
    // The new select takes its values and refuses others.
    let contact = env
        .run
        .emulator
        .with_data(|d| *d.contacts.keys().next().unwrap());
    let (s, _) = env
        .send(
            reqwest::Method::PATCH,
            "/api/v4/contacts",
            &json!([{"id": contact, "custom_fields_values": [{"field_id": id, "values": [{"value": "lost"}]}]}]),
        )
        .await;
    assert_eq!(s, 200);
    let (s, v) = env
        .send(
            reqwest::Method::PATCH,
            "/api/v4/contacts",
            &json!([{"id": contact, "custom_fields_values": [{"field_id": id, "values": [{"value": "vip"}]}]}]),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    let w = env.run.emulator.writes();
    assert_eq!(w.fields_created.len(), 2);
    assert_eq!(w.fields_created[0].enums, ["champions", "lost"]);
}

#[tokio::test]
async fn lead_filters_of_the_docs_are_honoured_and_others_refused() {
    let env = Env::new(cfg()).await;
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let all = |v: &Value| -> Vec<Value> {
        v["_embedded"]["leads"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    // A lead with a custom field value to look for.
    let (lead, cf) = env.run.emulator.with_data(|d| {
        let l = d
            .leads
            .values()
            .find(|l| {
                l.custom_fields
                    .iter()
                    .any(|f| f.values.iter().any(|v| v.value.is_string()))
            })
            .or_else(|| d.leads.values().next())
            .cloned()
            .expect("a lead");
        let cf = l.custom_fields.iter().find_map(|f| {
            f.values
                .iter()
                .find_map(|v| v.value.as_str().map(|s| (f.field_id, s.to_owned())))
        });
        (l, cf)
    });
    let count = |pred: &dyn Fn(&rebuy_emulator::amocrm::AmoLead) -> bool| {
        env.run
            .emulator
            .with_data(|d| d.leads.values().filter(|l| pred(l)).count())
    };
    let fetch_all = |q: String| {
        let env = &env;
        async move {
            let mut out = Vec::new();
            for page in 1.. {
                let r = env
                    .get(&format!("/api/v4/leads?limit=250&page={page}&{q}"))
                    .await;
                if r.status() == StatusCode::NO_CONTENT {
                    break;
                }
                assert_eq!(r.status(), StatusCode::OK, "{q}");
                let v: Value = r.json().await.expect("json");
                let items = all(&v);
                let n = items.len();
                out.extend(items);
                if n < 250 {
                    break;
                }
            }
            out
        }
    };

    // price: exact and range.
    let got = fetch_all(format!("filter[price]={}", lead.price)).await;
    assert!(got.iter().all(|l| l["price"] == json!(lead.price)));
    assert_eq!(got.len(), count(&|l| l.price == lead.price));
    let (lo, hi) = (lead.price - 1000, lead.price + 1000);
    let got = fetch_all(format!("filter[price][from]={lo}&filter[price][to]={hi}")).await;
    assert_eq!(got.len(), count(&|l| (lo..=hi).contains(&l.price)));
    assert!(got.iter().any(|l| l["id"] == json!(lead.id)));
    // name, created_by, updated_by.
    let got = fetch_all(format!("filter[name]={}", enc(&lead.name))).await;
    assert!(got.iter().all(|l| l["name"] == json!(lead.name)));
    assert!(got.iter().any(|l| l["id"] == json!(lead.id)));
    let got = fetch_all(format!("filter[created_by][]={}", lead.created_by)).await;
    assert_eq!(got.len(), count(&|l| l.created_by == lead.created_by));
    let got = fetch_all(format!("filter[updated_by]={}", lead.updated_by)).await;
    assert_eq!(got.len(), count(&|l| l.updated_by == lead.updated_by));
    let got = fetch_all(format!("filter[created_by]={}", u64::MAX)).await;
    assert!(got.is_empty());
    // custom_fields_values.
    if let Some((field, value)) = cf {
        let got = fetch_all(format!(
            "filter[custom_fields_values][{field}][]={}",
            enc(&value)
        ))
        .await;
        assert!(got.iter().any(|l| l["id"] == json!(lead.id)));
        assert_eq!(
            got.len(),
            count(&|l| l.custom_fields.iter().any(|f| f.field_id == field
                && f.values
                    .iter()
                    .any(|v| v.value.as_str() == Some(value.as_str()))))
        );
    }
    // Filters the emulator does not implement answer 400, never an unfiltered list.
    for (path, q) in [
        ("leads", "filter[colour]=red"),
        ("leads", "filter[price][from]=cheap"),
        ("contacts", "filter[price]=5"),
        ("companies", "filter[name]=x"),
    ] {
        let r = env.get(&format!("/api/v4/{path}?{q}")).await;
        assert_eq!(r.status(), 400, "{path}?{q}");
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        let e: Value = r.json().await.expect("json");
        assert_eq!(e["status"], 400);
    }
}

/// A known path asked with a method it does not serve: 405 as problem+json, with `Allow`.
#[tokio::test]
async fn other_http_methods_get_405_as_problem_json() {
    let env = Env::new(cfg()).await;
    for (method, path, allowed) in [
        (reqwest::Method::DELETE, "/api/v4/leads", "PATCH"),
        (reqwest::Method::PUT, "/api/v4/account", "GET"),
        (reqwest::Method::POST, "/api/v4/companies/1", "GET"),
    ] {
        let r = env
            .http
            .request(method.clone(), env.url(path))
            .bearer_auth(&env.token)
            .send()
            .await
            .expect("send");
        assert_eq!(
            r.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}"
        );
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        let allow = r.headers()["allow"].to_str().unwrap().to_owned();
        assert!(allow.contains(allowed), "{allow}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["status"], 405, "{v}");
        assert_eq!(v["title"], "Method Not Allowed");
        assert_eq!(v["type"], "https://httpstatus.es/405");
        assert!(
            v["detail"].as_str().unwrap().contains(method.as_str()),
            "{v}"
        );
    }
    // An unknown path stays a 404.
    let r = env.get("/api/v4/nothing-here").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

fn errors_paths(v: &Value) -> Vec<String> {
    v["validation-errors"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|e| e["errors"].as_array().cloned().unwrap_or_default())
        .map(|e| e["path"].as_str().unwrap_or("").to_owned())
        .collect()
}

#[tokio::test]
async fn contacts_and_companies_are_created_with_validation() {
    let env = Env::new(cfg()).await;
    let post = reqwest::Method::POST;
    let (s, v) = env
        .send(
            post.clone(),
            "/api/v4/companies",
            &json!([{"name": "ООО «Тест»"}]),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let company = v["_embedded"]["companies"][0]["id"].as_u64().unwrap();
    let body = json!([{
        "first_name": "Иван", "last_name": "Петров", "request_id": "c1",
        "custom_fields_values": [{"field_code": "PHONE", "values": [{"value": "+79001234567", "enum_code": "MOB"}]}],
        "_embedded": {"companies": [{"id": company}], "tags": [{"name": "vip"}]}
    }]);
    let (s, v) = env.send(post.clone(), "/api/v4/contacts", &body).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["_embedded"]["contacts"][0]["request_id"], "c1");
    let id = v["_embedded"]["contacts"][0]["id"].as_u64().unwrap();
    let c = env.get_json(&format!("/api/v4/contacts/{id}")).await;
    assert_eq!(c["name"], "Иван Петров");
    assert_eq!(c["_embedded"]["companies"][0]["id"], company);
    assert_eq!(c["_embedded"]["tags"][0]["name"], "vip");
    assert_eq!(
        c["custom_fields_values"][0]["values"][0]["value"],
        "+79001234567"
    );
    let events = env
        .get_json(&format!(
            "/api/v4/events?filter[entity_id]={id}&filter[type]=contact_added"
        ))
        .await;
    assert_eq!(events["_embedded"]["events"].as_array().unwrap().len(), 1);
    // A batch with one bad item is refused whole, naming each problem.
    let before = env
        .run
        .emulator
        .with_data(|d| (d.contacts.len(), d.companies.len()));
    let (s, v) = env
        .send(
            post.clone(),
            "/api/v4/contacts",
            &json!([
                {"name": "ok"},
                {"name": "bad", "responsible_user_id": 1, "_embedded": {"companies": [{"id": 1}]}},
                {"id": 5, "name": "no ids on create"}
            ]),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let paths = errors_paths(&v);
    for p in ["responsible_user_id", "_embedded.companies.0.id", "id"] {
        assert!(paths.contains(&p.to_owned()), "{p} in {paths:?}");
    }
    let (s, v) = env
        .send(post.clone(), "/api/v4/companies", &json!([{"name": "  "}]))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(errors_paths(&v), ["name"]);
    let (s, _) = env
        .send(post, "/api/v4/contacts", &json!({"name": "not an array"}))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(
        before,
        env.run
            .emulator
            .with_data(|d| (d.contacts.len(), d.companies.len()))
    );
}

#[tokio::test]
async fn notes_links_and_tags() {
    let env = Env::new(cfg()).await;
    let post = reqwest::Method::POST;
    let (lead, contact) = env.run.emulator.with_data(|d| {
        let lead = *d.leads.keys().next().unwrap();
        let contact = d
            .contacts
            .keys()
            .copied()
            .find(|c| !d.leads[&lead].contacts.iter().any(|x| x.id == *c))
            .unwrap();
        (lead, contact)
    });
    // Notes.
    let (s, v) = env
        .send(
            post.clone(),
            &format!("/api/v4/leads/{lead}/notes"),
            &json!([{"note_type": "common", "params": {"text": "позвонить"}, "request_id": "n1"}]),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["_embedded"]["notes"][0]["request_id"], "n1");
    let notes = env.get_json(&format!("/api/v4/leads/{lead}/notes")).await;
    assert_eq!(
        notes["_embedded"]["notes"][0]["params"]["text"],
        "позвонить"
    );
    let by_type = env
        .get_json("/api/v4/leads/notes?filter[note_type]=common")
        .await;
    assert_eq!(by_type["_embedded"]["notes"].as_array().unwrap().len(), 1);
    assert_eq!(
        env.get(&format!("/api/v4/contacts/{contact}/notes"))
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    let (s, v) = env
        .send(post.clone(), "/api/v4/leads/notes", &json!([
            {"note_type": "teapot", "entity_id": lead, "params": {}},
            {"note_type": "common", "entity_id": lead, "params": {"text": " "}},
            {"note_type": "call_in", "entity_id": lead, "params": {"phone": "+7900", "duration": "long"}},
            {"note_type": "common", "params": {"text": "x"}},
            {"note_type": "common", "entity_id": 1, "params": {"text": "x"}}
        ]))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let paths = errors_paths(&v);
    for p in ["note_type", "params.text", "params.duration", "entity_id"] {
        assert!(paths.contains(&p.to_owned()), "{p} in {paths:?}");
    }
    assert_eq!(
        env.get("/api/v4/leads/notes?filter[text]=x").await.status(),
        StatusCode::BAD_REQUEST
    );
    let (s, _) = env
        .send(
            post.clone(),
            "/api/v4/leads/1/notes",
            &json!([{"note_type": "common", "params": {"text": "x"}}]),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // Links, both ways.
    let (s, v) = env
        .send(post.clone(), &format!("/api/v4/leads/{lead}/link"),
              &json!([{"to_entity_id": contact, "to_entity_type": "contacts", "metadata": {"is_main": false}}]))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let links = env
        .get_json(&format!(
            "/api/v4/leads/{lead}/links?filter[to_entity_type]=contacts"
        ))
        .await;
    let linked: Vec<u64> = links["_embedded"]["links"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["to_entity_id"].as_u64().unwrap())
        .collect();
    assert!(linked.contains(&contact), "{links}");
    let back = env
        .get_json(&format!(
            "/api/v4/contacts/{contact}/links?filter[to_entity_type]=leads"
        ))
        .await;
    assert!(
        back["_embedded"]["links"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["to_entity_id"] == lead)
    );
    let company = env
        .run
        .emulator
        .with_data(|d| *d.companies.keys().next().unwrap());
    let (s, _) = env
        .send(
            post.clone(),
            "/api/v4/companies/link",
            &json!([{"entity_id": company, "to_entity_id": contact, "to_entity_type": "contacts"}]),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        env.run
            .emulator
            .with_data(|d| d.contacts[&contact].company_id),
        Some(company)
    );
    let (s, v) = env
        .send(post.clone(), &format!("/api/v4/leads/{lead}/link"), &json!([
            {"to_entity_id": contact, "to_entity_type": "tasks"},
            {"to_entity_id": 1, "to_entity_type": "contacts"},
            {"to_entity_id": 900_001, "to_entity_type": "catalog_elements", "metadata": {"catalog_id": 1}}
        ]))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let paths = errors_paths(&v);
    for p in ["to_entity_type", "to_entity_id", "metadata.catalog_id"] {
        assert!(paths.contains(&p.to_owned()), "{p} in {paths:?}");
    }
    // Tags: an existing name answers its tag; a new one is listed with its colour.
    let existing = env.run.emulator.with_data(|d| {
        d.leads
            .values()
            .find_map(|l| l.tags.first().cloned())
            .expect("a tagged lead")
    });
    let (s, v) = env
        .send(post.clone(), "/api/v4/leads/tags", &json!([
            {"name": existing.name}, {"name": "новый тег", "color": "FF0000", "request_id": "t2"}
        ]))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["_embedded"]["tags"][0]["id"], existing.id);
    assert_eq!(v["_embedded"]["tags"][1]["request_id"], "t2");
    let listed = env
        .get_json("/api/v4/leads/tags?filter[name]=новый тег")
        .await;
    assert_eq!(listed["_embedded"]["tags"][0]["color"], "FF0000");
    assert_eq!(
        env.get("/api/v4/contacts/tags?filter[name]=новый тег")
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    let (s, v) = env
        .send(
            post,
            "/api/v4/leads/tags",
            &json!([{"name": ""}, {"name": "x", "color": "red"}]),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(errors_paths(&v), ["name", "color"]);
}

#[tokio::test]
async fn complex_leads_create_the_lead_its_contact_and_company() {
    let env = Env::new(cfg()).await;
    let post = reqwest::Method::POST;
    let (s, v) = env
        .send(post.clone(), "/api/v4/leads/complex", &json!([{
            "name": "Комплексная", "price": 5000,
            "_embedded": {"contacts": [{"first_name": "Анна"}], "companies": [{"name": "ООО «Б»"}],
                          "tags": [{"name": "сайт"}]}
        }]))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let r = &v[0];
    assert_eq!(
        (r["request_id"].clone(), r["merged"].clone()),
        (json!(["0"]), json!(false))
    );
    let (id, contact, company) = (
        r["id"].as_u64().unwrap(),
        r["contact_id"].as_u64().unwrap(),
        r["company_id"].as_u64().unwrap(),
    );
    let lead = env
        .get_json(&format!("/api/v4/leads/{id}?with=contacts"))
        .await;
    assert_eq!(lead["price"], 5000);
    assert_eq!(lead["_embedded"]["contacts"][0]["id"], contact);
    assert_eq!(lead["_embedded"]["companies"][0]["id"], company);
    assert_eq!(
        env.run
            .emulator
            .with_data(|d| d.contacts[&contact].company_id),
        Some(company)
    );
    let too_many: Vec<Value> = (0..51).map(|i| json!({"name": format!("l{i}")})).collect();
    let (s, _) = env
        .send(post.clone(), "/api/v4/leads/complex", &json!(too_many))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, v) = env
        .send(post, "/api/v4/leads/complex", &json!([{
            "price": -1,
            "_embedded": {"contacts": [{"name": "a"}, {"name": "b"}], "companies": [{"name": ""}]}
        }]))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let paths = errors_paths(&v);
    for p in ["price", "_embedded.contacts", "_embedded.companies.0.name"] {
        assert!(paths.contains(&p.to_owned()), "{p} in {paths:?}");
    }
}

#[tokio::test]
async fn customers_mode_history_has_customers_with_purchases_and_transactions_are_written() {
    let env = Env::new(AmoConfig {
        customers_mode: "periodicity".into(),
        ..cfg()
    })
    .await;
    let (customer, purchases) = env.run.emulator.with_data(|d| {
        assert!(!d.customers.is_empty(), "periodic buyers are customers");
        let (id, txs) = d.transactions.iter().next().expect("purchases");
        (*id, txs.len())
    });
    assert!(purchases >= 2);
    let c = env.get_json(&format!("/api/v4/customers/{customer}")).await;
    assert_eq!(c["purchases_count"], purchases);
    let txs = env
        .get_json(&format!("/api/v4/customers/{customer}/transactions"))
        .await;
    assert_eq!(
        txs["_embedded"]["transactions"].as_array().unwrap().len(),
        purchases
    );
    let all = env
        .get_json("/api/v4/customers/transactions?limit=250")
        .await;
    assert!(
        !all["_embedded"]["transactions"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let added = env
        .get_json("/api/v4/events?filter[type]=customer_added&limit=1")
        .await;
    assert_eq!(added["_embedded"]["events"][0]["type"], "customer_added");

    let post = reqwest::Method::POST;
    let next = c["next_date"].as_i64().unwrap() + 86_400;
    let (s, v) = env
        .send(post.clone(), &format!("/api/v4/customers/{customer}/transactions?accrue_bonus=false"),
              &json!([{"price": 1500, "comment": "вода", "next_date": next, "next_price": 1600,
                       "_embedded": {"catalog_elements": [{"id": 900_001, "metadata": {"catalog_id": 5_001, "quantity": 5}}]}}]))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let c = env.get_json(&format!("/api/v4/customers/{customer}")).await;
    assert_eq!(c["purchases_count"], purchases + 1);
    assert_eq!(
        (c["next_date"].as_i64(), c["next_price"].as_i64()),
        (Some(next), Some(1600))
    );
    let (s, v) = env
        .send(post.clone(), &format!("/api/v4/customers/{customer}/transactions"),
              &json!([{"comment": "no price"}, {"price": 1, "_embedded": {"catalog_elements": [{"id": 1, "metadata": {"catalog_id": 5_001}}]}}]))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let paths = errors_paths(&v);
    assert!(
        paths.contains(&"price".to_owned())
            && paths.contains(&"_embedded.catalog_elements.0.id".to_owned()),
        "{paths:?}"
    );
    let (s, _) = env
        .send(
            post.clone(),
            &format!("/api/v4/customers/{customer}/transactions?accrue_bonus=maybe"),
            &json!([{"price": 1}]),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = env
        .send(
            post,
            "/api/v4/customers/1/transactions",
            &json!([{"price": 1}]),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // The generated history's events are there too, oldest first when asked.
    let first = env
        .get_json("/api/v4/events?order[created_at]=asc&limit=1")
        .await;
    assert_eq!(first["_embedded"]["events"][0]["type"], "contact_added");
}

#[tokio::test]
async fn without_customers_mode_the_history_has_no_customers() {
    let env = Env::new(cfg()).await;
    env.run.emulator.with_data(|d| {
        assert!(d.customers.is_empty() && d.transactions.is_empty());
        assert!(
            d.events
                .iter()
                .any(|e| e.event_type == "lead_status_changed")
        );
        assert!(
            d.events
                .windows(2)
                .all(|w| w[0].created_at <= w[1].created_at)
        );
    });
}

#[tokio::test]
async fn unknown_filters_on_tasks_events_and_customers_are_refused() {
    let env = Env::new(AmoConfig {
        customers_mode: "periodicity".into(),
        ..cfg()
    })
    .await;
    for path in [
        "/api/v4/tasks?filter[text]=x",
        "/api/v4/tasks?filter[entity_id]=1",
        "/api/v4/tasks?filter[entity_type]=deals",
        "/api/v4/events?filter[value_after][leads_statuses][0][status_id]=142",
        "/api/v4/customers?filter[name]=x",
        "/api/v4/customers/transactions?filter[price]=1",
    ] {
        let r = env.get(path).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{path}");
        let v: Value = r.json().await.unwrap();
        assert!(
            v["detail"].as_str().unwrap_or("").contains("filter"),
            "{path}: {v}"
        );
    }
    for path in [
        "/api/v4/tasks?filter[entity_type]=leads&filter[entity_id]=1",
        "/api/v4/events?filter[type]=lead_added&limit=1",
        "/api/v4/customers?filter[id]=1",
    ] {
        let s = env.get(path).await.status();
        assert!(
            s == StatusCode::OK || s == StatusCode::NO_CONTENT,
            "{path}: {s}"
        );
    }
}
