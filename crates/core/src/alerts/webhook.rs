//! Webhook delivery of alert notifications: a rate bound per (rule, VM), a bounded queue, and
//! a few delivery tasks that retry with backoff. Nothing here is ever waited for by ingest.
//!
//! - **Rate bound.** At most one notification per rule and VM per `notify_interval`. A newer
//!   one within the interval is held (replacing any held one) and sent when the interval ends,
//!   so the receiver always learns the latest state, at the bounded rate: a guest flapping its
//!   values or flooding errors cannot flood a receiver.
//! - **Queue.** `webhook_queue` notifications (one per URL) wait at most; beyond, new ones are
//!   dropped and counted. Ingest only ever `try_send`s.
//! - **Delivery.** `webhook_concurrency` requests in flight, each with `webhook_timeout`; a
//!   failure (no answer, or not 2xx) is retried after `webhook_backoff`, doubling, up to
//!   `webhook_attempts` attempts. Redirects are not followed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use infinibay_control::alert::{AlertEvent, alert_json};
use infinibay_control::vm::AlertStats;
use infinibay_store::AlertRule;

use crate::config::{AlertConfig, secs};
use crate::diag::{Deduper, Occurrence};

const TARGET: &str = "infinibay::alerts";

/// One POST to one URL.
#[derive(Debug)]
struct Delivery {
    url: String,
    body: Arc<Value>,
}

/// A notification held by the rate bound.
#[derive(Debug)]
struct Held {
    urls: Vec<String>,
    body: Arc<Value>,
}

#[derive(Debug, Default)]
struct Slot {
    last_sent: Option<Instant>,
    held: Option<Held>,
}

#[derive(Debug, Default)]
struct Counters {
    delivered: AtomicU64,
    failed: AtomicU64,
    retries: AtomicU64,
    deferred: AtomicU64,
    dropped: AtomicU64,
}

/// The sending side: rate bound and queue.
#[derive(Debug)]
pub struct Notifier {
    interval: Duration,
    slots: Mutex<HashMap<(String, String), Slot>>,
    tx: mpsc::Sender<Delivery>,
    counters: Arc<Counters>,
}

/// The delivery side, run by [`DeliveryWorker::run`] on the core's background tasks.
pub struct DeliveryWorker {
    rx: mpsc::Receiver<Delivery>,
    /// Why there is no client, when it could not be built (TLS setup): every notification
    /// then fails, counted and logged, and the host runs on.
    client: Result<reqwest::Client, String>,
    attempts: u32,
    backoff: Duration,
    concurrency: usize,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for DeliveryWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeliveryWorker").finish_non_exhaustive()
    }
}

/// A notifier and its worker, sharing one bounded queue.
pub fn channel(config: &AlertConfig) -> (Notifier, DeliveryWorker) {
    let (tx, rx) = mpsc::channel(config.webhook_queue.max(1));
    let counters = Arc::new(Counters::default());
    let client = reqwest::Client::builder()
        .timeout(secs(config.webhook_timeout_secs))
        .connect_timeout(secs(config.webhook_timeout_secs))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("infinibay/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| e.to_string());
    (
        Notifier {
            interval: secs(config.notify_interval_secs),
            slots: Mutex::new(HashMap::new()),
            tx,
            counters: counters.clone(),
        },
        DeliveryWorker {
            rx,
            client,
            attempts: config.webhook_attempts.max(1),
            backoff: secs(config.webhook_backoff_secs),
            concurrency: config.webhook_concurrency.max(1),
            counters,
        },
    )
}

/// The body POSTed for an alert event: `{"event": "alert:raised", "alert": {…}, "timestamp"}`.
pub fn body(event: &AlertEvent) -> Value {
    json!({
        "event": event.transition.event_name(),
        "alert": alert_json(&event.alert),
        "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    })
}

impl Notifier {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notify the rule's URLs of `event`, now or, within the rate bound's interval, when it
    /// ends. Never blocks.
    pub(crate) fn notify(&self, rule: &AlertRule, event: &AlertEvent) {
        if rule.webhook_urls.is_empty() {
            return;
        }
        let body = Arc::new(body(event));
        let now = Instant::now();
        let send_now = {
            let mut slots = self.lock();
            let slot = slots
                .entry((rule.id.clone(), event.alert.vm_id.clone()))
                .or_default();
            if slot
                .last_sent
                .is_none_or(|t| now.duration_since(t) >= self.interval)
            {
                slot.last_sent = Some(now);
                slot.held = None;
                true
            } else {
                slot.held = Some(Held {
                    urls: rule.webhook_urls.clone(),
                    body: body.clone(),
                });
                false
            }
        };
        if send_now {
            tracing::info!(target: TARGET, vm = %event.alert.vm_id, rule = %rule.id,
                alert = %event.alert.id, "{}: {}", event.transition.event_name(), event.alert.message);
            self.enqueue(&rule.webhook_urls, &body);
        } else {
            self.counters.deferred.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(target: TARGET, vm = %event.alert.vm_id, rule = %rule.id,
                "{} held by the notification rate bound", event.transition.event_name());
        }
    }

    /// Send the held notifications whose interval has ended; forget idle slots.
    pub(crate) fn send_due(&self) {
        let now = Instant::now();
        let mut due = Vec::new();
        {
            let mut slots = self.lock();
            slots.retain(|_, slot| {
                let free = slot
                    .last_sent
                    .is_none_or(|t| now.duration_since(t) >= self.interval);
                if free {
                    match slot.held.take() {
                        Some(held) => {
                            slot.last_sent = Some(now);
                            due.push(held);
                        }
                        None => return false,
                    }
                }
                true
            });
        }
        for held in due {
            self.enqueue(&held.urls, &held.body);
        }
    }

    fn enqueue(&self, urls: &[String], body: &Arc<Value>) {
        for url in urls {
            let delivery = Delivery {
                url: url.clone(),
                body: body.clone(),
            };
            if self.tx.try_send(delivery).is_err() {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Delivery counters (the engine adds its own).
    pub(crate) fn stats(&self) -> AlertStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let c = &self.counters;
        AlertStats {
            notifications_delivered: get(&c.delivered),
            notifications_failed: get(&c.failed),
            notification_retries: get(&c.retries),
            notifications_deferred: get(&c.deferred),
            notifications_dropped: get(&c.dropped),
            ..AlertStats::default()
        }
    }
}

impl DeliveryWorker {
    /// Deliver until `stop`; requests in flight and waits between retries end with it.
    pub async fn run(mut self, stop: CancellationToken) {
        let client = match self.client.clone() {
            Ok(client) => client,
            Err(e) => {
                tracing::error!(target: TARGET,
                    "webhook notifications are disabled: cannot build the HTTP client ({e})");
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        d = self.rx.recv() => match d {
                            Some(_) => { self.counters.failed.fetch_add(1, Ordering::Relaxed); }
                            None => return,
                        },
                    }
                }
            }
        };
        let slots = Arc::new(Semaphore::new(self.concurrency));
        let tasks = TaskTracker::new();
        let failures = Arc::new(Mutex::new(Deduper::new(Duration::from_secs(60))));
        loop {
            let delivery = tokio::select! {
                _ = stop.cancelled() => break,
                d = self.rx.recv() => match d {
                    Some(d) => d,
                    None => break,
                },
            };
            let permit = tokio::select! {
                _ = stop.cancelled() => break,
                p = slots.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let (client, counters, stop, failures) = (
                client.clone(),
                self.counters.clone(),
                stop.clone(),
                failures.clone(),
            );
            let (attempts, backoff) = (self.attempts, self.backoff);
            tasks.spawn(async move {
                let _permit = permit;
                tokio::select! {
                    _ = stop.cancelled() => {}
                    () = deliver(&client, &delivery, attempts, backoff, &counters, &failures) => {}
                }
            });
        }
        tasks.close();
        tasks.wait().await;
    }
}

async fn deliver(
    client: &reqwest::Client,
    delivery: &Delivery,
    attempts: u32,
    backoff: Duration,
    counters: &Counters,
    failures: &Mutex<Deduper>,
) {
    let mut wait = backoff;
    let mut last_error = String::new();
    for attempt in 1..=attempts {
        match client
            .post(&delivery.url)
            .json(delivery.body.as_ref())
            .send()
            .await
        {
            Ok(response) if response.status().is_success() => {
                counters.delivered.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Ok(response) => last_error = format!("HTTP {}", response.status()),
            Err(e) => last_error = e.to_string(),
        }
        if attempt < attempts {
            counters.retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(wait).await;
            wait = wait.saturating_mul(2);
        }
    }
    counters.failed.fetch_add(1, Ordering::Relaxed);
    let occurrence = failures
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .record("webhook_failed");
    match occurrence {
        Occurrence::First => tracing::warn!(target: TARGET, url = %delivery.url,
            "webhook notification given up after {attempts} attempts: {last_error}"),
        Occurrence::Summary(n) => tracing::warn!(target: TARGET, url = %delivery.url,
            "{n} more webhook notifications given up; latest: {last_error}"),
        Occurrence::Suppressed => {}
    }
}
