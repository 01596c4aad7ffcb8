//! Phone normalisation. CRMs hold phones as typed by people: `8 (912) 345-67-89`,
//! `+7 912 345 67 89`, `7-912-345-67-89`, `9123456789`. Identity resolution needs one form, so
//! every phone is normalised to E.164 (`+79123456789`) while the raw text is kept for display.
//!
//! Rules (Russia/Kazakhstan first, since both CRMs serve that market; a default country code is
//! configurable per portal):
//! - keep digits only; a leading `+` marks an international number;
//! - 11 digits starting with `8` -> replace the `8` by `7` (Russian trunk prefix);
//! - 10 digits -> prepend the default country code;
//! - numbers with `+` and 8..15 digits are kept as they are;
//! - anything else is not normalisable (`None`), and is still kept raw.
use serde::{Deserialize, Serialize};

/// A phone number: the raw CRM text and its E.164 form when it could be normalised.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Phone {
    /// The text as stored in the CRM.
    pub raw: String,
    /// E.164 form (`+79123456789`), or `None` when the text is not a recognisable number.
    pub e164: Option<String>,
}

impl Phone {
    /// Parses a raw phone with the default country calling code `7`.
    pub fn parse(raw: &str) -> Self {
        Self::parse_with_country(raw, "7")
    }

    /// Parses a raw phone; `country` is the calling code used for 10-digit national numbers.
    pub fn parse_with_country(raw: &str, country: &str) -> Self {
        Self {
            raw: raw.to_owned(),
            e164: normalize(raw, country),
        }
    }
}

/// Normalises a phone to E.164, or `None` when it is not a recognisable number.
pub fn normalize(raw: &str, country: &str) -> Option<String> {
    let trimmed = raw.trim();
    let international = trimmed.starts_with('+');
    let digits: String = trimmed.chars().filter(char::is_ascii_digit).collect();
    if digits.is_empty() {
        return None;
    }
    let e164 = if international {
        digits
    } else if digits.len() == 11 && digits.starts_with('8') && country == "7" {
        format!("7{}", &digits[1..])
    } else if digits.len() == 11 && digits.starts_with('7') && country == "7" {
        digits
    } else if digits.len() == 10 {
        format!("{country}{digits}")
    } else if digits.starts_with(country) && (11..=15).contains(&digits.len()) {
        digits
    } else {
        return None;
    };
    if (8..=15).contains(&e164.len()) {
        Some(format!("+{e164}"))
    } else {
        None
    }
}

/// Lower-cases and trims an email; `None` when it has no `@` between non-empty parts.
pub fn normalize_email(raw: &str) -> Option<String> {
    let e = raw.trim().to_lowercase();
    let (local, domain) = e.split_once('@')?;
    if local.is_empty()
        || domain.is_empty()
        || domain.contains('@')
        || e.contains(char::is_whitespace)
    {
        return None;
    }
    Some(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn russian_formats_normalise_to_one_number() {
        for raw in [
            "8 (912) 345-67-89",
            "+79123456789",
            "7-912-345-67-89",
            "9123456789",
            "+7 912 345 67 89",
        ] {
            assert_eq!(
                normalize(raw, "7").as_deref(),
                Some("+79123456789"),
                "{raw}"
            );
        }
    }

    #[test]
    fn garbage_is_not_normalised() {
        assert_eq!(normalize("call me", "7"), None);
        assert_eq!(normalize("12-34", "7"), None);
    }

    #[test]
    fn foreign_international_kept() {
        assert_eq!(
            normalize("+49 30 1234567", "7").as_deref(),
            Some("+49301234567")
        );
    }

    #[test]
    fn emails_lowercased() {
        assert_eq!(
            normalize_email(" Ivan.Petrov@Mail.RU ").as_deref(),
            Some("ivan.petrov@mail.ru")
        );
        assert_eq!(normalize_email("nope"), None);
    }

    proptest::proptest! {
        #[test]
        fn normalize_never_panics(s in ".*") {
            let _ = normalize(&s, "7");
            let _ = normalize_email(&s);
        }
    }
}
