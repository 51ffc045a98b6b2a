//! Least connections: the backend with the fewest in-flight requests relative to its
//! (slow-start adjusted) weight. A request is in flight until its response body ends.
//! Pools of up to [`EXACT_SCAN_MAX`] members are scanned exactly, starting at a rotating
//! offset so that ties rotate; larger pools use power-of-two-choices.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::Env;

/// Largest member count scanned exactly.
pub const EXACT_SCAN_MAX: usize = 16;

/// Least-connections state: only the tie-breaking cursor.
#[derive(Default)]
pub struct LeastConn {
    next: AtomicUsize,
}

/// (in-flight + 1) / weight: counting the request being placed makes weights (and slow
/// start) matter even when every backend is idle.
#[inline]
fn load(env: &Env<'_>, i: usize) -> f64 {
    (env.backends[i].state.inflight() + 1) as f64 / env.effective_weight(i).max(f64::MIN_POSITIVE)
}

impl LeastConn {
    /// Picks the least-loaded usable member.
    pub fn select(&self, members: &[u32], env: &Env<'_>) -> Option<usize> {
        let n = members.len();
        if n == 0 {
            return None;
        }
        if n <= EXACT_SCAN_MAX {
            let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
            let mut best: Option<(usize, f64)> = None;
            for k in 0..n {
                let i = members[(start + k) % n] as usize;
                if !env.usable(i) {
                    continue;
                }
                let l = load(env, i);
                if best.is_none_or(|(_, bl)| l < bl) {
                    best = Some((i, l));
                }
            }
            return best.map(|(i, _)| i);
        }
        // Power of two choices among usable members; a few draws find usable ones in all but
        // badly degraded pools, and the scan covers those.
        let mut picks = [usize::MAX; 2];
        let mut found = 0;
        for _ in 0..8 {
            let i = members[fastrand::usize(..n)] as usize;
            if env.usable(i) && (found == 0 || picks[0] != i) {
                picks[found] = i;
                found += 1;
                if found == 2 {
                    break;
                }
            }
        }
        match found {
            2 => Some(if load(env, picks[1]) < load(env, picks[0]) {
                picks[1]
            } else {
                picks[0]
            }),
            1 => Some(picks[0]),
            _ => env.scan(members, fastrand::usize(..n)),
        }
    }
}
