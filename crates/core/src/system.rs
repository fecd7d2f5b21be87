//! Process-level set-up.

/// Raise the soft limit of open files to the hard limit: every VM is one socket (and the
/// database, the listener and inotify need a few more), so thousands of VMs need thousands of
/// descriptors while the usual soft default is 1,024. Returns `(before, after)`.
pub fn raise_nofile_limit() -> std::io::Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: `limit` is a valid rlimit read just above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok((before, limit.rlim_cur))
}

/// Files this process creates are private from now on: mode `0600` (`0700` directories)
/// whatever mode the creator asks for, because the process's umask takes away group and other
/// (`077`). The data directory holds the database (password hashes, command output), its WAL
/// and shared memory, and the signing secret; SQLite creates the WAL and `-shm` files later,
/// with the mode it likes, so the umask is what keeps them private. Returns the previous mask.
pub fn restrict_umask() -> u32 {
    // SAFETY: umask has no failure mode and touches only this process's mask.
    let previous: libc::mode_t = unsafe { libc::umask(0o077) };
    previous
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_soft_limit_ends_at_the_hard_limit() {
        let (_, after) = super::raise_nofile_limit().expect("getrlimit works");
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: valid out-pointer.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
            0
        );
        assert_eq!(after, limit.rlim_max);
        assert_eq!(limit.rlim_cur, limit.rlim_max);
    }
}
