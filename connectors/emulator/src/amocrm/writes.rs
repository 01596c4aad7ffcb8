//! Write endpoints: `POST/PATCH /api/v4/tasks`, `POST/PATCH /api/v4/leads`,
//! `PATCH /api/v4/leads/{id}`, `PATCH /api/v4/contacts[/{id}]`, `PATCH /api/v4/companies`,
//! and the [`Writes`] record
//! that tests inspect.
//!
//! A bulk write is validated as a whole first: when any item is invalid the answer is a 400
//! with `validation-errors` (one entry per failing item, with its `request_id` and the paths
//! of its errors) and nothing is applied. Otherwise every item is applied, `updated_at` is
//! bumped, events are recorded, and the answer echoes each item's `request_id` (the item's
//! index when the client sent none). At most 250 items per request.
//!
//! PATCH is partial: omitted fields keep their values; `custom_fields_values` changes only the
//! listed fields and `"values": null` clears one; `_embedded.tags` replaces the whole tag set
//! (`null` detaches all). A lead moved with `status_id` alone stays in its pipeline (142/143
//! belong to every pipeline); with `pipeline_id` alone it lands on that pipeline's first stage.
use super::Inner;
use super::api::Ctx;
use super::error::{ApiError, field_error, hal, item_errors};
use super::state::*;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::Response;
use serde::Serialize;
use serde_json::{Map, Value, json};
use std::sync::Arc;

/// Most items in one write request.
pub const MAX_BATCH: usize = 250;

/// A task created through the API.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskCreated {
    /// New task id.
    pub id: u64,
    /// `leads`, `contacts`, `companies`, `customers`, or none.
    pub entity_type: Option<String>,
    /// Attached entity.
    pub entity_id: Option<u64>,
    /// Responsible user.
    pub responsible_user_id: u64,
    /// Task type.
    pub task_type_id: u64,
    /// Text.
    pub text: String,
    /// Due (unix s).
    pub complete_till: i64,
    /// The item's request id as echoed.
    pub request_id: String,
}

/// A task changed through the API.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskUpdated {
    /// Task id.
    pub id: u64,
    /// New completion flag, when sent.
    pub is_completed: Option<bool>,
    /// Result text, when sent.
    pub result_text: Option<String>,
}

/// A lead moved to another pipeline/status through the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeadMove {
    /// Lead id.
    pub lead_id: u64,
    /// Pipeline before.
    pub from_pipeline_id: u64,
    /// Status before.
    pub from_status_id: u64,
    /// Pipeline after.
    pub to_pipeline_id: u64,
    /// Status after.
    pub to_status_id: u64,
    /// When (unix s).
    pub at: i64,
}

/// A custom field written through the API.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldUpdate {
    /// `leads` or `contacts`.
    pub entity_type: String,
    /// Entity id.
    pub entity_id: u64,
    /// Field id.
    pub field_id: u64,
    /// The stored values (`None` = cleared).
    pub values: Option<Vec<Value>>,
}

/// A tag set replaced through the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TagUpdate {
    /// `leads` or `contacts`.
    pub entity_type: String,
    /// Entity id.
    pub entity_id: u64,
    /// Tag names after the write.
    pub tags: Vec<String>,
}

/// Any entity write, listing the top-level keys the item carried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EntityUpdate {
    /// `leads` or `contacts`.
    pub entity_type: String,
    /// Entity id.
    pub entity_id: u64,
    /// Keys written (`price`, `status_id`, `custom_fields_values`, `_embedded.tags`...).
    pub fields: Vec<String>,
}

/// A lead created through the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeadCreated {
    /// New lead id.
    pub id: u64,
    /// Main contact, when linked.
    pub contact_id: Option<u64>,
    /// Pipeline.
    pub pipeline_id: u64,
    /// Status.
    pub status_id: u64,
    /// Price.
    pub price: i64,
    /// The item's request id as echoed.
    pub request_id: String,
}

/// A customer created or changed through the API (the state after the write).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CustomerWrite {
    /// Customer id.
    pub id: u64,
    /// Keys the item carried (`next_date`, `status_id`, `_embedded.contacts`...).
    pub fields: Vec<String>,
    /// Status after the write.
    pub status_id: u64,
    /// Status before the write (`None` for a new customer).
    pub from_status_id: Option<u64>,
    /// Next purchase date after the write (unix s).
    pub next_date: i64,
    /// Next purchase amount after the write.
    pub next_price: i64,
    /// Main contact after the write.
    pub contact_id: Option<u64>,
    /// Responsible user after the write.
    pub responsible_user_id: u64,
    /// The item's request id as echoed.
    pub request_id: String,
    /// When (unix s).
    pub at: i64,
}

/// A custom field created through the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldCreated {
    /// `leads`, `contacts`, `companies` or `customers`.
    pub entity_type: String,
    /// New field id.
    pub id: u64,
    /// Name.
    pub name: String,
    /// Type (`text`, `select`, `date`...).
    pub field_type: String,
    /// Enum values (select fields).
    pub enums: Vec<String>,
    /// Code, when sent.
    pub code: Option<String>,
    /// The item's request id as echoed.
    pub request_id: String,
}

/// A contact, company, note or transaction created through the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EntityCreated {
    /// `contacts`, `companies`, `leads/notes`, `customers/transactions`, ...
    pub entity_type: String,
    /// New id.
    pub id: u64,
    /// The item's request id as echoed.
    pub request_id: String,
}

/// Everything written through the API, in order (also served at `GET /_emulator/writes`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Writes {
    /// Tasks created.
    pub tasks_created: Vec<TaskCreated>,
    /// Tasks changed.
    pub tasks_updated: Vec<TaskUpdated>,
    /// Lead moves.
    pub lead_moves: Vec<LeadMove>,
    /// Custom field writes.
    pub field_updates: Vec<FieldUpdate>,
    /// Tag set replacements.
    pub tag_updates: Vec<TagUpdate>,
    /// Every entity write.
    pub entity_updates: Vec<EntityUpdate>,
    /// Leads created.
    pub leads_created: Vec<LeadCreated>,
    /// Customers created.
    pub customers_created: Vec<CustomerWrite>,
    /// Customers changed.
    pub customers_updated: Vec<CustomerWrite>,
    /// Custom fields created.
    pub fields_created: Vec<FieldCreated>,
    /// Customers mode switches (`PATCH /api/v4/customers/mode`): the account's mode after.
    pub customers_mode_changes: Vec<String>,
    /// Contacts, companies, notes and transactions created.
    pub entities_created: Vec<EntityCreated>,
    /// Links made through `/link`.
    pub links_created: u64,
    /// Write requests applied.
    pub requests_applied: u64,
    /// Write requests rejected with 400 (nothing applied).
    pub requests_rejected: u64,
}

impl Writes {
    /// Records an update of one `entity_type` entity: its custom field values, its new tags
    /// (when the update set them) and the keys it touched.
    fn record_update(
        &mut self,
        entity_type: &str,
        id: u64,
        cf: &[CfChange],
        tags: Option<&[AmoTag]>,
        keys: &[String],
    ) {
        for c in cf {
            self.field_updates.push(FieldUpdate {
                entity_type: entity_type.into(),
                entity_id: id,
                field_id: c.def.id,
                values: c
                    .values
                    .as_ref()
                    .filter(|v| !v.is_empty())
                    .map(|v| v.iter().map(|x| x.value.clone()).collect()),
            });
        }
        if let Some(t) = tags {
            self.tag_updates.push(TagUpdate {
                entity_type: entity_type.into(),
                entity_id: id,
                tags: t.iter().map(|t| t.name.clone()).collect(),
            });
        }
        self.entity_updates.push(EntityUpdate {
            entity_type: entity_type.into(),
            entity_id: id,
            fields: keys.to_vec(),
        });
    }
}

/// Errors of one item.
#[derive(Default)]
pub(super) struct Errs(pub(super) Vec<Value>);

impl Errs {
    pub(super) fn push(&mut self, code: &str, path: &str, detail: &str) {
        self.0.push(field_error(code, path, detail));
    }
    pub(super) fn invalid_type(&mut self, path: &str, ty: &str) {
        self.push(
            "InvalidType",
            path,
            &format!("This value should be of type {ty}."),
        );
    }
    pub(super) fn choice(&mut self, path: &str) {
        self.push(
            "NotSupportedChoice",
            path,
            "The value you selected is not a valid choice.",
        );
    }
    pub(super) fn blank(&mut self, path: &str) {
        self.push("NotBlank", path, "This value should not be blank.");
    }
}

pub(super) fn request_id(item: &Value, index: usize) -> String {
    match item.get("request_id") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => index.to_string(),
    }
}

pub(super) fn parse_json(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("request body is not valid JSON: {e}")))
}

pub(super) fn parse_batch(body: &Bytes) -> Result<Vec<Value>, ApiError> {
    match parse_json(body)? {
        Value::Array(items) if items.is_empty() => {
            Err(ApiError::BadRequest("empty request".into()))
        }
        Value::Array(items) if items.len() > MAX_BATCH => Err(ApiError::BadRequest(format!(
            "too many entities in one request: {} (at most {MAX_BATCH})",
            items.len()
        ))),
        Value::Array(items) => Ok(items),
        _ => Err(ApiError::BadRequest(
            "request body must be a JSON array".into(),
        )),
    }
}

pub(super) fn get_u64(item: &Value, key: &str, errs: &mut Errs) -> Option<u64> {
    match item.get(key) {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(n) => Some(n),
            None => {
                errs.invalid_type(key, "int");
                None
            }
        },
    }
}

pub(super) fn get_str(item: &Value, key: &str, errs: &mut Errs) -> Option<String> {
    match item.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            errs.invalid_type(key, "string");
            None
        }
    }
}

/// A validated custom field change.
pub(super) struct CfChange {
    pub(super) def: AmoFieldDef,
    pub(super) values: Option<Vec<AmoValue>>,
}

pub(super) fn validate_cf(defs: &[AmoFieldDef], v: &Value, errs: &mut Errs) -> Vec<CfChange> {
    let Some(arr) = v.as_array() else {
        if !v.is_null() {
            errs.invalid_type("custom_fields_values", "array");
        }
        return vec![];
    };
    let mut out = Vec::new();
    for (i, f) in arr.iter().enumerate() {
        let p = format!("custom_fields_values.{i}");
        let def = match (f.get("field_id"), f.get("field_code")) {
            (Some(id), _) if !id.is_null() => match id.as_u64() {
                Some(id) => defs.iter().find(|d| d.id == id),
                None => {
                    errs.invalid_type(&format!("{p}.field_id"), "int");
                    continue;
                }
            },
            (_, Some(Value::String(code))) => defs
                .iter()
                .find(|d| d.code.as_deref() == Some(code.as_str())),
            _ => {
                errs.blank(&format!("{p}.field_id"));
                continue;
            }
        };
        let Some(def) = def else {
            let path = if f.get("field_id").is_some_and(|v| !v.is_null()) {
                "field_id"
            } else {
                "field_code"
            };
            errs.choice(&format!("{p}.{path}"));
            continue;
        };
        let values = match f.get("values") {
            None => {
                errs.blank(&format!("{p}.values"));
                continue;
            }
            Some(Value::Null) => None,
            Some(Value::Array(vals)) => {
                let mut out_vals = Vec::new();
                for (j, val) in vals.iter().enumerate() {
                    let vp = format!("{p}.values.{j}");
                    if let Some(v) = validate_value(def, val, &vp, errs) {
                        out_vals.push(v);
                    }
                }
                Some(out_vals)
            }
            Some(_) => {
                errs.invalid_type(&format!("{p}.values"), "array");
                continue;
            }
        };
        out.push(CfChange {
            def: def.clone(),
            values,
        });
    }
    out
}

fn validate_value(def: &AmoFieldDef, val: &Value, p: &str, errs: &mut Errs) -> Option<AmoValue> {
    let plain = |value: Value| {
        Some(AmoValue {
            value,
            enum_id: None,
            enum_code: None,
        })
    };
    let raw = val.get("value");
    match def.field_type.as_str() {
        "select" | "radiobutton" | "multiselect" => {
            let by_id = val
                .get("enum_id")
                .and_then(Value::as_u64)
                .and_then(|id| def.enums.iter().find(|e| e.id == id));
            let by_value = raw
                .and_then(Value::as_str)
                .and_then(|s| def.enums.iter().find(|e| e.value == s));
            match by_id.or(by_value) {
                Some(e) => Some(AmoValue {
                    value: Value::String(e.value.clone()),
                    enum_id: Some(e.id),
                    enum_code: None,
                }),
                None => {
                    errs.choice(&format!("{p}.enum_id"));
                    None
                }
            }
        }
        "multitext" => {
            let Some(Value::String(s)) = raw else {
                errs.invalid_type(&format!("{p}.value"), "string");
                return None;
            };
            let e = match (
                val.get("enum_id").and_then(Value::as_u64),
                val.get("enum_code").and_then(Value::as_str),
            ) {
                (Some(id), _) => def.enums.iter().find(|e| e.id == id),
                (None, Some(code)) => def.enums.iter().find(|e| e.code.as_deref() == Some(code)),
                (None, None) => def.enums.iter().find(|e| e.code.as_deref() == Some("WORK")),
            };
            match e {
                Some(e) => Some(AmoValue {
                    value: Value::String(s.clone()),
                    enum_id: Some(e.id),
                    enum_code: e.code.clone(),
                }),
                None => {
                    let path = if val.get("enum_id").is_some() {
                        "enum_id"
                    } else {
                        "enum_code"
                    };
                    errs.choice(&format!("{p}.{path}"));
                    None
                }
            }
        }
        "checkbox" => match raw {
            Some(Value::Bool(b)) => plain(Value::Bool(*b)),
            _ => {
                errs.invalid_type(&format!("{p}.value"), "bool");
                None
            }
        },
        "date" | "date_time" | "birthday" => match raw {
            Some(Value::Number(n)) if n.as_i64().is_some() => plain(Value::Number(n.clone())),
            Some(Value::String(s)) if s.parse::<i64>().is_ok() => {
                plain(json!(s.parse::<i64>().unwrap_or_default()))
            }
            _ => {
                errs.invalid_type(&format!("{p}.value"), "int");
                None
            }
        },
        "numeric" => match raw {
            Some(Value::Number(n)) => plain(Value::String(n.to_string())),
            Some(Value::String(s)) if s.trim().parse::<f64>().is_ok() => {
                plain(Value::String(s.trim().to_owned()))
            }
            _ => {
                errs.invalid_type(&format!("{p}.value"), "numeric");
                None
            }
        },
        _ => match raw {
            Some(Value::String(s)) => plain(Value::String(s.clone())),
            Some(Value::Number(n)) => plain(Value::String(n.to_string())),
            _ => {
                errs.invalid_type(&format!("{p}.value"), "string");
                None
            }
        },
    }
}

pub(super) fn apply_cf(cf: &mut Vec<AmoFieldValue>, ch: &CfChange) {
    match &ch.values {
        None => cf.retain(|f| f.field_id != ch.def.id),
        Some(v) if v.is_empty() => cf.retain(|f| f.field_id != ch.def.id),
        Some(v) => {
            let new = value_of(&ch.def, v.clone());
            match cf.iter_mut().find(|f| f.field_id == ch.def.id) {
                Some(f) => *f = new,
                None => cf.push(new),
            }
        }
    }
}

pub(super) enum TagSpec {
    Id(u64),
    Name(String),
}

/// `_embedded.tags`: `Some(None)` = detach all, `Some(Some(specs))` = replace.
pub(super) fn validate_tags(
    d: &AmoData,
    emb: Option<&Value>,
    errs: &mut Errs,
) -> Option<Vec<TagSpec>> {
    let tags = emb?.get("tags")?;
    let Some(arr) = tags.as_array() else {
        if tags.is_null() {
            return Some(vec![]);
        }
        errs.invalid_type("_embedded.tags", "array");
        return None;
    };
    let mut out = Vec::new();
    for (k, t) in arr.iter().enumerate() {
        if let Some(id) = t.get("id").and_then(Value::as_u64) {
            if d.tag_by_id(id).is_some() {
                out.push(TagSpec::Id(id));
            } else {
                errs.choice(&format!("_embedded.tags.{k}.id"));
            }
        } else if let Some(name) = t
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.trim().is_empty())
        {
            out.push(TagSpec::Name(name.trim().to_owned()));
        } else {
            errs.blank(&format!("_embedded.tags.{k}.name"));
        }
    }
    Some(out)
}

pub(super) fn resolve_tags(d: &mut AmoData, specs: &[TagSpec]) -> Vec<AmoTag> {
    let mut out: Vec<AmoTag> = Vec::new();
    for s in specs {
        let tag = match s {
            TagSpec::Id(id) => d.tag_by_id(*id),
            TagSpec::Name(n) => Some(d.tag(n)),
        };
        if let Some(t) = tag
            && !out.iter().any(|x| x.id == t.id)
        {
            out.push(t);
        }
    }
    out
}

/// A validated lead write.
pub(super) struct LeadChange {
    id: u64,
    request_id: String,
    keys: Vec<String>,
    name: Option<String>,
    price: Option<i64>,
    responsible: Option<u64>,
    target: Option<(u64, u64)>,
    cf: Vec<CfChange>,
    tags: Option<Vec<TagSpec>>,
    contacts: Vec<AmoLeadContact>,
    company: Option<u64>,
}

/// Validates a lead item (`creating`: a POST item without `id`).
/// The contacts (the first is main unless one says `is_main`) and the company linked by a new
/// entity's `_embedded`, each checked to exist.
pub(super) fn validate_links(
    d: &AmoData,
    emb: Option<&Value>,
    errs: &mut Errs,
) -> (Vec<AmoLeadContact>, Option<u64>) {
    let mut contacts: Vec<AmoLeadContact> = Vec::new();
    let mut company = None;
    let Some(emb) = emb else {
        return (contacts, company);
    };
    if let Some(arr) = emb.get("contacts").and_then(Value::as_array) {
        for (k, c) in arr.iter().enumerate() {
            match c.get("id").and_then(Value::as_u64) {
                Some(cid) if d.contacts.contains_key(&cid) => contacts.push(AmoLeadContact {
                    id: cid,
                    is_main: c
                        .get("is_main")
                        .and_then(Value::as_bool)
                        .unwrap_or(contacts.is_empty()),
                }),
                Some(_) => errs.push(
                    "NotFound",
                    &format!("_embedded.contacts.{k}.id"),
                    "Entity not found.",
                ),
                None => errs.invalid_type(&format!("_embedded.contacts.{k}.id"), "int"),
            }
        }
    }
    if let Some(arr) = emb.get("companies").and_then(Value::as_array) {
        for (k, c) in arr.iter().enumerate().take(1) {
            match c.get("id").and_then(Value::as_u64) {
                Some(cid) if d.companies.contains_key(&cid) => company = Some(cid),
                Some(_) => errs.push(
                    "NotFound",
                    &format!("_embedded.companies.{k}.id"),
                    "Entity not found.",
                ),
                None => errs.invalid_type(&format!("_embedded.companies.{k}.id"), "int"),
            }
        }
    }
    (contacts, company)
}

/// The keys an item sets (`_embedded.*` spelled out), for the event log's changed fields.
pub(super) fn changed_keys(item: &Value, emb: Option<&Value>) -> Vec<String> {
    let mut keys: Vec<String> = item
        .as_object()
        .map(|o| {
            o.keys()
                .filter(|k| *k != "id" && *k != "request_id" && *k != "_embedded")
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    if let Some(e) = emb.and_then(Value::as_object) {
        keys.extend(e.keys().map(|k| format!("_embedded.{k}")));
    }
    keys
}

pub(super) fn validate_lead(
    d: &AmoData,
    item: &Value,
    index: usize,
    creating: bool,
) -> Result<LeadChange, Value> {
    let rid = request_id(item, index);
    let mut errs = Errs::default();
    if !item.is_object() {
        errs.invalid_type("", "object");
        return Err(item_errors(&rid, errs.0));
    }
    let mut existing = None;
    let mut id = 0;
    if !creating {
        match item.get("id") {
            None | Some(Value::Null) => errs.blank("id"),
            Some(v) => match v.as_u64() {
                None => errs.invalid_type("id", "int"),
                Some(i) => match d.leads.get(&i) {
                    Some(l) => {
                        id = i;
                        existing = Some(l);
                    }
                    None => errs.push("NotFound", "id", "Entity not found."),
                },
            },
        }
    }
    let name = get_str(item, "name", &mut errs);
    let price = match item.get("price") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_i64() {
            Some(p) if p >= 0 => Some(p),
            Some(_) => {
                errs.push(
                    "GreaterThanOrEqual",
                    "price",
                    "This value should be greater than or equal to 0.",
                );
                None
            }
            None => {
                errs.invalid_type("price", "int");
                None
            }
        },
    };
    let responsible = get_u64(item, "responsible_user_id", &mut errs);
    if let Some(r) = responsible
        && !d.users.contains_key(&r)
    {
        errs.choice("responsible_user_id");
    }
    let status = get_u64(item, "status_id", &mut errs);
    let pipeline = get_u64(item, "pipeline_id", &mut errs);
    let main = d
        .pipelines
        .values()
        .find(|p| p.is_main)
        .or(d.pipelines.values().next())
        .map_or(0, |p| p.id);
    let current_pipeline = existing.map_or(main, |l| l.pipeline_id);
    let target = match (pipeline, status) {
        (None, None) if creating => d
            .pipelines
            .get(&main)
            .and_then(AmoPipeline::first_open_status)
            .map(|s| (main, s)),
        (None, None) => None,
        (Some(p), s) => match d.pipelines.get(&p) {
            None => {
                errs.choice("pipeline_id");
                None
            }
            Some(pl) => match s {
                Some(s) if pl.has_status(s) => Some((p, s)),
                Some(_) => {
                    errs.choice("status_id");
                    None
                }
                None => pl.first_open_status().map(|s| (p, s)),
            },
        },
        (None, Some(s)) => {
            if d.status_valid(current_pipeline, s) {
                Some((current_pipeline, s))
            } else {
                errs.choice("status_id");
                None
            }
        }
    };
    let cf = match item.get("custom_fields_values") {
        Some(v) => validate_cf(&d.fields.leads, v, &mut errs),
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
    Ok(LeadChange {
        id,
        request_id: rid,
        keys,
        name,
        price,
        responsible,
        target,
        cf,
        tags,
        contacts,
        company,
    })
}

fn cf_event_value(ch: &CfChange) -> Value {
    let text = ch.values.as_ref().map(|v| {
        v.iter()
            .map(|x| {
                x.value
                    .as_str()
                    .map_or_else(|| x.value.to_string(), str::to_owned)
            })
            .collect::<Vec<_>>()
            .join(", ")
    });
    json!([{"custom_field_value": {"field_id": ch.def.id, "field_type": ch.def.field_type, "text": text}}])
}

/// Applies a validated change to an existing lead; records writes and events.
fn apply_lead(st: &Inner, d: &mut AmoData, ch: LeadChange, now: i64, by: u64) {
    let id = ch.id;
    let Some(old) = d.leads.get(&id).cloned() else {
        return;
    };
    if let Some((p, s)) = ch.target
        && (p, s) != (old.pipeline_id, old.status_id)
    {
        d.move_lead(id, p, s, now, by);
        st.record_writes(|w| {
            w.lead_moves.push(LeadMove {
                lead_id: id,
                from_pipeline_id: old.pipeline_id,
                from_status_id: old.status_id,
                to_pipeline_id: p,
                to_status_id: s,
                at: now,
            })
        });
    }
    if let Some(price) = ch.price
        && price != old.price
    {
        d.event(
            "sale_field_changed",
            id,
            "lead",
            by,
            now,
            json!([{"sale_field_value": {"sale": price}}]),
            json!([{"sale_field_value": {"sale": old.price}}]),
        );
    }
    if let Some(r) = ch.responsible
        && r != old.responsible_user_id
    {
        d.event(
            "entity_responsible_changed",
            id,
            "lead",
            by,
            now,
            json!([{"responsible_user": {"id": r}}]),
            json!([{"responsible_user": {"id": old.responsible_user_id}}]),
        );
    }
    for c in &ch.cf {
        d.event(
            "custom_field_value_changed",
            id,
            "lead",
            by,
            now,
            cf_event_value(c),
            json!([]),
        );
    }
    let new_tags = ch.tags.as_ref().map(|specs| resolve_tags(d, specs));
    if let Some(l) = d.leads.get_mut(&id) {
        if let Some(n) = &ch.name {
            l.name = n.clone();
        }
        if let Some(p) = ch.price {
            l.price = p;
        }
        if let Some(r) = ch.responsible {
            l.responsible_user_id = r;
        }
        for c in &ch.cf {
            apply_cf(&mut l.custom_fields, c);
        }
        if let Some(t) = &new_tags {
            l.tags = t.clone();
        }
    }
    d.touch_lead(id, now, by);
    st.record_writes(|w| w.record_update("leads", id, &ch.cf, new_tags.as_deref(), &ch.keys));
}

/// Validates every item of a batch: all the changes, or every item's error (amoCRM refuses a
/// batch with any invalid item as a whole).
pub(super) fn validate_all<C>(
    items: &[Value],
    mut validate: impl FnMut(&Value, usize) -> Result<C, Value>,
) -> Result<Vec<C>, Vec<Value>> {
    let mut changes = Vec::new();
    let mut errors = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match validate(item, i) {
            Ok(c) => changes.push(c),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(changes)
    } else {
        Err(errors)
    }
}

/// The body of a `PATCH /api/v4/{entity}/{id}`: one JSON object, given the path's id.
pub(super) fn single_item(body: &Bytes, id: u64) -> Result<Value, ApiError> {
    let mut item = parse_json(body)?;
    let Some(obj) = item.as_object_mut() else {
        return Err(ApiError::BadRequest(
            "request body must be a JSON object".into(),
        ));
    };
    obj.insert("id".into(), json!(id));
    Ok(item)
}

pub(super) fn reject(st: &Inner, errors: Vec<Value>) -> ApiError {
    st.record_writes(|w| w.requests_rejected += 1);
    ApiError::Validation(errors)
}

pub(super) fn updated_item(base: &str, entity: &str, id: u64, updated_at: i64, rid: &str) -> Value {
    json!({"id": id, "updated_at": updated_at, "request_id": rid, "_links": {"self": {"href": format!("{base}/api/v4/{entity}/{id}")}}})
}

pub(super) fn batch_response(ctx: &Ctx, entity: &str, items: Vec<Value>) -> Response {
    let mut emb = Map::new();
    emb.insert(entity.to_owned(), Value::Array(items));
    hal(
        &json!({"_links": {"self": {"href": format!("{}/api/v4/{entity}", ctx.base)}}, "_embedded": emb}),
    )
}

/// `PATCH /api/v4/leads`.
pub(crate) async fn patch_leads(
    State(st): State<Arc<Inner>>,
    ctx: Ctx,
    body: Bytes,
) -> Result<Response, ApiError> {
    let items = parse_batch(&body)?;
    let now = st.now();
    let mut d = st.write();
    let by = d.account.current_user_id;
    let changes = validate_all(&items, |item, i| validate_lead(&d, item, i, false))
        .map_err(|errors| reject(&st, errors))?;
    let mut out = Vec::new();
    for ch in changes {
        let (id, rid) = (ch.id, ch.request_id.clone());
        apply_lead(&st, &mut d, ch, now, by);
        let updated_at = d.leads.get(&id).map_or(now, |l| l.updated_at);
        out.push(updated_item(&ctx.base, "leads", id, updated_at, &rid));
    }
    st.record_writes(|w| w.requests_applied += 1);
    Ok(batch_response(&ctx, "leads", out))
}

/// `PATCH /api/v4/leads/{id}`: one object; answers `{id, updated_at, _links}`.
pub(crate) async fn patch_lead(
    State(st): State<Arc<Inner>>,
    Path(id): Path<String>,
    ctx: Ctx,
    body: Bytes,
) -> Result<Response, ApiError> {
    let id: u64 = id.parse().map_err(|_| ApiError::NotFound)?;
    let item = single_item(&body, id)?;
    let now = st.now();
    let mut d = st.write();
    let by = d.account.current_user_id;
    let ch = validate_lead(&d, &item, 0, false).map_err(|e| reject(&st, vec![e]))?;
    apply_lead(&st, &mut d, ch, now, by);
    let updated_at = d.leads.get(&id).map_or(now, |l| l.updated_at);
    st.record_writes(|w| w.requests_applied += 1);
    Ok(hal(
        &json!({"id": id, "updated_at": updated_at, "_links": {"self": {"href": format!("{}/api/v4/leads/{id}", ctx.base)}}}),
    ))
}

/// `POST /api/v4/leads`.
pub(crate) async fn create_leads(
    State(st): State<Arc<Inner>>,
    ctx: Ctx,
    body: Bytes,
) -> Result<Response, ApiError> {
    let items = parse_batch(&body)?;
    let now = st.now();
    let mut d = st.write();
    let by = d.account.current_user_id;
    let changes = validate_all(&items, |item, i| validate_lead(&d, item, i, true))
        .map_err(|errors| reject(&st, errors))?;
    let mut out = Vec::new();
    for ch in changes {
        let id = insert_new_lead(&st, &mut d, &ch, now, by);
        out.push(json!({"id": id, "request_id": ch.request_id, "_links": {"self": {"href": format!("{}/api/v4/leads/{id}", ctx.base)}}}));
    }
    st.record_writes(|w| w.requests_applied += 1);
    Ok(batch_response(&ctx, "leads", out))
}

/// Inserts a validated new lead, records `lead_added` and the write; returns its id.
pub(super) fn insert_new_lead(
    st: &Inner,
    d: &mut AmoData,
    ch: &LeadChange,
    now: i64,
    by: u64,
) -> u64 {
    {
        let id = d.new_id();
        let (pipeline_id, status_id) = ch.target.unwrap_or_default();
        let mut custom_fields = Vec::new();
        for c in &ch.cf {
            apply_cf(&mut custom_fields, c);
        }
        let tags = ch
            .tags
            .as_ref()
            .map(|s| resolve_tags(d, s))
            .unwrap_or_default();
        let closed = status_id == STATUS_WON || status_id == STATUS_LOST;
        let company_id = ch.company.or_else(|| {
            ch.contacts
                .iter()
                .find(|c| c.is_main)
                .and_then(|c| d.contacts.get(&c.id))
                .and_then(|c| c.company_id)
        });
        let price = ch.price.unwrap_or(0);
        d.insert_lead(AmoLead {
            id,
            name: ch.name.clone().unwrap_or_else(|| format!("Сделка #{id}")),
            price,
            responsible_user_id: ch.responsible.unwrap_or(by),
            status_id,
            pipeline_id,
            created_by: by,
            updated_by: by,
            created_at: now,
            updated_at: now,
            closed_at: closed.then_some(now),
            custom_fields,
            tags,
            contacts: ch.contacts.clone(),
            company_id,
            products: vec![],
        });
        d.event(
            "lead_added",
            id,
            "lead",
            by,
            now,
            json!([{"lead_status": {"id": status_id, "pipeline_id": pipeline_id}}]),
            json!([]),
        );
        let contact_id = ch.contacts.iter().find(|c| c.is_main).map(|c| c.id);
        st.record_writes(|w| {
            w.leads_created.push(LeadCreated {
                id,
                contact_id,
                pipeline_id,
                status_id,
                price,
                request_id: ch.request_id.clone(),
            })
        });
        id
    }
}

/// Most leads in one `POST /api/v4/leads/complex` request.
pub const MAX_COMPLEX_BATCH: usize = 50;
/// Most custom field values per entity of a complex lead.
const MAX_COMPLEX_FIELDS: usize = 40;

/// `POST /api/v4/leads/complex`: each lead with at most one new contact and one new company
/// in `_embedded` (`docs/amocrm.md` §4.1); the answer is a plain array
/// `[{id, contact_id, company_id, request_id: [..], merged: false}]`. The emulator runs no
/// duplicate control (`merged` is always `false`).
pub(crate) async fn create_complex(
    State(st): State<Arc<Inner>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let items = parse_batch(&body)?;
    if items.len() > MAX_COMPLEX_BATCH {
        return Err(ApiError::BadRequest(format!(
            "too many leads in one complex request: {} (at most {MAX_COMPLEX_BATCH})",
            items.len()
        )));
    }
    let now = st.now();
    let mut d = st.write();
    let by = d.account.current_user_id;
    let validated = validate_all(&items, |item, i| {
        let rid = request_id(item, i);
        let mut errs = Errs::default();
        let emb = item.get("_embedded");
        let one = |key: &str, errs: &mut Errs| -> Option<Value> {
            let v = emb.and_then(|e| e.get(key))?;
            match v.as_array() {
                Some(a) if a.len() > 1 => {
                    errs.push(
                        "TooMany",
                        &format!("_embedded.{key}"),
                        "A complex lead takes at most one.",
                    );
                    None
                }
                Some(a) => a.first().cloned(),
                None => {
                    errs.invalid_type(&format!("_embedded.{key}"), "array");
                    None
                }
            }
        };
        let contact = one("contacts", &mut errs);
        let company = one("companies", &mut errs);
        for (path, v) in [
            ("custom_fields_values", item.get("custom_fields_values")),
            (
                "_embedded.contacts.0.custom_fields_values",
                contact.as_ref().and_then(|c| c.get("custom_fields_values")),
            ),
            (
                "_embedded.companies.0.custom_fields_values",
                company.as_ref().and_then(|c| c.get("custom_fields_values")),
            ),
        ] {
            if v.and_then(Value::as_array)
                .is_some_and(|a| a.len() > MAX_COMPLEX_FIELDS)
            {
                errs.push(
                    "TooMany",
                    path,
                    &format!("At most {MAX_COMPLEX_FIELDS} custom field values per entity."),
                );
            }
        }
        // The lead itself, without the new entities its `_embedded` carries.
        let mut lead = item.clone();
        if let Some(e) = lead.get_mut("_embedded").and_then(Value::as_object_mut) {
            e.remove("contacts");
            e.remove("companies");
        }
        let lead = match validate_lead(&d, &lead, i, true) {
            Ok(l) => Some(l),
            Err(e) => {
                if let Some(list) = e.get("errors").and_then(Value::as_array) {
                    errs.0.extend(list.iter().cloned());
                }
                None
            }
        };
        let contact = contact.and_then(|c| {
            super::entities::validate_complex_card(&d, &c, false, "_embedded.contacts.0", &mut errs)
        });
        let company = company.and_then(|c| {
            super::entities::validate_complex_card(&d, &c, true, "_embedded.companies.0", &mut errs)
        });
        match lead {
            Some(lead) if errs.0.is_empty() => Ok((rid, lead, contact, company)),
            _ => Err(item_errors(&rid, errs.0)),
        }
    })
    .map_err(|errors| reject(&st, errors))?;
    let mut out = Vec::new();
    for (rid, mut lead, contact, company) in validated {
        let company_id = company.map(|c| c.insert(&st, &mut d, true, now, by));
        let contact_id = contact.map(|c| c.insert(&st, &mut d, false, now, by));
        if let (Some(contact), Some(company)) = (contact_id, company_id)
            && let Some(c) = d.contacts.get_mut(&contact)
        {
            c.company_id = Some(company);
            d.idx
                .company_contacts
                .entry(company)
                .or_default()
                .push(contact);
        }
        if let Some(c) = contact_id {
            lead.contacts = vec![AmoLeadContact {
                id: c,
                is_main: true,
            }];
        }
        lead.company = company_id;
        let id = insert_new_lead(&st, &mut d, &lead, now, by);
        out.push(
            json!({"id": id, "contact_id": contact_id, "company_id": company_id,
            "request_id": [rid], "merged": false}),
        );
    }
    st.record_writes(|w| w.requests_applied += 1);
    Ok(super::error::json_response(
        axum::http::StatusCode::OK,
        super::error::HAL_JSON,
        &Value::Array(out),
    ))
}

/// A validated contact write.
struct ContactChange {
    id: u64,
    request_id: String,
    keys: Vec<String>,
    name: Option<String>,
    first_name: Option<String>,
    last_name: Option<String>,
    responsible: Option<u64>,
    cf: Vec<CfChange>,
    tags: Option<Vec<TagSpec>>,
}

/// Validates a `PATCH /api/v4/contacts` item.
fn validate_contact(d: &AmoData, item: &Value, index: usize) -> Result<ContactChange, Value> {
    validate_card(d, item, index, false)
}

/// Validates a contact item, or (with `companies`) a `PATCH /api/v4/companies` one: the same
/// shape (a company's first/last names are ignored).
fn validate_card(
    d: &AmoData,
    item: &Value,
    index: usize,
    companies: bool,
) -> Result<ContactChange, Value> {
    let rid = request_id(item, index);
    let mut errs = Errs::default();
    if !item.is_object() {
        errs.invalid_type("", "object");
        return Err(item_errors(&rid, errs.0));
    }
    let mut id = 0;
    match item.get("id") {
        None | Some(Value::Null) => errs.blank("id"),
        Some(v) => match v.as_u64() {
            None => errs.invalid_type("id", "int"),
            Some(i) if !companies && d.contacts.contains_key(&i) => id = i,
            Some(i) if companies && d.companies.contains_key(&i) => id = i,
            Some(_) => errs.push("NotFound", "id", "Entity not found."),
        },
    }
    let name = get_str(item, "name", &mut errs);
    let first_name = get_str(item, "first_name", &mut errs);
    let last_name = get_str(item, "last_name", &mut errs);
    let responsible = get_u64(item, "responsible_user_id", &mut errs);
    if let Some(r) = responsible
        && !d.users.contains_key(&r)
    {
        errs.choice("responsible_user_id");
    }
    let cf = match item.get("custom_fields_values") {
        Some(v) => validate_cf(
            if companies {
                &d.fields.companies
            } else {
                &d.fields.contacts
            },
            v,
            &mut errs,
        ),
        None => vec![],
    };
    let emb = item.get("_embedded");
    let tags = validate_tags(d, emb, &mut errs);
    if !errs.0.is_empty() {
        return Err(item_errors(&rid, errs.0));
    }
    let mut keys: Vec<String> = item
        .as_object()
        .map(|o| {
            o.keys()
                .filter(|k| *k != "id" && *k != "request_id" && *k != "_embedded")
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    if let Some(e) = emb.and_then(Value::as_object) {
        keys.extend(e.keys().map(|k| format!("_embedded.{k}")));
    }
    Ok(ContactChange {
        id,
        request_id: rid,
        keys,
        name,
        first_name,
        last_name,
        responsible,
        cf,
        tags,
    })
}

fn apply_contact(st: &Inner, d: &mut AmoData, ch: ContactChange, now: i64, by: u64) {
    let id = ch.id;
    for c in &ch.cf {
        d.event(
            "custom_field_value_changed",
            id,
            "contact",
            by,
            now,
            cf_event_value(c),
            json!([]),
        );
    }
    let new_tags = ch.tags.as_ref().map(|specs| resolve_tags(d, specs));
    let mut renamed = None;
    if let Some(c) = d.contacts.get_mut(&id) {
        if let Some(n) = &ch.name {
            renamed = Some((std::mem::replace(&mut c.name, n.clone()), n.clone()));
        }
        if let Some(n) = &ch.first_name {
            c.first_name = n.clone();
        }
        if let Some(n) = &ch.last_name {
            c.last_name = n.clone();
        }
        if let Some(r) = ch.responsible {
            c.responsible_user_id = r;
        }
        for cf in &ch.cf {
            apply_cf(&mut c.custom_fields, cf);
        }
        if let Some(t) = &new_tags {
            c.tags = t.clone();
        }
    }
    if let Some((old, new)) = renamed
        && old != new
    {
        d.event(
            "name_field_changed",
            id,
            "contact",
            by,
            now,
            json!([{"name_field_value": {"name": new}}]),
            json!([{"name_field_value": {"name": old}}]),
        );
    }
    d.touch_contact(id, now, by);
    st.record_writes(|w| w.record_update("contacts", id, &ch.cf, new_tags.as_deref(), &ch.keys));
}

/// `PATCH /api/v4/contacts`.
pub(crate) async fn patch_contacts(
    State(st): State<Arc<Inner>>,
    ctx: Ctx,
    body: Bytes,
) -> Result<Response, ApiError> {
    let items = parse_batch(&body)?;
    let now = st.now();
    let mut d = st.write();
    let by = d.account.current_user_id;
    let changes = validate_all(&items, |item, i| validate_contact(&d, item, i))
        .map_err(|errors| reject(&st, errors))?;
    let mut out = Vec::new();
    for ch in changes {
        let (id, rid) = (ch.id, ch.request_id.clone());
        apply_contact(&st, &mut d, ch, now, by);
        let updated_at = d.contacts.get(&id).map_or(now, |c| c.updated_at);
        out.push(updated_item(&ctx.base, "contacts", id, updated_at, &rid));
    }
    st.record_writes(|w| w.requests_applied += 1);
    Ok(batch_response(&ctx, "contacts", out))
}

/// `PATCH /api/v4/contacts/{id}`.
pub(crate) async fn patch_contact(
    State(st): State<Arc<Inner>>,
    Path(id): Path<String>,
    ctx: Ctx,
    body: Bytes,
) -> Result<Response, ApiError> {
    let id: u64 = id.parse().map_err(|_| ApiError::NotFound)?;
    let item = single_item(&body, id)?;
    let now = st.now();
    let mut d = st.write();
    let by = d.account.current_user_id;
    let ch = validate_contact(&d, &item, 0).map_err(|e| reject(&st, vec![e]))?;
    apply_contact(&st, &mut d, ch, now, by);
    let updated_at = d.contacts.get(&id).map_or(now, |c| c.updated_at);
    st.record_writes(|w| w.requests_applied += 1);
    Ok(hal(
        &json!({"id": id, "updated_at": updated_at, "_links": {"self": {"href": format!("{}/api/v4/contacts/{id}", ctx.base)}}}),
    ))
}

fn apply_company(st: &Inner, d: &mut AmoData, ch: ContactChange, now: i64, by: u64) {
    let id = ch.id;
    for c in &ch.cf {
        d.event(
            "custom_field_value_changed",
            id,
            "company",
            by,
            now,
            cf_event_value(c),
            json!([]),
        );
    }
    let new_tags = ch.tags.as_ref().map(|specs| resolve_tags(d, specs));
    if let Some(c) = d.companies.get_mut(&id) {
        if let Some(n) = &ch.name {
            c.name = n.clone();
        }
        if let Some(r) = ch.responsible {
            c.responsible_user_id = r;
        }
        for cf in &ch.cf {
            apply_cf(&mut c.custom_fields, cf);
        }
        if let Some(t) = &new_tags {
            c.tags = t.clone();
        }
    }
    d.touch_company(id, now, by);
    st.record_writes(|w| w.record_update("companies", id, &ch.cf, new_tags.as_deref(), &ch.keys));
}

/// `PATCH /api/v4/companies`: name, responsible, custom fields, tags (as for contacts).
pub(crate) async fn patch_companies(
    State(st): State<Arc<Inner>>,
    ctx: Ctx,
    body: Bytes,
) -> Result<Response, ApiError> {
    let items = parse_batch(&body)?;
    let now = st.now();
    let mut d = st.write();
    let by = d.account.current_user_id;
    let changes = validate_all(&items, |item, i| validate_card(&d, item, i, true))
        .map_err(|errors| reject(&st, errors))?;
    let mut out = Vec::new();
    for ch in changes {
        let (id, rid) = (ch.id, ch.request_id.clone());
        apply_company(&st, &mut d, ch, now, by);
        let updated_at = d.companies.get(&id).map_or(now, |c| c.updated_at);
        out.push(updated_item(&ctx.base, "companies", id, updated_at, &rid));
    }
    st.record_writes(|w| w.requests_applied += 1);
    Ok(batch_response(&ctx, "companies", out))
}

const TASK_ENTITY_TYPES: &[&str] = &["leads", "contacts", "companies", "customers"];

/// `POST /api/v4/tasks`.
pub(crate) async fn create_tasks(
    State(st): State<Arc<Inner>>,
    ctx: Ctx,
    body: Bytes,
) -> Result<Response, ApiError> {
    let items = parse_batch(&body)?;
    let now = st.now();
    let mut d = st.write();
    let by = d.account.current_user_id;
    let mut tasks = Vec::new();
    let mut errors = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let rid = request_id(item, i);
        let mut errs = Errs::default();
        if !item.is_object() {
            errs.invalid_type("", "object");
            errors.push(item_errors(&rid, errs.0));
            continue;
        }
        let text = get_str(item, "text", &mut errs);
        if text.as_deref().is_none_or(|t| t.trim().is_empty())
            && item
                .get("text")
                .is_none_or(|v| v.is_null() || v.is_string())
        {
            errs.blank("text");
        }
        let complete_till = match item.get("complete_till") {
            None | Some(Value::Null) => {
                errs.blank("complete_till");
                None
            }
            Some(v) => v.as_i64().or_else(|| {
                errs.invalid_type("complete_till", "int");
                None
            }),
        };
        let responsible = get_u64(item, "responsible_user_id", &mut errs);
        if let Some(r) = responsible
            && !d.users.contains_key(&r)
        {
            errs.choice("responsible_user_id");
        }
        let task_type = get_u64(item, "task_type_id", &mut errs).unwrap_or(1);
        if !(1..=2).contains(&task_type) {
            errs.choice("task_type_id");
        }
        let entity_type = get_str(item, "entity_type", &mut errs);
        let entity_id = get_u64(item, "entity_id", &mut errs);
        match (&entity_type, entity_id) {
            (None, None) => {}
            (Some(t), Some(eid)) => {
                let exists = match t.as_str() {
                    "leads" => d.leads.contains_key(&eid),
                    "contacts" => d.contacts.contains_key(&eid),
                    "companies" => d.companies.contains_key(&eid),
                    "customers" => d.customers.contains_key(&eid),
                    _ => false,
                };
                if !TASK_ENTITY_TYPES.contains(&t.as_str()) {
                    errs.choice("entity_type");
                } else if !exists {
                    errs.push("NotFound", "entity_id", "Entity not found.");
                }
            }
            (Some(_), None) => errs.blank("entity_id"),
            (None, Some(_)) => errs.blank("entity_type"),
        }
        let duration = get_u64(item, "duration", &mut errs).unwrap_or(0) as i64;
        if !errs.0.is_empty() {
            errors.push(item_errors(&rid, errs.0));
            continue;
        }
        tasks.push((
            AmoTask {
                id: 0,
                created_by: by,
                updated_by: by,
                created_at: now,
                updated_at: now,
                responsible_user_id: responsible.unwrap_or(by),
                entity_id,
                entity_type,
                is_completed: item
                    .get("is_completed")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
                task_type_id: task_type,
                text: text.unwrap_or_default(),
                result_text: None,
                complete_till: complete_till.unwrap_or_default(),
                duration,
            },
            rid,
        ));
    }
    if !errors.is_empty() {
        return Err(reject(&st, errors));
    }
    let mut out = Vec::new();
    for (mut t, rid) in tasks {
        t.id = d.new_id();
        let id = t.id;
        d.event(
            "task_added",
            id,
            "task",
            by,
            now,
            json!([{"task": {"id": id, "text": t.text}}]),
            json!([]),
        );
        st.record_writes(|w| {
            w.tasks_created.push(TaskCreated {
                id,
                entity_type: t.entity_type.clone(),
                entity_id: t.entity_id,
                responsible_user_id: t.responsible_user_id,
                task_type_id: t.task_type_id,
                text: t.text.clone(),
                complete_till: t.complete_till,
                request_id: rid.clone(),
            })
        });
        d.tasks.insert(id, t);
        out.push(json!({"id": id, "request_id": rid, "_links": {"self": {"href": format!("{}/api/v4/tasks/{id}", ctx.base)}}}));
    }
    st.record_writes(|w| w.requests_applied += 1);
    Ok(batch_response(&ctx, "tasks", out))
}

/// `PATCH /api/v4/tasks`: complete (`is_completed` + `result.text`), re-text or re-date tasks.
pub(crate) async fn patch_tasks(
    State(st): State<Arc<Inner>>,
    ctx: Ctx,
    body: Bytes,
) -> Result<Response, ApiError> {
    let items = parse_batch(&body)?;
    let now = st.now();
    let mut d = st.write();
    let by = d.account.current_user_id;
    let mut errors = Vec::new();
    let mut changes = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let rid = request_id(item, i);
        let mut errs = Errs::default();
        let id = get_u64(item, "id", &mut errs);
        match id {
            None => errs.blank("id"),
            Some(id) if !d.tasks.contains_key(&id) => {
                errs.push("NotFound", "id", "Entity not found.")
            }
            _ => {}
        }
        let text = get_str(item, "text", &mut errs);
        let complete_till = match item.get("complete_till") {
            None | Some(Value::Null) => None,
            Some(v) => v.as_i64().or_else(|| {
                errs.invalid_type("complete_till", "int");
                None
            }),
        };
        let completed = match item.get("is_completed") {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(_) => {
                errs.invalid_type("is_completed", "bool");
                None
            }
        };
        let result = item
            .get("result")
            .and_then(|r| r.get("text"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        if !errs.0.is_empty() {
            errors.push(item_errors(&rid, errs.0));
            continue;
        }
        changes.push((
            id.unwrap_or_default(),
            rid,
            text,
            complete_till,
            completed,
            result,
        ));
    }
    if !errors.is_empty() {
        return Err(reject(&st, errors));
    }
    let mut out = Vec::new();
    for (id, rid, text, complete_till, completed, result) in changes {
        let mut done_now = false;
        if let Some(t) = d.tasks.get_mut(&id) {
            if let Some(x) = text {
                t.text = x;
            }
            if let Some(x) = complete_till {
                t.complete_till = x;
            }
            if let Some(c) = completed {
                done_now = c && !t.is_completed;
                t.is_completed = c;
            }
            if let Some(r) = &result {
                t.result_text = Some(r.clone());
            }
            t.updated_at = now;
            t.updated_by = by;
        }
        if done_now {
            d.event(
                "task_completed",
                id,
                "task",
                by,
                now,
                json!([{"task_status": {"is_completed": true}}]),
                json!([]),
            );
        }
        st.record_writes(|w| {
            w.tasks_updated.push(TaskUpdated {
                id,
                is_completed: completed,
                result_text: result.clone(),
            })
        });
        out.push(updated_item(&ctx.base, "tasks", id, now, &rid));
    }
    st.record_writes(|w| w.requests_applied += 1);
    Ok(batch_response(&ctx, "tasks", out))
}
