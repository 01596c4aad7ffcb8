//! Events (the deletion log), tasks and the answers to bulk writes.
use super::{Tag, Text};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// An event. `GET /api/v4/events`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Event {
    /// Event id (a string, ULID-like).
    pub id: Text,
    /// Type (`lead_deleted`, `contact_deleted`, `company_deleted`, `lead_status_changed`, ...).
    #[serde(rename = "type")]
    pub kind: String,
    /// The entity's id.
    pub entity_id: u64,
    /// The entity's type (`lead`, `contact`, `company`).
    pub entity_type: Option<String>,
    /// Who did it.
    pub created_by: Option<u64>,
    /// When.
    #[serde(with = "jiff::fmt::serde::timestamp::second::optional")]
    pub created_at: Option<Timestamp>,
    /// Account.
    pub account_id: Option<u64>,
}

/// `_embedded` of an events page.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Events {
    /// The events.
    pub events: Vec<Event>,
}

/// A task to create: an item of `POST /api/v4/tasks`.
#[derive(Debug, Clone, Serialize)]
pub struct NewTask<'a> {
    /// The task text.
    pub text: &'a str,
    /// Due, Unix seconds.
    pub complete_till: i64,
    /// The entity it is about.
    pub entity_id: u64,
    /// `leads`, `contacts` or `companies`.
    pub entity_type: &'static str,
    /// Who does it.
    pub responsible_user_id: u64,
    /// 1 call, 2 meeting, or an account-specific type.
    pub task_type_id: u64,
    /// Echoed back in the answer.
    pub request_id: String,
}

/// A lead to create: an item of `POST /api/v4/leads`.
#[derive(Debug, Clone, Serialize)]
pub struct NewLead {
    /// Title.
    pub name: String,
    /// Pipeline.
    pub pipeline_id: u64,
    /// Status.
    pub status_id: u64,
    /// Whole currency units (amoCRM `price` is an integer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub price: Option<i64>,
    /// Manager.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub responsible_user_id: Option<u64>,
    /// Links: `{"contacts":[{"id":..,"is_main":true}],"companies":[{"id":..}]}`.
    #[serde(
        rename = "_embedded",
        skip_serializing_if = "serde_json::Value::is_null"
    )]
    pub embedded: serde_json::Value,
    /// Echoed back in the answer.
    pub request_id: String,
}

/// An item of a `PATCH /api/v4/{leads|contacts|companies}` array.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EntityPatch {
    /// The entity.
    pub id: u64,
    /// New pipeline (leads).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pipeline_id: Option<u64>,
    /// New status (leads).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_id: Option<u64>,
    /// Field values to set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub custom_fields_values: Option<Vec<CustomFieldWrite>>,
    /// Tags (replaces the whole set).
    #[serde(rename = "_embedded", skip_serializing_if = "Option::is_none")]
    pub embedded: Option<PatchEmbedded>,
    /// Echoed back in the answer.
    pub request_id: String,
}

/// `_embedded` of an [`EntityPatch`].
#[derive(Debug, Clone, Default, Serialize)]
pub struct PatchEmbedded {
    /// The complete new tag set.
    pub tags: Vec<Tag>,
}

/// A custom field value to write: `{"field_id": 1, "values": [{"value": "x"}]}`; `values: null`
/// clears the field.
#[derive(Debug, Clone, Serialize)]
pub struct CustomFieldWrite {
    /// Field id.
    pub field_id: u64,
    /// The values, or `None` to clear.
    pub values: Option<Vec<CustomFieldWriteValue>>,
}

/// One value to write.
#[derive(Debug, Clone, Serialize)]
pub struct CustomFieldWriteValue {
    /// The value.
    pub value: String,
}

/// An item of a bulk write's answer: `{"id": 1, "request_id": "0", "updated_at": ..}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct WriteResult {
    /// The entity's id (created or updated).
    pub id: u64,
    /// The request id sent with the item.
    pub request_id: Option<Text>,
}

/// `_embedded` of a bulk write's answer, under whichever entity key it uses.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct WriteResults {
    /// Leads written.
    pub leads: Vec<WriteResult>,
    /// Contacts written.
    pub contacts: Vec<WriteResult>,
    /// Companies written.
    pub companies: Vec<WriteResult>,
    /// Tasks written.
    pub tasks: Vec<WriteResult>,
    /// Customers written.
    pub customers: Vec<WriteResult>,
    /// Custom fields created.
    pub custom_fields: Vec<WriteResult>,
}

/// An item of `POST /api/v4/customers` (with `_embedded.contacts`) or `PATCH
/// /api/v4/customers` (with `id`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct CustomerWrite {
    /// Id (updates only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    /// Name (creation only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Customer status.
    pub status_id: u64,
    /// Next purchase (unix s).
    pub next_date: i64,
    /// Next purchase amount (whole units).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_price: Option<i64>,
    /// Manager.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub responsible_user_id: Option<u64>,
    /// Links (creation only): `{"contacts":[{"id":..,"is_main":true}],"companies":[{"id":..}]}`.
    #[serde(
        rename = "_embedded",
        skip_serializing_if = "serde_json::Value::is_null"
    )]
    pub embedded: serde_json::Value,
    /// Echoed back in the answer.
    pub request_id: String,
}

/// An item of `POST /api/v4/{entity}/custom_fields`.
#[derive(Debug, Clone, Serialize)]
pub struct NewField {
    /// Name.
    pub name: String,
    /// Type (`text`, `date`, `select`).
    #[serde(rename = "type")]
    pub field_type: &'static str,
    /// Values of a select.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub enums: Vec<NewEnum>,
    /// Echoed back in the answer.
    pub request_id: String,
}

/// One value of a new select field.
#[derive(Debug, Clone, Serialize)]
pub struct NewEnum {
    /// Text.
    pub value: String,
    /// Order.
    pub sort: i64,
}
