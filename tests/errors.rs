//! Bad input gets one clear sentence on stderr and a non-zero exit.

mod common;

use std::process::{Command, Stdio};

use common::{bpf_available, fails_with, fixture_path, vmwatch, Fixture};

#[test]
fn probes_of_a_missing_binary() {
    let out = vmwatch()
        .args(["probes", "/nonexistent/qemu-system-x86_64"])
        .output()
        .unwrap();
    fails_with(
        out,
        "cannot read /nonexistent/qemu-system-x86_64: No such file",
    );
}

#[test]
fn probes_of_a_binary_without_notes() {
    let out = vmwatch().args(["probes", "/bin/sh"]).output().unwrap();
    fails_with(out, "has no USDT probes");
    let out = vmwatch().args(["probes", "/bin/sh"]).output().unwrap();
    fails_with(out, "--enable-trace-backends=dtrace");
}

#[test]
fn probes_of_a_device_is_refused_not_read_forever() {
    let out = vmwatch().args(["probes", "/dev/zero"]).output().unwrap();
    fails_with(
        out,
        "/dev/zero is not an ELF file vmwatch can read: not a regular file",
    );
}

#[test]
fn probes_of_a_non_elf_file() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("not-elf");
    std::fs::write(&f, "#!/bin/sh\necho hi\n").unwrap();
    let out = vmwatch().arg("probes").arg(&f).output().unwrap();
    fails_with(out, "is not an ELF file");
}

#[test]
fn probes_lists_the_fixture() {
    let out = vmwatch()
        .arg("probes")
        .arg(fixture_path())
        .arg("--json")
        .output()
        .unwrap();
    assert!(out.status.success());
    let probes: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let tap = probes
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "tap_send")
        .expect("tap_send listed");
    assert_eq!(tap["provider"], "qemu");
    assert_eq!(tap["sites"], 2);
    // The probe crate emits systemtap's 1-byte nop.
    assert_eq!(tap["nop5_sites"], 0);
    assert!(tap["semaphore"].is_null());
    let vq = probes
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "virtqueue_fill")
        .unwrap();
    assert!(vq["semaphore"].as_u64().unwrap() > 0);
}

#[test]
fn record_an_unknown_pid() {
    // PIDs above pid_max never exist.
    let out = vmwatch()
        .args([
            "record",
            "--pid",
            "4194304",
            "--windows",
            "1",
            "-o",
            "/tmp/never.csv",
        ])
        .output()
        .unwrap();
    fails_with(out, "no process with PID 4194304");
    assert!(!std::path::Path::new("/tmp/never.csv").exists());
}

#[test]
fn record_a_process_without_probes() {
    let mut sleeper = Command::new("sleep").arg("30").spawn().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = vmwatch()
        .args([
            "record",
            "--pid",
            &sleeper.id().to_string(),
            "--windows",
            "1",
            "-o",
        ])
        .arg(dir.path().join("x.csv"))
        .output()
        .unwrap();
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    fails_with(out, "has no USDT probes");
}

#[test]
fn record_an_unknown_vm_name() {
    let out = vmwatch()
        .args(["record", "--vm", "no-such-vm-name", "-o", "/tmp/never2.csv"])
        .output()
        .unwrap();
    fails_with(
        out,
        "no running QEMU process has the VM name `no-such-vm-name`",
    );
}

#[test]
fn record_needs_a_target() {
    let out = vmwatch()
        .args(["record", "-o", "/tmp/x.csv"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--pid"));
}

#[test]
fn record_with_an_empty_probe_list() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("empty.txt");
    std::fs::write(&list, "# nothing\n").unwrap();
    let out = vmwatch()
        .args(["record", "--pid", "1", "--probes"])
        .arg(&list)
        .arg("-o")
        .arg(dir.path().join("x.csv"))
        .output()
        .unwrap();
    fails_with(out, "the feature list is empty");
}

#[test]
fn record_without_bpf_permission() {
    if !bpf_available("record_without_bpf_permission") {
        return;
    }
    // Copies readable by an unprivileged user, outside root-only dirs.
    let dir = tempfile::tempdir().unwrap();
    let vm = dir.path().join("vmwatch");
    let fx = dir.path().join("vmwatch-fixture");
    std::fs::copy(env!("CARGO_BIN_EXE_vmwatch"), &vm).unwrap();
    std::fs::copy(fixture_path(), &fx).unwrap();
    let perms = |p: &std::path::Path, mode| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    perms(dir.path(), 0o777);
    perms(&vm, 0o755);
    perms(&fx, 0o755);
    let nobody = [
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
    ];
    let fixture = Fixture::start_with(Command::new("setpriv").args(nobody).arg(&fx));
    let out = Command::new("setpriv")
        .args(nobody)
        .arg(&vm)
        .args([
            "record",
            "--pid",
            &fixture.pid.to_string(),
            "--windows",
            "1",
            "-o",
        ])
        .arg(dir.path().join("x.csv"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    fails_with(out, "needs root or CAP_BPF");
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
    let out = vmwatch()
        .args(["record", "--pid", &pid.to_string(), "--windows", "1", "-o"])
        .arg(dir.path().join("x.csv"))
        .output()
        .unwrap();
    fails_with(
        out,
        &format!("vmwatch: PID {pid} is a kernel thread, not a QEMU process"),
    );
}

#[test]
fn record_a_zombie() {
    // Exits at once; never waited for until the end, so it stays a zombie.
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        if stat[stat.rfind(')').unwrap() + 1..]
            .trim_start()
            .starts_with('Z')
        {
            break;
        }
        assert!(std::time::Instant::now() < end, "PID {pid} did not exit");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let dir = tempfile::tempdir().unwrap();
    let out = vmwatch()
        .args(["record", "--pid", &pid.to_string(), "--windows", "1", "-o"])
        .arg(dir.path().join("x.csv"))
        .output()
        .unwrap();
    let _ = child.wait();
    fails_with(
        out,
        &format!("vmwatch: PID {pid} has exited (zombie, not yet reaped by its parent)"),
    );
}

/// Runs vmwatch with at most 1 GiB of address space: an unbounded reader
/// dies of an allocation failure instead of exhausting the machine.
fn bounded(args: &[&std::ffi::OsStr]) -> (std::process::Output, std::time::Duration) {
    use std::os::unix::process::CommandExt;
    let mut cmd = vmwatch();
    cmd.args(args);
    // SAFETY: setrlimit is async-signal-safe; nothing else runs in the child.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 1 << 30,
                rlim_max: 1 << 30,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let t = std::time::Instant::now();
    let out = cmd.output().unwrap();
    (out, t.elapsed())
}

#[test]
fn train_on_dev_zero_fails_with_bounded_memory() {
    let (out, took) = bounded(&[
        "train".as_ref(),
        "/dev/zero".as_ref(),
        "-o".as_ref(),
        "/tmp/never-m.json".as_ref(),
    ]);
    fails_with(out, "/dev/zero line 1: the line is longer than 64 MiB");
    assert!(took < std::time::Duration::from_secs(30), "took {took:?}");
}

#[test]
fn detect_with_a_dev_zero_model_fails_with_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("x.csv");
    common::training_csv(&data, 20);
    let (out, took) = bounded(&[
        "detect".as_ref(),
        "--model".as_ref(),
        "/dev/zero".as_ref(),
        data.as_os_str(),
    ]);
    fails_with(out, "/dev/zero is larger than 256 MiB");
    assert!(took < std::time::Duration::from_secs(30), "took {took:?}");
}

#[test]
fn train_with_a_dev_zero_feature_list_fails_with_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("x.csv");
    common::training_csv(&data, 20);
    let model = dir.path().join("m.json");
    let (out, took) = bounded(&[
        "train".as_ref(),
        data.as_os_str(),
        "--features".as_ref(),
        "/dev/zero".as_ref(),
        "-o".as_ref(),
        model.as_os_str(),
    ]);
    fails_with(out, "/dev/zero is larger than 16 MiB");
    assert!(took < std::time::Duration::from_secs(30), "took {took:?}");
    assert!(!model.exists());
}

#[test]
fn train_rejects_out_of_range_svm_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("x.csv");
    common::training_csv(&data, 20);
    let model = dir.path().join("m.json");
    for (nu, gamma, option) in [
        ("0.1", "inf", "--gamma"),
        ("0.1", "0", "--gamma"),
        ("0.1", "NaN", "--gamma"),
        ("inf", "0.5", "--nu"),
        ("1.5", "0.5", "--nu"),
        ("0", "0.5", "--nu"),
    ] {
        let out = vmwatch()
            .arg("train")
            .arg(&data)
            .args(["--nu", nu, "--gamma", gamma, "-o"])
            .arg(&model)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "--nu {nu} --gamma {gamma}: {stderr}");
        assert!(
            stderr.contains(option),
            "--nu {nu} --gamma {gamma}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(!model.exists(), "--nu {nu} --gamma {gamma} wrote a model");
    }
}

#[test]
fn detect_rejects_a_model_with_bad_smoothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("x.csv");
    common::training_csv(&data, 20);
    let model = dir.path().join("m.json");
    let out = vmwatch()
        .arg("train")
        .arg(&data)
        .args(["--nu", "0.1", "--gamma", "0.5", "-o"])
        .arg(&model)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&model).unwrap()).unwrap();
    v["smoothing"] = serde_json::json!({"k": 0, "n": 3});
    std::fs::write(&model, v.to_string()).unwrap();
    let out = vmwatch()
        .args(["detect", "--model"])
        .arg(&model)
        .arg(&data)
        .output()
        .unwrap();
    fails_with(out, "smoothing");
}
