//! The `/ui` dashboard against a synced emulated portal: login, sessions and CSRF, and every
//! page's figures compared with the analysis of the same cache. HTTP-level (reqwest with a
//! manual `Cookie` header); no browser.
use crate::support::*;
use rebuy::config::Config;
use rebuy::outbox::{Action, ActionState};
use rebuy::server::AppState;
use rebuy::ui::UiSettings;
use rebuy_core::{DealId, PipelineId, StageId, WriteOp};
use rebuy_emulator::amocrm::AmoConfig;
use secrecy::SecretString;
use std::time::Duration;

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
    UiSettings {
        admin_user: USER.into(),
        admin_password_hash_or_plain: SecretString::from(PASSWORD),
        cookie_secure: false,
        cache_ttl: Duration::from_secs(300),
    }
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

    // The login page starts an anonymous session with a secure-by-default cookie.
    let page = c.get("/ui/login", None).await;
    assert_eq!(page.status, 200);
    let set = page.set_cookie("rebuy_ui").expect("session cookie");
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
    assert_eq!(login_csrf.len(), 64);

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
    // The anonymous session opens no page.
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
    assert_eq!(replay.status, 403, "the login session is used up");
    let cookie = Some(session.as_str());

    // Portals: connected, then flagged for re-authorization with a connect button.
    let portals = c.get("/ui", cookie).await;
    assert_eq!(portals.status, 200);
    assert!(portals.body.contains("data-portal=\"test\""));
    assert!(
        portals.body.contains("connected") && !portals.body.contains("/oauth/test/start"),
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
    assert!(portals.body.contains("href=\"/oauth/test/start\""));
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
    assert_eq!(ov.body.matches("<svg").count(), 2, "two monthly charts");
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
    assert_eq!(keys_of(&page.body).len() as u64, seg.customers.min(500));
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
        assert_eq!(&row[col("phones")], c.phones.join(";"));
        assert_eq!(&row[col("emails")], c.emails.join(";"));
        assert_eq!(&row[col("rfm_segment")], seg.segment.as_str());
    }
    assert!(
        members.iter().any(|c| !c.phones.is_empty()),
        "the export carries phones"
    );

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
