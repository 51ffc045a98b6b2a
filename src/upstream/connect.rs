//! Opening a connection to a backend: TCP within the connect timeout, `TCP_NODELAY`, then TLS
//! when the pool asks for it (its server name, its roots, ALPN), and which HTTP version to
//! speak on it.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::config::{Transport, UpstreamProtocol};

/// A connection to a backend, plain or TLS.
pub enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<TlsStream<TcpStream>>),
}

/// An open connection and the protocol to speak on it.
pub struct Opened {
    /// The connection.
    pub stream: Stream,
    /// Speak HTTP/2 on it (the pool's choice, or ALPN's with `protocol: auto`).
    pub h2: bool,
}

/// Opens a connection to `addr` as `t` says, within `timeout`. `http1_only` asks for an
/// HTTP/1.1 connection whatever the pool speaks (upgrades switch protocols over HTTP/1.1).
/// The error says why, for the log.
pub async fn open(
    addr: SocketAddr,
    t: &Transport,
    timeout: Duration,
    http1_only: bool,
) -> Result<Opened, String> {
    let work = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(backend = %addr, error = %e, "set_nodelay failed");
        }
        let Some(tls) = &t.tls else {
            let h2 = !http1_only && t.protocol == UpstreamProtocol::Http2;
            return Ok(Opened {
                stream: Stream::Plain(tcp),
                h2,
            });
        };
        let name = tls
            .server_name
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
        let config = if http1_only {
            &tls.config_http1
        } else {
            &tls.config
        };
        let stream = TlsConnector::from(std::sync::Arc::clone(config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?;
        let alpn_h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        let h2 = !http1_only
            && match t.protocol {
                UpstreamProtocol::Http1 => false,
                UpstreamProtocol::Http2 => true,
                UpstreamProtocol::Auto => alpn_h2,
            };
        Ok(Opened {
            stream: Stream::Tls(Box::new(stream)),
            h2,
        })
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(format!("connect timed out after {timeout:?}")),
    }
}

impl Stream {
    /// Pending (and woken later) when a read would find nothing for sure: a plain socket
    /// that is not readable. A TLS stream may hold decrypted bytes, so it is always worth a
    /// read.
    pub fn poll_maybe_readable(&self, cx: &mut Context<'_>) -> Poll<()> {
        match self {
            Stream::Plain(s) => s.poll_read_ready(cx).map(|_| ()),
            Stream::Tls(_) => Poll::Ready(()),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
