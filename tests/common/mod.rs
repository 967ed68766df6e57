//! Shared helpers for the integration tests: the USDT fixture process, the
//! vmwatch binary, dataset parsing and skip rules.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The `vmwatch` binary under test.
pub fn vmwatch() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vmwatch"))
}

/// The fixture binary (workspace member `vmwatch-fixture`), built once per
/// test process so a filtered `cargo test` never runs a stale one.
pub fn fixture_path() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            // target/<profile>/deps/<test> -> target/<profile>/vmwatch-fixture
            let exe = std::env::current_exe().expect("test binary path");
            let dir = exe.parent().and_then(Path::parent).expect("target dir");
            let release = dir.file_name().is_some_and(|n| n == "release");
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.args(["build", "--quiet", "-p", "vmwatch-fixture"]);
            if release {
                cmd.arg("--release");
            }
            let status = cmd.status().expect("run cargo build -p vmwatch-fixture");
            assert!(status.success(), "building the fixture failed");
            let path = dir.join("vmwatch-fixture");
            assert!(
                path.exists(),
                "{} is missing after the build",
                path.display()
            );
            path
        })
        .clone()
}

/// Whether BPF tests can run here; prints why not when they cannot.
/// In CI (CI=true) a missing privilege is a failure, not a skip.
pub fn bpf_available(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: CI must run the tests as root");
    }
    eprintln!("SKIPPED {test}: needs root (CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN)");
    false
}

/// A running fixture process that fires probes on command.
pub struct Fixture {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pub pid: u32,
}

impl Fixture {
    pub fn start() -> Self {
        Self::start_with(&mut Command::new(fixture_path()))
    }

    pub fn start_with(cmd: &mut Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the fixture");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert!(line.starts_with("ready "), "fixture said {line:?}");
        let pid = child.id();
        Self {
            child,
            stdin,
            stdout,
            pid,
        }
    }

    /// Sends a command and returns the fixture's one-line answer.
    pub fn ask(&mut self, cmd: &str) -> String {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        assert!(!line.starts_with("error"), "fixture: {line}");
        line.trim_end().to_string()
    }

    pub fn fire(&mut self, name: &str, n: u64) {
        let reply = self.ask(&format!("fire {name} {n}"));
        assert_eq!(reply, format!("ok {name} {n}"));
    }

    /// Fires `name` nonstop for `ms`; returns the exact count.
    pub fn burn(&mut self, name: &str, ms: u64) -> u64 {
        let reply = self.ask(&format!("burn {name} {ms}"));
        reply.rsplit(' ').next().unwrap().parse().unwrap()
    }

    /// Semaphore state of the lazy probes (fires each enabled one once).
    pub fn enabled(&mut self) -> HashMap<String, bool> {
        let reply = self.ask("enabled");
        reply
            .split_whitespace()
            .skip(1)
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                (k.to_string(), v == "1")
            })
            .collect()
    }

    pub fn exit(mut self) {
        let _ = writeln!(self.stdin, "exit");
        let _ = self.child.wait();
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A parsed dataset: header and rows of strings.
#[derive(Debug)]
pub struct Dataset {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Dataset {
    pub fn read(path: &Path) -> Self {
        let mut r = csv::Reader::from_path(path).expect("open dataset");
        let header = r.headers().unwrap().iter().map(str::to_string).collect();
        let rows = r
            .records()
            .map(|rec| rec.unwrap().iter().map(str::to_string).collect())
            .collect();
        Self { header, rows }
    }

    pub fn col(&self, name: &str) -> Option<usize> {
        self.header.iter().position(|h| h == name)
    }

    /// Sum of a feature over the rows of `pid` (0 if the column is absent).
    pub fn total(&self, pid: u32, feature: &str) -> u64 {
        let Some(c) = self.col(feature) else { return 0 };
        self.rows_of(pid)
            .map(|r| r[c].parse::<u64>().unwrap())
            .sum()
    }

    pub fn rows_of(&self, pid: u32) -> impl Iterator<Item = &Vec<String>> {
        let pc = self.col("pid").unwrap();
        let pid = pid.to_string();
        self.rows.iter().filter(move |r| r[pc] == pid)
    }
}

/// Waits until `path` exists and is non-empty (the recorder writes the
/// header only after every probe is attached and counting has begun).
pub fn wait_for_file(path: &Path, timeout: Duration, child: &mut Child) {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if std::fs::metadata(path).is_ok_and(|m| m.len() > 0) {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            panic!(
                "vmwatch exited ({status}) before writing {}: {err}",
                path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{} did not appear within {timeout:?}", path.display());
}

/// Path of the QEMU built by `cargo xtask qemu`, if any. In CI it must exist.
pub fn qemu_binary(test: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("VMWATCH_QEMU").map(PathBuf::from) {
        assert!(p.exists(), "VMWATCH_QEMU={} does not exist", p.display());
        return Some(p);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: VMWATCH_QEMU is not set; CI runs the tests through `cargo xtask test`");
    }
    eprintln!(
        "SKIPPED {test}: VMWATCH_QEMU is not set (build one with `cargo xtask qemu`, \
         or run `cargo xtask test`)"
    );
    None
}

/// Starts `vmwatch record --pid …` (stderr piped) writing `out`.
pub fn record(pids: &[u32], extra: &[&str], out: &std::path::Path) -> std::process::Child {
    let mut cmd = vmwatch();
    cmd.arg("record");
    for p in pids {
        cmd.args(["--pid", &p.to_string()]);
    }
    cmd.args(extra)
        .arg("-o")
        .arg(out)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd.spawn().expect("start vmwatch record")
}

/// Waits for a recorder and returns its stderr; it must succeed.
pub fn finish(child: std::process::Child) -> String {
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "vmwatch record failed: {stderr}");
    stderr
}

/// A QEMU of `cargo xtask qemu` under TCG with no guest (SeaBIOS alone
/// exercises enough of the machine to fire probes); killed on drop.
pub struct Qemu(pub Child);

impl Qemu {
    pub fn start(bin: &Path, name: &str) -> Self {
        let child = Command::new(bin)
            .args(["-M", "pc", "-accel", "tcg", "-m", "64", "-name"])
            .arg(format!("guest={name},debug-threads=on"))
            .args(["-display", "none", "-serial", "null", "-monitor", "none"])
            .args(["-parallel", "none", "-no-reboot"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start QEMU");
        std::thread::sleep(Duration::from_millis(500));
        Self(child)
    }

    /// A QEMU without a NIC, returned once SeaBIOS has found no boot device
    /// (read from its debug console in `dir`): from then on it waits in a
    /// steady idle loop, so recordings taken at slightly different times
    /// see the same rates.
    pub fn start_idle(bin: &Path, name: &str, dir: &Path) -> Self {
        let log = dir.join(format!("{name}.debugcon"));
        let child = Command::new(bin)
            .args([
                "-M", "pc", "-accel", "tcg", "-m", "64", "-nic", "none", "-name",
            ])
            .arg(format!("guest={name},debug-threads=on"))
            .args(["-display", "none", "-serial", "null", "-monitor", "none"])
            .args(["-parallel", "none", "-no-reboot", "-chardev"])
            .arg(format!("file,id=dbg,path={}", log.display()))
            .args(["-device", "isa-debugcon,iobase=0x402,chardev=dbg"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start QEMU");
        let q = Self(child);
        let end = Instant::now() + Duration::from_secs(120);
        while !std::fs::read_to_string(&log).is_ok_and(|t| t.contains("No bootable device")) {
            assert!(
                Instant::now() < end,
                "SeaBIOS of {name} did not settle in 120 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        q
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Checks that a vmwatch run failed with one `vmwatch: ` sentence that
/// contains `needle`, and did not panic.
pub fn fails_with(out: std::process::Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure, got success: {stderr}"
    );
    assert!(stderr.contains(needle), "stderr lacks {needle:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    let error_lines = stderr
        .lines()
        .filter(|l| l.starts_with("vmwatch: "))
        .count();
    assert_eq!(error_lines, 1, "one error sentence expected: {stderr}");
}

/// Writes a plain dataset of `rows` windows with two varying features.
pub fn training_csv(path: &Path, rows: u32) {
    use std::fmt::Write as _;
    let mut text = String::from(
        "vm,pid,label,window,start_unix_ms,duration_ms,qemu:tap_send,qemu:virtqueue_fill\n",
    );
    for w in 0..rows {
        let a = 1000 + u64::from(w * 37 % 101);
        let b = 200 + u64::from(w * 13 % 29);
        writeln!(
            text,
            "vm1,42,web,{w},{},2000,{a},{b}",
            1000 + u64::from(w) * 2000
        )
        .unwrap();
    }
    std::fs::write(path, text).unwrap();
}
