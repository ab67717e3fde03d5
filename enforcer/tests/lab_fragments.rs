//! Real fragments between pods of a lab, both families, through the real agent: datagrams
//! larger than the MTU fragmented by the sending pod's kernel, and fragments crafted with a raw
//! socket and sent in reverse order (reordered, as a network can). Into a pod isolated for
//! ingress, a reordered allowed datagram is delivered and a denied one is not; out of a pod
//! isolated for egress, fragments without their first fragment are dropped; tiny first
//! fragments and fragments overlapping the TCP header are dropped and reported. Needs root.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use enforcer_agent::netns::Netns;
use enforcer_lab::instance::LabState;
use socket2::{Domain, Protocol, SockAddr, Type};

mod common;
use common::{lab_name, lab_up, root};

const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {ns: x}}
---
apiVersion: v1
kind: Namespace
metadata: {name: y, labels: {ns: y}}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: x, labels: {app: server}}
spec: {containers: [{name: c, image: agnhost, ports: [{containerPort: 80}]}]}
status: {podIP: 10.244.1.10, podIPs: [{ip: 10.244.1.10}, {ip: "fd00:10:244:1::10"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: x, labels: {app: client}}
spec: {containers: [{name: c, image: agnhost, ports: [{containerPort: 80}]}]}
status: {podIP: 10.244.1.11, podIPs: [{ip: 10.244.1.11}, {ip: "fd00:10:244:1::11"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: free, namespace: y, labels: {app: free}}
spec: {containers: [{name: c, image: agnhost, ports: [{containerPort: 80}]}]}
status: {podIP: 10.244.2.11, podIPs: [{ip: 10.244.2.11}, {ip: "fd00:10:244:2::11"}]}
"#;

/// x/server takes 7000/UDP and 7001/TCP from x/client and from namespace y (not 7002/UDP);
/// x/client may only send to x/server on 7000/UDP.
const POLICIES: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: server-in, namespace: x}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}, {namespaceSelector: {matchLabels: {ns: y}}}]
    ports: [{port: 7000, protocol: UDP}, {port: 7001, protocol: TCP}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-out, namespace: x}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: server}}}]
    ports: [{port: 7000, protocol: UDP}]
"#;

const UDP: u8 = 17;
const TCP: u8 = 6;

struct Pod {
    netns: Netns,
    v4: IpAddr,
    v6: IpAddr,
}

impl Pod {
    fn ip(&self, v6: bool) -> IpAddr {
        if v6 {
            self.v6
        } else {
            self.v4
        }
    }

    fn udp(&self, v6: bool, port: u16) -> UdpSocket {
        let s = self
            .netns
            .run(|| UdpSocket::bind(SocketAddr::new(self.ip(v6), port)))
            .unwrap()
            .expect("a UDP socket in the pod");
        s.set_read_timeout(Some(Duration::from_millis(700)))
            .unwrap();
        s
    }

    /// Sends IP packets as they are (the kernel only fills in the IPv4 checksum).
    fn send_raw(&self, v6: bool, dst: IpAddr, packets: &[Vec<u8>]) {
        let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
        // IPPROTO_RAW: the caller writes the IP header (IP_HDRINCL, and for IPv6 the same).
        let raw = self
            .netns
            .socket(domain, Type::RAW, Some(Protocol::from(255)))
            .expect("a raw socket in the pod");
        for p in packets {
            raw.send_to(p, &SockAddr::from(SocketAddr::new(dst, 0)))
                .expect("sending a crafted fragment");
        }
    }
}

fn pod(state: &LabState, key: &str) -> Pod {
    let p = state.pod(key).unwrap_or_else(|| panic!("{key} in the lab"));
    Pod {
        netns: Netns::open_named(&p.netns).expect("the pod's namespace"),
        v4: IpAddr::V4(p.ipv4),
        v6: IpAddr::V6(p.ipv6.expect("dual stack")),
    }
}

fn sum16(data: &[u8]) -> u32 {
    data.chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

fn octets(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// An L4 segment (`hdr` with its checksum field at `csum_at`, then `payload`) with a valid
/// checksum over the pseudo-header.
fn l4(src: IpAddr, dst: IpAddr, proto: u8, hdr: &[u8], csum_at: usize, payload: &[u8]) -> Vec<u8> {
    let mut seg = hdr.to_vec();
    seg.extend_from_slice(payload);
    let mut pseudo = octets(src);
    pseudo.extend(octets(dst));
    if src.is_ipv6() {
        pseudo.extend((seg.len() as u32).to_be_bytes());
        pseudo.extend([0, 0, 0, proto]);
    } else {
        pseudo.extend([0, proto]);
        pseudo.extend((seg.len() as u16).to_be_bytes());
    }
    let sum = fold(sum16(&pseudo) + sum16(&seg));
    seg[csum_at..csum_at + 2].copy_from_slice(&sum.to_be_bytes());
    seg
}

fn udp_datagram(src: IpAddr, dst: IpAddr, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0u8; 8];
    h[0..2].copy_from_slice(&40000u16.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    l4(src, dst, UDP, &h, 6, payload)
}

fn tcp_syn(src: IpAddr, dst: IpAddr, dport: u16) -> Vec<u8> {
    let mut h = vec![0u8; 20];
    h[0..2].copy_from_slice(&40001u16.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[12] = 5 << 4;
    h[13] = 0x02;
    h[14..16].copy_from_slice(&65535u16.to_be_bytes());
    l4(src, dst, TCP, &h, 16, &[0u8; 4])
}

/// One fragment: `data` at byte `offset` of the fragmentable part. IPv6 with `dstopts` puts a
/// destination-options header before the fragment header.
#[allow(clippy::too_many_arguments, reason = "one fragment's fields")]
fn fragment(
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    id: u32,
    offset: usize,
    more: bool,
    data: &[u8],
    dstopts: bool,
) -> Vec<u8> {
    assert_eq!(offset % 8, 0);
    if src.is_ipv4() {
        let mut h = vec![0u8; 20];
        h[0] = 0x45;
        h[2..4].copy_from_slice(&((20 + data.len()) as u16).to_be_bytes());
        h[4..6].copy_from_slice(&(id as u16).to_be_bytes());
        let fo = (offset / 8) as u16 | if more { 0x2000 } else { 0 };
        h[6..8].copy_from_slice(&fo.to_be_bytes());
        h[8] = 64;
        h[9] = proto;
        h[12..16].copy_from_slice(&octets(src));
        h[16..20].copy_from_slice(&octets(dst));
        let sum = fold(sum16(&h));
        h[10..12].copy_from_slice(&sum.to_be_bytes());
        h.extend_from_slice(data);
        return h;
    }
    let mut ext = Vec::new();
    if dstopts {
        // Next header: fragment; 8 bytes; PadN of 4.
        ext.extend([44, 0, 1, 4, 0, 0, 0, 0]);
    }
    let fo = (offset as u16) | u16::from(more);
    ext.extend([proto, 0]);
    ext.extend(fo.to_be_bytes());
    ext.extend(id.to_be_bytes());
    let mut h = vec![0u8; 40];
    h[0] = 0x60;
    h[4..6].copy_from_slice(&((ext.len() + data.len()) as u16).to_be_bytes());
    h[6] = if dstopts { 60 } else { 44 };
    h[7] = 64;
    h[8..24].copy_from_slice(&octets(src));
    h[24..40].copy_from_slice(&octets(dst));
    h.extend(ext);
    h.extend_from_slice(data);
    h
}

/// A datagram's fragments in order, `piece` bytes of fragmentable part each.
fn fragments(
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    id: u32,
    datagram: &[u8],
    piece: usize,
    dstopts: bool,
) -> Vec<Vec<u8>> {
    let chunks: Vec<&[u8]> = datagram.chunks(piece).collect();
    chunks
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let more = i + 1 < chunks.len();
            fragment(src, dst, proto, id, i * piece, more, c, dstopts)
        })
        .collect()
}

/// The payload `sock` receives next, if any within its timeout.
fn received(sock: &UdpSocket) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 65536];
    sock.recv_from(&mut buf)
        .ok()
        .map(|(n, _)| buf[..n].to_vec())
}

fn payload(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()
}

fn records(log: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Waits for a drop record with `reason`, the given direction and destination port, of the
/// family `v6` says.
fn wait_for_drop(
    log: &Path,
    v6: bool,
    reason: &str,
    direction: &str,
    port: u16,
) -> serde_json::Value {
    let start = Instant::now();
    loop {
        if let Some(r) = records(log).into_iter().find(|r| {
            r["verdict"] == "dropped"
                && r["reason"] == reason
                && r["direction"] == direction
                && r["dst"]["port"] == port
                && r["dst"]["ip"]
                    .as_str()
                    .is_some_and(|ip| ip.contains(':') == v6)
        }) {
            return r;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no {reason} drop ({direction}, port {port}, IPv6 {v6}) in {:#?}",
            records(log)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn metrics(node: &Netns) -> String {
    let mut stream = node
        .run(|| std::net::TcpStream::connect("127.0.0.1:9966"))
        .unwrap()
        .expect("metrics endpoint");
    stream.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).unwrap();
    body
}

fn metric(body: &str, name: &str) -> u64 {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn real_fragments_in_order_and_reversed() {
    if !root() {
        return;
    }
    let name = lab_name("fr");
    let scenario = std::env::temp_dir().join(format!("{name}-scenario"));
    std::fs::create_dir_all(&scenario).unwrap();
    std::fs::write(scenario.join("cluster.yaml"), CLUSTER).unwrap();
    std::fs::write(scenario.join("policies.yaml"), POLICIES).unwrap();
    std::fs::write(
        scenario.join("probes.yaml"),
        "- port: 80\n  protocol: TCP\n",
    )
    .unwrap();
    let _down = lab_up(Some(&scenario), &name, &[]);
    let state = LabState::load(&name).expect("the lab's state");
    let log: PathBuf = state.paths.flow_log.clone();
    let (server, client, free) = (
        pod(&state, "x/server"),
        pod(&state, "x/client"),
        pod(&state, "y/free"),
    );

    for v6 in [false, true] {
        let fam = if v6 { "IPv6" } else { "IPv4" };
        let dst = server.ip(v6);
        let allowed = server.udp(v6, 7000);
        let denied = server.udp(v6, 7002);

        // Larger than the veth's MTU (1500): the sending kernel fragments, first fragment
        // first. Out of x/client (isolated for egress) into x/server (isolated for ingress).
        let big = payload(4000, 1);
        let sock = client.udp(v6, 0);
        sock.send_to(&big, SocketAddr::new(dst, 7000)).unwrap();
        assert_eq!(
            received(&allowed).as_deref(),
            Some(&big[..]),
            "{fam}: a fragmented datagram in order"
        );
        let sock = free.udp(v6, 0);
        sock.send_to(&big, SocketAddr::new(dst, 7000)).unwrap();
        assert_eq!(
            received(&allowed).as_deref(),
            Some(&big[..]),
            "{fam}: from y"
        );
        sock.send_to(&big, SocketAddr::new(dst, 7002)).unwrap();
        assert_eq!(received(&denied), None, "{fam}: to a denied port");

        // Crafted and reversed (last fragment first), into x/server: the later fragments
        // wait in x/server's kernel until the first one, judged, completes the datagram. Also
        // with a destination-options header before the fragment header (IPv6).
        for (i, dstopts) in [false, true].into_iter().enumerate() {
            if dstopts && !v6 {
                continue;
            }
            let data = payload(2500, 2 + i as u8);
            let id = 0x5100 + i as u32 + if v6 { 0x10 } else { 0 };
            let dgram = udp_datagram(free.ip(v6), dst, 7000, &data);
            let mut frags = fragments(free.ip(v6), dst, UDP, id, &dgram, 1024, dstopts);
            frags.reverse();
            free.send_raw(v6, dst, &frags);
            assert_eq!(
                received(&allowed).as_deref(),
                Some(&data[..]),
                "{fam}: reversed fragments (destination options: {dstopts})"
            );
        }
        // Reversed, to a denied port: the first fragment is dropped, nothing is delivered.
        let data = payload(2500, 9);
        let dgram = udp_datagram(free.ip(v6), dst, 7002, &data);
        let mut frags = fragments(free.ip(v6), dst, UDP, 0x5200, &dgram, 1024, false);
        frags.reverse();
        free.send_raw(v6, dst, &frags);
        assert_eq!(received(&denied), None, "{fam}: reversed, denied port");

        // Reversed out of x/client, isolated for egress: its later fragments have no judged
        // first fragment when they leave, and are dropped (a pod's own stack sends in order,
        // as above); the datagram never completes.
        let data = payload(2500, 10);
        let dgram = udp_datagram(client.ip(v6), dst, 7000, &data);
        let mut frags = fragments(client.ip(v6), dst, UDP, 0x5300, &dgram, 1024, false);
        frags.reverse();
        client.send_raw(v6, dst, &frags);
        assert_eq!(received(&allowed), None, "{fam}: reversed out of x/client");
        wait_for_drop(&log, v6, "fragment_without_head", "egress", 0);

        // TCP to an allowed port: a tiny first fragment (8 bytes: ports and sequence number)
        // is dropped; a first fragment with the whole header passes, and a fragment at offset
        // 1 (over the flags and data offset) is dropped. Both at the first hook they meet,
        // y/free's egress, although it is not isolated: like a malformed packet, they are
        // never legitimate.
        let syn = tcp_syn(free.ip(v6), dst, 7001);
        let tiny = fragment(free.ip(v6), dst, TCP, 0x5400, 0, true, &syn[..8], false);
        free.send_raw(v6, dst, &[tiny]);
        let r = wait_for_drop(&log, v6, "tiny_fragment", "egress", 7001);
        assert_eq!(r["src"]["pod"], "free", "{r}");
        let head = fragment(free.ip(v6), dst, TCP, 0x5500, 0, true, &syn, false);
        let over = fragment(
            free.ip(v6),
            dst,
            TCP,
            0x5500,
            8,
            false,
            &[0x50, 0x11, 0, 0, 0, 0, 0, 0],
            false,
        );
        free.send_raw(v6, dst, &[head, over]);
        let r = wait_for_drop(&log, v6, "fragment_overlap", "egress", 7001);
        assert_eq!(r["fragment"], true, "{r}");
    }

    // The kernel's counters, through the agent's metrics: every reversed datagram into
    // x/server passed two headless fragments (3 datagrams in IPv6, 2 in IPv4).
    let node = Netns::open_named(&state.node_netns).expect("the node namespace");
    let start = Instant::now();
    loop {
        let body = metrics(&node);
        let headless = metric(&body, "enforcer_fragments_without_head_passed_total");
        let overlap = metric(&body, "enforcer_drop_total{reason=\"fragment_overlap\"}");
        let tiny = metric(&body, "enforcer_drop_total{reason=\"tiny_fragment\"}");
        let without = metric(
            &body,
            "enforcer_drop_total{reason=\"fragment_without_head\"}",
        );
        if headless >= 10 && overlap >= 2 && tiny >= 2 && without >= 4 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "headless {headless}, overlap {overlap}, tiny {tiny}, without head {without}:\n{body}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let _ = std::fs::remove_dir_all(&scenario);
}
