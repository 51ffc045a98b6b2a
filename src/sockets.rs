//! Where the listening sockets come from: passed in by systemd socket activation or by the
//! previous sandgate at a binary upgrade (`LISTEN_FDS`, named by `LISTEN_FDNAMES`, matched
//! to `listeners[].name`, and `admin` for the admin listener), else bound here. Every socket
//! in use is also kept in the [`Handoff`], so that an upgrade can pass it on.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::OwnedFd;

use crate::worker;

/// The name the admin listener's socket goes by in `LISTEN_FDNAMES`.
pub const ADMIN: &str = "admin";

/// Sockets handed to this process, by name.
#[derive(Debug, Default)]
pub struct Inherited {
    by_name: HashMap<String, Vec<TcpListener>>,
}

impl Inherited {
    /// Takes the sockets of `LISTEN_FDS` (for this process: `LISTEN_PID`, when set, must be
    /// ours) and clears the variables, so that no child sees them. Call it before any thread
    /// starts. A passed descriptor that is not a TCP listener is an error.
    pub fn from_env() -> Result<Self, String> {
        let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
            .map(|v| v.split(':').map(str::to_owned).collect())
            .unwrap_or_default();
        std::env::remove_var("LISTEN_FDNAMES");
        let mut fds = listenfd::ListenFd::from_env();
        let mut by_name: HashMap<String, Vec<TcpListener>> = HashMap::new();
        for i in 0..fds.len() {
            let name = names.get(i).map_or("unknown", String::as_str);
            let socket = fds
                .take_tcp_listener(i)
                .map_err(|e| format!("passed socket {i} ({name}): {e}"))?;
            if let Some(s) = socket {
                s.set_nonblocking(true)
                    .map_err(|e| format!("passed socket {i} ({name}): {e}"))?;
                by_name.entry(name.to_owned()).or_default().push(s);
            }
        }
        Ok(Self { by_name })
    }

    /// Whether nothing was passed.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The names of sockets passed but not taken.
    pub fn unused(&self) -> Vec<&str> {
        self.by_name.keys().map(String::as_str).collect()
    }

    /// Takes the sockets passed under `name`.
    pub fn take(&mut self, name: &str) -> Option<Vec<TcpListener>> {
        self.by_name.remove(name)
    }
}

/// Every listening socket in use, by name, for a successor to inherit.
#[derive(Debug, Default)]
pub struct Handoff {
    sockets: Vec<(String, OwnedFd)>,
}

impl Handoff {
    /// Keeps a duplicate of `socket` under `name`.
    pub fn keep(&mut self, name: &str, socket: &TcpListener) -> std::io::Result<()> {
        self.sockets
            .push((name.to_owned(), OwnedFd::from(socket.try_clone()?)));
        Ok(())
    }

    /// Duplicates of the kept sockets, with their names, in order.
    pub fn duplicates(&self) -> std::io::Result<Vec<(String, OwnedFd)>> {
        self.sockets
            .iter()
            .map(|(n, fd)| Ok((n.clone(), fd.try_clone()?)))
            .collect()
    }

    /// Closes the kept duplicates (at shutdown, so that the sockets really close).
    pub fn clear(&mut self) {
        self.sockets.clear();
    }
}

/// The sockets of the listener `name`, as one list per worker: the ones passed in under its
/// name when there are (each served by some worker, and shared when fewer than the workers),
/// else `workers` `SO_REUSEPORT` sockets bound on `addr`. Each is kept in `handoff`.
/// Returns whether they were passed in.
pub fn for_listener(
    inherited: &mut Inherited,
    handoff: &mut Handoff,
    name: &str,
    addr: SocketAddr,
    workers: usize,
) -> std::io::Result<(Vec<Vec<TcpListener>>, bool)> {
    let workers = workers.max(1);
    let (sockets, passed) = match inherited.take(name) {
        Some(s) => (s, true),
        None => (worker::bind(addr, workers)?, false),
    };
    for s in &sockets {
        handoff.keep(name, s)?;
    }
    let k = sockets.len();
    let mut per_worker: Vec<Vec<TcpListener>> = (0..workers).map(|_| Vec::new()).collect();
    // Fewer sockets than workers: the extra workers accept on duplicates.
    for (i, list) in per_worker.iter_mut().enumerate().skip(k) {
        if let Some(s) = sockets.get(i % k.max(1)) {
            list.push(s.try_clone()?);
        }
    }
    for (j, s) in sockets.into_iter().enumerate() {
        per_worker[j % workers].push(s);
    }
    Ok((per_worker, passed))
}
