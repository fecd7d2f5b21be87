//! File descriptors: each simulated VM holds a listening socket and, while a client is
//! connected, the accepted connection: two descriptors per VM.

use thiserror::Error;

/// Descriptors kept free for stdio, the runtime (epoll, eventfd, signal pipe) and logging.
pub const RESERVED_FDS: u64 = 32;

/// The simulator cannot get enough descriptors.
#[derive(Debug, Error)]
#[error(
    "{vms} VMs need {needed} file descriptors (a listening socket and a connection each, plus \
     {RESERVED_FDS}), but RLIMIT_NOFILE allows at most {hard} (hard limit) and this process may not \
     raise it; run fewer VMs per process (e.g. two simulators with --first-index 0 and \
     --first-index {half} and the same --seed) or raise the hard limit (`ulimit -Hn`, \
     LimitNOFILE= in systemd)"
)]
pub struct FileLimitError {
    /// VMs requested.
    pub vms: usize,
    /// Descriptors they need.
    pub needed: u64,
    /// The hard limit.
    pub hard: u64,
    /// Half of `vms`, for the hint.
    pub half: usize,
}

/// Descriptors `vms` simulated VMs need.
pub fn fds_needed(vms: usize) -> u64 {
    vms as u64 * 2 + RESERVED_FDS
}

/// Raise the soft RLIMIT_NOFILE as far as needed (up to the hard limit, or beyond it when the
/// process is privileged), or explain why `vms` VMs cannot run.
pub fn ensure_fds_for(vms: usize) -> Result<u64, FileLimitError> {
    let needed = fds_needed(vms);
    raise_nofile(needed).map_err(|hard| FileLimitError {
        vms,
        needed,
        hard,
        half: vms / 2,
    })
}

/// Raise the soft RLIMIT_NOFILE to at least `needed`: the new soft limit, or the hard limit
/// that is in the way.
pub fn raise_nofile(needed: u64) -> Result<u64, u64> {
    let (soft, hard) = get_nofile();
    if soft >= needed {
        return Ok(soft);
    }
    // A privileged process (CAP_SYS_RESOURCE) may raise the hard limit too; try that first,
    // then settle for the hard limit.
    if set_nofile(needed, hard.max(needed)) || set_nofile(hard, hard) {
        let (now_soft, _) = get_nofile();
        if now_soft >= needed {
            return Ok(now_soft);
        }
    }
    Err(hard)
}

/// The current (soft, hard) RLIMIT_NOFILE.
pub fn get_nofile() -> (u64, u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own; RLIMIT_NOFILE is a valid resource.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    if rc != 0 {
        return (1024, 1024);
    }
    (limit.rlim_cur, limit.rlim_max)
}

fn set_nofile(soft: u64, hard: u64) -> bool {
    let limit = libc::rlimit {
        rlim_cur: soft as libc::rlim_t,
        rlim_max: hard as libc::rlim_t,
    };
    // SAFETY: setrlimit only reads the struct; failure is reported through the return value.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn more_vms_than_the_hard_limit_allows_is_refused_with_a_hint() {
        let (_, hard) = get_nofile();
        let too_many = (hard as usize) * 4;
        match ensure_fds_for(too_many) {
            Err(e) => {
                let text = e.to_string();
                assert!(text.contains("--first-index"), "{text}");
                assert!(
                    text.contains(&format!("{}", fds_needed(too_many))),
                    "{text}"
                );
            }
            // Only a privileged process that may raise the hard limit gets here.
            Ok(soft) => assert!(soft >= fds_needed(too_many)),
        }
    }

    #[test]
    fn a_small_simulator_gets_its_descriptors() {
        let soft = ensure_fds_for(100).expect("200 descriptors are always available");
        assert!(soft >= fds_needed(100));
    }
}
