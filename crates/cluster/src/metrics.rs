//! Prometheus lines of the scale-out parts, appended to a node's or an API's `/metrics`: the
//! NATS connection, a node's outbox, and (on an API) the fleet's nodes.

use std::fmt::Write as _;

use crate::bus::BusStats;
use crate::directory::NodeSummary;
use crate::link::LinkStats;

fn line(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}

/// The NATS connection.
pub fn write_link(out: &mut String, link: &LinkStats) {
    line(
        out,
        "infinibay_nats_connected",
        "gauge",
        "1 while this process is connected to NATS",
        u8::from(link.connected),
    );
    line(
        out,
        "infinibay_nats_state_seconds",
        "gauge",
        "Seconds in the current NATS connection state (connected or not)",
        link.for_secs,
    );
    line(
        out,
        "infinibay_nats_disconnects_total",
        "counter",
        "Times the NATS connection was lost",
        link.disconnects,
    );
    line(
        out,
        "infinibay_nats_out_messages_total",
        "counter",
        "Messages sent to NATS",
        link.out_messages,
    );
    line(
        out,
        "infinibay_nats_in_messages_total",
        "counter",
        "Messages received from NATS",
        link.in_messages,
    );
    line(
        out,
        "infinibay_nats_slow_consumer_events_total",
        "counter",
        "Times a NATS subscription of this process fell behind and lost messages",
        link.slow_consumer_events,
    );
}

/// A node's event outbox.
pub fn write_bus(out: &mut String, bus: &BusStats) {
    line(
        out,
        "infinibay_bus_buffered_events",
        "gauge",
        "Live events waiting for NATS",
        bus.buffered,
    );
    line(
        out,
        "infinibay_bus_dropped_events_total",
        "counter",
        "Live events dropped because NATS was away longer than the outbox lasts (storage is not affected)",
        bus.dropped,
    );
    line(
        out,
        "infinibay_bus_published_events_total",
        "counter",
        "Live events handed to NATS",
        bus.published,
    );
}

/// The fleet as an API sees it.
pub fn write_nodes(out: &mut String, nodes: &[NodeSummary]) {
    line(
        out,
        "infinibay_nodes_alive",
        "gauge",
        "Nodes heard within the liveness window",
        nodes.iter().filter(|n| n.alive).count(),
    );
    let name = "infinibay_node_up";
    let _ = writeln!(
        out,
        "# HELP {name} 1 while the node is heard within the liveness window\n# TYPE {name} gauge"
    );
    for n in nodes {
        let _ = writeln!(out, "{name}{{node=\"{}\"}} {}", n.node, u8::from(n.alive));
    }
    let name = "infinibay_node_store_backlog_samples";
    let _ = writeln!(
        out,
        "# HELP {name} Samples a node keeps for a later write (its database refused them)\n# TYPE {name} gauge"
    );
    for n in nodes {
        let _ = writeln!(
            out,
            "{name}{{node=\"{}\"}} {}",
            n.node, n.store_backlog_samples
        );
    }
}
