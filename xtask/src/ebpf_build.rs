//! The one eBPF build step, shared by `cargo xtask build-ebpf` and the agent's build script
//! (which includes this file with `#[path]`). Only std: the build script has no other deps.
//!
//! Two toolchains can build `enforcer-ebpf` for `bpfel-unknown-none`:
//! 1. Debian's `rustc-web` (`/usr/bin/rustc`) with the prebuilt `core` of
//!    `libstd-rust-web-dev-bpf`; aya-ebpf needs one unstable feature, hence `RUSTC_BOOTSTRAP=1`.
//! 2. a rustup nightly with `rust-src`, building `core` with `-Z build-std=core`.
//!
//! Both need `bpf-linker` on PATH (or in ~/.cargo/bin).

use std::path::{Path, PathBuf};
use std::process::Command;

const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_BPF_CORE: &str = "/usr/lib/rustlib/bpfel-unknown-none/lib";

/// How the eBPF crate will be compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EbpfToolchain {
    Debian,
    NightlyBuildStd,
}

fn cargo_home_bin() -> Option<PathBuf> {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|h| h.join("bin"))
}

/// PATH with ~/.cargo/bin appended (where `cargo install bpf-linker` puts it).
fn path_with_cargo_bin() -> std::ffi::OsString {
    let mut paths: Vec<PathBuf> =
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).collect();
    if let Some(bin) = cargo_home_bin() {
        paths.push(bin);
    }
    std::env::join_paths(paths).unwrap_or_default()
}

pub fn bpf_linker_present() -> bool {
    std::env::split_paths(&path_with_cargo_bin()).any(|p| p.join("bpf-linker").is_file())
}

fn nightly_has_rust_src() -> bool {
    Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            let sysroot = String::from_utf8_lossy(&o.stdout).trim().to_string();
            Path::new(&sysroot)
                .join("lib/rustlib/src/rust/library/core")
                .is_dir()
        })
        .unwrap_or(false)
}

/// Picks the toolchain, or says exactly what is missing.
pub fn detect_toolchain() -> Result<EbpfToolchain, String> {
    if !bpf_linker_present() {
        return Err(
            "bpf-linker is not installed: run `cargo xtask setup` (it runs \
             `cargo install bpf-linker --no-default-features --features llvm-22` against \
             Debian's llvm-22-dev)"
                .into(),
        );
    }
    if Path::new(DEBIAN_RUSTC).is_file() && Path::new(DEBIAN_BPF_CORE).is_dir() {
        return Ok(EbpfToolchain::Debian);
    }
    if nightly_has_rust_src() {
        return Ok(EbpfToolchain::NightlyBuildStd);
    }
    Err(format!(
        "no toolchain can build for bpfel-unknown-none: need either Debian's rustc-web \
         ({DEBIAN_RUSTC}) with libstd-rust-web-dev-bpf ({DEBIAN_BPF_CORE}) — `cargo xtask setup` \
         installs them — or a rustup nightly with rust-src (`rustup component add rust-src \
         --toolchain nightly`)"
    ))
}

/// Builds the kernel object and returns its path. Cargo's own fingerprinting makes a second
/// build with no change a no-op.
pub fn build_ebpf(workspace: &Path, target_dir: &Path) -> Result<PathBuf, String> {
    build_ebpf_with(workspace, target_dir, &[])
}

/// [`build_ebpf`] with cargo features of `enforcer-ebpf` (e.g. `upgrade-variant`), in a
/// target dir of its own so that the two builds do not rebuild each other.
pub fn build_ebpf_with(
    workspace: &Path,
    target_dir: &Path,
    features: &[&str],
) -> Result<PathBuf, String> {
    let toolchain = detect_toolchain()?;
    let crate_dir = workspace.join("enforcer-ebpf");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(&cargo);
    // Clean the environment a parent cargo (build script) set for the host build.
    for var in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_MAKEFLAGS",
        "RUSTUP_TOOLCHAIN",
        "CARGO_BUILD_RUSTC",
    ] {
        cmd.env_remove(var);
    }
    cmd.current_dir(&crate_dir)
        .env("PATH", path_with_cargo_bin());
    match toolchain {
        EbpfToolchain::Debian => {
            cmd.env("RUSTC", DEBIAN_RUSTC).env("RUSTC_BOOTSTRAP", "1");
            cmd.args(["build", "--release", "--target", "bpfel-unknown-none"]);
        }
        EbpfToolchain::NightlyBuildStd => {
            cmd.env("RUSTUP_TOOLCHAIN", "nightly");
            cmd.args([
                "build",
                "--release",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
            ]);
        }
    }
    if !features.is_empty() {
        cmd.arg("--features").arg(features.join(","));
    }
    cmd.arg("--target-dir").arg(target_dir);
    eprintln!("+ ({toolchain:?}) {cmd:?}");
    let status = cmd
        .status()
        .map_err(|e| format!("running {cargo:?}: {e}"))?;
    if !status.success() {
        return Err(format!("building enforcer-ebpf failed ({status}): {cmd:?}"));
    }
    Ok(target_dir.join("bpfel-unknown-none/release/enforcer"))
}
