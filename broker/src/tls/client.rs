//! Client certificates: what a TLS server asks of them, and what a verified one says.
//!
//! - On an MQTT listener (`Purpose::Mqtt`), `optional` and `required` verify the chain to
//!   `client_ca` in the handshake (rustls' `WebPkiClientVerifier`), with the CRLs checked for
//!   the client's own certificate (its issuer's CRL must be among them once any is given, as
//!   OpenSSL's CRL check in mosquitto); `optional` also lets a client without one in.
//! - On the OAuth endpoint (`Purpose::OAuth`), `required` is the same, but `optional` takes any
//!   certificate whose key the client proves it holds, self-signed ones too (RFC 8705 §2.2:
//!   `self_signed_tls_client_auth`, and binding a token to a certificate needs only that);
//!   whether it also chains to `client_ca` is checked after the handshake ([`ChainCheck`])
//!   and said in [`ClientCertificate::chained`].
//!
//! A verified certificate becomes a [`ClientCertificate`]: its RFC 8705 thumbprint and the
//! names a login or a registration can match. Nothing here logs a certificate.

use std::fmt::Write as _;
use std::io;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{NoClientAuth, WebPkiClientVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};
use tessera_config::{ClientCertificates, TlsFiles};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use super::{invalid, provider};

/// Which server a TLS configuration is for: they take client certificates differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Mqtt,
    OAuth,
}

/// A client certificate the TLS handshake verified, as logins and token bindings see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertificate {
    /// SHA-256 of the certificate's DER (RFC 8705's `x5t#S256`, before base64url).
    pub sha256: [u8; 32],
    /// The subject as RFC 4514 writes it (`CN=dev-1,O=Example`): most specific first.
    pub subject: String,
    /// The subject's Common Name, if it has one.
    pub common_name: Option<String>,
    /// Subject Alternative Names: DNS names and URIs, in the certificate's order.
    pub dns_names: Vec<String>,
    pub uris: Vec<String>,
    /// It chains to the server's `client_ca` and is not revoked: always on an MQTT listener;
    /// on the OAuth endpoint's `optional`, false for a self-signed or unknown one.
    pub chained: bool,
}

impl ClientCertificate {
    /// Reads a certificate's names; `None` if it does not parse as X.509.
    pub fn from_der(der: &[u8], chained: bool) -> Option<ClientCertificate> {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let subject = cert.subject();
        let common_name = subject
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string);
        let (mut dns_names, mut uris) = (Vec::new(), Vec::new());
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(d) => dns_names.push(d.to_string()),
                    GeneralName::URI(u) => uris.push(u.to_string()),
                    _ => {}
                }
            }
        }
        Some(ClientCertificate {
            sha256: Sha256::digest(der).into(),
            subject: rfc4514(subject),
            common_name,
            dns_names,
            uris,
            chained,
        })
    }

    /// The RFC 8705 `x5t#S256` value: base64url of the SHA-256, without padding.
    pub fn thumbprint(&self) -> String {
        thumbprint(&self.sha256)
    }
}

/// base64url without padding of a SHA-256 (RFC 8705 §3.1).
pub fn thumbprint(sha256: &[u8; 32]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha256)
}

/// The `x5t#S256` thumbprint of the first certificate in a PEM file (a device's certificate:
/// `tessera token issue --bind-cert`, `client add-mtls --self-signed`).
pub fn thumbprint_of_pem(path: &std::path::Path) -> io::Result<String> {
    let der = CertificateDer::pem_file_iter(path)
        .map_err(|e| invalid(format!("{}: {e}", path.display())))?
        .next()
        .ok_or_else(|| {
            invalid(format!(
                "{}: no PEM certificate in the file",
                path.display()
            ))
        })?
        .map_err(|e| invalid(format!("{}: {e}", path.display())))?;
    if X509Certificate::from_der(&der).is_err() {
        return Err(invalid(format!(
            "{}: not an X.509 certificate",
            path.display()
        )));
    }
    Ok(thumbprint(&Sha256::digest(&der).into()))
}

/// A distinguished name as RFC 4514 writes it: the RDNs last to first, `,` between them,
/// `+` within one, short attribute names where there is one, special characters escaped.
fn rfc4514(name: &x509_parser::x509::X509Name<'_>) -> String {
    let registry = x509_parser::objects::oid_registry();
    let mut out = String::new();
    let rdns: Vec<_> = name.iter_rdn().collect();
    for (i, rdn) in rdns.iter().rev().enumerate() {
        if i > 0 {
            out.push(',');
        }
        for (j, attr) in rdn.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            let oid = attr.attr_type();
            match x509_parser::objects::oid2abbrev(oid, registry) {
                Ok(abbrev) => out.push_str(abbrev),
                Err(_) => out.push_str(&oid.to_id_string()),
            }
            out.push('=');
            match attr.as_str() {
                Ok(v) => escape_value(&mut out, v),
                Err(_) => {
                    out.push('#');
                    for b in attr.attr_value().as_bytes() {
                        let _ = write!(out, "{b:02x}");
                    }
                }
            }
        }
    }
    out
}

fn escape_value(out: &mut String, v: &str) {
    let last = v.chars().count().saturating_sub(1);
    for (i, c) in v.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == ' ' || c == '#'))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        if c == '\0' {
            out.push_str("\\00");
        } else {
            out.push(c);
        }
    }
}

/// After the handshake, whether a certificate chains to `client_ca` (the OAuth endpoint's
/// `optional` takes any certificate in the handshake); `None`: no CA configured.
#[derive(Debug, Clone, Default)]
pub(crate) struct ChainCheck(Option<Arc<dyn ClientCertVerifier>>);

impl ChainCheck {
    pub(crate) fn chains(&self, chain: &[CertificateDer<'_>]) -> bool {
        let (Some(v), Some((leaf, rest))) = (&self.0, chain.split_first()) else {
            return false;
        };
        v.verify_client_cert(leaf, rest, UnixTime::now()).is_ok()
    }
}

/// The handshake's verifier for `files`, and the check that follows it.
pub(crate) fn verifier(
    files: &TlsFiles,
    purpose: Purpose,
) -> io::Result<(Arc<dyn ClientCertVerifier>, ChainCheck)> {
    let mode = files.client_certificates;
    if mode == ClientCertificates::None {
        return Ok((Arc::new(NoClientAuth), ChainCheck::default()));
    }
    let webpki = |optional: bool| -> io::Result<Option<Arc<dyn ClientCertVerifier>>> {
        let Some(ca) = &files.client_ca else {
            return Ok(None);
        };
        let mut roots = RootCertStore::empty();
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca)
            .and_then(|it| it.collect::<Result<_, _>>())
            .map_err(|e| invalid(format!("{}: {e}", ca.display())))?;
        for c in certs {
            roots
                .add(c)
                .map_err(|e| invalid(format!("{}: {e}", ca.display())))?;
        }
        if roots.is_empty() {
            return Err(invalid(format!(
                "{}: no CA certificate in the file",
                ca.display()
            )));
        }
        let mut crls: Vec<CertificateRevocationListDer<'static>> = Vec::new();
        for path in &files.client_crl {
            let found: Vec<_> = CertificateRevocationListDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<_, _>>())
                .map_err(|e| invalid(format!("{}: {e}", path.display())))?;
            crls.extend(found);
        }
        let mut builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .with_crls(crls)
            .only_check_end_entity_revocation();
        if optional {
            builder = builder.allow_unauthenticated();
        }
        builder
            .build()
            .map(Some)
            .map_err(|e| invalid(format!("client certificates: {e}")))
    };
    let optional = mode == ClientCertificates::Optional;
    match (purpose, optional) {
        (Purpose::OAuth, true) => {
            // In the handshake, any certificate; the chain is checked after it.
            let check = ChainCheck(webpki(false)?);
            Ok((Arc::new(AnyCertificate), check))
        }
        _ => {
            let verifier = webpki(optional)?.ok_or_else(|| {
                invalid("client certificates need `client_ca`, the CAs they chain to".into())
            })?;
            Ok((verifier.clone(), ChainCheck(Some(verifier))))
        }
    }
}

/// Takes any well-formed certificate within its validity period whose key the client proves
/// it holds (the handshake's signature), or none.
#[derive(Debug)]
struct AnyCertificate;

impl ClientCertVerifier for AnyCertificate {
    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let Ok((_, cert)) = X509Certificate::from_der(end_entity) else {
            return Err(rustls::CertificateError::BadEncoding.into());
        };
        let now = now.as_secs() as i64;
        let validity = cert.validity();
        if now < validity.not_before.timestamp() {
            return Err(rustls::CertificateError::NotValidYet.into());
        }
        if now > validity.not_after.timestamp() {
            return Err(rustls::CertificateError::Expired.into());
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = provider().signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, &algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = provider().signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, &algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thumbprint_is_base64url_without_padding() {
        // SHA-256 of "abc" (RFC 4634's test vector), in base64url.
        let sha: [u8; 32] = Sha256::digest(b"abc").into();
        assert_eq!(
            thumbprint(&sha),
            "ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0"
        );
    }

    #[test]
    fn a_certificate_says_its_names_and_its_subject_in_rfc_4514_form() {
        let mut params = rcgen::CertificateParams::new(vec!["dev-1.example".into()]).unwrap();
        params.subject_alt_names.push(rcgen::SanType::URI(
            "spiffe://example/dev-1".try_into().unwrap(),
        ));
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::OrganizationName, "Example, Inc.");
        dn.push(rcgen::DnType::CommonName, "dev-1");
        params.distinguished_name = dn;
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let c = ClientCertificate::from_der(cert.der(), true).unwrap();
        assert_eq!(c.common_name.as_deref(), Some("dev-1"));
        assert_eq!(c.dns_names, ["dev-1.example"]);
        assert_eq!(c.uris, ["spiffe://example/dev-1"]);
        assert_eq!(c.subject, "CN=dev-1,O=Example\\, Inc.");
        assert_eq!(c.sha256, <[u8; 32]>::from(Sha256::digest(cert.der())));
        assert_eq!(c.thumbprint().len(), 43);
        assert!(ClientCertificate::from_der(b"not a certificate", true).is_none());
    }
}
