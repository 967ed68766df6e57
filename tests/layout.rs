//! Counts land in the right VM's row at production width: rows of more
//! than one counter-map chunk (2,048 features: the fixture's 2,105 probes
//! plus syscalls, or every probe of a real QEMU plus syscalls and KVM), with
//! several processes at once, and in slots freed and reused while recording.
//! Run as root.

#[macro_use]
mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::{finish, record, Dataset, Fixture, Recording};
use common::{Qemu, KEYS};

/// Asserts that `pid`'s rows hold exactly `want` for every `qemu:` feature
/// (0 for the unlisted) and for the listed `sys:` features.
fn assert_exact(ds: &Dataset, pid: u32, want: &[(&str, u64)]) {
    let got = ds.totals(pid);
    for (f, total) in &got {
        if f.starts_with("qemu:") {
            let expected = want.iter().find(|(w, _)| w == f).map_or(0, |(_, n)| *n);
            assert_eq!(*total, expected, "PID {pid}: {f}");
        }
    }
    for (f, n) in want {
        assert_eq!(got.get(*f).copied().unwrap_or(0), *n, "PID {pid}: {f}");
    }
}

fn column(ds: &Dataset, feature: &str) -> usize {
    ds.feature_index(feature)
        .unwrap_or_else(|| panic!("no column {feature}"))
}

#[test]
fn three_fixtures_are_exact_beyond_the_first_chunk() {
    skip_without_bpf!();
    let (mut a, mut b, mut c) = (Fixture::start(), Fixture::start(), Fixture::start());
    // Exact counting is what is tested: no cost governor.
    let options = "--source qemu,syscalls --interval 200ms --windows 10 --budget none";
    let rec = Recording::start(&[a.pid, b.pid, c.pid], options, "wide.csv");
    a.fire("tap_send", 1000);
    a.fire("pad_0001", 300);
    b.fire("virtqueue_fill", 250);
    b.fire("pad_2099", 77);
    c.fire("pad_2050", 5);
    c.fire("bdrv_aio_flush", 3);
    assert_eq!(c.ask("getppid 400"), "ok getppid 400");
    let (ds, _) = rec.finish();
    // Columns beyond the first chunk carry counts of every slot.
    assert!(
        ds.header.len() > KEYS + 2048 + 300,
        "{} columns",
        ds.header.len()
    );
    for f in [
        "qemu:tap_send",
        "qemu:virtqueue_fill",
        "qemu:pad_2099",
        "sys:getppid",
    ] {
        assert!(column(&ds, f) >= 2048, "{f} is in the first chunk");
    }
    assert!(column(&ds, "qemu:pad_0001") < 2048);
    assert_exact(
        &ds,
        a.pid,
        &[
            ("qemu:tap_send", 1000),
            ("qemu:pad_0001", 300),
            ("sys:getppid", 0),
        ],
    );
    assert_exact(
        &ds,
        b.pid,
        &[
            ("qemu:virtqueue_fill", 250),
            ("qemu:pad_2099", 77),
            ("sys:getppid", 0),
        ],
    );
    assert_exact(
        &ds,
        c.pid,
        &[
            ("qemu:pad_2050", 5),
            ("qemu:bdrv_aio_flush", 3),
            ("sys:getppid", 400),
        ],
    );
    for f in [&a, &b, &c] {
        assert_eq!(ds.rows_of(f.pid).count(), 10);
    }
}

fn start_vm(bin: &Path, name: &str) -> Fixture {
    Fixture::start_with(Command::new(bin).args(["-name", &format!("guest={name}")]))
}

/// Waits until the recording has a row of `pid` (its first full window).
fn wait_for_rows(path: &Path, pid: u32, rec: &mut Child) {
    let needle = format!(",{pid},");
    let end = Instant::now() + Duration::from_secs(20);
    while Instant::now() < end {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.lines().any(|l| l.contains(&needle)) {
            return;
        }
        assert!(rec.try_wait().unwrap().is_none(), "vmwatch exited early");
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("no row of PID {pid} within 20 s");
}

#[test]
fn slots_after_an_exit_and_a_reused_slot_stay_exact() {
    skip_without_bpf!();
    let dir = tempfile::tempdir().unwrap();
    common::chmod(dir.path(), 0o755);
    // The fixture as a QEMU-named executable, so `--vm` finds it by `-name`.
    let bin = common::install(&common::fixture_path(), dir.path(), "qemu-system-x86_64");
    let tag = std::process::id();
    let names: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|n| format!("vmwatch-layout-{tag}-{n}"))
        .collect();
    let mut a = start_vm(&bin, &names[0]);
    let mut b = start_vm(&bin, &names[1]);
    let mut c = start_vm(&bin, &names[2]);
    let out = dir.path().join("slots.csv");
    let vms: Vec<String> = names.iter().map(|n| format!("--vm {n}")).collect();
    let mut rec = common::run("record --source qemu,syscalls --interval 200ms --budget none")
        .args(&vms.join(" "))
        .out(&out)
        .spawn();
    common::wait_for_file(&out, Duration::from_secs(30), &mut rec);
    // A (slot 0) leaves counts behind in its slot, then exits.
    a.fire("tap_send", 1234);
    a.fire("pad_2090", 11);
    b.fire("tap_send", 100);
    c.fire("pad_2060", 10);
    wait_for_rows(&out, a.pid, &mut rec);
    std::thread::sleep(Duration::from_millis(500));
    let a_pid = a.pid;
    a.exit();
    std::thread::sleep(Duration::from_millis(600));
    // B and C (slots 1 and 2) go on after slot 0 was freed.
    b.fire("tap_send", 200);
    c.fire("virtqueue_fill", 30);
    // A comes back under its name and takes the freed slot.
    let mut a2 = start_vm(&bin, &names[0]);
    wait_for_rows(&out, a2.pid, &mut rec);
    a2.fire("tap_send", 500);
    a2.fire("pad_2099", 44);
    b.fire("pad_0000", 9);
    std::thread::sleep(Duration::from_millis(600));
    common::signal(&rec, libc::SIGINT);
    finish(rec);

    let ds = Dataset::read(&out);
    assert!(ds.header.len() > KEYS + 2048, "{} columns", ds.header.len());
    assert_exact(
        &ds,
        a_pid,
        &[("qemu:tap_send", 1234), ("qemu:pad_2090", 11)],
    );
    assert_exact(&ds, b.pid, &[("qemu:tap_send", 300), ("qemu:pad_0000", 9)]);
    assert_exact(
        &ds,
        c.pid,
        &[("qemu:pad_2060", 10), ("qemu:virtqueue_fill", 30)],
    );
    // Nothing A left in the slot shows up in its successor's rows.
    assert_exact(
        &ds,
        a2.pid,
        &[("qemu:tap_send", 500), ("qemu:pad_2099", 44)],
    );
}

/// Each feature's rate (hits per second) over the windows of `pid` that lie
/// wholly inside `[from, to)` (unix ms).
fn rates(ds: &Dataset, pid: u32, from: u64, to: u64) -> HashMap<String, f64> {
    let inside = |row: &&Vec<String>| {
        let (start, d) = ds.window(row);
        from <= start && start + d <= to
    };
    let rows: Vec<&Vec<String>> = ds.rows_of(pid).filter(inside).collect();
    let ms: u64 = rows.iter().map(|row| ds.window(row).1).sum();
    let sums = ds.sums(rows.into_iter());
    assert!(
        ms >= 1000,
        "PID {pid}: only {ms} ms of windows in the common span"
    );
    sums.into_iter()
        .map(|(f, n)| (f, n as f64 * 1000.0 / ms as f64))
        .collect()
}

/// When the recordings' windows begin and end: the span they all cover.
fn common_span(sets: &[&Dataset]) -> (u64, u64) {
    let mut from = 0;
    let mut to = u64::MAX;
    for ds in sets {
        let windows: Vec<(u64, u64)> = ds.rows.iter().map(|r| ds.window(r)).collect();
        let starts = windows.iter().map(|(start, _)| *start);
        let ends = windows.iter().map(|(start, d)| start + d);
        from = from.max(starts.min().unwrap());
        to = to.min(ends.max().unwrap());
    }
    (from, to)
}

/// One QEMU recorded by its own vmwatch and, at the same time, together with
/// others by a second vmwatch: its rates must be the same in both.
fn same_as_alone(solo: &HashMap<String, f64>, joint: &HashMap<String, f64>, vm: &str) {
    let mut compared = 0;
    for (f, &s) in solo {
        let j = joint.get(f).copied().unwrap_or(0.0);
        if s >= 200.0 {
            compared += 1;
            let ratio = j / s;
            assert!(
                (0.6..=1.67).contains(&ratio),
                "{vm}: {f} = {j:.0}/s together, {s:.0}/s alone"
            );
        }
    }
    for (f, &j) in joint {
        if j >= 50.0 {
            assert!(
                solo.get(f).copied().unwrap_or(0.0) > 0.0,
                "{vm}: {f} = {j:.0}/s together but never fired alone (another VM's count?)"
            );
        }
    }
    assert!(
        compared >= 3,
        "{vm}: only {compared} busy probes to compare"
    );
}

#[test]
fn two_and_three_real_qemus_with_every_probe_syscalls_and_kvm() {
    let bin = skip_without_bpf_and_qemu!();
    let tag = std::process::id();
    let dir = tempfile::tempdir().unwrap();
    let vms: Vec<Qemu> = (0..3)
        .map(|i| Qemu::start_idle(&bin, &format!("vmwatch-wide-{tag}-{i}"), dir.path()))
        .collect();
    // Rates compared exactly: no cost governor (which would also see the
    // other recorders' increments and count exactly anyway).
    let args = "--source qemu,syscalls,kvm --interval 500ms --windows 10 --budget none";
    let pids: Vec<u32> = vms.iter().map(Qemu::pid).collect();
    let path = |name: &str| dir.path().join(format!("{name}.csv"));
    let mut runs: Vec<(String, Child)> = Vec::new();
    for (i, pid) in pids.iter().enumerate() {
        let name = format!("solo{i}");
        runs.push((name.clone(), record(&[*pid], args, &path(&name))));
    }
    runs.push(("two".into(), record(&pids[..2], args, &path("two"))));
    runs.push(("three".into(), record(&pids, args, &path("three"))));
    for (_, child) in runs {
        finish(child);
    }

    let solos: Vec<Dataset> = (0..3)
        .map(|i| Dataset::read(&path(&format!("solo{i}"))))
        .collect();
    let three = Dataset::read(&path("three"));
    let two = Dataset::read(&path("two"));
    assert!(
        three.header.len() > KEYS + 3000,
        "{} columns",
        three.header.len()
    );
    let mut all: Vec<&Dataset> = solos.iter().collect();
    all.extend([&two, &three]);
    let (from, to) = common_span(&all);
    for (i, pid) in pids.iter().enumerate() {
        let solo = rates(&solos[i], *pid, from, to);
        same_as_alone(
            &solo,
            &rates(&three, *pid, from, to),
            &format!("VM {i} of three"),
        );
        if i < 2 {
            same_as_alone(
                &solo,
                &rates(&two, *pid, from, to),
                &format!("VM {i} of two"),
            );
        }
    }
}
