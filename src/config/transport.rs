//! How a pool reaches its backends, validated (`pools.NAME.tls` and `pools.NAME.protocol`;
//! see `validate/transport.rs`).

use std::sync::Arc;

use super::UpstreamProtocol;

/// How a pool connects to its backends.
#[derive(Debug)]
pub struct Transport {
    /// TLS to the backends, if any.
    pub tls: Option<UpstreamTls>,
    /// HTTP/1.1, HTTP/2, or ALPN's choice.
    pub protocol: UpstreamProtocol,
    /// A digest of the settings and the files they name: pools whose transport did not
    /// change keep their connections over a reload.
    pub fingerprint: u64,
}

impl PartialEq for Transport {
    fn eq(&self, other: &Self) -> bool {
        self.fingerprint == other.fingerprint
    }
}

/// `pools.NAME.tls`, ready to connect with.
#[derive(Debug)]
pub struct UpstreamTls {
    /// The rustls client settings (roots, client certificate, ALPN for the pool's protocol).
    pub config: Arc<rustls::ClientConfig>,
    /// The same, offering only HTTP/1.1 (for upgrades, which switch over HTTP/1.1).
    pub config_http1: Arc<rustls::ClientConfig>,
    /// The name to verify, instead of the backend's address.
    pub server_name: Option<rustls_pki_types::ServerName<'static>>,
    /// `ca_file`, resolved (None: the system roots).
    pub ca_file: Option<std::path::PathBuf>,
    /// `verify`.
    pub verify: bool,
    /// `client_cert.cert`, resolved.
    pub client_cert: Option<std::path::PathBuf>,
}
