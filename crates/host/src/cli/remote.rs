//! `infinibay login` and `infinibay vm …`: the API, over HTTP, with the stored token.

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::password::read_password;
use infinibay_api::client::{self, Client};

/// `infinibay login`.
#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Server base URL (default: INFINIBAY_SERVER, else http://127.0.0.1:8080).
    #[arg(long, env = "INFINIBAY_SERVER")]
    pub server: Option<String>,
    /// User name (default: admin).
    #[arg(long, default_value = "admin")]
    pub username: String,
    /// Read the password from the first line of stdin (else INFINIBAY_PASSWORD, else a
    /// prompt on the terminal).
    #[arg(long)]
    pub password_stdin: bool,
}

/// `infinibay vm …`.
#[derive(Debug, Args)]
pub struct VmArgs {
    /// Server base URL (default: the one `login` stored).
    #[arg(long, env = "INFINIBAY_SERVER", global = true)]
    pub server: Option<String>,
    /// Print JSON.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub action: VmAction,
}

/// VM actions over the API.
#[derive(Debug, Subcommand)]
pub enum VmAction {
    /// VMs you may see.
    List,
    /// One VM with its latest sample.
    Show {
        /// VM id.
        id: String,
    },
    /// Run a command: `--action A [--params JSON]` (safe) or `-- CMD…` (unsafe, argv).
    Exec {
        /// VM id.
        id: String,
        /// Safe action name (e.g. ServiceList, SystemInfo).
        #[arg(long)]
        action: Option<String>,
        /// Parameters of the action as a JSON object.
        #[arg(long)]
        params: Option<String>,
        /// Seconds the command may run.
        #[arg(long)]
        timeout: Option<i32>,
        /// The command and its arguments (unsafe).
        #[arg(last = true)]
        argv: Vec<String>,
    },
    /// Metrics of the last hours.
    Metrics {
        /// VM id.
        id: String,
        /// Hours back.
        #[arg(long, default_value_t = 24)]
        hours: i32,
    },
}

/// Run `infinibay login`.
pub async fn login(args: LoginArgs) -> anyhow::Result<()> {
    let server = args
        .server
        .or_else(|| client::load_login().map(|(s, _)| s))
        .unwrap_or_else(|| client::DEFAULT_SERVER.to_owned());
    let Some(password) = read_password(args.password_stdin, "INFINIBAY_PASSWORD", "Password: ")?
    else {
        bail!("no password given");
    };
    let token = Client::new(&server, None)
        .login(&args.username, &password)
        .await?;
    let path = client::save_login(&server, &token)?;
    println!(
        "logged in to {server} as {}; token stored in {}",
        args.username,
        path.display()
    );
    Ok(())
}

const VM_FIELDS: &str = "id name status lastSeen department owner { id username } ipAddresses \
    agent { agentVersion os osVersion hostname } \
    latestMetrics { at cpuPercent memUsedKb memTotalKb diskReadBps diskWriteBps netRxBps netTxBps load1 uptimeSeconds }";

/// Run `infinibay vm …`.
pub async fn vm(args: VmArgs) -> anyhow::Result<()> {
    let stored = client::load_login();
    let server = args
        .server
        .clone()
        .or_else(|| stored.as_ref().map(|(s, _)| s.clone()))
        .unwrap_or_else(|| client::DEFAULT_SERVER.to_owned());
    let token = std::env::var("INFINIBAY_TOKEN")
        .ok()
        .or_else(|| stored.map(|(_, t)| t))
        .context("not logged in: run `infinibay login` first (or set INFINIBAY_TOKEN)")?;
    let api = Client::new(&server, Some(token));
    match args.action {
        VmAction::List => {
            let data = api
                .query(&format!("{{ vms {{ {VM_FIELDS} }} }}"), json!({}))
                .await?;
            let vms = data.get("vms").cloned().unwrap_or(Value::Null);
            if args.json {
                println!("{}", json_for_terminal(&vms)?);
            } else {
                println!(
                    "{:<38} {:<20} {:<8} {:>6} {:>10} OWNER",
                    "ID", "NAME", "STATUS", "CPU%", "MEM MB"
                );
                for vm in vms.as_array().into_iter().flatten() {
                    let m = vm.get("latestMetrics");
                    let num = |k: &str| m.and_then(|m| m.get(k)).and_then(Value::as_f64);
                    println!(
                        "{:<38} {:<20} {:<8} {:>6} {:>10} {}",
                        for_terminal(text(vm, "id")),
                        for_terminal(text(vm, "name")),
                        for_terminal(text(vm, "status")),
                        num("cpuPercent")
                            .map(|c| format!("{c:.1}"))
                            .unwrap_or_else(|| "-".into()),
                        num("memUsedKb")
                            .map(|k| format!("{:.0}", k / 1024.0))
                            .unwrap_or_else(|| "-".into()),
                        for_terminal(
                            vm.pointer("/owner/username")
                                .and_then(Value::as_str)
                                .unwrap_or("-")
                        ),
                    );
                }
            }
        }
        VmAction::Show { id } => {
            let data = api
                .query(
                    &format!("query($id: ID!) {{ vm(id: $id) {{ {VM_FIELDS} }} }}"),
                    json!({"id": id}),
                )
                .await?;
            let vm = data.get("vm").cloned().unwrap_or(Value::Null);
            if vm.is_null() {
                bail!("no VM {id}");
            }
            println!("{}", json_for_terminal(&vm)?);
        }
        VmAction::Exec {
            id,
            action,
            params,
            timeout,
            argv,
        } => {
            let command = match (action, argv.is_empty()) {
                (Some(action), true) => {
                    let params: Value = match params {
                        Some(p) => serde_json::from_str(&p).context("--params is not JSON")?,
                        None => Value::Null,
                    };
                    json!({"type": "SAFE", "action": action, "params": params, "timeout": timeout})
                }
                (None, false) => json!({"type": "UNSAFE", "argv": argv, "timeout": timeout}),
                _ => bail!("give either --action A [--params JSON] or -- CMD ARGS…"),
            };
            let data = api
                .query(
                    "mutation($id: ID!, $c: CommandInput!) { executeVmCommand(vmId: $id, command: $c) \
                     { id success exitCode stdout stderr stdoutTruncated stderrTruncated data executionTimeMs error { code message } } }",
                    json!({"id": id, "c": command}),
                )
                .await?;
            let r = data.get("executeVmCommand").cloned().unwrap_or(Value::Null);
            if args.json {
                println!("{}", json_for_terminal(&r)?);
            } else {
                print!("{}", for_terminal(text(&r, "stdout")));
                eprint!("{}", for_terminal(text(&r, "stderr")));
                if let Some(d) = r.get("data").filter(|d| !d.is_null()) {
                    println!("{}", json_for_terminal(d)?);
                }
                if let Some(e) = r.get("error").filter(|e| !e.is_null()) {
                    eprintln!(
                        "error: {} ({})",
                        for_terminal(text(e, "message")),
                        for_terminal(text(e, "code"))
                    );
                }
                if r.get("success").and_then(Value::as_bool) != Some(true) {
                    bail!(
                        "command failed (exit code {})",
                        r.get("exitCode").unwrap_or(&Value::Null)
                    );
                }
            }
        }
        VmAction::Metrics { id, hours } => {
            // `vmMetrics`, not `getVmMetrics`: that one answers in seed 001's shape, without
            // the bucket's minimum and maximum shown here.
            let to = chrono::Utc::now();
            let from = to - chrono::Duration::hours(hours.clamp(1, 24 * 366).into());
            let data = api
                .query(
                    "query($id: ID!, $f: DateTime!, $t: DateTime!) { vmMetrics(vmId: $id, from: $f, to: $t) \
                     { points { at cpuAvg cpuMin cpuMax memUsedKb memTotalKb diskReadBps diskWriteBps netRxBps netTxBps samples } } }",
                    json!({"id": id, "f": from.to_rfc3339(), "t": to.to_rfc3339()}),
                )
                .await?;
            let points = data
                .pointer("/vmMetrics/points")
                .cloned()
                .unwrap_or(Value::Null);
            if args.json {
                println!("{}", json_for_terminal(&points)?);
            } else {
                println!(
                    "{:<25} {:>7} {:>7} {:>7} {:>10} {:>7}",
                    "AT", "CPU%", "MIN", "MAX", "MEM MB", "N"
                );
                for p in points.as_array().into_iter().flatten() {
                    let n = |k: &str| p.get(k).and_then(Value::as_f64).unwrap_or(0.0);
                    println!(
                        "{:<25} {:>7.1} {:>7.1} {:>7.1} {:>10.0} {:>7}",
                        for_terminal(text(p, "at")),
                        n("cpuAvg"),
                        n("cpuMin"),
                        n("cpuMax"),
                        n("memUsedKb") / 1024.0,
                        n("samples")
                    );
                }
            }
        }
    }
    Ok(())
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// Guest text as a terminal may show it: control characters (C0 but tab, newline and carriage
/// return; DEL; C1, e.g. U+009B, the one-character CSI of 8-bit terminals) become visible
/// `\u{…}` escapes instead of commands to the terminal. The host already strips them from
/// command output; this is the CLI not trusting the server with its terminal.
pub fn for_terminal(s: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| c.is_control() && !matches!(c, '\t' | '\n' | '\r');
    if !s.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if unsafe_char(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Pretty JSON with C1 control characters escaped as `\u00XX`, like serde_json escapes the C0
/// ones (ESC included) and unlike what it does for C1: raw, a guest's U+009B in a command's
/// `data` reached the terminal as a CSI. Still valid JSON (the characters are only ever inside
/// strings).
pub fn json_for_terminal(value: &Value) -> serde_json::Result<String> {
    let text = serde_json::to_string_pretty(value)?;
    let is_c1 = |c: char| ('\u{80}'..='\u{9f}').contains(&c);
    if !text.contains(is_c1) {
        return Ok(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if is_c1(c) {
            use std::fmt::Write as _;
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c1_and_other_control_characters_never_reach_the_terminal_raw() {
        let hostile = "ok\u{1b}[2J\u{9b}2J\u{85}\u{7f}\tend\r\n";
        let shown = for_terminal(hostile);
        assert!(
            !shown.contains(['\u{1b}', '\u{9b}', '\u{85}', '\u{7f}']),
            "{shown}"
        );
        assert!(
            shown.contains("\\u{9b}") && shown.contains("\\u{1b}"),
            "{shown}"
        );
        assert!(shown.ends_with("\tend\r\n"), "layout is kept: {shown}");
        assert!(matches!(
            for_terminal("plain"),
            std::borrow::Cow::Borrowed(_)
        ));

        let data = serde_json::json!({"out": "a\u{1b}b\u{9b}c\u{9f}d\u{a0}e"});
        let json = json_for_terminal(&data).expect("json");
        assert!(!json.contains(['\u{1b}', '\u{9b}', '\u{9f}']), "{json}");
        assert!(
            json.contains("\\u001b") && json.contains("\\u009b") && json.contains("\\u009f"),
            "{json}"
        );
        assert!(json.contains('\u{a0}'), "printable non-ASCII stays: {json}");
        let back: Value = serde_json::from_str(&json).expect("still JSON");
        assert_eq!(back, data, "and the same JSON");
    }
}
