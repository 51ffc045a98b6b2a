//! sandgate: a reverse proxy for fleets of sandbox workers.
//!
//! # Layout
//!
//! Request path (hot, lock-free, one snapshot load per request):
//! `server` accepts (TLS in `tls`) and hands each request to `proxy::handle`, the one place that
//! orders the stages: `router` -> `balance` (pool + strategy over `backend`s) -> `upstream`
//! (pooled client) -> `body` (streams the response and holds the in-flight slot). `headers`
//! rewrites headers; `error` maps every failure to one status and JSON body.
//!
//! Reload path (cold, one writer): `reload` watches the file and SIGHUP, `config` parses and
//! validates (all errors, with lines), `state::Snapshot::build` carries backend state over by
//! address, and one `ArcSwap` store publishes it.
//!
//! Around them: `admin` (metrics, health, readiness, backends), `metrics` (every metric name),
//! `app` (wiring and shutdown), `demo` (built-in sandbox backends for `sandgate demo`).

pub mod admin;
pub mod app;
pub mod backend;
pub mod balance;
pub mod body;
pub mod breaker;
pub mod config;
pub mod demo;
pub mod error;
pub mod headers;
pub mod health;
pub mod limit;
pub mod metrics;
pub mod proxy;
pub mod queue;
pub mod reload;
pub mod router;
pub mod server;
pub mod state;
pub mod tls;
pub mod upstream;
