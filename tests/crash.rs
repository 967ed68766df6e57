//! Crash and signal safety: every stop signal detaches cleanly (semaphores
//! lowered, output closed), and the semaphores of a SIGKILLed vmwatch are
//! restored by the next start or by `vmwatch cleanup`. Run as root.

mod common;

use std::io::Read;
use std::path::Path;
use std::process::Child;
use std::time::Duration;

use common::{bpf_available, finish, qemu_binary, record, vmwatch, wait_for_file, Fixture, Qemu};
use vmwatch::stapsdt::UsdtBinary;

/// The tests here kill vmwatch instances and watch what the next one does:
/// one at a time, so that no other test's vmwatch does the repair first.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: plain kill(2) of our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
}

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
    if !bpf_available("every_stop_signal_lowers_semaphores_and_closes_the_output") {
        return;
    }
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    for (sig, name) in [
        (libc::SIGHUP, "SIGHUP"),
        (libc::SIGQUIT, "SIGQUIT"),
        (libc::SIGTERM, "SIGTERM"),
        (libc::SIGINT, "SIGINT"),
    ] {
        let mut fx = Fixture::start();
        let out = dir.path().join(format!("{name}.csv.gz"));
        let mut rec = record(&[fx.pid], &["--interval", "100ms"], &out);
        wait_for_file(&out, Duration::from_secs(30), &mut rec);
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
    let raised = Path::new(vmwatch::semaphores::RUN_DIR).join("raised");
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
    if !bpf_available("after_sigkill_the_next_run_and_cleanup_restore_the_fixtures_semaphores") {
        return;
    }
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    for restore_by in ["next run", "cleanup"] {
        let mut fx = Fixture::start();
        assert_eq!(raised(&mut fx), 0);
        let out = dir.path().join("killed.csv");
        let _ = std::fs::remove_file(&out);
        let mut rec = record(&[fx.pid], &["--interval", "100ms"], &out);
        wait_for_file(&out, Duration::from_secs(30), &mut rec);
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
            vmwatch()
                .args(["record", "--pid", &other.pid.to_string(), "--windows", "1"])
                .args(["--interval", "100ms", "-o"])
                .arg(&next)
                .output()
                .unwrap()
        } else {
            vmwatch().arg("cleanup").output().unwrap()
        };
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{restore_by}: {stderr}");
        let said = format!("{stdout}{stderr}");
        assert!(
            said.contains("2103 ") && said.contains(&format!("PID {}", fx.pid)),
            "{restore_by} says what it lowered: {said}"
        );
        assert_eq!(raised(&mut fx), 0, "{restore_by} restored every semaphore");
        assert_eq!(records_of(killed), 0, "{restore_by} removed the record");
    }
}

/// Every `qemu` semaphore of the QEMU at `pid`, by file offset.
fn qemu_semaphores(bin: &Path, pid: u32) -> Vec<u16> {
    let usdt = UsdtBinary::read(bin).unwrap();
    let id = vmwatch::procs::Process::from_pid(pid).unwrap().binary_id;
    let mut offsets: Vec<u64> = usdt
        .provider_sites("qemu")
        .filter_map(|s| s.semaphore_offset)
        .collect();
    offsets.sort_unstable();
    offsets.dedup();
    offsets
        .iter()
        .map(|&off| vmwatch::semaphores::value(pid, id, off).unwrap())
        .collect()
}

#[test]
fn after_sigkill_the_next_run_restores_every_semaphore_of_a_real_qemu() {
    let test = "after_sigkill_the_next_run_restores_every_semaphore_of_a_real_qemu";
    let Some(bin) = qemu_binary(test) else {
        return;
    };
    if !bpf_available(test) {
        return;
    }
    let _serial = serial();
    let vm = Qemu::start(&bin, &format!("vmwatch-crash-{}", std::process::id()));
    let dir = tempfile::tempdir().unwrap();
    // Another vmwatch holds two semaphores all along: the repair must leave
    // its increments alone.
    let list = dir.path().join("two.txt");
    std::fs::write(&list, "qemu:virtqueue_fill\nqemu:memory_region_ops_write\n").unwrap();
    let held = dir.path().join("held.csv");
    let mut holder = record(
        &[vm.pid()],
        &["--probes", list.to_str().unwrap(), "--interval", "500ms"],
        &held,
    );
    wait_for_file(&held, Duration::from_secs(30), &mut holder);
    let before = qemu_semaphores(&bin, vm.pid());
    assert_eq!(
        before.iter().filter(|v| **v == 1).count(),
        2,
        "the holder's two"
    );
    assert!(before.len() >= 2900, "{} semaphores", before.len());

    let all = dir.path().join("all.csv");
    let mut rec = record(&[vm.pid()], &["--interval", "500ms"], &all);
    wait_for_file(&all, Duration::from_secs(30), &mut rec);
    signal(&rec, libc::SIGKILL);
    let _ = rec.wait();
    let left: Vec<u16> = qemu_semaphores(&bin, vm.pid());
    let raised = left.iter().zip(&before).filter(|(l, b)| *l > *b).count();
    assert_eq!(raised, before.len(), "SIGKILL left every semaphore raised");

    let next = dir.path().join("next.csv");
    let out = vmwatch()
        .args(["record", "--pid", &vm.pid().to_string(), "--windows", "1"])
        .args(["--interval", "500ms", "-o"])
        .arg(&next)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("lowered {} USDT semaphores", before.len())),
        "{stderr}"
    );
    assert_eq!(qemu_semaphores(&bin, vm.pid()), before, "not restored");
    signal(&holder, libc::SIGTERM);
    finish(holder);
    assert!(qemu_semaphores(&bin, vm.pid()).iter().all(|v| *v == 0));
}
