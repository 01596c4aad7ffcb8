//! The [`Connector`] impl: which requests serve which method.
//!
//! **Listing.** One page = one `batch` of up to 50 chained `crm.*.list` calls (see
//! [`crate::batch::chain_list`]): ordered by `ID`, each after the previous command's 50th row,
//! `start=-1` (no `COUNT` on big portals). A page is up to 2,500 records for one request (one
//! hit of the leaky bucket). The page ends at the first command that returned fewer than 50
//! rows; later commands are ignored whatever the portal made of their dangling reference, and
//! ids must strictly grow across the page (else the answer is `Invalid`: a chain that went
//! wrong never yields duplicates or gaps silently). The [`Cursor`] is `id:{last id}`, so a sync
//! that crashed resumes after the last committed page.
//!
//! **Segments** ([`Connector::prelude`], [`Connector::split`]). A full listing may run as
//! several chains at once, so that the leaky bucket's burst carries several requests in flight
//! instead of one after the other. Rank probes (see the `prelude` module) find the last id of
//! each 2,500-row chunk; each segment is the id range of one chunk, cursor `id:{after}..{upto}`,
//! listed by the same chains with `<ID upto` added, whose last command counts (`start=0`): its
//! `total` says whether rows remain after the chain, so a segment of 2,500 rows takes exactly
//! one request (ids only grow, so a closed range never gains rows; one deleted during the probe
//! may leave a row more, which the count reveals). The rest after the last full chunk is
//! `id:{after}..` (counted, no `<ID`) when the probe saw the table end, else open (`id:{after}`).
//! Rows outside a segment's range end it, so a portal that ignored `<ID` would not make segments
//! overlap for ever. A sync's prelude probes its full listings from the start, together with the
//! account, users and funnels, in one or two `batch` requests.
//!
//! **Incremental.** [`ListQuery::updated_from`] becomes `>=DATE_MODIFY` (inclusive, so the
//! boundary second is read again: a one-second overlap that upserts absorb), `updated_to`
//! `<=DATE_MODIFY`; the chain by `ID` stays the same, but its first page is one list call and
//! the last call of each page counts what is left: the next chain is as long as that needs
//! (cursor `id:{after}/{left}`) and none follows the last rows.
//!
//! **Product rows** (when [`B24Settings::product_rows`](crate::B24Settings)): a full sync lists
//! them as a stream of their own, `crm.item.productrow.list` of `ownerType` `D` chained by `>id`
//! exactly like the entity lists (2,500 rows per request); the cache joins them to their deals.
//! An incremental page of deals fetches the current rows of its deals instead (filtered by
//! `@ownerId`, 20 deals per command, followed by `>id` while a command comes back full).
//!
//! **Deletions.** Bitrix24 has no deletion log and does not redeliver events; [`Connector::deal_ids`]
//! lists every deal id (select `ID` only, chained like the lists) for the sidecar's periodic
//! reconciliation.
//!
//! **Account.** Bitrix24 has no account entity: `id` 0, `name` and `domain` = the portal's
//! domain (from the tokens' `domain` when it names a portal, else the URL's host), currency
//! from `crm.currency.base.get` (`RUB` when empty), no time zone.
use crate::batch::{self, Command};
use crate::client::{B24Client, api_error, decode_value};
use crate::prelude::Probe;
use crate::wire::{self, HasId};
use crate::{map, write};
use async_trait::async_trait;
use rebuy_core::connector::{Cursor, ListQuery, Page, StatsSnapshot, WriteOp, WriteOutcome};
use rebuy_core::{
    Account, Company, Connector, ConnectorError, Contact, ContactId, CrmKind, Deal, DealId,
    DealProductRow, Pipeline, ProductRow, User,
};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};
use std::collections::HashMap;

/// Rows per list call (fixed by Bitrix24).
pub const PAGE: usize = 50;

const CONTACT_SELECT: &[&str] = &[
    "ID",
    "NAME",
    "SECOND_NAME",
    "LAST_NAME",
    "COMPANY_ID",
    "ASSIGNED_BY_ID",
    "DATE_CREATE",
    "DATE_MODIFY",
    "PHONE",
    "EMAIL",
    "UF_*",
];
const COMPANY_SELECT: &[&str] = &[
    "ID",
    "TITLE",
    "ASSIGNED_BY_ID",
    "DATE_CREATE",
    "DATE_MODIFY",
    "PHONE",
    "EMAIL",
    "UF_*",
];
const DEAL_SELECT: &[&str] = &[
    "ID",
    "TITLE",
    "CATEGORY_ID",
    "STAGE_ID",
    "STAGE_SEMANTIC_ID",
    "CURRENCY_ID",
    "OPPORTUNITY",
    "CONTACT_ID",
    "COMPANY_ID",
    "ASSIGNED_BY_ID",
    "DATE_CREATE",
    "DATE_MODIFY",
    "CLOSEDATE",
    "CLOSED",
    "IS_RETURN_CUSTOMER",
    "UF_*",
];
/// Deals per `crm.item.productrow.list` command.
const ROWS_DEALS_PER_COMMAND: usize = 20;

/// `id:{n}` -> n (a segment cursor is refused: see [`parse_segment`]).
pub(crate) fn parse_cursor(c: Option<&Cursor>) -> Result<u64, ConnectorError> {
    match parse_segment(c)? {
        (after, None) => Ok(after),
        (_, Some(_)) => Err(bad_cursor(c)),
    }
}

fn bad_cursor(c: Option<&Cursor>) -> ConnectorError {
    ConnectorError::Invalid {
        path: "cursor".into(),
        message: format!(
            "not a Bitrix24 cursor: {:?}",
            c.map(|c| c.0.as_str()).unwrap_or("")
        ),
    }
}

/// `id:{after}` -> (after, None); `id:{after}..{upto}` (a segment: ids strictly between) ->
/// (after, Some(upto)); `id:{after}..` (the last segment of a probed table: no upper bound,
/// but counted like the others) -> (after, Some([`OPEN_END`])).
pub(crate) fn parse_segment(c: Option<&Cursor>) -> Result<(u64, Option<u64>), ConnectorError> {
    let Some(text) = c else { return Ok((0, None)) };
    let rest = text.0.strip_prefix("id:").ok_or_else(|| bad_cursor(c))?;
    let rest = match rest.split_once('/') {
        Some((r, left)) if left.parse::<u64>().is_ok() => r,
        Some(_) => return Err(bad_cursor(c)),
        None => rest,
    };
    match rest.split_once("..") {
        None => rest.parse().map(|a| (a, None)).map_err(|_| bad_cursor(c)),
        Some((a, "")) => a
            .parse()
            .map(|a| (a, Some(OPEN_END)))
            .map_err(|_| bad_cursor(c)),
        Some((a, b)) => match (a.parse::<u64>(), b.parse::<u64>()) {
            (Ok(a), Ok(b)) if b > a && b != OPEN_END => Ok((a, Some(b))),
            _ => Err(bad_cursor(c)),
        },
    }
}

/// The rows an incremental listing counted as left after the page its cursor follows
/// (`id:{after}/{left}`): the next chain is sized to them.
fn left_of(c: Option<&Cursor>) -> Option<u64> {
    c?.0.rsplit_once('/')?.1.parse().ok()
}

/// The cursor of the next page: within its segment, or (outside segments) with the rows the
/// chain counted as left.
fn next_cursor(last: u64, upto: Option<u64>, left: Option<u64>) -> Cursor {
    match (upto, left) {
        (None, Some(l)) => Cursor(format!("id:{last}/{l}")),
        _ => segment_cursor(last, upto),
    }
}

/// The upper bound of a segment that has none (`id:{after}..`): its chains count like a closed
/// segment's, so it ends without an empty request, but send no `<ID`.
pub(crate) const OPEN_END: u64 = u64::MAX;

/// The `<ID` bound to send for a segment's upper bound.
fn id_bound(upto: Option<u64>) -> Option<u64> {
    upto.filter(|u| *u != OPEN_END)
}

fn cursor(last: u64) -> Cursor {
    Cursor(format!("id:{last}"))
}

/// The cursor after `last` within a segment that ends below `upto` (or open-ended).
pub(crate) fn segment_cursor(last: u64, upto: Option<u64>) -> Cursor {
    match upto {
        Some(OPEN_END) => Cursor(format!("id:{last}..")),
        Some(u) => Cursor(format!("id:{last}..{u}")),
        None => cursor(last),
    }
}

/// `ID` (or `id`) of a row as Bitrix24 sends it: a string or a number.
pub(crate) fn row_id(row: &Value, key: &str) -> Option<u64> {
    match row.get(key)? {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

fn iso(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%S+00:00").to_string()
}

fn query_filter(q: &ListQuery) -> Map<String, Value> {
    let mut f = Map::new();
    if let Some(t) = q.updated_from {
        f.insert(">=DATE_MODIFY".into(), Value::String(iso(t)));
    }
    if let Some(t) = q.updated_to {
        f.insert("<=DATE_MODIFY".into(), Value::String(iso(t)));
    }
    f
}

impl B24Client {
    /// One page of a chained listing: rows after `after`, the id to continue from (`None` at
    /// the end) and, when the chain counted, the rows left after it.
    pub(crate) async fn chained<W: DeserializeOwned + HasId>(
        &self,
        method: &str,
        select: &[&str],
        filter: &Map<String, Value>,
        after: u64,
        upto: Option<u64>,
        left: Option<u64>,
    ) -> Result<(Vec<W>, Option<u64>, Option<u64>), ConnectorError> {
        // An incremental listing usually finds a handful of changed records: its first page
        // asks one list call, not a chain of 50 that would spend 49 calls' operating time on
        // empty answers. Its last call counts what is left, so each later chain is as long
        // as the changed records need and none is sent once they are all read.
        let incremental = filter.keys().any(|k| k.ends_with("DATE_MODIFY"));
        let full = self.inner.settings.batch_size;
        let n = match (incremental, left) {
            (true, Some(l)) => (l as usize).div_ceil(PAGE).clamp(1, full),
            (true, None) if after == 0 => 1,
            _ => full,
        };
        let counted = upto.is_some() || incremental;
        let mut filter = filter.clone();
        if let Some(u) = id_bound(upto) {
            filter.insert("<ID".into(), Value::String(u.to_string()));
        }
        let cmds = batch::chain_list(method, after, n, select, &filter, counted);
        self.run_chain::<Vec<W>, W>(method, &cmds, after, upto, counted, |rows| rows)
            .await
    }

    /// Runs the commands of a chain (each continuing after the previous one's last row) in
    /// one `batch` and checks the answer: rows are taken up to the first command that came
    /// back short, ids must strictly grow (a chain that went wrong never yields duplicates or
    /// gaps silently), and no command may return more than a page.
    async fn run_chain<R: DeserializeOwned, W: HasId>(
        &self,
        method: &str,
        cmds: &[Command],
        after: u64,
        upto: Option<u64>,
        counted: bool,
        rows_of: impl Fn(R) -> Vec<W>,
    ) -> Result<(Vec<W>, Option<u64>, Option<u64>), ConnectorError> {
        let mut res = self.batch::<R>(cmds, true, true).await?;
        let mut rows = Vec::with_capacity(cmds.len() * PAGE);
        let mut last = after;
        for c in cmds {
            if let Some(e) = res.result_error.get(&c.key) {
                return Err(api_error(400, e, &format!("{method} in batch ({})", c.key)));
            }
            let Some(page) = res.result.remove(&c.key) else {
                return Err(ConnectorError::Invalid {
                    path: format!("result.result.{}", c.key),
                    message: "the batch answer lacks a command's result".into(),
                });
            };
            let page = rows_of(page);
            let n = page.len();
            if n > PAGE {
                return Err(ConnectorError::Invalid {
                    path: format!("result.result.{}", c.key),
                    message: format!("{n} rows in one list call (at most {PAGE})"),
                });
            }
            for (i, r) in page.iter().enumerate() {
                if r.id() <= last {
                    return Err(ConnectorError::Invalid {
                        path: format!("result.result.{}[{i}].id", c.key),
                        message: format!(
                            "id {} does not follow {last}: the chained paging broke",
                            r.id()
                        ),
                    });
                }
                last = r.id();
            }
            // A segment ends at its upper bound, whatever the portal made of `<ID`.
            if let Some(u) = upto
                && last >= u
            {
                rows.extend(page.into_iter().filter(|r| r.id() < u));
                return Ok((rows, None, None));
            }
            rows.extend(page);
            if n < PAGE {
                return Ok((rows, None, None));
            }
        }
        // A counted chain's last command counted what its filter held from there on: no more
        // than it returned means the listing (or segment) is done.
        let total = cmds
            .last()
            .filter(|_| counted)
            .and_then(|c| res.result_total.get(&c.key))
            .and_then(|t| match t {
                Value::Number(n) => n.as_u64(),
                Value::String(s) => s.parse().ok(),
                _ => None,
            });
        match total {
            Some(t) if t <= PAGE as u64 => Ok((rows, None, None)),
            Some(t) => Ok((rows, Some(last), Some(t - PAGE as u64))),
            None => Ok((rows, Some(last), None)),
        }
    }

    /// The account for `currency`: Bitrix24 has no account entity (see the module doc).
    pub(crate) async fn account_of(&self, currency: rebuy_core::Currency) -> Account {
        let mut domain = self
            .inner
            .settings
            .base_url
            .host_str()
            .unwrap_or("")
            .to_owned();
        if let Some(m) = &self.inner.tokens
            && let Ok(t) = m.tokens().await
            && let Some(d) = t.extra.get("domain").filter(|d| !d.starts_with("oauth."))
        {
            domain = d.clone();
        }
        Account {
            id: 0,
            name: domain.clone(),
            domain,
            currency,
            time_zone: None,
            customers_mode: None,
        }
    }

    /// Product rows of `deal_ids`, by deal.
    pub(crate) async fn product_rows(
        &self,
        deal_ids: &[u64],
    ) -> Result<HashMap<u64, Vec<ProductRow>>, ConnectorError> {
        let mut out: HashMap<u64, Vec<ProductRow>> = HashMap::new();
        let groups: Vec<&[u64]> = deal_ids.chunks(ROWS_DEALS_PER_COMMAND).collect();
        let mut pending: Vec<(usize, u64)> = (0..groups.len()).map(|g| (g, 0)).collect();
        let per_batch = self.inner.settings.batch_size;
        while !pending.is_empty() {
            let take: Vec<(usize, u64)> = pending.drain(..pending.len().min(per_batch)).collect();
            let cmds: Vec<Command> = take
                .iter()
                .enumerate()
                .map(|(i, (g, after))| {
                    batch::command(
                        i,
                        "crm.item.productrow.list",
                        &json!({"filter": {"=ownerType": "D", "@ownerId": groups[*g], ">id": after}, "order": {"id": "ASC"}, "start": -1}),
                    )
                })
                .collect();
            let mut res = self
                .batch::<wire::ItemProductRows>(&cmds, false, true)
                .await?;
            for (c, (g, _)) in cmds.iter().zip(&take) {
                if let Some(e) = res.result_error.get(&c.key) {
                    return Err(api_error(
                        400,
                        e,
                        &format!("crm.item.productrow.list in batch ({})", c.key),
                    ));
                }
                let rows = res
                    .result
                    .remove(&c.key)
                    .map(|r| r.product_rows)
                    .unwrap_or_default();
                if rows.len() >= PAGE {
                    pending.push((*g, rows.last().map_or(0, |r| r.id)));
                }
                for r in rows {
                    out.entry(r.owner_id)
                        .or_default()
                        .push(map::item_product_row(r));
                }
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl Connector for B24Client {
    fn kind(&self) -> CrmKind {
        CrmKind::Bitrix24
    }

    fn restore_limiter(&self, state: &rebuy_core::LimiterState) {
        self.inner.limiter.restore(state);
    }

    fn save_limiter_on_drop(&self, saver: rebuy_core::LimiterSaver) {
        self.inner.limiter_saver.set(saver);
    }

    fn stats(&self) -> StatsSnapshot {
        self.snapshot()
    }

    async fn account(&self) -> Result<Account, ConnectorError> {
        let currency = self.currency().await?;
        Ok(self.account_of(currency).await)
    }

    async fn prelude(&self, full: &[rebuy_core::EntityKind]) -> rebuy_core::Prelude {
        self.sync_prelude(full).await
    }

    async fn users(&self) -> Result<Vec<User>, ConnectorError> {
        let mut out = Vec::new();
        let mut start = 0u64;
        loop {
            let env: wire::Envelope<Vec<wire::User>> =
                self.call("user.get", json!({"start": start})).await?;
            out.extend(env.result.into_iter().map(map::user));
            match env.next {
                Some(n) if n > start => start = n,
                _ => return Ok(out),
            }
        }
    }

    async fn pipelines(&self) -> Result<Vec<Pipeline>, ConnectorError> {
        let env: wire::Envelope<wire::Categories> = self
            .call("crm.category.list", json!({"entityTypeId": 2}))
            .await?;
        let cats = env.result.categories;
        let mut out = Vec::with_capacity(cats.len());
        for chunk in cats.chunks(self.inner.settings.batch_size) {
            let cmds: Vec<Command> = chunk
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let entity = if c.id == 0 {
                        "DEAL_STAGE".to_owned()
                    } else {
                        format!("DEAL_STAGE_{}", c.id)
                    };
                    batch::command(
                        i,
                        "crm.status.list",
                        &json!({"filter": {"ENTITY_ID": entity}, "order": {"SORT": "ASC"}}),
                    )
                })
                .collect();
            let mut res = self.batch::<Vec<wire::Status>>(&cmds, false, true).await?;
            for (c, cat) in cmds.iter().zip(chunk) {
                if let Some(e) = res.result_error.get(&c.key) {
                    return Err(api_error(400, e, "crm.status.list"));
                }
                out.push(map::pipeline(
                    cat.clone(),
                    res.result.remove(&c.key).unwrap_or_default(),
                ));
            }
        }
        out.sort_by_key(|p| (!p.is_main, p.sort, p.id));
        Ok(out)
    }

    async fn contacts(
        &self,
        query: &ListQuery,
        cursor: Option<&Cursor>,
    ) -> Result<Page<Contact>, ConnectorError> {
        let (after, upto) = parse_segment(cursor)?;
        let (rows, next, left) = self
            .chained::<wire::Contact>(
                "crm.contact.list",
                CONTACT_SELECT,
                &query_filter(query),
                after,
                upto,
                left_of(cursor),
            )
            .await?;
        Ok(Page {
            items: rows.into_iter().map(map::contact).collect(),
            next: next.map(|l| next_cursor(l, upto, left)),
        })
    }

    async fn companies(
        &self,
        query: &ListQuery,
        cursor: Option<&Cursor>,
    ) -> Result<Page<Company>, ConnectorError> {
        let (after, upto) = parse_segment(cursor)?;
        let (rows, next, left) = self
            .chained::<wire::Company>(
                "crm.company.list",
                COMPANY_SELECT,
                &query_filter(query),
                after,
                upto,
                left_of(cursor),
            )
            .await?;
        Ok(Page {
            items: rows.into_iter().map(map::company).collect(),
            next: next.map(|l| next_cursor(l, upto, left)),
        })
    }

    async fn deals(
        &self,
        query: &ListQuery,
        cursor: Option<&Cursor>,
    ) -> Result<Page<Deal>, ConnectorError> {
        let (after, upto) = parse_segment(cursor)?;
        let currency = self.default_currency().await?;
        let (rows, next, left) = self
            .chained::<wire::Deal>(
                "crm.deal.list",
                DEAL_SELECT,
                &query_filter(query),
                after,
                upto,
                left_of(cursor),
            )
            .await?;
        // Full listings leave products to the separate row stream ([`Connector::product_rows`]);
        // an incremental page brings the current rows of each of its deals, so the cache can
        // replace theirs.
        let mut products = if self.inner.settings.product_rows && query.updated_from.is_some() {
            let ids: Vec<u64> = rows.iter().map(|d| d.ID).collect();
            if ids.is_empty() {
                HashMap::new()
            } else {
                self.product_rows(&ids).await?
            }
        } else {
            HashMap::new()
        };
        let items = rows
            .into_iter()
            .map(|d| {
                let p = products.remove(&d.ID).unwrap_or_default();
                map::deal(d, &currency, None, p)
            })
            .collect();
        Ok(Page {
            items,
            next: next.map(|l| next_cursor(l, upto, left)),
        })
    }

    async fn split(
        &self,
        kind: rebuy_core::EntityKind,
        cursor: &Cursor,
    ) -> Result<Vec<Cursor>, ConnectorError> {
        let (after, upto) = parse_segment(Some(cursor))?;
        if upto.is_some() {
            return Ok(Vec::new());
        }
        let s = &self.inner.settings;
        let Some(probe) = Probe::new(kind, after, s.batch_size, s.product_rows) else {
            return Ok(Vec::new());
        };
        let mut probes = [probe];
        self.probe(&mut probes, &[s.batch_size]).await;
        Ok(probes[0].segments())
    }

    fn lists_product_rows(&self) -> bool {
        self.inner.settings.product_rows
    }

    async fn product_rows(
        &self,
        cursor: Option<&Cursor>,
    ) -> Result<Page<DealProductRow>, ConnectorError> {
        let (after, upto) = parse_segment(cursor)?;
        let cmds = batch::chain_product_rows(
            after,
            id_bound(upto),
            upto.is_some(),
            self.inner.settings.batch_size,
        );
        let (rows, next, _) = self
            .run_chain::<wire::ItemProductRows, _>(
                "crm.item.productrow.list",
                &cmds,
                after,
                upto,
                upto.is_some(),
                |r| r.product_rows,
            )
            .await?;
        Ok(Page {
            items: rows
                .into_iter()
                .map(|r| DealProductRow {
                    id: r.id,
                    deal_id: DealId(r.owner_id),
                    row: map::item_product_row(r),
                })
                .collect(),
            next: next.map(|l| segment_cursor(l, upto)),
        })
    }

    async fn deal(&self, id: DealId) -> Result<Option<Deal>, ConnectorError> {
        let currency = self.default_currency().await?;
        let p = json!({"id": id.0});
        let cmds = vec![
            batch::command(0, "crm.deal.get", &p),
            batch::command(1, "crm.deal.contact.items.get", &p),
            batch::command(2, "crm.deal.productrows.get", &p),
        ];
        let mut res = self.batch::<Value>(&cmds, false, true).await?;
        if let Some(e) = res.result_error.get("c00") {
            return match api_error(400, e, &format!("crm.deal.get {id}")) {
                ConnectorError::NotFound { .. } => Ok(None),
                other => Err(other),
            };
        }
        let take = |res: &mut wire::BatchResult<Value>, key: &str| {
            res.result.remove(key).unwrap_or(Value::Null)
        };
        let deal: wire::Deal = decode_value(take(&mut res, "c00"), "result.result.c00")?;
        let items: Vec<wire::DealContactItem> = match take(&mut res, "c01") {
            Value::Null => Vec::new(),
            v => decode_value(v, "result.result.c01")?,
        };
        let mut items = items;
        items.sort_by_key(|i| (!i.IS_PRIMARY, i.SORT.unwrap_or(0)));
        let contacts: Vec<ContactId> = items.iter().map(|i| ContactId(i.CONTACT_ID)).collect();
        let rows: Vec<wire::ProductRow> = match take(&mut res, "c02") {
            Value::Null => Vec::new(),
            v => decode_value(v, "result.result.c02")?,
        };
        // All of the deal's rows: the cache replaces the separately listed ones with them.
        let products = if self.inner.settings.product_rows {
            rows.into_iter().map(map::product_row).collect()
        } else {
            Vec::new()
        };
        let contacts = if contacts.is_empty() {
            None
        } else {
            Some(contacts)
        };
        Ok(Some(map::deal(deal, &currency, contacts, products)))
    }

    async fn contact(&self, id: ContactId) -> Result<Option<Contact>, ConnectorError> {
        match self
            .call::<Value>("crm.contact.get", json!({"id": id.0}))
            .await
        {
            Ok(env) => Ok(Some(map::contact(decode_value(env.result, "result")?))),
            Err(ConnectorError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn deal_ids(&self, cursor: Option<&Cursor>) -> Result<Page<DealId>, ConnectorError> {
        let after = parse_cursor(cursor)?;
        let (rows, next, _) = self
            .chained::<wire::IdOnly>("crm.deal.list", &["ID"], &Map::new(), after, None, None)
            .await?;
        Ok(Page {
            items: rows.into_iter().map(|r| DealId(r.ID)).collect(),
            next: next.map(self::cursor),
        })
    }

    fn max_writes_per_request(&self) -> usize {
        self.inner.settings.batch_size
    }

    /// `crm.deal.list {filter: {TITLE, CATEGORY_ID, CONTACT_ID | COMPANY_ID}, select: [ID]}`:
    /// the oldest match.
    async fn find_deal(
        &self,
        name: &str,
        pipeline: rebuy_core::PipelineId,
        contact: Option<rebuy_core::ContactId>,
        company: Option<rebuy_core::CompanyId>,
    ) -> Result<Option<u64>, ConnectorError> {
        let mut filter = json!({"TITLE": name, "CATEGORY_ID": pipeline.0});
        match (contact, company) {
            (Some(c), _) => filter["CONTACT_ID"] = json!(c.0),
            (None, Some(c)) => filter["COMPANY_ID"] = json!(c.0),
            (None, None) => {}
        }
        let env: wire::Envelope<Vec<Value>> = self
            .call(
                "crm.deal.list",
                json!({"filter": filter, "select": ["ID"], "order": {"ID": "ASC"}}),
            )
            .await?;
        Ok(env.result.first().and_then(|d| match d.get("ID") {
            Some(Value::String(s)) => s.parse().ok(),
            Some(Value::Number(n)) => n.as_u64(),
            _ => None,
        }))
    }

    /// `crm.activity.list {filter: {OWNER_TYPE_ID, OWNER_ID}, select: [ID, DESCRIPTION]}`, page
    /// by page: the to-do whose description carries `marker`.
    async fn find_task(
        &self,
        entity: rebuy_core::EntityRef,
        marker: &str,
    ) -> Result<Option<u64>, ConnectorError> {
        let (owner_type, owner) = match entity {
            rebuy_core::EntityRef::Deal(d) => (2, d.0),
            rebuy_core::EntityRef::Contact(c) => (3, c.0),
            rebuy_core::EntityRef::Company(c) => (4, c.0),
        };
        let mut start = 0u64;
        // A hard cap: an entity with more than 5,000 activities is not a real case.
        for _ in 0..100 {
            let env: wire::Envelope<Vec<Value>> = self
                .call(
                    "crm.activity.list",
                    json!({"filter": {"OWNER_TYPE_ID": owner_type, "OWNER_ID": owner},
                           "select": ["ID", "DESCRIPTION"], "order": {"ID": "ASC"}, "start": start}),
                )
                .await?;
            for a in &env.result {
                let text = a.get("DESCRIPTION").and_then(Value::as_str).unwrap_or("");
                if text.contains(marker) {
                    let id = match a.get("ID") {
                        Some(Value::String(s)) => s.parse().ok(),
                        Some(Value::Number(n)) => n.as_u64(),
                        _ => None,
                    };
                    return Ok(id);
                }
            }
            match env.next {
                Some(n) if !env.result.is_empty() => start = n,
                _ => return Ok(None),
            }
        }
        Ok(None)
    }

    /// `crm.activity.list {filter: {ID: [..]}, select: [ID, COMPLETED, LAST_UPDATED]}` (up
    /// to 50 ids a call): whether each to-do is done.
    async fn task_states(&self, ids: &[u64]) -> Result<Vec<rebuy_core::TaskState>, ConnectorError> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(50) {
            let env: wire::Envelope<Vec<Value>> = self
                .call(
                    "crm.activity.list",
                    json!({"filter": {"ID": chunk}, "select": ["ID", "COMPLETED", "LAST_UPDATED"],
                           "order": {"ID": "ASC"}}),
                )
                .await?;
            for a in &env.result {
                let id = match a.get("ID") {
                    Some(Value::String(s)) => s.parse().ok(),
                    Some(Value::Number(n)) => n.as_u64(),
                    _ => None,
                };
                let Some(id) = id else { continue };
                out.push(rebuy_core::TaskState {
                    id,
                    completed: a.get("COMPLETED").and_then(Value::as_str) == Some("Y"),
                    updated_at: a
                        .get("LAST_UPDATED")
                        .and_then(Value::as_str)
                        .and_then(|s| s.parse::<jiff::Timestamp>().ok()),
                });
            }
        }
        Ok(out)
    }

    /// `crm.{contact,company,deal}.userfield.list {filter: {LANG: "ru"}}` in one batch: the
    /// user fields (`UF_CRM_...`) with their labels (labels come only when a language is
    /// asked for).
    async fn custom_fields(&self) -> Result<Vec<rebuy_core::FieldDef>, ConnectorError> {
        let lists = [
            (
                "crm.contact.userfield.list",
                rebuy_core::EntityKind::Contacts,
            ),
            (
                "crm.company.userfield.list",
                rebuy_core::EntityKind::Companies,
            ),
            ("crm.deal.userfield.list", rebuy_core::EntityKind::Deals),
        ];
        let cmds: Vec<Command> = lists
            .iter()
            .enumerate()
            .map(|(i, (m, _))| {
                batch::command(
                    i,
                    m,
                    &json!({"order": {"SORT": "ASC"}, "filter": {"LANG": "ru"}}),
                )
            })
            .collect();
        let mut res = self.batch::<Vec<Value>>(&cmds, false, true).await?;
        let mut out = Vec::new();
        for (c, (method, entity)) in cmds.iter().zip(lists) {
            if let Some(e) = res.result_error.get(&c.key) {
                return Err(api_error(400, e, method));
            }
            for f in res.result.remove(&c.key).unwrap_or_default() {
                let text = |k: &str| match f.get(k) {
                    Some(Value::String(s)) => s.clone(),
                    // Labels may come per language: {"ru": "..", "en": ".."}.
                    Some(Value::Object(m)) => m
                        .get("ru")
                        .or_else(|| m.values().next())
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned(),
                    _ => String::new(),
                };
                let id = text("FIELD_NAME");
                if id.is_empty() {
                    continue;
                }
                let label = text("EDIT_FORM_LABEL");
                out.push(rebuy_core::FieldDef {
                    entity,
                    name: if label.is_empty() { id.clone() } else { label },
                    id,
                    code: None,
                    field_type: text("USER_TYPE_ID"),
                });
            }
        }
        Ok(out)
    }

    /// `event.bind` for each event (app auth only: an inbound webhook gets `WRONG_AUTH_TYPE`).
    /// A handler bound before (`ERROR_HANDLER_ALREADY_EXIST`) counts as success, so
    /// re-binding after an app update is safe.
    async fn subscribe(&self, handler_url: &str, events: &[&str]) -> Result<(), ConnectorError> {
        for event in events {
            let params = json!({"event": event, "handler": handler_url});
            match self.call::<Value>("event.bind", params).await {
                Ok(_) => {}
                Err(ConnectorError::Rejected {
                    code: Some(code), ..
                }) if code == "ERROR_HANDLER_ALREADY_EXIST" => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn apply(&self, ops: &[WriteOp]) -> Vec<Result<WriteOutcome, ConnectorError>> {
        write::apply(self, ops).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip() {
        assert_eq!(parse_cursor(Some(&cursor(42))).unwrap(), 42);
        assert_eq!(parse_cursor(None).unwrap(), 0);
        assert!(parse_cursor(Some(&Cursor("page:3".into()))).is_err());
    }

    #[test]
    fn segment_cursors_round_trip() {
        assert_eq!(
            parse_segment(Some(&segment_cursor(10, Some(99)))).unwrap(),
            (10, Some(99))
        );
        assert_eq!(
            parse_segment(Some(&segment_cursor(7, None))).unwrap(),
            (7, None)
        );
        assert!(parse_segment(Some(&Cursor("id:9..3".into()))).is_err());
        assert!(parse_segment(Some(&Cursor("id:9..x".into()))).is_err());
        // Where only a plain cursor makes sense, a segment is refused.
        assert!(parse_cursor(Some(&segment_cursor(1, Some(5)))).is_err());
    }

    #[test]
    fn incremental_filter_is_inclusive() {
        let q = ListQuery {
            updated_from: Some(jiff::Timestamp::from_second(1_772_355_600).unwrap()),
            updated_to: None,
        };
        assert_eq!(
            query_filter(&q)[">=DATE_MODIFY"],
            json!("2026-03-01T09:00:00+00:00")
        );
    }
}
