//! Configuration: defaults, then a TOML file, then `INFINIBAY_*` environment variables, then
//! command-line flags. Each layer overrides the one before.
//!
//! Every key of the TOML file is also an environment variable: upper-case, prefixed with
//! `INFINIBAY_`, with `__` between a section and its key (`[ingest] rate_per_sec` is
//! `INFINIBAY_INGEST__RATE_PER_SEC`). The file is read with `deny_unknown_fields`, so that a
//! typo is an error at start and not a silently ignored setting.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Prefix of the environment variables read as configuration.
pub const ENV_PREFIX: &str = "INFINIBAY_";

/// `INFINIBAY_*` variables that belong to other parts of the system, not to this
/// configuration: the config file's path, the first administrator's password, the CLI's
/// server, token and password inputs, the test suite's PostgreSQL URL, and the guest agent's
/// VM id (set on machines running both).
const NOT_SETTINGS: &[&str] = &[
    "CONFIG",
    "ADMIN_PASSWORD",
    "NEW_PASSWORD",
    "PASSWORD",
    "SERVER",
    "TOKEN",
    "TEST_PG_URL",
    "VM_ID",
];

/// Why the configuration could not be built.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown keys / wrong types.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The merged settings (file + environment + flags) do not form a valid configuration.
    #[error("invalid configuration (after applying INFINIBAY_* environment variables): {0}")]
    Invalid(String),
}

/// The whole configuration of the host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// HTTP listen address (default `127.0.0.1:8080`).
    pub listen: SocketAddr,
    /// Directory for the embedded database and other state (default `./data`).
    pub data_dir: PathBuf,
    /// Where QEMU creates the per-VM sockets (default `/opt/infinibay/sockets`, seed 000).
    pub socket_dir: PathBuf,
    /// Database URL (`sqlite://…` or `postgres://…`); default: SQLite file in `data_dir`.
    pub database: Option<String>,
    /// Socket discovery.
    pub discovery: DiscoveryConfig,
    /// Per-VM connections and liveness.
    pub connection: ConnectionConfig,
    /// Ingest limits.
    pub ingest: IngestConfig,
    /// The queue to storage and the writer.
    pub store: StoreConfig,
    /// Roll-ups and retention.
    pub maintenance: MaintenanceConfig,
    /// Commands to guests.
    pub commands: CommandConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./data"),
            socket_dir: PathBuf::from("/opt/infinibay/sockets"),
            database: None,
            discovery: DiscoveryConfig::default(),
            connection: ConnectionConfig::default(),
            ingest: IngestConfig::default(),
            store: StoreConfig::default(),
            maintenance: MaintenanceConfig::default(),
            commands: CommandConfig::default(),
        }
    }
}

/// Socket discovery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiscoveryConfig {
    /// Full rescan of the socket directory, in seconds, besides inotify (which can overflow or
    /// be unavailable on some file systems). Default 5.
    pub rescan_interval_secs: f64,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        Self {
            rescan_interval_secs: 5.0,
        }
    }
}

/// Per-VM connections, reconnect backoff and liveness.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionConfig {
    /// First reconnect delay in seconds (default 0.5).
    pub backoff_initial_secs: f64,
    /// Largest reconnect delay in seconds (default 60).
    pub backoff_max_secs: f64,
    /// Seconds between pings on a connected socket (default 10).
    pub ping_interval_secs: f64,
    /// The VM goes offline after this many ping intervals without a valid message (default 3).
    pub missed_pings: u32,
    /// Host→guest messages queued per connection before commands are refused (default 64).
    pub outbound_queue: usize,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        Self {
            backoff_initial_secs: 0.5,
            backoff_max_secs: 60.0,
            ping_interval_secs: 10.0,
            missed_pings: 3,
            outbound_queue: 64,
        }
    }
}

/// Ingest limits per VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Longest accepted line in bytes (default 1 MiB, the protocol's).
    pub max_line_bytes: usize,
    /// Sustained messages per second per VM (default 10).
    pub rate_per_sec: f64,
    /// Messages a VM may send in a burst above the rate (default 50).
    pub burst: u32,
    /// Bytes read from a socket at once (default 16 KiB: a dozen small samples per read,
    /// while 10,000 connections × 64 KiB would be 640 MB once touched).
    pub read_buffer_bytes: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            max_line_bytes: infinibay_protocol::DEFAULT_MAX_LINE,
            rate_per_sec: 10.0,
            burst: 50,
            read_buffer_bytes: 16 * 1024,
        }
    }
}

/// The queue between ingest and storage, and the writer draining it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// The writer flushes at least this often, in milliseconds (default 200).
    pub flush_interval_ms: u64,
    /// Samples per storage transaction at most (default 5,000).
    pub max_batch: usize,
    /// Samples waiting for storage, all VMs together, before coalescing starts (default 20,000).
    pub pending_samples_max: usize,
    /// Samples waiting per VM before its oldest is dropped (default 16).
    pub pending_samples_per_vm: usize,
    /// VM errors waiting for storage before new ones are dropped (default 1,000).
    pub pending_errors_max: usize,
    /// VM errors waiting per VM (default 10).
    pub pending_errors_per_vm: usize,
    /// Command log entries waiting (default 1,000).
    pub pending_command_logs_max: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            flush_interval_ms: 200,
            max_batch: 5_000,
            pending_samples_max: 20_000,
            pending_samples_per_vm: 16,
            pending_errors_max: 1_000,
            pending_errors_per_vm: 10,
            pending_command_logs_max: 1_000,
        }
    }
}

/// Roll-ups and retention.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MaintenanceConfig {
    /// Seconds between maintenance passes (default 60).
    pub interval_secs: f64,
    /// Rows per statement (default 5,000).
    pub batch: u32,
    /// Raw samples kept, hours (default 48).
    pub raw_retention_hours: u32,
    /// Minute roll-ups kept, days (default 30).
    pub minute_retention_days: u32,
    /// Hour roll-ups kept, days (default 365).
    pub hour_retention_days: u32,
    /// Service state changes, VM errors and command log entries kept, days (default 90).
    pub event_retention_days: u32,
}

impl Default for MaintenanceConfig {
    fn default() -> Self {
        Self {
            interval_secs: 60.0,
            batch: 5_000,
            raw_retention_hours: 48,
            minute_retention_days: 30,
            hour_retention_days: 365,
            event_retention_days: 90,
        }
    }
}

impl MaintenanceConfig {
    /// The retention as the store takes it.
    pub fn retention(&self) -> infinibay_store::Retention {
        infinibay_store::Retention {
            raw: chrono::Duration::hours(i64::from(self.raw_retention_hours)),
            minute: chrono::Duration::days(i64::from(self.minute_retention_days)),
            hour: chrono::Duration::days(i64::from(self.hour_retention_days)),
            events: chrono::Duration::days(i64::from(self.event_retention_days)),
        }
    }
}

/// Commands to guests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CommandConfig {
    /// Default time to wait for a response, seconds (default 30).
    pub default_timeout_secs: f64,
    /// Commands waiting for a response per VM at most (default 32).
    pub max_pending_per_vm: usize,
}

impl Default for CommandConfig {
    fn default() -> Self {
        Self {
            default_timeout_secs: 30.0,
            max_pending_per_vm: 32,
        }
    }
}

/// Seconds as a [`Duration`], refusing what is not a finite positive number.
pub(crate) fn secs(value: f64) -> Duration {
    Duration::try_from_secs_f64(value).unwrap_or(Duration::ZERO)
}

/// Values given on the command line; `None` keeps the lower layers' value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    /// `--listen`.
    pub listen: Option<SocketAddr>,
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--socket-dir`.
    pub socket_dir: Option<PathBuf>,
    /// `--database`.
    pub database: Option<String>,
}

impl Config {
    /// Build the configuration: defaults, `file` (when given), `INFINIBAY_*` from `env`, then
    /// `overrides`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Self, ConfigError> {
        let mut table = match toml::Value::try_from(Config::default()) {
            Ok(toml::Value::Table(t)) => t,
            Ok(_) => return Err(ConfigError::Invalid("defaults are not a table".into())),
            Err(e) => return Err(ConfigError::Invalid(e.to_string())),
        };
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
            let from_file: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::Parse {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
            // Parse the file on its own first so that its errors name the file.
            toml::Value::Table(from_file.clone())
                .try_into::<Config>()
                .map_err(|e| ConfigError::Parse {
                    path: path.to_owned(),
                    message: e.to_string(),
                })?;
            merge(&mut table, from_file);
        }
        for (key, value) in env {
            let Some(rest) = key.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            if rest.is_empty() || NOT_SETTINGS.contains(&rest) {
                continue;
            }
            let path: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
            set_path(&mut table, &path, env_value(&value));
        }
        let mut config: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(e.to_string()))?;
        if let Some(listen) = overrides.listen {
            config.listen = listen;
        }
        if let Some(dir) = &overrides.data_dir {
            config.data_dir = dir.clone();
        }
        if let Some(dir) = &overrides.socket_dir {
            config.socket_dir = dir.clone();
        }
        if let Some(url) = &overrides.database {
            config.database = Some(url.clone());
        }
        config.validate()?;
        Ok(config)
    }

    /// The database URL: the configured one, else an SQLite file in the data directory.
    pub fn database_url(&self) -> String {
        match &self.database {
            Some(url) => url.clone(),
            None => format!("sqlite://{}", self.data_dir.join("infinibay.db").display()),
        }
    }

    /// Reject values that would make the host misbehave rather than fail.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            (
                "discovery.rescan_interval_secs",
                self.discovery.rescan_interval_secs,
            ),
            (
                "connection.backoff_initial_secs",
                self.connection.backoff_initial_secs,
            ),
            (
                "connection.backoff_max_secs",
                self.connection.backoff_max_secs,
            ),
            (
                "connection.ping_interval_secs",
                self.connection.ping_interval_secs,
            ),
            ("ingest.rate_per_sec", self.ingest.rate_per_sec),
            ("maintenance.interval_secs", self.maintenance.interval_secs),
            (
                "commands.default_timeout_secs",
                self.commands.default_timeout_secs,
            ),
        ];
        for (name, value) in positive {
            if !(value.is_finite() && value > 0.0 && value < 1e9) {
                return Err(ConfigError::Invalid(format!(
                    "{name} must be a positive number of seconds (or per second), got {value}"
                )));
            }
        }
        if self.connection.backoff_max_secs < self.connection.backoff_initial_secs {
            return Err(ConfigError::Invalid(
                "connection.backoff_max_secs is smaller than connection.backoff_initial_secs"
                    .into(),
            ));
        }
        let counts = [
            (
                "connection.missed_pings",
                self.connection.missed_pings as usize,
            ),
            ("connection.outbound_queue", self.connection.outbound_queue),
            ("ingest.burst", self.ingest.burst as usize),
            ("ingest.max_line_bytes", self.ingest.max_line_bytes),
            ("ingest.read_buffer_bytes", self.ingest.read_buffer_bytes),
            ("store.max_batch", self.store.max_batch),
            ("store.pending_samples_max", self.store.pending_samples_max),
            (
                "store.pending_samples_per_vm",
                self.store.pending_samples_per_vm,
            ),
            ("store.pending_errors_max", self.store.pending_errors_max),
            (
                "store.pending_errors_per_vm",
                self.store.pending_errors_per_vm,
            ),
            (
                "store.pending_command_logs_max",
                self.store.pending_command_logs_max,
            ),
            (
                "commands.max_pending_per_vm",
                self.commands.max_pending_per_vm,
            ),
        ];
        for (name, value) in counts {
            if value == 0 {
                return Err(ConfigError::Invalid(format!("{name} must be at least 1")));
            }
        }
        Ok(())
    }
}

/// An environment value read as TOML when it is a number or boolean, else as a string.
fn env_value(raw: &str) -> toml::Value {
    if let Ok(v) = raw.parse::<i64>() {
        return toml::Value::Integer(v);
    }
    if let Ok(v) = raw.parse::<f64>()
        && v.is_finite()
    {
        return toml::Value::Float(v);
    }
    match raw {
        "true" => toml::Value::Boolean(true),
        "false" => toml::Value::Boolean(false),
        _ => toml::Value::String(raw.to_owned()),
    }
}

fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) {
    match path {
        [] => {}
        [last] => {
            // A float field given as an integer (`INFINIBAY_..._SECS=2`) must stay a float.
            let value = match (table.get(last), value) {
                (Some(toml::Value::Float(_)), toml::Value::Integer(i)) => {
                    toml::Value::Float(i as f64)
                }
                (_, v) => v,
            };
            table.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            let entry = table
                .entry(first.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let toml::Value::Table(inner) = entry {
                set_path(inner, rest, value);
            } else {
                // `INFINIBAY_LISTEN__X`: a section that is not one. Make it fail validation
                // loudly rather than ignore it.
                *entry = toml::Value::Table(toml::Table::new());
                if let toml::Value::Table(inner) = entry {
                    set_path(inner, rest, value);
                }
            }
        }
    }
}

/// Where the configuration comes from; flags win over `INFINIBAY_*` variables, which win over
/// the file.
#[derive(Debug, Clone, Default, Args)]
pub struct ConfigArgs {
    /// TOML configuration file.
    #[arg(long, env = "INFINIBAY_CONFIG")]
    pub config: Option<PathBuf>,
    /// HTTP listen address (default 127.0.0.1:8080).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Data directory (default ./data).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Directory of the per-VM sockets (default /opt/infinibay/sockets).
    #[arg(long)]
    pub socket_dir: Option<PathBuf>,
    /// Database URL (default: SQLite in the data directory).
    #[arg(long)]
    pub database: Option<String>,
}

impl ConfigArgs {
    /// Build the configuration from the file, the process environment and these flags.
    pub fn load(&self) -> Result<Config, ConfigError> {
        Config::load(
            self.config.as_deref(),
            std::env::vars(),
            &Overrides {
                listen: self.listen,
                data_dir: self.data_dir.clone(),
                socket_dir: self.socket_dir.clone(),
                database: self.database.clone(),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_match_the_specification() {
        let c = Config::load(None, env(&[]), &Overrides::default()).expect("defaults load");
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.socket_dir, PathBuf::from("/opt/infinibay/sockets"));
        assert_eq!(c.database_url(), "sqlite://./data/infinibay.db");
        assert_eq!(c.ingest.burst, 50);
        assert_eq!(c.ingest.rate_per_sec, 10.0);
        assert_eq!(c.connection.missed_pings, 3);
    }

    #[test]
    fn file_then_env_then_flags_override_in_that_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "listen = \"0.0.0.0:9000\"\nsocket_dir = \"/file\"\n[ingest]\nburst = 7\nrate_per_sec = 3\n",
        )
        .expect("write config");
        let c = Config::load(
            Some(&file),
            env(&[
                ("INFINIBAY_SOCKET_DIR", "/env"),
                ("INFINIBAY_INGEST__RATE_PER_SEC", "4"),
                ("INFINIBAY_CONNECTION__PING_INTERVAL_SECS", "2"),
                ("UNRELATED", "x"),
            ]),
            &Overrides {
                listen: Some("127.0.0.1:1".parse().expect("addr")),
                ..Overrides::default()
            },
        )
        .expect("config loads");
        assert_eq!(c.listen.to_string(), "127.0.0.1:1");
        assert_eq!(c.socket_dir, PathBuf::from("/env"));
        assert_eq!(c.ingest.burst, 7);
        assert_eq!(c.ingest.rate_per_sec, 4.0);
        assert_eq!(c.connection.ping_interval_secs, 2.0);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "[ingest]\nburts = 7\n").expect("write");
        let err =
            Config::load(Some(&file), env(&[]), &Overrides::default()).expect_err("typo must fail");
        assert!(err.to_string().contains("burts"), "{err}");
        let err = Config::load(
            None,
            env(&[("INFINIBAY_INGEST__RATE_PER_SEC", "-1")]),
            &Overrides::default(),
        )
        .expect_err("negative rate must fail");
        assert!(err.to_string().contains("rate_per_sec"), "{err}");
        assert!(
            Config::load(None, env(&[("INFINIBAY_NOPE", "1")]), &Overrides::default()).is_err()
        );
    }

    #[test]
    fn variables_of_other_components_are_not_settings() {
        let config = Config::load(
            None,
            env(&[
                ("INFINIBAY_ADMIN_PASSWORD", "s3cret"),
                ("INFINIBAY_TEST_PG_URL", "postgres://x@127.0.0.1:1/db"),
                ("INFINIBAY_VM_ID", "5f0c"),
            ]),
            &Overrides::default(),
        )
        .expect("these variables are read elsewhere");
        assert_eq!(config, Config::default());
    }
}
