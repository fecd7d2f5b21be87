//! infinibay scale-out over NATS: `infinibay node` (one per hypervisor) and `infinibay api`
//! (any number of replicas) share state through NATS and PostgreSQL, never through one
//! process's memory (seed 004's lesson). `docs/scale-out.md` is the design; this crate is
//! both ends of the one narrow interface, [`infinibay_control::VmControl`], carried over NATS:
//!
//! - [`bus::NatsBus`]: the core's [`infinibay_core::Bus`] over NATS subjects. A node publishes
//!   its events through it (never blocking ingest: a bounded outbox, oldest dropped and counted
//!   while NATS is away); an API subscribes through it.
//! - [`node::NodeServer`]: a node answers requests for its VMs by request/reply, one subject
//!   per VM (so that a VM no node serves gets "no responders" at once), answers fleet queries
//!   on its own subject, and sends heartbeats.
//! - [`api::NatsControl`]: the API's [`infinibay_control::VmControl`]: commands as requests,
//!   the [`directory::Directory`] of the fleet's VMs kept from heartbeats and status events
//!   (a node that stops beating has its VMs marked offline within the liveness window), and
//!   subscriptions that merge NATS with what the directory concludes.
//! - [`link::NatsLink`]: one NATS connection with its state (connected or not, since when,
//!   reconnects), for `/healthz` and `/metrics`.
//! - [`wire`] and [`subjects`]: what travels, and where.
//!
//! Everything on the wire is JSON of the interface's own serde types: a new event variant or
//! a new field needs no change here.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod api;
pub mod bus;
pub mod directory;
pub mod link;
pub mod metrics;
pub mod node;
pub mod rpc;
pub mod subjects;
pub mod wire;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use api::NatsControl;
pub use bus::{BusStats, NatsBus};
pub use directory::{Directory, NodeSummary};
pub use link::{LinkStats, NatsLink};
pub use node::NodeServer;

/// The `[cluster]` section of the configuration: how `infinibay node` and `infinibay api`
/// reach NATS and judge each other alive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// NATS server URL, or several separated by commas (default `nats://127.0.0.1:4222`).
    pub nats_url: String,
    /// This node's name on the subjects (default: the machine's host name). Letters, digits,
    /// `-` and `_` only; two nodes with one name are refused at start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// Seconds between a node's heartbeats (default 1).
    pub heartbeat_interval_secs: f64,
    /// A node with no heartbeat for this many seconds is dead and its VMs offline (default 5).
    pub liveness_window_secs: f64,
    /// Live events a node keeps while NATS is away; beyond, the oldest are dropped and counted
    /// (default 16,384: a few seconds of 5,000 VMs). Storage never waits for NATS.
    pub event_buffer: usize,
    /// Seconds an API waits for a node's answer to anything but a command (default 5; a
    /// command waits as long as its own timeout).
    pub request_timeout_secs: f64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            nats_url: "nats://127.0.0.1:4222".to_owned(),
            node_id: None,
            heartbeat_interval_secs: 1.0,
            liveness_window_secs: 5.0,
            event_buffer: 16_384,
            request_timeout_secs: 5.0,
        }
    }
}

/// A setting of [`ClusterConfig`] that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidClusterConfig(pub String);

impl ClusterConfig {
    /// Reject values that would make the fleet misbehave rather than fail.
    pub fn validate(&self) -> Result<(), InvalidClusterConfig> {
        let bad = |m: String| Err(InvalidClusterConfig(m));
        for (name, value) in [
            (
                "cluster.heartbeat_interval_secs",
                self.heartbeat_interval_secs,
            ),
            ("cluster.liveness_window_secs", self.liveness_window_secs),
            ("cluster.request_timeout_secs", self.request_timeout_secs),
        ] {
            if !(value.is_finite() && value > 0.0 && value < 86_400.0) {
                return bad(format!(
                    "{name} must be a positive number of seconds, got {value}"
                ));
            }
        }
        if self.liveness_window_secs < 2.0 * self.heartbeat_interval_secs {
            return bad(format!(
                "cluster.liveness_window_secs ({}) must be at least twice cluster.heartbeat_interval_secs ({}): one late heartbeat must not kill a node",
                self.liveness_window_secs, self.heartbeat_interval_secs
            ));
        }
        if self.event_buffer == 0 {
            return bad("cluster.event_buffer must be at least 1".into());
        }
        if self.nats_url.trim().is_empty() {
            return bad("cluster.nats_url is empty".into());
        }
        if let Some(id) = &self.node_id
            && !subjects::is_token(id)
        {
            return bad(format!(
                "cluster.node_id `{id}` may hold only letters, digits, `-` and `_` (it is a NATS subject token)"
            ));
        }
        Ok(())
    }

    /// The node's name: the configured one, else the host name made into a subject token.
    pub fn node_id_or_hostname(&self) -> String {
        if let Some(id) = &self.node_id {
            return id.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_default();
        let token: String = host
            .trim()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        if token.is_empty() {
            "node".to_owned()
        } else {
            token
        }
    }

    /// [`ClusterConfig::heartbeat_interval_secs`] as a duration.
    pub fn heartbeat_interval(&self) -> Duration {
        secs(self.heartbeat_interval_secs)
    }

    /// [`ClusterConfig::liveness_window_secs`] as a duration.
    pub fn liveness_window(&self) -> Duration {
        secs(self.liveness_window_secs)
    }

    /// [`ClusterConfig::request_timeout_secs`] as a duration.
    pub fn request_timeout(&self) -> Duration {
        secs(self.request_timeout_secs)
    }
}

fn secs(value: f64) -> Duration {
    Duration::try_from_secs_f64(value).unwrap_or(Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_liveness_window_shorter_than_two_heartbeats_is_refused() {
        let config = ClusterConfig {
            heartbeat_interval_secs: 1.0,
            liveness_window_secs: 1.5,
            ..ClusterConfig::default()
        };
        let err = config.validate().expect_err("too short");
        assert!(err.to_string().contains("twice"), "{err}");
        assert!(ClusterConfig::default().validate().is_ok());
    }

    #[test]
    fn node_ids_must_be_subject_tokens() {
        for bad in ["a.b", "a*", ">", "a b", ""] {
            let config = ClusterConfig {
                node_id: Some(bad.into()),
                ..ClusterConfig::default()
            };
            assert!(config.validate().is_err(), "{bad:?} accepted");
        }
        let config = ClusterConfig {
            node_id: Some("hv-01_a".into()),
            ..ClusterConfig::default()
        };
        assert!(config.validate().is_ok());
        assert!(subjects::is_token(
            &ClusterConfig::default().node_id_or_hostname()
        ));
    }
}
