//! Finding a pod's host-side interface and this node's own addresses.
//!
//! A pod's host-side veth is the device of the host route to the pod's IP (`/32` or `/128`),
//! which is how routed CNIs (kindnet/ptp, Calico, the lab) wire pods. Bridge-based CNIs are not
//! supported yet. Routes are read from procfs: no netlink dependency for one lookup.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A host-side interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Iface {
    pub name: String,
    pub ifindex: u32,
}

/// Host routes (exact /32 and /128) of the main table: destination → device name.
pub fn host_routes() -> io::Result<BTreeMap<IpAddr, String>> {
    let mut routes = parse_ipv4_routes(&std::fs::read_to_string("/proc/net/route")?);
    // IPv6 may be disabled: then there are simply no IPv6 routes.
    if let Ok(v6) = std::fs::read_to_string("/proc/net/ipv6_route") {
        routes.extend(parse_ipv6_routes(&v6));
    }
    Ok(routes)
}

/// `/proc/net/route`: `Iface Destination Gateway Flags RefCnt Use Metric Mask ...`, addresses
/// as little-endian hex u32.
pub fn parse_ipv4_routes(text: &str) -> BTreeMap<IpAddr, String> {
    let mut out = BTreeMap::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 || f[7] != "FFFFFFFF" {
            continue;
        }
        if let Ok(dst) = u32::from_str_radix(f[1], 16) {
            out.insert(
                IpAddr::V4(Ipv4Addr::from(dst.swap_bytes())),
                f[0].to_string(),
            );
        }
    }
    out
}

/// `/proc/net/ipv6_route`: `dst dst_len src src_len next_hop metric refcnt use flags dev`.
pub fn parse_ipv6_routes(text: &str) -> BTreeMap<IpAddr, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 || f[1] != "80" || f[9] == "lo" {
            continue;
        }
        if let Ok(dst) = u128::from_str_radix(f[0], 16) {
            out.insert(IpAddr::V6(Ipv6Addr::from(dst)), f[9].to_string());
        }
    }
    out
}

pub fn ifindex(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: a valid NUL-terminated string; the call only reads it.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (idx != 0).then_some(idx)
}

/// The interface list of the calling thread's network namespace (`/proc/net` is the main
/// thread's, `/sys/class/net` that of whoever mounted sysfs).
pub const NET_DEV: &str = "/proc/thread-self/net/dev";

/// The interfaces of the calling thread's network namespace whose name starts with one of
/// `prefixes`.
pub fn named_with(prefixes: &[String]) -> io::Result<Vec<Iface>> {
    let text = std::fs::read_to_string(NET_DEV)?;
    Ok(parse_net_dev(&text)
        .into_iter()
        .filter(|n| prefixes.iter().any(|p| n.starts_with(p.as_str())))
        .filter_map(|name| {
            Some(Iface {
                ifindex: ifindex(&name)?,
                name,
            })
        })
        .collect())
}

/// The interface names of `/proc/net/dev` (two header lines, then `name: counters...`).
pub fn parse_net_dev(text: &str) -> Vec<String> {
    text.lines()
        .skip(2)
        .filter_map(|l| Some(l.split_once(':')?.0.trim().to_owned()))
        .filter(|n| !n.is_empty())
        .collect()
}

/// The name of the interface `ifindex` in this network namespace.
pub fn name_of(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` has the IF_NAMESIZE bytes the call may write.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success the call wrote a NUL-terminated name into `buf`.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

/// The host-side interface of a pod with these IPs: the device of the host route to the first
/// IP that has one.
pub fn pod_iface(routes: &BTreeMap<IpAddr, String>, ips: &[IpAddr]) -> Option<Iface> {
    ips.iter().find_map(|ip| {
        let name = routes.get(ip)?;
        Some(Iface {
            name: name.clone(),
            ifindex: ifindex(name)?,
        })
    })
}

/// Every address configured on this node (network namespace): its traffic to and from local
/// pods is always allowed.
pub fn host_addresses() -> io::Result<Vec<IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, valid until freeifaddrs.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points to a sockaddr of the family it states.
            unsafe {
                match (*ifa.ifa_addr).sa_family as i32 {
                    libc::AF_INET => {
                        let sa = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                        out.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr))));
                    }
                    libc::AF_INET6 => {
                        let sa = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                        out.push(IpAddr::V6(Ipv6Addr::from(sa.sin6_addr.s6_addr)));
                    }
                    _ => {}
                }
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    out.sort();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_dev_names() {
        let text = "Inter-|   Receive                            |  Transmit\n \
             face |bytes    packets errs drop fifo frame compressed multicast|bytes\n    \
             lo: 1296      16    0    0    0     0          0         0     1296\n\
             lxc1a2b:  0 0 0 0 0 0 0 0 0\n  eth0:12 3 0 0 0 0 0 0 12\n";
        assert_eq!(parse_net_dev(text), ["lo", "lxc1a2b", "eth0"]);
    }

    #[test]
    fn ipv4_host_routes_only() {
        let text =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                    lxc1\t0A01F40A\t00000000\t0005\t0\t0\t0\tFFFFFFFF\t0\t0\t0\n\
                    eth0\t0000F40A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n";
        let r = parse_ipv4_routes(text);
        assert_eq!(r.len(), 1);
        assert_eq!(
            r.get(&"10.244.1.10".parse().unwrap()).map(String::as_str),
            Some("lxc1")
        );
    }

    #[test]
    fn ipv6_host_routes_only() {
        let text = "fd000010024400010000000000000010 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000400 00000001 00000000 00000001     lxc3\n\
                    fd000010024400010000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000400 00000001 00000000 00000001     eth0\n\
                    00000000000000000000000000000001 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000000 00000002 00000000 80200001       lo\n";
        let r = parse_ipv6_routes(text);
        assert_eq!(r.len(), 1);
        assert_eq!(
            r.get(&"fd00:10:244:1::10".parse().unwrap())
                .map(String::as_str),
            Some("lxc3")
        );
    }
}
