//! The NATS subjects of the fleet. Events keep the interface's own subjects
//! (`infinibay.vm.<id>.<topic>`, [`infinibay_control::event::subject`]); requests and
//! heartbeats live beside them, never under `infinibay.vm.`, so that a subscription to every
//! event (`infinibay.vm.>`) never receives a request.
//!
//! | subject | what |
//! | --- | --- |
//! | `infinibay.vm.<vm>.<topic>` | a node's events (metrics, status, inventory, error, agent, …) |
//! | `infinibay.rpc.vm.<vm>` | requests about one VM; only the node serving it subscribes |
//! | `infinibay.rpc.node.<node>` | requests to one node (its VM list, newest samples, counters) |
//! | `infinibay.node.<node>.heartbeat` | a node's heartbeat, every `heartbeat_interval_secs` |

use infinibay_control::Filter;
use infinibay_control::event::SUBJECT_PREFIX;

/// Heartbeats of every node.
pub const HEARTBEATS: &str = "infinibay.node.*.heartbeat";

/// Whether `s` can stand as one subject token: letters, digits, `-` and `_` (VM ids are
/// uuids; node ids are checked at start).
pub fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Requests about one VM (`None` for an id that is not a subject token: no VM has it).
pub fn vm_requests(vm_id: &str) -> Option<String> {
    is_token(vm_id).then(|| format!("infinibay.rpc.vm.{vm_id}"))
}

/// Requests to one node.
pub fn node_requests(node_id: &str) -> String {
    format!("infinibay.rpc.node.{node_id}")
}

/// One node's heartbeats.
pub fn heartbeat(node_id: &str) -> String {
    format!("infinibay.node.{node_id}.heartbeat")
}

/// The subject pattern of a subscription: `infinibay.vm.<vm|*>.<topic|*>` (`None` for a VM id
/// that is not a subject token: nothing is ever published there).
pub fn events(filter: &Filter) -> Option<String> {
    let vm = match &filter.vm_id {
        Some(vm) if is_token(vm) => vm.as_str(),
        Some(_) => return None,
        None => "*",
    };
    let topic = filter.topic.map_or("*", |t| t.as_str());
    Some(format!("{SUBJECT_PREFIX}.{vm}.{topic}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use infinibay_control::Topic;

    #[test]
    fn filters_become_patterns_and_requests_stay_out_of_them() {
        assert_eq!(events(&Filter::all()).as_deref(), Some("infinibay.vm.*.*"));
        assert_eq!(
            events(&Filter::vm("a-1")).as_deref(),
            Some("infinibay.vm.a-1.*")
        );
        assert_eq!(
            events(&Filter::topic(Topic::Status)).as_deref(),
            Some("infinibay.vm.*.status")
        );
        assert_eq!(events(&Filter::vm("a.b")), None);
        assert_eq!(vm_requests("x>"), None);
        let request = vm_requests("a-1").expect("token");
        assert!(!request.starts_with(SUBJECT_PREFIX), "{request}");
    }
}
