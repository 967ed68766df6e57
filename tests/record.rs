//! End-to-end tests of `vmwatch record` on the USDT fixture: exact counts
//! across window boundaries, per-process rows, `--probes`, semaphores, and
//! processes that exit mid-recording. Run as root.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{bpf_available, finish, record, wait_for_file, Dataset, Fixture};

#[test]
fn exact_totals_across_many_window_boundaries() {
    if !bpf_available("exact_totals_across_many_window_boundaries") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("burn.csv");
    let mut fx = Fixture::start();
    // 100 ms windows; the fixture fires nonstop through ~15 boundaries.
    let mut rec = record(&[fx.pid], &["--interval", "100ms", "--windows", "25"], &out);
    wait_for_file(&out, Duration::from_secs(30), &mut rec);
    let fired = fx.burn("tap_send", 1500);
    let fired2 = fx.burn("virtqueue_fill", 300);
    finish(rec);

    let ds = Dataset::read(&out);
    assert_eq!(ds.total(fx.pid, "qemu:tap_send"), fired, "tap_send total");
    // +0: the fixture's `enabled` was not asked, so nothing else fired.
    assert_eq!(ds.total(fx.pid, "qemu:virtqueue_fill"), fired2);
    let tc = ds.col("qemu:tap_send").unwrap();
    let busy = ds.rows.iter().filter(|r| r[tc] != "0").count();
    assert!(busy >= 10, "hits spread over only {busy} windows");
    assert_eq!(ds.rows.len(), 25);
    // Windows are numbered in order. A late drain shortens the next window
    // (deadlines are absolute), so single windows vary on a busy machine,
    // but they add up to 25 intervals: no drift.
    let wc = ds.col("window").unwrap();
    let dc = ds.col("duration_ms").unwrap();
    let mut total = 0;
    for (i, r) in ds.rows.iter().enumerate() {
        assert_eq!(r[wc], i.to_string());
        let d: u64 = r[dc].parse().unwrap();
        assert!(d > 0 && d < 300, "window {i} lasted {d} ms");
        total += d;
    }
    assert!(
        (2400..=2600).contains(&total),
        "25 windows of 100 ms took {total} ms"
    );
}

#[test]
fn two_processes_get_separate_rows_and_share_one_attachment() {
    if !bpf_available("two_processes_get_separate_rows_and_share_one_attachment") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("two.csv");
    let mut a = Fixture::start();
    let mut b = Fixture::start();
    let mut rec = record(
        &[a.pid, b.pid],
        &["--interval", "200ms", "--windows", "5", "--label", "pair"],
        &out,
    );
    wait_for_file(&out, Duration::from_secs(30), &mut rec);
    a.fire("tap_send", 1000);
    b.fire("virtqueue_fill", 250);
    b.fire("tap_send", 7);
    let stderr = finish(rec);

    let ds = Dataset::read(&out);
    assert_eq!(ds.total(a.pid, "qemu:tap_send"), 1000);
    assert_eq!(ds.total(a.pid, "qemu:virtqueue_fill"), 0);
    assert_eq!(ds.total(b.pid, "qemu:tap_send"), 7);
    assert_eq!(ds.total(b.pid, "qemu:virtqueue_fill"), 250);
    // Probes never fired stay zero.
    for feature in ["qemu:qemu_deliver_packet", "qemu:bdrv_aio_flush"] {
        assert_eq!(ds.total(a.pid, feature) + ds.total(b.pid, feature), 0);
    }
    assert_eq!(ds.rows_of(a.pid).count(), 5);
    assert_eq!(ds.rows_of(b.pid).count(), 5);
    let lc = ds.col("label").unwrap();
    assert!(ds.rows.iter().all(|r| r[lc] == "pair"));
    // Both run the same binary: one uprobe_multi link serves both.
    assert_eq!(stderr.matches(" sites of ").count(), 1, "{stderr}");
}

#[test]
fn probes_file_narrows_attachment_and_semaphores() {
    if !bpf_available("probes_file_narrows_attachment_and_semaphores") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("features.txt");
    std::fs::write(&list, "# chosen\nqemu:tap_send\nqemu:virtqueue_fill\n").unwrap();
    let out = dir.path().join("narrow.csv");
    let mut fx = Fixture::start();
    let before = fx.enabled();
    assert!(
        before.values().all(|on| !on),
        "semaphores up before attach: {before:?}"
    );

    let probes_arg = list.to_str().unwrap();
    let mut rec = record(
        &[fx.pid],
        &[
            "--probes",
            probes_arg,
            "--interval",
            "200ms",
            "--windows",
            "6",
        ],
        &out,
    );
    wait_for_file(&out, Duration::from_secs(30), &mut rec);
    fx.fire("tap_send", 10);
    fx.fire("bdrv_aio_flush", 10);
    fx.fire("virtqueue_fill", 3);
    // Only the listed semaphore is raised (asking fires virtqueue_fill once).
    let during = fx.enabled();
    assert!(during["virtqueue_fill"], "{during:?}");
    assert!(!during["bdrv_aio_flush"], "{during:?}");
    assert!(!during["memory_region_ops_write"], "{during:?}");
    finish(rec);

    let ds = Dataset::read(&out);
    assert_eq!(
        ds.header[6..],
        [
            "qemu:tap_send".to_string(),
            "qemu:virtqueue_fill".to_string()
        ]
    );
    assert_eq!(ds.total(fx.pid, "qemu:tap_send"), 10);
    assert_eq!(ds.total(fx.pid, "qemu:virtqueue_fill"), 4);
    // Detach lowers the semaphores again.
    let after = fx.enabled();
    assert!(
        after.values().all(|on| !on),
        "semaphores left up: {after:?}"
    );
}

#[test]
fn a_process_that_exits_stops_its_rows_only() {
    if !bpf_available("a_process_that_exits_stops_its_rows_only") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("exit.csv");
    let mut stays = Fixture::start();
    let mut leaves = Fixture::start();
    let leaving_pid = leaves.pid;
    let mut rec = record(
        &[stays.pid, leaves.pid],
        &["--interval", "200ms", "--windows", "10"],
        &out,
    );
    wait_for_file(&out, Duration::from_secs(30), &mut rec);
    leaves.fire("tap_send", 5);
    std::thread::sleep(Duration::from_millis(500));
    leaves.exit();
    std::thread::sleep(Duration::from_millis(300));
    stays.fire("tap_send", 42);
    let stderr = finish(rec);

    let ds = Dataset::read(&out);
    assert_eq!(ds.rows_of(stays.pid).count(), 10);
    let left = ds.rows_of(leaving_pid).count();
    assert!((1..10).contains(&left), "exited process has {left} rows");
    assert_eq!(ds.total(stays.pid, "qemu:tap_send"), 42);
    assert!(
        stderr.contains(&format!("(PID {leaving_pid}) exited")),
        "{stderr}"
    );
}

#[test]
fn sigint_ends_recording_cleanly() {
    if !bpf_available("sigint_ends_recording_cleanly") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sig.csv");
    let mut fx = Fixture::start();
    let mut rec = record(&[fx.pid], &["--interval", "100ms"], &out);
    wait_for_file(&out, Duration::from_secs(30), &mut rec);
    fx.fire("virtqueue_fill", 3);
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: plain kill(2) on our child.
    unsafe { libc::kill(rec.id() as i32, libc::SIGINT) };
    finish(rec);
    let ds = Dataset::read(&out);
    assert!(ds.rows.len() >= 3, "only {} rows", ds.rows.len());
    // Detached: the semaphore is down again.
    assert!(!fx.enabled()["virtqueue_fill"]);
}

#[test]
fn all_watched_processes_gone_ends_the_recording() {
    if !bpf_available("all_watched_processes_gone_ends_the_recording") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("gone.csv");
    let fx = Fixture::start();
    let mut rec = record(&[fx.pid], &["--interval", "100ms"], &out);
    wait_for_file(&out, Duration::from_secs(30), &mut rec);
    std::thread::sleep(Duration::from_millis(300));
    fx.exit();
    let stderr = finish(rec);
    assert!(stderr.contains("every watched process exited"), "{stderr}");
}

#[test]
fn gzip_output_is_readable() {
    if !bpf_available("gzip_output_is_readable") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("d.csv.gz");
    let mut fx = Fixture::start();
    let mut rec = record(&[fx.pid], &["--interval", "100ms", "--windows", "4"], &out);
    wait_for_file(&out, Duration::from_secs(30), &mut rec);
    fx.fire("tap_send", 9);
    finish(rec);
    let text = Command::new("zcat").arg(&out).output().unwrap();
    assert!(text.status.success());
    let plain = dir.path().join("d.csv");
    std::fs::write(&plain, &text.stdout).unwrap();
    let ds = Dataset::read(&plain);
    assert_eq!(ds.total(fx.pid, "qemu:tap_send"), 9);
}

#[test]
fn a_sigkilled_gzip_recording_is_readable() {
    if !bpf_available("a_sigkilled_gzip_recording_is_readable") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("killed.csv.gz");
    let mut fx = Fixture::start();
    let mut rec = record(&[fx.pid], &["--interval", "100ms"], &out);
    wait_for_file(&out, Duration::from_secs(30), &mut rec);
    fx.fire("tap_send", 1000);
    // ~20 windows, then no trailer: the gzip stream ends at the last
    // window's sync flush.
    std::thread::sleep(Duration::from_millis(2200));
    rec.kill().unwrap();
    let _ = rec.wait();

    let table = vmwatch::dataset::Table::read(&out).unwrap();
    assert!(
        (10..=30).contains(&table.len()),
        "{} rows after ~20 windows",
        table.len()
    );
    assert!(table.keys.iter().all(|k| k.pid == fx.pid));
    let col = table
        .features
        .iter()
        .position(|f| f == "qemu:tap_send")
        .unwrap();
    // Fired 2 s before the kill: every hit is in a closed (flushed) window.
    assert_eq!(table.x.column(col).sum(), 1000.0);

    let model = dir.path().join("m.json");
    let res = common::vmwatch()
        .arg("train")
        .arg(&out)
        .args(["--nu", "0.1", "--gamma", "0.5", "-o"])
        .arg(&model)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(res.status.success(), "{stderr}");
    assert!(stderr.contains("no trailer"), "{stderr}");
    assert!(model.exists());
}
