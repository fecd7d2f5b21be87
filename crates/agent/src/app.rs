//! The agent's entry point after the flags are parsed: the one-shot modes, the service
//! install, and serving the host. The binary's `main` only parses flags and calls [`main`];
//! the Windows service calls [`serve`] from the Service Control Manager's thread.

use std::future::Future;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;

use crate::channel::Channel;
use crate::channel::PortHints;
use crate::cli::Args;
use crate::config::Config;
use crate::platform::collect::{Collector, Roots};
use crate::platform::service;
use crate::policy::Policy;
use crate::session::{self, Session};
use crate::{diagnose, snapshot};

/// Everything but flag parsing.
pub fn main(args: Args) -> anyhow::Result<ExitCode> {
    if args.service {
        service::run_under_service_manager(args)?;
        return Ok(ExitCode::SUCCESS);
    }
    let config = Config::load(&args.config_path(), args.config_is_explicit())?;
    if args.install_service || args.uninstall_service {
        init_stderr_logging(&config, args.debug);
        if args.install_service {
            service::install(&args, &config)?;
        } else {
            service::uninstall(&config)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    // The one-shot modes talk to a terminal; only serving logs where the OS's service
    // logs go.
    if args.diagnose || args.once || args.bench_collect.is_some() {
        init_stderr_logging(&config, args.debug);
    } else {
        service::init_logging(&config, args.debug);
    }
    let hints = port_hints(&args, &config);

    if args.diagnose {
        let diagnosis = diagnose::diagnose(&config, &hints);
        print!("{}", diagnosis.report);
        return Ok(if diagnosis.ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }

    let vm_id = config.effective_vm_id(std::env::var("INFINIBAY_VM_ID").ok());
    if args.once {
        let mut collector = Collector::new(Roots::default());
        let id = session::identification(&collector, &Policy::new(config.policy.clone()), vm_id);
        let snap = snapshot::take(
            &mut collector,
            id,
            config.limits.process_top_n,
            Duration::from_millis(500),
        );
        println!("{}", serde_json::to_string_pretty(&snap)?);
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(cycles) = args.bench_collect {
        let mut collector = Collector::new(Roots::default());
        let result = snapshot::bench(
            &mut collector,
            cycles,
            config.limits.process_top_n,
            args.bench_only.as_deref(),
        );
        println!("{}", serde_json::to_string(&result)?);
        return Ok(ExitCode::SUCCESS);
    }

    serve(&args, config, service::shutdown_signal())?;
    Ok(ExitCode::SUCCESS)
}

/// Where the port may be named: `--device`, `INFINISERVICE_DEVICE`, the config.
pub fn port_hints(args: &Args, config: &Config) -> PortHints {
    PortHints {
        flag: args.device.clone(),
        env: std::env::var("INFINISERVICE_DEVICE").ok(),
        config: Some(config.virtio_serial_path.clone()),
    }
}

/// Serve the host until `shutdown` resolves (it is first polled inside the runtime).
pub fn serve(
    args: &Args,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let vm_id = config.effective_vm_id(std::env::var("INFINIBAY_VM_ID").ok());
    let hints = port_hints(args, &config);
    let collector = Collector::new(Roots::default());
    service::prepare_process();
    let runtime = tokio::runtime::Builder::new_current_thread()
        // Blocking work is rare: inventory checks, and native OS calls of some commands
        // (the Service Control Manager). Two threads at most, and they exit when idle.
        .max_blocking_threads(2)
        .thread_keep_alive(Duration::from_secs(5))
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(async move {
        let channel = match &args.listen_unix {
            Some(path) => Channel::listen_unix(path)?,
            None => Channel::open_port(&hints)?,
        };
        Session::new(config, collector, channel, vm_id)
            .run(shutdown)
            .await;
        anyhow::Ok(())
    })
}

/// Logs to stderr: the one-shot modes, the service install, and a Linux agent under systemd
/// (the journal).
pub fn init_stderr_logging(config: &Config, debug: bool) {
    let _ = tracing_subscriber::fmt()
        .with_max_level(log_level(config, debug))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// The level: `RUST_LOG`, else `--debug`, else the config's `log_level`.
///
/// A plain level filter, not EnvFilter: EnvFilter compiles regexes at start, which costs the
/// agent a few hundred kB of resident memory for nothing it needs.
pub fn log_level(config: &Config, debug: bool) -> tracing_subscriber::filter::LevelFilter {
    let rust_log = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty());
    let level = match (rust_log, debug) {
        (Some(spec), _) => crate::config::parse_level(&spec),
        (None, true) => Some(tracing::Level::DEBUG),
        (None, false) => crate::config::parse_level(&config.log_level),
    };
    level.map_or(
        tracing_subscriber::filter::LevelFilter::INFO,
        tracing_subscriber::filter::LevelFilter::from_level,
    )
}
