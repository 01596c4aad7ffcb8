//! Serde for the model's timestamps: RFC 3339 text for human-readable formats (JSON output,
//! exports), and whole seconds plus nanoseconds for binary ones (the postcard cache), where
//! parsing millions of date strings would dominate reading a big account back.
use jiff::Timestamp;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `#[serde(with = "crate::timestamp")]` for a `Timestamp`.
pub fn serialize<S: Serializer>(t: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
    if s.is_human_readable() {
        t.serialize(s)
    } else {
        (t.as_second(), t.subsec_nanosecond()).serialize(s)
    }
}

/// `#[serde(with = "crate::timestamp")]` for a `Timestamp`.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
    if d.is_human_readable() {
        Timestamp::deserialize(d)
    } else {
        let (second, nanos) = <(i64, i32)>::deserialize(d)?;
        Timestamp::new(second, nanos).map_err(serde::de::Error::custom)
    }
}

/// The same for an `Option<Timestamp>`.
pub mod option {
    use super::*;

    /// `#[serde(with = "crate::timestamp::option")]`.
    pub fn serialize<S: Serializer>(t: &Option<Timestamp>, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct W<'a>(#[serde(with = "super")] &'a Timestamp);
        t.as_ref().map(W).serialize(s)
    }

    /// `#[serde(with = "crate::timestamp::option")]`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Timestamp>, D::Error> {
        #[derive(Deserialize)]
        struct W(#[serde(with = "super")] Timestamp);
        Ok(Option::<W>::deserialize(d)?.map(|w| w.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct T {
        #[serde(with = "crate::timestamp")]
        at: Timestamp,
        #[serde(with = "crate::timestamp::option")]
        closed: Option<Timestamp>,
    }

    #[test]
    fn text_in_json_numbers_in_postcard_and_both_round_trip() {
        let v = T {
            at: "2026-03-01T09:30:15.123456789Z".parse().unwrap(),
            closed: Some("1969-12-31T23:59:59.5Z".parse().unwrap()),
        };
        let json = serde_json::to_string(&v).unwrap();
        assert!(
            json.contains("\"2026-03-01T09:30:15.123456789Z\""),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<T>(&json).unwrap(), v);
        let bin = postcard::to_allocvec(&v).unwrap();
        assert!(bin.len() < 20, "{} bytes", bin.len());
        assert_eq!(postcard::from_bytes::<T>(&bin).unwrap(), v);
        let none = T { closed: None, ..v };
        let bin = postcard::to_allocvec(&none).unwrap();
        assert_eq!(postcard::from_bytes::<T>(&bin).unwrap(), none);
    }

    #[test]
    fn out_of_range_seconds_are_an_error_not_a_panic() {
        let bin = postcard::to_allocvec(&(i64::MAX, 0i32, None::<(i64, i32)>)).unwrap();
        assert!(postcard::from_bytes::<T>(&bin).is_err());
    }
}
