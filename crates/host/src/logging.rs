//! The log filter: `RUST_LOG` (default `info`), with the WebSocket and Socket.IO libraries
//! held at `info` whatever it says. At `debug` socketioxide logs the `CONNECT` packet's auth
//! (`auth: {"token": …}`) and every received message; at `trace` tungstenite logs every frame,
//! graphql-ws' `connection_init` with its token included. A bearer token in a log file is a
//! session anyone who reads the log can take.

use tracing_subscriber::EnvFilter;

/// Targets that write what clients send (tokens included) below `info`.
pub const TOKEN_LEAKING_TARGETS: &[&str] = &[
    "socketioxide",
    "socketioxide_core",
    "socketioxide_parser_common",
    "engineioxide",
    "engineioxide_core",
    "tungstenite",
    "tokio_tungstenite",
];

/// The filter for `rust_log` (the value of `RUST_LOG`, `None` when unset or unreadable).
pub fn filter(rust_log: Option<&str>) -> EnvFilter {
    let mut filter = rust_log
        .and_then(|spec| EnvFilter::try_new(spec).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    for target in TOKEN_LEAKING_TARGETS {
        // Added last, a directive for the same target replaces the user's.
        if let Ok(directive) = format!("{target}=info").parse() {
            filter = filter.add_directive(directive);
        }
    }
    filter
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_leaking_targets_stay_at_info_whatever_rust_log_says() {
        for spec in [
            "trace",
            "debug",
            "socketioxide=trace,tungstenite=debug",
            "info,infinibay::ingest=debug",
        ] {
            let shown = filter(Some(spec)).to_string();
            for target in TOKEN_LEAKING_TARGETS {
                assert!(shown.contains(&format!("{target}=info")), "{spec}: {shown}");
                assert!(
                    !shown.contains(&format!("{target}=trace")),
                    "{spec}: {shown}"
                );
                assert!(
                    !shown.contains(&format!("{target}=debug")),
                    "{spec}: {shown}"
                );
            }
        }
        assert!(filter(Some("trace")).to_string().contains("trace"));
    }
}
