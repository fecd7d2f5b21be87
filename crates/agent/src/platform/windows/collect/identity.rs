//! What the machine says of itself: the Windows version from the registry
//! (`HKLM\SOFTWARE\Microsoft\Windows NT\CurrentVersion`), the NT version from `RtlGetVersion`
//! (which, unlike `GetVersionEx`, is not shimmed to an older version), the DNS host name and
//! the native architecture.

use infinibay_protocol::message::VmIdentification;
use windows_sys::Wdk::System::SystemServices::RtlGetVersion;
use windows_sys::Win32::System::SystemInformation::{
    ComputerNameDnsHostname, GetComputerNameExW, GetNativeSystemInfo, OSVERSIONINFOW,
    PROCESSOR_ARCHITECTURE_AMD64, PROCESSOR_ARCHITECTURE_ARM64, PROCESSOR_ARCHITECTURE_INTEL,
    SYSTEM_INFO,
};

use crate::platform::windows::registry::{HKEY_LOCAL_MACHINE, Key, View};
use crate::platform::windows::wide::from_wide;

/// The registry's description of the installed Windows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WindowsVersion {
    /// `Windows 11 Pro`, `Windows Server 2022 Datacenter`.
    pub product_name: String,
    /// `Professional`, `ServerDatacenter`.
    pub edition_id: Option<String>,
    /// `22H2` (`ReleaseId` on releases before 20H2).
    pub display_version: Option<String>,
    /// `19045.3803`: build and update revision.
    pub build: Option<String>,
    /// `Client` or `Server`.
    pub installation_type: Option<String>,
}

impl WindowsVersion {
    /// Read from the registry.
    pub fn read() -> Self {
        let Ok(key) = Key::open(
            HKEY_LOCAL_MACHINE,
            r"SOFTWARE\Microsoft\Windows NT\CurrentVersion",
            View::Bits64,
        ) else {
            return Self::default();
        };
        let build = key
            .string("CurrentBuild")
            .or_else(|| key.string("CurrentBuildNumber"));
        Self::from_values(
            key.string("ProductName").unwrap_or_default(),
            key.string("EditionID"),
            key.string("DisplayVersion")
                .or_else(|| key.string("ReleaseId")),
            build,
            key.dword("UBR"),
            key.string("InstallationType"),
        )
    }

    /// From the registry's values. Windows 11 still writes "Windows 10" in `ProductName`;
    /// its build (22000 and later) tells them apart.
    pub fn from_values(
        product_name: String,
        edition_id: Option<String>,
        display_version: Option<String>,
        build: Option<String>,
        update_revision: Option<u32>,
        installation_type: Option<String>,
    ) -> Self {
        let build_number = build.as_deref().and_then(|b| b.trim().parse::<u32>().ok());
        let product_name = match (build_number, product_name.strip_prefix("Windows 10")) {
            (Some(n), Some(rest))
                if n >= 22_000 && installation_type.as_deref() != Some("Server") =>
            {
                format!("Windows 11{rest}")
            }
            _ => product_name,
        };
        Self {
            product_name,
            edition_id,
            display_version: display_version.filter(|v| !v.is_empty()),
            build: build.map(|b| match update_revision {
                Some(ubr) => format!("{}.{ubr}", b.trim()),
                None => b.trim().to_owned(),
            }),
            installation_type,
        }
    }

    /// `Windows 11 Pro 23H2 (build 22631.2861)`.
    pub fn pretty(&self) -> String {
        let mut text = self.product_name.clone();
        if let Some(v) = &self.display_version {
            text.push(' ');
            text.push_str(v);
        }
        if let Some(b) = &self.build {
            text.push_str(&format!(" (build {b})"));
        }
        text.trim().to_owned()
    }
}

/// `10.0.19045`, the NT kernel's version.
pub fn kernel_version() -> String {
    let mut info = OSVERSIONINFOW {
        dwOSVersionInfoSize: std::mem::size_of::<OSVERSIONINFOW>() as u32,
        ..Default::default()
    };
    // SAFETY: an OSVERSIONINFOW with its size set.
    if unsafe { RtlGetVersion(&mut info) } < 0 {
        return String::new();
    }
    format!(
        "{}.{}.{}",
        info.dwMajorVersion, info.dwMinorVersion, info.dwBuildNumber
    )
}

/// The DNS host name (the computer name in lower layers is the NetBIOS one, cut to 15).
pub fn hostname() -> String {
    let mut buffer = [0u16; 256];
    let mut len = buffer.len() as u32;
    // SAFETY: `buffer` holds `len` u16s.
    if unsafe { GetComputerNameExW(ComputerNameDnsHostname, buffer.as_mut_ptr(), &mut len) } == 0 {
        return String::new();
    }
    from_wide(&buffer[..len as usize])
}

/// The machine's architecture in the Linux agent's words (`x86_64`, `aarch64`).
pub fn architecture() -> String {
    let mut info = SYSTEM_INFO::default();
    // SAFETY: a valid out-pointer.
    unsafe { GetNativeSystemInfo(&mut info) };
    // SAFETY: the struct arm of the union is what GetNativeSystemInfo fills.
    match unsafe { info.Anonymous.Anonymous.wProcessorArchitecture } {
        PROCESSOR_ARCHITECTURE_AMD64 => "x86_64",
        PROCESSOR_ARCHITECTURE_ARM64 => "aarch64",
        PROCESSOR_ARCHITECTURE_INTEL => "x86",
        _ => "unknown",
    }
    .into()
}

/// `vm_identification`'s machine fields.
pub fn identification() -> VmIdentification {
    VmIdentification {
        os: "windows".into(),
        os_version: WindowsVersion::read().pretty(),
        kernel: kernel_version(),
        hostname: hostname(),
        architecture: architecture(),
        ..VmIdentification::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_11_is_told_from_its_build_and_the_pretty_name_has_the_build() {
        let v = WindowsVersion::from_values(
            "Windows 10 Pro".into(),
            Some("Professional".into()),
            Some("23H2".into()),
            Some("22631".into()),
            Some(2861),
            Some("Client".into()),
        );
        assert_eq!(v.pretty(), "Windows 11 Pro 23H2 (build 22631.2861)");
        let server = WindowsVersion::from_values(
            "Windows Server 2022 Datacenter".into(),
            None,
            Some("21H2".into()),
            Some("20348".into()),
            None,
            Some("Server".into()),
        );
        assert_eq!(
            server.pretty(),
            "Windows Server 2022 Datacenter 21H2 (build 20348)"
        );
    }

    #[test]
    fn this_machine_identifies_as_windows() {
        let id = identification();
        assert_eq!(id.os, "windows");
        assert!(
            id.kernel.starts_with("10.") || id.kernel.starts_with("6."),
            "{}",
            id.kernel
        );
        assert!(!id.hostname.is_empty());
        assert_eq!(id.architecture, "x86_64");
        assert!(id.os_version.contains("Windows"), "{}", id.os_version);
    }
}
