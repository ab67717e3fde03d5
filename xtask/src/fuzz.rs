//! `cargo xtask fuzz`: the cargo-fuzz targets of `fuzz/` (their own workspace), each run for a
//! while on its committed corpus (`fuzz/corpus/<target>/`), failing on any crash. New inputs
//! go to a scratch folder unless `--grow` adds them to the committed corpus.
//!
//! The machine has one stable toolchain, so the targets are built without a sanitizer
//! (`--sanitizer none`: AddressSanitizer needs `-Zsanitizer`, a nightly flag; nothing else
//! cargo-fuzz passes then is unstable, so no `RUSTC_BOOTSTRAP` either): the coverage
//! instrumentation is plain `-C` flags and libFuzzer is built by `libfuzzer-sys` with the
//! system C++ compiler. Safe Rust needs no sanitizer to turn memory errors into crashes;
//! what the targets look for are panics and wrong verdicts, which any build reports.
//!
//! cargo-fuzz's release mode is used (opt-level 3, one codegen unit): from an empty target
//! folder it took 7 min 20 s on this 2-core machine nearly idle (536 s of CPU; 19 min while
//! other builds ran), its dev mode at opt-level 1 more CPU (980 s: many codegen units over
//! kube and k8s-openapi). That is too long for `cargo xtask test`, which instead replays the
//! corpus and mutates it for a few seconds per target through the same functions,
//! uninstrumented, in `tests/tests/fuzz_corpus.rs`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::{cargo, run};

pub const TARGETS: &[&str] = &["manifests", "manifests_json", "flow_decode", "packet"];

/// Targets that load the kernel program and so need root.
const NEEDS_ROOT: &[&str] = &["packet"];

/// The cargo-fuzz release this is known to build with on the pinned toolchain.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// What a run of one target measured (libFuzzer's final statistics).
#[derive(Debug, Default)]
pub struct Stats {
    pub target: String,
    pub executions: u64,
    pub per_second: u64,
    pub new_units: u64,
    pub seconds: f64,
}

fn cargo_fuzz_present() -> bool {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Installs cargo-fuzz when it is missing (idempotent, like bpf-linker in `setup`).
pub fn ensure_cargo_fuzz() -> Result<()> {
    if cargo_fuzz_present() {
        return Ok(());
    }
    run(cargo().args([
        "install",
        "cargo-fuzz",
        "--version",
        CARGO_FUZZ_VERSION,
        "--locked",
    ]))
}

fn fuzz_dir(ws: &Path) -> PathBuf {
    ws.join("fuzz")
}

/// Builds every target (instrumented, see the module docs) against the eBPF object already
/// built, so the agent's build script does not build it again in the fuzz workspace.
pub fn build(ws: &Path, ebpf_object: &Path) -> Result<()> {
    let started = Instant::now();
    run(cargo()
        .current_dir(fuzz_dir(ws))
        .args(["fuzz", "build", "--sanitizer", "none"])
        .env("ENFORCER_BPF_OBJECT", ebpf_object))?;
    eprintln!(
        "fuzz targets built in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn binary(ws: &Path, target: &str) -> PathBuf {
    fuzz_dir(ws)
        .join("target/x86_64-unknown-linux-gnu/release")
        .join(target)
}

fn is_root() -> bool {
    // The effective uid, the second field of `Uid:` (xtask has no libc).
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// A final statistic of libFuzzer's (`stat::name: value`).
fn stat(output: &str, name: &str) -> u64 {
    output
        .lines()
        .find_map(|l| l.strip_prefix(&format!("stat::{name}:")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Where libFuzzer wrote the input that failed (`Test unit written to PATH`).
fn crash_file(output: &str) -> Option<String> {
    output.lines().find_map(|l| {
        l.split_once("Test unit written to ")
            .map(|(_, p)| p.trim().to_string())
    })
}

/// Runs one target for `seconds` on its committed corpus. Fails on a crash (panic, wrong
/// verdict, timeout or out-of-memory), naming the input that caused it.
pub fn run_target(ws: &Path, target: &str, seconds: u64, grow: bool) -> Result<Stats> {
    let corpus = fuzz_dir(ws).join("corpus").join(target);
    let artifacts = ws.join("target/fuzz-artifacts").join(target);
    std::fs::create_dir_all(&artifacts)
        .with_context(|| format!("creating {}", artifacts.display()))?;
    // The first folder libFuzzer is given is where it writes what it finds.
    let scratch = ws.join("target/fuzz-new").join(target);
    let mut cmd = Command::new(binary(ws, target));
    if grow {
        cmd.arg(&corpus);
    } else {
        let _ = std::fs::remove_dir_all(&scratch);
        std::fs::create_dir_all(&scratch)
            .with_context(|| format!("creating {}", scratch.display()))?;
        cmd.arg(&scratch).arg(&corpus);
    }
    cmd.arg(format!("-max_total_time={seconds}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        // A slow input is a finding too (a YAML bomb, a loop), not a hang of the run.
        .arg("-timeout=25")
        .arg("-print_final_stats=1")
        .current_dir(ws);
    eprintln!("+ {cmd:?}");
    let started = Instant::now();
    let out = cmd
        .output()
        .with_context(|| format!("starting {}", binary(ws, target).display()))?;
    let seconds = started.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        // Its report first: the panic message says what disagreed.
        let tail: Vec<&str> = text.lines().rev().take(60).collect();
        for l in tail.into_iter().rev() {
            eprintln!("  {l}");
        }
        match crash_file(&text) {
            Some(path) => bail!(
                "fuzz target {target} failed ({}): the input is {path}; replay it with `{} {path}`",
                out.status,
                binary(ws, target).display()
            ),
            None => bail!("fuzz target {target} failed ({})", out.status),
        }
    }
    let stats = Stats {
        target: target.into(),
        executions: stat(&text, "number_of_executed_units"),
        per_second: stat(&text, "average_exec_per_sec"),
        new_units: stat(&text, "new_units_added"),
        seconds,
    };
    eprintln!(
        "fuzz {target}: {} executions in {:.0} s ({} per second), {} new inputs{}",
        stats.executions,
        stats.seconds,
        stats.per_second,
        stats.new_units,
        if grow {
            format!(" (added to {})", corpus.display())
        } else {
            format!(" (in {})", scratch.display())
        }
    );
    Ok(stats)
}

/// Builds, then runs `targets` for `seconds` each; every target runs even after one fails.
/// A target that needs root fails the run without it.
pub fn fuzz(
    ws: &Path,
    ebpf_object: &Path,
    targets: &[&str],
    seconds: u64,
    grow: bool,
) -> Result<()> {
    ensure_cargo_fuzz()?;
    build(ws, ebpf_object)?;
    let mut failures = Vec::new();
    let mut stats = Vec::new();
    for target in targets {
        if NEEDS_ROOT.contains(target) && !is_root() {
            // As for the kernel tests: a run without root does not pass by skipping.
            failures.push(format!(
                "fuzz target {target} needs root (it loads the kernel program) and did not run"
            ));
            continue;
        }
        match run_target(ws, target, seconds, grow) {
            Ok(s) => stats.push(s),
            Err(e) => failures.push(format!("{e:#}")),
        }
    }
    for s in &stats {
        eprintln!(
            "  {:<15} {:>10} executions  {:>6}/s  {:>4} new",
            s.target, s.executions, s.per_second, s.new_units
        );
    }
    if !failures.is_empty() {
        bail!("{}", failures.join("\n"));
    }
    Ok(())
}

/// The targets `--target` names (all without it).
pub fn select(target: Option<&str>) -> Result<Vec<&'static str>> {
    match target {
        None => Ok(TARGETS.to_vec()),
        Some(t) => match TARGETS.iter().find(|x| **x == t) {
            Some(x) => Ok(vec![*x]),
            None => bail!("no fuzz target {t} (there are: {})", TARGETS.join(", ")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_final_stats_and_the_crash_file() {
        let out = "INFO: Seed: 1\n==1== ERROR: libFuzzer: deadly signal\n\
                   MS: 1 ChangeBit-; base unit: 0\n\
                   artifact_prefix='a/'; Test unit written to a/crash-123\n\
                   stat::number_of_executed_units: 4567\nstat::average_exec_per_sec:     228\n";
        assert_eq!(stat(out, "number_of_executed_units"), 4567);
        assert_eq!(stat(out, "average_exec_per_sec"), 228);
        assert_eq!(stat(out, "new_units_added"), 0);
        assert_eq!(crash_file(out).as_deref(), Some("a/crash-123"));
    }

    #[test]
    fn every_target_has_a_corpus_and_a_binary_entry() {
        let ws = crate::workspace();
        let manifest = std::fs::read_to_string(ws.join("fuzz/Cargo.toml")).unwrap();
        for t in TARGETS {
            assert!(
                ws.join("fuzz/corpus")
                    .join(t)
                    .read_dir()
                    .unwrap()
                    .next()
                    .is_some(),
                "fuzz/corpus/{t} is empty"
            );
            assert!(
                manifest.contains(&format!("name = \"{t}\"")),
                "{t} missing from fuzz/Cargo.toml"
            );
        }
        assert!(select(Some("nope")).is_err());
        assert_eq!(select(None).unwrap().len(), TARGETS.len());
    }
}
