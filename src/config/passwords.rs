//! Dashboard passwords as the config stores them: their form (argon2 PHC string, deprecated
//! `sha256:` digest, plain text), the check at load, hashing for `rebuy hash-password`, and
//! constant-time verification for the dashboard's login.
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// How a dashboard password is stored in its environment variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordForm {
    /// An argon2 PHC string (`$argon2id$v=19$...`), as `rebuy hash-password` prints: the
    /// recommended form.
    Argon2,
    /// `sha256:<64 hex digits>`: unsalted, deprecated (a leaked digest is cracked fast).
    Sha256,
    /// The password itself: works, with a warning.
    Plain,
}

impl PasswordForm {
    /// The form of a stored password.
    pub fn of(stored: &str) -> PasswordForm {
        if stored.starts_with("$argon2") {
            PasswordForm::Argon2
        } else if stored.starts_with("sha256:") {
            PasswordForm::Sha256
        } else {
            PasswordForm::Plain
        }
    }

    /// What to tell the operator about a password kept in this form (`None` for argon2).
    pub fn warning(self) -> Option<&'static str> {
        match self {
            PasswordForm::Argon2 => None,
            PasswordForm::Sha256 => Some(
                "its password is an unsalted sha256: digest (deprecated): store the output of `rebuy hash-password` instead",
            ),
            PasswordForm::Plain => Some(
                "its password is stored as plain text: store the output of `rebuy hash-password` instead",
            ),
        }
    }
}

/// The users among `users` whose stored password is not an argon2 hash.
pub fn weak_passwords<'a>(
    users: impl Iterator<Item = (&'a str, &'a SecretString)>,
) -> Vec<(String, PasswordForm)> {
    users
        .map(|(n, p)| (n.to_owned(), PasswordForm::of(p.expose_secret())))
        .filter(|(_, f)| *f != PasswordForm::Argon2)
        .collect()
}

/// Whether a stored password is well formed: an argon2 PHC string that parses, a `sha256:`
/// digest of 64 hex digits, or plain text (anything else). The error names what is wrong.
pub fn check_stored_password(stored: &str) -> Result<PasswordForm, String> {
    match PasswordForm::of(stored) {
        PasswordForm::Argon2 => match argon2::PasswordHash::new(stored) {
            Ok(h) if h.salt.is_some() && h.hash.is_some() => Ok(PasswordForm::Argon2),
            Ok(_) => Err("starts with \"$argon2\" but has no salt or no hash".to_owned()),
            Err(e) => Err(format!(
                "starts with \"$argon2\" but is not a valid argon2 hash ({e})"
            )),
        },
        PasswordForm::Sha256 => {
            let h = stored["sha256:".len()..].trim();
            if h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()) {
                Ok(PasswordForm::Sha256)
            } else {
                Err("starts with \"sha256:\" but is not followed by 64 hex digits".to_owned())
            }
        }
        PasswordForm::Plain => Ok(PasswordForm::Plain),
    }
}

/// An argon2id hash of `password` with a fresh random salt, in the PHC string form the
/// dashboard's password variables take (what `rebuy hash-password` prints). Uses the argon2
/// crate's defaults (argon2id, 19 MiB, 2 passes: the OWASP recommendation).
pub fn hash_password(password: &str) -> Result<String, String> {
    use argon2::PasswordHasher;
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = argon2::password_hash::SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// A valid argon2id hash of nothing anyone types, verified when the name matches no user.
pub(crate) const DUMMY_ARGON2: &str = "$argon2id$v=19$m=19456,t=2,p=1$cmVidXktZHVtbXktc2FsdA$pNbf0wV7ePbq1iu2UymUxyAhtdHwDRMsbq5iNkD0qyw";

/// `password` against one stored form (constant time in the comparison).
pub(crate) fn verify_password(stored: &str, password: &str) -> bool {
    match PasswordForm::of(stored) {
        PasswordForm::Argon2 => {
            use argon2::PasswordVerifier;
            argon2::PasswordHash::new(stored).is_ok_and(|h| {
                argon2::Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
            })
        }
        form => {
            let expected: [u8; 32] = match form {
                PasswordForm::Sha256 => match hex::decode(stored["sha256:".len()..].trim())
                    .ok()
                    .and_then(|v| <[u8; 32]>::try_from(v).ok())
                {
                    Some(h) => h,
                    None => return false,
                },
                _ => Sha256::digest(stored.as_bytes()).into(),
            };
            bool::from(
                Sha256::digest(password.as_bytes())
                    .as_slice()
                    .ct_eq(&expected),
            )
        }
    }
}
