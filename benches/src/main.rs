//! `loadgen`: runs one benchmark scenario against an MQTT broker on loopback and prints one
//! JSON line with the figures. `benches/compare.sh` drives it against Tessera, mosquitto and
//! rumqttd.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tessera_bench::client::Login;
use tessera_bench::scenarios::{self, Target};
use tessera_broker::codec::{QoS, Version};

#[derive(Parser)]
#[command(
    name = "loadgen",
    about = "MQTT load generator (loopback only, bounded in time and count)"
)]
struct Cli {
    /// Broker address (must be a loopback address).
    #[arg(long, default_value = "127.0.0.1:1883")]
    addr: SocketAddr,
    /// Subscribers connect here instead (another node of a cluster; loopback only).
    #[arg(long)]
    sub_addr: Option<SocketAddr>,
    /// Log in with a user name and password (user:password).
    #[arg(long)]
    password: Option<String>,
    /// Log in with X-OAUTH2 and this access token.
    #[arg(long)]
    token: Option<String>,
    /// Log in with X-OAUTH2, each client with its own token from this file (one per line;
    /// connect-storm takes them in turn).
    #[arg(long)]
    tokens: Option<std::path::PathBuf>,
    /// MQTT version of the clients: 5 or 3.1.1 (X-OAUTH2 needs 5).
    #[arg(long, default_value = "3.1.1")]
    mqtt: String,
    /// Prefix for client identifiers and topics (default: unique per process).
    #[arg(long)]
    run: Option<String>,
    /// Subscribers keep persistent sessions (clean session 0), so a durable broker stores what
    /// is queued for them.
    #[arg(long)]
    persistent: bool,
    /// The CA (PEM) the broker's TLS certificate is checked against (tls-handshakes, tls-idle).
    #[arg(long)]
    tls_ca: Option<std::path::PathBuf>,
    /// A client certificate and its key (PEM) the TLS clients present.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// N publishers → 1 subscriber.
    FanIn {
        #[arg(long, default_value_t = 8)]
        publishers: usize,
        #[arg(long, default_value_t = 0)]
        qos: u8,
        #[arg(long, default_value_t = 64)]
        payload: usize,
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
    },
    /// N publisher/subscriber pairs at QoS 1 (or 2): throughput and latency.
    Pairs {
        #[arg(long, default_value_t = 8)]
        pairs: usize,
        #[arg(long, default_value_t = 1)]
        qos: u8,
        /// Messages per second per pair; flat out if absent.
        #[arg(long)]
        rate: Option<u64>,
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
    },
    /// 1 publisher → N subscribers at QoS 0.
    FanOut {
        #[arg(long, default_value_t = 1000)]
        subscribers: usize,
        #[arg(long, default_value_t = 64)]
        payload: usize,
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
    },
    /// M clients connecting and disconnecting.
    ConnectStorm {
        #[arg(long, default_value_t = 2000)]
        clients: usize,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// The broker's process id: also report the CPU time it spent per CONNACK (from
        /// /proc), which tells the broker's connect capacity when the load generator is the limit.
        #[arg(long)]
        pid: Option<u32>,
    },
    /// N idle connections; broker RSS per connection.
    Idle {
        #[arg(long, default_value_t = 10000)]
        connections: usize,
        /// The broker's process id (its RSS is read from /proc).
        #[arg(long)]
        pid: u32,
    },
    /// M clients each doing a whole TLS handshake (no resumption), CONNECT and DISCONNECT.
    TlsHandshakes {
        #[arg(long, default_value_t = 2000)]
        clients: usize,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        #[arg(long)]
        pid: Option<u32>,
    },
    /// Publisher and subscriber pairs over TLS streaming QoS 0 messages; delivered per second.
    TlsStream {
        #[arg(long, default_value_t = 4)]
        pairs: usize,
        #[arg(long, default_value_t = 64)]
        payload: usize,
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
    },
    /// N idle TLS connections; broker RSS per connection.
    TlsIdle {
        #[arg(long, default_value_t = 10000)]
        connections: usize,
        #[arg(long)]
        pid: u32,
    },
    /// N retained topics; time for a `#` subscriber to receive them all.
    Retained {
        #[arg(long, default_value_t = 100_000)]
        topics: u64,
    },
    /// Fills the broker with retained topics and persistent sessions, for a restart to load.
    Fill {
        #[arg(long, default_value_t = 1_000_000)]
        retained: u64,
        #[arg(long, default_value_t = 100_000)]
        sessions: usize,
    },
    /// Connects until the broker answers; prints how long that took.
    Ready {
        #[arg(long, default_value_t = 600.0)]
        timeout: f64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !cli.addr.ip().is_loopback() {
        eprintln!("error: loadgen only targets loopback addresses");
        return ExitCode::from(2);
    }
    let tokens = match &cli.tokens {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => Some(text.lines().map(str::to_string).collect::<Vec<_>>()),
            Err(e) => {
                eprintln!("error: {}: {e}", path.display());
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    let login = match (cli.password, cli.token) {
        (None, None) if tokens.is_some() => {
            Login::XOAuth2Each(std::sync::Arc::new(tokens.unwrap_or_default()))
        }
        (Some(p), None) => match p.split_once(':') {
            Some((u, pw)) => Login::Password {
                user: u.into(),
                password: pw.into(),
            },
            None => {
                eprintln!("error: --password takes user:password");
                return ExitCode::from(2);
            }
        },
        (None, Some(t)) => Login::XOAuth2 { token: t },
        (None, None) => Login::Anonymous,
        _ => {
            eprintln!("error: give --password or --token, not both");
            return ExitCode::from(2);
        }
    };
    let version = match cli.mqtt.as_str() {
        "5" | "5.0" => Version::V5,
        "3.1.1" | "4" => Version::V3_1_1,
        other => {
            eprintln!("error: --mqtt takes 5 or 3.1.1, not {other}");
            return ExitCode::from(2);
        }
    };
    if matches!(login, Login::XOAuth2 { .. } | Login::XOAuth2Each(_)) && version != Version::V5 {
        eprintln!("error: X-OAUTH2 needs --mqtt 5");
        return ExitCode::from(2);
    }
    if cli.sub_addr.is_some_and(|a| !a.ip().is_loopback()) {
        eprintln!("error: loadgen only targets loopback addresses");
        return ExitCode::from(2);
    }
    let target = Target {
        addr: cli.addr,
        sub_addr: cli.sub_addr.unwrap_or(cli.addr),
        login,
        version,
        run: cli
            .run
            .unwrap_or_else(|| format!("lg{}", std::process::id())),
        persistent: cli.persistent,
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let qos = |q: u8| {
        if q == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        }
    };
    let tls = match (&cli.tls_ca, &cli.scenario) {
        (Some(ca), _) => {
            let identity = cli.tls_cert.as_deref().zip(cli.tls_key.as_deref());
            match tessera_bench::tls::TlsClient::new(ca, identity, "localhost") {
                Ok(t) => Some(t),
                Err(e) => {
                    eprintln!("error: TLS client: {e}");
                    return ExitCode::from(2);
                }
            }
        }
        (
            None,
            Scenario::TlsHandshakes { .. } | Scenario::TlsIdle { .. } | Scenario::TlsStream { .. },
        ) => {
            eprintln!("error: TLS scenarios need --tls-ca");
            return ExitCode::from(2);
        }
        (None, _) => None,
    };
    let result = rt.block_on(async {
        match cli.scenario {
            Scenario::TlsHandshakes {
                clients,
                concurrency,
                pid,
            } => {
                let tls = tls.as_ref().ok_or("no TLS")?;
                tessera_bench::tls::handshake_storm(
                    target.addr,
                    tls,
                    &target.login,
                    target.version,
                    clients,
                    concurrency,
                    pid,
                )
                .await
            }
            Scenario::TlsStream {
                pairs,
                payload,
                secs,
            } => {
                let tls = tls.as_ref().ok_or("no TLS")?;
                tessera_bench::tls::stream(
                    target.addr,
                    tls,
                    &target.login,
                    target.version,
                    pairs,
                    payload,
                    secs,
                )
                .await
            }
            Scenario::TlsIdle { connections, pid } => {
                let tls = tls.as_ref().ok_or("no TLS")?;
                tessera_bench::tls::idle(
                    target.addr,
                    tls,
                    &target.login,
                    target.version,
                    connections,
                    pid,
                )
                .await
            }
            Scenario::FanIn {
                publishers,
                qos: q,
                payload,
                secs,
            } => scenarios::fan_in(&target, publishers, qos(q), payload, secs).await,
            Scenario::Pairs {
                pairs,
                qos: q,
                rate,
                secs,
            } => scenarios::pairs(&target, pairs, qos(q), rate, secs).await,
            Scenario::FanOut {
                subscribers,
                payload,
                secs,
            } => scenarios::fan_out(&target, subscribers, payload, secs).await,
            Scenario::ConnectStorm {
                clients,
                concurrency,
                pid,
            } => scenarios::connect_storm(&target, clients, concurrency, pid).await,
            Scenario::Idle { connections, pid } => scenarios::idle(&target, connections, pid).await,
            Scenario::Retained { topics } => scenarios::retained(&target, topics).await,
            Scenario::Fill { retained, sessions } => {
                scenarios::fill(&target, retained, sessions).await
            }
            Scenario::Ready { timeout } => {
                scenarios::ready(&target, std::time::Duration::from_secs_f64(timeout)).await
            }
        }
    });
    match result {
        Ok(v) => {
            println!("{v}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
