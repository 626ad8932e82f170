//! TLS servers: the operator's certificate, or a self-signed development certificate for
//! localhost / 127.0.0.1 generated once into `data_dir/tls` and reused; what a server asks of
//! client certificates and what a verified one says (`client.rs`); and [`TlsServer`], which
//! holds one server's configuration and reads its files again on `tessera reload`
//! (`server.rs`); an MQTT listener's connection on rustls' unbuffered API (`stream.rs`). Every configuration is built with the ring provider named explicitly.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use tessera_config::TlsFiles;
use tracing::info;

mod client;
mod server;
mod stream;

pub use client::{ClientCertificate, Purpose, thumbprint, thumbprint_of_pem};
pub use server::{Built, TlsServer, reload};
pub use stream::{TlsHalf, TlsStream};

/// The crypto provider of every TLS configuration here.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds a rustls server configuration from `files`: the operator's certificate and key, or
/// the development certificate, and the client certificates `purpose` takes.
pub(crate) fn server_config(
    files: &TlsFiles,
    data_dir: &Path,
    purpose: Purpose,
) -> io::Result<(Arc<ServerConfig>, client::ChainCheck)> {
    let (cert_path, key_path) = match files.key_pair() {
        Some((c, k)) => (c.to_path_buf(), k.to_path_buf()),
        None => dev_certificate(data_dir)?,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| invalid(format!("{}: {e}", cert_path.display())))?;
    if chain.is_empty() {
        return Err(invalid(format!(
            "{}: no certificate in the file",
            cert_path.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .map_err(|e| invalid(format!("{}: {e}", key_path.display())))?;
    let (verifier, chain_check) = client::verifier(files, purpose)?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| invalid(format!("{}: {e}", cert_path.display())))?;
    Ok((Arc::new(config), chain_check))
}

/// Paths of the development certificate and key, generated if absent.
pub fn dev_certificate(data_dir: &Path) -> io::Result<(PathBuf, PathBuf)> {
    let dir = data_dir.join("tls");
    let cert_path = dir.join("dev-cert.pem");
    let key_path = dir.join("dev-key.pem");
    if !(cert_path.exists() && key_path.exists()) {
        crate::files::private_dir(&dir)?;
        let generated =
            rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
                .map_err(|e| invalid(format!("generating a certificate: {e}")))?;
        write_private(&key_path, generated.signing_key.serialize_pem().as_bytes())?;
        fs::write(&cert_path, generated.cert.pem())?;
        info!(path = %cert_path.display(), "generated a self-signed development certificate");
    }
    let der = CertificateDer::from_pem_file(&cert_path)
        .map_err(|e| invalid(format!("{}: {e}", cert_path.display())))?;
    info!(
        path = %cert_path.display(),
        sha256 = %fingerprint(&der),
        "TLS development certificate (trust this file, or pin this fingerprint)"
    );
    Ok((cert_path, key_path))
}

/// SHA-256 of a certificate's DER, as colon-separated hex (the form browsers and openssl show).
pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)?.write_all(bytes)
}

pub(crate) fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_certificate_is_generated_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let (c1, _) = dev_certificate(dir.path()).unwrap();
        let first = fs::read(&c1).unwrap();
        let (c2, k2) = dev_certificate(dir.path()).unwrap();
        assert_eq!(first, fs::read(&c2).unwrap());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                fs::metadata(&k2).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        server_config(&TlsFiles::default(), dir.path(), Purpose::Mqtt).unwrap();
    }

    #[test]
    fn bad_certificate_file_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let c = dir.path().join("c.pem");
        let k = dir.path().join("k.pem");
        fs::write(&c, "not a pem").unwrap();
        fs::write(&k, "not a pem").unwrap();
        let files = TlsFiles {
            certificate: Some(c),
            private_key: Some(k),
            ..TlsFiles::default()
        };
        let e = server_config(&files, dir.path(), Purpose::Mqtt).unwrap_err();
        assert!(e.to_string().contains("c.pem"), "{e}");
    }
}
