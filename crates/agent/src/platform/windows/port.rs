//! The port to the host on Windows: finding it and opening it.
//!
//! The vioser driver (virtio-win) exposes a named virtio-serial port as
//! `\\.\Global\<name>`; that is the first choice. Guests without it may see the channel as a
//! COM port: then the COM ports are listed (SetupAPI's COM port interface and the registry's
//! `HARDWARE\DEVICEMAP\SERIALCOMM`), a virtio one (vendor 1AF4) wins, and a single COM port
//! is taken as the one. `--device`, `INFINISERVICE_DEVICE` and the config win over all that.

use std::os::windows::io::{FromRawHandle, OwnedHandle};
use std::path::{Path, PathBuf};

use thiserror::Error;
use windows_sys::Win32::Devices::Communication::{COMMTIMEOUTS, GetCommTimeouts, SetCommTimeouts};
use windows_sys::Win32::Devices::DeviceAndDriverInstallation::{
    DICS_FLAG_GLOBAL, DIGCF_DEVICEINTERFACE, DIGCF_PRESENT, DIREG_DEV, HDEVINFO, SP_DEVINFO_DATA,
    SPDRP_FRIENDLYNAME, SPDRP_HARDWAREID, SetupDiDestroyDeviceInfoList, SetupDiEnumDeviceInfo,
    SetupDiGetClassDevsW, SetupDiGetDeviceRegistryPropertyW, SetupDiOpenDevRegKey,
};
use windows_sys::Win32::Foundation::{
    ERROR_ACCESS_DENIED, ERROR_FILE_NOT_FOUND, ERROR_PATH_NOT_FOUND, ERROR_SHARING_VIOLATION,
    GENERIC_READ, GENERIC_WRITE, INVALID_HANDLE_VALUE,
};
use windows_sys::Win32::Storage::FileSystem::{
    CreateFileW, FILE_FLAG_OVERLAPPED, OPEN_EXISTING, QueryDosDeviceW,
};
use windows_sys::Win32::System::Ioctl::GUID_DEVINTERFACE_COMPORT;
use windows_sys::Win32::System::Registry::KEY_READ;

use super::registry::{HKEY_LOCAL_MACHINE, Key, View};
use super::wide::{from_wide, split_multi, to_wide};
use crate::channel::{Hint, PortHints};

/// The port name the host's QEMU config gives the agent's channel.
pub const PORT_NAME: &str = "org.infinibay.agent";

/// Where vioser exposes it.
pub const VIOSER_PATH: &str = r"\\.\Global\org.infinibay.agent";

/// Why no port could be used.
#[derive(Debug, Error)]
pub enum PortError {
    /// Neither the vioser port nor a usable COM port.
    #[error(
        "no port to the host: {VIOSER_PATH} does not exist (is the VirtIO serial driver, vioser, \
         installed?) and {}",
        describe_com_ports(com_ports)
    )]
    NotFound {
        /// The COM ports seen.
        com_ports: Vec<ComPort>,
    },
    /// Several COM ports and none of them virtio: which one is ours cannot be told.
    #[error(
        "{} and none is a virtio device; name ours with --device, INFINISERVICE_DEVICE or \
         virtio_serial_path",
        describe_com_ports(.0)
    )]
    Ambiguous(Vec<ComPort>),
    /// Opening failed.
    #[error("cannot open {path}: {source}{hint}")]
    Open {
        /// The device.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
        /// What it probably means.
        hint: &'static str,
    },
}

fn describe_com_ports(ports: &[ComPort]) -> String {
    if ports.is_empty() {
        return "there is no COM port".into();
    }
    let names: Vec<String> = ports.iter().map(ComPort::describe).collect();
    format!("the COM ports are {}", names.join(", "))
}

/// A COM port as Windows lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComPort {
    /// `COM3`.
    pub name: String,
    /// The device's friendly name, when SetupAPI knows it.
    pub friendly_name: Option<String>,
    /// The device's first hardware id (`PCI\VEN_1AF4&DEV_1003…`).
    pub hardware_id: Option<String>,
}

impl ComPort {
    /// Is it a virtio device (Red Hat's PCI vendor 1AF4)?
    pub fn is_virtio(&self) -> bool {
        self.hardware_id.as_deref().is_some_and(|id| {
            let id = id.to_ascii_uppercase();
            id.contains("VEN_1AF4") || id.contains("VIRTIO")
        })
    }

    /// `\\.\COM3`: the `\\.\` form works for every port number (COM10 and up need it).
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!(r"\\.\{}", self.name))
    }

    /// For messages.
    pub fn describe(&self) -> String {
        let mut text = self.name.clone();
        if let Some(f) = &self.friendly_name {
            text.push_str(&format!(" ({f})"));
        }
        if self.is_virtio() {
            text.push_str(" [virtio]");
        }
        text
    }
}

/// Where a port path came from, for logs and `--diagnose`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortSource {
    /// `--device`, `INFINISERVICE_DEVICE` or the config.
    Hint(Hint),
    /// vioser's named port.
    Vioser,
    /// The only, or the virtio, COM port.
    ComScan,
}

impl PortSource {
    /// How to say it.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Hint(hint) => hint.describe(),
            Self::Vioser => "the VirtIO serial driver's named port",
            Self::ComScan => "COM port detection",
        }
    }
}

/// Find the port, in the documented order.
pub fn discover(hints: &PortHints) -> Result<(PathBuf, PortSource), PortError> {
    if let Some((path, hint)) = hints.explicit() {
        return Ok((path, PortSource::Hint(hint)));
    }
    if dos_device_exists(&format!(r"Global\{PORT_NAME}")) || dos_device_exists(PORT_NAME) {
        return Ok((PathBuf::from(VIOSER_PATH), PortSource::Vioser));
    }
    let ports = list_com_ports();
    choose_com_port(&ports).map(|p| (p.path(), PortSource::ComScan))
}

/// Which COM port is the host's: the virtio one (the first by name if there are several),
/// else the only one.
pub fn choose_com_port(ports: &[ComPort]) -> Result<&ComPort, PortError> {
    if let Some(virtio) = ports.iter().find(|p| p.is_virtio()) {
        return Ok(virtio);
    }
    match ports {
        [only] => Ok(only),
        [] => Err(PortError::NotFound {
            com_ports: Vec::new(),
        }),
        many => Err(PortError::Ambiguous(many.to_vec())),
    }
}

/// Does the DOS device `name` exist (a symbolic link in the object namespace)? Asked without
/// opening it: the port allows one opener.
pub fn dos_device_exists(name: &str) -> bool {
    let name = to_wide(name);
    let mut target = [0u16; 512];
    // SAFETY: `name` is NUL-terminated; `target` holds its length in u16s.
    unsafe { QueryDosDeviceW(name.as_ptr(), target.as_mut_ptr(), target.len() as u32) != 0 }
}

/// Every COM port: SetupAPI's COM port interfaces (with hardware ids), and the names in
/// `HARDWARE\DEVICEMAP\SERIALCOMM` (which also has ports without a PnP device). Sorted by
/// number.
pub fn list_com_ports() -> Vec<ComPort> {
    let mut ports = setupapi_com_ports();
    if let Ok(key) = Key::open(
        HKEY_LOCAL_MACHINE,
        r"HARDWARE\DEVICEMAP\SERIALCOMM",
        View::Bits64,
    ) {
        for value in key.value_names() {
            let Some(name) = key.string(&value) else {
                continue;
            };
            if !ports.iter().any(|p| p.name.eq_ignore_ascii_case(&name)) {
                ports.push(ComPort {
                    name,
                    friendly_name: None,
                    hardware_id: None,
                });
            }
        }
    }
    ports.sort_by_key(|p| {
        let number = p
            .name
            .get(3..)
            .and_then(|n| n.parse::<u32>().ok())
            .unwrap_or(u32::MAX);
        (number, p.name.clone())
    });
    ports
}

/// Closes a SetupAPI device list.
struct DeviceList(HDEVINFO);

impl Drop for DeviceList {
    fn drop(&mut self) {
        // SAFETY: the list was returned by SetupDiGetClassDevsW and is destroyed once.
        unsafe {
            SetupDiDestroyDeviceInfoList(self.0);
        }
    }
}

fn setupapi_com_ports() -> Vec<ComPort> {
    // SAFETY: a valid GUID pointer; no enumerator or window.
    let list = unsafe {
        SetupDiGetClassDevsW(
            &GUID_DEVINTERFACE_COMPORT,
            std::ptr::null(),
            std::ptr::null_mut(),
            DIGCF_PRESENT | DIGCF_DEVICEINTERFACE,
        )
    };
    if list == INVALID_HANDLE_VALUE as HDEVINFO {
        return Vec::new();
    }
    let list = DeviceList(list);
    let mut ports = Vec::new();
    for index in 0..256 {
        let mut device = SP_DEVINFO_DATA {
            cbSize: std::mem::size_of::<SP_DEVINFO_DATA>() as u32,
            ..Default::default()
        };
        // SAFETY: `device` is an SP_DEVINFO_DATA with its size set.
        if unsafe { SetupDiEnumDeviceInfo(list.0, index, &mut device) } == 0 {
            break;
        }
        let property = |which| {
            let mut buffer = [0u16; 512];
            let mut needed = 0;
            // SAFETY: `buffer` holds its byte size; the type out-pointer may be null.
            let ok = unsafe {
                SetupDiGetDeviceRegistryPropertyW(
                    list.0,
                    &device,
                    which,
                    std::ptr::null_mut(),
                    buffer.as_mut_ptr().cast(),
                    (buffer.len() * 2) as u32,
                    &mut needed,
                )
            };
            (ok != 0)
                .then(|| split_multi(&buffer).into_iter().next())
                .flatten()
        };
        // SAFETY: the list and device are valid; the returned key is owned below.
        let raw_key = unsafe {
            SetupDiOpenDevRegKey(list.0, &device, DICS_FLAG_GLOBAL, 0, DIREG_DEV, KEY_READ)
        };
        if raw_key.is_null() || raw_key == INVALID_HANDLE_VALUE {
            continue;
        }
        // SAFETY: SetupDiOpenDevRegKey returned an open key nobody else closes.
        let key = unsafe { Key::from_raw(raw_key) };
        if let Some(name) = key.string("PortName").filter(|n| !n.is_empty()) {
            ports.push(ComPort {
                name,
                friendly_name: property(SPDRP_FRIENDLYNAME),
                hardware_id: property(SPDRP_HARDWAREID),
            });
        }
    }
    ports
}

/// Open the port for overlapped I/O, exclusively (the port has one opener). A COM port gets
/// timeouts that make a read wait for the first byte and return what has arrived then.
pub fn open_port(path: &Path) -> Result<OwnedHandle, PortError> {
    let wide = to_wide(path);
    // SAFETY: `wide` is NUL-terminated; no security attributes or template.
    let handle = unsafe {
        CreateFileW(
            wide.as_ptr(),
            GENERIC_READ | GENERIC_WRITE,
            0,
            std::ptr::null(),
            OPEN_EXISTING,
            FILE_FLAG_OVERLAPPED,
            std::ptr::null_mut(),
        )
    };
    if handle == INVALID_HANDLE_VALUE {
        let source = std::io::Error::last_os_error();
        let hint = match source.raw_os_error().map(|e| e as u32) {
            Some(ERROR_ACCESS_DENIED) | Some(ERROR_SHARING_VIOLATION) => {
                " (the port is already open: another infiniservice, or qemu-ga, holds it — or the \
                 agent lacks the right to open it: the service runs as LocalSystem)"
            }
            Some(ERROR_FILE_NOT_FOUND) | Some(ERROR_PATH_NOT_FOUND) => " (no such device)",
            _ => "",
        };
        return Err(PortError::Open {
            path: path.to_owned(),
            source,
            hint,
        });
    }
    // SAFETY: CreateFileW returned a handle nobody else owns.
    let handle = unsafe { OwnedHandle::from_raw_handle(handle) };
    configure_if_com(&handle);
    Ok(handle)
}

/// Read timeouts for a COM port (ignored for other devices): a read waits for the first byte
/// and returns once the line has been quiet for [`READ_INTERVAL_MS`], like a pipe. Without
/// this a COM read returns only when its whole buffer is full. (The other documented way,
/// `MAXDWORD` interval and multiplier, is not honoured by wine's serial driver for overlapped
/// reads, which then wait for the buffer or end of stream; the interval form works on both.)
fn configure_if_com(handle: &OwnedHandle) {
    use std::os::windows::io::AsRawHandle;
    let raw = handle.as_raw_handle();
    let mut current = COMMTIMEOUTS::default();
    // SAFETY: valid handle and out-pointer; fails harmlessly for non-COM devices.
    if unsafe { GetCommTimeouts(raw, &mut current) } == 0 {
        return;
    }
    let timeouts = COMMTIMEOUTS {
        ReadIntervalTimeout: READ_INTERVAL_MS,
        ReadTotalTimeoutMultiplier: 0,
        ReadTotalTimeoutConstant: 0,
        WriteTotalTimeoutMultiplier: 0,
        WriteTotalTimeoutConstant: 0,
    };
    // SAFETY: valid handle and struct.
    if unsafe { SetCommTimeouts(raw, &timeouts) } == 0 {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            "cannot set the COM port's timeouts"
        );
    }
}

/// Quiet time after which a COM read returns what it has (the timeout starts at the first
/// byte, so an idle port costs nothing).
const READ_INTERVAL_MS: u32 = 5;

/// The text of `\\.\Global\…`-style device names, for `--diagnose`.
pub fn dos_device_target(name: &str) -> Option<String> {
    let wide = to_wide(name);
    let mut target = [0u16; 512];
    // SAFETY: as in `dos_device_exists`.
    let n = unsafe { QueryDosDeviceW(wide.as_ptr(), target.as_mut_ptr(), target.len() as u32) };
    (n != 0).then(|| from_wide(&target))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(name: &str, hardware_id: Option<&str>) -> ComPort {
        ComPort {
            name: name.into(),
            friendly_name: None,
            hardware_id: hardware_id.map(String::from),
        }
    }

    #[test]
    fn a_virtio_com_port_wins_over_the_others() {
        let ports = [
            port("COM1", Some("ACPI\\PNP0501")),
            port("COM3", Some("PCI\\VEN_1AF4&DEV_1003&SUBSYS_00031AF4")),
        ];
        assert_eq!(choose_com_port(&ports).expect("found").name, "COM3");
    }

    #[test]
    fn a_single_com_port_is_taken_and_several_unknown_ones_are_ambiguous() {
        assert_eq!(
            choose_com_port(&[port("COM5", None)])
                .expect("found")
                .path(),
            PathBuf::from(r"\\.\COM5")
        );
        let many = [port("COM1", None), port("COM2", None)];
        match choose_com_port(&many) {
            Err(e @ PortError::Ambiguous(_)) => {
                assert!(e.to_string().contains("COM1, COM2"), "{e}");
                assert!(e.to_string().contains("--device"), "{e}");
            }
            other => panic!("expected ambiguity, got {other:?}"),
        }
        assert!(matches!(
            choose_com_port(&[]),
            Err(PortError::NotFound { .. })
        ));
    }

    #[test]
    fn an_explicit_hint_wins_without_looking_at_devices() {
        let hints = PortHints {
            env: Some(r"\\.\COM9".into()),
            ..PortHints::default()
        };
        let (path, source) = discover(&hints).expect("explicit");
        assert_eq!(path, PathBuf::from(r"\\.\COM9"));
        assert_eq!(source, PortSource::Hint(Hint::Env));
    }
}
