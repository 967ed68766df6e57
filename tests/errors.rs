//! Bad input gets one clear sentence on stderr and a non-zero exit.

#[macro_use]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{fixture_path, run, train, training_csv, Fixture, Run};

#[test]
fn probes_of_a_missing_binary() {
    run("probes /nonexistent/qemu-system-x86_64")
        .fails_with("cannot read /nonexistent/qemu-system-x86_64: No such file");
}

#[test]
fn probes_of_a_binary_without_notes() {
    for needle in ["has no USDT probes", "--enable-trace-backends=dtrace"] {
        run("probes /bin/sh").fails_with(needle);
    }
}

#[test]
fn probes_of_a_device_is_refused_not_read_forever() {
    run("probes /dev/zero")
        .fails_with("/dev/zero is not an ELF file vmwatch can read: not a regular file");
}

#[test]
fn probes_of_a_non_elf_file() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("not-elf");
    std::fs::write(&f, "#!/bin/sh\necho hi\n").unwrap();
    run("probes").arg(&f).fails_with("is not an ELF file");
}

#[test]
fn probes_lists_the_fixture() {
    let probes = run("probes")
        .arg(fixture_path())
        .arg("--json")
        .succeeds()
        .json();
    let probe = |name: &str| {
        probes
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{name} not listed"))
            .clone()
    };
    let tap = probe("tap_send");
    assert_eq!(tap["provider"], "qemu");
    assert_eq!(tap["sites"], 2);
    // The probe crate emits systemtap's 1-byte nop.
    assert_eq!(tap["nop5_sites"], 0);
    assert!(tap["semaphore"].is_null());
    assert!(probe("virtqueue_fill")["semaphore"].as_u64().unwrap() > 0);
}

/// `vmwatch record --windows 1 --pid PID -o DIR/x.csv`.
fn record_one_window(pid: u32, dir: &Path) -> Run {
    common::recorder(&[pid], "--windows 1", &dir.join("x.csv"))
}

#[test]
fn record_an_unknown_pid() {
    // PIDs above pid_max never exist.
    run("record --pid 4194304 --windows 1 -o /tmp/never.csv")
        .fails_with("no process with PID 4194304");
    assert!(!Path::new("/tmp/never.csv").exists());
}

#[test]
fn record_a_process_without_probes() {
    let sleeper = common::sleeper();
    let dir = tempfile::tempdir().unwrap();
    record_one_window(sleeper.pid(), dir.path()).fails_with("has no USDT probes");
}

#[test]
fn record_an_unknown_vm_name() {
    run("record --vm no-such-vm-name -o /tmp/never2.csv")
        .fails_with("no running QEMU process has the VM name `no-such-vm-name`");
}

#[test]
fn record_needs_a_target() {
    let ran = run("record -o /tmp/x.csv").output();
    assert!(!ran.status.success());
    assert!(ran.stderr.contains("--pid"));
}

#[test]
fn record_with_an_empty_probe_list() {
    let dir = tempfile::tempdir().unwrap();
    let list = common::feature_list(dir.path(), "# nothing\n");
    run("record --pid 1 --probes")
        .arg(&list)
        .out(dir.path().join("x.csv"))
        .fails_with("the feature list is empty");
}

#[test]
fn record_without_bpf_permission() {
    skip_without_bpf!();
    // Copies readable by an unprivileged user, outside root-only dirs.
    let dir = tempfile::tempdir().unwrap();
    common::chmod(dir.path(), 0o777);
    let vm = common::install(
        Path::new(env!("CARGO_BIN_EXE_vmwatch")),
        dir.path(),
        "vmwatch",
    );
    let fx = common::install(&fixture_path(), dir.path(), "vmwatch-fixture");
    let fixture = Fixture::start_with(&mut common::as_nobody(&fx));
    common::run_as_nobody(&vm, "record --windows 1")
        .pid(fixture.pid)
        .out(dir.path().join("x.csv"))
        .fails_with("needs root or CAP_BPF");
}

/// A PID whose /proc/PID/stat has the PF_KTHREAD flag (field 9).
fn kernel_thread() -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    let rest = s[s.rfind(')')? + 1..].to_string();
                    rest.split_whitespace().nth(6)?.parse::<u64>().ok()
                })
                .is_some_and(|flags| flags & 0x0020_0000 != 0)
        })
}

#[test]
fn record_a_kernel_thread() {
    // PID 2 is kthreadd, unless a PID namespace hides the kernel's threads.
    let Some(pid) = kernel_thread() else {
        eprintln!("SKIPPED record_a_kernel_thread: no kernel thread is visible in /proc");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    record_one_window(pid, dir.path()).fails_with(&format!(
        "vmwatch: PID {pid} is a kernel thread, not a QEMU process"
    ));
}

#[test]
fn record_a_zombie() {
    // Exits at once; never waited for until the end, so it stays a zombie.
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        if stat[stat.rfind(')').unwrap() + 1..]
            .trim_start()
            .starts_with('Z')
        {
            break;
        }
        assert!(Instant::now() < end, "PID {pid} did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
    let dir = tempfile::tempdir().unwrap();
    let ran = record_one_window(pid, dir.path()).output();
    let _ = child.wait();
    ran.assert_fails_with(&format!(
        "vmwatch: PID {pid} has exited (zombie, not yet reaped by its parent)"
    ));
}

/// Runs `cmd` with at most 1 GiB of address space: it must fail with
/// `needle` within 30 s, not exhaust the machine.
fn fails_in_bounded_memory(cmd: Run, needle: &str) {
    let t = Instant::now();
    let ran = cmd.address_space(1 << 30).output();
    let took = t.elapsed();
    ran.assert_fails_with(needle);
    assert!(took < Duration::from_secs(30), "took {took:?}");
}

/// A scratch directory with a small training set, `x.csv`, in it.
fn training_data() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("x.csv");
    training_csv(&data, 20);
    (dir, data)
}

#[test]
fn train_on_dev_zero_fails_with_bounded_memory() {
    fails_in_bounded_memory(
        run("train /dev/zero -o /tmp/never-m.json"),
        "/dev/zero line 1: the line is longer than 64 MiB",
    );
}

#[test]
fn detect_with_a_dev_zero_model_fails_with_bounded_memory() {
    let (_dir, data) = training_data();
    fails_in_bounded_memory(
        run("detect --model /dev/zero").arg(&data),
        "/dev/zero is larger than 256 MiB",
    );
}

#[test]
fn train_with_a_dev_zero_feature_list_fails_with_bounded_memory() {
    let (dir, data) = training_data();
    let model = dir.path().join("m.json");
    fails_in_bounded_memory(
        train(&data, "--features /dev/zero", &model),
        "/dev/zero is larger than 16 MiB",
    );
    assert!(!model.exists());
}

#[test]
fn train_rejects_out_of_range_svm_parameters() {
    let (dir, data) = training_data();
    let model = dir.path().join("m.json");
    for (nu, gamma, option) in [
        ("0.1", "inf", "--gamma"),
        ("0.1", "0", "--gamma"),
        ("0.1", "NaN", "--gamma"),
        ("inf", "0.5", "--nu"),
        ("1.5", "0.5", "--nu"),
        ("0", "0.5", "--nu"),
    ] {
        let case = format!("--nu {nu} --gamma {gamma}");
        let ran = train(&data, &case, &model).output();
        let stderr = &ran.stderr;
        assert!(!ran.status.success(), "{case}: {stderr}");
        assert!(stderr.contains(option), "{case}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(!model.exists(), "{case} wrote a model");
    }
}

#[test]
fn detect_rejects_a_model_with_bad_smoothing() {
    let (dir, data) = training_data();
    let model = dir.path().join("m.json");
    train(&data, "--nu 0.1 --gamma 0.5", &model).succeeds();
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&model).unwrap()).unwrap();
    v["smoothing"] = serde_json::json!({"k": 0, "n": 3});
    std::fs::write(&model, v.to_string()).unwrap();
    run("detect --model")
        .arg(&model)
        .arg(&data)
        .fails_with("smoothing");
}
