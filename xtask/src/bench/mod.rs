//! `cargo xtask bench overhead`: vmwatch against LTTng-UST (the paper's
//! tracer) and strace, side by side: the monitored VM's slowdown (the
//! paper's Fig. 6), the collector's CPU cost as VMs are added (Fig. 5) and
//! the cost of one event. Writes CSVs and SVGs to docs/overhead/ and the
//! tables into docs/PERFORMANCE.md.

mod cpu;
mod events;
mod governor;
mod impact;
mod lttng;
mod monitor;
mod plot;
mod report;
mod scaling;
mod sites;
mod tracers;

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use vmwatch_core::features;

use crate::lab::scenario::{Group, Scenario};
use crate::lab::tools::TempDir;
use crate::lab::{self, vm};
use crate::qemu;
use crate::util::{self, note};

/// Benchmarks.
#[derive(Subcommand)]
pub enum BenchCmd {
    /// vmwatch vs LTTng-UST vs strace: guest slowdown (the paper's Fig. 6),
    /// collector CPU as VMs are added (Fig. 5), cost per event. Writes
    /// docs/overhead/*.csv, *.svg and a section of docs/PERFORMANCE.md.
    ///
    /// Needs root. Builds QEMU, the lab guest, vmwatch and the fixture if
    /// needed; starts (and stops) its own lttng-sessiond. About 40 minutes
    /// on 2 cores; see docs/PERFORMANCE.md.
    Overhead(Opts),
    /// ns per counted probe hit on each QEMU build's own probe sites
    /// (lab-7.2 and lab-10.0: 5-byte nops; stock-10.0: 1-byte nops, as
    /// Fedora and RHEL ship QEMU), with `qemu-img bench` on null-co:// as
    /// the workload. Needs root; builds missing QEMUs first. About 5
    /// minutes once they are built.
    Sites(sites::Opts),
    /// ns per counted probe hit under vmwatch and under bpftrace (Debian's
    /// package, installed on first use), counting the same USDT probe of
    /// the test fixture: virtqueue_fill (semaphore, one 1-byte nop site)
    /// and tap_send (no semaphore, two sites), interleaved with untraced
    /// runs. Needs root; builds vmwatch and the fixture. About a minute.
    Tracers(tracers::Opts),
}

/// Parts of the overhead benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// Guest CPU and database job under each monitor (Fig. 6).
    Impact,
    /// Collector and QEMU CPU with 1..8 VMs, and 1..64 fixture processes (Fig. 5).
    Scaling,
    /// ns per event: detached, vmwatch (1- and 5-byte nop sites), LTTng-UST.
    Events,
    /// The cost governor: unmonitored, all probes exact, under 1% and 0.5%
    /// budgets, selected, and under 1% beside an exact reference, on web,
    /// stress-mem, synflood-target and web-peak (not in the default run:
    /// `--only governor`; about 30 minutes).
    Governor,
    /// Detection (`vmwatch eval`, nested) with and without the governor on
    /// the same windows: web and the eight attacks, each under `--budget 1`
    /// beside an exact reference (`--only detection`; about 20 minutes).
    Detection,
}

#[derive(clap::Args, Debug, Clone)]
pub struct Opts {
    /// Repetitions of each configuration (impact and events; scaling runs
    /// at most 3, each over several windows).
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Run only this part (repeatable); the report is rebuilt from every
    /// CSV in the output directory.
    #[arg(long = "only", value_enum)]
    pub only: Vec<Part>,
    /// A tiny run for smoke checks (1 repetition, small jobs, 1 VM); writes
    /// to target/bench-overhead-quick/, never to docs/.
    #[arg(long)]
    pub quick: bool,
    /// VM counts of the scaling part.
    #[arg(long, value_delimiter = ',')]
    pub vms: Option<Vec<usize>>,
    /// Datasets for `vmwatch select` (idle + stress-*.csv.gz); default
    /// data/. Without them, the paper's five tracepoints are the selection.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Use this vmwatch binary instead of building target/release/vmwatch.
    #[arg(long)]
    pub vmwatch: Option<PathBuf>,
    /// Measure nothing: rebuild the report (tables, SVGs, the section of
    /// docs/PERFORMANCE.md; with --quick, REPORT.md) from the CSVs there.
    #[arg(long)]
    pub report_only: bool,
}

/// Resolved options.
pub struct Run {
    pub reps: usize,
    pub quick: bool,
    pub vms: Vec<usize>,
}

pub fn run(cmd: BenchCmd) -> Result<()> {
    match cmd {
        BenchCmd::Overhead(o) => overhead(o),
        BenchCmd::Sites(o) => sites::run(&o),
        BenchCmd::Tracers(o) => tracers::run(&o),
    }
}

/// The lab scenario of the impact part (guest side in guest/init.sh); not in
/// the lab's scenario table, so `lab record-all` does not record it.
pub static BENCH: Scenario = Scenario {
    name: "bench",
    group: Group::Normal,
    load: None,
    host_target: false,
    host_tool: &[],
    guest: "fixed CPU and database jobs, timed in the guest (cargo xtask bench overhead)",
};

/// The lab scenario of the scaling part.
pub static STEADY: Scenario = Scenario {
    name: "bench-steady",
    group: Group::Normal,
    load: None,
    host_target: false,
    host_tool: &[],
    guest: "a small synced write and a short CPU burst every 0.1 s",
};

/// The paper's selected tracepoints (Table 1); three of them no longer exist
/// in QEMU 7.2.
const PAPER_FIVE: [&str; 5] = [
    "tap_send",
    "qemu_deliver_packet",
    "bdrv_aio_flush",
    "virtqueue_fill",
    "memory_region_ops_write",
];

/// Probes that exist only for the TCG accelerator (QEMU 7.2's
/// accel/tcg/trace-events): they fire per translated block and are absent
/// under KVM.
const TCG_ONLY: [&str; 6] = [
    "exec_tb",
    "exec_tb_nocache",
    "exec_tb_exit",
    "translate_block",
    "memory_notdirty_write_access",
    "memory_notdirty_set_dirty",
];

fn overhead(o: Opts) -> Result<()> {
    let root = util::repo_root();
    let out_dir = if o.quick {
        root.join("target/bench-overhead-quick")
    } else {
        root.join("docs/overhead")
    };
    if o.report_only {
        return write_report(&o, &root, &out_dir);
    }
    if !util::is_root()? {
        bail!("cargo xtask bench overhead needs root (BPF, network namespaces, LTTng for root's QEMU)");
    }
    vm::install_signal_handlers();
    let started = Instant::now();
    let parts: Vec<Part> = if o.only.is_empty() {
        vec![Part::Events, Part::Impact, Part::Scaling]
    } else {
        o.only.clone()
    };
    let run = Run {
        reps: if o.quick { 1 } else { o.reps.max(1) },
        quick: o.quick,
        vms: o
            .vms
            .clone()
            .unwrap_or_else(|| if o.quick { vec![1] } else { vec![1, 2, 4, 8] }),
    };
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("could not create {}", out_dir.display()))?;

    crate::deps::ensure().context("setting up the system packages failed")?;
    let qemu = qemu::ensure(&qemu::Options::default()).context("building QEMU failed")?;
    lab::ensure(false).context("building the lab guest failed")?;
    let vmwatch = lab::record::vmwatch_binary(o.vmwatch.as_deref())?;
    vm::check_interrupted()?;

    remove_stale_scratch();
    let tmp = TempDir::create(
        Path::new(SCRATCH_PARENT).join(format!("{SCRATCH_PREFIX}{}", std::process::id())),
    )?;
    let QemuProbes {
        names: all,
        site_kind,
    } = qemu_probes(&vmwatch, &qemu.binary)?;
    let tcg: Vec<String> = TCG_ONLY
        .iter()
        .map(|n| format!("qemu:{n}"))
        .filter(|p| all.contains(p))
        .collect();
    let sel = selection(&o, &vmwatch, &tmp.0, &all)?;
    note(format!(
        "{} QEMU probes, {} TCG-only; selected ({}): {}; without the budget: {}",
        all.len(),
        tcg.len(),
        sel.from,
        sel.selected.join(", "),
        sel.lda.join(", ")
    ));
    let sessiond = lttng::Sessiond::start(&tmp.0.join("lttng-home"))?;
    let setup = monitor::Setup {
        vmwatch,
        qemu: qemu.binary.clone(),
        tmp: tmp.0.clone(),
        all,
        selected: sel.selected.clone(),
        lda: sel.lda.clone(),
        tcg,
        interval: Duration::from_secs(2),
        sessiond: Some(sessiond),
    };
    // The governor part writes its own report (GOVERNOR.md): the overhead
    // report and its machine.txt describe the other parts' runs.
    let overhead_parts = parts
        .iter()
        .any(|p| !matches!(p, Part::Governor | Part::Detection));
    if overhead_parts {
        report::write_machine(&out_dir, &qemu.dir, &sel, site_kind, &run, &parts)?;
    }
    let mut took = Vec::new();

    for part in &parts {
        let t = Instant::now();
        match part {
            Part::Events => {
                note("part 1/3: cost per event");
                events::run(&run, &setup, &out_dir.join("events.csv"))?;
            }
            Part::Impact => {
                note("part 2/3: impact on the monitored VM (Fig. 6)");
                impact::run(&run, &setup, &out_dir.join("impact.csv"))?;
            }
            Part::Governor => {
                note("the cost governor, side by side with exact counting");
                governor::run(&run, &setup, &out_dir)?;
            }
            Part::Detection => {
                note("detection with and without the governor, on the same windows");
                governor::detection(&run, &setup, &out_dir)?;
            }
            Part::Scaling => {
                note("part 3/3: collector cost as VMs are added (Fig. 5)");
                let csv = out_dir.join("scaling.csv");
                let mut rows = Vec::new();
                scaling::run_vms(&run, &setup, &csv, &mut rows)?;
                scaling::run_fixtures(&run, &setup, &csv, &mut rows)?;
                scaling::run_idle_qemus(&run, &setup, &csv, &mut rows)?;
            }
        }
        note(format!(
            "{part:?} took {}",
            util::human_duration(t.elapsed())
        ));
        took.push((*part, t.elapsed()));
    }
    drop(setup);
    if overhead_parts {
        report::finish_machine(&out_dir, &took, started.elapsed())?;
        write_report(&o, &root, &out_dir)?;
    }
    note(format!(
        "bench overhead done in {}; CSV and SVG in {}",
        util::human_duration(started.elapsed()),
        out_dir.display()
    ));
    Ok(())
}

/// Rebuilds the report from the CSVs in `out_dir`.
fn write_report(o: &Opts, root: &Path, out_dir: &Path) -> Result<()> {
    let md = report::build(out_dir)?;
    if o.quick {
        let path = out_dir.join("REPORT.md");
        util::write_atomic(&path, md.as_bytes())?;
        note(format!("quick run: report in {}", path.display()));
    } else {
        report::update_performance_md(&root.join("docs/PERFORMANCE.md"), &md)?;
        note("updated docs/PERFORMANCE.md");
    }
    Ok(())
}

/// Scratch directories (traces, outputs) on a tmpfs:
/// `<SCRATCH_PARENT>/<SCRATCH_PREFIX><xtask pid>`.
const SCRATCH_PARENT: &str = "/dev/shm";
const SCRATCH_PREFIX: &str = "vmwatch-bench-";

/// Removes scratch directories of benches whose xtask is gone (killed).
fn remove_stale_scratch() {
    util::remove_orphans(Path::new(SCRATCH_PARENT), |name| {
        name.strip_prefix(SCRATCH_PREFIX)?.parse().ok()
    });
}

/// The `qemu:` probes of the binary and the kind of their sites (`vmwatch probes --json`).
fn qemu_probes(vmwatch: &Path, qemu: &Path) -> Result<QemuProbes> {
    let out = util::output(Command::new(vmwatch).arg("probes").arg("--json").arg(qemu))?;
    let probes: serde_json::Value =
        serde_json::from_str(&out).context("vmwatch probes --json printed no JSON")?;
    let mut names = Vec::new();
    let (mut sites, mut nop5) = (0, 0);
    for p in probes.as_array().into_iter().flatten() {
        if p["provider"] != "qemu" {
            continue;
        }
        if let Some(name) = p["name"].as_str() {
            names.push(format!("qemu:{name}"));
        }
        sites += p["sites"].as_u64().unwrap_or(0);
        nop5 += p["nop5_sites"].as_u64().unwrap_or(0);
    }
    names.sort();
    names.dedup();
    if names.is_empty() {
        bail!("{} has no qemu USDT probes", qemu.display());
    }
    let site_kind = match nop5 {
        n if n == sites => "5-byte nops",
        0 => "1-byte nops",
        _ => "mixed",
    };
    Ok(QemuProbes { names, site_kind })
}

/// The `qemu:` probes of the bench's QEMU.
struct QemuProbes {
    /// `qemu:NAME`, sorted.
    names: Vec<String>,
    /// What the probe sites are: "5-byte nops" (Linux ≥ 6.18 optimizes
    /// their uprobes), "1-byte nops" or "mixed".
    site_kind: &'static str,
}

/// Guest CPU budget of the selected probes, in percent of one CPU: the
/// DESIGN's goal for "selected" (`vmwatch select --budget`).
pub const SELECT_BUDGET: &str = "0.5";

/// The probe sets the bench monitors besides "all".
pub struct Selection {
    /// `vmwatch select --budget SELECT_BUDGET` (else the paper's five).
    pub selected: Vec<String>,
    /// `vmwatch select` without the budget (empty without datasets).
    pub lda: Vec<String>,
    /// Where `selected` came from, for the report.
    pub from: String,
}

/// The selected probes: `vmwatch select` on the reference datasets (the
/// paper's idle vs stress pairs), with and without the cost budget; else the
/// paper's five.
fn selection(o: &Opts, vmwatch: &Path, tmp: &Path, all: &[String]) -> Result<Selection> {
    let data = o
        .data
        .clone()
        .unwrap_or_else(|| util::repo_root().join("data"));
    let file = |s: &str| data.join(format!("{s}.csv.gz"));
    let stress = ["stress-mem", "stress-io", "stress-hdd", "stress-net"];
    if file("idle").is_file() && stress.iter().all(|s| file(s).is_file()) {
        let select = |budget: Option<&str>| -> Result<Vec<String>> {
            let out = tmp.join("selected.txt");
            let mut cmd = Command::new(vmwatch);
            cmd.args(["select", "--source", "qemu", "--baseline"])
                .arg(file("idle"));
            for s in stress {
                cmd.arg(file(s));
            }
            if let Some(b) = budget {
                cmd.args(["--budget", b]);
            }
            cmd.arg("-o").arg(&out);
            util::output(&mut cmd).context("vmwatch select failed")?;
            let text = std::fs::read_to_string(&out)
                .with_context(|| format!("could not read {}", out.display()))?;
            // Its qemu: features this QEMU has; none (an empty list too):
            // the paper's five.
            let listed =
                features::parse_feature_list(&out.display().to_string(), &text).unwrap_or_default();
            Ok(listed
                .features
                .into_iter()
                .filter(|f| f.starts_with(features::QEMU) && all.contains(f))
                .collect())
        };
        let selected = select(Some(SELECT_BUDGET))?;
        let lda = select(None)?;
        if !selected.is_empty() {
            return Ok(Selection {
                selected,
                lda,
                from: format!(
                    "`vmwatch select --budget {SELECT_BUDGET}` on {}: idle vs stress-mem/io/hdd/net, qemu: features",
                    data.display()
                ),
            });
        }
        note("vmwatch select chose no qemu: probe; using the paper's five");
    }
    let present: Vec<String> = PAPER_FIVE
        .iter()
        .map(|n| format!("qemu:{n}"))
        .filter(|p| all.contains(p))
        .collect();
    let missing: Vec<&str> = PAPER_FIVE
        .iter()
        .copied()
        .filter(|n| !all.contains(&format!("qemu:{n}")))
        .collect();
    if present.is_empty() {
        bail!("none of the paper's five tracepoints exists in this QEMU");
    }
    Ok(Selection {
        selected: present,
        lda: Vec::new(),
        from: format!(
            "the paper's Table 1 (no datasets in {}); not in QEMU 7.2: {}",
            data.display(),
            missing.join(", ")
        ),
    })
}

/// Starts `program` with its stdin and stdout piped: a helper process the
/// bench talks to line by line.
fn spawn_piped(program: &Path) -> Result<(Child, ChildStdin, BufReader<ChildStdout>)> {
    let mut child = Command::new(program)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start {}", program.display()))?;
    let stdin = child.stdin.take().context("no stdin pipe")?;
    let stdout = BufReader::new(child.stdout.take().context("no stdout pipe")?);
    Ok((child, stdin, stdout))
}

/// Waits until QEMU `pid` registered with the session daemon (it does so at
/// start-up, so the daemon must run before the VM boots).
pub fn check_lttng_registered(setup: &monitor::Setup, pid: u32) -> Result<()> {
    let Some(d) = &setup.sessiond else {
        return Ok(());
    };
    let until = Instant::now() + Duration::from_secs(15);
    let want = format!("PID: {pid} ");
    loop {
        let out = util::output(d.lttng().args(["list", "-u"])).unwrap_or_default();
        if out.contains(&want) {
            return Ok(());
        }
        if Instant::now() > until {
            bail!("QEMU (pid {pid}) did not register with lttng-sessiond: is it built with the ust trace backend?");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn guest_has_the_bench_scenarios() {
        let init = include_str!("../lab/guest/init.sh");
        for s in [&super::BENCH, &super::STEADY] {
            assert!(
                init.contains(&format!("    {})", s.name)),
                "{} is not in init.sh",
                s.name
            );
        }
    }
}
