//! `infinibay login` and `infinibay vm …`: the API, over HTTP, with the stored token.

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::password::read_password;
use infinibay_api::client::{self, Client};

/// `infinibay login`.
#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Server base URL (default: INFINIBAY_SERVER, else http://127.0.0.1:8080).
    #[arg(long, env = "INFINIBAY_SERVER")]
    pub server: Option<String>,
    /// User name (default: admin).
    #[arg(long, default_value = "admin")]
    pub username: String,
    /// Read the password from the first line of stdin (else INFINIBAY_PASSWORD, else a
    /// prompt on the terminal).
    #[arg(long)]
    pub password_stdin: bool,
}

/// `infinibay vm …`.
#[derive(Debug, Args)]
pub struct VmArgs {
    /// Server base URL (default: the one `login` stored).
    #[arg(long, env = "INFINIBAY_SERVER", global = true)]
    pub server: Option<String>,
    /// Print JSON.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub action: VmAction,
}

/// VM actions over the API.
#[derive(Debug, Subcommand)]
pub enum VmAction {
    /// VMs you may see.
    List,
    /// One VM with its latest sample.
    Show {
        /// VM id.
        id: String,
    },
    /// Run a command: `--action A [--params JSON]` (safe) or `-- CMD…` (unsafe, argv).
    Exec {
        /// VM id.
        id: String,
        /// Safe action name (e.g. ServiceList, SystemInfo).
        #[arg(long)]
        action: Option<String>,
        /// Parameters of the action as a JSON object.
        #[arg(long)]
        params: Option<String>,
        /// Seconds the command may run.
        #[arg(long)]
        timeout: Option<i32>,
        /// The command and its arguments (unsafe).
        #[arg(last = true)]
        argv: Vec<String>,
    },
    /// Metrics of the last hours.
    Metrics {
        /// VM id.
        id: String,
        /// Hours back.
        #[arg(long, default_value_t = 24)]
        hours: i32,
    },
    /// Create a VM in libvirt (you become its owner): a disk over a base image, or a kernel.
    Create {
        /// Name.
        name: String,
        /// RAM in MiB.
        #[arg(long, default_value_t = 1024)]
        memory: i32,
        /// Virtual CPUs.
        #[arg(long, default_value_t = 1)]
        vcpus: i32,
        /// A qcow2 file of the host's image directory (see `infinibay vm images`).
        #[arg(long, required_unless_present = "kernel")]
        base_image: Option<String>,
        /// Boot this kernel (a file of the image directory).
        #[arg(long, requires = "initrd")]
        kernel: Option<String>,
        /// The kernel's initrd (a file of the image directory).
        #[arg(long, requires = "kernel")]
        initrd: Option<String>,
        /// Kernel command line.
        #[arg(long, default_value = "", requires = "kernel")]
        cmdline: String,
        /// Define it without starting it.
        #[arg(long)]
        no_start: bool,
    },
    /// The hypervisor: libvirt's state and the base images `create` can use.
    Images,
    /// Start a VM that is shut off.
    Start {
        /// VM id.
        id: String,
    },
    /// Ask the guest to shut down (through its agent when online, else ACPI).
    Shutdown {
        /// VM id.
        id: String,
    },
    /// Force the power off.
    Poweroff {
        /// VM id.
        id: String,
    },
    /// ACPI reboot.
    Reboot {
        /// VM id.
        id: String,
    },
    /// Pause the vCPUs.
    Suspend {
        /// VM id.
        id: String,
    },
    /// Resume a paused VM.
    Resume {
        /// VM id.
        id: String,
    },
    /// Delete a VM: its domain (destroyed if running), sockets, disk overlay and record.
    Delete {
        /// VM id.
        id: String,
    },
    /// Adopt an existing domain: hot-plug the agent's channel into it.
    AttachChannel {
        /// VM id.
        id: String,
    },
}

/// Run `infinibay login`.
pub async fn login(args: LoginArgs) -> anyhow::Result<()> {
    let server = args
        .server
        .or_else(|| client::load_login().map(|(s, _)| s))
        .unwrap_or_else(|| client::DEFAULT_SERVER.to_owned());
    let Some(password) = read_password(args.password_stdin, "INFINIBAY_PASSWORD", "Password: ")?
    else {
        bail!("no password given");
    };
    let token = Client::new(&server, None)
        .login(&args.username, &password)
        .await?;
    let path = client::save_login(&server, &token)?;
    println!(
        "logged in to {server} as {}; token stored in {}",
        args.username,
        path.display()
    );
    Ok(())
}

const VM_FIELDS: &str = "id name status powerState domainName lastSeen department owner { id username } ipAddresses \
    agent { agentVersion os osVersion hostname } \
    latestMetrics { at cpuPercent memUsedKb memTotalKb diskReadBps diskWriteBps netRxBps netTxBps load1 uptimeSeconds }";

/// Run `infinibay vm …`.
pub async fn vm(args: VmArgs) -> anyhow::Result<()> {
    let stored = client::load_login();
    let server = args
        .server
        .clone()
        .or_else(|| stored.as_ref().map(|(s, _)| s.clone()))
        .unwrap_or_else(|| client::DEFAULT_SERVER.to_owned());
    let token = std::env::var("INFINIBAY_TOKEN")
        .ok()
        .or_else(|| stored.map(|(_, t)| t))
        .context("not logged in: run `infinibay login` first (or set INFINIBAY_TOKEN)")?;
    let api = Client::new(&server, Some(token));
    match args.action {
        VmAction::List => {
            let data = api
                .query(&format!("{{ vms {{ {VM_FIELDS} }} }}"), json!({}))
                .await?;
            let vms = data.get("vms").cloned().unwrap_or(Value::Null);
            if args.json {
                println!("{}", serde_json::to_string_pretty(&vms)?);
            } else {
                println!(
                    "{:<38} {:<20} {:<8} {:<8} {:>6} {:>10} OWNER",
                    "ID", "NAME", "POWER", "AGENT", "CPU%", "MEM MB"
                );
                for vm in vms.as_array().into_iter().flatten() {
                    let m = vm.get("latestMetrics");
                    let num = |k: &str| m.and_then(|m| m.get(k)).and_then(Value::as_f64);
                    println!(
                        "{:<38} {:<20} {:<8} {:<8} {:>6} {:>10} {}",
                        text(vm, "id"),
                        text(vm, "name"),
                        text(vm, "powerState"),
                        text(vm, "status"),
                        num("cpuPercent")
                            .map(|c| format!("{c:.1}"))
                            .unwrap_or_else(|| "-".into()),
                        num("memUsedKb")
                            .map(|k| format!("{:.0}", k / 1024.0))
                            .unwrap_or_else(|| "-".into()),
                        vm.pointer("/owner/username")
                            .and_then(Value::as_str)
                            .unwrap_or("-"),
                    );
                }
            }
        }
        VmAction::Show { id } => {
            let data = api
                .query(
                    &format!("query($id: ID!) {{ vm(id: $id) {{ {VM_FIELDS} }} }}"),
                    json!({"id": id}),
                )
                .await?;
            let vm = data.get("vm").cloned().unwrap_or(Value::Null);
            if vm.is_null() {
                bail!("no VM {id}");
            }
            println!("{}", serde_json::to_string_pretty(&vm)?);
        }
        VmAction::Exec {
            id,
            action,
            params,
            timeout,
            argv,
        } => {
            let command = match (action, argv.is_empty()) {
                (Some(action), true) => {
                    let params: Value = match params {
                        Some(p) => serde_json::from_str(&p).context("--params is not JSON")?,
                        None => Value::Null,
                    };
                    json!({"type": "SAFE", "action": action, "params": params, "timeout": timeout})
                }
                (None, false) => json!({"type": "UNSAFE", "argv": argv, "timeout": timeout}),
                _ => bail!("give either --action A [--params JSON] or -- CMD ARGS…"),
            };
            let data = api
                .query(
                    "mutation($id: ID!, $c: CommandInput!) { executeVmCommand(vmId: $id, command: $c) \
                     { id success exitCode stdout stderr stdoutTruncated stderrTruncated data executionTimeMs error { code message } } }",
                    json!({"id": id, "c": command}),
                )
                .await?;
            let r = data.get("executeVmCommand").cloned().unwrap_or(Value::Null);
            if args.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print!("{}", text(&r, "stdout"));
                eprint!("{}", text(&r, "stderr"));
                if let Some(d) = r.get("data").filter(|d| !d.is_null()) {
                    println!("{}", serde_json::to_string_pretty(d)?);
                }
                if let Some(e) = r.get("error").filter(|e| !e.is_null()) {
                    eprintln!("error: {} ({})", text(e, "message"), text(e, "code"));
                }
                if r.get("success").and_then(Value::as_bool) != Some(true) {
                    bail!(
                        "command failed (exit code {})",
                        r.get("exitCode").unwrap_or(&Value::Null)
                    );
                }
            }
        }
        VmAction::Metrics { id, hours } => {
            let data = api
                .query(
                    "query($id: ID!, $h: Int) { getVmMetrics(vmId: $id, hours: $h) \
                     { at cpuAvg cpuMin cpuMax memUsedKb memTotalKb diskReadBps diskWriteBps netRxBps netTxBps samples } }",
                    json!({"id": id, "h": hours}),
                )
                .await?;
            let points = data.get("getVmMetrics").cloned().unwrap_or(Value::Null);
            if args.json {
                println!("{}", serde_json::to_string_pretty(&points)?);
            } else {
                println!(
                    "{:<25} {:>7} {:>7} {:>7} {:>10} {:>7}",
                    "AT", "CPU%", "MIN", "MAX", "MEM MB", "N"
                );
                for p in points.as_array().into_iter().flatten() {
                    let n = |k: &str| p.get(k).and_then(Value::as_f64).unwrap_or(0.0);
                    println!(
                        "{:<25} {:>7.1} {:>7.1} {:>7.1} {:>10.0} {:>7}",
                        text(p, "at"),
                        n("cpuAvg"),
                        n("cpuMin"),
                        n("cpuMax"),
                        n("memUsedKb") / 1024.0,
                        n("samples")
                    );
                }
            }
        }
        VmAction::Create {
            name,
            memory,
            vcpus,
            base_image,
            kernel,
            initrd,
            cmdline,
            no_start,
        } => {
            let kernel = match (kernel, initrd) {
                (Some(kernel), Some(initrd)) => {
                    json!({"kernel": kernel, "initrd": initrd, "cmdline": cmdline})
                }
                _ => Value::Null,
            };
            let input = json!({
                "name": name, "memoryMib": memory, "vcpus": vcpus,
                "baseImage": base_image, "kernel": kernel, "start": !no_start,
            });
            let data = api
                .query(
                    &format!(
                        "mutation($input: CreateVmInput!) {{ createVm(input: $input) {{ {VM_FIELDS} }} }}"
                    ),
                    json!({"input": input}),
                )
                .await?;
            let vm = data.get("createVm").cloned().unwrap_or(Value::Null);
            if args.json {
                println!("{}", serde_json::to_string_pretty(&vm)?);
            } else {
                println!(
                    "created {} ({}), power state {}",
                    text(&vm, "id"),
                    text(&vm, "name"),
                    text(&vm, "powerState")
                );
            }
        }
        VmAction::Images => {
            let data = api
                .query(
                    "query { hypervisor { state uri reason baseImages } }",
                    json!({}),
                )
                .await?;
            let hypervisor = data.get("hypervisor").cloned().unwrap_or(Value::Null);
            if args.json {
                println!("{}", serde_json::to_string_pretty(&hypervisor)?);
            } else {
                let reason = text(&hypervisor, "reason");
                println!(
                    "libvirt: {} {}{}",
                    text(&hypervisor, "state"),
                    text(&hypervisor, "uri"),
                    if reason.is_empty() {
                        String::new()
                    } else {
                        format!(" ({reason})")
                    }
                );
                for image in hypervisor["baseImages"].as_array().into_iter().flatten() {
                    println!("{}", image.as_str().unwrap_or(""));
                }
            }
        }
        VmAction::Start { id } => power(&api, "powerOn", &id, args.json).await?,
        VmAction::Shutdown { id } => power(&api, "shutdown", &id, args.json).await?,
        VmAction::Poweroff { id } => power(&api, "powerOff", &id, args.json).await?,
        VmAction::Reboot { id } => power(&api, "reboot", &id, args.json).await?,
        VmAction::Suspend { id } => power(&api, "suspend", &id, args.json).await?,
        VmAction::Resume { id } => power(&api, "resume", &id, args.json).await?,
        VmAction::Delete { id } => {
            api.query(
                "mutation($id: ID!) { deleteVm(vmId: $id) }",
                json!({"id": id}),
            )
            .await?;
            if args.json {
                println!("{}", json!({"deleted": id}));
            } else {
                println!("deleted {id}");
            }
        }
        VmAction::AttachChannel { id } => {
            let data = api
                .query(
                    "mutation($id: ID!) { attachAgentChannel(vmId: $id) { socket attachedLive attachedConfig } }",
                    json!({"id": id}),
                )
                .await?;
            let done = data
                .get("attachAgentChannel")
                .cloned()
                .unwrap_or(Value::Null);
            if args.json {
                println!("{}", serde_json::to_string_pretty(&done)?);
            } else {
                println!(
                    "agent channel at {} (hot-plugged now: {}, in the definition: {})",
                    text(&done, "socket"),
                    done["attachedLive"],
                    done["attachedConfig"]
                );
            }
        }
    }
    Ok(())
}

/// A power action (`mutation` is its GraphQL name), printed as the state it left.
async fn power(api: &Client, mutation: &str, id: &str, json_out: bool) -> anyhow::Result<()> {
    let data = api
        .query(
            &format!(
                "mutation($id: ID!) {{ {mutation}(vmId: $id) {{ action via powerState vm {{ id name status }} }} }}"
            ),
            json!({"id": id}),
        )
        .await?;
    let done = data.get(mutation).cloned().unwrap_or(Value::Null);
    if json_out {
        println!("{}", serde_json::to_string_pretty(&done)?);
    } else {
        println!(
            "{} {}: done via {}, power state now {}",
            text(&done, "action"),
            id,
            text(&done, "via"),
            text(&done, "powerState")
        );
    }
    Ok(())
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}
