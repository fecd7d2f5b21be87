//! Operations: listing, `createVm`, power actions, delete, hot-plugging the agent channel, and
//! the one-shot probe for `infinibay doctor`.
//!
//! libvirt calls block (one RPC each, or more), so every operation runs on tokio's blocking
//! pool and is bounded by the configured timeout. States are checked first so that the usual
//! mistakes (start a running VM, suspend a stopped one) get precise errors; libvirt's own
//! refusal is still mapped the same way when a state changes between the check and the call.

use std::os::unix::fs::FileTypeExt;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;
use virt::domain::Domain;
use virt::error::ErrorNumber;
use virt_sys as sys;

use crate::error::{Error, Operation, Result};
use crate::state::PowerState;
use crate::supervisor::{Conn, Libvirt, all_domains, domain_info, power_state};
use crate::xml::{self, DomainDefinition, domain_facts, hvm_domain_types};
use crate::{Accel, DomainInfo, VmSpec, agent_socket_path, overlay_path, vnc_socket_path};

const TARGET: &str = "infinibay::libvirt";

/// The longest path an AF_UNIX socket can have (108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;
const MAX_NAME_CHARS: usize = 128;
const MIN_MEMORY_MIB: u64 = 16;
const MAX_VCPUS: u32 = 256;

/// Runs `work` on the blocking pool, bounded by `timeout`.
async fn blocking<T, F>(operation: Operation, timeout: Duration, work: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    match tokio::time::timeout(timeout, tokio::task::spawn_blocking(work)).await {
        Ok(Ok(result)) => result,
        Ok(Err(join)) => Err(Error::Internal(format!("{operation}: {join}"))),
        // The blocking call goes on until libvirt answers or its keepalive gives up.
        Err(_) => Err(Error::Timeout {
            operation,
            after: timeout,
        }),
    }
}

/// What `infinibay doctor` reports about libvirt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeReport {
    /// The URI as the daemon canonicalised it.
    pub uri: String,
    /// The daemon host's name.
    pub hostname: String,
    /// libvirt's version (`9.0.0`).
    pub libvirt_version: String,
    /// The hypervisor driver (`QEMU`).
    pub hypervisor: String,
    /// The hypervisor's version (`7.2.0`).
    pub hypervisor_version: String,
    /// Domain types offered for x86_64 hvm guests (`qemu`, `kvm`).
    pub domain_types: Vec<String>,
}

fn version_string(v: u32) -> String {
    format!("{}.{}.{}", v / 1_000_000, (v / 1_000) % 1_000, v % 1_000)
}

/// Connects once to `uri` and reports what answers there; [`Error::Unreachable`] says why not
/// (libvirt's own message: no socket, permission denied, ...). Bounded by `timeout`.
pub async fn probe(uri: &str, timeout: Duration) -> Result<ProbeReport> {
    let uri = uri.to_owned();
    blocking(Operation::Probe, timeout, move || {
        let conn = Conn::open(&uri)?;
        let c = conn.connect();
        let fail = |e| conn.error(e, Operation::Probe, None);
        let capabilities = c.get_capabilities().map_err(fail)?;
        Ok(ProbeReport {
            uri: c.get_uri().map_err(fail)?,
            hostname: c.get_hostname().map_err(fail)?,
            libvirt_version: version_string(c.get_lib_version().map_err(fail)?),
            hypervisor: c.get_type().map_err(fail)?,
            hypervisor_version: version_string(c.get_hyp_version().map_err(fail)?),
            domain_types: hvm_domain_types(&capabilities, "x86_64")?,
        })
    })
    .await
}

/// What [`Libvirt::delete_vm`] removed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeleteReport {
    /// The domain was running (or paused) and was destroyed first.
    pub destroyed: bool,
    /// Its persistent definition was removed (false for a transient domain).
    pub undefined: bool,
    /// Files removed: its sockets and its overlay.
    pub removed_files: Vec<PathBuf>,
}

/// What [`Libvirt::attach_agent_channel`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachOutcome {
    /// Host side of the domain's agent channel.
    pub socket: PathBuf,
    /// Hot-plugged into the running domain now.
    pub attached_live: bool,
    /// Added to the persistent definition (effective from the next start).
    pub attached_config: bool,
}

/// The state a power action needs.
#[derive(Debug, Clone, Copy)]
enum Needs {
    /// Not active (power on).
    Stopped,
    /// Active, running or paused (forced power off).
    Active,
    /// Active and not paused (ACPI actions, suspend).
    Unpaused,
    /// Paused (resume).
    Paused,
}

fn require_active(
    conn: &Conn,
    dom: &Domain,
    uuid: Uuid,
    operation: Operation,
) -> Result<PowerState> {
    let active = dom
        .is_active()
        .map_err(|e| conn.error(e, operation, Some(uuid)))?;
    if !active {
        return Err(Error::NotRunning { uuid, operation });
    }
    power_state(conn, dom, uuid, operation)
}

/// libvirt refused with "operation invalid" (the state changed after our check): say which
/// state it was in.
fn refused(
    conn: &Conn,
    dom: &Domain,
    uuid: Uuid,
    operation: Operation,
    e: virt::error::Error,
) -> Error {
    if e.code() != ErrorNumber::OperationInvalid {
        return conn.error(e, operation, Some(uuid));
    }
    match (operation, dom.is_active()) {
        (Operation::PowerOn, _) => Error::AlreadyRunning { uuid },
        (_, Ok(false)) => Error::NotRunning { uuid, operation },
        _ => match power_state(conn, dom, uuid, operation) {
            Ok(state) => Error::InvalidState {
                uuid,
                operation,
                state,
            },
            Err(other) => other,
        },
    }
}

fn validate_name(name: &str) -> Result<()> {
    let chars = name.chars().count();
    if chars == 0 || chars > MAX_NAME_CHARS {
        return Err(Error::InvalidSpec(format!(
            "the name must have 1 to {MAX_NAME_CHARS} characters"
        )));
    }
    if let Some(bad) = name.chars().find(|c| c.is_control() || *c == '/') {
        return Err(Error::InvalidSpec(format!(
            "the name must not contain {:?}",
            bad
        )));
    }
    Ok(())
}

fn validate_socket(path: &Path) -> Result<()> {
    if path.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(Error::InvalidSpec(format!(
            "{} is longer than {MAX_SOCKET_PATH} bytes, the limit of a UNIX socket path; use a \
             shorter socket directory",
            path.display()
        )));
    }
    Ok(())
}

fn validate_absolute(what: &str, path: &Path) -> Result<()> {
    if !path.is_absolute() {
        return Err(Error::InvalidSpec(format!(
            "the {what} must be an absolute path, not {}",
            path.display()
        )));
    }
    Ok(())
}

/// The base image inside the image directory: a plain file name there, or an absolute path
/// that stays under it after resolving symlinks and `..`.
fn resolve_base_image(image_dir: &Path, base: &Path) -> Result<PathBuf> {
    let candidate = if base.is_absolute() {
        base.to_path_buf()
    } else {
        let mut components = base.components();
        match (components.next(), components.next()) {
            (Some(Component::Normal(_)), None) => image_dir.join(base),
            _ => {
                return Err(Error::InvalidSpec(format!(
                    "base image {} must be a file name in the image directory",
                    base.display()
                )));
            }
        }
    };
    let dir = image_dir.canonicalize().map_err(|e| Error::Io {
        what: format!("image directory {}", image_dir.display()),
        source: e,
    })?;
    let resolved = candidate
        .canonicalize()
        .map_err(|e| Error::InvalidSpec(format!("base image {}: {e}", candidate.display())))?;
    if !resolved.starts_with(&dir) || !resolved.is_file() {
        return Err(Error::InvalidSpec(format!(
            "base image {} is not a file in the image directory {}",
            base.display(),
            image_dir.display()
        )));
    }
    Ok(resolved)
}

/// `qemu-img create -f qcow2 -b BASE -F qcow2 OVERLAY`: a copy-on-write disk over the base.
fn create_overlay(base: &Path, overlay: &Path) -> Result<()> {
    let output = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(base)
        .arg(overlay)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::Image {
            overlay: overlay.to_path_buf(),
            message: format!("running qemu-img: {e}"),
        })?;
    if !output.status.success() {
        // qemu-img may have left a partial file.
        let _ = std::fs::remove_file(overlay);
        return Err(Error::Image {
            overlay: overlay.to_path_buf(),
            message: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

/// Removes `path` if it is a UNIX socket (never a regular file a domain XML happened to name).
fn remove_socket(path: &Path, removed: &mut Vec<PathBuf>) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(|e| Error::Io {
                what: format!("removing {}", path.display()),
                source: e,
            })?;
            removed.push(path.to_path_buf());
            Ok(())
        }
        _ => Ok(()),
    }
}

impl Libvirt {
    /// Runs `work` with the current connection on the blocking pool.
    async fn with_conn<T, F>(&self, operation: Operation, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Conn) -> Result<T> + Send + 'static,
    {
        let conn: Arc<Conn> = self.shared.conn()?;
        blocking(operation, self.shared.config.call_timeout, move || {
            work(&conn)
        })
        .await
    }

    /// Runs `work` on domain `uuid`.
    async fn with_domain<T, F>(&self, operation: Operation, uuid: Uuid, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Conn, &Domain) -> Result<T> + Send + 'static,
    {
        self.with_conn(operation, move |conn| {
            let dom = conn.lookup(uuid, operation)?;
            work(conn, &dom)
        })
        .await
    }

    /// Every domain, active and inactive, sorted by name.
    pub async fn list_domains(&self) -> Result<Vec<DomainInfo>> {
        self.with_conn(Operation::List, all_domains).await
    }

    /// One domain.
    pub async fn domain(&self, uuid: Uuid) -> Result<DomainInfo> {
        self.with_domain(Operation::List, uuid, |conn, dom| {
            domain_info(conn, dom, Operation::List)
        })
        .await
    }

    /// The domain type a new VM gets under `accel`, from the daemon's capabilities.
    fn domain_type(conn: &Conn, accel: Accel) -> Result<&'static str> {
        let capabilities = conn
            .connect()
            .get_capabilities()
            .map_err(|e| conn.error(e, Operation::Create, None))?;
        let types = hvm_domain_types(&capabilities, "x86_64")?;
        let has = |t: &str| types.iter().any(|x| x == t);
        match accel {
            Accel::Kvm if has("kvm") => Ok("kvm"),
            Accel::Kvm => Err(Error::InvalidSpec(
                "KVM was asked for, but libvirt offers no kvm domains for x86_64 here".into(),
            )),
            Accel::Auto if has("kvm") => Ok("kvm"),
            Accel::Auto | Accel::Tcg if has("qemu") => Ok("qemu"),
            Accel::Auto | Accel::Tcg => Err(Error::InvalidSpec(
                "libvirt offers no qemu (TCG) domains for x86_64 here".into(),
            )),
        }
    }

    /// `createVm`: validates `spec`, creates the overlay (when a base image is given), defines
    /// the domain with the agent channel, qemu-ga's channel and VNC on a socket, and starts it
    /// when asked. On any failure nothing is left behind (overlay removed, domain undefined).
    pub async fn create_vm(&self, spec: VmSpec) -> Result<DomainInfo> {
        let config = self.shared.config.clone();
        let uuid = spec.uuid.unwrap_or_else(Uuid::new_v4);
        if uuid.is_nil() {
            return Err(Error::InvalidSpec("the nil UUID cannot name a VM".into()));
        }
        validate_name(&spec.name)?;
        if spec.memory_mib < MIN_MEMORY_MIB {
            return Err(Error::InvalidSpec(format!(
                "memory must be at least {MIN_MEMORY_MIB} MiB"
            )));
        }
        if spec.vcpus == 0 || spec.vcpus > MAX_VCPUS {
            return Err(Error::InvalidSpec(format!(
                "vCPUs must be between 1 and {MAX_VCPUS}"
            )));
        }
        if spec.base_image.is_none() && spec.kernel.is_none() {
            return Err(Error::InvalidSpec(
                "a VM needs a base image or a kernel to boot".into(),
            ));
        }
        if let Some(kernel) = &spec.kernel {
            validate_absolute("kernel", &kernel.kernel)?;
            validate_absolute("initrd", &kernel.initrd)?;
            if kernel.cmdline.contains('\0') {
                return Err(Error::InvalidSpec(
                    "the kernel command line contains a NUL byte".into(),
                ));
            }
        }
        if let Some(log) = &spec.serial_log {
            validate_absolute("serial log", log)?;
        }
        let agent_socket = agent_socket_path(&config.socket_dir, uuid);
        let vnc_socket = vnc_socket_path(&config.socket_dir, uuid);
        validate_socket(&agent_socket)?;
        validate_socket(&vnc_socket)?;

        self.with_conn(Operation::Create, move |conn| {
            let op = Operation::Create;
            if Domain::lookup_by_uuid(conn.connect(), uuid).is_ok()
                || Domain::lookup_by_name(conn.connect(), &spec.name).is_ok()
            {
                return Err(Error::AlreadyExists {
                    name: spec.name.clone(),
                    uuid,
                });
            }
            let domain_type = Self::domain_type(conn, spec.accel)?;
            let overlay = match &spec.base_image {
                Some(base) => {
                    let base = resolve_base_image(&config.image_dir, base)?;
                    let overlay = overlay_path(&config.image_dir, uuid);
                    if overlay.exists() {
                        return Err(Error::InvalidSpec(format!(
                            "{} already exists",
                            overlay.display()
                        )));
                    }
                    create_overlay(&base, &overlay)?;
                    Some(overlay)
                }
                None => None,
            };
            let remove_overlay = || {
                if let Some(overlay) = &overlay {
                    let _ = std::fs::remove_file(overlay);
                }
            };
            let definition = DomainDefinition {
                uuid,
                name: &spec.name,
                memory_mib: spec.memory_mib,
                vcpus: spec.vcpus,
                domain_type,
                kernel: spec
                    .kernel
                    .as_ref()
                    .map(|k| (k.kernel.as_path(), k.initrd.as_path(), k.cmdline.as_str())),
                overlay: overlay.as_deref(),
                agent_socket: &agent_socket,
                vnc_socket: &vnc_socket,
                serial_log: spec.serial_log.as_deref(),
            };
            let xml = match xml::domain_xml(&definition) {
                Ok(xml) => xml,
                Err(e) => {
                    remove_overlay();
                    return Err(e);
                }
            };
            let dom = match Domain::define_xml(conn.connect(), &xml) {
                Ok(dom) => dom,
                Err(e) => {
                    remove_overlay();
                    return Err(conn.error(e, op, Some(uuid)));
                }
            };
            if spec.start {
                if let Err(e) = dom.create() {
                    let error = conn.error(e, op, Some(uuid));
                    let _ = dom.undefine_flags(sys::VIR_DOMAIN_UNDEFINE_NVRAM);
                    remove_overlay();
                    return Err(error);
                }
            }
            tracing::info!(target: TARGET, %uuid, name = %spec.name, domain_type, started = spec.start, "VM created");
            domain_info(conn, &dom, op)
        })
        .await
    }

    /// Checks that domain `uuid` is in a state `needs` allows, then runs `act` on it.
    async fn power_action(
        &self,
        op: Operation,
        uuid: Uuid,
        needs: Needs,
        act: fn(&Domain) -> std::result::Result<(), virt::error::Error>,
    ) -> Result<()> {
        self.with_domain(op, uuid, move |conn, dom| {
            let refuse = |state| {
                Err(Error::InvalidState {
                    uuid,
                    operation: op,
                    state,
                })
            };
            match needs {
                Needs::Stopped => {
                    if dom.is_active().map_err(|e| conn.error(e, op, Some(uuid)))? {
                        return Err(Error::AlreadyRunning { uuid });
                    }
                }
                Needs::Active => {
                    require_active(conn, dom, uuid, op)?;
                }
                Needs::Unpaused => {
                    if require_active(conn, dom, uuid, op)? == PowerState::Paused {
                        return refuse(PowerState::Paused);
                    }
                }
                Needs::Paused => match require_active(conn, dom, uuid, op)? {
                    PowerState::Paused => {}
                    other => return refuse(other),
                },
            }
            act(dom).map_err(|e| refused(conn, dom, uuid, op, e))
        })
        .await
    }

    /// Starts a defined domain.
    pub async fn power_on(&self, uuid: Uuid) -> Result<()> {
        self.power_action(Operation::PowerOn, uuid, Needs::Stopped, |d| {
            d.create().map(drop)
        })
        .await
    }

    /// ACPI shutdown: presses the power button; the guest decides (the domain is SHUTOFF once
    /// it has powered off; watch the events). A paused guest cannot see the button.
    pub async fn shutdown(&self, uuid: Uuid) -> Result<()> {
        self.power_action(Operation::Shutdown, uuid, Needs::Unpaused, |d| {
            d.shutdown_flags(sys::VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
                .map(drop)
        })
        .await
    }

    /// Forced power off (`virDomainDestroy`): QEMU is killed, the guest gets no say.
    pub async fn power_off(&self, uuid: Uuid) -> Result<()> {
        self.power_action(Operation::PowerOff, uuid, Needs::Active, Domain::destroy)
            .await
    }

    /// ACPI reboot (the guest decides).
    pub async fn reboot(&self, uuid: Uuid) -> Result<()> {
        self.power_action(Operation::Reboot, uuid, Needs::Unpaused, |d| {
            d.reboot(sys::VIR_DOMAIN_REBOOT_ACPI_POWER_BTN)
        })
        .await
    }

    /// Pauses the vCPUs (memory stays; `resume` continues).
    pub async fn suspend(&self, uuid: Uuid) -> Result<()> {
        self.power_action(Operation::Suspend, uuid, Needs::Unpaused, |d| {
            d.suspend().map(drop)
        })
        .await
    }

    /// Resumes paused vCPUs.
    pub async fn resume(&self, uuid: Uuid) -> Result<()> {
        self.power_action(Operation::Resume, uuid, Needs::Paused, |d| {
            d.resume().map(drop)
        })
        .await
    }

    /// `deleteVm`: destroys the domain if it runs, undefines it (with its NVRAM, managed-save
    /// image and snapshot metadata), then removes its sockets (agent and VNC) and the overlay
    /// `createVm` made for it. Other disks (a base image, an adopted domain's own disks) are
    /// never touched.
    pub async fn delete_vm(&self, uuid: Uuid) -> Result<DeleteReport> {
        let op = Operation::Delete;
        let config = self.shared.config.clone();
        self.with_domain(op, uuid, move |conn, dom| {
            let fail = |e| conn.error(e, op, Some(uuid));
            // The live XML names the sockets in use; read it before the domain goes.
            let facts = domain_facts(&dom.get_xml_desc(0).map_err(fail)?)?;
            let persistent = dom.is_persistent().map_err(fail)?;
            let mut report = DeleteReport::default();
            if dom.is_active().map_err(fail)? {
                match dom.destroy() {
                    Ok(()) => report.destroyed = true,
                    // It stopped by itself meanwhile.
                    Err(e) if e.code() == ErrorNumber::OperationInvalid => {}
                    Err(e) => return Err(fail(e)),
                }
            }
            if persistent {
                dom.undefine_flags(
                    sys::VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                        | sys::VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                        | sys::VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
                        | sys::VIR_DOMAIN_UNDEFINE_NVRAM,
                )
                .map_err(fail)?;
                report.undefined = true;
            }
            let mut sockets = vec![
                agent_socket_path(&config.socket_dir, uuid),
                vnc_socket_path(&config.socket_dir, uuid),
            ];
            sockets.extend(facts.agent_socket);
            sockets.extend(facts.vnc_socket);
            sockets.dedup();
            for socket in &sockets {
                remove_socket(socket, &mut report.removed_files)?;
            }
            let overlay = overlay_path(&config.image_dir, uuid);
            if overlay.is_file() {
                std::fs::remove_file(&overlay).map_err(|e| Error::Io {
                    what: format!("removing {}", overlay.display()),
                    source: e,
                })?;
                report.removed_files.push(overlay);
            }
            tracing::info!(target: TARGET, %uuid, destroyed = report.destroyed, removed = report.removed_files.len(), "VM deleted");
            Ok(report)
        })
        .await
    }

    /// Adopts an existing domain: adds the `org.infinibay.agent` channel bound at
    /// `<socket_dir>/vm-<uuid>.sock`, hot-plugged into the running domain
    /// (`virDomainAttachDeviceFlags`, live) and into its persistent definition (config), each
    /// only where it is missing. A domain that has it in both is left as it is.
    pub async fn attach_agent_channel(&self, uuid: Uuid) -> Result<AttachOutcome> {
        let op = Operation::AttachAgentChannel;
        let socket = agent_socket_path(&self.shared.config.socket_dir, uuid);
        validate_socket(&socket)?;
        let channel = xml::agent_channel_xml(&socket)?;
        self.with_domain(op, uuid, move |conn, dom| {
            let fail = |e| conn.error(e, op, Some(uuid));
            let active = dom.is_active().map_err(fail)?;
            let persistent = dom.is_persistent().map_err(fail)?;
            let live = active
                && domain_facts(&dom.get_xml_desc(0).map_err(fail)?)?
                    .agent_socket
                    .is_some();
            let config = persistent
                && domain_facts(
                    &dom.get_xml_desc(sys::VIR_DOMAIN_XML_INACTIVE)
                        .map_err(fail)?,
                )?
                .agent_socket
                .is_some();
            let mut flags = 0;
            if active && !live {
                flags |= sys::VIR_DOMAIN_AFFECT_LIVE;
            }
            if persistent && !config {
                flags |= sys::VIR_DOMAIN_AFFECT_CONFIG;
            }
            if flags != 0 {
                dom.attach_device_flags(&channel, flags).map_err(fail)?;
            }
            Ok(AttachOutcome {
                socket,
                attached_live: flags & sys::VIR_DOMAIN_AFFECT_LIVE != 0,
                attached_config: flags & sys::VIR_DOMAIN_AFFECT_CONFIG != 0,
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_slashes_or_control_characters_are_refused() {
        assert!(validate_name("web-01 (prod)").is_ok());
        assert!(validate_name("école <lab> & 'x'").is_ok());
        for bad in ["", "a/b", "tab\there", "nul\0", &"x".repeat(129)] {
            assert!(
                matches!(validate_name(bad), Err(Error::InvalidSpec(_))),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn base_images_outside_the_image_directory_are_refused() {
        let root = tempfile::tempdir().expect("tempdir");
        let images = root.path().join("images");
        std::fs::create_dir(&images).expect("mkdir");
        std::fs::write(images.join("debian.qcow2"), b"x").expect("write");
        std::fs::write(root.path().join("secret"), b"x").expect("write");
        std::os::unix::fs::symlink(root.path().join("secret"), images.join("link"))
            .expect("symlink");

        let inside = resolve_base_image(&images, Path::new("debian.qcow2")).expect("inside");
        assert!(inside.ends_with("images/debian.qcow2"));
        assert!(resolve_base_image(&images, &images.join("debian.qcow2")).is_ok());
        for outside in [
            PathBuf::from("../secret"),
            PathBuf::from("sub/debian.qcow2"),
            root.path().join("secret"),
            images.join("../secret"),
            PathBuf::from("link"),
            PathBuf::from("missing.qcow2"),
        ] {
            assert!(
                matches!(
                    resolve_base_image(&images, &outside),
                    Err(Error::InvalidSpec(_))
                ),
                "{} accepted",
                outside.display()
            );
        }
    }

    #[test]
    fn socket_paths_longer_than_a_sockaddr_are_refused() {
        let dir = PathBuf::from(format!("/{}", "d".repeat(70)));
        let path = agent_socket_path(&dir, Uuid::new_v4());
        assert!(matches!(validate_socket(&path), Err(Error::InvalidSpec(_))));
        assert!(validate_socket(&agent_socket_path(Path::new("/run/ib"), Uuid::new_v4())).is_ok());
    }

    #[test]
    fn only_sockets_are_removed_never_regular_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("vm-x.sock");
        std::fs::write(&file, b"not a socket").expect("write");
        let socket = dir.path().join("vnc-x.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
        let mut removed = Vec::new();
        remove_socket(&file, &mut removed).expect("file");
        remove_socket(&socket, &mut removed).expect("socket");
        remove_socket(&dir.path().join("missing"), &mut removed).expect("missing");
        assert!(file.exists());
        assert!(!socket.exists());
        assert_eq!(removed, vec![socket]);
    }

    #[test]
    fn libvirt_versions_read_as_dotted_triples() {
        assert_eq!(version_string(9_000_000), "9.0.0");
        assert_eq!(version_string(7_002_022), "7.2.22");
    }
}
