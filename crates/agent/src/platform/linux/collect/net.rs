//! Network interfaces: counters from `/proc/net/dev`, addresses and state from `getifaddrs`
//! (or `/proc/net/if_inet6` and sysfs when reading a fixture tree).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use super::read::read_trimmed;
pub(crate) use crate::platform::rates::{NetCounters, address_strings, interface_stats};

/// Parses `/proc/net/dev`. The kernel prints `%6s:` then the numbers, so a long name touches
/// its colon and the first number may touch it too (`eth0:1234`). Names may contain `:`,
/// `.`, `@` or `-`; numbers never contain `:`, so the name is everything before the last
/// colon of the line.
pub(crate) fn parse_net_dev(text: &str) -> Vec<NetCounters> {
    text.lines()
        .filter_map(|line| {
            let (name, numbers) = line.rsplit_once(':')?;
            let name = name.trim();
            if name.is_empty() {
                return None;
            }
            let mut fields = numbers
                .split_ascii_whitespace()
                .map(|f| f.parse::<u64>().ok());
            let mut next = || fields.next().flatten();
            let rx_bytes = next()?;
            let rx_packets = next()?;
            let rx_errors = next()?;
            for _ in 0..5 {
                next()?; // drop fifo frame compressed multicast
            }
            let tx_bytes = next()?;
            let tx_packets = next()?;
            let tx_errors = next()?;
            Some(NetCounters {
                name: name.to_string(),
                rx_bytes,
                rx_packets,
                rx_errors,
                tx_bytes,
                tx_packets,
                tx_errors,
            })
        })
        .collect()
}

/// `IFF_UP` from `<linux/if.h>`.
const IFF_UP: u64 = 0x1;
/// `IFF_RUNNING` from `<linux/if.h>`.
const IFF_RUNNING: u64 = 0x40;

/// [`is_up`] from an interface's flags as `getifaddrs` reports them: the kernel sets
/// `IFF_RUNNING` exactly when the device runs and its operstate is `up` or `unknown`
/// (`dev_get_flags`), the rule [`is_up`] applies to sysfs's `operstate` — without reading two
/// sysfs files per interface every sample.
pub(crate) fn flags_say_up(flags: u64) -> bool {
    flags & IFF_UP != 0 && flags & IFF_RUNNING != 0
}

/// Up means administratively up (`flags` has IFF_UP) and operationally up. Loopback and
/// many virtual devices report operstate `unknown` while working, so `unknown` counts as up
/// when the flag says so. A missing attribute is not evidence either way; with neither
/// present the interface is reported down.
pub(crate) fn is_up(operstate: Option<&str>, flags: Option<u64>) -> bool {
    let admin_up = flags.map(|f| f & IFF_UP != 0);
    let oper_up = operstate.map(|s| s == "up" || s == "unknown");
    match (admin_up, oper_up) {
        (Some(a), Some(o)) => a && o,
        (Some(a), None) => a,
        (None, Some(_)) => operstate == Some("up"),
        (None, None) => false,
    }
}

/// Reads `/sys/class/net/<name>/{operstate,flags}`.
pub(crate) fn sysfs_is_up(sys: &Path, name: &str) -> bool {
    let dir = sys.join("class/net").join(name);
    let operstate = read_trimmed(&dir.join("operstate")).ok();
    let flags = read_trimmed(&dir.join("flags"))
        .ok()
        .and_then(|f| u64::from_str_radix(f.trim_start_matches("0x"), 16).ok());
    is_up(operstate.as_deref(), flags)
}

/// Addresses per interface name; each list has IPv4 before IPv6, each family sorted.
pub(crate) type AddressMap = BTreeMap<String, Vec<IpAddr>>;

/// What one `getifaddrs` call says about the interfaces.
#[derive(Debug, Default)]
pub(crate) struct LiveInterfaces {
    /// Addresses per interface.
    pub addresses: AddressMap,
    /// Flags (`IFF_*`) per interface, from its link-level (`AF_PACKET`) entry.
    pub flags: BTreeMap<String, u64>,
}

/// Parses `/proc/net/if_inet6`: `<32 hex> <ifindex> <prefix> <scope> <flags> <name>`.
pub(crate) fn parse_if_inet6(text: &str, into: &mut AddressMap) {
    for line in text.lines() {
        let fields: Vec<&str> = line.split_ascii_whitespace().collect();
        let [hex, _, _, _, _, name] = fields[..] else {
            continue;
        };
        let Ok(bits) = u128::from_str_radix(hex, 16) else {
            continue;
        };
        if hex.len() != 32 {
            continue;
        }
        into.entry(name.to_string())
            .or_default()
            .push(IpAddr::V6(Ipv6Addr::from(bits)));
    }
}

/// IPv4 and IPv6 addresses of the live system through `getifaddrs(3)`: glibc asks the
/// kernel over netlink inside the process, so no tool is spawned.
pub(crate) fn getifaddrs_interfaces() -> std::io::Result<LiveInterfaces> {
    let mut live = LiveInterfaces::default();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: `head` is a valid out-pointer; on success the list is freed below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut cursor = head;
    while !cursor.is_null() {
        // SAFETY: `cursor` is a node of the list getifaddrs returned and is not freed yet.
        let entry = unsafe { &*cursor };
        cursor = entry.ifa_next;
        if entry.ifa_addr.is_null() || entry.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_addr is non-null and points to a sockaddr whose family says its type.
        let family = i32::from(unsafe { (*entry.ifa_addr).sa_family });
        let address = match family {
            libc::AF_PACKET => {
                // SAFETY: ifa_name is a NUL-terminated string owned by the list.
                let name = unsafe { std::ffi::CStr::from_ptr(entry.ifa_name) };
                live.flags.insert(
                    name.to_string_lossy().into_owned(),
                    u64::from(entry.ifa_flags),
                );
                continue;
            }
            libc::AF_INET => {
                // SAFETY: family AF_INET means the storage is a sockaddr_in.
                let sin = unsafe { &*(entry.ifa_addr as *const libc::sockaddr_in) };
                IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)))
            }
            libc::AF_INET6 => {
                // SAFETY: family AF_INET6 means the storage is a sockaddr_in6.
                let sin6 = unsafe { &*(entry.ifa_addr as *const libc::sockaddr_in6) };
                IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr))
            }
            _ => continue,
        };
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let name = unsafe { std::ffi::CStr::from_ptr(entry.ifa_name) };
        let name = name.to_string_lossy();
        // IPv4 aliases are reported under their label (`eth0:1`); they belong to `eth0`.
        let base = match name.split_once(':') {
            Some((base, _)) if family == libc::AF_INET => base,
            _ => &name,
        };
        live.addresses
            .entry(base.to_string())
            .or_default()
            .push(address);
    }
    // SAFETY: `head` came from a successful getifaddrs and is freed exactly once.
    unsafe { libc::freeifaddrs(head) };
    Ok(live)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_names_and_touching_colons_parse() {
        let text = "Inter-|   Receive |  Transmit\n face |bytes packets|bytes\n\
            eth0.100: 1 2 3 0 0 0 0 0 4 5 6 0 0 0 0 0\n\
            br-1a2b3c4d5e6f:10 20 0 0 0 0 0 0 30 40 0 0 0 0 0 0\n\
            weird:name: 7 8 9 0 0 0 0 0 10 11 12 0 0 0 0 0\n\
            veth0@if3: 1 1 0 0 0 0 0 0 1 1 0 0 0 0 0 0\n";
        let parsed = parse_net_dev(text);
        let names: Vec<_> = parsed.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            ["eth0.100", "br-1a2b3c4d5e6f", "weird:name", "veth0@if3"]
        );
        assert_eq!(parsed[1].rx_bytes, 10);
        assert_eq!(parsed[1].tx_packets, 40);
        assert_eq!(parsed[2].tx_errors, 12);
    }

    #[test]
    fn up_needs_admin_flag_and_operstate_up_or_unknown() {
        assert!(is_up(Some("up"), Some(0x1003)));
        assert!(is_up(Some("unknown"), Some(0x9)));
        assert!(!is_up(Some("down"), Some(0x1003)));
        assert!(!is_up(Some("up"), Some(0x1002)));
        assert!(!is_up(Some("unknown"), None));
        assert!(flags_say_up(0x1043), "UP|BROADCAST|RUNNING|MULTICAST");
        assert!(flags_say_up(0x49), "lo: UP|LOOPBACK|RUNNING");
        assert!(!flags_say_up(0x1003), "up but no carrier");
        assert!(!flags_say_up(0x1042), "down");
        assert!(!is_up(None, None));
    }

    #[test]
    fn rates_are_none_first_and_after_a_counter_reset() {
        let c = |rx| NetCounters {
            name: "eth0".into(),
            rx_bytes: rx,
            rx_packets: 0,
            rx_errors: 0,
            tx_bytes: 0,
            tx_packets: 0,
            tx_errors: 0,
        };
        assert_eq!(
            interface_stats(&c(100), None, 1.0, true, vec![]).bytes_received_per_sec,
            None
        );
        assert_eq!(
            interface_stats(&c(300), Some(&c(100)), 2.0, true, vec![]).bytes_received_per_sec,
            Some(100.0)
        );
        assert_eq!(
            interface_stats(&c(50), Some(&c(100)), 2.0, true, vec![]).bytes_received_per_sec,
            None
        );
    }

    #[test]
    fn if_inet6_gives_addresses_without_prefix() {
        let mut map = AddressMap::new();
        parse_if_inet6(
            "00000000000000000000000000000001 01 80 10 80       lo\n\
             fe8000000000000000fc00fffe000001 04 40 20 80     eth0\n\
             fd000000000000000000000000000002 04 40 00 82     eth0\n",
            &mut map,
        );
        assert_eq!(address_strings(map["lo"].clone()), ["::1"]);
        assert_eq!(
            address_strings(map["eth0"].clone()),
            ["fd00::2", "fe80::fc:ff:fe00:1"]
        );
    }

    #[test]
    fn getifaddrs_flags_say_what_sysfs_says_on_this_machine() {
        let live = getifaddrs_interfaces().expect("getifaddrs");
        assert!(live.flags.contains_key("lo"), "{:?}", live.flags);
        for (name, flags) in &live.flags {
            assert_eq!(
                flags_say_up(*flags),
                sysfs_is_up(Path::new("/sys"), name),
                "{name}: flags {flags:#x}"
            );
        }
    }
}
