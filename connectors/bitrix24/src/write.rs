//! [`WriteOp`]s packed into `batch` requests (up to 50 per request, `halt=0` so one op's
//! failure does not stop the others).
//!
//! | op | command |
//! |---|---|
//! | `MoveDeal` | `crm.item.update {entityTypeId: 2, id, fields: {categoryId, stageId}}`: the only way to change funnels (`crm.deal.update` ignores a foreign `STAGE_ID` and refuses `CATEGORY_ID`); fires `ONCRMDEALMOVETOCATEGORY` |
//! | `CreateTask` | `crm.activity.todo.add {ownerTypeId, ownerId, deadline, title, description, responsibleId}` |
//! | `UpdateFields` | `crm.deal.update` / `crm.contact.update` / `crm.company.update` with `fields: {UF_CRM_...: value}` |
//! | `FlagRepeat` | `crm.deal.update {id, fields: {IS_RETURN_CUSTOMER: "Y"}}` |
//! | `CreateField` | `crm.{contact,company,deal}.userfield.add {fields: {FIELD_NAME, USER_TYPE_ID: string/date/double, LABEL}}` |
//! | `CreateCustomer`, `UpdateCustomer` | none: `Unsupported` (amoCRM only) |
//!
//! Why a to-do and not `tasks.task.add`: the docs make `crm.activity.todo.add` the current way
//! to put a follow-up into a deal or contact card (`crm.activity.add` is deprecated); it needs
//! only the `crm` scope (tasks need `task`), shows in the card's timeline with a reminder, and
//! its owner is checked (`NOT_FOUND` for a deleted deal) instead of silently creating an
//! orphan task.
//!
//! A batch is repeated by the client only when it surely did not run (503
//! `QUERY_LIMIT_EXCEEDED`, a connection never made). Once it may have reached the portal (a
//! drop after sending, a timeout, another 5xx, an answer cut short) every op of it fails as
//! `Unconfirmed` and the outbox looks for what was created before sending anything again. A
//! command refused inside the batch is reported for its op alone (`RateLimited` for
//! `OPERATION_TIME_LIMIT`, so the outbox retries it later) and never repeated here, so a
//! succeeded write is not sent twice by this layer.
use crate::batch::{self, Command};
use crate::client::{B24Client, api_error};
use rebuy_core::ConnectorError;
use rebuy_core::connector::{
    EntityRef, FieldEntityKind, FieldKind, TaskKind, WriteOp, WriteOutcome,
};
use serde_json::{Map, Value, json};

fn deadline(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%S+00:00").to_string()
}

fn title(kind: TaskKind) -> &'static str {
    match kind {
        TaskKind::Call => "Позвонить клиенту",
        TaskKind::Meeting => "Встреча с клиентом",
        TaskKind::Letter => "Написать клиенту",
    }
}

/// The command of one op; `None` for ops Bitrix24 has no entity for (amoCRM customers).
pub(crate) fn command_of(i: usize, op: &WriteOp) -> Option<Command> {
    Some(match op {
        WriteOp::MoveDeal {
            deal,
            pipeline,
            stage,
        } => batch::command(
            i,
            "crm.item.update",
            &json!({"entityTypeId": 2, "id": deal.0, "fields": {"categoryId": pipeline.0, "stageId": stage.0}}),
        ),
        WriteOp::CreateTask {
            entity,
            responsible,
            text,
            due,
            kind,
        } => {
            let (owner_type, owner) = match entity {
                EntityRef::Deal(d) => (2, d.0),
                EntityRef::Contact(c) => (3, c.0),
                EntityRef::Company(c) => (4, c.0),
            };
            batch::command(
                i,
                "crm.activity.todo.add",
                &json!({"ownerTypeId": owner_type, "ownerId": owner, "deadline": deadline(*due), "title": title(*kind),
                        "description": text, "responsibleId": responsible.0}),
            )
        }
        WriteOp::UpdateFields { entity, fields } => {
            let f: Map<String, Value> = fields
                .iter()
                .map(|w| {
                    (
                        w.field_id.clone(),
                        Value::String(w.value.clone().unwrap_or_default()),
                    )
                })
                .collect();
            let (method, id) = match entity {
                EntityRef::Deal(d) => ("crm.deal.update", d.0),
                EntityRef::Contact(c) => ("crm.contact.update", c.0),
                EntityRef::Company(c) => ("crm.company.update", c.0),
            };
            batch::command(i, method, &json!({"id": id, "fields": f}))
        }
        WriteOp::CreateDeal {
            name,
            pipeline,
            stage,
            contact,
            company,
            responsible,
            price,
        } => {
            let mut f = Map::new();
            f.insert("TITLE".into(), json!(name));
            f.insert("CATEGORY_ID".into(), json!(pipeline.0));
            f.insert("STAGE_ID".into(), json!(stage.0));
            if let Some(c) = contact {
                f.insert("CONTACT_ID".into(), json!(c.0));
            }
            if let Some(c) = company {
                f.insert("COMPANY_ID".into(), json!(c.0));
            }
            if let Some(u) = responsible {
                f.insert("ASSIGNED_BY_ID".into(), json!(u.0));
            }
            if let Some(p) = price {
                f.insert("OPPORTUNITY".into(), json!(p.to_string()));
                f.insert("CURRENCY_ID".into(), json!("RUB"));
            }
            batch::command(i, "crm.deal.add", &json!({"fields": f}))
        }
        WriteOp::FlagRepeat { deal } => batch::command(
            i,
            "crm.deal.update",
            &json!({"id": deal.0, "fields": {"IS_RETURN_CUSTOMER": "Y"}}),
        ),
        WriteOp::CreateField {
            entity,
            name,
            code,
            kind,
        } => {
            let method = match entity {
                FieldEntityKind::Contacts => "crm.contact.userfield.add",
                FieldEntityKind::Companies => "crm.company.userfield.add",
                FieldEntityKind::Deals => "crm.deal.userfield.add",
                FieldEntityKind::Customers => return None,
            };
            // A list (`enumeration`) is written by item id, which segment writes do not know:
            // select-like segment fields are created as strings holding the segment's name.
            let ty = match kind {
                FieldKind::Date => "date",
                FieldKind::Numeric => "double",
                FieldKind::Text | FieldKind::Select(_) => "string",
            };
            let field_name = code.clone().unwrap_or_else(|| "REBUY_FIELD".into());
            batch::command(
                i,
                method,
                &json!({"fields": {"FIELD_NAME": field_name, "USER_TYPE_ID": ty, "LABEL": name,
                        "EDIT_FORM_LABEL": name, "LIST_COLUMN_LABEL": name, "MULTIPLE": "N"}}),
            )
        }
        WriteOp::CreateCustomer { .. } | WriteOp::UpdateCustomer { .. } => return None,
    })
}

fn outcome(method: &str, v: &Value) -> WriteOutcome {
    let created_id = match method {
        "crm.activity.todo.add" => v.get("id").and_then(id_of),
        "crm.deal.add" => id_of(v),
        "tasks.task.add" => v.get("task").and_then(|t| t.get("id")).and_then(id_of),
        m if m.ends_with(".userfield.add") => id_of(v),
        _ => None,
    };
    WriteOutcome { created_id }
}

fn unsupported() -> ConnectorError {
    ConnectorError::Unsupported {
        what: "amoCRM customers (Bitrix24 has no customers entity; use a deal category)".into(),
    }
}

fn id_of(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// Applies `ops`, one result per op, in order.
pub(crate) async fn apply(
    client: &B24Client,
    ops: &[WriteOp],
) -> Vec<Result<WriteOutcome, ConnectorError>> {
    let mut out = Vec::with_capacity(ops.len());
    let per = client.inner.settings.batch_size.max(1);
    for chunk in ops.chunks(per) {
        let cmds: Vec<Option<Command>> = chunk
            .iter()
            .enumerate()
            .map(|(i, op)| command_of(i, op))
            .collect();
        let sent: Vec<Command> = cmds.iter().flatten().cloned().collect();
        if sent.is_empty() {
            out.extend(chunk.iter().map(|_| Err(unsupported())));
            continue;
        }
        match client.batch::<Value>(&sent, false, false).await {
            Ok(mut res) => {
                for c in &cmds {
                    let Some(c) = c else {
                        out.push(Err(unsupported()));
                        continue;
                    };
                    if let Some(e) = res.result_error.get(&c.key) {
                        out.push(Err(api_error(400, e, &c.method)));
                        continue;
                    }
                    match res.result.remove(&c.key) {
                        // `false` is how legacy methods say "not done".
                        Some(Value::Bool(false)) => out.push(Err(ConnectorError::Rejected {
                            status: 200,
                            code: None,
                            message: format!("{} answered false", c.method),
                        })),
                        Some(v) => out.push(Ok(outcome(&c.method, &v))),
                        None => out.push(Err(ConnectorError::Unconfirmed {
                            message: format!("{} has no result in the batch answer", c.method),
                        })),
                    }
                }
            }
            Err(e) => out.extend(chunk.iter().map(|_| Err(e.clone()))),
        }
    }
    out
}
