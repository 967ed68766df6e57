//! `cargo xtask bench tracers`: what one counted probe hit costs under
//! vmwatch and under bpftrace (Debian's package), counting the same USDT
//! probe of the test fixture (tests/fixture) side by side.
//!
//! The workload is the fixture's `fire NAME N`: N calls of one probe site in
//! a loop, timed from the moment the command is written to the moment its
//! `ok` is read. Two probes:
//! - `virtqueue_fill`: guarded by a semaphore (`probe_lazy!`), one 1-byte
//!   nop site, so an int3 trap per hit once a tracer raises the semaphore;
//! - `tap_send`: no semaphore, two sites (the loop alternates them).
//!
//! Per repetition and probe, the tracers run in the order none, vmwatch,
//! bpftrace, each on a fresh fixture process: every tracer meets a process
//! no other tracer touched (no breakpoint, semaphore or XOL page left over
//! from a detach), as it meets a new VM; a start costs a few ms. The
//! tracer is attached, known to be attached (its log line, then for a
//! semaphore probe the semaphore raised, which the fixture's `enabled`
//! reports, then a settle time), then the N hits are timed; the tracer's
//! count must cover them, or the run fails. bpftrace 0.17 prints
//! `Attaching 1 probe...` some 30–60 ms before the semaphore is raised, and
//! raises it before its program counts (the `enabled` hit that sees it
//! raised is not counted; vmwatch's is): hence the settle time.
//!
//! cost per hit = median ns per call traced − median untraced.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use vmwatch_core::dataset::Table;

use super::sites::{median, Killed};
use crate::lab::tools::TempDir;
use crate::util::{self, note};

#[derive(clap::Args, Debug, Clone)]
pub struct Opts {
    /// Interleaved repetitions.
    #[arg(long, default_value_t = 7)]
    pub reps: usize,
    /// Probe hits per timed run.
    #[arg(long, default_value_t = 2_000_000)]
    pub hits: u64,
    /// Probes to measure (default: both).
    #[arg(long = "probe", value_enum)]
    pub probes: Vec<Probe>,
    /// Wait after a tracer is seen attached (and, for virtqueue_fill, its
    /// semaphore raised) before the timed run, in ms; the same for both
    /// tracers.
    #[arg(long, default_value_t = 500)]
    pub settle_ms: u64,
    /// Use this vmwatch binary instead of building target/release/vmwatch.
    #[arg(long)]
    pub vmwatch: Option<PathBuf>,
}

/// A probe of the fixture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Probe {
    /// Semaphore-gated (`probe_lazy!`), one 1-byte nop site.
    #[value(name = "virtqueue_fill")]
    VirtqueueFill,
    /// No semaphore, two sites.
    #[value(name = "tap_send")]
    TapSend,
}

impl Probe {
    const ALL: [Probe; 2] = [Probe::VirtqueueFill, Probe::TapSend];

    fn name(self) -> &'static str {
        match self {
            Probe::VirtqueueFill => "virtqueue_fill",
            Probe::TapSend => "tap_send",
        }
    }

    /// Whether the fixture's `enabled` reports its semaphore.
    fn has_semaphore(self) -> bool {
        self == Probe::VirtqueueFill
    }

    fn sites(self) -> &'static str {
        match self {
            Probe::VirtqueueFill => "1 site, semaphore",
            Probe::TapSend => "2 sites, no semaphore",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tracer {
    None,
    Vmwatch,
    Bpftrace,
}

impl Tracer {
    const ALL: [Tracer; 3] = [Tracer::None, Tracer::Vmwatch, Tracer::Bpftrace];

    fn name(self) -> &'static str {
        match self {
            Tracer::None => "none",
            Tracer::Vmwatch => "vmwatch",
            Tracer::Bpftrace => "bpftrace",
        }
    }
}

/// Time limits of the tracers' start and stop.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(60);
const SEMAPHORE_TIMEOUT: Duration = Duration::from_secs(10);
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Hits fired before the tracer attaches, on every configuration alike
/// (faults in the loop's pages).
const WARM_UP: u64 = 1000;

/// One timed run.
#[derive(Debug, Clone, Copy)]
struct Sample {
    ns_per_call: f64,
    /// What the tracer counted (0 for none).
    counted: u64,
    /// From the tracer's attach line to its semaphore raised, where the
    /// probe has one.
    raised_after: Option<Duration>,
}

pub fn run(o: &Opts) -> Result<()> {
    if !util::is_root()? {
        bail!("cargo xtask bench tracers needs root (vmwatch's and bpftrace's uprobes)");
    }
    if o.reps == 0 || o.hits == 0 {
        bail!("--reps and --hits must be at least 1");
    }
    let probes = if o.probes.is_empty() {
        Probe::ALL.to_vec()
    } else {
        o.probes.clone()
    };
    let bpftrace_version = ensure_bpftrace()?;
    let vmwatch = crate::lab::record::vmwatch_binary(o.vmwatch.as_deref())?;
    let fixture = super::scaling::fixture_binary()?;
    let fixture = fixture
        .canonicalize()
        .with_context(|| format!("the fixture {} was not built", fixture.display()))?;
    let dir = TempDir::create(
        std::env::temp_dir().join(format!("vmwatch-bench-tracers-{}", std::process::id())),
    )?;
    let ctx = Ctx {
        o,
        vmwatch: &vmwatch,
        fixture: &fixture,
        dir: &dir.0,
    };
    let started = Instant::now();
    note(format!(
        "per-hit cost of vmwatch and {bpftrace_version} on the fixture's {}: \
         {} interleaved repetitions of none, vmwatch, bpftrace, {} hits per run",
        probes
            .iter()
            .map(|p| format!("qemu:{}", p.name()))
            .collect::<Vec<_>>()
            .join(" and "),
        o.reps,
        o.hits
    ));
    // samples[probe][tracer]
    let mut samples = vec![vec![Vec::<Sample>::new(); Tracer::ALL.len()]; probes.len()];
    for rep in 0..o.reps {
        for (p, &probe) in probes.iter().enumerate() {
            for (t, &tracer) in Tracer::ALL.iter().enumerate() {
                let tag = format!("{}-{}-{}", rep, probe.name(), tracer.name());
                let s = ctx.measure(tracer, probe, &tag).with_context(|| {
                    format!(
                        "rep {}: {} counting qemu:{}",
                        rep + 1,
                        tracer.name(),
                        probe.name()
                    )
                })?;
                let raised = s
                    .raised_after
                    .map(|d| {
                        format!(
                            ", semaphore raised {} ms after the attach line",
                            d.as_millis()
                        )
                    })
                    .unwrap_or_default();
                let counted = if tracer == Tracer::None {
                    String::new()
                } else {
                    format!(" ({} counted{raised})", s.counted)
                };
                note(format!(
                    "rep {} {:<14} {:<8} {:>8.1} ns per call{counted}",
                    rep + 1,
                    probe.name(),
                    tracer.name(),
                    s.ns_per_call,
                ));
                samples[p][t].push(s);
            }
        }
    }

    println!(
        "\nper probe hit on the fixture (`fire NAME {}`, timed from command to reply), \
         median of {} interleaved repetitions (min–max); cost per hit = median − \
         untraced median (min–max of the repetitions' own differences), {}:",
        o.hits,
        o.reps,
        util::human_duration(started.elapsed())
    );
    println!("| probe | tracer | ns per call (median, min–max) | cost per hit (ns) |");
    println!("|---|---|---:|---:|");
    let mut ratios = Vec::new();
    for (p, probe) in probes.iter().enumerate() {
        let none: Vec<f64> = samples[p][0].iter().map(|s| s.ns_per_call).collect();
        let base = median(none.clone());
        let mut costs = Vec::new();
        for (t, tracer) in Tracer::ALL.iter().enumerate() {
            let v: Vec<f64> = samples[p][t].iter().map(|s| s.ns_per_call).collect();
            let m = median(v.clone());
            let cost = if *tracer == Tracer::None {
                "–".to_string()
            } else {
                let paired: Vec<f64> = v.iter().zip(&none).map(|(x, b)| x - b).collect();
                costs.push(m - base);
                format!("{:.0} ({:.0}–{:.0})", m - base, min(&paired), max(&paired))
            };
            println!(
                "| {} ({}) | {} | {:.1} ({:.1}–{:.1}) | {cost} |",
                probe.name(),
                probe.sites(),
                tracer.name(),
                m,
                min(&v),
                max(&v),
            );
        }
        if let [vmwatch, bpftrace] = costs[..] {
            ratios.push(format!("{} {:.2}", probe.name(), vmwatch / bpftrace));
        }
    }
    println!("\nvmwatch/bpftrace cost per hit: {}", ratios.join(", "));
    for (p, probe) in probes.iter().enumerate() {
        if !probe.has_semaphore() {
            continue;
        }
        for (t, tracer) in Tracer::ALL.iter().enumerate().skip(1) {
            let after: Vec<f64> = samples[p][t]
                .iter()
                .filter_map(|s| s.raised_after)
                .map(|d| d.as_secs_f64() * 1e3)
                .collect();
            // The `enabled` that saw the semaphore raised fired the probe
            // once: counted only if the program was attached by then.
            let early = samples[p][t].iter().filter(|s| s.counted > o.hits).count();
            if !after.is_empty() {
                println!(
                    "{}: semaphore of {} raised {:.0}–{:.0} ms after its attach line (then {} ms \
                     settle); the hit of the `enabled` that saw it raised was counted in {early} \
                     of {} runs",
                    tracer.name(),
                    probe.name(),
                    min(&after),
                    max(&after),
                    o.settle_ms,
                    samples[p][t].len()
                );
            }
        }
    }
    println!(
        "machine: {}, kernel {}; {bpftrace_version}; {}",
        cpus(),
        kernel(),
        util::output(Command::new(&vmwatch).arg("--version"))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "vmwatch (version unknown)".into())
    );
    Ok(())
}

fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

/// What every measurement needs.
struct Ctx<'a> {
    o: &'a Opts,
    vmwatch: &'a Path,
    fixture: &'a Path,
    dir: &'a Path,
}

impl Ctx<'_> {
    /// One timed run of `probe` on a fresh fixture under `tracer`.
    fn measure(&self, tracer: Tracer, probe: Probe, tag: &str) -> Result<Sample> {
        let n = self.o.hits;
        let mut fx = Fixture::start(self.fixture)?;
        fx.fire(probe.name(), WARM_UP)?;
        let mut attached = match tracer {
            Tracer::None => None,
            Tracer::Vmwatch => Some(self.vmwatch(fx.pid, probe, tag)?),
            Tracer::Bpftrace => Some(self.bpftrace(fx.pid, probe)?),
        };
        let mut raised_after = None;
        if let Some(a) = &mut attached {
            if probe.has_semaphore() {
                // The attach line may come before the uprobe is in place
                // (bpftrace prints it first): the raised semaphore says it is.
                let until = a.seen + SEMAPHORE_TIMEOUT;
                while !fx.enabled(probe.name())? {
                    if Instant::now() > until {
                        bail!(
                            "the semaphore of qemu:{} was not raised {} s after `{}`",
                            probe.name(),
                            SEMAPHORE_TIMEOUT.as_secs(),
                            a.line
                        );
                    }
                    a.check_running()?;
                    std::thread::sleep(Duration::from_millis(5));
                }
                raised_after = Some(a.seen.elapsed());
            }
            std::thread::sleep(Duration::from_millis(self.o.settle_ms));
            a.check_running()?;
        }
        let took = fx.fire(probe.name(), n)?;
        let counted = match attached {
            None => 0,
            Some(a) => a.finish(probe, n)?,
        };
        if tracer != Tracer::None && counted < n {
            bail!(
                "{} counted {counted} hits of qemu:{}, the fixture fired {n} while it was attached",
                tracer.name(),
                probe.name()
            );
        }
        drop(fx);
        Ok(Sample {
            ns_per_call: took.as_nanos() as f64 / n as f64,
            counted,
            raised_after,
        })
    }

    /// `vmwatch record` counting `probe` of `pid` exactly, once it logs
    /// `watching VM`.
    fn vmwatch(&self, pid: u32, probe: Probe, tag: &str) -> Result<Attached> {
        let list = self.dir.join(format!("{}.txt", probe.name()));
        std::fs::write(&list, format!("qemu:{}\n", probe.name()))
            .with_context(|| format!("could not write {}", list.display()))?;
        let out = self.dir.join(format!("{tag}.csv"));
        let mut cmd = crate::lab::record::vmwatch_command(self.vmwatch);
        cmd.args(["record", "--budget", "none", "--interval", "1s"])
            // Far more windows than the run takes: stopped by SIGINT.
            .args(["--windows", "1000"])
            .arg("--pid")
            .arg(pid.to_string())
            .arg("--probes")
            .arg(&list)
            .arg("-o")
            .arg(&out);
        Attached::start(cmd, Tracer::Vmwatch, "watching VM", Some(out))
    }

    /// bpftrace counting `probe` of `pid`, once it prints `Attaching`.
    fn bpftrace(&self, pid: u32, probe: Probe) -> Result<Attached> {
        let mut cmd = Command::new("bpftrace");
        util::die_with_parent(&mut cmd, libc::SIGTERM);
        cmd.arg("-p").arg(pid.to_string()).arg("-e").arg(format!(
            "usdt:{}:qemu:{} {{ @hits = count(); }}",
            self.fixture.display(),
            probe.name()
        ));
        Attached::start(cmd, Tracer::Bpftrace, "Attaching", None)
    }
}

/// A tracer attached to a fixture (killed on drop if not finished).
struct Attached {
    child: Killed,
    tracer: Tracer,
    /// Its stdout and stderr, line by line.
    out: Lines,
    err: Lines,
    /// When its attach line was seen, and the line.
    seen: Instant,
    line: String,
    /// vmwatch's dataset.
    csv: Option<PathBuf>,
}

impl Attached {
    /// Starts `cmd` and waits for a line of its stdout or stderr containing `want`.
    fn start(
        mut cmd: Command,
        tracer: Tracer,
        want: &str,
        csv: Option<PathBuf>,
    ) -> Result<Attached> {
        let shown = util::display(&cmd);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("could not start `{shown}`"))?;
        let out = Lines::spawn(child.stdout.take().context("no stdout pipe")?);
        let err = Lines::spawn(child.stderr.take().context("no stderr pipe")?);
        let mut a = Attached {
            child: Killed(child),
            tracer,
            out,
            err,
            seen: Instant::now(),
            line: String::new(),
            csv,
        };
        let until = Instant::now() + ATTACH_TIMEOUT;
        loop {
            a.out.poll();
            a.err.poll();
            if let Some(l) = a.out.find(want).or_else(|| a.err.find(want)) {
                a.line = l.trim().to_string();
                a.seen = Instant::now();
                return Ok(a);
            }
            a.check_running()
                .with_context(|| format!("`{shown}` exited before printing `{want}`"))?;
            if Instant::now() > until {
                bail!(
                    "`{shown}` printed no `{want}` within {} s: {}",
                    ATTACH_TIMEOUT.as_secs(),
                    a.tail()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Fails if the tracer has exited.
    fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.0.try_wait()? {
            // Let the readers catch its last lines.
            std::thread::sleep(Duration::from_millis(100));
            self.out.poll();
            self.err.poll();
            bail!("{} exited ({status}): {}", self.tracer.name(), self.tail());
        }
        Ok(())
    }

    /// The last lines it printed, for errors.
    fn tail(&self) -> String {
        let mut lines: Vec<&str> = self.out.seen.iter().map(String::as_str).collect();
        lines.extend(self.err.seen.iter().map(String::as_str));
        let start = lines.len().saturating_sub(6);
        let tail = lines[start..].join(" | ");
        if tail.is_empty() {
            "no output".into()
        } else {
            tail
        }
    }

    /// Stops the tracer with SIGINT once it has counted the `n` hits, and
    /// returns its count.
    fn finish(mut self, probe: Probe, n: u64) -> Result<u64> {
        let feature = format!("qemu:{}", probe.name());
        if let Some(csv) = self.csv.clone() {
            // vmwatch discards its open window on a signal: wait until the
            // windows written hold the hits (the next boundary, ≤ 1 s).
            let until = Instant::now() + Duration::from_secs(5);
            while csv_count(&csv, &feature).unwrap_or(0) < n && Instant::now() < until {
                self.check_running()?;
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let status = self.interrupt()?;
        if !status.success() {
            bail!(
                "{} exited with {status} on SIGINT: {}",
                self.tracer.name(),
                self.tail()
            );
        }
        match &self.csv {
            Some(csv) => csv_count(csv, &feature),
            None => {
                // bpftrace prints its maps at exit: `@hits: COUNT`.
                let line = self.out.find("@hits:").with_context(|| {
                    format!("bpftrace printed no `@hits:` line: {}", self.tail())
                })?;
                let count = line.trim().trim_start_matches("@hits:").trim();
                count
                    .parse()
                    .with_context(|| format!("bpftrace printed a bad count: {line:?}"))
            }
        }
    }

    /// SIGINT, then waits for the exit and for the last of its output.
    fn interrupt(&mut self) -> Result<ExitStatus> {
        let pid = self.child.0.id() as libc::pid_t;
        // SAFETY: kill(2) on our own child, not yet reaped.
        if unsafe { libc::kill(pid, libc::SIGINT) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("could not stop {}", self.tracer.name()));
        }
        let until = Instant::now() + STOP_TIMEOUT;
        let status = loop {
            if let Some(s) = self.child.0.try_wait()? {
                break s;
            }
            if Instant::now() > until {
                bail!(
                    "{} did not exit {} s after SIGINT",
                    self.tracer.name(),
                    STOP_TIMEOUT.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        self.out.close(Duration::from_secs(5));
        self.err.close(Duration::from_secs(5));
        Ok(status)
    }
}

/// The sum of `feature`'s column over the rows of vmwatch's dataset.
fn csv_count(csv: &Path, feature: &str) -> Result<u64> {
    let table = Table::read(csv)?;
    let col = table
        .features
        .iter()
        .position(|f| f == feature)
        .with_context(|| format!("{} has no {feature} column", csv.display()))?;
    Ok(table.x.column(col).sum() as u64)
}

/// The lines a child prints on one stream, read by a thread of their own.
struct Lines {
    rx: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Lines {
    fn spawn(stream: impl Read + Send + 'static) -> Lines {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines {
            rx,
            seen: Vec::new(),
        }
    }

    /// Takes the lines read so far.
    fn poll(&mut self) {
        self.seen.extend(self.rx.try_iter());
    }

    /// Takes every line until the stream ends (or `timeout`).
    fn close(&mut self, timeout: Duration) {
        let until = Instant::now() + timeout;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match self.rx.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => break,
            }
        }
    }

    fn find(&self, want: &str) -> Option<String> {
        self.seen.iter().find(|l| l.contains(want)).cloned()
    }
}

/// A fixture process (tests/fixture), talked to over its stdin and stdout.
struct Fixture {
    _child: Killed,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pid: u32,
}

impl Fixture {
    fn start(path: &Path) -> Result<Fixture> {
        let mut cmd = Command::new(path);
        util::die_with_parent(&mut cmd, libc::SIGKILL);
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("could not start {}", path.display()))?;
        let stdin = child.stdin.take().context("no stdin pipe")?;
        let stdout = BufReader::new(child.stdout.take().context("no stdout pipe")?);
        let pid = child.id();
        let mut fx = Fixture {
            _child: Killed(child),
            stdin,
            stdout,
            pid,
        };
        let ready = fx.read_reply()?;
        if ready != format!("ready {pid}") {
            bail!("the fixture said {ready:?} on start, not `ready {pid}`");
        }
        Ok(fx)
    }

    fn read_reply(&mut self) -> Result<String> {
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .context("could not read the fixture's reply")?;
        if line.is_empty() {
            bail!("the fixture (pid {}) exited", self.pid);
        }
        Ok(line.trim_end().to_string())
    }

    fn ask(&mut self, command: &str) -> Result<String> {
        writeln!(self.stdin, "{command}")
            .and_then(|()| self.stdin.flush())
            .context("could not write to the fixture")?;
        self.read_reply()
    }

    /// Fires `probe` `n` times; the time from the command's write to its reply.
    fn fire(&mut self, probe: &str, n: u64) -> Result<Duration> {
        let command = format!("fire {probe} {n}\n");
        let t = Instant::now();
        self.stdin
            .write_all(command.as_bytes())
            .and_then(|()| self.stdin.flush())
            .context("could not write to the fixture")?;
        let reply = self.read_reply()?;
        let took = t.elapsed();
        if reply != format!("ok {probe} {n}") {
            bail!("the fixture answered {reply:?} to `fire {probe} {n}`");
        }
        Ok(took)
    }

    /// Whether the semaphore of lazy probe `probe` is raised (fires it once
    /// when it is).
    fn enabled(&mut self, probe: &str) -> Result<bool> {
        let reply = self.ask("enabled")?;
        let want = format!("{probe}=");
        let state = reply
            .strip_prefix("enabled ")
            .and_then(|r| r.split_whitespace().find_map(|w| w.strip_prefix(&want)))
            .with_context(|| {
                format!("the fixture's `enabled` says {reply:?}, nothing of {probe}")
            })?;
        Ok(state == "1")
    }
}

/// Installs Debian's bpftrace if it is missing (only this bench needs it,
/// so it is not in xtask/packages.txt, whose every section `cargo xtask
/// deps` and CI install); returns `bpftrace --version`.
fn ensure_bpftrace() -> Result<String> {
    let version =
        || util::output(Command::new("bpftrace").arg("--version")).map(|s| s.trim().to_string());
    if let Ok(v) = version() {
        return Ok(v);
    }
    note("bpftrace is not installed: installing Debian's package (for this bench only)");
    let install = || {
        let mut cmd = crate::deps::apt_get();
        cmd.args(["install", "-y", "--no-install-recommends", "bpftrace"]);
        util::run(&mut cmd)
    };
    if install().is_err() {
        // Stale package lists: refresh them once.
        crate::deps::apt_update()?;
        install().context("could not install bpftrace (`apt-get install bpftrace`)")?;
    }
    version().context("bpftrace was installed but `bpftrace --version` fails")
}

/// `N CPUs (model)`.
fn cpus() -> String {
    let n = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown model".into());
    format!("{n} CPUs ({model})")
}

/// `uname -r`.
fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}
