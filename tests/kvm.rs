//! `--source kvm`: KVM tracepoints (discovered on the running kernel) are
//! counted under the QEMU process whose threads hit them, and only there.
//! Needs /dev/kvm (skipped with a printed reason where it is absent) and the
//! instrumented QEMU of `cargo xtask qemu`.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{bpf_available, qemu_binary, vmwatch, Dataset};

struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(bin: &std::path::Path, accel: &str, name: &str) -> Qemu {
    let child = Command::new(bin)
        .args(["-M", "pc", "-accel", accel, "-m", "64", "-name", name])
        .args(["-display", "none", "-serial", "null", "-monitor", "none"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start QEMU");
    Qemu(child)
}

#[test]
fn kvm_events_are_counted_under_their_own_qemu_only() {
    let test = "kvm_events_are_counted_under_their_own_qemu_only";
    if !std::path::Path::new("/dev/kvm").exists() {
        eprintln!("SKIPPED {test}: /dev/kvm is absent on this machine");
        return;
    }
    let Some(bin) = qemu_binary(test) else {
        return;
    };
    if !bpf_available(test) {
        return;
    }
    let mut kvm = start(&bin, "kvm", "vmwatch-test-kvm");
    let tcg = start(&bin, "tcg", "vmwatch-test-tcg");
    std::thread::sleep(Duration::from_millis(500));
    if let Ok(Some(status)) = kvm.0.try_wait() {
        eprintln!("SKIPPED {test}: QEMU -accel kvm exited at once ({status}): KVM unusable here");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("kvm.csv");
    let rec = vmwatch()
        .args([
            "record",
            "--source",
            "kvm",
            "--interval",
            "1s",
            "--windows",
            "3",
        ])
        .args([
            "--pid",
            &kvm.0.id().to_string(),
            "--pid",
            &tcg.0.id().to_string(),
        ])
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        rec.status.success(),
        "{}",
        String::from_utf8_lossy(&rec.stderr)
    );

    let ds = Dataset::read(&out);
    for f in [
        "kvm:kvm_exit",
        "kvm:kvm_pio",
        "kvm:kvm_userspace_exit",
        "kvm:exit:other",
    ] {
        assert!(ds.col(f).is_some(), "{f} is not a column");
    }
    assert!(ds.header[6..].iter().all(|h| h.starts_with("kvm:")));
    let sum = |pid: u32| -> u64 {
        ds.rows_of(pid)
            .flat_map(|r| r[6..].iter().map(|v| v.parse::<u64>().unwrap()))
            .sum()
    };
    assert!(
        sum(kvm.0.id()) > 0,
        "no kvm: events under the KVM guest's PID"
    );
    assert_eq!(sum(tcg.0.id()), 0, "kvm: events under a TCG guest's PID");
    assert_eq!(ds.rows_of(tcg.0.id()).count(), 3);
}
