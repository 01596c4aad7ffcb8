//! The account, its users and its pipelines.
use serde::Deserialize;

/// `GET /api/v4/account[?with=datetime_settings]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Account {
    /// Account id.
    pub id: u64,
    /// Account name.
    pub name: Option<String>,
    /// Subdomain (`example` of `example.amocrm.ru`).
    pub subdomain: Option<String>,
    /// Account currency, ISO 4217 (`RUB`).
    pub currency: Option<String>,
    /// Currency symbol (`₽`).
    pub currency_symbol: Option<String>,
    /// Country code.
    pub country: Option<String>,
    /// Customers mode: `unavailable | disabled | periodicity | dynamic | segments`.
    pub customers_mode: Option<String>,
    /// Whether the unsorted stage is on.
    pub is_unsorted_on: Option<bool>,
    /// Date/time settings, when asked for and sent at the top level.
    pub datetime_settings: Option<DatetimeSettings>,
    /// Extras asked for with `with=`.
    #[serde(rename = "_embedded")]
    pub embedded: AccountEmbedded,
}

/// `_embedded` of the account.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct AccountEmbedded {
    /// Date/time settings (`with=datetime_settings`).
    pub datetime_settings: Option<DatetimeSettings>,
}

/// The account's date/time settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct DatetimeSettings {
    /// IANA time zone (`Europe/Moscow`).
    pub timezone: Option<String>,
}

/// A user. `GET /api/v4/users`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct User {
    /// User id.
    pub id: u64,
    /// Name.
    pub name: Option<String>,
    /// Email (login).
    pub email: Option<String>,
    /// Interface language.
    pub lang: Option<String>,
    /// Rights; `is_active` tells whether the user is active.
    pub rights: UserRights,
}

/// The part of a user's rights rebuy reads.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct UserRights {
    /// Whether the user is active (absent = active).
    pub is_active: Option<bool>,
    /// Whether the user is an admin.
    pub is_admin: Option<bool>,
}

/// `_embedded` of a users page.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Users {
    /// The users.
    pub users: Vec<User>,
}

/// A pipeline with its statuses. `GET /api/v4/leads/pipelines`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Pipeline {
    /// Pipeline id.
    pub id: u64,
    /// Name.
    pub name: Option<String>,
    /// Sort order.
    pub sort: i64,
    /// The main pipeline.
    pub is_main: bool,
    /// Whether the unsorted stage is on.
    pub is_unsorted_on: Option<bool>,
    /// Archived.
    pub is_archive: Option<bool>,
    /// The statuses.
    #[serde(rename = "_embedded")]
    pub embedded: PipelineEmbedded,
}

/// `_embedded` of a pipeline.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct PipelineEmbedded {
    /// Statuses, the system ones (unsorted, 142, 143) included.
    pub statuses: Vec<Status>,
}

/// A pipeline status (stage).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Status {
    /// Status id; 142 won and 143 lost are shared by all pipelines.
    pub id: u64,
    /// Name.
    pub name: Option<String>,
    /// Sort order.
    pub sort: i64,
    /// Whether it can be edited.
    pub is_editable: Option<bool>,
    /// Its pipeline.
    pub pipeline_id: Option<u64>,
    /// Colour.
    pub color: Option<String>,
    /// Type: 0 regular, 1 unsorted.
    #[serde(rename = "type")]
    pub kind: Option<i64>,
}

/// `_embedded` of the pipelines list.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Pipelines {
    /// The pipelines.
    pub pipelines: Vec<Pipeline>,
}
