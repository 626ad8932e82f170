//! Operator commands: parse, run on the live server (admin socket) or on the store file, print a
//! human table or JSON. Exit codes: 0 done, 1 failure, 2 bad input, 3 not found, 4 exists.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use clap::Subcommand;
use serde_json::Value;
use tessera_auth::admin::{self, AdminRequest, AdminResponse};
use tessera_auth::model::{ClientKind, TlsClientAuth};
use tessera_auth::service::{Page, TokenService};
use tessera_config::Config;

use crate::Command;

#[derive(Subcommand)]
pub enum UserCmd {
    /// Add a user. The password is read from standard input unless --password is given.
    Add {
        name: String,
        #[arg(long)]
        password: Option<String>,
        /// An operator: may sign in to the console (`https://<oauth endpoint>/console/`).
        #[arg(long)]
        admin: bool,
    },
    /// Change a user's password; every token of the user is revoked.
    Passwd {
        name: String,
        #[arg(long)]
        password: Option<String>,
    },
    /// Delete a user; every token of the user is revoked.
    Del { name: String },
    /// List users, in name order, a page at a time.
    List {
        #[command(flatten)]
        page: PageArgs,
    },
}

/// Which page of a long list (`user list`, `token list`, `session list`).
#[derive(clap::Args)]
pub struct PageArgs {
    /// At most this many (0: all).
    #[arg(long, default_value_t = 1000)]
    limit: usize,
    /// Start after this one (the last of the page before: a user name, a token id, a client
    /// id).
    #[arg(long)]
    after: Option<String>,
}

impl PageArgs {
    fn page(self) -> Page {
        Page {
            after: self.after,
            limit: self.limit,
        }
    }
}

#[derive(Subcommand)]
pub enum ClientCmd {
    /// Register a confidential first-party client (password and client-credentials grants).
    AddPassword {
        id: String,
        name: String,
        /// The client secret; generated (and shown once) if absent.
        #[arg(long)]
        secret: Option<String>,
        /// The user a client-credentials grant acts as (a device or service account).
        #[arg(long)]
        user: Option<String>,
        /// Redirect URIs for the authorization-code flow.
        #[arg(long = "redirect-uri")]
        redirect_uris: Vec<String>,
    },
    /// Register a browser / third-party client of the implicit flow.
    AddImplicit {
        id: String,
        name: String,
        redirect_uri: String,
    },
    /// Register a public client (code flow with PKCE, device flow).
    AddPublic {
        id: String,
        name: String,
        #[arg(long = "redirect-uri")]
        redirect_uris: Vec<String>,
    },
    /// Register a confidential client that authenticates with its TLS client certificate
    /// instead of a secret (RFC 8705): one chaining to `oauth.client_ca` with this subject or
    /// SAN (tls_client_auth), or one of these self-signed certificates.
    #[command(group(clap::ArgGroup::new("by").required(true).args(["subject_dn", "san_dns", "san_uri", "self_signed"])))]
    AddMtls {
        id: String,
        name: String,
        /// The certificate's subject in RFC 4514 form, as `openssl x509 -noout -subject
        /// -nameopt RFC2253` prints it (CN=app,O=Example).
        #[arg(long)]
        subject_dn: Option<String>,
        /// A DNS name of the certificate's Subject Alternative Name.
        #[arg(long)]
        san_dns: Option<String>,
        /// A URI of the certificate's Subject Alternative Name.
        #[arg(long)]
        san_uri: Option<String>,
        /// A self-signed certificate (PEM) the client presents; repeat for several.
        #[arg(long = "self-signed")]
        self_signed: Vec<std::path::PathBuf>,
        /// The user a client-credentials grant acts as (a device or service account).
        #[arg(long)]
        user: Option<String>,
    },
    /// Remove a client; every token issued to it is revoked.
    Remove { id: String },
    /// List clients.
    List,
}

#[derive(Subcommand)]
pub enum TokenCmd {
    /// Issue a token for a user (a device), without its password. Shown once.
    Issue {
        user: String,
        /// Lifetime in seconds (default oauth_expire, capped at max_ttl).
        #[arg(long)]
        ttl: Option<u64>,
        /// Scopes (repeat, or space-separated); default mqtt.
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// Bind the token to this device certificate (PEM): it is then taken only over a TLS
        /// connection that presents it (RFC 8705).
        #[arg(long)]
        bind_cert: Option<std::path::PathBuf>,
    },
    /// List tokens: ids and metadata, never the token; in id order, a page at a time.
    List {
        #[arg(long)]
        user: Option<String>,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Revoke a token (the token or its id), every token of --user, or another issuer's
    /// token by --jti and --issuer (held out until it could have expired, on every node).
    Revoke {
        // A token may begin with `-` (base64url): it is a value, not an option.
        #[arg(allow_hyphen_values = true)]
        token: Option<String>,
        #[arg(long)]
        user: Option<String>,
        #[arg(long, requires = "issuer")]
        jti: Option<String>,
        /// The issuer as configured in `auth.issuers`.
        #[arg(long, requires = "jti")]
        issuer: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum SessionCmd {
    /// The live MQTT connections: client id, user, address, transport, protocol, since; in
    /// client id order, a page at a time.
    List {
        #[arg(long)]
        user: Option<String>,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Disconnect a client (DISCONNECT 0x98, Administrative action). Its token stays valid:
    /// revoke it too to keep the client out.
    Kick { client_id: String },
}

fn read_password(prompt: &str) -> Result<String, ExitCode> {
    if std::io::stdin().is_terminal() {
        eprint!("{prompt}: ");
        let _ = std::io::stderr().flush();
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).map_err(|e| {
        eprintln!("error: cannot read the password: {e}");
        ExitCode::from(1)
    })?;
    let pw = line.trim_end_matches(['\n', '\r']).to_string();
    if pw.is_empty() {
        eprintln!("error: empty password");
        return Err(ExitCode::from(2));
    }
    Ok(pw)
}

/// A certificate's RFC 8705 thumbprint, or exit 2 naming the file.
fn pem_thumbprint(path: &std::path::Path) -> Result<String, ExitCode> {
    tessera_broker::tls::thumbprint_of_pem(path).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })
}

fn split_scopes(scopes: Vec<String>) -> Vec<String> {
    scopes
        .iter()
        .flat_map(|s| s.split([' ', ';', ',']))
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// The request a command stands for.
pub fn request(cmd: Command) -> Result<AdminRequest, ExitCode> {
    Ok(match cmd {
        Command::User(UserCmd::Add {
            name,
            password,
            admin,
        }) => AdminRequest::UserAdd {
            password: match password {
                Some(p) => p,
                None => read_password("password")?,
            },
            name,
            admin,
        },
        Command::User(UserCmd::Passwd { name, password }) => AdminRequest::UserPasswd {
            password: match password {
                Some(p) => p,
                None => read_password("new password")?,
            },
            name,
        },
        Command::User(UserCmd::Del { name }) => AdminRequest::UserDel { name },
        Command::User(UserCmd::List { page }) => AdminRequest::UserList { page: page.page() },
        Command::Client(ClientCmd::AddPassword {
            id,
            name,
            secret,
            user,
            redirect_uris,
        }) => AdminRequest::ClientAdd {
            id,
            name,
            kind: ClientKind::Confidential,
            secret,
            redirect_uris,
            service_user: user,
            tls_auth: None,
        },
        Command::OauthAddClientPassword {
            client_id,
            client_name,
            secret,
        } => AdminRequest::ClientAdd {
            id: client_id,
            name: client_name,
            kind: ClientKind::Confidential,
            secret: Some(secret),
            redirect_uris: vec![],
            service_user: None,
            tls_auth: None,
        },
        Command::Client(ClientCmd::AddImplicit {
            id,
            name,
            redirect_uri,
        })
        | Command::OauthAddClientImplicit {
            client_id: id,
            client_name: name,
            redirect_uri,
        } => AdminRequest::ClientAdd {
            id,
            name,
            kind: ClientKind::Implicit,
            secret: None,
            redirect_uris: vec![redirect_uri],
            service_user: None,
            tls_auth: None,
        },
        Command::Client(ClientCmd::AddPublic {
            id,
            name,
            redirect_uris,
        }) => AdminRequest::ClientAdd {
            id,
            name,
            kind: ClientKind::Public,
            secret: None,
            redirect_uris,
            service_user: None,
            tls_auth: None,
        },
        Command::Client(ClientCmd::AddMtls {
            id,
            name,
            subject_dn,
            san_dns,
            san_uri,
            self_signed,
            user,
        }) => {
            let tls_auth = match (subject_dn, san_dns, san_uri) {
                (Some(dn), _, _) => TlsClientAuth::SubjectDn(dn),
                (_, Some(d), _) => TlsClientAuth::SanDns(d),
                (_, _, Some(u)) => TlsClientAuth::SanUri(u),
                _ => TlsClientAuth::SelfSigned(
                    self_signed
                        .iter()
                        .map(|p| pem_thumbprint(p))
                        .collect::<Result<_, _>>()?,
                ),
            };
            AdminRequest::ClientAdd {
                id,
                name,
                kind: ClientKind::Confidential,
                secret: None,
                redirect_uris: vec![],
                service_user: user,
                tls_auth: Some(tls_auth),
            }
        }
        Command::Client(ClientCmd::Remove { id })
        | Command::OauthRemoveClient { client_id: id } => AdminRequest::ClientRemove { id },
        Command::Client(ClientCmd::List) => AdminRequest::ClientList,
        Command::Token(TokenCmd::Issue {
            user,
            ttl,
            scopes,
            bind_cert,
        }) => AdminRequest::TokenIssue {
            user,
            ttl,
            scopes: split_scopes(scopes),
            bind_cert: bind_cert.as_deref().map(pem_thumbprint).transpose()?,
        },
        Command::OauthIssueToken { user, ttl, scopes } => AdminRequest::TokenIssue {
            user,
            ttl: Some(ttl),
            scopes: split_scopes(vec![scopes]),
            bind_cert: None,
        },
        Command::Reload => AdminRequest::Reload,
        Command::Token(TokenCmd::List { user, page }) => AdminRequest::TokenList {
            user,
            page: page.page(),
        },
        // ejabberd's command lists them all.
        Command::OauthListTokens => AdminRequest::TokenList {
            user: None,
            page: Page::default(),
        },
        Command::Token(TokenCmd::Revoke {
            token,
            user,
            jti,
            issuer,
        }) => AdminRequest::TokenRevoke {
            token,
            user,
            jti,
            issuer,
        },
        Command::OauthRevokeToken { token } => AdminRequest::TokenRevoke {
            token: Some(token),
            user: None,
            jti: None,
            issuer: None,
        },
        Command::Session(SessionCmd::List { user, page }) => AdminRequest::SessionList {
            user,
            page: page.page(),
        },
        Command::Session(SessionCmd::Kick { client_id }) => AdminRequest::SessionKick { client_id },
        Command::Serve
        | Command::CheckConfig { .. }
        | Command::CheckData
        | Command::Cluster(_)
        | Command::DefaultConfig => {
            unreachable!("handled in main")
        }
    })
}

/// Runs the request on the live server if there is one, else on the store file.
pub fn run(config: &Config, request: AdminRequest, json: bool) -> ExitCode {
    if let AdminRequest::TokenRevoke {
        issuer: Some(issuer),
        ..
    } = &request
        && !config.auth.issuers.iter().any(|i| &i.issuer == issuer)
    {
        eprintln!("error: {issuer} is not one of the configured issuers (auth.issuers)");
        return ExitCode::from(2);
    }
    let ejabberd_style = matches!(request, AdminRequest::TokenIssue { .. });
    let page_limit = match &request {
        AdminRequest::UserList { page }
        | AdminRequest::TokenList { page, .. }
        | AdminRequest::SessionList { page, .. } => page.limit,
        _ => 0,
    };
    let socket = admin::socket_path(&config.data_dir);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let answer = match runtime.block_on(admin::call(&socket, &request)) {
        Ok(a) => a,
        // A server took the request and then failed: running it again here could do it twice.
        Err(e) if !no_server_listens(&e) => {
            eprintln!(
                "error: the running server did not answer ({e}); see its log (socket {})",
                socket.display()
            );
            return ExitCode::from(1);
        }
        Err(_) => {
            // No server is running: work on the store directly (the file, or NATS).
            let store = match crate::cluster::token_store(config) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: {e} (is a tessera server running with another data_dir?)");
                    return ExitCode::from(1);
                }
            };
            let service = TokenService::new(store, config.oauth.clone());
            let op = admin::Operator {
                service: &service,
                broker: None,
                actor: "cli",
                tls: &[],
            };
            admin::execute(&op, request)
        }
    };
    match answer {
        AdminResponse::Ok { message, data } => {
            if json {
                println!("{data}");
            } else {
                print_human(&message, &data, ejabberd_style);
            }
            // A full page: how to get the next, on stderr (stdout stays the table or JSON).
            if page_limit > 0 && data.as_array().is_some_and(|a| a.len() >= page_limit) {
                eprintln!("{message}");
            }
            ExitCode::SUCCESS
        }
        AdminResponse::Error { message, exit_code } => {
            if json {
                println!("{}", serde_json::json!({ "error": message }));
            }
            eprintln!("error: {message}");
            ExitCode::from(exit_code)
        }
    }
}

/// Whether connecting to the admin socket failed because no server listens there.
fn no_server_listens(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
    )
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(cell).collect::<Vec<_>>().join(" "),
        other => other.to_string(),
    }
}

fn print_human(message: &str, data: &Value, token_issue: bool) {
    match data {
        Value::Array(rows) if !rows.is_empty() => {
            let Some(Value::Object(first)) = rows.first() else {
                println!("{message}");
                return;
            };
            let cols: Vec<String> = first.keys().cloned().collect();
            let table: Vec<Vec<String>> = rows
                .iter()
                .map(|r| {
                    cols.iter()
                        .map(|c| match &r[c.as_str()] {
                            Value::Number(n) if c.ends_with("_at") => n
                                .as_u64()
                                .map(tessera_auth::clock::utc)
                                .unwrap_or_else(|| n.to_string()),
                            v => cell(v),
                        })
                        .collect()
                })
                .collect();
            let widths: Vec<usize> = cols
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    table
                        .iter()
                        .map(|r| r[i].len())
                        .max()
                        .unwrap_or(0)
                        .max(c.len())
                })
                .collect();
            let line = |cells: Vec<String>| {
                cells
                    .iter()
                    .zip(&widths)
                    .map(|(c, w)| format!("{c:<w$}"))
                    .collect::<Vec<_>>()
                    .join("  ")
                    .trim_end()
                    .to_string()
            };
            println!("{}", line(cols.iter().map(|c| c.to_uppercase()).collect()));
            for r in table {
                println!("{}", line(r));
            }
        }
        _ if token_issue => {
            // ejabberdctl's form: token, scopes, expiry, tab-separated.
            println!(
                "{}\t{}\tExpires in {} seconds",
                cell(&data["access_token"]),
                cell(&data["scope"]),
                cell(&data["expires_in"])
            );
            eprintln!("{message}");
        }
        _ => println!("{message}"),
    }
}
