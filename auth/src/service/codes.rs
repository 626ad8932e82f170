//! The short-lived codes of the browser and device flows.
//!
//! - Authorization codes (RFC 6749 §4.1, PKCE S256 per RFC 7636): created when a person
//!   approves a client on the authorize page, exchanged once by that client, at the same
//!   redirect URI, with the verifier of its challenge.
//! - Device codes (RFC 8628): a device asks for a code pair, shows the user code, and polls;
//!   a person signs in on the verification page and approves or denies that user code.
//!
//! Both are stored under the SHA-256 of the code (never the code) and expire on their own.
//! "Once" is a compare-and-set delete: of two exchanges of one code, one wins.

use super::{Issued, ServiceError, ServiceResult, TokenService};
use crate::clock::{now_ms, now_secs};
use crate::kv::Bucket;
use crate::model::{AuthCode, DeviceCode, DeviceState};
use crate::secrets;

/// Seconds an authorization code lives (RFC 6749 §4.1.2 recommends at most 10 minutes).
pub const CODE_TTL: u64 = 600;
/// Seconds a device code lives.
pub const DEVICE_TTL: u64 = 600;
/// Seconds a device waits between polls at first (RFC 8628 §3.2 `interval`).
pub const DEVICE_INTERVAL: u64 = 2;

/// What a person approved on the authorize page.
#[derive(Debug, Clone)]
pub struct CodeRequest {
    pub client_id: String,
    pub user: String,
    pub redirect_uri: String,
    pub scopes: Vec<String>,
    /// The PKCE S256 challenge, if the client sent one.
    pub code_challenge: Option<String>,
    /// The lifetime asked for the access token.
    pub ttl: Option<u64>,
}

/// A device's code pair (RFC 8628 §3.2).
#[derive(Debug, Clone)]
pub struct DeviceGrant {
    /// What the device polls with; shown once.
    pub device_code: String,
    /// What the person types on the verification page.
    pub user_code: String,
    pub expires_in: u64,
    pub interval: u64,
}

/// A person's answer on the verification page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceDecision {
    Approve,
    Deny,
}

/// What came of a person's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceAnswer {
    /// No pending request has that user code.
    UnknownCode,
    /// The user name and password do not match.
    BadLogin,
    /// The user may not obtain tokens (`oauth_access`).
    NotAllowed,
    Denied,
    /// Approved for this user.
    Approved(String),
}

/// The user code as people type it: letters only, upper case, `XXXX-XXXX`.
pub fn normalize_user_code(code: &str) -> String {
    let letters: String = code
        .chars()
        .filter(|c| c.is_ascii_alphabetic())
        .map(|c| c.to_ascii_uppercase())
        .collect();
    if letters.len() == 8 {
        format!("{}-{}", &letters[..4], &letters[4..])
    } else {
        letters
    }
}

impl TokenService {
    /// Stores an authorization code for what the person approved; returns the code (shown
    /// once, in the redirect).
    pub fn create_code(&self, request: CodeRequest) -> ServiceResult<String> {
        let code = secrets::new_token();
        let record = AuthCode {
            client_id: request.client_id,
            user: request.user,
            redirect_uri: request.redirect_uri,
            scopes: request.scopes,
            code_challenge: request.code_challenge,
            ttl: request.ttl,
            expires_at_ms: now_ms() + CODE_TTL * 1000,
            family: None,
        };
        let key = secrets::token_key(&code);
        self.create(Bucket::AuthCodes, &key, &record, Some(record.expires_at_ms))?;
        Ok(code)
    }

    /// Exchanges an authorization code for tokens, once: by the client it was issued to, at
    /// the redirect URI it was issued for, with the verifier of its PKCE challenge. A used code
    /// is spent whether or not the exchange then succeeds, and presenting it again revokes the
    /// tokens it gave (RFC 6749 §4.1.2, RFC 9700 §4.5: a code seen twice was likely stolen).
    pub fn exchange_code(
        &self,
        code: &str,
        client_id: &str,
        redirect_uri: Option<&str>,
        verifier: Option<&str>,
        bound_to: Option<&str>,
    ) -> ServiceResult<Issued> {
        let key = secrets::token_key(code);
        let (mut c, revision) = self
            .get::<AuthCode>(Bucket::AuthCodes, &key)?
            .ok_or(ServiceError::CodeUnknown)?;
        if let Some(family) = &c.family {
            self.revoke_family(family)?;
            self.store.delete(Bucket::AuthCodes, &key, None)?;
            return Err(ServiceError::CodeUsed);
        }
        // One use only: whoever marks it spent first wins (compare-and-set on its revision).
        let family = secrets::random_string(12);
        c.family = Some(family.clone());
        match self.update(Bucket::AuthCodes, &key, &c, Some(c.expires_at_ms), revision) {
            Err(crate::kv::KvError::Conflict) => return Err(ServiceError::CodeUsed),
            other => {
                other?;
            }
        }
        if c.client_id != client_id {
            return Err(ServiceError::CodeOtherClient);
        }
        if redirect_uri != Some(c.redirect_uri.as_str()) {
            return Err(ServiceError::RedirectUriMismatch);
        }
        match (&c.code_challenge, verifier) {
            (Some(challenge), Some(v)) => {
                if !secrets::equal(secrets::s256(v).as_bytes(), challenge.as_bytes()) {
                    return Err(ServiceError::PkceFailed);
                }
            }
            (Some(_), None) => return Err(ServiceError::VerifierMissing),
            (None, _) => {}
        }
        self.issue_in_family(
            &c.user,
            Some(&c.client_id),
            c.scopes,
            None,
            c.ttl,
            Some(family),
            bound_to,
        )
    }

    /// Starts the device flow for a client (RFC 8628 §3.1).
    pub fn start_device(
        &self,
        client_id: String,
        scopes: Vec<String>,
    ) -> ServiceResult<DeviceGrant> {
        let device_code = secrets::new_token();
        let user_code = secrets::user_code();
        let record = DeviceCode {
            client_id,
            user_code: user_code.clone(),
            scopes,
            state: DeviceState::Pending,
            expires_at_ms: now_ms() + DEVICE_TTL * 1000,
            last_poll: 0,
            interval: DEVICE_INTERVAL,
        };
        let key = secrets::token_key(&device_code);
        self.create(
            Bucket::DeviceCodes,
            &key,
            &record,
            Some(record.expires_at_ms),
        )?;
        Ok(DeviceGrant {
            device_code,
            user_code,
            expires_in: DEVICE_TTL,
            interval: DEVICE_INTERVAL,
        })
    }

    /// A device's poll (RFC 8628 §3.4, §3.5): tokens once the person approved, else why not.
    /// Polling faster than the interval grows it by 5 seconds (`slow_down`).
    pub fn poll_device(
        &self,
        device_code: &str,
        client_id: &str,
        bound_to: Option<&str>,
    ) -> ServiceResult<Issued> {
        let key = secrets::token_key(device_code);
        let entry = self
            .store
            .get(Bucket::DeviceCodes, &key)?
            .ok_or(ServiceError::DeviceCodeUnknown)?;
        let mut d: DeviceCode = super::from_json(Bucket::DeviceCodes.name(), &entry.value)?;
        if d.client_id != client_id {
            return Err(ServiceError::DeviceCodeOtherClient);
        }
        match d.state.clone() {
            DeviceState::Pending => {
                let now = now_secs();
                let too_fast = now < d.last_poll + d.interval;
                if too_fast {
                    d.interval += 5;
                }
                d.last_poll = now;
                // A lost race with another poll or the person's answer changes nothing here:
                // the next poll sees the newer record.
                let _ = self.update(
                    Bucket::DeviceCodes,
                    &key,
                    &d,
                    Some(d.expires_at_ms),
                    entry.revision,
                );
                Err(if too_fast {
                    ServiceError::DeviceSlowDown
                } else {
                    ServiceError::DevicePending
                })
            }
            DeviceState::Denied => {
                let _ = self.store.delete(Bucket::DeviceCodes, &key, None);
                Err(ServiceError::DeviceDenied)
            }
            DeviceState::Approved { user } => {
                if !self
                    .store
                    .delete(Bucket::DeviceCodes, &key, Some(entry.revision))?
                {
                    return Err(ServiceError::DeviceCodeUsed);
                }
                self.issue(&user, Some(client_id), d.scopes, None, true, bound_to)
            }
        }
    }

    /// A person's answer for the pending request with `user_code` (as typed). The login is
    /// checked whatever the code, so an unknown code takes as long as a known one.
    pub fn answer_device(
        &self,
        user_code: &str,
        username: Option<&str>,
        password: &str,
        decision: DeviceDecision,
    ) -> ServiceResult<DeviceAnswer> {
        let code = normalize_user_code(user_code);
        // Pending requests are few and short-lived: a scan, not an index.
        let found = self
            .store
            .scan(Bucket::DeviceCodes, "")?
            .into_iter()
            .find_map(|(key, e)| {
                let d: DeviceCode = serde_json::from_slice(&e.value).ok()?;
                (d.user_code == code && d.state == DeviceState::Pending)
                    .then_some((key, e.revision, d))
            });
        // Either answer needs a signed-in person: whoever merely knows (or guesses) a user code
        // must not be able to deny a device its login, nor learn which codes are pending.
        let Some(user) = self.check_login(username, password)? else {
            return Ok(DeviceAnswer::BadLogin);
        };
        let Some((key, revision, mut d)) = found else {
            return Ok(DeviceAnswer::UnknownCode);
        };
        let answer = match decision {
            DeviceDecision::Deny => {
                d.state = DeviceState::Denied;
                DeviceAnswer::Denied
            }
            DeviceDecision::Approve => {
                if !self.may_obtain_tokens(&user) {
                    return Ok(DeviceAnswer::NotAllowed);
                }
                d.state = DeviceState::Approved { user: user.clone() };
                DeviceAnswer::Approved(user)
            }
        };
        // Only the request as it was found is answered: compare-and-set on its revision.
        self.update(
            Bucket::DeviceCodes,
            &key,
            &d,
            Some(d.expires_at_ms),
            revision,
        )?;
        Ok(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::service;
    use super::*;

    #[test]
    fn user_codes_are_normalized() {
        assert_eq!(normalize_user_code("abcd-efgh"), "ABCD-EFGH");
        assert_eq!(normalize_user_code(" ab cd ef gh "), "ABCD-EFGH");
        assert_eq!(normalize_user_code("abc"), "ABC");
    }

    #[test]
    fn an_authorization_code_is_exchanged_once_with_its_verifier() {
        let (_d, s) = service();
        s.add_user("dora", "pw").unwrap();
        let verifier = "v".repeat(43);
        let request = CodeRequest {
            client_id: "app".into(),
            user: "dora".into(),
            redirect_uri: "https://app.example/cb".into(),
            scopes: vec!["mqtt".into()],
            code_challenge: Some(secrets::s256(&verifier)),
            ttl: None,
        };
        let code = s.create_code(request.clone()).unwrap();
        let uri = Some("https://app.example/cb");
        assert!(matches!(
            s.exchange_code(&code, "app", uri, Some("wrong"), None),
            Err(ServiceError::PkceFailed)
        ));
        // The failed attempt used the code up.
        assert!(matches!(
            s.exchange_code(&code, "app", uri, Some(&verifier), None),
            Err(ServiceError::CodeUsed)
        ));
        let code = s.create_code(request).unwrap();
        let t = s
            .exchange_code(&code, "app", uri, Some(&verifier), None)
            .unwrap();
        assert!(s.validate(&t.access_token).unwrap().is_some());
        // Presented again: refused, and the tokens the first exchange gave are revoked.
        assert!(matches!(
            s.exchange_code(&code, "app", uri, Some(&verifier), None),
            Err(ServiceError::CodeUsed)
        ));
        assert!(s.validate(&t.access_token).unwrap().is_none());
        let refresh = t.refresh_token.unwrap();
        assert!(matches!(
            s.refresh(&refresh, Some("app"), None, None),
            Err(ServiceError::UnknownRefreshToken)
        ));
        assert!(matches!(
            s.exchange_code(&code, "app", uri, Some(&verifier), None),
            Err(ServiceError::CodeUnknown)
        ));
    }

    #[test]
    fn a_device_code_is_denied_only_by_a_signed_in_person() {
        let (_d, s) = service();
        s.add_user("fay", "pw").unwrap();
        let g = s.start_device("tv".into(), vec!["mqtt".into()]).unwrap();
        let deny = |user, pw| s.answer_device(&g.user_code, user, pw, DeviceDecision::Deny);
        assert_eq!(deny(None, "").unwrap(), DeviceAnswer::BadLogin);
        assert_eq!(deny(Some("fay"), "wrong").unwrap(), DeviceAnswer::BadLogin);
        assert!(matches!(
            s.poll_device(&g.device_code, "tv", None),
            Err(ServiceError::DevicePending)
        ));
        assert_eq!(deny(Some("fay"), "pw").unwrap(), DeviceAnswer::Denied);
        assert!(matches!(
            s.poll_device(&g.device_code, "tv", None),
            Err(ServiceError::DeviceDenied)
        ));
    }

    #[test]
    fn a_device_is_approved_by_a_signed_in_person() {
        let (_d, s) = service();
        s.add_user("erin", "pw").unwrap();
        let g = s.start_device("tv".into(), vec!["mqtt".into()]).unwrap();
        assert!(matches!(
            s.poll_device(&g.device_code, "tv", None),
            Err(ServiceError::DevicePending)
        ));
        assert!(matches!(
            s.poll_device(&g.device_code, "tv", None),
            Err(ServiceError::DeviceSlowDown)
        ));
        let lower = g.user_code.to_ascii_lowercase();
        let answer = |pw| s.answer_device(&lower, Some("erin"), pw, DeviceDecision::Approve);
        assert_eq!(answer("bad").unwrap(), DeviceAnswer::BadLogin);
        assert_eq!(answer("pw").unwrap(), DeviceAnswer::Approved("erin".into()));
        assert_eq!(answer("pw").unwrap(), DeviceAnswer::UnknownCode);
        assert!(matches!(
            s.poll_device(&g.device_code, "other", None),
            Err(ServiceError::DeviceCodeOtherClient)
        ));
        let t = s.poll_device(&g.device_code, "tv", None).unwrap();
        assert!(s.validate(&t.access_token).unwrap().is_some());
        assert!(matches!(
            s.poll_device(&g.device_code, "tv", None),
            Err(ServiceError::DeviceCodeUnknown)
        ));
    }
}
