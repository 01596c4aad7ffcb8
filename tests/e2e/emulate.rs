//! `rebuy emulate`: the banner and the flags, against the real binary on 127.0.0.1.
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A running `rebuy emulate` child process with its banner; killed on drop.
pub struct Emulate {
    child: Child,
    /// The banner lines printed before serving.
    pub banner: Vec<String>,
    /// `http://127.0.0.1:PORT` or `https://...`.
    pub base_url: String,
}

impl Drop for Emulate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Emulate {
    /// Starts `rebuy emulate {crm} --port 0 {args}` and reads its banner up to the line that
    /// starts with `last` (trimmed).
    pub fn start(crm: &str, args: &[&str], last: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_rebuy"))
            .args(["emulate", crm, "--port", "0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("rebuy emulate starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut banner = Vec::new();
        let mut me = Self {
            child,
            banner: Vec::new(),
            base_url: String::new(),
        };
        loop {
            match rx.recv_timeout(Duration::from_secs(20)) {
                Ok(line) => {
                    let done = line.trim_start().starts_with(last);
                    banner.push(line);
                    if done {
                        break;
                    }
                }
                Err(e) => panic!("no banner line {last:?} ({e}); so far: {banner:#?}"),
            }
        }
        me.base_url = banner
            .iter()
            .find_map(|l| l.split("listening on ").nth(1))
            .expect("the banner names the address")
            .trim()
            .to_owned();
        me.banner = banner;
        me
    }

    /// The value of the banner line `name:`.
    pub fn line(&self, name: &str) -> &str {
        let key = format!("{name}:");
        self.banner
            .iter()
            .find_map(|l| l.trim_start().strip_prefix(&key))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {key} in {:#?}", self.banner))
    }
}

#[test]
fn the_banner_prints_a_history_that_ends_today_or_at_the_pinned_day() {
    let today = jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date();
    let e = Emulate::start(
        "amocrm",
        &["--contacts", "40", "--leads", "120"],
        "rate limit",
    );
    let period = e.line("history");
    assert!(period.ends_with(&format!(".. {today}")), "{period}");
    assert!(!period.contains("before today"), "{period}");
    let e = Emulate::start(
        "bitrix24",
        &[
            "--contacts",
            "40",
            "--leads",
            "120",
            "--history-end",
            "2025-06-01",
        ],
        "limits",
    );
    assert!(
        e.line("history").starts_with("2022-06-02 .. 2025-06-01"),
        "{:?}",
        e.banner
    );
    let out = super::support::rebuy(&["emulate", "amocrm", "--history-end", "someday"], &[]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("expected a date like"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn secs(v: &serde_json::Value) -> i64 {
    v.as_i64().unwrap_or_else(|| panic!("not seconds: {v}"))
}

/// `--long-lived-token`, `--clock-offset`, `--rate`, `--block-after`, `--deny` and the unblock
/// endpoint of the amoCRM emulator.
#[tokio::test]
async fn amocrm_flags_take_effect() {
    let e = Emulate::start(
        "amocrm",
        &[
            "--contacts",
            "40",
            "--leads",
            "120",
            "--long-lived-token",
            "llt-secret-1",
            "--clock-offset",
            "7200",
            "--rate",
            "3",
            "--block-after",
            "2",
            "--deny",
            "/api/v4/companies",
        ],
        "rate limit",
    );
    assert_eq!(e.line("clock offset"), "+7200 s");
    let http = client();
    let url = |p: &str| format!("{}{p}", e.base_url);
    let get = |p: &str, token: &str| http.get(url(p)).bearer_auth(token).send();
    assert_eq!(
        get("/api/v4/account", "llt-secret-1")
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        get("/api/v4/account", "llt-wrong").await.unwrap().status(),
        401
    );
    assert_eq!(
        get("/api/v4/companies", "llt-secret-1")
            .await
            .unwrap()
            .status(),
        403
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // A lead created now carries the emulator's clock, two hours ahead.
    let before = jiff::Timestamp::now().as_second();
    let created: serde_json::Value = http
        .post(url("/api/v4/leads"))
        .bearer_auth("llt-secret-1")
        .json(&serde_json::json!([{"name": "clock check", "price": 100}]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = secs(&created["_embedded"]["leads"][0]["id"]);
    let lead: serde_json::Value = get(&format!("/api/v4/leads/{id}"), "llt-secret-1")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let skew = secs(&lead["created_at"]) - before;
    assert!(
        (7190..=7230).contains(&skew),
        "created_at is {skew} s ahead"
    );
    // Three requests a second; more than two refusals within a minute block the integration.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut codes = Vec::new();
    for _ in 0..8 {
        codes.push(
            get("/api/v4/account", "llt-secret-1")
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert_eq!(&codes[..3], &[200, 200, 200], "{codes:?}");
    assert!(codes.contains(&429) && codes.ends_with(&[403]), "{codes:?}");
    let r: serde_json::Value = http
        .post(url("/_emulator/unblock"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["unblocked"], true, "{r}");
    assert_eq!(
        get("/api/v4/account", "llt-secret-1")
            .await
            .unwrap()
            .status(),
        200
    );
}

/// `--faults` on the amoCRM emulator: gateway errors, truncated JSON and slow answers on
/// reads, and a write that is applied before its connection drops.
#[tokio::test]
async fn amocrm_fault_flags_take_effect() {
    let e = Emulate::start(
        "amocrm",
        &[
            "--contacts",
            "40",
            "--leads",
            "120",
            "--rate",
            "0",
            "--long-lived-token",
            "t",
            "--faults",
            "5xx=0.2,malformed=0.2,slow=0.2,slow-ms=400,drop-after-write=0.3",
        ],
        "rate limit",
    );
    assert!(
        e.line("faults").contains("drop-after-write=0.3"),
        "{:?}",
        e.banner
    );
    let http = client();
    let (mut gateway, mut broken, mut slow, mut fine) = (0, 0, 0, 0);
    for _ in 0..40 {
        let t = std::time::Instant::now();
        let r = http
            .get(format!("{}/api/v4/account", e.base_url))
            .bearer_auth("t")
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body = r.bytes().await.unwrap();
        if matches!(status, 502..=504) {
            gateway += 1;
        } else if serde_json::from_slice::<serde_json::Value>(&body).is_err() {
            broken += 1;
        } else if t.elapsed() >= Duration::from_millis(400) {
            slow += 1;
        } else {
            fine += 1;
        }
    }
    assert!(
        gateway > 0 && broken > 0 && slow > 0 && fine > 0,
        "{gateway} {broken} {slow} {fine}"
    );
    // Writes until one connection drops: that lead exists all the same.
    let mut dropped = None;
    for i in 0..30 {
        let name = format!("drop probe {i}");
        let r = http
            .post(format!("{}/api/v4/leads", e.base_url))
            .bearer_auth("t")
            .json(&serde_json::json!([{"name": name}]))
            .send()
            .await;
        // A dropped connection fails while reading the body (a gateway error or a truncated
        // answer arrives whole, and their writes are not applied).
        let complete = match r {
            Ok(r) => r.bytes().await.is_ok(),
            Err(_) => false,
        };
        if !complete {
            dropped = Some(name);
            break;
        }
    }
    let name = dropped.expect("a write connection dropped");
    let mut found = false;
    for _ in 0..10 {
        let r = http
            .get(format!("{}/api/v4/leads", e.base_url))
            .bearer_auth("t")
            .query(&[("query", name.as_str())])
            .send()
            .await
            .unwrap();
        if let Ok(v) = r.json::<serde_json::Value>().await {
            found = v["_embedded"]["leads"]
                .as_array()
                .is_some_and(|l| l.iter().any(|x| x["name"] == name.as_str()));
            break;
        }
    }
    assert!(
        found,
        "the write behind the dropped connection was applied: {name}"
    );
}

/// Calls a Bitrix24 REST method through the banner's inbound webhook.
async fn b24_call(
    http: &reqwest::Client,
    webhook: &str,
    method: &str,
    params: serde_json::Value,
) -> (u16, serde_json::Value) {
    let r = http
        .post(format!("{webhook}{method}"))
        .json(&params)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}

/// `--operating-limit` with `--method-cost-ms` (so `OPERATION_TIME_LIMIT` is reachable),
/// `--enterprise`, `--clock-offset` and `--deny` of the Bitrix24 emulator.
#[tokio::test]
async fn bitrix24_flags_take_effect() {
    let e = Emulate::start(
        "bitrix24",
        &[
            "--contacts",
            "40",
            "--leads",
            "120",
            "--operating-limit",
            "1",
            "--method-cost-ms",
            "400",
            "--enterprise",
            "--clock-offset=-3600",
            "--deny",
            "crm.company.list",
        ],
        "limits",
    );
    assert!(
        e.line("limits")
            .starts_with("bucket 250 drained 5/s, operating 1 s"),
        "{:?}",
        e.banner
    );
    let webhook = e.line("webhook").to_owned();
    let http = client();
    // 400 ms a call against 1 s per window: the third call crosses the limit, the fourth is
    // refused; other methods are not affected.
    let mut codes = Vec::new();
    for _ in 0..4 {
        let (status, body) =
            b24_call(&http, &webhook, "crm.deal.list", serde_json::json!({})).await;
        codes.push((status, body["error"].as_str().unwrap_or("").to_owned()));
    }
    assert_eq!(codes[2].0, 200, "{codes:?}");
    assert_eq!(
        codes[3],
        (429, "OPERATION_TIME_LIMIT".to_owned()),
        "{codes:?}"
    );
    let (status, _) = b24_call(&http, &webhook, "crm.contact.list", serde_json::json!({})).await;
    assert_eq!(status, 200);
    let (status, body) = b24_call(&http, &webhook, "crm.company.list", serde_json::json!({})).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("insufficient_scope")),
        "{body}"
    );
    // The Enterprise bucket takes 80 quick requests (the cloud's 50 would refuse some).
    let mut over = 0;
    for _ in 0..80 {
        let (status, body) =
            b24_call(&http, &webhook, "crm.deal.fields", serde_json::json!({})).await;
        if status == 503 || body["error"] == "QUERY_LIMIT_EXCEEDED" {
            over += 1;
        }
    }
    assert_eq!(over, 0, "the Enterprise bucket refused {over} of 80");
    // A deal created now carries the emulator's clock, an hour behind.
    let before = jiff::Timestamp::now().as_second();
    let (_, added) = b24_call(
        &http,
        &webhook,
        "crm.deal.add",
        serde_json::json!({"fields": {"TITLE": "clock check"}}),
    )
    .await;
    let id = added["result"].clone();
    let (_, deal) = b24_call(
        &http,
        &webhook,
        "crm.deal.get",
        serde_json::json!({"id": id}),
    )
    .await;
    let created: jiff::Timestamp = deal["result"]["DATE_CREATE"]
        .as_str()
        .unwrap_or_else(|| panic!("{deal}"))
        .parse()
        .unwrap();
    let skew = created.as_second() - before;
    assert!(
        (-3610..=-3570).contains(&skew),
        "DATE_CREATE is {skew} s off"
    );
}

/// `--tls`: the Bitrix24 emulator speaks HTTPS with the certificate it wrote, answers plain
/// HTTP with Bitrix24's "Https required.", and rebuy syncs from it trusting the certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bitrix24_over_tls_with_a_self_signed_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("emulator.pem");
    let e = Emulate::start(
        "bitrix24",
        &[
            "--contacts",
            "30",
            "--leads",
            "90",
            "--tls",
            "--tls-cert",
            cert.to_str().unwrap(),
        ],
        "limits",
    );
    assert!(
        e.base_url.starts_with("https://127.0.0.1:"),
        "{}",
        e.base_url
    );
    assert!(e.line("tls cert").starts_with(cert.to_str().unwrap()));
    let webhook = e.line("webhook").to_owned();
    let pem = std::fs::read(&cert).unwrap();
    let trusting = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .build()
        .unwrap();
    let (status, body) =
        b24_call(&trusting, &webhook, "crm.deal.list", serde_json::json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["total"], 90);
    // Without the certificate the handshake fails; over plain HTTP the portal refuses.
    assert!(
        client()
            .get(format!("{webhook}profile"))
            .send()
            .await
            .is_err()
    );
    let plain = webhook.replacen("https://", "http://", 1);
    let r = client()
        .get(format!("{plain}profile"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error_description"], "Https required.", "{v}");
    // rebuy trusts it through SSL_CERT_FILE, as any rustls or OpenSSL client.
    let config = dir.path().join("rebuy.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\n[[portal]]\nid = \"b24\"\nkind = \"bitrix24\"\nbase_url = \"{}\"\n[portal.auth]\ntype = \"webhook\"\nurl_env = \"B24_WEBHOOK\"\n",
            dir.path().join("data").display().to_string(),
            e.base_url
        ),
    )
    .unwrap();
    let out = super::support::rebuy_async(
        vec![
            "--config".into(),
            config.to_str().unwrap().into(),
            "sync".into(),
            "--portal".into(),
            "b24".into(),
            "--quiet".into(),
        ],
        vec![
            ("B24_WEBHOOK".into(), webhook.clone()),
            ("SSL_CERT_FILE".into(), cert.to_str().unwrap().into()),
        ],
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("portal b24: synced"), "{stdout}");
}

/// `--tls` on amoCRM: HTTPS with the written certificate, `https://` links, nginx's refusal of
/// plain HTTP.
#[tokio::test]
async fn amocrm_over_tls_links_stay_on_https() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("amo.pem");
    let e = Emulate::start(
        "amocrm",
        &[
            "--contacts",
            "30",
            "--leads",
            "90",
            "--long-lived-token",
            "t",
            "--tls",
            "--tls-cert",
            cert.to_str().unwrap(),
        ],
        "rate limit",
    );
    let pem = std::fs::read(&cert).unwrap();
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .build()
        .unwrap();
    let v: serde_json::Value = http
        .get(format!("{}/api/v4/leads?limit=10", e.base_url))
        .bearer_auth("t")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let next = v["_links"]["next"]["href"].as_str().unwrap();
    assert!(next.starts_with("https://127.0.0.1:"), "{next}");
    let plain = e.base_url.replacen("https://", "http://", 1);
    let r = client()
        .get(format!("{plain}/api/v4/leads"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("plain HTTP request was sent to HTTPS port")
    );
}
