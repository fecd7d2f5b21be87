//! UTF-16 strings for Win32's `W` functions.

/// `text` as a NUL-terminated UTF-16 string.
pub fn to_wide(text: impl AsRef<std::ffi::OsStr>) -> Vec<u16> {
    use std::os::windows::ffi::OsStrExt;
    text.as_ref().encode_wide().chain(Some(0)).collect()
}

/// The text of a UTF-16 buffer up to its first NUL (or its end); unpaired surrogates become
/// U+FFFD.
pub fn from_wide(buffer: &[u16]) -> String {
    let end = buffer.iter().position(|&c| c == 0).unwrap_or(buffer.len());
    String::from_utf16_lossy(&buffer[..end])
}

/// The text of a NUL-terminated UTF-16 string.
///
/// # Safety
/// `ptr` is null or points to a NUL-terminated UTF-16 string that stays valid during the call.
pub unsafe fn from_wide_ptr(ptr: *const u16) -> String {
    if ptr.is_null() {
        return String::new();
    }
    let mut len = 0;
    // SAFETY: the caller promises a NUL-terminated string; we stop at its NUL.
    while unsafe { *ptr.add(len) } != 0 {
        len += 1;
    }
    // SAFETY: `len` elements were just read.
    String::from_utf16_lossy(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// `%VAR%` references in `text` replaced by the environment's values
/// (`ExpandEnvironmentStringsW`); `text` unchanged if that fails.
pub fn expand_environment(text: &str) -> String {
    use windows_sys::Win32::System::Environment::ExpandEnvironmentStringsW;
    let source = to_wide(text);
    let mut buffer = vec![0u16; 512];
    for _ in 0..2 {
        // SAFETY: `source` is NUL-terminated; `buffer` holds its length in u16s.
        let needed = unsafe {
            ExpandEnvironmentStringsW(source.as_ptr(), buffer.as_mut_ptr(), buffer.len() as u32)
        } as usize;
        if needed == 0 {
            break;
        }
        if needed <= buffer.len() {
            return from_wide(&buffer);
        }
        buffer.resize(needed, 0);
    }
    text.to_owned()
}

/// The strings of a double-NUL-terminated list (`a\0b\0\0`), as GetVolumePathNames and
/// GetLogicalDriveStrings return.
pub fn split_multi(buffer: &[u16]) -> Vec<String> {
    buffer
        .split(|&c| c == 0)
        .take_while(|s| !s.is_empty())
        .map(String::from_utf16_lossy)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wide_strings_round_trip_and_stop_at_nul() {
        let w = to_wide("Infinibay ñ");
        assert_eq!(w.last(), Some(&0));
        assert_eq!(from_wide(&w), "Infinibay ñ");
        // SAFETY: `w` is NUL-terminated.
        assert_eq!(unsafe { from_wide_ptr(w.as_ptr()) }, "Infinibay ñ");
        assert_eq!(
            split_multi(&to_wide("C:\\\0D:\\mnt\\\0")),
            ["C:\\", "D:\\mnt\\"]
        );
    }
}
