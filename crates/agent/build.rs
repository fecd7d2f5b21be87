//! The build's optimisation level for `--version`, and, for Windows targets: the resources of infiniservice.exe — the message table the Event Log
//! source points at (`windows/messages.mc`) and the version information — compiled with
//! mingw-w64's windmc and windres and linked into the binary. Nothing for other targets.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    // `infiniservice --version` says which optimisation the binary was built with, so that
    // the installers can refuse anything but the size-optimised `agent` profile (opt-level
    // "s"), the one build that ships.
    let opt_level = env::var("OPT_LEVEL").unwrap_or_default();
    println!("cargo:rustc-env=INFINISERVICE_OPT_LEVEL={opt_level}");
    println!("cargo:rerun-if-changed=windows/messages.mc");
    println!("cargo:rerun-if-env-changed=WINDMC");
    println!("cargo:rerun-if-env-changed=WINDRES");
    if env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("windows") {
        return;
    }
    if env::var("CARGO_CFG_TARGET_ENV").as_deref() != Ok("gnu") {
        // MSVC builds would use rc.exe/mc.exe; this project builds with mingw-w64 only.
        println!("cargo:warning=resources are built for the -gnu target only");
        return;
    }
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let source = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"))
        .join("windows/messages.mc");
    let windmc = env::var("WINDMC").unwrap_or_else(|_| "x86_64-w64-mingw32-windmc".into());
    let windres = env::var("WINDRES").unwrap_or_else(|_| "x86_64-w64-mingw32-windres".into());
    run(Command::new(&windmc)
        .arg("-h")
        .arg(&out)
        .arg("-r")
        .arg(&out)
        .arg(&source));

    let version = env::var("CARGO_PKG_VERSION").expect("cargo sets it");
    let mut parts: Vec<u16> = version
        .split(['.', '-', '+'])
        .take(3)
        .map(|p| p.parse().unwrap_or(0))
        .collect();
    parts.resize(4, 0);
    let numeric = parts
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let rc = format!(
        r#"#include "messages.rc"
1 VERSIONINFO
FILEVERSION {numeric}
PRODUCTVERSION {numeric}
FILEOS 0x40004
FILETYPE 0x1
BEGIN
  BLOCK "StringFileInfo"
  BEGIN
    BLOCK "040904B0"
    BEGIN
      VALUE "CompanyName", "Infinibay"
      VALUE "FileDescription", "Infinibay guest agent"
      VALUE "FileVersion", "{version}"
      VALUE "InternalName", "infiniservice"
      VALUE "OriginalFilename", "infiniservice.exe"
      VALUE "ProductName", "InfiniService"
      VALUE "ProductVersion", "{version}"
    END
  END
  BLOCK "VarFileInfo"
  BEGIN
    VALUE "Translation", 0x409, 1200
  END
END
"#
    );
    let rc_path = out.join("resources.rc");
    std::fs::write(&rc_path, rc).expect("write resources.rc");
    let object = out.join("resources.o");
    run(Command::new(&windres)
        .arg("--include-dir")
        .arg(&out)
        .arg("-O")
        .arg("coff")
        .arg("-i")
        .arg(&rc_path)
        .arg("-o")
        .arg(&object));
    println!("cargo:rustc-link-arg-bins={}", object.display());
}

fn run(command: &mut Command) {
    let status = command
        .status()
        .unwrap_or_else(|e| panic!("cannot run {command:?} (install mingw-w64's binutils): {e}"));
    assert!(status.success(), "{command:?} failed: {status}");
}
