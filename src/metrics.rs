//! Every metric name in one place, described at start-up. Label values come from the config
//! (route, pool, backend and listener names) or from small closed sets (status codes, results),
//! so label sets stay bounded.
//!
//! The hot path never formats a label: handles are created once (per route, per backend, per
//! status code on first use) and cached, so recording is an atomic add.

use std::sync::OnceLock;

use metrics::{describe_counter, describe_gauge, describe_histogram, Counter, Label, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::config::Outcome;

/// `sandgate_requests_total{route,code}`
pub const REQUESTS_TOTAL: &str = "sandgate_requests_total";
/// `sandgate_client_aborts_total{route}`: requests whose client went away before the answer
pub const CLIENT_ABORTS_TOTAL: &str = "sandgate_client_aborts_total";
/// `sandgate_request_duration_seconds{route}`
pub const REQUEST_DURATION: &str = "sandgate_request_duration_seconds";
/// `sandgate_upstream_requests_total{pool,backend,code}`
pub const UPSTREAM_REQUESTS_TOTAL: &str = "sandgate_upstream_requests_total";
/// `sandgate_upstream_duration_seconds{pool,backend}`
pub const UPSTREAM_DURATION: &str = "sandgate_upstream_duration_seconds";
/// `sandgate_backend_inflight{pool,backend}`
pub const BACKEND_INFLIGHT: &str = "sandgate_backend_inflight";
/// `sandgate_connections_open{listener}`
pub const CONNECTIONS_OPEN: &str = "sandgate_connections_open";
/// Counter: client connections accepted, by listener and worker (`runtime.worker_threads`).
pub const WORKER_CONNECTIONS_TOTAL: &str = "sandgate_worker_connections_total";
/// `sandgate_config_reloads_total{result}`
pub const CONFIG_RELOADS_TOTAL: &str = "sandgate_config_reloads_total";
/// `sandgate_config_generation`
pub const CONFIG_GENERATION: &str = "sandgate_config_generation";

/// `sandgate_affinity_total{pool,result}`
pub const AFFINITY_TOTAL: &str = "sandgate_affinity_total";
/// `sandgate_geo_decisions_total{pool,result}`
pub const GEO_DECISIONS_TOTAL: &str = "sandgate_geo_decisions_total";

/// `sandgate_backend_healthy{pool,backend}` (0/1)
pub const BACKEND_HEALTHY: &str = "sandgate_backend_healthy";
/// `sandgate_health_checks_total{pool,backend,result}`
pub const HEALTH_CHECKS_TOTAL: &str = "sandgate_health_checks_total";
/// `sandgate_backend_transitions_total{pool,backend,to}`
pub const BACKEND_TRANSITIONS_TOTAL: &str = "sandgate_backend_transitions_total";
/// `sandgate_panic_mode{pool}` (0/1)
pub const PANIC_MODE: &str = "sandgate_panic_mode";
/// `sandgate_breaker_state{pool,backend}` (0 closed, 1 open, 2 half-open)
pub const BREAKER_STATE: &str = "sandgate_breaker_state";
/// `sandgate_breaker_transitions_total{pool,backend,to}`
pub const BREAKER_TRANSITIONS_TOTAL: &str = "sandgate_breaker_transitions_total";
/// `sandgate_retries_total{pool,reason}`
pub const RETRIES_TOTAL: &str = "sandgate_retries_total";
/// `sandgate_retry_budget_exhausted_total{pool}`
pub const RETRY_BUDGET_EXHAUSTED_TOTAL: &str = "sandgate_retry_budget_exhausted_total";
/// `sandgate_queue_depth{pool}`
pub const QUEUE_DEPTH: &str = "sandgate_queue_depth";
/// `sandgate_queue_wait_seconds{pool}`
pub const QUEUE_WAIT: &str = "sandgate_queue_wait_seconds";
/// `sandgate_queue_rejected_total{pool,reason}`
pub const QUEUE_REJECTED_TOTAL: &str = "sandgate_queue_rejected_total";
/// `sandgate_rate_limited_total{route,scope}`
pub const RATE_LIMITED_TOTAL: &str = "sandgate_rate_limited_total";
/// `sandgate_tenant_limited_total{pool}`
pub const TENANT_LIMITED_TOTAL: &str = "sandgate_tenant_limited_total";
/// `sandgate_rate_limit_fallback_total{route}`
pub const RATE_LIMIT_FALLBACK_TOTAL: &str = "sandgate_rate_limit_fallback_total";
/// `sandgate_shed_total{reason}` (`connections`, `inflight`)
pub const SHED_TOTAL: &str = "sandgate_shed_total";

/// `sandgate_cache_requests_total{route,result}` (`hit`, `miss`, `stale`, `revalidated`,
/// `coalesced`, `bypass`)
pub const CACHE_REQUESTS_TOTAL: &str = "sandgate_cache_requests_total";
/// `sandgate_cache_bytes{tier}`
pub const CACHE_BYTES: &str = "sandgate_cache_bytes";
/// `sandgate_cache_entries{tier}`
pub const CACHE_ENTRIES: &str = "sandgate_cache_entries";
/// `sandgate_cache_evictions_total{tier}`
pub const CACHE_EVICTIONS_TOTAL: &str = "sandgate_cache_evictions_total";
/// `sandgate_cache_store_total{result}` (`stored`, `too_large`, `uncacheable`, `aborted`)
pub const CACHE_STORE_TOTAL: &str = "sandgate_cache_store_total";
/// `sandgate_cache_purges_total{kind}` (`url`, `prefix`, `tag`, `all`, `invalidation`)
pub const CACHE_PURGES_TOTAL: &str = "sandgate_cache_purges_total";
/// `sandgate_cache_redis_errors_total{op}` (`get`, `set`, `purge`, `publish`, `subscribe`)
pub const CACHE_REDIS_ERRORS_TOTAL: &str = "sandgate_cache_redis_errors_total";
/// `sandgate_cache_redis_dropped_total`: writes dropped because the Redis queue was full
pub const CACHE_REDIS_DROPPED_TOTAL: &str = "sandgate_cache_redis_dropped_total";

/// `sandgate_task_restarts_total{task}`: background tasks restarted after a panic
pub const TASK_RESTARTS_TOTAL: &str = "sandgate_task_restarts_total";

/// `sandgate_proxy_protocol_rejected_total{listener,reason}` (`untrusted`, `malformed`,
/// `timeout`, `closed`)
pub const PROXY_PROTOCOL_REJECTED_TOTAL: &str = "sandgate_proxy_protocol_rejected_total";
/// `sandgate_admin_actions_total{action}` (`drain`, `undrain`, `disable`, `enable`,
/// `breaker`, `weight`, `clear`)
pub const ADMIN_ACTIONS_TOTAL: &str = "sandgate_admin_actions_total";
/// `sandgate_otlp_spans_exported_total`: request spans the OTLP collector took
pub const OTLP_SPANS_EXPORTED_TOTAL: &str = "sandgate_otlp_spans_exported_total";
/// `sandgate_otlp_spans_dropped_total`: request spans dropped (queue full, or export failed)
pub const OTLP_SPANS_DROPPED_TOTAL: &str = "sandgate_otlp_spans_dropped_total";
/// `sandgate_discovery_errors_total{pool}`: failed lookups and bad discovery files (the last
/// good set stays)
pub const DISCOVERY_ERRORS_TOTAL: &str = "sandgate_discovery_errors_total";
/// `sandgate_pool_usable_backends{pool}` (gauge): backends that may take traffic now
pub const POOL_USABLE_BACKENDS: &str = "sandgate_pool_usable_backends";
/// `sandgate_pool_slots{pool}` (gauge): the sum of the backends' `max_connections` (+Inf
/// when one has no cap)
pub const POOL_SLOTS: &str = "sandgate_pool_slots";
/// `sandgate_pool_utilisation{pool}` (gauge): the load over the last minute (rate × mean
/// latency) over the slots
pub const POOL_UTILISATION: &str = "sandgate_pool_utilisation";
/// `sandgate_queue_max{pool}` (gauge): the pool's `queue.max`
pub const QUEUE_MAX: &str = "sandgate_queue_max";
/// `sandgate_access_log_dropped_total`: access log lines dropped while stderr was stalled
pub const ACCESS_LOG_DROPPED_TOTAL: &str = "sandgate_access_log_dropped_total";
/// `sandgate_tunnels_open{route}` (gauge): WebSocket tunnels open
pub const TUNNELS_OPEN: &str = "sandgate_tunnels_open";
/// `sandgate_tunnels_total{route,result}` (`upgraded`, `refused`, `error`)
pub const TUNNELS_TOTAL: &str = "sandgate_tunnels_total";
/// `sandgate_tunnel_bytes_total{route,direction}` (`up`: client to backend, `down`)
pub const TUNNEL_BYTES_TOTAL: &str = "sandgate_tunnel_bytes_total";

/// Histogram buckets (seconds) for request and upstream durations.
const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// Installs the global Prometheus recorder and describes every metric. Call once per process.
pub fn install(idle_timeout: std::time::Duration) -> Result<PrometheusHandle, String> {
    let recorder = PrometheusBuilder::new()
        .idle_timeout(metrics_util::MetricKindMask::ALL, Some(idle_timeout))
        .set_buckets_for_metric(Matcher::Suffix("duration_seconds".into()), DURATION_BUCKETS)
        .map_err(|e| e.to_string())?
        .set_buckets_for_metric(Matcher::Full(QUEUE_WAIT.into()), DURATION_BUCKETS)
        .map_err(|e| e.to_string())?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|e| e.to_string())?;
    describe();
    Ok(handle)
}

fn describe() {
    describe_counter!(
        REQUESTS_TOTAL,
        "Client requests answered, by route and status code."
    );
    describe_counter!(
        CLIENT_ABORTS_TOTAL,
        "Requests whose client went away before they were answered (logged as client_abort, 499), by route; no backend is blamed for them."
    );
    describe_histogram!(
        REQUEST_DURATION,
        Unit::Seconds,
        "Time from request arrival to response head, by route."
    );
    describe_counter!(
        UPSTREAM_REQUESTS_TOTAL,
        "Requests sent to backends, by pool, backend and status code (or connect_error/timeout/error)."
    );
    describe_histogram!(
        UPSTREAM_DURATION,
        Unit::Seconds,
        "Time from sending a request to a backend to its response head."
    );
    describe_gauge!(
        BACKEND_INFLIGHT,
        "Requests in flight to each backend, counted until the response body ends."
    );
    describe_gauge!(CONNECTIONS_OPEN, "Open client connections, by listener.");
    describe_counter!(
        WORKER_CONNECTIONS_TOTAL,
        "Client connections accepted, by listener and worker."
    );
    describe_counter!(
        CONFIG_RELOADS_TOTAL,
        "Config reloads, by result (success/error)."
    );
    describe_gauge!(
        CONFIG_GENERATION,
        "Generation of the config snapshot now serving."
    );
    describe_counter!(
        CACHE_REQUESTS_TOTAL,
        "Requests on caching routes, by route and how the cache handled them."
    );
    describe_gauge!(CACHE_BYTES, Unit::Bytes, "Bytes stored, by tier.");
    describe_gauge!(CACHE_ENTRIES, "Responses stored, by tier.");
    describe_counter!(
        CACHE_EVICTIONS_TOTAL,
        "Stored responses evicted to stay within the tier's size, by tier."
    );
    describe_counter!(
        CACHE_STORE_TOTAL,
        "Responses the cache tried to store, by result."
    );
    describe_counter!(
        CACHE_PURGES_TOTAL,
        "Cache purges and invalidations, by kind."
    );
    describe_counter!(
        CACHE_REDIS_ERRORS_TOTAL,
        "Failed or timed-out Redis calls, by operation (each counts as a miss)."
    );
    describe_counter!(
        TASK_RESTARTS_TOTAL,
        "Background tasks (health, reload, upkeep) restarted after a panic, by task."
    );
    describe_counter!(
        CACHE_REDIS_DROPPED_TOTAL,
        "Writes to Redis dropped because its queue was full."
    );
    describe_counter!(
        PROXY_PROTOCOL_REJECTED_TOTAL,
        "Connections closed for their PROXY protocol header, by listener and reason."
    );
    describe_gauge!(
        POOL_SLOTS,
        "Concurrency slots of the pool: the sum of its backends' max_connections (+Inf when one has no cap)."
    );
    describe_gauge!(
        POOL_UTILISATION,
        "The pool's load over the last minute (request rate times mean upstream latency) over its slots."
    );
    describe_counter!(
        OTLP_SPANS_EXPORTED_TOTAL,
        "Request spans sent to the OTLP collector."
    );
    describe_counter!(
        OTLP_SPANS_DROPPED_TOTAL,
        "Request spans dropped: the export queue was full, or the collector failed or did not answer."
    );
    describe_counter!(
        DISCOVERY_ERRORS_TOTAL,
        "Failed DNS lookups and unreadable discovery files, by pool; the last good set stays."
    );
    describe_counter!(
        ADMIN_ACTIONS_TOTAL,
        "Backend overrides changed through the admin API, by action."
    );
    describe_counter!(
        AFFINITY_TOTAL,
        "Affinity decisions, by pool and result (hit, new, repinned, spilled)."
    );
    describe_counter!(
        GEO_DECISIONS_TOTAL,
        "Geographic routing decisions, by pool and result (local, failover, any, unknown)."
    );
    describe_gauge!(
        BACKEND_HEALTHY,
        "Whether the backend passes its health checks (1) or not (0)."
    );
    describe_counter!(
        HEALTH_CHECKS_TOTAL,
        "Active health checks, by pool, backend and result (pass, fail)."
    );
    describe_counter!(
        BACKEND_TRANSITIONS_TOTAL,
        "Health flips of a backend, by the state it moved to."
    );
    describe_gauge!(
        PANIC_MODE,
        "1 while the pool routes to every backend because too few are healthy."
    );
    describe_gauge!(
        BREAKER_STATE,
        "Circuit breaker state of a backend: 0 closed, 1 open, 2 half-open."
    );
    describe_counter!(
        BREAKER_TRANSITIONS_TOTAL,
        "Circuit breaker transitions, by the state moved to."
    );
    describe_counter!(
        RETRIES_TOTAL,
        "Retries made, by pool and the outcome that caused them."
    );
    describe_counter!(
        RETRY_BUDGET_EXHAUSTED_TOTAL,
        "Retries not made because the pool's retry budget was spent."
    );
    describe_gauge!(
        QUEUE_DEPTH,
        "Requests waiting for a backend slot in the pool's queue."
    );
    describe_histogram!(
        QUEUE_WAIT,
        Unit::Seconds,
        "Time requests that got a slot waited in the queue, by pool."
    );
    describe_counter!(
        QUEUE_REJECTED_TOTAL,
        "Requests turned away by the pool's queue, by reason (full, timeout)."
    );
    describe_counter!(
        RATE_LIMITED_TOTAL,
        "Requests refused with 429 by a route's rate limit."
    );
    describe_counter!(
        TENANT_LIMITED_TOTAL,
        "Requests a tenant's share held back: refused with 503 tenant_limit, or kept waiting while other tenants were served."
    );
    describe_counter!(
        RATE_LIMIT_FALLBACK_TOTAL,
        "Requests a global rate limit decided locally, at rate / instances seen, because Redis could not be reached."
    );
    describe_counter!(
        SHED_TOTAL,
        "Connections and requests shed by global limits, by reason (connections, inflight)."
    );
    describe_gauge!(
        POOL_USABLE_BACKENDS,
        "Backends of the pool that may take traffic now (healthy or in panic mode, breaker admitting, not drained or disabled), refreshed every few seconds."
    );
    describe_gauge!(
        QUEUE_MAX,
        "The pool's queue.max: waiting requests it holds at most."
    );
    describe_counter!(
        ACCESS_LOG_DROPPED_TOTAL,
        "Access log lines dropped because 16 MiB were already waiting for a stalled stderr."
    );
    describe_gauge!(TUNNELS_OPEN, "WebSocket tunnels open, by route.");
    describe_counter!(
        TUNNELS_TOTAL,
        "Upgrade requests by result: upgraded, refused (the backend did not answer 101), error."
    );
    describe_counter!(
        TUNNEL_BYTES_TOTAL,
        Unit::Bytes,
        "Bytes copied through tunnels, by direction (up: client to backend; down)."
    );
}

/// Marks counters as alive without changing them. The exporter drops series nobody updated
/// for `runtime.metrics_idle_timeout` (so backends and routes removed by a reload disappear);
/// the upkeep task touches every live one well within that time.
pub fn touch(counters: &[&Counter]) {
    for c in counters {
        c.increment(0);
    }
}

/// Marks gauges as alive without changing them.
pub fn touch_gauges(gauges: &[&metrics::Gauge]) {
    for g in gauges {
        g.increment(0.0);
    }
}

/// Lowest status code counted; 100..=599 fit in the table.
const FIRST_CODE: u16 = 100;
const CODES: usize = 500;

/// A counter family split by one extra `code` label, with one lazily created handle per status
/// code (plus a few named outcomes such as `connect_error`). Lock-free after first use.
pub struct CodeCounters {
    name: &'static str,
    label: &'static str,
    labels: Vec<Label>,
    by_code: Box<[OnceLock<Counter>]>,
    /// Outcomes without a status, in `Outcome` order: connect error, timeout, error.
    named: [OnceLock<Counter>; 3],
}

impl CodeCounters {
    /// A family of `name` with the fixed `labels`, split by `code`.
    pub fn new(name: &'static str, labels: Vec<Label>) -> Self {
        Self::with_label(name, labels, "code")
    }

    /// A family of `name` with the fixed `labels`, split by `label`.
    pub fn with_label(name: &'static str, labels: Vec<Label>, label: &'static str) -> Self {
        Self {
            name,
            label,
            labels,
            by_code: (0..CODES).map(|_| OnceLock::new()).collect(),
            named: Default::default(),
        }
    }

    fn make(&self, code: String) -> Counter {
        let mut labels = self.labels.clone();
        labels.push(Label::new(self.label, code));
        metrics::counter!(self.name, labels)
    }

    /// Marks every series of the family as alive (see [`touch`]).
    pub fn touch(&self) {
        for c in self
            .by_code
            .iter()
            .chain(self.named.iter())
            .filter_map(OnceLock::get)
        {
            c.increment(0);
        }
    }

    /// Counts one response with `status`.
    pub fn status(&self, status: u16) {
        let i = usize::from(status.wrapping_sub(FIRST_CODE));
        match self.by_code.get(i) {
            Some(slot) => slot
                .get_or_init(|| self.make(status.to_string()))
                .increment(1),
            None => self.make(status.to_string()).increment(1),
        }
    }

    /// Counts one upstream outcome: its status, or its name (`connect_error`, `timeout`,
    /// `error`).
    pub fn outcome_of(&self, o: Outcome) {
        let slot = match o {
            Outcome::Status(s) => return self.status(s),
            Outcome::ConnectError => &self.named[0],
            Outcome::Timeout => &self.named[1],
            Outcome::Error => &self.named[2],
        };
        slot.get_or_init(|| self.make(o.label().into_owned()))
            .increment(1);
    }
}
