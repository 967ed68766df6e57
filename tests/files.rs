//! Output files: regular files are replaced atomically, character devices
//! and FIFOs are written through, symbolic links and other file types are
//! refused; `record --force` keeps the old file until the first window.

#[macro_use]
mod common;

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use common::{finish, record, recorder, training_csv, Dataset, Fixture, Run};

/// `vmwatch train` on a small generated dataset, fixed parameters (fast).
fn train_to(dir: &Path, out: &Path) -> Run {
    let data = dir.join("train.csv");
    training_csv(&data, 20);
    common::train(&data, "--nu 0.1 --gamma 0.5", out)
}

/// A character device node `dir/name` with the given numbers.
fn mknod_char(dir: &Path, name: &str, major: u32, minor: u32) -> PathBuf {
    let path = dir.join(name);
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
    path
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
    skip_without_bpf!();
    let dir = tempfile::tempdir().unwrap();
    let null = mknod_char(dir.path(), "null", 1, 3);
    train_to(dir.path(), &null).succeeds();
    assert_char_device(&null, 1, 3);
    assert_eq!(
        others(dir.path(), &["null", "train.csv"]),
        Vec::<String>::new()
    );
}

#[test]
fn train_to_a_full_device_fails_and_keeps_the_node() {
    skip_without_bpf!();
    let dir = tempfile::tempdir().unwrap();
    let full = mknod_char(dir.path(), "full", 1, 7);
    train_to(dir.path(), &full).fails_with(&format!(
        "cannot write {}: No space left on device",
        full.display()
    ));
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
    train_to(dir.path(), &fifo).succeeds();
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
    let ran = train_to(dir.path(), &link).fails_with("is a symbolic link");
    let canonical = real.canonicalize().unwrap();
    assert!(
        ran.stderr.contains(&canonical.display().to_string()),
        "{}",
        ran.stderr
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
    train_to(dir.path(), &sock).fails_with("is a socket");
    assert!(std::fs::symlink_metadata(&sock)
        .unwrap()
        .file_type()
        .is_socket());
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    train_to(dir.path(), &sub).fails_with("is a directory");
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

/// `vmwatch record OPTIONS -o OUT` of a process that is no QEMU (attaching
/// would fail with another message): it must fail with `needle`.
fn refused_before_attaching(options: &str, out: &Path, needle: &str) {
    let sleeper = common::sleeper();
    recorder(&[sleeper.pid()], options, out).fails_with(needle);
}

/// A scratch directory holding an earlier dataset, `old.csv`: the
/// directory, the file and its bytes.
fn old_dataset() -> (tempfile::TempDir, PathBuf, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("old.csv");
    training_csv(&out, 40);
    let before = std::fs::read(&out).unwrap();
    (dir, out, before)
}

#[test]
fn record_force_interrupted_before_the_first_window_keeps_the_old_file() {
    skip_without_bpf!();
    let (dir, out, before) = old_dataset();
    let fx = Fixture::start();
    let mut rec = record(&[fx.pid], "--interval 30s --force", &out);
    let lines = stderr_lines(&mut rec);
    wait_for_line(&lines, "attached in", Duration::from_secs(30));
    // Attached, first window open: the old file must still be whole.
    assert_eq!(std::fs::read(&out).unwrap(), before);
    common::signal(&rec, libc::SIGINT);
    let status = rec.wait().unwrap();
    let rest: Vec<String> = lines.try_iter().collect();
    assert!(status.success(), "{status}: {rest:?}");
    assert_eq!(std::fs::read(&out).unwrap(), before, "the old file changed");
    assert_eq!(others(dir.path(), &["old.csv"]), Vec::<String>::new());
}

#[test]
fn record_force_replaces_the_file_after_a_window() {
    skip_without_bpf!();
    let (dir, out, _) = old_dataset();
    common::chmod(&out, 0o640);
    let fx = Fixture::start();
    finish(record(
        &[fx.pid],
        "--interval 100ms --windows 3 --force",
        &out,
    ));
    let ds = Dataset::read(&out);
    assert_eq!(ds.rows.len(), 3);
    assert_eq!(ds.rows_of(fx.pid).count(), 3);
    let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640, "the replaced file keeps the old file's mode");
    assert_eq!(others(dir.path(), &["old.csv"]), Vec::<String>::new());
}

#[test]
fn record_onto_an_existing_file_fails_before_attaching() {
    let (_dir, out, before) = old_dataset();
    let needle = "already exists (pass --force to replace it)";
    refused_before_attaching("--windows 1", &out, needle);
    assert_eq!(std::fs::read(&out).unwrap(), before);
}

#[test]
fn record_onto_an_existing_file_does_not_attach() {
    skip_without_bpf!();
    let (_dir, out, _) = old_dataset();
    let fx = Fixture::start();
    let ran = recorder(&[fx.pid], "--windows 1", &out).fails_with("already exists");
    assert!(!ran.stderr.contains("attached"), "{}", ran.stderr);
}

#[test]
fn record_refuses_a_symlinked_output_before_attaching() {
    let (dir, real, before) = old_dataset();
    let link = dir.path().join("link.csv");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    refused_before_attaching("--force", &link, "is a symbolic link");
    assert_eq!(std::fs::read(&real).unwrap(), before);
}

#[test]
fn record_streams_csv_to_dev_stdout() {
    skip_without_bpf!();
    let mut fx = Fixture::start();
    let stdout = Path::new("/dev/stdout");
    let mut rec = recorder(
        &[fx.pid],
        "--interval 100ms --windows 4 --budget none",
        stdout,
    )
    .spawn_reading_stdout();
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
