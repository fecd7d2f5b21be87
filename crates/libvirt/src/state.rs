//! Power states and lifecycle events, mapped from libvirt's numbers.
//!
//! libvirt has eight domain states and ~40 (event, detail) pairs; the host shows five states
//! and eight kinds of change. The mapping lives here, in one place, and is the same for a
//! state read with `virDomainGetState` and a state implied by an event, so that an event
//! stream and a resync never disagree.

use std::fmt;

use virt_sys as sys;

/// The power state the host shows (`Vm.powerState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PowerState {
    /// vCPUs run (also: blocked on a resource, or being shut down).
    Running,
    /// vCPUs are paused (by the host, or the guest is in ACPI S3 suspend).
    Paused,
    /// Not running (never started, shut down, destroyed).
    Shutoff,
    /// The guest or its emulator died unexpectedly.
    Crashed,
    /// libvirt does not know.
    Unknown,
}

impl PowerState {
    /// The GraphQL / wire spelling: `RUNNING`, `PAUSED`, `SHUTOFF`, `CRASHED`, `UNKNOWN`.
    pub fn as_str(self) -> &'static str {
        match self {
            PowerState::Running => "RUNNING",
            PowerState::Paused => "PAUSED",
            PowerState::Shutoff => "SHUTOFF",
            PowerState::Crashed => "CRASHED",
            PowerState::Unknown => "UNKNOWN",
        }
    }

    /// Whether QEMU exists for the domain (running or paused): the domain is *active*.
    pub fn is_active(self) -> bool {
        matches!(self, PowerState::Running | PowerState::Paused)
    }

    /// From `virDomainGetState`'s (state, reason).
    pub fn from_libvirt(state: u32, reason: i32) -> PowerState {
        match state {
            sys::VIR_DOMAIN_RUNNING | sys::VIR_DOMAIN_BLOCKED | sys::VIR_DOMAIN_SHUTDOWN => {
                PowerState::Running
            }
            sys::VIR_DOMAIN_PAUSED | sys::VIR_DOMAIN_PMSUSPENDED => PowerState::Paused,
            sys::VIR_DOMAIN_SHUTOFF
                if u32::try_from(reason).ok() == Some(sys::VIR_DOMAIN_SHUTOFF_CRASHED) =>
            {
                PowerState::Crashed
            }
            sys::VIR_DOMAIN_SHUTOFF => PowerState::Shutoff,
            sys::VIR_DOMAIN_CRASHED => PowerState::Crashed,
            _ => PowerState::Unknown,
        }
    }
}

impl fmt::Display for PowerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PowerState::Running => "running",
            PowerState::Paused => "paused",
            PowerState::Shutoff => "shut off",
            PowerState::Crashed => "crashed",
            PowerState::Unknown => "in an unknown state",
        })
    }
}

/// What happened to a domain (libvirt's `VIR_DOMAIN_EVENT_*`, folded to what the host uses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LifecycleKind {
    /// Defined (new) or its persistent configuration changed.
    Defined,
    /// Its persistent configuration was removed.
    Undefined,
    /// Started (booted, restored, migrated in, woken up).
    Started,
    /// vCPUs paused (by the host, an I/O error, or guest S3/S4 suspend).
    Paused,
    /// vCPUs resumed.
    Resumed,
    /// The guest shut itself down (its OS finished a shutdown); `Stopped` follows.
    Shutdown,
    /// QEMU is gone: shut down, destroyed, saved or migrated away.
    Stopped,
    /// The guest panicked or its emulator died.
    Crashed,
}

impl LifecycleKind {
    /// A stable lowercase name for logs and payloads.
    pub fn as_str(self) -> &'static str {
        match self {
            LifecycleKind::Defined => "defined",
            LifecycleKind::Undefined => "undefined",
            LifecycleKind::Started => "started",
            LifecycleKind::Paused => "paused",
            LifecycleKind::Resumed => "resumed",
            LifecycleKind::Shutdown => "shutdown",
            LifecycleKind::Stopped => "stopped",
            LifecycleKind::Crashed => "crashed",
        }
    }
}

impl fmt::Display for LifecycleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One libvirt lifecycle event, classified: its kind, libvirt's detail in words, and the power
/// state it implies — `None` where the event alone does not say (a definition of a running
/// domain, an undefinition of a running transient one, a guest shutdown in progress): the
/// caller then asks libvirt for the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Classified {
    pub kind: LifecycleKind,
    pub detail: &'static str,
    pub implied: Option<PowerState>,
}

/// Maps `(event, detail)` of a `VIR_DOMAIN_EVENT_ID_LIFECYCLE` callback. `None` for numbers
/// this libvirt version does not define (newer daemons may send them).
pub(crate) fn classify(event: i32, detail: i32) -> Option<Classified> {
    use LifecycleKind::*;
    use PowerState as P;
    let event = u32::try_from(event).ok()?;
    let detail = u32::try_from(detail).unwrap_or(u32::MAX);
    let (kind, detail, implied) = match event {
        sys::VIR_DOMAIN_EVENT_DEFINED => {
            let words = match detail {
                sys::VIR_DOMAIN_EVENT_DEFINED_ADDED => "added",
                sys::VIR_DOMAIN_EVENT_DEFINED_UPDATED => "updated",
                sys::VIR_DOMAIN_EVENT_DEFINED_RENAMED => "renamed",
                sys::VIR_DOMAIN_EVENT_DEFINED_FROM_SNAPSHOT => "from snapshot",
                _ => "other",
            };
            (Defined, words, None)
        }
        sys::VIR_DOMAIN_EVENT_UNDEFINED => {
            let words = match detail {
                sys::VIR_DOMAIN_EVENT_UNDEFINED_REMOVED => "removed",
                sys::VIR_DOMAIN_EVENT_UNDEFINED_RENAMED => "renamed",
                _ => "other",
            };
            (Undefined, words, None)
        }
        sys::VIR_DOMAIN_EVENT_STARTED => {
            let words = match detail {
                sys::VIR_DOMAIN_EVENT_STARTED_BOOTED => "booted",
                sys::VIR_DOMAIN_EVENT_STARTED_MIGRATED => "migrated",
                sys::VIR_DOMAIN_EVENT_STARTED_RESTORED => "restored",
                sys::VIR_DOMAIN_EVENT_STARTED_FROM_SNAPSHOT => "from snapshot",
                sys::VIR_DOMAIN_EVENT_STARTED_WAKEUP => "woken up",
                _ => "other",
            };
            (Started, words, Some(P::Running))
        }
        sys::VIR_DOMAIN_EVENT_SUSPENDED => {
            let words = match detail {
                sys::VIR_DOMAIN_EVENT_SUSPENDED_PAUSED => "paused",
                sys::VIR_DOMAIN_EVENT_SUSPENDED_MIGRATED => "migrating",
                sys::VIR_DOMAIN_EVENT_SUSPENDED_IOERROR => "I/O error",
                sys::VIR_DOMAIN_EVENT_SUSPENDED_WATCHDOG => "watchdog",
                sys::VIR_DOMAIN_EVENT_SUSPENDED_RESTORED => "restored paused",
                sys::VIR_DOMAIN_EVENT_SUSPENDED_FROM_SNAPSHOT => "from snapshot",
                sys::VIR_DOMAIN_EVENT_SUSPENDED_API_ERROR => "API error",
                sys::VIR_DOMAIN_EVENT_SUSPENDED_POSTCOPY => "post-copy",
                sys::VIR_DOMAIN_EVENT_SUSPENDED_POSTCOPY_FAILED => "post-copy failed",
                _ => "other",
            };
            (Paused, words, Some(P::Paused))
        }
        sys::VIR_DOMAIN_EVENT_PMSUSPENDED => {
            let words = match detail {
                sys::VIR_DOMAIN_EVENT_PMSUSPENDED_MEMORY => "guest suspended to memory",
                sys::VIR_DOMAIN_EVENT_PMSUSPENDED_DISK => "guest suspended to disk",
                _ => "guest suspended",
            };
            (Paused, words, Some(P::Paused))
        }
        sys::VIR_DOMAIN_EVENT_RESUMED => {
            let words = match detail {
                sys::VIR_DOMAIN_EVENT_RESUMED_UNPAUSED => "unpaused",
                sys::VIR_DOMAIN_EVENT_RESUMED_MIGRATED => "migrated",
                sys::VIR_DOMAIN_EVENT_RESUMED_FROM_SNAPSHOT => "from snapshot",
                sys::VIR_DOMAIN_EVENT_RESUMED_POSTCOPY => "post-copy",
                _ => "other",
            };
            (Resumed, words, Some(P::Running))
        }
        sys::VIR_DOMAIN_EVENT_STOPPED => match detail {
            // Monitor EOF (QEMU killed or died) and a guest crash both leave the domain
            // SHUTOFF with reason CRASHED, which `PowerState::from_libvirt` reads as Crashed.
            sys::VIR_DOMAIN_EVENT_STOPPED_CRASHED => (Crashed, "guest crashed", Some(P::Crashed)),
            sys::VIR_DOMAIN_EVENT_STOPPED_FAILED => (Crashed, "emulator failed", Some(P::Crashed)),
            sys::VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN => (Stopped, "shut down", Some(P::Shutoff)),
            sys::VIR_DOMAIN_EVENT_STOPPED_DESTROYED => (Stopped, "destroyed", Some(P::Shutoff)),
            sys::VIR_DOMAIN_EVENT_STOPPED_MIGRATED => (Stopped, "migrated", Some(P::Shutoff)),
            sys::VIR_DOMAIN_EVENT_STOPPED_SAVED => (Stopped, "saved", Some(P::Shutoff)),
            sys::VIR_DOMAIN_EVENT_STOPPED_FROM_SNAPSHOT => {
                (Stopped, "from snapshot", Some(P::Shutoff))
            }
            _ => (Stopped, "other", Some(P::Shutoff)),
        },
        sys::VIR_DOMAIN_EVENT_SHUTDOWN => {
            let words = match detail {
                sys::VIR_DOMAIN_EVENT_SHUTDOWN_FINISHED => "guest finished shutting down",
                sys::VIR_DOMAIN_EVENT_SHUTDOWN_GUEST => "guest shut down",
                sys::VIR_DOMAIN_EVENT_SHUTDOWN_HOST => "host shut the guest down",
                _ => "other",
            };
            (Shutdown, words, None)
        }
        sys::VIR_DOMAIN_EVENT_CRASHED => {
            let words = match detail {
                sys::VIR_DOMAIN_EVENT_CRASHED_PANICKED => "guest panicked",
                sys::VIR_DOMAIN_EVENT_CRASHED_CRASHLOADED => "guest crashed, crash kernel loaded",
                _ => "other",
            };
            (Crashed, words, Some(P::Crashed))
        }
        _ => return None,
    };
    Some(Classified {
        kind,
        detail,
        implied,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(n: u32) -> i32 {
        i32::try_from(n).unwrap_or(i32::MAX)
    }

    #[test]
    fn a_domain_killed_under_libvirt_reads_crashed_from_its_event_and_from_its_state() {
        let event = classify(
            raw(sys::VIR_DOMAIN_EVENT_STOPPED),
            raw(sys::VIR_DOMAIN_EVENT_STOPPED_FAILED),
        );
        let state = PowerState::from_libvirt(
            sys::VIR_DOMAIN_SHUTOFF,
            raw(sys::VIR_DOMAIN_SHUTOFF_CRASHED),
        );
        assert_eq!(event.map(|c| c.implied), Some(Some(PowerState::Crashed)));
        assert_eq!(state, PowerState::Crashed);
    }

    #[test]
    fn destroy_and_guest_shutdown_end_shut_off() {
        for detail in [
            sys::VIR_DOMAIN_EVENT_STOPPED_DESTROYED,
            sys::VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN,
        ] {
            let c = classify(raw(sys::VIR_DOMAIN_EVENT_STOPPED), raw(detail));
            assert_eq!(
                c.map(|c| (c.kind, c.implied)),
                Some((LifecycleKind::Stopped, Some(PowerState::Shutoff)))
            );
        }
        assert_eq!(
            PowerState::from_libvirt(
                sys::VIR_DOMAIN_SHUTOFF,
                raw(sys::VIR_DOMAIN_SHUTOFF_DESTROYED)
            ),
            PowerState::Shutoff
        );
    }

    #[test]
    fn events_that_do_not_imply_a_state_ask_for_one() {
        for event in [
            sys::VIR_DOMAIN_EVENT_DEFINED,
            sys::VIR_DOMAIN_EVENT_UNDEFINED,
            sys::VIR_DOMAIN_EVENT_SHUTDOWN,
        ] {
            assert_eq!(classify(raw(event), 0).map(|c| c.implied), Some(None));
        }
    }

    #[test]
    fn guest_suspend_to_ram_shows_as_paused_like_a_host_pause() {
        let pm = classify(raw(sys::VIR_DOMAIN_EVENT_PMSUSPENDED), 0);
        assert_eq!(
            pm.map(|c| (c.kind, c.implied)),
            Some((LifecycleKind::Paused, Some(PowerState::Paused)))
        );
        assert_eq!(
            PowerState::from_libvirt(sys::VIR_DOMAIN_PMSUSPENDED, 0),
            PowerState::Paused
        );
    }

    #[test]
    fn unknown_event_numbers_from_a_newer_daemon_are_not_guessed() {
        assert_eq!(classify(4242, 0), None);
        assert_eq!(classify(-1, 0), None);
        assert_eq!(PowerState::from_libvirt(4242, 0), PowerState::Unknown);
    }

    #[test]
    fn power_states_have_the_graphql_spelling() {
        let all = [
            PowerState::Running,
            PowerState::Paused,
            PowerState::Shutoff,
            PowerState::Crashed,
            PowerState::Unknown,
        ];
        let names: Vec<&str> = all.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            names,
            ["RUNNING", "PAUSED", "SHUTOFF", "CRASHED", "UNKNOWN"]
        );
    }
}
