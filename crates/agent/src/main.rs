//! The `infiniservice` binary: flags, config, logging, runtime, then the library does the work.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser as _;
use infiniservice::channel::Channel;
use infiniservice::cli::Args;
use infiniservice::config::Config;
use infiniservice::platform::collect::{Collector, Roots};
use infiniservice::platform::port::{self, PortHints};
use infiniservice::policy::Policy;
use infiniservice::session::{self, Session};
use infiniservice::{diagnose, snapshot};

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("infiniservice: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = Config::load(&args.config, args.config_is_explicit())?;
    init_logging(&config, args.debug);
    let vm_id = config.effective_vm_id(std::env::var("INFINIBAY_VM_ID").ok());
    let hints = PortHints {
        flag: args.device.clone(),
        env: std::env::var("INFINISERVICE_DEVICE").ok(),
        config: Some(config.virtio_serial_path.clone()),
    };

    if args.diagnose {
        let diagnosis = diagnose::diagnose(&config, &hints, Path::new("/sys"), Path::new("/dev"));
        print!("{}", diagnosis.report);
        return Ok(if diagnosis.ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }

    let mut collector = Collector::new(Roots::default());
    if args.once {
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
        let result = snapshot::bench(&mut collector, cycles, config.limits.process_top_n);
        println!("{}", serde_json::to_string(&result)?);
        return Ok(ExitCode::SUCCESS);
    }

    // One malloc arena for every thread: the inventory thread's allocations reuse the main
    // heap instead of growing a second one (resident memory is the agent's tightest budget).
    // SAFETY: mallopt only changes allocator settings; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        // Inventory checks are the only blocking work: one thread is plenty, and it exits
        // when idle.
        .max_blocking_threads(1)
        .thread_keep_alive(std::time::Duration::from_secs(5))
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(async move {
        let channel = match &args.listen_unix {
            Some(path) => Channel::listen_unix(path)?,
            None => {
                let (path, source) = port::discover(&hints, Path::new("/sys"), Path::new("/dev"))?;
                tracing::info!(port = %path.display(), from = source.describe(), "using port");
                Channel::open_virtio(&path)?
            }
        };
        Session::new(config, collector, channel, vm_id)
            .run(shutdown_signal())
            .await;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending::<()>().await,
    }
}

fn init_logging(config: &Config, debug: bool) {
    // A plain level filter, not EnvFilter: EnvFilter compiles regexes at start, which costs
    // the agent a few hundred kB of resident memory for nothing it needs.
    let rust_log = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty());
    let level = match (rust_log, debug) {
        (Some(spec), _) => infiniservice::config::parse_level(&spec),
        (None, true) => Some(tracing::Level::DEBUG),
        (None, false) => infiniservice::config::parse_level(&config.log_level),
    };
    let filter = level.map_or(
        tracing_subscriber::filter::LevelFilter::INFO,
        tracing_subscriber::filter::LevelFilter::from_level,
    );
    tracing_subscriber::fmt()
        .with_max_level(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}
