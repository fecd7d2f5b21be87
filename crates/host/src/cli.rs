//! Command line: `infinibay serve`, `infinibay doctor` (more subcommands join later).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, ConfigError, Overrides};

/// infinibay host: discovers the VM agent sockets, ingests, stores and serves their data.
#[derive(Debug, Parser)]
#[command(name = "infinibay", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: CliCommand,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum CliCommand {
    /// Run the host: watch the socket directory, ingest, store, serve HTTP.
    Serve(ConfigArgs),
    /// Check the socket directory, permissions, group membership and the database.
    Doctor(ConfigArgs),
    /// Simulate many VMs: QEMU-like agent sockets in one process (see `infinibay-sim`).
    Sim(infinibay_sim::SimArgs),
    /// Manage users in the database (configured like `serve`): add, list, passwd, grant, delete.
    User(crate::api::commands::UserArgs),
    /// Log in to an infinibay server; the token is kept in ~/.config/infinibay/token.
    Login(crate::api::commands::LoginArgs),
    /// VMs over the API: list, show, exec, metrics (`--json` for JSON).
    Vm(crate::api::commands::VmArgs),
    /// Everything on this machine: the server in a fresh data dir and N real agents.
    Demo(crate::demo::DemoArgs),
}

/// Where the configuration comes from; flags win over `INFINIBAY_*` variables, which win over
/// the file.
#[derive(Debug, Clone, Default, Args)]
pub struct ConfigArgs {
    /// TOML configuration file.
    #[arg(long, env = "INFINIBAY_CONFIG")]
    pub config: Option<PathBuf>,
    /// HTTP listen address (default 127.0.0.1:8080).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Data directory (default ./data).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Directory of the per-VM sockets (default /opt/infinibay/sockets).
    #[arg(long)]
    pub socket_dir: Option<PathBuf>,
    /// Database URL (default: SQLite in the data directory).
    #[arg(long)]
    pub database: Option<String>,
}

impl ConfigArgs {
    /// Build the configuration from the file, the process environment and these flags.
    pub fn load(&self) -> Result<Config, ConfigError> {
        Config::load(
            self.config.as_deref(),
            std::env::vars(),
            &Overrides {
                listen: self.listen,
                data_dir: self.data_dir.clone(),
                socket_dir: self.socket_dir.clone(),
                database: self.database.clone(),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "infinibay",
            "serve",
            "--listen",
            "127.0.0.1:9",
            "--socket-dir",
            "/tmp/s",
        ])
        .expect("parses");
        let CliCommand::Serve(args) = cli.command else {
            panic!("serve expected")
        };
        assert_eq!(args.socket_dir, Some(PathBuf::from("/tmp/s")));
    }
}
