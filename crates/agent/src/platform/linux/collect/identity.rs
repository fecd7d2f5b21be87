//! What the guest says of itself in `vm_identification`.

/// `PRETTY_NAME` of an os-release file (os-release(5): shell-style assignments, values
/// optionally in single or double quotes, backslash escapes inside double quotes). Falls
/// back to `NAME VERSION` when `PRETTY_NAME` is missing.
pub(crate) fn pretty_name(os_release: &str) -> Option<String> {
    let mut name = None;
    let mut version = None;
    for line in os_release.lines() {
        let Some((key, raw)) = line.trim().split_once('=') else {
            continue;
        };
        let value = unquote(raw.trim());
        match key.trim() {
            "PRETTY_NAME" if !value.is_empty() => return Some(value),
            "NAME" => name = Some(value),
            "VERSION" => version = Some(value),
            _ => {}
        }
    }
    match (name, version) {
        (Some(n), Some(v)) => Some(format!("{n} {v}")),
        (Some(n), None) => Some(n),
        _ => None,
    }
}

fn unquote(raw: &str) -> String {
    if let Some(inner) = raw.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
        return inner.to_string();
    }
    let Some(inner) = raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) else {
        return raw.to_string();
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(escaped) = chars.next() {
                out.push(escaped);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `uname(2)`'s machine field (`x86_64`, `aarch64`), which is what the running kernel is;
/// the agent binary's own architecture (`std::env::consts::ARCH`) is only the fallback.
pub(crate) fn machine() -> String {
    // SAFETY: an all-zero utsname is a valid value of this plain C struct.
    let mut names: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: names is a valid out-pointer.
    if unsafe { libc::uname(&mut names) } != 0 {
        return std::env::consts::ARCH.to_string();
    }
    let bytes: Vec<u8> = names
        .machine
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    let machine = String::from_utf8_lossy(&bytes).into_owned();
    if machine.is_empty() {
        std::env::consts::ARCH.to_string()
    } else {
        machine
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pretty_name_unquotes_and_falls_back() {
        assert_eq!(
            pretty_name(
                "NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n"
            )
            .as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        assert_eq!(
            pretty_name("PRETTY_NAME='Alpine \"edge\"'\n").as_deref(),
            Some("Alpine \"edge\"")
        );
        assert_eq!(
            pretty_name("NAME=\"My \\\"OS\\\"\"\nVERSION=1.0\n").as_deref(),
            Some("My \"OS\" 1.0")
        );
        assert_eq!(pretty_name("# nothing\n"), None);
    }

    #[test]
    fn machine_is_not_empty() {
        assert!(!machine().is_empty());
    }
}
