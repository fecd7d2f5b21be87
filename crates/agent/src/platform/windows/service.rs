//! The agent as a Windows service: installed and removed by the binary itself
//! (`--install-service`, `--uninstall-service`), run by the Service Control Manager
//! (`--service`), restarted on failure, logging to a rotated file under ProgramData and errors
//! to the Event Log.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use windows_service::service::{
    ServiceAccess, ServiceAction, ServiceActionType, ServiceControl, ServiceControlAccept,
    ServiceErrorControl, ServiceExitCode, ServiceFailureActions, ServiceFailureResetPeriod,
    ServiceInfo, ServiceStartType, ServiceState, ServiceStatus, ServiceType,
};
use windows_service::service_control_handler::{self, ServiceControlHandlerResult};
use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};
use windows_service::{define_windows_service, service_dispatcher};

use super::logging::{EventLog, RotatingFile};
use super::registry::{HKEY_LOCAL_MACHINE, Key};
use crate::cli::Args;
use crate::config::Config;

/// The Service Control Manager's display name.
pub const DISPLAY_NAME: &str = "Infinibay InfiniService";

const DESCRIPTION: &str = "Infinibay guest agent: reports this VM's state to the infinibay host \
                           over virtio-serial and runs its commands under a local policy.";

/// Log file size before it is rotated, and rotated files kept.
const LOG_MAX_BYTES: u64 = 4 * 1024 * 1024;
const LOG_KEEP: u32 = 3;

/// How long install and uninstall wait for the service to start or stop.
const STATE_WAIT: Duration = Duration::from_secs(30);

/// `C:\ProgramData\Infinibay\InfiniService`: config and logs.
pub fn data_dir() -> PathBuf {
    program_data().join("Infinibay").join("InfiniService")
}

/// The machine's ProgramData folder, where the MSI puts the config (`CommonAppDataFolder`).
/// Read from the registry (`ProfileList\ProgramData`, `%SystemDrive%\ProgramData`) rather
/// than from the environment: a service's environment is the service manager's, which need
/// not have `ProgramData` (under wine it names another folder).
fn program_data() -> PathBuf {
    use super::registry::View;
    let from_registry = Key::open(
        HKEY_LOCAL_MACHINE,
        r"SOFTWARE\Microsoft\Windows NT\CurrentVersion\ProfileList",
        View::Bits64,
    )
    .ok()
    .and_then(|key| key.string("ProgramData"))
    .map(|raw| super::wide::expand_environment(&raw))
    .filter(|p| !p.is_empty() && !p.contains('%'));
    from_registry
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("ProgramData").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(r"C:\ProgramData"))
}

/// `C:\ProgramData\Infinibay\InfiniService\config.toml`.
pub fn default_config_path() -> PathBuf {
    data_dir().join("config.toml")
}

/// The service's log file.
pub fn log_path() -> PathBuf {
    data_dir().join("logs").join("infiniservice.log")
}

/// Run from a console: log to stderr.
pub fn init_logging(config: &Config, debug: bool) {
    crate::app::init_stderr_logging(config, debug);
}

/// Under the SCM: the rotated file, and errors to the Event Log too.
fn init_service_logging(config: &Config, debug: bool) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let level = crate::app::log_level(config, debug);
    let file = RotatingFile::open(&log_path(), LOG_MAX_BYTES, LOG_KEEP);
    let file_layer = file.ok().map(|file| {
        tracing_subscriber::fmt::layer()
            .with_writer(file)
            .with_ansi(false)
            .with_target(false)
    });
    let _ = tracing_subscriber::registry()
        .with(level)
        .with(file_layer)
        .with(EventLog::open(&config.service_name))
        .try_init();
}

/// Nothing to set before the runtime on Windows.
pub fn prepare_process() {}

/// Resolves on Ctrl+C or Ctrl+Break (an agent run from a console). Under the SCM the stop
/// request comes through the service control handler instead.
pub async fn shutdown_signal() {
    let Ok(mut ctrl_break) = tokio::signal::windows::ctrl_break() else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = ctrl_break.recv() => {}
    }
}

fn event_source_key(name: &str) -> String {
    format!(r"SYSTEM\CurrentControlSet\Services\EventLog\Application\{name}")
}

/// Register the Event Log source: its messages come from this executable's message table.
fn register_event_source(name: &str, exe: &std::path::Path) -> std::io::Result<()> {
    let key = Key::create(HKEY_LOCAL_MACHINE, &event_source_key(name))?;
    key.set_string("EventMessageFile", &exe.display().to_string(), true)?;
    // Error, warning and information events.
    key.set_dword("TypesSupported", 7)
}

/// Restart 5 s after a failure, again after 5 s, then every 30 s; the count resets after a
/// day without failure. "Failure" includes stopping with an error, not only crashing.
fn set_recovery(service: &windows_service::service::Service) -> anyhow::Result<()> {
    let restart = |secs| ServiceAction {
        action_type: ServiceActionType::Restart,
        delay: Duration::from_secs(secs),
    };
    service
        .update_failure_actions(ServiceFailureActions {
            reset_period: ServiceFailureResetPeriod::After(Duration::from_secs(86_400)),
            reboot_msg: None,
            command: None,
            actions: Some(vec![restart(5), restart(5), restart(30)]),
        })
        .context("cannot set the restart-on-failure actions")?;
    service
        .set_failure_actions_on_non_crash_failures(true)
        .context("cannot apply the failure actions to errors as well as crashes")
}

/// A service installed by other means (the MSI's ServiceInstall table has no failure
/// actions; `sc create`) gets the restart-on-failure settings at its first start.
fn ensure_recovery(name: &str) -> anyhow::Result<()> {
    let manager = ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT)?;
    let service = manager.open_service(
        name,
        ServiceAccess::CHANGE_CONFIG | ServiceAccess::QUERY_CONFIG,
    )?;
    let configured = service
        .get_failure_actions()?
        .actions
        .is_some_and(|actions| !actions.is_empty());
    if !configured {
        set_recovery(&service)?;
        tracing::info!("restart-on-failure actions set");
    }
    Ok(())
}

fn wait_for_state(
    service: &windows_service::service::Service,
    wanted: ServiceState,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + STATE_WAIT;
    loop {
        let state = service.query_status()?.current_state;
        if state == wanted {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "the service is {state:?} after {} s, not {wanted:?}",
                STATE_WAIT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Install (or reconfigure) the service to run this executable with `--service` (and the
/// `--config` given, if any), automatic start as LocalSystem, restart on failure, the Event
/// Log source; then start it.
pub fn install(args: &Args, config: &Config) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot tell where this executable is")?;
    let mut launch_arguments: Vec<OsString> = vec!["--service".into()];
    if let Some(path) = &args.config {
        launch_arguments.push("--config".into());
        launch_arguments.push(path.into());
    }
    let info = ServiceInfo {
        name: config.service_name.clone().into(),
        display_name: DISPLAY_NAME.into(),
        service_type: ServiceType::OWN_PROCESS,
        start_type: ServiceStartType::AutoStart,
        error_control: ServiceErrorControl::Normal,
        executable_path: exe.clone(),
        launch_arguments,
        dependencies: Vec::new(),
        account_name: None,
        account_password: None,
    };
    let manager = ServiceManager::local_computer(
        None::<&str>,
        ServiceManagerAccess::CONNECT | ServiceManagerAccess::CREATE_SERVICE,
    )
    .context("cannot open the Service Control Manager (run as Administrator)")?;
    let access = ServiceAccess::CHANGE_CONFIG
        | ServiceAccess::START
        | ServiceAccess::QUERY_STATUS
        | ServiceAccess::QUERY_CONFIG;
    let service = match manager.create_service(&info, access) {
        Ok(service) => service,
        Err(windows_service::Error::Winapi(e))
            if e.raw_os_error()
                == Some(windows_sys::Win32::Foundation::ERROR_SERVICE_EXISTS as i32) =>
        {
            let service = manager.open_service(&config.service_name, access)?;
            service
                .change_config(&info)
                .context("cannot update the existing service")?;
            tracing::info!(service = %config.service_name, "service existed: reconfigured");
            service
        }
        Err(e) => return Err(e).context("cannot create the service"),
    };
    service.set_description(DESCRIPTION)?;
    if let Err(e) = set_recovery(&service) {
        // Real Windows always has failure actions; wine's service manager does not.
        tracing::warn!(error = %format!("{e:#}"), "the service will not be restarted on failure");
    }
    register_event_source(&config.service_name, &exe)
        .context("cannot register the Event Log source")?;
    if service.query_status()?.current_state != ServiceState::Running {
        service
            .start(&[] as &[&std::ffi::OsStr])
            .context("the service was installed but does not start")?;
        wait_for_state(&service, ServiceState::Running)?;
    }
    tracing::info!(service = %config.service_name, exe = %exe.display(), "service installed and running");
    Ok(())
}

/// Stop the service, remove it and its Event Log source. A service that is not installed is
/// not an error.
pub fn uninstall(config: &Config) -> anyhow::Result<()> {
    let manager = ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT)
        .context("cannot open the Service Control Manager (run as Administrator)")?;
    let access = ServiceAccess::STOP | ServiceAccess::DELETE | ServiceAccess::QUERY_STATUS;
    match manager.open_service(&config.service_name, access) {
        Ok(service) => {
            if service.query_status()?.current_state != ServiceState::Stopped {
                let _ = service.stop();
                wait_for_state(&service, ServiceState::Stopped)?;
            }
            service.delete().context("cannot delete the service")?;
            tracing::info!(service = %config.service_name, "service removed");
        }
        Err(windows_service::Error::Winapi(e))
            if e.raw_os_error()
                == Some(windows_sys::Win32::Foundation::ERROR_SERVICE_DOES_NOT_EXIST as i32) =>
        {
            tracing::info!(service = %config.service_name, "service was not installed");
        }
        Err(e) => return Err(e).context("cannot open the service"),
    }
    Key::delete_tree(HKEY_LOCAL_MACHINE, &event_source_key(&config.service_name))
        .context("cannot remove the Event Log source")?;
    Ok(())
}

/// The flags, handed to `service_main` (which the SCM calls on its own thread).
static ARGS: OnceLock<Args> = OnceLock::new();

define_windows_service!(ffi_service_main, service_main);

/// Hand the process to the Service Control Manager; returns when the service has stopped.
pub fn run_under_service_manager(args: Args) -> anyhow::Result<()> {
    let _ = ARGS.set(args);
    // For an own-process service the name given here is not checked.
    service_dispatcher::start("infiniservice", ffi_service_main).context(
        "not started by the Service Control Manager (--service is for the installed service; \
         run without it in a console)",
    )
}

fn service_main(_arguments: Vec<OsString>) {
    let Some(args) = ARGS.get() else {
        return;
    };
    let config = Config::load(&args.config_path(), args.config_is_explicit());
    let (name, config_error) = match &config {
        Ok(c) => (c.service_name.clone(), None),
        Err(e) => ("infiniservice".to_string(), Some(e.to_string())),
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let stop_tx = Mutex::new(Some(stop_tx));
    let handler = move |control| match control {
        ServiceControl::Stop | ServiceControl::Shutdown => {
            if let Some(tx) = stop_tx.lock().ok().and_then(|mut slot| slot.take()) {
                let _ = tx.send(());
            }
            ServiceControlHandlerResult::NoError
        }
        ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
        _ => ServiceControlHandlerResult::NotImplemented,
    };
    let Ok(status) = service_control_handler::register(&name, handler) else {
        return;
    };
    let report = |state, exit_code| {
        let _ = status.set_service_status(ServiceStatus {
            service_type: ServiceType::OWN_PROCESS,
            current_state: state,
            controls_accepted: if state == ServiceState::Running {
                ServiceControlAccept::STOP | ServiceControlAccept::SHUTDOWN
            } else {
                ServiceControlAccept::empty()
            },
            exit_code,
            checkpoint: 0,
            wait_hint: Duration::from_secs(10),
            process_id: None,
        });
    };
    let config = match config {
        Ok(config) => config,
        Err(_) => {
            // No config, no log file: the Event Log is the one place to say why.
            if let Some(log) = EventLog::open(&name) {
                log.error(&format!(
                    "infiniservice cannot start: {}",
                    config_error.unwrap_or_default()
                ));
            }
            report(ServiceState::Stopped, ServiceExitCode::ServiceSpecific(1));
            return;
        }
    };
    init_service_logging(&config, args.debug);
    report(ServiceState::Running, ServiceExitCode::Win32(0));
    tracing::info!(service = %name, "running under the Service Control Manager");
    if let Err(e) = ensure_recovery(&name) {
        tracing::warn!(error = %format!("{e:#}"), "cannot check the restart-on-failure settings");
    }
    let outcome = crate::app::serve(args, config, async move {
        let _ = stop_rx.await;
    });
    match outcome {
        Ok(()) => {
            tracing::info!("service stopped");
            report(ServiceState::Stopped, ServiceExitCode::Win32(0));
        }
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "the agent stopped with an error");
            // A service-specific exit code counts as a failure: the SCM restarts it.
            report(ServiceState::Stopped, ServiceExitCode::ServiceSpecific(1));
        }
    }
}
