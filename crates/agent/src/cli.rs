//! Command-line flags. The validated values end up in [`crate::config::Config`] and the
//! session; nothing here does work.

use std::path::PathBuf;

use clap::Parser;

/// InfiniService: the Infinibay guest agent.
#[derive(Debug, Clone, Parser)]
#[command(name = "infiniservice", version, about)]
pub struct Args {
    /// The virtio-serial port (else INFINISERVICE_DEVICE, the config, the udev link, /sys).
    #[arg(long, value_name = "PATH")]
    pub device: Option<PathBuf>,

    /// Listen on this UNIX socket instead of a port, as QEMU's `server=on` chardev does
    /// (development and tests without a VM).
    #[arg(long, value_name = "PATH", conflicts_with = "device")]
    pub listen_unix: Option<PathBuf>,

    /// Config file.
    #[arg(long, value_name = "PATH", default_value = crate::config::DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,

    /// Report the ports found in /sys, their permissions and the policy; exit non-zero when
    /// the port is missing.
    #[arg(long)]
    pub diagnose: bool,

    /// Print one full snapshot (all collectors) as JSON and exit.
    #[arg(long)]
    pub once: bool,

    /// Accepted for compatibility with the original agent: same as RUST_LOG=debug.
    #[arg(long)]
    pub debug: bool,

    /// Benchmark: run N cycles of each collector and print CPU time per cycle.
    #[arg(long, value_name = "N", hide = true)]
    pub bench_collect: Option<u32>,
}

impl Args {
    /// Was `--config` given explicitly (then a missing file is an error)?
    pub fn config_is_explicit(&self) -> bool {
        self.config != std::path::Path::new(crate::config::DEFAULT_CONFIG_PATH)
    }
}
