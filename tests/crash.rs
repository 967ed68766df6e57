//! Crash and signal safety: every stop signal detaches cleanly (semaphores
//! lowered, output closed), and the semaphores of a SIGKILLed vmwatch are
//! restored by the next start or by `vmwatch cleanup`. Run as root.

#[macro_use]
mod common;

use std::io::Read;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use common::{finish, recorder, recording, run, signal, Fixture, Qemu};
use vmwatch::discover::stapsdt::UsdtBinary;

/// The tests here kill vmwatch instances and watch what the next one does:
/// one at a time, so that no other test's vmwatch does the repair first.
static SERIAL: Mutex<()> = Mutex::new(());

/// Semaphores of the fixture that are raised: the three named lazy probes
/// and the 2,100 padding probes.
fn raised(fx: &mut Fixture) -> usize {
    let named = fx.enabled().values().filter(|on| **on).count();
    let pads: usize = fx
        .ask("pads-enabled")
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    named + pads
}

#[test]
fn every_stop_signal_lowers_semaphores_and_closes_the_output() {
    let _serial = exclusive_bpf_test!(&SERIAL);
    let dir = tempfile::tempdir().unwrap();
    for (sig, name) in [
        (libc::SIGHUP, "SIGHUP"),
        (libc::SIGQUIT, "SIGQUIT"),
        (libc::SIGTERM, "SIGTERM"),
        (libc::SIGINT, "SIGINT"),
    ] {
        let mut fx = Fixture::start();
        let out = dir.path().join(format!("{name}.csv.gz"));
        let rec = recording(&[fx.pid], "--interval 100ms", &out);
        assert_eq!(raised(&mut fx), 2103, "{name}: semaphores while recording");
        fx.fire("tap_send", 10);
        std::thread::sleep(Duration::from_millis(400));
        signal(&rec, sig);
        let stderr = finish(rec);
        assert!(stderr.contains("stopped by signal"), "{name}: {stderr}");
        assert_eq!(raised(&mut fx), 0, "{name}: semaphores left raised");
        // The gzip trailer was written: the whole stream decodes.
        let mut text = String::new();
        flate2::read::GzDecoder::new(std::fs::File::open(&out).unwrap())
            .read_to_string(&mut text)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(text.lines().count() > 1, "{name}: no rows");
    }
}

/// Records of this vmwatch (by PID) under /run/vmwatch.
fn records_of(pid: u32) -> usize {
    let raised = Path::new(vmwatch::attach::semaphores::RUN_DIR).join("raised");
    std::fs::read_dir(raised)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{pid}."))
        })
        .map(|e| std::fs::read_dir(e.path()).map_or(0, |d| d.count()))
        .sum()
}

#[test]
fn after_sigkill_the_next_run_and_cleanup_restore_the_fixtures_semaphores() {
    let _serial = exclusive_bpf_test!(&SERIAL);
    let dir = tempfile::tempdir().unwrap();
    for restore_by in ["next run", "cleanup"] {
        let mut fx = Fixture::start();
        assert_eq!(raised(&mut fx), 0);
        let out = dir.path().join("killed.csv");
        let _ = std::fs::remove_file(&out);
        let mut rec = recording(&[fx.pid], "--interval 100ms", &out);
        signal(&rec, libc::SIGKILL);
        let killed = rec.id();
        let _ = rec.wait();
        assert_eq!(raised(&mut fx), 2103, "SIGKILL left them raised");
        assert_eq!(records_of(killed), 1, "the killed vmwatch's record");

        let out = if restore_by == "next run" {
            // Any later vmwatch that counts repairs it first.
            let other = Fixture::start();
            let next = dir.path().join("next.csv");
            let _ = std::fs::remove_file(&next);
            recorder(&[other.pid], "--windows 1 --interval 100ms", &next).succeeds()
        } else {
            run("cleanup").succeeds()
        };
        let said = format!("{}{}", out.stdout, out.stderr);
        // The repair counts semaphore variables: 2,103 probes, and
        // `virtqueue_fill` has a second guarded site (tests/args.rs's).
        assert!(
            said.contains("2104 ") && said.contains(&format!("PID {}", fx.pid)),
            "{restore_by} says what it lowered: {said}"
        );
        assert_eq!(raised(&mut fx), 0, "{restore_by} restored every semaphore");
        assert_eq!(records_of(killed), 0, "{restore_by} removed the record");
    }
}

/// Every `qemu` semaphore of the QEMU at `pid`, by file offset.
fn qemu_semaphores(bin: &Path, pid: u32) -> Vec<u16> {
    let usdt = UsdtBinary::read(bin).unwrap();
    let id = vmwatch::discover::procs::Process::from_pid(pid)
        .unwrap()
        .binary_id;
    let mut offsets: Vec<u64> = usdt
        .provider_sites("qemu")
        .filter_map(|s| s.semaphore_offset)
        .collect();
    offsets.sort_unstable();
    offsets.dedup();
    offsets
        .iter()
        .map(|&off| vmwatch::attach::semaphores::value(pid, id, off).unwrap())
        .collect()
}

#[test]
fn after_sigkill_the_next_run_restores_every_semaphore_of_a_real_qemu() {
    let bin = skip_without_bpf_and_qemu!();
    let _serial = common::hold(&SERIAL);
    let vm = Qemu::start(&bin, &format!("vmwatch-crash-{}", std::process::id()));
    let dir = tempfile::tempdir().unwrap();
    // Another vmwatch holds two semaphores all along (exact: the governor
    // would lower a hot one's now and then): the repair must leave its
    // increments alone.
    let two = "qemu:virtqueue_fill\nqemu:memory_region_ops_write\n";
    let list = common::feature_list(dir.path(), two);
    let held = dir.path().join("held.csv");
    let options = format!("--probes {} --interval 500ms --budget none", list.display());
    let holder = recording(&[vm.pid()], &options, &held);
    let before = qemu_semaphores(&bin, vm.pid());
    assert_eq!(
        before.iter().filter(|v| **v == 1).count(),
        2,
        "the holder's two"
    );
    assert!(before.len() >= 2900, "{} semaphores", before.len());

    let all = dir.path().join("all.csv");
    let mut rec = recording(&[vm.pid()], "--interval 500ms", &all);
    signal(&rec, libc::SIGKILL);
    let _ = rec.wait();
    let left: Vec<u16> = qemu_semaphores(&bin, vm.pid());
    let raised = left.iter().zip(&before).filter(|(l, b)| *l > *b).count();
    assert_eq!(raised, before.len(), "SIGKILL left every semaphore raised");

    let next = dir.path().join("next.csv");
    let ran = recorder(&[vm.pid()], "--windows 1 --interval 500ms", &next).succeeds();
    let stderr = ran.stderr;
    assert!(
        stderr.contains(&format!("lowered {} USDT semaphores", before.len())),
        "{stderr}"
    );
    assert_eq!(qemu_semaphores(&bin, vm.pid()), before, "not restored");
    signal(&holder, libc::SIGTERM);
    finish(holder);
    assert!(qemu_semaphores(&bin, vm.pid()).iter().all(|v| *v == 0));
}

#[test]
fn a_sigkilled_governor_leaves_no_semaphore_raised_after_cleanup() {
    let _serial = exclusive_bpf_test!(&SERIAL);
    let dir = tempfile::tempdir().unwrap();
    let mut fx = Fixture::start();
    let out = dir.path().join("governed.csv");
    // A hot probe under the default budget: its semaphore is down most of
    // the time, up during each phase's on-time.
    let rec = recording(&[fx.pid], "--interval 200ms --hit-cost 700", &out);
    let load = std::thread::spawn(move || {
        fx.pace("virtqueue_fill", 100_000, 1500);
        fx
    });
    std::thread::sleep(Duration::from_millis(900));
    signal(&rec, libc::SIGKILL);
    let killed = rec.id();
    let mut rec = rec;
    let _ = rec.wait();
    let mut fx = load.join().unwrap();
    let ran = run("cleanup").succeeds();
    let said = format!("{}{}", ran.stdout, ran.stderr);
    assert!(said.contains(&format!("PID {}", fx.pid)), "{said}");
    assert_eq!(raised(&mut fx), 0, "cleanup restored every semaphore");
    assert_eq!(records_of(killed), 0, "cleanup removed the record");
    // And a next vmwatch can raise and count it again.
    let next = dir.path().join("next.csv");
    let mut rec = recording(
        &[fx.pid],
        "--interval 200ms --windows 3 --budget none",
        &next,
    );
    assert_eq!(raised(&mut fx), 2103);
    fx.fire("virtqueue_fill", 50);
    let _ = rec.wait();
    assert_eq!(raised(&mut fx), 0);
}
