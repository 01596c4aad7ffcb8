//! amoCRM wire structs -> rebuy's domain records.
//!
//! Every function consumes its wire value so strings move instead of being copied. Rules:
//! - custom fields are all kept as [`CustomFieldValue`] (text, in CRM order);
//! - phones are the values of the field with code `PHONE`, parsed with [`Phone::parse`] (the raw
//!   text is kept); emails are the values of `EMAIL`, lower-cased with [`normalize_email`] and
//!   dropped here when invalid (they stay in `custom_fields`);
//! - a user id of 0 means "nobody" and maps to `None`;
//! - lead money: `price_with_minor_units` (Kommo) wins over `price`; the currency is the
//!   account's; a `null` price is `None`;
//! - status 142 is won, 143 lost, anything else open (the same ids in every pipeline);
//! - the main contact is the one with `is_main`, else the first linked contact.
use crate::wire;
use rebuy_core::phone::{Phone, normalize_email};
use rebuy_core::{
    Account, Company, CompanyId, Contact, ContactId, Currency, CustomFieldValue, Deal, DealId,
    DealState, Deletion, EntityKind, Money, Pipeline, PipelineId, ProductRow, Stage, StageId,
    StageKind, User, UserId,
};
use rust_decimal::Decimal;

/// amoCRM's system status "won" (Успешно реализовано), shared by all pipelines.
pub const WON_STATUS: u64 = 142;
/// amoCRM's system status "lost" (Закрыто и не реализовано), shared by all pipelines.
pub const LOST_STATUS: u64 = 143;

fn user_id(id: Option<u64>) -> Option<UserId> {
    id.filter(|&v| v != 0).map(UserId)
}

/// Custom fields with the phones and emails found among them.
struct Fields {
    all: Vec<CustomFieldValue>,
    phones: Vec<Phone>,
    emails: Vec<String>,
}

fn fields(cfs: Option<Vec<wire::CustomField>>) -> Fields {
    let cfs = cfs.unwrap_or_default();
    let mut out = Fields {
        all: Vec::with_capacity(cfs.len()),
        phones: Vec::new(),
        emails: Vec::new(),
    };
    for cf in cfs {
        let values: Vec<String> = cf
            .values
            .unwrap_or_default()
            .into_iter()
            .map(|v| v.value.0)
            .collect();
        match cf.field_code.as_deref() {
            Some("PHONE") => out.phones.extend(
                values
                    .iter()
                    .filter(|v| !v.trim().is_empty())
                    .map(|v| Phone::parse(v)),
            ),
            Some("EMAIL") => out
                .emails
                .extend(values.iter().filter_map(|v| normalize_email(v))),
            _ => {}
        }
        out.all.push(CustomFieldValue {
            field_id: cf.field_id.to_string(),
            code: cf.field_code,
            name: cf.field_name,
            values,
        });
    }
    out
}

/// Maps a contact.
pub fn contact(c: wire::Contact) -> Contact {
    let f = fields(c.custom_fields_values);
    let name = match c.name {
        Some(n) if !n.is_empty() => n,
        _ => join_name(c.first_name, c.last_name),
    };
    Contact {
        id: ContactId(c.id),
        name,
        phones: f.phones,
        emails: f.emails,
        company_id: c.embedded.companies.first().map(|r| CompanyId(r.id)),
        responsible_user_id: user_id(c.responsible_user_id),
        created_at: c.created_at,
        updated_at: c.updated_at,
        custom_fields: f.all,
    }
}

fn join_name(first: Option<String>, last: Option<String>) -> String {
    match (first, last) {
        (Some(f), Some(l)) if !f.is_empty() && !l.is_empty() => format!("{f} {l}"),
        (Some(f), _) if !f.is_empty() => f,
        (_, Some(l)) => l,
        _ => String::new(),
    }
}

/// Maps a company.
pub fn company(c: wire::Company) -> Company {
    let f = fields(c.custom_fields_values);
    Company {
        id: CompanyId(c.id),
        name: c.name.unwrap_or_default(),
        phones: f.phones,
        emails: f.emails,
        responsible_user_id: user_id(c.responsible_user_id),
        created_at: c.created_at,
        updated_at: c.updated_at,
        custom_fields: f.all,
    }
}

/// The deal state of a status id.
pub fn deal_state(status_id: u64) -> DealState {
    match status_id {
        WON_STATUS => DealState::Won,
        LOST_STATUS => DealState::Lost,
        _ => DealState::Open,
    }
}

/// Maps a lead; `currency` is the account's.
pub fn deal(l: wire::Lead, currency: &Currency) -> Deal {
    let f = fields(l.custom_fields_values);
    let amount = l
        .price_with_minor_units
        .or(l.price)
        .map(|a| Money::new(a.0, currency.clone()));
    let contacts = &l.embedded.contacts;
    let main = contacts
        .iter()
        .find(|c| c.is_main == Some(true))
        .or(contacts.first())
        .map(|c| ContactId(c.id));
    let products = l
        .embedded
        .catalog_elements
        .into_iter()
        .map(|e| ProductRow {
            product_id: Some(e.id),
            name: e.name.unwrap_or_default(),
            price: e.metadata.price.map_or(Decimal::ZERO, |a| a.0),
            quantity: e.metadata.quantity.map_or(Decimal::ONE, |a| a.0),
        })
        .collect();
    Deal {
        id: DealId(l.id),
        name: l.name.unwrap_or_default(),
        pipeline_id: PipelineId(l.pipeline_id),
        stage_id: StageId(l.status_id.to_string()),
        state: deal_state(l.status_id),
        amount,
        main_contact_id: main,
        contact_ids: contacts.iter().map(|c| ContactId(c.id)).collect(),
        company_id: l.embedded.companies.first().map(|r| CompanyId(r.id)),
        responsible_user_id: user_id(l.responsible_user_id),
        created_at: l.created_at,
        updated_at: l.updated_at,
        closed_at: l.closed_at,
        products,
        custom_fields: f.all,
    }
}

/// Maps a user.
pub fn user(u: wire::User) -> User {
    User {
        id: UserId(u.id),
        name: u.name.unwrap_or_default(),
        email: u.email.as_deref().and_then(normalize_email),
        active: u.rights.is_active.unwrap_or(true),
    }
}

/// Maps a pipeline; stages come out in sort order.
pub fn pipeline(p: wire::Pipeline) -> Pipeline {
    let mut stages: Vec<Stage> = p
        .embedded
        .statuses
        .into_iter()
        .map(|s| Stage {
            id: StageId(s.id.to_string()),
            name: s.name.unwrap_or_default(),
            sort: s.sort,
            kind: match s.id {
                WON_STATUS => StageKind::Won,
                LOST_STATUS => StageKind::Lost,
                _ => StageKind::Open,
            },
        })
        .collect();
    stages.sort_by_key(|s| s.sort);
    Pipeline {
        id: PipelineId(p.id),
        name: p.name.unwrap_or_default(),
        is_main: p.is_main,
        sort: p.sort,
        stages,
    }
}

/// Maps the account. A missing currency defaults to `RUB`, amoCRM's home currency.
pub fn account(a: wire::Account) -> Account {
    let time_zone = a
        .datetime_settings
        .or(a.embedded.datetime_settings)
        .and_then(|d| d.timezone);
    Account {
        id: a.id,
        name: a.name.unwrap_or_default(),
        domain: a.subdomain.unwrap_or_default(),
        currency: Currency::new(
            a.currency
                .as_deref()
                .filter(|c| !c.trim().is_empty())
                .unwrap_or("RUB"),
        ),
        time_zone,
        customers_mode: a.customers_mode,
    }
}

/// Maps a `*_deleted` event; other events are `None`.
pub fn deletion(e: wire::Event) -> Option<Deletion> {
    let entity = match e.kind.as_str() {
        "lead_deleted" => EntityKind::Deals,
        "contact_deleted" => EntityKind::Contacts,
        "company_deleted" => EntityKind::Companies,
        _ => return None,
    };
    Some(Deletion {
        entity,
        id: e.entity_id,
        at: e.created_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lead_maps_money_state_and_contacts() {
        let l: wire::Lead = serde_json::from_str(
            r#"{"id":7,"name":"Deal","price":1500,"status_id":142,"pipeline_id":3,"responsible_user_id":0,
                "created_at":1700000000,"updated_at":1700000100,"closed_at":1700000100,"custom_fields_values":null,
                "_embedded":{"contacts":[{"id":5,"is_main":false},{"id":6,"is_main":true}],"companies":[{"id":9}]}}"#,
        )
        .unwrap();
        let d = deal(l, &Currency::new("rub"));
        assert_eq!(d.state, DealState::Won);
        assert_eq!(
            d.amount,
            Some(Money::new(Decimal::from(1500), Currency::new("RUB")))
        );
        assert_eq!(d.main_contact_id, Some(ContactId(6)));
        assert_eq!(d.contact_ids, [ContactId(5), ContactId(6)]);
        assert_eq!(d.company_id, Some(CompanyId(9)));
        assert_eq!(d.responsible_user_id, None);
        assert_eq!(d.stage_id.0, "142");
        assert!(d.closed_at.is_some());
    }

    #[test]
    fn minor_units_win() {
        let l: wire::Lead =
            serde_json::from_str(r#"{"id":1,"price":12,"price_with_minor_units":12.34}"#).unwrap();
        assert_eq!(
            deal(l, &Currency::new("USD")).amount.unwrap().amount,
            Decimal::new(1234, 2)
        );
    }

    #[test]
    fn contact_phones_and_emails() {
        let c: wire::Contact = serde_json::from_str(
            r#"{"id":1,"name":"","first_name":"Ivan","last_name":"Petrov","created_at":1,"updated_at":2,
                "custom_fields_values":[
                 {"field_id":3,"field_name":"Телефон","field_code":"PHONE","field_type":"multitext",
                  "values":[{"value":"8 (912) 345-67-89","enum_id":1,"enum_code":"WORK"},{"value":"call me"}]},
                 {"field_id":4,"field_code":"EMAIL","values":[{"value":" Ivan@Mail.RU "},{"value":"nope"}]},
                 {"field_id":5,"field_name":"Age","values":[{"value":42}]}]}"#,
        )
        .unwrap();
        let c = contact(c);
        assert_eq!(c.name, "Ivan Petrov");
        assert_eq!(c.phones.len(), 2);
        assert_eq!(c.phones[0].e164.as_deref(), Some("+79123456789"));
        assert_eq!(c.phones[1].e164, None);
        assert_eq!(c.emails, ["ivan@mail.ru"]);
        assert_eq!(c.custom_fields.len(), 3);
        assert_eq!(c.custom_fields[2].values, ["42"]);
    }
}
