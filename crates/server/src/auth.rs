//! Optional API keys. Only their SHA-256 digests are kept; a presented key is hashed and
//! compared with every digest in constant time (no early exit that would leak how much of a key
//! matched). Clients send `Authorization: Bearer <key>` (OpenAI) or `x-api-key: <key>`
//! (Anthropic).

use axum::http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

#[derive(Clone, Default)]
pub struct ApiKeys {
    digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for ApiKeys {
    // The digests are not secrets, but there is nothing to learn from them either.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} keys)", self.digests.len())
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// The key a request carries: `Authorization: Bearer <key>` or `x-api-key: <key>`.
pub fn presented_key(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
        .map(str::trim)
}

impl ApiKeys {
    pub fn new<S: AsRef<str>>(keys: impl IntoIterator<Item = S>) -> ApiKeys {
        ApiKeys { digests: keys.into_iter().map(|k| digest(k.as_ref())).collect() }
    }

    /// No keys: every request is allowed.
    pub fn is_open(&self) -> bool {
        self.digests.is_empty()
    }

    /// Whether the request carries one of the keys.
    pub fn allows(&self, headers: &HeaderMap) -> bool {
        if self.is_open() {
            return true;
        }
        let Some(key) = presented_key(headers) else { return false };
        let d = digest(key.trim());
        // Every digest is compared, whatever matched before.
        self.digests.iter().fold(0u8, |found, stored| found | stored.ct_eq(&d).unwrap_u8()) == 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked_from_either_header() {
        let keys = ApiKeys::new(["sk-one", "sk-two"]);
        let mut h = HeaderMap::new();
        assert!(!keys.allows(&h));
        h.insert("authorization", "Bearer sk-two".parse().unwrap());
        assert!(keys.allows(&h));
        h.insert("authorization", "Bearer sk-three".parse().unwrap());
        assert!(!keys.allows(&h));
        let mut h = HeaderMap::new();
        h.insert("x-api-key", "sk-one".parse().unwrap());
        assert!(keys.allows(&h));
        assert!(ApiKeys::default().allows(&HeaderMap::new()));
        assert_eq!(format!("{keys:?}"), "ApiKeys(2 keys)");
    }
}
