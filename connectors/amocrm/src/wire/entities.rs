//! Leads, contacts and companies.
use super::{Amount, CustomField, IdRef, Tag};
use jiff::Timestamp;
use serde::Deserialize;

/// A lead (rebuy's deal). `GET /api/v4/leads[?with=contacts]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Lead {
    /// Lead id.
    pub id: u64,
    /// Title.
    pub name: Option<String>,
    /// Amount in whole currency units (amoCRM); may be `null`.
    pub price: Option<Amount>,
    /// Kommo's exact amount with minor units; wins over `price` when present.
    pub price_with_minor_units: Option<Amount>,
    /// Responsible user (0 = none).
    pub responsible_user_id: Option<u64>,
    /// Group of the responsible user.
    pub group_id: Option<u64>,
    /// Status (stage); 142 won, 143 lost in every pipeline.
    pub status_id: u64,
    /// Pipeline.
    pub pipeline_id: u64,
    /// Loss reason.
    pub loss_reason_id: Option<u64>,
    /// Creator (0 = robot).
    pub created_by: Option<u64>,
    /// Last editor.
    pub updated_by: Option<u64>,
    /// Created.
    #[serde(with = "jiff::fmt::serde::timestamp::second::required")]
    pub created_at: Timestamp,
    /// Last modified.
    #[serde(with = "jiff::fmt::serde::timestamp::second::required")]
    pub updated_at: Timestamp,
    /// Closed (won or lost).
    #[serde(with = "jiff::fmt::serde::timestamp::second::optional")]
    pub closed_at: Option<Timestamp>,
    /// Deleted (only with `with=only_deleted`).
    pub is_deleted: Option<bool>,
    /// Custom field values; `null` when none.
    pub custom_fields_values: Option<Vec<CustomField>>,
    /// Account.
    pub account_id: Option<u64>,
    /// Linked entities.
    #[serde(rename = "_embedded")]
    pub embedded: LeadEmbedded,
}

/// `_embedded` of a lead.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct LeadEmbedded {
    /// Tags.
    pub tags: Vec<Tag>,
    /// Contacts (with `with=contacts`).
    pub contacts: Vec<LinkedContact>,
    /// Company (at most one).
    pub companies: Vec<IdRef>,
    /// Products (with `with=catalog_elements`).
    pub catalog_elements: Vec<CatalogElement>,
}

/// A contact linked to a lead: `{"id": 1, "is_main": true}`.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(default)]
pub struct LinkedContact {
    /// Contact id.
    pub id: u64,
    /// Whether it is the lead's main contact.
    pub is_main: Option<bool>,
}

/// A catalog element (product) linked to a lead.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct CatalogElement {
    /// Element id.
    pub id: u64,
    /// Element name, when the CRM sends it.
    pub name: Option<String>,
    /// Link metadata (quantity, catalog, price field).
    pub metadata: CatalogMetadata,
}

/// Metadata of a lead's link to a catalog element.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct CatalogMetadata {
    /// Quantity (may be fractional).
    pub quantity: Option<Amount>,
    /// Catalog id.
    pub catalog_id: Option<u64>,
    /// Id of the price custom field used.
    pub price_id: Option<u64>,
    /// Unit price, when the CRM sends it.
    pub price: Option<Amount>,
}

/// A contact. `GET /api/v4/contacts`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Contact {
    /// Contact id.
    pub id: u64,
    /// Full name.
    pub name: Option<String>,
    /// First name.
    pub first_name: Option<String>,
    /// Last name.
    pub last_name: Option<String>,
    /// Responsible user (0 = none).
    pub responsible_user_id: Option<u64>,
    /// Group.
    pub group_id: Option<u64>,
    /// Creator.
    pub created_by: Option<u64>,
    /// Last editor.
    pub updated_by: Option<u64>,
    /// Created.
    #[serde(with = "jiff::fmt::serde::timestamp::second::required")]
    pub created_at: Timestamp,
    /// Last modified.
    #[serde(with = "jiff::fmt::serde::timestamp::second::required")]
    pub updated_at: Timestamp,
    /// Custom field values (phones and emails among them); `null` when none.
    pub custom_fields_values: Option<Vec<CustomField>>,
    /// Account.
    pub account_id: Option<u64>,
    /// Linked entities.
    #[serde(rename = "_embedded")]
    pub embedded: ContactEmbedded,
}

/// `_embedded` of a contact.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ContactEmbedded {
    /// Tags.
    pub tags: Vec<Tag>,
    /// The company (at most one).
    pub companies: Vec<IdRef>,
}

/// A company. `GET /api/v4/companies`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Company {
    /// Company id.
    pub id: u64,
    /// Name.
    pub name: Option<String>,
    /// Responsible user (0 = none).
    pub responsible_user_id: Option<u64>,
    /// Group.
    pub group_id: Option<u64>,
    /// Creator.
    pub created_by: Option<u64>,
    /// Last editor.
    pub updated_by: Option<u64>,
    /// Created.
    #[serde(with = "jiff::fmt::serde::timestamp::second::required")]
    pub created_at: Timestamp,
    /// Last modified.
    #[serde(with = "jiff::fmt::serde::timestamp::second::required")]
    pub updated_at: Timestamp,
    /// Custom field values; `null` when none.
    pub custom_fields_values: Option<Vec<CustomField>>,
    /// Account.
    pub account_id: Option<u64>,
    /// Linked entities.
    #[serde(rename = "_embedded")]
    pub embedded: CompanyEmbedded,
}

/// `_embedded` of a company.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct CompanyEmbedded {
    /// Tags.
    pub tags: Vec<Tag>,
    /// Contacts (with `with=contacts`).
    pub contacts: Vec<IdRef>,
}

/// `_embedded` of a leads page.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Leads {
    /// The leads.
    pub leads: Vec<Lead>,
}

/// `_embedded` of a contacts page.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Contacts {
    /// The contacts.
    pub contacts: Vec<Contact>,
}

/// `_embedded` of a companies page.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Companies {
    /// The companies.
    pub companies: Vec<Company>,
}

/// A catalog element (product) itself. `GET /api/v4/catalogs/{catalog_id}/elements`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct CatalogItem {
    /// Element id.
    pub id: u64,
    /// Name.
    pub name: Option<String>,
    /// Its catalog.
    pub catalog_id: Option<u64>,
    /// Custom field values (the price is the field coded `PRICE`).
    pub custom_fields_values: Option<Vec<CustomField>>,
}

/// `_embedded` of a catalog elements page.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Elements {
    /// The elements.
    pub elements: Vec<CatalogItem>,
}
