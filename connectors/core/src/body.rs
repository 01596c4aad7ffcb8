//! Reading a CRM's answer with a size cap: a broken or hostile server that answers a gigabyte
//! must cost an error, not the process's memory. The cap is checked against `Content-Length`
//! before anything is read and again as chunks arrive (a chunked answer has no length).
use crate::error::ConnectorError;

/// The default cap of one answer: far above any real page (amoCRM 250 records, a Bitrix24
/// `batch` of 50 x 50 rows are a few MiB), far below what hurts.
pub const DEFAULT_MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;

/// Why an answer could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// The answer is larger than the cap.
    TooLarge {
        /// The cap, in bytes.
        limit: usize,
    },
    /// The connection failed while reading.
    Transport(reqwest::Error),
}

/// Reads the whole answer, refusing it once it exceeds `limit` bytes.
pub async fn read_capped(mut resp: reqwest::Response, limit: usize) -> Result<Vec<u8>, ReadError> {
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(ReadError::TooLarge { limit });
    }
    let mut body = Vec::with_capacity(
        resp.content_length()
            .map_or(16 * 1024, |n| n as usize)
            .min(limit),
    );
    while let Some(chunk) = resp.chunk().await.map_err(ReadError::Transport)? {
        if body.len() + chunk.len() > limit {
            return Err(ReadError::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

impl ReadError {
    /// The connector error of an answer refused for its size (`what` names the portal and the
    /// endpoint); transport failures are left to the caller's own classification.
    pub fn too_large(limit: usize, what: &str) -> ConnectorError {
        ConnectorError::Invalid {
            path: "(answer)".into(),
            message: format!(
                "{what}: the answer exceeds {} MiB; refused unread",
                limit / (1024 * 1024)
            ),
        }
    }
}
