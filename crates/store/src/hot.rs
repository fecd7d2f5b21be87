//! What a store keeps in memory so the per-batch write path touches only what it must.
//!
//! * Known VM ids and their integer keys (what sample and rollup rows refer to): registration
//!   (`INSERT … ON CONFLICT DO NOTHING`) and the key lookup are needed only for ids this process
//!   has not seen yet.
//! * Each VM's newest sample (with its ~1 KB detail): `latest_sample` answers from here, and the
//!   `vm_latest_sample` row is rewritten at most every [`LATEST_PERSIST_INTERVAL`] per VM
//!   instead of once per sample; `flush` (and every `maintain`) writes the rest.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use chrono::{DateTime, Duration, Utc};

use crate::MetricSample;

/// How stale a VM's persisted latest sample may get while newer ones arrive.
pub(crate) const LATEST_PERSIST_INTERVAL: Duration = Duration::seconds(5);

#[derive(Debug)]
struct Latest {
    sample: MetricSample,
    /// Receive time of the sample the database holds, if any this process wrote or read.
    persisted: Option<DateTime<Utc>>,
}

/// The in-memory state of one store.
#[derive(Debug, Default)]
pub(crate) struct HotState {
    known: Mutex<HashMap<String, i64>>,
    latest: Mutex<HashMap<String, Latest>>,
}

/// What one batch has to write besides its raw rows (indices into the batch).
#[derive(Debug, Default)]
pub(crate) struct BatchPlan {
    /// Newest sample of each VM this process has not registered yet, in VM-id order.
    pub unknown: Vec<usize>,
    /// Samples to write to `vm_latest_sample`, in VM-id order.
    pub persist: Vec<usize>,
    /// The key of each sample's VM, where known.
    pub keys: Vec<Option<i64>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave these maps inconsistent in a way that
    // matters (worst case a row is written again), so keep going.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl HotState {
    /// `newest` holds one index per VM (its newest sample in the batch), in VM-id order.
    pub(crate) fn plan(&self, samples: &[MetricSample], newest: &[usize]) -> BatchPlan {
        let known = lock(&self.known);
        let latest = lock(&self.latest);
        let mut plan = BatchPlan {
            keys: samples
                .iter()
                .map(|s| known.get(&s.vm_id).copied())
                .collect(),
            ..BatchPlan::default()
        };
        for &i in newest {
            let sample = &samples[i];
            if plan.keys[i].is_none() {
                plan.unknown.push(i);
            }
            let due = match latest.get(&sample.vm_id) {
                None => true,
                Some(entry) => {
                    sample.received_at > entry.sample.received_at
                        && entry
                            .persisted
                            .is_none_or(|p| sample.received_at - p >= LATEST_PERSIST_INTERVAL)
                }
            };
            if due {
                plan.persist.push(i);
            }
        }
        plan
    }

    /// Records a committed batch and the keys of the VMs it registered.
    pub(crate) fn committed(
        &self,
        samples: &[MetricSample],
        newest: &[usize],
        persisted: &[usize],
        learned: HashMap<String, i64>,
    ) {
        lock(&self.known).extend(learned);
        let mut latest = lock(&self.latest);
        for &i in newest {
            let sample = &samples[i];
            match latest.get_mut(&sample.vm_id) {
                Some(entry) if entry.sample.received_at >= sample.received_at => {}
                Some(entry) => entry.sample = sample.clone(),
                None => {
                    latest.insert(
                        sample.vm_id.clone(),
                        Latest {
                            sample: sample.clone(),
                            persisted: None,
                        },
                    );
                }
            }
        }
        for &i in persisted {
            self.mark(&mut latest, &samples[i]);
        }
    }

    fn mark(&self, latest: &mut HashMap<String, Latest>, sample: &MetricSample) {
        if let Some(entry) = latest.get_mut(&sample.vm_id) {
            entry.persisted = Some(
                entry
                    .persisted
                    .map_or(sample.received_at, |p| p.max(sample.received_at)),
            );
        }
    }

    /// A registration this process did outside `insert_samples`.
    pub(crate) fn know(&self, vm_id: &str, key: i64) {
        lock(&self.known).insert(vm_id.to_owned(), key);
    }

    /// The newest sample of a VM, if this process has seen one.
    pub(crate) fn latest(&self, vm_id: &str) -> Option<MetricSample> {
        lock(&self.latest).get(vm_id).map(|e| e.sample.clone())
    }

    /// Time of the newest sample this process has seen from a VM.
    pub(crate) fn last_seen(&self, vm_id: &str) -> Option<DateTime<Utc>> {
        lock(&self.latest).get(vm_id).map(|e| e.sample.received_at)
    }

    /// Newest samples not yet written to `vm_latest_sample`, in VM-id order.
    pub(crate) fn pending(&self) -> Vec<MetricSample> {
        let mut pending: Vec<MetricSample> = lock(&self.latest)
            .values()
            .filter(|e| e.persisted.is_none_or(|p| p < e.sample.received_at))
            .map(|e| e.sample.clone())
            .collect();
        pending.sort_by(|a, b| a.vm_id.cmp(&b.vm_id));
        pending
    }

    /// After `pending` was written.
    pub(crate) fn flushed(&self, samples: &[MetricSample]) {
        let mut latest = lock(&self.latest);
        for sample in samples {
            self.mark(&mut latest, sample);
        }
    }

    /// Registrations of a batch whose commit failed (their keys may be handed out again).
    pub(crate) fn forget_all(&self, vm_ids: &[String]) {
        let mut known = lock(&self.known);
        for id in vm_ids {
            known.remove(id);
        }
    }

    /// A VM was deleted.
    pub(crate) fn forget(&self, vm_id: &str) {
        lock(&self.known).remove(vm_id);
        lock(&self.latest).remove(vm_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(vm: &str, secs: i64) -> MetricSample {
        MetricSample {
            vm_id: vm.into(),
            received_at: DateTime::from_timestamp(1_800_000_000 + secs, 0).expect("valid time"),
            guest_time: None,
            cpu_percent: 1.0,
            mem_used_kb: 1,
            mem_total_kb: 2,
            swap_used_kb: None,
            disk_used_percent: None,
            disk_read_bps: 0.0,
            disk_write_bps: 0.0,
            net_rx_bps: 0.0,
            net_tx_bps: 0.0,
            load1: 0.0,
            detail: Default::default(),
        }
    }

    fn commit_one(hot: &HotState, s: MetricSample) -> BatchPlan {
        let batch = vec![s];
        let plan = hot.plan(&batch, &[0]);
        let learned = if plan.unknown.is_empty() {
            HashMap::new()
        } else {
            HashMap::from([(batch[0].vm_id.clone(), 7)])
        };
        hot.committed(&batch, &[0], &plan.persist, learned);
        plan
    }

    #[test]
    fn newest_sample_is_written_at_most_every_interval_and_flush_writes_the_rest() {
        let hot = HotState::default();
        let first = commit_one(&hot, sample("a", 0));
        assert_eq!((first.unknown.len(), first.persist.len()), (1, 1));
        let second = commit_one(&hot, sample("a", 1));
        assert_eq!(second.keys, vec![Some(7)], "the key is remembered");
        assert!(second.unknown.is_empty() && second.persist.is_empty());
        assert_eq!(
            hot.latest("a").map(|s| s.received_at),
            Some(sample("a", 1).received_at)
        );
        assert_eq!(
            hot.pending().len(),
            1,
            "one sample waits for the next write"
        );
        let sixth = commit_one(&hot, sample("a", 5));
        assert_eq!(
            sixth.persist.len(),
            1,
            "5 s after the last write it is written again"
        );
        assert!(hot.pending().is_empty());
        commit_one(&hot, sample("a", 6));
        let pending = hot.pending();
        hot.flushed(&pending);
        assert!(hot.pending().is_empty());
    }

    #[test]
    fn an_older_sample_never_replaces_the_newest() {
        let hot = HotState::default();
        commit_one(&hot, sample("a", 10));
        let late = commit_one(&hot, sample("a", 3));
        assert!(late.persist.is_empty());
        assert_eq!(hot.last_seen("a"), Some(sample("a", 10).received_at));
        hot.forget("a");
        assert!(hot.latest("a").is_none());
        assert_eq!(hot.plan(&[sample("a", 11)], &[0]).unknown, vec![0]);
    }
}
