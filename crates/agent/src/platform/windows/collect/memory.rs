//! Memory (`GlobalMemoryStatusEx`), the page files (`NtQuerySystemInformation`'s page-file
//! list: the sizes Task Manager shows) and uptime (`GetTickCount64`).

use infinibay_protocol::message::MemoryMetrics;
use windows_sys::Wdk::System::SystemInformation::{
    NtQuerySystemInformation, SYSTEM_INFORMATION_CLASS,
};
use windows_sys::Win32::Foundation::UNICODE_STRING;
use windows_sys::Win32::System::SystemInformation::{
    GetSystemInfo, GetTickCount64, GlobalMemoryStatusEx, MEMORYSTATUSEX, SYSTEM_INFO,
};

/// `SystemPageFileInformation` (not named in the Win32 headers).
const SYSTEM_PAGE_FILE_INFORMATION: SYSTEM_INFORMATION_CLASS = 18;

/// One page file, as the kernel lists it (sizes in pages).
#[repr(C)]
struct PageFileEntry {
    next_entry_offset: u32,
    total_size: u32,
    total_in_use: u32,
    peak_usage: u32,
    name: UNICODE_STRING,
}

/// Seconds since boot.
pub fn uptime_seconds() -> u64 {
    // SAFETY: no arguments.
    let millis = unsafe { GetTickCount64() };
    millis / 1000
}

/// Physical memory in kB, and the page files as swap.
pub fn memory() -> std::io::Result<MemoryMetrics> {
    let mut status = MEMORYSTATUSEX {
        dwLength: std::mem::size_of::<MEMORYSTATUSEX>() as u32,
        ..Default::default()
    };
    // SAFETY: a MEMORYSTATUSEX with its length set.
    if unsafe { GlobalMemoryStatusEx(&mut status) } == 0 {
        return Err(std::io::Error::last_os_error());
    }
    let total_kb = status.ullTotalPhys / 1024;
    let available_kb = status.ullAvailPhys / 1024;
    let (swap_total_kb, swap_used_kb) = match page_files_kb() {
        Some((total, used)) => (Some(total), Some(used)),
        None => (None, None),
    };
    Ok(MemoryMetrics {
        total_kb,
        used_kb: total_kb.saturating_sub(available_kb),
        available_kb,
        swap_total_kb,
        swap_used_kb,
    })
}

/// Total and used kB over every page file; `(0, 0)` without a page file, `None` when the
/// list cannot be read.
fn page_files_kb() -> Option<(u64, u64)> {
    // A few page files at most; their names are short.
    let mut buffer = vec![0u64; 512];
    let mut returned = 0u32;
    // SAFETY: `buffer` is writable for the size passed (and 8-byte aligned).
    let status = unsafe {
        NtQuerySystemInformation(
            SYSTEM_PAGE_FILE_INFORMATION,
            buffer.as_mut_ptr().cast(),
            (buffer.len() * 8) as u32,
            &mut returned,
        )
    };
    if status < 0 {
        return None;
    }
    let mut info = SYSTEM_INFO::default();
    // SAFETY: a valid out-pointer.
    unsafe { GetSystemInfo(&mut info) };
    let page_kb = u64::from(info.dwPageSize.max(1)) / 1024;
    let bytes = returned as usize;
    let (mut total, mut used) = (0u64, 0u64);
    let mut offset = 0usize;
    while offset + std::mem::size_of::<PageFileEntry>() <= bytes {
        // SAFETY: the entry lies within the `returned` bytes the kernel wrote.
        let entry: PageFileEntry =
            unsafe { std::ptr::read_unaligned(buffer.as_ptr().cast::<u8>().add(offset).cast()) };
        total += u64::from(entry.total_size) * page_kb;
        used += u64::from(entry.total_in_use) * page_kb;
        if entry.next_entry_offset == 0 {
            break;
        }
        offset += entry.next_entry_offset as usize;
    }
    Some((total, used))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_consistent_and_uptime_counts() {
        let m = memory().expect("GlobalMemoryStatusEx");
        assert!(m.total_kb > 0);
        assert!(m.used_kb + m.available_kb == m.total_kb);
        if let (Some(total), Some(used)) = (m.swap_total_kb, m.swap_used_kb) {
            assert!(used <= total);
        }
        assert!(uptime_seconds() < 100 * 365 * 86_400);
    }
}
