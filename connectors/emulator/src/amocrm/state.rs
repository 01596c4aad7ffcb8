//! The emulated account's records, in amoCRM's own terms (ids, unix seconds, custom field
//! values), with the indexes the list endpoints need.
//!
//! [`AmoData`] is built once from the neutral [`Dataset`](crate::seed::Dataset) and then
//! changed only by API writes and by the test mutations of
//! [`AmoEmulator`](super::AmoEmulator). Every change goes through a method here, so the
//! `updated_at` index and the events stay consistent.
use crate::rng::Rng;
use crate::seed::{ContactKind, Dataset, StageKind};
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// amoCRM's shared "won" status (every pipeline).
pub const STATUS_WON: u64 = 142;
/// amoCRM's shared "lost" status (every pipeline).
pub const STATUS_LOST: u64 = 143;

/// Field ids of the emulated account (stable across seeds so mappings can name them).
pub mod field_ids {
    /// Contact phone (multitext, `PHONE`).
    pub const CONTACT_PHONE: u64 = 264_911;
    /// Contact email (multitext, `EMAIL`).
    pub const CONTACT_EMAIL: u64 = 264_913;
    /// Contact position (text, `POSITION`).
    pub const CONTACT_POSITION: u64 = 264_909;
    /// Contact "Сегмент" (text): where rebuy may write the RFM segment.
    pub const CONTACT_SEGMENT: u64 = 264_915;
    /// Contact "Дата следующей покупки" (date).
    pub const CONTACT_NEXT_PURCHASE: u64 = 264_917;
    /// Company phone (multitext, `PHONE`).
    pub const COMPANY_PHONE: u64 = 264_921;
    /// Company email (multitext, `EMAIL`).
    pub const COMPANY_EMAIL: u64 = 264_923;
    /// Company web site (url, `WEB`).
    pub const COMPANY_WEB: u64 = 264_925;
    /// Lead "Источник" (select).
    pub const LEAD_SOURCE: u64 = 270_001;
    /// Lead "Дата следующей покупки" (date).
    pub const LEAD_NEXT_PURCHASE: u64 = 270_003;
    /// Lead "Сегмент" (text).
    pub const LEAD_SEGMENT: u64 = 270_005;
    /// Lead "Повторная продажа" (checkbox).
    pub const LEAD_REPEAT: u64 = 270_007;
    /// Customer "Комментарий" (text): the one seeded custom field of customers.
    pub const CUSTOMER_NOTE: u64 = 275_001;
    /// Catalog element price (`PRICE`); also the `price_id` of lead catalog links.
    pub const CATALOG_PRICE: u64 = 280_001;
    /// Catalog element SKU (`SKU`).
    pub const CATALOG_SKU: u64 = 280_003;
    /// Catalog element unit (`UNIT`).
    pub const CATALOG_UNIT: u64 = 280_005;
}
use field_ids::*;

/// The id of the products catalog.
pub const PRODUCTS_CATALOG_ID: u64 = 5_001;

/// The account.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AmoAccount {
    /// Account id.
    pub id: u64,
    /// Display name.
    pub name: String,
    /// Subdomain (`{subdomain}.amocrm.ru`).
    pub subdomain: String,
    /// ISO currency (`RUB`).
    pub currency: String,
    /// Customers mode (`disabled`, `periodicity`, `segments`, `unavailable`).
    pub customers_mode: String,
    /// Created.
    pub created_at: i64,
    /// The user the API acts as (the administrator).
    pub current_user_id: u64,
}

/// A user.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AmoUser {
    /// Id.
    pub id: u64,
    /// Name.
    pub name: String,
    /// Email (login).
    pub email: String,
    /// Administrator.
    pub is_admin: bool,
    /// Active.
    pub is_active: bool,
}

/// A pipeline status.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AmoStatus {
    /// Id (142/143 for won/lost).
    pub id: u64,
    /// Name.
    pub name: String,
    /// Sort.
    pub sort: i64,
    /// Editable (false for unsorted, won, lost).
    pub is_editable: bool,
    /// Pipeline.
    pub pipeline_id: u64,
    /// Colour.
    pub color: String,
    /// `1` for the unsorted status, `0` otherwise.
    pub status_type: i64,
}

/// A pipeline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AmoPipeline {
    /// Id.
    pub id: u64,
    /// Name.
    pub name: String,
    /// Sort.
    pub sort: i64,
    /// Main pipeline.
    pub is_main: bool,
    /// Archived.
    pub is_archive: bool,
    /// Statuses in sort order (unsorted first, 142 and 143 last).
    pub statuses: Vec<AmoStatus>,
}

impl AmoPipeline {
    /// Whether `status_id` is a status of this pipeline.
    pub fn has_status(&self, status_id: u64) -> bool {
        self.statuses.iter().any(|s| s.id == status_id)
    }

    /// The first non-unsorted open status (where amoCRM puts a lead moved without a status).
    pub fn first_open_status(&self) -> Option<u64> {
        self.statuses
            .iter()
            .find(|s| s.status_type == 0 && s.id != STATUS_WON && s.id != STATUS_LOST)
            .map(|s| s.id)
    }
}

/// One value of a custom field.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AmoValue {
    /// The value (string, number or bool as amoCRM sends it).
    pub value: Value,
    /// Enum id (multitext/select).
    pub enum_id: Option<u64>,
    /// Enum code (multitext: `WORK`, `MOB`...).
    pub enum_code: Option<String>,
}

/// A custom field value of an entity.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AmoFieldValue {
    /// Field id.
    pub field_id: u64,
    /// Field name.
    pub field_name: String,
    /// Field code (`PHONE`, `EMAIL`...).
    pub field_code: Option<String>,
    /// Field type (`multitext`, `text`, `select`, `date`...).
    pub field_type: String,
    /// Values.
    pub values: Vec<AmoValue>,
}

/// A tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AmoTag {
    /// Id.
    pub id: u64,
    /// Name.
    pub name: String,
}

/// A contact.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AmoContact {
    /// Id.
    pub id: u64,
    /// Name.
    pub name: String,
    /// First name.
    pub first_name: String,
    /// Last name.
    pub last_name: String,
    /// Responsible user.
    pub responsible_user_id: u64,
    /// Created by (user id, 0 = robot).
    pub created_by: u64,
    /// Updated by.
    pub updated_by: u64,
    /// Created (unix s).
    pub created_at: i64,
    /// Updated (unix s).
    pub updated_at: i64,
    /// Custom field values (phones and emails included).
    pub custom_fields: Vec<AmoFieldValue>,
    /// Company.
    pub company_id: Option<u64>,
    /// Tags.
    pub tags: Vec<AmoTag>,
}

/// A company.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AmoCompany {
    /// Id.
    pub id: u64,
    /// Name.
    pub name: String,
    /// Responsible user.
    pub responsible_user_id: u64,
    /// Created by.
    pub created_by: u64,
    /// Updated by.
    pub updated_by: u64,
    /// Created (unix s).
    pub created_at: i64,
    /// Updated (unix s).
    pub updated_at: i64,
    /// Custom field values.
    pub custom_fields: Vec<AmoFieldValue>,
    /// Tags.
    pub tags: Vec<AmoTag>,
}

/// A contact linked to a lead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct AmoLeadContact {
    /// Contact id.
    pub id: u64,
    /// The main contact of the lead.
    pub is_main: bool,
}

/// A catalog element linked to a lead (a product row).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct AmoLeadProduct {
    /// Catalog element id.
    pub element_id: u64,
    /// Quantity.
    pub quantity: u32,
}

/// A lead (deal).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AmoLead {
    /// Id.
    pub id: u64,
    /// Name.
    pub name: String,
    /// Amount in whole roubles.
    pub price: i64,
    /// Responsible user.
    pub responsible_user_id: u64,
    /// Status (142 won, 143 lost).
    pub status_id: u64,
    /// Pipeline.
    pub pipeline_id: u64,
    /// Created by.
    pub created_by: u64,
    /// Updated by.
    pub updated_by: u64,
    /// Created (unix s).
    pub created_at: i64,
    /// Updated (unix s).
    pub updated_at: i64,
    /// Closed (unix s), `None` while open.
    pub closed_at: Option<i64>,
    /// Custom field values.
    pub custom_fields: Vec<AmoFieldValue>,
    /// Tags.
    pub tags: Vec<AmoTag>,
    /// Linked contacts.
    pub contacts: Vec<AmoLeadContact>,
    /// Linked company.
    pub company_id: Option<u64>,
    /// Product rows (catalog links).
    pub products: Vec<AmoLeadProduct>,
}

/// A catalog element (product).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AmoCatalogElement {
    /// Id.
    pub id: u64,
    /// Name.
    pub name: String,
    /// SKU.
    pub sku: String,
    /// Unit price in whole roubles.
    pub price: i64,
    /// Unit.
    pub unit: String,
    /// Created.
    pub created_at: i64,
    /// Updated.
    pub updated_at: i64,
}

/// The products catalog.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AmoCatalog {
    /// Id.
    pub id: u64,
    /// Name.
    pub name: String,
    /// Elements by id.
    pub elements: BTreeMap<u64, AmoCatalogElement>,
}

/// An enum option of a field.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AmoEnum {
    /// Id.
    pub id: u64,
    /// Value.
    pub value: String,
    /// Code (multitext enums).
    pub code: Option<String>,
}

/// A custom field definition.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AmoFieldDef {
    /// Id.
    pub id: u64,
    /// Name.
    pub name: String,
    /// Code.
    pub code: Option<String>,
    /// Type.
    pub field_type: String,
    /// Sort.
    pub sort: i64,
    /// Options (select, multitext).
    pub enums: Vec<AmoEnum>,
}

/// Field definitions per entity type.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AmoFields {
    /// Lead fields.
    pub leads: Vec<AmoFieldDef>,
    /// Contact fields.
    pub contacts: Vec<AmoFieldDef>,
    /// Company fields.
    pub companies: Vec<AmoFieldDef>,
    /// Customer fields.
    pub customers: Vec<AmoFieldDef>,
}

impl AmoFields {
    /// The definitions of an entity type (`leads`, `contacts`, `companies`, `customers`).
    pub fn of(&self, entity: &str) -> &[AmoFieldDef] {
        match entity {
            "leads" => &self.leads,
            "contacts" => &self.contacts,
            "companies" => &self.companies,
            "customers" => &self.customers,
            _ => &[],
        }
    }

    /// The definitions of an entity type, for adding fields; `None` for an unknown entity.
    pub fn of_mut(&mut self, entity: &str) -> Option<&mut Vec<AmoFieldDef>> {
        match entity {
            "leads" => Some(&mut self.leads),
            "contacts" => Some(&mut self.contacts),
            "companies" => Some(&mut self.companies),
            "customers" => Some(&mut self.customers),
            _ => None,
        }
    }
}

/// A status of the customers funnel (periodicity mode).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AmoCustomerStatus {
    /// Id.
    pub id: u64,
    /// Name.
    pub name: String,
    /// Sort.
    pub sort: i64,
    /// The status new customers get when none is given.
    pub is_default: bool,
    /// Colour.
    pub color: String,
    /// Type code (0 editable; system statuses other codes: undocumented, emulator choice).
    pub status_type: i64,
}

/// A customer ("Покупатель").
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AmoCustomer {
    /// Id.
    pub id: u64,
    /// Name.
    pub name: String,
    /// Expected amount of the next purchase (whole units).
    pub next_price: i64,
    /// Expected date of the next purchase (unix s); 0 = none.
    pub next_date: i64,
    /// Responsible user.
    pub responsible_user_id: u64,
    /// Status (see [`AmoCustomerStatus`]).
    pub status_id: u64,
    /// Purchase period in days (unit undocumented; emulator choice: days).
    pub periodicity: i64,
    /// Creator.
    pub created_by: u64,
    /// Last editor.
    pub updated_by: u64,
    /// Created (unix s).
    pub created_at: i64,
    /// Updated (unix s).
    pub updated_at: i64,
    /// Custom field values.
    pub custom_fields: Vec<AmoFieldValue>,
    /// Tags.
    pub tags: Vec<AmoTag>,
    /// Linked contacts (`is_main` marks the main one).
    pub contacts: Vec<AmoLeadContact>,
    /// Linked company.
    pub company_id: Option<u64>,
}

/// The statuses of the customers funnel every emulated account starts with. amoCRM keeps the
/// first and the last three statuses as system ones (not editable); names and type codes are
/// not documented, so these are the emulator's choice.
pub fn default_customer_statuses() -> Vec<AmoCustomerStatus> {
    let s = |id: u64, name: &str, sort: i64, is_default: bool, color: &str, ty: i64| {
        AmoCustomerStatus {
            id,
            name: name.into(),
            sort,
            is_default,
            color: color.into(),
            status_type: ty,
        }
    };
    vec![
        s(
            CUSTOMER_STATUS_FIRST,
            "Недавно купили",
            10,
            true,
            "#99ccff",
            1,
        ),
        s(
            CUSTOMER_STATUS_FIRST + 1,
            "Больше 30 дней",
            20,
            false,
            "#fffeb2",
            0,
        ),
        s(
            CUSTOMER_STATUS_FIRST + 2,
            "30 дней до покупки",
            30,
            false,
            "#ffdc7f",
            0,
        ),
        s(
            CUSTOMER_STATUS_FIRST + 3,
            "7 дней до покупки",
            40,
            false,
            "#ffce5a",
            0,
        ),
        s(
            CUSTOMER_STATUS_FIRST + 4,
            "Ожидается покупка",
            50,
            false,
            "#ff8f92",
            2,
        ),
        s(
            CUSTOMER_STATUS_FIRST + 5,
            "Просрочена покупка",
            60,
            false,
            "#d6eaff",
            3,
        ),
        s(CUSTOMER_STATUS_FIRST + 6, "Закрыт", 70, false, "#cccccc", 4),
    ]
}

/// Id of the first customer status; the others follow.
pub const CUSTOMER_STATUS_FIRST: u64 = 8_100_001;

/// A task.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AmoTask {
    /// Id.
    pub id: u64,
    /// Created by.
    pub created_by: u64,
    /// Updated by.
    pub updated_by: u64,
    /// Created.
    pub created_at: i64,
    /// Updated.
    pub updated_at: i64,
    /// Responsible user.
    pub responsible_user_id: u64,
    /// Attached entity id.
    pub entity_id: Option<u64>,
    /// Attached entity type (`leads`, `contacts`, `companies`, `customers`).
    pub entity_type: Option<String>,
    /// Done.
    pub is_completed: bool,
    /// Type (1 call, 2 meeting).
    pub task_type_id: u64,
    /// Text.
    pub text: String,
    /// Result text when completed.
    pub result_text: Option<String>,
    /// Due (unix s).
    pub complete_till: i64,
    /// Duration in seconds.
    pub duration: i64,
}

/// An event of the account's event log (`/api/v4/events`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AmoEvent {
    /// ULID-like string id.
    pub id: String,
    /// Type (`lead_added`, `lead_deleted`, `lead_status_changed`...).
    pub event_type: String,
    /// Entity id.
    pub entity_id: u64,
    /// Entity type, singular (`lead`, `contact`, `company`, `task`).
    pub entity_type: String,
    /// Who (user id, 0 = robot/API).
    pub created_by: u64,
    /// When (unix s).
    pub created_at: i64,
    /// New value(s) in amoCRM's event value format.
    pub value_after: Value,
    /// Old value(s).
    pub value_before: Value,
}

/// A note on a lead, contact, company or customer (`/api/v4/{entity}/notes`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AmoNote {
    /// Id.
    pub id: u64,
    /// The entity type in API paths (`leads`, `contacts`, `companies`, `customers`).
    pub entity_type: String,
    /// The entity's id.
    pub entity_id: u64,
    /// `common`, `call_in`, ...
    pub note_type: String,
    /// The type's parameters (`{"text": ..}` for `common`).
    pub params: Value,
    /// Responsible user.
    pub responsible_user_id: u64,
    /// Creator.
    pub created_by: u64,
    /// Last editor.
    pub updated_by: u64,
    /// Created (unix s).
    pub created_at: i64,
    /// Updated (unix s).
    pub updated_at: i64,
    /// Pinned on the card.
    pub is_pinned: bool,
}

/// A purchase of a customer (`/api/v4/customers/{id}/transactions`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AmoTransaction {
    /// Id.
    pub id: u64,
    /// The customer.
    pub customer_id: u64,
    /// Amount in whole units.
    pub price: i64,
    /// Comment.
    pub comment: Option<String>,
    /// When the purchase was made (unix s).
    pub completed_at: i64,
    /// Creator.
    pub created_by: u64,
    /// Created (unix s).
    pub created_at: i64,
    /// Catalog elements bought: (element id, quantity).
    pub catalog_elements: Vec<(u64, u32)>,
}

/// A webhook subscription (`/api/v4/webhooks` model): every change whose code is in
/// `settings` is POSTed to `destination` (see [`crate::delivery`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AmoWebhook {
    /// Subscription id.
    pub id: u64,
    /// Destination URL.
    pub destination: String,
    /// Settings (`add_lead`, `status_lead`...).
    pub settings: Vec<String>,
    /// Sort order (lower first).
    pub sort: i64,
    /// Disabled subscriptions receive nothing.
    pub disabled: bool,
    /// Who subscribed (user id).
    pub created_by: u64,
    /// Created (unix s).
    pub created_at: i64,
    /// Updated (unix s).
    pub updated_at: i64,
    /// The account.
    pub account_id: u64,
}

/// What one write changed beyond the event log (read by the webhook emitter).
#[derive(Debug, Clone, Default)]
pub(crate) struct ChangeLog {
    /// Leads whose `updated_at` was bumped.
    pub touched_leads: BTreeSet<u64>,
    /// Contacts whose `updated_at` was bumped.
    pub touched_contacts: BTreeSet<u64>,
    /// Removed leads: (id, status_id, pipeline_id).
    pub removed_leads: Vec<(u64, u64, u64)>,
}

/// Everything the emulated account holds.
#[derive(Debug, Clone, Serialize)]
pub struct AmoData {
    /// The account.
    pub account: AmoAccount,
    /// Users by id.
    pub users: BTreeMap<u64, AmoUser>,
    /// Pipelines by id.
    pub pipelines: BTreeMap<u64, AmoPipeline>,
    /// Contacts by id.
    pub contacts: BTreeMap<u64, AmoContact>,
    /// Companies by id.
    pub companies: BTreeMap<u64, AmoCompany>,
    /// Leads by id.
    pub leads: BTreeMap<u64, AmoLead>,
    /// The products catalog.
    pub catalog: AmoCatalog,
    /// Custom field definitions.
    pub fields: AmoFields,
    /// Tasks by id.
    pub tasks: BTreeMap<u64, AmoTask>,
    /// The event log, oldest first: the generated history's (`contact_added`, `lead_added`,
    /// `lead_status_changed` when a lead closed, and in customers mode `customer_added` and
    /// `transaction_added`), then every change made through the emulator.
    pub events: Vec<AmoEvent>,
    /// Registered webhooks.
    pub webhooks: Vec<AmoWebhook>,
    /// Customers by id (the customers entity; reachable through the API only in
    /// periodicity or segments mode).
    pub customers: BTreeMap<u64, AmoCustomer>,
    /// The customers funnel's statuses (periodicity mode).
    pub customer_statuses: Vec<AmoCustomerStatus>,
    /// Notes by id.
    pub notes: BTreeMap<u64, AmoNote>,
    /// Purchases by customer id, oldest first.
    pub transactions: BTreeMap<u64, Vec<AmoTransaction>>,
    /// Tags created through `POST /api/v4/{entity}/tags`, by entity type.
    pub created_tags: BTreeMap<String, BTreeSet<u64>>,
    /// Tag colours given on creation.
    pub tag_colors: BTreeMap<u64, String>,
    #[serde(skip)]
    pub(crate) idx: Indexes,
    #[serde(skip)]
    pub(crate) changes: ChangeLog,
    #[serde(skip)]
    next_id: u64,
    #[serde(skip)]
    next_tag_id: u64,
    #[serde(skip)]
    event_rng: Option<Rng>,
}

/// Secondary indexes.
#[derive(Debug, Clone, Default)]
pub(crate) struct Indexes {
    pub lead_updated: BTreeSet<(i64, u64)>,
    pub contact_updated: BTreeSet<(i64, u64)>,
    pub company_updated: BTreeSet<(i64, u64)>,
    pub contact_leads: HashMap<u64, Vec<u64>>,
    pub company_contacts: HashMap<u64, Vec<u64>>,
    pub tags: HashMap<String, u64>,
}

fn phone_code(kind: ContactKind) -> &'static str {
    match kind {
        ContactKind::Work => "WORK",
        ContactKind::Mobile => "MOB",
        ContactKind::Home => "HOME",
        ContactKind::Other => "OTHER",
    }
}

fn email_code(kind: ContactKind) -> &'static str {
    match kind {
        ContactKind::Work => "WORK",
        ContactKind::Home | ContactKind::Mobile => "PRIV",
        ContactKind::Other => "OTHER",
    }
}

fn enums(base: u64, codes: &[&str]) -> Vec<AmoEnum> {
    codes
        .iter()
        .enumerate()
        .map(|(i, c)| AmoEnum {
            id: base + 2 * i as u64,
            value: (*c).to_owned(),
            code: Some((*c).to_owned()),
        })
        .collect()
}

fn def(
    id: u64,
    name: &str,
    code: Option<&str>,
    ty: &str,
    sort: i64,
    enums: Vec<AmoEnum>,
) -> AmoFieldDef {
    AmoFieldDef {
        id,
        name: name.into(),
        code: code.map(Into::into),
        field_type: ty.into(),
        sort,
        enums,
    }
}

fn field_defs() -> AmoFields {
    const PHONE: &[&str] = &["WORK", "WORKDD", "MOB", "FAX", "HOME", "OTHER"];
    const EMAIL: &[&str] = &["WORK", "PRIV", "OTHER"];
    let source = ["сайт", "звонок", "рекомендация", "авито"]
        .iter()
        .enumerate()
        .map(|(i, v)| AmoEnum {
            id: 541_001 + 2 * i as u64,
            value: (*v).to_owned(),
            code: None,
        })
        .collect();
    AmoFields {
        contacts: vec![
            def(
                CONTACT_POSITION,
                "Должность",
                Some("POSITION"),
                "text",
                2,
                vec![],
            ),
            def(
                CONTACT_PHONE,
                "Телефон",
                Some("PHONE"),
                "multitext",
                4,
                enums(531_001, PHONE),
            ),
            def(
                CONTACT_EMAIL,
                "Email",
                Some("EMAIL"),
                "multitext",
                6,
                enums(531_101, EMAIL),
            ),
            def(CONTACT_SEGMENT, "Сегмент", None, "text", 8, vec![]),
            def(
                CONTACT_NEXT_PURCHASE,
                "Дата следующей покупки",
                None,
                "date",
                10,
                vec![],
            ),
        ],
        companies: vec![
            def(
                COMPANY_PHONE,
                "Телефон",
                Some("PHONE"),
                "multitext",
                4,
                enums(531_201, PHONE),
            ),
            def(
                COMPANY_EMAIL,
                "Email",
                Some("EMAIL"),
                "multitext",
                6,
                enums(531_301, EMAIL),
            ),
            def(COMPANY_WEB, "Web", Some("WEB"), "url", 8, vec![]),
        ],
        leads: vec![
            def(LEAD_SOURCE, "Источник", None, "select", 2, source),
            def(
                LEAD_NEXT_PURCHASE,
                "Дата следующей покупки",
                None,
                "date",
                4,
                vec![],
            ),
            def(LEAD_SEGMENT, "Сегмент", None, "text", 6, vec![]),
            def(
                LEAD_REPEAT,
                "Повторная продажа",
                None,
                "checkbox",
                8,
                vec![],
            ),
        ],
        customers: vec![def(CUSTOMER_NOTE, "Комментарий", None, "text", 2, vec![])],
    }
}

fn multitext(
    defn: &AmoFieldDef,
    items: impl Iterator<Item = (String, &'static str)>,
) -> Option<AmoFieldValue> {
    let values: Vec<AmoValue> = items
        .map(|(value, code)| AmoValue {
            value: Value::String(value),
            enum_id: defn
                .enums
                .iter()
                .find(|e| e.code.as_deref() == Some(code))
                .map(|e| e.id),
            enum_code: Some(code.to_owned()),
        })
        .collect();
    (!values.is_empty()).then(|| value_of(defn, values))
}

/// A field value shell for a definition.
pub(crate) fn value_of(defn: &AmoFieldDef, values: Vec<AmoValue>) -> AmoFieldValue {
    AmoFieldValue {
        field_id: defn.id,
        field_name: defn.name.clone(),
        field_code: defn.code.clone(),
        field_type: defn.field_type.clone(),
        values,
    }
}

fn find_def(defs: &[AmoFieldDef], id: u64) -> &AmoFieldDef {
    // The ids passed here are the constants above, always present.
    defs.iter().find(|d| d.id == id).unwrap_or(&defs[0])
}

impl AmoData {
    /// Maps a generated dataset into amoCRM records.
    pub(crate) fn from_dataset(
        ds: &Dataset,
        account: AmoAccount,
        seed: u64,
        history_customers: bool,
    ) -> Self {
        let fields = field_defs();
        let users = ds
            .users
            .iter()
            .map(|u| {
                (
                    u.id,
                    AmoUser {
                        id: u.id,
                        name: u.name.clone(),
                        email: u.email.clone(),
                        is_admin: u.is_admin,
                        is_active: u.active,
                    },
                )
            })
            .collect();
        let mut stage_map: HashMap<u64, u64> = HashMap::new();
        let pipelines = ds
            .pipelines
            .iter()
            .map(|p| {
                let statuses = p
                    .stages
                    .iter()
                    .map(|s| {
                        let id = match s.kind {
                            StageKind::Won => STATUS_WON,
                            StageKind::Lost => STATUS_LOST,
                            _ => s.id,
                        };
                        stage_map.insert(s.id, id);
                        AmoStatus {
                            id,
                            name: s.name.clone(),
                            sort: s.sort,
                            is_editable: s.kind == StageKind::Open,
                            pipeline_id: p.id,
                            color: s.color.clone(),
                            status_type: if s.kind == StageKind::Unsorted { 1 } else { 0 },
                        }
                    })
                    .collect();
                (
                    p.id,
                    AmoPipeline {
                        id: p.id,
                        name: p.name.clone(),
                        sort: p.sort,
                        is_main: p.is_main,
                        is_archive: false,
                        statuses,
                    },
                )
            })
            .collect();

        let cdefs = &fields.contacts;
        let contacts: BTreeMap<u64, AmoContact> = ds
            .contacts
            .iter()
            .map(|c| {
                let mut cf = Vec::new();
                cf.extend(multitext(
                    find_def(cdefs, CONTACT_PHONE),
                    c.phones.iter().map(|p| (p.raw.clone(), phone_code(p.kind))),
                ));
                cf.extend(multitext(
                    find_def(cdefs, CONTACT_EMAIL),
                    c.emails
                        .iter()
                        .map(|e| (e.value.clone(), email_code(e.kind))),
                ));
                let contact = AmoContact {
                    id: c.id,
                    name: c.name.clone(),
                    first_name: c.first_name.clone(),
                    last_name: c.last_name.clone(),
                    responsible_user_id: c.responsible_user_id,
                    created_by: c.responsible_user_id,
                    updated_by: c.responsible_user_id,
                    created_at: c.created_at.as_second(),
                    updated_at: c.updated_at.as_second(),
                    custom_fields: cf,
                    company_id: c.company_id,
                    tags: vec![],
                };
                (c.id, contact)
            })
            .collect();

        let codefs = &fields.companies;
        let companies: BTreeMap<u64, AmoCompany> = ds
            .companies
            .iter()
            .map(|c| {
                let mut cf = Vec::new();
                cf.extend(multitext(
                    find_def(codefs, COMPANY_PHONE),
                    c.phones.iter().map(|p| (p.raw.clone(), phone_code(p.kind))),
                ));
                cf.extend(multitext(
                    find_def(codefs, COMPANY_EMAIL),
                    c.emails
                        .iter()
                        .map(|e| (e.value.clone(), email_code(e.kind))),
                ));
                if let Some(web) = &c.web {
                    cf.push(value_of(
                        find_def(codefs, COMPANY_WEB),
                        vec![AmoValue {
                            value: Value::String(web.clone()),
                            enum_id: None,
                            enum_code: None,
                        }],
                    ));
                }
                let company = AmoCompany {
                    id: c.id,
                    name: c.name.clone(),
                    responsible_user_id: c.responsible_user_id,
                    created_by: c.responsible_user_id,
                    updated_by: c.responsible_user_id,
                    created_at: c.created_at.as_second(),
                    updated_at: c.updated_at.as_second(),
                    custom_fields: cf,
                    tags: vec![],
                };
                (c.id, company)
            })
            .collect();

        let mut data = AmoData {
            account,
            users,
            pipelines,
            contacts,
            companies,
            leads: BTreeMap::new(),
            catalog: AmoCatalog {
                id: PRODUCTS_CATALOG_ID,
                name: "Товары".into(),
                elements: ds
                    .products
                    .iter()
                    .map(|p| {
                        let t = ds.contacts.first().map_or(0, |c| c.created_at.as_second());
                        (
                            p.id,
                            AmoCatalogElement {
                                id: p.id,
                                name: p.name.clone(),
                                sku: p.sku.clone(),
                                price: p.price,
                                unit: p.unit.clone(),
                                created_at: t,
                                updated_at: t,
                            },
                        )
                    })
                    .collect(),
            },
            fields,
            tasks: BTreeMap::new(),
            events: Vec::new(),
            webhooks: Vec::new(),
            customers: BTreeMap::new(),
            customer_statuses: default_customer_statuses(),
            notes: BTreeMap::new(),
            transactions: BTreeMap::new(),
            created_tags: BTreeMap::new(),
            tag_colors: BTreeMap::new(),
            changes: ChangeLog::default(),
            idx: Indexes::default(),
            next_id: 0,
            next_tag_id: 110_001,
            event_rng: Some(Rng::new(seed ^ 0xE7E7)),
        };

        let source_def = find_def(&data.fields.leads, LEAD_SOURCE).clone();
        for d in &ds.deals {
            let mut custom_fields = Vec::new();
            if let Some(src) = &d.source
                && let Some(e) = source_def.enums.iter().find(|e| &e.value == src)
            {
                custom_fields.push(value_of(
                    &source_def,
                    vec![AmoValue {
                        value: Value::String(e.value.clone()),
                        enum_id: Some(e.id),
                        enum_code: None,
                    }],
                ));
            }
            let tags = d.tags.iter().map(|t| data.tag(t)).collect();
            let lead = AmoLead {
                id: d.id,
                name: d.name.clone(),
                price: d.amount,
                responsible_user_id: d.responsible_user_id,
                status_id: stage_map.get(&d.stage_id).copied().unwrap_or(d.stage_id),
                pipeline_id: d.pipeline_id,
                created_by: d.responsible_user_id,
                updated_by: d.responsible_user_id,
                created_at: d.created_at.as_second(),
                updated_at: d.updated_at.as_second(),
                closed_at: d.closed_at.map(|t| t.as_second()),
                custom_fields,
                tags,
                contacts: vec![AmoLeadContact {
                    id: d.contact_id,
                    is_main: true,
                }],
                company_id: d.company_id,
                products: d
                    .products
                    .iter()
                    .map(|r| AmoLeadProduct {
                        element_id: r.product_id,
                        quantity: r.quantity,
                    })
                    .collect(),
            };
            data.leads.insert(d.id, lead);
        }
        data.rebuild_indexes();
        let max_id = |m: Option<u64>| m.unwrap_or(0);
        data.next_id = [
            max_id(data.leads.keys().next_back().copied()),
            max_id(data.contacts.keys().next_back().copied()),
            max_id(data.companies.keys().next_back().copied()),
            50_000_000,
        ]
        .into_iter()
        .max()
        .unwrap_or(50_000_000)
            + 1;
        data.generate_history(ds, history_customers);
        data
    }

    /// The generated history's events (oldest first) and, in customers mode, a customer with
    /// its purchases for every periodic buyer (regulars and consumable buyers with two or more
    /// won leads).
    fn generate_history(&mut self, ds: &Dataset, customers: bool) {
        use crate::seed::BuyerProfile;
        const DAY: i64 = 86_400;
        // (time, order within the instant, type, entity, entity type, by, after, before)
        type Ev = (i64, u8, &'static str, u64, &'static str, u64, Value, Value);
        let mut evs: Vec<Ev> = Vec::with_capacity(self.contacts.len() + 2 * self.leads.len());
        for c in self.contacts.values() {
            evs.push((
                c.created_at,
                0,
                "contact_added",
                c.id,
                "contact",
                c.created_by,
                json!([]),
                json!([]),
            ));
        }
        for l in self.leads.values() {
            let first = self
                .pipelines
                .get(&l.pipeline_id)
                .and_then(AmoPipeline::first_open_status)
                .unwrap_or(l.status_id);
            let at_first = json!([{"lead_status": {"id": first, "pipeline_id": l.pipeline_id}}]);
            evs.push((
                l.created_at,
                1,
                "lead_added",
                l.id,
                "lead",
                l.created_by,
                at_first.clone(),
                json!([]),
            ));
            if let Some(t) = l.closed_at {
                evs.push((
                    t,
                    2,
                    "lead_status_changed",
                    l.id,
                    "lead",
                    l.responsible_user_id,
                    json!([{"lead_status": {"id": l.status_id, "pipeline_id": l.pipeline_id}}]),
                    at_first,
                ));
            }
        }
        if customers
            && matches!(
                self.account.customers_mode.as_str(),
                "periodicity" | "segments"
            )
        {
            let status = self
                .customer_statuses
                .iter()
                .find(|s| s.is_default)
                .or(self.customer_statuses.first())
                .map_or(0, |s| s.id);
            let mut made: Vec<(AmoCustomer, Vec<AmoTransaction>)> = Vec::new();
            for c in &ds.contacts {
                if !matches!(c.profile, BuyerProfile::Regular | BuyerProfile::Consumable) {
                    continue;
                }
                let mut won: Vec<&AmoLead> = self
                    .leads_of_contact(c.id)
                    .iter()
                    .filter_map(|id| self.leads.get(id))
                    .filter(|l| l.status_id == STATUS_WON && l.closed_at.is_some())
                    .collect();
                if won.len() < 2 {
                    continue;
                }
                won.sort_by_key(|l| (l.closed_at, l.id));
                let Some(contact) = self.contacts.get(&c.id) else {
                    continue;
                };
                let (first, last) = (
                    won.first().and_then(|l| l.closed_at).unwrap_or_default(),
                    won.last().and_then(|l| l.closed_at).unwrap_or_default(),
                );
                let total: i64 = won.iter().map(|l| l.price).sum();
                let cycle = i64::from(c.cycle_days.unwrap_or(30));
                let customer = AmoCustomer {
                    id: 0,
                    name: contact.name.clone(),
                    next_price: total / won.len() as i64,
                    next_date: last + cycle * DAY,
                    responsible_user_id: contact.responsible_user_id,
                    status_id: status,
                    periodicity: cycle,
                    created_by: contact.responsible_user_id,
                    updated_by: contact.responsible_user_id,
                    created_at: first,
                    updated_at: last,
                    custom_fields: Vec::new(),
                    tags: Vec::new(),
                    contacts: vec![AmoLeadContact {
                        id: c.id,
                        is_main: true,
                    }],
                    company_id: contact.company_id,
                };
                let txs = won
                    .iter()
                    .map(|l| AmoTransaction {
                        id: 0,
                        customer_id: 0,
                        price: l.price,
                        comment: Some(format!("Сделка #{}", l.id)),
                        completed_at: l.closed_at.unwrap_or_default(),
                        created_by: l.responsible_user_id,
                        created_at: l.closed_at.unwrap_or_default(),
                        catalog_elements: l
                            .products
                            .iter()
                            .map(|p| (p.element_id, p.quantity))
                            .collect(),
                    })
                    .collect();
                made.push((customer, txs));
            }
            made.sort_by_key(|(c, _)| c.created_at);
            for (mut c, mut txs) in made {
                c.id = self.new_id();
                for t in &mut txs {
                    t.id = self.new_id();
                    t.customer_id = c.id;
                }
                evs.push((
                    c.created_at,
                    3,
                    "customer_added",
                    c.id,
                    "customer",
                    c.created_by,
                    json!([]),
                    json!([]),
                ));
                self.transactions.insert(c.id, txs);
                self.customers.insert(c.id, c);
            }
        }
        evs.sort_by_key(|e| (e.0, e.1, e.3));
        for (at, _, ty, id, entity, by, after, before) in evs {
            self.event(ty, id, entity, by, at, after, before);
        }
    }

    fn rebuild_indexes(&mut self) {
        let mut idx = Indexes {
            tags: std::mem::take(&mut self.idx.tags),
            ..Indexes::default()
        };
        for l in self.leads.values() {
            idx.lead_updated.insert((l.updated_at, l.id));
            for c in &l.contacts {
                idx.contact_leads.entry(c.id).or_default().push(l.id);
            }
        }
        for c in self.contacts.values() {
            idx.contact_updated.insert((c.updated_at, c.id));
            if let Some(co) = c.company_id {
                idx.company_contacts.entry(co).or_default().push(c.id);
            }
        }
        for c in self.companies.values() {
            idx.company_updated.insert((c.updated_at, c.id));
        }
        self.idx = idx;
    }

    /// The tag with this name, created when new.
    pub(crate) fn tag(&mut self, name: &str) -> AmoTag {
        if let Some(&id) = self.idx.tags.get(name) {
            return AmoTag {
                id,
                name: name.to_owned(),
            };
        }
        let id = self.next_tag_id;
        self.next_tag_id += 2;
        self.idx.tags.insert(name.to_owned(), id);
        AmoTag {
            id,
            name: name.to_owned(),
        }
    }

    /// A tag by id, when it exists.
    pub(crate) fn tag_by_id(&self, id: u64) -> Option<AmoTag> {
        self.idx
            .tags
            .iter()
            .find(|(_, v)| **v == id)
            .map(|(k, _)| AmoTag {
                id,
                name: k.clone(),
            })
    }

    /// A fresh id for a new entity.
    pub(crate) fn new_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Lead ids linked to a contact.
    pub fn leads_of_contact(&self, contact_id: u64) -> &[u64] {
        self.idx
            .contact_leads
            .get(&contact_id)
            .map_or(&[], Vec::as_slice)
    }

    /// Contact ids of a company.
    pub fn contacts_of_company(&self, company_id: u64) -> &[u64] {
        self.idx
            .company_contacts
            .get(&company_id)
            .map_or(&[], Vec::as_slice)
    }

    /// The pipeline holding `status_id` for a lead in `pipeline_id`: 142/143 belong to all.
    pub fn status_valid(&self, pipeline_id: u64, status_id: u64) -> bool {
        self.pipelines
            .get(&pipeline_id)
            .is_some_and(|p| p.has_status(status_id))
    }

    /// Sets a lead's `updated_at` (keeping the index right).
    pub(crate) fn touch_lead(&mut self, id: u64, now: i64, by: u64) {
        if let Some(l) = self.leads.get_mut(&id) {
            self.idx.lead_updated.remove(&(l.updated_at, id));
            l.updated_at = now.max(l.created_at);
            l.updated_by = by;
            self.idx.lead_updated.insert((l.updated_at, id));
            self.changes.touched_leads.insert(id);
        }
    }

    /// Sets a contact's `updated_at`.
    pub(crate) fn touch_contact(&mut self, id: u64, now: i64, by: u64) {
        if let Some(c) = self.contacts.get_mut(&id) {
            self.idx.contact_updated.remove(&(c.updated_at, id));
            c.updated_at = now.max(c.created_at);
            c.updated_by = by;
            self.idx.contact_updated.insert((c.updated_at, id));
            self.changes.touched_contacts.insert(id);
        }
    }

    /// Sets a company's `updated_at`.
    pub(crate) fn touch_company(&mut self, id: u64, now: i64, by: u64) {
        if let Some(c) = self.companies.get_mut(&id) {
            self.idx.company_updated.remove(&(c.updated_at, id));
            c.updated_at = now.max(c.created_at);
            c.updated_by = by;
            self.idx.company_updated.insert((c.updated_at, id));
        }
    }

    /// Inserts a new lead (ids and indexes kept right).
    pub(crate) fn insert_lead(&mut self, lead: AmoLead) {
        self.idx.lead_updated.insert((lead.updated_at, lead.id));
        for c in &lead.contacts {
            self.idx
                .contact_leads
                .entry(c.id)
                .or_default()
                .push(lead.id);
        }
        self.leads.insert(lead.id, lead);
    }

    /// Removes a lead; returns it.
    pub(crate) fn remove_lead(&mut self, id: u64) -> Option<AmoLead> {
        let lead = self.leads.remove(&id)?;
        self.idx.lead_updated.remove(&(lead.updated_at, id));
        self.changes
            .removed_leads
            .push((id, lead.status_id, lead.pipeline_id));
        for c in &lead.contacts {
            if let Some(v) = self.idx.contact_leads.get_mut(&c.id) {
                v.retain(|&l| l != id);
            }
        }
        Some(lead)
    }

    /// Moves a lead to a status (closing/reopening it) and records `lead_status_changed`.
    /// Returns the old (pipeline, status).
    pub(crate) fn move_lead(
        &mut self,
        id: u64,
        pipeline_id: u64,
        status_id: u64,
        now: i64,
        by: u64,
    ) -> Option<(u64, u64)> {
        let lead = self.leads.get_mut(&id)?;
        let old = (lead.pipeline_id, lead.status_id);
        if old == (pipeline_id, status_id) {
            return Some(old);
        }
        lead.pipeline_id = pipeline_id;
        lead.status_id = status_id;
        let closing = status_id == STATUS_WON || status_id == STATUS_LOST;
        lead.closed_at = if closing { Some(now) } else { None };
        self.event(
            "lead_status_changed",
            id,
            "lead",
            by,
            now,
            json!([{"lead_status": {"id": status_id, "pipeline_id": pipeline_id}}]),
            json!([{"lead_status": {"id": old.1, "pipeline_id": old.0}}]),
        );
        Some(old)
    }

    /// Appends an event with a ULID-like id.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn event(
        &mut self,
        event_type: &str,
        entity_id: u64,
        entity_type: &str,
        by: u64,
        now: i64,
        value_after: Value,
        value_before: Value,
    ) {
        let rng = self.event_rng.get_or_insert_with(|| Rng::new(1));
        let id = ulid_like(now, self.events.len() as u64, rng);
        self.events.push(AmoEvent {
            id,
            event_type: event_type.to_owned(),
            entity_id,
            entity_type: entity_type.to_owned(),
            created_by: by,
            created_at: now,
            value_after,
            value_before,
        });
    }
}

/// A 26-character lower-case Crockford base32 id: 48 bits of milliseconds then 80 bits of
/// randomness, like `01drbfj5a8k9zd60bgg907a6w9`.
fn ulid_like(now_secs: i64, seq: u64, rng: &mut Rng) -> String {
    const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
    let ms = (now_secs.max(0) as u128) * 1000 + (seq % 1000) as u128;
    let rand = ((rng.next_u64() as u128) << 16) | (rng.next_u64() as u128 & 0xFFFF);
    let v: u128 = (ms << 80) | (rand & ((1u128 << 80) - 1));
    (0..26)
        .rev()
        .map(|i| ALPHABET[((v >> (i * 5)) & 31) as usize] as char)
        .collect()
}

/// The neutral dataset's users as the account's users (for the account's `current_user_id`).
pub(crate) fn admin_of(ds: &Dataset) -> u64 {
    ds.users
        .iter()
        .find(|u| u.is_admin)
        .or(ds.users.first())
        .map_or(0, |u| u.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulid_shape_and_order() {
        let mut rng = Rng::new(1);
        let a = ulid_like(1_700_000_000, 0, &mut rng);
        let b = ulid_like(1_700_000_001, 1, &mut rng);
        assert_eq!(a.len(), 26);
        assert!(a < b);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase())
        );
    }
}
