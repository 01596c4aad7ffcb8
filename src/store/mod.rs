//! The local cache: one redb file per portal.
//!
//! Flow position: pull -> **cache** -> analyse -> plan -> outbox -> CRM. The sync writes pages
//! here; the analytics, planner and server read from here.
//!
//! Why one file per portal: portals are isolated (one portal's long write never makes another
//! wait: redb has one writer per file), and a portal moves to another machine by moving its file.
//! Every value is written with a one-byte codec version ahead of its postcard body
//! ([`codec`]), and the file carries a schema version checked at open, so an old binary never
//! misreads a newer file. redb commits are durable (fsync) when `commit` returns: a `kill -9`
//! loses nothing that was committed.
pub mod codec;
pub mod tables;
pub mod tokens;

use crate::store::codec::{decode, encode};
use crate::store::tables::*;
use jiff::Timestamp;
use rebuy_core::{Company, Contact, Deal, DealProductRow, EntityKind, Pipeline, PortalId, User};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The schema version this binary reads and writes. Version 2 stores timestamps as numbers
/// (see `rebuy_core::timestamp`); a version-1 file is migrated at open by clearing the cached
/// CRM records, so the next sync is full (tokens, outbox and inbox are kept).
pub const SCHEMA_VERSION: u32 = 2;

/// Errors of the store. Messages name the file, table and key involved.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file could not be opened or created.
    #[error("cannot open store {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: redb::DatabaseError,
    },
    /// The file was written by a different schema version.
    #[error("store {path} has schema version {found}, this rebuy reads version {expected}: {hint}")]
    Schema {
        /// The file.
        path: PathBuf,
        /// Version in the file.
        found: u32,
        /// Version this binary reads.
        expected: u32,
        /// What to do.
        hint: &'static str,
    },
    /// A database operation failed.
    #[error("store {path}: {message}")]
    Db {
        /// The file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// A stored value could not be decoded.
    #[error("store {path}: cannot decode {table}[{key}]: {message}")]
    Codec {
        /// The file.
        path: PathBuf,
        /// Table name.
        table: String,
        /// Key.
        key: String,
        /// Why.
        message: String,
    },
}

/// A record kind kept in its own table, keyed by CRM id.
pub trait Record: Serialize + DeserializeOwned + Send + 'static {
    /// Which entity this is.
    const KIND: EntityKind;
    /// The table it lives in.
    const TABLE: TableDefinition<'static, u64, &'static [u8]>;
    /// Its CRM id.
    fn key(&self) -> u64;
}

macro_rules! record {
    ($t:ty, $kind:expr, $table:expr) => {
        impl Record for $t {
            const KIND: EntityKind = $kind;
            const TABLE: TableDefinition<'static, u64, &'static [u8]> = $table;
            fn key(&self) -> u64 {
                self.id.0
            }
        }
    };
}
record!(Contact, EntityKind::Contacts, CONTACTS);
record!(Company, EntityKind::Companies, COMPANIES);
record!(Deal, EntityKind::Deals, DEALS);
record!(User, EntityKind::Users, USERS);
record!(Pipeline, EntityKind::Pipelines, PIPELINES);

/// The table of an entity kind keyed by CRM id (`None` for product rows, keyed by deal and
/// row: see [`PRODUCT_ROWS`]).
pub fn table_of(kind: EntityKind) -> Option<TableDefinition<'static, u64, &'static [u8]>> {
    match kind {
        EntityKind::Contacts => Some(CONTACTS),
        EntityKind::Companies => Some(COMPANIES),
        EntityKind::Deals => Some(DEALS),
        EntityKind::Users => Some(USERS),
        EntityKind::Pipelines => Some(PIPELINES),
        EntityKind::ProductRows => None,
    }
}

/// Where a sync of one entity kind stands. Stored in the same transaction as the page it
/// follows, so the cache and the cursor never disagree.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncState {
    /// A listing under way: the cursor of the next page to fetch.
    pub in_progress: Option<InProgress>,
    /// Records changed at or after this instant still need fetching (the incremental cursor).
    pub updated_from: Option<Timestamp>,
    /// When the last complete full listing ended.
    pub last_full_at: Option<Timestamp>,
    /// When the last complete listing of any kind ended.
    pub last_sync_at: Option<Timestamp>,
    /// Deletions were applied up to this instant.
    pub deletions_from: Option<Timestamp>,
}

/// A listing under way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InProgress {
    /// Full listing (`true`) or incremental.
    pub full: bool,
    /// When the listing started (local clock).
    pub started_at: Timestamp,
    /// The query's lower bound for an incremental listing.
    pub updated_from: Option<Timestamp>,
    /// The cursor of the next page; `None` for the first page.
    pub cursor: Option<rebuy_core::Cursor>,
    /// Records written so far by this listing.
    pub records: u64,
    /// Latest `updated_at` seen so far.
    pub max_updated: Option<Timestamp>,
}

/// A portal's cache. Cheap to clone; all clones share one database handle.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    path: Arc<PathBuf>,
    portal: PortalId,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .field("portal", &self.portal)
            .finish()
    }
}

/// Page cache of one portal's redb file. redb's default (1 GiB) would let every portal of a
/// sidecar serving hundreds hold memory in proportion to its account's size; reads here are
/// sequential scans and point lookups, which a small cache serves as well.
const CACHE_BYTES: usize = 64 * 1024 * 1024;

/// The file of a portal's store inside the data directory.
pub fn portal_path(data_dir: &Path, portal: &PortalId) -> PathBuf {
    data_dir.join(format!("{}.redb", portal.0))
}

impl Store {
    /// Opens (or creates) the store of `portal` in `data_dir`.
    pub fn open(data_dir: &Path, portal: &PortalId) -> Result<Self, StoreError> {
        // The stores hold the portals' tokens: the directory is created for its owner alone.
        let mut dir = std::fs::DirBuilder::new();
        dir.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut dir, 0o700);
        dir.create(data_dir).map_err(|e| StoreError::Db {
            path: data_dir.to_owned(),
            message: format!("cannot create data directory: {e}"),
        })?;
        if let Some(mode) = exposed_mode(data_dir) {
            tracing::warn!(
                path = %data_dir.display(),
                mode = format!("{mode:o}"),
                "The data directory holds tokens and is open to other users; chmod 700 it"
            );
        }
        Self::open_path(&portal_path(data_dir, portal), portal.clone())
    }

    /// Opens (or creates) a store at an explicit path. The file is made readable and writable
    /// by its owner alone (0600): it holds the portal's tokens.
    pub fn open_path(path: &Path, portal: PortalId) -> Result<Self, StoreError> {
        restrict_file(path).map_err(|e| StoreError::Db {
            path: path.to_owned(),
            message: format!("cannot create the store file for its owner alone: {e}"),
        })?;
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|source| StoreError::Open {
                path: path.to_owned(),
                source,
            })?;
        let store = Store {
            db: Arc::new(db),
            path: Arc::new(path.to_owned()),
            portal,
        };
        store.init_schema()?;
        Ok(store)
    }

    /// The portal this store belongs to.
    pub fn portal(&self) -> &PortalId {
        &self.portal
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The database handle, for modules that keep their own tables (outbox, inbox).
    pub(crate) fn db(&self) -> &Database {
        &self.db
    }

    pub(crate) fn err(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Db {
            path: (*self.path).clone(),
            message: e.to_string(),
        }
    }

    fn init_schema(&self) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| self.err(e))?;
            let found = meta
                .get(KEY_SCHEMA_VERSION)
                .map_err(|e| self.err(e))?
                .map(|v| u32::from_le_bytes(v.value().try_into().unwrap_or([0; 4])));
            match found {
                Some(v) if v == SCHEMA_VERSION => {}
                Some(1) => {
                    // The cached records are a copy of the CRM: refetching them is the
                    // migration. Only the CRM's data and the sync positions go.
                    for t in ALL_ID_TABLES {
                        txn.delete_table(t).map_err(|e| self.err(e))?;
                    }
                    txn.delete_table(PRODUCT_ROWS).map_err(|e| self.err(e))?;
                    txn.delete_table(SYNC).map_err(|e| self.err(e))?;
                    meta.insert(KEY_SCHEMA_VERSION, SCHEMA_VERSION.to_le_bytes().as_slice())
                        .map_err(|e| self.err(e))?;
                    tracing::warn!(
                        portal = %self.portal,
                        path = %self.path.display(),
                        "cache upgraded from schema version 1: cached CRM records cleared, the next sync is full"
                    );
                }
                Some(v) => {
                    return Err(StoreError::Schema {
                        path: (*self.path).clone(),
                        found: v,
                        expected: SCHEMA_VERSION,
                        hint: if v > SCHEMA_VERSION {
                            "upgrade rebuy"
                        } else {
                            "no migration exists for this version: move the file away and run `rebuy sync --full`"
                        },
                    });
                }
                None => {
                    meta.insert(KEY_SCHEMA_VERSION, SCHEMA_VERSION.to_le_bytes().as_slice())
                        .map_err(|e| self.err(e))?;
                }
            }
            // Create every table up front so readers never meet a missing table.
            for t in ALL_ID_TABLES {
                txn.open_table(t).map_err(|e| self.err(e))?;
            }
            txn.open_table(SYNC).map_err(|e| self.err(e))?;
            txn.open_table(PRODUCT_ROWS).map_err(|e| self.err(e))?;
            txn.open_table(tables::OUTBOX).map_err(|e| self.err(e))?;
            txn.open_table(tables::OUTBOX_PENDING)
                .map_err(|e| self.err(e))?;
            txn.open_table(tables::INBOX).map_err(|e| self.err(e))?;
            txn.open_table(tables::INBOX_SEEN)
                .map_err(|e| self.err(e))?;
            txn.open_table(tables::INBOX_SEEN_AT)
                .map_err(|e| self.err(e))?;
            txn.open_table(tables::INBOX_RETRY)
                .map_err(|e| self.err(e))?;
            txn.open_table(tables::HOLDOUT_DRAWS)
                .map_err(|e| self.err(e))?;
            txn.open_table(tables::VIRTUAL_TOUCHES)
                .map_err(|e| self.err(e))?;
            txn.open_table(tables::TASK_STATES)
                .map_err(|e| self.err(e))?;
            txn.open_table(tables::INBOX_DEAD)
                .map_err(|e| self.err(e))?;
        }
        txn.commit().map_err(|e| self.err(e))
    }

    /// Runs `f` on the blocking pool (redb calls block: a commit waits for fsync), so async
    /// callers never stall the runtime.
    pub async fn blocking<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let s = self.clone();
        match tokio::task::spawn_blocking(move || f(&s)).await {
            Ok(r) => r,
            Err(e) => Err(self.err(format!("store task failed: {e}"))),
        }
    }

    /// Runs a write transaction; commits when `f` returns `Ok`.
    pub fn write<R>(
        &self,
        f: impl FnOnce(&mut Writer<'_>) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        let r = {
            let mut w = Writer {
                txn: &txn,
                store: self,
            };
            f(&mut w)?
        };
        txn.commit().map_err(|e| self.err(e))?;
        Ok(r)
    }

    /// One record by id.
    pub fn get<T: Record>(&self, id: u64) -> Result<Option<T>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_table(T::TABLE).map_err(|e| self.err(e))?;
        match table.get(id).map_err(|e| self.err(e))? {
            Some(v) => Ok(Some(self.decode_value(T::KIND.as_str(), id, v.value())?)),
            None => Ok(None),
        }
    }

    /// Calls `f` with every record of a kind in id order, decoding one at a time (memory stays
    /// flat whatever the table's size). Reads a consistent snapshot.
    pub fn for_each<T: Record>(&self, mut f: impl FnMut(T)) -> Result<(), StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_table(T::TABLE).map_err(|e| self.err(e))?;
        for row in table.iter().map_err(|e| self.err(e))? {
            let (k, v) = row.map_err(|e| self.err(e))?;
            f(self.decode_value(T::KIND.as_str(), k.value(), v.value())?);
        }
        Ok(())
    }

    /// All records of a kind (for small tables: users, pipelines).
    pub fn all<T: Record>(&self) -> Result<Vec<T>, StoreError> {
        let mut out = Vec::new();
        self.for_each(|r| out.push(r))?;
        Ok(out)
    }

    /// Ids of a kind within `lo..=hi`, ascending (keys only: nothing is decoded).
    pub fn ids_in_range(&self, kind: EntityKind, lo: u64, hi: u64) -> Result<Vec<u64>, StoreError> {
        let mut out = Vec::new();
        let Some(def) = table_of(kind) else {
            return Ok(out);
        };
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_table(def).map_err(|e| self.err(e))?;
        for row in table.range(lo..=hi).map_err(|e| self.err(e))? {
            out.push(row.map_err(|e| self.err(e))?.0.value());
        }
        Ok(out)
    }

    /// Number of records of a kind.
    pub fn count(&self, kind: EntityKind) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        match table_of(kind) {
            Some(def) => txn.open_table(def).map_err(|e| self.err(e))?.len(),
            None => txn.open_table(PRODUCT_ROWS).map_err(|e| self.err(e))?.len(),
        }
        .map_err(|e| self.err(e))
    }

    /// Calls `f` with every deal in id order, its product rows from [`PRODUCT_ROWS`] appended
    /// to the ones it carries (a deal carries them when it was fetched on its own or by an
    /// incremental listing; the table holds what the separate row stream brought). Both tables
    /// are read in one snapshot and merged in one pass: memory stays flat.
    pub fn for_each_deal_with_rows(&self, mut f: impl FnMut(Deal)) -> Result<(), StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let deals = txn.open_table(DEALS).map_err(|e| self.err(e))?;
        let rows = txn.open_table(PRODUCT_ROWS).map_err(|e| self.err(e))?;
        let mut rows = rows.iter().map_err(|e| self.err(e))?.peekable();
        for row in deals.iter().map_err(|e| self.err(e))? {
            let (k, v) = row.map_err(|e| self.err(e))?;
            let id = k.value();
            let mut deal: Deal = self.decode_value("deals", id, v.value())?;
            // Rows of deals that are not (or no longer) cached are skipped.
            while let Some(r) =
                rows.next_if(|r| r.as_ref().map_or(true, |(k, _)| k.value().0 <= id))
            {
                let (k, v) = r.map_err(|e| self.err(e))?;
                let (deal_id, row_id) = k.value();
                if deal_id == id {
                    let key = format!("({deal_id}, {row_id})");
                    deal.products
                        .push(self.decode_value("product_rows", key, v.value())?);
                }
            }
            f(deal);
        }
        Ok(())
    }

    /// The sync state of a kind.
    pub fn sync_state(&self, kind: EntityKind) -> Result<SyncState, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_table(SYNC).map_err(|e| self.err(e))?;
        match table.get(kind.as_str()).map_err(|e| self.err(e))? {
            Some(v) => self.decode_value("sync", kind.as_str(), v.value()),
            None => Ok(SyncState::default()),
        }
    }

    /// A value from the meta table.
    pub fn meta<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_table(META).map_err(|e| self.err(e))?;
        match table.get(key).map_err(|e| self.err(e))? {
            Some(v) => Ok(Some(self.decode_json("meta", key, v.value())?)),
            None => Ok(None),
        }
    }

    /// Sets a value in the meta table (committed durably).
    pub fn set_meta<T: Serialize>(&self, key: &str, value: &T) -> Result<(), StoreError> {
        self.write(|w| w.set_meta(key, value))
    }

    fn decode_value<T: DeserializeOwned>(
        &self,
        table: &str,
        key: impl std::fmt::Display,
        bytes: &[u8],
    ) -> Result<T, StoreError> {
        decode(bytes).map_err(|message| StoreError::Codec {
            path: (*self.path).clone(),
            table: table.to_owned(),
            key: key.to_string(),
            message,
        })
    }

    fn decode_json<T: DeserializeOwned>(
        &self,
        table: &str,
        key: &str,
        bytes: &[u8],
    ) -> Result<T, StoreError> {
        serde_json::from_slice(bytes).map_err(|e| StoreError::Codec {
            path: (*self.path).clone(),
            table: table.to_owned(),
            key: key.to_owned(),
            message: e.to_string(),
        })
    }
}

/// Writes inside one transaction (see [`Store::write`]).
pub struct Writer<'a> {
    txn: &'a redb::WriteTransaction,
    store: &'a Store,
}

impl Writer<'_> {
    /// The underlying transaction, for modules that keep their own tables.
    pub(crate) fn txn(&self) -> &redb::WriteTransaction {
        self.txn
    }

    /// Reads a meta value inside the transaction.
    pub fn get_meta<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        let table = self.txn.open_table(META).map_err(|e| self.store.err(e))?;
        let v = table.get(key).map_err(|e| self.store.err(e))?;
        match v {
            Some(v) => Ok(Some(self.store.decode_json("meta", key, v.value())?)),
            None => Ok(None),
        }
    }

    /// Inserts or replaces records.
    pub fn put_all<T: Record>(&mut self, items: &[T]) -> Result<(), StoreError> {
        let mut table = self
            .txn
            .open_table(T::TABLE)
            .map_err(|e| self.store.err(e))?;
        let mut buf = Vec::with_capacity(512);
        for item in items {
            buf.clear();
            encode(item, &mut buf).map_err(|e| self.store.err(e))?;
            table
                .insert(item.key(), buf.as_slice())
                .map_err(|e| self.store.err(e))?;
        }
        Ok(())
    }

    /// Removes records by id; returns how many existed. Removing deals removes their product
    /// rows too.
    pub fn remove(&mut self, kind: EntityKind, ids: &[u64]) -> Result<u64, StoreError> {
        let Some(def) = table_of(kind) else {
            return Ok(0);
        };
        if kind == EntityKind::Deals {
            self.drop_product_rows_of(ids)?;
        }
        let mut table = self.txn.open_table(def).map_err(|e| self.store.err(e))?;
        let mut n = 0;
        for id in ids {
            if table.remove(*id).map_err(|e| self.store.err(e))?.is_some() {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Stores product rows listed on their own.
    pub fn put_product_rows(&mut self, rows: &[DealProductRow]) -> Result<(), StoreError> {
        let mut table = self
            .txn
            .open_table(PRODUCT_ROWS)
            .map_err(|e| self.store.err(e))?;
        let mut buf = Vec::new();
        for r in rows {
            buf.clear();
            encode(&r.row, &mut buf).map_err(|e| self.store.err(e))?;
            table
                .insert((r.deal_id.0, r.id), buf.as_slice())
                .map_err(|e| self.store.err(e))?;
        }
        Ok(())
    }

    /// Drops the separately listed product rows of `deal_ids` (their deals now carry their
    /// current rows, or are gone).
    pub fn drop_product_rows_of(&mut self, deal_ids: &[u64]) -> Result<(), StoreError> {
        let mut table = self
            .txn
            .open_table(PRODUCT_ROWS)
            .map_err(|e| self.store.err(e))?;
        for &id in deal_ids {
            table
                .retain_in((id, 0)..=(id, u64::MAX), |_, _| false)
                .map_err(|e| self.store.err(e))?;
        }
        Ok(())
    }

    /// Empties the product rows table (a full row listing starts afresh).
    pub fn clear_product_rows(&mut self) -> Result<(), StoreError> {
        self.txn
            .delete_table(PRODUCT_ROWS)
            .map_err(|e| self.store.err(e))?;
        self.txn
            .open_table(PRODUCT_ROWS)
            .map_err(|e| self.store.err(e))?;
        Ok(())
    }

    /// Replaces a whole small table (users, pipelines) with `items`.
    pub fn replace_all<T: Record>(&mut self, items: &[T]) -> Result<(), StoreError> {
        let existing: Vec<u64> = {
            let table = self
                .txn
                .open_table(T::TABLE)
                .map_err(|e| self.store.err(e))?;
            let ids: Result<Vec<u64>, _> = table
                .iter()
                .map_err(|e| self.store.err(e))?
                .map(|r| r.map(|(k, _)| k.value()))
                .collect();
            ids.map_err(|e| self.store.err(e))?
        };
        let keep: std::collections::HashSet<u64> = items.iter().map(Record::key).collect();
        let gone: Vec<u64> = existing
            .into_iter()
            .filter(|id| !keep.contains(id))
            .collect();
        self.remove(T::KIND, &gone)?;
        self.put_all(items)
    }

    /// Sets the sync state of a kind.
    pub fn set_sync_state(
        &mut self,
        kind: EntityKind,
        state: &SyncState,
    ) -> Result<(), StoreError> {
        let mut table = self.txn.open_table(SYNC).map_err(|e| self.store.err(e))?;
        let mut buf = Vec::new();
        encode(state, &mut buf).map_err(|e| self.store.err(e))?;
        table
            .insert(kind.as_str(), buf.as_slice())
            .map_err(|e| self.store.err(e))?;
        Ok(())
    }

    /// Sets a meta value (JSON, so operators can read it with any redb tool).
    pub fn set_meta<T: Serialize>(&mut self, key: &str, value: &T) -> Result<(), StoreError> {
        let mut table = self.txn.open_table(META).map_err(|e| self.store.err(e))?;
        let bytes = serde_json::to_vec(value).map_err(|e| self.store.err(e))?;
        table
            .insert(key, bytes.as_slice())
            .map_err(|e| self.store.err(e))?;
        Ok(())
    }

    /// Removes a meta value.
    pub fn remove_meta(&mut self, key: &str) -> Result<(), StoreError> {
        let mut table = self.txn.open_table(META).map_err(|e| self.store.err(e))?;
        table.remove(key).map_err(|e| self.store.err(e))?;
        Ok(())
    }
}

/// The permission bits of `path` that let users other than its owner read, write or enter it,
/// when there are any (Unix; `None` elsewhere).
pub fn exposed_mode(path: &Path) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
        (mode & 0o077 != 0).then_some(mode)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// Creates the store file 0600 when it does not exist (redb initialises an empty file), and
/// takes group and other access away from an existing one.
fn restrict_file(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o700))?;
                }
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rebuy_core::{ContactId, Phone};

    #[cfg(unix)]
    #[test]
    fn the_data_directory_and_store_files_are_the_owners_alone() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let store = Store::open(&dir, &PortalId("p".into())).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(store.path()), 0o600);
        assert_eq!(exposed_mode(&dir), None);
        let file = store.path().to_owned();
        drop(store);
        // A file made readable by others (an old version, a copy) is tightened at open.
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(exposed_mode(&dir), Some(0o755));
        let store = Store::open(&dir, &PortalId("p".into())).unwrap();
        assert_eq!(mode(store.path()), 0o600);
    }

    fn contact(id: u64) -> Contact {
        Contact {
            id: ContactId(id),
            name: format!("Иван {id}"),
            phones: vec![Phone::parse("8 (912) 345-67-89")],
            emails: vec!["ivan@example.ru".into()],
            company_id: None,
            responsible_user_id: None,
            created_at: Timestamp::from_second(1_700_000_000).unwrap(),
            updated_at: Timestamp::from_second(1_700_000_100).unwrap(),
            custom_fields: vec![],
        }
    }

    #[test]
    fn pages_and_state_round_trip_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let portal = PortalId::from("p1");
        {
            let store = Store::open(dir.path(), &portal).unwrap();
            let state = SyncState {
                updated_from: Some(Timestamp::from_second(5).unwrap()),
                ..Default::default()
            };
            store
                .write(|w| {
                    w.put_all(&[contact(1), contact(2)])?;
                    w.set_sync_state(EntityKind::Contacts, &state)
                })
                .unwrap();
        }
        let store = Store::open(dir.path(), &portal).unwrap();
        assert_eq!(store.count(EntityKind::Contacts).unwrap(), 2);
        assert_eq!(store.get::<Contact>(2).unwrap().unwrap(), contact(2));
        assert_eq!(
            store.sync_state(EntityKind::Contacts).unwrap().updated_from,
            Some(Timestamp::from_second(5).unwrap())
        );
        let mut seen = vec![];
        store.for_each::<Contact>(|c| seen.push(c.id.0)).unwrap();
        assert_eq!(seen, vec![1, 2]);
    }

    #[test]
    fn schema_mismatch_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let portal = PortalId::from("p1");
        {
            let store = Store::open(dir.path(), &portal).unwrap();
            store
                .write(|w| {
                    let mut t = w.txn.open_table(META).map_err(|e| w.store.err(e))?;
                    t.insert(KEY_SCHEMA_VERSION, 99u32.to_le_bytes().as_slice())
                        .map_err(|e| w.store.err(e))?;
                    Ok(())
                })
                .unwrap();
        }
        let err = Store::open(dir.path(), &portal).unwrap_err().to_string();
        assert!(
            err.contains("schema version 99") && err.contains("upgrade rebuy"),
            "{err}"
        );
    }

    #[test]
    fn version_1_cache_is_cleared_and_keeps_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let portal = PortalId::from("p1");
        {
            let store = Store::open(dir.path(), &portal).unwrap();
            store
                .write(|w| {
                    let mut t = w.txn.open_table(CONTACTS).map_err(|e| w.store.err(e))?;
                    t.insert(5u64, [1u8, 2, 3].as_slice())
                        .map_err(|e| w.store.err(e))?;
                    w.set_sync_state(EntityKind::Contacts, &SyncState::default())?;
                    w.set_meta(KEY_ACCOUNT, &"kept")?;
                    let mut m = w.txn.open_table(META).map_err(|e| w.store.err(e))?;
                    m.insert(KEY_SCHEMA_VERSION, 1u32.to_le_bytes().as_slice())
                        .map_err(|e| w.store.err(e))?;
                    Ok(())
                })
                .unwrap();
        }
        let store = Store::open(dir.path(), &portal).unwrap();
        assert_eq!(store.count(EntityKind::Contacts).unwrap(), 0);
        assert_eq!(
            store.meta::<String>(KEY_ACCOUNT).unwrap().as_deref(),
            Some("kept")
        );
        drop(store);
        // Opening again is a plain version-2 open.
        assert!(Store::open(dir.path(), &portal).is_ok());
    }

    #[test]
    fn corrupt_value_names_table_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &PortalId::from("p")).unwrap();
        store
            .write(|w| {
                let mut t = w.txn.open_table(CONTACTS).map_err(|e| w.store.err(e))?;
                t.insert(7u64, [1u8, 255, 255].as_slice())
                    .map_err(|e| w.store.err(e))?;
                Ok(())
            })
            .unwrap();
        let err = store.get::<Contact>(7).unwrap_err().to_string();
        assert!(err.contains("contacts[7]"), "{err}");
    }
}
