//! The command line of `enforcer flows` ([`FlowsArgs`]): which agents or files to read, which
//! part of their history, the filter flags with `--not` applied, and the output options.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use clap::ArgMatches;
use ipnet::IpNet;

use crate::compile::tables::Direction;
use crate::flows::filter::{
    parse_direction, parse_ip_or_cidr, parse_policy, parse_reason, parse_tier, EventKind, Filter,
    LabelSelector, PodPattern, Verdict,
};
use crate::flows::server::{Request, DEFAULT_SOCKET};
use crate::flows::table::OutputFormat;

/// Flows shown when no `--last`, `--since`, `--all` or `--follow` says otherwise.
pub const DEFAULT_LAST: usize = 20;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorChoice {
    /// When stdout is a terminal and NO_COLOR is not set.
    #[default]
    Auto,
    Always,
    Never,
}

impl ColorChoice {
    pub fn enabled(self, stdout_is_terminal: bool, no_color_set: bool) -> bool {
        match self {
            ColorChoice::Auto => stdout_is_terminal && !no_color_set,
            ColorChoice::Always => true,
            ColorChoice::Never => false,
        }
    }
}

/// `--since`: a duration ago or a point in time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Since {
    Ago(Duration),
    At(SystemTime),
}

impl Since {
    pub fn resolve(&self, now: SystemTime) -> SystemTime {
        match self {
            Since::Ago(d) => now.checked_sub(*d).unwrap_or(SystemTime::UNIX_EPOCH),
            Since::At(t) => *t,
        }
    }
}

fn parse_since(s: &str) -> Result<Since, String> {
    if let Ok(d) = humantime::parse_duration(s) {
        return Ok(Since::Ago(d));
    }
    humantime::parse_rfc3339_weak(s)
        .map(Since::At)
        .map_err(|_| format!("`{s}` is neither a duration (5m, 1h30m) nor an RFC 3339 time"))
}

/// The filter flags, before `--not` is applied (see [`super::filter`] for the semantics).
#[derive(clap::Args, Debug)]
#[command(next_help_heading = "Filters")]
struct FilterArgs {
    /// Only allowed or only dropped flows.
    #[arg(long, value_enum, ignore_case = true)]
    verdict: Vec<Verdict>,
    /// What the record reports: `new` (a connection allowed), `end` (a connection ended, with
    /// its packet and byte counts) or `drop`.
    #[arg(long, value_enum, ignore_case = true)]
    event: Vec<EventKind>,
    /// Either end is in this namespace.
    #[arg(long, value_name = "NS")]
    namespace: Vec<String>,
    /// The source is in this namespace.
    #[arg(long, value_name = "NS")]
    from_namespace: Vec<String>,
    /// The destination is in this namespace.
    #[arg(long, value_name = "NS")]
    to_namespace: Vec<String>,
    /// Either end is this pod (`NS/POD`; `NS/PREFIX*` for a name prefix).
    #[arg(long, value_name = "NS/POD", value_parser = PodPattern::from_str)]
    pod: Vec<PodPattern>,
    /// The source is this pod.
    #[arg(long, value_name = "NS/POD", value_parser = PodPattern::from_str)]
    from_pod: Vec<PodPattern>,
    /// The destination is this pod.
    #[arg(long, value_name = "NS/POD", value_parser = PodPattern::from_str)]
    to_pod: Vec<PodPattern>,
    /// Either end's pod has these labels (`k=v`, `k`, comma-separated: all of them).
    #[arg(long, value_name = "K=V", value_parser = LabelSelector::from_str)]
    label: Vec<LabelSelector>,
    /// The source pod has these labels.
    #[arg(long, value_name = "K=V", value_parser = LabelSelector::from_str)]
    from_label: Vec<LabelSelector>,
    /// The destination pod has these labels.
    #[arg(long, value_name = "K=V", value_parser = LabelSelector::from_str)]
    to_label: Vec<LabelSelector>,
    /// Either end's address is this IP or in this CIDR.
    #[arg(long, value_name = "IP|CIDR", value_parser = parse_ip_or_cidr)]
    ip: Vec<IpNet>,
    /// The source address is this IP or in this CIDR.
    #[arg(long, value_name = "IP|CIDR", value_parser = parse_ip_or_cidr)]
    from_ip: Vec<IpNet>,
    /// The destination address is this IP or in this CIDR.
    #[arg(long, value_name = "IP|CIDR", value_parser = parse_ip_or_cidr)]
    to_ip: Vec<IpNet>,
    /// Either end's port.
    #[arg(long, value_name = "N")]
    port: Vec<u16>,
    /// The source port.
    #[arg(long, value_name = "N")]
    from_port: Vec<u16>,
    /// The destination port.
    #[arg(long, value_name = "N")]
    to_port: Vec<u16>,
    /// TCP, UDP, SCTP, ICMP (v4 and v6), ICMPv4, ICMPv6 or a protocol number; any case.
    #[arg(long, value_name = "PROTO")]
    protocol: Vec<String>,
    /// As the local pod sees it: ingress (into the pod) or egress.
    #[arg(long, value_name = "ingress|egress", value_parser = parse_direction)]
    direction: Vec<Direction>,
    /// Drop reason, e.g. policy_denied, spoofed_source.
    #[arg(long, value_name = "NAME", value_parser = parse_reason)]
    reason: Vec<String>,
    /// The policy whose rule allowed (or denied) the flow, or one that isolates the pod of a
    /// dropped flow; a cluster policy as Kind/name (ClusterNetworkPolicy/NAME).
    #[arg(long, value_name = "NS/NAME", value_parser = parse_policy)]
    policy: Vec<String>,
    /// The tier of the rule that decided the flow: admin, networkpolicy or baseline.
    #[arg(long, value_name = "TIER", value_parser = parse_tier)]
    tier: Vec<String>,
    /// The Service the flow was sent to (its backend is the destination).
    #[arg(long, value_name = "NS/NAME", value_parser = parse_policy)]
    service: Vec<String>,
    /// Negate the filter flag right after it: `--not --namespace kube-system`. Flags are
    /// AND-ed, repeats of one flag OR-ed; a negated value excludes every flow it matches.
    // Append (not Count) so that clap records the position of every occurrence.
    #[arg(long, action = clap::ArgAction::Append, num_args = 0, default_missing_value = "true",
          value_parser = clap::value_parser!(bool))]
    not: Vec<bool>,
}

/// What `clap` parses; [`FlowsArgs`] is this with `--not` applied.
#[derive(clap::Args, Debug)]
struct RawFlowsArgs {
    /// Keep printing new flows as they happen (with --file: as lines are appended).
    #[arg(short, long)]
    follow: bool,
    /// Show the last N matching flows. Without --last, --since and --all: the last 20 from the
    /// agent, the whole of --file, and nothing old with --follow.
    #[arg(long, value_name = "N", conflicts_with = "all")]
    last: Option<usize>,
    /// Show flows since a duration ago (`5m`, `1h30m`) or a time (RFC 3339).
    #[arg(long, value_name = "5m|RFC3339", value_parser = parse_since)]
    since: Option<Since>,
    /// Show every flow the agent still holds.
    #[arg(long)]
    all: bool,
    #[command(flatten)]
    filter: FilterArgs,
    /// Output format [default: table on a terminal, jsonl otherwise].
    #[arg(short, long, value_enum)]
    output: Option<OutputFormat>,
    /// Colour in the table output.
    #[arg(long, value_enum, default_value_t)]
    color: ColorChoice,
    /// Show times in UTC rather than the local time zone (table output).
    #[arg(long)]
    utc: bool,
    /// The agent's flow socket; repeat to merge several agents' flows.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    socket: Vec<PathBuf>,
    /// Read a saved flow log (JSON lines) instead of asking the agent; repeat for several
    /// files, oldest first (`--file flows.jsonl.1 --file flows.jsonl`).
    #[arg(long, value_name = "PATH")]
    file: Vec<PathBuf>,
}

/// `enforcer flows` arguments. Use as a `clap` subcommand: `Flows(FlowsArgs)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowsArgs {
    pub follow: bool,
    pub last: Option<usize>,
    pub since: Option<Since>,
    pub all: bool,
    pub filter: Filter,
    pub output: Option<OutputFormat>,
    pub color: ColorChoice,
    pub utc: bool,
    /// The agents to ask (their flows are merged in time order).
    pub sockets: Vec<PathBuf>,
    pub files: Vec<PathBuf>,
}

/// Where each command-line value sits: clap numbers the tokens it parses, giving a flag
/// with a value the index of its value, and each `--not` an index of its own. Every argument
/// of the command counts, also those of arguments flattened next to these (the binary's
/// `--lab`), so that `--not` before one of them is refused rather than skipping over it.
fn positions(m: &ArgMatches) -> BTreeMap<usize, String> {
    let mut at = BTreeMap::new();
    for id in m.ids() {
        let id = id.as_str();
        if m.value_source(id) == Some(clap::parser::ValueSource::CommandLine) {
            // A group (a flattened struct's name) has no indices of its own.
            for i in m.indices_of(id).into_iter().flatten() {
                at.insert(i, id.to_string());
            }
        }
    }
    at
}

/// Splits a flag's values into plain and negated ones: a value is negated when the token
/// parsed just before it is a `--not` (the flag name itself has no index of its own).
fn split_negated<T>(
    m: &ArgMatches,
    id: &str,
    values: Vec<T>,
    positions: &BTreeMap<usize, String>,
    used: &mut BTreeSet<usize>,
) -> (Vec<T>, Vec<T>) {
    let indices: Vec<usize> = m.indices_of(id).map(Iterator::collect).unwrap_or_default();
    let (mut plain, mut negated) = (Vec::new(), Vec::new());
    for (value, i) in values.into_iter().zip(indices) {
        match positions.range(..i).next_back() {
            Some((n, prev)) if prev == "not" => {
                used.insert(*n);
                negated.push(value);
            }
            _ => plain.push(value),
        }
    }
    (plain, negated)
}

macro_rules! apply_negation {
    ($m:expr, $raw:expr, $filter:expr, $positions:expr, $used:expr; $($field:ident),+ $(,)?) => {
        $(
            let (plain, negated) =
                split_negated($m, stringify!($field), $raw.$field, $positions, $used);
            $filter.include.$field = plain;
            $filter.exclude.$field = negated;
        )+
    };
}

impl FlowsArgs {
    fn from_raw(raw: RawFlowsArgs, m: &ArgMatches) -> Result<Self, clap::Error> {
        let positions = positions(m);
        let nots = positions.values().filter(|id| *id == "not").count();
        let mut used = BTreeSet::new();
        let mut filter = Filter::default();
        let f = raw.filter;
        apply_negation!(m, f, filter, &positions, &mut used;
            verdict, event, namespace, from_namespace, to_namespace, pod, from_pod, to_pod,
            label, from_label, to_label, ip, from_ip, to_ip, port, from_port, to_port,
            protocol, direction, reason, policy, service, tier);
        if used.len() != nots {
            return Err(clap::Error::raw(
                clap::error::ErrorKind::ArgumentConflict,
                "--not must be followed directly by a filter flag, e.g. `--not --namespace kube-system`\n",
            ));
        }
        Ok(FlowsArgs {
            follow: raw.follow,
            last: raw.last,
            since: raw.since,
            all: raw.all,
            filter,
            output: raw.output,
            color: raw.color,
            utc: raw.utc,
            sockets: raw.socket,
            files: raw.file,
        })
    }

    /// Which past flows to show, resolved against `now`.
    pub fn history(&self, now: SystemTime) -> History {
        let since = self.since.as_ref().map(|s| s.resolve(now));
        let last = if self.all {
            None
        } else if let Some(n) = self.last {
            Some(n)
        } else if since.is_some() {
            None
        } else if self.follow {
            Some(0)
        } else if !self.files.is_empty() {
            None
        } else {
            Some(DEFAULT_LAST)
        };
        History { last, since }
    }

    /// The request for the agent's socket.
    pub fn request(&self, history: &History) -> Request {
        Request {
            follow: self.follow,
            last: history.last,
            since: history
                .since
                .map(|t| humantime::format_rfc3339_nanos(t).to_string()),
            filter: self.filter.clone(),
        }
    }
}

impl clap::FromArgMatches for FlowsArgs {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        FlowsArgs::from_raw(RawFlowsArgs::from_arg_matches(m)?, m)
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = FlowsArgs::from_arg_matches(m)?;
        Ok(())
    }
}

impl clap::Args for FlowsArgs {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        RawFlowsArgs::augment_args(cmd)
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        RawFlowsArgs::augment_args_for_update(cmd)
    }
}

/// Parses filter flags as `enforcer flows` takes them (`--verdict dropped --not --namespace
/// kube-system`), for the agent's own flow log. Other `flows` options are refused.
pub fn parse_filter_flags(text: &str) -> Result<Filter, String> {
    use clap::FromArgMatches;
    let cmd =
        <FlowsArgs as clap::Args>::augment_args(clap::Command::new("filter")).no_binary_name(true);
    let args_of_cmd: BTreeSet<String> = cmd
        .get_arguments()
        .map(|a| a.get_id().to_string())
        .collect();
    let m = cmd
        .try_get_matches_from(text.split_whitespace())
        .map_err(|e| e.to_string().trim_end().to_string())?;
    let args = FlowsArgs::from_arg_matches(&m).map_err(|e| e.to_string().trim_end().to_string())?;
    let filter_flags: BTreeSet<String> =
        <FilterArgs as clap::Args>::augment_args(clap::Command::new("f"))
            .get_arguments()
            .map(|a| a.get_id().to_string())
            .collect();
    for id in m.ids() {
        let id = id.as_str();
        // Skip group ids (the flattened struct's name is one).
        if args_of_cmd.contains(id)
            && m.value_source(id) == Some(clap::parser::ValueSource::CommandLine)
            && !filter_flags.contains(id)
        {
            return Err(format!(
                "`--{}` is not a filter flag (only the filter flags of `enforcer flows` apply)",
                id.replace('_', "-")
            ));
        }
    }
    Ok(args.filter)
}

/// Which past flows to show: only those at or after `since`, and of those the `last` N
/// (`None`: all).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct History {
    pub last: Option<usize>,
    pub since: Option<SystemTime>,
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::flows::client::tests::parse;

    #[test]
    fn filter_flags_parse_alone_for_the_flow_log() {
        let f =
            parse_filter_flags("--not --namespace kube-system --event drop --event end").unwrap();
        assert_eq!(f.exclude.namespace, ["kube-system"]);
        assert_eq!(f.include.event, [EventKind::Drop, EventKind::End]);
        assert_eq!(parse_filter_flags("").unwrap(), Filter::default());
        let err = parse_filter_flags("--follow --namespace a").unwrap_err();
        assert!(err.contains("`--follow` is not a filter flag"), "{err}");
        let err = parse_filter_flags("--verdict maybe").unwrap_err();
        assert!(err.contains("maybe"), "{err}");
    }

    #[test]
    fn parses_every_option() {
        let a = parse(
            "-f --last 5 --since 5m --verdict DROPPED --namespace prod --namespace dev \
             --from-namespace a --to-namespace b --pod prod/back* --from-pod dev/debug \
             --to-pod prod/backend --label app=web,tier --from-label x=1 --to-label y \
             --ip 10.0.0.0/8 --from-ip fd00::1 --to-ip 10.1.2.3 --port 53 --from-port 1 \
             --to-port 8080 --protocol tcp --direction Ingress --reason policy-denied \
             --policy prod/deny -o json --color never --utc --socket /tmp/x.sock",
        )
        .unwrap();
        assert!(a.follow && a.utc && !a.all);
        assert_eq!(a.last, Some(5));
        assert_eq!(a.since, Some(Since::Ago(Duration::from_secs(300))));
        assert_eq!(a.output, Some(OutputFormat::Json));
        assert_eq!(a.color, ColorChoice::Never);
        assert_eq!(a.sockets, [PathBuf::from("/tmp/x.sock")]);
        let f = &a.filter.include;
        assert_eq!(f.verdict, [Verdict::Dropped]);
        assert_eq!(f.namespace, ["prod", "dev"]);
        assert_eq!(
            (&f.from_namespace[..], &f.to_namespace[..]),
            (&["a".to_string()][..], &["b".to_string()][..])
        );
        assert_eq!(f.pod[0].to_string(), "prod/back*");
        assert_eq!(f.from_pod[0].to_string(), "dev/debug");
        assert_eq!(f.to_pod[0].to_string(), "prod/backend");
        assert_eq!(f.label[0].to_string(), "app=web,tier");
        assert_eq!(
            (f.from_label[0].to_string(), f.to_label[0].to_string()),
            ("x=1".into(), "y".into())
        );
        assert_eq!(f.ip[0].to_string(), "10.0.0.0/8");
        assert_eq!(f.from_ip[0].to_string(), "fd00::1/128");
        assert_eq!(f.to_ip[0].to_string(), "10.1.2.3/32");
        assert_eq!(
            (&f.port[..], &f.from_port[..], &f.to_port[..]),
            (&[53][..], &[1][..], &[8080][..])
        );
        assert_eq!(f.protocol, ["tcp"]);
        assert_eq!(f.direction, [Direction::Ingress]);
        assert_eq!(f.reason, ["policy_denied"]);
        assert_eq!(f.policy, ["prod/deny"]);
        assert!(a.filter.exclude.is_empty());

        let d = parse("").unwrap();
        assert_eq!(d.sockets, [PathBuf::from(DEFAULT_SOCKET)]);
        let two = parse("--socket a.sock --socket b.sock").unwrap();
        assert_eq!(
            two.sockets,
            [PathBuf::from("a.sock"), PathBuf::from("b.sock")]
        );
        assert_eq!(
            (d.output, d.color, d.follow),
            (None, ColorChoice::Auto, false)
        );
        assert!(d.filter.include.is_empty() && d.files.is_empty());
        let t = parse("--since 2024-11-23T18:00:00Z --file a.jsonl.1 --file a.jsonl").unwrap();
        assert_eq!(
            t.since,
            Some(Since::At(
                humantime::parse_rfc3339("2024-11-23T18:00:00Z").unwrap()
            ))
        );
        assert_eq!(
            t.files,
            [PathBuf::from("a.jsonl.1"), PathBuf::from("a.jsonl")]
        );
    }

    #[test]
    fn not_negates_only_the_next_flag() {
        let a = parse(
            "--not --namespace kube-system --pod prod/backend --not --port=53 --to-port 80 \
             --namespace prod --not --verdict allowed",
        )
        .unwrap();
        let (inc, exc) = (&a.filter.include, &a.filter.exclude);
        assert_eq!(inc.namespace, ["prod"]);
        assert_eq!(exc.namespace, ["kube-system"]);
        assert_eq!(inc.pod.len(), 1);
        assert!(exc.pod.is_empty());
        assert_eq!((&inc.port[..], &exc.port[..]), (&[][..], &[53][..]));
        assert_eq!(inc.to_port, [80]);
        assert_eq!(exc.verdict, [Verdict::Allowed]);
        assert!(inc.verdict.is_empty());
        // Short options between do not confuse the positions.
        let b = parse("-f --not --to-pod dev/x -o jsonl --from-pod dev/y").unwrap();
        assert_eq!(b.filter.exclude.to_pod.len(), 1);
        assert_eq!(b.filter.include.from_pod.len(), 1);
    }

    #[test]
    fn rejects_bad_arguments() {
        for bad in [
            "--not",
            "--namespace a --not",
            "--not --follow --namespace a",
            "--not --not --namespace a",
            "--pod backend",
            "--policy deny-all",
            "--ip 10.0.0.300",
            "--verdict maybe",
            "--direction out",
            "--reason denied",
            "--port 70000",
            "--last 3 --all",
            "--since soon",
            "--output yaml",
        ] {
            assert!(parse(bad).is_err(), "`{bad}` should be rejected");
        }
    }

    #[test]
    fn which_history_is_shown() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let five_min_ago = Some(now - Duration::from_secs(300));
        let cases = [
            ("", Some(DEFAULT_LAST), None),
            ("-f", Some(0), None),
            ("--file x", None, None),
            ("--file x -f", Some(0), None),
            ("--last 3", Some(3), None),
            ("-f --last 3", Some(3), None),
            ("--all", None, None),
            ("--since 5m", None, five_min_ago),
            ("--since 5m --last 2", Some(2), five_min_ago),
            ("-f --since 5m", None, five_min_ago),
        ];
        for (args, last, since) in cases {
            assert_eq!(
                parse(args).unwrap().history(now),
                History { last, since },
                "{args}"
            );
        }
        let a = parse("-f --last 3 --verdict dropped").unwrap();
        let req = serde_json::to_string(&a.request(&a.history(now))).unwrap();
        assert_eq!(
            req,
            r#"{"follow":true,"last":3,"since":null,"filter":{"include":{"verdict":["dropped"]}}}"#
        );
    }

    #[test]
    fn colour_choice() {
        assert!(ColorChoice::Auto.enabled(true, false));
        assert!(!ColorChoice::Auto.enabled(false, false));
        assert!(!ColorChoice::Auto.enabled(true, true));
        assert!(ColorChoice::Always.enabled(false, false));
        assert!(!ColorChoice::Never.enabled(true, false));
    }
}
