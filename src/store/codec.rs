//! Value encoding: one version byte, then postcard. The version byte lets a later schema read
//! old values (or refuse them clearly) without guessing.
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Current codec version.
pub const CODEC_V1: u8 = 1;

/// Encodes `value` into `buf` (appending).
pub fn encode<T: Serialize>(value: &T, buf: &mut Vec<u8>) -> Result<(), String> {
    buf.push(CODEC_V1);
    let body = postcard::to_stdvec(value).map_err(|e| e.to_string())?;
    buf.extend_from_slice(&body);
    Ok(())
}

/// Decodes a value written by [`encode`].
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    match bytes.split_first() {
        Some((&CODEC_V1, body)) => postcard::from_bytes(body).map_err(|e| e.to_string()),
        Some((v, _)) => Err(format!("unknown codec version {v}")),
        None => Err("empty value".into()),
    }
}
