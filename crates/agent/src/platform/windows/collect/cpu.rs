//! CPU time per core, from `NtQuerySystemInformation(SystemProcessorPerformanceInformation)`:
//! the counters Task Manager uses, in 100 ns units since boot.

use windows_sys::Wdk::System::SystemInformation::{
    NtQuerySystemInformation, SystemProcessorPerformanceInformation,
};
use windows_sys::Win32::Foundation::RtlNtStatusToDosError;
use windows_sys::Win32::System::WindowsProgramming::SYSTEM_PROCESSOR_PERFORMANCE_INFORMATION;

use super::round2;

/// Busy and total time of one core (or all), in 100 ns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Times {
    /// Kernel (without idle) + user.
    pub busy: u64,
    /// Kernel (which includes idle) + user.
    pub total: u64,
}

impl Times {
    /// The sum over cores.
    pub fn sum(cores: &[Times]) -> Times {
        cores.iter().fold(Times::default(), |acc, t| Times {
            busy: acc.busy + t.busy,
            total: acc.total + t.total,
        })
    }
}

/// Most cores read (one processor group; a VM has far fewer).
const MAX_CORES: usize = 64;

/// The counters of each core.
pub fn per_core() -> std::io::Result<Vec<Times>> {
    let mut info = [SYSTEM_PROCESSOR_PERFORMANCE_INFORMATION::default(); MAX_CORES];
    let mut returned = 0u32;
    // SAFETY: `info` is a writable array of the size passed.
    let status = unsafe {
        NtQuerySystemInformation(
            SystemProcessorPerformanceInformation,
            info.as_mut_ptr().cast(),
            std::mem::size_of_val(&info) as u32,
            &mut returned,
        )
    };
    if status < 0 {
        // SAFETY: a pure conversion of a status code.
        let code = unsafe { RtlNtStatusToDosError(status) };
        return Err(std::io::Error::from_raw_os_error(code as i32));
    }
    let n = returned as usize / std::mem::size_of::<SYSTEM_PROCESSOR_PERFORMANCE_INFORMATION>();
    Ok(info[..n.min(MAX_CORES)]
        .iter()
        .map(|c| {
            let idle = c.IdleTime.max(0) as u64;
            let kernel = c.KernelTime.max(0) as u64;
            let user = c.UserTime.max(0) as u64;
            Times {
                busy: kernel.saturating_sub(idle) + user,
                total: kernel + user,
            }
        })
        .collect())
}

/// Percent busy between two readings; without a previous one, since boot.
pub fn usage_percent(before: Option<Times>, now: Times) -> f64 {
    let (busy, total) = match before {
        Some(b) if now.total >= b.total && now.busy >= b.busy => {
            (now.busy - b.busy, now.total - b.total)
        }
        _ => (now.busy, now.total),
    };
    if total == 0 {
        return 0.0;
    }
    round2((busy as f64 / total as f64 * 100.0).clamp(0.0, 100.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_the_busy_share_of_the_elapsed_time() {
        let before = Times {
            busy: 1_000,
            total: 10_000,
        };
        let now = Times {
            busy: 1_750,
            total: 11_000,
        };
        assert_eq!(usage_percent(Some(before), now), 75.0);
        assert_eq!(usage_percent(None, now), 15.91);
        assert_eq!(usage_percent(Some(now), now), 0.0);
    }

    #[test]
    fn this_machine_has_cores_whose_busy_time_fits_their_total() {
        let cores = per_core().expect("processor counters");
        assert_eq!(
            cores.len(),
            std::thread::available_parallelism().map_or(1, usize::from)
        );
        assert!(cores.iter().all(|c| c.busy <= c.total && c.total > 0));
    }
}
