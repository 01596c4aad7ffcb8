//! The REST methods: lists with `select`/`filter`/`order`/`start`, single gets, the funnel and
//! stage directories, users, `batch`, and the writes later issues need. Each method returns a
//! JSON value shaped like the examples of `docs/bitrix24.md` (built here with `json!`, never
//! from the connector's types).
use super::params::{as_i64, list_of, param, param_i64, parse_php, substitute};
use super::state::*;
use super::{Caller, FiredEvent, Inner, WriteRecord, lock, time_block};
use rust_decimal::Decimal;
use serde_json::{Map, Value, json};
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::str::FromStr;

/// Page size of every list method.
pub const PAGE: usize = 50;
/// Most commands in one `batch`.
pub const MAX_BATCH: usize = 50;

/// A method's success.
#[derive(Debug, Default)]
pub(crate) struct MethodOk {
    pub result: Value,
    pub total: Option<u64>,
    pub next: Option<u64>,
}

impl MethodOk {
    fn of(result: Value) -> Self {
        Self {
            result,
            total: None,
            next: None,
        }
    }
}

/// A method's failure: HTTP status, `error`, `error_description`.
#[derive(Debug, Clone)]
pub(crate) struct ApiErr {
    pub status: u16,
    pub error: String,
    pub description: String,
}

impl ApiErr {
    pub fn new(status: u16, error: &str, description: &str) -> Self {
        Self {
            status,
            error: error.into(),
            description: description.into(),
        }
    }
    /// The legacy CRM style: 400 with an empty code.
    fn crm(description: &str) -> Self {
        Self::new(400, "", description)
    }
    fn not_found() -> Self {
        Self::crm("Not found")
    }
}

/// Methods that change data (faults never apply them half-way; see the gate).
pub(crate) fn is_write(method: &str) -> bool {
    matches!(
        method,
        "crm.deal.add"
            | "crm.deal.update"
            | "crm.item.update"
            | "crm.contact.update"
            | "crm.company.update"
            | "crm.deal.userfield.add"
            | "crm.contact.userfield.add"
            | "crm.company.userfield.add"
            | "tasks.task.add"
            | "crm.activity.todo.add"
            | "event.bind"
            | "event.unbind"
            | "event.offline.get"
    )
}

/// Runs one method (not `batch`).
pub(crate) fn call(
    st: &Inner,
    method: &str,
    p: &Map<String, Value>,
    caller: &Caller,
) -> Result<MethodOk, ApiErr> {
    match method {
        "crm.contact.list" => {
            let d = st.read();
            list(st, "contact", &d.contacts, d.uf_names("contact"), p)
        }
        "crm.company.list" => {
            let d = st.read();
            list(st, "company", &d.companies, d.uf_names("company"), p)
        }
        "crm.deal.list" => {
            let d = st.read();
            list(st, "deal", &d.deals, d.uf_names("deal"), p)
        }
        "crm.contact.get" => {
            let d = st.read();
            get(&d.contacts, d.uf_names("contact"), p)
        }
        "crm.company.get" => {
            let d = st.read();
            get(&d.companies, d.uf_names("company"), p)
        }
        "crm.deal.get" => {
            let d = st.read();
            get(&d.deals, d.uf_names("deal"), p)
        }
        "crm.deal.contact.items.get" => {
            let d = st.read();
            let deal = d.deals.get(&id_param(p)?).ok_or_else(ApiErr::not_found)?;
            let items: Vec<Value> = deal
                .contact_ids
                .iter()
                .enumerate()
                .map(|(i, c)| json!({"CONTACT_ID": c, "SORT": 10 * (i + 1), "ROLE_ID": 0, "IS_PRIMARY": if i == 0 { "Y" } else { "N" }}))
                .collect();
            Ok(MethodOk::of(Value::Array(items)))
        }
        "crm.deal.productrows.get" => {
            let d = st.read();
            let deal = d.deals.get(&id_param(p)?).ok_or_else(ApiErr::not_found)?;
            let rows = deal
                .products
                .iter()
                .enumerate()
                .map(|(i, r)| product_row_json(deal.id, r, i))
                .collect();
            Ok(MethodOk::of(Value::Array(rows)))
        }
        "crm.item.productrow.list" => product_row_list(st, p),
        "crm.category.list" => {
            let etype = param_i64(p, "entityTypeId").unwrap_or(0);
            let d = st.read();
            let cats: Vec<Value> = if etype == 2 {
                d.categories
                    .values()
                    .map(|c| {
                        json!({"id": c.id, "name": c.name, "sort": c.sort, "entityTypeId": 2,
                               "isDefault": if c.is_default { "Y" } else { "N" }, "originId": "", "originatorId": ""})
                    })
                    .collect()
            } else {
                Vec::new()
            };
            let total = cats.len() as u64;
            Ok(MethodOk {
                result: json!({"categories": cats}),
                total: Some(total),
                next: None,
            })
        }
        "crm.status.list" => status_list(st, p),
        "crm.currency.base.get" => Ok(MethodOk::of(json!("RUB"))),
        "user.get" => user_get(st, p),
        "crm.deal.add" => deal_add(st, p, caller),
        "crm.deal.update" => deal_update(st, p, caller),
        "crm.item.update" => item_update(st, p, caller),
        "crm.contact.update" => contact_update(st, p, caller),
        "crm.company.update" => company_update(st, p, caller),
        "crm.deal.userfield.add" => userfield_add(st, p, "deal"),
        "crm.contact.userfield.add" => userfield_add(st, p, "contact"),
        "crm.company.userfield.add" => userfield_add(st, p, "company"),
        "crm.deal.userfield.list" => userfield_list(st, p, "deal"),
        "crm.contact.userfield.list" => userfield_list(st, p, "contact"),
        "crm.company.userfield.list" => userfield_list(st, p, "company"),
        "tasks.task.add" => task_add(st, p, caller),
        "crm.activity.todo.add" => todo_add(st, p, caller),
        "crm.activity.list" => activity_list(st, p),
        "event.bind" => event_bind(st, p, caller),
        "event.unbind" => event_unbind(st, p, caller),
        "event.get" => {
            let ev = lock(&st.events);
            let list: Vec<Value> = ev
                .bindings
                .iter()
                .map(|b| json!({"event": b.event, "handler": b.handler, "auth_type": "0", "offline": b.offline as u8}))
                .collect();
            Ok(MethodOk::of(Value::Array(list)))
        }
        "event.offline.get" => event_offline_get(st, p),
        "app.info" => app_info(st, caller),
        "batch" => Err(ApiErr::new(
            405,
            "ERROR_BATCH_METHOD_NOT_ALLOWED",
            "Method is not allowed for batch usage",
        )),
        _ => Err(ApiErr::new(
            404,
            "ERROR_METHOD_NOT_FOUND",
            "Method not found!",
        )),
    }
}

fn id_param(p: &Map<String, Value>) -> Result<u64, ApiErr> {
    param_i64(p, "id")
        .filter(|v| *v > 0)
        .map(|v| v as u64)
        .ok_or_else(|| ApiErr::crm("ID is not defined or invalid"))
}

// ---------------------------------------------------------------------------------------------
// Lists

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
    In,
    NotIn,
    Like,
    LikePattern,
}

#[derive(Debug)]
struct Cond {
    field: String,
    op: Op,
    values: Vec<String>,
}

fn parse_filter(p: &Map<String, Value>) -> Vec<Cond> {
    let Some(Value::Object(f)) = param(p, "filter") else {
        return Vec::new();
    };
    const PREFIXES: &[(&str, Op)] = &[
        ("!@", Op::NotIn),
        (">=", Op::Ge),
        ("<=", Op::Le),
        ("!=", Op::Ne),
        ("=%", Op::LikePattern),
        ("%=", Op::LikePattern),
        ("@", Op::In),
        ("%", Op::Like),
        (">", Op::Gt),
        ("<", Op::Lt),
        ("!", Op::Ne),
        ("=", Op::Eq),
    ];
    f.iter()
        .map(|(k, v)| {
            let (op, field) = PREFIXES
                .iter()
                .find_map(|(pre, op)| k.strip_prefix(pre).map(|rest| (*op, rest)))
                .unwrap_or((Op::Eq, k.as_str()));
            let values: Vec<String> = list_of(v).into_iter().map(value_text).collect();
            // An array without a prefix is IN (the docs' simulator; UNCERTAIN on servers).
            let op = if op == Op::Eq && matches!(v, Value::Array(_)) {
                Op::In
            } else {
                op
            };
            Cond {
                field: field.to_ascii_uppercase(),
                op,
                values,
            }
        })
        .collect()
}

fn ord(key: &Key, kind: Kind, val: &str) -> Option<Ordering> {
    match key {
        Key::Null | Key::Many(_) => None,
        Key::Int(i) => {
            let v = if kind == Kind::Time {
                parse_time(val)?
            } else {
                val.trim().parse::<i64>().unwrap_or(0)
            };
            Some(i.cmp(&v))
        }
        Key::Dec(d) => Some(d.cmp(&Decimal::from_str(val.trim()).ok()?)),
        Key::Str(s) => Some(s.as_str().cmp(val)),
    }
}

fn equal(key: &Key, kind: Kind, val: &str) -> bool {
    match key {
        Key::Null => val.is_empty() || (kind == Kind::Int && val.trim() == "0"),
        Key::Many(items) => items.iter().any(|i| i == val),
        k => ord(k, kind, val) == Some(Ordering::Equal),
    }
}

fn like(hay: &str, pat: &str, pattern: bool) -> bool {
    let hay = hay.to_lowercase();
    let pat = pat.to_lowercase();
    if !pattern {
        return hay.contains(&pat);
    }
    match (pat.strip_prefix('%'), pat.strip_suffix('%')) {
        (Some(_), Some(_)) if pat.len() >= 2 => hay.contains(&pat[1..pat.len() - 1]),
        (Some(rest), _) => hay.ends_with(rest),
        (_, Some(rest)) => hay.starts_with(rest),
        _ => hay == pat,
    }
}

fn matches<E: Entity>(row: &E, conds: &[Cond]) -> bool {
    conds.iter().all(|c| {
        let kind = kind_of::<E>(&c.field);
        let key = row.key(&c.field);
        let first = c.values.first().map(String::as_str).unwrap_or("");
        match c.op {
            Op::Eq => equal(&key, kind, first),
            Op::Ne => !equal(&key, kind, first),
            Op::In => c.values.iter().any(|v| equal(&key, kind, v)),
            Op::NotIn => !c.values.iter().any(|v| equal(&key, kind, v)),
            Op::Gt => ord(&key, kind, first) == Some(Ordering::Greater),
            Op::Ge => matches!(
                ord(&key, kind, first),
                Some(Ordering::Greater | Ordering::Equal)
            ),
            Op::Lt => ord(&key, kind, first) == Some(Ordering::Less),
            Op::Le => matches!(
                ord(&key, kind, first),
                Some(Ordering::Less | Ordering::Equal)
            ),
            Op::Like | Op::LikePattern => match &key {
                Key::Str(s) => like(s, first, c.op == Op::LikePattern),
                _ => false,
            },
        }
    })
}

/// The fields a `select` names, expanded: `*` = all standard fields, `UF_*` = all user fields;
/// multi-fields only by name. No select = `*` + `UF_*`.
fn expand_select<E: Entity>(p: &Map<String, Value>, uf_names: &[String]) -> Vec<String> {
    let asked: Vec<String> = param(p, "select")
        .map(|v| list_of(v).into_iter().map(value_text).collect())
        .unwrap_or_default();
    let asked = if asked.is_empty() {
        vec!["*".to_owned(), "UF_*".to_owned()]
    } else {
        asked
    };
    let mut out: Vec<String> = Vec::new();
    let push = |f: &str, out: &mut Vec<String>| {
        if !out.iter().any(|x| x == f) {
            out.push(f.to_owned());
        }
    };
    for a in &asked {
        let a = a.trim().to_ascii_uppercase();
        match a.as_str() {
            "*" => E::FIELDS.iter().for_each(|(f, _)| push(f, &mut out)),
            "UF_*" => uf_names.iter().for_each(|f| push(f, &mut out)),
            f if E::FIELDS.iter().any(|(n, _)| *n == f)
                || E::MULTI.contains(&f)
                || uf_names.iter().any(|u| u == f) =>
            {
                push(f, &mut out)
            }
            _ => {}
        }
    }
    out
}

fn render_row<E: Entity>(row: &E, fields: &[String]) -> Value {
    let mut m = Map::with_capacity(fields.len());
    for f in fields {
        if let Some(v) = row.render(f) {
            m.insert(f.clone(), v);
        }
    }
    Value::Object(m)
}

fn parse_order(p: &Map<String, Value>) -> Vec<(String, bool)> {
    match param(p, "order") {
        Some(Value::Object(o)) => o
            .iter()
            .map(|(k, v)| {
                (
                    k.to_ascii_uppercase(),
                    !value_text(v).eq_ignore_ascii_case("desc"),
                )
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The id range that the `ID` conditions of a filter (`>`, `>=`, `<`, `<=`, `=`) leave, all
/// of them intersected; `None` when it is empty. Values are read like [`ord`] reads them (not a
/// number = 0; ids start at 1).
fn id_range(conds: &[Cond]) -> Option<(std::ops::Bound<u64>, std::ops::Bound<u64>)> {
    use std::ops::Bound::*;
    // Signed bounds first: `>ID -5` keeps everything, `<ID -5` nothing.
    let mut lo: Option<(i64, bool)> = None; // (value, inclusive)
    let mut hi: Option<(i64, bool)> = None;
    let tighter_lo = |cur: Option<(i64, bool)>, v: i64, inc: bool| match cur {
        Some((c, ci)) if c > v || (c == v && !ci) => Some((c, ci)),
        _ => Some((v, inc)),
    };
    let tighter_hi = |cur: Option<(i64, bool)>, v: i64, inc: bool| match cur {
        Some((c, ci)) if c < v || (c == v && !ci) => Some((c, ci)),
        _ => Some((v, inc)),
    };
    for c in conds.iter().filter(|c| is_id_bound(c)) {
        let v = c
            .values
            .first()
            .map(|v| v.trim().parse::<i64>().unwrap_or(0))
            .unwrap_or(0);
        match c.op {
            Op::Gt => lo = tighter_lo(lo, v, false),
            Op::Ge => lo = tighter_lo(lo, v, true),
            Op::Lt => hi = tighter_hi(hi, v, false),
            Op::Le => hi = tighter_hi(hi, v, true),
            _ => {
                lo = tighter_lo(lo, v, true);
                hi = tighter_hi(hi, v, true);
            }
        }
    }
    let lo_n = lo.map_or(1, |(v, inc)| if inc { v } else { v.saturating_add(1) });
    let hi_n = hi.map_or(
        i64::MAX,
        |(v, inc)| if inc { v } else { v.saturating_sub(1) },
    );
    let lo_n = lo_n.max(1);
    if hi_n < lo_n {
        return None;
    }
    let upper = if hi.is_none() {
        Unbounded
    } else {
        Included(hi_n as u64)
    };
    Some((Included(lo_n as u64), upper))
}

/// An `ID` condition that bounds a range (`>`, `>=`, `<`, `<=`, `=` with one value).
fn is_id_bound(c: &Cond) -> bool {
    c.field == "ID"
        && c.values.len() <= 1
        && matches!(c.op, Op::Gt | Op::Ge | Op::Lt | Op::Le | Op::Eq)
}

/// Matched ids of recent filtered or re-ordered listings, in page order, valid while the data
/// has not changed (`generation`): paging through a filter with `start=N` scans the table once,
/// not once per page.
#[derive(Debug, Default)]
pub(crate) struct ListCache {
    entries: std::collections::VecDeque<(String, u64, std::sync::Arc<Vec<u64>>)>,
}

/// Listings kept in the [`ListCache`].
const LIST_CACHE_SIZE: usize = 16;

impl ListCache {
    fn get(&self, key: &str, generation: u64) -> Option<std::sync::Arc<Vec<u64>>> {
        self.entries
            .iter()
            .find(|(k, g, _)| *g == generation && k == key)
            .map(|e| e.2.clone())
    }
    fn put(&mut self, key: String, generation: u64, ids: std::sync::Arc<Vec<u64>>) {
        self.entries.retain(|(_, g, _)| *g == generation);
        if self.entries.len() >= LIST_CACHE_SIZE {
            self.entries.pop_front();
        }
        self.entries.push_back((key, generation, ids));
    }
}

/// A list call over `table`: 50 rows from `start` (`-1`: from the top, without counting).
///
/// Cost: ordered by `ID` and filtered by `ID` bounds only (how clients page through a table),
/// the page and the exact `total` come from binary searches in the sorted ids; other filters
/// or orders are computed once per data version and kept in `st`'s [`ListCache`] for the pages
/// that follow.
fn list<E: Entity>(
    st: &Inner,
    name: &str,
    table: &Indexed<E>,
    uf_names: Vec<String>,
    p: &Map<String, Value>,
) -> Result<MethodOk, ApiErr> {
    let conds = parse_filter(p);
    // A date the portal cannot read is an error, not a filter that matches nothing.
    for c in &conds {
        if kind_of::<E>(&c.field) == Kind::Time {
            if let Some(v) = c.values.iter().find(|v| parse_time(v).is_none()) {
                return Err(ApiErr::crm(&format!(
                    "Invalid date value {v:?} of filter field {}",
                    c.field
                )));
            }
        }
    }
    let fields = expand_select::<E>(p, &uf_names);
    let order = parse_order(p);
    let start = param_i64(p, "start").unwrap_or(0);
    let count = start >= 0;
    let offset = start.max(0) as usize;
    let by_id = order.is_empty() || (order.len() == 1 && order[0].0 == "ID");
    let asc = order.first().is_none_or(|o| o.1);
    let rest: Vec<&Cond> = conds.iter().filter(|c| !is_id_bound(c)).collect();
    let render = |ids: &[u64]| -> Vec<Value> {
        ids.iter()
            .filter_map(|id| table.get(id))
            .map(|r| render_row(r, &fields))
            .collect()
    };
    let (page, total) = if by_id && rest.is_empty() {
        // Rows by rank: O(log n + page).
        let Some(range) = id_range(&conds) else {
            return Ok(MethodOk {
                result: json!([]),
                total: Some(0),
                next: None,
            });
        };
        let (a, b) = table.span(range);
        let ids = &table.ids()[a..b];
        let from = offset.min(ids.len());
        let to = (offset + PAGE).min(ids.len());
        let page = if asc {
            render(&ids[from..to])
        } else {
            let mut slice = ids[ids.len() - to..ids.len() - from].to_vec();
            slice.reverse();
            render(&slice)
        };
        (page, ids.len() as u64)
    } else if by_id && !count {
        // From the top without a count: scan until the page is full.
        let Some(range) = id_range(&conds) else {
            return Ok(MethodOk {
                result: json!([]),
                total: Some(0),
                next: None,
            });
        };
        let iter: Box<dyn Iterator<Item = (&u64, &E)>> = if asc {
            Box::new(table.range(range))
        } else {
            Box::new(table.range(range).rev())
        };
        let page = iter
            .filter(|(_, row)| matches(*row, &conds))
            .take(PAGE)
            .map(|(_, row)| render_row(row, &fields))
            .collect();
        (page, 0)
    } else {
        // Other filters or orders: the matching ids in order, once per data version.
        let key = format!(
            "{name}|{}|{}",
            param(p, "filter").map(Value::to_string).unwrap_or_default(),
            param(p, "order").map(Value::to_string).unwrap_or_default()
        );
        let generation = st.generation();
        let cached = lock(&st.list_cache).get(&key, generation);
        let ids = match cached {
            Some(ids) => ids,
            None => {
                let ids = std::sync::Arc::new(matching_ids(table, &conds, &order, by_id, asc));
                lock(&st.list_cache).put(key, generation, ids.clone());
                ids
            }
        };
        let from = offset.min(ids.len());
        let to = (offset + PAGE).min(ids.len());
        (render(&ids[from..to]), ids.len() as u64)
    };
    if !count {
        // The docs' sample for start=-1: "total": 0 and no "next".
        return Ok(MethodOk {
            result: Value::Array(page),
            total: Some(0),
            next: None,
        });
    }
    let next = (total > (offset + PAGE) as u64).then_some((offset + PAGE) as u64);
    Ok(MethodOk {
        result: Value::Array(page),
        total: Some(total),
        next,
    })
}

/// The ids of the rows matching `conds`, in the listing's order.
fn matching_ids<E: Entity>(
    table: &Indexed<E>,
    conds: &[Cond],
    order: &[(String, bool)],
    by_id: bool,
    asc: bool,
) -> Vec<u64> {
    let Some(range) = id_range(conds) else {
        return Vec::new();
    };
    let mut rows: Vec<&E> = table
        .range(range)
        .map(|(_, r)| r)
        .filter(|r| matches(*r, conds))
        .collect();
    if by_id {
        if !asc {
            rows.reverse();
        }
    } else {
        rows.sort_by(|a, b| {
            for (f, asc) in order {
                let o = a.key(f).partial_cmp(&b.key(f)).unwrap_or(Ordering::Equal);
                let o = if *asc { o } else { o.reverse() };
                if o != Ordering::Equal {
                    return o;
                }
            }
            a.id().cmp(&b.id())
        });
    }
    rows.iter().map(|r| r.id()).collect()
}

fn get<E: Entity>(
    map: &Indexed<E>,
    uf_names: Vec<String>,
    p: &Map<String, Value>,
) -> Result<MethodOk, ApiErr> {
    let row = map.get(&id_param(p)?).ok_or_else(ApiErr::not_found)?;
    let mut fields: Vec<String> = E::FIELDS.iter().map(|(f, _)| (*f).to_owned()).collect();
    fields.extend(E::MULTI.iter().map(|f| (*f).to_owned()));
    fields.extend(uf_names);
    Ok(MethodOk::of(render_row(row, &fields)))
}

fn status_list(st: &Inner, p: &Map<String, Value>) -> Result<MethodOk, ApiErr> {
    let filter = match param(p, "filter") {
        Some(Value::Object(f)) => f.clone(),
        _ => Map::new(),
    };
    let entity = filter
        .get("ENTITY_ID")
        .or_else(|| filter.get("entity_id"))
        .map(value_text);
    let d = st.read();
    let rows: Vec<Value> = d
        .stages
        .values()
        .flatten()
        .filter(|s| entity.as_deref().is_none_or(|e| e == s.entity_id))
        .map(|s| {
            let extra = match s.semantics.as_deref() {
                Some("S") => "success",
                Some("F") if s.status_id.ends_with("APOLOGY") => "apology",
                Some("F") => "failure",
                _ => "process",
            };
            json!({
                "ID": s.id.to_string(), "ENTITY_ID": s.entity_id, "STATUS_ID": s.status_id, "NAME": s.name,
                "NAME_INIT": s.name, "SORT": s.sort.to_string(), "SYSTEM": if s.semantics.is_some() { "Y" } else { "N" },
                "CATEGORY_ID": if s.category_id == 0 { Value::Null } else { Value::String(s.category_id.to_string()) },
                "COLOR": s.color, "SEMANTICS": s.semantics,
                "EXTRA": {"SEMANTICS": extra, "COLOR": s.color},
            })
        })
        .collect();
    Ok(paged(rows, p))
}

fn paged(rows: Vec<Value>, p: &Map<String, Value>) -> MethodOk {
    let start = param_i64(p, "start").unwrap_or(0).max(0) as usize;
    let total = rows.len();
    let next = (total > start + PAGE).then_some((start + PAGE) as u64);
    MethodOk {
        result: Value::Array(rows.into_iter().skip(start).take(PAGE).collect()),
        total: Some(total as u64),
        next,
    }
}

fn user_get(st: &Inner, p: &Map<String, Value>) -> Result<MethodOk, ApiErr> {
    let filter = match param(p, "filter") {
        Some(Value::Object(f)) => f.clone(),
        _ => Map::new(),
    };
    let active = filter
        .get("ACTIVE")
        .map(|v| matches!(value_text(v).as_str(), "Y" | "true" | "1"));
    let id = filter.get("ID").and_then(as_i64);
    let d = st.read();
    let rows: Vec<Value> = d
        .users
        .values()
        .filter(|u| active.is_none_or(|a| a == u.active) && id.is_none_or(|i| i as u64 == u.id))
        .map(|u| {
            json!({"ID": u.id.to_string(), "XML_ID": format!("user{}", u.id), "ACTIVE": u.active, "NAME": u.name,
                   "LAST_NAME": u.last_name, "SECOND_NAME": "", "EMAIL": u.email, "IS_ONLINE": "N",
                   "USER_TYPE": "employee", "UF_DEPARTMENT": [1]})
        })
        .collect();
    Ok(paged(rows, p))
}

fn product_row_list(st: &Inner, p: &Map<String, Value>) -> Result<MethodOk, ApiErr> {
    let filter = match param(p, "filter") {
        Some(Value::Object(f)) => f.clone(),
        _ => Map::new(),
    };
    let owner_type = filter
        .get("=ownerType")
        .or_else(|| filter.get("ownerType"))
        .map(value_text);
    if owner_type.as_deref().is_some_and(|t| t != "D") {
        return Ok(MethodOk {
            result: json!({"productRows": []}),
            total: Some(0),
            next: None,
        });
    }
    let owners: Option<Vec<u64>> = filter
        .get("@ownerId")
        .or_else(|| filter.get("=ownerId"))
        .or_else(|| filter.get("ownerId"))
        .map(|v| {
            list_of(v)
                .into_iter()
                .filter_map(as_i64)
                .map(|i| i as u64)
                .collect()
        });
    let after = filter.get(">id").and_then(as_i64).unwrap_or(0).max(0) as u64;
    // `<id`: an exclusive upper bound (how a client lists one id range of the rows).
    let below = filter.get("<id").and_then(as_i64).map(|v| v.max(0) as u64);
    let start = param_i64(p, "start").unwrap_or(0);
    let d = st.read();
    let mut rows = Vec::new();
    let mut total = 0u64;
    let offset = start.max(0) as u64;
    let push = |deal: &B24Deal, rows: &mut Vec<Value>, total: &mut u64| {
        for (i, r) in deal.products.iter().enumerate() {
            if r.id <= after || below.is_some_and(|b| r.id >= b) {
                continue;
            }
            if *total >= offset && rows.len() < PAGE {
                rows.push(item_product_row_json(deal.id, r, i));
            }
            *total += 1;
        }
    };
    match owners {
        Some(mut ids) => {
            ids.sort_unstable();
            ids.dedup();
            // Rows ordered by id; deals' row ids grow with deal ids in this emulator.
            for id in ids {
                if let Some(deal) = d.deals.get(&id) {
                    push(deal, &mut rows, &mut total);
                }
            }
        }
        None => {
            // By rank in the row index: the page and the exact total without a walk.
            let upper = below.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
            let (a, b) = d
                .product_rows
                .span((std::ops::Bound::Excluded(after), upper));
            let ids = &d.product_rows.ids()[a..b];
            total = ids.len() as u64;
            let from = (offset as usize).min(ids.len());
            let to = (from + PAGE).min(ids.len());
            for row_id in &ids[from..to] {
                let Some(deal) = d.product_rows.get(row_id).and_then(|id| d.deals.get(id)) else {
                    continue;
                };
                if let Some((i, r)) = deal
                    .products
                    .iter()
                    .enumerate()
                    .find(|(_, r)| r.id == *row_id)
                {
                    rows.push(item_product_row_json(deal.id, r, i));
                }
            }
        }
    }
    let total_out = if start < 0 { 0 } else { total };
    let next = (start >= 0 && total > offset + PAGE as u64).then_some(offset + PAGE as u64);
    Ok(MethodOk {
        result: json!({"productRows": rows}),
        total: Some(total_out),
        next,
    })
}

// ---------------------------------------------------------------------------------------------
// batch

/// `batch`: up to 50 `method?query` commands, run in key order, with `$result[..]` references.
pub(crate) fn batch(
    st: &Inner,
    p: &Map<String, Value>,
    caller: &Caller,
) -> Result<MethodOk, ApiErr> {
    let halt = param_i64(p, "halt").unwrap_or(0) == 1;
    let cmds: Vec<(String, String)> = match param(p, "cmd") {
        Some(Value::Object(m)) => m.iter().map(|(k, v)| (k.clone(), value_text(v))).collect(),
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, v)| (i.to_string(), value_text(v)))
            .collect(),
        _ => Vec::new(),
    };
    if cmds.len() > MAX_BATCH {
        return Err(ApiErr::new(
            400,
            "ERROR_BATCH_LENGTH_EXCEEDED",
            "Max batch length exceeded",
        ));
    }
    let mut results = Map::new();
    let mut errors = Map::new();
    let mut totals = Map::new();
    let mut nexts = Map::new();
    let mut times = Map::new();
    for (key, cmd) in cmds {
        let started = jiff::Timestamp::now();
        let (method, query) = cmd.split_once('?').unwrap_or((cmd.as_str(), ""));
        let method = method.trim().trim_end_matches(".json").to_ascii_lowercase();
        let mut cp = parse_php(query);
        let mut v = Value::Object(std::mem::take(&mut cp));
        substitute(&mut v, &results);
        let Value::Object(cp) = v else { continue };
        st.count_batch_command(&method);
        let outcome = if method == "batch" {
            Err(ApiErr::new(
                405,
                "ERROR_BATCH_METHOD_NOT_ALLOWED",
                "Method is not allowed for batch usage",
            ))
        } else {
            st.run_metered(&method, &cp, caller)
        };
        match outcome {
            Ok(ok) => {
                results.insert(key.clone(), ok.result);
                if let Some(t) = ok.total {
                    totals.insert(key.clone(), json!(t));
                }
                if let Some(n) = ok.next {
                    nexts.insert(key.clone(), json!(n));
                }
                times.insert(key, time_block(st, &method, started));
            }
            Err(e) => {
                errors.insert(
                    key,
                    json!({"error": e.error, "error_description": e.description}),
                );
                if halt {
                    break;
                }
            }
        }
    }
    Ok(MethodOk::of(json!({
        "result": php_map(results),
        "result_error": php_map(errors),
        "result_total": php_map(totals),
        "result_next": php_map(nexts),
        "result_time": php_map(times),
    })))
}

/// PHP serialises an empty associative array as `[]`.
fn php_map(m: Map<String, Value>) -> Value {
    if m.is_empty() {
        json!([])
    } else {
        Value::Object(m)
    }
}

// ---------------------------------------------------------------------------------------------
// Writes

fn fields_of(p: &Map<String, Value>) -> Result<Map<String, Value>, ApiErr> {
    match param(p, "fields") {
        Some(Value::Object(f)) => Ok(f
            .iter()
            .map(|(k, v)| (k.to_ascii_uppercase(), v.clone()))
            .collect()),
        Some(Value::Array(a)) if a.is_empty() => Ok(Map::new()),
        _ => Err(ApiErr::crm("Parameter 'fields' must be array.")),
    }
}

fn yes(v: &Value) -> bool {
    matches!(value_text(v).as_str(), "Y" | "y" | "1" | "true")
}

fn record(st: &Inner, method: &str, p: &Map<String, Value>, result: &Value) {
    let at = st.now();
    lock(&st.writes).push(WriteRecord {
        method: method.into(),
        params: Value::Object(p.clone()),
        result: result.clone(),
        at,
    });
}

fn apply_stage(d: &mut B24Deal, stage: &B24Stage, now: i64) {
    d.stage_id = stage.status_id.clone();
    d.stage_semantic_id = stage.semantics.clone().unwrap_or_else(|| "P".into());
    let closed = stage.semantics.is_some();
    if closed && !d.closed {
        d.closedate = midnight(now);
    }
    d.closed = closed;
    d.moved_time = now;
}

fn apply_deal_fields(data: &B24Data, d: &mut B24Deal, f: &Map<String, Value>, now: i64) {
    for (k, v) in f {
        match k.as_str() {
            "TITLE" => d.title = value_text(v),
            "OPPORTUNITY" => {
                if let Ok(x) = Decimal::from_str(value_text(v).trim()) {
                    d.opportunity = x;
                }
            }
            "CURRENCY_ID" => d.currency_id = value_text(v),
            "ASSIGNED_BY_ID" => {
                d.assigned_by_id = as_i64(v).unwrap_or(d.assigned_by_id as i64) as u64
            }
            "IS_RETURN_CUSTOMER" => d.is_return_customer = yes(v),
            "IS_REPEATED_APPROACH" => d.is_repeated_approach = yes(v),
            "COMMENTS" => d.comments = value_text(v),
            "COMPANY_ID" => d.company_id = as_i64(v).filter(|x| *x > 0).map(|x| x as u64),
            "CONTACT_ID" => {
                d.contact_id = as_i64(v).filter(|x| *x > 0).map(|x| x as u64);
                d.contact_ids.retain(|c| Some(*c) != d.contact_id);
                if let Some(c) = d.contact_id {
                    d.contact_ids.insert(0, c);
                }
            }
            "CONTACT_IDS" => {
                d.contact_ids = list_of(v)
                    .into_iter()
                    .filter_map(as_i64)
                    .filter(|x| *x > 0)
                    .map(|x| x as u64)
                    .collect();
                d.contact_id = d.contact_ids.first().copied();
            }
            "STAGE_ID" => {
                // A stage of another funnel is silently ignored (docs).
                if let Some(s) = data
                    .stage(&value_text(v))
                    .filter(|s| s.category_id == d.category_id)
                {
                    let s = s.clone();
                    apply_stage(d, &s, now);
                }
            }
            // A user field that is not defined is ignored, like every unknown field.
            f if f.starts_with("UF_CRM_")
                && data
                    .user_fields
                    .iter()
                    .any(|u| u.entity == "deal" && u.field_name == f) =>
            {
                d.uf.insert(f.to_owned(), v.clone());
            }
            _ => {}
        }
    }
}

fn deal_add(st: &Inner, p: &Map<String, Value>, caller: &Caller) -> Result<MethodOk, ApiErr> {
    let f = fields_of(p)?;
    let now = st.now();
    let id = {
        let mut data = st.write();
        let cat = f.get("CATEGORY_ID").and_then(as_i64).unwrap_or(0).max(0) as u64;
        let first = data
            .stages
            .get(&cat)
            .and_then(|s| s.first())
            .cloned()
            .ok_or_else(|| ApiErr::crm("Category not found"))?;
        let id = data.deals.keys().next_back().map_or(1, |k| k + 1);
        let mut deal = B24Deal {
            id,
            title: format!("Сделка #{id}"),
            category_id: cat,
            stage_id: first.status_id.clone(),
            stage_semantic_id: "P".into(),
            currency_id: "RUB".into(),
            opportunity: Decimal::new(0, 2),
            contact_id: None,
            contact_ids: Vec::new(),
            company_id: None,
            assigned_by_id: caller.user_id,
            created_by_id: caller.user_id,
            modify_by_id: caller.user_id,
            date_create: now,
            date_modify: now,
            begindate: midnight(now),
            closedate: midnight(now + 7 * 86_400),
            closed: false,
            is_return_customer: false,
            is_repeated_approach: false,
            source_id: None,
            comments: String::new(),
            moved_time: now,
            uf: BTreeMap::new(),
            products: Vec::new(),
        };
        let snapshot = data.clone_light();
        apply_deal_fields(&snapshot, &mut deal, &f, now);
        data.deals.insert(id, deal);
        id
    };
    let result = json!(id);
    record(st, "crm.deal.add", p, &result);
    st.fire("ONCRMDEALADD", id, json!({"ID": id.to_string()}));
    Ok(MethodOk::of(result))
}

fn deal_update(st: &Inner, p: &Map<String, Value>, caller: &Caller) -> Result<MethodOk, ApiErr> {
    let id = id_param(p)?;
    let f = fields_of(p)?;
    let now = st.now();
    {
        let mut data = st.write();
        let snapshot = data.clone_light();
        let deal = data.deals.get_mut(&id).ok_or_else(ApiErr::not_found)?;
        if let Some(c) = f.get("CATEGORY_ID").and_then(as_i64)
            && c as u64 != deal.category_id
        {
            return Err(ApiErr::crm(
                "CATEGORY_ID is immutable in crm.deal.update: use crm.item.update",
            ));
        }
        apply_deal_fields(&snapshot, deal, &f, now);
        deal.date_modify = now;
        deal.modify_by_id = caller.user_id;
    }
    record(st, "crm.deal.update", p, &json!(true));
    st.fire("ONCRMDEALUPDATE", id, json!({"ID": id.to_string()}));
    Ok(MethodOk::of(json!(true)))
}

fn item_update(st: &Inner, p: &Map<String, Value>, caller: &Caller) -> Result<MethodOk, ApiErr> {
    if param_i64(p, "entityTypeId") != Some(2) {
        return Err(ApiErr::new(400, "NOT_FOUND", "Smart process not found"));
    }
    let id = param_i64(p, "id")
        .filter(|v| *v > 0)
        .ok_or_else(|| ApiErr::new(400, "NOT_FOUND", "Element not found"))? as u64;
    let f = match param(p, "fields") {
        Some(Value::Object(f)) => f.clone(),
        _ => return Err(ApiErr::new(400, "ERROR_CORE", "fields is required")),
    };
    let now = st.now();
    let (moved, item) = {
        let mut data = st.write();
        let snapshot = data.clone_light();
        let deal = data
            .deals
            .get_mut(&id)
            .ok_or_else(|| ApiErr::new(400, "NOT_FOUND", "Element not found"))?;
        let old_cat = deal.category_id;
        let cat = f
            .get("categoryId")
            .and_then(as_i64)
            .map_or(old_cat, |c| c.max(0) as u64);
        let stages = snapshot
            .stages
            .get(&cat)
            .ok_or_else(|| ApiErr::new(400, "CATEGORY_NOT_FOUND", "Category not found"))?;
        let stage = match f.get("stageId").map(value_text) {
            Some(s) => stages
                .iter()
                .find(|x| x.status_id == s)
                .ok_or_else(|| {
                    ApiErr::new(
                        400,
                        "CRM_FIELD_ERROR_VALUE_NOT_VALID",
                        "Stage is not in the category",
                    )
                })?
                .clone(),
            None if cat != old_cat => stages
                .first()
                .cloned()
                .ok_or_else(|| ApiErr::new(400, "CATEGORY_NOT_FOUND", "Empty category"))?,
            None => snapshot
                .stage(&deal.stage_id)
                .cloned()
                .unwrap_or_else(|| stages[0].clone()),
        };
        deal.category_id = cat;
        apply_stage(deal, &stage, now);
        if let Some(t) = f.get("title") {
            deal.title = value_text(t);
        }
        if let Some(a) = f.get("assignedById").and_then(as_i64) {
            deal.assigned_by_id = a as u64;
        }
        deal.date_modify = now;
        deal.modify_by_id = caller.user_id;
        let item = json!({
            "id": deal.id, "title": deal.title, "categoryId": deal.category_id, "stageId": deal.stage_id,
            "stageSemanticId": deal.stage_semantic_id, "opportunity": deal.opportunity.to_string().parse::<f64>().ok(),
            "currencyId": deal.currency_id, "assignedById": deal.assigned_by_id, "contactId": deal.contact_id,
            "companyId": deal.company_id.unwrap_or(0), "closed": if deal.closed { "Y" } else { "N" },
            "updatedTime": iso(now), "movedTime": iso(now),
        });
        (cat != old_cat, item)
    };
    let result = json!({"item": item});
    record(st, "crm.item.update", p, &result);
    if moved {
        st.fire(
            "ONCRMDEALMOVETOCATEGORY",
            id,
            json!({"ID": id.to_string(), "CATEGORY_ID": item["categoryId"].to_string(), "STAGE_ID": item["stageId"]}),
        );
    } else {
        st.fire("ONCRMDEALUPDATE", id, json!({"ID": id.to_string()}));
    }
    Ok(MethodOk::of(result))
}

fn apply_multi(data_next: &mut u64, items: &mut Vec<B24Multi>, v: &Value) {
    for it in list_of(v) {
        let Value::Object(m) = it else { continue };
        let id = m.get("ID").and_then(as_i64).map(|x| x as u64);
        let value = m.get("VALUE").map(value_text);
        let delete =
            m.get("DELETE").is_some_and(yes) || (id.is_some() && value.as_deref() == Some(""));
        let vt = m
            .get("VALUE_TYPE")
            .map(value_text)
            .unwrap_or_else(|| "WORK".into());
        match id {
            Some(id) if delete => items.retain(|x| x.id != id),
            Some(id) => {
                if let Some(x) = items.iter_mut().find(|x| x.id == id) {
                    if let Some(v) = value {
                        x.value = v;
                    }
                    if m.contains_key("VALUE_TYPE") {
                        x.value_type = vt;
                    }
                }
            }
            None => {
                if let Some(v) = value.filter(|v| !v.is_empty()) {
                    items.push(B24Multi {
                        id: *data_next,
                        value_type: vt,
                        value: v,
                    });
                    *data_next += 1;
                }
            }
        }
    }
}

fn contact_update(st: &Inner, p: &Map<String, Value>, caller: &Caller) -> Result<MethodOk, ApiErr> {
    let id = id_param(p)?;
    let f = fields_of(p)?;
    let now = st.now();
    {
        let mut data = st.write();
        let known: std::collections::HashSet<String> =
            data.uf_names("contact").into_iter().collect();
        let mut next = data.next_id;
        let c = data.contacts.get_mut(&id).ok_or_else(ApiErr::not_found)?;
        for (k, v) in &f {
            match k.as_str() {
                "NAME" => c.name = value_text(v),
                "LAST_NAME" => c.last_name = value_text(v),
                "SECOND_NAME" => c.second_name = value_text(v),
                "ASSIGNED_BY_ID" => {
                    c.assigned_by_id = as_i64(v).unwrap_or(c.assigned_by_id as i64) as u64
                }
                "COMPANY_ID" => c.company_id = as_i64(v).filter(|x| *x > 0).map(|x| x as u64),
                "PHONE" => apply_multi(&mut next, &mut c.phones, v),
                "EMAIL" => apply_multi(&mut next, &mut c.emails, v),
                // Like every unknown field, a user field that is not defined is ignored.
                f if f.starts_with("UF_CRM_") && known.contains(f) => {
                    c.uf.insert(f.to_owned(), v.clone());
                }
                _ => {}
            }
        }
        c.date_modify = now;
        c.modify_by_id = caller.user_id;
        data.next_id = next;
    }
    record(st, "crm.contact.update", p, &json!(true));
    st.fire("ONCRMCONTACTUPDATE", id, json!({"ID": id.to_string()}));
    Ok(MethodOk::of(json!(true)))
}

fn userfield_add(st: &Inner, p: &Map<String, Value>, entity: &str) -> Result<MethodOk, ApiErr> {
    let f = fields_of(p)?;
    let raw = f
        .get("FIELD_NAME")
        .map(value_text)
        .unwrap_or_default()
        .to_ascii_uppercase();
    let ty = f.get("USER_TYPE_ID").map(value_text).unwrap_or_default();
    if raw.is_empty() || ty.is_empty() {
        return Err(ApiErr::new(
            400,
            "ERROR_CORE",
            "FIELD_NAME and USER_TYPE_ID are required",
        ));
    }
    const TYPES: &[&str] = &[
        "string",
        "integer",
        "double",
        "boolean",
        "datetime",
        "date",
        "money",
        "url",
        "address",
        "enumeration",
        "file",
        "employee",
        "crm_status",
        "iblock_section",
        "iblock_element",
        "crm",
    ];
    if !TYPES.contains(&ty.as_str()) {
        return Err(ApiErr::new(
            400,
            "ERROR_CORE",
            &format!("Unknown USER_TYPE_ID {ty:?}"),
        ));
    }
    if ty == "boolean" && f.get("MULTIPLE").is_some_and(yes) {
        return Err(ApiErr::new(
            400,
            "ERROR_CORE",
            "A boolean field cannot be multiple",
        ));
    }
    // LABEL sets every label; EDIT_FORM_LABEL may be a string or one per language.
    let label = ["EDIT_FORM_LABEL", "LABEL"]
        .iter()
        .find_map(|k| match f.get(*k) {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(Value::Object(m)) => m.get("ru").or_else(|| m.values().next()).map(value_text),
            _ => None,
        })
        .unwrap_or_default();
    let name = if raw.starts_with("UF_CRM_") {
        raw
    } else {
        format!("UF_CRM_{}", raw.strip_prefix("UF_").unwrap_or(&raw))
    };
    if name.len() > 50
        || !name
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
    {
        return Err(ApiErr::new(400, "ERROR_CORE", "Invalid field name"));
    }
    let id = {
        let mut data = st.write();
        if data
            .user_fields
            .iter()
            .any(|u| u.entity == entity && u.field_name == name)
        {
            return Err(ApiErr::new(
                400,
                "ERROR_CORE",
                "A field with this code already exists",
            ));
        }
        let id = data.user_fields.iter().map(|u| u.id).max().unwrap_or(0) + 1;
        let multiple = f.get("MULTIPLE").is_some_and(yes);
        data.user_fields.push(B24UserField {
            id,
            entity: entity.into(),
            field_name: name,
            user_type_id: ty,
            label,
            multiple,
        });
        id
    };
    let result = json!(id);
    record(st, &format!("crm.{entity}.userfield.add"), p, &result);
    Ok(MethodOk::of(result))
}

/// `crm.{entity}.userfield.list {order, filter}`: every user field of the entity. Labels
/// (`EDIT_FORM_LABEL`, `LIST_COLUMN_LABEL`, `LIST_FILTER_LABEL`) come only when
/// `filter[LANG]` names a language; `filter[FIELD_NAME]` and `filter[USER_TYPE_ID]` narrow.
fn userfield_list(st: &Inner, p: &Map<String, Value>, entity: &str) -> Result<MethodOk, ApiErr> {
    let filter = match param(p, "filter") {
        Some(Value::Object(f)) => f.clone(),
        _ => Map::new(),
    };
    let lang = filter.get("LANG").map(value_text).filter(|l| !l.is_empty());
    let by_name = filter.get("FIELD_NAME").map(value_text);
    let by_type = filter.get("USER_TYPE_ID").map(value_text);
    let d = st.read();
    let entity_id = format!("CRM_{}", entity.to_ascii_uppercase());
    let list: Vec<Value> = d
        .user_fields
        .iter()
        .filter(|u| u.entity == entity)
        .filter(|u| by_name.as_ref().is_none_or(|n| *n == u.field_name))
        .filter(|u| by_type.as_ref().is_none_or(|t| *t == u.user_type_id))
        .map(|u| {
            let mut v = json!({
                "ID": u.id.to_string(), "ENTITY_ID": entity_id, "FIELD_NAME": u.field_name,
                "USER_TYPE_ID": u.user_type_id, "XML_ID": null, "SORT": "100",
                "MULTIPLE": if u.multiple { "Y" } else { "N" }, "MANDATORY": "N",
                "SHOW_FILTER": "N", "SHOW_IN_LIST": "Y", "EDIT_IN_LIST": "Y",
                "IS_SEARCHABLE": "N", "SETTINGS": {},
            });
            if lang.is_some() {
                v["EDIT_FORM_LABEL"] = json!(u.label);
                v["LIST_COLUMN_LABEL"] = json!(u.label);
                v["LIST_FILTER_LABEL"] = json!(u.label);
                v["ERROR_MESSAGE"] = Value::Null;
                v["HELP_MESSAGE"] = Value::Null;
            }
            v
        })
        .collect();
    let total = list.len() as u64;
    Ok(MethodOk {
        result: Value::Array(list),
        total: Some(total),
        next: None,
    })
}

/// `crm.company.update {id, fields}`: title, responsible, `PHONE`/`EMAIL`/`WEB` multi-fields
/// (same rules as contacts) and `UF_CRM_*` values; unknown fields are ignored.
fn company_update(st: &Inner, p: &Map<String, Value>, caller: &Caller) -> Result<MethodOk, ApiErr> {
    let id = id_param(p)?;
    let f = fields_of(p)?;
    let now = st.now();
    {
        let mut data = st.write();
        let known: std::collections::HashSet<String> =
            data.uf_names("company").into_iter().collect();
        let mut next = data.next_id;
        let c = data.companies.get_mut(&id).ok_or_else(ApiErr::not_found)?;
        for (k, v) in &f {
            match k.as_str() {
                "TITLE" => c.title = value_text(v),
                "ASSIGNED_BY_ID" => {
                    c.assigned_by_id = as_i64(v).unwrap_or(c.assigned_by_id as i64) as u64
                }
                "PHONE" => apply_multi(&mut next, &mut c.phones, v),
                "EMAIL" => apply_multi(&mut next, &mut c.emails, v),
                "WEB" => apply_multi(&mut next, &mut c.web, v),
                f if f.starts_with("UF_CRM_") && known.contains(f) => {
                    c.uf.insert(f.to_owned(), v.clone());
                }
                _ => {}
            }
        }
        c.date_modify = now;
        data.next_id = next;
    }
    let _ = caller;
    record(st, "crm.company.update", p, &json!(true));
    st.fire("ONCRMCOMPANYUPDATE", id, json!({"ID": id.to_string()}));
    Ok(MethodOk::of(json!(true)))
}

fn task_add(st: &Inner, p: &Map<String, Value>, caller: &Caller) -> Result<MethodOk, ApiErr> {
    let f = fields_of(p)?;
    let title = f.get("TITLE").map(value_text).unwrap_or_default();
    let responsible = f.get("RESPONSIBLE_ID").and_then(as_i64);
    let (Some(responsible), false) = (responsible, title.is_empty()) else {
        return Err(ApiErr::new(
            400,
            "ERROR_CORE",
            "TITLE and RESPONSIBLE_ID are required",
        ));
    };
    let id = st.write().take_id();
    let result = json!({"task": {
        "id": id.to_string(), "title": title, "description": f.get("DESCRIPTION").map(value_text).unwrap_or_default(),
        "responsibleId": responsible.to_string(), "createdBy": caller.user_id.to_string(),
        "deadline": f.get("DEADLINE").map(value_text), "status": "2",
        "ufCrmTask": f.get("UF_CRM_TASK").cloned().unwrap_or(json!([])),
    }});
    record(st, "tasks.task.add", p, &result);
    Ok(MethodOk::of(result))
}

fn todo_add(st: &Inner, p: &Map<String, Value>, caller: &Caller) -> Result<MethodOk, ApiErr> {
    let owner_type = param_i64(p, "ownerTypeId");
    let owner = param_i64(p, "ownerId");
    let deadline = param(p, "deadline")
        .map(value_text)
        .filter(|d| !d.is_empty());
    let (Some(owner_type), Some(owner), Some(deadline)) = (owner_type, owner, deadline) else {
        return Err(ApiErr::new(
            400,
            "100",
            "Required fields are missing: ownerTypeId, ownerId, deadline",
        ));
    };
    if parse_time(&deadline).is_none() {
        return Err(ApiErr::new(400, "100", "deadline is not a valid datetime"));
    }
    let id = {
        let mut data = st.write();
        let exists = match owner_type {
            2 => data.deals.contains_key(&(owner as u64)),
            3 => data.contacts.contains_key(&(owner as u64)),
            4 => data.companies.contains_key(&(owner as u64)),
            _ => false,
        };
        if !exists {
            return Err(ApiErr::new(400, "NOT_FOUND", "Owner not found"));
        }
        let id = data.take_id();
        let text = |k: &str| param(p, k).map(value_text).unwrap_or_default();
        let responsible = param_i64(p, "responsibleId")
            .filter(|r| *r > 0)
            .map_or(caller.user_id, |r| r as u64);
        data.activities.insert(
            id,
            B24Activity {
                id,
                owner_type_id: owner_type as u64,
                owner_id: owner as u64,
                subject: text("title"),
                description: text("description"),
                deadline: parse_time(&deadline).unwrap_or_default(),
                responsible_id: responsible,
                created: st.now(),
                completed: false,
                last_updated: st.now(),
            },
        );
        id
    };
    let result = json!({"id": id});
    record(st, "crm.activity.todo.add", p, &result);
    Ok(MethodOk::of(result))
}

/// `crm.activity.list {filter: {ID, OWNER_TYPE_ID, OWNER_ID, RESPONSIBLE_ID}, select, start}`:
/// activities by id ascending, 50 per page (`next` / `total`). Values are strings, as in the
/// legacy CRM lists; `select` narrows the fields (`ID` is always present).
fn activity_list(st: &Inner, p: &Map<String, Value>) -> Result<MethodOk, ApiErr> {
    let filter = match param(p, "filter") {
        Some(Value::Object(f)) => f.clone(),
        _ => Map::new(),
    };
    let want = |k: &str| filter.get(k).and_then(as_i64);
    // `ID` takes one id or a list (IN), as the legacy list filters do.
    let ids: Option<Vec<u64>> = filter.get("ID").map(|v| {
        list_of(v)
            .into_iter()
            .filter_map(as_i64)
            .map(|i| i as u64)
            .collect()
    });
    let (owner_type, owner, responsible) = (
        want("OWNER_TYPE_ID"),
        want("OWNER_ID"),
        want("RESPONSIBLE_ID"),
    );
    let select: Vec<String> = param(p, "select")
        .map(list_of)
        .unwrap_or_default()
        .into_iter()
        .map(value_text)
        .collect();
    let start = param_i64(p, "start").unwrap_or(0).max(0) as usize;
    let d = st.read();
    let all: Vec<&B24Activity> = d
        .activities
        .values()
        .filter(|a| owner_type.is_none_or(|t| t as u64 == a.owner_type_id))
        .filter(|a| owner.is_none_or(|o| o as u64 == a.owner_id))
        .filter(|a| responsible.is_none_or(|r| r as u64 == a.responsible_id))
        .filter(|a| ids.as_ref().is_none_or(|ids| ids.contains(&a.id)))
        .collect();
    let total = all.len();
    let page: Vec<Value> = all
        .iter()
        .skip(start)
        .take(PAGE)
        .map(|a| {
            let full = json!({
                "ID": a.id.to_string(), "OWNER_ID": a.owner_id.to_string(),
                "OWNER_TYPE_ID": a.owner_type_id.to_string(), "TYPE_ID": "6",
                "PROVIDER_ID": "CRM_TODO", "PROVIDER_TYPE_ID": "TODO",
                "SUBJECT": a.subject, "DESCRIPTION": a.description, "DESCRIPTION_TYPE": "1",
                "DEADLINE": iso(a.deadline), "RESPONSIBLE_ID": a.responsible_id.to_string(),
                "COMPLETED": if a.completed { "Y" } else { "N" }, "CREATED": iso(a.created),
                "LAST_UPDATED": iso(a.last_updated),
            });
            if select.is_empty() || select.iter().any(|s| s == "*") {
                return full;
            }
            let mut m = Map::new();
            m.insert("ID".into(), full["ID"].clone());
            for k in &select {
                if let Some(v) = full.get(k) {
                    m.insert(k.clone(), v.clone());
                }
            }
            Value::Object(m)
        })
        .collect();
    let next = (start + PAGE < total).then_some((start + PAGE) as u64);
    Ok(MethodOk {
        result: Value::Array(page),
        total: Some(total as u64),
        next,
    })
}

// ---------------------------------------------------------------------------------------------
// Events

const KNOWN_EVENTS: &[&str] = &[
    "ONCRMDEALADD",
    "ONCRMDEALUPDATE",
    "ONCRMDEALDELETE",
    "ONCRMDEALMOVETOCATEGORY",
    "ONCRMCONTACTADD",
    "ONCRMCONTACTUPDATE",
    "ONCRMCONTACTDELETE",
    "ONCRMCOMPANYADD",
    "ONCRMCOMPANYUPDATE",
    "ONCRMCOMPANYDELETE",
    "ONAPPINSTALL",
    "ONAPPUNINSTALL",
];

/// `app.info`: the application the calling token belongs to (documented fields only: there is
/// no `member_id` in it). Outside an application context (an inbound webhook) it is refused.
fn app_info(st: &Inner, caller: &Caller) -> Result<MethodOk, ApiErr> {
    if !caller.app {
        return Err(ApiErr::new(
            400,
            "ACCESS_DENIED",
            "Access denied! Application context required",
        ));
    }
    Ok(MethodOk::of(json!({
        "ID": 7,
        "CODE": st.cfg.client_id,
        "VERSION": 1,
        "STATUS": "L",
        "INSTALLED": st.app_installed(),
        "PAYMENT_EXPIRED": "N",
        "DAYS": null,
        "LANGUAGE_ID": "ru",
        "LICENSE": "ru_project",
        "LICENSE_TYPE": "project",
        "LICENSE_FAMILY": "project",
    })))
}

fn event_bind(st: &Inner, p: &Map<String, Value>, caller: &Caller) -> Result<MethodOk, ApiErr> {
    if !caller.app {
        return Err(ApiErr::new(
            401,
            "WRONG_AUTH_TYPE",
            "Current authorization type is denied for this method",
        ));
    }
    let event = param(p, "event")
        .map(value_text)
        .unwrap_or_default()
        .to_ascii_uppercase();
    if !KNOWN_EVENTS.contains(&event.as_str()) {
        return Err(ApiErr::new(400, "ERROR_EVENT_NOT_FOUND", "Event not found"));
    }
    let offline = param(p, "event_type")
        .map(value_text)
        .is_some_and(|t| t.eq_ignore_ascii_case("offline"));
    let handler = param(p, "handler").map(value_text).unwrap_or_default();
    if !offline && handler.is_empty() {
        return Err(ApiErr::new(
            400,
            "ERROR_REQUIRED_PARAMETERS_MISSING",
            "Handler is required",
        ));
    }
    {
        let mut ev = lock(&st.events);
        if ev
            .bindings
            .iter()
            .any(|b| b.event == event && b.handler == handler && b.offline == offline)
        {
            return Err(ApiErr::new(
                400,
                "ERROR_HANDLER_ALREADY_EXIST",
                "Handler already exists!",
            ));
        }
        ev.bindings.push(super::EventBinding {
            event,
            handler,
            offline,
        });
    }
    record(st, "event.bind", p, &json!(true));
    Ok(MethodOk::of(json!(true)))
}

fn event_unbind(st: &Inner, p: &Map<String, Value>, caller: &Caller) -> Result<MethodOk, ApiErr> {
    if !caller.app {
        return Err(ApiErr::new(
            401,
            "WRONG_AUTH_TYPE",
            "Current authorization type is denied for this method",
        ));
    }
    let event = param(p, "event")
        .map(value_text)
        .unwrap_or_default()
        .to_ascii_uppercase();
    let handler = param(p, "handler").map(value_text);
    let count = {
        let mut ev = lock(&st.events);
        let before = ev.bindings.len();
        ev.bindings
            .retain(|b| !(b.event == event && handler.as_deref().is_none_or(|h| h == b.handler)));
        before - ev.bindings.len()
    };
    let result = json!({"count": count});
    record(st, "event.unbind", p, &result);
    Ok(MethodOk::of(result))
}

fn event_offline_get(st: &Inner, p: &Map<String, Value>) -> Result<MethodOk, ApiErr> {
    let clear = param_i64(p, "clear").unwrap_or(1) != 0;
    let limit = param_i64(p, "limit").unwrap_or(50).clamp(1, 1000) as usize;
    let mut ev = lock(&st.events);
    let take = ev.offline.len().min(limit);
    let items: Vec<FiredEvent> = if clear {
        ev.offline.drain(..take).collect()
    } else {
        ev.offline[..take].to_vec()
    };
    let events: Vec<Value> = items
        .iter()
        .map(|e| {
            json!({"ID": e.seq.to_string(), "TIMESTAMP_X": iso(e.ts), "EVENT_NAME": e.event,
                   "EVENT_DATA": {"FIELDS": e.fields}, "EVENT_ADDITIONAL": false, "MESSAGE_ID": e.seq.to_string()})
        })
        .collect();
    Ok(MethodOk::of(json!({"process_id": null, "events": events})))
}

impl B24Data {
    /// A copy of what write handlers consult (funnels and stages) without the big maps.
    fn clone_light(&self) -> B24Data {
        B24Data {
            categories: self.categories.clone(),
            stages: self.stages.clone(),
            user_fields: self.user_fields.clone(),
            ..Default::default()
        }
    }
}
