//! vmwatch on a real QEMU (built by `cargo xtask qemu` with the dtrace
//! backend), started under TCG with no guest: SeaBIOS alone exercises
//! enough of the machine to fire probes.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{bpf_available, qemu_binary, vmwatch, Dataset};

struct Qemu(Child);

impl Qemu {
    fn start(bin: &std::path::Path, name: &str) -> Self {
        let child = Command::new(bin)
            .args(["-M", "pc", "-accel", "tcg", "-m", "64", "-name"])
            .arg(format!("guest={name},debug-threads=on"))
            .args(["-display", "none", "-serial", "null", "-monitor", "none"])
            .args(["-parallel", "none", "-no-reboot"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start QEMU");
        std::thread::sleep(Duration::from_millis(500));
        Self(child)
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn probes_lists_qemus_trace_events() {
    let Some(qemu) = qemu_binary("probes_lists_qemus_trace_events") else {
        return;
    };
    let out = vmwatch()
        .arg("probes")
        .arg(&qemu)
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let probes: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let probes = probes.as_array().unwrap();
    let qemu_probes = probes.iter().filter(|p| p["provider"] == "qemu").count();
    assert!(qemu_probes >= 2900, "only {qemu_probes} qemu probes");
    for name in [
        "virtqueue_fill",
        "virtio_queue_notify",
        "memory_region_ops_write",
    ] {
        assert!(probes.iter().any(|p| p["name"] == name), "{name} missing");
    }
}

#[test]
fn list_and_record_real_qemu_per_pid() {
    let Some(bin) = qemu_binary("list_and_record_real_qemu_per_pid") else {
        return;
    };
    if !bpf_available("list_and_record_real_qemu_per_pid") {
        return;
    }
    let a = Qemu::start(&bin, "vmwatch-test-a");
    let b = Qemu::start(&bin, "vmwatch-test-b");

    let out = vmwatch().args(["list", "--json"]).output().unwrap();
    assert!(out.status.success());
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let entry = list
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["pid"] == a.pid())
        .expect("QEMU listed");
    assert_eq!(entry["vm"], "vmwatch-test-a");
    assert!(entry["probes"].as_u64().unwrap() >= 2900, "{entry}");

    let dir = tempfile::tempdir().unwrap();
    let out_csv = dir.path().join("qemu.csv");
    let rec = vmwatch()
        .args(["record", "--vm", "vmwatch-test-a", "--pid"])
        .arg(b.pid().to_string())
        .args([
            "--interval",
            "1s",
            "--windows",
            "3",
            "--label",
            "bios",
            "-o",
        ])
        .arg(&out_csv)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&rec.stderr);
    assert!(rec.status.success(), "{stderr}");
    assert_eq!(
        stderr.matches(" sites of ").count(),
        1,
        "one attachment: {stderr}"
    );

    let ds = Dataset::read(&out_csv);
    assert!(ds.header.len() > 2900, "{} columns", ds.header.len());
    for q in [&a, &b] {
        let rows: Vec<_> = ds.rows_of(q.pid()).collect();
        assert_eq!(rows.len(), 3, "rows of PID {}", q.pid());
        let hits: u64 = rows
            .iter()
            .flat_map(|r| r[6..].iter().map(|v| v.parse::<u64>().unwrap()))
            .sum();
        assert!(hits > 0, "no probe hits counted for PID {}", q.pid());
    }
    let vc = ds.col("vm").unwrap();
    assert!(ds.rows_of(a.pid()).all(|r| r[vc] == "vmwatch-test-a"));
}
