//! vmwatch on a real QEMU (built by `cargo xtask qemu` with the dtrace
//! backend), started under TCG with no guest: SeaBIOS alone exercises
//! enough of the machine to fire probes.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{bpf_available, qemu_binary, vmwatch, Dataset, Qemu};

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
    // The recipe's sys/sdt.h makes every site a 5-byte nop (optimized uprobes).
    let one_byte: Vec<_> = probes
        .iter()
        .filter(|p| p["provider"] == "qemu" && p["nop5_sites"] != p["sites"])
        .map(|p| p["name"].as_str().unwrap_or("?"))
        .collect();
    assert!(
        one_byte.is_empty(),
        "{} qemu probes have sites that are not 5-byte nops, e.g. {:?}",
        one_byte.len(),
        &one_byte[..one_byte.len().min(5)]
    );
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

/// Every probe site attaches (counting needs no argument parsing, so sites
/// whose argument specs libbpf rejects are included), and only the
/// semaphores of attached probes are raised, in the watched QEMU only.
#[test]
fn every_site_attaches_and_only_listed_semaphores_rise() {
    let test = "every_site_attaches_and_only_listed_semaphores_rise";
    let Some(bin) = qemu_binary(test) else {
        return;
    };
    if !bpf_available(test) {
        return;
    }
    use vmwatch::stapsdt::UsdtBinary;
    let usdt = UsdtBinary::read(&bin).unwrap();
    let qemu_sites = usdt.provider_sites("qemu").count();
    let watched = Qemu::start(&bin, "vmwatch-test-sema");
    let other = Qemu::start(&bin, "vmwatch-test-other");
    let proc_w = vmwatch::procs::Process::from_pid(watched.pid()).unwrap();
    let sema = |pid: u32, name: &str| -> u16 {
        let off = usdt
            .provider_sites("qemu")
            .find(|s| s.name == name)
            .and_then(|s| s.semaphore_offset)
            .unwrap_or_else(|| panic!("{name} has no semaphore"));
        vmwatch::semaphores::value(pid, proc_w.binary_id, off).unwrap()
    };

    // All probes: the log reports every site attached.
    let dir = tempfile::tempdir().unwrap();
    let out = vmwatch()
        .args([
            "record",
            "--pid",
            &watched.pid().to_string(),
            "--windows",
            "1",
        ])
        .args(["--interval", "500ms", "-o"])
        .arg(dir.path().join("all.csv"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("attached {qemu_sites} sites")),
        "expected all {qemu_sites} sites attached: {stderr}"
    );

    // Two listed probes: only their semaphores rise, only in the watched VM.
    let list = dir.path().join("features.txt");
    std::fs::write(&list, "qemu:virtqueue_fill\nqemu:memory_region_ops_write\n").unwrap();
    let csv = dir.path().join("two.csv");
    let mut rec = vmwatch()
        .args([
            "record",
            "--pid",
            &watched.pid().to_string(),
            "--windows",
            "4",
        ])
        .args(["--interval", "500ms", "--probes"])
        .arg(&list)
        .arg("-o")
        .arg(&csv)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    common::wait_for_file(&csv, Duration::from_secs(30), &mut rec);
    assert!(sema(watched.pid(), "virtqueue_fill") >= 1);
    assert!(sema(watched.pid(), "memory_region_ops_write") >= 1);
    assert_eq!(sema(watched.pid(), "exec_tb"), 0, "unlisted probe enabled");
    assert_eq!(
        sema(other.pid(), "virtqueue_fill"),
        0,
        "unwatched VM enabled"
    );
    let out = rec.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(sema(watched.pid(), "virtqueue_fill"), 0, "not restored");
    assert_eq!(
        sema(watched.pid(), "memory_region_ops_write"),
        0,
        "not restored"
    );
}
