//! systemd services through `systemctl … --output=json`.
//!
//! systemd's own interface is D-Bus; a D-Bus client (zbus or libdbus) would cost the agent
//! more resident memory than its whole budget, while two `systemctl` runs every inventory
//! interval (5 minutes by default) cost ~20 ms of CPU once and no memory between runs.
//! Inventories are not metrics, so spawning for them is acceptable; metrics never spawn.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use infinibay_protocol::message::ServiceInfo;
use serde_json::Value;

use super::read::CollectError;
use super::tool;

/// True when systemd is the running init (sd_booted(3)'s test). Containers and busybox
/// guests fail it, and the inventory is then empty without running anything.
pub(crate) fn systemd_running(root: &Path) -> bool {
    root.join("run/systemd/system").is_dir()
}

/// A unit from `systemctl list-units --all --type=service --output=json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LoadedUnit {
    pub name: String,
    pub load: Option<String>,
    pub active: Option<String>,
    pub sub: Option<String>,
    pub description: Option<String>,
}

fn text_field(object: &Value, key: &str) -> Option<String> {
    object
        .get(key)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// Parses `list-units` JSON: `[{"unit","load","active","sub","description"}, …]`.
pub(crate) fn parse_list_units(json: &[u8]) -> Result<Vec<LoadedUnit>, String> {
    let value: Value = serde_json::from_slice(json).map_err(|e| e.to_string())?;
    let rows = value.as_array().ok_or("not a JSON array")?;
    Ok(rows
        .iter()
        .filter_map(|row| {
            Some(LoadedUnit {
                name: text_field(row, "unit")?,
                load: text_field(row, "load"),
                active: text_field(row, "active"),
                sub: text_field(row, "sub"),
                description: text_field(row, "description"),
            })
        })
        .collect())
}

/// Parses `list-unit-files` JSON: `[{"unit_file","state","preset"}, …]` → name → state. The
/// state is each service's `start_type` as systemd says it (`enabled`, `disabled`, `static`,
/// `masked`, `indirect`, `generated`, `transient`, …).
pub(crate) fn parse_unit_files(json: &[u8]) -> Result<BTreeMap<String, String>, String> {
    let value: Value = serde_json::from_slice(json).map_err(|e| e.to_string())?;
    let rows = value.as_array().ok_or("not a JSON array")?;
    Ok(rows
        .iter()
        .filter_map(|row| Some((text_field(row, "unit_file")?, text_field(row, "state")?)))
        .collect())
}

/// Whether a unit-file state means "starts at boot": `enabled`/`enabled-runtime` yes;
/// `disabled`/`masked`/`masked-runtime` no; `static`, `indirect`, `generated`, `transient`,
/// `alias` and unknown states carry no answer.
pub(crate) fn enabled_from_state(state: &str) -> Option<bool> {
    match state {
        "enabled" | "enabled-runtime" | "linked" | "linked-runtime" => Some(true),
        "disabled" | "masked" | "masked-runtime" => Some(false),
        _ => None,
    }
}

/// Template of an instance (`getty@tty1.service` → `getty@.service`).
fn template_of(name: &str) -> Option<String> {
    let (prefix, rest) = name.split_once('@')?;
    let (_, suffix) = rest.rsplit_once('.')?;
    Some(format!("{prefix}@.{suffix}"))
}

/// Joins both lists: every loaded service, plus every installed unit file that is not
/// loaded (systemd only loads what is referenced, so such a unit is necessarily inactive and
/// dead). Templates (`foo@.service`) are not services by themselves and aliases are other
/// names of listed units; both are left out.
/// Sorted by name.
pub(crate) fn merge(units: Vec<LoadedUnit>, files: &BTreeMap<String, String>) -> Vec<ServiceInfo> {
    let mut services: BTreeMap<String, ServiceInfo> = BTreeMap::new();
    for unit in units {
        if !unit.name.ends_with(".service") {
            continue;
        }
        let state = files
            .get(&unit.name)
            .or_else(|| template_of(&unit.name).and_then(|t| files.get(&t)));
        let info = ServiceInfo {
            enabled: state.and_then(|s| enabled_from_state(s)),
            start_type: state.cloned(),
            name: unit.name.clone(),
            description: unit.description,
            load_state: unit.load,
            active_state: unit.active,
            sub_state: unit.sub,
        };
        services.insert(unit.name, info);
    }
    for (name, state) in files {
        // An alias is another name of a unit listed under its own name.
        if !name.ends_with(".service")
            || name.contains("@.")
            || state == "alias"
            || services.contains_key(name)
        {
            continue;
        }
        services.insert(
            name.clone(),
            ServiceInfo {
                name: name.clone(),
                description: None,
                load_state: None,
                active_state: Some("inactive".into()),
                sub_state: Some("dead".into()),
                enabled: enabled_from_state(state),
                start_type: Some(state.clone()),
            },
        );
    }
    services.into_values().collect()
}

/// Runs both `systemctl` queries and merges them.
pub(crate) fn query_systemd(timeout: Duration) -> Result<Vec<ServiceInfo>, CollectError> {
    let bad_json = |detail: String| CollectError::Tool {
        program: "systemctl",
        detail: format!("unexpected JSON: {detail}"),
    };
    let units = tool::run(
        "systemctl",
        &[
            "list-units",
            "--all",
            "--type=service",
            "--output=json",
            "--no-pager",
        ],
        timeout,
    )?;
    let units = parse_list_units(&units).map_err(bad_json)?;
    let files = tool::run(
        "systemctl",
        &[
            "list-unit-files",
            "--type=service",
            "--output=json",
            "--no-pager",
        ],
        timeout,
    )?;
    let files = parse_unit_files(&files).map_err(bad_json)?;
    Ok(merge(units, &files))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_take_the_template_state_and_unloaded_files_are_inactive() {
        let units = parse_list_units(
            br#"[{"unit":"ssh.service","load":"loaded","active":"active","sub":"running","description":"OpenBSD Secure Shell server"},
                {"unit":"getty@tty1.service","load":"loaded","active":"active","sub":"running","description":"Getty on tty1"},
                {"unit":"ghost.service","load":"not-found","active":"inactive","sub":"dead","description":"ghost.service"}]"#,
        )
        .expect("units parse");
        let files = parse_unit_files(
            br#"[{"unit_file":"ssh.service","state":"enabled","preset":"enabled"},
                {"unit_file":"getty@.service","state":"enabled","preset":"enabled"},
                {"unit_file":"apt-daily.service","state":"static","preset":null},
                {"unit_file":"cups.service","state":"disabled","preset":"enabled"},
                {"unit_file":"ssh.socket","state":"disabled","preset":"enabled"}]"#,
        )
        .expect("files parse");
        let services = merge(units, &files);
        let summary: Vec<_> = services
            .iter()
            .map(|s| {
                (
                    s.name.as_str(),
                    s.active_state.as_deref(),
                    s.enabled,
                    s.start_type.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("apt-daily.service", Some("inactive"), None, Some("static")),
                (
                    "cups.service",
                    Some("inactive"),
                    Some(false),
                    Some("disabled")
                ),
                (
                    "getty@tty1.service",
                    Some("active"),
                    Some(true),
                    Some("enabled")
                ),
                ("ghost.service", Some("inactive"), None, None),
                ("ssh.service", Some("active"), Some(true), Some("enabled")),
            ]
        );
    }

    fn fixture(name: &str) -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/systemd")
            .join(name);
        std::fs::read(path).expect("systemd fixture")
    }

    /// `list-unit-files.json` is systemctl 252's real output on this Debian 12 image
    /// (`systemctl --root=/ list-unit-files --type=service -o json`); `list-units.json` is
    /// written in the same format for a booted system, since the image does not run systemd.
    #[test]
    fn systemctl_252_json_merges_into_a_sorted_service_list() {
        let units = parse_list_units(&fixture("list-units.json")).expect("units parse");
        let files = parse_unit_files(&fixture("list-unit-files.json")).expect("files parse");
        assert_eq!(units.len(), 9);
        assert_eq!(files.len(), 130);
        let services = merge(units, &files);
        let by_name = |name: &str| {
            services
                .iter()
                .find(|s| s.name == name)
                .unwrap_or_else(|| panic!("{name} listed"))
        };
        let nats = by_name("nats-server.service");
        assert_eq!(nats.description.as_deref(), Some("NATS Server"));
        assert_eq!(
            (
                nats.load_state.as_deref(),
                nats.active_state.as_deref(),
                nats.sub_state.as_deref()
            ),
            (Some("loaded"), Some("active"), Some("running"))
        );
        assert_eq!(nats.enabled, Some(true));
        assert_eq!(by_name("getty@tty1.service").enabled, Some(true));
        assert_eq!(by_name("cryptdisks.service").enabled, Some(false), "masked");
        assert_eq!(
            by_name("cryptdisks.service").start_type.as_deref(),
            Some("masked")
        );
        assert_eq!(by_name("systemd-journald.service").enabled, None, "static");
        assert_eq!(
            by_name("systemd-journald.service").start_type.as_deref(),
            Some("static")
        );
        assert_eq!(nats.start_type.as_deref(), Some("enabled"));
        assert_eq!(
            by_name("smartmontools.service").active_state.as_deref(),
            Some("failed")
        );
        assert_eq!(
            by_name("plymouth-quit.service").load_state.as_deref(),
            Some("not-found")
        );
        let console = by_name("console-getty.service");
        assert_eq!(console.enabled, Some(false));
        assert_eq!(console.active_state.as_deref(), Some("inactive"));
        assert!(
            services.iter().all(|s| !s.name.contains("@.")),
            "no templates"
        );
        let names: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(names, sorted);
    }

    #[test]
    fn non_array_json_is_an_error() {
        assert!(parse_list_units(b"{}").is_err());
        assert!(parse_unit_files(b"not json").is_err());
    }
}
