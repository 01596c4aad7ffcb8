//! amoCRM webhooks: `application/x-www-form-urlencoded` bodies with PHP-style nested keys,
//! turned into a typed list of events.
//!
//! A body looks like
//! `leads[status][0][id]=1&leads[status][0][status_id]=142&...&account[subdomain]=test&account[id]=7`:
//! `{entity}[{action}][{n}][{field}]...`, every value a string, old field names
//! (`last_modified`, `date_create`) next to v4 ones. [`parse`] first builds the key tree by hand
//! (so an error names the exact key that broke it), then reads one [`WebhookEvent`] per
//! `{entity}[{action}][{n}]` item and the `account[...]` block. It never panics, whatever the
//! input, and bounds the work (pairs, nesting depth, list indexes).
//!
//! Webhooks are hints: the sidecar stores the event, answers 200 fast, and re-reads the named
//! records through the API; so the events keep the fields raw in [`Node`]s and only lift what
//! a sync needs (entity, action, id, status/pipeline moves, modification time).
use jiff::Timestamp;
use rebuy_core::EntityKind;
use std::fmt;

/// At most this many `key=value` pairs in one body.
const MAX_PAIRS: usize = 20_000;
/// At most this many `[...]` segments in one key.
const MAX_DEPTH: usize = 12;
/// List indexes above this are refused (a body never has that many items).
const MAX_INDEX: usize = 100_000;

/// Why a webhook body was refused. Each variant names the offending key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    /// The body is not form-urlencoded text.
    #[error("webhook body is not UTF-8 form data")]
    NotForm,
    /// A key is malformed (`a[b`, `a]`, `a[b]c`), too deep, or clashes with another key.
    #[error("bad webhook key {key:?}: {reason}")]
    BadKey {
        /// The key as sent (decoded).
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A value that must be a number (an id, a time) is not.
    #[error("bad webhook value at {key}: {value:?} is not {expected}")]
    BadValue {
        /// The key, e.g. `leads[status][0][id]`.
        key: String,
        /// The value sent.
        value: String,
        /// What was expected.
        expected: &'static str,
    },
    /// Too many pairs.
    #[error("webhook body has more than {MAX_PAIRS} fields")]
    TooLarge,
}

/// A value of the key tree: a string leaf, or children in the order they were first sent
/// (PHP lists are maps with numeric keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A string value.
    Value(String),
    /// Named children.
    Map(Vec<(String, Node)>),
}

impl Node {
    /// The child named `key`.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match self {
            Node::Map(children) => children.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            Node::Value(_) => None,
        }
    }

    /// The string of a leaf.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Node::Value(v) => Some(v),
            Node::Map(_) => None,
        }
    }

    /// The string at `key` below this node.
    pub fn str_at(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Node::as_str)
    }

    /// The children of a map (empty for a leaf).
    pub fn children(&self) -> &[(String, Node)] {
        match self {
            Node::Map(c) => c,
            Node::Value(_) => &[],
        }
    }
}

/// The entity a webhook event is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookEntity {
    /// `leads`.
    Leads,
    /// `contacts`.
    Contacts,
    /// `companies`.
    Companies,
    /// `customers`.
    Customers,
    /// `task` / `tasks`.
    Tasks,
    /// Anything else (`catalogs`, `talk`, `message`, `unsorted`, ...), by its key.
    Other(String),
}

impl WebhookEntity {
    fn from_key(k: &str) -> Self {
        match k {
            "leads" => Self::Leads,
            "contacts" => Self::Contacts,
            "companies" => Self::Companies,
            "customers" => Self::Customers,
            "task" | "tasks" => Self::Tasks,
            other => Self::Other(other.to_owned()),
        }
    }

    /// The synced entity kind, for the entities rebuy caches.
    pub fn kind(&self) -> Option<EntityKind> {
        match self {
            Self::Leads => Some(EntityKind::Deals),
            Self::Contacts => Some(EntityKind::Contacts),
            Self::Companies => Some(EntityKind::Companies),
            _ => None,
        }
    }

    /// Whether items of this entity must carry a numeric `id`.
    fn needs_id(&self) -> bool {
        !matches!(self, Self::Other(_))
    }
}

/// One `{entity}[{action}][{n}]` item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookEvent {
    /// The entity.
    pub entity: WebhookEntity,
    /// The action key: `add`, `update`, `delete`, `restore`, `status`, `responsible`, `note`, ...
    pub action: String,
    /// The entity id (`None` only for entities outside [`WebhookEntity::needs_id`] without one).
    pub id: Option<u64>,
    /// New status (lead `status` hooks and updates).
    pub status_id: Option<u64>,
    /// Previous status (`status` hooks).
    pub old_status_id: Option<u64>,
    /// Pipeline.
    pub pipeline_id: Option<u64>,
    /// Previous pipeline.
    pub old_pipeline_id: Option<u64>,
    /// Responsible user.
    pub responsible_user_id: Option<u64>,
    /// Modification time (`updated_at`, else the old `last_modified`).
    pub updated_at: Option<Timestamp>,
    /// All fields of the item, raw.
    pub fields: Node,
}

/// The `account[...]` block every webhook carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WebhookAccount {
    /// `account[id]`.
    pub id: Option<u64>,
    /// `account[subdomain]`.
    pub subdomain: Option<String>,
    /// `account[_links][self]`, the account's address.
    pub url: Option<String>,
}

/// A parsed webhook body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookPayload {
    /// The account that sent it.
    pub account: WebhookAccount,
    /// The events, in body order.
    pub events: Vec<WebhookEvent>,
}

impl WebhookPayload {
    /// The cached records the events touch, as `(kind, id)` (repeats removed, order kept).
    pub fn touched(&self) -> Vec<(EntityKind, u64)> {
        let mut out: Vec<(EntityKind, u64)> = Vec::new();
        for e in &self.events {
            if let (Some(kind), Some(id)) = (e.entity.kind(), e.id)
                && !out.contains(&(kind, id))
            {
                out.push((kind, id));
            }
        }
        out
    }
}

/// Parses a webhook body.
pub fn parse(body: &[u8]) -> Result<WebhookPayload, WebhookError> {
    if std::str::from_utf8(body).is_err() {
        return Err(WebhookError::NotForm);
    }
    let tree = tree(body)?;
    let mut account = WebhookAccount::default();
    let mut events = Vec::new();
    for (top, node) in tree.children() {
        if top == "account" {
            account.id = num(node, "id", &format!("{top}[id]"))?;
            account.subdomain = node.str_at("subdomain").map(str::to_owned);
            account.url = node
                .get("_links")
                .and_then(|l| l.str_at("self"))
                .map(str::to_owned);
            continue;
        }
        let entity = WebhookEntity::from_key(top);
        let Node::Map(actions) = node else {
            // A plain `key=value` at the top level is not an event; amoCRM sends none we need.
            continue;
        };
        for (action, items) in actions {
            let Node::Map(items) = items else {
                return Err(WebhookError::BadKey {
                    key: format!("{top}[{action}]"),
                    reason: "expected a list of items".into(),
                });
            };
            for (n, item) in items {
                let key = format!("{top}[{action}][{n}]");
                if !matches!(item, Node::Map(_)) {
                    return Err(WebhookError::BadKey {
                        key,
                        reason: "expected an item with fields".into(),
                    });
                }
                let id = num(item, "id", &format!("{key}[id]"))?;
                if id.is_none() && entity.needs_id() {
                    return Err(WebhookError::BadKey {
                        key: format!("{key}[id]"),
                        reason: "missing".into(),
                    });
                }
                let updated = match num::<i64>(item, "updated_at", &format!("{key}[updated_at]"))? {
                    Some(t) => Some(t),
                    None => num(item, "last_modified", &format!("{key}[last_modified]"))?,
                };
                let updated_at = match updated {
                    Some(t) => {
                        Some(
                            Timestamp::from_second(t).map_err(|_| WebhookError::BadValue {
                                key: format!("{key}[updated_at]"),
                                value: t.to_string(),
                                expected: "a Unix time",
                            })?,
                        )
                    }
                    None => None,
                };
                events.push(WebhookEvent {
                    entity: entity.clone(),
                    action: action.clone(),
                    id,
                    status_id: num(item, "status_id", &format!("{key}[status_id]"))?,
                    old_status_id: num(item, "old_status_id", &format!("{key}[old_status_id]"))?,
                    pipeline_id: num(item, "pipeline_id", &format!("{key}[pipeline_id]"))?,
                    old_pipeline_id: num(
                        item,
                        "old_pipeline_id",
                        &format!("{key}[old_pipeline_id]"),
                    )?,
                    responsible_user_id: num(
                        item,
                        "responsible_user_id",
                        &format!("{key}[responsible_user_id]"),
                    )?,
                    updated_at,
                    fields: item.clone(),
                });
            }
        }
    }
    Ok(WebhookPayload { account, events })
}

/// A numeric leaf; empty strings count as absent (amoCRM sends `old_status_id=` at times).
fn num<T: std::str::FromStr>(
    node: &Node,
    field: &str,
    key: &str,
) -> Result<Option<T>, WebhookError> {
    match node.get(field) {
        None => Ok(None),
        Some(Node::Value(v)) if v.trim().is_empty() => Ok(None),
        Some(Node::Value(v)) => {
            v.trim()
                .parse::<T>()
                .map(Some)
                .map_err(|_| WebhookError::BadValue {
                    key: key.to_owned(),
                    value: v.clone(),
                    expected: "a number",
                })
        }
        Some(Node::Map(_)) => Err(WebhookError::BadKey {
            key: key.to_owned(),
            reason: "expected a value, got nested keys".into(),
        }),
    }
}

/// Splits `a[b][0][c]` into `["a", "b", "0", "c"]`.
fn segments(key: &str) -> Result<Vec<&str>, WebhookError> {
    let bad = |reason: &str| WebhookError::BadKey {
        key: key.to_owned(),
        reason: reason.to_owned(),
    };
    let (head, mut rest) = match key.find('[') {
        Some(i) => key.split_at(i),
        None => (key, ""),
    };
    if head.is_empty() {
        return Err(bad("empty name"));
    }
    if head.contains(']') {
        return Err(bad("unbalanced ']'"));
    }
    let mut out = vec![head];
    while !rest.is_empty() {
        let Some(inner) = rest.strip_prefix('[') else {
            return Err(bad("text after ']'"));
        };
        let Some(close) = inner.find(']') else {
            return Err(bad("unclosed '['"));
        };
        let seg = &inner[..close];
        if seg.contains('[') {
            return Err(bad("'[' inside brackets"));
        }
        out.push(seg);
        if out.len() > MAX_DEPTH {
            return Err(bad("nested too deep"));
        }
        rest = &inner[close + 1..];
    }
    Ok(out)
}

/// Builds the key tree of a form body.
fn tree(body: &[u8]) -> Result<Node, WebhookError> {
    let mut root = Node::Map(Vec::new());
    for (n, (key, value)) in url::form_urlencoded::parse(body).enumerate() {
        if n >= MAX_PAIRS {
            return Err(WebhookError::TooLarge);
        }
        if key.is_empty() && value.is_empty() {
            continue;
        }
        let segs = segments(&key)?;
        insert(&mut root, &key, &segs, value.into_owned())?;
    }
    Ok(root)
}

fn insert(root: &mut Node, key: &str, segs: &[&str], value: String) -> Result<(), WebhookError> {
    let clash = || WebhookError::BadKey {
        key: key.to_owned(),
        reason: "clashes with another key of the body".into(),
    };
    let mut node = root;
    for (i, seg) in segs.iter().enumerate() {
        let last = i + 1 == segs.len();
        let Node::Map(children) = node else {
            return Err(clash());
        };
        // `a[]=x` appends: the next numeric index.
        let name: String = if seg.is_empty() {
            children.len().to_string()
        } else {
            if seg.bytes().all(|b| b.is_ascii_digit()) && seg.len() > 6 {
                return Err(WebhookError::BadKey {
                    key: key.to_owned(),
                    reason: format!("index {seg} too large"),
                });
            }
            if seg.parse::<usize>().is_ok_and(|v| v > MAX_INDEX) {
                return Err(WebhookError::BadKey {
                    key: key.to_owned(),
                    reason: format!("index {seg} too large"),
                });
            }
            (*seg).to_owned()
        };
        let pos = match children.iter().position(|(k, _)| *k == name) {
            Some(p) => p,
            None => {
                children.push((
                    name,
                    if last {
                        Node::Value(String::new())
                    } else {
                        Node::Map(Vec::new())
                    },
                ));
                children.len() - 1
            }
        };
        let child = &mut children[pos].1;
        if last {
            match child {
                // PHP keeps the last of repeated keys.
                Node::Value(v) => *v = value,
                Node::Map(_) => return Err(clash()),
            }
            return Ok(());
        }
        if matches!(child, Node::Value(_)) {
            return Err(clash());
        }
        node = child;
    }
    Ok(())
}

impl fmt::Display for WebhookEntity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Leads => "leads",
            Self::Contacts => "contacts",
            Self::Companies => "companies",
            Self::Customers => "customers",
            Self::Tasks => "task",
            Self::Other(o) => o,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS_HOOK: &str = "leads[status][0][id]=31926520&leads[status][0][name]=Some+lead&leads[status][0][status_id]=142\
&leads[status][0][old_status_id]=10216995&leads[status][0][pipeline_id]=2116&leads[status][0][old_pipeline_id]=2116\
&leads[status][0][price]=1000&leads[status][0][responsible_user_id]=938348&leads[status][0][last_modified]=1456820780\
&leads[status][0][modified_user_id]=102525&leads[status][0][created_user_id]=102525&leads[status][0][date_create]=1456808154\
&leads[status][0][created_at]=1456808154&leads[status][0][updated_at]=1456820780&leads[status][0][account_id]=10216991\
&leads[status][0][custom_fields][0][id]=1119321&leads[status][0][custom_fields][0][name]=Text\
&leads[status][0][custom_fields][0][values][0][value]=some+text\
&account[subdomain]=test&account[id]=10216991&account[_links][self]=https://test.amocrm.ru";

    #[test]
    fn status_hook_from_the_docs() {
        let p = parse(STATUS_HOOK.as_bytes()).unwrap();
        assert_eq!(
            p.account,
            WebhookAccount {
                id: Some(10216991),
                subdomain: Some("test".into()),
                url: Some("https://test.amocrm.ru".into())
            }
        );
        assert_eq!(p.events.len(), 1);
        let e = &p.events[0];
        assert_eq!(
            (e.entity.clone(), e.action.as_str(), e.id),
            (WebhookEntity::Leads, "status", Some(31926520))
        );
        assert_eq!(
            (e.status_id, e.old_status_id, e.pipeline_id),
            (Some(142), Some(10216995), Some(2116))
        );
        assert_eq!(
            e.updated_at,
            Some(Timestamp::from_second(1456820780).unwrap())
        );
        let cf = e
            .fields
            .get("custom_fields")
            .and_then(|c| c.get("0"))
            .unwrap();
        assert_eq!(
            cf.get("values")
                .and_then(|v| v.get("0"))
                .and_then(|v| v.str_at("value")),
            Some("some text")
        );
        assert_eq!(e.fields.str_at("name"), Some("Some lead"));
        assert_eq!(p.touched(), [(EntityKind::Deals, 31926520)]);
    }

    #[test]
    fn several_entities_and_actions_in_order() {
        let body = "contacts[add][0][id]=1&contacts[add][1][id]=2&companies[delete][0][id]=3\
&leads[update][0][id]=4&leads[update][0][updated_at]=1700000000&account[id]=9";
        let p = parse(body.as_bytes()).unwrap();
        let got: Vec<_> = p
            .events
            .iter()
            .map(|e| (e.entity.to_string(), e.action.clone(), e.id))
            .collect();
        assert_eq!(
            got,
            [
                ("contacts".into(), "add".into(), Some(1)),
                ("contacts".into(), "add".into(), Some(2)),
                ("companies".into(), "delete".into(), Some(3)),
                ("leads".into(), "update".into(), Some(4)),
            ]
        );
    }

    #[test]
    fn percent_encoded_brackets() {
        let p = parse(b"leads%5Bdelete%5D%5B0%5D%5Bid%5D=5").unwrap();
        assert_eq!(p.events[0].id, Some(5));
    }

    #[test]
    fn bad_keys_are_named() {
        for (body, key) in [
            ("leads[add][0][id=1", "leads[add][0][id"),
            ("leads]x=1", "leads]x"),
            ("leads[add]x[0]=1", "leads[add]x[0]"),
            (
                "leads[add][0][id]=1&leads[add][0][id][x]=2",
                "leads[add][0][id][x]",
            ),
            ("leads[add][0]=1", "leads[add][0]"),
            ("[a]=1", "[a]"),
        ] {
            match parse(body.as_bytes()) {
                Err(WebhookError::BadKey { key: k, .. }) => assert_eq!(k, key, "{body}"),
                other => panic!("{body}: {other:?}"),
            }
        }
    }

    #[test]
    fn bad_values_are_named() {
        match parse(b"leads[status][0][id]=12&leads[status][0][status_id]=abc") {
            Err(WebhookError::BadValue { key, value, .. }) => {
                assert_eq!(key, "leads[status][0][status_id]");
                assert_eq!(value, "abc");
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(parse(b"leads[add][0][name]=x"), Err(WebhookError::BadKey { key, .. }) if key == "leads[add][0][id]")
        );
    }

    #[test]
    fn odd_inputs_do_not_panic() {
        for body in [
            &b""[..],
            b"&&&",
            b"=",
            b"a",
            b"a[]=1&a[]=2",
            b"%ZZ",
            b"\xff\xfe",
            b"leads[add][99999999999999999999][id]=1",
            b"leads[add][0][id]=-1",
            b"account=1",
            b"a[b][c][d][e][f][g][h][i][j][k][l][m][n]=1",
        ] {
            let _ = parse(body);
        }
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_any_bytes(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = parse(&body);
        }

        #[test]
        fn never_panics_on_bracket_soup(body in "[a-z0-9\\[\\]=&%_]{0,200}") {
            let _ = parse(body.as_bytes());
        }
    }
}
