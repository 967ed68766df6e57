//! The monitoring configurations compared by the bench, each started and
//! stopped the same way (RAII: a dropped monitor stops its processes or
//! destroys its tracing session).

use std::collections::VecDeque;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use vmwatch_core::dataset::Table;
use vmwatch_core::features;

use super::lttng::{Events, Sessiond, TraceOpts, Tracing};
use crate::lab::record::{stop_vmwatch, vmwatch_command};
use crate::util::{self, note};

/// One way of watching the VMs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Config {
    None,
    VmwatchAll,
    VmwatchAllGoverned,
    VmwatchNoTcg,
    VmwatchSelected,
    VmwatchLda,
    VmwatchSyscalls,
    Strace,
    LttngAll,
    LttngNoTcg,
    LttngSelected,
}

impl Config {
    /// Every configuration, in the order of the tables.
    pub const ALL: [Config; 11] = [
        Config::None,
        Config::VmwatchAll,
        Config::VmwatchAllGoverned,
        Config::VmwatchNoTcg,
        Config::VmwatchSelected,
        Config::VmwatchLda,
        Config::VmwatchSyscalls,
        Config::Strace,
        Config::LttngAll,
        Config::LttngNoTcg,
        Config::LttngSelected,
    ];

    /// Short name (CSV, file names).
    pub fn id(self) -> &'static str {
        match self {
            Config::None => "none",
            Config::VmwatchAll => "vmwatch-all",
            Config::VmwatchAllGoverned => "vmwatch-all-budget-1",
            Config::VmwatchNoTcg => "vmwatch-all-no-tcg",
            Config::VmwatchSelected => "vmwatch-selected",
            Config::VmwatchLda => "vmwatch-lda",
            Config::VmwatchSyscalls => "vmwatch-syscalls",
            Config::Strace => "strace",
            Config::LttngAll => "lttng-all",
            Config::LttngNoTcg => "lttng-all-no-tcg",
            Config::LttngSelected => "lttng-selected",
        }
    }

    /// Its place in [`Config::ALL`].
    pub fn index(self) -> usize {
        Config::ALL.iter().position(|c| *c == self).unwrap_or(0)
    }

    pub fn from_id(s: &str) -> Option<Config> {
        Config::ALL.into_iter().find(|c| c.id() == s)
    }

    /// What it is, for the tables.
    pub fn label(self) -> &'static str {
        match self {
            Config::None => "unmonitored",
            Config::VmwatchAll => "vmwatch, all QEMU probes",
            Config::VmwatchAllGoverned => "vmwatch, all QEMU probes, `--budget 1` (the default)",
            Config::VmwatchNoTcg => "vmwatch, all but TCG-only probes",
            Config::VmwatchSelected => "vmwatch, selected probes",
            Config::VmwatchLda => "vmwatch, LDA selection without a cost budget",
            Config::VmwatchSyscalls => "vmwatch, syscalls (BPF)",
            Config::Strace => "strace -c -f (vmwatch --source strace)",
            Config::LttngAll => "LTTng-UST, all QEMU events",
            Config::LttngNoTcg => "LTTng-UST, all but TCG-only events",
            Config::LttngSelected => "LTTng-UST, selected events",
        }
    }

    fn is_lttng(self) -> bool {
        matches!(
            self,
            Config::LttngAll | Config::LttngNoTcg | Config::LttngSelected
        )
    }
}

/// What every monitor needs: binaries, probe lists, a tmpfs directory.
pub struct Setup {
    pub vmwatch: PathBuf,
    pub qemu: PathBuf,
    /// Scratch directory on a tmpfs (outputs, traces).
    pub tmp: PathBuf,
    /// Every `qemu:` probe of the QEMU binary.
    pub all: Vec<String>,
    /// The selected probes (`qemu:NAME`): LDA within a cost budget.
    pub selected: Vec<String>,
    /// LDA's selection without the budget (what the paper's method picks).
    pub lda: Vec<String>,
    /// TCG-only probes present in the binary (`qemu:NAME`).
    pub tcg: Vec<String>,
    pub interval: Duration,
    pub sessiond: Option<Sessiond>,
}

impl Setup {
    fn probe_file(&self, name: &str, probes: &[String]) -> Result<PathBuf> {
        let path = self.tmp.join(name);
        let mut text = probes.join("\n");
        text.push('\n');
        fs::write(&path, text).with_context(|| format!("could not write {}", path.display()))?;
        Ok(path)
    }

    fn no_tcg(&self) -> Vec<String> {
        self.all
            .iter()
            .filter(|p| !self.tcg.contains(p))
            .cloned()
            .collect()
    }

    /// Whether `c` is worth running here: LDA's unbudgeted selection only
    /// when it is not empty and differs from the budgeted one.
    pub fn applies(&self, c: Config) -> bool {
        c != Config::VmwatchLda || {
            let mut a = self.lda.clone();
            let mut b = self.selected.clone();
            a.sort();
            b.sort();
            !a.is_empty() && a != b
        }
    }
}

/// A running monitor.
pub enum Running<'a> {
    Idle,
    Vmwatch(VmwatchRun),
    Lttng(Tracing<'a>, u32),
}

/// What a monitor did, once stopped.
#[derive(Debug, Default, Clone)]
pub struct Stopped {
    /// Windows (or chunks) closed.
    pub windows: u64,
    /// Windows counted (LTTng: chunks babeltrace2 got through; else = windows).
    pub counted: u64,
    /// Mean QEMU probe hits (or LTTng events) per window and VM.
    pub hits_per_vm_window: f64,
    /// LTTng: events the tracer discarded.
    pub discarded: u64,
    /// LTTng: babeltrace2 + parsing CPU per counted chunk, ns.
    pub count_ns_per_chunk: f64,
}

impl<'a> Running<'a> {
    /// Starts `config` on the processes `pids`; returns once it counts.
    pub fn start(setup: &'a Setup, config: Config, pids: &[u32], tag: &str) -> Result<Running<'a>> {
        if config == Config::None {
            return Ok(Running::Idle);
        }
        if config.is_lttng() {
            let d = setup
                .sessiond
                .as_ref()
                .context("LTTng configurations need the session daemon")?;
            let events = match config {
                Config::LttngAll => Events::All { exclude: vec![] },
                Config::LttngNoTcg => Events::All {
                    exclude: setup.tcg.clone(),
                },
                _ => Events::List(setup.selected.clone()),
            };
            let out = setup.tmp.join(format!("trace-{tag}"));
            let _ = fs::remove_dir_all(&out);
            let t = Tracing::start(
                d,
                TraceOpts {
                    name: &format!("vmwatch-bench-{tag}"),
                    out,
                    events,
                    pids,
                    rotate: Some(setup.interval),
                    subbuf: "4M",
                    num_subbuf: 8,
                },
            )?;
            return Ok(Running::Lttng(t, pids.len() as u32));
        }
        let mut args: Vec<String> = vec!["record".into()];
        for p in pids {
            args.extend(["--pid".into(), p.to_string()]);
        }
        let source = match config {
            Config::VmwatchSyscalls => "syscalls",
            Config::Strace => "strace",
            _ => "qemu",
        };
        args.extend(["--source".into(), source.into()]);
        // Exact counting: what each configuration costs without the
        // governor; and all probes under the default budget.
        let budget = match config {
            Config::VmwatchAllGoverned => "1",
            _ => "none",
        };
        args.extend(["--budget".into(), budget.into()]);
        match config {
            Config::VmwatchNoTcg => {
                let f = setup.probe_file("probes-no-tcg.txt", &setup.no_tcg())?;
                args.extend(["--probes".into(), f.display().to_string()]);
            }
            Config::VmwatchSelected => {
                let f = setup.probe_file("probes-selected.txt", &setup.selected)?;
                args.extend(["--probes".into(), f.display().to_string()]);
            }
            Config::VmwatchLda => {
                let f = setup.probe_file("probes-lda.txt", &setup.lda)?;
                args.extend(["--probes".into(), f.display().to_string()]);
            }
            _ => {}
        }
        let out = setup.tmp.join(format!("rows-{tag}.csv"));
        let _ = fs::remove_file(&out);
        args.extend([
            "--interval".into(),
            format!("{}ms", setup.interval.as_millis()),
            "--label".into(),
            config.id().into(),
            "-o".into(),
            out.display().to_string(),
        ]);
        Ok(Running::Vmwatch(VmwatchRun::start(
            setup,
            &args,
            out,
            pids.len(),
        )?))
    }

    /// Processes whose CPU time (with their descendants) is the
    /// collector's; LTTng's babeltrace2 runs are added per chunk.
    pub fn pids(&self) -> Vec<u32> {
        match self {
            Running::Idle => vec![],
            Running::Vmwatch(v) => vec![v.child.id()],
            Running::Lttng(t, _) => vec![t.daemon().pid()],
        }
    }

    /// Windows closed so far.
    pub fn windows(&self) -> u64 {
        match self {
            Running::Idle => 0,
            Running::Vmwatch(v) => v.rows() / v.vms.max(1) as u64,
            Running::Lttng(t, _) => t.chunks_closed(),
        }
    }

    /// Waits until `n` more windows closed (at most `limit`).
    pub fn wait_windows(&mut self, n: u64, limit: Duration) -> Result<()> {
        let target = self.windows() + n;
        let until = Instant::now() + limit;
        while self.windows() < target {
            if let Running::Vmwatch(v) = self {
                v.check()?;
            }
            crate::lab::vm::check_interrupted()?;
            if Instant::now() > until {
                bail!("the monitor closed no window for {}s", limit.as_secs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// LTTng: waits (at most `limit`) until babeltrace2 counted a chunk, so
    /// that its cost per chunk is known even when it lags behind.
    pub fn wait_counted(&self, limit: Duration) -> Result<bool> {
        let Running::Lttng(t, _) = self else {
            return Ok(true);
        };
        let until = Instant::now() + limit;
        while t.counted().chunks == 0 {
            crate::lab::vm::check_interrupted()?;
            if Instant::now() > until {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(true)
    }

    /// Stops it.
    pub fn stop(self) -> Result<Stopped> {
        match self {
            Running::Idle => Ok(Stopped::default()),
            Running::Vmwatch(mut v) => {
                v.check()?;
                let (windows, hits) = v.rows_and_hits();
                stop_vmwatch(&mut v.child);
                let vm_rows = windows.max(1) as f64;
                Ok(Stopped {
                    windows: windows / v.vms.max(1) as u64,
                    counted: windows / v.vms.max(1) as u64,
                    hits_per_vm_window: hits / vm_rows,
                    ..Stopped::default()
                })
            }
            Running::Lttng(t, vms) => {
                let closed = t.chunks_closed();
                let c = t.finish()?;
                let events: u64 = c.events.iter().sum();
                Ok(Stopped {
                    windows: closed,
                    counted: c.chunks,
                    hits_per_vm_window: events as f64
                        / (c.chunks.max(1) * vms.max(1) as u64) as f64,
                    discarded: c.discarded,
                    count_ns_per_chunk: c.count_ns as f64 / c.chunks.max(1) as f64,
                })
            }
        }
    }
}

/// A `vmwatch record` child writing a CSV.
pub struct VmwatchRun {
    child: Child,
    out: PathBuf,
    vms: usize,
    failed: Arc<AtomicBool>,
    log: Arc<Mutex<VecDeque<String>>>,
}

impl VmwatchRun {
    fn start(setup: &Setup, args: &[String], out: PathBuf, vms: usize) -> Result<VmwatchRun> {
        let mut cmd = vmwatch_command(&setup.vmwatch);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let shown = util::display(&cmd);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("could not start `{shown}`"))?;
        let ready = Arc::new(AtomicBool::new(false));
        let failed = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(VecDeque::new()));
        let stderr = child.stderr.take().context("no stderr pipe")?;
        {
            let (ready, log) = (Arc::clone(&ready), Arc::clone(&log));
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
                    if line.contains("attached in") {
                        ready.store(true, Ordering::SeqCst);
                    }
                    let mut l = log.lock().unwrap_or_else(|e| e.into_inner());
                    if l.len() == 20 {
                        l.pop_front();
                    }
                    l.push_back(line);
                }
            });
        }
        let mut run = VmwatchRun {
            child,
            out,
            vms,
            failed,
            log,
        };
        let until = Instant::now() + Duration::from_secs(30);
        while !ready.load(Ordering::SeqCst) {
            run.check()?;
            if Instant::now() > until {
                bail!("`{shown}` did not attach within 30 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(run)
    }

    /// Fails if vmwatch exited, with its last log lines.
    fn check(&mut self) -> Result<()> {
        if let Some(st) = self
            .child
            .try_wait()
            .context("could not check on vmwatch")?
        {
            self.failed.store(true, Ordering::SeqCst);
            let l = self.log.lock().unwrap_or_else(|e| e.into_inner());
            bail!(
                "vmwatch exited ({st}): {}",
                l.iter().cloned().collect::<Vec<_>>().join("\n")
            );
        }
        Ok(())
    }

    /// Rows written so far. Polled every 50 ms while the bench measures,
    /// so it counts lines (vmwatch ends every row with one; the bench's VM
    /// names need no quotes) instead of parsing the whole file.
    fn rows(&self) -> u64 {
        fs::read(&self.out)
            .map(|b| b.iter().filter(|&&c| c == b'\n').count().saturating_sub(1) as u64)
            .unwrap_or(0)
    }

    /// (rows, sum of the `qemu:*` and `sys:*` columns over all rows).
    fn rows_and_hits(&self) -> (u64, f64) {
        let Ok(table) = Table::read(&self.out) else {
            return (0, 0.0);
        };
        let hits = table
            .features
            .iter()
            .enumerate()
            .filter(|(_, f)| f.starts_with(features::QEMU) || f.starts_with(features::SYS))
            .map(|(j, _)| table.x.column(j).sum())
            .sum();
        (table.len() as u64, hits)
    }
}

impl Drop for VmwatchRun {
    fn drop(&mut self) {
        stop_vmwatch(&mut self.child);
        let _ = fs::remove_file(&self.out);
        if self.failed.load(Ordering::SeqCst) {
            note("vmwatch failed; see above");
        }
    }
}
