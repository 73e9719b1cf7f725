//! Keys and tokens, checked in constant time.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::AppState;
use super::error::ApiError;

/// A set of secrets any of which is valid (several webhook keys allow rotation with no downtime).
/// Only SHA-256 digests are kept, so comparisons take the same time whatever the lengths.
#[derive(Clone)]
pub struct KeySet {
    digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeySet({} keys, redacted)", self.digests.len())
    }
}

impl KeySet {
    pub fn new<I: IntoIterator<Item = S>, S: AsRef<str>>(keys: I) -> Self {
        KeySet {
            digests: keys
                .into_iter()
                .filter(|k| !k.as_ref().is_empty())
                .map(|k| Sha256::digest(k.as_ref().as_bytes()).into())
                .collect(),
        }
    }

    /// Whether `presented` is one of the keys. Every key is compared, with no early exit.
    pub fn contains(&self, presented: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        let mut found = subtle::Choice::from(0);
        for key in &self.digests {
            found |= key.ct_eq(&digest);
        }
        !self.digests.is_empty() && bool::from(found)
    }
}

fn strip_bearer(value: &[u8]) -> Option<&[u8]> {
    let prefix = b"bearer ";
    (value.len() > prefix.len() && value[..prefix.len()].eq_ignore_ascii_case(prefix))
        .then(|| value[prefix.len()..].trim_ascii())
}

/// The webhook key: the `Authorization` header as-is (as Alohub sends it) or as `Bearer <key>`.
pub fn webhook_authorized(keys: &KeySet, headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()) else {
        return false;
    };
    let as_is = keys.contains(value.trim_ascii());
    let bearer = strip_bearer(value).is_some_and(|k| keys.contains(k));
    as_is | bearer
}

/// The read API token: `Authorization: Bearer <token>`.
pub fn api_authorized(tokens: &KeySet, headers: &HeaderMap) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| strip_bearer(v.as_bytes()))
        .is_some_and(|t| tokens.contains(t))
}

/// Middleware in front of every `/api/…` path.
pub async fn require_api_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    if api_authorized(&state.api_tokens, request.headers()) {
        next.run(request).await
    } else {
        ApiError::Unauthorized.into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(auth).unwrap());
        h
    }

    #[test]
    fn webhook_key_as_is_or_bearer() {
        let keys = KeySet::new(["old-key", "new-key"]);
        assert!(webhook_authorized(&keys, &headers("old-key")));
        assert!(webhook_authorized(&keys, &headers("new-key")));
        assert!(webhook_authorized(&keys, &headers("Bearer new-key")));
        assert!(!webhook_authorized(&keys, &headers("new-ke")));
        assert!(!webhook_authorized(&keys, &headers("")));
        assert!(!webhook_authorized(&keys, &HeaderMap::new()));
    }

    #[test]
    fn api_token_needs_bearer() {
        let tokens = KeySet::new(["t0ken"]);
        assert!(api_authorized(&tokens, &headers("Bearer t0ken")));
        assert!(!api_authorized(&tokens, &headers("t0ken")));
        assert!(!api_authorized(&tokens, &headers("Bearer other")));
    }

    #[test]
    fn an_empty_set_opens_nothing() {
        let none = KeySet::new([""]);
        assert!(!none.contains(b""));
    }
}
