//! `rebuy bench plan` and `rebuy bench apply` (amoCRM): the planner over a synthetic base and
//! the outbox against the emulator.
use anyhow::Result;
use jiff::Timestamp;
use rebuy::emulated::authorize_automatically;
use rebuy::outbox::{self, DrainOptions};
use rebuy::plan::{self, CustomerFacts, PlanInput, Sale};
use rebuy::playbooks::{self, CrmFacts};
use rebuy::portal;
use rebuy::store::Store;
use rebuy::writeback::drain_all;
use rebuy_core::User;
use std::time::Duration;

/// `rebuy bench plan`: the planner on a synthetic base of `customers` customers (all ready
/// playbooks, a funnel and segment fields), timed alone. Target: 1M customers in <= 5 s.
pub fn bench_plan(customers: usize) -> Result<String> {
    use rebuy::analytics::{Abc, CustomerKey, CustomerRow, RfmSegment, Tier, Xyz};
    use rebuy_core::{ContactId, DealId, PipelineId, Stage, StageId, StageKind, UserId};
    use rust_decimal::Decimal;
    let tz = jiff::tz::TimeZone::get("Europe/Moscow")?;
    let as_of: Timestamp = "2026-03-02T05:00:00Z".parse()?;
    let today = as_of.to_zoned(tz.clone()).date();
    let stage = |id: u64, name: &str, sort| Stage {
        id: StageId(id.to_string()),
        name: name.into(),
        sort,
        kind: StageKind::Open,
    };
    let pipelines = vec![rebuy_core::Pipeline {
        id: PipelineId(3),
        name: "Цикл клиента".into(),
        is_main: false,
        sort: 1,
        stages: vec![
            stage(31, "> 30", 10),
            stage(32, "<= 30", 20),
            stage(33, "<= 7", 30),
            stage(34, "due", 40),
        ],
    }];
    let users: Vec<User> = (0..8)
        .map(|i| User {
            id: UserId(100 + i),
            name: format!("Менеджер {i}"),
            email: None,
            active: true,
        })
        .collect();
    let names: Vec<&str> = playbooks::BUILT_IN.iter().map(|(n, _)| *n).collect();
    let mapping = serde_json::json!({
        "playbooks": names,
        "funnel": {"pipeline": 3, "stages": ["31", "32", "33", "34"]},
        "fields": {"rfm_segment": 1, "abc": 2, "xyz": 3, "next_purchase": 4},
        "default_responsible": 100,
    });
    let rules = playbooks::resolve(
        "bench",
        &mapping,
        None,
        CrmFacts {
            crm: rebuy_core::CrmKind::Amocrm,
            pipelines: &pipelines,
            users: &users,
            fields: None,
            customers: None,
            company_customers: false,
        },
    )
    .map_err(|p| anyhow::anyhow!("{}", playbooks::format_problems(&p)))?;

    let gen_started = std::time::Instant::now();
    let mut rng: u64 = 42;
    let mut next = move || {
        rng = rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    const PRODUCTS: [&str; 6] = [
        "вода 19 л",
        "бетон для фундамента",
        "кирпич",
        "запчасти",
        "шины",
        "кулер",
    ];
    let t0 = plan::day_number(today);
    let mut rows = Vec::with_capacity(customers);
    let mut facts = Vec::with_capacity(customers);
    for i in 0..customers as u64 {
        let k = 1 + (next() % 6) as i64;
        let last = t0 - (next() % 720) as i64;
        let gap = 20 + (next() % 60) as i64;
        let sales: Vec<Sale> = (0..k)
            .map(|j| Sale {
                day: plan::from_day_number(last - (k - 1 - j) * gap),
                amount: Decimal::from(500 + next() % 20_000),
                deal: DealId(i * 8 + j as u64),
                manager: Some(UserId(100 + next() % 8)),
                products: vec![PRODUCTS[(next() % 6) as usize].to_owned()],
            })
            .collect();
        let revenue = sales.iter().map(|s| s.amount).sum();
        rows.push(CustomerRow {
            key: CustomerKey::Contact(ContactId(i + 1)),
            contact_ids: vec![ContactId(i + 1)],
            company_ids: vec![],
            name: format!("Клиент {}", i + 1),
            phones: vec![],
            emails: vec![],
            first_purchase: sales[0].day,
            last_purchase: plan::from_day_number(last),
            purchases: k as u32,
            deals: k as u32,
            revenue,
            recency_days: t0 - last,
            // Spread over the 125 RFM cells, which the control group's draw is stratified by.
            r: 1 + (i % 5) as u8,
            f: 1 + (i / 5 % 5) as u8,
            m: 1 + (i / 25 % 5) as u8,
            rfm_segment: RfmSegment::ALL[(next() % 11) as usize],
            abc: [Abc::A, Abc::B, Abc::C][(next() % 3) as usize],
            xyz: [Xyz::X, Xyz::Y, Xyz::Z][(next() % 3) as usize],
            tier: Tier::Medium,
            cycle_days: (k > 1).then_some(gap as f64),
            next_purchase: (k > 1).then(|| plan::from_day_number(last + gap)),
            cycle_status: None,
            one_time: k == 1,
            sleeping: t0 - last > 180,
            p_alive: None,
            expected_purchases_90d: None,
            next_purchase_forecast: None,
            expected_order_value: None,
            clv: None,
        });
        let funnel_deal = (next() % 10 < 3).then(|| {
            (
                DealId(10_000_000_000 + i),
                StageId((31 + next() % 4).to_string()),
                Some(UserId(100)),
            )
        });
        facts.push(CustomerFacts {
            sales,
            funnel_deal,
            crm_customer: None,
        });
    }
    let gen_secs = gen_started.elapsed().as_secs_f64();
    // The default control group (5%, stratified by RFM cell), drawn as `prepare` does.
    let draw_started = std::time::Instant::now();
    let draw = rebuy::holdout::Draw::new(
        "bench",
        &rules.holdout,
        &rebuy::holdout::period_of(today, rules.holdout.redraw),
        today,
        &rows,
    );
    let draw_secs = draw_started.elapsed().as_secs_f64();
    let started = std::time::Instant::now();
    let plan = plan::plan(&PlanInput {
        portal: "bench",
        crm: rebuy_core::CrmKind::Amocrm,
        as_of,
        tz: &tz,
        rules: &rules,
        customers: &rows,
        facts: &facts,
        open_deals: &[],
        booked: &plan::Booked::default(),
        holdout: Some(&draw),
    });
    let secs = started.elapsed().as_secs_f64();
    let mut out = format!(
        "bench plan: {customers} customers (synthetic, generated in {gen_secs:.1} s), playbooks {}, funnel and segment fields\n",
        rules.playbooks.join(", ")
    );
    out.push_str(&format!(
        "  plan time        {secs:.2} s on {} thread(s) (target <= 5 s for 1M customers)\n  actions          {}\n  skipped          {} (+ {} without a funnel deal)\n",
        std::thread::available_parallelism().map(|t| t.get()).unwrap_or(1),
        plan.actions.len(),
        plan.skipped.len(),
        plan.funnel_without_deal
    ));
    for (rule, n) in plan.counts() {
        out.push_str(&format!("    {rule:<40} {n:>9}\n"));
    }
    out.push_str(&format!(
        "  holdout draw     {draw_secs:.2} s: {} customer(s) in the control group ({}%), {} touch(es) held out\n",
        plan.held_out.customers, rules.holdout.percent, plan.held_out.touches
    ));
    if let Some(rss) = crate::cli::bench::peak_rss_bytes() {
        out.push_str(&format!("  peak RSS         {:.0} MB\n", rss as f64 / 1e6));
    }
    Ok(out)
}

/// `rebuy bench apply`: `actions` tasks through the outbox into the amoCRM emulator at its
/// limit of `rate` requests/s: actions per request and per second against the ceiling
/// (`rate` x 50 actions/s).
pub async fn bench_apply(actions: usize, rate: u32) -> Result<String> {
    use rebuy_emulator::amocrm::{AmoConfig, AmoEmulator};
    let mut cfg = AmoConfig::default();
    cfg.seed.contacts = 1_000;
    cfg.seed.deals = 3_000;
    cfg.rate_limit_per_sec = rate;
    let emu = AmoEmulator::spawn(cfg.clone()).await?;
    let p = rebuy::emulated::emulator_portal(
        "bench",
        &emu.base_url,
        &cfg.client_id,
        &cfg.redirect_uri,
        rate,
    )?;
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path(), &p.id)?;
    rebuy::emulated::authorize_automatically(&p, &store).await?;
    let handle = rebuy::portal::open(&p, store.clone())?;
    let conn = handle.connector.as_ref();
    let leads: Vec<(u64, u64)> = emu.emulator.with_data(|d| {
        d.leads
            .values()
            .map(|l| (l.id, l.responsible_user_id))
            .collect()
    });
    let due = Timestamp::now() + jiff::SignedDuration::from_hours(24);
    let list: Vec<outbox::Action> = (0..actions)
        .map(|i| {
            let (lead, user) = leads[i % leads.len()];
            outbox::Action {
                merged: Vec::new(),
                key: format!("bench/bench.touch/lead:{lead}/{i}"),
                op: rebuy_core::WriteOp::CreateTask {
                    entity: rebuy_core::EntityRef::Deal(rebuy_core::DealId(lead)),
                    responsible: rebuy_core::UserId(user),
                    text: format!("Касание {i}"),
                    due,
                    kind: rebuy_core::TaskKind::Call,
                },
                rule: "bench.touch".into(),
                customer: format!("lead:{lead}"),
                summary: String::new(),
            }
        })
        .collect();
    let s = store.clone();
    let enq_started = std::time::Instant::now();
    tokio::task::spawn_blocking(move || s.outbox_enqueue(list)).await??;
    let enq_secs = enq_started.elapsed().as_secs_f64();
    let r = drain_all(
        conn,
        &store,
        &DrainOptions::default(),
        Duration::from_secs(60),
    )
    .await?;
    let secs = r.elapsed.as_secs_f64().max(1e-3);
    let sent = r.drain.done + r.drain.failed;
    let per_req = sent as f64 / r.requests.max(1) as f64;
    let per_sec = sent as f64 / secs;
    let ceiling = f64::from(rate) * 50.0;
    let landed = emu.emulator.writes().tasks_created.len();
    Ok(format!(
        "bench apply: {actions} tasks through the outbox into the amoCRM emulator at {rate} req/s\n  \
         enqueue          {enq_secs:.2} s (one redb transaction)\n  \
         send             {secs:.1} s, {} done, {} failed, {landed} landed in the emulator\n  \
         requests         {} ({:.2}/s, 429s seen {})\n  \
         actions/request  {per_req:.1} (bulk arrays of up to 50)\n  \
         actions/s        {per_sec:.0}\n  \
         ceiling          {ceiling:.0} actions/s ({rate} x 50)\n  \
         efficiency       {:.3}\n",
        r.drain.done,
        r.drain.failed,
        r.requests,
        r.requests as f64 / secs,
        conn.stats().rate_limited,
        per_sec / ceiling
    ))
}

/// 10k tasks through the outbox into the Bitrix24 emulator: packed into `batch` requests of
/// 50 `crm.activity.todo.add` commands, at the leaky bucket's drain rate.
pub(super) async fn bench_apply_b24(actions: usize, rate: u32) -> Result<()> {
    use rebuy_emulator::bitrix24::{B24Config, B24Emulator};
    let mut cfg = B24Config::default();
    cfg.seed.contacts = 1_000;
    cfg.seed.deals = 3_000;
    cfg.drain_per_sec = f64::from(rate);
    let emu = B24Emulator::spawn(cfg.clone()).await?;
    let mut p = rebuy::emulated::emulator_b24_portal("bench", &emu.base_url, &cfg)?;
    p.requests_per_sec = Some(rate);
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path(), &p.id)?;
    authorize_automatically(&p, &store).await?;
    let handle = portal::open(&p, store.clone())?;
    let deals: Vec<(u64, u64)> = emu
        .emulator
        .with_data(|d| d.deals.values().map(|x| (x.id, x.assigned_by_id)).collect());
    let due = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24);
    let list: Vec<rebuy::outbox::Action> = (0..actions)
        .map(|i| {
            let (deal, user) = deals[i % deals.len()];
            rebuy::outbox::Action {
                merged: Vec::new(),
                key: format!("bench/bench.touch/deal:{deal}/{i}"),
                op: rebuy_core::WriteOp::CreateTask {
                    entity: rebuy_core::EntityRef::Deal(rebuy_core::DealId(deal)),
                    responsible: rebuy_core::UserId(user),
                    text: format!("Касание {i}"),
                    due,
                    kind: rebuy_core::TaskKind::Call,
                },
                rule: "bench.touch".into(),
                customer: format!("deal:{deal}"),
                summary: String::new(),
            }
        })
        .collect();
    let s = store.clone();
    tokio::task::spawn_blocking(move || s.outbox_enqueue(list)).await??;
    let before = handle.connector.stats();
    let r = rebuy::writeback::drain_all(
        handle.connector.as_ref(),
        &store,
        &rebuy::outbox::DrainOptions::default(),
        Duration::from_secs(120),
    )
    .await?;
    let after = handle.connector.stats();
    let secs = r.elapsed.as_secs_f64().max(1e-3);
    let sent = r.drain.done + r.drain.failed;
    let requests = after.requests - before.requests;
    let landed = emu
        .emulator
        .writes()
        .iter()
        .filter(|w| w.method == "crm.activity.todo.add")
        .count();
    let ceiling = f64::from(rate) * 50.0;
    println!(
        "bench apply: {actions} to-dos through the outbox into the Bitrix24 emulator at {rate} req/s (bucket 50)"
    );
    println!(
        "  send             {secs:.1} s, {} done, {} failed, {landed} landed in the emulator",
        r.drain.done, r.drain.failed
    );
    println!(
        "  requests         {requests} ({:.2}/s, QUERY_LIMIT_EXCEEDED seen {})",
        requests as f64 / secs,
        after.rate_limited - before.rate_limited
    );
    println!(
        "  actions/request  {:.1} (batch of up to 50)",
        sent as f64 / requests.max(1) as f64
    );
    println!(
        "  actions/s        {:.0} (ceiling {ceiling:.0} after the burst)",
        sent as f64 / secs
    );
    Ok(())
}
