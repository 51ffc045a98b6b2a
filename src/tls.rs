//! TLS termination with rustls: ALPN h2 + http/1.1, and SNI choosing among the listener's
//! certificates (the first is the default for clients that send no or an unknown name); and
//! the client side, for pools that reach their backends over TLS.

use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::ServerName;
use tokio_rustls::TlsAcceptor;

use crate::config::CertificatePair;

/// Picks the certificate whose names cover the SNI name.
#[derive(Debug)]
struct SniResolver {
    keys: Vec<Arc<CertifiedKey>>,
}

fn covers(key: &CertifiedKey, name: &ServerName<'_>) -> bool {
    key.cert.first().is_some_and(|leaf| {
        webpki::EndEntityCert::try_from(leaf)
            .is_ok_and(|ee| ee.verify_is_valid_for_subject_name(name).is_ok())
    })
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let by_name = hello
            .server_name()
            .and_then(|n| ServerName::try_from(n).ok())
            .and_then(|n| self.keys.iter().find(|k| covers(k, &n)));
        by_name.or_else(|| self.keys.first()).cloned()
    }
}

/// Builds the acceptor for one listener's certificates.
pub fn acceptor(pairs: &[CertificatePair]) -> Result<TlsAcceptor, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut keys = Vec::with_capacity(pairs.len());
    for p in pairs {
        let signing = provider
            .key_provider
            .load_private_key(p.key.clone_key())
            .map_err(|e| format!("{}: unusable private key: {e}", p.cert_path.display()))?;
        keys.push(Arc::new(CertifiedKey::new(p.chain.clone(), signing)));
    }
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver { keys }));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}

/// How the backends' certificates are checked.
pub enum Roots {
    /// Against these CAs.
    Cas(Vec<rustls_pki_types::CertificateDer<'static>>),
    /// Against the system's roots.
    System,
    /// Not at all (`verify: false`): any certificate is taken, but the handshake's
    /// signatures are still checked.
    Unverified,
}

/// The rustls client settings for a pool's backends: its roots, an optional client
/// certificate (mutual TLS), and the ALPN protocols to offer.
pub fn client_config(
    roots: &Roots,
    client_cert: Option<&CertificatePair>,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match roots {
        Roots::Unverified => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider))),
        Roots::Cas(cas) => builder.with_root_certificates(store(cas.clone())?),
        Roots::System => {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::debug!(error = %e, "a system root certificate could not be read");
            }
            builder.with_root_certificates(store(found.certs)?)
        }
    };
    let mut cfg = match client_cert {
        Some(p) => builder
            .with_client_auth_cert(p.chain.clone(), p.key.clone_key())
            .map_err(|e| format!("{}: {e}", p.cert_path.display()))?,
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}

fn store(
    cas: Vec<rustls_pki_types::CertificateDer<'static>>,
) -> Result<rustls::RootCertStore, String> {
    let mut store = rustls::RootCertStore::empty();
    let (_, bad) = store.add_parsable_certificates(cas);
    if store.is_empty() {
        return Err(format!(
            "no usable CA certificate ({bad} could not be parsed)"
        ));
    }
    Ok(store)
}

/// `verify: false`: takes any certificate; signatures are still checked with the provider.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
