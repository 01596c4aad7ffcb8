//! The compact, streamed projection of a portal's cache that the analytics run on, and the
//! identity resolution (union-find) that turns contacts and companies into customers.
//!
//! The sidecar streams contacts, companies and deals out of its redb cache into a
//! [`DatasetBuilder`] in any order; the builder keeps only what the rules need (ids, normalised
//! phones and emails as 64-bit hashes for the union-find, a display name and contact details for
//! export, and per deal its customer ids, times as unix seconds, state, interned pipeline and
//! stage, amount and currency, and product quantities only for rows a consumption rule matches).
//! [`DatasetBuilder::build`] resolves identities and sorts deals by customer, so
//! [`super::analyse`] and [`super::classify_deal`] read each customer's deals as one slice.
#![allow(clippy::needless_range_loop)] // index loops over small fixed arrays read clearer
use super::settings::{AmountSource, Mode, Settings};
use rebuy_core::phone::normalize_email;
use rebuy_core::{Company, CompanyId, Contact, ContactId, Deal, DealState};
use rust_decimal::Decimal;
use serde::{Serialize, Serializer};
use std::collections::HashMap;
use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};

/// A customer's stable key: the smallest company id of the group (B2B) or the smallest contact
/// id. Rendered `company:45` / `contact:123`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CustomerKey {
    /// A group of contacts (B2C), named by its smallest contact id.
    Contact(ContactId),
    /// A company group (B2B, or a deal with a company and no contact), named by its smallest
    /// company id.
    Company(CompanyId),
}

impl fmt::Display for CustomerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CustomerKey::Contact(id) => write!(f, "contact:{id}"),
            CustomerKey::Company(id) => write!(f, "company:{id}"),
        }
    }
}

impl Serialize for CustomerKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Sentinel for "no id" in the compact records.
pub(crate) const NONE: u32 = u32::MAX;

/// One contact or company (a node of the union-find).
#[derive(Debug, Clone)]
pub(crate) struct NodeRec {
    /// Contact id or company id.
    pub id: u64,
    pub is_company: bool,
    /// Known to the cache (false: only referenced by a deal).
    pub known: bool,
    pub name: Box<str>,
    /// Phones for display: E.164 when normalisable, else the raw text.
    pub phones: Box<[Box<str>]>,
    pub emails: Box<[Box<str>]>,
    /// Creation time, unix seconds (`i64::MAX` when unknown).
    pub created_at: i64,
    /// The contact's company id (contacts only).
    pub company: Option<u64>,
}

/// The compact record of one deal.
#[derive(Debug, Clone)]
pub(crate) struct DealRec {
    pub id: u64,
    pub created_at: i64,
    /// Close time, unix seconds; `i64::MIN` while open.
    pub closed_at: i64,
    /// Amount in `currency` (meaningful when `has_amount`).
    pub amount: Decimal,
    /// Customer group index after build (`NONE`: no contact and no company).
    pub group: u32,
    /// Interned pipeline id.
    pub pipeline: u32,
    /// Interned stage id.
    pub stage: u32,
    /// Interned currency code (`NONE` when the amount has none).
    pub currency: u32,
    /// Index into `Dataset::consumption` (`NONE` when no rule matched a row).
    pub consumption: u32,
    pub state: DealState,
    /// The CRM has an amount for the deal.
    pub has_amount: bool,
}

impl DealRec {
    /// The amount, `None` when the CRM has none.
    pub(crate) fn amount(&self) -> Option<Decimal> {
        self.has_amount.then_some(self.amount)
    }
}

/// Deals are kept in chunks while streaming so that growing the store never copies (and
/// briefly doubles) all of it; `build` moves them into one exact-size vector.
const DEAL_CHUNK: usize = 1 << 20;

/// One customer: a union-find group of contacts and companies.
#[derive(Debug, Clone)]
pub(crate) struct Group {
    pub key: CustomerKey,
    /// Range into `Dataset::members`.
    pub members: (u32, u32),
    /// Range into `Dataset::deals`.
    pub deals: (u32, u32),
    /// Earliest creation time of a known member, unix seconds.
    pub first_seen: i64,
}

/// A group of contacts (and companies) merged into one customer, for integrators who clean
/// duplicates.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MergedGroup {
    /// The customer key.
    pub customer: CustomerKey,
    /// Every contact of the group.
    pub contact_ids: Vec<ContactId>,
    /// Every company of the group.
    pub company_ids: Vec<CompanyId>,
    /// Phones (E.164) found on more than one member: the reason for the merge.
    pub shared_phones: Vec<String>,
    /// Emails found on more than one member.
    pub shared_emails: Vec<String>,
}

/// The portal's contacts, companies and deals, projected and identity-resolved.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub(crate) mode: Mode,
    pub(crate) nodes: Vec<NodeRec>,
    pub(crate) node_group: Vec<u32>,
    pub(crate) contact_index: HashMap<u64, u32>,
    pub(crate) company_index: HashMap<u64, u32>,
    pub(crate) groups: Vec<Group>,
    pub(crate) members: Vec<u32>,
    /// Sorted by (group, created_at, id); deals without a customer at the end.
    pub(crate) deals: Vec<DealRec>,
    pub(crate) stages: Vec<String>,
    pub(crate) stage_index: HashMap<String, u32>,
    /// Interned pipeline ids.
    pub(crate) pipelines: Vec<u64>,
    pub(crate) currencies: Vec<String>,
    /// Per matching deal: (consumption rule index, quantity).
    pub(crate) consumption: Vec<Vec<(u16, Decimal)>>,
    pub(crate) merged: Vec<MergedGroup>,
}

impl Dataset {
    /// The pipeline ids the deals use, in first-seen order.
    pub fn pipeline_ids(&self) -> &[u64] {
        &self.pipelines
    }

    /// The stage ids the deals use, in first-seen order.
    pub fn stage_ids(&self) -> &[String] {
        &self.stages
    }

    /// Number of customers (identity groups), buyers or not.
    pub fn customer_count(&self) -> usize {
        self.groups.len()
    }

    /// Number of deals.
    pub fn deal_count(&self) -> usize {
        self.deals.len()
    }

    /// Contact groups that were merged (more than one contact or company).
    pub fn merged_groups(&self) -> &[MergedGroup] {
        &self.merged
    }

    /// The customer a contact belongs to.
    pub fn customer_of_contact(&self, id: ContactId) -> Option<CustomerKey> {
        let n = *self.contact_index.get(&id.0)?;
        self.groups
            .get(self.node_group[n as usize] as usize)
            .map(|g| g.key)
    }

    /// The group of a deal's customer, following the mode's rule.
    pub(crate) fn group_of(
        &self,
        contact: Option<ContactId>,
        company: Option<CompanyId>,
    ) -> Option<u32> {
        let by_contact = || {
            contact
                .and_then(|c| self.contact_index.get(&c.0))
                .map(|&n| self.node_group[n as usize])
        };
        let by_company = || {
            company
                .and_then(|c| self.company_index.get(&c.0))
                .map(|&n| self.node_group[n as usize])
        };
        match self.mode {
            Mode::B2c => by_contact().or_else(by_company),
            Mode::B2b => by_company().or_else(by_contact),
        }
    }

    pub(crate) fn group_deals(&self, g: u32) -> &[DealRec] {
        let (a, b) = self.groups[g as usize].deals;
        &self.deals[a as usize..b as usize]
    }

    pub(crate) fn group_members(&self, g: u32) -> impl Iterator<Item = &NodeRec> {
        let (a, b) = self.groups[g as usize].members;
        self.members[a as usize..b as usize]
            .iter()
            .map(|&n| &self.nodes[n as usize])
    }
}

/// Streams contacts, companies and deals (any order) into a [`Dataset`].
pub struct DatasetBuilder {
    mode: Mode,
    amount_source: AmountSource,
    /// Lower-cased name substrings / product ids of the consumption rules.
    rules: Vec<(Option<String>, Option<u64>)>,
    nodes: Vec<NodeRec>,
    contact_index: HashMap<u64, u32>,
    company_index: HashMap<u64, u32>,
    /// (hash of a normalised phone or email, key space, node).
    keys: Vec<(u64, u32)>,
    deals: Vec<Vec<DealRec>>,
    /// Per deal (same order as streamed): the contact node and company node it points at.
    links: Vec<(u32, u32)>,
    stages: Vec<String>,
    stage_index: HashMap<String, u32>,
    pipelines: Vec<u64>,
    pipeline_index: HashMap<u64, u32>,
    currencies: Vec<String>,
    consumption: Vec<Vec<(u16, Decimal)>>,
}

fn key_hash(kind: u8, space: u8, s: &str) -> u64 {
    // SipHash with fixed keys: deterministic across runs. 64 bits make a collision between two
    // different phones of one portal practically impossible (1e-7 for 1M keys).
    let mut h = DefaultHasher::new();
    kind.hash(&mut h);
    space.hash(&mut h);
    s.hash(&mut h);
    h.finish()
}

fn ts(t: jiff::Timestamp) -> i64 {
    t.as_second()
}

impl DatasetBuilder {
    /// A builder for one portal. Uses `settings.mode`, `settings.amount_source` and
    /// `settings.consumption` (the rest of the settings is applied by [`super::analyse`]).
    pub fn new(settings: &Settings) -> Self {
        Self {
            mode: settings.mode,
            amount_source: settings.amount_source,
            rules: settings
                .consumption
                .iter()
                .map(|r| {
                    (
                        r.product.as_ref().map(|p| p.trim().to_lowercase()),
                        r.product_id,
                    )
                })
                .collect(),
            nodes: Vec::new(),
            contact_index: HashMap::new(),
            company_index: HashMap::new(),
            keys: Vec::new(),
            deals: Vec::new(),
            links: Vec::new(),
            stages: Vec::new(),
            stage_index: HashMap::new(),
            pipelines: Vec::new(),
            pipeline_index: HashMap::new(),
            currencies: Vec::new(),
            consumption: Vec::new(),
        }
    }

    fn node(&mut self, id: u64, is_company: bool) -> u32 {
        let index = if is_company {
            &mut self.company_index
        } else {
            &mut self.contact_index
        };
        if let Some(&n) = index.get(&id) {
            return n;
        }
        let n = self.nodes.len() as u32;
        index.insert(id, n);
        self.nodes.push(NodeRec {
            id,
            is_company,
            known: false,
            name: "".into(),
            phones: Box::new([]),
            emails: Box::new([]),
            created_at: i64::MAX,
            company: None,
        });
        n
    }

    fn fill(
        &mut self,
        n: u32,
        name: &str,
        phones: &[rebuy_core::phone::Phone],
        emails: &[String],
        created: i64,
    ) {
        let space = u8::from(self.nodes[n as usize].is_company);
        let mut ph: Vec<Box<str>> = Vec::with_capacity(phones.len());
        for p in phones {
            match &p.e164 {
                Some(e) => {
                    self.keys.push((key_hash(0, space, e), n));
                    if !ph.iter().any(|x| &**x == e) {
                        ph.push(e.as_str().into());
                    }
                }
                None if !p.raw.trim().is_empty() => ph.push(p.raw.trim().into()),
                None => {}
            }
        }
        let mut em: Vec<Box<str>> = Vec::with_capacity(emails.len());
        for e in emails {
            if let Some(e) = normalize_email(e) {
                self.keys.push((key_hash(1, space, &e), n));
                if !em.iter().any(|x| **x == *e) {
                    em.push(e.into());
                }
            }
        }
        let rec = &mut self.nodes[n as usize];
        rec.known = true;
        rec.name = name.trim().into();
        rec.phones = ph.into();
        rec.emails = em.into();
        rec.created_at = created;
    }

    /// Adds a contact.
    pub fn add_contact(&mut self, c: &Contact) {
        let n = self.node(c.id.0, false);
        self.fill(n, &c.name, &c.phones, &c.emails, ts(c.created_at));
        self.nodes[n as usize].company = c.company_id.map(|x| x.0);
    }

    /// Adds a company.
    pub fn add_company(&mut self, c: &Company) {
        let n = self.node(c.id.0, true);
        self.fill(n, &c.name, &c.phones, &c.emails, ts(c.created_at));
    }

    fn intern(list: &mut Vec<String>, index: Option<&mut HashMap<String, u32>>, s: &str) -> u32 {
        match index {
            Some(index) => {
                if let Some(&i) = index.get(s) {
                    return i;
                }
                let i = list.len() as u32;
                index.insert(s.to_owned(), i);
                list.push(s.to_owned());
                i
            }
            None => match list.iter().position(|x| x == s) {
                Some(i) => i as u32,
                None => {
                    list.push(s.to_owned());
                    (list.len() - 1) as u32
                }
            },
        }
    }

    /// Adds a deal. Adding a deal id twice keeps both; the cache holds each deal once.
    pub fn add_deal(&mut self, d: &Deal) {
        let contact = d.main_contact_id.or_else(|| d.contact_ids.first().copied());
        let contact_node = contact.map_or(NONE, |c| self.node(c.0, false));
        let company_node = d.company_id.map_or(NONE, |c| self.node(c.0, true));
        let stage = Self::intern(&mut self.stages, Some(&mut self.stage_index), &d.stage_id.0);
        let (mut amount, currency) = match &d.amount {
            Some(m) => (
                Some(m.amount),
                Self::intern(&mut self.currencies, None, &m.currency.0),
            ),
            None => (None, NONE),
        };
        if self.amount_source == AmountSource::Products && !d.products.is_empty() {
            // Product rows carry no currency: the deal's, else the portal currency, is assumed.
            amount = Some(d.products.iter().map(|p| p.price * p.quantity).sum());
        }
        let pipeline = match self.pipeline_index.get(&d.pipeline_id.0) {
            Some(&i) => i,
            None => {
                let i = self.pipelines.len() as u32;
                self.pipeline_index.insert(d.pipeline_id.0, i);
                self.pipelines.push(d.pipeline_id.0);
                i
            }
        };
        let mut consumption = NONE;
        if !self.rules.is_empty() && d.state != DealState::Lost {
            let mut hits: Vec<(u16, Decimal)> = Vec::new();
            for row in &d.products {
                let lname = row.name.to_lowercase();
                for (i, (name, pid)) in self.rules.iter().enumerate() {
                    let by_id = pid.is_some() && *pid == row.product_id;
                    let by_name = name
                        .as_ref()
                        .is_some_and(|n| !n.is_empty() && lname.contains(n.as_str()));
                    if by_id || by_name {
                        hits.push((i as u16, row.quantity));
                        break;
                    }
                }
            }
            if !hits.is_empty() {
                consumption = self.consumption.len() as u32;
                self.consumption.push(hits);
            }
        }
        if self.deals.last().is_none_or(|c| c.len() == DEAL_CHUNK) {
            self.deals.push(Vec::with_capacity(DEAL_CHUNK));
        }
        self.deals.last_mut().expect("a chunk").push(DealRec {
            id: d.id.0,
            created_at: ts(d.created_at),
            closed_at: d.closed_at.map_or(i64::MIN, ts),
            amount: amount.unwrap_or_default(),
            group: NONE,
            pipeline,
            stage,
            currency,
            consumption,
            state: d.state,
            has_amount: amount.is_some(),
        });
        self.links.push((contact_node, company_node));
    }

    /// Resolves identities and indexes deals by customer.
    pub fn build(self) -> Dataset {
        let DatasetBuilder {
            mode,
            mut nodes,
            contact_index,
            company_index,
            mut keys,
            deals: chunks,
            links,
            stages,
            stage_index,
            pipelines,
            currencies,
            consumption,
            ..
        } = self;
        let n = nodes.len();
        let mut uf = UnionFind::new(n);
        // In B2B a contact with a company belongs to it, and its own phones do not merge
        // companies (a shared accountant must not merge two clients).
        let attached =
            |node: &NodeRec| mode == Mode::B2b && !node.is_company && node.company.is_some();
        if mode == Mode::B2b {
            for i in 0..n {
                if let Some(co) = nodes[i].company.filter(|_| !nodes[i].is_company)
                    && let Some(&cn) = company_index.get(&co)
                {
                    uf.union(i as u32, cn);
                }
            }
        }
        keys.retain(|&(_, node)| !attached(&nodes[node as usize]));
        keys.sort_unstable();
        for w in keys.windows(2) {
            if w[0].0 == w[1].0 {
                uf.union(w[0].1, w[1].1);
            }
        }
        // Dense group numbers in order of each group's smallest node: deterministic.
        let mut node_group = vec![NONE; n];
        let mut roots_group: Vec<u32> = vec![NONE; n];
        let mut group_count = 0u32;
        for i in 0..n {
            let r = uf.find(i as u32) as usize;
            if roots_group[r] == NONE {
                roots_group[r] = group_count;
                group_count += 1;
            }
            node_group[i] = roots_group[r];
        }
        drop(roots_group);
        // Members by group (counting sort).
        let mut starts = vec![0u32; group_count as usize + 1];
        for &g in &node_group {
            starts[g as usize + 1] += 1;
        }
        for i in 0..group_count as usize {
            starts[i + 1] += starts[i];
        }
        let mut fill = starts.clone();
        let mut members = vec![0u32; n];
        for (i, &g) in node_group.iter().enumerate() {
            members[fill[g as usize] as usize] = i as u32;
            fill[g as usize] += 1;
        }
        drop(fill);
        // Deals: resolve group, sort by (group, created_at, id).
        let mut deals: Vec<DealRec> = Vec::with_capacity(links.len());
        let mut i = 0;
        for chunk in chunks {
            for mut d in chunk {
                let (contact_node, company_node) = links[i];
                i += 1;
                let by_contact = (contact_node != NONE).then(|| node_group[contact_node as usize]);
                let by_company = (company_node != NONE).then(|| node_group[company_node as usize]);
                d.group = match mode {
                    Mode::B2c => by_contact.or(by_company),
                    Mode::B2b => by_company.or(by_contact),
                }
                .unwrap_or(NONE);
                deals.push(d);
            }
        }
        drop(links);
        deals.sort_unstable_by_key(|d| (d.group, d.created_at, d.id));
        let mut deal_starts = vec![0u32; group_count as usize + 1];
        for d in &deals {
            if d.group != NONE {
                deal_starts[d.group as usize + 1] += 1;
            }
        }
        for i in 0..group_count as usize {
            deal_starts[i + 1] += deal_starts[i];
        }
        let mut groups = Vec::with_capacity(group_count as usize);
        let mut merged = Vec::new();
        for g in 0..group_count as usize {
            let ms = &members[starts[g] as usize..starts[g + 1] as usize];
            let min_company = ms
                .iter()
                .map(|&m| &nodes[m as usize])
                .filter(|x| x.is_company)
                .map(|x| x.id)
                .min();
            let min_contact = ms
                .iter()
                .map(|&m| &nodes[m as usize])
                .filter(|x| !x.is_company)
                .map(|x| x.id)
                .min();
            let key = match (min_company, min_contact) {
                (Some(co), _) if mode == Mode::B2b || min_contact.is_none() => {
                    CustomerKey::Company(CompanyId(co))
                }
                (_, Some(c)) => CustomerKey::Contact(ContactId(c)),
                (Some(co), None) => CustomerKey::Company(CompanyId(co)),
                (None, None) => unreachable!("a group has at least one member"),
            };
            let first_seen = ms
                .iter()
                .map(|&m| nodes[m as usize].created_at)
                .min()
                .unwrap_or(i64::MAX);
            groups.push(Group {
                key,
                members: (starts[g], starts[g + 1]),
                deals: (deal_starts[g], deal_starts[g + 1]),
                first_seen,
            });
            if ms.len() > 1 {
                merged.push(merged_group(key, ms, &nodes));
            }
        }
        for node in &mut nodes {
            node.company = node
                .company
                .filter(|_| mode == Mode::B2b || node.is_company);
        }
        Dataset {
            mode,
            nodes,
            node_group,
            contact_index,
            company_index,
            groups,
            members,
            deals,
            stages,
            stage_index,
            pipelines,
            currencies,
            consumption,
            merged,
        }
    }
}

fn merged_group(key: CustomerKey, ms: &[u32], nodes: &[NodeRec]) -> MergedGroup {
    let mut contact_ids: Vec<ContactId> = ms
        .iter()
        .map(|&m| &nodes[m as usize])
        .filter(|x| !x.is_company)
        .map(|x| ContactId(x.id))
        .collect();
    let mut company_ids: Vec<CompanyId> = ms
        .iter()
        .map(|&m| &nodes[m as usize])
        .filter(|x| x.is_company)
        .map(|x| CompanyId(x.id))
        .collect();
    contact_ids.sort_unstable();
    company_ids.sort_unstable();
    let shared = |f: fn(&NodeRec) -> &[Box<str>]| {
        let mut all: Vec<&str> = ms
            .iter()
            .flat_map(|&m| f(&nodes[m as usize]).iter().map(|s| &**s))
            .collect();
        all.sort_unstable();
        let mut out: Vec<String> = all
            .windows(2)
            .filter(|w| w[0] == w[1])
            .map(|w| w[0].to_owned())
            .collect();
        out.dedup();
        out
    };
    MergedGroup {
        customer: key,
        contact_ids,
        company_ids,
        shared_phones: shared(|n| &n.phones)
            .into_iter()
            .filter(|p| p.starts_with('+'))
            .collect(),
        shared_emails: shared(|n| &n.emails),
    }
}

/// Union-find with path halving and union by size.
struct UnionFind {
    parent: Vec<u32>,
    size: Vec<u32>,
}

impl UnionFind {
    fn new(n: usize) -> Self {
        Self {
            parent: (0..n as u32).collect(),
            size: vec![1; n],
        }
    }

    fn find(&mut self, mut x: u32) -> u32 {
        while self.parent[x as usize] != x {
            let p = self.parent[x as usize];
            self.parent[x as usize] = self.parent[p as usize];
            x = self.parent[x as usize];
        }
        x
    }

    fn union(&mut self, a: u32, b: u32) {
        let (mut a, mut b) = (self.find(a), self.find(b));
        if a == b {
            return;
        }
        if self.size[a as usize] < self.size[b as usize] {
            std::mem::swap(&mut a, &mut b);
        }
        self.parent[b as usize] = a;
        self.size[a as usize] += self.size[b as usize];
    }
}
