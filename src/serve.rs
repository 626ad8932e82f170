//! `tessera serve`: the broker, the token service behind its authentication seam, the
//! revocation watcher, the admin socket, the OAuth2 endpoint, `tessera reload` / SIGHUP for
//! the TLS files, and a graceful stop.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tessera_auth::backoff::Backoff;
use tessera_auth::mechanism::{OAuthAuthenticator, OAuthMechanism};
use tessera_auth::revocation;
use tessera_auth::service::TokenService;
use tessera_auth::{admin, http};
use tessera_broker::Server;
use tessera_broker::tls::{Purpose, TlsServer};
use tessera_config::{Config, Durability};
use tessera_store::RedbBrokerStore;
use tracing::{error, info, warn};

pub fn run(config: Config) -> ExitCode {
    crate::logging::init(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(serve(config))
}

async fn serve(config: Config) -> ExitCode {
    // Every certificate, key and CRL file, before anything binds: a wrong one is a
    // configuration error naming the file, line and field.
    if let Err(e) = config.check_files() {
        error!("{e}");
        return ExitCode::from(2);
    }
    if let Err(e) = tessera_broker::files::private_dir(&config.data_dir) {
        error!(
            "cannot create the data directory {}: {e}",
            config.data_dir.display()
        );
        return ExitCode::FAILURE;
    }
    let store_path = config.data_dir.join("tessera.redb");
    let opened = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || crate::cluster::open(&config)).await
    };
    let (store, nats) = match opened.unwrap_or_else(|e| Err(e.to_string())) {
        Ok(s) => s,
        Err(e) => {
            error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let where_ = match &config.cluster {
        Some(c) => format!("NATS JetStream ({} as node {})", c.nats.join(", "), c.node),
        None => store_path.display().to_string(),
    };
    let service = Arc::new(TokenService::new(store, config.oauth.clone()));
    let backoff = Arc::new(Backoff::new(config.oauth.max_failures));
    let issuers = match tessera_auth::issuers::Issuers::new(&config.auth.issuers, &service.metrics)
    {
        Ok(i) => Arc::new(i),
        Err(e) => {
            error!("auth.issuers: {e}");
            return ExitCode::from(2);
        }
    };
    // Their keys are fetched in the background: a provider that is down delays no start.
    issuers.start();
    // The OAuth endpoint's URL, known once it listens (in-band onboarding names its page).
    let endpoint = Arc::new(std::sync::OnceLock::new());
    let mechanism = Arc::new(OAuthMechanism {
        endpoint: endpoint.clone(),
        service: service.clone(),
        auth: config.auth.clone(),
        access_publish: config.access_publish.clone(),
        access_subscribe: config.access_subscribe.clone(),
        backoff: backoff.clone(),
        issuers,
    });
    let auth = Arc::new(OAuthAuthenticator(mechanism));
    let started = match config.storage.durability {
        Durability::None => Server::start(&config, auth).await,
        _ => match RedbBrokerStore::open(&config.data_dir.join("broker.redb")) {
            Ok(state) => Server::start_with_store(&config, auth, Arc::new(state)).await,
            Err(e) => Err(std::io::Error::other(e)),
        },
    };
    let server = match started {
        Ok(s) => s,
        Err(e) => {
            error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let handle = server.handle();
    let joined = tokio::task::spawn_blocking(move || crate::cluster::join(nats, handle)).await;
    if let Err(e) = joined.unwrap_or_else(|e| Err(e.to_string())) {
        error!("{e}");
        return ExitCode::FAILURE;
    }
    server.open();
    let watcher = revocation::spawn(service.clone(), server.handle());
    // Every TLS server of the process, for `tessera reload` and SIGHUP.
    let mut tls: Vec<Arc<TlsServer>> = server.tls_servers().to_vec();
    let http = if config.oauth.enabled {
        let http = start_http(&config, service.clone(), backoff.clone(), server.handle());
        match http.await {
            Ok((task, endpoint_tls, issuer)) => {
                let _ = endpoint.set(issuer);
                tls.extend(endpoint_tls);
                Some(task)
            }
            Err(e) => {
                error!("{e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    let ops = if config.metrics.enabled {
        match crate::metrics::serve(config.metrics.bind, server.handle(), service.clone()).await {
            Ok(t) => Some(t),
            Err(e) => {
                error!("{e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    let admin_task = match admin::serve(
        &admin::socket_path(&config.data_dir),
        service.clone(),
        server.handle(),
        tls.clone(),
    ) {
        Ok(t) => t,
        Err(e) => {
            error!("cannot open the admin socket: {e}");
            return ExitCode::FAILURE;
        }
    };
    let purge = {
        let service = service.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                let s = service.clone();
                match tokio::task::spawn_blocking(move || s.purge_expired()).await {
                    Ok(Ok(n)) if n > 0 => info!(records = n, "purged expired records"),
                    Ok(Err(e)) => warn!(error = %e, "purging expired records"),
                    _ => {}
                }
            }
        })
    };
    info!(version = tessera_broker::VERSION, store = %where_, durability = ?config.storage.durability, "tessera running");
    wait_for_signal(&tls).await;
    admin_task.abort();
    for h in [http, ops].into_iter().flatten() {
        h.abort();
    }
    purge.abort();
    watcher.abort();
    server.shutdown().await;
    let _ = std::fs::remove_file(admin::socket_path(&config.data_dir));
    info!("stopped");
    ExitCode::SUCCESS
}

/// The OAuth endpoint's task, its TLS server (none with `plain_http`) and its issuer URL.
type Http = (tokio::task::JoinHandle<()>, Option<Arc<TlsServer>>, String);

async fn start_http(
    config: &Config,
    service: Arc<TokenService>,
    backoff: Arc<Backoff>,
    broker: tessera_broker::BrokerHandle,
) -> std::io::Result<Http> {
    let o = &config.oauth;
    let listener = http::bind(o.bind).await?;
    let tls = if o.plain_http {
        None
    } else {
        let name = format!("OAuth endpoint on {}", o.bind);
        Some(TlsServer::new(
            name,
            o.tls_files(),
            &config.data_dir,
            Purpose::OAuth,
        )?)
    };
    let issuer = o.issuer.clone().unwrap_or_else(|| {
        http::default_issuer(listener.local_addr().unwrap_or(o.bind), tls.is_some())
    });
    let state = http::AppState {
        service,
        backoff,
        issuer: issuer.clone(),
        csrf_key: http::csrf_key(),
        broker: Some(broker),
    };
    let registered = {
        let state = state.clone();
        tokio::task::spawn_blocking(move || http::console::register_client(&state)).await
    };
    match registered {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(std::io::Error::other(format!("console client: {e}"))),
        Err(e) => return Err(std::io::Error::other(e)),
    }
    Ok((http::serve(state, listener, tls.clone()), tls, issuer))
}

/// Waits for SIGINT or SIGTERM; on SIGHUP, reads the TLS files again and goes on waiting.
async fn wait_for_signal(tls: &[Arc<TlsServer>]) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return,
                _ = term.recv() => return,
                _ = hup.recv() => {
                    let servers = tls.to_vec();
                    let reloaded = tokio::task::spawn_blocking(move || {
                        tessera_broker::tls::reload(&servers)
                    })
                    .await;
                    match reloaded {
                        Ok(Ok(())) => info!(servers = tls.len(), "SIGHUP: TLS certificates, client CAs and CRLs reloaded"),
                        Ok(Err(e)) => error!("SIGHUP: reload failed, the files in force stay: {e}"),
                        Err(e) => error!("SIGHUP: reload failed: {e}"),
                    }
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
