//! Proof of value on the amoCRM emulator: control groups in the CRM's recorded writes, task
//! completion read back on sync, and `results` recovering a simulated uplift (and reporting
//! none when none was simulated), over several simulated months.
use crate::support::*;
use jiff::Timestamp;
use jiff::civil::{Date, date};
use rebuy::outbox::DrainOptions;
use rebuy::results::{Results, Verdict};
use rebuy::writeback;
use rebuy_core::Connector;
use rebuy_emulator::answers::AnswerSim;
use rust_decimal::Decimal;
use serde_json::json;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

/// The simulated months: each starts on a Monday with a seasonal touch of every customer.
const MONTHS: [(i16, i8, i8); 3] = [(2027, 1, 4), (2027, 2, 1), (2027, 3, 1)];
/// The simulated period of each month (and the outcome window, so windows do not overlap).
const PERIOD_DAYS: i64 = 25;
const AMOUNT: i64 = 1000;

fn connector(env: &Env) -> Arc<dyn Connector> {
    rebuy::portal::open(&env.portal, env.store.clone())
        .unwrap()
        .connector
}

fn start(env: &Env, d: Date) -> Timestamp {
    d.to_zoned(env.portal.time_zone.clone())
        .unwrap()
        .timestamp()
}

/// Runs the months: apply at the month's start, the emulator answers, sync; returns the
/// results at the end and the customers held out of month 1 with those tasked in month 1.
async fn run_months(sim: AnswerSim) -> (Results, BTreeSet<String>, BTreeSet<String>, u64) {
    let mut env = amo_env(amo_config(77, 420, 900)).await;
    sync(&env, true).await.unwrap();
    let mut pb = String::from("name = \"proof\"\n");
    for (i, (_, m, d)) in MONTHS.iter().enumerate() {
        pb.push_str(&format!(
            "[[seasonal]]\nid = \"m{}\"\ndate = \"{m:02}-{d:02}\"\ngoal = \"Предложить новинки\"\n",
            i + 1
        ));
    }
    let path = env.dir.path().join("proof.toml");
    std::fs::write(&path, pb).unwrap();
    env.portal.mapping = json!({
        "playbooks": [path.display().to_string()],
        "horizon_days": 6, "lookback_days": 0,
        "holdout_percent": 50,
        "outcome_window_days": PERIOD_DAYS,
    });
    let conn = connector(&env);
    let (mut held_1, mut tasked_1) = (BTreeSet::new(), BTreeSet::new());
    let mut completed_read = 0;
    for (i, (y, m, d)) in MONTHS.iter().enumerate() {
        let from = start(&env, date(*y, *m, *d));
        let plan = writeback::plan_portal(&env.portal, &env.store, Some(conn.as_ref()), from)
            .await
            .unwrap();
        assert!(plan.held_out.customers > 0, "{:?}", plan.held_out);
        let before = env.emulator().writes().tasks_created.len();
        let report = writeback::apply_plan(
            conn.as_ref(),
            &env.store,
            &plan,
            &DrainOptions::default(),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        assert_eq!(report.drain.failed, 0);
        if i == 0 {
            held_1 = plan.draw.as_ref().unwrap().global.clone();
            // The CRM's recorded writes: the month's tasks, by the lead's main contact.
            let writes = env.emulator().writes();
            tasked_1 = env.emulator().with_data(|data| {
                writes.tasks_created[before..]
                    .iter()
                    .filter_map(|t| match (t.entity_type.as_deref(), t.entity_id) {
                        (Some("leads"), Some(l)) => data.leads[&l]
                            .contacts
                            .iter()
                            .find(|c| c.is_main)
                            .map(|c| format!("contact:{}", c.id)),
                        (Some("contacts"), Some(c)) => Some(format!("contact:{c}")),
                        _ => None,
                    })
                    .collect()
            });
        }
        let to = from.as_second() + PERIOD_DAYS * 86_400;
        env.emulator().simulate_answers(from.as_second(), to, &sim);
        let s = sync(&env, false).await.unwrap();
        completed_read += s.task_states;
    }
    let (y, m, d) = MONTHS[2];
    let end = start(&env, date(y, m, d)) + jiff::SignedDuration::from_hours(24 * 40);
    let r = rebuy::results::portal_results(&env.store, &env.portal, end, None).unwrap();
    (r, held_1, tasked_1, completed_read)
}

fn sim(uplift: f64) -> AnswerSim {
    AnswerSim {
        completion: 0.8,
        base_probability: 0.2,
        uplift,
        amount: AMOUNT,
        seed: 2027,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_recover_a_simulated_uplift_and_the_holdout_gets_no_task() {
    let (r, held, tasked, read) = run_months(sim(0.5)).await;
    // Held-out customers got no task in the CRM; the others did.
    assert!(held.len() > 50, "{}", held.len());
    assert!(tasked.len() > 50, "{}", tasked.len());
    assert!(tasked.is_disjoint(&held), "a held-out customer got a task");
    // The states were read back on sync.
    assert!(read > 0);
    let o = &r.overall;
    assert!(
        o.treated.customers >= 150 && o.holdout.customers >= 150,
        "{o:?}"
    );
    // About 80% of the tasks were completed, as simulated.
    let share = o.treated.completed as f64 / o.treated.customers as f64;
    assert!((0.7..0.9).contains(&share), "{share}");
    // The truth, given what the managers did (the completions read back from the CRM):
    // completed share x uplift x amount per treated customer (400 at the simulated 80%).
    let truth = Decimal::from(o.treated.completed) / Decimal::from(o.treated.customers)
        * Decimal::from(AMOUNT / 2);
    let (lo, hi) = o.comparison.revenue_interval;
    assert!(
        lo <= truth && truth <= hi,
        "{truth} outside [{lo}; {hi}]\n{}\n{o:#?}",
        r.table()
    );
    assert!(lo > Decimal::ZERO);
    assert_eq!(o.comparison.verdict, Verdict::Uplift, "{}", r.table());
    // Each month's rule sees it too.
    assert_eq!(r.rules.len(), 3);
    for l in &r.rules {
        assert!(l.comparison.revenue_diff > Decimal::ZERO, "{l:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_report_no_uplift_when_none_was_simulated() {
    let (r, _, _, _) = run_months(sim(0.0)).await;
    eprintln!("{}", r.table());
    let o = &r.overall;
    let (lo, hi) = o.comparison.revenue_interval;
    assert!(lo <= Decimal::ZERO && Decimal::ZERO <= hi, "{}", r.table());
    assert!(
        !matches!(o.comparison.verdict, Verdict::Uplift | Verdict::Negative),
        "{}",
        r.table()
    );
}

/// `rebuy plan` says how many were held out; `rebuy results` prints treated vs holdout as a
/// table and as JSON, and names a bad period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_commands_say_who_was_held_out_and_print_the_results() {
    use rebuy_emulator::amocrm::AmoConfig;
    let emu = rebuy_emulator::amocrm::AmoEmulator::spawn(amo_config(48, 160, 400))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pb = dir.path().join("spring.toml");
    std::fs::write(
        &pb,
        "[[seasonal]]\nid = \"spring\"\ndate = \"03-05\"\ngoal = \"Поздравить с весной\"\n",
    )
    .unwrap();
    let cfg_path = dir.path().join("rebuy.toml");
    std::fs::write(
        &cfg_path,
        format!(
            "data_dir = {:?}\n[[portal]]\nid = \"p\"\nkind = \"amocrm\"\nbase_url = \"{}\"\nrequests_per_sec = {TEST_RPS}\nexceed_documented_limit = true\n\
             [portal.auth]\ntype = \"oauth\"\nclient_id = \"{}\"\nclient_secret_env = \"EMULATOR_CLIENT_SECRET\"\nredirect_uri = \"{}\"\n\
             [portal.mapping]\nplaybooks = [{:?}]\nholdout_percent = 20\n",
            dir.path().join("data").display().to_string(),
            emu.base_url,
            AmoConfig::default().client_id,
            AmoConfig::default().redirect_uri,
            pb.display().to_string(),
        ),
    )
    .unwrap();
    let cfg = cfg_path.display().to_string();
    let run = |args: &[&str]| {
        let mut a = vec!["--config".to_owned(), cfg.clone()];
        a.extend(args.iter().map(|s| (*s).to_owned()));
        rebuy_async(a, vec![])
    };
    for args in [
        &["auth", "--portal", "p"][..],
        &["sync", "--portal", "p", "--full", "--quiet"],
    ] {
        let out = run(args).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = run(&[
        "plan",
        "--portal",
        "p",
        "--as-of",
        "2026-03-02",
        "--format",
        "json",
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let held = &plan["held_out"];
    assert_eq!(held["period"], "2026-03");
    let customers = held["customers"].as_u64().unwrap();
    let touches = held["by_rule"]["spring.spring"].as_u64().unwrap();
    let planned = plan["actions"].as_array().unwrap().len() as u64;
    assert!(customers > 5 && touches > 5, "{held}");
    // About a fifth of the touched customers are held out.
    let share = touches as f64 / (touches + planned) as f64;
    assert!((0.1..0.3).contains(&share), "{share}");
    let out = run(&["plan", "--portal", "p", "--as-of", "2026-03-02"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!(
            "held out (2026-03): {customers} customer(s) in the control group; {touches} touch(es)"
        )),
        "{text}"
    );
    let out = run(&["apply", "--portal", "p", "--as-of", "2026-03-02"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&[
        "results",
        "--portal",
        "p",
        "--as-of",
        "2026-04-20",
        "--format",
        "json",
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["overall"]["treated"]["customers"].as_u64(), Some(planned));
    assert_eq!(r["overall"]["holdout"]["customers"].as_u64(), Some(touches));
    assert_eq!(r["rules"][0]["rule"], "spring.spring");
    // Nobody bought since: no difference, and too few held out to tell.
    assert_eq!(r["overall"]["comparison"]["revenue_diff"], "0");
    assert_eq!(r["overall"]["comparison"]["verdict"], "not_enough_data");
    let out = run(&[
        "results",
        "--portal",
        "p",
        "--as-of",
        "2026-04-20",
        "--period",
        "2026-03",
    ])
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("touches of 2026-03") && text.contains("overall"),
        "{text}"
    );
    assert!(text.contains("not enough data yet"), "{text}");
    let out = run(&["results", "--portal", "p", "--period", "2026-13"]).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--period \"2026-13\""), "{err}");
}
