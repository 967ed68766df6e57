//! End-to-end tests of `vmwatch record` on the USDT fixture: exact counts
//! across window boundaries, per-process rows, `--probes`, semaphores, and
//! processes that exit mid-recording. Run as root.

#[macro_use]
mod common;

use std::process::Command;
use std::time::Duration;

use common::{finish, Dataset, Fixture, Recording};

#[test]
fn exact_totals_across_many_window_boundaries() {
    skip_without_bpf!();
    let mut fx = Fixture::start();
    // 100 ms windows; the fixture fires nonstop through ~15 boundaries.
    // Exact counting (the cost governor would thin virtqueue_fill).
    let options = "--interval 100ms --windows 25 --budget none";
    let rec = Recording::start(&[fx.pid], options, "burn.csv");
    let fired = fx.burn("tap_send", 1500);
    let fired2 = fx.burn("virtqueue_fill", 300);
    let (ds, _) = rec.finish();
    assert_eq!(ds.total(fx.pid, "qemu:tap_send"), fired, "tap_send total");
    // +0: the fixture's `enabled` was not asked, so nothing else fired.
    assert_eq!(ds.total(fx.pid, "qemu:virtqueue_fill"), fired2);
    let busy = ds.busy_windows("qemu:tap_send");
    assert!(busy >= 10, "hits spread over only {busy} windows");
    assert_eq!(ds.rows.len(), 25);
    // Windows are numbered in order. A late drain shortens the next window
    // (deadlines are absolute), so single windows vary on a busy machine,
    // but they add up to 25 intervals: no drift.
    let wc = ds.col("window").unwrap();
    let mut total = 0;
    for (i, r) in ds.rows.iter().enumerate() {
        assert_eq!(r[wc], i.to_string());
        let (_, d) = ds.window(r);
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
    skip_without_bpf!();
    let (mut a, mut b) = (Fixture::start(), Fixture::start());
    let options = "--interval 200ms --windows 5 --label pair --budget none";
    let rec = Recording::start(&[a.pid, b.pid], options, "two.csv");
    a.fire("tap_send", 1000);
    b.fire("virtqueue_fill", 250);
    b.fire("tap_send", 7);
    let (ds, stderr) = rec.finish();
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
    skip_without_bpf!();
    let dir = tempfile::tempdir().unwrap();
    let list = common::feature_list(dir.path(), "# chosen\nqemu:tap_send\nqemu:virtqueue_fill\n");
    let mut fx = Fixture::start();
    let before = fx.enabled();
    assert!(
        before.values().all(|on| !on),
        "semaphores up before attach: {before:?}"
    );

    let options = format!(
        "--probes {} --interval 200ms --windows 6 --budget none",
        list.display()
    );
    let rec = Recording::start(&[fx.pid], &options, "narrow.csv");
    fx.fire("tap_send", 10);
    fx.fire("bdrv_aio_flush", 10);
    fx.fire("virtqueue_fill", 3);
    // Only the listed semaphore is raised (asking fires virtqueue_fill once).
    let during = fx.enabled();
    assert!(during["virtqueue_fill"], "{during:?}");
    assert!(!during["bdrv_aio_flush"], "{during:?}");
    assert!(!during["memory_region_ops_write"], "{during:?}");
    let (ds, _) = rec.finish();
    assert_eq!(ds.features(), ["qemu:tap_send", "qemu:virtqueue_fill"]);
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
    skip_without_bpf!();
    let (mut stays, mut leaves) = (Fixture::start(), Fixture::start());
    let leaving_pid = leaves.pid;
    let pids = [stays.pid, leaves.pid];
    let rec = Recording::start(
        &pids,
        "--interval 200ms --windows 10 --budget none",
        "exit.csv",
    );
    leaves.fire("tap_send", 5);
    std::thread::sleep(Duration::from_millis(500));
    leaves.exit();
    std::thread::sleep(Duration::from_millis(300));
    stays.fire("tap_send", 42);
    let (ds, stderr) = rec.finish();
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
    skip_without_bpf!();
    let mut fx = Fixture::start();
    let rec = Recording::start(&[fx.pid], "--interval 100ms --budget none", "sig.csv");
    fx.fire("virtqueue_fill", 3);
    std::thread::sleep(Duration::from_millis(500));
    common::signal(&rec.child, libc::SIGINT);
    let (ds, _) = rec.finish();
    assert!(ds.rows.len() >= 3, "only {} rows", ds.rows.len());
    // Detached: the semaphore is down again.
    assert!(!fx.enabled()["virtqueue_fill"]);
}

#[test]
fn all_watched_processes_gone_ends_the_recording() {
    skip_without_bpf!();
    let fx = Fixture::start();
    let rec = Recording::start(&[fx.pid], "--interval 100ms --budget none", "gone.csv");
    std::thread::sleep(Duration::from_millis(300));
    fx.exit();
    let stderr = finish(rec.child);
    assert!(stderr.contains("every watched process exited"), "{stderr}");
}

#[test]
fn gzip_output_is_readable() {
    skip_without_bpf!();
    let mut fx = Fixture::start();
    let rec = Recording::start(
        &[fx.pid],
        "--interval 100ms --windows 4 --budget none",
        "d.csv.gz",
    );
    fx.fire("tap_send", 9);
    finish(rec.child);
    let text = Command::new("zcat").arg(&rec.out).output().unwrap();
    assert!(text.status.success());
    let plain = rec.dir.path().join("d.csv");
    std::fs::write(&plain, &text.stdout).unwrap();
    let ds = Dataset::read(&plain);
    assert_eq!(ds.total(fx.pid, "qemu:tap_send"), 9);
}

#[test]
fn a_sigkilled_gzip_recording_is_readable() {
    skip_without_bpf!();
    let mut fx = Fixture::start();
    let mut rec = Recording::start(&[fx.pid], "--interval 100ms --budget none", "killed.csv.gz");
    fx.fire("tap_send", 1000);
    // ~20 windows, then no trailer: the gzip stream ends at the last
    // window's sync flush.
    std::thread::sleep(Duration::from_millis(2200));
    rec.child.kill().unwrap();
    let _ = rec.child.wait();

    let out = &rec.out;
    let table = vmwatch_core::dataset::Table::read(out).unwrap();
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

    let model = rec.dir.path().join("m.json");
    let stderr = common::train(out, "--nu 0.1 --gamma 0.5", &model)
        .succeeds()
        .stderr;
    assert!(stderr.contains("no trailer"), "{stderr}");
    assert!(model.exists());
}

/// Each row says which binary counted it: the build id of the watched
/// process's executable (read from the file: the fixture has no QEMU
/// version banner, so the version is empty), with any source; `train`
/// carries it into the model.
#[test]
fn rows_carry_the_build_of_the_watched_binary() {
    skip_without_bpf!();
    let mut fx = Fixture::start();
    let build = vmwatch::discover::stapsdt::build_of_file(&common::fixture_path());
    let id = build.build_id.expect("the fixture has a build id");
    assert_eq!(build.version, None);
    for source in ["qemu", "syscalls"] {
        let options = format!("--interval 100ms --windows 12 --source {source} --budget none");
        let rec = Recording::start(&[fx.pid], &options, "built.csv");
        let (ds, _) = rec.finish();
        assert_eq!(
            &ds.header[common::KEYS..common::KEYS + 2],
            common::PROVENANCE,
            "{source}"
        );
        assert_eq!(
            ds.qemu_of(fx.pid),
            [(id.clone(), String::new())],
            "{source}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d.csv");
    let rec = common::recording(&[fx.pid], "--interval 100ms --windows 12", &data);
    for i in 0..14 {
        fx.fire("tap_send", 10 + 7 * i);
        std::thread::sleep(Duration::from_millis(100));
    }
    finish(rec);
    let model = dir.path().join("m.json");
    common::train(&data, "--nu 0.5 --gamma 0.5 --source qemu", &model).succeeds();
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&model).unwrap()).unwrap();
    assert_eq!(
        m["training"]["qemu_builds"],
        serde_json::json!([{"build_id": id, "version": null}])
    );
}
