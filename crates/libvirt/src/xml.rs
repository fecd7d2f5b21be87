//! Domain XML: written with an XML writer (names come from users), read back for the paths
//! of a domain's agent channel, VNC socket and disks, and the daemon's capabilities.
//!
//! Only attributes and a few fixed texts are read, so the reader ignores everything else and
//! never needs a schema.

use std::path::{Path, PathBuf};

use quick_xml::Writer;
use quick_xml::events::{BytesStart, BytesText, Event};
use quick_xml::reader::Reader;
use uuid::Uuid;

use crate::error::{Error, Result};

/// Name of the virtio-serial port the guest agent opens (`/dev/virtio-ports/<name>`).
pub const AGENT_CHANNEL_NAME: &str = "org.infinibay.agent";
/// Name of qemu-ga's virtio-serial port.
pub const QEMU_GA_CHANNEL_NAME: &str = "org.qemu.guest_agent.0";

/// Everything the domain XML of `createVm` is built from (already validated).
#[derive(Debug, Clone)]
pub(crate) struct DomainDefinition<'a> {
    pub uuid: Uuid,
    pub name: &'a str,
    pub memory_mib: u64,
    pub vcpus: u32,
    /// `kvm` or `qemu` (TCG).
    pub domain_type: &'a str,
    pub kernel: Option<(&'a Path, &'a Path, &'a str)>,
    pub overlay: Option<&'a Path>,
    pub agent_socket: &'a Path,
    pub vnc_socket: &'a Path,
    pub serial_log: Option<&'a Path>,
}

/// A path as XML text: UTF-8 and without NUL (libvirt takes the XML as a C string).
fn utf8<'p>(what: &str, path: &'p Path) -> Result<&'p str> {
    match path.to_str() {
        Some(text) if !text.contains('\0') => Ok(text),
        Some(_) => Err(Error::InvalidSpec(format!(
            "{what} {} contains a NUL byte",
            path.display()
        ))),
        None => Err(Error::InvalidSpec(format!(
            "{what} {} is not UTF-8",
            path.display()
        ))),
    }
}

fn xml_io(e: std::io::Error) -> Error {
    Error::Xml(format!("writing XML: {e}"))
}

fn finish(writer: Writer<Vec<u8>>) -> Result<String> {
    String::from_utf8(writer.into_inner()).map_err(|e| Error::Xml(e.to_string()))
}

fn write_agent_channel(w: &mut Writer<Vec<u8>>, socket: &str) -> std::io::Result<()> {
    w.create_element("channel")
        .with_attribute(("type", "unix"))
        .write_inner_content(|w| {
            w.create_element("source")
                .with_attribute(("mode", "bind"))
                .with_attribute(("path", socket))
                .write_empty()?;
            w.create_element("target")
                .with_attribute(("type", "virtio"))
                .with_attribute(("name", AGENT_CHANNEL_NAME))
                .write_empty()?;
            Ok(())
        })?;
    Ok(())
}

/// The `<channel>` element that gives a domain the agent's port, bound at `socket` (the host's
/// `<socket_dir>/vm-<uuid>.sock`): what `infinibay channel-xml` prints for adopting an existing
/// domain, and what `attach_agent_channel` hot-plugs.
pub fn agent_channel_xml(socket: &Path) -> Result<String> {
    let socket = utf8("agent socket", socket)?;
    let mut w = Writer::new_with_indent(Vec::new(), b' ', 2);
    write_agent_channel(&mut w, socket).map_err(xml_io)?;
    finish(w)
}

/// The whole `<domain>` for `createVm`.
pub(crate) fn domain_xml(d: &DomainDefinition<'_>) -> Result<String> {
    let agent_socket = utf8("agent socket", d.agent_socket)?;
    let vnc_socket = utf8("VNC socket", d.vnc_socket)?;
    let kernel = match d.kernel {
        Some((kernel, initrd, cmdline)) => {
            Some((utf8("kernel", kernel)?, utf8("initrd", initrd)?, cmdline))
        }
        None => None,
    };
    let overlay = d.overlay.map(|p| utf8("disk", p)).transpose()?;
    let serial_log = d.serial_log.map(|p| utf8("serial log", p)).transpose()?;
    let uuid = d.uuid.to_string();
    let memory = d.memory_mib.to_string();
    let vcpus = d.vcpus.to_string();

    let mut w = Writer::new_with_indent(Vec::new(), b' ', 2);
    w.create_element("domain")
        .with_attribute(("type", d.domain_type))
        .write_inner_content(|w| {
            w.create_element("name")
                .write_text_content(BytesText::new(d.name))?;
            w.create_element("uuid")
                .write_text_content(BytesText::new(&uuid))?;
            w.create_element("memory")
                .with_attribute(("unit", "MiB"))
                .write_text_content(BytesText::new(&memory))?;
            w.create_element("currentMemory")
                .with_attribute(("unit", "MiB"))
                .write_text_content(BytesText::new(&memory))?;
            w.create_element("vcpu")
                .with_attribute(("placement", "static"))
                .write_text_content(BytesText::new(&vcpus))?;
            w.create_element("os").write_inner_content(|w| {
                w.create_element("type")
                    .with_attribute(("arch", "x86_64"))
                    .with_attribute(("machine", "q35"))
                    .write_text_content(BytesText::new("hvm"))?;
                if let Some((kernel, initrd, cmdline)) = kernel {
                    w.create_element("kernel")
                        .write_text_content(BytesText::new(kernel))?;
                    w.create_element("initrd")
                        .write_text_content(BytesText::new(initrd))?;
                    w.create_element("cmdline")
                        .write_text_content(BytesText::new(cmdline))?;
                } else {
                    w.create_element("boot")
                        .with_attribute(("dev", "hd"))
                        .write_empty()?;
                }
                Ok(())
            })?;
            // ACPI is what `shutdown` and `reboot` press the power button through.
            w.create_element("features").write_inner_content(|w| {
                w.create_element("acpi").write_empty()?;
                w.create_element("apic").write_empty()?;
                Ok(())
            })?;
            if d.domain_type == "kvm" {
                w.create_element("cpu")
                    .with_attribute(("mode", "host-passthrough"))
                    .write_empty()?;
            }
            w.create_element("clock")
                .with_attribute(("offset", "utc"))
                .write_empty()?;
            w.create_element("on_poweroff")
                .write_text_content(BytesText::new("destroy"))?;
            w.create_element("on_reboot")
                .write_text_content(BytesText::new("restart"))?;
            w.create_element("on_crash")
                .write_text_content(BytesText::new("destroy"))?;
            w.create_element("devices").write_inner_content(|w| {
                if let Some(overlay) = overlay {
                    w.create_element("disk")
                        .with_attribute(("type", "file"))
                        .with_attribute(("device", "disk"))
                        .write_inner_content(|w| {
                            w.create_element("driver")
                                .with_attribute(("name", "qemu"))
                                .with_attribute(("type", "qcow2"))
                                .write_empty()?;
                            w.create_element("source")
                                .with_attribute(("file", overlay))
                                .write_empty()?;
                            w.create_element("target")
                                .with_attribute(("dev", "vda"))
                                .with_attribute(("bus", "virtio"))
                                .write_empty()?;
                            Ok(())
                        })?;
                }
                w.create_element("controller")
                    .with_attribute(("type", "virtio-serial"))
                    .with_attribute(("index", "0"))
                    .write_empty()?;
                write_agent_channel(w, agent_socket)?;
                // No source path: libvirt binds qemu-ga's socket in its own channel directory,
                // where it connects to the agent itself (virsh domtime, guest-shutdown...).
                w.create_element("channel")
                    .with_attribute(("type", "unix"))
                    .write_inner_content(|w| {
                        w.create_element("target")
                            .with_attribute(("type", "virtio"))
                            .with_attribute(("name", QEMU_GA_CHANNEL_NAME))
                            .write_empty()?;
                        Ok(())
                    })?;
                w.create_element("graphics")
                    .with_attribute(("type", "vnc"))
                    .with_attribute(("socket", vnc_socket))
                    .write_empty()?;
                w.create_element("video").write_inner_content(|w| {
                    w.create_element("model")
                        .with_attribute(("type", "vga"))
                        .write_empty()?;
                    Ok(())
                })?;
                match serial_log {
                    Some(path) => {
                        w.create_element("serial")
                            .with_attribute(("type", "file"))
                            .write_inner_content(|w| {
                                w.create_element("source")
                                    .with_attribute(("path", path))
                                    .write_empty()?;
                                Ok(())
                            })?;
                    }
                    None => {
                        w.create_element("serial")
                            .with_attribute(("type", "pty"))
                            .write_empty()?;
                    }
                }
                Ok(())
            })?;
            Ok(())
        })
        .map_err(xml_io)?;
    finish(w)
}

/// What the host needs from a domain's XML.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct DomainFacts {
    /// Host side of the `org.infinibay.agent` channel, when it is a UNIX socket.
    pub agent_socket: Option<PathBuf>,
    /// The VNC server's UNIX socket, when VNC listens on one.
    pub vnc_socket: Option<PathBuf>,
    /// Files backing its disks.
    pub disk_files: Vec<PathBuf>,
    /// Whether it has a virtio-serial controller (a channel can be hot-plugged).
    pub has_virtio_serial: bool,
}

fn attr(element: &BytesStart<'_>, name: &str) -> Result<Option<String>> {
    match element.try_get_attribute(name) {
        Ok(Some(a)) => a
            .unescape_value()
            .map(|v| Some(v.into_owned()))
            .map_err(|e| Error::Xml(e.to_string())),
        Ok(None) => Ok(None),
        Err(e) => Err(Error::Xml(e.to_string())),
    }
}

/// Reads a domain's XML (live or inactive).
pub(crate) fn domain_facts(xml: &str) -> Result<DomainFacts> {
    let mut reader = Reader::from_str(xml);
    let mut facts = DomainFacts::default();
    // Element names from the root to the current one.
    let mut path: Vec<String> = Vec::new();
    // Inside a <channel>: its source path and target name so far.
    let mut channel: Option<(Option<String>, Option<String>)> = None;
    let mut in_vnc = false;
    loop {
        let event = reader
            .read_event()
            .map_err(|e| Error::Xml(format!("at byte {}: {e}", reader.error_position())))?;
        let (element, empty) = match &event {
            Event::Start(e) => (e, false),
            Event::Empty(e) => (e, true),
            Event::End(_) => {
                match path.pop().as_deref() {
                    Some("channel") => close_channel(&mut facts, channel.take()),
                    Some("graphics") => in_vnc = false,
                    _ => {}
                }
                continue;
            }
            Event::Eof => break,
            _ => continue,
        };
        let name = String::from_utf8_lossy(element.local_name().as_ref()).into_owned();
        let parent = path.last().map(String::as_str);
        match (parent, name.as_str()) {
            (Some("devices"), "channel") if attr(element, "type")?.as_deref() == Some("unix") => {
                channel = Some((None, None));
            }
            (Some("channel"), "source") => {
                if let Some(c) = channel.as_mut() {
                    c.0 = attr(element, "path")?;
                }
            }
            (Some("channel"), "target") => {
                if let Some(c) = channel.as_mut() {
                    c.1 = attr(element, "name")?;
                }
            }
            (Some("devices"), "graphics") if attr(element, "type")?.as_deref() == Some("vnc") => {
                if let Some(socket) = attr(element, "socket")? {
                    facts.vnc_socket = Some(PathBuf::from(socket));
                }
                in_vnc = true;
            }
            (Some("graphics"), "listen")
                if in_vnc && attr(element, "type")?.as_deref() == Some("socket") =>
            {
                if let Some(socket) = attr(element, "socket")? {
                    facts.vnc_socket = Some(PathBuf::from(socket));
                }
            }
            (Some("disk"), "source") => {
                if let Some(file) = attr(element, "file")? {
                    facts.disk_files.push(PathBuf::from(file));
                }
            }
            (Some("devices"), "controller")
                if attr(element, "type")?.as_deref() == Some("virtio-serial") =>
            {
                facts.has_virtio_serial = true;
            }
            _ => {}
        }
        if empty {
            match name.as_str() {
                "channel" => close_channel(&mut facts, channel.take()),
                "graphics" => in_vnc = false,
                _ => {}
            }
        } else {
            path.push(name);
        }
    }
    Ok(facts)
}

fn close_channel(facts: &mut DomainFacts, channel: Option<(Option<String>, Option<String>)>) {
    if let Some((Some(path), Some(name))) = channel {
        if name == AGENT_CHANNEL_NAME {
            facts.agent_socket = Some(PathBuf::from(path));
        }
    }
}

/// The domain types (`kvm`, `qemu`) the daemon offers for `hvm` guests of `arch`, from its
/// capabilities XML.
pub(crate) fn hvm_domain_types(capabilities: &str, arch: &str) -> Result<Vec<String>> {
    let mut reader = Reader::from_str(capabilities);
    let mut path: Vec<String> = Vec::new();
    let mut types = Vec::new();
    // Per <guest>: is it hvm, is it our arch, the domain types it lists.
    let mut guest_hvm = false;
    let mut guest_types: Vec<String> = Vec::new();
    let mut arch_matches = false;
    loop {
        let event = reader
            .read_event()
            .map_err(|e| Error::Xml(format!("capabilities: {e}")))?;
        match &event {
            Event::Start(e) | Event::Empty(e) => {
                let name = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                let parent = path.last().map(String::as_str);
                match (parent, name.as_str()) {
                    (Some("capabilities"), "guest") => {
                        guest_hvm = false;
                        guest_types.clear();
                    }
                    (Some("guest"), "arch") => {
                        arch_matches = attr(e, "name")?.as_deref() == Some(arch);
                    }
                    (Some("arch"), "domain") if arch_matches => {
                        if let Some(t) = attr(e, "type")? {
                            guest_types.push(t);
                        }
                    }
                    _ => {}
                }
                if matches!(event, Event::Start(_)) {
                    path.push(name);
                }
            }
            Event::Text(t) if path.last().map(String::as_str) == Some("os_type") => {
                let text = t.decode().map_err(|e| Error::Xml(e.to_string()))?;
                guest_hvm = text.trim() == "hvm";
            }
            Event::End(_) => {
                let closed = path.pop();
                if closed.as_deref() == Some("guest") && guest_hvm {
                    for t in guest_types.drain(..) {
                        if !types.contains(&t) {
                            types.push(t);
                        }
                    }
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    Ok(types)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn definition<'a>(name: &'a str, agent: &'a Path, vnc: &'a Path) -> DomainDefinition<'a> {
        DomainDefinition {
            uuid: Uuid::from_u128(0x5f0c_1234),
            name,
            memory_mib: 256,
            vcpus: 1,
            domain_type: "qemu",
            kernel: None,
            overlay: None,
            agent_socket: agent,
            vnc_socket: vnc,
            serial_log: None,
        }
    }

    #[test]
    fn a_hostile_name_is_escaped_and_reads_back_unchanged() {
        let name = r#"lab </name><devices/> & 'quotes' "too""#;
        let agent = Path::new("/s/vm-x.sock");
        let vnc = Path::new("/s/vnc-x.sock");
        let xml = domain_xml(&definition(name, agent, vnc)).expect("xml");
        assert!(!xml.contains("</name><devices/>"), "{xml}");
        // Read the name back the way libvirt would: the text of <domain><name>.
        let mut reader = Reader::from_str(&xml);
        let mut in_name = false;
        let mut read = String::new();
        loop {
            match reader.read_event().expect("well-formed") {
                Event::Start(e) if e.local_name().as_ref() == b"name" => in_name = true,
                Event::End(e) if e.local_name().as_ref() == b"name" => in_name = false,
                Event::Text(t) if in_name => read.push_str(&t.decode().expect("utf8")),
                Event::GeneralRef(r) if in_name => {
                    let entity = r.decode().expect("utf8");
                    let resolved = quick_xml::escape::resolve_xml_entity(&entity)
                        .unwrap_or_else(|| panic!("unknown entity {entity}"));
                    read.push_str(resolved);
                }
                Event::Eof => break,
                _ => {}
            }
        }
        assert_eq!(read, name);
    }

    #[test]
    fn every_created_domain_has_the_agent_channel_qemu_ga_and_vnc_on_the_socket_dir() {
        let agent = Path::new("/srv/sockets/vm-1.sock");
        let vnc = Path::new("/srv/sockets/vnc-1.sock");
        let overlay = Path::new("/srv/images/vm-1.qcow2");
        let mut d = definition("a", agent, vnc);
        d.overlay = Some(overlay);
        let xml = domain_xml(&d).expect("xml");
        let facts = domain_facts(&xml).expect("facts");
        assert_eq!(facts.agent_socket.as_deref(), Some(agent));
        assert_eq!(facts.vnc_socket.as_deref(), Some(vnc));
        assert_eq!(facts.disk_files, vec![overlay.to_path_buf()]);
        assert!(facts.has_virtio_serial);
        assert!(xml.contains(QEMU_GA_CHANNEL_NAME), "{xml}");
        assert!(xml.contains("<acpi/>"), "{xml}");
    }

    #[test]
    fn kernel_boot_writes_kernel_initrd_and_cmdline_instead_of_a_boot_disk() {
        let agent = Path::new("/s/vm.sock");
        let vnc = Path::new("/s/vnc.sock");
        let mut d = definition("k", agent, vnc);
        d.kernel = Some((
            Path::new("/b/vmlinuz"),
            Path::new("/b/initrd"),
            "console=ttyS0 a=b",
        ));
        let xml = domain_xml(&d).expect("xml");
        assert!(xml.contains("<kernel>/b/vmlinuz</kernel>"), "{xml}");
        assert!(xml.contains("<initrd>/b/initrd</initrd>"), "{xml}");
        assert!(
            xml.contains("<cmdline>console=ttyS0 a=b</cmdline>"),
            "{xml}"
        );
        assert!(!xml.contains("<boot "), "{xml}");
    }

    #[test]
    fn kvm_domains_pass_the_host_cpu_through_and_tcg_domains_do_not() {
        let (agent, vnc) = (Path::new("/s/a"), Path::new("/s/v"));
        let mut d = definition("c", agent, vnc);
        assert!(!domain_xml(&d).expect("xml").contains("host-passthrough"));
        d.domain_type = "kvm";
        let xml = domain_xml(&d).expect("xml");
        assert!(xml.starts_with("<domain type=\"kvm\">"), "{xml}");
        assert!(xml.contains("host-passthrough"), "{xml}");
    }

    #[test]
    fn the_channel_xml_for_adoption_names_the_port_and_binds_the_socket() {
        let xml = agent_channel_xml(Path::new("/opt/infinibay/sockets/vm-u.sock")).expect("xml");
        let wrapped = format!("<domain><devices>{xml}</devices></domain>");
        let facts = domain_facts(&wrapped).expect("facts");
        assert_eq!(
            facts.agent_socket.as_deref(),
            Some(Path::new("/opt/infinibay/sockets/vm-u.sock"))
        );
        assert!(xml.contains("mode=\"bind\""), "{xml}");
    }

    #[test]
    fn live_xml_with_the_vnc_socket_on_a_listen_element_is_read() {
        // What libvirt 9 returns for a running domain (abridged).
        let xml = r#"<domain type='qemu' id='3'><name>t1</name><devices>
            <channel type='unix'>
              <source mode='bind' path='/tmp/s/vm-f2.sock'/>
              <target type='virtio' name='org.infinibay.agent' state='connected'/>
              <alias name='channel0'/>
            </channel>
            <channel type='unix'>
              <source mode='bind' path='/var/lib/libvirt/qemu/channel/target/domain-3-t1/org.qemu.guest_agent.0'/>
              <target type='virtio' name='org.qemu.guest_agent.0' state='disconnected'/>
            </channel>
            <channel type='spicevmc'><target type='virtio' name='com.redhat.spice.0'/></channel>
            <graphics type='vnc'>
              <listen type='socket' socket='/tmp/s/vnc-f2.sock'/>
            </graphics>
          </devices></domain>"#;
        let facts = domain_facts(xml).expect("facts");
        assert_eq!(
            facts.agent_socket.as_deref(),
            Some(Path::new("/tmp/s/vm-f2.sock"))
        );
        assert_eq!(
            facts.vnc_socket.as_deref(),
            Some(Path::new("/tmp/s/vnc-f2.sock"))
        );
        assert!(!facts.has_virtio_serial);
    }

    #[test]
    fn a_domain_without_our_channel_or_vnc_has_neither() {
        let xml = "<domain><devices><graphics type='spice' autoport='yes'/>\
                   <channel type='pty'><target type='virtio' name='org.infinibay.agent'/></channel>\
                   </devices></domain>";
        let facts = domain_facts(xml).expect("facts");
        assert_eq!(facts.agent_socket, None);
        assert_eq!(facts.vnc_socket, None);
    }

    #[test]
    fn capabilities_offer_kvm_only_where_the_daemon_lists_it() {
        let tcg_only = "<capabilities><host/>\
            <guest><os_type>hvm</os_type><arch name='i686'><domain type='qemu'/><domain type='kvm'/></arch></guest>\
            <guest><os_type>hvm</os_type><arch name='x86_64'><wordsize>64</wordsize><domain type='qemu'/></arch></guest>\
            </capabilities>";
        assert_eq!(
            hvm_domain_types(tcg_only, "x86_64").expect("caps"),
            ["qemu"]
        );
        let with_kvm = "<capabilities><guest><os_type>hvm</os_type><arch name='x86_64'>\
            <domain type='qemu'/><domain type='kvm'/></arch></guest></capabilities>";
        assert_eq!(
            hvm_domain_types(with_kvm, "x86_64").expect("caps"),
            ["qemu", "kvm"]
        );
        let xen_pv = "<capabilities><guest><os_type>xen</os_type><arch name='x86_64'>\
            <domain type='xen'/></arch></guest></capabilities>";
        assert!(hvm_domain_types(xen_pv, "x86_64").expect("caps").is_empty());
    }

    #[test]
    fn a_path_that_is_not_utf8_or_holds_a_nul_is_refused_not_mangled() {
        use std::os::unix::ffi::OsStrExt;
        let bad = Path::new(std::ffi::OsStr::from_bytes(b"/s/\xff.sock"));
        assert!(matches!(agent_channel_xml(bad), Err(Error::InvalidSpec(_))));
        let nul = Path::new("/s/a\0b.sock");
        assert!(matches!(agent_channel_xml(nul), Err(Error::InvalidSpec(_))));
    }
}
