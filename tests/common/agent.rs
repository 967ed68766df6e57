//! `vmwatch agent` driven by tests: a config of its own, `ctl status` as
//! JSON, waiting for a VM's phase.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{eventually, run, signal};

/// Probes SeaBIOS's idle loop fires every window (timer interrupts).
pub const FEATURES: &str = "qemu:exec_tb\nqemu:memory_region_ops_read\nqemu:x86_pic_interrupt\n\
                        qemu:qemu_mutex_lock\nqemu:memory_notdirty_write_access\n";
pub const LEARN: u64 = 10;

pub struct Agent {
    pub child: Child,
    pub state: PathBuf,
    /// Its stderr.
    pub log: PathBuf,
}

impl Agent {
    /// An agent watching the VMs whose names start with `prefix` (tests
    /// run side by side: each watches its own).
    pub fn start(dir: &Path, metrics: &str, prefix: &str) -> Self {
        Self::start_with(dir, metrics, prefix, "")
    }

    /// As [`Agent::start`], with more lines of configuration.
    pub fn start_with(dir: &Path, metrics: &str, prefix: &str, extra: &str) -> Self {
        Self::start_with_features(dir, metrics, prefix, FEATURES, extra)
    }

    /// As [`Agent::start_with`], learning `features` (a feature list's text).
    pub fn start_with_features(
        dir: &Path,
        metrics: &str,
        prefix: &str,
        feature_list: &str,
        extra: &str,
    ) -> Self {
        let config = dir.join("agent.toml");
        let features = dir.join("features.txt");
        std::fs::write(&features, feature_list).unwrap();
        // 200-ms windows unless `extra` sets its own.
        let interval = if extra
            .lines()
            .any(|l| l.trim_start().starts_with("interval"))
        {
            ""
        } else {
            "interval = \"200ms\"\n"
        };
        std::fs::write(
            &config,
            format!(
                "features = \"{}\"\n{interval}learn_windows = {LEARN}\n\
                 metrics = \"{metrics}\"\nevents = \"{}\"\ninclude = [\"{prefix}*\"]\n{extra}\n",
                features.display(),
                dir.join("events.jsonl").display()
            ),
        )
        .unwrap();
        let state = dir.join("state");
        let child = super::vmwatch()
            .arg("agent")
            .arg("--config")
            .arg(&config)
            .arg("--state-dir")
            .arg(&state)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("agent.log")).unwrap())
            .spawn()
            .unwrap();
        let agent = Self {
            child,
            state,
            log: dir.join("agent.log"),
        };
        eventually(30, "the agent answers ctl", || agent.try_status());
        agent
    }

    pub fn try_status(&self) -> Option<HashMap<String, serde_json::Value>> {
        let out = Command::new(env!("CARGO_BIN_EXE_vmwatch"))
            .arg("ctl")
            .arg("--state-dir")
            .arg(&self.state)
            .args(["status", "--json"])
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        let vms: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).ok()?;
        Some(
            vms.into_iter()
                .map(|v| (v["vm"].as_str().unwrap().to_string(), v))
                .collect(),
        )
    }

    pub fn status(&self) -> HashMap<String, serde_json::Value> {
        self.try_status().expect("ctl status answers")
    }

    /// Waits until `vm` runs and is in `state` (when monitoring: with a
    /// verdict already).
    pub fn wait_for(&self, vm: &str, state: &str) -> serde_json::Value {
        let end = Instant::now() + Duration::from_secs(90);
        loop {
            let status = self.status();
            if let Some(v) = status.get(vm).filter(|v| {
                v["state"] == state
                    && !v["pid"].is_null()
                    && (state != "monitoring" || v["score"].is_number())
            }) {
                return v.clone();
            }
            if Instant::now() > end {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                panic!(
                    "{vm} {state}: not within 90 s; status {status:?}; the end of the agent's \
                     log:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn ctl(&self, words: &str) -> String {
        run("ctl")
            .arg("--state-dir")
            .arg(&self.state)
            .args(words)
            .succeeds()
            .stdout
    }

    /// Stops it with SIGTERM; returns how long it took to exit.
    pub fn stop(mut self) -> Duration {
        let t = Instant::now();
        signal(&self.child, libc::SIGTERM);
        let status = self.child.wait().unwrap();
        assert!(status.success(), "agent exited with {status}");
        t.elapsed()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
