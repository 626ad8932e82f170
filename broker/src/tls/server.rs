//! [`TlsServer`]: one TLS server's configuration (an MQTT listener's, the OAuth endpoint's),
//! built from its files and built again from them on `tessera reload`. A handshake takes the
//! configuration current when it starts; live connections keep theirs. A reload that fails
//! keeps the old configuration and says why.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use rustls::ServerConfig;
use rustls::pki_types::CertificateDer;
use tessera_config::TlsFiles;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use super::client::{ChainCheck, ClientCertificate, Purpose};

pub struct TlsServer {
    /// What it is, for messages: "tls listener on 0.0.0.0:8883", "OAuth endpoint".
    name: String,
    files: TlsFiles,
    data_dir: PathBuf,
    purpose: Purpose,
    current: RwLock<Arc<Built>>,
}

/// One build of the configuration.
pub struct Built {
    config: Arc<ServerConfig>,
    chain_check: ChainCheck,
    purpose: Purpose,
}

impl TlsServer {
    /// Builds the configuration from `files`; the error names the server and the file.
    pub fn new(
        name: String,
        files: TlsFiles,
        data_dir: &Path,
        purpose: Purpose,
    ) -> io::Result<Arc<TlsServer>> {
        let built = build(&files, data_dir, purpose)
            .map_err(|e| io::Error::new(e.kind(), format!("{name}: {e}")))?;
        Ok(Arc::new(TlsServer {
            name,
            files,
            data_dir: data_dir.to_path_buf(),
            purpose,
            current: RwLock::new(Arc::new(built)),
        }))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The configuration a new handshake uses.
    pub fn current(&self) -> Arc<Built> {
        self.current.read().clone()
    }

    /// Builds the configuration again from the files, without putting it in force.
    fn rebuild(&self) -> io::Result<Built> {
        build(&self.files, &self.data_dir, self.purpose)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", self.name)))
    }

    /// Whether it asks clients for certificates.
    pub fn asks_for_certificates(&self) -> bool {
        self.files.client_certificates != tessera_config::ClientCertificates::None
    }
}

/// Reads the certificate, key, client CAs and CRLs of every server in `servers` again; new
/// handshakes use them, live connections keep theirs. All or nothing: if one server's files
/// do not build, none changes, and the error names that server and the file.
pub fn reload(servers: &[Arc<TlsServer>]) -> io::Result<()> {
    let rebuilt = servers
        .iter()
        .map(|s| s.rebuild())
        .collect::<io::Result<Vec<_>>>()?;
    for (server, built) in servers.iter().zip(rebuilt) {
        *server.current.write() = Arc::new(built);
    }
    Ok(())
}

fn build(files: &TlsFiles, data_dir: &Path, purpose: Purpose) -> io::Result<Built> {
    let (config, chain_check) = super::server_config(files, data_dir, purpose)?;
    Ok(Built {
        config,
        chain_check,
        purpose,
    })
}

impl Built {
    /// tokio-rustls' acceptor (the OAuth endpoint's HTTPS, where connections are short).
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config.clone())
    }

    /// An MQTT connection's handshake: a stream that holds no buffer while idle.
    pub async fn accept(&self, tcp: TcpStream) -> io::Result<super::TlsStream> {
        super::stream::accept(self.config.clone(), tcp).await
    }

    /// The client certificate of a handshake's peer `chain`, if the client sent one.
    pub fn client_certificate(
        &self,
        chain: Option<&[CertificateDer<'static>]>,
    ) -> Option<Arc<ClientCertificate>> {
        let chain = chain?;
        let leaf = chain.first()?;
        // An MQTT listener's handshake checked the chain; the OAuth endpoint's `optional`
        // did not.
        let chained = match self.purpose {
            Purpose::Mqtt => true,
            Purpose::OAuth => self.chain_check.chains(chain),
        };
        ClientCertificate::from_der(leaf, chained).map(Arc::new)
    }
}
