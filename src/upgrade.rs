//! Zero-downtime binary upgrade on `SIGUSR2`: the binary found at the path this process was
//! started from runs with the same arguments and inherits every listening socket
//! (`LISTEN_FDS`/`LISTEN_FDNAMES`, see `sockets`). Both accept on the same sockets, so no
//! connection is refused. Once the new process has loaded its config and serves, it says so
//! over a Unix socket named in `SANDGATE_UPGRADE_READY`; only then does this process tell
//! systemd the new main PID (`MAINPID=`), stop accepting, and drain. A new process that
//! exits, or is not ready within [`READY_TIMEOUT`], is stopped, and this one keeps serving.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use command_fds::{CommandFdExt, FdMapping};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use crate::sockets::Handoff;

/// How long a new process may take to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The variable naming the Unix socket a new process reports ready on.
const READY_ENV: &str = "SANDGATE_UPGRADE_READY";

static EXE: OnceLock<PathBuf> = OnceLock::new();
static READY_PATH: OnceLock<Option<PathBuf>> = OnceLock::new();

/// Remembers the binary's path (before anyone replaces the file) and takes the predecessor's
/// ready socket from the environment. Call it at start, before any thread starts.
pub fn init() {
    if let Ok(exe) = std::env::current_exe() {
        let _ = EXE.set(exe);
    }
    let ready = std::env::var_os(READY_ENV).map(PathBuf::from);
    std::env::remove_var(READY_ENV);
    let _ = READY_PATH.set(ready);
}

/// Starts the successor with `handoff`'s sockets and waits until it is ready (its PID) or
/// has failed (why).
pub async fn start_successor(handoff: &Handoff) -> Result<u32, String> {
    let exe = EXE
        .get()
        .ok_or("the path of the running binary is unknown")?;
    let sockets = handoff
        .duplicates()
        .map_err(|e| format!("cannot duplicate the listening sockets: {e}"))?;
    let ready_path = std::env::temp_dir().join(format!(
        "sandgate-upgrade-{}-{}.sock",
        std::process::id(),
        fastrand::u64(..)
    ));
    let ready = UnixListener::bind(&ready_path)
        .map_err(|e| format!("cannot listen on {}: {e}", ready_path.display()))?;
    let result = spawn_and_wait(exe, sockets, &ready_path, ready).await;
    let _ = std::fs::remove_file(&ready_path);
    result
}

async fn spawn_and_wait(
    exe: &PathBuf,
    sockets: Vec<(String, std::os::fd::OwnedFd)>,
    ready_path: &std::path::Path,
    ready: UnixListener,
) -> Result<u32, String> {
    let names: Vec<&str> = sockets.iter().map(|(n, _)| n.as_str()).collect();
    let names = names.join(":");
    let count = sockets.len();
    let mappings = sockets
        .into_iter()
        .enumerate()
        .map(|(i, (_, fd))| FdMapping {
            parent_fd: fd,
            child_fd: 3 + i as i32,
        })
        .collect();
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args(std::env::args_os().skip(1))
        .env("LISTEN_FDS", count.to_string())
        .env("LISTEN_FDNAMES", names)
        .env_remove("LISTEN_PID")
        .env(READY_ENV, ready_path)
        .stdin(Stdio::null())
        .fd_mappings(mappings)
        .map_err(|e| format!("cannot map the sockets: {e}"))?;
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    let pid = child.id().ok_or("the new process is gone")?;
    tracing::info!(pid, binary = %exe.display(), sockets = count, "upgrade: new process started");
    let wait_ready = async {
        loop {
            let (mut stream, _) = ready.accept().await.map_err(|e| e.to_string())?;
            let mut said = String::new();
            // One short line: the sender's PID.
            let _ = tokio::time::timeout(
                Duration::from_secs(5),
                (&mut stream).take(32).read_to_string(&mut said),
            )
            .await;
            if said.trim().parse::<u32>().ok() == Some(pid) {
                return Ok::<_, String>(());
            }
        }
    };
    tokio::select! {
        r = wait_ready => r.map(|()| pid),
        status = child.wait() => Err(match status {
            Ok(s) => format!("the new process exited before it was ready ({s})"),
            Err(e) => format!("the new process failed: {e}"),
        }),
        _ = tokio::time::sleep(READY_TIMEOUT) => {
            let _ = child.kill().await;
            Err(format!("the new process was not ready within {READY_TIMEOUT:?}; stopped it"))
        }
    }
}

/// In a process started by an upgrade, tells the predecessor it is ready (a no-op
/// otherwise). A failure is logged: the predecessor then stops this process and keeps
/// serving.
pub async fn tell_predecessor() {
    let Some(Some(path)) = READY_PATH.get() else {
        return;
    };
    let told = async {
        let mut s = UnixStream::connect(path).await?;
        s.write_all(format!("{}\n", std::process::id()).as_bytes())
            .await?;
        s.shutdown().await
    };
    match told.await {
        Ok(()) => tracing::info!(
            pid = std::process::id(),
            "upgrade: told the previous process we are ready"
        ),
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "upgrade: cannot reach the previous process")
        }
    }
}
