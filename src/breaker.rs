//! Per-backend circuit breaker: a pure state machine with the clock passed in.
//!
//! ```text
//!            failures >= consecutive_failures, or
//!            failure share >= failure_rate over `window` (once min_requests were seen)
//!   Closed ─────────────────────────────────────────────────────────────▶ Open(until = now + open_for)
//!     ▲                                                                    │
//!     │ all half_open_requests probes succeed                              │ now >= until
//!     │ (open_for resets to its configured value)                          ▼
//!     └──────────────────────────────────────────────────────────────── HalfOpen
//!                                                                          │
//!            any probe fails: Open again, open_for doubled (up to max_open_for)
//! ```
//!
//! Open: the backend is skipped by selection, so requests go elsewhere. HalfOpen: only
//! `half_open_requests` probes are admitted at a time. Outcomes are classified by
//! `failure_on`; anything else counts as a success.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::config::{BreakerConfig, Outcome};

/// The breaker's state, as exported (`sandgate_breaker_state`: 0, 1, 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Passing traffic.
    Closed = 0,
    /// Rejecting traffic.
    Open = 1,
    /// Admitting probes.
    HalfOpen = 2,
}

impl State {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }
}

/// Whether a request may go to the backend, and as what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// Closed: a normal request.
    Normal,
    /// HalfOpen: one of the probes.
    Probe,
}

/// The decision core. Not thread-safe by itself; `backend.rs` wraps it.
#[derive(Debug)]
pub struct Breaker {
    cfg: BreakerConfig,
    state: State,
    consecutive: u32,
    /// Outcomes in the window: (time, failed).
    window: VecDeque<(Instant, bool)>,
    failures_in_window: u32,
    until: Instant,
    current_open_for: Duration,
    probes_in_flight: u32,
    probes_succeeded: u32,
    /// Why it last opened, for the admin API.
    reason: String,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(cfg: BreakerConfig, now: Instant) -> Self {
        let open_for = cfg.open_for;
        Self {
            cfg,
            state: State::Closed,
            consecutive: 0,
            window: VecDeque::new(),
            failures_in_window: 0,
            until: now,
            current_open_for: open_for,
            probes_in_flight: 0,
            probes_succeeded: 0,
            reason: String::new(),
        }
    }

    /// Replaces the settings (on reload), keeping the state.
    pub fn reconfigure(&mut self, cfg: BreakerConfig) {
        if cfg != self.cfg {
            self.current_open_for = self.current_open_for.clamp(cfg.open_for, cfg.max_open_for);
            self.cfg = cfg;
        }
    }

    /// The state at `now` (an expired Open reads as HalfOpen).
    pub fn state(&self, now: Instant) -> State {
        match self.state {
            State::Open if now >= self.until => State::HalfOpen,
            s => s,
        }
    }

    /// Whether selection may pick the backend at `now` (without taking a permit).
    pub fn available(&self, now: Instant) -> bool {
        match self.state(now) {
            State::Closed => true,
            State::Open => false,
            State::HalfOpen => self.probes_in_flight < self.cfg.half_open_requests,
        }
    }

    /// Takes a permit at `now`; None when the breaker rejects. Returns the transition made,
    /// if any (Open -> HalfOpen).
    pub fn acquire(&mut self, now: Instant) -> (Option<Permit>, Option<State>) {
        let mut moved = None;
        if self.state == State::Open && now >= self.until {
            self.state = State::HalfOpen;
            self.probes_in_flight = 0;
            self.probes_succeeded = 0;
            moved = Some(State::HalfOpen);
        }
        let permit = match self.state {
            State::Closed => Some(Permit::Normal),
            State::Open => None,
            State::HalfOpen if self.probes_in_flight < self.cfg.half_open_requests => {
                self.probes_in_flight += 1;
                Some(Permit::Probe)
            }
            State::HalfOpen => None,
        };
        (permit, moved)
    }

    /// Records the outcome of a request admitted with `permit`; returns the new state if it
    /// changed.
    pub fn record(&mut self, permit: Permit, outcome: Outcome, now: Instant) -> Option<State> {
        let failed = self.cfg.failure_on.contains(outcome);
        match (self.state, permit) {
            (State::HalfOpen, Permit::Probe) => {
                self.probes_in_flight = self.probes_in_flight.saturating_sub(1);
                if failed {
                    let doubled = (self.current_open_for * 2).min(self.cfg.max_open_for);
                    self.current_open_for = doubled;
                    self.open(now, format!("probe failed ({})", outcome.label()));
                    return Some(State::Open);
                }
                self.probes_succeeded += 1;
                if self.probes_succeeded >= self.cfg.half_open_requests {
                    self.close();
                    return Some(State::Closed);
                }
                None
            }
            (State::Closed, Permit::Normal) => {
                self.push_window(now, failed);
                if failed {
                    self.consecutive += 1;
                } else {
                    self.consecutive = 0;
                }
                let n = self.window.len() as u32;
                let rate = f64::from(self.failures_in_window) / f64::from(n.max(1));
                if self.consecutive >= self.cfg.consecutive_failures {
                    self.open(
                        now,
                        format!(
                            "{} consecutive failures (last: {})",
                            self.consecutive,
                            outcome.label()
                        ),
                    );
                    Some(State::Open)
                } else if n >= self.cfg.min_requests && rate >= self.cfg.failure_rate {
                    self.open(
                        now,
                        format!(
                            "{:.0}% of {n} requests failed in {:?}",
                            rate * 100.0,
                            self.cfg.window
                        ),
                    );
                    Some(State::Open)
                } else {
                    None
                }
            }
            // A late outcome from before the last transition: it says nothing about now.
            _ => None,
        }
    }

    /// Gives back a permit whose request ended without an outcome (the client went away):
    /// a probe's slot is freed, and nothing is counted.
    pub fn cancel(&mut self, permit: Permit) {
        if let (State::HalfOpen, Permit::Probe) = (self.state, permit) {
            self.probes_in_flight = self.probes_in_flight.saturating_sub(1);
        }
    }

    /// Why the breaker last opened, and until when (for the admin API).
    pub fn describe(&self, now: Instant) -> Option<String> {
        match self.state(now) {
            State::Closed => None,
            State::Open => Some(format!(
                "breaker open for another {:.1}s after {}",
                self.until.saturating_duration_since(now).as_secs_f64(),
                self.reason
            )),
            State::HalfOpen => Some(format!("breaker half-open, probing after {}", self.reason)),
        }
    }

    /// The open period the next opening would use.
    pub fn current_open_for(&self) -> Duration {
        self.current_open_for
    }

    fn push_window(&mut self, now: Instant, failed: bool) {
        self.window.push_back((now, failed));
        self.failures_in_window += u32::from(failed);
        while let Some(&(t, f)) = self.window.front() {
            if now.saturating_duration_since(t) <= self.cfg.window && self.window.len() <= 100_000 {
                break;
            }
            self.window.pop_front();
            self.failures_in_window -= u32::from(f);
        }
    }

    fn open(&mut self, now: Instant, reason: String) {
        self.state = State::Open;
        self.until = now + self.current_open_for;
        self.reason = reason;
        self.consecutive = 0;
        self.window.clear();
        self.failures_in_window = 0;
        self.probes_in_flight = 0;
        self.probes_succeeded = 0;
    }

    fn close(&mut self) {
        self.state = State::Closed;
        self.current_open_for = self.cfg.open_for;
        self.consecutive = 0;
        self.window.clear();
        self.failures_in_window = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OutcomeSet;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: 3,
            failure_rate: 0.5,
            window: Duration::from_secs(10),
            min_requests: 10,
            open_for: Duration::from_secs(5),
            max_open_for: Duration::from_secs(30),
            half_open_requests: 2,
            failure_on: OutcomeSet::default_failures(),
        }
    }

    const FAIL: Outcome = Outcome::ConnectError;
    const OK: Outcome = Outcome::Status(200);

    fn hit(b: &mut Breaker, o: Outcome, now: Instant) -> Option<State> {
        let (p, _) = b.acquire(now);
        b.record(p.expect("permit"), o, now)
    }

    #[test]
    fn consecutive_failures_open_and_successes_reset() {
        let t = Instant::now();
        let mut b = Breaker::new(cfg(), t);
        assert_eq!(hit(&mut b, FAIL, t), None);
        assert_eq!(hit(&mut b, FAIL, t), None);
        assert_eq!(hit(&mut b, OK, t), None, "a success resets the streak");
        assert_eq!(hit(&mut b, FAIL, t), None);
        assert_eq!(hit(&mut b, FAIL, t), None);
        assert_eq!(hit(&mut b, FAIL, t), Some(State::Open));
        assert!(!b.available(t));
        assert_eq!(b.acquire(t).0, None, "open rejects");
        assert!(b
            .describe(t)
            .unwrap()
            .contains("3 consecutive failures (last: connect_error)"));
    }

    #[test]
    fn statuses_outside_failure_on_are_successes() {
        let t = Instant::now();
        let mut b = Breaker::new(cfg(), t);
        for _ in 0..10 {
            assert_eq!(hit(&mut b, Outcome::Status(500), t), None);
        }
        assert_eq!(b.state(t), State::Closed);
    }

    #[test]
    fn failure_rate_opens_once_min_requests_were_seen() {
        let t = Instant::now();
        let mut b = Breaker::new(cfg(), t);
        // Alternate: never 3 in a row, 50% failures.
        for i in 0..9 {
            assert_eq!(
                hit(&mut b, if i % 2 == 0 { FAIL } else { OK }, t),
                None,
                "{i}"
            );
        }
        assert_eq!(
            hit(&mut b, OK, t),
            Some(State::Open),
            "10th request: 5/10 failed"
        );
    }

    #[test]
    fn old_outcomes_leave_the_window() {
        let t = Instant::now();
        let mut b = Breaker::new(cfg(), t);
        for i in 0..9 {
            hit(&mut b, if i % 2 == 0 { FAIL } else { OK }, t);
        }
        // 11s later the earlier outcomes no longer count.
        let later = t + Duration::from_secs(11);
        assert_eq!(hit(&mut b, OK, later), None);
        assert_eq!(b.state(later), State::Closed);
    }

    #[test]
    fn half_open_closes_after_all_probes_succeed() {
        let t = Instant::now();
        let mut b = Breaker::new(cfg(), t);
        for _ in 0..3 {
            hit(&mut b, FAIL, t);
        }
        let t1 = t + Duration::from_secs(5);
        assert_eq!(b.state(t1), State::HalfOpen);
        let (p1, moved) = b.acquire(t1);
        assert_eq!((p1, moved), (Some(Permit::Probe), Some(State::HalfOpen)));
        let (p2, _) = b.acquire(t1);
        assert_eq!(p2, Some(Permit::Probe));
        assert_eq!(
            b.acquire(t1).0,
            None,
            "only half_open_requests probes at once"
        );
        assert!(!b.available(t1));
        assert_eq!(b.record(Permit::Probe, OK, t1), None);
        assert_eq!(b.record(Permit::Probe, OK, t1), Some(State::Closed));
        assert_eq!(b.current_open_for(), Duration::from_secs(5));
    }

    #[test]
    fn flapping_doubles_open_for_up_to_the_cap_and_recovery_resets_it() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg(), t0);
        for _ in 0..3 {
            hit(&mut b, FAIL, t0);
        }
        let mut now = t0;
        let mut periods = Vec::new();
        for _ in 0..4 {
            // Find when it half-opens, then fail the probe.
            let open_for = b.current_open_for();
            assert!(!b.available(now + open_for - Duration::from_millis(1)));
            now += open_for;
            periods.push(open_for.as_secs());
            let (p, _) = b.acquire(now);
            assert_eq!(b.record(p.unwrap(), FAIL, now), Some(State::Open));
        }
        assert_eq!(periods, [5, 10, 20, 30]);
        assert_eq!(
            b.current_open_for(),
            Duration::from_secs(30),
            "capped at max_open_for"
        );
        now += Duration::from_secs(30);
        for _ in 0..2 {
            let (p, _) = b.acquire(now);
            b.record(p.unwrap(), OK, now);
        }
        assert_eq!(b.state(now), State::Closed);
        assert_eq!(b.current_open_for(), Duration::from_secs(5));
    }

    #[test]
    fn a_cancelled_probe_frees_its_slot() {
        let t = Instant::now();
        let mut b = Breaker::new(cfg(), t);
        for _ in 0..3 {
            hit(&mut b, FAIL, t);
        }
        let t1 = t + Duration::from_secs(5);
        let (p1, _) = b.acquire(t1);
        let (p2, _) = b.acquire(t1);
        assert!(!b.available(t1), "both probe slots taken");
        b.cancel(p1.unwrap());
        assert!(b.available(t1), "the client of one probe went away");
        let (p3, _) = b.acquire(t1);
        assert_eq!(b.record(p2.unwrap(), OK, t1), None);
        assert_eq!(b.record(p3.unwrap(), OK, t1), Some(State::Closed));
    }

    #[test]
    fn late_outcomes_from_before_a_transition_are_ignored() {
        let t = Instant::now();
        let mut b = Breaker::new(cfg(), t);
        for _ in 0..3 {
            hit(&mut b, FAIL, t);
        }
        // A request admitted while closed finishes after the breaker opened.
        assert_eq!(b.record(Permit::Normal, FAIL, t), None);
        assert_eq!(b.state(t), State::Open);
    }
}
