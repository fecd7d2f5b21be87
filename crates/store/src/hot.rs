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

    /// A VM was deleted.
    pub(crate) fn forget(&self, vm_id: &str) {
        lock(&self.known).remove(vm_id);
        lock(&self.latest).remove(vm_id);
    }
}
