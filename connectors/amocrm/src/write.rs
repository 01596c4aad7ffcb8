//! Writes: [`WriteOp`]s packed into amoCRM bulk requests.
//!
//! - `MoveDeal` -> `PATCH /api/v4/leads` items `{id, pipeline_id, status_id}`;
//! - `UpdateFields` -> `PATCH /api/v4/{leads|contacts|companies}` items
//!   `{id, custom_fields_values: [{field_id, values: [{value}] | null}]}` (only listed fields change);
//! - `FlagRepeat` -> the lead's current tags are read (`GET /api/v4/leads?filter[id][]=..`),
//!   then `PATCH /api/v4/leads` with `_embedded.tags` = those tags plus `repeat`, because amoCRM
//!   replaces the whole tag set. A tag added by someone between the read and the write is lost;
//!   a lead already tagged is not written again;
//! - `CreateTask` -> `POST /api/v4/tasks` items `{text, complete_till, entity_id, entity_type,
//!   responsible_user_id, task_type_id, request_id}`; task types: call 1, meeting 2, letter = the
//!   account's task type coded/named like a letter or e-mail, else 1.
//!
//! - `CreateCustomer` -> `POST /api/v4/customers` items `{name, status_id, next_date, next_price,
//!   responsible_user_id, _embedded: {contacts: [{id, is_main: true}], companies}}`;
//! - `UpdateCustomer` -> `PATCH /api/v4/customers` items `{id, status_id, next_date, next_price}`;
//! - `CreateField` -> `POST /api/v4/{contacts|companies|leads|customers}/custom_fields` items
//!   `{name, type: text|date|numeric|select, enums: [{value, sort}]}`, sent before the other ops.
//!
//! Ops of one kind (and entity) go together, [`MAX_BATCH`] per request. Every item carries its
//! op's index as `request_id`, and answers are matched back by it. amoCRM rejects a whole
//! request when an item fails validation (400 `validation-errors`); the failing items get their
//! own `Rejected` (code and path included) and the rest is sent again.
use crate::client::{AmoClient, Req, decode_json, rejected};
use crate::wire::{
    self, CustomFieldWrite, CustomFieldWriteValue, EntityPatch, NewTask, PatchEmbedded, Tag,
};
use http::{Method, StatusCode};
use rebuy_core::connector::{EntityRef, FieldEntityKind, FieldKind, TaskKind};
use rebuy_core::{ConnectorError, WriteOp, WriteOutcome};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Items per bulk request. amoCRM documents no hard cap for plain add/update, but its own
/// library recommends at most 50 entities per request and complex adds are capped at 50; a
/// smaller batch also keeps a validation failure's blast radius small.
pub(crate) const MAX_BATCH: usize = 50;

/// The tag that marks a repeat sale.
pub const REPEAT_TAG: &str = "repeat";

/// How many times a batch is re-sent without its rejected items.
const MAX_ROUNDS: usize = 4;

type OpResult = Result<WriteOutcome, ConnectorError>;

pub(crate) async fn apply(client: &AmoClient, ops: &[WriteOp]) -> Vec<OpResult> {
    let mut results: Vec<Option<OpResult>> = vec![None; ops.len()];
    let mut moves = Vec::new();
    let mut fields: HashMap<&'static str, Vec<(usize, EntityPatch)>> = HashMap::new();
    let mut flags = Vec::new();
    let mut tasks = Vec::new();
    let mut new_leads = Vec::new();
    let mut new_customers = Vec::new();
    let mut customer_patches = Vec::new();
    let mut new_fields: Vec<(&'static str, (usize, wire::NewField))> = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        match op {
            WriteOp::MoveDeal {
                deal,
                pipeline,
                stage,
            } => match stage.0.parse::<u64>() {
                Ok(status) => moves.push((
                    i,
                    EntityPatch {
                        id: deal.0,
                        pipeline_id: Some(pipeline.0),
                        status_id: Some(status),
                        request_id: i.to_string(),
                        ..Default::default()
                    },
                )),
                Err(_) => {
                    results[i] = Some(Err(invalid_op(
                        i,
                        "stage",
                        &format!("{:?} is not an amoCRM status id", stage.0),
                    )))
                }
            },
            WriteOp::UpdateFields {
                entity,
                fields: values,
            } => {
                let mut cfs = Vec::with_capacity(values.len());
                let mut bad = None;
                for f in values {
                    match f.field_id.parse::<u64>() {
                        Ok(field_id) => cfs.push(CustomFieldWrite {
                            field_id,
                            values: f
                                .value
                                .clone()
                                .map(|value| vec![CustomFieldWriteValue { value }]),
                        }),
                        Err(_) => bad = Some(f.field_id.clone()),
                    }
                }
                if let Some(b) = bad {
                    results[i] = Some(Err(invalid_op(
                        i,
                        "field_id",
                        &format!("{b:?} is not an amoCRM field id"),
                    )));
                    continue;
                }
                let (path, id) = entity_path(entity);
                let patch = EntityPatch {
                    id,
                    custom_fields_values: Some(cfs),
                    request_id: i.to_string(),
                    ..Default::default()
                };
                fields.entry(path).or_default().push((i, patch));
            }
            WriteOp::FlagRepeat { deal } => flags.push((i, deal.0)),
            WriteOp::CreateTask { .. } => tasks.push(i),
            WriteOp::CreateDeal {
                name,
                pipeline,
                stage,
                contact,
                company,
                responsible,
                price,
            } => {
                let Ok(status) = stage.0.parse::<u64>() else {
                    results[i] = Some(Err(invalid_op(
                        i,
                        "stage",
                        &format!("{:?} is not an amoCRM status id", stage.0),
                    )));
                    continue;
                };
                let mut embedded = serde_json::Map::new();
                if let Some(c) = contact {
                    embedded.insert(
                        "contacts".into(),
                        serde_json::json!([{"id": c.0, "is_main": true}]),
                    );
                }
                if let Some(c) = company {
                    embedded.insert("companies".into(), serde_json::json!([{"id": c.0}]));
                }
                use rust_decimal::prelude::ToPrimitive;
                new_leads.push((
                    i,
                    wire::NewLead {
                        name: name.clone(),
                        pipeline_id: pipeline.0,
                        status_id: status,
                        price: price.and_then(|p| p.round().to_i64()),
                        responsible_user_id: responsible.map(|u| u.0),
                        embedded: if embedded.is_empty() {
                            serde_json::Value::Null
                        } else {
                            serde_json::Value::Object(embedded)
                        },
                        request_id: i.to_string(),
                    },
                ));
            }
            WriteOp::CreateCustomer {
                name,
                contact,
                company,
                status,
                next_date,
                next_price,
                responsible,
            } => {
                let Ok(status) = status.0.parse::<u64>() else {
                    results[i] = Some(Err(invalid_op(
                        i,
                        "status",
                        &format!("{:?} is not an amoCRM customer status id", status.0),
                    )));
                    continue;
                };
                let mut embedded = serde_json::Map::new();
                embedded.insert(
                    "contacts".into(),
                    serde_json::json!([{"id": contact.0, "is_main": true}]),
                );
                if let Some(c) = company {
                    embedded.insert("companies".into(), serde_json::json!([{"id": c.0}]));
                }
                new_customers.push((
                    i,
                    wire::CustomerWrite {
                        id: None,
                        name: Some(name.clone()),
                        status_id: status,
                        next_date: next_date.as_second(),
                        next_price: whole(next_price),
                        responsible_user_id: responsible.map(|u| u.0),
                        embedded: serde_json::Value::Object(embedded),
                        request_id: i.to_string(),
                    },
                ));
            }
            WriteOp::UpdateCustomer {
                customer,
                status,
                next_date,
                next_price,
            } => {
                let Ok(status) = status.0.parse::<u64>() else {
                    results[i] = Some(Err(invalid_op(
                        i,
                        "status",
                        &format!("{:?} is not an amoCRM customer status id", status.0),
                    )));
                    continue;
                };
                customer_patches.push((
                    i,
                    wire::CustomerWrite {
                        id: Some(*customer),
                        status_id: status,
                        next_date: next_date.as_second(),
                        next_price: whole(next_price),
                        request_id: i.to_string(),
                        ..Default::default()
                    },
                ));
            }
            WriteOp::CreateField {
                entity, name, kind, ..
            } => {
                let path = match entity {
                    FieldEntityKind::Contacts => "api/v4/contacts/custom_fields",
                    FieldEntityKind::Companies => "api/v4/companies/custom_fields",
                    FieldEntityKind::Deals => "api/v4/leads/custom_fields",
                    FieldEntityKind::Customers => "api/v4/customers/custom_fields",
                };
                let (field_type, enums) = match kind {
                    FieldKind::Text => ("text", Vec::new()),
                    FieldKind::Date => ("date", Vec::new()),
                    FieldKind::Numeric => ("numeric", Vec::new()),
                    FieldKind::Select(values) => (
                        "select",
                        values
                            .iter()
                            .enumerate()
                            .map(|(k, v)| wire::NewEnum {
                                value: v.clone(),
                                sort: (k as i64 + 1) * 10,
                            })
                            .collect(),
                    ),
                };
                new_fields.push((
                    path,
                    (
                        i,
                        wire::NewField {
                            name: name.clone(),
                            field_type,
                            enums,
                            request_id: i.to_string(),
                        },
                    ),
                ));
            }
        }
    }
    // Fields first: a later op of the same call may write to them.
    for path in [
        "api/v4/contacts/custom_fields",
        "api/v4/companies/custom_fields",
        "api/v4/leads/custom_fields",
        "api/v4/customers/custom_fields",
    ] {
        let items: Vec<(usize, wire::NewField)> = new_fields
            .iter()
            .filter(|(p, _)| *p == path)
            .map(|(_, x)| x.clone())
            .collect();
        send_all(client, Method::POST, path, &items, true, &mut results).await;
    }
    send_all(
        client,
        Method::POST,
        "api/v4/customers",
        &new_customers,
        true,
        &mut results,
    )
    .await;
    send_all(
        client,
        Method::PATCH,
        "api/v4/customers",
        &customer_patches,
        false,
        &mut results,
    )
    .await;
    send_all(
        client,
        Method::POST,
        "api/v4/leads",
        &new_leads,
        true,
        &mut results,
    )
    .await;

    send_all(
        client,
        Method::PATCH,
        "api/v4/leads",
        &moves,
        false,
        &mut results,
    )
    .await;
    // Fixed order so runs are reproducible.
    for path in ["api/v4/leads", "api/v4/contacts", "api/v4/companies"] {
        if let Some(items) = fields.remove(path) {
            send_all(client, Method::PATCH, path, &items, false, &mut results).await;
        }
    }
    for chunk in flags.chunks(MAX_BATCH) {
        flag_repeat(client, chunk, &mut results).await;
    }
    if !tasks.is_empty() {
        let letter = letter_task_type(client).await;
        let items: Vec<(usize, NewTask<'_>)> = tasks
            .iter()
            .filter_map(|&i| match &ops[i] {
                WriteOp::CreateTask {
                    entity,
                    responsible,
                    text,
                    due,
                    kind,
                } => {
                    let (path, entity_id) = entity_path(entity);
                    Some((
                        i,
                        NewTask {
                            text,
                            complete_till: due.as_second(),
                            entity_id,
                            entity_type: path.trim_start_matches("api/v4/"),
                            responsible_user_id: responsible.0,
                            task_type_id: match kind {
                                TaskKind::Call => 1,
                                TaskKind::Meeting => 2,
                                TaskKind::Letter => letter,
                            },
                            request_id: i.to_string(),
                        },
                    ))
                }
                _ => None,
            })
            .collect();
        send_all(
            client,
            Method::POST,
            "api/v4/tasks",
            &items,
            true,
            &mut results,
        )
        .await;
    }

    results
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            r.unwrap_or_else(|| {
                Err(ConnectorError::Invalid {
                    path: format!("ops[{i}]"),
                    message: "op was not carried out".into(),
                })
            })
        })
        .collect()
}

/// Whole currency units (amoCRM amounts are integers).
fn whole(v: &Option<rust_decimal::Decimal>) -> Option<i64> {
    use rust_decimal::prelude::ToPrimitive;
    v.and_then(|p| p.round().to_i64())
}

fn invalid_op(i: usize, field: &str, message: &str) -> ConnectorError {
    ConnectorError::Invalid {
        path: format!("ops[{i}].{field}"),
        message: message.to_owned(),
    }
}

fn entity_path(e: &EntityRef) -> (&'static str, u64) {
    match e {
        EntityRef::Deal(id) => ("api/v4/leads", id.0),
        EntityRef::Contact(id) => ("api/v4/contacts", id.0),
        EntityRef::Company(id) => ("api/v4/companies", id.0),
    }
}

/// An item that knows its `request_id`.
trait Item: Serialize + Clone {
    fn request_id(&self) -> &str;
}
impl Item for EntityPatch {
    fn request_id(&self) -> &str {
        &self.request_id
    }
}
impl Item for wire::NewLead {
    fn request_id(&self) -> &str {
        &self.request_id
    }
}
impl Item for wire::CustomerWrite {
    fn request_id(&self) -> &str {
        &self.request_id
    }
}
impl Item for wire::NewField {
    fn request_id(&self) -> &str {
        &self.request_id
    }
}
impl Item for NewTask<'_> {
    fn request_id(&self) -> &str {
        &self.request_id
    }
}

/// The answer to a bulk write: accepted, or refused with validation errors.
enum Answer {
    Done(wire::WriteResults),
    Invalid(wire::Problem, ConnectorError),
}

/// Sends one batch; re-sends without the items amoCRM rejected. `created` tells whether the
/// answer's ids are new entities (tasks) to report as `created_id`.
/// Sends `items` in bulk requests of at most [`MAX_BATCH`] (see [`send_batch`]).
async fn send_all<T: Item + Clone>(
    client: &AmoClient,
    method: Method,
    path: &str,
    items: &[(usize, T)],
    created: bool,
    results: &mut [Option<OpResult>],
) {
    for chunk in items.chunks(MAX_BATCH) {
        send_batch(
            client,
            method.clone(),
            path,
            chunk.to_vec(),
            created,
            results,
        )
        .await;
    }
}

async fn send_batch<T: Item>(
    client: &AmoClient,
    method: Method,
    path: &str,
    mut items: Vec<(usize, T)>,
    created: bool,
    results: &mut [Option<OpResult>],
) {
    let url = match client.url(path, &[]) {
        Ok(u) => u,
        Err(e) => return fail_all(&items, &e, results),
    };
    for _round in 0..MAX_ROUNDS {
        if items.is_empty() {
            return;
        }
        let body: Vec<&T> = items.iter().map(|(_, t)| t).collect();
        let body = match serde_json::to_vec(&body) {
            Ok(b) => b,
            Err(e) => {
                return fail_all(
                    &items,
                    &ConnectorError::Invalid {
                        path: path.into(),
                        message: e.to_string(),
                    },
                    results,
                );
            }
        };
        let req = Req {
            method: method.clone(),
            url: url.clone(),
            body: Some(body),
        };
        let answer = client
            .execute(&req, |status, body| match status.as_u16() {
                200..=299 => {
                    if body.iter().all(u8::is_ascii_whitespace) {
                        return Ok(Answer::Done(wire::WriteResults::default()));
                    }
                    decode_json::<wire::ListPage<wire::WriteResults>>(body)
                        .map(|p| Answer::Done(p.embedded))
                }
                400 => {
                    let problem: wire::Problem = serde_json::from_slice(body).unwrap_or_default();
                    Ok(Answer::Invalid(
                        problem,
                        rejected(StatusCode::BAD_REQUEST, body),
                    ))
                }
                _ => Err(rejected(status, body)),
            })
            .await;
        match answer {
            Err(e) => return fail_all(&items, &e, results),
            Ok(Answer::Done(written)) => {
                let rows: Vec<&wire::WriteResult> = written
                    .leads
                    .iter()
                    .chain(&written.contacts)
                    .chain(&written.companies)
                    .chain(&written.tasks)
                    .chain(&written.customers)
                    .chain(&written.custom_fields)
                    .collect();
                let by_request: HashMap<&str, u64> = rows
                    .iter()
                    .filter_map(|r| r.request_id.as_ref().map(|q| (q.0.as_str(), r.id)))
                    .collect();
                for (pos, (i, item)) in items.iter().enumerate() {
                    // Match by request_id; fall back to position when amoCRM did not echo it.
                    let id = by_request
                        .get(item.request_id())
                        .copied()
                        .or_else(|| rows.get(pos).map(|r| r.id));
                    results[*i] = Some(Ok(WriteOutcome {
                        created_id: if created { id } else { None },
                    }));
                }
                return;
            }
            Ok(Answer::Invalid(problem, whole)) => {
                let mut failed = HashMap::new();
                for ve in &problem.validation_errors {
                    let rid = ve.request_id.0.as_str();
                    // The request_id we sent; else amoCRM's position in the array.
                    let pos = items
                        .iter()
                        .position(|(_, t)| t.request_id() == rid)
                        .or_else(|| rid.parse::<usize>().ok().filter(|&p| p < items.len()));
                    if let Some(pos) = pos {
                        failed.insert(pos, item_error(ve));
                    }
                }
                if failed.is_empty() {
                    // Nothing attributable to one item: the whole request is refused.
                    return fail_all(&items, &whole, results);
                }
                let mut kept = Vec::with_capacity(items.len());
                for (pos, item) in items.into_iter().enumerate() {
                    match failed.remove(&pos) {
                        Some(e) => results[item.0] = Some(Err(e)),
                        None => kept.push(item),
                    }
                }
                items = kept;
            }
        }
    }
    let e = ConnectorError::Rejected {
        status: 400,
        code: None,
        message: "validation kept failing; gave up".into(),
    };
    fail_all(&items, &e, results);
}

fn item_error(ve: &wire::ValidationError) -> ConnectorError {
    let code = ve.errors.first().and_then(|e| e.code.clone());
    let message = ve
        .errors
        .iter()
        .map(|e| {
            format!(
                "{} {}: {}",
                e.path.as_deref().unwrap_or("?"),
                e.code.as_deref().unwrap_or("?"),
                e.detail.as_deref().unwrap_or("")
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    ConnectorError::Rejected {
        status: 400,
        code,
        message,
    }
}

fn fail_all<T>(items: &[(usize, T)], e: &ConnectorError, results: &mut [Option<OpResult>]) {
    for (i, _) in items {
        results[*i] = Some(Err(e.clone()));
    }
}

/// Adds the `repeat` tag to a chunk of leads, keeping their other tags.
async fn flag_repeat(client: &AmoClient, chunk: &[(usize, u64)], results: &mut [Option<OpResult>]) {
    let limit = MAX_BATCH.to_string();
    let keys: Vec<String> = (0..chunk.len())
        .map(|k| format!("filter[id][{k}]"))
        .collect();
    let ids: Vec<String> = chunk.iter().map(|(_, id)| id.to_string()).collect();
    let mut params: Vec<(&str, &str)> = vec![("limit", &limit)];
    params.extend(
        keys.iter()
            .map(String::as_str)
            .zip(ids.iter().map(String::as_str)),
    );
    let current = match client.url("api/v4/leads", &params) {
        Ok(url) => client.get_json::<wire::ListPage<wire::Leads>>(url).await,
        Err(e) => Err(e),
    };
    let leads = match current {
        Ok(page) => page.map(|p| p.embedded.leads).unwrap_or_default(),
        Err(e) => return fail_all(chunk, &e, results),
    };
    let by_id: HashMap<u64, &wire::Lead> = leads.iter().map(|l| (l.id, l)).collect();
    let mut patches = Vec::new();
    for &(i, id) in chunk {
        let Some(lead) = by_id.get(&id) else {
            results[i] = Some(Err(ConnectorError::NotFound {
                what: format!("lead {id}"),
            }));
            continue;
        };
        let tags = &lead.embedded.tags;
        if tags.iter().any(|t| {
            t.name
                .as_deref()
                .is_some_and(|n| n.eq_ignore_ascii_case(REPEAT_TAG))
        }) {
            results[i] = Some(Ok(WriteOutcome { created_id: None }));
            continue;
        }
        let mut new_tags: Vec<Tag> = tags
            .iter()
            .map(|t| match t.id {
                Some(id) if id != 0 => Tag {
                    id: Some(id),
                    name: None,
                },
                _ => Tag {
                    id: None,
                    name: t.name.clone(),
                },
            })
            .collect();
        new_tags.push(Tag {
            id: None,
            name: Some(REPEAT_TAG.to_owned()),
        });
        patches.push((
            i,
            EntityPatch {
                id,
                embedded: Some(PatchEmbedded { tags: new_tags }),
                request_id: i.to_string(),
                ..Default::default()
            },
        ));
    }
    send_batch(
        client,
        Method::PATCH,
        "api/v4/leads",
        patches,
        false,
        results,
    )
    .await;
}

/// The task type of a letter: the account's type coded or named like one, else 1.
async fn letter_task_type(client: &AmoClient) -> u64 {
    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Acc {
        #[serde(rename = "_embedded")]
        embedded: Emb,
    }
    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Emb {
        task_types: Vec<TaskType>,
    }
    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct TaskType {
        id: u64,
        name: Option<String>,
        code: Option<String>,
    }
    let found = client
        .inner
        .letter_task_type
        .get_or_try_init(|| async {
            let url = client.url("api/v4/account", &[("with", "task_types")])?;
            let acc: Acc = client.get_json(url).await?.unwrap_or_default();
            let is_letter = |t: &TaskType| {
                let code = t.code.as_deref().unwrap_or("").to_ascii_uppercase();
                let name = t.name.as_deref().unwrap_or("").to_lowercase();
                matches!(code.as_str(), "LETTER" | "EMAIL" | "MAIL")
                    || ["письм", "letter", "email", "e-mail"]
                        .iter()
                        .any(|w| name.contains(w))
            };
            Ok::<u64, ConnectorError>(
                acc.embedded
                    .task_types
                    .iter()
                    .find(|t| is_letter(t))
                    .map_or(1, |t| t.id),
            )
        })
        .await;
    // A failed look-up is not worth failing the tasks: fall back to "call".
    found.copied().unwrap_or(1)
}
