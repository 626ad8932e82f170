//! Secrets: random tokens, their SHA-256 storage keys, argon2id password hashes, and
//! constant-time comparison. Nothing here logs or formats a secret.

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// 32 random bytes, base64url without padding (43 characters).
pub fn new_token() -> String {
    random_string(32)
}

/// `n` random bytes as base64url.
pub fn random_string(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    // The OS random source failing is not recoverable; a predictable token is worse.
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A user code for the device flow: 8 letters from an alphabet without look-alikes, `XXXX-XXXX`.
pub fn user_code() -> String {
    const ALPHABET: &[u8] = b"BCDFGHJKLMNPQRSTVWXZ";
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    let letters: String = bytes
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect();
    format!("{}-{}", &letters[..4], &letters[4..])
}

/// The storage key of a token: hex SHA-256. The token itself is never stored.
pub fn token_key(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

/// The short public id of a token (the first 16 hex digits of its key), for lists and logs.
pub fn token_id(key: &str) -> &str {
    &key[..key.len().min(16)]
}

/// SHA-256 of `s`, base64url (PKCE S256, RFC 7636 §4.2).
pub fn s256(s: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(s.as_bytes()))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An argon2id PHC string for `password`. Slow by design (tens of ms): call off the runtime.
pub fn hash_password(password: &str) -> String {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .expect("argon2 with default parameters accepts any password")
}

/// Whether `password` matches the PHC string `hash`. Slow by design: call off the runtime.
pub fn verify_password(password: &str, hash: &str) -> bool {
    Argon2::default()
        .verify_password(password.as_bytes(), hash)
        .is_ok()
}

/// A hash to verify against when the user does not exist, so the answer takes as long as for
/// a wrong password and does not reveal which users exist.
pub fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| hash_password("tessera-dummy-password"))
}

/// Constant-time equality of two secrets.
pub fn equal(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_base64url_of_32_bytes() {
        let a = new_token();
        let b = new_token();
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
        assert_eq!(token_key(&a).len(), 64);
        assert_eq!(token_id(&token_key(&a)).len(), 16);
    }

    #[test]
    fn password_hashes_verify_and_are_salted() {
        let h = hash_password("s3cret");
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("s3cret", &h));
        assert!(!verify_password("wrong", &h));
        assert_ne!(h, hash_password("s3cret"));
        assert!(!verify_password("x", "not a hash"));
    }

    #[test]
    fn pkce_s256_matches_rfc7636_example() {
        // RFC 7636 appendix B.
        assert_eq!(
            s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn user_codes_have_the_documented_shape() {
        let c = user_code();
        assert_eq!(c.len(), 9);
        assert_eq!(&c[4..5], "-");
    }
}
