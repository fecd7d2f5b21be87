//! Side-by-side benchmark of infiniservice and qemu-ga in the same guest and the same run.
//! Run through `e2e/bench.sh`, which builds release binaries and writes
//! `bench/results/e2e.md`.
//!
//!     infinibay-e2e-bench [--pings N] [--exec-runs N] [--idle-secs N] [--out FILE]
//!                         [--skip-agent]
//!
//! Lines: ping round trip (ours `ping`/`pong` vs qemu-ga `guest-ping`, median and p99);
//! `/bin/true` with captured output (ours: one `UnsafeCommand`; qemu-ga: `guest-exec` then
//! `guest-exec-status` polled back to back until it exited); RSS and CPU seconds over a window
//! in which both agents deliver the guest's system state every second (ours pushing
//! `system_metrics`, qemu-ga polled for its closest commands).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use infinibay_e2e::{AgentClient, Error, Guest, GuestImage, GuestOptions};
use infinibay_protocol::message::{CollectorSwitches, Configure};
use infinibay_protocol::{GuestMessage, HostMessage};

/// qemu-ga's closest equivalents of one `system_metrics`, polled once per second in the CPU
/// window when `guest-info` lists them as enabled: CPU times, disk I/O counters, file system
/// usage, interfaces with addresses and counters, and the load average (qemu-ga ≥ 9.1).
/// qemu-ga has no memory-usage command (`guest-get-memory-block-info` is the hot-plug block
/// size, not usage), so our sample carries strictly more.
const QGA_METRICS_COMMANDS: [&str; 5] = [
    "guest-get-cpustats",
    "guest-get-diskstats",
    "guest-get-fsinfo",
    "guest-network-get-interfaces",
    "guest-get-load",
];

/// `infiniservice --bench-collect N` output: CPU µs per call of each collector.
#[derive(Debug, Clone, Copy)]
struct CollectCosts {
    system_metrics_us: f64,
    process_snapshot_us: f64,
    port_usage_us: f64,
    processes: u64,
}

fn parse_collect_costs(text: &str) -> Option<CollectCosts> {
    let line = text.lines().find(|l| l.trim_start().starts_with('{'))?;
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    Some(CollectCosts {
        system_metrics_us: value["system_metrics_cpu_us"].as_f64()?,
        process_snapshot_us: value["process_snapshot_cpu_us"].as_f64()?,
        port_usage_us: value["port_usage_cpu_us"].as_f64()?,
        processes: value["processes"].as_u64().unwrap_or(0),
    })
}

const REPLY: Duration = Duration::from_secs(30);
const BOOT: Duration = Duration::from_secs(120);

struct Args {
    pings: usize,
    exec_runs: usize,
    idle_secs: u64,
    out: PathBuf,
    skip_agent: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        pings: 1000,
        exec_runs: 200,
        idle_secs: 300,
        out: infinibay_e2e::image::workspace_root().join("bench/results/e2e.md"),
        skip_agent: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--skip-agent" {
            args.skip_agent = true;
            continue;
        }
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let number = || value.parse::<u64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--pings" => args.pings = number()? as usize,
            "--exec-runs" => args.exec_runs = number()? as usize,
            "--idle-secs" => args.idle_secs = number()?,
            "--out" => args.out = PathBuf::from(&value),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(args)
}

/// Median and 99th percentile (nearest rank) in microseconds.
fn summarize(samples: &mut [Duration]) -> (f64, f64) {
    samples.sort();
    let at = |q: f64| {
        let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
        samples[rank - 1].as_secs_f64() * 1e6
    };
    (at(0.5), at(0.99))
}

/// Pid, CPU ticks (self, children) and memory of a guest process, read by a shell script
/// inside the guest so that neither agent pays for the reading.
#[derive(Debug, Default, Clone)]
struct ProcReading {
    utime_stime_ticks: u64,
    children_ticks: u64,
    vm_rss_kb: u64,
    vm_hwm_kb: u64,
    threads: u64,
}

fn parse_reading(text: &str, tag: &str) -> Option<ProcReading> {
    let mut reading = ProcReading::default();
    let mut found = false;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(tag) else {
            continue;
        };
        if let Some(stat) = rest.strip_prefix(" stat ") {
            // Fields after the `(comm)`: state is field 3, utime 14, stime 15, cutime 16, cstime 17.
            let after = stat.rsplit(')').next()?;
            let fields: Vec<u64> = after
                .split_whitespace()
                .skip(1)
                .map(|f| f.parse().unwrap_or(0))
                .collect();
            reading.utime_stime_ticks = fields.get(10)? + fields.get(11)?;
            reading.children_ticks = fields.get(12)? + fields.get(13)?;
            found = true;
        } else if let Some(status) = rest.strip_prefix(" status ") {
            let value = |key: &str| {
                status
                    .strip_prefix(key)
                    .and_then(|v| v.split_whitespace().next())
                    .and_then(|v| v.parse::<u64>().ok())
            };
            if let Some(v) = value("VmRSS:") {
                reading.vm_rss_kb = v;
            }
            if let Some(v) = value("VmHWM:") {
                reading.vm_hwm_kb = v;
            }
            if let Some(v) = value("Threads:") {
                reading.threads = v;
            }
        }
    }
    found.then_some(reading)
}

fn guest_script_reading(tag: &str, pid_file: &str) -> String {
    format!(
        "p=$(cat {pid_file}); echo \"{tag} stat $(cat /proc/$p/stat)\"; \
         sed 's/^/{tag} status /' /proc/$p/status"
    )
}

struct Report {
    text: String,
}

impl Report {
    fn row(&mut self, what: &str, ours: &str, peer: &str, ok: Option<bool>) {
        let verdict = match ok {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "n/a",
        };
        let _ = writeln!(self.text, "| {what} | {ours} | {peer} | {verdict} |");
    }
}

/// The host's 1/5/15-minute load: other work on the machine slows the TCG guest.
fn host_load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn run(args: &Args) -> Result<String, Error> {
    let load_at_start = host_load();
    let image = GuestImage::shared()?;
    let guest = Guest::boot(
        image,
        GuestOptions {
            name: "bench".into(),
            hostname: "e2e-bench".into(),
            agent: !args.skip_agent,
            ..GuestOptions::default()
        },
    )?;
    eprintln!("bench: guest booted, logs in {}", guest.run_dir().display());
    let mut qga = guest.qga(BOOT)?;
    let mut agent: Option<AgentClient> = if args.skip_agent {
        None
    } else {
        let mut client = guest.agent(BOOT)?;
        client.hello(BOOT)?;
        Some(client)
    };
    // Let boot-time work (first inventory, page-ins) settle before timing anything.
    std::thread::sleep(Duration::from_secs(5));

    // --- ping: blocks of 100, alternating, so that drift in machine load hits both alike.
    eprintln!("bench: {} pings each", args.pings);
    let mut qga_pings = Vec::with_capacity(args.pings);
    let mut our_pings = Vec::with_capacity(args.pings);
    while qga_pings.len() < args.pings {
        for _ in 0..100.min(args.pings - qga_pings.len()) {
            let started = Instant::now();
            qga.ping(REPLY)?;
            qga_pings.push(started.elapsed());
        }
        if let Some(agent) = agent.as_mut() {
            for _ in 0..100.min(args.pings - our_pings.len()) {
                our_pings.push(agent.ping(REPLY)?);
            }
            agent.clear_backlog();
        }
    }

    // --- /bin/true with captured output.
    eprintln!("bench: /bin/true x{} each", args.exec_runs);
    let mut qga_exec = Vec::with_capacity(args.exec_runs);
    let mut qga_polls = 0u64;
    let mut our_exec = Vec::with_capacity(args.exec_runs);
    for _ in 0..args.exec_runs {
        let started = Instant::now();
        let output = qga.run("/bin/true", &[], Duration::ZERO, REPLY)?;
        qga_exec.push(started.elapsed());
        qga_polls += u64::from(output.status_polls);
        if output.exit_code != Some(0) {
            return Err(Error::Protocol {
                what: "qemu-ga /bin/true".into(),
                detail: format!("{output:?}"),
            });
        }
        if let Some(agent) = agent.as_mut() {
            let started = Instant::now();
            let response = agent.run_argv(&["/bin/true"], REPLY)?;
            our_exec.push(started.elapsed());
            if !response.success {
                return Err(Error::Protocol {
                    what: "infiniservice /bin/true".into(),
                    detail: format!("{response:?}"),
                });
            }
            agent.clear_backlog();
        }
    }

    // --- where our agent's time goes, per collector, measured inside the guest (TCG).
    let collect_costs = if args.skip_agent {
        None
    } else {
        let text = qga.shell(
            "/usr/bin/infiniservice --config /etc/infiniservice/config.toml --bench-collect 20",
            Duration::from_secs(120),
        )?;
        Some(parse_collect_costs(&text).ok_or_else(|| Error::Protocol {
            what: "infiniservice --bench-collect".into(),
            detail: text.clone(),
        })?)
    };

    // --- the 1 s window. Like for like: both agents deliver the guest's system state every
    // second. Ours pushes `system_metrics` (its other collectors switched off by `configure`:
    // qemu-ga has nothing like a process list or inventories); qemu-ga is polled once per
    // second by the harness, as a host would, for the closest commands it has.
    let supported: Vec<String> = qga.info(REPLY)?["supported_commands"]
        .as_array()
        .map(|commands| {
            commands
                .iter()
                .filter(|c| c["enabled"].as_bool() == Some(true))
                .filter_map(|c| c["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let polled: Vec<&str> = QGA_METRICS_COMMANDS
        .iter()
        .copied()
        .filter(|c| supported.iter().any(|s| s == c))
        .collect();
    if polled.is_empty() {
        return Err(Error::Protocol {
            what: "qemu-ga guest-info".into(),
            detail: format!("none of {QGA_METRICS_COMMANDS:?} is supported"),
        });
    }
    if let Some(agent) = agent.as_mut() {
        let id = agent.new_id("bench-configure");
        let response = agent.request(
            &HostMessage::Configure(Configure {
                id: Some(id),
                collection_interval: Some(1),
                inventory_interval: None,
                collectors: Some(CollectorSwitches {
                    system_metrics: Some(true),
                    process_snapshot: Some(false),
                    port_usage: Some(false),
                    application_usage: Some(false),
                    service_inventory: Some(false),
                }),
            }),
            REPLY,
        )?;
        if !response.success {
            return Err(Error::Protocol {
                what: "configure".into(),
                detail: format!("{response:?}"),
            });
        }
        agent.clear_backlog();
    }
    eprintln!(
        "bench: {} s window: ours pushes system_metrics every 1 s; qemu-ga polled every 1 s with {polled:?}",
        args.idle_secs
    );
    let mut script = String::from("{ ");
    let readings = |script: &mut String, when: &str| {
        script.push_str(&guest_script_reading(
            &format!("qga-{when}"),
            "/run/qemu-ga.pid",
        ));
        script.push_str("; ");
        if !args.skip_agent {
            script.push_str(&guest_script_reading(
                &format!("ours-{when}"),
                "/run/infiniservice.pid",
            ));
            script.push_str("; ");
        }
    };
    readings(&mut script, "start");
    script.push_str(&format!("sleep {}; ", args.idle_secs));
    readings(&mut script, "end");
    script.push_str("} > /tmp/idle.txt 2>&1; echo done >> /tmp/idle.txt");
    // Detached: qemu-ga returns at once; the script's own CPU is reaped after its end reading.
    qga.exec_start("/bin/sh", &["-c", &script], false)?;
    let window_started = Instant::now();
    let window = Duration::from_secs(args.idle_secs);
    let mut qga_rounds = 0u64;
    let mut qga_poll_bytes = 0usize;
    let mut our_samples = 0u64;
    let mut next_poll = window_started;
    while window_started.elapsed() < window + Duration::from_secs(2) {
        if Instant::now() >= next_poll {
            for command in &polled {
                let reply = qga.execute(command, None, REPLY)?;
                qga_poll_bytes += reply.to_string().len();
            }
            qga_rounds += 1;
            next_poll += Duration::from_secs(1);
        }
        // The host side of a real deployment reads everything the agent sends; so do we.
        let until_poll = next_poll.saturating_duration_since(Instant::now());
        match agent.as_mut() {
            Some(agent) if !until_poll.is_zero() => match agent.recv(until_poll) {
                Ok(GuestMessage::SystemMetrics(_)) => our_samples += 1,
                Ok(_) | Err(Error::Timeout { .. }) => {}
                Err(e) => return Err(e),
            },
            Some(_) => {}
            None => std::thread::sleep(until_poll),
        }
        if let Some(agent) = agent.as_mut() {
            agent.clear_backlog();
        }
    }
    let mut idle = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !idle.contains("done") && Instant::now() < deadline {
        idle = qga.shell("cat /tmp/idle.txt 2>/dev/null || true", REPLY)?;
        if !idle.contains("done") {
            if let Some(agent) = agent.as_mut() {
                let _ = agent.recv(Duration::from_secs(1));
                agent.clear_backlog();
            }
        }
    }
    let reading = |tag: &str| {
        parse_reading(&idle, tag).ok_or_else(|| Error::Protocol {
            what: "idle readings".into(),
            detail: format!("no `{tag}` in:\n{idle}"),
        })
    };
    let qga_start = reading("qga-start")?;
    let qga_end = reading("qga-end")?;
    let ours = if args.skip_agent {
        None
    } else {
        Some((reading("ours-start")?, reading("ours-end")?))
    };
    let qga_info = qga.info(REPLY)?;
    let qemu_version = std::process::Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_owned()
        })
        .unwrap_or_default();
    let _ = guest.quit(Duration::from_secs(20));
    let load_at_end = host_load();

    // --- report
    let ticks_to_s = |t: u64| t as f64 / 100.0; // USER_HZ is 100 on x86_64 Linux.
    let mut report = Report {
        text: String::new(),
    };
    let t = &mut report.text;
    let _ = writeln!(t, "# infiniservice vs qemu-ga in the same QEMU guest\n");
    let _ = writeln!(
        t,
        "Written by `e2e/bench.sh` ({}). One TCG guest (`-accel tcg -m 256 -smp 1`, kernel {}), \
         both agents on their own virtio-serial port, driven from the host ends of QEMU's UNIX \
         sockets by the harness in `crates/e2e`, one request at a time. qemu-ga {}; {}; agent \
         binary `{}`. Goal: ours at or below qemu-ga on every line.\n",
        humantime_now(),
        image.kernel_release,
        qga_info["version"].as_str().unwrap_or("?"),
        qemu_version,
        image.agent_binary.display()
    );
    let _ = writeln!(t, "| line | infiniservice | qemu-ga | ours ≤ qemu-ga |");
    let _ = writeln!(t, "| --- | --- | --- | --- |");
    let (qga_med, qga_p99) = summarize(&mut qga_pings);
    let fmt_us = |v: f64| format!("{:.0} µs", v);
    if ours.is_some() {
        let (med, p99) = summarize(&mut our_pings);
        report.row(
            &format!("ping round trip, median of {}", args.pings),
            &fmt_us(med),
            &fmt_us(qga_med),
            Some(med <= qga_med),
        );
        report.row(
            &format!("ping round trip, p99 of {}", args.pings),
            &fmt_us(p99),
            &fmt_us(qga_p99),
            Some(p99 <= qga_p99),
        );
    } else {
        report.row(
            "ping round trip, median",
            "not measured",
            &fmt_us(qga_med),
            None,
        );
        report.row(
            "ping round trip, p99",
            "not measured",
            &fmt_us(qga_p99),
            None,
        );
    }
    let (qga_exec_med, qga_exec_p99) = summarize(&mut qga_exec);
    let polls = qga_polls as f64 / args.exec_runs.max(1) as f64;
    let qga_exec_label = |v: f64| format!("{} ({polls:.1} requests)", fmt_us(v));
    if ours.is_some() {
        let (med, p99) = summarize(&mut our_exec);
        report.row(
            &format!("`/bin/true` with output, median of {}", args.exec_runs),
            &format!("{} (1 request)", fmt_us(med)),
            &qga_exec_label(qga_exec_med),
            Some(med <= qga_exec_med),
        );
        report.row(
            &format!("`/bin/true` with output, p99 of {}", args.exec_runs),
            &fmt_us(p99),
            &fmt_us(qga_exec_p99),
            Some(p99 <= qga_exec_p99),
        );
    } else {
        report.row(
            "`/bin/true`, median",
            "not measured",
            &qga_exec_label(qga_exec_med),
            None,
        );
    }
    let mb = |kb: u64| format!("{:.1} MB", kb as f64 / 1024.0);
    let idle_label = format!("at the end of the {} s window", args.idle_secs);
    match &ours {
        Some((start, end)) => {
            report.row(
                &format!("VmRSS {idle_label}"),
                &mb(end.vm_rss_kb),
                &mb(qga_end.vm_rss_kb),
                Some(end.vm_rss_kb <= qga_end.vm_rss_kb),
            );
            report.row(
                &format!("VmHWM (peak) {idle_label}"),
                &mb(end.vm_hwm_kb),
                &mb(qga_end.vm_hwm_kb),
                Some(end.vm_hwm_kb <= qga_end.vm_hwm_kb),
            );
            report.row(
                "threads",
                &end.threads.to_string(),
                &qga_end.threads.to_string(),
                None,
            );
            let ours_cpu = end
                .utime_stime_ticks
                .saturating_sub(start.utime_stime_ticks)
                + end.children_ticks.saturating_sub(start.children_ticks);
            let qga_cpu = qga_end
                .utime_stime_ticks
                .saturating_sub(qga_start.utime_stime_ticks)
                + qga_end
                    .children_ticks
                    .saturating_sub(qga_start.children_ticks);
            let per_cycle = |ticks: u64| ticks_to_s(ticks) * 1000.0 / args.idle_secs.max(1) as f64;
            report.row(
                &format!(
                    "CPU seconds over {} s, system state delivered every 1 s",
                    args.idle_secs
                ),
                &format!(
                    "{:.2} s ({:.1} ms per s; pushed {our_samples} `system_metrics`)",
                    ticks_to_s(ours_cpu),
                    per_cycle(ours_cpu)
                ),
                &format!(
                    "{:.2} s ({:.1} ms per s; polled {qga_rounds}× {} = {} requests, {:.1} KB per round)",
                    ticks_to_s(qga_cpu),
                    per_cycle(qga_cpu),
                    polled.join(" + "),
                    qga_rounds * polled.len() as u64,
                    qga_poll_bytes as f64 / 1024.0 / qga_rounds.max(1) as f64
                ),
                Some(ours_cpu <= qga_cpu),
            );
            if let Some(costs) = collect_costs {
                report.row(
                    "CPU per collection inside the guest, `--bench-collect 20` (where the time goes)",
                    &format!(
                        "system_metrics {:.0} µs; process_snapshot {:.0} µs ({} processes); port_usage {:.0} µs",
                        costs.system_metrics_us,
                        costs.process_snapshot_us,
                        costs.processes,
                        costs.port_usage_us
                    ),
                    "—",
                    None,
                );
            }
        }
        None => {
            report.row(
                &format!("VmRSS {idle_label}"),
                "not measured",
                &mb(qga_end.vm_rss_kb),
                None,
            );
            report.row(
                &format!("VmHWM (peak) {idle_label}"),
                "not measured",
                &mb(qga_end.vm_hwm_kb),
                None,
            );
            let qga_cpu = qga_end
                .utime_stime_ticks
                .saturating_sub(qga_start.utime_stime_ticks);
            report.row(
                &format!(
                    "CPU seconds over {} s, polled every 1 s with {}",
                    args.idle_secs,
                    polled.join(" + ")
                ),
                "not measured",
                &format!("{:.2} s", ticks_to_s(qga_cpu)),
                None,
            );
        }
    }
    let t = &mut report.text;
    let _ = writeln!(
        t,
        "\nMethod. Round trips are measured on the host from writing the request to reading \
         the matching reply, so both include QEMU's chardev and virtio-serial paths; ping \
         batches of 100 alternate between the agents. qemu-ga learns that a process ended only \
         through `guest-exec-status`, polled here back to back (its best case; real clients \
         sleep between polls).\n\nCPU and memory: one window in which both agents deliver the \
         guest's system state every second, as an operator would run either. Ours pushes \
         `system_metrics` (CPU, per-core CPU, memory, file systems, disk I/O, interfaces with \
         addresses and rates, load, uptime) at `collection_interval = 1`, its process snapshot \
         and inventories switched off with `configure` because qemu-ga offers nothing like \
         them; qemu-ga is asked once per second, one request after the other as it requires, \
         for each of its closest commands that `guest-info` lists as enabled ({polled}). \
         CPU is utime+stime (plus reaped children) from /proc/PID/stat, memory VmRSS/VmHWM \
         from /proc/PID/status, read by a shell script inside the guest at the start and the \
         end of the window so that neither agent pays for the reading; 10 ms (USER_HZ) \
         resolution. During the window the harness reads everything our agent sends, as a \
         host would. The per-collector line is the agent's own `--bench-collect` run in the \
         guest (CPU time per call, 20 calls after a warm-up): what the full default telemetry \
         (`process_snapshot` every cycle too) would add. TCG emulation makes every absolute \
         number slower than on KVM; the comparison is what counts.\n\nHost load average \
         (1/5/15 min) at the start: {load_at_start}; at the end: {load_at_end} on 2 cores. \
         Above ~2, the guest's vCPU competes with other work and latencies (p99 above all) \
         grow for both agents.",
        polled = polled.join(", ")
    );
    Ok(report.text)
}

fn humantime_now() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("infinibay-e2e-bench: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(report) => {
            if let Some(dir) = args.out.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            if let Err(e) = std::fs::write(&args.out, &report) {
                eprintln!("infinibay-e2e-bench: writing {}: {e}", args.out.display());
                return ExitCode::FAILURE;
            }
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("infinibay-e2e-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
