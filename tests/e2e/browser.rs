//! The dashboard in a real browser: headless Chromium driven over WebDriver (chromedriver,
//! through `fantoccini`) against `rebuy serve` on a synced emulated amoCRM account, with the
//! server's background tasks running (the outbox drainer sends what the pages queue).
//!
//! Needs the Debian packages `chromium` and `chromium-driver`. Without them the test prints
//! why and passes, unless `REBUY_REQUIRE_BROWSER=1` (CI sets it): then their absence fails.
//! Screenshots of every page land in `<target dir>/screenshots/`.
use crate::support::*;
use fantoccini::{Client, ClientBuilder, Locator};
use rebuy::config::Config;
use rebuy::outbox::{Action, ActionState};
use rebuy::server::{AppState, runtime};
use rebuy_core::{DealId, PipelineId, StageId, WriteOp};
use rebuy_emulator::amocrm::AmoConfig;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const USER: &str = "manager";
const PASSWORD: &str = "browser-test-password";

/// A program on `PATH`, or at one of the usual places.
fn find_program(names: &[&str], places: &[&str]) -> Option<PathBuf> {
    for p in places {
        let p = Path::new(p);
        if p.is_file() {
            return Some(p.to_owned());
        }
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|d| names.iter().map(move |n| d.join(n)))
        .find(|p| p.is_file())
}

/// chromedriver and the Chromium binary, or `None` after saying why the test is skipped.
/// With `REBUY_REQUIRE_BROWSER=1` a missing one is a failure instead.
fn browser_programs() -> Option<(PathBuf, PathBuf)> {
    let driver = find_program(&["chromedriver"], &["/usr/bin/chromedriver"]);
    // The real binary behind Debian's /usr/bin/chromium wrapper script.
    let chromium = find_program(
        &["chromium", "chromium-browser"],
        &["/usr/lib/chromium/chromium", "/usr/bin/chromium"],
    );
    match (driver, chromium) {
        (Some(d), Some(c)) => Some((d, c)),
        (d, c) => {
            let missing = [
                d.is_none()
                    .then_some("chromedriver (Debian package chromium-driver)"),
                c.is_none().then_some("chromium (Debian package chromium)"),
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" and ");
            let required = std::env::var("REBUY_REQUIRE_BROWSER").is_ok_and(|v| v.trim() == "1");
            assert!(
                !required,
                "REBUY_REQUIRE_BROWSER=1 but {missing} not found: apt-get install chromium chromium-driver"
            );
            eprintln!(
                "SKIPPED browser test: {missing} not found (apt-get install chromium chromium-driver; set REBUY_REQUIRE_BROWSER=1 to make this a failure)"
            );
            None
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A chromedriver child process on a free loopback port, killed on drop.
struct Driver {
    child: std::process::Child,
    url: String,
}

impl Driver {
    async fn start(program: &Path) -> Driver {
        let port = free_port();
        let child = std::process::Command::new(program)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let started = Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "chromedriver did not listen on {port} within 15 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connects a headless Chromium session with its own fresh profile directory.
async fn chromium(driver: &Driver, binary: &Path, profile: &Path) -> Client {
    let args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
        "--lang=en-US",
    ]
    .into_iter()
    .map(str::to_owned)
    .chain([format!("--user-data-dir={}", profile.display())])
    .collect::<Vec<_>>();
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": binary.display().to_string(),
            "args": args,
            "prefs": {"intl.accept_languages": "en-US,en"},
        }),
    );
    ClientBuilder::rustls()
        .expect("TLS roots")
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a Chromium session")
}

/// `<target dir>/screenshots`: the test binary lives in `<target dir>/<profile>/deps/`.
fn screenshots_dir() -> PathBuf {
    let dir = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(t) => PathBuf::from(t),
        None => std::env::current_exe()
            .unwrap()
            .ancestors()
            .nth(3)
            .unwrap()
            .to_owned(),
    }
    .join("screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn shot(b: &Client, name: &str) {
    let png = b.screenshot().await.expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG"), "{name}: a PNG");
    std::fs::write(screenshots_dir().join(format!("{name}.png")), png).unwrap();
}

async fn attr(b: &Client, css: &str, name: &str) -> String {
    b.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .attr(name)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("{css} has no {name}"))
}

async fn attrs(b: &Client, css: &str, name: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in b.find_all(Locator::Css(css)).await.unwrap() {
        out.push(e.attr(name).await.unwrap().unwrap_or_default());
    }
    out
}

async fn click(b: &Client, css: &str) {
    b.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap();
}

/// Waits (up to 10 s) for an element to appear.
async fn wait_for(b: &Client, css: &str) {
    b.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css} did not appear: {e}"));
}

fn config(data_dir: &Path, base_url: &str) -> Config {
    let emu = AmoConfig::default();
    let text = format!(
        r#"
        data_dir = "{}"
        [server.ui]
        cookie_secure = false
        default_lang = "en"
        [[server.ui.users]]
        name = "{USER}"
        password_env = "UI_MANAGER_PASSWORD"
        [[portal]]
        id = "test"
        kind = "amocrm"
        base_url = "{base_url}"
        requests_per_sec = {TEST_RPS}
        exceed_documented_limit = true
        [portal.auth]
        type = "oauth"
        client_id = "{}"
        client_secret_env = "EMULATOR_CLIENT_SECRET"
        redirect_uri = "{}"
        "#,
        data_dir.display(),
        emu.client_id,
        emu.redirect_uri
    );
    let secret = emu.client_secret.clone();
    let env = move |k: &str| match k {
        "EMULATOR_CLIENT_SECRET" => Some(secret.clone()),
        "UI_MANAGER_PASSWORD" => Some(format!(
            "sha256:{}",
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(PASSWORD.as_bytes()))
        )),
        _ => None,
    };
    let mut cfg = rebuy::config::resolve_toml(&text, "browser.toml", &env).unwrap();
    cfg.portals[0].mapping = rebuy::emulated::demo_mapping();
    cfg
}

/// Polls `check` every 50 ms for up to `limit`.
async fn eventually(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_headless_chromium() {
    let Some((driver_bin, chromium_bin)) = browser_programs() else {
        return;
    };
    let started = Instant::now();
    // The demo mapping keeps the customer funnel on amoCRM customers.
    let mut account = amo_config(77, 80, 300);
    account.customers_mode = "periodicity".into();
    let env = amo_env(account).await;
    sync(&env, true).await.unwrap();
    let cfg = config(env.dir.path(), &env.emu.base_url);
    drop(env.store);
    let emu = env.emu.emulator.clone();

    // `rebuy serve` as the binary runs it: the routes, /ui from [server.ui], the scheduler.
    let state = AppState::new(&cfg, true).unwrap();
    let rt = state.portal("test").unwrap().clone();
    let store = rt.store.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
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

    // A touch that failed earlier (the stage was closed then) and can be sent now.
    let (lead, pipeline, stage) = emu.with_data(|d| {
        let l = d.leads.values().find(|l| l.status_id == 142).unwrap();
        let p = &d.pipelines[&l.pipeline_id];
        let s = p
            .statuses
            .iter()
            .find(|s| s.id != 142 && s.id != 143)
            .unwrap();
        (l.id, p.id, s.id)
    });
    let failed = Action {
        merged: Vec::new(),
        key: format!("test/manual/lead:{lead}/2026-01-01"),
        op: WriteOp::MoveDeal {
            deal: DealId(lead),
            pipeline: PipelineId(pipeline),
            stage: StageId(stage.to_string()),
        },
        rule: "manual".into(),
        customer: format!("lead:{lead}"),
        summary: format!("move lead {lead} back to stage {stage}"),
    };
    store.outbox_enqueue(vec![failed.clone()]).unwrap();
    let mut e = store.outbox_get(&failed.key).unwrap().unwrap();
    e.attempts = 6;
    e.state = ActionState::Failed {
        code: "rejected".into(),
        message: "the stage was closed".into(),
        at: jiff::Timestamp::now(),
    };
    store.outbox_update(&[e]).unwrap();

    let driver = Driver::start(&driver_bin).await;
    let profile = tempfile::tempdir().unwrap();
    let b = chromium(&driver, &chromium_bin, profile.path()).await;
    let browser_started = Instant::now();

    // Login through the form.
    b.goto(&format!("{base}/ui")).await.unwrap();
    assert_eq!(b.current_url().await.unwrap().path(), "/ui/login");
    shot(&b, "01-login").await;
    b.find(Locator::Css("input[name=user]"))
        .await
        .unwrap()
        .send_keys(USER)
        .await
        .unwrap();
    b.find(Locator::Css("input[name=password]"))
        .await
        .unwrap()
        .send_keys(PASSWORD)
        .await
        .unwrap();
    click(&b, "form.login button[type=submit]").await;
    wait_for(&b, "tr[data-portal=test]").await;
    assert_eq!(b.current_url().await.unwrap().path(), "/ui");
    shot(&b, "02-portals").await;
    let row = b
        .find(Locator::Css("tr[data-portal=test]"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(row.contains("connected"), "{row}");

    // Overview: the figures of the analysis of the same cache.
    b.goto(&format!("{base}/ui/p/test")).await.unwrap();
    wait_for(&b, "td[data-fig]").await;
    let (_, want) = rebuy::analyse::analyse_portal(&store, &cfg.portals[0], None).unwrap();
    let f = &want.figures;
    for (key, value) in [
        ("customers_total", f.customers_total.to_string()),
        ("revenue_total", f.revenue_total.to_string()),
        ("customers", f.customers.to_string()),
        ("new_customers", f.new_customers.to_string()),
        ("repeat_customers", f.repeat_customers.to_string()),
        ("revenue", f.revenue.to_string()),
        ("orders", f.orders.to_string()),
    ] {
        let css = format!("td[data-fig={key}]");
        assert_eq!(attr(&b, &css, "data-value").await, value, "{key}");
    }
    let shown = b
        .find(Locator::Css("td[data-fig=customers_total]"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        shown,
        rebuy::ui::pages::group_digits(&f.customers_total.to_string())
    );
    // The monthly charts, and the backtest's calibration and decile charts.
    assert_eq!(
        b.find_all(Locator::Css("svg.chart")).await.unwrap().len(),
        if want.models.evidence.is_some() { 4 } else { 2 }
    );
    shot(&b, "03-overview").await;

    // RFM heatmap: every cell's count; clicking the fullest cell lists its customers.
    b.goto(&format!("{base}/ui/p/test/rfm")).await.unwrap();
    wait_for(&b, "td[data-r]").await;
    for r in 1..=5usize {
        for fr in 1..=5usize {
            let css = format!("td[data-r=\"{r}\"][data-f=\"{fr}\"]");
            assert_eq!(
                attr(&b, &css, "data-customers").await,
                want.rfm_grid.cells[r - 1][fr - 1].customers.to_string(),
                "cell R{r} F{fr}"
            );
        }
    }
    assert_eq!(
        attr(&b, "td[data-abc=A][data-xyz=X]", "data-customers").await,
        want.abc_xyz.cells[0][0].customers.to_string()
    );
    shot(&b, "04-rfm").await;
    let (r, fr) = (1..=5u8)
        .flat_map(|r| (1..=5u8).map(move |f| (r, f)))
        .max_by_key(|&(r, f)| want.rfm_grid.cells[r as usize - 1][f as usize - 1].customers)
        .unwrap();
    click(&b, &format!("td[data-r=\"{r}\"][data-f=\"{fr}\"] a")).await;
    wait_for(&b, "tr[data-key]").await;
    let url = b.current_url().await.unwrap();
    assert_eq!(url.path(), "/ui/p/test/segments");
    assert_eq!(url.query(), Some(format!("r={r}&f={fr}").as_str()));
    let expected: Vec<String> = want
        .customers
        .iter()
        .filter(|c| c.r == r && c.f == fr)
        .map(|c| c.key.to_string())
        .take(100)
        .collect();
    assert_eq!(attrs(&b, "tr[data-key]", "data-key").await, expected);
    shot(&b, "05-rfm-cell").await;

    // Segments: the largest one, exported as CSV and XLSX with the browser's session.
    let seg = want.segments.iter().max_by_key(|s| s.customers).unwrap();
    b.goto(&format!(
        "{base}/ui/p/test/segments?segment={}",
        seg.segment.as_str()
    ))
    .await
    .unwrap();
    wait_for(&b, "a[data-export=xlsx]").await;
    assert_eq!(
        attr(&b, "p[data-count]", "data-count").await,
        seg.customers.to_string()
    );
    shot(&b, "06-segments").await;
    let session = b.get_named_cookie("rebuy_ui").await.unwrap();
    let cookie = format!("rebuy_ui={}", session.value());
    let members: Vec<_> = want
        .customers
        .iter()
        .filter(|c| c.rfm_segment == seg.segment)
        .collect();
    let http = reqwest::Client::new();
    let csv_url = format!("{base}{}", attr(&b, "a[data-export=csv]", "href").await);
    let csv_body = http
        .get(&csv_url)
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut rd = csv::Reader::from_reader(csv_body.as_bytes());
    let header: Vec<String> = rd.headers().unwrap().iter().map(str::to_owned).collect();
    let col = |n: &str| header.iter().position(|h| h == n).unwrap();
    let rows: Vec<csv::StringRecord> = rd.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), members.len());
    for (row, c) in rows.iter().zip(&members) {
        assert_eq!(&row[col("customer")], c.key.to_string());
        assert_eq!(&row[col("phones")], c.phones.join(";"));
        assert_eq!(&row[col("emails")], c.emails.join(";"));
    }
    let xlsx_url = format!("{base}{}", attr(&b, "a[data-export=xlsx]", "href").await);
    let xlsx = http
        .get(&xlsx_url)
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(xlsx.status(), 200);
    crate::ui::assert_xlsx_equals(&xlsx.bytes().await.unwrap(), &members);
    let anonymous = http.get(&xlsx_url).send().await.unwrap();
    assert!(
        !anonymous.status().is_success() || anonymous.url().path() == "/ui/login",
        "no export without the session"
    );

    // Touches: retry the failed action; the server's drainer sends it to the CRM.
    b.goto(&format!("{base}/ui/p/test/touches")).await.unwrap();
    wait_for(&b, "button[data-action=retry]").await;
    shot(&b, "07-touches").await;
    click(&b, "button[data-action=retry]").await;
    wait_for(&b, "[data-notice=retried]").await;
    eventually(
        "the retried action is sent",
        Duration::from_secs(10),
        || {
            matches!(
                store.outbox_get(&failed.key).unwrap().unwrap().state,
                ActionState::Done { .. }
            )
        },
    )
    .await;
    assert!(
        emu.writes()
            .lead_moves
            .iter()
            .any(|m| m.lead_id == lead && m.to_status_id == stage),
        "the CRM got the move"
    );

    // The dry-run plan, then apply it.
    click(&b, "button[data-action=plan]").await;
    wait_for(&b, "[data-plan-actions]").await;
    let conn = rebuy::portal::open(&cfg.portals[0], store.clone())
        .unwrap()
        .connector;
    let plan = rebuy::writeback::plan_portal(
        &cfg.portals[0],
        &store,
        Some(conn.as_ref()),
        jiff::Timestamp::now(),
    )
    .await
    .unwrap();
    assert!(!plan.actions.is_empty());
    assert_eq!(
        attr(&b, "[data-plan-actions]", "data-plan-actions").await,
        plan.actions.len().to_string()
    );
    assert_eq!(
        attrs(&b, "tr[data-plan-action]", "data-plan-action").await,
        plan.actions
            .iter()
            .take(200)
            .map(|a| a.key.clone())
            .collect::<Vec<_>>()
    );
    assert!(
        plan.actions
            .iter()
            .all(|a| store.outbox_get(&a.key).unwrap().is_none()),
        "a dry run writes nothing"
    );
    shot(&b, "08-plan").await;
    click(&b, "button[data-action=apply]").await;
    wait_for(&b, "[data-notice=applied]").await;
    shot(&b, "09-applied").await;
    eventually(
        "every planned action is sent",
        Duration::from_secs(30),
        || {
            plan.actions.iter().all(|a| {
                matches!(
                    store.outbox_get(&a.key).unwrap().map(|e| e.state),
                    Some(ActionState::Done { .. } | ActionState::Failed { .. })
                )
            })
        },
    )
    .await;
    let failed_now: Vec<_> = plan
        .actions
        .iter()
        .filter_map(|a| store.outbox_get(&a.key).unwrap())
        .filter(|e| matches!(e.state, ActionState::Failed { .. }))
        .map(|e| format!("{}: {:?}", e.action.key, e.state))
        .collect();
    assert!(failed_now.is_empty(), "{failed_now:?}");

    // Mapping: the CRM's pipelines, and `rebuy mapping`'s verdict.
    b.goto(&format!("{base}/ui/p/test/mapping")).await.unwrap();
    wait_for(&b, "[data-mapping]").await;
    let report = rebuy::writeback::mapping_report(&cfg.portals[0], &store, conn.as_ref(), None)
        .await
        .unwrap();
    assert_eq!(
        attr(&b, "[data-mapping]", "data-mapping").await,
        if report.ok() { "ok" } else { "problems" }
    );
    let mut shown = attrs(&b, "tr[data-pipeline]", "data-pipeline").await;
    shown.sort();
    let mut pipelines: Vec<String> =
        emu.with_data(|d| d.pipelines.keys().map(|k| k.to_string()).collect());
    pipelines.sort();
    assert_eq!(shown, pipelines);
    shot(&b, "10-mapping").await;

    // Re-authorization: the connect button leads to the CRM's consent page with a state the
    // server issued to this browser.
    store.set_needs_reauth("refresh token revoked").unwrap();
    b.goto(&format!("{base}/ui")).await.unwrap();
    wait_for(&b, "a[href=\"/ui/p/test/connect\"]").await;
    shot(&b, "11-needs-reauth").await;
    // Without the dashboard's session or a signed link, nobody starts a flow.
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let start = no_redirects
        .get(format!("{base}/oauth/test/start"))
        .send()
        .await
        .unwrap();
    assert_eq!(start.status(), 401);
    let anon = no_redirects
        .get(format!("{base}/ui/p/test/connect"))
        .send()
        .await
        .unwrap();
    assert_eq!(anon.headers()["location"], "/ui/login");
    assert!(state.oauth.is_empty(), "no flow started");
    // The browser follows the button: the emulated amoCRM consents at once and sends it to the
    // integration's redirect URI with a code and the state the server issued for this click.
    click(&b, "a[href=\"/ui/p/test/connect\"]").await;
    let redirect = url::Url::parse(&AmoConfig::default().redirect_uri).unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    let mut back = b.current_url().await.unwrap();
    while back.host_str() != redirect.host_str() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
        back = b.current_url().await.unwrap();
    }
    assert_eq!(back.path(), redirect.path(), "{back}");
    let q: std::collections::HashMap<String, String> = back.query_pairs().into_owned().collect();
    assert!(!q["code"].is_empty());
    assert_eq!(
        state.oauth.len(),
        1,
        "the server issued the browser's state"
    );
    // That redirect URI is the server's callback in production: hand it the code and state.
    let mut callback = url::Url::parse(&format!("{base}/oauth/test/callback")).unwrap();
    callback
        .query_pairs_mut()
        .append_pair("code", &q["code"])
        .append_pair("state", &q["state"]);
    b.goto(callback.as_str()).await.unwrap();
    let text = b
        .find(Locator::Css("body"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("Portal test is connected"), "{text}");
    shot(&b, "12-oauth-connected").await;
    assert!(state.oauth.is_empty(), "a state works once");
    b.goto(&format!("{base}/ui")).await.unwrap();
    wait_for(&b, "tr[data-portal=test]").await;
    assert!(
        b.find_all(Locator::Css("a[href=\"/ui/p/test/connect\"]"))
            .await
            .unwrap()
            .is_empty(),
        "re-authorized: no connect button"
    );
    assert!(store.needs_reauth().unwrap().is_none());
    shot(&b, "13-reconnected").await;

    b.close().await.unwrap();
    cancel.cancel();
    eprintln!(
        "browser test: {:.1} s in the browser, {:.1} s in all; screenshots in {}",
        browser_started.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64(),
        screenshots_dir().display()
    );
}
