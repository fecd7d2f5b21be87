//! Starting child processes that cannot outlive this process.
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, not the process.
//! Test harnesses run each test on a short-lived thread, so every child is forked by one
//! dedicated thread that lives until the process ends. An `atexit` hook also kills the
//! children still registered, because statics (a shared `OnceLock<Guest>`) are never dropped.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::sync::{Mutex, Once, OnceLock};

struct SpawnRequest {
    command: Command,
    reply: mpsc::Sender<io::Result<Child>>,
}

static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
static LIVE_CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());
static ATEXIT: Once = Once::new();

fn spawner() -> io::Result<&'static Mutex<mpsc::Sender<SpawnRequest>>> {
    if let Some(sender) = SPAWNER.get() {
        return Ok(sender);
    }
    let (sender, receiver) = mpsc::channel::<SpawnRequest>();
    // The receiving end never sees a disconnect (the sender lives in a static), so this
    // thread runs until the process exits, which is what PDEATHSIG needs.
    let started = std::thread::Builder::new()
        .name("e2e-spawner".into())
        .spawn(move || {
            for mut request in receiver {
                let result = request.command.spawn();
                // The requester may have given up; nothing to do then but drop the child,
                // which the registry below still kills at exit.
                let _ = request.reply.send(result);
            }
        });
    match started {
        Ok(_) => Ok(SPAWNER.get_or_init(|| Mutex::new(sender))),
        Err(e) => Err(e),
    }
}

extern "C" fn kill_live_children() {
    let pids = match LIVE_CHILDREN.try_lock() {
        Ok(pids) => pids.clone(),
        Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner().clone(),
        Err(std::sync::TryLockError::WouldBlock) => return,
    };
    for pid in pids {
        // SAFETY: kill(2) with a pid we spawned; at worst the pid is already reaped (ESRCH).
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGKILL);
        }
    }
}

/// Register the exit hook that kills the children still registered (once). Hooks registered
/// after it run before it.
pub(crate) fn ensure_exit_hook() {
    ATEXIT.call_once(|| {
        // SAFETY: registering a plain extern "C" fn; it only reads a static and calls kill(2).
        unsafe {
            libc::atexit(kill_live_children);
        }
    });
}

/// Spawn `command` so that it gets SIGKILL when this process dies.
pub(crate) fn spawn_tied_to_process(mut command: Command) -> io::Result<Child> {
    ensure_exit_hook();
    // SAFETY: getpid(2) cannot fail.
    let parent = unsafe { libc::getpid() };
    // SAFETY: only async-signal-safe calls (prctl, getppid) between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl; then nobody would kill us.
            if libc::getppid() != parent {
                return Err(io::Error::other("parent exited before the child started"));
            }
            Ok(())
        });
    }
    let (reply, answer) = mpsc::channel();
    {
        let sender = spawner()?
            .lock()
            .map_err(|_| io::Error::other("spawner lock poisoned"))?;
        sender
            .send(SpawnRequest { command, reply })
            .map_err(|_| io::Error::other("spawner thread is gone"))?;
    }
    let child = answer
        .recv()
        .map_err(|_| io::Error::other("spawner thread dropped the request"))??;
    if let Ok(mut live) = LIVE_CHILDREN.lock() {
        live.push(child.id());
    }
    Ok(child)
}

/// Forget a child that has been reaped, so that the exit hook cannot hit a recycled pid.
pub(crate) fn forget(pid: u32) {
    if let Ok(mut live) = LIVE_CHILDREN.lock() {
        live.retain(|p| *p != pid);
    }
}
