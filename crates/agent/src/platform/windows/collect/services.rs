//! Every Windows service from the Service Control Manager (`EnumServicesStatusExW`: name,
//! display name, state), with its start type from the service's registry key (`Start`,
//! `DelayedAutostart`): one local registry read per service instead of one SCM round trip.
//!
//! The inventory has the Linux fields; on Windows they mean:
//!
//! | field | Windows |
//! | --- | --- |
//! | `name` | the service name (`Spooler`) |
//! | `description` | the display name (`Print Spooler`) |
//! | `active_state` | systemd's words for the state: `active` (running, paused, continue pending), `inactive` (stopped), `activating` (start pending), `deactivating` (stop and pause pending) |
//! | `sub_state` | the SCM's own state: `running`, `stopped`, `start_pending`, `stop_pending`, `paused`, `pause_pending`, `continue_pending` |
//! | `start_type` | `auto`, `auto-delayed`, `manual` (`SERVICE_DEMAND_START`), `disabled`, `boot`, `system` |
//! | `enabled` | starts at boot: true for `auto`, `auto-delayed`, `boot`, `system` |
//! | `load_state` | absent: systemd's notion, Windows has none |

use infinibay_protocol::message::ServiceInfo;
use windows_sys::Win32::Foundation::{ERROR_MORE_DATA, GetLastError};
use windows_sys::Win32::System::Services::{
    ENUM_SERVICE_STATUS_PROCESSW, EnumServicesStatusExW, SC_ENUM_PROCESS_INFO, SC_MANAGER_CONNECT,
    SC_MANAGER_ENUMERATE_SERVICE, SERVICE_CONTINUE_PENDING, SERVICE_PAUSE_PENDING, SERVICE_PAUSED,
    SERVICE_RUNNING, SERVICE_START_PENDING, SERVICE_STATE_ALL, SERVICE_STOP_PENDING, SERVICE_WIN32,
};

use crate::platform::windows::registry::{HKEY_LOCAL_MACHINE, Key, View};
use crate::platform::windows::scm::{ScHandle, state_name};
use crate::platform::windows::wide::from_wide_ptr;

/// systemd's word for a state, so that both OSes' inventories read alike.
fn active_state(state: u32) -> &'static str {
    match state {
        SERVICE_RUNNING | SERVICE_PAUSED | SERVICE_CONTINUE_PENDING => "active",
        SERVICE_START_PENDING => "activating",
        SERVICE_STOP_PENDING | SERVICE_PAUSE_PENDING => "deactivating",
        _ => "inactive",
    }
}

/// A start type (`Start` in the service's key) in words, as the Services console says them
/// (`manual` is `SERVICE_DEMAND_START`); `delayed` for auto-start services with
/// `DelayedAutostart = 1`.
pub fn start_type_name(start: u32, delayed: bool) -> &'static str {
    match (start, delayed) {
        (0, _) => "boot",
        (1, _) => "system",
        (2, true) => "auto-delayed",
        (2, false) => "auto",
        (3, _) => "manual",
        (4, _) => "disabled",
        _ => "unknown",
    }
}

/// The start type of `service` from its registry key.
pub fn start_type(service: &str) -> Option<&'static str> {
    let key = Key::open(
        HKEY_LOCAL_MACHINE,
        &format!(r"SYSTEM\CurrentControlSet\Services\{service}"),
        View::Bits64,
    )
    .ok()?;
    let start = key.dword("Start")?;
    Some(start_type_name(
        start,
        key.dword("DelayedAutostart") == Some(1),
    ))
}

/// Every service (not drivers), sorted by name.
pub fn list_services() -> std::io::Result<Vec<ServiceInfo>> {
    let manager = ScHandle::manager(SC_MANAGER_CONNECT | SC_MANAGER_ENUMERATE_SERVICE)?;
    let mut buffer = vec![0u64; 64 * 1024 / 8];
    let mut resume = 0u32;
    let mut services = Vec::new();
    loop {
        let (mut needed, mut count) = (0u32, 0u32);
        // SAFETY: `buffer` is writable for the size passed; the out-pointers are valid.
        let ok = unsafe {
            EnumServicesStatusExW(
                manager.0,
                SC_ENUM_PROCESS_INFO,
                SERVICE_WIN32,
                SERVICE_STATE_ALL,
                buffer.as_mut_ptr().cast(),
                (buffer.len() * 8) as u32,
                &mut needed,
                &mut count,
                &mut resume,
                std::ptr::null(),
            )
        };
        // SAFETY: reads the calling thread's last error.
        let more = ok == 0 && unsafe { GetLastError() } == ERROR_MORE_DATA;
        if ok == 0 && !more {
            return Err(std::io::Error::last_os_error());
        }
        let entries = buffer.as_ptr().cast::<ENUM_SERVICE_STATUS_PROCESSW>();
        for i in 0..count as usize {
            // SAFETY: the SCM wrote `count` entries at the start of `buffer`; their strings
            // point into the rest of it.
            let entry = unsafe { &*entries.add(i) };
            // SAFETY: as above.
            let name = unsafe { from_wide_ptr(entry.lpServiceName) };
            let state = entry.ServiceStatusProcess.dwCurrentState;
            let start = start_type(&name);
            services.push(ServiceInfo {
                // SAFETY: as above.
                description: Some(unsafe { from_wide_ptr(entry.lpDisplayName) })
                    .filter(|d| !d.is_empty()),
                load_state: None,
                active_state: Some(active_state(state).into()),
                sub_state: Some(state_name(state).into()),
                enabled: start.map(|s| matches!(s, "auto" | "auto-delayed" | "boot" | "system")),
                start_type: start.map(String::from),
                name,
            });
        }
        if !more {
            break;
        }
        if needed as usize > buffer.len() * 8 {
            buffer.resize(needed as usize / 8 + 1, 0);
        }
    }
    services.sort_by_key(|s| s.name.to_lowercase());
    Ok(services)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_types_and_states_have_names() {
        assert_eq!(start_type_name(2, true), "auto-delayed");
        assert_eq!(start_type_name(3, false), "manual");
        assert_eq!(start_type_name(4, false), "disabled");
        assert_eq!(active_state(SERVICE_STOP_PENDING), "deactivating");
    }

    #[test]
    fn the_service_manager_lists_services_with_state_and_start_type() {
        let services = list_services().expect("SCM");
        assert!(!services.is_empty());
        assert!(
            services
                .iter()
                .all(|s| s.sub_state.is_some() && s.active_state.is_some())
        );
        assert!(
            services.iter().any(|s| s.start_type.is_some()),
            "{services:?}"
        );
        assert!(services.iter().all(|s| s.load_state.is_none()));
    }
}
