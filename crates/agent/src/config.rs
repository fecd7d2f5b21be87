//! `config.toml`: what the agent collects, how often, which commands it accepts and within
//! which limits. Every field has a default, so an empty (or absent) file is a valid config.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A config that could not be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file exists but could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (unknown keys are refused, to catch typos).
    #[error("invalid config {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's explanation, with the line.
        message: String,
    },
    /// A value is out of its range.
    #[error("invalid config value: {0}")]
    Value(String),
}

/// The whole file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Seconds between `system_metrics` / `process_snapshot` samples (1 at least).
    pub collection_interval: u64,
    /// Log filter when `RUST_LOG` is not set (`error`, `warn`, `info`, `debug`, `trace`).
    pub log_level: String,
    /// The service's name: the systemd unit, or the Windows service (installed under it).
    pub service_name: String,
    /// Port path; empty means auto-detect.
    pub virtio_serial_path: String,
    /// The VM id this guest was installed for; `INFINIBAY_VM_ID` wins. Informational only.
    pub vm_id: String,
    /// Which commands are accepted.
    pub policy: PolicyConfig,
    /// Resource limits.
    pub limits: Limits,
    /// Which collectors run at start (the host can change this with `configure`).
    pub collectors: CollectorsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            collection_interval: 30,
            log_level: "info".into(),
            service_name: "infiniservice".into(),
            virtio_serial_path: String::new(),
            vm_id: String::new(),
            policy: PolicyConfig::default(),
            limits: Limits::default(),
            collectors: CollectorsConfig::default(),
        }
    }
}

/// `[policy]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    /// Run `UnsafeCommand`s (raw shell). Off unless the operator opts in.
    pub allow_unsafe: bool,
    /// When not empty, only these safe actions run.
    pub allowed_safe_actions: Vec<String>,
    /// These safe actions never run (wins over `allowed_safe_actions`).
    pub denied_safe_actions: Vec<String>,
}

/// `[limits]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Commands running at once; more are answered `busy`.
    pub max_concurrent_commands: usize,
    /// Bytes kept of stdout, and separately of stderr, per command.
    pub max_output_bytes: usize,
    /// Seconds a command may run when it names no timeout.
    pub default_timeout_secs: u64,
    /// Longest timeout a command may ask for.
    pub max_timeout_secs: u64,
    /// Processes in a `process_snapshot`.
    pub process_top_n: usize,
    /// Seconds between inventory checks (applications, services, ports).
    pub inventory_interval: u64,
    /// Longest line the host accepts (the protocol's 1 MiB default). A response is trimmed
    /// (its output cut and flagged `*_truncated`) so that its line fits: a longer line would
    /// be dropped by the host and the command would go unanswered.
    pub max_line_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_concurrent_commands: 4,
            max_output_bytes: 1024 * 1024,
            default_timeout_secs: 60,
            max_timeout_secs: 24 * 3600,
            process_top_n: 50,
            inventory_interval: 300,
            max_line_bytes: infinibay_protocol::DEFAULT_MAX_LINE,
        }
    }
}

/// `[collectors]`: on/off per collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CollectorsConfig {
    /// `system_metrics`.
    pub system_metrics: bool,
    /// `process_snapshot`.
    pub process_snapshot: bool,
    /// `port_usage`.
    pub port_usage: bool,
    /// `application_usage`.
    pub application_usage: bool,
    /// `service_inventory`.
    pub service_inventory: bool,
}

impl Default for CollectorsConfig {
    fn default() -> Self {
        Self {
            system_metrics: true,
            process_snapshot: true,
            port_usage: true,
            application_usage: true,
            service_inventory: true,
        }
    }
}

impl Config {
    /// Parse a config from TOML text; `path` is for messages only.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        // Windows editors (Notepad, PowerShell 5's UTF8) start the file with a byte-order mark.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        config.check()?;
        Ok(config)
    }

    /// Read `path`. A missing file at the default location gives the defaults (an agent started
    /// by hand without an installer); a missing file that was named explicitly is an error.
    pub fn load(path: &Path, explicit: bool) -> Result<Self, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_toml(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => Ok(Self::default()),
            Err(source) => Err(ConfigError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Range checks that serde cannot express.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.collection_interval == 0 {
            return Err(ConfigError::Value(
                "collection_interval must be at least 1".into(),
            ));
        }
        let l = &self.limits;
        if l.max_concurrent_commands == 0 {
            return Err(ConfigError::Value(
                "limits.max_concurrent_commands must be at least 1".into(),
            ));
        }
        if l.default_timeout_secs == 0 || l.max_timeout_secs < l.default_timeout_secs {
            return Err(ConfigError::Value(
                "limits.default_timeout_secs must be in 1..=limits.max_timeout_secs".into(),
            ));
        }
        if l.max_line_bytes < 64 * 1024 {
            return Err(ConfigError::Value(
                "limits.max_line_bytes must be at least 65536".into(),
            ));
        }
        if l.inventory_interval == 0 {
            return Err(ConfigError::Value(
                "limits.inventory_interval must be at least 1".into(),
            ));
        }
        for name in self
            .policy
            .allowed_safe_actions
            .iter()
            .chain(&self.policy.denied_safe_actions)
        {
            if !infinibay_protocol::message::command::KNOWN_SAFE_ACTIONS.contains(&name.as_str()) {
                return Err(ConfigError::Value(format!(
                    "policy names an unknown safe action `{name}`"
                )));
            }
        }
        Ok(())
    }

    /// `collection_interval` as a duration.
    pub fn collection_period(&self) -> Duration {
        Duration::from_secs(self.collection_interval.max(1))
    }

    /// The VM id: `INFINIBAY_VM_ID` if set, else the config's, else none.
    pub fn effective_vm_id(&self, env_vm_id: Option<String>) -> Option<String> {
        env_vm_id
            .filter(|v| !v.trim().is_empty())
            .or_else(|| Some(self.vm_id.clone()).filter(|v| !v.trim().is_empty()))
    }
}

/// The log level of a `log_level` or `RUST_LOG` value. `RUST_LOG` directives such as
/// `infiniservice=debug,warn` are reduced to their most verbose level (the agent is one crate).
pub fn parse_level(spec: &str) -> Option<tracing::Level> {
    spec.split(',')
        .filter_map(|directive| {
            let level = directive.rsplit('=').next().unwrap_or(directive).trim();
            match level.to_ascii_lowercase().as_str() {
                "error" => Some(tracing::Level::ERROR),
                "warn" | "warning" => Some(tracing::Level::WARN),
                "info" => Some(tracing::Level::INFO),
                "debug" => Some(tracing::Level::DEBUG),
                "trace" => Some(tracing::Level::TRACE),
                _ => None,
            }
        })
        .max()
}

#[cfg(test)]
mod tests {
    #[test]
    fn log_levels_parse_from_plain_names_and_directives() {
        assert_eq!(parse_level("warn"), Some(tracing::Level::WARN));
        assert_eq!(
            parse_level("infiniservice=debug,warn"),
            Some(tracing::Level::DEBUG)
        );
        assert_eq!(parse_level("nonsense"), None);
    }

    use super::*;

    #[test]
    fn empty_file_gives_defaults_with_unsafe_off() {
        let c = Config::from_toml("", Path::new("x")).expect("empty config is valid");
        assert_eq!(c, Config::default());
        assert!(!c.policy.allow_unsafe);
        assert_eq!(c.limits.max_output_bytes, 1024 * 1024);
        assert_eq!(c.limits.default_timeout_secs, 60);
        assert_eq!(c.limits.process_top_n, 50);
        assert_eq!(c.limits.inventory_interval, 300);
    }

    #[test]
    fn seed_config_is_accepted() {
        let text = "collection_interval = 30\nlog_level = \"info\"\nservice_name = \"infiniservice\"\nvirtio_serial_path = \"\"  # Auto-detected if empty\n";
        let c = Config::from_toml(text, Path::new("x")).expect("seed config parses");
        assert_eq!(c.collection_interval, 30);
    }

    #[test]
    fn typos_and_bad_values_are_refused() {
        assert!(Config::from_toml("colection_interval = 3", Path::new("x")).is_err());
        assert!(Config::from_toml("collection_interval = 0", Path::new("x")).is_err());
        assert!(
            Config::from_toml(
                "[policy]\ndenied_safe_actions = [\"FormatDisk\"]",
                Path::new("x")
            )
            .is_err()
        );
        assert!(
            Config::from_toml("[limits]\nmax_concurrent_commands = 0", Path::new("x")).is_err()
        );
    }

    #[test]
    fn a_byte_order_mark_and_crlf_line_ends_are_accepted() {
        let text = "\u{feff}collection_interval = 7\r\n[policy]\r\nallow_unsafe = true\r\n";
        let c = Config::from_toml(text, Path::new("x")).expect("Windows-edited config parses");
        assert_eq!(c.collection_interval, 7);
        assert!(c.policy.allow_unsafe);
    }

    #[test]
    fn env_vm_id_wins_over_config() {
        let c = Config {
            vm_id: "from-config".into(),
            ..Config::default()
        };
        assert_eq!(
            c.effective_vm_id(Some("from-env".into())).as_deref(),
            Some("from-env")
        );
        assert_eq!(
            c.effective_vm_id(Some(" ".into())).as_deref(),
            Some("from-config")
        );
        assert_eq!(Config::default().effective_vm_id(None), None);
    }

    #[test]
    fn missing_default_file_is_defaults_but_missing_named_file_is_an_error() {
        let p = Path::new("/nonexistent/infiniservice/config.toml");
        assert!(Config::load(p, false).is_ok());
        assert!(Config::load(p, true).is_err());
    }
}
