//! Smooth weighted round-robin, as nginx does it: weights 5,1,1 give a,a,b,a,c,a,a, never a
//! burst. The sequence is periodic with period sum(weights), so it is computed once when the
//! snapshot is built and each pick is one atomic increment plus an index: no lock, no
//! per-pick state update.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::Env;

/// Longest schedule kept; pools whose reduced weights sum past this are scaled down to it.
const MAX_SCHEDULE: u64 = 1 << 16;

/// Precomputed smooth weighted schedule.
pub struct Weighted {
    schedule: Box<[u32]>,
    next: AtomicUsize,
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// One period of nginx's smooth weighted round-robin over `weights`.
pub fn smooth_schedule(weights: &[u32]) -> Vec<u32> {
    let g = weights
        .iter()
        .fold(0u64, |g, &w| gcd(g, u64::from(w)))
        .max(1);
    let mut w: Vec<i64> = weights.iter().map(|&x| (u64::from(x) / g) as i64).collect();
    let total: i64 = w.iter().sum();
    if total as u64 > MAX_SCHEDULE {
        for x in &mut w {
            *x = ((*x as u64 * MAX_SCHEDULE / total as u64).max(1)) as i64;
        }
    }
    let total: i64 = w.iter().sum();
    let mut current = vec![0i64; w.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..w.len() {
            current[i] += w[i];
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(best as u32);
    }
    out
}

impl Weighted {
    /// Schedule for backends with these weights.
    pub fn new(weights: &[u32]) -> Self {
        Self {
            schedule: smooth_schedule(weights).into_boxed_slice(),
            next: AtomicUsize::new(0),
        }
    }

    /// The next usable member in the schedule. Unusable or slow-start-rejected entries are
    /// skipped; after a bounded number of misses any usable member is taken, so a pick is
    /// O(members) at worst.
    pub fn select(&self, members: &[u32], env: &Env<'_>) -> Option<usize> {
        let n = self.schedule.len();
        if n == 0 || members.is_empty() {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        for k in 0..n.min(2 * members.len()) {
            let i = members[self.schedule[(start + k) % n] as usize] as usize;
            if env.usable(i) && env.admit(i) {
                return Some(i);
            }
        }
        env.scan(members, start % members.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_sequence() {
        assert_eq!(smooth_schedule(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_schedule(&[2, 2]), vec![0, 1]);
        assert_eq!(smooth_schedule(&[1]), vec![0]);
    }
}
