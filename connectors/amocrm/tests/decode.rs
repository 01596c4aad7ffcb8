//! Decoding and mapping of amoCRM bodies written from the API documentation's examples.
use rebuy_amocrm::{map, wire};
use rebuy_core::{ConnectorError, ContactId, Currency, DealState, EntityKind, StageKind};
use rust_decimal::Decimal;

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn leads_page() {
    let page: wire::ListPage<wire::Leads> = wire::decode(&fixture("leads_page.json")).unwrap();
    assert_eq!(page.page, Some(1));
    assert!(page.links.next.is_some());
    let rub = Currency::new("RUB");
    let deals: Vec<_> = page
        .embedded
        .leads
        .into_iter()
        .map(|l| map::deal(l, &rub))
        .collect();
    assert_eq!(deals.len(), 2);
    let open = &deals[0];
    assert_eq!(open.state, DealState::Open);
    assert_eq!(open.amount.as_ref().unwrap().amount, Decimal::from(123));
    assert_eq!(open.main_contact_id, Some(ContactId(42015703)));
    assert_eq!(open.closed_at, None);
    assert!(open.custom_fields.is_empty());
    let won = &deals[1];
    assert_eq!(won.state, DealState::Won);
    assert_eq!(won.main_contact_id, Some(ContactId(2)));
    assert_eq!(won.company_id.map(|c| c.0), Some(77));
    assert_eq!(won.closed_at.map(|t| t.as_second()), Some(1632916300));
    assert_eq!(won.custom_fields[1].values, ["true"]);
    assert_eq!(won.products.len(), 1);
    assert_eq!(won.products[0].quantity, Decimal::from(2));
}

#[test]
fn contacts_page_without_next_link() {
    let page: wire::ListPage<wire::Contacts> =
        wire::decode(&fixture("contacts_page.json")).unwrap();
    assert!(page.links.next.is_none());
    let contacts: Vec<_> = page
        .embedded
        .contacts
        .into_iter()
        .map(map::contact)
        .collect();
    let c = &contacts[0];
    assert_eq!(c.name, "Иван Петров");
    let e164: Vec<_> = c.phones.iter().map(|p| p.e164.as_deref()).collect();
    assert_eq!(e164, [Some("+79123456789"), Some("+79120001122")]);
    assert_eq!(c.phones[0].raw, "8 (912) 345-67-89");
    assert_eq!(c.emails, ["ivan.petrov@mail.ru"]);
    assert_eq!(c.company_id.map(|c| c.0), Some(11));
    assert_eq!(c.responsible_user_id.map(|u| u.0), Some(504141));
    assert_eq!(contacts[1].responsible_user_id, None, "user 0 is nobody");
    assert!(contacts[1].phones.is_empty());
}

#[test]
fn pipelines_with_system_statuses() {
    let page: wire::ListPage<wire::Pipelines> = wire::decode(&fixture("pipelines.json")).unwrap();
    let p = map::pipeline(page.embedded.pipelines.into_iter().next().unwrap());
    assert!(p.is_main);
    let kinds: Vec<_> = p.stages.iter().map(|s| (s.id.0.as_str(), s.kind)).collect();
    assert_eq!(kinds[0], ("32392156", StageKind::Open), "sorted by sort");
    assert!(kinds.contains(&("142", StageKind::Won)));
    assert!(kinds.contains(&("143", StageKind::Lost)));
}

#[test]
fn events_become_deletions() {
    let page: wire::ListPage<wire::Events> = wire::decode(&fixture("events_page.json")).unwrap();
    let dels: Vec<_> = page
        .embedded
        .events
        .into_iter()
        .filter_map(map::deletion)
        .collect();
    assert_eq!(dels.len(), 2);
    assert_eq!((dels[0].entity, dels[0].id), (EntityKind::Deals, 26050087));
    assert_eq!((dels[1].entity, dels[1].id), (EntityKind::Contacts, 5));
    assert_eq!(dels[0].at.map(|t| t.as_second()), Some(1573556406));
}

#[test]
fn account_and_users() {
    let a = map::account(wire::decode(&fixture("account.json")).unwrap());
    assert_eq!(a.currency, Currency::new("RUB"));
    assert_eq!(a.domain, "example");
    assert_eq!(a.time_zone.as_deref(), Some("Europe/Moscow"));
    assert_eq!(a.customers_mode.as_deref(), Some("disabled"));
    let page: wire::ListPage<wire::Users> = wire::decode(&fixture("users_page.json")).unwrap();
    let users: Vec<_> = page.embedded.users.into_iter().map(map::user).collect();
    assert_eq!(users[0].email.as_deref(), Some("manager@example.com"));
    assert!(users[0].active);
    assert!(!users[1].active);
}

#[test]
fn error_bodies() {
    let p: wire::Problem = wire::decode(&fixture("error_401.json")).unwrap();
    assert_eq!(p.status, Some(401));
    assert_eq!(p.message(), "Неверный логин или пароль");
    let p: wire::Problem = wire::decode(&fixture("token_revoked.json")).unwrap();
    assert_eq!(p.message(), "Token has been revoked");
    let p: wire::Problem = wire::decode(&fixture("validation_400.json")).unwrap();
    assert_eq!(p.validation_errors.len(), 1);
    assert_eq!(p.validation_errors[0].request_id.0, "0");
    assert_eq!(
        p.validation_errors[0].errors[0].path.as_deref(),
        Some("custom_fields_values.0.field_id")
    );
}

#[test]
fn invalid_values_name_their_path() {
    let mut v: serde_json::Value = serde_json::from_slice(&fixture("leads_page.json")).unwrap();
    v["_embedded"]["leads"][1]["created_at"] = serde_json::json!("yesterday");
    let err =
        wire::decode::<wire::ListPage<wire::Leads>>(&serde_json::to_vec(&v).unwrap()).unwrap_err();
    match err {
        ConnectorError::Invalid { path, .. } => assert_eq!(path, "_embedded.leads[1].created_at"),
        other => panic!("{other:?}"),
    }
    let mut v: serde_json::Value = serde_json::from_slice(&fixture("contacts_page.json")).unwrap();
    v["_embedded"]["contacts"][0]["custom_fields_values"][0]["values"] =
        serde_json::json!("not a list");
    let err = wire::decode::<wire::ListPage<wire::Contacts>>(&serde_json::to_vec(&v).unwrap())
        .unwrap_err();
    assert!(
        matches!(&err, ConnectorError::Invalid { path, .. } if path == "_embedded.contacts[0].custom_fields_values[0].values"),
        "{err:?}"
    );
}

#[test]
fn truncated_body_is_transient() {
    let body = fixture("leads_page.json");
    for cut in [1, body.len() / 3, body.len() - 2] {
        let err = wire::decode::<wire::ListPage<wire::Leads>>(&body[..cut]).unwrap_err();
        assert!(
            matches!(err, ConnectorError::Transient { .. }),
            "cut at {cut}: {err:?}"
        );
    }
}
