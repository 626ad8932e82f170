//! Real JavaScript clients: MQTT.js completing the two-step X-OAUTH2 exchange, and a person in
//! headless Chromium using the login and device verification pages. The scripts are in
//! tests/js; `npm ci` installs their packages and the test command installs Debian's chromium.

use std::process::Command;
use std::time::Duration;

use crate::https;
use crate::oauth::{login, setup, token};
use crate::oauth_flows::query_param;

pub(crate) fn node(args: &[&str]) -> std::process::Output {
    Command::new("node")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .output()
        .expect("node must be installed (and `npm ci` run)")
}

/// A person at the device verification `page` in headless Chromium signs in and presses
/// Approve (`device`) or Deny (`device-deny`); the browser script's output.
pub(crate) async fn person_at_device_page(
    mode: &'static str,
    page: String,
    user: &'static str,
    password: &'static str,
) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        node(&["tests/js/browser_login.mjs", mode, &page, user, password])
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn mqttjs_completes_the_two_step_exchange() {
    let b = setup("");
    let tok = token(&b, "alice", "wonderland", "sasl_auth").await;
    let port = b.tcp.port().to_string();
    let out =
        tokio::task::spawn_blocking(move || node(&["tests/js/mqttjs_two_step.mjs", &port, &tok]))
            .await
            .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
}

#[tokio::test]
async fn a_person_in_chromium_logs_in_for_the_code_flow_and_approves_a_device() {
    let b = setup("");
    // The app's redirect URI: a one-shot HTTP server that records the request it gets.
    let app = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cb_owned = format!(
        "http://127.0.0.1:{}/callback",
        app.local_addr().unwrap().port()
    );
    let cb: &'static str = Box::leak(cb_owned.into_boxed_str());
    let (got_tx, got_rx) = tokio::sync::oneshot::channel::<String>();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut s, _) = app.accept().await.unwrap();
        let mut buf = vec![0u8; 8192];
        let n = s.read(&mut buf).await.unwrap();
        let head = String::from_utf8_lossy(&buf[..n]).to_string();
        let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 15\r\nConnection: close\r\n\r\nback at the app")
            .await;
        let _ = got_tx.send(path);
    });
    assert!(
        b.command(
            &[
                "client",
                "add-public",
                "mobile",
                "Mobile app",
                "--redirect-uri",
                cb
            ],
            ""
        )
        .status
        .success()
    );
    let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
    let base = format!("https://localhost:{}", b.oauth.port());
    let url = format!(
        "{base}/oauth/authorize?{}",
        https::form(&[
            ("response_type", "code"),
            ("client_id", "mobile"),
            ("redirect_uri", cb),
            ("scope", "mqtt"),
            ("state", "abc"),
            ("code_challenge", challenge),
            ("code_challenge_method", "S256"),
        ])
    );
    let shot = b.dir.path().join("login.png").display().to_string();
    let out = tokio::task::spawn_blocking(move || {
        node(&[
            "tests/js/browser_login.mjs",
            "authorize",
            &url,
            cb,
            "alice",
            "wonderland",
            &shot,
        ])
    })
    .await
    .unwrap();
    let landed = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success(),
        "{landed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let requested = tokio::time::timeout(Duration::from_secs(10), got_rx)
        .await
        .unwrap()
        .unwrap();
    assert!(requested.starts_with("/callback?"), "{requested}");
    assert!(landed.starts_with(cb), "{landed}");
    assert_eq!(
        query_param(&landed, "state").as_deref(),
        Some("abc"),
        "{landed}"
    );
    let code = query_param(&landed, "code").unwrap();
    let t = https::post(
        b.oauth,
        &b.cert_path(),
        "/oauth/token",
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", cb),
            ("client_id", "mobile"),
            ("code_verifier", verifier),
        ],
    )
    .await;
    assert_eq!(t.status, 200, "{}", t.body);
    login(
        &b,
        "browser-app",
        t.json()["access_token"].as_str().unwrap(),
    )
    .await;

    // The device flow's verification page.
    assert!(
        b.command(
            &["client", "add-public", "sensor-fw", "Sensor firmware"],
            ""
        )
        .status
        .success()
    );
    let d = https::post(
        b.oauth,
        &b.cert_path(),
        "/oauth/device_authorization",
        &[("client_id", "sensor-fw")],
    )
    .await
    .json();
    let device_code = d["device_code"].as_str().unwrap().to_string();
    let page = d["verification_uri_complete"].as_str().unwrap().to_string();
    let out = person_at_device_page("device", page, "bob", "builder").await;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success() && text.contains("Device approved"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cert = b.cert_path();
    let grant = [
        ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
        ("device_code", device_code.as_str()),
        ("client_id", "sensor-fw"),
    ];
    let poll = || https::post(b.oauth, &cert, "/oauth/token", &grant);
    let mut answer = poll().await;
    for _ in 0..10 {
        if answer.status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        answer = poll().await;
    }
    assert_eq!(answer.status, 200, "{}", answer.body);
    login(
        &b,
        "browser-device",
        answer.json()["access_token"].as_str().unwrap(),
    )
    .await;
}
