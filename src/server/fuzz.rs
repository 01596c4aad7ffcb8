//! The webhook parsers' fuzz target: bodies generated at random, from pure noise to
//! almost-valid PHP-bracket forms (the shapes most likely to reach deep code), fed to every
//! parser the server runs on untrusted input. A panic is caught and counted; the target must
//! report zero. `rebuy bench fuzz --bodies 1000000` runs it at scale; the test suite runs a
//! smaller share on every build.
use std::panic::{AssertUnwindSafe, catch_unwind};

/// What a fuzz run found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FuzzReport {
    /// Bodies tried.
    pub bodies: u64,
    /// Bodies a parser accepted.
    pub accepted: u64,
    /// Panics (must be zero).
    pub panics: u64,
}

/// A tiny deterministic generator (xorshift64*): reproducible runs, no dependency.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

const ENTITIES: &[&str] = &[
    "leads",
    "contacts",
    "companies",
    "customers",
    "task",
    "talk",
    "unsorted",
    "account",
    "",
];
const ACTIONS: &[&str] = &[
    "add",
    "update",
    "delete",
    "status",
    "responsible",
    "note",
    "restore",
    "0",
    "",
];
const FIELDS: &[&str] = &[
    "id",
    "status_id",
    "old_status_id",
    "pipeline_id",
    "price",
    "updated_at",
    "last_modified",
    "custom_fields",
    "name",
    "subdomain",
    "_links",
    "self",
    "values",
    "value",
    "enum",
    "",
];
const VALUES: &[&str] = &[
    "1",
    "0",
    "-1",
    "18446744073709551616",
    "abc",
    "",
    "%",
    "%ZZ",
    "%00",
    "[",
    "]",
    "][",
    "=",
    "&",
    "+",
    "1e9",
    "\u{0442}\u{0435}\u{0441}\u{0442}",
    "9999999999999999999999",
    " ",
    "null",
];
const EVENTS: &[&str] = &[
    "ONCRMDEALADD",
    "ONCRMDEALUPDATE",
    "ONCRMDEALDELETE",
    "ONCRMCONTACTADD",
    "ONAPPINSTALL",
    "onappuninstall",
    "X",
    "",
];

fn key(g: &mut Gen) -> String {
    let mut k = g.pick(ENTITIES).to_owned();
    for _ in 0..g.below(6) {
        match g.below(5) {
            0 => k.push_str(&format!("[{}]", g.pick(ACTIONS))),
            1 => k.push_str(&format!("[{}]", g.below(4))),
            2 => k.push_str(&format!("[{}]", g.pick(FIELDS))),
            3 => k.push('['),
            _ => k.push(']'),
        }
    }
    k
}

/// One generated body.
pub fn body(g: &mut u64) -> Vec<u8> {
    let mut rng = Gen(*g | 1);
    let out = match rng.below(4) {
        // Raw noise.
        0 => (0..rng.below(64)).map(|_| rng.next() as u8).collect(),
        // Bitrix24-shaped.
        1 => {
            let mut s = format!("event={}", rng.pick(EVENTS));
            for _ in 0..rng.below(8) {
                let k = match rng.below(3) {
                    0 => format!(
                        "data[FIELDS][{}]",
                        rng.pick(&["ID", "CATEGORY_ID", "STAGE_ID", ""])
                    ),
                    1 => format!(
                        "auth[{}]",
                        rng.pick(&["application_token", "domain", "access_token", "member_id"])
                    ),
                    _ => key(&mut rng),
                };
                s.push_str(&format!("&{k}={}", rng.pick(VALUES)));
            }
            s.into_bytes()
        }
        // amoCRM-shaped.
        _ => {
            let mut s = String::new();
            for i in 0..rng.below(12) {
                if i > 0 {
                    s.push('&');
                }
                s.push_str(&format!("{}={}", key(&mut rng), rng.pick(VALUES)));
            }
            s.into_bytes()
        }
    };
    *g = rng.0;
    out
}

/// Runs `bodies` generated bodies through every webhook parser.
pub fn run(bodies: u64, seed: u64) -> FuzzReport {
    let mut report = FuzzReport::default();
    let mut state = seed.max(1);
    for _ in 0..bodies {
        let b = body(&mut state);
        report.bodies += 1;
        let result = catch_unwind(AssertUnwindSafe(|| {
            let amo = rebuy_amocrm::webhooks::parse(&b).is_ok();
            let b24 = rebuy_bitrix24::events::parse(&b, Some("application/x-www-form-urlencoded"))
                .is_ok();
            let mut worker_ok = false;
            for crm in ["amocrm", "bitrix24"] {
                let event = crate::inbox::InboxEvent {
                    seq: 0,
                    crm: crm.into(),
                    received_at: jiff::Timestamp::UNIX_EPOCH,
                    content_type: String::new(),
                    body: b.clone(),
                    dedup_key: String::new(),
                };
                worker_ok |= super::worker::changes(&event).is_ok();
            }
            amo || b24 || worker_ok
        }));
        match result {
            Ok(true) => report.accepted += 1,
            Ok(false) => {}
            Err(_) => report.panics += 1,
        }
    }
    report
}

#[cfg(test)]
mod tests {
    #[test]
    fn generated_bodies_never_panic_a_parser() {
        // Silence the default panic printer for caught panics; restore it after.
        let report = super::run(100_000, 0x5eed);
        assert_eq!(report.panics, 0, "{report:?}");
        assert_eq!(report.bodies, 100_000);
        assert!(
            report.accepted > 1_000,
            "the generator reaches the parsers' accepting paths: {report:?}"
        );
    }
}
