//! The authentication seam with a real multi-step mechanism: a CONNECT answered with an AUTH
//! challenge, the client's AUTH answer, CONNACK; re-authentication after CONNACK; a credential
//! that expires (DISCONNECT 0xA0); and sessions ended on the mechanism's request.
//!
//! The broker runs in-process with a test mechanism; the clients are the mqtt5 crate (a real
//! enhanced-authentication client) and a byte-level client on the broker's codec.

mod common;

use common::Raw;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use mqtt5::client::{AuthHandler, AuthResponse};

type AuthFuture<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = mqtt5::Result<T>> + Send + 'a>>;
use tessera_broker::auth::{
    AuthExchange, AuthFailure, AuthStep, Authenticator, BoxFuture, ConnectRequest, Grant,
    ReauthRequest,
};
use tessera_broker::codec::{Auth, Connect, Packet, Properties, ReasonCode, Utf8Bytes, Version};
use tessera_broker::{BrokerHandle, Server};
use tessera_config::Transport;

const METHOD: &str = "X-CHALLENGE";

/// Challenge-response: the server sends a fresh nonce; the client answers `<nonce>:<secret>`.
/// Secret `short` gets a grant that expires in one second.
struct ChallengeAuth {
    counter: AtomicU32,
}

struct Pending {
    nonce: String,
    user: Option<String>,
}

impl ChallengeAuth {
    fn challenge(&self, user: Option<String>) -> AuthStep {
        let nonce = format!("nonce-{}", self.counter.fetch_add(1, Ordering::Relaxed));
        AuthStep::Continue {
            data: Some(Bytes::from(nonce.clone())),
            exchange: Box::new(Pending { nonce, user }),
        }
    }
}

impl AuthExchange for Pending {
    fn step(self: Box<Self>, data: Option<Bytes>) -> BoxFuture<'static, AuthStep> {
        Box::pin(async move {
            let answer = data.map(|d| String::from_utf8_lossy(&d).to_string());
            let ok = answer.as_deref() == Some(&format!("{}:open-sesame", self.nonce));
            let short = answer.as_deref() == Some(&format!("{}:short", self.nonce));
            if ok || short {
                let mut g = Grant::allow_all(self.user.clone());
                g.credential = Some(format!("cred-{}", self.nonce).into());
                g.data = Some(Bytes::from_static(b"welcome"));
                if short {
                    g.expires_at = Some(SystemTime::now() + Duration::from_secs(1));
                }
                AuthStep::Success(g)
            } else {
                AuthStep::Failure(AuthFailure::new(ReasonCode::NOT_AUTHORIZED, "wrong answer"))
            }
        })
    }
}

impl Authenticator for ChallengeAuth {
    fn connect(&self, r: ConnectRequest) -> BoxFuture<'_, AuthStep> {
        let step = match r.method.as_deref() {
            Some(METHOD) => self.challenge(r.username),
            Some(_) => AuthStep::Failure(AuthFailure::new(
                ReasonCode::BAD_AUTHENTICATION_METHOD,
                "unknown method",
            )),
            None => AuthStep::Failure(AuthFailure::new(
                ReasonCode::NOT_AUTHORIZED,
                "method required",
            )),
        };
        Box::pin(async move { step })
    }

    fn reauthenticate(&self, r: ReauthRequest) -> BoxFuture<'_, AuthStep> {
        let step = self.challenge(r.identity);
        Box::pin(async move { step })
    }
}

async fn start() -> (Server, SocketAddr, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &common::config(dir.path(), ""),
        Arc::new(ChallengeAuth {
            counter: AtomicU32::new(1),
        }),
    )
    .await
    .unwrap();
    let addr = server.addr(Transport::Tcp).unwrap();
    (server, addr, dir)
}

/// The mqtt5 crate's side of the mechanism.
struct Answerer(&'static str);

impl AuthHandler for Answerer {
    fn handle_challenge<'a>(
        &'a self,
        _method: &'a str,
        challenge: Option<&'a [u8]>,
    ) -> AuthFuture<'a, AuthResponse> {
        let nonce = String::from_utf8_lossy(challenge.unwrap_or_default()).to_string();
        let secret = self.0;
        Box::pin(async move {
            Ok(AuthResponse::Continue(
                format!("{nonce}:{secret}").into_bytes(),
            ))
        })
    }
}

#[tokio::test]
async fn mqtt5_client_completes_the_challenge_and_reauthenticates() {
    let (server, addr, _dir) = start().await;
    let client = mqtt5::MqttClient::new("device-1");
    client.set_auth_handler(Answerer("open-sesame")).await;
    let opts = mqtt5::ConnectOptions::new("device-1")
        .with_authentication_method(METHOD)
        .with_automatic_reconnect(false);
    client
        .connect_with_options(&format!("mqtt://{addr}"), opts)
        .await
        .expect("challenge completed");
    assert_eq!(server.handle().connected_clients().len(), 1);
    client
        .reauthenticate()
        .await
        .expect("re-authentication accepted");
    // Still connected and working after re-authentication.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    client
        .subscribe("t", move |m| {
            let _ = tx.send(m.payload.clone());
        })
        .await
        .unwrap();
    client.publish("t", b"after reauth".to_vec()).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, b"after reauth");
    assert!(client.is_connected().await);
}

#[tokio::test]
async fn mqtt5_client_with_a_wrong_answer_is_refused() {
    let (_server, addr, _dir) = start().await;
    let client = mqtt5::MqttClient::new("device-2");
    client.set_auth_handler(Answerer("wrong")).await;
    let opts = mqtt5::ConnectOptions::new("device-2")
        .with_authentication_method(METHOD)
        .with_automatic_reconnect(false);
    assert!(
        client
            .connect_with_options(&format!("mqtt://{addr}"), opts)
            .await
            .is_err()
    );
}

impl Raw {
    fn auth(code: ReasonCode, data: &str) -> Packet {
        Packet::Auth(Auth {
            reason_code: code,
            properties: Properties {
                authentication_method: Some(METHOD.into()),
                authentication_data: Some(Bytes::from(data.to_string())),
                ..Default::default()
            },
        })
    }
    /// CONNECT with the method and no data, answer the challenge with `secret`.
    async fn login(addr: SocketAddr, user: &str, secret: &str) -> (Raw, Packet) {
        let mut raw = Raw::open(addr).await;
        raw.send(Packet::Connect(Box::new(Connect {
            version: Version::V5,
            clean_start: true,
            keep_alive: 0,
            properties: Properties {
                authentication_method: Some(METHOD.into()),
                ..Default::default()
            },
            client_id: Utf8Bytes::from(user),
            will: None,
            username: Some(user.into()),
            password: None,
        })))
        .await;
        let Some(Packet::Auth(challenge)) = raw.recv().await else {
            panic!("expected AUTH 0x18")
        };
        assert_eq!(challenge.reason_code, ReasonCode::CONTINUE_AUTHENTICATION);
        assert_eq!(
            challenge.properties.authentication_method.as_deref(),
            Some(METHOD)
        );
        let nonce =
            String::from_utf8_lossy(challenge.properties.authentication_data.as_deref().unwrap())
                .to_string();
        raw.send(Raw::auth(
            ReasonCode::CONTINUE_AUTHENTICATION,
            &format!("{nonce}:{secret}"),
        ))
        .await;
        let answer = raw.recv().await.unwrap();
        (raw, answer)
    }
}

#[tokio::test]
async fn two_step_exchange_on_the_wire_echoes_the_method() {
    let (_server, addr, _dir) = start().await;
    let (_raw, answer) = Raw::login(addr, "alice", "open-sesame").await;
    let Packet::ConnAck(ack) = answer else {
        panic!("{answer:?}")
    };
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    // MQTT-4.12.0-5: CONNACK carries the same method.
    assert_eq!(
        ack.properties.authentication_method.as_deref(),
        Some(METHOD)
    );
    assert_eq!(
        ack.properties.authentication_data.as_deref(),
        Some(&b"welcome"[..])
    );

    let (mut raw, answer) = Raw::login(addr, "mallory", "guess").await;
    let Packet::ConnAck(ack) = answer else {
        panic!("{answer:?}")
    };
    assert_eq!(ack.reason_code, ReasonCode::NOT_AUTHORIZED);
    assert_eq!(
        ack.properties.reason_string.as_deref(),
        Some("wrong answer")
    );
    assert!(raw.recv().await.is_none(), "closed after a refusal");
}

#[tokio::test]
async fn reauthentication_on_the_wire_and_a_failed_one_disconnects() {
    let (_server, addr, _dir) = start().await;
    let (mut raw, _) = Raw::login(addr, "bob", "open-sesame").await;
    raw.send(Raw::auth(ReasonCode::REAUTHENTICATE, "")).await;
    let Some(Packet::Auth(ch)) = raw.recv().await else {
        panic!()
    };
    assert_eq!(ch.reason_code, ReasonCode::CONTINUE_AUTHENTICATION);
    let nonce =
        String::from_utf8_lossy(ch.properties.authentication_data.as_deref().unwrap()).to_string();
    raw.send(Raw::auth(
        ReasonCode::CONTINUE_AUTHENTICATION,
        &format!("{nonce}:open-sesame"),
    ))
    .await;
    let Some(Packet::Auth(done)) = raw.recv().await else {
        panic!()
    };
    assert_eq!(done.reason_code, ReasonCode::SUCCESS);

    raw.send(Raw::auth(ReasonCode::REAUTHENTICATE, "")).await;
    let Some(Packet::Auth(_)) = raw.recv().await else {
        panic!()
    };
    raw.send(Raw::auth(ReasonCode::CONTINUE_AUTHENTICATION, "nope"))
        .await;
    let Some(Packet::Disconnect(d)) = raw.recv().await else {
        panic!()
    };
    assert_eq!(d.reason_code, ReasonCode::NOT_AUTHORIZED);
    assert!(raw.recv().await.is_none());
}

#[tokio::test]
async fn expired_credential_is_cut_with_0xa0_unless_renewed() {
    let (_server, addr, _dir) = start().await;
    let started = std::time::Instant::now();
    let (mut raw, _) = Raw::login(addr, "carol", "short").await;
    let Some(Packet::Disconnect(d)) = raw.recv().await else {
        panic!()
    };
    assert_eq!(d.reason_code, ReasonCode::MAXIMUM_CONNECT_TIME);
    assert!(d.properties.reason_string.is_some());
    assert!(started.elapsed() >= Duration::from_millis(900));

    // Re-authenticating with a lasting credential before expiry keeps the session.
    let (mut raw, _) = Raw::login(addr, "dave", "short").await;
    raw.send(Raw::auth(ReasonCode::REAUTHENTICATE, "")).await;
    let Some(Packet::Auth(ch)) = raw.recv().await else {
        panic!()
    };
    let nonce =
        String::from_utf8_lossy(ch.properties.authentication_data.as_deref().unwrap()).to_string();
    raw.send(Raw::auth(
        ReasonCode::CONTINUE_AUTHENTICATION,
        &format!("{nonce}:open-sesame"),
    ))
    .await;
    let Some(Packet::Auth(_)) = raw.recv().await else {
        panic!()
    };
    let quiet = tokio::time::timeout(Duration::from_millis(1500), raw.recv()).await;
    assert!(quiet.is_err(), "connection must stay open: {quiet:?}");
}

#[tokio::test]
async fn mechanism_can_end_sessions_by_identity() {
    let (server, addr, _dir) = start().await;
    let (mut alice, _) = Raw::login(addr, "alice", "open-sesame").await;
    let (mut bob, _) = Raw::login(addr, "bob", "open-sesame").await;
    let handle: BrokerHandle = server.handle();
    let n = handle.disconnect_where(
        |c| c.identity.as_deref() == Some("alice"),
        ReasonCode::NOT_AUTHORIZED,
        "token revoked",
    );
    assert_eq!(n, 1);
    let Some(Packet::Disconnect(d)) = alice.recv().await else {
        panic!()
    };
    assert_eq!(d.reason_code, ReasonCode::NOT_AUTHORIZED);
    assert_eq!(d.properties.reason_string.as_deref(), Some("token revoked"));
    bob.send(Packet::PingReq).await;
    assert_eq!(bob.recv().await, Some(Packet::PingResp));
}
