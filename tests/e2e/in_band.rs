//! A device whose only network stack is MQTT (docs/in-band.md): the refresh grant inside
//! X-OAUTH2, in CONNECT and by re-authentication; onboarding by RFC 8628 over AUTH packets, a
//! person approving in headless Chromium; the `token-expires-in` User Property; and where
//! refresh tokens are not taken. Clients: MQTT.js (`tests/js/mqttjs_in_band.mjs`), rumqttc and
//! the mqtt5 crate, and the byte-level client for exact packets.

use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{ConnAck as ConnAck5, ConnectReturnCode, Packet as Packet5};
use rumqttc::v5::{ConnectionError, Event, MqttOptions};
use serde_json::Value;
use tessera_broker::codec::{Auth, Packet, Properties, ReasonCode};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

use crate::harness::TestBroker;
use crate::js_clients::person_at_device_page;
use crate::oauth::{CLIENT, SECRET, login, password_grant, setup, x_oauth2};
use crate::raw::Raw;

const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

fn refresh_form(refresh_token: &str) -> String {
    crate::https::form(&[
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token),
        ("client_id", CLIENT),
        ("client_secret", SECRET),
    ])
}

fn device_form(client_id: &str) -> String {
    crate::https::form(&[("grant_type", DEVICE_GRANT), ("client_id", client_id)])
}

/// A fresh pair from the password grant: (access token, refresh token).
async fn pair(b: &TestBroker, user: &str, password: &str) -> (String, String) {
    let r = password_grant(b, user, password, "mqtt", None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    (
        v["access_token"].as_str().unwrap().to_string(),
        v["refresh_token"].as_str().unwrap().to_string(),
    )
}

/// MQTT.js running `mqttjs_in_band.mjs`, its events read as they are printed.
struct MqttJs {
    child: tokio::process::Child,
    events: mpsc::UnboundedReceiver<Value>,
}

impl MqttJs {
    fn start(args: &[&str]) -> MqttJs {
        MqttJs::script("tests/js/mqttjs_in_band.mjs", args)
    }

    /// Any script; a line that is not JSON comes as a string.
    fn script(path: &str, args: &[&str]) -> MqttJs {
        let mut child = tokio::process::Command::new("node")
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .arg(path)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("node must be installed (and `npm ci` run)");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (tx, events) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let v: Value = serde_json::from_str(&line).unwrap_or(Value::String(line));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        MqttJs { child, events }
    }

    /// The next line, whatever it is.
    async fn line(&mut self) -> Option<Value> {
        tokio::time::timeout(Duration::from_secs(60), self.events.recv())
            .await
            .expect("the script printed nothing for 60 s")
    }

    /// The lines until the script exits, and whether it succeeded.
    async fn finish(mut self) -> (Vec<String>, bool) {
        let mut lines = Vec::new();
        while let Some(v) = self.line().await {
            lines.push(v.as_str().map(String::from).unwrap_or(v.to_string()));
        }
        let status = self.child.wait().await.unwrap();
        (lines, status.success())
    }

    /// The first event that is not a poll's answer (an onboarding device's end).
    async fn after_polls(&mut self) -> Value {
        loop {
            let v = tokio::time::timeout(Duration::from_secs(30), self.events.recv())
                .await
                .expect("no end to the polls within 30 s")
                .expect("MQTT.js ended while polling");
            if v["event"] != "challenge" {
                return v;
            }
        }
    }

    /// The next event; it must be `event`.
    async fn next(&mut self, event: &str) -> Value {
        let v = tokio::time::timeout(Duration::from_secs(60), self.events.recv())
            .await
            .unwrap_or_else(|_| panic!("MQTT.js printed nothing for 60 s (waiting for {event})"))
            .unwrap_or_else(|| panic!("MQTT.js ended before {event}"));
        assert_eq!(v["event"], event, "{v}");
        v
    }
}

/// rumqttc's CONNECT with `data` under X-OAUTH2, and the CONNACK (or the refusal's code).
async fn rumqttc_connect(
    b: &TestBroker,
    id: &str,
    data: &str,
) -> Result<ConnAck5, ConnectReturnCode> {
    let mut opts = MqttOptions::new(id, "127.0.0.1", b.tcp.port());
    opts.set_authentication_method(Some("X-OAUTH2".into()));
    opts.set_authentication_data(Some(Bytes::from(data.to_string())));
    let (_client, mut el) = rumqttc::v5::AsyncClient::new(opts, 10);
    loop {
        match tokio::time::timeout(Duration::from_secs(10), el.poll())
            .await
            .expect("rumqttc: no CONNACK")
        {
            Ok(Event::Incoming(Packet5::ConnAck(ack))) => return Ok(ack),
            Ok(_) => {}
            Err(ConnectionError::ConnectionRefused(code)) => return Err(code),
            Err(e) => panic!("rumqttc: {e:?}"),
        }
    }
}

/// Whether the audit log has a token issued over MQTT by `grant_type`.
fn issued_over_mqtt(b: &TestBroker, grant_type: &str) -> bool {
    let grant = format!("grant_type=\"{grant_type}\"");
    b.lines().iter().any(|l| {
        l.contains("event=\"token_issued\"")
            && l.contains("transport=\"mqtt\"")
            && l.contains(&grant)
    })
}

fn json(data: &Option<Bytes>) -> Value {
    serde_json::from_slice(data.as_deref().expect("Authentication Data")).unwrap()
}

fn expires_in<K: ToString, V: ToString>(props: &[(K, V)]) -> u64 {
    props
        .iter()
        .find(|(k, _)| k.to_string() == "token-expires-in")
        .map(|(_, v)| v.to_string().parse().unwrap())
        .expect("User Property token-expires-in")
}

type Answer<'a, T> = std::pin::Pin<Box<dyn Future<Output = mqtt5::Result<T>> + Send + 'a>>;

#[tokio::test]
async fn refresh_in_connect_rotates_the_pair_with_rumqttc_and_mqttjs() {
    let b = setup("");
    let (_access0, rt1) = pair(&b, "alice", "wonderland").await;

    // rumqttc: CONNECT carries the refresh form; CONNACK the new pair (RFC 6749 §5.1 JSON).
    let ack = rumqttc_connect(&b, "rumqttc-refresh", &refresh_form(&rt1))
        .await
        .expect("CONNACK 0x00");
    let props = ack.properties.expect("CONNACK properties");
    let t = json(&props.authentication_data);
    assert_eq!(t["token_type"], "bearer", "{t}");
    assert_eq!(t["scope"], "mqtt", "{t}");
    let a1 = t["access_token"].as_str().unwrap().to_string();
    let rt2 = t["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(rt2, rt1);
    let left = expires_in(&props.user_properties);
    let lifetime = t["expires_in"].as_u64().unwrap();
    assert!(
        left <= lifetime && left + 5 >= lifetime,
        "{left} vs {lifetime}"
    );
    // The new access token logs in on its own.
    login(&b, "with-a1", &a1).await;

    // MQTT.js the same way, with the rotated refresh token.
    let url = format!("mqtt://127.0.0.1:{}", b.tcp.port());
    let mut js = MqttJs::start(&["refresh", &url, &refresh_form(&rt2)]);
    let c = js.next("connack").await;
    assert_eq!(c["code"], 0, "{c}");
    let rt3 = c["data"]["refresh_token"].as_str().unwrap().to_string();
    assert!(c["data"]["access_token"].is_string(), "{c}");
    assert!(
        c["expires_in"].as_str().unwrap().parse::<u64>().is_ok(),
        "{c}"
    );

    // The spent refresh token: refused, with the RFC's error code and never a token...
    let mut js = MqttJs::start(&["refresh", &url, &refresh_form(&rt1)]);
    let r = js.next("refused").await;
    assert_eq!(r["code"], 0x87, "{r}");
    let reason = r["reason"].as_str().unwrap();
    assert!(reason.starts_with("invalid_grant: "), "{reason}");
    assert!(!reason.contains(&rt1), "{reason}");
    // ... and its reuse revoked the whole family: the newest pair is dead too.
    assert_eq!(
        rumqttc_connect(&b, "after-reuse", &refresh_form(&rt3))
            .await
            .unwrap_err(),
        ConnectReturnCode::NotAuthorized
    );
    let (_r, ack) = Raw::connect(b.tcp, x_oauth2("a1-after", None, Some(&a1))).await;
    assert_eq!(ack.reason_code, ReasonCode::NOT_AUTHORIZED);
    // Audited as issued over MQTT.
    assert!(issued_over_mqtt(&b, "refresh_token"));
}

#[tokio::test]
async fn a_session_refreshes_by_reauthentication_and_outlives_its_first_token() {
    // Access tokens live 4 s: the session must run past the first one's end.
    let b = setup("oauth:\n  bind: 127.0.0.1:0\n  oauth_expire: 4\n");
    let url = format!("mqtt://127.0.0.1:{}", b.tcp.port());

    // MQTT.js: logs in with A, re-authenticates with A's refresh token 2 s later.
    let (a, ra) = pair(&b, "alice", "wonderland").await;
    let mut js = MqttJs::start(&["reauth", &url, &a, &refresh_form(&ra), "2000"]);
    let c = js.next("connack").await;
    assert_eq!(c["code"], 0, "{c}");
    let done = js.next("auth").await;
    assert_eq!(done["code"], 0, "{done}");
    assert!(done["data"]["refresh_token"].is_string(), "{done}");
    let left: u64 = done["expires_in"].as_str().unwrap().parse().unwrap();
    assert!((3..=4).contains(&left), "{done}");
    // The session ends when the refreshed token does: 0xA0, after the first one's end.
    let d = js.next("disconnect").await;
    assert_eq!(d["code"], 0xA0, "{d}");
    let at = d["at_ms"].as_u64().unwrap();
    assert!(
        at > 4_500,
        "cut {at} ms after CONNACK: on the first token's expiry"
    );
    let _ = js.child.wait().await;

    // The mqtt5 crate: its AuthHandler gives the data of CONNECT (the token), then of the
    // re-authentication (the refresh form).
    struct Refresh(std::sync::Mutex<Vec<String>>);
    impl mqtt5::client::AuthHandler for Refresh {
        fn handle_challenge<'a>(
            &'a self,
            _m: &'a str,
            _d: Option<&'a [u8]>,
        ) -> Answer<'a, mqtt5::client::AuthResponse> {
            Box::pin(async { Ok(mqtt5::client::AuthResponse::Abort("no challenge".into())) })
        }
        fn initial_response<'a>(&'a self, _m: &'a str) -> Answer<'a, Option<Vec<u8>>> {
            let next = self.0.lock().unwrap().remove(0).into_bytes();
            Box::pin(async move { Ok(Some(next)) })
        }
    }
    let (c_token, rc) = pair(&b, "alice", "wonderland").await;
    let connected = tokio::time::Instant::now();
    let client = mqtt5::MqttClient::new("m5-refresh");
    let answers = vec![c_token, refresh_form(&rc)];
    client
        .set_auth_handler(Refresh(std::sync::Mutex::new(answers)))
        .await;
    let opts = mqtt5::ConnectOptions::new("m5-refresh")
        .with_authentication_method("X-OAUTH2")
        .with_automatic_reconnect(false);
    client
        .connect_with_options(&format!("mqtt://{}", b.tcp), opts)
        .await
        .expect("mqtt5 logs in with the token");
    tokio::time::sleep(Duration::from_secs(2)).await;
    client.reauthenticate().await.expect("re-authentication");
    tokio::time::sleep_until(connected + Duration::from_millis(4_800)).await;
    assert!(client.is_connected().await, "cut at the first token's end");
    // The refresh token was spent by the re-authentication.
    assert_eq!(
        rumqttc_connect(&b, "spent", &refresh_form(&rc))
            .await
            .unwrap_err(),
        ConnectReturnCode::NotAuthorized
    );

    // Another user's refresh token at re-authentication: DISCONNECT 0x87, and Bob's refresh
    // token is not spent by it.
    let (a2, _) = pair(&b, "alice", "wonderland").await;
    let (_, bob_rt) = pair(&b, "bob", "builder").await;
    let mut s = login(&b, "alice-reauth", &a2).await;
    s.send(&reauth(&refresh_form(&bob_rt))).await;
    s.expect_disconnect(ReasonCode::NOT_AUTHORIZED).await;
    assert!(
        rumqttc_connect(&b, "bob-later", &refresh_form(&bob_rt))
            .await
            .is_ok()
    );
}

fn reauth(data: &str) -> Packet {
    Packet::Auth(Auth {
        reason_code: ReasonCode::REAUTHENTICATE,
        properties: Properties {
            authentication_method: Some("X-OAUTH2".into()),
            authentication_data: Some(Bytes::from(data.to_string())),
            ..Default::default()
        },
    })
}

#[tokio::test]
async fn every_token_login_says_the_seconds_left() {
    let b = setup("");
    let r = password_grant(&b, "alice", "wonderland", "mqtt", Some("120")).await;
    let token = r.json()["access_token"].as_str().unwrap().to_string();
    let (mut s, ack) = Raw::connect(b.tcp, x_oauth2("clockless", None, Some(&token))).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    let left = expires_in(&ack.properties.user_properties);
    assert!((115..=120).contains(&left), "{left}");
    let other = password_grant(&b, "alice", "wonderland", "mqtt", Some("60")).await;
    let other = other.json()["access_token"].as_str().unwrap().to_string();
    s.send(&reauth(&other)).await;
    let Some(Packet::Auth(done)) = s.recv().await else {
        panic!("expected AUTH 0x00")
    };
    assert_eq!(done.reason_code, ReasonCode::SUCCESS);
    let left = expires_in(&done.properties.user_properties);
    assert!((55..=60).contains(&left), "{left}");
    // A login without a token (anonymous) has no deadline to tell.
    let b = TestBroker::start();
    let (_s, ack) = Raw::connect(b.tcp, crate::raw::connect_v5("anon")).await;
    assert!(
        !ack.properties
            .user_properties
            .iter()
            .any(|(k, _)| k.to_string() == "token-expires-in")
    );
}

#[tokio::test]
async fn a_device_onboards_over_mqtt_approved_in_chromium_or_denied() {
    let b = setup("");
    let out = b.command(&["client", "add-public", "tv", "Living-room TV"], "");
    assert!(out.status.success(), "{out:?}");
    let url = format!("mqtt://127.0.0.1:{}", b.tcp.port());

    let mut device = MqttJs::start(&["onboard", &url, &device_form("tv")]);
    let c = device.next("challenge").await;
    let d = &c["data"];
    let user_code = d["user_code"].as_str().unwrap();
    assert_eq!(d["expires_in"], 600, "{d}");
    assert_eq!(d["interval"], 2, "{d}");
    assert!(
        d.get("device_code").is_none(),
        "the device code stays with the connection: {d}"
    );
    let page = d["verification_uri_complete"].as_str().unwrap().to_string();
    assert!(
        page.starts_with(d["verification_uri"].as_str().unwrap())
            && page.ends_with(&format!("?user_code={user_code}")),
        "{d}"
    );
    // The operator sees it waiting.
    let out = b.command(&["--json", "session", "list"], "");
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
    let waiting = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["state"].as_str().unwrap_or("").starts_with("onboarding"))
        .unwrap_or_else(|| panic!("{rows}"));
    assert!(
        waiting["state"].as_str().unwrap().contains(user_code),
        "{waiting}"
    );
    // Polls before anyone approves.
    let pending = device.next("challenge").await;
    assert_eq!(
        pending["data"]["error"], "authorization_pending",
        "{pending}"
    );

    // A person opens the page in a browser and approves as Bob.
    let approved = person_at_device_page("device", page, "bob", "builder").await;
    let text = String::from_utf8_lossy(&approved.stdout).to_string();
    assert!(
        approved.status.success() && text.contains("Device approved"),
        "{text}{}",
        String::from_utf8_lossy(&approved.stderr)
    );
    let connack = device.after_polls().await;
    assert_eq!(connack["event"], "connack", "{connack}");
    assert_eq!(connack["code"], 0, "{connack}");
    let token = connack["data"]["access_token"].as_str().unwrap();
    assert!(connack["data"]["refresh_token"].is_string(), "{connack}");
    // The token is Bob's and logs in on its own; the device is no longer listed as waiting.
    let (_s, ack) = Raw::connect(b.tcp, x_oauth2("tv-again", Some("bob"), Some(token))).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    let out = b.command(&["--json", "session", "list"], "");
    assert!(!String::from_utf8_lossy(&out.stdout).contains(user_code));
    assert!(issued_over_mqtt(&b, "device_code"));

    // Another device: the person denies it; CONNACK 0x87 access_denied.
    let mut device = MqttJs::start(&["onboard", &url, &device_form("tv")]);
    let c = device.next("challenge").await;
    let page = c["data"]["verification_uri_complete"]
        .as_str()
        .unwrap()
        .to_string();
    let denied = person_at_device_page("device-deny", page, "bob", "builder").await;
    assert!(
        denied.status.success(),
        "{}",
        String::from_utf8_lossy(&denied.stderr)
    );
    let refused = device.after_polls().await;
    assert_eq!(refused["event"], "refused", "{refused}");
    assert_eq!(refused["code"], 0x87, "{refused}");
    assert!(
        refused["reason"]
            .as_str()
            .unwrap()
            .starts_with("access_denied"),
        "{refused}"
    );
}

#[tokio::test]
async fn onboarding_devices_that_poll_too_fast_or_pile_up_are_held_back() {
    let b = setup("");
    let out = b.command(&["client", "add-public", "tv", "Living-room TV"], "");
    assert!(out.status.success(), "{out:?}");
    let url = format!("mqtt://127.0.0.1:{}", b.tcp.port());
    // Polls without waiting `interval`: the second poll is told to slow down.
    let mut device = MqttJs::start(&["onboard", &url, &device_form("tv"), "fast"]);
    device.next("challenge").await;
    let first = device.next("challenge").await;
    assert_eq!(first["data"]["error"], "authorization_pending", "{first}");
    let second = device.next("challenge").await;
    assert_eq!(second["data"]["error"], "slow_down", "{second}");
    // Its process is killed; the broker frees its slot when it sees the connection close,
    // which the operator's session list shows.
    drop(device);
    crate::cluster_harness::connections_become(&b, 0).await;

    // At most 4 pending from one address: the fifth gets CONNACK 0x97.
    let mut waiting = Vec::new();
    for i in 0..4 {
        let mut raw = Raw::open(b.tcp).await;
        let c = x_oauth2(&format!("pile-{i}"), None, Some(&device_form("tv")));
        raw.send(&Packet::Connect(Box::new(c))).await;
        match raw.recv().await {
            Some(Packet::Auth(a)) => assert_eq!(a.reason_code, ReasonCode::CONTINUE_AUTHENTICATION),
            other => panic!("{other:?}"),
        }
        waiting.push(raw);
    }
    let (_r, ack) = Raw::connect(b.tcp, x_oauth2("pile-5", None, Some(&device_form("tv")))).await;
    assert_eq!(ack.reason_code, ReasonCode::QUOTA_EXCEEDED, "{ack:?}");
    // One leaves: there is room again.
    drop(waiting.pop());
    let mut again = None;
    for _ in 0..50 {
        let mut raw = Raw::open(b.tcp).await;
        let c = x_oauth2("pile-6", None, Some(&device_form("tv")));
        raw.send(&Packet::Connect(Box::new(c))).await;
        if let Some(Packet::Auth(_)) = raw.recv().await {
            again = Some(raw);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        again.is_some(),
        "the slot of a closed connection was not released"
    );
}

#[tokio::test]
async fn a_forged_refresh_token_is_refused_and_never_logged() {
    let b = setup("");
    let forged = "Zm9yZ2VkLXJlZnJlc2gtdG9rZW4tNDI0MjQy";
    let (_r, ack) =
        Raw::connect(b.tcp, x_oauth2("forger", None, Some(&refresh_form(forged)))).await;
    assert_eq!(ack.reason_code, ReasonCode::NOT_AUTHORIZED);
    let reason = ack.properties.reason_string.clone().unwrap().to_string();
    assert!(reason.starts_with("invalid_grant: "), "{reason}");
    assert!(!reason.contains(forged));
    // A form the broker cannot read: invalid_request, the parameter named, not its value.
    let twice = format!("grant_type=refresh_token&refresh_token={forged}&refresh_token={forged}");
    let (_r, ack) = Raw::connect(b.tcp, x_oauth2("twice", None, Some(&twice))).await;
    assert_eq!(ack.reason_code, ReasonCode::NOT_AUTHORIZED);
    let reason = ack.properties.reason_string.clone().unwrap().to_string();
    assert!(
        reason.starts_with("invalid_request: refresh_token"),
        "{reason}"
    );
    assert!(b.wait_log("forger", Duration::from_secs(5)));
    assert!(
        !b.log_text().contains(forged),
        "the forged token is in the log"
    );
    assert!(
        !b.log_text().contains(SECRET),
        "the client secret is in the log"
    );
}

#[tokio::test]
async fn a_plain_listener_on_the_wildcard_address_refuses_refresh_forms() {
    // A second plain listener, reachable from the network: the last tcp one is `b.tcp`.
    let b = setup("  - type: tcp\n    bind: 0.0.0.0:0\n");
    assert!(b.tcp.ip().is_unspecified(), "{}", b.tcp);
    let (_, rt) = pair(&b, "alice", "wonderland").await;
    let port = b.tcp.port();
    let (_r, ack) = Raw::connect(
        ([127, 0, 0, 1], port).into(),
        x_oauth2("over-plain", None, Some(&refresh_form(&rt))),
    )
    .await;
    assert_eq!(ack.reason_code, ReasonCode::NOT_AUTHORIZED);
    let reason = ack.properties.reason_string.unwrap().to_string();
    assert!(reason.contains("only over TLS"), "{reason}");
    // The refresh token was not spent: it still refreshes.
    let ok = http_refresh(&b, &rt).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
}

async fn http_refresh(b: &TestBroker, rt: &str) -> crate::https::Response {
    crate::https::post(
        b.oauth,
        &b.cert_path(),
        "/oauth/token",
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", rt),
            ("client_id", CLIENT),
            ("client_secret", SECRET),
        ],
    )
    .await
}

/// The device of docs/in-band.md (`examples/device.mjs`) through its life: first boot
/// (onboarding, a person approving in Chromium), steady state (its token), back after its
/// token ran out (the refresh token in CONNECT), and after its grant was revoked (onboarding
/// again). It never speaks HTTPS.
#[tokio::test]
async fn the_example_device_lives_through_boot_steady_state_and_months_offline() {
    let b = setup("oauth:\n  bind: 127.0.0.1:0\n  oauth_expire: 3\n");
    let out = b.command(&["client", "add-public", "thermostat", "Thermostat"], "");
    assert!(out.status.success(), "{out:?}");
    let url = format!("mqtt://127.0.0.1:{}", b.tcp.port());
    let state = b.dir.path().join("device-state.json");
    let state_arg = state.display().to_string();
    let run = || {
        MqttJs::script(
            "examples/device.mjs",
            &[&url, "thermostat", &state_arg, "--once"],
        )
    };

    // First boot: it shows where to approve it.
    let mut first = run();
    let shown = first.line().await.unwrap();
    let shown = shown.as_str().unwrap().to_string();
    let page = shown
        .strip_prefix("onboarding: open ")
        .and_then(|s| s.split(' ').next())
        .unwrap_or_else(|| panic!("{shown}"))
        .to_string();
    let approved = person_at_device_page("device", page, "alice", "wonderland").await;
    assert!(
        approved.status.success(),
        "{}",
        String::from_utf8_lossy(&approved.stderr)
    );
    let (lines, ok) = first.finish().await;
    assert!(
        ok && lines.contains(&"connected (onboarding)".to_string()),
        "{lines:?}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&state).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let pair: Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();

    // Steady state: its access token.
    let (lines, ok) = run().finish().await;
    assert!(ok && lines == ["connected (token)"], "{lines:?}");

    // Back after its token ran out: the refresh token, in CONNECT, gives it a new pair.
    // (The event awaited is the token's expiry: a time.)
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let (lines, ok) = run().finish().await;
    assert!(ok, "{lines:?}");
    assert_eq!(
        lines.last().map(String::as_str),
        Some("connected (refresh)"),
        "{lines:?}"
    );
    assert!(lines[0].starts_with("refused (token)"), "{lines:?}");
    let rotated: Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert_ne!(rotated["refresh_token"], pair["refresh_token"]);

    // Its grant revoked while it was away: both tokens refused, it onboards again.
    let out = b.command(&["token", "revoke", "--user", "alice"], "");
    assert!(out.status.success(), "{out:?}");
    let mut again = run();
    let mut seen = Vec::new();
    while let Some(v) = again.line().await {
        let line = v.as_str().unwrap_or("").to_string();
        seen.push(line.clone());
        if line.starts_with("onboarding: open ") {
            break;
        }
    }
    assert!(seen[0].starts_with("refused (token)"), "{seen:?}");
    assert!(
        seen[1].starts_with("refused (refresh): invalid_grant"),
        "{seen:?}"
    );
    assert!(seen[2].starts_with("onboarding: open "), "{seen:?}");
    assert!(!state.exists(), "the dead pair is forgotten");
}
