//! Where this host finds a VM's VNC server, for the console's gate (`docs/console.md`).
//!
//! Without libvirt the host knows one place: `vnc-<uuid>.sock` in the socket directory, next to
//! the agent's `vm-<uuid>.sock` (what `createVm`'s domain XML and the e2e guest use). Whether
//! QEMU listens there is found out by connecting: no file → 4404, nobody listening → 4409.
//! With libvirt wired in (issue 16), its power state and the domain XML's `<graphics>` can
//! answer before that: a [`VncLocator`] of its own.

use std::path::PathBuf;

use async_trait::async_trait;
use infinibay_api::console::VncLocator;
use infinibay_console::{GateRefusal, VncEndpoint};
use infinibay_store::VmRecord;
use uuid::Uuid;

/// VNC sockets in the socket directory.
#[derive(Debug, Clone)]
pub struct SocketDirVnc {
    socket_dir: PathBuf,
}

impl SocketDirVnc {
    /// VNC sockets in `socket_dir`.
    pub fn new(socket_dir: PathBuf) -> Self {
        Self { socket_dir }
    }
}

#[async_trait]
impl VncLocator for SocketDirVnc {
    async fn locate(&self, vm: &VmRecord) -> Result<VncEndpoint, GateRefusal> {
        // Only a uuid names a socket: an id that is not one cannot escape the directory.
        let uuid = Uuid::parse_str(&vm.id).map_err(|_| GateRefusal::NoConsole)?;
        Ok(VncEndpoint::Unix(infinibay_libvirt::vnc_socket_path(
            &self.socket_dir,
            uuid,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(id: &str) -> VmRecord {
        VmRecord {
            id: id.into(),
            name: id.into(),
            owner_id: None,
            department: None,
            status: infinibay_store::VmStatus::Online,
            last_seen: None,
            agent: None,
            created_at: chrono::Utc::now(),
        }
    }

    #[tokio::test]
    async fn a_uuid_names_its_socket_in_the_directory_anything_else_has_no_console() {
        let vnc = SocketDirVnc::new(PathBuf::from("/run/infinibay"));
        let id = "8d2c6a4e-1f0b-4c7a-9e51-2b3c4d5e6f70";
        assert_eq!(
            vnc.locate(&vm(id)).await,
            Ok(VncEndpoint::Unix(PathBuf::from(format!(
                "/run/infinibay/vnc-{id}.sock"
            ))))
        );
        for bad in ["", "..", "../etc", "a/b", "not-a-uuid"] {
            assert_eq!(
                vnc.locate(&vm(bad)).await,
                Err(GateRefusal::NoConsole),
                "{bad:?}"
            );
        }
    }
}
