//! Thread-per-core: with `runtime.worker_threads: N`, N single-threaded runtimes each accept on
//! their own `SO_REUSEPORT` socket of every listener and keep their own idle upstream
//! connections, so a request is served start to end on one thread and wakes no other. The
//! first worker is the main runtime, which also runs the admin API, reloads and health
//! checks. The snapshot, counters and backend state are shared by all.

use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::OnceLock;

static COUNT: OnceLock<usize> = OnceLock::new();

thread_local! {
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// Sets how many workers serve requests (once, at start; later calls are ignored).
pub fn set_count(n: usize) {
    let _ = COUNT.set(n.max(1));
}

/// How many workers serve requests (1 until set).
pub fn count() -> usize {
    COUNT.get().copied().unwrap_or(1)
}

/// The worker this thread is (0: the main runtime, and any thread that is not a worker).
pub fn index() -> usize {
    INDEX.with(Cell::get).min(count() - 1)
}

/// Marks this thread as worker `i`.
pub fn enter(i: usize) {
    INDEX.with(|c| c.set(i));
}

/// The accept queue of each listening socket, as `Backlog=` in `systemd/sandgate.socket`; the
/// kernel caps it at `net.core.somaxconn`. A spike of new connections beyond it has its
/// handshakes dropped and retried by the clients a second later.
const BACKLOG: u32 = 4096;

/// `n` listening sockets on `addr`, all bound with `SO_REUSEPORT` (the kernel spreads new
/// connections over them), non-blocking, for `tokio::net::TcpListener::from_std`. With
/// port 0 the first socket picks the port and the others join it.
pub fn bind(addr: SocketAddr, n: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    let mut out = Vec::with_capacity(n);
    let mut at = addr;
    for _ in 0..n.max(1) {
        let socket = if at.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        if n > 1 {
            socket.set_reuseport(true)?;
        }
        socket.bind(at)?;
        let l = socket.listen(BACKLOG)?;
        at = l.local_addr()?;
        out.push(l.into_std()?);
    }
    Ok(out)
}
