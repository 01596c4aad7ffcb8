//! Hand-built cases with known answers for every rule, and property tests of the invariants.
use super::*;
use proptest::prelude::*;
use rebuy_core::phone::Phone;
use rebuy_core::{
    Company, Contact, Currency, Deal, DealId, DealState, Money, PipelineId, ProductRow, StageId,
};
use rust_decimal_macros::dec;

pub(crate) fn t(s: &str) -> Timestamp {
    let s = if s.len() == 10 {
        format!("{s}T12:00:00Z")
    } else {
        s.to_string()
    };
    s.parse().expect("timestamp")
}

pub(crate) fn contact(
    id: u64,
    name: &str,
    phones: &[&str],
    emails: &[&str],
    created: &str,
) -> Contact {
    Contact {
        id: ContactId(id),
        name: name.into(),
        phones: phones.iter().map(|p| Phone::parse(p)).collect(),
        emails: emails.iter().map(|e| e.to_string()).collect(),
        company_id: None,
        responsible_user_id: None,
        created_at: t(created),
        updated_at: t(created),
        custom_fields: vec![],
    }
}

pub(crate) fn deal(
    id: u64,
    contact: u64,
    state: DealState,
    created: &str,
    closed: Option<&str>,
    amount: Decimal,
) -> Deal {
    Deal {
        id: DealId(id),
        name: format!("deal {id}"),
        pipeline_id: PipelineId(1),
        stage_id: StageId::from(match state {
            DealState::Won => "142",
            DealState::Lost => "143",
            DealState::Open => "100",
        }),
        state,
        amount: Some(Money::new(amount, Currency::new("RUB"))),
        main_contact_id: (contact != 0).then_some(ContactId(contact)),
        contact_ids: if contact != 0 {
            vec![ContactId(contact)]
        } else {
            vec![]
        },
        company_id: None,
        responsible_user_id: None,
        created_at: t(created),
        updated_at: t(created),
        closed_at: closed.map(t),
        products: vec![],
        custom_fields: vec![],
    }
}

/// A won deal created and closed on `day`.
pub(crate) fn won(id: u64, contact: u64, day: &str, amount: Decimal) -> Deal {
    deal(id, contact, DealState::Won, day, Some(day), amount)
}

fn run(
    s: &Settings,
    contacts: &[Contact],
    companies: &[Company],
    deals: &[Deal],
    as_of: &str,
) -> (Dataset, Analysis) {
    let mut b = DatasetBuilder::new(s);
    // Any order: deals first on purpose.
    for d in deals {
        b.add_deal(d);
    }
    for c in contacts {
        b.add_contact(c);
    }
    for c in companies {
        b.add_company(c);
    }
    let data = b.build();
    let a = analyse(&data, s, t(as_of), TimeZone::UTC);
    (data, a)
}

fn row<'a>(a: &'a Analysis, key: &str) -> &'a CustomerRow {
    a.customers
        .iter()
        .find(|c| c.key.to_string() == key)
        .unwrap_or_else(|| panic!("no customer {key}"))
}

fn class(a: &Analysis, deal: u64) -> DealClass {
    a.deals
        .iter()
        .find(|d| d.deal_id == DealId(deal))
        .expect("classified")
        .class
}

#[test]
fn identity_merges_contacts_sharing_a_phone_or_email() {
    let contacts = [
        contact(1, "Ivan", &["+7 912 345 67 89"], &[], "2024-01-01"),
        contact(2, "Ivan P.", &["8 (912) 345-67-89"], &[], "2024-02-01"),
        contact(
            3,
            "Olga",
            &["+7 900 000 00 01"],
            &["olga@mail.ru"],
            "2024-01-01",
        ),
        contact(
            4,
            "",
            &["+7 900 000 00 02"],
            &["OLGA@Mail.ru "],
            "2024-01-01",
        ),
        contact(
            5,
            "Petr",
            &["+7 900 000 00 03"],
            &["petr@mail.ru"],
            "2024-01-01",
        ),
        // Transitive: 6 shares a phone with 4, so it joins 3 and 4.
        contact(6, "Olga W.", &["+79000000002"], &[], "2024-01-01"),
    ];
    let deals = [
        won(10, 1, "2024-03-01", dec!(100)),
        won(11, 2, "2024-04-01", dec!(50)),
        won(12, 6, "2024-05-01", dec!(10)),
    ];
    let (data, a) = run(&Settings::default(), &contacts, &[], &deals, "2024-12-31");
    assert_eq!(data.customer_count(), 3);
    assert_eq!(a.merged.len(), 2);
    let m = &a.merged[0];
    assert_eq!(m.customer.to_string(), "contact:1");
    assert_eq!(m.contact_ids, vec![ContactId(1), ContactId(2)]);
    assert_eq!(m.shared_phones, vec!["+79123456789".to_string()]);
    let m = &a.merged[1];
    assert_eq!(
        m.contact_ids,
        vec![ContactId(3), ContactId(4), ContactId(6)]
    );
    assert_eq!(m.shared_emails, vec!["olga@mail.ru".to_string()]);
    assert_eq!(m.shared_phones, vec!["+79000000002".to_string()]);
    let r = row(&a, "contact:1");
    assert_eq!((r.purchases, r.revenue), (2, dec!(150)));
    assert_eq!(r.contact_ids, vec![ContactId(1), ContactId(2)]);
    assert_eq!(r.name, "Ivan");
    let r = row(&a, "contact:3");
    assert_eq!(r.name, "Olga");
    assert_eq!(r.emails, vec!["olga@mail.ru".to_string()]);
    assert_eq!(r.phones.len(), 2);
    assert_eq!(
        data.customer_of_contact(ContactId(6))
            .map(|k| k.to_string())
            .as_deref(),
        Some("contact:3")
    );
}

#[test]
fn repeat_detection_new_repeat_and_returning_inquiry() {
    let contacts = [
        contact(1, "A", &["+79000000001"], &[], "2024-01-01T10:00:00Z"),
        contact(2, "B", &["+79000000002"], &[], "2023-05-01"),
        contact(3, "C", &["+79000000003"], &[], "2024-06-01T10:00:00Z"),
        contact(4, "D", &["+79000000004"], &[], "2024-01-01T10:00:00Z"),
    ];
    let deals = [
        // A: first inquiry, won on Jan 5.
        deal(
            1,
            1,
            DealState::Won,
            "2024-01-01T10:00:01Z",
            Some("2024-01-05"),
            dec!(100),
        ),
        // A: second inquiry before the first was won: known, never bought -> returning inquiry.
        deal(2, 1, DealState::Open, "2024-01-03", None, dec!(0)),
        // A: after the purchase -> repeat.
        deal(3, 1, DealState::Open, "2024-02-01", None, dec!(0)),
        // B: an old contact's first deal -> returning inquiry.
        deal(4, 2, DealState::Open, "2024-03-01", None, dec!(0)),
        // C: contact created with the inquiry -> new.
        deal(5, 3, DealState::Open, "2024-06-01T10:00:05Z", None, dec!(0)),
        // D: lost, then a new inquiry: known, never bought.
        deal(
            6,
            4,
            DealState::Lost,
            "2024-01-01T10:00:02Z",
            Some("2024-01-10"),
            dec!(500),
        ),
        deal(7, 4, DealState::Open, "2024-02-01", None, dec!(0)),
        // No contact at all -> new, no customer.
        deal(8, 0, DealState::Open, "2024-02-01", None, dec!(0)),
        // Created after the analysis date -> not classified.
        deal(9, 1, DealState::Open, "2025-02-01", None, dec!(0)),
    ];
    let s = Settings::default();
    let (data, a) = run(&s, &contacts, &[], &deals, "2024-12-31");
    assert_eq!(class(&a, 1), DealClass::New);
    assert_eq!(class(&a, 2), DealClass::ReturningInquiry);
    assert_eq!(class(&a, 3), DealClass::Repeat);
    assert_eq!(class(&a, 4), DealClass::ReturningInquiry);
    assert_eq!(class(&a, 5), DealClass::New);
    assert_eq!(class(&a, 6), DealClass::New);
    assert_eq!(class(&a, 7), DealClass::ReturningInquiry);
    assert_eq!(
        a.deals
            .iter()
            .find(|d| d.deal_id == DealId(8))
            .unwrap()
            .customer,
        None
    );
    assert!(a.deals.iter().all(|d| d.deal_id != DealId(9)));
    // Lost deals are not purchases: D is no customer.
    assert_eq!(a.customers.len(), 1);
    // The real-time entry point agrees with the batch for every deal that existed.
    for d in &deals[..8] {
        assert_eq!(
            classify_deal(&data, &s, d).class,
            class(&a, d.id.0),
            "deal {}",
            d.id
        );
    }
    // An incoming deal of A today is a repeat; of an unknown contact, new.
    let incoming = deal(100, 1, DealState::Open, "2025-01-10", None, dec!(0));
    assert_eq!(classify_deal(&data, &s, &incoming).class, DealClass::Repeat);
    let stranger = deal(101, 999, DealState::Open, "2025-01-10", None, dec!(0));
    assert_eq!(classify_deal(&data, &s, &stranger).class, DealClass::New);
}

#[test]
fn lost_deals_are_ignored_and_same_day_purchases_count_once() {
    let contacts = [contact(1, "A", &["+79000000001"], &[], "2024-01-01")];
    let deals = [
        won(1, 1, "2024-05-01T09:00:00Z", dec!(100)),
        won(2, 1, "2024-05-01T18:00:00Z", dec!(50)),
        deal(
            3,
            1,
            DealState::Lost,
            "2024-06-01",
            Some("2024-06-02"),
            dec!(1000),
        ),
    ];
    let (_, a) = run(&Settings::default(), &contacts, &[], &deals, "2024-12-31");
    let r = row(&a, "contact:1");
    assert_eq!((r.purchases, r.deals, r.revenue), (1, 2, dec!(150)));
    assert!(r.one_time);
    assert_eq!(r.tier, Tier::OneTime);
    assert_eq!(r.cycle_days, None);
    assert_eq!(r.recency_days, 244);
    assert!(r.sleeping);
    // The second same-day deal was created after the first sale closed: routed as repeat.
    assert_eq!(class(&a, 2), DealClass::Repeat);
}

#[test]
fn same_day_is_local_to_the_portal_time_zone() {
    // 22:30 and 23:30 UTC on May 1 are May 2 01:30 and 02:30 in Moscow: one day either way;
    // 20:00 UTC May 1 and 22:00 UTC May 1 are May 1 23:00 and May 2 01:00 in Moscow: two days.
    let contacts = [contact(1, "A", &[], &[], "2024-01-01")];
    let deals = [
        won(1, 1, "2024-05-01T20:00:00Z", dec!(1)),
        won(2, 1, "2024-05-01T22:00:00Z", dec!(1)),
    ];
    let s = Settings::default();
    let mut b = DatasetBuilder::new(&s);
    b.add_contact(&contacts[0]);
    deals.iter().for_each(|d| b.add_deal(d));
    let data = b.build();
    let utc = analyse(&data, &s, t("2024-12-31"), TimeZone::UTC);
    assert_eq!(utc.customers[0].purchases, 1);
    let msk = analyse(
        &data,
        &s,
        t("2024-12-31"),
        TimeZone::get("Europe/Moscow").unwrap(),
    );
    assert_eq!(msk.customers[0].purchases, 2);
}

#[test]
fn currencies_converted_with_rates_or_left_out_with_a_warning() {
    let contacts = [
        contact(1, "A", &[], &[], "2024-01-01"),
        contact(2, "B", &[], &[], "2024-01-01"),
    ];
    let mut usd = won(3, 2, "2024-06-01", dec!(10));
    usd.amount = Some(Money::new(dec!(10), Currency::new("USD")));
    let mut usd2 = won(4, 2, "2024-07-01", dec!(5.5));
    usd2.amount = Some(Money::new(dec!(5.5), Currency::new("usd")));
    let deals = [
        won(1, 1, "2024-05-01", dec!(100)),
        won(2, 1, "2024-06-01", dec!(100)),
        usd,
        usd2,
    ];
    let s = Settings {
        currency: Some("RUB".into()),
        ..Settings::default()
    };
    let (_, a) = run(&s, &contacts, &[], &deals, "2024-12-31");
    assert_eq!(a.currency, "RUB");
    assert!(
        a.warnings
            .iter()
            .any(|w| w == "2 deals in USD left out: no rate configured"),
        "{:?}",
        a.warnings
    );
    assert_eq!(a.customers.len(), 1);
    let s = Settings {
        rates: [("USD".to_string(), dec!(92.5))].into(),
        ..s
    };
    let (_, a) = run(&s, &contacts, &[], &deals, "2024-12-31");
    assert!(
        a.warnings.iter().all(|w| !w.contains("left out")),
        "{:?}",
        a.warnings
    );
    assert_eq!(row(&a, "contact:2").revenue, dec!(925) + dec!(508.75));
    // Auto-detected currency: the most common among sales.
    let (_, a) = run(&Settings::default(), &contacts, &[], &deals, "2024-12-31");
    assert_eq!(a.currency, "RUB");
}

#[test]
fn b2b_customer_is_the_company() {
    let mut c1 = contact(1, "Anna (buyer)", &["+79000000001"], &[], "2024-01-01");
    c1.company_id = Some(CompanyId(10));
    let mut c2 = contact(2, "Boris (director)", &["+79000000002"], &[], "2024-01-01");
    c2.company_id = Some(CompanyId(10));
    // A contact of another company sharing Anna's phone does not merge the companies.
    let mut c3 = contact(3, "Accountant", &["+79000000001"], &[], "2024-01-01");
    c3.company_id = Some(CompanyId(20));
    let company = |id: u64, name: &str| Company {
        id: CompanyId(id),
        name: name.into(),
        phones: vec![],
        emails: vec![],
        responsible_user_id: None,
        created_at: t("2024-01-01"),
        updated_at: t("2024-01-01"),
        custom_fields: vec![],
    };
    let mut d1 = won(1, 1, "2024-03-01", dec!(1000));
    d1.company_id = Some(CompanyId(10));
    let d2 = won(2, 2, "2024-04-01", dec!(2000)); // no company on the deal: via the contact
    let mut d3 = won(3, 0, "2024-05-01", dec!(3000)); // company only
    d3.company_id = Some(CompanyId(10));
    let d4 = won(4, 3, "2024-05-01", dec!(10));
    let s = Settings {
        mode: Mode::B2b,
        ..Settings::default()
    };
    let (_, a) = run(
        &s,
        &[c1.clone(), c2.clone(), c3.clone()],
        &[company(10, "OOO Romashka"), company(20, "Other")],
        &[d1.clone(), d2.clone(), d3.clone(), d4.clone()],
        "2024-12-31",
    );
    let r = row(&a, "company:10");
    assert_eq!((r.purchases, r.revenue), (3, dec!(6000)));
    assert_eq!(r.name, "OOO Romashka");
    assert_eq!(r.contact_ids, vec![ContactId(1), ContactId(2)]);
    assert_eq!(row(&a, "company:20").revenue, dec!(10));
    // In B2C the same data gives per-person customers, and the shared phone merges 1 and 3.
    let (_, a) = run(
        &Settings::default(),
        &[c1, c2, c3],
        &[],
        &[d1, d2, d3, d4],
        "2024-12-31",
    );
    assert_eq!(row(&a, "contact:1").revenue, dec!(1010));
    assert_eq!(row(&a, "contact:2").revenue, dec!(2000));
    assert_eq!(row(&a, "company:10").revenue, dec!(3000));
}

#[test]
fn cycle_median_next_purchase_and_status() {
    let contacts = [contact(1, "A", &[], &[], "2024-01-01")];
    // Purchases on days 0, 10, 20, 50 (Jan 1, 11, 21, Feb 20): gaps 10, 10, 30, median 10.
    let deals = [
        won(1, 1, "2024-01-01", dec!(10)),
        won(2, 1, "2024-01-11", dec!(10)),
        won(3, 1, "2024-01-21", dec!(10)),
        won(4, 1, "2024-02-20", dec!(10)),
    ];
    let s = Settings::default();
    let status_at = |as_of: &str| {
        let (_, a) = run(&s, &contacts, &[], &deals, as_of);
        let r = a.customers[0].clone();
        (r.cycle_days, r.next_purchase, r.cycle_status)
    };
    let next = Some(jiff::civil::date(2024, 3, 1));
    assert_eq!(
        status_at("2024-02-21"),
        (Some(10.0), next, Some(CycleStatus::NotDue))
    );
    assert_eq!(
        status_at("2024-02-23"),
        (Some(10.0), next, Some(CycleStatus::DueSoon))
    );
    assert_eq!(
        status_at("2024-03-01"),
        (Some(10.0), next, Some(CycleStatus::DueSoon))
    );
    assert_eq!(
        status_at("2024-03-02"),
        (Some(10.0), next, Some(CycleStatus::Overdue))
    );
    assert_eq!(
        status_at("2024-03-21"),
        (Some(10.0), next, Some(CycleStatus::Overdue))
    ); // 30 days = 3 cycles
    assert_eq!(
        status_at("2024-03-22"),
        (Some(10.0), next, Some(CycleStatus::Churned))
    );
}

#[test]
fn consumption_rule_sets_the_next_purchase() {
    let contacts = [contact(1, "A", &[], &[], "2024-01-01")];
    let mut d = won(1, 1, "2024-03-01", dec!(1000));
    d.products = vec![
        ProductRow {
            product_id: Some(7),
            name: "Вода 19 л «Родник»".into(),
            price: dec!(200),
            quantity: dec!(5),
        },
        ProductRow {
            product_id: Some(8),
            name: "Помпа".into(),
            price: dec!(0),
            quantity: dec!(1),
        },
    ];
    let rule = ConsumptionRule {
        product: Some("вода 19 л".into()),
        product_id: None,
        days_per_unit: 3.0,
    };
    let s = Settings {
        consumption: vec![rule],
        ..Settings::default()
    };
    let (_, a) = run(&s, &contacts, &[], &[d.clone()], "2024-03-10");
    let r = &a.customers[0];
    assert_eq!(r.cycle_days, Some(15.0));
    assert_eq!(r.next_purchase, Some(jiff::civil::date(2024, 3, 16)));
    assert_eq!(r.cycle_status, Some(CycleStatus::DueSoon));
    // By product id, and the amount from product rows.
    let rule = ConsumptionRule {
        product: None,
        product_id: Some(8),
        days_per_unit: 30.0,
    };
    let s = Settings {
        consumption: vec![rule],
        amount_source: AmountSource::Products,
        ..Settings::default()
    };
    let (_, a) = run(&s, &contacts, &[], &[d], "2024-03-10");
    assert_eq!(a.customers[0].cycle_days, Some(30.0));
    assert_eq!(a.customers[0].revenue, dec!(1000));
}

/// Ten customers with 1..10 purchases on distinct days and revenue 100 x purchases.
fn ladder() -> (Vec<Contact>, Vec<Deal>) {
    let contacts: Vec<Contact> = (1..=10)
        .map(|i| contact(i, &format!("C{i}"), &[], &[], "2023-01-01"))
        .collect();
    let mut deals = Vec::new();
    let mut id = 0;
    let start = jiff::civil::date(2024, 1, 1);
    for c in 1..=10u64 {
        for k in 0..c {
            id += 1;
            // Customer c's last purchase is c days before Dec 31 (higher c: more recent... no:
            // customer 10 is the most recent).
            let day = start
                .checked_add(jiff::Span::new().days((300 + c * 6 - (c - 1 - k) * 25) as i64))
                .unwrap();
            deals.push(won(id, c, &day.to_string(), dec!(100)));
        }
    }
    (contacts, deals)
}

#[test]
fn rfm_scores_segments_grid_abc_xyz_tiers() {
    let (contacts, deals) = ladder();
    let quintiles = Settings {
        rfm_recency_scoring: RfmScoring::Quintiles,
        rfm_frequency_scoring: RfmScoring::Quintiles,
        ..Settings::default()
    };
    let (_, a) = run(&quintiles, &contacts, &[], &deals, "2024-12-31");
    assert_eq!(a.customers.len(), 10);
    let by = |i: u64| row(&a, &format!("contact:{i}"));
    for i in 1..=10u64 {
        let r = by(i);
        assert_eq!(r.purchases as u64, i);
        assert_eq!(r.revenue, Decimal::from(100 * i));
        let q = (1 + 5 * (i - 1) / 10) as u8;
        assert_eq!((r.r, r.f, r.m), (q, q, q), "customer {i}");
    }
    assert_eq!(by(10).rfm_segment, RfmSegment::Champions);
    assert_eq!(by(1).rfm_segment, RfmSegment::Lost);
    assert_eq!(by(5).rfm_segment, RfmSegment::NeedAttention);
    assert_eq!(a.rfm_grid.cells[4][4].customers, 2);
    assert_eq!(a.rfm_grid.cells[4][4].revenue, dec!(1900));
    // ABC: total 5500; cumulative before: 10:0 9:1000 8:1900 7:2700 6:3400 5:4000 4:4500 3:4900
    // 2:5200 1:5400 -> A while < 4400, B while < 5225.
    let abc: Vec<Abc> = (1..=10).map(|i| by(i).abc).collect();
    use Abc::*;
    assert_eq!(abc, vec![C, B, B, B, A, A, A, A, A, A]);
    // XYZ by purchases in the last 365 days: >= 6 X, >= 2 Y.
    let xyz: Vec<Xyz> = (1..=10).map(|i| by(i).xyz).collect();
    use Xyz::*;
    assert_eq!(xyz, vec![Z, Y, Y, Y, Y, X, X, X, X, X]);
    assert_eq!(by(1).tier, Tier::OneTime);
    assert_eq!(by(2).tier, Tier::Small);
    assert_eq!(a.abc_xyz.cells[0][0].customers, 5);
    let s = Settings {
        tier_medium_order_min: dec!(100),
        tier_large_order_min: dec!(1000),
        ..Settings::default()
    };
    let (_, a2) = run(&s, &contacts, &[], &deals, "2024-12-31");
    assert_eq!(row(&a2, "contact:2").tier, Tier::Medium);
    // Configured thresholds instead of quintiles.
    let s = Settings {
        rfm_frequency_thresholds: Some([2, 3, 5, 8]),
        rfm_recency_thresholds_days: Some([30, 60, 90, 120]),
        rfm_monetary_thresholds: Some([dec!(200), dec!(300), dec!(500), dec!(800)]),
        ..Settings::default()
    };
    let (_, a3) = run(&s, &contacts, &[], &deals, "2024-12-31");
    let r = row(&a3, "contact:5");
    assert_eq!((r.f, r.m), (4, 4));
    // Classic XYZ by the CV of intervals: every ladder customer buys every 25 days -> X.
    let s = Settings {
        xyz_mode: XyzMode::Cv,
        ..Settings::default()
    };
    let (_, a4) = run(&s, &contacts, &[], &deals, "2024-12-31");
    assert_eq!(row(&a4, "contact:5").xyz, Xyz::X);
    assert_eq!(row(&a4, "contact:2").xyz, Xyz::Z); // one interval only
}

/// The default grid: F by purchase counts (1, 2, 3-4, 5-7, 8+), R by days since the last
/// purchase against 1, 2, 3 and 6 times the base's median cycle (25 days on the ladder).
#[test]
fn rfm_thresholds_by_default_from_the_median_cycle() {
    let (contacts, deals) = ladder();
    let (_, a) = run(&Settings::default(), &contacts, &[], &deals, "2024-12-31");
    let g = &a.rfm_grid;
    assert_eq!(g.median_cycle_days, Some(25.0));
    assert_eq!(g.recency_thresholds_days, Some([25, 50, 75, 150]));
    assert_eq!(g.frequency_thresholds, Some([2, 3, 5, 8]));
    let f: Vec<u8> = (1..=10)
        .map(|i| row(&a, &format!("contact:{i}")).f)
        .collect();
    assert_eq!(f, [1, 2, 3, 3, 4, 4, 4, 5, 5, 5]);
    // Customer c last bought 65 - 6c days before the analysis date.
    let r: Vec<u8> = (1..=10)
        .map(|i| row(&a, &format!("contact:{i}")).r)
        .collect();
    assert_eq!(r, [3, 3, 4, 4, 4, 4, 5, 5, 5, 5]);
    // Every F column holds customers.
    for f in 0..5 {
        assert!(
            (0..5).any(|r| g.cells[r][f].customers > 0),
            "F{} empty",
            f + 1
        );
    }
    let report = crate::analytics::render::render_report(&a);
    assert!(
        report.contains("F3 3-4") && report.contains("F5 8+") && report.contains("R5 <= 25 d"),
        "{report}"
    );
}

/// Nine months after the last purchase of anyone, nobody is recent: no champions, no loyal,
/// no new customers (quintiles would still rank a fifth of the base as the most recent).
#[test]
fn a_dormant_base_shows_no_champions() {
    let (contacts, deals) = ladder();
    let (_, a) = run(&Settings::default(), &contacts, &[], &deals, "2025-09-30");
    assert!(a.customers.iter().all(|c| c.r == 1), "{:?}", a.rfm_grid);
    for seg in [
        RfmSegment::Champions,
        RfmSegment::Loyal,
        RfmSegment::New,
        RfmSegment::PotentialLoyalists,
    ] {
        let n = a
            .segments
            .iter()
            .find(|s| s.segment == seg)
            .unwrap()
            .customers;
        assert_eq!(n, 0, "{seg:?}");
    }
    let quintiles = Settings {
        rfm_recency_scoring: RfmScoring::Quintiles,
        ..Settings::default()
    };
    let (_, q) = run(&quintiles, &contacts, &[], &deals, "2025-09-30");
    assert!(
        q.customers
            .iter()
            .any(|c| c.rfm_segment == RfmSegment::Champions)
    );
}

#[test]
fn figures_of_the_period() {
    let contacts: Vec<Contact> = (1..=5)
        .map(|i| contact(i, "x", &[], &[], "2022-01-01"))
        .collect();
    let deals = [
        // 1: old customer active at the start, buys again in the period (repeat).
        won(1, 1, "2023-10-01", dec!(100)),
        won(2, 1, "2024-03-01", dec!(300)),
        // 2: old customer, sleeps through the period.
        won(3, 2, "2023-11-01", dec!(200)),
        // 3: new in the period, buys twice (new and repeat).
        won(4, 3, "2024-02-01", dec!(1000)),
        won(5, 3, "2024-11-01", dec!(500)),
        won(6, 3, "2024-11-01", dec!(500)),
        // 4: new in the period, once.
        won(7, 4, "2024-12-01", dec!(100)),
        // 5: long gone.
        won(8, 5, "2020-01-01", dec!(50)),
    ];
    let s = Settings {
        period_days: 366, // 2024 is a leap year: 2024-01-01 ..= 2024-12-31
        marketing_spend: vec![SpendEntry {
            from: jiff::civil::date(2023, 7, 1),
            to: jiff::civil::date(2024, 6, 30),
            amount: dec!(3660),
        }],
        ..Settings::default()
    };
    let (_, a) = run(&s, &contacts, &[], &deals, "2024-12-31");
    let f = &a.figures;
    assert_eq!(f.period_start, jiff::civil::date(2024, 1, 1));
    assert_eq!(
        (f.customers, f.new_customers, f.repeat_customers),
        (3, 2, 2)
    );
    assert_eq!(f.revenue, dec!(2400));
    assert_eq!(f.orders, 5);
    assert_eq!(f.aov, Some(dec!(480)));
    assert_eq!(f.repeat_revenue, dec!(1300));
    // Active (a purchase within 180 days) at 2023-12-31: customers 1 and 2; at the end: 3 and 4.
    assert_eq!((f.active_at_start, f.active_at_end), (2, 2));
    assert_eq!(f.crr, Some(0.0));
    assert_eq!(f.customers_total, 5);
    assert_eq!(f.revenue_total, dec!(2750));
    assert_eq!(f.historical_ltv, Some(dec!(550)));
    // Top 3 of 3 customers: 100% -> warning.
    assert_eq!(f.concentration.top1_share, 2000.0 / 2400.0);
    assert_eq!(f.concentration.top3_share, 1.0);
    assert_eq!(f.concentration.top20pct_customers, 1);
    assert!(f.concentration_warning.is_some());
    assert!(
        a.warnings
            .iter()
            .any(|w| w.starts_with("concentration: the top 3 customers bring 100.0%"))
    );
    // Spend 3660 over 366 days, 182 of them in 2024 -> 1820, CAC = 910.
    assert_eq!(f.marketing_spend, Some(dec!(1820)));
    assert_eq!(f.cac, Some(dec!(910)));
}

#[test]
fn models_run_on_a_small_portal() {
    let (contacts, deals) = ladder();
    let (_, a) = run(&Settings::default(), &contacts, &[], &deals, "2024-12-31");
    let bg = a.models.bgnbd.expect("fitted");
    assert!(bg.r > 0.0 && bg.alpha > 0.0 && bg.a > 0.0 && bg.b > 0.0);
    // Ten customers with 25-day gaps identify no model: each degenerate fit is named in one
    // sentence and
    // the personal cycle drives the predictions (no P(alive), a date for repeat buyers).
    assert_eq!(
        a.models.driving.as_deref(),
        Some("personal cycle"),
        "{:?}",
        a.warnings
    );
    assert!(
        a.warnings
            .iter()
            .any(|w| w.starts_with("BG/NBD is not identified on this base")),
        "{:?}",
        a.warnings
    );
    for r in &a.customers {
        assert!(r.p_alive.is_none());
        assert!(r.expected_purchases_90d.unwrap() >= 0.0);
        assert_eq!(r.next_purchase_forecast.is_some(), r.purchases > 1, "{r:?}");
    }
    // A pinned model with a degenerate fit does not drive them either.
    let pinned = Settings {
        model: Some("mbg/nbd".into()),
        ..Settings::default()
    };
    let (_, a) = run(&pinned, &contacts, &[], &deals, "2024-12-31");
    assert_eq!(a.models.driving.as_deref(), Some("personal cycle"));
    assert!(
        a.warnings
            .iter()
            .any(|w| w.starts_with("MBG/NBD is not identified on this base")),
        "{:?}",
        a.warnings
    );
    // A pinned hiatus baseline: the rate so far of the customers who bought within the
    // backtest's holdout, no P(alive), no dates; the report names it with its figures.
    let pinned = Settings {
        model: Some("Hiatus".into()),
        ..Settings::default()
    };
    let (_, a) = run(&pinned, &contacts, &[], &deals, "2024-12-31");
    assert_eq!(
        a.models.driving.as_deref(),
        Some("hiatus"),
        "{:?}",
        a.warnings
    );
    let e = a.models.evidence.as_ref().expect("backtest figures");
    assert_eq!(
        (e.model.as_str(), e.chosen.as_deref()),
        ("hiatus", Some("hiatus"))
    );
    let holdout = (crate::analytics::day_of_date(e.holdout.1)
        - crate::analytics::day_of_date(e.holdout.0)
        + 1) as f64;
    for r in &a.customers {
        assert!(r.p_alive.is_none() && r.next_purchase_forecast.is_none());
        let x = (r.purchases - 1) as f64;
        let t = (crate::analytics::day_of_date(a.as_of_date)
            - crate::analytics::day_of_date(r.first_purchase)) as f64;
        let want = if (r.recency_days as f64) <= holdout && t > 0.0 {
            x / t * 90.0
        } else {
            0.0
        };
        let got = r.expected_purchases_90d.unwrap();
        assert!((got - want).abs() < 1e-9, "{got} vs {want}: {r:?}");
    }
    // Gamma-Gamma: every order is 100, so the expected order value is 100-ish.
    let settings = Settings {
        models: false,
        ..Settings::default()
    };
    let (_, a) = run(&settings, &contacts, &[], &deals, "2024-12-31");
    assert!(a.models.bgnbd.is_none() && a.customers.iter().all(|c| c.p_alive.is_none()));
}

#[test]
fn analysis_is_deterministic_and_input_order_free() {
    let (contacts, mut deals) = ladder();
    let s = Settings::default();
    let (_, a) = run(&s, &contacts, &[], &deals, "2024-12-31");
    deals.reverse();
    let (_, b) = run(&s, &contacts, &[], &deals, "2024-12-31");
    assert_eq!(a, b);
}

/// Random small portals for the property tests.
fn arb_portal() -> impl Strategy<Value = (Vec<Contact>, Vec<Deal>)> {
    let deal_s = (1u64..30, 0u8..3, 0i64..700, 0i64..30, 0u32..100_000);
    (1usize..30, proptest::collection::vec(deal_s, 0..120)).prop_map(|(nc, ds)| {
        let contacts: Vec<Contact> = (1..=nc as u64)
            .map(|i| {
                contact(
                    i,
                    "c",
                    &[&format!("+7900000{:04}", i % 17)],
                    &[],
                    "2022-06-01",
                )
            })
            .collect();
        let base = t("2023-01-01");
        let deals = ds
            .into_iter()
            .enumerate()
            .map(|(i, (c, st, day, dur, amt))| {
                let state = [DealState::Won, DealState::Lost, DealState::Open][st as usize];
                let created = base + jiff::SignedDuration::from_hours(day * 24);
                let closed = (state != DealState::Open)
                    .then(|| created + jiff::SignedDuration::from_hours(dur * 24));
                let mut d = deal(
                    i as u64 + 1,
                    c.min(nc as u64),
                    state,
                    "2023-01-01",
                    None,
                    Decimal::new(amt as i64, 2),
                );
                d.created_at = created;
                d.closed_at = closed;
                d
            })
            .collect();
        (contacts, deals)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn invariants_hold((contacts, deals) in arb_portal()) {
        let s = Settings::default();
        let (data, a) = run(&s, &contacts, &[], &deals, "2025-01-01");
        let n = a.customers.len() as u64;
        let total: Decimal = a.customers.iter().map(|c| c.revenue).sum();
        for c in &a.customers {
            prop_assert!((1..=5).contains(&c.r) && (1..=5).contains(&c.f) && (1..=5).contains(&c.m));
            prop_assert_eq!(c.rfm_segment, rfm::segment(c.r, c.f));
            prop_assert!(c.purchases >= 1 && c.deals >= c.purchases);
            if let Some(p) = c.p_alive { prop_assert!((0.0..=1.0).contains(&p)); }
        }
        // Every customer in exactly one segment.
        prop_assert_eq!(a.segments.iter().map(|s| s.customers).sum::<u64>(), n);
        let grid: u64 = a.rfm_grid.cells.iter().flatten().map(|c| c.customers).sum();
        prop_assert_eq!(grid, n);
        // ABC shares sum to the total.
        let abc_rev: Decimal = a.abc_xyz.cells.iter().flatten().map(|c| c.revenue).sum();
        prop_assert_eq!(abc_rev, total);
        prop_assert_eq!(a.figures.revenue_total, total);
        // Every deal classified once, and the real-time classifier agrees.
        prop_assert_eq!(a.deals.len(), deals.len());
        for d in &deals {
            let batch = a.deals.iter().find(|x| x.deal_id == d.id).unwrap();
            prop_assert_eq!(classify_deal(&data, &s, d), *batch);
        }
    }
}

#[test]
fn crr_counts_new_customers_who_went_to_sleep_in_neither_end_nor_new() {
    let contacts: Vec<Contact> = (1..=3)
        .map(|i| contact(i, "x", &[], &[], "2022-01-01"))
        .collect();
    let deals = [
        // 1: active at the start and at the end: retained.
        won(1, 1, "2023-12-01", dec!(100)),
        won(2, 1, "2024-12-01", dec!(100)),
        // 2: active at the start, gone by the end.
        won(3, 2, "2023-12-15", dec!(100)),
        // 3: new early in the period, asleep by its end.
        won(4, 3, "2024-01-15", dec!(100)),
    ];
    let s = Settings {
        period_days: 366,
        ..Settings::default()
    };
    let (_, a) = run(&s, &contacts, &[], &deals, "2024-12-31");
    let f = &a.figures;
    assert_eq!(
        (f.active_at_start, f.active_at_end, f.new_customers),
        (2, 1, 1)
    );
    // One of the two customers of the start is still active: 50%, not (1 - 1) / 2 = 0.
    assert_eq!(f.crr, Some(0.5));
}

/// On a base that identifies the models the backtest's choice drives the predictions (a pin
/// wins): P(alive), expected purchases, CLV, and a next-purchase date inside its 50% interval
/// inside its 80% interval; the analysis carries the driving model's backtest figures.
#[test]
fn the_backtests_choice_drives_the_predictions_with_next_purchase_intervals() {
    let data = crate::analytics::synthetic::synthetic_dataset(1_500, 6_000, 42);
    let as_of: Timestamp = crate::analytics::synthetic::SYNTHETIC_AS_OF
        .parse()
        .unwrap();
    // The backtest on its own, as `rebuy backtest` runs it.
    let s = Settings::default();
    let (days, end) = crate::analytics::purchase_days(&data, &s, as_of, TimeZone::UTC);
    let b = crate::analytics::backtest::portal(&days, end, None, None).unwrap();
    let choice = b.chosen.clone().unwrap();
    assert!(
        crate::analytics::backtest::MODELS.contains(&choice.as_str()),
        "a model wins here: {}",
        crate::analytics::backtest::render_table(&b)
    );
    for (pin, want) in [(None, choice.as_str()), (Some("MBG/CNBD-k"), "MBG/CNBD-k")] {
        let s = Settings {
            model: pin.map(str::to_string),
            ..Settings::default()
        };
        let a = analyse(&data, &s, as_of, TimeZone::UTC);
        assert_eq!(a.models.driving.as_deref(), Some(want), "{:?}", a.warnings);
        assert!(!a.models.driving_params.is_empty());
        // Its figures are the backtest's row of that model.
        let e = a.models.evidence.as_ref().expect("backtest figures");
        let row = b.rows.iter().find(|r| r.name == want).unwrap();
        assert_eq!(e.model, want);
        assert_eq!((e.mae, e.auc), (Some(row.mae), Some(row.auc)));
        assert_eq!(e.weekly_predicted.len(), e.weeks.len());
        assert_eq!(e.weekly_actual.len(), e.weeks.len());
        assert_eq!(e.deciles.len(), 10);
        let line = crate::analytics::render::driving_model_line(&a.models);
        assert!(
            line.starts_with(&format!("driving model: {want} (backtest on this portal"))
                && line.contains(&format!("MAE {:.3}, AUC {:.3}", row.mae, row.auc)),
            "{line}"
        );
        let mut dated = 0;
        for r in &a.customers {
            let p = r.p_alive.unwrap();
            assert!((0.0..=1.0).contains(&p));
            assert!(r.expected_purchases_90d.unwrap() >= 0.0);
            assert!(r.clv.is_some() && r.expected_order_value.is_some());
            if let Some(n) = r.next_purchase_forecast {
                dated += 1;
                // An interval's upper end may lie beyond a century (then no interval).
                if let Some((a50, b50)) = n.interval_50 {
                    assert!(a50 <= n.date && n.date <= b50, "{n:?}");
                    if let Some((a80, b80)) = n.interval_80 {
                        assert!(a80 <= a50 && b50 <= b80, "{n:?}");
                        assert!(a80 >= a.as_of_date);
                    }
                }
            }
        }
        assert!(dated > a.customers.len() / 2, "{dated}");
    }
}

#[test]
fn an_unknown_model_pin_is_named() {
    let s = Settings {
        model: Some("Pareto".into()),
        ..Settings::default()
    };
    let p = s.validate();
    assert!(
        p.iter()
            .any(|m| m.starts_with("model \"Pareto\" is not one of Pareto/NBD, BG/NBD")),
        "{p:?}"
    );
    let ok = Settings {
        model: Some(" mbg/cnbd-k ".into()),
        ..Settings::default()
    };
    assert!(ok.validate().is_empty(), "{:?}", ok.validate());
}
