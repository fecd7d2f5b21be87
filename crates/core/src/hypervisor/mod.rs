//! The VMs in the hypervisor: libvirt's events applied to the registry ([`watch`]), and the
//! lifecycle operations the API asks for through `VmControl` — `createVm`, power actions,
//! adopting a domain, deleting a VM — each logged like a command.
//!
//! libvirt is optional: without it (`libvirt = "none"`, or a daemon that cannot be reached)
//! every VM's power state is `UNKNOWN`, the operations answer
//! [`LifecycleError::Unavailable`] at once, and deleting a VM libvirt never reported only
//! forgets it, as before libvirt existed.

mod watch;

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;

use infinibay_control::lifecycle::{
    ActionPath, ChannelAttached, CreateVmSpec, DeleteOutcome, HypervisorInfo, HypervisorState,
    LifecycleError, PowerAction, PowerOutcome, PowerState,
};
use infinibay_control::vm::VmSnapshot;
use infinibay_libvirt::{ConnectionStatus, KernelBoot, Libvirt, LibvirtConfig, VmSpec};
use infinibay_protocol::message::SafeAction;
use infinibay_store::{NameSource, Store, VmStatus};

use crate::commands::{ActionLog, CommandCenter};
use crate::config::secs;
use crate::shared::Shared;

pub(crate) use watch::vm_id;

const TARGET: &str = "infinibay::lifecycle";

/// How long a shutdown waits for the agent's answer before pressing the ACPI button instead
/// (the agent answers first and powers off 2 s later).
const AGENT_SHUTDOWN_WAIT: Duration = Duration::from_secs(10);

/// The power state the host shows for libvirt's.
pub(crate) fn power_state(state: infinibay_libvirt::PowerState) -> PowerState {
    use infinibay_libvirt::PowerState as L;
    match state {
        L::Running => PowerState::Running,
        L::Paused => PowerState::Paused,
        L::Shutoff => PowerState::Shutoff,
        L::Crashed => PowerState::Crashed,
        L::Unknown => PowerState::Unknown,
    }
}

/// What a libvirt error means for the caller (each with its stable code).
fn lifecycle_error(error: infinibay_libvirt::Error, vm: &str) -> LifecycleError {
    use infinibay_libvirt::Error as E;
    match error {
        E::Unreachable { uri, reason } => LifecycleError::Unavailable(format!("{uri}: {reason}")),
        E::NoSuchDomain { .. } => LifecycleError::NoDomain(vm.to_owned()),
        E::AlreadyRunning { .. } => LifecycleError::AlreadyRunning(vm.to_owned()),
        E::NotRunning { operation, .. } => LifecycleError::NotRunning {
            vm: vm.to_owned(),
            action: operation.to_string(),
        },
        E::InvalidState {
            operation, state, ..
        } => LifecycleError::InvalidState {
            vm: vm.to_owned(),
            action: operation.to_string(),
            state: power_state(state),
        },
        e @ E::AlreadyExists { .. } => LifecycleError::AlreadyExists(e.to_string()),
        E::InvalidSpec(message) => LifecycleError::Invalid(message),
        e @ E::Timeout { .. } => LifecycleError::Timeout(e.to_string()),
        other => LifecycleError::Failed(other.to_string()),
    }
}

/// Which VMs run, for the alert engine: libvirt's power state of each (`None` for a VM libvirt
/// does not know, or while it is unreachable: the engine then goes by the socket file).
struct PowerStates(Arc<crate::registry::Registry>);

impl crate::alerts::PowerState for PowerStates {
    fn is_running(&self, vm_id: &str) -> Option<bool> {
        self.0
            .get(vm_id)
            .and_then(|vm| vm.power_state().is_running())
    }
}

/// The lifecycle side of the core. Cheap to share.
pub(crate) struct Lifecycle {
    shared: Arc<Shared>,
    store: Arc<dyn Store>,
    commands: CommandCenter,
    /// `None` when libvirt is turned off.
    libvirt: Option<Libvirt>,
}

impl Lifecycle {
    /// Connects to libvirt in the background (when configured) and starts the watch that
    /// applies its events; it stops with the host.
    pub(crate) fn start(
        shared: Arc<Shared>,
        store: Arc<dyn Store>,
        commands: CommandCenter,
    ) -> Self {
        let config = &shared.config;
        let libvirt = match config.libvirt_uri() {
            None => {
                tracing::info!(target: "infinibay::libvirt",
                    "libvirt turned off (libvirt = \"none\"): socket discovery only, power states UNKNOWN");
                None
            }
            Some(uri) => {
                let settings =
                    LibvirtConfig::new(uri, config.socket_dir.clone(), config.image_dir.clone());
                match Libvirt::start(settings) {
                    Ok((libvirt, events)) => {
                        tracing::info!(target: "infinibay::libvirt", %uri,
                            "connecting to libvirt in the background (the host runs without it meanwhile)");
                        // "Agent offline while the VM is running" asks libvirt's power state.
                        shared
                            .alerts
                            .set_power_state(Arc::new(PowerStates(shared.registry.clone())));
                        let watch = watch::Watch {
                            shared: shared.clone(),
                            store: store.clone(),
                            libvirt: libvirt.clone(),
                        };
                        shared.tasks.spawn(watch.run(events));
                        Some(libvirt)
                    }
                    Err(e) => {
                        tracing::error!(target: "infinibay::libvirt", %uri,
                            "cannot start the libvirt connection ({e}); running on socket discovery alone");
                        None
                    }
                }
            }
        };
        Self {
            shared,
            store,
            commands,
            libvirt,
        }
    }

    /// The connection, or why there is none.
    fn libvirt(&self) -> Result<&Libvirt, LifecycleError> {
        let Some(libvirt) = &self.libvirt else {
            return Err(LifecycleError::Unavailable(
                "libvirt is turned off on this host (libvirt = \"none\")".into(),
            ));
        };
        match libvirt.status() {
            ConnectionStatus::Connected => Ok(libvirt),
            ConnectionStatus::Connecting => Err(LifecycleError::Unavailable(format!(
                "{}: not connected yet",
                libvirt.config().uri
            ))),
            ConnectionStatus::Disconnected { reason, .. } => Err(LifecycleError::Unavailable(
                format!("{}: {reason}", libvirt.config().uri),
            )),
        }
    }

    /// Whether libvirt is reachable (from memory).
    pub(crate) fn state(&self) -> HypervisorState {
        match &self.libvirt {
            None => HypervisorState::Disabled,
            Some(libvirt) => {
                let uri = libvirt.config().uri.clone();
                match libvirt.status() {
                    ConnectionStatus::Connecting => HypervisorState::Connecting { uri },
                    ConnectionStatus::Connected => HypervisorState::Connected { uri },
                    ConnectionStatus::Disconnected { reason, .. } => {
                        HypervisorState::Disconnected { uri, reason }
                    }
                }
            }
        }
    }

    /// Whether libvirt is reachable, and the base images in the image directory.
    pub(crate) async fn hypervisor(&self) -> HypervisorInfo {
        let state = self.state();
        let base_images = if self.libvirt.is_some() {
            let dir = self.shared.config.image_dir.clone();
            tokio::task::spawn_blocking(move || base_images(&dir))
                .await
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        HypervisorInfo { state, base_images }
    }

    /// `createVm`: the domain, then the VM's record (named as asked), logged under the new VM.
    pub(crate) async fn create_vm(
        &self,
        spec: CreateVmSpec,
        issued_by: Option<i64>,
    ) -> Result<VmSnapshot, LifecycleError> {
        let request = serde_json::to_value(&spec).unwrap_or(Value::Null);
        let uuid = match &spec.id {
            Some(id) => Uuid::parse_str(id)
                .map_err(|_| LifecycleError::Invalid(format!("`{id}` is not a UUID")))?,
            None => Uuid::new_v4(),
        };
        let id = vm_id(uuid);
        let log = ActionLog::new(&id, issued_by, "createVm", request);
        let result = self.create_domain(uuid, &id, spec).await;
        match &result {
            Ok(_) => self
                .commands
                .record_action(&log, Ok(json!({ "created": id }))),
            Err(e) => self.commands.record_action(&log, Err(e)),
        }
        result
    }

    async fn create_domain(
        &self,
        uuid: Uuid,
        id: &str,
        spec: CreateVmSpec,
    ) -> Result<VmSnapshot, LifecycleError> {
        let libvirt = self.libvirt()?;
        if self.shared.registry.get(id).is_some() {
            return Err(LifecycleError::AlreadyExists(format!(
                "a VM with id {id} already exists"
            )));
        }
        let image_dir = &self.shared.config.image_dir;
        let kernel = match &spec.kernel {
            None => None,
            Some(k) => Some(KernelBoot {
                kernel: image_file(image_dir, "kernel", &k.kernel)?,
                initrd: image_file(image_dir, "initrd", &k.initrd)?,
                cmdline: k.cmdline.clone(),
            }),
        };
        let info = libvirt
            .create_vm(VmSpec {
                uuid: Some(uuid),
                name: spec.name.clone(),
                memory_mib: spec.memory_mib,
                vcpus: spec.vcpus,
                base_image: spec.base_image.as_ref().map(PathBuf::from),
                kernel,
                accel: Default::default(),
                serial_log: None,
                start: spec.start,
            })
            .await
            .map_err(|e| lifecycle_error(e, id))?;
        let socket = info.agent_socket.clone().unwrap_or_else(|| {
            infinibay_libvirt::agent_socket_path(&self.shared.config.socket_dir, uuid)
        });
        let (vm, _) = self.shared.registry.get_or_insert_domain(id, socket);
        vm.set_domain(&info.name, power_state(info.power_state));
        // The record exists before this returns: the caller sets its owner next.
        let now = chrono::Utc::now();
        self.store
            .upsert_vms(&[(id.to_owned(), now)])
            .await
            .map_err(|e| LifecycleError::Storage(e.to_string()))?;
        self.store
            .set_vm_names(&[(id.to_owned(), spec.name)], NameSource::Person)
            .await
            .map_err(|e| LifecycleError::Storage(e.to_string()))?;
        Ok(vm.snapshot())
    }

    /// A power action, logged under the VM.
    pub(crate) async fn power(
        &self,
        vm: &str,
        action: PowerAction,
        issued_by: Option<i64>,
    ) -> Result<PowerOutcome, LifecycleError> {
        let log = ActionLog::new(vm, issued_by, action.as_str(), Value::Null);
        let result = self.power_now(vm, action, issued_by).await;
        match &result {
            Ok(done) => self.commands.record_action(
                &log,
                Ok(json!({ "via": done.via.as_str(), "powerState": done.power_state })),
            ),
            Err(e) => self.commands.record_action(&log, Err(e)),
        }
        result
    }

    async fn power_now(
        &self,
        vm: &str,
        action: PowerAction,
        issued_by: Option<i64>,
    ) -> Result<PowerOutcome, LifecycleError> {
        let entry = self
            .shared
            .registry
            .get(vm)
            .ok_or_else(|| LifecycleError::UnknownVm(vm.to_owned()))?;
        if action == PowerAction::Shutdown {
            if entry.has_domain() {
                // The usual mistakes answered from what libvirt last said (it checks again).
                match entry.power_state() {
                    PowerState::Paused => {
                        return Err(LifecycleError::InvalidState {
                            vm: vm.to_owned(),
                            action: "shut down".into(),
                            state: PowerState::Paused,
                        });
                    }
                    PowerState::Shutoff | PowerState::Crashed => {
                        return Err(LifecycleError::NotRunning {
                            vm: vm.to_owned(),
                            action: "shut down".into(),
                        });
                    }
                    PowerState::Running | PowerState::Unknown => {}
                }
            }
            let online = {
                let live = entry.live();
                live.status == VmStatus::Online && live.outbound.is_some()
            };
            if online && self.shutdown_through_agent(vm, issued_by).await {
                return Ok(PowerOutcome {
                    action,
                    via: ActionPath::Agent,
                    power_state: entry.power_state(),
                });
            }
        }
        let libvirt = self.libvirt()?;
        let uuid = Uuid::parse_str(vm).map_err(|_| LifecycleError::NoDomain(vm.to_owned()))?;
        let done = match action {
            PowerAction::PowerOn => libvirt.power_on(uuid).await,
            PowerAction::Shutdown => libvirt.shutdown(uuid).await,
            PowerAction::PowerOff => libvirt.power_off(uuid).await,
            PowerAction::Reboot => libvirt.reboot(uuid).await,
            PowerAction::Suspend => libvirt.suspend(uuid).await,
            PowerAction::Resume => libvirt.resume(uuid).await,
        };
        done.map_err(|e| lifecycle_error(e, vm))?;
        // The state right after the call (the event that reports it may still be on its way).
        let power_state = match libvirt.domain(uuid).await {
            Ok(info) => power_state(info.power_state),
            Err(_) => entry.power_state(),
        };
        let via = match action {
            PowerAction::Shutdown | PowerAction::Reboot => ActionPath::Acpi,
            _ => ActionPath::Libvirt,
        };
        Ok(PowerOutcome {
            action,
            via,
            power_state,
        })
    }

    /// Our agent's `Shutdown` (a command like any other, logged as such). `false` when it did
    /// not accept: the caller presses the ACPI button instead.
    async fn shutdown_through_agent(&self, vm: &str, issued_by: Option<i64>) -> bool {
        let pending = match self
            .commands
            .start(vm, SafeAction::Shutdown.into(), issued_by)
        {
            Ok(pending) => pending,
            Err(e) => {
                tracing::info!(target: TARGET, vm, "agent cannot take the shutdown ({e}); using ACPI");
                return false;
            }
        };
        match pending.wait(Some(AGENT_SHUTDOWN_WAIT)).await {
            Ok(response) if response.success => true,
            Ok(response) => {
                let why = response
                    .error
                    .map(|e| e.message)
                    .unwrap_or_else(|| "no reason given".into());
                tracing::info!(target: TARGET, vm, "the agent refused the shutdown ({why}); using ACPI");
                false
            }
            Err(e) => {
                tracing::info!(target: TARGET, vm, "no answer to the agent shutdown ({e}); using ACPI");
                false
            }
        }
    }

    /// Adopt a domain: hot-plug the agent channel, logged under the VM.
    pub(crate) async fn attach_agent_channel(
        &self,
        vm: &str,
        issued_by: Option<i64>,
    ) -> Result<ChannelAttached, LifecycleError> {
        let log = ActionLog::new(vm, issued_by, "attachAgentChannel", Value::Null);
        let result = self.attach_now(vm).await;
        match &result {
            Ok(done) => self
                .commands
                .record_action(&log, Ok(serde_json::to_value(done).unwrap_or(Value::Null))),
            Err(e) => self.commands.record_action(&log, Err(e)),
        }
        result
    }

    async fn attach_now(&self, vm: &str) -> Result<ChannelAttached, LifecycleError> {
        if self.shared.registry.get(vm).is_none() {
            return Err(LifecycleError::UnknownVm(vm.to_owned()));
        }
        let libvirt = self.libvirt()?;
        let uuid = Uuid::parse_str(vm).map_err(|_| LifecycleError::NoDomain(vm.to_owned()))?;
        let outcome = libvirt
            .attach_agent_channel(uuid)
            .await
            .map_err(|e| lifecycle_error(e, vm))?;
        Ok(ChannelAttached {
            socket: outcome.socket.display().to_string(),
            attached_live: outcome.attached_live,
            attached_config: outcome.attached_config,
        })
    }

    /// `deleteVm`: the domain (when libvirt has one), then the VM. A failure is logged under
    /// the VM, which still exists; a success is logged by the host's log line only, since the
    /// command log goes with the VM.
    pub(crate) async fn delete_vm(
        &self,
        vm: &str,
        issued_by: Option<i64>,
    ) -> Result<DeleteOutcome, LifecycleError> {
        let log = ActionLog::new(vm, issued_by, "deleteVm", Value::Null);
        let result = self.delete_now(vm).await;
        match &result {
            Ok(done) => tracing::info!(target: TARGET, vm, user = ?issued_by,
                had_domain = done.had_domain, destroyed = done.destroyed,
                removed_files = ?done.removed_files, "deleteVm done"),
            Err(e) => self.commands.record_action(&log, Err(e)),
        }
        result
    }

    async fn delete_now(&self, vm: &str) -> Result<DeleteOutcome, LifecycleError> {
        let entry = self.shared.registry.get(vm);
        let had_domain = entry.as_ref().is_some_and(|e| e.has_domain());
        let mut outcome = DeleteOutcome {
            known: entry.is_some(),
            ..DeleteOutcome::default()
        };
        if let (Some(libvirt), Ok(uuid)) = (&self.libvirt, Uuid::parse_str(vm)) {
            match libvirt.delete_vm(uuid).await {
                Ok(report) => {
                    outcome.had_domain = true;
                    outcome.destroyed = report.destroyed;
                    outcome.undefined = report.undefined;
                    outcome.removed_files = report
                        .removed_files
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect();
                }
                Err(infinibay_libvirt::Error::NoSuchDomain { .. }) => {}
                // libvirt never reported a domain for it: a VM of sockets alone is forgotten.
                Err(infinibay_libvirt::Error::Unreachable { .. }) if !had_domain => {}
                Err(e) => return Err(lifecycle_error(e, vm)),
            }
        }
        self.forget(vm)
            .await
            .map_err(|e| LifecycleError::Storage(e.to_string()))?;
        Ok(outcome)
    }

    /// The VM leaves the registry now, its connection closes at the next directory scan
    /// (≤ `discovery.rescan_interval_secs`) and its socket is ignored until the file goes
    /// away; its record and data are deleted from the store now, and once more after that
    /// scan, because samples read or queued before the connection closed would register it
    /// again.
    async fn forget(&self, vm: &str) -> Result<(), infinibay_store::StoreError> {
        // A socket of a VM libvirt did not own (libvirt's delete removed its own) goes too.
        let socket = self
            .shared
            .registry
            .get(vm)
            .map(|entry| entry.socket_path());
        self.shared.registry.forget(vm);
        self.shared.telemetry.forget(vm);
        if let Some(path) = socket {
            crate::handle::remove_socket(vm, &path);
        }
        self.store.delete_vm(vm).await.or_else(|e| match e {
            // Known to the core but not stored yet (its registration is still queued).
            infinibay_store::StoreError::NotFound(_) => Ok(()),
            other => Err(other),
        })?;
        let after = secs(self.shared.config.discovery.rescan_interval_secs.max(0.1))
            + Duration::from_secs(2);
        let (store, id, stop) = (
            self.store.clone(),
            vm.to_owned(),
            self.shared.shutdown.clone(),
        );
        self.shared.tasks.spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(after) => {
                    match store.delete_vm(&id).await {
                        Ok(()) | Err(infinibay_store::StoreError::NotFound(_)) => {}
                        Err(e) => tracing::warn!(target: "infinibay::store", vm = %id,
                            "second delete of a deleted VM failed: {e}"),
                    }
                }
                _ = stop.cancelled() => {}
            }
        });
        Ok(())
    }
}

/// A file `createVm` may boot: inside the image directory (a file name there, or an absolute
/// path that stays inside after resolving symlinks and `..`), so that a user cannot have
/// QEMU read any other file of the host.
fn image_file(image_dir: &Path, what: &str, name: &str) -> Result<PathBuf, LifecycleError> {
    let invalid = |why: String| LifecycleError::Invalid(format!("{what} {name:?}: {why}"));
    let given = Path::new(name);
    let candidate = if given.is_absolute() {
        given.to_path_buf()
    } else {
        let mut parts = given.components();
        match (parts.next(), parts.next()) {
            (Some(Component::Normal(_)), None) => image_dir.join(given),
            _ => return Err(invalid("must be a file name in the image directory".into())),
        }
    };
    let dir = image_dir
        .canonicalize()
        .map_err(|e| invalid(format!("image directory {}: {e}", image_dir.display())))?;
    let resolved = candidate
        .canonicalize()
        .map_err(|e| invalid(e.to_string()))?;
    if !resolved.starts_with(&dir) || !resolved.is_file() {
        return Err(invalid(format!(
            "not a file in the image directory {}",
            image_dir.display()
        )));
    }
    Ok(resolved)
}

/// The qcow2 files of the image directory a VM can be created from: every `*.qcow2` but the
/// overlays `createVm` makes (`vm-<uuid>.qcow2`), sorted.
fn base_images(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file() || t.is_symlink()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| name.ends_with(".qcow2") && !is_overlay(name))
        .collect();
    names.sort();
    names
}

fn is_overlay(name: &str) -> bool {
    name.strip_prefix("vm-")
        .and_then(|r| r.strip_suffix(".qcow2"))
        .is_some_and(|uuid| Uuid::parse_str(uuid).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_and_initrds_must_be_files_of_the_image_directory() {
        let root = tempfile::tempdir().expect("tempdir");
        let images = root.path().join("images");
        std::fs::create_dir(&images).expect("mkdir");
        std::fs::write(images.join("vmlinuz"), b"k").expect("write");
        std::fs::write(root.path().join("shadow"), b"secret").expect("write");
        std::os::unix::fs::symlink(root.path().join("shadow"), images.join("link"))
            .expect("symlink");
        assert!(image_file(&images, "kernel", "vmlinuz").is_ok());
        let inside = images.join("vmlinuz").display().to_string();
        assert!(image_file(&images, "kernel", &inside).is_ok());
        let outside = root.path().join("shadow").display().to_string();
        let escape = images.join("../shadow").display().to_string();
        for bad in [
            "../shadow",
            "sub/vmlinuz",
            "link",
            "missing",
            outside.as_str(),
            escape.as_str(),
            "/etc/shadow",
        ] {
            let refused = image_file(&images, "kernel", bad);
            assert!(
                matches!(refused, Err(LifecycleError::Invalid(_))),
                "{bad}: {refused:?}"
            );
        }
    }

    #[test]
    fn base_images_are_the_qcow2_files_but_not_the_overlays() {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in [
            "debian.qcow2",
            "alpine.qcow2",
            "notes.txt",
            &format!("vm-{}.qcow2", Uuid::new_v4()),
            "vm-template.qcow2",
        ] {
            std::fs::write(dir.path().join(name), b"x").expect("write");
        }
        std::fs::create_dir(dir.path().join("dir.qcow2")).expect("mkdir");
        assert_eq!(
            base_images(dir.path()),
            ["alpine.qcow2", "debian.qcow2", "vm-template.qcow2"]
        );
        assert!(base_images(&dir.path().join("missing")).is_empty());
    }

    #[test]
    fn libvirt_refusals_keep_their_meaning_and_code() {
        use infinibay_libvirt::{Error as E, Operation, PowerState as L};
        let uuid = Uuid::new_v4();
        let vm = "vm";
        let cases = [
            (
                E::Unreachable {
                    uri: "qemu:///system".into(),
                    reason: "No such file".into(),
                },
                "LIBVIRT_UNAVAILABLE",
            ),
            (E::NoSuchDomain { uuid }, "NO_DOMAIN"),
            (E::AlreadyRunning { uuid }, "ALREADY_RUNNING"),
            (
                E::NotRunning {
                    uuid,
                    operation: Operation::Suspend,
                },
                "NOT_RUNNING",
            ),
            (
                E::InvalidState {
                    uuid,
                    operation: Operation::Resume,
                    state: L::Running,
                },
                "INVALID_STATE",
            ),
            (E::InvalidSpec("bad".into()), "INVALID"),
            (
                E::Timeout {
                    operation: Operation::PowerOn,
                    after: Duration::from_secs(30),
                },
                "TIMEOUT",
            ),
            (E::Internal("x".into()), "LIBVIRT_ERROR"),
        ];
        for (error, code) in cases {
            let text = error.to_string();
            let mapped = lifecycle_error(error, vm);
            assert_eq!(mapped.code(), code, "{text} → {mapped:?}");
        }
    }
}
