//! Standard Webhooks signatures (<https://www.standardwebhooks.com>): what every delivery
//! carries so that the receiver can tell it comes from this alohook, unaltered.
//!
//! - `webhook-id`: stable for one change and one destination, the same on every attempt (and on a
//!   replay), so that receivers can drop repeats;
//! - `webhook-timestamp`: Unix seconds of this attempt;
//! - `webhook-signature`: `v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`, keyed with the
//!   bytes of the secret after `whsec_`; space-separated, one per secret valid now (during a
//!   rotation the old secret signs alongside the new one).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The prefix of a secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// A new secret: `whsec_` and the base64 of 32 random bytes.
pub fn new_secret() -> Result<String, getrandom::Error> {
    let mut key = [0u8; 32];
    getrandom::fill(&mut key)?;
    Ok(format!("{SECRET_PREFIX}{}", STANDARD.encode(key)))
}

/// The key bytes of a secret (`whsec_<base64>`), or `None` when it is not one.
pub fn secret_key(secret: &str) -> Option<Vec<u8>> {
    let encoded = secret.strip_prefix(SECRET_PREFIX)?;
    STANDARD.decode(encoded).ok().filter(|k| !k.is_empty())
}

/// The `webhook-id` of a change sent to a destination.
pub fn webhook_id(destination_id: &str, seq: i64) -> String {
    format!("msg_{destination_id}_{seq}")
}

/// The `webhook-signature` header for `body` sent as `id` at `timestamp`, one `v1,` signature per
/// secret, space-separated. Secrets that are not `whsec_…` are skipped (they cannot be, as alohook
/// makes them).
pub fn signature(secrets: &[&str], id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets
        .iter()
        .filter_map(|secret| secret_key(secret))
        .map(|key| {
            // HMAC takes a key of any length.
            let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes any key length");
            mac.update(id.as_bytes());
            mac.update(b".");
            mac.update(timestamp.to_string().as_bytes());
            mac.update(b".");
            mac.update(body);
            format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification (and of Svix's documentation).
    #[test]
    fn the_specifications_example_signs_the_same() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
        let timestamp = 1614265330;
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            signature(&[secret], id, timestamp, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn secrets_are_whsec_and_32_random_bytes_and_sign_side_by_side() {
        let (a, b) = (new_secret().unwrap(), new_secret().unwrap());
        assert_ne!(a, b);
        assert_eq!(secret_key(&a).unwrap().len(), 32);
        assert!(secret_key("not-a-secret").is_none());
        let both = signature(&[&a, &b], "msg_1", 5, b"{}");
        let parts: Vec<&str> = both.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], signature(&[&a], "msg_1", 5, b"{}"));
        assert_eq!(parts[1], signature(&[&b], "msg_1", 5, b"{}"));
    }
}
