//! Client certificates end to end, with a device PKI made in the test (`pki.rs`): `required`
//! and `optional` TLS listeners (mosquitto_pub/sub and paho-mqtt with `--cert/--key`, and the
//! byte-level client over mutual TLS for exact reason codes), the certificate as the login,
//! tokens bound to a certificate (RFC 8705) from the CLI and from the endpoint (curl
//! `--cert`), client authentication by certificate, and `tessera reload`.

use std::path::Path;
use std::time::Duration;

use rustls::pki_types::ServerName;
use serde_json::Value;
use tessera_broker::codec::{Auth, Packet, Properties, QoS, ReasonCode};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::clients::{mosquitto_pub, mosquitto_sub};
use crate::harness::TestBroker;
use crate::oauth::x_oauth2;
use crate::pki::{self, Ca, Device};
use crate::raw::{Raw, connect_v5};

type Tls = Raw<TlsStream<TcpStream>>;

/// The listener fields asking for certificates of `ca`, revoked ones listed in `crl`.
fn asks(mode: &str, ca: &Ca, crl: Option<&Path>) -> String {
    let mut s = format!(
        "    client_certificates: {mode}\n    client_ca: {}\n",
        ca.cert.display()
    );
    if let Some(crl) = crl {
        s.push_str(&format!("    client_crl: [{}]\n", crl.display()));
    }
    s
}

/// Opens a TLS connection to the broker's tls listener, presenting `device`.
async fn open(b: &TestBroker, device: Option<&Device>) -> std::io::Result<Tls> {
    let connector = tokio_rustls::TlsConnector::from(pki::client_config(&b.cert_path(), device));
    let tcp = TcpStream::connect(b.tls).await?;
    let tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await?;
    Ok(Raw::on(tls))
}

/// Connects over TLS with `device` and CONNECT `c`; the CONNACK's reason code.
async fn connack(
    b: &TestBroker,
    device: Option<&Device>,
    c: tessera_broker::codec::Connect,
) -> ReasonCode {
    let mut raw = open(b, device).await.expect("TLS handshake");
    raw.handshake(c).await.reason_code
}

/// The handshake does not complete: no CONNACK comes back, whichever way the TLS layer says
/// it (with TLS 1.3 the server refuses the client's certificate after the client's side of
/// the handshake is done).
async fn refused(b: &TestBroker, device: Option<&Device>) {
    let Ok(mut raw) = open(b, device).await else {
        return;
    };
    if !raw
        .try_send(&Packet::Connect(Box::new(connect_v5("refused"))))
        .await
    {
        return;
    }
    assert_eq!(raw.try_recv().await, None, "a CONNACK came back");
}

fn add_user(b: &TestBroker, user: &str) {
    let out = b.command(&["user", "add", user], "pw-of-the-user\n");
    assert!(out.status.success(), "{out:?}");
}

fn issue(b: &TestBroker, user: &str, bind: Option<&Device>) -> String {
    let mut args = vec!["--json", "token", "issue", user, "--scope", "mqtt"];
    let cert;
    if let Some(d) = bind {
        cert = d.cert.display().to_string();
        args.extend(["--bind-cert", &cert]);
    }
    let out = b.command(&args, "");
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["access_token"].as_str().unwrap().to_string()
}

/// mosquitto over TLS (`localhost`, trusting the broker's certificate) with `device`.
fn tls_args<'a>(b: &'a TestBroker, port: &'a str, device: Option<&'a Device>) -> Vec<String> {
    let mut args = vec![
        "-h".to_string(),
        "localhost".into(),
        "-p".into(),
        port.into(),
        "-V".into(),
        "mqttv5".into(),
        "--cafile".into(),
        b.cert_path().display().to_string(),
    ];
    if let Some(d) = device {
        args.extend([
            "--cert".into(),
            d.cert.display().to_string(),
            "--key".into(),
            d.key.display().to_string(),
        ]);
    }
    args
}

async fn pub_tls(b: &TestBroker, device: Option<&Device>, extra: &[&str]) -> std::process::Output {
    let port = b.tls.port().to_string();
    let mut args = tls_args(b, &port, device);
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    mosquitto_pub(&refs).await
}

#[tokio::test]
async fn a_required_listener_takes_only_certificates_of_its_ca_that_are_not_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "devices");
    let rogue = Ca::new(dir.path(), "rogue");
    let dev1 = ca.issue("dev-1", None);
    let revoked = ca.issue("dev-2", None);
    let crl = ca.crl(&[&revoked]);
    let imposter = rogue.issue("dev-1", None);
    let b = TestBroker::start_with_tls(
        &asks("required", &ca, Some(&crl)),
        "auth:\n  certificate_login: cn\naccess_publish:\n  - allow: devices/%u/#\naccess_subscribe:\n  - allow: devices/%u/#\n",
    );
    add_user(&b, "dev-1");
    add_user(&b, "dev-2");

    // mosquitto with the device's certificate: logged in as dev-1 by it, nothing else sent.
    let port = b.tls.port().to_string();
    let mut sub = tls_args(&b, &port, Some(&dev1));
    sub.extend(["-i", "sub-dev-1", "-t", "devices/dev-1/#", "-v"].map(String::from));
    let refs: Vec<&str> = sub.iter().map(String::as_str).collect();
    let (_child, mut lines) = mosquitto_sub(&refs).await;
    let out = pub_tls(
        &b,
        Some(&dev1),
        &["-t", "devices/dev-1/temp", "-m", "21.5", "-q", "1"],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    let line = tokio::time::timeout(Duration::from_secs(10), lines.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(line, "devices/dev-1/temp 21.5");

    // No certificate, another CA's, a revoked one: no handshake completes.
    refused(&b, None).await;
    refused(&b, Some(&imposter)).await;
    refused(&b, Some(&revoked)).await;
    for device in [None, Some(&imposter), Some(&revoked)] {
        let out = pub_tls(&b, device, &["-t", "devices/dev-1/x", "-m", "no"]).await;
        assert!(!out.status.success(), "{out:?}");
    }
    // The user's topic rights (%u) are the certificate's user's.
    let mut raw = open(&b, Some(&dev1)).await.unwrap();
    assert_eq!(
        raw.handshake(connect_v5("dev1-raw")).await.reason_code,
        ReasonCode::SUCCESS
    );
    raw.publish("devices/dev-2/x", b"not mine", QoS::AtLeastOnce, 1)
        .await;
    match raw.recv().await {
        Some(Packet::PubAck(a)) => assert_eq!(a.reason_code, ReasonCode::NOT_AUTHORIZED),
        other => panic!("{other:?}"),
    }
    assert!(
        b.wait_log(
            "method=\"certificate\" client_id=\"dev1-raw\"",
            Duration::from_secs(5)
        ),
        "the login is audited as method certificate"
    );
}

#[tokio::test]
async fn an_optional_listener_lets_token_clients_in_and_a_certificate_names_its_user() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "devices");
    let dev1 = ca.issue("dev-1", Some("dev-1.devices.example"));
    let stranger = ca.issue("nobody-here", None);
    let b = TestBroker::start_with_tls(
        &asks("optional", &ca, None),
        "auth:\n  certificate_login: cn\n",
    );
    add_user(&b, "dev-1");
    add_user(&b, "alice");
    let token = issue(&b, "alice", None);
    // No certificate: a token client goes on as without TLS client authentication.
    let out = pub_tls(
        &b,
        None,
        &[
            "-t",
            "t",
            "-m",
            "x",
            "-D",
            "connect",
            "authentication-method",
            "X-OAUTH2",
            "-D",
            "connect",
            "authentication-data",
            &token,
        ],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    // paho-mqtt with the device's certificate and nothing else: in, as dev-1.
    assert_eq!(paho(&b, Some(&dev1), None), 0);
    // A certificate naming no user: 0x87.
    assert_eq!(
        connack(&b, Some(&stranger), connect_v5("stranger")).await,
        ReasonCode::NOT_AUTHORIZED
    );
    // A user name other than the certificate's: 0x87.
    let mut c = connect_v5("claims-alice");
    c.username = Some("alice".into());
    assert_eq!(
        connack(&b, Some(&dev1), c).await,
        ReasonCode::NOT_AUTHORIZED
    );
    // No certificate and no credential: anonymous, refused as before.
    assert_eq!(
        connack(&b, None, connect_v5("anon")).await,
        ReasonCode::NOT_AUTHORIZED
    );
    assert!(!b.log_text().contains(&token), "a token reached the log");
}

/// paho-mqtt (Debian's python3-paho-mqtt) over MQTT 5 and TLS with `device`, X-OAUTH2 with
/// `token` if given: the CONNACK's reason code.
fn paho(b: &TestBroker, device: Option<&Device>, token: Option<&str>) -> u8 {
    let script = r#"
import sys, paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes
port, ca, cert, key, token = sys.argv[1:6]
c = mqtt.Client(client_id="paho-" + str(port), protocol=mqtt.MQTTv5)
c.tls_set(ca_certs=ca, certfile=cert or None, keyfile=key or None)
result = {}
def on_connect(client, userdata, flags, reason, properties):
    result["code"] = reason.value
    client.disconnect()
c.on_connect = on_connect
props = None
if token:
    props = Properties(PacketTypes.CONNECT)
    props.AuthenticationMethod = "X-OAUTH2"
    props.AuthenticationData = token.encode()
c.connect("localhost", int(port), properties=props)
c.loop_forever()
print(result.get("code", 255))
"#;
    let (cert, key) = device
        .map(|d| (d.cert.display().to_string(), d.key.display().to_string()))
        .unwrap_or_default();
    let out = std::process::Command::new("/usr/bin/python3")
        .args(["-c", script, &b.tls.port().to_string()])
        .arg(b.cert_path())
        .args([cert, key, token.unwrap_or("").to_string()])
        .output()
        .expect("python3 with paho-mqtt (scripts/test.sh installs python3-paho-mqtt)");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[tokio::test]
async fn a_bound_token_is_taken_only_with_its_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "devices");
    let dev1 = ca.issue("dev-1", None);
    let dev3 = ca.issue("dev-3", None);
    let b = TestBroker::start_with_tls(&asks("optional", &ca, None), "");
    add_user(&b, "dev-1");
    add_user(&b, "dev-3");
    let bound = issue(&b, "dev-1", Some(&dev1));
    let other = issue(&b, "dev-1", Some(&dev3));
    let x = |id: &str, t: &str| x_oauth2(id, None, Some(t));

    assert_eq!(
        connack(&b, Some(&dev1), x("a", &bound)).await,
        ReasonCode::SUCCESS
    );
    assert_eq!(paho(&b, Some(&dev1), Some(&bound)), 0);
    // Another valid certificate, none, or no TLS at all: refused.
    assert_eq!(
        connack(&b, Some(&dev3), x("b", &bound)).await,
        ReasonCode::NOT_AUTHORIZED
    );
    assert_eq!(
        connack(&b, None, x("c", &bound)).await,
        ReasonCode::NOT_AUTHORIZED
    );
    assert_eq!(paho(&b, Some(&dev3), Some(&bound)), 0x87);
    let (_, ack) = Raw::connect(b.tcp, x("d", &bound)).await;
    assert_eq!(ack.reason_code, ReasonCode::NOT_AUTHORIZED);
    // As the 3.1.1 password, over its certificate.
    let mut v311 = connect_v5("e");
    v311.version = tessera_broker::codec::Version::V3_1_1;
    v311.username = Some("dev-1".into());
    v311.password = Some(bound.clone().into());
    assert_eq!(
        connack(&b, Some(&dev1), v311.clone()).await,
        ReasonCode::SUCCESS
    );
    assert_eq!(
        connack(&b, Some(&dev3), v311).await,
        ReasonCode::NOT_AUTHORIZED
    );
    // Re-authentication with a token bound to another certificate ends the session (0x87).
    let mut raw = open(&b, Some(&dev1)).await.unwrap();
    assert_eq!(
        raw.handshake(x("f", &bound)).await.reason_code,
        ReasonCode::SUCCESS
    );
    raw.send(&Packet::Auth(Auth {
        reason_code: ReasonCode::REAUTHENTICATE,
        properties: Properties {
            authentication_method: Some("X-OAUTH2".into()),
            authentication_data: Some(other.clone().into()),
            ..Default::default()
        },
    }))
    .await;
    raw.expect_disconnect(ReasonCode::NOT_AUTHORIZED).await;
    assert!(b.wait_log(
        "bound to another client certificate",
        Duration::from_secs(5)
    ));
    let log = b.log_text();
    assert!(
        !log.contains(&bound) && !log.contains(&other),
        "a token reached the log"
    );
}

/// curl against the OAuth endpoint with `device`'s certificate, posting `form`.
fn curl(
    b: &TestBroker,
    device: Option<&Device>,
    path: &str,
    form: &[(&str, &str)],
) -> (u16, Value) {
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-s", "-w", "\n%{http_code}", "--cacert"])
        .arg(b.cert_path())
        .arg(format!("https://localhost:{}{path}", b.oauth.port()));
    if let Some(d) = device {
        cmd.arg("--cert").arg(&d.cert).arg("--key").arg(&d.key);
    }
    for (k, v) in form {
        cmd.arg("--data-urlencode").arg(format!("{k}={v}"));
    }
    let out = cmd.output().expect("curl must be installed");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (
        code.trim().parse().unwrap_or(0),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn the_endpoint_binds_tokens_to_the_client_certificate_and_authenticates_clients_by_it() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "devices");
    let dev1 = ca.issue("dev-1", None);
    let dev3 = ca.issue("dev-3", None);
    let app = ca.issue("telemetry-app", Some("telemetry.example"));
    let own = pki::self_signed(dir.path(), "self-signed-app");
    let b = TestBroker::start_with_tls(
        &asks("optional", &ca, None),
        &format!(
            "oauth:\n  bind: 127.0.0.1:0\n  client_certificates: optional\n  client_ca: {}\n",
            ca.cert.display()
        ),
    );
    add_user(&b, "dev-1");
    add_user(&b, "svc");
    let out = b.command(
        &["oauth_add_client_password", "app", "App", "app-secret"],
        "",
    );
    assert!(out.status.success(), "{out:?}");

    let (status, meta) = curl(&b, None, "/.well-known/oauth-authorization-server", &[]);
    assert_eq!(status, 200);
    assert_eq!(meta["tls_client_certificate_bound_access_tokens"], true);
    assert!(
        meta["token_endpoint_auth_methods_supported"]
            .as_array()
            .unwrap()
            .contains(&Value::from("self_signed_tls_client_auth"))
    );

    // A password grant over the device's certificate: both tokens bound to it.
    let grant = [
        ("grant_type", "password"),
        ("username", "dev-1"),
        ("password", "pw-of-the-user"),
        ("client_id", "app"),
        ("client_secret", "app-secret"),
        ("scope", "mqtt"),
    ];
    let (status, t) = curl(&b, Some(&dev1), "/oauth/token", &grant);
    assert_eq!(status, 200, "{t}");
    let access = t["access_token"].as_str().unwrap().to_string();
    let refresh = t["refresh_token"].as_str().unwrap().to_string();
    let (status, info) = curl(
        &b,
        None,
        "/oauth/introspect",
        &[
            ("token", &access),
            ("client_id", "app"),
            ("client_secret", "app-secret"),
        ],
    );
    assert_eq!(status, 200);
    assert_eq!(info["cnf"]["x5t#S256"], dev1.thumbprint.as_str(), "{info}");
    let x = |t: &str| x_oauth2("dev", None, Some(t));
    assert_eq!(
        connack(&b, Some(&dev1), x(&access)).await,
        ReasonCode::SUCCESS
    );
    assert_eq!(
        connack(&b, Some(&dev3), x(&access)).await,
        ReasonCode::NOT_AUTHORIZED
    );
    // The bound refresh token refreshes only with its certificate.
    let refresh_form = [
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh.as_str()),
        ("client_id", "app"),
        ("client_secret", "app-secret"),
    ];
    for other in [Some(&dev3), None] {
        let (status, e) = curl(&b, other, "/oauth/token", &refresh_form);
        assert_eq!(
            (status, e["error"].as_str()),
            (400, Some("invalid_grant")),
            "{e}"
        );
    }
    let (status, next) = curl(&b, Some(&dev1), "/oauth/token", &refresh_form);
    assert_eq!(status, 200, "{next}");
    // In-band over MQTT (docs/in-band.md), the same rule: the rotated refresh token refreshes
    // only over a TLS connection with dev-1's certificate, and another certificate's try
    // does not spend it.
    let in_band = crate::https::form(&[
        ("grant_type", "refresh_token"),
        ("refresh_token", next["refresh_token"].as_str().unwrap()),
        ("client_id", "app"),
        ("client_secret", "app-secret"),
    ]);
    let mut raw = open(&b, Some(&dev3)).await.unwrap();
    let ack = raw.handshake(x(&in_band)).await;
    assert_eq!(ack.reason_code, ReasonCode::NOT_AUTHORIZED);
    let why = ack.properties.reason_string.unwrap().to_string();
    assert!(why.starts_with("invalid_grant: "), "{why}");
    let mut raw = open(&b, Some(&dev1)).await.unwrap();
    let ack = raw.handshake(x(&in_band)).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS, "{ack:?}");
    let pair: Value =
        serde_json::from_slice(ack.properties.authentication_data.as_deref().unwrap()).unwrap();
    let rebound = pair["access_token"].as_str().unwrap();
    assert_eq!(
        connack(&b, Some(&dev1), x(rebound)).await,
        ReasonCode::SUCCESS
    );
    assert_eq!(
        connack(&b, Some(&dev3), x(rebound)).await,
        ReasonCode::NOT_AUTHORIZED
    );
    // Without a certificate, a grant is a bearer token, as before.
    let (status, plain) = curl(&b, None, "/oauth/token", &grant);
    assert_eq!(status, 200);
    let (_, info) = curl(
        &b,
        None,
        "/oauth/introspect",
        &[
            ("token", plain["access_token"].as_str().unwrap()),
            ("client_id", "app"),
            ("client_secret", "app-secret"),
        ],
    );
    assert!(info.get("cnf").is_none(), "{info}");

    // tls_client_auth: the client's certificate is its credential (no secret).
    let out = b.command(
        &[
            "client",
            "add-mtls",
            "telemetry",
            "Telemetry",
            "--san-dns",
            "telemetry.example",
            "--user",
            "svc",
        ],
        "",
    );
    assert!(out.status.success(), "{out:?}");
    let cc = [
        ("grant_type", "client_credentials"),
        ("client_id", "telemetry"),
        ("scope", "mqtt"),
    ];
    let (status, t) = curl(&b, Some(&app), "/oauth/token", &cc);
    assert_eq!(status, 200, "{t}");
    let (status, e) = curl(&b, Some(&dev1), "/oauth/token", &cc);
    assert_eq!(
        (status, e["error"].as_str()),
        (401, Some("invalid_client")),
        "{e}"
    );
    let (status, _) = curl(&b, None, "/oauth/token", &cc);
    assert_eq!(status, 401);
    // self_signed_tls_client_auth: a registered self-signed certificate.
    let own_cert = own.cert.display().to_string();
    let out = b.command(
        &[
            "client",
            "add-mtls",
            "own",
            "Own",
            "--self-signed",
            &own_cert,
            "--user",
            "svc",
        ],
        "",
    );
    assert!(out.status.success(), "{out:?}");
    let cc = [
        ("grant_type", "client_credentials"),
        ("client_id", "own"),
        ("scope", "mqtt"),
    ];
    let (status, t) = curl(&b, Some(&own), "/oauth/token", &cc);
    assert_eq!(status, 200, "{t}");
    let (_, info) = curl(
        &b,
        None,
        "/oauth/introspect",
        &[
            ("token", t["access_token"].as_str().unwrap()),
            ("client_id", "app"),
            ("client_secret", "app-secret"),
        ],
    );
    assert_eq!(info["cnf"]["x5t#S256"], own.thumbprint.as_str());
    let (status, _) = curl(&b, Some(&dev1), "/oauth/token", &cc);
    assert_eq!(status, 401);
    let log = b.log_text();
    for secret in [
        access.as_str(),
        refresh.as_str(),
        "app-secret",
        "pw-of-the-user",
    ] {
        assert!(!log.contains(secret), "a secret reached the log");
    }
}

#[tokio::test]
async fn a_reload_is_taken_by_new_handshakes_while_live_connections_stay() {
    let dir = tempfile::tempdir().unwrap();
    let old_ca = Ca::new(dir.path(), "old");
    let new_ca = Ca::new(dir.path(), "new");
    let old_dev = old_ca.issue("dev-1", None);
    let new_dev = new_ca.issue("dev-1", None);
    // The file the configuration names, rewritten in place as an operator rotates it.
    let client_ca = dir.path().join("client-ca.pem");
    std::fs::copy(&old_ca.cert, &client_ca).unwrap();
    let b = TestBroker::start_with_tls(
        &format!(
            "    client_certificates: required\n    client_ca: {}\n",
            client_ca.display()
        ),
        "auth:\n  certificate_login: cn\n",
    );
    add_user(&b, "dev-1");
    let mut live = open(&b, Some(&old_dev)).await.unwrap();
    assert_eq!(
        live.handshake(connect_v5("live")).await.reason_code,
        ReasonCode::SUCCESS
    );
    refused(&b, Some(&new_dev)).await;

    std::fs::copy(&new_ca.cert, &client_ca).unwrap();
    let out = b.command(&["reload"], "");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        connack(&b, Some(&new_dev), connect_v5("new")).await,
        ReasonCode::SUCCESS
    );
    refused(&b, Some(&old_dev)).await;
    live.send(&Packet::PingReq).await;
    assert_eq!(
        live.recv().await,
        Some(Packet::PingResp),
        "the old connection goes on"
    );

    // A broken file: the reload fails, says why, and what is in force stays.
    std::fs::write(&client_ca, "not a certificate\n").unwrap();
    let out = b.command(&["reload"], "");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("client-ca.pem"), "{err}");
    assert_eq!(
        connack(&b, Some(&new_dev), connect_v5("still")).await,
        ReasonCode::SUCCESS
    );

    // SIGHUP does the same.
    std::fs::copy(&old_ca.cert, &client_ca).unwrap();
    let _ = std::process::Command::new("kill")
        .args(["-HUP", &b.pid().to_string()])
        .status();
    assert!(b.wait_log("SIGHUP: TLS certificates", Duration::from_secs(10)));
    assert_eq!(
        connack(&b, Some(&old_dev), connect_v5("hup")).await,
        ReasonCode::SUCCESS
    );
}

#[test]
fn a_bad_client_ca_is_a_configuration_error_naming_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tessera.yml");
    std::fs::write(
        &config,
        format!(
            "data_dir: {}\nlisteners:\n  - type: tls\n    bind: 127.0.0.1:0\n    client_certificates: required\n    client_ca: {}\n",
            dir.path().join("data").display(),
            dir.path().join("nowhere.pem").display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tessera.yml:6:"), "{err}");
    assert!(err.contains("listeners[0].client_ca"), "{err}");
    assert!(err.contains("nowhere.pem"), "{err}");
}

#[tokio::test]
async fn a_tls_websocket_client_logs_in_with_its_certificate() {
    use rumqttc::v5::MqttOptions;
    use rumqttc::v5::mqttbytes::QoS as QoS5;
    use rumqttc::{TlsConfiguration, Transport};
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "devices");
    let dev1 = ca.issue("dev-1", None);
    let b = TestBroker::start_with_tls(
        &asks("required", &ca, None),
        "auth:\n  certificate_login: cn\n",
    );
    add_user(&b, "dev-1");
    let url = format!("wss://localhost:{}/mqtt", b.wss.port());
    let mut opts = MqttOptions::new("wss-dev-1", url, b.wss.port());
    let tls = TlsConfiguration::Rustls(pki::client_config(&b.cert_path(), Some(&dev1)));
    opts.set_transport(Transport::Wss(tls));
    let (client, mut rx) = crate::clients::rumqttc_v5(opts).await;
    client.subscribe("w/x", QoS5::AtLeastOnce).await.unwrap();
    let mut got = None;
    for _ in 0..50 {
        client
            .publish("w/x", QoS5::AtLeastOnce, false, "over wss")
            .await
            .unwrap();
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await {
            got = Some(m);
            break;
        }
    }
    let (topic, payload, _, _) = got.expect("no message came back over wss");
    assert_eq!(
        (topic.as_str(), payload.as_slice()),
        ("w/x", &b"over wss"[..])
    );
    assert!(b.wait_log(
        "client_id=\"wss-dev-1\" user=\"dev-1\"",
        Duration::from_secs(5)
    ));
    // Without a certificate, the TLS WebSocket setup fails: no MQTT at all.
    let url = format!("wss://localhost:{}/mqtt", b.wss.port());
    let mut opts = MqttOptions::new("wss-none", url, b.wss.port());
    let tls = TlsConfiguration::Rustls(pki::client_config(&b.cert_path(), None));
    opts.set_transport(Transport::Wss(tls));
    let (_client, mut el) = rumqttc::v5::AsyncClient::new(opts, 10);
    let first = tokio::time::timeout(Duration::from_secs(10), el.poll()).await;
    assert!(matches!(first, Ok(Err(_))), "{first:?}");
}
