//! The `/ui` dashboard against a synced emulated portal: login, sessions and CSRF, and every
//! page's figures compared with the analysis of the same cache. HTTP-level (reqwest with a
//! manual `Cookie` header); no browser.
use crate::support::*;
use futures::StreamExt;
use rebuy::config::Config;
use rebuy::outbox::{Action, ActionState};
use rebuy::server::AppState;
use rebuy::ui::UiSettings;
use rebuy_core::{DealId, PipelineId, StageId, WriteOp};
use rebuy_emulator::amocrm::AmoConfig;

const USER: &str = "admin";
const PASSWORD: &str = "correct horse battery staple";

fn config(data_dir: &std::path::Path, base_url: &str) -> Config {
    let emu = AmoConfig::default();
    let text = format!(
        r#"
        data_dir = "{}"
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
        [portal.webhooks]
        secret_env = "HOOK_SECRET"
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
        "HOOK_SECRET" => Some("hook-secret-ui".to_owned()),
        _ => None,
    };
    rebuy::config::resolve(&doc, "test.toml", &env).unwrap()
}

struct Resp {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Resp {
    fn location(&self) -> &str {
        self.headers
            .get("location")
            .map_or("", |v| v.to_str().unwrap())
    }

    fn set_cookie(&self, name: &str) -> Option<String> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .find(|v| v.starts_with(&format!("{name}=")))
    }
}

struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    async fn get(&self, path: &str, cookie: Option<&str>) -> Resp {
        let mut r = self.http.get(format!("{}{path}", self.base));
        if let Some(c) = cookie {
            r = r.header("cookie", c);
        }
        Self::resp(r.send().await.unwrap()).await
    }

    async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Resp {
        let mut r = self.http.get(format!("{}{path}", self.base));
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        Self::resp(r.send().await.unwrap()).await
    }

    async fn get_bytes(
        &self,
        path: &str,
        cookie: &str,
    ) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .header("cookie", cookie)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        (status, headers, r.bytes().await.unwrap().to_vec())
    }

    async fn post(&self, path: &str, cookie: Option<&str>, form: &[(&str, &str)]) -> Resp {
        let mut r = self.http.post(format!("{}{path}", self.base)).form(form);
        if let Some(c) = cookie {
            r = r.header("cookie", c);
        }
        Self::resp(r.send().await.unwrap()).await
    }

    async fn resp(r: reqwest::Response) -> Resp {
        Resp {
            status: r.status().as_u16(),
            headers: r.headers().clone(),
            body: r.text().await.unwrap(),
        }
    }
}

/// `name=value` of a `Set-Cookie` header.
fn cookie_pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().to_owned()
}

/// The first `value="..."` after `marker` in an HTML page.
fn attr_after(html: &str, marker: &str, attr: &str) -> Option<String> {
    let at = html.find(marker)?;
    let rest = &html[at..];
    let key = format!("{attr}=\"");
    let start = rest.find(&key)? + key.len();
    let end = rest[start..].find('"')?;
    Some(rest[start..start + end].to_owned())
}

fn csrf_of(html: &str) -> String {
    attr_after(html, "name=\"csrf\"", "value").expect("a csrf field")
}

/// Every `data-key="..."` (customer rows) of a page, in order.
fn keys_of(html: &str) -> Vec<String> {
    html.split("data-key=\"")
        .skip(1)
        .map(|s| s[..s.find('"').unwrap()].to_owned())
        .collect()
}

async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

fn settings() -> UiSettings {
    let mut s = UiSettings::single(USER, PASSWORD);
    s.cookie_secure = false;
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_logs_in_and_shows_the_analysis_of_the_cache() {
    let env = amo_env(amo_config(71, 80, 300)).await;
    sync(&env, true).await.unwrap();
    let cfg = config(env.dir.path(), &env.emu.base_url);
    drop(env.store);
    let state = AppState::new(&cfg, true).unwrap();
    let store = state.portal("test").unwrap().store.clone();
    let (_, want) = rebuy::analyse::analyse_portal(&store, &cfg.portals[0], None).unwrap();
    assert!(want.customers.len() > 10, "the dataset has customers");

    // A failed touch with the CRM's message.
    let action = Action {
        merged: Vec::new(),
        key: "test/after_purchase_7/contact:1/2026-01-01".into(),
        op: WriteOp::MoveDeal {
            deal: DealId(1),
            pipeline: PipelineId(2),
            stage: StageId("3".into()),
        },
        rule: "after_purchase_7".into(),
        customer: "contact:1".into(),
        summary: "move deal 1".into(),
    };
    store.outbox_enqueue(vec![action.clone()]).unwrap();
    let mut entry = store.outbox_get(&action.key).unwrap().unwrap();
    entry.state = ActionState::Failed {
        code: "rejected".into(),
        message: "Stage 3 is closed <b>".into(),
        at: jiff::Timestamp::now(),
    };
    store.outbox_update(&[entry]).unwrap();

    let app = axum::Router::new().nest("/ui", rebuy::ui::router(state.clone(), settings()));
    let c = Client {
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        base: serve(app).await,
    };

    // Anonymous: pages redirect to the login, the export too, POSTs are refused.
    for path in [
        "/ui",
        "/ui/p/test",
        "/ui/p/test/rfm",
        "/ui/p/test/segments",
        "/ui/p/test/segments.csv",
        "/ui/p/test/touches",
        "/ui/p/test/connect",
    ] {
        let r = c.get(path, None).await;
        assert_eq!((r.status, r.location()), (303, "/ui/login"), "{path}");
    }
    assert_eq!(
        c.post("/ui/p/test/refresh", None, &[("csrf", "x")])
            .await
            .status,
        401
    );
    assert_eq!(c.get("/ui/nope", None).await.status, 404);

    // The login page sets a nonce cookie (secure by default) its form's token is bound to; it
    // starts no session.
    let page = c.get("/ui/login", None).await;
    assert_eq!(page.status, 200);
    assert!(
        page.set_cookie("rebuy_ui").is_none(),
        "no session before a login"
    );
    let set = page.set_cookie("rebuy_login").expect("login cookie");
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.contains("Path=/ui"),
        "{set}"
    );
    assert_eq!(page.headers["cache-control"], "no-store");
    assert!(
        page.headers["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("frame-ancestors 'none'")
    );
    let anon = cookie_pair(&set);
    let login_csrf = csrf_of(&page.body);
    assert!(login_csrf.len() > 64, "{login_csrf}");
    // Another login page's cookie does not fit this form.
    let other = cookie_pair(
        &c.get("/ui/login", None)
            .await
            .set_cookie("rebuy_login")
            .unwrap(),
    );
    assert_eq!(
        c.post(
            "/ui/login",
            Some(&other),
            &[
                ("user", USER),
                ("password", PASSWORD),
                ("csrf", &login_csrf)
            ],
        )
        .await
        .status,
        403
    );

    // Wrong password, no CSRF token, no session: refused.
    let wrong = c
        .post(
            "/ui/login",
            Some(&anon),
            &[("user", USER), ("password", "guess"), ("csrf", &login_csrf)],
        )
        .await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.set_cookie("rebuy_ui").is_none());
    let no_csrf = c
        .post(
            "/ui/login",
            Some(&anon),
            &[("user", USER), ("password", PASSWORD)],
        )
        .await;
    assert_eq!(no_csrf.status, 403);
    let no_session = c
        .post(
            "/ui/login",
            None,
            &[
                ("user", USER),
                ("password", PASSWORD),
                ("csrf", &login_csrf),
            ],
        )
        .await;
    assert_eq!(no_session.status, 403);
    // The login cookie opens no page.
    assert_eq!(c.get("/ui", Some(&anon)).await.status, 303);

    // Login: a new session id (no fixation); the anonymous one is gone.
    let ok = c
        .post(
            "/ui/login",
            Some(&anon),
            &[
                ("user", USER),
                ("password", PASSWORD),
                ("csrf", &login_csrf),
            ],
        )
        .await;
    assert_eq!((ok.status, ok.location()), (303, "/ui"));
    let session = cookie_pair(&ok.set_cookie("rebuy_ui").expect("new session cookie"));
    assert_ne!(session, anon);
    let replay = c
        .post(
            "/ui/login",
            Some(&anon),
            &[
                ("user", USER),
                ("password", PASSWORD),
                ("csrf", &login_csrf),
            ],
        )
        .await;
    assert_eq!(replay.status, 403, "a login form logs in once");
    let cookie = Some(session.as_str());

    // Portals: connected, then flagged for re-authorization with a connect button.
    let portals = c.get("/ui", cookie).await;
    assert_eq!(portals.status, 200);
    assert!(portals.body.contains("data-portal=\"test\""));
    assert!(
        portals.body.contains("connected") && !portals.body.contains("/ui/p/test/connect"),
        "{}",
        portals.body
    );
    store.set_needs_reauth("refresh token revoked").unwrap();
    let portals = c.get("/ui", cookie).await;
    assert!(
        portals
            .body
            .contains("needs re-authorization: refresh token revoked"),
        "{}",
        portals.body
    );
    assert!(portals.body.contains("href=\"/ui/p/test/connect\""));
    // The button starts an OAuth flow for the logged-in user: to the CRM's consent page, with a
    // state kept in memory and a cookie binding it to this browser.
    assert!(state.oauth.is_empty());
    let connect = c.get("/ui/p/test/connect", cookie).await;
    assert_eq!(connect.status, 302);
    assert!(
        connect.location().starts_with(&env.emu.base_url) && connect.location().contains("state="),
        "{}",
        connect.location()
    );
    let flow = connect.set_cookie("rebuy_oauth").expect("flow cookie");
    assert!(
        flow.contains("Path=/oauth/test/") && flow.contains("HttpOnly"),
        "{flow}"
    );
    assert_eq!(state.oauth.len(), 1);
    let csrf = csrf_of(&portals.body);

    // Overview: the figures of the analysis, the charts.
    let ov = c.get("/ui/p/test", cookie).await;
    assert_eq!(ov.status, 200);
    let fig = |k: &str| {
        attr_after(&ov.body, &format!("data-fig=\"{k}\""), "data-value")
            .unwrap_or_else(|| panic!("figure {k}"))
    };
    let f = &want.figures;
    assert_eq!(fig("customers_total"), f.customers_total.to_string());
    assert_eq!(fig("revenue_total"), f.revenue_total.to_string());
    assert_eq!(fig("customers"), f.customers.to_string());
    assert_eq!(fig("revenue"), f.revenue.to_string());
    assert_eq!(fig("orders"), f.orders.to_string());
    assert_eq!(fig("repeat_customers"), f.repeat_customers.to_string());
    // The driving model with its backtest figures, the calibration and the decile charts.
    let models = &want.models;
    let driving = models.driving.as_deref().expect("a driving model");
    assert!(
        ov.body.contains(&format!("data-model=\"{driving}\"")),
        "{driving} not named"
    );
    let e = models.evidence.as_ref().expect("backtest figures");
    let raw = |v: Option<f64>| v.map_or_else(String::new, |v| v.to_string());
    assert_eq!(fig("backtest_mae"), raw(e.mae));
    assert_eq!(fig("backtest_auc"), raw(e.auc));
    assert_eq!(fig("backtest_mape"), raw(e.mape_pct));
    assert_eq!(
        ov.body.matches("<svg").count(),
        4,
        "two monthly charts, calibration, deciles"
    );
    assert_eq!(
        ov.body.matches("<polyline").count(),
        2,
        "predicted and actual"
    );
    assert_eq!(ov.body.matches("<circle").count(), 2 * e.weeks.len());
    let last_week = format!("{:.0}", (e.weeks.last().unwrap() / 7.0).ceil());
    let actual_total = format!("{:.0}", e.weekly_actual.last().unwrap());
    assert!(
        ov.body
            .contains(&format!(", {last_week}: {actual_total}</title>")),
        "the calibration chart ends at the holdout's actual purchases"
    );
    assert_eq!(e.deciles.len(), 10);
    for (i, d) in e.deciles.iter().enumerate() {
        // Predicted and actual side by side, the actual count in its title.
        let titles = ov.body.matches(&format!("<title>{}, ", i + 1)).count();
        assert_eq!(titles, 2, "decile {}", i + 1);
        assert!(
            ov.body.contains(&format!(": {:.0}</title>", d.actual)),
            "decile {} actual {}",
            i + 1,
            d.actual
        );
    }
    assert_eq!(
        ov.body.contains("data-warning=\"concentration\""),
        f.concentration_warning.is_some()
    );

    // RFM heatmap: every cell's count, and a cell's link lists exactly its customers.
    let rfm = c.get("/ui/p/test/rfm", cookie).await;
    assert_eq!(rfm.status, 200);
    for r in 1..=5usize {
        for fr in 1..=5usize {
            let marker = format!("data-r=\"{r}\" data-f=\"{fr}\"");
            assert_eq!(
                attr_after(&rfm.body, &marker, "data-customers").unwrap(),
                want.rfm_grid.cells[r - 1][fr - 1].customers.to_string(),
                "cell {r}{fr}"
            );
        }
    }
    let (r, fr) = (1..=5u8)
        .flat_map(|r| (1..=5u8).map(move |f| (r, f)))
        .max_by_key(|&(r, f)| want.rfm_grid.cells[r as usize - 1][f as usize - 1].customers)
        .unwrap();
    let link = format!("/ui/p/test/segments?r={r}&f={fr}");
    assert!(
        rfm.body
            .contains(&format!("href=\"{}\"", link.replace('&', "&amp;"))),
        "the cell links to its customers"
    );
    let cell = c.get(&link, cookie).await;
    assert_eq!(cell.status, 200);
    let expected: Vec<String> = want
        .customers
        .iter()
        .filter(|c| c.r == r && c.f == fr)
        .map(|c| c.key.to_string())
        .collect();
    assert!(!expected.is_empty());
    assert_eq!(keys_of(&cell.body), expected, "cell R{r} F{fr}");
    // ABC x XYZ.
    let a_x = want.abc_xyz.cells[0][0].customers;
    assert_eq!(
        attr_after(&rfm.body, "data-abc=\"A\" data-xyz=\"X\"", "data-customers").unwrap(),
        a_x.to_string()
    );
    let by_rev = c.get("/ui/p/test/rfm?by=revenue", cookie).await;
    assert_eq!(by_rev.status, 200);

    // Segments: search, and the CSV export of the largest segment with phones and emails.
    let seg = want.segments.iter().max_by_key(|s| s.customers).unwrap();
    let page = c
        .get(
            &format!("/ui/p/test/segments?segment={}", seg.segment.as_str()),
            cookie,
        )
        .await;
    assert_eq!(page.status, 200);
    assert_eq!(keys_of(&page.body).len() as u64, seg.customers.min(100));
    let someone = want
        .customers
        .iter()
        .find(|c| !c.emails.is_empty())
        .expect("a customer with an email");
    let found = c
        .get(
            &format!("/ui/p/test/segments?q={}", urlencode(&someone.emails[0])),
            cookie,
        )
        .await;
    assert!(keys_of(&found.body).contains(&someone.key.to_string()));
    let csv = c
        .get(
            &format!("/ui/p/test/segments.csv?segment={}", seg.segment.as_str()),
            cookie,
        )
        .await;
    assert_eq!(csv.status, 200);
    assert!(
        csv.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    assert!(
        csv.headers["content-disposition"]
            .to_str()
            .unwrap()
            .contains("attachment")
    );
    let mut rd = csv::Reader::from_reader(csv.body.as_bytes());
    let header: Vec<String> = rd.headers().unwrap().iter().map(str::to_owned).collect();
    let col = |n: &str| header.iter().position(|h| h == n).unwrap();
    let rows: Vec<csv::StringRecord> = rd.records().map(Result::unwrap).collect();
    let members: Vec<_> = want
        .customers
        .iter()
        .filter(|c| c.rfm_segment == seg.segment)
        .collect();
    assert_eq!(rows.len(), members.len());
    for (row, c) in rows.iter().zip(&members) {
        assert_eq!(&row[col("customer")], c.key.to_string());
        // A phone list that is not all numbers is neutralised like any cell starting with +.
        assert_eq!(
            &row[col("phones")],
            rebuy::analytics::render::csv_safe(&c.phones.join(";"))
        );
        assert_eq!(&row[col("emails")], c.emails.join(";"));
        assert_eq!(&row[col("rfm_segment")], seg.segment.as_str());
    }
    assert!(
        members.iter().any(|c| !c.phones.is_empty()),
        "the export carries phones"
    );
    // The same segment as XLSX: same rows and columns, typed cells.
    let (status, headers, bytes) = c
        .get_bytes(
            &format!("/ui/p/test/segments.xlsx?segment={}", seg.segment.as_str()),
            &session,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        headers["content-type"],
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    );
    assert!(
        headers["content-disposition"]
            .to_str()
            .unwrap()
            .ends_with(".xlsx\"")
    );
    assert_xlsx_equals(&bytes, &members);

    // Touches: the failed entry with the CRM's message, escaped.
    let t = c.get("/ui/p/test/touches", cookie).await;
    assert_eq!(t.status, 200);
    assert!(t.body.contains("data-state=\"failed\""));
    assert!(
        t.body.contains("rejected: Stage 3 is closed &lt;b&gt;"),
        "{}",
        t.body
    );
    assert_eq!(
        attr_after(&t.body, "data-state-count=\"failed\"", "data-value").unwrap(),
        "1"
    );
    assert_eq!(c.get("/ui/p/nope", cookie).await.status, 404);

    // CSRF: a POST without (or with a wrong) token is refused; with it, it works.
    assert_eq!(c.post("/ui/p/test/refresh", cookie, &[]).await.status, 403);
    assert_eq!(
        c.post("/ui/p/test/refresh", cookie, &[("csrf", &login_csrf)])
            .await
            .status,
        403
    );
    let refreshed = c
        .post("/ui/p/test/refresh", cookie, &[("csrf", &csrf)])
        .await;
    assert_eq!(
        (refreshed.status, refreshed.location()),
        (303, "/ui/p/test")
    );
    assert_eq!(c.post("/ui/logout", cookie, &[]).await.status, 403);

    // Languages: ?lang= (kept in a cookie), Accept-Language.
    let ru = c.get("/ui?lang=ru", cookie).await;
    assert!(ru.body.contains("Порталы") && ru.body.contains("lang=\"ru\""));
    assert!(
        ru.set_cookie("rebuy_lang")
            .unwrap()
            .starts_with("rebuy_lang=ru")
    );
    let hdr = c
        .get_with(
            "/ui/p/test/segments",
            &[
                ("cookie", &session),
                ("accept-language", "ru-RU,ru;q=0.9,en;q=0.5"),
            ],
        )
        .await;
    assert!(hdr.body.contains("Сегменты"));
    let en = c
        .get_with(
            "/ui/p/test/segments",
            &[
                ("cookie", &format!("{session}; rebuy_lang=en")),
                ("accept-language", "ru"),
            ],
        )
        .await;
    assert!(en.body.contains("Segments") && !en.body.contains("Сегменты"));

    // Logout ends the session.
    let out = c.post("/ui/logout", cookie, &[("csrf", &csrf)]).await;
    assert_eq!((out.status, out.location()), (303, "/ui/login"));
    assert_eq!(c.get("/ui", cookie).await.status, 303);
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_login_the_dashboard_is_off() {
    assert!(UiSettings::from_lookup(|_| None).is_none());
    let app = axum::Router::new().nest("/ui", rebuy::ui::disabled());
    let base = serve(app).await;
    for path in ["/ui", "/ui/login", "/ui/p/test"] {
        let r = reqwest::get(format!("{base}{path}")).await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }
}

/// The login form against guessing and floods, on argon2-hashed passwords: a flood of
/// anonymous login pages (more than the session table holds) stores nothing, so someone who
/// opened the form before it still logs in; guesses are limited per user and per client
/// address (429 with `Retry-After`), and a limited user's right password waits too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_are_rate_limited_and_a_flood_logs_nobody_out() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "http://127.0.0.1:9");
    let state = AppState::new(&cfg, true).unwrap();
    let mut s = UiSettings::single(
        USER,
        &rebuy::config::passwords::hash_password(PASSWORD).unwrap(),
    );
    for u in ["anna", "boris"] {
        s.users.push((
            u.into(),
            rebuy::config::passwords::hash_password(u).unwrap().into(),
        ));
    }
    s.cookie_secure = false;
    s.client_ip_header = Some("x-real-ip".into());
    let app = axum::Router::new().nest("/ui", rebuy::ui::router(state, s));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await
    });
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let page = |ip: &'static str| {
        let http = http.clone();
        let url = format!("{base}/ui/login");
        async move {
            let r = http.get(url).header("x-real-ip", ip).send().await.unwrap();
            let cookie = r
                .headers()
                .get_all("set-cookie")
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .find(|v| v.starts_with("rebuy_login="))
                .unwrap();
            (cookie_pair(&cookie), csrf_of(&r.text().await.unwrap()))
        }
    };
    let post = |ip: &'static str, form: &(String, String), user: &str, pw: &str| {
        http.post(format!("{base}/ui/login"))
            .header("x-real-ip", ip)
            .header("cookie", form.0.clone())
            .form(&[("user", user), ("password", pw), ("csrf", form.1.as_str())])
            .send()
    };

    // Someone opens the form; then a flood of anonymous login pages.
    let early = page("10.0.0.1").await;
    let flood = rebuy::ui::auth::MAX_SESSIONS + 1_000;
    let statuses: Vec<u16> = futures::stream::iter(0..flood)
        .map(|_| {
            let http = http.clone();
            let url = format!("{base}/ui/login");
            async move { http.get(url).send().await.unwrap().status().as_u16() }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    assert!(statuses.iter().all(|s| *s == 200));
    let ok = post("10.0.0.1", &early, USER, PASSWORD).await.unwrap();
    assert_eq!(
        ok.status(),
        303,
        "the form opened before the flood still logs in"
    );

    // Guessing one user's password: 10 attempts a minute are checked, the rest wait.
    let form = page("10.0.0.2").await;
    let mut checked = 0;
    for i in 0..15 {
        let r = post("10.0.0.2", &form, USER, &format!("guess {i}"))
            .await
            .unwrap();
        match r.status().as_u16() {
            401 => checked += 1,
            429 => {
                let wait: u64 = r.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!((1..=60).contains(&wait), "{wait}");
            }
            other => panic!("unexpected {other}"),
        }
    }
    // One of the user's 10 went to the successful login above.
    assert_eq!(checked, 9);
    let from_elsewhere = post("10.0.0.3", &page("10.0.0.3").await, USER, PASSWORD)
        .await
        .unwrap();
    assert_eq!(
        from_elsewhere.status(),
        429,
        "the user's bucket holds for every address"
    );

    // One address: 20 attempts a minute over all users (counted first, so one address burns
    // at most 20 of a user's). 10.0.0.2 has used 15 of them; anna takes 5 more.
    for _ in 0..5 {
        assert_eq!(
            post("10.0.0.2", &form, "anna", "x").await.unwrap().status(),
            401
        );
    }
    assert_eq!(
        post("10.0.0.2", &form, "boris", "boris")
            .await
            .unwrap()
            .status(),
        429,
        "the address is over its limit"
    );
    let boris = post("10.0.0.4", &page("10.0.0.4").await, "boris", "boris")
        .await
        .unwrap();
    assert_eq!(boris.status(), 303, "another address is not");
}

/// Asserts that an XLSX export holds exactly `want`'s rows in order, under the CSV's header:
/// phones, emails, names and keys as text cells, counts and scores as numbers, amounts as
/// numbers equal to the decimal, dates as date cells, flags as booleans.
pub(crate) fn assert_xlsx_equals(bytes: &[u8], want: &[&rebuy::analytics::CustomerRow]) {
    use calamine::{Data, Reader, Xlsx};
    use rust_decimal::prelude::ToPrimitive;
    let mut wb: Xlsx<_> = calamine::open_workbook_from_rs(std::io::Cursor::new(bytes.to_vec()))
        .expect("a readable XLSX file");
    let range = wb.worksheet_range("customers").expect("a customers sheet");
    let rows: Vec<&[Data]> = range.rows().collect();
    let header: Vec<String> = rows[0].iter().map(|c| c.to_string()).collect();
    assert_eq!(header, rebuy::analytics::render::COLUMNS);
    assert_eq!(rows.len() - 1, want.len(), "one row per customer");
    let col = |n: &str| header.iter().position(|h| h == n).unwrap();
    let text = |d: &Data| match d {
        Data::String(s) => s.clone(),
        Data::Empty => String::new(),
        other => panic!("expected a text cell, got {other:?}"),
    };
    let num = |d: &Data| match d {
        Data::Float(f) => *f,
        Data::Int(i) => *i as f64,
        other => panic!("expected a number cell, got {other:?}"),
    };
    // Excel's serial day number of a date (1900 date system).
    let serial = |d: jiff::civil::Date| {
        d.to_zoned(jiff::tz::TimeZone::UTC)
            .unwrap()
            .timestamp()
            .as_second()
            .div_euclid(86_400) as f64
            + 25_569.0
    };
    let date = |d: &Data| match d {
        Data::DateTime(x) => x.as_f64(),
        other => panic!("expected a date cell, got {other:?}"),
    };
    for (row, c) in rows[1..].iter().zip(want) {
        assert_eq!(text(&row[col("customer")]), c.key.to_string());
        assert_eq!(text(&row[col("name")]), c.name);
        assert_eq!(text(&row[col("phones")]), c.phones.join(";"));
        assert_eq!(text(&row[col("emails")]), c.emails.join(";"));
        assert_eq!(text(&row[col("rfm_segment")]), c.rfm_segment.as_str());
        assert_eq!(num(&row[col("purchases")]), f64::from(c.purchases));
        assert_eq!(num(&row[col("r")]), f64::from(c.r));
        assert_eq!(num(&row[col("f")]), f64::from(c.f));
        assert_eq!(num(&row[col("recency_days")]), c.recency_days as f64);
        assert_eq!(num(&row[col("revenue")]), c.revenue.to_f64().unwrap());
        assert_eq!(date(&row[col("first_purchase")]), serial(c.first_purchase));
        assert_eq!(date(&row[col("last_purchase")]), serial(c.last_purchase));
        assert_eq!(row[col("one_time")], Data::Bool(c.one_time));
        assert_eq!(row[col("sleeping")], Data::Bool(c.sleeping));
    }
    assert!(
        want.iter().any(|c| !c.phones.is_empty()),
        "the export carries phones"
    );
}

/// Logs in through the form; returns the session's `Cookie` value.
async fn login(c: &Client) -> String {
    let page = c.get("/ui/login", None).await;
    let anon = cookie_pair(&page.set_cookie("rebuy_login").unwrap());
    let ok = c
        .post(
            "/ui/login",
            Some(&anon),
            &[
                ("user", USER),
                ("password", PASSWORD),
                ("csrf", &csrf_of(&page.body)),
            ],
        )
        .await;
    assert_eq!(ok.status, 303);
    cookie_pair(&ok.set_cookie("rebuy_ui").unwrap())
}

/// Every `attr="..."` value on a page, in order.
fn attrs_of(html: &str, attr: &str) -> Vec<String> {
    html.split(&format!(" {attr}=\""))
        .skip(1)
        .map(|s| s[..s.find('"').unwrap()].to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn touches_retry_plan_apply_and_the_mapping_page() {
    use rebuy::outbox::RetryOutcome;
    use rebuy_core::{Pipeline, PortalId, User};
    // The demo mapping keeps the customer funnel on amoCRM customers.
    let mut account = amo_config(73, 80, 300);
    account.customers_mode = "periodicity".into();
    let env = amo_env(account).await;
    sync(&env, true).await.unwrap();
    let mut cfg = config(env.dir.path(), &env.emu.base_url);
    cfg.portals[0].mapping = rebuy::emulated::demo_mapping();
    // A second portal whose CRM is down (nothing listens on port 1), with the first one's
    // cache of pipelines and users and its tokens; its mapping names a pipeline that is not
    // there.
    let mut down = cfg.portals[0].clone();
    down.id = PortalId("down".into());
    down.base_url = "http://127.0.0.1:1/".parse().unwrap();
    down.mapping = serde_json::json!({"repeat_pipeline": "No such pipeline"});
    cfg.portals.push(down);
    let pipelines: Vec<Pipeline> = env.store.all().unwrap();
    let users: Vec<User> = env.store.all().unwrap();
    let tokens = env.store.load_tokens().unwrap().unwrap();
    drop(env.store);
    let state = AppState::new(&cfg, true).unwrap();
    let down_store = state.portal("down").unwrap().store.clone();
    down_store
        .write(|w| {
            w.put_all(&pipelines)?;
            w.put_all(&users)
        })
        .unwrap();
    down_store.save_tokens(&tokens).unwrap();
    let rt = state.portal("test").unwrap().clone();
    let store = rt.store.clone();

    // A failed touch.
    let action = Action {
        merged: Vec::new(),
        key: "test/after_purchase_7/contact:1/2026-01-01".into(),
        op: WriteOp::MoveDeal {
            deal: DealId(1),
            pipeline: PipelineId(2),
            stage: StageId("3".into()),
        },
        rule: "after_purchase_7".into(),
        customer: "contact:1".into(),
        summary: "move deal 1".into(),
    };
    store.outbox_enqueue(vec![action.clone()]).unwrap();
    let mut entry = store.outbox_get(&action.key).unwrap().unwrap();
    entry.attempts = 6;
    entry.state = ActionState::Failed {
        code: "rejected".into(),
        message: "Stage 3 is closed".into(),
        at: jiff::Timestamp::now(),
    };
    store.outbox_update(&[entry]).unwrap();

    let app = axum::Router::new().nest("/ui", rebuy::ui::router(state.clone(), settings()));
    let c = Client {
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        base: serve(app).await,
    };
    let session = login(&c).await;
    let cookie = Some(session.as_str());

    // Retry: a button on the failed row; CSRF-checked; the action is pending again.
    let t = c.get("/ui/p/test/touches", cookie).await;
    assert!(t.body.contains("data-action=\"retry\""));
    let csrf = csrf_of(&t.body);
    let key = action.key.as_str();
    assert_eq!(
        c.post("/ui/p/test/touches/retry", cookie, &[("key", key)])
            .await
            .status,
        403
    );
    assert_eq!(
        c.post(
            "/ui/p/test/touches/retry",
            None,
            &[("key", key), ("csrf", &csrf)]
        )
        .await
        .status,
        401
    );
    let r = c
        .post(
            "/ui/p/test/touches/retry",
            cookie,
            &[("key", key), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(r.status, 303);
    assert!(r.location().starts_with("/ui/p/test/touches?retried="));
    let e = store.outbox_get(key).unwrap().unwrap();
    assert_eq!((e.state, e.attempts), (ActionState::Pending, 0));
    assert_eq!(e.last_error.as_deref(), Some("rejected: Stage 3 is closed"));
    let t = c.get(r.location(), cookie).await;
    assert!(t.body.contains("data-notice=\"retried\""));
    assert!(!t.body.contains("data-action=\"retry\""), "no failure left");
    let again = c
        .post(
            "/ui/p/test/touches/retry",
            cookie,
            &[("key", key), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(again.status, 409, "only a failed action is retried");
    assert_eq!(store.outbox_retry("nope").unwrap(), RetryOutcome::Missing);

    // Dry run: nothing planned until asked; the plan shown is the library's.
    assert!(!t.body.contains("data-plan-actions"));
    assert_eq!(
        c.post("/ui/p/test/plan", cookie, &[]).await.status,
        403,
        "CSRF"
    );
    let before = store.outbox_counts().unwrap();
    let r = c.post("/ui/p/test/plan", cookie, &[("csrf", &csrf)]).await;
    assert_eq!((r.status, r.location()), (303, "/ui/p/test/touches#plan"));
    let conn = rt.handle().unwrap().connector;
    let want =
        rebuy::writeback::plan_portal(&rt.cfg, &store, Some(conn.as_ref()), jiff::Timestamp::now())
            .await
            .unwrap();
    assert!(
        !want.actions.is_empty(),
        "the demo playbooks plan something"
    );
    let t = c.get("/ui/p/test/touches", cookie).await;
    assert_eq!(
        attrs_of(&t.body, "data-plan-actions")[0],
        want.actions.len().to_string()
    );
    for (rule, n) in want.counts() {
        assert_eq!(
            attr_after(&t.body, &format!("data-rule=\"{rule}\""), "data-value").unwrap(),
            n.to_string(),
            "rule {rule}"
        );
    }
    let shown = attrs_of(&t.body, "data-plan-action");
    let expected: Vec<String> = want
        .actions
        .iter()
        .take(200)
        .map(|a| a.key.clone())
        .collect();
    assert_eq!(shown, expected, "the plan's actions, in order");
    assert_eq!(
        store.outbox_counts().unwrap(),
        before,
        "a dry run writes nothing"
    );

    // Apply: only the plan the page showed, once.
    let plan_id = attr_after(&t.body, "name=\"plan\"", "value").unwrap();
    assert_eq!(
        c.post(
            "/ui/p/test/apply",
            cookie,
            &[("csrf", &csrf), ("plan", "not-the-plan")]
        )
        .await
        .status,
        409
    );
    assert_eq!(
        c.post("/ui/p/test/apply", cookie, &[("plan", &plan_id)])
            .await
            .status,
        403
    );
    let r = c
        .post(
            "/ui/p/test/apply",
            cookie,
            &[("csrf", &csrf), ("plan", &plan_id)],
        )
        .await;
    assert_eq!(r.status, 303);
    let loc = r.location().to_owned();
    let q: std::collections::HashMap<String, String> =
        url::form_urlencoded::parse(loc.split_once('?').unwrap().1.as_bytes())
            .into_owned()
            .collect();
    let added: usize = q["applied"].parse().unwrap();
    let already: usize = q["already"].parse().unwrap();
    assert_eq!(added + already, want.actions.len());
    for a in &want.actions {
        assert!(
            store.outbox_get(&a.key).unwrap().is_some(),
            "{} in the outbox",
            a.key
        );
    }
    let t = c.get(&loc, cookie).await;
    assert!(t.body.contains("data-notice=\"applied\""));
    assert_eq!(
        c.post(
            "/ui/p/test/apply",
            cookie,
            &[("csrf", &csrf), ("plan", &plan_id)]
        )
        .await
        .status,
        409,
        "an applied plan is gone"
    );

    // Results: the same figures as `rebuy results`, per rule and overall.
    let want =
        rebuy::results::portal_results(&store, &rt.cfg, jiff::Timestamp::now(), None).unwrap();
    let res = c.get("/ui/p/test/results", cookie).await;
    assert_eq!(res.status, 200);
    assert!(res.body.contains("data-rule=\"overall\""), "{}", res.body);
    assert_eq!(
        attrs_of(&res.body, "data-treated"),
        std::iter::once(&want.overall)
            .chain(&want.rules)
            .map(|l| l.treated.customers.to_string())
            .collect::<Vec<_>>()
    );
    let res = c
        .get("/ui/p/test/results?period=2026-13&lang=ru", cookie)
        .await;
    assert_eq!(res.status, 400);
    assert!(res.body.contains("2026-13"), "{}", res.body);

    // Mapping, live: the CRM's pipelines, users and fields, and `rebuy mapping`'s verdict.
    let report = rebuy::writeback::mapping_report(&rt.cfg, &store, conn.as_ref(), None)
        .await
        .unwrap();
    let m = c.get("/ui/p/test/mapping", cookie).await;
    assert_eq!(m.status, 200);
    assert!(!m.body.contains("data-offline"));
    assert_eq!(
        m.body.contains("data-mapping=\"ok\""),
        report.ok(),
        "{:?}",
        report.problems
    );
    let ids = |v: Vec<String>| {
        let mut v = v;
        v.sort();
        v
    };
    assert_eq!(
        ids(attrs_of(&m.body, "data-pipeline")),
        ids(env
            .emu
            .emulator
            .with_data(|d| d.pipelines.keys().map(|k| k.to_string()).collect()))
    );
    assert_eq!(
        ids(attrs_of(&m.body, "data-user")),
        ids(report.users.iter().map(|u| u.id.0.to_string()).collect())
    );
    let fields = report.fields.as_ref().expect("amoCRM lists its fields");
    assert_eq!(attrs_of(&m.body, "data-field").len(), fields.len());
    assert!(
        report.ok(),
        "the demo mapping resolves: {:?}",
        report.problems
    );
    let seg_field = fields
        .iter()
        .find(|f| f.name == "Сегмент" && f.entity == rebuy_core::EntityKind::Contacts)
        .unwrap();
    assert_ne!(
        attr_after(
            &m.body,
            &format!("data-field=\"{}\"", seg_field.id),
            "data-used"
        )
        .unwrap(),
        "0",
        "the segment field is marked as used"
    );
    for pb in attrs_of(&m.body, "data-playbook") {
        assert!(
            rebuy::emulated::demo_mapping()["playbooks"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p == &serde_json::Value::String(pb.clone()))
        );
    }
    assert!(!attrs_of(&m.body, "data-playbook").is_empty());

    // Mapping, CRM down: the cached pipelines, said so, and the mapping's problems, within
    // the page's wait for the CRM.
    let asked = std::time::Instant::now();
    let m = c.get("/ui/p/down/mapping", cookie).await;
    assert!(
        asked.elapsed() < rebuy::ui::pages::MAPPING_CRM_WAIT + std::time::Duration::from_secs(2)
    );
    assert_eq!(m.status, 200);
    assert!(m.body.contains("data-offline"), "{}", m.body);
    assert_eq!(
        ids(attrs_of(&m.body, "data-pipeline")),
        ids(pipelines.iter().map(|p| p.id.0.to_string()).collect())
    );
    let drt = state.portal("down").unwrap();
    let down_report = rebuy::writeback::mapping_report(
        &drt.cfg,
        &drt.store,
        drt.handle().unwrap().connector.as_ref(),
        Some(rebuy::ui::pages::MAPPING_CRM_WAIT),
    )
    .await
    .unwrap();
    assert!(down_report.offline.is_some());
    assert!(!down_report.problems.is_empty());
    assert!(m.body.contains("data-mapping=\"problems\""));
    assert_eq!(
        attrs_of(&m.body, "data-problem").len(),
        down_report.problems.len()
    );
}
