//! Wire records -> domain records.
//!
//! - names: `NAME SECOND_NAME LAST_NAME`, empty parts skipped;
//! - phones: every `PHONE` value parsed with [`Phone::parse`] (raw text kept); emails: every
//!   `EMAIL` value through [`normalize_email`] (invalid ones dropped here, kept in
//!   `custom_fields`);
//! - custom fields: `PHONE` and `EMAIL` (raw values), every `UF_*` value as text (lists keep
//!   their order; `null` and `false`-like empties give no values), and on deals
//!   `IS_RETURN_CUSTOMER` (`Y`/`N`), the "repeat deal" flag;
//! - links: `0` or `null` is no link (`COMPANY_ID: "0"`);
//! - deals: pipeline = `CATEGORY_ID`, stage = `STAGE_ID`, state from `STAGE_SEMANTIC_ID`
//!   (`S` won, `F` lost, else open: never from the stage's name), amount = `OPPORTUNITY` in
//!   `CURRENCY_ID` (the account currency when empty), `closed_at` = `CLOSEDATE` when
//!   `CLOSED = Y` (a date field: midnight in the portal's zone), contacts = the primary
//!   `CONTACT_ID` (listing) or `crm.deal.contact.items.get` (single deal);
//! - stages: `SEMANTICS` `S` -> won, `F` -> lost, else open.
use crate::wire;
use rebuy_core::phone::{Phone, normalize_email};
use rebuy_core::{
    CompanyId, Contact, ContactId, Currency, CustomFieldValue, Deal, DealId, DealState, Money,
    Pipeline, PipelineId, ProductRow, Stage, StageId, StageKind, User, UserId,
};
use serde_json::Value;
use std::collections::BTreeMap;

fn link(v: Option<u64>) -> Option<u64> {
    v.filter(|v| *v > 0)
}

fn uf_fields(rest: &BTreeMap<String, Value>, out: &mut Vec<CustomFieldValue>) {
    for (k, v) in rest.iter().filter(|(k, _)| k.starts_with("UF_")) {
        let values: Vec<String> = match v {
            Value::Null => Vec::new(),
            Value::Array(a) => a.iter().filter_map(scalar).collect(),
            other => scalar(other).into_iter().collect(),
        };
        out.push(CustomFieldValue {
            field_id: k.clone(),
            code: None,
            name: None,
            values,
        });
    }
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(if *b { "Y" } else { "N" }.into()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

fn multi_field(code: &str, items: &[wire::Multi]) -> Option<CustomFieldValue> {
    (!items.is_empty()).then(|| CustomFieldValue {
        field_id: code.into(),
        code: Some(code.into()),
        name: None,
        values: items.iter().map(|m| m.VALUE.clone()).collect(),
    })
}

fn full_name(parts: &[&str]) -> String {
    parts
        .iter()
        .map(|p| p.trim())
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A contact.
pub fn contact(c: wire::Contact) -> Contact {
    let mut custom = Vec::new();
    custom.extend(multi_field("PHONE", &c.PHONE));
    custom.extend(multi_field("EMAIL", &c.EMAIL));
    uf_fields(&c.rest, &mut custom);
    Contact {
        id: ContactId(c.ID),
        name: full_name(&[&c.NAME, &c.SECOND_NAME, &c.LAST_NAME]),
        phones: c
            .PHONE
            .iter()
            .filter(|m| !m.VALUE.trim().is_empty())
            .map(|m| Phone::parse(&m.VALUE))
            .collect(),
        emails: c
            .EMAIL
            .iter()
            .filter_map(|m| normalize_email(&m.VALUE))
            .collect(),
        company_id: link(c.COMPANY_ID).map(CompanyId),
        responsible_user_id: link(c.ASSIGNED_BY_ID).map(UserId),
        created_at: c.DATE_CREATE,
        updated_at: c.DATE_MODIFY,
        custom_fields: custom,
    }
}

/// A company.
pub fn company(c: wire::Company) -> rebuy_core::Company {
    let mut custom = Vec::new();
    custom.extend(multi_field("PHONE", &c.PHONE));
    custom.extend(multi_field("EMAIL", &c.EMAIL));
    uf_fields(&c.rest, &mut custom);
    rebuy_core::Company {
        id: CompanyId(c.ID),
        name: c.TITLE.clone(),
        phones: c
            .PHONE
            .iter()
            .filter(|m| !m.VALUE.trim().is_empty())
            .map(|m| Phone::parse(&m.VALUE))
            .collect(),
        emails: c
            .EMAIL
            .iter()
            .filter_map(|m| normalize_email(&m.VALUE))
            .collect(),
        responsible_user_id: link(c.ASSIGNED_BY_ID).map(UserId),
        created_at: c.DATE_CREATE,
        updated_at: c.DATE_MODIFY,
        custom_fields: custom,
    }
}

/// Open, won or lost from `STAGE_SEMANTIC_ID`.
pub fn deal_state(semantic: &str) -> DealState {
    match semantic {
        "S" => DealState::Won,
        "F" => DealState::Lost,
        _ => DealState::Open,
    }
}

/// A deal; `contacts` replaces the primary-only list when given; `products` are its rows.
pub fn deal(
    d: wire::Deal,
    account_currency: &Currency,
    contacts: Option<Vec<ContactId>>,
    products: Vec<ProductRow>,
) -> Deal {
    let mut custom = Vec::new();
    uf_fields(&d.rest, &mut custom);
    custom.push(CustomFieldValue {
        field_id: "IS_RETURN_CUSTOMER".into(),
        code: Some("IS_RETURN_CUSTOMER".into()),
        name: None,
        values: vec![if d.IS_RETURN_CUSTOMER { "Y" } else { "N" }.into()],
    });
    let currency = if d.CURRENCY_ID.trim().is_empty() {
        account_currency.clone()
    } else {
        Currency::new(&d.CURRENCY_ID)
    };
    let main = link(d.CONTACT_ID).map(ContactId);
    let state = deal_state(&d.STAGE_SEMANTIC_ID);
    Deal {
        id: DealId(d.ID),
        name: d.TITLE.clone(),
        pipeline_id: PipelineId(d.CATEGORY_ID.unwrap_or(0)),
        stage_id: StageId(d.STAGE_ID.clone()),
        state,
        amount: d.OPPORTUNITY.map(|a| Money::new(a, currency)),
        main_contact_id: main,
        contact_ids: contacts.unwrap_or_else(|| main.into_iter().collect()),
        company_id: link(d.COMPANY_ID).map(CompanyId),
        responsible_user_id: link(d.ASSIGNED_BY_ID).map(UserId),
        created_at: d.DATE_CREATE,
        updated_at: d.DATE_MODIFY,
        closed_at: if d.CLOSED || state != DealState::Open {
            d.CLOSEDATE
        } else {
            None
        },
        products,
        custom_fields: custom,
    }
}

/// A product row of `crm.deal.productrows.get`.
pub fn product_row(r: wire::ProductRow) -> ProductRow {
    ProductRow {
        product_id: link(r.PRODUCT_ID),
        name: r.PRODUCT_NAME,
        price: r.PRICE,
        quantity: r.QUANTITY,
    }
}

/// A product row of `crm.item.productrow.list`.
pub fn item_product_row(r: wire::ItemProductRow) -> ProductRow {
    ProductRow {
        product_id: link(r.product_id),
        name: r.product_name,
        price: r.price,
        quantity: r.quantity,
    }
}

/// A user.
pub fn user(u: wire::User) -> User {
    User {
        id: UserId(u.ID),
        name: full_name(&[&u.NAME, &u.LAST_NAME]),
        email: normalize_email(&u.EMAIL),
        active: u.ACTIVE,
    }
}

/// A funnel with its stages (sorted by `SORT`).
pub fn pipeline(c: wire::Category, statuses: Vec<wire::Status>) -> Pipeline {
    let mut stages: Vec<Stage> = statuses
        .into_iter()
        .map(|s| Stage {
            id: StageId(s.STATUS_ID),
            name: s.NAME,
            sort: s.SORT.unwrap_or(0),
            kind: match s.SEMANTICS.as_str() {
                "S" => StageKind::Won,
                "F" => StageKind::Lost,
                _ => StageKind::Open,
            },
        })
        .collect();
    stages.sort_by_key(|s| s.sort);
    Pipeline {
        id: PipelineId(c.id),
        name: c.name,
        is_main: c.is_default || c.id == 0,
        sort: c.sort.unwrap_or(0),
        stages,
    }
}
