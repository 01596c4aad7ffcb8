//! The edges of `rebuy serve` under abuse: idle and slow sockets (slowloris) neither lock
//! webhooks out nor hold shutdown up.
use crate::serve::{HOOK_SECRET, amo_body, config_with_id};
use rebuy::config::Config;
use rebuy::server::AppState;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// A server on a free port whose `serve` future the test can wait for.
struct Running {
    url: String,
    addr: std::net::SocketAddr,
    state: AppState,
    cancel: CancellationToken,
    done: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn run(cfg: &Config) -> Running {
    let state = AppState::new(cfg, true).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cancel = CancellationToken::new();
    let (st, c) = (state.clone(), cancel.clone());
    let done = tokio::spawn(async move {
        rebuy::server::serve(
            listener,
            st.clone(),
            Some(rebuy::ui::router_from_config(st)),
            c.cancelled_owned(),
        )
        .await
    });
    Running {
        url: format!("http://{addr}"),
        addr,
        state,
        cancel,
        done,
    }
}

/// Opens `n` sockets that send nothing.
async fn idle_sockets(addr: std::net::SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(TcpStream::connect(addr).await.unwrap());
    }
    v
}

/// Whether the server closed `s` within `within` (EOF or reset on read).
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 256];
    matches!(
        tokio::time::timeout(within, s.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

fn p99(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[(v.len() * 99).div_ceil(100) - 1]
}

/// `n` distinct amoCRM webhooks, acknowledged one after another; their latencies.
async fn webhook_acks(url: &str, from: u64, n: u64) -> Vec<Duration> {
    let http = reqwest::Client::new();
    let hook = format!("{url}/hooks/amocrm/shop/{HOOK_SECRET}");
    let mut lat = Vec::new();
    for i in from..from + n {
        let body = amo_body(
            31_000_001,
            "rebuy-demo",
            &format!("leads[update][0][id]={i}&leads[update][0][status_id]=1"),
        );
        let t = Instant::now();
        let r = http
            .post(&hook)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        lat.push(t.elapsed());
    }
    lat
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_sockets_neither_lock_out_webhooks_nor_hold_up_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_with_id(dir.path(), "http://127.0.0.1:9", "shop");
    // A cap below the sockets opened (the default is 1,024; a lower one keeps the test light
    // and makes the cap itself, not the descriptor limit, do the work).
    cfg.server.max_connections = 256;
    cfg.server.header_timeout_secs = 2;
    cfg.server.body_timeout_secs = 1;
    let srv = run(&cfg).await;

    let baseline = p99(webhook_acks(&srv.url, 1, 100).await);

    // 1,100 sockets that never send a byte, from one client.
    let started = Instant::now();
    let mut idle = idle_sockets(srv.addr, 1_100).await;
    eprintln!("1,100 idle sockets opened in {:?}", started.elapsed());
    // Webhooks from another client are still answered at once.
    let lat = webhook_acks(&srv.url, 1_000, 200).await;
    let under = p99(lat);
    eprintln!("webhook ack p99: {baseline:?} alone, {under:?} with 1,100 idle sockets open");
    assert!(
        under <= Duration::from_millis(50),
        "webhook ack p99 {under:?} with idle sockets open"
    );
    // The oldest idle sockets were closed to make room (the cap), the newest ones once the
    // header timeout ran out.
    assert!(
        closed_within(&mut idle[0], Duration::from_millis(500)).await,
        "the oldest idle socket is evicted"
    );
    let newest = idle.last_mut().unwrap();
    assert!(
        !closed_within(newest, Duration::from_millis(200)).await,
        "a recent idle socket is not closed before its header timeout"
    );
    assert!(
        closed_within(newest, Duration::from_secs(3)).await,
        "an idle socket is closed after the header timeout"
    );
    drop(idle);

    // A slow header (one byte at a time) is cut off by the header timeout, a stalled body by
    // the body timeout.
    let (mut slow_r, mut slow_w) = TcpStream::connect(srv.addr).await.unwrap().into_split();
    let trickle = tokio::spawn(async move {
        for b in b"POST /hooks/amocrm/shop/x HTTP/1.1\r\nHost: a\r\n"
            .iter()
            .cycle()
        {
            if slow_w.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let t = Instant::now();
    let mut rest = Vec::new();
    let cut = tokio::time::timeout(Duration::from_secs(4), slow_r.read_to_end(&mut rest)).await;
    trickle.abort();
    assert!(cut.is_ok(), "a slow header is cut off");
    assert!(
        t.elapsed() >= Duration::from_millis(1_500),
        "not before its header timeout: {:?}",
        t.elapsed()
    );
    let mut stalled = TcpStream::connect(srv.addr).await.unwrap();
    stalled
        .write_all(
            format!(
                "POST /hooks/amocrm/shop/{HOOK_SECRET} HTTP/1.1\r\nHost: a\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\nleads"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let t = Instant::now();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(4), stalled.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 4"),
        "a stalled body gets a 4xx: {answer:?}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "answered after {:?}",
        t.elapsed()
    );
    assert_eq!(
        srv.state
            .portal("shop")
            .unwrap()
            .store
            .inbox_depth()
            .unwrap(),
        300,
        "the stalled body stored nothing"
    );

    // Shutdown with 1,100 idle sockets and a request half sent ends within 5 s.
    let _idle = idle_sockets(srv.addr, 1_100).await;
    let mut half = TcpStream::connect(srv.addr).await.unwrap();
    half.write_all(b"GET /healthz HTTP/1.1\r\nHo")
        .await
        .unwrap();
    let t = Instant::now();
    srv.cancel.cancel();
    tokio::time::timeout(Duration::from_secs(5), srv.done)
        .await
        .expect("serve ends within 5 s of shutdown")
        .unwrap()
        .unwrap();
    eprintln!("shutdown with 1,100 idle sockets took {:?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_serve_within_5_s_with_1100_idle_sockets_open() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let emu = rebuy_emulator::amocrm::AmoConfig::default();
    let config_path = dir.path().join("rebuy.toml");
    std::fs::write(
        &config_path,
        format!(
            "data_dir = {:?}\n[server]\nlisten = \"127.0.0.1:{port}\"\n[[portal]]\nid = \"shop\"\nkind = \"amocrm\"\nbase_url = \"http://127.0.0.1:9\"\n\
             [portal.auth]\ntype = \"oauth\"\nclient_id = \"{}\"\nclient_secret_env = \"EMULATOR_CLIENT_SECRET\"\nredirect_uri = \"{}\"\n\
             [portal.webhooks]\nsecret_env = \"HOOK_SECRET\"\n",
            dir.path().join("data").display().to_string(),
            emu.client_id,
            emu.redirect_uri
        ),
    )
    .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let mut server = crate::serve::spawn_serve(&config_path, &dir.path().join("serve.log"));
    crate::serve::wait_ready(&url).await;
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let _idle = idle_sockets(addr, 1_100).await;
    let acks = webhook_acks(&url, 1, 20).await;
    eprintln!(
        "webhook ack p99 with 1,100 idle sockets (binary): {:?}",
        p99(acks)
    );
    let t = Instant::now();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &server.0.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = loop {
        if let Some(s) = server.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "rebuy serve still running 5 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!(
        "rebuy serve exited {status} {:?} after SIGTERM",
        t.elapsed()
    );
    assert!(status.success(), "{status}");
}

/// `n` anonymous OAuth starts, `conc` at a time, half bare and half with a forged signature;
/// their statuses counted.
async fn anonymous_starts(
    url: &str,
    n: usize,
    conc: usize,
) -> std::collections::BTreeMap<u16, usize> {
    use futures::StreamExt;
    let http = crate::serve::no_redirects();
    let exp = jiff::Timestamp::now().as_second() + 3600;
    let statuses: Vec<u16> = futures::stream::iter(0..n)
        .map(|i| {
            let http = http.clone();
            let u = if i % 2 == 0 {
                format!("{url}/oauth/shop/start")
            } else {
                format!("{url}/oauth/shop/start?exp={exp}&sig={:064x}", i)
            };
            async move { http.get(u).send().await.unwrap().status().as_u16() }
        })
        .buffer_unordered(conc)
        .collect()
        .await;
    let mut counts = std::collections::BTreeMap::new();
    for s in statuses {
        *counts.entry(s).or_insert(0) += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_oauth_starts_are_refused_without_touching_the_store_and_links_still_connect() {
    let emu = rebuy_emulator::amocrm::AmoEmulator::spawn(crate::support::amo_config(52, 10, 20))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_with_id(dir.path(), &emu.base_url, "shop");
    let srv = run(&cfg).await;
    let store = srv.state.portal("shop").unwrap().store.clone();
    let baseline = p99(webhook_acks(&srv.url, 1, 100).await);
    let size = std::fs::metadata(store.path()).unwrap().len();

    // 10,000 anonymous starts: 401 without a link, 403 with a forged one; nothing stored,
    // nothing kept.
    let t = Instant::now();
    let counts = anonymous_starts(&srv.url, 10_000, 32).await;
    eprintln!("10,000 anonymous starts in {:?}: {counts:?}", t.elapsed());
    assert_eq!(
        counts,
        [(401, 5_000), (403, 5_000)].into_iter().collect(),
        "every anonymous start refused"
    );
    assert!(srv.state.oauth.is_empty(), "no state kept");
    assert_eq!(
        std::fs::metadata(store.path()).unwrap().len(),
        size,
        "the store did not grow"
    );
    assert!(
        store
            .meta::<serde_json::Value>("oauth_states")
            .unwrap()
            .is_none()
    );

    // Webhooks acknowledged while anonymous starts keep coming.
    let attack = tokio::spawn({
        let url = srv.url.clone();
        async move { anonymous_starts(&url, 3_000, 32).await }
    });
    let under = p99(webhook_acks(&srv.url, 1_000, 100).await);
    let refused = attack.await.unwrap();
    eprintln!("webhook ack p99: {baseline:?} alone, {under:?} under anonymous OAuth starts");
    assert_eq!(refused.values().sum::<usize>(), 3_000);
    assert!(!refused.contains_key(&302), "{refused:?}");
    assert!(
        under <= Duration::from_millis(500),
        "webhook ack p99 {under:?} under anonymous OAuth starts"
    );

    let http = crate::serve::no_redirects();
    let key = srv.state.link_key.clone().unwrap();
    // Links that are not this portal's, expired, or too long-lived are refused.
    let now = jiff::Timestamp::now().as_second();
    for (what, exp, portal) in [
        ("another portal's", now + 600, "b24"),
        ("expired", now - 1, "shop"),
        ("valid for more than a week", now + 8 * 24 * 3600, "shop"),
    ] {
        let r = http
            .get(format!(
                "{}/oauth/shop/start?exp={exp}&sig={}",
                srv.url,
                key.sign(portal, exp)
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{what} link");
    }

    // The signed link connects the portal; the state works only in the browser that started.
    let start = http
        .get(key.start_link(&srv.url, "shop", Duration::from_secs(600)))
        .send()
        .await
        .unwrap();
    assert_eq!(start.status(), 302);
    let cookie = start.headers()["set-cookie"].to_str().unwrap();
    let cookie = cookie.split(';').next().unwrap().to_owned();
    let consent = start.headers()["location"].to_str().unwrap().to_owned();
    let back = http.get(&consent).send().await.unwrap();
    let redirect = back.headers()["location"].to_str().unwrap().to_owned();
    let code = crate::serve::query_param(&redirect, "code").unwrap();
    let state = crate::serve::query_param(&redirect, "state").unwrap();
    let callback = format!("{}/oauth/shop/callback?code={code}&state={state}", srv.url);
    let elsewhere = http
        .get(&callback)
        .header("cookie", "rebuy_oauth=0000")
        .send()
        .await
        .unwrap();
    assert_eq!(elsewhere.status(), 403, "another browser's callback");
    assert!(store.load_tokens().unwrap().is_none());
    // That refusal used the state up: the person starts again and completes.
    let start = http
        .get(key.start_link(&srv.url, "shop", Duration::from_secs(600)))
        .send()
        .await
        .unwrap();
    let cookie2 = start.headers()["set-cookie"].to_str().unwrap();
    let cookie2 = cookie2.split(';').next().unwrap().to_owned();
    assert_ne!(cookie, cookie2);
    let consent = start.headers()["location"].to_str().unwrap().to_owned();
    let back = http.get(&consent).send().await.unwrap();
    let redirect = back.headers()["location"].to_str().unwrap().to_owned();
    let code = crate::serve::query_param(&redirect, "code").unwrap();
    let state = crate::serve::query_param(&redirect, "state").unwrap();
    let ok = http
        .get(format!(
            "{}/oauth/shop/callback?code={code}&state={state}",
            srv.url
        ))
        .header("cookie", &cookie2)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert!(store.load_tokens().unwrap().is_some(), "tokens committed");
    srv.cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_answer_mib_of_the_config_caps_the_portals_answers() {
    // A server that announces a gigabyte and sends zeros until the client hangs up.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = sock.read(&mut buf).await;
                let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
                if sock.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = vec![b' '; 64 << 10];
                loop {
                    let ok = sock
                        .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                        .await
                        .is_ok()
                        && sock.write_all(&chunk).await.is_ok()
                        && sock.write_all(b"\r\n").await.is_ok();
                    if !ok {
                        return;
                    }
                }
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_with_id(dir.path(), &base, "shop");
    let text = format!(
        "[[portal]]\nid = \"shop\"\nkind = \"amocrm\"\nbase_url = \"{base}\"\nmax_answer_mib = 2\n[portal.auth]\ntype = \"long_lived_token\"\ntoken_env = \"T\"\n"
    );
    use figment::providers::Format;
    let doc: serde_json::Value = figment::Figment::from(figment::providers::Toml::string(&text))
        .extract()
        .unwrap();
    let resolved = rebuy::config::resolve(&doc, "t.toml", &|k: &str| {
        (k == "T").then(|| "tok".to_owned())
    })
    .unwrap();
    assert_eq!(resolved.portals[0].max_answer_bytes, 2 << 20);
    cfg.portals[0] = resolved.portals[0].clone();
    let store = rebuy::store::Store::open(&cfg.data_dir, &cfg.portals[0].id).unwrap();
    let handle = rebuy::portal::open(&cfg.portals[0], store).unwrap();
    let err = handle.connector.account().await.expect_err("over the cap");
    let message = err.to_string();
    assert!(message.contains("exceeds 2 MiB"), "{message}");
    assert!(message.contains("/api/v4/account"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_link_of_rebuy_auth_starts_the_flow_on_the_server_sharing_its_data_dir() {
    let emu = rebuy_emulator::amocrm::AmoEmulator::spawn(crate::support::amo_config(53, 5, 5))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let amo = rebuy_emulator::amocrm::AmoConfig::default();
    let config_path = dir.path().join("rebuy.toml");
    std::fs::write(
        &config_path,
        format!(
            "data_dir = {:?}\n[server]\npublic_url = \"{url}\"\n[[portal]]\nid = \"shop\"\nkind = \"amocrm\"\nbase_url = \"{}\"\n\
             [portal.auth]\ntype = \"oauth\"\nclient_id = \"{}\"\nclient_secret_env = \"EMULATOR_CLIENT_SECRET\"\nredirect_uri = \"{}\"\n",
            dir.path().join("data").display().to_string(),
            emu.base_url,
            amo.client_id,
            amo.redirect_uri
        ),
    )
    .unwrap();
    let out = crate::support::rebuy(
        &[
            "--config",
            config_path.to_str().unwrap(),
            "auth",
            "--portal",
            "shop",
            "--link",
            "--valid-hours",
            "2",
        ],
        &[("EMULATOR_CLIENT_SECRET", amo.client_secret.as_str())],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let link = stdout
        .split_whitespace()
        .find(|w| w.starts_with(&format!("{url}/oauth/shop/start?exp=")))
        .unwrap_or_else(|| panic!("no link in {stdout}"))
        .to_owned();
    // The server started afterwards on the same data directory checks it with the same key.
    let env = |k: &str| (k == "EMULATOR_CLIENT_SECRET").then(|| amo.client_secret.clone());
    let cfg = rebuy::config::load(&config_path, &env).unwrap();
    let state = AppState::new(&cfg, true).unwrap();
    let cancel = CancellationToken::new();
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
    let http = crate::serve::no_redirects();
    let start = http.get(&link).send().await.unwrap();
    assert_eq!(start.status(), 302);
    assert!(
        start.headers()["location"]
            .to_str()
            .unwrap()
            .starts_with(&emu.base_url)
    );
    let tampered = link.replace("/oauth/shop/", "/oauth/shap/");
    assert_eq!(http.get(&tampered).send().await.unwrap().status(), 404);
    let exp: i64 = crate::serve::query_param(&link, "exp")
        .unwrap()
        .parse()
        .unwrap();
    let later = link.replace(&format!("exp={exp}"), &format!("exp={}", exp + 3600));
    assert_eq!(
        http.get(&later).send().await.unwrap().status(),
        403,
        "a longer life is not signed"
    );
    cancel.cancel();
}
