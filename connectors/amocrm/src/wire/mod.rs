//! amoCRM's JSON, in amoCRM's names.
//!
//! These structs mirror API v4 bodies closely enough to decode them and nothing more: every
//! struct is `#[serde(default)]`, values amoCRM may send as `null` are `Option`s, and unknown
//! fields are ignored, so a new field or a missing one never breaks a sync. Timestamps are Unix
//! seconds decoded straight into [`jiff::Timestamp`]; an out-of-range one fails decoding with its
//! JSON path. [`crate::map`] turns these into domain records.
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};
use std::fmt;

mod account;
mod entities;
mod events;

pub use account::*;
pub use entities::*;
pub use events::*;

/// Decodes an amoCRM JSON body as the client does: a mismatch is
/// [`ConnectorError::Invalid`](rebuy_core::ConnectorError::Invalid) naming the JSON path
/// (`_embedded.leads[3].price`), a body cut short is `Transient` (it is fetched again).
pub fn decode<T: serde::de::DeserializeOwned>(
    body: &[u8],
) -> Result<T, rebuy_core::ConnectorError> {
    crate::client::decode_json(body)
}

/// `{"href": "..."}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Link {
    /// The URL.
    pub href: String,
}

/// HAL `_links` of a list page.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Links {
    /// This page.
    #[serde(rename = "self")]
    pub this: Option<Link>,
    /// The next page; absent on the last page.
    pub next: Option<Link>,
    /// The previous page.
    pub prev: Option<Link>,
}

/// One page of a v4 list: `{"_page": 1, "_links": {...}, "_embedded": {"leads": [...]}}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ListPage<E> {
    /// Page number (1-based).
    #[serde(rename = "_page")]
    pub page: Option<u32>,
    /// Links; `next` is absent on the last page.
    #[serde(rename = "_links")]
    pub links: Links,
    /// The records, under the entity's key.
    #[serde(rename = "_embedded")]
    pub embedded: E,
}

/// An `{"id": ..}` reference inside `_embedded`.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(default)]
pub struct IdRef {
    /// The id.
    pub id: u64,
}

/// A tag: `{"id": 1, "name": "repeat"}`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct Tag {
    /// Tag id (absent when writing by name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    /// Tag name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A custom field with its values:
/// `{"field_id":3,"field_name":"Телефон","field_code":"PHONE","field_type":"multitext","values":[...]}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct CustomField {
    /// Field id.
    pub field_id: u64,
    /// Field name.
    pub field_name: Option<String>,
    /// Field code (`PHONE`, `EMAIL`, ...), for system fields.
    pub field_code: Option<String>,
    /// Field type (`text`, `multitext`, `select`, ...).
    pub field_type: Option<String>,
    /// The values; `null` decodes as `None`.
    pub values: Option<Vec<CustomFieldItem>>,
}

/// One value of a custom field: `{"value":"+79123","enum_id":1,"enum_code":"WORK"}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct CustomFieldItem {
    /// The value, as text whatever its JSON type.
    pub value: Text,
    /// Enum id of select-like fields.
    pub enum_id: Option<u64>,
    /// Enum code (`WORK`, `MOB`, ...).
    pub enum_code: Option<String>,
}

/// Any JSON scalar as text: strings as they are, numbers and booleans printed, `null` empty,
/// objects and arrays as compact JSON. Custom field values come in all of these shapes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Text(pub String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text, E> {
                Ok(Text(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Text, E> {
                Ok(Text(v))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Text, E> {
                Ok(Text(String::new()))
            }
            fn visit_none<E: de::Error>(self) -> Result<Text, E> {
                Ok(Text(String::new()))
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Text, D::Error> {
                Text::deserialize(d)
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Text, A::Error> {
                let v = serde_json::Value::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(Text(v.to_string()))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<Text, A::Error> {
                let v = serde_json::Value::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
                Ok(Text(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// A money amount as amoCRM sends it: an integer (`price`), a float (Kommo's
/// `price_with_minor_units`) or, leniently, a numeric string. Held exactly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Amount(pub rust_decimal::Decimal);

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use rust_decimal::Decimal;
        use rust_decimal::prelude::FromPrimitive;
        struct V;
        impl Visitor<'_> for V {
            type Value = Amount;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Amount, E> {
                Ok(Amount(Decimal::from(v)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Amount, E> {
                Ok(Amount(Decimal::from(v)))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Amount, E> {
                // `from_f64` drops the binary noise (12.34 stays 12.34, not 12.339999...).
                Decimal::from_f64(v)
                    .map(|d| Amount(d.normalize()))
                    .ok_or_else(|| E::custom(format!("amount {v} out of range")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Amount, E> {
                v.trim()
                    .parse::<Decimal>()
                    .map(Amount)
                    .map_err(|e| E::custom(format!("amount {v:?}: {e}")))
            }
        }
        d.deserialize_any(V)
    }
}

/// An error body (`application/problem+json`), with amoCRM's `validation-errors` and the token
/// endpoint's `hint`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Problem {
    /// Short title (`Bad Request`, `Unauthorized`).
    pub title: Option<String>,
    /// Problem type URL.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// HTTP status.
    pub status: Option<u16>,
    /// Human-readable detail.
    pub detail: Option<String>,
    /// The token endpoint's reason (`Token has been revoked`).
    pub hint: Option<String>,
    /// Per-item validation errors of a bulk write.
    #[serde(rename = "validation-errors")]
    pub validation_errors: Vec<ValidationError>,
}

impl Problem {
    /// The most specific text of the body: `hint`, else `detail`, else `title`.
    pub fn message(&self) -> String {
        self.hint
            .as_deref()
            .or(self.detail.as_deref())
            .or(self.title.as_deref())
            .unwrap_or("")
            .to_owned()
    }
}

/// The validation errors of one item of a bulk write.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ValidationError {
    /// The `request_id` of the failing item (amoCRM echoes what was sent; absent items are
    /// numbered by their position).
    pub request_id: Text,
    /// What is wrong with it.
    pub errors: Vec<ValidationItem>,
}

/// One validation error: `{"code":"NotSupportedChoice","path":"custom_fields_values.0.field_id","detail":"..."}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ValidationItem {
    /// Machine code.
    pub code: Option<String>,
    /// Path of the failing value within the item.
    pub path: Option<String>,
    /// Human-readable detail.
    pub detail: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal::Decimal;

    #[test]
    fn text_accepts_any_scalar() {
        let v: Vec<Text> =
            serde_json::from_str(r#"["a", 1, -2, 1.5, true, null, {"x":1}, [1]]"#).unwrap();
        let v: Vec<_> = v.into_iter().map(|t| t.0).collect();
        assert_eq!(v, ["a", "1", "-2", "1.5", "true", "", r#"{"x":1}"#, "[1]"]);
    }

    #[test]
    fn amount_is_exact() {
        let v: Vec<Amount> = serde_json::from_str(r#"[1500, 12.34, "99.90", 0]"#).unwrap();
        let v: Vec<Decimal> = v.into_iter().map(|a| a.0).collect();
        assert_eq!(
            v,
            [
                Decimal::from(1500),
                Decimal::new(1234, 2),
                Decimal::new(9990, 2),
                Decimal::ZERO
            ]
        );
    }
}
