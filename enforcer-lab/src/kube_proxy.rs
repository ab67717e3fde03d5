//! The lab's kube-proxy: the Service NAT of one node, written as kube-proxy's nftables mode
//! writes it (docs/scenario-format.md "What the lab provides"), and applied in the node's
//! network namespace.
//!
//! Per family, one table `kube-proxy`:
//! - `nat-prerouting` (pod traffic) and `nat-output` (the node's own traffic) look up
//!   ClusterIP . protocol . port in the `service-ips` verdict map; each Service port's chain
//!   picks one of its candidates uniformly at random per new connection
//!   (`numgen random mod N` vmap) and jumps to that endpoint's chain, which DNATs to the
//!   endpoint at its target port. Candidates are the Service port's endpoints, or only this
//!   node's under `internalTrafficPolicy: Local`.
//! - Hairpin: an endpoint reaching itself through its Service is marked, and `nat-postrouting`
//!   masquerades marked connections (only those: nothing else is SNATed), so its replies come
//!   back through the node to be un-DNATed.
//! - `filter-forward` / `filter-output` reject new connections to a Service port without
//!   endpoints, drop those to a `Local` Service port without endpoints on this node (as
//!   kube-proxy does), reject those to a port a ClusterIP does not have, and drop those to an
//!   unallocated address of the Service range. They run at filter priority, after DNAT, so
//!   they only see what was not translated.
//!
//! [`ruleset`] is a pure function of the cluster model (tested without root); [`apply`]
//! replaces both tables in one `nft -f -` transaction, so a step's Services, ports and
//! endpoints are exactly the ruleset's, and then flushes the namespace's conntrack table so
//! no earlier step's translation (UDP flows in particular) outlives its Service.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::process::{Command, Stdio};

use anyhow::{bail, Context};
use enforcer_agent::model::service::{candidates, Backend, EndpointIndex, IpFamily};
use enforcer_agent::model::{Cluster, Protocol, Service};
use enforcer_agent::netns::Netns;

/// The table kube-proxy's nftables mode uses, in both the `ip` and `ip6` families.
pub const TABLE: &str = "kube-proxy";
/// The Service ranges of the lab (docs/scenario-format.md "Services (`cluster.yaml`)"): drops
/// for unallocated ClusterIPs, and the node routes that let its own connections reach the NAT.
pub const SERVICE_CIDR_V4: &str = "10.96.0.0/16";
pub const SERVICE_CIDR_V6: &str = "fd00:10:96::/48";
/// The mark bit of connections to masquerade (kube-proxy's).
const MASQUERADE_MARK: &str = "0x4000";

/// What one Service port of one family does on this node.
enum PortRule<'a> {
    /// DNAT to one of these, chosen at random.
    Translate(Vec<&'a Backend>),
    /// No endpoint at all: reject.
    NoEndpoints,
    /// `Local`, and no endpoint on this node: drop.
    NoLocalEndpoints,
}

struct Entry<'a> {
    svc: &'a Service,
    ip: IpAddr,
    port: u16,
    protocol: Protocol,
    rule: PortRule<'a>,
}

/// The whole ruleset of `node`'s kube-proxy for `cluster` (both families), as one `nft -f`
/// input that replaces the previous one.
pub fn ruleset(cluster: &Cluster, node: &str) -> String {
    let index = EndpointIndex::new(cluster);
    let mut endpoints: Vec<(IpFamily, &Service, usize, Vec<Backend>)> = Vec::new();
    for svc in cluster.services.values() {
        for family in [IpFamily::V4, IpFamily::V6] {
            if svc.cluster_ip(family).is_none() {
                continue;
            }
            for (i, port) in svc.ports.iter().enumerate() {
                endpoints.push((family, svc, i, index.endpoints(svc, port, family)));
            }
        }
    }
    let mut out = String::new();
    for family in [IpFamily::V4, IpFamily::V6] {
        let entries: Vec<Entry> = endpoints
            .iter()
            .filter(|(f, ..)| *f == family)
            .map(|(_, svc, i, eps)| {
                let port = &svc.ports[*i];
                let local = candidates(svc, eps, Some(node));
                let rule = if eps.is_empty() {
                    PortRule::NoEndpoints
                } else if local.is_empty() {
                    PortRule::NoLocalEndpoints
                } else {
                    PortRule::Translate(local)
                };
                Entry {
                    svc,
                    ip: svc.cluster_ip(family).expect("filtered on a ClusterIP"),
                    port: port.port,
                    protocol: port.protocol,
                    rule,
                }
            })
            .collect();
        let mut cluster_ips: Vec<IpAddr> = cluster
            .services
            .values()
            .filter_map(|s| s.cluster_ip(family))
            .collect();
        cluster_ips.sort();
        write_table(&mut out, family, node, &entries, &cluster_ips);
    }
    out
}

fn proto_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

/// `service-NS/NAME/PROTO/PORT`: nft identifiers may hold `/`, and namespaces and names are
/// DNS labels, so the name is readable and unique.
fn service_chain(e: &Entry) -> String {
    format!(
        "service-{}/{}/{}/{}",
        e.svc.key.namespace,
        e.svc.key.name,
        proto_name(e.protocol),
        e.port
    )
}

fn endpoint_addr(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

/// One family's table of a node: its sets and maps, the base chains, and a chain per Service
/// port and backend (as kube-proxy's nftables mode writes them).
fn write_table(
    out: &mut String,
    family: IpFamily,
    node: &str,
    entries: &[Entry],
    cluster_ips: &[IpAddr],
) {
    let (fam, addr, addr_type, cidr) = match family {
        IpFamily::V4 => ("ip", "ip", "ipv4_addr", SERVICE_CIDR_V4),
        IpFamily::V6 => ("ip6", "ip6", "ipv6_addr", SERVICE_CIDR_V6),
    };
    // Creating then deleting makes the delete valid whether or not the table exists; the
    // whole input is one transaction, so packets see the old ruleset or the new one.
    let _ = writeln!(out, "add table {fam} {TABLE}");
    let _ = writeln!(out, "delete table {fam} {TABLE}");
    let _ = writeln!(out, "table {fam} {TABLE} {{");
    let _ = writeln!(
        out,
        "\tcomment \"enforcer lab: kube-proxy (nftables mode) of node {node}\""
    );
    write_sets_and_maps(out, addr_type, entries, cluster_ips);
    write_base_chains(out);
    write_dispatch_chains(out, addr, cidr);
    write_service_chains(out, addr, entries);
    let _ = writeln!(out, "}}");
}

/// The ClusterIPs, and the maps from a Service port to its chain (`service-ips`) or to its
/// verdict when it has no (local) endpoint (`no-endpoint-services`).
fn write_sets_and_maps(
    out: &mut String,
    addr_type: &str,
    entries: &[Entry],
    cluster_ips: &[IpAddr],
) {
    let _ = writeln!(out, "\tset cluster-ips {{\n\t\ttype {addr_type}");
    if !cluster_ips.is_empty() {
        let list: Vec<String> = cluster_ips.iter().map(IpAddr::to_string).collect();
        let _ = writeln!(out, "\t\telements = {{ {} }}", list.join(", "));
    }
    let _ = writeln!(out, "\t}}");

    let key_type = format!("{addr_type} . inet_proto . inet_service : verdict");
    let key = |e: &Entry| format!("{} . {} . {}", e.ip, proto_name(e.protocol), e.port);
    let translated: Vec<String> = entries
        .iter()
        .filter(|e| matches!(e.rule, PortRule::Translate(_)))
        .map(|e| format!("{} : goto {}", key(e), service_chain(e)))
        .collect();
    let blocked: Vec<String> = entries
        .iter()
        .filter_map(|e| match e.rule {
            PortRule::NoEndpoints => Some(format!("{} : goto reject-chain", key(e))),
            PortRule::NoLocalEndpoints => Some(format!("{} : drop", key(e))),
            PortRule::Translate(_) => None,
        })
        .collect();
    for (name, elements) in [
        ("service-ips", &translated),
        ("no-endpoint-services", &blocked),
    ] {
        let _ = writeln!(out, "\tmap {name} {{\n\t\ttype {key_type}");
        if !elements.is_empty() {
            let _ = writeln!(out, "\t\telements = {{ {} }}", elements.join(", "));
        }
        let _ = writeln!(out, "\t}}");
    }
}

/// The chains on the netfilter hooks, jumping to the lab's own.
fn write_base_chains(out: &mut String) {
    // Numeric priorities: nft 1.0 accepts `dstnat` by name only in prerouting.
    let base = [
        (
            "filter-forward",
            "filter hook forward priority 0",
            &[
                "ct state new jump service-endpoints-check",
                "ct state new jump cluster-ips-check",
            ][..],
        ),
        (
            "filter-output",
            "filter hook output priority 0",
            &[
                "ct state new jump service-endpoints-check",
                "ct state new jump cluster-ips-check",
            ][..],
        ),
        (
            "nat-prerouting",
            "nat hook prerouting priority -100",
            &["jump services"][..],
        ),
        (
            "nat-output",
            "nat hook output priority -100",
            &["jump services"][..],
        ),
        (
            "nat-postrouting",
            "nat hook postrouting priority 100",
            &["jump masquerading"][..],
        ),
    ];
    for (name, hook, rules) in base {
        let _ = writeln!(out, "\tchain {name} {{\n\t\ttype {hook}; policy accept;");
        for r in rules {
            let _ = writeln!(out, "\t\t{r}");
        }
        let _ = writeln!(out, "\t}}");
    }
}

/// The chains that look a packet up in the maps and sets, masquerade and reject.
fn write_dispatch_chains(out: &mut String, addr: &str, cidr: &str) {
    let _ = writeln!(
        out,
        "\tchain services {{\n\t\t{addr} daddr . meta l4proto . th dport vmap @service-ips\n\t}}"
    );
    let _ = writeln!(
        out,
        "\tchain service-endpoints-check {{\n\t\t{addr} daddr . meta l4proto . th dport vmap @no-endpoint-services\n\t}}"
    );
    let _ = writeln!(
        out,
        "\tchain cluster-ips-check {{\n\t\t{addr} daddr @cluster-ips reject comment \"a port this ClusterIP does not have\"\n\t\t{addr} daddr {cidr} drop comment \"an unallocated ClusterIP\"\n\t}}"
    );
    let _ = writeln!(
        out,
        "\tchain mark-for-masquerade {{\n\t\tmeta mark set meta mark or {MASQUERADE_MARK}\n\t}}"
    );
    let _ = writeln!(
        out,
        "\tchain masquerading {{\n\t\tmeta mark & {MASQUERADE_MARK} == 0 return\n\t\tmeta mark set meta mark xor {MASQUERADE_MARK}\n\t\tmasquerade fully-random\n\t}}"
    );
    let _ = writeln!(out, "\tchain reject-chain {{\n\t\treject\n\t}}");
}

/// Per translated Service port: a chain choosing a backend at random, and a chain per backend
/// that DNATs to it (and marks a pod reaching itself for masquerading).
fn write_service_chains(out: &mut String, addr: &str, entries: &[Entry]) {
    for e in entries {
        let PortRule::Translate(backends) = &e.rule else {
            continue;
        };
        let chain = service_chain(e);
        let arms: Vec<String> = (0..backends.len())
            .map(|i| format!("{i} : goto endpoint-{}/{i}", &chain["service-".len()..]))
            .collect();
        let _ = writeln!(
            out,
            "\tchain {chain} {{\n\t\tnumgen random mod {} vmap {{ {} }}\n\t}}",
            backends.len(),
            arms.join(", ")
        );
        for (i, b) in backends.iter().enumerate() {
            let _ = writeln!(
                out,
                "\tchain endpoint-{}/{i} {{\n\t\t{addr} saddr {} jump mark-for-masquerade\n\t\tmeta l4proto {} dnat to {}\n\t}}",
                &chain["service-".len()..],
                b.ip,
                proto_name(e.protocol),
                endpoint_addr(b.ip, b.port)
            );
        }
    }
}

/// Replaces the node's kube-proxy tables with `rules` (one transaction) and flushes the
/// node's conntrack table.
pub fn apply(netns: &str, rules: &str) -> anyhow::Result<()> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", netns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running nft (Debian package nftables; `cargo xtask setup` installs it)")?;
    child
        .stdin
        .take()
        .expect("stdin was piped")
        .write_all(rules.as_bytes())
        .context("writing the ruleset to nft")?;
    let out = child.wait_with_output().context("waiting for nft")?;
    if !out.status.success() {
        bail!(
            "nft -f - in {netns} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let ns = Netns::open_named(netns)?;
    ns.run(flush_conntrack)?
        .with_context(|| format!("flushing the conntrack table of {netns}"))
}

/// Deletes every conntrack entry of the calling thread's network namespace: one ctnetlink
/// `IPCTNL_MSG_CT_DELETE` without a tuple (a flush), family unspecified (both), acknowledged.
/// kube-proxy removes stale UDP entries when endpoints go; between lab steps nothing is open,
/// so flushing everything is the simple equivalent.
fn flush_conntrack() -> std::io::Result<()> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    const NETLINK_NETFILTER: libc::c_int = 12;
    const NFNL_SUBSYS_CTNETLINK: u16 = 1;
    const IPCTNL_MSG_CT_DELETE: u16 = 2;
    // SAFETY: plain syscall; the result is checked and owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            NETLINK_NETFILTER,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // nlmsghdr (16 bytes) + nfgenmsg (family, version, res_id).
    let mut msg = [0u8; 20];
    msg[0..4].copy_from_slice(&20u32.to_ne_bytes());
    msg[4..6].copy_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE).to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
    msg[6..8].copy_from_slice(&flags.to_ne_bytes());
    msg[8..12].copy_from_slice(&1u32.to_ne_bytes());
    // SAFETY: an all-zero sockaddr_nl is valid; nl_pid 0 addresses the kernel.
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as u16;
    // SAFETY: `msg` and `kernel` are valid for the lengths given.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&kernel as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if sent < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut reply = [0u8; 256];
    // SAFETY: `reply` is valid for its length.
    let n = unsafe { libc::recv(fd.as_raw_fd(), reply.as_mut_ptr().cast(), reply.len(), 0) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // The ack is an NLMSG_ERROR whose error field (after the header) is 0 or -errno.
    let n = n as usize;
    let ty = u16::from_ne_bytes([reply[4], reply[5]]);
    if n >= 20 && ty == libc::NLMSG_ERROR as u16 {
        let err = i32::from_ne_bytes([reply[16], reply[17], reply[18], reply[19]]);
        // ENOENT: nothing to flush.
        if err != 0 && err != -libc::ENOENT {
            return Err(std::io::Error::from_raw_os_error(-err));
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "kube_proxy_tests.rs"]
mod tests;
