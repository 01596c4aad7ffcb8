//! Playbooks and write-back against the Bitrix24 emulator, the same set as the amoCRM one:
//! scheduled to-dos of a won deal, repeat routing (`crm.item.update`, `IS_RETURN_CUSTOMER`),
//! the cyclic funnel on a deal category, a crash between send and done, dry run, one bad
//! action among good ones, a playbook naming an unknown stage, and segment fields created
//! once (`crm.contact.userfield.add`).
use crate::support::{assert_purchase_counts_agree, rebuy_async};
use jiff::civil::{Date, Time, Weekday};
use jiff::{SignedDuration, Timestamp};
use rebuy::config::PortalConfig;
use rebuy::outbox::{ActionState, DrainOptions};
use rebuy::plan::Plan;
use rebuy::store::Store;
use rebuy::sync::{NoProgress, SyncOptions};
use rebuy::writeback;
use rebuy_core::{Connector, WriteOp};
use rebuy_emulator::bitrix24::{B24Config, B24Emulator, RunningB24, WriteRecord};
use rebuy_emulator::seed::SeedConfig;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

/// The repeat-sales category of the seeded portal.
const REPEAT: u64 = 1;

fn b24_config(seed: u64, contacts: usize, deals: usize) -> B24Config {
    B24Config {
        seed: SeedConfig::new(seed, contacts, deals),
        // Fast, still limited: these tests are not about the bucket.
        bucket_capacity: 500,
        drain_per_sec: 200.0,
        method_cost_ms: 0,
        ..B24Config::default()
    }
}

struct Env {
    emu: RunningB24,
    dir: tempfile::TempDir,
    portal: PortalConfig,
    store: Store,
}

impl Env {
    fn emulator(&self) -> &B24Emulator {
        &self.emu.emulator
    }

    /// The write records of one method.
    fn writes_of(&self, method: &str) -> Vec<WriteRecord> {
        self.emulator()
            .writes()
            .into_iter()
            .filter(|w| w.method == method)
            .collect()
    }
}

/// A portal on the emulator, inbound-webhook auth.
async fn b24_env(cfg: B24Config) -> Env {
    let emu = B24Emulator::spawn(cfg).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "data_dir = {:?}\n[[portal]]\nid = \"b24\"\nkind = \"bitrix24\"\nbase_url = \"{}\"\nrequests_per_sec = 100\nexceed_documented_limit = true\n[portal.auth]\ntype = \"webhook\"\nurl_env = \"B24_WEBHOOK\"\n",
        dir.path().display().to_string(),
        emu.base_url
    );
    use figment::providers::Format;
    let doc: Value = figment::Figment::from(figment::providers::Toml::string(&text))
        .extract()
        .unwrap();
    let hook = emu.webhook_url();
    let env = move |k: &str| (k == "B24_WEBHOOK").then(|| hook.clone());
    let cfg = rebuy::config::resolve(&doc, "test.toml", &env).unwrap();
    let portal = cfg.portals[0].clone();
    let store = Store::open(dir.path(), &portal.id).unwrap();
    Env {
        emu,
        dir,
        portal,
        store,
    }
}

async fn sync(env: &Env, full: bool) {
    let handle = rebuy::portal::open(&env.portal, env.store.clone()).unwrap();
    rebuy::sync::sync_portal(
        handle.connector,
        env.store.clone(),
        &SyncOptions {
            full,
            ..SyncOptions::default()
        },
        Arc::new(NoProgress),
    )
    .await
    .expect("sync");
}

fn connector(env: &Env) -> Arc<dyn Connector> {
    rebuy::portal::open(&env.portal, env.store.clone())
        .unwrap()
        .connector
}

async fn plan_at(env: &Env, as_of: Timestamp) -> Plan {
    let conn = connector(env);
    writeback::plan_portal(&env.portal, &env.store, Some(conn.as_ref()), as_of)
        .await
        .expect("plan")
}

async fn apply_at(env: &Env, as_of: Timestamp) -> (Plan, writeback::ApplyReport) {
    let conn = connector(env);
    let (plan, _, report) = writeback::apply_portal(
        &env.portal,
        &env.store,
        conn.as_ref(),
        as_of,
        Duration::from_secs(10),
    )
    .await
    .expect("apply");
    (plan, report)
}

fn write_playbook(env: &Env, name: &str, text: &str) -> String {
    let path = env.dir.path().join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// Marks a deal won today, as a manager closing it would.
fn win(env: &Env, deal: u64) {
    let now = env.emulator().now();
    assert!(env.emulator().update_deal(deal, |d| {
        d.stage_id = if d.category_id == 0 {
            "WON".into()
        } else {
            format!("C{}:WON", d.category_id)
        };
        d.stage_semantic_id = "S".into();
        d.closed = true;
        d.closedate = rebuy_emulator::bitrix24::midnight(now);
    }));
}

/// The open stages of a category, in order.
fn stages(env: &Env, category: u64) -> Vec<String> {
    env.emulator().with_data(|d| {
        d.stages[&category]
            .iter()
            .filter(|s| s.semantics.is_none())
            .map(|s| s.status_id.clone())
            .collect()
    })
}

fn param<'a>(w: &'a WriteRecord, key: &str) -> &'a Value {
    &w.params[key]
}

fn u64_of(v: &Value) -> Option<u64> {
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b24_a_won_deal_yields_exactly_the_scheduled_todos() {
    let mut env = b24_env(b24_config(61, 60, 150)).await;
    let contact = env
        .emulator()
        .with_data(|d| *d.contacts.keys().next().unwrap());
    let deal = env.emulator().add_deal(contact, 54_000, 0).unwrap();
    win(&env, deal);
    let manager = env.emulator().with_data(|d| d.deals[&deal].assigned_by_id);
    sync(&env, true).await;
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
    let (_, report) = apply_at(&env, now).await;
    assert_eq!(report.drain.failed, 0, "{report:?}");
    assert!(
        report.requests <= report.drain.done.div_ceil(50) + 2,
        "packed into batches: {report:?}"
    );

    let tz = env.portal.time_zone.clone();
    let today = now.to_zoned(tz.clone()).date();
    let mut todos: Vec<WriteRecord> = env
        .writes_of("crm.activity.todo.add")
        .into_iter()
        .filter(|w| u64_of(param(w, "ownerId")) == Some(deal))
        .collect();
    let deadline = |w: &WriteRecord| -> jiff::Zoned {
        param(w, "deadline")
            .as_str()
            .unwrap()
            .parse::<Timestamp>()
            .unwrap()
            .to_zoned(tz.clone())
    };
    todos.sort_by_key(|w| deadline(w).timestamp());
    assert_eq!(
        todos.len(),
        3,
        "exactly the scheduled to-dos on the won deal"
    );
    let expect = [
        (7, "11:00", "Позвонить клиенту"),
        (30, "10:00", "Написать клиенту"),
        (180, "16:30", "Встреча с клиентом"),
    ];
    for (w, (days, time, title)) in todos.iter().zip(expect) {
        let due = deadline(w);
        let mut day: Date = today.checked_add(jiff::Span::new().days(days)).unwrap();
        while matches!(day.weekday(), Weekday::Saturday | Weekday::Sunday) {
            day = day.tomorrow().unwrap();
        }
        assert_eq!(due.date(), day, "+{days} days");
        assert_eq!(due.strftime("%H:%M").to_string(), time, "+{days} days time");
        assert!(
            due.time() >= Time::constant(10, 0, 0, 0) && due.time() < Time::constant(18, 0, 0, 0)
        );
        assert_eq!(u64_of(param(w, "ownerTypeId")), Some(2), "on the deal");
        assert_eq!(
            u64_of(param(w, "responsibleId")),
            Some(manager),
            "the deal's manager"
        );
        assert_eq!(param(w, "title"), title);
        assert!(
            param(w, "description")
                .as_str()
                .unwrap()
                .contains("#rebuy:"),
            "the marker is in the text"
        );
    }
    let text = param(&todos[0], "description").as_str().unwrap();
    assert!(text.starts_with("Звонок удовлетворённости"), "{text}");
    // The to-dos are in the portal, findable by deal.
    env.emulator().with_data(|d| {
        assert_eq!(
            d.activities.values().filter(|a| a.owner_id == deal).count(),
            3
        );
    });

    // Again later, after a sync: nothing new.
    let before = env.writes_of("crm.activity.todo.add").len();
    sync(&env, false).await;
    let (_, again) = apply_at(&env, now + SignedDuration::from_hours(2)).await;
    assert_eq!(again.enqueued.added, 0);
    assert_eq!(env.writes_of("crm.activity.todo.add").len(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b24_a_repeat_lead_is_moved_flagged_and_tasked_once() {
    let mut env = b24_env(b24_config(62, 80, 240)).await;
    let (buyer, non_buyer) = env.emulator().with_data(|d| {
        let won = |c: u64| {
            d.deals
                .values()
                .any(|x| x.contact_id == Some(c) && x.stage_semantic_id == "S")
        };
        let has_deals = |c: u64| d.deals.values().any(|x| x.contact_id == Some(c));
        let buyer = d.contacts.keys().copied().find(|c| won(*c)).unwrap();
        let non_buyer = d
            .contacts
            .keys()
            .copied()
            .find(|c| has_deals(*c) && !won(*c))
            .unwrap();
        (buyer, non_buyer)
    });
    let repeat_lead = env.emulator().add_deal(buyer, 3_000, 0).unwrap();
    let inquiry = env.emulator().add_deal(non_buyer, 1_000, 0).unwrap();
    let contacts_before = env.emulator().with_data(|d| d.contacts.len());
    sync(&env, true).await;
    env.portal.mapping = json!({"repeat_pipeline": "Повторные продажи"});
    let (plan, report) = apply_at(&env, Timestamp::now()).await;
    assert_eq!(report.drain.failed, 0, "{report:?}");
    assert_eq!(plan.actions.len(), 3, "{:#?}", plan.actions);

    // Moved with crm.item.update (crm.deal.update cannot change the category).
    let moves: Vec<WriteRecord> = env
        .writes_of("crm.item.update")
        .into_iter()
        .filter(|w| u64_of(param(w, "id")) == Some(repeat_lead))
        .collect();
    assert_eq!(moves.len(), 1);
    // The repeat stage: the first open stage after "unsorted".
    let target = env.emulator().with_data(|d| {
        d.stages[&REPEAT]
            .iter()
            .filter(|s| s.semantics.is_none() && !s.name.to_lowercase().contains("неразобран"))
            .map(|s| s.status_id.clone())
            .next()
            .unwrap()
    });
    assert_eq!(
        u64_of(&moves[0].params["fields"]["categoryId"]),
        Some(REPEAT)
    );
    assert_eq!(moves[0].params["fields"]["stageId"], target.as_str());
    let flags: Vec<WriteRecord> = env
        .writes_of("crm.deal.update")
        .into_iter()
        .filter(|w| u64_of(param(w, "id")) == Some(repeat_lead))
        .collect();
    assert_eq!(flags.len(), 1);
    assert_eq!(flags[0].params["fields"]["IS_RETURN_CUSTOMER"], "Y");
    let todos: Vec<WriteRecord> = env
        .writes_of("crm.activity.todo.add")
        .into_iter()
        .filter(|w| u64_of(param(w, "ownerId")) == Some(repeat_lead))
        .collect();
    assert_eq!(todos.len(), 1);
    let text = param(&todos[0], "description").as_str().unwrap();
    assert!(text.starts_with("Повторная заявка от клиента"), "{text}");
    assert!(text.contains(", последняя"), "{text}");
    assert_purchase_counts_agree(text);
    env.emulator().with_data(|d| {
        let x = &d.deals[&repeat_lead];
        assert_eq!(
            (x.category_id, x.stage_id.as_str()),
            (REPEAT, target.as_str())
        );
        assert!(x.is_return_customer);
        // The known non-buyer's inquiry stays where it was; no contact is created.
        assert_eq!(d.deals[&inquiry].category_id, 0);
        assert!(!d.deals[&inquiry].is_return_customer);
        assert_eq!(d.contacts.len(), contacts_before);
    });
    assert!(
        env.emulator()
            .writes()
            .iter()
            .all(|w| u64_of(&w.params["id"]) != Some(inquiry)
                && u64_of(&w.params["ownerId"]) != Some(inquiry))
    );

    // Once: a second sync and apply do nothing more.
    let writes = env.emulator().writes().len();
    sync(&env, false).await;
    let (plan2, _) = apply_at(&env, Timestamp::now()).await;
    assert!(plan2.actions.is_empty(), "{:#?}", plan2.actions);
    assert_eq!(env.emulator().writes().len(), writes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b24_the_funnel_moves_deals_as_time_passes_and_resets_on_a_purchase() {
    let now = Timestamp::now();
    let mut cfg = b24_config(63, 150, 600);
    cfg.seed = cfg
        .seed
        .clone()
        .with_now(now - SignedDuration::from_hours(48));
    let mut env = b24_env(cfg).await;
    sync(&env, true).await;
    let st = stages(&env, REPEAT); // unsorted, remind, contacted, invoice
    env.portal.mapping = json!({"funnel": {
        "pipeline": "Повторные продажи",
        "stages": [st[1], st[2], st[3]],
        "windows_days": [30, 0],
    }});
    let tz = env.portal.time_zone.clone();
    let today = now.to_zoned(tz.clone()).date();
    let (_, analysis) = rebuy::analyse::analyse_portal(&env.store, &env.portal, Some(now)).unwrap();
    let row = analysis
        .customers
        .iter()
        .find(|r| {
            matches!(r.key, rebuy::analytics::CustomerKey::Contact(_))
                && r.next_purchase
                    .is_some_and(|n| (10..=25).contains(&(n - today).get_days()))
        })
        .expect("a customer due in 10-25 days");
    let rebuy::analytics::CustomerKey::Contact(contact) = row.key else {
        unreachable!()
    };
    let next = row.next_purchase.unwrap();
    // Their funnel deal, in the "more than 30 days" stage.
    let deal = env.emulator().add_deal(contact.0, 0, REPEAT).unwrap();
    let first = st[1].clone();
    env.emulator().update_deal(deal, |d| d.stage_id = first);
    sync(&env, false).await;

    let moves_of = |env: &Env| -> Vec<String> {
        env.writes_of("crm.item.update")
            .iter()
            .filter(|w| u64_of(param(w, "id")) == Some(deal))
            .map(|w| w.params["fields"]["stageId"].as_str().unwrap().to_owned())
            .collect()
    };
    let (plan, report) = apply_at(&env, Timestamp::now()).await;
    assert_eq!(report.drain.failed, 0, "{report:?}");
    assert_eq!(moves_of(&env), vec![st[2].clone()]);
    // Every other customer with a next purchase gets its funnel deal, once.
    let created = |env: &Env| {
        env.writes_of("crm.deal.add")
            .iter()
            .filter(|w| u64_of(&w.params["fields"]["CATEGORY_ID"]) == Some(REPEAT))
            .count() as u64
    };
    assert!(plan.funnel_without_deal > 0);
    assert_eq!(created(&env), plan.funnel_without_deal);
    sync(&env, false).await;
    let (plan, _) = apply_at(&env, Timestamp::now() + SignedDuration::from_hours(1)).await;
    assert_eq!(plan.funnel_without_deal, 0);
    assert_eq!(moves_of(&env), vec![st[2].clone()]);
    // The day after the expected purchase: due / overdue.
    let later = next
        .tomorrow()
        .unwrap()
        .to_zoned(tz.clone())
        .unwrap()
        .timestamp()
        + SignedDuration::from_hours(9);
    apply_at(&env, later).await;
    assert_eq!(moves_of(&env), vec![st[2].clone(), st[3].clone()]);

    // A purchase: the next date is recomputed and the deal goes back.
    let bought = env.emulator().add_deal(contact.0, 2_500, 0).unwrap();
    win(&env, bought);
    sync(&env, false).await;
    let after = Timestamp::now();
    let (_, analysis) =
        rebuy::analyse::analyse_portal(&env.store, &env.portal, Some(after)).unwrap();
    let new_next = analysis
        .customers
        .iter()
        .find(|r| r.key == rebuy::analytics::CustomerKey::Contact(contact))
        .and_then(|r| r.next_purchase)
        .unwrap();
    assert!(new_next > next, "reset: {new_next} after {next}");
    let left = (new_next - after.to_zoned(tz.clone()).date()).get_days();
    let want = if left > 30 { &st[1] } else { &st[2] };
    apply_at(&env, after).await;
    assert_eq!(
        moves_of(&env),
        vec![st[2].clone(), st[3].clone(), want.clone()]
    );
    env.emulator()
        .with_data(|d| assert_eq!(&d.deals[&deal].stage_id, want));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b24_dry_run_writes_nothing_and_one_bad_action_does_not_block_the_rest() {
    let mut env = b24_env(b24_config(64, 90, 250)).await;
    sync(&env, true).await;
    let pb = write_playbook(
        &env,
        "greetings",
        "[[seasonal]]\nid = \"spring\"\ndate = \"03-05\"\ngoal = \"Поздравить с весной\"\ntask = \"letter\"\n",
    );
    env.portal.mapping = json!({"playbooks": [pb]});
    let as_of = writeback::parse_plan_as_of("2026-03-02", &env.portal).unwrap();
    let plan = plan_at(&env, as_of).await;
    assert!(plan.actions.len() > 20, "{}", plan.actions.len());
    assert!(env.emulator().writes().is_empty(), "a plan writes nothing");
    assert_eq!(env.store.outbox_counts().unwrap(), Default::default());
    assert_eq!(plan_at(&env, as_of).await, plan, "deterministic");

    // A deal deleted in the CRM after the sync: its to-do is refused, the others go through.
    let WriteOp::CreateTask {
        entity: rebuy_core::EntityRef::Deal(victim),
        ..
    } = plan.actions[3].op
    else {
        panic!("a task on a deal")
    };
    assert!(env.emulator().delete_deal(victim.0));
    let conn = connector(&env);
    let report = writeback::apply_plan(
        conn.as_ref(),
        &env.store,
        &plan,
        &DrainOptions::default(),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let victims = plan
        .actions
        .iter()
        .filter(|a| matches!(&a.op, WriteOp::CreateTask { entity, .. } if *entity == rebuy_core::EntityRef::Deal(victim)))
        .count() as u64;
    assert!(victims >= 1);
    assert_eq!(report.drain.failed, victims);
    assert_eq!(report.drain.done, plan.actions.len() as u64 - victims);
    let failed: Vec<(String, String)> = env
        .store
        .outbox_all()
        .unwrap()
        .into_iter()
        .filter_map(|e| match e.state {
            ActionState::Failed { code, message, .. } => Some((code, message)),
            _ => None,
        })
        .collect();
    assert_eq!(failed.len() as u64, victims);
    assert!(
        failed[0].1.contains("Owner not found"),
        "the CRM's message: {failed:?}"
    );
    assert_eq!(
        env.writes_of("crm.activity.todo.add").len() as u64,
        plan.actions.len() as u64 - victims
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b24_a_playbook_with_an_unknown_stage_is_refused_with_every_problem() {
    let mut env = b24_env(b24_config(65, 20, 40)).await;
    sync(&env, true).await;
    let pb = write_playbook(
        &env,
        "broken",
        r#"
[funnel]
pipeline = "Повторные продажи"
stages = ["C1:PREPARATION", "Такой стадии нет"]
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
        msg.contains(&format!(
            "{pb}: funnel.stages[1]: unknown stage \"Такой стадии нет\" in pipeline \"Повторные продажи\""
        )),
        "{msg}"
    );
    assert!(
        msg.contains("after_purchase[0].responsible: unknown user \"Никто\""),
        "{msg}"
    );
    // A funnel on customers does not exist on Bitrix24.
    env.portal.mapping =
        json!({"funnel": {"entity": "customers", "stages": ["a", "b"], "windows_days": [7]}});
    let conn = connector(&env);
    let err = writeback::plan_portal(
        &env.portal,
        &env.store,
        Some(conn.as_ref()),
        Timestamp::now(),
    )
    .await
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("the customers entity exists only in amoCRM"),
        "{err:#}"
    );
    assert!(env.emulator().writes().is_empty());
}

/// Segment fields named in the mapping are created once as user fields, listed, and written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b24_segment_fields_are_created_once_and_written() {
    let mut env = b24_env(b24_config(66, 60, 200)).await;
    sync(&env, true).await;
    env.portal.mapping = json!({"fields": {
        "rfm_segment": "Сегмент RFM", "xyz": "UF_CRM_XYZ_CLASS",
        "next_purchase": "Дата следующей покупки",
    }});
    // Not allowed: refused with the way out named.
    let err = format!("{:#}", {
        let conn = connector(&env);
        writeback::plan_portal(
            &env.portal,
            &env.store,
            Some(conn.as_ref()),
            Timestamp::now(),
        )
        .await
        .unwrap_err()
    });
    assert!(
        err.contains("unknown contacts field \"Сегмент RFM\"")
            && err.contains("create_missing = true"),
        "{err}"
    );
    env.portal.mapping["fields"]["create_missing"] = json!(true);
    let (plan, report) = apply_at(&env, Timestamp::now()).await;
    assert_eq!(report.drain.failed, 0, "{report:?}");
    let adds = env.writes_of("crm.contact.userfield.add");
    let mut names: Vec<&str> = adds
        .iter()
        .map(|w| w.params["fields"]["FIELD_NAME"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["REBUY_NEXT_PURCHASE", "REBUY_RFM_SEGMENT", "XYZ_CLASS"]
    );
    let types: Vec<&str> = adds
        .iter()
        .map(|w| w.params["fields"]["USER_TYPE_ID"].as_str().unwrap())
        .collect();
    assert!(
        types.contains(&"date") && types.contains(&"string"),
        "{types:?}"
    );
    // The segments landed in the new fields.
    let written: Vec<&rebuy::outbox::Action> =
        plan.actions.iter().filter(|a| a.rule == "fields").collect();
    assert!(!written.is_empty());
    env.emulator().with_data(|d| {
        let with = d
            .contacts
            .values()
            .filter(|c| c.uf.contains_key("UF_CRM_REBUY_RFM_SEGMENT"))
            .count();
        assert_eq!(with, written.len());
        let c = d
            .contacts
            .values()
            .find(|c| c.uf.contains_key("UF_CRM_XYZ_CLASS"))
            .unwrap();
        assert!(matches!(
            c.uf["UF_CRM_XYZ_CLASS"].as_str(),
            Some("X" | "Y" | "Z")
        ));
    });
    // Done once.
    sync(&env, false).await;
    apply_at(&env, Timestamp::now() + SignedDuration::from_hours(1)).await;
    assert_eq!(env.writes_of("crm.contact.userfield.add").len(), 3);
}

/// The process dies after a batch was sent but before "done" was committed; the next run
/// finds the to-dos by their marker (`crm.activity.list`) and the funnel deals by title,
/// category and contact (`crm.deal.list`), and creates none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b24_killed_between_send_and_done_then_rerun_creates_no_duplicate() {
    let emu = B24Emulator::spawn(b24_config(67, 160, 400)).await.unwrap();
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
            "data_dir = {:?}\n[[portal]]\nid = \"b\"\nkind = \"bitrix24\"\nbase_url = \"{}\"\nrequests_per_sec = 100\nexceed_documented_limit = true\n\
             [portal.auth]\ntype = \"webhook\"\nurl_env = \"B24_WEBHOOK\"\n\
             [portal.mapping]\nplaybooks = [{:?}]\n\
             [portal.mapping.funnel]\npipeline = \"Повторные продажи\"\n\
             stages = [\"C1:PREPARATION\", \"C1:PREPAYMENT_INVOICE\", \"C1:EXECUTING\"]\nwindows_days = [30, 0]\n",
            dir.path().join("data").display().to_string(),
            emu.base_url,
            pb.display().to_string(),
        ),
    )
    .unwrap();
    let cfg = cfg_path.display().to_string();
    let hook = emu.webhook_url();
    let run = |args: &[&str], fail: Option<&str>| {
        let mut a = vec!["--config".to_owned(), cfg.clone()];
        a.extend(args.iter().map(|s| (*s).to_owned()));
        let mut env = vec![("B24_WEBHOOK".to_owned(), hook.clone())];
        if let Some(f) = fail {
            env.push(("REBUY_FAILPOINTS".into(), f.into()));
        }
        rebuy_async(a, env)
    };
    let out = run(&["sync", "--portal", "b", "--full", "--quiet"], None).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(
        &[
            "plan",
            "--portal",
            "b",
            "--as-of",
            "2026-03-02",
            "--format",
            "json",
        ],
        None,
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    let of = |op: &str| {
        plan["actions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["op"]["op"] == op)
            .count()
    };
    let (planned, deals_planned) = (of("create_task"), of("create_deal"));
    assert!(planned > 100, "enough for several batches: {planned}");
    assert!(deals_planned > 0, "funnel deals to create");
    let count = |emu: &RunningB24, method: &str| {
        emu.emulator
            .writes()
            .into_iter()
            .filter(|w| w.method == method)
            .count()
    };
    let todos = |emu: &RunningB24| count(emu, "crm.activity.todo.add");
    let deals = |emu: &RunningB24| count(emu, "crm.deal.add");
    assert_eq!(todos(&emu) + deals(&emu), 0, "plan writes nothing");

    let crash = run(
        &["apply", "--portal", "b", "--as-of", "2026-03-02"],
        Some("outbox.after_send=1"),
    )
    .await;
    assert!(!crash.status.success(), "the failpoint aborts the process");
    let sent = todos(&emu) + deals(&emu);
    assert!(
        sent >= 1 && sent < planned + deals_planned,
        "one batch landed: {sent}"
    );
    assert!(deals(&emu) >= 1, "funnel deals were in the first batch");

    let out = run(&["apply", "--portal", "b", "--as-of", "2026-03-02"], None).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("{sent} found already done in the CRM")),
        "{stdout}"
    );
    assert_eq!(todos(&emu), planned, "each to-do exactly once");
    assert_eq!(deals(&emu), deals_planned, "each funnel deal exactly once");
    let mut markers: Vec<String> = emu.emulator.with_data(|d| {
        d.activities
            .values()
            .map(|a| a.description.rsplit_once("#rebuy:").unwrap().1.to_owned())
            .collect()
    });
    markers.sort();
    markers.dedup();
    assert_eq!(markers.len(), planned);
}

/// B2B: customers are companies; the segment fields named for contacts are created on
/// companies too (`crm.company.userfield.add`) and written with `crm.company.update`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b24_b2b_segment_fields_go_on_the_company_card() {
    let mut env = b24_env(b24_config(68, 80, 300)).await;
    sync(&env, true).await;
    env.portal.analytics.mode = rebuy::analytics::Mode::B2b;
    env.portal.mapping = json!({"fields": {"rfm_segment": "Сегмент RFM", "create_missing": true}});
    let (plan, report) = apply_at(&env, Timestamp::now()).await;
    assert_eq!(report.drain.failed, 0, "{report:?}");
    let field_names = |method: &str| -> Vec<String> {
        env.writes_of(method)
            .iter()
            .map(|w| {
                w.params["fields"]["FIELD_NAME"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    };
    assert_eq!(
        field_names("crm.contact.userfield.add"),
        ["REBUY_RFM_SEGMENT"]
    );
    assert_eq!(
        field_names("crm.company.userfield.add"),
        ["REBUY_RFM_SEGMENT"]
    );
    let on_companies = plan
        .actions
        .iter()
        .filter(|a| {
            matches!(
                &a.op,
                WriteOp::UpdateFields {
                    entity: rebuy_core::EntityRef::Company(_),
                    ..
                }
            )
        })
        .count();
    assert!(on_companies > 0, "company customers get their segment");
    assert_eq!(env.writes_of("crm.company.update").len(), on_companies);
    env.emulator().with_data(|d| {
        let written = d
            .companies
            .values()
            .filter(|c| c.uf.contains_key("UF_CRM_REBUY_RFM_SEGMENT"))
            .count();
        assert_eq!(written, on_companies);
    });
    assert!(
        !plan.skipped.iter().any(|s| s.rule == "fields"),
        "{:?}",
        plan.skipped
    );
    // Once.
    apply_at(&env, Timestamp::now() + SignedDuration::from_hours(1)).await;
    assert_eq!(env.writes_of("crm.company.userfield.add").len(), 1);
}

/// A connection dropped after the portal ran a `batch` of to-dos: nothing is sent twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b24_dropped_connections_after_the_write_create_no_duplicate() {
    let mut env = b24_env(b24_config(67, 400, 1000)).await;
    sync(&env, true).await;
    let pb = write_playbook(
        &env,
        "spring",
        "[[seasonal]]\nid = \"spring\"\ndate = \"03-05\"\ngoal = \"Поздравить с весной\"\n",
    );
    env.portal.mapping = json!({"playbooks": [pb]});
    let as_of = writeback::parse_plan_as_of("2026-03-02", &env.portal).unwrap();
    let plan = plan_at(&env, as_of).await;
    let planned = plan.actions.len();
    assert!(planned > 100, "several batches: {planned}");
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
    .unwrap();
    assert!(
        report.drain.unconfirmed > 0,
        "{report:?} {:?}",
        env.emulator().stats()
    );
    assert_eq!(report.drain.failed, 0, "{report:?}");
    let todos = env.writes_of("crm.activity.todo.add");
    let mut markers: Vec<String> = todos
        .iter()
        .map(|w| {
            let text = w.params["description"].as_str().unwrap_or_default();
            text.rsplit_once("#rebuy:").unwrap().1.to_owned()
        })
        .collect();
    markers.sort();
    markers.dedup();
    assert_eq!(markers.len(), planned, "every to-do is there");
    assert_eq!(todos.len(), planned, "and none twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b24_completed_todos_are_read_back_on_sync() {
    let mut env = b24_env(b24_config(62, 60, 150)).await;
    let contact = env
        .emulator()
        .with_data(|d| *d.contacts.keys().next().unwrap());
    let deal = env.emulator().add_deal(contact, 30_000, 0).unwrap();
    win(&env, deal);
    sync(&env, true).await;
    let pb = write_playbook(
        &env,
        "care",
        r#"
name = "care"
[[after_purchase]]
id = "thanks"
days = 1
goal = "Поблагодарить"
[[after_purchase]]
id = "check"
days = 3
goal = "Контрольный звонок"
"#,
    );
    env.portal.mapping = json!({"playbooks": [pb], "horizon_days": 10, "lookback_days": 0,
                                "holdout_percent": 0});
    let (plan, report) = apply_at(&env, Timestamp::now()).await;
    assert_eq!(report.drain.failed, 0, "{report:?}");
    let customer = format!("contact:{contact}");
    let mine: Vec<&str> = plan
        .actions
        .iter()
        .filter(|a| a.customer == customer)
        .map(|a| a.key.as_str())
        .collect();
    assert_eq!(mine.len(), 2, "{mine:?}");
    let done = |key: &str| match env.store.outbox_get(key).unwrap().unwrap().state {
        ActionState::Done { crm_id, .. } => crm_id.unwrap(),
        s => panic!("{s:?}"),
    };
    let (first, second) = (done(mine[0]), done(mine[1]));
    // A manager closes the first to-do in the timeline.
    assert!(env.emulator().complete_activity(first));
    sync(&env, false).await;
    let states = env.store.task_outcomes().unwrap();
    assert!(states[mine[0]].completed, "{states:?}");
    assert_eq!(states[mine[0]].crm_id, first);
    assert!(!states[mine[1]].completed);
    assert_eq!(states[mine[1]].crm_id, second);
    // The open one is read again on the next sync; the completed one is not.
    assert!(env.emulator().complete_activity(second));
    sync(&env, false).await;
    assert!(env.store.task_outcomes().unwrap()[mine[1]].completed);
}

/// Two simulated months on Bitrix24: to-dos held out of half the customers, completions read
/// back, and `results` recovering the simulated uplift.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b24_results_recover_a_simulated_uplift() {
    use rebuy_emulator::answers::AnswerSim;
    use rust_decimal::Decimal;
    let mut env = b24_env(b24_config(63, 420, 900)).await;
    sync(&env, true).await;
    let pb = write_playbook(
        &env,
        "proof",
        "name = \"proof\"\n[[seasonal]]\nid = \"m1\"\ndate = \"01-04\"\ngoal = \"Новинки\"\n\
         [[seasonal]]\nid = \"m2\"\ndate = \"02-01\"\ngoal = \"Новинки\"\n",
    );
    env.portal.mapping = json!({"playbooks": [pb], "horizon_days": 6, "lookback_days": 0,
                                "holdout_percent": 50, "outcome_window_days": 25});
    let sim = AnswerSim {
        completion: 0.8,
        base_probability: 0.2,
        uplift: 0.5,
        amount: 1000,
        seed: 2027,
    };
    let tz = env.portal.time_zone.clone();
    let mut last = Timestamp::UNIX_EPOCH;
    for (m, d) in [(1, 4), (2, 1)] {
        let from = jiff::civil::date(2027, m, d)
            .to_zoned(tz.clone())
            .unwrap()
            .timestamp();
        let (plan, report) = apply_at(&env, from).await;
        assert_eq!(report.drain.failed, 0, "{report:?}");
        assert!(plan.held_out.customers > 50, "{:?}", plan.held_out);
        env.emulator()
            .simulate_answers(from.as_second(), from.as_second() + 25 * 86_400, &sim);
        sync(&env, false).await;
        last = from;
    }
    let end = last + SignedDuration::from_hours(24 * 40);
    let r = rebuy::results::portal_results(&env.store, &env.portal, end, None).unwrap();
    eprintln!("{}", r.table());
    let o = &r.overall;
    assert!(
        o.treated.customers > 100 && o.holdout.customers > 100,
        "{}",
        r.table()
    );
    let truth = Decimal::from(o.treated.completed) / Decimal::from(o.treated.customers)
        * Decimal::from(500);
    let (lo, hi) = o.comparison.revenue_interval;
    assert!(
        lo > Decimal::ZERO && lo <= truth && truth <= hi,
        "{truth}\n{}",
        r.table()
    );
}
