//! What issue 15's mutations refuse, on a real server: every bad input is a GraphQL error
//! with a stable `extensions.code` and nothing is stored; what one caller can make the host
//! hold is bounded. And CORS: off by default, the configured origin only, with credentials.

mod api_common;

use std::time::Duration;

use serde_json::{Value, json};

use api_common::{Server, error_code};

async fn vm_name(server: &Server, token: &str) -> Value {
    server
        .gql(
            Some(token),
            "query($id: ID!) { vm(id: $id) { name } }",
            json!({"id": server.vm_id}),
        )
        .await["data"]["vm"]["name"]
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_to_every_new_mutation_is_a_coded_error_and_stores_nothing() {
    let server = Server::start(1, Duration::from_millis(250)).await;
    let admin = server.login(&server.admin).await;
    let owner = server.login(&server.owner).await;
    let vm = json!(server.vm_id);

    // renameVm: empty, too long, control characters; an unknown VM.
    let before = vm_name(&server, &owner).await;
    for bad in ["", "   ", &"x".repeat(65), "tab\there"] {
        let r = server
            .gql(
                Some(&owner),
                "mutation($id: ID!, $n: String!) { renameVm(vmId: $id, name: $n) { name } }",
                json!({"id": vm, "n": bad}),
            )
            .await;
        assert_eq!(error_code(&r).as_deref(), Some("INVALID"), "{bad:?}: {r}");
    }
    assert_eq!(
        vm_name(&server, &owner).await,
        before,
        "a refused name was kept"
    );
    let r = server
        .gql(
            Some(&admin),
            "mutation { renameVm(vmId: \"00000000-0000-4000-8000-00000000dead\", name: \"x\") { name } }",
            json!({}),
        )
        .await;
    assert_eq!(error_code(&r).as_deref(), Some("NOT_FOUND"), "{r}");

    // setVmTelemetry: interval out of range, an unknown collector, negative interval.
    for (interval, collectors) in [
        (0, json!(["system_metrics"])),
        (3601, json!(["system_metrics"])),
        (-5, json!(["system_metrics"])),
        (10, json!(["system_metrics", "keylogger"])),
    ] {
        let r = server
            .gql(
                Some(&owner),
                "mutation($id: ID!, $i: Int!, $c: [String!]!) { setVmTelemetry(vmId: $id, interval: $i, collectors: $c) { applied } }",
                json!({"id": vm, "i": interval, "c": collectors}),
            )
            .await;
        assert_eq!(
            error_code(&r).as_deref(),
            Some("INVALID"),
            "{interval} {collectors}: {r}"
        );
    }
    let stored = server
        .gql(
            Some(&owner),
            "query($id: ID!) { vmTelemetry(vmId: $id) { interval } }",
            json!({"id": vm}),
        )
        .await;
    assert_eq!(stored["data"]["vmTelemetry"], Value::Null, "{stored}");

    // createAlertRule: thresholds out of range, durations out of bounds, a missing
    // threshold, URLs that are not http(s), too many URLs.
    let create = "mutation($in: AlertRuleInput!) { createAlertRule(input: $in) { id } }";
    let bad_rules = [
        json!({"kind": "CPU", "threshold": 0, "durationSeconds": 60}),
        json!({"kind": "MEMORY", "threshold": 100.5, "durationSeconds": 60}),
        json!({"kind": "DISK", "threshold": 90, "durationSeconds": 86401}),
        json!({"kind": "CPU", "durationSeconds": 60}),
        json!({"kind": "AGENT_OFFLINE", "durationSeconds": 0}),
        json!({"kind": "CPU", "threshold": 90, "durationSeconds": 60, "webhookUrls": ["ftp://hooks.example/x"]}),
        json!({"kind": "CPU", "threshold": 90, "durationSeconds": 60, "webhookUrls": ["not a url"]}),
        json!({"kind": "CPU", "threshold": 90, "durationSeconds": 60,
               "webhookUrls": ["http://a.example", "http://b.example", "http://c.example", "http://d.example", "http://e.example"]}),
        json!({"vmId": "00000000-0000-4000-8000-00000000dead", "kind": "CPU", "threshold": 90, "durationSeconds": 60}),
    ];
    for input in bad_rules {
        let r = server.gql(Some(&admin), create, json!({"in": input})).await;
        let code = error_code(&r);
        assert!(
            matches!(code.as_deref(), Some("INVALID" | "NOT_FOUND")),
            "{input}: {r}"
        );
    }
    let rules = server
        .gql(Some(&admin), "query { alertRules { id } }", json!({}))
        .await;
    assert_eq!(rules["data"]["alertRules"], json!([]), "{rules}");

    // The bound: rules for one VM stop at the per-VM limit, and the refusal stores nothing.
    let mut made = 0;
    loop {
        let r = server
            .gql(
                Some(&admin),
                create,
                json!({"in": {"vmId": vm, "kind": "CPU", "threshold": 99.0, "durationSeconds": 60}}),
            )
            .await;
        match error_code(&r) {
            None => made += 1,
            Some(code) => {
                assert_eq!(code, "INVALID", "{r}");
                break;
            }
        }
        assert!(made <= 256, "no bound on the rules of one VM");
    }
    let rules = server
        .gql(Some(&admin), "query { alertRules { id } }", json!({}))
        .await;
    assert_eq!(
        rules["data"]["alertRules"].as_array().map(Vec::len),
        Some(made),
        "the refused rule was stored"
    );
    assert!(made > 0);

    // deleteAlertRule: an id that cannot be one.
    let r = server
        .gql(
            Some(&admin),
            "mutation($id: ID!) { deleteAlertRule(id: $id) }",
            json!({"id": "x".repeat(65)}),
        )
        .await;
    assert_eq!(error_code(&r).as_deref(), Some("INVALID"), "{r}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_answers_only_the_configured_origin_with_credentials() {
    let plain = Server::start(1, Duration::from_millis(500)).await;
    let http = reqwest::Client::new();
    let preflight = |url: &str, origin: &str| {
        http.request(reqwest::Method::OPTIONS, format!("{url}/graphql"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            )
            .send()
    };
    let r = preflight(&plain.url, "https://app.example")
        .await
        .expect("preflight");
    assert!(
        r.headers().get("access-control-allow-origin").is_none(),
        "CORS must be off by default"
    );
    plain.stop().await;

    let server = Server::start_with(1, Duration::from_millis(500), |s| {
        s.cors_origins = vec!["https://app.example".into()];
    })
    .await;
    let r = preflight(&server.url, "https://app.example")
        .await
        .expect("preflight");
    let header = |r: &reqwest::Response, name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    assert_eq!(
        header(&r, "access-control-allow-origin").as_deref(),
        Some("https://app.example")
    );
    assert_eq!(
        header(&r, "access-control-allow-credentials").as_deref(),
        Some("true")
    );
    let r = preflight(&server.url, "https://evil.example")
        .await
        .expect("preflight");
    assert!(header(&r, "access-control-allow-origin").is_none());
    // A real request from the page's origin gets the header too (login, with credentials).
    let r = http
        .post(format!("{}/graphql", server.url))
        .header("origin", "https://app.example")
        .json(&json!({"query": "{ __typename }"}))
        .send()
        .await
        .expect("POST");
    assert_eq!(
        header(&r, "access-control-allow-origin").as_deref(),
        Some("https://app.example")
    );
    server.stop().await;
}

/// Everything the process logs from here on (one global subscriber per test binary).
fn captured_logs() -> &'static std::sync::Arc<std::sync::Mutex<Vec<u8>>> {
    use std::sync::{Arc, Mutex, OnceLock};
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let for_writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || Capture(for_writer.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one subscriber");
        buffer
    })
}

struct Capture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn refusal_lines(needle: &str) -> Vec<String> {
    let logs = captured_logs().lock().unwrap_or_else(|p| p.into_inner());
    String::from_utf8_lossy(&logs)
        .lines()
        .filter(|l| l.contains("connection refused") && l.contains(needle))
        .map(str::to_owned)
        .collect()
}

/// A Socket.IO connect with `auth` over a raw WebSocket; the server's answer to the CONNECT.
async fn socket_io_connect(server: &Server, auth: Value) -> String {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", server.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("websocket");
    let open = ws.next().await.expect("open packet").expect("frame");
    assert!(open.to_text().unwrap_or("").starts_with('0'), "{open}");
    ws.send(Message::Text(format!("40{auth}").into()))
        .await
        .expect("send CONNECT");
    // Engine.IO pings may come first; the CONNECT's answer is a Socket.IO packet (`4…`).
    loop {
        let frame = ws.next().await.expect("answer").expect("frame");
        let text = frame.to_text().unwrap_or("").to_owned();
        if text.starts_with('4') {
            return text;
        }
        if text == "2" {
            let _ = ws.send(Message::Text("3".into())).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_websocket_upgrades_and_socket_io_connections_are_logged_once_with_reason_address_and_path()
 {
    captured_logs();
    let server = Server::start(1, Duration::from_millis(500)).await;
    // A graphql-ws upgrade without a subprotocol, three times: one line.
    for _ in 0..3 {
        let r = reqwest::Client::new()
            .get(format!("{}/graphql/ws", server.url))
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .send()
            .await
            .expect("GET");
        assert_eq!(r.status().as_u16(), 400);
    }
    let lines = refusal_lines("/graphql/ws");
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(
        lines[0].contains("HTTP 400") && lines[0].contains("127.0.0.1"),
        "{}",
        lines[0]
    );

    // Socket.IO with a bad token, twice, and with none: one line per reason.
    for _ in 0..2 {
        let answer = socket_io_connect(&server, json!({"token": "not-a-token"})).await;
        assert!(answer.starts_with("44"), "{answer}");
    }
    let answer = socket_io_connect(&server, json!({})).await;
    assert!(answer.starts_with("44"), "{answer}");
    let bad_token = refusal_lines("Invalid or expired token");
    assert_eq!(bad_token.len(), 1, "{bad_token:#?}");
    assert!(
        bad_token[0].contains("socket.io")
            && bad_token[0].contains("127.0.0.1")
            && bad_token[0].contains("/socket.io"),
        "{}",
        bad_token[0]
    );
    assert_eq!(refusal_lines("Authentication token required").len(), 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_lists_only_the_alerts_of_the_vms_they_own() {
    // Two simulated VMs: the first is the owner's, the second nobody's.
    let server = Server::start(2, Duration::from_millis(250)).await;
    let admin = server.login(&server.admin).await;
    let owner = server.login(&server.owner).await;
    let other = server.login(&server.other).await;
    let rule = server
        .gql(
            Some(&admin),
            "mutation { createAlertRule(input: {kind: CPU, threshold: 0.01, durationSeconds: 0}) { id } }",
            json!({}),
        )
        .await;
    assert_eq!(error_code(&rule), None, "{rule}");
    let list = "query { alerts { vmId } }";
    let vms_of = |r: &Value| -> std::collections::BTreeSet<String> {
        r["data"]["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a["vmId"].as_str().map(str::to_owned))
            .collect()
    };
    let started = std::time::Instant::now();
    loop {
        if vms_of(&server.gql(Some(&admin), list, json!({})).await).len() == 2 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "both VMs raised no alert"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let owners = vms_of(&server.gql(Some(&owner), list, json!({})).await);
    assert_eq!(
        owners.into_iter().collect::<Vec<_>>(),
        vec![server.vm_id.clone()]
    );
    assert!(vms_of(&server.gql(Some(&other), list, json!({})).await).is_empty());
    server.stop().await;
}
