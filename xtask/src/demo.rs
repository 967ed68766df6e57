//! `cargo xtask demo`: the README's main job. vmwatch end to end on one lab
//! VM:
//!
//! 1. builds what is missing (system packages, the instrumented QEMU, the lab
//!    guest, vmwatch) and picks the features: `vmwatch select --budget 0.5`
//!    on the lab's committed dataset (`data/idle.csv.gz` against
//!    `data/stress-*.csv.gz`: LDA, keeping the probes' cost within 0.5% of a
//!    CPU), or [`DEFAULT_FEATURES`] without one, or `--features FILE`;
//! 2. boots one lab VM (TCG) in the lab's network namespace with the normal
//!    `web` client load, and records `--train-windows` windows of it with
//!    only those features attached (`vmwatch record --probes`);
//! 3. trains a model on them (`vmwatch train`, the paper's grid search);
//! 4. starts `vmwatch monitor --json` on the VM, launches the attack (the
//!    host-side tool of a `-target` scenario, inside the namespace, on top of
//!    the web load) after `--normal-windows` windows, stops it after
//!    `--attack-windows`, and watches `--after-windows` more;
//! 5. tears everything down and prints a summary: windows monitored, false
//!    positives before the attack, detection rate during it, time to the
//!    first detection, recovery after it.
//!
//! The features, training windows, model, raw verdicts (JSON lines) and the
//! summary are kept in `--out-dir` (default `target/demo/`).

use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader, IsTerminal};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use vmwatch_core::dataset::Table;
use vmwatch_core::features::read_feature_list;
use vmwatch_core::model::Smoothing;
use vmwatch_core::verdict::{is_outlier, Verdict};

use crate::deps;
use crate::lab::record::{self, Session, SessionOpts};
use crate::lab::scenario::{self, Group};
use crate::lab::vm::{self, Accel};
use crate::util::{self, note};

/// The window length (vmwatch's default `--interval`).
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
    /// Windows (2 s each) of normal web load recorded to train the model.
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
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 512)]
    memory: u32,
    /// Where the features, training windows, model, verdicts and summary go.
    /// Default: target/demo/ of the repository.
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
        "plan: boot a lab VM with the `web` client load; record {} windows ({}) of it; train; \
         monitor {} windows ({}): {} normal, {} under `{}`, {} after; about {} in all once \
         everything is built",
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

    // 2. The VM, its web load, and the training windows.
    let mut session = Session::start(&SessionOpts {
        scenario: web,
        vms: 1,
        seed: a.seed,
        accel: a.accel,
        memory_mib: a.memory,
        boot_timeout: Duration::from_secs(180),
        // Load for everything that follows, with room for slow steps; the
        // session stops it sooner.
        duration: record::WARM_UP + train_time + monitor_time + Duration::from_secs(900),
        kernel_args: Vec::new(),
        network: true,
    })?;
    let pid = session.pids()[0];
    let ready_at = started.elapsed();
    note(format!("warming up for {}s", record::WARM_UP.as_secs()));
    session.hold(record::WARM_UP)?;

    let train_csv = out.join("train.csv.gz");
    note(format!(
        "recording {} windows of normal web load ({}) with the {} features",
        a.train_windows,
        util::human_duration(train_time),
        features.len()
    ));
    let mut cmd = record::vmwatch_command(&vmwatch);
    cmd.args(["record", "--pid", &pid.to_string(), "--probes"])
        .arg(&features_file)
        .args([
            "--label",
            web.name,
            "--windows",
            &a.train_windows.to_string(),
        ])
        .arg("-o")
        .arg(&train_csv)
        .arg("--force")
        .stdin(Stdio::null())
        .stdout(std::io::stderr());
    note(format!("$ {}", util::display(&cmd)));
    let mut child = cmd.spawn().context("could not start vmwatch record")?;
    let status = record::wait_vmwatch(
        &mut session,
        &mut child,
        train_time + Duration::from_secs(60),
    )
    .context("recording the training windows failed")?;
    if !status.success() {
        bail!("vmwatch record failed ({status})");
    }
    let rows = Table::read(&train_csv)?.len();
    if rows != a.train_windows as usize {
        bail!(
            "{} has {rows} rows, expected {}",
            train_csv.display(),
            a.train_windows
        );
    }

    // 3. Train (the VM and its load keep running).
    let model = out.join("model.json");
    let mut cmd = Command::new(&vmwatch);
    cmd.arg("train")
        .arg(&train_csv)
        .arg("--features")
        .arg(&features_file)
        .args(["--smooth", &a.smooth.to_string(), "-o"])
        .arg(&model)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    note(format!("$ {}", util::display(&cmd)));
    let t = Instant::now();
    let trained = cmd.output().context("could not start vmwatch train")?;
    vm::check_interrupted()?;
    if !trained.status.success() {
        bail!("vmwatch train failed ({})", trained.status);
    }
    let train_line = String::from_utf8_lossy(&trained.stdout).trim().to_string();
    println!("{train_line}");
    // "nu = …, gamma = …: …% false positives in 5-fold cross-validation, …
    // support vectors; model written to …": the summary keeps the first part.
    let train_line = train_line
        .split("; model written")
        .next()
        .unwrap_or_default()
        .to_string();
    note(format!("trained in {}", util::human_duration(t.elapsed())));
    session.check()?;

    // 4. Monitor; the attack comes and goes.
    let verdicts_file = out.join("verdicts.jsonl");
    let verdicts = monitor(
        &mut session,
        &vmwatch,
        &model,
        pid,
        a.smooth,
        attack,
        plan,
        &verdicts_file,
    )?;

    // 5. Tear down, sum up.
    session.finish()?;
    let s = Summary::of(&verdicts, plan);
    let text = s.render(&SummaryContext {
        attack: attack.name,
        features: features.len(),
        train_windows: a.train_windows,
        train_line: &train_line,
        smooth: a.smooth,
        ready_at,
        total: started.elapsed(),
    });
    println!("\n{text}");
    let summary_file = out.join("summary.txt");
    fs::write(&summary_file, &text)
        .with_context(|| format!("could not write {}", summary_file.display()))?;
    note(format!(
        "features, training windows, model, verdicts and this summary are in {}",
        out.display()
    ));
    Ok(())
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
    let features = read_feature_list(dest)?;
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

/// One verdict of `vmwatch monitor --json` and when it came.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    verdict: Verdict,
    /// Seconds from the attack's start to this verdict's arrival (None before).
    since_attack: Option<f64>,
}

impl Seen {
    /// Parses one JSON line of `vmwatch monitor --json`.
    fn parse(line: &str) -> Result<Seen> {
        let verdict = serde_json::from_str(line)
            .with_context(|| format!("the monitor's line {line:?} is not a verdict"))?;
        Ok(Seen {
            verdict,
            since_attack: None,
        })
    }

    /// Outside the normal region in this window alone (before smoothing).
    fn outlier(&self) -> bool {
        is_outlier(self.verdict.score)
    }
}

/// Kills a `vmwatch monitor` on every way out (SIGINT: it detaches cleanly).
struct MonitorProc(Child);

impl Drop for MonitorProc {
    fn drop(&mut self) {
        record::stop_vmwatch(&mut self.0);
    }
}

/// Runs `vmwatch monitor` for the plan's windows, launching and stopping the
/// attack in between; prints a line per window; returns the verdicts.
#[allow(clippy::too_many_arguments)]
fn monitor(
    session: &mut Session,
    vmwatch: &Path,
    model: &Path,
    pid: u32,
    smooth: Smoothing,
    attack: &'static scenario::Scenario,
    plan: Plan,
    verdicts_file: &Path,
) -> Result<Vec<Seen>> {
    let mut cmd = record::vmwatch_command(vmwatch);
    cmd.arg("monitor")
        .arg("--model")
        .arg(model)
        .args(["--pid", &pid.to_string(), "--json", "--smooth"])
        .arg(smooth.to_string())
        .args(["--windows", &plan.total().to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    note(format!("$ {}", util::display(&cmd)));
    let mut child = MonitorProc(cmd.spawn().context("could not start vmwatch monitor")?);
    let stdout = child
        .0
        .stdout
        .take()
        .context("no stdout of vmwatch monitor")?;
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("demo-monitor".into())
        .spawn(move || {
            for line in BufReader::new(stdout).lines() {
                if tx.send(line).is_err() {
                    break;
                }
            }
        })
        .context("could not start the monitor reader")?;
    let mut raw = String::new();
    let color = std::io::stdout().is_terminal();
    let attack_time = WINDOW * plan.attack as u32 + Duration::from_secs(60);
    let limit = WINDOW * plan.total() as u32 + Duration::from_secs(60);
    let deadline = Instant::now() + limit;
    let mut attack_started: Option<Instant> = None;
    let mut attack_running = false;
    let mut first_detection = true;
    let mut verdicts: Vec<Seen> = Vec::new();
    println!("\n{:>6}  {:<6}  {:>9}  VERDICT", "WINDOW", "PHASE", "SCORE");
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                let line = line.context("could not read vmwatch monitor's output")?;
                if line.trim().is_empty() {
                    continue;
                }
                raw.push_str(&line);
                raw.push('\n');
                let mut v = Seen::parse(&line)?;
                v.since_attack = attack_started.map(|t| t.elapsed().as_secs_f64());
                let k = verdicts.len();
                let phase = plan.phase(k);
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
                let verdict = match (anomalous, color) {
                    (true, true) => "\x1b[1;31mANOMALOUS\x1b[0m",
                    (true, false) => "ANOMALOUS",
                    (false, _) => "normal   ",
                };
                let row = format!(
                    "{:>6}  {:<6}  {:>9.4}  {verdict}  {remark}",
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
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        vm::check_interrupted()?;
        session.check()?;
        if Instant::now() > deadline {
            bail!(
                "vmwatch monitor did not finish its {} windows within {}s",
                plan.total(),
                limit.as_secs()
            );
        }
    }
    if attack_running {
        session.stop_host_tools();
    }
    fs::write(verdicts_file, &raw)
        .with_context(|| format!("could not write {}", verdicts_file.display()))?;
    let status = child
        .0
        .wait()
        .context("could not wait for vmwatch monitor")?;
    vm::check_interrupted()?;
    if !status.success() {
        bail!("vmwatch monitor failed ({status})");
    }
    if verdicts.len() != plan.total() {
        bail!(
            "vmwatch monitor gave {} verdicts, expected {}",
            verdicts.len(),
            plan.total()
        );
    }
    Ok(verdicts)
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
            "  model:                {} windows of `web`, {} features; {}",
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
            },
            since_attack: since,
        }
    }

    #[test]
    fn parses_monitor_json() {
        let line = r#"{"start_unix_ms":1764120000000,"vm":"lab-web","pid":4242,"window":17,"score":-0.5123,"anomalous":true}"#;
        let seen = Seen::parse(line).unwrap();
        assert_eq!(seen.since_attack, None);
        assert_eq!(
            seen.verdict,
            Verdict {
                start_unix_ms: 1_764_120_000_000,
                vm: "lab-web".into(),
                pid: 4242,
                label: None,
                window: 17,
                score: -0.5123,
                anomalous: true,
            }
        );
        assert!(seen.outlier());
        let e = Seen::parse(r#"{"window":1,"score":0.1}"#).unwrap_err();
        assert!(format!("{e:#}").contains("missing field"), "{e:#}");
        assert!(Seen::parse(r#"{"window":x,"score":0.1,"anomalous":false}"#).is_err());
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
            .unwrap();
        assert!(f.len() >= 4 && f.iter().all(|n| n.contains(':')), "{f:?}");
        assert!(!f.iter().any(|n| n.starts_with("qemu:exec_tb")), "{f:?}");
    }
}
