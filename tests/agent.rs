//! `vmwatch agent` on real QEMU processes (TCG, SeaBIOS only, each with a
//! UUID as libvirt gives one): VMs learn and switch to monitoring by
//! themselves, a VM started later learns on its own, a VM that exits and
//! comes back by UUID gets its model again, a restarted agent resumes
//! without re-learning, `ctl relearn` and `ctl forget` work, the metrics
//! endpoint and `ctl status` tell the same story. Run as root.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{eventually, free_loopback_port, http_get, requires_root_and_qemu, run, signal, Qemu};

/// Probes SeaBIOS's idle loop fires every window (timer interrupts).
const FEATURES: &str = "qemu:exec_tb\nqemu:memory_region_ops_read\nqemu:x86_pic_interrupt\n\
                        qemu:qemu_mutex_lock\nqemu:memory_notdirty_write_access\n";
const LEARN: u64 = 10;

struct Agent {
    child: Child,
    state: PathBuf,
}

impl Agent {
    fn start(dir: &Path, metrics: &str) -> Self {
        let config = dir.join("agent.toml");
        let features = dir.join("features.txt");
        std::fs::write(&features, FEATURES).unwrap();
        std::fs::write(
            &config,
            format!(
                "features = \"{}\"\ninterval = \"200ms\"\nlearn_windows = {LEARN}\n\
                 metrics = \"{metrics}\"\nevents = \"{}\"\ninclude = [\"vmwatch-agent-*\"]\n",
                features.display(),
                dir.join("events.jsonl").display()
            ),
        )
        .unwrap();
        let state = dir.join("state");
        let child = common::vmwatch()
            .arg("agent")
            .arg("--config")
            .arg(&config)
            .arg("--state-dir")
            .arg(&state)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("agent.log")).unwrap())
            .spawn()
            .unwrap();
        let agent = Self { child, state };
        eventually(30, "the agent answers ctl", || agent.try_status());
        agent
    }

    fn try_status(&self) -> Option<HashMap<String, serde_json::Value>> {
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

    fn status(&self) -> HashMap<String, serde_json::Value> {
        self.try_status().expect("ctl status answers")
    }

    /// Waits until `vm` runs and is in `state` (when monitoring: with a
    /// verdict already).
    fn wait_for(&self, vm: &str, state: &str) -> serde_json::Value {
        eventually(90, &format!("{vm} {state}"), || {
            self.status().remove(vm).filter(|v| {
                v["state"] == state
                    && !v["pid"].is_null()
                    && (state != "monitoring" || v["score"].is_number())
            })
        })
    }

    fn ctl(&self, words: &str) -> String {
        run("ctl")
            .arg("--state-dir")
            .arg(&self.state)
            .args(words)
            .succeeds()
            .stdout
    }

    /// Stops it with SIGTERM; returns how long it took to exit.
    fn stop(mut self) -> Duration {
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

fn uuid(i: u32) -> String {
    format!("{i:08x}-1111-4222-8333-{:012x}", std::process::id())
}

fn vm(bin: &Path, dir: &Path, name: &str, i: u32) -> Qemu {
    let uuid = uuid(i);
    Qemu::start_idle_with(bin, name, dir, &["-uuid", &uuid])
}

fn log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default()
}

#[test]
fn agent_learns_each_vm_by_itself_and_resumes_after_a_restart() {
    let Some(bin) =
        requires_root_and_qemu("agent_learns_each_vm_by_itself_and_resumes_after_a_restart")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tag = std::process::id();
    let name = |n: &str| format!("vmwatch-agent-{tag}-{n}");
    let (a, b, c) = (name("a"), name("b"), name("c"));
    let qa = vm(&bin, d, &a, 1);
    let qb = vm(&bin, d, &b, 2);
    // Not matched by the include pattern: never watched.
    let _other = Qemu::start_idle(&bin, &format!("other-{tag}"), d);
    let metrics = free_loopback_port();
    let agent = Agent::start(d, &metrics);

    // Two VMs learn by themselves and monitor.
    for n in [&a, &b] {
        let v = agent.wait_for(n, "monitoring");
        assert_eq!(v["windows_learned"], LEARN, "{v}");
        assert_eq!(v["uuid"], if *n == a { uuid(1) } else { uuid(2) });
        assert!(v["score"].is_number() && v["anomalous"] == false, "{v}");
    }
    assert_eq!(
        agent.status().len(),
        2,
        "only matching VMs: {:?}",
        agent.status()
    );

    // A third one, started later, learns on its own.
    let qc = vm(&bin, d, &c, 3);
    assert_eq!(agent.wait_for(&c, "learning")["pid"], qc.pid());
    agent.wait_for(&c, "monitoring");
    assert_eq!(agent.status()[&a]["windows_learned"], LEARN, "A relearned");

    // The metrics endpoint tells the same.
    let text = http_get(&metrics, "/metrics").expect("metrics served");
    for line in [
        format!(r#"vmwatch_vm_state{{state="monitoring",vm="{a}"}} 1"#),
        format!(r#"vmwatch_vm_anomalous{{vm="{b}"}} 0"#),
        format!(
            r#"vmwatch_vm_info{{pid="{}",uuid="{}",vm="{a}"}} 1"#,
            qa.pid(),
            uuid(1)
        ),
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
    }
    let learning: u64 = text
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!(
                r#"vmwatch_vm_windows_total{{verdict="learning",vm="{a}"}} "#
            ))
        })
        .expect("windows by verdict")
        .parse()
        .unwrap();
    assert!(learning >= LEARN, "{learning} learning windows");
    assert!(text.contains("vmwatch_drain_seconds_count"), "{text}");
    check_exposition(&text);

    // A VM that exits keeps its state; back with its UUID it monitors at once.
    drop(qa);
    eventually(30, "A's exit noticed", || {
        agent.status()[&a]["pid"].is_null().then_some(())
    });
    assert_eq!(agent.status()[&a]["state"], "monitoring");
    let qa = vm(&bin, d, &a, 1);
    let back = eventually(30, "A back", || {
        agent
            .status()
            .remove(&a)
            .filter(|v| v["pid"] == qa.pid() && v["score"].is_number())
    });
    assert_eq!(back["state"], "monitoring", "{back}");
    assert_eq!(back["windows_learned"], LEARN, "{back}");

    // SIGTERM detaches within 2 s; a new agent resumes without re-learning.
    let took = agent.stop();
    assert!(took < Duration::from_secs(2), "stopping took {took:?}");
    let agent = Agent::start(d, &metrics);
    let first = agent.status();
    for n in [&a, &b, &c] {
        assert_eq!(
            first[n]["state"], "monitoring",
            "{n} after restart: {:?}",
            first[n]
        );
        assert_eq!(first[n]["windows_learned"], LEARN);
    }

    // relearn: a new learning period on top of the kept windows.
    let said = agent.ctl(&format!("relearn {b}"));
    assert!(said.contains("learning"), "{said}");
    agent.wait_for(&b, "learning");
    let v = agent.wait_for(&b, "monitoring");
    assert_eq!(v["windows_learned"], 2 * LEARN, "{v}");
    // forget: C starts from nothing.
    agent.ctl(&format!("forget {c}"));
    let v = agent.wait_for(&c, "learning");
    assert!(v["windows_learned"].as_u64().unwrap() < LEARN, "{v}");
    run("ctl")
        .arg("--state-dir")
        .arg(&agent.state)
        .args("relearn no-such-vm")
        .fails_with("the agent knows no VM `no-such-vm`");

    // Events: each VM's phases, in order, and a line per window.
    let events = std::fs::read_to_string(d.join("events.jsonl")).unwrap();
    let phases: Vec<(String, String)> = events
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["event"] == "phase" && e["vm"] == b)
        .map(|e| {
            (
                e["from"].as_str().unwrap().into(),
                e["to"].as_str().unwrap().into(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = [
        ("learning", "training"),
        ("training", "monitoring"),
        ("monitoring", "learning"),
        ("learning", "training"),
        ("training", "monitoring"),
    ]
    .iter()
    .map(|(f, t)| (f.to_string(), t.to_string()))
    .collect();
    assert_eq!(phases, want, "phase events of B");
    assert!(
        events
            .lines()
            .filter(|l| l.contains(r#""event":"window""#))
            .count()
            > 50
    );

    // After SIGKILL the next agent lowers what the killed one raised.
    let mut killed = agent;
    signal(&killed.child, libc::SIGKILL);
    let _ = killed.child.wait();
    drop(killed);
    let agent = Agent::start(d, &metrics);
    assert!(
        log(d).contains("lowered"),
        "no semaphore repair: {}",
        log(d)
    );
    agent.stop();
    drop((qb, qc));
}

/// `promtool check metrics` on the exposition, where promtool is installed
/// (Debian's prometheus package; CI installs it).
fn check_exposition(text: &str) {
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "promtool is missing in CI"
        );
        eprintln!("SKIPPED promtool check metrics: promtool is not installed");
        return;
    };
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
