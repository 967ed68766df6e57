//! Who is a VM: under `--vm` and `--all` a process named like QEMU is used
//! only if root or a system account runs it from a root-owned executable
//! nobody else can write; anything else is skipped and logged, never fatal
//! while usable targets remain. `list` marks such processes.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{bpf_available, fixture_path, vmwatch, Dataset, Fixture};

/// `--all` sees every QEMU-named process of this file: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const NOBODY: u32 = 65534;
const AS_NOBODY: [&str; 4] = [
    "--reuid=65534",
    "--regid=65534",
    "--clear-groups",
    "--inh-caps=-all",
];

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// `src` copied as `DIR/qemu-system-x86_64` (DIR mode 0755, so nobody can
/// run it), with the given mode and owner.
fn qemu_copy(src: &Path, mode: u32, owner: u32) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    chmod(dir.path(), 0o755);
    let bin = dir.path().join("qemu-system-x86_64");
    std::fs::copy(src, &bin).unwrap();
    std::os::unix::fs::chown(&bin, Some(owner), Some(owner)).unwrap();
    chmod(&bin, mode);
    (dir, bin)
}

/// The fixture (USDT probes of provider `qemu`) as `-name guest=NAME`,
/// run by root or, with `nobody`, by uid 65534.
fn start_fixture(bin: &Path, name: &str, nobody: bool) -> Fixture {
    let mut cmd = if nobody {
        let mut c = Command::new("setpriv");
        c.args(AS_NOBODY).arg(bin);
        c
    } else {
        Command::new(bin)
    };
    cmd.args(["-name", &format!("guest={name}")]);
    Fixture::start_with(&mut cmd)
}

/// A QEMU-named copy of `cat` (no USDT probes) that reads its open stdin
/// forever and carries `-name guest=NAME` among its file operands.
struct Cat {
    child: Child,
    pid: u32,
}

impl Cat {
    fn start(bin: &Path, name: &str, nobody: bool) -> Self {
        let mut cmd = if nobody {
            let mut c = Command::new("setpriv");
            c.args(AS_NOBODY).arg(bin);
            c
        } else {
            Command::new(bin)
        };
        let child = cmd
            .args(["-", "--", "-name", &format!("guest={name}")])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        // Until setpriv has exec'd, the process is not the copy yet.
        let end = Instant::now() + Duration::from_secs(5);
        while std::fs::read_link(format!("/proc/{pid}/exe"))
            .ok()
            .as_deref()
            != Some(bin)
        {
            assert!(Instant::now() < end, "{} did not start", bin.display());
            std::thread::sleep(Duration::from_millis(10));
        }
        Self { child, pid }
    }
}

impl Drop for Cat {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `vmwatch record TARGET... --windows 1`; returns its output and the rows.
fn record(targets: &[&str]) -> (Output, Option<Dataset>) {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("out.csv");
    let out = vmwatch()
        .arg("record")
        .args(targets)
        .args(["--windows", "1", "--interval", "300ms", "-o"])
        .arg(&csv)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let ds = csv.exists().then(|| Dataset::read(&csv));
    (out, ds)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn list_json() -> Vec<serde_json::Value> {
    let out = vmwatch().args(["list", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array().unwrap().clone()
}

fn name(test: &str) -> String {
    format!("trust-{}-{test}", std::process::id())
}

#[test]
fn record_vm_skips_a_fake_run_by_another_user() {
    let test = "record_vm_skips_a_fake_run_by_another_user";
    if !bpf_available(test) {
        return;
    }
    let _g = serial();
    let vm = name("web1");
    let (_d1, legit_bin) = qemu_copy(&fixture_path(), 0o755, 0);
    let (_d2, cat_bin) = qemu_copy(Path::new("/bin/cat"), 0o755, 0);
    let legit = start_fixture(&legit_bin, &vm, false);
    // The attack: a user's own process claiming the VM's name, whose binary
    // has no probes (it used to abort root's recording at start).
    let fake = Cat::start(&cat_bin, &vm, true);

    let (out, ds) = record(&["--vm", &vm]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "skipping QEMU PID {} (VM {vm}): run by uid {NOBODY}, which is neither root nor a system account",
            fake.pid
        )),
        "{err}"
    );
    let ds = ds.unwrap();
    assert_eq!(ds.rows_of(legit.pid).count(), 1, "{err}");
    assert_eq!(ds.rows_of(fake.pid).count(), 0, "{err}");
}

#[test]
fn record_all_is_not_filled_by_a_fake() {
    let test = "record_all_is_not_filled_by_a_fake";
    if !bpf_available(test) {
        return;
    }
    let _g = serial();
    let (_d, bin) = qemu_copy(&fixture_path(), 0o755, 0);
    // Trusted QEMU processes of others on this host take slots too.
    let others = list_json().iter().filter(|e| e["trusted"] != false).count();
    let legit = start_fixture(&bin, &name("all-legit"), false);
    // Same root-owned binary, run by nobody: only the owner differs.
    let fake = start_fixture(&bin, &name("all-fake"), true);

    let max = (others + 1).to_string();
    // Syscalls only: counting must not touch others' QEMU (no uprobes, no
    // semaphores); the slots are the same.
    let (out, ds) = record(&["--all", "--source", "syscalls", "--max-vms", &max]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!("skipping QEMU PID {}", fake.pid)),
        "{err}"
    );
    let ds = ds.unwrap();
    assert_eq!(ds.rows_of(legit.pid).count(), 1, "{err}");
    assert_eq!(ds.rows_of(fake.pid).count(), 0, "{err}");
}

#[test]
fn record_vm_skips_binaries_others_could_change() {
    let test = "record_vm_skips_binaries_others_could_change";
    if !bpf_available(test) {
        return;
    }
    let _g = serial();
    let vm = name("writable");
    let (_d1, legit_bin) = qemu_copy(&fixture_path(), 0o755, 0);
    let (_d2, nobodys_bin) = qemu_copy(&fixture_path(), 0o755, NOBODY);
    let (_d3, writable_bin) = qemu_copy(&fixture_path(), 0o777, 0);
    let legit = start_fixture(&legit_bin, &vm, false);
    let nobodys = start_fixture(&nobodys_bin, &vm, false);
    let writable = start_fixture(&writable_bin, &vm, false);

    let (out, ds) = record(&["--vm", &vm]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "skipping QEMU PID {} (VM {vm}): its executable {} is owned by uid {NOBODY}, not root",
            nobodys.pid,
            nobodys_bin.display()
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "skipping QEMU PID {} (VM {vm}): its executable {} is writable by group or others (mode 0777)",
            writable.pid,
            writable_bin.display()
        )),
        "{err}"
    );
    let ds = ds.unwrap();
    assert_eq!(ds.rows_of(legit.pid).count(), 1, "{err}");
    assert_eq!(ds.rows_of(nobodys.pid).count(), 0, "{err}");
    assert_eq!(ds.rows_of(writable.pid).count(), 0, "{err}");
}

#[test]
fn vm_with_only_untrusted_candidates_says_why() {
    let test = "vm_with_only_untrusted_candidates_says_why";
    if !bpf_available(test) {
        return;
    }
    let _g = serial();
    let vm = name("only-fake");
    let (_d, bin) = qemu_copy(&fixture_path(), 0o755, 0);
    let fake = start_fixture(&bin, &vm, true);

    let (out, ds) = record(&["--vm", &vm]);
    let err = stderr(&out);
    assert!(!out.status.success(), "recorded the fake: {err}");
    assert!(ds.is_none(), "wrote a dataset: {err}");
    let want = format!(
        "vmwatch: no running QEMU process has the VM name `{vm}` (1 candidate skipped: PID {}: \
         run by uid {NOBODY}, which is neither root nor a system account)",
        fake.pid
    );
    assert!(err.lines().any(|l| l == want), "want {want:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn list_marks_untrusted_processes() {
    let test = "list_marks_untrusted_processes";
    if !bpf_available(test) {
        return;
    }
    let _g = serial();
    let (_d, bin) = qemu_copy(&fixture_path(), 0o755, 0);
    let legit = start_fixture(&bin, &name("list-legit"), false);
    let fake = start_fixture(&bin, &name("list-fake"), true);

    let list = list_json();
    let entry = |pid: u32| {
        list.iter()
            .find(|e| e["pid"] == pid)
            .unwrap_or_else(|| panic!("PID {pid} not listed: {list:?}"))
            .clone()
    };
    let l = entry(legit.pid);
    assert_eq!(l["trusted"], true, "{l}");
    assert!(l["untrusted_reason"].is_null(), "{l}");
    assert!(l["probes"].as_u64().unwrap() > 0, "{l}");
    let f = entry(fake.pid);
    assert_eq!(f["trusted"], false, "{f}");
    assert_eq!(f["vm"], name("list-fake"));
    assert_eq!(
        f["untrusted_reason"],
        format!("run by uid {NOBODY}, which is neither root nor a system account"),
        "{f}"
    );

    let out = vmwatch().arg("list").output().unwrap();
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    let line = |pid: u32| {
        table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(&pid.to_string()))
            .unwrap_or_else(|| panic!("PID {pid} not in the table: {table}"))
            .to_string()
    };
    assert!(
        line(fake.pid).contains("(untrusted, not used by --vm/--all: run by uid 65534"),
        "{table}"
    );
    assert!(!line(legit.pid).contains("untrusted"), "{table}");
}

#[test]
fn list_as_an_unprivileged_user_needs_root() {
    let test = "list_as_an_unprivileged_user_needs_root";
    if !bpf_available(test) {
        return;
    }
    let _g = serial();
    let (dir, bin) = qemu_copy(&fixture_path(), 0o755, 0);
    let _qemu = start_fixture(&bin, &name("hidden"), false);
    // A vmwatch nobody can run (the target dir may be root-only).
    let vm = dir.path().join("vmwatch");
    std::fs::copy(env!("CARGO_BIN_EXE_vmwatch"), &vm).unwrap();
    chmod(&vm, 0o755);

    for json in [false, true] {
        let mut cmd = Command::new("setpriv");
        cmd.args(AS_NOBODY).arg(&vm).arg("list");
        if json {
            cmd.arg("--json");
        }
        let out = cmd.stdin(Stdio::null()).output().unwrap();
        let err = stderr(&out);
        assert!(
            !out.status.success(),
            "succeeded as nobody: {}{err}",
            String::from_utf8_lossy(&out.stdout)
        );
        let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("vmwatch: ")).collect();
        assert_eq!(lines.len(), 1, "{err}");
        assert!(
            lines[0].starts_with("vmwatch: listing QEMU processes needs root: ")
                && lines[0].ends_with(&format!("hidden from uid {NOBODY}")),
            "{err}"
        );
        assert!(out.stdout.is_empty(), "partial list printed");
    }
}

#[test]
fn record_skips_a_qemu_without_probes_among_others() {
    let test = "record_skips_a_qemu_without_probes_among_others";
    if !bpf_available(test) {
        return;
    }
    let _g = serial();
    let (_d1, legit_bin) = qemu_copy(&fixture_path(), 0o755, 0);
    let (_d2, cat_bin) = qemu_copy(Path::new("/bin/cat"), 0o755, 0);
    let legit = start_fixture(&legit_bin, &name("probes-legit"), false);
    // Trusted (root's, root-owned binary) but built without USDT probes.
    let plain = Cat::start(&cat_bin, &name("probes-none"), false);

    // --all would attach to whatever QEMU others run on this host; two
    // names take the same path (found by name, not --pid).
    let (out, ds) = record(&["--vm", &name("probes-legit"), "--vm", &name("probes-none")]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "skipping QEMU PID {} (VM {}): {} has no USDT probes",
            plain.pid,
            name("probes-none"),
            cat_bin.display()
        )),
        "{err}"
    );
    let ds = ds.unwrap();
    assert_eq!(ds.rows_of(legit.pid).count(), 1, "{err}");
    assert_eq!(ds.rows_of(plain.pid).count(), 0, "{err}");

    // Named alone, it is still an error that says why.
    let (out, _) = record(&["--vm", &name("probes-none")]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("vmwatch: ")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains("has no USDT probes"), "{err}");
}

#[test]
fn record_vm_skips_a_fake_that_starts_later() {
    let test = "record_vm_skips_a_fake_that_starts_later";
    if !bpf_available(test) {
        return;
    }
    let _g = serial();
    let vm = name("later");
    let (dir, bin) = qemu_copy(&fixture_path(), 0o755, 0);
    let legit = start_fixture(&bin, &vm, false);
    let csv = dir.path().join("out.csv");
    let mut rec = vmwatch()
        .args([
            "record",
            "--vm",
            &vm,
            "--windows",
            "4",
            "--interval",
            "300ms",
            "-o",
        ])
        .arg(&csv)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    common::wait_for_file(&csv, Duration::from_secs(30), &mut rec);
    // --vm re-resolves every window: the fake must not join later either.
    let fake = start_fixture(&bin, &vm, true);
    let out = rec.wait_with_output().unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let ds = Dataset::read(&csv);
    assert_eq!(ds.rows_of(legit.pid).count(), 4, "{err}");
    assert_eq!(ds.rows_of(fake.pid).count(), 0, "{err}");
    // Logged once, not every window.
    assert_eq!(
        err.matches(&format!(
            "skipping QEMU PID {} (VM {vm}): run by uid {NOBODY}",
            fake.pid
        ))
        .count(),
        1,
        "{err}"
    );
}
