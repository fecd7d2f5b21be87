//! How the agent runs as the OS's service on Linux: systemd starts it (see
//! `deploy/infiniservice.service`), it logs to stderr (the journal), and SIGTERM/SIGINT stop it.

use std::path::PathBuf;

use crate::config::Config;

/// Where `deploy/install-linux.sh` writes the config.
pub fn default_config_path() -> PathBuf {
    PathBuf::from("/etc/infiniservice/config.toml")
}

/// Log to stderr, which systemd sends to the journal.
pub fn init_logging(config: &Config, debug: bool) {
    crate::app::init_stderr_logging(config, debug);
}

/// Process-wide settings, before the runtime starts.
pub fn prepare_process() {
    // One malloc arena for every thread: the inventory thread's allocations reuse the main
    // heap instead of growing a second one (resident memory is the agent's tightest budget).
    // SAFETY: mallopt only changes allocator settings; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Resolves on SIGTERM (systemd's stop) or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending::<()>().await,
    }
}

const NOT_HERE: &str = "the agent installs itself as a service on Windows only; on Linux run deploy/install-linux.sh (systemd)";

/// Windows only.
pub fn install(_args: &crate::cli::Args, _config: &Config) -> anyhow::Result<()> {
    anyhow::bail!(NOT_HERE)
}

/// Windows only.
pub fn uninstall(_config: &Config) -> anyhow::Result<()> {
    anyhow::bail!(NOT_HERE)
}

/// Windows only: systemd runs the agent as a plain process.
pub fn run_under_service_manager(_args: crate::cli::Args) -> anyhow::Result<()> {
    anyhow::bail!(NOT_HERE)
}
