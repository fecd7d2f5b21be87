//! Installed packages: the dpkg status file (read in place), or rpm (through `rpm -qa`).

use std::io::BufRead;
use std::path::Path;
use std::time::Duration;

use infinibay_protocol::message::Application;

use super::read::CollectError;
use super::tool;

/// Streams a dpkg `status` file and keeps installed packages. The file is several MB on a
/// desktop, so it is read line by line (the agent's memory budget is 4 MB) and long fields
/// such as `Description` and `Conffiles` are never stored.
///
/// Installed means the third word of `Status` is `installed`: `install ok installed`, but
/// also `hold ok installed` (pinned) and `deinstall ok installed` (marked for removal, still
/// on disk). `config-files`, `half-installed`, `unpacked` are not installed.
pub(crate) fn parse_dpkg_status(reader: impl BufRead) -> Result<Vec<Application>, std::io::Error> {
    let mut packages = Vec::new();
    let mut current = Paragraph::default();
    let mut reader = reader;
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = reader.read_until(b'\n', &mut line)?;
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\n', '\r']);
        if read == 0 || text.is_empty() {
            if let Some(app) = current.take_installed() {
                packages.push(app);
            }
            if read == 0 {
                break;
            }
            continue;
        }
        if text.starts_with([' ', '\t']) {
            continue; // continuation of a multi-line field
        }
        let Some((key, value)) = text.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key {
            "Package" => current.name = Some(value.to_string()),
            "Status" => {
                current.installed = value.split_ascii_whitespace().nth(2) == Some("installed")
            }
            "Version" => current.version = Some(value.to_string()),
            "Installed-Size" => current.size_kb = value.parse().ok(),
            "Architecture" => current.architecture = Some(value.to_string()),
            _ => {}
        }
    }
    sort(&mut packages);
    Ok(packages)
}

#[derive(Debug, Default)]
struct Paragraph {
    name: Option<String>,
    installed: bool,
    version: Option<String>,
    size_kb: Option<u64>,
    architecture: Option<String>,
}

impl Paragraph {
    fn take_installed(&mut self) -> Option<Application> {
        let paragraph = std::mem::take(self);
        if !paragraph.installed {
            return None;
        }
        Some(Application {
            name: paragraph.name?,
            version: paragraph.version,
            size_kb: paragraph.size_kb,
            architecture: paragraph.architecture,
        })
    }
}

/// Name, then architecture (multi-arch installs one name per architecture), then version.
fn sort(packages: &mut [Application]) {
    packages.sort_by(|a, b| {
        (&a.name, &a.architecture, &a.version).cmp(&(&b.name, &b.architecture, &b.version))
    });
}

/// The query format: name, [epoch:]version-release, size in bytes, arch.
pub(crate) const RPM_QUERY_FORMAT: &str =
    "%{NAME}\\t%|EPOCH?{%{EPOCH}:}:{}|%{VERSION}-%{RELEASE}\\t%{SIZE}\\t%{ARCH}\\n";

/// Parses `rpm -qa --queryformat RPM_QUERY_FORMAT` output. Sizes are bytes; reported in kB
/// rounded up like dpkg's `Installed-Size`. `gpg-pubkey` pseudo-packages are keys, not
/// software, and are left out.
pub(crate) fn parse_rpm_query(output: &str) -> Vec<Application> {
    let mut packages: Vec<Application> = output
        .lines()
        .filter_map(|line| {
            let mut fields = line.split('\t');
            let name = fields.next()?.trim();
            if name.is_empty() || name == "gpg-pubkey" {
                return None;
            }
            let version = fields.next().map(str::to_string);
            let size_kb = fields
                .next()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .map(|bytes| bytes.div_ceil(1024));
            let architecture = fields
                .next()
                .map(str::trim)
                .filter(|a| !a.is_empty() && *a != "(none)")
                .map(str::to_string);
            Some(Application {
                name: name.to_string(),
                version,
                size_kb,
                architecture,
            })
        })
        .collect();
    sort(&mut packages);
    packages
}

/// Where RPM distributions keep the database, relative to the root: current Fedora/RHEL
/// use `/usr/lib/sysimage/rpm` (with `/var/lib/rpm` a link to it), older ones `/var/lib/rpm`.
pub(crate) const RPM_DB_DIRS: [&str; 2] = ["usr/lib/sysimage/rpm", "var/lib/rpm"];

/// The rpm database directory under `root`, if there is one with a database in it.
pub(crate) fn find_rpm_db(root: &Path) -> Option<&'static str> {
    RPM_DB_DIRS.into_iter().find(|dir| {
        std::fs::read_dir(root.join(dir)).is_ok_and(|mut entries| entries.next().is_some())
    })
}

/// Runs rpm on the database `db_dir` under `root` (its database is a SQLite file on
/// current distributions; reading it in-process would need SQLite linked into the agent,
/// far beyond its memory budget). The database path is passed explicitly so that an rpm
/// built with another default (Debian's uses `~/.rpmdb`) reads the distribution's database.
pub(crate) fn query_rpm(
    root: &Path,
    db_dir: &str,
    timeout: Duration,
) -> Result<Vec<Application>, CollectError> {
    let root_text = root.to_string_lossy();
    let db_path = format!("/{db_dir}");
    let mut args = vec![
        "-qa",
        "--dbpath",
        &db_path,
        "--queryformat",
        RPM_QUERY_FORMAT,
    ];
    if root != Path::new("/") {
        args.extend(["--root", &root_text]);
    }
    let output = tool::run("rpm", &args, timeout)?;
    Ok(parse_rpm_query(&String::from_utf8_lossy(&output)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_installed_paragraphs_are_kept_and_multiline_fields_are_skipped() {
        let status = "Package: zsh\nStatus: install ok installed\nInstalled-Size: 2500\n\
            Architecture: amd64\nVersion: 5.9-4+b2\nDescription: shell\n Package: fake\n .\n\n\
            Package: old\nStatus: deinstall ok config-files\nVersion: 1\n\n\
            Package: pinned\nStatus: hold ok installed\nVersion: 2\nArchitecture: all\n\n\
            Package: libc6\nStatus: install ok installed\nArchitecture: i386\nVersion: 2.36\n\n\
            Package: libc6\nStatus: install ok installed\nArchitecture: amd64\nVersion: 2.36";
        let apps = parse_dpkg_status(status.as_bytes()).expect("in-memory read");
        let names: Vec<_> = apps
            .iter()
            .map(|a| format!("{}:{}", a.name, a.architecture.as_deref().unwrap_or("?")))
            .collect();
        assert_eq!(
            names,
            ["libc6:amd64", "libc6:i386", "pinned:all", "zsh:amd64"]
        );
        let zsh = &apps[3];
        assert_eq!(zsh.version.as_deref(), Some("5.9-4+b2"));
        assert_eq!(zsh.size_kb, Some(2500));
    }

    #[test]
    fn rpm_lines_parse_with_bytes_to_kb() {
        let apps = parse_rpm_query(
            "bash\t5.1.8-9.el9\t7738634\tx86_64\ngpg-pubkey\t8483c65d-5ccc5b19\t0\t(none)\n\
             tzdata\t2024a-1.el9\t1761553\tnoarch\nkernel\t0:5.14.0-427.el9\t0\tx86_64\n",
        );
        let names: Vec<_> = apps.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["bash", "kernel", "tzdata"]);
        assert_eq!(apps[0].size_kb, Some(7558));
        assert_eq!(apps[2].architecture.as_deref(), Some("noarch"));
    }
}
