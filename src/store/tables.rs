//! Every table of a portal's redb file, as constants (redb style: one place to see the schema).
use redb::TableDefinition;

/// Store-level settings and small documents: schema version, account, tokens, auth state.
pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// Sync state per entity kind (`contacts`, `deals`, ...).
pub const SYNC: TableDefinition<&str, &[u8]> = TableDefinition::new("sync");
/// Contacts by CRM id.
pub const CONTACTS: TableDefinition<u64, &[u8]> = TableDefinition::new("contacts");
/// Companies by CRM id.
pub const COMPANIES: TableDefinition<u64, &[u8]> = TableDefinition::new("companies");
/// Deals (amoCRM leads) by CRM id.
pub const DEALS: TableDefinition<u64, &[u8]> = TableDefinition::new("deals");
/// Users by CRM id.
pub const USERS: TableDefinition<u64, &[u8]> = TableDefinition::new("users");
/// Pipelines (with stages) by CRM id.
pub const PIPELINES: TableDefinition<u64, &[u8]> = TableDefinition::new("pipelines");

/// Product rows listed on their own (Bitrix24), keyed by (deal id, row id) so a deal's rows are
/// one key range: read in deal order they join the deals table in a single merge pass.
pub const PRODUCT_ROWS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("product_rows");

/// The tables keyed by CRM id.
pub const ALL_ID_TABLES: [TableDefinition<u64, &[u8]>; 5] =
    [CONTACTS, COMPANIES, DEALS, USERS, PIPELINES];

/// Meta key of the schema version (u32 little endian).
pub const KEY_SCHEMA_VERSION: &str = "schema_version";
/// Meta key of the OAuth tokens.
pub const KEY_TOKENS: &str = "tokens";
/// Meta key of the "needs re-authorization" record.
pub const KEY_NEEDS_REAUTH: &str = "needs_reauth";
/// Meta key of the CRM account document.
pub const KEY_ACCOUNT: &str = "account";

// The outbox (`crate::outbox`): planned CRM writes.

/// Entries by idempotency key.
pub const OUTBOX: TableDefinition<&str, &[u8]> = TableDefinition::new("outbox");
/// Entries still to send (pending or in flight), by enqueue sequence -> key.
pub const OUTBOX_PENDING: TableDefinition<u64, &str> = TableDefinition::new("outbox_pending");

// The webhook inbox (`crate::inbox`): events stored before the CRM gets its answer.

/// Events to process, by arrival sequence.
pub const INBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("inbox");
/// Dedup keys of events seen (key -> sequence), so a redelivered webhook has one effect.
pub const INBOX_SEEN: TableDefinition<&str, u64> = TableDefinition::new("inbox_seen");
/// When each dedup key was stored ((unix seconds, sequence) -> key), for pruning.
pub const INBOX_SEEN_AT: TableDefinition<(i64, u64), &str> = TableDefinition::new("inbox_seen_at");
/// Failed attempts of events still in the inbox (sequence -> `inbox::Retry`).
pub const INBOX_RETRY: TableDefinition<u64, &[u8]> = TableDefinition::new("inbox_retry");
/// Events that failed too often (sequence -> `inbox::DeadEvent`).
pub const INBOX_DEAD: TableDefinition<u64, &[u8]> = TableDefinition::new("inbox_dead");

// The control groups (`crate::holdout`) and the outcomes of touches (`crate::results`).

/// Draws by period (`2026-12`), JSON `holdout::Draw`.
pub const HOLDOUT_DRAWS: TableDefinition<&str, &[u8]> = TableDefinition::new("holdout_draws");
/// Virtual touches of held-out customers by the key the touch would have had, JSON
/// `holdout::VirtualTouch`.
pub const VIRTUAL_TOUCHES: TableDefinition<&str, &[u8]> = TableDefinition::new("virtual_touches");
/// What the CRM said of each sent touch task, by outbox key, JSON `results::TaskOutcome`.
pub const TASK_STATES: TableDefinition<&str, &[u8]> = TableDefinition::new("task_states");
