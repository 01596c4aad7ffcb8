//! Listings: cursors, list requests and page prefetch.
//!
//! # Two orders
//! - **Full listing** (no `updated_from`/`updated_to` in the [`ListQuery`]): `order[id]=asc`,
//!   page by page (`page=N`), cursor `p=N`. New records get higher ids, so they land on later
//!   pages and are not missed. A record deleted *during* the listing shifts later records one
//!   position down, which can skip one record at a page boundary; the sidecar's following
//!   incremental pass and the deletion log keep that window small (amoCRM offers no id range
//!   filter to page by key).
//!   Because the next page number is known before a page arrives, this order supports
//!   prefetch: after serving page N the client starts pages N+1..=N+prefetch in the background,
//!   so the limiter's slots stay used while the caller stores the page.
//! - **Incremental listing** (`updated_from` and/or `updated_to` set):
//!   `filter[updated_at][from|to]` with `order[updated_at]=asc`, keyset-paged on `updated_at`:
//!   the cursor `u=T;p=N` means "records updated at or after T, page N". When a page ends at a
//!   later time T' the next cursor is `u=T';p=1`, so a record updated while the listing runs
//!   moves to the end instead of shifting pages; only a run of more than a page of records with
//!   the same second advances `p`. Records at exactly T' are read twice (the sidecar upserts).
//!
//! Both stop at a 204 (amoCRM's empty page) or a page without `_links.next`.
use crate::client::AmoClient;
use crate::wire::{self, ListPage};
use jiff::Timestamp;
use rebuy_core::{ConnectorError, Cursor, ListQuery};
use serde::de::DeserializeOwned;
use std::any::Any;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// The `_embedded` of a list page with what paging needs to know about it.
pub(crate) trait Embedded: DeserializeOwned + Default + Send + 'static {
    /// Records on the page.
    fn len(&self) -> usize;
    /// The latest `updated_at` on the page.
    fn max_updated(&self) -> Option<Timestamp>;
}

macro_rules! embedded {
    ($ty:ty, $field:ident) => {
        impl Embedded for $ty {
            fn len(&self) -> usize {
                self.$field.len()
            }
            fn max_updated(&self) -> Option<Timestamp> {
                self.$field.iter().map(|r| r.updated_at).max()
            }
        }
    };
}
embedded!(wire::Leads, leads);
embedded!(wire::Contacts, contacts);
embedded!(wire::Companies, companies);

impl Embedded for wire::Users {
    fn len(&self) -> usize {
        self.users.len()
    }
    fn max_updated(&self) -> Option<Timestamp> {
        None
    }
}

impl Embedded for wire::Events {
    fn len(&self) -> usize {
        self.events.len()
    }
    fn max_updated(&self) -> Option<Timestamp> {
        None
    }
}

/// A decoded cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Position {
    /// 1-based page.
    pub(crate) page: u32,
    /// Keyset lower bound (Unix seconds) of an incremental listing.
    pub(crate) updated_from: Option<i64>,
}

impl Position {
    pub(crate) fn first() -> Self {
        Self {
            page: 1,
            updated_from: None,
        }
    }

    pub(crate) fn parse(cursor: Option<&Cursor>) -> Result<Self, ConnectorError> {
        let Some(c) = cursor else {
            return Ok(Self::first());
        };
        let bad = || ConnectorError::Invalid {
            path: "cursor".into(),
            message: format!("not an amoCRM cursor: {:?}", c.0),
        };
        let mut pos = Self::first();
        let mut seen_page = false;
        for part in c.0.split(';') {
            let (k, v) = part.split_once('=').ok_or_else(bad)?;
            match k {
                "p" => {
                    pos.page = v.parse().ok().filter(|&p| p >= 1).ok_or_else(bad)?;
                    seen_page = true;
                }
                "u" => pos.updated_from = Some(v.parse().map_err(|_| bad())?),
                _ => return Err(bad()),
            }
        }
        if !seen_page {
            return Err(bad());
        }
        Ok(pos)
    }

    pub(crate) fn to_cursor(self) -> Cursor {
        match self.updated_from {
            Some(u) => Cursor(format!("u={u};p={}", self.page)),
            None => Cursor(format!("p={}", self.page)),
        }
    }
}

/// What one list call produced: the records' container and where the next page starts.
pub(crate) struct Listed<E> {
    pub(crate) embedded: E,
    pub(crate) next: Option<Cursor>,
}

impl AmoClient {
    /// One page of `path` (`api/v4/leads`) with `with` (`contacts`) under `query` from `cursor`.
    pub(crate) async fn list<E: Embedded>(
        &self,
        path: &str,
        with: Option<&str>,
        query: &ListQuery,
        cursor: Option<&Cursor>,
    ) -> Result<Listed<E>, ConnectorError> {
        let pos = Position::parse(cursor)?;
        let incremental = query.updated_from.is_some()
            || query.updated_to.is_some()
            || pos.updated_from.is_some();
        if !incremental {
            return self.list_by_id(path, with, pos.page).await;
        }
        let from = match (query.updated_from.map(|t| t.as_second()), pos.updated_from) {
            (Some(q), Some(c)) => Some(q.max(c)),
            (q, c) => q.or(c),
        };
        let limit = self.inner.settings.page_limit.to_string();
        let page = pos.page.to_string();
        let from_s = from.map(|f| f.to_string());
        let to_s = query.updated_to.map(|t| t.as_second().to_string());
        let mut params: Vec<(&str, &str)> = vec![
            ("limit", &limit),
            ("page", &page),
            ("order[updated_at]", "asc"),
        ];
        if let Some(w) = with {
            params.push(("with", w));
        }
        if let Some(f) = &from_s {
            params.push(("filter[updated_at][from]", f));
        }
        if let Some(t) = &to_s {
            params.push(("filter[updated_at][to]", t));
        }
        let url = self.url(path, &params)?;
        let Some(body) = self.get_json::<ListPage<E>>(url).await? else {
            return Ok(Listed {
                embedded: E::default(),
                next: None,
            });
        };
        let next = if body.links.next.is_some() && body.embedded.len() > 0 {
            let last = body.embedded.max_updated().map(|t| t.as_second());
            Some(match (last, from) {
                // The page reached a later second: restart at it.
                (Some(l), Some(f)) if l > f => Position {
                    page: 1,
                    updated_from: Some(l),
                },
                (Some(l), None) => Position {
                    page: 1,
                    updated_from: Some(l),
                },
                // A whole page within one second: step to the next page of that second.
                _ => Position {
                    page: pos.page + 1,
                    updated_from: from,
                },
            })
        } else {
            None
        };
        Ok(Listed {
            embedded: body.embedded,
            next: next.map(Position::to_cursor),
        })
    }

    /// A full listing page in id order, served from the prefetch when possible.
    async fn list_by_id<E: Embedded>(
        &self,
        path: &str,
        with: Option<&str>,
        page: u32,
    ) -> Result<Listed<E>, ConnectorError> {
        let got = match self
            .inner
            .prefetch
            .take(&self.id_page_url(path, with, page)?)
        {
            Some(handle) => match handle.await {
                Ok(Ok(Some(boxed))) => match boxed.downcast::<ListPage<E>>() {
                    Ok(b) => Some(*b),
                    Err(_) => self.get_json(self.id_page_url(path, with, page)?).await?,
                },
                Ok(Ok(None)) => None,
                Ok(Err(e)) => return Err(e),
                // The background task panicked or was aborted: fetch in the foreground.
                Err(_) => self.get_json(self.id_page_url(path, with, page)?).await?,
            },
            None => self.get_json(self.id_page_url(path, with, page)?).await?,
        };
        let Some(body) = got else {
            return Ok(Listed {
                embedded: E::default(),
                next: None,
            });
        };
        let more = body.links.next.is_some() && body.embedded.len() > 0;
        if more {
            for ahead in 1..=self.inner.settings.prefetch as u32 {
                let url = self.id_page_url(path, with, page + ahead)?;
                let client = self.clone();
                self.inner.prefetch.start(url, move |url| async move {
                    client
                        .get_json::<ListPage<E>>(url)
                        .await
                        .map(|o| o.map(|b| Box::new(b) as Box<dyn Any + Send>))
                });
            }
        }
        let next = more.then(|| {
            Position {
                page: page + 1,
                updated_from: None,
            }
            .to_cursor()
        });
        Ok(Listed {
            embedded: body.embedded,
            next,
        })
    }

    fn id_page_url(
        &self,
        path: &str,
        with: Option<&str>,
        page: u32,
    ) -> Result<url::Url, ConnectorError> {
        let limit = self.inner.settings.page_limit.to_string();
        let page = page.to_string();
        let mut params: Vec<(&str, &str)> =
            vec![("limit", &limit), ("page", &page), ("order[id]", "asc")];
        if let Some(w) = with {
            params.push(("with", w));
        }
        self.url(path, &params)
    }

    /// Every page of a small listing (users), in one go.
    pub(crate) async fn list_all<E: Embedded>(
        &self,
        path: &str,
        mut push: impl FnMut(E),
    ) -> Result<(), ConnectorError> {
        let limit = self.inner.settings.page_limit.to_string();
        // A hard page cap so a server that always says "next" cannot loop us forever.
        for page in 1..=10_000u32 {
            let page_s = page.to_string();
            let url = self.url(path, &[("limit", &limit), ("page", &page_s)])?;
            let Some(body) = self.get_json::<ListPage<E>>(url).await? else {
                return Ok(());
            };
            let more = body.links.next.is_some() && body.embedded.len() > 0;
            push(body.embedded);
            if !more {
                return Ok(());
            }
        }
        Ok(())
    }
}

type Fetched = Result<Option<Box<dyn Any + Send>>, ConnectorError>;

/// Pages fetched ahead, keyed by their URL. Entries expire so a page fetched for a listing that
/// was abandoned is never served to a later one.
#[derive(Default)]
pub(crate) struct Prefetch {
    slots: std::sync::Mutex<HashMap<String, (Instant, JoinHandle<Fetched>)>>,
}

/// How long a prefetched page may wait for its caller.
const PREFETCH_TTL: Duration = Duration::from_secs(30);
/// At most this many pages are held, whatever the listings running.
const PREFETCH_MAX: usize = 32;

impl Prefetch {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, JoinHandle<Fetched>)>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The fetch of `url` if one was started recently.
    fn take(&self, url: &url::Url) -> Option<JoinHandle<Fetched>> {
        let (started, handle) = self.lock().remove(url.as_str())?;
        if started.elapsed() > PREFETCH_TTL {
            handle.abort();
            return None;
        }
        Some(handle)
    }

    /// Starts fetching `url` in the background unless it already is.
    fn start<F, Fut>(&self, url: url::Url, fetch: F)
    where
        F: FnOnce(url::Url) -> Fut,
        Fut: std::future::Future<Output = Fetched> + Send + 'static,
    {
        let mut slots = self.lock();
        if slots.contains_key(url.as_str()) {
            return;
        }
        if slots.len() >= PREFETCH_MAX {
            slots.retain(|_, (started, h)| {
                let keep = started.elapsed() <= PREFETCH_TTL;
                if !keep {
                    h.abort();
                }
                keep
            });
            if slots.len() >= PREFETCH_MAX {
                return;
            }
        }
        let key = url.as_str().to_owned();
        slots.insert(key, (Instant::now(), tokio::spawn(fetch(url))));
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        for (_, (_, h)) in self.lock().drain() {
            h.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip() {
        for p in [
            Position {
                page: 3,
                updated_from: None,
            },
            Position {
                page: 1,
                updated_from: Some(1_700_000_000),
            },
        ] {
            assert_eq!(Position::parse(Some(&p.to_cursor())).unwrap(), p);
        }
        assert_eq!(Position::parse(None).unwrap(), Position::first());
    }

    #[test]
    fn bad_cursors_are_invalid() {
        for c in ["", "p=0", "p=x", "page:2", "u=1", "q=1;p=2"] {
            assert!(
                matches!(
                    Position::parse(Some(&Cursor(c.into()))),
                    Err(ConnectorError::Invalid { .. })
                ),
                "{c}"
            );
        }
    }
}
