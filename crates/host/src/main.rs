//! `infinibay`: the host process (see the library's documentation).
#![forbid(unsafe_code)]

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use infinibay::cli::{Cli, CliCommand};
use infinibay::config::ConfigArgs;

// Ingest allocates a few small strings and vectors per message on every connection task's
// thread; mimalloc's thread-local free lists make that markedly cheaper than glibc's malloc
// (bench/results/host.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Hidden benchmark entry (not in `--help`, and only in builds with the `bench` feature):
    // bench/host/run.sh measures the host's own ingest code with it.
    #[cfg(feature = "bench")]
    {
        let mut args = std::env::args_os().skip(1);
        if args.next().is_some_and(|a| a == "bench-ingest") {
            return bench_ingest(args.collect());
        }
    }
    let cli = Cli::parse();
    // Whatever this process creates (the database, its WAL and -shm, the secret) is private,
    // whatever umask it was started with.
    infinibay::core::system::restrict_umask();
    // RUST_LOG filters per component target: infinibay::watcher, infinibay::connection,
    // infinibay::ingest, infinibay::store, infinibay::commands, infinibay::maintenance, …
    // (the WebSocket libraries stay at info: below it they log tokens).
    let filter = infinibay::logging::filter(std::env::var("RUST_LOG").ok().as_deref());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let Some(runtime) = runtime(tokio::runtime::Builder::new_multi_thread()) else {
        return ExitCode::FAILURE;
    };
    let result = runtime.block_on(async {
        match cli.command {
            CliCommand::Serve(args) => serve(args).await,
            CliCommand::Node(args) => node(args).await,
            CliCommand::Api(args) => api(args).await,
            CliCommand::Doctor(args) => doctor(args).await,
            CliCommand::User(args) => infinibay::cli::user::run(args)
                .await
                .map(|()| ExitCode::SUCCESS),
            CliCommand::Login(args) => infinibay::cli::remote::login(args)
                .await
                .map(|()| ExitCode::SUCCESS),
            CliCommand::Vm(args) => infinibay::cli::remote::vm(args)
                .await
                .map(|()| ExitCode::SUCCESS),
            CliCommand::ChannelXml(args) => {
                infinibay::cli::channel_xml(&args).map(|()| ExitCode::SUCCESS)
            }
            CliCommand::Demo(args) => infinibay::demo::run(args).await.map(|()| ExitCode::SUCCESS),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: ConfigArgs) -> anyhow::Result<ExitCode> {
    let config = args.load().context("configuration")?;
    let listeners = infinibay::serve::Listeners {
        http: infinibay::serve::bind(config.process.listen).await?,
        metrics: Some(infinibay::serve::bind_metrics(config.api.metrics_listen).await?),
    };
    let prepared = infinibay::serve::prepare(&config).await?;
    if let Some(banner) = prepared
        .first_admin
        .as_ref()
        .and_then(infinibay::api::users::first_admin_banner)
    {
        // Printed once, on stdout, the only time the password exists in clear.
        println!("{banner}");
    }
    let api = prepared.settings;
    infinibay::serve::run_with_store(
        config,
        prepared.store,
        listeners,
        shutdown_signal(),
        move |core| {
            // `mount` keeps the API router's fallback (Socket.IO answers there), see the crate.
            infinibay::serve::Mounted::from(infinibay::serve::api_router(core, api))
                .map_router(infinibay_dashboard::mount)
        },
    )
    .await?;
    Ok(ExitCode::SUCCESS)
}

async fn node(args: infinibay::cli::NodeArgs) -> anyhow::Result<ExitCode> {
    let config = args.load().context("configuration")?;
    let listener = infinibay::serve::bind(config.process.listen).await?;
    infinibay::roles::node::run(config, listener, shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

async fn api(args: infinibay::cli::ApiArgs) -> anyhow::Result<ExitCode> {
    let config = args.load().context("configuration")?;
    let listener = infinibay::serve::bind(config.process.listen).await?;
    let prepared = infinibay::serve::prepare(&config).await?;
    if let Some(banner) = prepared
        .first_admin
        .as_ref()
        .and_then(infinibay::api::users::first_admin_banner)
    {
        println!("{banner}");
    }
    infinibay::roles::api::run(config, prepared, listener, shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

async fn doctor(args: infinibay::cli::DoctorArgs) -> anyhow::Result<ExitCode> {
    let config = args.config.load().context("configuration")?;
    let findings = infinibay::doctor::check(&config, args.fix).await;
    let problems = infinibay::doctor::print(&findings, &mut std::io::stdout())?;
    Ok(if problems == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Ctrl-C or SIGTERM (systemd stop).
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
    tracing::info!(target: "infinibay::host", "shutdown requested");
}

/// `infinibay bench-ingest --socket PATH`: one JSON line on stdout (same fields as
/// `infinibay-sim ingest`), see `infinibay_core::bench::bench_socket`.
#[cfg(feature = "bench")]
fn bench_ingest(args: Vec<std::ffi::OsString>) -> ExitCode {
    let socket = match args.as_slice() {
        [flag, path] if flag == "--socket" => std::path::PathBuf::from(path),
        _ => {
            eprintln!("usage: infinibay bench-ingest --socket PATH");
            return ExitCode::from(2);
        }
    };
    // One thread, like the Node peer's event loop: the figure is then the CPU cost of the work
    // per message, not of waking a subscriber on another core for every sample.
    let Some(runtime) = runtime(tokio::runtime::Builder::new_current_thread()) else {
        return ExitCode::FAILURE;
    };
    let config = infinibay::core::CoreConfig::default();
    match runtime.block_on(infinibay::core::bench::bench_socket(&socket, &config)) {
        Ok(report) => {
            println!("{}", report.to_json("infinibay-host-ingest"));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: bench-ingest on {}: {e}", socket.display());
            ExitCode::FAILURE
        }
    }
}

/// The async runtime from `builder`, or `None` after saying why on stderr.
fn runtime(mut builder: tokio::runtime::Builder) -> Option<tokio::runtime::Runtime> {
    match builder.enable_all().build() {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            None
        }
    }
}
