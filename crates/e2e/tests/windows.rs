//! The Windows agent end to end, under wine64: `infiniservice.exe` opens a COM port that wine
//! maps to a pty, socat bridges the pty into the host's socket directory as QEMU does with a
//! guest's port, and the real `infinibay serve` (a process) discovers the VM. Everything is
//! checked through the host's API. Then the agent as a Windows service (install, start by the
//! Service Control Manager, stop, uninstall) and the MSI (`msiexec /i`, `/x`).
//!
//! What wine cannot show (vioser's named port, WMI classes it lacks, failure actions) is in
//! `docs/windows.md`. One wine prefix and one host for the whole binary; tests run one at a
//! time.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use infinibay_e2e::fixture::{TiedChild, scratch_dir, serial};
use infinibay_e2e::host::host_binary;
use infinibay_e2e::wine::{ComBridge, WinePrefix, windows_agent, windows_msi, windows_path};
use infinibay_e2e::{HostOptions, HostProcess};
use serde_json::{Value, json};
use uuid::Uuid;

const ONLINE_WITHIN: Duration = Duration::from_secs(90);

/// The service's name, from `--install-service` and from the MSI alike.
const SERVICE: &str = "infiniservice";

/// Programs registered in the prefix before the agent starts, one per registry view.
const PROGRAM_64: &str = "Infinibay e2e tool";
const PROGRAM_32: &str = "Infinibay e2e tool (32-bit)";

/// One VM: a COM port bridged to `vm-<uuid>.sock`.
struct Vm {
    id: Uuid,
    com: u32,
    /// Held for as long as the VM exists: dropping it ends the socket.
    _bridge: ComBridge,
}

struct World {
    scratch: tempfile::TempDir,
    /// Kept so that they outlive the host.
    _socket_dir: tempfile::TempDir,
    _data_dir: tempfile::TempDir,
    exe: PathBuf,
    prefix: WinePrefix,
    host: HostProcess,
    token: String,
    socket_dir: PathBuf,
    /// The VM of the console agent.
    vm: Vm,
    /// The console agent (`wine64 infiniservice.exe`), restarted by some tests.
    agent: Mutex<Option<TiedChild>>,
}

fn world() -> &'static World {
    static WORLD: OnceLock<Result<World, String>> = OnceLock::new();
    WORLD
        .get_or_init(|| {
            let exe = windows_agent().map_err(|e| format!("building infiniservice.exe: {e}"))?;
            let scratch = scratch_dir("w").map_err(|e| e.to_string())?;
            let prefix = WinePrefix::create(&scratch.path().join("prefix"), scratch.path())
                .map_err(|e| format!("wine prefix: {e}"))?;
            // Installed programs in both registry views (reg.exe's /reg:32 is the WOW64 one).
            for (name, view) in [(PROGRAM_64, "/reg:64"), (PROGRAM_32, "/reg:32")] {
                let key = format!(
                    r"HKLM\Software\Microsoft\Windows\CurrentVersion\Uninstall\{}",
                    name.replace(' ', "")
                );
                for (value, kind, data) in [
                    ("DisplayName", "REG_SZ", name),
                    ("DisplayVersion", "REG_SZ", "1.2.3"),
                    ("EstimatedSize", "REG_DWORD", "2048"),
                ] {
                    let out = prefix
                        .run(
                            "reg.exe",
                            &["add", &key, "/v", value, "/t", kind, "/d", data, "/f", view],
                            Duration::from_secs(60),
                        )
                        .map_err(|e| e.to_string())?;
                    if !out.status.success() {
                        return Err(format!("reg add {key}: {out:?}"));
                    }
                }
            }
            let socket_dir = scratch_dir("s").map_err(|e| e.to_string())?;
            let data_dir = scratch_dir("d").map_err(|e| e.to_string())?;
            let mut options = HostOptions::new(socket_dir.path(), data_dir.path());
            // Offline after ~6 s of unanswered pings, so the service test sees its stop.
            options.env.push((
                "INFINIBAY_CONNECTION__PING_INTERVAL_SECS".into(),
                "2".into(),
            ));
            let binary = host_binary().map_err(|e| e.to_string())?;
            let host = HostProcess::start(&binary, options, Duration::from_secs(60))
                .map_err(|e| format!("starting infinibay: {e}"))?;
            let password = host
                .first_admin_password()
                .ok_or_else(|| format!("no first-start banner in\n{}", host.log_tail(40)))?;
            let token = host
                .login("admin", &password)
                .map_err(|e| format!("admin login: {e}"))?;
            let vm = new_vm(&prefix, scratch.path(), socket_dir.path(), 5)?;
            let world = World {
                exe,
                prefix,
                host,
                token,
                socket_dir: socket_dir.path().to_path_buf(),
                vm,
                agent: Mutex::new(None),
                scratch,
                _socket_dir: socket_dir,
                _data_dir: data_dir,
            };
            world.start_agent(false)?;
            Ok(world)
        })
        .as_ref()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn new_vm(prefix: &WinePrefix, scratch: &Path, socket_dir: &Path, com: u32) -> Result<Vm, String> {
    let id = Uuid::new_v4();
    let log = prefix
        .log_file(&format!("socat-com{com}.log"))
        .map_err(|e| e.to_string())?;
    let bridge = ComBridge::start(
        &scratch.join(format!("com{com}.pty")),
        &socket_dir.join(format!("vm-{id}.sock")),
        log,
    )
    .map_err(|e| format!("bridging COM{com}: {e}"))?;
    prefix
        .map_com(com, bridge.pty())
        .map_err(|e| e.to_string())?;
    Ok(Vm {
        id,
        com,
        _bridge: bridge,
    })
}

/// A log's text: wine's msiexec writes its verbose log in UTF-16 (with a byte-order mark),
/// everything else here writes UTF-8.
fn log_text(bytes: &[u8]) -> String {
    match bytes {
        [0xff, 0xfe, rest @ ..] => {
            let units: Vec<u16> = rest
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16_lossy(&units)
        }
        _ => String::from_utf8_lossy(bytes).into_owned(),
    }
}

/// A finished Windows program, readable in an assertion message.
fn shown(out: &Output) -> String {
    format!(
        "{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        log_text(&out.stdout).trim_end(),
        log_text(&out.stderr).trim_end()
    )
}

/// Held by every test: when the test panics, prints [`World::context`] into the test's
/// output, which the harness shows with the failure (the only part of a CI run that is kept).
struct ReportOnFailure(&'static World);

impl Drop for ReportOnFailure {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.0.context());
        }
    }
}

/// The service and the MSI tests both install the service `infiniservice` in the shared
/// prefix. If one fails half-way, this removes what it installed, so that the next test starts
/// from a prefix without it (instead of failing on the leftover).
struct RemoveOnFailure<'w> {
    world: &'w World,
    msi: Option<String>,
}

impl Drop for RemoveOnFailure<'_> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let prefix = &self.world.prefix;
        let quiet = Duration::from_secs(120);
        if let Some(msi) = &self.msi {
            let _ = prefix.run("msiexec.exe", &["/x", msi, "/qn"], quiet);
        }
        // Whatever the MSI left, or the service test installed.
        let _ = prefix.run("sc.exe", &["stop", SERVICE], quiet);
        let _ = prefix.run("sc.exe", &["delete", SERVICE], quiet);
        let left = sc_state(self.world, SERVICE);
        if left.contains("STATE") {
            eprintln!("cleanup could not remove the service: {left}");
        }
    }
}

/// A config for an agent on `COMn`.
fn agent_config(dir: &Path, name: &str, com: u32, allow_unsafe: bool) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "collection_interval = 1\nvirtio_serial_path = '\\\\.\\COM{com}'\n\
             [limits]\ninventory_interval = 3\n[policy]\nallow_unsafe = {allow_unsafe}\n\
             denied_safe_actions = [\"Shutdown\", \"Reboot\", \"PackageInstall\", \"PackageRemove\", \"PackageUpdate\"]\n"
        ),
    )
    .expect("write the agent config");
    path
}

impl World {
    fn start_agent(&self, allow_unsafe: bool) -> Result<(), String> {
        let mut slot = self.agent.lock().unwrap_or_else(|p| p.into_inner());
        *slot = None;
        let config = agent_config(
            self.scratch.path(),
            "console.toml",
            self.vm.com,
            allow_unsafe,
        );
        let log = self
            .prefix
            .log_file(&format!("agent-unsafe-{allow_unsafe}.log"))
            .map_err(|e| e.to_string())?;
        let mut command = self.prefix.command(&self.exe);
        command
            .arg("--config")
            .arg(windows_path(&config))
            .env("INFINIBAY_VM_ID", self.vm.id.to_string())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        *slot = Some(TiedChild::spawn(command).map_err(|e| e.to_string())?);
        Ok(())
    }

    /// What a failure needs to be diagnosed from a CI log: the host's log, the tail of every
    /// log in the scratch directory (the console agents' stderr, socat's, wineserver's, msiexec's
    /// verbose logs) and the service's own log file inside the prefix.
    fn context(&self) -> String {
        let service_log = self
            .prefix
            .drive_c()
            .join("ProgramData/Infinibay/InfiniService/logs/infiniservice.log");
        let mut logs: Vec<PathBuf> = std::fs::read_dir(self.scratch.path())
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        logs.sort();
        logs.push(service_log);
        let tails: Vec<String> = logs
            .iter()
            .filter_map(|path| {
                let text = log_text(&std::fs::read(path).ok()?);
                let lines: Vec<&str> = text
                    .lines()
                    .filter(|l| !l.contains("FS volume label"))
                    .collect();
                Some(format!(
                    "--- {} ---\n{}",
                    path.display(),
                    lines[lines.len().saturating_sub(40)..].join("\n")
                ))
            })
            .collect();
        format!(
            "--- host log ---\n{}\n{}",
            self.host.log_tail(60),
            tails.join("\n")
        )
    }

    /// Wait until the VM is online and its agent's identification is stored: the status is the
    /// host's live view, the agent comes from the store, written a flush later.
    fn wait_online_identified(&self, id: Uuid) -> Value {
        self.wait_for(
            ONLINE_WITHIN,
            &format!("VM {id} online and identified"),
            || {
                let vm = self.vm_view(id);
                (vm["status"] == "ONLINE" && !vm["agent"].is_null()).then_some(vm)
            },
        )
    }

    fn graphql(&self, query: &str, variables: Value) -> Value {
        let reply = self
            .host
            .graphql(Some(&self.token), query, variables, Duration::from_secs(90))
            .unwrap_or_else(|e| panic!("graphql: {e}\n{}", self.context()));
        assert!(reply.get("errors").is_none(), "{reply}\n{}", self.context());
        reply["data"].clone()
    }

    fn vm_view(&self, id: Uuid) -> Value {
        self.graphql(
            "query($id: ID!) { vm(id: $id) { status agent { os osVersion kernel architecture \
             capabilities } latestMetrics { memTotalKb coresUsage } } }",
            json!({ "id": id.to_string() }),
        )["vm"]
            .clone()
    }

    /// Poll `what` until `done` holds for it (or panic after `within`).
    fn wait_for(
        &self,
        within: Duration,
        what: &str,
        mut probe: impl FnMut() -> Option<Value>,
    ) -> Value {
        let started = Instant::now();
        loop {
            if let Some(value) = probe() {
                return value;
            }
            assert!(
                started.elapsed() < within,
                "{what}: not within {within:?}\n{}",
                self.context()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn wait_status(&self, id: Uuid, status: &str, within: Duration) -> Value {
        self.wait_for(within, &format!("VM {id} {status}"), || {
            let vm = self.vm_view(id);
            (vm["status"] == status).then_some(vm)
        })
    }

    fn execute(&self, id: Uuid, command: Value) -> Value {
        self.graphql(
            "mutation($vm: ID!, $c: CommandInput!) { executeVmCommand(vmId: $vm, command: $c) \
             { id success exitCode stdout stderr data executionTimeMs error { code message } } }",
            json!({ "vm": id.to_string(), "c": command }),
        )["executeVmCommand"]
            .clone()
    }

    /// `(pid, name)` of every process the agent lists.
    fn processes(&self) -> Vec<(u64, u64, String)> {
        let list = self.execute(self.vm.id, json!({"type": "SAFE", "action": "ProcessList"}));
        assert_eq!(list["success"], true, "{list}");
        list["data"]
            .as_array()
            .expect("a process list")
            .iter()
            .map(|p| {
                (
                    p["pid"].as_u64().unwrap_or(0),
                    p["ppid"].as_u64().unwrap_or(0),
                    p["name"].as_str().unwrap_or_default().to_ascii_lowercase(),
                )
            })
            .collect()
    }

    /// `wmic computersystem get …`: what wine itself reports, through its WMI.
    fn wmic_computer(&self) -> (u64, u64) {
        let out = self
            .prefix
            .run(
                "wmic.exe",
                &[
                    "computersystem",
                    "get",
                    "TotalPhysicalMemory,NumberOfLogicalProcessors",
                ],
                Duration::from_secs(120),
            )
            .expect("wmic runs");
        // wmic writes UTF-16 when its output is not a console.
        let units: Vec<u16> = out
            .stdout
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        let text = String::from_utf16_lossy(&units);
        let values: Vec<u64> = text
            .lines()
            .nth(1)
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        assert_eq!(values.len(), 2, "wmic said {text:?}");
        (values[1], values[0])
    }
}

#[test]
fn the_windows_agent_on_a_wine_com_port_brings_its_vm_online_as_windows() {
    let _serial = serial();
    let world = world();
    let _report = ReportOnFailure(world);
    let vm = world.wait_online_identified(world.vm.id);
    assert_eq!(vm["agent"]["os"], "windows", "{vm}");
    assert_eq!(vm["agent"]["architecture"], "x86_64", "{vm}");
    assert!(
        vm["agent"]["osVersion"]
            .as_str()
            .unwrap_or_default()
            .contains("Windows 10"),
        "{vm}"
    );
    assert!(
        vm["agent"]["kernel"]
            .as_str()
            .unwrap_or_default()
            .starts_with("10.0."),
        "{vm}"
    );
}

#[test]
fn its_stored_metrics_agree_with_wine_on_memory_total_and_cpu_count() {
    let _serial = serial();
    let world = world();
    let _report = ReportOnFailure(world);
    world.wait_status(world.vm.id, "ONLINE", ONLINE_WITHIN);
    let (total_bytes, cpus) = world.wmic_computer();
    let metrics = world.wait_for(ONLINE_WITHIN, "a stored system_metrics", || {
        let m = world.vm_view(world.vm.id)["latestMetrics"].clone();
        (!m.is_null()).then_some(m)
    });
    let stored_kb = metrics["memTotalKb"].as_f64().unwrap_or(0.0) as u64;
    assert_eq!(stored_kb, total_bytes / 1024, "{metrics}");
    assert_eq!(
        metrics["coresUsage"].as_array().map(Vec::len),
        Some(cpus as usize),
        "{metrics}"
    );
}

#[test]
fn inventories_arrive_the_agent_itself_wines_services_and_both_registry_views() {
    let _serial = serial();
    let world = world();
    let _report = ReportOnFailure(world);
    world.wait_status(world.vm.id, "ONLINE", ONLINE_WITHIN);
    let id = json!({ "id": world.vm.id.to_string() });
    let processes = world.wait_for(ONLINE_WITHIN, "the agent in vmProcesses", || {
        let list = world.graphql(
            "query($id: ID!) { vmProcesses(vmId: $id) { pid name } }",
            id.clone(),
        )["vmProcesses"]
            .clone();
        list.as_array()?
            .iter()
            .any(|p| {
                p["name"]
                    .as_str()
                    .is_some_and(|n| n.eq_ignore_ascii_case("infiniservice.exe"))
            })
            .then_some(list)
    });
    assert!(
        processes.as_array().is_some_and(|l| l.len() > 3),
        "{processes}"
    );
    let services = world.wait_for(ONLINE_WITHIN, "wine's services in vmServices", || {
        let list = world.graphql(
            "query($id: ID!) { vmServices(vmId: $id) { name description activeState subState loadState enabled startType } }",
            id.clone(),
        )["vmServices"]
            .clone();
        (!list.as_array()?.is_empty()).then_some(list)
    });
    let plug_and_play = services
        .as_array()
        .and_then(|l| l.iter().find(|s| s["name"] == "PlugPlay"))
        .unwrap_or_else(|| panic!("no PlugPlay service in {services}"));
    assert_eq!(plug_and_play["activeState"], "active", "{plug_and_play}");
    assert_eq!(plug_and_play["subState"], "running", "{plug_and_play}");
    assert_eq!(plug_and_play["startType"], "auto", "{plug_and_play}");
    assert_eq!(plug_and_play["enabled"], true, "{plug_and_play}");
    assert_eq!(plug_and_play["loadState"], Value::Null, "{plug_and_play}");
    let programs = world.wait_for(
        ONLINE_WITHIN,
        "the registered programs in vmApplications",
        || {
            let list = world.graphql(
            "query($id: ID!) { vmApplications(vmId: $id) { name version sizeKb architecture } }",
            id.clone(),
        )["vmApplications"]
            .clone();
            (list.as_array()?.len() >= 2).then_some(list)
        },
    );
    for (name, architecture) in [(PROGRAM_64, "x64"), (PROGRAM_32, "x86")] {
        let program = programs
            .as_array()
            .and_then(|l| l.iter().find(|p| p["name"] == name))
            .unwrap_or_else(|| panic!("{name} missing from {programs}"));
        assert_eq!(program["architecture"], architecture, "{program}");
        assert_eq!(program["version"], "1.2.3", "{program}");
        assert_eq!(program["sizeKb"], 2048.0, "{program}");
    }
}

#[test]
fn service_list_process_list_and_system_info_answer_through_execute_vm_command() {
    let _serial = serial();
    let world = world();
    let _report = ReportOnFailure(world);
    world.wait_status(world.vm.id, "ONLINE", ONLINE_WITHIN);
    let services = world.execute(
        world.vm.id,
        json!({"type": "SAFE", "action": "ServiceList"}),
    );
    assert_eq!(services["success"], true, "{services}");
    assert!(
        services["data"]
            .as_array()
            .is_some_and(|l| l.iter().any(|s| s["name"] == "Eventlog")),
        "{services}"
    );
    assert!(
        world
            .processes()
            .iter()
            .any(|(_, _, name)| name == "infiniservice.exe"),
        "the agent is not in its own ProcessList"
    );
    let info = world.execute(world.vm.id, json!({"type": "SAFE", "action": "SystemInfo"}));
    assert_eq!(info["success"], true, "{info}");
    assert_eq!(info["data"]["os_type"], "Windows", "{info}");
    let (_, cpus) = world.wmic_computer();
    assert_eq!(info["data"]["cpu_count"], cpus, "{info}");
    let os = world.execute(world.vm.id, json!({"type": "SAFE", "action": "OsInfo"}));
    assert_eq!(os["success"], true, "{os}");
    assert!(os["data"]["build"].as_str().is_some(), "{os}");
}

/// A named SQL Server instance's service is `MSSQL$<INSTANCE>`: such a name passes the host's
/// check and the Windows agent's, and reaches the Service Control Manager.
#[test]
fn service_control_reaches_a_service_whose_name_has_a_dollar_sign() {
    let _serial = serial();
    let world = world();
    let _report = ReportOnFailure(world);
    world.wait_status(world.vm.id, "ONLINE", ONLINE_WITHIN);
    let name = "MSSQL$INFINIBAYTEST";
    let sc = |args: &[&str]| {
        world
            .prefix
            .run("sc.exe", args, Duration::from_secs(60))
            .expect("sc runs")
    };
    // As on Windows, each `option=` is its own argument, followed by its value.
    let created = sc(&[
        "create",
        name,
        "binpath=",
        r"C:\windows\system32\notepad.exe",
        "start=",
        "demand",
    ]);
    assert!(created.status.success(), "sc create: {created:?}");
    let control = |operation: &str| {
        world.execute(
            world.vm.id,
            json!({"type": "SAFE", "action": "ServiceControl",
                   "params": {"service": name, "operation": operation}}),
        )
    };
    let status = control("status");
    let disabled = control("disable");
    let deleted = sc(&["delete", name]);
    assert_eq!(status["success"], true, "{status}");
    assert_eq!(status["data"]["service"], name, "{status}");
    assert_eq!(status["data"]["state"], "stopped", "{status}");
    assert_eq!(status["data"]["start_type"], "manual", "{status}");
    assert_eq!(disabled["success"], true, "{disabled}");
    assert_eq!(disabled["data"]["start_type"], "disabled", "{disabled}");
    assert!(deleted.status.success(), "sc delete: {deleted:?}");
}

#[test]
fn unsafe_commands_are_refused_by_default_and_when_allowed_a_timed_out_cmd_dies_with_its_children()
{
    let _serial = serial();
    let world = world();
    let _report = ReportOnFailure(world);
    world.wait_status(world.vm.id, "ONLINE", ONLINE_WITHIN);
    let refused = world.execute(
        world.vm.id,
        json!({"type": "UNSAFE", "rawCommand": "echo hi", "shell": "cmd"}),
    );
    assert_eq!(refused["success"], false, "{refused}");
    assert_eq!(refused["error"]["code"], "forbidden", "{refused}");

    // Allowed: the agent restarts with allow_unsafe and says so in its identification.
    world.start_agent(true).expect("agent restarts");
    world.wait_for(ONLINE_WITHIN, "unsafe_commands in the capabilities", || {
        let vm = world.vm_view(world.vm.id);
        vm["agent"]["capabilities"]
            .as_array()?
            .iter()
            .any(|c| c == "unsafe_commands")
            .then_some(vm)
    });
    let echo = world.execute(
        world.vm.id,
        json!({"type": "UNSAFE", "rawCommand": "echo hello& echo oops 1>&2& exit /b 4", "shell": "cmd"}),
    );
    assert_eq!(echo["exitCode"], 4, "{echo}");
    assert_eq!(
        echo["stdout"].as_str().map(str::trim),
        Some("hello"),
        "{echo}"
    );
    assert_eq!(
        echo["stderr"].as_str().map(str::trim),
        Some("oops"),
        "{echo}"
    );

    // cmd starts a second cmd in the background, each with a two-minute ping. The command's
    // timeout leaves room for wine to start four processes on a loaded machine.
    let (result, tree) = std::thread::scope(|scope| {
        let command = scope.spawn(|| {
            world.execute(
                world.vm.id,
                json!({
                    "type": "UNSAFE",
                    "rawCommand": "start /b cmd /c ping -n 120 127.0.0.1 >nul & ping -n 120 127.0.0.1 >nul",
                    "shell": "cmd",
                    "timeout": 15
                }),
            )
        });
        // While it runs: what the agents started (cmd, ping, and what cmd started), until both
        // pings are there or the command has ended. Every agent process is a root: the one that
        // runs the command is among them, and only the command starts processes under it.
        let mut tree: Vec<(u64, String)> = Vec::new();
        while !command.is_finished() {
            let all = world.processes();
            let mut seen: Vec<(u64, String)> = Vec::new();
            let mut parents: Vec<u64> = all
                .iter()
                .filter(|(_, _, name)| name == "infiniservice.exe")
                .map(|(pid, _, _)| *pid)
                .collect();
            while let Some(parent) = parents.pop() {
                for (pid, ppid, name) in &all {
                    if *ppid == parent && !seen.iter().any(|(p, _)| p == pid) {
                        seen.push((*pid, name.clone()));
                        parents.push(*pid);
                    }
                }
            }
            if !command.is_finished() {
                tree = seen;
            }
            if tree.iter().filter(|(_, name)| name == "ping.exe").count() >= 2 {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        (command.join().expect("the command thread"), tree)
    });
    assert_eq!(result["error"]["code"], "timeout", "{result}");
    let pings = tree.iter().filter(|(_, name)| name == "ping.exe").count();
    assert!(
        pings >= 1,
        "no ping under the agent while the command ran: {tree:?}"
    );
    // The agent has ended the tree when it answers; wine removes ended processes from the
    // process table asynchronously.
    let mut survivors: Vec<(u64, String)> = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        let after = world.processes();
        survivors = tree
            .iter()
            .filter(|(pid, name)| after.iter().any(|(p, _, n)| p == pid && n == name))
            .cloned()
            .collect();
        if survivors.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        survivors.is_empty(),
        "still running 30 s after the timeout: {survivors:?} (of {tree:?})"
    );
}

/// `sc query NAME`'s STATE line, or what sc printed instead (or why it did not run).
fn sc_state(world: &World, name: &str) -> String {
    let out = match world
        .prefix
        .run("sc.exe", &["query", name], Duration::from_secs(60))
    {
        Ok(out) => out,
        Err(e) => return format!("sc query {name}: {e}"),
    };
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find(|l| l.trim_start().starts_with("STATE"))
        .map(|l| l.to_owned())
        .unwrap_or(text)
}

#[test]
fn installed_as_a_service_it_starts_through_the_scm_brings_its_vm_online_stops_and_uninstalls() {
    let _serial = serial();
    let world = world();
    // Declared in this order, the report is printed before the cleanup changes the prefix.
    let _cleanup = RemoveOnFailure { world, msi: None };
    let _report = ReportOnFailure(world);
    // Its own VM on COM6: it can come online only through the service.
    let vm = new_vm(&world.prefix, world.scratch.path(), &world.socket_dir, 6).expect("VM 2");
    let config = agent_config(world.scratch.path(), "service.toml", vm.com, false);
    let config = windows_path(&config);
    let exe = world.exe.display().to_string();
    let install = world
        .prefix
        .run(
            &exe,
            &["--install-service", "--config", &config],
            Duration::from_secs(180),
        )
        .expect("install runs");
    assert!(install.status.success(), "{}", shown(&install));
    // --install-service returns once the service manager says RUNNING.
    let state = sc_state(world, SERVICE);
    assert!(state.contains("RUNNING"), "{state}");
    let online = world.wait_online_identified(vm.id);
    assert_eq!(online["agent"]["os"], "windows", "{online}");

    let stop = world
        .prefix
        .run("sc.exe", &["stop", SERVICE], Duration::from_secs(60))
        .expect("sc stop runs");
    assert!(stop.status.success(), "{}", shown(&stop));
    world.wait_for(Duration::from_secs(60), "the service stopped", || {
        let state = sc_state(world, SERVICE);
        state.contains("STOPPED").then_some(Value::String(state))
    });
    world.wait_status(vm.id, "OFFLINE", Duration::from_secs(60));

    let removed = world
        .prefix
        .run(
            &exe,
            &["--uninstall-service", "--config", &config],
            Duration::from_secs(180),
        )
        .expect("uninstall runs");
    assert!(removed.status.success(), "{}", shown(&removed));
    let state = sc_state(world, SERVICE);
    assert!(!state.contains("STATE"), "still installed: {state}");
    drop(vm);
}

#[test]
fn the_msi_installs_with_msiexec_runs_its_service_and_uninstalls() {
    let _serial = serial();
    let world = world();
    let msi = windows_msi().expect("the MSI builds");
    let msi_path = windows_path(&msi);
    // Declared in this order, the report is printed before the cleanup changes the prefix.
    let _cleanup = RemoveOnFailure {
        world,
        msi: Some(msi_path.clone()),
    };
    let _report = ReportOnFailure(world);
    let vm = new_vm(&world.prefix, world.scratch.path(), &world.socket_dir, 7).expect("VM 3");
    // An operator's config already in place: the MSI must keep it (and uses it: it names
    // the port, which wine cannot discover).
    let data = world
        .prefix
        .drive_c()
        .join("ProgramData/Infinibay/InfiniService");
    std::fs::create_dir_all(&data).expect("config dir");
    let operator_config = std::fs::read_to_string(agent_config(
        world.scratch.path(),
        "msi.toml",
        vm.com,
        false,
    ))
    .expect("config text");
    std::fs::write(data.join("config.toml"), &operator_config).expect("operator config");

    let log = windows_path(&world.scratch.path().join("msiexec-install.log"));
    let install = world
        .prefix
        .run(
            "msiexec.exe",
            &["/i", &msi_path, "/qn", "/l*v", &log],
            Duration::from_secs(300),
        )
        .expect("msiexec runs");
    assert!(install.status.success(), "msiexec /i: {}", shown(&install));
    let exe = world
        .prefix
        .drive_c()
        .join("Program Files/Infinibay/InfiniService/infiniservice.exe");
    assert!(exe.is_file(), "{} not installed", exe.display());
    assert_eq!(
        std::fs::read_to_string(data.join("config.toml")).expect("config"),
        operator_config,
        "the MSI replaced the operator's config"
    );
    // The MSI's ServiceControl has Wait="yes": msiexec returns once the service runs.
    let state = sc_state(world, SERVICE);
    assert!(state.contains("RUNNING"), "{state}");
    let online = world.wait_online_identified(vm.id);
    assert_eq!(online["agent"]["os"], "windows", "{online}");

    // Stopped, and its process gone, before `/x`. Wine's msiexec deletes the files right after
    // the service reports STOPPED, while its process may still be exiting on a loaded machine;
    // wine then leaves the in-use exe behind and still succeeds (Windows Installer would wait
    // for it or replace it at reboot). Seen here: "exe still there after /x".
    let stop = world
        .prefix
        .run("sc.exe", &["stop", SERVICE], Duration::from_secs(60))
        .expect("sc stop runs");
    assert!(stop.status.success(), "{}", shown(&stop));
    world.wait_for(
        Duration::from_secs(60),
        "the service stopped and its process gone (only the console agent left)",
        || {
            let state = sc_state(world, SERVICE);
            let agents = world
                .processes()
                .iter()
                .filter(|(_, _, name)| name == "infiniservice.exe")
                .count();
            (state.contains("STOPPED") && agents == 1).then_some(Value::String(state))
        },
    );
    let log = windows_path(&world.scratch.path().join("msiexec-uninstall.log"));
    let remove = world
        .prefix
        .run(
            "msiexec.exe",
            &["/x", &msi_path, "/qn", "/l*v", &log],
            Duration::from_secs(300),
        )
        .expect("msiexec runs");
    assert!(remove.status.success(), "msiexec /x: {}", shown(&remove));
    assert!(!exe.exists(), "{} still there after /x", exe.display());
    let state = sc_state(world, SERVICE);
    assert!(!state.contains("STATE"), "service still installed: {state}");
    assert!(
        data.join("config.toml").is_file(),
        "the operator's config was removed"
    );
    world.wait_status(vm.id, "OFFLINE", Duration::from_secs(60));
    drop(vm);
}
