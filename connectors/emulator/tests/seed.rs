//! The data generator: determinism and the shape of the data (the patterns rebuy's analytics
//! must find).
use jiff::tz::{self, TimeZone};
use rebuy_emulator::seed::{self, BuyerProfile, DealOutcome, SeedConfig, StageKind};
use std::collections::{HashMap, HashSet};

fn data() -> seed::Dataset {
    seed::generate(&SeedConfig::new(11, 3_000, 9_000))
}

#[test]
fn same_seed_same_data_other_seed_other_data() {
    let cfg = SeedConfig::new(5, 500, 1_500);
    let a = seed::generate(&cfg);
    let b = seed::generate(&cfg);
    assert_eq!(a, b);
    let c = seed::generate(&SeedConfig::new(6, 500, 1_500));
    assert_ne!(a.contacts, c.contacts);
    assert_ne!(a.deals, c.deals);
}

#[test]
fn sizes_ids_and_times_are_consistent() {
    let cfg = SeedConfig::new(11, 3_000, 9_000);
    let d = data();
    assert_eq!(d.contacts.len(), 3_000);
    assert_eq!(d.deals.len(), 9_000, "the deal count is exact");
    assert_eq!(d.users.len(), 8);
    assert_eq!(d.pipelines.len(), 3);
    let (start, now) = (cfg.start, cfg.now);
    for w in d.deals.windows(2) {
        assert!(w[0].id < w[1].id);
        assert!(
            w[0].created_at <= w[1].created_at,
            "ids grow with creation time"
        );
    }
    for w in d.contacts.windows(2) {
        assert!(w[0].id < w[1].id && w[0].created_at <= w[1].created_at);
    }
    let contact_ids: HashSet<u64> = d.contacts.iter().map(|c| c.id).collect();
    let user_ids: HashSet<u64> = d.users.iter().map(|u| u.id).collect();
    let stages: HashMap<u64, (u64, StageKind)> = d
        .pipelines
        .iter()
        .flat_map(|p| p.stages.iter().map(move |s| (s.id, (p.id, s.kind))))
        .collect();
    for deal in &d.deals {
        assert!(contact_ids.contains(&deal.contact_id));
        assert!(user_ids.contains(&deal.responsible_user_id));
        assert!(deal.created_at >= start && deal.created_at <= now);
        assert!(deal.updated_at >= deal.created_at && deal.updated_at <= now);
        let (pipeline, kind) = stages[&deal.stage_id];
        assert_eq!(pipeline, deal.pipeline_id);
        match deal.outcome {
            DealOutcome::Won => assert_eq!(kind, StageKind::Won),
            DealOutcome::Lost => assert_eq!(kind, StageKind::Lost),
            DealOutcome::Open => assert!(matches!(kind, StageKind::Open | StageKind::Unsorted)),
        }
        assert_eq!(deal.closed_at.is_none(), deal.outcome == DealOutcome::Open);
        if let Some(c) = deal.closed_at {
            assert!(c >= deal.created_at && c <= now);
        }
        assert!(deal.amount >= 0);
        if !deal.products.is_empty() {
            let sum: i64 = deal
                .products
                .iter()
                .map(|r| r.price * r.quantity as i64)
                .sum();
            assert_eq!(sum, deal.amount);
        }
    }
    // Every pipeline has unsorted, open, won and lost stages.
    for p in &d.pipelines {
        for kind in [
            StageKind::Unsorted,
            StageKind::Open,
            StageKind::Won,
            StageKind::Lost,
        ] {
            assert!(p.stage(kind).is_some(), "{} lacks {kind:?}", p.name);
        }
    }
    assert_eq!(d.pipelines.iter().filter(|p| p.is_main).count(), 1);
}

#[test]
fn most_buy_once_and_regulars_buy_often() {
    let d = data();
    let mut won: HashMap<u64, usize> = HashMap::new();
    for deal in d.deals.iter().filter(|x| x.outcome == DealOutcome::Won) {
        *won.entry(deal.contact_id).or_default() += 1;
    }
    let buyers = won.len();
    let once = won.values().filter(|&&n| n == 1).count();
    assert!(
        once * 2 > buyers,
        "most buyers bought once: {once} of {buyers}"
    );
    let frequent = won.values().filter(|&&n| n >= 6).count();
    assert!(
        frequent * 100 > buyers * 5,
        "a real core of frequent buyers: {frequent} of {buyers}"
    );
    let open = d
        .deals
        .iter()
        .filter(|x| x.outcome == DealOutcome::Open)
        .count();
    let lost = d
        .deals
        .iter()
        .filter(|x| x.outcome == DealOutcome::Lost)
        .count();
    assert!(
        open > 0 && lost > d.deals.len() / 20 && lost < d.deals.len() / 3,
        "open {open}, lost {lost}"
    );
    // Regulars and consumable buyers have more deals than one-time buyers.
    let profile: HashMap<u64, BuyerProfile> =
        d.contacts.iter().map(|c| (c.id, c.profile)).collect();
    let mean = |p: BuyerProfile| {
        let ids: Vec<u64> = d
            .contacts
            .iter()
            .filter(|c| c.profile == p)
            .map(|c| c.id)
            .collect();
        let deals = d
            .deals
            .iter()
            .filter(|x| profile[&x.contact_id] == p)
            .count();
        deals as f64 / ids.len().max(1) as f64
    };
    assert!(mean(BuyerProfile::Regular) > 3.0 * mean(BuyerProfile::OneTime));
    assert!(mean(BuyerProfile::Consumable) > 3.0 * mean(BuyerProfile::OneTime));
}

#[test]
fn consumables_follow_the_quantity_and_seasons_follow_the_calendar() {
    let d = data();
    let profile: HashMap<u64, BuyerProfile> =
        d.contacts.iter().map(|c| (c.id, c.profile)).collect();
    // Water: 19 l bottles with quantities; the median interval grows with the quantity.
    let mut by_contact: HashMap<u64, Vec<&seed::Deal>> = HashMap::new();
    for deal in &d.deals {
        if profile[&deal.contact_id] == BuyerProfile::Consumable {
            by_contact.entry(deal.contact_id).or_default().push(deal);
        }
    }
    let (mut small, mut large) = (Vec::new(), Vec::new());
    for deals in by_contact.values().filter(|v| v.len() >= 4) {
        let qty: u32 = deals
            .iter()
            .map(|x| x.products.first().map_or(0, |r| r.quantity))
            .sum::<u32>()
            / deals.len() as u32;
        assert!(
            deals
                .iter()
                .all(|x| x.products.first().is_some_and(|r| r.name.contains("19 л")))
        );
        let mut gaps: Vec<i64> = deals
            .windows(2)
            .map(|w| (w[1].created_at.as_second() - w[0].created_at.as_second()) / 86_400)
            .collect();
        gaps.sort_unstable();
        let median = gaps[gaps.len() / 2];
        if qty <= 3 {
            small.push(median);
        } else if qty >= 6 {
            large.push(median);
        }
    }
    let avg = |v: &[i64]| v.iter().sum::<i64>() as f64 / v.len().max(1) as f64;
    assert!(!small.is_empty() && !large.is_empty());
    assert!(
        avg(&large) > avg(&small),
        "more bottles, longer interval: {} vs {}",
        avg(&large),
        avg(&small)
    );

    // Seasonal buyers buy in spring (Mar-Apr) and autumn (Sep-Oct).
    let msk = TimeZone::fixed(tz::offset(3));
    let seasonal: Vec<&seed::Deal> = d
        .deals
        .iter()
        .filter(|x| profile[&x.contact_id] == BuyerProfile::Seasonal)
        .collect();
    let in_season = seasonal
        .iter()
        .filter(|x| matches!(x.created_at.to_zoned(msk.clone()).month(), 3 | 4 | 9 | 10))
        .count();
    assert!(
        in_season * 10 >= seasonal.len() * 8,
        "{in_season} of {}",
        seasonal.len()
    );
}

#[test]
fn people_data_is_messy_like_real_crms() {
    let d = data();
    let n = d.contacts.len();
    let phones: Vec<&str> = d
        .contacts
        .iter()
        .flat_map(|c| c.phones.iter().map(|p| p.raw.as_str()))
        .collect();
    assert!(phones.iter().any(|p| p.starts_with("8 (")));
    assert!(phones.iter().any(|p| p.starts_with("+7") && p.len() == 12));
    assert!(phones.iter().any(|p| p.starts_with("7-")));
    assert!(
        phones
            .iter()
            .any(|p| p.len() == 10 && p.chars().all(|c| c.is_ascii_digit()))
    );
    assert!(phones.iter().any(|p| p.contains("доб.")));
    assert!(
        phones
            .iter()
            .any(|p| p.chars().filter(char::is_ascii_digit).count() < 10),
        "some garbage"
    );

    let dups = d
        .contacts
        .iter()
        .filter(|c| c.duplicate_of.is_some())
        .count();
    assert!(
        dups * 100 >= n && dups * 100 <= 6 * n,
        "~3% duplicates: {dups}"
    );
    // A duplicate shares the digits of the original's phone.
    let by_id: HashMap<u64, &seed::Contact> = d.contacts.iter().map(|c| (c.id, c)).collect();
    let tail = |s: &str| {
        s.chars()
            .filter(char::is_ascii_digit)
            .collect::<String>()
            .chars()
            .rev()
            .take(7)
            .collect::<String>()
    };
    let dup = d
        .contacts
        .iter()
        .find(|c| c.duplicate_of.is_some() && !c.phones.is_empty())
        .expect("a duplicate");
    let orig = by_id[&dup.duplicate_of.expect("orig")];
    assert!(
        orig.phones.is_empty()
            || tail(&orig.phones[0].raw) == tail(&dup.phones[0].raw)
            || orig
                .phones
                .iter()
                .any(|p| tail(&p.raw) == tail(&dup.phones[0].raw))
    );

    let in_company = d.contacts.iter().filter(|c| c.company_id.is_some()).count();
    assert!(
        in_company * 100 >= 7 * n && in_company * 100 <= 13 * n,
        "~10% in companies: {in_company}"
    );
    let emails: Vec<&str> = d
        .contacts
        .iter()
        .flat_map(|c| c.emails.iter().map(|e| e.value.as_str()))
        .collect();
    assert!(emails.len() * 100 >= 40 * n);
    assert!(
        emails.iter().any(|e| *e == e.to_uppercase()),
        "some upper-case emails"
    );
    assert!(emails.iter().all(|e| e.contains('@')));
    // Russian names, feminine surnames.
    assert!(d.contacts.iter().any(|c| c.last_name.ends_with("ова")));
    assert!(d.contacts.iter().all(|c| {
        c.name
            .chars()
            .any(|ch| ('а'..='я').contains(&ch.to_lowercase().next().unwrap_or(ch)))
    }));
}

#[test]
fn fewer_deals_than_contacts_still_exact() {
    let d = seed::generate(&SeedConfig::new(3, 1_000, 400));
    assert_eq!(d.deals.len(), 400);
    let d = seed::generate(&SeedConfig::new(3, 10, 0));
    assert!(d.deals.is_empty());
    let d = seed::generate(&SeedConfig::new(3, 0, 0));
    assert!(d.contacts.is_empty() && d.companies.is_empty());
}

#[test]
fn the_banner_names_the_period_and_how_old_it_is() {
    let cfg = rebuy_emulator::seed::SeedConfig::new(1, 10, 30);
    let line = cfg.period_line();
    assert!(line.contains(".. 2026-03-01"), "{line}");
    // The fixed end lies in the past on any date after it: the banner says so.
    if jiff::Timestamp::now() > cfg.now + jiff::SignedDuration::from_hours(48) {
        assert!(line.contains("days before today"), "{line}");
    }
}

#[test]
fn history_ends_today_unless_an_end_is_pinned() {
    let cfg = SeedConfig::ending_today(4, 300, 900);
    let now = jiff::Timestamp::now();
    assert!(cfg.now <= now, "{} > {now}", cfg.now);
    assert!(now.duration_since(cfg.now) < jiff::SignedDuration::from_hours(24));
    let today = now.to_zoned(TimeZone::UTC).date().to_string();
    let line = cfg.period_line();
    assert!(line.ends_with(&format!(".. {today}")), "{line}");
    let d = seed::generate(&cfg);
    let last = d.deals.iter().map(|x| x.created_at).max().unwrap();
    assert!(
        last <= cfg.now && cfg.now.duration_since(last) < jiff::SignedDuration::from_hours(24 * 14)
    );

    let pinned = SeedConfig::new(4, 300, 900).ending_on(jiff::civil::date(2025, 6, 1));
    assert!(pinned.period_line().starts_with("2022-06-02 .. 2025-06-01"));
    assert_eq!(seed::generate(&pinned), seed::generate(&pinned));
    assert!(
        seed::generate(&pinned)
            .deals
            .iter()
            .all(|x| x.created_at <= pinned.now)
    );
}

/// Consumable buyers order with Erlang-k gaps, k of their own: the gaps of the regular ones
/// (large k) vary far less than those of the irregular ones, as `1/sqrt(k)` says.
#[test]
fn consumable_buyers_are_periodic_with_a_regularity_of_their_own() {
    let d = data();
    let mut times: HashMap<u64, Vec<i64>> = HashMap::new();
    for deal in &d.deals {
        times
            .entry(deal.contact_id)
            .or_default()
            .push(deal.created_at.as_second());
    }
    let mut cv_by_shape: HashMap<u32, Vec<f64>> = HashMap::new();
    for c in &d.contacts {
        match c.profile {
            BuyerProfile::Consumable => {}
            _ => {
                assert_eq!(c.gap_shape, None);
                continue;
            }
        }
        let k = c.gap_shape.expect("every consumable buyer has a gap shape");
        let t = &times[&c.id];
        if t.len() < 8 {
            continue;
        }
        let gaps: Vec<f64> = t.windows(2).map(|w| (w[1] - w[0]) as f64).collect();
        let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
        let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64;
        cv_by_shape.entry(k).or_default().push(var.sqrt() / mean);
    }
    assert!(
        cv_by_shape.len() >= 4,
        "shapes seen: {:?}",
        cv_by_shape.keys()
    );
    let avg = |k: u32| {
        let v = &cv_by_shape[&k];
        v.iter().sum::<f64>() / v.len() as f64
    };
    let (irregular, regular) = (avg(2), avg(12));
    // Erlang-2 gaps: CV about 0.71; Erlang-12: about 0.29 (plus a day's rounding).
    assert!((0.5..0.9).contains(&irregular), "k=2: {irregular}");
    assert!(regular < 0.42, "k=12: {regular}");
}
