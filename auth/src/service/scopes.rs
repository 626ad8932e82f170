//! Scopes: which a token may carry (`oauth.scopes`, with `prefix*` admitting any suffix), the
//! `mqtt:publish:<filter>` / `mqtt:subscribe:<filter>` scopes that narrow a token's topic
//! rights, and who may obtain tokens at all (`oauth_access`).

use super::{ServiceError, ServiceResult, TokenService};

/// The scope of the operator console's tokens. Any client may ask for it, but only a user
/// marked admin gets a token carrying it (checked where every token is issued).
pub const CONSOLE_SCOPE: &str = "tessera:console";

impl TokenService {
    /// Checks requested scopes against the configured list; an empty request gets `mqtt`.
    pub fn check_scopes(&self, requested: &[String]) -> ServiceResult<Vec<String>> {
        if requested.is_empty() {
            return Ok(vec!["mqtt".to_string()]);
        }
        for s in requested {
            let allowed = s == CONSOLE_SCOPE
                || self
                    .config
                    .scopes
                    .iter()
                    .any(|a| match a.strip_suffix('*') {
                        Some(prefix) => s.starts_with(prefix) && s.len() > prefix.len(),
                        None => a == s,
                    });
            if !allowed {
                return Err(ServiceError::ScopeNotAllowed(s.clone()));
            }
            if let Some(filter) = s
                .strip_prefix("mqtt:publish:")
                .or_else(|| s.strip_prefix("mqtt:subscribe:"))
                && !tessera_broker::codec::topic::valid_topic_filter(filter)
            {
                return Err(ServiceError::ScopeNotAFilter(s.clone()));
            }
        }
        let mut v = requested.to_vec();
        v.dedup();
        Ok(v)
    }

    /// Whether `user` may obtain tokens (`oauth_access`).
    pub fn may_obtain_tokens(&self, user: &str) -> bool {
        self.config.oauth_access.admits(Some(user))
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::service;

    #[test]
    fn scopes_are_checked() {
        let (_d, s) = service();
        assert_eq!(s.check_scopes(&[]).unwrap(), vec!["mqtt"]);
        assert!(s.check_scopes(&["sasl_auth".into()]).is_ok());
        assert!(
            s.check_scopes(&["mqtt:publish:devices/+/up".into()])
                .is_ok()
        );
        assert!(s.check_scopes(&["mqtt:publish:".into()]).is_err());
        assert!(s.check_scopes(&["mqtt:publish:a/#/b".into()]).is_err());
        assert!(s.check_scopes(&["admin".into()]).is_err());
    }
}
