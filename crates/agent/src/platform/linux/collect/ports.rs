//! Listening sockets from `/proc/net/{tcp,tcp6,udp,udp6}`, owners from `/proc/<pid>/fd`.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use infinibay_protocol::message::PortInfo;

/// `TCP_LISTEN` in the `st` column.
const TCP_LISTEN: u8 = 0x0A;
/// `TCP_CLOSE`: for UDP, a bound socket with no connected peer.
const UDP_UNCONNECTED: u8 = 0x07;

/// A listening socket before its owner is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Listener {
    pub protocol: &'static str,
    pub address: IpAddr,
    pub port: u16,
    pub inode: u64,
}

/// Parses one of the `/proc/net` socket tables and keeps listening TCP (`0A`) or unconnected
/// UDP (`07`) sockets. Addresses are hex words in the kernel's (host) byte order.
pub(crate) fn parse_socket_table(text: &str, protocol: &'static str) -> Vec<Listener> {
    let wanted = if protocol == "tcp" {
        TCP_LISTEN
    } else {
        UDP_UNCONNECTED
    };
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_ascii_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
            let (local, state, inode) = (fields.get(1)?, fields.get(3)?, fields.get(9)?);
            if u8::from_str_radix(state, 16).ok()? != wanted {
                return None;
            }
            let (hex_address, hex_port) = local.split_once(':')?;
            Some(Listener {
                protocol,
                address: parse_hex_address(hex_address)?,
                port: u16::from_str_radix(hex_port, 16).ok()?,
                inode: inode.parse().ok()?,
            })
        })
        .collect()
}

fn parse_hex_address(hex: &str) -> Option<IpAddr> {
    let word = |i: usize| -> Option<[u8; 4]> {
        let text = hex.get(i * 8..i * 8 + 8)?;
        Some(u32::from_str_radix(text, 16).ok()?.to_ne_bytes())
    };
    match hex.len() {
        8 => Some(IpAddr::V4(Ipv4Addr::from(word(0)?))),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            Some(IpAddr::V6(Ipv6Addr::from(bytes)))
        }
        _ => None,
    }
}

/// Maps socket inodes to the pids holding them by reading every `/proc/<pid>/fd/*` link
/// (`socket:[<inode>]`). Stops early once every wanted inode is found; skips processes
/// whose fds cannot be read (they vanished, or the agent lacks the privilege).
pub(crate) fn socket_owners(proc_dir: &Path, wanted: &[u64]) -> HashMap<u64, Vec<u32>> {
    let mut owners: HashMap<u64, Vec<u32>> = HashMap::new();
    if wanted.is_empty() {
        return owners;
    }
    let Ok(processes) = std::fs::read_dir(proc_dir) else {
        return owners;
    };
    for process in processes.flatten() {
        let Some(pid) = process
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(process.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let Some(inode) = target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse::<u64>().ok())
            else {
                continue;
            };
            if wanted.contains(&inode) {
                let pids = owners.entry(inode).or_default();
                if !pids.contains(&pid) {
                    pids.push(pid);
                }
            }
        }
    }
    owners
}

/// The pid reported for a socket several processes hold: not pid 1 when another holder
/// exists (systemd keeps socket-activated sockets open beside the service), otherwise the
/// lowest pid (a pre-forking server's master, not one of its workers).
pub(crate) fn reported_owner(pids: &[u32]) -> Option<u32> {
    pids.iter()
        .copied()
        .filter(|&p| p != 1)
        .min()
        .or_else(|| pids.first().copied())
}

/// Turns listeners and their owners into the reported list: sorted by protocol, port,
/// address and pid; identical entries (`SO_REUSEPORT` groups of one process) merged.
pub(crate) fn port_list(
    listeners: &[Listener],
    owners: &HashMap<u64, Vec<u32>>,
    process_name: impl Fn(u32) -> Option<String>,
) -> Vec<PortInfo> {
    let mut ports: Vec<PortInfo> = listeners
        .iter()
        .map(|l| {
            let pid = owners.get(&l.inode).and_then(|p| reported_owner(p));
            PortInfo {
                port: l.port,
                protocol: l.protocol.to_string(),
                local_address: Some(l.address.to_string()),
                state: Some(
                    if l.protocol == "tcp" {
                        "listen"
                    } else {
                        "unconn"
                    }
                    .to_string(),
                ),
                process_id: pid,
                process_name: pid.and_then(&process_name),
                is_listening: true,
            }
        })
        .collect();
    ports.sort_by(|a, b| {
        (&a.protocol, a.port, &a.local_address, a.process_id).cmp(&(
            &b.protocol,
            b.port,
            &b.local_address,
            b.process_id,
        ))
    });
    ports.dedup();
    ports
}

// The tables are in host byte order; these captures come from little-endian machines.
#[cfg(all(test, target_endian = "little"))]
mod tests {
    use super::*;

    #[test]
    fn tcp_listen_rows_parse_and_established_rows_are_skipped() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 559 1 0000000055cd4cd2 100 0 0 10 0\n   1: 020200C0:BCBA 507100CB:0050 06 00000000:00000000 03:00000F62 00000000     0        0 0 3 0000000083962ffe\n   2: 0100007F:0CEA 00000000:0000 0A 00000000:00000000 00:00000000 00000000   104        0 20100 1 0 100 0 0 10 0\n";
        let listeners = parse_socket_table(text, "tcp");
        assert_eq!(listeners.len(), 2);
        assert_eq!(listeners[0].port, 2024);
        assert_eq!(listeners[0].address.to_string(), "0.0.0.0");
        assert_eq!(listeners[1].address.to_string(), "127.0.0.1");
        assert_eq!(listeners[1].port, 3306);
        assert_eq!(listeners[1].inode, 20100);
    }

    #[test]
    fn ipv6_addresses_decode_word_by_word() {
        let text = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 00000000000000000000000001000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 17001 1 0 100 0 0 10 0\n   1: 00000000000000000000000000000000:0035 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 17002 2 0 0\n";
        let tcp = parse_socket_table(text, "tcp");
        assert_eq!(tcp.len(), 1);
        assert_eq!(tcp[0].address.to_string(), "::1");
        assert_eq!(tcp[0].port, 22);
        let udp = parse_socket_table(text, "udp");
        assert_eq!(udp.len(), 1);
        assert_eq!(udp[0].address.to_string(), "::");
        assert_eq!(udp[0].port, 53);
    }

    #[test]
    fn shared_sockets_report_the_service_not_pid_1_and_the_master_not_a_worker() {
        assert_eq!(reported_owner(&[1, 812]), Some(812));
        assert_eq!(reported_owner(&[905, 900, 901]), Some(900));
        assert_eq!(reported_owner(&[1]), Some(1));
        assert_eq!(reported_owner(&[]), None);
    }
}
