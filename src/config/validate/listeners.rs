//! `listeners`: names, addresses and TLS certificates (read from their PEM files).

use std::collections::HashSet;
use std::path::Path;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::Errors;
use crate::config::raw::RawConfig;
use crate::config::{CertificatePair, ListenerConfig};

/// Validates `listeners`; `base` resolves relative certificate paths.
pub(super) fn validate(e: &mut Errors<'_>, raw: &RawConfig, base: &Path) -> Vec<ListenerConfig> {
    if raw.listeners.is_empty() {
        e.push("listeners", "at least one listener is required");
    }
    let mut listeners = Vec::new();
    let mut names = HashSet::new();
    let mut addrs = HashSet::new();
    for (i, l) in raw.listeners.iter().enumerate() {
        let p = format!("listeners[{i}]");
        if l.name.trim().is_empty() {
            e.push(format!("{p}.name"), "must not be empty");
        } else if !names.insert(l.name.as_str()) {
            e.push(
                format!("{p}.name"),
                format!("duplicate listener name {:?}", l.name),
            );
        }
        let address = e.addr(&format!("{p}.address"), &l.address);
        if let Some(a) = address {
            if a.port() != 0 && !addrs.insert(a) {
                e.push(
                    format!("{p}.address"),
                    format!("address {a} is used by another listener"),
                );
            }
        }
        let tls = l.tls.as_ref().map(|t| {
            if t.certificates.is_empty() {
                e.push(
                    format!("{p}.tls.certificates"),
                    "at least one certificate is required",
                );
            }
            let mut pairs = Vec::new();
            for (j, c) in t.certificates.iter().enumerate() {
                let cp = format!("{p}.tls.certificates[{j}]");
                let chain = read_certs(e, &format!("{cp}.cert"), base, &c.cert);
                let key = read_key(e, &format!("{cp}.key"), base, &c.key);
                if let (Some(chain), Some(key)) = (chain, key) {
                    // A key that does not belong to the certificate fails every handshake.
                    let provider = rustls::crypto::ring::default_provider();
                    if let Err(err) = rustls::sign::CertifiedKey::from_der(
                        chain.clone(),
                        key.clone_key(),
                        &provider,
                    ) {
                        e.push(
                            format!("{cp}.key"),
                            format!("does not fit the certificate {}: {err}", c.cert),
                        );
                        continue;
                    }
                    pairs.push(CertificatePair {
                        cert_path: base.join(&c.cert),
                        chain,
                        key,
                    });
                }
            }
            pairs
        });
        let proxy_protocol = l.proxy_protocol.as_ref().map(|pp| {
            if pp.trusted.is_empty() {
                e.push(
                    format!("{p}.proxy_protocol.trusted"),
                    "name at least one source allowed to send PROXY headers",
                );
            }
            pp.trusted
                .iter()
                .enumerate()
                .filter_map(|(j, t)| e.net(format!("{p}.proxy_protocol.trusted[{j}]"), t))
                .collect()
        });
        if let Some(address) = address {
            listeners.push(ListenerConfig {
                name: l.name.clone(),
                address,
                tls,
                proxy_protocol,
            });
        }
    }

    listeners
}

pub(super) fn read_certs(
    e: &mut Errors<'_>,
    path: &str,
    base: &Path,
    file: &str,
) -> Option<Vec<CertificateDer<'static>>> {
    let full = base.join(file);
    if let Err(err) = std::fs::metadata(&full) {
        e.push(path, format!("cannot read {}: {err}", full.display()));
        return None;
    }
    match CertificateDer::pem_file_iter(&full).and_then(|it| it.collect::<Result<Vec<_>, _>>()) {
        Ok(v) if v.is_empty() => {
            e.push(
                path,
                format!("{}: no PEM certificate found", full.display()),
            );
            None
        }
        Ok(v) => Some(v),
        Err(err) => {
            e.push(path, format!("cannot read {}: {err}", full.display()));
            None
        }
    }
}

pub(super) fn read_key(
    e: &mut Errors<'_>,
    path: &str,
    base: &Path,
    file: &str,
) -> Option<PrivateKeyDer<'static>> {
    let full = base.join(file);
    if let Err(err) = std::fs::metadata(&full) {
        e.push(path, format!("cannot read {}: {err}", full.display()));
        return None;
    }
    match PrivateKeyDer::from_pem_file(&full) {
        Ok(k) => Some(k),
        Err(err) => {
            e.push(
                path,
                format!(
                    "cannot read a PEM private key from {}: {err}",
                    full.display()
                ),
            );
            None
        }
    }
}
