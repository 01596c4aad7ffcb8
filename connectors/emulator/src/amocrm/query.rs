//! Query strings as amoCRM reads them: PHP-style brackets (`filter[updated_at][from]=...`,
//! `filter[id][]=1&filter[id][]=2`, `filter[id][0]=1`, `filter[id]=1,2`), `with` as a comma
//! list, `order[field]=asc|desc`, `page` and `limit`. Bad values become a 400 problem, never a
//! panic.
use super::error::ApiError;
use std::collections::HashSet;

/// A parsed query string: (key path, value) pairs in order.
#[derive(Debug, Default, Clone)]
pub(crate) struct Query {
    pairs: Vec<(Vec<String>, String)>,
}

/// An inclusive range of unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Range {
    pub from: i64,
    pub to: i64,
}

impl Default for Range {
    fn default() -> Self {
        Self {
            from: i64::MIN,
            to: i64::MAX,
        }
    }
}

impl Range {
    pub fn contains(&self, t: i64) -> bool {
        self.from <= t && t <= self.to
    }

    pub fn contains_opt(&self, t: Option<i64>) -> bool {
        match t {
            Some(t) => self.contains(t),
            None => self.is_all(),
        }
    }

    pub fn is_all(&self) -> bool {
        self.from == i64::MIN && self.to == i64::MAX
    }
}

/// One `filter[custom_fields_values][{field_id}]` condition.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CfFilter {
    pub field_id: u64,
    pub test: CfTest,
}

/// What a custom field's values must satisfy.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum CfTest {
    /// One of the values equals one of these (as text; an enum id counts too).
    AnyOf(Vec<String>),
    /// A number (or unix time) in this range.
    Range(Range),
}

impl CfFilter {
    /// Whether an entity's custom fields pass.
    pub fn matches(&self, fields: &[crate::amocrm::AmoFieldValue]) -> bool {
        let Some(f) = fields.iter().find(|f| f.field_id == self.field_id) else {
            return false;
        };
        f.values.iter().any(|v| {
            let text = match &v.value {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            match &self.test {
                CfTest::AnyOf(want) => want
                    .iter()
                    .any(|w| w == &text || v.enum_id.is_some_and(|e| w == &e.to_string())),
                CfTest::Range(r) => text
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .is_some_and(|n| r.contains(n as i64)),
            }
        })
    }
}

/// Sort order of a list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OrderBy {
    Id,
    UpdatedAt,
    CreatedAt,
    CompleteTill,
}

fn key_path(key: &str) -> Vec<String> {
    let Some(open) = key.find('[') else {
        return vec![key.to_owned()];
    };
    let mut out = vec![key[..open].to_owned()];
    let mut rest = &key[open..];
    while let Some(r) = rest.strip_prefix('[') {
        match r.find(']') {
            Some(close) => {
                out.push(r[..close].to_owned());
                rest = &r[close + 1..];
            }
            None => return vec![key.to_owned()],
        }
    }
    if rest.is_empty() {
        out
    } else {
        vec![key.to_owned()]
    }
}

impl Query {
    pub fn parse(raw: Option<&str>) -> Self {
        let pairs = url::form_urlencoded::parse(raw.unwrap_or("").as_bytes())
            .map(|(k, v)| (key_path(&k), v.into_owned()))
            .collect();
        Self { pairs }
    }

    fn matches(key: &[String], path: &[&str]) -> bool {
        key.len() == path.len() && key.iter().zip(path).all(|(a, b)| a == b)
    }

    /// The last value of exactly this key.
    pub fn get(&self, path: &[&str]) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| Self::matches(k, path))
            .map(|(_, v)| v.as_str())
    }

    /// All values of a list parameter: `p=a,b`, `p[]=a`, `p[0]=a`.
    pub fn values(&self, path: &[&str]) -> Vec<&str> {
        let mut out = Vec::new();
        for (k, v) in &self.pairs {
            let listy = k.len() == path.len() + 1
                && k.iter().zip(path).all(|(a, b)| a == b)
                && k.last()
                    .is_some_and(|l| l.is_empty() || l.bytes().all(|b| b.is_ascii_digit()));
            if Self::matches(k, path) || listy {
                out.extend(v.split(',').map(str::trim).filter(|s| !s.is_empty()));
            }
        }
        out
    }

    /// Whether any key starts with this path.
    pub fn has(&self, path: &[&str]) -> bool {
        self.pairs
            .iter()
            .any(|(k, _)| k.len() >= path.len() && k.iter().zip(path).all(|(a, b)| a == b))
    }

    /// A list of ids (`filter[id]` and the like); `None` when absent.
    pub fn ids(&self, path: &[&str]) -> Result<Option<Vec<u64>>, ApiError> {
        if !self.has(path) {
            return Ok(None);
        }
        let mut out = Vec::new();
        for v in self.values(path) {
            out.push(v.parse::<u64>().map_err(|_| bad(path, v))?);
        }
        Ok(Some(out))
    }

    /// Whole values of a text parameter (`filter[name]=a`, `filter[name][]=a`): never split on
    /// commas, which names may contain; `None` when absent.
    pub fn texts(&self, path: &[&str]) -> Option<Vec<String>> {
        self.has(path).then(|| {
            self.pairs
                .iter()
                .filter(|(k, _)| {
                    Self::matches(k, path)
                        || (k.len() == path.len() + 1
                            && k.iter().zip(path).all(|(a, b)| a == b)
                            && k.last().is_some_and(|l| {
                                l.is_empty() || l.bytes().all(|b| b.is_ascii_digit())
                            }))
                })
                .map(|(_, v)| v.clone())
                .collect()
        })
    }

    /// A list of strings (`filter[type]`); `None` when absent.
    pub fn strings(&self, path: &[&str]) -> Option<Vec<String>> {
        self.has(path)
            .then(|| self.values(path).into_iter().map(str::to_owned).collect())
    }

    /// A time range: `filter[f][from]`, `filter[f][to]`, or `filter[f]=ts` (exact).
    pub fn range(&self, field: &str) -> Result<Range, ApiError> {
        let mut r = Range::default();
        let parse = |path: &[&str], v: &str| v.trim().parse::<i64>().map_err(|_| bad(path, v));
        if let Some(v) = self.get(&["filter", field]) {
            let t = parse(&["filter", field], v)?;
            r = Range { from: t, to: t };
        }
        if let Some(v) = self.get(&["filter", field, "from"]) {
            r.from = parse(&["filter", field, "from"], v)?;
        }
        if let Some(v) = self.get(&["filter", field, "to"]) {
            r.to = parse(&["filter", field, "to"], v)?;
        }
        Ok(r)
    }

    /// A numeric range of any field: `filter[f][from]`, `filter[f][to]`, or `filter[f]=n`.
    pub fn num_range(&self, path: &[&str]) -> Result<Range, ApiError> {
        let mut r = Range::default();
        let parse = |p: &[&str], v: &str| {
            let v = v.trim();
            v.parse::<i64>()
                .or_else(|_| v.parse::<f64>().map(|f| f as i64))
                .map_err(|_| bad(p, v))
        };
        if let Some(v) = self.get(path) {
            let t = parse(path, v)?;
            r = Range { from: t, to: t };
        }
        let mut from = path.to_vec();
        from.push("from");
        if let Some(v) = self.get(&from) {
            r.from = parse(&from, v)?;
        }
        let mut to = path.to_vec();
        to.push("to");
        if let Some(v) = self.get(&to) {
            r.to = parse(&to, v)?;
        }
        Ok(r)
    }

    /// `filter[custom_fields_values][{field_id}]`: per field, the values asked for (any of
    /// them matches) or a `[from]`/`[to]` range.
    pub fn custom_field_filters(&self) -> Result<Vec<CfFilter>, ApiError> {
        let mut ids: Vec<String> = Vec::new();
        for (k, _) in &self.pairs {
            if k.len() >= 3 && k[0] == "filter" && k[1] == "custom_fields_values" {
                if !ids.contains(&k[2]) {
                    ids.push(k[2].clone());
                }
            }
        }
        let mut out = Vec::new();
        for id in ids {
            let field_id = id.parse::<u64>().map_err(|_| {
                ApiError::BadRequest(format!(
                    "invalid field id {id:?} in filter[custom_fields_values]"
                ))
            })?;
            let path = ["filter", "custom_fields_values", id.as_str()];
            let ranged = self.has(&[path[0], path[1], path[2], "from"])
                || self.has(&[path[0], path[1], path[2], "to"]);
            let test = if ranged {
                CfTest::Range(self.num_range(&path)?)
            } else {
                CfTest::AnyOf(self.values(&path).into_iter().map(str::to_owned).collect())
            };
            out.push(CfFilter { field_id, test });
        }
        Ok(out)
    }

    /// 400 for a `filter[...]` this endpoint does not implement (never silently ignored).
    pub fn only_filters(&self, known: &[&str]) -> Result<(), ApiError> {
        for (k, _) in &self.pairs {
            if k.first().is_some_and(|f| f == "filter") {
                let name = k.get(1).map(String::as_str).unwrap_or("");
                if !known.contains(&name) {
                    return Err(ApiError::BadRequest(format!(
                        "filter[{name}] is not supported here (supported: {})",
                        known.join(", ")
                    )));
                }
            }
        }
        Ok(())
    }

    /// `page` (1-based, default 1) and `limit` (default 50, larger than `max` silently capped).
    pub fn paging(&self, max: u32) -> Result<(u64, u32), ApiError> {
        let page = match self.get(&["page"]) {
            None => 1,
            Some(v) => v
                .trim()
                .parse::<u64>()
                .map_err(|_| bad(&["page"], v))?
                .max(1),
        };
        let limit = match self.get(&["limit"]) {
            None => 50.min(max),
            Some(v) => {
                let l = v.trim().parse::<u64>().map_err(|_| bad(&["limit"], v))?;
                if l == 0 {
                    return Err(bad(&["limit"], v));
                }
                l.min(max as u64) as u32
            }
        };
        Ok((page, limit))
    }

    /// Indexed objects under a prefix: `filter[statuses][0][pipeline_id]=1` gives
    /// `{"0": {"pipeline_id": "1"}}`.
    pub fn objects(
        &self,
        path: &[&str],
    ) -> std::collections::BTreeMap<String, std::collections::HashMap<String, String>> {
        let mut out: std::collections::BTreeMap<String, std::collections::HashMap<String, String>> =
            Default::default();
        for (k, v) in &self.pairs {
            if k.len() == path.len() + 2 && k.iter().zip(path).all(|(a, b)| a == b) {
                out.entry(k[path.len()].clone())
                    .or_default()
                    .insert(k[path.len() + 1].clone(), v.clone());
            }
        }
        out
    }

    /// The `with` list.
    pub fn with(&self) -> HashSet<String> {
        self.values(&["with"])
            .into_iter()
            .map(str::to_owned)
            .collect()
    }

    /// `order[field]=asc|desc` among `allowed`; unknown fields are ignored as amoCRM does, a
    /// bad direction is a 400.
    pub fn order(&self, allowed: &[(&str, OrderBy)]) -> Result<Option<(OrderBy, bool)>, ApiError> {
        let mut out = None;
        for (k, v) in &self.pairs {
            if k.len() == 2 && k[0] == "order" {
                let Some((_, by)) = allowed.iter().find(|(name, _)| *name == k[1]) else {
                    continue;
                };
                let desc = match v.to_ascii_lowercase().as_str() {
                    "asc" => false,
                    "desc" => true,
                    _ => return Err(bad(&["order", &k[1]], v)),
                };
                out = Some((*by, desc));
            }
        }
        Ok(out)
    }
}

fn bad(path: &[&str], value: &str) -> ApiError {
    let mut name = path.first().map(|s| s.to_string()).unwrap_or_default();
    for p in path.iter().skip(1) {
        name.push_str(&format!("[{p}]"));
    }
    ApiError::BadRequest(format!("invalid value {value:?} of query parameter {name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brackets_and_lists() {
        let q = Query::parse(Some(
            "filter%5Bupdated_at%5D%5Bfrom%5D=10&filter[id][]=1&filter[id][]=2&filter[id][2]=3,4&with=contacts,catalog_elements&order[updated_at]=desc",
        ));
        assert_eq!(
            q.range("updated_at").ok(),
            Some(Range {
                from: 10,
                to: i64::MAX
            })
        );
        assert_eq!(
            q.ids(&["filter", "id"]).ok().flatten(),
            Some(vec![1, 2, 3, 4])
        );
        assert!(q.with().contains("catalog_elements"));
        assert_eq!(
            q.order(&[("updated_at", OrderBy::UpdatedAt)])
                .ok()
                .flatten(),
            Some((OrderBy::UpdatedAt, true))
        );
        assert_eq!(key_path("a[b"), vec!["a[b".to_owned()]);
    }

    #[test]
    fn bad_values_are_errors() {
        assert!(Query::parse(Some("page=x")).paging(250).is_err());
        assert!(Query::parse(Some("limit=0")).paging(250).is_err());
        assert!(
            Query::parse(Some("filter[id]=a"))
                .ids(&["filter", "id"])
                .is_err()
        );
        assert!(
            Query::parse(Some("order[id]=up"))
                .order(&[("id", OrderBy::Id)])
                .is_err()
        );
        assert_eq!(
            Query::parse(Some("limit=1000")).paging(250).ok(),
            Some((1, 250))
        );
        assert_eq!(Query::parse(None).paging(250).ok(), Some((1, 50)));
    }
}
