//! sandgate: a reverse proxy for fleets of sandbox workers.
//!
//! # Layout
//!
//! Request path (hot, one snapshot load per request):
//! `server` accepts (TLS in `tls`, connection shedding in `limit`) and hands each request to
//! `proxy::handle`, the one place that orders the stages: shedding and rate limits (`limit`)
//! -> `router` -> `balance` (pool + strategy over `backend`s, whose state carries health, the
//! `breaker` and the concurrency cap; `queue` when all are full) -> `upstream` (pooled client,
//! retries decided in `proxy`) -> `body` (streams the response and holds the in-flight slots).
//! `headers` rewrites headers; `error` maps every failure to one status and JSON body.
//!
//! Reload path (cold, one writer): `reload` watches the file and SIGHUP, `config` parses and
//! validates (all errors, with lines), `state::Snapshot::build` carries backend state over by
//! address, and one `ArcSwap` store publishes it.
//!
//! Around them: `health` (active checks on their own tasks), `admin` (metrics, health,
//! readiness, backends), `metrics` (every metric name), `app` (wiring and shutdown), `demo`
//! (built-in sandbox backends for `sandgate demo`).

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
