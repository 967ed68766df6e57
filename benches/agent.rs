//! Agent benchmarks (run as root): `cargo bench --bench agent`.
//!
//! 1. CPU and memory of the real `vmwatch agent` (this build's release
//!    binary) watching N = 1, 8 and 64 processes: fixtures (tests/fixture,
//!    copied root-owned as `qemu-system-x86_64`, 2,105 probes) and, when
//!    `VMWATCH_QEMU` is set, paused QEMUs (`-S -nic none`) with the default
//!    features and with every probe. Each run measures a fixed number of
//!    windows while every VM learns (rows appended to its training set),
//!    then, after the VMs trained, the same number while every VM monitors
//!    (a verdict per window); runs whose state directory holds a model
//!    trained on 300 lab windows measure monitoring with a full-size model.
//!    CPU = the agent process's CPU clock (every thread, live or exited);
//!    memory = VmRSS / VmHWM of /proc/PID/status.
//! 2. Training time: what the agent does when a VM has learned (read its
//!    training set, `TrainingSet::new`, `train::train` with the paper grid
//!    and 5 folds, save the model) on 300 lab windows (data/boots/web-1,2
//!    and web-peak-1,2, 75 each) with the default features and with every
//!    column.
//! 3. Time from a VM's first window to its first verdict, read from the
//!    agent's events, against learning length + training time.
//!
//! Configurations are interleaved and repeated; figures are medians. See
//! docs/PERFORMANCE.md ("Agent"). Knobs: `VMWATCH_BENCH_REPS` (agent runs,
//! default 3), `VMWATCH_BENCH_PARTS` (any of `training,agent,verdict`).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use vmwatch::agent::config::{AgentConfig, DEFAULT_FEATURES};
use vmwatch::agent::state::{Phase, StateDir, VmKey, VmMeta};
use vmwatch::discover::stapsdt::UsdtBinary;
use vmwatch_core::dataset::{DatasetWriter, Row, Table};
use vmwatch_core::features::FeatureList;
use vmwatch_core::model::{Model, TrainingSummary};
use vmwatch_core::train::{self, FeatureChoice, SvmParams, TrainConfig, TrainingSet};

/// Windows a VM learns before it trains (small, so runs reach monitoring).
const LEARN: u64 = 20;
/// Windows measured per phase.
const MEASURED: u64 = 12;
/// Window length of the CPU runs (one check at the default 2 s).
const INTERVAL_MS: u64 = 500;
/// Lab windows the training part learns from (4 boots of 75).
const TRAIN_WINDOWS: usize = 300;

fn median(mut v: Vec<f64>) -> f64 {
    assert!(!v.is_empty(), "median of nothing");
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn spread(v: &[f64]) -> String {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{lo:.3}–{hi:.3}")
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// target/release, where the bench, the agent and the fixture live.
fn release_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(Path::parent).unwrap().to_path_buf()
}

fn fixture_path() -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--quiet", "--release", "-p", "vmwatch-fixture"])
        .status()
        .unwrap();
    assert!(status.success(), "building the fixture failed");
    release_dir().join("vmwatch-fixture")
}

fn agent_binary() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_vmwatch"));
    assert!(
        bin.components().any(|c| c.as_os_str() == "release"),
        "{} is not a release build",
        bin.display()
    );
    bin
}

// ---------------------------------------------------------------------------
// Watched processes

/// The kind of process a run watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The fixture as `qemu-system-x86_64` (idle: its probes do not fire).
    Fixture,
    /// A real QEMU started with `-S` (no guest code runs).
    Paused,
}

/// A watched process, killed on drop.
struct Proc {
    child: Child,
    _stdin: Option<ChildStdin>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Dies with the bench.
fn die_with_parent(cmd: &mut Command, sig: libc::c_int) {
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, sig);
            Ok(())
        });
    }
}

fn uuid(run: u32, i: usize) -> String {
    format!(
        "{i:08x}-{:04x}-4000-8000-{:012x}",
        run & 0xffff,
        std::process::id()
    )
}

struct Watched {
    _procs: Vec<Proc>,
    /// (name, UUID) of each.
    ids: Vec<(String, String)>,
}

/// Starts `n` processes of `kind` named `prefix<i>`.
fn start_watched(kind: Kind, n: usize, bins: &Bins, prefix: &str, run: u32) -> Watched {
    let mut procs = Vec::new();
    let mut ids = Vec::new();
    for i in 0..n {
        let name = format!("{prefix}{i}");
        let id = uuid(run, i);
        let p = match kind {
            Kind::Fixture => {
                let mut cmd = Command::new(&bins.fixture_as_qemu);
                cmd.arg("-name")
                    .arg(format!("guest={name}"))
                    .arg("-uuid")
                    .arg(&id)
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped());
                die_with_parent(&mut cmd, libc::SIGKILL);
                let mut child = cmd.spawn().expect("start the fixture");
                let stdin = child.stdin.take();
                let mut line = String::new();
                BufReader::new(child.stdout.take().unwrap())
                    .read_line(&mut line)
                    .unwrap();
                assert!(line.starts_with("ready"), "fixture said {line:?}");
                Proc {
                    child,
                    _stdin: stdin,
                }
            }
            Kind::Paused => {
                let qemu = bins.qemu.as_ref().expect("VMWATCH_QEMU");
                let mut cmd = Command::new(qemu);
                cmd.args(["-M", "pc", "-accel", "tcg", "-m", "32", "-S"])
                    .args(["-display", "none", "-nic", "none", "-serial", "none"])
                    .args(["-monitor", "none", "-parallel", "none"])
                    .arg("-name")
                    .arg(format!("guest={name}"))
                    .arg("-uuid")
                    .arg(&id)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null());
                die_with_parent(&mut cmd, libc::SIGKILL);
                Proc {
                    child: cmd.spawn().expect("start QEMU"),
                    _stdin: None,
                }
            }
        };
        procs.push(p);
        ids.push((name, id));
    }
    if kind == Kind::Paused {
        // Let them finish starting (firmware set-up), then check they run.
        std::thread::sleep(Duration::from_millis(2000 + 40 * n as u64));
        for p in &mut procs {
            assert!(
                p.child.try_wait().unwrap().is_none(),
                "a paused QEMU exited"
            );
        }
    }
    Watched { _procs: procs, ids }
}

// ---------------------------------------------------------------------------
// The agent process

/// The agent process's CPU time (ns): its CPU clock covers every thread,
/// exited ones (training) included, at nanosecond resolution.
fn cpu_ns(pid: u32) -> u64 {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: valid out pointer.
    let r = unsafe { libc::clock_getcpuclockid(pid as libc::pid_t, &mut clock) };
    assert_eq!(r, 0, "clock_getcpuclockid({pid})");
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    let r = unsafe { libc::clock_gettime(clock, &mut ts) };
    assert_eq!(r, 0, "clock_gettime of PID {pid}");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// utime + stime of /proc/PID/stat (every thread, exited ones included), ns;
/// clock ticks, so only a cross-check over many windows.
fn stat_ns(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f: Vec<&str> = s[s.rfind(')').unwrap() + 2..].split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    ticks * 1_000_000_000 / hz
}

/// A `kB` line of /proc/PID/status.
fn status_kb(pid: u32, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
}

struct Agent {
    child: Child,
    dir: PathBuf,
}

impl Agent {
    fn start(bin: &Path, dir: &Path, config: &str) -> Self {
        let path = dir.join("agent.toml");
        std::fs::write(&path, config).unwrap();
        let mut cmd = Command::new(bin);
        cmd.arg("agent")
            .arg("--config")
            .arg(&path)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(dir.join("agent.log")).unwrap());
        die_with_parent(&mut cmd, libc::SIGTERM);
        // A diagnostic knob: extra environment of the agent (e.g. glibc's
        // MALLOC_ARENA_MAX=2), `K=V,K=V`.
        if let Ok(env) = std::env::var("VMWATCH_BENCH_AGENT_ENV") {
            for kv in env.split(',').filter(|kv| !kv.is_empty()) {
                let (k, v) = kv
                    .split_once('=')
                    .expect("VMWATCH_BENCH_AGENT_ENV: K=V,...");
                cmd.env(k, v);
            }
        }
        Self {
            child: cmd.spawn().expect("start vmwatch agent"),
            dir: dir.to_path_buf(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    fn check_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("the agent exited ({status}):\n{}", self.log());
        }
    }

    /// Seconds each VM's training took ("trained in" lines of its log).
    fn training_times(&self) -> Vec<f64> {
        self.log()
            .lines()
            .filter_map(|l| {
                let t = l.split("trained in ").nth(1)?.split_whitespace().next()?;
                let t = t.trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
                let unit = t.trim_start_matches(|c: char| c.is_ascii_digit() || c == '.');
                let v: f64 = t[..t.len() - unit.len()].parse().ok()?;
                Some(match unit {
                    "s" => v,
                    "ms" => v / 1e3,
                    "µs" | "us" => v / 1e6,
                    "ns" => v / 1e9,
                    _ => return None,
                })
            })
            .collect()
    }

    fn stop(mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.pid() as i32, libc::SIGTERM) };
        let end = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().unwrap().is_none() {
            if Instant::now() > end {
                let _ = self.child.kill();
                panic!("the agent did not stop on SIGTERM within 30 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------
// The agent's events (JSON lines), read as they are written

#[derive(Debug, Clone)]
struct WindowEvent {
    vm: String,
    state: String,
    scored: bool,
    start_ms: u64,
}

#[derive(Debug, Clone)]
struct PhaseEvent {
    vm: String,
    to: String,
    start_ms: u64,
}

struct Events {
    path: PathBuf,
    file: Option<File>,
    partial: Vec<u8>,
    windows: BTreeMap<u64, Vec<WindowEvent>>,
    phases: Vec<PhaseEvent>,
}

impl Events {
    fn new(path: PathBuf) -> Self {
        Self {
            path,
            file: None,
            partial: Vec::new(),
            windows: BTreeMap::new(),
            phases: Vec::new(),
        }
    }

    fn poll(&mut self) {
        if self.file.is_none() {
            self.file = File::open(&self.path).ok();
        }
        let Some(f) = &mut self.file else { return };
        let mut more = Vec::new();
        f.read_to_end(&mut more).unwrap();
        self.partial.extend_from_slice(&more);
        // Lines are whole once their newline is there (a buffer may be
        // written out in the middle of one).
        let Some(end) = self.partial.iter().rposition(|&b| b == b'\n') else {
            return;
        };
        let done: Vec<u8> = self.partial.drain(..=end).collect();
        for line in done.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let v: serde_json::Value = serde_json::from_slice(line).expect("an event");
            let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
            let start_ms = v["start_unix_ms"].as_u64().unwrap_or(0);
            match v["event"].as_str() {
                Some("window") => self
                    .windows
                    .entry(v["window"].as_u64().unwrap())
                    .or_default()
                    .push(WindowEvent {
                        vm: s("vm"),
                        state: s("state"),
                        scored: v["score"].is_number(),
                        start_ms,
                    }),
                Some("phase") => self.phases.push(PhaseEvent {
                    vm: s("vm"),
                    to: s("to"),
                    start_ms,
                }),
                _ => {}
            }
        }
    }

    fn count(&self, w: u64) -> usize {
        self.windows.get(&w).map_or(0, Vec::len)
    }

    /// The first window whose `n` events all satisfy `ok`.
    fn first_where(&self, n: usize, ok: impl Fn(&WindowEvent) -> bool) -> Option<u64> {
        self.windows
            .iter()
            .find(|(_, e)| e.len() == n && e.iter().all(&ok))
            .map(|(&w, _)| w)
    }

    /// Polls until `cond` holds (checking the agent still runs).
    fn wait<T>(
        &mut self,
        agent: &mut Agent,
        secs: u64,
        what: &str,
        cond: impl Fn(&Self) -> Option<T>,
    ) -> T {
        let end = Instant::now() + Duration::from_secs(secs);
        loop {
            self.poll();
            if let Some(t) = cond(self) {
                return t;
            }
            agent.check_running();
            assert!(
                Instant::now() < end,
                "{what}: not within {secs} s; agent log:\n{}",
                agent.log()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

// ---------------------------------------------------------------------------
// One agent run

/// Which features the agent counts and learns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Features {
    /// Every probe of the fixture (2,105).
    Fixture,
    /// The built-in selection (packaging/features.txt).
    Default,
    /// Every `qemu` probe of the QEMU binary (3,081).
    Every,
}

impl Features {
    fn name(self) -> &'static str {
        match self {
            Features::Fixture => "fixture probes",
            Features::Default => "default",
            Features::Every => "every probe",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Setup {
    kind: Kind,
    n: usize,
    features: Features,
    interval_ms: u64,
    /// The state directory holds a model trained on 300 lab windows for
    /// every VM: they monitor from their first window.
    seeded: bool,
}

impl Setup {
    fn label(&self) -> String {
        format!(
            "{} x{:<2} {:<14} {:>4} ms{}",
            match self.kind {
                Kind::Fixture => "fixture",
                Kind::Paused => "paused QEMU",
            },
            self.n,
            self.features.name(),
            self.interval_ms,
            if self.seeded {
                ", 300-window model"
            } else {
                ""
            }
        )
    }
}

/// A measured stretch of windows.
#[derive(Debug, Clone, Copy)]
struct Span {
    cpu_ms: f64,
    stat_ms: f64,
    windows: u64,
    wall_s: f64,
    rss_kb: u64,
    /// A reading came after the next window had begun (polling fell behind).
    late: bool,
}

impl Span {
    fn per_vm_window(&self, n: usize) -> f64 {
        self.cpu_ms / self.windows as f64 / n as f64
    }
    fn stat_per_vm_window(&self, n: usize) -> f64 {
        self.stat_ms / self.windows as f64 / n as f64
    }
}

struct RunResult {
    learning: Option<Span>,
    monitoring: Span,
    hwm_kb: u64,
    /// Per-VM training times of the run (seconds, from the agent's log).
    trained_s: Vec<f64>,
    windows_to_join: u64,
}

/// CPU between the end of window `from` and the end of window `from +
/// MEASURED`, with every VM's events of those windows in `state`.
fn span(ev: &mut Events, agent: &mut Agent, n: usize, from: u64, state: &str) -> Span {
    let pid = agent.pid();
    let secs = 120 + n as u64;
    ev.wait(agent, secs, "window start", |e| {
        (e.count(from) >= n).then_some(())
    });
    let (c0, s0, t0) = (cpu_ns(pid), stat_ns(pid), Instant::now());
    ev.poll();
    let mut late = ev.count(from + 1) > 0;
    let to = from + MEASURED;
    ev.wait(agent, secs + MEASURED * 10, "window end", |e| {
        (e.count(to) >= n).then_some(())
    });
    let (c1, s1, t1) = (cpu_ns(pid), stat_ns(pid), Instant::now());
    let rss_kb = status_kb(pid, "VmRSS");
    ev.poll();
    late |= ev.count(to + 1) > 0;
    for w in from + 1..=to {
        let e = &ev.windows[&w];
        assert_eq!(e.len(), n, "window {w}: {} VMs of {n}", e.len());
        assert!(
            e.iter()
                .all(|e| e.state == state && (state != "monitoring" || e.scored)),
            "window {w}: not every VM is {state}: {:?}",
            e.iter().map(|e| (&e.vm, &e.state)).collect::<Vec<_>>()
        );
    }
    Span {
        cpu_ms: (c1 - c0) as f64 / 1e6,
        stat_ms: s1.saturating_sub(s0) as f64 / 1e6,
        windows: MEASURED,
        wall_s: (t1 - t0).as_secs_f64(),
        rss_kb,
        late,
    }
}

struct Bins {
    agent: PathBuf,
    fixture_as_qemu: PathBuf,
    qemu: Option<PathBuf>,
    fixture_features: PathBuf,
    every_features: Option<PathBuf>,
}

/// Models of 300 lab windows for seeded runs.
struct Seeds {
    default: Model,
    every: Option<Model>,
}

/// A fresh directory, `n` watched processes named for this run, and the
/// start of an agent configuration that watches only them.
fn bench_run(
    kind: Kind,
    n: usize,
    bins: &Bins,
    run: u32,
    learn: u64,
    interval_ms: u64,
) -> (tempfile::TempDir, Watched, String) {
    let dir = tempfile::Builder::new()
        .prefix("vmwatch-agent-bench-")
        .tempdir()
        .unwrap();
    let prefix = format!("agentbench-{}-{run}-", std::process::id());
    let watched = start_watched(kind, n, bins, &prefix, run);
    let config = format!(
        "interval = \"{interval_ms}ms\"\nlearn_windows = {learn}\nmetrics = \"127.0.0.1:0\"\n\
         events = \"{}\"\ninclude = [\"{prefix}*\"]\nmax_vms = 64\n",
        dir.path().join("events.jsonl").display()
    );
    (dir, watched, config)
}

fn run_setup(s: &Setup, bins: &Bins, seeds: Option<&Seeds>, run: u32) -> RunResult {
    let (dir, watched, mut config) = bench_run(s.kind, s.n, bins, run, LEARN, s.interval_ms);
    let d = dir.path();
    match s.features {
        Features::Fixture => {
            config += &format!("features = \"{}\"\n", bins.fixture_features.display())
        }
        Features::Every => {
            let f = bins.every_features.as_ref().expect("VMWATCH_QEMU");
            config += &format!("features = \"{}\"\n", f.display())
        }
        Features::Default => {}
    }
    if s.seeded {
        let seeds = seeds.expect("seeded runs need the training part's models");
        let model = match s.features {
            Features::Default => &seeds.default,
            Features::Every => seeds.every.as_ref().expect("an every-probe model"),
            Features::Fixture => panic!("no lab model for the fixture's probes"),
        };
        seed_state(&d.join("state"), &watched.ids, model);
    }
    let mut agent = Agent::start(&bins.agent, d, &config);
    let mut ev = Events::new(d.join("events.jsonl"));
    let n = s.n;
    let join_secs = 120 + n as u64 * 2;
    let joined = ev.wait(&mut agent, join_secs, "every VM joined", |e| {
        e.first_where(n, |_| true)
    });
    let (learning, monitoring) = if s.seeded {
        (None, span(&mut ev, &mut agent, n, joined + 1, "monitoring"))
    } else {
        let l = span(&mut ev, &mut agent, n, joined + 1, "learning");
        let monitoring_from = ev.wait(&mut agent, 900, "every VM monitoring", |e| {
            e.first_where(n, |w| w.state == "monitoring" && w.scored)
        });
        (
            Some(l),
            span(&mut ev, &mut agent, n, monitoring_from + 1, "monitoring"),
        )
    };
    let hwm_kb = status_kb(agent.pid(), "VmHWM");
    let trained_s = agent.training_times();
    agent.stop();
    drop(watched);
    RunResult {
        learning,
        monitoring,
        hwm_kb,
        trained_s,
        windows_to_join: joined,
    }
}

/// Every VM's state as an agent leaves it after training on `model`.
fn seed_state(root: &Path, ids: &[(String, String)], model: &Model) {
    let state = StateDir::open(root).unwrap();
    let mut first: Option<PathBuf> = None;
    for (name, uuid) in ids {
        let key = VmKey::new(Some(uuid), name);
        let dir = state.vm(&key);
        dir.save(&VmMeta {
            key,
            name: name.clone(),
            uuid: Some(uuid.clone()),
            phase: Phase::Monitoring,
            learn_until: TRAIN_WINDOWS as u64,
            trained_on: Some(TRAIN_WINDOWS as u64),
        })
        .unwrap();
        match &first {
            None => {
                model.save(&dir.model()).unwrap();
                first = Some(dir.model());
            }
            Some(f) => {
                std::fs::copy(f, dir.model()).unwrap();
            }
        }
    }
}

fn agent_part(bins: &Bins, seeds: Option<&Seeds>, reps: usize) {
    let mut setups = Vec::new();
    let counts = [1usize, 8, 64];
    for &n in &counts {
        setups.push(Setup {
            kind: Kind::Fixture,
            n,
            features: Features::Fixture,
            interval_ms: INTERVAL_MS,
            seeded: false,
        });
    }
    if bins.qemu.is_some() {
        for features in [Features::Default, Features::Every] {
            for &n in &counts {
                for seeded in [false, true] {
                    if seeded && seeds.is_none() {
                        continue;
                    }
                    setups.push(Setup {
                        kind: Kind::Paused,
                        n,
                        features,
                        interval_ms: INTERVAL_MS,
                        seeded,
                    });
                }
            }
        }
    } else {
        println!("SKIPPED paused QEMUs: set VMWATCH_QEMU (cargo xtask qemu --print-path)");
    }
    // The per-window cost at the default window length, for comparison.
    setups.push(Setup {
        kind: Kind::Fixture,
        n: 64,
        features: Features::Fixture,
        interval_ms: 2000,
        seeded: false,
    });
    if let Ok(only) = std::env::var("VMWATCH_BENCH_SETUPS") {
        setups.retain(|s| only.split(',').any(|o| s.label().contains(o.trim())));
    }
    println!(
        "agent CPU and memory: {} configurations x {reps} repetitions, interleaved; \
         learn_windows {LEARN}, {MEASURED} windows measured per phase",
        setups.len()
    );
    let mut results: Vec<Vec<RunResult>> = setups.iter().map(|_| Vec::new()).collect();
    let mut run = 0u32;
    for rep in 0..reps {
        for i in 0..setups.len() {
            let k = (i + rep * 5) % setups.len();
            let s = &setups[k];
            run += 1;
            let t = Instant::now();
            let r = run_setup(s, bins, seeds, run);
            let show = |p: &Option<Span>| {
                p.map_or("—".to_string(), |p| {
                    format!(
                        "{:.4} ms{}",
                        p.per_vm_window(s.n),
                        if p.late { " (late reading)" } else { "" }
                    )
                })
            };
            println!(
                "  rep {} {:<52} learning {:>10}  monitoring {:>10} per VM per window; RSS {:.1} MB, peak {:.1} MB; joined by window {}; wall {:.2}x the windows; {:.0} s",
                rep + 1,
                s.label(),
                show(&r.learning),
                show(&Some(r.monitoring)),
                r.monitoring.rss_kb as f64 / 1024.0,
                r.hwm_kb as f64 / 1024.0,
                r.windows_to_join,
                r.monitoring.wall_s * 1e3 / (r.monitoring.windows * s.interval_ms) as f64,
                t.elapsed().as_secs_f64()
            );
            results[k].push(r);
        }
    }
    println!();
    println!("agent CPU, ms per VM per window (median of {reps}; min–max), memory (median):");
    println!(
        "| watched | features | window | learning | monitoring | CPU check (/proc stat) learning / monitoring | VmRSS learning | VmRSS monitoring | VmHWM | training per VM |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (s, rs) in setups.iter().zip(&results) {
        let n = s.n;
        let learn: Vec<f64> = rs
            .iter()
            .filter_map(|r| r.learning.map(|l| l.per_vm_window(n)))
            .collect();
        let mon: Vec<f64> = rs.iter().map(|r| r.monitoring.per_vm_window(n)).collect();
        let stat_l: Vec<f64> = rs
            .iter()
            .filter_map(|r| r.learning.map(|l| l.stat_per_vm_window(n)))
            .collect();
        let stat_m: Vec<f64> = rs
            .iter()
            .map(|r| r.monitoring.stat_per_vm_window(n))
            .collect();
        let mb = |v: Vec<f64>| format!("{:.1} MB", median(v) / 1024.0);
        let rss_l: Vec<f64> = rs
            .iter()
            .filter_map(|r| r.learning.map(|l| l.rss_kb as f64))
            .collect();
        let trained: Vec<f64> = rs.iter().flat_map(|r| r.trained_s.clone()).collect();
        let cell = |v: &[f64]| {
            if v.is_empty() {
                "—".to_string()
            } else {
                format!("{:.4} ({})", median(v.to_vec()), spread(v))
            }
        };
        let opt = |v: &[f64]| {
            if v.is_empty() {
                "—".to_string()
            } else {
                format!("{:.3}", median(v.to_vec()))
            }
        };
        println!(
            "| {} {} | {} | {} ms | {} | {} | {} / {} | {} | {} | {} | {} |",
            n,
            match s.kind {
                Kind::Fixture => "fixtures",
                Kind::Paused => "paused QEMUs",
            },
            s.features.name(),
            s.interval_ms,
            cell(&learn),
            if s.seeded {
                format!("{} (300-window model)", cell(&mon))
            } else {
                cell(&mon)
            },
            opt(&stat_l),
            opt(&stat_m),
            if rss_l.is_empty() {
                "—".into()
            } else {
                mb(rss_l)
            },
            mb(rs.iter().map(|r| r.monitoring.rss_kb as f64).collect()),
            mb(rs.iter().map(|r| r.hwm_kb as f64).collect()),
            if trained.is_empty() {
                "—".into()
            } else {
                format!("{:.2} s", median(trained))
            },
        );
    }
    let late = results
        .iter()
        .flatten()
        .any(|r| r.monitoring.late || r.learning.is_some_and(|l| l.late));
    if late {
        println!("(some readings came after the next window had begun: see the lines above)");
    }
}

// ---------------------------------------------------------------------------
// Training time

/// The lab's 300 windows as an agent's training set of `features`.
fn write_training_set(table: &Table, features: &[String], path: &Path) {
    let x = table.project(features);
    let mut w = DatasetWriter::create(path, features, true).unwrap();
    let mut counts = vec![0u64; features.len()];
    for (i, key) in table.keys.iter().enumerate() {
        for (c, v) in counts.iter_mut().zip(x.row(i)) {
            *c = *v as u64;
        }
        w.write_row(&Row {
            vm: &key.vm,
            pid: key.pid,
            label: "",
            window: i as u64,
            start_unix_ms: key.start_unix_ms,
            duration_ms: key.duration_ms,
            qemu: None,
            counts: &counts,
            sampled: &[],
        })
        .unwrap();
    }
    w.finish().unwrap();
}

/// The agent's training of one VM (src/agent/vm.rs `fit`, then the model
/// saved): seconds, the trained model, the peak memory it added (kB).
fn agent_training(path: &Path, features: &[String], out: &Path) -> (f64, train::Trained, u64) {
    let config = AgentConfig::default();
    // Reset VmHWM to the current RSS, to see this training's peak.
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let me = std::process::id();
    let before = status_kb(me, "VmRSS");
    let t = Instant::now();
    let table = Table::read(path).unwrap();
    let set = TrainingSet::new(
        &table,
        &FeatureChoice::List(FeatureList::new(features.to_vec())),
    )
    .unwrap();
    let trained = train::train(
        set,
        &TrainConfig {
            params: SvmParams::Search(config.grid),
            folds: config.folds,
            smoothing: config.smoothing,
            files: vec![path.display().to_string()],
        },
        &|| {},
    )
    .unwrap();
    trained.model.save(out).unwrap();
    let secs = t.elapsed().as_secs_f64();
    let peak = status_kb(me, "VmHWM").saturating_sub(before);
    (secs, trained, peak)
}

fn training_part(quick: bool) -> Seeds {
    let data = repo().join("data/boots");
    let files: Vec<_> = ["web-1", "web-2", "web-peak-1", "web-peak-2"]
        .iter()
        .map(|f| data.join(format!("{f}.csv.gz")))
        .collect();
    let table = Table::read_all(&files).unwrap();
    assert_eq!(table.len(), TRAIN_WINDOWS, "lab windows");
    let default = AgentConfig::default().features.features;
    assert_eq!(
        default,
        vmwatch_core::features::parse_feature_list("features.txt", DEFAULT_FEATURES)
            .unwrap()
            .features
    );
    let every = table.features.clone();
    let dir = tempfile::tempdir().unwrap();
    let sets = [("default", &default), ("every column", &every)];
    let paths: Vec<PathBuf> = sets
        .iter()
        .enumerate()
        .map(|(i, (_, f))| {
            let p = dir.path().join(format!("training-{i}.csv"));
            write_training_set(&table, f, &p);
            p
        })
        .collect();
    let (reps_default, reps_every) = if quick { (3, 1) } else { (7, 3) };
    println!(
        "training on {TRAIN_WINDOWS} lab windows (data/boots/web-1,2 + web-peak-1,2), {} grid, {} folds, \
         as the agent does (read training.csv, train, save the model); interleaved:",
        AgentConfig::default().grid.name(),
        AgentConfig::default().folds
    );
    let mut times: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut peaks: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut models: [Option<train::Trained>; 2] = [None, None];
    for r in 0..reps_default.max(reps_every) {
        for (i, (name, f)) in sets.iter().enumerate() {
            if r >= [reps_default, reps_every][i] {
                continue;
            }
            let (secs, trained, peak) =
                agent_training(&paths[i], f, &dir.path().join(format!("model-{i}.json")));
            println!(
                "  run {}: {:<12} {:>5} features: {secs:8.2} s, peak +{:.1} MB, nu {} gamma {}, {} support vectors",
                r + 1,
                name,
                f.len(),
                peak as f64 / 1024.0,
                trained.chosen.nu,
                trained.chosen.gamma,
                trained.model.svm.coef.len()
            );
            times[i].push(secs);
            peaks[i].push(peak as f64);
            models[i] = Some(trained);
        }
    }
    let model_bytes = |i: usize| {
        std::fs::metadata(dir.path().join(format!("model-{i}.json"))).map_or(0, |m| m.len())
    };
    println!("| features | runs | training time (median; min–max) | peak memory added | support vectors | model file |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (i, (name, f)) in sets.iter().enumerate() {
        let m = models[i].as_ref().unwrap();
        println!(
            "| {name} ({}) | {} | {:.2} s ({}) | {:.1} MB | {} | {:.1} MB |",
            f.len(),
            times[i].len(),
            median(times[i].clone()),
            spread(&times[i]),
            median(peaks[i].clone()) / 1024.0,
            m.model.svm.coef.len(),
            model_bytes(i) as f64 / 1e6
        );
    }
    let default_model = models[0].take().unwrap();
    let every_model = models[1].take().unwrap();
    // The every-probe runs count the QEMU's `qemu` probes: the same
    // parameters fitted on those columns of the lab windows.
    let qemu_cols: Vec<String> = table
        .features
        .iter()
        .filter(|f| f.starts_with("qemu:"))
        .cloned()
        .collect();
    let every_qemu = Model::fit(
        qemu_cols.clone(),
        table.project(&qemu_cols).view(),
        every_model.chosen.nu,
        every_model.chosen.gamma,
        TrainingSummary {
            windows: TRAIN_WINDOWS,
            ..TrainingSummary::default()
        },
    )
    .unwrap();
    println!(
        "(seed for the every-probe monitoring runs: {} qemu columns, {} support vectors)",
        qemu_cols.len(),
        every_qemu.svm.coef.len()
    );
    Seeds {
        default: default_model.model,
        every: Some(every_qemu),
    }
}

// ---------------------------------------------------------------------------
// Time to the first verdict

fn verdict_part(bins: &Bins, learn: u64, interval_ms: u64, run: u32) {
    let kind = if bins.qemu.is_some() {
        Kind::Paused
    } else {
        Kind::Fixture
    };
    let (dir, watched, mut config) = bench_run(kind, 1, bins, run, learn, interval_ms);
    let d = dir.path();
    if kind == Kind::Fixture {
        config += &format!("features = \"{}\"\n", bins.fixture_features.display());
    }
    let mut agent = Agent::start(&bins.agent, d, &config);
    let mut ev = Events::new(d.join("events.jsonl"));
    let secs = learn * interval_ms / 1000 + 300;
    let first_verdict = ev.wait(&mut agent, secs, "the first verdict", |e| {
        e.first_where(1, |w| w.scored)
    });
    // The window after it has begun: its start is the verdict's window's end.
    let end_ms = ev.wait(&mut agent, 60, "the window after", |e| {
        Some(e.windows.get(&(first_verdict + 1))?[0].start_ms)
    });
    let trained = agent.training_times();
    agent.stop();
    drop(watched);
    let first = ev.windows.values().next().unwrap()[0].clone();
    let phase = |to: &str| {
        ev.phases
            .iter()
            .find(|p| p.to == to && p.vm == first.vm)
            .unwrap_or_else(|| panic!("no phase event to {to}"))
            .start_ms
    };
    let next_start = |ms: u64| {
        ev.windows
            .values()
            .map(|e| e[0].start_ms)
            .find(|&s| s > ms)
            .unwrap()
    };
    // Phase events carry the start of the window at whose end they happened.
    let training_at = next_start(phase("training"));
    let monitoring_at = next_start(phase("monitoring"));
    let t = |ms: u64| (ms - first.start_ms) as f64 / 1e3;
    let training_s = trained.first().copied().unwrap_or(f64::NAN);
    let learning_s = (learn * interval_ms) as f64 / 1e3;
    println!(
        "first verdict, learn_windows {learn} at {interval_ms} ms, 1 {}: from the VM's first window's start: \
         training began at {:.2} s (learning length {learning_s:.2} s), monitoring from {:.2} s, \
         first verdict at {:.2} s; training took {training_s:.2} s (agent log); \
         learning length + training = {:.2} s; the rest ({:.2} s) is waiting for window ends",
        match kind {
            Kind::Fixture => "fixture",
            Kind::Paused => "paused QEMU, default features",
        },
        t(training_at),
        t(monitoring_at),
        t(end_ms),
        learning_s + training_s,
        t(end_ms) - learning_s - training_s,
    );
}

// ---------------------------------------------------------------------------

fn machine() {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split(':')
                .nth(1)
                .map(str::trim)
        })
        .unwrap_or("?")
        .to_string();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    println!(
        "machine: {} CPUs ({cpu}), {mem}, kernel {}, load average {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
        load()
    );
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs us without it.
    if !std::env::args().any(|a| a == "--bench") {
        println!("agent bench: run with `cargo bench --bench agent` (as root)");
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("SKIPPED agent bench: needs root (CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN)");
        return;
    }
    let parts = std::env::var("VMWATCH_BENCH_PARTS").unwrap_or("training,agent,verdict".into());
    let part = |p: &str| parts.split(',').any(|x| x.trim() == p);
    let reps: usize = std::env::var("VMWATCH_BENCH_REPS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3)
        .max(1);
    machine();
    let fixture = fixture_path();
    let qemu = std::env::var_os("VMWATCH_QEMU").map(PathBuf::from);
    let tmp = tempfile::Builder::new()
        .prefix("vmwatch-agent-bench-bin-")
        .tempdir()
        .unwrap();
    // Trusted: root-owned, mode 0755, named like QEMU.
    let fixture_as_qemu = tmp.path().join("qemu-system-x86_64");
    std::fs::copy(&fixture, &fixture_as_qemu).unwrap();
    std::fs::set_permissions(&fixture_as_qemu, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let list = |bin: &Path, name: &str| {
        let probes: Vec<String> = UsdtBinary::read(bin)
            .unwrap()
            .probes()
            .iter()
            .filter(|p| p.provider == "qemu")
            .map(|p| format!("qemu:{}", p.name))
            .collect();
        let path = tmp.path().join(name);
        std::fs::write(&path, probes.join("\n") + "\n").unwrap();
        (path, probes.len())
    };
    let (fixture_features, nf) = list(&fixture, "fixture-features.txt");
    let every = qemu.as_deref().map(|q| list(q, "every-probe.txt"));
    println!(
        "agent {}; fixture {} probes{}",
        agent_binary().display(),
        nf,
        every
            .as_ref()
            .map_or(String::new(), |(_, n)| format!("; QEMU {n} probes"))
    );
    let bins = Bins {
        agent: agent_binary(),
        fixture_as_qemu,
        qemu,
        fixture_features,
        every_features: every.map(|(p, _)| p),
    };
    let t = Instant::now();
    let seeds =
        part("training").then(|| training_part(std::env::var_os("VMWATCH_BENCH_QUICK").is_some()));
    println!(
        "(training part: {:.0} s; load average {})\n",
        t.elapsed().as_secs_f64(),
        load()
    );
    if part("agent") {
        let t = Instant::now();
        agent_part(&bins, seeds.as_ref(), reps);
        println!(
            "(agent part: {:.0} s; load average {})\n",
            t.elapsed().as_secs_f64(),
            load()
        );
    }
    if part("verdict") {
        verdict_part(&bins, LEARN, 200, 10_000);
        verdict_part(&bins, 300, 200, 10_001);
    }
    println!("load average at the end: {}", load());
}
