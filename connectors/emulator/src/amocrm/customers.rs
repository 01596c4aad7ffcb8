//! The customers entity ("Покупатели", periodic purchases) and custom field creation:
//! `GET/POST/PATCH /api/v4/customers`, `GET /api/v4/customers/{id}`,
//! `GET /api/v4/customers/statuses[/{id}]`, `PATCH /api/v4/customers/mode`, and
//! `POST /api/v4/{leads|contacts|companies|customers}/custom_fields`.
//!
//! Faithful to `docs/amocrm.md` of this crate, §4.6 and §7. The account's `customers_mode` gates
//! them: `unavailable` (the tariff has no customers) answers 402 everywhere, the mode switch
//! included; `disabled` answers 422 on the customers endpoints; the statuses exist only in
//! `periodicity` mode (422 otherwise, as documented).
//!
//! # Choices where the doc is silent
//! - At most 50 customers per write request (the library's recommendation); more is a 400.
//! - A new customer without `status_id` gets the default status (periodicity mode).
//! - `next_date`/`next_price` are plain fields: the emulator never derives them, nor moves a
//!   customer between statuses by itself (conditions are not readable through the API).
//! - Contacts and a company are linked on creation through `_embedded` (as for leads); a PATCH
//!   does not relink (amoCRM links through `/link`).
//! - `disabled` mode answers 422 with a detail naming the mode (the code is not documented).
use super::Inner;
use super::api::Ctx;
use super::error::{ApiError, hal, item_errors};
use super::render;
use super::state::*;
use super::writes::{
    CfChange, CustomerWrite, Errs, FieldCreated, TagSpec, apply_cf, batch_response, changed_keys,
    get_str, get_u64, parse_batch, parse_json, reject, request_id, resolve_tags, single_item,
    updated_item, validate_all, validate_cf, validate_links, validate_tags,
};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::Response;
use serde_json::{Value, json};
use std::sync::Arc;

/// Most customers in one write request.
pub const MAX_CUSTOMERS_BATCH: usize = 50;

/// Field types `POST .../custom_fields` accepts (`docs/amocrm.md` §4.3).
const FIELD_TYPES: &[&str] = &[
    "text",
    "numeric",
    "checkbox",
    "select",
    "multiselect",
    "multitext",
    "date",
    "date_time",
    "birthday",
    "url",
    "textarea",
    "radiobutton",
    "streetaddress",
    "smart_address",
    "legal_entity",
    "price",
    "monetary",
    "category",
    "items",
    "tracking_data",
    "linked_entity",
    "chained_list",
    "file",
    "payer",
    "supplier",
    "org_legal_name",
];

/// The customers endpoints need the entity enabled.
fn check_enabled(d: &AmoData) -> Result<(), ApiError> {
    match d.account.customers_mode.as_str() {
        "periodicity" | "segments" | "dynamic" => Ok(()),
        "unavailable" => Err(ApiError::Status(
            402,
            "Customers are not available on the account's tariff".into(),
        )),
        other => Err(ApiError::Status(
            422,
            format!("Customers are disabled in the account (customers_mode {other:?})"),
        )),
    }
}

/// The statuses exist in periodicity mode only.
fn check_periodicity(d: &AmoData) -> Result<(), ApiError> {
    check_enabled(d)?;
    if d.account.customers_mode != "periodicity" {
        return Err(ApiError::Status(
            422,
            format!(
                "Customer statuses need the periodicity mode (customers_mode {:?})",
                d.account.customers_mode
            ),
        ));
    }
    Ok(())
}

/// `GET /api/v4/customers/statuses`.
pub(crate) async fn statuses(State(st): State<Arc<Inner>>, ctx: Ctx) -> Result<Response, ApiError> {
    let d = st.read();
    check_periodicity(&d)?;
    let mut list: Vec<&AmoCustomerStatus> = d.customer_statuses.iter().collect();
    list.sort_by_key(|s| (s.sort, s.id));
    let items: Vec<Value> = list
        .iter()
        .map(|s| render::customer_status(&d, s, &ctx.base))
        .collect();
    Ok(hal(&json!({
        "_total_items": items.len(),
        "_page": 1,
        "_page_count": 1,
        "_links": {"self": {"href": format!("{}/api/v4/customers/statuses", ctx.base)}},
        "_embedded": {"statuses": items},
    })))
}

/// `GET /api/v4/customers/statuses/{id}`: 204 when missing.
pub(crate) async fn status(
    State(st): State<Arc<Inner>>,
    Path(id): Path<String>,
    ctx: Ctx,
) -> Result<Response, ApiError> {
    let id: u64 = id.parse().map_err(|_| ApiError::NotFound)?;
    let d = st.read();
    check_periodicity(&d)?;
    let s = d
        .customer_statuses
        .iter()
        .find(|s| s.id == id)
        .ok_or(ApiError::NoContent)?;
    Ok(hal(&render::customer_status(&d, s, &ctx.base)))
}

/// `GET /api/v4/customers`: `page`, `limit` (≤ 250), `filter[id]`,
/// `filter[updated_at][from|to]`, `with=contacts`; ordered by id; 204 when empty.
pub(crate) async fn list(State(st): State<Arc<Inner>>, ctx: Ctx) -> Result<Response, ApiError> {
    let q = &ctx.q;
    q.only_filters(&["id", "updated_at"])?;
    let (page, limit) = q.paging(250)?;
    let ids = q.ids(&["filter", "id"])?;
    let updated = q.range("updated_at")?;
    let with_contacts = q.with().contains("contacts");
    let d = st.read();
    check_enabled(&d)?;
    let items: Vec<Value> = d
        .customers
        .values()
        .filter(|c| ids.as_ref().is_none_or(|v| v.contains(&c.id)))
        .filter(|c| updated.contains(c.updated_at))
        .skip((page.saturating_sub(1) as usize).saturating_mul(limit as usize))
        .take(limit as usize)
        .map(|c| render::customer(&d, c, &ctx.base, with_contacts))
        .collect();
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
        format!("{}/api/v4/customers?{}", ctx.base, q.join("&"))
    };
    let mut links = json!({"self": {"href": href(page)}});
    if items.len() >= limit as usize {
        links["next"] = json!({"href": href(page + 1)});
    }
    if page > 1 {
        links["prev"] = json!({"href": href(page - 1)});
    }
    Ok(hal(&json!({
        "_page": page,
        "_links": links,
        "_embedded": {"customers": items},
    })))
}

/// `GET /api/v4/customers/{id}`: 204 when missing.
pub(crate) async fn get_one(
    State(st): State<Arc<Inner>>,
    Path(id): Path<String>,
    ctx: Ctx,
) -> Result<Response, ApiError> {
    let id: u64 = id.parse().map_err(|_| ApiError::NotFound)?;
    let with_contacts = ctx.q.with().contains("contacts");
    let d = st.read();
    check_enabled(&d)?;
    let c = d.customers.get(&id).ok_or(ApiError::NoContent)?;
    Ok(hal(&render::customer(&d, c, &ctx.base, with_contacts)))
}

/// A validated customer write.
struct CustomerChange {
    id: u64,
    request_id: String,
    keys: Vec<String>,
    name: Option<String>,
    next_price: Option<i64>,
    next_date: Option<i64>,
    responsible: Option<u64>,
    status: Option<u64>,
    periodicity: Option<i64>,
    cf: Vec<CfChange>,
    tags: Option<Vec<TagSpec>>,
    contacts: Vec<AmoLeadContact>,
    company: Option<u64>,
}

fn get_i64(item: &Value, key: &str, errs: &mut Errs, min: Option<i64>) -> Option<i64> {
    match item.get(key) {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_i64() {
            Some(n) if min.is_none_or(|m| n >= m) => Some(n),
            Some(_) => {
                errs.push(
                    "GreaterThanOrEqual",
                    key,
                    &format!(
                        "This value should be greater than or equal to {}.",
                        min.unwrap_or(0)
                    ),
                );
                None
            }
            None => {
                errs.invalid_type(key, "int");
                None
            }
        },
    }
}

fn validate_customer(
    d: &AmoData,
    item: &Value,
    index: usize,
    creating: bool,
) -> Result<CustomerChange, Value> {
    let rid = request_id(item, index);
    let mut errs = Errs::default();
    if !item.is_object() {
        errs.invalid_type("", "object");
        return Err(item_errors(&rid, errs.0));
    }
    let mut id = 0;
    if !creating {
        match item.get("id") {
            None | Some(Value::Null) => errs.blank("id"),
            Some(v) => match v.as_u64() {
                None => errs.invalid_type("id", "int"),
                Some(i) if d.customers.contains_key(&i) => id = i,
                Some(_) => errs.push("NotFound", "id", "Entity not found."),
            },
        }
    }
    let name = get_str(item, "name", &mut errs);
    if creating && name.as_deref().is_none_or(|n| n.trim().is_empty()) {
        errs.blank("name");
    }
    let next_price = get_i64(item, "next_price", &mut errs, Some(0));
    let next_date = get_i64(item, "next_date", &mut errs, Some(0));
    let periodicity = get_i64(item, "periodicity", &mut errs, Some(0));
    let responsible = get_u64(item, "responsible_user_id", &mut errs);
    if let Some(r) = responsible
        && !d.users.contains_key(&r)
    {
        errs.choice("responsible_user_id");
    }
    let status = get_u64(item, "status_id", &mut errs);
    if let Some(s) = status {
        let known = d.account.customers_mode == "periodicity"
            && d.customer_statuses.iter().any(|x| x.id == s);
        if !known {
            errs.choice("status_id");
        }
    }
    let cf = match item.get("custom_fields_values") {
        Some(v) => validate_cf(&d.fields.customers, v, &mut errs),
        None => vec![],
    };
    let emb = item.get("_embedded");
    let tags = validate_tags(d, emb, &mut errs);
    let (contacts, company) = if creating {
        validate_links(d, emb, &mut errs)
    } else {
        (Vec::new(), None)
    };
    if !errs.0.is_empty() {
        return Err(item_errors(&rid, errs.0));
    }
    let keys = changed_keys(item, emb);
    Ok(CustomerChange {
        id,
        request_id: rid,
        keys,
        name,
        next_price,
        next_date,
        responsible,
        status,
        periodicity,
        cf,
        tags,
        contacts,
        company,
    })
}

fn batch(body: &Bytes) -> Result<Vec<Value>, ApiError> {
    let items = parse_batch(body)?;
    if items.len() > MAX_CUSTOMERS_BATCH {
        return Err(ApiError::BadRequest(format!(
            "too many customers in one request: {} (at most {MAX_CUSTOMERS_BATCH})",
            items.len()
        )));
    }
    Ok(items)
}

fn write_of(c: &AmoCustomer, ch: &CustomerChange, from: Option<u64>, now: i64) -> CustomerWrite {
    CustomerWrite {
        id: c.id,
        fields: ch.keys.clone(),
        status_id: c.status_id,
        from_status_id: from,
        next_date: c.next_date,
        next_price: c.next_price,
        contact_id: c.contacts.iter().find(|x| x.is_main).map(|x| x.id),
        responsible_user_id: c.responsible_user_id,
        request_id: ch.request_id.clone(),
        at: now,
    }
}

/// `POST /api/v4/customers`: a JSON array of up to 50 customers.
pub(crate) async fn create(
    State(st): State<Arc<Inner>>,
    ctx: Ctx,
    body: Bytes,
) -> Result<Response, ApiError> {
    let items = batch(&body)?;
    let now = st.now();
    let mut d = st.write();
    check_enabled(&d)?;
    let by = d.account.current_user_id;
    let changes = validate_all(&items, |item, i| validate_customer(&d, item, i, true))
        .map_err(|errors| reject(&st, errors))?;
    let default_status = if d.account.customers_mode == "periodicity" {
        d.customer_statuses
            .iter()
            .find(|s| s.is_default)
            .map_or(0, |s| s.id)
    } else {
        0
    };
    let mut out = Vec::new();
    for ch in changes {
        let id = d.new_id();
        let mut custom_fields = Vec::new();
        for c in &ch.cf {
            apply_cf(&mut custom_fields, c);
        }
        let tags = ch
            .tags
            .as_ref()
            .map(|s| resolve_tags(&mut d, s))
            .unwrap_or_default();
        let customer = AmoCustomer {
            id,
            name: ch.name.clone().unwrap_or_default(),
            next_price: ch.next_price.unwrap_or(0),
            next_date: ch.next_date.unwrap_or(0),
            responsible_user_id: ch.responsible.unwrap_or(by),
            status_id: ch.status.unwrap_or(default_status),
            periodicity: ch.periodicity.unwrap_or(0),
            created_by: by,
            updated_by: by,
            created_at: now,
            updated_at: now,
            custom_fields,
            tags,
            contacts: ch.contacts.clone(),
            company_id: ch.company,
        };
        let w = write_of(&customer, &ch, None, now);
        d.customers.insert(id, customer);
        d.event(
            "customer_added",
            id,
            "customer",
            by,
            now,
            json!([{"customer": {"id": id}}]),
            json!([]),
        );
        st.record_writes(|x| x.customers_created.push(w));
        out.push(json!({"id": id, "request_id": ch.request_id,
            "_links": {"self": {"href": format!("{}/api/v4/customers/{id}", ctx.base)}}}));
    }
    st.record_writes(|w| w.requests_applied += 1);
    Ok(batch_response(&ctx, "customers", out))
}

fn apply_update(st: &Inner, d: &mut AmoData, ch: CustomerChange, now: i64, by: u64) -> i64 {
    let id = ch.id;
    let new_tags = ch.tags.as_ref().map(|specs| resolve_tags(d, specs));
    let Some(c) = d.customers.get_mut(&id) else {
        return now;
    };
    let from = c.status_id;
    if let Some(n) = &ch.name {
        c.name = n.clone();
    }
    if let Some(p) = ch.next_price {
        c.next_price = p;
    }
    if let Some(t) = ch.next_date {
        c.next_date = t;
    }
    if let Some(r) = ch.responsible {
        c.responsible_user_id = r;
    }
    if let Some(s) = ch.status {
        c.status_id = s;
    }
    if let Some(p) = ch.periodicity {
        c.periodicity = p;
    }
    for cf in &ch.cf {
        apply_cf(&mut c.custom_fields, cf);
    }
    if let Some(t) = new_tags {
        c.tags = t;
    }
    c.updated_at = now;
    c.updated_by = by;
    let w = write_of(c, &ch, Some(from), now);
    let to = c.status_id;
    if to != from {
        d.event(
            "customer_status_changed",
            id,
            "customer",
            by,
            now,
            json!([{"customer_status": {"id": to}}]),
            json!([{"customer_status": {"id": from}}]),
        );
    }
    st.record_writes(|x| x.customers_updated.push(w));
    now
}

/// `PATCH /api/v4/customers`: a JSON array of up to 50 customers, each with its `id`.
pub(crate) async fn patch(
    State(st): State<Arc<Inner>>,
    ctx: Ctx,
    body: Bytes,
) -> Result<Response, ApiError> {
    let items = batch(&body)?;
    let now = st.now();
    let mut d = st.write();
    check_enabled(&d)?;
    let by = d.account.current_user_id;
    let changes = validate_all(&items, |item, i| validate_customer(&d, item, i, false))
        .map_err(|errors| reject(&st, errors))?;
    let mut out = Vec::new();
    for ch in changes {
        let (id, rid) = (ch.id, ch.request_id.clone());
        let at = apply_update(&st, &mut d, ch, now, by);
        out.push(updated_item(&ctx.base, "customers", id, at, &rid));
    }
    st.record_writes(|w| w.requests_applied += 1);
    Ok(batch_response(&ctx, "customers", out))
}

/// `PATCH /api/v4/customers/{id}`: one object.
pub(crate) async fn patch_one(
    State(st): State<Arc<Inner>>,
    Path(id): Path<String>,
    ctx: Ctx,
    body: Bytes,
) -> Result<Response, ApiError> {
    let id: u64 = id.parse().map_err(|_| ApiError::NotFound)?;
    let item = single_item(&body, id)?;
    let now = st.now();
    let mut d = st.write();
    check_enabled(&d)?;
    let by = d.account.current_user_id;
    let ch = validate_customer(&d, &item, 0, false).map_err(|e| reject(&st, vec![e]))?;
    let at = apply_update(&st, &mut d, ch, now, by);
    st.record_writes(|w| w.requests_applied += 1);
    Ok(hal(
        &json!({"id": id, "updated_at": at, "_links": {"self": {"href": format!("{}/api/v4/customers/{id}", ctx.base)}}}),
    ))
}

/// `PATCH /api/v4/customers/mode` `{"mode": "segments"|"periodicity", "is_enabled": bool}`:
/// echoes the body. 402 when the tariff has no customers; 400 on bad data; admin only (403).
pub(crate) async fn set_mode(
    State(st): State<Arc<Inner>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let v = parse_json(&body)?;
    let mut d = st.write();
    if d.account.customers_mode == "unavailable" {
        return Err(ApiError::Status(
            402,
            "Customers are not available on the account's tariff".into(),
        ));
    }
    let admin = d
        .users
        .get(&d.account.current_user_id)
        .is_some_and(|u| u.is_admin);
    if !admin {
        return Err(ApiError::Status(
            403,
            "Only an administrator can change the customers mode".into(),
        ));
    }
    let mut errs = Errs::default();
    let mode = match v.get("mode") {
        Some(Value::String(m)) if m == "segments" || m == "periodicity" => Some(m.clone()),
        Some(Value::String(_)) => {
            errs.choice("mode");
            None
        }
        None | Some(Value::Null) => {
            errs.blank("mode");
            None
        }
        Some(_) => {
            errs.invalid_type("mode", "string");
            None
        }
    };
    let enabled = match v.get("is_enabled") {
        Some(Value::Bool(b)) => Some(*b),
        None | Some(Value::Null) => {
            errs.blank("is_enabled");
            None
        }
        Some(_) => {
            errs.invalid_type("is_enabled", "bool");
            None
        }
    };
    let (Some(mode), Some(enabled)) = (mode, enabled) else {
        return Err(reject(&st, vec![item_errors("0", errs.0)]));
    };
    d.account.customers_mode = if enabled { mode } else { "disabled".into() };
    let after = d.account.customers_mode.clone();
    drop(d);
    st.record_writes(|w| {
        w.customers_mode_changes.push(after);
        w.requests_applied += 1;
    });
    Ok(hal(&v))
}

/// `POST /api/v4/{entity}/custom_fields`: a JSON array of field definitions
/// `{name, type, code?, sort?, enums?: [{value, sort?}], request_id?}`. Select-like types need
/// enums. Answers the created fields as the list endpoint shows them, with `request_id`.
pub(crate) async fn create_fields(
    State(st): State<Arc<Inner>>,
    ctx: Ctx,
    body: Bytes,
) -> Result<Response, ApiError> {
    // Mounted on the four `/api/v4/{entity}/custom_fields` paths.
    let entity = match ctx.path.trim_start_matches("/api/v4/").split('/').next() {
        Some(e @ ("leads" | "contacts" | "companies" | "customers")) => e.to_owned(),
        _ => return Err(ApiError::NotFound),
    };
    let items = parse_batch(&body)?;
    let mut d = st.write();
    if entity == "customers" {
        check_enabled(&d)?;
    }
    struct NewField {
        rid: String,
        name: String,
        ty: String,
        code: Option<String>,
        sort: Option<i64>,
        enums: Vec<String>,
    }
    let mut new = Vec::new();
    let mut errors = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let rid = request_id(item, i);
        let mut errs = Errs::default();
        if !item.is_object() {
            errs.invalid_type("", "object");
            errors.push(item_errors(&rid, errs.0));
            continue;
        }
        let name = get_str(item, "name", &mut errs).unwrap_or_default();
        if name.trim().is_empty() && item.get("name").is_none_or(|v| !v.is_string() || v == "") {
            errs.blank("name");
        }
        let ty = get_str(item, "type", &mut errs).unwrap_or_default();
        if ty.is_empty() {
            errs.blank("type");
        } else if !FIELD_TYPES.contains(&ty.as_str()) {
            errs.choice("type");
        }
        let code = get_str(item, "code", &mut errs);
        if let Some(c) = &code
            && d.fields
                .of(&entity)
                .iter()
                .any(|f| f.code.as_deref() == Some(c))
        {
            errs.push("NotUnique", "code", "This value is already used.");
        }
        let sort = get_i64(item, "sort", &mut errs, None);
        let mut enums = Vec::new();
        match item.get("enums") {
            None | Some(Value::Null) => {}
            Some(Value::Array(arr)) => {
                for (k, e) in arr.iter().enumerate() {
                    match e.get("value").and_then(Value::as_str).map(str::trim) {
                        Some(v) if !v.is_empty() => enums.push(v.to_owned()),
                        _ => errs.blank(&format!("enums.{k}.value")),
                    }
                }
            }
            Some(_) => errs.invalid_type("enums", "array"),
        }
        if matches!(ty.as_str(), "select" | "multiselect" | "radiobutton") && enums.is_empty() {
            errs.blank("enums");
        }
        if !errs.0.is_empty() {
            errors.push(item_errors(&rid, errs.0));
            continue;
        }
        new.push(NewField {
            rid,
            name: name.trim().to_owned(),
            ty,
            code,
            sort,
            enums,
        });
    }
    if !errors.is_empty() {
        return Err(reject(&st, errors));
    }
    let mut out = Vec::new();
    let mut created = Vec::new();
    for f in new {
        let id = d.new_id();
        let enums: Vec<AmoEnum> = f
            .enums
            .iter()
            .map(|v| AmoEnum {
                id: 0,
                value: v.clone(),
                code: None,
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|mut e| {
                e.id = d.new_id();
                e
            })
            .collect();
        let sort = f.sort.unwrap_or_else(|| {
            d.fields
                .of(&entity)
                .iter()
                .map(|x| x.sort)
                .max()
                .unwrap_or(0)
                + 2
        });
        let def = AmoFieldDef {
            id,
            name: f.name.clone(),
            code: f.code.clone(),
            field_type: f.ty.clone(),
            sort,
            enums,
        };
        let mut shown = render::field_def(&d, &entity, &def, &ctx.base);
        shown["request_id"] = json!(f.rid);
        // The entity is one of the four checked above.
        if let Some(defs) = d.fields.of_mut(&entity) {
            defs.push(def);
        }
        out.push(shown);
        created.push(FieldCreated {
            entity_type: entity.clone(),
            id,
            name: f.name,
            field_type: f.ty,
            enums: f.enums,
            code: f.code,
            request_id: f.rid,
        });
    }
    drop(d);
    st.record_writes(|w| {
        w.fields_created.extend(created);
        w.requests_applied += 1;
    });
    Ok(hal(&json!({
        "_total_items": out.len(),
        "_links": {"self": {"href": format!("{}/api/v4/{entity}/custom_fields", ctx.base)}},
        "_embedded": {"custom_fields": out},
    })))
}

// ---------------------------------------------------------------------------------------------
// Transactions (purchases), `docs/amocrm.md` §4.6

fn list_transactions_of(
    st: &Inner,
    ctx: &Ctx,
    customer: Option<u64>,
) -> Result<Response, ApiError> {
    let q = &ctx.q;
    q.only_filters(&["id"])?;
    let (page, limit) = q.paging(250)?;
    let ids = q.ids(&["filter", "id"])?;
    let d = st.read();
    check_enabled(&d)?;
    if let Some(c) = customer
        && !d.customers.contains_key(&c)
    {
        return Err(ApiError::NoContent);
    }
    let mut all: Vec<&AmoTransaction> = match customer {
        Some(c) => d.transactions.get(&c).into_iter().flatten().collect(),
        None => d.transactions.values().flatten().collect(),
    };
    all.sort_by_key(|t| t.id);
    let items: Vec<Value> = all
        .into_iter()
        .filter(|t| ids.as_ref().is_none_or(|v| v.contains(&t.id)))
        .skip((page.saturating_sub(1) as usize).saturating_mul(limit as usize))
        .take(limit as usize)
        .map(|t| render::transaction(&d, t, &ctx.base))
        .collect();
    if items.is_empty() {
        return Err(ApiError::NoContent);
    }
    let href = |p: u64| {
        let mut parts: Vec<String> = ctx
            .raw_query
            .as_deref()
            .unwrap_or("")
            .split('&')
            .filter(|x| !x.is_empty() && !x.starts_with("page="))
            .map(str::to_owned)
            .collect();
        parts.push(format!("page={p}"));
        format!("{}{}?{}", ctx.base, ctx.path, parts.join("&"))
    };
    let mut links = json!({"self": {"href": href(page)}});
    if items.len() >= limit as usize {
        links["next"] = json!({"href": href(page + 1)});
    }
    Ok(hal(&json!({
        "_page": page,
        "_links": links,
        "_embedded": {"transactions": items},
    })))
}

/// `GET /api/v4/customers/transactions`: every customer's purchases, by id.
pub(crate) async fn all_transactions(
    State(st): State<Arc<Inner>>,
    ctx: Ctx,
) -> Result<Response, ApiError> {
    list_transactions_of(&st, &ctx, None)
}

/// `GET /api/v4/customers/{id}/transactions`.
pub(crate) async fn transactions(
    State(st): State<Arc<Inner>>,
    Path(id): Path<String>,
    ctx: Ctx,
) -> Result<Response, ApiError> {
    let id: u64 = id.parse().map_err(|_| ApiError::NotFound)?;
    list_transactions_of(&st, &ctx, Some(id))
}

/// A validated purchase: (request id, price, comment, completed_at, next date, next price,
/// catalog elements).
type TxChange = (
    String,
    i64,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Vec<(u64, u32)>,
);

fn validate_transaction(d: &AmoData, item: &Value, index: usize) -> Result<TxChange, Value> {
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
            "Transactions cannot be updated; create a new one.",
        );
    }
    let price = get_i64(item, "price", &mut errs, Some(0));
    if item.get("price").is_none_or(Value::is_null) {
        errs.blank("price");
    }
    let comment = get_str(item, "comment", &mut errs);
    let completed_at = get_i64(item, "completed_at", &mut errs, Some(0));
    let next_date = get_i64(item, "next_date", &mut errs, Some(0));
    let next_price = get_i64(item, "next_price", &mut errs, Some(0));
    let mut elements = Vec::new();
    if let Some(emb) = item.get("_embedded")
        && let Some(list) = emb.get("catalog_elements")
    {
        match list.as_array() {
            None => errs.invalid_type("_embedded.catalog_elements", "array"),
            Some(list) => {
                for (k, e) in list.iter().enumerate() {
                    let p = format!("_embedded.catalog_elements.{k}");
                    let id = e.get("id").and_then(Value::as_u64);
                    match id {
                        Some(id) if d.catalog.elements.contains_key(&id) => {}
                        Some(_) => errs.push("NotFound", &format!("{p}.id"), "Entity not found."),
                        None => errs.invalid_type(&format!("{p}.id"), "int"),
                    }
                    let meta = e.get("metadata");
                    if meta
                        .and_then(|m| m.get("catalog_id"))
                        .and_then(Value::as_u64)
                        != Some(d.catalog.id)
                    {
                        errs.choice(&format!("{p}.metadata.catalog_id"));
                    }
                    let quantity = match meta.and_then(|m| m.get("quantity")) {
                        None | Some(Value::Null) => 1,
                        Some(q) => match q.as_u64() {
                            Some(q) if q > 0 => q as u32,
                            _ => {
                                errs.invalid_type(
                                    &format!("{p}.metadata.quantity"),
                                    "positive int",
                                );
                                1
                            }
                        },
                    };
                    elements.push((id.unwrap_or_default(), quantity));
                }
            }
        }
    }
    if !errs.0.is_empty() {
        return Err(item_errors(&rid, errs.0));
    }
    Ok((
        rid,
        price.unwrap_or_default(),
        comment,
        completed_at,
        next_date,
        next_price,
        elements,
    ))
}

/// `POST /api/v4/customers/{id}/transactions[?accrue_bonus=true|false]`: purchases of one
/// customer; `next_date` / `next_price` of an item move the customer's.
pub(crate) async fn create_transactions(
    State(st): State<Arc<Inner>>,
    Path(id): Path<String>,
    ctx: Ctx,
    body: Bytes,
) -> Result<Response, ApiError> {
    let id: u64 = id.parse().map_err(|_| ApiError::NotFound)?;
    match ctx.q.get(&["accrue_bonus"]) {
        None | Some("true" | "false") => {}
        Some(v) => {
            return Err(ApiError::BadRequest(format!(
                "invalid value {v:?} of query parameter accrue_bonus (true or false)"
            )));
        }
    }
    let items = parse_batch(&body)?;
    if items.len() > MAX_CUSTOMERS_BATCH {
        return Err(ApiError::BadRequest(format!(
            "too many transactions in one request: {} (at most {MAX_CUSTOMERS_BATCH})",
            items.len()
        )));
    }
    let now = st.now();
    let mut d = st.write();
    check_enabled(&d)?;
    if !d.customers.contains_key(&id) {
        return Err(ApiError::NotFound);
    }
    let by = d.account.current_user_id;
    let txs = validate_all(&items, |item, i| validate_transaction(&d, item, i))
        .map_err(|errors| reject(&st, errors))?;
    let mut out = Vec::new();
    for (rid, price, comment, completed_at, next_date, next_price, elements) in txs {
        let tid = d.new_id();
        d.transactions.entry(id).or_default().push(AmoTransaction {
            id: tid,
            customer_id: id,
            price,
            comment,
            completed_at: completed_at.unwrap_or(now),
            created_by: by,
            created_at: now,
            catalog_elements: elements,
        });
        if let Some(c) = d.customers.get_mut(&id) {
            if let Some(n) = next_date {
                c.next_date = n;
            }
            if let Some(p) = next_price {
                c.next_price = p;
            }
            c.updated_at = now.max(c.created_at);
            c.updated_by = by;
        }
        st.record_writes(|w| {
            w.entities_created.push(super::writes::EntityCreated {
                entity_type: "customers/transactions".into(),
                id: tid,
                request_id: rid.clone(),
            })
        });
        out.push(json!({"id": tid, "customer_id": id, "request_id": rid,
            "_links": {"self": {"href": format!("{}/api/v4/customers/transactions/{tid}", ctx.base)}}}));
    }
    st.record_writes(|w| w.requests_applied += 1);
    Ok(batch_response(&ctx, "transactions", out))
}
