//! The binary: config check, crash and resume, portals isolated from each other, status, demo.
use crate::support::*;
use rebuy_core::EntityKind;

#[test]
fn config_check_lists_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        r#"
        [[portal]]
        id = "shop"
        kind = "amocrm"
        base_url = "not a url"
        [portal.auth]
        type = "oauth"
        client_id = ""
        client_secret_env = "REBUY_TEST_UNSET_SECRET"
        redirect_uri = "https://example.com/cb"

        [[portal]]
        id = "shop"
        kind = "bitrix24"
        base_url = "https://x.bitrix24.ru"
        time_zone = "Nowhere/City"
        [portal.auth]
        type = "long_lived_token"
        token_env = "REBUY_TEST_UNSET_TOKEN"
        "#,
    )
    .unwrap();
    let out = rebuy(
        &["--config", path.to_str().unwrap(), "config", "check"],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "bad.toml: portal[0].base_url",
        "portal[0].auth.client_id: must not be empty",
        "portal[0].auth.client_secret_env: environment variable REBUY_TEST_UNSET_SECRET is not set",
        "portal[1].time_zone: unknown time zone",
        "portal[1].auth.type: long_lived_token is an amoCRM auth",
        "portal[1].auth.token_env: environment variable REBUY_TEST_UNSET_TOKEN is not set",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
}

#[test]
fn config_check_lists_ui_problems_and_ignores_the_ui_env_fallback() {
    let dir = tempfile::tempdir().unwrap();
    let good = write_config(dir.path(), &[("one", "http://127.0.0.1:9", 7)]);
    // The dashboard's fallback login and the browser tests' switch are not config keys.
    let env = [
        ("REBUY_UI_USER", "admin"),
        ("REBUY_UI_PASSWORD", "pw"),
        ("REBUY_REQUIRE_BROWSER", "1"),
    ];
    let out = rebuy(
        &["--config", good.to_str().unwrap(), "config", "check"],
        &env,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bad = dir.path().join("bad-ui.toml");
    let text = std::fs::read_to_string(&good).unwrap()
        + r#"
        [server.ui]
        default_lang = "fr"
        [[server.ui.users]]
        name = "anna"
        password_env = "REBUY_TEST_UNSET_UI_PASSWORD"
        "#;
    std::fs::write(&bad, text).unwrap();
    let out = rebuy(
        &["--config", bad.to_str().unwrap(), "config", "check"],
        &env,
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "bad-ui.toml: server.ui.default_lang: \"fr\" is not a language",
        "server.ui.users[0].password_env: environment variable REBUY_TEST_UNSET_UI_PASSWORD is not set",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
}

/// `rebuy hash-password` prints an argon2id hash that logs in; `config check` accepts it
/// silently and warns about plain and `sha256:` passwords.
#[test]
fn hash_password_and_weak_password_warnings() {
    use std::io::Write;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_rebuy"))
        .arg("hash-password")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"correct horse\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let hash = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    let ui = rebuy::ui::UiSettings::single("anna", &hash);
    assert_eq!(ui.check("anna", "correct horse").as_deref(), Some("anna"));
    assert!(ui.check("anna", "correct horse\n").is_none());

    let dir = tempfile::tempdir().unwrap();
    let good = write_config(dir.path(), &[("one", "http://127.0.0.1:9", 7)]);
    let path = dir.path().join("ui.toml");
    let text = std::fs::read_to_string(&good).unwrap()
        + r#"
        [server.ui]
        [[server.ui.users]]
        name = "anna"
        password_env = "ANNA_PW"
        [[server.ui.users]]
        name = "boris"
        password_env = "BORIS_PW"
        [[server.ui.users]]
        name = "vera"
        password_env = "VERA_PW"
        "#;
    std::fs::write(&path, text).unwrap();
    let sha = format!("sha256:{}", "ab".repeat(32));
    let out = rebuy(
        &["--config", path.to_str().unwrap(), "config", "check"],
        &[("ANNA_PW", &hash), ("BORIS_PW", "plain"), ("VERA_PW", &sha)],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("\"anna\""), "{text}");
    assert!(
        text.contains("user \"boris\": its password is stored as plain text"),
        "{text}"
    );
    assert!(
        text.contains("user \"vera\": its password is an unsalted sha256"),
        "{text}"
    );
    let out = rebuy(
        &["--config", path.to_str().unwrap(), "config", "check"],
        &[
            ("ANNA_PW", "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA"),
            ("BORIS_PW", "b"),
            ("VERA_PW", "v"),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("ANNA_PW starts with \"$argon2\" but has no salt or no hash"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn unknown_portal_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &[("one", "http://127.0.0.1:9", 7)]);
    let out = rebuy(
        &[
            "--config",
            path.to_str().unwrap(),
            "sync",
            "--portal",
            "nope",
        ],
        &[],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown portal \"nope\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_sync_resumes_with_no_gap_and_no_duplicate() {
    let env = amo_env(amo_config(21, 1500, 4500)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &[("crash", &env.emu.base_url, TEST_RPS)]);
    let cfg = config.to_str().unwrap().to_owned();
    let args = |extra: &[&str]| {
        let mut a = vec!["--config".to_owned(), cfg.clone()];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let out = rebuy_async(args(&["auth", "--portal", "crash"]), vec![]).await;
    assert!(
        out.status.success(),
        "auth: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Abort (like kill -9) after the 6th committed page.
    let out = rebuy_async(
        args(&["sync", "--portal", "crash", "--quiet"]),
        vec![("REBUY_FAILPOINTS".into(), "sync.after_page=6".into())],
    )
    .await;
    assert!(!out.status.success(), "the failpoint aborts the process");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("failpoint sync.after_page"), "{stderr}");

    let store = rebuy::store::Store::open(&dir.path().join("data"), &"crash".into()).unwrap();
    let partial: u64 = [
        EntityKind::Contacts,
        EntityKind::Deals,
        EntityKind::Companies,
    ]
    .iter()
    .map(|k| store.count(*k).unwrap())
    .sum();
    assert!(partial > 0, "pages committed before the crash survive");
    let interrupted = [
        EntityKind::Contacts,
        EntityKind::Deals,
        EntityKind::Companies,
    ]
    .iter()
    .any(|k| store.sync_state(*k).unwrap().in_progress.is_some());
    assert!(interrupted, "the interrupted listing's cursor is stored");
    drop(store);

    let out = rebuy_async(args(&["sync", "--portal", "crash", "--quiet"]), vec![]).await;
    assert!(
        out.status.success(),
        "resume: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("(full)"),
        "the resumed run finishes the full listing: {stdout}"
    );

    // Compare with the emulator through the shared helper on a store opened on the same file.
    let resumed = Env {
        store: rebuy::store::Store::open(&dir.path().join("data"), &"crash".into()).unwrap(),
        ..env
    };
    assert_cache_equals_emulator(&resumed);
    // The resumed run did not start over: it read fewer deals than the account holds.
    let total_leads = resumed.emulator().with_data(|d| d.leads.len() as u64);
    let read: u64 = stdout
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("deals")
                .and_then(|r| r.split_whitespace().next())
                .and_then(|n| n.parse().ok())
        })
        .expect("report has a deals line");
    assert!(
        read < total_leads,
        "resumed run read {read} deals of {total_leads}: it started over"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_failing_portal_does_not_stop_the_others_and_status_reports_it() {
    let good = amo_env(amo_config(31, 100, 300)).await;
    let bad = amo_env(amo_config(32, 100, 300)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &[
            ("good", &good.emu.base_url, TEST_RPS),
            ("bad", &bad.emu.base_url, TEST_RPS),
        ],
    );
    let cfg = config.to_str().unwrap().to_owned();
    for p in ["good", "bad"] {
        let out = rebuy_async(
            vec![
                "--config".into(),
                cfg.clone(),
                "auth".into(),
                "--portal".into(),
                p.into(),
            ],
            vec![],
        )
        .await;
        assert!(out.status.success());
    }
    // Revoke the bad portal's refresh token at its CRM and expire its access token.
    {
        let store = rebuy::store::Store::open(&dir.path().join("data"), &"bad".into()).unwrap();
        let stored = store.load_tokens().unwrap().unwrap();
        let settings = rebuy::portal::amo_settings(&bad.portal).unwrap();
        let refresher = rebuy_amocrm::auth::AmoRefresher::new(&settings);
        rebuy_core::TokenRefresher::refresh(&refresher, &stored)
            .await
            .unwrap();
        bad.emulator().expire_access_tokens();
    }
    let out = rebuy_async(
        vec![
            "--config".into(),
            cfg.clone(),
            "sync".into(),
            "--quiet".into(),
        ],
        vec![],
    )
    .await;
    assert!(!out.status.success(), "a failed portal fails the run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("portal good: synced"), "{stdout}");
    assert!(
        stderr.contains("portal bad: sync failed") && stderr.contains("re-authorization"),
        "{stderr}"
    );

    let out = rebuy_async(vec!["--config".into(), cfg, "status".into()], vec![]).await;
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(status.contains("NEEDS RE-AUTHORIZATION"), "{status}");
    let good_contacts = good.emulator().with_data(|d| d.contacts.len());
    assert!(
        status.contains(&format!("{:<10} {good_contacts:>8}", "contacts")),
        "{status}"
    );
}

#[test]
fn demo_runs_end_to_end() {
    let out = rebuy(
        &["demo", "--contacts", "150", "--leads", "450", "--quiet"],
        &[],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("demo-amocrm: authorised over OAuth"),
        "{stdout}"
    );
    assert!(
        stdout.contains("demo-bitrix24: authorised over OAuth"),
        "{stdout}"
    );
    assert!(stdout.contains("portal demo-amocrm: synced"), "{stdout}");
    assert!(stdout.contains("portal demo-bitrix24: synced"), "{stdout}");
    assert_eq!(stdout.matches(", 0 rate-limited").count(), 2, "{stdout}");
    assert!(stdout.contains("== demo-bitrix24 =="), "{stdout}");
    // The amoCRM write-back: the funnel on customers and a created segment field.
    assert!(
        stdout.contains("1 field(s) created") && !stdout.contains(" 0 customer(s) created"),
        "{stdout}"
    );
    assert!(
        stdout.contains("customer ") && stdout.contains("next purchase"),
        "{stdout}"
    );
    assert!(
        stdout.contains("amoCRM: new lead") && stdout.contains("Bitrix24: new deal"),
        "{stdout}"
    );
}

/// An amoCRM user without rights to companies and events (403): the sync still caches
/// contacts and deals, exits 0 with a warning, and `rebuy status` shows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_without_rights_to_optional_data_warns_and_succeeds() {
    let env = amo_env(amo_config(33, 120, 360)).await;
    env.emulator()
        .set_denied(&["/api/v4/companies", "/api/v4/events"]);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &[("shop", &env.emu.base_url, TEST_RPS)]);
    let cfg = config.to_str().unwrap().to_owned();
    let args = |extra: &[&str]| {
        let mut a = vec!["--config".to_owned(), cfg.clone()];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let out = rebuy_async(args(&["auth", "--portal", "shop"]), vec![]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for round in ["full", "incremental"] {
        let out = rebuy_async(args(&["sync", "--portal", "shop", "--quiet"]), vec![]).await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{round}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("warning: companies:"), "{round}: {stdout}");
        if round == "incremental" {
            assert!(stdout.contains("warning: deletion log:"), "{stdout}");
        }
    }
    let store = rebuy::store::Store::open(&dir.path().join("data"), &"shop".into()).unwrap();
    let (contacts, leads) = env
        .emulator()
        .with_data(|d| (d.contacts.len() as u64, d.leads.len() as u64));
    assert_eq!(store.count(EntityKind::Contacts).unwrap(), contacts);
    assert_eq!(store.count(EntityKind::Deals).unwrap(), leads);
    assert_eq!(store.count(EntityKind::Companies).unwrap(), 0);
    drop(store);
    let out = rebuy_async(args(&["status"]), vec![]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("went without 2 optional part(s)"),
        "{stdout}"
    );
    assert!(stdout.contains("warning: companies:"), "{stdout}");

    // Essential data stays essential: without contacts the sync fails.
    env.emulator().set_denied(&["/api/v4/contacts"]);
    let out = rebuy_async(args(&["sync", "--portal", "shop", "--quiet"]), vec![]).await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("syncing contacts"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `rebuy backtest` gives one row per model and baseline and marks the chosen one; `rebuy
/// report` names the driving model with the MAE and AUC of its backtest row. (Slow in debug:
/// each backtest fits every model, about 25 s here.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backtest_marks_the_chosen_model_and_report_names_the_driving_one() {
    let env = amo_env(amo_config(34, 200, 800)).await;
    // The generated history ends on a fixed day: the holdout is the months before it.
    let as_of = "2026-03-01";
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &[("shop", &env.emu.base_url, TEST_RPS)]);
    let cfg = config.to_str().unwrap().to_owned();
    let args = |extra: &[&str]| {
        let mut a = vec!["--config".to_owned(), cfg.clone()];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    for step in [
        &["auth", "--portal", "shop"][..],
        &["sync", "--portal", "shop", "--quiet"],
    ] {
        let out = rebuy_async(args(step), vec![]).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = rebuy_async(
        args(&[
            "backtest", "--portal", "shop", "--as-of", as_of, "--format", "json",
        ]),
        vec![],
    )
    .await;
    let b: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // (The table form's columns and `chosen` mark are unit-tested in analytics::backtest.)
    assert_eq!(
        b["rows"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["chosen"] == true)
            .count(),
        1,
        "one row is chosen: {b}"
    );
    let out = rebuy_async(
        args(&["report", "--portal", "shop", "--as-of", as_of]),
        vec![],
    )
    .await;
    let report = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{report}");
    let line = report
        .lines()
        .find(|l| l.starts_with("driving model: "))
        .unwrap_or_else(|| panic!("no driving model line:\n{report}"));
    let name = line["driving model: ".len()..].split(" (").next().unwrap();
    let row = b["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("{name} is not a backtest row: {line}"));
    // One model: the backtest's choice drives the predictions, unless its fit on the whole
    // history is degenerate (the line then says so and names the one that took over).
    let chosen = b["chosen"].as_str().unwrap();
    assert!(
        row["chosen"] == true
            || line.contains(&format!(
                "the backtest chose {chosen}, whose fit on the whole history is degenerate"
            )),
        "{line} vs {b}"
    );
    let fig = |k: &str| {
        row[k]
            .as_f64()
            .unwrap_or_else(|| panic!("{k} of {row} ({line})"))
    };
    let mae = format!("MAE {:.3}", fig("mae"));
    let auc = format!("AUC {:.3}", fig("auc"));
    assert!(
        line.contains(&mae) && line.contains(&auc),
        "{line} vs {row}"
    );
}
