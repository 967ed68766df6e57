//! Fig. 5: what collecting costs the host as VMs are added. N small TCG
//! guests run a light steady load (scenario `bench-steady`); each
//! configuration runs for a few windows and we read, from /proc, the CPU
//! time of the collector's processes (vmwatch; vmwatch + its strace runs;
//! lttng-sessiond + lttng-consumerd + babeltrace2 and the parsing of its
//! output) and of the QEMU processes. Then the collector alone for 1, 8 and
//! 64 idle fixture processes (tests/fixture) and paused QEMU processes (all
//! 3,081 probes), which shows its per-VM cost past what this machine can boot.

use std::io::{BufRead, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::cpu;
use super::monitor::{Config, Running, Setup};
use super::{Run as Opts, STEADY};
use crate::lab::record::{Session, SessionOpts};
use crate::lab::vm::{self, Accel};
use crate::qemu;
use crate::util::{self, note};

/// Configurations of the VM runs (the paper's Fig. 5: vmwatch in place of
/// its LTTng, LTTng itself, and strace).
pub const CONFIGS: [Config; 6] = [
    Config::None,
    Config::VmwatchAll,
    Config::VmwatchSelected,
    Config::Strace,
    Config::LttngAll,
    Config::LttngSelected,
];

/// Configurations of the fixture runs (the fixture has no LTTng events).
pub const FIXTURE_CONFIGS: [Config; 3] =
    [Config::VmwatchAll, Config::VmwatchSyscalls, Config::Strace];

/// One measurement.
#[derive(Debug, Clone)]
pub struct Row {
    /// `vm` (lab guests), `fixture` or `qemu-paused`.
    pub kind: &'static str,
    pub vms: usize,
    pub config: Config,
    pub rep: usize,
    pub seconds: f64,
    /// Collector CPU per window (all VMs), ms.
    pub collector_ms: f64,
    /// QEMU (or fixture) CPU per VM and window, ms.
    pub target_ms: f64,
    pub hits_per_vm_window: f64,
    pub windows: u64,
    pub counted: u64,
}

pub const CSV_HEADER: &str = "kind,vms,config,rep,seconds,collector_ms_per_window,collector_ms_per_vm_window,target_ms_per_vm_window,hits_per_vm_window,windows,windows_counted";

/// Windows measured per configuration and repetition (after one warm-up window).
fn windows(quick: bool) -> u64 {
    if quick {
        2
    } else {
        3
    }
}

/// Repetitions of the scaling runs (each is several windows).
pub fn reps(o: &Opts) -> usize {
    if o.quick {
        1
    } else {
        o.reps.clamp(1, 3)
    }
}

/// Measures `config` on `pids` for `windows` windows after a warm-up window.
fn measure(
    setup: &Setup,
    config: Config,
    pids: &[u32],
    windows: u64,
    tag: &str,
    mut check: impl FnMut() -> Result<()>,
) -> Result<(f64, f64, f64, super::monitor::Stopped)> {
    let limit = setup.interval * 30;
    let mut m = Running::start(setup, config, pids, tag)?;
    if config == Config::None {
        std::thread::sleep(setup.interval);
    } else {
        m.wait_windows(1, limit)?;
    }
    let c0 = cpu::tree_ns(&m.pids());
    let q0: u64 = pids.iter().map(|&p| cpu::process_ns(p)).sum();
    let t0 = Instant::now();
    if config == Config::None {
        let until = t0 + setup.interval * windows as u32;
        while Instant::now() < until {
            check()?;
            vm::check_interrupted()?;
            std::thread::sleep(Duration::from_millis(100));
        }
    } else {
        m.wait_windows(windows, limit)?;
    }
    let c1 = cpu::tree_ns(&m.pids());
    let q1: u64 = pids.iter().map(|&p| cpu::process_ns(p)).sum();
    let secs = t0.elapsed().as_secs_f64();
    check()?;
    if !m.wait_counted(Duration::from_secs(120))? {
        note(format!(
            "{tag}: babeltrace2 counted no chunk within 120 s; its cost is missing"
        ));
    }
    let stopped = m.stop()?;
    let per_window = setup.interval.as_secs_f64() / secs;
    // babeltrace2 may lag behind the rotations: its cost is taken per counted chunk.
    let collector = (c1 - c0) as f64 * per_window + stopped.count_ns_per_chunk;
    let target = (q1 - q0) as f64 * per_window / pids.len() as f64;
    Ok((secs, collector / 1e6, target / 1e6, stopped))
}

/// The VM runs: for each VM count, every configuration `reps` times, interleaved.
pub fn run_vms(o: &Opts, setup: &Setup, csv: &Path, rows: &mut Vec<Row>) -> Result<()> {
    let w = windows(o.quick);
    for &n in &o.vms {
        let mut session = Session::start(&SessionOpts {
            scenario: &STEADY,
            vms: n,
            seed: 1,
            qemu: qemu::Variant::default(),
            accel: Accel::Tcg,
            memory_mib: 256,
            boot_timeout: Duration::from_secs(120 + 40 * n as u64),
            duration: Duration::from_secs(24 * 3600),
            kernel_args: vec![],
            network: false,
            phased: false,
        })?;
        let pids = session.pids();
        super::check_lttng_registered(setup, pids[0])?;
        // Let the boots' tail (module loading, page cache) settle.
        session.hold(Duration::from_secs(5))?;
        for rep in 0..reps(o) {
            for i in 0..CONFIGS.len() {
                let config = CONFIGS[(i + rep) % CONFIGS.len()];
                let tag = format!("scale-{n}-{rep}-{i}");
                let (secs, coll, qemu, st) =
                    measure(setup, config, &pids, w, &tag, || session.check())?;
                note(format!(
                    "scaling {n} VM(s), rep {}: {:<20} collector {:.3} ms/window ({:.3} per VM), QEMU {:.1} ms per VM and window",
                    rep + 1,
                    config.id(),
                    coll,
                    coll / n as f64,
                    qemu
                ));
                rows.push(Row {
                    kind: "vm",
                    vms: n,
                    config,
                    rep,
                    seconds: secs,
                    collector_ms: coll,
                    target_ms: qemu,
                    hits_per_vm_window: st.hits_per_vm_window,
                    windows: st.windows,
                    counted: st.counted,
                });
                write_csv(csv, rows)?;
            }
        }
        session.finish()?;
    }
    Ok(())
}

/// An idle fixture process (killed on drop).
struct Fixture {
    child: Child,
    _stdin: ChildStdin,
}

impl Fixture {
    fn start(path: &Path) -> Result<Fixture> {
        let (child, stdin, mut stdout) = super::spawn_piped(path)?;
        // Its first line: it is ready.
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        Ok(Fixture {
            child,
            _stdin: stdin,
        })
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Builds the fixture (release).
pub fn fixture_binary() -> Result<PathBuf> {
    let root = util::repo_root();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    util::run(Command::new(cargo).current_dir(&root).args([
        "build",
        "--release",
        "-p",
        "vmwatch-fixture",
    ]))
    .context("building the fixture failed")?;
    Ok(root.join("target/release/vmwatch-fixture"))
}

/// The fixture runs: 1, 8 and 64 watched processes.
pub fn run_fixtures(o: &Opts, setup: &Setup, csv: &Path, rows: &mut Vec<Row>) -> Result<()> {
    let path = fixture_binary()?;
    let counts: &[usize] = if o.quick { &[1, 64] } else { &[1, 8, 64] };
    let max = *counts.iter().max().unwrap_or(&1);
    let fixtures: Vec<Fixture> = (0..max)
        .map(|_| Fixture::start(&path))
        .collect::<Result<_>>()?;
    let all: Vec<u32> = fixtures.iter().map(|f| f.child.id()).collect();
    let kind = ("fixture", "fixture process(es)", "process");
    measure_counts(o, setup, csv, rows, kind, &all, counts, &FIXTURE_CONFIGS)?;
    drop(fixtures);
    Ok(())
}

/// A paused QEMU (`-S`: no guest code runs), killed on drop.
struct IdleQemu(Child);

impl IdleQemu {
    fn start(qemu: &Path, i: usize) -> Result<IdleQemu> {
        let mut cmd = Command::new(qemu);
        cmd.args([
            "-M", "pc", "-accel", "tcg", "-m", "32", "-S", "-display", "none",
        ])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-serial",
            "none",
            "-monitor",
            "none",
        ])
        .arg("-name")
        .arg(format!("guest=bench-idle-{i}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
        util::die_with_parent(&mut cmd, libc::SIGKILL);
        let child = cmd
            .spawn()
            .with_context(|| format!("could not start {}", qemu.display()))?;
        Ok(IdleQemu(child))
    }
}

impl Drop for IdleQemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The collector at QEMU's full probe width: 1, 8 and 64 paused QEMU
/// processes (3,081 probes each), watched with every probe or the selection.
pub fn run_idle_qemus(o: &Opts, setup: &Setup, csv: &Path, rows: &mut Vec<Row>) -> Result<()> {
    let counts: &[usize] = if o.quick { &[1, 64] } else { &[1, 8, 64] };
    let max = *counts.iter().max().unwrap_or(&1);
    let qemus: Vec<IdleQemu> = (0..max)
        .map(|i| IdleQemu::start(&setup.qemu, i))
        .collect::<Result<_>>()?;
    // Let them finish starting (ELF loading, firmware set-up).
    std::thread::sleep(Duration::from_secs(3));
    let all: Vec<u32> = qemus.iter().map(|q| q.0.id()).collect();
    let kind = ("qemu-paused", "paused QEMU(s)", "VM");
    let configs = [Config::VmwatchAll, Config::VmwatchSelected];
    measure_counts(o, setup, csv, rows, kind, &all, counts, &configs)
}

/// Watches the first n of `pids` for each of `counts` with each of
/// `configs`, interleaved, `reps` times; one CSV row each. `kind`: the CSV
/// kind, what the processes are (log), and the unit of "per" (log).
#[allow(clippy::too_many_arguments)]
fn measure_counts(
    o: &Opts,
    setup: &Setup,
    csv: &Path,
    rows: &mut Vec<Row>,
    (kind, what, unit): (&'static str, &str, &str),
    pids: &[u32],
    counts: &[usize],
    configs: &[Config],
) -> Result<()> {
    let w = windows(o.quick);
    for rep in 0..reps(o) {
        for &n in counts {
            for (i, &config) in configs.iter().enumerate() {
                let tag = format!("{kind}-{n}-{rep}-{i}");
                let (secs, coll, target, st) =
                    measure(setup, config, &pids[..n], w, &tag, || Ok(()))?;
                note(format!(
                    "scaling {n} {what}, rep {}: {:<20} collector {:.3} ms/window = {:.4} ms per {unit}",
                    rep + 1,
                    config.id(),
                    coll,
                    coll / n as f64
                ));
                rows.push(Row {
                    kind,
                    vms: n,
                    config,
                    rep,
                    seconds: secs,
                    collector_ms: coll,
                    target_ms: target,
                    hits_per_vm_window: st.hits_per_vm_window,
                    windows: st.windows,
                    counted: st.counted,
                });
                write_csv(csv, rows)?;
            }
        }
    }
    Ok(())
}

pub fn write_csv(path: &Path, rows: &[Row]) -> Result<()> {
    let mut s = Vec::new();
    writeln!(s, "{CSV_HEADER}")?;
    for r in rows {
        writeln!(
            s,
            "{},{},{},{},{:.2},{:.4},{:.4},{:.3},{:.1},{},{}",
            r.kind,
            r.vms,
            r.config.id(),
            r.rep,
            r.seconds,
            r.collector_ms,
            r.collector_ms / r.vms as f64,
            r.target_ms,
            r.hits_per_vm_window,
            r.windows,
            r.counted
        )?;
    }
    util::write_atomic(path, &s)
}
