//! Provider daemons as processes, for the tests that start them.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rustix::process::Signal;

/// A `golem-provider` process, killed when dropped.
pub struct Daemon {
    pub child: Child,
    /// `NODE_ID@ADDR`, as printed by the daemon.
    pub address: String,
    dir: TempDir,
}

pub struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Daemon {
    /// Starts a daemon on 127.0.0.1 with the `extra` arguments; `name` names its directory.
    pub fn start(name: &str, extra: &[&str]) -> Self {
        Self::start_in(None, name, &[&["--listen", "127.0.0.1:0"], extra].concat())
    }

    /// Starts a daemon in network namespace `netns` (with `ip netns exec`), or in this one,
    /// with `args` (at least `--listen`).
    pub fn start_in(netns: Option<&str>, name: &str, args: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!("golem-daemon-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let binary = env!("CARGO_BIN_EXE_golem-provider");
        let mut command = match netns {
            Some(netns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", netns, binary]);
                command
            }
            None => Command::new(binary),
        };
        let mut child = command
            .args(["--log", "warn", "--dir"])
            .arg(&dir)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start golem-provider");
        let stdout = child.stdout.take().expect("stdout");
        // Killed on drop from here on, even if it never prints its address.
        let mut daemon = Self {
            child,
            address: String::new(),
            dir: TempDir(dir),
        };
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = sender.send(line);
        });
        let line = receiver
            .recv_timeout(Duration::from_secs(60))
            .expect("the daemon prints its address");
        daemon.address = line
            .trim()
            .strip_prefix("golem-provider ")
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
            .to_owned();
        daemon
    }

    /// Its directory (key, blobs, compiled modules, books).
    pub fn dir(&self) -> &std::path::Path {
        &self.dir.0
    }

    /// Its node id.
    pub fn node(&self) -> &str {
        self.address.split_once('@').map_or("", |(node, _)| node)
    }

    /// Sends it `signal`.
    pub fn signal(&self, signal: Signal) {
        send(self.child.id(), signal);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends process `pid` a signal.
pub fn send(pid: u32, signal: Signal) {
    let pid = rustix::process::Pid::from_raw(pid.try_into().expect("pid")).expect("pid");
    rustix::process::kill_process(pid, signal).expect("signal the daemon");
}
