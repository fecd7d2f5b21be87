//! The rpm inventory against a real rpm database: a tiny package is built with rpmbuild and
//! registered in a database under a temporary root laid out like an RPM distribution.
//! Needs the `rpm` tools (Debian package `rpm`); without them the test says so and passes.
#![cfg(target_os = "linux")]

use std::path::Path;
use std::process::Command;

use infiniservice::platform::collect::{Collector, Roots};

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn run(command: &mut Command) {
    let output = command.output().expect("tool starts");
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn build_package(top: &Path) -> std::path::PathBuf {
    let specs = top.join("SPECS");
    std::fs::create_dir_all(&specs).expect("specs dir");
    let spec = specs.join("infini-hello.spec");
    std::fs::write(
        &spec,
        "Name: infini-hello\nVersion: 1.2.3\nRelease: 4\nEpoch: 2\nSummary: test\nLicense: MIT\n\
         BuildArch: noarch\n%description\ntest\n%install\nmkdir -p %{buildroot}/opt/hello\n\
         head -c 5000 /dev/zero > %{buildroot}/opt/hello/data\n%files\n/opt/hello/data\n",
    )
    .expect("write spec");
    run(Command::new("rpmbuild")
        .arg("--define")
        .arg(format!("_topdir {}", top.display()))
        .arg("-bb")
        .arg(&spec));
    top.join("RPMS/noarch/infini-hello-1.2.3-4.noarch.rpm")
}

#[test]
fn rpm_packages_are_listed_with_epoch_version_size_and_arch() {
    if !have("rpm") || !have("rpmbuild") {
        eprintln!("rpm/rpmbuild not installed (Debian package `rpm`): rpm inventory not exercised");
        return;
    }
    let work = tempfile::tempdir().expect("temp dir");
    let package = build_package(&work.path().join("build"));
    let root = work.path().join("guest");
    std::fs::create_dir_all(&root).expect("guest root");
    let db = [
        "--root",
        root.to_str().expect("utf-8 temp path"),
        "--dbpath",
        "/var/lib/rpm",
    ];
    run(Command::new("rpm").args(db).arg("--initdb"));
    run(Command::new("rpm")
        .args(db)
        .args(["-i", "--nodeps", "--justdb", "--noscripts"])
        .arg(&package));

    let apps = Collector::new(Roots::under(&root)).applications();
    assert_eq!(apps.source.as_deref(), Some("rpm"));
    assert_eq!(apps.applications.len(), 1, "{apps:?}");
    let hello = &apps.applications[0];
    assert_eq!(hello.name, "infini-hello");
    assert_eq!(hello.version.as_deref(), Some("2:1.2.3-4"));
    assert_eq!(hello.size_kb, Some(5), "5000 bytes rounded up to kB");
    assert_eq!(hello.architecture.as_deref(), Some("noarch"));
}
