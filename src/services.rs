//! Process-wide services that outlive config snapshots, handed to the pipeline in one value:
//! the upstream connection pools, the response cache, and the tracker of tasks that run apart
//! from any request (cache fills, background revalidations, invalidations).

use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cache::Cache;
use crate::config::{CacheConfig, Config, OtlpConfig};
use crate::discovery::Found;
use crate::upstream::Upstreams;

/// Everything the pipeline uses that is not part of one config generation.
pub struct Services {
    /// Upstream connection pools (kept across reloads).
    pub upstreams: Upstreams,
    /// The response cache's stores.
    pub cache: Arc<Cache>,
    /// Tasks that may outlive the request that started them (and tunnels); shutdown waits
    /// for them.
    pub tasks: TaskTracker,
    /// Fires when the shutdown grace has run out: open tunnels close.
    pub closing: CancellationToken,
    /// What the serving snapshot was built from. Every writer of the snapshot (a reload, a
    /// runtime reweight, discovery) holds this lock while it builds and stores, so that one
    /// never overwrites the other with older inputs. std Mutex: cold paths only, never
    /// across an await.
    pub applied: Mutex<Applied>,
    /// The capacity sampler's memory.
    pub capacity: crate::capacity::Tracker,
    /// The OTLP span exporter, when `tracing.otlp` is set (restart to change).
    pub otlp: Option<crate::otlp::Otlp>,
}

/// The inputs of the serving snapshot.
#[derive(Debug, Default)]
pub struct Applied {
    /// The config (None until start-up has built the first snapshot).
    pub config: Option<Arc<Config>>,
    /// The backends discovery found for it.
    pub found: Found,
}

impl Services {
    /// Builds the services for `cache` and `otlp`; must run inside the runtime (Redis and
    /// the exporter start tasks).
    pub fn new(cache: &CacheConfig, otlp: Option<&OtlpConfig>) -> Result<Self, String> {
        Ok(Self {
            upstreams: Upstreams::default(),
            cache: Cache::new(cache)?,
            tasks: TaskTracker::new(),
            closing: CancellationToken::new(),
            applied: Mutex::new(Applied::default()),
            capacity: crate::capacity::Tracker::default(),
            otlp: otlp.map(crate::otlp::Otlp::start).transpose()?,
        })
    }

    /// Locks the snapshot's inputs (a poisoned lock is taken over: its data stays valid).
    pub fn lock_applied(&self) -> std::sync::MutexGuard<'_, Applied> {
        self.applied.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The config the serving snapshot was built from.
    pub fn applied_config(&self) -> Option<Arc<Config>> {
        self.lock_applied().config.clone()
    }
}
