//! A device PKI made in the test with rcgen: a CA, certificates it issues (a Common Name, a
//! DNS name), a CRL revoking some of them, and self-signed certificates; every file PEM in the
//! test's own directory, keys 0600.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CertifiedIssuer,
    DistinguishedName, DnType, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams,
    SerialNumber,
};
use sha2::{Digest, Sha256};

pub struct Ca {
    dir: PathBuf,
    name: String,
    issuer: CertifiedIssuer<'static, KeyPair>,
    /// The CA certificate (PEM): what `client_ca` names.
    pub cert: PathBuf,
    next_serial: std::cell::Cell<u64>,
}

/// A certificate and its key on disk.
pub struct Device {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub serial: u64,
    /// RFC 8705 `x5t#S256` of the certificate.
    pub thumbprint: String,
}

fn write_private(path: &Path, pem: &str) {
    std::fs::write(path, pem).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
}

fn thumbprint(der: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(der))
}

impl Ca {
    pub fn new(dir: &Path, name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let cert = dir.join(format!("{name}.pem"));
        std::fs::write(&cert, issuer.pem()).unwrap();
        Ca {
            dir: dir.to_path_buf(),
            name: name.to_string(),
            issuer,
            cert,
            next_serial: std::cell::Cell::new(100),
        }
    }

    /// A client certificate with Common Name `cn` and, if given, a SAN DNS name.
    pub fn issue(&self, cn: &str, dns: Option<&str>) -> Device {
        let serial = self.next_serial.get();
        self.next_serial.set(serial + 1);
        let mut params =
            CertificateParams::new(dns.map(str::to_string).into_iter().collect::<Vec<_>>())
                .unwrap();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        params.serial_number = Some(SerialNumber::from(serial));
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let base = format!("{}-{cn}-{serial}", self.name);
        let (cert_path, key_path) = (
            self.dir.join(format!("{base}.pem")),
            self.dir.join(format!("{base}.key")),
        );
        std::fs::write(&cert_path, cert.pem()).unwrap();
        write_private(&key_path, &key.serialize_pem());
        Device {
            cert: cert_path,
            key: key_path,
            serial,
            thumbprint: thumbprint(cert.der()),
        }
    }

    /// A server certificate for `host` (a DNS name in its SAN), for a TLS server in a test.
    pub fn issue_server(&self, host: &str) -> Device {
        let serial = self.next_serial.get();
        self.next_serial.set(serial + 1);
        let mut params = CertificateParams::new(vec![host.to_string()]).unwrap();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, host);
        params.distinguished_name = dn;
        params.serial_number = Some(SerialNumber::from(serial));
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (cert_path, key_path) = (
            self.dir.join(format!("{}-server-{serial}.pem", self.name)),
            self.dir.join(format!("{}-server-{serial}.key", self.name)),
        );
        std::fs::write(&cert_path, cert.pem()).unwrap();
        write_private(&key_path, &key.serialize_pem());
        Device {
            cert: cert_path,
            key: key_path,
            serial,
            thumbprint: thumbprint(cert.der()),
        }
    }

    /// A CRL of this CA revoking `devices`, written as PEM.
    pub fn crl(&self, devices: &[&Device]) -> PathBuf {
        let now = time::OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            this_update: now - time::Duration::hours(1),
            next_update: now + time::Duration::days(30),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: devices
                .iter()
                .map(|d| RevokedCertParams {
                    serial_number: SerialNumber::from(d.serial),
                    revocation_time: now - time::Duration::minutes(5),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.issuer).unwrap();
        let path = self.dir.join(format!("{}.crl", self.name));
        std::fs::write(&path, crl.pem().unwrap()).unwrap();
        path
    }
}

/// A self-signed client certificate (RFC 8705's `self_signed_tls_client_auth`).
pub fn self_signed(dir: &Path, cn: &str) -> Device {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (cert_path, key_path) = (dir.join(format!("{cn}.pem")), dir.join(format!("{cn}.key")));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    write_private(&key_path, &key.serialize_pem());
    Device {
        cert: cert_path,
        key: key_path,
        serial: 0,
        thumbprint: thumbprint(cert.der()),
    }
}

/// A rustls client configuration trusting `server_ca`, presenting `device` if given.
pub fn client_config(
    server_ca: &Path,
    device: Option<&Device>,
) -> std::sync::Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(server_ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match device {
        Some(d) => {
            let chain = CertificateDer::pem_file_iter(&d.cert)
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_file(&d.key).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    std::sync::Arc::new(config)
}
