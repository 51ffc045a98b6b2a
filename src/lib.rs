//! sandgate: a reverse proxy for fleets of sandbox workers.
//!
//! # Layout
//!
//! Request path (hot, one snapshot load per request):
//! `server` accepts (a PROXY protocol header in `proxy_header`, TLS in `tls`, connection shedding in `limit`; client timers in `conn` (the watchdog in `conn::watch`),
//! idle HTTP/1 connections parked without buffers in `keepalive`; plain HTTP/1.1 requests
//! without a body read and answered in `lane`, the rest by hyper's server) and hands each
//! request to `proxy::handle`; `proxy/mod.rs` is the one place that orders the stages, each in its own
//! file under `proxy/`: shedding and rate limits -> `router` -> body and upstream head ->
//! select + admit (`balance` picks among `backend`s, whose state carries health and the
//! `breaker`; `admission` takes the backend's in-flight slot or waits in the pool's FIFO
//! queue) -> `upstream` (pooled connections; sandgate's HTTP/1.1 client in `upstream::h1`,
//! hyper's for HTTP/2) with retries -> record -> decorate -> log (lines
//! through `accesslog`'s buffered writer). `body`
//! streams the response and holds the slots until its last byte. An upgrade request
//! (`proxy/upgrade.rs`) becomes a `tunnel` that keeps its slot until it closes. `headers`
//! rewrites headers, and `headers::Hop` holds the fields this hop adds upstream, which the
//! HTTP/1.1 encoder writes after the request's own;
//! `error` maps every failure to one status and JSON body.
//!
//! Reload path (cold, one writer): `reload` watches the file and SIGHUP, `config` parses and
//! validates (all errors, with lines), `state::Snapshot::build` carries backend state over by
//! address, and one `ArcSwap` store publishes it.
//!
//! Around them: `services` (what outlives snapshots: upstream pools, background tasks),
//! `health` (active checks on their own tasks), `discovery` (backends from DNS names and
//! files), `admin` (metrics, health, readiness,
//! backends, capacity from `capacity`'s sampler), `metrics` (every metric name), `otlp` (request spans to a collector), `app` (wiring and shutdown), `demo` (built-in
//! sandbox backends for `sandgate demo`).

pub mod accesslog;
pub mod admin;
pub mod admission;
pub mod app;
pub mod arena;
pub mod backend;
pub mod balance;
pub mod body;
pub mod breaker;
pub mod cache;
pub mod capacity;
pub mod config;
pub mod conn;
pub mod demo;
pub mod discovery;
pub mod error;
pub mod headers;
pub mod health;
pub mod keepalive;
pub mod lane;
pub mod limit;
pub mod metrics;
pub mod otlp;
pub mod overrides;
pub mod proxy;
pub mod proxy_header;
pub mod reload;
pub mod reqbody;
pub mod router;
pub mod server;
pub mod services;
pub mod sockets;
pub mod state;
pub mod task;
pub mod tls;
pub mod trace;
pub mod tunnel;
pub mod upgrade;
pub mod upstream;
pub mod worker;
