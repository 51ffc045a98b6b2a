//! The admin listener, apart from client traffic: `/metrics` (Prometheus text), `/healthz`,
//! `/readyz` and `/admin/backends` (views of the current snapshot, in `views`), runtime
//! backend control (in `control`), and the cache's purge and warm endpoints (in `cache`). Every POST and DELETE needs `Authorization: Bearer <token>`
//! with the contents of `admin.token_file` (401 when missing or wrong, 403 when no token file
//! is configured); GETs need none.

mod cache;
mod control;
mod views;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::body::Tracked;
use crate::conn::{self, ConnState, TimedIo};
use crate::limit::Shedder;
use crate::services::Services;
use crate::state::SharedState;

/// Largest admin request body.
const MAX_BODY: usize = 1024 * 1024;

/// An admin response.
pub type AdminResponse = Response<Full<Bytes>>;

/// What the admin handlers read.
pub struct Admin {
    /// Current snapshot.
    pub state: SharedState,
    /// Renders the Prometheus exposition.
    pub prometheus: PrometheusHandle,
    /// Process-wide services (the cache).
    pub services: Arc<Services>,
    /// Global limits, for requests the admin API sends through the pipeline (cache warming).
    pub shed: Arc<Shedder>,
    /// A key for comparing tokens in constant time, fresh per process.
    token_key: ring::hmac::Key,
}

impl Admin {
    /// The admin API over these services.
    pub fn new(
        state: SharedState,
        prometheus: PrometheusHandle,
        services: Arc<Services>,
        shed: Arc<Shedder>,
    ) -> Result<Self, String> {
        let rng = ring::rand::SystemRandom::new();
        let token_key = ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &rng)
            .map_err(|_| "cannot generate a random key".to_owned())?;
        Ok(Self {
            state,
            prometheus,
            services,
            shed,
            token_key,
        })
    }
}

/// Serves the admin API on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>, shutdown: CancellationToken) {
    loop {
        let Some((stream, peer)) = crate::server::accept(&listener, &shutdown, "admin").await
        else {
            break;
        };
        let admin = Arc::clone(&admin);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            // The same head, idle and send timers as client connections.
            let limits = &admin.state.load().limits;
            let timers = conn::Timers {
                header_read: limits.header_read_timeout,
                keepalive: limits.keepalive_timeout,
                send: limits.send_timeout,
            };
            let state = ConnState::new();
            let io = TimedIo::new(stream, Arc::clone(&state), timers, false);
            let st = Arc::clone(&state);
            let svc = service_fn(move |req| {
                let admin = Arc::clone(&admin);
                let inflight = st.request();
                async move {
                    let resp = admin.handle(req, peer).await;
                    Ok::<_, Infallible>(resp.map(|b| Tracked::new(b, inflight)))
                }
            });
            let c = http1::Builder::new().serve_connection(TokioIo::new(io), svc);
            tokio::pin!(c);
            if let Err(e) = conn::watch(c, &state, timers.keepalive, &shutdown).await {
                tracing::debug!(error = %e, "admin connection error");
            }
        });
    }
}

/// A JSON response.
pub(crate) fn reply(status: StatusCode, v: serde_json::Value) -> AdminResponse {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, code: &str, message: &str) -> AdminResponse {
    reply(status, json!({"error": code, "message": message}))
}

impl Admin {
    /// Routes one admin request.
    pub async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> AdminResponse {
        let path = req.uri().path().to_owned();
        match *req.method() {
            Method::GET if Self::is_control(&path) => {
                self.wait_drained(&path, req.uri().query()).await
            }
            Method::GET if path == "/admin/capacity" => self.capacity(req.uri().query()),
            Method::GET | Method::HEAD => self.get(&path),
            Method::DELETE if Self::is_control(&path) => {
                if let Some(denied) = self.refuse(req.headers()) {
                    tracing::warn!(%peer, path, "admin request refused: {}", denied.status());
                    return denied;
                }
                self.clear(&path, peer)
            }
            Method::POST => {
                if let Some(denied) = self.refuse(req.headers()) {
                    tracing::warn!(%peer, path, "admin request refused: {}", denied.status());
                    return denied;
                }
                let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                    Ok(b) => b.to_bytes(),
                    Err(_) => {
                        return error(
                            StatusCode::BAD_REQUEST,
                            "bad_body",
                            "the request body could not be read (at most 1 MiB)",
                        )
                    }
                };
                match path.as_str() {
                    "/admin/cache/purge" => self.purge(&body, peer).await,
                    "/admin/cache/warm" => self.warm(&body, peer).await,
                    p if Self::is_control(p) => self.control(p, &body, peer),
                    _ => error(StatusCode::NOT_FOUND, "not_found", "no such endpoint"),
                }
            }
            _ => error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "use GET, or POST (and DELETE) for actions",
            ),
        }
    }

    fn get(&self, path: &str) -> AdminResponse {
        match path {
            "/metrics" => {
                self.services.cache.memory.refresh_gauges();
                let mut r = Response::new(Full::new(Bytes::from(self.prometheus.render())));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                r
            }
            "/healthz" => reply(StatusCode::OK, json!({"status": "ok"})),
            "/readyz" => self.readyz(),
            "/admin/backends" => self.backends(),
            _ => error(StatusCode::NOT_FOUND, "not_found", "no such endpoint"),
        }
    }

    /// Checks the bearer token of a POST, comparing in constant time (both sides go through
    /// an HMAC under a per-process key, whose verification is constant-time); the refusal
    /// when it does not hold.
    fn refuse(&self, h: &http::HeaderMap) -> Option<AdminResponse> {
        let snap = self.state.load();
        let Some(token) = &snap.admin_token else {
            return Some(error(
                StatusCode::FORBIDDEN,
                "forbidden",
                "admin actions are off: set admin.token_file",
            ));
        };
        let presented = h
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .unwrap_or_default();
        let expected = ring::hmac::sign(&self.token_key, &token.0);
        match ring::hmac::verify(&self.token_key, presented, expected.as_ref()) {
            Ok(()) => None,
            Err(_) => {
                let mut r = error(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "send Authorization: Bearer <the contents of admin.token_file>",
                );
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"sandgate-admin\""),
                );
                Some(r)
            }
        }
    }
}
