//! JWS compact tokens (RFC 7515) and the keys that verify them (RFC 7517), with RFC 8725's
//! rules kept here, where the signature is checked:
//! - the algorithm comes from the issuer's allow-list, and must fit the key's type: RSA keys
//!   verify RS*/PS* (2048 bits at least), P-256 and P-384 keys ES256 and ES384, Ed25519 keys
//!   EdDSA; `none` is never a verification; HMAC only with the issuer's configured secret,
//!   never with a key from a JWKS (so a public key can never become an HMAC secret);
//! - a key whose JWK names an `alg` verifies only that one, and a key for encryption
//!   (`use: enc`) none;
//! - a header with `crit` is refused (no extension is understood here).
//!
//! The cryptography is ring's, the provider rustls already runs on.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde_json::{Map, Value};

/// The longest token looked at.
pub const MAX_TOKEN: usize = 16 * 1024;

/// Why a token's signature part does not hold. Said to the client (no secret in it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwsError {
    Malformed,
    /// `none`, an unknown algorithm, or one the issuer does not allow.
    Algorithm,
    /// The header names an extension (`crit`).
    Critical,
    /// The key cannot verify this algorithm (its type, its `alg`, its `use`).
    KeyMismatch,
    BadSignature,
}

impl JwsError {
    pub fn reason(self) -> &'static str {
        match self {
            JwsError::Malformed => "the token is not a well-formed JWT",
            JwsError::Algorithm => "the token's signature algorithm is not accepted",
            JwsError::Critical => "the token's header has critical extensions",
            JwsError::KeyMismatch => "the token's algorithm does not fit the issuer's key",
            JwsError::BadSignature => "the token's signature does not verify",
        }
    }
}

/// A token split and decoded, not yet verified.
pub struct Jws<'t> {
    pub alg: String,
    pub kid: Option<String>,
    pub claims: Map<String, Value>,
    signing_input: &'t str,
    signature: Vec<u8>,
}

/// Whether `token` has the shape of a JWS compact token (three dot-separated parts); Tessera's
/// own tokens never contain a dot.
pub fn looks_like_jwt(token: &str) -> bool {
    token.bytes().filter(|b| *b == b'.').count() == 2
}

pub fn parse(token: &str) -> Result<Jws<'_>, JwsError> {
    if token.len() > MAX_TOKEN {
        return Err(JwsError::Malformed);
    }
    let mut parts = token.splitn(3, '.');
    let (Some(h), Some(p), Some(s)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(JwsError::Malformed);
    };
    let object = |part: &str| -> Result<Map<String, Value>, JwsError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|_| JwsError::Malformed)?;
        match serde_json::from_slice(&bytes) {
            Ok(Value::Object(m)) => Ok(m),
            _ => Err(JwsError::Malformed),
        }
    };
    let header = object(h)?;
    let claims = object(p)?;
    let signature = URL_SAFE_NO_PAD.decode(s).map_err(|_| JwsError::Malformed)?;
    if header.contains_key("crit") {
        return Err(JwsError::Critical);
    }
    let Some(Value::String(alg)) = header.get("alg") else {
        return Err(JwsError::Malformed);
    };
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(JwsError::Malformed),
    };
    Ok(Jws {
        alg: alg.clone(),
        kid,
        claims,
        signing_input: &token[..h.len() + 1 + p.len()],
        signature,
    })
}

/// A verification key.
#[derive(Clone, PartialEq, Eq)]
pub enum Key {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// An uncompressed point (0x04 ‖ x ‖ y).
    P256(Vec<u8>),
    P384(Vec<u8>),
    Ed25519(Vec<u8>),
    /// The issuer's configured shared secret; never from a JWKS.
    Hmac(Vec<u8>),
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Public keys are not secret, but an HMAC key is: neither is printed.
        f.write_str(match self {
            Key::Rsa { .. } => "Key::Rsa",
            Key::P256(_) => "Key::P256",
            Key::P384(_) => "Key::P384",
            Key::Ed25519(_) => "Key::Ed25519",
            Key::Hmac(_) => "Key::Hmac",
        })
    }
}

/// A key as a JWKS publishes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jwk {
    pub kid: Option<String>,
    /// The one algorithm the key is for, if its JWK says.
    pub alg: Option<String>,
    pub key: Key,
}

impl Jwk {
    /// A JWK from a JWKS; `None` for a key that verifies nothing here (encryption keys,
    /// unknown types and curves, malformed members).
    pub fn from_json(v: &Value) -> Option<Jwk> {
        let s = |k: &str| v.get(k).and_then(Value::as_str);
        let b = |k: &str| s(k).and_then(|x| URL_SAFE_NO_PAD.decode(x).ok());
        if s("use").is_some_and(|u| u != "sig") {
            return None;
        }
        if let Some(ops) = v.get("key_ops").and_then(Value::as_array)
            && !ops.iter().any(|o| o == "verify")
        {
            return None;
        }
        let key = match (s("kty")?, s("crv")) {
            ("RSA", _) => Key::Rsa {
                n: b("n")?,
                e: b("e")?,
            },
            ("EC", Some(crv @ ("P-256" | "P-384"))) => {
                let (x, y) = (b("x")?, b("y")?);
                let size = if crv == "P-256" { 32 } else { 48 };
                if x.len() != size || y.len() != size {
                    return None;
                }
                let mut point = Vec::with_capacity(1 + 2 * size);
                point.push(4);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                if crv == "P-256" {
                    Key::P256(point)
                } else {
                    Key::P384(point)
                }
            }
            ("OKP", Some("Ed25519")) => Key::Ed25519(b("x")?),
            // Symmetric keys are never taken from a JWKS.
            _ => return None,
        };
        Some(Jwk {
            kid: s("kid").map(str::to_string),
            alg: s("alg").map(str::to_string),
            key,
        })
    }

    /// Whether this key may verify `alg` (its type, and its own `alg` if it names one).
    pub fn fits(&self, alg: &str) -> bool {
        if self.alg.as_deref().is_some_and(|a| a != alg) {
            return false;
        }
        matches!(
            (&self.key, alg),
            (
                Key::Rsa { .. },
                "RS256" | "RS384" | "RS512" | "PS256" | "PS384" | "PS512"
            ) | (Key::P256(_), "ES256")
                | (Key::P384(_), "ES384")
                | (Key::Ed25519(_), "EdDSA")
                | (Key::Hmac(_), "HS256" | "HS384" | "HS512")
        )
    }
}

impl Jws<'_> {
    /// Verifies the signature with `key`, the algorithm having been checked against the
    /// issuer's allow-list by the caller.
    pub fn verify(&self, key: &Jwk) -> Result<(), JwsError> {
        if !key.fits(&self.alg) {
            return Err(JwsError::KeyMismatch);
        }
        let msg = self.signing_input.as_bytes();
        let sig = &self.signature;
        let ok = match (&key.key, self.alg.as_str()) {
            (Key::Rsa { n, e }, alg) => {
                let params: &signature::RsaParameters = match alg {
                    "RS256" => &signature::RSA_PKCS1_2048_8192_SHA256,
                    "RS384" => &signature::RSA_PKCS1_2048_8192_SHA384,
                    "RS512" => &signature::RSA_PKCS1_2048_8192_SHA512,
                    "PS256" => &signature::RSA_PSS_2048_8192_SHA256,
                    "PS384" => &signature::RSA_PSS_2048_8192_SHA384,
                    "PS512" => &signature::RSA_PSS_2048_8192_SHA512,
                    _ => return Err(JwsError::KeyMismatch),
                };
                RsaPublicKeyComponents { n, e }
                    .verify(params, msg, sig)
                    .is_ok()
            }
            (Key::P256(point), _) => {
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                    .verify(msg, sig)
                    .is_ok()
            }
            (Key::P384(point), _) => {
                UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, point)
                    .verify(msg, sig)
                    .is_ok()
            }
            (Key::Ed25519(x), _) => UnparsedPublicKey::new(&signature::ED25519, x)
                .verify(msg, sig)
                .is_ok(),
            (Key::Hmac(secret), alg) => {
                let algorithm = match alg {
                    "HS256" => ring::hmac::HMAC_SHA256,
                    "HS384" => ring::hmac::HMAC_SHA384,
                    "HS512" => ring::hmac::HMAC_SHA512,
                    _ => return Err(JwsError::KeyMismatch),
                };
                let k = ring::hmac::Key::new(algorithm, secret);
                ring::hmac::verify(&k, msg, sig).is_ok()
            }
        };
        if ok {
            Ok(())
        } else {
            Err(JwsError::BadSignature)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair};

    fn b64(b: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(b)
    }

    fn token(header: &Value, claims: &Value, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = sign(input.as_bytes());
        format!("{input}.{}", b64(&sig))
    }

    fn es256() -> (EcdsaKeyPair, Jwk) {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .unwrap();
        let kp = EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8.as_ref(),
            &rng,
        )
        .unwrap();
        let public = kp.public_key().as_ref();
        let jwk = Jwk::from_json(&serde_json::json!({
            "kty": "EC", "crv": "P-256", "kid": "k1", "use": "sig",
            "x": b64(&public[1..33]), "y": b64(&public[33..65]),
        }))
        .unwrap();
        (kp, jwk)
    }

    #[test]
    fn an_es256_token_verifies_and_a_tampered_one_does_not() {
        let (kp, jwk) = es256();
        let rng = SystemRandom::new();
        let claims = serde_json::json!({"iss": "https://idp", "sub": "dev-1"});
        let t = token(
            &serde_json::json!({"alg": "ES256", "kid": "k1"}),
            &claims,
            |m| kp.sign(&rng, m).unwrap().as_ref().to_vec(),
        );
        assert!(looks_like_jwt(&t));
        let jws = parse(&t).unwrap();
        assert_eq!(
            (jws.alg.as_str(), jws.kid.as_deref()),
            ("ES256", Some("k1"))
        );
        assert_eq!(jws.verify(&jwk), Ok(()));
        // Another payload under the same signature.
        let mut parts: Vec<&str> = t.split('.').collect();
        let forged = b64(br#"{"iss":"https://idp","sub":"admin"}"#);
        parts[1] = &forged;
        let forged = parts.join(".");
        assert_eq!(
            parse(&forged).unwrap().verify(&jwk),
            Err(JwsError::BadSignature)
        );
    }

    #[test]
    fn an_algorithm_must_fit_the_key_and_hmac_never_comes_from_a_jwks() {
        let (kp, jwk) = es256();
        let rng = SystemRandom::new();
        let claims = serde_json::json!({"sub": "x"});
        // A token claiming HS256, "signed" with the EC public key as the HMAC secret.
        let public = kp.public_key().as_ref().to_vec();
        let t = token(&serde_json::json!({"alg": "HS256"}), &claims, |m| {
            let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &public);
            ring::hmac::sign(&k, m).as_ref().to_vec()
        });
        assert_eq!(parse(&t).unwrap().verify(&jwk), Err(JwsError::KeyMismatch));
        assert!(
            Jwk::from_json(&serde_json::json!({"kty": "oct", "k": b64(&public)})).is_none(),
            "no symmetric key from a JWKS"
        );
        // `alg: none` with no signature fits no key.
        let none = format!(
            "{}.{}.",
            b64(br#"{"alg":"none"}"#),
            b64(claims.to_string().as_bytes())
        );
        assert_eq!(
            parse(&none).unwrap().verify(&jwk),
            Err(JwsError::KeyMismatch)
        );
        // A key that names its algorithm verifies only that one.
        let mut only_es384 = jwk.clone();
        only_es384.alg = Some("ES384".into());
        let t = token(&serde_json::json!({"alg": "ES256"}), &claims, |m| {
            kp.sign(&rng, m).unwrap().as_ref().to_vec()
        });
        assert_eq!(
            parse(&t).unwrap().verify(&only_es384),
            Err(JwsError::KeyMismatch)
        );
        // Encryption keys verify nothing.
        let mut enc = serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": b64(&[0; 32])});
        assert!(Jwk::from_json(&enc).is_some());
        enc["use"] = "enc".into();
        assert!(Jwk::from_json(&enc).is_none());
    }

    #[test]
    fn eddsa_and_hmac_with_the_configured_secret() {
        let rng = SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let kp = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let jwk = Jwk::from_json(&serde_json::json!({
            "kty": "OKP", "crv": "Ed25519", "x": b64(kp.public_key().as_ref())
        }))
        .unwrap();
        let claims = serde_json::json!({"sub": "x"});
        let t = token(&serde_json::json!({"alg": "EdDSA"}), &claims, |m| {
            kp.sign(m).as_ref().to_vec()
        });
        assert_eq!(parse(&t).unwrap().verify(&jwk), Ok(()));
        let secret = Jwk {
            kid: None,
            alg: None,
            key: Key::Hmac(b"0123456789abcdef0123456789abcdef".to_vec()),
        };
        let t = token(&serde_json::json!({"alg": "HS256"}), &claims, |m| {
            let k =
                ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"0123456789abcdef0123456789abcdef");
            ring::hmac::sign(&k, m).as_ref().to_vec()
        });
        assert_eq!(parse(&t).unwrap().verify(&secret), Ok(()));
        assert_eq!(parse(&t).unwrap().verify(&jwk), Err(JwsError::KeyMismatch));
    }

    #[test]
    fn malformed_tokens_are_errors_not_panics() {
        for t in [
            "",
            "a.b",
            "a.b.c.d",
            "!!.e30.",
            "e30.e30.",
            "W10.e30.",
            &format!("{}.e30.", b64(br#"{"alg":"ES256","crit":["exp"]}"#)),
            &format!("{}.e30.", b64(br#"{"alg":"ES256","kid":7}"#)),
            &"a".repeat(MAX_TOKEN + 1),
        ] {
            assert!(parse(t).is_err(), "{t:.40}");
        }
    }
}
