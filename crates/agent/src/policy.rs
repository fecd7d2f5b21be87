//! Which commands may run. Decided before anything runs; a refusal is a `forbidden` response.

use infinibay_protocol::message::SafeAction;

use crate::config::PolicyConfig;

/// The policy in force.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    config: PolicyConfig,
}

impl Policy {
    /// The policy of a config's `[policy]` table.
    pub fn new(config: PolicyConfig) -> Self {
        Self { config }
    }

    /// The settings, for `--diagnose`.
    pub fn config(&self) -> &PolicyConfig {
        &self.config
    }

    /// May this safe action run? `Err` carries the reason for the `forbidden` response.
    pub fn check_safe(&self, action: &SafeAction) -> Result<(), String> {
        let name = action.name();
        if self.config.denied_safe_actions.iter().any(|d| d == name) {
            return Err(format!(
                "safe action `{name}` is denied by the agent's policy"
            ));
        }
        if !self.config.allowed_safe_actions.is_empty()
            && !self.config.allowed_safe_actions.iter().any(|a| a == name)
        {
            return Err(format!(
                "safe action `{name}` is not in the agent's allowed list"
            ));
        }
        Ok(())
    }

    /// May raw commands run?
    pub fn check_unsafe(&self) -> Result<(), String> {
        if self.config.allow_unsafe {
            Ok(())
        } else {
            Err(
                "unsafe commands are disabled by the agent's policy (policy.allow_unsafe = false)"
                    .into(),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow_unsafe: bool, allowed: &[&str], denied: &[&str]) -> Policy {
        Policy::new(PolicyConfig {
            allow_unsafe,
            allowed_safe_actions: allowed.iter().map(|s| s.to_string()).collect(),
            denied_safe_actions: denied.iter().map(|s| s.to_string()).collect(),
        })
    }

    #[test]
    fn unsafe_is_refused_by_default() {
        assert!(Policy::default().check_unsafe().is_err());
        assert!(policy(true, &[], &[]).check_unsafe().is_ok());
    }

    #[test]
    fn empty_lists_allow_every_safe_action() {
        assert!(Policy::default().check_safe(&SafeAction::Reboot).is_ok());
    }

    #[test]
    fn deny_list_refuses_and_wins_over_allow_list() {
        let p = policy(false, &["Reboot", "OsInfo"], &["Reboot"]);
        assert!(p.check_safe(&SafeAction::Reboot).is_err());
        assert!(p.check_safe(&SafeAction::OsInfo).is_ok());
    }

    #[test]
    fn allow_list_refuses_everything_else() {
        let p = policy(false, &["OsInfo"], &[]);
        assert!(p.check_safe(&SafeAction::OsInfo).is_ok());
        assert!(p.check_safe(&SafeAction::Shutdown).is_err());
        assert!(p.check_safe(&SafeAction::ServiceList).is_err());
    }
}
