//! What a VM's agent collects and how often, as a user asks for it (`setVmTelemetry`), its
//! checks, and the `configure` message it becomes.

use serde::{Deserialize, Serialize};

use infinibay_protocol::message::{CollectorSwitches, Configure};
use infinibay_store::VmTelemetry;

/// The agent's collectors, as `configure` names them.
pub const COLLECTORS: [&str; 5] = [
    "system_metrics",
    "process_snapshot",
    "port_usage",
    "application_usage",
    "service_inventory",
];

/// Shortest collection interval, seconds (the agent's own floor).
pub const MIN_INTERVAL_SECS: u32 = 1;
/// Longest collection interval, seconds (an hour: longer would leave charts empty and the
/// liveness check with nothing but pings).
pub const MAX_INTERVAL_SECS: u32 = 3_600;

/// Collection settings as a user asks for them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TelemetryRequest {
    /// Seconds between samples.
    pub interval_secs: u32,
    /// The collectors that run (names of [`COLLECTORS`]); the others are turned off.
    pub collectors: Vec<String>,
}

impl TelemetryRequest {
    /// The collectors sorted and without repeats, or what is wrong.
    pub fn checked_collectors(&self) -> Result<Vec<String>, String> {
        if !(MIN_INTERVAL_SECS..=MAX_INTERVAL_SECS).contains(&self.interval_secs) {
            return Err(format!(
                "interval {} s is out of range ({MIN_INTERVAL_SECS}–{MAX_INTERVAL_SECS})",
                self.interval_secs
            ));
        }
        let mut collectors = Vec::with_capacity(self.collectors.len());
        for name in &self.collectors {
            if !COLLECTORS.contains(&name.as_str()) {
                return Err(format!(
                    "unknown collector `{}` (known: {})",
                    name.escape_debug(),
                    COLLECTORS.join(", ")
                ));
            }
            collectors.push(name.clone());
        }
        collectors.sort();
        collectors.dedup();
        Ok(collectors)
    }
}

/// The `configure` message for stored settings: every collector named on or off.
pub fn configure(settings: &VmTelemetry, id: Option<String>) -> Configure {
    let on = |name: &str| Some(settings.collectors.iter().any(|c| c == name));
    Configure {
        id,
        collection_interval: Some(u64::from(settings.interval_secs)),
        inventory_interval: None,
        collectors: Some(CollectorSwitches {
            system_metrics: on("system_metrics"),
            process_snapshot: on("process_snapshot"),
            port_usage: on("port_usage"),
            application_usage: on("application_usage"),
            service_inventory: on("service_inventory"),
        }),
    }
}

/// What `setVmTelemetry` did: the settings stored, and whether the agent confirmed them now
/// (otherwise they are sent when it next connects).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TelemetryOutcome {
    /// As stored (with `applied_at` when confirmed).
    pub settings: VmTelemetry,
    /// The agent answered the `configure` now.
    pub applied: bool,
    /// Why it was not confirmed now (offline, no answer, the agent refused).
    pub pending_reason: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_and_collector_names_are_checked_and_collectors_sorted() {
        let ok = TelemetryRequest {
            interval_secs: 5,
            collectors: vec![
                "process_snapshot".into(),
                "system_metrics".into(),
                "process_snapshot".into(),
            ],
        };
        assert_eq!(
            ok.checked_collectors(),
            Ok(vec![
                "process_snapshot".to_owned(),
                "system_metrics".to_owned()
            ])
        );
        let zero = TelemetryRequest {
            interval_secs: 0,
            ..ok.clone()
        };
        assert!(
            zero.checked_collectors()
                .expect_err("0 s")
                .contains("out of range")
        );
        let bogus = TelemetryRequest {
            collectors: vec!["keylogger".into()],
            ..ok
        };
        assert!(
            bogus
                .checked_collectors()
                .expect_err("unknown")
                .contains("unknown collector")
        );
    }

    #[test]
    fn configure_names_every_collector_on_or_off() {
        let settings = VmTelemetry {
            vm_id: "v".into(),
            interval_secs: 7,
            collectors: vec!["system_metrics".into()],
            updated_by: None,
            updated_at: chrono::Utc::now(),
            applied_at: None,
        };
        let c = configure(&settings, Some("cfg".into()));
        assert_eq!(c.collection_interval, Some(7));
        let switches = c.collectors.expect("switches");
        assert_eq!(switches.system_metrics, Some(true));
        assert_eq!(switches.process_snapshot, Some(false));
        assert_eq!(switches.service_inventory, Some(false));
    }
}
