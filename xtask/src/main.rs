//! Developer commands. Every command echoes what it runs and names the failing command.

mod ebpf_build;
mod fuzz;
mod manifests;
mod modgraph;
mod skipped;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "enforcer developer commands")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what is missing (Debian packages, bpf-linker); idempotent.
    Setup,
    /// Build the eBPF object (a no-op when nothing changed).
    BuildEbpf,
    /// Set up, then run every test: unit, kernel (test_run), netns labs and scenarios, the
    /// offline checks of deploy/ (manifest schemas, shellcheck of the kind test), and the fuzz
    /// corpus replayed and mutated briefly (uninstrumented; `fuzz` runs the real fuzzer).
    Test {
        /// Extra arguments for `cargo test` (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Set up, build and run the live demo lab (pods, demo policies, denied-flow log).
    Lab {
        /// Stop after this many seconds (default: until Ctrl-C).
        #[arg(long)]
        duration: Option<u64>,
    },
    /// Validate the Kubernetes manifests in deploy/ against the API's schemas (offline, strict).
    ValidateManifests,
    /// Benchmarks: per-packet cost at 10, 1,000, 10,000 policies; flow-event throughput;
    /// connections end to end with no filter, nftables and the enforcer side by side.
    Bench,
    /// rustfmt check, the module graph of enforcer-agent/src (see `modgraph`), and clippy.
    Lint,
    /// Print which module of enforcer-agent/src uses which (and check the direction).
    Modgraph,
    /// Build the fuzz targets (fuzz/) and run each on its corpus; fails on any crash.
    Fuzz {
        /// One target (manifests, manifests_json, flow_decode, packet); default: all.
        #[arg(long)]
        target: Option<String>,
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        time: u64,
        /// Add the new inputs to the committed corpus (default: a scratch folder).
        #[arg(long)]
        grow: bool,
    },
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .into()
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("+ {cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("command failed ({status}): {cmd:?}");
    }
    Ok(())
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(workspace());
    c
}

const APT_PACKAGES: &[&str] = &[
    // eBPF toolchain: Debian's rustc with a prebuilt core for bpfel-unknown-none.
    "rustc-web",
    "libstd-rust-web-dev-bpf",
    // to build bpf-linker against LLVM 22
    "llvm-22-dev",
    "libpolly-22-dev",
    "zlib1g-dev",
    "libzstd-dev",
    // labs
    "iproute2",
    "iputils-ping",
    "procps",
    // the labs' kube-proxy (Service NAT in each node namespace)
    "nftables",
    // the manifest validator's venv (kubernetes-validate from PyPI, see manifests.rs)
    "python3-venv",
    // lints deploy/kind/test.sh, which needs a cluster and so cannot run here
    "shellcheck",
];

fn missing_packages() -> Vec<&'static str> {
    APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            let out = Command::new("dpkg-query").args(["-W", "-f=${Status}", p]).output();
            !matches!(out, Ok(o) if String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect()
}

fn setup() -> Result<()> {
    let missing = missing_packages();
    if !missing.is_empty() {
        eprintln!("installing Debian packages: {}", missing.join(" "));
        run(Command::new("apt-get").args(["update", "-q"]))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    if !ebpf_build::bpf_linker_present() {
        let llvm = "/usr/lib/llvm-22";
        let path = format!("{llvm}/bin:{}", std::env::var("PATH").unwrap_or_default());
        run(cargo()
            .args(["install", "bpf-linker", "--version", "0.13.0"])
            .args(["--no-default-features", "--features", "llvm-22"])
            .env("LLVM_PREFIX", llvm)
            .env("PATH", path))?;
    }
    ebpf_build::detect_toolchain().map_err(anyhow::Error::msg)?;
    manifests::ensure_validator(&workspace())?;
    if !Path::new("/sys/fs/bpf").exists() || !is_bpffs("/sys/fs/bpf") {
        run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))?;
    }
    eprintln!("setup: everything is in place");
    Ok(())
}

fn is_bpffs(path: &str) -> bool {
    std::fs::read_to_string("/proc/mounts")
        .map(|m| {
            m.lines()
                .any(|l| l.split_whitespace().nth(1) == Some(path) && l.contains(" bpf "))
        })
        .unwrap_or(false)
}

/// What can be checked of deploy/ without a cluster: the manifests' schemas and the kind
/// test script.
fn deploy_checks() -> Result<()> {
    let ws = workspace();
    manifests::validate(&ws)?;
    run(Command::new("shellcheck")
        .current_dir(&ws)
        .arg("deploy/kind/test.sh"))
}

fn build_ebpf() -> Result<PathBuf> {
    let ws = workspace();
    ebpf_build::build_ebpf(&ws, &ws.join("target/bpf")).map_err(anyhow::Error::msg)
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Setup => setup(),
        Cmd::BuildEbpf => {
            setup()?;
            let obj = build_ebpf()?;
            eprintln!("eBPF object: {}", obj.display());
            Ok(())
        }
        Cmd::Test { args } => {
            // Seconds, and a failure here is a design error: before anything is built.
            modgraph::check(&workspace())?;
            setup()?;
            build_ebpf()?;
            // The offline checks of deploy/ first (seconds); their failure is reported after
            // the tests, which run either way.
            let deploy = deploy_checks();
            // Kernel and lab tests share the machine's bpffs and create network namespaces:
            // they run as root and serialise where they must (see tests/). Without root they
            // return at once and leave a marker, so that the run fails.
            let skipped = skipped::dir(&workspace());
            skipped::clear(&skipped)?;
            let tests = run(cargo()
                .args(["test", "--workspace", "--no-fail-fast", "--"])
                .args(&args)
                .env(skipped::DIR_ENV, &skipped));
            let failures: Vec<String> = [
                tests.err().map(|e| format!("{e:#}")),
                skipped::check(&skipped).err().map(|e| format!("{e:#}")),
                deploy
                    .err()
                    .map(|e| format!("the deploy/ checks failed: {e:#}")),
            ]
            .into_iter()
            .flatten()
            .collect();
            if !failures.is_empty() {
                bail!("{}", failures.join("\n"));
            }
            Ok(())
        }
        Cmd::ValidateManifests => manifests::validate(&workspace()),
        Cmd::Lab { duration } => {
            setup()?;
            // The test profile's build: after `cargo xtask test` there is nothing to rebuild.
            run(cargo().args(["build", "-p", "enforcer"]))?;
            let mut cmd = Command::new(workspace().join("target/debug/enforcer"));
            cmd.args(["lab", "demo"]);
            if let Some(d) = duration {
                cmd.args(["--duration", &d.to_string()]);
            }
            run(&mut cmd)
        }
        Cmd::Bench => {
            setup()?;
            // The end-to-end benchmark runs the agent as the DaemonSet ships it.
            run(cargo().args([
                "build",
                "--release",
                "-p",
                "enforcer",
                "--no-default-features",
            ]))?;
            run(cargo()
                .args(["bench", "-p", "enforcer-tests"])
                .env("ENFORCER_BIN", workspace().join("target/release/enforcer")))
        }
        Cmd::Fuzz { target, time, grow } => {
            setup()?;
            let obj = build_ebpf()?;
            let targets = fuzz::select(target.as_deref())?;
            fuzz::fuzz(&workspace(), &obj, &targets, time, grow)
        }
        Cmd::Modgraph => {
            modgraph::print(&workspace())?;
            modgraph::check(&workspace())
        }
        Cmd::Lint => {
            run(cargo().args(["fmt", "--all", "--", "--check"]))?;
            modgraph::check(&workspace())?;
            run(cargo().args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]))
        }
    }
}
