//! Pure tests of the planner: keys, windows, due times, responsible, routing, funnel, and the
//! `[[test]]` cases of every built-in playbook.
use super::*;
use crate::analytics::{Abc, CustomerRow, RfmSegment, Tier, Xyz};
use crate::playbooks::{self, CrmFacts};
use jiff::civil::date;
use rebuy_core::{ContactId, Pipeline, Stage, StageKind, User};
use rust_decimal_macros::dec;
use std::collections::BTreeSet;

pub(crate) fn msk() -> TimeZone {
    TimeZone::get("Europe/Moscow").unwrap()
}

pub(crate) fn pipelines() -> Vec<Pipeline> {
    let stage = |id: &str, name: &str, sort, kind| Stage {
        id: StageId(id.into()),
        name: name.into(),
        sort,
        kind,
    };
    vec![
        Pipeline {
            id: PipelineId(1),
            name: "Воронка продаж".into(),
            is_main: true,
            sort: 1,
            stages: vec![
                stage("10", "Неразобранное", 10, StageKind::Open),
                stage("11", "Первичный контакт", 20, StageKind::Open),
                stage("142", "Успешно реализовано", 10000, StageKind::Won),
                stage("143", "Закрыто и не реализовано", 11000, StageKind::Lost),
            ],
        },
        Pipeline {
            id: PipelineId(2),
            name: "Повторные продажи".into(),
            is_main: false,
            sort: 2,
            stages: vec![
                stage("20", "Неразобранное", 10, StageKind::Open),
                stage("21", "Напомнить о покупке", 20, StageKind::Open),
                stage("22", "Связались", 30, StageKind::Open),
                stage("142", "Успешно реализовано", 10000, StageKind::Won),
            ],
        },
        Pipeline {
            id: PipelineId(3),
            name: "Цикл клиента".into(),
            is_main: false,
            sort: 3,
            stages: vec![
                stage("31", "Больше 30 дней", 20, StageKind::Open),
                stage("32", "30 дней", 30, StageKind::Open),
                stage("33", "7 дней", 40, StageKind::Open),
                stage("34", "Пора покупать", 50, StageKind::Open),
                stage("35", "В работе", 60, StageKind::Open),
                stage("142", "Успешно реализовано", 10000, StageKind::Won),
            ],
        },
    ]
}

pub(crate) fn users() -> Vec<User> {
    let u = |id, name: &str, active| User {
        id: UserId(id),
        name: name.into(),
        email: None,
        active,
    };
    vec![
        u(100, "Анна Смирнова", true),
        u(101, "Иван Петров", true),
        u(102, "Ольга Сервис", true),
        u(103, "Уволенный Сотрудник", false),
    ]
}

pub(crate) fn rules_for(mapping: serde_json::Value) -> Rules {
    let p = pipelines();
    let u = users();
    playbooks::resolve(
        "shop",
        &mapping,
        None,
        CrmFacts {
            crm: CrmKind::Amocrm,
            pipelines: &p,
            users: &u,
            fields: None,
            customers: None,
            company_customers: false,
        },
    )
    .unwrap_or_else(|e| panic!("{}", playbooks::format_problems(&e)))
}

/// A customer row with the given purchase days (oldest first).
pub(crate) fn row(contact: u64, purchases: &[Date], next: Option<Date>) -> CustomerRow {
    CustomerRow {
        key: CustomerKey::Contact(ContactId(contact)),
        contact_ids: vec![ContactId(contact)],
        company_ids: vec![],
        name: format!("Клиент {contact}"),
        phones: vec![],
        emails: vec![],
        first_purchase: purchases[0],
        last_purchase: *purchases.last().unwrap(),
        purchases: purchases.len() as u32,
        deals: purchases.len() as u32,
        revenue: dec!(1000) * Decimal::from(purchases.len()),
        recency_days: 0,
        r: 3,
        f: 3,
        m: 3,
        rfm_segment: if purchases.len() == 1 {
            RfmSegment::New
        } else {
            RfmSegment::Loyal
        },
        abc: Abc::B,
        xyz: Xyz::Y,
        tier: Tier::Medium,
        cycle_days: None,
        next_purchase: next,
        cycle_status: None,
        one_time: purchases.len() == 1,
        sleeping: false,
        p_alive: None,
        expected_purchases_90d: None,
        next_purchase_forecast: None,
        expected_order_value: None,
        clv: None,
    }
}

pub(crate) fn facts(contact: u64, purchases: &[Date], products: &[&str]) -> CustomerFacts {
    CustomerFacts {
        sales: purchases
            .iter()
            .enumerate()
            .map(|(i, d)| Sale {
                day: *d,
                amount: dec!(1000),
                deal: DealId(contact * 100 + i as u64),
                manager: Some(UserId(101)),
                products: if i + 1 == purchases.len() {
                    products.iter().map(|p| p.to_lowercase()).collect()
                } else {
                    vec![]
                },
            })
            .collect(),
        funnel_deal: None,
        crm_customer: None,
    }
}

/// 08:00 local on `d`: the day's business slots are still ahead.
pub(crate) fn morning(d: Date) -> Timestamp {
    d.at(8, 0, 0, 0).to_zoned(msk()).unwrap().timestamp()
}

fn run(
    rules: &Rules,
    as_of: Timestamp,
    rows: &[CustomerRow],
    f: &[CustomerFacts],
    deals: &[OpenDeal],
) -> Plan {
    let tz = msk();
    plan(&PlanInput {
        portal: "shop",
        crm: CrmKind::Amocrm,
        as_of,
        tz: &tz,
        rules,
        customers: rows,
        facts: f,
        open_deals: deals,
        booked: &Booked::default(),
        holdout: None,
    })
}

fn tasks(p: &Plan) -> Vec<(String, String, u64, String)> {
    p.actions
        .iter()
        .filter_map(|a| match &a.op {
            WriteOp::CreateTask {
                due, responsible, ..
            } => Some((
                a.rule.clone(),
                a.key.clone(),
                responsible.0,
                due.to_zoned(msk()).strftime("%Y-%m-%d %H:%M").to_string(),
            )),
            _ => None,
        })
        .collect()
}

#[test]
fn day_numbers_round_trip() {
    for d in [
        date(1970, 1, 1),
        date(2024, 2, 29),
        date(2026, 3, 1),
        date(1969, 12, 31),
        date(2100, 3, 1),
    ] {
        assert_eq!(from_day_number(day_number(d)), d);
    }
    assert_eq!(day_number(date(1970, 1, 2)), 1);
    assert_eq!(
        day_number(date(2026, 3, 1)) - day_number(date(2026, 2, 1)),
        28
    );
}

#[test]
fn after_purchase_touches_have_keys_due_times_and_responsible() {
    let rules = rules_for(serde_json::json!({
        "playbooks": ["car_dealer"],
        "horizon_days": 400,
        "lookback_days": 0,
    }));
    // Bought on Monday 2026-03-02.
    let buy = date(2026, 3, 2);
    let rows = [row(7, &[buy], None)];
    let f = [facts(7, &[buy], &[])];
    let p = run(&rules, morning(buy), &rows, &f, &[]);
    let t = tasks(&p);
    let got: Vec<(&str, &str)> = t
        .iter()
        .map(|(r, _, _, due)| (r.as_str(), due.as_str()))
        .collect();
    // +7 Mon 03-09 at the rule's 11:00; +30 Wed 04-01; +90 Sun 05-31 -> Mon 06-01;
    // +180 Sat 08-29 -> Mon 08-31; +365 Tue 2027-03-02; spring tyres 2026 and 2027 (03-18),
    // autumn tyres 2026 (10-01).
    assert_eq!(
        got,
        vec![
            ("car_dealer.add_on_offer", "2026-06-01 10:00"),
            ("car_dealer.autumn_tyres", "2026-10-01 10:00"),
            ("car_dealer.check_in", "2026-04-01 10:00"),
            ("car_dealer.insurance_renewal", "2027-03-02 10:00"),
            ("car_dealer.satisfaction", "2026-03-09 11:00"),
            ("car_dealer.service_reminder", "2026-08-31 10:00"),
            ("car_dealer.spring_tyres", "2026-03-18 10:00"),
            ("car_dealer.spring_tyres", "2027-03-18 10:00"),
        ]
    );
    assert!(
        t.iter().all(|(_, _, resp, _)| *resp == 101),
        "the deal's manager"
    );
    assert_eq!(t[4].1, "shop/car_dealer.satisfaction/contact:7/2026-03-09");
    // Tasks are on the purchase deal, with the goal and the history in Russian.
    let WriteOp::CreateTask {
        entity, text, kind, ..
    } = &p.actions[4].op
    else {
        unreachable!()
    };
    assert_eq!(*entity, EntityRef::Deal(DealId(700)));
    assert_eq!(*kind, TaskKind::Call);
    assert!(text.starts_with("Звонок удовлетворённости"), "{text}");
    assert!(
        text.contains("Клиент 7") && text.contains("02.03.2026"),
        "{text}"
    );
    // Deterministic: the same input gives the same plan.
    assert_eq!(run(&rules, morning(buy), &rows, &f, &[]), p);
}

#[test]
fn the_window_limits_touches_and_past_days_go_to_the_next_open_slot() {
    let rules = rules_for(serde_json::json!({"playbooks": ["car_dealer"]}));
    let buy = date(2026, 3, 2);
    let rows = [row(7, &[buy], None)];
    let f = [facts(7, &[buy], &[])];
    // Plan on Wednesday 03-11 at 15:30: +7 (03-09) is within the 3-day lookback and past:
    // due at the next full hour.
    let as_of = date(2026, 3, 11)
        .at(15, 30, 0, 0)
        .to_zoned(msk())
        .unwrap()
        .timestamp();
    let only = |p: &Plan| -> Vec<(String, String, u64, String)> {
        tasks(p)
            .into_iter()
            .filter(|t| t.0 == "car_dealer.satisfaction")
            .collect()
    };
    let t = only(&run(&rules, as_of, &rows, &f, &[]));
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].3, "2026-03-11 16:00");
    // The same touch planned a day later has the same key: the outbox sends it once.
    let t2 = only(&run(
        &rules,
        as_of + jiff::SignedDuration::from_hours(24),
        &rows,
        &f,
        &[],
    ));
    assert_eq!(t2[0].1, t[0].1);
    // Out of the lookback: nothing.
    assert!(only(&run(&rules, morning(date(2026, 3, 20)), &rows, &f, &[])).is_empty());
}

fn repeat_deal(id: u64, customer: u64, created: Timestamp, responsible: Option<u64>) -> OpenDeal {
    OpenDeal {
        id: DealId(id),
        name: format!("Сделка #{id}"),
        customer: Some(CustomerKey::Contact(ContactId(customer))),
        class: DealClass::Repeat,
        pipeline: PipelineId(1),
        stage: StageId("11".into()),
        responsible: responsible.map(UserId),
        created_at: created,
    }
}

#[test]
fn repeat_deals_are_moved_flagged_and_tasked_with_history() {
    let rules = rules_for(serde_json::json!({
        "repeat_pipeline": "Повторные продажи",
        "default_responsible": "Анна Смирнова",
    }));
    let buy = date(2026, 1, 15);
    let rows = [
        row(7, &[date(2025, 12, 1), buy], Some(date(2026, 3, 20))),
        row(8, &[buy], None),
    ];
    let f = [
        facts(7, &[date(2025, 12, 1), buy], &[]),
        facts(8, &[buy], &[]),
    ];
    let as_of = date(2026, 3, 2)
        .at(12, 10, 0, 0)
        .to_zoned(msk())
        .unwrap()
        .timestamp();
    let deals = [
        repeat_deal(
            900,
            7,
            as_of - jiff::SignedDuration::from_hours(1),
            Some(101),
        ),
        // No manager: the default responsible gets the task.
        repeat_deal(901, 8, as_of - jiff::SignedDuration::from_hours(2), None),
        // Too old to route.
        repeat_deal(
            902,
            7,
            as_of - jiff::SignedDuration::from_hours(24 * 40),
            Some(101),
        ),
        // A returning inquiry stays where it is.
        OpenDeal {
            class: DealClass::ReturningInquiry,
            ..repeat_deal(903, 7, as_of, Some(101))
        },
    ];
    let p = run(&rules, as_of, &rows, &f, &deals);
    let keys: Vec<&str> = p.actions.iter().map(|a| a.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "shop/repeat_flag/contact:7/deal:900",
            "shop/repeat_flag/contact:8/deal:901",
            "shop/repeat_route/contact:7/deal:900",
            "shop/repeat_route/contact:8/deal:901",
            "shop/repeat_task/contact:7/2026-03-02",
            "shop/repeat_task/contact:8/2026-03-02",
        ]
    );
    let WriteOp::MoveDeal {
        pipeline, stage, ..
    } = &p.actions[2].op
    else {
        unreachable!()
    };
    // The first open stage after "unsorted".
    assert_eq!((pipeline.0, stage.0.as_str()), (2, "21"));
    let WriteOp::CreateTask {
        text,
        due,
        responsible,
        ..
    } = &p.actions[4].op
    else {
        unreachable!()
    };
    assert_eq!(responsible.0, 101);
    assert_eq!(
        text,
        "Повторная заявка от клиента Клиент 7: 2 покупки, последняя 15.01.2026, выручка 2 000 ₽, сегмент лояльные, следующая покупка ожидается 20.03.2026"
    );
    assert_eq!(due.to_zoned(msk()).strftime("%H:%M").to_string(), "13:00");
    let WriteOp::CreateTask { responsible, .. } = &p.actions[5].op else {
        unreachable!()
    };
    assert_eq!(responsible.0, 100);
}

#[test]
fn the_funnel_moves_as_time_passes_and_resets_on_a_purchase() {
    let rules = rules_for(serde_json::json!({
        "funnel": {"pipeline": "Цикл клиента", "stages": ["Больше 30 дней", "30 дней", "7 дней", "Пора покупать"]},
    }));
    let next = date(2026, 5, 1);
    let rows = [row(7, &[date(2026, 1, 10), date(2026, 2, 10)], Some(next))];
    let mut f = [facts(7, &[date(2026, 1, 10), date(2026, 2, 10)], &[])];
    f[0].funnel_deal = Some((DealId(555), StageId("31".into()), Some(UserId(101))));
    let stage_at = |d: Date, f: &[CustomerFacts]| -> Option<(String, String)> {
        let p = run(&rules, morning(d), &rows, f, &[]);
        p.actions.iter().find_map(|a| match &a.op {
            WriteOp::MoveDeal { stage, .. } => Some((stage.0.clone(), a.key.clone())),
            _ => None,
        })
    };
    assert_eq!(stage_at(date(2026, 3, 1), &f), None, "61 days left: stays");
    assert_eq!(
        stage_at(date(2026, 4, 1), &f),
        Some(("32".into(), "shop/funnel/contact:7/32-2026-05-01".into()))
    );
    f[0].funnel_deal.as_mut().unwrap().1 = StageId("32".into());
    assert_eq!(stage_at(date(2026, 4, 24), &f).unwrap().0, "33");
    assert_eq!(stage_at(date(2026, 5, 3), &f).unwrap().0, "34", "overdue");
    // A purchase resets the date: the deal goes back to the first stage.
    let rows2 = [row(
        7,
        &[date(2026, 1, 10), date(2026, 5, 2)],
        Some(date(2026, 6, 20)),
    )];
    f[0].funnel_deal.as_mut().unwrap().1 = StageId("34".into());
    let p = run(&rules, morning(date(2026, 5, 3)), &rows2, &f, &[]);
    let WriteOp::MoveDeal { stage, .. } = &p.actions[0].op else {
        unreachable!()
    };
    assert_eq!(stage.0, "31");
    // A deal a manager took into a working stage is left alone.
    f[0].funnel_deal.as_mut().unwrap().1 = StageId("35".into());
    let p = run(&rules, morning(date(2026, 5, 3)), &rows2, &f, &[]);
    assert!(p.actions.is_empty());
    assert_eq!(p.skipped.len(), 1);
}

#[test]
fn reminders_reactivation_rewards_and_teams() {
    let rules = rules_for(serde_json::json!({
        "teams": {"care": ["Иван Петров", "Ольга Сервис"]},
        "playbooks": ["reactivation", "water_delivery"],
    }));
    let today = date(2026, 3, 2);
    // One-time buyer 90 days ago: first reactivation step today.
    let a = row(1, &[date(2025, 12, 2)], None);
    // Monthly buyer for a year: frequent-buyer reward and a reminder before the next order.
    let monthly: Vec<Date> = (0..12)
        .map(|i| {
            date(2025, 3, 5)
                .checked_add(jiff::Span::new().months(i))
                .unwrap()
        })
        .collect();
    let b = row(2, &monthly, Some(date(2026, 3, 5)));
    let rows = [a, b];
    let f = [facts(1, &[date(2025, 12, 2)], &[]), facts(2, &monthly, &[])];
    let p = run(&rules, morning(today), &rows, &f, &[]);
    let got: Vec<&str> = p.actions.iter().map(|a| a.key.as_str()).collect();
    assert_eq!(
        got,
        [
            "shop/reactivation.one_time/contact:1/s1-2025-12-02",
            "shop/water_delivery.loyal_monthly/contact:2/2026",
            "shop/water_delivery.order_day/contact:2/2026-03-05",
            "shop/water_delivery.water_runs_out/contact:2/2026-03-05",
        ]
    );
    // A purchase stops the chain.
    let a2 = row(1, &[date(2025, 12, 2), date(2026, 2, 20)], None);
    let p = run(&rules, morning(today), &[a2, rows[1].clone()], &f, &[]);
    assert!(p.actions.iter().all(|a| !a.key.contains("reactivation")));

    // Round-robin over a team.
    let pb = tempfile::tempdir().unwrap();
    std::fs::write(
        pb.path().join("rr.toml"),
        "[[after_purchase]]\nid = \"x\"\ndays = 1\ngoal = \"Звонок\"\nresponsible = \"team:care\"\n",
    )
    .unwrap();
    let mut rules = rules_for(serde_json::json!({
        "teams": {"care": ["Иван Петров", "Ольга Сервис"]},
        "playbooks": [pb.path().join("rr.toml").display().to_string()],
    }));
    rules.lookback_days = 10;
    let rows: Vec<CustomerRow> = (1..=4).map(|i| row(i, &[date(2026, 3, 1)], None)).collect();
    let f: Vec<CustomerFacts> = (1..=4)
        .map(|i| facts(i, &[date(2026, 3, 1)], &[]))
        .collect();
    let p = run(&rules, morning(today), &rows, &f, &[]);
    let who: Vec<u64> = tasks(&p).iter().map(|t| t.2).collect();
    assert_eq!(who.len(), 4);
    assert_eq!(who.iter().filter(|&&u| u == 101).count(), 2);
    assert_eq!(who.iter().filter(|&&u| u == 102).count(), 2);
}

#[test]
fn segment_fields_are_written_once_per_value_set() {
    let pl = pipelines();
    let us = users();
    let fields = vec![
        rebuy_core::FieldDef {
            entity: rebuy_core::EntityKind::Contacts,
            id: "264915".into(),
            name: "Сегмент".into(),
            code: None,
            field_type: "text".into(),
        },
        rebuy_core::FieldDef {
            entity: rebuy_core::EntityKind::Contacts,
            id: "264917".into(),
            name: "Дата следующей покупки".into(),
            code: None,
            field_type: "date".into(),
        },
    ];
    let rules = playbooks::resolve(
        "shop",
        &serde_json::json!({"fields": {"rfm_segment": "Сегмент", "next_purchase": "Дата следующей покупки"}}),
        None,
        CrmFacts { crm: CrmKind::Amocrm, pipelines: &pl, users: &us, fields: Some(&fields), customers: None, company_customers: false },
    )
    .unwrap();
    let rows = [row(
        7,
        &[date(2026, 1, 10), date(2026, 2, 10)],
        Some(date(2026, 3, 12)),
    )];
    let f = [facts(7, &[date(2026, 1, 10), date(2026, 2, 10)], &[])];
    let p = run(&rules, morning(date(2026, 3, 2)), &rows, &f, &[]);
    assert_eq!(p.actions.len(), 1);
    assert_eq!(p.actions[0].key, "shop/fields/contact:7/loyal-2026-03-12");
    let WriteOp::UpdateFields { entity, fields } = &p.actions[0].op else {
        unreachable!()
    };
    assert_eq!(*entity, EntityRef::Contact(ContactId(7)));
    // Midnight of 2026-03-12 in Moscow (UTC+3) as unix seconds.
    assert_eq!(fields[1].value.as_deref(), Some("1773262800"));
}

#[test]
fn predicted_fields_are_rounded_written_and_unchanged_sets_keep_their_key() {
    let pl = pipelines();
    let us = users();
    let def = |id: &str, name: &str, ty: &str| rebuy_core::FieldDef {
        entity: rebuy_core::EntityKind::Contacts,
        id: id.into(),
        name: name.into(),
        code: None,
        field_type: ty.into(),
    };
    let fields = vec![
        def("301", "P(alive)", "numeric"),
        def("302", "Покупок за 90 дней", "numeric"),
        def("303", "CLV 12 мес", "numeric"),
    ];
    let mapping = serde_json::json!({"fields": {
        "p_alive": "P(alive)", "expected_purchases_90d": "Покупок за 90 дней",
        "clv_12m": "CLV 12 мес", "churn_band": "Риск оттока", "create_missing": true,
    }});
    let facts_of = |pl, us, fields| CrmFacts {
        crm: CrmKind::Amocrm,
        pipelines: pl,
        users: us,
        fields: Some(fields),
        customers: None,
        company_customers: false,
    };
    // The churn band is missing: it is to be created as a select of the three bands, and the
    // numbers are written meanwhile.
    let rules = playbooks::resolve("shop", &mapping, None, facts_of(&pl, &us, &fields)).unwrap();
    assert_eq!(rules.missing_fields.len(), 1);
    assert_eq!(rules.missing_fields[0].key, "fields.churn_band");
    assert_eq!(
        rules.missing_fields[0].kind,
        rebuy_core::FieldKind::Select(vec!["low".into(), "medium".into(), "high".into()])
    );
    let days = [date(2026, 1, 10), date(2026, 2, 10)];
    let mut r = row(7, &days, None);
    r.p_alive = Some(0.678_912);
    r.expected_purchases_90d = Some(0.1 + 0.2);
    r.clv = Some(dec!(12345.67));
    let f = [facts(7, &days, &[])];
    let values = |p: &Plan| -> Vec<(String, Option<String>)> {
        let [a] = p.actions.as_slice() else {
            panic!("one action: {:?}", p.actions)
        };
        let WriteOp::UpdateFields { fields, .. } = &a.op else {
            panic!("{:?}", a.op)
        };
        fields
            .iter()
            .map(|w| (w.field_id.clone(), w.value.clone()))
            .collect()
    };
    let p = run(&rules, morning(date(2026, 3, 2)), &[r.clone()], &f, &[]);
    assert_eq!(
        values(&p),
        [
            ("301".to_owned(), Some("0.68".to_owned())),
            ("302".to_owned(), Some("0.3".to_owned())),
            ("303".to_owned(), Some("12346".to_owned())),
        ]
    );
    // Created: the band is written too.
    let mut all = fields.clone();
    all.push(def("304", "Риск оттока", "select"));
    let rules = playbooks::resolve("shop", &mapping, None, facts_of(&pl, &us, &all)).unwrap();
    assert!(rules.missing_fields.is_empty());
    let first = run(&rules, morning(date(2026, 3, 2)), &[r.clone()], &f, &[]);
    assert_eq!(
        values(&first)[3],
        ("304".to_owned(), Some("medium".to_owned()))
    );
    assert_eq!(
        first.actions[0].key,
        "shop/fields/contact:7/0.68-0.3-12346-medium"
    );
    // A drift below the rounding keeps the key: the outbox writes nothing new.
    r.p_alive = Some(0.681);
    r.clv = Some(dec!(12345.9));
    let again = run(&rules, morning(date(2026, 3, 3)), &[r.clone()], &f, &[]);
    assert_eq!(again.actions[0].key, first.actions[0].key);
    // A visible change is a new key; 0.695 shows as 0.7, whose band is low.
    r.p_alive = Some(0.695);
    let moved = run(&rules, morning(date(2026, 3, 4)), &[r.clone()], &f, &[]);
    assert_eq!(
        moved.actions[0].key,
        "shop/fields/contact:7/0.7-0.3-12346-low"
    );
    // No model prediction (the personal-cycle baseline drives): the fields are cleared.
    r.p_alive = None;
    r.expected_purchases_90d = None;
    r.clv = None;
    let none = run(&rules, morning(date(2026, 3, 5)), &[r], &f, &[]);
    assert!(values(&none).iter().all(|(_, v)| v.is_none()));
}

/// Every built-in playbook's `[[test]]` cases, through the planner with default windows.
#[test]
fn built_in_playbooks_pass_their_own_cases() {
    let mut cases = 0;
    // Every playbook at once, as the demo mapping runs them: a case does not depend on which
    // other playbooks a portal runs (a touch merged into another playbook's task of the day
    // still counts as planned).
    let names: Vec<&str> = playbooks::BUILT_IN.iter().map(|(n, _)| *n).collect();
    let all = rules_for(serde_json::json!({"playbooks": names}));
    for (name, _) in playbooks::BUILT_IN {
        let rules = rules_for(serde_json::json!({"playbooks": [name]}));
        let src = playbooks::find_playbook(name, None).unwrap();
        let (pb, _) = playbooks::parse_playbook(&src).unwrap();
        assert!(!pb.tests.is_empty(), "{name} has test cases");
        cases += pb.tests.len();
        let failures = run_playbook_tests(&rules, &pb, &msk());
        assert!(failures.is_empty(), "{name}: {failures:#?}");
        let failures = run_playbook_tests(&all, &pb, &msk());
        assert!(failures.is_empty(), "{name} among all: {failures:#?}");
    }
    assert!(cases >= 5);
}

#[test]
fn a_wrong_expectation_is_reported() {
    let rules = rules_for(serde_json::json!({"playbooks": ["car_dealer"]}));
    let (mut pb, _) =
        playbooks::parse_playbook(&playbooks::find_playbook("car_dealer", None).unwrap()).unwrap();
    pb.tests[0].expect = vec!["satisfaction 2026-03-10".into()];
    let f = run_playbook_tests(&rules, &pb, &msk());
    assert_eq!(
        f,
        [
            "a week after the purchase: expected [satisfaction 2026-03-10], planned [satisfaction 2026-03-09]"
        ]
    );
}

#[test]
fn the_customers_funnel_creates_once_then_moves_and_redates() {
    let p = pipelines();
    let u = users();
    let status = |id: &str, name: &str, sort| Stage {
        id: StageId(id.into()),
        name: name.into(),
        sort,
        kind: StageKind::Open,
    };
    let customers = rebuy_core::CustomersFunnel {
        mode: "periodicity".into(),
        statuses: vec![
            status("80", "Недавно купили", 10),
            status("81", "Больше 30 дней", 20),
            status("82", "30 дней до покупки", 30),
            status("83", "Ожидается покупка", 40),
        ],
    };
    let mapping = serde_json::json!({"funnel": {"entity": "customers",
        "stages": ["Больше 30 дней", "30 дней до покупки", "Ожидается покупка"], "windows_days": [30, 0]}});
    fn crm<'a>(
        p: &'a [Pipeline],
        u: &'a [User],
        c: Option<&'a rebuy_core::CustomersFunnel>,
    ) -> CrmFacts<'a> {
        CrmFacts {
            crm: CrmKind::Amocrm,
            pipelines: p,
            users: u,
            fields: None,
            customers: c,
            company_customers: false,
        }
    }
    let facts_of = |c| crm(&p, &u, c);
    let rules = playbooks::resolve("shop", &mapping, None, facts_of(Some(&customers)))
        .unwrap_or_else(|e| panic!("{}", playbooks::format_problems(&e)));
    let next = date(2026, 5, 1);
    let mut rows = [row(7, &[date(2026, 1, 10), date(2026, 2, 10)], Some(next))];
    rows[0].expected_order_value = Some(dec!(1499.6));
    let mut f = [facts(7, &[date(2026, 1, 10), date(2026, 2, 10)], &[])];
    // No CRM customer yet: one is created, linked to the contact, in the window's status.
    let plan = run(&rules, morning(date(2026, 4, 1)), &rows, &f, &[]);
    assert_eq!(plan.actions.len(), 1);
    assert_eq!(plan.actions[0].key, "shop/customer_create/contact:7");
    let WriteOp::CreateCustomer {
        contact,
        status,
        next_date,
        next_price,
        ..
    } = &plan.actions[0].op
    else {
        panic!("{:?}", plan.actions[0].op)
    };
    assert_eq!((contact.0, status.0.as_str()), (7, "82"));
    assert_eq!(
        next_date.to_zoned(msk()).strftime("%F %T").to_string(),
        "2026-05-01 00:00:00",
        "local midnight of the expected day"
    );
    assert_eq!(*next_price, Some(dec!(1500)));
    // The CRM holds it in that state: nothing to do.
    f[0].crm_customer = Some(rebuy_core::CrmCustomer {
        id: 9001,
        name: "Клиент 7".into(),
        status: StageId("82".into()),
        next_date: Some(*next_date),
        next_price: 1500,
        contact: Some(ContactId(7)),
    });
    assert!(
        run(&rules, morning(date(2026, 4, 1)), &rows, &f, &[])
            .actions
            .is_empty()
    );
    // Overdue: moved.
    let plan = run(&rules, morning(date(2026, 5, 2)), &rows, &f, &[]);
    assert_eq!(
        plan.actions[0].key,
        "shop/customer_move/contact:7/83-2026-05-01"
    );
    assert!(matches!(
        &plan.actions[0].op,
        WriteOp::UpdateCustomer { customer: 9001, status, .. } if status.0 == "83"
    ));
    // A purchase: re-dated and back to the far window.
    rows[0].next_purchase = Some(date(2026, 7, 1));
    let plan = run(&rules, morning(date(2026, 5, 2)), &rows, &f, &[]);
    let WriteOp::UpdateCustomer {
        status, next_date, ..
    } = &plan.actions[0].op
    else {
        unreachable!()
    };
    assert_eq!(status.0, "81");
    assert_eq!(next_date.to_zoned(msk()).date(), date(2026, 7, 1));
    // In a status outside the windows (a manager's): left alone, with the reason.
    f[0].crm_customer.as_mut().unwrap().status = StageId("80".into());
    let plan = run(&rules, morning(date(2026, 5, 2)), &rows, &f, &[]);
    assert!(plan.actions.is_empty());
    assert!(
        plan.skipped[0]
            .reason
            .contains("not one of the funnel's window stages")
    );

    // Refused: mode off, unknown status, a pipeline given, customers not read.
    let off = rebuy_core::CustomersFunnel {
        mode: "disabled".into(),
        statuses: vec![],
    };
    let e = playbooks::resolve("shop", &mapping, None, facts_of(Some(&off))).unwrap_err();
    assert!(e[0].reason.contains("needs \"periodicity\""), "{e:?}");
    let e = playbooks::resolve("shop", &mapping, None, facts_of(None)).unwrap_err();
    assert!(e[0].reason.contains("could not be read"), "{e:?}");
    let bad = serde_json::json!({"funnel": {"entity": "customers", "pipeline": "Цикл клиента",
        "stages": ["Больше 30 дней", "Нет такого"], "windows_days": [7]}});
    let e = playbooks::resolve("shop", &bad, None, facts_of(Some(&customers))).unwrap_err();
    let keys: Vec<&str> = e.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, ["funnel.pipeline", "funnel.stages[1]"], "{e:?}");
    assert!(
        e[1].reason
            .contains("unknown customer status \"Нет такого\"")
    );
}

proptest::proptest! {
    /// The k-way merge of sorted runs equals sorting their concatenation.
    #[test]
    fn merged_runs_equal_the_sorted_concatenation(
        runs in proptest::collection::vec(proptest::collection::vec("[a-c]{0,4}", 0..20), 0..6)
    ) {
        let action = |key: &str| Action {
            merged: Vec::new(),
            key: key.to_owned(),
            op: WriteOp::FlagRepeat { deal: DealId(1) },
            rule: "r".into(),
            customer: key.to_owned(),
            summary: String::new(),
        };
        let sorted_runs: Vec<Vec<Action>> = runs
            .iter()
            .map(|r| {
                let mut r = r.clone();
                r.sort();
                r.iter().map(|k| action(k)).collect()
            })
            .collect();
        let mut want: Vec<String> = runs.concat();
        want.sort();
        let got = merge_sorted_runs(sorted_runs);
        let keys: Vec<&str> = got.iter().map(|a| a.key.as_str()).collect();
        let customers: Vec<&str> = got.iter().map(|a| a.customer.as_str()).collect();
        proptest::prop_assert_eq!(&keys, &want);
        // Each key came back on its own action.
        proptest::prop_assert_eq!(keys, customers);
    }
}

#[test]
fn a_deal_slightly_ahead_of_our_clock_is_still_routed() {
    let rules = rules_for(serde_json::json!({
        "repeat_pipeline": "Повторные продажи",
        "default_responsible": "Анна Смирнова",
    }));
    let buy = date(2026, 1, 15);
    let rows = [row(7, &[date(2025, 12, 1), buy], Some(date(2026, 3, 20)))];
    let f = [facts(7, &[date(2025, 12, 1), buy], &[])];
    let as_of = date(2026, 3, 2)
        .at(12, 10, 0, 0)
        .to_zoned(msk())
        .unwrap()
        .timestamp();
    let deals = [
        // The CRM's clock is 40 s ahead of ours: routed.
        repeat_deal(
            910,
            7,
            as_of + jiff::SignedDuration::from_secs(40),
            Some(101),
        ),
        // Created an hour after the planning instant (a plan for a past date): not routed.
        repeat_deal(
            911,
            7,
            as_of + jiff::SignedDuration::from_hours(1),
            Some(101),
        ),
    ];
    let p = run(&rules, as_of, &rows, &f, &deals);
    let routed: Vec<&str> = p
        .actions
        .iter()
        .filter(|a| a.key.contains("/repeat_route/"))
        .map(|a| a.key.as_str())
        .collect();
    assert_eq!(routed, ["shop/repeat_route/contact:7/deal:910"]);
}

#[test]
fn inactive_or_deleted_managers_get_no_task_and_the_default_takes_over() {
    let buy = date(2026, 3, 2);
    let mut rows = Vec::new();
    let mut f = Vec::new();
    // Customer 1: an active manager; 2: inactive (103); 3: gone from the CRM (999).
    for (c, manager) in [(1, 101), (2, 103), (3, 999)] {
        rows.push(row(c, &[buy], None));
        let mut x = facts(c, &[buy], &[]);
        x.sales[0].manager = Some(UserId(manager));
        f.push(x);
    }
    let deals = [repeat_deal(50, 2, morning(buy), Some(103))];
    let mapping = serde_json::json!({
        "playbooks": ["car_dealer"],
        "repeat_pipeline": "Повторные продажи",
        "horizon_days": 30,
        "lookback_days": 0,
    });
    // Without a default: the inactive and deleted managers' touches are skipped, with why.
    let rules = rules_for(mapping.clone());
    let p = run(&rules, morning(buy), &rows, &f, &deals);
    let t = tasks(&p);
    assert!(!t.is_empty());
    assert!(t.iter().all(|(_, _, resp, _)| *resp == 101), "{t:?}");
    assert!(
        p.skipped
            .iter()
            .any(|s| s.customer == "contact:2" && s.reason.contains("inactive")),
        "{:?}",
        p.skipped
    );
    // With a default: it takes their customers, including the repeat-lead task.
    let mut m = mapping;
    m["default_responsible"] = serde_json::json!("Анна Смирнова");
    let rules = rules_for(m);
    let p = run(&rules, morning(buy), &rows, &f, &deals);
    let t = tasks(&p);
    assert!(
        t.iter().all(|(_, _, resp, _)| *resp != 103 && *resp != 999),
        "{t:?}"
    );
    for c in ["contact:2", "contact:3"] {
        assert!(
            t.iter()
                .any(|(_, key, resp, _)| key.contains(&format!("/{c}/")) && *resp == 100),
            "{c} goes to the default: {t:?}"
        );
    }
    assert!(
        t.iter()
            .any(|(rule, _, resp, _)| rule == "repeat_task" && *resp == 100)
    );
}

/// Rules from one playbook text written to a temporary file (kept alive by the returned dir),
/// with the mapping's other keys.
fn playbook_rules(text: &str, mut mapping: serde_json::Value) -> (tempfile::TempDir, Rules) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pb.toml");
    std::fs::write(&path, text).unwrap();
    mapping["playbooks"] = serde_json::json!([path.display().to_string()]);
    (dir, rules_for(mapping))
}

/// The outbox after a plan was enqueued and sent: every task of it.
fn booked_after(p: &Plan) -> Booked {
    let mut b = Booked::default();
    for a in &p.actions {
        b.add(a, &msk());
    }
    b
}

fn run_booked(
    rules: &Rules,
    as_of: Timestamp,
    rows: &[CustomerRow],
    f: &[CustomerFacts],
    booked: &Booked,
) -> Plan {
    let tz = msk();
    plan(&PlanInput {
        portal: "shop",
        crm: CrmKind::Amocrm,
        as_of,
        tz: &tz,
        rules,
        customers: rows,
        facts: f,
        open_deals: &[],
        booked,
        holdout: None,
    })
}

/// Tasks per (responsible, local day).
fn load(p: &Plan) -> BTreeMap<(u64, String), usize> {
    let mut m = BTreeMap::new();
    for (_, _, u, due) in tasks(p) {
        *m.entry((u, due[..10].to_owned())).or_default() += 1;
    }
    m
}

const THANKS: &str = r#"
[[after_purchase]]
id = "thanks"
days = 7
goal = "Поблагодарить за покупку"
time = "11:00"

[[before_next_purchase]]
id = "runs_out"
days_before = 2
goal = "Скоро закончится: предложить заказ"
"#;

#[test]
fn the_manager_cap_defers_by_value_and_urgency_over_business_days_and_holds_across_runs() {
    let (_dir, rules) = playbook_rules(
        THANKS,
        serde_json::json!({"max_tasks_per_manager_per_day": 3, "horizon_days": 0, "lookback_days": 0}),
    );
    // Customers 1..=10 bought on Thursday 2026-03-05: "thanks" is due Thursday 03-12 for all.
    // 1..=7 are Иван's (101), 8..=10 Анна's (100). Value: revenue 1000 * id, and customer 1
    // has the largest CLV of all.
    let buy = date(2026, 3, 5);
    let mut rows: Vec<CustomerRow> = (1..=10).map(|i| row(i, &[buy], None)).collect();
    let mut f: Vec<CustomerFacts> = (1..=10).map(|i| facts(i, &[buy], &[])).collect();
    for (i, r) in rows.iter_mut().enumerate() {
        r.revenue = Decimal::from(1000 * (i as i64 + 1));
    }
    rows[0].clv = Some(dec!(1000000));
    for x in f.iter_mut().skip(7) {
        x.sales[0].manager = Some(UserId(100));
    }
    // Customer 11 (Анна's, the most valuable of all) has a reminder due the same Thursday, but
    // its window closes only with the purchase on Saturday 03-14: the closed windows go first.
    let mut r11 = row(
        11,
        &[date(2026, 2, 1), date(2026, 2, 14)],
        Some(date(2026, 3, 14)),
    );
    r11.clv = Some(dec!(5000000));
    let mut f11 = facts(11, &[date(2026, 2, 1), date(2026, 2, 14)], &[]);
    f11.sales[1].manager = Some(UserId(100));
    rows.push(r11);
    f.push(f11);
    let as_of = morning(date(2026, 3, 12));
    let p = run(&rules, as_of, &rows, &f, &[]);
    let t = tasks(&p);
    assert_eq!(t.len(), 11, "nothing dropped: {t:?}");
    assert!(load(&p).values().all(|n| *n <= 3), "{:?}", load(&p));
    let day_of = |c: u64| {
        t.iter()
            .find(|x| x.1.contains(&format!("/contact:{c}/")))
            .map(|x| x.3.clone())
            .unwrap()
    };
    // Иван: CLV first, then revenue; Friday, then Monday (the weekend is skipped), at the
    // rule's 11:00.
    for (c, want) in [
        (1, "2026-03-12 11:00"),
        (7, "2026-03-12 11:00"),
        (6, "2026-03-12 11:00"),
        (5, "2026-03-13 11:00"),
        (4, "2026-03-13 11:00"),
        (3, "2026-03-13 11:00"),
        (2, "2026-03-16 11:00"),
        (8, "2026-03-12 11:00"),
        (9, "2026-03-12 11:00"),
        (10, "2026-03-12 11:00"),
        (11, "2026-03-13 10:00"),
    ] {
        assert_eq!(day_of(c), want, "customer {c}");
    }
    assert_eq!(p.pacing.deferred, 5);
    assert_eq!(p.pacing.deferred_until, Some(date(2026, 3, 16)));
    assert_eq!(
        p.pacing.deferred_by_manager,
        vec![
            (UserId(100), 1, date(2026, 3, 13)),
            (UserId(101), 4, date(2026, 3, 16))
        ]
    );
    let moved = p
        .actions
        .iter()
        .find(|a| a.key.contains("/contact:2/"))
        .unwrap();
    assert!(
        moved.summary.contains("2026-03-16 11:00")
            && moved.summary.contains("deferred from 2026-03-12"),
        "{}",
        moved.summary
    );

    // The next run (the plan is in the outbox now): the same tasks keep their days, and a new
    // customer's touch, however valuable, finds Thursday, Friday and Monday of Иван full.
    let booked = booked_after(&p);
    let mut rows2 = rows.clone();
    let mut f2 = f.clone();
    let mut r12 = row(12, &[buy], None);
    r12.clv = Some(dec!(9000000));
    rows2.push(r12);
    f2.push(facts(12, &[buy], &[]));
    let p2 = run_booked(&rules, as_of, &rows2, &f2, &booked);
    let new: Vec<_> = tasks(&p2)
        .into_iter()
        .filter(|x| !booked.tasks.contains_key(&x.1))
        .collect();
    assert_eq!(new.len(), 1, "{new:?}");
    assert!(new[0].1.contains("/contact:12/"));
    // Monday has one of Иван's tasks booked: the new one joins it.
    assert_eq!(new[0].3, "2026-03-16 11:00");
    for x in tasks(&p2)
        .iter()
        .filter(|x| booked.tasks.contains_key(&x.1))
    {
        assert_eq!(
            t.iter().find(|y| y.1 == x.1).unwrap().3,
            x.3,
            "a booked task is not moved"
        );
    }
}

#[test]
fn a_team_cap_counts_every_member() {
    let (_dir, rules) = playbook_rules(
        "[[after_purchase]]\nid = \"x\"\ndays = 1\ngoal = \"Звонок\"\nresponsible = \"team:care\"\n",
        serde_json::json!({
            "teams": {"care": ["Иван Петров", "Ольга Сервис"]},
            "max_tasks_per_team_per_day": {"care": 4},
            "horizon_days": 0, "lookback_days": 0,
        }),
    );
    let buy = date(2026, 3, 11);
    let rows: Vec<CustomerRow> = (1..=6).map(|i| row(i, &[buy], None)).collect();
    let f: Vec<CustomerFacts> = (1..=6).map(|i| facts(i, &[buy], &[])).collect();
    let p = run(&rules, morning(date(2026, 3, 12)), &rows, &f, &[]);
    let mut per_day: BTreeMap<String, usize> = BTreeMap::new();
    for ((_, day), n) in load(&p) {
        *per_day.entry(day).or_default() += n;
    }
    assert_eq!(
        per_day,
        BTreeMap::from([("2026-03-12".into(), 4), ("2026-03-13".into(), 2)])
    );
    // An unknown team is a problem of the mapping.
    let err = playbooks::resolve(
        "shop",
        &serde_json::json!({"max_tasks_per_team_per_day": {"nobody": 3}, "max_tasks_per_manager_per_day": 0}),
        None,
        CrmFacts {
            crm: CrmKind::Amocrm,
            pipelines: &pipelines(),
            users: &users(),
            fields: None,
            customers: None,
            company_customers: false,
        },
    )
    .unwrap_err();
    let text = playbooks::format_problems(&err);
    assert!(text.contains("max_tasks_per_team_per_day.nobody"), "{text}");
    assert!(text.contains("max_tasks_per_manager_per_day"), "{text}");
}

#[test]
fn competing_touches_of_a_customer_day_merge_into_the_most_important_once() {
    let (_dir, rules) = playbook_rules(
        THANKS,
        serde_json::json!({"horizon_days": 0, "lookback_days": 3}),
    );
    // Bought Thursday 03-05 and 02-19: "thanks" (03-12) and the reminder two days before the
    // next purchase on Saturday 03-14 (03-12) fall on the same Thursday.
    let days = [date(2026, 2, 19), date(2026, 3, 5)];
    let rows = [row(1, &days, Some(date(2026, 3, 14)))];
    let mut f = [facts(1, &days, &[])];
    f[0].sales[0].manager = Some(UserId(101));
    let p = run(&rules, morning(date(2026, 3, 12)), &rows, &f, &[]);
    let t = tasks(&p);
    assert_eq!(t.len(), 1, "{t:?}");
    // The reminder wins (a purchase moment); the thanks is listed in its text.
    assert_eq!(t[0].1, "shop/pb.runs_out/contact:1/2026-03-14");
    let a = &p.actions[0];
    let WriteOp::CreateTask { text, .. } = &a.op else {
        unreachable!()
    };
    assert!(
        text.ends_with("Заодно обсудить:\n— Поблагодарить за покупку"),
        "{text}"
    );
    assert_eq!(a.merged, ["shop/pb.thanks/contact:1/2026-03-12"]);
    assert_eq!(p.pacing.merged, 1);

    // The next day both touches are still in the lookback: the merged one is not sent alone.
    let p2 = run_booked(
        &rules,
        morning(date(2026, 3, 13)),
        &rows,
        &f,
        &booked_after(&p),
    );
    let keys: Vec<&str> = p2.actions.iter().map(|a| a.key.as_str()).collect();
    assert_eq!(
        keys,
        ["shop/pb.runs_out/contact:1/2026-03-14"],
        "already in the outbox"
    );
    assert_eq!(p2.pacing.merged_before, 1);

    // Two touches a day allowed: both, unmerged.
    let (_dir2, rules2) = playbook_rules(
        THANKS,
        serde_json::json!({"horizon_days": 0, "lookback_days": 3, "max_touches_per_customer_per_day": 2}),
    );
    let p = run(&rules2, morning(date(2026, 3, 12)), &rows, &f, &[]);
    assert_eq!(tasks(&p).len(), 2);
    assert!(p.actions.iter().all(|a| a.merged.is_empty()));
}

#[test]
fn a_customer_day_taken_in_the_outbox_is_skipped() {
    let (_dir, rules) = playbook_rules(
        "[[after_purchase]]\nid = \"a\"\ndays = 7\ngoal = \"A\"\n",
        serde_json::json!({"max_tasks_per_manager_per_day": 1, "horizon_days": 0, "lookback_days": 0}),
    );
    let buy = date(2026, 3, 5);
    let mut rows = [row(1, &[buy], None), row(2, &[buy], None)];
    rows[1].revenue = dec!(50000);
    let f = [facts(1, &[buy], &[]), facts(2, &[buy], &[])];
    // Customer 1 already has a task on Friday (an earlier plan's).
    let mut booked = Booked::default();
    booked
        .busy
        .insert(("contact:1".into(), day_number(date(2026, 3, 13))), 1);
    let p = run_booked(&rules, morning(date(2026, 3, 12)), &rows, &f, &booked);
    let got: Vec<(String, String)> = tasks(&p)
        .into_iter()
        .map(|x| (x.1.split('/').nth(2).unwrap().to_owned(), x.3))
        .collect();
    // Customer 2 is worth more: Thursday. Customer 1 waits, past its taken Friday, to Monday.
    assert_eq!(
        got,
        [
            ("contact:1".to_owned(), "2026-03-16 10:00".to_owned()),
            ("contact:2".to_owned(), "2026-03-12 10:00".to_owned())
        ]
    );
}

#[test]
fn reminders_are_quiet_after_a_purchase_or_an_open_deal() {
    let (_dir, rules) = playbook_rules(
        THANKS,
        serde_json::json!({"horizon_days": 0, "lookback_days": 0}),
    );
    // All reminders are due Thursday 03-12 (the next purchase on Saturday 03-14).
    let next = Some(date(2026, 3, 14));
    let rows = [
        // Bought 4 days before the reminder: it would ask someone who just ordered.
        row(1, &[date(2026, 1, 10), date(2026, 3, 8)], next),
        // Bought 12 days before: a normal cycle, the reminder stays.
        row(2, &[date(2026, 1, 10), date(2026, 2, 28)], next),
        // The same, but an order is open since Tuesday.
        row(3, &[date(2026, 1, 10), date(2026, 2, 28)], next),
    ];
    let f = [
        facts(1, &[date(2026, 1, 10), date(2026, 3, 8)], &[]),
        facts(2, &[date(2026, 1, 10), date(2026, 2, 28)], &[]),
        facts(3, &[date(2026, 1, 10), date(2026, 2, 28)], &[]),
    ];
    let open = OpenDeal {
        class: DealClass::New,
        ..repeat_deal(
            700,
            3,
            date(2026, 3, 10)
                .at(15, 0, 0, 0)
                .to_zoned(msk())
                .unwrap()
                .timestamp(),
            Some(101),
        )
    };
    let as_of = morning(date(2026, 3, 12));
    let p = run(&rules, as_of, &rows, &f, std::slice::from_ref(&open));
    let keys: Vec<&str> = p.actions.iter().map(|a| a.key.as_str()).collect();
    assert_eq!(keys, ["shop/pb.runs_out/contact:2/2026-03-14"]);
    assert_eq!(p.pacing.suppressed, 2);
    // reminder_quiet_days = 0 turns the rule off.
    let (_dir2, loud) = playbook_rules(
        THANKS,
        serde_json::json!({"horizon_days": 0, "lookback_days": 0, "reminder_quiet_days": 0}),
    );
    let p = run(&loud, as_of, &rows, &f, std::slice::from_ref(&open));
    assert_eq!(p.actions.len(), 3);
    assert_eq!(p.pacing.suppressed, 0);
}

#[test]
fn many_leads_of_one_customer_make_one_repeat_lead_task() {
    let rules = rules_for(serde_json::json!({
        "repeat_pipeline": "Повторные продажи",
        "default_responsible": "Анна Смирнова",
    }));
    let buy = date(2026, 1, 15);
    let rows = [row(7, &[date(2025, 12, 1), buy], Some(date(2026, 3, 20)))];
    let f = [facts(7, &[date(2025, 12, 1), buy], &[])];
    let as_of = date(2026, 3, 2)
        .at(12, 10, 0, 0)
        .to_zoned(msk())
        .unwrap()
        .timestamp();
    let h = jiff::SignedDuration::from_hours;
    let deals = [
        repeat_deal(900, 7, as_of - h(2), Some(101)),
        repeat_deal(901, 7, as_of - h(1), Some(101)),
        // Yesterday's lead of the same customer.
        repeat_deal(902, 7, as_of - h(24), Some(101)),
    ];
    let p = run(&rules, as_of, &rows, &f, &deals);
    let routed = p
        .actions
        .iter()
        .filter(|a| a.rule == "repeat_route")
        .count();
    assert_eq!(routed, 3, "every lead is routed");
    let t: Vec<&Action> = p
        .actions
        .iter()
        .filter(|a| a.rule == "repeat_task")
        .collect();
    assert_eq!(t.len(), 1, "one task for the customer");
    assert_eq!(t[0].key, "shop/repeat_task/contact:7/2026-03-02");
    let WriteOp::CreateTask { entity, text, .. } = &t[0].op else {
        unreachable!()
    };
    assert_eq!(*entity, EntityRef::Deal(DealId(901)), "on the newest lead");
    assert!(
        text.contains("Другие заявки клиента:")
            && text.contains("«Сделка #900» (сделка 900)")
            && text.contains("«Сделка #902» (сделка 902)"),
        "{text}"
    );
    assert_eq!(t[0].merged, ["shop/repeat_task/contact:7/2026-03-01"]);
    assert_eq!(p.pacing.repeat_leads_merged, 2);
    // On the webhook path, two leads of a day have one task key: the outbox keeps one.
    let tz = msk();
    let k = |d: &OpenDeal| {
        plan_for_deal("shop", as_of, &tz, &rules, d, Some(&rows[0]))
            .into_iter()
            .find(|a| a.rule == "repeat_task")
            .unwrap()
            .key
    };
    assert_eq!(k(&deals[0]), k(&deals[1]));
}

/// A plan of `rows` with control groups drawn by `spec` at `as_of` (08:00 on `day`).
fn run_held(
    rules: &Rules,
    day: Date,
    rows: &[CustomerRow],
    f: &[CustomerFacts],
    deals: &[OpenDeal],
    spec: &crate::holdout::HoldoutSpec,
) -> (Plan, crate::holdout::Draw) {
    let tz = msk();
    let draw = crate::holdout::Draw::new("shop", spec, "2026-03", day, rows);
    let p = plan(&PlanInput {
        portal: "shop",
        crm: CrmKind::Amocrm,
        as_of: morning(day),
        tz: &tz,
        rules,
        customers: rows,
        facts: f,
        open_deals: deals,
        booked: &Booked::default(),
        holdout: Some(&draw),
    });
    (p, draw)
}

#[test]
fn held_out_customers_get_no_touch_but_a_virtual_one_and_their_repeat_leads_are_routed() {
    let rules = rules_for(serde_json::json!({
        "playbooks": ["car_dealer"],
        "repeat_pipeline": "Повторные продажи",
        "horizon_days": 10,
        "lookback_days": 0,
    }));
    // 200 customers who bought on Monday 2026-03-02: each is due the +7 satisfaction call.
    let buy = date(2026, 3, 2);
    let rows: Vec<CustomerRow> = (1..=200).map(|c| row(c, &[buy], None)).collect();
    let f: Vec<CustomerFacts> = (1..=200).map(|c| facts(c, &[buy], &[])).collect();
    let mut spec = crate::holdout::HoldoutSpec::off();
    spec.percent = 10;
    let day = date(2026, 3, 3);
    let (open, _) = run_held(
        &rules,
        day,
        &rows,
        &f,
        &[],
        &crate::holdout::HoldoutSpec::off(),
    );
    assert_eq!((open.held_out.customers, open.held_out.touches), (0, 0));
    let touched = |p: &Plan| -> BTreeSet<String> {
        p.actions
            .iter()
            .filter(|a| a.rule == "car_dealer.satisfaction")
            .map(|a| a.customer.clone())
            .collect()
    };
    assert_eq!(touched(&open).len(), 200);
    let (p, draw) = run_held(&rules, day, &rows, &f, &[], &spec);
    // One cell of 200 customers: exactly 10% held out.
    assert_eq!(draw.global.len(), 20);
    let got = touched(&p);
    assert_eq!(got.len(), 180);
    assert!(
        got.is_disjoint(&draw.global),
        "a held-out customer got a touch"
    );
    // Each held-out customer has the virtual touch the real one would have been.
    let virt: BTreeSet<String> = p
        .virtual_touches
        .iter()
        .filter(|v| v.rule == "car_dealer.satisfaction")
        .map(|v| v.customer.clone())
        .collect();
    assert_eq!(virt, draw.global.iter().cloned().collect());
    let v = &p.virtual_touches[0];
    assert_eq!(v.day, date(2026, 3, 9));
    assert!(v.global);
    assert_eq!(
        v.key,
        format!("shop/car_dealer.satisfaction/{}/2026-03-09", v.customer)
    );
    assert_eq!(p.held_out.customers, 20);
    assert_eq!(p.held_out.touched_customers, 20);
    assert_eq!(p.held_out.touches, p.virtual_touches.len() as u64);
    assert_eq!(p.held_out.by_rule["car_dealer.satisfaction"], 20);
    assert_eq!(p.held_out.period, "2026-03");
    // A held-out customer's own repeat lead is still routed and tasked.
    let held: u64 = draw.global.iter().next().unwrap()["contact:".len()..]
        .parse()
        .unwrap();
    let deals = [repeat_deal(9000, held, morning(day), Some(101))];
    let (p, _) = run_held(&rules, day, &rows, &f, &deals, &spec);
    let routed: Vec<&str> = p
        .actions
        .iter()
        .filter(|a| a.customer == format!("contact:{held}"))
        .map(|a| a.rule.as_str())
        .collect();
    assert_eq!(routed, vec!["repeat_flag", "repeat_route", "repeat_task"]);
}

#[test]
fn a_rule_holdout_holds_out_only_that_rule() {
    let (_dir, rules) = playbook_rules(
        r#"
name = "hr"
[[after_purchase]]
id = "thanks"
days = 1
goal = "Спасибо"
holdout_percent = 50
[[after_purchase]]
id = "check"
days = 2
goal = "Как дела"
"#,
        serde_json::json!({"horizon_days": 10, "lookback_days": 0, "max_touches_per_customer_per_day": 2}),
    );
    assert_eq!(rules.holdout.rules.get("hr.thanks"), Some(&50));
    let buy = date(2026, 3, 2);
    let rows: Vec<CustomerRow> = (1..=100).map(|c| row(c, &[buy], None)).collect();
    let f: Vec<CustomerFacts> = (1..=100).map(|c| facts(c, &[buy], &[])).collect();
    let mut spec = rules.holdout.clone();
    spec.percent = 0;
    let (p, draw) = run_held(&rules, buy, &rows, &f, &[], &spec);
    let by_rule = |r: &str| -> BTreeSet<String> {
        p.actions
            .iter()
            .filter(|a| a.rule == r)
            .map(|a| a.customer.clone())
            .collect()
    };
    let held = &draw.rules["hr.thanks"];
    assert_eq!(held.len(), 50);
    assert_eq!(by_rule("hr.thanks").len(), 50);
    assert!(by_rule("hr.thanks").is_disjoint(held));
    assert_eq!(
        by_rule("hr.check").len(),
        100,
        "other rules still touch them"
    );
    assert_eq!(p.held_out.customers, 0);
    assert_eq!(p.held_out.by_rule.len(), 1);
    assert!(p.virtual_touches.iter().all(|v| !v.global));
}

#[test]
fn a_holdout_percent_over_100_is_refused() {
    let p = [];
    let u = users();
    let e = playbooks::resolve(
        "shop",
        &serde_json::json!({"holdout_percent": 120}),
        None,
        CrmFacts {
            crm: CrmKind::Amocrm,
            pipelines: &p,
            users: &u,
            fields: None,
            customers: None,
            company_customers: false,
        },
    )
    .unwrap_err();
    assert!(
        e.iter()
            .any(|p| p.key == "holdout_percent" && p.reason.contains("at most 100")),
        "{e:?}"
    );
}
