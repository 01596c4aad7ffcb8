//! What integrators create besides leads and tasks: `POST /api/v4/contacts`,
//! `POST /api/v4/companies`, notes (`/api/v4/{entity}/notes`, `/api/v4/{entity}/{id}/notes`),
//! links (`/api/v4/{entity}/link`, `/api/v4/{entity}/{id}/link`, `/api/v4/{entity}/{id}/links`)
//! and tags (`/api/v4/{entity}/tags`).
//!
//! Faithful to `docs/amocrm.md` of this crate, §3.2 (batch writes), §4.2, §4.4, §4.5 and §4.8:
//! a batch with any invalid item is refused whole with `validation-errors`.
//!
//! # Choices where the doc is silent
//! - A note's `params` must be an object; `common` (and `service_message`, `sms_in`, `sms_out`)
//!   need a non-blank `params.text`; `call_in` / `call_out` need `params.phone` and a
//!   non-negative integer `params.duration`. Other documented types take any object.
//! - Linking a second company to a lead or a contact replaces the first (both hold one).
//! - `GET .../tags` lists the tags attached to any record of the entity plus those created for
//!   it through `POST .../tags`; a tag's `color` is `null` unless one was given.
use super::Inner;
use super::api::Ctx;
use super::error::{ApiError, hal, item_errors};
use super::state::*;
use super::writes::{
    EntityCreated, Errs, apply_cf, batch_response, get_str, get_u64, parse_batch, reject,
    request_id, resolve_tags, validate_all, validate_cf, validate_tags,
};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::Response;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::sync::Arc;

/// Entity types in API paths that hold notes, links and tags.
const ENTITIES: &[&str] = &["leads", "contacts", "companies", "customers"];

/// Note types the API documents (`docs/amocrm.md` §4.8).
pub const NOTE_TYPES: &[&str] = &[
    "common",
    "attachment",
    "call_in",
    "call_out",
    "amomail_message",
    "chat",
    "site_visit",
    "targeting_in",
    "targeting_out",
    "transaction",
    "service_message",
    "extended_service_message",
    "message_cashier",
    "invoice_paid",
    "geolocation",
    "sms_in",
    "sms_out",
    "zoom_meeting",
    "dropbox_attachment",
    "link_followed",
    "bill_paid",
    "ai_result",
];

/// The entity type of a request path (`/api/v4/{entity}/...`).
fn entity(ctx: &Ctx) -> Result<&'static str, ApiError> {
    let path_entity = ctx.path.split('/').nth(3).unwrap_or("");
    ENTITIES
        .iter()
        .copied()
        .find(|e| *e == path_entity)
        .ok_or(ApiError::NotFound)
}

fn exists(d: &AmoData, entity: &str, id: u64) -> bool {
    match entity {
        "leads" => d.leads.contains_key(&id),
        "contacts" => d.contacts.contains_key(&id),
        "companies" => d.companies.contains_key(&id),
        "customers" => d.customers.contains_key(&id),
        _ => false,
    }
}

fn singular(entity: &str) -> &'static str {
    match entity {
        "leads" => "lead",
        "contacts" => "contact",
        "companies" => "company",
        _ => "customer",
    }
}

fn parse_id(id: &str) -> Result<u64, ApiError> {
    id.parse().map_err(|_| ApiError::NotFound)
}

// ---------------------------------------------------------------------------------------------
// Contacts and companies

/// A validated new contact or company.
struct NewCard {
    request_id: String,
    name: Option<String>,
    first_name: Option<String>,
    last_name: Option<String>,
    responsible: Option<u64>,
    cf: Vec<super::writes::CfChange>,
    tags: Vec<super::writes::TagSpec>,
    company: Option<u64>,
}

/// Validates a new contact (`companies == false`) or company item.
fn validate_new_card(
    d: &AmoData,
    item: &Value,
    index: usize,
    companies: bool,
) -> Result<NewCard, Value> {
    let rid = request_id(item, index);
    let mut errs = Errs::default();
    if !item.is_object() {
        errs.invalid_type("", "object");
        return Err(item_errors(&rid, errs.0));
    }
    if item.get("id").is_some_and(|v| !v.is_null()) {
        errs.push(
            "NotSupported",
            "id",
            "A new entity cannot have an id; PATCH changes existing ones.",
        );
    }
    let name = get_str(item, "name", &mut errs);
    let (first_name, last_name) = if companies {
        (None, None)
    } else {
        (
            get_str(item, "first_name", &mut errs),
            get_str(item, "last_name", &mut errs),
        )
    };
    if companies && name.as_deref().is_none_or(|n| n.trim().is_empty()) {
        errs.blank("name");
    }
    let responsible = get_u64(item, "responsible_user_id", &mut errs);
    if let Some(r) = responsible
        && !d.users.contains_key(&r)
    {
        errs.choice("responsible_user_id");
    }
    let defs = if companies {
        &d.fields.companies
    } else {
        &d.fields.contacts
    };
    let cf = match item.get("custom_fields_values") {
        Some(v) => validate_cf(defs, v, &mut errs),
        None => vec![],
    };
    let emb = item.get("_embedded");
    let tags = validate_tags(d, emb, &mut errs).unwrap_or_default();
    let mut company = None;
    if !companies
        && let Some(arr) = emb
            .and_then(|e| e.get("companies"))
            .and_then(Value::as_array)
    {
        if arr.len() > 1 {
            errs.push(
                "TooMany",
                "_embedded.companies",
                "A contact belongs to at most one company.",
            );
        }
        if let Some(c) = arr.first() {
            match c.get("id").and_then(Value::as_u64) {
                Some(id) if d.companies.contains_key(&id) => company = Some(id),
                Some(_) => errs.push("NotFound", "_embedded.companies.0.id", "Entity not found."),
                None => errs.invalid_type("_embedded.companies.0.id", "int"),
            }
        }
    }
    if !errs.0.is_empty() {
        return Err(item_errors(&rid, errs.0));
    }
    Ok(NewCard {
        request_id: rid,
        name,
        first_name,
        last_name,
        responsible,
        cf,
        tags,
        company,
    })
}

/// Inserts a validated new contact; returns its id.
fn insert_contact(st: &Inner, d: &mut AmoData, ch: &NewCard, now: i64, by: u64) -> u64 {
    let id = d.new_id();
    let mut custom_fields = Vec::new();
    for c in &ch.cf {
        apply_cf(&mut custom_fields, c);
    }
    let tags = resolve_tags(d, &ch.tags);
    let first = ch.first_name.clone().unwrap_or_default();
    let last = ch.last_name.clone().unwrap_or_default();
    let name = ch
        .name
        .clone()
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| format!("{first} {last}").trim().to_owned());
    d.contacts.insert(
        id,
        AmoContact {
            id,
            name,
            first_name: first,
            last_name: last,
            responsible_user_id: ch.responsible.unwrap_or(by),
            created_by: by,
            updated_by: by,
            created_at: now,
            updated_at: now,
            custom_fields,
            company_id: ch.company,
            tags,
        },
    );
    d.idx.contact_updated.insert((now, id));
    if let Some(co) = ch.company {
        d.idx.company_contacts.entry(co).or_default().push(id);
    }
    d.changes.touched_contacts.insert(id);
    d.event(
        "contact_added",
        id,
        "contact",
        by,
        now,
        json!([]),
        json!([]),
    );
    st.record_writes(|w| {
        w.entities_created.push(EntityCreated {
            entity_type: "contacts".into(),
            id,
            request_id: ch.request_id.clone(),
        })
    });
    id
}

/// Inserts a validated new company; returns its id.
fn insert_company(st: &Inner, d: &mut AmoData, ch: &NewCard, now: i64, by: u64) -> u64 {
    let id = d.new_id();
    let mut custom_fields = Vec::new();
    for c in &ch.cf {
        apply_cf(&mut custom_fields, c);
    }
    let tags = resolve_tags(d, &ch.tags);
    d.companies.insert(
        id,
        AmoCompany {
            id,
            name: ch.name.clone().unwrap_or_default(),
            responsible_user_id: ch.responsible.unwrap_or(by),
            created_by: by,
            updated_by: by,
            created_at: now,
            updated_at: now,
            custom_fields,
            tags,
        },
    );
    d.idx.company_updated.insert((now, id));
    d.event(
        "company_added",
        id,
        "company",
        by,
        now,
        json!([]),
        json!([]),
    );
    st.record_writes(|w| {
        w.entities_created.push(EntityCreated {
            entity_type: "companies".into(),
            id,
            request_id: ch.request_id.clone(),
        })
    });
    id
}

async fn create_cards(
    st: Arc<Inner>,
    ctx: Ctx,
    body: Bytes,
    companies: bool,
) -> Result<Response, ApiError> {
    let items = parse_batch(&body)?;
    let now = st.now();
    let mut d = st.write();
    let by = d.account.current_user_id;
    let changes = validate_all(&items, |item, i| validate_new_card(&d, item, i, companies))
        .map_err(|errors| reject(&st, errors))?;
    let entity = if companies { "companies" } else { "contacts" };
    let mut out = Vec::new();
    for ch in changes {
        let id = if companies {
            insert_company(&st, &mut d, &ch, now, by)
        } else {
            insert_contact(&st, &mut d, &ch, now, by)
        };
        out.push(json!({"id": id, "request_id": ch.request_id,
            "_links": {"self": {"href": format!("{}/api/v4/{entity}/{id}", ctx.base)}}}));
    }
    st.record_writes(|w| w.requests_applied += 1);
    Ok(batch_response(&ctx, entity, out))
}

/// `POST /api/v4/contacts`.
pub(crate) async fn create_contacts(
    State(st): State<Arc<Inner>>,
    ctx: Ctx,
    body: Bytes,
) -> Result<Response, ApiError> {
    create_cards(st, ctx, body, false).await
}

/// `POST /api/v4/companies`.
pub(crate) async fn create_companies(
    State(st): State<Arc<Inner>>,
    ctx: Ctx,
    body: Bytes,
) -> Result<Response, ApiError> {
    create_cards(st, ctx, body, true).await
}

/// For `POST /api/v4/leads/complex`: validates the embedded new contact or company.
pub(super) fn validate_complex_card(
    d: &AmoData,
    item: &Value,
    companies: bool,
    path: &str,
    errs: &mut Errs,
) -> Option<NewCardRef> {
    match validate_new_card(d, item, 0, companies) {
        Ok(c) => Some(NewCardRef(c)),
        Err(e) => {
            if let Some(list) = e.get("errors").and_then(Value::as_array) {
                for err in list {
                    let mut err = err.clone();
                    let p = err["path"].as_str().unwrap_or("").to_owned();
                    err["path"] = json!(if p.is_empty() {
                        path.to_owned()
                    } else {
                        format!("{path}.{p}")
                    });
                    errs.0.push(err);
                }
            }
            None
        }
    }
}

/// A validated new contact or company embedded in a complex lead.
pub(super) struct NewCardRef(NewCard);

impl NewCardRef {
    /// Inserts it as a contact (`companies == false`) or a company; returns the id.
    pub(super) fn insert(
        &self,
        st: &Inner,
        d: &mut AmoData,
        companies: bool,
        now: i64,
        by: u64,
    ) -> u64 {
        if companies {
            insert_company(st, d, &self.0, now, by)
        } else {
            insert_contact(st, d, &self.0, now, by)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Notes

fn validate_note(
    d: &AmoData,
    entity: &str,
    path_id: Option<u64>,
    item: &Value,
    index: usize,
) -> Result<(String, u64, String, Value, Option<u64>), Value> {
    let rid = request_id(item, index);
    let mut errs = Errs::default();
    if !item.is_object() {
        errs.invalid_type("", "object");
        return Err(item_errors(&rid, errs.0));
    }
    let entity_id = match (path_id, get_u64(item, "entity_id", &mut errs)) {
        (Some(p), Some(i)) if p != i => {
            errs.push(
                "NotSupported",
                "entity_id",
                "entity_id differs from the entity in the path.",
            );
            p
        }
        (Some(p), _) => p,
        (None, Some(i)) => i,
        (None, None) => {
            errs.blank("entity_id");
            0
        }
    };
    if entity_id != 0 && !exists(d, entity, entity_id) {
        errs.push("NotFound", "entity_id", "Entity not found.");
    }
    let note_type = get_str(item, "note_type", &mut errs);
    match note_type.as_deref() {
        None => errs.blank("note_type"),
        Some(t) if !NOTE_TYPES.contains(&t) => errs.choice("note_type"),
        _ => {}
    }
    let params = item.get("params").cloned().unwrap_or(Value::Null);
    if !params.is_object() {
        errs.invalid_type("params", "object");
    } else {
        let text_blank = params
            .get("text")
            .and_then(Value::as_str)
            .is_none_or(|t| t.trim().is_empty());
        match note_type.as_deref() {
            Some("common" | "service_message" | "sms_in" | "sms_out") if text_blank => {
                errs.blank("params.text")
            }
            Some("call_in" | "call_out") => {
                if params
                    .get("phone")
                    .and_then(Value::as_str)
                    .is_none_or(|p| p.trim().is_empty())
                {
                    errs.blank("params.phone");
                }
                if params.get("duration").and_then(Value::as_u64).is_none() {
                    errs.invalid_type("params.duration", "int");
                }
            }
            _ => {}
        }
    }
    let responsible = get_u64(item, "responsible_user_id", &mut errs);
    if let Some(r) = responsible
        && !d.users.contains_key(&r)
    {
        errs.choice("responsible_user_id");
    }
    if !errs.0.is_empty() {
        return Err(item_errors(&rid, errs.0));
    }
    Ok((
        rid,
        entity_id,
        note_type.unwrap_or_default(),
        params,
        responsible,
    ))
}

async fn create_notes_in(
    st: Arc<Inner>,
    ctx: Ctx,
    entity: &'static str,
    path_id: Option<u64>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let items = parse_batch(&body)?;
    let now = st.now();
    let mut d = st.write();
    let by = d.account.current_user_id;
    if let Some(id) = path_id
        && !exists(&d, entity, id)
    {
        return Err(ApiError::NotFound);
    }
    let notes = validate_all(&items, |item, i| {
        validate_note(&d, entity, path_id, item, i)
    })
    .map_err(|errors| reject(&st, errors))?;
    let mut out = Vec::new();
    for (rid, entity_id, note_type, params, responsible) in notes {
        let id = d.new_id();
        if note_type == "common" {
            d.event(
                "common_note_added",
                entity_id,
                singular(entity),
                by,
                now,
                json!([{"note": {"id": id}}]),
                json!([]),
            );
        }
        d.notes.insert(
            id,
            AmoNote {
                id,
                entity_type: entity.to_owned(),
                entity_id,
                note_type,
                params,
                responsible_user_id: responsible.unwrap_or(by),
                created_by: by,
                updated_by: by,
                created_at: now,
                updated_at: now,
                is_pinned: false,
            },
        );
        st.record_writes(|w| {
            w.entities_created.push(EntityCreated {
                entity_type: format!("{entity}/notes"),
                id,
                request_id: rid.clone(),
            })
        });
        out.push(json!({"id": id, "entity_id": entity_id, "request_id": rid,
            "_links": {"self": {"href": format!("{}/api/v4/{entity}/notes/{id}", ctx.base)}}}));
    }
    st.record_writes(|w| w.requests_applied += 1);
    Ok(batch_response(&ctx, "notes", out))
}

fn render_note(d: &AmoData, n: &AmoNote, base: &str) -> Value {
    json!({
        "id": n.id, "entity_id": n.entity_id, "created_by": n.created_by,
        "updated_by": n.updated_by, "created_at": n.created_at, "updated_at": n.updated_at,
        "responsible_user_id": n.responsible_user_id, "group_id": 0,
        "note_type": n.note_type, "params": n.params, "is_pinned": n.is_pinned,
        "account_id": d.account.id,
        "_links": {"self": {"href": format!("{base}/api/v4/{}/notes/{}", n.entity_type, n.id)}},
    })
}

fn list_notes_in(
    st: &Inner,
    ctx: &Ctx,
    entity: &str,
    path_id: Option<u64>,
) -> Result<Response, ApiError> {
    let q = &ctx.q;
    q.only_filters(&["id", "entity_id", "note_type", "updated_at"])?;
    let (page, limit) = q.paging(250)?;
    let ids = q.ids(&["filter", "id"])?;
    let entity_ids = q.ids(&["filter", "entity_id"])?;
    let types = q.strings(&["filter", "note_type"]);
    if let Some(t) = types
        .iter()
        .flatten()
        .find(|t| !NOTE_TYPES.contains(&t.as_str()))
    {
        return Err(ApiError::BadRequest(format!(
            "invalid value {t:?} of query parameter filter[note_type]"
        )));
    }
    let updated = q.range("updated_at")?;
    let d = st.read();
    if let Some(id) = path_id
        && !exists(&d, entity, id)
    {
        return Err(ApiError::NoContent);
    }
    let items: Vec<Value> = d
        .notes
        .values()
        .filter(|n| n.entity_type == entity)
        .filter(|n| path_id.is_none_or(|id| n.entity_id == id))
        .filter(|n| ids.as_ref().is_none_or(|v| v.contains(&n.id)))
        .filter(|n| entity_ids.as_ref().is_none_or(|v| v.contains(&n.entity_id)))
        .filter(|n| types.as_ref().is_none_or(|v| v.contains(&n.note_type)))
        .filter(|n| updated.contains(n.updated_at))
        .skip((page.saturating_sub(1) as usize).saturating_mul(limit as usize))
        .take(limit as usize)
        .map(|n| render_note(&d, n, &ctx.base))
        .collect();
    page_of(ctx, "notes", page, limit, items)
}

/// A list page in the v4 shape, 204 when empty.
fn page_of(
    ctx: &Ctx,
    entity: &str,
    page: u64,
    limit: u32,
    items: Vec<Value>,
) -> Result<Response, ApiError> {
    if items.is_empty() {
        return Err(ApiError::NoContent);
    }
    let href = |p: u64| {
        let mut q: Vec<String> = ctx
            .raw_query
            .as_deref()
            .unwrap_or("")
            .split('&')
            .filter(|x| !x.is_empty() && !x.starts_with("page="))
            .map(str::to_owned)
            .collect();
        q.push(format!("page={p}"));
        format!("{}{}?{}", ctx.base, ctx.path, q.join("&"))
    };
    let mut links = json!({"self": {"href": href(page)}});
    if items.len() >= limit as usize {
        links["next"] = json!({"href": href(page + 1)});
    }
    if page > 1 {
        links["prev"] = json!({"href": href(page - 1)});
    }
    let mut emb = serde_json::Map::new();
    emb.insert(entity.to_owned(), Value::Array(items));
    Ok(hal(
        &json!({"_page": page, "_links": links, "_embedded": emb}),
    ))
}

/// `GET /api/v4/{entity}/notes`.
pub(crate) async fn list_notes(
    State(st): State<Arc<Inner>>,
    ctx: Ctx,
) -> Result<Response, ApiError> {
    list_notes_in(&st, &ctx, entity(&ctx)?, None)
}

/// `POST /api/v4/{entity}/notes`.
pub(crate) async fn create_notes(
    State(st): State<Arc<Inner>>,
    ctx: Ctx,
    body: Bytes,
) -> Result<Response, ApiError> {
    let e = entity(&ctx)?;
    create_notes_in(st, ctx, e, None, body).await
}

/// `GET /api/v4/{entity}/{id}/notes`.
pub(crate) async fn list_entity_notes(
    State(st): State<Arc<Inner>>,
    Path(id): Path<String>,
    ctx: Ctx,
) -> Result<Response, ApiError> {
    list_notes_in(&st, &ctx, entity(&ctx)?, Some(parse_id(&id)?))
}

/// `POST /api/v4/{entity}/{id}/notes`.
pub(crate) async fn create_entity_notes(
    State(st): State<Arc<Inner>>,
    Path(id): Path<String>,
    ctx: Ctx,
    body: Bytes,
) -> Result<Response, ApiError> {
    let e = entity(&ctx)?;
    let id = parse_id(&id)?;
    create_notes_in(st, ctx, e, Some(id), body).await
}

// ---------------------------------------------------------------------------------------------
// Links

/// What `entity` may be linked to.
fn link_targets(entity: &str) -> &'static [&'static str] {
    match entity {
        "leads" => &["contacts", "companies", "catalog_elements"],
        "contacts" => &["leads", "companies", "customers", "catalog_elements"],
        "companies" => &["leads", "contacts", "customers", "catalog_elements"],
        _ => &["contacts", "companies", "catalog_elements"],
    }
}

/// A validated link: (entity id, target type, target id, metadata).
type LinkChange = (u64, String, u64, Value);

fn validate_link(
    d: &AmoData,
    entity: &str,
    path_id: Option<u64>,
    item: &Value,
    index: usize,
) -> Result<LinkChange, Value> {
    let rid = request_id(item, index);
    let mut errs = Errs::default();
    if !item.is_object() {
        errs.invalid_type("", "object");
        return Err(item_errors(&rid, errs.0));
    }
    let entity_id = match path_id {
        Some(id) => id,
        None => match get_u64(item, "entity_id", &mut errs) {
            Some(id) if exists(d, entity, id) => id,
            Some(_) => {
                errs.push("NotFound", "entity_id", "Entity not found.");
                0
            }
            None => {
                errs.blank("entity_id");
                0
            }
        },
    };
    let to_type = get_str(item, "to_entity_type", &mut errs);
    let to_id = get_u64(item, "to_entity_id", &mut errs);
    let metadata = item.get("metadata").cloned().unwrap_or(Value::Null);
    if !metadata.is_null() && !metadata.is_object() {
        errs.invalid_type("metadata", "object");
    }
    match to_type.as_deref() {
        None => errs.blank("to_entity_type"),
        Some(t) if !link_targets(entity).contains(&t) => errs.choice("to_entity_type"),
        Some(t) => match to_id {
            None => errs.blank("to_entity_id"),
            Some(id) => {
                let found = if t == "catalog_elements" {
                    let catalog = metadata.get("catalog_id").and_then(Value::as_u64);
                    if catalog != Some(d.catalog.id) {
                        errs.choice("metadata.catalog_id");
                    }
                    if metadata
                        .get("quantity")
                        .is_some_and(|q| q.as_f64().is_none_or(|q| q <= 0.0))
                    {
                        errs.invalid_type("metadata.quantity", "positive number");
                    }
                    d.catalog.elements.contains_key(&id)
                } else {
                    exists(d, t, id)
                };
                if !found {
                    errs.push("NotFound", "to_entity_id", "Entity not found.");
                }
            }
        },
    }
    if !errs.0.is_empty() {
        return Err(item_errors(&rid, errs.0));
    }
    Ok((
        entity_id,
        to_type.unwrap_or_default(),
        to_id.unwrap_or_default(),
        metadata,
    ))
}

/// Adds `contact` to `lead`'s contacts (main when it is the first or `is_main` says so).
fn link_lead_contact(d: &mut AmoData, lead: u64, contact: u64, is_main: Option<bool>) {
    let Some(l) = d.leads.get_mut(&lead) else {
        return;
    };
    if l.contacts.iter().any(|c| c.id == contact) {
        return;
    }
    let main = is_main.unwrap_or(l.contacts.is_empty());
    if main {
        l.contacts.iter_mut().for_each(|c| c.is_main = false);
    }
    l.contacts.push(AmoLeadContact {
        id: contact,
        is_main: main,
    });
    d.idx.contact_leads.entry(contact).or_default().push(lead);
}

fn set_contact_company(d: &mut AmoData, contact: u64, company: u64) {
    let Some(c) = d.contacts.get_mut(&contact) else {
        return;
    };
    if let Some(old) = c.company_id.replace(company)
        && let Some(v) = d.idx.company_contacts.get_mut(&old)
    {
        v.retain(|&x| x != contact);
    }
    d.idx
        .company_contacts
        .entry(company)
        .or_default()
        .push(contact);
}

fn apply_link(d: &mut AmoData, entity: &str, (id, to_type, to_id, meta): &LinkChange) {
    let is_main = meta.get("is_main").and_then(Value::as_bool);
    match (entity, to_type.as_str()) {
        ("leads", "contacts") => link_lead_contact(d, *id, *to_id, is_main),
        ("contacts", "leads") => link_lead_contact(d, *to_id, *id, is_main),
        ("leads", "companies") => {
            if let Some(l) = d.leads.get_mut(id) {
                l.company_id = Some(*to_id);
            }
        }
        ("companies", "leads") => {
            if let Some(l) = d.leads.get_mut(to_id) {
                l.company_id = Some(*id);
            }
        }
        ("contacts", "companies") => set_contact_company(d, *id, *to_id),
        ("companies", "contacts") => set_contact_company(d, *to_id, *id),
        ("customers", "contacts") | ("contacts", "customers") => {
            let (cust, contact) = if entity == "customers" {
                (*id, *to_id)
            } else {
                (*to_id, *id)
            };
            if let Some(c) = d.customers.get_mut(&cust)
                && !c.contacts.iter().any(|x| x.id == contact)
            {
                let main = is_main.unwrap_or(c.contacts.is_empty());
                c.contacts.push(AmoLeadContact {
                    id: contact,
                    is_main: main,
                });
            }
        }
        ("customers", "companies") | ("companies", "customers") => {
            let (cust, company) = if entity == "customers" {
                (*id, *to_id)
            } else {
                (*to_id, *id)
            };
            if let Some(c) = d.customers.get_mut(&cust) {
                c.company_id = Some(company);
            }
        }
        ("leads", "catalog_elements") => {
            let quantity = meta.get("quantity").and_then(Value::as_f64).unwrap_or(1.0);
            if let Some(l) = d.leads.get_mut(id) {
                match l.products.iter_mut().find(|p| p.element_id == *to_id) {
                    Some(p) => p.quantity = quantity.round().max(1.0) as u32,
                    None => l.products.push(AmoLeadProduct {
                        element_id: *to_id,
                        quantity: quantity.round().max(1.0) as u32,
                    }),
                }
            }
        }
        // Catalog elements of contacts, companies and customers are accepted and not kept.
        _ => {}
    }
}

fn touch(d: &mut AmoData, entity: &str, id: u64, now: i64, by: u64) {
    match entity {
        "leads" => d.touch_lead(id, now, by),
        "contacts" => d.touch_contact(id, now, by),
        "companies" => d.touch_company(id, now, by),
        _ => {
            if let Some(c) = d.customers.get_mut(&id) {
                c.updated_at = now.max(c.created_at);
                c.updated_by = by;
            }
        }
    }
}

fn link_out(entity: &str, (id, to_type, to_id, meta): &LinkChange) -> Value {
    json!({"entity_id": id, "entity_type": entity, "to_entity_id": to_id,
           "to_entity_type": to_type, "metadata": meta})
}

async fn link_in(
    st: Arc<Inner>,
    ctx: Ctx,
    entity: &'static str,
    path_id: Option<u64>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let items = parse_batch(&body)?;
    let now = st.now();
    let mut d = st.write();
    let by = d.account.current_user_id;
    if let Some(id) = path_id
        && !exists(&d, entity, id)
    {
        return Err(ApiError::NotFound);
    }
    let links = validate_all(&items, |item, i| {
        validate_link(&d, entity, path_id, item, i)
    })
    .map_err(|errors| reject(&st, errors))?;
    let mut out = Vec::new();
    for l in &links {
        apply_link(&mut d, entity, l);
        touch(&mut d, entity, l.0, now, by);
        if l.1 != "catalog_elements" {
            touch(&mut d, &l.1, l.2, now, by);
        }
        let (a, b) = (singular(entity), l.1.trim_end_matches('s'));
        d.event(
            &format!("{a}_linked"),
            l.0,
            a,
            by,
            now,
            json!([{"link": {"entity": {"type": b, "id": l.2}}}]),
            json!([]),
        );
        out.push(link_out(entity, l));
    }
    st.record_writes(|w| {
        w.requests_applied += 1;
        w.links_created += links.len() as u64;
    });
    Ok(batch_response(&ctx, "links", out))
}

/// `POST /api/v4/{entity}/link`: items name their `entity_id`.
pub(crate) async fn link_mass(
    State(st): State<Arc<Inner>>,
    ctx: Ctx,
    body: Bytes,
) -> Result<Response, ApiError> {
    let e = entity(&ctx)?;
    link_in(st, ctx, e, None, body).await
}

/// `POST /api/v4/{entity}/{id}/link`.
pub(crate) async fn link_one(
    State(st): State<Arc<Inner>>,
    Path(id): Path<String>,
    ctx: Ctx,
    body: Bytes,
) -> Result<Response, ApiError> {
    let e = entity(&ctx)?;
    let id = parse_id(&id)?;
    link_in(st, ctx, e, Some(id), body).await
}

/// `GET /api/v4/{entity}/{id}/links`: what the record is linked to; `filter[to_entity_type]`
/// and `filter[to_entity_id]` narrow it.
pub(crate) async fn links_of(
    State(st): State<Arc<Inner>>,
    Path(id): Path<String>,
    ctx: Ctx,
) -> Result<Response, ApiError> {
    let entity = entity(&ctx)?;
    let id = parse_id(&id)?;
    let q = &ctx.q;
    q.only_filters(&["to_entity_type", "to_entity_id"])?;
    let to_type = q.get(&["filter", "to_entity_type"]).map(str::to_owned);
    if let Some(t) = &to_type
        && !link_targets(entity).contains(&t.as_str())
    {
        return Err(ApiError::BadRequest(format!(
            "invalid value {t:?} of query parameter filter[to_entity_type]"
        )));
    }
    let to_ids: Option<BTreeSet<u64>> = q
        .ids(&["filter", "to_entity_id"])?
        .map(|v| v.into_iter().collect());
    let d = st.read();
    if !exists(&d, entity, id) {
        return Err(ApiError::NoContent);
    }
    let mut all: Vec<LinkChange> = Vec::new();
    let main = |is_main: bool| json!({"is_main": is_main});
    match entity {
        "leads" => {
            if let Some(l) = d.leads.get(&id) {
                all.extend(
                    l.contacts
                        .iter()
                        .map(|c| (id, "contacts".into(), c.id, main(c.is_main))),
                );
                all.extend(
                    l.company_id
                        .map(|c| (id, "companies".into(), c, Value::Null)),
                );
                all.extend(l.products.iter().map(|p| {
                    (
                        id,
                        "catalog_elements".into(),
                        p.element_id,
                        json!({"catalog_id": d.catalog.id, "quantity": p.quantity}),
                    )
                }));
            }
        }
        "contacts" => {
            all.extend(
                d.leads_of_contact(id)
                    .iter()
                    .map(|&l| (id, "leads".into(), l, Value::Null)),
            );
            if let Some(c) = d.contacts.get(&id) {
                all.extend(
                    c.company_id
                        .map(|co| (id, "companies".into(), co, Value::Null)),
                );
            }
            all.extend(
                d.customers
                    .values()
                    .filter(|c| c.contacts.iter().any(|x| x.id == id))
                    .map(|c| (id, "customers".into(), c.id, Value::Null)),
            );
        }
        "companies" => {
            all.extend(
                d.contacts_of_company(id)
                    .iter()
                    .map(|&c| (id, "contacts".into(), c, Value::Null)),
            );
            all.extend(
                d.leads
                    .values()
                    .filter(|l| l.company_id == Some(id))
                    .map(|l| (id, "leads".into(), l.id, Value::Null)),
            );
        }
        _ => {
            if let Some(c) = d.customers.get(&id) {
                all.extend(
                    c.contacts
                        .iter()
                        .map(|x| (id, "contacts".into(), x.id, main(x.is_main))),
                );
                all.extend(
                    c.company_id
                        .map(|co| (id, "companies".into(), co, Value::Null)),
                );
            }
        }
    }
    let items: Vec<Value> = all
        .iter()
        .filter(|l| to_type.as_ref().is_none_or(|t| *t == l.1))
        .filter(|l| to_ids.as_ref().is_none_or(|s| s.contains(&l.2)))
        .map(|l| link_out(entity, l))
        .collect();
    if items.is_empty() {
        return Err(ApiError::NoContent);
    }
    Ok(hal(&json!({
        "_links": {"self": {"href": format!("{}{}", ctx.base, ctx.path)}},
        "_embedded": {"links": items},
    })))
}

// ---------------------------------------------------------------------------------------------
// Tags

fn tags_of(d: &AmoData, entity: &str) -> BTreeSet<u64> {
    let mut ids: BTreeSet<u64> = d.created_tags.get(entity).cloned().unwrap_or_default();
    let mut add = |tags: &[AmoTag]| ids.extend(tags.iter().map(|t| t.id));
    match entity {
        "leads" => d.leads.values().for_each(|l| add(&l.tags)),
        "contacts" => d.contacts.values().for_each(|c| add(&c.tags)),
        "companies" => d.companies.values().for_each(|c| add(&c.tags)),
        _ => d.customers.values().for_each(|c| add(&c.tags)),
    }
    ids
}

fn render_tag(d: &AmoData, id: u64) -> Option<Value> {
    let t = d.tag_by_id(id)?;
    Some(json!({"id": t.id, "name": t.name, "color": d.tag_colors.get(&id)}))
}

/// `GET /api/v4/{entity}/tags`: `filter[id]`, `filter[name]`, `query`.
pub(crate) async fn list_tags(
    State(st): State<Arc<Inner>>,
    ctx: Ctx,
) -> Result<Response, ApiError> {
    let entity = entity(&ctx)?;
    let q = &ctx.q;
    q.only_filters(&["id", "name"])?;
    let (page, limit) = q.paging(250)?;
    let ids = q.ids(&["filter", "id"])?;
    let name = q.get(&["filter", "name"]).map(str::to_owned);
    let query = q.get(&["query"]).map(|s| s.trim().to_lowercase());
    let d = st.read();
    let items: Vec<Value> = tags_of(&d, entity)
        .into_iter()
        .filter(|id| ids.as_ref().is_none_or(|v| v.contains(id)))
        .filter_map(|id| d.tag_by_id(id))
        .filter(|t| name.as_ref().is_none_or(|n| *n == t.name))
        .filter(|t| {
            query
                .as_ref()
                .is_none_or(|s| t.name.to_lowercase().contains(s))
        })
        .skip((page.saturating_sub(1) as usize).saturating_mul(limit as usize))
        .take(limit as usize)
        .filter_map(|t| render_tag(&d, t.id))
        .collect();
    page_of(&ctx, "tags", page, limit, items)
}

/// `POST /api/v4/{entity}/tags`: `[{name, color?}]`; an existing name answers its tag.
pub(crate) async fn create_tags(
    State(st): State<Arc<Inner>>,
    ctx: Ctx,
    body: Bytes,
) -> Result<Response, ApiError> {
    let entity = entity(&ctx)?;
    let items = parse_batch(&body)?;
    let mut d = st.write();
    let specs = validate_all(&items, |item, i| {
        let rid = request_id(item, i);
        let mut errs = Errs::default();
        if !item.is_object() {
            errs.invalid_type("", "object");
            return Err(item_errors(&rid, errs.0));
        }
        let name = get_str(item, "name", &mut errs);
        if name.as_deref().is_none_or(|n| n.trim().is_empty()) {
            errs.blank("name");
        }
        let color = get_str(item, "color", &mut errs);
        if let Some(c) = &color
            && !(c.len() == 6 && c.chars().all(|ch| ch.is_ascii_hexdigit()))
        {
            errs.push(
                "InvalidColor",
                "color",
                "The color is 6 hexadecimal digits without #.",
            );
        }
        if !errs.0.is_empty() {
            return Err(item_errors(&rid, errs.0));
        }
        Ok((rid, name.unwrap_or_default().trim().to_owned(), color))
    })
    .map_err(|errors| reject(&st, errors))?;
    let mut out = Vec::new();
    for (rid, name, color) in specs {
        let tag = d.tag(&name);
        if let Some(c) = color {
            d.tag_colors.insert(tag.id, c);
        }
        d.created_tags
            .entry(entity.to_owned())
            .or_default()
            .insert(tag.id);
        let mut v = render_tag(&d, tag.id).unwrap_or(Value::Null);
        v["request_id"] = json!(rid);
        out.push(v);
    }
    st.record_writes(|w| w.requests_applied += 1);
    Ok(batch_response(&ctx, "tags", out))
}
