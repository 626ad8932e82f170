//! What an operator does to a running broker: `tessera session list / kick`, the console in a
//! real browser (headless Chromium), and the audit log those actions leave.

use std::time::Duration;

use serde_json::Value;
use tessera_broker::codec::{Packet, QoS, ReasonCode};

use crate::harness::TestBroker;
use crate::https;
use crate::js_clients::node;
use crate::oauth::{CLIENT, SECRET, cli_token, login, password_grant, setup, x_oauth2};
use crate::raw::Raw;

/// Runs tests/js/console.mjs (headless Chromium) with `args`; its output, once it succeeded.
async fn console_js(args: &[&str]) -> String {
    let mut all = vec!["tests/js/console.mjs".to_string()];
    all.extend(args.iter().map(|a| a.to_string()));
    let out = tokio::task::spawn_blocking(move || {
        node(&all.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

fn json_out(out: &std::process::Output) -> Value {
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn session_list_shows_connections_and_kick_ends_one_with_0x98() {
    let b = setup("");
    let tok = cli_token(&b, "bob", "3600", "mqtt");
    let _sensor = login(&b, "sensor-1", &tok).await;
    let mut other = login(&b, "sensor-2", &tok).await;

    let all = json_out(&b.command(&["--json", "session", "list"], ""));
    let rows = all.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{all}");
    let s1 = rows.iter().find(|r| r["client_id"] == "sensor-1").unwrap();
    assert_eq!(s1["user"], "bob");
    assert_eq!(s1["transport"], "tcp");
    assert_eq!(s1["protocol"], "5.0");
    assert!(s1["address"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(s1["connected_at"].as_u64().unwrap() > 1_700_000_000);
    // A page at a time, in client id order, and how to get the next.
    let first = b.command(&["--json", "session", "list", "--limit", "1"], "");
    assert_eq!(json_out(&first)[0]["client_id"], "sensor-1");
    assert_eq!(json_out(&first).as_array().unwrap().len(), 1);
    let hint = String::from_utf8_lossy(&first.stderr);
    assert!(hint.contains("--after sensor-1"), "{hint}");
    let next = [
        "--json", "session", "list", "--limit", "1", "--after", "sensor-1",
    ];
    let second = json_out(&b.command(&next, ""));
    assert_eq!(second.as_array().unwrap().len(), 1, "{second}");
    assert_eq!(second[0]["client_id"], "sensor-2");
    let last = ["--json", "session", "list", "--after", "sensor-2"];
    assert_eq!(json_out(&b.command(&last, "")), Value::Array(vec![]));
    let none = json_out(&b.command(&["--json", "session", "list", "--user", "alice"], ""));
    assert_eq!(none, Value::Array(vec![]));
    let human = b.command(&["session", "list"], "");
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(
        text.contains("CLIENT_ID") && text.contains("sensor-2"),
        "{text}"
    );

    let out = b.command(&["session", "kick", "sensor-2"], "");
    assert!(out.status.success(), "{out:?}");
    other
        .expect_disconnect(ReasonCode::ADMINISTRATIVE_ACTION)
        .await;
    let unknown = b.command(&["session", "kick", "nobody"], "");
    assert_eq!(unknown.status.code(), Some(3), "{unknown:?}");
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("nobody"));
    let left = json_out(&b.command(&["--json", "session", "list"], ""));
    assert_eq!(left.as_array().unwrap().len(), 1, "{left}");
}

#[tokio::test]
async fn session_commands_need_the_running_server() {
    let b = setup("");
    let dir = b.stop();
    let config = dir.path().join("tessera.yml");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .arg("--config")
        .arg(&config)
        .args(["session", "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("tessera serve"));
}

#[tokio::test]
async fn console_signs_in_an_operator_who_revokes_a_device_token() {
    let b = setup("");
    let out = b.command(&["user", "add", "root", "--admin"], "r00t-pass\n");
    assert!(out.status.success(), "{out:?}");
    let tok = cli_token(&b, "bob", "3600", "mqtt");
    let mut device = login(&b, "sensor-1", &tok).await;
    let other = cli_token(&b, "alice", "3600", "mqtt");
    let _markup = login(&b, "<img src=x onerror=alert(1)>", &other).await;

    let base = format!("https://localhost:{}", b.oauth.port());
    let shot = std::env::var("CONSOLE_SCREENSHOT")
        .unwrap_or_else(|_| b.dir.path().join("console.png").display().to_string());
    let text = console_js(&["revoke", &base, "root", "r00t-pass", "sensor-1", &shot]).await;
    assert!(text.contains("1 token(s) revoked"), "{text}");
    // The device's session ends at once, and its token no longer logs in.
    device.expect_disconnect(ReasonCode::NOT_AUTHORIZED).await;
    let (_, ack) = Raw::connect(b.tcp, x_oauth2("sensor-1", None, Some(&tok))).await;
    assert_eq!(ack.reason_code, ReasonCode::NOT_AUTHORIZED);
    assert!(b.wait_log(
        "event=\"console_sign_in\" user=\"root\" outcome=\"accepted\"",
        Duration::from_secs(5)
    ));
    assert!(b.wait_log(
        "actor=\"console:root\" action=\"token_revoke\"",
        Duration::from_secs(5)
    ));
}

#[tokio::test]
async fn console_deletes_a_retained_message_for_good() {
    let b = setup("");
    let out = b.command(&["user", "add", "root", "--admin"], "r00t-pass\n");
    assert!(out.status.success(), "{out:?}");
    let tok = cli_token(&b, "bob", "3600", "mqtt");
    let mut device = login(&b, "sensor-1", &tok).await;
    let mut config = crate::raw::publish("dev/config", b"{\"rate\":5}", QoS::AtLeastOnce, 1);
    config.retain = true;
    device.send(&Packet::Publish(config)).await;
    assert!(matches!(device.recv().await, Some(Packet::PubAck(_))));

    let base = format!("https://localhost:{}", b.oauth.port());
    let text = console_js(&["retained", &base, "root", "r00t-pass", "dev/config"]).await;
    assert!(
        text.contains("retained message of dev/config deleted"),
        "{text}"
    );
    // Gone now, and after a restart (the deletion was journaled).
    let mut sub = login(&b, "checker", &tok).await;
    sub.subscribe("dev/#", QoS::AtMostOnce).await;
    sub.expect_silence(Duration::from_millis(300)).await;
    drop((sub, device));
    let b = TestBroker::start_in(b.stop(), "");
    let mut sub = login(&b, "checker", &tok).await;
    sub.subscribe("dev/#", QoS::AtMostOnce).await;
    sub.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn console_refuses_a_user_who_is_not_an_operator() {
    let b = setup("");
    let base = format!("https://localhost:{}", b.oauth.port());
    let text = console_js(&["refused", &base, "bob", "builder"]).await;
    assert!(text.contains("Only operators"), "{text}");
    assert!(!text.contains("Connected clients"), "{text}");
    // Nor can the scope be had another way: the password grant refuses it to bob.
    let r = password_grant(&b, "bob", "builder", "tessera:console", None).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["error"], "invalid_scope");
    // And a console page without a session sends the browser to sign in.
    let page = https::get(b.oauth, &b.cert_path(), "/console/users").await;
    assert_eq!(page.status, 303);
    assert_eq!(page.header("location"), Some("/console/login"));
    let login = https::get(b.oauth, &b.cert_path(), "/console/login").await;
    assert_eq!(login.status, 303);
    assert!(
        login
            .header("location")
            .unwrap()
            .contains("code_challenge_method=S256")
    );
    assert!(
        login
            .header("content-security-policy")
            .unwrap()
            .contains("default-src 'none'")
    );
}

#[tokio::test]
async fn audit_log_records_each_action_and_no_secret() {
    let b = setup("");
    // setup: two user_add and one client_add through the admin socket.
    let r = password_grant(&b, "alice", "wonderland", "mqtt", None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let access = r.json()["access_token"].as_str().unwrap().to_string();
    let refresh = r.json()["refresh_token"].as_str().unwrap().to_string();
    let refreshed = https::post(
        b.oauth,
        &b.cert_path(),
        "/oauth/token",
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh),
            ("client_id", CLIENT),
            ("client_secret", SECRET),
        ],
    )
    .await;
    assert_eq!(refreshed.status, 200, "{}", refreshed.body);
    let second = refreshed.json()["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let bad = password_grant(&b, "alice", "guess", "mqtt", None).await;
    assert_eq!(bad.status, 400);
    let mut ok = login(&b, "audited", &second).await;
    let (_, ack) = Raw::connect(b.tcp, x_oauth2("forger", None, Some("forged-token"))).await;
    assert_eq!(ack.reason_code, ReasonCode::NOT_AUTHORIZED);
    let issued = cli_token(&b, "bob", "60", "mqtt");
    assert!(
        b.command(&["session", "kick", "audited"], "")
            .status
            .success()
    );
    ok.expect_disconnect(ReasonCode::ADMINISTRATIVE_ACTION)
        .await;
    assert!(
        b.command(&["token", "revoke", &issued], "")
            .status
            .success()
    );
    assert!(
        b.command(&["client", "remove", CLIENT], "")
            .status
            .success()
    );
    assert!(b.command(&["user", "del", "bob"], "").status.success());
    // The last action's event closes the list.
    assert!(b.wait_log("action=\"user_del\"", Duration::from_secs(5)));

    let audit: Vec<String> = b
        .lines()
        .into_iter()
        .filter(|l| l.contains("tessera::audit"))
        .collect();
    let has = |needles: &[&str]| audit.iter().any(|l| needles.iter().all(|n| l.contains(n)));
    for expected in [
        &[
            "event=\"admin_action\"",
            "action=\"user_add\"",
            "subject=\"alice\"",
            "actor=\"cli\"",
        ][..],
        &["action=\"client_add\"", &format!("subject=\"{CLIENT}\"")],
        &[
            "event=\"token_issued\"",
            "grant_type=\"password\"",
            "user=\"alice\"",
        ],
        &["event=\"token_issued\"", "grant_type=\"refresh_token\""],
        &[
            "event=\"token_issued\"",
            "grant_type=\"operator\"",
            "user=\"bob\"",
        ],
        &["event=\"http_login_refused\"", "user=\"alice\""],
        &[
            "event=\"mqtt_login\"",
            "outcome=\"accepted\"",
            "client_id=\"audited\"",
        ],
        &[
            "event=\"mqtt_login\"",
            "outcome=\"refused\"",
            "reason_code=\"0x87\"",
        ],
        &[
            "action=\"session_kick\"",
            "subject=\"audited\"",
            "outcome=\"ok\"",
        ],
        &["event=\"tokens_revoked\"", "what=\"token\""],
        &["event=\"tokens_revoked\"", "what=\"client\""],
        &["action=\"user_del\"", "subject=\"bob\""],
    ] {
        assert!(
            has(expected),
            "no audit event with {expected:?} in:\n{}",
            audit.join("\n")
        );
    }
    for secret in [
        "wonderland",
        "builder",
        "guess",
        SECRET,
        &access,
        &refresh,
        &second,
        &issued,
        "forged-token",
    ] {
        let all = b.log_text();
        assert!(!all.contains(secret), "a secret reached the log: {secret}");
    }
    // A client registered without --secret gets one generated: shown to the operator, not logged.
    let out = b.command(
        &["--json", "client", "add-password", "gen-1", "Generated"],
        "",
    );
    let generated = json_out(&out)["client_secret"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(b.wait_log("subject=\"gen-1\"", Duration::from_secs(5)));
    assert!(!b.log_text().contains(&generated));
}

/// The console lists tokens a page at a time: 100 rows, then a Next link to the rest, no row
/// on both pages.
#[tokio::test]
async fn console_lists_tokens_a_page_at_a_time() {
    let b = setup("");
    let out = b.command(&["user", "add", "root", "--admin"], "r00t-pass\n");
    assert!(out.status.success(), "{out:?}");
    for _ in 0..105 {
        cli_token(&b, "bob", "3600", "mqtt");
    }
    let base = format!("https://localhost:{}", b.oauth.port());
    let text = console_js(&[
        "pages",
        &base,
        "root",
        "r00t-pass",
        "/console/tokens?user=bob",
    ])
    .await;
    assert!(text.contains("first 100, next 5, both 0"), "{text}");
}

#[tokio::test]
async fn console_lists_retained_messages_a_page_at_a_time() {
    let b = setup("");
    let out = b.command(&["user", "add", "root", "--admin"], "r00t-pass\n");
    assert!(out.status.success(), "{out:?}");
    let tok = cli_token(&b, "bob", "3600", "mqtt");
    let mut device = login(&b, "sensor-1", &tok).await;
    // 105 under the prefix, and one beside it that no page of the prefix shows.
    for i in 0..=105u16 {
        let topic = if i < 105 {
            format!("dev/{i:03}/config")
        } else {
            "other/config".into()
        };
        let mut config = crate::raw::publish(&topic, b"{}", QoS::AtLeastOnce, i + 1);
        config.retain = true;
        device.send(&Packet::Publish(config)).await;
        assert!(matches!(device.recv().await, Some(Packet::PubAck(_))));
    }
    let base = format!("https://localhost:{}", b.oauth.port());
    let text = console_js(&[
        "pages",
        &base,
        "root",
        "r00t-pass",
        "/console/retained?prefix=dev/",
    ])
    .await;
    assert!(text.contains("first 100, next 5, both 0"), "{text}");
}
