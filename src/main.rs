//! The `tessera` command: `serve` runs the broker and its token service; the other commands
//! manage users, OAuth clients and tokens (through the running server's admin socket, or on the
//! store file when no server runs), with ejabberdctl's `oauth_*` names as aliases.

mod check;
mod cli;
mod cluster;
mod logging;
mod metrics;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tessera_config::Config;

#[derive(Parser)]
#[command(
    name = "tessera",
    version,
    about = "MQTT 5.0 broker whose devices log in with OAuth2 bearer tokens"
)]
struct Cli {
    /// YAML configuration file; without it the embedded default is used.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// Print results as JSON (for scripts).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker in the foreground (SIGINT/SIGTERM stop it gracefully).
    Serve,
    /// Check a configuration file and exit (0 if valid).
    CheckConfig { file: PathBuf },
    /// Print the embedded default configuration (the commented example).
    DefaultConfig,
    /// Verify the stores in the data directory (with the server stopped): every record reads
    /// back and every queued message is there. Exit 0 if sound, 1 if not.
    CheckData,
    /// Manage users (who log in to get tokens).
    #[command(subcommand)]
    User(cli::UserCmd),
    /// Manage OAuth clients (the apps that request tokens).
    #[command(subcommand)]
    Client(cli::ClientCmd),
    /// Issue, list and revoke access tokens.
    #[command(subcommand)]
    Token(cli::TokenCmd),
    /// List and disconnect live MQTT connections (needs the running server).
    #[command(subcommand)]
    Session(cli::SessionCmd),
    /// Read the TLS certificates, client CAs and CRLs again (the running server; as SIGHUP).
    /// New handshakes use them, live connections stay; a failed reload changes nothing.
    Reload,
    /// The nodes of the cluster (`cluster:` in the configuration) and their health.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// ejabberdctl: register a confidential client with its secret.
    #[command(name = "oauth_add_client_password")]
    OauthAddClientPassword {
        client_id: String,
        client_name: String,
        secret: String,
    },
    /// ejabberdctl: register an implicit-flow client with its redirect URI.
    #[command(name = "oauth_add_client_implicit")]
    OauthAddClientImplicit {
        client_id: String,
        client_name: String,
        redirect_uri: String,
    },
    /// ejabberdctl: remove a client and its tokens.
    #[command(name = "oauth_remove_client")]
    OauthRemoveClient { client_id: String },
    /// ejabberdctl: issue a token for user@host with a ttl (seconds) and ';'-separated scopes.
    #[command(name = "oauth_issue_token")]
    OauthIssueToken {
        user: String,
        ttl: u64,
        scopes: String,
    },
    /// ejabberdctl: list tokens (ids and metadata, never the token).
    #[command(name = "oauth_list_tokens")]
    OauthListTokens,
    /// ejabberdctl: revoke a token; sessions using it are disconnected.
    #[command(name = "oauth_revoke_token")]
    OauthRevokeToken {
        #[arg(allow_hyphen_values = true)]
        token: String,
    },
}

#[derive(Subcommand)]
enum ClusterCmd {
    /// Every node that ever joined, up (a heartbeat within 10 s) or down; exit 1 if one is down.
    Status,
}

fn load_config(path: &Option<PathBuf>) -> Result<Config, ExitCode> {
    match path {
        Some(p) => Config::load(p).map_err(|e| {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }),
        None => Ok(Config::embedded()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file } => match Config::load(&file) {
            Ok(_) => {
                println!("{}: configuration is valid", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Command::DefaultConfig => {
            print!("{}", tessera_config::EMBEDDED_DEFAULT);
            ExitCode::SUCCESS
        }
        Command::Serve => match load_config(&cli.config) {
            Ok(config) => serve::run(config),
            Err(code) => code,
        },
        Command::Cluster(ClusterCmd::Status) => match load_config(&cli.config) {
            Ok(config) => cluster::status(&config, cli.json),
            Err(code) => code,
        },
        Command::CheckData => match load_config(&cli.config) {
            Ok(config) => check::run(&config, cli.json),
            Err(code) => code,
        },
        other => {
            let config = match load_config(&cli.config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let request = match cli::request(other) {
                Ok(r) => r,
                Err(code) => return code,
            };
            cli::run(&config, request, cli.json)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One token in 64 begins with `-` (base64url); revoking it must not read as an option.
    #[test]
    fn a_token_beginning_with_a_hyphen_is_a_value() {
        let token = "-JxTq3w_kP0";
        let cli = Cli::try_parse_from(["tessera", "token", "revoke", token]).unwrap();
        let request = cli::request(cli.command).unwrap_or_else(|_| panic!("no request"));
        assert!(matches!(
            request,
            tessera_auth::admin::AdminRequest::TokenRevoke { token: Some(t), user: None, .. } if t == token
        ));
        let cli = Cli::try_parse_from(["tessera", "oauth_revoke_token", token]).unwrap();
        let request = cli::request(cli.command).unwrap_or_else(|_| panic!("no request"));
        assert!(matches!(
            request,
            tessera_auth::admin::AdminRequest::TokenRevoke { token: Some(t), .. } if t == token
        ));
        // Options keep their meaning.
        let cli = Cli::try_parse_from(["tessera", "token", "revoke", "--user", "bob"]).unwrap();
        let request = cli::request(cli.command).unwrap_or_else(|_| panic!("no request"));
        assert!(matches!(
            request,
            tessera_auth::admin::AdminRequest::TokenRevoke { token: None, user: Some(u), .. } if u == "bob"
        ));
    }
}
