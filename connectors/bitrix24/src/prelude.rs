//! A sync's first requests: the account's currency, the users, the funnels with their stages
//! and the rank probes that cut each full listing into segments, packed into as few `batch`
//! requests as they fit (usually two: what can be asked at once, then what the first answers
//! showed is still needed), and the probes alone for [`Connector::split`](rebuy_core::Connector::split).
//!
//! **Rank probes.** A full listing is cut into chunks of one request each (`batch_size` x 50
//! rows, 2,500). Probe command *k* asks the 50 rows (`select ID`) at ranks
//! `k x 2,500 - 50 ..` after the listing's start; when it comes back full, its last row is the
//! last id of chunk *k*, so chunk *k* is the id range `(end of chunk k-1, end of chunk k]`,
//! listed by one chain whose last command counts what is left (none, unless a row was deleted
//! meanwhile). A probe that comes back short means the table ends inside that chunk: the rest
//! is a last segment without an upper bound that still counts, so it takes one request and no
//! empty one after it; each probe's `total` says whether any rows are left after the last full
//! chunk at all. Offsets are multiples of 50, as Bitrix24 pages by 50 whatever `start` says.
//!
//! The first request carries the metadata and as many probes as fit, shared between the
//! listings (deals and product rows get the larger share); the second asks what the first
//! could not know: the stages of funnels other than the default, users past the first 50 and
//! the probes each listing still needs by its `total`, up to `batch_size` ranks per listing
//! (beyond those, the rest of a listing is one segment listed page after page).
use crate::batch::{self, Command};
use crate::client::{B24Client, api_error, decode_value};
use crate::connector::{PAGE, row_id, segment_cursor};
use crate::map;
use crate::wire::{self, BatchResult};
use rebuy_core::connector::Prelude;
use rebuy_core::{ConnectorError, Currency, Cursor, EntityKind, User};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};

/// Where a listing's probe stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProbeState {
    /// Every probe so far came back full: more may be asked.
    Open,
    /// A probe came back short: the table ends inside the chunk after the last full one.
    Ended,
    /// A probe failed, or ids stopped growing (a table changing under the probe): the ends
    /// found so far stand, the rest is listed page after page.
    Stopped,
}

/// The rank probe of one full listing.
#[derive(Debug, Clone)]
pub(crate) struct Probe {
    pub(crate) kind: EntityKind,
    method: &'static str,
    product_rows: bool,
    after: u64,
    /// Rows per chunk.
    step: usize,
    /// The last id of each full chunk found so far, ascending.
    ends: Vec<u64>,
    /// Probes asked so far.
    asked: usize,
    /// Rows after `after`, as the latest probe counted them.
    total: Option<u64>,
    state: ProbeState,
}

impl Probe {
    /// The probe of a full listing of `kind` after id `after` (`None`: the kind is not
    /// listed in chunks).
    pub(crate) fn new(
        kind: EntityKind,
        after: u64,
        batch_size: usize,
        product_rows: bool,
    ) -> Option<Self> {
        let (method, rows) = match kind {
            EntityKind::Contacts => ("crm.contact.list", false),
            EntityKind::Companies => ("crm.company.list", false),
            EntityKind::Deals => ("crm.deal.list", false),
            EntityKind::ProductRows if product_rows => ("crm.item.productrow.list", true),
            _ => return None,
        };
        let step = batch_size * PAGE;
        (step > 0).then_some(Self {
            kind,
            method,
            product_rows: rows,
            after,
            step,
            ends: Vec::new(),
            asked: 0,
            total: None,
            state: ProbeState::Open,
        })
    }

    /// The next probe command, keyed `index`.
    fn command(&mut self, index: usize) -> Command {
        self.asked += 1;
        let start = self.asked * self.step - PAGE;
        let params = if self.product_rows {
            json!({"filter": {"=ownerType": "D", ">id": self.after}, "order": {"id": "ASC"}, "start": start})
        } else {
            json!({"filter": {">ID": self.after}, "order": {"ID": "ASC"}, "select": ["ID"], "start": start})
        };
        batch::command(index, self.method, &params)
    }

    /// Reads the answer to one probe command (in the order they were asked).
    fn read(&mut self, res: &mut BatchResult<Value>, key: &str) {
        if self.state != ProbeState::Open {
            return;
        }
        if let Some(e) = res.result_error.get(key) {
            tracing::warn!(method = self.method, error = %e.error, "A probe of the listing failed; listing the rest page after page");
            self.state = ProbeState::Stopped;
            return;
        }
        if let Some(t) = res.result_total.get(key).and_then(|t| match t {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.parse().ok(),
            _ => None,
        }) {
            self.total = Some(t);
        }
        let v = res.result.remove(key).unwrap_or(Value::Null);
        let rows = if self.product_rows {
            v.get("productRows").cloned().unwrap_or(Value::Null)
        } else {
            v
        };
        let rows = rows.as_array().map(Vec::as_slice).unwrap_or_default();
        if rows.len() < PAGE {
            self.state = ProbeState::Ended;
            return;
        }
        let last = rows
            .last()
            .and_then(|r| row_id(r, if self.product_rows { "id" } else { "ID" }));
        match last {
            Some(id) if id > self.ends.last().copied().unwrap_or(self.after) => self.ends.push(id),
            _ => self.state = ProbeState::Stopped,
        }
    }

    /// Whether the rows counted so far end at the last full chunk found.
    fn covered(&self) -> bool {
        self.total
            .is_some_and(|t| t <= (self.ends.len() * self.step) as u64)
    }

    /// How many more probes are worth asking (at most `cap` in all): as many as the counted
    /// rows need.
    fn wanted(&self, cap: usize) -> usize {
        if self.state != ProbeState::Open || self.covered() {
            return 0;
        }
        let room = cap.saturating_sub(self.asked);
        match self.total {
            Some(t) => (t as usize)
                .div_ceil(self.step)
                .saturating_sub(self.asked)
                .min(room),
            None => room,
        }
    }

    /// The segments found: one per full chunk, then the rest (none when the count says there
    /// is no rest; a counting one when the table ends within a chunk; else an open cursor).
    /// Empty when no chunk is full: the listing fits one request.
    pub(crate) fn segments(&self) -> Vec<Cursor> {
        if self.ends.is_empty() {
            return Vec::new();
        }
        let mut out = Vec::with_capacity(self.ends.len() + 1);
        let mut lo = self.after;
        for &e in &self.ends {
            out.push(segment_cursor(lo, Some(e + 1)));
            lo = e;
        }
        if !self.covered() {
            out.push(match self.state {
                ProbeState::Ended => segment_cursor(lo, Some(u64::MAX)),
                ProbeState::Open | ProbeState::Stopped => segment_cursor(lo, None),
            });
        }
        out
    }
}

/// Merged answers of commands sent in several batches.
fn merge(into: &mut BatchResult<Value>, from: BatchResult<Value>) {
    into.result.extend(from.result);
    into.result_error.extend(from.result_error);
    into.result_total.extend(from.result_total);
    into.result_next.extend(from.result_next);
    into.result_time.extend(from.result_time);
}

impl B24Client {
    /// Sends `cmds` in batches of `batch_size` commands, at once, and merges the answers.
    async fn batches(&self, cmds: &[Command]) -> Result<BatchResult<Value>, ConnectorError> {
        let n = self.inner.settings.batch_size.max(1);
        let answers = futures::future::try_join_all(
            cmds.chunks(n).map(|c| self.batch::<Value>(c, false, true)),
        )
        .await?;
        let mut out = BatchResult {
            result: BTreeMap::new(),
            result_error: BTreeMap::new(),
            result_total: BTreeMap::new(),
            result_next: BTreeMap::new(),
            result_time: BTreeMap::new(),
        };
        for a in answers {
            merge(&mut out, a);
        }
        Ok(out)
    }

    /// Asks `probes` their next `n` ranks each (in as few batches as they fit, at once) and
    /// reads the answers.
    pub(crate) async fn probe(&self, probes: &mut [Probe], n: &[usize]) {
        let mut cmds = Vec::new();
        let mut keys: Vec<(usize, String)> = Vec::new();
        for (i, p) in probes.iter_mut().enumerate() {
            for _ in 0..n.get(i).copied().unwrap_or(0) {
                let c = p.command(cmds.len());
                keys.push((i, c.key.clone()));
                cmds.push(c);
            }
        }
        if cmds.is_empty() {
            return;
        }
        match self.batches(&cmds).await {
            Ok(mut res) => {
                for (i, key) in keys {
                    probes[i].read(&mut res, &key);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "Could not probe the listings; listing them page after page");
                for p in probes.iter_mut() {
                    p.state = ProbeState::Stopped;
                }
            }
        }
    }

    /// [`rebuy_core::Connector::prelude`]: see the module doc.
    pub(crate) async fn sync_prelude(&self, full: &[EntityKind]) -> Prelude {
        let s = &self.inner.settings;
        let mut probes: Vec<Probe> = full
            .iter()
            .filter_map(|k| Probe::new(*k, 0, s.batch_size, s.product_rows))
            .collect();
        // First request: the metadata, then the probes, weighted towards the tables that are
        // usually the largest.
        let mut cmds = vec![
            batch::command(0, "crm.currency.base.get", &json!({})),
            batch::command(1, "user.get", &json!({"start": 0})),
            batch::command(2, "crm.category.list", &json!({"entityTypeId": 2})),
            batch::command(
                3,
                "crm.status.list",
                &json!({"filter": {"ENTITY_ID": "DEAL_STAGE"}, "order": {"SORT": "ASC"}}),
            ),
        ];
        let weight = |k: EntityKind| match k {
            EntityKind::Deals | EntityKind::ProductRows => 3,
            EntityKind::Contacts => 2,
            _ => 1,
        };
        let slots = s.batch_size.saturating_sub(cmds.len());
        let sum: usize = probes.iter().map(|p| weight(p.kind)).sum();
        let share: Vec<usize> = probes
            .iter()
            .map(|p| (slots * weight(p.kind) / sum.max(1)).max(1))
            .collect();
        let mut keys: Vec<(usize, String)> = Vec::new();
        for (i, p) in probes.iter_mut().enumerate() {
            for _ in 0..share[i] {
                let c = p.command(cmds.len());
                keys.push((i, c.key.clone()));
                cmds.push(c);
            }
        }
        let mut res = match self.batches(&cmds).await {
            Ok(res) => res,
            // The portal did not answer the batch: each part on its own says why.
            Err(e) => {
                tracing::debug!(error = %e, "The prelude batch failed; asking each part alone");
                return Prelude {
                    account: rebuy_core::Connector::account(self).await,
                    users: rebuy_core::Connector::users(self).await,
                    pipelines: rebuy_core::Connector::pipelines(self).await,
                    segments: BTreeMap::new(),
                };
            }
        };
        for (i, key) in keys {
            probes[i].read(&mut res, &key);
        }
        let currency = match res.result_error.get("c00") {
            Some(e) => Err(api_error(400, e, "crm.currency.base.get")),
            None => Ok(Currency::new(
                res.result
                    .get("c00")
                    .and_then(Value::as_str)
                    .filter(|c| !c.is_empty())
                    .unwrap_or("RUB"),
            )),
        };
        // Kept as `currency()` would keep it: deal pages need it.
        if currency.as_ref().is_ok() || currency.as_ref().is_err_and(|e| e.is_unavailable()) {
            let _ = self.inner.currency.set(currency.clone());
        }
        let take = |res: &mut BatchResult<Value>, key: &str, what: &str| {
            if let Some(e) = res.result_error.get(key) {
                return Err(api_error(400, e, what));
            }
            Ok(res.result.remove(key).unwrap_or(Value::Null))
        };
        let users_total = res
            .result_total
            .get("c01")
            .and_then(|t| t.as_u64().or_else(|| t.as_str()?.parse().ok()))
            .unwrap_or(0);
        let users: Result<Vec<User>, ConnectorError> = take(&mut res, "c01", "user.get")
            .and_then(|v| decode_value::<Vec<wire::User>>(v, "result.result.c01"))
            .map(|u| u.into_iter().map(map::user).collect());
        let cats: Result<wire::Categories, ConnectorError> =
            take(&mut res, "c02", "crm.category.list")
                .and_then(|v| decode_value(v, "result.result.c02"));
        let default_stages: Result<Vec<wire::Status>, ConnectorError> =
            take(&mut res, "c03", "crm.status.list")
                .and_then(|v| decode_value(v, "result.result.c03"));

        // Second request: what the first showed is still needed.
        let mut more = Vec::new();
        let mut user_pages: Vec<String> = Vec::new();
        if let Ok(u) = &users
            && !u.is_empty()
        {
            let mut start = u.len();
            while (start as u64) < users_total {
                let c = batch::command(more.len(), "user.get", &json!({"start": start}));
                user_pages.push(c.key.clone());
                more.push(c);
                start += PAGE;
            }
        }
        let mut stage_keys: HashMap<u64, String> = HashMap::new();
        if let Ok(c) = &cats {
            for cat in c.categories.iter().filter(|c| c.id != 0) {
                let cmd = batch::command(
                    more.len(),
                    "crm.status.list",
                    &json!({"filter": {"ENTITY_ID": format!("DEAL_STAGE_{}", cat.id)}, "order": {"SORT": "ASC"}}),
                );
                stage_keys.insert(cat.id, cmd.key.clone());
                more.push(cmd);
            }
        }
        let mut probe_keys: Vec<(usize, String)> = Vec::new();
        for (i, p) in probes.iter_mut().enumerate() {
            for _ in 0..p.wanted(s.batch_size) {
                let c = p.command(more.len());
                probe_keys.push((i, c.key.clone()));
                more.push(c);
            }
        }
        let mut second = if more.is_empty() {
            None
        } else {
            Some(self.batches(&more).await)
        };
        match &mut second {
            Some(Ok(r)) => {
                for (i, key) in probe_keys {
                    probes[i].read(r, &key);
                }
            }
            // Unanswered probes: the ends found so far stand.
            _ => {
                for (i, _) in &probe_keys {
                    probes[*i].state = ProbeState::Stopped;
                }
            }
        }
        let users = match (users, &mut second) {
            (Ok(u), _) if user_pages.is_empty() => Ok(u),
            (Ok(mut u), Some(Ok(r))) => {
                let mut failed = None;
                for key in &user_pages {
                    match take(r, key, "user.get")
                        .and_then(|v| decode_value::<Vec<wire::User>>(v, "result.result"))
                    {
                        Ok(page) => u.extend(page.into_iter().map(map::user)),
                        Err(e) => failed = Some(e),
                    }
                }
                failed.map_or(Ok(u), Err)
            }
            // The second request failed: the users on their own.
            (Ok(_), _) => rebuy_core::Connector::users(self).await,
            (Err(e), _) => Err(e),
        };
        let pipelines = match (cats, default_stages, &mut second) {
            (Ok(c), Ok(default), second) => {
                let mut default = Some(default);
                let mut out = Vec::with_capacity(c.categories.len());
                let mut failed = None;
                for cat in c.categories {
                    let stages = match stage_keys.get(&cat.id) {
                        None => Ok(default.take().unwrap_or_default()),
                        Some(key) => match second {
                            Some(Ok(r)) => take(r, key, "crm.status.list")
                                .and_then(|v| decode_value(v, "result.result")),
                            _ => Err(ConnectorError::Transient {
                                message: "crm.status.list: unanswered".into(),
                            }),
                        },
                    };
                    match stages {
                        Ok(st) => out.push(map::pipeline(cat, st)),
                        Err(e) => failed = Some(e),
                    }
                }
                match failed {
                    None => {
                        out.sort_by_key(|p| (!p.is_main, p.sort, p.id));
                        Ok(out)
                    }
                    // Asked again on their own: the error, if any, is the portal's.
                    Some(_) => rebuy_core::Connector::pipelines(self).await,
                }
            }
            (Err(e), _, _) | (_, Err(e), _) => Err(e),
        };
        let account = match currency {
            Ok(c) => Ok(self.account_of(c).await),
            Err(e) => Err(e),
        };
        Prelude {
            account,
            users,
            pipelines,
            segments: probes
                .iter()
                .map(|p| (p.kind, p.segments()))
                .filter(|(_, s)| !s.is_empty())
                .collect(),
        }
    }
}
