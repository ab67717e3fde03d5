//! `packet`: a few packets, both directions, through the real program at x/a's veth
//! (`BPF_PROG_TEST_RUN`), each verdict (pass, or drop with its reason) against the model's
//! ([`model`]). An input is a short sequence, so that connections, replies, resets and the
//! fragments of one datagram in any order meet in one input.
//!
//! On a disagreement the target panics (libFuzzer keeps the input as a crash) with what the
//! disagreement means first: a packet the model drops passing is a possible bypass, a packet
//! the model passes dropped is a lost legitimate packet. Apart from the exact comparison, two
//! invariants that need no model of the details are checked on every packet the kernel
//! passes: nothing on a (protocol, port) that no rule of the direction allows opens a flow of
//! a peer other than the node and y/c, and no later fragment leaves x/a (isolated for egress)
//! without a first fragment that passed.

pub mod build;
pub mod kernel;
pub mod model;
pub mod policy;

use arbitrary::{Arbitrary, Unstructured};
use enforcer_common::reason::DropReason;

use build::Spec;
use model::{Fragment, Kind, Model, Prediction, Verdict};
use policy::Identity;

/// Packets per input: enough for a handshake with a reset, or four fragments in any order.
const MAX_PACKETS: usize = 6;
/// `BPF_PROG_TEST_RUN` takes a frame of at least an Ethernet header and at most about a page.
const FRAME_LEN: std::ops::RangeInclusive<usize> = 14..=3000;

pub fn run(data: &[u8]) {
    let Ok(specs) = Vec::<Spec>::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let specs = build::resolve(&specs[..specs.len().min(MAX_PACKETS)]);
    let frames: Vec<(bool, Vec<u8>)> = specs
        .iter()
        .map(|s| (s.ingress, build::frame(s)))
        .filter(|(_, f)| FRAME_LEN.contains(&f.len()))
        .collect();
    check_frames(&frames);
}

thread_local! {
    /// How many packets got each outcome (the model's prediction, or why none was checked):
    /// what a replay of the corpus covers (`summary`).
    static OUTCOMES: std::cell::RefCell<std::collections::BTreeMap<String, u64>> =
        const { std::cell::RefCell::new(std::collections::BTreeMap::new()) };
}

fn count(outcome: String) {
    OUTCOMES.with(|o| *o.borrow_mut().entry(outcome).or_default() += 1);
}

/// The outcomes of the packets checked so far by this thread, one per line.
pub fn summary() -> String {
    OUTCOMES.with(|o| {
        o.borrow()
            .iter()
            .map(|(k, n)| format!("{n:>8}  {k}\n"))
            .collect()
    })
}

/// Runs frames (`ingress`, bytes) through a fresh state of the kernel and of the model.
pub fn check_frames(frames: &[(bool, Vec<u8>)]) {
    kernel::with(|k| {
        k.reset();
        let mut m = Model::default();
        let mut egress_heads = std::collections::HashSet::new();
        for (i, (ingress, frame)) in frames.iter().enumerate() {
            let parsed = model::parse(frame, *ingress).ok();
            let tracked = parsed.is_some_and(|p| m.tracks(&p.tuple));
            let expected = m.packet(frame, *ingress);
            let got = match k.run(frame, *ingress) {
                Ok(v) => v,
                // test_run refuses an IP frame shorter than its IP header (the program would
                // find it malformed); such a frame changes no state in either.
                Err(e) => {
                    count("refused by test_run (malformed)".into());
                    assert_eq!(
                        expected,
                        Prediction::Sure(Verdict::Drop(DropReason::Malformed)),
                        "test_run refused a frame of {} bytes ({e}) the model does not find malformed: {}",
                        frame.len(),
                        hex(frame)
                    );
                    continue;
                }
            };
            invariants(
                *ingress,
                parsed.as_ref(),
                tracked,
                got,
                &mut egress_heads,
                i,
                frames,
            );
            count(match expected {
                Prediction::Sure(v) => format!("{v:?}"),
                Prediction::Unsure(why) => format!("not predicted: {why}"),
            });
            match expected {
                Prediction::Sure(v) if v != got => panic!(
                    "{}: packet {i} of {} ({}), kernel {got:?}, model {v:?}\nframe: {}\nparsed: {parsed:?}",
                    meaning(v, got),
                    frames.len(),
                    if *ingress { "into x/a" } else { "out of x/a" },
                    hex(frame),
                ),
                Prediction::Sure(_) => {}
                // The model's state may differ from here on.
                Prediction::Unsure(_) => return,
            }
        }
    })
}

fn meaning(model: Verdict, kernel: Verdict) -> &'static str {
    match (model, kernel) {
        (Verdict::Drop(_), Verdict::Pass) => {
            "POSSIBLE BYPASS: the kernel passed what the model drops"
        }
        (Verdict::Pass, Verdict::Drop(_)) => {
            "LEGITIMATE PACKET DROPPED: the kernel dropped what the model passes"
        }
        _ => "DROP REASONS DIFFER",
    }
}

/// The checks that hold whatever the model's details: on a passed packet, a new flow of a
/// peer the policy does not wave through entirely needs a (protocol, port) some rule allows;
/// a later fragment out of x/a needs a first fragment of its datagram that passed.
fn invariants(
    ingress: bool,
    parsed: Option<&model::Parsed>,
    tracked: bool,
    got: Verdict,
    egress_heads: &mut std::collections::HashSet<model::Datagram>,
    i: usize,
    frames: &[(bool, Vec<u8>)],
) {
    let Some(p) = parsed else { return };
    if got != Verdict::Pass {
        return;
    }
    // Any first fragment that passed heads its datagram, an ICMP error's too.
    if let (Fragment::First { .. }, Some(d)) = (p.fragment, p.datagram) {
        egress_heads.insert(d);
    }
    if p.kind != Kind::Plain {
        return;
    }
    let peer = if ingress { p.tuple.src } else { p.tuple.dst };
    let v6 = p.v6;
    let peer_ip = if v6 {
        std::net::IpAddr::V6(peer.into())
    } else {
        std::net::IpAddr::V4(
            std::net::Ipv6Addr::from(peer)
                .to_ipv4_mapped()
                .expect("mapped"),
        )
    };
    match p.fragment {
        Fragment::Later { .. } => {
            let d = p.datagram.expect("a fragment has a datagram");
            assert!(
                ingress || egress_heads.contains(&d),
                "BYPASS: a later fragment left x/a without a first fragment that passed (packet {i}: {})",
                hex(&frames[i].1)
            );
        }
        Fragment::First { .. } | Fragment::None => {
            let who = policy::identity(peer_ip);
            let waved = matches!(who, Some(Identity::Node | Identity::YC));
            if !waved && !tracked {
                assert!(
                    policy::any_peer_allows(ingress, p.tuple.proto, p.tuple.dport),
                    "BYPASS: a new flow on protocol {} port {} passed {} though no rule allows it (packet {i}: {})",
                    p.tuple.proto,
                    p.tuple.dport,
                    if ingress { "into x/a" } else { "out of x/a" },
                    hex(&frames[i].1)
                );
            }
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
