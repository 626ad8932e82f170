//! Operator commands: one set of requests, executed on the token service either by the
//! running server (through its admin socket, a Unix socket of mode 0600 in the data directory,
//! one JSON request and one JSON answer per connection) or, when no server runs, directly on the
//! store file. Session commands (list, kick) and `reload` need the running server. Every request that
//! changes something is written to the audit log with who asked (`audit::admin_action`).

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use std::time::UNIX_EPOCH;

use tessera_broker::BrokerHandle;
use tessera_broker::tls::TlsServer;

use crate::model::{ClientKind, TlsClientAuth};
use crate::secrets;
use crate::service::onboarding::Onboardings;
use crate::service::{ErrorKind, NewClient, Page, ServiceError, TokenService};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum AdminRequest {
    UserAdd {
        name: String,
        password: String,
        /// An operator, who may sign in to the console.
        #[serde(default)]
        admin: bool,
    },
    UserPasswd {
        name: String,
        password: String,
    },
    UserDel {
        name: String,
    },
    UserList {
        #[serde(default)]
        page: Page,
    },
    ClientAdd {
        id: String,
        name: String,
        kind: ClientKind,
        secret: Option<String>,
        redirect_uris: Vec<String>,
        service_user: Option<String>,
        /// A client that authenticates with its TLS certificate (RFC 8705 §2).
        #[serde(default)]
        tls_auth: Option<TlsClientAuth>,
    },
    ClientRemove {
        id: String,
    },
    ClientList,
    TokenIssue {
        user: String,
        ttl: Option<u64>,
        scopes: Vec<String>,
        /// The `x5t#S256` thumbprint of the device certificate the token is bound to.
        #[serde(default)]
        bind_cert: Option<String>,
    },
    TokenList {
        user: Option<String>,
        #[serde(default)]
        page: Page,
    },
    TokenRevoke {
        token: Option<String>,
        user: Option<String>,
        /// Another issuer's token, by its `jti` and `issuer` (as configured).
        #[serde(default)]
        jti: Option<String>,
        #[serde(default)]
        issuer: Option<String>,
    },
    /// The live MQTT connections, optionally of one user, in client id order.
    SessionList {
        user: Option<String>,
        #[serde(default)]
        page: Page,
    },
    /// Ends a client's connection with DISCONNECT 0x98 (Administrative action).
    SessionKick {
        client_id: String,
    },
    /// Reads every TLS server's certificate, key, client CAs and CRLs again (new handshakes
    /// use them; live connections stay). All or nothing: on an error none changes.
    Reload,
}

impl AdminRequest {
    /// The action's name in the audit log, and what it names (never a password or a token:
    /// a token is named by its id).
    fn audit_subject(&self) -> Option<(&'static str, String)> {
        Some(match self {
            AdminRequest::UserAdd { name, .. } => ("user_add", name.clone()),
            AdminRequest::UserPasswd { name, .. } => ("user_passwd", name.clone()),
            AdminRequest::UserDel { name } => ("user_del", name.clone()),
            AdminRequest::ClientAdd { id, .. } => ("client_add", id.clone()),
            AdminRequest::ClientRemove { id } => ("client_remove", id.clone()),
            AdminRequest::TokenIssue { user, .. } => ("token_issue", user.clone()),
            AdminRequest::TokenRevoke {
                token,
                user,
                jti,
                issuer,
            } => (
                "token_revoke",
                match (token, user, jti, issuer) {
                    (Some(t), ..) => {
                        format!("token {}", secrets::token_id(&secrets::token_key(t)))
                    }
                    (None, Some(u), ..) => format!("user {u}"),
                    (None, None, Some(j), Some(i)) => format!("jti {j} of {i}"),
                    _ => String::new(),
                },
            ),
            AdminRequest::SessionKick { client_id } => ("session_kick", client_id.clone()),
            AdminRequest::Reload => ("reload", "tls".into()),
            AdminRequest::UserList { .. }
            | AdminRequest::ClientList
            | AdminRequest::TokenList { .. }
            | AdminRequest::SessionList { .. } => return None,
        })
    }
}

/// Who runs operator requests, and on what: the token service, the broker when one runs, and
/// the actor named in the audit log (`cli`, `console:<user>`).
pub struct Operator<'a> {
    pub service: &'a TokenService,
    pub broker: Option<&'a BrokerHandle>,
    pub actor: &'a str,
    /// The process's TLS servers (listeners, the OAuth endpoint), for `Reload`.
    pub tls: &'a [Arc<TlsServer>],
}

/// The answer: a message for people and data for scripts, or an error.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum AdminResponse {
    Ok { message: String, data: Value },
    Error { message: String, exit_code: u8 },
}

/// "12 token(s)", and when the page is full, how to ask for the next one.
fn listed(n: usize, what: &str, page: &Page, last: Option<&str>) -> String {
    match last {
        Some(last) if page.is_full(n) => {
            format!("{n} {what}(s), a page: the next with --after {last}")
        }
        _ => format!("{n} {what}(s)"),
    }
}

fn err(e: ServiceError) -> AdminResponse {
    let exit_code = match e.kind() {
        ErrorKind::NotFound => 3,
        ErrorKind::AlreadyExists => 4,
        ErrorKind::Invalid => 2,
        ErrorKind::Storage => 1,
    };
    AdminResponse::Error {
        message: e.to_string(),
        exit_code,
    }
}

fn ok(message: impl Into<String>, data: Value) -> AdminResponse {
    AdminResponse::Ok {
        message: message.into(),
        data,
    }
}

/// Runs a request, audited. Blocking (argon2, store writes): call from `spawn_blocking` in
/// async code.
pub fn execute(op: &Operator<'_>, req: AdminRequest) -> AdminResponse {
    let audit = req.audit_subject();
    let answer = run(op, req);
    if let Some((action, subject)) = audit {
        let (ok, detail) = match &answer {
            AdminResponse::Ok { message, .. } => (true, message.as_str()),
            AdminResponse::Error { message, .. } => (false, message.as_str()),
        };
        // A generated client secret or an issued token is in the message: never logged.
        let detail = match action {
            "client_add" | "token_issue" if ok => "",
            _ => detail,
        };
        crate::audit::admin_action(op.actor, action, &subject, ok, detail);
    }
    answer
}

fn run(op: &Operator<'_>, req: AdminRequest) -> AdminResponse {
    let s = op.service;
    let r: Result<AdminResponse, ServiceError> = (|| {
        Ok(match req {
            AdminRequest::UserAdd {
                name,
                password,
                admin,
            } => {
                s.add_user_as(&name, &password, admin)?;
                let what = if admin { "operator" } else { "user" };
                ok(
                    format!("{what} {name} added"),
                    json!({ "user": name, "admin": admin }),
                )
            }
            AdminRequest::UserPasswd { name, password } => {
                let n = s.set_password(&name, &password)?;
                ok(
                    format!("password of {name} changed; {n} token(s) revoked"),
                    json!({ "user": name, "revoked": n }),
                )
            }
            AdminRequest::UserDel { name } => {
                let n = s.delete_user(&name)?;
                ok(
                    format!("user {name} deleted; {n} token(s) revoked"),
                    json!({ "user": name, "revoked": n }),
                )
            }
            AdminRequest::UserList { page } => {
                let users = s.list_users(&page)?;
                let data: Vec<Value> = users
                    .iter()
                    .map(|(n, c, admin)| json!({ "name": n, "admin": admin, "created_at": c }))
                    .collect();
                let last = users.last().map(|(n, ..)| n.as_str());
                ok(listed(users.len(), "user", &page, last), Value::Array(data))
            }
            AdminRequest::ClientAdd {
                id,
                name,
                kind,
                secret,
                redirect_uris,
                service_user,
                tls_auth,
            } => {
                let method = tls_auth.as_ref().map(TlsClientAuth::method);
                let generated = s.add_client(NewClient {
                    id: id.clone(),
                    name,
                    kind,
                    secret,
                    redirect_uris,
                    service_user,
                    tls_auth,
                })?;
                let message = match (&generated, method) {
                    (Some(secret), _) => format!(
                        "client {id} registered ({}); its secret, shown only now: {secret}",
                        kind.name()
                    ),
                    (None, Some(method)) => {
                        format!("client {id} registered ({}, {method})", kind.name())
                    }
                    (None, None) => format!("client {id} registered ({})", kind.name()),
                };
                ok(
                    message,
                    json!({ "client_id": id, "client_secret": generated }),
                )
            }
            AdminRequest::ClientRemove { id } => {
                let n = s.remove_client(&id)?;
                ok(
                    format!("client {id} removed; {n} token(s) revoked"),
                    json!({ "client_id": id, "revoked": n }),
                )
            }
            AdminRequest::ClientList => {
                let clients = s.list_clients()?;
                ok(
                    format!("{} client(s)", clients.len()),
                    serde_json::to_value(&clients).unwrap_or(Value::Null),
                )
            }
            AdminRequest::TokenIssue {
                user,
                ttl,
                scopes,
                bind_cert,
            } => {
                let Some(local) = s.local_user(&user).map(str::to_string) else {
                    return Err(ServiceError::InvalidUserName(user));
                };
                if !s.user_exists(&local)? {
                    return Err(ServiceError::UnknownUser(local));
                }
                let scopes = s.check_scopes(&scopes)?;
                let t = s.issue(&local, None, scopes, ttl, false, bind_cert.as_deref())?;
                s.record_issued("cli", "operator", &t);
                ok(
                    format!("token for {local} (id {}), shown only now", t.id),
                    json!({
                        "access_token": t.access_token,
                        "token_type": "bearer",
                        "scope": t.scope,
                        "expires_in": t.expires_in,
                        "id": t.id,
                    }),
                )
            }
            AdminRequest::TokenList { user, page } => {
                let tokens = s.list_tokens(user.as_deref(), &page)?;
                let last = tokens.last().map(|t| t.id.as_str());
                ok(
                    listed(tokens.len(), "token", &page, last),
                    serde_json::to_value(&tokens).unwrap_or(Value::Null),
                )
            }
            AdminRequest::TokenRevoke {
                token,
                user,
                jti,
                issuer,
            } => {
                let n = match (token, user, jti, issuer) {
                    (Some(t), None, None, None) => s.revoke(&t)?,
                    (None, Some(u), None, None) => s.revoke_user(&u)?,
                    (None, None, Some(jti), Some(issuer)) => {
                        // Held out until the longest an access token can live.
                        let until = crate::clock::now_ms() + s.config.max_ttl * 1000;
                        let label = crate::issuers::label(&issuer, Some(&jti), "");
                        let first = s.revoke_external(&label, until)?;
                        let message = if first {
                            format!("token {jti} of {issuer} revoked")
                        } else {
                            format!("token {jti} of {issuer} was revoked already")
                        };
                        return Ok(ok(message, json!({ "revoked": 1, "jti": jti })));
                    }
                    _ => {
                        return Err(ServiceError::Usage(
                            "give a token (or token id), --user, or --jti with --issuer",
                        ));
                    }
                };
                if n == 0 {
                    return Err(ServiceError::UnknownToken);
                }
                ok(format!("{n} token(s) revoked"), json!({ "revoked": n }))
            }
            AdminRequest::SessionList { user, page } => {
                let broker = op.broker.ok_or(ServiceError::Usage(NO_BROKER))?;
                let rows = sessions(broker, &s.onboardings, user.as_deref(), &page);
                let onboarding = rows.iter().filter(|r| r["state"] != "connected").count();
                // A client id is the network's: control characters shown escaped.
                let last = rows
                    .last()
                    .and_then(|r| r["client_id"].as_str())
                    .map(|id| id.escape_debug().to_string());
                let mut message = listed(rows.len(), "connection", &page, last.as_deref());
                if onboarding > 0 {
                    message.push_str(&format!(" ({onboarding} of them onboarding)"));
                }
                ok(message, Value::Array(rows))
            }
            AdminRequest::SessionKick { client_id } => {
                let broker = op.broker.ok_or(ServiceError::Usage(NO_BROKER))?;
                if !broker.kick(&client_id) {
                    return Err(ServiceError::NoSuchConnection(client_id));
                }
                ok(
                    format!("{client_id} disconnected (0x98 administrative action)"),
                    json!({ "client_id": client_id }),
                )
            }
            AdminRequest::Reload => {
                op.broker.ok_or(ServiceError::Usage(NO_SERVER_TO_RELOAD))?;
                match tessera_broker::tls::reload(op.tls) {
                    Ok(()) => {
                        let names: Vec<&str> = op.tls.iter().map(|t| t.name()).collect();
                        ok(
                            format!(
                                "reloaded the certificates, client CAs and CRLs of {} TLS server(s)",
                                names.len()
                            ),
                            json!({ "reloaded": names }),
                        )
                    }
                    Err(e) => AdminResponse::Error {
                        message: format!("reload failed, the files in force stay: {e}"),
                        exit_code: 1,
                    },
                }
            }
        })
    })();
    r.unwrap_or_else(err)
}

const NO_BROKER: &str = "sessions are the running server's: start `tessera serve` first";
const NO_SERVER_TO_RELOAD: &str = "no server is running: nothing to reload";

/// A page of the live connections as rows (`tessera session list`, the console), in client id
/// order, with the devices onboarding in band among them (no user yet: not listed when asked
/// for a user's).
pub fn sessions(
    broker: &BrokerHandle,
    onboardings: &Onboardings,
    user: Option<&str>,
    page: &Page,
) -> Vec<Value> {
    let after = page.after.as_deref();
    let conns = broker.connected_page(after, page.limit, |c| {
        user.is_none_or(|u| c.identity.as_deref() == Some(u))
    });
    let connected = conns.iter().map(|c| {
        json!({
            "client_id": &*c.client_id,
            "user": c.identity.as_deref(),
            "address": c.peer.to_string(),
            "transport": c.transport,
            "protocol": c.version.name(),
            "connected_at": c.since.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
            "token_id": c.credential.as_deref().map(secrets::token_id),
            "state": "connected",
        })
    });
    // A device onboarding in band has no user yet; there are at most 10,000 of them
    // (`onboarding::IN_ALL`), so they are merged into the page rather than paged apart.
    let onboarding = onboardings
        .list()
        .into_iter()
        .filter(|p| user.is_none() && after.is_none_or(|a| p.client_id.as_str() > a))
        .map(|p| {
            json!({
                "client_id": p.client_id,
                "user": null,
                "address": p.peer.to_string(),
                "transport": p.transport,
                "protocol": "5.0",
                "connected_at": p.started_ms / 1000,
                "token_id": null,
                "state": format!(
                    "onboarding as {}, code {}, for {} s more",
                    p.oauth_client,
                    p.user_code,
                    p.expires_ms.saturating_sub(crate::clock::now_ms()) / 1000
                ),
            })
        });
    let mut rows: Vec<Value> = connected.chain(onboarding).collect();
    rows.sort_by(|a, b| a["client_id"].as_str().cmp(&b["client_id"].as_str()));
    if page.limit > 0 {
        rows.truncate(page.limit);
    }
    rows
}

/// Where the admin socket of a data directory is. Its directory has mode 0700 and the socket
/// 0600: only the broker's own user may run commands.
pub fn socket_path(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("run").join("admin.sock")
}

/// Serves the admin socket until the task is aborted.
pub fn serve(
    path: &Path,
    service: Arc<TokenService>,
    broker: BrokerHandle,
    tls: Vec<Arc<TlsServer>>,
) -> std::io::Result<JoinHandle<()>> {
    let tls: Arc<[Arc<TlsServer>]> = tls.into();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
    }
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    info!(path = %path.display(), "admin socket ready");
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let service = service.clone();
            let broker = broker.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                if let Err(e) = handle(stream, service, broker, tls).await {
                    warn!(error = %e, "admin connection");
                }
            });
        }
    }))
}

async fn handle(
    stream: UnixStream,
    service: Arc<TokenService>,
    broker: BrokerHandle,
    tls: Arc<[Arc<TlsServer>]>,
) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    BufReader::new(r).take_line(&mut line).await?;
    let answer = match serde_json::from_str::<AdminRequest>(&line) {
        Ok(req) => tokio::task::spawn_blocking(move || {
            let op = Operator {
                service: &service,
                broker: Some(&broker),
                actor: "cli",
                tls: &tls,
            };
            execute(&op, req)
        })
        .await
        .unwrap_or_else(|_| AdminResponse::Error {
            message: "internal error".into(),
            exit_code: 1,
        }),
        Err(e) => AdminResponse::Error {
            message: format!("bad request: {e}"),
            exit_code: 2,
        },
    };
    let mut out = serde_json::to_vec(&answer).unwrap_or_default();
    out.push(b'\n');
    w.write_all(&out).await?;
    w.shutdown().await
}

/// Sends one request to a running server. `Err` if no server listens on `path`.
pub async fn call(path: &Path, req: &AdminRequest) -> std::io::Result<AdminResponse> {
    let stream = UnixStream::connect(path).await?;
    let (r, mut w) = stream.into_split();
    let mut out = serde_json::to_vec(req).map_err(std::io::Error::other)?;
    out.push(b'\n');
    w.write_all(&out).await?;
    let mut line = String::new();
    BufReader::new(r).take_line(&mut line).await?;
    serde_json::from_str(&line).map_err(std::io::Error::other)
}

trait TakeLine {
    async fn take_line(&mut self, line: &mut String) -> std::io::Result<()>;
}

impl<R: tokio::io::AsyncRead + Unpin> TakeLine for BufReader<R> {
    /// Reads one line of at most 1 MiB.
    async fn take_line(&mut self, line: &mut String) -> std::io::Result<()> {
        use tokio::io::AsyncReadExt;
        let mut limited = (&mut *self).take(1 << 20);
        limited.read_line(line).await?;
        Ok(())
    }
}
