//! An `enforcer agent` process of the binary on the API path (the tests against the API server
//! double): its directory (kubeconfig, agent log, flow log), its pins, stopped with SIGTERM
//! and cleaned up on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

pub struct Agent {
    pub child: Child,
    /// Holds `kubeconfig`, `agent.log` (its stderr) and `flows.jsonl`.
    pub dir: PathBuf,
    pub pins: PathBuf,
}

impl Agent {
    /// Starts `enforcer agent --pin-dir PINS --flow-log DIR/flows.jsonl` with `configure`'s
    /// arguments and environment; `kubeconfig` (the API double's) is written to
    /// `DIR/kubeconfig`, which `configure` is handed. `tag` names the directory and the pins.
    pub fn start(
        tag: &str,
        kubeconfig: &str,
        configure: impl FnOnce(&mut Command, &std::path::Path),
    ) -> Agent {
        let id = format!("{tag}-{}", std::process::id());
        let dir = std::env::temp_dir().join(format!("enforcer-{id}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let kubeconfig_path = dir.join("kubeconfig");
        std::fs::write(&kubeconfig_path, kubeconfig).unwrap();
        let pins = PathBuf::from(format!("/sys/fs/bpf/enforcer/{id}"));
        let log = std::fs::File::create(dir.join("agent.log")).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_enforcer"));
        cmd.arg("agent")
            .arg("--pin-dir")
            .arg(&pins)
            .arg("--flow-log")
            .arg(dir.join("flows.jsonl"));
        configure(&mut cmd, &kubeconfig_path);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting the agent");
        Agent { child, dir, pins }
    }

    /// What the agent logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    /// Panics with the agent's log if it has exited (`while` names what was waited for).
    pub fn assert_running(&mut self, while_: &str) {
        if let Ok(Some(exit)) = self.child.try_wait() {
            panic!(
                "the agent exited ({exit}) waiting for {while_}:\n{}",
                self.log()
            );
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // SAFETY: plain syscall with integer arguments.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.pins);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
