//! Tokens from an identity provider the operator runs, end to end, against a real OpenID
//! provider (oidc-provider, `idp.rs`): its JWTs over MQTT 5 and as the 3.1.1 password, with
//! scopes, expiry and re-authentication; every kind of bad JWT refused; key rotation, a
//! provider that is down or slow; opaque tokens introspected and revoked at the provider;
//! revocation by `jti`. No token in any log line.

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use tessera_broker::codec::{Auth, Packet, Properties, QoS, ReasonCode};

use crate::clients::mosquitto_pub;
use crate::harness::TestBroker;
use crate::idp::{DEVICE, Idp, OTHER_DEVICE, TESSERA};
use crate::oauth::x_oauth2;
use crate::pki::Ca;
use crate::raw::Raw;

const JWT: &str = "urn:tessera:jwt";

/// A broker trusting `idp` (introspection with a cache of `cache_ttl` s), devices allowed
/// under `devices/<user>/`.
fn broker(idp: &Idp, cache_ttl: u64) -> TestBroker {
    let introspection = format!(
        "      timeout: 1\n      introspection:\n        endpoint: {}/token/introspection\n        client_id: {}\n        client_secret: {}\n        cache_ttl: {cache_ttl}\n",
        idp.issuer, TESSERA.0, TESSERA.1
    );
    // Many refusals from one address here: the login backoff would answer them instead.
    TestBroker::start_secure(&format!(
        "{}oauth:\n  bind: 127.0.0.1:0\n  max_failures: 1000\naccess_publish:\n  - allow: devices/%u/#\naccess_subscribe:\n  - allow: devices/%u/#\n",
        idp.issuer_config(&introspection)
    ))
}

async fn connack(b: &TestBroker, id: &str, token: &str) -> (ReasonCode, Option<String>) {
    let (_, ack) = Raw::connect(b.tcp, x_oauth2(id, None, Some(token))).await;
    (
        ack.reason_code,
        ack.properties.reason_string.map(|s| s.to_string()),
    )
}

async fn refused(b: &TestBroker, token: &str, why: &str) {
    let (code, reason) = connack(b, "refused", token).await;
    assert_eq!(code, ReasonCode::NOT_AUTHORIZED, "{reason:?}");
    let reason = reason.unwrap_or_default();
    assert!(reason.contains(why), "{reason:?} should say {why:?}");
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

fn claims(idp: &Idp) -> Value {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    json!({"iss": idp.issuer, "aud": "tessera", "sub": "dev-1", "client_id": "dev-1",
           "scope": "mqtt", "iat": now, "exp": now + 300, "jti": "crafted"})
}

#[tokio::test]
async fn provider_jwts_log_in_with_their_scopes_expiry_and_re_authentication() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "idp-ca");
    let idp = Idp::start(dir.path(), &ca, "one", 0);
    let b = broker(&idp, 60);

    // RS256 and ES256 JWTs over MQTT 5 (X-OAUTH2).
    let rs = idp.token(DEVICE, JWT, "mqtt").await;
    let es = idp.token(DEVICE, "urn:tessera:es256", "mqtt").await;
    assert_eq!(connack(&b, "rs", &rs).await.0, ReasonCode::SUCCESS);
    assert_eq!(connack(&b, "es", &es).await.0, ReasonCode::SUCCESS);
    // As the 3.1.1 password (mosquitto_pub).
    let port = b.tcp.port().to_string();
    let out = mosquitto_pub(&[
        "-p",
        &port,
        "-V",
        "mqttv311",
        "-i",
        "v311",
        "-u",
        "dev-1",
        "-P",
        &rs,
        "-t",
        "devices/dev-1/up",
        "-m",
        "21.5",
    ])
    .await;
    assert!(out.status.success(), "{out:?}");

    // Scopes narrow the rules' rights: devices/dev-1/# by rule, only .../up by scope.
    let narrow = idp
        .token(DEVICE, JWT, "mqtt mqtt:publish:devices/dev-1/up")
        .await;
    let (mut c, ack) = Raw::connect(b.tcp, x_oauth2("narrow", None, Some(&narrow))).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    c.publish("devices/dev-1/up", b"ok", QoS::AtLeastOnce, 1)
        .await;
    c.publish("devices/dev-1/config", b"no", QoS::AtLeastOnce, 2)
        .await;
    let mut codes = Vec::new();
    for _ in 0..2 {
        match c.recv().await {
            Some(Packet::PubAck(a)) => codes.push((a.packet_id, a.reason_code)),
            other => panic!("{other:?}"),
        }
    }
    assert!(!codes[0].1.is_error(), "{codes:?}");
    assert_eq!(codes[1], (2, ReasonCode::NOT_AUTHORIZED));

    // At the token's `exp` the session ends (0xA0)...
    let short = idp.token(DEVICE, "urn:tessera:short", "mqtt").await;
    let (mut s, ack) = Raw::connect(b.tcp, x_oauth2("short", None, Some(&short))).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    let started = Instant::now();
    s.expect_disconnect(ReasonCode::MAXIMUM_CONNECT_TIME).await;
    assert!(started.elapsed() < Duration::from_secs(5), "cut at exp");
    // ...unless a fresh JWT of the same subject re-authenticates it first.
    let short = idp.token(DEVICE, "urn:tessera:short", "mqtt").await;
    let (mut s, _) = Raw::connect(b.tcp, x_oauth2("renewed", None, Some(&short))).await;
    let fresh = idp.token(DEVICE, JWT, "mqtt").await;
    s.send(&reauth(&fresh)).await;
    match s.recv().await {
        Some(Packet::Auth(a)) => assert_eq!(a.reason_code, ReasonCode::SUCCESS),
        other => panic!("{other:?}"),
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    s.send(&Packet::PingReq).await;
    assert_eq!(
        s.recv().await,
        Some(Packet::PingResp),
        "outlived the first token"
    );
    // Another subject's token does not re-authenticate this session.
    let other = idp.token(OTHER_DEVICE, JWT, "mqtt").await;
    s.send(&reauth(&other)).await;
    s.expect_disconnect(ReasonCode::NOT_AUTHORIZED).await;

    let log = b.log_text();
    for t in [&rs, &es, &narrow, &short, &fresh, &other] {
        assert!(!log.contains(t.as_str()), "a token reached the log");
    }
    assert!(log.contains("event=\"external_token\""), "audited");
    let metrics = crate::metrics::http_get(b.metrics, "/metrics").await.1;
    let accepted = format!(
        "tessera_external_tokens_total{{issuer=\"{}\",outcome=\"accepted\"}}",
        idp.issuer
    );
    assert!(metrics.contains(&accepted), "{metrics}");
}

fn reauth(token: &str) -> Packet {
    Packet::Auth(Auth {
        reason_code: ReasonCode::REAUTHENTICATE,
        properties: Properties {
            authentication_method: Some("X-OAUTH2".into()),
            authentication_data: Some(token.to_string().into()),
            ..Default::default()
        },
    })
}

#[tokio::test]
async fn every_kind_of_bad_jwt_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "idp-ca");
    let idp = Idp::start(dir.path(), &ca, "one", 0);
    let elsewhere = Idp::start(dir.path(), &ca, "elsewhere", 0);
    let b = broker(&idp, 60);
    let good = idp.token(DEVICE, JWT, "mqtt").await;
    assert_eq!(connack(&b, "good", &good).await.0, ReasonCode::SUCCESS);

    let wrong_audience = idp.token(DEVICE, "urn:other-service", "mqtt").await;
    refused(&b, &wrong_audience, "not meant for this broker").await;
    let wrong_issuer = elsewhere.token(DEVICE, JWT, "mqtt").await;
    refused(&b, &wrong_issuer, "issuer is not trusted").await;
    // Once verified (and kept as such), then past its `exp`: refused all the same.
    let short = idp.token(DEVICE, "urn:tessera:short", "mqtt").await;
    assert_eq!(connack(&b, "short", &short).await.0, ReasonCode::SUCCESS);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    refused(&b, &short, "expired").await;
    let mut c = claims(&idp);
    c["nbf"] = json!(c["iat"].as_u64().unwrap() + 3600);
    refused(&b, &idp.sign("RS256", json!({}), c), "not valid yet").await;
    let mut c = claims(&idp);
    c.as_object_mut().unwrap().remove("exp");
    refused(&b, &idp.sign("ES256", json!({}), c), "no expiry").await;
    // `alg: none`, no signature.
    let kid = idp.public_rsa_jwk()["kid"].clone();
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "kid": kid})),
        b64(&claims(&idp))
    );
    refused(&b, &none, "algorithm is not accepted").await;
    // HS256 keyed with the RSA public key, in each form an attacker might try.
    let public = idp.public_rsa_jwk();
    for secret in [
        public.to_string(),
        public["n"].as_str().unwrap().to_string(),
    ] {
        let input = format!(
            "{}.{}",
            b64(&json!({"alg": "HS256", "kid": kid})),
            b64(&claims(&idp))
        );
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
        let sig = ring::hmac::sign(&key, input.as_bytes());
        let forged = format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()));
        refused(&b, &forged, "algorithm is not accepted").await;
    }
    // A real token's payload changed (another subject), its signature kept.
    let parts: Vec<&str> = good.split('.').collect();
    let mut c: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    c["client_id"] = json!("dev-2");
    let tampered = format!("{}.{}.{}", parts[0], b64(&c), parts[2]);
    refused(&b, &tampered, "signature does not verify").await;
    // A kid the provider never had (it answers: it has not).
    let unknown = idp.sign("RS256", json!({"kid": "made-up"}), claims(&idp));
    refused(&b, &unknown, "signing key is not one of its issuer's").await;

    let log = b.log_text();
    for t in [&good, &wrong_audience, &wrong_issuer, &none, &tampered] {
        assert!(!log.contains(t.as_str()), "a token reached the log");
    }
}

#[tokio::test]
async fn known_keys_keep_working_without_the_provider_and_a_rotated_key_works_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "idp-ca");
    let mut idp = Idp::start(dir.path(), &ca, "one", 0);
    let b = broker(&idp, 60);
    let old = idp.token(DEVICE, JWT, "mqtt").await;
    assert_eq!(connack(&b, "old", &old).await.0, ReasonCode::SUCCESS);

    // The provider is stopped: a token under a known key logs in, without waiting for it.
    idp.stop();
    let started = Instant::now();
    assert_eq!(connack(&b, "offline", &old).await.0, ReasonCode::SUCCESS);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "no wait for the provider"
    );
    // A key nobody can vouch for now: the broker cannot decide (0x88), and says so.
    let unknown = idp.sign("RS256", json!({"kid": "while-down"}), claims(&idp));
    let asked = tokio::time::Instant::now();
    let (code, reason) = connack(&b, "down", &unknown).await;
    assert_eq!(code, ReasonCode::SERVER_UNAVAILABLE, "{reason:?}");

    // The provider comes back with new keys: a token under one logs in on its first try.
    // (Refreshes asked for by unknown keys are a second apart: the one above was one.)
    let idp = idp.rotate("two");
    tokio::time::sleep_until(asked + Duration::from_millis(1100)).await;
    let new = idp.token(DEVICE, JWT, "mqtt").await;
    let (code, reason) = connack(&b, "new", &new).await;
    assert_eq!(code, ReasonCode::SUCCESS, "{reason:?}");
    // The old key is gone from the provider's set: tokens under it are refused now.
    refused(&b, &old, "signing key is not one of its issuer's").await;
}

#[tokio::test]
async fn an_opaque_token_is_introspected_once_and_refused_soon_after_its_revocation() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "idp-ca");
    let idp = Idp::start(dir.path(), &ca, "one", 0);
    let b = broker(&idp, 2);
    let opaque = idp.token(DEVICE, "urn:tessera:opaque", "mqtt").await;
    assert!(!opaque.contains('.'), "opaque: {opaque}");
    // Twenty logins at once with one new token: one introspection request.
    let mut logins = tokio::task::JoinSet::new();
    for i in 0..20 {
        let (addr, t) = (b.tcp, opaque.clone());
        logins.spawn(async move {
            let (_c, ack) = Raw::connect(addr, x_oauth2(&format!("o{i}"), None, Some(&t))).await;
            ack.reason_code
        });
    }
    while let Some(code) = logins.join_next().await {
        assert_eq!(code.unwrap(), ReasonCode::SUCCESS, "{}", b.log_text());
    }
    let metrics = crate::metrics::http_get(b.metrics, "/metrics").await.1;
    let asked = format!(
        "tessera_issuer_introspections_total{{issuer=\"{}\",outcome=\"active\"}} 1",
        idp.issuer
    );
    assert!(metrics.contains(&asked), "{metrics}");

    // Revoked at the provider: refused once the cached answer (2 s) runs out.
    idp.revoke(DEVICE, &opaque).await;
    let revoked = Instant::now();
    loop {
        let (code, _) = connack(&b, "after", &opaque).await;
        if code == ReasonCode::NOT_AUTHORIZED {
            break;
        }
        assert_eq!(code, ReasonCode::SUCCESS);
        assert!(
            revoked.elapsed() < Duration::from_secs(3),
            "still in after cache_ttl"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A provider that answers nothing: the login waits its issuer's timeout (1 s), then 0x88.
    let other = idp.token(DEVICE, "urn:tessera:opaque", "mqtt").await;
    let jwt = idp.token(DEVICE, JWT, "mqtt").await;
    assert_eq!(connack(&b, "jwt", &jwt).await.0, ReasonCode::SUCCESS);
    idp.freeze();
    let started = Instant::now();
    let (code, _) = connack(&b, "frozen", &other).await;
    assert_eq!(code, ReasonCode::SERVER_UNAVAILABLE);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // Meanwhile a JWT under a known key goes in at once.
    let started = Instant::now();
    assert_eq!(connack(&b, "jwt-frozen", &jwt).await.0, ReasonCode::SUCCESS);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "no wait for the provider"
    );
    idp.thaw();
    assert!(!b.log_text().contains(&opaque), "a token reached the log");
}

#[tokio::test]
async fn a_provider_token_revoked_by_jti_is_held_out_and_its_sessions_end() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "idp-ca");
    let idp = Idp::start(dir.path(), &ca, "one", 0);
    let b = broker(&idp, 60);
    let token = idp.token(DEVICE, JWT, "mqtt").await;
    let payload: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(token.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    let jti = payload["jti"].as_str().unwrap().to_string();
    let (mut live, ack) = Raw::connect(b.tcp, x_oauth2("live", None, Some(&token))).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);

    let out = b.command(
        &["token", "revoke", "--jti", &jti, "--issuer", &idp.issuer],
        "",
    );
    assert!(out.status.success(), "{out:?}");
    live.expect_disconnect(ReasonCode::NOT_AUTHORIZED).await;
    refused(&b, &token, "revoked").await;
    // Another token of the same device is not revoked.
    let other = idp.token(DEVICE, JWT, "mqtt").await;
    assert_eq!(connack(&b, "other", &other).await.0, ReasonCode::SUCCESS);
    // An issuer that is not configured is a usage error.
    let out = b.command(
        &[
            "token",
            "revoke",
            "--jti",
            &jti,
            "--issuer",
            "https://nowhere",
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}
