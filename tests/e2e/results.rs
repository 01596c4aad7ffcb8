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
    d.to_zoned(env.portal.time_zone.clone()).unwrap().timestamp()
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
        let plan = writeback::plan_portal(&env.portal, &env.store, Some(conn.as_ref()), None, from)
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
        env.emulator()
            .simulate_answers(from.as_second(), to, &sim);
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
    assert!(o.treated.customers >= 150 && o.holdout.customers >= 150, "{o:?}");
    // About 80% of the tasks were completed, as simulated.
    let share = o.treated.completed as f64 / o.treated.customers as f64;
    assert!((0.7..0.9).contains(&share), "{share}");
    // The truth, given what the managers did (the completions read back from the CRM):
    // completed share x uplift x amount per treated customer (400 at the simulated 80%).
    let truth = Decimal::from(o.treated.completed) / Decimal::from(o.treated.customers)
        * Decimal::from(AMOUNT / 2);
    let (lo, hi) = o.comparison.revenue_interval;
    assert!(lo <= truth && truth <= hi, "{truth} outside [{lo}; {hi}]\n{}\n{o:#?}", r.table());
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
    let o = &r.overall;
    let (lo, hi) = o.comparison.revenue_interval;
    assert!(lo <= Decimal::ZERO && Decimal::ZERO <= hi, "{}", r.table());
    assert!(
        !matches!(o.comparison.verdict, Verdict::Uplift | Verdict::Negative),
        "{}",
        r.table()
    );
}
