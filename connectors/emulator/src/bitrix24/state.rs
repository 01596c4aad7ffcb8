//! The records of an emulated Bitrix24 portal, in Bitrix24's own names, and how each field is
//! rendered on the wire.
//!
//! [`B24Data::from_dataset`] maps the CRM-neutral [`Dataset`] into a portal: pipelines become
//! deal categories (the main pipeline is category `0`, the others `1`, `2`, ...), stages get
//! Bitrix24 codes (`NEW`, `PREPARATION`, ..., `WON`, `LOSE`, `APOLOGY`; `C{n}:` prefixed in
//! category `n`), phones and emails become multi-fields with their own ids, product rows keep
//! their quantities. Every table is an [`Indexed`] map by id: a `BTreeMap` (so the `>ID` filters that
//! clients page by are range scans) with a sorted id list beside it, so a list page finds its
//! rows and its exact `total` by binary search instead of walking the table.
//!
//! Rendering follows `docs/bitrix24.md`: ids and money as strings (`"OPPORTUNITY":"19999.00"`),
//! `Y`/`N` flags, datetimes in the portal's zone with an offset, `null` for empty links. The
//! field kinds ([`Kind`]) drive how filters compare values.
use crate::seed::{ContactKind, Dataset, DealOutcome, StageKind};
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// Fixed offset of the emulated portal's time zone (Moscow, +03:00).
pub const PORTAL_OFFSET_HOURS: i8 = 3;

/// The value kind of a field, for filters and ordering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Integer (ids, links), sent as a string.
    Int,
    /// Money, sent as a string with two decimals.
    Money,
    /// Datetime with offset.
    Time,
    /// Text, `Y`/`N` flags and codes.
    Str,
}

/// A comparable field value.
#[derive(Debug, Clone, PartialEq, PartialOrd)]
pub enum Key {
    /// No value.
    Null,
    /// Integer or unix seconds.
    Int(i64),
    /// Exact decimal.
    Dec(Decimal),
    /// Text.
    Str(String),
    /// Several values (multi-fields); a filter matches when one matches.
    Many(Vec<String>),
}

/// A phone, email or web multi-field value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct B24Multi {
    /// Multi-field value id (unique across the portal).
    pub id: u64,
    /// `WORK`, `MOBILE`, `HOME`, `OTHER`...
    pub value_type: String,
    /// The value as typed.
    pub value: String,
}

/// A contact (`crm.contact.*`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct B24Contact {
    /// `ID`.
    pub id: u64,
    /// `NAME` (first name).
    pub name: String,
    /// `SECOND_NAME`.
    pub second_name: String,
    /// `LAST_NAME`.
    pub last_name: String,
    /// `COMPANY_ID`.
    pub company_id: Option<u64>,
    /// `ASSIGNED_BY_ID`.
    pub assigned_by_id: u64,
    /// `CREATED_BY_ID`.
    pub created_by_id: u64,
    /// `MODIFY_BY_ID`.
    pub modify_by_id: u64,
    /// `DATE_CREATE`, unix seconds.
    pub date_create: i64,
    /// `DATE_MODIFY`, unix seconds.
    pub date_modify: i64,
    /// `SOURCE_ID`.
    pub source_id: Option<String>,
    /// `PHONE` multi-field.
    pub phones: Vec<B24Multi>,
    /// `EMAIL` multi-field.
    pub emails: Vec<B24Multi>,
    /// `UF_CRM_*` values.
    pub uf: BTreeMap<String, Value>,
}

/// A company (`crm.company.*`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct B24Company {
    /// `ID`.
    pub id: u64,
    /// `TITLE`.
    pub title: String,
    /// `ASSIGNED_BY_ID`.
    pub assigned_by_id: u64,
    /// `DATE_CREATE`.
    pub date_create: i64,
    /// `DATE_MODIFY`.
    pub date_modify: i64,
    /// `PHONE`.
    pub phones: Vec<B24Multi>,
    /// `EMAIL`.
    pub emails: Vec<B24Multi>,
    /// `WEB`.
    pub web: Vec<B24Multi>,
    /// `UF_CRM_*` values.
    pub uf: BTreeMap<String, Value>,
}

/// A product row of a deal (`crm.deal.productrows.get`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct B24ProductRow {
    /// Row `ID`.
    pub id: u64,
    /// `PRODUCT_ID`.
    pub product_id: u64,
    /// `PRODUCT_NAME`.
    pub product_name: String,
    /// `PRICE`: final unit price.
    pub price: Decimal,
    /// `QUANTITY`.
    pub quantity: Decimal,
    /// `MEASURE_NAME`.
    pub measure_name: String,
}

/// A deal (`crm.deal.*`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct B24Deal {
    /// `ID`.
    pub id: u64,
    /// `TITLE`.
    pub title: String,
    /// `CATEGORY_ID` (funnel).
    pub category_id: u64,
    /// `STAGE_ID` (`C1:WON`).
    pub stage_id: String,
    /// `STAGE_SEMANTIC_ID`: `P`, `S` or `F`.
    pub stage_semantic_id: String,
    /// `CURRENCY_ID`.
    pub currency_id: String,
    /// `OPPORTUNITY`.
    pub opportunity: Decimal,
    /// `CONTACT_ID`: the primary contact.
    pub contact_id: Option<u64>,
    /// All contacts (`crm.deal.contact.items.get`), primary first.
    pub contact_ids: Vec<u64>,
    /// `COMPANY_ID`.
    pub company_id: Option<u64>,
    /// `ASSIGNED_BY_ID`.
    pub assigned_by_id: u64,
    /// `CREATED_BY_ID`.
    pub created_by_id: u64,
    /// `MODIFY_BY_ID`.
    pub modify_by_id: u64,
    /// `DATE_CREATE`.
    pub date_create: i64,
    /// `DATE_MODIFY`.
    pub date_modify: i64,
    /// `BEGINDATE` (date, rendered as midnight).
    pub begindate: i64,
    /// `CLOSEDATE` (date, rendered as midnight): the expected close date of an open deal,
    /// the close date of a closed one.
    pub closedate: i64,
    /// `CLOSED`.
    pub closed: bool,
    /// `IS_RETURN_CUSTOMER` ("repeat deal").
    pub is_return_customer: bool,
    /// `IS_REPEATED_APPROACH`.
    pub is_repeated_approach: bool,
    /// `SOURCE_ID`.
    pub source_id: Option<String>,
    /// `COMMENTS`.
    pub comments: String,
    /// `MOVED_TIME`.
    pub moved_time: i64,
    /// `UF_CRM_*` values.
    pub uf: BTreeMap<String, Value>,
    /// Product rows.
    pub products: Vec<B24ProductRow>,
}

/// A user (`user.get`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct B24User {
    /// `ID`.
    pub id: u64,
    /// `NAME`.
    pub name: String,
    /// `LAST_NAME`.
    pub last_name: String,
    /// `EMAIL`.
    pub email: String,
    /// `ACTIVE`.
    pub active: bool,
    /// Portal administrator.
    pub is_admin: bool,
}

/// A deal funnel (`crm.category.list`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct B24Category {
    /// `id` (0 = the default funnel).
    pub id: u64,
    /// `name`.
    pub name: String,
    /// `sort`.
    pub sort: i64,
    /// `isDefault`.
    pub is_default: bool,
}

/// A stage (`crm.status.list`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct B24Stage {
    /// The status row `ID`.
    pub id: u64,
    /// `ENTITY_ID`: `DEAL_STAGE` or `DEAL_STAGE_{n}`.
    pub entity_id: String,
    /// `STATUS_ID`: the stage code.
    pub status_id: String,
    /// `NAME`.
    pub name: String,
    /// `SORT`.
    pub sort: i64,
    /// `SEMANTICS`: `None` in progress, `S` success, `F` failure.
    pub semantics: Option<String>,
    /// `COLOR`.
    pub color: String,
    /// Funnel.
    pub category_id: u64,
}

/// A user field definition added with `crm.*.userfield.add`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct B24UserField {
    /// Id returned by the add call.
    pub id: u64,
    /// `deal`, `contact` or `company`.
    pub entity: String,
    /// `UF_CRM_...`.
    pub field_name: String,
    /// `USER_TYPE_ID`.
    pub user_type_id: String,
    /// `EDIT_FORM_LABEL` (also list and filter labels; one language).
    pub label: String,
    /// `MULTIPLE`.
    pub multiple: bool,
}

/// A table by id that also keeps its ids sorted in a vector, so that the rank of an id (how
/// many rows come before it) is a binary search: a list page with `start=N` and its `total`
/// cost the page, not the table. Reads go through `Deref` to the map; changes of the id set
/// only through [`Indexed::insert`] and [`Indexed::remove`], which keep both in step.
#[derive(Debug, Clone)]
pub struct Indexed<V> {
    map: BTreeMap<u64, V>,
    ids: Vec<u64>,
}

impl<V> Default for Indexed<V> {
    fn default() -> Self {
        Self {
            map: BTreeMap::new(),
            ids: Vec::new(),
        }
    }
}

impl<V> std::ops::Deref for Indexed<V> {
    type Target = BTreeMap<u64, V>;
    fn deref(&self) -> &Self::Target {
        &self.map
    }
}

impl<'a, V> IntoIterator for &'a Indexed<V> {
    type Item = (&'a u64, &'a V);
    type IntoIter = std::collections::btree_map::Iter<'a, u64, V>;
    fn into_iter(self) -> Self::IntoIter {
        self.map.iter()
    }
}

impl<V> Indexed<V> {
    /// Inserts or replaces a row (ids grow in practice, so this is a push).
    pub fn insert(&mut self, id: u64, v: V) -> Option<V> {
        let old = self.map.insert(id, v);
        if old.is_none() {
            match self.ids.last() {
                Some(last) if *last > id => {
                    let at = self.ids.partition_point(|x| *x < id);
                    self.ids.insert(at, id);
                }
                _ => self.ids.push(id),
            }
        }
        old
    }

    /// Removes a row.
    pub fn remove(&mut self, id: &u64) -> Option<V> {
        let old = self.map.remove(id);
        if old.is_some()
            && let Ok(at) = self.ids.binary_search(id)
        {
            self.ids.remove(at);
        }
        old
    }

    /// A row to change in place (its id stays).
    pub fn get_mut(&mut self, id: &u64) -> Option<&mut V> {
        self.map.get_mut(id)
    }

    /// All ids, ascending.
    pub fn ids(&self) -> &[u64] {
        &self.ids
    }

    /// The positions in [`Indexed::ids`] of the ids within `range`: `lo..hi`.
    pub fn span(&self, range: (std::ops::Bound<u64>, std::ops::Bound<u64>)) -> (usize, usize) {
        use std::ops::Bound::*;
        let lo = match range.0 {
            Unbounded => 0,
            Included(v) => self.ids.partition_point(|x| *x < v),
            Excluded(v) => self.ids.partition_point(|x| *x <= v),
        };
        let hi = match range.1 {
            Unbounded => self.ids.len(),
            Included(v) => self.ids.partition_point(|x| *x <= v),
            Excluded(v) => self.ids.partition_point(|x| *x < v),
        };
        (lo, hi.max(lo))
    }
}

/// Everything a portal holds.
#[derive(Debug, Clone, Default)]
pub struct B24Data {
    /// Users by id.
    pub users: BTreeMap<u64, B24User>,
    /// Funnels by id.
    pub categories: BTreeMap<u64, B24Category>,
    /// Stages, by funnel, in sort order.
    pub stages: BTreeMap<u64, Vec<B24Stage>>,
    /// Contacts by id.
    pub contacts: Indexed<B24Contact>,
    /// Companies by id.
    pub companies: Indexed<B24Company>,
    /// Deals by id.
    pub deals: Indexed<B24Deal>,
    /// User fields of deals and contacts.
    pub user_fields: Vec<B24UserField>,
    /// Next id of a multi-field value, a product row, a task...
    pub next_id: u64,
    /// Product row index: row id -> deal id (for `crm.item.productrow.list`).
    pub product_rows: Indexed<u64>,
    /// Timeline activities (to-dos added with `crm.activity.todo.add`), by id.
    pub activities: BTreeMap<u64, B24Activity>,
}

/// A timeline activity (a to-do of `crm.activity.todo.add`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct B24Activity {
    /// `ID`.
    pub id: u64,
    /// `OWNER_TYPE_ID` (2 deal, 3 contact, 4 company).
    pub owner_type_id: u64,
    /// `OWNER_ID`.
    pub owner_id: u64,
    /// `SUBJECT` (the to-do's title).
    pub subject: String,
    /// `DESCRIPTION`.
    pub description: String,
    /// `DEADLINE` (unix s).
    pub deadline: i64,
    /// `RESPONSIBLE_ID`.
    pub responsible_id: u64,
    /// `CREATED` (unix s).
    pub created: i64,
    /// `COMPLETED` (`Y` when true).
    pub completed: bool,
    /// `LAST_UPDATED` (unix s).
    pub last_updated: i64,
}

/// The seeded multiple string user field of deals carrying the seed's tags.
pub const DEAL_TAGS_FIELD: &str = "UF_CRM_1700000000001";

const STAGE_CODES: &[&str] = &[
    "PREPARATION",
    "PREPAYMENT_INVOICE",
    "EXECUTING",
    "FINAL_INVOICE",
];

impl B24Data {
    /// Maps a generated dataset into a Bitrix24 portal.
    pub fn from_dataset(ds: &Dataset) -> Self {
        let mut data = B24Data {
            next_id: 1,
            ..Default::default()
        };
        let admin = ds
            .users
            .iter()
            .find(|u| u.is_admin)
            .or(ds.users.first())
            .map_or(1, |u| u.id);
        for u in &ds.users {
            let (name, last) = u.name.split_once(' ').unwrap_or((u.name.as_str(), ""));
            data.users.insert(
                u.id,
                B24User {
                    id: u.id,
                    name: name.to_owned(),
                    last_name: last.to_owned(),
                    email: u.email.clone(),
                    active: u.active,
                    is_admin: u.is_admin,
                },
            );
        }
        // Pipelines -> categories; seed stage id -> (category, code, semantic).
        let mut stage_map: BTreeMap<u64, (u64, String, &'static str)> = BTreeMap::new();
        let mut status_row = 1u64;
        let mut pipelines: Vec<_> = ds.pipelines.iter().collect();
        pipelines.sort_by_key(|p| (!p.is_main, p.sort, p.id));
        for (n, p) in pipelines.iter().enumerate() {
            let cat = n as u64;
            data.categories.insert(
                cat,
                B24Category {
                    id: cat,
                    name: p.name.clone(),
                    sort: 100 * (n as i64 + 1),
                    is_default: cat == 0,
                },
            );
            let prefix = if cat == 0 {
                String::new()
            } else {
                format!("C{cat}:")
            };
            let entity_id = if cat == 0 {
                "DEAL_STAGE".to_owned()
            } else {
                format!("DEAL_STAGE_{cat}")
            };
            let mut stages = Vec::new();
            let mut open_n = 0usize;
            let mut has_unsorted = p.stages.iter().any(|s| s.kind == StageKind::Unsorted);
            for s in &p.stages {
                let (code, sem) = match s.kind {
                    StageKind::Unsorted => ("NEW".to_owned(), "P"),
                    StageKind::Open if !has_unsorted => {
                        // The first stage of a funnel is always NEW.
                        has_unsorted = true;
                        ("NEW".to_owned(), "P")
                    }
                    StageKind::Open => {
                        let code = STAGE_CODES
                            .get(open_n)
                            .map_or_else(|| format!("UC_{open_n:06}"), |c| (*c).to_owned());
                        open_n += 1;
                        (code, "P")
                    }
                    StageKind::Won => ("WON".to_owned(), "S"),
                    StageKind::Lost => ("LOSE".to_owned(), "F"),
                };
                let status_id = format!("{prefix}{code}");
                stage_map.insert(s.id, (cat, status_id.clone(), sem));
                stages.push(B24Stage {
                    id: status_row,
                    entity_id: entity_id.clone(),
                    status_id,
                    name: s.name.clone(),
                    sort: 10 * (stages.len() as i64 + 1),
                    semantics: (sem != "P").then(|| sem.to_owned()),
                    color: s.color.clone(),
                    category_id: cat,
                });
                status_row += 1;
            }
            // Bitrix24 funnels always have a second failure stage.
            stages.push(B24Stage {
                id: status_row,
                entity_id: entity_id.clone(),
                status_id: format!("{prefix}APOLOGY"),
                name: "Анализ причины провала".into(),
                sort: 10 * (stages.len() as i64 + 1),
                semantics: Some("F".into()),
                color: "#FF5752".into(),
                category_id: cat,
            });
            status_row += 1;
            data.stages.insert(cat, stages);
        }
        for c in &ds.companies {
            let phones = data.multis(c.phones.iter().map(|p| (p.kind, p.raw.clone())), false);
            let emails = data.multis(c.emails.iter().map(|e| (e.kind, e.value.clone())), true);
            let web = c
                .web
                .iter()
                .map(|w| B24Multi {
                    id: data.take_id(),
                    value_type: "WORK".into(),
                    value: w.clone(),
                })
                .collect();
            data.companies.insert(
                c.id,
                B24Company {
                    id: c.id,
                    title: c.name.clone(),
                    assigned_by_id: c.responsible_user_id,
                    date_create: c.created_at.as_second(),
                    date_modify: c.updated_at.as_second(),
                    phones,
                    emails,
                    web,
                    uf: BTreeMap::new(),
                },
            );
        }
        for c in &ds.contacts {
            let phones = data.multis(c.phones.iter().map(|p| (p.kind, p.raw.clone())), false);
            let emails = data.multis(c.emails.iter().map(|e| (e.kind, e.value.clone())), true);
            let (name, last) = if c.first_name.is_empty() && c.last_name.is_empty() {
                (c.name.clone(), String::new())
            } else {
                (c.first_name.clone(), c.last_name.clone())
            };
            data.contacts.insert(
                c.id,
                B24Contact {
                    id: c.id,
                    name,
                    second_name: String::new(),
                    last_name: last,
                    company_id: c.company_id,
                    assigned_by_id: c.responsible_user_id,
                    created_by_id: admin,
                    modify_by_id: admin,
                    date_create: c.created_at.as_second(),
                    date_modify: c.updated_at.as_second(),
                    source_id: None,
                    phones,
                    emails,
                    uf: BTreeMap::new(),
                },
            );
        }
        let units: BTreeMap<u64, &str> = ds
            .products
            .iter()
            .map(|p| (p.id, p.unit.as_str()))
            .collect();
        data.user_fields.push(B24UserField {
            id: 1,
            entity: "deal".into(),
            field_name: DEAL_TAGS_FIELD.into(),
            user_type_id: "string".into(),
            label: "Теги".into(),
            multiple: true,
        });
        let mut won_contacts = std::collections::HashSet::new();
        for d in &ds.deals {
            let (cat, stage, sem) =
                stage_map
                    .get(&d.stage_id)
                    .cloned()
                    .unwrap_or((0, "NEW".into(), "P"));
            let closed = d.outcome != DealOutcome::Open;
            let closedate = midnight(
                d.closed_at
                    .map_or(d.created_at.as_second() + 7 * 86_400, |t| t.as_second()),
            );
            let products = d
                .products
                .iter()
                .map(|r| {
                    let id = data.take_id();
                    data.product_rows.insert(id, d.id);
                    B24ProductRow {
                        id,
                        product_id: r.product_id,
                        product_name: r.name.clone(),
                        price: Decimal::from(r.price),
                        quantity: Decimal::from(r.quantity),
                        measure_name: units.get(&r.product_id).copied().unwrap_or("шт").to_owned(),
                    }
                })
                .collect();
            let mut uf = BTreeMap::new();
            uf.insert(DEAL_TAGS_FIELD.to_owned(), json!(d.tags));
            let is_return = won_contacts.contains(&d.contact_id);
            if d.outcome == DealOutcome::Won {
                won_contacts.insert(d.contact_id);
            }
            data.deals.insert(
                d.id,
                B24Deal {
                    id: d.id,
                    title: d.name.clone(),
                    category_id: cat,
                    stage_id: stage,
                    stage_semantic_id: sem.to_owned(),
                    currency_id: "RUB".into(),
                    opportunity: Decimal::new(d.amount * 100, 2),
                    contact_id: Some(d.contact_id),
                    contact_ids: vec![d.contact_id],
                    company_id: d.company_id,
                    assigned_by_id: d.responsible_user_id,
                    created_by_id: d.responsible_user_id,
                    modify_by_id: d.responsible_user_id,
                    date_create: d.created_at.as_second(),
                    date_modify: d.updated_at.as_second(),
                    begindate: midnight(d.created_at.as_second()),
                    closedate,
                    closed,
                    is_return_customer: is_return,
                    is_repeated_approach: false,
                    source_id: d.source.as_ref().map(|s| source_code(s).to_owned()),
                    comments: String::new(),
                    moved_time: d.closed_at.unwrap_or(d.created_at).as_second(),
                    uf,
                    products,
                },
            );
        }
        data
    }

    /// A fresh id for a multi-field value, product row, task or activity.
    pub fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn multis(
        &mut self,
        items: impl Iterator<Item = (ContactKind, String)>,
        email: bool,
    ) -> Vec<B24Multi> {
        items
            .map(|(kind, value)| B24Multi {
                id: self.take_id(),
                value_type: value_type(kind, email).into(),
                value,
            })
            .collect()
    }

    /// The stage with code `status_id`, in any funnel.
    pub fn stage(&self, status_id: &str) -> Option<&B24Stage> {
        self.stages
            .values()
            .flatten()
            .find(|s| s.status_id == status_id)
    }

    /// The user field names of `entity` (`deal`, `contact`).
    pub fn uf_names(&self, entity: &str) -> Vec<String> {
        self.user_fields
            .iter()
            .filter(|f| f.entity == entity)
            .map(|f| f.field_name.clone())
            .collect()
    }
}

fn source_code(s: &str) -> &'static str {
    match s {
        "сайт" => "WEB",
        "звонок" => "CALL",
        "рекомендация" => "RECOMMENDATION",
        _ => "OTHER",
    }
}

fn value_type(kind: ContactKind, email: bool) -> &'static str {
    match (kind, email) {
        (ContactKind::Work, _) => "WORK",
        (ContactKind::Mobile, false) => "MOBILE",
        (ContactKind::Mobile, true) => "WORK",
        (ContactKind::Home, _) => "HOME",
        (ContactKind::Other, _) => "OTHER",
    }
}

/// Midnight (portal time) of the day of `t`: Bitrix24 `date` fields carry no time of day.
pub fn midnight(t: i64) -> i64 {
    let off = PORTAL_OFFSET_HOURS as i64 * 3600;
    (t + off).div_euclid(86_400) * 86_400 - off
}

/// `2024-08-30T14:29:00+03:00` in the portal's zone.
pub fn iso(t: i64) -> String {
    let off = jiff::tz::offset(PORTAL_OFFSET_HOURS);
    match jiff::Timestamp::from_second(t) {
        Ok(ts) => ts
            .to_zoned(jiff::tz::TimeZone::fixed(off))
            .strftime("%Y-%m-%dT%H:%M:%S%:z")
            .to_string(),
        Err(_) => String::new(),
    }
}

/// Parses a filter datetime: RFC 3339 with offset, or a local `YYYY-MM-DD[THH:MM[:SS]]` in
/// the portal's zone.
pub fn parse_time(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Ok(ts) = s.parse::<jiff::Timestamp>() {
        return Some(ts.as_second());
    }
    let off = jiff::tz::TimeZone::fixed(jiff::tz::offset(PORTAL_OFFSET_HOURS));
    if let Ok(dt) = s.replace(' ', "T").parse::<jiff::civil::DateTime>() {
        return dt.to_zoned(off).ok().map(|z| z.timestamp().as_second());
    }
    if let Ok(d) = s.parse::<jiff::civil::Date>() {
        return d.to_zoned(off).ok().map(|z| z.timestamp().as_second());
    }
    None
}

fn yn(b: bool) -> Value {
    Value::String(if b { "Y" } else { "N" }.into())
}

fn id_or_null(v: Option<u64>) -> Value {
    v.map_or(Value::Null, |v| Value::String(v.to_string()))
}

fn money(d: &Decimal) -> String {
    let mut d = *d;
    d.rescale(2);
    d.to_string()
}

fn multi_json(items: &[B24Multi], type_id: &str) -> Value {
    Value::Array(
        items
            .iter()
            .map(|m| json!({"ID": m.id.to_string(), "VALUE_TYPE": m.value_type, "VALUE": m.value, "TYPE_ID": type_id}))
            .collect(),
    )
}

/// What a list method needs of an entity.
pub trait Entity {
    /// Standard fields (the `*` mask) with their kinds.
    const FIELDS: &'static [(&'static str, Kind)];
    /// Multi-fields this entity has (selected only by name).
    const MULTI: &'static [&'static str];
    /// `deal`, `contact`, `company`.
    const NAME: &'static str;
    /// The id.
    fn id(&self) -> u64;
    /// One field on the wire; `None` for an unknown field.
    fn render(&self, field: &str) -> Option<Value>;
    /// One field as a comparable key.
    fn key(&self, field: &str) -> Key;
    /// User field values.
    fn uf(&self) -> &BTreeMap<String, Value>;
}

/// The kind of `field` of entity `E` (`UF_*` and unknown fields compare as text).
pub fn kind_of<E: Entity>(field: &str) -> Kind {
    E::FIELDS
        .iter()
        .find(|(n, _)| *n == field)
        .map_or(Kind::Str, |(_, k)| *k)
}

fn uf_key(uf: &BTreeMap<String, Value>, field: &str) -> Key {
    match uf.get(field) {
        None | Some(Value::Null) => Key::Null,
        Some(Value::Array(a)) => Key::Many(a.iter().map(value_text).collect()),
        Some(v) => Key::Str(value_text(v)),
    }
}

/// A JSON scalar as text (`"x"` -> `x`, `5` -> `5`).
pub fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Bool(b) => if *b { "Y" } else { "N" }.into(),
        other => other.to_string(),
    }
}

impl Entity for B24Deal {
    const FIELDS: &'static [(&'static str, Kind)] = &[
        ("ID", Kind::Int),
        ("TITLE", Kind::Str),
        ("TYPE_ID", Kind::Str),
        ("STAGE_ID", Kind::Str),
        ("PROBABILITY", Kind::Int),
        ("CURRENCY_ID", Kind::Str),
        ("OPPORTUNITY", Kind::Money),
        ("IS_MANUAL_OPPORTUNITY", Kind::Str),
        ("TAX_VALUE", Kind::Money),
        ("LEAD_ID", Kind::Int),
        ("COMPANY_ID", Kind::Int),
        ("CONTACT_ID", Kind::Int),
        ("QUOTE_ID", Kind::Int),
        ("BEGINDATE", Kind::Time),
        ("CLOSEDATE", Kind::Time),
        ("ASSIGNED_BY_ID", Kind::Int),
        ("CREATED_BY_ID", Kind::Int),
        ("MODIFY_BY_ID", Kind::Int),
        ("DATE_CREATE", Kind::Time),
        ("DATE_MODIFY", Kind::Time),
        ("OPENED", Kind::Str),
        ("CLOSED", Kind::Str),
        ("COMMENTS", Kind::Str),
        ("ADDITIONAL_INFO", Kind::Str),
        ("LOCATION_ID", Kind::Str),
        ("CATEGORY_ID", Kind::Int),
        ("STAGE_SEMANTIC_ID", Kind::Str),
        ("IS_NEW", Kind::Str),
        ("IS_RECURRING", Kind::Str),
        ("IS_RETURN_CUSTOMER", Kind::Str),
        ("IS_REPEATED_APPROACH", Kind::Str),
        ("SOURCE_ID", Kind::Str),
        ("SOURCE_DESCRIPTION", Kind::Str),
        ("ORIGINATOR_ID", Kind::Str),
        ("ORIGIN_ID", Kind::Str),
        ("MOVED_BY_ID", Kind::Int),
        ("MOVED_TIME", Kind::Time),
        ("LAST_ACTIVITY_TIME", Kind::Time),
        ("LAST_ACTIVITY_BY", Kind::Int),
        ("UTM_SOURCE", Kind::Str),
        ("UTM_MEDIUM", Kind::Str),
        ("UTM_CAMPAIGN", Kind::Str),
        ("UTM_CONTENT", Kind::Str),
        ("UTM_TERM", Kind::Str),
    ];
    const MULTI: &'static [&'static str] = &[];
    const NAME: &'static str = "deal";

    fn id(&self) -> u64 {
        self.id
    }

    fn render(&self, field: &str) -> Option<Value> {
        let s = |v: &str| Value::String(v.to_owned());
        Some(match field {
            "ID" => s(&self.id.to_string()),
            "TITLE" => s(&self.title),
            "TYPE_ID" => s("SALE"),
            "STAGE_ID" => s(&self.stage_id),
            "PROBABILITY" => Value::Null,
            "CURRENCY_ID" => s(&self.currency_id),
            "OPPORTUNITY" => s(&money(&self.opportunity)),
            "IS_MANUAL_OPPORTUNITY" => yn(self.products.is_empty()),
            "TAX_VALUE" => s("0.00"),
            "LEAD_ID" | "QUOTE_ID" | "LOCATION_ID" | "ADDITIONAL_INFO" | "SOURCE_DESCRIPTION"
            | "ORIGINATOR_ID" | "ORIGIN_ID" | "UTM_SOURCE" | "UTM_MEDIUM" | "UTM_CAMPAIGN"
            | "UTM_CONTENT" | "UTM_TERM" => Value::Null,
            "COMPANY_ID" => id_or_null(self.company_id),
            "CONTACT_ID" => id_or_null(self.contact_id),
            "BEGINDATE" => s(&iso(self.begindate)),
            "CLOSEDATE" => s(&iso(self.closedate)),
            "ASSIGNED_BY_ID" => s(&self.assigned_by_id.to_string()),
            "CREATED_BY_ID" => s(&self.created_by_id.to_string()),
            "MODIFY_BY_ID" | "MOVED_BY_ID" | "LAST_ACTIVITY_BY" => {
                s(&self.modify_by_id.to_string())
            }
            "DATE_CREATE" => s(&iso(self.date_create)),
            "DATE_MODIFY" => s(&iso(self.date_modify)),
            "OPENED" => s("Y"),
            "CLOSED" => yn(self.closed),
            "COMMENTS" => s(&self.comments),
            "CATEGORY_ID" => s(&self.category_id.to_string()),
            "STAGE_SEMANTIC_ID" => s(&self.stage_semantic_id),
            "IS_NEW" => yn(self.stage_id.ends_with("NEW") && !self.closed),
            "IS_RECURRING" => s("N"),
            "IS_RETURN_CUSTOMER" => yn(self.is_return_customer),
            "IS_REPEATED_APPROACH" => yn(self.is_repeated_approach),
            "SOURCE_ID" => self.source_id.as_deref().map_or(Value::Null, s),
            "MOVED_TIME" => s(&iso(self.moved_time)),
            "LAST_ACTIVITY_TIME" => s(&iso(self.date_modify)),
            f if f.starts_with("UF_") => self.uf.get(f).cloned().unwrap_or(Value::Null),
            _ => return None,
        })
    }

    fn key(&self, field: &str) -> Key {
        match field {
            "ID" => Key::Int(self.id as i64),
            "OPPORTUNITY" => Key::Dec(self.opportunity),
            "CATEGORY_ID" => Key::Int(self.category_id as i64),
            "CONTACT_ID" => self.contact_id.map_or(Key::Null, |v| Key::Int(v as i64)),
            "COMPANY_ID" => self.company_id.map_or(Key::Null, |v| Key::Int(v as i64)),
            "ASSIGNED_BY_ID" => Key::Int(self.assigned_by_id as i64),
            "DATE_CREATE" => Key::Int(self.date_create),
            "DATE_MODIFY" => Key::Int(self.date_modify),
            "CLOSEDATE" => Key::Int(self.closedate),
            "BEGINDATE" => Key::Int(self.begindate),
            "MOVED_TIME" => Key::Int(self.moved_time),
            f if f.starts_with("UF_") => uf_key(&self.uf, f),
            f => match self.render(f) {
                Some(Value::Null) | None => Key::Null,
                Some(v) => Key::Str(value_text(&v)),
            },
        }
    }

    fn uf(&self) -> &BTreeMap<String, Value> {
        &self.uf
    }
}

impl Entity for B24Contact {
    const FIELDS: &'static [(&'static str, Kind)] = &[
        ("ID", Kind::Int),
        ("POST", Kind::Str),
        ("COMMENTS", Kind::Str),
        ("HONORIFIC", Kind::Str),
        ("NAME", Kind::Str),
        ("SECOND_NAME", Kind::Str),
        ("LAST_NAME", Kind::Str),
        ("PHOTO", Kind::Str),
        ("LEAD_ID", Kind::Int),
        ("TYPE_ID", Kind::Str),
        ("SOURCE_ID", Kind::Str),
        ("SOURCE_DESCRIPTION", Kind::Str),
        ("COMPANY_ID", Kind::Int),
        ("BIRTHDATE", Kind::Time),
        ("EXPORT", Kind::Str),
        ("HAS_PHONE", Kind::Str),
        ("HAS_EMAIL", Kind::Str),
        ("HAS_IMOL", Kind::Str),
        ("DATE_CREATE", Kind::Time),
        ("DATE_MODIFY", Kind::Time),
        ("ASSIGNED_BY_ID", Kind::Int),
        ("CREATED_BY_ID", Kind::Int),
        ("MODIFY_BY_ID", Kind::Int),
        ("OPENED", Kind::Str),
        ("ORIGINATOR_ID", Kind::Str),
        ("ORIGIN_ID", Kind::Str),
        ("LAST_ACTIVITY_TIME", Kind::Time),
        ("LAST_ACTIVITY_BY", Kind::Int),
    ];
    const MULTI: &'static [&'static str] = &["PHONE", "EMAIL"];
    const NAME: &'static str = "contact";

    fn id(&self) -> u64 {
        self.id
    }

    fn render(&self, field: &str) -> Option<Value> {
        let s = |v: &str| Value::String(v.to_owned());
        Some(match field {
            "ID" => s(&self.id.to_string()),
            "NAME" => s(&self.name),
            "SECOND_NAME" => s(&self.second_name),
            "LAST_NAME" => s(&self.last_name),
            "POST" | "COMMENTS" => s(""),
            "HONORIFIC" | "PHOTO" | "LEAD_ID" | "SOURCE_DESCRIPTION" | "BIRTHDATE"
            | "ORIGINATOR_ID" | "ORIGIN_ID" => Value::Null,
            "TYPE_ID" => s("CLIENT"),
            "SOURCE_ID" => self.source_id.as_deref().map_or(Value::Null, s),
            "COMPANY_ID" => id_or_null(self.company_id),
            "EXPORT" | "OPENED" => s("Y"),
            "HAS_PHONE" => yn(!self.phones.is_empty()),
            "HAS_EMAIL" => yn(!self.emails.is_empty()),
            "HAS_IMOL" => s("N"),
            "DATE_CREATE" => s(&iso(self.date_create)),
            "DATE_MODIFY" | "LAST_ACTIVITY_TIME" => s(&iso(self.date_modify)),
            "ASSIGNED_BY_ID" => s(&self.assigned_by_id.to_string()),
            "CREATED_BY_ID" => s(&self.created_by_id.to_string()),
            "MODIFY_BY_ID" | "LAST_ACTIVITY_BY" => s(&self.modify_by_id.to_string()),
            "PHONE" => multi_json(&self.phones, "PHONE"),
            "EMAIL" => multi_json(&self.emails, "EMAIL"),
            f if f.starts_with("UF_") => self.uf.get(f).cloned().unwrap_or(Value::Null),
            _ => return None,
        })
    }

    fn key(&self, field: &str) -> Key {
        match field {
            "ID" => Key::Int(self.id as i64),
            "COMPANY_ID" => self.company_id.map_or(Key::Null, |v| Key::Int(v as i64)),
            "ASSIGNED_BY_ID" => Key::Int(self.assigned_by_id as i64),
            "DATE_CREATE" => Key::Int(self.date_create),
            "DATE_MODIFY" => Key::Int(self.date_modify),
            "PHONE" => Key::Many(self.phones.iter().map(|m| m.value.clone()).collect()),
            "EMAIL" => Key::Many(self.emails.iter().map(|m| m.value.clone()).collect()),
            f if f.starts_with("UF_") => uf_key(&self.uf, f),
            f => match self.render(f) {
                Some(Value::Null) | None => Key::Null,
                Some(v) => Key::Str(value_text(&v)),
            },
        }
    }

    fn uf(&self) -> &BTreeMap<String, Value> {
        &self.uf
    }
}

impl Entity for B24Company {
    const FIELDS: &'static [(&'static str, Kind)] = &[
        ("ID", Kind::Int),
        ("TITLE", Kind::Str),
        ("COMPANY_TYPE", Kind::Str),
        ("INDUSTRY", Kind::Str),
        ("HAS_PHONE", Kind::Str),
        ("HAS_EMAIL", Kind::Str),
        ("ASSIGNED_BY_ID", Kind::Int),
        ("CREATED_BY_ID", Kind::Int),
        ("MODIFY_BY_ID", Kind::Int),
        ("DATE_CREATE", Kind::Time),
        ("DATE_MODIFY", Kind::Time),
        ("OPENED", Kind::Str),
        ("COMMENTS", Kind::Str),
    ];
    const MULTI: &'static [&'static str] = &["PHONE", "EMAIL", "WEB"];
    const NAME: &'static str = "company";

    fn id(&self) -> u64 {
        self.id
    }

    fn render(&self, field: &str) -> Option<Value> {
        let s = |v: &str| Value::String(v.to_owned());
        Some(match field {
            "ID" => s(&self.id.to_string()),
            "TITLE" => s(&self.title),
            "COMPANY_TYPE" => s("CUSTOMER"),
            "INDUSTRY" => s("OTHER"),
            "HAS_PHONE" => yn(!self.phones.is_empty()),
            "HAS_EMAIL" => yn(!self.emails.is_empty()),
            "ASSIGNED_BY_ID" | "CREATED_BY_ID" | "MODIFY_BY_ID" => {
                s(&self.assigned_by_id.to_string())
            }
            "DATE_CREATE" => s(&iso(self.date_create)),
            "DATE_MODIFY" => s(&iso(self.date_modify)),
            "OPENED" => s("Y"),
            "COMMENTS" => s(""),
            "PHONE" => multi_json(&self.phones, "PHONE"),
            "EMAIL" => multi_json(&self.emails, "EMAIL"),
            "WEB" => multi_json(&self.web, "WEB"),
            f if f.starts_with("UF_") => self.uf.get(f).cloned().unwrap_or(Value::Null),
            _ => return None,
        })
    }

    fn key(&self, field: &str) -> Key {
        match field {
            "ID" => Key::Int(self.id as i64),
            "ASSIGNED_BY_ID" => Key::Int(self.assigned_by_id as i64),
            "DATE_CREATE" => Key::Int(self.date_create),
            "DATE_MODIFY" => Key::Int(self.date_modify),
            "PHONE" => Key::Many(self.phones.iter().map(|m| m.value.clone()).collect()),
            "EMAIL" => Key::Many(self.emails.iter().map(|m| m.value.clone()).collect()),
            f if f.starts_with("UF_") => uf_key(&self.uf, f),
            f => match self.render(f) {
                Some(Value::Null) | None => Key::Null,
                Some(v) => Key::Str(value_text(&v)),
            },
        }
    }

    fn uf(&self) -> &BTreeMap<String, Value> {
        &self.uf
    }
}

/// A product row as `crm.deal.productrows.get` sends it (mixed number/string types).
pub fn product_row_json(deal_id: u64, r: &B24ProductRow, sort: usize) -> Value {
    json!({
        "ID": r.id.to_string(),
        "OWNER_ID": deal_id.to_string(),
        "OWNER_TYPE": "D",
        "PRODUCT_ID": r.product_id,
        "PRODUCT_NAME": r.product_name,
        "PRICE": dec_num(&r.price),
        "PRICE_EXCLUSIVE": dec_num(&r.price),
        "PRICE_NETTO": dec_num(&r.price),
        "PRICE_BRUTTO": dec_num(&r.price),
        "PRICE_ACCOUNT": money(&r.price),
        "QUANTITY": dec_num(&r.quantity),
        "DISCOUNT_TYPE_ID": 2,
        "DISCOUNT_RATE": 0,
        "DISCOUNT_SUM": 0,
        "TAX_RATE": null,
        "TAX_INCLUDED": "Y",
        "CUSTOMIZED": "Y",
        "MEASURE_CODE": 796,
        "MEASURE_NAME": r.measure_name,
        "SORT": 10 * (sort + 1),
    })
}

/// A product row as `crm.item.productrow.list` sends it (camelCase, numbers).
pub fn item_product_row_json(deal_id: u64, r: &B24ProductRow, sort: usize) -> Value {
    json!({
        "id": r.id,
        "ownerId": deal_id,
        "ownerType": "D",
        "productId": r.product_id,
        "productName": r.product_name,
        "price": dec_num(&r.price),
        "priceExclusive": dec_num(&r.price),
        "priceNetto": dec_num(&r.price),
        "priceBrutto": dec_num(&r.price),
        "quantity": dec_num(&r.quantity),
        "discountTypeId": 2,
        "discountRate": 0,
        "discountSum": 0,
        "taxRate": null,
        "taxIncluded": "Y",
        "measureCode": 796,
        "measureName": r.measure_name,
        "sort": 10 * (sort + 1),
    })
}

/// A decimal as a JSON number (integers stay integers; the emulator's prices are whole, so no
/// binary fraction is ever produced from money).
fn dec_num(d: &Decimal) -> Value {
    let n = d.normalize();
    if n.scale() == 0
        && let Ok(i) = n.to_string().parse::<i64>()
    {
        return Value::from(i);
    }
    n.to_string()
        .parse::<serde_json::Number>()
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_render_with_offset_and_parse_back() {
        assert_eq!(iso(1_772_355_600), "2026-03-01T12:00:00+03:00");
        assert_eq!(parse_time("2026-03-01T12:00:00+03:00"), Some(1_772_355_600));
        assert_eq!(parse_time("2026-03-01"), Some(midnight(1_772_355_600)));
        assert_eq!(iso(midnight(1_772_355_600)), "2026-03-01T00:00:00+03:00");
    }

    #[test]
    fn money_has_two_decimals() {
        assert_eq!(money(&Decimal::new(1999900, 2)), "19999.00");
        assert_eq!(money(&Decimal::from(0)), "0.00");
    }
}
