//! What an operator set on a backend at runtime through the admin API (drain, weight,
//! disable, a forced breaker state). It lives in the backend's shared state, so it survives
//! reloads for as long as the backend stays in its pool; selection reads it with one relaxed
//! load.

use std::sync::atomic::{AtomicU32, Ordering};

const DRAIN: u32 = 1;
const DISABLED: u32 = 2;
const BREAKER_OPEN: u32 = 4;
const BREAKER_CLOSED: u32 = 8;

/// A forced breaker state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForcedBreaker {
    /// Open: no request goes to the backend.
    Open,
    /// Closed: requests go whatever the breaker would say.
    Closed,
}

/// The overrides of one backend.
#[derive(Debug, Default)]
pub struct Overrides {
    flags: AtomicU32,
    /// 0: the configured weight.
    weight: AtomicU32,
}

impl Overrides {
    fn set_flag(&self, flag: u32, on: bool) {
        if on {
            self.flags.fetch_or(flag, Ordering::Relaxed);
        } else {
            self.flags.fetch_and(!flag, Ordering::Relaxed);
        }
    }

    /// Drains the backend (no new requests or sessions) or ends the drain.
    pub fn set_drain(&self, on: bool) {
        self.set_flag(DRAIN, on);
    }

    /// Takes the backend out at once, as if unhealthy, or puts it back.
    pub fn set_disabled(&self, on: bool) {
        self.set_flag(DISABLED, on);
    }

    /// Forces the breaker, or (None) lets it run again.
    pub fn set_breaker(&self, b: Option<ForcedBreaker>) {
        self.set_flag(BREAKER_OPEN, b == Some(ForcedBreaker::Open));
        self.set_flag(BREAKER_CLOSED, b == Some(ForcedBreaker::Closed));
    }

    /// Sets the weight (1 to 10000), or (None) goes back to the configured one.
    pub fn set_weight(&self, w: Option<u32>) {
        self.weight.store(w.unwrap_or(0), Ordering::Relaxed);
    }

    /// Clears every override.
    pub fn clear(&self) {
        self.flags.store(0, Ordering::Relaxed);
        self.weight.store(0, Ordering::Relaxed);
    }

    /// Why the overrides keep the backend from new requests, if they do (one relaxed load:
    /// selection asks for every candidate).
    #[inline]
    pub fn out(&self) -> Option<&'static str> {
        let f = self.flags.load(Ordering::Relaxed);
        if f & DISABLED != 0 {
            Some("disabled")
        } else if f & DRAIN != 0 {
            Some("drained")
        } else if f & BREAKER_OPEN != 0 {
            Some("breaker forced open")
        } else {
            None
        }
    }

    /// The forced breaker state, if any.
    pub fn breaker(&self) -> Option<ForcedBreaker> {
        let f = self.flags.load(Ordering::Relaxed);
        if f & BREAKER_OPEN != 0 {
            Some(ForcedBreaker::Open)
        } else if f & BREAKER_CLOSED != 0 {
            Some(ForcedBreaker::Closed)
        } else {
            None
        }
    }

    /// The weight set at runtime, if any.
    pub fn weight(&self) -> Option<u32> {
        Some(self.weight.load(Ordering::Relaxed)).filter(|w| *w > 0)
    }

    /// The overrides as the admin API shows them (None when there are none).
    pub fn view(&self) -> Option<serde_json::Value> {
        let f = self.flags.load(Ordering::Relaxed);
        if f == 0 && self.weight().is_none() {
            return None;
        }
        let mut v = serde_json::Map::new();
        if f & DRAIN != 0 {
            v.insert("drain".into(), true.into());
        }
        if f & DISABLED != 0 {
            v.insert("disabled".into(), true.into());
        }
        match self.breaker() {
            Some(ForcedBreaker::Open) => drop(v.insert("breaker".into(), "open".into())),
            Some(ForcedBreaker::Closed) => drop(v.insert("breaker".into(), "closed".into())),
            None => {}
        }
        if let Some(w) = self.weight() {
            v.insert("weight".into(), w.into());
        }
        Some(v.into())
    }
}
