//! The [`Connector`] trait: what the sidecar asks of a CRM, in the domain's terms.
//!
//! Listing is streamed: each call returns one [`Page`] and an opaque [`Cursor`] for the next.
//! The sidecar commits a page's records together with the cursor that follows it, so a sync
//! killed at any point resumes from the last committed page with no gap and no duplicate, and
//! memory never holds more than a page. What one page is belongs to the connector: an amoCRM
//! page is one request of up to 250 records; a Bitrix24 page is one `batch` request of up to 50
//! chained list calls (up to 2,500 records).
use crate::error::ConnectorError;
use crate::ids::*;
use crate::model::*;
use async_trait::async_trait;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};

/// Opaque position in a listing, defined by the connector and stored by the sidecar.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor(pub String);

/// One page of a listing.
#[derive(Debug, Clone)]
pub struct Page<T> {
    /// The records of this page.
    pub items: Vec<T>,
    /// Where the next page starts; `None` at the end.
    pub next: Option<Cursor>,
}

/// Filter of a listing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListQuery {
    /// Only records modified at or after this instant (incremental sync).
    pub updated_from: Option<Timestamp>,
    /// Only records modified before or at this instant.
    pub updated_to: Option<Timestamp>,
}

/// The kind of a task for a manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskKind {
    /// Phone call (amoCRM task type 1).
    Call,
    /// Meeting (amoCRM task type 2).
    Meeting,
    /// Letter / message.
    Letter,
}

/// The CRM entity a task or field update is attached to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", content = "id", rename_all = "lowercase")]
pub enum EntityRef {
    /// A deal (amoCRM lead).
    Deal(DealId),
    /// A contact.
    Contact(ContactId),
    /// A company.
    Company(CompanyId),
}

/// A value written to a custom field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldWrite {
    /// Field id (amoCRM numeric id as text; Bitrix24 `UF_CRM_...`).
    pub field_id: String,
    /// The value as text; `None` clears the field.
    pub value: Option<String>,
}

/// One write the sidecar asks a CRM to make. Connectors pack several into one request where
/// the CRM allows (amoCRM bulk arrays, Bitrix24 `batch`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum WriteOp {
    /// Move a deal to another pipeline/category and stage.
    MoveDeal {
        /// The deal.
        deal: DealId,
        /// Target pipeline (amoCRM) or category (Bitrix24).
        pipeline: PipelineId,
        /// Target stage.
        stage: StageId,
    },
    /// Create a task for a manager.
    CreateTask {
        /// What the task is about.
        entity: EntityRef,
        /// Who does it.
        responsible: UserId,
        /// The task text (includes the idempotency marker).
        text: String,
        /// When it is due.
        due: Timestamp,
        /// Call, meeting or letter.
        kind: TaskKind,
    },
    /// Write custom field values.
    UpdateFields {
        /// The entity.
        entity: EntityRef,
        /// The values.
        fields: Vec<FieldWrite>,
    },
    /// Create a deal (the customer-funnel deal of a customer who has none).
    CreateDeal {
        /// Title.
        name: String,
        /// Pipeline (amoCRM) or category (Bitrix24).
        pipeline: PipelineId,
        /// Stage.
        stage: StageId,
        /// The customer's contact.
        contact: Option<ContactId>,
        /// The customer's company.
        company: Option<CompanyId>,
        /// Responsible manager.
        responsible: Option<UserId>,
        /// Expected amount in the account currency (whole units), when known.
        price: Option<rust_decimal::Decimal>,
    },
    /// Mark a deal as a repeat sale (Bitrix24 `IS_RETURN_CUSTOMER`, amoCRM a tag).
    FlagRepeat {
        /// The deal.
        deal: DealId,
    },
    /// Create a customer of the CRM's customers entity (amoCRM "Покупатели", periodicity
    /// mode) linked to its main contact, in the status of its window.
    CreateCustomer {
        /// Name.
        name: String,
        /// The main contact it is linked to.
        contact: ContactId,
        /// The customer's company, when it has one.
        company: Option<CompanyId>,
        /// Customer status.
        status: StageId,
        /// Expected next purchase (amoCRM `next_date`).
        next_date: Timestamp,
        /// Expected next purchase amount in the account currency (amoCRM `next_price`, whole
        /// units).
        next_price: Option<rust_decimal::Decimal>,
        /// Responsible manager.
        responsible: Option<UserId>,
    },
    /// Move a CRM customer to another status and/or set its next purchase.
    UpdateCustomer {
        /// The CRM's customer id.
        customer: u64,
        /// Customer status.
        status: StageId,
        /// Expected next purchase.
        next_date: Timestamp,
        /// Expected next purchase amount (whole units).
        next_price: Option<rust_decimal::Decimal>,
    },
    /// Create a custom field (a segment field named in the mapping and missing in the CRM).
    CreateField {
        /// Where.
        entity: FieldEntityKind,
        /// Display name (amoCRM `name`, Bitrix24 `LABEL`).
        name: String,
        /// Bitrix24 `FIELD_NAME` (`UF_CRM_` is prefixed by the CRM); amoCRM ignores it.
        code: Option<String>,
        /// Type.
        kind: FieldKind,
    },
}

/// The entity a custom field belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldEntityKind {
    /// Contacts.
    Contacts,
    /// Companies.
    Companies,
    /// Deals (amoCRM leads).
    Deals,
    /// amoCRM customers.
    Customers,
}

impl FieldEntityKind {
    /// Lower-case name (`contacts`, `companies`, `deals`, `customers`).
    pub fn as_str(self) -> &'static str {
        match self {
            FieldEntityKind::Contacts => "contacts",
            FieldEntityKind::Companies => "companies",
            FieldEntityKind::Deals => "deals",
            FieldEntityKind::Customers => "customers",
        }
    }
}

/// The type of a field to create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "options", rename_all = "lowercase")]
pub enum FieldKind {
    /// Free text.
    Text,
    /// A date.
    Date,
    /// A number, written as a plain decimal with '.' (amoCRM `numeric`, Bitrix24 `double`).
    Numeric,
    /// One of a list of values (amoCRM `select`; CRMs that write list items by id get text).
    Select(Vec<String>),
}

/// A customer of the CRM's customers entity, as the planner needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrmCustomer {
    /// The CRM's id.
    pub id: u64,
    /// Name.
    pub name: String,
    /// Status id.
    pub status: StageId,
    /// Expected next purchase, when set.
    pub next_date: Option<Timestamp>,
    /// Expected next purchase amount (whole units).
    pub next_price: i64,
    /// The main contact (else the first linked).
    pub contact: Option<ContactId>,
}

/// The customers entity of an account: its mode and, in periodicity mode, its statuses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomersFunnel {
    /// amoCRM `customers_mode` (`periodicity`, `segments`, `disabled`, `unavailable`).
    pub mode: String,
    /// Statuses, by sort order (empty unless periodicity mode).
    pub statuses: Vec<Stage>,
}

/// A custom field defined in the CRM (for `rebuy mapping`: field names -> ids).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldDef {
    /// The entity the field belongs to: `contacts`, `companies` or `deals`.
    pub entity: EntityKind,
    /// Field id (amoCRM numeric id as text; Bitrix24 `UF_CRM_...`).
    pub id: String,
    /// Display name.
    pub name: String,
    /// Code when the CRM has one (amoCRM `PHONE`, `EMAIL`).
    pub code: Option<String>,
    /// The CRM's field type (`text`, `date`, `select`, ...).
    pub field_type: String,
}

/// What a successful write produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteOutcome {
    /// Id of the entity the CRM created (a task id), when it created one.
    pub created_id: Option<u64>,
}

/// Counters a connector keeps of its traffic.
#[derive(Debug, Default)]
pub struct ConnectorStats {
    /// HTTP requests sent.
    pub requests: AtomicU64,
    /// Answers that said "rate limited".
    pub rate_limited: AtomicU64,
    /// Retries performed.
    pub retries: AtomicU64,
    /// 5xx / connection failures seen.
    pub transient: AtomicU64,
}

/// A point-in-time copy of [`ConnectorStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsSnapshot {
    /// HTTP requests sent.
    pub requests: u64,
    /// Rate-limit answers.
    pub rate_limited: u64,
    /// Retries.
    pub retries: u64,
    /// Transient failures.
    pub transient: u64,
}

impl ConnectorStats {
    /// Reads the counters.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            requests: self.requests.load(Ordering::Relaxed),
            rate_limited: self.rate_limited.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            transient: self.transient.load(Ordering::Relaxed),
        }
    }
}

/// What a client's rate limiter knows of the CRM's counters, kept between processes so that
/// `rebuy sync && rebuy apply` does not start the second command with a full burst while the
/// CRM still counts the first one's requests. Times are Unix milliseconds (wall clock: the
/// state outlives the process and its monotonic clock).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LimiterState {
    /// When the latest requests left (amoCRM's sliding window), oldest first.
    #[serde(default)]
    pub sent_unix_ms: Vec<i64>,
    /// The estimated level of the CRM's leaky bucket (Bitrix24) at `at_unix_ms`.
    #[serde(default)]
    pub bucket_level: f64,
    /// When the state was taken.
    #[serde(default)]
    pub at_unix_ms: i64,
    /// The adaptive share of the rate in use (1.0 = the full paced rate; lower after 429s).
    #[serde(default)]
    pub rate_factor: Option<f64>,
}

/// Receives a connector's [`LimiterState`] when the connector is dropped.
pub type LimiterSaver = std::sync::Arc<dyn Fn(&LimiterState) + Send + Sync>;

/// Where a connector keeps its [`LimiterSaver`] until it is dropped.
#[derive(Default)]
pub struct SaverSlot(std::sync::Mutex<Option<LimiterSaver>>);

impl SaverSlot {
    /// Sets (or replaces) the saver.
    pub fn set(&self, saver: LimiterSaver) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(saver);
    }

    /// Hands `state()` to the saver, once, if one was set (call from the connector's `Drop`).
    pub fn fire(&mut self, state: impl FnOnce() -> LimiterState) {
        let saver = self.0.get_mut().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(save) = saver {
            save(&state());
        }
    }
}

/// What [`Connector::prelude`] found: each part fails on its own.
#[derive(Debug)]
pub struct Prelude {
    /// The account behind the portal.
    pub account: Result<Account, ConnectorError>,
    /// All users.
    pub users: Result<Vec<User>, ConnectorError>,
    /// All pipelines with their stages.
    pub pipelines: Result<Vec<Pipeline>, ConnectorError>,
    /// Per kind: consecutive segments that together cover its whole listing once (see
    /// [`Connector::split`]; the first starts at the table's start). Kinds not here are listed
    /// from the start page after page.
    pub segments: std::collections::BTreeMap<EntityKind, Vec<Cursor>>,
}

/// A CRM, as the sidecar sees it.
#[async_trait]
pub trait Connector: Send + Sync {
    /// Starts the rate limiter from a state persisted by an earlier process.
    fn restore_limiter(&self, _state: &LimiterState) {}

    /// Hands the limiter's state to `saver` when the connector is dropped (the end of a
    /// command), so the next process can [`Connector::restore_limiter`] from it.
    fn save_limiter_on_drop(&self, _saver: LimiterSaver) {}

    /// Which CRM this is.
    fn kind(&self) -> CrmKind;

    /// Traffic counters.
    fn stats(&self) -> StatsSnapshot;

    /// The account behind the portal.
    async fn account(&self) -> Result<Account, ConnectorError>;

    /// All users.
    async fn users(&self) -> Result<Vec<User>, ConnectorError>;

    /// All pipelines with their stages.
    async fn pipelines(&self) -> Result<Vec<Pipeline>, ConnectorError>;

    /// What a sync asks before its listings, in as few requests as the CRM allows: the
    /// account, the users, the pipelines and, for each kind of `full` (kinds about to be listed
    /// in full from the start), the segments of that listing as [`Connector::split`] would cut
    /// it, but from the very start. A kind left out of [`Prelude::segments`] is listed page
    /// after page. The default asks [`Connector::account`], [`Connector::users`] and
    /// [`Connector::pipelines`] one after the other and splits nothing.
    async fn prelude(&self, full: &[EntityKind]) -> Prelude {
        let _ = full;
        Prelude {
            account: self.account().await,
            users: self.users().await,
            pipelines: self.pipelines().await,
            segments: Default::default(),
        }
    }

    /// One page of contacts.
    async fn contacts(
        &self,
        query: &ListQuery,
        cursor: Option<&Cursor>,
    ) -> Result<Page<Contact>, ConnectorError>;

    /// One page of companies.
    async fn companies(
        &self,
        query: &ListQuery,
        cursor: Option<&Cursor>,
    ) -> Result<Page<Company>, ConnectorError>;

    /// One page of deals, with their contact links (and product rows where the CRM has them).
    async fn deals(
        &self,
        query: &ListQuery,
        cursor: Option<&Cursor>,
    ) -> Result<Page<Deal>, ConnectorError>;

    /// One deal by id; `Ok(None)` when it does not exist.
    async fn deal(&self, id: DealId) -> Result<Option<Deal>, ConnectorError>;

    /// One contact by id; `Ok(None)` when it does not exist.
    async fn contact(&self, id: ContactId) -> Result<Option<Contact>, ConnectorError>;

    /// Deletions recorded since `since` (amoCRM `/events`). CRMs without a deletion log return
    /// [`ConnectorError::Unsupported`]; the sidecar then reconciles ids instead.
    async fn deletions(
        &self,
        since: Timestamp,
        cursor: Option<&Cursor>,
    ) -> Result<Page<Deletion>, ConnectorError> {
        let _ = (since, cursor);
        Err(ConnectorError::Unsupported {
            what: "deletion log".into(),
        })
    }

    /// Splits the rest of a **full** listing of `kind` (contacts, companies, deals or product
    /// rows) from `cursor` (the `next` of its first page) into consecutive segments that can be
    /// listed at the same time, in ascending order: each returned cursor pages through its own
    /// segment (its pages' `next` stay within it, `None` at its end) and together they cover the
    /// rest exactly once. Empty (the default): list on one page after the other. The
    /// connector's rate limiter still decides when each request leaves.
    async fn split(
        &self,
        kind: EntityKind,
        cursor: &Cursor,
    ) -> Result<Vec<Cursor>, ConnectorError> {
        let _ = (kind, cursor);
        Ok(Vec::new())
    }

    /// Whether [`Connector::product_rows`] lists the deals' product rows on their own. When it
    /// does, full deal listings leave `Deal::products` empty (the separate stream brings them,
    /// packed far denser than per-deal lookups), while incremental listings still attach the
    /// current rows of each changed deal.
    fn lists_product_rows(&self) -> bool {
        false
    }

    /// One page of all deals' product rows in ascending row id (see
    /// [`Connector::lists_product_rows`]).
    async fn product_rows(
        &self,
        cursor: Option<&Cursor>,
    ) -> Result<Page<DealProductRow>, ConnectorError> {
        let _ = cursor;
        Err(ConnectorError::Unsupported {
            what: "product row listing".into(),
        })
    }

    /// One page of all deal ids in ascending order, for reconciliation of deletions.
    async fn deal_ids(&self, cursor: Option<&Cursor>) -> Result<Page<DealId>, ConnectorError> {
        let _ = cursor;
        Err(ConnectorError::Unsupported {
            what: "id listing".into(),
        })
    }

    /// Looks for a task on `entity` whose text contains `marker` (the idempotency marker the
    /// outbox puts in every task text). Used after a crash between sending a task and
    /// recording it, so the task is never created twice. `Ok(None)` when there is none.
    async fn find_task(
        &self,
        entity: EntityRef,
        marker: &str,
    ) -> Result<Option<u64>, ConnectorError> {
        let _ = (entity, marker);
        Err(ConnectorError::Unsupported {
            what: "task lookup".into(),
        })
    }

    /// The states of the tasks with these ids (at most 50 per call); a task deleted from the
    /// CRM is missing from the answer. CRMs without the listing return
    /// [`ConnectorError::Unsupported`].
    async fn task_states(&self, ids: &[u64]) -> Result<Vec<TaskState>, ConnectorError> {
        let _ = ids;
        Err(ConnectorError::Unsupported {
            what: "task states".into(),
        })
    }

    /// The customers entity: mode and statuses. CRMs without one return
    /// [`ConnectorError::Unsupported`].
    async fn customers_funnel(&self) -> Result<CustomersFunnel, ConnectorError> {
        Err(ConnectorError::Unsupported {
            what: "customers entity".into(),
        })
    }

    /// One page of the CRM's customers (with their contacts).
    async fn customers(
        &self,
        cursor: Option<&Cursor>,
    ) -> Result<Page<CrmCustomer>, ConnectorError> {
        let _ = cursor;
        Err(ConnectorError::Unsupported {
            what: "customers entity".into(),
        })
    }

    /// The CRM customer linked to `contact`, if any: how a customer created by a run that died
    /// before recording it is found again.
    async fn find_customer(&self, contact: ContactId) -> Result<Option<u64>, ConnectorError> {
        let _ = contact;
        Err(ConnectorError::Unsupported {
            what: "customer lookup".into(),
        })
    }

    /// An open deal named `name` in `pipeline` linked to `contact` (else `company`): how a deal
    /// created by a run that died before recording it is found again. `Ok(None)` when there
    /// is none.
    async fn find_deal(
        &self,
        name: &str,
        pipeline: PipelineId,
        contact: Option<ContactId>,
        company: Option<CompanyId>,
    ) -> Result<Option<u64>, ConnectorError> {
        let _ = (name, pipeline, contact, company);
        Err(ConnectorError::Unsupported {
            what: "deal lookup".into(),
        })
    }

    /// The custom fields of contacts, companies and deals. CRMs without the listing return
    /// [`ConnectorError::Unsupported`].
    async fn custom_fields(&self) -> Result<Vec<FieldDef>, ConnectorError> {
        Err(ConnectorError::Unsupported {
            what: "custom field listing".into(),
        })
    }

    /// Subscribes `handler_url` to the CRM's change events (Bitrix24 `event.bind`; amoCRM
    /// `POST /api/v4/webhooks`). Already-bound handlers count as success.
    async fn subscribe(&self, handler_url: &str, events: &[&str]) -> Result<(), ConnectorError> {
        let _ = (handler_url, events);
        Err(ConnectorError::Unsupported {
            what: "event subscriptions".into(),
        })
    }

    /// How many writes [`Connector::apply`] packs into one request at most.
    fn max_writes_per_request(&self) -> usize {
        1
    }

    /// Carries out writes, packed into as few requests as the CRM allows. Returns one result
    /// per op, in order; one op's failure does not fail the others.
    async fn apply(&self, ops: &[WriteOp]) -> Vec<Result<WriteOutcome, ConnectorError>> {
        ops.iter()
            .map(|_| {
                Err(ConnectorError::Unsupported {
                    what: "writes".into(),
                })
            })
            .collect()
    }
}
