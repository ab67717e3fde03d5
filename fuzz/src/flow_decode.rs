//! `flow_decode`: bytes as a ring-buffer record (and, when long enough, as the sweeper's
//! connection-end record), decoded, attributed and rendered as the flow sink, the flow log and
//! `enforcer flows` do. A newer kernel object, a torn record or a corrupted flow log must
//! never take the agent down: every step returns or renders, none panics.
//!
//! Checked: a short record is an error of its size; a decoded event's record survives the
//! flow log's JSON (what `enforcer flows --file` reads back is what was written); both table
//! renderings and the JSON printers succeed.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use enforcer_agent::flows::decode::{decode, decode_end, DecodeError};
use enforcer_agent::flows::enrich::{Context, FlowRecord};
use enforcer_agent::flows::table::{OutputFormat, Printer, TableFormat};
use enforcer_agent::model::PodKey;
use enforcer_common::flow::{ConnEndEvent, FlowEvent, EV_F_END};

/// Attribution as the agent would have it: the kernel tests' cluster and one policy, x/a as
/// endpoint 1, x/b as endpoint 2 (so records name pods, rules and interfaces).
fn context() -> &'static Context {
    static CTX: OnceLock<Context> = OnceLock::new();
    CTX.get_or_init(|| {
        const POLICY: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-in, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{podSelector: {matchLabels: {pod: b}}}, {ipBlock: {cidr: 10.0.0.0/8}}]
    ports: [{port: 80}, {port: 53, protocol: UDP}]
"#;
        let cluster = enforcer_tests::cluster(&[enforcer_tests::CLUSTER, POLICY]);
        let tables = enforcer_tests::tables(POLICY);
        let endpoints = BTreeMap::from([
            (1, (PodKey::new("x", "a"), "veth-a".to_string())),
            (2, (PodKey::new("x", "b"), "veth-b".to_string())),
        ]);
        Context::new("node", &cluster, tables, endpoints)
    })
}

pub fn run(data: &[u8]) {
    let flow_size = std::mem::size_of::<FlowEvent>();
    let end_size = std::mem::size_of::<ConnEndEvent>();
    match decode(data) {
        Ok(ev) => render(&context().record(
            &ev,
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_764_637_200_123),
        )),
        Err(DecodeError::Size { got, expected }) => {
            assert_eq!(got, data.len());
            assert!(
                expected == flow_size || expected == end_size,
                "size error naming {expected} bytes"
            );
            assert!(got < expected);
        }
        Err(DecodeError::Family(_)) => assert!(data.len() >= flow_size),
    }
    // The sweeper's records come without the ring buffer's framing: any 128 bytes.
    if data.len() >= end_size {
        // SAFETY: the length is checked; ConnEndEvent is plain old data (any bit pattern is
        // valid); read_unaligned has no alignment requirement.
        let c: ConnEndEvent =
            unsafe { std::ptr::read_unaligned(data.as_ptr() as *const ConnEndEvent) };
        if let Ok(ev) = decode_end(&c) {
            assert!(ev.end.is_some(), "a connection end decodes as one");
            render(&context().record(&ev, std::time::UNIX_EPOCH));
        }
    } else if data.len() >= flow_size && data[..flow_size].len() == flow_size {
        // A record that says it is an end but is too short for one is an error, not a read
        // past its end.
        // SAFETY: as above, for the shorter record.
        let e: FlowEvent = unsafe { std::ptr::read_unaligned(data.as_ptr() as *const FlowEvent) };
        if e.flags & EV_F_END != 0 {
            assert!(matches!(decode(data), Err(DecodeError::Size { .. })));
        }
    }
}

fn render(record: &FlowRecord) {
    let json = serde_json::to_string(record).expect("a record serialises");
    let back: FlowRecord = serde_json::from_str(&json).expect("the flow log reads its records");
    assert_eq!(
        &back, record,
        "a record changed through the flow log: {json}"
    );
    for table in [
        TableFormat::default(),
        TableFormat {
            color: true,
            utc: true,
        },
    ] {
        let line = table.flow(record);
        assert!(
            !line.contains('\n'),
            "a table line with a line break: {line:?}"
        );
    }
    for format in [OutputFormat::Table, OutputFormat::Json, OutputFormat::Jsonl] {
        let mut p = Printer::new(Vec::new(), format, TableFormat::default(), false);
        p.flow(record).expect("printing to memory");
        p.lost(3).expect("printing to memory");
    }
}
