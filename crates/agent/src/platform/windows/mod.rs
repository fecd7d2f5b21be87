//! Windows implementation of the platform boundary: Win32 and NT calls through `windows-sys`,
//! the service through `windows-service`. What is verified only under wine, and what only a
//! real Windows can verify, is in `docs/windows.md`.

pub mod actions;
pub mod channel;
pub mod collect;
pub mod diagnose;
pub mod exec;
pub mod info;
pub mod logging;
pub mod port;
mod registry;
pub mod scm;
pub mod service;
mod wide;

/// Is this process running under wine (ntdll exports `wine_get_version`)? Tests use it where
/// wine is known to lack what Windows has (docs/windows.md lists each case).
#[cfg(test)]
pub(crate) fn under_wine() -> bool {
    use windows_sys::Win32::System::LibraryLoader::{GetModuleHandleW, GetProcAddress};
    let ntdll = wide::to_wide("ntdll.dll");
    // SAFETY: ntdll is loaded in every process; the name is NUL-terminated.
    unsafe {
        let module = GetModuleHandleW(ntdll.as_ptr());
        !module.is_null() && GetProcAddress(module, c"wine_get_version".as_ptr().cast()).is_some()
    }
}
