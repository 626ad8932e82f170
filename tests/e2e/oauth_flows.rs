//! The OAuth flows end to end: authorization code with PKCE, implicit (fragment and ejabberd's
//! query), device flow, client credentials, revocation and introspection endpoints, metadata;
//! the login backoff; secrets never stored or logged in clear; a token answered is durable; the
//! operator commands with and without a running server.

use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tessera_broker::codec::{Packet, QoS, ReasonCode};

use crate::harness::TestBroker;
use crate::https;
use crate::oauth::{CLIENT, SECRET, cli_token, login, password_grant, setup, token};
use crate::raw::{Raw, connect_v5, publish};

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
    let t = exchange(code.clone(), verifier).await;
    assert_eq!(t.status, 200, "{}", t.body);
    let tok = t.json()["access_token"].as_str().unwrap().to_string();
    let mut device = login(&b, "from-code", &tok).await;
    // The same code again: refused, and what it gave is revoked (RFC 6749 §4.1.2), down to the
    // session that token opened.
    let again = exchange(code, verifier).await;
    assert_eq!(again.json()["error"], "invalid_grant");
    device.expect_disconnect(ReasonCode::NOT_AUTHORIZED).await;
    let (_r, ack) = Raw::connect(b.tcp, crate::oauth::x_oauth2("reuse", None, Some(&tok))).await;
    assert_eq!(ack.reason_code, ReasonCode::NOT_AUTHORIZED);

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
async fn mqtt_and_http_failures_share_one_budget_per_address() {
    // 5 failures allowed per address: 3 over MQTT and 2 over HTTPS (for another user, so no
    // user key is spent by alice) use it up, and both sides then make alice's good login wait.
    let b = setup("");
    let good = cli_token(&b, "alice", "600", "mqtt");
    for i in 0..3 {
        let (_r, ack) = Raw::connect(
            b.tcp,
            crate::oauth::x_oauth2(&format!("g{i}"), None, Some("guess")),
        )
        .await;
        assert_eq!(ack.reason_code, ReasonCode::NOT_AUTHORIZED);
    }
    for _ in 0..2 {
        let r = password_grant(&b, "bob", "guess", "mqtt", None).await;
        assert_eq!(r.status, 400, "{}", r.body);
    }
    let (_r, ack) = Raw::connect(
        b.tcp,
        crate::oauth::x_oauth2("alice-dev", None, Some(&good)),
    )
    .await;
    assert_eq!(ack.reason_code, ReasonCode::CONNECTION_RATE_EXCEEDED);
    let r = password_grant(&b, "alice", "wonderland", "mqtt", None).await;
    assert_eq!(r.status, 429, "{}", r.body);
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

/// `token list` and `user list` come a page at a time: `--limit`, then `--after` the last one
/// shown, until a page is not full; the pages hold every entry once.
#[tokio::test]
async fn token_and_user_lists_come_a_page_at_a_time() {
    let b = setup("");
    for u in ["carol", "dave"] {
        assert!(b.command(&["user", "add", u], "pw\n").status.success());
    }
    for i in 0..5 {
        cli_token(&b, if i % 2 == 0 { "alice" } else { "bob" }, "600", "mqtt");
    }
    let list = |args: &[&str]| -> (Vec<Value>, String) {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = b.command(&all, "");
        assert!(out.status.success(), "{out:?}");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        (
            v.as_array().unwrap().clone(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let ids = |v: &[Value], key: &str| -> Vec<String> {
        v.iter()
            .map(|t| t[key].as_str().unwrap().to_string())
            .collect()
    };
    let (everything, _) = list(&["token", "list", "--limit", "0"]);
    assert_eq!(everything.len(), 5);
    let mut paged = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut args = vec!["token", "list", "--limit", "2"];
        if let Some(a) = &after {
            args.extend(["--after", a.as_str()]);
        }
        let (page, notice) = list(&args);
        paged.extend(ids(&page, "id"));
        if page.len() < 2 {
            assert!(notice.is_empty(), "{notice}");
            break;
        }
        let last = ids(&page, "id").pop().unwrap();
        assert!(notice.contains(&format!("--after {last}")), "{notice}");
        after = Some(last);
    }
    assert_eq!(
        paged,
        ids(&everything, "id"),
        "the pages, in order, are the whole list"
    );
    // A user's tokens: the filter fills the page from further on.
    let (bobs, _) = list(&["token", "list", "--user", "bob", "--limit", "1"]);
    assert_eq!(bobs.len(), 1);
    assert_eq!(bobs[0]["user"], "bob");

    let (first, _) = list(&["user", "list", "--limit", "3"]);
    assert_eq!(ids(&first, "name"), ["alice", "bob", "carol"]);
    let (rest, _) = list(&["user", "list", "--limit", "3", "--after", "carol"]);
    assert_eq!(ids(&rest, "name"), ["dave"]);
    let text = b.command(&["user", "list", "--limit", "2"], "");
    assert!(
        String::from_utf8_lossy(&text.stderr).contains("the next with --after bob"),
        "{text:?}"
    );
}
