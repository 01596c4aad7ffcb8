//! The guarded edges of `rebuy serve`: a Bitrix24 install cannot hand a portal to someone
//! else (forged installs get 403, store nothing and never reach the foreign host), a genuine
//! install and a re-install after an uninstall work, and `/metrics` is not public.
use crate::bitrix::config;
use rebuy::config::Config;
use rebuy::server::{AppState, runtime};
use rebuy::store::Store;
use rebuy_emulator::bitrix24::{B24Config, B24Emulator, RunningB24};
use secrecy::ExposeSecret;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const FORM: &str = "application/x-www-form-urlencoded";
/// The meta key the server keeps the installed app's application token under.
const KEY_APP_TOKEN: &str = "bitrix24_application_token";

/// A host that answers everything as a willing Bitrix24 portal would, and counts the requests.
struct Attacker {
    url: String,
    host: String,
    hits: Arc<AtomicUsize>,
}

async fn attacker(client_id: &str) -> Attacker {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let answer = serde_json::json!({
        "result": {"ID": 1, "CODE": client_id, "INSTALLED": true, "STATUS": "L"},
        "access_token": "attacker-access-2",
        "refresh_token": "attacker-refresh-2",
        "expires_in": 3600,
        "client_endpoint": format!("http://{host}/rest/"),
    });
    let app = axum::Router::new().fallback(move || {
        let counter = counter.clone();
        let answer = answer.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            axum::Json(answer)
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    Attacker {
        url: format!("http://{host}"),
        host,
        hits,
    }
}

struct Server {
    hook: String,
    state: AppState,
    cancel: CancellationToken,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn start(dir: &std::path::Path, emu: &RunningB24) -> (Server, Config) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let cfg = config(dir, emu, true, Some(&url));
    let state = AppState::new(&cfg, true).unwrap();
    let cancel = CancellationToken::new();
    runtime::spawn_all(&state, &cfg.server, cancel.clone());
    let (st, c) = (state.clone(), cancel.clone());
    tokio::spawn(async move {
        rebuy::server::serve(
            listener,
            st.clone(),
            Some(rebuy::ui::router_from_config(st)),
            c.cancelled_owned(),
        )
        .await
    });
    (
        Server {
            hook: format!("{url}/hooks/bitrix24/b24"),
            state,
            cancel,
        },
        cfg,
    )
}

async fn post(url: &str, body: String) -> (u16, String) {
    let r = reqwest::Client::new()
        .post(url)
        .header("content-type", FORM)
        .body(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// An `ONAPPINSTALL` delivery as Bitrix24 sends it.
struct Install<'a> {
    access: &'a str,
    refresh: &'a str,
    domain: &'a str,
    member_id: &'a str,
    client_endpoint: &'a str,
    application_token: &'a str,
}

impl Install<'_> {
    fn body(&self) -> String {
        url::form_urlencoded::Serializer::new(String::new())
            .append_pair("event", "ONAPPINSTALL")
            .append_pair("data[VERSION]", "1")
            .append_pair("data[LANGUAGE_ID]", "ru")
            .append_pair("ts", "1727018926")
            .append_pair("auth[access_token]", self.access)
            .append_pair("auth[expires_in]", "3600")
            .append_pair("auth[scope]", "crm,user")
            .append_pair("auth[domain]", self.domain)
            .append_pair("auth[server_endpoint]", "https://oauth.bitrix.info/rest/")
            .append_pair("auth[status]", "L")
            .append_pair("auth[client_endpoint]", self.client_endpoint)
            .append_pair("auth[member_id]", self.member_id)
            .append_pair("auth[user_id]", "1")
            .append_pair("auth[refresh_token]", self.refresh)
            .append_pair("auth[application_token]", self.application_token)
            .finish()
    }
}

fn emulator_config(seed: u64) -> B24Config {
    let mut c = B24Config::default();
    c.seed.seed = seed;
    c.seed.contacts = 30;
    c.seed.deals = 60;
    c
}

/// Fresh tokens of the app, as the portal issues them at install.
async fn genuine_tokens(cfg: &Config, emu: &RunningB24) -> (String, String) {
    let settings = rebuy::portal::b24_settings(&cfg.portals[0]).unwrap();
    let code = emu.emulator.issue_authorization_code();
    let t = rebuy_bitrix24::auth::exchange_code(&settings, &code)
        .await
        .unwrap();
    (
        t.access_token.expose_secret().to_owned(),
        t.refresh_token.unwrap().expose_secret().to_owned(),
    )
}

fn bound_handlers(emu: &RunningB24) -> usize {
    emu.emulator
        .writes()
        .iter()
        .filter(|w| w.method == "event.bind")
        .count()
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !done() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{what}: not within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn stored_access(store: &Store) -> Option<String> {
    store
        .load_tokens()
        .unwrap()
        .map(|t| t.access_token.expose_secret().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_bitrix24_installs_get_403_store_nothing_and_never_reach_the_foreign_host() {
    let emu = B24Emulator::spawn(emulator_config(81)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (srv, cfg) = start(dir.path(), &emu).await;
    let evil = attacker(&emu.emulator.config().client_id).await;
    let store = srv.state.portal("b24").unwrap().store.clone();
    let portal_host = emu.base_url.trim_start_matches("http://").to_owned();
    let member_id = emu.emulator.config().member_id.clone();
    let evil_endpoint = format!("{}/rest/", evil.url);

    // The portal awaits its install. The attacker knows its address and member_id (neither is
    // secret) and brings its own tokens and endpoint.
    let forged = Install {
        access: "attacker-access",
        refresh: "attacker-refresh",
        domain: &portal_host,
        member_id: &member_id,
        client_endpoint: &evil_endpoint,
        application_token: "attacker-app-token",
    };
    let (status, text) = post(&srv.hook, forged.body()).await;
    assert_eq!(status, 403, "{text}");
    // ... or names its own host as the domain.
    let (status, _) = post(
        &srv.hook,
        Install {
            domain: &evil.host,
            ..forged
        }
        .body(),
    )
    .await;
    assert_eq!(status, 403);
    assert!(store.load_tokens().unwrap().is_none(), "tokens stored");
    assert!(store.meta::<String>(KEY_APP_TOKEN).unwrap().is_none());
    assert_eq!(
        store.inbox_depth().unwrap(),
        0,
        "a forged install was queued"
    );

    // The real install is verified with the portal and works.
    let (access, refresh) = genuine_tokens(&cfg, &emu).await;
    let app_token = emu.emulator.config().application_token.clone();
    let emu_endpoint = format!("{}/rest/", emu.base_url);
    let genuine = Install {
        access: &access,
        refresh: &refresh,
        domain: &portal_host,
        member_id: &member_id,
        client_endpoint: &emu_endpoint,
        application_token: &app_token,
    };
    let (status, text) = post(&srv.hook, genuine.body()).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(stored_access(&store).as_deref(), Some(access.as_str()));
    wait_until("handlers bound", || bound_handlers(&emu) >= 7).await;

    // A connected portal never takes tokens from an install: a forged one is refused ...
    let (status, _) = post(&srv.hook, forged.body()).await;
    assert_eq!(status, 403);
    // ... and even one presenting the app's real application token (an app update) leaves the
    // tokens as they are.
    let (status, text) = post(
        &srv.hook,
        Install {
            application_token: &app_token,
            ..forged
        }
        .body(),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    wait_until("the update processed", || store.inbox_depth().unwrap() == 0).await;
    assert_eq!(stored_access(&store).as_deref(), Some(access.as_str()));
    let t = store.load_tokens().unwrap().unwrap();
    assert_eq!(
        t.extra.get("client_endpoint").map(String::as_str),
        Some(emu_endpoint.as_str())
    );

    // The portal's calls still go to the portal, and nothing ever went to the foreign host.
    let conn = srv.state.portal("b24").unwrap().handle().unwrap().connector;
    assert!(!conn.users().await.unwrap().is_empty());
    assert_eq!(
        evil.hits.load(Ordering::SeqCst),
        0,
        "the foreign host was called"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bitrix24_reinstall_after_uninstall_is_verified_and_works() {
    let emu = B24Emulator::spawn(emulator_config(82)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (srv, cfg) = start(dir.path(), &emu).await;
    let evil = attacker(&emu.emulator.config().client_id).await;
    let store = srv.state.portal("b24").unwrap().store.clone();
    let portal_host = emu.base_url.trim_start_matches("http://").to_owned();
    let member_id = emu.emulator.config().member_id.clone();
    let emu_endpoint = format!("{}/rest/", emu.base_url);
    let app_token = emu.emulator.config().application_token.clone();

    let (access, refresh) = genuine_tokens(&cfg, &emu).await;
    let first = Install {
        access: &access,
        refresh: &refresh,
        domain: &portal_host,
        member_id: &member_id,
        client_endpoint: &emu_endpoint,
        application_token: &app_token,
    };
    let (status, text) = post(&srv.hook, first.body()).await;
    assert_eq!(status, 200, "{text}");
    wait_until("handlers bound", || bound_handlers(&emu) >= 7).await;

    // The administrator removes the app: its tokens die, the portal awaits a new install.
    emu.emulator.uninstall_app();
    let uninstall = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("event", "ONAPPUNINSTALL")
        .append_pair("data[CLEAN]", "0")
        .append_pair("auth[domain]", &portal_host)
        .append_pair("auth[member_id]", &member_id)
        .append_pair("auth[application_token]", &app_token)
        .finish();
    let (status, text) = post(&srv.hook, uninstall).await;
    assert_eq!(status, 200, "{text}");
    wait_until("marked for re-installation", || {
        store.needs_reauth().unwrap().is_some()
    })
    .await;

    // While it waits: the old install replayed (its tokens are dead now) and a forged one are
    // refused; a foreign member_id too.
    let (status, _) = post(&srv.hook, first.body()).await;
    assert_eq!(status, 403);
    let evil_endpoint = format!("{}/rest/", evil.url);
    let forged = Install {
        access: "attacker-access",
        refresh: "attacker-refresh",
        domain: &portal_host,
        member_id: &member_id,
        client_endpoint: &evil_endpoint,
        application_token: "attacker-app-token",
    };
    let (status, _) = post(&srv.hook, forged.body()).await;
    assert_eq!(status, 403);
    assert_eq!(stored_access(&store).as_deref(), Some(access.as_str()));
    assert!(store.needs_reauth().unwrap().is_some());

    // The real re-install (new tokens, a new application token) is verified and stored.
    emu.emulator.install_app();
    let (access2, refresh2) = genuine_tokens(&cfg, &emu).await;
    let (status, _) = post(
        &srv.hook,
        Install {
            access: &access2,
            refresh: &refresh2,
            member_id: "another-portal-member-id",
            ..first
        }
        .body(),
    )
    .await;
    assert_eq!(status, 403, "a member_id other than the portal's");
    let new_app_token = "reinstalled-app-token-7f3a";
    let (status, text) = post(
        &srv.hook,
        Install {
            access: &access2,
            refresh: &refresh2,
            application_token: new_app_token,
            ..first
        }
        .body(),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(stored_access(&store).as_deref(), Some(access2.as_str()));
    assert!(store.needs_reauth().unwrap().is_none());
    wait_until("handlers bound again", || bound_handlers(&emu) >= 14).await;

    // Events now carry the new application token; the old one is refused.
    let deal = emu.emulator.with_data(|d| *d.deals.keys().next().unwrap());
    assert!(
        emu.emulator
            .update_deal(deal, |d| d.title = "Renamed".into())
    );
    let ev = emu
        .emulator
        .fired_events()
        .into_iter()
        .rev()
        .find(|e| e.event == "ONCRMDEALUPDATE")
        .unwrap();
    let body = emu.emulator.event_body(&ev, &emu.base_url);
    let (status, _) = post(&srv.hook, body.clone()).await;
    assert_eq!(status, 403, "the uninstalled app's application token");
    let (status, text) = post(&srv.hook, body.replace(&app_token, new_app_token)).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        evil.hits.load(Ordering::SeqCst),
        0,
        "the foreign host was called"
    );
}

/// `rebuy serve` itself: without `metrics_token_env` the main listener has no `/metrics`;
/// `metrics_listen` serves it without a token on its own address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_openly_only_on_metrics_listen() {
    let dir = tempfile::tempdir().unwrap();
    let free_port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (port, metrics_port) = (free_port(), free_port());
    let path = crate::support::write_config(dir.path(), &[("shop", "http://127.0.0.1:9", 7)]);
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(&format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\n"
    ));
    std::fs::write(&path, text).unwrap();
    struct Child(std::process::Child);
    impl Drop for Child {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _child = Child(
        std::process::Command::new(env!("CARGO_BIN_EXE_rebuy"))
            .args(["--config", path.to_str().unwrap(), "serve"])
            .env(
                "EMULATOR_CLIENT_SECRET",
                rebuy_emulator::amocrm::AmoConfig::default().client_secret,
            )
            .env_remove("REBUY_FAILPOINTS")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let public = format!("http://127.0.0.1:{port}");
    let internal = format!("http://127.0.0.1:{metrics_port}/metrics");
    let mut ready = false;
    for _ in 0..200 {
        if let (Ok(a), Ok(b)) = (
            reqwest::get(format!("{public}/readyz")).await,
            reqwest::get(&internal).await,
        ) && a.status() == 200
            && b.status() == 200
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "server not ready");
    let r = reqwest::get(format!("{public}/metrics")).await.unwrap();
    assert_eq!(r.status(), 404);
    assert!(!r.text().await.unwrap().contains("shop"));
    let m = reqwest::get(&internal).await.unwrap();
    assert_eq!(m.status(), 200);
    let m = m.text().await.unwrap();
    assert!(m.contains("rebuy_inbox_depth{portal=\"shop\"}"), "{m}");
    // Nothing else is served there.
    let other = reqwest::get(format!("http://127.0.0.1:{metrics_port}/readyz"))
        .await
        .unwrap();
    assert_eq!(other.status(), 404);
}
