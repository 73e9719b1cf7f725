//! Who is asking: the API token (admin), the viewer token (read-only), or a dashboard session
//! signed in with one of them.
//!
//! A session is a cookie the server signs, not a row it keeps: every instance on PostgreSQL
//! reads it with the same key, and nothing grows with the number of sign-ins. Its key is derived
//! from the token it was signed in with, so a changed token ends its sessions. The cookie holds
//! the role, when the session began, when it was last used (refreshed at most once a minute, so
//! that an idle session ends after `--session-idle-minutes`) and a random nonce, from which the
//! session's CSRF token is derived.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, Method, header};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::api::auth::KeySet;

/// The session cookie's name.
pub const COOKIE: &str = "alohook_session";
/// The header a state-changing API request made with the session cookie carries its CSRF token
/// in (a form carries it as the field `_csrf`).
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How often a used session's "last used" is written again.
const REFRESH_EVERY: i64 = 60;
const KEY_CONTEXT: &[u8] = b"alohook dashboard session v1";

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The API token: everything.
    Admin,
    /// The viewer token: sees everything, changes nothing (but may close callback items with
    /// `--viewer-can-close`).
    Viewer,
}

impl Role {
    fn code(self) -> &'static str {
        match self {
            Role::Admin => "a",
            Role::Viewer => "v",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Viewer => "viewer",
        }
    }
}

/// The tokens and the session keys derived from them.
#[derive(Clone)]
pub struct Access {
    pub admin_tokens: KeySet,
    pub viewer_tokens: KeySet,
    admin_keys: Vec<[u8; 32]>,
    viewer_keys: Vec<[u8; 32]>,
    pub viewer_can_close: bool,
    pub idle: Duration,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("viewer_can_close", &self.viewer_can_close)
            .field("idle", &self.idle)
            .finish_non_exhaustive()
    }
}

fn session_key(token: &str) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(token.as_bytes()).expect("any key length");
    mac.update(KEY_CONTEXT);
    mac.finalize().into_bytes().into()
}

impl Access {
    pub fn new(
        admin: &[String],
        viewer: &[String],
        viewer_can_close: bool,
        idle: Duration,
    ) -> Self {
        let keys = |tokens: &[String]| {
            tokens
                .iter()
                .filter(|t| !t.is_empty())
                .map(|t| session_key(t))
                .collect()
        };
        Access {
            admin_tokens: KeySet::new(admin),
            viewer_tokens: KeySet::new(viewer),
            admin_keys: keys(admin),
            viewer_keys: keys(viewer),
            viewer_can_close,
            idle,
        }
    }

    /// The role of a token (both sets are compared in full, in constant time).
    pub fn role_of_token(&self, token: &[u8]) -> Option<Role> {
        let admin = self.admin_tokens.contains(token);
        let viewer = self.viewer_tokens.contains(token);
        if admin {
            Some(Role::Admin)
        } else if viewer {
            Some(Role::Viewer)
        } else {
            None
        }
    }

    fn keys(&self, role: Role) -> &[[u8; 32]] {
        match role {
            Role::Admin => &self.admin_keys,
            Role::Viewer => &self.viewer_keys,
        }
    }

    /// A new session of `role`, signed in at `now` (Unix seconds), signed with the key of the
    /// token it signed in with.
    pub fn start(&self, role: Role, token: &[u8], now: i64) -> Option<Session> {
        let token = std::str::from_utf8(token).ok()?;
        let key = session_key(token);
        if !self.keys(role).contains(&key) {
            return None;
        }
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce).expect("the operating system's random source is available");
        Some(Session {
            role,
            issued: now,
            seen: now,
            nonce: URL_SAFE_NO_PAD.encode(nonce),
            key,
        })
    }

    /// The session a cookie value holds, when its signature is good and it has not been idle
    /// for longer than the limit at `now`.
    pub fn open(&self, value: &str, now: i64) -> Option<Session> {
        let (payload, mac) = value.rsplit_once('.')?;
        let mac = URL_SAFE_NO_PAD.decode(mac).ok()?;
        let mut parts = payload.split('.');
        let role = match parts.next()? {
            "a" => Role::Admin,
            "v" => Role::Viewer,
            _ => return None,
        };
        let issued: i64 = parts.next()?.parse().ok()?;
        let seen: i64 = parts.next()?.parse().ok()?;
        let nonce = parts.next()?.to_string();
        if parts.next().is_some() {
            return None;
        }
        // Every key of the role is tried, with no early exit.
        let mut found = None;
        for key in self.keys(role) {
            let mut check = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
            check.update(payload.as_bytes());
            if check.verify_slice(&mac).is_ok() {
                found = Some(*key);
            }
        }
        let key = found?;
        let idle = i64::try_from(self.idle.as_secs()).unwrap_or(i64::MAX);
        if seen > now + REFRESH_EVERY || now.saturating_sub(seen) > idle {
            return None;
        }
        Some(Session {
            role,
            issued,
            seen,
            nonce,
            key,
        })
    }

    /// The session of a request's cookie, if it has a valid one (see [`signed_in`] for one
    /// that was not signed out).
    pub fn session(&self, headers: &HeaderMap, now: i64) -> Option<Session> {
        cookie(headers, COOKIE).and_then(|value| self.open(&value, now))
    }
}

/// A signed-in dashboard session.
#[derive(Clone)]
pub struct Session {
    pub role: Role,
    pub issued: i64,
    pub seen: i64,
    nonce: String,
    key: [u8; 32],
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("role", &self.role)
            .field("issued", &self.issued)
            .field("seen", &self.seen)
            .finish_non_exhaustive()
    }
}

impl Session {
    fn mac(&self, text: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length");
        mac.update(text.as_bytes());
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    }

    /// The session's id, as the store remembers a sign-out (a digest of its nonce).
    pub fn id(&self) -> String {
        use sha2::Digest;
        sha2::Sha256::digest(self.nonce.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The cookie's value.
    pub fn value(&self) -> String {
        let payload = format!(
            "{}.{}.{}.{}",
            self.role.code(),
            self.issued,
            self.seen,
            self.nonce
        );
        let mac = self.mac(&payload);
        format!("{payload}.{mac}")
    }

    /// The session's CSRF token: forms carry it as `_csrf`, scripts as `X-CSRF-Token`.
    pub fn csrf(&self) -> String {
        self.mac(&format!("csrf.{}", self.nonce))
    }

    /// Whether `presented` is this session's CSRF token (compared in constant time).
    pub fn csrf_matches(&self, presented: &str) -> bool {
        use subtle::ConstantTimeEq;
        let expected = self.csrf();
        expected.len() == presented.len()
            && bool::from(expected.as_bytes().ct_eq(presented.as_bytes()))
    }

    /// The session used at `now`: a newer "last used" when the one it has is a minute old.
    pub fn touched(&self, now: i64) -> Option<Session> {
        (now - self.seen >= REFRESH_EVERY).then(|| Session {
            seen: now,
            ..self.clone()
        })
    }

    /// The `Set-Cookie` header that keeps this session.
    pub fn set_cookie(&self, headers: &HeaderMap) -> HeaderValue {
        set_cookie(COOKIE, &self.value(), headers, None)
    }
}

/// Whether the request came over HTTPS, as far as a proxy in front says (`X-Forwarded-Proto`,
/// `Forwarded: proto=https`): a cookie is then `Secure`. alohook itself serves plain HTTP.
pub fn over_https(headers: &HeaderMap) -> bool {
    let forwarded_proto = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("https")
        });
    let forwarded = headers
        .get(header::FORWARDED)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split([';', ','])
                .any(|p| p.trim().eq_ignore_ascii_case("proto=https"))
        });
    forwarded_proto || forwarded
}

/// A `Set-Cookie` value: `HttpOnly`, `SameSite=Strict`, `Path=/`, `Secure` over HTTPS;
/// `max_age` Some(0) removes the cookie.
pub fn set_cookie(
    name: &str,
    value: &str,
    headers: &HeaderMap,
    max_age: Option<u64>,
) -> HeaderValue {
    let mut text = format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict");
    if let Some(age) = max_age {
        text.push_str(&format!("; Max-Age={age}"));
    }
    if over_https(headers) {
        text.push_str("; Secure");
    }
    HeaderValue::from_str(&text).expect("cookie values are base64url and digits")
}

/// The value of cookie `name` in a request.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.trim().to_string())
}

/// Whether a method changes something (needs a CSRF token with a session, and the admin role).
pub fn changes_state(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The session of a request's cookie when it is valid and was not signed out; an error when
/// the store cannot say (a page answers 503 then, rather than sending to the sign-in page).
pub async fn signed_in(
    access: &Access,
    store: &dyn crate::store::Store,
    headers: &HeaderMap,
    now: i64,
) -> Result<Option<Session>, crate::store::StoreError> {
    let Some(session) = access.session(headers, now) else {
        return Ok(None);
    };
    Ok((!store.session_ended(&session.id()).await?).then_some(session))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access() -> Access {
        Access::new(
            &["admin-token".to_string()],
            &["viewer-token".to_string()],
            false,
            Duration::from_secs(600),
        )
    }

    #[test]
    fn a_session_opens_until_it_has_been_idle_too_long() {
        let a = access();
        let s = a.start(Role::Viewer, b"viewer-token", 1_000).unwrap();
        let value = s.value();
        let opened = a.open(&value, 1_500).unwrap();
        assert_eq!(opened.role, Role::Viewer);
        assert!(a.open(&value, 1_601).is_none(), "idle for 601 s of 600");
        // Used at 1 500: it lasts until 2 100.
        let touched = opened.touched(1_500).unwrap().value();
        assert!(a.open(&touched, 2_100).is_some());
        assert!(a.open(&touched, 2_101).is_none());
    }

    #[test]
    fn a_changed_cookie_or_token_opens_nothing() {
        let a = access();
        let s = a.start(Role::Viewer, b"viewer-token", 1_000).unwrap();
        let value = s.value();
        // The viewer's cookie claiming to be admin's.
        let forged = format!("a{}", &value[1..]);
        assert!(a.open(&forged, 1_000).is_none());
        let mut later = value.clone();
        later = later.replacen(".1000.1000.", ".1000.1900.", 1);
        assert!(a.open(&later, 1_950).is_none());
        let other = Access::new(
            &["admin-token".to_string()],
            &["new-viewer-token".to_string()],
            false,
            Duration::from_secs(600),
        );
        assert!(
            other.open(&value, 1_000).is_none(),
            "the viewer token changed"
        );
        assert!(a.start(Role::Admin, b"viewer-token", 1_000).is_none());
    }

    #[test]
    fn the_csrf_token_is_the_sessions_own() {
        let a = access();
        let s1 = a.start(Role::Admin, b"admin-token", 1_000).unwrap();
        let s2 = a.start(Role::Admin, b"admin-token", 1_000).unwrap();
        assert!(s1.csrf_matches(&s1.csrf()));
        assert!(!s1.csrf_matches(&s2.csrf()));
        assert!(!s1.csrf_matches(""));
        let reopened = a.open(&s1.value(), 1_001).unwrap();
        assert!(reopened.csrf_matches(&s1.csrf()));
    }

    #[test]
    fn tokens_have_their_roles() {
        let a = access();
        assert_eq!(a.role_of_token(b"admin-token"), Some(Role::Admin));
        assert_eq!(a.role_of_token(b"viewer-token"), Some(Role::Viewer));
        assert_eq!(a.role_of_token(b"viewer-toke"), None);
    }

    #[test]
    fn cookies_are_read_among_others_and_secure_behind_https() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; alohook_session=xyz; b=2"),
        );
        assert_eq!(cookie(&h, COOKIE).as_deref(), Some("xyz"));
        assert!(
            !set_cookie(COOKIE, "v", &h, None)
                .to_str()
                .unwrap()
                .contains("Secure")
        );
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        let c = set_cookie(COOKIE, "v", &h, None);
        let c = c.to_str().unwrap();
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.contains("Secure"));
    }
}
