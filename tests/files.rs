//! Output files: regular files are replaced atomically, character devices
//! and FIFOs are written through, symbolic links and other file types are
//! refused; `record --force` keeps the old file until the first window.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use common::{bpf_available, fails_with, finish, record, training_csv, vmwatch, Dataset, Fixture};

/// `vmwatch train` on a small generated dataset, fixed parameters (fast).
fn train_to(dir: &Path, out: &Path) -> Output {
    let data = dir.join("train.csv");
    training_csv(&data, 20);
    vmwatch()
        .arg("train")
        .arg(&data)
        .args(["--nu", "0.1", "--gamma", "0.5", "-o"])
        .arg(out)
        .output()
        .unwrap()
}

fn mknod_char(path: &Path, major: u32, minor: u32) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path; mknod has no other preconditions.
    let rc = unsafe {
        libc::mknod(
            c.as_ptr(),
            libc::S_IFCHR | 0o666,
            libc::makedev(major, minor),
        )
    };
    assert_eq!(
        rc,
        0,
        "mknod {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

fn assert_char_device(path: &Path, major: u32, minor: u32) {
    let m = std::fs::symlink_metadata(path).unwrap();
    assert!(
        m.file_type().is_char_device(),
        "{} is no longer a device",
        path.display()
    );
    assert_eq!(m.rdev(), libc::makedev(major, minor));
}

/// Everything in `dir` but `keep` (leftover temporary files).
fn others(dir: &Path, keep: &[&str]) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !keep.contains(&n.as_str()))
        .collect()
}

// Private device nodes with the numbers of /dev/null and /dev/full: the old
// code replaced the node with a regular file, which must never happen to the
// machine's own /dev/null.
#[test]
fn train_writes_through_a_null_device() {
    if !bpf_available("train_writes_through_a_null_device") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let null = dir.path().join("null");
    mknod_char(&null, 1, 3);
    let out = train_to(dir.path(), &null);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_char_device(&null, 1, 3);
    assert_eq!(
        others(dir.path(), &["null", "train.csv"]),
        Vec::<String>::new()
    );
}

#[test]
fn train_to_a_full_device_fails_and_keeps_the_node() {
    if !bpf_available("train_to_a_full_device_fails_and_keeps_the_node") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("full");
    mknod_char(&full, 1, 7);
    let out = train_to(dir.path(), &full);
    fails_with(
        out,
        &format!("cannot write {}: No space left on device", full.display()),
    );
    assert_char_device(&full, 1, 7);
}

#[test]
fn train_writes_into_a_fifo() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    // The read end is open first (non-blocking) so vmwatch's open does not
    // wait; the model is far smaller than the pipe's buffer.
    let mut reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    let out = train_to(dir.path(), &fifo);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut text = String::new();
    let _ = reader.read_to_string(&mut text);
    assert!(text.contains("\"vmwatch-model\""), "{text:?}");
    assert!(std::fs::symlink_metadata(&fifo)
        .unwrap()
        .file_type()
        .is_fifo());
}

#[test]
fn train_refuses_a_symlink_to_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real.json");
    std::fs::write(&real, "keep\n").unwrap();
    let link = dir.path().join("link.json");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let out = train_to(dir.path(), &link);
    let canonical = real.canonicalize().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    fails_with(out, "is a symbolic link");
    assert!(
        stderr.contains(&canonical.display().to_string()),
        "{stderr}"
    );
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(std::fs::read_to_string(&real).unwrap(), "keep\n");
}

#[test]
fn train_refuses_a_socket_and_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    fails_with(train_to(dir.path(), &sock), "is a socket");
    assert!(std::fs::symlink_metadata(&sock)
        .unwrap()
        .file_type()
        .is_socket());
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    fails_with(train_to(dir.path(), &sub), "is a directory");
}

/// Lines of a child's stderr, as they come.
fn stderr_lines(child: &mut Child) -> Receiver<String> {
    let err = child.stderr.take().expect("stderr piped");
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits for a line containing `needle`; returns the lines seen so far.
fn wait_for_line(rx: &Receiver<String>, needle: &str, timeout: Duration) -> String {
    let end = Instant::now() + timeout;
    let mut seen = String::new();
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) => {
                seen.push_str(&line);
                seen.push('\n');
                if line.contains(needle) {
                    return seen;
                }
            }
            Err(_) => break,
        }
    }
    panic!("no line with {needle:?} within {timeout:?}: {seen}");
}

#[test]
fn record_force_interrupted_before_the_first_window_keeps_the_old_file() {
    if !bpf_available("record_force_interrupted_before_the_first_window_keeps_the_old_file") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("old.csv");
    training_csv(&out, 40);
    let before = std::fs::read(&out).unwrap();
    let fx = Fixture::start();
    let mut rec = record(&[fx.pid], &["--interval", "30s", "--force"], &out);
    let lines = stderr_lines(&mut rec);
    wait_for_line(&lines, "attached in", Duration::from_secs(30));
    // Attached, first window open: the old file must still be whole.
    assert_eq!(std::fs::read(&out).unwrap(), before);
    // SAFETY: plain kill(2) on our child.
    unsafe { libc::kill(rec.id() as i32, libc::SIGINT) };
    let status = rec.wait().unwrap();
    let rest: Vec<String> = lines.try_iter().collect();
    assert!(status.success(), "{status}: {rest:?}");
    assert_eq!(std::fs::read(&out).unwrap(), before, "the old file changed");
    assert_eq!(others(dir.path(), &["old.csv"]), Vec::<String>::new());
}

#[test]
fn record_force_replaces_the_file_after_a_window() {
    if !bpf_available("record_force_replaces_the_file_after_a_window") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("old.csv");
    training_csv(&out, 40);
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o640)).unwrap();
    let fx = Fixture::start();
    let rec = record(
        &[fx.pid],
        &["--interval", "100ms", "--windows", "3", "--force"],
        &out,
    );
    finish(rec);
    let ds = Dataset::read(&out);
    assert_eq!(ds.rows.len(), 3);
    assert_eq!(ds.rows_of(fx.pid).count(), 3);
    let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640, "the replaced file keeps the old file's mode");
    assert_eq!(others(dir.path(), &["old.csv"]), Vec::<String>::new());
}

#[test]
fn record_onto_an_existing_file_fails_before_attaching() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("old.csv");
    training_csv(&out, 40);
    let before = std::fs::read(&out).unwrap();
    // Not a QEMU: attaching would fail with another message.
    let mut sleeper = Command::new("sleep").arg("30").spawn().unwrap();
    let res = vmwatch()
        .args([
            "record",
            "--pid",
            &sleeper.id().to_string(),
            "--windows",
            "1",
            "-o",
        ])
        .arg(&out)
        .output()
        .unwrap();
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    fails_with(res, "already exists (pass --force to replace it)");
    assert_eq!(std::fs::read(&out).unwrap(), before);
}

#[test]
fn record_onto_an_existing_file_does_not_attach() {
    if !bpf_available("record_onto_an_existing_file_does_not_attach") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("old.csv");
    training_csv(&out, 40);
    let fx = Fixture::start();
    let res = vmwatch()
        .args([
            "record",
            "--pid",
            &fx.pid.to_string(),
            "--windows",
            "1",
            "-o",
        ])
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&res.stderr).into_owned();
    fails_with(res, "already exists");
    assert!(!stderr.contains("attached"), "{stderr}");
}

#[test]
fn record_refuses_a_symlinked_output_before_attaching() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real.csv");
    training_csv(&real, 40);
    let before = std::fs::read(&real).unwrap();
    let link = dir.path().join("link.csv");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let mut sleeper = Command::new("sleep").arg("30").spawn().unwrap();
    let res = vmwatch()
        .args([
            "record",
            "--force",
            "--pid",
            &sleeper.id().to_string(),
            "-o",
        ])
        .arg(&link)
        .output()
        .unwrap();
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    fails_with(res, "is a symbolic link");
    assert_eq!(std::fs::read(&real).unwrap(), before);
}

#[test]
fn record_streams_csv_to_dev_stdout() {
    if !bpf_available("record_streams_csv_to_dev_stdout") {
        return;
    }
    let mut fx = Fixture::start();
    let mut rec = vmwatch()
        .args([
            "record",
            "--pid",
            &fx.pid.to_string(),
            "--interval",
            "100ms",
            "--windows",
            "4",
            "-o",
            "/dev/stdout",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(rec.stdout.take().unwrap());
    let mut text = String::new();
    stdout.read_line(&mut text).unwrap();
    assert!(text.starts_with("vm,pid,label,window,"), "{text:?}");
    fx.fire("tap_send", 9);
    stdout.read_to_string(&mut text).unwrap();
    finish(rec);
    let dir = tempfile::tempdir().unwrap();
    let copy: PathBuf = dir.path().join("stdout.csv");
    std::fs::write(&copy, &text).unwrap();
    let ds = Dataset::read(&copy);
    assert_eq!(ds.rows.len(), 4);
    assert_eq!(ds.total(fx.pid, "qemu:tap_send"), 9);
}
