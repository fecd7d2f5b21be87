//! Command line: `infinibay serve`, `doctor`, `demo`, and the subcommands of [`user`]
//! (accounts on the database) and [`remote`] (`login`, `vm …` over the API).

mod password;
pub mod remote;
pub mod user;

use clap::{Parser, Subcommand};

use crate::config::ConfigArgs;

/// infinibay host: discovers the VM agent sockets, ingests, stores and serves their data.
#[derive(Debug, Parser)]
#[command(name = "infinibay", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: CliCommand,
}

/// `infinibay channel-xml <uuid>`.
#[derive(Debug, clap::Args)]
pub struct ChannelXmlArgs {
    /// The domain's UUID (the VM's id).
    pub uuid: uuid::Uuid,
    /// Configuration (socket directory) as for `serve`.
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// Print the channel XML for `args.uuid` in the configured socket directory.
pub fn channel_xml(args: &ChannelXmlArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    let config = args.config.load().context("configuration")?;
    let xml = infinibay_core::libvirt::agent_channel_xml(&config.core.socket_dir, args.uuid)?;
    println!("{xml}");
    Ok(())
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum CliCommand {
    /// Run the host: watch the socket directory, ingest, store, serve HTTP.
    Serve(ConfigArgs),
    /// Scale-out: this hypervisor's share (discovery, ingest, storage in PostgreSQL), its VMs'
    /// events and commands over NATS, heartbeats; /healthz and /metrics on --listen.
    Node(NodeArgs),
    /// Scale-out: an API replica for the whole fleet (GraphQL, Socket.IO, REST, dashboard) over
    /// NATS and PostgreSQL; any number behind a load balancer.
    Api(ApiArgs),
    /// Check the socket directory, permissions, group membership and the database.
    Doctor(DoctorArgs),
    /// Manage users in the database (configured like `serve`): add, list, passwd, grant, delete.
    User(user::UserArgs),
    /// Log in to an infinibay server; the token is kept in ~/.config/infinibay/token.
    Login(remote::LoginArgs),
    /// VMs over the API: list, show, exec, metrics, create, start, shutdown, poweroff, reboot,
    /// suspend, resume, delete, attach-channel (`--json` for JSON).
    Vm(remote::VmArgs),
    /// Print the `<channel>` XML that binds a domain's agent port in the socket directory (add
    /// it with `virsh edit` or `virsh attach-device`; or use `infinibay vm attach-channel`).
    ChannelXml(ChannelXmlArgs),
    /// Everything on this machine: the server in a fresh data dir and N real agents.
    Demo(crate::demo::DemoArgs),
}

/// `infinibay node`.
#[derive(Debug, Clone, clap::Args)]
pub struct NodeArgs {
    /// Where the configuration comes from.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// NATS server URL(s), comma-separated (default nats://127.0.0.1:4222).
    #[arg(long)]
    pub nats: Option<String>,
    /// This node's name on NATS (default: the host name).
    #[arg(long)]
    pub node_id: Option<String>,
}

impl NodeArgs {
    /// The configuration with these flags on top.
    pub fn load(&self) -> Result<crate::config::Config, crate::config::ConfigError> {
        self.config
            .load_with(self.nats.clone(), self.node_id.clone())
    }
}

/// `infinibay api`.
#[derive(Debug, Clone, clap::Args)]
pub struct ApiArgs {
    /// Where the configuration comes from.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// NATS server URL(s), comma-separated (default nats://127.0.0.1:4222).
    #[arg(long)]
    pub nats: Option<String>,
}

impl ApiArgs {
    /// The configuration with these flags on top.
    pub fn load(&self) -> Result<crate::config::Config, crate::config::ConfigError> {
        self.config.load_with(self.nats.clone(), None)
    }
}

/// `infinibay doctor`.
#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// Configuration, as for `serve`.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Also repair what can be repaired here: remove the stale sockets of VMs that no longer
    /// run.
    #[arg(long)]
    pub fix: bool,
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

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
        let cli = Cli::try_parse_from([
            "infinibay",
            "node",
            "--nats",
            "nats://127.0.0.1:4222",
            "--node-id",
            "hv1",
            "--database",
            "postgres://x@h/db",
        ])
        .expect("parses");
        let CliCommand::Node(args) = cli.command else {
            panic!("node expected")
        };
        assert_eq!(args.node_id.as_deref(), Some("hv1"));
        assert_eq!(args.config.database.as_deref(), Some("postgres://x@h/db"));
    }
}
