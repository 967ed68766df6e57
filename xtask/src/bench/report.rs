//! The report: machine description, tables (medians, min–max, ratios) and
//! SVG figures, rebuilt from the CSVs in the output directory, and its
//! section in docs/PERFORMANCE.md (between markers, so a rerun replaces it).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use vmwatch_core::eval::median;

use super::monitor::Config;
use super::{plot, scaling, Part, Run};
use crate::util;

const BEGIN: &str = "<!-- BEGIN cargo xtask bench overhead (generated; edits are overwritten) -->";
const END: &str = "<!-- END cargo xtask bench overhead -->";

fn first_line(cmd: &mut Command) -> String {
    util::output(cmd)
        .map(|s| s.lines().next().unwrap_or("").trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Appends how long each part took (`took PART: T`) and the whole command
/// to machine.txt.
pub fn finish_machine(out: &Path, parts: &[(Part, Duration)], total: Duration) -> Result<()> {
    let path = out.join("machine.txt");
    let mut s = fs::read_to_string(&path).unwrap_or_default();
    for (p, d) in parts {
        let _ = writeln!(s, "took {}: {}", part_name(*p), util::human_duration(*d));
    }
    let names: Vec<&str> = parts.iter().map(|(p, _)| part_name(*p)).collect();
    let _ = writeln!(
        s,
        "last command: {} in {}",
        names.join(", "),
        util::human_duration(total)
    );
    util::write_atomic(&path, s.as_bytes())
}

fn part_name(p: Part) -> &'static str {
    match p {
        Part::Impact => "impact",
        Part::Scaling => "scaling",
        Part::Events => "events",
        Part::Governor => "governor",
        Part::Detection => "detection",
    }
}

/// Writes machine.txt (`key: value` lines) describing this run's host.
pub fn write_machine(
    out: &Path,
    qemu_dir: &Path,
    sel: &super::Selection,
    sites: &str,
    run: &Run,
    parts: &[Part],
) -> Result<()> {
    // Timings of parts not run now stay (their CSVs stay too).
    let kept: Vec<String> = fs::read_to_string(out.join("machine.txt"))
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            l.strip_prefix("took ")
                .and_then(|r| r.split(':').next())
                .is_some_and(|name| !parts.iter().any(|p| part_name(*p) == name))
        })
        .map(str::to_string)
        .collect();
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|x| x.1.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let mem = fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:").map(|v| v.trim().to_string()))
        .unwrap_or_default();
    let qemu_version = fs::read_to_string(qemu_dir.join("BUILD-INFO.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["qemu_version"].as_str().map(str::to_string))
        .unwrap_or_else(|| "unknown".into());
    let lines = [
        ("date", util::utc_now()),
        (
            "cpus",
            std::thread::available_parallelism()
                .map_or(0, |n| n.get())
                .to_string(),
        ),
        ("cpu model", model),
        ("memory", mem),
        (
            "kernel",
            fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
        ),
        (
            "accelerator",
            "TCG (the lab's default; /dev/kvm here cannot boot a guest)".into(),
        ),
        ("qemu", qemu_version),
        ("lttng", first_line(Command::new("lttng").arg("--version"))),
        (
            "babeltrace2",
            first_line(Command::new("babeltrace2").arg("--version")),
        ),
        ("strace", first_line(Command::new("strace").arg("-V"))),
        ("repetitions", run.reps.to_string()),
        ("scaling repetitions", scaling::reps(run).to_string()),
        (
            "vm counts",
            run.vms
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(","),
        ),
        ("qemu probe sites", sites.to_string()),
        ("selected", sel.selected.join(" ")),
        ("selected from", sel.from.clone()),
        ("lda without budget", sel.lda.join(" ")),
    ];
    let mut s = String::new();
    for (k, v) in lines {
        let _ = writeln!(s, "{k}: {v}");
    }
    for l in kept {
        let _ = writeln!(s, "{l}");
    }
    util::write_atomic(&out.join("machine.txt"), s.as_bytes())
}

/// The median of the values at `key` (NaN: none).
fn median_at<K: Ord>(values: &BTreeMap<K, Vec<f64>>, key: &K) -> f64 {
    median(values.get(key).map_or(&[], Vec::as_slice))
}

fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
            (a.min(*x), b.max(*x))
        })
}

/// One of the bench's CSVs as rows of column name → value (None: missing
/// or unreadable).
fn table(path: &Path) -> Option<Vec<BTreeMap<String, String>>> {
    let mut csv = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(path)
        .ok()?;
    let header = csv.headers().ok()?.clone();
    csv.records()
        .map(|r| {
            let r = r.ok()?;
            Some(
                header
                    .iter()
                    .map(str::to_string)
                    .zip(r.iter().map(str::to_string))
                    .collect(),
            )
        })
        .collect()
}

fn num(r: &BTreeMap<String, String>, k: &str) -> f64 {
    r.get(k).and_then(|v| v.parse().ok()).unwrap_or(f64::NAN)
}

fn fmt_ms(v: f64) -> String {
    if v.is_nan() {
        "–".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn pct(v: f64) -> String {
    if v.is_nan() {
        "–".into()
    } else {
        format!("{v:+.1}%")
    }
}

/// Builds the report (markdown) and the SVGs from the CSVs in `out`.
pub fn build(out: &Path) -> Result<String> {
    let mut md = String::new();
    let machine = fs::read_to_string(out.join("machine.txt")).unwrap_or_default();
    let m = |k: &str| {
        machine
            .lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix(": ").map(str::to_string))
            .unwrap_or_else(|| "unknown".into())
    };
    let _ = writeln!(
        md,
        "## Overhead against LTTng-UST and strace (`cargo xtask bench overhead`), {}\n",
        m("date")
    );
    let took: Vec<String> = machine
        .lines()
        .filter_map(|l| l.strip_prefix("took "))
        .map(str::to_string)
        .collect();
    let _ = writeln!(
        md,
        "Regenerate with `cargo xtask bench overhead` (as root; `--reps N`, `--only impact|scaling|events`, `--vms 1,2,4,8`, `--quick`; \
`--report-only` rebuilds this section from the CSVs). Time per part (its latest run): {}; the last command ({}). \
Raw numbers: [`overhead/impact.csv`](overhead/impact.csv), [`overhead/scaling.csv`](overhead/scaling.csv), \
[`overhead/events.csv`](overhead/events.csv), [`overhead/machine.txt`](overhead/machine.txt).\n",
        took.join(", "),
        // machine.txt of the first version: `parts:` and `duration:` lines.
        if machine.contains("last command: ") {
            m("last command")
        } else {
            format!("{} in {}", m("parts"), m("duration"))
        }
    );
    let _ = writeln!(
        md,
        "Machine: {} CPUs ({}), {}, Linux {}, {}; {}; {}; {}. Accelerator: {}.\n",
        m("cpus"),
        m("cpu model"),
        m("memory"),
        m("kernel"),
        m("qemu"),
        m("lttng"),
        m("babeltrace2"),
        m("strace"),
        m("accelerator")
    );
    let _ = writeln!(
        md,
        "Selected probes ({}): `{}`.\n",
        m("selected from"),
        m("selected")
    );
    let lda = m("lda without budget");
    if !lda.is_empty() && lda != "unknown" {
        let _ = writeln!(
            md,
            "LDA's selection without the cost budget (the paper's method, row *{}*): `{}`.\n",
            Config::VmwatchLda.label(),
            lda
        );
    }
    md.push_str(METHOD);
    // The prediction uses the per-hit cost of the kind of site QEMU has.
    let nop5 = m("qemu probe sites") == "5-byte nops";
    impact_section(out, &mut md, per_hit_ns(out, nop5), nop5)?;
    scaling_section(out, &mut md)?;
    events_section(out, &mut md)?;
    Ok(md)
}

const METHOD: &str = "\
Configurations: *unmonitored*; *vmwatch* counting every QEMU probe (`record --source qemu`), \
every probe but the TCG-only ones (`exec_tb`, `exec_tb_exit`, `translate_block`, \
`memory_notdirty_*`: they fire per translated block and do not exist under KVM, so \
\"all but TCG-only\" is what \"all\" costs on a KVM host), the selected probes (LDA \
within a budget of 0.5% of one CPU, `vmwatch select --budget 0.5`), or LDA's selection without \
the budget (what the paper's method picks); \
*vmwatch syscalls* (BPF syscall counter); *strace* (`vmwatch record --source strace`: \
`strace -c -f` per VM, restarted every window, the paper's baseline); *LTTng-UST* with \
every `qemu:*` event, every event but the TCG-only ones, or the selected events. LTTng \
runs as the paper used it, with the same 2-s windows: the bench starts its own \
`lttng-sessiond` before the VMs boot (QEMU registers at start-up), a session per \
configuration traces only the VMs' processes (vpid tracker), per-user buffers of 8 × 4 MiB \
per CPU, `vpid` context, output on a tmpfs, rotation every 2 s, and a counting thread runs \
`babeltrace2` on each closed chunk and counts events per VM. Collector CPU is read from \
`/proc` (`schedstat` of every thread of the collector's process tree, plus its reaped \
children): vmwatch; vmwatch and its strace runs; lttng-sessiond and lttng-consumerd plus \
babeltrace2 (wait4 rusage) and the parsing of its output (thread CPU clock). The BPF \
programs and uprobe traps run in QEMU's context and count as QEMU CPU.\n\n";

/// vmwatch's added cost per probe hit (events.csv: attached − detached medians).
/// Added ns per counted hit (events part), at a 5-byte or a 1-byte nop site.
fn per_hit_ns(out: &Path, nop5: bool) -> Option<f64> {
    let rows = table(&out.join("events.csv"))?;
    let med = |state: &str| {
        let v: Vec<f64> = rows
            .iter()
            .filter(|r| r.get("state").map(String::as_str) == Some(state))
            .map(|r| num(r, "ns_per_event"))
            .collect();
        median(&v)
    };
    let d = med(if nop5 { "vmwatch-nop5" } else { "vmwatch" }) - med("detached");
    d.is_finite().then_some(d)
}

fn impact_section(out: &Path, md: &mut String, per_hit: Option<f64>, nop5: bool) -> Result<()> {
    let Some(rows) = table(&out.join("impact.csv")) else {
        return Ok(());
    };
    let jobs = ["cpu", "db"];
    // (config, job) -> seconds.
    let mut by: BTreeMap<(usize, &str), Vec<f64>> = BTreeMap::new();
    let mut extra: BTreeMap<usize, (Vec<f64>, u64, u64, u64)> = BTreeMap::new();
    for r in &rows {
        let Some(c) = r.get("config").and_then(|c| Config::from_id(c)) else {
            continue;
        };
        let ci = c.index();
        let job = if r.get("job").map(String::as_str) == Some("cpu") {
            "cpu"
        } else {
            "db"
        };
        by.entry((ci, job)).or_default().push(num(r, "seconds"));
        if job == "cpu" {
            let e = extra.entry(ci).or_default();
            e.0.push(num(r, "hits_per_window"));
            e.1 += num(r, "lttng_discarded") as u64;
            e.2 += num(r, "windows") as u64;
            e.3 += num(r, "windows_counted") as u64;
        }
    }
    let base: BTreeMap<&str, f64> = jobs
        .iter()
        .map(|j| (*j, median_at(&by, &(0, *j))))
        .collect();
    let reps = by.get(&(0, "cpu")).map_or(0, Vec::len);
    let _ = writeln!(
        md,
        "### Impact on the monitored VM (the paper's Fig. 6)\n\n\
One lab guest (TCG, 1 vCPU, 512 MiB) runs, round after round, a CPU job (`stress-ng --cpu 1 \
--cpu-method prime`, a fixed number of operations, like the paper's sysbench prime test) and a \
database job (a fixed number of SQLite transactions, each committed with fsync through virtio-blk), \
timed with the guest's clock (`/proc/timer_list`). Between rounds the guest sleeps 3 s while the \
host switches the monitor; a round whose start line came before the monitor was ready is repeated. \
Configurations are interleaved (one round each, the order rotated every repetition), {reps} \
repetitions, after two discarded warm-up rounds. Slowdown = median time / unmonitored median − 1 \
(min–max of the repetitions in brackets). *hits/window*: QEMU probe hits (vmwatch, per 2-s window), \
syscalls (vmwatch syscalls), or events counted (LTTng) per window during the CPU job.\n"
    );
    md.push_str("| configuration | CPU job, s | slowdown | database job, s | slowdown | hits/window | LTTng windows counted | LTTng discarded |\n|---|---:|---:|---:|---:|---:|---:|---:|\n");
    let mut svg_series: Vec<plot::BarSeries> =
        vec![("CPU job".into(), vec![]), ("database job".into(), vec![])];
    let mut cats = Vec::new();
    let mut slow: BTreeMap<(usize, &str), f64> = BTreeMap::new();
    for (ci, c) in Config::ALL.iter().enumerate() {
        if !by.contains_key(&(ci, "cpu")) {
            continue;
        }
        let mut cells = Vec::new();
        for (ji, j) in jobs.iter().enumerate() {
            let v = by.get(&(ci, *j)).map_or(&[][..], Vec::as_slice);
            let (lo, hi) = min_max(v);
            let med = median(v);
            let b = base[j];
            let s = (med / b - 1.0) * 100.0;
            slow.insert((ci, j), s);
            cells.push(format!("{med:.2} ({lo:.2}–{hi:.2})"));
            cells.push(if ci == 0 { "—".into() } else { pct(s) });
            svg_series[ji]
                .1
                .push((s, (lo / b - 1.0) * 100.0, (hi / b - 1.0) * 100.0));
        }
        let (hits, disc, win, counted) = extra.get(&ci).cloned().unwrap_or_default();
        let lt = matches!(
            c,
            Config::LttngAll | Config::LttngNoTcg | Config::LttngSelected
        );
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            c.label(),
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            if ci == 0 {
                "—".into()
            } else {
                format!("{:.0}", median(&hits))
            },
            if lt {
                format!("{counted} of {win}")
            } else {
                "—".into()
            },
            if lt { disc.to_string() } else { "—".into() },
        );
        cats.push(c.id().to_string());
    }
    let spread = |j: &str| {
        let v = by.get(&(0, j)).cloned().unwrap_or_default();
        let (lo, hi) = min_max(&v);
        (hi / lo - 1.0) * 100.0
    };
    let _ = writeln!(
        md,
        "\nNoise: the unmonitored repetitions alone spread by {:.0}% (CPU job) and {:.0}% (database job) \
from fastest to slowest, so slowdowns smaller than that are not resolved by {reps} repetitions here; \
for vmwatch the cost per hit × hits per second (below) is the sharper estimate.",
        spread("cpu"),
        spread("db")
    );
    plot::bars(
        &out.join("impact.svg"),
        "Guest slowdown per monitor (median, min–max)",
        "slowdown vs unmonitored (%)",
        &cats,
        &svg_series,
    )?;
    let g = |c: Config, j: &str| {
        let ci = c.index();
        slow.get(&(ci, j)).copied().unwrap_or(f64::NAN)
    };
    let _ = writeln!(
        md,
        "\n![guest slowdown](overhead/impact.svg)\n\n\
Side by side with the paper (CPU benchmark: selected / all / syscalls = 2.8% / 3.2% / 13%, \
strace for syscalls): vmwatch selected {} (LDA without budget {}) / all {} (all but TCG-only {}) / syscalls {} \
(BPF) and strace {}; LTTng-UST here: selected {} / all {} (all but TCG-only {}). Database job: \
paper 2% / 4% / 9% fewer transactions; here vmwatch {} ({}) / {} ({}) / {}, strace {}, LTTng {} / {} ({}).\n",
        pct(g(Config::VmwatchSelected, "cpu")),
        pct(g(Config::VmwatchLda, "cpu")),
        pct(g(Config::VmwatchAll, "cpu")),
        pct(g(Config::VmwatchNoTcg, "cpu")),
        pct(g(Config::VmwatchSyscalls, "cpu")),
        pct(g(Config::Strace, "cpu")),
        pct(g(Config::LttngSelected, "cpu")),
        pct(g(Config::LttngAll, "cpu")),
        pct(g(Config::LttngNoTcg, "cpu")),
        pct(g(Config::VmwatchSelected, "db")),
        pct(g(Config::VmwatchLda, "db")),
        pct(g(Config::VmwatchAll, "db")),
        pct(g(Config::VmwatchNoTcg, "db")),
        pct(g(Config::VmwatchSyscalls, "db")),
        pct(g(Config::Strace, "db")),
        pct(g(Config::LttngSelected, "db")),
        pct(g(Config::LttngAll, "db")),
        pct(g(Config::LttngNoTcg, "db")),
    );
    if let Some(ns) = per_hit {
        let hits = |c: Config| median(extra.get(&c.index()).map_or(&[][..], |e| e.0.as_slice()));
        let share = |c: Config| {
            let v = hits(c) / 2.0 * ns / 1e9 * 100.0;
            if v.is_finite() {
                format!("{v:.3}%")
            } else {
                "–".into()
            }
        };
        let _ = writeln!(
            md,
            "What the uprobe traps alone predict: hits per second × {ns:.0} ns (the added cost per hit \
at a {} nop site like this QEMU's, below) = {} of one CPU for all probes, {} without the TCG-only ones, {} for the selected \
ones ({} for LDA's selection without the budget). QEMU's vCPU thread is busy during the CPU job, so this is roughly the slowdown to expect.\n",
            if nop5 { "5-byte" } else { "1-byte" },
            share(Config::VmwatchAll),
            share(Config::VmwatchNoTcg),
            share(Config::VmwatchSelected),
            share(Config::VmwatchLda)
        );
    }
    Ok(())
}

fn scaling_section(out: &Path, md: &mut String) -> Result<()> {
    let Some(rows) = table(&out.join("scaling.csv")) else {
        return Ok(());
    };
    // (kind, config index, n) -> values.
    let mut coll: BTreeMap<(String, usize, usize), Vec<f64>> = BTreeMap::new();
    let mut target: BTreeMap<(String, usize, usize), Vec<f64>> = BTreeMap::new();
    let mut lag: BTreeMap<(String, usize, usize), (u64, u64)> = BTreeMap::new();
    for r in &rows {
        let Some(c) = r.get("config").and_then(|c| Config::from_id(c)) else {
            continue;
        };
        let ci = c.index();
        let kind = r.get("kind").cloned().unwrap_or_default();
        let n = num(r, "vms") as usize;
        let k = (kind, ci, n);
        coll.entry(k.clone())
            .or_default()
            .push(num(r, "collector_ms_per_vm_window"));
        target
            .entry(k.clone())
            .or_default()
            .push(num(r, "target_ms_per_vm_window"));
        let e = lag.entry(k).or_default();
        e.0 += num(r, "windows_counted") as u64;
        e.1 += num(r, "windows") as u64;
    }
    let counts = |kind: &str| {
        let mut v: Vec<usize> = coll.keys().filter(|k| k.0 == kind).map(|k| k.2).collect();
        v.sort();
        v.dedup();
        v
    };
    let vm_counts = counts("vm");
    if !vm_counts.is_empty() {
        let _ = writeln!(
            md,
            "### Collector cost as VMs are added (the paper's Fig. 5)\n\n\
N lab guests (TCG, 1 vCPU, 256 MiB each, scenario `bench-steady`: a 16 KiB synced write and a \
short CPU burst every 0.1 s) run together; each configuration runs for one warm-up window and \
then 3 measured windows of 2 s, configurations interleaved, median of the repetitions. \
*Collector*: CPU time of the collector per window, divided by N. *QEMU extra*: CPU time of the \
QEMU processes per VM and window, minus the unmonitored median of the same N (the uprobe traps, \
BPF programs, LTTng's in-process tracing and strace's ptrace stops are charged to QEMU). \
With 2 cores and N TCG guests the host is saturated from N = 2 on, so QEMU's extra CPU is \
bounded by what is left; read it for N = 1.\n"
        );
        let head: Vec<String> = vm_counts
            .iter()
            .map(|n| format!("{n} VM{}", if *n == 1 { "" } else { "s" }))
            .collect();
        let _ = writeln!(
            md,
            "Collector CPU, ms per VM per window:\n\n| configuration | {} |\n|---|{}",
            head.join(" | "),
            "---:|".repeat(vm_counts.len())
        );
        let mut series = Vec::new();
        for c in scaling::CONFIGS.iter().filter(|c| **c != Config::None) {
            let ci = c.index();
            let mut cells = Vec::new();
            let mut pts = Vec::new();
            for &n in &vm_counts {
                let med = median_at(&coll, &("vm".into(), ci, n));
                let (done, all) = lag.get(&("vm".into(), ci, n)).copied().unwrap_or_default();
                let note = if matches!(c, Config::LttngAll | Config::LttngSelected) && done < all {
                    format!(" ({done}/{all} counted)")
                } else {
                    String::new()
                };
                cells.push(format!("{}{note}", fmt_ms(med)));
                pts.push((n as f64, med));
            }
            let _ = writeln!(md, "| {} | {} |", c.label(), cells.join(" | "));
            series.push((c.id().to_string(), pts));
        }
        let _ = writeln!(
            md,
            "\nQEMU extra CPU, ms per VM per window (unmonitored: QEMU's own CPU):\n\n| configuration | {} |\n|---|{}",
            head.join(" | "),
            "---:|".repeat(vm_counts.len())
        );
        for c in scaling::CONFIGS {
            let ci = c.index();
            let cells: Vec<String> = vm_counts
                .iter()
                .map(|&n| {
                    let mv = median_at(&target, &("vm".into(), ci, n));
                    let mb = median_at(&target, &("vm".into(), 0, n));
                    if c == Config::None {
                        fmt_ms(mv)
                    } else {
                        format!("{:+.1}", mv - mb)
                    }
                })
                .collect();
            let _ = writeln!(md, "| {} | {} |", c.label(), cells.join(" | "));
        }
        plot::lines_log(
            &out.join("scaling.svg"),
            "Collector CPU per VM and 2-s window",
            "VMs",
            "ms per VM per window",
            &series,
        )?;
        md.push_str("\n![collector cost](overhead/scaling.svg)\n\n");
    }
    // The collector alone, past what the machine can boot.
    let alone: [(&str, &[Config], &str); 2] = [
        (
            "fixture",
            &scaling::FIXTURE_CONFIGS,
            "Past what the machine can boot: idle fixture processes (`tests/fixture`: 2,105 probes, two counter chunks per row) \
watched by one collector; ms per process per window (median):",
        ),
        (
            "qemu-paused",
            &[Config::VmwatchAll, Config::VmwatchSelected],
            "At QEMU's full probe width: paused QEMU processes (`-S`, every probe site attached, \
semaphores raised, no guest code running), ms per VM per window (median; DESIGN goal: ≤ 1 ms at 64 VMs):",
        ),
    ];
    for (kind, configs, intro) in alone {
        let ns = counts(kind);
        if ns.is_empty() {
            continue;
        }
        let head: Vec<String> = ns.iter().map(|n| format!("{n}")).collect();
        let _ = writeln!(
            md,
            "{intro}\n\n| configuration | {} |\n|---|{}",
            head.join(" | "),
            "---:|".repeat(ns.len())
        );
        for c in configs {
            let cells: Vec<String> = ns
                .iter()
                .map(|&n| fmt_ms(median_at(&coll, &(kind.to_string(), c.index(), n))))
                .collect();
            let _ = writeln!(md, "| {} | {} |", c.label(), cells.join(" | "));
        }
        md.push('\n');
    }
    Ok(())
}

fn events_section(out: &Path, md: &mut String) -> Result<()> {
    let Some(rows) = table(&out.join("events.csv")) else {
        return Ok(());
    };
    let mut by: BTreeMap<String, (Vec<f64>, u64, u64)> = BTreeMap::new();
    for r in &rows {
        let e = by
            .entry(r.get("state").cloned().unwrap_or_default())
            .or_default();
        e.0.push(num(r, "ns_per_event"));
        e.1 = num(r, "events") as u64;
        if let Some(v) = r.get("recorded").and_then(|v| v.parse::<u64>().ok()) {
            e.2 += v;
        }
    }
    let reps = by.get("detached").map_or(0, |v| v.0.len());
    let _ = writeln!(
        md,
        "### Cost per event\n\n\
A C program (built at bench time) fires one trace point N times in a loop, the way QEMU's \
`dtrace,ust` build does: a USDT probe behind its semaphore, then the LTTng-UST tracepoint \
(two pointer-sized fields, like `exec_tb`) behind its enabled flag. ns per event = loop time / N, \
median of {reps} interleaved repetitions (min–max).\n\n| state | N | ns per event | added |\n|---|---:|---:|---:|"
    );
    let base = median(by.get("detached").map_or(&[][..], |v| v.0.as_slice()));
    for (state, label) in [
        ("detached", "detached (semaphore 0, tracepoint disabled)"),
        ("vmwatch", "vmwatch attached (uprobe + BPF count)"),
        (
            "vmwatch-nop5",
            "vmwatch attached, probe site a 5-byte nop (Linux 6.18 optimized uprobe: call + uprobe syscall)",
        ),
        ("lttng", "LTTng-UST session enabled (ring buffer on tmpfs)"),
    ] {
        let Some((v, n, rec)) = by.get(state) else {
            continue;
        };
        let (lo, hi) = min_max(v);
        let med = median(v);
        let recn = if state == "lttng" {
            format!(
                " ({:.1}% of the events recorded)",
                100.0 * *rec as f64 / (*n as f64 * v.len() as f64)
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            md,
            "| {label}{recn} | {n} | {med:.1} ({lo:.1}–{hi:.1}) | {} |",
            if state == "detached" {
                "—".into()
            } else {
                format!("{:+.1}", med - base)
            }
        );
    }
    md.push('\n');
    Ok(())
}

/// Replaces (or appends) the generated section of PERFORMANCE.md.
pub fn update_performance_md(path: &Path, section: &str) -> Result<()> {
    let text =
        fs::read_to_string(path).with_context(|| format!("could not read {}", path.display()))?;
    let block = format!("{BEGIN}\n{section}{END}");
    let new = match (text.find(BEGIN), text.find(END)) {
        (Some(a), Some(b)) if b > a => format!("{}{block}{}", &text[..a], &text[b + END.len()..]),
        _ => format!("{}\n{block}\n", text.trim_end()),
    };
    util::write_atomic(path, new.as_bytes())
}
