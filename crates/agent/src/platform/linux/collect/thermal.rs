//! CPU temperature from hwmon or thermal zones, when the guest has a sensor (most VMs do not).

use std::path::{Path, PathBuf};

use super::read::read_trimmed;

/// hwmon drivers that measure the CPU package, best first.
const CPU_HWMON_DRIVERS: [&str; 5] = ["coretemp", "k10temp", "zenpower", "cpu_thermal", "acpitz"];
/// thermal zone types that measure the CPU, best first.
const CPU_THERMAL_ZONES: [&str; 5] = [
    "x86_pkg_temp",
    "cpu-thermal",
    "cpu_thermal",
    "soc_thermal",
    "acpitz",
];

/// Finds the file to read: the `Package`/`Tctl`/`Tdie` input of a CPU hwmon driver (its
/// first input otherwise), else a CPU thermal zone. `None` when the guest has neither.
pub(crate) fn find_sensor(sys: &Path) -> Option<PathBuf> {
    find_hwmon(&sys.join("class/hwmon")).or_else(|| find_zone(&sys.join("class/thermal")))
}

fn sorted_entries(dir: &Path) -> Vec<PathBuf> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    entries.sort();
    entries
}

fn find_hwmon(class: &Path) -> Option<PathBuf> {
    let chips = sorted_entries(class);
    for driver in CPU_HWMON_DRIVERS {
        for chip in &chips {
            if read_trimmed(&chip.join("name")).ok().as_deref() != Some(driver) {
                continue;
            }
            let inputs: Vec<PathBuf> = sorted_entries(chip)
                .into_iter()
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("temp") && n.ends_with("_input"))
                })
                .collect();
            let labelled = inputs.iter().find(|input| {
                let label = input.to_string_lossy().replace("_input", "_label");
                read_trimmed(Path::new(&label))
                    .is_ok_and(|l| l.starts_with("Package") || l == "Tctl" || l == "Tdie")
            });
            if let Some(found) = labelled.or(inputs.first()) {
                return Some(found.clone());
            }
        }
    }
    None
}

fn find_zone(class: &Path) -> Option<PathBuf> {
    let zones: Vec<PathBuf> = sorted_entries(class)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("thermal_zone"))
        })
        .collect();
    CPU_THERMAL_ZONES.iter().find_map(|wanted| {
        zones
            .iter()
            .find(|z| read_trimmed(&z.join("type")).ok().as_deref() == Some(*wanted))
            .map(|z| z.join("temp"))
    })
}

/// Reads a sensor file (millidegrees Celsius) as °C with one decimal.
pub(crate) fn read_celsius(sensor: &Path) -> Option<f64> {
    let millis: i64 = read_trimmed(sensor).ok()?.parse().ok()?;
    // Sensors report -273 °C or absurd values when broken; those are not temperatures.
    let celsius = millis as f64 / 1000.0;
    (-50.0..=150.0)
        .contains(&celsius)
        .then(|| (celsius * 10.0).round() / 10.0)
}
