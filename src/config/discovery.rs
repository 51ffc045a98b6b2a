//! `pools.NAME.discovery`, validated: the pool's backends named by `host:port`, how often
//! they are resolved again, and the file of backends an autoscaler writes (see
//! `crate::discovery` for the runtime side).

use std::path::PathBuf;
use std::time::Duration;

/// A pool's dynamic backends.
#[derive(Debug, Clone, PartialEq)]
pub struct DiscoveryConfig {
    /// Backends given by name, in file order.
    pub names: Vec<NamedBackend>,
    /// Time between two resolutions of the names.
    pub dns_refresh: Duration,
    /// The backends file, if any.
    pub file: Option<PathBuf>,
}

/// A `host:port` backend: every address the name resolves to becomes a backend with these
/// settings.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedBackend {
    /// The name, as written.
    pub host: String,
    /// The port.
    pub port: u16,
    /// Weight of each resolved backend.
    pub weight: u32,
    /// Region label of each resolved backend.
    pub region: Option<String>,
    /// Concurrency cap (the entry's, else the pool's).
    pub max_connections: Option<u32>,
}

/// Splits `host:port` where the host is a DNS name (letters, digits, `-`, `.`, `_`), not an
/// address.
pub fn parse_host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = s.trim().rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    let valid = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        && host.bytes().any(|b| b.is_ascii_alphabetic());
    valid.then(|| (host.to_ascii_lowercase(), port))
}

#[cfg(test)]
mod tests {
    use super::parse_host_port;

    #[test]
    fn host_port() {
        assert_eq!(
            parse_host_port("Sandbox.internal:9001"),
            Some(("sandbox.internal".to_owned(), 9001))
        );
        assert_eq!(
            parse_host_port("localhost:1"),
            Some(("localhost".into(), 1))
        );
        for bad in [
            "1.2.3.4:80",
            "host:0",
            "host",
            "a..b:1",
            ":80",
            "ho st:1",
            "h:99999",
        ] {
            assert_eq!(parse_host_port(bad), None, "{bad}");
        }
    }
}
