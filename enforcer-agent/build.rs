//! Builds the kernel programs (through the same step as `cargo xtask build-ebpf`) and puts the
//! object in OUT_DIR for `include_bytes!`. `ENFORCER_BPF_OBJECT=path` uses a prebuilt object.

#[path = "../xtask/src/ebpf_build.rs"]
#[allow(dead_code, reason = "shared with xtask, which uses more of it")]
mod ebpf_build;

use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let workspace = manifest
        .parent()
        .expect("the agent crate sits in the workspace")
        .to_path_buf();
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo")).join("enforcer.bpf.o");
    println!("cargo:rerun-if-env-changed=ENFORCER_BPF_OBJECT");
    if let Some(prebuilt) = std::env::var_os("ENFORCER_BPF_OBJECT") {
        println!(
            "cargo:rerun-if-changed={}",
            PathBuf::from(&prebuilt).display()
        );
        std::fs::copy(&prebuilt, &out).expect("copying ENFORCER_BPF_OBJECT");
        return;
    }
    for dir in [
        "enforcer-ebpf/src",
        "enforcer-ebpf/Cargo.toml",
        "enforcer-ebpf/Cargo.lock",
        "enforcer-common/src",
    ] {
        println!("cargo:rerun-if-changed={}", workspace.join(dir).display());
    }
    let target_dir = workspace.join("target/bpf");
    match ebpf_build::build_ebpf(&workspace, &target_dir) {
        Ok(obj) => {
            std::fs::copy(&obj, &out).expect("copying the eBPF object to OUT_DIR");
        }
        Err(e) => panic!("eBPF build: {e}"),
    }
}
