//! `rebuy serve`: webhook receivers, their answers to bad input, the durable inbox, and the
//! worker that turns a webhook into a cache update.
use crate::support::*;
use rebuy::config::Config;
use rebuy::server::{AppState, runtime};
use rebuy_core::Deal;
use rebuy_emulator::amocrm::AmoConfig;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub(crate) const HOOK_SECRET: &str = "hook-secret-5f2c";
pub(crate) const METRICS_TOKEN: &str = "metrics-token-9d1e";

/// A config with one amoCRM portal on `base_url` and one Bitrix24 portal (unused endpoint).
fn config(data_dir: &std::path::Path, base_url: &str) -> Config {
    config_with_id(data_dir, base_url, "shop")
}

pub(crate) fn config_with_id(data_dir: &std::path::Path, base_url: &str, id: &str) -> Config {
    let emu = AmoConfig::default();
    let text = format!(
        r#"
        data_dir = "{}"
        [server]
        metrics_token_env = "METRICS_TOKEN"
        [[portal]]
        id = "{id}"
        kind = "amocrm"
        base_url = "{base_url}"
        requests_per_sec = {TEST_RPS}
        exceed_documented_limit = true
        [portal.auth]
        type = "oauth"
        client_id = "{}"
        client_secret_env = "EMULATOR_CLIENT_SECRET"
        redirect_uri = "{}"
        [portal.webhooks]
        secret_env = "HOOK_SECRET"

        [[portal]]
        id = "b24"
        kind = "bitrix24"
        base_url = "https://b24.example.bitrix24.ru"
        [portal.auth]
        type = "webhook"
        url_env = "B24_URL"
        [portal.webhooks]
        application_token_env = "B24_APP_TOKEN"
        "#,
        data_dir.display(),
        emu.client_id,
        emu.redirect_uri
    );
    use figment::providers::Format;
    let doc: serde_json::Value = figment::Figment::from(figment::providers::Toml::string(&text))
        .extract()
        .unwrap();
    let secret = emu.client_secret.clone();
    let env = move |k: &str| match k {
        "EMULATOR_CLIENT_SECRET" => Some(secret.clone()),
        "HOOK_SECRET" => Some(HOOK_SECRET.to_owned()),
        "B24_URL" => Some("https://b24.example.bitrix24.ru/rest/1/abc/".to_owned()),
        "B24_APP_TOKEN" => Some("app-token-1".to_owned()),
        "METRICS_TOKEN" => Some(METRICS_TOKEN.to_owned()),
        _ => None,
    };
    rebuy::config::resolve(&doc, "test.toml", &env).unwrap()
}

pub(crate) struct Server {
    pub(crate) url: String,
    pub(crate) cancel: CancellationToken,
    pub(crate) state: AppState,
}

pub(crate) async fn start_server(cfg: &Config, background: bool) -> Server {
    let state = AppState::new(cfg, true).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let cancel = CancellationToken::new();
    if background {
        runtime::spawn_all(&state, &cfg.server, cancel.clone());
    }
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
    Server { url, cancel, state }
}

pub(crate) fn amo_body(account_id: u64, subdomain: &str, items: &str) -> String {
    format!(
        "{items}&account[subdomain]={subdomain}&account[id]={account_id}&account[_links][self]=https://{subdomain}.amocrm.ru"
    )
}

pub(crate) async fn post(
    url: &str,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> (u16, String) {
    let r = reqwest::Client::new()
        .post(url)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

pub(crate) const FORM: &str = "application/x-www-form-urlencoded";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_their_documented_status_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "http://127.0.0.1:9");
    let srv = start_server(&cfg, false).await;
    let ok_body = amo_body(
        31_000_001,
        "rebuy-demo",
        "leads[add][0][id]=5&leads[add][0][status_id]=1",
    );
    let big = "x".repeat(rebuy::server::MAX_BODY_BYTES + 1);
    let cases: Vec<(&str, String, &str, String, u16)> = vec![
        (
            "unknown portal",
            format!("{}/hooks/amocrm/nope/{HOOK_SECRET}", srv.url),
            FORM,
            ok_body.clone(),
            404,
        ),
        (
            "amoCRM hook on a Bitrix24 portal",
            format!("{}/hooks/amocrm/b24/{HOOK_SECRET}", srv.url),
            FORM,
            ok_body.clone(),
            404,
        ),
        (
            "wrong secret",
            format!("{}/hooks/amocrm/shop/wrong", srv.url),
            FORM,
            ok_body.clone(),
            401,
        ),
        (
            "not a form",
            format!("{}/hooks/amocrm/shop/{HOOK_SECRET}", srv.url),
            "application/json",
            "{}".into(),
            400,
        ),
        (
            "no account",
            format!("{}/hooks/amocrm/shop/{HOOK_SECRET}", srv.url),
            FORM,
            "leads[add][0][id]=5".into(),
            400,
        ),
        (
            "malformed item",
            format!("{}/hooks/amocrm/shop/{HOOK_SECRET}", srv.url),
            FORM,
            amo_body(31_000_001, "rebuy-demo", "leads[add][0][id]=abc"),
            400,
        ),
        (
            "over 1 MiB",
            format!("{}/hooks/amocrm/shop/{HOOK_SECRET}", srv.url),
            FORM,
            big,
            413,
        ),
        (
            "bitrix24 without token",
            format!("{}/hooks/bitrix24/b24", srv.url),
            FORM,
            "event=ONCRMDEALADD&data[FIELDS][ID]=1".into(),
            401,
        ),
        (
            "bitrix24 wrong token",
            format!("{}/hooks/bitrix24/b24", srv.url),
            FORM,
            "event=ONCRMDEALADD&data[FIELDS][ID]=1&auth[application_token]=nope".into(),
            403,
        ),
        (
            "bitrix24 without event",
            format!("{}/hooks/bitrix24/b24", srv.url),
            FORM,
            "auth[application_token]=app-token-1".into(),
            400,
        ),
        (
            "bitrix24 deal event without an id",
            format!("{}/hooks/bitrix24/b24", srv.url),
            FORM,
            "event=ONCRMDEALADD&data[FIELDS][TITLE]=x&auth[application_token]=app-token-1".into(),
            400,
        ),
        (
            "bitrix24 event with a non-numeric id",
            format!("{}/hooks/bitrix24/b24", srv.url),
            FORM,
            "event=ONCRMDEALUPDATE&data[FIELDS][ID]=abc&auth[application_token]=app-token-1".into(),
            400,
        ),
        (
            "bitrix24 unknown portal",
            format!("{}/hooks/bitrix24/nope", srv.url),
            FORM,
            "event=X".into(),
            404,
        ),
    ];
    for (name, url, ct, body, want) in cases {
        let (status, text) = post(&url, ct, body).await;
        assert_eq!(status, want, "{name}: {text}");
        if status != 413 {
            let v: serde_json::Value = serde_json::from_str(&text)
                .unwrap_or_else(|_| panic!("{name}: JSON error body, got {text}"));
            assert!(
                v["code"].is_string() && v["message"].is_string(),
                "{name}: {v}"
            );
        }
    }
    for p in srv.state.portals.values() {
        assert_eq!(
            p.store.inbox_depth().unwrap(),
            0,
            "nothing stored for {}",
            p.cfg.id
        );
    }
    // The same valid webhook is accepted once, then recognised as a duplicate.
    let url = format!("{}/hooks/amocrm/shop/{HOOK_SECRET}", srv.url);
    let (s1, t1) = post(&url, FORM, ok_body.clone()).await;
    let (s2, t2) = post(&url, FORM, ok_body.clone()).await;
    assert_eq!((s1, s2), (200, 200));
    assert!(
        t1.contains("stored") && t2.contains("duplicate"),
        "{t1} / {t2}"
    );
    let (s3, _) = post(
        &format!("{}/hooks/bitrix24/b24", srv.url),
        FORM,
        "event=ONCRMDEALADD&data[FIELDS][ID]=1&auth[application_token]=app-token-1".to_owned(),
    )
    .await;
    assert_eq!(s3, 200);
    let shop = srv.state.portal("shop").unwrap();
    assert_eq!(shop.store.inbox_depth().unwrap(), 1);
    srv.cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_updates_the_cache_within_seconds() {
    let env = amo_env(amo_config(41, 80, 240)).await;
    // The server's portal uses the store directory of the env's authorised portal.
    let cfg = config_with_id(env.dir.path(), &env.emu.base_url, "test");
    sync(&env, true).await.unwrap();
    drop(env.store);
    let srv = start_server(&cfg, true).await;
    let emu = env.emu.emulator.clone();
    let (contact, pipeline, status) = emu.with_data(|d| {
        let l = d.leads.values().next().unwrap();
        (l.contacts[0].id, l.pipeline_id, l.status_id)
    });
    let lead = emu.add_lead(contact, 4_500, pipeline, status).unwrap();
    let body = amo_body(
        emu.with_data(|d| d.account.id),
        &emu.with_data(|d| d.account.subdomain.clone()),
        &format!(
            "leads[add][0][id]={lead}&leads[add][0][status_id]={status}&leads[add][0][pipeline_id]={pipeline}&leads[add][0][price]=4500"
        ),
    );
    let started = std::time::Instant::now();
    let (s, text) = post(
        &format!("{}/hooks/amocrm/test/{HOOK_SECRET}", srv.url),
        FORM,
        body,
    )
    .await;
    assert_eq!(s, 200, "{text}");
    let store = srv.state.portal("test").unwrap().store.clone();
    loop {
        if let Some(d) = store.get::<Deal>(lead).unwrap() {
            assert_eq!(d.amount.unwrap().amount, rust_decimal::Decimal::from(4_500));
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "lead {lead} not cached within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        store.inbox_depth().unwrap(),
        0,
        "processed events leave the inbox"
    );
    srv.cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_answer() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "http://127.0.0.1:9");
    let srv = start_server(&cfg, false).await;
    let h = reqwest::get(format!("{}/healthz", srv.url)).await.unwrap();
    assert_eq!(h.status(), 200);
    let r = reqwest::get(format!("{}/readyz", srv.url)).await.unwrap();
    assert_eq!(r.status(), 200);
    let url = format!("{}/hooks/amocrm/shop/{HOOK_SECRET}", srv.url);
    post(
        &url,
        FORM,
        amo_body(31_000_001, "rebuy-demo", "leads[update][0][id]=77"),
    )
    .await;
    // The series name every portal: no token, no metrics.
    let http = reqwest::Client::new();
    let metrics = format!("{}/metrics", srv.url);
    let anonymous = http.get(&metrics).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let anonymous = anonymous.text().await.unwrap();
    assert!(!anonymous.contains("shop"), "{anonymous}");
    let wrong = http
        .get(&metrics)
        .bearer_auth("metrics-token-9d1f")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 403);
    let m = http
        .get(&metrics)
        .bearer_auth(METRICS_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(m.status(), 200);
    let m = m.text().await.unwrap();
    assert!(m.contains("rebuy_webhooks_total"), "{m}");
    assert!(m.contains("rebuy_inbox_depth"), "{m}");
    srv.cancel.cancel();
}

pub(crate) fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

pub(crate) fn query_param(url: &str, key: &str) -> Option<String> {
    url::Url::parse(url)
        .ok()?
        .query_pairs()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth_flow_connects_a_portal_and_refuses_wrong_or_replayed_state() {
    let emu = rebuy_emulator::amocrm::AmoEmulator::spawn(amo_config(51, 20, 40))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &emu.base_url);
    let srv = start_server(&cfg, false).await;
    let http = no_redirects();

    // A signed link, as `rebuy auth --link` prints it.
    let link = srv.state.link_key.as_ref().unwrap().start_link(
        &srv.url,
        "shop",
        Duration::from_secs(3600),
    );
    let start = http.get(&link).send().await.unwrap();
    assert_eq!(start.status(), 302);
    let cookie = start.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("Path=/oauth/shop/") && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    let cookie = cookie.split(';').next().unwrap().to_owned();
    let consent = start.headers()["location"].to_str().unwrap().to_owned();
    assert!(consent.starts_with(&emu.base_url), "{consent}");
    // The emulator consents at once and redirects to the integration's redirect URI.
    let back = http.get(&consent).send().await.unwrap();
    assert_eq!(back.status(), 302);
    let redirect = back.headers()["location"].to_str().unwrap().to_owned();
    let code = query_param(&redirect, "code").unwrap();
    let state = query_param(&redirect, "state").unwrap();

    let wrong = http
        .get(format!(
            "{}/oauth/shop/callback?code={code}&state=forged",
            srv.url
        ))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 403);
    let ok = http
        .get(format!(
            "{}/oauth/shop/callback?code={code}&state={state}",
            srv.url
        ))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert!(ok.text().await.unwrap().contains("connected"));
    let store = srv.state.portal("shop").unwrap().store.clone();
    assert!(store.load_tokens().unwrap().is_some(), "tokens committed");
    let replay = http
        .get(format!(
            "{}/oauth/shop/callback?code={code}&state={state}",
            srv.url
        ))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 403, "a state works once");
    let unknown = http
        .get(format!("{}/oauth/nope/start", srv.url))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    srv.cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_hook_checks_its_signature_and_marks_the_portal() {
    use hmac::{KeyInit, Mac};
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "http://127.0.0.1:9");
    let srv = start_server(&cfg, false).await;
    let emu = AmoConfig::default();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(emu.client_secret.as_bytes()).unwrap();
    mac.update(format!("{}|{}", emu.client_id, 31_000_001).as_bytes());
    let sig = hex::encode(mac.finalize().into_bytes());
    let base = format!(
        "{}/hooks/amocrm/shop/disconnect?account_id=31000001&client_uuid={}",
        srv.url, emu.client_id
    );
    let bad = reqwest::get(format!("{base}&signature=00ff"))
        .await
        .unwrap();
    assert_eq!(bad.status(), 403);
    let store = srv.state.portal("shop").unwrap().store.clone();
    assert!(store.needs_reauth().unwrap().is_none());
    let good = reqwest::get(format!("{base}&signature={sig}"))
        .await
        .unwrap();
    assert_eq!(good.status(), 200);
    assert!(
        store
            .needs_reauth()
            .unwrap()
            .unwrap()
            .reason
            .contains("disconnected")
    );
    srv.cancel.cancel();
}

/// A `rebuy serve` child process; killed on drop.
pub(crate) struct ServeProcess(pub(crate) std::process::Child);

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn spawn_serve(config: &std::path::Path, log: &std::path::Path) -> ServeProcess {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_rebuy"))
        .args(["--config", config.to_str().unwrap(), "serve"])
        .env("EMULATOR_CLIENT_SECRET", AmoConfig::default().client_secret)
        .env("HOOK_SECRET", HOOK_SECRET)
        .env("METRICS_TOKEN", METRICS_TOKEN)
        .env("RUST_LOG", "debug")
        .env_remove("REBUY_FAILPOINTS")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    ServeProcess(child)
}

pub(crate) async fn wait_ready(url: &str) {
    for _ in 0..200 {
        if let Ok(r) = reqwest::get(format!("{url}/readyz")).await
            && r.status() == 200
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("server at {url} not ready");
}

async fn inbox_depth(url: &str) -> Option<u64> {
    let text = reqwest::Client::new()
        .get(format!("{url}/metrics"))
        .bearer_auth(METRICS_TOKEN)
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find(|l| l.starts_with("rebuy_inbox_depth"))
        .and_then(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .map(|v| v as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_webhook_load_loses_no_acknowledged_webhook_and_logs_no_secret() {
    let emu = rebuy_emulator::amocrm::AmoEmulator::spawn(amo_config(61, 60, 120))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let emu_cfg = AmoConfig::default();
    let config_path = dir.path().join("rebuy.toml");
    std::fs::write(
        &config_path,
        format!(
            "data_dir = {:?}\n[server]\nlisten = \"127.0.0.1:{port}\"\nmetrics_token_env = \"METRICS_TOKEN\"\n[[portal]]\nid = \"shop\"\nkind = \"amocrm\"\nbase_url = \"{}\"\nrequests_per_sec = {TEST_RPS}\nexceed_documented_limit = true\n\
             [portal.auth]\ntype = \"oauth\"\nclient_id = \"{}\"\nclient_secret_env = \"EMULATOR_CLIENT_SECRET\"\nredirect_uri = \"{}\"\n\
             [portal.webhooks]\nsecret_env = \"HOOK_SECRET\"\n",
            dir.path().join("data").display().to_string(),
            emu.base_url,
            emu_cfg.client_id,
            emu_cfg.redirect_uri
        ),
    )
    .unwrap();
    let cfg = config_path.to_str().unwrap().to_owned();
    let out = rebuy_async(
        vec![
            "--config".into(),
            cfg.clone(),
            "auth".into(),
            "--portal".into(),
            "shop".into(),
        ],
        vec![
            ("HOOK_SECRET".into(), HOOK_SECRET.into()),
            ("METRICS_TOKEN".into(), METRICS_TOKEN.into()),
        ],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = dir.path().join("serve.log");
    let url = format!("http://127.0.0.1:{port}");
    let mut server = spawn_serve(&config_path, &log);
    wait_ready(&url).await;

    // New leads, one webhook each, sent from 4 concurrent senders; the server is killed
    // (SIGKILL) part-way through.
    let (contact, pipeline, status) = emu.emulator.with_data(|d| {
        let l = d.leads.values().next().unwrap();
        (l.contacts[0].id, l.pipeline_id, l.status_id)
    });
    let leads: Vec<u64> = (0..1200)
        .map(|i| {
            emu.emulator
                .add_lead(contact, 1000 + i, pipeline, status)
                .unwrap()
        })
        .collect();
    let hook = format!("{url}/hooks/amocrm/shop/{HOOK_SECRET}");
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut senders = Vec::new();
    for chunk in leads.chunks(300) {
        let chunk = chunk.to_vec();
        let hook = hook.clone();
        let acked = acked.clone();
        senders.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            for id in chunk {
                let body = amo_body(
                    31_000_001,
                    "rebuy-demo",
                    &format!("leads[add][0][id]={id}&leads[add][0][status_id]={status}"),
                );
                if let Ok(r) = http
                    .post(&hook)
                    .header("content-type", FORM)
                    .body(body)
                    .send()
                    .await
                    && r.status() == 200
                {
                    acked.lock().unwrap().push(id);
                }
            }
        }));
    }
    // Kill once the load is well under way (whatever the machine's speed).
    let wait = std::time::Instant::now();
    while acked.lock().unwrap().len() < 60 && wait.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    server.0.kill().unwrap(); // SIGKILL: no shutdown, no flush
    server.0.wait().unwrap();
    for s in senders {
        s.await.unwrap();
    }
    let acked: Vec<u64> = acked.lock().unwrap().clone();
    assert!(
        !acked.is_empty(),
        "some webhooks were acknowledged before the kill"
    );
    assert!(
        acked.len() < leads.len(),
        "the kill happened under load ({} of {} acknowledged)",
        acked.len(),
        leads.len()
    );

    // Restart: every acknowledged webhook is processed.
    let server = spawn_serve(&config_path, &log);
    wait_ready(&url).await;
    let started = std::time::Instant::now();
    while inbox_depth(&url).await != Some(0) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "inbox not drained"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(server);
    let store = rebuy::store::Store::open(&dir.path().join("data"), &"shop".into()).unwrap();
    let missing: Vec<u64> = acked
        .iter()
        .copied()
        .filter(|id| store.get::<Deal>(*id).unwrap().is_none())
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged webhooks lost: {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );

    // No secret in any log line of either run.
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(logs.len() > 100, "the server logged (debug level)");
    let tokens = store.load_tokens().unwrap().unwrap();
    use secrecy::ExposeSecret;
    for secret in [
        HOOK_SECRET.to_owned(),
        METRICS_TOKEN.to_owned(),
        emu_cfg.client_secret.clone(),
        tokens.access_token.expose_secret().to_owned(),
        tokens.refresh_token.unwrap().expose_secret().to_owned(),
    ] {
        assert!(!logs.contains(&secret), "a secret reached the log");
    }
}

/// A portal config with repeat routing to the "Повторные продажи" pipeline.
fn routing_config(data_dir: &std::path::Path, base_url: &str, id: &str) -> Config {
    let mut cfg = config_with_id(data_dir, base_url, id);
    cfg.portals[0].mapping = serde_json::json!({"repeat_pipeline": "Повторные продажи"});
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amocrm_new_lead_of_a_past_customer_is_moved_and_tasked_within_5_s() {
    let env = amo_env(amo_config(81, 150, 450)).await;
    sync(&env, true).await.unwrap();
    let cfg = routing_config(env.dir.path(), &env.emu.base_url, "test");
    drop(env.store);
    let srv = start_server(&cfg, true).await;
    let emu = env.emu.emulator.clone();
    // The emulator itself delivers its webhooks to the server, as amoCRM would.
    emu.register_webhook(
        &format!("{}/hooks/amocrm/test/{HOOK_SECRET}", srv.url),
        &["add_lead", "update_lead", "status_lead"],
    );
    let (buyer, pipeline, status, repeat_pipeline) = emu.with_data(|d| {
        let won = d
            .leads
            .values()
            .find(|l| l.status_id == 142 && !l.contacts.is_empty())
            .unwrap();
        let main = d
            .pipelines
            .values()
            .find(|p| p.name != "Повторные продажи")
            .unwrap();
        let repeat = d
            .pipelines
            .values()
            .find(|p| p.name == "Повторные продажи")
            .unwrap();
        let first_open = main
            .statuses
            .iter()
            .find(|s| s.id != 142 && s.id != 143)
            .unwrap()
            .id;
        (won.contacts[0].id, main.id, first_open, repeat.id)
    });
    let started = std::time::Instant::now();
    let lead = emu.add_lead(buyer, 9_900, pipeline, status).unwrap();
    loop {
        let w = emu.writes();
        let moved = w
            .lead_moves
            .iter()
            .filter(|m| m.lead_id == lead && m.to_pipeline_id == repeat_pipeline)
            .count();
        let tasks = w
            .tasks_created
            .iter()
            .filter(|t| t.entity_id == Some(lead))
            .count();
        if moved == 1 && tasks == 1 {
            break;
        }
        assert!(
            moved <= 1 && tasks <= 1,
            "routed more than once: {moved} moves, {tasks} tasks"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "lead {lead} not routed within 5 s ({moved} moves, {tasks} tasks)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let latency = started.elapsed();
    // Our own writes echo back as webhooks: give them time, then check nothing doubled.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let w = emu.writes();
    assert_eq!(
        w.lead_moves.iter().filter(|m| m.lead_id == lead).count(),
        1,
        "no loop on our own writes"
    );
    assert_eq!(
        w.tasks_created
            .iter()
            .filter(|t| t.entity_id == Some(lead))
            .count(),
        1
    );
    let task = w
        .tasks_created
        .iter()
        .find(|t| t.entity_id == Some(lead))
        .unwrap();
    assert!(
        task.text.contains("#rebuy:"),
        "the task carries its idempotency marker: {}",
        task.text
    );
    eprintln!("amoCRM repeat lead routed in {latency:?}");
    srv.cancel.cancel();
}

/// A mapping with playbooks, the funnel-free write-back (touches, segment fields) and repeat
/// routing, as an integrator would start with.
fn playbooks_mapping(auto_apply: bool) -> serde_json::Value {
    serde_json::json!({
        "playbooks": ["water_delivery", "reactivation"],
        "repeat_pipeline": "Повторные продажи",
        "fields": {"entity": "contacts", "rfm_segment": "Сегмент"},
        "auto_apply": auto_apply,
    })
}

const DAY: jiff::SignedDuration = jiff::SignedDuration::from_hours(24);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_without_auto_apply_only_plans_and_writes_nothing() {
    let env = amo_env(amo_config(91, 150, 450)).await;
    sync(&env, true).await.unwrap();
    let mut cfg = routing_config(env.dir.path(), &env.emu.base_url, "test");
    cfg.portals[0].mapping = playbooks_mapping(false);
    cfg.server.daily_hour = 0;
    cfg.server.outbox_interval_secs = 1;
    drop(env.store);
    // The whole server runs: the scheduler drains the outbox every second.
    let srv = start_server(&cfg, true).await;
    let p = srv.state.portal("test").unwrap().clone();
    let conn = p.handle().unwrap().connector;
    let now = jiff::Timestamp::now();
    // Three daily runs on three days: each plans, none writes.
    for day in 0..3 {
        let run = runtime::daily_planning_at(&p, conn.as_ref(), &cfg.server, now + DAY * day)
            .await
            .unwrap();
        let runtime::DailyRun::Planned { actions } = run else {
            panic!("day {day}: without auto_apply the daily run only plans, got {run:?}");
        };
        assert!(actions > 0, "the playbooks plan something on this base");
        let again = runtime::daily_planning_at(&p, conn.as_ref(), &cfg.server, now + DAY * day)
            .await
            .unwrap();
        assert_eq!(again, runtime::DailyRun::NotDue, "once per local day");
    }
    let waiting = p
        .waiting_plan()
        .expect("the daily run's plan waits for Apply");
    assert!(waiting.by_daily_run);
    assert!(!waiting.plan.as_ref().unwrap().actions.is_empty());
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let w = env.emu.emulator.writes();
    assert_eq!(
        (
            w.requests_applied,
            w.tasks_created.len(),
            w.field_updates.len(),
            w.lead_moves.len()
        ),
        (0, 0, 0, 0),
        "nothing is written without auto_apply or Apply"
    );
    assert_eq!(
        p.store.outbox_counts().unwrap().pending,
        0,
        "nothing queued"
    );
    srv.cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_apply_writes_from_the_next_days_run_without_catching_up() {
    let env = amo_env(amo_config(92, 150, 450)).await;
    sync(&env, true).await.unwrap();
    let mut cfg = routing_config(env.dir.path(), &env.emu.base_url, "test");
    cfg.portals[0].mapping = playbooks_mapping(true);
    // A longer horizon, so this small base has touches to write.
    cfg.portals[0].mapping["horizon_days"] = serde_json::json!(60);
    cfg.server.daily_hour = 0;
    drop(env.store);
    let state = AppState::new(&cfg, true).unwrap();
    let p = state.portal("test").unwrap().clone();
    let conn = p.handle().unwrap().connector;
    let now = jiff::Timestamp::now();
    // The day auto-apply is first seen on: its run still only plans.
    let first = runtime::daily_planning_at(&p, conn.as_ref(), &cfg.server, now)
        .await
        .unwrap();
    assert!(
        matches!(first, runtime::DailyRun::Planned { .. }),
        "auto-apply starts with the next day's run: {first:?}"
    );
    assert_eq!(p.store.outbox_counts().unwrap().pending, 0);
    assert_eq!(env.emu.emulator.writes().requests_applied, 0);
    // The next day's run writes, looking back no further than that day.
    let day1 = now + DAY;
    let run = runtime::daily_planning_at(&p, conn.as_ref(), &cfg.server, day1)
        .await
        .unwrap();
    let runtime::DailyRun::Applied {
        added,
        lookback_days,
    } = run
    else {
        panic!("the next day's run applies: {run:?}");
    };
    assert_eq!(
        lookback_days, 0,
        "no catch-up of days before auto-apply was on"
    );
    assert!(added > 0, "the playbooks plan something on this base");
    let mut no_lookback = cfg.portals[0].clone();
    no_lookback.mapping["lookback_days"] = serde_json::json!(0);
    let expected = rebuy::writeback::plan_portal(&no_lookback, &p.store, Some(conn.as_ref()), day1)
        .await
        .unwrap();
    assert_eq!(
        added,
        expected.actions.len() as u64,
        "every planned action is in the outbox"
    );
    rebuy::writeback::drain_all(
        conn.as_ref(),
        &p.store,
        &rebuy::outbox::DrainOptions::default(),
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    let w = env.emu.emulator.writes();
    assert!(!w.tasks_created.is_empty(), "auto-apply writes the touches");
    let day1_start = day1
        .to_zoned(cfg.portals[0].time_zone.clone())
        .start_of_day()
        .unwrap()
        .timestamp()
        .as_second();
    for t in &w.tasks_created {
        assert!(
            t.complete_till >= day1_start,
            "no task for a day before the first writing day: {t:?}"
        );
    }
    // The day after, the lookback may reach back to the first writing day.
    let run = runtime::daily_planning_at(&p, conn.as_ref(), &cfg.server, day1 + DAY)
        .await
        .unwrap();
    assert!(
        matches!(
            run,
            runtime::DailyRun::Applied {
                lookback_days: 1,
                ..
            }
        ),
        "{run:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deal_won_by_webhook_gets_its_after_purchase_touches_within_seconds() {
    let env = amo_env(amo_config(93, 150, 450)).await;
    sync(&env, true).await.unwrap();
    let mut cfg = routing_config(env.dir.path(), &env.emu.base_url, "test");
    cfg.portals[0].mapping = serde_json::json!({"playbooks": ["car_dealer"], "auto_apply": true});
    cfg.server.outbox_interval_secs = 1;
    cfg.server.daily_hour = 0;
    drop(env.store);
    let srv = start_server(&cfg, true).await;
    // Auto-apply was turned on yesterday: yesterday's run planned only, today's runs write.
    {
        let p = srv.state.portal("test").unwrap();
        let conn = p.handle().unwrap().connector;
        let yesterday = jiff::Timestamp::now() - DAY;
        let run = runtime::daily_planning_at(p, conn.as_ref(), &cfg.server, yesterday)
            .await
            .unwrap();
        assert!(matches!(run, runtime::DailyRun::Planned { .. }), "{run:?}");
    }
    let emu = env.emu.emulator.clone();
    emu.register_webhook(
        &format!("{}/hooks/amocrm/test/{HOOK_SECRET}", srv.url),
        &["add_lead", "update_lead", "status_lead"],
    );
    // An open lead of some contact is won now.
    let (lead, pipeline) = emu.with_data(|d| {
        let l = d
            .leads
            .values()
            .find(|l| l.status_id != 142 && l.status_id != 143 && !l.contacts.is_empty())
            .unwrap();
        (l.id, l.pipeline_id)
    });
    assert!(emu.update_lead(lead, Some(250_000), Some((pipeline, 142))));
    let store = srv.state.portal("test").unwrap().store.clone();
    let started = std::time::Instant::now();
    loop {
        let touches = store
            .outbox_all()
            .unwrap()
            .into_iter()
            .filter(|e| e.action.rule == "car_dealer.satisfaction" && matches!(&e.action.op, rebuy_core::WriteOp::CreateTask { entity, .. } if *entity == rebuy_core::EntityRef::Deal(rebuy_core::DealId(lead))))
            .count();
        if touches == 1 {
            break;
        }
        if started.elapsed() > Duration::from_secs(15) {
            let all = store.outbox_all().unwrap();
            let sample: Vec<String> = all
                .iter()
                .take(5)
                .map(|e| format!("{} {} {:?}", e.action.key, e.action.rule, e.action.op))
                .collect();
            panic!(
                "no after-purchase touch for lead {lead} within 15 s; outbox has {}: {sample:#?}",
                all.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    srv.cancel.cancel();
}

/// One webhook whose record the CRM always refuses does not hold the portal's queue: the
/// events behind it are processed at once, it is retried after a delay, then moved to the
/// dead-letter table (counted in `/metrics`), and a replay processes it once the CRM lets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_webhook_goes_to_the_dead_letters_without_blocking_the_rest() {
    let env = amo_env(amo_config(43, 60, 200)).await;
    let mut cfg = config_with_id(env.dir.path(), &env.emu.base_url, "test");
    cfg.server.inbox_max_attempts = 2;
    sync(&env, true).await.unwrap();
    drop(env.store);
    let srv = start_server(&cfg, true).await;
    let emu = env.emu.emulator.clone();
    let (contact, pipeline, status) = emu.with_data(|d| {
        let l = d.leads.values().next().unwrap();
        (l.contacts[0].id, l.pipeline_id, l.status_id)
    });
    let refused = emu.add_lead(contact, 1_000, pipeline, status).unwrap();
    let fine = emu.add_lead(contact, 2_000, pipeline, status).unwrap();
    emu.set_denied(&[&format!("/api/v4/leads/{refused}")]);
    let (account, subdomain) = emu.with_data(|d| (d.account.id, d.account.subdomain.clone()));
    let hook = format!("{}/hooks/amocrm/test/{HOOK_SECRET}", srv.url);
    for lead in [refused, fine] {
        let body = amo_body(
            account,
            &subdomain,
            &format!(
                "leads[add][0][id]={lead}&leads[add][0][status_id]={status}&leads[add][0][pipeline_id]={pipeline}"
            ),
        );
        let (s, text) = post(&hook, FORM, body).await;
        assert_eq!(s, 200, "{text}");
    }
    let store = srv.state.portal("test").unwrap().store.clone();
    let started = std::time::Instant::now();
    while store.get::<Deal>(fine).unwrap().is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the event behind the failing one waited"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    while store.inbox_dead_count().unwrap() == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the failing event was not given up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dead = store.inbox_dead().unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attempts, 2);
    assert!(dead[0].last_error.contains("403"), "{}", dead[0].last_error);
    assert_eq!(store.inbox_depth().unwrap(), 0);
    assert!(store.get::<Deal>(refused).unwrap().is_none());
    let m = reqwest::Client::new()
        .get(format!("{}/metrics", srv.url))
        .bearer_auth(METRICS_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.lines()
            .any(|l| l.starts_with("rebuy_inbox_dead_letters{portal=\"test\"} 1")),
        "{m}"
    );

    // The CRM lets rebuy read it again; a replay processes it.
    emu.set_denied(&[]);
    assert_eq!(store.inbox_replay(&[]).unwrap(), 1);
    let replayed = std::time::Instant::now();
    while store.get::<Deal>(refused).unwrap().is_none() {
        assert!(
            replayed.elapsed() < Duration::from_secs(8),
            "the replayed event was not processed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(store.inbox_dead_count().unwrap(), 0);
    srv.cancel.cancel();
}

/// A delete event removes a record only when the CRM confirms it is gone: a forged or stale
/// delete for a deal and a contact the CRM still has leaves both cached, a real one removes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_events_are_checked_with_the_crm() {
    let env = amo_env(amo_config(44, 60, 200)).await;
    let cfg = config_with_id(env.dir.path(), &env.emu.base_url, "test");
    sync(&env, true).await.unwrap();
    drop(env.store);
    let srv = start_server(&cfg, true).await;
    let emu = env.emu.emulator.clone();
    let (kept_lead, kept_contact, gone_lead) = emu.with_data(|d| {
        let mut leads = d.leads.values();
        let a = leads.next().unwrap();
        let b = leads.next().unwrap();
        (a.id, a.contacts[0].id, b.id)
    });
    assert!(emu.delete_lead(gone_lead));
    let (account, subdomain) = emu.with_data(|d| (d.account.id, d.account.subdomain.clone()));
    let store = srv.state.portal("test").unwrap().store.clone();
    assert!(store.get::<Deal>(gone_lead).unwrap().is_some());
    let body = amo_body(
        account,
        &subdomain,
        &format!(
            "leads[delete][0][id]={kept_lead}&contacts[delete][0][id]={kept_contact}&leads[delete][1][id]={gone_lead}"
        ),
    );
    let (s, text) = post(
        &format!("{}/hooks/amocrm/test/{HOOK_SECRET}", srv.url),
        FORM,
        body,
    )
    .await;
    assert_eq!(s, 200, "{text}");
    let started = std::time::Instant::now();
    while store.get::<Deal>(gone_lead).unwrap().is_some() || store.inbox_depth().unwrap() > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the delete event was not processed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        store.get::<Deal>(kept_lead).unwrap().is_some(),
        "a deal the CRM has stays"
    );
    assert!(
        store
            .get::<rebuy_core::Contact>(kept_contact)
            .unwrap()
            .is_some(),
        "a contact the CRM has stays"
    );
    srv.cancel.cancel();
}

/// The disconnect hook names an account and its signature is the same every time: a hook
/// signed for another account is refused, and a recorded hook replayed while amoCRM still
/// accepts the integration's token changes nothing; after the account really disconnects,
/// the same hook marks the portal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_or_foreign_disconnect_hook_changes_nothing() {
    use hmac::{KeyInit, Mac};
    let env = amo_env(amo_config(45, 20, 40)).await;
    let cfg = config_with_id(env.dir.path(), &env.emu.base_url, "test");
    sync(&env, true).await.unwrap();
    drop(env.store);
    let srv = start_server(&cfg, false).await;
    let emu = AmoConfig::default();
    let account = env.emu.emulator.with_data(|d| d.account.id);
    let hook = |acc: u64| {
        let mut mac =
            hmac::Hmac::<sha2::Sha256>::new_from_slice(emu.client_secret.as_bytes()).unwrap();
        mac.update(format!("{}|{acc}", emu.client_id).as_bytes());
        format!(
            "{}/hooks/amocrm/test/disconnect?account_id={acc}&client_uuid={}&signature={}",
            srv.url,
            emu.client_id,
            hex::encode(mac.finalize().into_bytes())
        )
    };
    let store = srv.state.portal("test").unwrap().store.clone();
    let foreign = reqwest::get(hook(account + 1)).await.unwrap();
    assert_eq!(foreign.status(), 403);
    let replayed = reqwest::get(hook(account)).await.unwrap();
    assert_eq!(replayed.status(), 200);
    assert!(replayed.text().await.unwrap().contains("still connected"));
    assert!(store.needs_reauth().unwrap().is_none());
    env.emu.emulator.disconnect_integration();
    let real = reqwest::get(hook(account)).await.unwrap();
    assert_eq!(real.status(), 200);
    assert!(real.text().await.unwrap().contains("\"disconnected\""));
    assert!(store.needs_reauth().unwrap().is_some());
    srv.cancel.cancel();
}

/// An amoCRM webhook naming its account twice is refused: the account check and the parser
/// must not read different ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_amocrm_webhook_with_a_repeated_account_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "http://127.0.0.1:9");
    let srv = start_server(&cfg, false).await;
    let (status, text) = post(
        &format!("{}/hooks/amocrm/shop/{HOOK_SECRET}", srv.url),
        FORM,
        "leads[add][0][id]=5&account[id]=31000001&account[subdomain]=rebuy-demo&account[id]=999"
            .to_owned(),
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("account[id] is repeated"), "{text}");
    srv.cancel.cancel();
}

/// The server's own listener hands the peer address to the dashboard's login: 20 attempts a
/// minute from one address over all users, the 21st is refused with 429 even for a user whose
/// own bucket is full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_login_limit_applies_per_peer_address_on_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), "http://127.0.0.1:9");
    cfg.server.ui.cookie_secure = false;
    cfg.server.ui.users = ["anna", "boris", "vera"]
        .iter()
        .map(|n| rebuy::config::UiUser {
            name: (*n).to_owned(),
            password: format!("{n}-pw").into(),
        })
        .collect();
    let srv = start_server(&cfg, false).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let page = http
        .get(format!("{}/ui/login", srv.url))
        .send()
        .await
        .unwrap();
    let cookie = page
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned())
        .find(|v| v.starts_with("rebuy_login="))
        .unwrap();
    let html = page.text().await.unwrap();
    let at = html.find("name=\"csrf\" value=\"").unwrap() + "name=\"csrf\" value=\"".len();
    let token = html[at..at + html[at..].find('"').unwrap()].to_owned();
    let attempt = |user: &'static str| {
        http.post(format!("{}/ui/login", srv.url))
            .header("cookie", cookie.clone())
            .form(&[
                ("user", user),
                ("password", "wrong"),
                ("csrf", token.as_str()),
            ])
            .send()
    };
    for user in ["anna", "boris"] {
        for _ in 0..10 {
            assert_eq!(attempt(user).await.unwrap().status(), 401);
        }
    }
    assert_eq!(
        attempt("vera").await.unwrap().status(),
        429,
        "the address has used its 20"
    );
    srv.cancel.cancel();
}
