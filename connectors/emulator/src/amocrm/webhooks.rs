//! Outgoing account webhooks (`docs/amocrm.md` of this crate, §5) and the subscriptions API
//! `GET/POST/DELETE /api/v4/webhooks` (§4.10).
//!
//! Every write lock on the account's data is a [`WriteGuard`]: when it is released, the
//! changes it made (the events it appended, the leads and contacts it touched or removed) are
//! turned into amoCRM's form-urlencoded webhook bodies and queued, one body per subscribed
//! destination, on the emulator's [`crate::delivery::Delivery`]. Request handlers and library
//! mutations are therefore covered alike, and never wait for a delivery.
//!
//! # Mapping (choices where the doc is silent)
//! - `*_added` → `add`, `*_deleted` → `delete`, `*_restored` → `restore`;
//!   `lead_status_changed` → `leads[status]` (with `old_status_id`, `old_pipeline_id`);
//!   `entity_responsible_changed` on a lead → `leads[responsible]` (with
//!   `old_responsible_user_id`); any other change (price, name, fields, tags, a lost link) →
//!   `update`. A pure status (or responsible) change sends only `status` (`responsible`); a
//!   status change together with another change sends both. A created entity sends only
//!   `add`, a deleted one only `delete` (`id`, plus `status_id`/`pipeline_id` for leads).
//! - Entity keys: `leads`, `contacts`, `companies`, `customers`, `task` (tasks: key UNCERTAIN
//!   in the doc); setting codes `{action}_{entity}` (`add_lead`, `status_lead`,
//!   `update_contact`, `add_task`...).
//! - All entries of one write that a destination subscribes to go in one POST, grouped by
//!   entity and action (`leads[update][0]`, `leads[update][1]`, ...), then the `account`
//!   block. Disabled subscriptions and subscriptions without a matching code get nothing.
use super::Inner;
use super::api::Ctx;
use super::error::{ApiError, hal};
use super::state::*;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, RwLockWriteGuard};

/// `User-Agent` of amoCRM's webhook client.
pub(crate) const USER_AGENT: &str = "amoCRM-WebHook-client/1.0";

/// Every setting code the subscriptions API accepts.
const CODES: &[&str] = &[
    "add_lead",
    "update_lead",
    "delete_lead",
    "restore_lead",
    "status_lead",
    "responsible_lead",
    "note_lead",
    "add_contact",
    "update_contact",
    "delete_contact",
    "restore_contact",
    "note_contact",
    "add_company",
    "update_company",
    "delete_company",
    "restore_company",
    "note_company",
    "add_customer",
    "update_customer",
    "delete_customer",
    "note_customer",
    "add_task",
    "update_task",
    "delete_task",
    "add_talk",
    "update_talk",
    "add_message",
    "add_unsorted",
    "delete_unsorted",
];

/// The write lock on the account's data; emits the webhooks of the write when released.
pub(crate) struct WriteGuard<'a> {
    guard: RwLockWriteGuard<'a, AmoData>,
    inner: &'a Inner,
    events_from: usize,
}

impl<'a> WriteGuard<'a> {
    pub(crate) fn new(guard: RwLockWriteGuard<'a, AmoData>, inner: &'a Inner) -> Self {
        let events_from = guard.events.len();
        Self {
            guard,
            inner,
            events_from,
        }
    }
}

impl Deref for WriteGuard<'_> {
    type Target = AmoData;
    fn deref(&self) -> &AmoData {
        &self.guard
    }
}

impl DerefMut for WriteGuard<'_> {
    fn deref_mut(&mut self) -> &mut AmoData {
        &mut self.guard
    }
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        let changes = std::mem::take(&mut self.guard.changes);
        if self.guard.webhooks.is_empty() {
            return;
        }
        let d: &AmoData = &self.guard;
        let from = self.events_from.min(d.events.len());
        let entries = collect(d, &d.events[from..], &changes);
        if entries.is_empty() {
            return;
        }
        let mut hooks: Vec<&AmoWebhook> = d.webhooks.iter().filter(|w| !w.disabled).collect();
        hooks.sort_by_key(|w| (w.sort, w.id));
        for w in hooks {
            let mine: Vec<&Entry> = entries
                .iter()
                .filter(|e| w.settings.iter().any(|s| *s == e.code()))
                .collect();
            if mine.is_empty() {
                continue;
            }
            let body = form_body(d, &mine);
            self.inner
                .delivery
                .enqueue(&w.destination, "application/x-www-form-urlencoded", body);
        }
    }
}

/// One entity in one action of a webhook.
struct Entry {
    /// `lead`, `contact`, `company`, `customer`, `task`.
    entity: String,
    /// `add`, `update`, `delete`, `restore`, `status`, `responsible`.
    action: &'static str,
    id: u64,
    /// (old pipeline, old status) for `status`.
    old_status: Option<(u64, u64)>,
    /// Old responsible for `responsible`.
    old_responsible: Option<u64>,
    /// (status, pipeline) of a deleted lead.
    deleted_lead: Option<(u64, u64)>,
}

impl Entry {
    fn code(&self) -> String {
        format!("{}_{}", self.action, self.entity)
    }
}

#[derive(Default)]
struct Seen {
    added: bool,
    deleted: bool,
    restored: bool,
    status: Option<(u64, u64)>,
    responsible: Option<u64>,
    other: bool,
}

fn u64_at(v: &Value, path: &[&str]) -> Option<u64> {
    let mut cur = v.get(0)?;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_u64()
}

/// The webhook entries of one write.
fn collect(d: &AmoData, events: &[AmoEvent], changes: &ChangeLog) -> Vec<Entry> {
    let mut order: Vec<(String, u64)> = Vec::new();
    let mut seen: HashMap<(String, u64), Seen> = HashMap::new();
    let mut slot = |entity: &str, id: u64| -> (String, u64) {
        let k = (entity.to_owned(), id);
        if !seen.contains_key(&k) {
            order.push(k.clone());
            seen.insert(k.clone(), Seen::default());
        }
        k
    };
    let mut marks: Vec<((String, u64), &AmoEvent)> = Vec::new();
    for e in events {
        marks.push((slot(&e.entity_type, e.entity_id), e));
    }
    let mut touched: Vec<(String, u64)> = Vec::new();
    for &id in &changes.touched_leads {
        touched.push(slot("lead", id));
    }
    for &id in &changes.touched_contacts {
        touched.push(slot("contact", id));
    }
    for (k, e) in marks {
        let s = seen.entry(k).or_default();
        let t = e.event_type.as_str();
        if t.ends_with("_added") {
            s.added = true;
        } else if t.ends_with("_deleted") {
            s.deleted = true;
        } else if t.ends_with("_restored") {
            s.restored = true;
        } else if t == "lead_status_changed" {
            let old = (
                u64_at(&e.value_before, &["lead_status", "pipeline_id"]).unwrap_or(0),
                u64_at(&e.value_before, &["lead_status", "id"]).unwrap_or(0),
            );
            s.status.get_or_insert(old);
        } else if t == "entity_responsible_changed" && e.entity_type == "lead" {
            let old = u64_at(&e.value_before, &["responsible_user", "id"]).unwrap_or(0);
            s.responsible.get_or_insert(old);
        } else {
            s.other = true;
        }
    }
    for k in touched {
        let s = seen.entry(k).or_default();
        if !s.added && !s.deleted && !s.restored && s.status.is_none() && s.responsible.is_none() {
            s.other = true;
        }
    }
    let removed: HashMap<u64, (u64, u64)> = changes
        .removed_leads
        .iter()
        .map(|&(id, s, p)| (id, (s, p)))
        .collect();
    let mut out = Vec::new();
    for (entity, id) in order {
        let Some(s) = seen.remove(&(entity.clone(), id)) else {
            continue;
        };
        let entry = |action: &'static str| Entry {
            entity: entity.clone(),
            action,
            id,
            old_status: s.status,
            old_responsible: s.responsible,
            deleted_lead: removed.get(&id).copied().filter(|_| entity == "lead"),
        };
        if s.deleted {
            if !s.added {
                out.push(entry("delete"));
            }
            continue;
        }
        if s.added {
            out.push(entry("add"));
            continue;
        }
        if s.restored {
            out.push(entry("restore"));
        }
        if s.status.is_some() {
            out.push(entry("status"));
        }
        if s.responsible.is_some() {
            out.push(entry("responsible"));
        }
        if s.other {
            out.push(entry("update"));
        }
    }
    // Entities that no longer exist (other than deletions) cannot be described.
    out.retain(|e| e.action == "delete" || exists(d, &e.entity, e.id));
    out
}

fn exists(d: &AmoData, entity: &str, id: u64) -> bool {
    match entity {
        "lead" => d.leads.contains_key(&id),
        "contact" => d.contacts.contains_key(&id),
        "company" => d.companies.contains_key(&id),
        "task" => d.tasks.contains_key(&id),
        _ => true,
    }
}

fn entity_key(entity: &str) -> String {
    match entity {
        "lead" => "leads".into(),
        "contact" => "contacts".into(),
        "company" => "companies".into(),
        "task" => "task".into(),
        other => format!("{other}s"),
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Bool(b) => if *b { "1" } else { "0" }.into(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Appends `[custom_fields][i][id|name|values][j][value|enum]`.
fn custom_fields(out: &mut Vec<(String, String)>, p: &str, cf: &[AmoFieldValue]) {
    for (i, f) in cf.iter().enumerate() {
        out.push((
            format!("{p}[custom_fields][{i}][id]"),
            f.field_id.to_string(),
        ));
        out.push((
            format!("{p}[custom_fields][{i}][name]"),
            f.field_name.clone(),
        ));
        if let Some(code) = &f.field_code {
            out.push((format!("{p}[custom_fields][{i}][code]"), code.clone()));
        }
        for (j, v) in f.values.iter().enumerate() {
            out.push((
                format!("{p}[custom_fields][{i}][values][{j}][value]"),
                text(&v.value),
            ));
            if let Some(e) = v.enum_id {
                out.push((
                    format!("{p}[custom_fields][{i}][values][{j}][enum]"),
                    e.to_string(),
                ));
            }
        }
    }
}

fn tags(out: &mut Vec<(String, String)>, p: &str, tags: &[AmoTag]) {
    for (i, t) in tags.iter().enumerate() {
        out.push((format!("{p}[tags][{i}][id]"), t.id.to_string()));
        out.push((format!("{p}[tags][{i}][name]"), t.name.clone()));
    }
}

/// The fields of one entry under the prefix `p` (`leads[status][0]`).
fn entry_fields(d: &AmoData, e: &Entry, p: &str, out: &mut Vec<(String, String)>) {
    let account_id = d.account.id.to_string();
    let mut kv = |k: &str, v: String| out.push((format!("{p}[{k}]"), v));
    if e.action == "delete" {
        kv("id", e.id.to_string());
        if let Some((s, pl)) = e.deleted_lead {
            kv("status_id", s.to_string());
            kv("pipeline_id", pl.to_string());
        }
        return;
    }
    match e.entity.as_str() {
        "lead" => {
            let Some(l) = d.leads.get(&e.id) else { return };
            kv("id", l.id.to_string());
            kv("name", l.name.clone());
            kv("status_id", l.status_id.to_string());
            if e.action == "status"
                && let Some((op, os)) = e.old_status
            {
                kv("old_status_id", os.to_string());
                kv("pipeline_id", l.pipeline_id.to_string());
                kv("old_pipeline_id", op.to_string());
            } else {
                kv("pipeline_id", l.pipeline_id.to_string());
            }
            kv("price", l.price.to_string());
            kv("responsible_user_id", l.responsible_user_id.to_string());
            if e.action == "responsible"
                && let Some(or) = e.old_responsible
            {
                kv("old_responsible_user_id", or.to_string());
            }
            kv("last_modified", l.updated_at.to_string());
            kv("modified_user_id", l.updated_by.to_string());
            kv("created_user_id", l.created_by.to_string());
            kv("date_create", l.created_at.to_string());
            kv("created_at", l.created_at.to_string());
            kv("updated_at", l.updated_at.to_string());
            if let Some(c) = l.closed_at {
                kv("date_close", c.to_string());
            }
            kv("account_id", account_id);
            if let Some(c) = l.company_id {
                kv("company_id", c.to_string());
            }
            custom_fields(out, p, &l.custom_fields);
            tags(out, p, &l.tags);
        }
        "contact" => {
            let Some(c) = d.contacts.get(&e.id) else {
                return;
            };
            kv("id", c.id.to_string());
            kv("name", c.name.clone());
            kv("first_name", c.first_name.clone());
            kv("last_name", c.last_name.clone());
            kv("responsible_user_id", c.responsible_user_id.to_string());
            kv("date_create", c.created_at.to_string());
            kv("last_modified", c.updated_at.to_string());
            kv("created_user_id", c.created_by.to_string());
            kv("modified_user_id", c.updated_by.to_string());
            kv("created_at", c.created_at.to_string());
            kv("updated_at", c.updated_at.to_string());
            kv("account_id", account_id);
            if let Some(co) = c.company_id {
                kv("linked_company_id", co.to_string());
            }
            kv("type", "contact".into());
            custom_fields(out, p, &c.custom_fields);
            tags(out, p, &c.tags);
        }
        "company" => {
            let Some(c) = d.companies.get(&e.id) else {
                return;
            };
            kv("id", c.id.to_string());
            kv("name", c.name.clone());
            kv("responsible_user_id", c.responsible_user_id.to_string());
            kv("date_create", c.created_at.to_string());
            kv("last_modified", c.updated_at.to_string());
            kv("created_user_id", c.created_by.to_string());
            kv("modified_user_id", c.updated_by.to_string());
            kv("created_at", c.created_at.to_string());
            kv("updated_at", c.updated_at.to_string());
            kv("account_id", account_id);
            kv("type", "company".into());
            custom_fields(out, p, &c.custom_fields);
            tags(out, p, &c.tags);
        }
        "task" => {
            let Some(t) = d.tasks.get(&e.id) else { return };
            kv("id", t.id.to_string());
            let element_type = match t.entity_type.as_deref() {
                Some("contacts") => "1",
                Some("leads") => "2",
                Some("companies") => "3",
                Some("customers") => "12",
                _ => "0",
            };
            kv("element_type", element_type.into());
            kv("element_id", t.entity_id.unwrap_or(0).to_string());
            kv("task_type", t.task_type_id.to_string());
            kv("text", t.text.clone());
            kv("status", u8::from(t.is_completed).to_string());
            kv("responsible_user_id", t.responsible_user_id.to_string());
            kv("complete_till", t.complete_till.to_string());
            kv("created_user_id", t.created_by.to_string());
            kv("modified_user_id", t.updated_by.to_string());
            kv("date_create", t.created_at.to_string());
            kv("last_modified", t.updated_at.to_string());
            kv("created_at", t.created_at.to_string());
            kv("updated_at", t.updated_at.to_string());
            kv("account_id", account_id);
        }
        _ => {
            kv("id", e.id.to_string());
            kv("account_id", account_id);
        }
    }
}

/// The form-urlencoded body of one POST.
fn form_body(d: &AmoData, entries: &[&Entry]) -> String {
    // Group by (entity key, action) in order of first appearance.
    let mut groups: Vec<((String, &'static str), Vec<&Entry>)> = Vec::new();
    for e in entries {
        let k = (entity_key(&e.entity), e.action);
        match groups.iter_mut().find(|(g, _)| *g == k) {
            Some((_, v)) => v.push(e),
            None => groups.push((k, vec![e])),
        }
    }
    let mut pairs = Vec::new();
    for ((key, action), es) in &groups {
        for (i, e) in es.iter().enumerate() {
            entry_fields(d, e, &format!("{key}[{action}][{i}]"), &mut pairs);
        }
    }
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in &pairs {
        s.append_pair(k, v);
    }
    s.append_pair("account[subdomain]", &d.account.subdomain);
    s.append_pair("account[id]", &d.account.id.to_string());
    s.append_pair(
        "account[_links][self]",
        &format!("https://{}.amocrm.ru", d.account.subdomain),
    );
    s.finish()
}

/// Adds or replaces (same destination) a subscription; returns it.
pub(crate) fn subscribe(
    d: &mut AmoData,
    destination: &str,
    settings: Vec<String>,
    sort: i64,
    now: i64,
) -> AmoWebhook {
    let by = d.account.current_user_id;
    let account_id = d.account.id;
    if let Some(w) = d.webhooks.iter_mut().find(|w| w.destination == destination) {
        w.settings = settings;
        w.sort = sort;
        w.disabled = false;
        w.updated_at = now;
        return w.clone();
    }
    let id = d.webhooks.iter().map(|w| w.id).max().unwrap_or(0) + 1;
    let w = AmoWebhook {
        id,
        destination: destination.to_owned(),
        settings,
        sort,
        disabled: false,
        created_by: by,
        created_at: now,
        updated_at: now,
        account_id,
    };
    d.webhooks.push(w.clone());
    w
}

fn model(w: &AmoWebhook) -> Value {
    json!({
        "id": w.id, "destination": w.destination, "created_by": w.created_by,
        "created_at": w.created_at, "updated_at": w.updated_at, "sort": w.sort,
        "disabled": w.disabled, "settings": w.settings, "account_id": w.account_id,
    })
}

fn parse_object(body: &Bytes) -> Result<serde_json::Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::BadRequest(
            "request body must be a JSON object".into(),
        )),
        Err(e) => Err(ApiError::BadRequest(format!(
            "request body is not valid JSON: {e}"
        ))),
    }
}

fn destination_of(m: &serde_json::Map<String, Value>) -> Result<String, ApiError> {
    match m.get("destination") {
        Some(Value::String(s)) if s.starts_with("http://") || s.starts_with("https://") => {
            Ok(s.clone())
        }
        _ => Err(ApiError::Validation(vec![super::error::field_error(
            "InvalidUrl",
            "destination",
            "This value is not a valid URL.",
        )])),
    }
}

/// `GET /api/v4/webhooks[?filter[destination]=..]`: 204 when none.
pub(crate) async fn list(State(st): State<Arc<Inner>>, ctx: Ctx) -> Result<Response, ApiError> {
    let filter = ctx.raw_query.as_deref().and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "filter[destination]")
            .map(|(_, v)| v.into_owned())
    });
    let d = st.read();
    let hooks: Vec<Value> = d
        .webhooks
        .iter()
        .filter(|w| filter.as_deref().is_none_or(|f| f == w.destination))
        .map(model)
        .collect();
    if hooks.is_empty() {
        return Err(ApiError::NoContent);
    }
    Ok(hal(&json!({
        "_total_items": hooks.len(),
        "_links": {"self": {"href": format!("{}/api/v4/webhooks", ctx.base)}},
        "_embedded": {"webhooks": hooks},
    })))
}

/// `POST /api/v4/webhooks {"destination", "settings", "sort"?}`: subscribes (or updates the
/// subscription of the same destination) and answers the model.
pub(crate) async fn create(
    State(st): State<Arc<Inner>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let m = parse_object(&body)?;
    let destination = destination_of(&m)?;
    let settings: Vec<String> = match m.get("settings") {
        Some(Value::Array(a)) if !a.is_empty() => a.iter().map(text).collect(),
        _ => {
            return Err(ApiError::Validation(vec![super::error::field_error(
                "NotBlank",
                "settings",
                "This value should not be blank.",
            )]));
        }
    };
    if let Some(bad) = settings.iter().position(|s| !CODES.contains(&s.as_str())) {
        return Err(ApiError::Validation(vec![super::error::field_error(
            "NotSupportedChoice",
            &format!("settings.{bad}"),
            "The value you selected is not a valid choice.",
        )]));
    }
    let sort = m.get("sort").and_then(Value::as_i64).unwrap_or(1);
    let now = st.now();
    let w = subscribe(&mut st.write(), &destination, settings, sort, now);
    Ok(hal(&model(&w)))
}

/// `DELETE /api/v4/webhooks {"destination"}`: 204 (also when nothing was subscribed).
pub(crate) async fn delete(
    State(st): State<Arc<Inner>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let m = parse_object(&body)?;
    let destination = destination_of(&m)?;
    st.write().webhooks.retain(|w| w.destination != destination);
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::NO_CONTENT;
    Ok(r)
}
