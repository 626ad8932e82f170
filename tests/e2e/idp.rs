//! A real OpenID provider for the tests: oidc-provider (npm, OpenID-certified), started on
//! loopback over HTTPS with a certificate made in the test (`tests/js/oidc_provider.mjs`),
//! issuing access tokens with the client credentials grant: JWTs (RFC 9068) and opaque tokens
//! it introspects and revokes.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};

use crate::https;
use crate::pki::Ca;

/// Clients of the provider: two devices, and Tessera itself for introspection.
pub const DEVICE: (&str, &str) = ("dev-1", "dev-1-secret-dev-1-secret");
pub const OTHER_DEVICE: (&str, &str) = ("dev-2", "dev-2-secret-dev-2-secret");
pub const TESSERA: (&str, &str) = ("tessera", "tessera-introspection-secret");

pub struct Idp {
    child: Child,
    dir: PathBuf,
    server: (PathBuf, PathBuf),
    /// The CA its HTTPS certificate chains to (Tessera's `ca:` for it).
    pub ca: PathBuf,
    pub issuer: String,
    pub port: u16,
    /// Its private keys (RS256 and ES256), for tokens only their holder can sign.
    pub jwks: PathBuf,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js/oidc_provider.mjs")
}

fn node(args: &[&str]) -> String {
    let out = Command::new("node")
        .arg(script())
        .args(args)
        .output()
        .expect("node must be installed (and `npm ci` run)");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

impl Idp {
    /// Starts a provider in `dir` with keys named `kid` (port 0: any free one).
    pub fn start(dir: &Path, ca: &Ca, kid: &str, port: u16) -> Idp {
        let server = ca.issue_server("localhost");
        Idp::spawn(dir, ca.cert.clone(), (server.cert, server.key), kid, port)
    }

    fn spawn(dir: &Path, ca: PathBuf, server: (PathBuf, PathBuf), kid: &str, port: u16) -> Idp {
        let jwks = dir.join(format!("jwks-{kid}.json"));
        std::fs::write(&jwks, node(&["keys", kid])).unwrap();
        let client = |(id, secret): (&str, &str), grants: &[&str]| {
            json!({"client_id": id, "client_secret": secret, "grant_types": grants,
                   "redirect_uris": [], "response_types": []})
        };
        let scope = "mqtt mqtt:publish:devices/dev-1/up mqtt:publish:devices/dev-2/up";
        let config = json!({
            "port": port,
            "cert": server.0, "key": server.1, "jwks": jwks,
            "clients": [
                client(DEVICE, &["client_credentials"]),
                client(OTHER_DEVICE, &["client_credentials"]),
                client(TESSERA, &[]),
            ],
            "resources": {
                "urn:tessera:jwt": {"scope": scope, "audience": "tessera", "format": "jwt", "ttl": 300, "alg": "RS256"},
                "urn:tessera:es256": {"scope": scope, "audience": "tessera", "format": "jwt", "ttl": 300, "alg": "ES256"},
                "urn:tessera:short": {"scope": scope, "audience": "tessera", "format": "jwt", "ttl": 3, "alg": "RS256"},
                "urn:other-service": {"scope": scope, "audience": "other-service", "format": "jwt", "ttl": 300},
                "urn:tessera:opaque": {"scope": scope, "audience": "tessera", "format": "opaque", "ttl": 300},
            },
        });
        let config_path = dir.join(format!("provider-{kid}.json"));
        std::fs::write(&config_path, config.to_string()).unwrap();
        let mut child = Command::new("node")
            .arg(script())
            .arg("serve")
            .arg(&config_path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("node must be installed (and `npm ci` run)");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let issuer = loop {
            let line = lines
                .next()
                .expect("the provider exited before it was ready")
                .unwrap();
            if let Some(i) = line.strip_prefix("ready ") {
                break i.to_string();
            }
        };
        // The rest of its output is read and dropped: a closed pipe would end it (EPIPE).
        std::thread::spawn(move || for _ in lines {});
        let port = issuer.rsplit(':').next().unwrap().parse().unwrap();
        Idp {
            child,
            dir: dir.to_path_buf(),
            server,
            ca,
            issuer,
            port,
            jwks,
        }
    }

    /// The provider stopped and started again on its port with new keys (a key rotation).
    pub fn rotate(mut self, kid: &str) -> Idp {
        self.stop();
        let (dir, ca, server, port) = (
            self.dir.clone(),
            self.ca.clone(),
            self.server.clone(),
            self.port,
        );
        Idp::spawn(&dir, ca, server, kid, port)
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGSTOP: the provider accepts connections (the kernel does) and answers nothing.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, which: &str) {
        let _ = Command::new("kill")
            .args([which, &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// An access token from the client credentials grant for `resource`.
    pub async fn token(&self, client: (&str, &str), resource: &str, scope: &str) -> String {
        let r = self
            .post(
                "/token",
                client,
                &[
                    ("grant_type", "client_credentials"),
                    ("resource", resource),
                    ("scope", scope),
                ],
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()["access_token"].as_str().unwrap().to_string()
    }

    /// RFC 7009 revocation at the provider.
    pub async fn revoke(&self, client: (&str, &str), token: &str) {
        let r = self
            .post("/token/revocation", client, &[("token", token)])
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }

    async fn post(
        &self,
        path: &str,
        (id, secret): (&str, &str),
        form: &[(&str, &str)],
    ) -> https::Response {
        use base64::Engine;
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"));
        let auth = format!("Basic {basic}");
        https::post_with(
            self.addr(),
            &self.ca,
            path,
            &[("Authorization", &auth)],
            form,
        )
        .await
    }

    /// A JWS signed with the provider's `alg` key, with `header` fields besides alg and kid.
    pub fn sign(&self, alg: &str, header: Value, payload: Value) -> String {
        let (h, p) = (
            self.dir.join("sign-header.json"),
            self.dir.join("sign-payload.json"),
        );
        std::fs::write(&h, header.to_string()).unwrap();
        std::fs::write(&p, payload.to_string()).unwrap();
        node(&[
            "sign",
            self.jwks.to_str().unwrap(),
            alg,
            h.to_str().unwrap(),
            p.to_str().unwrap(),
        ])
    }

    /// The public RSA key of its JWKS, as JSON (what an attacker can read).
    pub fn public_rsa_jwk(&self) -> Value {
        let jwks: Value = serde_json::from_slice(&std::fs::read(&self.jwks).unwrap()).unwrap();
        let k = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kty"] == "RSA")
            .unwrap();
        json!({"kty": "RSA", "n": k["n"], "e": k["e"], "kid": k["kid"]})
    }

    /// Tessera's `auth.issuers` entry for this provider.
    pub fn issuer_config(&self, extra: &str) -> String {
        format!(
            "auth:\n  issuers:\n    - issuer: {}\n      audience: tessera\n      ca: {}\n      user_claim: client_id\n      leeway: 0\n{extra}",
            self.issuer,
            self.ca.display()
        )
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        self.thaw();
        self.stop();
    }
}
