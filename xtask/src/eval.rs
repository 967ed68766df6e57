//! `cargo xtask eval`: regenerates docs/RESULTS.md from the lab's data/.
//!
//! It runs the release vmwatch the way a user would. `vmwatch select` picks
//! each feature set by LDA on `idle` against the stress scenarios (never on
//! the boots it is evaluated on); `vmwatch eval --boot` then holds out each
//! phased boot of data/boots/ in turn (the attacks' and `web`'s), nested, once
//! per feature set, with the learning curve and the re-learning experiment
//! (`web-peak`'s boots) for the default configuration. Smoothings are
//! re-scored from the raw per-window verdicts of one run. Every number in
//! the report comes from those runs; the text between the NOTES markers is
//! kept across runs.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::Value;
use vmwatch_core::dataset::Table;
use vmwatch_core::eval::boots::{summarize, Summary};
use vmwatch_core::eval::{explain, Report};
use vmwatch_core::features::read_feature_list;
use vmwatch_core::model::Smoothing;

use crate::lab::record::vmwatch_binary;
use crate::lab::scenario::{self, Group};
use crate::util::{self, note};

const BASELINE: &str = "idle";
const NORMAL: &str = "web";
const PEAK: &str = "web-peak";
/// Where the phased boots are, under the data directory, and their
/// manifests (one per `lab record-all` run).
const BOOTS: &str = "boots";
const BOOT_MANIFESTS: [&str; 3] = [
    "MANIFEST-attacks.json",
    "MANIFEST-web.json",
    "MANIFEST-web-peak.json",
];
/// The configuration users get: the agent's (`packaging/features.txt`,
/// built in; the paper's grid; smoothing 2/3).
const DEFAULT_FEATURES: &str = "packaging/features.txt";
const DEFAULT_SMOOTH: &str = "2/3";
/// The grid vmwatch does not use by default, tried on some sets.
const OTHER_GRID: &str = "wide";
const OTHER_GRID_TITLE: &str =
    "the default features, vmwatch's wide grid (nu 0.005..0.1, gamma 1e-4..10)";
/// Smoothings reported (re-scored from one run's raw verdicts).
const SMOOTHINGS: [&str; 3] = ["1/1", "2/3", "3/5"];
/// Guest CPU budget (percent of one CPU) of every selection.
const BUDGET: &str = "0.5";
/// Training boots of the learning curve.
const CURVE: &str = "1,2,4,8";

const NOTES_BEGIN: &str = "<!-- NOTES BEGIN (kept by cargo xtask eval) -->";
const NOTES_END: &str = "<!-- NOTES END -->";

/// How a feature set is chosen.
enum Choice {
    /// `vmwatch select --source SOURCES --budget BUDGET` (LDA, idle vs stress).
    Lda(&'static str),
    /// Every feature of these sources nonzero in the training windows.
    Nonzero(&'static str),
    /// A list file of the repository.
    File(&'static str),
}

/// One feature set compared in the report.
struct FeatureSet {
    /// File and directory name under docs/results/.
    key: &'static str,
    title: &'static str,
    /// The paper's median F-measure for the same kind of features.
    paper: &'static str,
    choice: Choice,
    /// Part of the ablation table (the full selection minus one kind).
    ablation: bool,
    /// Further `vmwatch eval` arguments (e.g. another grid).
    extra: &'static [&'static str],
}

fn sets() -> Vec<FeatureSet> {
    let set = |key, title, paper, choice, ablation| FeatureSet {
        key,
        title,
        paper,
        choice,
        ablation,
        extra: &[],
    };
    let wide = |s: FeatureSet| FeatureSet {
        extra: &["--grid", OTHER_GRID],
        ..s
    };
    vec![
        set(
            "default",
            "the default (packaging/features.txt)",
            "—",
            Choice::File(DEFAULT_FEATURES),
            false,
        ),
        wide(set(
            "default-other-grid",
            OTHER_GRID_TITLE,
            "—",
            Choice::File(DEFAULT_FEATURES),
            false,
        )),
        set(
            "counts",
            "counts: QEMU probes (LDA, the paper's method)",
            "62%",
            Choice::Lda("qemu"),
            false,
        ),
        set(
            "arg",
            "counts + arguments (LDA over qemu, arg)",
            "—",
            Choice::Lda("qemu,arg"),
            false,
        ),
        set(
            "seq",
            "counts + sequences (LDA over qemu, seq)",
            "—",
            Choice::Lda("qemu,seq"),
            false,
        ),
        wide(set(
            "seq-wide",
            "counts + sequences, wide grid",
            "—",
            Choice::Lda("qemu,seq"),
            false,
        )),
        set(
            "perf",
            "counts + perf counters (LDA over qemu, perf)",
            "—",
            Choice::Lda("qemu,perf"),
            false,
        ),
        set(
            "all",
            "all kinds (LDA over qemu, arg, seq, perf)",
            "—",
            Choice::Lda("qemu,arg,seq,perf"),
            false,
        ),
        set(
            "all-but-arg",
            "all kinds but arguments",
            "—",
            Choice::Lda("qemu,seq,perf"),
            true,
        ),
        set(
            "all-but-seq",
            "all kinds but sequences",
            "—",
            Choice::Lda("qemu,arg,perf"),
            true,
        ),
        set(
            "all-but-perf",
            "all kinds but perf counters",
            "—",
            Choice::Lda("qemu,arg,seq"),
            true,
        ),
        set(
            "all-nonzero",
            "every qemu, arg, seq and perf feature nonzero in training (no selection, no budget)",
            "—",
            Choice::Nonzero("qemu,arg,seq,perf"),
            false,
        ),
        wide(set(
            "all-nonzero-wide",
            "every qemu, arg, seq and perf feature nonzero in training, wide grid",
            "—",
            Choice::Nonzero("qemu,arg,seq,perf"),
            false,
        )),
        set(
            "all-probes",
            "every QEMU probe nonzero in training",
            "73%",
            Choice::Nonzero("qemu"),
            false,
        ),
        set(
            "syscalls",
            "system calls (BPF)",
            "50% (strace)",
            Choice::Nonzero("syscalls"),
            false,
        ),
    ]
}

/// Options of `cargo xtask eval`.
pub struct Options {
    pub data: PathBuf,
    pub output: PathBuf,
    pub folds: usize,
    pub vmwatch: Option<PathBuf>,
}

/// One recording of the lab: its manifest entry and file.
struct Recording {
    name: String,
    file: PathBuf,
    entry: Value,
}

/// The lab's dataset as `cargo xtask lab record-all` wrote it.
struct Dataset {
    /// data/MANIFEST.json: idle and the stress scenarios (for selection).
    select: Value,
    /// data/boots/MANIFEST-*.json.
    boot_manifests: Vec<Value>,
    attacks: Vec<Recording>,
    web: Vec<Recording>,
    peak: Vec<Recording>,
    idle: PathBuf,
    stress: Vec<PathBuf>,
}

fn read_json(path: &Path) -> Result<Value> {
    let text =
        fs::read_to_string(path).with_context(|| format!("could not read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}

fn recordings(manifest: &Value, dir: &Path) -> Result<Vec<Recording>> {
    let list = manifest["scenarios"]
        .as_array()
        .context("a lab manifest without `scenarios`")?;
    list.iter()
        .map(|s| {
            let name = s["name"].as_str().context("a scenario without `name`")?;
            let file = dir.join(s["file"].as_str().context("a scenario without `file`")?);
            if !file.is_file() {
                bail!("{} (listed in its manifest) does not exist", file.display());
            }
            Ok(Recording {
                name: name.to_string(),
                file,
                entry: s.clone(),
            })
        })
        .collect()
}

impl Dataset {
    fn read(data: &Path) -> Result<Self> {
        let hint = "(record it with `cargo xtask lab record-all`, see docs/LAB.md)";
        let select = read_json(&data.join("MANIFEST.json")).with_context(|| hint.to_string())?;
        let idle = data.join(format!("{BASELINE}.csv.gz"));
        let stress: Vec<PathBuf> = scenario::in_group(Group::Stress)
            .into_iter()
            .map(|s| data.join(format!("{s}.csv.gz")))
            .collect();
        for f in std::iter::once(&idle).chain(&stress) {
            if !f.is_file() {
                bail!("{} does not exist {hint}", f.display());
            }
        }
        let dir = data.join(BOOTS);
        let mut boot_manifests = Vec::new();
        let (mut attacks, mut web, mut peak) = (Vec::new(), Vec::new(), Vec::new());
        let attack_names = scenario::in_group(Group::Attack);
        for m in BOOT_MANIFESTS {
            let manifest = read_json(&dir.join(m)).with_context(|| hint.to_string())?;
            for r in recordings(&manifest, &dir)? {
                match r.name.as_str() {
                    NORMAL => web.push(r),
                    PEAK => peak.push(r),
                    n if attack_names.contains(&n) => attacks.push(r),
                    n => bail!("{m} lists `{n}`, which is not an attack, {NORMAL} or {PEAK}"),
                }
            }
            boot_manifests.push(manifest);
        }
        for a in &attack_names {
            if !attacks.iter().any(|r| r.name == *a) {
                bail!("{} has no boot of `{a}` {hint}", dir.display());
            }
        }
        if web.is_empty() || peak.len() < 2 {
            bail!(
                "{} needs boots of `{NORMAL}` and at least two of `{PEAK}` {hint}",
                dir.display()
            );
        }
        Ok(Self {
            select,
            boot_manifests,
            attacks,
            web,
            peak,
            idle,
            stress,
        })
    }
}

/// One evaluated feature set.
struct Run<'a> {
    set: &'a FeatureSet,
    /// Features of the set (for a selection: how many select chose).
    chosen: Option<usize>,
    report: Report,
    /// `vmwatch eval`'s markdown.
    markdown: String,
    dir: PathBuf,
}

impl Run<'_> {
    fn at(&self, smooth: &str) -> Summary {
        let s: Smoothing = smooth.parse().expect("a valid smoothing");
        let results: Vec<_> = self.report.boots.iter().map(|b| b.smoothed(s)).collect();
        summarize(&results)
    }
}

pub fn run(o: &Options) -> Result<()> {
    let started = Instant::now();
    let root = util::repo_root();
    let data = root.join(&o.data);
    let dataset = Dataset::read(&data)?;
    let output = root.join(&o.output);
    let results = output
        .parent()
        .context("the output file has no directory")?
        .join("results");
    fs::create_dir_all(&results)
        .with_context(|| format!("could not create {}", results.display()))?;
    let vmwatch = vmwatch_binary(o.vmwatch.as_deref())?;
    let rel = |p: &Path| {
        p.strip_prefix(&root)
            .map(Path::to_path_buf)
            .unwrap_or_else(|_| p.to_path_buf())
    };

    // `vmwatch select --source SOURCES --budget BUDGET` on idle vs the
    // stress scenarios, writing `out`: its report.
    let select = |sources: &str, out: &Path| -> Result<String> {
        let mut cmd = Command::new(&vmwatch);
        cmd.current_dir(&root)
            .args(["select", "--source", sources, "--budget", BUDGET])
            .arg("--baseline")
            .arg(rel(&dataset.idle));
        for s in &dataset.stress {
            cmd.arg(rel(s));
        }
        cmd.arg("-o").arg(rel(out));
        util::output(&mut cmd).with_context(|| format!("vmwatch select --source {sources} failed"))
    };

    let sets = sets();
    let mut selections: Vec<(String, String, PathBuf)> = Vec::new();
    let mut runs = Vec::new();
    for (i, set) in sets.iter().enumerate() {
        note(format!(
            "[{}/{}] {} ({} so far)",
            i + 1,
            sets.len(),
            set.title,
            util::human_duration(started.elapsed())
        ));
        let dir = results.join(set.key);
        fs::create_dir_all(&dir).with_context(|| format!("could not create {}", dir.display()))?;
        let (args, chosen): (Vec<String>, Option<usize>) = match set.choice {
            Choice::Lda(sources) => {
                let list = results.join(format!("selected-{}.txt", set.key));
                let report = select(sources, &list)?;
                selections.push((set.title.to_string(), report, rel(&list)));
                let n = read_feature_list(&list)?.features.len();
                (
                    vec!["--features".into(), rel(&list).display().to_string()],
                    Some(n),
                )
            }
            Choice::Nonzero(sources) => (vec!["--source".into(), sources.into()], None),
            Choice::File(f) => {
                let n = read_feature_list(&root.join(f))?.features.len();
                (vec!["--features".into(), f.into()], Some(n))
            }
        };
        let json = dir.join("eval.json");
        let mut cmd = Command::new(&vmwatch);
        cmd.current_dir(&root).arg("eval");
        for r in dataset.attacks.iter().chain(&dataset.web) {
            cmd.arg("--boot").arg(rel(&r.file));
        }
        cmd.args(&args)
            .args(set.extra)
            .args(["--folds", &o.folds.to_string(), "--smooth", DEFAULT_SMOOTH])
            .arg("--plots")
            .arg(rel(&dir));
        if set.key == "default" {
            cmd.args(["--curve-boots", CURVE]);
            for r in &dataset.peak {
                cmd.arg("--relearn-boot").arg(rel(&r.file));
            }
        }
        cmd.arg("--json").arg(rel(&json));
        let markdown = util::output(&mut cmd)
            .with_context(|| format!("vmwatch eval ({}) failed", set.title))?;
        let report = read_report(&json)?;
        let run = Run {
            set,
            chosen,
            report,
            markdown,
            dir,
        };
        let d = run.at(DEFAULT_SMOOTH);
        note(format!(
            "    {} features: median F {} at {} false positives ({DEFAULT_SMOOTH})",
            run.report.features,
            pct(d.median_f_measure),
            pct2(d.fp_rate)
        ));
        runs.push(run);
    }

    note("what each attack changes (AUC of every column, attack vs normal windows)");
    let visible = visibility(&dataset.attacks)?;
    let durations = durations(
        dataset
            .attacks
            .iter()
            .chain(&dataset.web)
            .chain(&dataset.peak),
    )?;
    let old = fs::read_to_string(&output).unwrap_or_default();
    let text = render(&Render {
        dataset: &dataset,
        data: &rel(&data),
        selections: &selections,
        runs: &runs,
        docs: output.parent().unwrap_or(&root),
        notes: kept_notes(&old),
        folds: o.folds,
        durations,
        visible: &visible,
    })?;
    util::write_atomic(&output, text.as_bytes())?;
    note(format!(
        "wrote {} in {}",
        rel(&output).display(),
        util::human_duration(started.elapsed())
    ));
    for r in &runs {
        let cells: Vec<String> = SMOOTHINGS
            .iter()
            .map(|s| {
                let v = r.at(s);
                format!("{s}: F {} FP {}", pct(v.median_f_measure), pct2(v.fp_rate))
            })
            .collect();
        note(format!("{:<44} {}", r.set.title, cells.join(" | ")));
    }
    Ok(())
}

/// What each attack changes, every column considered: per scenario, its
/// boots' attack windows against their normal windows, the features that
/// tell them apart best by AUC (Mann-Whitney: the chance that an attack
/// window's count exceeds a normal window's; 50% is no difference). Never
/// used to choose anything: it explains what the detector can and cannot
/// see.
fn visibility(attacks: &[Recording]) -> Result<String> {
    let mut out = String::from(
        "| attack | boots | attack / normal windows | best features (AUC; ↑ more, ↓ fewer in the attack) |\n|---|---:|---:|---|\n",
    );
    for name in scenario::in_group(Group::Attack) {
        let tables: Vec<Table> = attacks
            .iter()
            .filter(|r| r.name == name)
            .map(|r| Table::read(&r.file))
            .collect::<vmwatch_core::Result<_>>()?;
        let c = explain::changes(&tables, name, NORMAL);
        let best: Vec<String> = c
            .columns
            .iter()
            .take(4)
            .map(|s| {
                let arrow = if s.auc >= 0.5 { "↑" } else { "↓" };
                format!("`{}` {} {arrow}", s.feature, pct(s.strength()))
            })
            .collect();
        let _ = writeln!(
            out,
            "| {name} | {} | {} / {} | {} |",
            tables.len(),
            c.anomaly_windows,
            c.normal_windows,
            best.join(", ")
        );
    }
    Ok(out)
}

/// Shortest and longest window (ms) of the recordings.
fn durations<'a>(recordings: impl Iterator<Item = &'a Recording>) -> Result<(u64, u64)> {
    let (mut lo, mut hi) = (u64::MAX, 0);
    for r in recordings {
        let t = Table::read(&r.file)?;
        for k in &t.keys {
            lo = lo.min(k.duration_ms);
            hi = hi.max(k.duration_ms);
        }
    }
    Ok((lo, hi))
}

/// A report of `vmwatch eval --json`.
fn read_report(path: &Path) -> Result<Report> {
    let text =
        fs::read_to_string(path).with_context(|| format!("could not read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a report of `vmwatch eval --json`",
            path.display()
        )
    })
}

struct Render<'a> {
    dataset: &'a Dataset,
    data: &'a Path,
    /// Per LDA selection: its title, select's report and the list file.
    selections: &'a [(String, String, PathBuf)],
    runs: &'a [Run<'a>],
    docs: &'a Path,
    notes: String,
    folds: usize,
    durations: (u64, u64),
    visible: &'a str,
}

/// Three significant digits (grid points such as 10^-2.5).
/// `lo` or, when the folds chose differently, `lo-hi`.
fn span(lo: f64, hi: f64) -> String {
    if lo == hi {
        sig(lo)
    } else {
        format!("{}-{}", sig(lo), sig(hi))
    }
}

fn sig(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        return x.to_string();
    }
    let digits = (2 - x.abs().log10().floor() as i32).max(0) as usize;
    let t = format!("{x:.digits$}");
    if t.contains('.') {
        t.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        t
    }
}

fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

fn pct2(x: f64) -> String {
    format!("{:.2}%", 100.0 * x)
}

/// The notes section of an earlier report, or a placeholder.
fn kept_notes(old: &str) -> String {
    match (old.find(NOTES_BEGIN), old.find(NOTES_END)) {
        (Some(b), Some(e)) if b < e => old[b + NOTES_BEGIN.len()..e].trim().to_string(),
        _ => "(Hand-written discussion goes here; `cargo xtask eval` keeps it.)".to_string(),
    }
}

fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Mean of a load field (`requested_per_s`, `served_per_s`) over recordings.
fn mean_load(recs: &[Recording], field: &str) -> f64 {
    let v: Vec<f64> = recs
        .iter()
        .filter_map(|r| r.entry["load"][field].as_f64())
        .collect();
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn render(r: &Render) -> Result<String> {
    let mut s = String::new();
    let d = r.dataset;
    writeln!(s, "# Results\n")?;
    writeln!(
        s,
        "Generated by `cargo xtask eval` from `{}` on {}. Everything but the notes at the \
         end is rewritten on each run; the numbers come from `vmwatch select` and `vmwatch \
         eval --boot` (release build) on the committed lab data.\n",
        r.data.display(),
        util::utc_now()
    )?;
    let m = d.boot_manifests.first().unwrap_or(&d.select);
    let get = |k: &str| m.get(k).map(value_text).unwrap_or_default();
    let qemu = m["qemu"]["qemu_version"].as_str().unwrap_or_default();
    let kernel = m["guest"]["kernel"]["version"].as_str().unwrap_or_default();
    let phases = &m["phases"];
    writeln!(
        s,
        "Data: recorded {} with {} ({}), {qemu}, guest kernel {kernel}, accelerator {}, \
         windows of {}, sources {}, budget {}. {} phased boots of the eight attacks ({} \
         windows each: normal phases of about {} s and attack phases of about {} s, each \
         drawn within ±50%, labelled per window), {} boots of `{NORMAL}` and {} of `{PEAK}` \
         (normal throughout); for selection, one recording each of `{BASELINE}` and the stress \
         scenarios (data/MANIFEST.json). Windows last {}-{} ms: counts are rates per \
         2-s window to within {:.1}%, so the model learns counts (log1p, standardised) without \
         dividing by the duration.\n",
        get("date"),
        get("vmwatch_version"),
        get("git"),
        get("accelerator"),
        get("interval"),
        get("sources"),
        get("budget"),
        d.attacks.len(),
        get("windows_per_scenario"),
        value_text(&phases["normal_seconds"]),
        value_text(&phases["anomaly_seconds"]),
        d.web.len(),
        d.peak.len(),
        r.durations.0,
        r.durations.1,
        100.0
            * (r.durations.1 as f64 - 2000.0)
                .abs()
                .max((2000.0 - r.durations.0 as f64).abs())
            / 2000.0
    )?;
    writeln!(
        s,
        "Load (requests per second to the guest's web server, mean over boots): `{NORMAL}` \
         requested {:.2}, served {:.2}; `{PEAK}` requested {:.2}, served {:.2} ({:.1}× \
         `{NORMAL}`'s served rate).\n",
        mean_load(&d.web, "requested_per_s"),
        mean_load(&d.web, "served_per_s"),
        mean_load(&d.peak, "requested_per_s"),
        mean_load(&d.peak, "served_per_s"),
        mean_load(&d.peak, "served_per_s") / mean_load(&d.web, "served_per_s").max(1e-9)
    )?;

    writeln!(s, "## Summary: feature sets side by side\n")?;
    writeln!(
        s,
        "Protocol (nested, by boot): each of the {} boots (attack boots and `{NORMAL}` boots) \
         is held out once. A one-class SVM learns the normal windows of every other boot: its \
         features are the set's list (chosen by `vmwatch select` on `{BASELINE}` vs the stress \
         recordings, never on these boots) or, for \"nonzero\" sets, the columns nonzero in its \
         own training windows; its nu and gamma come from an inner {}-fold cross-validation of \
         false positives inside those training windows, each inner fold holding out whole \
         boots (the paper's grid, or the wide one where a row says so). It then scores every window of the \
         held-out boot in time order. So false positives are counted on boots the model never \
         saw, and each attack's windows are scored against the normal windows of its own boot. \
         Smoothing K/N flags a window when K of its boot's last N raw verdicts are anomalous, \
         as `vmwatch monitor --smooth` does live (one run per set; the smoothings are \
         re-scored from its raw verdicts). Every selection keeps its probes' cost within \
         {BUDGET}% of one CPU (`select --budget {BUDGET}`). Goal: median F-measure ≥ 95% over \
         the eight attacks with ≤ 1% false positives.\n",
        d.attacks.len() + d.web.len(),
        r.folds
    )?;
    writeln!(
        s,
        "Each cell: median F-measure / false positives on held-out normal windows. **Bold**: \
         meets the goal. The first row is what users get by default.\n"
    )?;
    write!(s, "| feature set | features | nu, gamma chosen |")?;
    for sm in SMOOTHINGS {
        write!(s, " smoothing {sm} |")?;
    }
    writeln!(s, " paper's median F |")?;
    writeln!(s, "|---|---:|---:|---:|---:|---:|---:|")?;
    for run in r.runs.iter().filter(|r| !r.set.ablation) {
        summary_row(&mut s, run)?;
    }
    writeln!(s)?;

    writeln!(
        s,
        "### F-measure (sensitivity) per attack, smoothing {DEFAULT_SMOOTH}\n"
    )?;
    write!(s, "| scenario |")?;
    let main: Vec<&Run> = r.runs.iter().filter(|r| !r.set.ablation).collect();
    for run in &main {
        write!(s, " {} |", run.set.key)?;
    }
    writeln!(s)?;
    write!(s, "|---|")?;
    for _ in &main {
        write!(s, "---:|")?;
    }
    writeln!(s)?;
    let summaries: Vec<Summary> = main.iter().map(|r| r.at(DEFAULT_SMOOTH)).collect();
    for attack in scenario::in_group(Group::Attack) {
        write!(s, "| {attack} |")?;
        for sum in &summaries {
            match sum.scenarios.iter().find(|sc| sc.name == attack) {
                Some(sc) => write!(s, " {} ({}) |", pct(sc.f_measure), pct(sc.sensitivity))?,
                None => write!(s, " — |")?,
            }
        }
        writeln!(s)?;
    }
    writeln!(
        s,
        "\nColumns: {}.\n",
        main.iter()
            .map(|r| format!("`{}`: {}", r.set.key, r.set.title))
            .collect::<Vec<_>>()
            .join("; ")
    )?;

    writeln!(s, "### Ablation: which new kind carries the gain\n")?;
    writeln!(
        s,
        "The selection over all kinds, then without one kind at a time (each re-selected by \
         LDA without it), smoothing {DEFAULT_SMOOTH}:\n"
    )?;
    writeln!(s, "| feature set | features | median F | false positives | slowhttp-source F | slowhttp-target F |")?;
    writeln!(s, "|---|---:|---:|---:|---:|---:|")?;
    for run in r
        .runs
        .iter()
        .filter(|r| r.set.ablation || matches!(r.set.key, "all" | "counts"))
    {
        let v = run.at(DEFAULT_SMOOTH);
        let f = |name: &str| {
            v.scenarios
                .iter()
                .find(|sc| sc.name == name)
                .map_or("—".to_string(), |sc| pct(sc.f_measure))
        };
        writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            run.set.title,
            run.report.features,
            pct(v.median_f_measure),
            pct2(v.fp_rate),
            f("slowhttp-source"),
            f("slowhttp-target")
        )?;
    }
    writeln!(s)?;

    if let Some(default) = r.runs.iter().find(|r| r.set.key == "default") {
        writeln!(
            s,
            "### False positives per held-out boot (the default, smoothing {DEFAULT_SMOOTH})\n"
        )?;
        writeln!(s, "| held-out boot | anomaly | normal windows | false positives | anomalous windows | detected |")?;
        writeln!(s, "|---|---|---:|---:|---:|---:|")?;
        let sm: Smoothing = DEFAULT_SMOOTH.parse().expect("a valid smoothing");
        for b in &default.report.boots {
            let b = b.smoothed(sm);
            writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} |",
                b.name,
                b.anomaly.as_deref().unwrap_or("—"),
                b.normal_windows,
                b.false_positives,
                b.anomaly_windows,
                b.detected
            )?;
        }
        writeln!(s)?;
        writeln!(s, "### Learning curve by boot (the default)\n")?;
        writeln!(
            s,
            "Each boot held out and scored by models of only the K boots after it (smoothing \
             {}):\n",
            default.report.smoothing
        )?;
        writeln!(s, "| training boots | training windows | median F | median sensitivity | false positives |")?;
        writeln!(s, "|---:|---:|---:|---:|---:|")?;
        for p in &default.report.boot_curve {
            writeln!(
                s,
                "| {} | {} | {} | {} | {} |",
                p.boots,
                p.training_windows,
                pct(p.median_f_measure),
                pct(p.median_sensitivity),
                pct2(p.fp_rate)
            )?;
        }
        let all = default.at(&default.report.smoothing);
        // Each held-out boot's model learned every other boot's normal
        // windows: their mean over the boots is all × (n − 1) / n, exactly.
        writeln!(
            s,
            "| {} (all others) | {} | {} | {} | {} |\n",
            d.attacks.len() + d.web.len() - 1,
            all.normal_windows * (d.attacks.len() + d.web.len() - 1)
                / (d.attacks.len() + d.web.len()),
            pct(all.median_f_measure),
            pct(all.median_sensitivity),
            pct2(all.fp_rate)
        )?;
        writeln!(
            s,
            "### Re-learning (paper section 5.2: 82% → 1% false positives)\n"
        )?;
        if let Some(rl) = &default.report.relearn {
            writeln!(
                s,
                "`{PEAK}` serves {:.1}× `{NORMAL}`'s requests. Its boots scored by the default's \
                 model of every normal window above: {} false positives; each scored by a model \
                 that also learned the other `{PEAK}` boot(s): {} (smoothing {}).\n",
                mean_load(&d.peak, "served_per_s") / mean_load(&d.web, "served_per_s").max(1e-9),
                pct(rl.fp_rate_before),
                pct(rl.fp_rate_after),
                default.report.smoothing
            )?;
        }
    }

    writeln!(s, "## What each attack changes\n")?;
    writeln!(
        s,
        "Every column of the boots, each attack's windows against the normal windows of its \
         own boots: the four features that differ most (AUC, shown as max(AUC, 1 − AUC): 50% \
         is no difference, 100% complete separation). This only explains the results; nothing \
         is chosen from it. A one-class model flags a window that leaves the normal region in \
         either direction, but a feature that an attack lowers to values normal windows also \
         take (a quieter guest) does not leave it.\n"
    )?;
    writeln!(s, "{}", r.visible)?;

    writeln!(
        s,
        "## Selections: LDA on `{BASELINE}` vs each stress scenario\n"
    )?;
    writeln!(
        s,
        "`vmwatch select --source SOURCES --budget {BUDGET}`: per pair, every feature's LDA \
         score (squared canonical correlation, R subselect's ccr12) on ln(1+count), a greedy \
         multivariate subset within the cost budget, and the union of the subsets.\n"
    )?;
    for (title, report, list) in r.selections {
        writeln!(s, "### {title} (`{}`)\n", list.display())?;
        writeln!(s, "```text\n{}\n```\n", report.trim_end())?;
    }

    writeln!(s, "## Details per feature set\n")?;
    for run in r.runs {
        let rel_dir = run.dir.strip_prefix(r.docs).unwrap_or(&run.dir);
        writeln!(s, "### {}\n", run.set.title)?;
        writeln!(s, "{}\n", run.markdown.trim())?;
        writeln!(s, "![scenarios]({}/scenarios.svg)\n", rel_dir.display())?;
    }

    writeln!(s, "## Notes\n\n{NOTES_BEGIN}\n{}\n{NOTES_END}", r.notes)?;
    Ok(s)
}

fn summary_row(s: &mut String, run: &Run) -> Result<()> {
    let ((nu_lo, nu_hi), (g_lo, g_hi)) = run.report.chosen_ranges();
    let features = match run.chosen {
        Some(n) => n.to_string(),
        None => format!("{} (nonzero)", run.report.features),
    };
    write!(
        s,
        "| {} | {features} | {}, {} |",
        run.set.title,
        span(nu_lo, nu_hi),
        span(g_lo, g_hi)
    )?;
    for sm in SMOOTHINGS {
        let v = run.at(sm);
        let cell = format!("{} / {}", pct(v.median_f_measure), pct2(v.fp_rate));
        if v.median_f_measure >= 0.95 && v.fp_rate <= 0.01 {
            write!(s, " **{cell}** |")?;
        } else {
            write!(s, " {cell} |")?;
        }
    }
    writeln!(s, " {} |", run.set.paper)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_survive_a_rewrite() {
        let old = format!("# Results\nold numbers\n## Notes\n\n{NOTES_BEGIN}\nwhy slowhttp is hard\n{NOTES_END}\n");
        assert_eq!(kept_notes(&old), "why slowhttp is hard");
        assert!(kept_notes("no markers").starts_with("(Hand-written"));
    }

    #[test]
    fn grid_points_print_short() {
        for (x, short) in [
            (0.0031622776601683794, "0.00316"),
            (0.04, "0.04"),
            (0.001, "0.001"),
            (31.622776, "31.6"),
        ] {
            assert_eq!(sig(x), short, "{x}");
        }
    }

    #[test]
    fn the_default_set_comes_first_and_every_smoothing_parses() {
        assert_eq!(sets()[0].key, "default");
        for sm in SMOOTHINGS.iter().chain([&DEFAULT_SMOOTH]) {
            sm.parse::<Smoothing>().unwrap();
        }
    }
}
