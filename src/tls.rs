//! TLS termination with rustls: ALPN h2 + http/1.1, and SNI choosing among the listener's
//! certificates (the first is the default for clients that send no or an unknown name).

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
