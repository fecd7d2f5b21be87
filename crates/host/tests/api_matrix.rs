//! The authorization matrix, generated: every root field of the GraphQL schema (read from its
//! SDL), every Socket.IO client event and every REST route, against six callers (ADMIN, the
//! VM's owner, another USER, no token, an expired token, a deleted user's token), on a real
//! server with a simulated VM. A new root field, event or route without a rule here fails.

mod api_common;
mod sio_client;

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use api_common::{Server, error_code};
use infinibay::api;
use infinibay::store::{Inventory, InventoryKind, NewUser, Role};
use sio_client::{SioClient, SioConnect};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Caller {
    NoToken,
    Expired,
    Deleted,
    Other,
    Owner,
    Admin,
}

const CALLERS: [Caller; 6] = [
    Caller::NoToken,
    Caller::Expired,
    Caller::Deleted,
    Caller::Other,
    Caller::Owner,
    Caller::Admin,
];

/// Who may use an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    /// Anyone, token or not (login).
    Public,
    /// Any valid token.
    Authenticated,
    /// ADMIN, or the owner of the VM.
    VmScoped,
    /// ADMIN, or the owner holding `unsafe_commands` (our owner does not).
    UnsafeCommand,
    /// ADMIN only.
    AdminOnly,
    /// ADMIN, or the owner of the VM, and then libvirt decides: this server runs without
    /// libvirt, so an allowed caller gets `LIBVIRT_UNAVAILABLE` — past the access check.
    VmLifecycle,
    /// Any valid token, then libvirt decides (`LIBVIRT_UNAVAILABLE` here).
    AnyUserLifecycle,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Ok,
    Code(&'static str),
}

fn expected(rule: Rule, caller: Caller) -> Outcome {
    let authenticated = matches!(caller, Caller::Admin | Caller::Owner | Caller::Other);
    match rule {
        Rule::Public => Outcome::Ok,
        _ if !authenticated => Outcome::Code("UNAUTHENTICATED"),
        Rule::Authenticated => Outcome::Ok,
        Rule::AnyUserLifecycle => Outcome::Code("LIBVIRT_UNAVAILABLE"),
        Rule::VmScoped | Rule::VmLifecycle if caller == Caller::Other => Outcome::Code("FORBIDDEN"),
        Rule::VmLifecycle => Outcome::Code("LIBVIRT_UNAVAILABLE"),
        Rule::VmScoped => Outcome::Ok,
        Rule::UnsafeCommand | Rule::AdminOnly if caller == Caller::Admin => Outcome::Ok,
        Rule::UnsafeCommand | Rule::AdminOnly => Outcome::Code("FORBIDDEN"),
    }
}

/// The root fields of `type <root> { … }` in the SDL.
fn root_fields(sdl: &str, root: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut inside = false;
    let mut depth = 0i32;
    let mut in_description = false;
    for line in sdl.lines() {
        let trimmed = line.trim();
        if !inside {
            if trimmed.starts_with(&format!("type {root} ")) || trimmed == format!("type {root} {{")
            {
                inside = true;
            }
            continue;
        }
        if trimmed == "}" && depth == 0 {
            break;
        }
        // Descriptions: `"""` blocks (possibly one line) and `"…"` lines.
        if in_description {
            if trimmed.contains("\"\"\"") {
                in_description = false;
            }
            continue;
        }
        if let Some(rest) = trimmed.strip_prefix("\"\"\"") {
            in_description = !rest.contains("\"\"\"");
            continue;
        }
        if depth == 0
            && let Some(name) = trimmed
                .split(['(', ':'])
                .next()
                .map(str::trim)
                .filter(|n| !n.is_empty() && !n.starts_with('"') && !n.starts_with('#'))
        {
            fields.push(name.to_owned());
        }
        depth += trimmed.matches('(').count() as i32 - trimmed.matches(')').count() as i32;
    }
    fields
}

struct Tokens(BTreeMap<Caller, Option<String>>);

impl Tokens {
    fn of(&self, c: Caller) -> Option<&str> {
        self.0.get(&c).and_then(|t| t.as_deref())
    }
}

async fn tokens(server: &Server) -> Tokens {
    let mut map = BTreeMap::new();
    map.insert(Caller::Admin, Some(server.login(&server.admin).await));
    map.insert(Caller::Owner, Some(server.login(&server.owner).await));
    map.insert(Caller::Other, Some(server.login(&server.other).await));
    map.insert(Caller::NoToken, None);
    let auth = api::auth::Authenticator::new(
        &server.secret,
        Duration::from_secs(3600),
        server.store.clone(),
    );
    let now = chrono::Utc::now();
    let expired = auth
        .issue_with(
            &server.owner.record,
            now - chrono::Duration::hours(2),
            now - chrono::Duration::hours(1),
        )
        .expect("mint an expired token");
    map.insert(Caller::Expired, Some(expired));
    let victim = server.login(&server.victim).await;
    server
        .store
        .users()
        .delete_user(server.victim.record.id)
        .await
        .expect("delete the victim");
    map.insert(Caller::Deleted, Some(victim));
    Tokens(map)
}

/// A throwaway user (no argon2: it never logs in).
async fn scratch_user(server: &Server, name: &str) -> i64 {
    server
        .store
        .users()
        .create_user(
            &NewUser {
                username: name.to_owned(),
                password_hash: "$argon2id$unused".into(),
                role: Role::User,
                department: None,
                permissions: vec![],
                namespace: format!("user_{name}"),
            },
            chrono::Utc::now(),
        )
        .await
        .expect("scratch user")
        .id
}

/// The document, variables and rule of a root field, for one call.
async fn graphql_case(
    server: &Server,
    root: &str,
    field: &str,
    caller: Caller,
) -> Option<(String, Value, Rule)> {
    let vm = json!(server.vm_id);
    let tag = format!("{caller:?}").to_lowercase();
    let now = chrono::Utc::now();
    let case = match (root, field) {
        ("QueryRoot", "me") => ("query { me { id username role } }".into(), json!({}), Rule::Authenticated),
        ("QueryRoot", "vms") => ("query { vms { id name status owner { username } latestMetrics { cpuPercent } } }".into(), json!({}), Rule::Authenticated),
        ("QueryRoot", "vm") => ("query($id: ID!) { vm(id: $id) { id status agent { os } ipAddresses } }".into(), json!({"id": vm}), Rule::VmScoped),
        ("QueryRoot", "getVmMetrics") => ("query($id: ID!) { getVmMetrics(vmId: $id) { id timestamp cpuUsage memoryUsed memoryTotal diskUsage networkStats } }".into(), json!({"id": vm}), Rule::VmScoped),
        ("QueryRoot", "vmErrors") => ("query($id: ID!) { vmErrors(vmId: $id) { at code message } }".into(), json!({"id": vm}), Rule::VmScoped),
        ("QueryRoot", "vmTelemetry") => ("query($id: ID!) { vmTelemetry(vmId: $id) { interval collectors } }".into(), json!({"id": vm}), Rule::VmScoped),
        ("QueryRoot", "alerts") => ("query($id: ID) { alerts(vmId: $id) { id kind raisedAt resolvedAt } }".into(), json!({"id": vm}), Rule::VmScoped),
        ("QueryRoot", "alertRules") => ("query { alertRules { id kind threshold } }".into(), json!({}), Rule::AdminOnly),
        ("QueryRoot", "vmMetrics") => (
            "query($id: ID!, $f: DateTime!, $t: DateTime!) { vmMetrics(vmId: $id, from: $f, to: $t) { resolution points { at cpuAvg } } }".into(),
            json!({"id": vm, "f": (now - chrono::Duration::hours(1)).to_rfc3339(), "t": now.to_rfc3339()}),
            Rule::VmScoped,
        ),
        ("QueryRoot", "vmProcesses") => ("query($id: ID!) { vmProcesses(vmId: $id) { pid name } }".into(), json!({"id": vm}), Rule::VmScoped),
        ("QueryRoot", "vmPorts") => ("query($id: ID!) { vmPorts(vmId: $id) { port protocol } }".into(), json!({"id": vm}), Rule::VmScoped),
        ("QueryRoot", "vmApplications") => ("query($id: ID!) { vmApplications(vmId: $id) { name } }".into(), json!({"id": vm}), Rule::VmScoped),
        ("QueryRoot", "vmServices") => ("query($id: ID!) { vmServices(vmId: $id) { name activeState } }".into(), json!({"id": vm}), Rule::VmScoped),
        ("QueryRoot", "commandLogs") => ("query($id: ID!) { commandLogs(vmId: $id) { id kind success user { username } } }".into(), json!({"id": vm}), Rule::VmScoped),
        ("QueryRoot", "users") => ("query { users { id username } }".into(), json!({}), Rule::AdminOnly),
        ("QueryRoot", "hypervisor") => ("query { hypervisor { state uri reason baseImages } }".into(), json!({}), Rule::Authenticated),
        ("QueryRoot", "vmInstallToken") => ("query($id: ID!) { vmInstallToken(vmId: $id) }".into(), json!({"id": vm}), Rule::VmScoped),
        ("MutationRoot", "login") => (
            "mutation($u: String!, $p: String!) { login(username: $u, password: $p) { token user { id role } } }".into(),
            json!({"u": "owner", "p": api_common::PASSWORD}),
            Rule::Public,
        ),
        ("MutationRoot", "executeVmCommand") => (
            "mutation($id: ID!) { executeVmCommand(vmId: $id, command: {type: SAFE, action: \"SystemInfo\"}) { id success } }".into(),
            json!({"id": vm}),
            Rule::VmScoped,
        ),
        ("MutationRoot", "createUser") => (
            "mutation($u: String!) { createUser(input: {username: $u, password: \"long-enough-pw\"}) { id role } }".into(),
            json!({"u": format!("new_{tag}")}),
            Rule::AdminOnly,
        ),
        ("MutationRoot", "deleteUser") => {
            let id = scratch_user(server, &format!("del_{tag}")).await;
            ("mutation($id: ID!) { deleteUser(id: $id) }".into(), json!({"id": id.to_string()}), Rule::AdminOnly)
        }
        ("MutationRoot", "setUserPassword") => {
            let id = scratch_user(server, &format!("pw_{tag}")).await;
            ("mutation($id: ID!) { setUserPassword(id: $id, password: \"another-long-pw\") }".into(), json!({"id": id.to_string()}), Rule::AdminOnly)
        }
        ("MutationRoot", "grantPermission") => {
            let id = scratch_user(server, &format!("grant_{tag}")).await;
            ("mutation($id: ID!) { grantPermission(id: $id, permission: \"unsafe_commands\") { permissions } }".into(), json!({"id": id.to_string()}), Rule::AdminOnly)
        }
        ("MutationRoot", "setVmOwner") => (
            "mutation($id: ID!, $u: ID) { setVmOwner(vmId: $id, userId: $u, department: \"eng\") { id owner { username } } }".into(),
            json!({"id": vm, "u": server.owner.record.id.to_string()}),
            Rule::AdminOnly,
        ),
        ("MutationRoot", "deleteVm") => {
            let id = format!("00000000-0000-4000-8000-{:012}", caller as u8);
            server.scratch_vm(&id, Some(server.owner.record.id)).await;
            ("mutation($id: ID!) { deleteVm(vmId: $id) }".into(), json!({"id": id}), Rule::VmScoped)
        }
        ("MutationRoot", "vmConsoleTicket") => (
            "mutation($id: ID!) { vmConsoleTicket(vmId: $id) { ticket expiresAt path } }".into(),
            json!({"id": vm}),
            Rule::VmScoped,
        ),
        ("MutationRoot", "createVm") => (
            "mutation { createVm(input: {name: \"matrix\", memoryMib: 64, kernel: {kernel: \"vmlinuz\", initrd: \"initrd\"}}) { id powerState } }".into(),
            json!({}),
            Rule::AnyUserLifecycle,
        ),
        // The simulated VM's agent is online: a shutdown goes through it (the simulator
        // answers), without libvirt.
        ("MutationRoot", "shutdown") => (
            "mutation($id: ID!) { shutdown(vmId: $id) { action via powerState vm { id } } }".into(),
            json!({"id": vm}),
            Rule::VmScoped,
        ),
        ("MutationRoot", field @ ("powerOn" | "powerOff" | "reboot" | "suspend" | "resume")) => (
            format!("mutation($id: ID!) {{ {field}(vmId: $id) {{ action via powerState }} }}"),
            json!({"id": vm}),
            Rule::VmLifecycle,
        ),
        ("MutationRoot", "attachAgentChannel") => (
            "mutation($id: ID!) { attachAgentChannel(vmId: $id) { socket attachedLive } }".into(),
            json!({"id": vm}),
            Rule::VmLifecycle,
        ),
        ("MutationRoot", "renameVm") => (
            "mutation($id: ID!, $n: String!) { renameVm(vmId: $id, name: $n) { id name } }".into(),
            json!({"id": vm, "n": format!("renamed by {tag}")}),
            Rule::VmScoped,
        ),
        ("MutationRoot", "setVmTelemetry") => (
            "mutation($id: ID!) { setVmTelemetry(vmId: $id, interval: 1, collectors: [\"system_metrics\"]) { settings { interval } } }".into(),
            json!({"id": vm}),
            Rule::VmScoped,
        ),
        ("MutationRoot", "createAlertRule") => (
            "mutation($id: ID) { createAlertRule(input: {vmId: $id, kind: CPU, threshold: 99.5, durationSeconds: 60}) { id } }".into(),
            json!({"id": vm}),
            Rule::AdminOnly,
        ),
        ("MutationRoot", "deleteAlertRule") => (
            "mutation { deleteAlertRule(id: \"no-such-rule\") }".into(),
            json!({}),
            Rule::AdminOnly,
        ),
        ("SubscriptionRoot", "vmMetrics") => ("subscription($id: ID!) { vmMetrics(vmId: $id) { at cpuPercent } }".into(), json!({"id": vm}), Rule::VmScoped),
        ("SubscriptionRoot", "vmStatus") => ("subscription { vmStatus { vmId status } }".into(), json!({}), Rule::Authenticated),
        _ => return None,
    };
    Some(case)
}

/// Run a subscription over graphql-ws: `Ok` when data (or, for `quiet_ok`, nothing bad)
/// arrives, else the error code.
async fn subscribe_once(
    server: &Server,
    token: Option<&str>,
    query: &str,
    variables: Value,
    quiet_ok: bool,
) -> Outcome {
    let mut request = format!("ws://{}/graphql/ws", server.addr)
        .into_client_request()
        .expect("ws request");
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "graphql-transport-ws".parse().expect("header"),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("connect graphql-ws");
    let payload = match token {
        Some(t) => json!({"Authorization": format!("Bearer {t}")}),
        None => json!({}),
    };
    ws.send(Message::text(
        json!({"type": "connection_init", "payload": payload}).to_string(),
    ))
    .await
    .expect("init");
    ws.send(Message::text(
        json!({"id": "1", "type": "subscribe", "payload": {"query": query, "variables": variables}}).to_string(),
    ))
    .await
    .expect("subscribe");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(if quiet_ok { 2 } else { 6 });
    loop {
        let next = tokio::time::timeout_at(deadline, ws.next()).await;
        let msg = match next {
            Err(_) if quiet_ok => return Outcome::Ok,
            Err(_) => panic!("no answer to subscription {query}"),
            Ok(None) => panic!("graphql-ws closed without an answer to {query}"),
            Ok(Some(Err(e))) => panic!("graphql-ws error: {e}"),
            Ok(Some(Ok(m))) => m,
        };
        let Ok(text) = msg.to_text() else { continue };
        let v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
        match v.get("type").and_then(Value::as_str) {
            Some("next") => {
                if let Some(code) = error_code(v.get("payload").unwrap_or(&Value::Null)) {
                    return Outcome::Code(leak(code));
                }
                return Outcome::Ok;
            }
            Some("error") => {
                let code = v
                    .pointer("/payload/0/extensions/code")
                    .and_then(Value::as_str)
                    .unwrap_or("NO_CODE")
                    .to_owned();
                return Outcome::Code(leak(code));
            }
            _ => continue,
        }
    }
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn socket_rule(event: &str) -> Option<Rule> {
    match event {
        "subscribe:vm" => Some(Rule::VmScoped),
        "unsubscribe:vm" => Some(Rule::Authenticated),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_query_mutation_subscription_event_and_route_obeys_the_rule_set() {
    let server = Server::start(1, Duration::from_millis(250)).await;
    let tokens = tokens(&server).await;
    let sdl = api::graphql::sdl();
    let mut failures = Vec::new();
    let mut checked = 0usize;

    // ----- GraphQL: every root field of the schema.
    for root in ["QueryRoot", "MutationRoot", "SubscriptionRoot"] {
        let fields = root_fields(&sdl, root);
        assert!(
            !fields.is_empty(),
            "no fields found for {root} in the SDL:\n{sdl}"
        );
        for field in fields {
            for caller in CALLERS {
                let Some((query, vars, rule)) = graphql_case(&server, root, &field, caller).await
                else {
                    failures.push(format!(
                        "{root}.{field}: no matrix entry (add one with its rule)"
                    ));
                    break;
                };
                let want = expected(rule, caller);
                let token = tokens.of(caller);
                let got = if root == "SubscriptionRoot" {
                    subscribe_once(&server, token, &query, vars, field == "vmStatus").await
                } else {
                    let r = server.gql(token, &query, vars).await;
                    match error_code(&r) {
                        Some(code) => Outcome::Code(leak(code)),
                        None => {
                            // Seeing a list is allowed; seeing a VM one may not is not.
                            if field == "vms" && caller == Caller::Other {
                                let leaked = r["data"]["vms"].as_array().is_some_and(|l| {
                                    l.iter().any(|v| v["id"] == json!(server.vm_id))
                                });
                                if leaked {
                                    failures.push("vms: another user sees the owner's VM".into());
                                }
                            }
                            Outcome::Ok
                        }
                    }
                };
                checked += 1;
                if got != want {
                    failures.push(format!(
                        "{root}.{field} as {caller:?}: expected {want:?}, got {got:?}"
                    ));
                }
            }
        }
    }

    // ----- A second row for executeVmCommand: UNSAFE needs `unsafe_commands`.
    for caller in CALLERS {
        let want = expected(Rule::UnsafeCommand, caller);
        let r = server
            .gql(
                tokens.of(caller),
                "mutation($id: ID!) { executeVmCommand(vmId: $id, command: {type: UNSAFE, argv: [\"true\"]}) { id } }",
                json!({"id": server.vm_id}),
            )
            .await;
        let got = match error_code(&r) {
            Some(code) => Outcome::Code(leak(code)),
            None => Outcome::Ok,
        };
        checked += 1;
        if got != want {
            failures.push(format!(
                "executeVmCommand UNSAFE as {caller:?}: expected {want:?}, got {got:?} ({r})"
            ));
        }
    }

    // ----- Socket.IO: connecting, then every client event.
    for caller in CALLERS {
        let token = tokens.of(caller);
        let connected = SioClient::connect(server.addr, token).await;
        let authenticated = matches!(caller, Caller::Admin | Caller::Owner | Caller::Other);
        match (connected, authenticated) {
            (SioConnect::Connected(mut client, info), true) => {
                checked += 1;
                if info["namespace"]
                    .as_str()
                    .is_none_or(|n| !n.starts_with("user_"))
                {
                    failures.push(format!(
                        "socket connected as {caller:?} without a namespace: {info}"
                    ));
                }
                for event in api::realtime::CLIENT_EVENTS {
                    let Some(rule) = socket_rule(event) else {
                        failures.push(format!("socket event {event}: no matrix entry"));
                        continue;
                    };
                    let ack = client.emit_ack(event, json!(server.vm_id)).await;
                    let got = if ack["ok"] == json!(true) {
                        Outcome::Ok
                    } else {
                        Outcome::Code("FORBIDDEN")
                    };
                    checked += 1;
                    if got != expected(rule, caller) {
                        failures.push(format!(
                            "socket {event} as {caller:?}: expected {:?}, ack {ack}",
                            expected(rule, caller)
                        ));
                    }
                }
            }
            (SioConnect::Refused(message), false) => {
                checked += 1 + api::realtime::CLIENT_EVENTS.len();
                let want = match caller {
                    Caller::NoToken => "Authentication token required",
                    Caller::Expired => "Invalid or expired token",
                    _ => "User not found",
                };
                if message != want {
                    failures.push(format!(
                        "socket connect as {caller:?}: expected `{want}`, got `{message}`"
                    ));
                }
            }
            (SioConnect::Connected(..), false) => {
                failures.push(format!("socket connect as {caller:?} was accepted"))
            }
            (SioConnect::Refused(m), true) => {
                failures.push(format!("socket connect as {caller:?} refused: {m}"))
            }
        }
    }

    // ----- REST: every route of the API's router.
    let binaries = server.data_dir.join("infiniservice/binaries/linux");
    std::fs::create_dir_all(&binaries).expect("binaries dir");
    std::fs::write(binaries.join("infiniservice"), b"\x7fELF agent bytes").expect("binary");
    let windows = server.data_dir.join("infiniservice/binaries/windows");
    std::fs::create_dir_all(&windows).expect("windows binaries dir");
    std::fs::write(windows.join("infiniservice.msi"), b"\xd0\xcf\x11\xe0 msi").expect("msi");
    let scripts = server.data_dir.join("infiniservice/scripts");
    std::fs::create_dir_all(&scripts).expect("scripts dir");
    std::fs::write(
        scripts.join("install-linux.sh"),
        b"#!/bin/sh\necho install\n",
    )
    .expect("script");
    let http = reqwest::Client::new();
    for (route, auth) in api::rest::ROUTES {
        let path = route.replace("{platform}", "linux");
        for caller in CALLERS {
            let mut req = http.get(format!("{}{path}", server.url));
            if let Some(t) = tokens.of(caller) {
                req = req.bearer_auth(t);
            }
            let status = req.send().await.expect("GET").status().as_u16();
            let authenticated = matches!(caller, Caller::Admin | Caller::Owner | Caller::Other);
            let want = match auth {
                // Not on the main listener, whoever asks (its own listener is checked below).
                api::rest::RouteAuth::MetricsListener => 404,
                api::rest::RouteAuth::Authenticated if authenticated => 200,
                api::rest::RouteAuth::Authenticated => 401,
            };
            checked += 1;
            if status != want {
                failures.push(format!(
                    "GET {path} as {caller:?}: expected {want}, got {status}"
                ));
            }
        }
    }

    // The metrics listener serves `/metrics` and nothing else.
    let status =
        |url: String| async move { reqwest::get(url).await.expect("GET").status().as_u16() };
    checked += 2;
    if status(server.metrics_url.clone()).await != 200 {
        failures.push("GET /metrics on the metrics listener: not 200".into());
    }
    let graphql_there = server.metrics_url.replace("/metrics", "/graphql");
    if status(graphql_there).await != 404 {
        failures.push("the metrics listener serves more than /metrics".into());
    }

    assert!(
        failures.is_empty(),
        "{} of {checked} checks failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!("authorization matrix: {checked} checks passed");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_install_token_downloads_the_agent_without_a_user_token() {
    let server = Server::start(1, Duration::from_millis(500)).await;
    let dir = server.data_dir.join("infiniservice/binaries/linux");
    std::fs::create_dir_all(&dir).expect("dir");
    let bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(dir.join("infiniservice"), &bytes).expect("binary");
    let owner = server.login(&server.owner).await;
    let r = server
        .gql(
            Some(&owner),
            "query($id: ID!) { vmInstallToken(vmId: $id) }",
            json!({"id": server.vm_id}),
        )
        .await;
    let install = r["data"]["vmInstallToken"]
        .as_str()
        .expect("install token")
        .to_owned();
    let got = reqwest::get(format!(
        "{}/infiniservice/linux/binary?token={install}",
        server.url
    ))
    .await
    .expect("GET");
    assert_eq!(got.status().as_u16(), 200);
    assert_eq!(
        got.bytes().await.expect("body").as_ref(),
        bytes.as_slice(),
        "streamed intact"
    );
    let forged = reqwest::get(format!(
        "{}/infiniservice/linux/binary?token=forged",
        server.url
    ))
    .await
    .expect("GET");
    assert_eq!(forged.status().as_u16(), 401);

    // The MSI: the same tokens, from beside infiniservice.exe; 404 until it is published.
    let msi_url = format!("{}/infiniservice/windows/msi?token={install}", server.url);
    let missing = reqwest::get(&msi_url).await.expect("GET");
    assert_eq!(missing.status().as_u16(), 404);
    let windows = server.data_dir.join("infiniservice/binaries/windows");
    std::fs::create_dir_all(&windows).expect("dir");
    // An MSI is an OLE compound file: its signature, then bytes.
    let mut msi = vec![0xd0, 0xcf, 0x11, 0xe0, 0xa1, 0xb1, 0x1a, 0xe1];
    msi.extend((0..100_000u32).map(|i| (i % 253) as u8));
    std::fs::write(windows.join("infiniservice.msi"), &msi).expect("msi");
    let got = reqwest::get(&msi_url).await.expect("GET");
    assert_eq!(got.status().as_u16(), 200);
    let header = |name: &str| {
        got.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    assert_eq!(header("content-type").as_deref(), Some("application/x-msi"));
    assert_eq!(
        header("content-disposition").as_deref(),
        Some("attachment; filename=\"infiniservice.msi\"")
    );
    assert_eq!(got.bytes().await.expect("body").as_ref(), msi.as_slice());
    let forged = reqwest::get(format!(
        "{}/infiniservice/windows/msi?token=forged",
        server.url
    ))
    .await
    .expect("GET");
    assert_eq!(forged.status().as_u16(), 401);
    // An install token is not a user token.
    let r = server
        .gql(Some(&install), "query { me { id } }", json!({}))
        .await;
    assert_eq!(error_code(&r).as_deref(), Some("UNAUTHENTICATED"), "{r}");
    // It lives as long as its issuer's access: a password change revokes it.
    let admin = server.login(&server.admin).await;
    let r = server
        .gql(
            Some(&admin),
            "mutation($id: ID!) { setUserPassword(id: $id, password: \"a-brand-new-pw\") }",
            json!({"id": server.owner.record.id.to_string()}),
        )
        .await;
    assert_eq!(r["data"]["setUserPassword"], json!(true), "{r}");
    let revoked = reqwest::get(format!(
        "{}/infiniservice/linux/binary?token={install}",
        server.url
    ))
    .await
    .expect("GET");
    assert_eq!(
        revoked.status().as_u16(),
        401,
        "the issuer changed password: the install token is revoked"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_issued_before_a_password_change_are_refused_and_commands_are_logged_with_their_user()
 {
    let server = Server::start(1, Duration::from_millis(500)).await;
    let admin = server.login(&server.admin).await;
    let owner = server.login(&server.owner).await;

    // A safe command by the owner and a refused unsafe one both land in the log with the user.
    let r = server
        .gql(
            Some(&owner),
            "mutation($id: ID!) { executeVmCommand(vmId: $id, command: {type: SAFE, action: \"SystemInfo\"}) { success } }",
            json!({"id": server.vm_id}),
        )
        .await;
    assert!(r.get("errors").is_none(), "{r}");
    let r = server
        .gql(
            Some(&owner),
            "mutation($id: ID!) { executeVmCommand(vmId: $id, command: {type: SAFE, action: \"ServiceControl\", params: {service: \"--evil\", operation: \"restart\"}}) { success } }",
            json!({"id": server.vm_id}),
        )
        .await;
    assert_eq!(error_code(&r).as_deref(), Some("INVALID"), "{r}");
    // An UNSAFE command the owner may not send is refused, and logged with the reason.
    let r = server
        .gql(
            Some(&owner),
            "mutation($id: ID!) { executeVmCommand(vmId: $id, command: {type: UNSAFE, argv: [\"id\"]}) { success } }",
            json!({"id": server.vm_id}),
        )
        .await;
    assert_eq!(error_code(&r).as_deref(), Some("FORBIDDEN"), "{r}");
    let mut logged = Value::Null;
    for _ in 0..50 {
        logged = server
            .gql(
                Some(&admin),
                "query($id: ID!) { commandLogs(vmId: $id) { kind success response user { username } } }",
                json!({"id": server.vm_id}),
            )
            .await;
        if logged["data"]["commandLogs"]
            .as_array()
            .is_some_and(|l| l.len() >= 3)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let logs = logged["data"]["commandLogs"].as_array().expect("logs");
    assert!(logs.len() >= 3, "{logged}");
    assert!(
        logs.iter().all(|l| l["user"]["username"] == json!("owner")),
        "{logged}"
    );
    let forbidden = logs
        .iter()
        .find(|l| l["response"]["code"] == json!("forbidden"))
        .unwrap_or_else(|| panic!("no refused command in the log: {logged}"));
    assert_eq!(forbidden["kind"], json!("unsafe"), "{logged}");
    assert_eq!(forbidden["success"], json!(false), "{logged}");
    assert!(
        forbidden["response"]["host_error"]
            .as_str()
            .is_some_and(|e| e.contains("unsafe_commands")),
        "the reason is logged: {logged}"
    );

    // The owner changes their own password: without the current one, or with a wrong one,
    // it is refused; with it, the old token stops working at once.
    let change = "mutation($id: ID!, $current: String) { setUserPassword(id: $id, password: \"a-brand-new-pw\", currentPassword: $current) }";
    let own_id = server.owner.record.id.to_string();
    let r = server
        .gql(Some(&owner), change, json!({"id": own_id}))
        .await;
    assert_eq!(error_code(&r).as_deref(), Some("INVALID"), "{r}");
    let r = server
        .gql(
            Some(&owner),
            change,
            json!({"id": own_id, "current": "not-the-password"}),
        )
        .await;
    assert_eq!(error_code(&r).as_deref(), Some("FORBIDDEN"), "{r}");
    let r = server
        .gql(
            Some(&owner),
            change,
            json!({"id": own_id, "current": api_common::PASSWORD}),
        )
        .await;
    assert_eq!(r["data"]["setUserPassword"], json!(true), "{r}");
    let r = server
        .gql(Some(&owner), "query { me { id } }", json!({}))
        .await;
    assert_eq!(error_code(&r).as_deref(), Some("UNAUTHENTICATED"), "{r}");
    let r = server
        .gql(
            None,
            "mutation { login(username: \"owner\", password: \"a-brand-new-pw\") { token } }",
            json!({}),
        )
        .await;
    let fresh = r["data"]["login"]["token"]
        .as_str()
        .expect("new login")
        .to_owned();
    let r = server
        .gql(Some(&fresh), "query { me { username } }", json!({}))
        .await;
    assert_eq!(r["data"]["me"]["username"], json!("owner"), "{r}");

    // Wrong password: one message for unknown users and wrong passwords.
    let r = server
        .gql(
            None,
            "mutation { login(username: \"owner\", password: \"nope-nope-nope\") { token } }",
            json!({}),
        )
        .await;
    assert_eq!(error_code(&r).as_deref(), Some("UNAUTHENTICATED"), "{r}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_events_beyond_100_a_minute_are_refused_without_a_disconnect() {
    let server = Server::start(1, Duration::from_millis(500)).await;
    let owner = server.login(&server.owner).await;
    let SioConnect::Connected(mut client, _) = SioClient::connect(server.addr, Some(&owner)).await
    else {
        panic!("owner connects");
    };
    for i in 0..100 {
        let ack = client.emit_ack("subscribe:vm", json!(server.vm_id)).await;
        assert_eq!(ack["ok"], json!(true), "event {i}: {ack}");
    }
    let ack = client.emit_ack("subscribe:vm", json!(server.vm_id)).await;
    assert_eq!(ack, json!({"ok": false, "error": "rate limited"}));
    // Still connected, and other event types have their own budget.
    let ack = client.emit_ack("unsubscribe:vm", json!(server.vm_id)).await;
    assert_eq!(ack["ok"], json!(true), "{ack}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_exposition_has_vm_gauges_and_host_counters() {
    let server = Server::start(1, Duration::from_millis(250)).await;
    let scrape = || async {
        let response = reqwest::get(server.metrics_url.clone()).await;
        let text = response.expect("GET /metrics").text().await;
        text.expect("text")
    };
    let mut text = String::new();
    for _ in 0..50 {
        text = scrape().await;
        if text.contains(&format!(
            "infinibay_vm_cpu_percent{{vm=\"{}\"}}",
            server.vm_id
        )) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for needle in [
        format!("infinibay_vm_cpu_percent{{vm=\"{}\"}}", server.vm_id),
        format!("infinibay_vm_memory_total_bytes{{vm=\"{}\"}}", server.vm_id),
        format!("infinibay_vm_up{{vm=\"{}\"}} 1", server.vm_id),
        "# TYPE infinibay_command_duration_seconds histogram".to_owned(),
        "infinibay_messages_total ".to_owned(),
        "infinibay_decode_errors_total ".to_owned(),
        "infinibay_connections 1".to_owned(),
    ] {
        assert!(text.contains(&needle), "missing `{needle}` in:\n{text}");
    }
    // Every sample that passed the fan-out was timed from its receipt by the host. The gauges
    // above come from the core, not from the fan-out, so they may show before the fan-out has
    // handled its first sample: wait for that.
    let publish_count = |text: &str| {
        text.lines()
            .find_map(|l| {
                l.strip_prefix("infinibay_realtime_publish_seconds_count{from=\"receipt\"} ")
            })
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no publication delay count in:\n{text}"))
    };
    let mut published = publish_count(&text);
    for _ in 0..50 {
        if published > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        text = scrape().await;
        published = publish_count(&text);
    }
    assert!(
        published > 0,
        "no sample timed through the fan-out:\n{text}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_inventory_row_that_does_not_read_is_reported_beside_the_rows_that_do() {
    let server = Server::start(1, Duration::from_millis(500)).await;
    let admin = server.login(&server.admin).await;
    // A VM of its own, so that the simulated one's inventories cannot replace this one.
    let vm = "0f0e0d0c-0b0a-4908-8706-050403020100";
    let now = chrono::Utc::now();
    server.scratch_vm(vm, None).await;
    server
        .store
        .replace_inventories(&[Inventory {
            vm_id: vm.to_owned(),
            kind: InventoryKind::Processes,
            received_at: now,
            items: json!([
                {"pid": 42, "name": "good"},
                {"pid": "not a pid", "name": "bad"},
                {"pid": 43, "name": "also good"},
            ]),
        }])
        .await
        .expect("store an inventory");
    let processes = "query($id: ID!) { vmProcesses(vmId: $id) { pid name } }";
    let r = server.gql(Some(&admin), processes, json!({"id": vm})).await;
    assert_eq!(
        r["data"]["vmProcesses"],
        json!([{"pid": 42, "name": "good"}, {"pid": 43, "name": "also good"}]),
        "{r}"
    );
    assert_eq!(error_code(&r).as_deref(), Some("INTERNAL"), "{r}");
    let message = r["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(message.contains("1 of 3 rows"), "{r}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_services_start_type_is_served_and_rows_stored_before_it_read_as_null() {
    let server = Server::start(1, Duration::from_millis(500)).await;
    let admin = server.login(&server.admin).await;
    let vm = "1f0e0d0c-0b0a-4908-8706-050403020101";
    server.scratch_vm(vm, None).await;
    server
        .store
        .replace_inventories(&[Inventory {
            vm_id: vm.to_owned(),
            kind: InventoryKind::Services,
            received_at: chrono::Utc::now(),
            items: json!([
                // A Windows agent's record: a start type, no load state.
                {"name": "MSSQL$SQLEXPRESS", "active_state": "active", "sub_state": "running",
                 "enabled": true, "start_type": "auto-delayed"},
                // A record stored from an agent that predates `start_type`.
                {"name": "ssh.service", "load_state": "loaded", "active_state": "active",
                 "sub_state": "running", "enabled": true},
            ]),
        }])
        .await
        .expect("store an inventory");
    let r = server
        .gql(
            Some(&admin),
            "query($id: ID!) { vmServices(vmId: $id) { name loadState enabled startType } }",
            json!({"id": vm}),
        )
        .await;
    assert_eq!(
        r["data"]["vmServices"],
        json!([
            {"name": "MSSQL$SQLEXPRESS", "loadState": null, "enabled": true, "startType": "auto-delayed"},
            {"name": "ssh.service", "loadState": "loaded", "enabled": true, "startType": null},
        ]),
        "{r}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_vm_closes_its_connection_and_it_stays_gone() {
    let server = Server::start(1, Duration::from_millis(250)).await;
    let admin = server.login(&server.admin).await;
    let r = server
        .gql(
            Some(&admin),
            "mutation($id: ID!) { deleteVm(vmId: $id) }",
            json!({"id": server.vm_id}),
        )
        .await;
    assert_eq!(r["data"]["deleteVm"], json!(true), "{r}");
    // The test configuration rescans every second; the delayed second delete follows 2 s later.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let r = server
        .gql(
            Some(&admin),
            "query($id: ID!) { vm(id: $id) { id } vms { id } }",
            json!({"id": server.vm_id}),
        )
        .await;
    assert_eq!(r["data"]["vm"], Value::Null, "{r}");
    assert_eq!(r["data"]["vms"], json!([]), "{r}");
    let metrics = reqwest::get(server.metrics_url.clone())
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("text");
    let sim = server.sim.as_ref().expect("simulator");
    let connected = sim
        .stats()
        .connected
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(connected, 0, "the simulated guest has no client any more");
    let accepted = sim
        .stats()
        .connections
        .load(std::sync::atomic::Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        sim.stats()
            .connections
            .load(std::sync::atomic::Ordering::Relaxed),
        accepted,
        "and the host does not reconnect to the socket it was told to forget"
    );
    assert!(
        metrics.contains("infinibay_connections 0"),
        "the connection is closed:\n{metrics}"
    );
    assert!(
        !metrics.contains(&format!("infinibay_vm_up{{vm=\"{}\"}}", server.vm_id)),
        "the host forgot the VM:\n{metrics}"
    );
    server.stop().await;
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A graphql-transport-ws connection with one subscription started; returns once the server
/// acknowledged the connection (the token is checked and registered by then).
async fn open_subscription(server: &Server, token: &str, query: &str, variables: Value) -> Ws {
    // The canonical URL (the matrix's `subscribe_once` uses the `/graphql/ws` alias).
    let mut request = format!("ws://{}/graphql", server.addr)
        .into_client_request()
        .expect("ws request");
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "graphql-transport-ws".parse().expect("header"),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("connect graphql-ws");
    ws.send(Message::text(
        json!({"type": "connection_init", "payload": {"Authorization": format!("Bearer {token}")}})
            .to_string(),
    ))
    .await
    .expect("init");
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("connection_ack within 10 s")
            .expect("graphql-ws open")
            .expect("graphql-ws frame");
        let v: Value = serde_json::from_str(msg.to_text().unwrap_or("")).unwrap_or(Value::Null);
        if v["type"] == json!("connection_ack") {
            break;
        }
    }
    ws.send(Message::text(
        json!({"id": "1", "type": "subscribe", "payload": {"query": query, "variables": variables}}).to_string(),
    ))
    .await
    .expect("subscribe");
    ws
}

/// Wait for the first `next` of a subscription (it is live, and authorized).
async fn first_next(ws: &mut Ws, what: &str) {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap_or_else(|_| panic!("{what}: no data within 10 s"))
            .unwrap_or_else(|| panic!("{what}: closed before any data"))
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let v: Value = serde_json::from_str(msg.to_text().unwrap_or("")).unwrap_or(Value::Null);
        match v["type"].as_str() {
            Some("next") if v["payload"].get("errors").is_none() => return,
            Some("next" | "error" | "complete") => panic!("{what}: refused: {v}"),
            _ => continue,
        }
    }
}

/// Read until the server closes the connection; the close code and reason, or why not.
async fn closed_by_server(ws: &mut Ws, within: Duration) -> Result<(u16, String), String> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return Err(format!("still open after {within:?}")),
            Ok(None) => return Err("stream ended without a close frame".into()),
            Ok(Some(Err(e))) => return Err(format!("error instead of a close frame: {e}")),
            Ok(Some(Ok(Message::Close(frame)))) => {
                return Ok(frame
                    .map(|f| (u16::from(f.code), f.reason.to_string()))
                    .unwrap_or((1005, String::new())));
            }
            Ok(Some(Ok(_))) => continue,
        }
    }
}

/// A graphql-ws connection still serves: it answers a protocol ping with a pong.
async fn answers_ping(ws: &mut Ws) -> bool {
    if ws
        .send(Message::text(json!({"type": "ping"}).to_string()))
        .await
        .is_err()
    {
        return false;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
                if v["type"] == json!("pong") {
                    return true;
                }
            }
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) | Err(_) => {
                return false;
            }
            Ok(Some(Ok(_))) => {}
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Revocation {
    /// `deleteUser` by an admin.
    DeleteUser,
    /// `setUserPassword` by an admin.
    PasswordChange,
    /// The row deleted by another process (`infinibay user delete` beside the server): only
    /// the revocation sweep can notice.
    DeletedElsewhere,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_open_subscription_of_a_deleted_or_repassworded_user_is_closed_and_others_stay_open()
{
    let server = Server::start(1, Duration::from_millis(250)).await;
    let admin = server.login(&server.admin).await;
    let auth = api::auth::Authenticator::new(
        &server.secret,
        Duration::from_secs(3600),
        server.store.clone(),
    );
    let sdl = api::graphql::sdl();
    let fields = root_fields(&sdl, "SubscriptionRoot");
    assert!(!fields.is_empty(), "no subscriptions in the SDL");
    let mut failures = Vec::new();
    let mut checked = 0usize;
    for field in &fields {
        // The case's document; the rule does not matter here: every victim is an ADMIN, so
        // every subscription is allowed until the token is revoked.
        let Some((query, vars, _rule)) =
            graphql_case(&server, "SubscriptionRoot", field, Caller::Admin).await
        else {
            failures.push(format!("SubscriptionRoot.{field}: no matrix entry"));
            continue;
        };
        let yields_at_once = field == "vmMetrics";
        let mut bystander = open_subscription(&server, &admin, &query, vars.clone()).await;
        if yields_at_once {
            first_next(&mut bystander, "bystander").await;
        }
        for how in [
            Revocation::DeleteUser,
            Revocation::PasswordChange,
            Revocation::DeletedElsewhere,
        ] {
            let name = format!("rev_{}_{how:?}", field.to_lowercase()).to_lowercase();
            let victim = server
                .store
                .users()
                .create_user(
                    &NewUser {
                        username: name.clone(),
                        password_hash: "$argon2id$unused".into(),
                        role: Role::Admin,
                        department: None,
                        permissions: vec![],
                        namespace: format!("user_{name}"),
                    },
                    chrono::Utc::now() - chrono::Duration::seconds(1),
                )
                .await
                .expect("victim user");
            let token = auth.issue(&victim).expect("victim token");
            let mut ws = open_subscription(&server, &token, &query, vars.clone()).await;
            if yields_at_once {
                first_next(&mut ws, &format!("{field} as {name}")).await;
            }
            let started = std::time::Instant::now();
            let id = json!(victim.id.to_string());
            // Through the API: the mutation and the field that answers `true`.
            let through_api = match how {
                Revocation::DeleteUser => {
                    Some(("mutation($id: ID!) { deleteUser(id: $id) }", "deleteUser"))
                }
                Revocation::PasswordChange => Some((
                    "mutation($id: ID!) { setUserPassword(id: $id, password: \"a-brand-new-pw\") }",
                    "setUserPassword",
                )),
                Revocation::DeletedElsewhere => None,
            };
            match through_api {
                Some((mutation, answer)) => {
                    let r = server.gql(Some(&admin), mutation, json!({"id": id})).await;
                    assert_eq!(r["data"][answer], json!(true), "{r}");
                }
                None => {
                    server
                        .store
                        .users()
                        .delete_user(victim.id)
                        .await
                        .expect("delete in the store");
                }
            }
            checked += 1;
            match closed_by_server(&mut ws, Duration::from_secs(5)).await {
                Ok((code, reason))
                    if code == api::sessions::REVOKED_CLOSE_CODE
                        && reason == api::sessions::REVOKED_CLOSE_REASON =>
                {
                    eprintln!(
                        "{field} × {how:?}: closed {code} `{reason}` after {} ms",
                        started.elapsed().as_millis()
                    );
                }
                Ok((code, reason)) => failures.push(format!(
                    "{field} × {how:?}: closed with {code} `{reason}`, expected {} `{}`",
                    api::sessions::REVOKED_CLOSE_CODE,
                    api::sessions::REVOKED_CLOSE_REASON
                )),
                Err(why) => failures.push(format!("{field} × {how:?}: {why}")),
            }
        }
        // Another user's subscription on the same field lived through all of it.
        checked += 1;
        if yields_at_once {
            first_next(
                &mut bystander,
                &format!("bystander of {field} after the revocations"),
            )
            .await;
        }
        if !answers_ping(&mut bystander).await {
            failures.push(format!(
                "{field}: the bystander's connection was closed too"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} checks failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    server.stop().await;
}
