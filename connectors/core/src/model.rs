//! The CRM-neutral domain model. Connectors map their wire types into these; the cache stores
//! them; the analytics read them. Times are `jiff::Timestamp` (absolute instants, serialised in
//! RFC 3339 with `Z` in text formats, as seconds and nanoseconds in the binary cache); local dates are derived with the portal's time zone where a rule needs
//! them. Money is exact.
//!
//! Serialisation note: these types are stored with a non-self-describing codec (postcard), so
//! they use no `skip_serializing_if`, `flatten` or untagged enums.
use crate::ids::*;
use crate::money::{Currency, Money};
use crate::phone::Phone;
use jiff::Timestamp;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// Which CRM a portal runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CrmKind {
    /// amoCRM / Kommo, API v4.
    Amocrm,
    /// Bitrix24 REST.
    Bitrix24,
}

impl CrmKind {
    /// The lower-case name used in config and paths.
    pub fn as_str(self) -> &'static str {
        match self {
            CrmKind::Amocrm => "amocrm",
            CrmKind::Bitrix24 => "bitrix24",
        }
    }
}

/// The CRM account behind a portal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Account {
    /// The CRM's account id (amoCRM account id; Bitrix24: 0, the portal is named by `domain`).
    pub id: u64,
    /// Display name.
    pub name: String,
    /// amoCRM subdomain or Bitrix24 domain.
    pub domain: String,
    /// The account currency.
    pub currency: Currency,
    /// IANA time zone of the account when the CRM reports it.
    pub time_zone: Option<String>,
    /// amoCRM customers mode (`periodicity`, `segments`, `disabled`, `unavailable`); `None` for
    /// Bitrix24.
    pub customers_mode: Option<String>,
}

/// One value of a custom field, kept as the CRM's text so nothing is lost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomFieldValue {
    /// Field id (amoCRM numeric id as text; Bitrix24 `UF_CRM_...` name).
    pub field_id: String,
    /// Field code when the CRM has one (amoCRM `field_code`, e.g. `PHONE`).
    pub code: Option<String>,
    /// Field name when the CRM sends it.
    pub name: Option<String>,
    /// Values as text, in CRM order.
    pub values: Vec<String>,
}

/// A person.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Contact {
    /// CRM id.
    pub id: ContactId,
    /// Full display name.
    pub name: String,
    /// Phones, normalised with the raw value kept.
    pub phones: Vec<Phone>,
    /// Emails, lower-cased; invalid ones are dropped here and kept in `custom_fields`.
    pub emails: Vec<String>,
    /// The company the contact belongs to (amoCRM: at most one).
    pub company_id: Option<CompanyId>,
    /// Responsible manager.
    pub responsible_user_id: Option<UserId>,
    /// Created.
    #[serde(with = "crate::timestamp")]
    pub created_at: Timestamp,
    /// Last modified.
    #[serde(with = "crate::timestamp")]
    pub updated_at: Timestamp,
    /// Every custom field value as the CRM sent it (phones and emails included).
    pub custom_fields: Vec<CustomFieldValue>,
}

/// A company (the customer in B2B mode).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Company {
    /// CRM id.
    pub id: CompanyId,
    /// Name.
    pub name: String,
    /// Phones.
    pub phones: Vec<Phone>,
    /// Emails, lower-cased.
    pub emails: Vec<String>,
    /// Responsible manager.
    pub responsible_user_id: Option<UserId>,
    /// Created.
    #[serde(with = "crate::timestamp")]
    pub created_at: Timestamp,
    /// Last modified.
    #[serde(with = "crate::timestamp")]
    pub updated_at: Timestamp,
    /// Every custom field value as sent.
    pub custom_fields: Vec<CustomFieldValue>,
}

/// Where a deal stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DealState {
    /// In an intermediate stage.
    Open,
    /// Closed as won (amoCRM status 142, Bitrix24 semantic `S`).
    Won,
    /// Closed as lost (amoCRM status 143, Bitrix24 semantic `F`).
    Lost,
}

/// A line of a deal's products (Bitrix24 product rows; amoCRM catalog elements of a lead).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProductRow {
    /// Catalog product id when the row references one.
    pub product_id: Option<u64>,
    /// Product name as shown in the deal.
    pub name: String,
    /// Final unit price.
    pub price: Decimal,
    /// Quantity (may be fractional: litres, kilograms).
    pub quantity: Decimal,
}

/// A product row listed on its own (not inside its deal), with the ids that place it: the
/// cache keeps these apart from the deals and joins them when the analysis reads the deals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DealProductRow {
    /// The row's own id in the CRM (listings are ordered and resumed by it).
    pub id: u64,
    /// The deal it belongs to.
    pub deal_id: DealId,
    /// The row.
    pub row: ProductRow,
}

/// A deal (amoCRM: lead).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deal {
    /// CRM id.
    pub id: DealId,
    /// Title.
    pub name: String,
    /// Pipeline (amoCRM) or category (Bitrix24).
    pub pipeline_id: PipelineId,
    /// Stage (status) within the pipeline.
    pub stage_id: StageId,
    /// Open, won or lost.
    pub state: DealState,
    /// The deal amount; `None` when the CRM has no amount set.
    pub amount: Option<Money>,
    /// The main contact.
    pub main_contact_id: Option<ContactId>,
    /// All linked contacts, the main one included, in CRM order.
    pub contact_ids: Vec<ContactId>,
    /// Linked company.
    pub company_id: Option<CompanyId>,
    /// Responsible manager.
    pub responsible_user_id: Option<UserId>,
    /// Created.
    #[serde(with = "crate::timestamp")]
    pub created_at: Timestamp,
    /// Last modified.
    #[serde(with = "crate::timestamp")]
    pub updated_at: Timestamp,
    /// When the deal was closed (won or lost); `None` while open.
    #[serde(with = "crate::timestamp::option")]
    pub closed_at: Option<Timestamp>,
    /// Product rows, when the CRM provides them.
    pub products: Vec<ProductRow>,
    /// Every custom field value as sent.
    pub custom_fields: Vec<CustomFieldValue>,
}

/// The kind of a pipeline stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StageKind {
    /// Work in progress (includes amoCRM "unsorted").
    Open,
    /// Final, won.
    Won,
    /// Final, lost.
    Lost,
}

/// A stage of a pipeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stage {
    /// Stage id.
    pub id: StageId,
    /// Name.
    pub name: String,
    /// Sort order within the pipeline.
    pub sort: i64,
    /// Open, won or lost.
    pub kind: StageKind,
}

/// A sales pipeline (amoCRM) or deal category (Bitrix24).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pipeline {
    /// Id.
    pub id: PipelineId,
    /// Name.
    pub name: String,
    /// The account's main/default pipeline.
    pub is_main: bool,
    /// Sort order.
    pub sort: i64,
    /// Stages in sort order.
    pub stages: Vec<Stage>,
}

/// A CRM user (manager).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Id.
    pub id: UserId,
    /// Display name.
    pub name: String,
    /// Email (lower-cased) when known.
    pub email: Option<String>,
    /// Whether the user is active.
    pub active: bool,
}

/// The kinds of entities rebuy pulls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntityKind {
    /// Users.
    Users,
    /// Pipelines with stages.
    Pipelines,
    /// Companies.
    Companies,
    /// Contacts.
    Contacts,
    /// Deals / leads.
    Deals,
    /// Product rows of deals, where the CRM lists them on their own (Bitrix24).
    #[serde(rename = "product_rows")]
    ProductRows,
}

impl EntityKind {
    /// All kinds in sync order (references first).
    pub const ALL: [EntityKind; 6] = [
        EntityKind::Users,
        EntityKind::Pipelines,
        EntityKind::Companies,
        EntityKind::Contacts,
        EntityKind::Deals,
        EntityKind::ProductRows,
    ];

    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            EntityKind::Users => "users",
            EntityKind::Pipelines => "pipelines",
            EntityKind::Companies => "companies",
            EntityKind::Contacts => "contacts",
            EntityKind::Deals => "deals",
            EntityKind::ProductRows => "product_rows",
        }
    }
}

/// An entity that was deleted in the CRM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deletion {
    /// What kind of entity.
    pub entity: EntityKind,
    /// Its id.
    pub id: u64,
    /// When it was deleted, when the CRM says.
    pub at: Option<Timestamp>,
}

/// What the CRM says of a task (amoCRM task, Bitrix24 to-do activity) rebuy created: read back
/// so that `rebuy results` knows which touches a manager carried out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskState {
    /// The task's id.
    pub id: u64,
    /// Whether it is closed as done.
    pub completed: bool,
    /// When the CRM last changed it (for a completed task: about when it was done).
    pub updated_at: Option<jiff::Timestamp>,
}
