//! The process table from one `NtQuerySystemInformation(SystemProcessInformation)` call (what
//! Task Manager reads): pid, parent, image name, start time, CPU times, working set and
//! threads of every process at once. CPU % comes from deltas between snapshots; only the top
//! N processes get their command line and owner looked up (each needs the process opened).

use std::collections::HashMap;
use std::os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle};
use std::time::Instant;

use infinibay_protocol::message::ProcessInfo;
use windows_sys::Wdk::System::SystemInformation::{
    NtQuerySystemInformation, SystemProcessInformation,
};
use windows_sys::Wdk::System::Threading::{
    NtQueryInformationProcess, ProcessCommandLineInformation,
};
use windows_sys::Win32::Foundation::{RtlNtStatusToDosError, UNICODE_STRING};
use windows_sys::Win32::Security::{
    GetLengthSid, GetTokenInformation, LookupAccountSidW, TOKEN_QUERY, TOKEN_USER, TokenUser,
};
use windows_sys::Win32::System::Threading::{
    OpenProcess, OpenProcessToken, PROCESS_QUERY_LIMITED_INFORMATION,
};
use windows_sys::Win32::System::WindowsProgramming::{
    SYSTEM_PROCESS_INFORMATION, SYSTEM_THREAD_INFORMATION,
};

use crate::platform::rates::round2;

/// `STATUS_INFO_LENGTH_MISMATCH`: the buffer was too small.
const STATUS_INFO_LENGTH_MISMATCH: i32 = 0xC000_0004_u32 as i32;

/// FILETIME of the Unix epoch (100 ns since 1601).
const UNIX_EPOCH_FILETIME: i64 = 116_444_736_000_000_000;

/// Most bytes of a command line kept (as on Linux).
const MAX_CMDLINE_BYTES: usize = 1024;

/// A thread waiting (`KWAIT_STATE` Waiting) …
const THREAD_STATE_WAITING: u32 = 5;
/// … because it is suspended (`KWAIT_REASON` Suspended).
const WAIT_REASON_SUSPENDED: u32 = 5;

/// One process as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Process id.
    pub pid: u32,
    /// The process that created it (it may have exited since).
    pub ppid: u32,
    /// Image name (`svchost.exe`).
    pub name: String,
    /// Creation time, 100 ns since 1601.
    pub create_time: i64,
    /// Kernel + user time, 100 ns.
    pub cpu_time: u64,
    /// Working set, bytes.
    pub working_set: u64,
    /// Every thread suspended.
    pub suspended: bool,
}

/// Read every process (the idle process, pid 0, is not one). `buffer` is reused between
/// calls and grows when the list does.
pub fn list(buffer: &mut Vec<u64>) -> std::io::Result<Vec<Entry>> {
    if buffer.is_empty() {
        buffer.resize(64 * 1024 / 8, 0);
    }
    let mut returned = 0u32;
    loop {
        // SAFETY: `buffer` is writable for the size passed and 8-byte aligned.
        let status = unsafe {
            NtQuerySystemInformation(
                SystemProcessInformation,
                buffer.as_mut_ptr().cast(),
                (buffer.len() * 8) as u32,
                &mut returned,
            )
        };
        if status == STATUS_INFO_LENGTH_MISMATCH {
            // Room for the processes started meanwhile too.
            let wanted = (returned as usize).max(buffer.len() * 8) * 5 / 4 / 8 + 1;
            buffer.resize(wanted, 0);
            continue;
        }
        if status < 0 {
            // SAFETY: a pure conversion of a status code.
            let code = unsafe { RtlNtStatusToDosError(status) };
            return Err(std::io::Error::from_raw_os_error(code as i32));
        }
        break;
    }
    let bytes = buffer.as_ptr().cast::<u8>();
    let len = (returned as usize).min(buffer.len() * 8);
    let mut entries = Vec::new();
    let mut offset = 0usize;
    while offset + std::mem::size_of::<SYSTEM_PROCESS_INFORMATION>() <= len {
        // SAFETY: the record lies within the bytes the kernel wrote.
        let p: SYSTEM_PROCESS_INFORMATION =
            unsafe { std::ptr::read_unaligned(bytes.add(offset).cast()) };
        let pid = p.UniqueProcessId as usize as u32;
        if pid != 0 {
            // Reserved1 holds (phnt's SYSTEM_PROCESS_INFORMATION): WorkingSetPrivateSize,
            // HardFaultCount, NumberOfThreadsHighWatermark, CycleTime, CreateTime, UserTime,
            // KernelTime; Reserved2 is InheritedFromUniqueProcessId.
            let field = |at: usize| {
                i64::from_le_bytes(p.Reserved1[at..at + 8].try_into().unwrap_or([0; 8]))
            };
            let threads_at = offset + std::mem::size_of::<SYSTEM_PROCESS_INFORMATION>();
            let suspended = p.NumberOfThreads > 0
                && (0..p.NumberOfThreads as usize).all(|i| {
                    let at = threads_at + i * std::mem::size_of::<SYSTEM_THREAD_INFORMATION>();
                    if at + std::mem::size_of::<SYSTEM_THREAD_INFORMATION>() > len {
                        return false;
                    }
                    // SAFETY: checked to lie within the written bytes.
                    let t: SYSTEM_THREAD_INFORMATION =
                        unsafe { std::ptr::read_unaligned(bytes.add(at).cast()) };
                    t.ThreadState == THREAD_STATE_WAITING && t.WaitReason == WAIT_REASON_SUSPENDED
                });
            entries.push(Entry {
                pid,
                ppid: p.Reserved2 as usize as u32,
                // SAFETY: ImageName points into the same buffer (or is empty).
                name: unsafe { unicode_string(&p.ImageName) },
                create_time: field(24),
                cpu_time: (field(32).max(0) + field(40).max(0)) as u64,
                working_set: p.WorkingSetSize as u64,
                suspended,
            });
        }
        if p.NextEntryOffset == 0 {
            break;
        }
        offset += p.NextEntryOffset as usize;
    }
    Ok(entries)
}

/// The text of a `UNICODE_STRING` (its length is in bytes).
///
/// # Safety
/// `s.Buffer` is null or valid for `s.Length` bytes.
unsafe fn unicode_string(s: &UNICODE_STRING) -> String {
    if s.Buffer.is_null() || s.Length == 0 {
        return String::new();
    }
    // SAFETY: as the caller promises.
    let units = unsafe { std::slice::from_raw_parts(s.Buffer, usize::from(s.Length) / 2) };
    String::from_utf16_lossy(units)
}

/// The previous snapshot's CPU times, and the owner names seen so far.
#[derive(Debug, Default)]
pub struct Table {
    buffer: Vec<u64>,
    /// (create time, CPU time) per pid at the previous snapshot.
    previous: HashMap<u32, (i64, u64)>,
    previous_at: Option<Instant>,
    /// Account names by SID bytes.
    owners: HashMap<Vec<u8>, String>,
    cpus: usize,
}

impl Table {
    /// The top `top_n` processes (CPU, then working set, then pid) and the number of all.
    pub fn snapshot(&mut self, top_n: usize) -> std::io::Result<(Vec<ProcessInfo>, u64)> {
        let entries = list(&mut self.buffer)?;
        let now = Instant::now();
        let now_filetime = filetime_now();
        if self.cpus == 0 {
            self.cpus = std::thread::available_parallelism().map_or(1, usize::from);
        }
        let wall = self
            .previous_at
            .map(|t| now.duration_since(t).as_nanos() as f64 / 100.0);
        let cap = 100.0 * self.cpus as f64;
        let mut ranked: Vec<(f64, &Entry)> = entries
            .iter()
            .map(|e| {
                let percent = match (self.previous.get(&e.pid), wall) {
                    // The same process (pids are reused: the start time tells).
                    (Some(&(created, cpu)), Some(wall))
                        if created == e.create_time && wall > 0.0 =>
                    {
                        e.cpu_time.saturating_sub(cpu) as f64 / wall * 100.0
                    }
                    // New: its average since it started.
                    _ => {
                        let lived = (now_filetime - e.create_time).max(1) as f64;
                        e.cpu_time as f64 / lived * 100.0
                    }
                };
                (round2(percent.clamp(0.0, cap)), e)
            })
            .collect();
        ranked.sort_by(|(ca, a), (cb, b)| {
            cb.total_cmp(ca)
                .then(b.working_set.cmp(&a.working_set))
                .then(a.pid.cmp(&b.pid))
        });
        let processes = ranked
            .iter()
            .take(top_n)
            .map(|&(cpu_percent, e)| {
                let details = Details::of(e.pid, &mut self.owners);
                ProcessInfo {
                    pid: e.pid,
                    ppid: Some(e.ppid),
                    name: e.name.clone(),
                    cmdline: details.cmdline,
                    user: details.user,
                    state: Some(if e.suspended { "suspended" } else { "running" }.into()),
                    cpu_percent,
                    memory_kb: e.working_set / 1024,
                    start_time: (e.create_time > UNIX_EPOCH_FILETIME)
                        .then(|| (e.create_time - UNIX_EPOCH_FILETIME) / 10_000_000),
                }
            })
            .collect();
        self.previous = entries
            .iter()
            .map(|e| (e.pid, (e.create_time, e.cpu_time)))
            .collect();
        self.previous_at = Some(now);
        Ok((processes, entries.len() as u64))
    }
}

/// Now as a FILETIME (100 ns since 1601).
fn filetime_now() -> i64 {
    let since_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    UNIX_EPOCH_FILETIME + (since_unix.as_nanos() / 100) as i64
}

/// What needs the process opened: its command line and its owner.
struct Details {
    cmdline: Option<String>,
    user: Option<String>,
}

impl Details {
    fn of(pid: u32, owners: &mut HashMap<Vec<u8>, String>) -> Self {
        // SAFETY: no handle inheritance; the handle is owned below.
        let raw = unsafe { OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid) };
        if raw.is_null() {
            // Protected processes (and the System process) cannot be opened.
            return Self {
                cmdline: None,
                user: None,
            };
        }
        // SAFETY: a handle nobody else owns.
        let process = unsafe { OwnedHandle::from_raw_handle(raw) };
        Self {
            cmdline: command_line(&process),
            user: owner(&process, owners),
        }
    }
}

fn command_line(process: &OwnedHandle) -> Option<String> {
    // The answer is a UNICODE_STRING followed by its text.
    let mut buffer = vec![0u64; 4096 / 8];
    let mut needed = 0u32;
    for _ in 0..2 {
        // SAFETY: `buffer` is writable for the size passed.
        let status = unsafe {
            NtQueryInformationProcess(
                process.as_raw_handle(),
                ProcessCommandLineInformation,
                buffer.as_mut_ptr().cast(),
                (buffer.len() * 8) as u32,
                &mut needed,
            )
        };
        if status >= 0 {
            // SAFETY: the kernel wrote a UNICODE_STRING at the start, its text after it.
            let text = unsafe { unicode_string(&*buffer.as_ptr().cast::<UNICODE_STRING>()) };
            return (!text.is_empty()).then(|| cap_bytes(text, MAX_CMDLINE_BYTES));
        }
        if status != STATUS_INFO_LENGTH_MISMATCH || needed as usize <= buffer.len() * 8 {
            return None;
        }
        buffer.resize(needed as usize / 8 + 1, 0);
    }
    None
}

/// At most `max` bytes of `text`, cut at a character boundary.
fn cap_bytes(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

fn owner(process: &OwnedHandle, owners: &mut HashMap<Vec<u8>, String>) -> Option<String> {
    let mut token_raw = std::ptr::null_mut();
    // SAFETY: a valid process handle and out-pointer.
    if unsafe { OpenProcessToken(process.as_raw_handle(), TOKEN_QUERY, &mut token_raw) } == 0 {
        return None;
    }
    // SAFETY: a token handle nobody else owns.
    let token = unsafe { OwnedHandle::from_raw_handle(token_raw) };
    let mut buffer = [0u64; 64];
    let mut needed = 0u32;
    // SAFETY: `buffer` is writable for its size.
    let ok = unsafe {
        GetTokenInformation(
            token.as_raw_handle(),
            TokenUser,
            buffer.as_mut_ptr().cast(),
            std::mem::size_of_val(&buffer) as u32,
            &mut needed,
        )
    };
    if ok == 0 {
        return None;
    }
    // SAFETY: the token wrote a TOKEN_USER whose SID points into `buffer`.
    let sid = unsafe { (*buffer.as_ptr().cast::<TOKEN_USER>()).User.Sid };
    // SAFETY: a valid SID from the token.
    let sid_len = unsafe { GetLengthSid(sid) } as usize;
    // SAFETY: the SID is `sid_len` bytes long.
    let key = unsafe { std::slice::from_raw_parts(sid.cast::<u8>(), sid_len) }.to_vec();
    if let Some(name) = owners.get(&key) {
        return Some(name.clone());
    }
    let mut name = [0u16; 256];
    let mut domain = [0u16; 256];
    let (mut name_len, mut domain_len) = (name.len() as u32, domain.len() as u32);
    let mut kind = 0;
    // SAFETY: valid SID and buffers of the lengths passed. (A domain account's lookup may
    // ask a domain controller: the result is cached per SID.)
    let ok = unsafe {
        LookupAccountSidW(
            std::ptr::null(),
            sid,
            name.as_mut_ptr(),
            &mut name_len,
            domain.as_mut_ptr(),
            &mut domain_len,
            &mut kind,
        )
    };
    if ok == 0 {
        return None;
    }
    let user = String::from_utf16_lossy(&name[..name_len as usize]);
    owners.insert(key, user.clone());
    Some(user)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_snapshot_holds_this_process_with_its_command_line() {
        let mut table = Table::default();
        let (_, total) = table.snapshot(0).expect("process list");
        assert!(total > 1);
        let (top, _) = table.snapshot(4096).expect("process list");
        let me = top
            .iter()
            .find(|p| p.pid == std::process::id())
            .expect("this test process is listed");
        assert!(me.name.to_ascii_lowercase().ends_with(".exe"), "{me:?}");
        assert!(me.memory_kb > 0);
        assert!(me.start_time.is_some());
        // Wine 8 answers ProcessCommandLineInformation with STATUS_INVALID_INFO_CLASS
        // (docs/windows.md); Windows 8.1 and later have it.
        if !crate::platform::windows::under_wine() {
            assert!(
                me.cmdline
                    .as_deref()
                    .is_some_and(|c| c.contains("infiniservice")),
                "{me:?}"
            );
        }
        assert_eq!(me.state.as_deref(), Some("running"));
    }

    #[test]
    fn command_lines_are_cut_at_a_character_boundary() {
        // "€" is 3 bytes: 1024 falls inside the 342nd.
        assert_eq!(cap_bytes("€".repeat(400), 1024).len(), 1023);
        assert_eq!(cap_bytes("short".into(), 1024), "short");
    }
}
