//! Exact money. Amounts are `rust_decimal::Decimal`; `f64` never holds money in rebuy.
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::fmt;

/// ISO 4217 currency code, upper case (`RUB`, `USD`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Currency(pub String);

impl Currency {
    /// Builds a currency from any case (`"rub"` -> `RUB`).
    pub fn new(code: &str) -> Self {
        Self(code.trim().to_ascii_uppercase())
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An exact amount in a currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Money {
    /// The amount, exact.
    #[serde(with = "amount_serde")]
    pub amount: Decimal,
    /// Its currency.
    pub currency: Currency,
}

impl Money {
    /// Builds an amount.
    pub fn new(amount: Decimal, currency: Currency) -> Self {
        Self { amount, currency }
    }
}

/// The amount as a decimal string in text formats, and as rust_decimal's exact 16-byte form in
/// the binary cache (no parsing when millions of deals are read back).
mod amount_serde {
    use rust_decimal::Decimal;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(d: &Decimal, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            Serialize::serialize(d, s)
        } else {
            Serialize::serialize(&d.serialize(), s)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
        if d.is_human_readable() {
            <Decimal as Deserialize>::deserialize(d)
        } else {
            let bytes = <[u8; 16]>::deserialize(d)?;
            // The flags word: scale in byte 2 (at most 28), sign in the top bit, the rest zero.
            if bytes[0] != 0 || bytes[1] != 0 || bytes[2] > 28 || bytes[3] & 0x7f != 0 {
                return Err(serde::de::Error::custom("invalid decimal flags"));
            }
            Ok(Decimal::deserialize(bytes))
        }
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.amount, self.currency)
    }
}

#[cfg(test)]
mod serde_tests {
    use super::*;

    #[test]
    fn amount_is_text_in_json_and_exact_in_postcard() {
        let m = Money::new("1234567.891".parse().unwrap(), Currency::new("rub"));
        let json = serde_json::to_string(&m).unwrap();
        assert!(json.contains("\"1234567.891\""), "{json}");
        assert_eq!(serde_json::from_str::<Money>(&json).unwrap(), m);
        let bin = postcard::to_allocvec(&m).unwrap();
        let back: Money = postcard::from_bytes(&bin).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.amount.scale(), 3);
        let negative = Money::new("-0.5".parse().unwrap(), Currency::new("USD"));
        let bin = postcard::to_allocvec(&negative).unwrap();
        assert_eq!(postcard::from_bytes::<Money>(&bin).unwrap(), negative);
    }

    #[test]
    fn corrupt_binary_amount_is_an_error() {
        let mut bytes = [0u8; 16];
        bytes[2] = 29; // scale beyond 28
        let bin = postcard::to_allocvec(&(bytes, "RUB")).unwrap();
        assert!(postcard::from_bytes::<Money>(&bin).is_err());
    }
}
