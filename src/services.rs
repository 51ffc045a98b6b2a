//! Process-wide services that outlive config snapshots, handed to the pipeline in one value:
//! the upstream connection pools and the tracker of tasks that run apart from any request.

use tokio_util::task::TaskTracker;

use crate::upstream::Upstreams;

/// Everything the pipeline uses that is not part of one config generation.
#[derive(Default)]
pub struct Services {
    /// Upstream connection pools (kept across reloads).
    pub upstreams: Upstreams,
    /// Tasks that may outlive the request that started them; shutdown waits for them.
    pub tasks: TaskTracker,
}
