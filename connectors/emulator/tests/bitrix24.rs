//! The Bitrix24 emulator over real sockets: auth styles, wire shapes, lists, batch, limits.
use rebuy_emulator::bitrix24::{B24Config, B24Emulator, RunningB24};
use rebuy_emulator::seed::SeedConfig;
use serde_json::{Value, json};

fn cfg() -> B24Config {
    B24Config {
        seed: SeedConfig::new(5, 120, 300),
        bucket_capacity: 10_000,
        drain_per_sec: 10_000.0,
        ..B24Config::default()
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn token(run: &RunningB24) -> (String, String) {
    let c = run.emulator.config();
    let code = run.emulator.issue_authorization_code();
    let v: Value = http()
        .get(format!("{}/oauth/token/", run.base_url))
        .query(&[
            ("grant_type", "authorization_code"),
            ("client_id", &c.client_id),
            ("client_secret", &c.client_secret),
            ("code", &code),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        v["client_endpoint"],
        json!(format!("{}/rest/", run.base_url))
    );
    assert_eq!(v["expires_in"], json!(3600));
    assert_eq!(v["member_id"], json!(c.member_id));
    (
        v["access_token"].as_str().unwrap().to_owned(),
        v["refresh_token"].as_str().unwrap().to_owned(),
    )
}

async fn post(run: &RunningB24, method: &str, body: Value) -> (u16, Value) {
    let r = http()
        .post(format!("{}/rest/{method}", run.base_url))
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn oauth_authorize_token_refresh_rotation() {
    let run = B24Emulator::spawn(cfg()).await.unwrap();
    let c = run.emulator.config().clone();
    let r = http()
        .get(format!(
            "{}/oauth/authorize/?client_id={}&state=xyz",
            run.base_url, c.client_id
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 302);
    let loc = url::Url::parse(r.headers()["location"].to_str().unwrap()).unwrap();
    let q: std::collections::HashMap<_, _> = loc.query_pairs().into_owned().collect();
    assert_eq!(q["state"], "xyz");
    assert_eq!(q["domain"], c.domain);
    assert_eq!(q["member_id"], c.member_id);
    assert!(q.contains_key("code") && q.contains_key("scope") && q.contains_key("server_domain"));

    let (access, refresh) = token(&run).await;
    let (s, v) = post(&run, "user.get", json!({"auth": access})).await;
    assert_eq!(s, 200, "{v}");
    let refresh_with = |t: String| {
        let c = c.clone();
        let base = run.base_url.clone();
        async move {
            http()
                .get(format!("{base}/oauth/token/"))
                .query(&[
                    ("grant_type", "refresh_token"),
                    ("client_id", &c.client_id),
                    ("client_secret", &c.client_secret),
                    ("refresh_token", &t),
                ])
                .send()
                .await
                .unwrap()
        }
    };
    let r = refresh_with(refresh.clone()).await;
    assert_eq!(r.status().as_u16(), 200);
    let v: Value = r.json().await.unwrap();
    assert!(v["expires"].as_i64().is_some() && v["user_id"].as_i64().is_some());
    // Rotation: the old refresh token is spent, the old access token is dead.
    let r = refresh_with(refresh).await;
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_grant");
    // The replaced access token answers as a token that no longer works does in the docs:
    // 401 `expired_token` (on which clients refresh), not a success and not an unknown token.
    let (s, v_old) = post(&run, "user.get", json!({"auth": access})).await;
    assert_eq!(
        (s, v_old),
        (
            401,
            json!({"error": "expired_token", "error_description": "The access token provided has expired"})
        )
    );
    // A token the portal never issued: the system errors' "invalid access token".
    let (s, v_bad) = post(&run, "user.get", json!({"auth": "f".repeat(70)})).await;
    assert_eq!(
        (s, v_bad),
        (
            401,
            json!({"error": "NO_AUTH_FOUND", "error_description": "Wrong authorization data"})
        )
    );
    // Expiry.
    let new_access = v["access_token"].as_str().unwrap().to_owned();
    run.emulator.expire_access_tokens();
    let (s, v) = post(&run, "user.get", json!({"auth": new_access})).await;
    assert_eq!((s, v["error"].as_str().unwrap()), (401, "expired_token"));
}

#[tokio::test]
async fn inbound_webhook_and_wrong_secret() {
    let run = B24Emulator::spawn(cfg()).await.unwrap();
    let v: Value = http()
        .get(format!("{}user.get.json", run.webhook_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["total"], json!(8));
    let r = http()
        .get(format!("{}/rest/1/nope/user.get", run.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"error": "NO_AUTH_FOUND", "error_description": "Wrong authorization data"})
    );
}

#[tokio::test]
async fn lists_have_the_documented_shapes() {
    let run = B24Emulator::spawn(cfg()).await.unwrap();
    let wh = run.webhook_url();
    // GET with a PHP-bracket query.
    let v: Value = http()
        .get(format!("{wh}crm.deal.list?order[ID]=ASC&select[]=ID&select[]=OPPORTUNITY&select[]=STAGE_ID&select[]=DATE_CREATE"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["total"], json!(300));
    assert_eq!(v["next"], json!(50));
    let row = &v["result"][0];
    assert!(row["ID"].is_string() && row["OPPORTUNITY"].as_str().unwrap().contains('.'));
    assert!(row["DATE_CREATE"].as_str().unwrap().ends_with("+03:00"));
    assert!(row.get("TITLE").is_none(), "only selected fields");
    assert!(v["time"]["date_start"].is_string() && v["time"]["operating"].is_number());
    // POST JSON with upper-case keys, >ID and start=-1: no count, no next.
    let first: u64 = v["result"][49]["ID"].as_str().unwrap().parse().unwrap();
    let v: Value = http()
        .post(format!("{wh}crm.contact.list"))
        .json(&json!({"ORDER": {"ID": "ASC"}, "FILTER": {">ID": first}, "SELECT": ["ID", "PHONE"], "start": -1}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["total"], json!(0));
    assert!(v.get("next").is_none());
    assert!(v["result"][0]["PHONE"].is_array());
    // Without naming PHONE, `*` has no multi-fields.
    let v: Value = http()
        .post(format!("{wh}crm.contact.list"))
        .form(&[("select[]", "*")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(v["result"][0].get("PHONE").is_none() && v["result"][0].get("NAME").is_some());
    // Funnels and stages.
    let v: Value = http()
        .get(format!("{wh}crm.category.list?entityTypeId=2"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["result"]["categories"].as_array().unwrap().len(), 3);
    let v: Value = http()
        .get(format!(
            "{wh}crm.status.list?filter[ENTITY_ID]=DEAL_STAGE_1"
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        v["result"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["STATUS_ID"].as_str().unwrap().starts_with("C1:"))
    );
    // Not found, legacy style.
    let r = http()
        .get(format!("{wh}crm.deal.get?id=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"error": "", "error_description": "Not found"})
    );
}

#[tokio::test]
async fn batch_references_and_php_empty_maps() {
    let run = B24Emulator::spawn(cfg()).await.unwrap();
    let (access, _) = token(&run).await;
    let (s, v) = post(
        &run,
        "batch",
        json!({"auth": access, "halt": 0, "cmd": {
            "c00": "crm.contact.list?order[ID]=ASC&select[]=ID&start=-1",
            "c01": "crm.contact.list?order[ID]=ASC&filter[>ID]=$result[c00][49][ID]&select[]=ID&start=-1",
            "c02": "crm.contact.list?order[ID]=ASC&filter[>ID]=$result[c01][49][ID]&select[]=ID&start=-1",
        }}),
    )
    .await;
    assert_eq!(s, 200);
    let r = &v["result"];
    let ids: Vec<u64> = ["c00", "c01", "c02"]
        .iter()
        .flat_map(|k| {
            r["result"][k]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x["ID"].as_str().unwrap().parse::<u64>().unwrap())
        })
        .collect();
    let expected: Vec<u64> = run
        .emulator
        .with_data(|d| d.contacts.keys().copied().collect());
    assert_eq!(ids, expected, "120 contacts, no gap, no duplicate");
    assert_eq!(r["result_error"], json!([]));
    assert_eq!(r["result_next"], json!([]));
    assert!(r["result_time"]["c01"]["operating"].is_number());
    // Too long a batch.
    let cmd: serde_json::Map<String, Value> = (0..51)
        .map(|i| (format!("c{i:02}"), json!("user.get")))
        .collect();
    let (s, v) = post(&run, "batch", json!({"auth": access, "cmd": cmd})).await;
    assert_eq!(
        (s, v["error"].as_str().unwrap()),
        (400, "ERROR_BATCH_LENGTH_EXCEEDED")
    );
    // halt stops at the first error.
    let (_, v) = post(
        &run,
        "batch",
        json!({"auth": access, "halt": 1, "cmd": {"a": "crm.deal.get?id=1", "b": "user.get"}}),
    )
    .await;
    assert!(v["result"]["result_error"]["a"].is_object());
    assert_eq!(v["result"]["result"], json!([]));
}

#[tokio::test]
async fn leaky_bucket_and_operating_limit() {
    let run = B24Emulator::spawn(B24Config {
        bucket_capacity: 5,
        drain_per_sec: 1.0,
        ..cfg()
    })
    .await
    .unwrap();
    let wh = run.webhook_url();
    let mut codes = Vec::new();
    for _ in 0..7 {
        let r = http().get(format!("{wh}user.get")).send().await.unwrap();
        codes.push(r.status().as_u16());
        if r.status().as_u16() == 503 {
            assert_eq!(
                r.json::<Value>().await.unwrap(),
                json!({"error": "QUERY_LIMIT_EXCEEDED", "error_description": "Too many requests"})
            );
        }
    }
    assert_eq!(&codes[..5], &[200; 5]);
    assert_eq!(codes[5], 503);
    assert_eq!(run.emulator.stats().query_limit_503, 2);

    run.emulator.set_bucket(10_000, 10_000.0);
    run.emulator.set_operating_limit(0.01, 60.0);
    let mut last = 0;
    for _ in 0..4 {
        let r = http()
            .get(format!("{wh}crm.deal.list"))
            .send()
            .await
            .unwrap();
        last = r.status().as_u16();
        if last == 429 {
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["error"], "OPERATION_TIME_LIMIT");
            assert!(v["time"]["operating_reset_at"].as_i64().is_some());
            break;
        }
    }
    assert_eq!(last, 429);
    // Other methods still work.
    assert_eq!(
        http()
            .get(format!("{wh}user.get"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );
}

#[tokio::test]
async fn writes_category_rules_and_events() {
    let run = B24Emulator::spawn(cfg()).await.unwrap();
    let (access, _) = token(&run).await;
    let deal = run
        .emulator
        .with_data(|d| d.deals.values().find(|x| x.category_id == 0).unwrap().id);
    let (s, v) = post(
        &run,
        "crm.deal.update",
        json!({"auth": access, "id": deal, "fields": {"CATEGORY_ID": 1}}),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    let (s, _) = post(
        &run,
        "event.bind",
        json!({"auth": access, "event": "ONCRMDEALMOVETOCATEGORY", "event_type": "offline"}),
    )
    .await;
    assert_eq!(s, 200);
    let (s, v) = post(
        &run,
        "crm.item.update",
        json!({"auth": access, "entityTypeId": 2, "id": deal, "fields": {"categoryId": 2}}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["result"]["item"]["stageId"], "C2:NEW");
    let (_, v) = post(&run, "event.offline.get", json!({"auth": access})).await;
    assert_eq!(
        v["result"]["events"][0]["EVENT_NAME"],
        "ONCRMDEALMOVETOCATEGORY"
    );
    let (s, v) = post(&run, "crm.deal.userfield.add", json!({"auth": access, "fields": {"FIELD_NAME": "rebuy_segment", "USER_TYPE_ID": "string"}})).await;
    assert_eq!(s, 200, "{v}");
    let v: Value = http()
        .get(format!("{}crm.deal.list?select[]=UF_*", run.webhook_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        v["result"][0]
            .as_object()
            .unwrap()
            .contains_key("UF_CRM_REBUY_SEGMENT")
    );
    // event.bind needs an app.
    let r = http()
        .post(format!("{}event.bind", run.webhook_url()))
        .json(&json!({"event": "ONCRMDEALADD", "handler": "https://x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let (s, v) = post(
        &run,
        "tasks.task.add",
        json!({"auth": access, "fields": {"TITLE": "Позвонить", "RESPONSIBLE_ID": 1}}),
    )
    .await;
    assert_eq!(s, 200);
    assert!(v["result"]["task"]["id"].is_string());
    assert!(
        run.emulator
            .writes()
            .iter()
            .any(|w| w.method == "crm.item.update")
    );
}

/// The body is sent as raw text so that the key order on the wire is the one written here.
async fn post_raw(run: &RunningB24, method: &str, body: String) -> Value {
    let r = http()
        .post(format!("{}/rest/{method}", run.base_url))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    r.json().await.unwrap()
}

#[tokio::test]
async fn batch_runs_commands_in_the_order_sent() {
    let run = B24Emulator::spawn(cfg()).await.unwrap();
    let (access, _) = token(&run).await;
    // "deal" sorts after "contact" as text, yet it is sent first and must run first.
    let body = format!(
        r#"{{"auth":"{access}","halt":0,"cmd":{{
            "deal":"crm.deal.list?order[ID]=ASC&filter[>CONTACT_ID]=0&select[]=ID&select[]=CONTACT_ID&start=-1",
            "contact":"crm.contact.list?filter[ID]=$result[deal][0][CONTACT_ID]&select[]=ID&start=-1"
        }}}}"#
    );
    let v = post_raw(&run, "batch", body).await;
    let r = &v["result"];
    assert_eq!(r["result_error"], json!([]));
    let keys: Vec<&String> = r["result"].as_object().unwrap().keys().collect();
    assert_eq!(keys, ["deal", "contact"], "answered in the order sent");
    let contact_of_deal = r["result"]["deal"][0]["CONTACT_ID"].as_str().unwrap();
    let contacts = r["result"]["contact"].as_array().unwrap();
    assert_eq!(contacts.len(), 1, "the reference resolved: {contacts:?}");
    assert_eq!(contacts[0]["ID"].as_str().unwrap(), contact_of_deal);

    // Keys "1".."12" (b24pysdk's fast listing) run numerically, not as text ("10" < "2"):
    // each command starts after the first row of the one before it.
    let cmd: Vec<String> = (1..=12)
        .map(|k| {
            let after = if k == 1 {
                "0".to_owned()
            } else {
                format!("$result[{}][0][ID]", k - 1)
            };
            format!(
                r#""{k}":"crm.deal.list?order[ID]=ASC&filter[>ID]={after}&select[]=ID&start=-1""#
            )
        })
        .collect();
    let body = format!(r#"{{"auth":"{access}","cmd":{{{}}}}}"#, cmd.join(","));
    let v = post_raw(&run, "batch", body).await;
    let r = &v["result"];
    assert_eq!(r["result_error"], json!([]));
    let keys: Vec<String> = r["result"].as_object().unwrap().keys().cloned().collect();
    let sent: Vec<String> = (1..=12).map(|k| k.to_string()).collect();
    assert_eq!(keys, sent);
    let times: Vec<String> = r["result_time"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(times, sent);
    let deal_ids: Vec<u64> = run
        .emulator
        .with_data(|d| d.deals.keys().copied().collect());
    for k in 1..=12usize {
        let first = r["result"][k.to_string()][0]["ID"].as_str().unwrap();
        assert_eq!(first, deal_ids[k - 1].to_string(), "command {k}");
    }
}

#[tokio::test]
async fn batch_form_body_runs_commands_in_the_order_sent() {
    let run = B24Emulator::spawn(cfg()).await.unwrap();
    let (access, _) = token(&run).await;
    let form = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("auth", &access)
        .append_pair(
            "cmd[deal]",
            "crm.deal.list?order[ID]=ASC&filter[>CONTACT_ID]=0&select[]=CONTACT_ID&start=-1",
        )
        .append_pair(
            "cmd[contact]",
            "crm.contact.list?filter[ID]=$result[deal][0][CONTACT_ID]&select[]=ID&start=-1",
        )
        .finish();
    let r = http()
        .post(format!("{}/rest/batch", run.base_url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    let r = &v["result"];
    let keys: Vec<&String> = r["result"].as_object().unwrap().keys().collect();
    assert_eq!(keys, ["deal", "contact"]);
    assert_eq!(r["result"]["contact"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn an_unreadable_filter_date_is_an_error_not_an_empty_list() {
    let run = B24Emulator::spawn(cfg()).await.unwrap();
    let (access, _) = token(&run).await;
    for bad in ["yesterday", "2024-13-45T00:00:00+03:00", ""] {
        let (s, v) = post(
            &run,
            "crm.deal.list",
            json!({"auth": access, "filter": {">DATE_MODIFY": bad}, "select": ["ID"]}),
        )
        .await;
        assert_eq!(s, 400, "{bad:?}: {v}");
        assert_eq!(v["error"], json!(""), "{v}");
        assert!(
            v["error_description"]
                .as_str()
                .unwrap()
                .contains("DATE_MODIFY")
        );
    }
    // Inside a batch the command fails on its own.
    let (_, v) = post(
        &run,
        "batch",
        json!({"auth": access, "cmd": {"a": "crm.contact.list?filter%5B%3E%3DDATE_CREATE%5D=soon"}}),
    )
    .await;
    assert!(v["result"]["result_error"]["a"].is_object(), "{v}");
    // Readable dates still filter.
    let (s, v) = post(
        &run,
        "crm.deal.list",
        json!({"auth": access, "filter": {">DATE_MODIFY": "2000-01-01T00:00:00+03:00"}, "select": ["ID"]}),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(v["total"], json!(300));
}

#[tokio::test]
async fn removed_app_token_is_invalid() {
    let run = B24Emulator::spawn(cfg()).await.unwrap();
    let (access, _) = token(&run).await;
    run.emulator.uninstall_app();
    let (s, v) = post(&run, "user.get", json!({"auth": access})).await;
    assert_eq!((s, v["error"].as_str().unwrap()), (401, "invalid_token"));
}

#[tokio::test]
async fn other_http_methods_get_405_in_the_rest_error_shape() {
    let run = B24Emulator::spawn(cfg()).await.unwrap();
    for (method, path) in [
        (
            reqwest::Method::PUT,
            format!("{}crm.deal.list", run.webhook_url()),
        ),
        (
            reqwest::Method::DELETE,
            format!("{}/rest/crm.deal.list", run.base_url),
        ),
        (
            reqwest::Method::PATCH,
            format!("{}/oauth/token/", run.base_url),
        ),
    ] {
        let r = http().request(method.clone(), &path).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 405, "{method} {path}");
        let allow = r
            .headers()
            .get("allow")
            .map(|h| h.to_str().unwrap().to_owned());
        assert!(
            allow
                .as_deref()
                .is_some_and(|a| a.contains("GET") && a.contains("POST")),
            "{allow:?}"
        );
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"], "ERROR_METHOD_NOT_ALLOWED", "{v}");
        assert!(
            v["error_description"]
                .as_str()
                .unwrap()
                .contains(method.as_str()),
            "{v}"
        );
    }
}

/// Pages by `start` over the whole table: every page has the exact `total`, pages join up
/// without gaps or repeats, and a descending order or an `ID` range pages the same way.
#[tokio::test]
async fn start_paging_counts_exactly_by_rank() {
    let run = B24Emulator::spawn(cfg()).await.unwrap();
    let all: Vec<u64> = run
        .emulator
        .with_data(|d| d.deals.keys().copied().collect());
    assert!(all.len() > 120, "{}", all.len());
    let hook = run.webhook_url();
    let list = |params: Value| {
        let url = format!("{hook}crm.deal.list");
        async move {
            let v: Value = http()
                .post(url)
                .json(&params)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v
        }
    };
    let ids_of = |v: &Value| -> Vec<u64> {
        v["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["ID"].as_str().unwrap().parse().unwrap())
            .collect()
    };
    let mut got = Vec::new();
    let mut start = 0u64;
    loop {
        let v = list(json!({"select": ["ID"], "start": start})).await;
        assert_eq!(v["total"], json!(all.len()), "{start}");
        got.extend(ids_of(&v));
        match v["next"].as_u64() {
            Some(n) => start = n,
            None => break,
        }
    }
    assert_eq!(got, all);
    // Descending, second page.
    let v = list(json!({"select": ["ID"], "order": {"ID": "DESC"}, "start": 50})).await;
    let want: Vec<u64> = all.iter().rev().skip(50).take(50).copied().collect();
    assert_eq!(ids_of(&v), want);
    // An ID range, intersected: `>ID` and `>=ID` both given, `<ID` bounds the top.
    let (lo, hi) = (all[10], all[100]);
    let v = list(
        json!({"select": ["ID"], "filter": {">ID": lo, ">=ID": all[5], "<ID": hi}, "start": 50}),
    )
    .await;
    let inside: Vec<u64> = all.iter().copied().filter(|i| *i > lo && *i < hi).collect();
    assert_eq!(v["total"], json!(inside.len()));
    assert_eq!(ids_of(&v), inside[50..].to_vec());
    // An empty range.
    let v = list(json!({"filter": {">ID": hi, "<ID": lo}})).await;
    assert_eq!((v["total"].clone(), ids_of(&v).len()), (json!(0), 0));
    // Another filter pages through its cached matches and sees a change made in between.
    let stage: String = run
        .emulator
        .with_data(|d| d.deals.values().next().unwrap().stage_id.clone());
    let matching: Vec<u64> = run.emulator.with_data(|d| {
        d.deals
            .values()
            .filter(|x| x.stage_id == stage)
            .map(|x| x.id)
            .collect()
    });
    let v = list(json!({"select": ["ID"], "filter": {"STAGE_ID": stage}, "start": 0})).await;
    assert_eq!(v["total"], json!(matching.len()));
    assert_eq!(
        ids_of(&v),
        matching.iter().take(50).copied().collect::<Vec<_>>()
    );
    assert!(run.emulator.delete_deal(matching[0]));
    let v = list(json!({"select": ["ID"], "filter": {"STAGE_ID": stage}, "start": 0})).await;
    assert_eq!(v["total"], json!(matching.len() - 1));
    let v = list(json!({"select": ["ID"], "start": 0})).await;
    assert_eq!(v["total"], json!(all.len() - 1));
}

/// A filter date the portal cannot read is an error, not a filter that matches nothing.
#[tokio::test]
async fn unparseable_filter_dates_are_an_error() {
    let run = B24Emulator::spawn(cfg()).await.expect("spawn");
    let c = run.emulator.config().clone();
    let hook = format!(
        "{}/rest/{}/{}/",
        run.base_url, c.webhook_user_id, c.webhook_secret
    );
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{hook}crm.deal.list"))
        .json(&json!({"filter": {">DATE_MODIFY": "yesterday-ish"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error_description"]
            .as_str()
            .unwrap()
            .contains("DATE_MODIFY"),
        "{v}"
    );
    let r = http
        .post(format!("{hook}crm.deal.list"))
        .json(&json!({"filter": {">DATE_MODIFY": "2024-01-01T00:00:00+03:00"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}
