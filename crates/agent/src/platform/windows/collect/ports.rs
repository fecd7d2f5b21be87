//! Listening TCP sockets and bound UDP sockets with their owning process, from the TCP/IP
//! stack's own tables (`GetExtendedTcpTable` with `TCP_TABLE_OWNER_PID_LISTENER`,
//! `GetExtendedUdpTable` with `UDP_TABLE_OWNER_PID`): the owner comes with each row, no
//! scan of every process's handles.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use infinibay_protocol::message::PortInfo;
use windows_sys::Win32::Foundation::{ERROR_INSUFFICIENT_BUFFER, NO_ERROR};
use windows_sys::Win32::NetworkManagement::IpHelper::{
    GetExtendedTcpTable, GetExtendedUdpTable, MIB_TCP6ROW_OWNER_PID, MIB_TCPROW_OWNER_PID,
    MIB_UDP6ROW_OWNER_PID, MIB_UDPROW_OWNER_PID, TCP_TABLE_OWNER_PID_LISTENER, UDP_TABLE_OWNER_PID,
};
use windows_sys::Win32::Networking::WinSock::{AF_INET, AF_INET6};

use super::process;

/// One listener before the process names are added.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Listener {
    protocol: &'static str,
    address: IpAddr,
    port: u16,
    pid: u32,
}

/// Every listener, sorted by protocol, port, address, pid; duplicates merged.
pub fn listeners() -> std::io::Result<Vec<PortInfo>> {
    let mut found = Vec::new();
    for family in [AF_INET, AF_INET6] {
        let table = query(|buf, size| unsafe {
            // SAFETY: `buf` is writable for `*size` bytes (or null with size 0).
            GetExtendedTcpTable(
                buf,
                size,
                0,
                u32::from(family),
                TCP_TABLE_OWNER_PID_LISTENER,
                0,
            )
        })?;
        found.extend(parse_tcp(&table, family == AF_INET6));
        let table = query(|buf, size| unsafe {
            // SAFETY: as above.
            GetExtendedUdpTable(buf, size, 0, u32::from(family), UDP_TABLE_OWNER_PID, 0)
        })?;
        found.extend(parse_udp(&table, family == AF_INET6));
    }
    found.sort_by(|a, b| {
        (a.protocol, a.port, a.address, a.pid).cmp(&(b.protocol, b.port, b.address, b.pid))
    });
    found.dedup();
    let mut buffer = Vec::new();
    let names: HashMap<u32, String> = process::list(&mut buffer)
        .map(|entries| entries.into_iter().map(|e| (e.pid, e.name)).collect())
        .unwrap_or_default();
    Ok(found
        .into_iter()
        .map(|l| PortInfo {
            port: l.port,
            protocol: l.protocol.into(),
            local_address: Some(l.address.to_string()),
            state: Some(
                if l.protocol == "tcp" {
                    "listen"
                } else {
                    "unconn"
                }
                .into(),
            ),
            // Pid 0 is the stack itself (sockets of a process that has gone).
            process_id: (l.pid != 0).then_some(l.pid),
            process_name: names.get(&l.pid).cloned(),
            is_listening: true,
        })
        .collect())
}

/// Call a table function until the table fits; the table as u32 words (its rows are).
fn query(call: impl Fn(*mut std::ffi::c_void, &mut u32) -> u32) -> std::io::Result<Vec<u32>> {
    let mut size = 0u32;
    let mut table: Vec<u32> = Vec::new();
    for _ in 0..8 {
        let status = call(
            if table.is_empty() {
                std::ptr::null_mut()
            } else {
                table.as_mut_ptr().cast()
            },
            &mut size,
        );
        match status {
            NO_ERROR if !table.is_empty() => return Ok(table),
            NO_ERROR => return Ok(vec![0]),
            ERROR_INSUFFICIENT_BUFFER => table = vec![0u32; (size as usize).div_ceil(4) + 64],
            code => return Err(std::io::Error::from_raw_os_error(code as i32)),
        }
        size = (table.len() * 4) as u32;
    }
    Err(std::io::Error::other("the socket table kept growing"))
}

/// The rows of a table: a u32 count, then the rows (at offset 4: rows of these types hold
/// only u32s and byte arrays).
fn rows<T: Copy>(table: &[u32]) -> Vec<T> {
    let Some(&count) = table.first() else {
        return Vec::new();
    };
    let fit = (table.len() * 4 - 4) / std::mem::size_of::<T>();
    let base = table[1..].as_ptr().cast::<T>();
    (0..(count as usize).min(fit))
        // SAFETY: each row lies inside `table` (bounded by `fit`); read unaligned to be safe.
        .map(|i| unsafe { std::ptr::read_unaligned(base.add(i)) })
        .collect()
}

/// A port in a row: network byte order in the low 16 bits.
fn port_of(raw: u32) -> u16 {
    u16::from_be(raw as u16)
}

fn parse_tcp(table: &[u32], v6: bool) -> Vec<Listener> {
    if v6 {
        rows::<MIB_TCP6ROW_OWNER_PID>(table)
            .into_iter()
            .map(|r| Listener {
                protocol: "tcp",
                address: IpAddr::V6(Ipv6Addr::from(r.ucLocalAddr)),
                port: port_of(r.dwLocalPort),
                pid: r.dwOwningPid,
            })
            .collect()
    } else {
        rows::<MIB_TCPROW_OWNER_PID>(table)
            .into_iter()
            .map(|r| Listener {
                protocol: "tcp",
                address: IpAddr::V4(Ipv4Addr::from(u32::from_be(r.dwLocalAddr))),
                port: port_of(r.dwLocalPort),
                pid: r.dwOwningPid,
            })
            .collect()
    }
}

fn parse_udp(table: &[u32], v6: bool) -> Vec<Listener> {
    if v6 {
        rows::<MIB_UDP6ROW_OWNER_PID>(table)
            .into_iter()
            .map(|r| Listener {
                protocol: "udp",
                address: IpAddr::V6(Ipv6Addr::from(r.ucLocalAddr)),
                port: port_of(r.dwLocalPort),
                pid: r.dwOwningPid,
            })
            .collect()
    } else {
        rows::<MIB_UDPROW_OWNER_PID>(table)
            .into_iter()
            .map(|r| Listener {
                protocol: "udp",
                address: IpAddr::V4(Ipv4Addr::from(u32::from_be(r.dwLocalAddr))),
                port: port_of(r.dwLocalPort),
                pid: r.dwOwningPid,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_tcp_listener_and_udp_socket_are_listed_with_our_pid() {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("bind tcp");
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        let ports = listeners().expect("socket tables");
        let me = std::process::id();
        for (protocol, port) in [
            ("tcp", tcp.local_addr().expect("addr").port()),
            ("udp", udp.local_addr().expect("addr").port()),
        ] {
            let row = ports
                .iter()
                .find(|p| p.protocol == protocol && p.port == port)
                .unwrap_or_else(|| panic!("{protocol} {port} missing from {ports:?}"));
            assert_eq!(row.local_address.as_deref(), Some("127.0.0.1"));
            // Wine 8's socket tables carry no owner (pid 0, docs/windows.md).
            if !crate::platform::windows::under_wine() {
                assert_eq!(row.process_id, Some(me), "{row:?}");
                assert!(row.process_name.is_some());
            }
        }
    }

    #[test]
    fn ports_are_read_in_network_byte_order() {
        assert_eq!(port_of(u32::from(8080u16.to_be())), 8080);
    }
}
