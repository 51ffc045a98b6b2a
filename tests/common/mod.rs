//! Builders for integration tests: real backends on 127.0.0.1:0 and the real `sandgate` binary
//! with a YAML config, its bound addresses read from its JSON logs.
#![allow(dead_code)]

pub mod cache;
pub mod grpc;
mod load;
pub mod pki;
mod poll;
pub mod queueing;
pub mod ws;

#[allow(unused_imports)] // not every test binary polls or loads
pub use load::*;
#[allow(unused_imports)]
pub use poll::*;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Body type of test backends.
pub type TestBody = BoxBody<Bytes, Infallible>;
/// A boxed handler future.
pub type HandlerFuture = Pin<Box<dyn Future<Output = Response<TestBody>> + Send>>;

/// A complete body.
pub fn full(b: impl Into<Bytes>) -> TestBody {
    Full::new(b.into()).boxed()
}

/// A body fed by a channel: each `send` is one chunk; dropping the sender ends it.
pub fn channel_body() -> (tokio::sync::mpsc::Sender<Bytes>, TestBody) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    let stream = tokio_stream_map(stream);
    (tx, StreamBody::new(stream).boxed())
}

fn tokio_stream_map(
    s: tokio_stream::wrappers::ReceiverStream<Bytes>,
) -> impl tokio_stream::Stream<Item = Result<Frame<Bytes>, Infallible>> + Send + Sync + 'static {
    use tokio_stream::StreamExt;
    s.map(|b| Ok(Frame::data(b)))
}

/// A test backend: counts requests, can be stopped (closing its listener and connections).
pub struct Backend {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl Backend {
    /// Stops accepting and closes every open connection.
    pub fn stop(&self) {
        self.stop.cancel();
    }
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Starts a backend on 127.0.0.1:0 serving `handler` over HTTP/1.1.
pub async fn spawn_backend<F>(handler: F) -> Backend
where
    F: Fn(Request<Incoming>) -> HandlerFuture + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    serve_backend(listener, handler)
}

/// Serves `handler` over HTTP/1.1 on a bound listener.
pub fn serve_backend<F>(listener: TcpListener, handler: F) -> Backend
where
    F: Fn(Request<Incoming>) -> HandlerFuture + Send + Sync + 'static,
{
    let addr = listener.local_addr().expect("backend addr");
    let hits = Arc::new(AtomicUsize::new(0));
    let stop = CancellationToken::new();
    let handler = Arc::new(handler);
    let (h, s) = (Arc::clone(&hits), stop.clone());
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                _ = s.cancelled() => return,
                r = listener.accept() => match r { Ok((st, _)) => st, Err(_) => continue },
            };
            let (handler, hits, s) = (Arc::clone(&handler), Arc::clone(&h), s.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    hits.fetch_add(1, Ordering::SeqCst);
                    let fut = handler(req);
                    async move { Ok::<_, Infallible>(fut.await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades();
                tokio::select! {
                    _ = conn => {}
                    _ = s.cancelled() => {}
                }
            });
        }
    });
    Backend { addr, hits, stop }
}

/// A backend that answers every request with `name` as the body.
pub async fn named_backend(name: &'static str) -> Backend {
    spawn_backend(move |_req| Box::pin(async move { Response::new(full(name)) })).await
}

/// A backend that answers `name` after `delay` (a hanging one when the delay outlasts the
/// test's timeouts).
pub async fn slow_backend(name: &'static str, delay: Duration) -> Backend {
    spawn_backend(move |_req| {
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            Response::new(full(name))
        })
    })
    .await
}

/// A backend that answers with a JSON echo of what it received: name, method, path, headers.
pub async fn echo_backend(name: &'static str) -> Backend {
    spawn_backend(move |req| {
        Box::pin(async move {
            let mut headers: HashMap<String, Vec<String>> = HashMap::new();
            for (k, v) in req.headers() {
                headers
                    .entry(k.as_str().to_owned())
                    .or_default()
                    .push(v.to_str().unwrap_or("").to_owned());
            }
            let body = serde_json::json!({
                "name": name,
                "method": req.method().as_str(),
                "path": req.uri().to_string(),
                "headers": headers,
            });
            let mut r = Response::new(full(body.to_string()));
            r.headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            r
        })
    })
    .await
}

/// A port on 127.0.0.1 with nothing listening (bound, then released).
pub fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let a = l.local_addr().expect("addr");
    drop(l);
    a
}

/// Log lines captured from the proxy's stderr (parsed JSON), with a condvar to wait on.
#[derive(Default)]
pub struct Logs {
    lines: Mutex<Vec<Value>>,
    changed: Condvar,
}

impl Logs {
    /// Waits until some line satisfies `pred`, returning it.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        let mut lines = self.lines.lock().unwrap();
        loop {
            if let Some(v) = lines.iter().find(|v| pred(v)) {
                return Some(v.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            lines = self.changed.wait_timeout(lines, deadline - now).unwrap().0;
        }
    }

    pub fn all(&self) -> Vec<Value> {
        self.lines.lock().unwrap().clone()
    }

    pub fn count(&self, pred: impl Fn(&Value) -> bool) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|v| pred(v))
            .count()
    }
}

/// Message of a log line.
pub fn msg(v: &Value) -> &str {
    v["message"].as_str().unwrap_or("")
}

/// A running sandgate process.
pub struct Proxy {
    child: Child,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub listeners: HashMap<String, SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub logs: Arc<Logs>,
}

pub fn sandgate_bin() -> &'static str {
    env!("CARGO_BIN_EXE_sandgate")
}

/// Starts sandgate with `yaml` (written to a temp dir) and waits until it is ready.
pub fn spawn_proxy(yaml: &str) -> Proxy {
    let dir = tempfile::tempdir().expect("tempdir");
    spawn_proxy_in(dir, yaml)
}

/// Like [`spawn_proxy`] in a given directory (for configs that reference files in it).
pub fn spawn_proxy_in(dir: tempfile::TempDir, yaml: &str) -> Proxy {
    spawn_proxy_env(dir, yaml, &[])
}

/// Like [`spawn_proxy_in`] with extra environment variables.
pub fn spawn_proxy_env(dir: tempfile::TempDir, yaml: &str, env: &[(&str, &str)]) -> Proxy {
    let config_path = dir.path().join("sandgate.yaml");
    std::fs::write(&config_path, yaml).expect("write config");
    let mut child = Command::new(sandgate_bin())
        .args(["--log-format", "json", "run", "--config"])
        .arg(&config_path)
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sandgate");
    let logs = Arc::new(Logs::default());
    let stderr = child.stderr.take().expect("stderr");
    let l = Arc::clone(&logs);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let v = serde_json::from_str(&line).unwrap_or(Value::String(line));
            l.lines.lock().unwrap().push(v);
            l.changed.notify_all();
        }
    });
    let ready = logs.wait_for(Duration::from_secs(20), |v| {
        msg(v) == "sandgate ready" || v["level"] == "ERROR"
    });
    match ready {
        Some(v) if msg(&v) == "sandgate ready" => {}
        other => {
            let _ = child.kill();
            panic!("sandgate did not start: {other:?}\nlogs: {:#?}", logs.all());
        }
    }
    let mut listeners = HashMap::new();
    let mut admin = None;
    for v in logs.all() {
        if msg(&v) == "listening" {
            let name = v["listener"].as_str().unwrap().to_owned();
            listeners.insert(name, v["address"].as_str().unwrap().parse().unwrap());
        }
        if msg(&v) == "admin listening" {
            admin = Some(v["address"].as_str().unwrap().parse().unwrap());
        }
    }
    Proxy {
        child,
        dir,
        config_path,
        listeners,
        admin,
        logs,
    }
}

/// Result of a reload attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Reload {
    Applied(u64),
    Rejected,
}

impl Proxy {
    /// `http://addr` of the listener `name`.
    pub fn url(&self, name: &str, path: &str) -> String {
        format!("http://{}{}", self.listeners[name], path)
    }

    /// `http://admin/path`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin.expect("admin listener"), path)
    }

    fn reload_events(&self) -> usize {
        self.logs
            .count(|v| msg(v) == "config reloaded" || msg(v).starts_with("config reload rejected"))
    }

    fn wait_reload_event(&self, before: usize) -> Reload {
        let deadline = Duration::from_secs(15);
        let start = Instant::now();
        loop {
            let events: Vec<Value> = self
                .logs
                .all()
                .into_iter()
                .filter(|v| {
                    msg(v) == "config reloaded" || msg(v).starts_with("config reload rejected")
                })
                .collect();
            if events.len() > before {
                let e = &events[before];
                return if msg(e) == "config reloaded" {
                    Reload::Applied(e["generation"].as_u64().unwrap())
                } else {
                    Reload::Rejected
                };
            }
            assert!(
                start.elapsed() < deadline,
                "no reload seen; logs: {:#?}",
                self.logs.all()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Replaces the config file the way editors do (write a temp file, rename it over) and
    /// waits for sandgate to apply or reject it.
    pub fn reload(&self, yaml: &str) -> Reload {
        let before = self.reload_events();
        let tmp = self.dir.path().join(".sandgate.yaml.tmp");
        std::fs::write(&tmp, yaml).expect("write tmp config");
        std::fs::rename(&tmp, &self.config_path).expect("rename config");
        self.wait_reload_event(before)
    }

    /// Sends SIGHUP and waits for the reload outcome.
    pub fn sighup(&self) -> Reload {
        let before = self.reload_events();
        self.signal("HUP");
        self.wait_reload_event(before)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (`TERM`, `INT`, `HUP`).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Sends SIGTERM and waits (5 s at most) until the process logs that shutdown began.
    pub fn terminate(&self) {
        self.signal("TERM");
        self.logs
            .wait_for(Duration::from_secs(5), |v| {
                msg(v).starts_with("shutting down")
            })
            .expect("shutdown started");
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Stops the process (SIGTERM, then SIGKILL after 10s).
    pub fn shutdown(mut self) -> Option<ExitStatus> {
        self.signal("TERM");
        let s = self.wait_exit(Duration::from_secs(10));
        if s.is_none() {
            let _ = self.child.kill();
        }
        s
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.1 client.
pub fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An HTTP/2 prior-knowledge (h2c) client.
pub fn h2c_client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// A fully read response.
#[derive(Debug)]
pub struct Got {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    pub version: http::Version,
}

impl Got {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Sends `req` and reads the whole response (10s limit).
pub async fn send(
    c: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> Got {
    let fut = async {
        let resp = c.request(req).await.expect("request failed");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        Got {
            status: parts.status,
            headers: parts.headers,
            body,
            version: parts.version,
        }
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .expect("request timed out")
}

/// GET `url`.
pub async fn get(url: &str) -> Got {
    send(
        &client(),
        Request::get(url).body(Full::new(Bytes::new())).unwrap(),
    )
    .await
}

/// GET `url` with extra headers.
pub async fn get_with(url: &str, headers: &[(&str, &str)]) -> Got {
    let mut b = Request::get(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(&client(), b.body(Full::new(Bytes::new())).unwrap()).await
}

/// An empty request body.
pub fn empty() -> Full<Bytes> {
    Full::new(Bytes::new())
}

/// Minimal config with one plain listener, admin, one route to one pool.
pub fn basic_config(pool_yaml: &str) -> String {
    format!(
        "listeners:\n  - name: public\n    address: 127.0.0.1:0\nadmin:\n  address: 127.0.0.1:0\n\
         routes:\n  - name: all\n    pool: p\npools:\n  p:\n{pool_yaml}"
    )
}

/// A backend whose responses send `first` at once, then wait for `release` before sending
/// `rest` and ending: a response held open mid-body.
pub async fn held_backend(
    first: &'static str,
    rest: &'static str,
    release: Arc<tokio::sync::Notify>,
) -> Backend {
    spawn_backend(move |_req| {
        let r = Arc::clone(&release);
        Box::pin(async move {
            let (tx, body) = channel_body();
            tokio::spawn(async move {
                tx.send(Bytes::from(first)).await.ok();
                r.notified().await;
                if !rest.is_empty() {
                    tx.send(Bytes::from(rest)).await.ok();
                }
            });
            Response::new(body)
        })
    })
    .await
}

/// GETs `url`, expects 200, and returns the still-streaming body.
pub async fn open_stream(url: &str) -> Incoming {
    let resp = client()
        .request(Request::get(url).body(empty()).expect("request"))
        .await
        .expect("request failed");
    assert_eq!(resp.status(), 200);
    resp.into_body()
}

/// The next data chunk of a streaming body (5 s limit).
pub async fn next_chunk(body: &mut Incoming) -> Bytes {
    tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("no chunk within 5s: buffered instead of streamed?")
        .expect("body ended")
        .expect("body error")
        .into_data()
        .unwrap_or_default()
}

/// The rest of a streaming body (5 s limit).
pub async fn rest_of(body: Incoming) -> Bytes {
    tokio::time::timeout(Duration::from_secs(5), body.collect())
        .await
        .expect("body did not end within 5s")
        .expect("body error")
        .to_bytes()
}

/// A backend that reads the whole request body and answers with its length.
pub async fn sink_backend() -> Backend {
    spawn_backend(|req| {
        Box::pin(async move {
            let n = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes().len())
                .unwrap_or(0);
            Response::new(full(n.to_string()))
        })
    })
    .await
}
