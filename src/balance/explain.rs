//! `Sandgate-Explain`: why a pool picked the backend it picked, in words. Only requests that
//! ask for it (from `admin.explain_from`) pay for this; it reads the same state selection
//! did, just after it.

use std::fmt::Write;
use std::time::Instant;

use super::{Basic, Env, PickCtx, Pool, Strategy};
use crate::backend::Backend;

impl Pool {
    /// One try's explanation: the backend `chosen` and the strategy's reasons, then every
    /// backend that could not take the request and why. `exclude` are those tried before.
    pub fn explain(
        &self,
        ctx: &PickCtx<'_>,
        chosen: usize,
        exclude: &[usize],
        decision: Option<&str>,
    ) -> String {
        let env = self.env(exclude, ctx.now);
        let mut out = String::new();
        let addr = |i: usize| {
            self.backends
                .get(i)
                .map(|b| b.addr().to_string())
                .unwrap_or_default()
        };
        let _ = write!(out, "{}", addr(chosen));
        let why = match &self.strategy {
            Strategy::Basic(b) => basic(b, &self.members, &env, chosen),
            Strategy::Geo(g) => g.explain(ctx, &env, chosen),
            Strategy::Affinity(a) => a.explain(ctx, chosen),
        };
        let _ = write!(out, " by {}", decision.unwrap_or(why.0));
        if !why.1.is_empty() {
            let _ = write!(out, " ({})", why.1);
        }
        if env.panic {
            out.push_str(" [panic mode: health ignored]");
        }
        let skipped: Vec<String> = self
            .backends
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != chosen)
            .filter_map(|(i, b)| {
                skip_reason(b, exclude.contains(&i), ctx.now, env.panic)
                    .map(|r| format!("{} {r}", b.addr()))
            })
            .collect();
        if !skipped.is_empty() {
            let _ = write!(out, ", skipped {}", skipped.join(", "));
        }
        out
    }
}

/// Why `b` could not take the request, if it could not.
fn skip_reason(b: &Backend, tried: bool, now: Instant, panic: bool) -> Option<String> {
    if tried {
        return Some("(tried already)".to_owned());
    }
    if let Some(why) = b.state.overrides.out() {
        return Some(format!("({why} by the admin API)"));
    }
    if !panic && !b.state.is_healthy() {
        return Some("(unhealthy)".to_owned());
    }
    if !b.state.breaker_available(now) {
        let (_, reason) = b.state.breaker_view(now);
        return Some(format!(
            "({})",
            reason.unwrap_or_else(|| "breaker open".to_owned())
        ));
    }
    if !b.has_slot() {
        return Some(format!(
            "(full: {} in flight of {})",
            b.state.inflight(),
            b.max_connections
        ));
    }
    None
}

/// A basic strategy's name and reasons.
pub(super) fn basic(
    b: &Basic,
    members: &[u32],
    env: &Env<'_>,
    chosen: usize,
) -> (&'static str, String) {
    match b {
        Basic::RoundRobin(_) => ("round_robin", "next in rotation".to_owned()),
        Basic::Weighted(_) => (
            "weighted",
            format!(
                "smooth weighted rotation, weight {:.2}",
                env.effective_weight(chosen)
            ),
        ),
        Basic::LeastConn(_) => {
            // (in flight + 1) / weight, as selection saw it: the chosen one counts this
            // request already.
            let scores: Vec<String> = members
                .iter()
                .map(|&i| i as usize)
                .filter(|&i| i == chosen || env.usable(i))
                .map(|i| {
                    let own = u64::from(i != chosen);
                    let load = (env.backends[i].state.inflight() + own) as f64
                        / env.effective_weight(i).max(f64::MIN_POSITIVE);
                    format!("{}={load:.2}", env.backends[i].addr())
                })
                .collect();
            (
                "least_connections",
                format!("lowest (in-flight+1)/weight: {}", scores.join(" ")),
            )
        }
    }
}
