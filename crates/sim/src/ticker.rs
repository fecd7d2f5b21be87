//! One task paces every periodic VM.
//!
//! The interval is cut into slots of at least 10 ms and each VM gets a fixed slot by index, so
//! 10,000 VMs at 1 s are woken 100 at a time every 10 ms — spread over the second as real VMs
//! booted at different times are — instead of 10,000 timers or one burst per second.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

use crate::vm::VmSlot;

/// Shortest slot: finer slots cost wake-ups without spreading the load any better.
pub const MIN_SLOT: Duration = Duration::from_millis(10);

/// How many slots an interval is cut into for `vms` VMs.
pub fn slot_count(vms: usize, interval: Duration) -> usize {
    let by_time = (interval.as_nanos() / MIN_SLOT.as_nanos()).max(1) as usize;
    by_time.min(vms).max(1)
}

/// Wake each VM once per `interval`, in its slot, until shutdown.
pub async fn run_ticker(
    vms: Vec<Arc<VmSlot>>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    if vms.is_empty() {
        return;
    }
    let slots = slot_count(vms.len(), interval);
    let slot_len = interval / slots as u32;
    let mut timer = tokio::time::interval(slot_len);
    // When the machine is overloaded, late slots fire at once; the VMs coalesce ticks anyway.
    timer.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let count = vms.len();
    let mut slot = 0usize;
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = timer.tick() => {}
        }
        // VMs whose index maps to this slot: [slot*count/slots, (slot+1)*count/slots).
        let from = slot * count / slots;
        let to = (slot + 1) * count / slots;
        for vm in &vms[from..to] {
            vm.ticks_issued.fetch_add(1, Relaxed);
            // A stored permit means the VM has not consumed the previous tick: it will send
            // one sample for both (the newest), which it counts as coalesced.
            vm.tick.notify_one();
        }
        slot = (slot + 1) % slots;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_thousand_vms_at_one_second_get_hundred_slots_of_ten_ms() {
        assert_eq!(slot_count(10_000, Duration::from_secs(1)), 100);
        assert_eq!(slot_count(3, Duration::from_secs(1)), 3);
        assert_eq!(slot_count(10_000, Duration::from_millis(5)), 1);
    }
}
