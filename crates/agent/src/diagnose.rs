//! `--diagnose`: what the agent would use, why it cannot, and the fix for each problem, in
//! plain words. What the OS offers (ports, devices, the service) is `platform::diagnose`; the
//! policy and limits are the same everywhere.

use std::fmt::Write as _;

use crate::channel::PortHints;
use crate::config::Config;

/// The report, and whether the agent could run (a port was found and opens).
#[derive(Debug, Clone)]
pub struct Diagnosis {
    /// Human-readable report.
    pub report: String,
    /// True when the port exists and could be opened (or is held by a running agent).
    pub ok: bool,
}

/// Something in the way, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// What is wrong.
    pub what: String,
    /// How to fix it.
    pub fix: String,
}

impl Problem {
    /// A problem and its fix.
    pub fn new(what: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            what: what.into(),
            fix: fix.into(),
        }
    }
}

/// What the OS part found.
#[derive(Debug, Clone, Default)]
pub struct Findings {
    /// Its part of the report.
    pub report: String,
    /// Whether the agent can reach the host.
    pub ok: bool,
    /// What is in the way (problems that do not stop the agent count too, e.g. a stopped
    /// service).
    pub problems: Vec<Problem>,
}

/// Inspect the OS for `config` and `hints`.
pub fn diagnose(config: &Config, hints: &PortHints) -> Diagnosis {
    report(config, crate::platform::diagnose::inspect(config, hints))
}

/// The whole report around the OS's findings.
pub fn report(config: &Config, findings: Findings) -> Diagnosis {
    let mut r = String::new();
    let _ = writeln!(r, "infiniservice {} diagnosis", env!("CARGO_PKG_VERSION"));
    r.push_str(&findings.report);
    let policy = &config.policy;
    let _ = writeln!(r, "\npolicy:");
    let _ = writeln!(r, "  allow_unsafe = {}", policy.allow_unsafe);
    let _ = writeln!(
        r,
        "  allowed_safe_actions = {}",
        if policy.allowed_safe_actions.is_empty() {
            "all".to_string()
        } else {
            policy.allowed_safe_actions.join(", ")
        }
    );
    let _ = writeln!(
        r,
        "  denied_safe_actions = {}",
        if policy.denied_safe_actions.is_empty() {
            "none".to_string()
        } else {
            policy.denied_safe_actions.join(", ")
        }
    );
    let l = &config.limits;
    let _ = writeln!(
        r,
        "limits: max_concurrent_commands={} max_output_bytes={} default_timeout_secs={} process_top_n={} inventory_interval={}",
        l.max_concurrent_commands,
        l.max_output_bytes,
        l.default_timeout_secs,
        l.process_top_n,
        l.inventory_interval
    );
    let _ = writeln!(r, "collection_interval = {} s", config.collection_interval);
    if !findings.problems.is_empty() {
        let _ = writeln!(r, "\nproblems:");
        for p in &findings.problems {
            let _ = writeln!(r, "  - {}\n    fix: {}", p.what, p.fix);
        }
    }
    let _ = writeln!(
        r,
        "\nresult: {}",
        if findings.ok {
            "OK"
        } else {
            "NOT OK: the agent cannot reach the host"
        }
    );
    Diagnosis {
        report: r,
        ok: findings.ok,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_is_listed_with_its_fix_and_the_policy_is_shown() {
        let findings = Findings {
            report: "\nport: MISSING\n".into(),
            ok: false,
            problems: vec![Problem::new("no port", "add the port to the VM")],
        };
        let d = report(&Config::default(), findings);
        assert!(!d.ok);
        assert!(
            d.report
                .contains("- no port\n    fix: add the port to the VM")
        );
        assert!(d.report.contains("allow_unsafe = false"));
        assert!(d.report.contains("result: NOT OK"));
    }
}
