//! Capacity: how full each pool is, and how many backends it needs (`GET /admin/capacity`,
//! `sandgate_pool_slots`, `sandgate_pool_utilisation`).
//!
//! Each backend keeps a latency histogram of its upstream tries ([`LatencyHist`], two
//! relaxed atomic adds per try). A sampler ([`Tracker::sample`], every 250 ms) reads the
//! pools' in-flight counts for the peaks over the last minute and 15 minutes, and every 5 s
//! keeps the pools' summed histograms, so that the last minute's rate and latency are one
//! subtraction. The load a pool carries is Little's law, L = rate × mean latency; its
//! utilisation is L over its slots (the sum of the backends' `max_connections`), and it
//! needs ceil(L / (target × slots per backend)) backends to stay under the target.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

use crate::config::Priority;
use crate::metrics::{POOL_SLOTS, POOL_UTILISATION};
use crate::state::{PoolEntry, Snapshot};

/// Buckets per power of two of microseconds.
const SUB: usize = 4;
/// Buckets: 4 per octave up to 2^32 µs (over an hour).
const BUCKETS: usize = 32 * SUB;

/// A histogram of try latencies, in microseconds, with a running sum.
#[derive(Debug)]
pub struct LatencyHist {
    buckets: [AtomicU64; BUCKETS],
    sum_us: AtomicU64,
}

impl Default for LatencyHist {
    fn default() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_us: AtomicU64::new(0),
        }
    }
}

fn bucket(us: u64) -> usize {
    if us < SUB as u64 {
        return us as usize;
    }
    let octave = 63 - us.leading_zeros() as usize; // >= 2
    let sub = ((us >> (octave - 2)) & (SUB as u64 - 1)) as usize;
    ((octave - 1) * SUB + sub).min(BUCKETS - 1)
}

/// The largest value in bucket `i`, in microseconds.
fn upper(i: usize) -> u64 {
    if i < SUB {
        return i as u64;
    }
    let octave = i / SUB + 1;
    let sub = (i % SUB) as u64;
    ((SUB as u64 + sub + 1) << (octave - 2)) - 1
}

impl LatencyHist {
    /// Counts one try that took `d`.
    #[inline]
    pub fn record(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.buckets[bucket(us)].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    fn add_to(&self, into: &mut Counts) {
        for (c, b) in into.buckets.iter_mut().zip(&self.buckets) {
            *c += b.load(Ordering::Relaxed);
        }
        into.sum_us += self.sum_us.load(Ordering::Relaxed);
    }
}

/// Summed histogram counts at one moment.
#[derive(Debug, Clone)]
struct Counts {
    buckets: [u64; BUCKETS],
    sum_us: u64,
}

impl Default for Counts {
    fn default() -> Self {
        Self {
            buckets: [0; BUCKETS],
            sum_us: 0,
        }
    }
}

impl Counts {
    fn of(p: &PoolEntry) -> Self {
        let mut c = Counts::default();
        for b in &p.pool.backends {
            b.state.latency.add_to(&mut c);
        }
        c
    }

    /// `self - earlier`, per bucket (a backend removed meanwhile takes its counts along).
    fn since(&self, earlier: &Counts) -> Counts {
        let mut d = Counts::default();
        for (i, v) in d.buckets.iter_mut().enumerate() {
            *v = self.buckets[i].saturating_sub(earlier.buckets[i]);
        }
        d.sum_us = self.sum_us.saturating_sub(earlier.sum_us);
        d
    }

    fn total(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// The `q` quantile's bucket bound, in milliseconds.
    fn quantile_ms(&self, q: f64) -> Option<f64> {
        let n = self.total();
        if n == 0 {
            return None;
        }
        let rank = ((n as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        self.buckets.iter().enumerate().find_map(|(i, c)| {
            seen += c;
            (seen >= rank).then(|| upper(i) as f64 / 1000.0)
        })
    }
}

/// What the sampler keeps of one pool.
#[derive(Debug, Default)]
struct History {
    /// The highest in-flight count of each of the last 900 seconds, newest last.
    peaks: VecDeque<u64>,
    /// The highest in-flight count of the second being sampled.
    this_second: u64,
    /// Samples in this second so far.
    ticks: u32,
    /// Summed histograms every 5 s over the last 65 s, oldest first.
    counts: VecDeque<(Instant, Counts)>,
}

/// The capacity sampler's memory, by pool name.
#[derive(Debug, Default)]
pub struct Tracker {
    // std Mutex: the sampler and the admin API only, never across an await.
    pools: Mutex<HashMap<String, History>>,
}

/// How often [`Tracker::sample`] should run.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// The default utilisation target of `backends_needed`.
pub const DEFAULT_TARGET: f64 = 0.7;

fn inflight(p: &PoolEntry) -> u64 {
    p.pool.backends.iter().map(|b| b.state.inflight()).sum()
}

impl Tracker {
    /// Samples every pool of `snap` (see [`SAMPLE_EVERY`]); once a second it also sets the
    /// pools' gauges.
    pub fn sample(&self, snap: &Snapshot) {
        let now = Instant::now();
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        pools.retain(|name, _| snap.pools.iter().any(|p| *p.pool.name == **name));
        for p in &snap.pools {
            let h = pools.entry(p.pool.name.to_string()).or_default();
            h.this_second = h.this_second.max(inflight(p));
            h.ticks += 1;
            if h.ticks < 4 {
                continue;
            }
            h.peaks.push_back(std::mem::take(&mut h.this_second));
            h.ticks = 0;
            if h.peaks.len() > 900 {
                h.peaks.pop_front();
            }
            if h.counts
                .back()
                .is_none_or(|(t, _)| now >= *t + Duration::from_secs(5))
            {
                h.counts.push_back((now, Counts::of(p)));
                while h.counts.len() > 14 {
                    h.counts.pop_front();
                }
            }
            let report = pool_report(p, h, DEFAULT_TARGET, now);
            let name = p.pool.name.to_string();
            metrics::gauge!(POOL_SLOTS, "pool" => name.clone())
                .set(report["slots"].as_f64().unwrap_or(f64::INFINITY));
            if let Some(u) = report["utilisation"].as_f64() {
                metrics::gauge!(POOL_UTILISATION, "pool" => name).set(u);
            }
        }
    }

    /// The `/admin/capacity` document for `snap`, sizing for `target` utilisation.
    pub fn report(&self, snap: &Snapshot, target: f64) -> Value {
        let now = Instant::now();
        let pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        let empty = History::default();
        let list: Vec<Value> = snap
            .pools
            .iter()
            .map(|p| pool_report(p, pools.get(&*p.pool.name).unwrap_or(&empty), target, now))
            .collect();
        json!({ "target": target, "pools": list })
    }
}

fn pool_report(p: &PoolEntry, h: &History, target: f64, now: Instant) -> Value {
    let in_flight = inflight(p);
    let peak = |secs: usize| {
        h.peaks
            .iter()
            .rev()
            .take(secs)
            .copied()
            .chain([h.this_second, in_flight])
            .max()
            .unwrap_or(0)
    };
    // The last minute: now against the oldest kept sample at most 60 s old (or any).
    let current = Counts::of(p);
    let base = h
        .counts
        .iter()
        .find(|(t, _)| now.duration_since(*t) <= Duration::from_secs(61))
        .or(h.counts.front());
    let (window, rate, p50, p99, mean_ms) = match base {
        Some((t, c)) if now.duration_since(*t) >= Duration::from_secs(1) => {
            let secs = now.duration_since(*t).as_secs_f64();
            let d = current.since(c);
            let n = d.total();
            let mean = (n > 0).then(|| d.sum_us as f64 / n as f64 / 1000.0);
            (
                secs,
                n as f64 / secs,
                d.quantile_ms(0.5),
                d.quantile_ms(0.99),
                mean,
            )
        }
        _ => (0.0, 0.0, None, None, None),
    };
    let backends = p.pool.backends.len();
    let slots = p.pool.slots();
    // Little's law: the concurrency the traffic needs.
    let load = rate * mean_ms.unwrap_or(0.0) / 1000.0;
    let utilisation = slots.filter(|s| *s > 0).map(|s| load / s as f64);
    let needed = slots.filter(|s| *s > 0 && backends > 0).map(|s| {
        let per_backend = s as f64 / backends as f64;
        ((load / (target * per_backend)).ceil() as u64).max(1)
    });
    json!({
        "pool": &*p.pool.name,
        "backends": backends,
        "usable_backends": p.pool.usable_count(),
        "slots": slots,
        "in_flight": in_flight,
        "peak_1m": peak(60),
        "peak_15m": peak(900),
        "queue_depth": p.queue.depth(),
        "queue_depth_by_priority": {
            "high": p.queue.depth_of(Priority::High),
            "normal": p.queue.depth_of(Priority::Normal),
            "low": p.queue.depth_of(Priority::Low),
        },
        "window_seconds": (window * 10.0).round() / 10.0,
        "request_rate": rate,
        "latency_p50_ms": p50,
        "latency_p99_ms": p99,
        "latency_mean_ms": mean_ms,
        "concurrency": load,
        "utilisation": utilisation,
        "backends_needed": needed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_bound_their_values() {
        let mut last = 0;
        for us in (0..5000u64).chain([65_536, 1 << 31, u64::MAX]) {
            let i = bucket(us);
            assert!(i >= last || us > 5000, "monotone at {us}");
            last = i;
            assert!(us <= upper(i) || i == BUCKETS - 1, "{us} <= upper({i})");
            if i > 0 && i < BUCKETS - 1 {
                assert!(us > upper(i - 1), "{us} above the previous bucket");
            }
            // Within 25% of the value.
            if us >= 4 && i < BUCKETS - 1 {
                assert!(
                    (upper(i) as f64) < us as f64 * 1.25 + 1.0,
                    "{us}: {}",
                    upper(i)
                );
            }
        }
    }

    #[test]
    fn quantiles_of_a_known_spread() {
        let h = LatencyHist::default();
        for ms in 1..=100u64 {
            h.record(Duration::from_millis(ms));
        }
        let mut c = Counts::default();
        h.add_to(&mut c);
        let p50 = c.quantile_ms(0.5).expect("p50");
        let p99 = c.quantile_ms(0.99).expect("p99");
        assert!((50.0..=62.5).contains(&p50), "{p50}");
        assert!((99.0..=124.0).contains(&p99), "{p99}");
        assert_eq!(c.sum_us, (1..=100).sum::<u64>() * 1000);
    }
}
