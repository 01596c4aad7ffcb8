//! Bitrix24's answers in its own names (`crm.deal`, `STAGE_SEMANTIC_ID`), read leniently.
//!
//! Bitrix24 sends numbers as strings (`"ID":"410"`, `"OPPORTUNITY":"1000000.00"`) in the legacy
//! `crm.*` methods and as numbers elsewhere (`crm.item.*`, product rows), `null` or `""` for
//! empty values, `Y`/`N` for flags, and PHP's `[]` for an empty map. The deserializers here
//! accept every one of those forms; anything else fails with the JSON path named (decoded
//! through `serde_path_to_error`). Unknown fields are ignored.
use jiff::Timestamp;
use rust_decimal::Decimal;
use serde::Deserialize;
use serde::de::{self, DeserializeOwned, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::str::FromStr;

/// `{"result": T, "total": n, "next": n, "time": {...}}`.
#[derive(Debug, Clone, Deserialize)]
pub struct Envelope<T> {
    /// The method's result.
    pub result: T,
    /// List total (0 with `start=-1`).
    #[serde(default, deserialize_with = "opt_u64")]
    pub total: Option<u64>,
    /// Start of the next page.
    #[serde(default, deserialize_with = "opt_u64")]
    pub next: Option<u64>,
    /// Timing and operating time.
    #[serde(default)]
    pub time: Option<TimeBlock>,
}

/// `{"error": "CODE", "error_description": "text"}`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ApiError {
    /// The code (may be empty in legacy CRM errors).
    #[serde(default, deserialize_with = "text")]
    pub error: String,
    /// The text.
    #[serde(default, deserialize_with = "text")]
    pub error_description: String,
    /// Present on 429 `OPERATION_TIME_LIMIT` answers of some portals.
    #[serde(default)]
    pub time: Option<TimeBlock>,
}

/// The `time` block.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TimeBlock {
    /// Seconds of this method in the operating window.
    #[serde(default, deserialize_with = "opt_f64")]
    pub operating: Option<f64>,
    /// When the oldest basket leaves the window (unix seconds).
    #[serde(default, deserialize_with = "opt_i64")]
    pub operating_reset_at: Option<i64>,
}

/// The `result` of `batch`.
#[derive(Debug, Clone, Deserialize)]
#[serde(bound(deserialize = "T: DeserializeOwned"))]
pub struct BatchResult<T> {
    /// Results by command key.
    #[serde(deserialize_with = "php_map")]
    pub result: BTreeMap<String, T>,
    /// Errors by command key.
    #[serde(default, deserialize_with = "php_map")]
    pub result_error: BTreeMap<String, ApiError>,
    /// Totals by command key.
    #[serde(default, deserialize_with = "php_map")]
    pub result_total: BTreeMap<String, Value>,
    /// Next starts by command key.
    #[serde(default, deserialize_with = "php_map")]
    pub result_next: BTreeMap<String, Value>,
    /// Time blocks by command key.
    #[serde(default, deserialize_with = "php_map")]
    pub result_time: BTreeMap<String, TimeBlock>,
}

/// One multi-field value (`PHONE`, `EMAIL`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[allow(non_snake_case)]
pub struct Multi {
    /// Value id.
    #[serde(default, deserialize_with = "opt_u64")]
    pub ID: Option<u64>,
    /// `WORK`, `MOBILE`...
    #[serde(default, deserialize_with = "text")]
    pub VALUE_TYPE: String,
    /// The value.
    #[serde(default, deserialize_with = "text")]
    pub VALUE: String,
}

/// A `crm.contact` row.
#[derive(Debug, Clone, Deserialize)]
#[allow(non_snake_case)]
pub struct Contact {
    /// `ID`.
    #[serde(deserialize_with = "u64_any")]
    pub ID: u64,
    /// `NAME`.
    #[serde(default, deserialize_with = "text")]
    pub NAME: String,
    /// `SECOND_NAME`.
    #[serde(default, deserialize_with = "text")]
    pub SECOND_NAME: String,
    /// `LAST_NAME`.
    #[serde(default, deserialize_with = "text")]
    pub LAST_NAME: String,
    /// `COMPANY_ID`.
    #[serde(default, deserialize_with = "opt_u64")]
    pub COMPANY_ID: Option<u64>,
    /// `ASSIGNED_BY_ID`.
    #[serde(default, deserialize_with = "opt_u64")]
    pub ASSIGNED_BY_ID: Option<u64>,
    /// `DATE_CREATE`.
    #[serde(deserialize_with = "time")]
    pub DATE_CREATE: Timestamp,
    /// `DATE_MODIFY`.
    #[serde(deserialize_with = "time")]
    pub DATE_MODIFY: Timestamp,
    /// `PHONE`.
    #[serde(default, deserialize_with = "multis")]
    pub PHONE: Vec<Multi>,
    /// `EMAIL`.
    #[serde(default, deserialize_with = "multis")]
    pub EMAIL: Vec<Multi>,
    /// Everything else (the `UF_CRM_*` values).
    #[serde(flatten)]
    pub rest: BTreeMap<String, Value>,
}

/// A `crm.company` row.
#[derive(Debug, Clone, Deserialize)]
#[allow(non_snake_case)]
pub struct Company {
    /// `ID`.
    #[serde(deserialize_with = "u64_any")]
    pub ID: u64,
    /// `TITLE`.
    #[serde(default, deserialize_with = "text")]
    pub TITLE: String,
    /// `ASSIGNED_BY_ID`.
    #[serde(default, deserialize_with = "opt_u64")]
    pub ASSIGNED_BY_ID: Option<u64>,
    /// `DATE_CREATE`.
    #[serde(deserialize_with = "time")]
    pub DATE_CREATE: Timestamp,
    /// `DATE_MODIFY`.
    #[serde(deserialize_with = "time")]
    pub DATE_MODIFY: Timestamp,
    /// `PHONE`.
    #[serde(default, deserialize_with = "multis")]
    pub PHONE: Vec<Multi>,
    /// `EMAIL`.
    #[serde(default, deserialize_with = "multis")]
    pub EMAIL: Vec<Multi>,
    /// `UF_CRM_*` values.
    #[serde(flatten)]
    pub rest: BTreeMap<String, Value>,
}

/// A `crm.deal` row.
#[derive(Debug, Clone, Deserialize)]
#[allow(non_snake_case)]
pub struct Deal {
    /// `ID`.
    #[serde(deserialize_with = "u64_any")]
    pub ID: u64,
    /// `TITLE`.
    #[serde(default, deserialize_with = "text")]
    pub TITLE: String,
    /// `CATEGORY_ID` (funnel).
    #[serde(default, deserialize_with = "opt_u64")]
    pub CATEGORY_ID: Option<u64>,
    /// `STAGE_ID`.
    #[serde(default, deserialize_with = "text")]
    pub STAGE_ID: String,
    /// `STAGE_SEMANTIC_ID`: `P`, `S`, `F`.
    #[serde(default, deserialize_with = "text")]
    pub STAGE_SEMANTIC_ID: String,
    /// `CURRENCY_ID`.
    #[serde(default, deserialize_with = "text")]
    pub CURRENCY_ID: String,
    /// `OPPORTUNITY`.
    #[serde(default, deserialize_with = "opt_decimal")]
    pub OPPORTUNITY: Option<Decimal>,
    /// `CONTACT_ID`: the primary contact.
    #[serde(default, deserialize_with = "opt_u64")]
    pub CONTACT_ID: Option<u64>,
    /// `COMPANY_ID`.
    #[serde(default, deserialize_with = "opt_u64")]
    pub COMPANY_ID: Option<u64>,
    /// `ASSIGNED_BY_ID`.
    #[serde(default, deserialize_with = "opt_u64")]
    pub ASSIGNED_BY_ID: Option<u64>,
    /// `DATE_CREATE`.
    #[serde(deserialize_with = "time")]
    pub DATE_CREATE: Timestamp,
    /// `DATE_MODIFY`.
    #[serde(deserialize_with = "time")]
    pub DATE_MODIFY: Timestamp,
    /// `CLOSEDATE`.
    #[serde(default, deserialize_with = "opt_time")]
    pub CLOSEDATE: Option<Timestamp>,
    /// `CLOSED`.
    #[serde(default, deserialize_with = "yn")]
    pub CLOSED: bool,
    /// `IS_RETURN_CUSTOMER`.
    #[serde(default, deserialize_with = "yn")]
    pub IS_RETURN_CUSTOMER: bool,
    /// `UF_CRM_*` values.
    #[serde(flatten)]
    pub rest: BTreeMap<String, Value>,
}

/// A row of `crm.deal.contact.items.get`.
#[derive(Debug, Clone, Deserialize)]
#[allow(non_snake_case)]
pub struct DealContactItem {
    /// The contact.
    #[serde(deserialize_with = "u64_any")]
    pub CONTACT_ID: u64,
    /// Sort.
    #[serde(default, deserialize_with = "opt_i64")]
    pub SORT: Option<i64>,
    /// `Y` for the primary contact.
    #[serde(default, deserialize_with = "yn")]
    pub IS_PRIMARY: bool,
}

/// A row of `crm.deal.productrows.get`.
#[derive(Debug, Clone, Deserialize)]
#[allow(non_snake_case)]
pub struct ProductRow {
    /// `PRODUCT_ID` (0 = free-text row).
    #[serde(default, deserialize_with = "opt_u64")]
    pub PRODUCT_ID: Option<u64>,
    /// `PRODUCT_NAME`.
    #[serde(default, deserialize_with = "text")]
    pub PRODUCT_NAME: String,
    /// `PRICE`: final unit price.
    #[serde(deserialize_with = "decimal")]
    pub PRICE: Decimal,
    /// `QUANTITY`.
    #[serde(deserialize_with = "decimal")]
    pub QUANTITY: Decimal,
}

/// A row of `crm.item.productrow.list` (camelCase).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ItemProductRow {
    /// Row id.
    #[serde(deserialize_with = "u64_any")]
    pub id: u64,
    /// The deal.
    #[serde(deserialize_with = "u64_any")]
    pub owner_id: u64,
    /// Catalog product.
    #[serde(default, deserialize_with = "opt_u64")]
    pub product_id: Option<u64>,
    /// Name.
    #[serde(default, deserialize_with = "text")]
    pub product_name: String,
    /// Final unit price.
    #[serde(deserialize_with = "decimal")]
    pub price: Decimal,
    /// Quantity.
    #[serde(deserialize_with = "decimal")]
    pub quantity: Decimal,
}

/// `{"productRows": [...]}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ItemProductRows {
    /// The rows.
    #[serde(default)]
    pub product_rows: Vec<ItemProductRow>,
}

/// A funnel of `crm.category.list`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Category {
    /// Id (0 = default funnel).
    #[serde(deserialize_with = "u64_any")]
    pub id: u64,
    /// Name.
    #[serde(default, deserialize_with = "text")]
    pub name: String,
    /// Sort.
    #[serde(default, deserialize_with = "opt_i64")]
    pub sort: Option<i64>,
    /// `Y` for the default funnel.
    #[serde(default, deserialize_with = "yn")]
    pub is_default: bool,
}

/// `{"categories": [...]}`.
#[derive(Debug, Clone, Deserialize)]
pub struct Categories {
    /// The funnels.
    #[serde(default)]
    pub categories: Vec<Category>,
}

/// A stage of `crm.status.list`.
#[derive(Debug, Clone, Deserialize)]
#[allow(non_snake_case)]
pub struct Status {
    /// `ENTITY_ID` (`DEAL_STAGE_1`).
    #[serde(default, deserialize_with = "text")]
    pub ENTITY_ID: String,
    /// `STATUS_ID`: the stage code.
    #[serde(deserialize_with = "text")]
    pub STATUS_ID: String,
    /// `NAME`.
    #[serde(default, deserialize_with = "text")]
    pub NAME: String,
    /// `SORT`.
    #[serde(default, deserialize_with = "opt_i64")]
    pub SORT: Option<i64>,
    /// `SEMANTICS`: `S`, `F` or empty.
    #[serde(default, deserialize_with = "text")]
    pub SEMANTICS: String,
}

/// A `user.get` row.
#[derive(Debug, Clone, Deserialize)]
#[allow(non_snake_case)]
pub struct User {
    /// `ID`.
    #[serde(deserialize_with = "u64_any")]
    pub ID: u64,
    /// `ACTIVE` (a boolean; `Y`/`N` accepted).
    #[serde(default, deserialize_with = "yn")]
    pub ACTIVE: bool,
    /// `NAME`.
    #[serde(default, deserialize_with = "text")]
    pub NAME: String,
    /// `LAST_NAME`.
    #[serde(default, deserialize_with = "text")]
    pub LAST_NAME: String,
    /// `EMAIL`.
    #[serde(default, deserialize_with = "text")]
    pub EMAIL: String,
}

/// A row carrying only `ID` (reconciliation).
#[derive(Debug, Clone, Deserialize)]
#[allow(non_snake_case)]
pub struct IdOnly {
    /// `ID`.
    #[serde(deserialize_with = "u64_any")]
    pub ID: u64,
}

/// Rows that have an `ID`, for chained listing.
pub trait HasId {
    /// The id.
    fn id(&self) -> u64;
}

macro_rules! has_id {
    ($($t:ty),*) => {$(impl HasId for $t { fn id(&self) -> u64 { self.ID } })*};
}
has_id!(Contact, Company, Deal, IdOnly);

impl HasId for ItemProductRow {
    fn id(&self) -> u64 {
        self.id
    }
}

// ---------------------------------------------------------------------------------------------
// Lenient deserializers.

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(if *b { "Y" } else { "N" }.into()),
        Value::Null => None,
        _ => None,
    }
}

/// Text: a string, a number's text, `null` -> empty.
pub fn text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let v = Value::deserialize(d)?;
    match v {
        Value::Array(_) | Value::Object(_) => Err(de::Error::custom(
            "expected text, found a list or an object",
        )),
        other => Ok(scalar_text(&other).unwrap_or_default()),
    }
}

/// An id or count: `5`, `"5"`.
pub fn u64_any<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    opt_u64(d)?
        .ok_or_else(|| de::Error::custom("expected an integer, found null or an empty string"))
}

/// An optional integer: `null`, `""` -> `None`; `5`, `"5"` -> `Some(5)`.
pub fn opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let v = Value::deserialize(d)?;
    match &v {
        Value::Null => Ok(None),
        Value::String(s) if s.trim().is_empty() => Ok(None),
        Value::String(s) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| de::Error::custom(format!("expected an integer, found {s:?}"))),
        Value::Number(n) => n.as_u64().map(Some).ok_or_else(|| {
            de::Error::custom(format!("expected a non-negative integer, found {n}"))
        }),
        other => Err(de::Error::custom(format!(
            "expected an integer, found {other}"
        ))),
    }
}

/// An optional signed integer.
pub fn opt_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    let v = Value::deserialize(d)?;
    match &v {
        Value::Null => Ok(None),
        Value::String(s) if s.trim().is_empty() => Ok(None),
        Value::String(s) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| de::Error::custom(format!("expected an integer, found {s:?}"))),
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().map(|f| f as i64))
            .map(Some)
            .ok_or_else(|| de::Error::custom("bad integer")),
        other => Err(de::Error::custom(format!(
            "expected an integer, found {other}"
        ))),
    }
}

/// An optional float (timings only; never money).
pub fn opt_f64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    let v = Value::deserialize(d)?;
    Ok(match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    })
}

/// An exact decimal from `"19999.00"` or `899.1` (the number's shortest text, parsed exactly).
pub fn decimal<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
    opt_decimal(d)?.ok_or_else(|| de::Error::custom("expected a number, found null"))
}

/// An optional exact decimal.
pub fn opt_decimal<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Decimal>, D::Error> {
    let v = Value::deserialize(d)?;
    match &v {
        Value::Null => Ok(None),
        Value::String(s) if s.trim().is_empty() => Ok(None),
        Value::String(s) => Decimal::from_str(s.trim())
            .or_else(|_| Decimal::from_scientific(s.trim()))
            .map(Some)
            .map_err(|_| de::Error::custom(format!("expected a decimal, found {s:?}"))),
        Value::Number(n) => {
            let t = n.to_string();
            Decimal::from_str(&t)
                .or_else(|_| Decimal::from_scientific(&t))
                .map(Some)
                .map_err(|_| de::Error::custom("bad decimal"))
        }
        other => Err(de::Error::custom(format!(
            "expected a decimal, found {other}"
        ))),
    }
}

/// `Y`/`N`, booleans, `1`/`0`.
pub fn yn<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    let v = Value::deserialize(d)?;
    Ok(match v {
        Value::Bool(b) => b,
        Value::String(s) => matches!(s.as_str(), "Y" | "y" | "1" | "true"),
        Value::Number(n) => n.as_i64() == Some(1),
        _ => false,
    })
}

/// A datetime with offset (`2024-08-30T14:29:00+02:00`).
pub fn time<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
    opt_time(d)?.ok_or_else(|| de::Error::custom("expected a datetime, found null"))
}

/// An optional datetime (`null`, `""` -> `None`).
pub fn opt_time<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Timestamp>, D::Error> {
    let v = Value::deserialize(d)?;
    match &v {
        Value::Null => Ok(None),
        Value::String(s) if s.trim().is_empty() => Ok(None),
        Value::String(s) => s
            .trim()
            .parse::<Timestamp>()
            .map(Some)
            .map_err(|e| de::Error::custom(format!("bad datetime {s:?}: {e}"))),
        other => Err(de::Error::custom(format!(
            "expected a datetime, found {other}"
        ))),
    }
}

/// A multi-field: a list of values, or `null`/absent.
pub fn multis<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Multi>, D::Error> {
    Ok(Option::<Vec<Multi>>::deserialize(d)?.unwrap_or_default())
}

/// A PHP associative array: `{}` / `{"k": v}`, or `[]` when empty (a non-empty list is read
/// with keys `"0"`, `"1"`...).
pub fn php_map<'de, D: Deserializer<'de>, T: DeserializeOwned>(
    d: D,
) -> Result<BTreeMap<String, T>, D::Error> {
    struct V<T>(PhantomData<T>);
    impl<'de, T: DeserializeOwned> Visitor<'de> for V<T> {
        type Value = BTreeMap<String, T>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an object or an empty list")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some((k, v)) = m.next_entry::<String, T>()? {
                out.insert(k, v);
            }
            Ok(out)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            let mut i = 0usize;
            while let Some(v) = s.next_element::<T>()? {
                out.insert(i.to_string(), v);
                i += 1;
            }
            Ok(out)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(BTreeMap::new())
        }
    }
    d.deserialize_any(V(PhantomData))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_and_numbers_are_read_alike() {
        let d: Deal = serde_json::from_str(
            r#"{"ID":"410","TITLE":"x","CATEGORY_ID":"1","STAGE_ID":"C1:WON","STAGE_SEMANTIC_ID":"S","OPPORTUNITY":"19999.00",
                "CONTACT_ID":null,"COMPANY_ID":"0","DATE_CREATE":"2024-08-30T14:29:00+02:00","DATE_MODIFY":"2024-08-30T14:29:00+02:00",
                "CLOSED":"Y","UF_CRM_1":["a"]}"#,
        )
        .unwrap();
        assert_eq!(d.ID, 410);
        assert_eq!(d.OPPORTUNITY.unwrap().to_string(), "19999.00");
        assert_eq!(d.CONTACT_ID, None);
        assert_eq!(d.COMPANY_ID, Some(0));
        assert!(d.CLOSED);
        assert_eq!(d.rest["UF_CRM_1"], serde_json::json!(["a"]));
        let r: ProductRow = serde_json::from_str(
            r#"{"PRODUCT_ID":450,"PRODUCT_NAME":"P","PRICE":899.1,"QUANTITY":1}"#,
        )
        .unwrap();
        assert_eq!(r.PRICE.to_string(), "899.1");
    }

    #[test]
    fn php_empty_maps() {
        let b: BatchResult<Value> =
            serde_json::from_str(r#"{"result":[],"result_error":[],"result_total":[],"result_next":[],"result_time":[]}"#).unwrap();
        assert!(b.result.is_empty() && b.result_error.is_empty());
        let b: BatchResult<Value> = serde_json::from_str(
            r#"{"result":{"a":1},"result_error":{"b":{"error":"X","error_description":"y"}}}"#,
        )
        .unwrap();
        assert_eq!(b.result_error["b"].error, "X");
    }
}
