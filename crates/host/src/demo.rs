//! `infinibay demo`: the whole system on one machine, in one command.
//!
//! A fresh data directory (SQLite), the server on the usual port, and N real `infiniservice`
//! agents in `--listen-unix` mode: each binds a socket in the host's socket directory exactly as
//! QEMU would for a VM, so discovery, handshake, metrics and commands are the real ones and the
//! numbers are this machine's. The agent it runs and the installers are published for download
//! (`/infiniservice/linux/binary`, `…/script`), as `deploy/publish-agents.sh` does for a real
//! host. Everything is stopped (agents killed, the temporary directory removed) on Ctrl-C.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use rand::Rng;
use tokio::process::{Child, Command};

use crate::config::{Config, Overrides};

/// The installers the download routes serve, built into this binary from `deploy/` so that the
/// demo can publish them wherever it runs.
const INSTALLERS: [(&str, &str); 2] = [
    (
        "install-linux.sh",
        include_str!("../../../deploy/install-linux.sh"),
    ),
    (
        "install-windows.ps1",
        include_str!("../../../deploy/install-windows.ps1"),
    ),
];

/// Flags of `infinibay demo`.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// How many agents (stand-ins for VMs) to start.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=200))]
    pub vms: u16,
    /// HTTP listen address; when the default port is taken a free one is used instead.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Keep the data here instead of a temporary directory removed on exit.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Seconds between samples of each agent.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=60))]
    pub interval: u64,
    /// Let the agents run raw ("unsafe") commands: they run as you, on this machine.
    #[arg(long)]
    pub allow_unsafe: bool,
    /// The `infiniservice` binary (default: beside this executable, then on PATH).
    #[arg(long)]
    pub agent: Option<PathBuf>,
}

/// Run the demo until Ctrl-C.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let agent_binary = find_agent(args.agent.as_deref())?;

    // A short path: socket paths must stay under 108 bytes (AF_UNIX).
    let temporary = match &args.data_dir {
        Some(_) => None,
        None => Some(
            tempfile::Builder::new()
                .prefix("infinibay-demo-")
                .tempdir_in(std::env::temp_dir())
                .context("cannot create a temporary data directory")?,
        ),
    };
    let data_dir = match (&args.data_dir, &temporary) {
        (Some(dir), _) => dir.clone(),
        (None, Some(t)) => t.path().to_owned(),
        (None, None) => unreachable!("a temporary directory exists when no data dir was given"),
    };
    let socket_dir = data_dir.join("sockets");
    std::fs::create_dir_all(&socket_dir)
        .with_context(|| format!("cannot create {}", socket_dir.display()))?;
    publish_downloads(&data_dir, &agent_binary)?;

    let listener = bind(args.listen).await?;
    let address = listener.local_addr().context("listener has no address")?;
    let config = Config::load(
        None,
        std::iter::empty(),
        &Overrides {
            listen: Some(address),
            data_dir: Some(data_dir.clone()),
            socket_dir: Some(socket_dir.clone()),
            // The demo's VMs are its own agents on sockets, not this machine's domains.
            libvirt: Some(infinibay_core::config::LIBVIRT_DISABLED.to_owned()),
            ..Overrides::default()
        },
    )
    .context("demo configuration")?;
    let admin_password = random_password();
    let prepared = crate::serve::prepare_with_admin_password(&config, Some(admin_password.clone()))
        .await
        .context("preparing the API")?;
    let api_settings = prepared.settings;

    // The metrics listener's default port, or any free one: the demo must not fail because
    // another host runs on this machine.
    let metrics = match crate::serve::bind_metrics(config.api.metrics_listen).await {
        Ok(l) => l,
        Err(_) => crate::serve::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .context("cannot bind any local port for /metrics")?,
    };
    let metrics_address = metrics.local_addr().context("listener has no address")?;

    let (agents, vm_ids) = start_agents(&agent_binary, &args, &data_dir, &socket_dir).await?;
    name_demo_vms(prepared.store.as_ref(), &vm_ids).await?;

    println!();
    println!("  Infinibay demo is running");
    println!("  dashboard   http://{address}/");
    println!("  GraphQL     http://{address}/graphql");
    println!("  metrics     http://{metrics_address}/metrics");
    println!("  user        admin");
    println!("  password    {admin_password}");
    println!(
        "  agents      {} × infiniservice (every {} s), sockets in {}",
        agents.len(),
        args.interval,
        socket_dir.display()
    );
    println!(
        "  downloads   http://{address}/infiniservice/linux/binary and …/script \
         (a user token, or ?token= from vmInstallToken)"
    );
    match &temporary {
        Some(_) => println!("  data        {} (removed on exit)", data_dir.display()),
        None => println!("  data        {}", data_dir.display()),
    }
    println!("  Ctrl-C stops everything.");
    println!();

    // Ctrl-C or SIGTERM: either way the agents are stopped and the temporary data removed.
    let shutdown = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    };
    let listeners = crate::serve::Listeners {
        http: listener,
        metrics: Some(metrics),
    };
    let result =
        crate::serve::run_with_store(config, prepared.store, listeners, shutdown, move |core| {
            crate::serve::Mounted::from(crate::serve::api_router(core, api_settings))
                .map_router(infinibay_dashboard::mount)
        })
        .await;
    stop_agents(agents).await;
    drop(temporary);
    result.context("the demo server stopped with an error")
}

/// The agent binary: given, beside this executable (cargo builds both into one directory), or on
/// PATH.
fn find_agent(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = given {
        if path.is_file() {
            return Ok(path.to_owned());
        }
        bail!("--agent {}: no such file", path.display());
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("infiniservice")));
    if let Some(path) = beside.filter(|p| p.is_file()) {
        return Ok(path);
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("infiniservice"))
            .find(|p| p.is_file())
    });
    on_path.context(
        "the infiniservice agent binary was not found beside infinibay or on PATH; \
         build it with `cargo build --release -p infiniservice` or pass --agent PATH",
    )
}

/// Put the agent the demo runs and the installers where the download routes read them, in the
/// layout of `deploy/publish-agents.sh`: `<data>/infiniservice/binaries/linux/infiniservice`
/// and `<data>/infiniservice/scripts/`. Each file is written beside its place and renamed, so
/// that a download never sees half of one.
fn publish_downloads(data_dir: &Path, agent: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let root = data_dir.join("infiniservice");
    let place = |relative: &str, mode: u32, write: &dyn Fn(&Path) -> std::io::Result<()>| {
        let path = root.join(relative);
        let staged = path.with_extension("new");
        let result = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| write(&staged))
            .and_then(|()| std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(mode)))
            .and_then(|()| std::fs::rename(&staged, &path));
        result.with_context(|| format!("cannot publish {}", path.display()))
    };
    place("binaries/linux/infiniservice", 0o755, &|to| {
        std::fs::copy(agent, to).map(|_| ())
    })?;
    for (name, text) in INSTALLERS {
        place(&format!("scripts/{name}"), 0o644, &|to| {
            std::fs::write(to, text)
        })?;
    }
    Ok(())
}

async fn bind(requested: Option<SocketAddr>) -> anyhow::Result<tokio::net::TcpListener> {
    let default = SocketAddr::from(([127, 0, 0, 1], 8080));
    match crate::serve::bind(requested.unwrap_or(default)).await {
        Ok(listener) => Ok(listener),
        // Only the default may move: an address the user asked for is not silently replaced.
        Err(e) if requested.is_none() => {
            eprintln!("infinibay demo: {e}; using a free port instead");
            crate::serve::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
                .await
                .context("cannot bind any local port")
        }
        Err(e) => Err(e.into()),
    }
}

fn random_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::rng();
    (0..16)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}

async fn start_agents(
    binary: &Path,
    args: &DemoArgs,
    data_dir: &Path,
    socket_dir: &Path,
) -> anyhow::Result<(Vec<Child>, Vec<String>)> {
    let mut agents = Vec::with_capacity(usize::from(args.vms));
    let mut vm_ids = Vec::with_capacity(usize::from(args.vms));
    for index in 1..=args.vms {
        let vm_id = uuid::Uuid::new_v4();
        let config_path = data_dir.join(format!("agent-{index}.toml"));
        let config = format!(
            "collection_interval = {interval}\n\
             vm_id = \"{vm_id}\"\n\
             [policy]\n\
             allow_unsafe = {unsafe_ok}\n\
             [limits]\n\
             inventory_interval = 60\n",
            interval = args.interval,
            unsafe_ok = args.allow_unsafe,
        );
        std::fs::write(&config_path, config)
            .with_context(|| format!("cannot write {}", config_path.display()))?;
        let log_path = data_dir.join(format!("agent-{index}.log"));
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("cannot create {}", log_path.display()))?;
        let child = Command::new(binary)
            .arg("--listen-unix")
            .arg(socket_dir.join(format!("vm-{vm_id}.sock")))
            .arg("--config")
            .arg(&config_path)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().context("agent log")?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        agents.push(child);
        vm_ids.push(vm_id.to_string());
    }
    // An agent that dies at once (bad binary, bad config) is reported now, not discovered later.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (index, agent) in agents.iter_mut().enumerate() {
        if let Some(status) = agent.try_wait().context("agent status")? {
            bail!(
                "agent {} exited at start ({status}); see {}",
                index + 1,
                data_dir.join(format!("agent-{}.log", index + 1)).display()
            );
        }
    }
    Ok((agents, vm_ids))
}

/// The demo's display name of its `index`-th VM (from 1): every agent runs on this machine and
/// would otherwise be named after it.
pub fn demo_vm_name(index: usize) -> String {
    format!("demo-vm-{index}")
}

/// Register the demo's VMs with their own names before their agents are first seen (a chosen
/// name, which the agents' host name does not replace; `renameVm` changes it).
async fn name_demo_vms(
    store: &dyn infinibay_store::Store,
    vm_ids: &[String],
) -> anyhow::Result<()> {
    let now = chrono::Utc::now();
    let register: Vec<(String, chrono::DateTime<chrono::Utc>)> =
        vm_ids.iter().map(|id| (id.clone(), now)).collect();
    store
        .upsert_vms(&register)
        .await
        .context("registering the demo VMs")?;
    for (index, id) in vm_ids.iter().enumerate() {
        store
            .set_vm_name(id, &demo_vm_name(index + 1))
            .await
            .context("naming a demo VM")?;
    }
    Ok(())
}

async fn stop_agents(agents: Vec<Child>) {
    for mut agent in agents {
        let _ = agent.start_kill();
        let _ = agent.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_demo_vm_is_registered_under_its_own_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("demo.db").display());
        let store = infinibay_store::open(&url).await.expect("open store");
        let ids: Vec<String> = (0..3).map(|_| uuid::Uuid::new_v4().to_string()).collect();
        name_demo_vms(store.as_ref(), &ids).await.expect("named");
        // Every agent then says it is this machine; the names stay.
        let this_machine = infinibay_protocol::samples::identification("the-demo-machine");
        let agents: Vec<_> = ids
            .iter()
            .map(|id| (id.clone(), this_machine.clone()))
            .collect();
        store
            .set_vm_agents(&agents)
            .await
            .expect("agents identified");
        let mut names: Vec<String> = Vec::new();
        for id in &ids {
            let vm = store.get_vm(id).await.expect("read").expect("registered");
            names.push(vm.name);
        }
        assert_eq!(names, vec!["demo-vm-1", "demo-vm-2", "demo-vm-3"]);
    }
}
