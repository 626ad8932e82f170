//! Entry points for the token service's fuzz targets (`fuzz/`, cargo-fuzz) and for the test
//! that replays their corpus and every input that once crashed them
//! (`auth/tests/fuzz_corpus.rs`). Each takes arbitrary bytes and must return, without a panic,
//! in bounded time. Not part of the crate's API (hidden from its documentation).

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use tessera_broker::auth::{AuthStep, Authenticator, ConnectRequest};
use tessera_broker::codec::Version;
use tessera_config::{AccessRules, AuthConfig, OAuthConfig};
use tokio::runtime::Runtime;

use crate::backoff::Backoff;
use crate::mechanism::{OAuthAuthenticator, OAuthMechanism};
use crate::redb_store::RedbStore;
use crate::service::TokenService;

fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
    })
}

/// A token-endpoint request: `data` up to the first 0xFF byte is the `Authorization` header
/// (skipped if it is not a valid header value), the rest the form body. Answered with the
/// RFC 6749 error response or an empty success; the grants themselves (argon2, the store) are
/// the service's unit and end-to-end tests' concern.
pub fn oauth_form(data: &[u8]) {
    let (auth, body) = match data.iter().position(|&b| b == 0xFF) {
        Some(i) => (Some(&data[..i]), &data[i + 1..]),
        None => (None, data),
    };
    let mut request = axum::http::Request::builder()
        .method("POST")
        .uri("/oauth/token")
        .header("content-type", "application/x-www-form-urlencoded");
    if let Some(value) = auth.and_then(|a| axum::http::HeaderValue::from_bytes(a).ok()) {
        request = request.header("authorization", value);
    }
    let request = request
        .body(axum::body::Body::from(body.to_vec()))
        .expect("a request");
    let response = runtime().block_on(crate::http::read_token_request(request));
    assert!(
        response.status().is_success() || response.status().is_client_error(),
        "{}",
        response.status()
    );
}

/// The service every `x_oauth2` input meets: one user with one live token.
fn mechanism() -> &'static (OAuthAuthenticator, String) {
    static M: OnceLock<(OAuthAuthenticator, String)> = OnceLock::new();
    M.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("tessera-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let store = RedbStore::open(&dir.join("t.redb")).expect("a store");
        // Open files outlive their names: nothing is left behind when the process ends.
        let _ = std::fs::remove_dir_all(&dir);
        let service = Arc::new(TokenService::new(store, OAuthConfig::default()));
        service.add_user("fuzz", "pw").expect("a user");
        let token = service
            .issue("fuzz", None, vec!["mqtt".into()], Some(3600), false, None)
            .expect("a token")
            .access_token;
        let mechanism = OAuthMechanism {
            endpoint: Default::default(),
            service,
            auth: AuthConfig::default(),
            access_publish: AccessRules::default(),
            access_subscribe: AccessRules::default(),
            // Failures must not turn every later input into the backoff's answer.
            backoff: Arc::new(Backoff::new(u32::MAX)),
            issuers: Arc::default(),
        };
        (OAuthAuthenticator(Arc::new(mechanism)), token)
    })
}

/// An X-OAUTH2 login: `data[0]` picks the form (bit 0: the token in a second step, after
/// the broker's challenge; bit 1: a user name, up to the first 0x00; bit 2: the live token
/// in front of the rest, so inputs reach the checks after a token is found), the rest is the
/// Authentication Data.
pub fn x_oauth2(data: &[u8]) {
    let Some((&form, rest)) = data.split_first() else {
        return;
    };
    let (authenticator, token) = mechanism();
    let (username, rest) = match (form & 2 != 0, rest.iter().position(|&b| b == 0)) {
        (true, Some(i)) => (
            Some(String::from_utf8_lossy(&rest[..i]).into_owned()),
            &rest[i + 1..],
        ),
        _ => (None, rest),
    };
    let mut auth_data = Vec::new();
    if form & 4 != 0 {
        auth_data.extend_from_slice(token.as_bytes());
    }
    auth_data.extend_from_slice(rest);
    let auth_data = Bytes::from(auth_data);
    let two_step = form & 1 != 0;
    runtime().block_on(async {
        let request = ConnectRequest {
            client_id: "fuzz".into(),
            username,
            password: None,
            method: Some("X-OAUTH2".into()),
            data: (!two_step).then(|| auth_data.clone()),
            peer: SocketAddr::from(([127, 0, 0, 1], 1)),
            transport: "tcp",
            listener: SocketAddr::from(([127, 0, 0, 1], 1883)),
            version: Version::V5,
            certificate: None,
        };
        if let AuthStep::Continue { exchange, .. } = authenticator.connect(request).await {
            let _ = exchange.step(Some(auth_data)).await;
        }
    });
}
