//! Diagnostics shared by the connection tasks and `infinibay doctor`: deduplicated error logs,
//! who this process is, who owns a socket, and the one actionable line for EACCES.

use std::collections::HashMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use tokio::time::Instant;

/// Repeated errors of one kind (per VM connection) are summarised at most this often.
pub const DEDUP_PERIOD: Duration = Duration::from_secs(60);

/// The fix seed 000 names for a socket the host may not open.
pub const KVM_GROUP_HINT: &str = "add the service user to group kvm and restart";

/// What a repeated error should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Occurrence {
    /// First of its kind (or first since it cleared): log it in full.
    First,
    /// Repeated within the summary period: say nothing.
    Suppressed,
    /// Repeated, and a period has passed: log one summary line with this count (occurrences
    /// since the previous line, this one included).
    Summary(u64),
}

#[derive(Debug)]
struct Entry {
    last_line: Instant,
    suppressed: u64,
}

/// Deduplicates repeated errors of one VM by kind: the first is logged, then at most one
/// summary per period with the count. One per connection task, so no lock is shared between VMs.
#[derive(Debug)]
pub struct Deduper {
    period: Duration,
    entries: HashMap<&'static str, Entry>,
}

impl Deduper {
    /// Summaries at most every `period`.
    pub fn new(period: Duration) -> Self {
        Self {
            period,
            entries: HashMap::new(),
        }
    }

    /// Note one occurrence of `kind`.
    pub fn record(&mut self, kind: &'static str) -> Occurrence {
        let now = Instant::now();
        match self.entries.get_mut(kind) {
            None => {
                self.entries.insert(
                    kind,
                    Entry {
                        last_line: now,
                        suppressed: 0,
                    },
                );
                Occurrence::First
            }
            Some(e) => {
                e.suppressed += 1;
                if now.duration_since(e.last_line) >= self.period {
                    let count = e.suppressed;
                    e.suppressed = 0;
                    e.last_line = now;
                    Occurrence::Summary(count)
                } else {
                    Occurrence::Suppressed
                }
            }
        }
    }

    /// The condition ended: forget `kind`. Returns the occurrences not yet reported, if any,
    /// so that the caller can close with a summary.
    pub fn clear(&mut self, kind: &'static str) -> Option<u64> {
        self.entries
            .remove(kind)
            .and_then(|e| (e.suppressed > 0).then_some(e.suppressed))
    }

    /// Whether `kind` is currently being deduplicated.
    pub fn is_active(&self, kind: &'static str) -> bool {
        self.entries.contains_key(kind)
    }
}

/// The identity this process acts with, for permission checks and messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessIdentity {
    /// Effective user id.
    pub uid: u32,
    /// Its name, when /etc/passwd has one.
    pub user: String,
    /// Effective group id.
    pub gid: u32,
    /// Supplementary groups (gid, name), the effective group included.
    pub groups: Vec<(u32, String)>,
}

impl ProcessIdentity {
    /// The current process.
    pub fn current() -> Self {
        // SAFETY: geteuid/getegid cannot fail and touch no memory of ours.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let mut gids = supplementary_groups();
        if !gids.contains(&gid) {
            gids.insert(0, gid);
        }
        let group_names = read_id_names("/etc/group");
        let groups = gids
            .into_iter()
            .map(|g| (g, name_or_number(&group_names, g)))
            .collect();
        Self {
            uid,
            user: name_or_number(&read_id_names("/etc/passwd"), uid),
            gid,
            groups,
        }
    }

    /// Whether this process is in group `gid`.
    pub fn in_group(&self, gid: u32) -> bool {
        self.groups.iter().any(|(g, _)| *g == gid)
    }

    /// `user (uid N), groups a(1), b(2)`.
    pub fn describe(&self) -> String {
        let groups: Vec<String> = self
            .groups
            .iter()
            .map(|(g, n)| format!("{n}({g})"))
            .collect();
        format!(
            "user {} (uid {}), groups {}",
            self.user,
            self.uid,
            groups.join(", ")
        )
    }
}

fn supplementary_groups() -> Vec<u32> {
    // SAFETY: a null buffer with size 0 asks only for the count.
    let count = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
    if count <= 0 {
        return Vec::new();
    }
    let mut buf = vec![0 as libc::gid_t; count as usize];
    // SAFETY: `buf` has room for `count` entries, as we tell getgroups.
    let got = unsafe { libc::getgroups(count, buf.as_mut_ptr()) };
    if got < 0 {
        return Vec::new();
    }
    buf.truncate(got as usize);
    buf
}

/// `name:x:id:...` lines of /etc/passwd or /etc/group as id → name.
fn read_id_names(path: &str) -> HashMap<u32, String> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return HashMap::new();
    };
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            let id = fields.nth(1)?.parse().ok()?;
            Some((id, name.to_owned()))
        })
        .collect()
}

fn name_or_number(names: &HashMap<u32, String>, id: u32) -> String {
    names.get(&id).cloned().unwrap_or_else(|| id.to_string())
}

/// Owner, group and mode of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ownership {
    /// Owner uid.
    pub uid: u32,
    /// Owner name.
    pub user: String,
    /// Group gid.
    pub gid: u32,
    /// Group name.
    pub group: String,
    /// Permission bits (`0o660`).
    pub mode: u32,
}

impl Ownership {
    /// Read from the file system.
    pub fn of(path: &Path) -> std::io::Result<Self> {
        let meta = std::fs::metadata(path)?;
        Ok(Self {
            uid: meta.uid(),
            user: name_or_number(&read_id_names("/etc/passwd"), meta.uid()),
            gid: meta.gid(),
            group: name_or_number(&read_id_names("/etc/group"), meta.gid()),
            mode: meta.permissions().mode() & 0o7777,
        })
    }

    /// Whether `who` may connect to a UNIX socket with this ownership (connect needs write
    /// permission on the socket file). Root may always.
    pub fn allows_connect(&self, who: &ProcessIdentity) -> bool {
        if who.uid == 0 {
            return true;
        }
        if who.uid == self.uid {
            return self.mode & 0o200 != 0;
        }
        if who.in_group(self.gid) {
            return self.mode & 0o020 != 0;
        }
        self.mode & 0o002 != 0
    }
}

/// The one line logged when the host may not open a VM's socket (EACCES), seed 000.
pub fn permission_denied_message(
    path: &Path,
    owner: Option<&Ownership>,
    who: &ProcessIdentity,
) -> String {
    let socket = match owner {
        Some(o) => format!(
            "socket owner {} (uid {}), group {} (gid {}), mode {:04o}",
            o.user, o.uid, o.group, o.gid, o.mode
        ),
        None => "socket ownership unknown (stat failed)".to_owned(),
    };
    let group = owner.map_or("kvm", |o| o.group.as_str());
    let fix = if group == "kvm" {
        format!("{KVM_GROUP_HINT} (usermod -aG kvm {})", who.user)
    } else {
        format!(
            "{KVM_GROUP_HINT} (usermod -aG kvm {}; this socket's group is {group}, so add the user to {group} too or have QEMU create sockets with group kvm)",
            who.user
        )
    };
    format!(
        "permission denied connecting to {}: {socket}; this process runs as {}. Fix: {fix}. \
         Retrying with backoff; repeats are summarised.",
        path.display(),
        who.describe()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn repeated_errors_are_logged_once_then_summarised_with_a_count() {
        let mut d = Deduper::new(Duration::from_secs(60));
        assert_eq!(d.record("refused"), Occurrence::First);
        for _ in 0..9 {
            assert_eq!(d.record("refused"), Occurrence::Suppressed);
        }
        assert_eq!(d.record("other"), Occurrence::First);
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(d.record("refused"), Occurrence::Summary(10));
        assert_eq!(d.record("refused"), Occurrence::Suppressed);
        assert_eq!(d.clear("refused"), Some(1));
        assert_eq!(d.record("refused"), Occurrence::First);
    }

    #[test]
    fn eacces_line_names_owner_group_mode_user_groups_and_the_fix() {
        let owner = Ownership {
            uid: 64055,
            user: "libvirt-qemu".into(),
            gid: 108,
            group: "kvm".into(),
            mode: 0o660,
        };
        let who = ProcessIdentity {
            uid: 1001,
            user: "infinibay".into(),
            gid: 1001,
            groups: vec![(1001, "infinibay".into())],
        };
        let line = permission_denied_message(Path::new("/s/vm-x.sock"), Some(&owner), &who);
        for needle in [
            "/s/vm-x.sock",
            "libvirt-qemu",
            "group kvm",
            "mode 0660",
            "user infinibay (uid 1001)",
            "infinibay(1001)",
            KVM_GROUP_HINT,
        ] {
            assert!(line.contains(needle), "{needle:?} missing from {line}");
        }
        assert!(!line.contains('\n'), "one line");
        assert!(!owner.allows_connect(&who));
        let member = ProcessIdentity {
            groups: vec![(1001, "infinibay".into()), (108, "kvm".into())],
            ..who
        };
        assert!(owner.allows_connect(&member));
    }
}
