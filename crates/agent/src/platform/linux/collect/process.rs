//! The process table from `/proc/<pid>/stat`, with CPU percentages from deltas between
//! snapshots. Only the top N processes get their command line and owner read.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use infinibay_protocol::message::ProcessInfo;

use super::read::{parse_u64, read_into};

/// The part of `/proc/<pid>/stat` the snapshot uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PidStat<'a> {
    pub pid: u32,
    pub comm: &'a [u8],
    pub state: u8,
    pub ppid: u32,
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
    /// Start time after boot, in clock ticks.
    pub start_ticks: u64,
    pub rss_pages: u64,
}

/// Parses `/proc/<pid>/stat`. `comm` may contain spaces and parentheses, so it runs from
/// the first `(` to the last `)`.
pub(crate) fn parse_pid_stat(buf: &[u8]) -> Option<PidStat<'_>> {
    let open = buf.iter().position(|&b| b == b'(')?;
    let close = buf.iter().rposition(|&b| b == b')')?;
    if close < open {
        return None;
    }
    let pid = parse_u64(buf[..open].trim_ascii())?;
    let mut fields = buf
        .get(close + 1..)?
        .split(|&b| b == b' ')
        .filter(|f| !f.is_empty());
    // Fields counted from `state` (field 3 of proc(5)) as index 0.
    let state = *fields.next()?.first()?;
    let ppid = parse_u64(fields.next()?)?;
    let mut fields = fields.skip(8); // pgrp session tty_nr tpgid flags minflt cminflt majflt
    let _cmajflt = fields.next()?;
    let utime = parse_u64(fields.next()?)?;
    let stime = parse_u64(fields.next()?)?;
    // cutime cstime priority nice num_threads itrealvalue
    let mut fields = fields.skip(6);
    let start_ticks = parse_u64(fields.next()?)?;
    let _vsize = fields.next()?;
    let rss_pages = parse_u64(fields.next()?.trim_ascii_end())?;
    Some(PidStat {
        pid: u32::try_from(pid).ok()?,
        comm: &buf[open + 1..close],
        state,
        ppid: u32::try_from(ppid).ok()?,
        cpu_ticks: utime + stime,
        start_ticks,
        rss_pages,
    })
}

/// proc(5)'s state letters in words.
pub(crate) fn state_name(letter: u8) -> &'static str {
    match letter {
        b'R' => "running",
        b'S' => "sleeping",
        b'D' => "disk-sleep",
        b'Z' => "zombie",
        b'T' => "stopped",
        b't' => "tracing-stop",
        b'X' | b'x' => "dead",
        b'I' => "idle",
        b'P' => "parked",
        b'W' => "waking",
        b'K' => "wakekill",
        _ => "unknown",
    }
}

/// The effective uid from `/proc/<pid>/status` (`Uid: real effective saved fs`). The owner
/// of `/proc/<pid>` is not used: it turns to root for non-dumpable processes.
pub(crate) fn parse_status_euid(text: &[u8]) -> Option<u32> {
    let line = text
        .split(|&b| b == b'\n')
        .find(|l| l.starts_with(b"Uid:"))?;
    let mut ids = line[4..]
        .split(|b| b.is_ascii_whitespace())
        .filter(|f| !f.is_empty());
    let _real = ids.next()?;
    u32::try_from(parse_u64(ids.next()?)?).ok()
}

/// The command line with NULs as spaces, at most `cap` bytes, cut on a character boundary;
/// `None` for kernel threads (empty cmdline).
pub(crate) fn cmdline_text(raw: &[u8], cap: usize) -> Option<String> {
    let raw = &raw[..raw.len().min(cap)];
    let raw = raw.strip_suffix(b"\0").unwrap_or(raw);
    if raw.is_empty() {
        return None;
    }
    let joined: Vec<u8> = raw.iter().map(|&b| if b == 0 { b' ' } else { b }).collect();
    let valid = match std::str::from_utf8(&joined) {
        Ok(_) => joined.len(),
        // A character cut by the cap is dropped; other invalid bytes are replaced below.
        Err(e) if e.error_len().is_none() => e.valid_up_to(),
        Err(_) => joined.len(),
    };
    let text = String::from_utf8_lossy(&joined[..valid]);
    let text = text.trim_end();
    (!text.is_empty()).then(|| text.to_string())
}

/// uid → user name from `<root>/etc/passwd`, re-read when the file changes. Names from other
/// NSS sources (LDAP, systemd's dynamic users) are not resolved: they appear as the number.
#[derive(Debug, Default)]
pub(crate) struct UserNames {
    names: HashMap<u32, String>,
    loaded_mtime: Option<SystemTime>,
}

impl UserNames {
    /// Reloads `passwd` when its modification time differs from the last load.
    pub(crate) fn refresh(&mut self, passwd: &Path) {
        let mtime = std::fs::metadata(passwd).and_then(|m| m.modified()).ok();
        if mtime.is_some() && mtime == self.loaded_mtime {
            return;
        }
        self.loaded_mtime = mtime;
        self.names = std::fs::read(passwd)
            .map(|raw| parse_passwd(&String::from_utf8_lossy(&raw)))
            .unwrap_or_default();
    }

    /// The name, or the uid as text.
    pub(crate) fn name(&self, uid: u32) -> String {
        self.names
            .get(&uid)
            .cloned()
            .unwrap_or_else(|| uid.to_string())
    }
}

/// `name:password:uid:…` lines; the first entry for a uid wins, as getpwuid does.
pub(crate) fn parse_passwd(text: &str) -> HashMap<u32, String> {
    let mut names = HashMap::new();
    for line in text.lines() {
        let mut fields = line.split(':');
        let (Some(name), Some(_), Some(uid)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        if let Ok(uid) = uid.parse::<u32>() {
            names.entry(uid).or_insert_with(|| name.to_string());
        }
    }
    names
}

/// Kernel constants the arithmetic needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelUnits {
    /// `sysconf(_SC_CLK_TCK)`: clock ticks per second in `/proc/<pid>/stat`.
    pub clock_ticks_per_sec: u64,
    /// `sysconf(_SC_PAGESIZE)`: bytes per page in `/proc/<pid>/stat`'s rss.
    pub page_size: u64,
}

impl KernelUnits {
    /// The running kernel's values.
    pub fn of_running_kernel() -> Self {
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        // SAFETY: as above.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        Self {
            clock_ticks_per_sec: u64::try_from(ticks).ok().filter(|&t| t > 0).unwrap_or(100),
            page_size: u64::try_from(page).ok().filter(|&p| p > 0).unwrap_or(4096),
        }
    }
}

/// One row of the table while choosing the top N.
#[derive(Debug, Clone)]
struct Row {
    pid: u32,
    ppid: u32,
    state: u8,
    comm: String,
    cpu_percent: f64,
    rss_kb: u64,
    start_ticks: u64,
}

/// What the machine-wide files said at snapshot time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    /// `/proc/uptime`.
    pub uptime_secs: f64,
    /// `btime` of `/proc/stat`.
    pub boot_time: Option<u64>,
    /// CPUs listed in `/proc/stat`.
    pub cpus: usize,
}

/// Keeps the CPU ticks of the previous snapshot and the buffers reused between snapshots.
#[derive(Debug, Default)]
pub(crate) struct ProcessTable {
    /// pid → (start ticks, cpu ticks); the start time tells a reused pid from the old one.
    previous: HashMap<u32, (u64, u64)>,
    current: HashMap<u32, (u64, u64)>,
    previous_uptime: Option<f64>,
    rows: Vec<Row>,
    path: PathBuf,
    buf: Vec<u8>,
}

/// Longest command line reported, in bytes.
pub(crate) const CMDLINE_CAP: usize = 1024;

impl ProcessTable {
    /// Reads every `/proc/<pid>/stat`, ranks by CPU then RSS (then pid, for a stable order)
    /// and completes the top `top_n` with command line and user. Returns (top, total).
    ///
    /// CPU % is the share of one CPU since the previous snapshot; a process first seen (all
    /// of them on the first snapshot) gets its average since it started. Capped at
    /// 100 × CPUs, which only a clock hiccup could exceed.
    pub(crate) fn snapshot(
        &mut self,
        proc_dir: &Path,
        units: KernelUnits,
        clock: Clock,
        users: &UserNames,
        top_n: usize,
    ) -> (Vec<ProcessInfo>, u64) {
        self.rows.clear();
        self.current.clear();
        let interval = self
            .previous_uptime
            .map(|before| clock.uptime_secs - before)
            .filter(|&secs| secs > 0.0);
        let ticks_per_sec = units.clock_ticks_per_sec as f64;
        let max_percent = 100.0 * clock.cpus.max(1) as f64;
        let page_kb = units.page_size / 1024;

        let Ok(entries) = std::fs::read_dir(proc_dir) else {
            return (Vec::new(), 0);
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = pid_of(&name) else { continue };
            self.set_path(proc_dir, &name, "stat");
            // The process may exit between readdir and open: that is normal, not an error.
            if read_into(&self.path, &mut self.buf).is_err() {
                continue;
            }
            let Some(stat) = parse_pid_stat(&self.buf) else {
                continue;
            };
            self.current.insert(pid, (stat.start_ticks, stat.cpu_ticks));
            let since_last = match (interval, self.previous.get(&pid)) {
                (Some(secs), Some(&(start, ticks)))
                    if start == stat.start_ticks && stat.cpu_ticks >= ticks =>
                {
                    Some((stat.cpu_ticks - ticks) as f64 / ticks_per_sec / secs)
                }
                _ => None,
            };
            let share = since_last.unwrap_or_else(|| {
                let age = clock.uptime_secs - stat.start_ticks as f64 / ticks_per_sec;
                if age > 0.0 {
                    stat.cpu_ticks as f64 / ticks_per_sec / age
                } else {
                    0.0
                }
            });
            self.rows.push(Row {
                pid,
                ppid: stat.ppid,
                state: stat.state,
                comm: String::from_utf8_lossy(stat.comm).into_owned(),
                cpu_percent: ((share * 100.0).clamp(0.0, max_percent) * 100.0).round() / 100.0,
                rss_kb: stat.rss_pages * page_kb,
                start_ticks: stat.start_ticks,
            });
        }
        std::mem::swap(&mut self.previous, &mut self.current);
        self.previous_uptime = Some(clock.uptime_secs);

        let total = self.rows.len() as u64;
        let rank = |a: &Row, b: &Row| {
            b.cpu_percent
                .total_cmp(&a.cpu_percent)
                .then(b.rss_kb.cmp(&a.rss_kb))
                .then(a.pid.cmp(&b.pid))
        };
        if top_n < self.rows.len() {
            if top_n > 0 {
                self.rows.select_nth_unstable_by(top_n - 1, rank);
            }
            self.rows.truncate(top_n);
        }
        self.rows.sort_by(rank);

        let rows = std::mem::take(&mut self.rows);
        let top = rows
            .iter()
            .map(|row| self.describe(proc_dir, row, units, clock, users))
            .collect();
        self.rows = rows;
        (top, total)
    }

    fn describe(
        &mut self,
        proc_dir: &Path,
        row: &Row,
        units: KernelUnits,
        clock: Clock,
        users: &UserNames,
    ) -> ProcessInfo {
        let pid_name = row.pid.to_string();
        self.set_path(proc_dir, OsStr::new(&pid_name), "cmdline");
        let cmdline = read_capped(&self.path, &mut self.buf, CMDLINE_CAP)
            .ok()
            .and_then(|()| cmdline_text(&self.buf, CMDLINE_CAP));
        self.set_path(proc_dir, OsStr::new(&pid_name), "status");
        let user = read_into(&self.path, &mut self.buf)
            .ok()
            .and_then(|()| parse_status_euid(&self.buf))
            .map(|uid| users.name(uid));
        let start_time = clock
            .boot_time
            .map(|boot| boot as i64 + (row.start_ticks / units.clock_ticks_per_sec.max(1)) as i64);
        ProcessInfo {
            pid: row.pid,
            ppid: Some(row.ppid),
            name: row.comm.clone(),
            cmdline,
            user,
            state: Some(state_name(row.state).to_string()),
            cpu_percent: row.cpu_percent,
            memory_kb: row.rss_kb,
            start_time,
        }
    }

    fn set_path(&mut self, proc_dir: &Path, pid: &OsStr, file: &str) {
        let path = self.path.as_mut_os_string();
        path.clear();
        path.push(proc_dir.as_os_str());
        path.push("/");
        path.push(pid);
        path.push("/");
        path.push(file);
    }
}

fn pid_of(name: &OsStr) -> Option<u32> {
    let bytes = name.as_encoded_bytes();
    u32::try_from(parse_u64(bytes)?).ok()
}

/// Reads at most `cap` bytes: a command line can be megabytes long.
fn read_capped(path: &Path, buf: &mut Vec<u8>, cap: usize) -> std::io::Result<()> {
    buf.clear();
    std::fs::File::open(path)?
        .take(cap as u64)
        .read_to_end(buf)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_spaces_and_parentheses_in_comm_parses() {
        let line = b"4242 (my (weird) proc) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
            250 50 0 0 20 0 3 0 12345 10000000 512 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0\n";
        let stat = parse_pid_stat(line).expect("stat parses");
        assert_eq!(stat.pid, 4242);
        assert_eq!(stat.comm, b"my (weird) proc");
        assert_eq!(stat.state, b'S');
        assert_eq!(stat.ppid, 1);
        assert_eq!(stat.cpu_ticks, 300);
        assert_eq!(stat.start_ticks, 12345);
        assert_eq!(stat.rss_pages, 512);
    }

    #[test]
    fn truncated_stat_is_rejected() {
        assert_eq!(parse_pid_stat(b"12 (x) S 1 2 3"), None);
        assert_eq!(parse_pid_stat(b"garbage"), None);
    }

    #[test]
    fn euid_is_the_second_uid_column() {
        let status = b"Name:\tsudo\nUid:\t1000\t0\t0\t0\nGid:\t1000\t1000\t1000\t1000\n";
        assert_eq!(parse_status_euid(status), Some(0));
    }

    #[test]
    fn cmdline_joins_arguments_and_respects_the_cap() {
        assert_eq!(
            cmdline_text(b"/usr/bin/python3\0-m\0http.server\0", 1024).as_deref(),
            Some("/usr/bin/python3 -m http.server")
        );
        assert_eq!(cmdline_text(b"", 1024), None);
        assert_eq!(cmdline_text(b"abcdef", 3).as_deref(), Some("abc"));
        // "é" is two bytes; cutting inside it drops it instead of emitting U+FFFD.
        assert_eq!(cmdline_text("aé".as_bytes(), 2).as_deref(), Some("a"));
    }

    #[test]
    fn passwd_maps_uids_and_unknown_uids_stay_numeric() {
        let names = UserNames {
            names: parse_passwd(
                "root:x:0:0:root:/root:/bin/bash\nbad line\nwww-data:x:33:33::/:/x\n",
            ),
            loaded_mtime: None,
        };
        assert_eq!(names.name(0), "root");
        assert_eq!(names.name(33), "www-data");
        assert_eq!(names.name(4242), "4242");
    }
}
