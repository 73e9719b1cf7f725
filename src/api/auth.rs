//! Keys and tokens, checked in constant time.

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::AppState;
use super::conn::{OnEnd, Peer};
use super::error::ApiError;
use crate::web::session::{CSRF_HEADER, Role, changes_state};

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

/// How a request presented the webhook key: what the logs may say of it (never the key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyForm {
    /// No `Authorization` header.
    Missing,
    /// A header that holds no configured key, sent as-is or as `Bearer <key>`.
    Wrong { bearer: bool },
    /// A configured key.
    Valid,
}

impl KeyForm {
    pub fn describe(self) -> &'static str {
        match self {
            KeyForm::Missing => "missing",
            KeyForm::Wrong { bearer: false } => "a key sent as-is, not one configured",
            KeyForm::Wrong { bearer: true } => "a Bearer key, not one configured",
            KeyForm::Valid => "a configured key",
        }
    }
}

/// The webhook key: the `Authorization` header as-is (as Alohub sends it) or as `Bearer <key>`.
pub fn webhook_key_form(keys: &KeySet, headers: &HeaderMap) -> KeyForm {
    let Some(value) = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()) else {
        return KeyForm::Missing;
    };
    let as_is = keys.contains(value.trim_ascii());
    let stripped = strip_bearer(value);
    let bearer = stripped.is_some_and(|k| keys.contains(k));
    if as_is | bearer {
        KeyForm::Valid
    } else {
        KeyForm::Wrong {
            bearer: stripped.is_some(),
        }
    }
}

/// Whether the request carries a webhook key.
pub fn webhook_authorized(keys: &KeySet, headers: &HeaderMap) -> bool {
    webhook_key_form(keys, headers) == KeyForm::Valid
}

/// The read API token: `Authorization: Bearer <token>`.
pub fn api_authorized(tokens: &KeySet, headers: &HeaderMap) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| strip_bearer(v.as_bytes()))
        .is_some_and(|t| tokens.contains(t))
}

/// Middleware in front of every `/api/…` path: who asks, and whether they may.
///
/// `Authorization: Bearer` with the API token (admin) or the viewer token (read-only), or,
/// without that header, the dashboard's session cookie. A request that changes something is
/// refused 403 to the viewer (except closing a callback item with `--viewer-can-close`), and to a
/// session without its CSRF token in `X-CSRF-Token`. A session in use is kept alive.
pub async fn require_api_token(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let now = crate::model::time::now_micros() / 1_000_000;
    // The full path: inside the nested /api router the URI has lost its prefix.
    let path = request
        .extensions()
        .get::<axum::extract::OriginalUri>()
        .map_or_else(|| request.uri().path(), |u| u.0.path())
        .to_string();
    let headers = request.headers();
    let (role, session) = match headers.get(header::AUTHORIZATION) {
        Some(value) => {
            match strip_bearer(value.as_bytes()).and_then(|t| state.access.role_of_token(t)) {
                Some(role) => (role, None),
                None => return unauthorized(&request, &path, "not a token of this server"),
            }
        }
        None => {
            match crate::web::session::signed_in(&state.access, state.store.as_ref(), headers, now)
                .await
            {
                Ok(Some(session)) => (session.role, Some(session)),
                Ok(None) => return unauthorized(&request, &path, "missing"),
                Err(error) => return ApiError::from(error).into_response(),
            }
        }
    };
    if role == Role::Viewer && path.starts_with("/api/destinations/") && path.ends_with("/secret") {
        return ApiError::Forbidden("the viewer role is not given signing secrets".to_string())
            .into_response();
    }
    if changes_state(request.method()) {
        if let Some(session) = &session {
            let presented = headers
                .get(CSRF_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !session.csrf_matches(presented) {
                return ApiError::Forbidden(format!(
                    "a change made with the dashboard's session needs its CSRF token in {CSRF_HEADER}"
                ))
                .into_response();
            }
        }
        let viewer_may = state.access.viewer_can_close
            && path.starts_with("/api/callbacks/")
            && path.ends_with("/close");
        if role == Role::Viewer && !viewer_may {
            return ApiError::Forbidden("the viewer role reads but changes nothing".to_string())
                .into_response();
        }
    }
    let refreshed = session
        .as_ref()
        .and_then(|s| s.touched(now))
        .map(|s| s.set_cookie(request.headers()));
    request.extensions_mut().insert(role);
    if let Some(session) = session {
        // The live stream ends when this session signs out.
        request.extensions_mut().insert(session);
    }
    let mut response = next.run(request).await;
    if let Some(cookie) = refreshed {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

fn unauthorized(request: &Request, path: &str, why: &'static str) -> Response {
    let peer = request.extensions().get::<ConnectInfo<Peer>>();
    tracing::warn!(
        source = %super::webhook::source(peer, request.headers()),
        path,
        authorization = why,
        "API request refused (401)"
    );
    let mut response = ApiError::Unauthorized.into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"alohook\""),
    );
    response
}

/// Middleware in front of the `/api` reads (not the live stream, which has `--max-streams`): a
/// place among the reads that may run at once, held until the answer has been sent, so that
/// answers waiting on slow clients count too. A read (`GET`) also takes one among the reads
/// computing at once, held while its answer is computed; it waits for it within the request's
/// time limit (408 after). Writes and pings, which mostly wait on the writer or the network,
/// do not.
pub async fn limit_reads(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Ok(Ok(place)) =
        tokio::time::timeout(API_QUEUE_WAIT, state.api_reads.clone().acquire_owned()).await
    else {
        return ApiError::Unavailable.into_response();
    };
    let computing = if request.method() == axum::http::Method::GET {
        match state.reads_computing.clone().acquire_owned().await {
            Ok(permit) => Some(permit),
            Err(_) => return ApiError::Unavailable.into_response(),
        }
    } else {
        None
    };
    let response = next.run(request).await;
    drop(computing);
    response.map(|body| Body::new(OnEnd::new(body, place)))
}

/// How long an API request waits for a place before it is answered 503.
const API_QUEUE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

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
