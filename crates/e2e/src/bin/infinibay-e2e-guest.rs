//! Boot one e2e guest and hold it until stdin closes (then QMP `quit`).
//!
//! For people (poke at a guest by hand) and for the leak test (kill this process, QEMU must
//! die with it). Prints `key=value` lines once QEMU runs:
//! `qemu_pid`, `agent_socket`, `qga_socket`, `run_dir`, and `vnc_socket` with `--vnc`.
//!
//!     infinibay-e2e-guest [--hostname NAME] [--socket-dir DIR] [--no-agent] [--vnc]

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use infinibay_e2e::{Guest, GuestImage, GuestOptions};

fn main() -> ExitCode {
    let mut options = GuestOptions {
        name: "manual".into(),
        ..GuestOptions::default()
    };
    let usage = || {
        eprintln!(
            "usage: infinibay-e2e-guest [--hostname NAME] [--socket-dir DIR] [--no-agent] [--vnc]"
        );
        ExitCode::from(2)
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--hostname" => match args.next() {
                Some(value) => options.hostname = value,
                None => return usage(),
            },
            "--socket-dir" => match args.next() {
                Some(value) => options.socket_dir = Some(PathBuf::from(value)),
                None => return usage(),
            },
            "--no-agent" => options.agent = false,
            "--vnc" => options.vnc = true,
            _ => return usage(),
        }
    }
    let guest = match GuestImage::shared().and_then(|image| Guest::boot(image, options)) {
        Ok(guest) => guest,
        Err(e) => {
            eprintln!("infinibay-e2e-guest: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut stdout = std::io::stdout().lock();
    let printed = writeln!(
        stdout,
        "qemu_pid={}\nagent_socket={}\nqga_socket={}\nrun_dir={}",
        guest.pid(),
        guest.agent_socket().display(),
        guest.qga_socket().display(),
        guest.run_dir().display()
    )
    .and_then(|()| match guest.vnc_socket() {
        Some(vnc) => writeln!(stdout, "vnc_socket={}", vnc.display()),
        None => Ok(()),
    })
    .and_then(|()| stdout.flush());
    drop(stdout);
    if let Err(e) = printed {
        eprintln!("infinibay-e2e-guest: {e}");
        return ExitCode::FAILURE;
    }
    // Hold until stdin reaches EOF (or fails).
    let mut sink = [0u8; 256];
    while matches!(std::io::stdin().read(&mut sink), Ok(n) if n > 0) {}
    match guest.quit(Duration::from_secs(20)) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("infinibay-e2e-guest: {e}");
            ExitCode::FAILURE
        }
    }
}
