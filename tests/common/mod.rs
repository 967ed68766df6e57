//! Shared helpers for the integration tests: running vmwatch and checking
//! what it says, the USDT fixture process, QEMUs, a private libvirt
//! ([`libvirt`]), recordings, datasets and skip rules.
#![allow(dead_code, unused_macros)]

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Output, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

pub mod agent;
pub mod libvirt;

// ---------------------------------------------------------------------------
// Running vmwatch

/// The `vmwatch` binary under test.
pub fn vmwatch() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vmwatch"))
}

/// `vmwatch WORDS…`, `words` split at white space as on a command line;
/// paths and the like follow with [`Run::arg`].
pub fn run(words: &str) -> Run {
    Run::new(vmwatch(), "vmwatch").args(words)
}

/// `vmwatch WORDS…` as uid 65534 with no capabilities, through `setpriv`;
/// `vmwatch` is a copy that user can run (see [`install`]).
pub fn run_as_nobody(vmwatch: &Path, words: &str) -> Run {
    let mut cmd = as_nobody(vmwatch);
    cmd.stdin(Stdio::null());
    Run::new(cmd, "setpriv … vmwatch").args(words)
}

/// A vmwatch command line being built; a method that runs it says what must
/// come of it, and names the command line when it does not.
pub struct Run {
    cmd: Command,
    line: String,
}

impl Run {
    fn new(cmd: Command, line: &str) -> Self {
        Self {
            cmd,
            line: line.to_string(),
        }
    }

    /// One more argument, taken whole (a path, or words with spaces).
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        let arg = arg.as_ref();
        self.line.push(' ');
        self.line.push_str(&arg.to_string_lossy());
        self.cmd.arg(arg);
        self
    }

    /// More arguments: `words` split at white space.
    pub fn args(self, words: &str) -> Self {
        words.split_whitespace().fold(self, Self::arg)
    }

    /// `--pid PID`.
    pub fn pid(self, pid: u32) -> Self {
        self.arg("--pid").arg(pid.to_string())
    }

    /// `-o PATH`.
    pub fn out(self, path: impl AsRef<OsStr>) -> Self {
        self.arg("-o").arg(path)
    }

    /// Limits the run to `bytes` of address space: an unbounded reader dies
    /// of an allocation failure instead of exhausting the machine.
    pub fn address_space(mut self, bytes: u64) -> Self {
        use std::os::unix::process::CommandExt;
        // SAFETY: setrlimit is async-signal-safe; nothing else runs in the child.
        unsafe {
            self.cmd.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: bytes,
                    rlim_max: bytes,
                };
                if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        self
    }

    /// Runs it to the end, whatever comes of it.
    pub fn output(mut self) -> Ran {
        let out = self
            .cmd
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", self.line));
        Ran::new(self.line, out)
    }

    /// Runs it to the end; it must succeed.
    pub fn succeeds(self) -> Ran {
        let ran = self.output();
        assert!(ran.status.success(), "{} failed: {}", ran.line, ran.stderr);
        ran
    }

    /// Runs it to the end; it must fail as [`Ran::assert_fails_with`] says.
    pub fn fails_with(self, needle: &str) -> Ran {
        let ran = self.output();
        ran.assert_fails_with(needle);
        ran
    }

    /// Starts it with stdout discarded and stderr piped.
    pub fn spawn(self) -> Child {
        self.spawn_with(Stdio::null())
    }

    /// Starts it with stdout and stderr piped.
    pub fn spawn_reading_stdout(self) -> Child {
        self.spawn_with(Stdio::piped())
    }

    fn spawn_with(mut self, stdout: Stdio) -> Child {
        self.cmd
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", self.line))
    }
}

/// What a finished vmwatch run said, and how it ended.
pub struct Ran {
    /// The command line, for messages.
    pub line: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    fn new(line: String, out: Output) -> Self {
        Self {
            line,
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Checks that the run failed with one `vmwatch: ` sentence, that
    /// stderr contains `needle`, and that nothing panicked.
    pub fn assert_fails_with(&self, needle: &str) {
        let (line, stderr) = (&self.line, &self.stderr);
        assert!(
            !self.status.success(),
            "{line}: expected failure, got success: {stderr}"
        );
        assert!(
            stderr.contains(needle),
            "{line}: stderr lacks {needle:?}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{line}: panic: {stderr}");
        let error_lines = stderr
            .lines()
            .filter(|l| l.starts_with("vmwatch: "))
            .count();
        assert_eq!(
            error_lines, 1,
            "{line}: one error sentence expected: {stderr}"
        );
    }

    /// The `vmwatch: ` sentence of a failed run (after `fails_with`).
    pub fn sentence(&self) -> &str {
        let mut lines = self.stderr.lines().filter(|l| l.starts_with("vmwatch: "));
        lines
            .next()
            .unwrap_or_else(|| panic!("{}: no error sentence: {}", self.line, self.stderr))
    }

    /// Stdout as one JSON value.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("{}: {e}: {}", self.line, self.stdout))
    }

    /// Stdout as JSON lines.
    pub fn json_lines(&self) -> Vec<serde_json::Value> {
        let parse = |l: &str| -> serde_json::Value {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: {e}: {l}", self.line))
        };
        self.stdout.lines().map(parse).collect()
    }
}

/// `vmwatch train DATA OPTIONS -o MODEL`.
pub fn train(data: &Path, options: &str, model: &Path) -> Run {
    run("train").arg(data).args(options).out(model)
}

/// `vmwatch list --json`: it must succeed.
pub fn list_json() -> Vec<serde_json::Value> {
    let list = run("list --json").succeeds().json();
    list.as_array().expect("a JSON array").clone()
}

// ---------------------------------------------------------------------------
// When a test can run

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

/// How the QEMU under test made its USDT sites.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QemuFlavour {
    /// The lab's recipe (`lab-7.2`, `lab-10.0`): every site a 5-byte nop.
    Lab,
    /// As Fedora and RHEL build it (`stock-10.0`): systemtap's 1-byte nops.
    Stock,
}

/// The flavour of the QEMU `bin`: `VMWATCH_QEMU_FLAVOUR` (`lab` or `stock`;
/// `cargo xtask test` sets it), else what the `BUILD-INFO.json` of its
/// `cargo xtask qemu` build says. Panics when neither tells: the tests check
/// the sites against what the build is meant to be, not against what they find.
pub fn qemu_flavour(bin: &Path) -> QemuFlavour {
    let parse = |s: &str| match s {
        "lab" => Some(QemuFlavour::Lab),
        "stock" => Some(QemuFlavour::Stock),
        _ => None,
    };
    if let Ok(v) = std::env::var("VMWATCH_QEMU_FLAVOUR") {
        return parse(&v)
            .unwrap_or_else(|| panic!("VMWATCH_QEMU_FLAVOUR={v:?}: expected `lab` or `stock`"));
    }
    // <build>/install/bin/qemu-system-x86_64 → <build>/BUILD-INFO.json
    let info = bin
        .parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .map(|d| d.join("BUILD-INFO.json"));
    let manifest: Option<serde_json::Value> = info
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|t| serde_json::from_str(&t).ok());
    let from_manifest = manifest.as_ref().and_then(|m| {
        if let Some(f) = m["flavour"].as_str() {
            return parse(f);
        }
        // Builds from before the 10.0 recipes: only lab builds existed, and their
        // configure line names the 5-byte-nop sys/sdt.h wrapper.
        let configure = m["configure"].as_array()?;
        configure
            .iter()
            .any(|a| a.as_str().is_some_and(|a| a.contains("sdt-nop5")))
            .then_some(QemuFlavour::Lab)
    });
    from_manifest.unwrap_or_else(|| {
        panic!(
            "cannot tell whether VMWATCH_QEMU={} is a lab or a stock build (no BUILD-INFO.json \
             of `cargo xtask qemu` beside it); set VMWATCH_QEMU_FLAVOUR=lab or stock",
            bin.display()
        )
    })
}

/// The QEMU of `cargo xtask qemu`, when BPF can also be used here; `None`
/// (with the reason printed) when the test must be skipped.
pub fn requires_root_and_qemu(test: &str) -> Option<PathBuf> {
    let bin = qemu_binary(test)?;
    bpf_available(test).then_some(bin)
}

/// The name of the function (the test) this stands in.
macro_rules! test_name {
    () => {{
        fn here() {}
        // `crate::…::the_test::here`
        let path = std::any::type_name_of_val(&here);
        path.rsplit("::").nth(1).expect("inside a function")
    }};
}

/// Returns from the test, saying why, unless it can use BPF (see
/// [`bpf_available`]).
macro_rules! skip_without_bpf {
    () => {
        if !crate::common::bpf_available(test_name!()) {
            return;
        }
    };
}

/// Returns from the test, saying why, unless it can use BPF; otherwise
/// [`hold`]s `lock` while the value lives, so that the tests sharing the
/// lock run one at a time.
macro_rules! exclusive_bpf_test {
    ($lock:expr) => {{
        skip_without_bpf!();
        crate::common::hold($lock)
    }};
}

/// The QEMU of `cargo xtask qemu`; returns from the test, saying why,
/// unless that and BPF are available (see [`requires_root_and_qemu`]).
macro_rules! skip_without_bpf_and_qemu {
    () => {
        match crate::common::requires_root_and_qemu(test_name!()) {
            Some(bin) => bin,
            None => return,
        }
    };
}

/// Returns from the test, saying why, unless libvirt is installed (see
/// [`libvirt::available`]).
macro_rules! skip_without_libvirt {
    () => {
        if !crate::common::libvirt::available(test_name!()) {
            return;
        }
    };
}

/// `lock` held, whatever a test that panicked while holding it left: for
/// tests that must run one at a time.
pub fn hold(lock: &'static Mutex<()>) -> MutexGuard<'static, ()> {
    lock.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------
// Processes

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

/// The uid tests run unprivileged processes as.
pub const NOBODY: u32 = 65534;

/// `program` run through `setpriv` as [`NOBODY`], with no capabilities.
pub fn as_nobody(program: &Path) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
    ]);
    cmd.arg(program);
    cmd
}

pub fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A copy of the executable `src` as `dir/name`, mode 0755 (so that another
/// user can run it where the original lies in a root-only directory).
pub fn install(src: &Path, dir: &Path, name: &str) -> PathBuf {
    let bin = dir.join(name);
    std::fs::copy(src, &bin).unwrap_or_else(|e| panic!("copy {}: {e}", src.display()));
    chmod(&bin, 0o755);
    bin
}

/// Starts `cmd`, retrying while its executable is "busy": a file that was
/// just copied is briefly still open for writing in children that other
/// test threads fork meanwhile, and exec refuses it (ETXTBSY).
pub fn spawn(cmd: &mut Command) -> Child {
    let mut tries = 0;
    loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 50 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("cannot start {:?}: {e}", cmd.get_program()),
            Ok(child) => return child,
        }
    }
}

/// A child process, killed and reaped when dropped.
pub struct KillOnDrop(pub Child);

impl KillOnDrop {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A process that is not a QEMU (`sleep 30`).
pub fn sleeper() -> KillOnDrop {
    KillOnDrop(
        Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("start sleep"),
    )
}

/// Sends `sig` to a child.
pub fn signal(child: &Child, sig: i32) {
    // SAFETY: plain kill(2) of our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
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
        let mut child = spawn(cmd.stdin(Stdio::piped()).stdout(Stdio::piped()));
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

    /// Fires `name` `rate` times a second for `ms` (whatever a hit costs);
    /// returns the calls and the hits (calls while it was enabled).
    pub fn pace(&mut self, name: &str, rate: u64, ms: u64) -> (u64, u64) {
        let reply = self.ask(&format!("pace {name} {rate} {ms}"));
        let mut w = reply.rsplit(' ');
        let hits = w.next().unwrap().parse().unwrap();
        let calls = w.next().unwrap().parse().unwrap();
        (calls, hits)
    }

    /// Fires `name` nonstop for `ms`; returns the exact count.
    pub fn burn(&mut self, name: &str, ms: u64) -> u64 {
        let reply = self.ask(&format!("burn {name} {ms}"));
        reply.rsplit(' ').next().unwrap().parse().unwrap()
    }

    /// Fires each of `lists` (probe names) in order, `n` times over, on a
    /// new thread per list, all started together.
    pub fn sequences(&mut self, n: u64, lists: &[&[&str]]) {
        let lists: Vec<String> = lists.iter().map(|l| l.join(",")).collect();
        let reply = self.ask(&format!("sequences {n} {}", lists.join(" ")));
        assert_eq!(reply, format!("ok sequences {n} {}", lists.len()));
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

/// A QEMU of `cargo xtask qemu` with no guest (SeaBIOS alone exercises
/// enough of the machine to fire probes); killed on drop.
pub struct Qemu(KillOnDrop);

impl Qemu {
    /// Under TCG, given half a second to start.
    pub fn start(bin: &Path, name: &str) -> Self {
        Self::start_accel(bin, name, "tcg")
    }

    /// Under `accel` (`tcg`, `kvm`), given half a second to start or to
    /// give up (see [`Qemu::exited`]).
    pub fn start_accel(bin: &Path, name: &str, accel: &str) -> Self {
        let q = Self::spawn(bin, &Self::guest(name), accel, &[]);
        std::thread::sleep(Duration::from_millis(500));
        q
    }

    /// Under TCG with `-name NAME_OPTION` as given (e.g.
    /// `guest=web,process=renamed`) and more arguments, given half a second
    /// to start.
    pub fn start_named(bin: &Path, name_option: &str, more: &[&str]) -> Self {
        let q = Self::spawn(bin, name_option, "tcg", more);
        std::thread::sleep(Duration::from_millis(500));
        q
    }

    /// What libvirt passes: `guest=NAME,debug-threads=on`.
    fn guest(name: &str) -> String {
        format!("guest={name},debug-threads=on")
    }

    /// A QEMU without a NIC, returned once SeaBIOS has found no boot device
    /// (read from its debug console in `dir`): from then on it waits in a
    /// steady idle loop, so recordings taken at slightly different times
    /// see the same rates.
    pub fn start_idle(bin: &Path, name: &str, dir: &Path) -> Self {
        Self::start_idle_with(bin, name, dir, &[])
    }

    /// [`Qemu::start_idle`] with more QEMU arguments (e.g. `-uuid`).
    pub fn start_idle_with(bin: &Path, name: &str, dir: &Path, more: &[&str]) -> Self {
        let log = dir.join(format!("{name}.debugcon"));
        let _ = std::fs::remove_file(&log);
        let chardev = format!("file,id=dbg,path={}", log.display());
        let debugcon = [
            "-chardev",
            &chardev,
            "-device",
            "isa-debugcon,iobase=0x402,chardev=dbg",
        ];
        let q = Self::spawn(
            bin,
            &Self::guest(name),
            "tcg",
            &[&["-nic", "none"][..], &debugcon, more].concat(),
        );
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

    fn spawn(bin: &Path, name_option: &str, accel: &str, extra: &[&str]) -> Self {
        let child = Command::new(bin)
            .args(["-M", "pc", "-accel", accel, "-m", "64", "-name"])
            .arg(name_option)
            .args(["-display", "none", "-serial", "null", "-monitor", "none"])
            .args(["-parallel", "none", "-no-reboot"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start QEMU");
        Self(KillOnDrop(child))
    }

    pub fn pid(&self) -> u32 {
        self.0.pid()
    }

    /// How it ended, if it has.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.0 .0.try_wait().expect("wait for QEMU")
    }
}

// ---------------------------------------------------------------------------
// Recording

/// `vmwatch record --pid … OPTIONS -o OUT`, `options` split at white space.
pub fn recorder(pids: &[u32], options: &str, out: &Path) -> Run {
    let cmd = pids.iter().fold(run("record"), |cmd, pid| cmd.pid(*pid));
    cmd.args(options).out(out)
}

/// Starts [`recorder`] (stdout discarded, stderr piped).
pub fn record(pids: &[u32], options: &str, out: &Path) -> Child {
    recorder(pids, options, out).spawn()
}

/// [`record`], returned once the recorder has attached (see [`wait_for_file`]).
pub fn recording(pids: &[u32], options: &str, out: &Path) -> Child {
    let mut rec = record(pids, options, out);
    wait_for_file(out, Duration::from_secs(30), &mut rec);
    rec
}

/// A `vmwatch record` writing into a scratch directory of its own.
pub struct Recording {
    pub child: Child,
    /// The output file.
    pub out: PathBuf,
    /// The scratch directory `out` is in.
    pub dir: tempfile::TempDir,
}

impl Recording {
    /// [`recording`] of `pids` into `file` of a new scratch directory.
    pub fn start(pids: &[u32], options: &str, file: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join(file);
        let child = recording(pids, options, &out);
        Self { child, out, dir }
    }

    /// Waits for the end (it must succeed); the rows and the log.
    pub fn finish(self) -> (Dataset, String) {
        let stderr = finish(self.child);
        (Dataset::read(&self.out), stderr)
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

/// Waits for a recorder and returns its stderr; it must succeed.
pub fn finish(child: Child) -> String {
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "vmwatch record failed: {stderr}");
    stderr
}

// ---------------------------------------------------------------------------
// Datasets

/// The key columns every dataset starts with; the features follow.
pub const HEAD: &str = "vm,pid,label,window,start_unix_ms,duration_ms";

/// How many key columns come before the features (and the provenance
/// columns, in what vmwatch writes).
pub const KEYS: usize = 6;

/// The provenance columns vmwatch writes after the key columns.
pub const PROVENANCE: [&str; 2] = ["qemu_build_id", "qemu_version"];

/// The column after them that marks estimated counts (the cost governor).
pub const SAMPLED: &str = "sampled";

/// A feature of a generated dataset: its name and its count in window i.
pub type Feature<'a> = (&'a str, &'a dyn Fn(usize) -> u64);

/// Writes a dataset of `rows` windows of 2 s (VM `vm1`, PID 42), window i
/// labelled `label(i)`, to `path`; returns the path.
pub fn write_dataset(
    path: &Path,
    label: impl Fn(usize) -> String,
    rows: usize,
    features: &[Feature],
) -> PathBuf {
    let mut text = String::from(HEAD);
    for (f, _) in features {
        text.push(',');
        text.push_str(f);
    }
    text.push('\n');
    for i in 0..rows {
        text.push_str(&format!("vm1,42,{},{i},{},2000", label(i), 1000 + 2000 * i));
        for (_, value) in features {
            text.push_str(&format!(",{}", value(i)));
        }
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
    path.to_path_buf()
}

/// Deterministic counts around `base`: `base + i * step % modulo`.
pub fn around(base: u64, step: usize, modulo: usize) -> impl Fn(usize) -> u64 {
    move |i| base + (i * step % modulo) as u64
}

/// Writes a plain dataset of `rows` windows with two varying features.
pub fn training_csv(path: &Path, rows: usize) {
    write_dataset(
        path,
        |_| "web".into(),
        rows,
        &[
            ("qemu:tap_send", &around(1000, 37, 101)),
            ("qemu:virtqueue_fill", &around(200, 13, 29)),
        ],
    );
}

/// Writes a feature list (`--probes`, `--features`) of `text` into `dir`.
pub fn feature_list(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("features.txt");
    std::fs::write(&path, text).unwrap();
    path
}

/// A parsed dataset: header and rows of strings.
#[derive(Debug)]
pub struct Dataset {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
    /// The first feature column: after the key columns and, where the file
    /// has them, the provenance columns.
    pub first_feature: usize,
}

impl Dataset {
    pub fn read(path: &Path) -> Self {
        let mut r = csv::Reader::from_path(path).expect("open dataset");
        let header: Vec<String> = r.headers().unwrap().iter().map(str::to_string).collect();
        let rows = r
            .records()
            .map(|rec| rec.unwrap().iter().map(str::to_string).collect())
            .collect();
        let first_feature = KEYS
            + header[KEYS..]
                .iter()
                .take_while(|h| PROVENANCE.contains(&h.as_str()) || h.as_str() == SAMPLED)
                .count();
        Self {
            header,
            rows,
            first_feature,
        }
    }

    pub fn col(&self, name: &str) -> Option<usize> {
        self.header.iter().position(|h| h == name)
    }

    /// The feature columns' names.
    pub fn features(&self) -> &[String] {
        &self.header[self.first_feature..]
    }

    /// The position of `feature` among the features (its column in the
    /// counters' rows).
    pub fn feature_index(&self, feature: &str) -> Option<usize> {
        self.features().iter().position(|h| h == feature)
    }

    /// The (build id, version) fields of `pid`'s rows, each distinct pair
    /// once; empty strings where unknown.
    pub fn qemu_of(&self, pid: u32) -> Vec<(String, String)> {
        let (b, v) = (
            self.col(PROVENANCE[0]).expect("a qemu_build_id column"),
            self.col(PROVENANCE[1]).expect("a qemu_version column"),
        );
        let mut out: Vec<(String, String)> = Vec::new();
        for r in self.rows_of(pid) {
            let pair = (r[b].clone(), r[v].clone());
            if !out.contains(&pair) {
                out.push(pair);
            }
        }
        out
    }

    /// Sum of a feature over the rows of `pid` (0 if the column is absent).
    pub fn total(&self, pid: u32, feature: &str) -> u64 {
        let Some(c) = self.col(feature) else { return 0 };
        self.rows_of(pid)
            .map(|r| {
                let estimated = self
                    .sampled(r)
                    .split(';')
                    .any(|s| s.split_once('=').is_some_and(|(f, _)| f == feature));
                assert!(
                    !estimated,
                    "{feature} is estimated where exact counts are summed"
                );
                r[c].parse::<u64>().unwrap()
            })
            .sum()
    }

    /// Every feature's total over the rows of `pid`.
    pub fn totals(&self, pid: u32) -> HashMap<String, u64> {
        self.sums(self.rows_of(pid))
    }

    /// Asserts that `pid`'s totals are exactly `want` (0: a column that
    /// counted nothing), and prints them all.
    pub fn assert_totals(&self, pid: u32, want: &[(&str, u64)]) {
        let t = self.totals(pid);
        eprintln!("{t:?}");
        for &(f, n) in want {
            assert_eq!(t.get(f).copied(), Some(n), "{f}: {t:?}");
        }
    }

    /// Asserts that `feature` got no column (`why`: what it would mean).
    pub fn assert_no_column(&self, feature: &str, why: &str) {
        assert!(
            !self.features().iter().any(|f| f == feature),
            "{why}: {:?}",
            self.features()
        );
    }

    /// The `sampled` cell of `row` (empty: every count exact).
    pub fn sampled<'a>(&self, row: &'a [String]) -> &'a str {
        self.col(SAMPLED).map_or("", |c| row[c].as_str())
    }

    /// Every feature's total over `rows`, which must be exact counts (a
    /// test of exact counting runs with `--budget none`).
    pub fn sums<'a>(&self, rows: impl Iterator<Item = &'a Vec<String>>) -> HashMap<String, u64> {
        let mut out = HashMap::new();
        for row in rows {
            assert_eq!(
                self.sampled(row),
                "",
                "estimated counts where exact ones are summed"
            );
            for (name, v) in self.features().iter().zip(&row[self.first_feature..]) {
                *out.entry(name.clone()).or_default() += v.parse::<u64>().unwrap();
            }
        }
        out
    }

    /// All of `pid`'s counts, every feature and window (estimates of the
    /// cost governor included).
    pub fn hits(&self, pid: u32) -> u64 {
        self.rows_of(pid).map(|r| self.hits_of(r) as u64).sum()
    }

    /// All of `row`'s counts (estimates included).
    pub fn hits_of(&self, row: &[String]) -> f64 {
        row[self.first_feature..]
            .iter()
            .map(|v| v.parse::<f64>().unwrap())
            .sum()
    }

    /// The hits `row` trapped: each count, times its sampling fraction
    /// where the governor estimated it (an estimate is counted / fraction).
    pub fn trapped(&self, row: &[String]) -> f64 {
        let fractions: HashMap<&str, f64> = self
            .sampled(row)
            .split(';')
            .filter_map(|s| {
                let (f, v) = s.split_once('=')?;
                Some((f, v.parse().unwrap()))
            })
            .collect();
        self.features()
            .iter()
            .zip(&row[self.first_feature..])
            .map(|(f, v)| v.parse::<f64>().unwrap() * fractions.get(f.as_str()).unwrap_or(&1.0))
            .sum()
    }

    /// How many windows counted some of `feature`.
    pub fn busy_windows(&self, feature: &str) -> usize {
        let c = self
            .col(feature)
            .unwrap_or_else(|| panic!("no column {feature}"));
        self.rows.iter().filter(|r| r[c] != "0").count()
    }

    /// A row's window: its start (unix ms) and length (ms).
    pub fn window(&self, row: &[String]) -> (u64, u64) {
        let num = |name| row[self.col(name).unwrap()].parse::<u64>().unwrap();
        (num("start_unix_ms"), num("duration_ms"))
    }

    pub fn rows_of(&self, pid: u32) -> impl Iterator<Item = &Vec<String>> {
        let pc = self.col("pid").unwrap();
        let pid = pid.to_string();
        self.rows.iter().filter(move |r| r[pc] == pid)
    }
}

/// Now, in milliseconds since the Unix epoch (the rows' `start_unix_ms`).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The body of `GET http://ADDR/PATH` (HTTP/1.0, no crate needed), or why not.
pub fn http_get(addr: &str, path: &str) -> Result<String, String> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(addr).map_err(|e| format!("{addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut text = String::new();
    s.read_to_string(&mut text).map_err(|e| e.to_string())?;
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no HTTP header")?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(head.lines().next().unwrap_or("").to_string());
    }
    Ok(body.to_string())
}

/// A loopback address with a port nobody listens on now.
pub fn free_loopback_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// Polls `check` every 100 ms until it returns `Some`, for at most `secs`.
pub fn eventually<T>(secs: u64, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < end, "{what}: not within {secs} s");
        std::thread::sleep(Duration::from_millis(100));
    }
}
