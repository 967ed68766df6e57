//! The BPF syscall counter (`--source syscalls`): exact counts per watched
//! process, all threads, across window boundaries; unwatched processes are
//! not counted; combined rows with QEMU probes. Run as root.

#[macro_use]
mod common;

use std::time::Duration;

use common::{feature_list, Fixture, Recording};

#[test]
fn exact_syscall_counts_across_windows_for_watched_pids_only() {
    skip_without_bpf!();
    let (mut watched, mut other) = (Fixture::start(), Fixture::start());
    let options = "--source syscalls --interval 100ms --windows 15";
    let rec = Recording::start(&[watched.pid], options, "sys.csv");
    for _ in 0..5 {
        watched.ask("getppid 1000");
        other.ask("getppid 777");
        std::thread::sleep(Duration::from_millis(130));
    }
    let (ds, _) = rec.finish();
    assert!(ds.features().iter().all(|h| h.starts_with("sys:")));
    assert_eq!(ds.total(watched.pid, "sys:getppid"), 5000);
    assert_eq!(ds.rows.len(), 15, "rows only for the watched PID");
    let busy = ds.busy_windows("sys:getppid");
    assert!(busy >= 3, "calls spread over only {busy} windows");
    // Answering commands needs read/write: counted too.
    assert!(ds.total(watched.pid, "sys:write") >= 5);
}

#[test]
fn combined_rows_hold_probes_and_syscalls() {
    skip_without_bpf!();
    let mut fx = Fixture::start();
    let options = "--source qemu,syscalls --interval 200ms --windows 5 --budget none";
    let rec = Recording::start(&[fx.pid], options, "both.csv");
    fx.fire("tap_send", 321);
    fx.ask("getppid 123");
    let (ds, _) = rec.finish();
    assert_eq!(ds.rows.len(), 5, "one row per window holds both sources");
    assert_eq!(ds.total(fx.pid, "qemu:tap_send"), 321);
    assert_eq!(ds.total(fx.pid, "sys:getppid"), 123);
}

#[test]
fn probes_file_selects_syscalls_and_implies_the_source() {
    skip_without_bpf!();
    let dir = tempfile::tempdir().unwrap();
    let list = feature_list(dir.path(), "sys:getppid\nqemu:virtqueue_fill\n");
    let mut fx = Fixture::start();
    let options = format!(
        "--probes {} --interval 200ms --windows 4 --budget none",
        list.display()
    );
    let rec = Recording::start(&[fx.pid], &options, "sel.csv");
    fx.ask("getppid 50");
    fx.fire("virtqueue_fill", 5);
    let (ds, _) = rec.finish();
    assert_eq!(ds.features(), ["sys:getppid", "qemu:virtqueue_fill"]);
    assert_eq!(ds.total(fx.pid, "sys:getppid"), 50);
    assert_eq!(ds.total(fx.pid, "qemu:virtqueue_fill"), 5);
}

#[test]
fn syscall_feature_without_its_source_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let list = feature_list(dir.path(), "sys:getppid\n");
    let fx = Fixture::start();
    let options = format!("--source qemu --probes {}", list.display());
    let ran = common::recorder(&[fx.pid], &options, &dir.path().join("x.csv")).output();
    assert!(!ran.status.success());
    assert!(
        ran.stderr.contains("needs --source syscalls"),
        "{}",
        ran.stderr
    );
}

/// `--source strace` (the paper's baseline) counts the same syscalls as the
/// BPF counter, less what falls in the gaps between two strace runs at
/// window boundaries. Documented tolerance: ≥ 90% of the BPF count over
/// windows of 500 ms (docs/SOURCES.md), never more than it.
#[test]
fn strace_totals_match_the_bpf_counter_within_tolerance() {
    skip_without_bpf!();
    let mut fx = Fixture::start();
    // The BPF recording starts first and must still count when the bursts
    // end: strace's start-up (attaching ptrace, its first window) can take
    // over a second on a loaded machine, so it runs 7 s to strace's 4 s.
    let bpf = Recording::start(
        &[fx.pid],
        "--source syscalls --interval 500ms --windows 14",
        "bpf.csv",
    );
    let st = Recording::start(
        &[fx.pid],
        "--source strace --interval 500ms --windows 8",
        "st.csv",
    );
    // Many small bursts, so the loss measures the gaps' share of time.
    for _ in 0..60 {
        fx.ask("getppid 200");
        std::thread::sleep(Duration::from_millis(30));
    }
    let (strace, _) = st.finish();
    let (counter, _) = bpf.finish();
    let b = counter.total(fx.pid, "sys:getppid");
    let s = strace.total(fx.pid, "sys:getppid");
    assert_eq!(b, 12000, "the BPF counter is exact");
    eprintln!("strace counted {s} of {b} getppid calls");
    assert!(s <= b, "strace counted more than were made: {s}");
    assert!(s * 10 >= b * 9, "strace counted only {s} of {b}");
}
