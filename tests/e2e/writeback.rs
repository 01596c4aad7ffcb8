//! Playbooks and write-back against the amoCRM emulator: scheduled tasks of a won deal,
//! repeat routing, the cyclic funnel, crash between send and done, dry run, one bad action
//! among good ones, and a playbook naming an unknown stage.
use crate::support::*;
use jiff::civil::{Date, Time, Weekday};
use jiff::{SignedDuration, Timestamp};
use rebuy::outbox::{ActionState, DrainOptions};
use rebuy::plan::Plan;
use rebuy::writeback;
use rebuy_core::{Connector, WriteOp};
use rebuy_emulator::amocrm::AmoConfig;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

const SALES: u64 = 7_100_001;
const REPEAT: u64 = 7_100_002;
const WON: u64 = 142;

fn connector(env: &Env) -> Arc<dyn Connector> {
    rebuy::portal::open(&env.portal, env.store.clone())
        .unwrap()
        .connector
}

fn write_playbook(env: &Env, name: &str, text: &str) -> String {
    let path = env.dir.path().join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

async fn plan_at(env: &Env, as_of: Timestamp) -> Plan {
    let conn = connector(env);
    writeback::plan_portal(&env.portal, &env.store, Some(conn.as_ref()), as_of)
        .await
        .expect("plan")
}

async fn apply_at(env: &Env, as_of: Timestamp) -> (Plan, writeback::ApplyReport) {
    let conn = connector(env);
    let plan = plan_at(env, as_of).await;
    let report = writeback::apply_plan(
        conn.as_ref(),
        &env.store,
        &plan,
        &DrainOptions::default(),
        Duration::from_secs(10),
    )
    .await
    .expect("apply");
    (plan, report)
}

/// The open status of a pipeline after "unsorted", by sort order.
fn stage_ids(env: &Env, pipeline: u64) -> Vec<u64> {
    env.emulator().with_data(|d| {
        let p = &d.pipelines[&pipeline];
        let mut st: Vec<_> = p
            .statuses
            .iter()
            .filter(|s| s.id != 142 && s.id != 143)
            .collect();
        st.sort_by_key(|s| s.sort);
        st.iter().map(|s| s.id).collect()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_won_deal_yields_exactly_the_scheduled_tasks() {
    let mut env = amo_env(amo_config(41, 60, 150)).await;
    sync(&env, true).await.unwrap();
    let (contact, manager) = env.emulator().with_data(|d| {
        let c = d.contacts.values().next().unwrap();
        (c.id, c.responsible_user_id)
    });
    let lead = env
        .emulator()
        .add_lead(contact, 54_000, SALES, WON)
        .unwrap();
    sync(&env, false).await.unwrap();
    let pb = write_playbook(
        &env,
        "lifecycle",
        r#"
name = "lifecycle"
[[after_purchase]]
id = "satisfaction"
days = 7
goal = "Звонок удовлетворённости"
time = "11:00"
[[after_purchase]]
id = "check_in"
days = 30
goal = "Контрольный звонок"
task = "letter"
[[after_purchase]]
id = "service"
days = 180
goal = "Напомнить о ТО"
task = "meeting"
time = "16:30"
"#,
    );
    env.portal.mapping = json!({"playbooks": [pb], "horizon_days": 200, "lookback_days": 0});
    let now = Timestamp::now();
    let (plan, report) = apply_at(&env, now).await;
    assert_eq!(report.drain.failed, 0, "{report:?}");
    let customer = format!("contact:{contact}");
    let mine: Vec<_> = plan
        .actions
        .iter()
        .filter(|a| a.customer == customer)
        .collect();
    assert_eq!(mine.len(), 3, "{mine:#?}");

    let tz = env.portal.time_zone.clone();
    let today = now.to_zoned(tz.clone()).date();
    let writes = env.emulator().writes();
    let mut tasks: Vec<_> = writes
        .tasks_created
        .iter()
        .filter(|t| t.entity_id == Some(lead))
        .collect();
    tasks.sort_by_key(|t| t.complete_till);
    assert_eq!(
        tasks.len(),
        3,
        "exactly the scheduled tasks on the won deal"
    );
    let expect = [(7, "11:00", 1u64), (30, "10:00", 1), (180, "16:30", 2)];
    for (t, (days, time, task_type)) in tasks.iter().zip(expect) {
        let due = Timestamp::from_second(t.complete_till)
            .unwrap()
            .to_zoned(tz.clone());
        // The planned day, moved off the weekend.
        let mut day: Date = today.checked_add(jiff::Span::new().days(days)).unwrap();
        while matches!(day.weekday(), Weekday::Saturday | Weekday::Sunday) {
            day = day.tomorrow().unwrap();
        }
        assert_eq!(due.date(), day, "+{days} days");
        assert_eq!(due.strftime("%H:%M").to_string(), time, "+{days} days time");
        assert!(
            due.time() >= Time::constant(10, 0, 0, 0) && due.time() < Time::constant(18, 0, 0, 0)
        );
        assert_eq!(t.responsible_user_id, manager, "the deal's manager");
        assert_eq!(t.entity_type.as_deref(), Some("leads"));
        assert_eq!(t.task_type_id, task_type);
        assert!(t.text.contains("#rebuy:"), "the marker is in the text");
    }
    assert!(
        tasks[0].text.starts_with("Звонок удовлетворённости"),
        "{}",
        tasks[0].text
    );
    let bought = format!(
        "Покупка {:02}.{:02}.{}",
        today.day(),
        today.month(),
        today.year()
    );
    assert!(tasks[0].text.contains(&bought), "{}", tasks[0].text);

    // Planning and applying again (a day later, after a sync) creates nothing new.
    let before = env.emulator().writes().tasks_created.len();
    sync(&env, false).await.unwrap();
    let (_, again) = apply_at(&env, now + SignedDuration::from_hours(2)).await;
    assert_eq!(again.enqueued.added, 0);
    assert_eq!(env.emulator().writes().tasks_created.len(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeat_lead_is_moved_flagged_and_tasked_once() {
    let mut env = amo_env(amo_config(42, 80, 240)).await;
    // A customer who bought, and a known contact who never bought.
    let (buyer, non_buyer) = env.emulator().with_data(|d| {
        let buyer = d
            .leads
            .values()
            .find(|l| l.status_id == WON && l.contacts.iter().any(|c| c.is_main))
            .and_then(|l| l.contacts.iter().find(|c| c.is_main))
            .map(|c| c.id)
            .unwrap();
        let non_buyer = d
            .contacts
            .keys()
            .copied()
            .find(|c| {
                let leads = d.leads_of_contact(*c);
                !leads.is_empty() && leads.iter().all(|l| d.leads[l].status_id != WON)
            })
            .unwrap();
        (buyer, non_buyer)
    });
    let first = stage_ids(&env, SALES)[1];
    let repeat_lead = env.emulator().add_lead(buyer, 3_000, SALES, first).unwrap();
    let inquiry = env
        .emulator()
        .add_lead(non_buyer, 1_000, SALES, first)
        .unwrap();
    let contacts_before = env.emulator().with_data(|d| d.contacts.len());
    sync(&env, true).await.unwrap();
    env.portal.mapping = json!({"repeat_pipeline": "Повторные продажи"});
    let (plan, report) = apply_at(&env, Timestamp::now()).await;
    assert_eq!(report.drain.failed, 0);
    assert_eq!(plan.actions.len(), 3, "{:#?}", plan.actions);

    let w = env.emulator().writes();
    let moves: Vec<_> = w
        .lead_moves
        .iter()
        .filter(|m| m.lead_id == repeat_lead)
        .collect();
    assert_eq!(moves.len(), 1);
    let repeat_first = stage_ids(&env, REPEAT)[1];
    assert_eq!(
        (moves[0].to_pipeline_id, moves[0].to_status_id),
        (REPEAT, repeat_first)
    );
    assert!(
        w.tag_updates
            .iter()
            .any(|t| t.entity_id == repeat_lead && t.tags.iter().any(|x| x == "repeat"))
    );
    let tasks: Vec<_> = w
        .tasks_created
        .iter()
        .filter(|t| t.entity_id == Some(repeat_lead))
        .collect();
    assert_eq!(tasks.len(), 1);
    assert!(
        tasks[0].text.starts_with("Повторная заявка от клиента"),
        "{}",
        tasks[0].text
    );
    assert!(tasks[0].text.contains(", последняя"), "{}", tasks[0].text);
    assert_purchase_counts_agree(&tasks[0].text);
    // The non-buyer's inquiry stays on its contact, where it was; no contact is created.
    assert!(w.lead_moves.iter().all(|m| m.lead_id != inquiry));
    assert!(w.tasks_created.iter().all(|t| t.entity_id != Some(inquiry)));
    assert_eq!(
        env.emulator().with_data(|d| d.contacts.len()),
        contacts_before
    );
    env.emulator().with_data(|d| {
        assert_eq!(d.leads[&inquiry].pipeline_id, SALES);
        assert_eq!(d.leads[&repeat_lead].pipeline_id, REPEAT);
    });

    // Once: a second sync + apply does nothing more.
    sync(&env, false).await.unwrap();
    let (plan2, _) = apply_at(&env, Timestamp::now()).await;
    assert!(
        plan2.actions.is_empty(),
        "the lead is in the repeat pipeline now"
    );
    let w2 = env.emulator().writes();
    assert_eq!(w2.lead_moves.len(), w.lead_moves.len());
    assert_eq!(w2.tasks_created.len(), w.tasks_created.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_funnel_moves_customers_as_time_passes_and_resets_on_a_purchase() {
    let now = Timestamp::now();
    let mut cfg = amo_config(43, 150, 600);
    // History up to two days ago, so customers have next purchases ahead.
    cfg.seed = cfg
        .seed
        .clone()
        .with_now(now - SignedDuration::from_hours(48));
    let mut env = amo_env(cfg).await;
    sync(&env, true).await.unwrap();
    let stages = stage_ids(&env, REPEAT); // unsorted, remind, contacted, invoice
    env.portal.mapping = json!({"funnel": {
        "pipeline": "Повторные продажи",
        "stages": [stages[1].to_string(), stages[2].to_string(), stages[3].to_string()],
        "windows_days": [30, 0],
    }});
    let tz = env.portal.time_zone.clone();
    let today = now.to_zoned(tz.clone()).date();
    // A customer (contact) with a next purchase 10 to 25 days ahead.
    let (_, analysis) = rebuy::analyse::analyse_portal(&env.store, &env.portal, Some(now)).unwrap();
    let row = analysis
        .customers
        .iter()
        .find(|r| {
            matches!(r.key, rebuy::analytics::CustomerKey::Contact(_))
                && r.next_purchase.is_some_and(|n| {
                    let d = (n - today).get_days();
                    (10..=25).contains(&d)
                })
        })
        .expect("a customer due in 10-25 days");
    let rebuy::analytics::CustomerKey::Contact(contact) = row.key else {
        unreachable!()
    };
    let next = row.next_purchase.unwrap();
    // Their funnel deal, in the "more than 30 days" stage.
    let deal = env
        .emulator()
        .add_lead(contact.0, 0, REPEAT, stages[1])
        .unwrap();
    sync(&env, false).await.unwrap();

    let moves_of = |env: &Env| -> Vec<u64> {
        env.emulator()
            .writes()
            .lead_moves
            .iter()
            .filter(|m| m.lead_id == deal)
            .map(|m| m.to_status_id)
            .collect()
    };
    // Today: at most 30 days left -> second stage.
    let now = Timestamp::now();
    let (plan, _) = apply_at(&env, now).await;
    assert_eq!(moves_of(&env), vec![stages[2]]);
    // Every other customer with a next purchase gets their funnel deal created, once.
    let created_in_funnel = |env: &Env| {
        let w = env.emulator().writes();
        w.leads_created
            .iter()
            .filter(|l| l.pipeline_id == REPEAT && l.id != deal)
            .count()
    };
    assert!(
        plan.funnel_without_deal > 0,
        "some customers had no funnel deal"
    );
    assert_eq!(
        created_in_funnel(&env) as u64,
        plan.funnel_without_deal,
        "one funnel deal per customer"
    );
    let first_created = created_in_funnel(&env);
    // Again today: nothing new.
    sync(&env, false).await.unwrap();
    let (plan, _) = apply_at(&env, now + SignedDuration::from_hours(1)).await;
    assert_eq!(moves_of(&env), vec![stages[2]]);
    assert_eq!(
        plan.funnel_without_deal, 0,
        "after the sync every customer has a funnel deal"
    );
    assert_eq!(
        created_in_funnel(&env),
        first_created,
        "nothing created twice"
    );
    // The day after the expected purchase: due / overdue.
    let later = next
        .tomorrow()
        .unwrap()
        .to_zoned(tz.clone())
        .unwrap()
        .timestamp()
        + SignedDuration::from_hours(9);
    apply_at(&env, later).await;
    assert_eq!(moves_of(&env), vec![stages[2], stages[3]]);

    // The customer buys: the next purchase is recomputed from today and the deal goes back.
    env.emulator()
        .add_lead(contact.0, 2_500, SALES, WON)
        .unwrap();
    sync(&env, false).await.unwrap();
    let after = Timestamp::now();
    let (_, analysis) =
        rebuy::analyse::analyse_portal(&env.store, &env.portal, Some(after)).unwrap();
    let row = analysis
        .customers
        .iter()
        .find(|r| r.key == rebuy::analytics::CustomerKey::Contact(contact))
        .unwrap();
    let new_next = row.next_purchase.unwrap();
    assert!(new_next > next, "reset: {new_next} after {next}");
    let left = (new_next - after.to_zoned(tz.clone()).date()).get_days();
    let want = if left > 30 { stages[1] } else { stages[2] };
    apply_at(&env, after).await;
    assert_eq!(moves_of(&env), vec![stages[2], stages[3], want]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_writes_nothing_and_one_bad_action_does_not_block_the_rest() {
    let mut env = amo_env(amo_config(44, 90, 250)).await;
    sync(&env, true).await.unwrap();
    let pb = write_playbook(
        &env,
        "greetings",
        "[[seasonal]]\nid = \"spring\"\ndate = \"03-05\"\ngoal = \"Поздравить с весной\"\ntask = \"letter\"\n",
    );
    env.portal.mapping = json!({"playbooks": [pb]});
    let as_of = writeback::parse_plan_as_of("2026-03-02", &env.portal).unwrap();

    // Dry run: a plan, and nothing written anywhere.
    let plan = plan_at(&env, as_of).await;
    assert!(plan.actions.len() > 20, "{}", plan.actions.len());
    assert_eq!(env.emulator().writes(), Default::default());
    assert_eq!(env.store.outbox_counts().unwrap(), Default::default());
    // Deterministic.
    assert_eq!(plan_at(&env, as_of).await, plan);

    // A lead deleted in the CRM after the sync: its task is refused, the others go through.
    let WriteOp::CreateTask {
        entity: rebuy_core::EntityRef::Deal(victim),
        ..
    } = plan.actions[3].op
    else {
        panic!("a task on a deal")
    };
    assert!(env.emulator().delete_lead(victim.0));
    let (_, report) = apply_at(&env, as_of).await;
    let victims = plan
        .actions
        .iter()
        .filter(|a| matches!(&a.op, WriteOp::CreateTask { entity, .. } if *entity == rebuy_core::EntityRef::Deal(victim)))
        .count() as u64;
    assert_eq!(report.drain.failed, victims);
    assert_eq!(report.drain.done, plan.actions.len() as u64 - victims);
    let failed: Vec<_> = env
        .store
        .outbox_all()
        .unwrap()
        .into_iter()
        .filter_map(|e| match e.state {
            ActionState::Failed { code, message, .. } => Some((e.action.key, code, message)),
            _ => None,
        })
        .collect();
    assert_eq!(failed.len() as u64, victims);
    assert!(
        failed[0].2.contains("entity_id"),
        "the CRM's message: {failed:?}"
    );
    assert_eq!(
        env.emulator().writes().tasks_created.len() as u64,
        plan.actions.len() as u64 - victims
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_playbook_with_an_unknown_stage_is_refused_with_every_problem() {
    let mut env = amo_env(amo_config(45, 20, 40)).await;
    sync(&env, true).await.unwrap();
    let pb = write_playbook(
        &env,
        "broken",
        r#"
[funnel]
pipeline = "Повторные продажи"
stages = ["Напомнить о покупке", "Такой стадии нет"]
windows_days = [7]
[[after_purchase]]
id = "call"
days = 7
goal = "Звонок"
responsible = "user:Никто"
"#,
    );
    env.portal.mapping = json!({"playbooks": [pb.clone()]});
    let err = writeback::plan_portal(&env.portal, &env.store, None, Timestamp::now())
        .await
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("2 problem(s)"), "{msg}");
    assert!(
        msg.contains(&format!("{pb}: funnel.stages[1]: unknown stage \"Такой стадии нет\" in pipeline \"Повторные продажи\"")),
        "{msg}"
    );
    assert!(
        msg.contains("after_purchase[0].responsible: unknown user \"Никто\""),
        "{msg}"
    );
    assert_eq!(env.emulator().writes(), Default::default());
}

/// The process dies after a bulk request was sent but before "done" was committed; the next
/// run finds the tasks by their marker and creates none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_between_send_and_done_then_rerun_creates_no_duplicate() {
    let emu = rebuy_emulator::amocrm::AmoEmulator::spawn(amo_config(46, 160, 400))
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
             [portal.mapping]\nplaybooks = [{:?}]\n",
            dir.path().join("data").display().to_string(),
            emu.base_url,
            AmoConfig::default().client_id,
            AmoConfig::default().redirect_uri,
            pb.display().to_string(),
        ),
    )
    .unwrap();
    let cfg = cfg_path.display().to_string();
    let run = |args: &[&str], env: Vec<(String, String)>| {
        let mut a = vec!["--config".to_owned(), cfg.clone()];
        a.extend(args.iter().map(|s| (*s).to_owned()));
        rebuy_async(a, env)
    };
    let out = run(&["auth", "--portal", "p"], vec![]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["sync", "--portal", "p", "--full", "--quiet"], vec![]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // `rebuy mapping` lists the CRM and checks the mapping and playbooks.
    let out = run(&["mapping", "--portal", "p"], vec![]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    for want in [
        "Повторные продажи",
        "Напомнить о покупке",
        "Дата следующей покупки",
        "mapping and playbooks: ok",
    ] {
        assert!(stdout.contains(want), "{want:?} in {stdout}");
    }
    let out = run(
        &[
            "plan",
            "--portal",
            "p",
            "--as-of",
            "2026-03-02",
            "--format",
            "json",
        ],
        vec![],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let planned = plan["actions"].as_array().unwrap().len();
    assert!(planned > 100, "enough for several bulk requests: {planned}");
    assert_eq!(
        emu.emulator.writes().tasks_created.len(),
        0,
        "plan writes nothing"
    );

    let crash = run(
        &["apply", "--portal", "p", "--as-of", "2026-03-02"],
        vec![("REBUY_FAILPOINTS".into(), "outbox.after_send=1".into())],
    )
    .await;
    assert!(!crash.status.success(), "the failpoint aborts the process");
    let sent = emu.emulator.writes().tasks_created.len();
    assert!(
        sent >= 1 && sent < planned,
        "one bulk request landed: {sent}"
    );

    let out = run(&["apply", "--portal", "p", "--as-of", "2026-03-02"], vec![]).await;
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("{sent} found already done in the CRM")),
        "{stdout}"
    );
    let tasks = emu.emulator.writes().tasks_created;
    assert_eq!(tasks.len(), planned, "each task exactly once");
    let mut markers: Vec<&str> = tasks
        .iter()
        .map(|t| t.text.rsplit_once("#rebuy:").unwrap().1)
        .collect();
    markers.sort();
    markers.dedup();
    assert_eq!(markers.len(), planned);

    // The status shows the outbox.
    let out = run(&["status"], vec![]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "outbox: 0 pending, 0 in flight, {planned} done, 0 failed"
        )),
        "{stdout}"
    );
}

/// The customers mode's statuses used as the funnel's windows (emulator defaults).
const CUSTOMER_WINDOWS: [&str; 4] = [
    "Больше 30 дней",
    "30 дней до покупки",
    "7 дней до покупки",
    "Ожидается покупка",
];

fn customer_status_id(env: &Env, name: &str) -> u64 {
    env.emulator().with_data(|d| {
        d.customer_statuses
            .iter()
            .find(|s| s.name == name)
            .map(|s| s.id)
            .unwrap()
    })
}

/// The funnel on amoCRM customers (periodicity mode): one customer per rebuy customer, linked
/// to its main contact, in the status of its window with `next_date` at local midnight of the
/// expected day; nothing again on a re-run; moved as the plan date passes the windows; reset
/// by a purchase.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_customers_funnel_keeps_one_amocrm_customer_per_customer_and_moves_it() {
    let now = Timestamp::now();
    let mut cfg = amo_config(47, 150, 600);
    cfg.seed = cfg
        .seed
        .clone()
        .with_now(now - SignedDuration::from_hours(48));
    cfg.customers_mode = "periodicity".into();
    // Counts the customers rebuy creates: no generated ones.
    cfg.history_customers = false;
    let mut env = amo_env(cfg).await;
    sync(&env, true).await.unwrap();
    env.portal.mapping = json!({"funnel": {"entity": "customers", "stages": CUSTOMER_WINDOWS}, "holdout_percent": 0});
    let conn = connector(&env);
    let tz = env.portal.time_zone.clone();
    let today = now.to_zoned(tz.clone()).date();
    let apply = |as_of: Timestamp| {
        let (env, conn) = (&env, conn.clone());
        async move {
            writeback::apply_portal(
                &env.portal,
                &env.store,
                conn.as_ref(),
                as_of,
                Duration::from_secs(10),
            )
            .await
            .expect("apply")
        }
    };
    let (plan, _, report) = apply(now).await;
    assert_eq!(report.drain.failed, 0, "{report:?}");

    // One customer per analysed customer with a next purchase, each on its own contact.
    let (_, analysis) = rebuy::analyse::analyse_portal(&env.store, &env.portal, Some(now)).unwrap();
    let due: Vec<_> = analysis
        .customers
        .iter()
        .filter(|r| r.next_purchase.is_some())
        .filter_map(|r| match r.key {
            rebuy::analytics::CustomerKey::Contact(c) => Some((c.0, r.next_purchase.unwrap())),
            rebuy::analytics::CustomerKey::Company(_) => r
                .contact_ids
                .first()
                .map(|c| (c.0, r.next_purchase.unwrap())),
        })
        .collect();
    assert!(
        due.len() > 5,
        "enough customers with a next purchase: {}",
        due.len()
    );
    let created = env.emulator().writes().customers_created;
    assert_eq!(created.len(), due.len(), "one amoCRM customer each");
    assert_eq!(plan.funnel_without_deal as usize, due.len());
    let windows: Vec<u64> = CUSTOMER_WINDOWS
        .iter()
        .map(|n| customer_status_id(&env, n))
        .collect();
    let window_of = |left: i64| {
        let i = [30, 7, 0].iter().filter(|&&w| left <= w).count();
        windows[i]
    };
    for (contact, next) in &due {
        let c = created
            .iter()
            .find(|c| c.contact_id == Some(*contact))
            .unwrap_or_else(|| panic!("a customer for contact {contact}"));
        let midnight = next.to_zoned(tz.clone()).unwrap().timestamp().as_second();
        assert_eq!(c.next_date, midnight, "contact {contact}");
        assert_eq!(
            c.status_id,
            window_of((*next - today).get_days() as i64),
            "contact {contact}: status of {} days left",
            (*next - today).get_days()
        );
    }
    env.emulator().with_data(|d| {
        for c in d.customers.values() {
            assert_eq!(c.contacts.len(), 1);
            assert!(c.contacts[0].is_main);
        }
    });

    // Again today: the CRM already holds every customer in the right status.
    let (again, _, _) = apply(now + SignedDuration::from_hours(1)).await;
    assert!(
        again.actions.is_empty(),
        "nothing to do: {:#?}",
        again.actions
    );
    assert_eq!(env.emulator().writes().customers_created.len(), due.len());
    assert!(env.emulator().writes().customers_updated.is_empty());

    // A customer due in 10-25 days moves to "due" the day after its expected purchase.
    let (contact, next) = *due
        .iter()
        .find(|(_, n)| (10..=25).contains(&(*n - today).get_days()))
        .expect("a customer due in 10-25 days");
    let id = created
        .iter()
        .find(|c| c.contact_id == Some(contact))
        .unwrap()
        .id;
    let later = next
        .tomorrow()
        .unwrap()
        .to_zoned(tz.clone())
        .unwrap()
        .timestamp()
        + SignedDuration::from_hours(9);
    apply(later).await;
    let moves = |env: &Env| -> Vec<u64> {
        env.emulator()
            .writes()
            .customers_updated
            .iter()
            .filter(|u| u.id == id && u.from_status_id != Some(u.status_id))
            .map(|u| u.status_id)
            .collect()
    };
    assert_eq!(moves(&env), vec![windows[3]]);

    // The customer buys: the next purchase is recomputed and the customer goes back.
    env.emulator().add_lead(contact, 2_500, SALES, WON).unwrap();
    sync(&env, false).await.unwrap();
    let after = Timestamp::now();
    let (_, analysis) =
        rebuy::analyse::analyse_portal(&env.store, &env.portal, Some(after)).unwrap();
    let new_next = analysis
        .customers
        .iter()
        .find(|r| r.key == rebuy::analytics::CustomerKey::Contact(rebuy_core::ContactId(contact)))
        .and_then(|r| r.next_purchase)
        .unwrap();
    assert!(new_next > next, "reset: {new_next} after {next}");
    apply(after).await;
    let left = (new_next - after.to_zoned(tz.clone()).date()).get_days() as i64;
    assert_eq!(moves(&env), vec![windows[3], window_of(left)]);
    env.emulator().with_data(|d| {
        let c = &d.customers[&id];
        assert_eq!(
            c.next_date,
            new_next
                .to_zoned(tz.clone())
                .unwrap()
                .timestamp()
                .as_second()
        );
    });
    assert_eq!(
        env.emulator().writes().customers_created.len(),
        due.len(),
        "still one customer each"
    );
}

/// A funnel on customers is refused with a clear message when the account's customers mode
/// is off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customers_funnel_without_periodicity_mode_is_refused() {
    let mut env = amo_env(amo_config(48, 20, 40)).await;
    sync(&env, true).await.unwrap();
    env.portal.mapping =
        json!({"funnel": {"entity": "customers", "stages": ["a", "b"], "windows_days": [7]}});
    let err = plan_at_err(&env).await;
    assert!(
        err.contains("funnel.entity: the account's customers mode is \"disabled\""),
        "{err}"
    );
    assert_eq!(env.emulator().writes(), Default::default());
}

async fn plan_at_err(env: &Env) -> String {
    let conn = connector(env);
    let err = writeback::plan_portal(
        &env.portal,
        &env.store,
        Some(conn.as_ref()),
        Timestamp::now(),
    )
    .await
    .unwrap_err();
    format!("{err:#}")
}

/// Segment fields named in the mapping and missing in the CRM are created once (select with
/// the segments, date), reported by `rebuy mapping`; amoCRM customers and fields created by a
/// run killed between send and done are found again, never created twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fields_and_customers_are_created_once_across_crashes() {
    let mut cfg = amo_config(49, 300, 900);
    cfg.customers_mode = "periodicity".into();
    // Counts the customers rebuy creates: no generated ones.
    cfg.history_customers = false;
    let emu = rebuy_emulator::amocrm::AmoEmulator::spawn(cfg)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = dir.path().join("rebuy.toml");
    std::fs::write(
        &cfg_path,
        format!(
            "data_dir = {:?}\n[[portal]]\nid = \"p\"\nkind = \"amocrm\"\nbase_url = \"{}\"\nrequests_per_sec = {TEST_RPS}\nexceed_documented_limit = true\n\
             [portal.auth]\ntype = \"oauth\"\nclient_id = \"{}\"\nclient_secret_env = \"EMULATOR_CLIENT_SECRET\"\nredirect_uri = \"{}\"\n\
             [portal.mapping.funnel]\nentity = \"customers\"\nstages = [\"Больше 30 дней\", \"30 дней до покупки\", \"7 дней до покупки\", \"Ожидается покупка\"]\n\
             [portal.mapping.fields]\nrfm_segment = \"Сегмент RFM\"\nabc = \"ABC-класс\"\nnext_purchase = \"Ожидаемая покупка\"\ncreate_missing = true\n",
            dir.path().join("data").display().to_string(),
            emu.base_url,
            AmoConfig::default().client_id,
            AmoConfig::default().redirect_uri,
        ),
    )
    .unwrap();
    let cfg = cfg_path.display().to_string();
    let run = |args: &[&str], env: Vec<(String, String)>| {
        let mut a = vec!["--config".to_owned(), cfg.clone()];
        a.extend(args.iter().map(|s| (*s).to_owned()));
        rebuy_async(a, env)
    };
    let ok = |out: &std::process::Output| {
        assert!(
            out.status.success(),
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    ok(&run(&["auth", "--portal", "p"], vec![]).await);
    ok(&run(&["sync", "--portal", "p", "--full", "--quiet"], vec![]).await);
    let out = run(&["mapping", "--portal", "p"], vec![]).await;
    ok(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    for want in [
        "customers mode: periodicity",
        "30 дней до покупки",
        "missing field: contacts \"Сегмент RFM\" (fields.rfm_segment, select of 11): will be created",
        "missing field: contacts \"ABC-класс\" (fields.abc, select of 3): will be created",
        "missing field: contacts \"Ожидаемая покупка\" (fields.next_purchase, date): will be created",
    ] {
        assert!(stdout.contains(want), "{want:?} in {stdout}");
    }
    assert_eq!(
        emu.emulator.writes(),
        Default::default(),
        "mapping writes nothing"
    );
    let out = run(&["plan", "--portal", "p"], vec![]).await;
    ok(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(
            "field contacts \"ABC-класс\" (fields.abc) is missing: `rebuy apply` creates it first"
        ),
        "{stdout}"
    );
    assert!(stdout.contains("customer_create/"), "{stdout}");
    assert_eq!(
        emu.emulator.writes(),
        Default::default(),
        "plan writes nothing"
    );

    // 1: killed right after the fields were sent.
    let fail = vec![("REBUY_FAILPOINTS".into(), "outbox.after_send=1".into())];
    assert!(
        !run(&["apply", "--portal", "p"], fail.clone())
            .await
            .status
            .success()
    );
    assert_eq!(emu.emulator.writes().fields_created.len(), 3);
    // 2: the fields are found (not created again); killed after the first customers.
    assert!(
        !run(&["apply", "--portal", "p"], fail)
            .await
            .status
            .success()
    );
    let w = emu.emulator.writes();
    assert_eq!(w.fields_created.len(), 3, "no field twice");
    let sent = w.customers_created.len();
    assert!(sent >= 1, "one bulk request of customers landed");
    // 3: to the end.
    let out = run(&["apply", "--portal", "p"], vec![]).await;
    ok(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let w = emu.emulator.writes();
    assert!(w.customers_created.len() > sent, "{stdout}");
    assert!(
        stdout.contains(&format!("{sent} found already done in the CRM")),
        "{stdout}"
    );
    let mut contacts: Vec<u64> = w
        .customers_created
        .iter()
        .map(|c| c.contact_id.unwrap())
        .collect();
    contacts.sort_unstable();
    let n = contacts.len();
    contacts.dedup();
    assert_eq!(contacts.len(), n, "one customer per contact");
    assert_eq!(w.fields_created.len(), 3);
    let rfm = w
        .fields_created
        .iter()
        .find(|f| f.name == "Сегмент RFM")
        .unwrap();
    assert_eq!(rfm.field_type, "select");
    assert!(
        rfm.enums.iter().any(|e| e == "champions"),
        "{:?}",
        rfm.enums
    );
    let date = w
        .fields_created
        .iter()
        .find(|f| f.name == "Ожидаемая покупка")
        .unwrap();
    assert_eq!(date.field_type, "date");
    // The segments landed in the new fields, as the CRM's values.
    assert!(w.field_updates.iter().any(|u| u.field_id == rfm.id));
    assert!(
        w.field_updates
            .iter()
            .filter(|u| u.field_id == date.id)
            .all(|u| u.values.as_ref().is_none_or(|v| v[0].is_i64())),
        "dates as unix seconds"
    );
    let failed = run(&["status"], vec![]).await;
    assert!(
        String::from_utf8_lossy(&failed.stdout).contains(" 0 failed"),
        "{}",
        String::from_utf8_lossy(&failed.stdout)
    );
    // A fourth run creates nothing.
    let before = emu.emulator.writes();
    ok(&run(&["apply", "--portal", "p"], vec![]).await);
    let after = emu.emulator.writes();
    assert_eq!(after.fields_created.len(), before.fields_created.len());
    assert_eq!(
        after.customers_created.len(),
        before.customers_created.len()
    );
}

/// A connection dropped after amoCRM ran a bulk task POST: the outbox does not send it again
/// blindly (50 duplicate tasks), it looks the tasks up by their markers first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connections_after_the_write_create_no_duplicate() {
    let mut env = amo_env(amo_config(47, 400, 1000)).await;
    sync(&env, true).await.unwrap();
    let pb = write_playbook(
        &env,
        "spring",
        "[[seasonal]]\nid = \"spring\"\ndate = \"03-05\"\ngoal = \"Поздравить с весной\"\n",
    );
    env.portal.mapping = json!({"playbooks": [pb]});
    let as_of = writeback::parse_plan_as_of("2026-03-02", &env.portal).unwrap();
    let plan = plan_at(&env, as_of).await;
    let planned = plan.actions.len();
    assert!(planned > 100, "several bulk requests: {planned}");
    // Every other request runs and then loses its answer.
    env.emulator()
        .set_faults(rebuy_emulator::faults::FaultConfig {
            drop_after_write_rate: 0.5,
            ..Default::default()
        });
    let conn = connector(&env);
    let report = writeback::apply_plan(
        conn.as_ref(),
        &env.store,
        &plan,
        &DrainOptions::default(),
        Duration::from_secs(60),
    )
    .await
    .expect("apply");
    assert!(
        env.emulator().stats().faults_injected > 0,
        "connections were dropped: {report:?} {:?}",
        env.emulator().stats()
    );
    assert!(report.drain.unconfirmed > 0, "{report:?}");
    assert!(report.drain.reconciled > 0, "found by marker: {report:?}");
    assert_eq!(report.drain.failed, 0, "{report:?}");
    let tasks = env.emulator().writes().tasks_created;
    let mut markers: Vec<&str> = tasks
        .iter()
        .map(|t| t.text.rsplit_once("#rebuy:").unwrap().1)
        .collect();
    markers.sort();
    markers.dedup();
    assert_eq!(markers.len(), planned, "every task is there");
    assert_eq!(tasks.len(), planned, "and none twice");
}

/// A manager marked inactive still owns customers: `rebuy mapping`'s report names them with the
/// count, and no task goes to them (their customers' go to `default_responsible`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inactive_managers_get_no_tasks_and_are_reported_with_their_customers() {
    let mut env = amo_env(amo_config(95, 300, 900)).await;
    sync(&env, true).await.unwrap();
    let (inactive, default) = env.emulator().with_data(|d| {
        let inactive = d.users.values().find(|u| !u.is_active).unwrap().id;
        let active = d.users.values().find(|u| u.is_active).unwrap().name.clone();
        (inactive, active)
    });
    env.portal.mapping = json!({
        "playbooks": ["water_delivery", "reactivation"],
        "default_responsible": default,
        "horizon_days": 90,
        "lookback_days": 0,
    });
    let conn = connector(&env);
    let report = writeback::mapping_report(&env.portal, &env.store, conn.as_ref(), None)
        .await
        .unwrap();
    let owner = report
        .unusable_owners
        .iter()
        .find(|o| o.user.0 == inactive)
        .unwrap_or_else(|| {
            panic!(
                "the inactive manager is reported: {:?}",
                report.unusable_owners
            )
        });
    assert!(owner.inactive && owner.customers > 0, "{owner:?}");
    assert!(owner.describe().contains("customer(s) affected"));
    let (plan, r) = apply_at(&env, Timestamp::now()).await;
    assert_eq!(r.drain.failed, 0, "{r:?}");
    let w = env.emulator().writes();
    assert!(
        !w.tasks_created.is_empty(),
        "the playbooks plan tasks on this base"
    );
    let to_inactive = w
        .tasks_created
        .iter()
        .filter(|t| t.responsible_user_id == inactive)
        .count();
    assert_eq!(to_inactive, 0, "no task for an inactive manager");
    assert!(plan.actions.iter().all(|a| !matches!(&a.op,
        WriteOp::CreateTask { responsible, .. } if responsible.0 == inactive)));
}

/// Tasks the emulator recorded, with the customer each is about (found through the outbox:
/// the marker in the task's text names its key): (responsible, local due day, customer).
fn recorded_tasks(env: &Env) -> Vec<(u64, Date, String)> {
    let by_marker: std::collections::HashMap<String, String> = env
        .store
        .outbox_all()
        .unwrap()
        .into_iter()
        .map(|e| (rebuy::outbox::marker_for(&e.action.key), e.action.customer))
        .collect();
    let tz = env.portal.time_zone.clone();
    env.emulator()
        .writes()
        .tasks_created
        .iter()
        .map(|t| {
            let marker = t
                .text
                .rsplit("#rebuy:")
                .next()
                .map(|h| format!("#rebuy:{}", h.trim()))
                .unwrap();
            let customer = by_marker
                .get(&marker)
                .unwrap_or_else(|| panic!("task {} has no known marker: {:?}", t.id, t.text))
                .clone();
            let day = Timestamp::from_second(t.complete_till)
                .unwrap()
                .to_zoned(tz.clone())
                .date();
            (t.responsible_user_id, day, customer)
        })
        .collect()
}

/// A team's day is capped: with water delivery and reactivation on a few hundred customers and
/// a cap of 3 tasks per manager a day, `apply` (twice, on consecutive days) leaves no manager
/// with more than 3 tasks on any day and no customer with two tasks on one day; what did not
/// fit was deferred, not dropped, and the plan said so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cap_and_one_touch_a_day_hold_in_the_crm_across_runs() {
    const CAP: usize = 3;
    let cfg = amo_config(151, 400, 1200);
    // Planned at the end of the generated history, where its customers are alive.
    let now = cfg.seed.now;
    let mut env = amo_env(cfg).await;
    sync(&env, true).await.unwrap();
    let default = env
        .emulator()
        .with_data(|d| d.users.values().find(|u| u.is_active).unwrap().name.clone());
    env.portal.mapping = json!({
        "playbooks": ["water_delivery", "reactivation"],
        "default_responsible": default,
        "max_tasks_per_manager_per_day": CAP,
        "horizon_days": 14,
        "lookback_days": 3,
    });
    let (plan, r) = apply_at(&env, now).await;
    assert_eq!(r.drain.failed, 0, "{r:?}");
    let planned_tasks = plan
        .actions
        .iter()
        .filter(|a| matches!(a.op, WriteOp::CreateTask { .. }))
        .count();
    assert!(
        plan.pacing.deferred > 0,
        "the cap bites on this base: {:?}",
        plan.pacing
    );
    let until = plan.pacing.deferred_until.expect("a last deferred day");
    let tasks = recorded_tasks(&env);
    assert_eq!(
        tasks.len(),
        planned_tasks,
        "every planned task, none dropped"
    );
    assert!(tasks.iter().any(|t| t.1 == until), "spread until {until}");
    // Competing touches of a customer-day became one task that lists the others.
    assert!(plan.pacing.merged > 0, "{:?}", plan.pacing);
    let listing = env
        .emulator()
        .writes()
        .tasks_created
        .iter()
        .filter(|t| t.text.contains("Заодно обсудить:\n— "))
        .count();
    assert!(listing > 0, "a merged task lists the other goals");
    // The next day's run adds the touches that came into the horizon, around the booked ones.
    let (plan2, r2) = apply_at(&env, now + SignedDuration::from_hours(24)).await;
    assert_eq!(r2.drain.failed, 0, "{r2:?}");
    let tasks = recorded_tasks(&env);
    assert!(
        r2.enqueued.already > 0,
        "the second run re-planned booked tasks: {:?} / {:?}",
        r2.enqueued,
        plan2.pacing
    );
    let mut per_manager: std::collections::BTreeMap<(u64, Date), usize> = Default::default();
    let mut per_customer: std::collections::BTreeMap<(String, Date), usize> = Default::default();
    for (u, day, c) in &tasks {
        *per_manager.entry((*u, *day)).or_default() += 1;
        *per_customer.entry((c.clone(), *day)).or_default() += 1;
    }
    let over: Vec<_> = per_manager.iter().filter(|(_, n)| **n > CAP).collect();
    assert!(over.is_empty(), "managers over the cap: {over:?}");
    let twice: Vec<_> = per_customer.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "customers with two tasks a day: {twice:?}"
    );
    // Due days are business days.
    assert!(
        tasks
            .iter()
            .all(|t| !matches!(t.1.weekday(), Weekday::Saturday | Weekday::Sunday)),
        "weekend tasks"
    );
}

/// The predicted fields (P(alive), expected purchases in 90 days, CLV 12 months, churn band)
/// are created on contacts (numeric, numeric, numeric, select of the bands), written as plain
/// decimals the numeric fields accept, and a second run writes nothing new.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predicted_fields_are_created_written_and_not_rewritten() {
    let mut env = amo_env(amo_config(53, 60, 200)).await;
    sync(&env, true).await.unwrap();
    env.portal.mapping = json!({"fields": {
        "p_alive": "Вероятность активности", "expected_purchases_90d": "Покупок за 90 дней",
        "clv_12m": "CLV 12 мес", "churn_band": "Риск оттока", "create_missing": true,
    }});
    let apply = |env: &Env, as_of: Timestamp| {
        let conn = connector(env);
        let (portal, store) = (env.portal.clone(), env.store.clone());
        async move {
            let (plan, _, report) = writeback::apply_portal(
                &portal,
                &store,
                conn.as_ref(),
                as_of,
                Duration::from_secs(10),
            )
            .await
            .expect("apply");
            (plan, report)
        }
    };
    let (plan, report) = apply(&env, Timestamp::now()).await;
    assert_eq!(report.drain.failed, 0, "{report:?}");
    let w = env.emulator().writes();
    let mut created: Vec<(String, String, Vec<String>)> = w
        .fields_created
        .iter()
        .map(|f| (f.name.clone(), f.field_type.clone(), f.enums.clone()))
        .collect();
    created.sort();
    assert_eq!(
        created,
        [
            ("CLV 12 мес".into(), "numeric".into(), vec![]),
            ("Вероятность активности".into(), "numeric".into(), vec![]),
            ("Покупок за 90 дней".into(), "numeric".into(), vec![]),
            (
                "Риск оттока".into(),
                "select".into(),
                vec!["low".into(), "medium".into(), "high".into()]
            ),
        ]
    );
    let id_of = |name: &str| w.fields_created.iter().find(|f| f.name == name).unwrap().id;
    let (p_alive, clv, band) = (
        id_of("Вероятность активности"),
        id_of("CLV 12 мес"),
        id_of("Риск оттока"),
    );
    let written = plan.actions.iter().filter(|a| a.rule == "fields").count();
    assert!(written > 0, "{:?}", plan.actions);
    // Every customer's card holds the values, as plain decimals with at most 2 decimals.
    let cards = env.emulator().with_data(|d| {
        d.contacts
            .values()
            .filter_map(|c| {
                let get = |id: u64| {
                    c.custom_fields
                        .iter()
                        .find(|f| f.field_id == id)
                        .map(|f| f.values[0].value.as_str().unwrap_or_default().to_owned())
                };
                Some((get(p_alive)?, get(clv), get(band)?))
            })
            .collect::<Vec<_>>()
    });
    assert_eq!(cards.len(), written, "{cards:?}");
    for (p, clv, band) in &cards {
        let x: f64 = p.parse().unwrap();
        assert!((0.0..=1.0).contains(&x), "{p}");
        assert!(p.split('.').nth(1).is_none_or(|d| d.len() <= 2), "{p}");
        let want = if x >= 0.7 {
            "low"
        } else if x >= 0.3 {
            "medium"
        } else {
            "high"
        };
        assert_eq!(band, want, "{p}");
        if let Some(clv) = clv {
            assert!(clv.parse::<u64>().is_ok(), "whole units: {clv}");
        }
    }
    // The next run (after a sync, an hour later) creates and writes nothing new.
    let updates = env.emulator().writes().field_updates.len();
    sync(&env, false).await.unwrap();
    let (_, report) = apply(&env, Timestamp::now() + SignedDuration::from_hours(1)).await;
    assert_eq!(report.drain.failed, 0, "{report:?}");
    let w = env.emulator().writes();
    assert_eq!(w.fields_created.len(), 4);
    assert_eq!(w.field_updates.len(), updates, "nothing rewritten");
}
