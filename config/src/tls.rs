//! The TLS settings of listeners and the OAuth endpoint: the rules between their fields, and
//! `check_files`, which reads every certificate, key and CRL they name (PEM framing, not the
//! cryptography: the broker's TLS setup does that) so that a wrong path or file is an error
//! naming the configuration's file, line and field before anything binds.

use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use serde_saphyr::{Location, Spanned};

use crate::listener::ClientCertificates;
use crate::login::CertificateLogin;
use crate::{Config, ConfigError};

/// What a PEM file must hold.
#[derive(Clone, Copy)]
enum Pem {
    Certificates,
    PrivateKey,
    Crl,
}

fn read_pem(path: &Path, what: Pem) -> Result<(), String> {
    let shown = path.display();
    let found = match what {
        Pem::Certificates => CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map(|v| v.len()),
        Pem::Crl => CertificateRevocationListDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map(|v| v.len()),
        Pem::PrivateKey => PrivateKeyDer::from_pem_file(path).map(|_| 1),
    }
    .map_err(|e| format!("{shown}: {}", describe(e)))?;
    if found == 0 {
        let kind = match what {
            Pem::Certificates => "no PEM certificate (BEGIN CERTIFICATE)",
            Pem::Crl => "no PEM revocation list (BEGIN X509 CRL)",
            Pem::PrivateKey => "no PEM private key",
        };
        return Err(format!("{shown}: {kind} in the file"));
    }
    Ok(())
}

fn describe(e: rustls_pki_types::pem::Error) -> String {
    match e {
        rustls_pki_types::pem::Error::Io(e) => format!("cannot read: {e}"),
        rustls_pki_types::pem::Error::NoItemsFound => "nothing in PEM form in the file".into(),
        other => format!("not a valid PEM file ({other:?})"),
    }
}

/// One TLS server's fields, named as the configuration names them.
struct Server<'c> {
    name: String,
    at: Location,
    certificate: Option<&'c Spanned<PathBuf>>,
    private_key: Option<&'c Spanned<PathBuf>>,
    mode: ClientCertificates,
    client_ca: Option<&'c Spanned<PathBuf>>,
    client_crl: Option<&'c Spanned<Vec<PathBuf>>>,
}

impl Config {
    fn tls_servers(&self) -> Vec<Server<'_>> {
        let mut servers: Vec<Server<'_>> = self
            .listeners
            .iter()
            .enumerate()
            .map(|(i, l)| Server {
                name: format!("listeners[{i}]"),
                at: l.referenced,
                certificate: l.value.certificate.as_ref(),
                private_key: l.value.private_key.as_ref(),
                mode: l.value.client_certificates,
                client_ca: l.value.client_ca.as_ref(),
                client_crl: l.value.client_crl.as_ref(),
            })
            .collect();
        let o = &self.oauth;
        servers.push(Server {
            name: "oauth".into(),
            at: Location::UNKNOWN,
            certificate: o.certificate.as_ref(),
            private_key: o.private_key.as_ref(),
            mode: o.client_certificates,
            client_ca: o.client_ca.as_ref(),
            client_crl: o.client_crl.as_ref(),
        });
        servers
    }

    fn error(&self, at: Location, message: String) -> ConfigError {
        ConfigError {
            file: self.source.clone(),
            line: at.line(),
            column: at.column(),
            message,
        }
    }

    /// The rules between the TLS fields (no file is read).
    pub(crate) fn validate_tls(&self) -> Result<(), ConfigError> {
        let mut asks = false;
        for (i, s) in self.tls_servers().into_iter().enumerate() {
            let is_oauth = i == self.listeners.len();
            let uses_tls = if is_oauth {
                !self.oauth.plain_http
            } else {
                self.listeners[i].value.transport.uses_tls()
            };
            let first = s.client_ca.map(|c| c.referenced).unwrap_or(s.at);
            if s.mode == ClientCertificates::None {
                if let Some(ca) = s.client_ca {
                    return Err(self.error(
                        ca.referenced,
                        format!(
                            "field `{}.client_ca`: set `client_certificates` to optional or required for it to be used",
                            s.name
                        ),
                    ));
                }
                if let Some(crl) = s.client_crl {
                    return Err(self.error(
                        crl.referenced,
                        format!(
                            "field `{}.client_crl`: set `client_certificates` to optional or required for it to be used",
                            s.name
                        ),
                    ));
                }
                continue;
            }
            if !uses_tls {
                let why = if is_oauth {
                    "a plain HTTP endpoint cannot ask for client certificates"
                } else {
                    "only tls and wss listeners ask for client certificates"
                };
                return Err(self.error(
                    s.at,
                    format!("field `{}.client_certificates`: {why}", s.name),
                ));
            }
            // The endpoint's `optional` takes self-signed certificates (RFC 8705 §2.2) and
            // needs no CA; everything else checks the chain.
            let needs_ca = !(is_oauth && s.mode == ClientCertificates::Optional);
            if needs_ca && s.client_ca.is_none() {
                return Err(self.error(
                    first,
                    format!(
                        "field `{}.client_ca`: `client_certificates: {}` needs the CAs client certificates chain to",
                        s.name,
                        if s.mode == ClientCertificates::Required { "required" } else { "optional" }
                    ),
                ));
            }
            if !is_oauth {
                asks = true;
            }
        }
        if self.auth.certificate_login != CertificateLogin::None && !asks {
            return Err(self.error(
                Location::UNKNOWN,
                "field `auth.certificate_login`: no listener asks for client certificates (`client_certificates`)".into(),
            ));
        }
        Ok(())
    }

    /// Reads every certificate, key and CRL file the TLS servers name, and the CAs of the
    /// token issuers; an error names the configuration's file, line and field, and the file.
    /// `serve` runs it at start; the other commands do not (their user need not read the
    /// server's key).
    pub fn check_files(&self) -> Result<(), ConfigError> {
        for (i, issuer) in self.auth.issuers.iter().enumerate() {
            if let Some(ca) = &issuer.ca {
                read_pem(&ca.value, Pem::Certificates).map_err(|why| {
                    self.error(
                        ca.referenced,
                        format!("field `auth.issuers[{i}].ca`: {why}"),
                    )
                })?;
            }
        }
        for (i, s) in self.tls_servers().into_iter().enumerate() {
            let is_oauth = i == self.listeners.len();
            let used = if is_oauth {
                self.oauth.enabled && !self.oauth.plain_http
            } else {
                self.listeners[i].value.transport.uses_tls()
            };
            if !used {
                continue;
            }
            let check = |field: &str, path: &Spanned<PathBuf>, what: Pem| {
                read_pem(&path.value, what).map_err(|why| {
                    self.error(
                        path.referenced,
                        format!("field `{}.{field}`: {why}", s.name),
                    )
                })
            };
            if let Some(c) = s.certificate {
                check("certificate", c, Pem::Certificates)?;
            }
            if let Some(k) = s.private_key {
                check("private_key", k, Pem::PrivateKey)?;
            }
            if let Some(ca) = s.client_ca {
                check("client_ca", ca, Pem::Certificates)?;
            }
            if let Some(crls) = s.client_crl {
                for path in &crls.value {
                    read_pem(path, Pem::Crl).map_err(|why| {
                        self.error(
                            crls.referenced,
                            format!("field `{}.client_crl`: {why}", s.name),
                        )
                    })?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::Config;

    fn tls_listener(extra: &str) -> String {
        format!("listeners:\n  - type: tls\n    bind: 127.0.0.1:8883\n{extra}")
    }

    #[test]
    fn client_certificate_fields_are_checked_against_each_other() {
        let e = Config::parse(
            "listeners:\n  - type: tcp\n    bind: 127.0.0.1:1\n    client_certificates: required\n    client_ca: /x.pem\n",
            "t.yml",
        )
        .unwrap_err();
        assert!(
            e.message.contains("listeners[0].client_certificates"),
            "{e}"
        );
        assert_eq!(e.line, 2, "{e}");

        let e = Config::parse(
            &tls_listener("    client_certificates: required\n"),
            "t.yml",
        )
        .unwrap_err();
        assert!(e.message.contains("listeners[0].client_ca"), "{e}");

        let e = Config::parse(&tls_listener("    client_ca: /ca.pem\n"), "t.yml").unwrap_err();
        assert!(e.message.contains("client_certificates"), "{e}");
        assert_eq!(e.line, 4, "the client_ca line: {e}");

        let e = Config::parse(
            "oauth:\n  plain_http: true\n  client_certificates: optional\n",
            "t.yml",
        )
        .unwrap_err();
        assert!(e.message.contains("oauth.client_certificates"), "{e}");
        // The endpoint's optional takes self-signed certificates: no CA needed.
        Config::parse("oauth:\n  client_certificates: optional\n", "t.yml").unwrap();

        let e = Config::parse("auth:\n  certificate_login: cn\n", "t.yml").unwrap_err();
        assert!(e.message.contains("auth.certificate_login"), "{e}");
        let ok = tls_listener(
            "    client_certificates: optional\n    client_ca: /ca.pem\nauth:\n  certificate_login: san_dns\n",
        );
        let c = Config::parse(&ok, "t.yml").unwrap();
        assert_eq!(
            c.listeners[0].value.tls_files().client_ca.unwrap(),
            std::path::PathBuf::from("/ca.pem")
        );
    }

    #[test]
    fn a_bad_file_names_the_configuration_line_field_and_file() {
        let dir = std::env::temp_dir().join(format!("tessera-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let not_pem = dir.join("notes.txt");
        std::fs::write(&not_pem, "hello\n").unwrap();
        let missing = dir.join("missing.pem");
        let text = |ca: &std::path::Path| {
            tls_listener(&format!(
                "    client_certificates: required\n    client_ca: {}\n",
                ca.display()
            ))
        };
        let c = Config::parse(&text(&missing), "conf.yml").unwrap();
        let e = c.check_files().unwrap_err();
        assert_eq!((e.file.as_str(), e.line), ("conf.yml", 5), "{e}");
        assert!(e.message.contains("listeners[0].client_ca"), "{e}");
        assert!(e.message.contains("missing.pem"), "{e}");
        let c = Config::parse(&text(&not_pem), "conf.yml").unwrap();
        let e = c.check_files().unwrap_err();
        assert!(e.message.contains("notes.txt"), "{e}");
        let crl = tls_listener(&format!(
            "    client_certificates: required\n    client_ca: /none\n    client_crl: [{}]\n",
            not_pem.display()
        ));
        let e = Config::parse(&crl, "conf.yml")
            .unwrap()
            .check_files()
            .unwrap_err();
        // The CA comes first, and is missing.
        assert!(e.message.contains("client_ca"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
