//! The `infiniservice` binary: flags, then the library does the work (`infiniservice::app`).

use std::process::ExitCode;

use clap::Parser as _;
use infiniservice::cli::Args;

fn main() -> ExitCode {
    match infiniservice::app::main(Args::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("infiniservice: {e:#}");
            ExitCode::FAILURE
        }
    }
}
