//! Who is a VM: under `--vm` and `--all` a process named like QEMU is used
//! only if root or a system account runs it from a root-owned executable
//! nobody else can write; anything else is skipped and logged, never fatal
//! while usable targets remain. `list` marks such processes.

#[macro_use]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{fixture_path, list_json, run, Dataset, Fixture, KillOnDrop, Ran};

/// `--all` sees every QEMU-named process of this file: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Why a process of [`common::NOBODY`] is not taken for a VM.
const NOT_SYSTEM: &str = "run by uid 65534, which is neither root nor a system account";

/// `src` copied as `DIR/qemu-system-x86_64` (DIR mode 0755, so nobody can
/// run it), with the given mode and owner.
fn qemu_copy(src: &Path, mode: u32, owner: u32) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    common::chmod(dir.path(), 0o755);
    let bin = common::install(src, dir.path(), "qemu-system-x86_64");
    std::os::unix::fs::chown(&bin, Some(owner), Some(owner)).unwrap();
    common::chmod(&bin, mode);
    (dir, bin)
}

/// `bin` run by root or, with `nobody`, by uid 65534.
fn launch(bin: &Path, nobody: bool) -> Command {
    if nobody {
        common::as_nobody(bin)
    } else {
        Command::new(bin)
    }
}

/// The fixture (USDT probes of provider `qemu`) as `-name guest=NAME`.
fn start_fixture(bin: &Path, name: &str, nobody: bool) -> Fixture {
    Fixture::start_with(launch(bin, nobody).args(["-name", &format!("guest={name}")]))
}

/// A QEMU-named copy of `cat` (no USDT probes) that reads its open stdin
/// forever and carries `-name guest=NAME` among its file operands.
fn start_cat(bin: &Path, name: &str, nobody: bool) -> KillOnDrop {
    let child = common::spawn(
        launch(bin, nobody)
            .args(["-", "--", "-name", &format!("guest={name}")])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let cat = KillOnDrop(child);
    let pid = cat.pid();
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
    cat
}

/// `vmwatch record TARGETS --windows 1`; returns what it said and the rows.
fn record(targets: &str) -> (Ran, Option<Dataset>) {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("out.csv");
    let ran = run("record --windows 1 --interval 300ms")
        .args(targets)
        .out(&csv)
        .output();
    let ds = csv.exists().then(|| Dataset::read(&csv));
    (ran, ds)
}

/// Records `targets` for one window: it must succeed, log every sentence
/// of `skipped`, and give each `kept` PID a row and no skipped PID any.
fn records_skipping(targets: &str, kept: &[u32], skipped: &[(u32, String)]) {
    let (ran, ds) = record(targets);
    let err = &ran.stderr;
    assert!(ran.status.success(), "{err}");
    for (_, said) in skipped {
        assert!(err.contains(said.as_str()), "{said:?} not logged: {err}");
    }
    let ds = ds.unwrap();
    for pid in kept {
        assert_eq!(ds.rows_of(*pid).count(), 1, "PID {pid}: {err}");
    }
    for (pid, _) in skipped {
        assert_eq!(ds.rows_of(*pid).count(), 0, "PID {pid}: {err}");
    }
}

/// What vmwatch logs when it skips a candidate of `vm`.
fn skipping(pid: u32, vm: &str, why: &str) -> String {
    format!("skipping QEMU PID {pid} (VM {vm}): {why}")
}

fn name(test: &str) -> String {
    format!("trust-{}-{test}", std::process::id())
}

#[test]
fn record_vm_skips_a_fake_run_by_another_user() {
    let _g = exclusive_bpf_test!(&SERIAL);
    let vm = name("web1");
    let (_d1, legit_bin) = qemu_copy(&fixture_path(), 0o755, 0);
    let (_d2, cat_bin) = qemu_copy(Path::new("/bin/cat"), 0o755, 0);
    let legit = start_fixture(&legit_bin, &vm, false);
    // The attack: a user's own process claiming the VM's name, whose binary
    // has no probes (it used to abort root's recording at start).
    let fake = start_cat(&cat_bin, &vm, true);
    let said = skipping(fake.pid(), &vm, NOT_SYSTEM);
    records_skipping(&format!("--vm {vm}"), &[legit.pid], &[(fake.pid(), said)]);
}

#[test]
fn record_all_is_not_filled_by_a_fake() {
    let _g = exclusive_bpf_test!(&SERIAL);
    let (_d, bin) = qemu_copy(&fixture_path(), 0o755, 0);
    // Trusted QEMU processes of others on this host take slots too.
    let others = list_json().iter().filter(|e| e["trusted"] != false).count();
    let legit = start_fixture(&bin, &name("all-legit"), false);
    // Same root-owned binary, run by nobody: only the owner differs.
    let fake = start_fixture(&bin, &name("all-fake"), true);

    // Syscalls only: counting must not touch others' QEMU (no uprobes, no
    // semaphores); the slots are the same.
    let targets = format!("--all --source syscalls --max-vms {}", others + 1);
    let said = format!("skipping QEMU PID {}", fake.pid);
    records_skipping(&targets, &[legit.pid], &[(fake.pid, said)]);
}

#[test]
fn record_vm_skips_binaries_others_could_change() {
    let _g = exclusive_bpf_test!(&SERIAL);
    let vm = name("writable");
    let (_d1, legit_bin) = qemu_copy(&fixture_path(), 0o755, 0);
    let (_d2, nobodys_bin) = qemu_copy(&fixture_path(), 0o755, common::NOBODY);
    let (_d3, writable_bin) = qemu_copy(&fixture_path(), 0o777, 0);
    let legit = start_fixture(&legit_bin, &vm, false);
    let nobodys = start_fixture(&nobodys_bin, &vm, false);
    let writable = start_fixture(&writable_bin, &vm, false);

    let owned = format!(
        "its executable {} is owned by uid 65534, not root",
        nobodys_bin.display()
    );
    let open = format!(
        "its executable {} is writable by group or others (mode 0777)",
        writable_bin.display()
    );
    records_skipping(
        &format!("--vm {vm}"),
        &[legit.pid],
        &[
            (nobodys.pid, skipping(nobodys.pid, &vm, &owned)),
            (writable.pid, skipping(writable.pid, &vm, &open)),
        ],
    );
}

#[test]
fn vm_with_only_untrusted_candidates_says_why() {
    let _g = exclusive_bpf_test!(&SERIAL);
    let vm = name("only-fake");
    let (_d, bin) = qemu_copy(&fixture_path(), 0o755, 0);
    let fake = start_fixture(&bin, &vm, true);

    let (ran, ds) = record(&format!("--vm {vm}"));
    let err = &ran.stderr;
    assert!(!ran.status.success(), "recorded the fake: {err}");
    assert!(ds.is_none(), "wrote a dataset: {err}");
    let want = format!(
        "vmwatch: no running QEMU process has the VM name `{vm}` (1 candidate skipped: PID {}: \
         {NOT_SYSTEM})",
        fake.pid
    );
    assert!(err.lines().any(|l| l == want), "want {want:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn list_marks_untrusted_processes() {
    let _g = exclusive_bpf_test!(&SERIAL);
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
    assert_eq!(f["untrusted_reason"], NOT_SYSTEM, "{f}");

    let table = run("list").succeeds().stdout;
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
    let _g = exclusive_bpf_test!(&SERIAL);
    let (dir, bin) = qemu_copy(&fixture_path(), 0o755, 0);
    let _qemu = start_fixture(&bin, &name("hidden"), false);
    // A vmwatch nobody can run (the target dir may be root-only).
    let vm = common::install(
        Path::new(env!("CARGO_BIN_EXE_vmwatch")),
        dir.path(),
        "vmwatch",
    );

    for words in ["list", "list --json"] {
        let needs_root = "vmwatch: listing QEMU processes needs root: ";
        let ran = common::run_as_nobody(&vm, words).fails_with(needs_root);
        let sentence = ran.sentence();
        assert!(
            sentence.starts_with(needs_root) && sentence.ends_with("hidden from uid 65534"),
            "{}",
            ran.stderr
        );
        assert!(ran.stdout.is_empty(), "partial list printed");
    }
}

#[test]
fn record_skips_a_qemu_without_probes_among_others() {
    let _g = exclusive_bpf_test!(&SERIAL);
    let (_d1, legit_bin) = qemu_copy(&fixture_path(), 0o755, 0);
    let (_d2, cat_bin) = qemu_copy(Path::new("/bin/cat"), 0o755, 0);
    let (legit_vm, plain_vm) = (name("probes-legit"), name("probes-none"));
    let legit = start_fixture(&legit_bin, &legit_vm, false);
    // Trusted (root's, root-owned binary) but built without USDT probes.
    let plain = start_cat(&cat_bin, &plain_vm, false);

    // --all would attach to whatever QEMU others run on this host; two
    // names take the same path (found by name, not --pid).
    let why = format!("{} has no USDT probes", cat_bin.display());
    records_skipping(
        &format!("--vm {legit_vm} --vm {plain_vm}"),
        &[legit.pid],
        &[(plain.pid(), skipping(plain.pid(), &plain_vm, &why))],
    );

    // Named alone, it is still an error that says why.
    let (ran, _) = record(&format!("--vm {plain_vm}"));
    ran.assert_fails_with("has no USDT probes");
    assert!(
        ran.sentence().contains("has no USDT probes"),
        "{}",
        ran.stderr
    );
}

#[test]
fn record_vm_skips_a_fake_that_starts_later() {
    let _g = exclusive_bpf_test!(&SERIAL);
    let vm = name("later");
    let (dir, bin) = qemu_copy(&fixture_path(), 0o755, 0);
    let legit = start_fixture(&bin, &vm, false);
    let csv = dir.path().join("out.csv");
    let options = format!("--vm {vm} --windows 4 --interval 300ms");
    let mut rec = common::record(&[], &options, &csv);
    common::wait_for_file(&csv, Duration::from_secs(30), &mut rec);
    // --vm re-resolves every window: the fake must not join later either.
    let fake = start_fixture(&bin, &vm, true);
    let err = common::finish(rec);
    let ds = Dataset::read(&csv);
    assert_eq!(ds.rows_of(legit.pid).count(), 4, "{err}");
    assert_eq!(ds.rows_of(fake.pid).count(), 0, "{err}");
    // Logged once, not every window.
    let said = skipping(fake.pid, &vm, "run by uid 65534");
    assert_eq!(err.matches(&said).count(), 1, "{err}");
}
