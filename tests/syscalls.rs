//! The BPF syscall counter (`--source syscalls`): exact counts per watched
//! process, all threads, across window boundaries; unwatched processes are
//! not counted; combined rows with QEMU probes. Run as root.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{bpf_available, vmwatch, wait_for_file, Dataset, Fixture};

fn record(pid: u32, extra: &[&str], out: &std::path::Path) -> std::process::Child {
    vmwatch()
        .args(["record", "--pid", &pid.to_string()])
        .args(extra)
        .arg("-o")
        .arg(out)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(child: std::process::Child) -> String {
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "vmwatch record failed: {stderr}");
    stderr
}

#[test]
fn exact_syscall_counts_across_windows_for_watched_pids_only() {
    if !bpf_available("exact_syscall_counts_across_windows_for_watched_pids_only") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sys.csv");
    let mut watched = Fixture::start();
    let mut other = Fixture::start();
    let mut rec = record(
        watched.pid,
        &[
            "--source",
            "syscalls",
            "--interval",
            "100ms",
            "--windows",
            "15",
        ],
        &out,
    );
    wait_for_file(&out, Duration::from_secs(30), &mut rec);
    for _ in 0..5 {
        watched.ask("getppid 1000");
        other.ask("getppid 777");
        std::thread::sleep(Duration::from_millis(130));
    }
    finish(rec);

    let ds = Dataset::read(&out);
    assert!(ds.header.iter().skip(6).all(|h| h.starts_with("sys:")));
    assert_eq!(ds.total(watched.pid, "sys:getppid"), 5000);
    assert_eq!(ds.rows.len(), 15, "rows only for the watched PID");
    let c = ds.col("sys:getppid").unwrap();
    let busy = ds.rows.iter().filter(|r| r[c] != "0").count();
    assert!(busy >= 3, "calls spread over only {busy} windows");
    // Answering commands needs read/write: counted too.
    assert!(ds.total(watched.pid, "sys:write") >= 5);
}

#[test]
fn combined_rows_hold_probes_and_syscalls() {
    if !bpf_available("combined_rows_hold_probes_and_syscalls") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("both.csv");
    let mut fx = Fixture::start();
    let mut rec = record(
        fx.pid,
        &[
            "--source",
            "qemu,syscalls",
            "--interval",
            "200ms",
            "--windows",
            "5",
        ],
        &out,
    );
    wait_for_file(&out, Duration::from_secs(30), &mut rec);
    fx.fire("tap_send", 321);
    fx.ask("getppid 123");
    finish(rec);
    let ds = Dataset::read(&out);
    assert_eq!(ds.rows.len(), 5, "one row per window holds both sources");
    assert_eq!(ds.total(fx.pid, "qemu:tap_send"), 321);
    assert_eq!(ds.total(fx.pid, "sys:getppid"), 123);
}

#[test]
fn probes_file_selects_syscalls_and_implies_the_source() {
    if !bpf_available("probes_file_selects_syscalls_and_implies_the_source") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("f.txt");
    std::fs::write(&list, "sys:getppid\nqemu:virtqueue_fill\n").unwrap();
    let out = dir.path().join("sel.csv");
    let mut fx = Fixture::start();
    let mut rec = record(
        fx.pid,
        &[
            "--probes",
            list.to_str().unwrap(),
            "--interval",
            "200ms",
            "--windows",
            "4",
        ],
        &out,
    );
    wait_for_file(&out, Duration::from_secs(30), &mut rec);
    fx.ask("getppid 50");
    fx.fire("virtqueue_fill", 5);
    finish(rec);
    let ds = Dataset::read(&out);
    assert_eq!(ds.header[6..], ["sys:getppid", "qemu:virtqueue_fill"]);
    assert_eq!(ds.total(fx.pid, "sys:getppid"), 50);
    assert_eq!(ds.total(fx.pid, "qemu:virtqueue_fill"), 5);
}

#[test]
fn syscall_feature_without_its_source_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("f.txt");
    std::fs::write(&list, "sys:getppid\n").unwrap();
    let fx = Fixture::start();
    let out = vmwatch()
        .args([
            "record",
            "--pid",
            &fx.pid.to_string(),
            "--source",
            "qemu",
            "--probes",
        ])
        .arg(&list)
        .arg("-o")
        .arg(dir.path().join("x.csv"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("needs --source syscalls"), "{stderr}");
}
