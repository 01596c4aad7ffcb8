//! Read endpoints of API v4: account, users, pipelines, custom fields, leads, contacts,
//! companies, catalogs, tasks, events.
//!
//! Lists share one shape: `{"_page", "_links": {"self", "next"?, "prev"?}, "_embedded":
//! {entity: [...]}}`, `page` (1-based) and `limit` (default 50, at most 250; 100 for events;
//! larger values are silently capped), and **204 with an empty body** past the end or when
//! nothing matches. Links carry the request's own host.
use super::Inner;
use super::error::{ApiError, hal};
use super::query::{OrderBy, Query, Range};
use super::render::{self, With, self_link};
use super::state::*;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::header;
use axum::http::request::Parts;
use axum::response::Response;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::convert::Infallible;
use std::sync::Arc;

/// Marks requests served over TLS (links then say `https://`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Https;

/// Request context: the base URL (from `Host`), the path and the parsed query.
pub(crate) struct Ctx {
    pub base: String,
    pub path: String,
    pub raw_query: Option<String>,
    pub q: Query,
}

impl<S: Send + Sync> FromRequestParts<S> for Ctx {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let host = parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
            .or_else(|| parts.uri.authority().map(|a| a.to_string()))
            .unwrap_or_else(|| "localhost".to_owned());
        let raw_query = parts.uri.query().map(str::to_owned);
        let scheme = if parts.extensions.get::<Https>().is_some() {
            "https"
        } else {
            "http"
        };
        Ok(Ctx {
            base: format!("{scheme}://{host}"),
            path: parts.uri.path().to_owned(),
            q: Query::parse(raw_query.as_deref()),
            raw_query,
        })
    }
}

impl Ctx {
    /// This request's URL with `page` replaced.
    fn href(&self, page: u64) -> String {
        let mut parts: Vec<&str> = self
            .raw_query
            .as_deref()
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
            .filter(|p| {
                let key = p.split('=').next().unwrap_or("");
                url::form_urlencoded::parse(key.as_bytes())
                    .next()
                    .is_none_or(|(k, _)| k != "page")
            })
            .collect();
        let page_part = format!("page={page}");
        parts.push(&page_part);
        format!("{}{}?{}", self.base, self.path, parts.join("&"))
    }

    fn self_href(&self) -> String {
        match &self.raw_query {
            Some(q) if !q.is_empty() => format!("{}{}?{q}", self.base, self.path),
            _ => format!("{}{}", self.base, self.path),
        }
    }
}

/// A page of a list, or 204 when empty.
fn page_response<T: serde::Serialize>(
    ctx: &Ctx,
    key: &str,
    page: u64,
    limit: u32,
    items: Vec<T>,
) -> Result<Response, ApiError> {
    #[derive(serde::Serialize)]
    struct PageOut<'a, T> {
        _page: u64,
        _links: Value,
        _embedded: std::collections::HashMap<&'a str, Vec<T>>,
    }
    if items.is_empty() {
        return Err(ApiError::NoContent);
    }
    let mut links = serde_json::Map::new();
    links.insert("self".into(), json!({"href": ctx.href(page)}));
    if items.len() >= limit as usize {
        links.insert("next".into(), json!({"href": ctx.href(page + 1)}));
    }
    if page > 1 {
        links.insert("prev".into(), json!({"href": ctx.href(page - 1)}));
    }
    Ok(hal(&PageOut {
        _page: page,
        _links: Value::Object(links),
        _embedded: std::iter::once((key, items)).collect(),
    }))
}

fn offset(page: u64, limit: u32) -> usize {
    page.saturating_sub(1)
        .saturating_mul(limit as u64)
        .min(usize::MAX as u64) as usize
}

fn parse_id(id: &str) -> Result<u64, ApiError> {
    id.parse().map_err(|_| ApiError::NotFound)
}

fn sorted(ids: Option<Vec<u64>>) -> Option<Vec<u64>> {
    ids.map(|mut v| {
        v.sort_unstable();
        v.dedup();
        v
    })
}

/// Where the previous page of the same query ended: the sort key of its last record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pos {
    Id(u64),
    Updated(i64, u64),
}

/// A remembered end of page, valid while the data has not changed.
#[derive(Debug, Clone)]
pub(crate) struct PageCursor {
    version: u64,
    next_page: u64,
    after: Pos,
}

/// One list request: where to look and how to page.
struct Listing<'q> {
    ids: Option<&'q [u64]>,
    updated: Range,
    order: (OrderBy, bool),
    page: u64,
    limit: u32,
}

/// Selects one page of records.
///
/// `pred` must check every filter except `ids`; `key` gives `(id, updated_at, sort key for
/// created_at/complete_till orders)`. Offset paging is exact (page `p` is records
/// `(p-1)*limit ..`); when page `p-1` of the same query was just served and nothing changed
/// since, the scan resumes after its last record instead of skipping from the start, so a
/// sequential full sync costs O(limit) per page at any depth.
fn select<'a, T>(
    st: &Inner,
    ctx: &Ctx,
    map: &'a BTreeMap<u64, T>,
    updated_index: &BTreeSet<(i64, u64)>,
    l: &Listing<'_>,
    pred: impl Fn(&T) -> bool,
    key: impl Fn(&T) -> (u64, i64, i64),
) -> Vec<&'a T> {
    use std::ops::Bound::{Excluded, Included, Unbounded};
    let (by, desc) = l.order;
    let limit = l.limit as usize;
    let version = st.version();
    let cache_key = format!("{}?{}", ctx.path, ctx.href(0));
    let resume = if matches!(by, OrderBy::Id | OrderBy::UpdatedAt) {
        st.cursors()
            .get(&cache_key)
            .filter(|c| c.version == version && c.next_page == l.page)
            .map(|c| c.after)
    } else {
        None
    };
    let skip = if resume.is_some() {
        0
    } else {
        offset(l.page, l.limit)
    };
    let id_ok = |id: &u64| l.ids.is_none_or(|v| v.binary_search(id).is_ok());
    let out: Vec<&'a T> = match by {
        OrderBy::Id => {
            let after = match resume {
                Some(Pos::Id(id)) => Some(id),
                _ => None,
            };
            let beyond = |id: u64| after.is_none_or(|a| if desc { id < a } else { id > a });
            let it: Box<dyn Iterator<Item = &'a T>> = match l.ids {
                Some(v) => {
                    let found: Vec<&'a T> = v
                        .iter()
                        .filter(|id| beyond(**id))
                        .filter_map(|id| map.get(id))
                        .collect();
                    if desc {
                        Box::new(found.into_iter().rev())
                    } else {
                        Box::new(found.into_iter())
                    }
                }
                None => match (after, desc) {
                    (None, false) => Box::new(map.values()),
                    (None, true) => Box::new(map.values().rev()),
                    (Some(a), false) => {
                        Box::new(map.range((Excluded(a), Unbounded)).map(|(_, v)| v))
                    }
                    (Some(a), true) => Box::new(map.range(..a).rev().map(|(_, v)| v)),
                },
            };
            it.filter(|t| pred(t)).skip(skip).take(limit).collect()
        }
        OrderBy::UpdatedAt => {
            if l.updated.from > l.updated.to {
                return vec![];
            }
            let lo = (l.updated.from, 0u64);
            let hi = (l.updated.to, u64::MAX);
            let (lo_b, hi_b) = match resume {
                Some(Pos::Updated(t, id)) if !desc => (Excluded((t, id)), Included(hi)),
                Some(Pos::Updated(t, id)) => (Included(lo), Excluded((t, id))),
                _ => (Included(lo), Included(hi)),
            };
            let (a, b) = (
                match lo_b {
                    Included(x) | Excluded(x) => x,
                    Unbounded => lo,
                },
                match hi_b {
                    Included(x) | Excluded(x) => x,
                    Unbounded => hi,
                },
            );
            if a > b || (a == b && (matches!(lo_b, Excluded(_)) || matches!(hi_b, Excluded(_)))) {
                return vec![];
            }
            let range = updated_index.range((lo_b, hi_b));
            let it: Box<dyn Iterator<Item = &(i64, u64)>> = if desc {
                Box::new(range.rev())
            } else {
                Box::new(range)
            };
            it.filter(|(_, id)| id_ok(id))
                .filter_map(|(_, id)| map.get(id))
                .filter(|t| pred(t))
                .skip(skip)
                .take(limit)
                .collect()
        }
        OrderBy::CreatedAt | OrderBy::CompleteTill => {
            let mut all: Vec<(i64, u64, &'a T)> = map
                .iter()
                .filter(|(id, t)| id_ok(id) && pred(t))
                .map(|(id, t)| (key(t).2, *id, t))
                .collect();
            all.sort_unstable_by_key(|(k, id, _)| (*k, *id));
            if desc {
                all.reverse();
            }
            all.into_iter()
                .skip(skip)
                .take(limit)
                .map(|(_, _, t)| t)
                .collect()
        }
    };
    if out.len() == limit
        && let Some(last) = out.last()
        && matches!(by, OrderBy::Id | OrderBy::UpdatedAt)
    {
        let (id, updated, _) = key(last);
        let after = if by == OrderBy::Id {
            Pos::Id(id)
        } else {
            Pos::Updated(updated, id)
        };
        let mut c = st.cursors();
        if c.len() > 256 {
            c.clear();
        }
        c.insert(
            cache_key,
            PageCursor {
                version,
                next_page: l.page + 1,
                after,
            },
        );
    }
    out
}

fn digits(s: &str) -> String {
    s.chars().filter(char::is_ascii_digit).collect()
}

/// amoCRM `query=` search: a case-insensitive substring of the name or of any custom field
/// value; a query with 5+ digits also matches phones by digits (`9123456789` finds
/// `8 (912) 345-67-89`).
struct Search {
    text: String,
    digits: Option<String>,
}

impl Search {
    fn new(q: &Query) -> Option<Self> {
        let text = q.get(&["query"])?.trim().to_lowercase();
        if text.is_empty() {
            return None;
        }
        let d = digits(&text);
        let digits = (d.len() >= 5)
            .then(|| d.trim_start_matches(['7', '8']).to_owned())
            .filter(|d| !d.is_empty());
        Some(Self { text, digits })
    }

    fn matches(&self, id: u64, name: &str, cf: &[AmoFieldValue]) -> bool {
        if id.to_string() == self.text || name.to_lowercase().contains(&self.text) {
            return true;
        }
        cf.iter().flat_map(|f| &f.values).any(|v| {
            let s = match &v.value {
                Value::String(s) => s.to_lowercase(),
                other => other.to_string(),
            };
            s.contains(&self.text)
                || self
                    .digits
                    .as_ref()
                    .is_some_and(|d| digits(&s).contains(d.as_str()))
        })
    }
}

const ENTITY_ORDERS: &[(&str, OrderBy)] = &[
    ("id", OrderBy::Id),
    ("updated_at", OrderBy::UpdatedAt),
    ("created_at", OrderBy::CreatedAt),
];

/// `GET /api/v4/account`.
pub(crate) async fn account(State(st): State<Arc<Inner>>, ctx: Ctx) -> Result<Response, ApiError> {
    let d = st.read();
    let a = &d.account;
    let with = ctx.q.with();
    let mut body = json!({
        "id": a.id,
        "name": a.name,
        "subdomain": a.subdomain,
        "created_at": a.created_at,
        "created_by": a.current_user_id,
        "updated_at": a.created_at,
        "updated_by": a.current_user_id,
        "current_user_id": a.current_user_id,
        "country": "RU",
        "currency": a.currency,
        "currency_symbol": "₽",
        "customers_mode": a.customers_mode,
        "is_unsorted_on": true,
        "mobile_feature_version": 0,
        "is_loss_reason_enabled": true,
        "is_helpbot_enabled": false,
        "is_technical_account": false,
        "contact_name_display_order": 1,
        "_links": self_link(&ctx.base, "/api/v4/account"),
    });
    let mut embedded = serde_json::Map::new();
    if with.contains("amojo_id") {
        body["amojo_id"] = json!(format!("{:08x}-0000-4000-8000-{:012x}", a.id, a.id));
    }
    if with.contains("version") {
        body["version"] = json!(11);
    }
    if with.contains("is_api_filter_enabled") {
        body["is_api_filter_enabled"] = json!(true);
    }
    if with.contains("drive_url") {
        body["drive_url"] = json!(format!("https://drive-b.amocrm.ru/{}", a.id));
    }
    if with.contains("datetime_settings") {
        body["datetime_settings"] = json!({
            "date_pattern": "d.m.Y H:i", "short_date_pattern": "d.m.Y", "short_time_pattern": "H:i",
            "date_format": "d.m.Y", "time_format": "H:i:s", "timezone": "Europe/Moscow", "timezone_offset": "+03:00",
        });
    }
    if with.contains("amojo_rights") {
        body["amojo_rights"] = json!({"can_direct": true, "can_create_groups": true});
    }
    if with.contains("users_groups") {
        embedded.insert(
            "users_groups".into(),
            json!([{"id": 0, "name": "Отдел продаж", "uuid": null}]),
        );
    }
    if with.contains("task_types") {
        embedded.insert(
            "task_types".into(),
            json!([
                {"id": 1, "name": "Связаться", "color": null, "icon_id": null, "code": "FOLLOW_UP"},
                {"id": 2, "name": "Встреча", "color": null, "icon_id": null, "code": "MEETING"},
            ]),
        );
    }
    if !embedded.is_empty() {
        body["_embedded"] = Value::Object(embedded);
    }
    Ok(hal(&body))
}

/// `GET /api/v4/users`.
pub(crate) async fn users(State(st): State<Arc<Inner>>, ctx: Ctx) -> Result<Response, ApiError> {
    let (page, limit) = ctx.q.paging(250)?;
    let ids = sorted(ctx.q.ids(&["filter", "id"])?);
    let d = st.read();
    let items: Vec<Value> = d
        .users
        .values()
        .filter(|u| ids.as_ref().is_none_or(|v| v.binary_search(&u.id).is_ok()))
        .skip(offset(page, limit))
        .take(limit as usize)
        .map(|u| render::user(u, &ctx.base))
        .collect();
    if items.is_empty() {
        return Err(ApiError::NoContent);
    }
    let total = d.users.len();
    let mut links = json!({"self": {"href": ctx.href(page)}});
    if (page as usize) * (limit as usize) < total {
        links["next"] = json!({"href": ctx.href(page + 1)});
    }
    if page > 1 {
        links["prev"] = json!({"href": ctx.href(page - 1)});
    }
    Ok(hal(&json!({
        "_total_items": total,
        "_page": page,
        "_page_count": total.div_ceil(limit as usize),
        "_links": links,
        "_embedded": {"users": items},
    })))
}

/// `GET /api/v4/users/{id}`.
pub(crate) async fn user(
    State(st): State<Arc<Inner>>,
    Path(id): Path<String>,
    ctx: Ctx,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let d = st.read();
    let u = d.users.get(&id).ok_or(ApiError::NoContent)?;
    Ok(hal(&render::user(u, &ctx.base)))
}

/// `GET /api/v4/leads/pipelines`.
pub(crate) async fn pipelines(
    State(st): State<Arc<Inner>>,
    ctx: Ctx,
) -> Result<Response, ApiError> {
    let d = st.read();
    let mut ps: Vec<&AmoPipeline> = d.pipelines.values().collect();
    ps.sort_by_key(|p| (p.sort, p.id));
    let items: Vec<Value> = ps
        .into_iter()
        .map(|p| render::pipeline(&d, p, &ctx.base))
        .collect();
    Ok(hal(&json!({
        "_total_items": items.len(),
        "_links": {"self": {"href": ctx.self_href()}},
        "_embedded": {"pipelines": items},
    })))
}

/// `GET /api/v4/leads/pipelines/{id}`.
pub(crate) async fn pipeline(
    State(st): State<Arc<Inner>>,
    Path(id): Path<String>,
    ctx: Ctx,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let d = st.read();
    let p = d.pipelines.get(&id).ok_or(ApiError::NoContent)?;
    Ok(hal(&render::pipeline(&d, p, &ctx.base)))
}

/// `GET /api/v4/leads/pipelines/{id}/statuses`.
pub(crate) async fn statuses(
    State(st): State<Arc<Inner>>,
    Path(id): Path<String>,
    ctx: Ctx,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let d = st.read();
    let p = d.pipelines.get(&id).ok_or(ApiError::NoContent)?;
    let items: Vec<Value> = p
        .statuses
        .iter()
        .map(|s| render::status(&d, s, &ctx.base))
        .collect();
    Ok(hal(&json!({
        "_total_items": items.len(),
        "_links": {"self": {"href": ctx.self_href()}},
        "_embedded": {"statuses": items},
    })))
}

async fn fields_of(st: Arc<Inner>, ctx: Ctx, entity: &str) -> Result<Response, ApiError> {
    let (page, limit) = ctx.q.paging(250)?;
    let d = st.read();
    let defs = d.fields.of(entity);
    let items: Vec<Value> = defs
        .iter()
        .skip(offset(page, limit))
        .take(limit as usize)
        .map(|f| render::field_def(&d, entity, f, &ctx.base))
        .collect();
    if items.is_empty() {
        return Err(ApiError::NoContent);
    }
    let mut links = json!({"self": {"href": ctx.href(page)}});
    if (page as usize) * (limit as usize) < defs.len() {
        links["next"] = json!({"href": ctx.href(page + 1)});
    }
    Ok(hal(&json!({
        "_total_items": defs.len(),
        "_page": page,
        "_page_count": defs.len().div_ceil(limit as usize),
        "_links": links,
        "_embedded": {"custom_fields": items},
    })))
}

/// `GET /api/v4/leads/custom_fields`.
pub(crate) async fn lead_fields(
    State(st): State<Arc<Inner>>,
    ctx: Ctx,
) -> Result<Response, ApiError> {
    fields_of(st, ctx, "leads").await
}

/// `GET /api/v4/contacts/custom_fields`.
pub(crate) async fn contact_fields(
    State(st): State<Arc<Inner>>,
    ctx: Ctx,
) -> Result<Response, ApiError> {
    fields_of(st, ctx, "contacts").await
}

/// `GET /api/v4/companies/custom_fields`.
pub(crate) async fn company_fields(
    State(st): State<Arc<Inner>>,
    ctx: Ctx,
) -> Result<Response, ApiError> {
    fields_of(st, ctx, "companies").await
}

/// `GET /api/v4/customers/custom_fields`.
pub(crate) async fn customer_fields(
    State(st): State<Arc<Inner>>,
    ctx: Ctx,
) -> Result<Response, ApiError> {
    fields_of(st, ctx, "customers").await
}

/// The `filter[...]` keys `GET /api/v4/leads` honours (`docs/amocrm.md` §4); any other is a
/// 400, never silently ignored.
const LEAD_FILTERS: &[&str] = &[
    "id",
    "name",
    "price",
    "statuses",
    "pipeline_id",
    "created_by",
    "updated_by",
    "responsible_user_id",
    "created_at",
    "updated_at",
    "closed_at",
    "custom_fields_values",
];

/// `GET /api/v4/leads`.
pub(crate) async fn leads(State(st): State<Arc<Inner>>, ctx: Ctx) -> Result<Response, ApiError> {
    let q = &ctx.q;
    q.only_filters(LEAD_FILTERS)?;
    let (page, limit) = q.paging(250)?;
    let ids = sorted(q.ids(&["filter", "id"])?);
    let updated = q.range("updated_at")?;
    let created = q.range("created_at")?;
    let closed = q.range("closed_at")?;
    let price = q.num_range(&["filter", "price"])?;
    let names: Option<Vec<String>> = q.texts(&["filter", "name"]);
    let created_by: Option<HashSet<u64>> = q
        .ids(&["filter", "created_by"])?
        .map(|v| v.into_iter().collect());
    let updated_by: Option<HashSet<u64>> = q
        .ids(&["filter", "updated_by"])?
        .map(|v| v.into_iter().collect());
    let cf = q.custom_field_filters()?;
    let pipeline_ids: Option<HashSet<u64>> = q
        .ids(&["filter", "pipeline_id"])?
        .map(|v| v.into_iter().collect());
    let responsible: Option<HashSet<u64>> = q
        .ids(&["filter", "responsible_user_id"])?
        .map(|v| v.into_iter().collect());
    let mut statuses: Vec<(Option<u64>, Option<u64>)> = Vec::new();
    for (_, obj) in q.objects(&["filter", "statuses"]) {
        let num = |k: &str| -> Result<Option<u64>, ApiError> {
            obj.get(k)
                .map(|v| {
                    v.parse::<u64>().map_err(|_| {
                        ApiError::BadRequest(format!("invalid filter[statuses] {k} {v:?}"))
                    })
                })
                .transpose()
        };
        statuses.push((num("pipeline_id")?, num("status_id")?));
    }
    let search = Search::new(q);
    let order = q.order(ENTITY_ORDERS)?.unwrap_or((OrderBy::Id, false));
    let with = With::from(&q.with());
    let d = st.read();
    let pred = |l: &AmoLead| {
        updated.contains(l.updated_at)
            && created.contains(l.created_at)
            && closed.contains_opt(l.closed_at)
            && price.contains(l.price)
            && names
                .as_ref()
                .is_none_or(|n| n.iter().any(|n| n == &l.name))
            && created_by
                .as_ref()
                .is_none_or(|s| s.contains(&l.created_by))
            && updated_by
                .as_ref()
                .is_none_or(|s| s.contains(&l.updated_by))
            && cf.iter().all(|f| f.matches(&l.custom_fields))
            && pipeline_ids
                .as_ref()
                .is_none_or(|s| s.contains(&l.pipeline_id))
            && responsible
                .as_ref()
                .is_none_or(|s| s.contains(&l.responsible_user_id))
            && (statuses.is_empty()
                || statuses.iter().any(|(p, s)| {
                    p.is_none_or(|p| p == l.pipeline_id) && s.is_none_or(|s| s == l.status_id)
                }))
            && search
                .as_ref()
                .is_none_or(|s| s.matches(l.id, &l.name, &l.custom_fields))
    };
    let listing = Listing {
        ids: ids.as_deref(),
        updated,
        order,
        page,
        limit,
    };
    let items: Vec<_> = select(
        &st,
        &ctx,
        &d.leads,
        &d.idx.lead_updated,
        &listing,
        pred,
        |l| (l.id, l.updated_at, l.created_at),
    )
    .into_iter()
    .map(|l| render::lead(&d, l, &ctx.base, with))
    .collect();
    page_response(&ctx, "leads", page, limit, items)
}

/// `GET /api/v4/leads/{id}`: 204 when missing.
pub(crate) async fn lead(
    State(st): State<Arc<Inner>>,
    Path(id): Path<String>,
    ctx: Ctx,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let with = With::from(&ctx.q.with());
    let d = st.read();
    let l = d.leads.get(&id).ok_or(ApiError::NoContent)?;
    Ok(hal(&render::lead(&d, l, &ctx.base, with)))
}

/// `GET /api/v4/contacts`.
pub(crate) async fn contacts(State(st): State<Arc<Inner>>, ctx: Ctx) -> Result<Response, ApiError> {
    let q = &ctx.q;
    q.only_filters(&[
        "id",
        "name",
        "responsible_user_id",
        "created_at",
        "updated_at",
    ])?;
    let (page, limit) = q.paging(250)?;
    let ids = sorted(q.ids(&["filter", "id"])?);
    let updated = q.range("updated_at")?;
    let created = q.range("created_at")?;
    let responsible: Option<HashSet<u64>> = q
        .ids(&["filter", "responsible_user_id"])?
        .map(|v| v.into_iter().collect());
    let names: Option<Vec<String>> = q.texts(&["filter", "name"]);
    let search = Search::new(q);
    let order = q.order(ENTITY_ORDERS)?.unwrap_or((OrderBy::Id, false));
    let with = With::from(&q.with());
    let d = st.read();
    let pred = |c: &AmoContact| {
        updated.contains(c.updated_at)
            && created.contains(c.created_at)
            && responsible
                .as_ref()
                .is_none_or(|s| s.contains(&c.responsible_user_id))
            && names
                .as_ref()
                .is_none_or(|n| n.iter().any(|n| n == &c.name))
            && search
                .as_ref()
                .is_none_or(|s| s.matches(c.id, &c.name, &c.custom_fields))
    };
    let listing = Listing {
        ids: ids.as_deref(),
        updated,
        order,
        page,
        limit,
    };
    let items: Vec<_> = select(
        &st,
        &ctx,
        &d.contacts,
        &d.idx.contact_updated,
        &listing,
        pred,
        |c| (c.id, c.updated_at, c.created_at),
    )
    .into_iter()
    .map(|c| render::contact(&d, c, &ctx.base, with))
    .collect();
    page_response(&ctx, "contacts", page, limit, items)
}

/// `GET /api/v4/contacts/{id}`: 204 when missing.
pub(crate) async fn contact(
    State(st): State<Arc<Inner>>,
    Path(id): Path<String>,
    ctx: Ctx,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let with = With::from(&ctx.q.with());
    let d = st.read();
    let c = d.contacts.get(&id).ok_or(ApiError::NoContent)?;
    Ok(hal(&render::contact(&d, c, &ctx.base, with)))
}

/// `GET /api/v4/companies`.
pub(crate) async fn companies(
    State(st): State<Arc<Inner>>,
    ctx: Ctx,
) -> Result<Response, ApiError> {
    let q = &ctx.q;
    q.only_filters(&["id", "responsible_user_id", "created_at", "updated_at"])?;
    let (page, limit) = q.paging(250)?;
    let ids = sorted(q.ids(&["filter", "id"])?);
    let updated = q.range("updated_at")?;
    let created = q.range("created_at")?;
    let responsible: Option<HashSet<u64>> = q
        .ids(&["filter", "responsible_user_id"])?
        .map(|v| v.into_iter().collect());
    let search = Search::new(q);
    let order = q.order(ENTITY_ORDERS)?.unwrap_or((OrderBy::Id, false));
    let with = With::from(&q.with());
    let d = st.read();
    let pred = |c: &AmoCompany| {
        updated.contains(c.updated_at)
            && created.contains(c.created_at)
            && responsible
                .as_ref()
                .is_none_or(|s| s.contains(&c.responsible_user_id))
            && search
                .as_ref()
                .is_none_or(|s| s.matches(c.id, &c.name, &c.custom_fields))
    };
    let listing = Listing {
        ids: ids.as_deref(),
        updated,
        order,
        page,
        limit,
    };
    let items: Vec<_> = select(
        &st,
        &ctx,
        &d.companies,
        &d.idx.company_updated,
        &listing,
        pred,
        |c| (c.id, c.updated_at, c.created_at),
    )
    .into_iter()
    .map(|c| render::company(&d, c, &ctx.base, with))
    .collect();
    page_response(&ctx, "companies", page, limit, items)
}

/// `GET /api/v4/companies/{id}`: 204 when missing.
pub(crate) async fn company(
    State(st): State<Arc<Inner>>,
    Path(id): Path<String>,
    ctx: Ctx,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let with = With::from(&ctx.q.with());
    let d = st.read();
    let c = d.companies.get(&id).ok_or(ApiError::NoContent)?;
    Ok(hal(&render::company(&d, c, &ctx.base, with)))
}

/// `GET /api/v4/catalogs`.
pub(crate) async fn catalogs(State(st): State<Arc<Inner>>, ctx: Ctx) -> Result<Response, ApiError> {
    let (page, limit) = ctx.q.paging(250)?;
    if page > 1 {
        return Err(ApiError::NoContent);
    }
    let d = st.read();
    let c = &d.catalog;
    let t = c.elements.values().map(|e| e.created_at).min().unwrap_or(0);
    let item = json!({
        "id": c.id, "name": c.name, "created_by": d.account.current_user_id, "updated_by": d.account.current_user_id,
        "created_at": t, "updated_at": t, "sort": 10, "type": "products", "can_add_elements": true,
        "can_show_in_cards": true, "can_link_multiple": true, "can_be_deleted": false, "sdk_widget_code": null,
        "account_id": d.account.id, "_links": self_link(&ctx.base, &format!("/api/v4/catalogs/{}", c.id)),
    });
    page_response(&ctx, "catalogs", page, limit.max(2), vec![item])
}

/// `GET /api/v4/catalogs/{id}/elements`.
pub(crate) async fn catalog_elements(
    State(st): State<Arc<Inner>>,
    Path(id): Path<String>,
    ctx: Ctx,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let (page, limit) = ctx.q.paging(250)?;
    let ids = sorted(ctx.q.ids(&["filter", "id"])?);
    let search = Search::new(&ctx.q);
    let d = st.read();
    if id != d.catalog.id {
        return Err(ApiError::NoContent);
    }
    let items: Vec<Value> = d
        .catalog
        .elements
        .values()
        .filter(|e| ids.as_ref().is_none_or(|v| v.binary_search(&e.id).is_ok()))
        .filter(|e| {
            search
                .as_ref()
                .is_none_or(|s| s.matches(e.id, &e.name, &[]))
        })
        .skip(offset(page, limit))
        .take(limit as usize)
        .map(|e| render::catalog_element(&d, e, &ctx.base))
        .collect();
    page_response(&ctx, "elements", page, limit, items)
}

/// `GET /api/v4/tasks`.
pub(crate) async fn tasks(State(st): State<Arc<Inner>>, ctx: Ctx) -> Result<Response, ApiError> {
    let q = &ctx.q;
    q.only_filters(&[
        "id",
        "updated_at",
        "responsible_user_id",
        "task_type",
        "entity_type",
        "entity_id",
        "is_completed",
    ])?;
    if q.has(&["filter", "entity_id"]) && !q.has(&["filter", "entity_type"]) {
        return Err(ApiError::BadRequest(
            "filter[entity_id] needs filter[entity_type]".into(),
        ));
    }
    let (page, limit) = q.paging(250)?;
    let ids = sorted(q.ids(&["filter", "id"])?);
    let updated = q.range("updated_at")?;
    let responsible: Option<HashSet<u64>> = q
        .ids(&["filter", "responsible_user_id"])?
        .map(|v| v.into_iter().collect());
    let types: Option<HashSet<u64>> = q
        .ids(&["filter", "task_type"])?
        .map(|v| v.into_iter().collect());
    let entity_type = q.get(&["filter", "entity_type"]).map(str::to_owned);
    if let Some(t) = &entity_type
        && !["leads", "contacts", "companies", "customers"].contains(&t.as_str())
    {
        return Err(ApiError::BadRequest(format!(
            "invalid value {t:?} of query parameter filter[entity_type]"
        )));
    }
    let entity_ids: Option<HashSet<u64>> = q
        .ids(&["filter", "entity_id"])?
        .map(|v| v.into_iter().collect());
    let completed = match q.get(&["filter", "is_completed"]) {
        None => None,
        Some("1") | Some("true") => Some(true),
        Some("0") | Some("false") => Some(false),
        Some(v) => {
            return Err(ApiError::BadRequest(format!(
                "invalid value {v:?} of query parameter filter[is_completed]"
            )));
        }
    };
    let order = q
        .order(&[
            ("id", OrderBy::Id),
            ("created_at", OrderBy::CreatedAt),
            ("complete_till", OrderBy::CompleteTill),
        ])?
        .unwrap_or((OrderBy::Id, false));
    let d = st.read();
    let pred = |t: &AmoTask| {
        updated.contains(t.updated_at)
            && responsible
                .as_ref()
                .is_none_or(|s| s.contains(&t.responsible_user_id))
            && types.as_ref().is_none_or(|s| s.contains(&t.task_type_id))
            && entity_type
                .as_ref()
                .is_none_or(|e| t.entity_type.as_deref() == Some(e.as_str()))
            && entity_ids
                .as_ref()
                .is_none_or(|s| t.entity_id.is_some_and(|id| s.contains(&id)))
            && completed.is_none_or(|c| c == t.is_completed)
    };
    let key = |t: &AmoTask| {
        let sort = if order.0 == OrderBy::CompleteTill {
            t.complete_till
        } else {
            t.created_at
        };
        (t.id, t.updated_at, sort)
    };
    // Tasks have no updated_at index, so `order[updated_at]` is not offered for them.
    let empty = BTreeSet::new();
    let listing = Listing {
        ids: ids.as_deref(),
        updated,
        order,
        page,
        limit,
    };
    let items: Vec<Value> = select(&st, &ctx, &d.tasks, &empty, &listing, pred, key)
        .into_iter()
        .map(|t| render::task(&d, t, &ctx.base))
        .collect();
    page_response(&ctx, "tasks", page, limit, items)
}

/// `GET /api/v4/tasks/{id}`.
pub(crate) async fn task(
    State(st): State<Arc<Inner>>,
    Path(id): Path<String>,
    ctx: Ctx,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let d = st.read();
    let t = d.tasks.get(&id).ok_or(ApiError::NoContent)?;
    Ok(hal(&render::task(&d, t, &ctx.base)))
}

/// `GET /api/v4/events`: limit at most 100, newest first unless `order[created_at]=asc`.
pub(crate) async fn events(State(st): State<Arc<Inner>>, ctx: Ctx) -> Result<Response, ApiError> {
    let q = &ctx.q;
    q.only_filters(&[
        "id",
        "type",
        "entity",
        "entity_id",
        "created_by",
        "created_at",
    ])?;
    let (page, limit) = q.paging(100)?;
    let ids: Option<HashSet<String>> = q
        .strings(&["filter", "id"])
        .map(|v| v.into_iter().collect());
    let types: Option<HashSet<String>> = q
        .strings(&["filter", "type"])
        .map(|v| v.into_iter().collect());
    let entities: Option<HashSet<String>> = q.strings(&["filter", "entity"]).map(|v| {
        v.into_iter()
            .map(|e| e.trim_end_matches('s').replace("companie", "company"))
            .collect()
    });
    let entity_ids: Option<HashSet<u64>> = q
        .ids(&["filter", "entity_id"])?
        .map(|v| v.into_iter().collect());
    let created_by: Option<HashSet<u64>> = q
        .ids(&["filter", "created_by"])?
        .map(|v| v.into_iter().collect());
    let created = q.range("created_at")?;
    let desc = q
        .order(&[("created_at", OrderBy::CreatedAt), ("id", OrderBy::Id)])?
        .is_none_or(|(_, desc)| desc);
    let d = st.read();
    let pred = |e: &&AmoEvent| {
        created.contains(e.created_at)
            && ids.as_ref().is_none_or(|s| s.contains(&e.id))
            && types.as_ref().is_none_or(|s| s.contains(&e.event_type))
            && entities.as_ref().is_none_or(|s| s.contains(&e.entity_type))
            && entity_ids.as_ref().is_none_or(|s| s.contains(&e.entity_id))
            && created_by
                .as_ref()
                .is_none_or(|s| s.contains(&e.created_by))
    };
    let it: Box<dyn Iterator<Item = &AmoEvent>> = if desc {
        Box::new(d.events.iter().rev())
    } else {
        Box::new(d.events.iter())
    };
    let items: Vec<Value> = it
        .filter(pred)
        .skip(offset(page, limit))
        .take(limit as usize)
        .map(|e| render::event(&d, e, &ctx.base))
        .collect();
    page_response(&ctx, "events", page, limit, items)
}
