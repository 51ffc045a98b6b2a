//! Live reload, the only writer of the shared snapshot. Triggers: a change of the config file
//! (watched through its directory, debounced, so editors that write a temp file and rename it
//! over the original are seen) or SIGHUP (always reloads, even when the file is unchanged).
//! A bad file is logged with the same errors `check` prints, counted, and the old snapshot
//! keeps serving.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::RecursiveMode;
use notify_debouncer_mini::{new_debouncer, DebounceEventResult};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config;
use crate::metrics::{CONFIG_GENERATION, CONFIG_RELOADS_TOTAL, TASK_RESTARTS_TOTAL};
use crate::services::{Applied, Services};
use crate::state::{SharedState, Snapshot};

/// Why a reload happened.
#[derive(Debug, Clone, Copy)]
pub enum Trigger {
    /// SIGHUP.
    Signal,
    /// The file changed on disk.
    FileChange,
}

/// Reloads the config at `path` into `state`.
pub struct Reloader {
    path: PathBuf,
    state: SharedState,
    services: Arc<Services>,
    /// Hash of the last file content seen, so that a burst of file events for one write
    /// reloads once.
    last_digest: Option<u64>,
}

fn digest(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// Tells systemd about a state change; a failure is logged (outside systemd it is a no-op).
pub(crate) fn sd_notify(states: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

impl Reloader {
    /// A reloader for the file at `path`, whose current content is already loaded in `state`.
    pub fn new(path: PathBuf, state: SharedState, services: Arc<Services>) -> Self {
        let last_digest = std::fs::read(&path).ok().map(|b| digest(&b));
        Self {
            path,
            state,
            services,
            last_digest,
        }
    }

    /// Loads the file and swaps in a new snapshot. Returns the new generation.
    pub fn reload(&mut self, trigger: Trigger) -> Result<u64, String> {
        if let Trigger::FileChange = trigger {
            match std::fs::read(&self.path) {
                Ok(b) if Some(digest(&b)) == self.last_digest => {
                    return Ok(self.state.load().generation)
                }
                Ok(b) => self.last_digest = Some(digest(&b)),
                // Mid-rename the file may be briefly missing; the next event reloads.
                Err(_) => {}
            }
        }
        sd_notify(&[
            sd_notify::NotifyState::Reloading,
            sd_notify::NotifyState::monotonic_usec_now()
                .unwrap_or(sd_notify::NotifyState::Reloading),
        ]);
        let result = self.try_reload(trigger);
        sd_notify(&[sd_notify::NotifyState::Ready]);
        match &result {
            Ok(generation) => {
                metrics::counter!(CONFIG_RELOADS_TOTAL, "result" => "success").increment(1);
                metrics::gauge!(CONFIG_GENERATION).set(*generation as f64);
            }
            Err(errors) => {
                metrics::counter!(CONFIG_RELOADS_TOTAL, "result" => "error").increment(1);
                for line in errors.lines() {
                    tracing::error!(path = %self.path.display(), "config error: {line}");
                }
                tracing::error!(
                    path = %self.path.display(),
                    trigger = ?trigger,
                    generation = self.state.load().generation,
                    "config reload rejected; the previous config keeps serving"
                );
            }
        }
        result
    }

    fn try_reload(&self, trigger: Trigger) -> Result<u64, String> {
        let loaded = config::load(&self.path).map_err(|e| e.to_string())?;
        for w in &loaded.warnings {
            tracing::warn!("config warning: {w}");
        }
        // Names are looked up and discovery files read outside the lock, starting from the
        // last good answers (which whatever fails now keeps).
        let mut found = self.services.lock_applied().found.clone();
        found.refresh_all(&loaded.config);
        let mut applied = self.services.lock_applied();
        let old = self.state.load_full();
        let mut changes = old.restart_needed(&loaded.config);
        if applied
            .config
            .as_ref()
            .is_some_and(|c| c.otlp != loaded.config.otlp)
        {
            changes.push("tracing.otlp changed".to_owned());
        }
        for change in changes {
            tracing::warn!("{change}: this needs a restart; applying everything else");
        }
        let snap = Snapshot::build(&loaded.config, &found, Some(&old), &self.services.upstreams)?;
        let generation = snap.generation;
        self.state.store(Arc::new(snap));
        applied.config = Some(Arc::new(loaded.config));
        applied.found = found;
        drop(applied);
        tracing::info!(path = %self.path.display(), trigger = ?trigger, generation, "config reloaded");
        Ok(generation)
    }
}

/// Rebuilds the snapshot from the inputs it was built from, so that a runtime change to the
/// backends' shared state (a weight set through the admin API) reaches every strategy's
/// tables. Returns the new generation.
pub fn rebuild(state: &SharedState, services: &Services, why: &str) -> Result<u64, String> {
    rebuild_with(state, services, why, |_| true).map(|g| g.unwrap_or_default())
}

/// Lets `change` update the snapshot's inputs under their lock, and rebuilds the snapshot
/// if it says they changed. Returns the new generation, if one was built.
pub fn rebuild_with(
    state: &SharedState,
    services: &Services,
    why: &str,
    change: impl FnOnce(&mut Applied) -> bool,
) -> Result<Option<u64>, String> {
    let mut applied = services.lock_applied();
    if !change(&mut applied) {
        return Ok(None);
    }
    let Some(cfg) = applied.config.as_ref() else {
        return Err("no config has been applied yet".to_owned());
    };
    let old = state.load_full();
    let snap = Snapshot::build(cfg, &applied.found, Some(&old), &services.upstreams)?;
    let generation = snap.generation;
    state.store(Arc::new(snap));
    drop(applied);
    metrics::gauge!(CONFIG_GENERATION).set(generation as f64);
    tracing::info!(generation, why, "snapshot rebuilt");
    Ok(Some(generation))
}

/// Installs the SIGHUP handler and the file watch now (so that nothing after start-up is
/// missed), then runs the reload loop on a task until `shutdown`. Each reload (file reads,
/// parsing, certificates, mmdb, affinity tables, the snapshot build) runs on a blocking
/// thread, off the request runtime; one that panics is logged and counted, and the old
/// snapshot keeps serving.
pub fn spawn(reloader: Reloader, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGHUP; reload by SIGHUP is off");
            None
        }
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let watcher = watch(&reloader.path, tx, ());
    let restarts = metrics::counter!(TASK_RESTARTS_TOTAL, "task" => "reload");
    tokio::spawn(async move {
        let _watcher = watcher;
        let (path, state, services) = (
            reloader.path.clone(),
            Arc::clone(&reloader.state),
            Arc::clone(&reloader.services),
        );
        let mut reloader = Some(reloader);
        loop {
            let trigger = tokio::select! {
                _ = shutdown.cancelled() => return,
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => Trigger::Signal,
                Some(()) = rx.recv() => Trigger::FileChange,
            };
            let mut r = reloader.take().unwrap_or_else(|| {
                Reloader::new(path.clone(), Arc::clone(&state), Arc::clone(&services))
            });
            // Failures are logged and counted inside; a panic loses only this reload.
            match tokio::task::spawn_blocking(move || {
                let result = r.reload(trigger);
                (r, result)
            })
            .await
            {
                Ok((r, _result)) => reloader = Some(r),
                Err(e) => {
                    tracing::error!(error = %e, "config reload panicked; the previous config keeps serving");
                    metrics::counter!(CONFIG_RELOADS_TOTAL, "result" => "error").increment(1);
                    restarts.increment(1);
                }
            }
        }
    })
}

/// Watches the file's directory (not the file: rename-replace would orphan a file watch) and
/// sends `msg` once per debounced burst of events that touch the file.
pub(crate) fn watch<T: Clone + Send + 'static>(
    path: &Path,
    tx: mpsc::UnboundedSender<T>,
    msg: T,
) -> Option<notify_debouncer_mini::Debouncer<notify::RecommendedWatcher>> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name()?.to_owned();
    let shown = path.display().to_string();
    let handler = move |res: DebounceEventResult| match res {
        Ok(events) => {
            if events
                .iter()
                .any(|e| e.path.file_name() == Some(name.as_os_str()))
            {
                // The receiver only goes away at shutdown.
                let _ = tx.send(msg.clone());
            }
        }
        Err(e) => tracing::warn!(error = %e, "file watch error"),
    };
    let mut debouncer = match new_debouncer(Duration::from_millis(200), handler) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(file = %shown, error = %e, "cannot watch the file");
            return None;
        }
    };
    if let Err(e) = debouncer.watcher().watch(&dir, RecursiveMode::NonRecursive) {
        tracing::error!(dir = %dir.display(), error = %e, "cannot watch the directory");
        return None;
    }
    Some(debouncer)
}
