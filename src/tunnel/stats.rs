//! The tunnel metrics of one route, resolved once per snapshot (and carried over a reload for
//! a route that keeps its name, so that open tunnels are counted down on the same gauge).

use metrics::{Counter, Gauge};

use crate::metrics::{TUNNELS_OPEN, TUNNELS_TOTAL, TUNNEL_BYTES_TOTAL};

/// `sandgate_tunnels_*` of one route.
pub struct RouteTunnels {
    /// `sandgate_tunnels_open{route}`.
    pub open: Gauge,
    /// `sandgate_tunnels_total{route,result="upgraded"}`.
    pub upgraded: Counter,
    /// `result="refused"`: the backend answered something else than 101.
    pub refused: Counter,
    /// `result="error"`: no backend, or the upgrade failed.
    pub error: Counter,
    /// `sandgate_tunnel_bytes_total{route,direction="up"}`.
    pub up: Counter,
    /// `direction="down"`.
    pub down: Counter,
}

impl RouteTunnels {
    /// The handles of route `route`.
    pub fn new(route: &str) -> Self {
        let r = route.to_owned();
        let total = |result: &'static str| metrics::counter!(TUNNELS_TOTAL, "route" => r.clone(), "result" => result);
        let bytes = |direction: &'static str| metrics::counter!(TUNNEL_BYTES_TOTAL, "route" => r.clone(), "direction" => direction);
        Self {
            open: metrics::gauge!(TUNNELS_OPEN, "route" => r.clone()),
            upgraded: total("upgraded"),
            refused: total("refused"),
            error: total("error"),
            up: bytes("up"),
            down: bytes("down"),
        }
    }

    /// Keeps the series alive (see [`crate::metrics::touch`]).
    pub fn touch(&self) {
        crate::metrics::touch(&[
            &self.upgraded,
            &self.refused,
            &self.error,
            &self.up,
            &self.down,
        ]);
        crate::metrics::touch_gauges(&[&self.open]);
    }
}

/// Counts a tunnel open for as long as it lives.
pub struct OpenTunnel(Gauge);

impl OpenTunnel {
    /// Counts one more open tunnel on `g`.
    pub fn new(g: &Gauge) -> Self {
        g.increment(1.0);
        Self(g.clone())
    }
}

impl Drop for OpenTunnel {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}
