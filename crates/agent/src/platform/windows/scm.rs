//! The Service Control Manager: handles, states, and what `ServiceControl` does (start, stop,
//! restart, enable = automatic start, disable, status), each waiting for the state it asked
//! for within the command's deadline.

use std::time::{Duration, Instant};

use infinibay_protocol::message::{ErrorCode, ServiceOperation};
use serde_json::json;
use windows_sys::Win32::Foundation::{
    ERROR_ACCESS_DENIED, ERROR_SERVICE_ALREADY_RUNNING, ERROR_SERVICE_DOES_NOT_EXIST,
    ERROR_SERVICE_NOT_ACTIVE,
};
use windows_sys::Win32::System::Services::{
    ChangeServiceConfigW, CloseServiceHandle, ControlService, OpenSCManagerW, OpenServiceW,
    QueryServiceStatus, SC_HANDLE, SC_MANAGER_CONNECT, SERVICE_AUTO_START, SERVICE_CHANGE_CONFIG,
    SERVICE_CONTINUE_PENDING, SERVICE_CONTROL_STOP, SERVICE_DISABLED, SERVICE_NO_CHANGE,
    SERVICE_PAUSE_PENDING, SERVICE_PAUSED, SERVICE_QUERY_STATUS, SERVICE_RUNNING, SERVICE_START,
    SERVICE_START_PENDING, SERVICE_STATUS, SERVICE_STOP, SERVICE_STOP_PENDING, SERVICE_STOPPED,
    StartServiceW,
};

use super::wide::to_wide;

/// How often a pending state is looked at again.
const POLL: Duration = Duration::from_millis(250);

/// An open Service Control Manager (or service) handle, closed on drop.
#[derive(Debug)]
pub struct ScHandle(pub SC_HANDLE);

impl ScHandle {
    /// Connect to the local SCM with `access`.
    pub fn manager(access: u32) -> std::io::Result<Self> {
        // SAFETY: local machine, default database.
        let raw = unsafe { OpenSCManagerW(std::ptr::null(), std::ptr::null(), access) };
        if raw.is_null() {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(Self(raw))
        }
    }

    /// Open the service `name` with `access`.
    pub fn service(&self, name: &str, access: u32) -> std::io::Result<Self> {
        let wide = to_wide(name);
        // SAFETY: a valid manager handle and NUL-terminated name.
        let raw = unsafe { OpenServiceW(self.0, wide.as_ptr(), access) };
        if raw.is_null() {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(Self(raw))
        }
    }

    /// The service's current state (`SERVICE_RUNNING`, …).
    pub fn state(&self) -> std::io::Result<u32> {
        let mut status = SERVICE_STATUS::default();
        // SAFETY: a service handle with SERVICE_QUERY_STATUS and a valid out-pointer.
        if unsafe { QueryServiceStatus(self.0, &mut status) } == 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(status.dwCurrentState)
    }
}

impl Drop for ScHandle {
    fn drop(&mut self) {
        // SAFETY: a handle opened by this wrapper, closed once.
        unsafe {
            CloseServiceHandle(self.0);
        }
    }
}

/// The SCM's state in words.
pub fn state_name(state: u32) -> &'static str {
    match state {
        SERVICE_RUNNING => "running",
        SERVICE_STOPPED => "stopped",
        SERVICE_START_PENDING => "start_pending",
        SERVICE_STOP_PENDING => "stop_pending",
        SERVICE_PAUSED => "paused",
        SERVICE_PAUSE_PENDING => "pause_pending",
        SERVICE_CONTINUE_PENDING => "continue_pending",
        _ => "unknown",
    }
}

/// The state of service `name`, when it is installed.
pub fn query_state(name: &str) -> std::io::Result<u32> {
    ScHandle::manager(SC_MANAGER_CONNECT)?
        .service(name, SERVICE_QUERY_STATUS)?
        .state()
}

type Outcome = Result<(String, serde_json::Value), (ErrorCode, String)>;

fn failure(service: &str, what: &str, error: std::io::Error) -> (ErrorCode, String) {
    let code = match error.raw_os_error().map(|c| c as u32) {
        Some(ERROR_ACCESS_DENIED) => ErrorCode::Forbidden,
        _ => ErrorCode::Failed,
    };
    let detail = match error.raw_os_error().map(|c| c as u32) {
        Some(ERROR_SERVICE_DOES_NOT_EXIST) => format!("there is no service named `{service}`"),
        _ => error.to_string(),
    };
    (code, format!("cannot {what} service `{service}`: {detail}"))
}

/// Wait until the service is in `wanted` (or the deadline passes).
fn wait_for(handle: &ScHandle, wanted: u32, deadline: Instant) -> Result<(), u32> {
    loop {
        let state = handle.state().unwrap_or(0);
        if state == wanted {
            return Ok(());
        }
        if Instant::now() + POLL > deadline {
            return Err(state);
        }
        std::thread::sleep(POLL);
    }
}

fn start(service: &str, handle: &ScHandle, deadline: Instant) -> Result<(), (ErrorCode, String)> {
    // SAFETY: a service handle with SERVICE_START; no arguments.
    if unsafe { StartServiceW(handle.0, 0, std::ptr::null()) } == 0 {
        let error = std::io::Error::last_os_error();
        if error.raw_os_error() != Some(ERROR_SERVICE_ALREADY_RUNNING as i32) {
            return Err(failure(service, "start", error));
        }
    }
    wait_for(handle, SERVICE_RUNNING, deadline).map_err(|state| {
        (
            ErrorCode::Timeout,
            format!(
                "service `{service}` is {}, not running, at the deadline",
                state_name(state)
            ),
        )
    })
}

fn stop(service: &str, handle: &ScHandle, deadline: Instant) -> Result<(), (ErrorCode, String)> {
    let mut status = SERVICE_STATUS::default();
    // SAFETY: a service handle with SERVICE_STOP and a valid out-pointer.
    if unsafe { ControlService(handle.0, SERVICE_CONTROL_STOP, &mut status) } == 0 {
        let error = std::io::Error::last_os_error();
        if error.raw_os_error() != Some(ERROR_SERVICE_NOT_ACTIVE as i32) {
            return Err(failure(service, "stop", error));
        }
    }
    wait_for(handle, SERVICE_STOPPED, deadline).map_err(|state| {
        (
            ErrorCode::Timeout,
            format!(
                "service `{service}` is {}, not stopped, at the deadline",
                state_name(state)
            ),
        )
    })
}

fn set_start_type(service: &str, handle: &ScHandle, start: u32) -> Result<(), (ErrorCode, String)> {
    // SAFETY: a service handle with SERVICE_CHANGE_CONFIG; every other setting unchanged.
    let ok = unsafe {
        ChangeServiceConfigW(
            handle.0,
            SERVICE_NO_CHANGE,
            start,
            SERVICE_NO_CHANGE,
            std::ptr::null(),
            std::ptr::null(),
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    if ok == 0 {
        return Err(failure(service, "change", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// `ServiceControl` through the SCM. Runs on a blocking thread; returns by `deadline`.
pub fn control(service: &str, operation: ServiceOperation, deadline: Instant) -> Outcome {
    let manager = ScHandle::manager(SC_MANAGER_CONNECT)
        .map_err(|e| failure(service, "reach the Service Control Manager for", e))?;
    let access = SERVICE_QUERY_STATUS
        | match operation {
            ServiceOperation::Start => SERVICE_START,
            ServiceOperation::Stop => SERVICE_STOP,
            ServiceOperation::Restart => SERVICE_STOP | SERVICE_START,
            ServiceOperation::Enable | ServiceOperation::Disable => SERVICE_CHANGE_CONFIG,
            ServiceOperation::Status => 0,
        };
    let handle = manager
        .service(service, access)
        .map_err(|e| failure(service, "open", e))?;
    match operation {
        ServiceOperation::Start => start(service, &handle, deadline)?,
        ServiceOperation::Stop => stop(service, &handle, deadline)?,
        ServiceOperation::Restart => {
            stop(service, &handle, deadline)?;
            start(service, &handle, deadline)?;
        }
        ServiceOperation::Enable => set_start_type(service, &handle, SERVICE_AUTO_START)?,
        ServiceOperation::Disable => set_start_type(service, &handle, SERVICE_DISABLED)?,
        ServiceOperation::Status => {}
    }
    let state = handle.state().map(state_name).unwrap_or("unknown");
    let start_type = super::collect::start_type(service);
    Ok((
        format!("service `{service}` is {state}"),
        json!({
            "service": service,
            "operation": operation,
            "state": state,
            "start_type": start_type,
        }),
    ))
}
