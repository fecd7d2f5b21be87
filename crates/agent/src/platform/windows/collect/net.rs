//! Network interfaces: the adapters `ipconfig` shows (`GetAdaptersAddresses`: friendly name,
//! state, addresses) and their counters (`GetIfEntry2`, one call per adapter). The adapter
//! list is read again every [`super::RESCAN_EVERY`] samples; the counters every sample.
//! Filter drivers' and lower layers' rows of the interface table (the "-WFP …" and "-QoS …"
//! entries) are not adapters and are not reported.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use infinibay_protocol::message::InterfaceStats;
use windows_sys::Win32::Foundation::{ERROR_BUFFER_OVERFLOW, NO_ERROR};
use windows_sys::Win32::NetworkManagement::IpHelper::{
    GAA_FLAG_SKIP_ANYCAST, GAA_FLAG_SKIP_DNS_SERVER, GAA_FLAG_SKIP_MULTICAST, GetAdaptersAddresses,
    GetIfEntry2, IP_ADAPTER_ADDRESSES_LH, MIB_IF_ROW2,
};
use windows_sys::Win32::NetworkManagement::Ndis::IfOperStatusUp;
use windows_sys::Win32::Networking::WinSock::{
    AF_INET, AF_INET6, AF_UNSPEC, SOCKADDR, SOCKADDR_IN, SOCKADDR_IN6,
};

use super::RESCAN_EVERY;
use crate::platform::rates::{NetCounters, address_strings, interface_stats};
use crate::platform::windows::wide::from_wide_ptr;

/// An adapter as `GetAdaptersAddresses` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Adapter {
    index: u32,
    name: String,
    addresses: Vec<String>,
}

/// The adapters and their previous counters.
#[derive(Debug, Default)]
pub struct Interfaces {
    adapters: Vec<Adapter>,
    previous: HashMap<u32, NetCounters>,
    samples_until_rescan: u32,
}

impl Interfaces {
    /// One row per adapter, sorted by name; rates over `elapsed` seconds (`None` on the
    /// first sample).
    pub fn sample(&mut self, elapsed: Option<f64>) -> Vec<InterfaceStats> {
        if self.samples_until_rescan == 0 {
            match adapters() {
                Ok(list) => self.adapters = list,
                Err(e) => tracing::debug!(error = %e, "GetAdaptersAddresses failed"),
            }
            self.samples_until_rescan = RESCAN_EVERY;
        }
        self.samples_until_rescan -= 1;
        let mut rows = Vec::with_capacity(self.adapters.len());
        let mut seen = HashMap::with_capacity(self.adapters.len());
        for adapter in &self.adapters {
            let mut row = MIB_IF_ROW2 {
                InterfaceIndex: adapter.index,
                ..Default::default()
            };
            // SAFETY: a MIB_IF_ROW2 with its index set, as GetIfEntry2 requires.
            if unsafe { GetIfEntry2(&mut row) } != NO_ERROR {
                // Gone since the last rescan: look again next sample.
                self.samples_until_rescan = 0;
                continue;
            }
            let now = NetCounters {
                name: adapter.name.clone(),
                rx_bytes: row.InOctets,
                rx_packets: row.InUcastPkts + row.InNUcastPkts,
                rx_errors: row.InErrors,
                tx_bytes: row.OutOctets,
                tx_packets: row.OutUcastPkts + row.OutNUcastPkts,
                tx_errors: row.OutErrors,
            };
            let previous = self.previous.get(&adapter.index);
            rows.push(interface_stats(
                &now,
                elapsed.and(previous),
                elapsed.unwrap_or(0.0),
                row.OperStatus == IfOperStatusUp,
                adapter.addresses.clone(),
            ));
            seen.insert(adapter.index, now);
        }
        self.previous = seen;
        rows.sort_by(|a, b| a.interface.cmp(&b.interface));
        rows
    }
}

/// Every adapter with its unicast addresses.
fn adapters() -> std::io::Result<Vec<Adapter>> {
    let flags = GAA_FLAG_SKIP_ANYCAST | GAA_FLAG_SKIP_MULTICAST | GAA_FLAG_SKIP_DNS_SERVER;
    // 15 kB is Microsoft's advice for a first call; u64s keep the buffer aligned.
    let mut buffer = vec![0u64; 15 * 1024 / 8];
    for _ in 0..4 {
        let mut size = (buffer.len() * 8) as u32;
        // SAFETY: `buffer` is writable for `size` bytes and 8-byte aligned.
        let status = unsafe {
            GetAdaptersAddresses(
                u32::from(AF_UNSPEC),
                flags,
                std::ptr::null(),
                buffer.as_mut_ptr().cast(),
                &mut size,
            )
        };
        match status {
            NO_ERROR => return Ok(parse_adapters(&buffer)),
            ERROR_BUFFER_OVERFLOW => buffer.resize(size as usize / 8 + 1, 0),
            code => return Err(std::io::Error::from_raw_os_error(code as i32)),
        }
    }
    Err(std::io::Error::other("the adapter list kept growing"))
}

fn parse_adapters(buffer: &[u64]) -> Vec<Adapter> {
    let mut list = Vec::new();
    let mut next = buffer.as_ptr().cast::<IP_ADAPTER_ADDRESSES_LH>();
    while !next.is_null() {
        // SAFETY: GetAdaptersAddresses filled `buffer` with a linked list of adapters whose
        // pointers all point inside it; it outlives this loop.
        let adapter = unsafe { &*next };
        // SAFETY: the union's struct arm is what the OS fills (IfIndex after Length).
        let index = unsafe { adapter.Anonymous1.Anonymous.IfIndex };
        let index = if index != 0 {
            index
        } else {
            adapter.Ipv6IfIndex
        };
        let mut addresses = Vec::new();
        let mut unicast = adapter.FirstUnicastAddress;
        while !unicast.is_null() {
            // SAFETY: as above, inside the same list.
            let entry = unsafe { &*unicast };
            // SAFETY: the sockaddr pointer and length come from the OS.
            if let Some(ip) = unsafe { ip_of(entry.Address.lpSockaddr) } {
                addresses.push(ip);
            }
            unicast = entry.Next;
        }
        list.push(Adapter {
            index,
            // SAFETY: FriendlyName is a NUL-terminated string inside the buffer.
            name: unsafe { from_wide_ptr(adapter.FriendlyName) },
            addresses: address_strings(addresses),
        });
        next = adapter.Next;
    }
    list
}

/// The address in a `SOCKADDR` of family IPv4 or IPv6.
///
/// # Safety
/// `address` is null or points to a sockaddr of the size its family implies.
unsafe fn ip_of(address: *const SOCKADDR) -> Option<IpAddr> {
    if address.is_null() {
        return None;
    }
    // SAFETY: non-null, points to at least a SOCKADDR header.
    let family = unsafe { (*address).sa_family };
    if family == AF_INET {
        // SAFETY: the family says it is a SOCKADDR_IN.
        let v4 = unsafe { &*address.cast::<SOCKADDR_IN>() };
        // SAFETY: S_un is a union over the same 4 bytes.
        let raw = unsafe { v4.sin_addr.S_un.S_addr };
        Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(raw))))
    } else if family == AF_INET6 {
        // SAFETY: the family says it is a SOCKADDR_IN6.
        let v6 = unsafe { &*address.cast::<SOCKADDR_IN6>() };
        // SAFETY: u.Byte covers the 16 address bytes.
        let bytes = unsafe { v6.sin6_addr.u.Byte };
        Some(IpAddr::V6(Ipv6Addr::from(bytes)))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loopback_adapter_has_counters_and_rates_on_the_second_sample() {
        let mut interfaces = Interfaces::default();
        let first = interfaces.sample(None);
        assert!(!first.is_empty(), "no adapter at all");
        assert!(first.iter().all(|i| i.bytes_received_per_sec.is_none()));
        let second = interfaces.sample(Some(1.0));
        assert_eq!(
            first.iter().map(|i| &i.interface).collect::<Vec<_>>(),
            second.iter().map(|i| &i.interface).collect::<Vec<_>>()
        );
        assert!(second.iter().all(|i| i.bytes_received_per_sec.is_some()));
        let mut sorted = second.clone();
        sorted.sort_by(|a, b| a.interface.cmp(&b.interface));
        assert_eq!(second, sorted);
    }
}
