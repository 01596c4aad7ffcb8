//! Bitrix24 event deliveries (app handlers and outgoing webhooks) -> typed events.
//!
//! Bitrix24 POSTs `application/x-www-form-urlencoded` bodies with PHP-bracket keys:
//! `event=ONCRMDEALUPDATE&event_handler_id=58&data[FIELDS][ID]=759&ts=1736405807&auth[domain]=..&auth[application_token]=..`
//! (a JSON body of the same shape is accepted too). [`parse`] never panics; an error names the
//! offending key. The payload carries only the entity id: the sidecar fetches the entity.
//! Deliveries are not retried by Bitrix24 and own writes echo back, so handlers must be
//! idempotent (dedupe on event + id + ts) and the sidecar must reconcile ids periodically.
//!
//! Authenticity: compare `auth[application_token]` with the stored token ([`B24Event::verify`],
//! constant time); no other signature exists.
use jiff::Timestamp;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// `ONCRMDEALADD`.
    DealAdd,
    /// `ONCRMDEALUPDATE`.
    DealUpdate,
    /// `ONCRMDEALDELETE`.
    DealDelete,
    /// `ONCRMDEALMOVETOCATEGORY`, with the new funnel and stage when sent.
    DealMoveToCategory {
        /// `data[FIELDS][CATEGORY_ID]`.
        category_id: Option<u64>,
        /// `data[FIELDS][STAGE_ID]`.
        stage_id: Option<String>,
    },
    /// `ONCRMCONTACTADD`.
    ContactAdd,
    /// `ONCRMCONTACTUPDATE`.
    ContactUpdate,
    /// `ONCRMCONTACTDELETE`.
    ContactDelete,
    /// `ONCRMCOMPANYADD`.
    CompanyAdd,
    /// `ONCRMCOMPANYUPDATE`.
    CompanyUpdate,
    /// `ONCRMCOMPANYDELETE`.
    CompanyDelete,
    /// `ONAPPINSTALL` (carries tokens in `auth`).
    AppInstall,
    /// `ONAPPUNINSTALL`.
    AppUninstall,
    /// Any other event, by name.
    Other(String),
}

/// The `auth[...]` block of a delivery.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct EventAuth {
    /// Portal domain.
    pub domain: Option<String>,
    /// `https://{portal}/rest/`.
    pub client_endpoint: Option<String>,
    /// OAuth server's REST endpoint.
    pub server_endpoint: Option<String>,
    /// Portal id.
    pub member_id: Option<String>,
    /// The token that authenticates the delivery.
    pub application_token: Option<String>,
    /// Access token (app handlers only; absent when automation made the change).
    pub access_token: Option<String>,
    /// Refresh token (`ONAPPINSTALL`, offline events only).
    pub refresh_token: Option<String>,
    /// Access token lifetime.
    pub expires_in: Option<u64>,
    /// Scope.
    pub scope: Option<String>,
    /// User the tokens act for.
    pub user_id: Option<u64>,
}

impl std::fmt::Debug for EventAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventAuth")
            .field("domain", &self.domain)
            .field("member_id", &self.member_id)
            .field("has_access_token", &self.access_token.is_some())
            .finish_non_exhaustive()
    }
}

/// A parsed delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct B24Event {
    /// The event name as sent (upper case).
    pub name: String,
    /// Typed kind.
    pub kind: EventKind,
    /// `event_handler_id`.
    pub handler_id: Option<u64>,
    /// `data[FIELDS][ID]`: the entity.
    pub entity_id: Option<u64>,
    /// Every `data[FIELDS][..]` value as text.
    pub fields: BTreeMap<String, String>,
    /// `ts`: when the queue sent it.
    pub ts: Option<Timestamp>,
    /// `auth[...]`.
    pub auth: EventAuth,
}

/// A delivery that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad Bitrix24 event at `{key}`: {message}")]
pub struct EventError {
    /// The offending key (`event`, `data[FIELDS][ID]`, `ts`).
    pub key: String,
    /// What was wrong.
    pub message: String,
}

fn err(key: &str, message: impl Into<String>) -> EventError {
    EventError {
        key: key.into(),
        message: message.into(),
    }
}

impl B24Event {
    /// Whether `auth[application_token]` equals `expected` (compared in constant time).
    pub fn verify(&self, expected: &str) -> bool {
        let Some(got) = &self.auth.application_token else {
            return false;
        };
        let (a, b) = (got.as_bytes(), expected.as_bytes());
        if a.len() != b.len() || b.is_empty() {
            return false;
        }
        a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

/// Parses a delivery body; `content_type` picks JSON (`application/json`) or a form.
pub fn parse(body: &[u8], content_type: Option<&str>) -> Result<B24Event, EventError> {
    let is_json = content_type.is_some_and(|c| c.to_ascii_lowercase().contains("json"))
        || body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    let root: Map<String, Value> = if is_json {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(m)) => m,
            Ok(_) => return Err(err(".", "the JSON body is not an object")),
            Err(e) => return Err(err(".", format!("invalid JSON: {e}"))),
        }
    } else {
        let text = std::str::from_utf8(body).map_err(|_| err(".", "the body is not UTF-8"))?;
        php_form(text)
    };
    let name = match root.get("event") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_ascii_uppercase(),
        Some(_) => return Err(err("event", "not a non-empty string")),
        None => return Err(err("event", "missing")),
    };
    let handler_id = opt_u64(root.get("event_handler_id"), "event_handler_id")?;
    let fields_v = root.get("data").and_then(|d| d.get("FIELDS"));
    let mut fields = BTreeMap::new();
    match fields_v {
        Some(Value::Object(m)) => {
            for (k, v) in m {
                fields.insert(
                    k.clone(),
                    scalar(v).ok_or_else(|| err(&format!("data[FIELDS][{k}]"), "not a scalar"))?,
                );
            }
        }
        Some(Value::Null) | None => {}
        Some(_) => return Err(err("data[FIELDS]", "not an object")),
    }
    let entity_id = match fields.get("ID") {
        Some(s) => Some(
            s.trim()
                .parse::<u64>()
                .map_err(|_| err("data[FIELDS][ID]", format!("not an id: {s:?}")))?,
        ),
        None => None,
    };
    let ts = match opt_u64(root.get("ts"), "ts")? {
        Some(s) => Some(Timestamp::from_second(s as i64).map_err(|e| err("ts", e.to_string()))?),
        None => None,
    };
    let auth = match root.get("auth") {
        Some(Value::Object(a)) => {
            let s = |k: &str| a.get(k).and_then(scalar).filter(|v| !v.is_empty());
            EventAuth {
                domain: s("domain"),
                client_endpoint: s("client_endpoint"),
                server_endpoint: s("server_endpoint"),
                member_id: s("member_id"),
                application_token: s("application_token"),
                access_token: s("access_token"),
                refresh_token: s("refresh_token"),
                expires_in: opt_u64(a.get("expires_in"), "auth[expires_in]")?,
                scope: s("scope"),
                user_id: opt_u64(a.get("user_id"), "auth[user_id]")?,
            }
        }
        None | Some(Value::Null) => EventAuth::default(),
        Some(_) => return Err(err("auth", "not an object")),
    };
    let kind =
        match name.as_str() {
            "ONCRMDEALADD" => EventKind::DealAdd,
            "ONCRMDEALUPDATE" => EventKind::DealUpdate,
            "ONCRMDEALDELETE" => EventKind::DealDelete,
            "ONCRMDEALMOVETOCATEGORY" => EventKind::DealMoveToCategory {
                category_id: match fields.get("CATEGORY_ID") {
                    Some(c) => Some(c.trim().parse().map_err(|_| {
                        err("data[FIELDS][CATEGORY_ID]", format!("not an id: {c:?}"))
                    })?),
                    None => None,
                },
                stage_id: fields.get("STAGE_ID").cloned(),
            },
            "ONCRMCONTACTADD" => EventKind::ContactAdd,
            "ONCRMCONTACTUPDATE" => EventKind::ContactUpdate,
            "ONCRMCONTACTDELETE" => EventKind::ContactDelete,
            "ONCRMCOMPANYADD" => EventKind::CompanyAdd,
            "ONCRMCOMPANYUPDATE" => EventKind::CompanyUpdate,
            "ONCRMCOMPANYDELETE" => EventKind::CompanyDelete,
            "ONAPPINSTALL" => EventKind::AppInstall,
            "ONAPPUNINSTALL" => EventKind::AppUninstall,
            other => EventKind::Other(other.to_owned()),
        };
    if name.starts_with("ONCRM") && entity_id.is_none() {
        return Err(err("data[FIELDS][ID]", "missing"));
    }
    Ok(B24Event {
        name,
        kind,
        handler_id,
        entity_id,
        fields,
        ts,
        auth,
    })
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn opt_u64(v: Option<&Value>, key: &str) -> Result<Option<u64>, EventError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| err(key, format!("not a number: {s:?}"))),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| err(key, format!("not a non-negative integer: {n}"))),
        Some(_) => Err(err(key, "not a number")),
    }
}

/// `a[b][c]=v` pairs -> nested objects (last value wins; `a[]` appends as `"0"`, `"1"`...).
fn php_form(text: &str) -> Map<String, Value> {
    let mut root = Map::new();
    for (k, v) in url::form_urlencoded::parse(text.as_bytes()) {
        let mut path: Vec<String> = Vec::new();
        match k.find('[') {
            None => path.push(k.to_string()),
            Some(i) => {
                path.push(k[..i].to_owned());
                let mut rest = &k[i..];
                while let Some(s) = rest.strip_prefix('[') {
                    let Some(end) = s.find(']') else { break };
                    path.push(s[..end].to_owned());
                    rest = &s[end + 1..];
                }
            }
        }
        let mut node = &mut root;
        for (i, p) in path.iter().enumerate() {
            let key = if p.is_empty() {
                node.len().to_string()
            } else {
                p.clone()
            };
            if i + 1 == path.len() {
                node.insert(key, Value::String(v.to_string()));
                break;
            }
            let child = node.entry(key).or_insert_with(|| Value::Object(Map::new()));
            if !child.is_object() {
                *child = Value::Object(Map::new());
            }
            let Value::Object(m) = child else { break };
            node = m;
        }
    }
    root
}

#[cfg(test)]
mod tests {
    use super::*;

    const REAL: &str = "event=ONCRMCONTACTADD&event_handler_id=58&data%5BFIELDS%5D%5BID%5D=134806&ts=1727018926&auth%5Baccess_token%5D=abc&auth%5Bexpires%5D=1727022526&auth%5Bexpires_in%5D=3600&auth%5Bscope%5D=crm%2Cplacement%2Cuser_brief&auth%5Bdomain%5D=x.bitrix24.com&auth%5Bserver_endpoint%5D=https%3A%2F%2Foauth.bitrix.info%2Frest%2F&auth%5Bstatus%5D=L&auth%5Bclient_endpoint%5D=https%3A%2F%2Fx.bitrix24.com%2Frest%2F&auth%5Bmember_id%5D=010b&auth%5Buser_id%5D=1&auth%5Bapplication_token%5D=tok";

    #[test]
    fn parses_the_documented_form_body() {
        let e = parse(REAL.as_bytes(), Some("application/x-www-form-urlencoded")).unwrap();
        assert_eq!(e.kind, EventKind::ContactAdd);
        assert_eq!(e.entity_id, Some(134806));
        assert_eq!(e.handler_id, Some(58));
        assert_eq!(e.ts.unwrap().as_second(), 1727018926);
        assert_eq!(e.auth.domain.as_deref(), Some("x.bitrix24.com"));
        assert!(e.verify("tok"));
        assert!(!e.verify("other"));
    }

    #[test]
    fn parses_json_and_move_to_category() {
        let body = br#"{"event":"ONCRMDEALMOVETOCATEGORY","event_handler_id":"201","data":{"FIELDS":{"ID":"759","CATEGORY_ID":"2","STAGE_ID":"C2:NEW"}},"ts":"1736405807","auth":{"application_token":"t"}}"#;
        let e = parse(body, Some("application/json")).unwrap();
        assert_eq!(
            e.kind,
            EventKind::DealMoveToCategory {
                category_id: Some(2),
                stage_id: Some("C2:NEW".into())
            }
        );
    }

    #[test]
    fn errors_name_the_key() {
        let e = parse(b"event=ONCRMDEALUPDATE&data[FIELDS][ID]=x1", None).unwrap_err();
        assert_eq!(e.key, "data[FIELDS][ID]");
        assert_eq!(parse(b"ts=1", None).unwrap_err().key, "event");
        assert_eq!(
            parse(b"event=ONCRMDEALUPDATE&data[FIELDS][ID]=1&ts=soon", None)
                .unwrap_err()
                .key,
            "ts"
        );
        assert_eq!(
            parse(b"{\"event\":", Some("application/json"))
                .unwrap_err()
                .key,
            "."
        );
        assert!(parse(&[0xff, 0xfe], None).is_err());
    }
}
