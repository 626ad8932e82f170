//! The token service's counters for the Prometheus endpoint: MQTT authentication outcomes,
//! tokens issued by grant, revocations, OAuth endpoint requests by status, backoff refusals,
//! logins with other issuers' tokens by issuer and outcome, and fetches of their keys.
//!
//! Each is a prometheus-client `Family` of atomic counters. A family looks its label set up
//! under a read lock, which is fine here: these count logins and HTTP requests, never
//! messages (the broker's message counters are its own atomics, read at scrape time). Every
//! label value comes from a closed set (a method name, a reason code, a grant type, a matched
//! route), never from what a client sent, so a client cannot grow the label space.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LoginLabels {
    /// `X-OAUTH2`, `password`, `certificate`, `anonymous` or `other`.
    pub method: &'static str,
    /// `success`, or the CONNACK / DISCONNECT reason code in hex (`0x87`).
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrantLabels {
    pub grant_type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RevocationLabels {
    /// `token`, `user` (all of a user's tokens), `client`, `family` (a refresh token family,
    /// after a reused code or refresh token), `password` (the password changed).
    pub what: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route as registered (`/oauth/token`), `other` for a path that matched none.
    pub endpoint: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackoffLabels {
    /// `mqtt` or `http`.
    pub on: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IssuerLabels {
    /// The issuer as configured (`auth.issuers[].issuer`): a closed set.
    pub issuer: String,
    /// `accepted`, `refused` (the token does not hold), `unavailable` (the provider did not
    /// answer in time).
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FetchLabels {
    /// The issuer as configured: a closed set.
    pub issuer: String,
    /// Keys: `fetched` or `failed`. Introspection: `active`, `inactive` or `failed`.
    pub outcome: &'static str,
}

#[derive(Debug, Default)]
pub struct AuthMetrics {
    pub external_logins: Family<IssuerLabels, Counter>,
    pub key_fetches: Family<FetchLabels, Counter>,
    pub introspections: Family<FetchLabels, Counter>,
    pub logins: Family<LoginLabels, Counter>,
    pub tokens_issued: Family<GrantLabels, Counter>,
    pub revocations: Family<RevocationLabels, Counter>,
    pub http_requests: Family<RequestLabels, Counter>,
    pub backoff_refusals: Family<BackoffLabels, Counter>,
}

/// The label sets known in advance, exported at 0 from the start so that `rate()` and
/// `increase()` work before the first event: every login method with the results a login
/// can have, every grant, every kind of revocation, both sides of the backoff.
const LOGIN_METHODS: [&str; 4] = ["X-OAUTH2", "password", "certificate", "anonymous"];
const LOGIN_RESULTS: [&str; 7] = ["success", "0x86", "0x87", "0x88", "0x8c", "0x97", "0x9f"];
const GRANTS: [&str; 8] = [
    "password",
    "client_credentials",
    "refresh_token",
    "authorization_code",
    "implicit",
    "device_code",
    "operator",
    "other",
];
const REVOCATIONS: [&str; 6] = ["token", "user", "client", "family", "password", "external"];

impl AuthMetrics {
    /// Creates the label sets known in advance, at 0.
    fn prime(&self) {
        for method in LOGIN_METHODS {
            for result in LOGIN_RESULTS {
                let _ = self.logins.get_or_create(&LoginLabels {
                    method,
                    result: result.to_string(),
                });
            }
        }
        for grant_type in GRANTS {
            let _ = self
                .tokens_issued
                .get_or_create(&GrantLabels { grant_type });
        }
        for what in REVOCATIONS {
            let _ = self.revocations.get_or_create(&RevocationLabels { what });
        }
        for on in ["mqtt", "http"] {
            let _ = self.backoff_refusals.get_or_create(&BackoffLabels { on });
        }
    }

    /// Registers every family under the `tessera` prefix (the text encoder adds `_total`),
    /// with the label sets known in advance at 0.
    pub fn register(&self, r: &mut Registry) {
        self.prime();
        r.register(
            "tessera_external_tokens",
            "Logins and re-authentications with another issuer's token, by issuer and outcome",
            self.external_logins.clone(),
        );
        r.register(
            "tessera_issuer_key_fetches",
            "Fetches of another issuer's signing keys (JWKS), by issuer and outcome",
            self.key_fetches.clone(),
        );
        r.register(
            "tessera_issuer_introspections",
            "RFC 7662 requests to another issuer (answers are cached), by issuer and outcome",
            self.introspections.clone(),
        );
        r.register(
            "tessera_authentications",
            "MQTT authentications (CONNECT and re-authentication) by method and result",
            self.logins.clone(),
        );
        r.register(
            "tessera_tokens_issued",
            "Access tokens issued, by grant type (operator: the CLI or the console)",
            self.tokens_issued.clone(),
        );
        r.register(
            "tessera_token_revocations",
            "Revocation requests that revoked at least one token, by what was revoked",
            self.revocations.clone(),
        );
        r.register(
            "tessera_oauth_requests",
            "OAuth endpoint and console HTTP requests, by route and status code",
            self.http_requests.clone(),
        );
        r.register(
            "tessera_backoff_refusals",
            "Logins refused without checking because of earlier failures (per address or user)",
            self.backoff_refusals.clone(),
        );
    }

    pub fn login(&self, method: &'static str, result: String) {
        self.logins
            .get_or_create(&LoginLabels { method, result })
            .inc();
    }

    pub fn issued(&self, grant_type: &'static str) {
        self.tokens_issued
            .get_or_create(&GrantLabels { grant_type })
            .inc();
    }

    pub fn revoked(&self, what: &'static str) {
        self.revocations
            .get_or_create(&RevocationLabels { what })
            .inc();
    }

    pub fn backoff_refused(&self, on: &'static str) {
        self.backoff_refusals
            .get_or_create(&BackoffLabels { on })
            .inc();
    }

    pub fn request(&self, endpoint: String, status: u16) {
        self.http_requests
            .get_or_create(&RequestLabels { endpoint, status })
            .inc();
    }
}

/// The `grant_type` label of a token request's grant (a closed set; anything else is `other`).
pub fn grant_label(grant_type: Option<&str>) -> &'static str {
    match grant_type {
        Some("password") => "password",
        Some("client_credentials") => "client_credentials",
        Some("refresh_token") => "refresh_token",
        Some("authorization_code") => "authorization_code",
        Some("urn:ietf:params:oauth:grant-type:device_code") => "device_code",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_encode_with_their_labels() {
        let m = AuthMetrics::default();
        let mut r = Registry::default();
        m.register(&mut r);
        m.login("X-OAUTH2", "success".into());
        m.login("X-OAUTH2", "0x87".into());
        m.login("X-OAUTH2", "0x87".into());
        m.issued(grant_label(Some("password")));
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &r).unwrap();
        assert!(
            out.contains("tessera_authentications_total{method=\"X-OAUTH2\",result=\"0x87\"} 2"),
            "{out}"
        );
        assert!(out.contains("tessera_tokens_issued_total{grant_type=\"password\"} 1"));
        // Known label sets are there before their first event.
        for line in [
            "tessera_authentications_total{method=\"password\",result=\"0x86\"} 0",
            "tessera_authentications_total{method=\"anonymous\",result=\"success\"} 0",
            "tessera_tokens_issued_total{grant_type=\"device_code\"} 0",
            "tessera_token_revocations_total{what=\"family\"} 0",
            "tessera_backoff_refusals_total{on=\"http\"} 0",
        ] {
            assert!(out.contains(line), "{line} missing:\n{out}");
        }
    }
}
