//! The token service end to end: tokens from the HTTPS endpoint and the operator commands, used
//! over MQTT with X-OAUTH2 (one and two steps, re-authentication), as the MQTT password, cut at
//! expiry and on revocation; scopes narrowing rights; the OAuth flows; and secrets never stored
//! or logged in clear.

use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::v5::MqttOptions;
use rumqttc::v5::mqttbytes::QoS as QoS5;
use serde_json::Value;
use tessera_broker::codec::{Packet, Properties, QoS, ReasonCode, SubscriptionOptions, Will};

use crate::clients::{mosquitto_pub, rumqttc_v5};
use crate::harness::TestBroker;
use crate::https;
use crate::raw::{Raw, connect_v5, publish};

const CLIENT: &str = "client-id-Iegh7ooK";
const SECRET: &str = "3dc8b0885b3043c0e38aa2e1dc64";

/// A broker as shipped (no anonymous clients) with user alice/wonderland, bob/builder and the
/// seed article's client.
pub fn setup(extra: &str) -> TestBroker {
    let b = TestBroker::start_secure(extra);
    for (u, p) in [("alice", "wonderland"), ("bob", "builder")] {
        let out = b.command(&["user", "add", u], &format!("{p}\n"));
        assert!(out.status.success(), "{out:?}");
    }
    let out = b.command(
        &["oauth_add_client_password", CLIENT, "Demo client", SECRET],
        "",
    );
    assert!(out.status.success(), "{out:?}");
    b
}

async fn password_grant(
    b: &TestBroker,
    user: &str,
    pw: &str,
    scope: &str,
    ttl: Option<&str>,
) -> https::Response {
    let mut form = vec![
        ("grant_type", "password"),
        ("username", user),
        ("password", pw),
        ("client_id", CLIENT),
        ("client_secret", SECRET),
        ("scope", scope),
    ];
    if let Some(t) = ttl {
        form.push(("ttl", t));
    }
    https::post(b.oauth, &b.cert_path(), "/oauth/token", &form).await
}

pub async fn token(b: &TestBroker, user: &str, pw: &str, scope: &str) -> String {
    let r = password_grant(b, user, pw, scope, None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["access_token"].as_str().unwrap().to_string()
}

fn cli_token(b: &TestBroker, user: &str, ttl: &str, scopes: &str) -> String {
    let out = b.command(
        &[
            "--json", "token", "issue", user, "--ttl", ttl, "--scope", scopes,
        ],
        "",
    );
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["access_token"].as_str().unwrap().to_string()
}

fn x_oauth2(id: &str, user: Option<&str>, token: Option<&str>) -> tessera_broker::codec::Connect {
    let mut c = connect_v5(id);
    c.username = user.map(Into::into);
    c.properties.authentication_method = Some("X-OAUTH2".into());
    c.properties.authentication_data = token.map(|t| Bytes::from(t.to_string()));
    c
}

/// mosquitto_pub over MQTT 5 with the token as X-OAUTH2 Authentication Data, plus `args`.
async fn mosquitto_pub_x_oauth2(
    b: &TestBroker,
    args: &[&str],
    token: &str,
) -> std::process::Output {
    let port = b.tcp.port().to_string();
    let mut all = vec!["-p", &port, "-V", "mqttv5"];
    all.extend_from_slice(args);
    all.extend([
        "-D",
        "connect",
        "authentication-method",
        "X-OAUTH2",
        "-D",
        "connect",
        "authentication-data",
        token,
    ]);
    mosquitto_pub(&all).await
}

pub async fn login(b: &TestBroker, id: &str, token: &str) -> Raw {
    let (raw, ack) = Raw::connect(b.tcp, x_oauth2(id, None, Some(token))).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS, "{ack:?}");
    assert_eq!(
        ack.properties.authentication_method.as_deref(),
        Some("X-OAUTH2")
    );
    raw
}

#[tokio::test]
async fn seed_article_flow_password_grant_then_mqtt_then_revocation() {
    let b = setup("");
    // The article's curl request, answered as ejabberd answers it.
    let r = password_grant(&b, "alice@localhost", "wonderland", "sasl_auth", None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.header("content-type"),
        Some("application/json;charset=UTF-8")
    );
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.header("pragma"), Some("no-cache"));
    let v = r.json();
    assert_eq!(v["token_type"], "bearer");
    assert_eq!(v["scope"], "sasl_auth");
    assert_eq!(v["expires_in"], 2_592_000);
    let tok = v["access_token"].as_str().unwrap().to_string();

    // One step with rumqttc: the token in CONNECT's Authentication Data.
    let mut opts = MqttOptions::new("rumq-dev", "127.0.0.1", b.tcp.port());
    opts.set_authentication_method(Some("X-OAUTH2".into()));
    opts.set_authentication_data(Some(Bytes::from(tok.clone())));
    let (client, mut rx) = rumqttc_v5(opts).await;
    client
        .subscribe("alice/#", QoS5::AtLeastOnce)
        .await
        .unwrap();
    // mosquitto_pub with the same token publishes to it.
    let mut delivered = false;
    for _ in 0..20 {
        let out =
            mosquitto_pub_x_oauth2(&b, &["-t", "alice/x", "-m", "hello", "-q", "1"], &tok).await;
        assert!(out.status.success(), "{out:?}");
        if let Ok(Some((t, p, _, _))) =
            tokio::time::timeout(Duration::from_millis(300), rx.recv()).await
        {
            assert_eq!((t.as_str(), p.as_slice()), ("alice/x", &b"hello"[..]));
            delivered = true;
            break;
        }
    }
    assert!(delivered);

    // Revocation through the operator command cuts a live session within a second.
    let mut live = login(&b, "watch", &tok).await;
    let out = b.command(&["oauth_revoke_token", &tok], "");
    assert!(out.status.success(), "{out:?}");
    let revoked_at = Instant::now();
    live.expect_disconnect(ReasonCode::NOT_AUTHORIZED).await;
    assert!(
        revoked_at.elapsed() < Duration::from_secs(1),
        "{:?}",
        revoked_at.elapsed()
    );
    // And mosquitto_pub now fails with 135 (0x87).
    let out = mosquitto_pub_x_oauth2(&b, &["-t", "alice/x", "-m", "x"], &tok).await;
    assert_eq!(out.status.code(), Some(135), "{out:?}");
}

#[tokio::test]
async fn two_step_exchange_and_reauthentication_with_a_fresh_token() {
    let b = setup("");
    let t1 = token(&b, "alice", "wonderland", "mqtt").await;
    let t2 = token(&b, "alice", "wonderland", "mqtt").await;
    let bob = token(&b, "bob", "builder", "mqtt").await;

    // CONNECT with the method and no data → AUTH 0x18 → AUTH 0x18 with the token → CONNACK.
    let mut raw = Raw::open(b.tcp).await;
    raw.send(&Packet::Connect(Box::new(x_oauth2(
        "two-step",
        Some("alice"),
        None,
    ))))
    .await;
    let Some(Packet::Auth(challenge)) = raw.recv().await else {
        panic!("expected AUTH")
    };
    assert_eq!(challenge.reason_code, ReasonCode::CONTINUE_AUTHENTICATION);
    assert_eq!(
        challenge.properties.authentication_method.as_deref(),
        Some("X-OAUTH2")
    );
    let answer = |code, tok: &str| {
        Packet::Auth(tessera_broker::codec::Auth {
            reason_code: code,
            properties: Properties {
                authentication_method: Some("X-OAUTH2".into()),
                authentication_data: Some(Bytes::from(tok.to_string())),
                ..Default::default()
            },
        })
    };
    raw.send(&answer(ReasonCode::CONTINUE_AUTHENTICATION, &t1))
        .await;
    let Some(Packet::ConnAck(ack)) = raw.recv().await else {
        panic!()
    };
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    assert_eq!(
        ack.properties.authentication_method.as_deref(),
        Some("X-OAUTH2")
    );
    // Re-authentication with a fresh token of the same user.
    raw.send(&answer(ReasonCode::REAUTHENTICATE, &t2)).await;
    let Some(Packet::Auth(ok)) = raw.recv().await else {
        panic!()
    };
    assert_eq!(ok.reason_code, ReasonCode::SUCCESS);
    // Revoking the first token no longer affects the session: it runs on the second.
    assert!(b.command(&["token", "revoke", &t1], "").status.success());
    raw.send(&Packet::PingReq).await;
    assert_eq!(raw.recv().await, Some(Packet::PingResp));
    // Another user's token is refused: DISCONNECT 0x87.
    raw.send(&answer(ReasonCode::REAUTHENTICATE, &bob)).await;
    raw.expect_disconnect(ReasonCode::NOT_AUTHORIZED).await;

    // The mqtt5 crate completes the challenge and re-authenticates.
    struct Token(std::sync::Mutex<String>);
    impl mqtt5::client::AuthHandler for Token {
        fn handle_challenge<'a>(
            &'a self,
            _m: &'a str,
            _d: Option<&'a [u8]>,
        ) -> std::pin::Pin<
            Box<
                dyn std::future::Future<Output = mqtt5::Result<mqtt5::client::AuthResponse>>
                    + Send
                    + 'a,
            >,
        > {
            let t = self.0.lock().unwrap().clone();
            Box::pin(async move { Ok(mqtt5::client::AuthResponse::Continue(t.into_bytes())) })
        }
    }
    let client = mqtt5::MqttClient::new("m5dev");
    client
        .set_auth_handler(Token(std::sync::Mutex::new(t2.clone())))
        .await;
    let opts = mqtt5::ConnectOptions::new("m5dev")
        .with_authentication_method("X-OAUTH2")
        .with_automatic_reconnect(false);
    client
        .connect_with_options(&format!("mqtt://{}", b.tcp), opts)
        .await
        .expect("two-step X-OAUTH2 with mqtt5");
    client.reauthenticate().await.expect("re-authentication");
    assert!(client.is_connected().await);
}

#[tokio::test]
async fn expired_token_cuts_the_session_with_0xa0() {
    let b = setup("");
    let tok = cli_token(&b, "alice", "2", "mqtt");
    let start = Instant::now();
    let mut s = login(&b, "short", &tok).await;
    match s.recv().await {
        Some(Packet::Disconnect(d)) => {
            assert_eq!(d.reason_code, ReasonCode::MAXIMUM_CONNECT_TIME);
            assert!(d.properties.reason_string.is_some());
        }
        other => panic!("{other:?}"),
    }
    let t = start.elapsed();
    assert!(
        t >= Duration::from_millis(1000) && t < Duration::from_secs(4),
        "{t:?}"
    );
    // Afterwards the token is refused.
    let (_r, ack) = Raw::connect(b.tcp, x_oauth2("late", None, Some(&tok))).await;
    assert_eq!(ack.reason_code, ReasonCode::NOT_AUTHORIZED);
}

#[tokio::test]
async fn every_failure_gets_its_code_and_a_reason_that_reveals_no_user() {
    // Enough allowed failures that the backoff does not answer first.
    let b = setup("oauth:\n  bind: 127.0.0.1:0\n  max_failures: 100\n");
    let alice = token(&b, "alice", "wonderland", "mqtt").await;
    let scopeless = cli_token(&b, "alice", "600", "mqtt:publish:x");
    let cases: Vec<(tessera_broker::codec::Connect, ReasonCode, &str)> = vec![
        (
            x_oauth2("c1", None, Some("not-a-token")),
            ReasonCode::NOT_AUTHORIZED,
            "invalid",
        ),
        (
            x_oauth2("c2", Some("bob"), Some(&alice)),
            ReasonCode::NOT_AUTHORIZED,
            "another user",
        ),
        (
            x_oauth2("c3", None, Some(&scopeless)),
            ReasonCode::NOT_AUTHORIZED,
            "scope",
        ),
        (
            {
                let mut c = connect_v5("c4");
                c.properties.authentication_method = Some("SCRAM-SHA-256".into());
                c
            },
            ReasonCode::BAD_AUTHENTICATION_METHOD,
            "",
        ),
        (connect_v5("c5"), ReasonCode::NOT_AUTHORIZED, "anonymous"),
    ];
    for (c, code, why) in cases {
        let (_r, ack) = Raw::connect(b.tcp, c).await;
        assert_eq!(ack.reason_code, code);
        let reason = ack.properties.reason_string.unwrap_or_default();
        assert!(reason.contains(why), "{reason}");
    }
    // Password logins: the same answer for a wrong password and for a user that does not exist.
    let mut answers = Vec::new();
    for (user, pw) in [("alice", "wrong"), ("nobody", "wrong")] {
        let mut c = connect_v5("pw");
        c.username = Some(user.into());
        c.password = Some(Bytes::from(pw));
        let (_r, ack) = Raw::connect(b.tcp, c).await;
        answers.push((ack.reason_code, ack.properties.reason_string));
    }
    assert_eq!(answers[0], answers[1]);
    assert_eq!(answers[0].0, ReasonCode::BAD_USER_NAME_OR_PASSWORD);
    // And over HTTP.
    let a = password_grant(&b, "alice", "wrong", "mqtt", None).await;
    let n = password_grant(&b, "nobody", "wrong", "mqtt", None).await;
    assert_eq!((a.status, a.body.clone()), (n.status, n.body.clone()));
    assert_eq!(a.json()["error"], "invalid_grant");
}

#[tokio::test]
async fn scopes_narrow_configured_rights_and_the_will_is_checked() {
    let b = setup(
        "access_publish:\n  \"devices/%u/#\": all\naccess_subscribe:\n  \"devices/%u/#\": all\n",
    );
    let tok = token(
        &b,
        "alice",
        "wonderland",
        "mqtt mqtt:publish:devices/alice/telemetry mqtt:subscribe:devices/alice/cmd/#",
    )
    .await;
    let mut s = login(&b, "scoped", &tok).await;
    s.publish("devices/alice/telemetry", b"21", QoS::AtLeastOnce, 1)
        .await;
    assert!(matches!(s.recv().await, Some(Packet::PubAck(a)) if !a.reason_code.is_error()));
    s.publish("devices/alice/other", b"x", QoS::AtLeastOnce, 2)
        .await;
    assert!(
        matches!(s.recv().await, Some(Packet::PubAck(a)) if a.reason_code == ReasonCode::NOT_AUTHORIZED)
    );
    s.publish("devices/bob/telemetry", b"x", QoS::ExactlyOnce, 3)
        .await;
    assert!(
        matches!(s.recv().await, Some(Packet::PubRec(a)) if a.reason_code == ReasonCode::NOT_AUTHORIZED)
    );
    let o = SubscriptionOptions {
        qos: QoS::AtLeastOnce,
        ..Default::default()
    };
    assert_eq!(
        s.subscribe_with("devices/alice/#", o, None).await,
        vec![ReasonCode::NOT_AUTHORIZED]
    );
    assert_eq!(
        s.subscribe_with("devices/alice/cmd/+", o, None).await,
        vec![ReasonCode::GRANTED_QOS_1]
    );
    // Without scopes the configuration alone decides: own devices yes, others' no.
    let plain = token(&b, "alice", "wonderland", "mqtt").await;
    let mut p = login(&b, "plain", &plain).await;
    assert_eq!(
        p.subscribe_with("devices/alice/#", o, None).await,
        vec![ReasonCode::GRANTED_QOS_1]
    );
    assert_eq!(
        p.subscribe_with("devices/+/temp", o, None).await,
        vec![ReasonCode::NOT_AUTHORIZED]
    );
    // A will on a topic the client may not publish is refused at CONNECT.
    let mut c = x_oauth2("willy", None, Some(&plain));
    c.will = Some(Will {
        topic: "devices/bob/status".into(),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Properties::default(),
    });
    let (_r, ack) = Raw::connect(b.tcp, c).await;
    assert_eq!(ack.reason_code, ReasonCode::NOT_AUTHORIZED);
}

#[tokio::test]
async fn token_as_password_over_mqtt_311_and_password_logins() {
    let b = setup("");
    let tok = cli_token(&b, "bob", "600", "sasl_auth");
    let port = b.tcp.port().to_string();
    let out = mosquitto_pub(&[
        "-p", &port, "-V", "mqttv311", "-u", "bob", "-P", &tok, "-t", "b/1", "-m", "x",
    ])
    .await;
    assert!(out.status.success(), "{out:?}");
    let mut opts = rumqttc::MqttOptions::new("v3dev", "127.0.0.1", b.tcp.port());
    opts.set_credentials("bob", tok.clone());
    let (c, mut el) = rumqttc::AsyncClient::new(opts, 10);
    let connack = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(a)) = el.poll().await.unwrap()
            {
                return a.code;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(connack, rumqttc::ConnectReturnCode::Success);
    drop(c);
    // The user's password works too (password_login), a wrong one does not.
    let out = mosquitto_pub(&[
        "-p", &port, "-V", "mqttv311", "-u", "bob", "-P", "builder", "-t", "b/1", "-m", "x",
    ])
    .await;
    assert!(out.status.success(), "{out:?}");
    let out = mosquitto_pub(&[
        "-p", &port, "-V", "mqttv311", "-u", "bob", "-P", "nope", "-t", "b/1", "-m", "x",
    ])
    .await;
    assert!(!out.status.success());
}

#[tokio::test]
async fn refresh_tokens_rotate_and_reuse_revokes_the_family() {
    let b = setup("");
    let r = password_grant(&b, "alice", "wonderland", "mqtt", Some("600")).await;
    let v = r.json();
    assert_eq!(v["expires_in"], 600);
    let access1 = v["access_token"].as_str().unwrap().to_string();
    let rt1 = v["refresh_token"].as_str().unwrap().to_string();
    let refresh = |rt: String| {
        let b = &b;
        async move {
            https::post(
                b.oauth,
                &b.cert_path(),
                "/oauth/token",
                &[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", &rt),
                    ("client_id", CLIENT),
                    ("client_secret", SECRET),
                ],
            )
            .await
        }
    };
    let r2 = refresh(rt1.clone()).await;
    assert_eq!(r2.status, 200, "{}", r2.body);
    let access2 = r2.json()["access_token"].as_str().unwrap().to_string();
    let rt2 = r2.json()["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(rt1, rt2);
    let mut live = login(&b, "fam", &access2).await;
    // Reuse of the spent refresh token: refused, and the family (and its sessions) revoked.
    let again = refresh(rt1).await;
    assert_eq!(again.status, 400);
    assert_eq!(again.json()["error"], "invalid_grant");
    live.expect_disconnect(ReasonCode::NOT_AUTHORIZED).await;
    for t in [&access1, &access2] {
        let (_r, ack) = Raw::connect(b.tcp, x_oauth2("x", None, Some(t))).await;
        assert_eq!(ack.reason_code, ReasonCode::NOT_AUTHORIZED);
    }
    assert_eq!(refresh(rt2).await.status, 400);
}

/// The CSRF cookie and form token of a page.
fn csrf_of(r: &https::Response) -> (String, String) {
    let cookie = r
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let token = r
        .body
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    (cookie, token)
}

pub fn query_param(location: &str, key: &str) -> Option<String> {
    let q = location.split_once(['?', '#'])?.1;
    form_urlencoded::parse(q.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

#[tokio::test]
async fn authorization_code_with_pkce_and_exact_redirect_uris() {
    let b = setup("");
    let cb = "http://127.0.0.1:9/callback";
    let out = b.command(
        &[
            "client",
            "add-public",
            "mobile",
            "Mobile app",
            "--redirect-uri",
            cb,
        ],
        "",
    );
    assert!(out.status.success(), "{out:?}");
    let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
    let cert = b.cert_path();
    let q = https::form(&[
        ("response_type", "code"),
        ("client_id", "mobile"),
        ("redirect_uri", cb),
        ("scope", "mqtt"),
        ("state", "xyz"),
        ("code_challenge", challenge),
        ("code_challenge_method", "S256"),
    ]);
    let page = https::get(b.oauth, &cert, &format!("/oauth/authorize?{q}")).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    assert!(page.header("content-security-policy").is_some());
    let (cookie, csrf) = csrf_of(&page);
    let submit = |extra: Vec<(&'static str, String)>, cookie: Option<String>| {
        let mut pairs: Vec<(&str, String)> = vec![
            ("response_type", "code".into()),
            ("client_id", "mobile".into()),
            ("redirect_uri", cb.into()),
            ("scope", "mqtt".into()),
            ("state", "xyz".into()),
            ("code_challenge", challenge.into()),
            ("code_challenge_method", "S256".into()),
            ("username", "alice".into()),
            ("action", "allow".into()),
        ];
        pairs.extend(extra);
        let body = https::form(
            &pairs
                .iter()
                .map(|(k, v)| (*k, v.as_str()))
                .collect::<Vec<_>>(),
        );
        let cert = cert.clone();
        let addr = b.oauth;
        async move {
            let headers: Vec<(&str, &str)> = cookie
                .as_deref()
                .map(|c| vec![("Cookie", c)])
                .unwrap_or_default();
            https::request(addr, &cert, "POST", "/oauth/authorize", &headers, &body).await
        }
    };
    // Without the CSRF cookie the form is refused.
    let forged = submit(
        vec![("password", "wonderland".into()), ("csrf", csrf.clone())],
        None,
    )
    .await;
    assert_eq!(forged.status, 403);
    // A wrong password shows the form again.
    let wrong = submit(
        vec![("password", "x".into()), ("csrf", csrf.clone())],
        Some(cookie.clone()),
    )
    .await;
    assert_eq!(wrong.status, 401);
    let ok = submit(
        vec![("password", "wonderland".into()), ("csrf", csrf.clone())],
        Some(cookie.clone()),
    )
    .await;
    assert_eq!(ok.status, 302, "{}", ok.body);
    let location = ok.header("location").unwrap().to_string();
    assert!(location.starts_with(cb));
    assert_eq!(query_param(&location, "state").as_deref(), Some("xyz"));
    let code = query_param(&location, "code").unwrap();
    let exchange = |code: String, verifier: &'static str| {
        let cert = cert.clone();
        let addr = b.oauth;
        async move {
            https::post(
                addr,
                &cert,
                "/oauth/token",
                &[
                    ("grant_type", "authorization_code"),
                    ("code", &code),
                    ("redirect_uri", cb),
                    ("client_id", "mobile"),
                    ("code_verifier", verifier),
                ],
            )
            .await
        }
    };
    let bad = exchange(
        code.clone(),
        "wrong-verifier-wrong-verifier-wrong-verifier-x",
    )
    .await;
    assert_eq!(bad.json()["error"], "invalid_grant");
    // The code was spent by the failed attempt: single use.
    assert_eq!(exchange(code, verifier).await.status, 400);
    let ok = submit(
        vec![("password", "wonderland".into()), ("csrf", csrf.clone())],
        Some(cookie.clone()),
    )
    .await;
    let code = query_param(ok.header("location").unwrap(), "code").unwrap();
    let t = exchange(code, verifier).await;
    assert_eq!(t.status, 200, "{}", t.body);
    let tok = t.json()["access_token"].as_str().unwrap().to_string();
    login(&b, "from-code", &tok).await;

    // Public clients must use PKCE: the error goes back to the registered URI.
    let q = https::form(&[
        ("response_type", "code"),
        ("client_id", "mobile"),
        ("redirect_uri", cb),
        ("state", "s"),
    ]);
    let r = https::get(b.oauth, &cert, &format!("/oauth/authorize?{q}")).await;
    assert_eq!(r.status, 302);
    assert_eq!(
        query_param(r.header("location").unwrap(), "error").as_deref(),
        Some("invalid_request")
    );
    // A redirect URI that is not registered exactly: an error page, never a redirect.
    for evil in [
        "http://127.0.0.1:9/callback/../evil",
        "http://evil.example/callback",
        "http://127.0.0.1:9/callback?x=1",
    ] {
        let q = https::form(&[
            ("response_type", "code"),
            ("client_id", "mobile"),
            ("redirect_uri", evil),
            ("code_challenge", challenge),
            ("code_challenge_method", "S256"),
        ]);
        let r = https::get(b.oauth, &cert, &format!("/oauth/authorize?{q}")).await;
        assert_eq!(r.status, 400, "{evil}");
        assert!(r.header("location").is_none(), "{evil}");
    }
}

#[tokio::test]
async fn implicit_flow_puts_the_token_in_the_fragment_or_ejabberds_query() {
    let b = setup("");
    let cb = "https://app.example/oauth";
    assert!(
        b.command(&["oauth_add_client_implicit", "webapp", "Web app", cb], "")
            .status
            .success()
    );
    let cert = b.cert_path();
    for (path, mode, fragment) in [
        ("/oauth/authorize", None, true),
        ("/oauth/authorization_token", Some("query"), false),
    ] {
        let mut params = vec![
            ("response_type", "token"),
            ("client_id", "webapp"),
            ("redirect_uri", cb),
            ("scope", "sasl_auth"),
            ("state", "st"),
        ];
        if let Some(m) = mode {
            params.push(("response_mode", m));
        }
        let page = https::get(b.oauth, &cert, &format!("{path}?{}", https::form(&params))).await;
        assert_eq!(page.status, 200, "{}", page.body);
        let (cookie, csrf) = csrf_of(&page);
        let mut form = params.clone();
        form.extend([
            ("username", "bob@localhost"),
            ("password", "builder"),
            ("ttl", "3600"),
            ("csrf", csrf.as_str()),
            ("action", "allow"),
        ]);
        let r = https::post_with(b.oauth, &cert, path, &[("Cookie", &cookie)], &form).await;
        assert_eq!(r.status, 302, "{}", r.body);
        let loc = r.header("location").unwrap().to_string();
        assert_eq!(loc.contains('#'), fragment, "{loc}");
        assert_eq!(query_param(&loc, "token_type").as_deref(), Some("bearer"));
        assert_eq!(query_param(&loc, "expires_in").as_deref(), Some("3600"));
        assert_eq!(query_param(&loc, "state").as_deref(), Some("st"));
        let tok = query_param(&loc, "access_token").unwrap();
        login(&b, "implicit", &tok).await;
    }
}

#[tokio::test]
async fn device_flow_for_keyboard_less_devices() {
    let b = setup("");
    assert!(
        b.command(
            &["client", "add-public", "sensor-fw", "Sensor firmware"],
            ""
        )
        .status
        .success()
    );
    let cert = b.cert_path();
    let d = https::post(
        b.oauth,
        &cert,
        "/oauth/device_authorization",
        &[("client_id", "sensor-fw"), ("scope", "mqtt")],
    )
    .await;
    assert_eq!(d.status, 200, "{}", d.body);
    let d = d.json();
    let device_code = d["device_code"].as_str().unwrap().to_string();
    let user_code = d["user_code"].as_str().unwrap().to_string();
    let poll = || {
        let cert = cert.clone();
        let dc = device_code.clone();
        let addr = b.oauth;
        async move {
            https::post(
                addr,
                &cert,
                "/oauth/token",
                &[
                    ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                    ("device_code", &dc),
                    ("client_id", "sensor-fw"),
                ],
            )
            .await
        }
    };
    assert_eq!(poll().await.json()["error"], "authorization_pending");
    // A person opens the verification page and approves.
    let page = https::get(
        b.oauth,
        &cert,
        &format!("/oauth/device?user_code={user_code}"),
    )
    .await;
    assert!(page.body.contains(&user_code));
    let (cookie, csrf) = csrf_of(&page);
    let form = https::form(&[
        ("user_code", &user_code),
        ("username", "alice"),
        ("password", "wonderland"),
        ("csrf", &csrf),
        ("action", "allow"),
    ]);
    let r = https::request(
        b.oauth,
        &cert,
        "POST",
        "/oauth/device",
        &[("Cookie", &cookie)],
        &form,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("approved"));
    let mut answer = poll().await;
    for _ in 0..10 {
        if answer.status == 200 {
            break;
        }
        assert_eq!(answer.json()["error"], "slow_down");
        tokio::time::sleep(Duration::from_secs(2)).await;
        answer = poll().await;
    }
    assert_eq!(answer.status, 200, "{}", answer.body);
    let tok = answer.json()["access_token"].as_str().unwrap().to_string();
    login(&b, "sensor", &tok).await;
    // The code is spent.
    assert_eq!(poll().await.status, 400);
}

#[tokio::test]
async fn client_credentials_revoke_introspect_and_metadata() {
    let b = setup("");
    let out = b.command(&["user", "add", "device-7"], "devpass\n");
    assert!(out.status.success());
    let out = b.command(
        &[
            "--json",
            "client",
            "add-password",
            "dev7",
            "Device 7",
            "--user",
            "device-7",
        ],
        "",
    );
    assert!(out.status.success(), "{out:?}");
    let secret = serde_json::from_slice::<Value>(&out.stdout).unwrap()["client_secret"]
        .as_str()
        .unwrap()
        .to_string();
    let cert = b.cert_path();
    let basic = format!("Basic {}", {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(format!("dev7:{secret}"))
    });
    let r = https::post_with(
        b.oauth,
        &cert,
        "/oauth/token",
        &[("Authorization", &basic)],
        &[("grant_type", "client_credentials"), ("scope", "mqtt")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.json().get("refresh_token").is_none());
    let tok = r.json()["access_token"].as_str().unwrap().to_string();
    let intro = https::post_with(
        b.oauth,
        &cert,
        "/oauth/introspect",
        &[("Authorization", &basic)],
        &[("token", &tok)],
    )
    .await;
    assert_eq!(intro.json()["active"], true);
    assert_eq!(intro.json()["username"], "device-7");
    let unauth = https::post(b.oauth, &cert, "/oauth/introspect", &[("token", &tok)]).await;
    assert_eq!(unauth.status, 401);
    assert!(unauth.header("www-authenticate").is_some());
    let mut live = login(&b, "dev7", &tok).await;
    let rev = https::post_with(
        b.oauth,
        &cert,
        "/oauth/revoke",
        &[("Authorization", &basic)],
        &[("token", &tok)],
    )
    .await;
    assert_eq!(rev.status, 200);
    live.expect_disconnect(ReasonCode::NOT_AUTHORIZED).await;
    let intro = https::post_with(
        b.oauth,
        &cert,
        "/oauth/introspect",
        &[("Authorization", &basic)],
        &[("token", &tok)],
    )
    .await;
    assert_eq!(intro.json()["active"], false);
    let meta = https::get(b.oauth, &cert, "/.well-known/oauth-authorization-server")
        .await
        .json();
    assert!(
        meta["issuer"]
            .as_str()
            .unwrap()
            .starts_with("https://localhost:")
    );
    assert_eq!(meta["code_challenge_methods_supported"][0], "S256");
    // Errors are RFC 6749 JSON.
    let r = https::post(b.oauth, &cert, "/oauth/token", &[("grant_type", "magic")]).await;
    assert_eq!(r.json()["error"], "unsupported_grant_type");
    let r = https::post(
        b.oauth,
        &cert,
        "/oauth/token",
        &[
            ("grant_type", "password"),
            ("username", "alice"),
            ("password", "wonderland"),
            ("client_id", CLIENT),
            ("client_secret", SECRET),
            ("scope", "admin"),
        ],
    )
    .await;
    assert_eq!(r.json()["error"], "invalid_scope");
}

#[tokio::test]
async fn failed_logins_are_slowed_per_user_and_ip() {
    let b = setup("");
    for _ in 0..5 {
        let r = password_grant(&b, "alice", "wrong", "mqtt", None).await;
        assert_eq!(r.status, 400);
    }
    let r = password_grant(&b, "alice", "wonderland", "mqtt", None).await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(r.header("retry-after").is_some());
    assert_eq!(r.json()["error"], "slow_down");
}

#[tokio::test]
async fn secrets_are_never_stored_or_logged_in_clear() {
    let b = setup("");
    let r = password_grant(&b, "alice", "wonderland", "mqtt", None).await;
    let v = r.json();
    let access = v["access_token"].as_str().unwrap().to_string();
    let refresh = v["refresh_token"].as_str().unwrap().to_string();
    let issued = cli_token(&b, "bob", "600", "mqtt");
    login(&b, "logger", &access).await;
    let mut c = connect_v5("pw-login");
    c.username = Some("bob".into());
    c.password = Some(Bytes::from_static(b"builder"));
    let _ = Raw::connect(b.tcp, c).await;
    // Listing shows ids, never tokens.
    let list = b.command(&["--json", "token", "list"], "");
    let listed = String::from_utf8_lossy(&list.stdout).to_string();
    let db = std::fs::read(b.dir.path().join("data/tessera.redb")).unwrap();
    let db = String::from_utf8_lossy(&db).to_string();
    let log = b.log_text();
    for secret in [
        access.as_str(),
        refresh.as_str(),
        issued.as_str(),
        SECRET,
        "wonderland",
        "builder",
    ] {
        assert!(!db.contains(secret), "store holds a secret in clear");
        assert!(!log.contains(secret), "log holds a secret in clear");
        assert!(!listed.contains(secret), "token list shows a secret");
    }
    assert!(listed.contains("alice"));
}

#[tokio::test]
async fn a_token_whose_response_was_sent_survives_kill_9() {
    let b = setup("");
    let tok = token(&b, "alice", "wonderland", "mqtt").await;
    let dir = b.kill();
    let b = TestBroker::start_in(dir, "");
    login(&b, "after-crash", &tok).await;
}

#[tokio::test]
async fn operator_commands_work_with_and_without_a_running_server() {
    let b = setup("");
    // Live: through the admin socket.
    let out = b.command(&["user", "list"], "");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("alice") && text.contains("bob"), "{text}");
    let out = b.command(&["user", "add", "alice"], "again\n");
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    let out = b.command(&["token", "revoke", "--user", "nobody"], "");
    assert_eq!(out.status.code(), Some(3));
    let tok = cli_token(&b, "alice", "600", "mqtt");
    let mut live = login(&b, "victim", &tok).await;
    // Deleting the user revokes their tokens and ends their sessions.
    assert!(b.command(&["user", "del", "alice"], "").status.success());
    live.expect_disconnect(ReasonCode::NOT_AUTHORIZED).await;
    // Offline: straight on the store file.
    let dir = b.stop();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .arg("--config")
        .arg(dir.path().join("tessera.yml"))
        .args(["--json", "user", "list"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let users: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(users.as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn publishing_when_denied_at_qos0_is_dropped_silently() {
    let b = setup("access_publish:\n  \"devices/%u/#\": all\n");
    let tok = token(&b, "alice", "wonderland", "mqtt").await;
    let mut s = login(&b, "q0", &tok).await;
    s.subscribe("devices/#", QoS::AtMostOnce).await;
    s.send(&Packet::Publish(publish(
        "devices/bob/x",
        b"no",
        QoS::AtMostOnce,
        0,
    )))
    .await;
    s.send(&Packet::Publish(publish(
        "devices/alice/x",
        b"yes",
        QoS::AtMostOnce,
        0,
    )))
    .await;
    assert_eq!(&s.next_publish().await.payload[..], b"yes");
}
