//! The VM runner: boots one lab guest with the instrumented QEMU, watches its
//! serial console, and makes sure the QEMU process never outlives the runner.
//!
//! No QEMU is left behind: [`Vm`] kills its QEMU on drop (normal exit, error,
//! panic unwinding); SIGINT/SIGTERM set a flag ([`interrupted`]) that the waiting
//! loops turn into an error, so the drop runs on Ctrl-C too; and QEMU is started
//! with `PR_SET_PDEATHSIG` = SIGKILL, so it dies even if xtask itself is killed.

use std::collections::VecDeque;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use super::net;
use crate::util::{self, note};

/// Console lines kept in memory (for error messages).
const TAIL_LINES: usize = 40;

/// The accelerator QEMU runs the guest with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Accel {
    /// Binary translation: works everywhere, about 10-50x slower than KVM.
    Tcg,
    /// Hardware virtualization (/dev/kvm).
    Kvm,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Tcg => "tcg",
            Accel::Kvm => "kvm",
        }
    }
}

/// A network interface for the VM: a tap device that already exists (made by
/// the lab's network namespace setup).
#[derive(Debug, Clone)]
pub struct Tap {
    pub ifname: String,
    pub mac: String,
}

/// Everything needed to boot one guest.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// VM name (`-name guest=…`; `vmwatch record --vm` finds the VM by it).
    pub name: String,
    pub qemu: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// A disk image attached as virtio-blk (raw). The runner copies it into its
    /// run directory, so every boot starts from the built image.
    pub disk: Option<PathBuf>,
    pub scenario: String,
    pub accel: Accel,
    pub memory_mib: u32,
    pub cpus: u32,
    /// The VM's NIC; `None`: no network at all.
    pub tap: Option<Tap>,
    /// Run QEMU inside this network namespace (`/run/netns/NAME`), where its
    /// tap is. Its pid stays visible (and countable) on the host.
    pub netns: Option<PathBuf>,
    /// `vmwatch.ip=` / `vmwatch.gw=` for the guest's eth0.
    pub ip: Option<String>,
    pub gateway: Option<String>,
    /// Where the run directory (disk copy, console log) is created.
    pub run_parent: PathBuf,
    /// Extra kernel command line words.
    pub extra_append: Vec<String>,
}

impl VmConfig {
    /// The kernel command line.
    pub fn append(&self) -> String {
        let mut words = vec![
            "console=ttyS0".to_string(),
            // Warnings only: a chatty kernel slows the boot down under TCG (every
            // character is an emulated UART write) and clutters the console.
            "quiet".to_string(),
            "panic=-1".to_string(),
            // No clocksource watchdog: it reads the HPET a few times a second
            // in most boots but not in all (one lab boot of ten read it not
            // once), and a detector trained on other boots then flags every
            // window of that one. The TSC is what the guest keeps anyway.
            "tsc=reliable".to_string(),
            format!("vmwatch.scenario={}", self.scenario),
        ];
        if let Some(ip) = &self.ip {
            words.push(format!("vmwatch.ip={ip}"));
        }
        if let Some(gw) = &self.gateway {
            words.push(format!("vmwatch.gw={gw}"));
        }
        words.extend(self.extra_append.iter().cloned());
        words.join(" ")
    }

    /// QEMU's arguments, with `disk` as the (copied) disk image.
    pub fn qemu_args(&self, disk: Option<&Path>) -> Vec<String> {
        let mut a: Vec<String> = [
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-M",
            "pc",
            "-accel",
            self.accel.as_str(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend([
            "-name".into(),
            format!("guest={},debug-threads=on", self.name),
            "-m".into(),
            self.memory_mib.to_string(),
            "-smp".into(),
            self.cpus.to_string(),
            "-kernel".into(),
            self.kernel.display().to_string(),
            "-initrd".into(),
            self.initrd.display().to_string(),
            "-append".into(),
            self.append(),
            "-serial".into(),
            "stdio".into(),
            // `panic=-1` + `-no-reboot`: a guest panic ends QEMU instead of looping.
            "-no-reboot".into(),
        ]);
        if let Some(disk) = disk {
            a.extend([
                "-drive".into(),
                format!(
                    "file={},format=raw,if=none,id=disk0,cache=writeback",
                    disk.display()
                ),
                "-device".into(),
                "virtio-blk-pci,drive=disk0".into(),
            ]);
        }
        if let Some(tap) = &self.tap {
            a.extend([
                "-netdev".into(),
                format!("tap,id=net0,ifname={},script=no,downscript=no", tap.ifname),
                "-device".into(),
                format!("virtio-net-pci,netdev=net0,mac={}", tap.mac),
            ]);
        }
        a
    }
}

/// What the guest printed so far.
#[derive(Default)]
struct Console {
    tail: VecDeque<String>,
    ready: Option<(Instant, String)>,
    error: Option<String>,
    eof: bool,
    /// Phase commands the guest has carried out (`VMWATCH-PHASE on|off
    /// done` lines), in order: whether each switched on.
    phases: Vec<bool>,
}

/// The line a phased guest prints once it has carried out a phase command.
fn phase_done(line: &str) -> Option<bool> {
    if find_marker(line, "VMWATCH-PHASE on done").is_some() {
        Some(true)
    } else if find_marker(line, "VMWATCH-PHASE off done").is_some() {
        Some(false)
    } else {
        None
    }
}

/// A running guest. Dropping it kills QEMU and removes the run directory.
pub struct Vm {
    name: String,
    scenario: String,
    child: Child,
    /// The serial console's input (QEMU's stdin): phase commands.
    stdin: Option<ChildStdin>,
    pid: u32,
    started: Instant,
    console: Arc<Mutex<Console>>,
    reader: Option<JoinHandle<()>>,
    run_dir: PathBuf,
    console_log: PathBuf,
}

impl Vm {
    /// Starts QEMU (returns at once; see [`Vm::wait_ready`]).
    pub fn boot(cfg: &VmConfig) -> Result<Vm> {
        install_signal_handlers();
        // Run directories of an xtask that was killed.
        util::remove_orphans(&cfg.run_parent, run_dir_pid);
        let run_dir = cfg.run_parent.join(format!(
            "run-{}-{}-{}",
            cfg.name,
            std::process::id(),
            unique()
        ));
        fs::create_dir_all(&run_dir)
            .with_context(|| format!("could not create {}", run_dir.display()))?;
        let disk = match &cfg.disk {
            Some(image) => {
                let copy = run_dir.join("disk.raw");
                fs::copy(image, &copy).with_context(|| {
                    format!("could not copy the disk image {}", image.display())
                })?;
                Some(copy)
            }
            None => None,
        };
        let console_log = run_dir.join("console.log");
        let mut log = fs::File::create(&console_log)
            .with_context(|| format!("could not create {}", console_log.display()))?;

        let mut cmd = Command::new(&cfg.qemu);
        cmd.args(cfg.qemu_args(disk.as_deref()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let netns = match &cfg.netns {
            Some(path) => Some(
                fs::File::open(path)
                    .with_context(|| format!("could not open the namespace {}", path.display()))?,
            ),
            None => None,
        };
        // Own process group: a Ctrl-C in the terminal reaches xtask only, which
        // then stops QEMU in order. PDEATHSIG: QEMU dies with the xtask thread
        // that started it, even on SIGKILL.
        net::enter_in_child(&mut cmd, netns.as_ref());
        note(format!("$ {}", util::display(&cmd)));
        let mut child = cmd
            .spawn()
            .with_context(|| format!("could not start {}", cfg.qemu.display()))?;
        drop(netns);
        let pid = child.id();
        let started = Instant::now();
        let stdin = child.stdin.take();

        let console = Arc::new(Mutex::new(Console::default()));
        let stdout = child.stdout.take().context("QEMU has no stdout pipe")?;
        let stderr = child.stderr.take().context("QEMU has no stderr pipe")?;
        let ready_prefix = format!("VMWATCH-READY scenario={}", cfg.scenario);
        let error_prefix = "VMWATCH-ERROR";
        let shared = Arc::clone(&console);
        let reader = std::thread::spawn(move || {
            // QEMU's own messages (stderr) go to the same log and tail, marked.
            let shared_err = Arc::clone(&shared);
            let err_thread = std::thread::spawn(move || {
                for line in BufReader::new(stderr).split(b'\n').map_while(|l| l.ok()) {
                    let line = format!("[qemu] {}", String::from_utf8_lossy(&line).trim_end());
                    let mut c = shared_err.lock().unwrap_or_else(|e| e.into_inner());
                    push_tail(&mut c.tail, line);
                }
            });
            for line in BufReader::new(stdout).split(b'\n').map_while(|l| l.ok()) {
                let line = util::printable(&String::from_utf8_lossy(&line));
                let _ = writeln!(log, "{line}");
                let mut c = shared.lock().unwrap_or_else(|e| e.into_inner());
                if c.ready.is_none() {
                    if let Some(found) = find_marker(&line, &ready_prefix) {
                        c.ready = Some((Instant::now(), found));
                    }
                }
                if let Some(on) = phase_done(&line) {
                    c.phases.push(on);
                }
                if c.error.is_none() {
                    if let Some(at) = line.find(error_prefix) {
                        c.error = Some(line[at..].trim().to_string());
                    }
                }
                push_tail(&mut c.tail, line);
            }
            let _ = err_thread.join();
            let _ = log.flush();
            shared.lock().unwrap_or_else(|e| e.into_inner()).eof = true;
        });

        Ok(Vm {
            name: cfg.name.clone(),
            scenario: cfg.scenario.clone(),
            child,
            stdin,
            pid,
            started,
            console,
            reader: Some(reader),
            run_dir,
            console_log,
        })
    }

    /// The QEMU process id (what `vmwatch record --pid` takes).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The serial console log of this run (removed with the run directory).
    pub fn console_log(&self) -> &Path {
        &self.console_log
    }

    /// Waits until the guest prints its readiness line; returns the time from
    /// QEMU's start. Fails on a `VMWATCH-ERROR` line, QEMU's exit, the timeout or
    /// Ctrl-C, with the last console lines in the error.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<Duration> {
        let deadline = self.started + timeout;
        loop {
            {
                let c = self.console.lock().unwrap_or_else(|e| e.into_inner());
                if let Some((at, _)) = &c.ready {
                    return Ok(*at - self.started);
                }
                if let Some(err) = &c.error {
                    let err = err.clone();
                    drop(c);
                    return Err(self.failure(&format!("the guest reported `{err}`")));
                }
            }
            if let Some(status) = self.try_exit()? {
                return Err(self.failure(&format!(
                    "QEMU exited ({status}) before the guest was ready"
                )));
            }
            if interrupted() {
                return Err(self.failure("interrupted"));
            }
            if Instant::now() >= deadline {
                return Err(self.failure(&format!(
                    "the guest printed no `VMWATCH-READY scenario={}` within {}s",
                    self.scenario,
                    timeout.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Switches a phased guest's side of its scenario on or off (kernel
    /// argument `vmwatch.phased=1`): sends the command on the serial console
    /// and waits until the guest says it is done. Fails on a `VMWATCH-ERROR`
    /// line, QEMU's exit, the timeout or Ctrl-C.
    pub fn phase(&mut self, on: bool, timeout: Duration) -> Result<()> {
        let before = self.lock_console().phases.len();
        let word = if on { "on" } else { "off" };
        let sent = self
            .stdin
            .as_mut()
            .context("the console has no input")
            .and_then(|w| {
                w.write_all(format!("VMWATCH-PHASE {word}\n").as_bytes())
                    .and_then(|()| w.flush())
                    .context("could not write to the console")
            });
        if let Err(e) = sent {
            return Err(self.failure(&format!("{e:#}")));
        }
        let deadline = Instant::now() + timeout;
        loop {
            {
                let c = self.lock_console();
                if let Some(&done) = c.phases.get(before) {
                    if done != on {
                        drop(c);
                        return Err(self.failure(&format!(
                            "asked to switch {word}, the guest switched {}",
                            if done { "on" } else { "off" }
                        )));
                    }
                    return Ok(());
                }
                if let Some(err) = &c.error {
                    let err = err.clone();
                    drop(c);
                    return Err(self.failure(&format!("the guest reported `{err}`")));
                }
            }
            self.check_running()?;
            if interrupted() {
                return Err(self.failure("interrupted"));
            }
            if Instant::now() >= deadline {
                return Err(self.failure(&format!(
                    "the guest did not switch its scenario {word} within {}s",
                    timeout.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn lock_console(&self) -> std::sync::MutexGuard<'_, Console> {
        self.console.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps the VM running for `d`, failing early if QEMU exits or on Ctrl-C.
    pub fn hold(&mut self, d: Duration) -> Result<()> {
        let until = Instant::now() + d;
        while Instant::now() < until {
            if let Some(status) = self.try_exit()? {
                return Err(self.failure(&format!("QEMU exited ({status}) while running")));
            }
            if interrupted() {
                return Err(self.failure("interrupted"));
            }
            std::thread::sleep(
                Duration::from_millis(100).min(until.saturating_duration_since(Instant::now())),
            );
        }
        Ok(())
    }

    /// Fails (with the console's last lines) if QEMU has exited.
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.try_exit()? {
            return Err(self.failure(&format!("QEMU exited ({status}) while running")));
        }
        Ok(())
    }

    /// Stops QEMU: SIGTERM (QEMU exits cleanly), SIGKILL after 10 s.
    pub fn shutdown(mut self) -> Result<ExitStatus> {
        self.stop(Duration::from_secs(10))
    }

    fn stop(&mut self, grace: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.try_exit()? {
            return Ok(status);
        }
        // SAFETY: plain kill(2) on our own, not yet reaped child.
        unsafe {
            libc::kill(self.pid as libc::pid_t, libc::SIGTERM);
        }
        let until = Instant::now() + grace;
        while Instant::now() < until {
            if let Some(status) = self.try_exit()? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        note(format!(
            "QEMU (pid {}) ignored SIGTERM for {}s; killing it",
            self.pid,
            grace.as_secs()
        ));
        let _ = self.child.kill();
        self.child.wait().context("could not wait for QEMU")
    }

    fn try_exit(&mut self) -> Result<Option<ExitStatus>> {
        self.child.try_wait().context("could not check on QEMU")
    }

    /// An error with the console's last lines.
    fn failure(&self, what: &str) -> anyhow::Error {
        // Give the reader a moment to collect QEMU's last words.
        std::thread::sleep(Duration::from_millis(100));
        let c = self.console.lock().unwrap_or_else(|e| e.into_inner());
        let tail: Vec<&str> = c.tail.iter().map(String::as_str).collect();
        anyhow!(
            "VM `{}` (QEMU pid {}): {what}; after {:.1}s, the last console lines were:\n{}",
            self.name,
            self.pid,
            self.started.elapsed().as_secs_f64(),
            if tail.is_empty() {
                "(none: the kernel runs with `quiet`; add the kernel argument `loglevel=7` to see its messages)".to_string()
            } else {
                tail.join("\n")
            }
        )
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Err(e) = self.stop(Duration::from_secs(3)) {
            note(format!("stopping VM `{}`: {e:#}", self.name));
        }
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let _ = fs::remove_dir_all(&self.run_dir);
    }
}

/// `run-lab-idle-7821-0` → 7821.
fn run_dir_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("run-")?;
    let mut parts = rest.rsplitn(3, '-');
    parts.next()?.parse::<u64>().ok()?;
    let pid = parts.next()?.parse().ok()?;
    parts.next()?;
    Some(pid)
}

/// The console marker `marker` in `line`, as a whole word (`scenario=web` does
/// not match `scenario=web-peak`), with the rest of the line.
fn find_marker(line: &str, marker: &str) -> Option<String> {
    let at = line.find(marker)?;
    let rest = &line[at + marker.len()..];
    if rest.is_empty() || rest.starts_with(char::is_whitespace) {
        Some(line[at..].trim().to_string())
    } else {
        None
    }
}

fn push_tail(tail: &mut VecDeque<String>, line: String) {
    if line.trim().is_empty() {
        return;
    }
    if tail.len() == TAIL_LINES {
        tail.pop_front();
    }
    tail.push_back(line);
}

fn unique() -> u64 {
    use std::sync::atomic::AtomicU64;
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// True once SIGINT or SIGTERM arrived (after [`install_signal_handlers`]).
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

extern "C" fn on_signal(_sig: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Turns SIGINT and SIGTERM into the [`interrupted`] flag (idempotent).
pub fn install_signal_handlers() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        for sig in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: the handler only stores to an atomic (async-signal-safe).
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
                libc::sigemptyset(&mut action.sa_mask);
                action.sa_flags = libc::SA_RESTART;
                libc::sigaction(sig, &action, std::ptr::null_mut());
            }
        }
    });
}

/// Fails with a clear message if Ctrl-C was pressed.
pub fn check_interrupted() -> Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> VmConfig {
        VmConfig {
            name: "lab-idle".into(),
            qemu: "/q".into(),
            kernel: "/k".into(),
            initrd: "/i".into(),
            disk: None,
            scenario: "idle".into(),
            accel: Accel::Tcg,
            memory_mib: 512,
            cpus: 1,
            tap: None,
            netns: None,
            ip: None,
            gateway: None,
            run_parent: "/tmp".into(),
            extra_append: vec![],
        }
    }

    #[test]
    fn command_line() {
        let mut cfg = config();
        assert_eq!(
            cfg.append(),
            "console=ttyS0 quiet panic=-1 tsc=reliable vmwatch.scenario=idle"
        );
        cfg.ip = Some("10.77.0.11/24".into());
        cfg.gateway = Some("10.77.0.1".into());
        assert!(cfg
            .append()
            .ends_with("vmwatch.ip=10.77.0.11/24 vmwatch.gw=10.77.0.1"));
        let args = cfg.qemu_args(Some(Path::new("/run/disk.raw")));
        let joined = args.join(" ");
        assert!(joined.contains("-accel tcg"));
        assert!(joined.contains("-name guest=lab-idle,debug-threads=on"));
        assert!(joined.contains("file=/run/disk.raw,format=raw"));
        assert!(!joined.contains("-netdev"));
        // The append string is one argument.
        let i = args.iter().position(|a| a == "-append").unwrap();
        assert!(args[i + 1].starts_with("console=ttyS0 "));
        cfg.tap = Some(Tap {
            ifname: "vmw-tap0".into(),
            mac: "52:54:00:00:00:0b".into(),
        });
        let joined = cfg.qemu_args(None).join(" ");
        assert!(joined.contains("-netdev tap,id=net0,ifname=vmw-tap0,script=no,downscript=no"));
        assert!(joined.contains("virtio-net-pci,netdev=net0,mac=52:54:00:00:00:0b"));
        assert!(!joined.contains("-drive"));
    }

    #[test]
    fn run_dirs() {
        assert_eq!(run_dir_pid("run-lab-idle-7821-0"), Some(7821));
        assert_eq!(run_dir_pid("run-lab-stress-hdd-12-3"), Some(12));
        assert_eq!(run_dir_pid("run-7821-0"), None);
        assert_eq!(run_dir_pid("disk.raw"), None);
    }

    #[test]
    fn ready_marker() {
        let m = "VMWATCH-READY scenario=web";
        assert_eq!(
            find_marker("[ 1.0] x VMWATCH-READY scenario=web", m).as_deref(),
            Some(m)
        );
        assert!(find_marker("VMWATCH-READY scenario=web-peak", m).is_none());
        assert!(find_marker("VMWATCH-READY scenario=we", m).is_none());
    }

    #[test]
    fn phase_markers() {
        assert_eq!(phase_done("VMWATCH-PHASE on done"), Some(true));
        assert_eq!(phase_done("[ 3.1] VMWATCH-PHASE off done"), Some(false));
        // The command itself, echoed, is not its completion.
        assert_eq!(phase_done("VMWATCH-PHASE on"), None);
        assert_eq!(phase_done("VMWATCH-PHASE on donewell"), None);
    }

    #[test]
    fn tail_is_bounded() {
        let mut t = VecDeque::new();
        for i in 0..100 {
            push_tail(&mut t, format!("l{i}"));
        }
        push_tail(&mut t, "  ".into());
        assert_eq!(t.len(), TAIL_LINES);
        assert_eq!(t.back().map(String::as_str), Some("l99"));
    }
}
