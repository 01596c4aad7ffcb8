//! Task texts: minijinja templates filled with the customer's data, Russian by default.
//!
//! Every rule may give its own `text`; otherwise the default of its kind is used. Templates are
//! compiled once when the playbooks are resolved (a syntax error is a [`super::Problem`] naming
//! the file and the rule) and rendered by the planner with a [`TaskContext`]. Undefined
//! variables are errors (strict mode), so a misspelt `{{ nmae }}` is caught by the check of
//! the playbook rather than sent to a manager as an empty string.
//!
//! Variables: `name`, `purchases`, `deals`, `last_purchase`, `first_purchase`, `revenue`,
//! `segment` (Russian label), `segment_code`, `abc`, `xyz`, `next_purchase`, `days_left`,
//! `goal`, `offer`, `products`, `manager`, `step`, `playbook`, `rule`.
//!
//! Filters: `plural(one, few, many)` puts a count with the Russian word form that agrees with
//! it: `{{ purchases | plural("покупка", "покупки", "покупок") }}` gives "1 покупка",
//! "2 покупки", "5 покупок", "11 покупок", "21 покупка" ([`ru_plural`]).
use minijinja::{Environment, UndefinedBehavior};
use serde::Serialize;

/// The repeat-lead task.
pub const REPEAT_LEAD: &str = "Повторная заявка от клиента {{ name }}: {{ purchases | plural(\"покупка\", \"покупки\", \"покупок\") }}, последняя {{ last_purchase }}, выручка {{ revenue }} ₽, сегмент {{ segment }}, следующая покупка ожидается {{ next_purchase }}";
/// A touch after a purchase.
pub const AFTER_PURCHASE: &str = "{{ goal }}: {{ name }}. Покупка {{ last_purchase }}{% if products %} ({{ products }}){% endif %}. Всего {{ purchases | plural(\"покупка\", \"покупки\", \"покупок\") }}, выручка {{ revenue }} ₽, сегмент {{ segment }}.";
/// A reminder before the next purchase.
pub const BEFORE_NEXT: &str = "{{ goal }}: {{ name }}. Следующая покупка ожидается {{ next_purchase }}; последняя {{ last_purchase }}{% if products %} ({{ products }}){% endif %}. Всего {{ purchases | plural(\"покупка\", \"покупки\", \"покупок\") }}, выручка {{ revenue }} ₽.";
/// A seasonal or holiday touch.
pub const SEASONAL: &str = "{{ goal }}: {{ name }}. Последняя покупка {{ last_purchase }}, всего {{ purchases | plural(\"покупка\", \"покупки\", \"покупок\") }}, сегмент {{ segment }}.";
/// A product chain touch.
pub const PRODUCT_CHAIN: &str =
    "{{ goal }}: {{ name }} купил(а) {{ products }} {{ last_purchase }}. Предложить: {{ offer }}.";
/// A reactivation step.
pub const REACTIVATION: &str = "{{ goal }} (шаг {{ step }}): {{ name }}. Последняя покупка {{ last_purchase }}, всего {{ purchases | plural(\"покупка\", \"покупки\", \"покупок\") }}, выручка {{ revenue }} ₽. Мягкое касание, без давления.";
/// A reward.
pub const REWARD: &str = "{{ goal }}: {{ name }}. Всего {{ purchases | plural(\"покупка\", \"покупки\", \"покупок\") }}, выручка {{ revenue }} ₽, сегмент {{ segment }}.";

/// Heads the goals of the touches merged into a task (one touch per customer a day).
pub const ALSO_DISCUSS: &str = "Заодно обсудить:";
/// Heads the other open leads of a customer in its one repeat-lead task.
pub const OTHER_LEADS: &str = "Другие заявки клиента:";
/// The goal of a repeat-lead task, when it is listed in another task.
pub const REPEAT_GOAL: &str = "Повторная заявка клиента";

/// What a template sees.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TaskContext<'a> {
    /// Customer name.
    pub name: &'a str,
    /// Purchase days.
    pub purchases: u32,
    /// Won deals.
    pub deals: u32,
    /// Last purchase, `DD.MM.YYYY`.
    pub last_purchase: String,
    /// First purchase, `DD.MM.YYYY`.
    pub first_purchase: String,
    /// Revenue with thin-space thousands (`125 400`).
    pub revenue: String,
    /// RFM segment, Russian.
    pub segment: &'static str,
    /// RFM segment code (`at_risk`).
    pub segment_code: &'static str,
    /// ABC class.
    pub abc: &'static str,
    /// XYZ class.
    pub xyz: &'static str,
    /// Expected next purchase, `DD.MM.YYYY`, or "не определена".
    pub next_purchase: String,
    /// Days from the plan date to the next purchase.
    pub days_left: Option<i64>,
    /// The rule's goal.
    pub goal: &'a str,
    /// Product chain: what to offer.
    pub offer: &'a str,
    /// Products of the purchase, comma-separated.
    pub products: String,
    /// The responsible manager's name.
    pub manager: &'a str,
    /// Reactivation step number (1-based).
    pub step: u32,
    /// Playbook name.
    pub playbook: &'a str,
    /// Rule id.
    pub rule: &'a str,
}

/// Compiled templates by name.
pub struct Templates {
    env: Environment<'static>,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Templates").finish_non_exhaustive()
    }
}

impl Default for Templates {
    fn default() -> Self {
        Self::new()
    }
}

impl Templates {
    /// An empty set (strict undefined handling).
    pub fn new() -> Self {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.add_filter("plural", |n: i64, one: &str, few: &str, many: &str| {
            ru_plural(n, [one, few, many])
        });
        Self { env }
    }

    /// Compiles `source` under `name`; the error is minijinja's, with line information.
    pub fn add(&mut self, name: &str, source: &str) -> Result<(), String> {
        self.env
            .add_template_owned(name.to_owned(), source.to_owned())
            .map_err(|e| format!("{e:#}"))?;
        // Render once with sample data so undefined variables are caught at load time.
        self.render(name, &TaskContext::sample())
            .map(|_| ())
            .map_err(|e| format!("template does not render: {e}"))
    }

    /// Renders template `name`.
    pub fn render(&self, name: &str, ctx: &TaskContext<'_>) -> Result<String, String> {
        let t = self.env.get_template(name).map_err(|e| format!("{e:#}"))?;
        t.render(minijinja::value::Serde(ctx))
            .map_err(|e| format!("{e:#}"))
    }
}

impl TaskContext<'_> {
    /// Sample data for the load-time check.
    pub fn sample() -> TaskContext<'static> {
        TaskContext {
            name: "Иван Петров",
            purchases: 3,
            deals: 3,
            last_purchase: "01.03.2026".into(),
            first_purchase: "01.03.2025".into(),
            revenue: "12 500".into(),
            segment: "лояльные",
            segment_code: "loyal",
            abc: "A",
            xyz: "X",
            next_purchase: "01.04.2026".into(),
            days_left: Some(10),
            goal: "Звонок",
            offer: "кирпич",
            products: "Вода 19 л".into(),
            manager: "Мария",
            step: 1,
            playbook: "sample",
            rule: "sample",
        }
    }
}

/// Which Russian form agrees with the count `n`: 0 "one" (1, 21, 101, but not 11), 1 "few"
/// (2-4, 22-24, but not 12-14), 2 "many" (0, 5-20, 25-30, 111...).
pub fn ru_plural_form(n: i64) -> usize {
    let n = n.unsigned_abs();
    let (m10, m100) = (n % 10, n % 100);
    if m10 == 1 && m100 != 11 {
        0
    } else if (2..=4).contains(&m10) && !(12..=14).contains(&m100) {
        1
    } else {
        2
    }
}

/// The count and the form of the word that agrees with it: `ru_plural(21, ["покупка",
/// "покупки", "покупок"])` is "21 покупка".
pub fn ru_plural(n: i64, forms: [&str; 3]) -> String {
    format!("{n} {}", forms[ru_plural_form(n)])
}

/// `DD.MM.YYYY`.
pub fn ru_date(d: jiff::civil::Date) -> String {
    format!("{:02}.{:02}.{:04}", d.day(), d.month(), d.year())
}

/// Whole currency units with spaces between thousands, kopecks only when not zero
/// (`1 234 567`, `1 500,50`): the task texts of both CRMs.
pub fn ru_money(v: rust_decimal::Decimal) -> String {
    group_money(v, ' ', ',')
}

/// Money rounded to kopecks, thousands separated by `sep`, and two decimals after `mark` only
/// when they are not zero: the same amount prints the same whether the CRM sent `398576050`
/// (amoCRM) or `398576050.00` (Bitrix24).
pub fn group_money(v: rust_decimal::Decimal, sep: char, mark: char) -> String {
    let v = v.round_dp(2);
    let neg = v.is_sign_negative() && !v.is_zero();
    let whole = v.abs().trunc();
    let frac = (v.abs() - whole).round_dp(2);
    let digits = whole.to_string();
    let mut out = String::new();
    if neg {
        out.push('-');
    }
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(sep);
        }
        out.push(ch);
    }
    if !frac.is_zero() {
        let kop = (frac * rust_decimal::Decimal::ONE_HUNDRED).trunc();
        out.push(mark);
        out.push_str(&format!("{kop:0>2}"));
    }
    out
}

/// The Russian label of an RFM segment.
pub fn segment_ru(s: crate::analytics::RfmSegment) -> &'static str {
    use crate::analytics::RfmSegment::*;
    match s {
        Champions => "чемпионы",
        Loyal => "лояльные",
        PotentialLoyalists => "потенциально лояльные",
        New => "новые",
        Promising => "перспективные",
        NeedAttention => "требуют внимания",
        AboutToSleep => "засыпающие",
        AtRisk => "в зоне риска",
        CantLoseThem => "нельзя потерять",
        Hibernating => "спящие",
        Lost => "потерянные",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal_macros::dec;

    #[test]
    fn default_repeat_text_renders_in_russian() {
        let mut t = Templates::new();
        t.add("repeat", REPEAT_LEAD).unwrap();
        let s = t.render("repeat", &TaskContext::sample()).unwrap();
        assert_eq!(
            s,
            "Повторная заявка от клиента Иван Петров: 3 покупки, последняя 01.03.2026, выручка 12 500 ₽, сегмент лояльные, следующая покупка ожидается 01.04.2026"
        );
    }

    #[test]
    fn undefined_variables_and_syntax_errors_are_refused() {
        let mut t = Templates::new();
        assert!(
            t.add("bad", "{{ nmae }}")
                .unwrap_err()
                .contains("undefined")
        );
        assert!(t.add("bad2", "{% if %}").is_err());
    }

    #[test]
    fn money_is_grouped() {
        assert_eq!(ru_money(dec!(1234567)), "1 234 567");
        assert_eq!(ru_money(dec!(999)), "999");
        assert_eq!(ru_money(dec!(1500.5)), "1 500,50");
        assert_eq!(ru_money(dec!(0)), "0");
        // Bitrix24 sends amounts with two decimals: the same text as amoCRM's whole numbers.
        assert_eq!(ru_money(dec!(398576050.00)), ru_money(dec!(398576050)));
        assert_eq!(ru_money(dec!(398576050.00)), "398 576 050");
        assert_eq!(ru_money(dec!(-1000.05)), "-1 000,05");
        assert_eq!(
            group_money(dec!(1234.5), '\u{202f}', '.'),
            "1\u{202f}234.50"
        );
    }

    #[test]
    fn russian_plural_forms_follow_the_last_two_digits() {
        let f = ["покупка", "покупки", "покупок"];
        for (n, want) in [
            (0, "0 покупок"),
            (1, "1 покупка"),
            (2, "2 покупки"),
            (4, "4 покупки"),
            (5, "5 покупок"),
            (11, "11 покупок"),
            (12, "12 покупок"),
            (14, "14 покупок"),
            (21, "21 покупка"),
            (22, "22 покупки"),
            (25, "25 покупок"),
            (44, "44 покупки"),
            (101, "101 покупка"),
            (111, "111 покупок"),
            (112, "112 покупок"),
            (1021, "1021 покупка"),
        ] {
            assert_eq!(ru_plural(n, f), want, "n = {n}");
        }
    }

    #[test]
    fn every_default_template_agrees_in_number() {
        let mut t = Templates::new();
        let all = [
            REPEAT_LEAD,
            AFTER_PURCHASE,
            BEFORE_NEXT,
            SEASONAL,
            PRODUCT_CHAIN,
            REACTIVATION,
            REWARD,
        ];
        for (i, src) in all.iter().enumerate() {
            t.add(&i.to_string(), src).unwrap();
        }
        for n in [1, 2, 5, 11, 21, 22, 25, 44] {
            let ctx = TaskContext {
                purchases: n,
                ..TaskContext::sample()
            };
            for i in 0..all.len() {
                let s = t.render(&i.to_string(), &ctx).unwrap();
                assert!(
                    !s.contains(&format!("{n} покупок")) || ru_plural_form(n.into()) == 2,
                    "{s}"
                );
                assert!(!s.contains("окупок:"), "a count after a label: {s}");
                if all[i].contains("purchases") {
                    assert!(
                        s.contains(&ru_plural(n.into(), ["покупка", "покупки", "покупок"])),
                        "{s}"
                    );
                }
            }
        }
    }
}
