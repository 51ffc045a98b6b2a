//! `pools.NAME.tls` and `pools.NAME.protocol`: how a pool reaches its backends.

use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::Arc;

use super::listeners::{read_certs, read_key};
use super::Errors;
use crate::config::raw::{RawPool, UpstreamProtocol};
use crate::config::{CertificatePair, Transport, UpstreamTls};
use crate::tls::{client_config, Roots};

pub(super) fn validate(
    e: &mut Errors<'_>,
    pp: &str,
    p: &RawPool,
    base: &Path,
    warnings: &mut Vec<String>,
) -> Arc<Transport> {
    let protocol = p.protocol.unwrap_or_default();
    let mut digest = xxhash_rust::xxh3::Xxh3::new();
    protocol.hash(&mut digest);
    if protocol == UpstreamProtocol::Auto && p.tls.is_none() {
        e.push(
            format!("{pp}.protocol"),
            "auto needs tls: ALPN chooses the protocol (use http2 for h2c)",
        );
    }
    let tls = p.tls.as_ref().and_then(|t| {
        let tp = format!("{pp}.tls");
        let verify = t.verify.unwrap_or(true);
        if !verify {
            warnings.push(format!(
                "{tp}.verify: false: backend certificates are not checked, anyone on the path can pose as a backend"
            ));
        }
        let server_name = t.server_name.as_ref().and_then(|n| {
            match rustls_pki_types::ServerName::try_from(n.clone()) {
                Ok(s) => Some(s),
                Err(err) => {
                    e.push(format!("{tp}.server_name"), format!("{n:?}: {err}"));
                    None
                }
            }
        });
        let roots = match (&t.ca_file, verify) {
            (_, false) => Roots::Unverified,
            (Some(f), true) => {
                let cas = read_certs(e, &format!("{tp}.ca_file"), base, f)?;
                for c in &cas {
                    c.as_ref().hash(&mut digest);
                }
                Roots::Cas(cas)
            }
            (None, true) => Roots::System,
        };
        let client_cert = match &t.client_cert {
            None => None,
            Some(c) => {
                let cp = format!("{tp}.client_cert");
                let chain = read_certs(e, &format!("{cp}.cert"), base, &c.cert);
                let key = read_key(e, &format!("{cp}.key"), base, &c.key);
                let (chain, key) = (chain?, key?);
                for c in &chain {
                    c.as_ref().hash(&mut digest);
                }
                key.secret_der().hash(&mut digest);
                Some(CertificatePair {
                    cert_path: base.join(&c.cert),
                    chain,
                    key,
                })
            }
        };
        (t.server_name.as_deref(), verify).hash(&mut digest);
        let alpn: &[&[u8]] = match protocol {
            UpstreamProtocol::Http1 => &[b"http/1.1"],
            UpstreamProtocol::Http2 => &[b"h2"],
            UpstreamProtocol::Auto => &[b"h2", b"http/1.1"],
        };
        let built = client_config(&roots, client_cert.as_ref(), alpn).and_then(|config| {
            let config_http1 = client_config(&roots, client_cert.as_ref(), &[b"http/1.1"])?;
            Ok((config, config_http1))
        });
        match built {
            Ok((config, config_http1)) => Some(UpstreamTls {
                config,
                config_http1,
                server_name,
                ca_file: t.ca_file.as_ref().map(|f| base.join(f)),
                verify,
                client_cert: client_cert.as_ref().map(|c| c.cert_path.clone()),
            }),
            Err(err) => {
                e.push(tp, err);
                None
            }
        }
    });
    Arc::new(Transport {
        tls,
        protocol,
        fingerprint: digest.finish(),
    })
}
