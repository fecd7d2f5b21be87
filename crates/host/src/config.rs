//! Configuration: defaults, then a TOML file, then `INFINIBAY_*` environment variables, then
//! command-line flags. Each layer overrides the one before.
//!
//! Every key of the TOML file is also an environment variable: upper-case, prefixed with
//! `INFINIBAY_`, with `__` between a section and its key (`[ingest] rate_per_sec` is
//! `INFINIBAY_INGEST__RATE_PER_SEC`). The file is read with `deny_unknown_fields`, so that a
//! typo is an error at start and not a silently ignored setting.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Args;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use infinibay_api::limits::ApiConfig;
use infinibay_cluster::ClusterConfig;
use infinibay_core::config::CoreConfig;

/// Prefix of the environment variables read as configuration.
pub const ENV_PREFIX: &str = "INFINIBAY_";

/// `INFINIBAY_*` variables that belong to other parts of the system, not to this
/// configuration: the config file's path, the first administrator's password, the CLI's
/// server, token and password inputs, the test suite's PostgreSQL and NATS servers, and the guest agent's
/// VM id (set on machines running both).
const NOT_SETTINGS: &[&str] = &[
    "CONFIG",
    "ADMIN_PASSWORD",
    "NEW_PASSWORD",
    "PASSWORD",
    "SERVER",
    "TOKEN",
    "TEST_PG_URL",
    "TEST_NATS_URL",
    "TEST_NATS_SERVER",
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

/// The whole configuration of the host: where it listens and keeps its state, which database,
/// the core's sections (`socket_dir`, `libvirt`, `image_dir`, `[discovery]`, `[connection]`,
/// `[ingest]`, `[store]`, `[maintenance]`, `[commands]`) at the same places in the file, the API's
/// `[api]`, and `[cluster]` (NATS, for `infinibay node` and `infinibay api`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Config {
    /// HTTP listen address, data directory and database.
    pub process: ProcessConfig,
    /// The core's settings.
    pub core: CoreConfig,
    /// Scale-out: NATS and liveness (`[cluster]`).
    pub cluster: ClusterConfig,
    /// The user-facing side: limits, GraphiQL, the metrics listener (`[api]`).
    pub api: ApiConfig,
}

/// The host process's own settings (the file's top-level `listen`, `data_dir`, `database`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessConfig {
    /// HTTP listen address (default `127.0.0.1:8080`).
    pub listen: SocketAddr,
    /// Directory for the embedded database and other state (default `./data`).
    pub data_dir: PathBuf,
    /// Database URL (`sqlite://…` or `postgres://…`); default: SQLite file in `data_dir`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// Browser origins allowed to call the API with credentials (`cors_origins = [...]`, or
    /// `INFINIBAY_CORS_ORIGINS=https://a,https://b`); empty (the default): CORS off.
    #[serde(default, deserialize_with = "list_or_commas")]
    pub cors_origins: Vec<String>,
}

/// A list of strings, or one string of comma-separated items (as an environment variable
/// gives it).
fn list_or_commas<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrCommas {
        List(Vec<String>),
        Commas(String),
    }
    Ok(match ListOrCommas::deserialize(d)? {
        ListOrCommas::List(l) => l,
        ListOrCommas::Commas(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

impl Default for ProcessConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./data"),
            database: None,
            cors_origins: Vec::new(),
        }
    }
}

/// Top-level keys of the file that belong to [`ProcessConfig`]; the rest are the core's (but
/// [`API_SECTION`] and [`CLUSTER_KEY`]).
const PROCESS_KEYS: [&str; 4] = ["listen", "data_dir", "database", "cors_origins"];
/// The section of [`ClusterConfig`].
const CLUSTER_KEY: &str = "cluster";

/// The section of the file that belongs to [`ApiConfig`].
const API_SECTION: &str = "api";

/// Values given on the command line; `None` keeps the lower layers' value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    /// `--listen`.
    pub listen: Option<SocketAddr>,
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--socket-dir`.
    pub socket_dir: Option<PathBuf>,
    /// `--libvirt`.
    pub libvirt: Option<String>,
    /// `--image-dir`.
    pub image_dir: Option<PathBuf>,
    /// `--database`.
    pub database: Option<String>,
    /// `--nats`.
    pub nats_url: Option<String>,
    /// `--node-id`.
    pub node_id: Option<String>,
}

impl Config {
    /// Build the configuration: defaults, `file` (when given), `INFINIBAY_*` from `env`, then
    /// `overrides`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Self, ConfigError> {
        let mut table = Self::default()
            .to_table()
            .map_err(|e| ConfigError::Invalid(format!("defaults: {e}")))?;
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
            Self::from_table(from_file.clone()).map_err(|message| ConfigError::Parse {
                path: path.to_owned(),
                message,
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
        let mut config = Self::from_table(table).map_err(ConfigError::Invalid)?;
        if let Some(listen) = overrides.listen {
            config.process.listen = listen;
        }
        if let Some(dir) = &overrides.data_dir {
            config.process.data_dir = dir.clone();
        }
        if let Some(dir) = &overrides.socket_dir {
            config.core.socket_dir = dir.clone();
        }
        if let Some(uri) = &overrides.libvirt {
            config.core.libvirt = uri.clone();
        }
        if let Some(dir) = &overrides.image_dir {
            config.core.image_dir = dir.clone();
        }
        if let Some(url) = &overrides.database {
            config.process.database = Some(url.clone());
        }
        if let Some(url) = &overrides.nats_url {
            config.cluster.nats_url = url.clone();
        }
        if let Some(id) = &overrides.node_id {
            config.cluster.node_id = Some(id.clone());
        }
        config
            .core
            .validate()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        config
            .cluster
            .validate()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        config.api.validate().map_err(ConfigError::Invalid)?;
        for origin in &config.process.cors_origins {
            infinibay_api::check_origin(origin).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        }
        Ok(config)
    }

    /// The file's layout: the process's keys and the core's side by side at the top level.
    fn to_table(&self) -> Result<toml::Table, toml::ser::Error> {
        let mut table = toml::Table::try_from(&self.core)?;
        table.extend(toml::Table::try_from(&self.process)?);
        table.insert(
            CLUSTER_KEY.to_owned(),
            toml::Value::Table(toml::Table::try_from(&self.cluster)?),
        );
        table.insert(
            API_SECTION.to_owned(),
            toml::Value::Table(toml::Table::try_from(&self.api)?),
        );
        Ok(table)
    }

    /// Read the file's layout; an unknown key anywhere is an error naming it.
    fn from_table(mut table: toml::Table) -> Result<Self, String> {
        let mut process = toml::Table::new();
        for key in PROCESS_KEYS {
            if let Some(value) = table.remove(key) {
                process.insert(key.to_owned(), value);
            }
        }
        let process: ProcessConfig = toml::Value::Table(process)
            .try_into()
            .map_err(|e: toml::de::Error| e.to_string())?;
        let cluster: ClusterConfig = match table.remove(CLUSTER_KEY) {
            Some(value) => value
                .try_into()
                .map_err(|e: toml::de::Error| format!("[cluster]: {e}"))?,
            None => ClusterConfig::default(),
        };
        let api: ApiConfig = match table.remove(API_SECTION) {
            Some(section) => section
                .try_into()
                .map_err(|e: toml::de::Error| format!("[{API_SECTION}]: {e}"))?,
            None => ApiConfig::default(),
        };
        let core: CoreConfig =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| {
                    // The core's message lists only its own keys; name the process's too.
                    format!("{e} (or one of the top-level {})", PROCESS_KEYS.join(", "))
                })?;
        Ok(Self {
            process,
            core,
            api,
            cluster,
        })
    }

    /// The database URL: the configured one, else an SQLite file in the data directory.
    pub fn database_url(&self) -> String {
        match &self.process.database {
            Some(url) => url.clone(),
            None => format!(
                "sqlite://{}",
                self.process.data_dir.join("infinibay.db").display()
            ),
        }
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
    /// libvirt URI (default qemu:///system; `none` runs without libvirt).
    #[arg(long, value_name = "URI")]
    pub libvirt: Option<String>,
    /// Directory of base images and VM disk overlays (default /opt/infinibay/images).
    #[arg(long)]
    pub image_dir: Option<PathBuf>,
    /// Database URL (default: SQLite in the data directory).
    #[arg(long)]
    pub database: Option<String>,
}

impl ConfigArgs {
    /// Build the configuration from the file, the process environment and these flags.
    pub fn load(&self) -> Result<Config, ConfigError> {
        self.load_with(None, None)
    }

    /// [`ConfigArgs::load`] with the scale-out flags (`--nats`, `--node-id`) on top.
    pub fn load_with(
        &self,
        nats_url: Option<String>,
        node_id: Option<String>,
    ) -> Result<Config, ConfigError> {
        Config::load(
            self.config.as_deref(),
            std::env::vars(),
            &Overrides {
                listen: self.listen,
                data_dir: self.data_dir.clone(),
                socket_dir: self.socket_dir.clone(),
                libvirt: self.libvirt.clone(),
                image_dir: self.image_dir.clone(),
                database: self.database.clone(),
                nats_url,
                node_id,
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
        assert_eq!(c.process.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.core.socket_dir, PathBuf::from("/opt/infinibay/sockets"));
        assert_eq!(c.database_url(), "sqlite://./data/infinibay.db");
        assert_eq!(c.core.ingest.burst, 50);
        assert_eq!(c.core.ingest.rate_per_sec, 10.0);
        assert_eq!(c.core.connection.missed_pings, 3);
        assert_eq!(c.core.libvirt, "qemu:///system");
        assert_eq!(c.core.libvirt_uri(), Some("qemu:///system"));
        assert_eq!(c.core.image_dir, PathBuf::from("/opt/infinibay/images"));
        assert!(!c.api.graphiql);
        assert_eq!(c.api.metrics_listen.to_string(), "127.0.0.1:9464");
        assert_eq!(c.api.max_body_bytes, 2 * 1024 * 1024);
    }

    #[test]
    fn the_api_section_is_read_from_the_file_and_the_environment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "[api]\ngraphiql = true\nmetrics_listen = \"127.0.0.1:9999\"\n",
        )
        .expect("write config");
        let c = Config::load(
            Some(&file),
            env(&[("INFINIBAY_API__MAX_BODY_BYTES", "4096")]),
            &Overrides::default(),
        )
        .expect("config loads");
        assert!(c.api.graphiql);
        assert_eq!(c.api.metrics_listen.to_string(), "127.0.0.1:9999");
        assert_eq!(c.api.max_body_bytes, 4096);
        std::fs::write(&file, "[api]\nmax_body_bites = 1\n").expect("write");
        let err = Config::load(Some(&file), env(&[]), &Overrides::default())
            .expect_err("a typo in [api] fails");
        assert!(err.to_string().contains("max_body_bites"), "{err}");
        let err = Config::load(
            None,
            env(&[("INFINIBAY_API__WS_CONNECTIONS_PER_USER", "0")]),
            &Overrides::default(),
        )
        .expect_err("a limit of zero fails");
        assert!(err.to_string().contains("ws_connections_per_user"), "{err}");
    }

    #[test]
    fn libvirt_comes_from_the_file_the_environment_or_the_flag_and_none_turns_it_off() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "libvirt = \"qemu:///session\"\nimage_dir = \"/file\"\n",
        )
        .expect("write config");
        let from_file = Config::load(Some(&file), env(&[]), &Overrides::default()).expect("file");
        assert_eq!(from_file.core.libvirt_uri(), Some("qemu:///session"));
        assert_eq!(from_file.core.image_dir, PathBuf::from("/file"));
        let from_env = Config::load(
            Some(&file),
            env(&[
                ("INFINIBAY_LIBVIRT", "qemu+ssh://h/system"),
                ("INFINIBAY_IMAGE_DIR", "/env"),
            ]),
            &Overrides::default(),
        )
        .expect("env");
        assert_eq!(from_env.core.libvirt_uri(), Some("qemu+ssh://h/system"));
        assert_eq!(from_env.core.image_dir, PathBuf::from("/env"));
        let off = Config::load(
            Some(&file),
            env(&[("INFINIBAY_LIBVIRT", "qemu+ssh://h/system")]),
            &Overrides {
                libvirt: Some("none".into()),
                ..Overrides::default()
            },
        )
        .expect("flag");
        assert_eq!(off.core.libvirt_uri(), None);
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
        assert_eq!(c.process.listen.to_string(), "127.0.0.1:1");
        assert_eq!(c.core.socket_dir, PathBuf::from("/env"));
        assert_eq!(c.core.ingest.burst, 7);
        assert_eq!(c.core.ingest.rate_per_sec, 4.0);
        assert_eq!(c.core.connection.ping_interval_secs, 2.0);
    }

    #[test]
    fn cors_origins_are_off_by_default_read_from_a_list_or_commas_and_checked() {
        let none = Config::load(None, env(&[]), &Overrides::default()).expect("defaults");
        assert!(none.process.cors_origins.is_empty());
        let from_env = Config::load(
            None,
            env(&[(
                "INFINIBAY_CORS_ORIGINS",
                "https://app.example, http://localhost:3000",
            )]),
            &Overrides::default(),
        )
        .expect("origins from the environment");
        assert_eq!(
            from_env.process.cors_origins,
            vec!["https://app.example", "http://localhost:3000"]
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "cors_origins = [\"https://app.example:8443\"]\n").expect("write");
        let from_file =
            Config::load(Some(&file), env(&[]), &Overrides::default()).expect("origins in a file");
        assert_eq!(
            from_file.process.cors_origins,
            vec!["https://app.example:8443"]
        );
        for bad in ["*", "app.example", "https://app.example/path", "ftp://x"] {
            let err = Config::load(
                None,
                env(&[("INFINIBAY_CORS_ORIGINS", bad)]),
                &Overrides::default(),
            )
            .expect_err("not an origin");
            assert!(err.to_string().contains("CORS origin"), "{bad}: {err}");
        }
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
    fn the_cluster_section_reads_from_file_env_and_flags() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "[cluster]\nnats_url = \"nats://file:4222\"\nliveness_window_secs = 9\n",
        )
        .expect("write config");
        let c = Config::load(
            Some(&file),
            env(&[("INFINIBAY_CLUSTER__HEARTBEAT_INTERVAL_SECS", "2")]),
            &Overrides {
                node_id: Some("hv-7".into()),
                ..Overrides::default()
            },
        )
        .expect("config loads");
        assert_eq!(c.cluster.nats_url, "nats://file:4222");
        assert_eq!(c.cluster.liveness_window_secs, 9.0);
        assert_eq!(c.cluster.heartbeat_interval_secs, 2.0);
        assert_eq!(c.cluster.node_id.as_deref(), Some("hv-7"));
        let err = Config::load(
            None,
            env(&[("INFINIBAY_CLUSTER__NODE_ID", "a.b")]),
            &Overrides::default(),
        )
        .expect_err("a dotted node id is refused");
        assert!(err.to_string().contains("node_id"), "{err}");
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
