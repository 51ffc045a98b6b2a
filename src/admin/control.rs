//! Runtime backend control: `POST /admin/pools/{pool}/backends/{address}` with any of
//! `{"drain": bool, "weight": 1..=10000, "disabled": bool, "breaker": "open"|"closed"|"auto"}`,
//! `DELETE` on the same URL to clear them, and
//! `GET .../wait-drained?timeout=30s`, which answers once the backend has nothing in flight.
//!
//! Overrides live in the backend's shared state (see [`crate::overrides`]), so they survive
//! reloads while the backend stays in its pool. A weight change rebuilds the snapshot from the
//! applied config, so that every strategy's tables see it. Each change is logged with the
//! caller's address and counted in `sandgate_admin_actions_total{action}`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use serde::Deserialize;
use serde_json::json;

use super::{error, reply, Admin, AdminResponse};
use crate::backend::BackendState;
use crate::metrics::ADMIN_ACTIONS_TOTAL;
use crate::overrides::ForcedBreaker;
use crate::reload;

/// Longest `wait-drained` wait.
const MAX_WAIT: Duration = Duration::from_secs(600);

/// A backend named by a control URL.
struct Named {
    pool: String,
    addr: SocketAddr,
    state: Arc<BackendState>,
}

/// The body of a control POST.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Change {
    #[serde(default)]
    drain: Option<bool>,
    #[serde(default)]
    weight: Option<u32>,
    #[serde(default)]
    disabled: Option<bool>,
    #[serde(default)]
    breaker: Option<String>,
}

/// `/admin/pools/{pool}/backends/{address}[/{rest}]`: pool, address and the rest.
fn target(path: &str) -> Option<(String, SocketAddr, &str)> {
    let rest = path.strip_prefix("/admin/pools/")?;
    let (pool, rest) = rest.split_once("/backends/")?;
    let (addr, tail) = rest.split_once('/').unwrap_or((rest, ""));
    let addr = addr
        .replace("%5B", "[")
        .replace("%5D", "]")
        .replace("%3A", ":")
        .replace("%5b", "[")
        .replace("%5d", "]")
        .replace("%3a", ":");
    Some((pool.to_owned(), addr.parse().ok()?, tail))
}

fn count(action: &'static str) {
    metrics::counter!(ADMIN_ACTIONS_TOTAL, "action" => action).increment(1);
}

impl Admin {
    /// Whether `path` is a backend control URL.
    pub(super) fn is_control(path: &str) -> bool {
        path.starts_with("/admin/pools/")
    }

    /// The backend a control URL names (`tail` is what follows its address: empty, or
    /// `wait-drained`), with its shared state from the serving snapshot; a 404 otherwise.
    fn named(&self, path: &str, tail: &str) -> Result<Named, Box<AdminResponse>> {
        let not_found = |code, message| Box::new(error(StatusCode::NOT_FOUND, code, message));
        let Some((pool, addr, _)) = target(path).filter(|t| t.2 == tail) else {
            return Err(not_found(
                "not_found",
                "use /admin/pools/{pool}/backends/{ip:port}",
            ));
        };
        let snap = self.state.load();
        let Some(p) = snap.pools.iter().find(|p| *p.pool.name == *pool) else {
            return Err(not_found("no_pool", "no such pool"));
        };
        let state = p
            .pool
            .backends
            .iter()
            .find(|b| b.addr() == addr)
            .map(|b| Arc::clone(&b.state))
            .ok_or_else(|| not_found("no_backend", "no such backend in this pool"))?;
        Ok(Named { pool, addr, state })
    }

    /// `POST`: applies the overrides in `body`.
    pub(super) fn control(&self, path: &str, body: &Bytes, peer: SocketAddr) -> AdminResponse {
        let Named { pool, addr, state } = match self.named(path, "") {
            Ok(n) => n,
            Err(r) => return *r,
        };
        let change: Change = match serde_json::from_slice(body) {
            Ok(c) => c,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_body",
                    &format!("expected drain, weight, disabled or breaker: {e}"),
                )
            }
        };
        if change.weight.is_some_and(|w| !(1..=10_000).contains(&w)) {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_weight",
                "weight must be between 1 and 10000",
            );
        }
        let breaker = match change.breaker.as_deref() {
            None => None,
            Some("open") => Some(Some(ForcedBreaker::Open)),
            Some("closed") => Some(Some(ForcedBreaker::Closed)),
            Some("auto") => Some(None),
            Some(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_breaker",
                    "breaker is open, closed or auto",
                )
            }
        };
        let o = &state.overrides;
        if let Some(d) = change.drain {
            o.set_drain(d);
            count(if d { "drain" } else { "undrain" });
        }
        if let Some(d) = change.disabled {
            o.set_disabled(d);
            count(if d { "disable" } else { "enable" });
        }
        if let Some(b) = breaker {
            o.set_breaker(b);
            count("breaker");
        }
        if let Some(w) = change.weight {
            o.set_weight(Some(w));
            count("weight");
        }
        tracing::warn!(%peer, pool, backend = %addr, change = ?change, "admin: backend override set");
        self.after_change(&pool, addr, change.weight.is_some(), &state)
    }

    /// `DELETE`: clears every override of the backend.
    pub(super) fn clear(&self, path: &str, peer: SocketAddr) -> AdminResponse {
        let Named { pool, addr, state } = match self.named(path, "") {
            Ok(n) => n,
            Err(r) => return *r,
        };
        let reweighted = state.overrides.weight().is_some();
        state.overrides.clear();
        count("clear");
        tracing::warn!(%peer, pool, backend = %addr, "admin: backend overrides cleared");
        self.after_change(&pool, addr, reweighted, &state)
    }

    fn after_change(
        &self,
        pool: &str,
        addr: SocketAddr,
        reweighted: bool,
        state: &BackendState,
    ) -> AdminResponse {
        if reweighted {
            if let Err(e) =
                reload::rebuild(&self.state, &self.services, "backend weight set at runtime")
            {
                return error(StatusCode::INTERNAL_SERVER_ERROR, "rebuild_failed", &e);
            }
        }
        reply(
            StatusCode::OK,
            json!({
                "pool": pool,
                "address": addr.to_string(),
                "override": state.overrides.view(),
                "inflight": state.inflight(),
            }),
        )
    }

    /// `GET .../wait-drained?timeout=30s`: 200 once nothing is in flight, 504 at the timeout.
    pub(super) async fn wait_drained(&self, path: &str, query: Option<&str>) -> AdminResponse {
        let state = match self.named(path, "wait-drained") {
            Ok(n) => n.state,
            Err(r) => return *r,
        };
        let timeout = match query
            .unwrap_or("")
            .split('&')
            .find_map(|kv| kv.strip_prefix("timeout="))
        {
            None => Duration::from_secs(30),
            Some(t) => match humantime::parse_duration(t) {
                Ok(d) => d.min(MAX_WAIT),
                Err(_) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "bad_timeout",
                        "timeout is a duration such as 30s",
                    )
                }
            },
        };
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let inflight = state.inflight();
            if inflight == 0 {
                return reply(StatusCode::OK, json!({"drained": true, "inflight": 0}));
            }
            if tokio::time::Instant::now() >= deadline {
                return reply(
                    StatusCode::GATEWAY_TIMEOUT,
                    json!({"drained": false, "inflight": inflight}),
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
