//! The token service end to end, over MQTT: tokens from the HTTPS endpoint and the operator
//! commands, used with X-OAUTH2 (one and two steps, re-authentication) and as the MQTT password,
//! cut at expiry and on revocation; scopes narrowing rights; refresh rotation. The browser and
//! device flows, and the endpoint's other answers, are in `oauth_flows.rs`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::v5::MqttOptions;
use rumqttc::v5::mqttbytes::QoS as QoS5;
use serde_json::Value;
use tessera_broker::codec::{Packet, Properties, QoS, ReasonCode, SubscriptionOptions, Will};

use crate::clients::{mosquitto_pub, rumqttc_v5};
use crate::harness::TestBroker;
use crate::https;
use crate::raw::{Raw, connect_v5};

pub const CLIENT: &str = "client-id-Iegh7ooK";
pub const SECRET: &str = "3dc8b0885b3043c0e38aa2e1dc64";

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

pub async fn password_grant(
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

pub fn cli_token(b: &TestBroker, user: &str, ttl: &str, scopes: &str) -> String {
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

pub fn x_oauth2(
    id: &str,
    user: Option<&str>,
    token: Option<&str>,
) -> tessera_broker::codec::Connect {
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
    // The token lives exactly 2 s from its issue, which happens between these two instants
    // (whole-second expiries had cut it up to 1 s early).
    let asked = Instant::now();
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
    let since_asked = asked.elapsed();
    assert!(
        since_asked >= Duration::from_millis(1995),
        "cut {since_asked:?} after the token was asked for"
    );
    let t = start.elapsed();
    assert!(t < Duration::from_secs(4), "{t:?}");
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
async fn ordered_deny_rules_say_everything_but() {
    let b = setup(concat!(
        "access_publish:\n  - deny: \"readonly/#\"\n  - allow: \"#\"\n",
        "access_subscribe:\n  - deny: \"secret/#\"\n  - deny: \"#\"\n    users: [bob]\n",
        "  - allow: \"#\"\n",
    ));
    let alice = cli_token(&b, "alice", "600", "mqtt");
    let o = SubscriptionOptions {
        qos: QoS::AtLeastOnce,
        ..Default::default()
    };
    let mut s = login(&b, "reader", &alice).await;
    assert_eq!(
        s.subscribe_with("secret/plans", o, None).await,
        vec![ReasonCode::NOT_AUTHORIZED]
    );
    // `#` is granted, but what `secret/#` denies never arrives through it.
    assert_eq!(
        s.subscribe_with("#", o, None).await,
        vec![ReasonCode::GRANTED_QOS_1]
    );
    let mut p = login(&b, "writer", &alice).await;
    p.publish("readonly/x", b"no", QoS::AtLeastOnce, 1).await;
    assert!(
        matches!(p.recv().await, Some(Packet::PubAck(a)) if a.reason_code == ReasonCode::NOT_AUTHORIZED)
    );
    p.publish("secret/plans", b"hidden", QoS::AtLeastOnce, 2)
        .await;
    assert!(matches!(p.recv().await, Some(Packet::PubAck(a)) if !a.reason_code.is_error()));
    p.publish("public/news", b"shown", QoS::AtLeastOnce, 3)
        .await;
    assert!(matches!(p.recv().await, Some(Packet::PubAck(a)) if !a.reason_code.is_error()));
    let got = s.next_publish().await;
    assert_eq!(
        (&got.topic[..], &got.payload[..]),
        ("public/news", &b"shown"[..])
    );
    s.expect_silence(Duration::from_millis(300)).await;
    // A rule for one user only.
    let bob = cli_token(&b, "bob", "600", "mqtt");
    let mut bs = login(&b, "bob-reader", &bob).await;
    assert_eq!(
        bs.subscribe_with("public/#", o, None).await,
        vec![ReasonCode::NOT_AUTHORIZED]
    );
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
