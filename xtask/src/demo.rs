//! `cargo xtask demo`: the README's main job. The product, `vmwatch agent`,
//! on one lab VM:
//!
//! 1. builds what is missing (system packages, the instrumented QEMU, the lab
//!    guest, vmwatch) and picks the features: `vmwatch select --budget 0.5`
//!    on the lab's committed dataset (`data/idle.csv.gz` against
//!    `data/stress-*.csv.gz`: LDA, keeping the probes' cost within 0.5% of a
//!    CPU), or [`DEFAULT_FEATURES`] without one, or `--features FILE`;
//! 2. boots one lab VM (TCG) in the lab's network namespace with the normal
//!    `web` client load;
//! 3. starts `vmwatch agent` with a configuration of its own (`agent.toml`:
//!    those features, `learn_windows` = `--train-windows`, `smoothing` =
//!    `--smooth`, `include` = the VM's name only, a fresh state directory,
//!    events to `events.jsonl`, metrics on a free loopback port) and follows
//!    it learning the VM (`vmwatch ctl status --json`: windows learned of
//!    the target), training it and monitoring it;
//! 4. once it monitors, launches the attack (the host-side tool of a
//!    `-target` scenario, inside the namespace, on top of the web load) after
//!    `--normal-windows` windows, stops it after `--attack-windows`, and
//!    watches `--after-windows` more, printing every window's verdict as the
//!    agent's events file has it;
//! 5. reads the same story back from the agent, `vmwatch ctl status` and the
//!    VM's lines of its metrics endpoint, and fails unless they agree with
//!    the events (windows by verdict, state, score, verdict, probe cost);
//! 6. stops the agent (SIGTERM), tears everything down and prints a summary:
//!    windows monitored, false positives before the attack, detection rate
//!    during it, time to the first detection, recovery after it, and the
//!    agent's own account.
//!
//! The features, the agent's configuration, state (training set and model),
//! events and log, what `ctl status` and the metrics endpoint said, and the
//! summary are kept in `--out-dir` (default `target/demo/`).

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::fs;
use std::io::{IsTerminal, Read as _, Seek as _, SeekFrom};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use vmwatch_core::features::read_feature_list;
use vmwatch_core::model::{Model, Smoothing};
use vmwatch_core::verdict::{is_outlier, Verdict};

use crate::deps;
use crate::lab::record::{self, Session, SessionOpts};
use crate::lab::scenario::{self, Group};
use crate::lab::vm::{self, Accel};
use crate::qemu;
use crate::util::{self, note};

/// The window length (the agent's `interval`).
const WINDOW: Duration = Duration::from_secs(2);

/// Most the selected probes may cost the VM, in percent of one CPU (DESIGN's
/// goal for "selected"; `vmwatch select --budget`).
const SELECT_BUDGET: &str = "0.5";

/// Features used when there is no lab dataset to select from (a checkout
/// without `data/`) and no `--features`: cheap counters that move with the
/// guest's network and CPU activity (docs/LAB.md, "The demo's built-in
/// features", has how they were chosen and what they measured).
pub const DEFAULT_FEATURES: &str = "\
# vmwatch demo: default features (no lab dataset to select from; see demo.rs)
qemu:virtqueue_pop
qemu:virtio_notify
qemu:virtio_queue_notify
sys:writev
qemu:memory_region_ops_write
qemu:apic_local_deliver
sys:ppoll
";

/// Options of `cargo xtask demo`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Windows (2 s each) of normal web load the agent learns before it
    /// trains the VM's model (its `learn_windows`).
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u32).range(10..))]
    train_windows: u32,
    /// Windows monitored before the attack starts.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    normal_windows: u32,
    /// The attack: a `-target` scenario, whose host-side tool is aimed at the
    /// VM from inside the lab network, on top of the web load. On the lab
    /// dataset, synflood-target and portscan-target were flagged in 99% of
    /// their windows, bruteforce-target in 95%; slowhttp-target (slowloris:
    /// few bytes) in 3%, i.e. missed.
    #[arg(long, default_value = "synflood-target")]
    attack: String,
    /// Windows the attack runs.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..))]
    attack_windows: u32,
    /// Windows monitored after the attack stops.
    #[arg(long, default_value_t = 15)]
    after_windows: u32,
    /// Use these features (one per line, e.g. from `vmwatch select`) instead
    /// of selecting them from the lab dataset.
    #[arg(long, value_name = "FILE")]
    features: Option<PathBuf>,
    /// The lab dataset to select features from (idle.csv.gz, stress-*.csv.gz).
    /// Default: data/ of the repository; without it, built-in defaults.
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Flag the VM when K of its last N windows are anomalous (the paper's
    /// smoothing; 1/1 reports every window as it is).
    #[arg(long, default_value = "2/3", value_name = "K/N")]
    smooth: Smoothing,
    /// Seed of the client load.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Accelerator (/dev/kvm on this project's machines cannot boot a guest).
    #[arg(long, value_enum, default_value_t = Accel::Tcg)]
    accel: Accel,
    /// The QEMU the VM runs (`cargo xtask qemu --build`).
    #[arg(long, value_enum, default_value_t = qemu::Variant::default())]
    qemu: qemu::Variant,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 512)]
    memory: u32,
    /// Where the features, the agent's configuration, state, events and log,
    /// and the summary go. Default: target/demo/ of the repository.
    #[arg(long, value_name = "DIR")]
    out_dir: Option<PathBuf>,
    /// Use this vmwatch binary instead of building target/release/vmwatch.
    #[arg(long)]
    vmwatch: Option<PathBuf>,
}

pub fn run(a: &Args) -> Result<()> {
    let started = Instant::now();
    if !util::is_root()? {
        bail!("the demo needs root (network namespace, taps, vmwatch's eBPF programs)");
    }
    vm::install_signal_handlers();
    let attack = scenario::find(&a.attack)?;
    if attack.group != Group::Attack || attack.host_tool.is_empty() {
        let ok: Vec<&str> = scenario::SCENARIOS
            .iter()
            .filter(|s| s.group == Group::Attack && !s.host_tool.is_empty())
            .map(|s| s.name)
            .collect();
        bail!(
            "--attack {}: the demo launches an attack from the host side while the VM runs; \
             that takes one of {} (the guest side of a `-source` attack is chosen when the VM boots)",
            attack.name,
            ok.join(", ")
        );
    }
    let web = scenario::find("web")?;
    let plan = Plan {
        normal: a.normal_windows as usize,
        attack: a.attack_windows as usize,
        after: a.after_windows as usize,
    };
    let out = a
        .out_dir
        .clone()
        .unwrap_or_else(|| util::repo_root().join("target/demo"));
    fs::create_dir_all(&out).with_context(|| format!("could not create {}", out.display()))?;
    let monitor_time = WINDOW * plan.total() as u32;
    let train_time = WINDOW * a.train_windows;
    note(format!(
        "plan: boot a lab VM with the `web` client load; start `vmwatch agent`, which learns {} \
         windows ({}) of it, trains and monitors it; {} monitored windows ({}): {} normal, {} \
         under `{}`, {} after; then the same story from `vmwatch ctl status` and the metrics \
         endpoint; about {} in all once everything is built",
        a.train_windows,
        util::human_duration(train_time),
        plan.total(),
        util::human_duration(monitor_time),
        plan.normal,
        plan.attack,
        attack.name,
        plan.after,
        util::human_duration(train_time + monitor_time + Duration::from_secs(50)),
    ));

    // 1. Build what is missing, pick the features.
    deps::ensure().context("setting up the system packages failed")?;
    let vmwatch = record::vmwatch_binary(a.vmwatch.as_deref())?;
    vm::check_interrupted()?;
    let features_file = out.join("features.txt");
    let features = choose_features(a, &vmwatch, &features_file)?;
    vm::check_interrupted()?;
    let files = AgentFiles::fresh(&out)?;

    // 2. The VM and its web load.
    let mut session = Session::start(&SessionOpts {
        scenario: web,
        vms: 1,
        seed: a.seed,
        qemu: a.qemu,
        accel: a.accel,
        memory_mib: a.memory,
        boot_timeout: Duration::from_secs(180),
        // Load for everything that follows, with room for slow steps; the
        // session stops it sooner.
        duration: record::WARM_UP + train_time + monitor_time + Duration::from_secs(900),
        kernel_args: Vec::new(),
        network: true,
        phased: false,
    })?;
    let pid = session.pids()[0];
    let name = session.vms_mut()[0].name().to_string();
    let ready_at = started.elapsed();
    note(format!("warming up for {}s", record::WARM_UP.as_secs()));
    session.hold(record::WARM_UP)?;

    // 3. The agent learns the VM, trains it, monitors it. Declared after the
    //    session: on every way out it is stopped before the VM.
    let metrics = free_loopback_port()?;
    let config = AgentConfig {
        features: &features_file,
        learn_windows: a.train_windows,
        smooth: a.smooth,
        vm: &name,
        metrics,
    };
    fs::write(&files.config, config.toml(&files)?)
        .with_context(|| format!("could not write {}", files.config.display()))?;
    let mut agent = AgentProc::start(&vmwatch, &files)?;
    let mut watch = Watch {
        vmwatch: &vmwatch,
        files: &files,
        vm: &name,
        pid,
        tail: EventTail::new(&files.events),
        record: Record::default(),
    };
    let learned = watch.learn(&mut session, &mut agent, a.train_windows, train_time)?;
    let model = watch.model()?;
    let train_line = train_line(&model);
    note(format!("the agent's model: {train_line}"));

    // 4. Monitoring; the attack comes and goes.
    let verdicts = watch.monitor(&mut session, &mut agent, attack, plan)?;

    // 5. The same story from the agent.
    let told = watch.read_back(&mut session, &mut agent, metrics)?;
    fs::write(&files.status, &told.table)
        .with_context(|| format!("could not write {}", files.status.display()))?;
    fs::write(&files.metrics, &told.metrics_text)
        .with_context(|| format!("could not write {}", files.metrics.display()))?;
    let agreement = agreement(&watch.record, &told, &name, pid, u64::from(a.train_windows));
    println!(
        "\nthe agent's own account, after its window {}:",
        told.last_window
    );
    println!(
        "$ {} ctl --state-dir {} status",
        vmwatch.display(),
        files.state.display()
    );
    print!("{}", told.table);
    println!("GET http://{metrics}/metrics, the lines of `{name}`:");
    for line in vm_lines(&told.samples, &name) {
        println!("{line}");
    }
    match &agreement.problems[..] {
        [] => note(format!(
            "`ctl status` and the metrics agree with the events: {}",
            agreement.tally
        )),
        problems => {
            for p in problems {
                note(format!("DISAGREEMENT: {p}"));
            }
        }
    }

    // 6. Tear down, sum up.
    let stopped = agent.stop()?;
    note(format!(
        "agent stopped by SIGTERM in {} ({})",
        util::human_duration(stopped.1),
        stopped.0
    ));
    if !stopped.0.success() {
        bail!(
            "vmwatch agent exited with {} after SIGTERM; see {}",
            stopped.0,
            files.log.display()
        );
    }
    session.finish()?;
    let s = Summary::of(&verdicts, plan);
    let first_monitored = verdicts.first().map(|v| v.verdict.window);
    let agent_lines = agent_lines(&learned, first_monitored, &agreement, &told);
    let text = s.render(&SummaryContext {
        attack: attack.name,
        features: features.len(),
        train_windows: a.train_windows,
        train_line: &train_line,
        smooth: a.smooth,
        agent: &agent_lines,
        ready_at,
        total: started.elapsed(),
    });
    println!("\n{text}");
    let summary_file = out.join("summary.txt");
    fs::write(&summary_file, &text)
        .with_context(|| format!("could not write {}", summary_file.display()))?;
    if !agreement.problems.is_empty() {
        bail!(
            "the agent's `ctl status` and metrics do not agree with its events:\n  {}\n\
             (events: {}; status: {}; metrics: {})",
            agreement.problems.join("\n  "),
            files.events.display(),
            files.status.display(),
            files.metrics.display()
        );
    }
    note(format!(
        "features, the agent's configuration, state, events, log, status and metrics, and this \
         summary are in {}",
        out.display()
    ));
    Ok(())
}

/// What the demo keeps of the agent, in the output directory.
struct AgentFiles {
    config: PathBuf,
    state: PathBuf,
    events: PathBuf,
    log: PathBuf,
    /// `ctl status` and the metrics endpoint as read at the end.
    status: PathBuf,
    metrics: PathBuf,
}

impl AgentFiles {
    /// The files in `out`, with what an earlier run left of them removed:
    /// the agent appends events and resumes VMs from its state directory.
    fn fresh(out: &Path) -> Result<AgentFiles> {
        let f = AgentFiles {
            config: out.join("agent.toml"),
            state: out.join("state"),
            events: out.join("events.jsonl"),
            log: out.join("agent.log"),
            status: out.join("status.txt"),
            metrics: out.join("metrics.txt"),
        };
        util::remove_dir_if_exists(&f.state)?;
        for file in [&f.config, &f.events, &f.log, &f.status, &f.metrics] {
            match fs::remove_file(file) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("could not remove {}", file.display()))
                }
                _ => {}
            }
        }
        Ok(f)
    }
}

/// The agent's configuration (`agent.toml`).
struct AgentConfig<'a> {
    features: &'a Path,
    learn_windows: u32,
    smooth: Smoothing,
    /// The one VM it watches.
    vm: &'a str,
    metrics: SocketAddr,
}

impl AgentConfig<'_> {
    fn toml(&self, files: &AgentFiles) -> Result<String> {
        #[derive(serde::Serialize)]
        struct File<'a> {
            state_dir: &'a Path,
            events: &'a Path,
            metrics: String,
            interval: String,
            features: &'a Path,
            learn_windows: u32,
            smoothing: String,
            include: [String; 1],
        }
        let body = toml::to_string(&File {
            state_dir: &files.state,
            events: &files.events,
            metrics: self.metrics.to_string(),
            interval: format!("{}s", WINDOW.as_secs()),
            features: self.features,
            learn_windows: self.learn_windows,
            smoothing: self.smooth.to_string(),
            include: [glob_literal(self.vm)],
        })
        .context("could not write the agent's configuration")?;
        Ok(format!(
            "# vmwatch agent for `cargo xtask demo` (xtask/src/demo.rs)\n{body}"
        ))
    }
}

/// A glob pattern (the agent's `include`) that matches `name` only.
fn glob_literal(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        if "*?[]{}\\!".contains(c) {
            out.push('[');
            out.push(c);
            out.push(']');
        } else {
            out.push(c);
        }
    }
    out
}

/// A loopback address nothing listens on now (the agent's metrics).
fn free_loopback_port() -> Result<SocketAddr> {
    let l = TcpListener::bind(("127.0.0.1", 0)).context("could not find a free loopback port")?;
    Ok(l.local_addr()?)
}

/// The running `vmwatch agent`; stopped (SIGTERM, then SIGKILL) on every way
/// out.
struct AgentProc {
    child: Option<Child>,
    log: PathBuf,
}

/// How long the agent may take to exit after SIGTERM.
const AGENT_STOP: Duration = Duration::from_secs(30);

impl AgentProc {
    fn start(vmwatch: &Path, files: &AgentFiles) -> Result<AgentProc> {
        let log = fs::File::create(&files.log)
            .with_context(|| format!("could not create {}", files.log.display()))?;
        // SIGTERM if xtask dies; Ctrl-C reaches it too (same process group).
        let mut cmd = record::vmwatch_command(vmwatch);
        cmd.arg("agent")
            .arg("--config")
            .arg(&files.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        note(format!(
            "$ {} 2> {}",
            util::display(&cmd),
            files.log.display()
        ));
        let child = cmd.spawn().context("could not start vmwatch agent")?;
        Ok(AgentProc {
            child: Some(child),
            log: files.log.clone(),
        })
    }

    /// Fails if the agent has exited.
    fn check(&mut self) -> Result<()> {
        let child = self.child.as_mut().context("the agent was stopped")?;
        if let Some(status) = child.try_wait().context("could not wait for the agent")? {
            self.child = None;
            vm::check_interrupted()?;
            bail!(
                "vmwatch agent exited ({status}); the end of {}:\n{}",
                self.log.display(),
                self.log_tail(15)
            );
        }
        Ok(())
    }

    /// The last `n` lines of the agent's log.
    fn log_tail(&self, n: usize) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The agent's warnings so far (e.g. features this QEMU lacks), without
    /// the level.
    fn warnings(&self) -> Vec<String> {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter_map(|l| l.trim_start().strip_prefix("WARN "))
            .map(str::to_string)
            .collect()
    }

    /// SIGTERM and wait; returns how it exited and how long that took.
    fn stop(mut self) -> Result<(ExitStatus, Duration)> {
        let mut child = self.child.take().context("the agent was stopped")?;
        let t = Instant::now();
        let status = terminate(&mut child)?;
        Ok((status, t.elapsed()))
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = terminate(&mut child);
        }
    }
}

/// SIGTERM, up to [`AGENT_STOP`] to exit, then SIGKILL; reaps the child.
fn terminate(child: &mut Child) -> Result<ExitStatus> {
    if let Some(status) = child.try_wait()? {
        return Ok(status);
    }
    // SAFETY: a signal to our own child, not yet reaped.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let deadline = Instant::now() + AGENT_STOP;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    note(format!(
        "vmwatch agent (pid {}) did not exit within {}s of SIGTERM: killing it",
        child.id(),
        AGENT_STOP.as_secs()
    ));
    let _ = child.kill();
    Ok(child.wait()?)
}

/// One VM in `vmwatch ctl status --json` (the agent's `VmStatus`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
struct VmStatus {
    vm: String,
    uuid: Option<String>,
    pid: Option<u32>,
    state: String,
    windows_learned: u64,
    score: Option<f64>,
    anomalous: Option<bool>,
    probe_cost_ratio: Option<f64>,
}

/// `vmwatch ctl status [--json]`'s output, or why there is none.
fn ctl_status(vmwatch: &Path, state: &Path, json: bool) -> Result<String> {
    let mut cmd = Command::new(vmwatch);
    cmd.arg("ctl")
        .arg("--state-dir")
        .arg(state)
        .arg("status")
        .args(json.then_some("--json"))
        .stdin(Stdio::null());
    let out = cmd
        .output()
        .with_context(|| format!("could not run `{}`", util::display(&cmd)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            util::display(&cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).context("`vmwatch ctl status` printed no UTF-8")
}

fn parse_status(json: &str) -> Result<Vec<VmStatus>> {
    serde_json::from_str(json).context("`vmwatch ctl status --json` is not a list of VMs")
}

/// One line of the agent's events file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
enum AgentEvent {
    /// A VM's window: learned (no score) or judged.
    Window(WindowEvent),
    /// The VM moved between learning, training and monitoring.
    Phase(Change),
    /// Its smoothed verdict turned anomalous or normal.
    Verdict(Change),
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
struct WindowEvent {
    start_unix_ms: u64,
    vm: String,
    pid: u32,
    window: u64,
    state: String,
    score: Option<f64>,
    anomalous: Option<bool>,
}

impl WindowEvent {
    /// The window's verdict, if the VM was monitored.
    fn verdict(&self) -> Option<Verdict> {
        Some(Verdict {
            start_unix_ms: self.start_unix_ms,
            vm: self.vm.clone(),
            pid: self.pid,
            label: None,
            window: self.window,
            score: self.score?,
            anomalous: self.anomalous?,
            missing_features: None,
            estimated_features: None,
            probe_cost: None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
struct Change {
    vm: String,
    from: String,
    to: String,
}

impl AgentEvent {
    fn parse(line: &str) -> Result<AgentEvent> {
        serde_json::from_str(line)
            .with_context(|| format!("the agent's event {line:?} is not understood"))
    }

    fn vm(&self) -> &str {
        match self {
            AgentEvent::Window(w) => &w.vm,
            AgentEvent::Phase(c) | AgentEvent::Verdict(c) => &c.vm,
        }
    }
}

/// Follows the agent's events file as it grows.
struct EventTail {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
    pending: VecDeque<AgentEvent>,
}

impl EventTail {
    fn new(path: &Path) -> EventTail {
        EventTail {
            path: path.to_path_buf(),
            offset: 0,
            partial: Vec::new(),
            pending: VecDeque::new(),
        }
    }

    /// Reads what was appended since the last call.
    fn poll(&mut self) -> Result<()> {
        let mut f = match fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(e).with_context(|| format!("could not open {}", self.path.display()))
            }
        };
        f.seek(SeekFrom::Start(self.offset))?;
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes)
            .with_context(|| format!("could not read {}", self.path.display()))?;
        self.offset += bytes.len() as u64;
        self.push(&bytes)
    }

    /// Complete lines of `bytes` (after what came before) become events.
    fn push(&mut self, bytes: &[u8]) -> Result<()> {
        self.partial.extend_from_slice(bytes);
        while let Some(end) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            if !line.trim().is_empty() {
                self.pending.push_back(AgentEvent::parse(line.trim())?);
            }
        }
        Ok(())
    }
}

/// Every event of the demo's VM, in order.
#[derive(Debug, Default)]
struct Record {
    windows: Vec<WindowEvent>,
    phases: Vec<Change>,
    verdicts: Vec<Change>,
}

impl Record {
    /// Keeps `e`; fails on an event of another VM process (another VM of the
    /// same name on this host).
    fn add(&mut self, e: &AgentEvent, vm: &str, pid: u32) -> Result<()> {
        if e.vm() != vm {
            bail!(
                "the agent reports on VM `{}`, which it was not told to watch",
                e.vm()
            );
        }
        match e {
            AgentEvent::Window(w) if w.pid != pid => bail!(
                "another VM named `{vm}` runs on this host (QEMU pid {}, ours is {pid}) and \
                 the agent watches it too: stop it, or run the demo when it is gone",
                w.pid
            ),
            AgentEvent::Window(w) => self.windows.push(w.clone()),
            AgentEvent::Phase(c) => self.phases.push(c.clone()),
            AgentEvent::Verdict(c) => self.verdicts.push(c.clone()),
        }
        Ok(())
    }
}

/// How the agent learned the VM, as the demo saw it.
struct Learned {
    /// Windows learned, as `ctl status` has it.
    windows: u64,
    /// The agent's first and last window of the VM's learning.
    first: u64,
    last: u64,
}

/// What the agent said at the end.
struct Told {
    /// `ctl status` (the table).
    table: String,
    status: Vec<VmStatus>,
    metrics_text: String,
    samples: Vec<Sample>,
    /// The agent's last window (index) when it was read.
    last_window: u64,
}

/// The demo's view of the agent and its VM.
struct Watch<'a> {
    vmwatch: &'a Path,
    files: &'a AgentFiles,
    vm: &'a str,
    pid: u32,
    tail: EventTail,
    record: Record,
}

/// How often the demo looks at the agent's events.
const POLL: Duration = Duration::from_millis(100);

impl Watch<'_> {
    /// Fails if Ctrl-C was pressed, the VM or the agent exited.
    fn check(session: &mut Session, agent: &mut AgentProc) -> Result<()> {
        vm::check_interrupted()?;
        session.check()?;
        agent.check()
    }

    /// The VM in `ctl status`, if the agent answers and lists it.
    fn status(&self) -> Result<Option<VmStatus>> {
        let Ok(json) = ctl_status(self.vmwatch, &self.files.state, true) else {
            // Not listening yet, or still starting.
            return Ok(None);
        };
        let found = parse_status(&json)?.into_iter().find(|v| v.vm == self.vm);
        if let Some(v) = &found {
            if v.pid.is_some_and(|p| p != self.pid) {
                bail!(
                    "the agent watches another VM named `{}` (QEMU pid {}, ours is {}): stop \
                     it, or run the demo when it is gone",
                    self.vm,
                    v.pid.unwrap_or(0),
                    self.pid
                );
            }
        }
        Ok(found)
    }

    /// Waits until the agent has learned and trained the VM and monitors it,
    /// showing its progress.
    fn learn(
        &mut self,
        session: &mut Session,
        agent: &mut AgentProc,
        target: u32,
        train_time: Duration,
    ) -> Result<Learned> {
        // Attaching the probes takes a moment.
        let t = Instant::now();
        loop {
            Self::check(session, agent)?;
            if let Some(v) = self.status()? {
                if v.pid == Some(self.pid) {
                    break;
                }
            }
            if t.elapsed() > Duration::from_secs(60) {
                bail!(
                    "the agent did not take VM `{}` (pid {}) within 60s; the end of {}:\n{}",
                    self.vm,
                    self.pid,
                    agent.log.display(),
                    agent.log_tail(15)
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        note(format!(
            "the agent watches VM `{}` (pid {}) and learns it: {target} windows ({})",
            self.vm,
            self.pid,
            util::human_duration(WINDOW * target)
        ));
        let live = std::io::stderr().is_terminal();
        let step = (u64::from(target) / 10).max(1);
        let mut shown = 0u64;
        let mut open_line = false;
        let mut last_status = Instant::now();
        let mut learned: Option<(u64, u64)> = None;
        let deadline = Instant::now() + train_time + Duration::from_secs(600);
        loop {
            Self::check(session, agent)?;
            self.tail.poll()?;
            while let Some(e) = self.tail.pending.pop_front() {
                self.record.add(&e, self.vm, self.pid)?;
                let AgentEvent::Phase(c) = &e else { continue };
                if open_line {
                    eprintln!();
                    open_line = false;
                }
                match c.to.as_str() {
                    "training" => {
                        let w = &self.record.windows;
                        let (first, last) = match (w.first(), w.last()) {
                            (Some(f), Some(l)) => (f.window, l.window),
                            _ => bail!("the agent trains `{}` without a window", self.vm),
                        };
                        learned = Some((first, last));
                        note(format!(
                            "the agent learned {} windows of `{}` (its windows {first}-{last}) \
                             and trains its model (grid search of nu and gamma, 5-fold \
                             cross-validation)",
                            w.len(),
                            self.vm
                        ));
                    }
                    "monitoring" => {
                        let Some((first, last)) = learned else {
                            bail!("the agent monitors `{}` without training it", self.vm);
                        };
                        note(format!("the agent has a model and monitors `{}`", self.vm));
                        // Say it here, not only in its log: with features
                        // selected on data/ of another QEMU, some may not exist.
                        for w in agent.warnings() {
                            note(format!("the agent warns: {w}"));
                        }
                        let windows = self.status()?.map_or(0, |v| v.windows_learned);
                        // The rest of what was read stays pending for `monitor`.
                        return Ok(Learned {
                            windows,
                            first,
                            last,
                        });
                    }
                    other => bail!(
                        "the agent moved `{}` from {} to {other} while it learned",
                        self.vm,
                        c.from
                    ),
                }
            }
            if learned.is_none() && last_status.elapsed() >= WINDOW / 2 {
                last_status = Instant::now();
                if let Some(v) = self.status()? {
                    let n = v.windows_learned;
                    let left = WINDOW * u64::from(target).saturating_sub(n) as u32;
                    let line = format!(
                        "agent: {} {}, {n}/{target} windows learned, {} left",
                        self.vm,
                        v.state,
                        util::human_duration(left)
                    );
                    if live {
                        eprint!("\rxtask: {line}   ");
                        open_line = true;
                    } else if n >= shown + step && n < u64::from(target) {
                        shown = n - n % step;
                        note(line);
                    }
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "the agent did not monitor `{}` within {}; the end of {}:\n{}",
                    self.vm,
                    util::human_duration(train_time + Duration::from_secs(600)),
                    agent.log.display(),
                    agent.log_tail(15)
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// The model the agent trained, from its state directory.
    fn model(&self) -> Result<Model> {
        let vms = self.files.state.join("vms");
        let mut found = Vec::new();
        for e in fs::read_dir(&vms).with_context(|| format!("could not list {}", vms.display()))? {
            let path = e?.path().join("model.json");
            if path.is_file() {
                found.push(path);
            }
        }
        match &found[..] {
            [one] => Ok(Model::load(one)?),
            _ => bail!(
                "expected the model of one VM in {}, found {}",
                vms.display(),
                found.len()
            ),
        }
    }

    /// The plan's windows as the agent judges them, launching and stopping
    /// the attack in between; prints a line per window; returns the
    /// verdicts.
    fn monitor(
        &mut self,
        session: &mut Session,
        agent: &mut AgentProc,
        attack: &'static scenario::Scenario,
        plan: Plan,
    ) -> Result<Vec<Seen>> {
        let color = std::io::stdout().is_terminal();
        let attack_time = WINDOW * plan.attack as u32 + Duration::from_secs(60);
        let limit = WINDOW * plan.total() as u32 + Duration::from_secs(60);
        let deadline = Instant::now() + limit;
        let mut attack_started: Option<Instant> = None;
        let mut attack_running = false;
        let mut first_detection = true;
        let mut verdicts: Vec<Seen> = Vec::new();
        note(format!(
            "verdicts from the agent's events ({})",
            self.files.events.display()
        ));
        println!("\n{:>6}  {:<6}  {:>9}  VERDICT", "WINDOW", "PHASE", "SCORE");
        while verdicts.len() < plan.total() {
            Self::check(session, agent)?;
            self.tail.poll()?;
            while verdicts.len() < plan.total() {
                let Some(e) = self.tail.pending.pop_front() else {
                    break;
                };
                self.record.add(&e, self.vm, self.pid)?;
                let w = match e {
                    AgentEvent::Window(w) => w,
                    AgentEvent::Phase(c) => bail!(
                        "the agent moved `{}` from {} to {} while it monitored",
                        self.vm,
                        c.from,
                        c.to
                    ),
                    AgentEvent::Verdict(_) => continue,
                };
                let Some(verdict) = w.verdict() else {
                    bail!(
                        "the agent's window {} of `{}` has no verdict (state {})",
                        w.window,
                        self.vm,
                        w.state
                    );
                };
                let v = Seen {
                    verdict,
                    since_attack: attack_started.map(|t| t.elapsed().as_secs_f64()),
                };
                let phase = plan.phase(verdicts.len());
                let anomalous = v.verdict.anomalous;
                let mut remark = String::new();
                if v.outlier() && !anomalous {
                    remark.push_str("(outlier, smoothed away)");
                } else if anomalous && !v.outlier() {
                    remark.push_str("(inside, flagged by the windows before)");
                }
                if anomalous && first_detection && phase != Phase::Normal {
                    first_detection = false;
                    if !remark.is_empty() {
                        remark.push(' ');
                    }
                    let _ = write!(
                        remark,
                        "<- first detection, {:.1}s after the attack started",
                        v.since_attack.unwrap_or(0.0)
                    );
                }
                let shown = match (anomalous, color) {
                    (true, true) => "\x1b[1;31mANOMALOUS\x1b[0m",
                    (true, false) => "ANOMALOUS",
                    (false, _) => "normal   ",
                };
                let row = format!(
                    "{:>6}  {:<6}  {:>9.4}  {shown}  {remark}",
                    v.verdict.window,
                    phase.as_str(),
                    v.verdict.score
                );
                println!("{}", row.trim_end());
                verdicts.push(v);
                let seen = verdicts.len();
                if seen == plan.normal {
                    note(format!(
                        "launching the attack `{}` at the VM for {} windows ({})",
                        attack.name,
                        plan.attack,
                        util::human_duration(WINDOW * plan.attack as u32)
                    ));
                    session.start_host_tool(attack, attack_time)?;
                    attack_started = Some(Instant::now());
                    attack_running = true;
                } else if seen == plan.normal + plan.attack && attack_running {
                    attack_running = false;
                    for (what, runs) in session.stop_host_tools() {
                        note(format!(
                            "attack stopped: `{what}` (started {runs} time(s)); the web load goes on"
                        ));
                    }
                }
            }
            if verdicts.len() < plan.total() {
                if Instant::now() > deadline {
                    bail!(
                        "the agent did not judge {} windows of `{}` within {}s",
                        plan.total(),
                        self.vm,
                        limit.as_secs()
                    );
                }
                std::thread::sleep(POLL);
            }
        }
        if attack_running {
            session.stop_host_tools();
        }
        Ok(verdicts)
    }

    /// `ctl status` and the metrics endpoint, read between two windows (again
    /// if the agent took a window meanwhile), with every event up to then.
    fn read_back(
        &mut self,
        session: &mut Session,
        agent: &mut AgentProc,
        metrics: SocketAddr,
    ) -> Result<Told> {
        for _ in 0..3 {
            Self::check(session, agent)?;
            self.tail.poll()?;
            while let Some(e) = self.tail.pending.pop_front() {
                self.record.add(&e, self.vm, self.pid)?;
            }
            let before = self.record.windows.len();
            let metrics_text = http_get(metrics, "/metrics")?;
            let json = ctl_status(self.vmwatch, &self.files.state, true)?;
            let table = ctl_status(self.vmwatch, &self.files.state, false)?;
            // Events are flushed at the end of a window, after the metrics.
            std::thread::sleep(Duration::from_millis(300));
            self.tail.poll()?;
            while let Some(e) = self.tail.pending.pop_front() {
                self.record.add(&e, self.vm, self.pid)?;
            }
            if self.record.windows.len() != before {
                continue;
            }
            return Ok(Told {
                table,
                status: parse_status(&json)?,
                samples: parse_metrics(&metrics_text)?,
                metrics_text,
                last_window: self.record.windows.last().map_or(0, |w| w.window),
            });
        }
        bail!("the agent took a window every time it was read; could not read it between two")
    }
}

/// `GET http://ADDR/PATH`: the body of a 200 answer.
fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    let url = format!("http://{addr}{path}");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    agent
        .get(&url)
        .call()
        .and_then(|mut r| r.body_mut().read_to_string())
        .with_context(|| format!("could not read {url}"))
}

/// One sample of the Prometheus text format.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
    /// As served.
    line: String,
}

impl Sample {
    fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// The samples of a text exposition (comments and blank lines skipped).
fn parse_metrics(text: &str) -> Result<Vec<Sample>> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim_end();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = || format!("the metrics line {line:?} is not understood");
        let name_end = line.find(['{', ' ']).with_context(bad)?;
        let name = line[..name_end].to_string();
        let (labels, rest) = match &line[name_end..] {
            r if r.starts_with('{') => parse_labels(r).with_context(bad)?,
            r => (Vec::new(), r),
        };
        let value = rest.split_whitespace().next().with_context(bad)?;
        let value: f64 = value.parse().ok().with_context(bad)?;
        out.push(Sample {
            name,
            labels,
            value,
            line: line.to_string(),
        });
    }
    Ok(out)
}

/// `{k="v",…}` at the start of `s` (values with `\"`, `\\`, `\n`
/// escapes): the labels and what follows.
fn parse_labels(s: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut rest = s.strip_prefix('{')?;
    let mut labels = Vec::new();
    loop {
        rest = rest.trim_start_matches([',', ' ']);
        if let Some(after) = rest.strip_prefix('}') {
            return Some((labels, after));
        }
        let (key, after) = rest.split_once('=')?;
        let body = after.strip_prefix('"')?;
        let mut chars = body.char_indices();
        let mut value = String::new();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        labels.push((key.trim().to_string(), value));
        rest = &body[end + 1..];
    }
}

/// The metrics of one VM the demo shows.
const VM_METRICS: [&str; 7] = [
    "vmwatch_vm_info",
    "vmwatch_vm_state",
    "vmwatch_vm_windows_total",
    "vmwatch_vm_anomalous",
    "vmwatch_vm_score",
    "vmwatch_vm_probe_hits_total",
    "vmwatch_vm_probe_cost_ratio",
];

/// The served lines of `vm`'s metrics, in [`VM_METRICS`]'s order.
fn vm_lines<'a>(samples: &'a [Sample], vm: &str) -> Vec<&'a str> {
    VM_METRICS
        .iter()
        .flat_map(|name| {
            samples
                .iter()
                .filter(move |s| s.name == *name && s.label("vm") == Some(vm))
        })
        .map(|s| s.line.as_str())
        .collect()
}

/// Whether `ctl status` and the metrics tell what the events told.
#[derive(Debug)]
struct Agreement {
    /// Windows by verdict and verdict changes, as the events count them.
    tally: String,
    problems: Vec<String>,
    /// The last probe cost (share of a CPU), from the metrics.
    probe_cost: Option<f64>,
}

fn agreement(record: &Record, told: &Told, vm: &str, pid: u32, learn_windows: u64) -> Agreement {
    let mut problems = Vec::new();
    let mut problem = |p: String| problems.push(p);
    let count = |want: Option<bool>| {
        record
            .windows
            .iter()
            .filter(|w| w.anomalous == want)
            .count()
    };
    let (learning, normal, anomalous) = (count(None), count(Some(false)), count(Some(true)));
    let last = record.windows.last();
    // The verdict changes the windows imply (from normal), against the
    // verdict events.
    let mut changes = Vec::new();
    let mut was = false;
    for w in &record.windows {
        if let Some(x) = w.anomalous {
            if x != was {
                changes.push((was, x));
            }
            was = x;
        }
    }
    let name = |a: bool| if a { "anomalous" } else { "normal" };
    let told_changes: Vec<(String, String)> = record
        .verdicts
        .iter()
        .map(|c| (c.from.clone(), c.to.clone()))
        .collect();
    let implied: Vec<(String, String)> = changes
        .iter()
        .map(|&(f, t)| (name(f).to_string(), name(t).to_string()))
        .collect();
    if told_changes != implied {
        problem(format!(
            "{} verdict events, but the window events turn {} times",
            told_changes.len(),
            implied.len()
        ));
    }
    let phases: Vec<(&str, &str)> = record
        .phases
        .iter()
        .map(|c| (c.from.as_str(), c.to.as_str()))
        .collect();
    if phases != [("learning", "training"), ("training", "monitoring")] {
        problem(format!(
            "phase events {phases:?}, expected learning → training → monitoring"
        ));
    }
    let close = |x: f64, y: f64| (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0);

    // ctl status.
    match told.status.iter().find(|v| v.vm == vm) {
        None => problem(format!("`ctl status` does not list `{vm}`")),
        Some(s) => {
            if s.pid != Some(pid) {
                problem(format!("`ctl status`: pid {:?}, not {pid}", s.pid));
            }
            if s.state != "monitoring" {
                problem(format!("`ctl status`: state {}, not monitoring", s.state));
            }
            if s.windows_learned != learn_windows {
                problem(format!(
                    "`ctl status`: {} windows learned, not {learn_windows}",
                    s.windows_learned
                ));
            }
            if s.anomalous != last.and_then(|w| w.anomalous) {
                problem(format!(
                    "`ctl status`: anomalous {:?}, the last window event {:?}",
                    s.anomalous,
                    last.and_then(|w| w.anomalous)
                ));
            }
            match (s.score, last.and_then(|w| w.score)) {
                (Some(x), Some(y)) if close(x, y) => {}
                (x, y) => problem(format!(
                    "`ctl status`: score {x:?}, the last window event {y:?}"
                )),
            }
        }
    }

    // The metrics.
    let metric = |name: &str, labels: &[(&str, &str)]| {
        told.samples
            .iter()
            .find(|s| {
                s.name == name
                    && s.label("vm") == Some(vm)
                    && labels.iter().all(|(k, v)| s.label(k) == Some(v))
            })
            .map(|s| s.value)
    };
    for (verdict, events) in [
        ("learning", learning),
        ("normal", normal),
        ("anomalous", anomalous),
    ] {
        let served = metric("vmwatch_vm_windows_total", &[("verdict", verdict)]);
        if served != Some(events as f64) {
            problem(format!(
                "vmwatch_vm_windows_total{{verdict=\"{verdict}\"}} is {}, the events count \
                 {events}",
                served.map_or("absent".into(), |v| v.to_string())
            ));
        }
    }
    for state in ["learning", "training", "monitoring"] {
        let want = f64::from(u8::from(state == "monitoring"));
        let served = metric("vmwatch_vm_state", &[("state", state)]);
        if served != Some(want) {
            problem(format!(
                "vmwatch_vm_state{{state=\"{state}\"}} is {served:?}, not {want}"
            ));
        }
    }
    let want = last
        .and_then(|w| w.anomalous)
        .map(|a| f64::from(u8::from(a)));
    let served = metric("vmwatch_vm_anomalous", &[]);
    if served != want {
        problem(format!(
            "vmwatch_vm_anomalous is {served:?}, the last window event says {want:?}"
        ));
    }
    match (metric("vmwatch_vm_score", &[]), last.and_then(|w| w.score)) {
        (Some(x), Some(y)) if close(x, y) => {}
        (x, y) => problem(format!(
            "vmwatch_vm_score is {x:?}, the last window event's score {y:?}"
        )),
    }
    let pid_label = pid.to_string();
    if metric("vmwatch_vm_info", &[("pid", &pid_label)]) != Some(1.0) {
        problem(format!("no vmwatch_vm_info of `{vm}` with pid {pid}"));
    }
    let probe_cost = metric("vmwatch_vm_probe_cost_ratio", &[]);
    let status_cost = told
        .status
        .iter()
        .find(|v| v.vm == vm)
        .and_then(|v| v.probe_cost_ratio);
    match (probe_cost, status_cost) {
        (Some(x), Some(y)) if close(x, y) => {}
        (x, y) => problem(format!(
            "vmwatch_vm_probe_cost_ratio is {x:?}, `ctl status` says {y:?}"
        )),
    }
    let tally = format!(
        "{} windows ({learning} learning, {normal} normal, {anomalous} anomalous), {} verdict \
         change(s)",
        record.windows.len(),
        told_changes.len()
    );
    Agreement {
        tally,
        problems,
        probe_cost,
    }
}

/// The summary's lines about the agent.
fn agent_lines(
    learned: &Learned,
    first_monitored: Option<u64>,
    agreement: &Agreement,
    told: &Told,
) -> Vec<String> {
    let mut lines = vec![format!(
        "`vmwatch agent` learned {} windows (its windows {}-{}), trained, monitored from \
         window {}",
        learned.windows,
        learned.first,
        learned.last,
        first_monitored.map_or("-".into(), |w| w.to_string())
    )];
    lines.push(format!(
        "`ctl status` and /metrics after window {} {} its events: {}",
        told.last_window,
        if agreement.problems.is_empty() {
            "agree with"
        } else {
            "DISAGREE with"
        },
        agreement.tally
    ));
    if let Some(cost) = agreement.probe_cost {
        lines.push(format!(
            "probe cost {:.3}% of one CPU (last window, vmwatch_vm_probe_cost_ratio)",
            cost * 100.0
        ));
    }
    lines
}

/// `vmwatch train`'s line for a model: parameters and cross-validation.
fn train_line(m: &Model) -> String {
    let cv = m
        .training
        .cv_false_positive_rate
        .map_or("n/a".to_string(), |r| format!("{:.2}%", r * 100.0));
    format!(
        "nu = {}, gamma = {}: {cv} false positives in {}-fold cross-validation, {} support vectors",
        m.svm.nu,
        m.svm.gamma,
        m.training.folds,
        m.svm.coef.len()
    )
}

/// Writes the demo's feature list to `dest` and returns its features.
fn choose_features(a: &Args, vmwatch: &Path, dest: &Path) -> Result<Vec<String>> {
    if let Some(given) = &a.features {
        let text = fs::read_to_string(given)
            .with_context(|| format!("could not read the feature list {}", given.display()))?;
        fs::write(dest, &text).with_context(|| format!("could not write {}", dest.display()))?;
        note(format!("features: {} (--features)", given.display()));
    } else {
        let data = a
            .data
            .clone()
            .unwrap_or_else(|| util::repo_root().join("data"));
        let (baseline, stress) = dataset_files(&data)?;
        match baseline {
            Some(baseline) if !stress.is_empty() => {
                note(format!(
                    "selecting features from the lab dataset in {} (LDA: idle against {})",
                    data.display(),
                    stress
                        .iter()
                        .filter_map(|p| p.file_name())
                        .map(|f| f.to_string_lossy().trim_end_matches(".csv.gz").to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                let mut cmd = Command::new(vmwatch);
                cmd.arg("select")
                    .args(["--budget", SELECT_BUDGET])
                    .arg("--baseline")
                    .arg(&baseline)
                    .args(&stress)
                    .arg("-o")
                    .arg(dest)
                    .stdin(Stdio::null())
                    .stderr(Stdio::inherit());
                note(format!("$ {}", util::display(&cmd)));
                let selected = cmd.output().context("could not start vmwatch select")?;
                vm::check_interrupted()?;
                if !selected.status.success() {
                    bail!("vmwatch select failed ({})", selected.status);
                }
                // The full report (per pair: greedy subset, top features) is
                // kept; the terminal gets its first table (the paper's Table 1).
                let report = String::from_utf8_lossy(&selected.stdout);
                let report_file = dest.with_file_name("select.txt");
                fs::write(&report_file, report.as_bytes())
                    .with_context(|| format!("could not write {}", report_file.display()))?;
                for line in report.lines().take_while(|l| !l.starts_with("## ")) {
                    println!("{line}");
                }
                note(format!(
                    "the per-pair subsets are in {}",
                    report_file.display()
                ));
            }
            _ => {
                note(format!(
                    "no lab dataset in {} (idle.csv.gz and stress-*.csv.gz): using the demo's \
                     default features",
                    data.display()
                ));
                fs::write(dest, DEFAULT_FEATURES)
                    .with_context(|| format!("could not write {}", dest.display()))?;
            }
        }
    }
    // As `vmwatch record --probes` reads it (an empty list is an error).
    let features = read_feature_list(dest)?.features;
    note(format!(
        "{} features: {}",
        features.len(),
        features.join(" ")
    ));
    Ok(features)
}

/// `DIR/idle.csv.gz` (if it exists) and `DIR/stress-*.csv.gz`, sorted.
fn dataset_files(dir: &Path) -> Result<(Option<PathBuf>, Vec<PathBuf>)> {
    let baseline = Some(dir.join("idle.csv.gz")).filter(|p| p.is_file());
    let mut stress = Vec::new();
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries {
            let e = e.with_context(|| format!("could not list {}", dir.display()))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("stress-") && name.ends_with(".csv.gz") {
                stress.push(e.path());
            }
        }
    }
    stress.sort();
    Ok((baseline, stress))
}

/// Windows of each monitoring phase.
#[derive(Debug, Clone, Copy)]
struct Plan {
    normal: usize,
    attack: usize,
    after: usize,
}

impl Plan {
    fn total(&self) -> usize {
        self.normal + self.attack + self.after
    }

    /// The phase of the `k`-th monitored window (0-based).
    fn phase(&self, k: usize) -> Phase {
        if k < self.normal {
            Phase::Normal
        } else if k < self.normal + self.attack {
            Phase::Attack
        } else {
            Phase::After
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Normal,
    Attack,
    After,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Phase::Normal => "normal",
            Phase::Attack => "ATTACK",
            Phase::After => "after",
        }
    }
}

/// One verdict of the agent (a window event of the VM while it monitored)
/// and when it came.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    verdict: Verdict,
    /// Seconds from the attack's start to this verdict's arrival (None before).
    since_attack: Option<f64>,
}

impl Seen {
    /// Outside the normal region in this window alone (before smoothing).
    fn outlier(&self) -> bool {
        is_outlier(self.verdict.score)
    }
}

/// Counts of one phase: windows, flagged after smoothing, outliers before.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Counts {
    windows: usize,
    flagged: usize,
    outliers: usize,
}

impl Counts {
    fn of<'a>(vs: impl Iterator<Item = &'a Seen>) -> Counts {
        let mut c = Counts::default();
        for v in vs {
            c.windows += 1;
            c.flagged += usize::from(v.verdict.anomalous);
            c.outliers += usize::from(v.outlier());
        }
        c
    }

    /// `F/W WHAT (F/W %); before smoothing O/W (O/W %)`.
    fn flagged_of(&self, what: &str) -> String {
        let w = self.windows;
        format!(
            "{}/{w} {what} ({}); before smoothing {}/{w} ({})",
            self.flagged,
            Counts::rate(self.flagged, w),
            self.outliers,
            Counts::rate(self.outliers, w),
        )
    }

    fn rate(n: usize, of: usize) -> String {
        if of == 0 {
            "n/a".into()
        } else {
            format!("{:.1}%", 100.0 * n as f64 / of as f64)
        }
    }
}

/// What the demo measured.
#[derive(Debug, Clone, PartialEq)]
struct Summary {
    normal: Counts,
    attack: Counts,
    after: Counts,
    /// Index within the attack phase (0 = its first window) and seconds from
    /// the attack's start, of the first anomalous verdict at or after it.
    first_detection: Option<(usize, f64)>,
    /// Windows after the attack stopped until the verdicts stayed normal
    /// (None: still flagged at the end, or no windows after).
    recovered_after: Option<usize>,
}

impl Summary {
    fn of(vs: &[Seen], plan: Plan) -> Summary {
        let (normal, rest) = vs.split_at(plan.normal.min(vs.len()));
        let (attack, after) = rest.split_at(plan.attack.min(rest.len()));
        let first_detection = rest
            .iter()
            .position(|v| v.verdict.anomalous)
            .map(|i| (i, rest[i].since_attack.unwrap_or(0.0)));
        let recovered_after = match after.iter().rposition(|v| v.verdict.anomalous) {
            None if after.is_empty() => None,
            None => Some(0),
            Some(last) if last + 1 < after.len() => Some(last + 1),
            Some(_) => None,
        };
        Summary {
            normal: Counts::of(normal.iter()),
            attack: Counts::of(attack.iter()),
            after: Counts::of(after.iter()),
            first_detection,
            recovered_after,
        }
    }

    fn render(&self, c: &SummaryContext) -> String {
        let mut s = String::new();
        let monitored = self.normal.windows + self.attack.windows + self.after.windows;
        let _ = writeln!(s, "vmwatch demo: summary");
        let _ = writeln!(
            s,
            "  model:                {} windows of `web` learned by the agent, {} features; {}",
            c.train_windows, c.features, c.train_line
        );
        let _ = writeln!(
            s,
            "  windows monitored:    {monitored} ({} before the attack, {} during `{}`, {} after), \
             smoothing {}",
            self.normal.windows, self.attack.windows, c.attack, self.after.windows, c.smooth
        );
        let _ = writeln!(
            s,
            "  false positives:      {}",
            self.normal.flagged_of("windows before the attack")
        );
        let _ = writeln!(
            s,
            "  detection rate:       {}",
            self.attack.flagged_of("attack windows flagged")
        );
        let _ = match self.first_detection {
            Some((i, secs)) => writeln!(
                s,
                "  first detection:      {secs:.1}s after the attack started (its window {} of {})",
                i + 1,
                self.attack.windows
            ),
            None => writeln!(
                s,
                "  first detection:      none: the attack was not detected"
            ),
        };
        if self.after.windows > 0 {
            let back = match self.recovered_after {
                Some(0) => "normal from the first window after it".to_string(),
                Some(k) => format!(
                    "normal again after {k} window(s) ({})",
                    util::human_duration(WINDOW * k as u32)
                ),
                None => "still flagged at the end".to_string(),
            };
            let _ = writeln!(
                s,
                "  after the attack:     {back}; {}/{} windows flagged",
                self.after.flagged, self.after.windows
            );
        }
        for (i, line) in c.agent.iter().enumerate() {
            let head = if i == 0 { "agent:" } else { "" };
            let _ = writeln!(s, "  {head:<21} {line}");
        }
        let _ = writeln!(
            s,
            "  duration:             {} (VM ready after {})",
            util::human_duration(c.total),
            util::human_duration(c.ready_at)
        );
        s
    }
}

/// What the summary says besides the verdicts.
struct SummaryContext<'a> {
    attack: &'a str,
    features: usize,
    train_windows: u32,
    train_line: &'a str,
    smooth: Smoothing,
    /// The agent's own account.
    agent: &'a [String],
    ready_at: Duration,
    total: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(score: f64, anomalous: bool, since: Option<f64>) -> Seen {
        Seen {
            verdict: Verdict {
                start_unix_ms: 0,
                vm: "lab-web".into(),
                pid: 1,
                label: None,
                window: 0,
                score,
                anomalous,
                missing_features: None,
                estimated_features: None,
                probe_cost: None,
            },
            since_attack: since,
        }
    }

    fn window(window: u64, state: &str, verdict: Option<(f64, bool)>) -> WindowEvent {
        WindowEvent {
            start_unix_ms: 1_764_120_000_000 + 2000 * window,
            vm: "lab-web".into(),
            pid: 4242,
            window,
            state: state.into(),
            score: verdict.map(|v| v.0),
            anomalous: verdict.map(|v| v.1),
        }
    }

    #[test]
    fn parses_agent_events() {
        let lines = concat!(
            r#"{"event":"window","start_unix_ms":1764120000000,"vm":"lab-web","uuid":null,"pid":4242,"window":3,"state":"learning","score":null,"anomalous":null}"#,
            "\n",
            r#"{"event":"phase","start_unix_ms":1764120000000,"vm":"lab-web","uuid":null,"from":"learning","to":"training"}"#,
            "\n",
            r#"{"event":"window","start_unix_ms":1764120002000,"vm":"lab-web","uuid":null,"pid":4242,"window":4,"state":"monitoring","score":-0.5123,"anomalous":true}"#,
            "\n",
            r#"{"event":"verdict","start_unix_ms":1764120002000,"vm":"lab-web","uuid":null,"from":"normal","to":"anomalous","score":-0.5123}"#,
        );
        let mut tail = EventTail::new(Path::new("/nonexistent"));
        // Lines come in pieces; the last one is not complete yet.
        let (first, second) = lines.split_at(50);
        tail.push(first.as_bytes()).unwrap();
        assert!(tail.pending.is_empty());
        tail.push(second.as_bytes()).unwrap();
        assert_eq!(tail.pending.len(), 3);
        tail.push(b"\n").unwrap();
        let events: Vec<AgentEvent> = tail.pending.drain(..).collect();
        assert_eq!(
            events[0],
            AgentEvent::Window(WindowEvent {
                start_unix_ms: 1_764_120_000_000,
                vm: "lab-web".into(),
                pid: 4242,
                window: 3,
                state: "learning".into(),
                score: None,
                anomalous: None,
            })
        );
        let AgentEvent::Window(w) = &events[0] else {
            unreachable!()
        };
        assert_eq!(w.verdict(), None);
        assert_eq!(
            events[1],
            AgentEvent::Phase(Change {
                vm: "lab-web".into(),
                from: "learning".into(),
                to: "training".into(),
            })
        );
        let AgentEvent::Window(w) = &events[2] else {
            panic!("{:?}", events[2])
        };
        assert_eq!(
            w.verdict(),
            Some(Verdict {
                start_unix_ms: 1_764_120_002_000,
                vm: "lab-web".into(),
                pid: 4242,
                label: None,
                window: 4,
                score: -0.5123,
                anomalous: true,
                missing_features: None,
                estimated_features: None,
                probe_cost: None,
            })
        );
        assert!(matches!(&events[3], AgentEvent::Verdict(c) if c.to == "anomalous"));

        let e = AgentEvent::parse(r#"{"event":"window","vm":"x"}"#).unwrap_err();
        assert!(format!("{e:#}").contains("missing field"), "{e:#}");
        assert!(AgentEvent::parse(r#"{"event":"other","vm":"x"}"#).is_err());

        // Events of another VM process of the same name are refused.
        let mut r = Record::default();
        r.add(&events[0], "lab-web", 4242).unwrap();
        let e = r.add(&events[0], "lab-web", 1).unwrap_err();
        assert!(e.to_string().contains("another VM named `lab-web`"), "{e}");
        assert!(r.add(&events[1], "lab-idle", 4242).is_err());
    }

    #[test]
    fn agent_config() {
        let files = AgentFiles {
            config: "/d/agent.toml".into(),
            state: "/d/state".into(),
            events: "/d/events.jsonl".into(),
            log: "/d/agent.log".into(),
            status: "/d/status.txt".into(),
            metrics: "/d/metrics.txt".into(),
        };
        let c = AgentConfig {
            features: Path::new("/d/features.txt"),
            learn_windows: 120,
            smooth: Smoothing { k: 2, n: 3 },
            vm: "lab-web",
            metrics: "127.0.0.1:40001".parse().unwrap(),
        };
        let text = c.toml(&files).unwrap();
        for line in [
            r#"state_dir = "/d/state""#,
            r#"events = "/d/events.jsonl""#,
            r#"metrics = "127.0.0.1:40001""#,
            r#"interval = "2s""#,
            r#"features = "/d/features.txt""#,
            "learn_windows = 120",
            r#"smoothing = "2/3""#,
            r#"include = ["lab-web"]"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        assert_eq!(glob_literal("lab-web"), "lab-web");
        assert_eq!(glob_literal("a*b?[c]"), "a[*]b[?][[]c[]]");
    }

    const METRICS: &str = r#"# HELP vmwatch_vm_anomalous 1 when the VM's smoothed verdict is anomalous.
# TYPE vmwatch_vm_anomalous gauge
vmwatch_vm_anomalous{vm="lab-web"} 0
vmwatch_vm_info{pid="4242",uuid="",vm="lab-web"} 1
vmwatch_vm_probe_cost_ratio{vm="lab-web"} 0.0012345
vmwatch_vm_probe_hits_total{vm="lab-web"} 123456
vmwatch_vm_score{vm="lab-web"} 0.25
vmwatch_vm_state{state="learning",vm="lab-web"} 0
vmwatch_vm_state{state="monitoring",vm="lab-web"} 1
vmwatch_vm_state{state="training",vm="lab-web"} 0
vmwatch_vm_windows_total{verdict="anomalous",vm="lab-web"} 2
vmwatch_vm_windows_total{verdict="learning",vm="lab-web"} 3
vmwatch_vm_windows_total{verdict="normal",vm="lab-web"} 2
vmwatch_drain_seconds_bucket{le="+Inf"} 7
vmwatch_drain_seconds_sum 0.0014
vmwatch_odd{vm="a \"b\", c\\d"} 1
"#;

    #[test]
    fn parses_metrics() {
        let s = parse_metrics(METRICS).unwrap();
        assert_eq!(s.len(), 14);
        assert_eq!(s[0].name, "vmwatch_vm_anomalous");
        assert_eq!(s[0].labels, [("vm".to_string(), "lab-web".to_string())]);
        assert_eq!(s[0].value, 0.0);
        assert_eq!(s[1].label("pid"), Some("4242"));
        assert_eq!(s[1].label("uuid"), Some(""));
        assert_eq!(s[2].value, 0.0012345);
        assert_eq!(s[11].label("le"), Some("+Inf"));
        assert_eq!(s[12].labels, []);
        assert_eq!(s[13].label("vm"), Some(r#"a "b", c\d"#));
        let lines = vm_lines(&s, "lab-web");
        assert_eq!(lines.len(), 11);
        assert_eq!(
            lines[0],
            r#"vmwatch_vm_info{pid="4242",uuid="",vm="lab-web"} 1"#
        );
        for bad in ["x{a=\"b} 1", "x{a=b} 1", "x", "x 1x"] {
            assert!(parse_metrics(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn agreement_of_events_status_and_metrics() {
        let mut record = Record::default();
        for w in [
            window(0, "learning", None),
            window(1, "learning", None),
            window(2, "training", None),
            window(3, "monitoring", Some((-0.5, true))),
            window(4, "monitoring", Some((-0.2, true))),
            window(5, "monitoring", Some((0.1, false))),
            window(6, "monitoring", Some((0.25, false))),
        ] {
            record.windows.push(w);
        }
        let change = |from: &str, to: &str| Change {
            vm: "lab-web".into(),
            from: from.into(),
            to: to.into(),
        };
        record.phases = vec![
            change("learning", "training"),
            change("training", "monitoring"),
        ];
        record.verdicts = vec![change("normal", "anomalous"), change("anomalous", "normal")];
        let status = VmStatus {
            vm: "lab-web".into(),
            uuid: None,
            pid: Some(4242),
            state: "monitoring".into(),
            windows_learned: 2,
            score: Some(0.25),
            anomalous: Some(false),
            probe_cost_ratio: Some(0.0012345),
        };
        let told = |status: VmStatus, metrics: &str| Told {
            table: String::new(),
            status: vec![status],
            metrics_text: metrics.into(),
            samples: parse_metrics(metrics).unwrap(),
            last_window: 6,
        };
        let a = agreement(&record, &told(status.clone(), METRICS), "lab-web", 4242, 2);
        assert_eq!(a.problems, Vec::<String>::new());
        assert_eq!(
            a.tally,
            "7 windows (3 learning, 2 normal, 2 anomalous), 2 verdict change(s)"
        );
        assert_eq!(a.probe_cost, Some(0.0012345));

        // One more anomalous window in the metrics, another score in ctl
        // status, a verdict event missing.
        let metrics = METRICS.replace(
            r#"verdict="anomalous",vm="lab-web"} 2"#,
            r#"verdict="anomalous",vm="lab-web"} 3"#,
        );
        let mut status = status;
        status.score = Some(0.3);
        record.verdicts.pop();
        let a = agreement(&record, &told(status, &metrics), "lab-web", 4242, 2);
        assert_eq!(a.problems.len(), 3, "{:#?}", a.problems);
        assert!(
            a.problems[0].contains("1 verdict events"),
            "{:?}",
            a.problems
        );
        assert!(
            a.problems[1].contains("`ctl status`: score Some(0.3)"),
            "{:?}",
            a.problems
        );
        assert!(
            a.problems[2]
                .contains(r#"windows_total{verdict="anomalous"} is 3, the events count 2"#),
            "{:?}",
            a.problems
        );
    }

    #[test]
    fn model_line() {
        use vmwatch_core::model::{OneClassSvm, Scaler, TrainingSummary};
        let m = Model {
            format: "vmwatch-model".into(),
            version: 1,
            features: vec!["qemu:a".into()],
            scaler: Scaler {
                transform: "ln1p".into(),
                mean: vec![0.0],
                scale: vec![1.0],
            },
            svm: OneClassSvm {
                kernel: "rbf".into(),
                nu: 0.01,
                gamma: 0.5,
                rho: 0.1,
                coef: vec![1.0, 2.0],
                support_vectors: vec![vec![0.0], vec![1.0]],
            },
            training: TrainingSummary {
                windows: 120,
                files: Vec::new(),
                cv_false_positive_rate: Some(0.0125),
                folds: 5,
                grid: "paper".into(),
                qemu_builds: Vec::new(),
                estimated: Vec::new(),
                tracked: Vec::new(),
            },
            smoothing: Smoothing { k: 2, n: 3 },
        };
        assert_eq!(
            train_line(&m),
            "nu = 0.01, gamma = 0.5: 1.25% false positives in 5-fold cross-validation, 2 \
             support vectors"
        );
    }

    #[test]
    fn phases() {
        let p = Plan {
            normal: 2,
            attack: 3,
            after: 1,
        };
        assert_eq!(p.total(), 6);
        let got: Vec<Phase> = (0..6).map(|k| p.phase(k)).collect();
        use Phase::*;
        assert_eq!(got, [Normal, Normal, Attack, Attack, Attack, After]);
    }

    #[test]
    fn summary_counts() {
        let plan = Plan {
            normal: 3,
            attack: 4,
            after: 3,
        };
        let vs = [
            v(0.2, false, None),
            v(-0.1, false, None),
            v(0.3, false, None),
            v(-1.0, false, Some(2.0)),
            v(-2.0, true, Some(4.1)),
            v(-2.0, true, Some(6.0)),
            v(0.1, true, Some(8.0)),
            v(0.2, true, Some(10.0)),
            v(0.3, false, Some(12.0)),
            v(0.3, false, Some(14.0)),
        ];
        let s = Summary::of(&vs, plan);
        assert_eq!(
            s.normal,
            Counts {
                windows: 3,
                flagged: 0,
                outliers: 1
            }
        );
        assert_eq!(
            s.attack,
            Counts {
                windows: 4,
                flagged: 3,
                outliers: 3
            }
        );
        assert_eq!(s.after.flagged, 1);
        assert_eq!(s.first_detection, Some((1, 4.1)));
        assert_eq!(s.recovered_after, Some(1));
        let text = s.render(&SummaryContext {
            attack: "synflood-target",
            features: 5,
            train_windows: 90,
            train_line: "nu = 0.01",
            smooth: Smoothing { k: 2, n: 3 },
            agent: &["`vmwatch agent` learned 90 windows".into()],
            ready_at: Duration::from_secs(20),
            total: Duration::from_secs(400),
        });
        assert!(
            text.contains("0/3 windows before the attack (0.0%)"),
            "{text}"
        );
        assert!(
            text.contains("3/4 attack windows flagged (75.0%)"),
            "{text}"
        );
        assert!(text.contains("4.1s after the attack started"), "{text}");
        assert!(
            text.contains("  agent:                `vmwatch agent` learned 90 windows\n"),
            "{text}"
        );

        // Never detected, still flagged at the end.
        let vs = [
            v(0.1, false, None),
            v(0.1, false, Some(1.0)),
            v(-1.0, true, Some(3.0)),
        ];
        let s = Summary::of(
            &vs,
            Plan {
                normal: 1,
                attack: 1,
                after: 1,
            },
        );
        assert_eq!(s.first_detection, Some((1, 3.0)));
        assert_eq!(s.attack.flagged, 0);
        assert_eq!(s.recovered_after, None);
    }

    #[test]
    fn smoothing_and_features() {
        use clap::Parser;
        #[derive(Parser)]
        struct Demo {
            #[command(flatten)]
            args: Args,
        }
        let smooth = |s: &str| Demo::try_parse_from(["demo", "--smooth", s]).map(|d| d.args.smooth);
        assert_eq!(smooth("2/3").unwrap(), Smoothing { k: 2, n: 3 });
        for bad in ["4/3", "0/3", "x"] {
            assert!(smooth(bad).is_err(), "{bad}");
        }
        let f = vmwatch_core::features::parse_feature_list("DEFAULT_FEATURES", DEFAULT_FEATURES)
            .unwrap()
            .features;
        assert!(f.len() >= 4 && f.iter().all(|n| n.contains(':')), "{f:?}");
        assert!(!f.iter().any(|n| n.starts_with("qemu:exec_tb")), "{f:?}");
    }
}
