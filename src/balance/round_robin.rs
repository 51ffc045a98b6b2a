//! Exact rotation: the n-th pick goes to member n mod len, skipping unusable ones.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::Env;

/// Round-robin cursor.
#[derive(Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    /// The first usable member at or after the cursor; advances the cursor by one.
    pub fn select(&self, members: &[u32], env: &Env<'_>) -> Option<usize> {
        if members.is_empty() {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % members.len();
        env.scan(members, start)
    }
}
