//! `pools.NAME.health_check`, `circuit_breaker` and `retry`.

use std::time::Duration;

use super::Errors;
use crate::config::raw::{InitialState, RawBreaker, RawHealthCheck, RawRetry};
use crate::config::{BreakerConfig, HealthConfig, HealthProbe, RetryConfig};

pub(super) fn health(e: &mut Errors<'_>, hp: &str, h: &RawHealthCheck) -> HealthConfig {
    let probe = match (h.tcp, &h.path) {
        (Some(true), Some(_)) => {
            e.push(
                format!("{hp}.tcp"),
                "set either `path` or `tcp: true`, not both",
            );
            HealthProbe::Tcp
        }
        (Some(true), None) => HealthProbe::Tcp,
        (_, Some(p))
            if !p.starts_with('/') || http::uri::PathAndQuery::try_from(p.as_str()).is_err() =>
        {
            e.push(
                format!("{hp}.path"),
                "must be an origin-form path, e.g. /healthz or /health?deep=1",
            );
            HealthProbe::Http { path: "/".into() }
        }
        (_, p) => HealthProbe::Http {
            path: p.clone().unwrap_or_else(|| "/".into()),
        },
    };
    let mut expect_status = Vec::new();
    let es = h.expect_status.clone().unwrap_or_else(|| "200-399".into());
    for part in es.split(',') {
        let part = part.trim();
        let range = match part.split_once('-') {
            Some((a, b)) => a
                .trim()
                .parse::<u16>()
                .ok()
                .zip(b.trim().parse::<u16>().ok()),
            None => part.parse::<u16>().ok().map(|c| (c, c)),
        };
        match range {
            Some((a, b)) if (100..=599).contains(&a) && a <= b && b <= 599 => {
                expect_status.push((a, b))
            }
            _ => e.push(
                format!("{hp}.expect_status"),
                format!("invalid status range {part:?}; write e.g. 200-399 or 200,204"),
            ),
        }
    }
    let interval = e.positive(
        &format!("{hp}.interval"),
        h.interval.as_ref(),
        Duration::from_secs(5),
    );
    // The default timeout is 2s, but never more than the interval the user chose.
    let timeout = e.positive(
        &format!("{hp}.timeout"),
        h.timeout.as_ref(),
        Duration::from_secs(2).min(interval),
    );
    if !timeout.is_zero() && timeout > interval {
        e.push(format!("{hp}.timeout"), "must not exceed interval");
    }
    if let Some(host) = &h.host {
        if http::HeaderValue::from_str(host).is_err() || host.trim().is_empty() {
            e.push(
                format!("{hp}.host"),
                format!("{host:?} is not a valid Host header value"),
            );
        }
    }
    HealthConfig {
        probe,
        interval,
        jitter: e.percent(&format!("{hp}.jitter"), h.jitter.as_ref(), 0.1),
        timeout,
        healthy_threshold: e
            .count(
                &format!("{hp}.healthy_threshold"),
                h.healthy_threshold,
                1,
                Some(1000),
            )
            .unwrap_or(2) as u32,
        unhealthy_threshold: e
            .count(
                &format!("{hp}.unhealthy_threshold"),
                h.unhealthy_threshold,
                1,
                Some(1000),
            )
            .unwrap_or(3) as u32,
        expect_status,
        expect_body: h.expect_body.clone(),
        host: h.host.clone(),
        initial_healthy: h.initial_state != Some(InitialState::Unhealthy),
        panic_threshold: e.percent(
            &format!("{hp}.panic_threshold"),
            h.panic_threshold.as_ref(),
            0.0,
        ),
    }
}

pub(super) fn breaker(e: &mut Errors<'_>, bp: &str, b: &RawBreaker) -> BreakerConfig {
    let open_for = e.positive(
        &format!("{bp}.open_for"),
        b.open_for.as_ref(),
        Duration::from_secs(5),
    );
    let max_open_for = e.duration(
        &format!("{bp}.max_open_for"),
        b.max_open_for.as_ref(),
        Duration::from_secs(120),
    );
    if max_open_for < open_for {
        e.push(format!("{bp}.max_open_for"), "must be at least open_for");
    }
    let window = e.positive(
        &format!("{bp}.window"),
        b.window.as_ref(),
        Duration::from_secs(10),
    );
    BreakerConfig {
        consecutive_failures: e
            .count(
                &format!("{bp}.consecutive_failures"),
                b.consecutive_failures,
                1,
                Some(1_000_000),
            )
            .unwrap_or(5) as u32,
        failure_rate: e.percent(&format!("{bp}.failure_rate"), b.failure_rate.as_ref(), 0.5),
        window,
        min_requests: e
            .count(
                &format!("{bp}.min_requests"),
                b.min_requests,
                1,
                Some(1_000_000),
            )
            .unwrap_or(20) as u32,
        open_for,
        max_open_for,
        half_open_requests: e
            .count(
                &format!("{bp}.half_open_requests"),
                b.half_open_requests,
                1,
                Some(10_000),
            )
            .unwrap_or(3) as u32,
        failure_on: e.outcomes(&format!("{bp}.failure_on"), b.failure_on.as_ref()),
    }
}

pub(super) fn retry(e: &mut Errors<'_>, rp: &str, r: &RawRetry) -> RetryConfig {
    let bo = r.backoff.as_ref();
    let backoff_base = e.duration(
        &format!("{rp}.backoff.base"),
        bo.and_then(|b| b.base.as_ref()),
        Duration::from_millis(25),
    );
    let backoff_max = e.duration(
        &format!("{rp}.backoff.max"),
        bo.and_then(|b| b.max.as_ref()),
        Duration::from_secs(1),
    );
    if backoff_max < backoff_base {
        e.push(format!("{rp}.backoff.max"), "must be at least backoff.base");
    }
    let per_try_timeout = r.per_try_timeout.as_ref().map(|v| {
        e.positive(
            &format!("{rp}.per_try_timeout"),
            Some(v),
            Duration::from_secs(5),
        )
    });
    RetryConfig {
        attempts: e
            .count(&format!("{rp}.attempts"), r.attempts, 1, Some(10))
            .unwrap_or(3) as u32,
        on: e.outcomes(&format!("{rp}.on"), r.on.as_ref()),
        backoff_base,
        backoff_max,
        per_try_timeout,
        budget: e.percent(&format!("{rp}.budget"), r.budget.as_ref(), 0.2),
        max_replay_body: e.size(
            &format!("{rp}.max_replay_body"),
            r.max_replay_body.as_ref(),
            64 * 1024,
        ),
    }
}
