//! Helpers for the cache tests: a caching config, a backend whose responses the test shapes,
//! admin POSTs, and a real `redis-server` on a free loopback port.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;

use super::{client, full, send, spawn_backend, Backend, Got};

/// The admin token the cache configs use (at least 32 bytes).
pub const TOKEN: &str = "test-token-0123456789abcdefghijklmnopqrstuvwxyz";

/// A config with one caching route `api` to pool `p` at `backend`; `route_cache` is extra
/// YAML for the route's `cache` block (flow style, without braces), `top` extra top-level
/// YAML, `pool` extra pool YAML. The admin token file is `token` in the config directory.
pub fn cache_config(backend: SocketAddr, route_cache: &str, pool: &str, top: &str) -> String {
    let sep = if route_cache.is_empty() { "" } else { ", " };
    format!(
        "listeners:\n  - name: public\n    address: 127.0.0.1:0\n\
         admin:\n  address: 127.0.0.1:0\n  token_file: token\n\
         routes:\n  - name: api\n    pool: p\n    cache: {{ enabled: true{sep}{route_cache} }}\n\
         pools:\n  p:\n    backends: [{{ address: {backend} }}]\n{pool}{top}"
    )
}

/// Starts sandgate with `yaml` and the admin token file beside it.
pub fn spawn_caching_proxy(yaml: &str) -> super::Proxy {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).expect("token file");
    super::spawn_proxy_in(dir, yaml)
}

/// What a shaped backend answers: status, headers and body, changeable while it runs.
#[derive(Clone)]
pub struct Shape {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
    pub delay: Duration,
}

impl Shape {
    pub fn ok(headers: &[(&'static str, &str)], body: &str) -> Self {
        Self {
            status: 200,
            headers: headers.iter().map(|(k, v)| (*k, v.to_string())).collect(),
            body: Bytes::from(body.to_owned()),
            delay: Duration::ZERO,
        }
    }
}

/// A backend that answers with the current [`Shape`], appends each request's interesting
/// headers to `seen`, and counts requests in flight (and the most at once).
pub struct Shaped {
    pub backend: Backend,
    pub shape: Arc<Mutex<Shape>>,
    pub seen: Arc<Mutex<Vec<http::HeaderMap>>>,
    pub max_inflight: Arc<AtomicUsize>,
}

impl Shaped {
    pub fn set(&self, s: Shape) {
        *self.shape.lock().unwrap() = s;
    }
    pub fn hits(&self) -> usize {
        self.backend.hits()
    }
    pub fn last_request(&self) -> http::HeaderMap {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .unwrap_or_default()
    }
}

/// Starts a shaped backend.
pub async fn shaped_backend(initial: Shape) -> Shaped {
    let shape = Arc::new(Mutex::new(initial));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let inflight = Arc::new(AtomicUsize::new(0));
    let max_inflight = Arc::new(AtomicUsize::new(0));
    let (sh, se, inf, mx) = (
        Arc::clone(&shape),
        Arc::clone(&seen),
        Arc::clone(&inflight),
        Arc::clone(&max_inflight),
    );
    let backend = spawn_backend(move |req| {
        let s = sh.lock().unwrap().clone();
        se.lock().unwrap().push(req.headers().clone());
        let (inf, mx) = (Arc::clone(&inf), Arc::clone(&mx));
        Box::pin(async move {
            let now = inf.fetch_add(1, Ordering::SeqCst) + 1;
            mx.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(s.delay).await;
            inf.fetch_sub(1, Ordering::SeqCst);
            let mut r = Response::new(full(s.body.clone()));
            *r.status_mut() = StatusCode::from_u16(s.status).unwrap();
            for (k, v) in &s.headers {
                r.headers_mut().append(*k, v.parse().unwrap());
            }
            r
        })
    })
    .await;
    Shaped {
        backend,
        shape,
        seen,
        max_inflight,
    }
}

/// POSTs JSON to the admin API, with the token when `token` is set.
pub async fn admin_post(url: &str, token: Option<&str>, body: &str) -> Got {
    let mut b = Request::post(url).header("content-type", "application/json");
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    send(
        &client(),
        b.body(Full::new(Bytes::from(body.to_owned()))).unwrap(),
    )
    .await
}

/// The `Cache-Status` of a response.
pub fn cache_status(g: &Got) -> String {
    g.header("cache-status").unwrap_or("").to_owned()
}

/// A `redis-server` on a free loopback port, with no persistence; killed on drop.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
}

impl Redis {
    pub fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        Self::start_on(port)
    }

    pub fn start_on(port: u16) -> Redis {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install -y redis-server)");
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Redis {
            child: Some(child),
            port,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Whether `key` exists (a direct query, as a second client of the same Redis).
    pub fn exists(&self, key: &str) -> bool {
        let Ok(client) = redis::Client::open(self.url()) else {
            return false;
        };
        let Ok(mut c) = client.get_connection() else {
            return false;
        };
        redis::cmd("EXISTS")
            .arg(key)
            .query::<i64>(&mut c)
            .is_ok_and(|n| n == 1)
    }

    /// Kills the server at once (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}
