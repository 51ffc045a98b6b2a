//! Exact rotation: the n-th pick goes to backend n mod len, skipping unusable ones.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Round-robin cursor.
#[derive(Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    /// The first usable backend at or after the cursor; advances the cursor by one.
    pub fn select(&self, len: usize, usable: impl Fn(usize) -> bool) -> Option<usize> {
        if len == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % len;
        (0..len).map(|i| (start + i) % len).find(|&i| usable(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_and_skips() {
        let rr = RoundRobin::default();
        let picks: Vec<_> = (0..6).filter_map(|_| rr.select(3, |_| true)).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        let picks: Vec<_> = (0..3).filter_map(|_| rr.select(3, |i| i != 1)).collect();
        assert_eq!(picks, [0, 2, 2]);
        assert_eq!(rr.select(3, |_| false), None);
        assert_eq!(rr.select(0, |_| true), None);
    }
}
