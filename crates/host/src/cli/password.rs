//! Passwords typed or piped into the CLI.

use std::io::{BufRead, Write};

use anyhow::Context;

/// The password from the first line of stdin (`from_stdin`), else from `env`, else typed after
/// `prompt` (no prompt: `None`).
pub(crate) fn read_password(
    from_stdin: bool,
    env: &str,
    prompt: &str,
) -> anyhow::Result<Option<String>> {
    if from_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("reading the password from stdin")?;
        return Ok(Some(line.trim_end_matches(['\n', '\r']).to_owned()));
    }
    if let Ok(p) = std::env::var(env) {
        return Ok(Some(p));
    }
    if prompt.is_empty() {
        return Ok(None);
    }
    eprint!("{prompt}");
    std::io::stderr().flush().ok();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the password")?;
    Ok(Some(line.trim_end_matches(['\n', '\r']).to_owned()))
}
