//! The registry, read (installed programs, Windows version, COM ports) and written (the
//! service's Event Log source).

use std::io;

use windows_sys::Win32::Foundation::{ERROR_FILE_NOT_FOUND, ERROR_MORE_DATA, ERROR_SUCCESS};
use windows_sys::Win32::System::Registry::{
    HKEY, KEY_READ, KEY_WOW64_32KEY, KEY_WOW64_64KEY, KEY_WRITE, REG_DWORD, REG_EXPAND_SZ,
    REG_OPTION_NON_VOLATILE, REG_SZ, RegCloseKey, RegCreateKeyExW, RegDeleteTreeW, RegEnumKeyExW,
    RegEnumValueW, RegOpenKeyExW, RegQueryValueExW, RegSetValueExW,
};

pub use windows_sys::Win32::System::Registry::HKEY_LOCAL_MACHINE;

use super::wide::{from_wide, to_wide};

/// Which registry a 64-bit process sees: its own, or the 32-bit programs' (WOW64) one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// The native (64-bit) view.
    Bits64,
    /// The 32-bit view (`Wow6432Node`).
    Bits32,
}

impl View {
    fn flag(self) -> u32 {
        match self {
            Self::Bits64 => KEY_WOW64_64KEY,
            Self::Bits32 => KEY_WOW64_32KEY,
        }
    }
}

fn check(status: u32) -> io::Result<()> {
    if status == ERROR_SUCCESS {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(status as i32))
    }
}

/// An open key, closed on drop.
#[derive(Debug)]
pub struct Key(HKEY);

impl Key {
    /// Open `root\path` for reading in `view`.
    pub fn open(root: HKEY, path: &str, view: View) -> io::Result<Self> {
        let path = to_wide(path);
        let mut key: HKEY = std::ptr::null_mut();
        // SAFETY: `path` is NUL-terminated; `key` is a valid out-pointer.
        check(unsafe { RegOpenKeyExW(root, path.as_ptr(), 0, KEY_READ | view.flag(), &mut key) })?;
        Ok(Self(key))
    }

    /// Open or create `root\path` for writing (native view).
    pub fn create(root: HKEY, path: &str) -> io::Result<Self> {
        let path = to_wide(path);
        let mut key: HKEY = std::ptr::null_mut();
        // SAFETY: `path` is NUL-terminated; the out-pointers are valid; no class or security.
        check(unsafe {
            RegCreateKeyExW(
                root,
                path.as_ptr(),
                0,
                std::ptr::null(),
                REG_OPTION_NON_VOLATILE,
                KEY_WRITE | KEY_READ | KEY_WOW64_64KEY,
                std::ptr::null(),
                &mut key,
                std::ptr::null_mut(),
            )
        })?;
        Ok(Self(key))
    }

    /// Take ownership of a key opened elsewhere (SetupAPI).
    ///
    /// # Safety
    /// `key` is an open registry key that nothing else closes.
    pub unsafe fn from_raw(key: HKEY) -> Self {
        Self(key)
    }

    /// Delete `root\path` with everything below it; a missing key is not an error.
    pub fn delete_tree(root: HKEY, path: &str) -> io::Result<()> {
        let path = to_wide(path);
        // SAFETY: `path` is NUL-terminated.
        match check(unsafe { RegDeleteTreeW(root, path.as_ptr()) }) {
            Err(e) if e.raw_os_error() == Some(ERROR_FILE_NOT_FOUND as i32) => Ok(()),
            other => other,
        }
    }

    /// The names of the subkeys.
    pub fn subkeys(&self) -> Vec<String> {
        // A key name is at most 255 characters.
        Self::names(256, |index, buffer, len| {
            // SAFETY: `buffer` holds `*len` u16s; unused out-pointers are null.
            unsafe {
                RegEnumKeyExW(
                    self.0,
                    index,
                    buffer,
                    len,
                    std::ptr::null(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                )
            }
        })
    }

    /// The names of the values.
    pub fn value_names(&self) -> Vec<String> {
        // A value name is at most 16383 characters.
        Self::names(16 * 1024, |index, buffer, len| {
            // SAFETY: `buffer` holds `*len` u16s; the data out-pointers are null.
            unsafe {
                RegEnumValueW(
                    self.0,
                    index,
                    buffer,
                    len,
                    std::ptr::null(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                )
            }
        })
    }

    /// Enumerate names with `enumerate(index, buffer, length)` until it reports the end; a
    /// name longer than the limit (which cannot be) is skipped.
    fn names(capacity: usize, enumerate: impl Fn(u32, *mut u16, &mut u32) -> u32) -> Vec<String> {
        let mut names = Vec::new();
        let mut buffer = vec![0u16; capacity];
        for index in 0.. {
            let mut len = buffer.len() as u32;
            match enumerate(index, buffer.as_mut_ptr(), &mut len) {
                ERROR_SUCCESS => names.push(from_wide(&buffer[..len as usize])),
                ERROR_MORE_DATA => continue,
                _ => break,
            }
        }
        names
    }

    fn raw(&self, name: &str) -> Option<(u32, Vec<u8>)> {
        let name = to_wide(name);
        let mut kind = 0u32;
        let mut len = 0u32;
        // SAFETY: size query: null data pointer, valid out-pointers.
        let status = unsafe {
            RegQueryValueExW(
                self.0,
                name.as_ptr(),
                std::ptr::null(),
                &mut kind,
                std::ptr::null_mut(),
                &mut len,
            )
        };
        if status != ERROR_SUCCESS {
            return None;
        }
        // Registry values can grow between the two calls: retry a few times.
        for _ in 0..4 {
            let mut data = vec![0u8; len as usize];
            // SAFETY: `data` holds `len` bytes.
            let status = unsafe {
                RegQueryValueExW(
                    self.0,
                    name.as_ptr(),
                    std::ptr::null(),
                    &mut kind,
                    data.as_mut_ptr(),
                    &mut len,
                )
            };
            match status {
                ERROR_SUCCESS => {
                    data.truncate(len as usize);
                    return Some((kind, data));
                }
                ERROR_MORE_DATA => continue,
                _ => return None,
            }
        }
        None
    }

    /// A `REG_SZ` / `REG_EXPAND_SZ` value (not expanded), or a DWORD as decimal text.
    pub fn string(&self, name: &str) -> Option<String> {
        let (kind, data) = self.raw(name)?;
        match kind {
            REG_SZ | REG_EXPAND_SZ => {
                let units: Vec<u16> = data
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                    .collect();
                Some(from_wide(&units))
            }
            REG_DWORD => dword_of(&data).map(|d| d.to_string()),
            _ => None,
        }
    }

    /// A `REG_DWORD` value.
    pub fn dword(&self, name: &str) -> Option<u32> {
        let (kind, data) = self.raw(name)?;
        (kind == REG_DWORD).then(|| dword_of(&data)).flatten()
    }

    /// Set a `REG_SZ` (or, with `expand`, `REG_EXPAND_SZ`) value.
    pub fn set_string(&self, name: &str, value: &str, expand: bool) -> io::Result<()> {
        let name = to_wide(name);
        let value = to_wide(value);
        let kind = if expand { REG_EXPAND_SZ } else { REG_SZ };
        // SAFETY: both strings are NUL-terminated; the size counts the NUL.
        check(unsafe {
            RegSetValueExW(
                self.0,
                name.as_ptr(),
                0,
                kind,
                value.as_ptr().cast(),
                (value.len() * 2) as u32,
            )
        })
    }

    /// Set a `REG_DWORD` value.
    pub fn set_dword(&self, name: &str, value: u32) -> io::Result<()> {
        let name = to_wide(name);
        let bytes = value.to_le_bytes();
        // SAFETY: `name` is NUL-terminated; 4 bytes of data.
        check(unsafe { RegSetValueExW(self.0, name.as_ptr(), 0, REG_DWORD, bytes.as_ptr(), 4) })
    }
}

fn dword_of(data: &[u8]) -> Option<u32> {
    let bytes: [u8; 4] = data.get(..4)?.try_into().ok()?;
    Some(u32::from_le_bytes(bytes))
}

impl Drop for Key {
    fn drop(&mut self) {
        // SAFETY: the key was opened by this wrapper and is closed once.
        unsafe {
            RegCloseKey(self.0);
        }
    }
}
