//! [`Connector`] for [`AmoClient`]: the requests behind each method and their mapping.
use crate::client::AmoClient;
use crate::list::Position;
use crate::{map, wire};
use async_trait::async_trait;
use jiff::Timestamp;
use rebuy_core::connector::StatsSnapshot;
use rebuy_core::{
    Account, Company, Connector, ConnectorError, Contact, ContactId, CrmKind, Cursor, Deal, DealId,
    Deletion, EntityKind, EntityRef, FieldDef, ListQuery, Page, Pipeline, User, WriteOp,
    WriteOutcome,
};
use rust_decimal::Decimal;
use std::collections::{BTreeMap, BTreeSet};

/// `with` of lead requests: the linked contacts and products (companies come without asking).
const LEADS_WITH: &str = "contacts,catalog_elements";
/// The deletion events read from `/api/v4/events`.
const DELETION_TYPES: &str = "lead_deleted,contact_deleted,company_deleted";
/// amoCRM serves at most 100 events per page.
const EVENTS_LIMIT: u32 = 100;

#[async_trait]
impl Connector for AmoClient {
    fn kind(&self) -> CrmKind {
        CrmKind::Amocrm
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
        let url = self.url("api/v4/account", &[("with", "datetime_settings")])?;
        let acc: wire::Account =
            self.get_json(url)
                .await?
                .ok_or_else(|| ConnectorError::Invalid {
                    path: ".".into(),
                    message: "empty answer from /api/v4/account".into(),
                })?;
        let account = map::account(acc);
        // Keep the currency for lead prices; the first caller wins, the value is the same.
        let _ = self.inner.currency.set(account.currency.clone());
        Ok(account)
    }

    async fn users(&self) -> Result<Vec<User>, ConnectorError> {
        let mut out = Vec::new();
        self.list_all::<wire::Users>("api/v4/users", |e| {
            out.extend(e.users.into_iter().map(map::user))
        })
        .await?;
        Ok(out)
    }

    async fn pipelines(&self) -> Result<Vec<Pipeline>, ConnectorError> {
        let url = self.url("api/v4/leads/pipelines", &[])?;
        let Some(page) = self
            .get_json::<wire::ListPage<wire::Pipelines>>(url)
            .await?
        else {
            return Ok(Vec::new());
        };
        let mut out: Vec<Pipeline> = page
            .embedded
            .pipelines
            .into_iter()
            .map(map::pipeline)
            .collect();
        out.sort_by_key(|p| (p.sort, p.id));
        Ok(out)
    }

    async fn contacts(
        &self,
        query: &ListQuery,
        cursor: Option<&Cursor>,
    ) -> Result<Page<Contact>, ConnectorError> {
        let l = self
            .list::<wire::Contacts>("api/v4/contacts", None, query, cursor)
            .await?;
        Ok(Page {
            items: l.embedded.contacts.into_iter().map(map::contact).collect(),
            next: l.next,
        })
    }

    async fn companies(
        &self,
        query: &ListQuery,
        cursor: Option<&Cursor>,
    ) -> Result<Page<Company>, ConnectorError> {
        let l = self
            .list::<wire::Companies>("api/v4/companies", None, query, cursor)
            .await?;
        Ok(Page {
            items: l.embedded.companies.into_iter().map(map::company).collect(),
            next: l.next,
        })
    }

    async fn deals(
        &self,
        query: &ListQuery,
        cursor: Option<&Cursor>,
    ) -> Result<Page<Deal>, ConnectorError> {
        let currency = self.currency().await?;
        let mut l = self
            .list::<wire::Leads>("api/v4/leads", Some(LEADS_WITH), query, cursor)
            .await?;
        self.enrich_products(&mut l.embedded.leads).await?;
        Ok(Page {
            items: l
                .embedded
                .leads
                .into_iter()
                .map(|lead| map::deal(lead, &currency))
                .collect(),
            next: l.next,
        })
    }

    async fn deal(&self, id: DealId) -> Result<Option<Deal>, ConnectorError> {
        let currency = self.currency().await?;
        let url = self.url(&format!("api/v4/leads/{id}"), &[("with", LEADS_WITH)])?;
        match self.get_json::<wire::Lead>(url).await {
            Ok(Some(mut lead)) => {
                self.enrich_products(std::slice::from_mut(&mut lead))
                    .await?;
                Ok(Some(map::deal(lead, &currency)))
            }
            Ok(None) => Ok(None),
            Err(ConnectorError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn contact(&self, id: ContactId) -> Result<Option<Contact>, ConnectorError> {
        let url = self.url(&format!("api/v4/contacts/{id}"), &[])?;
        match self.get_json::<wire::Contact>(url).await {
            Ok(c) => Ok(c.map(map::contact)),
            Err(ConnectorError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Pages through `/api/v4/events` (newest first, as amoCRM serves them). Events recorded
    /// while paging push older ones down, which can repeat an event but never skip one;
    /// deletions are idempotent.
    async fn deletions(
        &self,
        since: Timestamp,
        cursor: Option<&Cursor>,
    ) -> Result<Page<Deletion>, ConnectorError> {
        let pos = Position::parse(cursor)?;
        let (limit, page, from) = (
            EVENTS_LIMIT.to_string(),
            pos.page.to_string(),
            since.as_second().to_string(),
        );
        let url = self.url(
            "api/v4/events",
            &[
                ("filter[type]", DELETION_TYPES),
                ("filter[created_at][from]", &from),
                ("limit", &limit),
                ("page", &page),
            ],
        )?;
        let Some(body) = self.get_json::<wire::ListPage<wire::Events>>(url).await? else {
            return Ok(Page {
                items: Vec::new(),
                next: None,
            });
        };
        let more = body.links.next.is_some() && !body.embedded.events.is_empty();
        let items = body
            .embedded
            .events
            .into_iter()
            .filter_map(map::deletion)
            .collect();
        let next = more.then(|| {
            Position {
                page: pos.page + 1,
                updated_from: None,
            }
            .to_cursor()
        });
        Ok(Page { items, next })
    }

    /// amoCRM has no id-only listing: this pages through the leads (id order, no `with`) and
    /// keeps their ids.
    async fn deal_ids(&self, cursor: Option<&Cursor>) -> Result<Page<DealId>, ConnectorError> {
        let l = self
            .list::<wire::Leads>("api/v4/leads", None, &ListQuery::default(), cursor)
            .await?;
        Ok(Page {
            items: l.embedded.leads.iter().map(|l| DealId(l.id)).collect(),
            next: l.next,
        })
    }

    /// `GET /api/v4/tasks?filter[entity_type]=..&filter[entity_id][]=..`, paged, looking for
    /// `marker` in the task text. Tasks are ordered by id, so the first match is the oldest.
    async fn find_task(
        &self,
        entity: EntityRef,
        marker: &str,
    ) -> Result<Option<u64>, ConnectorError> {
        #[derive(serde::Deserialize, Default)]
        #[serde(default)]
        struct Tasks {
            tasks: Vec<TaskRow>,
        }
        #[derive(serde::Deserialize, Default)]
        #[serde(default)]
        struct TaskRow {
            id: u64,
            text: Option<String>,
        }
        let (entity_type, id) = match entity {
            EntityRef::Deal(d) => ("leads", d.0),
            EntityRef::Contact(c) => ("contacts", c.0),
            EntityRef::Company(c) => ("companies", c.0),
        };
        let id = id.to_string();
        // A hard page cap: an entity with more than 25,000 tasks is not a real case.
        for page in 1..=100u32 {
            let page_s = page.to_string();
            let url = self.url(
                "api/v4/tasks",
                &[
                    ("filter[entity_type]", entity_type),
                    ("filter[entity_id][]", &id),
                    ("limit", "250"),
                    ("page", &page_s),
                ],
            )?;
            let Some(body) = self.get_json::<wire::ListPage<Tasks>>(url).await? else {
                return Ok(None);
            };
            if let Some(t) = body
                .embedded
                .tasks
                .iter()
                .find(|t| t.text.as_deref().is_some_and(|x| x.contains(marker)))
            {
                return Ok(Some(t.id));
            }
            if body.links.next.is_none() || body.embedded.tasks.is_empty() {
                return Ok(None);
            }
        }
        Ok(None)
    }

    /// `GET /api/v4/tasks?filter[id][]=..` (up to 50 ids a request): `is_completed` and
    /// `updated_at` of each task still in the account.
    async fn task_states(&self, ids: &[u64]) -> Result<Vec<rebuy_core::TaskState>, ConnectorError> {
        #[derive(serde::Deserialize, Default)]
        #[serde(default)]
        struct Tasks {
            tasks: Vec<TaskRow>,
        }
        #[derive(serde::Deserialize, Default)]
        #[serde(default)]
        struct TaskRow {
            id: u64,
            is_completed: bool,
            updated_at: Option<i64>,
        }
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(50) {
            let texts: Vec<String> = chunk.iter().map(u64::to_string).collect();
            let limit = chunk.len().to_string();
            let mut query: Vec<(&str, &str)> =
                texts.iter().map(|t| ("filter[id][]", t.as_str())).collect();
            query.push(("limit", &limit));
            let url = self.url("api/v4/tasks", &query)?;
            let Some(body) = self.get_json::<wire::ListPage<Tasks>>(url).await? else {
                continue; // 204: none of them exists any more
            };
            out.extend(body.embedded.tasks.into_iter().map(|t| {
                rebuy_core::TaskState {
                    id: t.id,
                    completed: t.is_completed,
                    updated_at: t
                        .updated_at
                        .and_then(|s| jiff::Timestamp::from_second(s).ok()),
                }
            }));
        }
        Ok(out)
    }

    /// `GET /api/v4/account` (`customers_mode`) and, in periodicity mode,
    /// `GET /api/v4/customers/statuses`.
    async fn customers_funnel(&self) -> Result<rebuy_core::CustomersFunnel, ConnectorError> {
        #[derive(serde::Deserialize, Default)]
        #[serde(default)]
        struct Statuses {
            statuses: Vec<StatusRow>,
        }
        #[derive(serde::Deserialize, Default)]
        #[serde(default)]
        struct StatusRow {
            id: u64,
            name: String,
            sort: i64,
        }
        let mode = self
            .account()
            .await?
            .customers_mode
            .unwrap_or_else(|| "disabled".into());
        let mut statuses = Vec::new();
        if mode == "periodicity" {
            let url = self.url("api/v4/customers/statuses", &[])?;
            if let Some(body) = self.get_json::<wire::ListPage<Statuses>>(url).await? {
                statuses = body
                    .embedded
                    .statuses
                    .into_iter()
                    .map(|s| rebuy_core::Stage {
                        id: rebuy_core::StageId(s.id.to_string()),
                        name: s.name,
                        sort: s.sort,
                        kind: rebuy_core::StageKind::Open,
                    })
                    .collect();
                statuses.sort_by_key(|s| s.sort);
            }
        }
        Ok(rebuy_core::CustomersFunnel { mode, statuses })
    }

    /// `GET /api/v4/customers?with=contacts&limit=250&page=N`; the cursor is the next page.
    async fn customers(
        &self,
        cursor: Option<&Cursor>,
    ) -> Result<Page<rebuy_core::CrmCustomer>, ConnectorError> {
        #[derive(serde::Deserialize, Default)]
        #[serde(default)]
        struct Customers {
            customers: Vec<CustomerRow>,
        }
        #[derive(serde::Deserialize, Default)]
        #[serde(default)]
        struct CustomerRow {
            id: u64,
            name: String,
            status_id: u64,
            next_date: Option<i64>,
            next_price: Option<i64>,
            #[serde(rename = "_embedded")]
            embedded: CustomerEmbedded,
        }
        #[derive(serde::Deserialize, Default)]
        #[serde(default)]
        struct CustomerEmbedded {
            contacts: Vec<LinkRow>,
        }
        #[derive(serde::Deserialize, Default)]
        #[serde(default)]
        struct LinkRow {
            id: u64,
            is_main: Option<bool>,
        }
        let page: u32 = match cursor {
            Some(c) => c.0.parse().map_err(|_| ConnectorError::Invalid {
                path: "cursor".into(),
                message: format!("{:?} is not a customers page", c.0),
            })?,
            None => 1,
        };
        let page_s = page.to_string();
        let url = self.url(
            "api/v4/customers",
            &[("with", "contacts"), ("limit", "250"), ("page", &page_s)],
        )?;
        let Some(body) = self.get_json::<wire::ListPage<Customers>>(url).await? else {
            return Ok(Page {
                items: Vec::new(),
                next: None,
            });
        };
        let next = (body.links.next.is_some() && !body.embedded.customers.is_empty())
            .then(|| Cursor((page + 1).to_string()));
        let items = body
            .embedded
            .customers
            .into_iter()
            .map(|c| rebuy_core::CrmCustomer {
                id: c.id,
                name: c.name,
                status: rebuy_core::StageId(c.status_id.to_string()),
                next_date: c
                    .next_date
                    .filter(|t| *t > 0)
                    .and_then(|t| Timestamp::from_second(t).ok()),
                next_price: c.next_price.unwrap_or(0),
                contact: c
                    .embedded
                    .contacts
                    .iter()
                    .find(|l| l.is_main == Some(true))
                    .or(c.embedded.contacts.first())
                    .map(|l| ContactId(l.id)),
            })
            .collect();
        Ok(Page { items, next })
    }

    /// `GET /api/v4/contacts/{id}?with=leads`, then those leads in `pipeline`
    /// (`GET /api/v4/leads?filter[id][]=..&filter[pipeline_id][]=..`): the one named `name`.
    /// A deal without a contact cannot be looked up (amoCRM lists a company's leads only
    /// through its contacts): `Unsupported`, and the outbox sends it again.
    async fn find_deal(
        &self,
        name: &str,
        pipeline: rebuy_core::PipelineId,
        contact: Option<ContactId>,
        _company: Option<rebuy_core::CompanyId>,
    ) -> Result<Option<u64>, ConnectorError> {
        #[derive(serde::Deserialize, Default)]
        #[serde(default)]
        struct ContactRow {
            #[serde(rename = "_embedded")]
            embedded: Emb,
        }
        #[derive(serde::Deserialize, Default)]
        #[serde(default)]
        struct Emb {
            leads: Vec<wire::IdRef>,
        }
        let Some(contact) = contact else {
            return Err(ConnectorError::Unsupported {
                what: "deal lookup without a contact".into(),
            });
        };
        let url = self.url(
            &format!("api/v4/contacts/{}", contact.0),
            &[("with", "leads")],
        )?;
        let Some(row) = self.get_json::<ContactRow>(url).await? else {
            return Ok(None);
        };
        let ids: Vec<String> = row
            .embedded
            .leads
            .iter()
            .map(|l| l.id.to_string())
            .collect();
        let pipeline_s = pipeline.0.to_string();
        for chunk in ids.chunks(250) {
            let keys: Vec<String> = (0..chunk.len())
                .map(|k| format!("filter[id][{k}]"))
                .collect();
            let mut params: Vec<(&str, &str)> =
                vec![("limit", "250"), ("filter[pipeline_id][0]", &pipeline_s)];
            params.extend(
                keys.iter()
                    .map(String::as_str)
                    .zip(chunk.iter().map(String::as_str)),
            );
            let url = self.url("api/v4/leads", &params)?;
            let Some(page) = self.get_json::<wire::ListPage<wire::Leads>>(url).await? else {
                continue;
            };
            if let Some(l) = page.embedded.leads.iter().find(|l| {
                l.pipeline_id == pipeline.0 && l.name.as_deref().map(str::trim) == Some(name.trim())
            }) {
                return Ok(Some(l.id));
            }
        }
        Ok(None)
    }

    /// `GET /api/v4/contacts/{id}?with=customers`: the first customer linked to the contact.
    async fn find_customer(&self, contact: ContactId) -> Result<Option<u64>, ConnectorError> {
        #[derive(serde::Deserialize, Default)]
        #[serde(default)]
        struct ContactRow {
            #[serde(rename = "_embedded")]
            embedded: Emb,
        }
        #[derive(serde::Deserialize, Default)]
        #[serde(default)]
        struct Emb {
            customers: Vec<wire::IdRef>,
        }
        let url = self.url(
            &format!("api/v4/contacts/{}", contact.0),
            &[("with", "customers")],
        )?;
        let Some(c) = self.get_json::<ContactRow>(url).await? else {
            return Ok(None);
        };
        Ok(c.embedded.customers.iter().map(|r| r.id).min())
    }

    /// `GET /api/v4/{leads|contacts|companies}/custom_fields`, every page.
    async fn custom_fields(&self) -> Result<Vec<FieldDef>, ConnectorError> {
        #[derive(serde::Deserialize, Default)]
        #[serde(default)]
        struct Fields {
            custom_fields: Vec<FieldRow>,
        }
        #[derive(serde::Deserialize, Default)]
        #[serde(default)]
        struct FieldRow {
            id: u64,
            name: String,
            code: Option<String>,
            #[serde(rename = "type")]
            field_type: String,
        }
        let mut out = Vec::new();
        for (path, entity) in [
            ("api/v4/leads/custom_fields", EntityKind::Deals),
            ("api/v4/contacts/custom_fields", EntityKind::Contacts),
            ("api/v4/companies/custom_fields", EntityKind::Companies),
        ] {
            for page in 1..=100u32 {
                let page_s = page.to_string();
                let url = self.url(path, &[("limit", "250"), ("page", &page_s)])?;
                let Some(body) = self.get_json::<wire::ListPage<Fields>>(url).await? else {
                    break;
                };
                let more = body.links.next.is_some() && !body.embedded.custom_fields.is_empty();
                out.extend(body.embedded.custom_fields.into_iter().map(|f| FieldDef {
                    entity,
                    id: f.id.to_string(),
                    name: f.name,
                    code: f.code,
                    field_type: f.field_type,
                }));
                if !more {
                    break;
                }
            }
        }
        Ok(out)
    }

    fn max_writes_per_request(&self) -> usize {
        crate::write::MAX_BATCH
    }

    async fn apply(&self, ops: &[WriteOp]) -> Vec<Result<WriteOutcome, ConnectorError>> {
        crate::write::apply(self, ops).await
    }
}

impl AmoClient {
    /// Fills in the name and unit price of the products linked to `leads`. A lead's
    /// `_embedded.catalog_elements` carries only ids and quantities, so unknown elements are
    /// fetched (`GET /api/v4/catalogs/{id}/elements?filter[id][]=..`, 250 at a time) and kept
    /// for the life of the client; a sync fetches each product once.
    async fn enrich_products(&self, leads: &mut [wire::Lead]) -> Result<(), ConnectorError> {
        let mut missing: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
        {
            let known = self
                .inner
                .products
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            for e in leads.iter().flat_map(|l| &l.embedded.catalog_elements) {
                if !known.contains_key(&e.id) {
                    missing
                        .entry(e.metadata.catalog_id.unwrap_or(0))
                        .or_default()
                        .insert(e.id);
                }
            }
        }
        for (catalog, ids) in missing {
            let ids: Vec<u64> = ids.into_iter().collect();
            for chunk in ids.chunks(250) {
                match self.fetch_elements(catalog, chunk).await {
                    Ok(found) => self
                        .inner
                        .products
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .extend(found),
                    // An account without catalogs (or a catalog gone): keep the rows unnamed.
                    Err(
                        e @ (ConnectorError::NotFound { .. } | ConnectorError::Rejected { .. }),
                    ) => {
                        tracing::warn!(catalog, error = %e, "Cannot read amoCRM catalog elements; product rows stay unnamed");
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        let known = self
            .inner
            .products
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for e in leads
            .iter_mut()
            .flat_map(|l| &mut l.embedded.catalog_elements)
        {
            if let Some((name, price)) = known.get(&e.id) {
                if e.name.is_none() {
                    e.name = Some(name.clone());
                }
                if e.metadata.price.is_none() {
                    e.metadata.price = Some(wire::Amount(*price));
                }
            }
        }
        Ok(())
    }

    async fn fetch_elements(
        &self,
        catalog: u64,
        ids: &[u64],
    ) -> Result<Vec<(u64, (String, Decimal))>, ConnectorError> {
        let keys: Vec<String> = (0..ids.len()).map(|k| format!("filter[id][{k}]")).collect();
        let values: Vec<String> = ids.iter().map(u64::to_string).collect();
        let limit = ids.len().to_string();
        let mut params: Vec<(&str, &str)> = vec![("limit", &limit)];
        params.extend(
            keys.iter()
                .map(String::as_str)
                .zip(values.iter().map(String::as_str)),
        );
        let url = self.url(&format!("api/v4/catalogs/{catalog}/elements"), &params)?;
        let Some(page) = self.get_json::<wire::ListPage<wire::Elements>>(url).await? else {
            return Ok(Vec::new());
        };
        Ok(page
            .embedded
            .elements
            .into_iter()
            .map(|el| {
                let price = el
                    .custom_fields_values
                    .iter()
                    .flatten()
                    .find(|cf| cf.field_code.as_deref() == Some("PRICE"))
                    .and_then(|cf| cf.values.as_ref()?.first())
                    .and_then(|v| v.value.0.trim().parse::<Decimal>().ok())
                    .unwrap_or(Decimal::ZERO);
                (el.id, (el.name.unwrap_or_default(), price))
            })
            .collect())
    }
}
