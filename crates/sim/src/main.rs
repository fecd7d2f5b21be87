//! `infinibay-sim`: the VM simulator (kept out of the production `infinibay` binary), plus the
//! load drivers of `bench/host/run.sh`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use infinibay_sim::{Profile, SimArgs, feed};

#[derive(Parser)]
#[command(
    name = "infinibay-sim",
    version,
    about = "Many simulated VMs (QEMU-like agent sockets) in one process",
    subcommand_negates_reqs = true
)]
struct Cli {
    /// Worker threads of the runtime; 0 runs everything on the main thread (cheapest for the
    /// simulator: its work is many tiny writes).
    #[arg(long, default_value_t = 0, global = true)]
    threads: usize,
    #[command(flatten)]
    sim: Option<SimArgs>,
    #[command(subcommand)]
    tool: Option<Tool>,
}

#[derive(Subcommand)]
enum Tool {
    /// Write a corpus of sample lines to a file (the bytes both ingest consumers get).
    Corpus {
        /// Output file.
        #[arg(long)]
        out: PathBuf,
        /// Distinct messages.
        #[arg(long, default_value_t = 2000)]
        messages: usize,
        /// Profile of the messages.
        #[arg(long, value_enum, default_value_t = Profile::Small)]
        profile: Profile,
        /// Generator seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Serve a corpus file `--repeat` times to the one client that connects, then exit.
    Feed {
        /// Socket to bind.
        #[arg(long)]
        socket: PathBuf,
        /// Corpus file.
        #[arg(long)]
        corpus: PathBuf,
        /// How many times to send it.
        #[arg(long, default_value_t = 100)]
        repeat: u64,
    },
    /// Pace a corpus over many VM sockets: `--vms` QEMU-like sockets writing `--rate` lines/s
    /// together, each its share once per `--tick-ms`; runs until killed or `--duration`, then
    /// prints its counters as JSON.
    PacedFeed {
        /// Directory for the vm-<uuid>.sock files.
        #[arg(long)]
        socket_dir: PathBuf,
        /// Corpus file (lines).
        #[arg(long)]
        corpus: PathBuf,
        /// Number of VMs.
        #[arg(long)]
        vms: usize,
        /// Index of the first VM (split a fleet over two feeders with the same --seed).
        #[arg(long, default_value_t = 0)]
        first_index: u64,
        /// Lines per second, all VMs together.
        #[arg(long)]
        rate: f64,
        /// Milliseconds between a VM's writes.
        #[arg(long, default_value_t = 100)]
        tick_ms: u64,
        /// VM ids are derived from this seed.
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Stop after this many seconds (default: run until killed).
        #[arg(long, value_parser = infinibay_sim::parse_seconds)]
        duration: Option<std::time::Duration>,
        /// Write cumulative counters here every second.
        #[arg(long)]
        stats_file: Option<PathBuf>,
    },
    /// Connect to a socket and run decode + sanitise + publish on everything it sends; print a
    /// JSON report.
    Ingest {
        /// Socket to connect to.
        #[arg(long)]
        socket: PathBuf,
        /// How far to take each line: `full` is the protocol pipeline; `framing`, `syntax` and
        /// `typed` stop early, to measure the floor under it.
        #[arg(long, value_enum, default_value_t = feed::IngestStage::Full)]
        stage: feed::IngestStage,
    },
    /// A stand-in host: connect to every vm-*.sock in a directory, decode + sanitise + publish
    /// what arrives, measure rates and sample gaps; print a JSON report.
    Drain {
        /// Directory of the sockets.
        #[arg(long)]
        socket_dir: PathBuf,
        /// Wait until this many sockets exist (up to --settle).
        #[arg(long, default_value_t = 0)]
        expect: usize,
        /// Seconds to wait for sockets and first samples before measuring.
        #[arg(long, default_value = "5", value_parser = infinibay_sim::parse_seconds)]
        settle: std::time::Duration,
        /// Seconds to measure.
        #[arg(long, default_value = "10", value_parser = infinibay_sim::parse_seconds)]
        duration: std::time::Duration,
        /// The simulator's interval (a gap above 1.5 intervals counts as late).
        #[arg(long, default_value = "1", value_parser = infinibay_sim::parse_seconds)]
        interval: std::time::Duration,
        /// The simulator's seed and --flood: its flooding VMs are left out of the gap figures.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// See --seed.
        #[arg(long, default_value_t = 0)]
        flood: u64,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = if cli.threads == 0 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cli.threads)
            .enable_all()
            .build()
    }
    .context("cannot start the tokio runtime")?;
    runtime.block_on(async move {
        match (cli.tool, cli.sim) {
            (Some(tool), _) => run_tool(tool).await,
            (None, Some(sim)) => infinibay_sim::run(sim).await.context("simulator failed"),
            (None, None) => anyhow::bail!("give --socket-dir DIR (see --help)"),
        }
    })
}

fn read_corpus(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read corpus {}", path.display()))
}

async fn run_tool(tool: Tool) -> anyhow::Result<()> {
    match tool {
        Tool::Corpus {
            out,
            messages,
            profile,
            seed,
        } => {
            let bytes = feed::corpus(profile, messages, seed)?;
            std::fs::write(&out, &bytes)
                .with_context(|| format!("cannot write {}", out.display()))?;
            eprintln!(
                "wrote {} messages, {} bytes ({:.0} bytes/message) to {}",
                messages,
                bytes.len(),
                bytes.len() as f64 / feed::count_lines(&bytes).max(1) as f64,
                out.display()
            );
        }
        Tool::Feed {
            socket,
            corpus,
            repeat,
        } => {
            let bytes = read_corpus(&corpus)?;
            let report = feed::serve_corpus(&socket, Arc::new(bytes), repeat).await?;
            eprintln!(
                "fed {} messages, {} bytes in {:.3} s",
                report.messages,
                report.bytes,
                report.wall.as_secs_f64()
            );
        }
        Tool::PacedFeed {
            socket_dir,
            corpus,
            vms,
            first_index,
            rate,
            tick_ms,
            seed,
            duration,
            stats_file,
        } => {
            let bytes = read_corpus(&corpus)?;
            let options = infinibay_sim::paced::PacedOptions {
                socket_dir,
                vms,
                first_index,
                seed,
                rate,
                tick: std::time::Duration::from_millis(tick_ms.max(1)),
                duration,
                stats_file,
            };
            let stats = infinibay_sim::paced::paced_feed(options, Arc::new(bytes)).await?;
            println!("{}", serde_json::to_string(&stats)?);
        }
        Tool::Ingest { socket, stage } => {
            let report = feed::ingest_pipeline(&socket, stage).await?;
            println!("{}", report.to_json(stage.consumer_name()));
        }
        Tool::Drain {
            socket_dir,
            expect,
            settle,
            duration,
            interval,
            seed,
            flood,
        } => {
            let exclude = (0..flood)
                .map(|i| infinibay_sim::ids::vm_uuid(seed, i))
                .collect();
            let report = infinibay_sim::drain::drain(infinibay_sim::drain::DrainOptions {
                socket_dir,
                expect,
                settle,
                duration,
                interval,
                exclude,
            })
            .await?;
            println!("{}", report.to_json());
        }
    }
    Ok(())
}
