//! Socket discovery: inotify on the socket directory plus a periodic full rescan.
//!
//! inotify tells us quickly that *something* changed; the rescan is what decides. Every event
//! (or the timer) triggers one listing of the directory, compared with the sockets we know, so
//! a lost or coalesced event (inotify queue overflow, a directory that did not exist yet) can
//! delay discovery by one rescan interval at most, never lose it.
//!
//! File names: `vm-<uuid>.sock` and `<uuid>.socket` (the seeds' two forms). The VM's identity is
//! that uuid, lower-cased; nothing a guest says can change it.

use std::collections::HashMap;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::secs;
use crate::diag::{Deduper, Occurrence};
use crate::shared::Shared;

const TARGET: &str = "infinibay::watcher";

/// Wait after an inotify event before rescanning: a burst of socket creations (a simulator or
/// a host booting thousands of VMs) becomes one rescan per period.
const EVENT_SETTLE: Duration = Duration::from_millis(100);

/// The VM id a socket file name stands for, or `None` when the name is not one of ours.
pub fn vm_id_from_file_name(name: &str) -> Option<String> {
    let uuid = name
        .strip_prefix("vm-")
        .and_then(|r| r.strip_suffix(".sock"))
        .or_else(|| name.strip_suffix(".socket"))?;
    // Only the hyphenated form: a name is a file name, and two spellings of one uuid must
    // not become two VMs.
    if uuid.len() != 36 {
        return None;
    }
    uuid::Uuid::parse_str(uuid)
        .ok()
        .map(|u| u.hyphenated().to_string())
}

/// The sockets in `dir` by VM id. When both spellings of one id exist, the first in name
/// order wins.
///
/// Cheap enough to run often over 10,000 sockets: the file type comes from the directory entry
/// (no `stat` per socket; only symlinks and file systems without `d_type` are stat-ed), and
/// names are compared as bytes, not as paths.
pub fn scan(dir: &Path) -> std::io::Result<HashMap<String, PathBuf>> {
    let mut names: Vec<(String, String)> = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let Ok(entry) = entry else { continue };
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(id) = vm_id_from_file_name(name) else {
            continue;
        };
        let is_socket = match entry.file_type() {
            Ok(t) if t.is_socket() => true,
            // A symlink to a socket counts; a regular file with a socket's name does not.
            Ok(t) if t.is_symlink() => stat_is_socket(&entry.path()),
            Ok(_) => false,
            Err(_) => stat_is_socket(&entry.path()),
        };
        if is_socket {
            names.push((name.to_owned(), id));
        }
    }
    names.sort_unstable();
    let mut found = HashMap::with_capacity(names.len());
    for (name, id) in names {
        found.entry(id).or_insert_with(|| dir.join(name));
    }
    Ok(found)
}

fn stat_is_socket(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|m| m.file_type().is_socket())
        .unwrap_or(false)
}

struct Running {
    path: PathBuf,
    stop: CancellationToken,
}

/// Watch the socket directory until `shutdown`, starting and stopping connection tasks.
pub(crate) async fn run(shared: Arc<Shared>) {
    let dir = shared.config.socket_dir.clone();
    let rescan_every = secs(shared.config.discovery.rescan_interval_secs);
    // Capacity 1: events only mean "look again"; many of them are one rescan.
    let (tx, mut changed) = mpsc::channel::<()>(1);
    let mut watcher: Option<notify::RecommendedWatcher> = None;
    let mut running: HashMap<String, Running> = HashMap::new();
    let mut dedup = Deduper::new(Duration::from_secs(300));

    loop {
        if watcher.is_none() {
            watcher = watch(&dir, tx.clone(), &mut dedup);
        }
        let scanned = {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || scan(&dir)).await
        };
        match scanned {
            Ok(Ok(found)) => {
                if let Some(n) = dedup.clear("scan") {
                    tracing::info!(target: TARGET, "socket directory readable again after {n} more failures");
                }
                apply(&shared, &mut running, found);
            }
            Ok(Err(e)) => {
                // A directory that vanished must not keep its watch: set it up again later.
                watcher = None;
                match dedup.record("scan") {
                    Occurrence::First => tracing::error!(target: TARGET,
                        "cannot read socket directory {}: {e} (check that it exists and that this user may read it; `infinibay doctor` explains)",
                        dir.display()),
                    Occurrence::Summary(n) => tracing::error!(target: TARGET,
                        "socket directory {} still unreadable ({n} more rescans): {e}", dir.display()),
                    Occurrence::Suppressed => {}
                }
            }
            Err(e) => tracing::error!(target: TARGET, "directory scan task failed: {e}"),
        }
        tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            _ = changed.recv() => {
                // Let a burst of creations settle into one rescan, and never rescan more than
                // a few times a second however busy the directory is.
                tokio::select! {
                    _ = shared.shutdown.cancelled() => break,
                    _ = tokio::time::sleep(EVENT_SETTLE) => {}
                }
                while changed.try_recv().is_ok() {}
            }
            _ = tokio::time::sleep(rescan_every) => {}
        }
    }
    for (_, r) in running.drain() {
        r.stop.cancel();
    }
    drop(watcher);
}

fn watch(
    dir: &Path,
    tx: mpsc::Sender<()>,
    dedup: &mut Deduper,
) -> Option<notify::RecommendedWatcher> {
    let result = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Only names appearing or disappearing matter; opens, reads and attribute changes of
        // the sockets must not trigger rescans.
        let relevant = match &event {
            Ok(e) => {
                e.need_rescan()
                    || matches!(
                        e.kind,
                        notify::EventKind::Create(_)
                            | notify::EventKind::Remove(_)
                            | notify::EventKind::Modify(notify::event::ModifyKind::Name(_))
                            | notify::EventKind::Any
                            | notify::EventKind::Other
                    )
            }
            Err(_) => true,
        };
        if relevant {
            // Full channel: a rescan is already due, which will see this change too.
            let _ = tx.try_send(());
        }
    })
    .and_then(|mut w| w.watch(dir, RecursiveMode::NonRecursive).map(|()| w));
    match result {
        Ok(w) => {
            tracing::debug!(target: TARGET, dir = %dir.display(), "watching socket directory");
            Some(w)
        }
        Err(e) => {
            if dedup.record("inotify") == Occurrence::First {
                tracing::warn!(target: TARGET,
                    "cannot watch {} with inotify ({e}); relying on the periodic rescan", dir.display());
            }
            None
        }
    }
}

fn apply(
    shared: &Arc<Shared>,
    running: &mut HashMap<String, Running>,
    mut found: HashMap<String, PathBuf>,
) {
    // VMs deleted through the API: their connection stops here and their socket is ignored.
    shared
        .registry
        .keep_forgotten_while(|id| found.contains_key(id));
    found.retain(|id, _| !shared.registry.is_forgotten(id));
    let before = running.len();
    running.retain(|id, r| {
        if found.get(id) == Some(&r.path) {
            return true;
        }
        tracing::debug!(target: TARGET, vm = %id, path = %r.path.display(), "socket removed");
        r.stop.cancel();
        if let Some(vm) = shared.registry.get(id) {
            vm.live().socket_present = false;
        }
        false
    });
    let removed = before - running.len();
    let mut added = 0usize;
    for (id, path) in found {
        if running.contains_key(&id) {
            continue;
        }
        added += 1;
        let (vm, new) = shared.registry.get_or_insert(&id, path.clone());
        if new {
            shared.queue.register_vm(&id, Utc::now());
            tracing::debug!(target: TARGET, vm = %id, path = %path.display(), "new VM socket");
        } else {
            tracing::debug!(target: TARGET, vm = %id, path = %path.display(), "VM socket back");
        }
        let stop = shared.shutdown.child_token();
        running.insert(
            id,
            Running {
                path,
                stop: stop.clone(),
            },
        );
        shared
            .tasks
            .spawn(crate::connection::run(shared.clone(), vm, stop));
    }
    if added + removed > 0 {
        // One line per change of the directory, not one per VM: 10,000 VMs start in seconds.
        tracing::info!(target: TARGET, added, removed, sockets = running.len(),
            "socket directory changed (per-VM lines at debug)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_seed_file_name_forms_give_the_uuid() {
        let id = "2b3e4f5a-1c2d-4e5f-8a9b-0c1d2e3f4a5b";
        assert_eq!(
            vm_id_from_file_name(&format!("vm-{id}.sock")).as_deref(),
            Some(id)
        );
        assert_eq!(
            vm_id_from_file_name(&format!("{id}.socket")).as_deref(),
            Some(id)
        );
        assert_eq!(
            vm_id_from_file_name(&format!("vm-{}.sock", id.to_uppercase())).as_deref(),
            Some(id)
        );
        for bad in [
            "vm-nope.sock",
            "qmp.sock",
            &format!("{id}.sock"),
            &format!("vm-{id}.socket"),
            "vm-2b3e4f5a1c2d4e5f8a9b0c1d2e3f4a5b.sock",
            "../x.socket",
        ] {
            assert_eq!(vm_id_from_file_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn scan_finds_sockets_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let id = "2b3e4f5a-1c2d-4e5f-8a9b-0c1d2e3f4a5b";
        let _l = std::os::unix::net::UnixListener::bind(dir.path().join(format!("vm-{id}.sock")))
            .expect("bind");
        std::fs::write(
            dir.path()
                .join("11111111-2222-4333-8444-555555555555.socket"),
            b"not a socket",
        )
        .expect("write");
        let found = scan(dir.path()).expect("scan");
        assert_eq!(found.len(), 1);
        assert!(found.contains_key(id));
    }
}
