//! One readable line per flow, for people:
//!
//! ```text
//! Nov 23 18:40:48.822  DROPPED  ingress  dev/debug:41234 -> prod/backend:8080 TCP SYN  policy_denied: isolated by prod/default-deny-ingress
//! Nov 23 18:40:49.010  ALLOWED  ingress  dev/frontend:41300 -> prod/backend:8080 TCP SYN  by prod/backend-from-frontend ingress[0]
//! Nov 23 18:40:51.377  ENDED    ingress  dev/frontend:41300 -> prod/backend:8080 TCP  closed after 2.367 s, sent 6 pkts 512 B, received 4 pkts 2.1 kB  by prod/backend-from-frontend ingress[0]
//! ```
//!
//! Colour (ANSI) only when asked for, which the CLI does when stdout is a terminal.

use std::io::{self, Write};
use std::net::IpAddr;

use super::enrich::{FlowEnd, FlowRecord};
use crate::compile::tables::Direction;

const RED: &str = "\x1b[1;31m";
const GREEN: &str = "\x1b[1;32m";
const YELLOW: &str = "\x1b[1;33m";
const BLUE: &str = "\x1b[1;34m";
const RESET: &str = "\x1b[0m";

/// How lines are rendered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableFormat {
    /// ANSI colours: dropped red, allowed green, ended blue, loss markers yellow.
    pub color: bool,
    /// Times in UTC instead of the local time zone.
    pub utc: bool,
}

fn dir_word(d: Direction) -> &'static str {
    match d {
        Direction::Ingress => "ingress",
        Direction::Egress => "egress",
    }
}

/// `ns/pod:port`, or the address when the end is not a known pod (`[v6]:port`); a flow sent
/// to a Service shows it before the backend (`service y/web:80 => y/web-1:8080`).
pub fn endpoint(e: &FlowEnd) -> String {
    let host = match (&e.namespace, &e.pod) {
        (Some(ns), Some(pod)) => format!("{ns}/{pod}"),
        _ => match e.ip {
            IpAddr::V6(ip) if e.port.is_some() => format!("[{ip}]"),
            ip => ip.to_string(),
        },
    };
    let end = match e.port {
        Some(p) => format!("{host}:{p}"),
        None => host,
    };
    match &e.service {
        Some(s) => format!("service {}:{} => {end}", s.name, s.port),
        None => end,
    }
}

/// Bytes for people: `512 B`, `2.1 kB`, `3.4 MB` (powers of 1000).
fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["kB", "MB", "GB", "TB"];
    if n < 1000 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1000.0;
    let mut unit = 0;
    while v >= 1000.0 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// Why: the rule that allowed the flow, or the drop reason and the isolating policies; for a
/// connection's end, how it ended and what it carried first.
pub fn attribution(r: &FlowRecord) -> String {
    if r.verdict.eq_ignore_ascii_case("audit") {
        let mut line = "policy_denied (audit mode: passed)".to_string();
        if !r.isolated_by.is_empty() {
            line.push_str(&format!(": isolated by {}", r.isolated_by.join(", ")));
        }
        return line;
    }
    if let Some(end) = &r.end {
        let mut line = format!(
            "{} after {}.{:03} s, sent {} pkts {}, received {} pkts {}",
            end.reason,
            end.duration_ms / 1000,
            end.duration_ms % 1000,
            end.packets_sent,
            bytes(end.bytes_sent),
            end.packets_received,
            bytes(end.bytes_received)
        );
        if let Some(rule) = &r.rule {
            line.push_str(&format!(
                "  by {} {}[{}]",
                rule.policy,
                dir_word(rule.direction),
                rule.index
            ));
        }
        return line;
    }
    if r.verdict.eq_ignore_ascii_case("dropped") {
        let reason = r.reason.as_deref().unwrap_or("dropped");
        if r.isolated_by.is_empty() {
            reason.to_string()
        } else {
            format!("{reason}: isolated by {}", r.isolated_by.join(", "))
        }
    } else {
        match &r.rule {
            Some(rule) => format!(
                "by {} {}[{}]",
                rule.policy,
                dir_word(rule.direction),
                rule.index
            ),
            None => r.detail.to_string(),
        }
    }
}

impl TableFormat {
    /// The line of a record (without the newline).
    pub fn flow(&self, r: &FlowRecord) -> String {
        let dropped = r.verdict.eq_ignore_ascii_case("dropped");
        let audit = r.verdict.eq_ignore_ascii_case("audit");
        let verdict = if r.end.is_some() {
            "ENDED  ".to_string()
        } else if audit {
            "AUDIT  ".to_string()
        } else {
            r.verdict.to_ascii_uppercase()
        };
        let verdict = if self.color {
            let c = if r.end.is_some() {
                BLUE
            } else if audit {
                YELLOW
            } else if dropped {
                RED
            } else {
                GREEN
            };
            format!("{c}{verdict}{RESET}")
        } else {
            verdict
        };
        let mut proto = r.protocol.to_string();
        if let Some(icmp) = &r.icmp {
            match &icmp.name {
                Some(name) => proto.push_str(&format!(" {name}")),
                None => proto.push_str(&format!(" type {} code {}", icmp.kind, icmp.code)),
            }
        }
        if !r.tcp_flags.is_empty() {
            proto.push(' ');
            proto.push_str(&r.tcp_flags);
        }
        if r.reply {
            proto.push_str(" reply");
        }
        if r.fragment {
            proto.push_str(" fragment");
        }
        format!(
            "{}  {verdict}  {:<7}  {} -> {} {proto}  {}",
            timestamp(&r.time, self.utc),
            dir_word(r.direction),
            endpoint(&r.src),
            endpoint(&r.dst),
            attribution(r),
        )
    }

    /// The line that stands for records this reader lost.
    pub fn lost(&self, count: u64) -> String {
        let text = format!("LOST  {count} flows were skipped (this reader was too slow)");
        if self.color {
            format!("{YELLOW}{text}{RESET}")
        } else {
            text
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// One readable line per flow.
    Table,
    /// Indented JSON objects.
    Json,
    /// One JSON record per line (the flow log format, readable with --file).
    Jsonl,
}

/// Writes flows (and loss markers) in the chosen format.
pub struct Printer<W: Write> {
    out: W,
    format: OutputFormat,
    table: TableFormat,
    /// Flush after every line (following: lines should appear as they happen).
    flush_each: bool,
    flows: u64,
}

impl<W: Write> Printer<W> {
    pub fn new(out: W, format: OutputFormat, table: TableFormat, flush_each: bool) -> Self {
        Printer {
            out,
            format,
            table,
            flush_each,
            flows: 0,
        }
    }

    /// Flows printed so far.
    pub fn flows(&self) -> u64 {
        self.flows
    }

    fn end_line(&mut self) -> io::Result<()> {
        self.out.write_all(b"\n")?;
        if self.flush_each {
            self.out.flush()?;
        }
        Ok(())
    }

    pub fn flow(&mut self, r: &FlowRecord) -> io::Result<()> {
        self.flows += 1;
        let written = match self.format {
            OutputFormat::Table => self.out.write_all(self.table.flow(r).as_bytes()),
            OutputFormat::Json => {
                serde_json::to_writer_pretty(&mut self.out, r).map_err(io::Error::from)
            }
            OutputFormat::Jsonl => serde_json::to_writer(&mut self.out, r).map_err(io::Error::from),
        };
        written.and_then(|()| self.end_line())
    }

    pub fn lost(&mut self, count: u64) -> io::Result<()> {
        let written = match self.format {
            OutputFormat::Table => self.out.write_all(self.table.lost(count).as_bytes()),
            OutputFormat::Json | OutputFormat::Jsonl => {
                write!(self.out, r#"{{"type":"lost","count":{count}}}"#)
            }
        };
        written.and_then(|()| self.end_line())
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

/// `Nov 23 18:40:48.822`; the record's own text when it is not RFC 3339.
pub fn timestamp(rfc3339: &str, utc: bool) -> String {
    let Ok(t) = humantime::parse_rfc3339_weak(rfc3339) else {
        return rfc3339.to_string();
    };
    let Ok(since_epoch) = t.duration_since(std::time::UNIX_EPOCH) else {
        return rfc3339.to_string();
    };
    let secs = since_epoch.as_secs() as i64;
    let offset = if utc { 0 } else { local_offset(secs) };
    format_civil(secs + offset, since_epoch.subsec_millis())
}

/// `secs` (since the epoch, already shifted into the wanted zone) as `Mon DD HH:MM:SS.mmm`.
fn format_civil(secs: i64, millis: u32) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = secs.div_euclid(86_400);
    let tod = secs.rem_euclid(86_400);
    // Days to civil date, after Howard Hinnant's `civil_from_days`
    // (https://howardhinnant.github.io/date_algorithms.html#civil_from_days).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    format!(
        "{} {day:2} {:02}:{:02}:{:02}.{millis:03}",
        MONTHS[(month - 1) as usize],
        tod / 3600,
        tod / 60 % 60,
        tod % 60
    )
}

/// The local time zone's offset from UTC at `secs`, in seconds (0 if unknown).
#[allow(
    clippy::useless_conversion,
    reason = "tm_gmtoff is a c_long: i64 here, i32 on 32-bit targets"
)]
fn local_offset(secs: i64) -> i64 {
    let t = secs as libc::time_t;
    // SAFETY: `libc::tm` holds integers and a nullable pointer, for which all-zero is a valid
    // value; `localtime_r` reads `t` and writes only into `tm`, both owned here.
    let (ok, tm) = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        let ok = !libc::localtime_r(&t, &mut tm).is_null();
        (ok, tm)
    };
    if ok {
        i64::from(tm.tm_gmtoff)
    } else {
        0
    }
}

#[cfg(test)]
mod service_tests {
    use super::*;
    use crate::flows::enrich::ServiceRef;

    #[test]
    fn a_flow_to_a_service_shows_it_before_the_backend() {
        let mut e = crate::flows::filter::fixture::end("y/web-1", "10.244.2.10", Some(8080));
        e.service = Some(ServiceRef {
            name: "y/web".into(),
            ip: "10.96.2.10".parse().unwrap(),
            port: 80,
            port_name: None,
        });
        assert_eq!(endpoint(&e), "service y/web:80 => y/web-1:8080");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flows::client::tests::{printer, rec};
    use crate::flows::enrich::FlowRecord;
    use crate::flows::filter::fixture::*;

    const PLAIN: TableFormat = TableFormat {
        color: false,
        utc: true,
    };

    #[test]
    fn a_dropped_flow() {
        let (s, d) = debug_to_backend();
        assert_eq!(
            PLAIN.flow(&dropped(s, d)),
            "Nov 23 18:40:48.822  DROPPED  ingress  dev/debug:41234 -> prod/backend:8080 TCP SYN  \
             policy_denied: isolated by prod/default-deny-ingress"
        );
    }

    #[test]
    fn an_allowed_flow() {
        let (s, d) = debug_to_backend();
        assert_eq!(
            PLAIN.flow(&allowed(s, d)),
            "Nov 23 18:40:48.822  ALLOWED  ingress  dev/debug:41234 -> prod/backend:8080 TCP SYN  \
             by prod/backend-from-frontend ingress[0]"
        );
    }

    #[test]
    fn a_connection_end() {
        let (s, d) = debug_to_backend();
        let mut r = allowed(s, d);
        r.tcp_flags = "".into();
        r.end = Some(crate::flows::enrich::ConnectionEnd {
            reason: "closed".into(),
            packets_sent: 6,
            bytes_sent: 512,
            packets_received: 4,
            bytes_received: 2_100,
            duration_ms: 2_367,
        });
        assert_eq!(
            PLAIN.flow(&r),
            "Nov 23 18:40:48.822  ENDED    ingress  dev/debug:41234 -> prod/backend:8080 TCP  \
             closed after 2.367 s, sent 6 pkts 512 B, received 4 pkts 2.1 kB  \
             by prod/backend-from-frontend ingress[0]"
        );
        assert_eq!(bytes(3_400_000), "3.4 MB");
        assert_eq!(bytes(999), "999 B");
    }

    #[test]
    fn addresses_icmp_other_reasons_and_egress() {
        let mut r = dropped(
            end("prod/backend", "fd00::5", None),
            end("-", "2001:db8::1", None),
        );
        r.direction = Direction::Egress;
        r.protocol = "ICMPv6".into();
        r.tcp_flags = "".into();
        r.reason = Some("spoofed_source".into());
        r.isolated_by.clear();
        r.time = "2025-01-02T03:04:05.006Z".into();
        assert_eq!(
            PLAIN.flow(&r),
            "Jan  2 03:04:05.006  DROPPED  egress   prod/backend -> 2001:db8::1 ICMPv6  spoofed_source"
        );
        let v6 = end("-", "2001:db8::1", Some(443));
        assert_eq!(endpoint(&v6), "[2001:db8::1]:443");
        assert_eq!(endpoint(&end("-", "8.8.8.8", Some(53))), "8.8.8.8:53");
    }

    #[test]
    fn allowed_without_a_rule_shows_the_detail() {
        let (s, d) = debug_to_backend();
        let mut r = allowed(s, d);
        r.rule = None;
        r.reply = true;
        r.tcp_flags = "SYN|ACK".into();
        r.detail = "allowed: prod/backend is not isolated for ingress".into();
        assert!(PLAIN
            .flow(&r)
            .ends_with("TCP SYN|ACK reply  allowed: prod/backend is not isolated for ingress"));
    }

    #[test]
    fn colour_only_when_asked() {
        let (s, d) = debug_to_backend();
        let color = TableFormat {
            color: true,
            utc: true,
        };
        assert!(!PLAIN.flow(&dropped(s.clone(), d.clone())).contains('\x1b'));
        assert!(!PLAIN.lost(3).contains('\x1b'));
        assert!(color
            .flow(&dropped(s.clone(), d.clone()))
            .contains("\x1b[1;31mDROPPED\x1b[0m"));
        assert!(color
            .flow(&allowed(s, d))
            .contains("\x1b[1;32mALLOWED\x1b[0m"));
        assert!(color.lost(3).starts_with(YELLOW));
        assert!(PLAIN.lost(3).contains("3 flows"));
    }

    #[test]
    fn output_formats() {
        let r = rec(1, true, "2024-11-23T18:40:48.822Z");
        let mut p = printer(OutputFormat::Jsonl);
        p.flow(&r).unwrap();
        p.lost(4).unwrap();
        let out = String::from_utf8(p.into_inner()).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(serde_json::from_str::<FlowRecord>(lines[0]).unwrap(), r);
        assert_eq!(lines[1], r#"{"type":"lost","count":4}"#);

        let mut p = printer(OutputFormat::Json);
        p.flow(&r).unwrap();
        let out = String::from_utf8(p.into_inner()).unwrap();
        assert!(out.starts_with("{\n  \"schema\""), "{out}");
        assert_eq!(serde_json::from_str::<FlowRecord>(&out).unwrap(), r);

        let mut p = printer(OutputFormat::Table);
        p.flow(&r).unwrap();
        p.lost(4).unwrap();
        let out = String::from_utf8(p.into_inner()).unwrap();
        assert!(
            out.starts_with("Nov 23 18:40:48.822  DROPPED  ingress  dev/debug:1 -> "),
            "{out}"
        );
        assert!(!out.contains('\x1b'));
        assert_eq!(out.lines().count(), 2);
    }

    #[test]
    fn civil_dates() {
        assert_eq!(format_civil(0, 0), "Jan  1 00:00:00.000");
        // 2024 is a leap year.
        assert_eq!(format_civil(1_709_164_800, 5), "Feb 29 00:00:00.005");
        assert_eq!(format_civil(1_735_689_599, 999), "Dec 31 23:59:59.999");
        assert_eq!(format_civil(-1, 0), "Dec 31 23:59:59.000");
        assert_eq!(timestamp("not a time", true), "not a time");
    }
}
