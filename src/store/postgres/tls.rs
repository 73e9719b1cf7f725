//! TLS to PostgreSQL, set by the URL's `sslmode` and `sslrootcert` the way libpq reads them:
//!
//! | `sslmode` | connection | server certificate |
//! |---|---|---|
//! | `disable` | plain TCP | — |
//! | `prefer` (default) | TLS when the server offers it, else plain | not checked |
//! | `require` | TLS or no connection | not checked |
//! | `verify-ca` | TLS or no connection | signed by `sslrootcert` |
//! | `verify-full` | TLS or no connection | signed by `sslrootcert`, and names the host |
//!
//! As with libpq, giving `sslrootcert` to `prefer` or `require` makes them check the chain too.
//! Without a checked certificate TLS keeps the traffic from being read on the wire, not a
//! machine in the middle from posing as the database: over a network, use `verify-full`.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::store::StoreError;

/// What the URL asks of the connection's security.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// How the certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    Nothing,
    Chain,
    ChainAndName,
}

/// The connection settings of `url` and the TLS connector that goes with them.
pub(super) fn connect_config(
    url: &str,
) -> Result<(tokio_postgres::Config, MakeRustlsConnect), StoreError> {
    let invalid = |e: String| StoreError::Database(format!("invalid PostgreSQL URL: {e}"));
    let (rest, mode, root_cert) = take_tls_params(url).map_err(invalid)?;
    let mut config: tokio_postgres::Config = rest
        .parse()
        .map_err(|e: tokio_postgres::Error| invalid(e.to_string()))?;
    config.ssl_mode(match mode {
        Mode::Disable => SslMode::Disable,
        Mode::Prefer => SslMode::Prefer,
        Mode::Require | Mode::VerifyCa | Mode::VerifyFull => SslMode::Require,
    });
    let check = match (mode, &root_cert) {
        (Mode::VerifyFull, _) => Check::ChainAndName,
        (Mode::VerifyCa, _) | (_, Some(_)) => Check::Chain,
        _ => Check::Nothing,
    };
    let roots = match root_cert {
        Some(path) => Some(load_roots(&path)?),
        None if check != Check::Nothing => {
            return Err(invalid(
                "sslmode=verify-ca and verify-full need sslrootcert=<file with the CA's PEM \
                 certificate>"
                    .into(),
            ));
        }
        None => None,
    };
    Ok((config, MakeRustlsConnect::new(client_config(check, roots)?)))
}

/// Splits `sslmode` and `sslrootcert` off the URL's query (tokio-postgres knows neither
/// `verify-ca`, `verify-full` nor `sslrootcert`), and returns the rest of the URL.
fn take_tls_params(url: &str) -> Result<(String, Mode, Option<String>), String> {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, query),
        None => (url, ""),
    };
    let mut mode = Mode::Prefer;
    let mut root_cert = None;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_encoding::percent_decode_str(value)
            .decode_utf8()
            .map_err(|_| format!("{value:?} is not UTF-8 once decoded"))?;
        match key {
            "sslmode" => {
                mode = match value.as_ref() {
                    "disable" => Mode::Disable,
                    "prefer" => Mode::Prefer,
                    "require" => Mode::Require,
                    "verify-ca" => Mode::VerifyCa,
                    "verify-full" => Mode::VerifyFull,
                    other => {
                        return Err(format!(
                            "sslmode={other:?} is not one of disable, prefer, require, \
                             verify-ca, verify-full"
                        ));
                    }
                }
            }
            "sslrootcert" => root_cert = Some(value.into_owned()),
            _ => kept.push(pair),
        }
    }
    let rest = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, mode, root_cert))
}

fn load_roots(path: &str) -> Result<RootCertStore, StoreError> {
    let error = |detail: String| StoreError::Database(format!("sslrootcert {path}: {detail}"));
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path).map_err(|e| error(e.to_string()))?;
    for cert in certs {
        let cert = cert.map_err(|e| error(e.to_string()))?;
        roots.add(cert).map_err(|e| error(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(error("no PEM certificate in the file".into()));
    }
    Ok(roots)
}

fn client_config(check: Check, roots: Option<RootCertStore>) -> Result<ClientConfig, StoreError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls_error = |e: rustls::Error| StoreError::Database(format!("TLS setup: {e}"));
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(tls_error)?;
    let verifier: Arc<dyn ServerCertVerifier> = match (check, roots) {
        (Check::Nothing, _) | (_, None) => Arc::new(NoCertificateCheck {
            algorithms: provider.signature_verification_algorithms,
        }),
        (check, Some(roots)) => {
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| StoreError::Database(format!("TLS setup: {e}")))?;
            if check == Check::ChainAndName {
                webpki
            } else {
                Arc::new(ChainOnly(webpki))
            }
        }
    };
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// `prefer` and `require` without `sslrootcert`: any certificate, as libpq does. The handshake's
/// signatures are still checked, so the session is bound to whoever holds the presented key.
#[derive(Debug)]
struct NoCertificateCheck {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for NoCertificateCheck {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to `sslrootcert`; the name in the certificate may be any.
/// rustls checks the name only once the chain holds, so a name error means the chain is good.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_are_taken_off_the_url() {
        let (rest, mode, root) = take_tls_params(
            "postgres://u:p@db:5432/a?application_name=x&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem",
        )
        .unwrap();
        assert_eq!(rest, "postgres://u:p@db:5432/a?application_name=x");
        assert_eq!(mode, Mode::VerifyFull);
        assert_eq!(root.as_deref(), Some("/etc/ca.pem"));

        let (rest, mode, root) = take_tls_params("postgres://db/a").unwrap();
        assert_eq!(
            (rest.as_str(), mode, root),
            ("postgres://db/a", Mode::Prefer, None)
        );

        let (rest, mode, _) = take_tls_params("postgres://db/a?sslmode=disable").unwrap();
        assert_eq!((rest.as_str(), mode), ("postgres://db/a", Mode::Disable));
    }

    #[test]
    fn unknown_modes_and_missing_roots_are_refused_clearly() {
        let error = take_tls_params("postgres://db/a?sslmode=allow").unwrap_err();
        assert!(error.contains("verify-full"), "{error}");
        let Err(error) = connect_config("postgres://db/a?sslmode=verify-full") else {
            panic!("verify-full without a root certificate must be refused");
        };
        assert!(error.to_string().contains("sslrootcert"), "{error}");
        let Err(error) = connect_config("postgres://db/a?sslmode=require&sslrootcert=/nonexistent")
        else {
            panic!("a missing root certificate file must be refused");
        };
        assert!(error.to_string().contains("/nonexistent"), "{error}");
    }
}
