//! The Redis tier: a second store shared by every sandgate instance that names the same
//! Redis, and the channel `{key_prefix}:invalidate` on which purges and invalidations reach
//! every instance.
//!
//! Layout: one hash per URL, `{prefix}:obj:{url}`, with field `vary` (the selecting field
//! names of its newest variant) and one field `v:{hash}` per variant holding
//! [`Entry::encode`]; one set per purge tag, `{prefix}:tag:{tag}`, of the URLs tagged.
//!
//! Redis down, slow or restarted never fails a request: every call has a timeout and counts
//! as a miss when it fails; fills are written from a bounded queue (a full queue drops the
//! write); the state change is logged once; the connection manager reconnects by itself.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HeaderMap;
use metrics::Counter;
use redis::aio::ConnectionManager;
use redis::Client;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

use super::entry::Entry;
use super::key::{self, Selecting};
use super::Purge;
use crate::config::RedisConfig;
use crate::metrics::{CACHE_REDIS_DROPPED_TOTAL, CACHE_REDIS_ERRORS_TOTAL};

/// While Redis is down, how often a lookup still tries it (the others count as misses at
/// once, so a dead or hanging Redis costs requests nothing).
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// Writes waiting for Redis; more are dropped (and counted).
const WRITE_QUEUE: usize = 1024;
/// How long a stored response with validators outlives its freshness in Redis, so it can
/// still be revalidated.
const KEEP_FOR_REVALIDATION: u64 = 86_400;

/// A purge or invalidation, as published to every instance.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Invalidation {
    /// The instance that published it (it applied it already).
    #[serde(default)]
    pub from: String,
    /// What to drop.
    pub what: Purge,
}

/// Redis operations, for `sandgate_cache_redis_errors_total{op}`.
#[derive(Debug, Clone, Copy)]
enum Op {
    Get,
    Set,
    Purge,
    Publish,
    Subscribe,
}

impl Op {
    fn label(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Set => "set",
            Op::Purge => "purge",
            Op::Publish => "publish",
            Op::Subscribe => "subscribe",
        }
    }
}

/// The Redis tier.
pub struct RedisTier {
    cfg: RedisConfig,
    client: Client,
    conn: ConnectionManager,
    writes: mpsc::Sender<(Arc<Entry>, u64)>,
    /// This process, in published messages.
    instance: String,
    up: AtomicBool,
    /// While Redis is down, lookups probe it at most once per [`PROBE_EVERY`]: the time of
    /// the next probe, in milliseconds since `born`.
    next_probe: AtomicU64,
    /// How many calls have failed so far. A call notes it when it starts, so that its success
    /// can tell whether a failure came in between.
    failures: AtomicU64,
    born: Instant,
    errors: [Counter; 5],
    dropped: Counter,
}

/// Escapes glob characters for `SCAN MATCH`.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The hash field of a variant with these selecting fields.
fn variant_field(sel: &[Selecting]) -> String {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for (n, v) in sel {
        h.update(n.as_str().as_bytes());
        match v {
            None => h.update(&[0]),
            Some(v) => {
                h.update(&[1]);
                h.update(&(v.len() as u64).to_le_bytes());
                h.update(v);
            }
        }
    }
    format!("v:{:032x}", h.digest128())
}

/// A client of the Redis at `cfg` and a connection manager that connects on first use (Redis
/// may be down at start) and again after failures; every call is bounded by `cfg.timeout`.
pub fn connect_lazily(cfg: &RedisConfig) -> Result<(Client, ConnectionManager), String> {
    let client = Client::open(cfg.url.as_str()).map_err(|e| format!("cache.redis.url: {e}"))?;
    let mgr_cfg = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(cfg.timeout))
        .set_response_timeout(Some(cfg.timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_secs(1));
    let conn = client
        .get_connection_manager_lazy(mgr_cfg)
        .map_err(|e| format!("cache.redis: {e}"))?;
    Ok((client, conn))
}

impl RedisTier {
    /// Connects lazily (Redis may be down at start) and starts the writer. `apply` receives
    /// the invalidations other instances publish.
    pub fn start(
        cfg: &RedisConfig,
        apply: impl Fn(Invalidation) + Send + Sync + 'static,
    ) -> Result<Arc<Self>, String> {
        let (client, conn) = connect_lazily(cfg)?;
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        let op = |o: Op| metrics::counter!(CACHE_REDIS_ERRORS_TOTAL, "op" => o.label());
        let tier = Arc::new(RedisTier {
            cfg: cfg.clone(),
            client,
            conn,
            writes: tx,
            instance: format!("{:016x}", fastrand::u64(..)),
            up: AtomicBool::new(true),
            next_probe: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            born: Instant::now(),
            errors: [
                op(Op::Get),
                op(Op::Set),
                op(Op::Purge),
                op(Op::Publish),
                op(Op::Subscribe),
            ],
            dropped: metrics::counter!(CACHE_REDIS_DROPPED_TOTAL),
        });
        tokio::spawn(Arc::clone(&tier).writer(rx));
        tokio::spawn(Arc::clone(&tier).subscriber(apply));
        Ok(tier)
    }

    /// Marks the tier's metric series as alive.
    pub fn touch_metrics(&self) {
        let mut all: Vec<&Counter> = self.errors.iter().collect();
        all.push(&self.dropped);
        crate::metrics::touch(&all);
    }

    fn obj_key(&self, url: &str) -> String {
        format!("{}:obj:{url}", self.cfg.key_prefix)
    }

    fn tag_key(&self, tag: &str) -> String {
        format!("{}:tag:{tag}", self.cfg.key_prefix)
    }

    fn channel(&self) -> String {
        format!("{}:invalidate", self.cfg.key_prefix)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The mark a call takes when it starts, for [`Self::ok`].
    fn mark(&self) -> u64 {
        self.failures.load(Ordering::SeqCst)
    }

    /// A call that took `started` from [`Self::mark`] succeeded. Only a call that started
    /// after the last failure says Redis is back: one that was already on its way when Redis
    /// died proves nothing, and would make the state flap.
    fn ok(&self, started: u64) {
        if started == self.failures.load(Ordering::SeqCst) && !self.up.swap(true, Ordering::Relaxed)
        {
            tracing::info!(url = %self.cfg.url, "redis available again");
        }
    }

    fn failed(&self, op: Op, err: &str) {
        self.failures.fetch_add(1, Ordering::SeqCst);
        self.errors[op as usize].increment(1);
        if self.up.swap(false, Ordering::Relaxed) {
            tracing::warn!(url = %self.cfg.url, op = op.label(), error = err, "redis unavailable; the cache serves from memory and backends");
        }
    }

    /// Runs `f` within `limit`, recording the outcome.
    async fn call<T>(
        &self,
        op: Op,
        limit: Duration,
        f: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Option<T> {
        let started = self.mark();
        match tokio::time::timeout(limit, f).await {
            Ok(Ok(v)) => {
                self.ok(started);
                Some(v)
            }
            Ok(Err(e)) => {
                self.failed(op, &e.to_string());
                None
            }
            Err(_) => {
                self.failed(op, "timed out");
                None
            }
        }
    }

    /// Whether a lookup should try Redis now: always while it is up; once per
    /// [`PROBE_EVERY`] while it is down.
    fn worth_trying(&self) -> bool {
        if self.up.load(Ordering::Relaxed) {
            return true;
        }
        let now = self.now_ms();
        let next = self.next_probe.load(Ordering::Relaxed);
        now >= next
            && self
                .next_probe
                .compare_exchange(
                    next,
                    now + PROBE_EVERY.as_millis() as u64,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    /// The variant of `url` that matches the request's headers, if Redis has one.
    pub async fn get(&self, url: &str, req: &HeaderMap) -> Option<Entry> {
        if !self.worth_trying() {
            return None;
        }
        let key = self.obj_key(url);
        let mut conn = self.conn.clone();
        let (vary, plain): (Option<String>, Option<Vec<u8>>) = self
            .call(
                Op::Get,
                self.cfg.timeout,
                redis::pipe()
                    .cmd("HGET")
                    .arg(&key)
                    .arg("vary")
                    .cmd("HGET")
                    .arg(&key)
                    .arg(variant_field(&[]))
                    .query_async(&mut conn),
            )
            .await?;
        let names: Vec<http::HeaderName> = vary?
            .split(',')
            .filter(|n| !n.is_empty())
            .filter_map(|n| http::HeaderName::from_bytes(n.as_bytes()).ok())
            .collect();
        let blob = if names.is_empty() {
            plain?
        } else {
            let field = variant_field(&key::selecting(req, &names));
            let found: Option<Vec<u8>> = self
                .call(
                    Op::Get,
                    self.cfg.timeout,
                    redis::cmd("HGET")
                        .arg(&key)
                        .arg(field)
                        .query_async(&mut conn),
                )
                .await?;
            found?
        };
        let e = Entry::decode(Bytes::from(blob))?;
        (&*e.head.key == url && key::matches(req, &e.head.vary)).then_some(e)
    }

    /// Queues `entry` for writing, kept for `keep` seconds; dropped when the queue is full.
    pub fn put(&self, entry: Arc<Entry>, keep: u64) {
        if entry.weight() as u64 > self.cfg.max_object_size {
            return;
        }
        if self.writes.try_send((entry, keep)).is_err() {
            self.dropped.increment(1);
        }
    }

    /// How long Redis keeps an entry: its freshness left plus its stale windows, plus a day
    /// when it can be revalidated.
    pub fn keep_for(entry: &Entry, stale_window: u64, now: u64) -> u64 {
        let f = &entry.head.freshness;
        let left = u64::try_from(f.ttl(now)).unwrap_or(0);
        let extra = if f.validators {
            KEEP_FOR_REVALIDATION
        } else {
            0
        };
        left.saturating_add(stale_window)
            .saturating_add(extra)
            .max(1)
    }

    async fn writer(self: Arc<Self>, mut rx: mpsc::Receiver<(Arc<Entry>, u64)>) {
        while let Some((e, keep)) = rx.recv().await {
            let key = self.obj_key(&e.head.key);
            let names: Vec<&str> = e.head.vary.iter().map(|(n, _)| n.as_str()).collect();
            let ttl = i64::try_from(keep).unwrap_or(i64::MAX);
            let mut p = redis::pipe();
            p.cmd("HSET")
                .arg(&key)
                .arg("vary")
                .arg(names.join(","))
                .arg(variant_field(&e.head.vary))
                .arg(e.encode().as_ref())
                .ignore()
                .cmd("EXPIRE")
                .arg(&key)
                .arg(ttl)
                .ignore();
            for t in &e.head.tags {
                let tk = self.tag_key(t);
                p.cmd("SADD")
                    .arg(&tk)
                    .arg(&*e.head.key)
                    .ignore()
                    .cmd("EXPIRE")
                    .arg(&tk)
                    .arg(ttl)
                    .ignore();
            }
            let mut conn = self.conn.clone();
            self.call::<()>(Op::Set, self.cfg.timeout, p.query_async(&mut conn))
                .await;
        }
    }

    /// Deletes what `inv` names from Redis and publishes it to every instance. Returns the
    /// Redis keys deleted.
    pub async fn purge(&self, inv: &Purge) -> u64 {
        let limit = self.cfg.timeout.max(Duration::from_secs(1));
        let mut conn = self.conn.clone();
        let mut keys: Vec<String> = inv.urls.iter().map(|u| self.obj_key(u)).collect();
        for t in &inv.tags {
            let tk = self.tag_key(t);
            let members: Option<Vec<String>> = self
                .call(
                    Op::Purge,
                    limit,
                    redis::cmd("SMEMBERS").arg(&tk).query_async(&mut conn),
                )
                .await;
            keys.extend(members.unwrap_or_default().iter().map(|u| self.obj_key(u)));
            keys.push(tk);
        }
        let mut patterns: Vec<String> = inv
            .prefixes
            .iter()
            .map(|p| format!("{}*", glob_escape(&self.obj_key(p))))
            .collect();
        if inv.all {
            patterns.push(format!("{}:*", glob_escape(&self.cfg.key_prefix)));
        }
        for pat in patterns {
            let mut cursor = 0u64;
            // Bounded: SCAN ends when the cursor comes back to 0; at most 100k rounds.
            for _ in 0..100_000 {
                let r: Option<(u64, Vec<String>)> = self
                    .call(
                        Op::Purge,
                        limit,
                        redis::cmd("SCAN")
                            .arg(cursor)
                            .arg("MATCH")
                            .arg(&pat)
                            .arg("COUNT")
                            .arg(1000)
                            .query_async(&mut conn),
                    )
                    .await;
                let Some((next, found)) = r else { break };
                keys.extend(found);
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
        }
        let mut deleted = 0u64;
        for chunk in keys.chunks(500) {
            let n: Option<u64> = self
                .call(
                    Op::Purge,
                    limit,
                    redis::cmd("DEL").arg(chunk).query_async(&mut conn),
                )
                .await;
            deleted += n.unwrap_or(0);
        }
        let msg = Invalidation {
            from: self.instance.clone(),
            what: inv.clone(),
        };
        if let Ok(text) = serde_json::to_string(&msg) {
            self.call::<u64>(
                Op::Publish,
                limit,
                redis::cmd("PUBLISH")
                    .arg(self.channel())
                    .arg(text)
                    .query_async(&mut conn),
            )
            .await;
        }
        deleted
    }

    /// Listens on the invalidation channel for as long as the process runs, reconnecting
    /// after a second when the connection is lost.
    async fn subscriber(self: Arc<Self>, apply: impl Fn(Invalidation) + Send + Sync + 'static) {
        let channel = self.channel();
        loop {
            let started = self.mark();
            let connected = tokio::time::timeout(
                self.cfg.timeout.max(Duration::from_secs(1)),
                self.client.get_async_pubsub(),
            )
            .await;
            match connected {
                Ok(Ok(mut ps)) => match ps.subscribe(&channel).await {
                    Ok(()) => {
                        self.ok(started);
                        let mut stream = ps.on_message();
                        while let Some(msg) = stream.next().await {
                            match serde_json::from_slice::<Invalidation>(msg.get_payload_bytes()) {
                                Ok(inv) if inv.from != self.instance => apply(inv),
                                Ok(_) => {}
                                Err(e) => {
                                    tracing::warn!(error = %e, "ignored a malformed cache invalidation message")
                                }
                            }
                        }
                        self.failed(Op::Subscribe, "subscription closed");
                    }
                    Err(e) => self.failed(Op::Subscribe, &e.to_string()),
                },
                Ok(Err(e)) => self.failed(Op::Subscribe, &e.to_string()),
                Err(_) => self.failed(Op::Subscribe, "timed out"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_characters_are_escaped() {
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }

    #[test]
    fn variant_fields_differ_by_selecting_values() {
        let n = http::HeaderName::from_static("accept");
        let a = variant_field(&[(n.clone(), Some(Bytes::from("x")))]);
        let b = variant_field(&[(n.clone(), Some(Bytes::from("y")))]);
        let c = variant_field(&[(n, None)]);
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(variant_field(&[]), variant_field(&[]));
    }
}
