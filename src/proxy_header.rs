//! The PROXY protocol (v1 text, v2 binary; parsed with `ppp`) on listeners behind an L4
//! balancer: the header's source address becomes the client's everywhere (forwarding
//! headers, rate-limit keys, `client_ip` affinity, geo, the access log).
//!
//! Only sources in `trusted` may send one, and every connection from them must start with
//! one; anything else (an untrusted source, a missing or malformed header, or one that takes
//! longer than `limits.header_read_timeout`) is closed and counted in
//! `sandgate_proxy_protocol_rejected_total{listener,reason}`.
//!
//! The header is read with `peek` first, then exactly its length is consumed, so no byte of
//! what follows (a TLS hello, an HTTP/2 preface) is taken.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ppp::{HeaderResult, PartialResult};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Longest header taken (v1 is at most 107 bytes; v2 carries TLVs).
const MAX_HEADER: usize = 4096;
/// How a v1 header starts.
const V1_SIGNATURE: &[u8] = b"PROXY ";
/// The longest v1 header.
const V1_MAX: usize = 107;
/// How a v2 header starts.
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
/// Pause between looks at a header that arrived in pieces.
const PIECES_EVERY: Duration = Duration::from_millis(5);

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// The source is not trusted to send a header.
    Untrusted,
    /// No valid header.
    Malformed,
    /// The header did not come in time.
    Timeout,
    /// The client closed or the read failed.
    Closed,
}

impl Rejected {
    /// The `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejected::Untrusted => "untrusted",
            Rejected::Malformed => "malformed",
            Rejected::Timeout => "timeout",
            Rejected::Closed => "closed",
        }
    }
}

/// Reads the PROXY header of a connection from `peer`, by `deadline`. Returns the client's
/// address, or the peer's for a header that carries none (`LOCAL`, `UNKNOWN`: the
/// balancer's own checks).
pub async fn read(
    stream: &mut TcpStream,
    peer: SocketAddr,
    trusted: &[ipnet::IpNet],
    deadline: Instant,
) -> Result<SocketAddr, Rejected> {
    if !trusted.iter().any(|n| n.contains(&peer.ip())) {
        return Err(Rejected::Untrusted);
    }
    let mut buf = vec![0u8; MAX_HEADER];
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Err(_) => return Err(Rejected::Timeout),
            Ok(Err(_)) | Ok(Ok(0)) => return Err(Rejected::Closed),
            Ok(Ok(n)) => n,
        };
        // Neither signature: no header at all (ppp would wait for more of a v1 line).
        let got = &buf[..n];
        let starts = |sig: &[u8]| got[..n.min(sig.len())] == sig[..n.min(sig.len())];
        if !starts(V1_SIGNATURE) && !starts(V2_SIGNATURE) {
            return Err(Rejected::Malformed);
        }
        let parsed = HeaderResult::parse(got);
        if parsed.is_incomplete() {
            // A v1 line is complete at its CRLF, and never longer than 107 bytes.
            let v1_done = starts(V1_SIGNATURE)
                && (n >= V1_MAX || memchr::memmem::find(got, b"\r\n").is_some());
            if n == buf.len() || v1_done {
                return Err(Rejected::Malformed);
            }
            // The rest is on its way: look again shortly (peek leaves the socket readable).
            if Instant::now() + PIECES_EVERY >= deadline {
                return Err(Rejected::Timeout);
            }
            tokio::time::sleep(PIECES_EVERY).await;
            continue;
        }
        let (len, source) = match parsed {
            HeaderResult::V1(Ok(h)) => (h.header.len(), v1_source(&h.addresses)),
            HeaderResult::V2(Ok(h)) => (h.len(), v2_source(&h)),
            HeaderResult::V1(Err(_)) | HeaderResult::V2(Err(_)) => return Err(Rejected::Malformed),
        };
        let mut header = vec![0u8; len];
        match tokio::time::timeout_at(deadline, stream.read_exact(&mut header)).await {
            Ok(Ok(_)) => return Ok(source.unwrap_or(peer)),
            Ok(Err(_)) => return Err(Rejected::Closed),
            Err(_) => return Err(Rejected::Timeout),
        }
    }
}

fn v1_source(a: &ppp::v1::Addresses) -> Option<SocketAddr> {
    match a {
        ppp::v1::Addresses::Tcp4(a) => {
            Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
        }
        ppp::v1::Addresses::Tcp6(a) => {
            Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
        }
        ppp::v1::Addresses::Unknown => None,
    }
}

fn v2_source(h: &ppp::v2::Header<'_>) -> Option<SocketAddr> {
    if h.command == ppp::v2::Command::Local {
        return None;
    }
    match &h.addresses {
        ppp::v2::Addresses::IPv4(a) => {
            Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
        }
        ppp::v2::Addresses::IPv6(a) => {
            Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
        }
        ppp::v2::Addresses::Unix(_) | ppp::v2::Addresses::Unspecified => None,
    }
}
