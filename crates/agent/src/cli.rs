//! Command-line flags. The validated values end up in [`crate::config::Config`] and the
//! session; nothing here does work.

use std::path::PathBuf;

use clap::Parser;

/// `0.1.0 (opt-level s)`: the installers check that the size-optimised `agent` profile is
/// what they install.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (opt-level ",
    env!("INFINISERVICE_OPT_LEVEL"),
    ")"
);

/// InfiniService: the Infinibay guest agent.
#[derive(Debug, Clone, Parser)]
#[command(name = "infiniservice", version = VERSION, about)]
pub struct Args {
    /// The port to the host (else INFINISERVICE_DEVICE, the config, then discovery: the udev
    /// link and /sys on Linux; \\.\Global\org.infinibay.agent, then the COM ports on Windows).
    #[arg(long, value_name = "PATH")]
    pub device: Option<PathBuf>,

    /// Listen on this UNIX socket instead of a port, as QEMU's `server=on` chardev does
    /// (development and tests without a VM).
    #[arg(long, value_name = "PATH", conflicts_with = "device")]
    pub listen_unix: Option<PathBuf>,

    /// Config file (default: /etc/infiniservice/config.toml on Linux,
    /// C:\ProgramData\Infinibay\InfiniService\config.toml on Windows).
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Report what the agent sees (ports, devices, the service, the policy) and the fix for
    /// each problem; exit non-zero when the agent cannot reach the host.
    #[arg(long)]
    pub diagnose: bool,

    /// Windows: install the agent as a service (automatic start, restart on failure, Event
    /// Log source) running this executable, then start it.
    #[arg(long, conflicts_with_all = ["uninstall_service", "service", "diagnose", "once"])]
    pub install_service: bool,

    /// Windows: stop and remove the service and its Event Log source.
    #[arg(long, conflicts_with_all = ["service", "diagnose", "once"])]
    pub uninstall_service: bool,

    /// Windows: run under the Service Control Manager (the installed service's command line).
    #[arg(long, hide = true)]
    pub service: bool,

    /// Print one full snapshot (all collectors) as JSON and exit.
    #[arg(long)]
    pub once: bool,

    /// Accepted for compatibility with the original agent: same as RUST_LOG=debug.
    #[arg(long)]
    pub debug: bool,

    /// Benchmark: run N cycles of each collector and print CPU time per cycle.
    #[arg(long, value_name = "N", hide = true)]
    pub bench_collect: Option<u32>,

    /// Benchmark: only this collector (system_metrics, process_snapshot, port_usage).
    #[arg(long, value_name = "COLLECTOR", hide = true, requires = "bench_collect",
          value_parser = ["system_metrics", "process_snapshot", "port_usage"])]
    pub bench_only: Option<String>,
}

impl Args {
    /// Was `--config` given explicitly (then a missing file is an error)?
    pub fn config_is_explicit(&self) -> bool {
        self.config.is_some()
    }

    /// The config file: `--config`, else the OS's default location.
    pub fn config_path(&self) -> PathBuf {
        self.config
            .clone()
            .unwrap_or_else(crate::platform::service::default_config_path)
    }
}
