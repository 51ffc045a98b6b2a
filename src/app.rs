//! Wiring only: build the first snapshot, bind listeners, spawn the servers, the admin API and
//! the reloader under one shutdown token, tell systemd, and drain on SIGTERM/SIGINT.

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, Admin};
use crate::config::Loaded;
use crate::health;
use crate::limit::Shedder;
use crate::metrics::CONFIG_GENERATION;
use crate::reload::{self, sd_notify, Reloader};
use crate::server::{self, Serving};
use crate::services::Services;
use crate::sockets::{self, Handoff, Inherited};
use crate::state::{SharedState, Snapshot};
use crate::task::supervise;
use crate::{upgrade, worker};

/// Runs sandgate until SIGTERM or SIGINT. `config_path` enables live reload; without it
/// (the demo) SIGHUP is logged and ignored.
/// `inherited` holds the sockets systemd or the previous process passed in.
pub async fn run(
    loaded: Loaded,
    config_path: Option<PathBuf>,
    prometheus: PrometheusHandle,
    mut inherited: Inherited,
) -> Result<(), String> {
    // Install signal handlers before anything else, so an early signal is not fatal.
    let mut term =
        signal(SignalKind::terminate()).map_err(|e| format!("cannot handle SIGTERM: {e}"))?;
    let mut int =
        signal(SignalKind::interrupt()).map_err(|e| format!("cannot handle SIGINT: {e}"))?;
    let hup = signal(SignalKind::hangup()).map_err(|e| format!("cannot handle SIGHUP: {e}"))?;
    let mut usr2 =
        signal(SignalKind::user_defined2()).map_err(|e| format!("cannot handle SIGUSR2: {e}"))?;

    for w in &loaded.warnings {
        tracing::warn!("config warning: {w}");
    }
    let cfg = loaded.config;
    // Before any pool exists: upstream pools keep idle connections per worker.
    worker::set_count(cfg.runtime.worker_threads.unwrap_or(1));
    let services = Arc::new(Services::new(&cfg.cache, cfg.otlp.as_ref())?);
    // Backends named by host:port are looked up before the first snapshot (blocking, once).
    let mut found = crate::discovery::Found::default();
    found.refresh_all(&cfg);
    let snap = Snapshot::build(&cfg, &found, None, &services.upstreams)?;
    metrics::gauge!(CONFIG_GENERATION).set(snap.generation as f64);
    let state: SharedState = Arc::new(ArcSwap::from_pointee(snap));

    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let mut background = Vec::new();
    let shed = Arc::new(Shedder::default());

    // Thread-per-core (`worker`): every listener gets one SO_REUSEPORT socket per worker.
    let serving = Serving {
        state: Arc::clone(&state),
        shed: Arc::clone(&shed),
        services: Arc::clone(&services),
        shutdown: shutdown.clone(),
        tracker: tracker.clone(),
    };
    let workers = cfg.runtime.worker_threads.unwrap_or(1);
    let mut others: Vec<Vec<(std::net::TcpListener, Arc<str>)>> =
        (1..workers).map(|_| Vec::new()).collect();
    let mut handoff = Handoff::default();
    for l in &cfg.listeners {
        let fail =
            |e: std::io::Error| format!("listener {}: cannot bind {}: {e}", l.name, l.address);
        let (per_worker, passed) =
            sockets::for_listener(&mut inherited, &mut handoff, &l.name, l.address, workers)
                .map_err(fail)?;
        let name: Arc<str> = Arc::from(l.name.as_str());
        for (k, list) in per_worker.into_iter().enumerate() {
            for socket in list {
                if k > 0 {
                    others[k - 1].push((socket, Arc::clone(&name)));
                    continue;
                }
                let listener = TcpListener::from_std(socket).map_err(fail)?;
                let bound = listener.local_addr().map_err(|e| e.to_string())?;
                tracing::info!(listener = %l.name, address = %bound, tls = l.tls.is_some(), workers, passed, "listening");
                background.push(tokio::spawn(server::serve(
                    listener,
                    Arc::clone(&name),
                    serving.clone(),
                )));
            }
        }
    }
    // Ends the other workers' runtimes once shutdown has drained (or its grace ran out).
    let workers_done = CancellationToken::new();
    for (k, sockets) in others.into_iter().enumerate() {
        spawn_worker(k + 1, sockets, serving.clone(), workers_done.clone())?;
    }
    // The recorder buffers histogram samples until they are folded in; do that periodically
    // so memory stays flat when nobody scrapes /metrics. Live series are touched each round,
    // so that only those of removed backends and routes go idle and are dropped.
    {
        let handle = prometheus.clone();
        let token = shutdown.clone();
        let (state, services, shed) =
            (Arc::clone(&state), Arc::clone(&services), Arc::clone(&shed));
        let every = (cfg.runtime.metrics_idle_timeout / 4).min(std::time::Duration::from_secs(5));
        background.push(supervise("metrics-upkeep", move || {
            let (handle, token) = (handle.clone(), token.clone());
            let (state, services, shed) =
                (Arc::clone(&state), Arc::clone(&services), Arc::clone(&shed));
            async move {
                let mut tick = tokio::time::interval(every);
                // Idle backend connections past their idle timeout, or closed by their backend, are
                // closed within a second.
                let mut reap = tokio::time::interval(std::time::Duration::from_secs(1));
                loop {
                    tokio::select! {
                        _ = token.cancelled() => return,
                        _ = tick.tick() => {
                            state.load().touch_metrics();
                            services.cache.touch_metrics();
                            shed.touch_metrics();
                            handle.run_upkeep();
                        }
                        _ = reap.tick() => services.upstreams.reap(),
                    }
                }
            }
        }));
    }
    if let Some(addr) = cfg.admin {
        let fail = |e: std::io::Error| format!("admin: cannot bind {addr}: {e}");
        let socket = match inherited.take(sockets::ADMIN).and_then(|mut s| s.pop()) {
            Some(s) => s,
            None => worker::bind(addr, 1)
                .map_err(fail)?
                .pop()
                .ok_or_else(|| format!("admin: no socket for {addr}"))?,
        };
        handoff.keep(sockets::ADMIN, &socket).map_err(fail)?;
        let listener = TcpListener::from_std(socket).map_err(fail)?;
        let bound = listener.local_addr().map_err(|e| e.to_string())?;
        tracing::info!(address = %bound, "admin listening");
        let admin = Arc::new(Admin::new(
            Arc::clone(&state),
            prometheus,
            Arc::clone(&services),
            Arc::clone(&shed),
        )?);
        background.push(tokio::spawn(admin::serve(
            listener,
            admin,
            shutdown.clone(),
        )));
    }
    match config_path {
        Some(path) => {
            drop(hup); // the reloader installs its own SIGHUP stream
            let reloader = Reloader::new(path, Arc::clone(&state), Arc::clone(&services));
            background.push(reload::spawn(reloader, shutdown.clone()));
        }
        None => {
            let token = shutdown.clone();
            background.push(tokio::spawn(async move {
                let mut hup = hup;
                loop {
                    tokio::select! {
                        _ = token.cancelled() => return,
                        _ = hup.recv() => tracing::info!("SIGHUP ignored: no config file to reload"),
                    }
                }
            }));
        }
    }

    {
        let (state, token) = (Arc::clone(&state), shutdown.clone());
        background.push(supervise("health", move || {
            health::run(Arc::clone(&state), token.clone())
        }));
    }

    // From here on, the snapshot's writers (reloads, runtime reweights) build from it.
    {
        let mut applied = services.lock_applied();
        applied.config = Some(Arc::new(cfg));
        applied.found = found;
    }
    {
        let (state, services, token) =
            (Arc::clone(&state), Arc::clone(&services), shutdown.clone());
        background.push(supervise("capacity", move || {
            let (state, services, token) =
                (Arc::clone(&state), Arc::clone(&services), token.clone());
            async move {
                let mut tick = tokio::time::interval(crate::capacity::SAMPLE_EVERY);
                loop {
                    tokio::select! {
                        _ = token.cancelled() => return,
                        _ = tick.tick() => services.capacity.sample(&state.load()),
                    }
                }
            }
        }));
    }
    {
        let (state, services, token) =
            (Arc::clone(&state), Arc::clone(&services), shutdown.clone());
        background.push(supervise("discovery", move || {
            crate::discovery::run(Arc::clone(&state), Arc::clone(&services), token.clone())
        }));
    }
    for name in inherited.unused() {
        tracing::warn!(
            name,
            "a passed socket matches no listener; it is not served"
        );
    }
    sd_notify(&[sd_notify::NotifyState::Ready]);
    tracing::info!(generation = state.load().generation, "sandgate ready");
    upgrade::tell_predecessor().await;

    let sig = loop {
        tokio::select! {
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
            _ = usr2.recv() => match upgrade::start_successor(&handoff).await {
                Ok(pid) => {
                    // systemd follows the new process from here on (it sends READY itself).
                    sd_notify(&[sd_notify::NotifyState::MainPid(pid)]);
                    tracing::info!(pid, old_pid = std::process::id(), "upgrade: new process ready; this one stops accepting and drains");
                    break "SIGUSR2";
                }
                Err(e) => tracing::error!(error = %e, "upgrade failed; this process keeps serving"),
            },
        }
    };
    let grace = state.load().runtime.shutdown_grace;
    tracing::info!(signal = sig, grace = ?grace, "shutting down: no new connections, draining in-flight requests");
    if sig != "SIGUSR2" {
        sd_notify(&[sd_notify::NotifyState::Stopping]);
    }
    // The kept duplicates go, so that the sockets close unless a successor holds them.
    handoff.clear();
    shutdown.cancel();
    tracker.close();
    services.tasks.close();
    let drained = async {
        tracker.wait().await;
        services.tasks.wait().await;
    };
    if tokio::time::timeout(grace, drained).await.is_err() {
        tracing::warn!(
            connections = tracker.len(),
            background = services.tasks.len(),
            "shutdown grace expired; closing the remaining connections"
        );
        // Tunnels still open are closed (WebSocket ones with a close frame); they get a
        // moment to write it.
        services.closing.cancel();
        let closed = services.tasks.wait();
        if tokio::time::timeout(std::time::Duration::from_secs(2), closed)
            .await
            .is_err()
        {
            tracing::warn!(
                background = services.tasks.len(),
                "tasks still running at exit"
            );
        }
    }
    for task in background {
        task.abort();
    }
    workers_done.cancel();
    tracing::info!("sandgate stopped");
    Ok(())
}

/// Worker `index` of `runtime.worker_threads`: a thread with a single-threaded runtime that
/// accepts on `sockets` until `done`.
fn spawn_worker(
    index: usize,
    sockets: Vec<(std::net::TcpListener, Arc<str>)>,
    serving: Serving,
    done: CancellationToken,
) -> Result<(), String> {
    let run = move || {
        worker::enter(index);
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(worker = index, error = %e, "cannot start a worker runtime");
                return;
            }
        };
        rt.block_on(async move {
            for (socket, name) in sockets {
                match TcpListener::from_std(socket) {
                    Ok(l) => drop(tokio::spawn(server::serve(l, name, serving.clone()))),
                    Err(e) => {
                        tracing::error!(listener = &*name, error = %e, "worker cannot accept")
                    }
                }
            }
            done.cancelled().await;
        });
    };
    std::thread::Builder::new()
        .name(format!("sandgate-worker-{index}"))
        .spawn(run)
        .map(drop)
        .map_err(|e| format!("cannot start worker thread {index}: {e}"))
}
