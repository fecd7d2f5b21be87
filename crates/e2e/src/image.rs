//! The bootable guest: kernel + initramfs from `e2e/build-guest.sh`, around our agent binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};

use crate::{Error, Result};

/// Environment variable naming a prebuilt `infiniservice` to put in the guest (the benchmark
/// uses a release build); when unset the harness runs `cargo build -p infiniservice`.
/// (Not `INFINIBAY_*`: the host reads every such variable as a setting.)
pub const AGENT_BINARY_ENV: &str = "IB_E2E_AGENT";

/// Environment variable naming the directory the image is built in (default `e2e/build`),
/// so that the benchmark's release image does not replace the tests' debug one.
pub const IMAGE_DIR_ENV: &str = "IB_E2E_IMAGE_DIR";

/// A kernel and an initramfs ready for `-kernel`/`-initrd`.
#[derive(Debug, Clone)]
pub struct GuestImage {
    /// `vmlinuz` of Debian's cloud kernel.
    pub kernel: PathBuf,
    /// The gzip'd cpio with busybox, both agents and the virtio modules.
    pub initrd: PathBuf,
    /// `uname -r` inside the guest.
    pub kernel_release: String,
    /// The agent binary that went into the image.
    pub agent_binary: PathBuf,
}

/// The workspace root (two levels above this crate).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| manifest.to_path_buf())
}

/// Cargo's target directory (`CARGO_TARGET_DIR` or `<workspace>/target`).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

fn tail(text: &[u8], lines: usize) -> String {
    let text = String::from_utf8_lossy(text);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `cargo build -p PACKAGE --bin BIN` (debug profile) and the path of the binary.
///
/// Runs at most once per (package, bin) per process; later calls reuse the result.
pub fn cargo_build_binary(package: &str, bin: &str) -> Result<PathBuf> {
    static BUILT: Mutex<Vec<(String, PathBuf)>> = Mutex::new(Vec::new());
    let key = format!("{package}/{bin}");
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, path)) = built.iter().find(|(k, _)| *k == key) {
        return Ok(path.clone());
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(&cargo)
        .args(["build", "--quiet", "-p", package, "--bin", bin])
        .current_dir(workspace_root())
        .stdin(Stdio::null())
        .output()
        .map_err(Error::io(format!("running cargo build -p {package}")))?;
    if !output.status.success() {
        return Err(Error::Build {
            step: format!("cargo build -p {package} --bin {bin}"),
            status: output.status.to_string(),
            output: tail(&output.stderr, 40),
        });
    }
    let path = target_dir().join("debug").join(bin);
    if !path.is_file() {
        return Err(Error::Build {
            step: format!("cargo build -p {package} --bin {bin}"),
            status: "ok".into(),
            output: format!("but {} does not exist", path.display()),
        });
    }
    built.push((key, path.clone()));
    Ok(path)
}

impl GuestImage {
    /// The image around the workspace's `infiniservice` (or [`AGENT_BINARY_ENV`]), built once
    /// per process and cached on disk under `e2e/build/` (or [`IMAGE_DIR_ENV`]).
    pub fn shared() -> Result<&'static GuestImage> {
        static IMAGE: OnceLock<GuestImage> = OnceLock::new();
        static BUILDING: Mutex<()> = Mutex::new(());
        if let Some(image) = IMAGE.get() {
            return Ok(image);
        }
        let _one_builder = BUILDING.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(image) = IMAGE.get() {
            return Ok(image);
        }
        let agent = match std::env::var_os(AGENT_BINARY_ENV) {
            Some(path) => PathBuf::from(path),
            None => cargo_build_binary("infiniservice", "infiniservice")?,
        };
        let out_dir = std::env::var_os(IMAGE_DIR_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join("e2e/build"));
        let image = Self::build(&agent, &out_dir)?;
        Ok(IMAGE.get_or_init(|| image))
    }

    /// Run `e2e/build-guest.sh --agent AGENT --out OUT_DIR` (a no-op when nothing changed).
    pub fn build(agent: &Path, out_dir: &Path) -> Result<GuestImage> {
        let script = workspace_root().join("e2e/build-guest.sh");
        let output = Command::new("bash")
            .arg(&script)
            .arg("--agent")
            .arg(agent)
            .arg("--out")
            .arg(out_dir)
            .stdin(Stdio::null())
            .output()
            .map_err(Error::io(format!("running {}", script.display())))?;
        if !output.status.success() {
            return Err(Error::Build {
                step: format!("{} --agent {}", script.display(), agent.display()),
                status: output.status.to_string(),
                output: tail(&output.stderr, 40),
            });
        }
        let env_path = out_dir.join("guest.env");
        let env = std::fs::read_to_string(&env_path)
            .map_err(Error::io(format!("reading {}", env_path.display())))?;
        let value = |key: &str| {
            env.lines()
                .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
                .map(str::to_owned)
                .ok_or_else(|| Error::protocol(env_path.display().to_string(), format!("no {key}")))
        };
        Ok(GuestImage {
            kernel: PathBuf::from(value("KERNEL")?),
            initrd: PathBuf::from(value("INITRD")?),
            kernel_release: value("KVER")?,
            agent_binary: agent.to_path_buf(),
        })
    }
}
