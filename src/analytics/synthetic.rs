//! Synthetic portals: contacts and deals generated deterministically for a seed and streamed
//! through the [`DatasetBuilder`] (or any [`SyntheticSink`], such as a portal cache). Used by
//! the tests and by `rebuy bench analytics`/`plan`/`ui`.
use super::{Dataset, DatasetBuilder, Settings};
use jiff::Timestamp;
use rebuy_core::phone::Phone;
use rebuy_core::{
    Contact, ContactId, Currency, Deal, DealId, DealState, Money, PipelineId, StageId,
};
use rust_decimal::Decimal;

/// The analysis date of the synthetic portals: the end of their three years of history (so
/// the backtest has a holdout with purchases).
pub const SYNTHETIC_AS_OF: &str = "2024-01-01T00:00:00Z";
const START: i64 = 1_609_459_200; // 2021-01-01T00:00:00Z
const SPAN_DAYS: i64 = 3 * 365 + 1;

/// splitmix64: small, fast, deterministic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Where [`feed_synthetic`] sends its records: straight into a [`DatasetBuilder`], or into a
/// portal cache for a benchmark that reads them back the way the sidecar does.
pub trait SyntheticSink {
    /// Takes one contact.
    fn add_contact(&mut self, contact: &Contact);
    /// Takes one deal.
    fn add_deal(&mut self, deal: &Deal);
}

impl SyntheticSink for DatasetBuilder {
    fn add_contact(&mut self, contact: &Contact) {
        DatasetBuilder::add_contact(self, contact);
    }
    fn add_deal(&mut self, deal: &Deal) {
        DatasetBuilder::add_deal(self, deal);
    }
}

/// Streams a synthetic portal into `builder`: `customers` contacts (about 1% share a phone with
/// another contact, so identities merge) and `deals` deals (80% won, 10% lost, 10% open) spread
/// over three years with customer-specific activity, amounts 500..50 000 RUB.
pub fn feed_synthetic(builder: &mut impl SyntheticSink, customers: usize, deals: usize, seed: u64) {
    let mut rng = Rng(seed);
    let created = Timestamp::from_second(START).expect("valid start");
    for i in 0..customers as u64 {
        // 1% of contacts reuse the phone of an earlier contact (a duplicate).
        let phone_of = if i > 0 && rng.below(100) == 0 {
            rng.below(i)
        } else {
            i
        };
        let phone = format!("+7900{:07}", phone_of % 10_000_000);
        builder.add_contact(&Contact {
            id: ContactId(i + 1),
            name: format!("Клиент {}", i + 1),
            phones: vec![Phone {
                raw: phone.clone(),
                e164: Some(phone),
            }],
            emails: vec![format!("client{}@example.ru", i + 1)],
            company_id: None,
            responsible_user_id: None,
            created_at: created,
            updated_at: created,
            custom_fields: vec![],
        });
    }
    // Deals per customer: most buy once or twice, a few buy often (a heavy-tailed mix), scaled
    // to the requested total.
    let mean = deals as f64 / customers.max(1) as f64;
    let mut left = deals;
    let mut id = 0u64;
    let rub = Currency::new("RUB");
    for c in 0..customers {
        let remaining_customers = customers - c;
        let k = if remaining_customers == 1 {
            left
        } else {
            let heavy = rng.unit() < 0.15;
            let draw = if heavy {
                mean * 4.0 * rng.unit() * 1.6
            } else {
                1.0 + rng.unit() * (mean * 0.9)
            };
            (draw.round() as usize)
                .clamp(1, left.saturating_sub(remaining_customers - 1).max(1))
                .min(left)
        };
        left -= k;
        let first = rng.below(SPAN_DAYS as u64 - 30) as i64;
        // Active for a customer-specific part of the rest of the span.
        let active = 1 + rng.below((SPAN_DAYS - first) as u64) as i64;
        for _ in 0..k {
            id += 1;
            let day = first + rng.below(active as u64) as i64;
            let at = START + day * 86_400 + rng.below(86_400) as i64;
            let state = match rng.below(10) {
                0 => DealState::Lost,
                1 => DealState::Open,
                _ => DealState::Won,
            };
            let created_at = Timestamp::from_second(at - 3_600).expect("valid");
            let amount = Decimal::from(500 + rng.below(49_500));
            builder.add_deal(&Deal {
                id: DealId(id),
                name: String::new(),
                pipeline_id: PipelineId(1),
                stage_id: StageId::from(match state {
                    DealState::Won => "142",
                    DealState::Lost => "143",
                    DealState::Open => "100",
                }),
                state,
                amount: Some(Money::new(amount, rub.clone())),
                main_contact_id: Some(ContactId(c as u64 + 1)),
                contact_ids: vec![ContactId(c as u64 + 1)],
                company_id: None,
                responsible_user_id: None,
                created_at,
                updated_at: created_at,
                closed_at: (state != DealState::Open)
                    .then(|| Timestamp::from_second(at).expect("valid")),
                products: vec![],
                custom_fields: vec![],
            });
        }
    }
}

/// A synthetic portal (see [`feed_synthetic`]) built with the default settings.
pub fn synthetic_dataset(customers: usize, deals: usize, seed: u64) -> Dataset {
    let mut b = DatasetBuilder::new(&Settings::default());
    feed_synthetic(&mut b, customers, deals, seed);
    b.build()
}
