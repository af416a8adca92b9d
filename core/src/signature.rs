//! HMAC-SHA256 webhook signatures, shared by the Stripe and Lemon Squeezy verifiers.

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Why a webhook's signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the {0} header is missing")]
    Missing(&'static str),
    #[error("the {0} header is malformed")]
    Malformed(&'static str),
    #[error("no signature matches any configured secret")]
    Mismatch,
    #[error("the signature timestamp is {0} s old, beyond the tolerance")]
    Stale(i64),
    #[error("the signature timestamp is {0} s in the future, beyond the tolerance")]
    Future(i64),
}

impl SignatureError {
    /// True when the sender could not be authenticated (401); false when it was, but the
    /// delivery is too old or too new to accept (400).
    pub fn is_unauthenticated(&self) -> bool {
        matches!(self, Self::Missing(_) | Self::Malformed(_) | Self::Mismatch)
    }
}

/// Does any of `candidates` equal HMAC-SHA256(secret, message) for any of `secrets`?
///
/// `message` is given in parts so that callers sign `"{t}.{body}"` without copying the body.
/// Each comparison runs in constant time (`verify_slice`).
pub fn any_matches(secrets: &[SecretString], message: &[&[u8]], candidates: &[Vec<u8>]) -> bool {
    secrets.iter().any(|secret| {
        let mut mac = HmacSha256::new_from_slice(secret.expose_secret().as_bytes()).expect("HMAC takes keys of any length");
        for part in message {
            mac.update(part);
        }
        candidates.iter().any(|candidate| mac.clone().verify_slice(candidate).is_ok())
    })
}

/// Hex-encoded HMAC-SHA256, as the providers send it. Used to sign test deliveries and by the
/// benchmark's load generator.
pub fn sign_hex(secret: &str, message: &[&[u8]]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    for part in message {
        mac.update(part);
    }
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_only_the_right_secret_and_message() {
        let secrets = [SecretString::from("old"), SecretString::from("new")];
        let good = hex::decode(sign_hex("new", &[b"t.", b"body"])).unwrap();
        assert!(any_matches(&secrets, &[b"t.body"], std::slice::from_ref(&good)));
        assert!(!any_matches(&secrets, &[b"t.bodY"], std::slice::from_ref(&good)));
        assert!(!any_matches(&secrets[..1], &[b"t.body"], &[good]));
        assert!(!any_matches(&secrets, &[b"t.body"], &[]));
    }
}
