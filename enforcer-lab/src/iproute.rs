//! The commands the lab's network is built with: `ip` (one command, or a batch inside a
//! namespace), sysctls inside a namespace, and the lab's named namespaces (all under
//! [`NETNS_PREFIX`]). Used by the nodes ([`crate::nodes`]), the pods ([`crate::topology`]) and
//! the cleanup.

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{bail, Context};
use enforcer_agent::netns::{self, Netns};

/// Prefix of every namespace the lab creates (`lab down --all` removes all of them).
pub const NETNS_PREFIX: &str = "enf-";

/// Runs `ip ARGS...`; the error names the command and carries its stderr.
pub fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running ip {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Runs several `ip` commands in one process inside `netns` (`ip -n NS -batch -`).
pub fn ip_batch(netns: &str, lines: &[String]) -> anyhow::Result<()> {
    ip_batch_with(netns, lines, false)
}

/// As [`ip_batch`]; with `force`, later commands still run after one fails (cleanup).
pub fn ip_batch_with(netns: &str, lines: &[String], force: bool) -> anyhow::Result<()> {
    let mut cmd = Command::new("ip");
    if force {
        cmd.arg("-force");
    }
    let mut child = cmd
        .args(["-n", netns, "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running ip -batch")?;
    {
        let mut stdin = child.stdin.take().expect("stdin was piped");
        stdin
            .write_all(lines.join("\n").as_bytes())
            .context("writing ip -batch input")?;
    }
    let out = child.wait_with_output().context("waiting for ip -batch")?;
    if !out.status.success() {
        bail!(
            "ip -n {netns} -batch failed ({}): {}\ncommands:\n  {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            lines.join("\n  ")
        );
    }
    Ok(())
}

/// Sets a sysctl inside a namespace by writing `/proc/sys` from a thread switched into it
/// (net sysctls resolve against the writing thread's namespace).
pub fn sysctl(netns: &Netns, key: &str, value: &str) -> anyhow::Result<()> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    netns
        .run(|| std::fs::write(&path, value))?
        .with_context(|| format!("setting {key}={value} in {}", netns.path().display()))
}

/// Deletes a named namespace if it exists; errors are reported, not returned (cleanup path).
pub fn delete_netns(name: &str) {
    if netns::named_path(name).exists() {
        if let Err(err) = ip(&["netns", "del", name]) {
            eprintln!("warning: {err:#}");
        }
    }
}

/// All namespaces under /run/netns whose name starts with `prefix`.
pub fn list_netns(prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(netns::NETNS_RUN_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    names
}
