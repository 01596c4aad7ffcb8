//! Records to JSON, shaped like the amoCRM API v4 examples (HAL: `_links`, `_embedded`).
//!
//! Built from the emulator's own records, never from the client's wire types, so a misreading
//! of the API cannot pass on both sides. Most shapes use `serde_json::json!`; the three hot
//! list entities (leads, contacts, companies) serialize borrowed structs of this module
//! directly, which is several times faster than building `Value` trees (the emulator backs
//! throughput benchmarks).
use super::state::*;
use serde::Serialize;
use serde_json::{Value, json};

/// `{"self":{"href": base + path}}`.
pub(crate) fn self_link(base: &str, path: &str) -> Value {
    json!({"self": {"href": format!("{base}{path}")}})
}

/// `{"self": {"href": ...}}` as a struct (the hot list paths avoid building `Value`s).
#[derive(Serialize)]
pub(crate) struct Links {
    #[serde(rename = "self")]
    this: Href,
}

#[derive(Serialize)]
struct Href {
    href: String,
}

fn links(base: &str, path: std::fmt::Arguments<'_>) -> Links {
    Links {
        this: Href {
            href: format!("{base}{path}"),
        },
    }
}

/// `{"id": .., "_links": {"self": ..}}`.
#[derive(Serialize)]
pub(crate) struct IdLink {
    id: u64,
    _links: Links,
}

#[derive(Serialize)]
struct TagOut<'a> {
    id: u64,
    name: &'a str,
    color: Option<&'a str>,
}

fn tags(tags: &[AmoTag]) -> Vec<TagOut<'_>> {
    tags.iter()
        .map(|t| TagOut {
            id: t.id,
            name: &t.name,
            color: None,
        })
        .collect()
}

#[derive(Serialize)]
struct ValueOut<'a> {
    value: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    enum_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    enum_code: Option<&'a str>,
}

#[derive(Serialize)]
struct FieldOut<'a> {
    field_id: u64,
    field_name: &'a str,
    field_code: Option<&'a str>,
    field_type: &'a str,
    values: Vec<ValueOut<'a>>,
}

/// `custom_fields_values`: `null` when empty.
fn custom_fields(cf: &[AmoFieldValue]) -> Option<Vec<FieldOut<'_>>> {
    if cf.is_empty() {
        return None;
    }
    Some(
        cf.iter()
            .map(|f| FieldOut {
                field_id: f.field_id,
                field_name: &f.field_name,
                field_code: f.field_code.as_deref(),
                field_type: &f.field_type,
                values: f
                    .values
                    .iter()
                    .map(|v| ValueOut {
                        value: &v.value,
                        enum_id: v.enum_id,
                        enum_code: v.enum_code.as_deref(),
                    })
                    .collect(),
            })
            .collect(),
    )
}

/// Which `with=` extras to embed.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct With {
    pub contacts: bool,
    pub leads: bool,
    pub catalog_elements: bool,
    pub customers: bool,
}

impl With {
    pub fn from(set: &std::collections::HashSet<String>) -> Self {
        Self {
            contacts: set.contains("contacts"),
            leads: set.contains("leads"),
            catalog_elements: set.contains("catalog_elements"),
            customers: set.contains("customers"),
        }
    }
}

#[derive(Serialize)]
pub(crate) struct LeadContactOut {
    id: u64,
    is_main: bool,
    _links: Links,
}

#[derive(Serialize)]
pub(crate) struct CatalogLinkOut {
    id: u64,
    metadata: CatalogMeta,
}

#[derive(Serialize)]
struct CatalogMeta {
    quantity: u32,
    catalog_id: u64,
    price_id: u64,
}

#[derive(Serialize)]
pub(crate) struct LeadEmbedded<'a> {
    tags: Vec<TagOut<'a>>,
    companies: Vec<IdLink>,
    #[serde(skip_serializing_if = "Option::is_none")]
    contacts: Option<Vec<LeadContactOut>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    catalog_elements: Option<Vec<CatalogLinkOut>>,
}

/// A lead as API v4 shows it.
#[derive(Serialize)]
pub(crate) struct LeadOut<'a> {
    id: u64,
    name: &'a str,
    price: i64,
    responsible_user_id: u64,
    group_id: u64,
    status_id: u64,
    pipeline_id: u64,
    loss_reason_id: Option<u64>,
    created_by: u64,
    updated_by: u64,
    created_at: i64,
    updated_at: i64,
    closed_at: Option<i64>,
    closest_task_at: Option<i64>,
    is_deleted: bool,
    custom_fields_values: Option<Vec<FieldOut<'a>>>,
    score: Option<i64>,
    account_id: u64,
    labor_cost: Option<i64>,
    _links: Links,
    _embedded: LeadEmbedded<'a>,
}

fn company_links(base: &str, company_id: Option<u64>) -> Vec<IdLink> {
    company_id
        .iter()
        .map(|&id| IdLink {
            id,
            _links: links(base, format_args!("/api/v4/companies/{id}")),
        })
        .collect()
}

pub(crate) fn lead<'a>(d: &AmoData, l: &'a AmoLead, base: &str, with: With) -> LeadOut<'a> {
    LeadOut {
        id: l.id,
        name: &l.name,
        price: l.price,
        responsible_user_id: l.responsible_user_id,
        group_id: 0,
        status_id: l.status_id,
        pipeline_id: l.pipeline_id,
        loss_reason_id: None,
        created_by: l.created_by,
        updated_by: l.updated_by,
        created_at: l.created_at,
        updated_at: l.updated_at,
        closed_at: l.closed_at,
        closest_task_at: None,
        is_deleted: false,
        custom_fields_values: custom_fields(&l.custom_fields),
        score: None,
        account_id: d.account.id,
        labor_cost: None,
        _links: links(base, format_args!("/api/v4/leads/{}", l.id)),
        _embedded: LeadEmbedded {
            tags: tags(&l.tags),
            companies: company_links(base, l.company_id),
            contacts: with.contacts.then(|| {
                l.contacts
                    .iter()
                    .map(|c| LeadContactOut {
                        id: c.id,
                        is_main: c.is_main,
                        _links: links(base, format_args!("/api/v4/contacts/{}", c.id)),
                    })
                    .collect()
            }),
            catalog_elements: with.catalog_elements.then(|| {
                l.products
                    .iter()
                    .map(|p| CatalogLinkOut {
                        id: p.element_id,
                        metadata: CatalogMeta {
                            quantity: p.quantity,
                            catalog_id: d.catalog.id,
                            price_id: field_ids::CATALOG_PRICE,
                        },
                    })
                    .collect()
            }),
        },
    }
}

#[derive(Serialize)]
pub(crate) struct ContactEmbedded<'a> {
    tags: Vec<TagOut<'a>>,
    companies: Vec<IdLink>,
    #[serde(skip_serializing_if = "Option::is_none")]
    leads: Option<Vec<IdLink>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    customers: Option<Vec<IdLink>>,
}

/// A contact as API v4 shows it.
#[derive(Serialize)]
pub(crate) struct ContactOut<'a> {
    id: u64,
    name: &'a str,
    first_name: &'a str,
    last_name: &'a str,
    responsible_user_id: u64,
    group_id: u64,
    created_by: u64,
    updated_by: u64,
    created_at: i64,
    updated_at: i64,
    closest_task_at: Option<i64>,
    is_deleted: bool,
    is_unsorted: bool,
    custom_fields_values: Option<Vec<FieldOut<'a>>>,
    account_id: u64,
    _links: Links,
    _embedded: ContactEmbedded<'a>,
}

pub(crate) fn contact<'a>(
    d: &AmoData,
    c: &'a AmoContact,
    base: &str,
    with: With,
) -> ContactOut<'a> {
    ContactOut {
        id: c.id,
        name: &c.name,
        first_name: &c.first_name,
        last_name: &c.last_name,
        responsible_user_id: c.responsible_user_id,
        group_id: 0,
        created_by: c.created_by,
        updated_by: c.updated_by,
        created_at: c.created_at,
        updated_at: c.updated_at,
        closest_task_at: None,
        is_deleted: false,
        is_unsorted: false,
        custom_fields_values: custom_fields(&c.custom_fields),
        account_id: d.account.id,
        _links: links(base, format_args!("/api/v4/contacts/{}", c.id)),
        _embedded: ContactEmbedded {
            tags: tags(&c.tags),
            companies: company_links(base, c.company_id),
            leads: with.leads.then(|| {
                d.leads_of_contact(c.id)
                    .iter()
                    .map(|&id| IdLink {
                        id,
                        _links: links(base, format_args!("/api/v4/leads/{id}")),
                    })
                    .collect()
            }),
            customers: with.customers.then(|| {
                d.customers
                    .values()
                    .filter(|x| x.contacts.iter().any(|l| l.id == c.id))
                    .map(|x| IdLink {
                        id: x.id,
                        _links: links(base, format_args!("/api/v4/customers/{}", x.id)),
                    })
                    .collect()
            }),
        },
    }
}

#[derive(Serialize)]
pub(crate) struct CompanyEmbedded<'a> {
    tags: Vec<TagOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    contacts: Option<Vec<IdLink>>,
}

/// A company as API v4 shows it.
#[derive(Serialize)]
pub(crate) struct CompanyOut<'a> {
    id: u64,
    name: &'a str,
    responsible_user_id: u64,
    group_id: u64,
    created_by: u64,
    updated_by: u64,
    created_at: i64,
    updated_at: i64,
    closest_task_at: Option<i64>,
    is_deleted: bool,
    custom_fields_values: Option<Vec<FieldOut<'a>>>,
    account_id: u64,
    _links: Links,
    _embedded: CompanyEmbedded<'a>,
}

pub(crate) fn company<'a>(
    d: &AmoData,
    c: &'a AmoCompany,
    base: &str,
    with: With,
) -> CompanyOut<'a> {
    CompanyOut {
        id: c.id,
        name: &c.name,
        responsible_user_id: c.responsible_user_id,
        group_id: 0,
        created_by: c.created_by,
        updated_by: c.updated_by,
        created_at: c.created_at,
        updated_at: c.updated_at,
        closest_task_at: None,
        is_deleted: false,
        custom_fields_values: custom_fields(&c.custom_fields),
        account_id: d.account.id,
        _links: links(base, format_args!("/api/v4/companies/{}", c.id)),
        _embedded: CompanyEmbedded {
            tags: tags(&c.tags),
            contacts: with.contacts.then(|| {
                d.contacts_of_company(c.id)
                    .iter()
                    .map(|&id| IdLink {
                        id,
                        _links: links(base, format_args!("/api/v4/contacts/{id}")),
                    })
                    .collect()
            }),
        },
    }
}

pub(crate) fn user(u: &AmoUser, base: &str) -> Value {
    let full = json!({"view": "A", "edit": "A", "add": "A", "delete": "A", "export": "A"});
    json!({
        "id": u.id,
        "name": u.name,
        "email": u.email,
        "lang": "ru",
        "rights": {
            "leads": full,
            "contacts": full,
            "companies": full,
            "tasks": {"edit": "A", "delete": "A"},
            "mail_access": true,
            "catalog_access": true,
            "files_access": true,
            "status_rights": [],
            "catalog_rights": null,
            "custom_fields_rights": null,
            "oper_day_reports_view_access": false,
            "oper_day_user_tracking": false,
            "is_admin": u.is_admin,
            "is_free": false,
            "is_active": u.is_active,
            "group_id": null,
            "role_id": null,
        },
        "_links": self_link(base, &format!("/api/v4/users/{}", u.id)),
    })
}

pub(crate) fn status(d: &AmoData, s: &AmoStatus, base: &str) -> Value {
    json!({
        "id": s.id,
        "name": s.name,
        "sort": s.sort,
        "is_editable": s.is_editable,
        "pipeline_id": s.pipeline_id,
        "color": s.color,
        "type": s.status_type,
        "account_id": d.account.id,
        "_links": self_link(base, &format!("/api/v4/leads/pipelines/{}/statuses/{}", s.pipeline_id, s.id)),
    })
}

pub(crate) fn pipeline(d: &AmoData, p: &AmoPipeline, base: &str) -> Value {
    json!({
        "id": p.id,
        "name": p.name,
        "sort": p.sort,
        "is_main": p.is_main,
        "is_unsorted_on": true,
        "is_archive": p.is_archive,
        "account_id": d.account.id,
        "_links": self_link(base, &format!("/api/v4/leads/pipelines/{}", p.id)),
        "_embedded": {"statuses": p.statuses.iter().map(|s| status(d, s, base)).collect::<Vec<_>>()},
    })
}

pub(crate) fn catalog_element(d: &AmoData, e: &AmoCatalogElement, base: &str) -> Value {
    let cf = [
        (
            field_ids::CATALOG_SKU,
            "Артикул",
            "SKU",
            "text",
            json!(e.sku),
        ),
        (
            field_ids::CATALOG_PRICE,
            "Цена",
            "PRICE",
            "price",
            json!(e.price),
        ),
        (
            field_ids::CATALOG_UNIT,
            "Единица измерения",
            "UNIT",
            "text",
            json!(e.unit),
        ),
    ];
    json!({
        "id": e.id,
        "name": e.name,
        "created_by": d.account.current_user_id,
        "updated_by": d.account.current_user_id,
        "created_at": e.created_at,
        "updated_at": e.updated_at,
        "is_deleted": false,
        "custom_fields_values": cf.iter().map(|(id, name, code, ty, v)| json!({
            "field_id": id, "field_name": name, "field_code": code, "field_type": ty, "values": [{"value": v}]
        })).collect::<Vec<_>>(),
        "catalog_id": d.catalog.id,
        "account_id": d.account.id,
        "_links": self_link(base, &format!("/api/v4/catalogs/{}/elements/{}", d.catalog.id, e.id)),
    })
}

pub(crate) fn field_def(d: &AmoData, entity: &str, f: &AmoFieldDef, base: &str) -> Value {
    let enums = if f.enums.is_empty() {
        Value::Null
    } else {
        Value::Array(
            f.enums
                .iter()
                .enumerate()
                .map(|(i, e)| json!({"id": e.id, "value": e.value, "sort": (i as i64 + 1) * 2}))
                .collect(),
        )
    };
    json!({
        "id": f.id,
        "name": f.name,
        "type": f.field_type,
        "account_id": d.account.id,
        "code": f.code,
        "sort": f.sort,
        "is_api_only": false,
        "enums": enums,
        "group_id": null,
        "required_statuses": [],
        "is_deletable": f.code.is_none(),
        "is_predefined": f.code.is_some(),
        "entity_type": entity,
        "remind": null,
        "_links": self_link(base, &format!("/api/v4/{entity}/custom_fields/{}", f.id)),
    })
}

pub(crate) fn task(d: &AmoData, t: &AmoTask, base: &str) -> Value {
    json!({
        "id": t.id,
        "created_by": t.created_by,
        "updated_by": t.updated_by,
        "created_at": t.created_at,
        "updated_at": t.updated_at,
        "responsible_user_id": t.responsible_user_id,
        "group_id": 0,
        "entity_id": t.entity_id,
        "entity_type": t.entity_type,
        "duration": t.duration,
        "is_completed": t.is_completed,
        "task_type_id": t.task_type_id,
        "text": t.text,
        "result": match &t.result_text { Some(text) => json!({"text": text}), None => json!([]) },
        "complete_till": t.complete_till,
        "account_id": d.account.id,
        "_links": self_link(base, &format!("/api/v4/tasks/{}", t.id)),
    })
}

pub(crate) fn event(d: &AmoData, e: &AmoEvent, base: &str) -> Value {
    let plural = match e.entity_type.as_str() {
        "lead" => "leads",
        "contact" => "contacts",
        "company" => "companies",
        "task" => "tasks",
        other => other,
    };
    json!({
        "id": e.id,
        "type": e.event_type,
        "entity_id": e.entity_id,
        "entity_type": e.entity_type,
        "created_by": e.created_by,
        "created_at": e.created_at,
        "value_after": e.value_after,
        "value_before": e.value_before,
        "account_id": d.account.id,
        "_links": self_link(base, &format!("/api/v4/events/{}", e.id)),
        "_embedded": {"entity": {"id": e.entity_id, "_links": self_link(base, &format!("/api/v4/{plural}/{}", e.entity_id))}},
    })
}

/// A customer status as `GET /api/v4/customers/statuses` shows it.
pub(crate) fn customer_status(d: &AmoData, s: &AmoCustomerStatus, base: &str) -> Value {
    json!({
        "id": s.id,
        "name": s.name,
        "sort": s.sort,
        "is_default": s.is_default,
        "color": s.color,
        "type": s.status_type,
        "conditions": [],
        "account_id": d.account.id,
        "_links": self_link(base, &format!("/api/v4/customers/statuses/{}", s.id)),
    })
}

/// A customer as API v4 shows it; `with_contacts` embeds its contacts.
pub(crate) fn customer(d: &AmoData, c: &AmoCustomer, base: &str, with_contacts: bool) -> Value {
    let txs = d.transactions.get(&c.id).map_or(&[][..], Vec::as_slice);
    let (ltv, purchases) = (txs.iter().map(|t| t.price).sum::<i64>(), txs.len() as i64);
    let mut embedded = json!({
        "tags": tags(&c.tags),
        "segments": [],
        "companies": company_links(base, c.company_id),
    });
    if with_contacts {
        embedded["contacts"] = Value::Array(
            c.contacts
                .iter()
                .map(|x| {
                    json!({"id": x.id, "is_main": x.is_main,
                           "_links": self_link(base, &format!("/api/v4/contacts/{}", x.id))})
                })
                .collect(),
        );
    }
    json!({
        "id": c.id,
        "name": c.name,
        "next_price": c.next_price,
        "next_date": c.next_date,
        "responsible_user_id": c.responsible_user_id,
        "status_id": c.status_id,
        "periodicity": c.periodicity,
        "created_by": c.created_by,
        "updated_by": c.updated_by,
        "created_at": c.created_at,
        "updated_at": c.updated_at,
        "closest_task_at": null,
        "is_deleted": false,
        "custom_fields_values": custom_fields(&c.custom_fields),
        "ltv": ltv,
        "purchases_count": purchases,
        "average_check": if purchases > 0 { ltv / purchases } else { 0 },
        "account_id": d.account.id,
        "_links": self_link(base, &format!("/api/v4/customers/{}", c.id)),
        "_embedded": embedded,
    })
}

/// A customer's purchase as `/api/v4/customers/transactions` shows it.
pub(crate) fn transaction(d: &AmoData, t: &AmoTransaction, base: &str) -> Value {
    let elements: Vec<Value> = t
        .catalog_elements
        .iter()
        .map(|(id, q)| json!({"id": id, "metadata": {"catalog_id": d.catalog.id, "quantity": q}}))
        .collect();
    json!({
        "id": t.id,
        "price": t.price,
        "comment": t.comment,
        "completed_at": t.completed_at,
        "customer_id": t.customer_id,
        "created_by": t.created_by,
        "updated_by": t.created_by,
        "created_at": t.created_at,
        "updated_at": t.created_at,
        "is_deleted": false,
        "account_id": d.account.id,
        "_links": self_link(base, &format!("/api/v4/customers/transactions/{}", t.id)),
        "_embedded": {
            "customer": {"id": t.customer_id,
                "_links": self_link(base, &format!("/api/v4/customers/{}", t.customer_id))},
            "catalog_elements": elements,
        },
    })
}
